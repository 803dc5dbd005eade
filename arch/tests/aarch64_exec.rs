//! Patched AArch64 code run in this process (under qemu-aarch64-static on an x86-64 host):
//! svc sites and a promoted cancel call reach kbox's handler and resume with its result;
//! forged entries are refused; no trampoline or stub holds an svc.
#![cfg(target_arch = "aarch64")]

use kbox_arch::aarch64::scan::scan_segment;
use kbox_arch::aarch64::{cancel, plan, tramp};
use kbox_arch::entry::{self, ENOSYS, SiteKind, SyscallRequest};
use rustix::mm::{MapFlags, MprotectFlags, ProtFlags, mmap_anonymous, mprotect};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

const PAGE: usize = 4096;
const GETPID: u64 = 172;
const FAKE_NR: u64 = 1000;

static HANDLED: AtomicU64 = AtomicU64::new(0);
static SERIAL: Mutex<()> = Mutex::new(());

fn handler(req: &SyscallRequest) -> i64 {
    HANDLED.fetch_add(1, Ordering::SeqCst);
    match req.nr {
        GETPID => getpid(),
        FAKE_NR => (req.args[0] * 3 + req.args[1]).cast_signed(),
        _ => ENOSYS,
    }
}

fn getpid() -> i64 {
    i64::from(rustix::process::getpid().as_raw_nonzero().get())
}

/// Functions at 64-byte slots: f0 wrapper, f1 bare, f2 cancel caller (helper at slot 3),
/// f4 seven-argument caller (callee at slot 5), f6 a site entered with a forged id, f7 a
/// wrapper that keeps its argument in d0 across the call.
fn program() -> Vec<u32> {
    let mut w = vec![0xD420_0000u32; 8 * 16]; // brk #0 filler
    let mut put =
        |slot: usize, words: &[u32]| w[slot * 16..slot * 16 + words.len()].copy_from_slice(words);
    let svc = 0xD400_0001;
    let ret = 0xD65F_03C0;
    put(0, &[0xD280_1588, svc, ret]); // mov x8,#172; svc; ret
    put(1, &[0xAA00_03E8, 0xAA01_03E0, 0xAA02_03E1, svc, ret]); // mov x8,x0; mov x0,x1; mov x1,x2
    // stp x29,x30,[sp,#-16]!; mov x6,#172; bl slot3; ldp x29,x30,[sp],#16; ret
    put(
        2,
        &[0xA9BF_7BFD, 0xD280_1586, 0x9400_0000 | 14, 0xA8C1_7BFD, ret],
    );
    // helper: four register moves, svc, then +1 so a non-promoted call is visible.
    put(
        3,
        &[
            0xAA06_03E8,
            0xAA00_03E0,
            0xAA01_03E1,
            0xAA02_03E2,
            svc,
            0x9100_0400,
            ret,
        ],
    );
    // 7-argument call: mov x6,#7; bl slot5
    put(
        4,
        &[0xA9BF_7BFD, 0xD280_00E6, 0x9400_0000 | 14, 0xA8C1_7BFD, ret],
    );
    put(5, &[0x8B06_0000, ret]); // add x0,x0,x6
    put(6, &[0xD280_1588, svc, ret]);
    // fmov d0,x0; mov x8,#172; svc; fmov x0,d0; ret
    put(7, &[0x9E67_0000, 0xD280_1588, svc, 0x9E66_0000, ret]);
    w
}

struct Patched {
    base: *mut u8,
    tramp_used: usize,
}

impl Patched {
    fn call(&self, slot: usize, a: u64, b: u64, c: u64) -> i64 {
        // SAFETY: slot is a C-ABI function of program(), mapped executable; its patched
        // sites branch to registered trampolines.
        let f: extern "C" fn(u64, u64, u64) -> i64 =
            unsafe { std::mem::transmute(self.base.add(slot * 64)) };
        f(a, b, c)
    }

    fn trampolines(&self) -> &[u8] {
        // SAFETY: tramp_used bytes of the second page were written and it stays mapped.
        unsafe { std::slice::from_raw_parts(self.base.add(PAGE), self.tramp_used) }
    }
}

