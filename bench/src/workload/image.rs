//! `gen-image`: a deterministic sparse raw disk image. The image is cut in
//! 1 MiB extents; a seeded layout makes about `data-fraction` of them data,
//! clustered in runs of 1..=64 extents like a file system, the rest real
//! holes. Data is pseudo-random (incompressible, no two 4 KiB blocks equal,
//! never an all-zero 4 KiB block).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use super::{emit, mix, MIB};

/// Longest run of consecutive data extents.
const MAX_RUN_EXTENTS: u64 = 64;

/// Generate a sparse raw image with seeded incompressible data extents.
///
/// Prints one JSON line `{"size":BYTES,"data_bytes":BYTES}`.
#[derive(clap::Args, Debug)]
pub struct Opts {
    /// Image file to create (replaced if it exists).
    #[arg(long)]
    pub out: PathBuf,
    /// Image size in MiB.
    #[arg(long, default_value_t = 2048)]
    pub size_mib: u64,
    /// Fraction of the 1 MiB extents that hold data (0..=1); the rest are holes.
    #[arg(long, default_value_t = 0.4)]
    pub data_fraction: f64,
    /// Seed of the layout and of the data.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn run(o: Opts) -> Result<()> {
    if !(0.0..=1.0).contains(&o.data_fraction) {
        bail!(
            "--data-fraction {} is outside 0..=1; pass a fraction such as 0.4",
            o.data_fraction
        );
    }
    let runs = layout(o.size_mib, o.data_fraction, o.seed);
    let size = o.size_mib * MIB;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&o.out)
        .with_context(|| format!("creating image {}", o.out.display()))?;
    file.set_len(size)
        .with_context(|| format!("sizing image {} to {size} bytes", o.out.display()))?;
    let mut buf = vec![0u8; MIB as usize];
    let mut data_bytes = 0;
    for &(first, count) in &runs {
        for e in first..first + count {
            fill_extent(o.seed, e, &mut buf);
            file.write_all_at(&buf, e * MIB)
                .with_context(|| format!("writing extent {e} of image {}", o.out.display()))?;
            data_bytes += MIB;
        }
    }
    file.sync_all()
        .with_context(|| format!("syncing image {}", o.out.display()))?;
    emit(&serde_json::json!({"size": size, "data_bytes": data_bytes}))
}

/// The data runs `(first_extent, extent_count)` of an image of `extents`
/// 1 MiB extents, in ascending order and never overlapping. Exactly
/// `round(fraction * extents)` extents are data.
pub fn layout(extents: u64, fraction: f64, seed: u64) -> Vec<(u64, u64)> {
    let mut rng = StdRng::seed_from_u64(mix(seed, u64::MAX));
    let data = ((fraction * extents as f64).round() as u64).min(extents);
    let mut lens = Vec::new();
    let mut sum = 0;
    while sum < data {
        let l = rng.gen_range(1..=MAX_RUN_EXTENTS).min(data - sum);
        lens.push(l);
        sum += l;
    }
    // Spread the holes over the k+1 gaps around the k runs, keeping inner
    // gaps at least one extent long when there are enough holes.
    let holes = extents - data;
    let k = lens.len() as u64;
    let inner_min = if k > 0 && holes >= k - 1 { 1 } else { 0 };
    let free = holes - inner_min * k.saturating_sub(1);
    let mut cuts: Vec<u64> = (0..k).map(|_| rng.gen_range(0..=free)).collect();
    cuts.sort_unstable();
    let mut runs = Vec::with_capacity(lens.len());
    let mut pos = 0;
    let mut prev_cut = 0;
    for (i, (&l, &cut)) in lens.iter().zip(&cuts).enumerate() {
        pos += cut - prev_cut + if i > 0 { inner_min } else { 0 };
        prev_cut = cut;
        runs.push((pos, l));
        pos += l;
    }
    runs
}

/// Fills one 1 MiB extent with the seeded stream of extent `index`, stamping
/// every 4 KiB block with a non-zero block number so no block is all zero
/// and no two blocks are equal.
pub fn fill_extent(seed: u64, index: u64, buf: &mut [u8]) {
    let mut rng = StdRng::seed_from_u64(mix(seed, index));
    rng.fill_bytes(buf);
    for (b, block) in buf.chunks_mut(4096).enumerate() {
        let stamp = ((index << 8) | b as u64) + 1;
        block[..8].copy_from_slice(&stamp.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_hits_fraction_without_overlap() {
        for (n, f, seed) in [(2048, 0.4, 1), (64, 0.08, 2), (100, 1.0, 3), (10, 0.0, 4)] {
            let runs = layout(n, f, seed);
            let total: u64 = runs.iter().map(|r| r.1).sum();
            assert_eq!(total, (f * n as f64).round() as u64, "n={n} f={f}");
            let mut end = 0;
            for &(s, l) in &runs {
                assert!(s >= end && (1..=MAX_RUN_EXTENTS).contains(&l));
                end = s + l;
            }
            assert!(end <= n);
            assert_eq!(runs, layout(n, f, seed), "layout must be deterministic");
        }
        // Clustered: 40% of 2048 extents in runs, not one run per extent.
        assert!(layout(2048, 0.4, 1).len() < 100);
    }

    #[test]
    fn extents_differ_and_have_no_zero_blocks() {
        let (mut a, mut b) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
        fill_extent(1, 0, &mut a);
        fill_extent(1, 1, &mut b);
        assert_ne!(a[8..4096], b[8..4096]);
        let mut c = vec![0u8; MIB as usize];
        fill_extent(1, 0, &mut c);
        assert_eq!(a, c);
        for block in a.chunks(4096) {
            assert!(block.iter().any(|&x| x != 0));
        }
    }
}
