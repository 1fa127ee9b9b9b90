set terminal pngcairo size 800,500 noenhanced
set key top left
set grid
set xlabel 'instances (N)'
set output 'a-time.png'
set title 'Multideployment (a): time until the last instance booted'
set ylabel 'seconds'
set logscale y
plot 'a-blobvirt.dat' using 1:2 with linespoints lw 2 title 'blobvirt', 'a-prepro-chain.dat' using 1:2 with linespoints lw 2 title 'prepro-chain', 'a-qcow2-nbd.dat' using 1:2 with linespoints lw 2 title 'qcow2-nbd'
set output 'a-traffic.png'
set title 'Multideployment (a): bytes sent over all links'
set ylabel 'MiB'
plot 'a-blobvirt.dat' using 1:5 with linespoints lw 2 title 'blobvirt', 'a-prepro-chain.dat' using 1:5 with linespoints lw 2 title 'prepro-chain', 'a-qcow2-nbd.dat' using 1:5 with linespoints lw 2 title 'qcow2-nbd'
unset logscale y
set output 'a-snapshot.png'
set title 'Multisnapshotting (a): mean per-instance snapshot time'
set ylabel 'seconds'
plot 'a-blobvirt.dat' using 1:6 with linespoints lw 2 title 'blobvirt', 'a-qcow2-nbd.dat' using 1:6 with linespoints lw 2 title 'qcow2-nbd'
