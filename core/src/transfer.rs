//! Import of a raw file as a volume version, and export of a version back to
//! a sparse raw file. Both stream with bounded memory and run the chunk
//! transfers in parallel.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, StreamExt};

use crate::chunk::{self, ChunkId};
use crate::client::{Repo, RepoError};
use crate::proto as pb;
use crate::publish::{PublishError, Publisher};

/// Chunk writes of an export that run at once.
const WRITES_IN_FLIGHT: usize = 2;
/// Bytes an export writes between the starts of two background syncs.
const EARLY_SYNC: u64 = 64 << 20;

/// Called with the number of bytes just processed.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("volume {volume}: {source}")]
    Volume { volume: String, source: RepoError },
    /// Publishing the new version failed (not a refusal of poold's, which
    /// is `Volume`).
    #[error("volume {volume}: {source}")]
    Publish {
        volume: String,
        source: PublishError<io::Error>,
    },
    #[error("{0}")]
    Invalid(String),
}

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> TransferError + use<'a> {
    move |source| TransferError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Clone, Debug, Default)]
pub struct ImportOpts {
    /// Chunk size of a new volume (default 256 KiB). With `new_version`, it
    /// must match the volume's if given.
    pub chunk_size: Option<u32>,
    /// Publish as the next version of an existing volume.
    pub new_version: bool,
    pub label: String,
}

/// What an import did.
#[derive(Clone, Debug, Default)]
pub struct ImportReport {
    pub version: u64,
    pub size: u64,
    pub chunks_changed: u64,
    pub bytes_uploaded: u64,
}

