//! What the trap tier needs of AArch64 below Rust: the thread pointer (TPIDR_EL0) that kbox
//! and the guest each keep for their own TLS, a raw syscall that touches no TLS (errno lives
//! there), the stub that performs a guest's rt_sigreturn on the guest's own stack, and the
//! notification gadget. The same interface as `x86_64::trap`, so the tier's code is shared.
//!
//! Unlike x86-64's FS base, the guest sets its thread pointer without a syscall (`msr
//! tpidr_el0`), so the tier cannot record it when it changes: it reads it when a call
//! traps and writes it back before the guest resumes.

use core::arch::{asm, global_asm};

const SYS_GETTID: u64 = 178;

// rt_sigreturn must run with the stack pointer at the guest's signal frame: the trap
// handler points the interrupted context here and returns, so the guest's own registers,
// stack included, are in place when the syscall runs. It never returns; brk makes a bug
// loud.
global_asm!(
    ".pushsection .text.kbox_trap,\"ax\",@progbits",
    ".globl kbox_trap_sigreturn",
    ".type kbox_trap_sigreturn,%function",
    "kbox_trap_sigreturn:",
    "mov x8, #139",
    "svc #0",
    "brk #0x3e8",
    ".size kbox_trap_sigreturn, . - kbox_trap_sigreturn",
    ".popsection",
);

// The tail of a trampoline entry whose frame handler asked for the guest's signal mask:
// the stack pointer is at the saved registers (tramp::Frame) on the guest's stack, the mask
// in the frame's x16 slot. A signal the mask unblocks is delivered right here, on the
// guest's stack, with the guest's registers saved above it; nothing of kbox's is left
// running. The clobbered registers are all reloaded from the frame afterwards.
global_asm!(
    ".pushsection .text.kbox_trap,\"ax\",@progbits",
    ".globl kbox_trap_restore_mask",
    ".type kbox_trap_restore_mask,%function",
    "kbox_trap_restore_mask:",
    "mov x8, #135",
    "mov x0, #2",
    "add x1, sp, #128",
    "mov x2, #0",
    "mov x3, #8",
    "svc #0",
    "b kbox_aarch64_entry_exit",
    ".size kbox_trap_restore_mask, . - kbox_trap_restore_mask",
    ".popsection",
);

// The tail of a trampoline entry whose call runs on the host as the guest made it: the
// stack pointer is at the saved registers (tramp::Frame), nothing of the guest's state was
// changed. A signal during the call is delivered here, on the guest's stack, as natively;
// SA_RESTART re-runs this svc with x0 as it was (the kernel keeps the original x0).
global_asm!(
    ".pushsection .text.kbox_trap,\"ax\",@progbits",
    ".globl kbox_trap_host_call",
    ".type kbox_trap_host_call,%function",
    "kbox_trap_host_call:",
    "ldp x0, x1, [sp, #0]",
    "ldp x2, x3, [sp, #16]",
    "ldp x4, x5, [sp, #32]",
    "ldr x8, [sp, #64]",
    "svc #0",
    "str x0, [sp, #0]",
    "b kbox_aarch64_entry_exit",
    ".size kbox_trap_host_call, . - kbox_trap_host_call",
    ".popsection",
);

unsafe extern "C" {
    fn kbox_trap_sigreturn();
}

/// The address of the rt_sigreturn stub.
pub fn sigreturn_stub() -> u64 {
    kbox_trap_sigreturn as *const () as u64
}

/// A syscall with no libc in the way (no errno, no TLS): the raw return value.
///
/// # Safety
/// As the syscall itself: `args` must be valid for `nr`.
#[inline(always)]
pub unsafe fn raw_syscall(nr: u64, args: [u64; 6]) -> i64 {
    let ret: i64;
    // SAFETY: the caller vouches for the call; the kernel clobbers x0 only.
    unsafe {
        asm!(
            "svc #0",
            in("x8") nr,
            inlateout("x0") args[0].cast_signed() => ret,
            in("x1") args[1],
            in("x2") args[2],
            in("x3") args[3],
            in("x4") args[4],
            in("x5") args[5],
            options(nostack)
        );
    }
    ret
}

/// This thread's id, without libc.
#[inline(always)]
pub fn gettid() -> u32 {
    // SAFETY: gettid takes no arguments and cannot fail.
    let tid = unsafe { raw_syscall(SYS_GETTID, [0; 6]) };
    u32::try_from(tid).unwrap_or(0)
}

