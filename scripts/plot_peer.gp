# gnuplot script for scripts/plot.sh: our receive cycle next to DPDK's virtio-user driver and
# vhost-user device (bench/count_dpdk_virtio). Left: instructions per packet (callgrind); right:
# ns per packet (median). Variables: datafile, outfile.
set terminal pngcairo size 1100,460 font "sans,10" noenhanced
set output outfile
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key top right
set yrange [0:*]
set multiplot layout 1,2 columns title "receive cycle, batch 32: device writes header + 64-byte frame, driver reaps and refills, stack frees"
set title "instructions per packet (callgrind), lower is better"
set ylabel "instructions per packet"
plot datafile using 2:xtic(1) title "DPDK virtio-user + vhost" lc rgb "#d62728", \
     ''       using 3 title "virtq, packets" lc rgb "#1f77b4", \
     ''       using 4 title "virtq, rx_burst" lc rgb "#2ca02c"
set title "ns per packet (median), lower is better"
set ylabel "ns per packet"
plot datafile using 5:xtic(1) title "DPDK virtio-user + vhost" lc rgb "#d62728", \
     ''       using 6 title "virtq, packets" lc rgb "#1f77b4", \
     ''       using 7 title "virtq, rx_burst" lc rgb "#2ca02c"
unset multiplot
