//! How each x86_64 syscall that asm-generic lacks is expressed with the syscalls it has.
//! The equivalences are those documented in the syscalls' man pages (e.g. open(2): open is
//! openat with AT_FDCWD).

use super::{generic as g, x86_64 as x};

/// One argument of a rewritten call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arg {
    /// The guest's argument at this index.
    Guest(u8),
    /// A fixed value.
    Const(u64),
}

/// A pure reordering: call asm-generic `nr` with `args` built from the guest's arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rewrite {
    pub nr: u32,
    pub args: &'static [Arg],
}

impl Rewrite {
    /// The argument registers of the rewritten call; unused ones are zero.
    pub fn apply(&self, guest: [u64; 6]) -> [u64; 6] {
        let mut out = [0; 6];
        for (slot, arg) in out.iter_mut().zip(self.args) {
            *slot = match *arg {
                Arg::Guest(i) => guest[usize::from(i)],
                Arg::Const(v) => v,
            };
        }
        out
    }
}

/// Cases that need more than reordering: a structure or unit changes on the way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conversion {
    /// dup2(o, n) is dup3(o, n, 0) except when o == n: dup2 then returns n if o is open
    /// (EBADF otherwise) where dup3 fails with EINVAL.
    Dup2SameFd,
    /// poll(fds, n, ms) is ppoll(fds, n, ts, NULL, 0) with `ms` as a timespec (NULL if < 0).
    PollTimeoutMs,
    /// select(n, r, w, e, tv) is pselect6(n, r, w, e, ts, NULL) with the timeval as a
    /// timespec and the remaining time written back as a timeval.
    SelectTimeval,
    /// alarm(s) is setitimer(ITIMER_REAL) with the old value rounded to seconds.
    AlarmViaSetitimer,
    /// getdents writes `struct linux_dirent` records; getdents64 records are reformatted.
    LegacyDirents,
    /// utime(p, utimbuf) is utimensat(AT_FDCWD, p, ts, 0) with seconds widened to timespecs.
    UtimbufToTimespec,
    /// utimes(p, tv) / futimesat(d, p, tv): utimensat with timevals turned into timespecs.
    TimevalToTimespec,
    /// time(t) is the seconds of gettimeofday, also stored to *t when t is not NULL.
    TimeViaGettimeofday,
    /// epoll_create(n) is epoll_create1(0) after checking n > 0 (EINVAL otherwise).
    EpollCreateSize,
}

/// How to run an x86_64 syscall on the asm-generic kernel library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lowering {
    /// asm-generic has the same syscall under this number.
    Same(u32),
    /// A reordering of arguments onto another syscall.
    Rewrite(Rewrite),
    /// Another syscall after a conversion the dispatcher performs.
    Convert { nr: u32, conversion: Conversion },
    /// x86-specific process state (arch_prctl, TLS, I/O ports, LDT...): served by the host,
    /// never the kernel library.
    HostOnly,
    /// Removed from Linux or never implemented: ENOSYS.
    Obsolete,
}

/// `AT_FDCWD` (-100) as it sits in a 64-bit argument register.
pub const AT_FDCWD_ARG: u64 = 0u64.wrapping_sub(100);
const AT_SYMLINK_NOFOLLOW: u64 = 0x100;
const AT_REMOVEDIR: u64 = 0x200;
const O_CREAT_WRONLY_TRUNC: u64 = 0o100 | 0o1 | 0o1000;
const SIGCHLD: u64 = 17;
const CLONE_VM: u64 = 0x100;
const CLONE_VFORK: u64 = 0x4000;

use Arg::{Const as C, Guest as A};
const CWD: Arg = C(AT_FDCWD_ARG);

const fn rw(nr: u32, args: &'static [Arg]) -> Lowering {
    Lowering::Rewrite(Rewrite { nr, args })
}

const fn conv(nr: u32, conversion: Conversion) -> Lowering {
    Lowering::Convert { nr, conversion }
}