/// TPIDR_EL0. (`_fast` is x86-64's question whether a syscall is needed; never here.)
#[inline(always)]
pub fn thread_pointer(_fast: bool) -> u64 {
    let v: u64;
    // SAFETY: reading TPIDR_EL0 from EL0 has no side effects.
    unsafe { asm!("mrs {}, tpidr_el0", out(reg) v, options(nostack, nomem, preserves_flags)) };
    v
}

/// Sets TPIDR_EL0.
///
/// # Safety
/// Everything that runs on this thread afterwards uses `v` as its TLS: it must be the thread
/// pointer of the code that runs next.
#[inline(always)]
pub unsafe fn set_thread_pointer(_fast: bool, v: u64) {
    // SAFETY: as the caller vouches.
    unsafe { asm!("msr tpidr_el0, {}", in(reg) v, options(nostack, nomem, preserves_flags)) };
}

/// Bytes of the kernel's siginfo, which comes before the ucontext in an rt_sigframe.
pub const SIGINFO_SIZE: u64 = 128;

/// Loads a complete register state: sets the thread pointer to `tp`, points the stack at
/// the rt_sigframe that holds `ucontext` ([`SIGINFO_SIZE`] bytes before it) and runs
/// rt_sigreturn, which restores every general register, the signal mask and the FP/SIMD
/// registers (from the frame's fpsimd record, which the kernel requires).
///
/// # Safety
/// `ucontext` must be a valid AArch64 `ucontext_t` inside a 16-byte aligned rt_sigframe
/// that stays readable until the syscall has read it, describing code that may run on this
/// thread with `tp` as its thread pointer. Nothing of the caller survives.
pub unsafe fn resume_context(ucontext: u64, tp: u64, _fast: bool) -> ! {
    // SAFETY: as the caller vouches.
    unsafe {
        set_thread_pointer(false, tp);
        asm!(
            "mov sp, {frame}",
            "mov x8, #139",
            "svc #0",
            "brk #0x3e8",
            frame = in(reg) ucontext - SIGINFO_SIZE,
            options(noreturn)
        )
    }
}

/// Calls `f(arg)` with the stack pointer at `stack_top` (16-byte aligned here), and returns
/// to the caller's stack afterwards.
///
/// # Safety
/// `stack_top` must be the top of writable memory that nothing else uses while `f` runs
/// and is large enough for it.
pub unsafe fn call_on_stack(
    stack_top: u64,
    f: extern "C" fn(*mut core::ffi::c_void),
    arg: *mut core::ffi::c_void,
) {
    // SAFETY: as the caller vouches; x20 is callee-saved, so `f` preserves the way back.
    unsafe {
        asm!(
            "mov x20, sp",
            "and x9, x9, #0xfffffffffffffff0",
            "mov sp, x9",
            "blr x10",
            "mov sp, x20",
            in("x9") stack_top,
            in("x10") f,
            in("x0") arg,
            out("x20") _,
            clobber_abi("C"),
        );
    }
}

/// The notification gadget's bytes: `svc #0; ret`. The trap tier places them in a region
/// its gate filter marks for notification, so a call made from there goes to kbox's
/// supervisor instead of the host.
pub const NOTIFY_GADGET: [u8; 8] = [0x01, 0x00, 0x00, 0xd4, 0xc0, 0x03, 0x5f, 0xd6];

/// Makes syscall `nr` from the gadget at `gadget` (see [`NOTIFY_GADGET`]).
///
/// # Safety
/// `gadget` must hold [`NOTIFY_GADGET`] in executable memory, and `args` be valid for `nr`.
#[inline(always)]
pub unsafe fn call_gadget(gadget: u64, nr: u64, args: [u64; 6]) -> i64 {
    let ret: i64;
    // SAFETY: as the caller vouches; the gadget clobbers what a syscall does, plus the
    // link register its call sets.
    unsafe {
        asm!(
            "blr {g}",
            g = in(reg) gadget,
            in("x8") nr,
            inlateout("x0") args[0].cast_signed() => ret,
            in("x1") args[1],
            in("x2") args[2],
            in("x3") args[3],
            in("x4") args[4],
            in("x5") args[5],
            lateout("x30") _,
        );
    }
    ret
}
