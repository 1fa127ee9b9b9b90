//! chunkd's metric families (`blobvirt_chunkd_*`, listed in
//! `docs/metrics.md`): counters of chunks and bytes served, put, deleted and
//! found corrupt, kept by the gRPC service; gauges of what the store holds
//! and of its disk, read from the store at each scrape.

use std::sync::Arc;

use blobvirt_core::metrics::{encode_gauge, Registry};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::Counter;

use crate::store::Store;

/// Counters the service adds to; cheap to clone (shared cells).
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub served_chunks: Counter,
    pub served_bytes: Counter,
    pub put_chunks: Counter,
    pub put_bytes: Counter,
    /// Puts of chunks that were not there yet.
    pub put_new_chunks: Counter,
    pub deleted_chunks: Counter,
    pub corrupt_chunks: Counter,
}

impl Metrics {
    /// Registers the counters and a collector of `store`'s gauges.
    pub fn register(reg: &mut Registry, store: Arc<Store>) -> Metrics {
        let m = Metrics::default();
        let c = |name: &str, help: &str, c: &Counter, reg: &mut Registry| {
            reg.register(name, help, c.clone())
        };
        c(
            "blobvirt_chunkd_served_chunks",
            "Chunks sent to clients by Get",
            &m.served_chunks,
            reg,
        );
        c(
            "blobvirt_chunkd_served_bytes",
            "Bytes of chunks sent to clients by Get",
            &m.served_bytes,
            reg,
        );
        c(
            "blobvirt_chunkd_put_chunks",
            "Chunks accepted by Put (including ones already stored)",
            &m.put_chunks,
            reg,
        );
        c(
            "blobvirt_chunkd_put_bytes",
            "Bytes of chunks accepted by Put (including ones already stored)",
            &m.put_bytes,
            reg,
        );
        c(
            "blobvirt_chunkd_put_new_chunks",
            "Chunks that a Put stored for the first time",
            &m.put_new_chunks,
            reg,
        );
        c(
            "blobvirt_chunkd_deleted_chunks",
            "Chunks removed by Delete (garbage collection)",
            &m.deleted_chunks,
            reg,
        );
        c(
            "blobvirt_chunkd_corrupt_chunks",
            "Chunks found corrupt on a read and quarantined",
            &m.corrupt_chunks,
            reg,
        );
        reg.register_collector(Box::new(StoreGauges(store)));
        m
    }
}

/// Reads the store's counts and disk space at each scrape.
struct StoreGauges(Arc<Store>);

impl std::fmt::Debug for StoreGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "chunkd store gauges of {}", self.0.node_id())
    }
}

impl Collector for StoreGauges {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let st = match self.0.stats() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot read the store's counts for metrics: {e}");
                return Ok(());
            }
        };
        encode_gauge(
            &mut enc,
            "blobvirt_chunkd_stored_chunks",
            "Chunks stored on this node",
            st.chunks,
        )?;
        encode_gauge(
            &mut enc,
            "blobvirt_chunkd_stored_bytes",
            "Bytes of the chunks stored on this node",
            st.bytes,
        )?;
        encode_gauge(
            &mut enc,
            "blobvirt_chunkd_staged_chunks",
            "Chunks put with staged=true that no Flush has made durable yet",
            self.0.staged_len(),
        )?;
        encode_gauge(
            &mut enc,
            "blobvirt_chunkd_disk_free_bytes",
            "Space available to chunkd on the file system of its data directory",
            st.free_bytes,
        )?;
        encode_gauge(
            &mut enc,
            "blobvirt_chunkd_disk_total_bytes",
            "Size of the file system of chunkd's data directory",
            st.total_bytes,
        )
    }
}
