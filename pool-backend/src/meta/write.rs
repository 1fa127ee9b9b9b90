//! Metadata changes: publish (create, shadow, resize), clone, delete,
//! profiles and membership. Each is one write transaction.

use std::collections::BTreeSet;

use blobvirt_core::chunk::{check_chunk_size, chunk_count};
use blobvirt_core::proto as pb;
use blobvirt_core::tree::{self, Child, NodeStore};
use blobvirt_core::ChunkId;

use super::{
    blob_info, find_blob, find_version, no_version, versions, Meta, MetaError, MetaTx, Result,
};
use crate::codec::{self, key, BlobRec, GcState, Origin, VersionRec};
use crate::kv::ReadTx;

/// Longest boot profile kept per volume (entries past it are dropped).
/// 256 Ki entries (2 MiB), so that one fits an etcd request.
pub const MAX_PROFILE: usize = 1 << 18;

/// What a publish did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublishOutcome {
    /// The new version's number.
    Published(u64),
    /// Nothing was published: these chunks may have been deleted by GC since
    /// the client checked them; it must upload them again and retry with
    /// `gc_epoch`.
    Reupload { chunks: Vec<ChunkId>, gc_epoch: u64 },
}

/// A publish checked against the volume as it is now.
pub(super) struct Prepared {
    id: u64,
    blob: BlobRec,
    /// The base version's root (a hole for a new volume).
    pub root: Child,
    pub n_old: u64,
    pub n_new: u64,
}

/// Checks `req` against the store (name, base version, chunk size, chunk
/// indices) and finds what it builds on; changes nothing.
pub(super) fn prepare(
    m: &MetaTx,
    req: &pb::PublishRequest,
    changes: &[(u64, Option<ChunkId>)],
) -> Result<Prepared> {
    let name = req.name.as_str();
    let (id, blob, base) = if req.create {
        if m.r().get(&key::name(name))?.is_some() {
            return Err(taken(name, "pick another name or add --new-version"));
        }
        let cs = check_chunk_size(req.chunk_size as u64)
            .map_err(|e| MetaError::InvalidArgument(format!("volume {name}: {e}")))?;
        let id = m.c.next_blob;
        let b = BlobRec {
            name: name.to_string(),
            chunk_size: cs,
            created: m.now,
            next_version: 1,
            origin: None,
        };
        (id, b, None)
    } else {
        let (id, b) = find_blob(m.r(), name)?;
        if req.chunk_size != 0 && req.chunk_size != b.chunk_size {
            return Err(MetaError::InvalidArgument(format!(
                "volume {name} has chunk size {}, not {}; publish with its chunk size",
                b.chunk_size, req.chunk_size
            )));
        }
        let (latest, rec) = find_version(m.r(), name, id, 0)?;
        if req.base_version != latest {
            return Err(MetaError::FailedPrecondition(format!(
                "volume {name} is at version {latest}, not {}; resolve the latest version and publish your changes on top of it",
                req.base_version
            )));
        }
        (id, b, Some(rec))
    };
    let n_new = chunk_count(req.size, blob.chunk_size);
    if let Some((i, _)) = changes.iter().find(|(i, _)| *i >= n_new) {
        return Err(MetaError::InvalidArgument(format!(
            "chunk index {i} is past the end of volume {name} ({n_new} chunks of {} bytes for size {}); publish a larger size or fix the index",
            blob.chunk_size, req.size
        )));
    }
    let (root, n_old) = match &base {
        Some(b) => (b.root, chunk_count(b.size, blob.chunk_size)),
        None => (Child::Hole, 0),
    };
    Ok(Prepared {
        id,
        blob,
        root,
        n_old,
        n_new,
    })
}

