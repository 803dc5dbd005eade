//! The common entry every AArch64 trampoline calls, and the Rust side it hands off to.
//!
//! On entry x16 holds the site id and x30 the return address into the per-site trampoline
//! (both saved by the trampoline and restored after). The stub saves x0-x30, NZCV, FPSR and
//! FPCR on the guest stack (AArch64 Linux has no red zone). It contains no `svc`: host calls
//! happen in kbox's code after the registry has accepted the site id and return address:
//! for a call that runs on the host as it was made (`entry::set_host_call`), the stub's own
//! fast path checks the registry and branches to `kbox_trap_host_call`, in kbox's text.
//!
//! With a frame handler ([`set_frame_handler`], the rewrite tier's) the stub saves q0-q31
//! below the frame, on the guest's own stack as a signal handler would run, and the
//! handler answers how the guest resumes: [`RESUME_PLAIN`] (the saved registers, as the
//! handler left them), [`RESUME_WITH_MASK`] (the same, after `kbox_trap_restore_mask`
//! installs the signal mask left in the frame's x16 slot, so a signal it unblocks is
//! delivered on the guest's stack with the guest's registers saved) or the address of an
//! rt_sigframe's ucontext, which `kbox_trap_sigreturn` loads whole. Without one (arch/'s
//! own tests) it moves to one of a pool of kbox stacks and calls [`entry`].

use crate::entry::{self, SiteKind, SyscallRequest};
use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

const STACKS: usize = 16;
const STACK_SIZE: usize = 64 * 1024;

static STACK_TOPS: [AtomicUsize; STACKS] = [const { AtomicUsize::new(0) }; STACKS];
static STACKS_READY: AtomicBool = AtomicBool::new(false);

/// Saved state, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct Frame {
    pub x: [u64; 31],
    pub nzcv: u64,
    pub fpsr: u64,
    pub fpcr: u64,
}

/// Resume with the registers in the frame.
pub const RESUME_PLAIN: u64 = 0;
/// Resume with the registers in the frame after installing the mask in its x16 slot
/// (the trampoline reloads the guest's x16 itself).
pub const RESUME_WITH_MASK: u64 = 1;
/// Bytes the stub saves the SIMD registers in, below the frame.
pub const SCRATCH: usize = 512;
/// Where the trampoline keeps the guest's x16 and x30, just above the frame.
const TRAMPOLINE_SAVE: u64 = 32;

impl Frame {
    /// The guest's x16 and x30, which the trampoline saved above the frame (the frame's
    /// own hold the site id and the return address).
    pub fn guest_x16_x30(&mut self) -> &mut [u64; 2] {
        let at = core::ptr::from_mut(self) as u64 + core::mem::size_of::<Self>() as u64;
        // SAFETY: the trampoline stored the two words right above the frame the stub
        // pushed, on the same stack, for the duration of the call.
        unsafe { &mut *(at as *mut [u64; 2]) }
    }

    /// The guest's stack pointer at its site: above the frame and the trampoline's save.
    pub fn guest_sp(&self) -> u64 {
        core::ptr::from_ref(self) as u64 + core::mem::size_of::<Self>() as u64 + TRAMPOLINE_SAVE
    }
}

/// The stub's scratch area: q0-q31 as the guest had them.
#[derive(Debug)]
pub struct Scratch {
    base: *mut u8,
}

impl Scratch {
    /// The SIMD registers the stub saved (and restores on a plain resume), 16 bytes each.
    pub fn vregs(&mut self) -> &mut [u8; SCRATCH] {
        // SAFETY: the stub saved SCRATCH bytes at `base`, 16-byte aligned, for this call.
        unsafe { &mut *self.base.cast::<[u8; SCRATCH]>() }
    }
}

/// Serves a genuine entry with the whole frame; returns how the guest resumes. For a
/// promoted cancel-wrapper call the frame's x8 already holds the number (from x6): the
/// `bl` it replaces would have clobbered x8 anyway.
pub type FrameHandler = fn(&mut Frame, Scratch) -> u64;

static FRAME_HANDLER: AtomicUsize = AtomicUsize::new(0);