/// Publishes the content of `path` as a new volume `name` (version 1), or
/// with `new_version` as the next version of it, uploading only the chunks
/// that differ from the latest version.
pub async fn import_file(
    repo: &Repo,
    path: &Path,
    name: &str,
    opts: &ImportOpts,
    progress: Option<Progress>,
) -> Result<ImportReport, TransferError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let size = file.metadata().map_err(io_err("stat", path))?.len();
    let (chunk_size, base) = if opts.new_version {
        let info = repo.get_blob(name).await?;
        if let Some(cs) = opts.chunk_size {
            if cs != info.chunk_size {
                return Err(TransferError::Invalid(format!(
                    "volume {name} has chunk size {}, not {cs}; drop --chunk-size or import under a new name",
                    info.chunk_size
                )));
            }
        }
        (info.chunk_size, Some(repo.resolve(name, 0).await?))
    } else {
        match repo.get_blob(name).await {
            Ok(_) => {
                return Err(TransferError::Invalid(format!(
                    "volume {name} already exists; pick another name or add --new-version"
                )))
            }
            Err(e) if e.code() == Some(tonic::Code::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        (opts.chunk_size.unwrap_or(chunk::DEFAULT_CHUNK_SIZE), None)
    };
    let cs = chunk_size as u64;
    let n = chunk::chunk_count(size, chunk_size);
    // The GC epoch must be read before any chunk is checked or uploaded.
    repo.refresh().await?;
    let publisher = Publisher::new(repo);

    // Read sequentially on a blocking thread; hash and upload in parallel.
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<(u64, Bytes)>>(repo.concurrency * 2);
    let reader = tokio::task::spawn_blocking(move || {
        let mut f = io::BufReader::with_capacity(1 << 20, file);
        for i in 0..n {
            let len = cs.min(size - i * cs) as usize;
            let mut buf = vec![0u8; len];
            let r = f.read_exact(&mut buf).map(|_| (i, Bytes::from(buf)));
            let failed = r.is_err();
            if tx.blocking_send(r).is_err() || failed {
                break;
            }
        }
    });
    let base_chunks = Arc::new(base.as_ref().map(|b| b.chunks.clone()).unwrap_or_default());
    let mut results = tokio_stream_of(rx)
        .map(|r| {
            let publisher = &publisher;
            let base_chunks = base_chunks.clone();
            let progress = progress.clone();
            async move {
                let (i, data) = r.map_err(io_err("read", path))?;
                let len = data.len() as u64;
                let (id, data) = tokio::task::spawn_blocking(move || {
                    let id = (!chunk::is_zero(&data)).then(|| ChunkId::of(&data));
                    (id, data)
                })
                .await
                .map_err(|e| io_err("hash", path)(io::Error::other(e.to_string())))?;
                let old = base_chunks.get(i as usize).copied().flatten();
                let changed = old != id;
                if let Some(id) = id.filter(|_| changed) {
                    publisher
                        .put(id, data)
                        .await
                        .map_err(|source| TransferError::Volume {
                            volume: name.to_string(),
                            source,
                        })?;
                }
                if let Some(p) = &progress {
                    p(len);
                }
                Ok::<_, TransferError>((i, id, changed))
            }
        })
        .buffer_unordered(repo.concurrency);
    let mut changes = Vec::new();
    let mut where_is: HashMap<ChunkId, u64> = HashMap::new();
    let mut report = ImportReport {
        size,
        ..Default::default()
    };
    while let Some(r) = results.next().await {
        let (i, id, changed) = r?;
        if changed {
            changes.push(pb::ChunkChange {
                index: i,
                id: id.map(|c| Bytes::copy_from_slice(&c.0)).unwrap_or_default(),
            });
            if let Some(c) = id {
                where_is.insert(c, i);
            }
        }
    }
    drop(results);
    reader
        .await
        .map_err(|e| io_err("read", path)(io::Error::other(e.to_string())))?;
    changes.sort_by_key(|c| c.index);
    report.chunks_changed = changes.len() as u64;

    let req = pb::PublishRequest {
        name: name.to_string(),
        create: base.is_none(),
        chunk_size,
        base_version: base.as_ref().map_or(0, |b| b.version),
        size,
        changes,
        label: opts.label.clone(),
        gc_epoch: 0,
        request_id: Default::default(),
    };
    let f = File::open(path).map_err(io_err("open", path))?;
    // A chunk GC may have reclaimed meanwhile: read it from the file again.
    let again = |id: ChunkId| -> io::Result<Bytes> {
        let i = where_is
            .get(&id)
            .copied()
            .ok_or_else(|| io::Error::other(format!("chunk {id} is not in the file")))?;
        let mut buf = vec![0u8; cs.min(size - i * cs) as usize];
        f.read_exact_at(&mut buf, i * cs)?;
        if !id.verifies(&buf) {
            return Err(io::Error::other(format!(
                "{} changed while it was being imported; import it again",
                path.display()
            )));
        }
        Ok(Bytes::from(buf))
    };
    let res = publisher.publish(req, again).await;
    report.bytes_uploaded = publisher.bytes_uploaded();
    report.version = res.map_err(|e| match e {
        PublishError::Repo(source) => TransferError::Volume {
            volume: name.to_string(),
            source,
        },
        source => TransferError::Publish {
            volume: name.to_string(),
            source,
        },
    })?;
    Ok(report)
}

fn tokio_stream_of<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Writes `name@version` (0 = latest) to `path` as a raw file, sparse where
/// the version has holes. On failure the partial file is removed.
pub async fn export_file(
    repo: &Repo,
    name: &str,
    version: u64,
    path: &Path,
    progress: Option<Progress>,
) -> Result<u64, TransferError> {
    let r = repo.resolve(name, version).await?;
    let res = write_export(repo, name, &r, path, progress).await;
    if res.is_err() {
        let _ = std::fs::remove_file(path);
    }
    res.map(|_| r.version)
}

async fn write_export(
    repo: &Repo,
    name: &str,
    r: &crate::client::Resolved,
    path: &Path,
    progress: Option<Progress>,
) -> Result<(), TransferError> {
    let f = File::create(path).map_err(io_err("create", path))?;
    f.set_len(r.size).map_err(io_err("resize", path))?;
    let f = Arc::new(f);
    let cs = r.chunk_size as u64;
    let holes: u64 = r
        .chunks
        .iter()
        .enumerate()
        .filter(|(_, c)| c.is_none())
        .map(|(i, _)| cs.min(r.size - i as u64 * cs))
        .sum();
    if let Some(p) = &progress {
        p(holes);
    }
    let mut s = stream::iter(
        r.chunks
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.map(|c| (i as u64, c))),
    )
    .map(|(i, id)| async move {
        let data = repo
            .get_chunk(id)
            .await
            .map_err(|source| TransferError::Volume {
                volume: name.to_string(),
                source,
            })?;
        Ok::<_, TransferError>((i, data))
    })
    .buffer_unordered(repo.concurrency);
    // Writes run beside the fetches (up to WRITES_IN_FLIGHT at once), and
    // every EARLY_SYNC bytes a background `fdatasync` starts the disk on
    // what is written so far, so the final sync waits only for the tail and
    // the export's disk time overlaps its fetches instead of following them.
    let mut writes = tokio::task::JoinSet::new();
    let mut sync: Option<tokio::task::JoinHandle<io::Result<()>>> = None;
    let mut unsynced = 0u64;
    let done = |r: Result<io::Result<u64>, tokio::task::JoinError>| {
        let len = r.expect("write task").map_err(io_err("write", path))?;
        if let Some(p) = &progress {
            p(len);
        }
        Ok::<_, TransferError>(())
    };
    while let Some(x) = s.next().await {
        let (i, data) = x?;
        let w = f.clone();
        let len = data.len() as u64;
        writes.spawn_blocking(move || w.write_all_at(&data, i * cs).map(|_| len));
        while writes.len() >= WRITES_IN_FLIGHT {
            done(writes.join_next().await.expect("a write"))?;
        }
        unsynced += len;
        if unsynced >= EARLY_SYNC && sync.as_ref().is_none_or(|h| h.is_finished()) {
            if let Some(h) = sync.take() {
                h.await.expect("sync task").map_err(io_err("sync", path))?;
            }
            let f = f.clone();
            sync = Some(tokio::task::spawn_blocking(move || f.sync_data()));
            unsynced = 0;
        }
    }
    while let Some(r) = writes.join_next().await {
        done(r)?;
    }
    if let Some(h) = sync {
        h.await.expect("sync task").map_err(io_err("sync", path))?;
    }
    f.sync_all().map_err(io_err("sync", path))?;
    Ok(())
}
