//! The tier-neutral dispatch engine: given one intercepted syscall of one guest thread, decide
//! whether the kernel library serves it, the host runs it, or it fails, and do the work.
//! A tier (seccomp notifications today; SIGSYS trap and rewriting later) supplies a [`Guest`]
//! to reach the calling thread's memory and FD table, and turns the [`Reply`] into its own
//! answer.
//!
//! The central invariant (docs/dispatch.md): every guest FD the kernel library serves has the
//! same number in the guest process's kernel task as in the guest's host FD table, where a
//! host placeholder (a shadow memfd, or an empty directory for directories) holds the number.
//! The host therefore allocates numbers (lowest free, RLIMIT_NOFILE, EMFILE) and runs reads,
//! writes and mmaps on shadows natively; the kernel task mirrors the table for every call
//! that needs the real file.

mod binds;
mod datagrams;
mod exec;
mod fdlist;
mod files;
mod forward;
mod hostio;
mod ifioctl;
mod inprocess;
mod interrupt;
mod linux;
mod listeners;
pub mod overview;
mod own_tasks;
mod pidview;
pub mod policy;
mod proc_files;
mod procs;
mod rights;
mod shadow;
mod signals;
mod sockets;
mod workers;

use std::ffi::CString;
use std::io::Write;
use std::os::fd::BorrowedFd;

use kbox_core::sysno::generic as g;
use kbox_lkl::{Errno, Task};

pub use hostio::{lift as lift_fd, set_fd_floor};
pub use inprocess::read_program;
pub use interrupt::{interrupt_waits_of, kick_signal, set_guest_mask};
pub use procs::{Procs, descendants, fork_helper};

/// What the tier does with the call once the engine is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The call returns this value.
    Value(i64),
    /// The call fails with this errno.
    Fail(Errno),
    /// The host runs the call as the guest made it.
    Continue,
}

impl From<Result<i64, Errno>> for Reply {
    fn from(r: Result<i64, Errno>) -> Self {
        match r {
            Ok(v) => Reply::Value(v),
            Err(e) => Reply::Fail(e),
        }
    }
}

/// The calling guest thread, as a tier reaches it.
pub trait Guest {
    /// Host thread id of the caller.
    fn tid(&self) -> u32;
    /// Copies guest memory at `addr` into `buf`; EFAULT when any of it is unmapped.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Errno>;
    /// Copies `buf` to guest memory at `addr`; EFAULT when any of it is unmapped.
    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), Errno>;
    /// A NUL-terminated string of at most PATH_MAX bytes (ENAMETOOLONG past that).
    fn read_path(&self, addr: u64) -> Result<CString, Errno>;
    /// Puts a duplicate of `fd` in the guest's FD table at the lowest free number, or at
    /// `at` (replacing what is there, as dup2 does), and makes that number the call's
    /// result in the same step (one round trip for the seccomp tier). The engine still
    /// returns `Reply::Value(number)`; a tier that has already answered ignores it.
    fn answer_with_fd(
        &self,
        fd: BorrowedFd<'_>,
        at: Option<i32>,
        cloexec: bool,
    ) -> Result<i32, Errno>;
    /// Takes the call over to answer it later; the tier then answers nothing now. None if
    /// the tier cannot wait (the engine fails the call instead).
    fn defer(&self) -> Option<Box<dyn Answer>>;
    /// The engine is about to do something slow (fork a task, fill a shadow, write one
    /// back, prepare an exec): a tier that receives calls on several threads lets another
    /// one receive meanwhile.
    fn slow(&self) {}
}

