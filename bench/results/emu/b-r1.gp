set terminal pngcairo size 800,500 noenhanced
set key top left
set grid
set xlabel 'instances (N)'
set output 'b-r1-time.png'
set title 'Multideployment (b-r1): time until the last instance booted'
set ylabel 'seconds'
set logscale y
plot 'b-r1-blobvirt.dat' using 1:2 with linespoints lw 2 title 'blobvirt'
set output 'b-r1-traffic.png'
set title 'Multideployment (b-r1): bytes sent over all links'
set ylabel 'MiB'
plot 'b-r1-blobvirt.dat' using 1:5 with linespoints lw 2 title 'blobvirt'
unset logscale y
set output 'b-r1-snapshot.png'
set title 'Multisnapshotting (b-r1): mean per-instance snapshot time'
set ylabel 'seconds'
plot 'b-r1-blobvirt.dat' using 1:6 with linespoints lw 2 title 'blobvirt'
