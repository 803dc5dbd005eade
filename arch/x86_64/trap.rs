//! What the trap tier needs of x86-64 below Rust: the thread pointer (FS base) that kbox and
//! the guest each keep for their own TLS, a raw syscall that touches no TLS (errno lives
//! there), and the stub that performs a guest's rt_sigreturn on the guest's own stack.

use core::arch::{asm, global_asm};

const SYS_ARCH_PRCTL: u64 = 158;
const SYS_GETTID: u64 = 186;
const ARCH_SET_FS: u64 = 0x1002;
const ARCH_GET_FS: u64 = 0x1003;

// rt_sigreturn must run with the stack pointer the guest's signal handler returned with (its
// frame is there): the trap handler points the interrupted context here and returns, so the
// guest's own registers, stack included, are in place when the syscall runs. It never
// returns; ud2 makes a bug loud.
global_asm!(
    ".pushsection .text.kbox_trap,\"ax\",@progbits",
    ".globl kbox_trap_sigreturn",
    ".type kbox_trap_sigreturn,@function",
    "kbox_trap_sigreturn:",
    "mov eax, 15",
    "syscall",
    "ud2",
    ".size kbox_trap_sigreturn, . - kbox_trap_sigreturn",
    ".popsection",
);

// The tail of a trampoline entry whose frame handler asked for the guest's signal mask:
// the stack pointer is at the saved registers (tramp::Frame) on the guest's stack, the mask
// in the frame's site slot. A signal the mask unblocks is delivered right here, on the
// guest's stack, with the guest's registers saved above it; nothing of kbox's is left
// running. The clobbered registers are all reloaded from the frame afterwards.
global_asm!(
    ".pushsection .text.kbox_trap,\"ax\",@progbits",
    ".globl kbox_trap_restore_mask",
    ".type kbox_trap_restore_mask,@function",
    "kbox_trap_restore_mask:",
    "mov eax, 14",
    "mov edi, 2",
    "lea rsi, [rsp + 136]",
    "xor edx, edx",
    "mov r10d, 8",
    "syscall",
    "jmp kbox_x86_64_entry_exit",
    ".size kbox_trap_restore_mask, . - kbox_trap_restore_mask",
    ".popsection",
);

// The tail of a trampoline entry whose call runs on the host as the guest made it: the
// stack pointer is at the saved registers (tramp::Frame, offsets asserted there), nothing
// of the guest's state was changed. A signal during the call is delivered here, on the
// guest's stack, as natively; SA_RESTART re-runs this syscall instruction with the same
// registers.
global_asm!(
    ".pushsection .text.kbox_trap,\"ax\",@progbits",
    ".globl kbox_trap_host_call",
    ".type kbox_trap_host_call,@function",
    "kbox_trap_host_call:",
    "mov rax, [rsp + 112]",
    "mov rdi, [rsp + 64]",
    "mov rsi, [rsp + 72]",
    "mov rdx, [rsp + 96]",
    "mov r10, [rsp + 40]",
    "mov r8, [rsp + 56]",
    "mov r9, [rsp + 48]",
    "syscall",
    "mov [rsp + 112], rax",
    "jmp kbox_x86_64_entry_exit",
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
    // SAFETY: the caller vouches for the call; the kernel clobbers rcx and r11 only.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") nr.cast_signed() => ret,
            in("rdi") args[0],
            in("rsi") args[1],
            in("rdx") args[2],
            in("r10") args[3],
            in("r8") args[4],
            in("r9") args[5],
            lateout("rcx") _,
            lateout("r11") _,
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

/// The FS base; `fsgsbase` says the CPU and kernel allow rdfsbase (AT_HWCAP2 bit 1).
#[inline(always)]
pub fn thread_pointer(fsgsbase: bool) -> u64 {
    let mut v: u64 = 0;
    if fsgsbase {
        // SAFETY: the caller checked the kernel enabled FSGSBASE for user mode.
        unsafe { asm!("rdfsbase {}", out(reg) v, options(nostack, nomem, preserves_flags)) };
    } else {
        // SAFETY: ARCH_GET_FS writes 8 bytes to the address given, a local here.
        unsafe {
            raw_syscall(SYS_ARCH_PRCTL, [ARCH_GET_FS, &raw mut v as u64, 0, 0, 0, 0]);
        }
    }
    v
}

/// Sets the FS base.
///
/// # Safety
/// Everything that runs on this thread afterwards uses `v` as its TLS: it must be the thread
/// pointer of the code that runs next.
#[inline(always)]
pub unsafe fn set_thread_pointer(fsgsbase: bool, v: u64) {
    if fsgsbase {
        // SAFETY: as the caller vouches; FSGSBASE is enabled.
        unsafe { asm!("wrfsbase {}", in(reg) v, options(nostack, nomem, preserves_flags)) };
    } else {
        // SAFETY: as the caller vouches.
        unsafe {
            raw_syscall(SYS_ARCH_PRCTL, [ARCH_SET_FS, v, 0, 0, 0, 0]);
        }
    }
}

/// Loads a complete register state: sets the thread pointer to `tp`, points the stack at
/// `ucontext` (an rt_sigframe's ucontext, with the 8-byte return slot before it) and runs
/// rt_sigreturn, which restores every general register, flags, the signal mask and (from
/// the frame's FP pointer, or the initial state when it is null) the FPU.
///
/// # Safety
/// `ucontext` must be a valid, 16-byte aligned x86-64 `ucontext_t` that stays readable until
/// the syscall has read it, describing code that may run on this thread with `tp` as its
/// thread pointer. Nothing of the caller survives.
pub unsafe fn resume_context(ucontext: u64, tp: u64, fsgsbase: bool) -> ! {
    // SAFETY: as the caller vouches.
    unsafe {
        set_thread_pointer(fsgsbase, tp);
        asm!(
            "mov rsp, {uc}",
            "mov eax, 15",
            "syscall",
            "ud2",
            uc = in(reg) ucontext,
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
    // SAFETY: as the caller vouches; r12 is callee-saved, so `f` preserves the way back.
    unsafe {
        asm!(
            "mov r12, rsp",
            "mov rsp, {top}",
            "and rsp, -16",
            "call {f}",
            "mov rsp, r12",
            top = in(reg) stack_top,
            f = in(reg) f,
            in("rdi") arg,
            out("r12") _,
            clobber_abi("C"),
        );
    }
}

/// The notification gadget's bytes: `syscall; ret`. The trap tier places them in a region
/// its gate filter marks for notification, so a call made from there goes to kbox's
/// supervisor instead of the host.
pub const NOTIFY_GADGET: [u8; 3] = [0x0f, 0x05, 0xc3];

/// Makes syscall `nr` from the gadget at `gadget` (see [`NOTIFY_GADGET`]).
///
/// # Safety
/// `gadget` must hold [`NOTIFY_GADGET`] in executable memory, and `args` be valid for `nr`.
#[inline(always)]
pub unsafe fn call_gadget(gadget: u64, nr: u64, args: [u64; 6]) -> i64 {
    let ret: i64;
    // SAFETY: as the caller vouches; the gadget clobbers what a syscall does, plus the
    // return address it pops (below the red zone: `call` pushes it where a call would).
    unsafe {
        asm!(
            "sub rsp, 128",
            "call {g}",
            "add rsp, 128",
            g = in(reg) gadget,
            inlateout("rax") nr.cast_signed() => ret,
            in("rdi") args[0],
            in("rsi") args[1],
            in("rdx") args[2],
            in("r10") args[3],
            in("r8") args[4],
            in("r9") args[5],
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret
}
