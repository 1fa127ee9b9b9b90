//! The client side of mirrord's control socket, for the CLI, the libvirt
//! hook and the benchmarks, without the daemon: the wire form (JSON lines
//! over a Unix socket, one request and one reply per line), the types of the
//! replies, and a typed [`Client`].
//!
//! Requests (`op` is the tag): `attach {name, version?}` (no version: the
//! latest), `detach {name, discard?}`, `commit {name, wait, label?}`,
//! `wait {name}`, `clone {name, new}`, `prefetch {name, all?}`, `status`,
//! `set-policy {name, on_close}`, `claim {name, owner}`,
//! `unclaim {name, owner}`, `refresh {names}`.
//! Replies: `{"ok":true,"result":...}` or `{"ok":false,"error":"sentence"}`.

use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// What happens to local changes when the last writer closes the volume.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnClose {
    /// Commit them as a new version (close-to-open; the default).
    #[default]
    Commit,
    /// Keep them in the local mirror only.
    Keep,
    /// Throw them away; the mirror returns to its base version.
    Discard,
}

/// One attached volume as `status` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeStatus {
    pub name: String,
    pub version: u64,
    pub size: u64,
    pub chunk_size: u32,
    pub chunks: u64,
    pub chunks_present: u64,
    pub chunks_dirty: u64,
    pub bytes_fetched: u64,
    pub bytes_committed: u64,
    pub fetches: u64,
    pub prefetched: u64,
    /// Chunks fetched by sequential read-ahead (also counted in `fetches`
    /// and `bytes_fetched`; boot-profile prefetches are `prefetched`).
    #[serde(default)]
    pub readahead: u64,
    pub commits: u64,
    pub cow_copies: u64,
    /// Duration of the last COMMIT phase 1, in microseconds.
    pub last_freeze_us: u64,
    pub open_handles: u64,
    pub writers: u64,
    pub on_close: OnClose,
    /// Why the last commit failed, until a commit succeeds (also set when
    /// the volume or the mirror's base version was deleted under it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Commits that failed since attach.
    #[serde(default)]
    pub commit_failures: u64,
}

/// What a commit did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitOutcome {
    /// The version that now holds the mirror's content.
    pub version: u64,
    /// False when nothing was dirty (no new version).
    pub published: bool,
    pub chunks_changed: u64,
    pub bytes_uploaded: u64,
    /// Duration of phase 1 in microseconds.
    pub freeze_us: u64,
}

/// One claim as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub name: String,
    pub owner: String,
}

/// What `claim` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimOutcome {
    pub name: String,
    pub owner: String,
    /// The version the mirror is based on.
    pub version: u64,
    /// False when `owner` already held the claim.
    pub new: bool,
}

/// What `unclaim` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnclaimOutcome {
    pub name: String,
    /// False when `owner` did not hold the claim (nothing changed).
    pub released: bool,
    /// The version holding the volume's content after the commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The owner that holds the claim instead, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// One request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    Attach {
        name: String,
        #[serde(default)]
        version: Option<u64>,
    },
    Detach {
        name: String,
        /// Detach even with uncommitted changes, throwing them away.
        #[serde(default)]
        discard: bool,
    },
    /// These volumes changed in poold (or were deleted) just now.
    Refresh {
        names: Vec<String>,
    },
    /// With `wait: false`, returns after phase 1 (the snapshot point);
    /// `wait` then waits for phase 2.
    Commit {
        name: String,
        #[serde(default = "yes")]
        wait: bool,
        /// Label of the new version; with a label a version is published
        /// even when nothing is dirty (a named snapshot).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        label: String,
    },
    Wait {
        name: String,
    },
    Clone {
        name: String,
        new: String,
    },
    Prefetch {
        name: String,
        #[serde(default)]
        all: bool,
    },
    Status,
    SetPolicy {
        name: String,
        on_close: OnClose,
    },
    /// Reserves the volume for `owner` on this node and takes its writer
    /// lease; refused when another owner holds it (idempotent otherwise).
    Claim {
        name: String,
        owner: String,
    },
    /// Waits for the close-to-open commit, then drops `owner`'s claim and
    /// the lease; a no-op when `owner` does not hold the claim.
    Unclaim {
        name: String,
        owner: String,
    },
}