/// Installs the handler genuine entries go to instead of [`entry::set_handler`]'s.
pub fn set_frame_handler(h: FrameHandler) {
    FRAME_HANDLER.store(h as usize, Ordering::Release);
}

/// Goes back to [`entry::set_handler`]'s handler on a pool stack (arch/'s tests use both).
pub fn clear_frame_handler() {
    FRAME_HANDLER.store(0, Ordering::Release);
}

/// Called by the stub, on the guest's stack, when a frame handler is installed.
extern "C" fn frame_entry(frame: &mut Frame, scratch: *mut u8) -> u64 {
    let fh = FRAME_HANDLER.load(Ordering::Acquire);
    match entry::admit(frame.x[16], frame.x[30]) {
        Ok((_, kind)) if fh != 0 => {
            if kind == SiteKind::Cancel {
                frame.x[8] = frame.x[6];
            }
            // SAFETY: FRAME_HANDLER only ever holds 0 or a `FrameHandler` stored above.
            let handler: FrameHandler = unsafe { core::mem::transmute::<usize, FrameHandler>(fh) };
            handler(frame, Scratch { base: scratch })
        }
        _ => {
            frame.x[0] = entry::ENOSYS.cast_unsigned();
            RESUME_PLAIN
        }
    }
}

/// Saves (`stp`) or loads (`ldp`) q0-q31 at the stack pointer, 512 bytes: both of the
/// stub's paths keep the SIMD registers the syscall ABI preserves.
macro_rules! simd_regs {
    ($op:literal) => {
        concat!(
            $op,
            " q0, q1, [sp, #0]\n",
            $op,
            " q2, q3, [sp, #32]\n",
            $op,
            " q4, q5, [sp, #64]\n",
            $op,
            " q6, q7, [sp, #96]\n",
            $op,
            " q8, q9, [sp, #128]\n",
            $op,
            " q10, q11, [sp, #160]\n",
            $op,
            " q12, q13, [sp, #192]\n",
            $op,
            " q14, q15, [sp, #224]\n",
            $op,
            " q16, q17, [sp, #256]\n",
            $op,
            " q18, q19, [sp, #288]\n",
            $op,
            " q20, q21, [sp, #320]\n",
            $op,
            " q22, q23, [sp, #352]\n",
            $op,
            " q24, q25, [sp, #384]\n",
            $op,
            " q26, q27, [sp, #416]\n",
            $op,
            " q28, q29, [sp, #448]\n",
            $op,
            " q30, q31, [sp, #480]"
        )
    };
}

