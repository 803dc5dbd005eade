//! Syscall sites: what the scanners find and how shared code asks for them.

use crate::elf::{Image, Machine};
use alloc::vec::Vec;

/// How the syscall number reaches a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteClass {
    /// The number is loaded by an immediate move right before the instruction
    /// (`mov $nr,%eax` / `mov x8,#nr`).
    Wrapper { nr: u32 },
    /// The number comes from elsewhere (a register, memory, an earlier block).
    Bare,
}

/// One `syscall` (x86-64) or `svc #0` (AArch64) instruction in a code segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Site {
    pub vaddr: u64,
    pub len: u8,
    pub class: SiteClass,
}

/// Every syscall site in the image's executable segments, in address order.
pub fn scan(image: &Image<'_>) -> Vec<Site> {
    let mut sites = Vec::new();
    for seg in &image.code {
        match image.machine {
            Machine::X86_64 => crate::x86_64::scan::scan_segment(seg.bytes, seg.vaddr, &mut sites),
            Machine::Aarch64 => {
                crate::aarch64::scan::scan_segment(seg.bytes, seg.vaddr, &mut sites)
            }
        }
    }
    sites
}

/// Numbers of the calls that create a new thread or process on `machine`.
pub fn fork_numbers(machine: Machine) -> &'static [u32] {
    match machine {
        // clone, fork, vfork, clone3
        Machine::X86_64 => &[56, 57, 58, 435],
        // clone, clone3 (no fork/vfork on AArch64)
        Machine::Aarch64 => &[220, 435],
    }
}

/// True when some site in the image may call clone/fork/vfork/clone3 (an over-approximation
/// from constant loads of those numbers). Sites whose number is not an immediate
/// (`syscall(SYS_clone, ...)`) are invisible here; see docs/rewrite.md.
pub fn has_fork_sites(image: &Image<'_>) -> bool {
    let forks = fork_numbers(image.machine);
    image.code.iter().any(|seg| match image.machine {
        Machine::X86_64 => crate::x86_64::scan::may_use_numbers(seg.bytes, forks),
        Machine::Aarch64 => crate::aarch64::scan::may_use_numbers(seg.bytes, forks),
    })
}
