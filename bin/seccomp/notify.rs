//! The supervisor's side of the listener: typed notifications and answers.
//!
//! A received notification is a [`Pending`], which every answer consumes, so "answer exactly
//! once" is checked by the compiler. A `Pending` dropped unanswered (a handler bug, or an
//! early return with `?`) answers ENOSYS on its way out, so the guest thread is never left
//! blocked forever.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use kbox_core::Errno;
use rustix::event::{PollFd, PollFlags};

use super::filter::errno_from_raw;
use super::sys;

/// One intercepted syscall, as the kernel reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notification {
    /// The kernel's cookie for this notification; valid until answered or the thread dies.
    pub id: u64,
    /// Thread id of the caller in the supervisor's pid namespace (0 if not visible there).
    pub pid: u32,
    pub nr: i32,
    /// `AUDIT_ARCH_*` of the call.
    pub arch: u32,
    pub instruction_pointer: u64,
    pub args: [u64; 6],
}

/// Why a notification operation failed.
#[derive(Debug)]
pub enum NotifyError {
    /// The notification is gone: its thread was killed, or (without the killable-wait flag)
    /// a signal interrupted the syscall. Nothing is left to answer.
    Gone,
    /// RECV failed.
    Recv(io::Error),
    /// SEND failed for another reason than the target being gone.
    Send(io::Error),
    /// ID_VALID failed for another reason than ENOENT.
    IdValid(io::Error),
    /// ADDFD failed; the errno is what the guest would see for the same failure (EMFILE when
    /// the target number is past its RLIMIT_NOFILE, EBADF for a bad source fd).
    AddFd(Errno),
    /// SET_FLAGS failed for another reason than the kernel not knowing the flag.
    SetFlags(io::Error),
    /// poll(2) on the listener failed.
    Poll(io::Error),
}

impl fmt::Display for NotifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Gone => f.write_str("the notified guest thread is gone (killed or interrupted)"),
            Self::Recv(e) => write!(f, "receiving a seccomp notification failed: {e}"),
            Self::Send(e) => write!(f, "answering a seccomp notification failed: {e}"),
            Self::IdValid(e) => write!(f, "checking a seccomp notification id failed: {e}"),
            Self::AddFd(e) => write!(f, "installing an fd in the guest failed: {e}"),
            Self::SetFlags(e) => write!(f, "setting seccomp listener flags failed: {e}"),
            Self::Poll(e) => write!(f, "polling the seccomp listener failed: {e}"),
        }
    }
}

impl std::error::Error for NotifyError {}

fn is_enoent(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOENT)
}

/// Where ADDFD puts the supervisor's file in the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdTarget {
    /// The lowest free number, as `open` would pick.
    Lowest,
    /// Exactly this number, replacing what was there (SECCOMP_ADDFD_FLAG_SETFD, like dup2).
    At(u32),
}

/// The listener fd of a guest's filter.
#[derive(Debug)]
pub struct NotifyFd {
    fd: OwnedFd,
}

impl AsFd for NotifyFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl NotifyFd {
    pub fn new(fd: OwnedFd) -> Self {
        Self { fd }
    }

    /// Waits for the next notification. `Ok(None)` when no task uses the filter any more
    /// (every guest process has exited and been reaped): RECV itself would then block
    /// forever, so the listener is polled first and its POLLHUP ends the loop.
    pub fn recv(&self) -> Result<Option<Pending<'_>>, NotifyError> {
        let mut raw = sys::SeccompNotif::default();
        loop {
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            match rustix::event::poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(NotifyError::Poll(e.into())),
            }
            let revents = fds[0].revents();
            if !revents.contains(PollFlags::IN) && revents.contains(PollFlags::HUP) {
                return Ok(None);
            }
            match sys::notif_recv(self.fd.as_fd(), &mut raw) {
                Ok(()) => break,
                // EINTR: our own signal. ENOENT: the caller died, or a signal interrupted its
                // syscall, between the notification being queued and our RECV; that
                // notification no longer exists, the next one will do.
                Err(e) if e.kind() == io::ErrorKind::Interrupted || is_enoent(&e) => {}
                Err(e) => return Err(NotifyError::Recv(e)),
            }
        }
        let d = raw.data;
        Ok(Some(Pending {
            listener: self,
            notif: Notification {
                id: raw.id,
                pid: raw.pid,
                nr: d.nr,
                arch: d.arch,
                instruction_pointer: d.instruction_pointer,
                args: d.args,
            },
        }))
    }

    /// Whether `id` still names a live, unanswered notification. Call it after reading
    /// guest memory for that notification: if the thread died meanwhile its pid may have
    /// been reused, and what was read belongs to another process.
    pub fn id_valid(&self, id: u64) -> Result<bool, NotifyError> {
        match sys::notif_id_valid(self.fd.as_fd(), id) {
            Ok(()) => Ok(true),
            Err(e) if is_enoent(&e) => Ok(false),
            Err(e) => Err(NotifyError::IdValid(e)),
        }
    }

    /// Asks the kernel to switch to the caller's CPU on wake-ups (SECCOMP_USER_NOTIF_FD_SYNC_
    /// WAKE_UP, kernel ≥ 6.6), which halves the round trip when the supervisor answers
    /// promptly. Ok(false) when the kernel does not know the flag.
    pub fn set_sync_wakeup(&self) -> Result<bool, NotifyError> {
        match sys::notif_set_flags(self.fd.as_fd(), sys::SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
            Err(e) => Err(NotifyError::SetFlags(e)),
        }
    }

    fn send(&self, resp: &mut sys::SeccompNotifResp) -> Result<(), NotifyError> {
        sys::notif_send(self.fd.as_fd(), resp).map_err(|e| {
            if is_enoent(&e) {
                NotifyError::Gone
            } else {
                NotifyError::Send(e)
            }
        })
    }

    fn add_fd_raw(
        &self,
        id: u64,
        src: BorrowedFd<'_>,
        target: FdTarget,
        cloexec: bool,
        send: bool,
    ) -> Result<i32, NotifyError> {
        let (setfd, newfd) = match target {
            FdTarget::Lowest => (0, 0),
            FdTarget::At(n) => (sys::SECCOMP_ADDFD_FLAG_SETFD, n),
        };
        let send = if send {
            sys::SECCOMP_ADDFD_FLAG_SEND
        } else {
            0
        };
        let newfd_flags = if cloexec {
            // O_CLOEXEC is a small positive constant on every Linux arch.
            u32::try_from(libc::O_CLOEXEC).unwrap_or(0)
        } else {
            0
        };
        let src = u32::try_from(std::os::fd::AsRawFd::as_raw_fd(&src))
            .map_err(|_| NotifyError::AddFd(Errno::EBADF))?;
        let req = sys::SeccompNotifAddfd {
            id,
            flags: setfd | send,
            srcfd: src,
            newfd,
            newfd_flags,
        };
        sys::notif_addfd(self.fd.as_fd(), &req).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => NotifyError::Gone,
            Some(raw) => NotifyError::AddFd(errno_from_raw(raw)),
            None => NotifyError::AddFd(Errno::EINVAL),
        })
    }
}

