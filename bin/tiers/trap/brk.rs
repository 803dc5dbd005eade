//! The guest's program break. kbox's own allocator may use the process's real break, so the
//! guest gets one of its own: a reservation after its program, made usable page by page as
//! brk moves, like the kernel's.

use std::sync::Mutex;

use rustix::mm::{MapFlags, MprotectFlags, ProtFlags, mmap_anonymous, mprotect, munmap};

/// How far the guest's break may grow (address space only, reserved without memory).
const RESERVE: u64 = 1 << 30;
const PAGE: u64 = 4096;

#[derive(Debug)]
pub struct Break {
    start: u64,
    current: u64,
    /// End of the reservation; `start` when none could be made (brk then never grows,
    /// and libc falls back to mmap).
    end: u64,
}

static BREAK: Mutex<Option<Break>> = Mutex::new(None);

/// A length in bytes (kbox runs on 64-bit machines only).
fn len(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

fn lock() -> std::sync::MutexGuard<'static, Option<Break>> {
    BREAK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Holds the break's state (across a fork: see `super::hold_for_fork`).
pub fn hold() -> std::sync::MutexGuard<'static, Option<Break>> {
    lock()
}

/// A new program's break, starting at `start` (page aligned); the previous one is unmapped.
pub fn reset(start: u64) {
    let mut b = lock();
    if let Some(old) = b.take() {
        release_reservation(&old);
    }
    // SAFETY: a fresh reservation; FIXED_NOREPLACE never replaces a mapping.
    let reserved = unsafe {
        mmap_anonymous(
            start as *mut _,
            len(RESERVE),
            ProtFlags::empty(),
            MapFlags::PRIVATE | MapFlags::NORESERVE | MapFlags::FIXED_NOREPLACE,
        )
    };
    let end = match reserved {
        Ok(p) if p as u64 == start => start + RESERVE,
        Ok(p) => {
            // SAFETY: the mapping just made, elsewhere than asked: not ours to keep.
            let _ = unsafe { munmap(p, len(RESERVE)) };
            start
        }
        Err(_) => start,
    };
    *b = Some(Break {
        start,
        current: start,
        end,
    });
}

/// Unmaps the break of a program that is being replaced.
pub fn release() {
    if let Some(old) = lock().take() {
        release_reservation(&old);
    }
}

fn release_reservation(b: &Break) {
    if b.end > b.start {
        // SAFETY: the reservation reset() made; the old program no longer runs.
        let _ = unsafe { munmap(b.start as *mut _, len(b.end - b.start)) };
    }
}

/// brk(2): moves the break to `addr` when it can; the break either way.
pub fn brk(addr: u64) -> u64 {
    let mut guard = lock();
    let Some(b) = guard.as_mut() else {
        return 0;
    };
    if addr < b.start || addr > b.end {
        return b.current;
    }
    let (old_top, new_top) = (
        b.current.next_multiple_of(PAGE),
        addr.next_multiple_of(PAGE),
    );
    let r = if new_top > old_top {
        // SAFETY: pages inside the reservation, which only the guest's break uses.
        unsafe {
            mprotect(
                old_top as *mut _,
                len(new_top - old_top),
                MprotectFlags::READ | MprotectFlags::WRITE,
            )
        }
    } else if new_top < old_top {
        // Shrinking gives the memory back: a later growth sees zeros, as on Linux.
        // SAFETY: as above; the guest gave these pages up.
        unsafe {
            mmap_anonymous(
                new_top as *mut _,
                len(old_top - new_top),
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::NORESERVE | MapFlags::FIXED,
            )
            .map(|_| ())
        }
    } else {
        Ok(())
    };
    if r.is_ok() {
        b.current = addr;
    }
    b.current
}
