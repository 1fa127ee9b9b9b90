//! Fault injection for crash tests: `BLOBVIRT_FAILPOINT=NAME` makes the
//! process kill itself with SIGKILL when it reaches the point `NAME`, as a
//! power cut or `kill -9` there would. Unset (always, outside tests) it
//! costs one environment lookup per point reached.
//!
//! Points: `mirrord-after-publish` (COMMIT published a version, the mirror
//! state does not record it yet).

/// Dies at point `name` when the environment asks for it.
pub fn hit(name: &str) {
    if std::env::var_os("BLOBVIRT_FAILPOINT").is_some_and(|v| v == name) {
        tracing::error!(point = name, "failpoint reached: killing mirrord");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
