//! The fault thrasher: real daemons under load while a driver SIGKILLs a
//! random one every few seconds and starts it again.
//!
//! The load: two mirrords, each with a writer doing random writes into its
//! volume through the FUSE mount with fsyncs and commits, and a third
//! client importing and deleting volumes. The victims: the four chunkds,
//! poold and the two mirrords. What is checked:
//! - after every restart of its mirrord, and at the end, a writer reads
//!   its file back: every byte fsynced before the kill is there (bytes
//!   written after the last fsync may be old or new);
//! - every acknowledged commit exports exactly what was written;
//! - every version of every volume exports whole, and is one of the
//!   states a commit was asked for (no version is half there);
//! - acknowledged imports export exactly, acknowledged deletes are gone;
//! - the caller then runs `blobvirt fsck`.
//!
//! CI runs 20 kills (`virsh-ext/tests/thrash.rs`), `bench/thrash.sh` 100.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use blobvirt_core::transfer::{export_file, import_file, ImportOpts};
use blobvirt_core::Repo;
use mirrord_client::{Client, OnClose};
use rand::{Rng, RngCore};

use super::daemons::{Cluster, Mirrord};
use super::data::{random_bytes, rng, sha256, MIB};

/// What a run does.
#[derive(Clone, Debug)]
pub struct ThrashOpts {
    pub kills: usize,
    pub seed: u64,
    /// Mean time between two kills.
    pub every: Duration,
    /// Size of each writer's volume.
    pub volume_mib: u64,
}

/// What a run did and found.
#[derive(Debug, Default)]
pub struct ThrashReport {
    pub kills: BTreeMap<String, usize>,
    pub writes: u64,
    pub fsyncs: u64,
    pub commits_acked: u64,
    pub commits_failed: u64,
    pub reopen_checks: u64,
    pub imports_acked: u64,
    pub imports_failed: u64,
    pub deletes_acked: u64,
    pub versions_checked: u64,
    pub seconds: f64,
}

const CS: u32 = 256 * 1024;
/// Longest a client waits for the cluster to answer again.
const PATIENCE: Duration = Duration::from_secs(90);

