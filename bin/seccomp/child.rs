//! Spawning the guest: fork, install the filter in the child, exec; the supervisor takes the
//! listener with `pidfd_getfd`.
//!
//! The hand-off cannot use a syscall in the child: once the filter is installed, any call
//! it makes (sendmsg, write, futex...) may be one the filter notifies, and the supervisor
//! cannot answer before it holds the listener — a deadlock. So the child stores the
//! listener's number in a shared page with plain atomic stores, and the parent, polling its
//! pidfd with a short timeout (it wakes at once if the child dies), copies the fd out of the
//! child with `pidfd_getfd`.
//!
//! The child must not exec before that copy: its own listener is close-on-exec, and a
//! listener nobody holds makes every notified syscall fail with ENOSYS. So it spins on the
//! shared page (no syscall, again) until the parent marks the fd taken, which costs at most
//! one parent poll interval of CPU. PR_SET_PDEATHSIG, set before the filter, ends the spin
//! (and the guest) if the spawning thread dies — note it is the *thread* that counts.

use std::ffi::{CString, OsStr, c_char};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::ptr;
use std::sync::atomic::Ordering;

use kbox_core::Errno;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags, WaitId, WaitIdOptions};

use super::filter::{self, InstallError, Program, errno_from_raw};
use super::notify::NotifyFd;
use super::sys::{
    self, HANDOFF_FAILED, HANDOFF_LISTENING, HANDOFF_PENDING, HANDOFF_TAKEN, SharedHandoff,
};

// Failing steps in the child, as stored in the hand-off page.
const STEP_NO_NEW_PRIVS: u32 = 1;
const STEP_SECCOMP: u32 = 2;
const STEP_EXEC: u32 = 3;
const STEP_PROGRAM: u32 = 4;
const STEP_PARENT_DEATH_SIGNAL: u32 = 5;
const STEP_INIT: u32 = 6;

/// Exit codes of a child that failed before or at exec (podman's conventions).
const EXIT_SETUP_FAILED: i32 = 125;
const EXIT_EXEC_FAILED: i32 = 127;

/// How long the parent sleeps on the pidfd between looks at the hand-off page.
const HANDOFF_POLL: Timespec = Timespec {
    tv_sec: 0,
    tv_nsec: 50_000,
};

#[derive(Debug)]
pub enum SpawnError {
    /// An argument or environment string contains a NUL byte.
    Nul,
    /// The shared hand-off page could not be mapped.
    Handoff(io::Error),
    Fork(io::Error),
    PidfdOpen(io::Error),
    /// `prctl(PR_SET_PDEATHSIG)` failed in the child.
    DeathSignal(Errno),
    /// kbox's init of the guest's PID namespace could not map its ids or start the guest.
    Init(Errno),
    /// Installing the filter failed in the child.
    Install(InstallError),
    /// The child exited before publishing its listener.
    ChildDied(ExitStatus),
    /// `pidfd_getfd` could not copy the listener out of the child.
    GetFd(io::Error),
    /// exec failed in the child (reported when it is waited for).
    Exec(Errno),
    Wait(io::Error),
    /// poll(2) on the child's pidfd failed.
    Poll(io::Error),
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Nul => f.write_str("guest argument or environment contains a NUL byte"),
            Self::Handoff(e) => write!(f, "mapping the hand-off page failed: {e}"),
            Self::Fork(e) => write!(f, "fork failed: {e}"),
            Self::PidfdOpen(e) => write!(f, "pidfd_open on the guest failed: {e}"),
            Self::DeathSignal(e) => write!(f, "prctl(PR_SET_PDEATHSIG) in the guest failed: {e}"),
            Self::Init(e) => write!(f, "starting the guest's PID namespace failed: {e}"),
            Self::Install(e) => write!(f, "installing the guest's filter failed: {e}"),
            Self::ChildDied(s) => write!(f, "guest child died before its filter was ready: {s:?}"),
            Self::GetFd(e) => write!(f, "pidfd_getfd of the guest's listener failed: {e}"),
            Self::Exec(e) => write!(f, "exec of the guest program failed: {e}"),
            Self::Wait(e) => write!(f, "waiting for the guest failed: {e}"),
            Self::Poll(e) => write!(f, "polling the guest's pidfd failed: {e}"),
        }
    }
}

impl std::error::Error for SpawnError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

