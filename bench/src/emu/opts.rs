//! The command line of `blobvirt-bench emu`: node counts, runs, systems,
//! image, trace, snapshot writes, link model, disk setting and directories;
//! and [`Disk`], the disk setting of a harness run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// Node counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8,16,32")]
    pub nodes: Vec<usize>,
    /// Runs per system and node count (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Runs of prepro-http at 16 nodes and more (each one moves N × the
    /// image through the server's link); default: --runs.
    #[arg(long)]
    pub http_large_runs: Option<usize>,
    /// Systems: blobvirt, prepro-http, prepro-chain, qcow2-nbd.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "blobvirt,prepro-chain,qcow2-nbd,prepro-http"
    )]
    pub systems: Vec<String>,
    /// Image to deploy; default: a synthetic sparse image made in --dir.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Size of the synthetic image.
    #[arg(long, default_value_t = 2048)]
    pub image_mib: u64,
    /// Fraction of the synthetic image that holds data.
    #[arg(long, default_value_t = 0.4)]
    pub data_fraction: f64,
    /// Read trace; default: a synthetic boot set of --fraction of the image.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Fraction of the image the synthetic boot set reads.
    #[arg(long, default_value_t = 0.08)]
    pub fraction: f64,
    /// MiB each instance writes before the snapshot (0: no snapshot).
    #[arg(long, default_value_t = 15)]
    pub write_mib: u64,
    /// Size of each scattered write.
    #[arg(long, default_value_t = 256)]
    pub write_block_kib: u64,
    /// Link rate of every node (and of the server), Mbit/s.
    #[arg(long, default_value_t = 1000)]
    pub rate_mbit: u64,
    /// tbf latency (queue bound) of every link, ms.
    #[arg(long, default_value_t = 0.2)]
    pub latency_ms: f64,
    /// blobvirt replication factor.
    #[arg(long, default_value_t = 2)]
    pub replicas: u32,
    /// Work directory (images, node directories).
    #[arg(long, default_value = "/var/tmp/blobvirt-emu")]
    pub dir: PathBuf,
    /// Directory of the release binaries.
    #[arg(long, default_value = "target/release")]
    pub bin: PathBuf,
    /// Results: OUT/results.jsonl (appended), tables and plots.
    #[arg(long, default_value = "bench/results/emu")]
    pub out: PathBuf,
    /// Label of this experiment in the results (e.g. the trace's name).
    #[arg(long, default_value = "b")]
    pub label: String,
    /// Throttle every node's (and the server's) reads and writes on the work
    /// directory's disk to this many MB/s (10^6 bytes/s), with cgroup v1
    /// blkio; write-back of buffered writes by the kernel is not throttled.
    #[arg(long)]
    pub slow_disk_mbps: Option<f64>,
    /// Disk bandwidth of a node in the per-node model, MB/s; default: the
    /// work directory's disk measured once (best of 3: 256 MiB written +
    /// fdatasync), or --slow-disk-mbps when that is lower.
    #[arg(long)]
    pub disk_mbps: Option<f64>,
}

/// The disk setting of one harness run, stored with every record.
#[derive(Clone, Debug, PartialEq)]
pub struct Disk {
    /// Bytes/s measured on the work directory's disk (None with --disk-mbps).
    pub measured_bps: Option<f64>,
    /// Bytes/s of each node's disk in the model.
    pub model_bps: f64,
    /// Bytes/s every node is throttled to, if it is.
    pub slow_bps: Option<u64>,
}

fn mbps(bps: f64) -> String {
    let m = bps / 1e6;
    if m.fract() == 0.0 {
        format!("{m:.0}")
    } else {
        format!("{m}")
    }
}

impl Disk {
    /// From the options; measures the disk of `dir` unless --disk-mbps.
    pub fn resolve(o: &Opts, dir: &Path) -> Result<Disk> {
        for (name, v) in [
            ("--slow-disk-mbps", o.slow_disk_mbps),
            ("--disk-mbps", o.disk_mbps),
        ] {
            if v.is_some_and(|v| !(v > 0.0 && v.is_finite())) {
                bail!("{name} must be a positive number of MB/s");
            }
        }
        let slow_bps = o.slow_disk_mbps.map(|m| (m * 1e6).round() as u64);
        let (measured_bps, native) = match o.disk_mbps {
            Some(m) => (None, m * 1e6),
            None => {
                let b = super::sample::measure_disk_bps(dir)?;
                eprintln!(
                    "emu: disk of {}: {:.0} MB/s (best of 3: 256 MiB written + fdatasync)",
                    dir.display(),
                    b / 1e6
                );
                (Some(b), b)
            }
        };
        let model_bps = slow_bps.map_or(native, |s| native.min(s as f64));
        Ok(Disk {
            measured_bps,
            model_bps,
            slow_bps,
        })
    }

    /// Short name of the setting, in records and file names: `native` or
    /// `slowM` (M MB/s).
    pub fn id(&self) -> String {
        self.slow_bps
            .map_or("native".into(), |b| format!("slow{}", mbps(b as f64)))
    }

    /// What the setting is, for table titles.
    pub fn title(&self) -> String {
        let model = format!("{:.0} MB/s per node in the model", self.model_bps / 1e6);
        let how = match self.measured_bps {
            Some(b) => format!("measured {:.0} MB/s", b / 1e6),
            None => "set with --disk-mbps".into(),
        };
        match self.slow_bps {
            None => format!("disk: native, shared by all nodes ({how}; {model})"),
            Some(s) => format!(
                "disk: every node throttled to {} MB/s (blkio v1; write-back of buffered writes not throttled; {how}; {model})",
                mbps(s as f64)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_ids_and_titles() {
        let d = Disk {
            measured_bps: Some(812.4e6),
            model_bps: 812.4e6,
            slow_bps: None,
        };
        assert_eq!(d.id(), "native");
        assert!(d.title().contains("measured 812 MB/s"), "{}", d.title());
        let d = Disk {
            measured_bps: None,
            model_bps: 12.5e6,
            slow_bps: Some(12_500_000),
        };
        assert_eq!(d.id(), "slow12.5");
        assert!(d.title().contains("throttled to 12.5 MB/s"));
    }
}
