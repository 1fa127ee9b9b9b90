//! Samples of the whole machine during a phase: how busy all CPUs were
//! and their CPU-seconds (`/proc/stat`), the harness's own CPU-seconds
//! (`/proc/self/stat`), and the work directory's disk (`/proc/diskstats`),
//! so a CPU- or disk-bound result can be told apart from a link-bound one;
//! and the one measurement of the disk's bandwidth the model uses.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

pub use crate::procstat::TICK_S;

fn stat_cpu() -> Vec<u64> {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    s.lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect()
}

/// (busy, total) jiffies of all CPUs, from /proc/stat: how close to
/// CPU-bound this machine was during a phase.
pub fn cpu_jiffies() -> (u64, u64) {
    let v = stat_cpu();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// CPU time the machine spent running anything, in ticks: user, nice,
/// system, irq and softirq (not idle, iowait or time stolen by the host).
pub fn machine_ticks() -> u64 {
    let v = stat_cpu();
    [0, 1, 2, 5, 6]
        .iter()
        .map(|&i| v.get(i).copied().unwrap_or(0))
        .sum()
}

/// utime + stime of this process (all its threads), in ticks.
pub fn self_ticks() -> u64 {
    crate::procstat::read("self").map_or(0, |s| s.ticks)
}

/// The work directory's disk at one moment, from /proc/diskstats.
#[derive(Clone, Copy, Debug)]
pub struct DiskSample {
    io_ticks_ms: u64,
    read_sectors: u64,
    written_sectors: u64,
    at: Instant,
}

/// A sample of the disk holding `dir` (zeros when it is no block device).
pub fn disk_sample(dir: &Path) -> DiskSample {
    use std::os::unix::fs::MetadataExt;
    let mut s = DiskSample {
        io_ticks_ms: 0,
        read_sectors: 0,
        written_sectors: 0,
        at: Instant::now(),
    };
    let Ok(md) = std::fs::metadata(dir) else {
        return s;
    };
    let (major, minor) = (
        nix::sys::stat::major(md.dev()),
        nix::sys::stat::minor(md.dev()),
    );
    let text = std::fs::read_to_string("/proc/diskstats").unwrap_or_default();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() > 12 && f[0] == major.to_string() && f[1] == minor.to_string() {
            let n = |i: usize| f[i].parse::<u64>().unwrap_or(0);
            (s.io_ticks_ms, s.read_sectors, s.written_sectors) = (n(12), n(5), n(9));
            break;
        }
    }
    s
}

/// What the disk did between two samples.
#[derive(Clone, Copy, Debug)]
pub struct DiskUse {
    /// Share of the time it was busy.
    pub busy: f64,
    pub read_bytes: u64,
    pub written_bytes: u64,
}

/// What the disk holding `dir` did since sample `a`.
pub fn disk_since(dir: &Path, a: DiskSample) -> DiskUse {
    let b = disk_sample(dir);
    let ms = (b.at - a.at).as_millis().max(1) as f64;
    DiskUse {
        busy: b.io_ticks_ms.saturating_sub(a.io_ticks_ms) as f64 / ms,
        read_bytes: b.read_sectors.saturating_sub(a.read_sectors) * 512,
        written_bytes: b.written_sectors.saturating_sub(a.written_sectors) * 512,
    }
}

/// Fraction of the machine's CPUs that were busy between two samples.
pub fn busy_since(a: (u64, u64)) -> f64 {
    let b = cpu_jiffies();
    (b.0 - a.0) as f64 / (b.1 - a.1).max(1) as f64
}

/// Bytes measured by [`measure_disk_bps`].
pub const DISK_PROBE_BYTES: u64 = 256 << 20;

/// The disk's write bandwidth in bytes per second, the best of 3 tries
/// (another job's I/O on the same disk only makes a try slower): each
/// writes 256 MiB to a file in `dir` (1 MiB blocks, none alike),
/// `fdatasync`s it, and divides by the time from the first write to the end
/// of the fdatasync.
pub fn measure_disk_bps(dir: &Path) -> Result<f64> {
    let mut best: f64 = 0.0;
    for _ in 0..3 {
        best = best.max(probe_disk_bps(dir)?);
    }
    Ok(best)
}

fn probe_disk_bps(dir: &Path) -> Result<f64> {
    let path = dir.join(".disk-probe.tmp");
    let block = 1usize << 20;
    let mut buf = vec![0u8; block];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    nix::unistd::sync();
    let r = (|| {
        let mut f = std::fs::File::create(&path)?;
        let t = Instant::now();
        for i in 0..DISK_PROBE_BYTES / block as u64 {
            buf[..8].copy_from_slice(&i.to_le_bytes());
            f.write_all(&buf)?;
        }
        f.sync_data()?;
        anyhow::Ok(DISK_PROBE_BYTES as f64 / t.elapsed().as_secs_f64())
    })()
    .with_context(|| format!("measuring the disk with {}", path.display()));
    let _ = std::fs::remove_file(&path);
    r
}

/// CPU ticks (utime + stime, and cutime + cstime of reaped children) of
/// every process outside the harness's cgroups, by (pid, start time).
#[derive(Clone, Debug, Default)]
pub struct Others {
    by: std::collections::HashMap<(u32, u64), (bool, u64, u64)>,
}

/// PF_KTHREAD in the flags of `/proc/PID/stat`.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Samples every process but this one and those whose cpuacct cgroup is
/// below `/<ours>/` (the harness's nodes): kernel threads apart.
pub fn others(ours: &str) -> Others {
    let me = std::process::id();
    let mine = format!(":/{ours}/");
    let mut by = std::collections::HashMap::new();
    let Ok(d) = std::fs::read_dir("/proc") else {
        return Others { by };
    };
    for e in d.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(s) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some(st) = crate::procstat::parse(&s) else {
            continue;
        };
        let kthread = st.flags & PF_KTHREAD != 0;
        if !kthread {
            let cg = std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
            if cg
                .lines()
                .any(|l| l.contains(":cpuacct") && l.contains(&mine))
            {
                continue;
            }
        }
        by.insert((pid, st.start), (kthread, st.ticks, st.child_ticks));
    }
    Others { by }
}

/// (kernel threads, other processes) CPU-seconds between two samples: of
/// processes seen in both, the difference; of those seen only at the end,
/// all of it; and what processes seen in both reaped from children that
/// ended in between (whole lifetimes, so it may include a little from
/// before). Processes that started and ended in between without a parent
/// seen twice are missed.
pub fn others_since(a: &Others, b: &Others) -> (f64, f64) {
    let (mut k, mut o) = (0u64, 0u64);
    for (key, &(kthread, t, c)) in &b.by {
        let d = match a.by.get(key) {
            Some(&(_, t0, c0)) => t.saturating_sub(t0) + c.saturating_sub(c0),
            None => t,
        };
        if kthread {
            k += d;
        } else {
            o += d;
        }
    }
    (k as f64 * TICK_S, o as f64 * TICK_S)
}