/// The program to run, with every string and pointer array built before fork, because the
/// child may not allocate.
#[derive(Debug)]
pub struct Command {
    path: CString,
    // The pointer arrays point into these; they are kept alive (and never touched) here.
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    envp_ptrs: Vec<*const c_char>,
    /// Host working directory of the child (set before the filter, so not intercepted).
    cwd: Option<CString>,
    /// Host directory to chroot the child into (see [`Command::root`]).
    root: Option<Root>,
    /// FDs from 3 up to this one (exclusive) stay open in the child; all others above 2
    /// are closed before it runs anything (see [`Command::preserve_fds`]).
    keep_below: u32,
}

/// A chroot for the child, with the identity maps of the user namespace it enters when it
/// may not chroot where it is.
#[derive(Debug)]
struct Root {
    dir: CString,
    uid_map: CString,
    gid_map: CString,
}

impl Command {
    pub fn new<A, E>(path: &OsStr, argv: A, envp: E) -> Result<Self, SpawnError>
    where
        A: IntoIterator,
        A::Item: AsRef<OsStr>,
        E: IntoIterator,
        E::Item: AsRef<OsStr>,
    {
        fn c(s: &OsStr) -> Result<CString, SpawnError> {
            CString::new(s.as_bytes()).map_err(|_| SpawnError::Nul)
        }
        fn ptrs(strings: &[CString]) -> Vec<*const c_char> {
            strings
                .iter()
                .map(|s| s.as_ptr())
                .chain([ptr::null()])
                .collect()
        }
        let argv = argv
            .into_iter()
            .map(|a| c(a.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let envp = envp
            .into_iter()
            .map(|e| c(e.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            path: c(path)?,
            argv_ptrs: ptrs(&argv),
            envp_ptrs: ptrs(&envp),
            _argv: argv,
            _envp: envp,
            cwd: None,
            root: None,
            keep_below: 3,
        })
    }

    /// Keeps FDs 3..3+n open in the child (podman's `--preserve-fds`); every other FD the
    /// caller left open (a shell's `exec 7<file`, a CI runner's pipes) is closed, so the
    /// guest reaches no host file it was not given.
    pub fn preserve_fds(&mut self, n: u32) {
        self.keep_below = 3u32.saturating_add(n);
    }

    /// Chroots the child into host directory `dir` (after changing to the working
    /// directory, which must lie inside it) and gives it an IPC namespace of its own.
    /// Without the privilege for either, the child first enters a user namespace of its own,
    /// where its uid and gid map to themselves (so it is no more privileged on the host);
    /// whatever still fails, [`Child::rooted`] and [`Child::own_ipc`] say.
    pub fn root(&mut self, dir: &std::path::Path) -> Result<(), SpawnError> {
        let uid = rustix::process::getuid().as_raw();
        let gid = rustix::process::getgid().as_raw();
        let c = |s: String| CString::new(s).map_err(|_| SpawnError::Nul);
        self.root = Some(Root {
            dir: CString::new(dir.as_os_str().as_bytes()).map_err(|_| SpawnError::Nul)?,
            uid_map: c(format!("{uid} {uid} 1\n"))?,
            gid_map: c(format!("{gid} {gid} 1\n"))?,
        });
        Ok(())
    }

    /// Runs the child in host directory `dir`.
    pub fn current_dir(&mut self, dir: &std::path::Path) -> Result<(), SpawnError> {
        self.cwd = Some(CString::new(dir.as_os_str().as_bytes()).map_err(|_| SpawnError::Nul)?);
        Ok(())
    }
}

/// A running guest child.
#[derive(Debug)]
pub struct Child {
    /// The guest's first process (host pid).
    pid: Pid,
    /// The process kbox waits for: the guest itself, or kbox's init of the guest's PID
    /// namespace, which exits when the guest does.
    pidfd: OwnedFd,
    handoff: SharedHandoff,
    killable_wait: bool,
    reaped: bool,
    /// The guest runs under kbox's init in a PID namespace of its own.
    under_init: bool,
}

impl Child {
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Readable once the child has exited (for poll loops).
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Whether the filter has SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV.
    pub fn killable_wait(&self) -> bool {
        self.killable_wait
    }

    /// Whether the child is chrooted into the root its command gave.
    pub fn rooted(&self) -> bool {
        self.handoff.get().rooted.load(Ordering::Acquire) == 1
    }

    /// Whether the child has an IPC namespace of its own (and got the filter for that).
    pub fn own_ipc(&self) -> bool {
        self.handoff.get().own_ipc.load(Ordering::Acquire) == 1
    }

    /// Whether the guest runs in a PID namespace of its own (under kbox's init, host pid
    /// [`Child::init_pid`]).
    pub fn own_pid(&self) -> bool {
        self.under_init
    }

    /// The host pid of kbox's init of the guest's PID namespace (not a guest process).
    pub fn init_pid(&self) -> Option<u32> {
        if !self.under_init {
            return None;
        }
        fd_pid(self.pidfd.as_fd())
    }

    pub fn kill(&self) -> io::Result<()> {
        rustix::process::pidfd_send_signal(&self.pidfd, rustix::process::Signal::KILL)
            .map_err(io::Error::from)
    }

    /// Waits for the child to exit and reaps it. A failed exec is `Err(Exec(errno))`.
    pub fn wait(&mut self) -> Result<ExitStatus, SpawnError> {
        let status = loop {
            match rustix::process::waitid(WaitId::PidFd(self.pidfd.as_fd()), WaitIdOptions::EXITED)
            {
                Ok(Some(s)) => break s,
                Ok(None) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(SpawnError::Wait(e.into())),
            }
        };
        self.reaped = true;
        let h = self.handoff.get();
        if h.state.load(Ordering::Acquire) == HANDOFF_FAILED
            && h.step.load(Ordering::Relaxed) == STEP_EXEC
        {
            return Err(SpawnError::Exec(errno_from_raw(
                h.errno.load(Ordering::Relaxed),
            )));
        }
        if self.under_init && status.terminating_signal().is_none() {
            // The init's own status only says it ended; the guest's is in the page.
            let raw = h.guest_status.load(Ordering::Acquire);
            return Ok(if raw & 0x7f == 0 {
                ExitStatus::Exited((raw >> 8) & 0xff)
            } else {
                ExitStatus::Signaled(raw & 0x7f)
            });
        }
        Ok(match (status.exit_status(), status.terminating_signal()) {
            (_, Some(sig)) => ExitStatus::Signaled(sig),
            (Some(code), None) => ExitStatus::Exited(code),
            (None, None) => ExitStatus::Exited(0),
        })
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // An unreaped guest would linger as a zombie and keep its filter (and every pending
        // notification) alive; a supervisor that drops its child wants it gone.
        if !self.reaped {
            let _ = self.kill();
            let _ = self.wait();
        }
    }
}

/// Forks; the child installs `prog` and execs `cmd`. Returns once the supervisor holds the
/// listener, possibly before the exec: the execve call itself goes through the filter, so
/// if the filter notifies execve, the caller must answer it.
#[cfg(test)]
pub fn spawn(cmd: &Command, prog: &Program) -> Result<(Child, NotifyFd), SpawnError> {
    spawn_with(cmd, [prog; 4])
}

/// [`spawn`] with a filter for each isolation the child may end up with: `progs[i]` where
/// bit 0 of `i` says it has an IPC namespace of its own and bit 1 a PID namespace of its own
/// (then the guest's first process runs under a small init of kbox's, the namespace's
/// pid 1, which reaps orphans and ends the namespace when the guest ends). The child
/// installs the one that fits.
pub fn spawn_with(cmd: &Command, progs: [&Program; 4]) -> Result<(Child, NotifyFd), SpawnError> {
    let handoff = SharedHandoff::new().map_err(SpawnError::Handoff)?;
    let mut under_init = false;
    let pid = match &cmd.root {
        Some(root) => {
            // As root a PID namespace needs nothing else; otherwise it comes with a user
            // namespace (where the init has the capability it needs).
            let mut flags = CLONE_NEWPID | u64::from(SIGCHLD_BITS);
            if !rustix::process::geteuid().is_root() {
                flags |= CLONE_NEWUSER;
            }
            // SAFETY: the child branch only runs `init_main`, which makes raw syscalls and
            // atomic stores, allocates nothing and takes no libc lock.
            match unsafe { sys::clone_process(flags) } {
                Ok(0) => init_main(cmd, root, progs, &handoff, flags & CLONE_NEWUSER != 0),
                Ok(pid) => {
                    under_init = true;
                    pid
                }
                // SAFETY: as for `spawn`.
                Err(_) => unsafe { sys::fork() }.map_err(SpawnError::Fork)?,
            }
        }
        // SAFETY: the child branch below only calls `child_main`, which makes raw syscalls
        // (prctl, seccomp, execve, _exit) and atomic stores, and allocates nothing.
        None => unsafe { sys::fork() }.map_err(SpawnError::Fork)?,
    };
    if pid == 0 {
        child_main(cmd, progs, &handoff);
    }
    let pid = Pid::from_raw(pid).ok_or_else(|| SpawnError::Fork(io::ErrorKind::Other.into()))?;
    let pidfd = match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(e) => {
            // Without a pidfd the child cannot be managed: stop it and reap it by pid.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
            return Err(SpawnError::PidfdOpen(e.into()));
        }
    };
    let mut child = Child {
        pid,
        pidfd,
        handoff,
        killable_wait: false,
        reaped: false,
        under_init,
    };
    let listener = wait_for_listener(&mut child)?;
    // Under an init, the listener is in the guest's table: the init's only child.
    let guest_pidfd = if under_init {
        let guest = first_child(pid)
            .ok_or_else(|| SpawnError::GetFd(io::Error::from(io::ErrorKind::NotFound)))?;
        child.pid = guest;
        Some(
            rustix::process::pidfd_open(guest, PidfdFlags::empty())
                .map_err(|e| SpawnError::PidfdOpen(e.into()))?,
        )
    } else {
        None
    };
    let holder = guest_pidfd.as_ref().unwrap_or(&child.pidfd);
    let fd = rustix::process::pidfd_getfd(holder, listener, PidfdGetfdFlags::empty())
        .map_err(|e| SpawnError::GetFd(e.into()))?;
    // Releases the child's spin: it may exec now that the listener has a second holder.
    child
        .handoff
        .get()
        .state
        .store(HANDOFF_TAKEN, Ordering::Release);
    Ok((child, NotifyFd::new(fd)))
}

const CLONE_NEWPID: u64 = 0x2000_0000;
const CLONE_NEWUSER: u64 = 0x1000_0000;
/// SIGCHLD as a clone exit signal.
const SIGCHLD_BITS: u32 = 17;

/// The first child of host process `pid` (/proc/PID/task/PID/children).
fn first_child(pid: Pid) -> Option<Pid> {
    let raw = pid.as_raw_nonzero().get();
    let text = std::fs::read_to_string(format!("/proc/{raw}/task/{raw}/children")).ok()?;
    let first = text.split_whitespace().next()?.parse::<i32>().ok()?;
    Pid::from_raw(first)
}

/// The pid a pidfd refers to (its fdinfo's `Pid:` line).
fn fd_pid(fd: BorrowedFd<'_>) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// kbox's init in the guest's new PID namespace (its pid 1): maps its ids if it is in a
/// new user namespace, isolates like [`child_main`], starts the guest as its child, then
/// reaps every process that ends up its child until the guest itself ends, whose status it
/// leaves in the hand-off page. Its own exit then ends every process left in the namespace.
/// It has no filter (it makes no call the guest could steer) and, being pid 1, ignores every
/// signal it has no handler for, so the terminal's ^C reaches the guest, not it.
fn init_main(
    cmd: &Command,
    root: &Root,
    progs: [&Program; 4],
    handoff: &SharedHandoff,
    new_user_ns: bool,
) -> ! {
    let h = handoff.get();
    let fail = |step: u32, errno: i32| -> ! {
        h.step.store(step, Ordering::Relaxed);
        h.errno.store(errno, Ordering::Relaxed);
        h.state.store(HANDOFF_FAILED, Ordering::Release);
        sys::exit_now(EXIT_SETUP_FAILED)
    };
    if let Err(e) =
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
    {
        fail(STEP_PARENT_DEATH_SIGNAL, e.raw_os_error())
    }
    if new_user_ns && let Err(e) = write_id_maps(root) {
        fail(STEP_INIT, e.raw_os_error())
    }
    // The init never execs, so close-on-exec never closes what it inherited from kbox (the
    // image, its lock, the run directory's lock...): close it all now, but what the guest
    // is to get (`--preserve-fds`).
    let _ = sys::close_from(cmd.keep_below);
    h.own_pid.store(1, Ordering::Release);
    // SAFETY: as in `spawn_with`: the child runs `child_main`, raw syscalls only.
    let guest = match unsafe { sys::clone_process(u64::from(SIGCHLD_BITS)) } {
        Ok(0) => child_main(cmd, progs, handoff),
        Ok(pid) => pid,
        Err(e) => fail(STEP_INIT, e.raw_os_error().unwrap_or(0)),
    };
    loop {
        match sys::wait_any() {
            Some((pid, status)) if pid == guest => {
                h.guest_status.store(status, Ordering::Release);
                sys::exit_now(0)
            }
            Some(_) => {}
            None => sys::exit_now(0),
        }
    }
}

/// Polls the hand-off page until the child publishes its listener or fails.
fn wait_for_listener(child: &mut Child) -> Result<i32, SpawnError> {
    loop {
        let h = child.handoff.get();
        match h.state.load(Ordering::Acquire) {
            HANDOFF_PENDING => {}
            HANDOFF_LISTENING => {
                child.killable_wait = h.killable.load(Ordering::Relaxed) != 0;
                return Ok(h.listener.load(Ordering::Relaxed));
            }
            HANDOFF_TAKEN => unreachable!("only this function's caller marks the fd taken"),
            _ => {
                let errno = errno_from_raw(h.errno.load(Ordering::Relaxed));
                let err = match h.step.load(Ordering::Relaxed) {
                    STEP_PARENT_DEATH_SIGNAL => SpawnError::DeathSignal(errno),
                    STEP_INIT => SpawnError::Init(errno),
                    STEP_NO_NEW_PRIVS => SpawnError::Install(InstallError::NoNewPrivs(errno)),
                    STEP_PROGRAM => SpawnError::Install(InstallError::ProgramTooLong),
                    _ => SpawnError::Install(InstallError::Seccomp(errno)),
                };
                let _ = child.wait();
                return Err(err);
            }
        }
        let mut fds = [PollFd::new(&child.pidfd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&HANDOFF_POLL)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(SpawnError::Poll(e.into())),
        }
        // Exited without publishing (and without a FAILED record, e.g. killed).
        if fds[0].revents().contains(PollFlags::IN)
            && child.handoff.get().state.load(Ordering::Acquire) == HANDOFF_PENDING
        {
            let status = child.wait()?;
            return Err(SpawnError::ChildDied(status));
        }
    }
}

/// An IPC namespace of the child's own and a chroot into `root.dir`, entering a user
/// namespace of its own first when either needs a privilege the child lacks. Returns
/// (chrooted, own IPC namespace). Raw syscalls on prepared strings only (a fork's child).
fn isolate(root: &Root) -> (bool, bool) {
    let unshare = |flags| {
        // SAFETY: CLONE_NEWIPC and CLONE_NEWUSER unshare no memory, files or fs context
        // this single-threaded child relies on; they only change which namespaces its
        // credentials and SysV objects belong to.
        unsafe { rustix::thread::unshare_unsafe(flags) }
    };
    let mut own_ipc = unshare(rustix::thread::UnshareFlags::NEWIPC).is_ok();
    let mut rooted = rustix::process::chroot(root.dir.as_c_str()).is_ok();
    if !(own_ipc && rooted) && enter_user_namespace(root, &unshare).is_ok() {
        own_ipc = own_ipc || unshare(rustix::thread::UnshareFlags::NEWIPC).is_ok();
        rooted = rooted || rustix::process::chroot(root.dir.as_c_str()).is_ok();
    }
    (rooted, own_ipc)
}

/// A user namespace where the child's uid and gid map to themselves.
fn enter_user_namespace(
    root: &Root,
    unshare: &dyn Fn(rustix::thread::UnshareFlags) -> rustix::io::Result<()>,
) -> rustix::io::Result<()> {
    unshare(rustix::thread::UnshareFlags::NEWUSER)?;
    write_id_maps(root)
}

/// Maps the process's uid and gid to themselves in the user namespace it just entered.
fn write_id_maps(root: &Root) -> rustix::io::Result<()> {
    let write = |path: &std::ffi::CStr, text: &std::ffi::CStr| -> rustix::io::Result<()> {
        let fd = rustix::fs::open(
            path,
            rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        rustix::io::write(&fd, text.to_bytes()).map(|_| ())
    };
    // gid_map may only be written once setgroups is denied (unprivileged maps).
    match write(c"/proc/self/setgroups", c"deny") {
        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(e),
    }
    write(c"/proc/self/uid_map", &root.uid_map)?;
    write(c"/proc/self/gid_map", &root.gid_map)
}

/// The child between fork and exec: async-signal-safe calls only, never returns.
/// The host capabilities a guest keeps when kbox runs as root: those over the files it can
/// reach anyway (its chroot, `-b` binds) and, for `--net=host`, low ports. The rest go,
/// from the bounding set too (an exec as root would grant them again): above all
/// CAP_NET_ADMIN, with which any socket's ioctls reconfigure the host's interfaces, and
/// CAP_SYS_ADMIN, CAP_NET_RAW, CAP_SYS_CHROOT, CAP_SYS_PTRACE. Run as another user,
/// there is nothing to drop and the calls fail harmlessly.
fn drop_host_capabilities() {
    use rustix::thread::{self, CapabilitySet as C};
    let keep = C::CHOWN
        | C::DAC_OVERRIDE
        | C::DAC_READ_SEARCH
        | C::FOWNER
        | C::FSETID
        | C::NET_BIND_SERVICE;
    for bit in 0..64u32 {
        let cap = C::from_bits_retain(1u64 << bit);
        if !keep.contains(cap) && thread::capability_is_in_bounding_set(cap).unwrap_or(false) {
            let _ = thread::remove_capability_from_bounding_set(cap);
        }
    }
    if let Ok(mut sets) = thread::capabilities(None) {
        sets.effective &= keep;
        sets.permitted &= keep;
        sets.inheritable &= keep;
        let _ = thread::set_capabilities(None, sets);
    }
}

fn child_main(cmd: &Command, progs: [&Program; 4], handoff: &SharedHandoff) -> ! {
    let h = handoff.get();
    let fail = |step: u32, errno: i32, code: i32| -> ! {
        h.step.store(step, Ordering::Relaxed);
        h.errno.store(errno, Ordering::Relaxed);
        h.state.store(HANDOFF_FAILED, Ordering::Release);
        sys::exit_now(code)
    };
    sys::unblock_all_signals();
    if let Some(dir) = &cmd.cwd
        && let Err(e) = rustix::process::chdir(dir.as_c_str())
    {
        fail(
            STEP_PARENT_DEATH_SIGNAL,
            e.raw_os_error(),
            EXIT_SETUP_FAILED,
        )
    }
    // Every FD the caller left open above the preserved ones goes (the listener comes
    // later; kbox's own FDs are close-on-exec anyway).
    let _ = sys::close_from(cmd.keep_below);
    let mut which = if h.own_pid.load(Ordering::Acquire) == 1 {
        2
    } else {
        0
    };
    if let Some(root) = &cmd.root {
        let (rooted, own_ipc) = isolate(root);
        h.rooted.store(u32::from(rooted), Ordering::Release);
        h.own_ipc.store(u32::from(own_ipc), Ordering::Release);
        which |= usize::from(own_ipc);
    }
    let prog = progs[which];
    drop_host_capabilities();
    // Before the filter, while prctl surely is not notified.
    if let Err(e) =
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
    {
        fail(
            STEP_PARENT_DEATH_SIGNAL,
            e.raw_os_error(),
            EXIT_SETUP_FAILED,
        )
    }
    match filter::install(prog) {
        Ok(l) => {
            h.listener.store(l.fd, Ordering::Relaxed);
            h.killable
                .store(u32::from(l.killable_wait), Ordering::Relaxed);
            h.state.store(HANDOFF_LISTENING, Ordering::Release);
            while h.state.load(Ordering::Acquire) != HANDOFF_TAKEN {
                std::hint::spin_loop();
            }
        }
        Err(InstallError::NoNewPrivs(e)) => {
            fail(STEP_NO_NEW_PRIVS, i32::from(e.get()), EXIT_SETUP_FAILED)
        }
        Err(InstallError::Seccomp(e)) => fail(STEP_SECCOMP, i32::from(e.get()), EXIT_SETUP_FAILED),
        Err(InstallError::ProgramTooLong) => fail(STEP_PROGRAM, 0, EXIT_SETUP_FAILED),
    }
    // SAFETY: both arrays are NULL-terminated pointers into `cmd`'s CStrings, which the
    // parent's copy of `cmd` keeps alive (and the child's memory is a copy of it).
    let errno = unsafe { sys::execve(&cmd.path, cmd.argv_ptrs.as_ptr(), cmd.envp_ptrs.as_ptr()) };
    fail(STEP_EXEC, errno, EXIT_EXEC_FAILED)
}
