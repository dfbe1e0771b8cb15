//! `SetGuestDateTime`: the guest's wall clock, set with settimeofday(2) as Kata's agent does
//! (its runtime sends the host's time after the VM resumes from a pause or suspend).
//!
//! Stricter than Kata: in a confidential VM the host is the adversary, and the wall clock is
//! what certificate, token and signed-policy expiry checks read. So the clock only moves
//! forward (a step back of more than [`BACKWARD_TOLERANCE_SECS`] is refused), and never to a
//! time before [`CLOCK_FLOOR_SECS`]. A host can still move it forward (expiring what the
//! guest holds: a denial of service, which it has anyway), and the tenant's policy can refuse
//! `SetGuestDateTimeRequest` altogether.

use vigil_protos::agent::SetGuestDateTimeRequest;

use crate::error::{invalid, GuestError, Result};

/// 2025-01-01T00:00:00Z: no time before this agent existed is believable.
pub const CLOCK_FLOOR_SECS: i64 = 1_735_689_600;
/// How far back a new time may be from the guest's (the host's and the guest's clocks drift).
pub const BACKWARD_TOLERANCE_SECS: i64 = 2;

/// Sets the wall clock to the request's `Sec`/`Usec` (Unix time).
pub fn set_guest_date_time(req: &SetGuestDateTimeRequest) -> Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let tv = checked_time(req.Sec, req.Usec, now)?;
    // SAFETY: a valid timeval and no timezone.
    let rc = unsafe { libc::settimeofday(&tv, std::ptr::null()) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EPERM) => GuestError::FailedPrecondition(format!(
                "setting the clock: {e} (the agent lacks CAP_SYS_TIME)"
            )),
            Some(libc::EINVAL) => invalid("Sec", format!("the kernel refuses {}: {e}", req.Sec)),
            _ => GuestError::Internal(format!("setting the clock: {e}")),
        });
    }
    tracing::info!(sec = req.Sec, usec = req.Usec, "guest clock set");
    Ok(())
}

/// The time to set, if the request may set it given the guest's clock `now` (Unix seconds).
fn checked_time(sec: i64, usec: i64, now: i64) -> Result<libc::timeval> {
    if !(0..1_000_000).contains(&usec) {
        return Err(invalid("Usec", format!("{usec} is not in 0..1000000")));
    }
    if sec < CLOCK_FLOOR_SECS {
        return Err(invalid(
            "Sec",
            format!("{sec} is before {CLOCK_FLOOR_SECS} (2025-01-01): the clock is never set that far back"),
        ));
    }
    if sec < now - BACKWARD_TOLERANCE_SECS {
        return Err(invalid(
            "Sec",
            format!(
                "{sec} is {}s behind the guest's clock: the agent does not set the clock back \
                 (expiry checks of certificates, tokens and policies rely on it)",
                now - sec
            ),
        ));
    }
    Ok(libc::timeval {
        tv_sec: libc::time_t::try_from(sec)
            .map_err(|_| invalid("Sec", format!("{sec} does not fit the kernel's time_t")))?,
        tv_usec: usec as libc::suseconds_t,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn forward_times_pass_and_backward_or_malformed_ones_are_refused_by_field() {
        let tv = checked_time(NOW + 3600, 250_000, NOW).unwrap();
        assert_eq!((tv.tv_sec as i64, tv.tv_usec as i64), (NOW + 3600, 250_000));
        // Within the drift tolerance.
        assert!(checked_time(NOW - BACKWARD_TOLERANCE_SECS, 0, NOW).is_ok());
        for (sec, usec, field) in [
            (NOW - 60, 0, "Sec"),
            (CLOCK_FLOOR_SECS - 1, 0, "Sec"),
            (-1, 0, "Sec"),
            (NOW, -1, "Usec"),
            (NOW, 1_000_000, "Usec"),
        ] {
            let e = checked_time(sec, usec, NOW).unwrap_err();
            assert!(
                matches!(&e, GuestError::InvalidArgument(m) if m.starts_with(field)),
                "{sec}.{usec}: {e}"
            );
        }
        // A guest whose own clock is wrong (before the floor) accepts any believable time.
        assert!(checked_time(CLOCK_FLOOR_SECS, 0, 0).is_ok());
    }
}
