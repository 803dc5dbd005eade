//! The SIGSYS trap tier: the guest's program is loaded into kbox's own process by
//! kbox's loader and runs on a thread of kbox's; a seccomp filter on that thread lets calls
//! from kbox's own code through and turns every other one into SIGSYS, whose handler serves
//! it on the guest's thread through the engine, with no other thread involved.
//!
//! What each call gets is decided by the seccomp tier's own filter program, evaluated here
//! (one policy for both tiers): calls it lets through run on the host as the guest made
//! them, refused ones fail the same way, notified ones go to the engine. A few calls are
//! the tier's own because the guest shares kbox's process: the program break, the thread
//! pointer, signal actions and mask, execve (kbox's loader), exit.
//!
//! Limits (docs/tiers.md): one guest process (fork, vfork and clone fail with ENOSYS, so
//! `auto` never picks this tier for a command that may start processes); kbox's own FDs
//! live at or above the FD floor; the guest shares kbox's address space (docs/security.md).

mod brk;
#[cfg_attr(target_arch = "x86_64", path = "context_x86_64.rs")]
#[cfg_attr(target_arch = "aarch64", path = "context_aarch64.rs")]
mod context;
mod entry;
mod exec;
mod guest;
mod host_runs;
mod limits;
mod process;
mod signals;
mod sysno;
mod threads;
mod unmap;

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use kbox_arch::trap::{gettid, raw_syscall, sigreturn_stub};
use kbox_core::bpf::{self, Action, SeccompData, SockFilter};
use kbox_lkl::Errno;

use crate::dispatch::{Engine, Reply, policy};
use crate::exit::Exit;
use crate::loader::{self, Creds, Region, Request};
use crate::seccomp::filter::HOST_ARCH;
use guest::InProcess;
use sysno::{
    SYS_ARCH_PRCTL, SYS_BRK, SYS_CLONE, SYS_CLONE3, SYS_CLOSE, SYS_CLOSE_RANGE, SYS_DUP2, SYS_DUP3,
    SYS_EXECVE, SYS_EXECVEAT, SYS_EXIT, SYS_EXIT_GROUP, SYS_FORK, SYS_FUTEX, SYS_MADVISE,
    SYS_MINCORE, SYS_MMAP, SYS_MPROTECT, SYS_MREMAP, SYS_MSYNC, SYS_MUNMAP, SYS_PRCTL, SYS_RSEQ,
    SYS_RT_SIGACTION, SYS_RT_SIGPENDING, SYS_RT_SIGPROCMASK, SYS_RT_SIGRETURN, SYS_SECCOMP,
    SYS_SIGALTSTACK, SYS_TGKILL, SYS_VFORK,
};

const PR_SET_SECCOMP: u64 = 22;
const RSEQ_FLAG_UNREGISTER: u64 = 1;
const ARCH_SET_FS: u64 = 0x1002;
const ARCH_GET_FS: u64 = 0x1003;
const PROT_EXEC: u64 = 4;
const MAP_PRIVATE: u64 = 2;
const MAP_TYPE: u64 = 0xf;
const MAP_ANONYMOUS: u64 = 0x20;
/// FD numbers kept for kbox's own files above the guest's (at least; an eighth of
/// RLIMIT_NOFILE when that is more).
const KBOX_FDS: u64 = 256;

#[derive(Debug)]
pub enum TrapError {
    /// kbox's own executable code could not be found in its address space.
    NoText,
    Filter(bpf::BpfError),
    Thread(std::io::Error),
}

impl std::fmt::Display for TrapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoText => f.write_str("cannot find kbox's own code in memory"),
            Self::Filter(e) => write!(f, "cannot build the trap filter: {e:?}"),
            Self::Thread(e) => write!(f, "cannot start the guest's thread: {e}"),
        }
    }
}

