//! An AArch64 signal frame's registers, as the trap tier reads and changes them: the call
//! a trap stopped (x8 and x0-x5), where the guest resumes, and a fresh start.
//!
//! rt_sigreturn on AArch64 insists on an FP/SIMD record in the frame's reserved area, so a
//! frame kbox builds carries one (the kernel's own frames always do).

/// The register state a new guest thread starts from (a whole mcontext: its FP/SIMD record
/// too).
pub type Registers = libc::mcontext_t;

/// Bytes of the instruction a trapped call was made with (`svc #0`).
pub const SYSCALL_INSN_LEN: i64 = 4;

#[repr(C, align(16))]
pub struct SigFrame {
    _info: libc::siginfo_t,
    pub uc: libc::ucontext_t,
}

// rt_sigreturn finds the frame at the stack pointer, the ucontext after the siginfo.
const _: () = assert!(std::mem::offset_of!(SigFrame, uc) as u64 == kbox_arch::trap::SIGINFO_SIZE);

/// Where the reserved area (the records) starts in the kernel's sigcontext: after
/// fault_address, x0-x30, sp, pc and pstate, 16-byte aligned. libc keeps the field private.
const RESERVED_OFFSET: usize = 288;
const _: () = assert!(std::mem::size_of::<libc::mcontext_t>() == RESERVED_OFFSET + 4096);
/// The FP/SIMD record's header: `struct fpsimd_context`'s magic and size (header, fpsr,
/// fpcr, 32 128-bit registers).
const FPSIMD_MAGIC: u32 = 0x4650_8001;
const FPSIMD_SIZE: usize = 8 + 4 + 4 + 32 * 16;

/// The syscall number and its six arguments.
pub fn call_of(uc: &libc::ucontext_t) -> (u64, [u64; 6]) {
    let x = &uc.uc_mcontext.regs;
    (x[8], [x[0], x[1], x[2], x[3], x[4], x[5]])
}

pub fn set_result(uc: &mut libc::ucontext_t, v: i64) {
    uc.uc_mcontext.regs[0] = v.cast_unsigned();
}

pub fn registers(uc: &libc::ucontext_t) -> Registers {
    uc.uc_mcontext
}

/// Puts `regs` in a frame kbox built (their FP/SIMD record included).
pub fn set_registers(uc: &mut libc::ucontext_t, regs: &Registers) {
    uc.uc_mcontext = *regs;
}

/// A new thread's registers from its parent's: clone returns 0 there, on stack `newsp`
/// (0: the parent's).
pub fn thread_child(regs: &mut Registers, newsp: u64) {
    regs.regs[0] = 0;
    if newsp != 0 {
        regs.sp = newsp;
    }
}

pub fn set_ip(uc: &mut libc::ucontext_t, ip: u64) {
    uc.uc_mcontext.pc = ip;
}

pub fn sp(uc: &libc::ucontext_t) -> u64 {
    uc.uc_mcontext.sp
}

pub fn set_sp(uc: &mut libc::ucontext_t, sp: u64) {
    uc.uc_mcontext.sp = sp;
}

/// Every general register zero and the FP/SIMD registers in their initial state, as after
/// execve.
pub fn clear_for_exec(uc: &mut libc::ucontext_t) {
    uc.uc_mcontext.regs = [0; 31];
    uc.uc_mcontext.pstate = 0;
    initial_fp_state(&mut uc.uc_mcontext);
}

/// Makes the guest make call `nr` again when it resumes: its `svc` is `back` bytes before
/// where it resumes. x0 is both the first argument and the result, so it gets the
/// argument back.
pub fn restart(uc: &mut libc::ucontext_t, nr: u64, back: i64, first_arg: u64) {
    let m = &mut uc.uc_mcontext;
    m.regs[8] = nr;
    m.regs[0] = first_arg;
    m.pc = m.pc.wrapping_sub(back.cast_unsigned());
}

/// The register state a program starts with: everything zero but its entry and its stack.
pub fn initial_registers(entry: u64, sp: u64) -> Registers {
    // SAFETY: an all-zero mcontext is valid (plain integers).
    let mut m: libc::mcontext_t = unsafe { std::mem::zeroed() };
    m.pc = entry;
    m.sp = sp;
    initial_fp_state(&mut m);
    m
}

/// clone's arguments in the kernel's order for this architecture (AArch64 passes the TLS
/// before the child-tid address): flags, new stack, parent-tid address, child-tid address,
/// TLS.
pub fn clone_args(args: [u64; 6]) -> [u64; 5] {
    let [flags, newsp, parent_tid, tls, child_tid, _] = args;
    [flags, newsp, parent_tid, child_tid, tls]
}

/// The reserved area holds one FP/SIMD record with these registers (32 of 16 bytes), then
/// the terminating empty record.
pub fn set_fp_state(m: &mut libc::mcontext_t, fpsr: u64, fpcr: u64, vregs: &[u8; 512]) {
    let mut record = [0u8; FPSIMD_SIZE + 8];
    record[..4].copy_from_slice(&FPSIMD_MAGIC.to_ne_bytes());
    record[4..8].copy_from_slice(&u32::try_from(FPSIMD_SIZE).unwrap_or(0).to_ne_bytes());
    record[8..12].copy_from_slice(&u32::try_from(fpsr & 0xffff_ffff).unwrap_or(0).to_ne_bytes());
    record[12..16].copy_from_slice(&u32::try_from(fpcr & 0xffff_ffff).unwrap_or(0).to_ne_bytes());
    record[16..FPSIMD_SIZE].copy_from_slice(vregs);
    write_records(m, &record);
}

/// The reserved area holds one zeroed FP/SIMD record (FPSR and FPCR zero, as a new
/// process starts), then the terminating empty record.
fn initial_fp_state(m: &mut libc::mcontext_t) {
    set_fp_state(m, 0, 0, &[0; 512]);
}

/// Writes `record` (records and their terminator) at the start of the reserved area.
fn write_records(m: &mut libc::mcontext_t, record: &[u8; FPSIMD_SIZE + 8]) {
    // SAFETY: the reserved area starts RESERVED_OFFSET bytes into the mcontext (asserted
    // above) and is 4096 bytes long, more than the record and its terminator.
    unsafe {
        std::ptr::copy_nonoverlapping(
            record.as_ptr(),
            (&raw mut *m).cast::<u8>().add(RESERVED_OFFSET),
            record.len(),
        );
    }
}
