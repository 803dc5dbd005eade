//! `--syscall-mode=auto`: the tier for the program a command starts, from the program
//! itself. The rewrite tier serves a call without a notification or a signal, but a
//! process the guest forks pays for the copy of kbox it gets and for a notification per
//! call; so it is chosen only for a program kbox can see will not start processes: a
//! static one (its libc is all in view) with no site that may call clone, fork, vfork or
//! clone3. Everything else stays with the seccomp tier. The choice is said under `-v`.

use kbox_arch::elf::{self, Machine};
use kbox_arch::site;

use crate::cli::SyscallTier;

#[cfg(target_arch = "x86_64")]
const HOST_MACHINE: Machine = Machine::X86_64;
#[cfg(target_arch = "aarch64")]
const HOST_MACHINE: Machine = Machine::Aarch64;

/// How much of a program's start [`choose`] needs to tell a script or a dynamically
/// linked program (its PT_INTERP header) apart; a static program is read whole.
pub const HEAD: usize = 64 << 10;

/// Whether the first bytes of a file are enough for [`choose`]: not an ELF file, or one
/// whose program headers (all within `head`) name an interpreter.
pub fn head_decides(head: &[u8]) -> bool {
    !head.starts_with(b"\x7fELF") || interpreter_named(head) == Some(true)
}

/// Whether an ELF64 little-endian file's program headers include PT_INTERP; None when
/// they are not all within `bytes` (or it is no such file).
fn interpreter_named(bytes: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if bytes.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |at: usize| Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
    let phoff = usize::try_from(u64::from_le_bytes(bytes.get(32..40)?.try_into().ok()?)).ok()?;
    let (entsize, count) = (usize::from(u16_at(54)?), usize::from(u16_at(56)?));
    let mut found = false;
    for i in 0..count {
        let at = phoff.checked_add(i.checked_mul(entsize)?)?;
        let kind = u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?);
        found |= kind == PT_INTERP;
    }
    Some(found)
}

/// The tier for the program whose file holds `program` (its start, when [`head_decides`]
/// says that is enough), and why.
pub fn choose(program: &[u8]) -> (SyscallTier, &'static str) {
    let fallback = SyscallTier::Seccomp;
    if program.starts_with(b"#!") {
        return (fallback, "a script: its interpreter may start processes");
    }
    if interpreter_named(program) == Some(true) {
        return (
            fallback,
            "dynamically linked: whether it starts processes is not in view",
        );
    }
    let Ok(image) = elf::parse(program) else {
        return (fallback, "not an ELF program kbox can read");
    };
    if image.machine != HOST_MACHINE {
        return (fallback, "a program for another machine");
    }
    if !image.is_static() {
        return (
            fallback,
            "dynamically linked: whether it starts processes is not in view",
        );
    }
    if site::has_fork_sites(&image) {
        return (fallback, "it may start processes (a clone/fork call site)");
    }
    (
        SyscallTier::Rewrite,
        "a static program with no call site that starts processes",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::AlignedBytes;

    fn file(path: &str) -> AlignedBytes {
        AlignedBytes::copy_of(&std::fs::read(path).expect("readable test program"))
    }

    /// A guest test program (static musl builds, made by `make check`).
    fn guest_program(name: &str) -> AlignedBytes {
        let dir =
            std::env::var("KBOX_GUEST_BINS").expect("KBOX_GUEST_BINS names the guest programs");
        file(&format!("{dir}/{name}"))
    }

    #[test]
    fn a_static_program_that_never_forks_gets_the_rewrite_tier() {
        let p = guest_program("hello");
        assert_eq!(choose(p.as_slice()).0, SyscallTier::Rewrite);
    }

    #[test]
    fn a_static_program_that_forks_stays_with_seccomp() {
        let p = guest_program("spawnstress");
        assert_eq!(choose(p.as_slice()).0, SyscallTier::Seccomp);
    }

    #[test]
    fn a_dynamic_program_stays_with_seccomp() {
        let whole = file("/bin/sh");
        assert_eq!(choose(whole.as_slice()).0, SyscallTier::Seccomp);
        // Its start is enough to tell.
        let head = &whole.as_slice()[..4096];
        assert!(head_decides(head));
        assert_eq!(choose(head).0, SyscallTier::Seccomp);
    }

    #[test]
    fn a_static_programs_start_is_not_enough() {
        let p = guest_program("hello");
        assert!(!head_decides(&p.as_slice()[..4096]));
        assert!(head_decides(b"#!/bin/sh\n"));
    }

    #[test]
    fn scripts_and_other_files_stay_with_seccomp() {
        assert_eq!(choose(b"#!/bin/sh\necho hi\n").0, SyscallTier::Seccomp);
        assert_eq!(choose(b"\x7fELF garbage").0, SyscallTier::Seccomp);
        assert_eq!(choose(b"").0, SyscallTier::Seccomp);
    }
}