/// An answer to give later, from another thread (a call that blocks, such as accept).
pub trait Answer: Send {
    fn fail(self: Box<Self>, e: Errno);
    fn value(self: Box<Self>, v: i64);
    /// As [`Guest::answer_with_fd`].
    fn with_fd(self: Box<Self>, fd: BorrowedFd<'_>, cloexec: bool);
    /// Puts a duplicate of `fd` in the guest's FD table at the lowest free number without
    /// answering yet; the number.
    fn add_fd(&self, fd: BorrowedFd<'_>, cloexec: bool) -> Result<i32, Errno>;
}

/// Settings the engine needs from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    pub verbose: bool,
    pub shadow_limit: u64,
    /// The image file (exec copies are kept per image across runs).
    pub image: std::path::PathBuf,
    /// `-b HOST:GUEST` pairs, GUEST absolute without `..`.
    pub binds: Vec<(std::path::PathBuf, std::path::PathBuf)>,
    /// Serve `/dev/shm` from a host directory of kbox's (POSIX shared memory and named
    /// semaphores must be one file for every process that opens them).
    pub shared_memory: bool,
    /// `--net=host`: the guest's AF_INET/AF_INET6 sockets are the host's own.
    pub host_network: bool,
}

/// The engine: per-process kernel tasks, shadows, exec copies.
pub struct Engine {
    procs: Procs,
    shadows: shadow::Shadows,
    exec: exec::ExecDir,
    settings: Settings,
    /// Guest memory to put back once the current call is answered (exec.rs).
    restore: Option<exec::Restore>,
    pumps: sockets::Pumps,
    binds: binds::Binds,
    /// Host numbers of the calls that name other processes (signals.rs).
    pid_calls: Vec<u32>,
    /// Sockets accepted on threads, for the engine to register (sockets.rs).
    adopted: sockets::Adoptions,
}

impl Engine {
    /// `root` is the task every first guest process is forked from (chrooted into the image).
    pub fn new(root: Task, settings: Settings) -> Result<Engine, std::io::Error> {
        let image_dev = files::lkl_stat_path(&root, c"/").map_or(0, |st| st.st_dev);
        let exec = exec::ExecDir::create(&settings.image, image_dev)?;
        let mut binds = settings.binds.clone();
        if settings.shared_memory {
            binds.push((exec.shm_dir()?, std::path::PathBuf::from("/dev/shm")));
        }
        Ok(Engine {
            procs: Procs::new(root),
            shadows: shadow::Shadows::new(settings.shadow_limit),
            exec,
            binds: binds::Binds::new(&binds)?,
            settings,
            restore: None,
            pumps: sockets::Pumps::default(),
            pid_calls: policy::pid_targeted().filter_map(policy::host_nr).collect(),
            adopted: sockets::Adoptions::default(),
        })
    }

    /// The host directory the guest's processes run in.
    pub fn host_cwd(&self) -> &std::path::Path {
        self.exec.path()
    }

    /// The host directory that is the guest processes' root when the tier can chroot them
    /// (then kbox never writes guest memory to exec).
    pub fn host_root(&self) -> &std::path::Path {
        self.exec.root()
    }

    /// The host pid of kbox's init of the guest's PID namespace: the parent of the first
    /// guest process (and of orphans), but not a guest process itself.
    pub fn set_init(&mut self, pid: u32) {
        self.procs.set_init(pid);
    }

    /// Whether the guest processes run chrooted into [`Engine::host_root`].
    pub fn set_rooted(&mut self, rooted: bool) {
        self.exec.set_mode(if rooted {
            exec::ExecMode::Rooted
        } else {
            exec::ExecMode::Rewrite
        });
    }

    /// No guest process forks unseen (an in-process tier that refuses process creation):
    /// calls that change inherited state skip looking for children to snapshot.
    pub fn set_no_forks(&mut self) {
        self.procs.set_no_forks();
    }

    /// Host pids of the guest processes the engine knows.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.pids()
    }

