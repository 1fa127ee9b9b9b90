//! Version-level changes that snapshots need: revert (a new latest version
//! sharing an older version's tree, O(1)) and relabelling one version.
//! Each is one write transaction.

use blobvirt_core::proto as pb;
use blobvirt_core::tree::NodeStore;

use super::{find_blob, find_version, Meta, MetaError, Result};
use crate::codec::{key, VersionRec};

impl Meta {
    /// Publishes version `next` of `name` whose content is `name@version`:
    /// it shares that version's root (one more reference, nothing copied).
    /// Returns the new version's number.
    pub fn revert_volume(&self, name: &str, version: u64, label: &str) -> Result<u64> {
        self.revert_volume_once(name, version, label, &[])
    }

    /// [`Meta::revert_volume`] with a request id (empty: none) kept in the
    /// new version: a revert resent with it answers the version its first
    /// try made.
    pub fn revert_volume_once(
        &self,
        name: &str,
        version: u64,
        label: &str,
        request: &[u8],
    ) -> Result<u64> {
        if version == 0 {
            return Err(MetaError::InvalidArgument(format!(
                "reverting volume {name} needs a version number; see its versions with blobvirt vol-info {name}"
            )));
        }
        self.write(|m| {
            let (id, mut blob) = find_blob(m.r(), name)?;
            if !request.is_empty() {
                if let Some(v) = super::write::version_with_request(m.r(), id, version, request)? {
                    return Ok(v);
                }
            }
            let (_, rec) = find_version(m.r(), name, id, version)?;
            m.incref(rec.root)?;
            let v = blob.next_version;
            blob.next_version += 1;
            let new = VersionRec {
                created: m.now,
                label: label.to_string(),
                request: request.to_vec(),
                ..rec
            };
            m.tx.put(&key::version(id, v), &new.encode())?;
            m.tx.put(&key::blob(id), &blob.encode())?;
            m.c.versions += 1;
            Ok(v)
        })
    }

    /// Sets the label of `name@version` (0 = latest).
    pub fn label_version(&self, name: &str, version: u64, label: &str) -> Result<pb::VersionInfo> {
        self.write(|m| {
            let (id, _) = find_blob(m.r(), name)?;
            let (v, rec) = find_version(m.r(), name, id, version)?;
            let rec = VersionRec {
                label: label.to_string(),
                ..rec
            };
            m.tx.put(&key::version(id, v), &rec.encode())?;
            Ok(pb::VersionInfo {
                version: v,
                size: rec.size,
                created: rec.created,
                label: rec.label,
            })
        })
    }
}
