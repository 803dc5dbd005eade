//! Finds `syscall` instructions on true instruction boundaries and classifies them.

use super::decode::{Insn, Kind};
use super::sweep::{Step, Sweep};
use crate::site::{Site, SiteClass};
use alloc::vec::Vec;

/// Appends the sites of one code segment mapped at `vaddr`.
pub fn scan_segment(code: &[u8], vaddr: u64, out: &mut Vec<Site>) {
    let mut prev: Option<(usize, Insn)> = None;
    for (at, step) in Sweep::new(code) {
        let Step::Insn(insn) = step else {
            prev = None;
            continue;
        };
        if insn.kind == Kind::Syscall {
            let class = prev.and_then(|(p, pi)| immediate_eax(&code[p..p + pi.size()]));
            out.push(Site {
                vaddr: vaddr.wrapping_add(at as u64),
                len: insn.len,
                class: class.map_or(SiteClass::Bare, |nr| SiteClass::Wrapper { nr }),
            });
        }
        prev = Some((at, insn));
    }
}

/// How many straight-line instructions before a site [`may_use_numbers`] inspects.
const LOOSE_WINDOW: usize = 12;

/// Whether some site in `code` may run with one of `numbers`: a constant load of one of
/// them into eax/al/rax appears within the straight-line instructions before the site. It
/// over-approximates on purpose (it ignores intermediate writes to rax), because its users
/// gate an optimisation on the answer being "no".
pub fn may_use_numbers(code: &[u8], numbers: &[u32]) -> bool {
    let mut window: heapless::Deque<(usize, usize), LOOSE_WINDOW> = heapless::Deque::new();
    for (at, step) in Sweep::new(code) {
        let Step::Insn(insn) = step else {
            window.clear();
            continue;
        };
        match insn.kind {
            Kind::Syscall => {
                let hit = window.iter().any(|&(p, len)| {
                    loose_immediate_eax(&code[p..p + len]).is_some_and(|nr| numbers.contains(&nr))
                });
                if hit {
                    return true;
                }
            }
            Kind::RelBranch { .. } | Kind::IndirectCall => {
                window.clear();
                continue;
            }
            Kind::Endbr64 | Kind::Other => {}
        }
        if window.is_full() {
            window.pop_front();
        }
        // Capacity was just ensured.
        let _ = window.push_back((at, insn.size()));
    }
    false
}

/// Constant loads into the syscall-number register, including the byte form
/// `mov $imm8,%al` that hand-written code pairs with `xor %eax,%eax`.
fn loose_immediate_eax(insn: &[u8]) -> Option<u32> {
    match insn {
        [0xB0, imm] => Some(u32::from(*imm)),
        _ => immediate_eax(insn),
    }
}

/// The immediate of `mov $imm32,%eax` (B8) or `mov $imm32,%rax` (48 C7 C0).
pub(crate) fn immediate_eax(insn: &[u8]) -> Option<u32> {
    let imm = match insn {
        [0xB8, imm @ ..] | [0x48, 0xC7, 0xC0, imm @ ..] => imm,
        _ => return None,
    };
    Some(u32::from_le_bytes(imm.try_into().ok()?))
}
