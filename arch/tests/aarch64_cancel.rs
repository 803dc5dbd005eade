//! Cancel-wrapper detection and its promotion gate, on the cross-built AArch64 program and
//! Debian's arm64 busybox (pure byte analysis, runs on any host).

mod common;

use common::Aligned;
use kbox_arch::aarch64::cancel::{self, CancelSite};
use kbox_arch::elf;

fn prog() -> Aligned {
    Aligned::load(&common::build_c(
        "aarch64-linux-gnu-gcc",
        "aarch64_prog.S",
        &["-nostdlib", "-static"],
    ))
}

/// Address of the `n`th `bl` in the program's code.
fn nth_bl(code: &[u8], vaddr: u64, n: usize) -> u64 {
    let at = (0..code.len() / 4)
        .filter(|i| {
            u32::from_le_bytes(code[i * 4..i * 4 + 4].try_into().expect("word")) >> 26 == 0x25
        })
        .nth(n)
        .expect("enough bl");
    vaddr + 4 * at as u64
}

#[test]
fn cancel_call_is_found_and_seven_argument_and_musl_1_2_calls_are_not() {
    let data = prog();
    let image = elf::parse(data.bytes()).expect("well-formed");
    let seg = image.code[0];
    let found = cancel::find(seg.bytes, seg.vaddr);
    // bl #0 is the cancel call (x6 = 64, write); bl #1 the 7-argument call (x6 = 7); the
    // call of musl 1.2's __syscall_cp shape (number in x0, x6 = 0 its last argument) is
    // not one either.
    assert_eq!(
        found,
        [CancelSite {
            bl_vaddr: nth_bl(seg.bytes, seg.vaddr, 0),
            nr: 64
        }]
    );
}

#[test]
fn static_program_without_clone_may_promote() {
    let data = prog();
    let image = elf::parse(data.bytes()).expect("well-formed");
    assert!(cancel::promotion_allowed(&image));
}

#[test]
fn busybox_with_clone_sites_may_not_promote() {
    let data = Aligned::load(&common::arm64_busybox());
    let image = elf::parse(data.bytes()).expect("well-formed");
    assert!(image.is_static());
    assert!(!cancel::promotion_allowed(&image));
}

#[test]
fn dynamic_binaries_may_not_promote() {
    let exe = common::build_c("aarch64-linux-gnu-gcc", "musl_prog.c", &["-O2", "-pthread"]);
    let data = Aligned::load(&exe);
    let image = elf::parse(data.bytes()).expect("well-formed");
    assert!(!image.is_static());
    assert!(
        !kbox_arch::site::has_fork_sites(&image),
        "only the interpreter gate applies"
    );
    assert!(!cancel::promotion_allowed(&image));
}
