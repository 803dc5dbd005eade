//! The engine's view of a guest thread in the trap tier: the thread is kbox's own, so its
//! memory is kbox's address space (read through process_vm_readv all the same, which turns
//! a wild pointer into EFAULT instead of a crash) and its FD table is kbox's, below the FD
//! floor.

use std::cell::RefCell;
use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};

use kbox_lkl::Errno;

use crate::dispatch::{Answer, Guest};
use crate::seccomp::guest_mem;

pub struct InProcess {
    pub tid: u32,
    /// Guest FD numbers are below this; kbox's own are at or above it.
    pub fd_floor: i32,
    /// A call the engine took over to answer from another thread (a blocking accept).
    pub deferred: RefCell<Option<Arc<Deferred>>>,
}

impl InProcess {
    pub fn new(tid: u32, fd_floor: i32) -> InProcess {
        InProcess {
            tid,
            fd_floor,
            deferred: RefCell::new(None),
        }
    }
}

/// The answer to a deferred call: the calling guest thread waits on `done` (a futex word)
/// while the engine's thread blocks in the kernel library for it.
pub struct Deferred {
    pub done: AtomicU32,
    pub result: AtomicI64,
}

impl Deferred {
    fn finish(&self, v: i64) {
        self.result.store(v, Ordering::Release);
        self.done.store(1, Ordering::Release);
        // SAFETY: FUTEX_WAKE_PRIVATE on a word this struct owns.
        unsafe {
            kbox_arch::trap::raw_syscall(
                super::sysno::SYS_FUTEX,
                [(&raw const self.done) as u64, 129, 1, 0, 0, 0],
            )
        };
    }
}

/// Puts `fd` in the guest's FD table (kbox's own) at the lowest free guest number.
fn install_lowest(fd: BorrowedFd<'_>, cloexec: bool, fd_floor: i32) -> Result<i32, Errno> {
    let errno = |e: rustix::io::Errno| Errno(e.raw_os_error());
    let new = rustix::io::fcntl_dupfd_cloexec(fd, 0).map_err(errno)?;
    let limit = super::limits::soft().min(u64::try_from(fd_floor).unwrap_or(0));
    if u64::try_from(new.as_raw_fd()).unwrap_or(u64::MAX) >= limit {
        return Err(Errno::EMFILE);
    }
    if !cloexec {
        rustix::io::fcntl_setfd(&new, rustix::io::FdFlags::empty()).map_err(errno)?;
    }
    Ok(new.into_raw_fd())
}

struct InProcessAnswer {
    deferred: Arc<Deferred>,
    fd_floor: i32,
}

impl Answer for InProcessAnswer {
    fn fail(self: Box<Self>, e: Errno) {
        self.deferred.finish(-i64::from(e.0));
    }

    fn value(self: Box<Self>, v: i64) {
        self.deferred.finish(v);
    }

    fn with_fd(self: Box<Self>, fd: BorrowedFd<'_>, cloexec: bool) {
        let r = install_lowest(fd, cloexec, self.fd_floor);
        self.deferred
            .finish(r.map_or_else(|e| -i64::from(e.0), i64::from));
    }

    fn add_fd(&self, fd: BorrowedFd<'_>, cloexec: bool) -> Result<i32, Errno> {
        install_lowest(fd, cloexec, self.fd_floor)
    }
}

fn mem_errno(e: &guest_mem::MemError) -> Errno {
    Errno(i32::from(e.errno().get()))
}

impl Guest for InProcess {
    fn tid(&self) -> u32 {
        self.tid
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        guest_mem::read(self.tid, addr, buf).map_err(|e| mem_errno(&e))
    }

    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), Errno> {
        guest_mem::write(self.tid, addr, buf).map_err(|e| mem_errno(&e))
    }

    fn read_path(&self, addr: u64) -> Result<CString, Errno> {
        guest_mem::read_cstr(self.tid, addr, guest_mem::PATH_MAX).map_err(|e| mem_errno(&e))
    }

    fn answer_with_fd(
        &self,
        fd: BorrowedFd<'_>,
        at: Option<i32>,
        cloexec: bool,
    ) -> Result<i32, Errno> {
        let errno = |e: rustix::io::Errno| Errno(e.raw_os_error());
        let new = match at {
            None => return install_lowest(fd, cloexec, self.fd_floor),
            Some(n) if n < 0 || n >= self.fd_floor => return Err(Errno::EBADF),
            Some(n) if n == fd.as_raw_fd() => {
                // dup2 onto itself: the number stays as it is.
                return Ok(n);
            }
            Some(n) => {
                // SAFETY: n is a guest number below the floor (never one of kbox's); dup3
                // replaces whatever the guest had there, as dup2 does.
                let r = unsafe { libc::dup3(fd.as_raw_fd(), n, libc::O_CLOEXEC) };
                if r < 0 {
                    return Err(Errno(
                        std::io::Error::last_os_error().raw_os_error().unwrap_or(9),
                    ));
                }
                // SAFETY: dup3 just returned this FD, which nothing else owns.
                unsafe { OwnedFd::from_raw_fd(r) }
            }
        };
        if !cloexec {
            rustix::io::fcntl_setfd(&new, rustix::io::FdFlags::empty()).map_err(errno)?;
        }
        Ok(new.into_raw_fd())
    }

    fn defer(&self) -> Option<Box<dyn Answer>> {
        let deferred = Arc::new(Deferred {
            done: AtomicU32::new(0),
            result: AtomicI64::new(0),
        });
        *self.deferred.borrow_mut() = Some(Arc::clone(&deferred));
        Some(Box::new(InProcessAnswer {
            deferred,
            fd_floor: self.fd_floor,
        }))
    }
}
