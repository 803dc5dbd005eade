//! The safe face of the kernel library: boot it once, run syscalls as the calling
//! thread's task or as explicit tasks (one per guest process or thread), halt it.
use crate::errno::Errno;
use crate::ffi;
use crate::host;
use core::ffi::{c_int, c_long, c_ulong, c_void};
use core::fmt;
use core::ptr::NonNull;
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};

static BOOTED: AtomicBool = AtomicBool::new(false);

/// Whether a kernel has booted (by this API or by `lkl_start_kernel` directly).
pub(crate) fn booted() -> bool {
    BOOTED.load(Ordering::SeqCst) || crate::virtio_mmio::frozen()
}

#[derive(Clone, Debug)]
pub struct BootConfig {
    /// The kernel's RAM (page cache, slab, ...), in MiB: `mem=` on its command line.
    pub memory_mib: u32,
    /// Extra kernel command-line words (e.g. `virtio_mmio.device=` entries, `loglevel=`).
    pub cmdline: String,
    /// Copy kernel messages to stderr as they are printed.
    pub verbose: bool,
}

impl Default for BootConfig {
    fn default() -> Self {
        Self {
            memory_mib: 128,
            cmdline: String::new(),
            verbose: false,
        }
    }
}

#[derive(Debug)]
pub enum BootError {
    /// This process already booted a kernel; its state is process-global.
    AlreadyBooted,
    /// The command line contains a NUL byte.
    BadCmdline,
    /// `lkl_init` refused the host operations.
    Init(Errno),
    /// `lkl_start_kernel` failed.
    Start(Errno),
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlreadyBooted => f.write_str("a kernel is already running in this process"),
            Self::BadCmdline => f.write_str("the kernel command line contains a NUL byte"),
            Self::Init(e) => write!(f, "kernel library init failed: {e}"),
            Self::Start(e) => write!(f, "kernel boot failed: {e}"),
        }
    }
}

impl std::error::Error for BootError {}

/// Clone flags for [`Kernel::create_task`] (the subset that makes sense for tasks
/// that mirror guest processes and threads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskKind {
    /// fork(2) semantics: own copies of the FD table, cwd, umask and credentials.
    Process,
    /// A thread: shares FD table, cwd and signal handlers with its parent.
    Thread,
    /// A thread of its parent's process with its own FD table and cwd: the processes it
    /// forks are children of that process (their parent pid is its pid).
    PrivateThread,
}

/// Where a new task's pid comes from, in its pid namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PidWish {
    /// Whichever pid the namespace hands out next.
    Any,
    /// This pid if it is free, else the next free one above it (the task's getpid says
    /// which it got).
    Exact(u32),
}

/// The kernel library's highest pid plus one: the arch raises Linux's default to the most
/// a 64-bit kernel allows, as host pids can be that high.
pub const PID_MAX: u32 = 4 * 1024 * 1024;

const CLONE_VM: c_ulong = 0x100;
const CLONE_FS: c_ulong = 0x200;
const CLONE_FILES: c_ulong = 0x400;
const CLONE_SIGHAND: c_ulong = 0x800;
const CLONE_THREAD: c_ulong = 0x10000;
const CLONE_SYSVSEM: c_ulong = 0x40000;

/// The running kernel. Cheap to share: every method may be called from any thread.
#[derive(Debug)]
pub struct Kernel {
    _private: (),
}

