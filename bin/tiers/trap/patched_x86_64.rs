//! Calls from the rewrite tier's patched sites on x86-64: the trampoline's entry stub
//! (`kbox_arch::x86_64::tramp`) hands over the saved registers, and they are served as a
//! trapped call's.

use kbox_arch::x86_64::tramp::{AFTER_CALL_LEA, Frame, RESUME_WITH_MASK, SITE_SEQUENCE, Scratch};

use super::context::{reg, set_fpstate, user_segments};
use super::*;

/// Prepares for calls from patched sites ([`on_trampoline`]).
pub fn init_trampolines() {
    prepare_patched_calls();
    kbox_arch::x86_64::tramp::set_frame_handler(on_trampoline);
}

/// General registers in the frame of a patched site and their place in a ucontext.
fn frame_registers(f: &mut Frame) -> [(&mut u64, i32); 16] {
    [
        (&mut f.r8, libc::REG_R8),
        (&mut f.r9, libc::REG_R9),
        (&mut f.r10, libc::REG_R10),
        (&mut f.r11, libc::REG_R11),
        (&mut f.r12, libc::REG_R12),
        (&mut f.r13, libc::REG_R13),
        (&mut f.r14, libc::REG_R14),
        (&mut f.r15, libc::REG_R15),
        (&mut f.rdi, libc::REG_RDI),
        (&mut f.rsi, libc::REG_RSI),
        (&mut f.rbp, libc::REG_RBP),
        (&mut f.rbx, libc::REG_RBX),
        (&mut f.rdx, libc::REG_RDX),
        (&mut f.rax, libc::REG_RAX),
        (&mut f.rcx, libc::REG_RCX),
        (&mut f.rflags, libc::REG_EFL),
    ]
}

/// A call from a patched site (the trampoline's common entry, on the guest's stack, with
/// the guest's thread pointer and signal mask). Little runs here: the guest's stack may be
/// small. Every signal is blocked, then the call is served on the thread's kbox stack
/// ([`serve_patched`]).
fn on_trampoline(frame: &mut Frame, mut scratch: Scratch) -> u64 {
    let guest_mask = block_for_patched_call();
    frame.site = guest_mask & !SIGSYS_BIT;
    let Some(slot) = own_slot() else {
        // Not a thread kbox runs guest code on: nothing to serve it with.
        frame.rax = (-i64::from(libc::ENOSYS)).cast_unsigned();
        return RESUME_WITH_MASK;
    };
    let mut resume = RESUME_WITH_MASK;
    on_kbox_stack(slot, &mut || {
        resume = serve_patched(slot, frame, &mut scratch, guest_mask);
    });
    resume
}

/// Serves a patched site's call as a trapped one: the registers go into a ucontext, which
/// [`super::serve`] reads and changes as it does a signal frame's. When the guest resumes
/// after its call the registers go back into the frame and the stub restores the guest's
/// mask; anywhere else (a new program, a restarted call, rt_sigreturn, a child on a new
/// stack) the ucontext is loaded whole by rt_sigreturn: its address is returned.
///
/// The ucontext is a local of this function, on the kbox stack: once this returns only the
/// stub's register moves and the rt_sigreturn call run on this thread, every signal still
/// blocked, and none of them writes below the stack pointer, so it is intact when the kernel
/// reads it.
#[inline(never)]
fn serve_patched(
    slot: &'static Slot,
    frame: &mut Frame,
    scratch: &mut Scratch,
    guest_mask: u64,
) -> u64 {
    let guest_tp = enter_patched_call(slot);

    let resume_ip = frame.return_addr + AFTER_CALL_LEA;
    let guest_sp = frame.guest_sp();
    let fx = scratch.fxsave();
    // The software-reserved tail of the FXSAVE area tells rt_sigreturn whether more state
    // follows; zero means none.
    fx[464..].fill(0);
    let fx_at = fx.as_mut_ptr() as u64;
    // SAFETY: an all-zero SigFrame is valid.
    let mut sf: SigFrame = unsafe { std::mem::zeroed() };
    let uc = &mut sf.uc;
    for (v, r) in frame_registers(frame) {
        uc.uc_mcontext.gregs[reg(r)] = v.cast_signed();
    }
    uc.uc_mcontext.gregs[reg(libc::REG_RIP)] = resume_ip.cast_signed();
    uc.uc_mcontext.gregs[reg(libc::REG_RSP)] = guest_sp.cast_signed();
    uc.uc_mcontext.gregs[reg(libc::REG_CSGSFS)] = user_segments();
    set_fpstate(uc, fx_at);
    // SAFETY: the kernel's sigset is the first 8 bytes of libc's.
    unsafe { *(&raw mut uc.uc_sigmask).cast::<u64>() = guest_mask };
    let mut call = Trapped::new(
        uc,
        guest_tp,
        i64::try_from(AFTER_CALL_LEA + SITE_SEQUENCE).unwrap_or(0),
        slot,
    );
    super::super::serve(&mut call);
    let (guest_tp, tid) = (call.guest_tp, call.tid());
    // The frame is still `sf`, or a copy an exec made.
    let uc = call.into_frame();
    let g = &uc.uc_mcontext.gregs;
    let resumes_after_call = g[reg(libc::REG_RIP)] == resume_ip.cast_signed()
        && g[reg(libc::REG_RSP)] == guest_sp.cast_signed();
    if resumes_after_call {
        for (v, r) in frame_registers(frame) {
            *v = g[reg(r)].cast_unsigned();
        }
        // SAFETY: as above.
        frame.site = unsafe { *(&raw const uc.uc_sigmask).cast::<u64>() } & !SIGSYS_BIT;
    }
    leave_patched_call(
        (slot, tid),
        uc,
        resumes_after_call,
        RESUME_WITH_MASK,
        guest_tp,
    )
}
