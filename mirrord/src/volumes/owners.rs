//! Ownership and mode of the volume files, kept per host in
//! `CACHE/owners.json` so that a `chmod`/`chown` (libvirt's DAC driver
//! chowns a disk to QEMU's user before a domain starts) survives a mirrord
//! restart. Another host has its own users and its own file.
//!
//! The file maps a volume name to `{blob_id, perm, uid, gid}`; an entry
//! applies only to the volume with that id, so a volume deleted and made
//! again under the same name starts with the defaults.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Mode and owner of one volume file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub blob_id: u64,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
}

/// The persisted table.
pub struct Owners {
    path: PathBuf,
    map: HashMap<String, Owner>,
}

impl Owners {
    /// Loads `path`; a missing file is an empty table, an unreadable one
    /// is logged and treated as empty (the defaults apply).
    pub fn load(path: PathBuf) -> Owners {
        let map = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(file = %path.display(), "ignoring the saved volume owners: {e}");
                HashMap::new()
            }),
            Err(_) => HashMap::new(),
        };
        Owners { path, map }
    }

    /// The saved owner of volume `name` with id `blob_id`.
    pub fn get(&self, name: &str, blob_id: u64) -> Option<Owner> {
        self.map.get(name).copied().filter(|o| o.blob_id == blob_id)
    }

    /// Records `o` for `name` and saves the file.
    pub fn set(&mut self, name: &str, o: Owner) {
        if self.map.get(name) != Some(&o) {
            self.map.insert(name.to_string(), o);
            self.save();
        }
    }

    /// Forgets a deleted volume.
    pub fn remove(&mut self, name: &str) {
        if self.map.remove(name).is_some() {
            self.save();
        }
    }

    /// Moves the entry of a renamed volume.
    pub fn rename(&mut self, name: &str, new: &str) {
        if let Some(o) = self.map.remove(name) {
            self.map.insert(new.to_string(), o);
            self.save();
        }
    }

    fn save(&self) {
        let res = serde_json::to_vec_pretty(&self.map)
            .map_err(std::io::Error::other)
            .and_then(|b| blobvirt_core::fsutil::write_atomic(&self.path, &b));
        if let Err(e) = res {
            tracing::error!(file = %self.path.display(), "cannot save the volume owners; a chmod or chown is lost at the next restart: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reload_and_follows_the_volume_id() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("owners.json");
        let mut o = Owners::load(p.clone());
        let a = Owner {
            blob_id: 7,
            perm: 0o600,
            uid: 64055,
            gid: 64055,
        };
        o.set("disk", a);
        o.set("other", Owner { blob_id: 8, ..a });
        o.rename("other", "moved");
        let o = Owners::load(p.clone());
        assert_eq!(o.get("disk", 7), Some(a));
        assert_eq!(o.get("disk", 9), None, "a new volume of that name");
        assert_eq!(o.get("moved", 8).map(|x| x.blob_id), Some(8));
        assert_eq!(o.get("other", 8), None);
        let mut o = o;
        o.remove("disk");
        assert_eq!(Owners::load(p).get("disk", 7), None);
    }
}
