set terminal pngcairo size 900,560 noenhanced
set key top left
set grid
set xlabel 'instances (N)'
set output 'b-slow100-time.png'
set title 'Multideployment (b-slow100): time until the last instance booted'
set ylabel 'seconds'
set logscale y
plot 'b-slow100-blobvirt.dat' using 1:2 with linespoints lw 2 lc 1 title 'blobvirt', 'b-slow100-blobvirt.dat' using 1:7 with linespoints lw 1 dt 2 lc 1 title 'blobvirt, model: own 2 cores + own disk per node', 'b-slow100-qcow2-nbd.dat' using 1:2 with linespoints lw 2 lc 2 title 'qcow2-nbd', 'b-slow100-qcow2-nbd.dat' using 1:7 with linespoints lw 1 dt 2 lc 2 title 'qcow2-nbd, model: own 2 cores + own disk per node'
set output 'b-slow100-traffic.png'
set title 'Multideployment (b-slow100): bytes sent over all links'
set ylabel 'MiB'
plot 'b-slow100-blobvirt.dat' using 1:5 with linespoints lw 2 lc 1 title 'blobvirt', 'b-slow100-qcow2-nbd.dat' using 1:5 with linespoints lw 2 lc 2 title 'qcow2-nbd'
unset logscale y
set output 'b-slow100-snapshot.png'
set title 'Multisnapshotting (b-slow100): mean per-instance snapshot time (model: last node)'
set ylabel 'seconds'
plot 'b-slow100-blobvirt.dat' using 1:6 with linespoints lw 2 lc 1 title 'blobvirt', 'b-slow100-blobvirt.dat' using 1:8 with linespoints lw 1 dt 2 lc 1 title 'blobvirt, model: own 2 cores + own disk per node', 'b-slow100-qcow2-nbd.dat' using 1:6 with linespoints lw 2 lc 2 title 'qcow2-nbd', 'b-slow100-qcow2-nbd.dat' using 1:8 with linespoints lw 1 dt 2 lc 2 title 'qcow2-nbd, model: own 2 cores + own disk per node'
