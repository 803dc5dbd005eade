//! Starting a loaded program: the register state the AArch64 Linux ABI gives a process at its
//! entry point.

/// Branches to `entry` with sp at `sp` (argc there), x0 zero (no termination function for
/// libc to register) and the frame and link registers zero (the outermost frame).
///
/// # Safety
/// `entry` must be the entry point of a program mapped in this process and `sp` a 16-byte
/// aligned initial stack built for it (`initstack::build`). Nothing of the caller's survives:
/// this thread belongs to the program from here on.
pub unsafe fn start_program(entry: u64, sp: u64) -> ! {
    // SAFETY: the caller vouches for entry and sp; the asm never returns.
    unsafe {
        core::arch::asm!(
            "mov sp, x10",
            "mov x0, xzr",
            "mov x29, xzr",
            "mov x30, xzr",
            "br x9",
            in("x9") entry,
            in("x10") sp,
            options(noreturn)
        )
    }
}
