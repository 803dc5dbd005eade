//! The common entry every x86-64 trampoline calls, and the Rust side it hands off to.
//!
//! On entry the guest stack holds (from rsp up): the return address into the per-site
//! trampoline, the pushed site id, then 128 bytes kept free for the guest's red zone. The
//! stub saves every general register and rflags there, reserves a scratch area below them
//! (64-byte aligned), saves the x87/SSE state there (the syscall ABI preserves all of
//! it; Rust code may use xmm0-15), and calls [`entry`] on the guest's own stack, as a signal
//! handler would run. It contains no `syscall`: host calls happen in kbox's Rust code, after
//! the registry has accepted the site id and return address.
//!
//! A frame handler ([`set_frame_handler`]) answers how the guest resumes:
//! [`RESUME_PLAIN`] (the saved registers, as the handler left them), [`RESUME_HOST_CALL`]
//! (the call made on the host from kbox's text, then those registers), [`RESUME_WITH_MASK`]
//! (the same, after the signal mask in the frame's `site` slot is installed by
//! `kbox_trap_restore_mask`, so a signal it unblocks is delivered on the guest's stack with
//! the guest's registers saved) or the address of an rt_sigframe's ucontext in the scratch
//! area, which `kbox_trap_sigreturn` loads whole (another place to resume, new registers).

use crate::entry::{self, SiteKind, SyscallRequest};
use core::arch::global_asm;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Bytes of scratch the stub reserves below the saved registers: the FXSAVE area. It is on
/// the guest's stack, which may be small.
pub const SCRATCH: usize = FXSAVE_LEN;
/// The FXSAVE area at the scratch area's start.
pub const FXSAVE_LEN: usize = 512;
/// Resume with the registers in the frame.
pub const RESUME_PLAIN: u64 = 0;
/// Resume with the registers in the frame after installing the mask in its `site` slot.
pub const RESUME_WITH_MASK: u64 = 1;
/// Make the call on the host as the frame's registers ask (`kbox_trap_host_call`, in
/// kbox's text), its result in rax, and resume: nothing else changed (no mask, no thread
/// pointer), so the call is made exactly as the guest made it.
pub const RESUME_HOST_CALL: u64 = 2;

/// Registers in the order the stub pushes them (lowest address first).
#[repr(C)]
#[derive(Debug)]
pub struct Frame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rax: u64,
    pub rflags: u64,
    pub return_addr: u64,
    /// The site id the trampoline pushed; a frame handler may leave a signal mask here
    /// for [`RESUME_WITH_MASK`].
    pub site: u64,
}

impl Frame {
    /// The guest's stack pointer at its syscall instruction: above the frame and the red zone
    /// the trampoline stepped over.
    pub fn guest_sp(&self) -> u64 {
        core::ptr::from_ref(self) as u64 + core::mem::size_of::<Self>() as u64 + 128
    }
}

/// Where the trampoline resumes after its call: past its `lea 136(%rsp),%rsp`, the guest's
/// stack pointer is as it was at the syscall (what "after the syscall" means for a site).
pub const AFTER_CALL_LEA: u64 = 8;
/// From the return address back to the trampoline's first instruction for the site (its
/// `lea -128(%rsp),%rsp`): where a restarted call enters it again.
pub const SITE_SEQUENCE: u64 = 16;

/// The frame's `site` slot, as the mask-restoring tail reads it.
const SITE_SLOT: usize = core::mem::offset_of!(Frame, site);

global_asm!(
    ".pushsection .text.kbox_x86_64_entry,\"ax\",@progbits",
    ".globl kbox_x86_64_common_entry",
    ".globl kbox_x86_64_common_entry_end",
    ".globl kbox_x86_64_entry_exit",
    ".p2align 4",
    "kbox_x86_64_common_entry:",
    "pushfq",
    "push rax", "push rcx", "push rdx", "push rbx", "push rbp", "push rsi", "push rdi",
    "push r8", "push r9", "push r10", "push r11", "push r12", "push r13", "push r14", "push r15",
    "mov rbx, rsp",
    // The C ABI wants DF clear; the guest's value is in the saved rflags.
    "cld",
    // Fast path: a genuine entry (the registry's checks, as entry::validate makes them)
    // for a call that runs on the host as made (HOST_CALLS) goes straight to
    // kbox_trap_host_call, with no Rust code and no FPU state to keep.
    "mov rcx, [rsp + {site}]",
    "cmp rcx, {max_sites}",
    "jae 3f",
    "lea rdx, [rip + {return_addrs}]",
    "mov rdx, [rdx + rcx * 8]",
    "test rdx, rdx",
    "jz 3f",
    "cmp rdx, [rsp + {ret}]",
    "jne 3f",
    "mov rcx, [rsp + {rax}]",
    "cmp rcx, {host_calls_len}",
    "jae 3f",
    "lea rdx, [rip + {host_calls}]",
    "cmp byte ptr [rdx + rcx], 0",
    "jne kbox_trap_host_call",
    "3:",
    "sub rsp, {scratch}",
    "and rsp, -64",
    "fxsave64 [rsp]",
    "mov rdi, rbx",
    "mov rsi, rsp",
    "call {entry}",
    "fxrstor64 [rsp]",
    "mov rsp, rbx",
    "cmp rax, {with_mask}",
    "jb kbox_x86_64_entry_exit",
    // The mask in the frame's site slot; the tail comes back to kbox_x86_64_entry_exit.
    "je kbox_trap_restore_mask",
    "cmp rax, {host_call}",
    "je kbox_trap_host_call",
    // rax is a ucontext the handler left below the stack pointer; nothing here writes there.
    "mov rsp, rax",
    "jmp kbox_trap_sigreturn",
    "kbox_x86_64_entry_exit:",
    "pop r15", "pop r14", "pop r13", "pop r12", "pop r11", "pop r10", "pop r9", "pop r8",
    "pop rdi", "pop rsi", "pop rbp", "pop rbx", "pop rdx", "pop rcx", "pop rax",
    "popfq",
    "ret",
    "kbox_x86_64_common_entry_end:",
    ".popsection",
    scratch = const SCRATCH,
    with_mask = const RESUME_WITH_MASK,
    host_call = const RESUME_HOST_CALL,
    entry = sym entry,
    site = const SITE_SLOT,
    ret = const core::mem::offset_of!(Frame, return_addr),
    rax = const core::mem::offset_of!(Frame, rax),
    max_sites = const entry::MAX_SITES,
    return_addrs = sym entry::RETURN_ADDRS,
    host_calls = sym entry::HOST_CALLS,
    host_calls_len = const entry::HOST_CALLS_LEN,
);

