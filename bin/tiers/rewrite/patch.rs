//! Patching a code segment in place: find its sites, plan a window for each, write the
//! trampolines into pages mapped within a jump's reach, register each trampoline's return
//! address, and replace each window by a jump to its trampoline.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use kbox_arch::entry::{self, SiteKind};
use kbox_arch::site::{Site, SiteClass};
use kbox_arch::x86_64::plan::{self, Analysis, MAX_TRAMPOLINE};
use kbox_arch::x86_64::scan::scan_segment;
use kbox_arch::x86_64::tramp;
use rustix::mm::{MapFlags, MprotectFlags, ProtFlags, mmap_anonymous, mprotect};

use crate::loader::{CodeHook, Region};

const PAGE: u64 = 4096;
const PAGE_BYTES: usize = 4096;
/// rt_sigreturn: the restorers libcs hand the kernel keep their bytes, which unwinders
/// (libgcc's, gdb's) match to recognise a signal frame.
const SYS_RT_SIGRETURN: u32 = 15;
/// The lowest address kbox maps trampolines at (Linux's usual vm.mmap_min_addr).
const LOWEST: u64 = 0x10000;
/// A rel32 jump reaches ±2 GiB; trampolines stay well inside.
const REACH: u64 = (1 << 31) - (1 << 24);
/// The program break grows up to 1 GiB after a program (the trap tier's brk): trampolines
/// above a program go past it.
const ABOVE_GAP: u64 = (1 << 30) + (1 << 21);

static VERBOSE: AtomicBool = AtomicBool::new(false);
static PATCHED: AtomicUsize = AtomicUsize::new(0);
static REFUSED: AtomicUsize = AtomicUsize::new(0);
static RESTORERS: AtomicUsize = AtomicUsize::new(0);

pub fn set_verbose(v: bool) {
    VERBOSE.store(v, Ordering::Relaxed);
}

/// What was patched so far, for `-v`.
pub fn totals() -> String {
    format!(
        "{} sites patched, {} refused (they trap), {} rt_sigreturn restorers left as they are",
        PATCHED.load(Ordering::Relaxed),
        REFUSED.load(Ordering::Relaxed),
        RESTORERS.load(Ordering::Relaxed)
    )
}

/// The running program is gone: its sites' ids are free again.
pub fn forget_sites() {
    entry::reset_sites();
}

/// The loader's hook: patches each executable segment while it is still writable.
pub fn loading() -> Box<dyn CodeHook> {
    Box::new(Patcher)
}

struct Patcher;

impl CodeHook for Patcher {
    fn code(&mut self, vaddr: u64, code: &mut [u8]) -> Vec<Region> {
        patch(vaddr, code).into_iter().collect()
    }
}

/// The guest mapped `len` bytes at `start` executable and private, from a file (mmap's
/// result, `prot` as asked, `fd` and `offset` as given): patched in place, the pages made
/// writable only meanwhile. Nothing runs there yet: the mapping was just made.
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
    if let Some(region) = patch(start, code) {
        // Kept for the life of the process: a library's code may be called until it ends.
        std::mem::forget(region);
    }
    let restore = MprotectFlags::from_bits_truncate(u32::try_from(prot & 7).unwrap_or(0));
    // SAFETY: as above.
    let _ = unsafe { mprotect(ptr, size, restore) };
}

/// Patches every site it can in `code` (writable, at `vaddr`); returns the memory holding
/// their trampolines.
fn patch(vaddr: u64, code: &mut [u8]) -> Option<Region> {
    let started = std::time::Instant::now();
    // Most code of a dynamic program is its libraries': a program's own text seldom has a
    // syscall instruction, and the full analysis of several MiB costs milliseconds.
    if !code.windows(2).any(|w| w == [0x0F, 0x05]) {
        return None;
    }
    let mut scanned = Vec::new();
    scan_segment(code, vaddr, &mut scanned);
    if scanned.is_empty() {
        return None;
    }
    let analysis = Analysis::new(code, vaddr);
    let mut sites: Vec<Site> = analysis.sites();
    let before = sites.len();
    sites.retain(|s| {
        s.class
            != SiteClass::Wrapper {
                nr: SYS_RT_SIGRETURN,
            }
    });
    let restorers = before - sites.len();
    RESTORERS.fetch_add(restorers, Ordering::Relaxed);
    if sites.is_empty() {
        return None;
    }
    let (plans, refused) = plan::plan_segment(&analysis, &sites);
    drop(analysis);
    let mut left = refused.len();
    let mut done = 0;
    let region = if plans.is_empty() {
        None
    } else {
        let need = (plans.len() * MAX_TRAMPOLINE).div_ceil(PAGE_BYTES) * PAGE_BYTES;
        map_near(vaddr, vaddr + code.len() as u64, need)
    };
    if let Some((at, len)) = region {
        // SAFETY: the pages just mapped read-write for this purpose.
        let pages = unsafe { std::slice::from_raw_parts_mut(at as *mut u8, len) };
        let stub = tramp::common_entry();
        let mut used = 0usize;
        for p in &plans {
            let t_at = at + used as u64;
            let laid_out = plan::trampoline(p, t_at, 0, stub)
                .ok()
                .and_then(|probe| entry::register_site(probe.return_addr, SiteKind::Syscall))
                .and_then(|id| plan::trampoline(p, t_at, id, stub).ok())
                .zip(plan::patch_bytes(p, t_at).ok());
            let Some((t, jump)) = laid_out else {
                left += 1;
                continue;
            };
            pages[used..used + t.bytes.len()].copy_from_slice(&t.bytes);
            used += t.bytes.len();
            let w = usize::try_from(p.start - vaddr).unwrap_or(usize::MAX);
            code[w..w + jump.len()].copy_from_slice(&jump);
            done += 1;
        }
        // SAFETY: the trampoline pages mapped above; from here on they are only executed.
        let _ = unsafe { mprotect(at as *mut _, len, MprotectFlags::READ | MprotectFlags::EXEC) };
    } else {
        left += plans.len();
    }
    PATCHED.fetch_add(done, Ordering::Relaxed);
    REFUSED.fetch_add(left, Ordering::Relaxed);
    if VERBOSE.load(Ordering::Relaxed) {
        eprintln!(
            "kbox: rewrite: code at {vaddr:#x} ({} bytes): {done} sites patched, {left} left to trap{} ({:.1} ms)",
            code.len(),
            if restorers > 0 {
                ", rt_sigreturn restorer left as it is"
            } else {
                ""
            },
            started.elapsed().as_secs_f64() * 1000.0
        );
    }
    region.map(|(at, len)| Region::adopt(at, len))
}

/// Maps `len` bytes read-write where a rel32 jump from anywhere in `lo..hi` reaches them:
/// below the code first (above a program is where its break grows), then past the break's
/// room.
fn map_near(lo: u64, hi: u64, len: usize) -> Option<(u64, usize)> {
    let len64 = len as u64;
    let reaches =
        |at: u64| hi.saturating_sub(at) < REACH && (at + len64).saturating_sub(lo) < REACH;
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
