//! Every raw call of the seccomp tier, one small typed wrapper each: the notification
//! ioctls (rustix has the `ioctl` plumbing but not these opcodes), `seccomp(2)`,
//! `process_vm_readv/writev`, `fork`, `execve`, `_exit` and the shared hand-off page. The
//! other files of this module contain no `unsafe`.

use std::ffi::{CStr, c_char, c_void};
use std::io;
use std::os::fd::BorrowedFd;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicI32, AtomicU32};

use kbox_core::bpf::SockFilter;
use rustix::ioctl::{Ioctl, IoctlOutput, Opcode, opcode};

/// `struct seccomp_data` from `<linux/seccomp.h>`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SeccompData {
    pub nr: i32,
    pub arch: u32,
    pub instruction_pointer: u64,
    pub args: [u64; 6],
}

/// `struct seccomp_notif`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SeccompNotif {
    pub id: u64,
    pub pid: u32,
    pub flags: u32,
    pub data: SeccompData,
}

/// `struct seccomp_notif_resp`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SeccompNotifResp {
    pub id: u64,
    pub val: i64,
    pub error: i32,
    pub flags: u32,
}

/// `struct seccomp_notif_addfd`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SeccompNotifAddfd {
    pub id: u64,
    pub flags: u32,
    pub srcfd: u32,
    pub newfd: u32,
    pub newfd_flags: u32,
}

/// `struct sock_fprog` from `<linux/filter.h>`.
#[repr(C)]
pub struct SockFprog {
    pub len: u16,
    pub filter: *const SockFilter,
}

// The opcodes encode the struct sizes; pin the layouts to the kernel's so a wrong field
// cannot silently change an opcode.
const _: () = assert!(size_of::<SeccompData>() == 64);
const _: () = assert!(size_of::<SeccompNotif>() == 80);
const _: () = assert!(size_of::<SeccompNotifResp>() == 24);
const _: () = assert!(size_of::<SeccompNotifAddfd>() == 24);

/// The seccomp ioctl group, `SECCOMP_IOC_MAGIC`.
const MAGIC: u8 = b'!';
pub const NOTIF_RECV: Opcode = opcode::read_write::<SeccompNotif>(MAGIC, 0);
pub const NOTIF_SEND: Opcode = opcode::read_write::<SeccompNotifResp>(MAGIC, 1);
pub const NOTIF_ID_VALID: Opcode = opcode::write::<u64>(MAGIC, 2);
pub const NOTIF_ADDFD: Opcode = opcode::write::<SeccompNotifAddfd>(MAGIC, 3);
pub const NOTIF_SET_FLAGS: Opcode = opcode::write::<u64>(MAGIC, 4);

/// `seccomp(2)` operation and flags.
const SECCOMP_SET_MODE_FILTER: u32 = 1;
pub const SECCOMP_FILTER_FLAG_NEW_LISTENER: u32 = 1 << 3;
pub const SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: u32 = 1 << 5;
/// `seccomp_notif_resp.flags`.
pub const SECCOMP_USER_NOTIF_FLAG_CONTINUE: u32 = 1;
/// `seccomp_notif_addfd.flags`.
pub const SECCOMP_ADDFD_FLAG_SETFD: u32 = 1;
pub const SECCOMP_ADDFD_FLAG_SEND: u32 = 1 << 1;
/// `SECCOMP_IOCTL_NOTIF_SET_FLAGS` argument.
pub const SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: u64 = 1;

/// One notification ioctl: an opcode and the argument the kernel expects for it.
struct NotifIoctl {
    opcode: Opcode,
    arg: *mut c_void,
}

// SAFETY: constructed only by `notif_ioctl`, whose callers guarantee `arg` matches `opcode`;
// IS_MUTATING is true because RECV writes through `arg`; the output is the plain return
// value, which ADDFD uses for the guest's new fd number.
unsafe impl Ioctl for NotifIoctl {
    type Output = IoctlOutput;
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        self.opcode
    }

    fn as_ptr(&mut self) -> *mut c_void {
        self.arg
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut c_void) -> rustix::io::Result<IoctlOutput> {
        Ok(out)
    }
}

