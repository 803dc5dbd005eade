//! Guest processes in the trap tier, with one kernel for the whole guest tree.
//!
//! The first guest process runs in kbox's own process and is served in place. A process it
//! forks is a copy of kbox's, kernel library included, and that copy must never be used: a
//! file the child wrote would then be invisible to its parent. So a forked child (a
//! *remote* process) keeps the trap tier's handler but sends every call the engine serves,
//! from a gadget that the gate filter marks for notification, to the seccomp tier's
//! receivers in the first process, which holds the kernel. The child decides the rest as
//! the first process does: calls the policy lets through run in place, as do the tier's
//! own (the break, signal actions, threads...). exec in a remote process is kbox's loader
//! again, reading the program through notified calls.
//!
//! Two calls only kbox makes from the gadget, with the syscall number [`MARK_NR`] (no
//! kernel has it) and honoured only from the gadget's region: "this process forked
//! CHILD" (the engine records what the child inherits, before the parent can change it)
//! and "this process exec'd PATH" (the engine's part of exec).

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use kbox_arch::trap::{NOTIFY_GADGET, call_gadget, gettid, raw_syscall};
use kbox_lkl::Errno;
use rustix::mm::{MapFlags, MprotectFlags, ProtFlags, mmap_anonymous, mprotect};

use super::entry::{self, Trapped};
use super::guest::InProcess;
use super::sysno::{
    SYS_CLONE, SYS_CLOSE, SYS_CLOSE_RANGE, SYS_FACCESSAT, SYS_OPENAT, SYS_READ, SYS_SET_TID_ADDRESS,
};
use super::threads::{
    CLONE_CHILD_CLEARTID, CLONE_CHILD_SETTID, CLONE_PARENT_SETTID, CLONE_SETTLS, CLONE_VM,
};
use crate::dispatch::{Engine, Guest, Reply};

/// The syscall number of kbox's own notified calls.
pub const MARK_NR: u64 = 1001;
const MARK_FORKED: u64 = 1;
const MARK_EXEC: u64 = 2;

const CLONE_VFORK: u64 = 0x4000;
const AT_FDCWD: u64 = (-100i64).cast_unsigned();
const O_RDONLY_CLOEXEC: u64 = 0o2_000_000;

/// This process is a forked guest process: its kernel state lives in the first one.
static REMOTE: AtomicBool = AtomicBool::new(false);
/// The notification gadget, and the page it is in.
static GADGET: AtomicU64 = AtomicU64::new(0);
pub const AREA_LEN: u64 = 4096;

pub fn is_remote() -> bool {
    REMOTE.load(Ordering::Relaxed)
}

/// Maps the page that holds the notification gadget; its range, for the gate filter.
pub fn map_gadget() -> Result<(u64, u64), Errno> {
    let len = usize::try_from(AREA_LEN).unwrap_or(4096);
    let errno = |e: rustix::io::Errno| Errno(e.raw_os_error());
    // SAFETY: a fresh private mapping, written once and then made execute-only-read.
    let at = unsafe {
        mmap_anonymous(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE,
        )
    }
    .map_err(errno)?;
    // SAFETY: the page just mapped, writable, three bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(NOTIFY_GADGET.as_ptr(), at.cast::<u8>(), NOTIFY_GADGET.len());
        mprotect(at, len, MprotectFlags::READ | MprotectFlags::EXEC).map_err(errno)?;
    }
    let start = at as u64;
    GADGET.store(start, Ordering::Relaxed);
    Ok((start, start + AREA_LEN))
}

/// Whether a notification came from the gadget's page (kbox's own calls come only from
/// there).
pub fn from_gadget(instruction_pointer: u64) -> bool {
    let g = GADGET.load(Ordering::Relaxed);
    g != 0 && (g..g + AREA_LEN).contains(&instruction_pointer)
}

/// A call of this process, answered by the first process's receivers.
pub fn notified(nr: u64, args: [u64; 6]) -> i64 {
    // SAFETY: the gadget was written by map_gadget; the arguments are the caller's call.
    unsafe { call_gadget(GADGET.load(Ordering::Relaxed), nr, args) }
}

/// A call of the guest that the engine serves, from a remote process: made from the
/// gadget with the guest's mask and thread pointer, so it is interrupted as natively.
pub fn engine_call(call: &mut Trapped<'_>, nr: u64, args: [u64; 6]) -> i64 {
    let gadget = GADGET.load(Ordering::Relaxed);
    // SAFETY: as in notified.
    call.as_guest(|| unsafe { call_gadget(gadget, nr, args) })
}

fn result(r: i64) -> Result<i64, Errno> {
    if (-4095..0).contains(&r) {
        Err(Errno(i32::try_from(-r).unwrap_or(5)))
    } else {
        Ok(r)
    }
}