/// What a tier built on this one does with the guest's code as it becomes executable (the
/// rewrite tier patches its syscall sites; calls from sites left alone still trap).
#[derive(Debug, Clone, Copy)]
pub struct CodeTier {
    /// The hook a program's code passes through while the loader maps it.
    pub loading: fn() -> Box<dyn loader::CodeHook>,
    /// The guest mapped `len` bytes of file `fd` from `offset` at `start`, private and
    /// executable (`prot`: mmap's).
    pub mapped: fn(start: u64, len: u64, prot: u64, fd: i32, offset: u64),
    /// The running program is being replaced and no other thread of it is left.
    pub replaced: fn(),
}

/// What to run.
#[derive(Debug)]
pub struct Launch {
    pub path: CString,
    pub argv: Vec<Vec<u8>>,
    pub envp: Vec<Vec<u8>>,
    pub verbose: bool,
    /// As [`fd_floor`] gave it to [`reserve_fds`].
    pub fd_floor: i32,
    /// The user watches the calls (denied calls are counted, not refused by the filter).
    pub counted: bool,
    /// Set by a tier built on this one.
    pub code: Option<CodeTier>,
}

struct State {
    engine: Arc<Mutex<Engine>>,
    /// The seccomp tier's filter program: the policy every call is decided by.
    policy: Vec<SockFilter>,
    fd_floor: i32,
    code: Option<CodeTier>,
}

impl State {
    fn code_hook(&self) -> Box<dyn loader::CodeHook> {
        self.code.map_or_else(
            || Box::new(loader::AsInFile) as Box<dyn loader::CodeHook>,
            |c| (c.loading)(),
        )
    }
}

static STATE: OnceLock<State> = OnceLock::new();
/// The guest process is ending: every guest thread stops at its next call.
static EXITING: AtomicBool = AtomicBool::new(false);
static EXIT: Mutex<Option<Exit>> = Mutex::new(None);
static EXITED: Condvar = Condvar::new();
/// The running program's memory (its stack last).
static PROGRAM: Mutex<Vec<Region>> = Mutex::new(Vec::new());
/// The previous program's stack, until the new program's first call: the handler that
/// performed the exec ran on it.
static RETIRED: Mutex<Vec<Region>> = Mutex::new(Vec::new());
/// The guest thread's rseq registration (area, length, signature): Linux drops it at exec,
/// and so must kbox, or the kernel writes into the old program's memory at the next signal.
static RSEQ: Mutex<Option<(u64, u64, u64)>> = Mutex::new(None);

/// Everything of the tier's own a guest call may lock, held by the thread that forks while
/// it forks: the child then finds no lock held by a thread that does not exist there (its
/// only thread is the forking one, which releases them in both processes). Taken in one
/// order everywhere.
type Held<T> = std::sync::MutexGuard<'static, T>;

pub(crate) struct ForkHold {
    _program: Held<Vec<Region>>,
    _retired: Held<Vec<Region>>,
    _rseq: Held<Option<(u64, u64, u64)>>,
    _current: Held<Option<CString>>,
    _signals: Held<[signals::KernelSigaction; 65]>,
    _brk: Held<Option<brk::Break>>,
    _reserved: Held<std::collections::BTreeMap<u64, u64>>,
}

fn hold_for_fork() -> ForkHold {
    ForkHold {
        _program: lock(&PROGRAM),
        _retired: lock(&RETIRED),
        _rseq: lock(&RSEQ),
        _current: lock(&CURRENT_PROGRAM),
        _signals: signals::hold(),
        _brk: brk::hold(),
        _reserved: unmap::hold(),
    }
}

/// The path of the program this process runs (what /proc/self/exe names to the guest).
static CURRENT_PROGRAM: Mutex<Option<CString>> = Mutex::new(None);

fn current_program() -> CString {
    lock(&CURRENT_PROGRAM).clone().unwrap_or_default()
}

fn set_current_program(path: &CString) {
    *lock(&CURRENT_PROGRAM) = Some(path.clone());
}

/// Placeholders holding the guest's FD numbers while kbox opens its own files.
static RESERVED: Mutex<Vec<OwnedFd>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The FD floor: guest numbers below it, kbox's own from it up to RLIMIT_NOFILE (which kbox
/// has raised as far as it may).
pub fn fd_floor() -> i32 {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1024)
        .min(1 << 20);
    let floor = limit.saturating_sub(KBOX_FDS.max(limit / 8)).max(64);
    i32::try_from(floor).unwrap_or(1024)
}

