set terminal pngcairo size 900,560 noenhanced
set key top left
set grid
set xlabel 'instances (N)'
set output 'b-time.png'
set title 'Multideployment (b): time until the last instance booted'
set ylabel 'seconds'
set logscale y
plot 'b-blobvirt.dat' using 1:2 with linespoints lw 2 lc 1 title 'blobvirt', 'b-blobvirt.dat' using 1:7 with linespoints lw 1 dt 2 lc 1 title 'blobvirt, model: own 2 cores + own disk per node', 'b-qcow2-nbd.dat' using 1:2 with linespoints lw 2 lc 2 title 'qcow2-nbd', 'b-qcow2-nbd.dat' using 1:7 with linespoints lw 1 dt 2 lc 2 title 'qcow2-nbd, model: own 2 cores + own disk per node'
set output 'b-traffic.png'
set title 'Multideployment (b): bytes sent over all links'
set ylabel 'MiB'
plot 'b-blobvirt.dat' using 1:5 with linespoints lw 2 lc 1 title 'blobvirt', 'b-qcow2-nbd.dat' using 1:5 with linespoints lw 2 lc 2 title 'qcow2-nbd'
unset logscale y
set output 'b-snapshot.png'
set title 'Multisnapshotting (b): mean per-instance snapshot time (model: last node)'
set ylabel 'seconds'
plot 'b-blobvirt.dat' using 1:6 with linespoints lw 2 lc 1 title 'blobvirt', 'b-blobvirt.dat' using 1:8 with linespoints lw 1 dt 2 lc 1 title 'blobvirt, model: own 2 cores + own disk per node', 'b-qcow2-nbd.dat' using 1:6 with linespoints lw 2 lc 2 title 'qcow2-nbd', 'b-qcow2-nbd.dat' using 1:8 with linespoints lw 1 dt 2 lc 2 title 'qcow2-nbd, model: own 2 cores + own disk per node'