/// fork, vfork, or clone of a process, for the calling guest thread. A vfork is a fork:
/// the child gets a copy of the memory instead of sharing it, and the parent goes on at
/// once (no program can tell but by writing its parent's memory, which POSIX forbids).
pub fn fork(
    call: &mut Trapped<'_>,
    engine: &std::sync::Mutex<Engine>,
    guest: &InProcess,
    nr: u64,
    args: [u64; 6],
) -> Result<i64, Errno> {
    let flags = if nr == SYS_CLONE { args[0] } else { 0 };
    let [_, newsp, parent_tid, child_tid, tls] = if nr == SYS_CLONE {
        super::context::clone_args(args)
    } else {
        [0; 5]
    };
    if flags & CLONE_VM != 0 && flags & CLONE_VFORK == 0 {
        // A process sharing its parent's memory but not being its thread: not possible
        // here.
        return Err(Errno::ENOSYS);
    }
    // musl's fork keeps the child's allocator and libc consistent; the tier's own locks
    // are held across it for the same reason (other guest threads may be using them).
    let hold = super::hold_for_fork();
    // SAFETY: fork from kbox's own code; the child below touches only its own state.
    let pid = unsafe { libc::fork() };
    drop(hold);
    if pid < 0 {
        return Err(Errno(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(11),
        ));
    }
    if pid == 0 {
        become_child(call, guest.fd_floor, flags, newsp, child_tid, tls);
        return Ok(0);
    }
    let pid = pid.cast_unsigned();
    if flags & CLONE_PARENT_SETTID != 0 {
        let _ = guest.write(parent_tid, &pid.to_ne_bytes());
    }
    // The engine records what the child inherits now, before this process changes it.
    if is_remote() {
        notified(MARK_NR, [MARK_FORKED, u64::from(pid), 0, 0, 0, 0]);
    } else {
        super::lock(engine).record_fork(guest.tid, pid);
    }
    Ok(i64::from(pid))
}

/// The child's side of a fork, still inside the handler: it becomes a remote process.
fn become_child(
    call: &mut Trapped<'_>,
    fd_floor: i32,
    flags: u64,
    newsp: u64,
    child_tid: u64,
    tls: u64,
) {
    REMOTE.store(true, Ordering::Relaxed);
    entry::adopt_after_fork();
    let floor = u64::try_from(fd_floor).unwrap_or(u64::MAX);
    // SAFETY: kbox's own FDs (the image, the kernel library's devices) are the first
    // process's; this copy never uses them.
    unsafe { raw_syscall(SYS_CLOSE_RANGE, [floor, u64::from(u32::MAX), 0, 0, 0, 0]) };
    let tid = gettid();
    if flags & CLONE_CHILD_SETTID != 0 {
        let me = InProcess::new(tid, fd_floor);
        let _ = me.write(child_tid, &tid.to_ne_bytes());
    }
    if flags & CLONE_CHILD_CLEARTID != 0 {
        // SAFETY: the guest's own futex word, cleared by the kernel when the child exits.
        unsafe { raw_syscall(SYS_SET_TID_ADDRESS, [child_tid, 0, 0, 0, 0, 0]) };
    }
    if newsp != 0 {
        call.set_sp(newsp);
    }
    if flags & CLONE_SETTLS != 0 {
        call.guest_tp = tls;
    }
}

/// The engine's part of an exec a remote process performed.
pub fn exec_performed(path: &CString) {
    notified(MARK_NR, [MARK_EXEC, path.as_ptr() as u64, 0, 0, 0, 0]);
}

/// A remote process's files, as the loader reads them: opened through the engine (which
/// resolves the path in the process's kernel task), read on the host.
pub struct RemoteFiles;

impl RemoteFiles {
    fn read(path: &[u8], exec: bool) -> Result<Vec<u8>, Errno> {
        let p = CString::new(path).map_err(|_| Errno::ENOENT)?;
        let at = p.as_ptr() as u64;
        if exec {
            result(notified(SYS_FACCESSAT, [AT_FDCWD, at, 1, 0, 0, 0]))?;
        }
        let fd = result(notified(
            SYS_OPENAT,
            [AT_FDCWD, at, O_RDONLY_CLOEXEC, 0, 0, 0],
        ))?;
        let fd = u64::try_from(fd).map_err(|_| Errno::EBADF)?;
        let mut out = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        let r = loop {
            // SAFETY: read into kbox's own buffer, from the FD just opened.
            let n = unsafe {
                raw_syscall(
                    SYS_READ,
                    [fd, chunk.as_mut_ptr() as u64, chunk.len() as u64, 0, 0, 0],
                )
            };
            match result(n) {
                Ok(0) => break Ok(out),
                Ok(n) => out.extend_from_slice(&chunk[..usize::try_from(n).unwrap_or(0)]),
                Err(Errno::EINTR) => {}
                Err(Errno::EISDIR) => break Err(Errno::EACCES),
                Err(e) => break Err(e),
            }
        };
        notified(SYS_CLOSE, [fd, 0, 0, 0, 0, 0]);
        r
    }
}

impl crate::loader::Files for RemoteFiles {
    fn executable(&mut self, path: &[u8]) -> Result<Vec<u8>, Errno> {
        Self::read(path, true)
    }

    fn readable(&mut self, path: &[u8]) -> Result<Vec<u8>, Errno> {
        Self::read(path, false)
    }
}

/// kbox's own notified calls, answered in the first process (runtime::answer asks here
/// first); None for every other notification.
pub fn marker(
    engine: &mut Engine,
    guest: &dyn Guest,
    nr: u64,
    args: [u64; 6],
    instruction_pointer: u64,
) -> Option<Reply> {
    if nr != MARK_NR || !from_gadget(instruction_pointer) {
        return None;
    }
    Some(match args[0] {
        MARK_FORKED => {
            engine.record_fork(guest.tid(), u32::try_from(args[1]).unwrap_or(0));
            Reply::Value(0)
        }
        MARK_EXEC => match guest.read_path(args[1]) {
            Ok(path) => engine.exec_performed(guest.tid(), &path).map(|()| 0).into(),
            Err(e) => Reply::Fail(e),
        },
        _ => Reply::Fail(Errno::EINVAL),
    })
}