fn retry<T>(what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let t0 = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if t0.elapsed() > PATIENCE => panic!("{what} kept failing for 90 s: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// One writer's knowledge of its volume.
struct Writer {
    name: String,
    file: PathBuf,
    client: Client,
    rt: tokio::runtime::Runtime,
    /// The content as the writer wrote it.
    model: Vec<u8>,
    /// The content at the last successful fsync.
    synced: Vec<u8>,
    /// Ranges written since that fsync (their bytes may be old or new).
    unsynced: Vec<(usize, usize)>,
    /// (version, sha256) of every acknowledged commit.
    acked: Vec<(u64, [u8; 32])>,
    /// sha256 of every state a commit was asked for.
    states: Vec<[u8; 32]>,
    writes: u64,
    fsyncs: u64,
    failed_commits: u64,
    reopens: u64,
}

impl Writer {
    /// Opens the file (waiting for a restarted mirrord), checks it against
    /// the last fsync, and adopts what it holds where that was unsynced.
    fn open(&mut self) -> File {
        let f = retry(&format!("opening {}", self.file.display()), || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.file)
                .map_err(|e| e.to_string())
        });
        let got = retry(&format!("reading {}", self.file.display()), || {
            let mut b = vec![0u8; self.model.len()];
            f.read_exact_at(&mut b, 0).map_err(|e| e.to_string())?;
            Ok(b)
        });
        let mut unsure = vec![false; got.len()];
        for (off, len) in &self.unsynced {
            unsure[*off..off + len].fill(true);
        }
        if let Some(i) = (0..got.len()).find(|&i| !unsure[i] && got[i] != self.synced[i]) {
            panic!(
                "{}: byte {i} was fsynced as {:#x} but reads {:#x} after a restart",
                self.name, self.synced[i], got[i]
            );
        }
        self.model = got;
        self.synced = self.model.clone();
        self.unsynced.clear();
        self.reopens += 1;
        let (c, n) = (&self.client, self.name.clone());
        retry("setting the close policy", || {
            self.rt
                .block_on(c.set_policy(&n, OnClose::Keep))
                .map_err(|e| e.to_string())
        });
        f
    }

    fn commit(&mut self) -> bool {
        let sha = sha256(&self.model);
        self.states.push(sha);
        match self.rt.block_on(self.client.commit(&self.name, true)) {
            Ok(o) => {
                self.acked.push((o.version, sha));
                true
            }
            Err(_) => {
                self.failed_commits += 1;
                false
            }
        }
    }

    fn run(&mut self, seed: u64, stop: &AtomicBool) {
        let mut r = rng(seed);
        let mut f = Some(self.open());
        while !stop.load(Ordering::Relaxed) {
            let file = match &f {
                Some(file) => file,
                None => f.insert(self.open()),
            };
            let op = r.gen_range(0..20);
            let ok = if op < 15 {
                let len = r.gen_range(1..64 * 1024);
                let off = r.gen_range(0..self.model.len() - len);
                let mut d = vec![0u8; len];
                r.fill_bytes(&mut d);
                self.unsynced.push((off, len));
                let ok = file.write_all_at(&d, off as u64).is_ok();
                if ok {
                    self.model[off..off + len].copy_from_slice(&d);
                    self.writes += 1;
                }
                ok
            } else {
                let ok = file.sync_all().is_ok();
                if ok {
                    self.synced = self.model.clone();
                    self.unsynced.clear();
                    self.fsyncs += 1;
                    if op == 19 {
                        self.commit();
                    }
                }
                ok
            };
            if !ok {
                f = None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // The end: everything synced and committed, and read back whole.
        retry(&format!("the final commit of {}", self.name), || {
            let file = self.open();
            file.sync_all().map_err(|e| e.to_string())?;
            self.synced = self.model.clone();
            if self.commit() {
                Ok(())
            } else {
                Err("commit failed".into())
            }
        });
        let file = self.open();
        let mut got = vec![0u8; self.model.len()];
        file.read_exact_at(&mut got, 0).unwrap();
        assert!(
            got == self.model,
            "{}: the file differs from what was written",
            self.name
        );
    }
}

/// The importing and deleting client.
#[derive(Default)]
struct Importer {
    /// name → sha256 of acknowledged imports not deleted.
    live: BTreeMap<String, [u8; 32]>,
    /// Imports or deletes whose answer was lost: there or not, but whole.
    unsure: BTreeMap<String, [u8; 32]>,
    gone: Vec<String>,
    imports: u64,
    failed: u64,
    deletes: u64,
}

impl Importer {
    fn run(&mut self, pool: &str, dir: &Path, seed: u64, stop: &AtomicBool) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let repo = retry("connecting to poold", || {
            rt.block_on(Repo::connect(pool)).map_err(|e| e.to_string())
        });
        let mut r = rng(seed);
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let name = format!("t{i}");
            let data = random_bytes(seed + i, (2 * MIB) as usize + r.gen_range(0..MIB as usize));
            let p = dir.join("import.raw");
            std::fs::write(&p, &data).unwrap();
            let opts = ImportOpts {
                chunk_size: Some(CS),
                ..Default::default()
            };
            match rt.block_on(import_file(&repo, &p, &name, &opts, None)) {
                Ok(_) => {
                    self.imports += 1;
                    self.live.insert(name, sha256(&data));
                }
                Err(_) => {
                    self.failed += 1;
                    self.unsure.insert(name, sha256(&data));
                    let _ = rt.block_on(repo.refresh());
                }
            }
            if i % 3 == 0 && !self.live.is_empty() {
                let k = r.gen_range(0..self.live.len());
                let victim = self.live.keys().nth(k).unwrap().clone();
                let sha = self.live.remove(&victim).unwrap();
                match rt.block_on(repo.delete(&victim, 0)) {
                    Ok(()) => {
                        self.deletes += 1;
                        self.gone.push(victim);
                    }
                    Err(_) => {
                        self.unsure.insert(victim, sha);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn export_sha(c: &Cluster, name: &str, v: u64) -> Result<[u8; 32], String> {
    let p = c.dir.path().join("check.raw");
    c.rt.block_on(export_file(&c.repo, name, v, &p, None))
        .map_err(|e| format!("{name}@{v}: {e}"))?;
    let b = std::fs::read(&p).unwrap();
    std::fs::remove_file(&p).unwrap();
    Ok(sha256(&b))
}

/// Runs the thrasher on `c` (4 chunkds, replicas 2) and checks the
/// repository afterwards; panics with what was wrong.
pub fn run(c: &mut Cluster, o: &ThrashOpts) -> ThrashReport {
    let t0 = Instant::now();
    let size = (o.volume_mib * MIB) as usize;
    let mut initial = Vec::new();
    for w in 0..2 {
        let d = random_bytes(o.seed * 10 + w, size);
        c.import(&format!("w{w}"), &d, CS);
        initial.push(d);
    }
    let base = c.dir.path().join("thrash");
    let mut mirrords: Vec<Option<Mirrord>> = (0..2)
        .map(|i| Some(Mirrord::start(&c.pool, &base.join(format!("m{i}")))))
        .collect();
    for (i, m) in mirrords.iter().flatten().enumerate() {
        m.wait_for(&format!("w{i}"));
    }
    let mut writers: Vec<Writer> = initial
        .into_iter()
        .enumerate()
        .map(|(i, d)| Writer {
            name: format!("w{i}"),
            file: mirrords[i].as_ref().unwrap().path(&format!("w{i}")),
            client: mirrords[i].as_ref().unwrap().client(),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            synced: d.clone(),
            states: vec![sha256(&d)],
            acked: vec![(1, sha256(&d))],
            model: d,
            unsynced: Vec::new(),
            writes: 0,
            fsyncs: 0,
            failed_commits: 0,
            reopens: 0,
        })
        .collect();
    let mut importer = Importer::default();
    let stop = AtomicBool::new(false);
    let mut rep = ThrashReport::default();
    let pool = c.pool.clone();
    let idir = c.dir.path().to_path_buf();
    std::thread::scope(|s| {
        let hs: Vec<_> = writers
            .iter_mut()
            .enumerate()
            .map(|(i, w)| {
                let stop = &stop;
                s.spawn(move || w.run(o.seed + 1 + i as u64, stop))
            })
            .collect();
        let hi = {
            let (stop, imp, pool, idir) = (&stop, &mut importer, &pool, &idir);
            s.spawn(move || imp.run(pool, idir, o.seed + 7, stop))
        };
        let mut r = rng(o.seed);
        let victims = [
            "chunkd-0",
            "chunkd-1",
            "chunkd-2",
            "chunkd-3",
            "poold",
            "mirrord-0",
            "mirrord-1",
        ];
        for _ in 0..o.kills {
            let ms = o.every.as_millis() as u64;
            std::thread::sleep(Duration::from_millis(r.gen_range(ms / 2..ms * 3 / 2 + 1)));
            if hs.iter().any(|h| h.is_finished()) || hi.is_finished() {
                break; // a client failed: its panic is reported below
            }
            let v = victims[r.gen_range(0..victims.len())];
            let down = Duration::from_millis(r.gen_range(200..1500));
            match v {
                "poold" => {
                    c.poold.kill();
                    std::thread::sleep(down);
                    c.restart_poold();
                }
                m if m.starts_with("mirrord") => {
                    let i: usize = m[8..].parse().unwrap();
                    // Dropped before the restart: the guard's lazy unmount
                    // must hit the stale mount, not the new one.
                    let mut old = mirrords[i].take().expect("mirrord");
                    old.crash();
                    let (mount, cache, log) =
                        (old.mount.clone(), old.cache.clone(), old.log.clone());
                    drop(old);
                    std::thread::sleep(down);
                    mirrords[i] = Some(Mirrord::start_with(&c.pool, &mount, &cache, &log));
                }
                n => {
                    let i: usize = n[7..].parse().unwrap();
                    c.kill_chunkd(i);
                    std::thread::sleep(down);
                    c.restart_chunkd(i);
                }
            }
            *rep.kills.entry(v.to_string()).or_default() += 1;
            eprintln!(
                "thrash: {:6.1} s: killed {v}, restarted after {} ms",
                t0.elapsed().as_secs_f64(),
                down.as_millis()
            );
        }
        stop.store(true, Ordering::Relaxed);
        let failed = |e| {
            for m in mirrords.iter().flatten() {
                eprintln!("--- {}:\n{}", m.log.display(), tail(&m.log_text(), 40));
            }
            let pl = c.poold.dir.with_extension("log");
            eprintln!(
                "--- {}:\n{}",
                pl.display(),
                tail(&std::fs::read_to_string(&pl).unwrap_or_default(), 40)
            );
            std::panic::resume_unwind(e)
        };
        for h in hs {
            if let Err(e) = h.join() {
                failed(e);
            }
        }
        if let Err(e) = hi.join() {
            failed(e);
        }
    });
    assert_eq!(
        rep.kills.values().sum::<usize>(),
        o.kills,
        "the clients stopped early"
    );
    assert!(c.wait_up(4), "every chunkd is up again");
    // Acknowledged commits are exact; every version is whole and one of
    // the states a commit was asked for.
    for w in &writers {
        let info = c.rt.block_on(c.repo.get_blob(&w.name)).unwrap();
        let have: Vec<u64> = info.versions.iter().map(|v| v.version).collect();
        for (v, _) in &w.acked {
            assert!(
                have.contains(v),
                "acknowledged commit {}@{v} is gone",
                w.name
            );
        }
        for v in have {
            let sha = export_sha(c, &w.name, v).unwrap();
            if let Some((_, want)) = w.acked.iter().find(|(a, _)| *a == v) {
                assert_eq!(sha, *want, "{}@{v} is not what was committed", w.name);
            }
            assert!(
                w.states.contains(&sha),
                "{}@{v} is no state the writer committed",
                w.name
            );
            rep.versions_checked += 1;
        }
        rep.writes += w.writes;
        rep.fsyncs += w.fsyncs;
        rep.commits_acked += w.acked.len() as u64 - 1;
        rep.commits_failed += w.failed_commits;
        rep.reopen_checks += w.reopens;
    }
    for (name, sha) in &importer.live {
        assert_eq!(
            export_sha(c, name, 0).unwrap(),
            *sha,
            "imported volume {name} differs"
        );
    }
    let names: Vec<String> =
        c.rt.block_on(c.repo.list_blobs())
            .unwrap()
            .into_iter()
            .map(|b| b.name)
            .collect();
    for name in &importer.gone {
        assert!(
            !names.contains(name),
            "deleted volume {name} is still there"
        );
    }
    for (name, sha) in &importer.unsure {
        if names.contains(name) {
            assert_eq!(
                export_sha(c, name, 0).unwrap(),
                *sha,
                "volume {name} is half there"
            );
        }
    }
    rep.versions_checked += importer.live.len() as u64;
    rep.imports_acked = importer.imports;
    rep.imports_failed = importer.failed;
    rep.deletes_acked = importer.deletes;
    drop(mirrords);
    rep.seconds = t0.elapsed().as_secs_f64();
    rep
}
