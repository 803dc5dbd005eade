//! Finds `svc #0` words in a code segment and classifies them.

use super::insn::{self, SVC0};
use crate::site::{Site, SiteClass};
use alloc::vec::Vec;

/// How far back a `mov x8,#nr` may sit before the `svc` and still count as its number.
const NR_LOOKBACK: usize = 4;

/// Appends the sites of one code segment mapped at `vaddr` (A64 code is word-aligned).
pub fn scan_segment(code: &[u8], vaddr: u64, out: &mut Vec<Site>) {
    for at in (0..code.len().saturating_sub(3)).step_by(4) {
        if insn::word(code, at) != Some(SVC0) {
            continue;
        }
        let class =
            syscall_number(code, at).map_or(SiteClass::Bare, |nr| SiteClass::Wrapper { nr });
        out.push(Site {
            vaddr: vaddr.wrapping_add(at as u64),
            len: 4,
            class,
        });
    }
}

/// The immediate last moved into x8/w8 in the straight-line code just before `svc_at`.
pub fn syscall_number(code: &[u8], svc_at: usize) -> Option<u32> {
    for back in 1..=NR_LOOKBACK {
        let w = insn::word(code, svc_at.checked_sub(4 * back)?)?;
        if insn::is_control_flow(w) {
            return None;
        }
        if let Some((8, v)) = insn::movz(w) {
            return u32::try_from(v).ok();
        }
        // Any other write to x8 hides the number.
        if w & 0x1F == 8 && !is_store(w) {
            return None;
        }
    }
    None
}

/// Loads/stores (op0 = x1x0) keep Rt in the low bits; stores do not write it.
fn is_store(w: u32) -> bool {
    (w >> 25) & 0x5 == 0x4 && (w >> 22) & 1 == 0
}

/// How many straight-line instructions before a site [`may_use_numbers`] inspects.
const LOOSE_WINDOW: usize = 12;

/// Whether some site in `code` may run with one of `numbers`: a `movz` of one of them into
/// x8/w8 appears in the straight-line code before the site. It over-approximates on
/// purpose (intermediate writes to x8 are ignored), because its users gate an optimisation
/// on the answer being "no".
pub fn may_use_numbers(code: &[u8], numbers: &[u32]) -> bool {
    (0..code.len().saturating_sub(3)).step_by(4).any(|at| {
        insn::word(code, at) == Some(SVC0)
            && (1..=LOOSE_WINDOW)
                .map_while(|back| insn::word(code, at.checked_sub(4 * back)?))
                .take_while(|w| !insn::is_control_flow(*w))
                .filter_map(insn::movz)
                .any(|(rd, v)| rd == 8 && u32::try_from(v).is_ok_and(|nr| numbers.contains(&nr)))
    })
}