    /// Serves one syscall `nr` (host arch numbering) with `args`.
    pub fn handle(&mut self, guest: &dyn Guest, nr: u32, args: [u64; 6]) -> Reply {
        let targeted = self
            .pid_calls
            .contains(&nr)
            .then(|| syscall_name(nr))
            .flatten()
            .and_then(|name| self.pid_targeted(guest.tid(), name, args));
        let reply = match (targeted, lower(nr, args)) {
            (Some(reply), _) => reply,
            (None, Some((gnr, gargs, conv))) => self.dispatch(guest, nr, gnr, gargs, conv),
            (None, None) => Reply::Fail(Errno::ENOSYS),
        };
        if self.settings.verbose {
            self.trace(guest.tid(), nr, args, reply);
        }
        reply
    }

    /// Forgets every process and flushes what they had open for writing, before halt.
    pub fn shutdown(&mut self) {
        self.procs.clear(&mut self.shadows);
        self.pumps.shutdown_all();
    }

    /// Prepares the kernel library's network for guests (loopback up).
    pub fn network_up(root: &Task) -> Result<(), Errno> {
        sockets::loopback_up(root)
    }

    fn trace(&self, tid: u32, nr: u32, args: [u64; 6], reply: Reply) {
        let name = syscall_name(nr).unwrap_or("?");
        let outcome = match reply {
            Reply::Value(v) => format!("= {v}"),
            Reply::Fail(e) => {
                let note = if e == Errno::ENOSYS {
                    " (not handled by kbox)"
                } else {
                    ""
                };
                format!("= -{} {}{note}", e.0, e.describe().map_or("", |d| d.0))
            }
            Reply::Continue => "-> host".to_string(),
        };
        let _ = writeln!(
            std::io::stderr().lock(),
            "kbox: [{tid}] {name}({:#x}, {:#x}, {:#x}) {outcome}",
            args[0],
            args[1],
            args[2]
        );
    }

