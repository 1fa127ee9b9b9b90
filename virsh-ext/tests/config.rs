//! The configuration file: every daemon and the CLI refuse a malformed
//! one with one sentence naming the file, the key and what is expected,
//! and exit non-zero; values come from flag, then environment, then file.

use std::path::Path;
use std::process::Command;

use testbed::harness::cli::*;
use testbed::harness::*;

/// Runs `binary --config FILE args` with no blobvirt variables set.
fn with_config(binary: &str, file: &Path, args: &[&str]) -> std::process::Output {
    let mut c = Command::new(bin(binary));
    c.arg("--config").arg(file).args(args);
    for v in [
        "BLOBVIRT_POOL",
        "BLOBVIRT_CONFIG",
        "BLOBVIRT_CLUSTER_DIR",
        "RUST_LOG",
    ] {
        c.env_remove(v);
    }
    c.output().unwrap()
}

/// Asserts exit 1 and one line on stderr that names `file` and `key` and
/// contains `expected`.
fn refused(binary: &str, file: &Path, args: &[&str], key: &str, expected: &str) {
    let o = with_config(binary, file, args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{binary} started with a bad config: {err}"
    );
    let lines: Vec<&str> = err.trim_end().lines().collect();
    assert_eq!(lines.len(), 1, "{binary}: one line expected: {err}");
    let l = lines[0];
    assert!(
        l.contains(&file.display().to_string()),
        "{binary}: file not named: {l}"
    );
    assert!(l.contains(key), "{binary}: key {key} not named: {l}");
    assert!(l.contains(expected), "{binary}: {expected:?} not said: {l}");
    assert_eq!(l.matches(". ").count(), 0, "{binary}: one sentence: {l}");
}

/// (binary, arguments that would otherwise start it in `d`).
fn everyone(d: &Path) -> Vec<(&'static str, Vec<String>)> {
    let s = |p: &str| d.join(p).display().to_string();
    vec![
        ("poold", vec!["--dir".into(), s("p")]),
        (
            "chunkd",
            vec![
                "--dir".into(),
                s("c"),
                "--pool".into(),
                "http://127.0.0.1:1".into(),
            ],
        ),
        (
            "mirrord",
            vec![
                "--pool".into(),
                "http://127.0.0.1:1".into(),
                "--mount".into(),
                s("m"),
                "--cache".into(),
                s("k"),
            ],
        ),
        ("blobvirt", vec!["vol-list".into()]),
    ]
}

fn each_refuses(text: &str, key: &str, expected: &str) {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("blobvirt.toml");
    std::fs::write(&f, text).unwrap();
    for (b, args) in everyone(d.path()) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(b, &f, &args, key, expected);
    }
    // Nothing was started or created.
    for sub in ["p", "c", "m", "k"] {
        assert!(!d.path().join(sub).exists(), "{sub} was created");
    }
}

#[test]
fn an_unknown_key_is_refused() {
    each_refuses(
        "[poold]\nlisten = \"127.0.0.1:0\"\ngc_grace = 5\n",
        "line 3: [poold] gc_grace",
        "unknown field",
    );
}

#[test]
fn a_wrong_type_is_refused() {
    each_refuses(
        "[cluster]\nreplicas = \"two\"\n",
        "line 2: [cluster] replicas",
        "expected u32",
    );
}

#[test]
fn a_missing_certificate_file_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let ca = d.path().join("ca.pem");
    std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
    let text = format!(
        "[tls]\nca = {ca:?}\ncert = {:?}\nkey = {:?}\n",
        d.path().join("node.pem"),
        d.path().join("node.key")
    );
    each_refuses(&text, "[tls] cert names", "node.pem, which does not exist");
}

#[test]
fn a_named_file_that_is_missing_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("nowhere.toml");
    for (b, args) in everyone(d.path()) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(b, &f, &args, "cannot be read", "No such file");
    }
}

/// flag > environment > file: the CLI with the file naming the right pool
/// works; a wrong BLOBVIRT_POOL beats the file; a right --pool beats that.
#[test]
fn flags_beat_the_environment_which_beats_the_file() {
    let c = Cluster::up(1, 1);
    let own = c.dir.join("blobvirt.toml");
    let run = |env_pool: Option<&str>, args: &[&str]| {
        let mut cmd = Command::new(blobvirt());
        cmd.args(args)
            .env_remove("BLOBVIRT_POOL")
            .env_remove("BLOBVIRT_CLUSTER_DIR")
            .env("BLOBVIRT_CONFIG", &own);
        if let Some(p) = env_pool {
            cmd.env("BLOBVIRT_POOL", p);
        }
        cmd.output().unwrap()
    };
    assert!(
        run(None, &["vol-list"]).status.success(),
        "the file's pool is used"
    );
    let wrong = "https://127.0.0.1:1";
    assert!(
        !run(Some(wrong), &["vol-list"]).status.success(),
        "the environment beats the file"
    );
    assert!(
        run(Some(wrong), &["vol-list", "--pool", &c.pool])
            .status
            .success(),
        "the flag beats the environment"
    );
    // A daemon's directory: the file's data_dir unless --dir is given.
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("p.toml");
    let from_file = d.path().join("from-file");
    std::fs::write(
        &f,
        format!("[poold]\ndata_dir = {from_file:?}\nlisten = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    for (args, dir) in [
        (vec![], from_file.clone()),
        (
            vec![
                "--dir".to_string(),
                d.path().join("from-flag").display().to_string(),
            ],
            d.path().join("from-flag"),
        ),
    ] {
        let mut child = Command::new(bin("poold"))
            .arg("--config")
            .arg(&f)
            .args(&args)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let addr = dir.join("poold.addr");
        let up = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(100));
            addr.exists()
        });
        let _ = child.kill();
        let _ = child.wait();
        assert!(up, "poold did not use {}", dir.display());
    }
}