/// # Safety
/// `arg` must be what the seccomp listener expects for `opcode`: a pointer to a live value
/// of the type the opcode encodes (writable for RECV), or the integer flags for SET_FLAGS.
unsafe fn notif_ioctl(fd: BorrowedFd<'_>, opcode: Opcode, arg: *mut c_void) -> io::Result<i32> {
    // SAFETY: forwarded from this function's contract.
    unsafe { rustix::ioctl::ioctl(fd, NotifIoctl { opcode, arg }) }.map_err(io::Error::from)
}

/// SECCOMP_IOCTL_NOTIF_RECV into `out`, which the kernel requires to be zeroed.
pub fn notif_recv(fd: BorrowedFd<'_>, out: &mut SeccompNotif) -> io::Result<()> {
    *out = SeccompNotif::default();
    // SAFETY: `out` is a live, writable seccomp_notif, the type RECV encodes.
    unsafe { notif_ioctl(fd, NOTIF_RECV, ptr::from_mut(out).cast()) }.map(drop)
}

/// SECCOMP_IOCTL_NOTIF_SEND.
pub fn notif_send(fd: BorrowedFd<'_>, resp: &mut SeccompNotifResp) -> io::Result<()> {
    // SAFETY: `resp` is a live seccomp_notif_resp, the type SEND encodes.
    unsafe { notif_ioctl(fd, NOTIF_SEND, ptr::from_mut(resp).cast()) }.map(drop)
}

/// SECCOMP_IOCTL_NOTIF_ID_VALID: Ok when `id` still names a live, unanswered notification.
pub fn notif_id_valid(fd: BorrowedFd<'_>, id: u64) -> io::Result<()> {
    let mut id = id;
    // SAFETY: `id` is a live u64, the type ID_VALID encodes; the kernel only reads it.
    unsafe { notif_ioctl(fd, NOTIF_ID_VALID, ptr::from_mut(&mut id).cast()) }.map(drop)
}

/// SECCOMP_IOCTL_NOTIF_ADDFD; returns the fd number in the target.
pub fn notif_addfd(fd: BorrowedFd<'_>, addfd: &SeccompNotifAddfd) -> io::Result<i32> {
    let mut addfd = *addfd;
    // SAFETY: `addfd` is a live seccomp_notif_addfd, the type ADDFD encodes.
    unsafe { notif_ioctl(fd, NOTIF_ADDFD, ptr::from_mut(&mut addfd).cast()) }
}

/// SECCOMP_IOCTL_NOTIF_SET_FLAGS; the flags travel in the argument itself, not behind it.
pub fn notif_set_flags(fd: BorrowedFd<'_>, flags: u64) -> io::Result<()> {
    let arg = ptr::without_provenance_mut(usize::try_from(flags).unwrap_or(usize::MAX));
    // SAFETY: SET_FLAGS takes its flags by value; the kernel never dereferences `arg`.
    unsafe { notif_ioctl(fd, NOTIF_SET_FLAGS, arg) }.map(drop)
}

/// The calling thread's errno, read without allocating (safe between fork and exec).
fn last_errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `seccomp(SECCOMP_SET_MODE_FILTER, flags, prog)`; with NEW_LISTENER the result is the
/// listener fd. Async-signal-safe. Err is the raw errno.
pub fn seccomp_set_mode_filter(flags: u32, prog: &SockFprog) -> Result<i64, i32> {
    // SAFETY: `prog` points at a sock_fprog whose filter array outlives the call; the kernel
    // copies the program before returning.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            flags,
            ptr::from_ref(prog),
        )
    };
    if r < 0 { Err(last_errno()) } else { Ok(r) }
}

/// `process_vm_readv` of one local and one remote range; returns the bytes copied.
pub fn vm_read(pid: i32, local: &mut [u8], remote: usize) -> io::Result<usize> {
    let liov = libc::iovec {
        iov_base: local.as_mut_ptr().cast(),
        iov_len: local.len(),
    };
    let riov = libc::iovec {
        iov_base: ptr::without_provenance_mut(remote),
        iov_len: local.len(),
    };
    // SAFETY: `liov` describes `local`, which is writable for its length; the remote iovec is
    // only interpreted in the other process's address space, never dereferenced here.
    let r = unsafe { libc::process_vm_readv(pid, &raw const liov, 1, &raw const riov, 1, 0) };
    usize::try_from(r).map_err(|_| io::Error::last_os_error())
}

