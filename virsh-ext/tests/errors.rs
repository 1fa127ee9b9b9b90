//! User errors: each gives exit status 1 and one `error:` sentence that names
//! the object and says what to do, and leaves everything stored unchanged
//! (`vol-list --json` and the counters of `cluster status --json`).
//! Also: a `--new-version` import with another size (resize) exports exactly.

use serde_json::Value;
use testbed::harness::cli::*;
use testbed::harness::data::*;
use testbed::harness::*;

/// The parts of `cluster status --json` that only change when something is
/// stored (free disk space changes with other tests, so it is left out).
fn stored_state(c: &Cluster) -> Value {
    let s = c.status();
    let nodes: Vec<Value> = s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| serde_json::json!([n["id"], n["alive"], n["chunks"], n["bytes"]]))
        .collect();
    serde_json::json!({
        "nodes": nodes,
        "stored_bytes": s["stored_bytes"],
        "meta_nodes": s["meta_nodes"],
        "volume_count": s["volume_count"],
        "version_count": s["version_count"],
        "live_chunks": s["live_chunks"],
        "disk_bytes": c.disk_bytes(),
    })
}

#[test]
fn errors_leave_the_pool_unchanged() {
    let c = Cluster::up(2, 2);
    let img = c.tmp.path().join("a.raw");
    write_image(&img, 4 * MIB, &[(MIB, MIB + 1000)], 1);
    let imgs = img.to_str().unwrap();
    c.ok(&["vol-import", imgs, "a"]);
    let out = c.tmp.path().join("out.raw");
    let outs = out.to_str().unwrap();
    let missing = c.tmp.path().join("no-such.raw");
    let missings = missing.to_str().unwrap();

    let list0 = c.vol_list();
    let state0 = stored_state(&c);

    let check = |args: &[&str], must_contain: &[&str]| {
        let e = c.fail(args);
        for m in must_contain {
            assert!(
                e.contains(m),
                "`blobvirt {}`: {e:?} should mention {m:?}",
                args.join(" ")
            );
        }
        assert_eq!(c.vol_list(), list0, "vol-list changed after {args:?}");
        assert_eq!(
            stored_state(&c),
            state0,
            "stored state changed after {args:?}"
        );
        assert!(!out.exists(), "{args:?} left an output file");
    };

    // A missing file, checked before anything is contacted.
    let e = fail(None, &["vol-import", missings, "b"]);
    assert_eq!(
        e,
        format!("error: file {missings} does not exist; check the path")
    );
    check(&["vol-import", missings, "b"], &[missings]);
    check(&["vol-import", "--new-version", missings, "a"], &[missings]);

    // An export into a directory that does not exist.
    let nodir = c.tmp.path().join("no-dir").join("x.raw");
    check(
        &["vol-export", "a", nodir.to_str().unwrap()],
        &["no-dir", "does not exist"],
    );

    // A duplicate name.
    check(&["vol-import", imgs, "a"], &["a", "already exists"]);
    check(&["vol-clone", "a", "a"], &["a", "already exists"]);

    // Unknown volumes.
    check(&["vol-export", "ghost", outs], &["ghost"]);
    check(&["vol-info", "ghost"], &["ghost"]);
    check(&["vol-clone", "ghost", "g2"], &["ghost"]);
    check(&["vol-delete", "ghost"], &["ghost"]);
    check(&["vol-import", "--new-version", imgs, "ghost"], &["ghost"]);

    // vol-info of a version: that version, or a sentence naming it.
    let v: Value = serde_json::from_str(&c.ok(&["vol-info", "a@1", "--json"])).unwrap();
    assert_eq!(
        (v["name"].as_str(), v["versions"][0]["version"].as_u64()),
        (Some("a"), Some(1))
    );
    let e = c.fail(&["vol-info", "a@9"]);
    assert!(e.contains("volume a has no version 9"), "{e}");
    // A TLS pool URL without a certificate, or another scheme, is refused.
    let e = fail(Some("https://127.0.0.1:1"), &["vol-list"]);
    assert!(e.contains("this host has no certificate"), "{e}");
    let e = fail(Some("ftp://127.0.0.1:1"), &["vol-list"]);
    assert!(e.contains("ftp:// is not a poold or chunkd address"), "{e}");
    // Replicas that do not fit the nodes.
    for (n, r) in [("2", "0"), ("2", "3")] {
        let d = c.tmp.path().join(format!("bad-{r}")).display().to_string();
        let e = fail(
            None,
            &["cluster", "up", "--nodes", n, "--replicas", r, "--dir", &d],
        );
        assert!(
            e.contains(&format!("--replicas {r} does not fit a cluster of 2 nodes")),
            "{e}"
        );
    }

    // Unknown versions and malformed specs.
    check(&["vol-export", "a@7", outs], &["a", "7"]);
    check(&["vol-clone", "a@7", "a2"], &["a", "7"]);
    check(&["vol-delete", "a@7"], &["a", "7"]);
    check(&["vol-export", "a@0", outs], &["a@0"]);
    check(&["vol-export", "a@x", outs], &["a@x"]);

    // Chunk sizes that are not a power of two from 64K to 4M.
    for bad in ["32K", "300K", "8M", "65535", "3M", "abc", "0"] {
        check(
            &["vol-import", "--chunk-size", bad, imgs, "b"],
            &["chunk size", "power of two"],
        );
    }
    // A --new-version import with a chunk size different from the volume's.
    check(
        &[
            "vol-import",
            "--new-version",
            "--chunk-size",
            "64K",
            imgs,
            "a",
        ],
        &["a", "chunk size"],
    );

    // A new version with a different size: either resized exactly, or
    // refused cleanly with nothing changed.
    let img2 = c.tmp.path().join("a-grown.raw");
    write_image(&img2, 5 * MIB + 12345, &[(2 * MIB, 300 * KIB)], 2);
    let o = run(
        c.p(),
        &["vol-import", "--new-version", img2.to_str().unwrap(), "a"],
    );
    if o.status.success() {
        let info = c.json(&["vol-info", "a", "--json"]);
        assert_eq!(info["latest_version"], 2, "{info}");
        assert_eq!(info["size"], 5 * MIB + 12345, "{info}");
        assert_eq!(info["versions"][0]["size"], 4 * MIB, "{info}");
        assert_eq!(c.export_sha("a@1"), sha256_file(&img));
        assert_eq!(c.export_sha("a@2"), sha256_file(&img2));
        // And shrinking below the original size.
        let img3 = c.tmp.path().join("a-shrunk.raw");
        write_image(&img3, 3 * MIB - 1, &[], 3);
        c.ok(&["vol-import", "--new-version", img3.to_str().unwrap(), "a"]);
        assert_eq!(c.export_sha("a@3"), sha256_file(&img3));
        assert_eq!(c.export_sha("a@2"), sha256_file(&img2));
    } else {
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        let last = err.trim_end().lines().last().unwrap();
        assert!(
            last.starts_with("error: ") && last.contains("size"),
            "{err}"
        );
        assert_eq!(c.vol_list(), list0);
        assert_eq!(stored_state(&c), state0);
    }

    // Valid edge chunk sizes are accepted and recorded.
    for (cs, want) in [("64K", 64 * KIB), ("4M", 4 * MIB)] {
        let name = format!("cs-{cs}");
        c.ok(&["vol-import", "--chunk-size", cs, imgs, &name]);
        let info = c.json(&["vol-info", &name, "--json"]);
        assert_eq!(info["chunk_size"], want, "{info}");
        assert_eq!(c.export_sha(&name), sha256_file(&img));
    }

    // Commands that need a pool say how to give one.
    let e = fail(None, &["vol-list"]);
    assert!(e.contains("BLOBVIRT_POOL"), "{e}");
}

