//! The common entry every x86-64 trampoline calls, and the Rust side it hands off to.
//!
//! On entry the guest stack holds (from rsp up): the return address into the per-site
//! trampoline, the pushed site id, then 128 bytes kept free for the guest's red zone. The
//! stub saves every general register and rflags there, moves to a kbox stack, saves the
//! x87/SSE state (the syscall ABI preserves all of it; Rust code may use xmm0-15), and calls
//! [`entry`]. It contains no `syscall`: host calls happen in kbox's Rust code, after the
//! registry has accepted the site id and return address.

use crate::entry::{self, SiteKind, SyscallRequest};
use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// kbox stacks trampolines may run on at once; a thread finding none free spins.
const STACKS: usize = 16;
/// Bytes per kbox stack.
const STACK_SIZE: usize = 64 * 1024;

static STACK_TOPS: [AtomicUsize; STACKS] = [const { AtomicUsize::new(0) }; STACKS];
static STACKS_READY: AtomicBool = AtomicBool::new(false);

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
    pub site: u64,
}

global_asm!(
    ".pushsection .text.kbox_x86_64_entry,\"ax\",@progbits",
    ".globl kbox_x86_64_common_entry",
    ".globl kbox_x86_64_common_entry_end",
    ".p2align 4",
    "kbox_x86_64_common_entry:",
    "pushfq",
    "push rax", "push rcx", "push rdx", "push rbx", "push rbp", "push rsi", "push rdi",
    "push r8", "push r9", "push r10", "push r11", "push r12", "push r13", "push r14", "push r15",
    "mov rbx, rsp",
    // The C ABI wants DF clear; the guest's value is in the saved rflags.
    "cld",
    "2:",
    "lea r12, [rip + {tops}]",
    "mov ecx, {n}",
    "3:",
    "xor eax, eax",
    // xchg with memory is atomic: a non-zero value is a stack this thread now owns.
    "xchg rax, [r12]",
    "test rax, rax",
    "jnz 4f",
    "add r12, 8",
    "dec ecx",
    "jnz 3b",
    "pause",
    "jmp 2b",
    "4:",
    "mov r13, rax",
    "lea rsp, [rax - 512]",
    "and rsp, -64",
    "fxsave64 [rsp]",
    "mov rdi, rbx",
    "call {entry}",
    "fxrstor64 [rsp]",
    "mov [r12], r13",
    "mov rsp, rbx",
    "pop r15", "pop r14", "pop r13", "pop r12", "pop r11", "pop r10", "pop r9", "pop r8",
    "pop rdi", "pop rsi", "pop rbp", "pop rbx", "pop rdx", "pop rcx", "pop rax",
    "popfq",
    "ret",
    "kbox_x86_64_common_entry_end:",
    ".popsection",
    tops = sym STACK_TOPS,
    n = const STACKS,
    entry = sym entry,
);

unsafe extern "C" {
    fn kbox_x86_64_common_entry();
    fn kbox_x86_64_common_entry_end();
}

/// Called by the stub with the saved registers.
extern "C" fn entry(frame: &mut Frame) {
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

/// Allocates the kbox stacks once; must run before any trampoline is entered.
pub fn init_stacks() {
    if STACKS_READY.swap(true, Ordering::AcqRel) {
        return;
    }
    for top in &STACK_TOPS {
        let stack: &'static mut [u128] = alloc::vec![0u128; STACK_SIZE / 16].leak();
        let end = stack.as_mut_ptr_range().end as usize;
        top.store(end, Ordering::Release);
    }
}