/// Before kbox opens anything: fills every free FD number below the floor, so that kbox's
/// own files land above it. [`run`] frees them for the guest.
pub fn reserve_fds(floor: i32) {
    let Ok(null) = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) else {
        return;
    };
    let mut held = lock(&RESERVED);
    while let Ok(fd) = rustix::io::fcntl_dupfd_cloexec(&null, 0) {
        use std::os::fd::AsRawFd;
        if fd.as_raw_fd() >= floor {
            break;
        }
        held.push(fd);
    }
    held.push(null);
    crate::dispatch::set_fd_floor(floor);
}

/// Undoes [`reserve_fds`] when no in-process tier runs after all (auto chose another):
/// the numbers are free again and kbox's FDs need no floor.
pub fn unreserve_fds() {
    lock(&RESERVED).clear();
    crate::dispatch::set_fd_floor(0);
}

/// Closes the first guest process's FDs (all below the floor but stdin, stdout and stderr,
/// which are kbox's too), as its exit would.
pub fn close_guest_fds() {
    if let Some(st) = STATE.get() {
        let last = u64::try_from(st.fd_floor - 1).unwrap_or(0);
        // SAFETY: the guest's FD numbers; the guest has ended.
        unsafe { raw_syscall(SYS_CLOSE_RANGE, [3, last, 0, 0, 0, 0]) };
    }
}

/// Blocks every signal on the calling thread and the threads it starts afterwards.
/// Blocks every signal on the calling thread and the threads it starts afterwards, but
/// the one kbox interrupts its own waits with (sent only to those threads) and SIGSYS.
pub fn block_all_signals() {
    // SAFETY: a full set less one, applied to this thread's mask.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigdelset(&mut all, crate::dispatch::kick_signal());
        // A thread under the gate filter whose own call traps (the vDSO's fallback
        // syscall, which kernels take when the clock source cannot be read in user mode,
        // as under qemu's TCG) must be able to take SIGSYS: a blocked one kills the process.
        libc::sigdelset(&mut all, libc::SIGSYS);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
    }
}

/// kbox's executable segment: the one holding this function.
fn own_text() -> Option<(u64, u64)> {
    let mut range: (u64, u64) = (0, 0);
    extern "C" fn visit(info: *mut libc::dl_phdr_info, _: usize, data: *mut libc::c_void) -> i32 {
        let here = own_text as *const () as u64;
        // SAFETY: dl_iterate_phdr passes a valid info and our `range` as data.
        let (info, range) = unsafe { (&*info, &mut *data.cast::<(u64, u64)>()) };
        for i in 0..usize::from(info.dlpi_phnum) {
            // SAFETY: dlpi_phdr holds dlpi_phnum entries.
            let ph = unsafe { &*info.dlpi_phdr.add(i) };
            let start = info.dlpi_addr + ph.p_vaddr;
            let end = start + ph.p_memsz;
            if ph.p_type == libc::PT_LOAD
                && ph.p_flags & libc::PF_X != 0
                && (start..end).contains(&here)
            {
                *range = (start, end);
                return 1;
            }
        }
        0
    }
    // SAFETY: the callback only reads the headers and writes `range`.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&raw mut range).cast()) };
    (range.1 > range.0).then_some(range)
}

pub use process::marker;

/// Serves calls from patched sites (the rewrite tier's trampolines) as trapped ones.
pub fn accept_trampolines() {
    entry::init_trampolines();
}

