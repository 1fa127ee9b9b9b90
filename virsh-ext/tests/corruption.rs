//! Corruption is caught: a byte flipped inside a stored chunk is
//! detected (chunkd quarantines it and logs it, the CLI reports it), the
//! chunk is served from a replica, and with no good copy left the export
//! fails with an error naming the volume and the chunk and leaves no file.

use std::fs;

use blobvirt_core::placement::{Member, Placement};
use blobvirt_core::ChunkId;
use testbed::harness::cli::*;
use testbed::harness::data::*;

/// The placement the clients compute, from `cluster status --json`.
fn placement(c: &Cluster) -> Placement {
    let s = c.status();
    let members = s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| Member {
            id: n["id"].as_str().unwrap().into(),
            addr: n["addr"].as_str().unwrap().into(),
            alive: n["alive"].as_bool().unwrap(),
            placed: n["state"].as_str() != Some("out") && n["draining"].as_bool() != Some(true),
        })
        .collect();
    Placement::new(members, s["replicas"].as_u64().unwrap() as usize)
}

/// Chunk `hex` on node `node-<i>`, when that node holds it.
fn on_node(c: &Cluster, node: &str, hex: &str) -> Option<ChunkOnDisk> {
    let i: usize = node.strip_prefix("node-").unwrap().parse().unwrap();
    chunk_on_disk(&c.chunkd_dir(i), &ChunkId::from_hex(hex).unwrap())
}

fn some_chunk(c: &Cluster) -> String {
    let files = chunk_files(&c.chunkd_dir(1));
    files.first().expect("node-1 holds chunks").hex.clone()
}

fn quarantined(c: &Cluster, node: &str, hex: &str) -> bool {
    let i: usize = node.strip_prefix("node-").unwrap().parse().unwrap();
    fs::read_dir(c.chunkd_dir(i).join("corrupt"))
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(hex))
        })
        .unwrap_or(false)
}

fn log_mentions(c: &Cluster, node: &str, hex: &str) -> bool {
    let i: usize = node.strip_prefix("node-").unwrap().parse().unwrap();
    fs::read_to_string(c.dir.join("logs").join(format!("chunkd-{i}.log")))
        .map(|s| s.contains(hex) && s.contains("corrupt"))
        .unwrap_or(false)
}

#[test]
fn corrupt_replica_is_detected_and_served_from_the_other_copy() {
    let c = Cluster::up(3, 2);
    let img = c.tmp.path().join("img.raw");
    write_image(&img, 4 * MIB, &[(MIB + 77, MIB)], 11);
    let want = sha256_file(&img);
    c.ok(&["vol-import", img.to_str().unwrap(), "vol"]);

    // Corrupt the copy that readers try first.
    let hex = some_chunk(&c);
    let id = ChunkId::from_hex(&hex).unwrap();
    let p = placement(&c);
    let order: Vec<String> = p.read_order(&id).iter().map(|m| m.id.clone()).collect();
    let (first, second) = (&order[0], &order[1]);
    let copy = on_node(&c, first, &hex).unwrap_or_else(|| panic!("{first} should hold {hex}"));
    assert!(
        on_node(&c, second, &hex).is_some(),
        "{second} should hold {hex}"
    );
    copy.flip();

    let out = c.tmp.path().join("out.raw");
    let o = run(c.p(), &["vol-export", "vol", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        sha256_file(&out),
        want,
        "export is exact despite the corrupt copy"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("corrupt"),
        "the CLI reports the corrupt replica: {err}"
    );
    assert!(
        quarantined(&c, first, &hex),
        "{first} quarantined the corrupt chunk"
    );
    assert!(on_node(&c, first, &hex).is_none_or(|o| ChunkId::of(&o.read()) == id));
    assert!(log_mentions(&c, first, &hex), "chunkd log names the chunk");
    assert_eq!(c.export_sha("vol"), want, "a second export is exact too");

    // Now corrupt every copy of another chunk: no good copy is left.
    let mut bad = None;
    for f in chunk_files(&c.chunkd_dir(2)) {
        if f.hex != hex {
            bad = Some(f.hex);
            break;
        }
    }
    let hex2 = bad.expect("another chunk");
    let id2 = ChunkId::from_hex(&hex2).unwrap();
    for m in p.homes(&id2) {
        on_node(&c, &m.id, &hex2).unwrap().flip();
    }
    let e = c.fail(&["vol-export", "vol", out.to_str().unwrap()]);
    assert!(e.contains("vol") && e.contains(&hex2), "{e}");
    assert!(!out.exists(), "a failed export leaves no file");
}

#[test]
fn corrupt_only_copy_fails_the_export_naming_volume_and_chunk() {
    let c = Cluster::up(2, 1);
    let img = c.tmp.path().join("img.raw");
    write_image(&img, 3 * MIB, &[], 12);
    c.ok(&["vol-import", img.to_str().unwrap(), "solo"]);
    let files: Vec<ChunkOnDisk> = c
        .chunkd_dirs()
        .iter()
        .flat_map(|d| chunk_files(d))
        .collect();
    assert_eq!(files.len(), 12, "3 MiB / 256K with one copy each");
    let victim = &files[5];
    let hex = victim.hex.clone();
    victim.flip();

    let out = c.tmp.path().join("out.raw");
    // Even a file that was there before is not left behind as if good.
    fs::write(&out, b"old").unwrap();
    let e = c.fail(&["vol-export", "solo", out.to_str().unwrap()]);
    assert!(e.contains("solo") && e.contains(&hex), "{e}");
    assert!(e.contains("corrupt"), "{e}");
    assert!(!out.exists(), "a failed export leaves no file");

    // The chunk is quarantined now; a new attempt still fails clearly.
    let e = c.fail(&["vol-export", "solo", out.to_str().unwrap()]);
    assert!(e.contains("solo") && e.contains(&hex), "{e}");
    assert!(!out.exists());
}
