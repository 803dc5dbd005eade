//! The x86-64 length decoder against binutils' objdump on real code: every instruction
//! boundary must agree, and every `syscall` objdump prints must be one the decoder finds.

mod common;

use common::{RefInsn, objdump, read, section};
use kbox_arch::x86_64::sweep::{Step, Sweep};
use std::path::Path;

struct Outcome {
    insns: usize,
    syscalls_ref: usize,
    syscalls_ours: usize,
    mismatches: Vec<String>,
}

/// Sweeps each section objdump disassembled and compares instruction start addresses.
fn compare(file: &Path) -> Outcome {
    let data = read(file);
    let reference = objdump("objdump", file);
    let mut o = Outcome {
        insns: 0,
        syscalls_ref: 0,
        syscalls_ours: 0,
        mismatches: Vec::new(),
    };
    for (name, insns) in &reference {
        let (vaddr, off, size) = section(&data, name).expect("objdump's section exists");
        let code = &data[off..off + size];
        let ours: Vec<(u64, Step)> = Sweep::new(code)
            .map(|(at, s)| (vaddr + at as u64, s))
            .collect();
        o.insns += insns.len();
        o.syscalls_ref += insns.iter().filter(|i| i.text == "syscall").count();
        o.syscalls_ours += ours
            .iter()
            .filter(|(_, s)| matches!(s, Step::Insn(i) if i.kind == kbox_arch::x86_64::decode::Kind::Syscall))
            .count();
        diff(name, insns, &ours, &mut o.mismatches);
    }
    o
}

fn diff(name: &str, reference: &[RefInsn], ours: &[(u64, Step)], out: &mut Vec<String>) {
    let (mut i, mut j) = (0, 0);
    while i < reference.len() && j < ours.len() {
        let (r, (a, s)) = (&reference[i], &ours[j]);
        if r.addr == *a {
            i += 1;
            j += 1;
            continue;
        }
        if out.len() < 20 {
            out.push(format!(
                "{name}: objdump {:#x} '{}' vs ours {a:#x} {s:?}",
                r.addr, r.text
            ));
        }
        if r.addr < *a {
            i += 1;
        } else {
            j += 1;
        }
    }
    if i != reference.len() || j != ours.len() {
        out.push(format!(
            "{name}: tails differ ({} vs {})",
            reference.len() - i,
            ours.len() - j
        ));
    }
}

fn assert_agrees(file: &Path) {
    let o = compare(file);
    assert!(
        o.mismatches.is_empty(),
        "{}: {:#?}",
        file.display(),
        o.mismatches
    );
    assert!(
        o.insns > 1000,
        "{}: only {} instructions compared",
        file.display(),
        o.insns
    );
    assert_eq!(
        o.syscalls_ours,
        o.syscalls_ref,
        "{}: syscall count",
        file.display()
    );
    assert!(o.syscalls_ref > 0, "{}: no syscall at all", file.display());
    eprintln!(
        "{}: {} instructions, {} syscalls, all agree",
        file.display(),
        o.insns,
        o.syscalls_ref
    );
}

#[test]
fn debian_busybox_static_boundaries_match_objdump() {
    assert_agrees(Path::new("/bin/busybox"));
}

#[test]
fn glibc_boundaries_match_objdump() {
    assert_agrees(Path::new("/lib/x86_64-linux-gnu/libc.so.6"));
}

#[test]
fn musl_static_program_boundaries_match_objdump() {
    let prog = common::build_c("musl-gcc", "musl_prog.c", &["-static", "-O2", "-pthread"]);
    assert_agrees(&prog);
}

#[test]
fn rare_encodings_match_objdump() {
    let obj = common::build_c("gcc", "x86_64_edge.S", &["-c"]);
    let o = compare(&obj);
    assert!(o.mismatches.is_empty(), "{:#?}", o.mismatches);
    assert!(o.insns > 60, "only {} instructions compared", o.insns);
    // The 0F 05 bytes inside immediates and displacements are not sites.
    assert_eq!((o.syscalls_ours, o.syscalls_ref), (2, 2));
}
