//! x86-64's sites: every `syscall` the planner can give a window (docs/rewrite.md) jumps
//! to a trampoline with a rel32 `jmp`; the rest trap.

use kbox_arch::entry::{self, SiteKind};
use kbox_arch::site::{Site, SiteClass};
use kbox_arch::x86_64::plan::{self, Analysis, MAX_TRAMPOLINE};
use kbox_arch::x86_64::scan::scan_segment;
use kbox_arch::x86_64::tramp;
use rustix::mm::{MprotectFlags, mprotect};

use super::patch::{Outcome, PAGE_BYTES, map_near, tally};
use crate::loader::Region;

/// rt_sigreturn: the restorers libcs hand the kernel keep their bytes, which unwinders
/// (libgcc's, gdb's) match to recognise a signal frame.
const SYS_RT_SIGRETURN: u32 = 15;
/// A rel32 jump reaches ±2 GiB; trampolines stay well inside.
const REACH: u64 = (1 << 31) - (1 << 24);

/// Promotion is an AArch64 matter (its cancel wrappers); x86-64 patches every site anyway.
pub fn promotion_allowed(_program: &[u8]) -> bool {
    false
}

/// Patches every site it can in `code` (writable, at `vaddr`); returns the memory holding
/// their trampolines.
pub fn patch(vaddr: u64, code: &mut [u8], _promote: bool) -> Option<Region> {
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
    if sites.is_empty() {
        tally(
            vaddr,
            code.len(),
            &Outcome {
                restorers,
                ..Outcome::default()
            },
            started,
        );
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
        map_near(vaddr, vaddr + code.len() as u64, need, REACH)
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
    let outcome = Outcome {
        patched: done,
        promoted: 0,
        refused: left,
        restorers,
    };
    tally(vaddr, code.len(), &outcome, started);
    region.map(|(at, len)| Region::adopt(at, len))
}
