//! The server side of the control API: JSON lines over a Unix socket
//! (default `CACHE/control.sock`), one request object per line, one reply
//! per line. The wire form, the reply types and the typed client live in
//! the `mirrord-client` crate (the CLI and the hook use only that); this
//! module maps each request onto the volume table. `refresh {names}` means
//! a CLI command on this host changed these volumes: show it in the mount
//! now.
//!
//! Who may connect is decided by the socket file's mode: `root:blobvirt`
//! 0660 (see [`bind`]); a request is not checked again here.

use std::path::Path;
use std::sync::Arc;

use mirrord_client::{AttachReply, PrefetchReply, Request, Response, StatusReply, VersionReply};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use crate::fs::access::{admin_gid, ADMIN_GROUP, SOCKET_MODE};
use crate::mirror::VolumeStatus;
use crate::volumes::{OpError, Volumes};

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

/// Binds the control socket, replacing a stale one. The socket is
/// `root:blobvirt` mode 0660 (see `fs/access.rs`) before it appears at
/// `path`: it is bound under a temporary name, given its mode and group,
/// then renamed into place, so no connection is ever accepted that the
/// final mode would refuse.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.new", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    let placed = (|| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(SOCKET_MODE))?;
        let gid = admin_gid();
        if let Err(e) = nix::unistd::chown(&tmp, None, Some(nix::unistd::Gid::from_raw(gid))) {
            tracing::warn!(socket = %path.display(), gid, "cannot give the control socket to group {ADMIN_GROUP} ({e}); only mirrord's own user may use it");
        }
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}
