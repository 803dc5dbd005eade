//! Patching code as it is mapped: the loader's hook and the guest's own executable file
//! mappings go through here to the architecture's site patcher (`sites_x86_64.rs`,
//! `sites_aarch64.rs`), which finds the sites, writes their trampolines into pages mapped
//! within a branch's reach, registers each trampoline's return address, and replaces each
//! site by a branch to its trampoline. What both share is here: the counts `-v` prints,
//! and where trampoline pages go.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use kbox_arch::entry;
use rustix::mm::{MapFlags, MprotectFlags, ProtFlags, mmap_anonymous, mprotect};

use super::sites;
use crate::loader::{CodeHook, Region};

pub(super) const PAGE: u64 = 4096;
pub(super) const PAGE_BYTES: usize = 4096;
/// The lowest address kbox maps trampolines at (Linux's usual vm.mmap_min_addr).
const LOWEST: u64 = 0x10000;
/// The program break grows up to 1 GiB after a program (the trap tier's brk): trampolines
/// above a program go past it.
const ABOVE_GAP: u64 = (1 << 30) + (1 << 21);

static VERBOSE: AtomicBool = AtomicBool::new(false);
static PATCHED: AtomicUsize = AtomicUsize::new(0);
static PROMOTED: AtomicUsize = AtomicUsize::new(0);
static REFUSED: AtomicUsize = AtomicUsize::new(0);
static RESTORERS: AtomicUsize = AtomicUsize::new(0);

pub fn set_verbose(v: bool) {
    VERBOSE.store(v, Ordering::Relaxed);
}

/// What was patched so far, for `-v`.
pub fn totals() -> String {
    format!(
        "{} sites patched ({} promoted cancel-wrapper calls), {} refused (they trap), {} \
         rt_sigreturn restorers left as they are",
        PATCHED.load(Ordering::Relaxed),
        PROMOTED.load(Ordering::Relaxed),
        REFUSED.load(Ordering::Relaxed),
        RESTORERS.load(Ordering::Relaxed)
    )
}

/// What one segment's patching did.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    pub patched: usize,
    /// Of `patched`: cancel-wrapper calls sent straight to a trampoline.
    pub promoted: usize,
    pub refused: usize,
    pub restorers: usize,
}

/// Counts a segment's outcome and says it under `-v`.
pub(super) fn tally(vaddr: u64, len: usize, o: &Outcome, started: std::time::Instant) {
    PATCHED.fetch_add(o.patched, Ordering::Relaxed);
    PROMOTED.fetch_add(o.promoted, Ordering::Relaxed);
    REFUSED.fetch_add(o.refused, Ordering::Relaxed);
    RESTORERS.fetch_add(o.restorers, Ordering::Relaxed);
    if VERBOSE.load(Ordering::Relaxed) {
        eprintln!(
            "kbox: rewrite: code at {vaddr:#x} ({len} bytes): {} sites patched{}, {} left to \
             trap{} ({:.1} ms)",
            o.patched,
            if o.promoted > 0 {
                format!(" ({} promoted)", o.promoted)
            } else {
                String::new()
            },
            o.refused,
            if o.restorers > 0 {
                ", rt_sigreturn restorer left as it is"
            } else {
                ""
            },
            started.elapsed().as_secs_f64() * 1000.0
        );
    }
}

/// The running program is gone: its sites' ids are free again.
pub fn forget_sites() {
    entry::reset_sites();
}

/// The loader's hook: patches each executable segment while it is still writable.
pub fn loading() -> Box<dyn CodeHook> {
    Box::new(Patcher { promote: false })
}

struct Patcher {
    /// The program being mapped allows cancel-wrapper promotion (AArch64).
    promote: bool,
}

impl CodeHook for Patcher {
    fn program(&mut self, bytes: &[u8]) {
        self.promote = sites::promotion_allowed(bytes);
    }

    fn code(&mut self, vaddr: u64, code: &mut [u8]) -> Vec<Region> {
        sites::patch(vaddr, code, self.promote)
            .into_iter()
            .collect()
    }
}

/// The guest mapped `len` bytes at `start` executable and private, from a file (mmap's
/// result, `prot` as asked, `fd` and `offset` as given): patched in place, the pages made
/// writable only meanwhile. Nothing runs there yet: the mapping was just made. A library
/// mapped this way belongs to a dynamic program: no promotion.
pub fn mapped(start: u64, len: u64, prot: u64, fd: i32, offset: u64) {
    // Only the part backed by the file: touching pages past its end would fault.
    let Some(fd) = (fd >= 0).then(|| {
        // SAFETY: the guest's FD, valid for the duration of this call (it made the mmap
        // with it just now, on this thread).
        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
    }) else {
        return;
    };
    let Ok(st) = rustix::fs::fstat(fd) else {
        return;
    };
    let file_len = u64::try_from(st.st_size).unwrap_or(0);
    let len = len.min(file_len.saturating_sub(offset));
    let pages = len.div_ceil(PAGE) * PAGE;
    if len == 0 || !start.is_multiple_of(PAGE) {
        return;
    }
    let ptr = start as *mut std::ffi::c_void;
    let size = usize::try_from(pages).unwrap_or(0);
    // SAFETY: the guest's fresh private mapping of at least `pages` bytes; it is restored to
    // the protection the guest asked for below.
    if unsafe { mprotect(ptr, size, MprotectFlags::READ | MprotectFlags::WRITE) }.is_err() {
        return;
    }
    // SAFETY: `len` bytes of the mapping, now writable, backed by the file.
    let code = unsafe {
        std::slice::from_raw_parts_mut(start as *mut u8, usize::try_from(len).unwrap_or(0))
    };
    if let Some(region) = sites::patch(start, code, false) {
        // Kept for the life of the process: a library's code may be called until it ends.
        std::mem::forget(region);
    }
    let restore = MprotectFlags::from_bits_truncate(u32::try_from(prot & 7).unwrap_or(0));
    // SAFETY: as above.
    let _ = unsafe { mprotect(ptr, size, restore) };
}

/// Maps `len` bytes read-write where a branch reaching `reach` bytes from anywhere in
/// `lo..hi` reaches them: below the code first (above a program is where its break
/// grows), then past the break's room.
pub(super) fn map_near(lo: u64, hi: u64, len: usize, reach: u64) -> Option<(u64, usize)> {
    let len64 = len as u64;
    let reaches =
        |at: u64| hi.saturating_sub(at) < reach && (at + len64).saturating_sub(lo) < reach;
    let step = 16 * PAGE;
    let below = (0..256u64).filter_map(|k| {
        (lo & !(PAGE - 1))
            .checked_sub(len64 + k * step)
            .filter(|&a| a >= LOWEST)
    });
    let above = (0..256u64).map(|k| ((hi + PAGE - 1) & !(PAGE - 1)) + ABOVE_GAP + k * step);
    for at in below.chain(above).filter(|&a| reaches(a)) {
        // SAFETY: a fresh private anonymous mapping; FIXED_NOREPLACE never replaces one.
        let got = unsafe {
            mmap_anonymous(
                at as *mut _,
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::FIXED_NOREPLACE,
            )
        };
        match got {
            Ok(p) if p as u64 == at => return Some((at, len)),
            // A kernel without FIXED_NOREPLACE (before 4.17) took it as a hint.
            Ok(p) => {
                // SAFETY: the mapping just made, at the wrong place.
                let _ = unsafe { rustix::mm::munmap(p, len) };
                return None;
            }
            Err(_) => {}
        }
    }
    None
}