/// Runs the guest until it exits; returns how it ended.
pub fn run(engine: Arc<Mutex<Engine>>, launch: Launch) -> Result<Exit, TrapError> {
    let text = own_text().ok_or(TrapError::NoText)?;
    let mut gate = vec![SockFilter::default(); bpf::MAX_INSNS];
    // Calls from kbox's code go to the host; calls from the notification gadget (forked
    // guest processes, whose kernel state is this process's) to kbox's receivers.
    let gadget = process::map_gadget().map_err(|_| TrapError::NoText)?;
    let regions = [
        (text.0, text.1, Action::Allow),
        (gadget.0, gadget.1, Action::Notify),
    ];
    let n = bpf::compile_ip_gate(HOST_ARCH, &[], &regions, Action::Trap(0), &mut gate)
        .map_err(TrapError::Filter)?;
    gate.truncate(n);
    let mut policy = vec![SockFilter::default(); bpf::MAX_INSNS];
    let (rules, checks) = (
        policy::rules(false, false, launch.counted),
        policy::checks(),
    );
    let n = bpf::compile_checked(HOST_ARCH, &rules, &checks, Action::Notify, &mut policy)
        .map_err(TrapError::Filter)?;
    policy.truncate(n);
    host_runs::init(&rules, &checks);
    let fd_floor = launch.fd_floor;
    let verbose = launch.verbose;
    if verbose {
        eprintln!(
            "kbox: syscall mode {}: the guest runs in kbox's process; calls outside kbox's code \
             ({:#x}..{:#x}) trap (filter of {} instructions); guest FDs below {fd_floor}",
            if launch.code.is_some() {
                "rewrite"
            } else {
                "trap"
            },
            text.0,
            text.1,
            gate.len()
        );
    }
    lock(&engine).set_no_forks();
    limits::init(launch.fd_floor);
    let _ = STATE.set(State {
        engine,
        policy,
        fd_floor,
        code: launch.code,
    });
    signals::install_initial();
    lock(&RESERVED).clear();
    std::thread::Builder::new()
        .name("kbox-guest".into())
        .stack_size(entry::KBOX_STACK)
        .spawn(move || guest_thread(&launch, &gate))
        .map_err(TrapError::Thread)?;
    let mut exit = lock(&EXIT);
    while exit.is_none() {
        exit = EXITED
            .wait(exit)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
    }
    Ok(exit.unwrap_or(Exit::KboxError))
}

fn set_exit(exit: Exit) {
    let mut e = lock(&EXIT);
    e.get_or_insert(exit);
    EXITED.notify_all();
}

/// The guest thread: loads the program, closes the filter over itself, starts it.
fn guest_thread(launch: &Launch, gate: &[SockFilter]) {
    let Some(st) = STATE.get() else {
        return set_exit(Exit::KboxError);
    };
    if !entry::adopt_current_thread() {
        return set_exit(Exit::KboxError);
    }
    let req = Request {
        path: launch.path.as_bytes().to_vec(),
        argv: launch.argv.clone(),
        envp: launch.envp.clone(),
        creds: Creds::default(),
    };
    let mut files = EngineFiles {
        engine: &st.engine,
        tid: gettid(),
    };
    let program = match loader::load(&mut files, &req, &mut *st.code_hook()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("kbox: {}: {e}", launch.path.to_string_lossy());
            let errno = rustix::io::Errno::from_raw_os_error(e.errno().0);
            return set_exit(Exit::from_exec_error(errno));
        }
    };
    // The task's name and /proc/self/exe are the program's, as after any exec.
    let _ = lock(&st.engine).exec_performed(gettid(), &launch.path);
    set_current_program(&launch.path);
    let (entry, sp, brk_start) = replace_program(program);
    brk::reset(brk_start);
    if let Err(e) = close_filter(gate, &st.engine) {
        eprintln!("kbox: cannot install the trap filter: {e}");
        return set_exit(Exit::KboxError);
    }
    // Signals stay blocked until the program's first instruction (its mask starts empty).
    entry::enter_guest(&entry::initial_registers(entry, sp), 0, 0, 0)
}

