//! Starting a loaded program: the register state the x86-64 psABI gives a process at its
//! entry point.

/// Jumps to `entry` with the stack pointer at `sp` (argc there), rdx zero (no termination
/// function for libc to register) and rbp zero (the outermost frame).
///
/// # Safety
/// `entry` must be the entry point of a program mapped in this process and `sp` a 16-byte
/// aligned initial stack built for it (`initstack::build`). Nothing of the caller's survives:
/// this thread belongs to the program from here on.
pub unsafe fn start_program(entry: u64, sp: u64) -> ! {
    // SAFETY: the caller vouches for entry and sp; the asm never returns.
    unsafe {
        core::arch::asm!(
            "mov rsp, rsi",
            "xor ebp, ebp",
            "xor edx, edx",
            "xor esi, esi",
            "jmp rdi",
            in("rdi") entry,
            in("rsi") sp,
            options(noreturn)
        )
    }
}