global_asm!(
    ".pushsection .text.kbox_aarch64_entry,\"ax\",@progbits",
    ".globl kbox_aarch64_common_entry",
    ".globl kbox_aarch64_common_entry_end",
    ".globl kbox_aarch64_entry_exit",
    ".p2align 4",
    "kbox_aarch64_common_entry:",
    "sub sp, sp, #272",
    "stp x0, x1, [sp, #0]", "stp x2, x3, [sp, #16]", "stp x4, x5, [sp, #32]",
    "stp x6, x7, [sp, #48]", "stp x8, x9, [sp, #64]", "stp x10, x11, [sp, #80]",
    "stp x12, x13, [sp, #96]", "stp x14, x15, [sp, #112]", "stp x16, x17, [sp, #128]",
    "stp x18, x19, [sp, #144]", "stp x20, x21, [sp, #160]", "stp x22, x23, [sp, #176]",
    "stp x24, x25, [sp, #192]", "stp x26, x27, [sp, #208]", "stp x28, x29, [sp, #224]",
    "mrs x9, nzcv",
    "stp x30, x9, [sp, #240]",
    "mrs x10, fpsr",
    "mrs x11, fpcr",
    "stp x10, x11, [sp, #256]",
    "mov x19, sp",
    // Fast path: a genuine entry (the registry's checks, as entry::validate makes them) of
    // a plain svc site for a call that runs on the host as made (HOST_CALLS) goes straight
    // to kbox_trap_host_call, with no Rust code and no SIMD state to keep. x0-x8 are still
    // the guest's.
    "cmp x16, #{max_sites}",
    "b.hs 8f",
    "adrp x9, {return_addrs}",
    "add x9, x9, :lo12:{return_addrs}",
    "add x9, x9, x16, lsl #3",
    // Acquire: the kind was stored before the return address was published.
    "ldar x9, [x9]",
    "cbz x9, 8f",
    "cmp x9, x30",
    "b.ne 8f",
    "adrp x9, {kinds}",
    "add x9, x9, :lo12:{kinds}",
    "ldrb w9, [x9, x16]",
    "cmp w9, #{plain_kind}",
    "b.ne 8f",
    "cmp x8, #{host_calls_len}",
    "b.hs 8f",
    "adrp x9, {host_calls}",
    "add x9, x9, :lo12:{host_calls}",
    "ldrb w9, [x9, x8]",
    // A plain branch: kbox_trap_host_call is in another section, maybe beyond cbnz's 1 MiB.
    "cbz w9, 8f",
    "b kbox_trap_host_call",
    "8:",
    "adrp x9, {handler}",
    "ldr x9, [x9, :lo12:{handler}]",
    "cbnz x9, 6f",
    "2:",
    "adrp x20, {tops}",
    "add x20, x20, :lo12:{tops}",
    "mov x21, #{n}",
    "3:",
    // Take a stack: exclusively swap a non-zero slot with zero.
    "ldaxr x9, [x20]",
    "cbz x9, 5f",
    "stlxr w10, xzr, [x20]",
    "cbnz w10, 3b",
    "b 4f",
    "5:",
    "clrex",
    "add x20, x20, #8",
    "subs x21, x21, #1",
    "b.ne 3b",
    "yield",
    "b 2b",
    "4:",
    "mov x22, x9",
    "sub x9, x9, #512",
    "mov sp, x9",
    simd_regs!("stp"),
    "mov x0, x19",
    "bl {entry}",
    simd_regs!("ldp"),
    "stlr x22, [x20]",
    "mov sp, x19",
    "ldp x10, x11, [sp, #256]",
    "msr fpsr, x10",
    "msr fpcr, x11",
    "ldp x30, x9, [sp, #240]",
    "msr nzcv, x9",
    "ldp x0, x1, [sp, #0]", "ldp x2, x3, [sp, #16]", "ldp x4, x5, [sp, #32]",
    "ldp x6, x7, [sp, #48]", "ldp x8, x9, [sp, #64]", "ldp x10, x11, [sp, #80]",
    "ldp x12, x13, [sp, #96]", "ldp x14, x15, [sp, #112]", "ldp x16, x17, [sp, #128]",
    "ldp x18, x19, [sp, #144]", "ldp x20, x21, [sp, #160]", "ldp x22, x23, [sp, #176]",
    "ldp x24, x25, [sp, #192]", "ldp x26, x27, [sp, #208]", "ldp x28, x29, [sp, #224]",
    "add sp, sp, #272",
    "ret",
    // The frame handler's path, all on the guest's stack.
    "6:",
    "sub sp, sp, #{scratch}",
    simd_regs!("stp"),
    "mov x0, x19",
    "mov x1, sp",
    "bl {frame_entry}",
    "cmp x0, #{with_mask}",
    "b.hi 7f",
    simd_regs!("ldp"),
    "mov sp, x19",
    "cbz x0, kbox_aarch64_entry_exit",
    "b kbox_trap_restore_mask",
    "kbox_aarch64_entry_exit:",
    "ldp x10, x11, [sp, #256]",
    "msr fpsr, x10",
    "msr fpcr, x11",
    "ldp x30, x9, [sp, #240]",
    "msr nzcv, x9",
    "ldp x0, x1, [sp, #0]", "ldp x2, x3, [sp, #16]", "ldp x4, x5, [sp, #32]",
    "ldp x6, x7, [sp, #48]", "ldp x8, x9, [sp, #64]", "ldp x10, x11, [sp, #80]",
    "ldp x12, x13, [sp, #96]", "ldp x14, x15, [sp, #112]", "ldp x16, x17, [sp, #128]",
    "ldp x18, x19, [sp, #144]", "ldp x20, x21, [sp, #160]", "ldp x22, x23, [sp, #176]",
    "ldp x24, x25, [sp, #192]", "ldp x26, x27, [sp, #208]", "ldp x28, x29, [sp, #224]",
    "add sp, sp, #272",
    "ret",
    // x0 is a ucontext the handler left below the stack pointer; nothing here writes
    // there. rt_sigreturn wants the stack pointer at the rt_sigframe (siginfo first).
    "7:",
    "sub x0, x0, #{siginfo}",
    "mov sp, x0",
    "b kbox_trap_sigreturn",
    "kbox_aarch64_common_entry_end:",
    ".popsection",
    tops = sym STACK_TOPS,
    n = const STACKS,
    entry = sym entry,
    handler = sym FRAME_HANDLER,
    frame_entry = sym frame_entry,
    scratch = const SCRATCH,
    with_mask = const RESUME_WITH_MASK,
    siginfo = const super::trap::SIGINFO_SIZE,
    max_sites = const entry::MAX_SITES,
    return_addrs = sym entry::RETURN_ADDRS,
    kinds = sym entry::KINDS,
    plain_kind = const SiteKind::Syscall as u8,
    host_calls = sym entry::HOST_CALLS,
    host_calls_len = const entry::HOST_CALLS_LEN,
);

