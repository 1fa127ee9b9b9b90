//! blobvirt's libvirt qemu hook (`/etc/libvirt/hooks/qemu.d/50-blobvirt`).
//!
//! libvirt runs it as `50-blobvirt DOMAIN OPERATION SUBOPERATION EXTRA`
//! with the domain XML on stdin. It acts only on disks in a blobvirt pool
//! and only through mirrord's control socket; see [`ops`] for what each
//! operation does.
//!
//! * [`config`] — `/etc/blobvirt/hook.json`, written by `blobvirt pool-define`.
//! * [`disks`] — finding the blobvirt disks in the domain XML.
//! * [`ops`] — the operations and the one-line failure messages.

pub mod config;
pub mod disks;
pub mod ops;

/// File name of the installed hook under `/etc/libvirt/hooks/qemu.d/`.
pub const HOOK_NAME: &str = "50-blobvirt";
/// libvirt's directory of qemu hooks.
pub const HOOK_DIR: &str = "/etc/libvirt/hooks/qemu.d";