/// A notification that has not been answered yet. Every answer consumes it.
#[must_use = "an unanswered notification leaves the guest thread blocked (until drop answers ENOSYS)"]
#[derive(Debug)]
pub struct Pending<'fd> {
    listener: &'fd NotifyFd,
    notif: Notification,
}

impl Pending<'_> {
    pub fn notification(&self) -> &Notification {
        &self.notif
    }

    /// [`NotifyFd::id_valid`] for this notification.
    pub fn is_valid(&self) -> Result<bool, NotifyError> {
        self.listener.id_valid(self.notif.id)
    }

    /// The syscall returns `val`.
    pub fn respond_value(self, val: i64) -> Result<(), NotifyError> {
        self.answer(val, 0, 0)
    }

    /// The syscall fails with `errno`.
    pub fn respond_errno(self, errno: Errno) -> Result<(), NotifyError> {
        self.answer(0, -i32::from(errno.get()), 0)
    }

    /// The host kernel runs the syscall as if it had not been intercepted
    /// (SECCOMP_USER_NOTIF_FLAG_CONTINUE). Only for calls whose arguments the supervisor
    /// does not depend on: the guest may change pointed-to memory after the check.
    pub fn respond_continue(self) -> Result<(), NotifyError> {
        self.answer(0, 0, sys::SECCOMP_USER_NOTIF_FLAG_CONTINUE)
    }

    /// Installs `src` in the guest without answering (the notification stays pending);
    /// returns the guest's fd number. For an answer that needs the number first (an
    /// accepted socket kbox registers before the guest can use it).
    pub fn add_fd(
        &self,
        src: BorrowedFd<'_>,
        target: FdTarget,
        cloexec: bool,
    ) -> Result<i32, NotifyError> {
        self.listener
            .add_fd_raw(self.notif.id, src, target, cloexec, false)
    }

    /// Installs `src` in the guest and, atomically, answers the syscall with the new fd
    /// number (SECCOMP_ADDFD_FLAG_SEND), which it also returns. On a failure other than
    /// `Gone`, the guest's syscall fails with the same errno (EMFILE, as the guest's own
    /// `open` would have), so the notification is consumed either way.
    pub fn respond_add_fd(
        self,
        src: BorrowedFd<'_>,
        target: FdTarget,
        cloexec: bool,
    ) -> Result<i32, NotifyError> {
        let r = self
            .listener
            .add_fd_raw(self.notif.id, src, target, cloexec, true);
        match r {
            Ok(fd) => {
                std::mem::forget(self);
                Ok(fd)
            }
            Err(NotifyError::AddFd(errno)) => {
                self.respond_errno(errno)?;
                Err(NotifyError::AddFd(errno))
            }
            Err(e) => {
                std::mem::forget(self);
                Err(e)
            }
        }
    }

    fn answer(self, val: i64, error: i32, flags: u32) -> Result<(), NotifyError> {
        let mut resp = sys::SeccompNotifResp {
            id: self.notif.id,
            val,
            error,
            flags,
        };
        let r = self.listener.send(&mut resp);
        // Answered (or unanswerable): the drop fallback must not answer again.
        std::mem::forget(self);
        r
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let mut resp = sys::SeccompNotifResp {
            id: self.notif.id,
            val: 0,
            error: -i32::from(Errno::ENOSYS.get()),
            flags: 0,
        };
        // Best effort: the thread may be gone, and a drop has nobody to report to.
        let _ = self.listener.send(&mut resp);
    }
}
