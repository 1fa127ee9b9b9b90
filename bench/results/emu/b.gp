set terminal pngcairo size 800,500 noenhanced
set key top left
set grid
set xlabel 'instances (N)'
set output 'b-time.png'
set title 'Multideployment (b): time until the last instance booted'
set ylabel 'seconds'
set logscale y
plot 'b-blobvirt.dat' using 1:2 with linespoints lw 2 title 'blobvirt', 'b-prepro-chain.dat' using 1:2 with linespoints lw 2 title 'prepro-chain', 'b-prepro-http.dat' using 1:2 with linespoints lw 2 title 'prepro-http', 'b-qcow2-nbd.dat' using 1:2 with linespoints lw 2 title 'qcow2-nbd'
set output 'b-traffic.png'
set title 'Multideployment (b): bytes sent over all links'
set ylabel 'MiB'
plot 'b-blobvirt.dat' using 1:5 with linespoints lw 2 title 'blobvirt', 'b-prepro-chain.dat' using 1:5 with linespoints lw 2 title 'prepro-chain', 'b-prepro-http.dat' using 1:5 with linespoints lw 2 title 'prepro-http', 'b-qcow2-nbd.dat' using 1:5 with linespoints lw 2 title 'qcow2-nbd'
unset logscale y
set output 'b-snapshot.png'
set title 'Multisnapshotting (b): mean per-instance snapshot time'
set ylabel 'seconds'
plot 'b-blobvirt.dat' using 1:6 with linespoints lw 2 title 'blobvirt', 'b-qcow2-nbd.dat' using 1:6 with linespoints lw 2 title 'qcow2-nbd'
