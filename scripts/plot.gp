# gnuplot script for scripts/plot.sh: ns per buffer (medians) of our queues and the peers,
# one cluster per scenario. Variables: datafile, outfile, subtitle.
set terminal pngcairo size 1100,560 font "sans,10" noenhanced
set output outfile
set title "virtq vs peers, same process (" . subtitle . ")\nns per buffer, median of repetitions, lower is better"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set logscale y
set yrange [0.5:*]
set ylabel "ns per buffer (log scale)"
set grid ytics
set key top left
set xtics scale 0 font ",9"
plot datafile using 2:xtic(1) title "split (virtq)" lc rgb "#1f77b4", \
     ''       using 3 title "packed (virtq)" lc rgb "#2ca02c", \
     ''       using 4 title "rte_ring SP/SC (DPDK)" lc rgb "#d62728", \
     ''       using 5 title "boost spsc_queue" lc rgb "#9467bd"