/// no_new_privs and the gate filter on this thread only, with a listener for the calls
/// forked guest processes send, served by the seccomp tier's receivers from here on.
fn close_filter(gate: &[SockFilter], engine: &Arc<Mutex<Engine>>) -> Result<(), std::io::Error> {
    const SECCOMP_SET_MODE_FILTER: libc::c_long = 1;
    const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_long = 1 << 3;
    const SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: libc::c_long = 1 << 5;
    let prog = libc::sock_fprog {
        len: u16::try_from(gate.len()).unwrap_or(u16::MAX),
        filter: gate.as_ptr().cast_mut().cast(),
    };
    // SAFETY: prctl and seccomp with a valid program; they affect this thread (and the
    // threads it starts) only.
    let listener = unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // As the seccomp tier's filter: once kbox has received a call, only a fatal signal
        // interrupts the wait (Linux 5.19+), and the engine interrupts what it serves.
        let install = |flags: libc::c_long| {
            libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_SET_MODE_FILTER,
                flags,
                &raw const prog,
            )
        };
        let mut fd =
            install(SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV);
        if fd < 0 {
            fd = install(SECCOMP_FILTER_FLAG_NEW_LISTENER);
        }
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        OwnedFd::from_raw_fd(i32::try_from(fd).map_err(|_| std::io::Error::other("listener"))?)
    };
    crate::runtime::serve_notifications(engine, crate::dispatch::lift_fd(listener))?;
    Ok(())
}

/// Unmaps the running program's image (not its stack, which the exec's handler runs on) to
/// make room for the next one at the same fixed addresses; its rseq area goes with it.
fn unmap_program_image() {
    if let Some(code) = STATE.get().and_then(|st| st.code)
        && entry::guest_threads() == 1
    {
        (code.replaced)();
    }
    if let Some((area, len, sig)) = lock(&RSEQ).take() {
        // SAFETY: unregisters exactly what the guest registered on this thread.
        unsafe { raw_syscall(SYS_RSEQ, [area, len, RSEQ_FLAG_UNREGISTER, sig, 0, 0]) };
    }
    let mut program = lock(&PROGRAM);
    let stack = program.pop();
    program.clear();
    lock(&RETIRED).extend(stack);
}

/// Stores a new program's memory and returns its entry, stack pointer and break.
fn replace_program(program: loader::Loaded) -> (u64, u64, u64) {
    let loader::Loaded {
        entry,
        sp,
        brk,
        mut image,
        stack,
    } = program;
    image.push(stack);
    let old = std::mem::replace(&mut *lock(&PROGRAM), image);
    lock(&RETIRED).extend(old);
    (entry, sp, brk)
}

/// The loader's files, read as the guest process may read them.
struct EngineFiles<'a> {
    engine: &'a Mutex<Engine>,
    tid: u32,
}

impl loader::Files for EngineFiles<'_> {
    fn executable(&mut self, path: &[u8]) -> Result<Vec<u8>, Errno> {
        let p = CString::new(path).map_err(|_| Errno::ENOENT)?;
        lock(self.engine).read_guest_file(self.tid, &p, true)
    }

    fn readable(&mut self, path: &[u8]) -> Result<Vec<u8>, Errno> {
        let p = CString::new(path).map_err(|_| Errno::ENOENT)?;
        lock(self.engine).read_guest_file(self.tid, &p, false)
    }
}

/// Serves one trapped guest call (entry.rs calls this on kbox's thread pointer).
fn serve(call: &mut entry::Trapped<'_>) {
    if EXITING.load(Ordering::Acquire) {
        // The process is ending: this thread's call is never made.
        thread_exit();
    }
    lock(&RETIRED).clear();
    let Some(st) = STATE.get() else {
        call.set_result(-i64::from(Errno::ENOSYS.0));
        return;
    };
    let (nr, args) = call.call();
    if host_runs::contains(nr) {
        let r = call.run_as_guest(nr, args);
        call.set_result(r);
        return;
    }
    let guest = InProcess::new(call.tid(), st.fd_floor);
    if nr == SYS_RT_SIGRETURN {
        // On the guest's own stack, where its signal frame is.
        call.resume_at(sigreturn_stub());
        return;
    }
    let data = SeccompData {
        nr: u32::try_from(nr).unwrap_or(u32::MAX),
        arch: HOST_ARCH.value(),
        instruction_pointer: 0,
        args,
    };
    // The seccomp tier's filter decides first: what it refuses, this tier refuses too.
    let (action, errno) = bpf::verdict_parts(bpf::evaluate(&st.policy, &data));
    let result = match action {
        bpf::VERDICT_ERRNO => Err(Errno(i32::from(errno))),
        bpf::VERDICT_ALLOW | bpf::VERDICT_LOG | bpf::VERDICT_NOTIFY => {
            match tier_call(call, st, &guest, nr, args) {
                Some(Handled::Result(r)) => r,
                Some(Handled::Restarted) => return,
                None if action == bpf::VERDICT_NOTIFY => engine_call(call, st, &guest, nr, args),
                None => Ok(call.run_as_guest(nr, args)),
            }
        }
        // The filter kills what no tier may run (x32 calls): so does this one.
        _ => guest_exited(st, &guest, Exit::GuestSignal(31)),
    };
    match result {
        Ok(RESTARTED) => {}
        Ok(v) => call.set_result(v),
        Err(e) => call.set_result(-i64::from(e.0)),
    }
}