    fn dispatch(
        &mut self,
        guest: &dyn Guest,
        host_nr: u32,
        nr: u32,
        args: [u64; 6],
        conv: Conv,
    ) -> Reply {
        let tid = guest.tid();
        self.adopt_accepted();
        if nr == g::EXIT_GROUP && self.procs.end_unmet(tid) {
            return Reply::Continue;
        }
        let Some(pid) = self.procs.attach(tid, &mut self.shadows, &|| guest.slow()) else {
            return Reply::Fail(Errno::ESRCH);
        };
        if matches!(
            nr,
            g::EXECVE
                | g::EXECVEAT
                | g::EXIT_GROUP
                | g::SYNC
                | g::SYNCFS
                | g::FSYNC
                | g::FDATASYNC
                | g::SOCKET
                | g::BIND
                | g::CONNECT
                | g::LISTEN
                | g::ACCEPT
                | g::ACCEPT4
                | g::MOUNT
                | g::UMOUNT2
        ) {
            guest.slow();
        }
        if nr == g::UMOUNT2 {
            // A kernel FD kbox keeps would make the file system busy.
            self.procs.release_all_kept(&mut self.shadows);
        }
        if changes_inherited_state(nr) && self.inherited_change(pid, nr, args) {
            self.procs.before_change(pid, &|| guest.slow());
        }
        match nr {
            g::OPENAT => self.open(guest, pid, args).into(),
            g::OPENAT2 => Reply::Fail(Errno::ENOSYS),
            g::CLOSE => self.close(guest, pid, args[0]),
            g::CLOSE_RANGE => self.close_range(pid, args),
            g::DUP if self.served(pid, fd_arg(args[0])).is_some() => {
                self.dup(guest, pid, args[0], None, false, false).into()
            }
            g::DUP => Reply::Continue,
            g::DUP3 => self.dup3(guest, pid, args, conv),
            g::FCNTL => self.fcntl(guest, pid, args),
            g::FSTAT => self.fstat(guest, pid, args),
            g::NEWFSTATAT => self.fstatat(guest, pid, args),
            g::STATX => self.statx(guest, pid, args),
            g::GETDENTS64 => self.getdents(guest, pid, args, conv == Conv::LegacyDirents),
            g::UTIMENSAT if matches!(conv, Conv::Utimbuf | Conv::Timeval) => {
                self.legacy_utimes(guest, pid, args, conv == Conv::Utimbuf)
            }
            g::FCHDIR => self.fchdir(pid, args[0]),
            g::FSYNC | g::FDATASYNC => self.fsync(pid, nr, args[0]),
            g::EXECVE | g::EXECVEAT => {
                match self.shadows.take_changes() {
                    Some(ids) => ids.into_iter().for_each(|id| self.exec.changed(id)),
                    None => self.exec.forget_all(),
                }
                if nr == g::EXECVE {
                    self.execve(guest, pid, files::AT_FDCWD, args[0], args[1])
                } else {
                    self.execve(guest, pid, args[0], args[1], args[2])
                }
            }
            g::EXIT_GROUP => self.exit_group(pid),
            g::READLINKAT => self.readlinkat(guest, pid, args),
            g::UNAME => self.uname(guest, pid, args[0]),
            g::SYNC => {
                self.procs.flush_all(&mut self.shadows);
                self.forward(guest, pid, nr, args)
            }
            g::SOCKET => self.socket(guest, pid, args),
            g::BIND | g::CONNECT => self.sock_addr_call(guest, pid, nr, args),
            g::LISTEN | g::SETSOCKOPT => self.sock_forward(guest, pid, nr, args),
            g::GETSOCKNAME | g::GETPEERNAME => self.sock_name(guest, pid, nr, args),
            g::GETSOCKOPT => self.getsockopt(guest, pid, args),
            g::ACCEPT => self.accept(guest, pid, [args[0], args[1], args[2], 0, 0, 0]),
            g::ACCEPT4 => self.accept(guest, pid, args),
            g::SENDTO => self.sendto(guest, pid, args),
            g::SENDMSG => self.sendmsg(guest, pid, args),
            g::SENDMMSG => self.sendmmsg(guest, pid, args),
            g::RECVFROM => self.recvfrom(guest, pid, args),
            g::RECVMSG => self.recvmsg(guest, pid, args),
            g::RECVMMSG => self.recvmmsg(guest, pid, args),
            g::PIDFD_SEND_SIGNAL => self.pidfd_send_signal(pid, args),
            // Only the interface and routing block is notified (policy::checks).
            g::IOCTL => self.interface_ioctl(guest, pid, args),
            _ if forward::shape(nr).is_some() => self.forward(guest, pid, nr, args),
            _ => {
                let _ = host_nr;
                Reply::Fail(Errno::ENOSYS)
            }
        }
    }
}

/// Calls that change state a forked child inherits from its parent's kernel task.
fn changes_inherited_state(nr: u32) -> bool {
    matches!(
        nr,
        g::CLOSE
            | g::CLOSE_RANGE
            | g::DUP3
            | g::CHDIR
            | g::FCHDIR
            | g::CHROOT
            | g::UMASK
            | g::SETUID
            | g::SETGID
            | g::SETREUID
            | g::SETREGID
            | g::SETRESUID
            | g::SETRESGID
            | g::SETFSUID
            | g::SETFSGID
            | g::SETGROUPS
            | g::EXECVE
            | g::EXECVEAT
            | g::EXIT_GROUP
    )
}

impl Engine {
    /// Whether this particular call changes inherited kernel state (closing or replacing a
    /// host-only FD does not).
    fn inherited_change(&self, pid: u32, nr: u32, args: [u64; 6]) -> bool {
        match nr {
            g::CLOSE => self.served(pid, fd_arg(args[0])).is_some(),
            g::DUP3 => self.served(pid, fd_arg(args[1])).is_some(),
            _ => true,
        }
    }
}

/// An x86_64 call that needs more than renumbering on the way to asm-generic (aarch64 has
/// none of these calls, so it never makes one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum Conv {
    None,
    /// dup2: same-number dup2 succeeds where dup3 fails.
    Dup2,
    /// getdents: getdents64's records rewritten as `struct linux_dirent`.
    LegacyDirents,
    /// utime: a `struct utimbuf` (seconds) instead of two timespecs.
    Utimbuf,
    /// utimes, futimesat: two timevals instead of two timespecs.
    Timeval,
}

