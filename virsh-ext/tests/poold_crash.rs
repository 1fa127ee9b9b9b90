//! poold SIGKILLed in the middle of a stream of `vol-import --new-version`
//! publishes and restarted (`cluster restart`, same directory and address):
//! every acknowledged version exports exactly, versions are contiguous, and
//! a version whose acknowledgement was lost is one complete image that was
//! being imported (never a mix), so no half-published version exists.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testbed::harness::cli::*;
use testbed::harness::data::*;

const SIZE: u64 = 4 * MIB;

/// One import attempt: the sha of the file and, when acknowledged, the version.
#[derive(Clone, Debug)]
struct Attempt {
    sha: [u8; 32],
    acked: Option<u64>,
}

fn parse_version(stdout: &str, name: &str) -> u64 {
    let tag = format!(" as {name}@");
    let rest = &stdout[stdout.find(&tag).unwrap_or_else(|| panic!("{stdout}")) + tag.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Imports new versions of `name` in a loop until `stop`; every attempt is
/// recorded, acknowledged or not.
fn publisher(
    pool: String,
    dir: std::path::PathBuf,
    name: &'static str,
    seed: u64,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<Attempt>>>,
) {
    let img = dir.join(format!("{name}.raw"));
    let mut k = 0u64;
    while !stop.load(Ordering::SeqCst) {
        k += 1;
        // Change 1–3 scattered chunks, so each version differs from the last.
        for j in 0..1 + k % 3 {
            let off = (seed * 7919 + k * 104_729 + j * 1_299_709) % (SIZE - 64 * KIB);
            overwrite(&img, off, 64 * KIB, seed * 1_000_003 + k * 31 + j);
        }
        let sha = sha256_file(&img);
        let o = run(
            Some(&pool),
            &["vol-import", "--new-version", img.to_str().unwrap(), name],
        );
        let acked_v = o
            .status
            .success()
            .then(|| parse_version(&String::from_utf8_lossy(&o.stdout), name));
        if acked_v.is_some() {
            acked.fetch_add(1, Ordering::SeqCst);
        } else {
            // Even a crash mid-import ends in one clear sentence.
            let err = String::from_utf8_lossy(&o.stderr);
            let last = err.trim_end().lines().last().unwrap_or("");
            assert_eq!(o.status.code(), Some(1), "{err}");
            assert!(last.starts_with("error: ") && last.contains("; "), "{err}");
            std::thread::sleep(Duration::from_millis(20));
        }
        log.lock().unwrap().push(Attempt {
            sha,
            acked: acked_v,
        });
    }
}

#[test]
fn poold_sigkill_during_publishes_loses_no_acknowledged_version_redb() {
    crash_during_publishes("redb");
}

#[test]
fn poold_sigkill_during_publishes_loses_no_acknowledged_version_sled() {
    crash_during_publishes("sled");
}

fn crash_during_publishes(engine: &str) {
    let c = Cluster::up_with(3, 2, &["--engine", engine]);
    let d = c.dir.to_string_lossy().to_string();
    let names: [&'static str; 2] = ["alpha", "beta"];
    let mut logs = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        let img = c.tmp.path().join(format!("{name}.raw"));
        write_image(&img, SIZE, &[(MIB, MIB / 2)], 100 + i as u64);
        let sha = sha256_file(&img);
        c.ok(&["vol-import", img.to_str().unwrap(), name]);
        logs.insert(
            *name,
            Arc::new(Mutex::new(vec![Attempt {
                sha,
                acked: Some(1),
            }])),
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let (pool, dir) = (c.pool.clone(), c.tmp.path().to_path_buf());
            let (stop, acked, log) = (stop.clone(), acked.clone(), logs[name].clone());
            let name = *name;
            std::thread::spawn(move || publisher(pool, dir, name, i as u64 + 1, stop, acked, log))
        })
        .collect();

    let wait_acked = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while acked.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "publishes do not progress");
            std::thread::sleep(Duration::from_millis(10));
        }
    };

    // Two crashes, each in the middle of the stream.
    for round in 0..2 {
        wait_acked(acked.load(Ordering::SeqCst) + 6);
        // Land the kill at a varying point inside a publish.
        std::thread::sleep(Duration::from_millis(37 * round + 13));
        c.kill9("poold");
        std::thread::sleep(Duration::from_millis(300));
        let out = ok(None, &["cluster", "restart", "--dir", &d]);
        assert!(out.contains("poold"), "{out}");
        assert_eq!(
            out.trim_end().lines().last().unwrap(),
            format!("BLOBVIRT_POOL={}", c.pool),
            "poold came back on its address"
        );
    }
    wait_acked(acked.load(Ordering::SeqCst) + 6);
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().expect("publisher thread");
    }

    for name in names {
        let log = logs[name].lock().unwrap().clone();
        let info = c.json(&["vol-info", name, "--json"]);
        let versions: Vec<u64> = info["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["version"].as_u64().unwrap())
            .collect();
        let latest = info["latest_version"].as_u64().unwrap();
        assert_eq!(
            versions,
            (1..=latest).collect::<Vec<_>>(),
            "{name}: contiguous versions"
        );
        let failed = log.iter().filter(|a| a.acked.is_none()).count();
        assert!(failed > 0, "{name}: some imports hit the dead poold");
        let acked: HashMap<u64, [u8; 32]> = log
            .iter()
            .filter_map(|a| a.acked.map(|v| (v, a.sha)))
            .collect();
        assert_eq!(
            acked.len(),
            log.iter().filter(|a| a.acked.is_some()).count(),
            "{name}: no version number was acknowledged twice"
        );
        assert!(acked.len() >= 6, "{name}: {} acknowledged", acked.len());
        eprintln!(
            "[poold_crash {engine}] {name}: {} attempts, {} acknowledged, {failed} failed, {} versions",
            log.len(),
            acked.len(),
            versions.len()
        );
        for v in versions {
            let got = c.export_sha(&format!("{name}@{v}"));
            match acked.get(&v) {
                Some(want) => assert_eq!(&got, want, "{name}@{v} (acknowledged) exports exactly"),
                None => assert!(
                    log.iter().any(|a| a.acked.is_none() && a.sha == got),
                    "{name}@{v} was never acknowledged and is not a whole image that was being imported"
                ),
            }
        }
        for v in acked.keys() {
            assert!(*v <= latest, "{name}@{v} was acknowledged but is gone");
        }
    }
    let mut c = c;
    c.down();
}