enum Handled {
    Result(Result<i64, Errno>),
    /// The frame now starts a new program (execve).
    Restarted,
}

/// The calls this tier makes its own because the guest shares kbox's process; None for
/// the rest.
fn tier_call(
    call: &mut entry::Trapped<'_>,
    st: &State,
    guest: &InProcess,
    nr: u64,
    args: [u64; 6],
) -> Option<Handled> {
    let r = match nr {
        SYS_EXIT if entry::guest_threads() > 1 => thread_exit(),
        // A forked process ends as under the seccomp tier: its last thread's exit on the
        // host (the policy lets exit through), exit_group through the engine, which then
        // lets the host end it.
        SYS_EXIT if process::is_remote() => Ok(call.run_as_guest(nr, args)),
        SYS_EXIT_GROUP if process::is_remote() => Ok(process::engine_call(call, nr, args)),
        SYS_EXIT | SYS_EXIT_GROUP => guest_exited(st, guest, Exit::Guest((args[0] & 0xff) as u8)),
        SYS_BRK => Ok(i64::try_from(brk::brk(args[0])).unwrap_or(0)),
        SYS_MUNMAP => unmap::munmap(args[0], args[1]),
        SYS_MPROTECT | SYS_MSYNC | SYS_MINCORE | SYS_MADVISE
            if unmap::overlaps(args[0], args[1]) =>
        {
            Err(Errno::ENOMEM)
        }
        SYS_MREMAP if unmap::overlaps(args[0], args[1]) => Err(Errno::EFAULT),
        SYS_MMAP => {
            let r = call.run_as_guest(nr, args);
            if let Ok(at) = u64::try_from(r) {
                unmap::after_mmap(at, args[1], args[3]);
                let private_file =
                    args[3] & MAP_TYPE == MAP_PRIVATE && args[3] & MAP_ANONYMOUS == 0;
                if let Some(code) = st.code.filter(|_| private_file && args[2] & PROT_EXEC != 0) {
                    let fd = i32::try_from(args[4] & 0xffff_ffff).unwrap_or(-1);
                    (code.mapped)(at, args[1], args[2], fd, args[5]);
                }
            }
            Ok(r)
        }
        SYS_MREMAP => {
            let r = call.run_as_guest(nr, args);
            if let Ok(new) = u64::try_from(r) {
                unmap::after_mremap(args[0], args[1], new, args[2]);
            }
            Ok(r)
        }
        SYS_RSEQ => {
            let r = call.run_as_guest(nr, args);
            if r == 0 {
                *lock(&RSEQ) =
                    (args[2] & RSEQ_FLAG_UNREGISTER == 0).then_some((args[0], args[1], args[3]));
            }
            Ok(r)
        }
        SYS_ARCH_PRCTL => arch_prctl(call, guest, args),
        SYS_RT_SIGPROCMASK => signals::sigprocmask(call, guest.tid, args),
        SYS_RT_SIGACTION => signals::sigaction(guest.tid, args),
        SYS_SIGALTSTACK => signals::sigaltstack(call, guest.tid, args),
        // A filter of the guest's own would bind kbox's code on the thread too.
        SYS_SECCOMP => Err(Errno::EINVAL),
        SYS_PRCTL if args[0] == PR_SET_SECCOMP => Err(Errno::EINVAL),
        SYS_CLONE if threads::is_thread(args[0]) => threads::clone_thread(call, guest, args),
        SYS_CLONE | SYS_FORK | SYS_VFORK => process::fork(call, &st.engine, guest, nr, args),
        // The policy already answers clone3 with ENOSYS (libcs fall back to clone).
        SYS_CLONE3 => Err(Errno::ENOSYS),
        SYS_EXECVE | SYS_EXECVEAT => {
            return Some(
                match exec::execve(call, &st.engine, guest, args, nr == SYS_EXECVEAT) {
                    Ok(()) => Handled::Restarted,
                    Err(e) => Handled::Result(Err(e)),
                },
            );
        }
        SYS_CLOSE | SYS_DUP2 | SYS_DUP3 if touches_kbox_fd(nr, args, st.fd_floor) => {
            Err(Errno::EBADF)
        }
        _ => return limits::nofile(guest, nr, args).map(Handled::Result),
    };
    Some(Handled::Result(r))
}