/// The asm-generic number and arguments of host call `nr`.
#[cfg(target_arch = "x86_64")]
fn lower(nr: u32, args: [u64; 6]) -> Option<(u32, [u64; 6], Conv)> {
    use kbox_core::sysno::{Conversion, Lowering, lower_x86_64};
    match lower_x86_64(nr)? {
        Lowering::Same(g) => Some((g, args, Conv::None)),
        Lowering::Rewrite(rw) => Some((rw.nr, rw.apply(args), Conv::None)),
        Lowering::Convert {
            nr: g,
            conversion: Conversion::Dup2SameFd,
        } => Some((g, [args[0], args[1], 0, 0, 0, 0], Conv::Dup2)),
        Lowering::Convert {
            nr: g,
            conversion: Conversion::LegacyDirents,
        } => Some((g, args, Conv::LegacyDirents)),
        // utime(path, times) and utimes(path, times) act like utimensat(AT_FDCWD, ...);
        // futimesat(dirfd, path, times) names its directory.
        Lowering::Convert {
            nr: g,
            conversion: Conversion::UtimbufToTimespec,
        } => Some((
            g,
            [files::AT_FDCWD, args[0], args[1], 0, 0, 0],
            Conv::Utimbuf,
        )),
        Lowering::Convert {
            nr: g,
            conversion: Conversion::TimevalToTimespec,
        } if nr == kbox_core::sysno::x86_64::FUTIMESAT => {
            Some((g, [args[0], args[1], args[2], 0, 0, 0], Conv::Timeval))
        }
        Lowering::Convert {
            nr: g,
            conversion: Conversion::TimevalToTimespec,
        } => Some((
            g,
            [files::AT_FDCWD, args[0], args[1], 0, 0, 0],
            Conv::Timeval,
        )),
        Lowering::Convert { .. } | Lowering::HostOnly | Lowering::Obsolete => None,
    }
}

#[cfg(target_arch = "aarch64")]
fn lower(nr: u32, args: [u64; 6]) -> Option<(u32, [u64; 6], Conv)> {
    Some((nr, args, Conv::None))
}

/// Host thread `tid`'s (pid, tid) as the guest knows them.
pub fn guest_ids(tid: u32) -> Option<(u32, u32)> {
    let pid = pidview::guest_pid(procs::tgid_of(tid)?)?;
    Some((pid, pidview::guest_pid(tid)?))
}

/// The name of host syscall `nr`.
pub fn syscall_name(nr: u32) -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    return kbox_core::sysno::x86_64::name(nr);
    #[cfg(target_arch = "aarch64")]
    return kbox_core::sysno::aarch64::name(nr);
}

/// Register-sized argument as the kernel library's `long`.
fn arg(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// A guest FD argument (the low 32 bits, as the kernel reads an `int`).
fn fd_arg(v: u64) -> i32 {
    i32::from_ne_bytes(u32::try_from(v & 0xffff_ffff).unwrap_or(0).to_ne_bytes())
}

/// An FD number as a register argument (sign-extended, as the kernel reads an `int`).
fn fdv(fd: i32) -> u64 {
    u64::from_ne_bytes(i64::from(fd).to_ne_bytes())
}

/// Runs a kernel-library call on `task` with guest-style u64 arguments.
fn lkl(task: &Task, nr: u32, args: [u64; 6]) -> Result<i64, Errno> {
    task.syscall(nr, args.map(arg))
        .map(|v| i64::from_ne_bytes(u64::try_from(v).unwrap_or(0).to_ne_bytes()))
}

/// A pointer to our own memory as a kernel-library argument (no MMU: its user pointers are
/// ours).
fn ptr<T>(p: *const T) -> u64 {
    p as usize as u64
}