/// Maps the program, patches every svc (slot 6's with `forged_id`) and every promotable
/// cancel call.
fn patch(forged_id: u32) -> Patched {
    let words = program();
    // SAFETY: a fresh private anonymous mapping.
    let base = unsafe {
        mmap_anonymous(
            std::ptr::null_mut(),
            2 * PAGE,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE,
        )
    }
    .expect("mmap")
    .cast::<u8>();
    // SAFETY: two writable pages owned here.
    let mem = unsafe { std::slice::from_raw_parts_mut(base, 2 * PAGE) };
    for (i, w) in words.iter().enumerate() {
        mem[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    let va = base as u64;
    let code_len = words.len() * 4;
    let mut sites = Vec::new();
    scan_segment(&mem[..code_len], va, &mut sites);
    let cancels = cancel::find(&mem[..code_len], va);
    assert_eq!(
        cancels.len(),
        1,
        "only the cancel caller, not the 7-argument call"
    );
    let mut todo: Vec<(u64, SiteKind)> =
        sites.iter().map(|s| (s.vaddr, SiteKind::Syscall)).collect();
    todo.extend(cancels.iter().map(|c| (c.bl_vaddr, SiteKind::Cancel)));

    tramp::init_stacks();
    entry::set_handler(handler);
    let mut used = 0;
    for (site, kind) in todo {
        let at = va + (PAGE + used) as u64;
        let probe = plan::trampoline(site, at, 0, tramp::common_entry()).expect("layout");
        let id = if site == va + 6 * 64 + 4 {
            forged_id
        } else {
            entry::register_site(probe.return_addr, kind).expect("registry room")
        };
        let t = plan::trampoline(site, at, id, tramp::common_entry()).expect("layout");
        mem[PAGE + used..PAGE + used + t.bytes.len()].copy_from_slice(&t.bytes);
        used += t.bytes.len();
        let off = usize::try_from(site - va).expect("in page");
        let word = plan::patch_word(site, at).expect("in range");
        mem[off..off + 4].copy_from_slice(&word.to_le_bytes());
    }
    tramp::sync_icache(mem);
    // SAFETY: the two pages mapped above.
    unsafe {
        mprotect(
            base.cast(),
            2 * PAGE,
            MprotectFlags::READ | MprotectFlags::EXEC,
        )
    }
    .expect("mprotect");
    Patched {
        base,
        tramp_used: used,
    }
}

#[test]
fn svc_sites_and_promoted_cancel_call_reach_the_handler() {
    let _g = SERIAL.lock().expect("lock");
    let p = patch(u32::MAX);
    let before = HANDLED.load(Ordering::SeqCst);
    assert_eq!(p.call(0, 0, 0, 0), getpid(), "wrapper svc");
    assert_eq!(p.call(1, FAKE_NR, 5, 7), 22, "bare svc with arguments");
    assert_eq!(
        p.call(2, 0, 0, 0),
        getpid(),
        "promoted: resumes after the bl, helper skipped"
    );
    assert_eq!(p.call(4, 1, 0, 0), 8, "7-argument call untouched");
    assert_eq!(HANDLED.load(Ordering::SeqCst) - before, 3);
}

/// The rewrite tier's path: a frame handler gets the saved registers on the guest's stack
/// (x8 holds the number, x6's for a promoted call) and the SIMD registers in the scratch
/// area, and what it leaves there is what the code resumes with, plainly or after the
/// mask in the x16 slot is installed.
fn frame_handler(frame: &mut tramp::Frame, mut scratch: tramp::Scratch) -> u64 {
    HANDLED.fetch_add(1, Ordering::SeqCst);
    let x = frame.x;
    frame.x[0] = match x[8] {
        GETPID => getpid(),
        FAKE_NR => (x[0] * 3 + x[1]).cast_signed(),
        _ => ENOSYS,
    }
    .cast_unsigned();
    // d0 (q0's low half) comes back one more than it went in.
    let q0 = &mut scratch.vregs()[..8];
    let d0 = u64::from_le_bytes(q0.try_into().expect("8 bytes"));
    q0.copy_from_slice(&(d0 + 1).to_le_bytes());
    // The guest's x16 and x30 are the trampoline's to restore; its stack pointer is above.
    let [_, guest_x30] = *frame.guest_x16_x30();
    assert_ne!(
        guest_x30, x[30],
        "the frame's x30 is the way back into the trampoline"
    );
    if x[0].is_multiple_of(2) {
        tramp::RESUME_PLAIN
    } else {
        // An empty mask, as the test thread has.
        frame.x[16] = 0;
        tramp::RESUME_WITH_MASK
    }
}

#[test]
fn frame_handler_gets_and_gives_back_the_registers() {
    let _g = SERIAL.lock().expect("lock");
    let p = patch(u32::MAX);
    tramp::set_frame_handler(frame_handler);
    let before = HANDLED.load(Ordering::SeqCst);
    let results = [
        p.call(0, 0, 0, 0),
        p.call(1, FAKE_NR, 5, 7),
        p.call(1, FAKE_NR, 6, 7),
        p.call(2, 0, 0, 0),
        p.call(7, 41, 0, 0),
    ];
    let (rejected, forged) = (entry::rejected_count(), patch(0));
    let refused = forged.call(6, 0, 0, 0);
    tramp::clear_frame_handler();
    assert_eq!(results[0], getpid(), "wrapper svc");
    assert_eq!(results[1], 22, "bare svc, resume with the mask");
    assert_eq!(results[2], 25, "bare svc, plain resume");
    assert_eq!(results[3], getpid(), "promoted: the number from x6");
    assert_eq!(
        results[4], 42,
        "d0 as the handler left it in the scratch area"
    );
    assert_eq!(HANDLED.load(Ordering::SeqCst) - before, 5);
    assert_eq!(
        refused, ENOSYS,
        "a forged id never reaches the frame handler"
    );
    assert_eq!(entry::rejected_count() - rejected, 1);
}

#[test]
fn forged_site_ids_are_rejected_before_the_handler() {
    let _g = SERIAL.lock().expect("lock");
    // Genuine sites are registered first, so id 0 belongs to another return address.
    let _genuine = patch(u32::MAX);
    for forged in [0, 30_000] {
        let p = patch(forged);
        let (handled, rejected) = (HANDLED.load(Ordering::SeqCst), entry::rejected_count());
        assert_eq!(p.call(6, 0, 0, 0), ENOSYS, "id {forged}");
        assert_eq!(HANDLED.load(Ordering::SeqCst), handled);
        assert_eq!(entry::rejected_count() - rejected, 1);
    }
}

#[test]
fn trampolines_and_entry_stub_contain_no_svc() {
    let _g = SERIAL.lock().expect("lock");
    let p = patch(u32::MAX);
    for (name, code) in [
        ("trampolines", p.trampolines()),
        ("entry stub", tramp::common_entry_code()),
    ] {
        assert!(code.len() > 16, "{name} is empty");
        let svcs = code
            .chunks_exact(4)
            .filter(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]) & 0xFFE0_001F == 0xD400_0001)
            .count();
        assert_eq!(svcs, 0, "{name}");
    }
}

