//! Patch plans for x86-64 syscall sites.
//!
//! Every site, wrapper or bare, gets the same treatment: a window of whole instructions
//! around the 2-byte `syscall`, at least 5 bytes long, is replaced by `jmp rel32` to a
//! per-site trampoline that re-executes the other window instructions around a call into
//! kbox, then jumps back to the first byte after the window. A window is only accepted
//! when nothing else can land inside it (see docs/rewrite.md for the rules and limits);
//! sites without one are refused and stay on the trap tier.

use super::decode::{Insn, Kind, read_signed};
use super::sweep::{Step, Sweep};
use crate::site::{Site, SiteClass};
use alloc::vec::Vec;

/// `jmp rel32`: the patch written at the window start.
const JMP_LEN: usize = 5;
/// Most instructions a window may hold (before and after the site together).
const MAX_WINDOW_INSNS: usize = 6;
/// Room the guest's red zone needs below its stack pointer before kbox pushes anything.
const RED_ZONE: i8 = -128;

/// Why a site keeps the trap tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No window of at least 5 bytes passes the checks below.
    NoSafeWindow,
    /// The site is not on a decoded instruction boundary of this segment.
    NotAnInstruction,
    /// A direct branch targets an instruction inside every candidate window.
    BranchTarget,
}

/// One decoded instruction at a segment offset.
#[derive(Debug, Clone, Copy)]
struct At {
    off: usize,
    insn: Insn,
}

/// A segment decoded once, with everything window checks consult.
#[derive(Debug)]
pub struct Analysis<'a> {
    code: &'a [u8],
    vaddr: u64,
    insns: Vec<At>,
    /// Addresses some direct branch or call in the segment targets, sorted, no repeats.
    targets: Vec<u64>,
}

impl<'a> Analysis<'a> {
    pub fn new(code: &'a [u8], vaddr: u64) -> Self {
        let mut insns = Vec::new();
        let mut targets = Vec::new();
        for (off, step) in Sweep::new(code) {
            if let Step::Insn(insn) = step {
                let ip = vaddr.wrapping_add(off as u64);
                if let Some(t) = insn.branch_target(&code[off..], ip) {
                    targets.push(t);
                }
                insns.push(At { off, insn });
            }
        }
        targets.sort_unstable();
        targets.dedup();
        Self {
            code,
            vaddr,
            insns,
            targets,
        }
    }

    /// The segment's syscall sites, in address order: what `scan::scan_segment` finds,
    /// from the instructions already decoded here.
    pub fn sites(&self) -> Vec<Site> {
        let mut out = Vec::new();
        for (i, a) in self.insns.iter().enumerate() {
            if a.insn.kind != Kind::Syscall {
                continue;
            }
            // The instruction right before, when nothing undecodable lies between.
            let prev = i
                .checked_sub(1)
                .and_then(|p| self.insns.get(p))
                .filter(|p| p.off + p.insn.size() == a.off);
            let class = prev.and_then(|p| super::scan::immediate_eax(self.bytes(p)));
            out.push(Site {
                vaddr: self.ip(a),
                len: a.insn.len,
                class: class.map_or(SiteClass::Bare, |nr| SiteClass::Wrapper { nr }),
            });
        }
        out
    }

    fn bytes(&self, a: &At) -> &'a [u8] {
        &self.code[a.off..a.off + a.insn.size()]
    }

    fn ip(&self, a: &At) -> u64 {
        self.vaddr.wrapping_add(a.off as u64)
    }
}

/// A site's accepted window: instructions `first..=last` of the segment, the site among them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub site: Site,
    /// Address of the window (where `jmp rel32` goes).
    pub start: u64,
    /// Window length in bytes (>= 5); bytes after the jmp become int3.
    pub len: usize,
    /// Original window bytes: the site's bytes are at `site.vaddr - start`.
    pub original: Vec<u8>,
    /// (offset in `original`, length, RIP-relative disp field) of each instruction.
    insns: Vec<(usize, usize, Option<super::decode::Field>)>,
}

/// Plans every site of one segment; windows never overlap. Returns accepted plans and the
/// refused sites with the reason.
pub fn plan_segment(an: &Analysis<'_>, sites: &[Site]) -> (Vec<Plan>, Vec<(Site, Refusal)>) {
    let mut plans: Vec<Plan> = Vec::new();
    let mut refused = Vec::new();
    let mut claimed_until = 0u64;
    for site in sites {
        match plan_site(an, site, claimed_until) {
            Ok(p) => {
                claimed_until = p.start + p.len as u64;
                plans.push(p);
            }
            Err(r) => refused.push((*site, r)),
        }
    }
    (plans, refused)
}

