//! The main scenario on a 4-node cluster with 2 replicas and a 1 GiB image
//! of random data with 256 MiB of zero holes (aligned and unaligned to
//! chunks): exact export, thin and balanced storage measured on disk,
//! shadowing costs of a 4 MiB change, O(1) clone, deduplication across
//! volumes, and exact exports of everything after a chunkd is SIGKILLed.

use std::collections::BTreeSet;
use std::time::Instant;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use testbed::harness::cli::*;
use testbed::harness::data::*;

const GIB: u64 = 1 << 30;
const CS: u64 = 256 * KIB;
const REPLICAS: u64 = 2;

fn meta_nodes(c: &Cluster) -> u64 {
    c.status()["meta_nodes"].as_u64().unwrap()
}

struct Timer(Instant);
impl Timer {
    fn lap(&mut self, what: &str) {
        eprintln!(
            "[large_image] {what}: {:.1} s",
            self.0.elapsed().as_secs_f64()
        );
        self.0 = Instant::now();
    }
}

#[test]
fn one_gib_image_on_four_nodes() {
    let mut t = Timer(Instant::now());
    let mut c = Cluster::up(4, REPLICAS as u32);
    let img = c.tmp.path().join("disk.raw");
    let imgs = img.to_str().unwrap().to_string();
    let holes = [
        (64 * MIB, 96 * MIB),           // aligned
        (300 * MIB + 12_345, 64 * MIB), // unaligned both ends
        (600 * MIB + 100_000, 64 * MIB - 1),
        (GIB - 32 * MIB - 1, 32 * MIB + 1), // up to the end
    ];
    assert_eq!(holes.iter().map(|h| h.1).sum::<u64>(), 256 * MIB);
    write_image(&img, GIB, &holes, 42);
    let sha1 = sha256_file(&img);
    let data_chunks = nonzero_chunks(&img, CS);
    let nonzero_bytes = GIB - 256 * MIB;
    t.lap("image written and hashed");

    // Import and exact export.
    let out = c.ok(&["vol-import", &imgs, "base"]);
    assert!(out.contains("as base@1"), "{out}");
    t.lap("import 1 GiB");
    assert_eq!(c.export_sha("base"), sha1, "base@1 exports byte-identical");
    t.lap("export 1 GiB");

    // Stored bytes, measured on disk: about non-zero bytes × replicas.
    let disk1 = c.disk_bytes();
    let want = nonzero_bytes * REPLICAS;
    let ratio = disk1 as f64 / want as f64;
    eprintln!("[large_image] on disk {disk1} B, non-zero × replicas {want} B, ratio {ratio:.4}");
    assert!((0.99..=1.03).contains(&ratio), "stored {disk1} vs {want}");
    assert_eq!(
        disk1,
        data_chunks * CS * REPLICAS,
        "only non-zero chunks, each twice"
    );
    let alloc: u64 = c.chunkd_dirs().iter().map(|d| chunk_alloc_bytes(d)).sum();
    let alloc_ratio = alloc as f64 / want as f64;
    eprintln!("[large_image] allocated on disk (du) {alloc} B, ratio {alloc_ratio:.4}");
    assert!((0.99..=1.05).contains(&alloc_ratio), "du {alloc} vs {want}");
    let s = c.status();
    assert_eq!(
        s["stored_bytes"].as_u64().unwrap(),
        disk1,
        "chunkd counters match the disk"
    );

    // Balance: busiest node holds at most 1.25× the chunks of the least busy.
    let counts: Vec<usize> = c
        .chunkd_dirs()
        .iter()
        .map(|d| chunk_files(d).len())
        .collect();
    assert_eq!(counts.len(), 4);
    let (mx, mn) = (*counts.iter().max().unwrap(), *counts.iter().min().unwrap());
    eprintln!("[large_image] chunks per node {counts:?}");
    assert!(mx as f64 <= 1.25 * mn as f64, "unbalanced: {counts:?}");

    // Change 4 MiB, scattered: 64 pieces of 64 KiB.
    let mut rng = SmallRng::seed_from_u64(7);
    let mut touched = BTreeSet::new();
    for k in 0..64u64 {
        let off = rng.gen_range(0..GIB - 64 * KIB);
        overwrite(&img, off, 64 * KIB, 1000 + k);
        touched.extend(off / CS..=(off + 64 * KIB - 1) / CS);
    }
    let changed = touched.len() as u64;
    let sha2 = sha256_file(&img);
    let meta1 = meta_nodes(&c);
    t.lap("image changed");
    let out = c.ok(&["vol-import", "--new-version", &imgs, "base"]);
    assert!(out.contains("as base@2"), "{out}");
    t.lap("import --new-version");
    let disk2 = c.disk_bytes();
    let meta2 = meta_nodes(&c);
    let chunks = GIB / CS;
    let log2 = 63 - chunks.leading_zeros() as u64;
    eprintln!(
        "[large_image] {changed} chunks changed: +{} B on disk (bound {}), +{} metadata nodes (bound {})",
        disk2 - disk1,
        changed * CS * REPLICAS,
        meta2 - meta1,
        changed * (log2 + 2)
    );
    assert!(disk2 > disk1, "the change was stored");
    assert!(disk2 - disk1 <= changed * CS * REPLICAS);
    assert!(meta2 > meta1);
    assert!(meta2 - meta1 <= changed * (log2 + 2));
    assert_eq!(c.export_sha("base@1"), sha1, "base@1 still exact");
    assert_eq!(c.export_sha("base@2"), sha2, "base@2 exact");
    t.lap("export both versions");

    // Clone: no chunk bytes, at most 2 metadata nodes.
    c.ok(&["vol-clone", "base@2", "web"]);
    assert_eq!(c.disk_bytes(), disk2, "clone stores no chunk");
    let meta3 = meta_nodes(&c);
    assert!(
        meta3 - meta2 <= 2,
        "clone added {} metadata nodes",
        meta3 - meta2
    );
    let info = c.json(&["vol-info", "web", "--json"]);
    assert_eq!(info["origin"], "base@2");

    // The same image under a second name: deduplicated, no chunk bytes.
    let stored_before = c.status()["stored_chunks"].clone();
    c.ok(&["vol-import", &imgs, "copy"]);
    assert_eq!(c.disk_bytes(), disk2, "second name stores no chunk");
    assert_eq!(c.status()["stored_chunks"], stored_before);
    t.lap("clone and import under a second name");

    // One chunkd SIGKILLed: every volume and version still exports exactly.
    c.kill9("chunkd-1");
    for (spec, want) in [
        ("base@1", sha1),
        ("base@2", sha2),
        ("web", sha2),
        ("copy", sha2),
    ] {
        assert_eq!(c.export_sha(spec), want, "{spec} after SIGKILL of chunkd-1");
    }
    t.lap("4 exports with a node down");
    c.down();
    t.lap("cluster down");
}
