//! Walks over the stored chunks: the paged, id-ordered listing that
//! self-healing and fsck count replicas with, and the scrub that re-hashes
//! every chunk at a bounded rate and quarantines the corrupt ones.

use std::time::{Duration, Instant};

use blobvirt_core::ChunkId;

use super::{Store, StoreError};

/// Ids per List page when the caller does not say.
pub const PAGE: usize = 4096;

/// What one scrub pass found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubReport {
    pub checked: u64,
    pub bytes: u64,
    pub corrupt: Vec<ChunkId>,
}

impl Store {
    /// Up to `limit` durable chunk ids greater than `after`, in id order;
    /// the flag is true when nothing follows them.
    pub fn list(
        &self,
        after: Option<&ChunkId>,
        limit: usize,
    ) -> Result<(Vec<ChunkId>, bool), StoreError> {
        use std::ops::Bound;
        let limit = if limit == 0 { PAGE } else { limit };
        let from = after.map_or(Bound::Unbounded, |a| Bound::Excluded(*a));
        let inner = self.inner();
        let mut ids = inner
            .index
            .range((from, Bound::Unbounded))
            .filter(|(_, l)| l.durable)
            .map(|(id, _)| *id);
        let out: Vec<ChunkId> = ids.by_ref().take(limit).collect();
        let done = ids.next().is_none();
        Ok((out, done))
    }

    /// Re-reads every durable chunk and checks its hash, reading at most
    /// `bytes_per_sec` (0 = as fast as the disk goes). A corrupt chunk is
    /// quarantined by [`Store::get`], so it is no longer listed. Stops
    /// early (with what it found so far) once `go_on` answers false.
    pub fn scrub(
        &self,
        bytes_per_sec: u64,
        go_on: &dyn Fn() -> bool,
    ) -> Result<ScrubReport, StoreError> {
        let start = Instant::now();
        let mut r = ScrubReport::default();
        let mut after = None;
        loop {
            let (page, done) = self.list(after.as_ref(), PAGE)?;
            after = page.last().copied();
            for id in page {
                if !go_on() {
                    return Ok(r);
                }
                match self.get(&id) {
                    Ok(data) => r.bytes += data.len() as u64,
                    Err(StoreError::Corrupt { .. }) => r.corrupt.push(id),
                    // Deleted meanwhile (GC, a move).
                    Err(StoreError::NotFound { .. }) => continue,
                    Err(e) => return Err(e),
                }
                r.checked += 1;
                if bytes_per_sec > 0 {
                    let due = Duration::from_secs_f64(r.bytes as f64 / bytes_per_sec as f64);
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            }
            if done {
                break;
            }
        }
        if !r.corrupt.is_empty() {
            tracing::error!(node = %self.node, corrupt = r.corrupt.len(), checked = r.checked,
                "scrub found corrupt chunks and quarantined them; poold's next repair pass copies good replicas here");
        } else {
            tracing::info!(node = %self.node, checked = r.checked, bytes = r.bytes, "scrub pass clean");
        }
        Ok(r)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn flip(file: &std::path::Path, at: u64) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::options()
            .read(true)
            .write(true)
            .open(file)
            .unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x20], at).unwrap();
    }

    #[test]
    fn list_pages_in_id_order_and_scrub_quarantines() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), "n1").unwrap();
        let mut ids: Vec<ChunkId> = (0..50u32)
            .map(|i| {
                let data = i.to_le_bytes().repeat(100);
                let id = ChunkId::of(&data);
                s.put(&id, &data).unwrap();
                id
            })
            .collect();
        ids.sort_unstable();
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let (page, done) = s.list(after.as_ref(), 7).unwrap();
            assert!(page.len() <= 7);
            after = page.last().copied();
            seen.extend(page);
            if done {
                break;
            }
        }
        assert_eq!(seen, ids);
        // Flip a byte of one chunk: scrub finds it, and it is listed no more.
        let bad = ids[13];
        let at = s.locate(&bad).unwrap();
        flip(&at.file, at.data_at + 5);
        let r = s.scrub(0, &|| true).unwrap();
        assert_eq!(r.corrupt, vec![bad]);
        assert_eq!(r.checked, 50);
        let (all, done) = s.list(None, 0).unwrap();
        assert!(done);
        assert_eq!(all.len(), 49);
        assert!(!all.contains(&bad));
        assert_eq!(s.scrub(0, &|| true).unwrap().corrupt, vec![]);
    }
}