/// Chooses the smallest safe window for `site` that starts at or after `free_from`.
pub fn plan_site(an: &Analysis<'_>, site: &Site, free_from: u64) -> Result<Plan, Refusal> {
    let k = an
        .insns
        .binary_search_by_key(&site.vaddr, |a| an.ip(a))
        .map_err(|_| Refusal::NotAnInstruction)?;
    let mut saw_target = false;
    for n in 1..=MAX_WINDOW_INSNS {
        // Fewer instructions before the site first: code after a syscall is rarely a
        // jump-table target, code before it (`mov $nr,%eax`) often starts a block.
        for before in 0..n {
            let after = n - 1 - before;
            let (Some(first), Some(last)) = (k.checked_sub(before), k.checked_add(after)) else {
                continue;
            };
            let Some(window) = an.insns.get(first..=last) else {
                continue;
            };
            match check_window(an, window, k - first, free_from) {
                Ok(()) => return Ok(make_plan(an, site, window)),
                Err(WindowFault::Target) => saw_target = true,
                Err(WindowFault::Other) => {}
            }
        }
    }
    Err(if saw_target {
        Refusal::BranchTarget
    } else {
        Refusal::NoSafeWindow
    })
}

enum WindowFault {
    Target,
    Other,
}

fn check_window(
    an: &Analysis<'_>,
    w: &[At],
    site_idx: usize,
    free_from: u64,
) -> Result<(), WindowFault> {
    let start = an.ip(&w[0]);
    let end_at = &w[w.len() - 1];
    let len = end_at.off + end_at.insn.size() - w[0].off;
    if len < JMP_LEN || start < free_from {
        return Err(WindowFault::Other);
    }
    for (i, a) in w.iter().enumerate() {
        // Contiguous: no undecodable byte between instructions.
        if i > 0 && w[i - 1].off + w[i - 1].insn.size() != a.off {
            return Err(WindowFault::Other);
        }
        let is_site = i == site_idx;
        if !is_site {
            match a.insn.kind {
                Kind::Syscall | Kind::RelBranch { .. } | Kind::IndirectCall => {
                    return Err(WindowFault::Other);
                }
                Kind::Endbr64 if i > 0 => return Err(WindowFault::Other),
                Kind::Endbr64 | Kind::Other => {}
            }
            // Control never falls out of the middle of a window.
            if i + 1 < w.len() && ends_flow(an.bytes(a)) {
                return Err(WindowFault::Other);
            }
        }
        if i > 0 {
            if an.targets.binary_search(&an.ip(a)).is_ok() {
                return Err(WindowFault::Target);
            }
            // The instruction after a call is a return address.
            if matches!(
                w[i - 1].insn.kind,
                Kind::RelBranch { call: true } | Kind::IndirectCall
            ) {
                return Err(WindowFault::Other);
            }
        }
    }
    Ok(())
}

/// ret, jmp, ud2, hlt: the next instruction is not reached by falling through.
fn ends_flow(bytes: &[u8]) -> bool {
    let op = bytes
        .iter()
        .position(|b| !matches!(b, 0x66 | 0x67 | 0xF2 | 0xF3 | 0x2E | 0x3E | 0x40..=0x4F));
    let Some(op) = op else { return false };
    match &bytes[op..] {
        [0xC3, ..] | [0xC2, ..] | [0xE9, ..] | [0xEB, ..] | [0xF4, ..] | [0x0F, 0x0B, ..] => true,
        [0xFF, modrm, ..] => matches!((modrm >> 3) & 7, 4 | 5),
        _ => false,
    }
}

fn make_plan(an: &Analysis<'_>, site: &Site, w: &[At]) -> Plan {
    let base = w[0].off;
    let end = w[w.len() - 1].off + w[w.len() - 1].insn.size();
    Plan {
        site: *site,
        start: an.ip(&w[0]),
        len: end - base,
        original: an.code[base..end].to_vec(),
        insns: w
            .iter()
            .map(|a| (a.off - base, a.insn.size(), a.insn.rip_disp))
            .collect(),
    }
}

