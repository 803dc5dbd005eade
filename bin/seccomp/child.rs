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
    pid: Pid,
    pidfd: OwnedFd,
    handoff: SharedHandoff,
    killable_wait: bool,
    reaped: bool,
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
    spawn_with(cmd, prog, prog)
}

/// [`spawn`] with one filter for a child that got its own IPC namespace (`own_ipc`) and
/// another for one that did not (`host_ipc`); the child installs the one that fits.
pub fn spawn_with(
    cmd: &Command,
    own_ipc: &Program,
    host_ipc: &Program,
) -> Result<(Child, NotifyFd), SpawnError> {
    let handoff = SharedHandoff::new().map_err(SpawnError::Handoff)?;
    // SAFETY: the child branch below only calls `child_main`, which makes raw syscalls
    // (prctl, seccomp, execve, _exit) and atomic stores, and allocates nothing.
    let pid = unsafe { sys::fork() }.map_err(SpawnError::Fork)?;
    if pid == 0 {
        child_main(cmd, [own_ipc, host_ipc], &handoff);
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
    };
    let listener = wait_for_listener(&mut child)?;
    let fd = rustix::process::pidfd_getfd(&child.pidfd, listener, PidfdGetfdFlags::empty())
        .map_err(|e| SpawnError::GetFd(e.into()))?;
    // Releases the child's spin: it may exec now that the listener has a second holder.
    child
        .handoff
        .get()
        .state
        .store(HANDOFF_TAKEN, Ordering::Release);
    Ok((child, NotifyFd::new(fd)))
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
fn child_main(cmd: &Command, progs: [&Program; 2], handoff: &SharedHandoff) -> ! {
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
    let mut prog = progs[1];
    if let Some(root) = &cmd.root {
        let (rooted, own_ipc) = isolate(root);
        h.rooted.store(u32::from(rooted), Ordering::Release);
        h.own_ipc.store(u32::from(own_ipc), Ordering::Release);
        if own_ipc {
            prog = progs[0];
        }
    }
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
