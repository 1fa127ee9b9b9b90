//! Ownership and mode of the volume files, kept per host in
//! `CACHE/owners.json` so that a `chmod`/`chown` (libvirt's DAC driver
//! chowns a disk to QEMU's user before a domain starts) survives a mirrord
//! restart. Another host has its own users and its own file.
//!
//! The file is `{"format": 2, "volumes": {NAME: {blob_id, perm, uid,
//! gid}}}`; an entry applies only to the volume with that id, so a volume
//! deleted and made again under the same name starts with the defaults
//! (`root:root 0600`, see `fs/access.rs`). Format 1 was the bare map,
//! written when every file was `0666`: its entries still carrying that old
//! default get `0600` when it is loaded (and saved as format 2).

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

/// The current file format.
const FORMAT: u32 = 2;
/// The mode every file had before format 2.
const OLD_DEFAULT: u16 = 0o666;

#[derive(Serialize, Deserialize)]
struct File {
    format: u32,
    volumes: HashMap<String, Owner>,
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
        let Ok(b) = std::fs::read(&path) else {
            return Owners {
                path,
                map: HashMap::new(),
            };
        };
        if let Ok(f) = serde_json::from_slice::<File>(&b) {
            if f.format == FORMAT {
                return Owners {
                    path,
                    map: f.volumes,
                };
            }
        }
        match serde_json::from_slice::<HashMap<String, Owner>>(&b) {
            Ok(mut map) => {
                let mut fixed = 0;
                for o in map.values_mut().filter(|o| o.perm == OLD_DEFAULT) {
                    o.perm = crate::fs::access::FILE_MODE;
                    fixed += 1;
                }
                tracing::info!(file = %path.display(), fixed, "volume owners saved by an older mirrord: files that had the old default mode 0666 now have 0600");
                let o = Owners { path, map };
                o.save();
                o
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), "ignoring the saved volume owners (every volume file gets the default owner and mode): {e}");
                Owners {
                    path,
                    map: HashMap::new(),
                }
            }
        }
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
        let f = File {
            format: FORMAT,
            volumes: self.map.clone(),
        };
        let res = serde_json::to_vec_pretty(&f)
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

    #[test]
    fn the_old_default_mode_is_dropped_on_upgrade() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("owners.json");
        // Format 1: libvirt chowned "vm" (mode untouched, 0666); "mine"
        // was chmodded by its owner.
        let old = r#"{"vm":{"blob_id":3,"perm":438,"uid":64055,"gid":64055},
                      "mine":{"blob_id":4,"perm":416,"uid":0,"gid":0}}"#;
        std::fs::write(&p, old).unwrap();
        let o = Owners::load(p.clone());
        assert_eq!(
            o.get("vm", 3).map(|x| (x.perm, x.uid)),
            Some((0o600, 64055))
        );
        assert_eq!(o.get("mine", 4).map(|x| x.perm), Some(0o640));
        // Saved in the new format: a second load keeps what the first did.
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["format"], 2);
        let mut o = Owners::load(p.clone());
        assert_eq!(o.get("vm", 3).map(|x| x.perm), Some(0o600));
        // A 0666 chosen after the upgrade stays.
        o.set(
            "vm",
            Owner {
                blob_id: 3,
                perm: 0o666,
                uid: 0,
                gid: 0,
            },
        );
        assert_eq!(Owners::load(p).get("vm", 3).map(|x| x.perm), Some(0o666));
    }
}