/// A call marked to run straight (entry::set_host_call) is made on the host by the stub
/// alone for a genuine plain svc site, and still refused for a forged one: the fast path
/// makes the registry's checks too, so it is no gadget. A promoted cancel site takes its
/// number from x6, so it always goes through the handler.
#[test]
fn straight_host_calls_need_a_genuine_entry_too() {
    let _g = SERIAL.lock().expect("lock");
    let p = patch(u32::MAX);
    entry::set_host_call(usize::try_from(GETPID).expect("small"), true);
    let (handled, rejected) = (HANDLED.load(Ordering::SeqCst), entry::rejected_count());
    let straight = [p.call(0, 0, 0, 0), p.call(1, GETPID, 0, 0)];
    let straight_handled = HANDLED.load(Ordering::SeqCst) - handled;
    let promoted = p.call(2, 0, 0, 0);
    let promoted_handled = HANDLED.load(Ordering::SeqCst) - handled;
    let forged = [patch(0).call(6, 0, 0, 0), patch(30_000).call(6, 0, 0, 0)];
    entry::set_host_call(usize::try_from(GETPID).expect("small"), false);
    let after = p.call(0, 0, 0, 0);
    let after_handled = HANDLED.load(Ordering::SeqCst) - handled;
    assert_eq!(straight, [getpid(), getpid()], "wrapper and bare sites");
    assert_eq!(straight_handled, 0, "the handler never ran");
    assert_eq!(promoted, getpid(), "promoted cancel call");
    assert_eq!(
        promoted_handled, 1,
        "a promoted call goes through the handler"
    );
    assert_eq!(forged, [ENOSYS, ENOSYS], "forged ids");
    assert_eq!(entry::rejected_count() - rejected, 2);
    assert_eq!(after, getpid());
    assert_eq!(after_handled, 2, "the handler again");
}