/// The FD a call would close or make, when it is not the guest's to use: one of kbox's own
/// (at or above the floor) or one past the guest's RLIMIT_NOFILE.
fn touches_kbox_fd(nr: u64, args: [u64; 6], floor: i32) -> bool {
    // The kernel reads an FD argument's low 32 bits as an int.
    let fd = |a: u64| {
        let b = a.to_le_bytes();
        i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let limit = i64::from(floor).min(i64::try_from(limits::soft()).unwrap_or(i64::MAX));
    match nr {
        SYS_CLOSE => fd(args[0]) >= i64::from(floor),
        SYS_DUP2 | SYS_DUP3 => fd(args[1]) >= limit,
        _ => false,
    }
}

/// A call the engine serves (close_range is cut at the FD floor first).
fn engine_call(
    call: &mut entry::Trapped<'_>,
    st: &State,
    guest: &InProcess,
    nr: u64,
    mut args: [u64; 6],
) -> Result<i64, Errno> {
    if nr == SYS_CLOSE_RANGE {
        // The guest's numbers end at the floor.
        let last = u64::try_from(st.fd_floor - 1).unwrap_or(0);
        if args[0] > last {
            return Ok(0);
        }
        args[1] = args[1].min(last);
    }
    if process::is_remote() {
        return Ok(process::engine_call(call, nr, args));
    }
    // A wait the engine does on this thread ends for a signal the guest takes: the
    // watcher reads the guest's mask from here (the thread's own blocks everything now).
    crate::dispatch::set_guest_mask(guest.tid, Some(call.sigmask()));
    let reply = lock(&st.engine).handle(guest, u32::try_from(nr).unwrap_or(u32::MAX), args);
    let deferred = guest.deferred.borrow_mut().take();
    let r = match (deferred, reply) {
        (Some(deferred), _) => wait_deferred(call, guest, &deferred),
        (None, Reply::Value(v)) => Ok(v),
        (None, Reply::Fail(e)) => Err(e),
        (None, Reply::Continue) => Ok(call.run_as_guest(nr, args)),
    };
    crate::dispatch::set_guest_mask(guest.tid, None);
    match r {
        Err(Errno(512)) => Ok(interrupted(call, nr)),
        Ok(ERESTARTSYS) => Ok(interrupted(call, nr)),
        r => r,
    }
}

/// ERESTARTSYS, which a wait the engine ended early for a signal answers.
const ERESTARTSYS: i64 = -512;
/// The call restarts when the guest resumes (its result is not set).
const RESTARTED: i64 = i64::MIN;

/// The lowest signal pending for this thread that its guest mask lets through.
fn deliverable_signal(call: &entry::Trapped<'_>) -> Option<usize> {
    let mut pending = 0u64;
    // SAFETY: rt_sigpending into a local 8-byte set.
    unsafe {
        raw_syscall(
            SYS_RT_SIGPENDING,
            [(&raw mut pending) as u64, 8, 0, 0, 0, 0],
        )
    };
    let deliverable = pending & !call.sigmask() & !entry::SIGSYS_BIT;
    (deliverable != 0).then(|| deliverable.trailing_zeros() as usize + 1)
}

/// A call the engine ended early for a signal (ERESTARTSYS): the guest makes it again
/// after the signal's handler when that handler has SA_RESTART, else it fails with EINTR.
/// The signal itself is delivered on the way back to the guest's code.
fn interrupted(call: &mut entry::Trapped<'_>, nr: u64) -> i64 {
    match deliverable_signal(call) {
        Some(sig) if signals::restarts(sig) => {
            call.restart_syscall(nr);
            RESTARTED
        }
        _ => -i64::from(Errno::EINTR.0),
    }
}

/// Waits, with every signal still blocked, for another thread to answer a call the engine
/// deferred. A signal the guest would take ends the engine's wait (as the seccomp tier's
/// watcher does), which then answers ERESTARTSYS.
fn wait_deferred(
    call: &mut entry::Trapped<'_>,
    guest: &InProcess,
    deferred: &guest::Deferred,
) -> Result<i64, Errno> {
    const FUTEX_WAIT_PRIVATE: u64 = 128;
    let tick = libc::timespec {
        tv_sec: 0,
        tv_nsec: 10_000_000,
    };
    let mut signalled = false;
    while deferred.done.load(Ordering::Acquire) == 0 {
        let word = (&raw const deferred.done) as u64;
        // SAFETY: FUTEX_WAIT_PRIVATE on the answer's word, with a local timeout.
        unsafe {
            raw_syscall(
                SYS_FUTEX,
                [word, FUTEX_WAIT_PRIVATE, 0, (&raw const tick) as u64, 0, 0],
            )
        };
        if !signalled && deliverable_signal(call).is_some() {
            signalled = true;
            crate::dispatch::interrupt_waits_of(guest.tid);
        }
    }
    Ok(deferred.result.load(Ordering::Acquire))
}

fn arch_prctl(
    call: &mut entry::Trapped<'_>,
    guest: &InProcess,
    args: [u64; 6],
) -> Result<i64, Errno> {
    use crate::dispatch::Guest;
    match args[0] {
        ARCH_SET_FS => {
            call.guest_tp = args[1];
            Ok(0)
        }
        ARCH_GET_FS => {
            guest.write(args[1], &call.guest_tp.to_ne_bytes())?;
            Ok(0)
        }
        _ => Ok(call.run_as_guest(SYS_ARCH_PRCTL, args)),
    }
}

/// The guest process ends: the engine forgets it, kbox's main thread learns how it ended,
/// and this thread (the guest's, inside its signal handler) ends too.
fn guest_exited(st: &State, guest: &InProcess, exit: Exit) -> ! {
    if !EXITING.swap(true, Ordering::AcqRel) {
        host_runs::stop();
        let _ = lock(&st.engine).handle(
            guest,
            u32::try_from(SYS_EXIT_GROUP).unwrap_or(u32::MAX),
            [0; 6],
        );
        set_exit(exit);
    }
    thread_exit()
}

/// Ends the calling guest thread (inside its signal handler; it holds nothing of kbox's).
fn thread_exit() -> ! {
    entry::release_current_thread();
    loop {
        // SAFETY: ends this thread only.
        unsafe { raw_syscall(SYS_EXIT, [0; 6]) };
    }
}

/// A signal whose default action ends the process reached the guest.
fn guest_died(sig: i32) {
    if process::is_remote() {
        // A forked process dies of the signal itself, as natively: its parent (a guest
        // process) sees that in wait's status.
        // SAFETY: restores the default action and delivers the signal to this thread; with
        // SA_NODEFER the handler does not block it.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            raw_syscall(
                SYS_TGKILL,
                [
                    u64::from(std::process::id()),
                    u64::from(gettid()),
                    sig.cast_unsigned().into(),
                    0,
                    0,
                    0,
                ],
            );
        }
        return;
    }
    let Some(st) = STATE.get() else { return };
    let guest = InProcess::new(gettid(), st.fd_floor);
    guest_exited(
        st,
        &guest,
        Exit::GuestSignal(u8::try_from(sig).unwrap_or(0)),
    )
}
