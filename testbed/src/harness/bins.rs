//! The workspace's binaries and files, for tests of any crate: cargo gives
//! an integration test `CARGO_BIN_EXE_*` only for its own crate, so the
//! binaries are found beside the test binary (`target/<profile>/deps/<test>`
//! → `target/<profile>/<name>`), and must have been built first
//! (`cargo build --workspace --bins`).

use std::path::{Path, PathBuf};

/// The workspace root (where `scripts/`, `guest/` and `packaging/` are).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The directory of the workspace's binaries: the test binary's
/// `target/<profile>`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

/// The workspace binary `name`; panics with what to do when it is not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: run cargo build --workspace --bins first",
        p.display()
    );
    p
}

/// Checks that every binary of `names` is built.
pub fn require(names: &[&str]) {
    for n in names {
        bin(n);
    }
}

/// The `blobvirt` CLI, after checking that the daemons it starts (poold,
/// chunkd) are beside it.
pub fn blobvirt() -> PathBuf {
    require(&["poold", "chunkd"]);
    bin("blobvirt")
}