/// Why a plan cannot be materialised at a given trampoline address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutError {
    /// The trampoline is more than ±2 GiB from the window.
    TooFar,
    /// A RIP-relative operand cannot reach its target from the trampoline.
    RipOutOfRange,
    /// Site ids are pushed as imm32.
    SiteIdTooLarge,
}

/// Upper bound on one trampoline's size: relocated instructions plus the fixed parts.
pub const MAX_TRAMPOLINE: usize = MAX_WINDOW_INSNS * super::decode::MAX_LEN + 64;

/// Trampoline bytes for `plan` placed at `at`: the window's other instructions, in order, with
/// the site replaced by a call into kbox through the 8-byte pointer at the end.
#[derive(Debug, Clone)]
pub struct Trampoline {
    pub bytes: Vec<u8>,
    /// Address the call into kbox returns to; the registry expects exactly this one.
    pub return_addr: u64,
}

pub fn trampoline(
    plan: &Plan,
    at: u64,
    site_id: u32,
    entry: u64,
) -> Result<Trampoline, LayoutError> {
    let id = i32::try_from(site_id).map_err(|_| LayoutError::SiteIdTooLarge)?;
    let mut t: Vec<u8> = Vec::with_capacity(MAX_TRAMPOLINE);
    let site_off =
        usize::try_from(plan.site.vaddr - plan.start).map_err(|_| LayoutError::TooFar)?;
    let mut return_addr = 0;
    let mut call_disp_at = 0;
    for &(off, len, rip) in &plan.insns {
        if off == site_off {
            // lea -128(%rsp),%rsp: step over the red zone without touching flags.
            t.extend_from_slice(&[0x48, 0x8D, 0x64, 0x24]);
            t.push(RED_ZONE.to_le_bytes()[0]);
            t.push(0x68);
            t.extend_from_slice(&id.to_le_bytes());
            // call *entry(%rip); the displacement is filled in once the literal's place is known.
            t.extend_from_slice(&[0xFF, 0x15]);
            call_disp_at = t.len();
            t.extend_from_slice(&[0; 4]);
            return_addr = at + t.len() as u64;
            // lea 136(%rsp),%rsp: drop the site id and the red-zone gap.
            t.extend_from_slice(&[0x48, 0x8D, 0xA4, 0x24, 0x88, 0, 0, 0]);
            continue;
        }
        let mut bytes: Vec<u8> = plan.original[off..off + len].to_vec();
        if let Some(f) = rip {
            let old_next = plan.start + (off + len) as u64;
            let target = old_next
                .wrapping_add_signed(read_signed(&bytes, f).ok_or(LayoutError::RipOutOfRange)?);
            let new_next = at + (t.len() + len) as u64;
            let disp = i32::try_from(target.wrapping_sub(new_next).cast_signed())
                .map_err(|_| LayoutError::RipOutOfRange)?;
            let o = usize::from(f.offset);
            bytes[o..o + 4].copy_from_slice(&disp.to_le_bytes());
        }
        t.extend_from_slice(&bytes);
    }
    // jmp back to the first byte after the window.
    let jmp_next = at + t.len() as u64 + 5;
    t.push(0xE9);
    t.extend_from_slice(&rel32(plan.start + plan.len as u64, jmp_next)?.to_le_bytes());
    while !t.len().is_multiple_of(8) {
        t.push(0xCC);
    }
    let lit = t.len();
    t.extend_from_slice(&entry.to_le_bytes());
    let call_next = call_disp_at + 4;
    let disp = i32::try_from(lit - call_next).map_err(|_| LayoutError::TooFar)?;
    t[call_disp_at..call_next].copy_from_slice(&disp.to_le_bytes());
    Ok(Trampoline {
        bytes: t,
        return_addr,
    })
}

/// The bytes that replace the window: `jmp rel32` to the trampoline, then int3 filler.
pub fn patch_bytes(plan: &Plan, trampoline_at: u64) -> Result<Vec<u8>, LayoutError> {
    let mut p = Vec::with_capacity(plan.len);
    p.push(0xE9);
    p.extend_from_slice(&rel32(trampoline_at, plan.start + JMP_LEN as u64)?.to_le_bytes());
    p.resize(plan.len, 0xCC);
    Ok(p)
}

fn rel32(target: u64, next: u64) -> Result<i32, LayoutError> {
    i32::try_from(target.wrapping_sub(next).cast_signed()).map_err(|_| LayoutError::TooFar)
}