const _: () = assert!(
    SITE_SLOT == 136,
    "kbox_trap_restore_mask reads the mask at rsp+136"
);
const _: () = assert!(
    core::mem::offset_of!(Frame, rax) == 112
        && core::mem::offset_of!(Frame, rdi) == 64
        && core::mem::offset_of!(Frame, rsi) == 72
        && core::mem::offset_of!(Frame, rdx) == 96
        && core::mem::offset_of!(Frame, r10) == 40
        && core::mem::offset_of!(Frame, r8) == 56
        && core::mem::offset_of!(Frame, r9) == 48,
    "kbox_trap_host_call reads the call's registers at these offsets"
);

unsafe extern "C" {
    fn kbox_x86_64_common_entry();
    fn kbox_x86_64_common_entry_end();
}

/// The stub's scratch area: the guest's FXSAVE state.
#[derive(Debug)]
pub struct Scratch {
    base: *mut u8,
}

impl Scratch {
    /// The x87/SSE state the stub saved (and restores on a plain resume).
    pub fn fxsave(&mut self) -> &mut [u8; FXSAVE_LEN] {
        // SAFETY: the stub reserved SCRATCH bytes at `base`, 64-byte aligned, for this call.
        unsafe { &mut *self.base.cast::<[u8; FXSAVE_LEN]>() }
    }
}

/// Serves a genuine entry with the whole frame; returns how the guest resumes.
pub type FrameHandler = fn(&mut Frame, Scratch) -> u64;

static FRAME_HANDLER: AtomicUsize = AtomicUsize::new(0);

/// Installs the handler genuine entries go to instead of [`entry::set_handler`]'s.
pub fn set_frame_handler(h: FrameHandler) {
    FRAME_HANDLER.store(h as usize, Ordering::Release);
}

/// Called by the stub with the saved registers and the scratch area.
extern "C" fn entry(frame: &mut Frame, scratch: *mut u8) -> u64 {
    let fh = FRAME_HANDLER.load(Ordering::Acquire);
    if fh != 0 {
        if entry::admit(frame.site, frame.return_addr).is_err() {
            frame.rax = entry::ENOSYS.cast_unsigned();
            return RESUME_PLAIN;
        }
        // SAFETY: FRAME_HANDLER only ever holds 0 or a `FrameHandler` stored above.
        let handler: FrameHandler = unsafe { core::mem::transmute::<usize, FrameHandler>(fh) };
        return handler(frame, Scratch { base: scratch });
    }
    let result = entry::dispatch(frame.site, frame.return_addr, |site, _kind: SiteKind| {
        SyscallRequest {
            nr: frame.rax,
            args: [
                frame.rdi, frame.rsi, frame.rdx, frame.r10, frame.r8, frame.r9,
            ],
            site,
        }
    });
    frame.rax = result.unwrap_or(entry::ENOSYS).cast_unsigned();
    RESUME_PLAIN
}

/// Address trampolines call (the 8-byte literal in each trampoline).
pub fn common_entry() -> u64 {
    kbox_x86_64_common_entry as *const () as u64
}

/// The stub's code bytes, for checking that it holds no syscall instruction.
pub fn common_entry_code() -> &'static [u8] {
    let start = kbox_x86_64_common_entry as *const () as usize;
    let end = kbox_x86_64_common_entry_end as *const () as usize;
    // SAFETY: both symbols delimit the stub in the same section of this binary's text, which
    // is mapped readable for the life of the process.
    unsafe { core::slice::from_raw_parts(start as *const u8, end - start) }
}
