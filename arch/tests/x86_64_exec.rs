//! Patched x86-64 code, run in this process: every patched site reaches kbox's handler with
//! the right request and resumes with its result; refused sites run unpatched; bytes outside
//! the windows stay as they were; forged entries are refused.
#![cfg(target_arch = "x86_64")]

mod common;

use kbox_arch::entry::{self, ENOSYS, SiteKind, SyscallRequest};
use kbox_arch::site::{Site, SiteClass};
use kbox_arch::x86_64::decode::Kind;
use kbox_arch::x86_64::plan::{self, Analysis, Refusal};
use kbox_arch::x86_64::scan::scan_segment;
use kbox_arch::x86_64::sweep::{Step, Sweep};
use kbox_arch::x86_64::tramp;
use rustix::mm::{MapFlags, MprotectFlags, ProtFlags, mmap_anonymous, mprotect};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

const PAGE: usize = 4096;
const FAKE_NR: u64 = 1000;

static HANDLED: AtomicU64 = AtomicU64::new(0);
/// The handler and the counters are process-wide; tests take turns.
static SERIAL: Mutex<()> = Mutex::new(());

fn handler(req: &SyscallRequest) -> i64 {
    HANDLED.fetch_add(1, Ordering::SeqCst);
    match req.nr {
        39 => i64::from(rustix::process::getpid().as_raw_nonzero().get()),
        FAKE_NR => (req.args[0] * 3 + req.args[1]).cast_signed(),
        _ => ENOSYS,
    }
}

fn getpid() -> i64 {
    i64::from(rustix::process::getpid().as_raw_nonzero().get())
}

struct Patched {
    base: *mut u8,
    original: Vec<u8>,
    windows: Vec<(usize, usize)>,
    refused: Vec<(Site, Refusal)>,
    tramp_page: *mut u8,
    tramp_used: usize,
}

impl Patched {
    fn func(&self, index: usize) -> usize {
        self.base as usize + 64 * index
    }

    fn code(&self) -> &[u8] {
        // SAFETY: the mapping is PAGE*2 readable bytes that live as long as self.
        unsafe { std::slice::from_raw_parts(self.base, self.original.len()) }
    }

    fn trampolines(&self) -> &[u8] {
        // SAFETY: tramp_used bytes of the readable trampoline page were written.
        unsafe { std::slice::from_raw_parts(self.tramp_page, self.tramp_used) }
    }
}

/// Copies the sites object's .text into a fresh mapping, plans and applies every patch.
fn patch_sites() -> Patched {
    let obj = common::build_c("gcc", "x86_64_sites.S", &["-c"]);
    let data = common::read(&obj);
    let (_, off, size) = common::section(&data, ".text").expect(".text");
    let text = &data[off..off + size];
    assert!(size <= 2 * PAGE);
    // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
    let base = unsafe {
        mmap_anonymous(
            std::ptr::null_mut(),
            3 * PAGE,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE,
        )
    }
    .expect("mmap")
    .cast::<u8>();
    // SAFETY: the mapping is 3 pages of writable memory owned by this function.
    let mem = unsafe { std::slice::from_raw_parts_mut(base, 3 * PAGE) };
    mem[..size].copy_from_slice(text);
    let code_va = base as u64;
    let tramp_va = code_va + 2 * PAGE as u64;

    let mut sites = Vec::new();
    scan_segment(&mem[..size], code_va, &mut sites);
    let an = Analysis::new(&mem[..size], code_va);
    let (plans, refused) = plan::plan_segment(&an, &sites);
    drop(an);

    entry::set_handler(handler);
    let mut used = 0;
    let mut windows = Vec::new();
    for p in &plans {
        let at = tramp_va + used as u64;
        let probe = plan::trampoline(p, at, 0, tramp::common_entry()).expect("layout");
        let id = entry::register_site(probe.return_addr, SiteKind::Syscall).expect("registry room");
        let t = plan::trampoline(p, at, id, tramp::common_entry()).expect("layout");
        mem[2 * PAGE + used..2 * PAGE + used + t.bytes.len()].copy_from_slice(&t.bytes);
        used += t.bytes.len();
        let w = usize::try_from(p.start - code_va).expect("in buffer");
        mem[w..w + p.len].copy_from_slice(&plan::patch_bytes(p, at).expect("near"));
        windows.push((w, p.len));
    }
    // SAFETY: base..base+3 pages is the mapping created above.
    unsafe {
        mprotect(
            base.cast(),
            3 * PAGE,
            MprotectFlags::READ | MprotectFlags::EXEC,
        )
    }
    .expect("mprotect");
    Patched {
        base,
        original: text.to_vec(),
        windows,
        refused,
        tramp_page: mem[2 * PAGE..].as_mut_ptr(),
        tramp_used: used,
    }
}

