//! The Markdown the mirror suite prints: one table per comparison, each
//! value the median (min–max) over the runs.

use super::{Opts, Run};
use crate::stats::summarize;

pub(super) fn report(o: &Opts, runs: &[Run]) {
    let col = |f: &dyn Fn(&Run) -> f64| summarize(&runs.iter().map(f).collect::<Vec<_>>());
    let mib = o.suite.size_mib as f64;
    let cmd: Vec<String> = std::env::args().collect();
    println!("### mirrord: reads and COMMIT ({} MiB volumes of random data, 256 KiB chunks, {} nodes, replicas {}, {} runs)\n", o.suite.size_mib, o.suite.nodes, o.suite.replicas, runs.len());
    println!("Command: `{}`\n", cmd.join(" "));
    println!("Method: every read is O_DIRECT (1 MiB sequential or 4 KiB random), and the page cache is dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before each timed pass of the cold and fully local comparisons, so mirrord's own buffered reads of its cache file start cold too. The fully local passes run in the order mount, file, file, mount and each side's two times are summed. mirrord itself reads its cache file buffered: it asks the kernel (POSIX_FADV_WILLNEED) to read local chunks ahead of a sequential reader, so the mount can beat O_DIRECT reads of the file at queue depth 1; a buffered pass over the file is shown for context. Ratios are taken within each run, then summarized.\n");
    println!("| measurement | median (min–max) |\n|---|---|");
    println!("| vol-export MiB/s | {} |", col(&|r| mib / r.export));
    println!(
        "| cold sequential read through the mount, MiB/s | {} |",
        col(&|r| mib / r.cold)
    );
    println!(
        "| **cold mount / vol-export (goal ≥ 0.8)** | {} |",
        col(&|r| r.export / r.cold)
    );
    println!(
        "| chunks fetched in the cold read | {} |",
        col(&|r| r.cold_fetches)
    );
    println!("| of them by read-ahead | {} |", col(&|r| r.cold_readahead));
    println!(
        "| fully local, sequential 1 MiB through the mount, MiB/s | {} |",
        col(&|r| 2.0 * mib / r.seq_mount)
    );
    println!(
        "| same, the cache data file directly, MiB/s | {} |",
        col(&|r| 2.0 * mib / r.seq_file)
    );
    println!(
        "| **sequential mount / file (goal ≥ 0.7)** | {} |",
        col(&|r| r.seq_file / r.seq_mount)
    );
    println!("| for context: the cache data file with buffered 1 MiB reads (cold, kernel readahead), MiB/s | {} |", col(&|r| mib / r.seq_file_buffered));
    println!(
        "| for context: sequential mount / buffered file | {} |",
        col(&|r| 2.0 * r.seq_file_buffered / r.seq_mount)
    );
    println!(
        "| fully local, random 4 KiB through the mount, IOPS | {} |",
        col(&|r| 2.0 * o.rand_reads as f64 / r.rand_mount)
    );
    println!(
        "| same, the cache data file directly, IOPS | {} |",
        col(&|r| 2.0 * o.rand_reads as f64 / r.rand_file)
    );
    println!(
        "| **random mount / file (goal ≥ 0.5)** | {} |",
        col(&|r| r.rand_file / r.rand_mount)
    );
    println!(
        "\n### mirrord: a local reader next to one waiting on a chunkd slowed to {} MB/s\n",
        o.slow_mbps
    );
    println!("Method: one of the {} chunkd nodes is re-registered to poold under the address of a loopback TCP proxy in the bench that passes its replies at {} MB/s (token bucket over all its connections; other nodes untouched), and mirrord is restarted so it sees that address. The waiting reader reads a {} MiB volume whose every chunk has that node first in its read order (O_DIRECT 1 MiB, sequential). The local reader reads the fully local {} MiB volume through the mount (O_DIRECT 1 MiB, its cache file warm in the page cache in both passes), for at least 3 s alone and then for at least 3 s starting 2 s after the other reader started.\n", o.suite.nodes, o.slow_mbps, o.slow_mib, o.suite.size_mib);
    println!("| measurement | median (min–max) |\n|---|---|");
    println!(
        "| local reader alone, MiB/s | {} |",
        col(&|r| r.unloaded_mibs)
    );
    println!(
        "| local reader next to the waiting reader, MiB/s | {} |",
        col(&|r| r.loaded_mibs)
    );
    println!(
        "| **loaded / alone (goal ≥ 0.8)** | {} |",
        col(&|r| r.loaded_mibs / r.unloaded_mibs)
    );
    println!("| waiting reader, MiB/s | {} |", col(&|r| r.slow_mibs));
    println!(
        "| MiB through the slow proxy | {} |",
        col(&|r| r.proxied_mib)
    );
    println!("\n### mirrord: COMMIT of {} MiB of random writes (4 KiB–1 MiB, O_DIRECT) on a {} MiB volume\n", o.commit_mib, o.suite.size_mib);
    println!("The file stays open for writing; `commit` without waiting returns after phase 1, then `wait` returns after phase 2 (both over the control socket).\n");
    println!("| measurement | median (min–max) |\n|---|---|");
    println!("| dirty chunks | {} |", col(&|r| r.dirty_chunks));
    println!(
        "| **phase 1 (freeze) µs, mirrord's `last_freeze_us` (goal < 20 000)** | {} |",
        col(&|r| r.freeze_us)
    );
    println!(
        "| commit --no-wait round trip, ms | {} |",
        col(&|r| r.nowait_ms)
    );
    println!(
        "| total commit time (phase 1 + 2), ms | {} |",
        col(&|r| r.total_ms)
    );
    println!(
        "| MiB uploaded (chunk bytes; each chunk goes to {} nodes) | {} |",
        o.suite.replicas,
        col(&|r| r.uploaded_mib)
    );
}
