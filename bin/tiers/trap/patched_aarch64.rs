//! Calls from the rewrite tier's patched sites on AArch64: the trampoline's entry stub
//! (`kbox_arch::aarch64::tramp`) hands over the saved registers, and they are served as a
//! trapped call's. The ucontext describes the guest as if its `svc` (or the promoted `bl`)
//! had just run: pc after the site, the guest's own stack pointer, x16 and x30 from the
//! trampoline's save. A restarted call goes back one instruction, to the site, which
//! enters the trampoline again.

use kbox_arch::aarch64::insn;
use kbox_arch::aarch64::tramp::{Frame, RESUME_WITH_MASK, Scratch};

use super::*;

/// NZCV's bits in PSTATE.
const NZCV: u64 = 0xF000_0000;

/// Prepares for calls from patched sites ([`on_trampoline`]).
pub fn init_trampolines() {
    prepare_patched_calls();
    kbox_arch::aarch64::tramp::set_frame_handler(on_trampoline);
}

/// A call from a patched site (the trampoline's common entry, on the guest's stack, with
/// the guest's thread pointer and signal mask). Little runs here: the guest's stack may be
/// small. Every signal is blocked, then the call is served on the thread's kbox stack
/// ([`serve_patched`]).
fn on_trampoline(frame: &mut Frame, mut scratch: Scratch) -> u64 {
    let guest_mask = block_for_patched_call();
    // The x16 slot: the trampoline reloads the guest's x16 itself.
    frame.x[16] = guest_mask & !SIGSYS_BIT;
    let Some(slot) = own_slot() else {
        // Not a thread kbox runs guest code on: nothing to serve it with.
        frame.x[0] = (-i64::from(libc::ENOSYS)).cast_unsigned();
        return RESUME_WITH_MASK;
    };
    let mut resume = RESUME_WITH_MASK;
    on_kbox_stack(slot, &mut || {
        resume = serve_patched(slot, frame, &mut scratch, guest_mask);
    });
    resume
}

/// Where the guest goes on after the site: the target of the trampoline's `b` back, two
/// instructions after the return address (`ldp x16, x30`; `add sp`; `b`).
fn after_site(return_addr: u64) -> u64 {
    let at = return_addr + 8;
    // SAFETY: the trampoline the registry accepted this return address for: kbox wrote it
    // and keeps it mapped readable and executable while its program runs.
    let word = unsafe { (at as *const u32).read() };
    insn::b_offset(word).map_or(0, |off| at.wrapping_add_signed(off))
}

/// Serves a patched site's call as a trapped one: the registers go into a ucontext, which
/// [`super::serve`] reads and changes as it does a signal frame's. When the guest resumes
/// after its call the registers go back into the frame (x30 stays the way back into the
/// trampoline) and the stub restores the guest's mask; anywhere else (a new program, a
/// restarted call, rt_sigreturn, a child on a new stack) the ucontext is loaded whole by
/// rt_sigreturn: its address is returned.
///
/// The ucontext is a local of this function, on the kbox stack: once this returns only the
/// stub's register moves and the rt_sigreturn call run on this thread, every signal still
/// blocked, and none of them writes below the stack pointer, so it is intact when the
/// kernel reads it.
#[inline(never)]
fn serve_patched(
    slot: &'static Slot,
    frame: &mut Frame,
    scratch: &mut Scratch,
    guest_mask: u64,
) -> u64 {
    let guest_tp = enter_patched_call(slot);

    let resume_pc = after_site(frame.x[30]);
    let guest_sp = frame.guest_sp();
    let [guest_x16, guest_x30] = *frame.guest_x16_x30();
    // SAFETY: an all-zero SigFrame is valid.
    let mut sf: SigFrame = unsafe { std::mem::zeroed() };
    let uc = &mut sf.uc;
    let m = &mut uc.uc_mcontext;
    m.regs = frame.x;
    m.regs[16] = guest_x16;
    m.regs[30] = guest_x30;
    m.sp = guest_sp;
    m.pc = resume_pc;
    m.pstate = frame.nzcv & NZCV;
    context::set_fp_state(m, frame.fpsr, frame.fpcr, scratch.vregs());
    // SAFETY: the kernel's sigset is the first 8 bytes of libc's.
    unsafe { *(&raw mut uc.uc_sigmask).cast::<u64>() = guest_mask };
    let mut call = Trapped::new(uc, guest_tp, context::SYSCALL_INSN_LEN, slot);
    super::super::serve(&mut call);
    let (guest_tp, tid) = (call.guest_tp, call.tid());
    // The frame is still `sf`, or a copy an exec made.
    let uc = call.into_frame();
    let m = &uc.uc_mcontext;
    let resumes_after_call = m.pc == resume_pc && m.sp == guest_sp;
    if resumes_after_call {
        let back = frame.x[30];
        frame.x = m.regs;
        frame.x[30] = back;
        *frame.guest_x16_x30() = [m.regs[16], m.regs[30]];
        frame.nzcv = m.pstate & NZCV;
        // SAFETY: as above.
        frame.x[16] = unsafe { *(&raw const uc.uc_sigmask).cast::<u64>() } & !SIGSYS_BIT;
    }
    leave_patched_call(
        (slot, tid),
        uc,
        resumes_after_call,
        RESUME_WITH_MASK,
        guest_tp,
    )
}
