//! Samples of how busy this machine was during a phase: the share of all
//! CPUs (`/proc/stat`) and of the work directory's disk (`/proc/diskstats`),
//! so a CPU- or disk-bound result can be told apart from a link-bound one.

use std::path::Path;

/// (busy, total) jiffies of all CPUs, from /proc/stat: how close to
/// CPU-bound this machine was during a phase.
pub fn cpu_jiffies() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// (io_ticks ms, sectors written, when) of the disk holding `dir`, from
/// /proc/diskstats: whether a phase was bound by the one shared disk.
pub fn disk_sample(dir: &Path) -> (u64, u64, std::time::Instant) {
    use std::os::unix::fs::MetadataExt;
    let now = std::time::Instant::now();
    let Ok(md) = std::fs::metadata(dir) else {
        return (0, 0, now);
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
            return (n(12), n(9), now);
        }
    }
    (0, 0, now)
}

/// Share of the time the disk was busy, and bytes written, since a sample.
pub fn disk_since(dir: &Path, a: (u64, u64, std::time::Instant)) -> (f64, u64) {
    let b = disk_sample(dir);
    let ms = (b.2 - a.2).as_millis().max(1) as f64;
    ((b.0 - a.0) as f64 / ms, (b.1 - a.1) * 512)
}

/// Fraction of the machine's CPUs that were busy between two samples.
pub fn busy_since(a: (u64, u64)) -> f64 {
    let b = cpu_jiffies();
    (b.0 - a.0) as f64 / (b.1 - a.1).max(1) as f64
}