/// How x86_64 syscall `nr` runs on the kernel library; None if `nr` is not an x86_64
/// syscall.
pub fn lower_x86_64(nr: u32) -> Option<Lowering> {
    let entry = super::x86_64::entry(nr)?;
    if let Some(same) = entry.generic {
        return Some(Lowering::Same(same));
    }
    Some(match nr {
        x::OPEN => rw(g::OPENAT, &[CWD, A(0), A(1), A(2)]),
        x::CREAT => rw(g::OPENAT, &[CWD, A(0), C(O_CREAT_WRONLY_TRUNC), A(1)]),
        x::STAT => rw(g::NEWFSTATAT, &[CWD, A(0), A(1), C(0)]),
        x::LSTAT => rw(g::NEWFSTATAT, &[CWD, A(0), A(1), C(AT_SYMLINK_NOFOLLOW)]),
        x::ACCESS => rw(g::FACCESSAT, &[CWD, A(0), A(1)]),
        x::MKDIR => rw(g::MKDIRAT, &[CWD, A(0), A(1)]),
        x::RMDIR => rw(g::UNLINKAT, &[CWD, A(0), C(AT_REMOVEDIR)]),
        x::UNLINK => rw(g::UNLINKAT, &[CWD, A(0), C(0)]),
        x::LINK => rw(g::LINKAT, &[CWD, A(0), CWD, A(1), C(0)]),
        x::SYMLINK => rw(g::SYMLINKAT, &[A(0), CWD, A(1)]),
        x::READLINK => rw(g::READLINKAT, &[CWD, A(0), A(1), A(2)]),
        x::RENAME => rw(g::RENAMEAT, &[CWD, A(0), CWD, A(1)]),
        x::CHMOD => rw(g::FCHMODAT, &[CWD, A(0), A(1)]),
        x::CHOWN => rw(g::FCHOWNAT, &[CWD, A(0), A(1), A(2), C(0)]),
        x::LCHOWN => rw(
            g::FCHOWNAT,
            &[CWD, A(0), A(1), A(2), C(AT_SYMLINK_NOFOLLOW)],
        ),
        x::MKNOD => rw(g::MKNODAT, &[CWD, A(0), A(1), A(2)]),
        x::PIPE => rw(g::PIPE2, &[A(0), C(0)]),
        x::INOTIFY_INIT => rw(g::INOTIFY_INIT1, &[C(0)]),
        x::EVENTFD => rw(g::EVENTFD2, &[A(0), C(0)]),
        x::SIGNALFD => rw(g::SIGNALFD4, &[A(0), A(1), A(2), C(0)]),
        // A NULL sigmask makes epoll_pwait ignore its size argument.
        x::EPOLL_WAIT => rw(g::EPOLL_PWAIT, &[A(0), A(1), A(2), A(3), C(0), C(0)]),
        // ppoll on no fds with no timeout sleeps until a signal, which is pause().
        x::PAUSE => rw(g::PPOLL, &[C(0), C(0), C(0), C(0), C(0)]),
        x::GETPGRP => rw(g::GETPGID, &[C(0)]),
        x::FORK => rw(g::CLONE, &[C(SIGCHLD), C(0), C(0), C(0), C(0)]),
        x::VFORK => rw(
            g::CLONE,
            &[C(CLONE_VM | CLONE_VFORK | SIGCHLD), C(0), C(0), C(0), C(0)],
        ),
        x::DUP2 => conv(g::DUP3, Conversion::Dup2SameFd),
        x::POLL => conv(g::PPOLL, Conversion::PollTimeoutMs),
        x::SELECT => conv(g::PSELECT6, Conversion::SelectTimeval),
        x::ALARM => conv(g::SETITIMER, Conversion::AlarmViaSetitimer),
        x::GETDENTS => conv(g::GETDENTS64, Conversion::LegacyDirents),
        x::UTIME => conv(g::UTIMENSAT, Conversion::UtimbufToTimespec),
        x::UTIMES | x::FUTIMESAT => conv(g::UTIMENSAT, Conversion::TimevalToTimespec),
        x::TIME => conv(g::GETTIMEOFDAY, Conversion::TimeViaGettimeofday),
        x::EPOLL_CREATE => conv(g::EPOLL_CREATE1, Conversion::EpollCreateSize),
        x::ARCH_PRCTL
        | x::MODIFY_LDT
        | x::IOPL
        | x::IOPERM
        | x::SET_THREAD_AREA
        | x::GET_THREAD_AREA
        | x::URETPROBE
        | x::MEMFD_SECRET => Lowering::HostOnly,
        _ => Lowering::Obsolete,
    })
}
