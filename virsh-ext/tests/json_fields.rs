//! Every `--json` output uses the field names written down in
//! `virsh-ext/README.md` ("Field names"), and `versions` is always a list.

use std::collections::BTreeSet;

use serde_json::Value;
use testbed::harness::data::*;
use testbed::harness::mounted::*;

/// The backticked names of the README's "Field names" section.
fn documented() -> BTreeSet<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("### Field names")
        .nth(1)
        .expect("README has a Field names section");
    let section = section.split("\n## ").next().unwrap();
    section
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .map(str::to_string)
        .collect()
}

/// Every object key in `v`, with the path it was found at.
fn keys(v: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                out.push((k.clone(), path.to_string()));
                if k == "versions" {
                    assert!(x.is_array(), "{path}.versions is not a list: {x}");
                }
                keys(x, &format!("{path}.{k}"), out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| keys(x, &format!("{path}[]"), out)),
        _ => {}
    }
}

#[test]
fn every_json_output_uses_the_documented_names() {
    let doc = documented();
    assert!(
        doc.contains("latest_version") && doc.contains("volume_count"),
        "{doc:?}"
    );
    let m = Mounted::up(2, 1, &[]);
    let src = m.c.tmp.path().join("j.raw");
    std::fs::write(&src, random_bytes(11, MIB as usize)).unwrap();
    let s = src.display().to_string();
    m.ok(&["vol-import", &s, "j", "--label", "first"]);
    m.ok(&["vol-clone", "j", "j2"]);
    assert!(read_all(&m.mnt.join("j2")).len() == MIB as usize);
    let outputs = [
        ("vol-list", m.c.json(&["vol-list", "--json"])),
        ("vol-info", m.c.json(&["vol-info", "j2", "--json"])),
        ("vol-info@", m.c.json(&["vol-info", "j@1", "--json"])),
        (
            "cluster status",
            serde_json::from_str(&m.ok(&["cluster", "status", "--json"])).unwrap(),
        ),
        ("node list", m.c.json(&["node", "list", "--json"])),
        ("fsck", m.c.json(&["fsck", "--json"])),
        ("scrub", m.c.json(&["scrub", "--now", "--json"])),
        (
            "mirror-status",
            serde_json::from_str(&m.ok(&["mirror-status", "--json"])).unwrap(),
        ),
    ];
    for (what, v) in &outputs {
        let mut found = Vec::new();
        keys(v, what, &mut found);
        assert!(!found.is_empty(), "{what} printed no object: {v}");
        for (k, path) in found {
            assert!(doc.contains(&k), "{path} has the undocumented field {k:?}");
        }
    }
    // The cluster status carries the mount's attached volumes.
    let st = &outputs[3].1;
    assert_eq!(outputs[5].1["degraded_chunks_after"], 0, "{}", outputs[5].1);
    assert_eq!(st["volume_count"], 2, "{st}");
    assert!(
        st["mirror"]["volumes"]
            .as_array()
            .is_some_and(|v| !v.is_empty()),
        "{st}"
    );
}
