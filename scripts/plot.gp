# gnuplot script for scripts/plot.sh. Left: ns per buffer (medians) of our queues and the peers
# in one process, one cluster per scenario. Right: instructions per packet (callgrind) against
# the issue's targets. Variables: datafile, insnfile (may be ''), outfile, subtitle.
set terminal pngcairo size 1400,560 font "sans,10" noenhanced
set output outfile
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key top left
set xtics scale 0 font ",9"
set multiplot layout 1,2 columns title "virtq vs peers (" . subtitle . ")"

set title "ns per buffer, lower is better\n1 thread: median of 5 runs; 2 threads: fastest of 30 short runs"
set logscale y
set yrange [0.5:*]
set ylabel "ns per buffer (log scale)"
plot datafile using 2:xtic(1) title "split (virtq)" lc rgb "#1f77b4", \
     ''       using 3 title "packed (virtq)" lc rgb "#2ca02c", \
     ''       using 4 title "rte_ring SP/SC (DPDK)" lc rgb "#d62728", \
     ''       using 5 title "boost spsc_queue" lc rgb "#9467bd"

unset logscale y
set title "instructions per packet, batch 32, single thread (callgrind)\nrx target: the bare cycle + 20 (pool + census)"
set ylabel "instructions per packet"
set yrange [0:*]
if (insnfile ne '') {
  plot insnfile using 2:xtic(1) title "measured" lc rgb "#1f77b4", \
       ''       using 3 title "target (issue 6)" lc rgb "#aaaaaa"
} else {
  set label 1 "no callgrind.json: run scripts/callgrind.sh" at graph 0.25, graph 0.5
  set yrange [0:1]
  plot 2 notitle
}
unset multiplot