#[test]
fn json_shapes_of_vol_list_and_vol_info() {
    let c = Cluster::up(1, 1);
    let img = c.tmp.path().join("x.raw");
    write_image(&img, 2 * MIB, &[], 9);
    c.ok(&[
        "vol-import",
        "--chunk-size",
        "128K",
        img.to_str().unwrap(),
        "x",
    ]);
    overwrite(&img, 100, 10, 10);
    c.ok(&["vol-import", "--new-version", img.to_str().unwrap(), "x"]);
    c.ok(&["vol-clone", "x@1", "y"]);
    let list = c.vol_list();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["x", "y"]);
    let x = &list[0];
    assert_eq!(x["size"], 2 * MIB);
    assert_eq!(x["chunk_size"], 128 * KIB);
    assert_eq!(x["latest_version"], 2);
    assert!(x["origin"].is_null());
    let vs = x["versions"].as_array().unwrap();
    assert_eq!(vs.len(), 2);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for (i, v) in vs.iter().enumerate() {
        assert_eq!(v["version"], i as u64 + 1);
        assert_eq!(v["size"], 2 * MIB);
        let created = v["created"].as_i64().unwrap();
        assert!((now - 600..=now + 5).contains(&created), "{v}");
    }
    assert_eq!(list[1]["origin"], "x@1");
    assert_eq!(c.json(&["vol-info", "y", "--json"]), list[1]);
    let human = c.ok(&["vol-info", "x"]);
    assert!(
        human.contains("VERSION") && human.contains("128 KiB"),
        "{human}"
    );
    let sha_x1 = c.export_sha("x@1");
    assert_eq!(c.export_sha("y"), sha_x1);

    // Deleting a version and a volume.
    c.ok(&["vol-delete", "x@1"]);
    let info = c.json(&["vol-info", "x", "--json"]);
    assert_eq!(info["versions"].as_array().unwrap().len(), 1, "{info}");
    assert_eq!(c.export_sha("x"), sha256_file(&img));
    assert_eq!(
        c.export_sha("y"),
        sha_x1,
        "a clone outlives its source version"
    );
    c.ok(&["vol-delete", "y"]);
    assert_eq!(c.vol_list().as_array().unwrap().len(), 1);
}

/// `vol-*` commands find the pool through `BLOBVIRT_CLUSTER_DIR`, and
/// `cluster status --dir` trusts the cluster's record over a stale
/// `BLOBVIRT_POOL`.
#[test]
fn the_cluster_dir_names_the_pool() {
    let c = Cluster::up(1, 1);
    let d = c.dir.display().to_string();
    let o = std::process::Command::new(blobvirt())
        .args(["vol-list", "--json"])
        .env_remove("BLOBVIRT_POOL")
        .env("BLOBVIRT_CLUSTER_DIR", &d)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "[]");
    let s: Value = serde_json::from_str(&ok(
        Some("http://127.0.0.1:1"),
        &["cluster", "status", "--json", "--dir", &d],
    ))
    .unwrap();
    assert_eq!(s["pool"], c.pool.as_str());
}