/// Makes `root` (one reference on it held by the caller, which passes to
/// the version) the next version of the prepared volume.
pub(super) fn commit_version(
    m: &mut MetaTx,
    req: &pb::PublishRequest,
    p: Prepared,
    root: Child,
    depth: u32,
) -> Result<PublishOutcome> {
    let Prepared { id, mut blob, .. } = p;
    let v = blob.next_version;
    blob.next_version += 1;
    let rec = VersionRec {
        size: req.size,
        depth,
        created: m.now,
        root,
        label: req.label.clone(),
        request: req.request_id.to_vec(),
    };
    m.tx.put(&key::version(id, v), &rec.encode())?;
    m.tx.put(&key::blob(id), &blob.encode())?;
    m.c.versions += 1;
    if req.create {
        m.tx.put(&key::name(&req.name), &codec::enc_u64(id))?;
        m.c.next_blob += 1;
        m.c.blobs += 1;
    }
    Ok(PublishOutcome::Published(v))
}

/// The version an earlier try of `req` (same request id) published, if
/// any: a version of the volume newer than `req`'s base that carries the
/// request id. Resending a publish is then safe.
pub(super) fn already_published(tx: &dyn ReadTx, req: &pb::PublishRequest) -> Result<Option<u64>> {
    if req.request_id.is_empty() {
        return Ok(None);
    }
    let Some(id) = tx.get(&key::name(&req.name))? else {
        return Ok(None);
    };
    let id = codec::dec_u64(&id, "volume id")?;
    let base = if req.create { 0 } else { req.base_version };
    version_with_request(tx, id, base, &req.request_id)
}

/// The first version of volume `id` after `after` that request `rid`
/// made (versions record their request id), if any.
pub(super) fn version_with_request(
    tx: &dyn ReadTx,
    id: u64,
    after: u64,
    rid: &[u8],
) -> Result<Option<u64>> {
    // Only the versions after `after` (a retry comes soon after its try).
    let end = crate::kv::prefix_end(&key::versions_of(id));
    let mut found = None;
    let mut bad = None;
    tx.scan(
        &key::version(id, after.saturating_add(1)),
        end.as_deref(),
        &mut |k, v| match VersionRec::decode(v) {
            Ok(rec) if rec.request == rid => {
                found = key::version_of_key(k);
                false
            }
            Ok(_) => true,
            Err(e) => {
                bad = Some(e);
                false
            }
        },
    )?;
    if let Some(e) = bad {
        return Err(e.into());
    }
    Ok(found)
}

/// Checks a new volume name (it becomes a file name on the mirrord mount).
pub fn check_name(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.len() > 200
        || name == "."
        || name == ".."
        || name.starts_with('-')
        || name.chars().any(|c| c == '/' || c == '@' || c.is_control());
    if bad {
        return Err(MetaError::InvalidArgument(format!(
            "{name:?} is not a valid volume name; use 1 to 200 characters without '/', '@' or control characters, not starting with '-'"
        )));
    }
    Ok(())
}

