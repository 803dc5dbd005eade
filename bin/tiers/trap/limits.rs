//! The guest's RLIMIT_NOFILE. The guest's FD numbers end at the FD floor (kbox's own are
//! above it, in the same table), so that is the hard limit the guest sees; what the guest
//! sets is its own and never lowers kbox's.

use std::sync::atomic::{AtomicU64, Ordering};

use kbox_lkl::Errno;

use super::guest::InProcess;
use super::sysno::{SYS_GETRLIMIT, SYS_PRLIMIT64, SYS_SETRLIMIT};
use crate::dispatch::Guest;

const RLIMIT_NOFILE: u64 = 7;

static SOFT: AtomicU64 = AtomicU64::new(0);
static HARD: AtomicU64 = AtomicU64::new(0);

pub fn init(floor: i32) {
    let floor = u64::try_from(floor).unwrap_or(0);
    SOFT.store(floor, Ordering::Relaxed);
    HARD.store(floor, Ordering::Relaxed);
}

/// The guest's soft limit: FD numbers from it up are EMFILE.
pub fn soft() -> u64 {
    SOFT.load(Ordering::Relaxed)
}

/// getrlimit, setrlimit and prlimit64 on the guest itself for RLIMIT_NOFILE; None for
/// every other call (the policy decides those).
pub fn nofile(guest: &InProcess, nr: u64, args: [u64; 6]) -> Option<Result<i64, Errno>> {
    let (resource, new, old) = match nr {
        SYS_GETRLIMIT => (args[0], 0, args[1]),
        SYS_SETRLIMIT => (args[0], args[1], 0),
        // pid 0 is the caller; a pid naming another process goes the usual way.
        SYS_PRLIMIT64 if args[0] == 0 => (args[1], args[2], args[3]),
        _ => return None,
    };
    if resource != RLIMIT_NOFILE {
        return None;
    }
    Some(exchange(guest, new, old))
}

fn exchange(guest: &InProcess, new: u64, old: u64) -> Result<i64, Errno> {
    let (soft, hard) = (SOFT.load(Ordering::Relaxed), HARD.load(Ordering::Relaxed));
    let mut wanted = None;
    if new != 0 {
        let mut b = [0u8; 16];
        guest.read(new, &mut b)?;
        let cur = u64::from_ne_bytes(b[..8].try_into().unwrap_or([0; 8]));
        let max = u64::from_ne_bytes(b[8..].try_into().unwrap_or([0; 8]));
        if cur > max {
            return Err(Errno::EINVAL);
        }
        // Raising the hard limit needs a privilege the guest's numbers cannot use anyway.
        if max > hard {
            return Err(Errno::EPERM);
        }
        wanted = Some((cur, max));
    }
    if old != 0 {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&soft.to_ne_bytes());
        b[8..].copy_from_slice(&hard.to_ne_bytes());
        guest.write(old, &b)?;
    }
    if let Some((cur, max)) = wanted {
        SOFT.store(cur, Ordering::Relaxed);
        HARD.store(max, Ordering::Relaxed);
    }
    Ok(0)
}