fn yes() -> bool {
    true
}

/// One reply line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub result: serde_json::Value,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachReply {
    pub name: String,
    pub version: u64,
    pub size: u64,
    pub chunk_size: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionReply {
    pub name: String,
    pub version: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefetchReply {
    pub chunks: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    pub volumes: Vec<VolumeStatus>,
    /// Claimed volumes and their owners.
    #[serde(default)]
    pub claims: Vec<Claim>,
}

/// Errors of the control client.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach mirrord at {path}: {source}; check that mirrord runs and --control points at its socket")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    /// The socket's mode keeps this user out (`EACCES` on connect): it is
    /// `root:blobvirt` 0660.
    #[error("permission denied on mirrord's control socket {path}; run as root or as a member of group blobvirt")]
    PermissionDenied { path: String },
    #[error("mirrord at {path} closed the connection or sent a bad reply: {msg}")]
    Protocol { path: String, msg: String },
    /// mirrord refused; the message is a user sentence.
    #[error("{0}")]
    Refused(String),
}

/// The kind of a failed connect to the socket at `path`.
fn connect_error(path: &str, source: std::io::Error) -> ControlError {
    match source.kind() {
        std::io::ErrorKind::PermissionDenied => {
            ControlError::PermissionDenied { path: path.into() }
        }
        _ => ControlError::Connect {
            path: path.into(),
            source,
        },
    }
}

/// Typed client of the control socket (one connection per call).
#[derive(Clone, Debug)]
pub struct Client {
    path: PathBuf,
}

