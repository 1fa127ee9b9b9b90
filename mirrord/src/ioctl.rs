//! COMMIT and CLONE as ioctls on a mounted volume file (as in the paper).
//!
//! * [`COMMIT`] = `_IOR('B', 1, u64)` = `0x8008_4201`: commits the mirror's
//!   dirty chunks (both phases) and writes the resulting version as a
//!   little-endian `u64` into the argument.
//! * [`CLONE`] = `_IOWR('B', 2, [u8; 256])` = `0xC100_4202`: the argument
//!   is a 256-byte buffer holding the new volume's name, NUL-terminated.
//!   The mirror continues on the new volume; on return the first 8 bytes of
//!   the buffer hold the new volume's version (little-endian `u64`).
//!
//! Both need the file open for writing (`EBADF` otherwise); CLONE makes a
//! volume, so only root and group `blobvirt` may call it (`EACCES`).
//! Errors come back as errno: `EBUSY` (lease held elsewhere), `EEXIST`
//! (name taken), `ESTALE` (volume changed elsewhere), `EIO`, `EINVAL`.

use std::io;
use std::os::fd::AsRawFd;

const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;
const TYPE: u32 = b'B' as u32;

const fn ioc(dir: u32, nr: u32, size: u32) -> u32 {
    (dir << 30) | (size << 16) | (TYPE << 8) | nr
}

/// Size of the CLONE argument buffer.
pub const NAME_MAX: usize = 256;
/// `_IOR('B', 1, u64)`.
pub const COMMIT: u32 = ioc(IOC_READ, 1, 8);
/// `_IOWR('B', 2, [u8; 256])`.
pub const CLONE: u32 = ioc(IOC_READ | IOC_WRITE, 2, NAME_MAX as u32);

/// The name in a CLONE argument (up to the first NUL).
pub fn parse_name(buf: &[u8]) -> Option<String> {
    let end = buf.iter().position(|&b| b == 0)?;
    let s = std::str::from_utf8(&buf[..end]).ok()?;
    (!s.is_empty()).then(|| s.to_string())
}

/// Runs COMMIT on an open volume file; returns the new version.
pub fn commit(f: &impl AsRawFd) -> io::Result<u64> {
    let mut v = [0u8; 8];
    // SAFETY: COMMIT encodes an 8-byte output argument, and `v` is 8 bytes.
    #[allow(unsafe_code)]
    let r = unsafe { libc::ioctl(f.as_raw_fd(), COMMIT as _, v.as_mut_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from_le_bytes(v))
}

/// Runs CLONE on an open volume file; returns the new volume's version.
pub fn clone(f: &impl AsRawFd, new: &str) -> io::Result<u64> {
    if new.len() >= NAME_MAX || new.as_bytes().contains(&0) || new.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut buf = [0u8; NAME_MAX];
    buf[..new.len()].copy_from_slice(new.as_bytes());
    // SAFETY: CLONE encodes a 256-byte in/out argument, and `buf` is 256 bytes.
    #[allow(unsafe_code)]
    let r = unsafe { libc::ioctl(f.as_raw_fd(), CLONE as _, buf.as_mut_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from_le_bytes(buf[..8].try_into().expect("8 bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_the_linux_encoding() {
        assert_eq!(COMMIT, 0x8008_4201);
        assert_eq!(CLONE, 0xC100_4202);
        assert_eq!(COMMIT as u64, nix::request_code_read!(b'B', 1, 8));
        assert_eq!(
            CLONE as u64,
            nix::request_code_readwrite!(b'B', 2, NAME_MAX)
        );
    }

    #[test]
    fn names() {
        let mut b = [0u8; NAME_MAX];
        b[..3].copy_from_slice(b"web");
        assert_eq!(parse_name(&b).as_deref(), Some("web"));
        assert_eq!(parse_name(&[0u8; 4]), None);
        assert_eq!(parse_name(b"abc"), None);
    }
}