/// Calls function `index` of the patched buffer.
fn call(p: &Patched, index: usize, a: u64, b: u64, c: u64) -> i64 {
    let addr = p.func(index);
    // SAFETY: the address is a function of x86_64_sites.S following the C ABI, now mapped
    // executable; its patched sites land in registered trampolines.
    let f: extern "C" fn(u64, u64, u64) -> i64 = unsafe { std::mem::transmute(addr) };
    f(a, b, c)
}

#[test]
fn every_shape_reaches_the_handler_and_returns_its_result() {
    let _g = SERIAL.lock().expect("lock");
    let p = patch_sites();
    let before = HANDLED.load(Ordering::SeqCst);
    assert_eq!(call(&p, 0, 0, 0, 0), getpid(), "wrapper");
    assert_eq!(call(&p, 1, 39, 0, 0), getpid(), "bare");
    assert_eq!(call(&p, 1, FAKE_NR, 5, 7), 22, "bare, arguments passed");
    assert_eq!(
        call(&p, 2, 100, 0, 0),
        getpid() + 100,
        "inside a longer function"
    );
    assert_eq!(
        call(&p, 3, 0, 0, 0),
        getpid(),
        "RIP-relative operand relocated"
    );
    assert_eq!(
        call(&p, 5, 10, 0, 0),
        10 * 6 + 10,
        "caller-saved registers and xmm1 kept"
    );
    assert_eq!(call(&p, 6, 1, 2, 0), 1, "flags kept (1 < 2)");
    assert_eq!(call(&p, 6, 2, 1, 0), 0, "flags kept (2 > 1)");
    assert_eq!(HANDLED.load(Ordering::SeqCst) - before, 8);
}

#[test]
fn a_site_that_is_a_jump_target_is_refused_and_runs_natively() {
    let _g = SERIAL.lock().expect("lock");
    let p = patch_sites();
    let f4 = p.func(4) as u64;
    assert_eq!(p.refused.len(), 1);
    assert!((f4..f4 + 64).contains(&p.refused[0].0.vaddr));
    let before = HANDLED.load(Ordering::SeqCst);
    assert_eq!(call(&p, 4, 39, 0, 0), getpid());
    assert_eq!(
        HANDLED.load(Ordering::SeqCst),
        before,
        "the host kernel served it"
    );
}

#[test]
fn bytes_outside_the_windows_are_untouched() {
    let _g = SERIAL.lock().expect("lock");
    let p = patch_sites();
    assert_eq!(p.windows.len(), 6);
    let mut expect = p.original.clone();
    for &(w, len) in &p.windows {
        assert_eq!(p.code()[w], 0xE9, "window starts with jmp rel32");
        expect[w..w + len].copy_from_slice(&p.code()[w..w + len]);
    }
    assert_eq!(p.code(), &expect[..]);
}

#[test]
fn wrapper_sites_are_classified_with_their_number() {
    let _g = SERIAL.lock().expect("lock");
    let p = patch_sites();
    let mut sites = Vec::new();
    scan_segment(&p.original, 0, &mut sites);
    let classes: Vec<SiteClass> = sites.iter().map(|s| s.class).collect();
    use SiteClass::*;
    assert_eq!(
        classes,
        [
            Wrapper { nr: 39 },
            Bare,
            Wrapper { nr: 39 },
            Bare,
            Bare,
            Wrapper { nr: 39 },
            Bare
        ]
    );
}

