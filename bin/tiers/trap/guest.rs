//! The engine's view of a guest thread in the trap tier: the thread is kbox's own, so its
//! memory is kbox's address space (read through process_vm_readv all the same, which turns
//! a wild pointer into EFAULT instead of a crash) and its FD table is kbox's, below the FD
//! floor.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};

use kbox_lkl::Errno;

use crate::dispatch::{Answer, Guest};
use crate::seccomp::guest_mem;

pub struct InProcess {
    pub tid: u32,
    /// Guest FD numbers are below this; kbox's own are at or above it.
    pub fd_floor: i32,
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
            None => {
                let new = rustix::io::fcntl_dupfd_cloexec(fd, 0).map_err(errno)?;
                let limit = super::limits::soft().min(u64::try_from(self.fd_floor).unwrap_or(0));
                if u64::try_from(new.as_raw_fd()).unwrap_or(u64::MAX) >= limit {
                    return Err(Errno::EMFILE);
                }
                new
            }
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
        None
    }
}
