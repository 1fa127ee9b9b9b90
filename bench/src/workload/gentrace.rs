//! `gen-trace`: a synthetic boot read set for an image. Clustered runs
//! (length uniform in min..=max run, aligned to the io size) are placed only
//! inside the image's data regions (found with SEEK_DATA/SEEK_HOLE), never
//! overlapping, until their unique bytes reach `fraction` × image size
//! (rounded up to one io). Runs are emitted in shuffled order, each as
//! sequential reads of io size.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::unistd::{lseek, Whence};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::trace::{render, unique_bytes};
use super::{emit, mix, MIB};

/// Generate a synthetic boot trace inside the data regions of an image.
///
/// Prints one JSON line `{"reads":N,"unique_bytes":B}`.
#[derive(clap::Args, Debug)]
pub struct Opts {
    /// Sparse image whose data regions the reads fall in.
    #[arg(long)]
    pub image: PathBuf,
    /// Unique bytes to read, as a fraction of the image size.
    #[arg(long, default_value_t = 0.08)]
    pub fraction: f64,
    /// Seed of run lengths, placement and order.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Trace file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Size of every read in KiB; runs are aligned to it.
    #[arg(long, default_value_t = 128)]
    pub io_kib: u64,
    /// Shortest run of sequential reads in MiB.
    #[arg(long, default_value_t = 1)]
    pub min_run_mib: u64,
    /// Longest run of sequential reads in MiB.
    #[arg(long, default_value_t = 8)]
    pub max_run_mib: u64,
}

pub fn run(o: Opts) -> Result<()> {
    if !(o.fraction > 0.0 && o.fraction <= 1.0) {
        bail!(
            "--fraction {} is outside (0, 1]; pass a fraction such as 0.08",
            o.fraction
        );
    }
    if o.io_kib == 0 || o.min_run_mib == 0 || o.min_run_mib > o.max_run_mib {
        bail!("--io-kib must be > 0 and 0 < --min-run-mib <= --max-run-mib; fix the flags");
    }
    let (size, regions) = data_regions(&o.image)?;
    let io = o.io_kib * 1024;
    let runs = plan(
        &regions,
        size,
        o.fraction,
        o.seed,
        io,
        o.min_run_mib * MIB,
        o.max_run_mib * MIB,
    )
    .map_err(|e| anyhow::anyhow!("image {} {e}", o.image.display()))?;
    let reads: Vec<(u64, u64)> = runs
        .iter()
        .flat_map(|&(s, l)| (s..s + l).step_by(io as usize).map(move |off| (off, io)))
        .collect();
    let unique = unique_bytes(&reads);
    let header = [
        format!("image_size={size}"),
        format!("unique_bytes={unique}"),
        format!(
            "source=synthetic fraction={} seed={} io_kib={} runs={}",
            o.fraction,
            o.seed,
            o.io_kib,
            runs.len()
        ),
    ];
    std::fs::write(&o.out, render(&header, &reads))
        .with_context(|| format!("writing trace {}", o.out.display()))?;
    emit(&serde_json::json!({"reads": reads.len(), "unique_bytes": unique}))
}

/// The image size and its data regions `(start, end)` in ascending order.
pub fn data_regions(path: &Path) -> Result<(u64, Vec<(u64, u64)>)> {
    let f = File::open(path).with_context(|| format!("opening image {}", path.display()))?;
    let size = f.metadata()?.len();
    let fd = f.as_raw_fd();
    let mut regions = Vec::new();
    let mut pos = 0i64;
    while (pos as u64) < size {
        let start = match lseek(fd, pos, Whence::SeekData) {
            Ok(s) => s,
            Err(Errno::ENXIO) => break,
            Err(e) => bail!(
                "cannot find data in image {} (SEEK_DATA: {e})",
                path.display()
            ),
        };
        let end = lseek(fd, start, Whence::SeekHole)
            .with_context(|| format!("finding holes in image {} (SEEK_HOLE)", path.display()))?;
        regions.push((start as u64, end as u64));
        pos = end;
    }
    Ok((size, regions))
}