/// `process_vm_writev` of one local and one remote range; returns the bytes copied.
pub fn vm_write(pid: i32, local: &[u8], remote: usize) -> io::Result<usize> {
    let liov = libc::iovec {
        iov_base: local.as_ptr().cast_mut().cast(),
        iov_len: local.len(),
    };
    let riov = libc::iovec {
        iov_base: ptr::without_provenance_mut(remote),
        iov_len: local.len(),
    };
    // SAFETY: `liov` describes `local`, which the kernel only reads; the remote iovec is
    // only interpreted in the other process's address space.
    let r = unsafe { libc::process_vm_writev(pid, &raw const liov, 1, &raw const riov, 1, 0) };
    usize::try_from(r).map_err(|_| io::Error::last_os_error())
}

/// `fork()`: Ok(0) in the child, Ok(pid) in the parent.
///
/// # Safety
/// The child of a multi-threaded process may only make async-signal-safe calls until it
/// execs or exits: no allocation, no locks, no std I/O.
pub unsafe fn fork() -> io::Result<i32> {
    // SAFETY: forwarded from this function's contract.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pid)
    }
}

/// A new process by the raw clone syscall with `flags` (a namespace flag or two, and the
/// exit signal), like fork but without the libc's bookkeeping: the child may make raw
/// syscalls only (no allocation, no libc locks, which another thread may have held).
///
/// # Safety
/// As for [`fork`], and the child must not use libc functions that take locks.
pub unsafe fn clone_process(flags: u64) -> io::Result<i32> {
    // SAFETY: a NULL stack makes the child run on a copy of this thread's stack, as fork
    // does; the remaining arguments are unused without their flags.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(i32::try_from(pid).unwrap_or(0))
    }
}

/// Waits for any child (raw wait4, so safe in a child made by [`clone_process`]); returns
/// (pid, wait status), or None when there is no child left.
pub fn wait_any() -> Option<(i32, i32)> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: wait4 writes one int to `status`, which lives across the call.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_wait4,
                -1i64,
                &raw mut status,
                libc::__WALL,
                0usize,
            )
        };
        if pid > 0 {
            return Some((i32::try_from(pid).unwrap_or(0), status));
        }
        if last_errno() != libc::EINTR {
            return None;
        }
    }
}

/// `execve(path, argv, envp)`; returns only on failure, with the errno.
///
/// # Safety
/// `argv` and `envp` must be NULL-terminated arrays of pointers to NUL-terminated strings,
/// all alive for the call.
pub unsafe fn execve(path: &CStr, argv: *const *const c_char, envp: *const *const c_char) -> i32 {
    // SAFETY: forwarded from this function's contract; `path` is NUL-terminated.
    unsafe { libc::execve(path.as_ptr(), argv, envp) };
    last_errno()
}

/// `_exit(code)`: ends the process without atexit handlers or stdio flushes (which would
/// run the parent's copies in a forked child).
/// Unblocks every signal (the supervisor blocks the ones it forwards; the guest must not
/// inherit that). Async-signal-safe.
pub fn unblock_all_signals() {
    // SAFETY: an empty, initialised set; sigprocmask only reads it. signal() with SIG_DFL
    // is async-signal-safe and takes plain integers.
    unsafe {
        let mut set: libc::sigset_t = core::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &raw const set, core::ptr::null_mut());
        // kbox ignores these (see runtime.rs); ignored dispositions survive exec, and the
        // guest must get the terminal's job control signals as any program would.
        libc::signal(libc::SIGTTOU, libc::SIG_DFL);
        libc::signal(libc::SIGTTIN, libc::SIG_DFL);
    }
}

