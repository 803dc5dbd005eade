//! An x86-64 signal frame's registers, as the trap tier reads and changes them: the call
//! a trap stopped (rax and six arguments), where the guest resumes, and a fresh start.

/// The register state a new guest thread starts from (a ucontext's general registers).
pub type Registers = [i64; 23];

/// Bytes of the instruction a trapped call was made with (`syscall`).
pub const SYSCALL_INSN_LEN: i64 = 2;

#[repr(C, align(16))]
pub struct SigFrame {
    /// The return address slot a handler's `ret` pops before rt_sigreturn runs.
    _pretcode: u64,
    pub uc: libc::ucontext_t,
    _info: libc::siginfo_t,
}

/// A general register's index in the frame (libc numbers them as i32).
pub fn reg(r: i32) -> usize {
    usize::try_from(r).unwrap_or(0)
}

/// The syscall number and its six arguments.
pub fn call_of(uc: &libc::ucontext_t) -> (u64, [u64; 6]) {
    let g = &uc.uc_mcontext.gregs;
    let r = |i: i32| g[reg(i)].cast_unsigned();
    (
        r(libc::REG_RAX),
        [
            r(libc::REG_RDI),
            r(libc::REG_RSI),
            r(libc::REG_RDX),
            r(libc::REG_R10),
            r(libc::REG_R8),
            r(libc::REG_R9),
        ],
    )
}

pub fn set_result(uc: &mut libc::ucontext_t, v: i64) {
    uc.uc_mcontext.gregs[reg(libc::REG_RAX)] = v;
}

pub fn registers(uc: &libc::ucontext_t) -> Registers {
    uc.uc_mcontext.gregs
}

/// Puts `regs` in a frame kbox built, with the FPU in its initial state.
pub fn set_registers(uc: &mut libc::ucontext_t, regs: &Registers) {
    uc.uc_mcontext.gregs = *regs;
    set_fpstate(uc, 0);
}

/// A new thread's registers from its parent's: clone returns 0 there, on stack `newsp`
/// (0: the parent's).
pub fn thread_child(regs: &mut Registers, newsp: u64) {
    regs[reg(libc::REG_RAX)] = 0;
    if newsp != 0 {
        regs[reg(libc::REG_RSP)] = newsp.cast_signed();
    }
}

pub fn set_ip(uc: &mut libc::ucontext_t, ip: u64) {
    uc.uc_mcontext.gregs[reg(libc::REG_RIP)] = ip.cast_signed();
}

pub fn sp(uc: &libc::ucontext_t) -> u64 {
    uc.uc_mcontext.gregs[reg(libc::REG_RSP)].cast_unsigned()
}

pub fn set_sp(uc: &mut libc::ucontext_t, sp: u64) {
    uc.uc_mcontext.gregs[reg(libc::REG_RSP)] = sp.cast_signed();
}

/// Every general register zero and the FPU in its initial state, as after execve.
pub fn clear_for_exec(uc: &mut libc::ucontext_t) {
    let g = &mut uc.uc_mcontext.gregs;
    for r in [
        libc::REG_R8,
        libc::REG_R9,
        libc::REG_R10,
        libc::REG_R11,
        libc::REG_R12,
        libc::REG_R13,
        libc::REG_R14,
        libc::REG_R15,
        libc::REG_RDI,
        libc::REG_RSI,
        libc::REG_RBP,
        libc::REG_RBX,
        libc::REG_RDX,
        libc::REG_RAX,
        libc::REG_RCX,
    ] {
        g[reg(r)] = 0;
    }
    set_fpstate(uc, 0);
}

/// Makes the guest make call `nr` again when it resumes: its call instruction (sequence)
/// is `back` bytes before where it resumes. Its arguments are where they were (the result
/// goes to rax, which holds the number).
pub fn restart(uc: &mut libc::ucontext_t, nr: u64, back: i64, _first_arg: u64) {
    let g = &mut uc.uc_mcontext.gregs;
    g[reg(libc::REG_RAX)] = nr.cast_signed();
    g[reg(libc::REG_RIP)] -= back;
}

/// The register state a program starts with: everything zero but its entry, its stack and
/// the user code and stack segments.
pub fn initial_registers(entry: u64, sp: u64) -> Registers {
    const EFLAGS_IF: i64 = 0x202;
    let mut g = [0i64; 23];
    g[reg(libc::REG_RIP)] = entry.cast_signed();
    g[reg(libc::REG_RSP)] = sp.cast_signed();
    g[reg(libc::REG_EFL)] = EFLAGS_IF;
    g[reg(libc::REG_CSGSFS)] = user_segments();
    g
}

/// The user code and stack segment selectors, as a frame's CSGSFS slot holds them.
pub fn user_segments() -> i64 {
    const USER_CS: i64 = 0x33;
    const USER_SS: i64 = 0x2b;
    USER_CS | (USER_SS << 48)
}

/// clone's arguments in the kernel's order for this architecture: flags, new stack,
/// parent-tid address, child-tid address, TLS.
pub fn clone_args(args: [u64; 6]) -> [u64; 5] {
    let [flags, newsp, parent_tid, child_tid, tls, _] = args;
    [flags, newsp, parent_tid, child_tid, tls]
}

/// Points a ucontext at the FPU state rt_sigreturn loads (0: the initial state). The
/// pointer follows the 23 general registers in the kernel's sigcontext (libc keeps the
/// field private).
pub fn set_fpstate(uc: &mut libc::ucontext_t, at: u64) {
    const FPSTATE_OFFSET: usize = 23 * 8;
    const _: () = assert!(std::mem::size_of::<libc::mcontext_t>() >= FPSTATE_OFFSET + 8);
    // SAFETY: inside uc_mcontext (asserted), an 8-byte aligned slot of the kernel's layout.
    unsafe {
        (&raw mut uc.uc_mcontext)
            .cast::<u8>()
            .add(FPSTATE_OFFSET)
            .cast::<u64>()
            .write(at);
    }
}