/// Places the runs `(offset, length)` of the boot set, in shuffled order:
/// io-aligned, inside `regions`, disjoint, together `ceil(fraction*size)`
/// rounded up to a whole io.
pub fn plan(
    regions: &[(u64, u64)],
    size: u64,
    fraction: f64,
    seed: u64,
    io: u64,
    min_run: u64,
    max_run: u64,
) -> Result<Vec<(u64, u64)>> {
    // Free space in io units, shrunk inwards to io alignment.
    let mut free: Vec<(u64, u64)> = regions
        .iter()
        .map(|&(s, e)| (s.div_ceil(io), e / io))
        .filter(|(a, b)| a < b)
        .collect();
    let mut free_units: u64 = free.iter().map(|(a, b)| b - a).sum();
    let needed = ((fraction * size as f64).ceil() as u64).div_ceil(io);
    if free_units < needed {
        bail!(
            "has {} MiB of io-aligned data, less than the {} MiB a fraction of {fraction} needs; \
             generate the image with a larger --data-fraction or pass a smaller --fraction",
            free_units * io / MIB,
            (needed * io).div_ceil(MIB)
        );
    }
    let lo = min_run.div_ceil(io).max(1);
    let hi = (max_run / io).max(lo);
    let mut rng = StdRng::seed_from_u64(mix(seed, 0x0074_7261_6365));
    let mut runs = Vec::new();
    let mut remaining = needed;
    while remaining > 0 {
        let mut len = rng.gen_range(lo..=hi).min(remaining);
        let mut r = rng.gen_range(0..free_units);
        let i = free
            .iter()
            .position(|(a, b)| {
                if r < b - a {
                    true
                } else {
                    r -= b - a;
                    false
                }
            })
            .expect("r < free_units lies in some interval");
        let (a, b) = free[i];
        let start = if b - a >= len {
            a + rng.gen_range(0..=b - a - len)
        } else {
            len = b - a;
            a
        };
        free.splice(
            i..=i,
            [(a, start), (start + len, b)]
                .into_iter()
                .filter(|(x, y)| x < y),
        );
        free_units -= len;
        remaining -= len;
        runs.push((start * io, len * io));
    }
    runs.shuffle(&mut rng);
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    const IO: u64 = 128 * 1024;

    fn check(regions: &[(u64, u64)], size: u64, fraction: f64, seed: u64) -> Vec<(u64, u64)> {
        let runs = plan(regions, size, fraction, seed, IO, MIB, 8 * MIB).unwrap();
        let mut sorted = runs.clone();
        sorted.sort_unstable();
        for w in sorted.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "runs overlap: {w:?}");
        }
        for &(s, l) in &runs {
            assert!(l > 0 && l <= 8 * MIB && s % IO == 0 && l % IO == 0);
            assert!(
                regions.iter().any(|&(a, b)| a <= s && s + l <= b),
                "run {s}+{l} is not inside a data region"
            );
        }
        let unique = unique_bytes(&runs);
        let target = (fraction * size as f64).ceil() as u64;
        assert!(
            unique >= target && unique < target + IO,
            "{unique} vs {target}"
        );
        assert_eq!(
            runs,
            plan(regions, size, fraction, seed, IO, MIB, 8 * MIB).unwrap()
        );
        runs
    }

    #[test]
    fn plan_stays_in_data_without_overlap_and_hits_fraction() {
        let regions = [
            (0, 3 * MIB),
            (10 * MIB + 4096, 40 * MIB),
            (50 * MIB, 64 * MIB),
        ];
        for seed in 0..20 {
            check(&regions, 64 * MIB, 0.08, seed);
            check(&regions, 64 * MIB, 0.5, seed);
        }
        // Every aligned byte of data: (3 + 29.875 + 14) MiB minus alignment.
        let all = regions
            .iter()
            .map(|&(s, e)| e / IO - s.div_ceil(IO))
            .sum::<u64>()
            * IO;
        check(&regions, 64 * MIB, all as f64 / (64 * MIB) as f64, 3);
        let e = plan(&regions, 64 * MIB, 0.9, 1, IO, MIB, 8 * MIB).unwrap_err();
        assert!(e.to_string().contains("--data-fraction"), "{e}");
    }

    #[test]
    fn finds_data_regions_of_a_sparse_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let f = File::create(&path).unwrap();
        f.set_len(64 * MIB).unwrap();
        let data = vec![7u8; 2 * MIB as usize];
        f.write_all_at(&data, 4 * MIB).unwrap();
        f.write_all_at(&data, 40 * MIB).unwrap();
        f.sync_all().unwrap();
        let (size, regions) = data_regions(&path).unwrap();
        assert_eq!(size, 64 * MIB);
        assert_eq!(regions, vec![(4 * MIB, 6 * MIB), (40 * MIB, 42 * MIB)]);
        let runs = check(&regions, size, 0.05, 1);
        // ceil(0.05 * 64 MiB) = 3355444 bytes = 25.6 ios, rounded up to 26.
        assert_eq!(unique_bytes(&runs), 26 * IO);
    }
}
