//! Typed wrappers for the syscalls kbox itself makes on the kernel library (mounting,
//! file I/O for shadows, identity). Guests' syscalls go through the raw interface.
use crate::errno::Errno;
use crate::kernel::{Kernel, Task};
use crate::sysno;
use std::ffi::CStr;

pub const AT_FDCWD: i32 = -100;
pub const O_RDONLY: u32 = 0;
pub const O_WRONLY: u32 = 1;
pub const O_RDWR: u32 = 2;
pub const O_CREAT: u32 = 0o100;
pub const O_EXCL: u32 = 0o200;
pub const O_TRUNC: u32 = 0o1000;
pub const O_APPEND: u32 = 0o2000;
pub const O_DIRECTORY: u32 = 0o200000;
pub const O_CLOEXEC: u32 = 0o2000000;

/// The kernel library's `struct stat` (the asm-generic layout, 128 bytes).
pub use kbox_core::abi::stat::GenericStat as Stat;

/// Something that runs syscalls: the calling thread's task ([`Kernel`]) or a [`Task`].
pub trait Syscalls {
    fn raw(&self, no: u32, args: [usize; 6]) -> Result<usize, Errno>;

    fn getpid(&self) -> Result<i32, Errno> {
        let pid = self.raw(sysno::GETPID, [0; 6])?;
        i32::try_from(pid).map_err(|_| Errno::EINVAL)
    }

    fn open(&self, path: &CStr, flags: u32, mode: u32) -> Result<i32, Errno> {
        let fd = self.raw(
            sysno::OPENAT,
            [at_fdcwd(), addr(path), flags as usize, mode as usize, 0, 0],
        )?;
        i32::try_from(fd).map_err(|_| Errno::EBADF)
    }

    fn close(&self, fd: i32) -> Result<(), Errno> {
        self.raw(sysno::CLOSE, [fd_arg(fd), 0, 0, 0, 0, 0])
            .map(drop)
    }

    fn read(&self, fd: i32, buf: &mut [u8]) -> Result<usize, Errno> {
        self.raw(
            sysno::READ,
            [fd_arg(fd), buf.as_mut_ptr() as usize, buf.len(), 0, 0, 0],
        )
    }

    fn write(&self, fd: i32, buf: &[u8]) -> Result<usize, Errno> {
        self.raw(
            sysno::WRITE,
            [fd_arg(fd), buf.as_ptr() as usize, buf.len(), 0, 0, 0],
        )
    }

    fn pread(&self, fd: i32, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
        let offset = usize::try_from(offset).map_err(|_| Errno::EINVAL)?;
        self.raw(
            sysno::PREAD64,
            [
                fd_arg(fd),
                buf.as_mut_ptr() as usize,
                buf.len(),
                offset,
                0,
                0,
            ],
        )
    }

    fn lseek(&self, fd: i32, offset: i64, whence: u32) -> Result<u64, Errno> {
        self.raw(
            sysno::LSEEK,
            [fd_arg(fd), reg(offset), whence as usize, 0, 0, 0],
        )
        .map(|o| o as u64)
    }

    fn fsync(&self, fd: i32) -> Result<(), Errno> {
        self.raw(sysno::FSYNC, [fd_arg(fd), 0, 0, 0, 0, 0])
            .map(drop)
    }

    fn mkdir(&self, path: &CStr, mode: u32) -> Result<(), Errno> {
        self.raw(
            sysno::MKDIRAT,
            [at_fdcwd(), addr(path), mode as usize, 0, 0, 0],
        )
        .map(drop)
    }

    fn unlink(&self, path: &CStr) -> Result<(), Errno> {
        self.raw(sysno::UNLINKAT, [at_fdcwd(), addr(path), 0, 0, 0, 0])
            .map(drop)
    }

    fn rename(&self, from: &CStr, to: &CStr) -> Result<(), Errno> {
        self.raw(
            sysno::RENAMEAT,
            [at_fdcwd(), addr(from), at_fdcwd(), addr(to), 0, 0],
        )
        .map(drop)
    }

    fn chdir(&self, path: &CStr) -> Result<(), Errno> {
        self.raw(sysno::CHDIR, [addr(path), 0, 0, 0, 0, 0])
            .map(drop)
    }

    fn chroot(&self, path: &CStr) -> Result<(), Errno> {
        self.raw(sysno::CHROOT, [addr(path), 0, 0, 0, 0, 0])
            .map(drop)
    }

    fn getcwd(&self) -> Result<Vec<u8>, Errno> {
        let mut buf = vec![0u8; 4096];
        let len = self.raw(
            sysno::GETCWD,
            [buf.as_mut_ptr() as usize, buf.len(), 0, 0, 0, 0],
        )?;
        buf.truncate(len.saturating_sub(1));
        Ok(buf)
    }

    fn stat(&self, path: &CStr) -> Result<Stat, Errno> {
        let mut st = Stat::default();
        self.raw(
            sysno::NEWFSTATAT,
            [at_fdcwd(), addr(path), &raw mut st as usize, 0, 0, 0],
        )?;
        Ok(st)
    }

    fn fstat(&self, fd: i32) -> Result<Stat, Errno> {
        let mut st = Stat::default();
        self.raw(sysno::FSTAT, [fd_arg(fd), &raw mut st as usize, 0, 0, 0, 0])?;
        Ok(st)
    }

    fn mount(
        &self,
        source: &CStr,
        target: &CStr,
        fstype: &CStr,
        flags: u64,
        data: Option<&CStr>,
    ) -> Result<(), Errno> {
        let data = data.map_or(0, addr);
        self.raw(
            sysno::MOUNT,
            [
                addr(source),
                addr(target),
                addr(fstype),
                usize::try_from(flags).map_err(|_| Errno::EINVAL)?,
                data,
                0,
            ],
        )
        .map(drop)
    }

    fn umount(&self, target: &CStr, flags: u32) -> Result<(), Errno> {
        self.raw(sysno::UMOUNT2, [addr(target), flags as usize, 0, 0, 0, 0])
            .map(drop)
    }
}

fn addr(s: &CStr) -> usize {
    s.as_ptr() as usize
}

/// File descriptors and AT_FDCWD travel sign-extended, as in a register.
fn fd_arg(fd: i32) -> usize {
    reg(i64::from(fd))
}

/// A signed value as the register bit pattern the kernel reads back as signed.
fn reg(value: i64) -> usize {
    usize::from_ne_bytes(value.to_ne_bytes())
}

fn at_fdcwd() -> usize {
    fd_arg(AT_FDCWD)
}

impl Syscalls for Kernel {
    fn raw(&self, no: u32, args: [usize; 6]) -> Result<usize, Errno> {
        self.syscall(no, args)
    }
}

impl Syscalls for Task {
    fn raw(&self, no: u32, args: [usize; 6]) -> Result<usize, Errno> {
        self.syscall(no, args)
    }
}