impl Client {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Client { path: path.into() }
    }

    /// The default socket of a cache directory.
    pub fn for_cache(cache: &Path) -> Self {
        Client::new(cache.join("control.sock"))
    }

    pub async fn call_raw(&self, req: &Request) -> Result<serde_json::Value, ControlError> {
        let path = self.path.display().to_string();
        let proto = |msg: String| ControlError::Protocol {
            path: path.clone(),
            msg,
        };
        let s = UnixStream::connect(&self.path)
            .await
            .map_err(|source| connect_error(&path, source))?;
        let (r, mut w) = s.into_split();
        let mut line = serde_json::to_vec(req).map_err(|e| proto(e.to_string()))?;
        line.push(b'\n');
        w.write_all(&line).await.map_err(|e| proto(e.to_string()))?;
        let mut lines = BufReader::new(r).lines();
        let reply = lines
            .next_line()
            .await
            .map_err(|e| proto(e.to_string()))?
            .ok_or_else(|| proto("no reply".into()))?;
        let resp: Response = serde_json::from_str(&reply).map_err(|e| proto(e.to_string()))?;
        if resp.ok {
            Ok(resp.result)
        } else {
            Err(ControlError::Refused(resp.error.unwrap_or_default()))
        }
    }

    async fn call<T: DeserializeOwned>(&self, req: Request) -> Result<T, ControlError> {
        let v = self.call_raw(&req).await?;
        serde_json::from_value(v).map_err(|e| ControlError::Protocol {
            path: self.path.display().to_string(),
            msg: e.to_string(),
        })
    }

    pub async fn attach(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<AttachReply, ControlError> {
        self.call(Request::Attach {
            name: name.into(),
            version,
        })
        .await
    }

    /// Detaches `name`; with `discard`, even with uncommitted changes,
    /// which are thrown away.
    pub async fn detach(&self, name: &str, discard: bool) -> Result<(), ControlError> {
        self.call_raw(&Request::Detach {
            name: name.into(),
            discard,
        })
        .await
        .map(|_| ())
    }

    /// Tells mirrord that these volumes changed in poold just now.
    pub async fn refresh(&self, names: &[String]) -> Result<(), ControlError> {
        self.call_raw(&Request::Refresh {
            names: names.to_vec(),
        })
        .await
        .map(|_| ())
    }

    /// COMMIT; with `wait: false` it returns after phase 1.
    pub async fn commit(&self, name: &str, wait: bool) -> Result<CommitOutcome, ControlError> {
        self.commit_labeled(name, wait, "").await
    }

    /// COMMIT with a version label: publishes a new version even when
    /// nothing is dirty, so every label names its own version.
    pub async fn commit_labeled(
        &self,
        name: &str,
        wait: bool,
        label: &str,
    ) -> Result<CommitOutcome, ControlError> {
        self.call(Request::Commit {
            name: name.into(),
            wait,
            label: label.into(),
        })
        .await
    }

    /// Waits for a background commit; returns the mirror's version.
    pub async fn wait(&self, name: &str) -> Result<VersionReply, ControlError> {
        self.call(Request::Wait { name: name.into() }).await
    }

    pub async fn clone_volume(&self, name: &str, new: &str) -> Result<VersionReply, ControlError> {
        self.call(Request::Clone {
            name: name.into(),
            new: new.into(),
        })
        .await
    }

    pub async fn prefetch(&self, name: &str, all: bool) -> Result<PrefetchReply, ControlError> {
        self.call(Request::Prefetch {
            name: name.into(),
            all,
        })
        .await
    }

    pub async fn status(&self) -> Result<StatusReply, ControlError> {
        self.call(Request::Status).await
    }

    /// Claims `name` for `owner` (a domain name) and takes its writer lease.
    pub async fn claim(&self, name: &str, owner: &str) -> Result<ClaimOutcome, ControlError> {
        self.call(Request::Claim {
            name: name.into(),
            owner: owner.into(),
        })
        .await
    }

    /// Waits for the close-to-open commit, then drops the claim and lease.
    pub async fn unclaim(&self, name: &str, owner: &str) -> Result<UnclaimOutcome, ControlError> {
        self.call(Request::Unclaim {
            name: name.into(),
            owner: owner.into(),
        })
        .await
    }

    pub async fn set_policy(&self, name: &str, on_close: OnClose) -> Result<(), ControlError> {
        self.call_raw(&Request::SetPolicy {
            name: name.into(),
            on_close,
        })
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_form() {
        let r: Request = serde_json::from_str(r#"{"op":"commit","name":"a"}"#).unwrap();
        assert_eq!(
            r,
            Request::Commit {
                name: "a".into(),
                wait: true,
                label: String::new(),
            }
        );
        let r: Request =
            serde_json::from_str(r#"{"op":"commit","name":"a","wait":false,"label":"s"}"#).unwrap();
        assert_eq!(
            r,
            Request::Commit {
                name: "a".into(),
                wait: false,
                label: "s".into(),
            }
        );
        let r: Request =
            serde_json::from_str(r#"{"op":"set-policy","name":"a","on_close":"keep"}"#).unwrap();
        assert_eq!(
            r,
            Request::SetPolicy {
                name: "a".into(),
                on_close: OnClose::Keep
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"op":"status"}"#
        );
    }

    #[test]
    fn permission_denied_is_its_own_kind() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let e = connect_error("/run/c.sock", denied);
        assert!(matches!(e, ControlError::PermissionDenied { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "permission denied on mirrord's control socket /run/c.sock; run as root or as a member of group blobvirt"
        );
        let gone = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(matches!(
            connect_error("/run/c.sock", gone),
            ControlError::Connect { .. }
        ));
    }

    #[test]
    fn claim_wire_form() {
        let r: Request =
            serde_json::from_str(r#"{"op":"claim","name":"g1","owner":"dom-a"}"#).unwrap();
        assert_eq!(
            r,
            Request::Claim {
                name: "g1".into(),
                owner: "dom-a".into()
            }
        );
        let r: Request =
            serde_json::from_str(r#"{"op":"unclaim","name":"g1","owner":"dom-a"}"#).unwrap();
        assert!(matches!(r, Request::Unclaim { .. }));
        // Replies of older mirrords (no claims) still parse.
        let s: StatusReply = serde_json::from_str(r#"{"volumes":[]}"#).unwrap();
        assert!(s.claims.is_empty());
    }
}