#[test]
fn trampolines_and_entry_stub_contain_no_syscall() {
    let _g = SERIAL.lock().expect("lock");
    let p = patch_sites();
    for (name, code) in [
        ("trampolines", p.trampolines()),
        ("entry stub", tramp::common_entry_code()),
    ] {
        assert!(code.len() > 16, "{name} is empty");
        let syscalls = Sweep::new(code)
            .filter(|(_, s)| matches!(s, Step::Insn(i) if i.kind == Kind::Syscall))
            .count();
        assert_eq!(syscalls, 0, "{name}");
    }
}

/// Builds a trampoline for `plan`'s first window at `at` (in a scratch executable page) with
/// a chosen site id, as a guest forging an entry would, and runs it.
fn run_forged(site_id: u32) -> i64 {
    let code = [0x48, 0x89, 0xF8, 0x0F, 0x05, 0xC3]; // mov %rdi,%rax; syscall; ret
    let mut sites = Vec::new();
    // SAFETY: a fresh private anonymous mapping.
    let page = unsafe {
        mmap_anonymous(
            std::ptr::null_mut(),
            PAGE,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE,
        )
    }
    .expect("mmap")
    .cast::<u8>();
    // SAFETY: one writable page owned here.
    let mem = unsafe { std::slice::from_raw_parts_mut(page, PAGE) };
    mem[..code.len()].copy_from_slice(&code);
    let va = page as u64;
    scan_segment(&mem[..code.len()], va, &mut sites);
    let an = Analysis::new(&mem[..code.len()], va);
    let (plans, _) = plan::plan_segment(&an, &sites);
    let t = plan::trampoline(&plans[0], va + 64, site_id, tramp::common_entry()).expect("layout");
    mem[64..64 + t.bytes.len()].copy_from_slice(&t.bytes);
    let w = usize::try_from(plans[0].start - va).expect("in page");
    mem[w..w + plans[0].len].copy_from_slice(&plan::patch_bytes(&plans[0], va + 64).expect("near"));
    // SAFETY: the page mapped above.
    unsafe { mprotect(page.cast(), PAGE, MprotectFlags::READ | MprotectFlags::EXEC) }
        .expect("mprotect");
    // SAFETY: the page holds a C-ABI function whose site enters a trampoline.
    let f: extern "C" fn(u64) -> i64 = unsafe { std::mem::transmute(page) };
    f(39)
}

#[test]
fn forged_site_ids_are_rejected_before_the_handler() {
    let _g = SERIAL.lock().expect("lock");
    // Genuine sites are registered first, so id 0 belongs to another return address.
    let _genuine = patch_sites();
    let (handled, rejected) = (HANDLED.load(Ordering::SeqCst), entry::rejected_count());
    assert_eq!(run_forged(0), ENOSYS, "registered id, wrong return address");
    assert_eq!(run_forged(30_000), ENOSYS, "unregistered id");
    assert_eq!(HANDLED.load(Ordering::SeqCst), handled);
    assert_eq!(entry::rejected_count() - rejected, 2);
}

/// A call marked to run straight (entry::set_host_call) is made on the host by the stub
/// alone for a genuine entry, and still refused for a forged one: the fast path makes the
/// registry's checks too, so it is no gadget.
#[test]
fn straight_host_calls_need_a_genuine_entry_too() {
    let _g = SERIAL.lock().expect("lock");
    let p = patch_sites();
    entry::set_host_call(39, true);
    let (handled, rejected) = (HANDLED.load(Ordering::SeqCst), entry::rejected_count());
    assert_eq!(
        call(&p, 0, 0, 0, 0),
        getpid(),
        "genuine wrapper site, made straight"
    );
    assert_eq!(
        call(&p, 1, 39, 0, 0),
        getpid(),
        "genuine bare site, made straight"
    );
    assert_eq!(
        HANDLED.load(Ordering::SeqCst),
        handled,
        "the handler never ran"
    );
    assert_eq!(run_forged(0), ENOSYS, "registered id, wrong return address");
    assert_eq!(run_forged(30_000), ENOSYS, "unregistered id");
    assert_eq!(entry::rejected_count() - rejected, 2);
    entry::set_host_call(39, false);
    assert_eq!(call(&p, 0, 0, 0, 0), getpid());
    assert_eq!(
        HANDLED.load(Ordering::SeqCst),
        handled + 1,
        "the handler again"
    );
}
