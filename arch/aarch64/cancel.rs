//! Cancel-wrapper promotion (see docs/rewrite.md): a `bl` to a cancellable-syscall helper
//! that takes the number as its 7th argument (x6) is redirected straight to a trampoline,
//! skipping the helper's cancellation bookkeeping.
//!
//! Shape: `movz x6,#nr`, then a `bl` within 32 bytes; the bl target must reach, through at
//! most two levels of calls or tail calls, an `svc #0` preceded by at least four consecutive
//! `mov Xd,Xm` (the helper shuffling (a..f, nr) into x0-x5 and x8). An ordinary 7-argument
//! call also loads x6, but its callee has no such svc.
//!
//! And x8 at that svc must hold what x6 held at the `bl`: the register moves along the way
//! are followed. musl 1.2's `__syscall_cp(nr, a..f)` has the same shape with the number
//! in x0 and x6 its last argument (often `mov x6, #0`): taking x6 for the number there ran
//! the wrong call (the aarch64 VM's first rewrite run: fdtest's open got ENOSYS).

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
                if target_of(next, off)
                    .is_some_and(|t| reaches_shuffled_svc(code, t, 1, &mut identity()))
                {
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

/// A register's value's origin: the register that held it at the `bl`.
const UNKNOWN: u8 = 0xFF;

/// Every register holds its own value (at the `bl`).
fn identity() -> [u8; 32] {
    core::array::from_fn(|r| u8::try_from(r).unwrap_or(UNKNOWN))
}

/// The register an instruction other than a move or a branch may write: the low five
/// bits for the data-processing and load classes (a store's are its source); 31 is the
/// zero register or sp, neither followed.
fn written(w: u32) -> Option<usize> {
    let is_store = (w >> 25) & 0x5 == 0x4 && (w >> 22) & 1 == 0;
    let rd = (w & 0x1F) as usize;
    (!is_store && rd < 31).then_some(rd)
}

/// Whether the function at segment offset `at` reaches the helper's svc within
/// `MAX_DEPTH`, with x8 there holding the value x6 held at the `bl` (`origin` follows
/// the moves on the way).
fn reaches_shuffled_svc(code: &[u8], at: usize, depth: u32, origin: &mut [u8; 32]) -> bool {
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
                return origin[8] == 6;
            }
            moves = 0;
            continue;
        }
        if let Some((rd, rm)) = insn::mov_reg64(w) {
            let (rd, rm) = (usize::from(rd), usize::from(rm));
            if rd < 31 {
                origin[rd] = origin.get(rm).copied().unwrap_or(UNKNOWN);
            }
            moves += 1;
            continue;
        }
        moves = 0;
        let (call, off) = match (insn::bl_offset(w), insn::b_offset(w)) {
            (Some(off), _) => (true, off),
            (None, Some(off)) => (false, off),
            _ if w == insn::RET => return false,
            _ => {
                if let Some(rd) = written(w) {
                    origin[rd] = UNKNOWN;
                }
                continue;
            }
        };
        if depth < MAX_DEPTH
            && target_of(pos, off)
                .is_some_and(|t| reaches_shuffled_svc(code, t, depth + 1, &mut origin.clone()))
        {
            return true;
        }
        if call {
            // The callee returned (or not): what it left in the registers is unknown.
            *origin = [UNKNOWN; 32];
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