std::thread_local! {
    /// Syscalls this host thread has made into the kernel library (see [`calls_made`]).
    static CALLS_MADE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many syscalls the calling host thread has made into the kernel library so far: a
/// caller compares two readings to learn whether some work reached the kernel (kbox's
/// trace tells "served by the kernel library" from "emulated" this way).
pub fn calls_made() -> u64 {
    CALLS_MADE.with(std::cell::Cell::get)
}

fn call(
    no: u32,
    args: [usize; 6],
    f: impl FnOnce(c_long, *mut c_long) -> c_long,
) -> Result<usize, Errno> {
    CALLS_MADE.with(|n| n.set(n.get().wrapping_add(1)));
    // Arguments are register-sized bit patterns; the kernel reinterprets them.
    let mut params = args.map(|a| c_long::from_ne_bytes(a.to_ne_bytes()));
    Errno::result(f(c_long::from(no), params.as_mut_ptr()))
}

impl Kernel {
    /// A handle for C entry points that run after boot (they have no `Kernel` to pass).
    pub(crate) fn token() -> Kernel {
        Kernel { _private: () }
    }

    /// Boots the kernel in this process. Fails with [`BootError::AlreadyBooted`] the
    /// second time.
    pub fn boot(config: &BootConfig) -> Result<Kernel, BootError> {
        if BOOTED.swap(true, Ordering::SeqCst) {
            return Err(BootError::AlreadyBooted);
        }
        host::VERBOSE.store(config.verbose, Ordering::Relaxed);
        let quiet = if config.verbose { "" } else { "quiet " };
        // Device words are appended by lkl_start_kernel (devices_cmdline host op).
        let cmdline = format!("mem={}M {quiet}{}", config.memory_mib, config.cmdline);
        let cmdline = CString::new(cmdline).map_err(|_| BootError::BadCmdline)?;
        // SAFETY: the host table is a static that lives for the process.
        let rc = unsafe { ffi::lkl_init(&host::lkl_host_ops) };
        if rc < 0 {
            return Err(BootError::Init(Errno(-rc)));
        }
        // SAFETY: "%s" with a valid NUL-terminated string.
        let rc = unsafe { ffi::lkl_start_kernel(c"%s".as_ptr(), cmdline.as_ptr()) };
        if rc < 0 {
            return Err(BootError::Start(Errno(-rc)));
        }
        Ok(Kernel { _private: () })
    }

    /// Runs syscall `no` (asm-generic numbering, see [`crate::sysno`]) as the calling
    /// thread's own task, created on first use; all such tasks share one FD table and cwd.
    pub fn syscall(&self, no: u32, args: [usize; 6]) -> Result<usize, Errno> {
        // SAFETY: the kernel is booted; `params` points to six longs.
        call(no, args, |no, params| unsafe {
            ffi::lkl_syscall(no, params)
        })
    }

    /// Creates a task as a child of `parent` (the root task when `None`), with fork or
    /// thread semantics.
    pub fn create_task(&self, parent: Option<&Task>, kind: TaskKind) -> Result<Task, Errno> {
        self.create_task_with_pid(parent, kind, PidWish::Any)
    }

    /// [`Kernel::create_task`] with a say in the new task's pid.
    pub fn create_task_with_pid(
        &self,
        parent: Option<&Task>,
        kind: TaskKind,
        pid: PidWish,
    ) -> Result<Task, Errno> {
        let flags = match kind {
            TaskKind::Process => 0,
            TaskKind::Thread => {
                CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM
            }
            TaskKind::PrivateThread => CLONE_VM | CLONE_SIGHAND | CLONE_THREAD,
        };
        let pid = match pid {
            PidWish::Any => 0,
            PidWish::Exact(p) => c_int::try_from(p)
                .ok()
                .filter(|&p| p > 0 && p.unsigned_abs() < PID_MAX)
                .ok_or(Errno::EINVAL)?,
        };
        let parent = parent.map_or(core::ptr::null_mut(), |t| t.raw.as_ptr());
        let mut out: *mut c_void = core::ptr::null_mut();
        // SAFETY: `parent` is null or a live task handle; `out` is a valid slot.
        let rc = unsafe { ffi::lkl_task_create_pid(parent, flags, pid, &mut out) };
        Errno::result(rc)?;
        NonNull::new(out)
            .map(|raw| Task { raw })
            .ok_or(Errno::ENOMEM)
    }

    /// Syncs every filesystem and powers the kernel off. Later syscalls fail with
    /// `ESHUTDOWN`.
    pub fn halt(&self) -> Result<(), Errno> {
        // Unmount first: a clean unmount leaves the images' journals empty. A mount that
        // is still busy must not stop the power-off (sync still flushes it); its error
        // is reported after.
        let unmounted = self.unmount_disks();
        // SAFETY: no preconditions once booted.
        let rc = unsafe { ffi::lkl_sys_halt() };
        Errno::result(rc)?;
        unmounted
    }

    /// The last lines the kernel printed.
    pub fn log_tail(&self, lines: usize) -> String {
        host::log_tail(lines)
    }
}

/// A kernel task: the kernel-side mirror of one guest process or thread. Syscalls on
/// it run in its context (its FD table, cwd, credentials). Dropping it ends the task.
#[derive(Debug)]
pub struct Task {
    raw: NonNull<c_void>,
}

// SAFETY: a task may be driven from any host thread; the kernel refuses (EBUSY) a
// second thread entering the same task at once.
unsafe impl Send for Task {}
// SAFETY: as above, concurrent use is checked by the kernel.
unsafe impl Sync for Task {}

impl Task {
    /// A child of this task with fork or thread semantics (a task only exists once the
    /// kernel has booted, so no [`Kernel`] handle is needed).
    pub fn fork(&self, kind: TaskKind) -> Result<Task, Errno> {
        Kernel::token().create_task(Some(self), kind)
    }

    /// [`Task::fork`] with a say in the child's pid.
    pub fn fork_with_pid(&self, kind: TaskKind, pid: PidWish) -> Result<Task, Errno> {
        Kernel::token().create_task_with_pid(Some(self), kind, pid)
    }

    pub fn syscall(&self, no: u32, args: [usize; 6]) -> Result<usize, Errno> {
        // SAFETY: `raw` is a live task handle; `params` points to six longs.
        call(no, args, |no, params| unsafe {
            ffi::lkl_task_syscall(self.raw.as_ptr(), no, params)
        })
    }
}

impl Task {
    /// Ends this task's interruptible wait as a signal would (its syscall fails with
    /// `ERESTARTSYS`), from any host thread. A task that is not waiting has its next wait
    /// end at once, unless a syscall that does not wait comes first (leaving any syscall
    /// clears the request).
    pub fn interrupt(&self) -> Result<(), Errno> {
        // SAFETY: `raw` is a live task handle (held until drop).
        let r = unsafe { ffi::lkl_task_interrupt(self.raw.as_ptr()) };
        if r < 0 {
            return Err(Errno(i32::try_from(-r).unwrap_or(i32::MAX)));
        }
        Ok(())
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        // SAFETY: `raw` is live and dropped once; the call consumes our reference.
        unsafe { ffi::lkl_task_destroy(self.raw.as_ptr()) };
    }
}