/// Parses wire changes (empty id = hole) and normalizes them.
pub fn parse_changes(changes: &[pb::ChunkChange]) -> Result<Vec<(u64, Option<ChunkId>)>> {
    let parsed = changes
        .iter()
        .map(|c| {
            if c.id.is_empty() {
                return Ok((c.index, None));
            }
            ChunkId::from_slice(&c.id).map(|id| (c.index, Some(id))).ok_or_else(|| {
                MetaError::InvalidArgument(format!(
                    "the chunk id for chunk index {} has {} bytes; chunk ids are 32-byte BLAKE3 digests (empty for a hole)",
                    c.index,
                    c.id.len()
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(tree::normalize_changes(parsed))
}

fn taken(name: &str, what: &str) -> MetaError {
    MetaError::AlreadyExists(format!("volume {name} already exists; {what}"))
}

impl Meta {
    /// Publishes a version as described by `req` (see `PublishRequest` in
    /// the proto): creates the volume, or shadows its latest version,
    /// resizing the tree when the size changes.
    pub fn publish(&self, req: &pb::PublishRequest) -> Result<PublishOutcome> {
        let changes = parse_changes(&req.changes)?;
        if req.create {
            check_name(&req.name)?;
        }
        let sliced = self.slice_for(req, &changes)?;
        if sliced.is_none() {
            self.prefetch_chunks(&changes)?;
        }
        if let Some(per) = sliced {
            if let Some(v) = self.read(|tx| already_published(tx, req))? {
                return Ok(PublishOutcome::Published(v));
            }
            return self.publish_sliced(req, &changes, per);
        }
        self.write(|m| {
            if let Some(v) = already_published(m.r(), req)? {
                return Ok(PublishOutcome::Published(v));
            }
            let p = prepare(m, req, &changes)?;
            let reupload = must_reupload(m, &changes, req.gc_epoch)?;
            if !reupload.is_empty() {
                return Ok(PublishOutcome::Reupload {
                    chunks: reupload,
                    gc_epoch: m.c.gc_epoch,
                });
            }
            // Hold a temporary reference on the resized root so nodes that
            // resize created and apply then shadowed are freed by release.
            let (sized, depth) = tree::resize(m, p.root, p.n_old, p.n_new)?;
            m.incref(sized)?;
            let new_root = tree::apply(m, sized, depth, &changes)?;
            m.incref(new_root)?;
            tree::release(m, sized)?;
            commit_version(m, req, p, new_root, depth)
        })
    }

    /// Reads the reference count and GC state of every chunk `changes`
    /// names in batches (where the engine has a round trip per read), so
    /// the publish finds them in the engine's cache.
    pub(super) fn prefetch_chunks(&self, changes: &[(u64, Option<ChunkId>)]) -> Result<()> {
        if !self.kv.batched_reads() {
            return Ok(());
        }
        let ids: BTreeSet<ChunkId> = changes.iter().filter_map(|(_, c)| *c).collect();
        let keys: Vec<Vec<u8>> = ids
            .iter()
            .flat_map(|id| [key::chunk(id), key::gc(id)])
            .collect();
        Ok(self.kv.prefetch(&keys)?)
    }

    /// Makes `dst` a new volume whose version 1 is `src@version` (0 =
    /// latest): O(1), it shares the source's tree root.
    pub fn clone_volume(&self, src: &str, version: u64, dst: &str) -> Result<pb::BlobInfo> {
        self.clone_volume_once(src, version, dst, &[])
    }

    /// [`Meta::clone_volume`] with a request id (empty: none) kept in the
    /// clone's version 1: when `dst` exists and that request made it, the
    /// answer is `dst` (a resent clone), not "already exists".
    pub fn clone_volume_once(
        &self,
        src: &str,
        version: u64,
        dst: &str,
        request: &[u8],
    ) -> Result<pb::BlobInfo> {
        check_name(dst)?;
        self.write(|m| {
            if let Some(did) = m.r().get(&key::name(dst))? {
                let did = codec::dec_u64(&did, "volume id")?;
                if !request.is_empty() && version_with_request(m.r(), did, 0, request)? == Some(1) {
                    let (_, b) = find_blob(m.r(), dst)?;
                    return blob_info(m.r(), did, &b);
                }
                return Err(taken(dst, "pick another name for the clone"));
            }
            let (sid, sb) = find_blob(m.r(), src)?;
            let (sv, srec) = find_version(m.r(), src, sid, version)?;
            m.incref(srec.root)?;
            let id = m.c.next_blob;
            m.c.next_blob += 1;
            let b = BlobRec {
                name: dst.to_string(),
                chunk_size: sb.chunk_size,
                created: m.now,
                next_version: 2,
                origin: Some(Origin {
                    blob: sid,
                    name: src.to_string(),
                    version: sv,
                }),
            };
            let rec = VersionRec {
                created: m.now,
                label: String::new(),
                request: request.to_vec(),
                ..srec
            };
            m.tx.put(&key::blob(id), &b.encode())?;
            m.tx.put(&key::name(dst), &codec::enc_u64(id))?;
            m.tx.put(&key::version(id, 1), &rec.encode())?;
            m.c.blobs += 1;
            m.c.versions += 1;
            blob_info(m.r(), id, &b)
        })
    }

    /// Deletes version `version` of `name`, or the whole volume when it is 0.
    pub fn delete_volume(&self, name: &str, version: u64) -> Result<()> {
        let bounded = self.kv.txn_budget().is_some();
        self.write(|m| {
            let (id, _) = find_blob(m.r(), name)?;
            let all = versions(m.r(), id)?;
            let doomed: Vec<_> = if version == 0 {
                all.clone()
            } else {
                let Some(v) = all.iter().find(|(n, _)| *n == version) else {
                    return Err(no_version(name, version, &all));
                };
                if all.len() == 1 {
                    return Err(MetaError::FailedPrecondition(format!(
                        "version {version} is the only version of volume {name}; delete the volume with blobvirt vol-delete {name}"
                    )));
                }
                vec![v.clone()]
            };
            for (n, rec) in &doomed {
                if bounded {
                    super::bounded::queue_release(m, rec.root)?;
                } else {
                    tree::release(m, rec.root)?;
                }
                m.tx.delete(&key::version(id, *n))?;
                m.c.versions = m.c.versions.saturating_sub(1);
            }
            if version == 0 {
                m.tx.delete(&key::blob(id))?;
                m.tx.delete(&key::name(name))?;
                m.tx.delete(&key::profile(id))?;
                m.c.blobs = m.c.blobs.saturating_sub(1);
            }
            Ok(())
        })?;
        if bounded {
            self.drain_releases()?;
        }
        Ok(())
    }

    /// Renames volume `name` to `new_name`; its versions, profile and
    /// clones are unchanged (clones keep the origin name they recorded).
    pub fn rename_volume(&self, name: &str, new_name: &str) -> Result<pb::BlobInfo> {
        check_name(new_name)?;
        self.write(|m| {
            let (id, mut b) = find_blob(m.r(), name)?;
            if name == new_name {
                return blob_info(m.r(), id, &b);
            }
            if m.r().get(&key::name(new_name))?.is_some() {
                return Err(taken(new_name, "delete it first or pick another name"));
            }
            b.name = new_name.to_string();
            m.tx.put(&key::blob(id), &b.encode())?;
            m.tx.delete(&key::name(name))?;
            m.tx.put(&key::name(new_name), &codec::enc_u64(id))?;
            blob_info(m.r(), id, &b)
        })
    }

    /// Stores the boot profile of `name` (capped at [`MAX_PROFILE`] entries).
    pub fn put_profile(&self, name: &str, chunks: &[u64]) -> Result<()> {
        let chunks = &chunks[..chunks.len().min(MAX_PROFILE)];
        self.write(|m| {
            let (id, _) = find_blob(m.r(), name)?;
            m.tx.put(&key::profile(id), &codec::encode_profile(chunks))?;
            Ok(())
        })
    }

    /// Records (or updates) a chunkd's address.
    pub fn put_member(&self, id: &str, addr: &str) -> Result<()> {
        self.write(|m| {
            let k = key::member(id);
            if m.r().get(&k)?.as_deref() != Some(addr.as_bytes()) {
                m.tx.put(&k, addr.as_bytes())?;
            }
            Ok(())
        })
    }
}

/// Chunks of `changes` that have no references and may be gone: being
/// deleted now, or unreferenced while a GC finished since the client's
/// `gc_epoch`.
pub(super) fn must_reupload(
    m: &MetaTx,
    changes: &[(u64, Option<ChunkId>)],
    client_epoch: u64,
) -> Result<Vec<ChunkId>> {
    let ids: BTreeSet<ChunkId> = changes.iter().filter_map(|(_, c)| *c).collect();
    let mut out = Vec::new();
    for id in ids {
        if m.chunk_refs(&id)? > 0 {
            continue;
        }
        let deleting = m.gc_state(&id)? == Some(GcState::Deleting);
        if deleting || m.c.gc_epoch > client_epoch {
            out.push(id);
        }
    }
    Ok(out)
}
