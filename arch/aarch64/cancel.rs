//! Cancel-wrapper promotion (see docs/rewrite.md): a `bl` to a cancellable-syscall helper
//! that takes the number as its 7th argument (x6) is redirected straight to a trampoline,
//! skipping the helper's cancellation bookkeeping.
//!
//! Shape: `movz x6,#nr`, then a `bl` within 32 bytes; the bl target must reach, through at
//! most two levels of calls or tail calls, an `svc #0` preceded by at least four consecutive
//! `mov Xd,Xm` (the helper shuffling (a..f, nr) into x0-x5 and x8). An ordinary 7-argument
//! call also loads x6, but its callee has no such svc.

use super::insn::{self, SVC0};
use crate::elf::Image;
use alloc::vec::Vec;

/// How far after the `movz x6` the `bl` may be.
const BL_WINDOW: usize = 32;
/// Call-graph depth walked from the `bl` target (the target itself is depth 1).
const MAX_DEPTH: u32 = 2;
/// Instructions scanned in each function visited.
const FUNC_SCAN: usize = 64;
/// Consecutive register moves required right before the svc.
const MIN_SHUFFLE: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelSite {
    /// Address of the `bl`; the trampoline resumes at `bl_vaddr + 4`.
    pub bl_vaddr: u64,
    pub nr: u32,
}

/// Every promotable call in one code segment.
pub fn find(code: &[u8], vaddr: u64) -> Vec<CancelSite> {
    let mut out = Vec::new();
    for at in (0..code.len().saturating_sub(3)).step_by(4) {
        let Some((6, nr)) = insn::word(code, at).and_then(insn::movz) else {
            continue;
        };
        let Ok(nr) = u32::try_from(nr) else { continue };
        for next in (at + 4..=at + BL_WINDOW).step_by(4) {
            let Some(w) = insn::word(code, next) else {
                break;
            };
            if let Some(off) = insn::bl_offset(w) {
                if target_of(next, off).is_some_and(|t| reaches_shuffled_svc(code, t, 1)) {
                    out.push(CancelSite {
                        bl_vaddr: vaddr.wrapping_add(next as u64),
                        nr,
                    });
                }
                break;
            }
            // Another write to x6, or control flow, ends the search.
            if insn::is_control_flow(w) || w & 0x1F == 6 {
                break;
            }
        }
    }
    out
}

/// Whether the function at segment offset `at` reaches the helper's svc within `MAX_DEPTH`.
fn reaches_shuffled_svc(code: &[u8], at: usize, depth: u32) -> bool {
    let mut moves = 0;
    for i in 0..FUNC_SCAN {
        let Some(pos) = at.checked_add(4 * i) else {
            return false;
        };
        let Some(w) = insn::word(code, pos) else {
            return false;
        };
        if w == SVC0 {
            if moves >= MIN_SHUFFLE {
                return true;
            }
            moves = 0;
            continue;
        }
        if insn::mov_reg64(w).is_some() {
            moves += 1;
            continue;
        }
        moves = 0;
        let (call, off) = match (insn::bl_offset(w), insn::b_offset(w)) {
            (Some(off), _) => (true, off),
            (None, Some(off)) => (false, off),
            _ if w == insn::RET => return false,
            _ => continue,
        };
        if depth < MAX_DEPTH
            && target_of(pos, off).is_some_and(|t| reaches_shuffled_svc(code, t, depth + 1))
        {
            return true;
        }
        if !call {
            return false;
        }
    }
    false
}

/// Segment offset of a branch at `at` with byte offset `off`, if it stays non-negative.
fn target_of(at: usize, off: i64) -> Option<usize> {
    at.checked_add_signed(isize::try_from(off).ok()?)
}

/// Promotion skips pthread cancellation points, which only a multi-threaded program can
/// observe: allow it for static binaries (whose libc is all in view) with no site that may
/// create a thread or process.
pub fn promotion_allowed(image: &Image<'_>) -> bool {
    image.is_static() && !crate::site::has_fork_sites(image)
}
