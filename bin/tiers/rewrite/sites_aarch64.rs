//! AArch64's sites: each `svc #0` (and, where the program allows it, each promoted
//! cancel-wrapper `bl`, docs/rewrite.md) becomes a `b` to a trampoline in a page within
//! ±128 MiB; the trampoline calls kbox's entry stub through an absolute literal.

use kbox_arch::aarch64::insn::SVC0;
use kbox_arch::aarch64::plan::{self, B_REACH, TRAMPOLINE_SIZE};
use kbox_arch::aarch64::scan::scan_segment;
use kbox_arch::aarch64::{cancel, tramp};
use kbox_arch::entry::{self, SiteKind};
use kbox_arch::site::SiteClass;
use rustix::mm::{MprotectFlags, mprotect};

use super::patch::{Outcome, PAGE_BYTES, map_near, tally};
use crate::loader::Region;

/// rt_sigreturn: the restorers libcs hand the kernel keep their bytes, which unwinders
/// match to recognise a signal frame.
const SYS_RT_SIGRETURN: u32 = 139;
/// Trampolines stay well inside a `b`'s reach.
const REACH: u64 = B_REACH - (1 << 20);

/// Whether cancel-wrapper calls of `program` may go straight to a trampoline: a static
/// program (its libc all in view) with no site that may start a thread or a process, so
/// no pthread cancellation point can be observed (`cancel::promotion_allowed`).
pub fn promotion_allowed(program: &[u8]) -> bool {
    kbox_arch::elf::parse(program).is_ok_and(|image| cancel::promotion_allowed(&image))
}

/// Patches every site it can in `code` (writable, at `vaddr`); returns the memory holding
/// their trampolines.
pub fn patch(vaddr: u64, code: &mut [u8], promote: bool) -> Option<Region> {
    let started = std::time::Instant::now();
    let svc = SVC0.to_le_bytes();
    if !code.chunks_exact(4).any(|w| w == svc) {
        return None;
    }
    let mut scanned = Vec::new();
    scan_segment(code, vaddr, &mut scanned);
    let before = scanned.len();
    scanned.retain(|s| {
        s.class
            != SiteClass::Wrapper {
                nr: SYS_RT_SIGRETURN,
            }
    });
    let mut outcome = Outcome {
        restorers: before - scanned.len(),
        ..Outcome::default()
    };
    let mut targets: Vec<(u64, SiteKind)> = scanned
        .iter()
        .map(|s| (s.vaddr, SiteKind::Syscall))
        .collect();
    if promote {
        targets.extend(
            cancel::find(code, vaddr)
                .iter()
                .map(|c| (c.bl_vaddr, SiteKind::Cancel)),
        );
    }
    if targets.is_empty() {
        tally(vaddr, code.len(), &outcome, started);
        return None;
    }
    let need = (targets.len() * TRAMPOLINE_SIZE).div_ceil(PAGE_BYTES) * PAGE_BYTES;
    let Some((at, len)) = map_near(vaddr, vaddr + code.len() as u64, need, REACH) else {
        outcome.refused = targets.len();
        tally(vaddr, code.len(), &outcome, started);
        return None;
    };
    // SAFETY: the pages just mapped read-write for this purpose.
    let pages = unsafe { std::slice::from_raw_parts_mut(at as *mut u8, len) };
    let stub = tramp::common_entry();
    let mut used = 0usize;
    for &(site, kind) in &targets {
        let t_at = at + used as u64;
        let laid_out = plan::trampoline(site, t_at, 0, stub)
            .ok()
            .and_then(|probe| entry::register_site(probe.return_addr, kind))
            .and_then(|id| plan::trampoline(site, t_at, id, stub).ok())
            .zip(plan::patch_word(site, t_at).ok());
        let Some((t, word)) = laid_out else {
            outcome.refused += 1;
            continue;
        };
        pages[used..used + t.bytes.len()].copy_from_slice(&t.bytes);
        used += t.bytes.len();
        let w = usize::try_from(site - vaddr).unwrap_or(usize::MAX);
        code[w..w + 4].copy_from_slice(&word.to_le_bytes());
        outcome.patched += 1;
        if kind == SiteKind::Cancel {
            outcome.promoted += 1;
        }
    }
    // Instruction fetch sees neither the trampolines nor the patched words until the
    // caches are made coherent.
    tramp::sync_icache(pages);
    tramp::sync_icache(code);
    // SAFETY: the trampoline pages mapped above; from here on they are only executed.
    let _ = unsafe { mprotect(at as *mut _, len, MprotectFlags::READ | MprotectFlags::EXEC) };
    tally(vaddr, code.len(), &outcome, started);
    Some(Region::adopt(at, len))
}
