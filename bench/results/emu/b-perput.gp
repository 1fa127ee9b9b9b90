set terminal pngcairo size 800,500 noenhanced
set key top left
set grid
set xlabel 'instances (N)'
set output 'b-perput-time.png'
set title 'Multideployment (b-perput): time until the last instance booted'
set ylabel 'seconds'
set logscale y
plot 'b-perput-blobvirt.dat' using 1:2 with linespoints lw 2 title 'blobvirt'
set output 'b-perput-traffic.png'
set title 'Multideployment (b-perput): bytes sent over all links'
set ylabel 'MiB'
plot 'b-perput-blobvirt.dat' using 1:5 with linespoints lw 2 title 'blobvirt'
unset logscale y
set output 'b-perput-snapshot.png'
set title 'Multisnapshotting (b-perput): mean per-instance snapshot time'
set ylabel 'seconds'
plot 'b-perput-blobvirt.dat' using 1:6 with linespoints lw 2 title 'blobvirt'
