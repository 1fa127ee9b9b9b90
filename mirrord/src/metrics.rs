//! mirrord's metric families (`blobvirt_mirrord_*`, listed in
//! `docs/metrics.md`).
//!
//! Daemon-wide counters ([`Metrics`]) are shared by every mirror, so they
//! keep counting across attach and detach: chunks and bytes fetched from
//! chunkd, committed, read and written through the mount, commits and
//! their failures, and the COMMIT phase times. Per-volume gauges (local and
//! dirty chunks, open files and writers, the last-error flag) are read from
//! the attached mirrors at each scrape, so a detached volume's series
//! disappear.
//!
//! Phase times are observed for commits that had something to publish
//! (dirty chunks, a size change or a label); a commit of a clean mirror is
//! neither timed nor counted in `commits_total`.

use std::sync::Arc;

use blobvirt_core::metrics::{encode_gauges, seconds_histogram, Registry};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

use crate::volumes::Volumes;

/// Label of `blobvirt_mirrord_commit_phase_seconds`: `1` or `2`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: &'static str,
}

/// The daemon-wide counters; cheap to clone (shared cells).
#[derive(Clone, Debug)]
pub struct Metrics {
    pub fetched_chunks: Counter,
    pub fetched_bytes: Counter,
    pub cache_hits: Counter,
    pub cache_hit_bytes: Counter,
    pub cache_bytes: prometheus_client::metrics::gauge::Gauge,
    pub committed_chunks: Counter,
    pub committed_bytes: Counter,
    pub read_bytes: Counter,
    pub written_bytes: Counter,
    pub commits: Counter,
    pub commit_failures: Counter,
    pub commit_phase: Family<PhaseLabel, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            fetched_chunks: Counter::default(),
            fetched_bytes: Counter::default(),
            cache_hits: Counter::default(),
            cache_hit_bytes: Counter::default(),
            cache_bytes: Default::default(),
            committed_chunks: Counter::default(),
            committed_bytes: Counter::default(),
            read_bytes: Counter::default(),
            written_bytes: Counter::default(),
            commits: Counter::default(),
            commit_failures: Counter::default(),
            commit_phase: Family::new_with_constructor(seconds_histogram),
        }
    }
}

impl Metrics {
    /// Records the duration of COMMIT phase `phase` (1 or 2).
    pub fn observe_phase(&self, phase: u8, secs: f64) {
        let phase = if phase == 1 { "1" } else { "2" };
        self.commit_phase
            .get_or_create(&PhaseLabel { phase })
            .observe(secs);
    }
}

/// Registers `vols`'s counters and a collector of its mirrors' gauges.
pub fn register(reg: &mut Registry, vols: Arc<Volumes>) {
    let m = vols.metrics.clone();
    for (name, help, c) in [
        (
            "blobvirt_mirrord_fetched_chunks",
            "Chunks fetched from chunkd nodes (on demand, read-ahead and prefetch)",
            &m.fetched_chunks,
        ),
        (
            "blobvirt_mirrord_fetched_bytes",
            "Bytes of chunks fetched from chunkd nodes",
            &m.fetched_bytes,
        ),
        (
            "blobvirt_mirrord_chunk_cache_hits",
            "Chunk fetches served by the host's chunk cache or by another mirror's fetch of the same chunk",
            &m.cache_hits,
        ),
        (
            "blobvirt_mirrord_chunk_cache_hit_bytes",
            "Bytes of those fetches (traffic the cache saved)",
            &m.cache_hit_bytes,
        ),
        (
            "blobvirt_mirrord_committed_chunks",
            "Chunks changed by the versions commits published",
            &m.committed_chunks,
        ),
        (
            "blobvirt_mirrord_committed_bytes",
            "Bytes of chunks commits uploaded to chunkd nodes",
            &m.committed_bytes,
        ),
        (
            "blobvirt_mirrord_read_bytes",
            "Bytes read through the mount",
            &m.read_bytes,
        ),
        (
            "blobvirt_mirrord_written_bytes",
            "Bytes written through the mount",
            &m.written_bytes,
        ),
        (
            "blobvirt_mirrord_commits",
            "Commits that published or had something to publish and succeeded",
            &m.commits,
        ),
        (
            "blobvirt_mirrord_commit_failures",
            "Commits that failed (the changes stay local)",
            &m.commit_failures,
        ),
    ] {
        reg.register(name, help, c.clone());
    }
    reg.register(
        "blobvirt_mirrord_chunk_cache_bytes",
        "Bytes held by the host's chunk cache",
        m.cache_bytes.clone(),
    );
    // Both series exist from the start, so rate() sees their first commit.
    for phase in ["1", "2"] {
        drop(m.commit_phase.get_or_create(&PhaseLabel { phase }));
    }
    reg.register(
        "blobvirt_mirrord_commit_phase_seconds",
        "Duration of COMMIT phase 1 (freeze the dirty set) and phase 2 (upload and publish)",
        m.commit_phase.clone(),
    );
    reg.register_collector(Box::new(MirrorGauges(vols)));
}

/// Reads every attached mirror's state at each scrape.
struct MirrorGauges(Arc<Volumes>);

impl std::fmt::Debug for MirrorGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mirrord mirror gauges")
    }
}

impl Collector for MirrorGauges {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut st: Vec<_> = self.0.mirrors().iter().map(|m| m.status()).collect();
        st.sort_by(|a, b| a.name.cmp(&b.name));
        type Get = fn(&mirrord_client::VolumeStatus) -> i64;
        let families: [(&str, &str, Get); 7] = [
            (
                "blobvirt_mirrord_mirror_chunks",
                "Chunks of the mirrored volume",
                |s| s.chunks as i64,
            ),
            (
                "blobvirt_mirrord_mirror_local_chunks",
                "Chunks of the volume present in the local mirror",
                |s| s.chunks_present as i64,
            ),
            (
                "blobvirt_mirrord_mirror_dirty_chunks",
                "Chunks written locally that no version holds yet",
                |s| s.chunks_dirty as i64,
            ),
            (
                "blobvirt_mirrord_mirror_size_bytes",
                "Size of the mirrored volume",
                |s| s.size as i64,
            ),
            (
                "blobvirt_mirrord_mirror_open_files",
                "Open files of the volume on the mount",
                |s| s.open_handles as i64,
            ),
            (
                "blobvirt_mirrord_mirror_writers",
                "Files of the volume open for writing",
                |s| s.writers as i64,
            ),
            (
                "blobvirt_mirrord_mirror_error",
                "1 while the mirror's last commit failed (or the volume was deleted under it)",
                |s| i64::from(s.last_error.is_some()),
            ),
        ];
        for (name, help, get) in families {
            encode_gauges(
                &mut enc,
                name,
                help,
                st.iter().map(|s| ([("volume", s.name.clone())], get(s))),
            )?;
        }
        blobvirt_core::metrics::encode_gauge(
            &mut enc,
            "blobvirt_mirrord_mirrors",
            "Volumes attached (mirrored) on this node",
            st.len() as u64,
        )
    }
}
