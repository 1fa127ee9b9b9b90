//! Workload generators and the emulated VM instance for the multideployment
//! experiments: `gen-image` (sparse raw images), `gen-trace` (synthetic boot
//! read sets), the trace file format, and `instance` (one VM that replays a
//! trace and then writes). Shared helpers for JSON-line output live here.

pub mod gentrace;
pub mod image;
pub mod instance;
pub mod trace;

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// 1 MiB in bytes.
pub const MIB: u64 = 1 << 20;

/// Prints one JSON value as a line on stdout and flushes, so a parent that
/// reads line by line sees it at once.
pub fn emit(v: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}")?;
    out.flush()?;
    Ok(())
}

/// CLOCK_REALTIME in nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Mixes a seed and an index into one well-spread 64-bit seed (splitmix64),
/// so per-item RNG streams are deterministic and unrelated.
pub fn mix(seed: u64, index: u64) -> u64 {
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(index)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
