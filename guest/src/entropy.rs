//! `ReseedRandomDev`: the host's bytes are mixed into the guest's entropy pool, and the kernel
//! is asked to reseed its CRNG from the pool, but the bytes are **never credited** as entropy.
//!
//! Kata's agent writes the bytes to /dev/random and then credits them with `RNDADDTOENTCNT`,
//! telling the kernel they are unpredictable. In a confidential VM the host is the adversary:
//! bytes it chose are known to it, and crediting them would let the kernel count a pool the
//! host can predict as ready. A plain write mixes them in without credit (the kernel's own
//! entropy — RDRAND/RDSEED, interrupts — keeps the pool unpredictable whatever the host sent),
//! so a reseed can only add to what the guest has, never stand in for it.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;

use vigil_protos::agent::ReseedRandomDevRequest;

use crate::error::{invalid, GuestError, Result};

/// The largest seed accepted: the kernel's input pool is 256 bits; more only costs time.
pub const MAX_SEED_BYTES: usize = 64 * 1024;

/// `RNDRESEEDCRNG` (`_IO('R', 0x07)`): reseed the CRNG from the input pool now. It credits
/// nothing.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Mixes the request's bytes into `device` (normally /dev/random) and asks for a reseed.
pub fn reseed(device: &Path, req: &ReseedRandomDevRequest) -> Result<()> {
    if req.data.is_empty() {
        return Err(invalid("data", "empty: nothing to mix in"));
    }
    if req.data.len() > MAX_SEED_BYTES {
        return Err(invalid(
            "data",
            format!("{} bytes is more than {MAX_SEED_BYTES}", req.data.len()),
        ));
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(device)
        .map_err(|e| GuestError::Internal(format!("opening {}: {e}", device.display())))?;
    f.write_all(&req.data)
        .map_err(|e| GuestError::Internal(format!("writing to {}: {e}", device.display())))?;
    // SAFETY: an argument-less ioctl on our descriptor.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG as _, 0) };
    if rc != 0 {
        // Kernels before 4.17 lack it, and a non-device (tests) refuses it: the bytes are mixed
        // in all the same and take effect at the kernel's next scheduled reseed.
        let e = std::io::Error::last_os_error();
        tracing::debug!(error = %e, "RNDRESEEDCRNG refused; the bytes are mixed in without an immediate reseed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_written_to_the_device_and_bad_sizes_refused() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("random");
        std::fs::write(&dev, b"").unwrap();
        let req = |data: Vec<u8>| ReseedRandomDevRequest {
            data,
            ..Default::default()
        };
        reseed(&dev, &req(b"host seed".to_vec())).unwrap();
        assert_eq!(std::fs::read(&dev).unwrap(), b"host seed");
        for bad in [Vec::new(), vec![0u8; MAX_SEED_BYTES + 1]] {
            let e = reseed(&dev, &req(bad)).unwrap_err();
            assert!(
                matches!(&e, GuestError::InvalidArgument(m) if m.starts_with("data")),
                "{e}"
            );
        }
        let e = reseed(&dir.path().join("absent"), &req(b"x".to_vec())).unwrap_err();
        assert!(matches!(e, GuestError::Internal(_)));
    }
}
