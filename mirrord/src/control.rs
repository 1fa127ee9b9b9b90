//! The control API: JSON lines over a Unix socket (default
//! `CACHE/control.sock`), one request object per line, one reply per line.
//!
//! Requests (`op` is the tag): `attach {name, version?}`, `detach {name}`,
//! `commit {name, wait, label?}`, `wait {name}`, `clone {name, new}`,
//! `prefetch {name, all?}`, `status`, `set-policy {name, on_close}`,
//! `claim {name, owner}`, `unclaim {name, owner}` (see `volumes/claim.rs`;
//! `status` lists the claims), `refresh {names}` (a CLI command on this
//! host changed these volumes: show it in the mount now). `attach` without
//! a version attaches the latest; `detach {name, discard?}`.
//! Replies: `{"ok":true,"result":...}` or `{"ok":false,"error":"sentence"}`.
//! [`Client`] is the typed client the CLI and the libvirt hook use.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::mirror::{CommitOutcome, OnClose, VolumeStatus};
use crate::volumes::{Claim, ClaimOutcome, OpError, UnclaimOutcome, Volumes};

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
    #[error("mirrord at {path} closed the connection or sent a bad reply: {msg}")]
    Protocol { path: String, msg: String },
    /// mirrord refused; the message is a user sentence.
    #[error("{0}")]
    Refused(String),
}

async fn handle(vols: &Arc<Volumes>, req: Request) -> Result<serde_json::Value, OpError> {
    Ok(match req {
        Request::Attach { name, version } => {
            let m = match version {
                Some(_) => vols.mirror(&name, version).await?,
                None => vols.attach_latest(&name).await?,
            };
            let _ = vols.fetch_entry(&name).await;
            j(&AttachReply {
                name,
                version: m.version(),
                size: m.size(),
                chunk_size: m.chunk_size() as u32,
            })
        }
        Request::Detach { name, discard } => {
            vols.detach(&name, discard).await?;
            serde_json::json!({})
        }
        Request::Refresh { names } => {
            for n in &names {
                vols.sync_volume(n).await?;
            }
            serde_json::json!({})
        }
        Request::Commit { name, wait, label } => {
            let m = vols.mirror(&name, None).await?;
            let out = if wait {
                let out = m.commit_labeled(label).await?;
                vols.release_idle_lease(&m).await;
                out
            } else {
                m.commit_background_labeled(label).await
            };
            j(&out)
        }
        Request::Wait { name } => {
            let m = attached(vols, &name)?;
            j(&VersionReply {
                version: m.wait_commit().await?,
                name,
            })
        }
        Request::Clone { name, new } => {
            let version = vols.clone_volume(&name, &new).await?;
            j(&VersionReply { name: new, version })
        }
        Request::Prefetch { name, all } => {
            let m = vols.mirror(&name, None).await?;
            j(&PrefetchReply {
                chunks: vols.prefetch(&m, all).await as u64,
            })
        }
        Request::Status => {
            let mut volumes: Vec<VolumeStatus> =
                vols.mirrors().iter().map(|m| m.status()).collect();
            volumes.sort_by(|a, b| a.name.cmp(&b.name));
            j(&StatusReply {
                volumes,
                claims: vols.claim_list(),
            })
        }
        Request::SetPolicy { name, on_close } => {
            vols.mirror(&name, None).await?.set_policy(on_close);
            serde_json::json!({})
        }
        Request::Claim { name, owner } => j(&vols.claim(&name, &owner).await?),
        Request::Unclaim { name, owner } => j(&vols.unclaim(&name, &owner).await?),
    })
}

fn attached(vols: &Volumes, name: &str) -> Result<Arc<crate::mirror::Mirror>, OpError> {
    vols.attached(name).ok_or_else(|| {
        OpError::new(
            libc::ENOENT,
            format!("volume {name} is not attached on this node; attach it first"),
        )
    })
}

fn j<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

/// Serves the control socket until the listener fails.
pub async fn serve(listener: UnixListener, vols: Arc<Volumes>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let vols = vols.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let resp = match serde_json::from_str::<Request>(&line) {
                    Err(e) => Response {
                        ok: false,
                        error: Some(format!(
                            "bad control request ({e}); see mirrord::control::Request"
                        )),
                        result: Default::default(),
                    },
                    Ok(req) => match handle(&vols, req).await {
                        Ok(result) => Response {
                            ok: true,
                            error: None,
                            result,
                        },
                        Err(e) => Response {
                            ok: false,
                            error: Some(e.msg),
                            result: Default::default(),
                        },
                    },
                };
                let mut out = serde_json::to_vec(&resp).unwrap_or_default();
                out.push(b'\n');
                if w.write_all(&out).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Binds the control socket, replacing a stale one.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    UnixListener::bind(path)
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
            .map_err(|source| ControlError::Connect {
                path: path.clone(),
                source,
            })?;
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