const _: () = assert!(
    entry::MAX_SITES == 8 << 12 && entry::HOST_CALLS_LEN < 4096,
    "the fast path compares with immediates AArch64 can encode"
);

const _: () = assert!(core::mem::size_of::<Frame>() == 272);

unsafe extern "C" {
    fn kbox_aarch64_common_entry();
    fn kbox_aarch64_common_entry_end();
}

extern "C" fn entry(frame: &mut Frame) {
    let x = frame.x;
    let result = entry::dispatch(x[16], x[30], |site, kind| SyscallRequest {
        nr: if kind == SiteKind::Cancel { x[6] } else { x[8] },
        args: [x[0], x[1], x[2], x[3], x[4], x[5]],
        site,
    });
    frame.x[0] = result.unwrap_or(entry::ENOSYS).cast_unsigned();
}

/// Address trampolines call (the literal in each trampoline).
pub fn common_entry() -> u64 {
    kbox_aarch64_common_entry as *const () as u64
}

/// The stub's code bytes, for checking that it holds no `svc`.
pub fn common_entry_code() -> &'static [u8] {
    let start = kbox_aarch64_common_entry as *const () as usize;
    let end = kbox_aarch64_common_entry_end as *const () as usize;
    // SAFETY: both symbols delimit the stub in the same section of this binary's text, which
    // is mapped readable for the life of the process.
    unsafe { core::slice::from_raw_parts(start as *const u8, end - start) }
}

/// Allocates the kbox stacks once; must run before any trampoline is entered.
pub fn init_stacks() {
    if STACKS_READY.swap(true, Ordering::AcqRel) {
        return;
    }
    for top in &STACK_TOPS {
        let stack: &'static mut [u128] = alloc::vec![0u128; STACK_SIZE / 16].leak();
        top.store(stack.as_mut_ptr_range().end as usize, Ordering::Release);
    }
}

/// Makes freshly written code visible to instruction fetch (the I- and D-caches are not
/// coherent on AArch64): clean to the point of unification, then invalidate.
pub fn sync_icache(code: &[u8]) {
    let ctr: u64;
    // SAFETY: CTR_EL0 is readable from EL0 on Linux and reading it has no side effects.
    unsafe { core::arch::asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack)) };
    let dline = 4usize << ((ctr >> 16) & 0xF);
    let iline = 4usize << (ctr & 0xF);
    let start = code.as_ptr() as usize;
    let end = start + code.len();
    for line in (start & !(dline - 1)..end).step_by(dline) {
        // SAFETY: cleaning a cache line of memory this process can read changes no data.
        unsafe { core::arch::asm!("dc cvau, {}", in(reg) line, options(nostack)) };
    }
    // SAFETY: a barrier has no memory-safety preconditions.
    unsafe { core::arch::asm!("dsb ish", options(nostack)) };
    for line in (start & !(iline - 1)..end).step_by(iline) {
        // SAFETY: invalidating instruction-cache lines only forces a refetch.
        unsafe { core::arch::asm!("ic ivau, {}", in(reg) line, options(nostack)) };
    }
    // SAFETY: barriers have no memory-safety preconditions.
    unsafe { core::arch::asm!("dsb ish", "isb", options(nostack)) };
}
