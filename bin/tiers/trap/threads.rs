//! Guest threads (clone with CLONE_THREAD) in the trap tier. Each guest thread is a thread
//! of kbox's own, started by Rust's std so that kbox's code has a thread pointer of its own
//! on it when that thread's calls trap; it then takes the register state the guest's clone
//! gives the child (the parent's, with rax 0, the new stack, the new TLS) through
//! rt_sigreturn, which loads every register at once. It inherits the parent's seccomp
//! filter, as every thread made from a filtered one does.

use std::sync::mpsc;

use kbox_arch::trap::raw_syscall;
use kbox_lkl::Errno;

use super::context;
use super::entry::{self, Trapped};
use super::guest::InProcess;
use super::sysno::SYS_SET_TID_ADDRESS;
use crate::dispatch::Guest;

pub(super) const CLONE_VM: u64 = 0x100;
const CLONE_SIGHAND: u64 = 0x800;
const CLONE_THREAD: u64 = 0x1_0000;
pub(super) const CLONE_SETTLS: u64 = 0x8_0000;
pub(super) const CLONE_PARENT_SETTID: u64 = 0x10_0000;
pub(super) const CLONE_CHILD_CLEARTID: u64 = 0x20_0000;
pub(super) const CLONE_CHILD_SETTID: u64 = 0x100_0000;

/// Whether clone's `flags` ask for a thread (the rest, processes, need another design).
pub fn is_thread(flags: u64) -> bool {
    flags & (CLONE_THREAD | CLONE_VM | CLONE_SIGHAND) == CLONE_THREAD | CLONE_VM | CLONE_SIGHAND
}

/// clone(flags, newsp, parent_tid, child_tid, tls) for a thread (AArch64 swaps the last
/// two): the child's tid.
pub fn clone_thread(
    call: &mut Trapped<'_>,
    guest: &InProcess,
    args: [u64; 6],
) -> Result<i64, Errno> {
    let [flags, newsp, parent_tid, child_tid, tls] = context::clone_args(args);
    let (mut regs, uc_flags) = call.registers();
    context::thread_child(&mut regs, newsp);
    let tp = if flags & CLONE_SETTLS != 0 {
        tls
    } else {
        call.guest_tp
    };
    let mask = call.sigmask();
    let fd_floor = guest.fd_floor;
    let (tx, rx) = mpsc::channel::<Result<u32, Errno>>();
    std::thread::Builder::new()
        .name("kbox-guest".into())
        .stack_size(entry::KBOX_STACK)
        .spawn(move || {
            if !entry::adopt_current_thread() {
                let _ = tx.send(Err(Errno::EAGAIN));
                return;
            }
            let tid = kbox_arch::trap::gettid();
            let me = InProcess::new(tid, fd_floor);
            // Both before the child's first instruction, as Linux writes them (libcs read
            // their thread's id from there: musl's gettid does).
            let settid = [
                (CLONE_PARENT_SETTID, parent_tid),
                (CLONE_CHILD_SETTID, child_tid),
            ];
            for (flag, at) in settid {
                if flags & flag != 0 && me.write(at, &tid.to_ne_bytes()).is_err() {
                    entry::release_current_thread();
                    let _ = tx.send(Err(Errno::EFAULT));
                    return;
                }
            }
            if flags & CLONE_CHILD_CLEARTID != 0 {
                // SAFETY: the guest's own futex word, cleared by the kernel at thread exit.
                unsafe { raw_syscall(SYS_SET_TID_ADDRESS, [child_tid, 0, 0, 0, 0, 0]) };
            }
            let _ = tx.send(Ok(tid));
            entry::enter_guest(&regs, uc_flags, mask, tp)
        })
        .map_err(|_| Errno::EAGAIN)?;
    let tid = rx.recv().map_err(|_| Errno::EAGAIN)??;
    Ok(i64::from(tid))
}