/// Ignores SIGTTOU and SIGTTIN: an interactive guest shell moves itself into its own
/// process group and takes the terminal, and kbox, left in the background group, must not
/// be stopped when it writes its last words (an error, -v) to that terminal.
pub fn ignore_terminal_stops() {
    // SAFETY: signal() with SIG_IGN takes plain integers.
    unsafe {
        libc::signal(libc::SIGTTOU, libc::SIG_IGN);
        libc::signal(libc::SIGTTIN, libc::SIG_IGN);
    }
}

/// Closes every FD from `first` up (close_range(2), Linux 5.9, which seccomp's ADDFD
/// needs anyway). Async-signal-safe: one raw syscall.
pub fn close_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range takes plain integers; closing FDs frees nothing this process's
    // Rust code still uses (the caller is a fork's child about to exec).
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// What the guest child tells the supervisor between fork and exec, through a shared
/// anonymous page: plain atomic stores, because any syscall the child makes after installing
/// its filter may itself be waiting for the supervisor.
#[repr(C)]
#[derive(Debug, Default)]
pub struct Handoff {
    /// `HANDOFF_*`.
    pub state: AtomicU32,
    /// The listener's fd number in the child.
    pub listener: AtomicI32,
    /// 1 when the filter waits killably after RECV.
    pub killable: AtomicU32,
    /// Which step failed (`HANDOFF_STEP_*`) and its errno.
    pub step: AtomicU32,
    pub errno: AtomicI32,
    /// 1 when the child is chrooted into the root it was given.
    pub rooted: AtomicU32,
    /// 1 when the child has an IPC namespace of its own.
    pub own_ipc: AtomicU32,
    /// 1 when the guest runs in a PID namespace of its own, under kbox's init.
    pub own_pid: AtomicU32,
    /// The guest's wait status, as that init saw it (its own exit status is not the guest's).
    pub guest_status: AtomicI32,
}

pub const HANDOFF_PENDING: u32 = 0;
pub const HANDOFF_LISTENING: u32 = 1;
pub const HANDOFF_FAILED: u32 = 2;
/// Written by the parent once it holds its own copy of the listener.
pub const HANDOFF_TAKEN: u32 = 3;

/// A `MAP_SHARED` anonymous mapping holding one [`Handoff`], shared with a forked child.
#[derive(Debug)]
pub struct SharedHandoff {
    ptr: NonNull<Handoff>,
}

impl SharedHandoff {
    pub fn new() -> io::Result<Self> {
        // SAFETY: a fresh anonymous mapping aliases nothing; the kernel zero-fills it, which
        // is a valid Handoff (all atomics zero).
        let p = unsafe {
            rustix::mm::mmap_anonymous(
                ptr::null_mut(),
                size_of::<Handoff>(),
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
            )
        }?;
        NonNull::new(p.cast())
            .map(|ptr| Self { ptr })
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))
    }

    pub fn get(&self) -> &Handoff {
        // SAFETY: `ptr` is a live, aligned (page-aligned) mapping of a Handoff until drop;
        // every field is atomic, so the other process's writes are not data races.
        unsafe { self.ptr.as_ref() }
    }
}

impl Drop for SharedHandoff {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `new` with this size and no reference outlives self.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), size_of::<Handoff>()) };
    }
}

/// `struct sched_attr` (sched_setattr(2)), first version (48 bytes).
#[repr(C)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

/// Asks for the shortest time slice the fair scheduler gives (0.1 ms, Linux 6.12 and
/// later; ignored by older kernels): a woken thread with a shorter slice than the running
/// one preempts it, so a receiver woken by a guest's call runs at once even when guests
/// keep every CPU busy. Needs no privilege and leaves the thread's nice value alone.
pub fn ask_short_slice() -> io::Result<()> {
    let attr = SchedAttr {
        size: u32::try_from(std::mem::size_of::<SchedAttr>()).unwrap_or(48),
        policy: 0, // SCHED_OTHER
        flags: 0,
        nice: 0,
        priority: 0,
        runtime: 100_000,
        deadline: 0,
        period: 0,
    };
    // SAFETY: `attr` is a complete sched_attr of the size it states, read by the kernel
    // before the call returns; pid 0 is the calling thread.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &raw const attr, 0u32) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
