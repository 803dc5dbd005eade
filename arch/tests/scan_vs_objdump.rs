//! The site scanners, run over ELF segments exactly as the rewriter will, against objdump:
//! the same `syscall`/`svc #0` addresses, no more, no fewer.

mod common;

use common::{Aligned, objdump};
use kbox_arch::elf::{self, Machine};
use kbox_arch::site::{self, SiteClass};
use std::collections::BTreeSet;
use std::path::Path;

fn objdump_sites(tool: &str, file: &Path, mnemonic: &str) -> BTreeSet<u64> {
    objdump(tool, file)
        .values()
        .flatten()
        .filter(|i| i.text.split_whitespace().collect::<Vec<_>>().join(" ") == mnemonic)
        .map(|i| i.addr)
        .collect()
}

fn our_sites(file: &Path, machine: Machine) -> Vec<site::Site> {
    let data = Aligned::load(file);
    let image = elf::parse(data.bytes()).expect("a well-formed ELF");
    assert_eq!(image.machine, machine);
    site::scan(&image)
}

fn assert_same_sites(file: &Path, machine: Machine) {
    let (tool, mnemonic) = match machine {
        Machine::X86_64 => ("objdump", "syscall"),
        Machine::Aarch64 => ("aarch64-linux-gnu-objdump", "svc #0x0"),
    };
    let reference = objdump_sites(tool, file, mnemonic);
    let ours: BTreeSet<u64> = our_sites(file, machine).iter().map(|s| s.vaddr).collect();
    assert!(
        !reference.is_empty(),
        "{}: objdump found no sites",
        file.display()
    );
    assert_eq!(ours, reference, "{}", file.display());
}

/// The rewrite tier takes its sites from the planner's decoded instructions
/// (`Analysis::sites`, one sweep) rather than a second sweep: the same sites, classes
/// included.
#[test]
fn planner_sites_are_the_scanners() {
    use kbox_arch::x86_64::{plan::Analysis, scan::scan_segment};
    for file in ["/bin/busybox", "/lib/x86_64-linux-gnu/libc.so.6"] {
        let data = Aligned::load(Path::new(file));
        let image = elf::parse(data.bytes()).expect("a well-formed ELF");
        for seg in &image.code {
            let mut scanned = Vec::new();
            scan_segment(seg.bytes, seg.vaddr, &mut scanned);
            assert_eq!(
                Analysis::new(seg.bytes, seg.vaddr).sites(),
                scanned,
                "{file}"
            );
        }
    }
}

#[test]
fn busybox_x86_64_sites_match_objdump() {
    assert_same_sites(Path::new("/bin/busybox"), Machine::X86_64);
}

#[test]
fn glibc_sites_match_objdump() {
    assert_same_sites(
        Path::new("/lib/x86_64-linux-gnu/libc.so.6"),
        Machine::X86_64,
    );
}

#[test]
fn musl_static_sites_match_objdump() {
    let prog = common::build_c("musl-gcc", "musl_prog.c", &["-static", "-O2", "-pthread"]);
    assert_same_sites(&prog, Machine::X86_64);
}

#[test]
fn busybox_arm64_sites_match_objdump() {
    assert_same_sites(&common::arm64_busybox(), Machine::Aarch64);
}

#[test]
fn aarch64_program_sites_match_objdump() {
    let prog = common::build_c(
        "aarch64-linux-gnu-gcc",
        "aarch64_prog.S",
        &["-nostdlib", "-static"],
    );
    assert_same_sites(&prog, Machine::Aarch64);
}

#[test]
fn aarch64_wrapper_numbers_are_read_and_memory_loads_are_bare() {
    let prog = common::build_c(
        "aarch64-linux-gnu-gcc",
        "aarch64_prog.S",
        &["-nostdlib", "-static"],
    );
    let classes: Vec<SiteClass> = our_sites(&prog, Machine::Aarch64)
        .iter()
        .map(|s| s.class)
        .collect();
    // exit (mov x8,#93), the cancel chain's svc (x8 from x6), musl 1.2's __syscall_cp
    // (x8 from x0), getpid (x8 from memory).
    assert_eq!(
        classes,
        [
            SiteClass::Wrapper { nr: 93 },
            SiteClass::Bare,
            SiteClass::Bare,
            SiteClass::Bare
        ]
    );
}

#[test]
fn musl_static_clone_wrapper_is_a_fork_site() {
    let prog = common::build_c("musl-gcc", "musl_prog.c", &["-static", "-O2", "-pthread"]);
    let data = Aligned::load(&prog);
    let image = elf::parse(data.bytes()).expect("well-formed");
    assert!(image.is_static());
    assert!(site::has_fork_sites(&image));
}

#[test]
fn busybox_arm64_has_fork_sites() {
    let data = Aligned::load(&common::arm64_busybox());
    let image = elf::parse(data.bytes()).expect("well-formed");
    assert!(site::has_fork_sites(&image));
}

#[test]
fn aarch64_program_without_clone_has_no_fork_sites() {
    let prog = common::build_c(
        "aarch64-linux-gnu-gcc",
        "aarch64_prog.S",
        &["-nostdlib", "-static"],
    );
    let data = Aligned::load(&prog);
    let image = elf::parse(data.bytes()).expect("well-formed");
    assert!(!site::has_fork_sites(&image));
}
