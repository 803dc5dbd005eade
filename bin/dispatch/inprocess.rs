//! What the in-process tiers ask of the engine beyond serving calls: the bytes of a program
//! as the calling guest process may read it (kbox's loader maps them; no host path is
//! involved), and the engine's part of an exec that kbox performed itself.

use std::ffi::{CStr, CString};

use kbox_core::sysno::generic as g;
use kbox_lkl::{Errno, Task};

use super::files::{AT_FDCWD, Route};
use super::{Engine, fdv, lkl, ptr};

const O_RDONLY_CLOEXEC: u64 = 0o2_000_000;
const X_OK: u64 = 1;
const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
/// Programs larger than this are refused (ENOMEM) rather than read into memory whole.
const MAX_PROGRAM: u64 = 1 << 30;

impl Engine {
    /// The whole file `path` names for the process of `tid`, resolved and checked in its own
    /// kernel task (cwd, root, credentials): a regular file, executable when `exec`.
    pub fn read_guest_file(&mut self, tid: u32, path: &CStr, exec: bool) -> Result<Vec<u8>, Errno> {
        let pid = self
            .procs
            .attach(tid, &mut self.shadows, &|| {})
            .ok_or(Errno::ESRCH)?;
        match self.route(pid, AT_FDCWD, path.to_owned())? {
            Route::Kernel(dirfd, kpath) => {
                let task = &self.procs.get(pid).ok_or(Errno::ESRCH)?.task;
                read_kernel_file(task, dirfd, &kpath, exec, usize::MAX)
            }
            Route::Host(bind, rel) => {
                let host = self.bind_exec_path(bind, &rel)?;
                let meta = std::fs::metadata(&host).map_err(|e| io_errno(&e))?;
                use std::os::unix::fs::PermissionsExt;
                if !meta.is_file() || (exec && meta.permissions().mode() & 0o111 == 0) {
                    return Err(Errno::EACCES);
                }
                std::fs::read(&host).map_err(|e| io_errno(&e))
            }
        }
    }

    /// Thread `tid`'s process has just forked `child` (an in-process tier performed it).
    pub fn record_fork(&mut self, tid: u32, child: u32) {
        self.procs.record_fork(tid, child, &mut self.shadows);
    }

    /// The engine's part of an exec an in-process tier performed: the task's name, its
    /// close-on-exec FDs, /proc/self/exe. The tier closes the host's close-on-exec FDs.
    pub fn exec_performed(&mut self, tid: u32, path: &CStr) -> Result<(), Errno> {
        let pid = self
            .procs
            .attach(tid, &mut self.shadows, &|| {})
            .ok_or(Errno::ESRCH)?;
        let absolute = match self.route(pid, AT_FDCWD, path.to_owned())? {
            Route::Kernel(_, kpath) if kpath.as_bytes().first() == Some(&b'/') => kpath,
            _ => path.to_owned(),
        };
        self.exec_done(pid, absolute)
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno(e.raw_os_error().unwrap_or(5))
}

/// The whole executable file `path` names, as `task` sees it (auto's look at a program
/// before any guest process exists).
/// At most `limit` bytes of it.
pub fn read_program(task: &Task, path: &CString, limit: usize) -> Result<Vec<u8>, Errno> {
    read_kernel_file(task, AT_FDCWD, path, true, limit)
}

fn read_kernel_file(
    task: &Task,
    dirfd: u64,
    path: &CString,
    exec: bool,
    limit: usize,
) -> Result<Vec<u8>, Errno> {
    if exec {
        lkl(
            task,
            g::FACCESSAT,
            [dirfd, ptr(path.as_ptr()), X_OK, 0, 0, 0],
        )?;
    }
    let fd = lkl(
        task,
        g::OPENAT,
        [dirfd, ptr(path.as_ptr()), O_RDONLY_CLOEXEC, 0, 0, 0],
    )?;
    let fd = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
    let result = read_all(task, fd, limit);
    let _ = lkl(task, g::CLOSE, [fdv(fd), 0, 0, 0, 0, 0]);
    result
}

fn read_all(task: &Task, fd: i32, limit: usize) -> Result<Vec<u8>, Errno> {
    let st = super::files::lkl_stat(task, fd)?;
    if st.st_mode & S_IFMT != S_IFREG {
        return Err(Errno::EACCES);
    }
    let size = u64::try_from(st.st_size).map_err(|_| Errno::EIO)?;
    if size > MAX_PROGRAM {
        return Err(Errno::ENOMEM);
    }
    let size = usize::try_from(size).map_err(|_| Errno::ENOMEM)?.min(limit);
    let mut out = vec![0u8; size];
    let mut at = 0;
    while at < out.len() {
        let rest = &mut out[at..];
        let n = lkl(
            task,
            g::READ,
            [fdv(fd), ptr(rest.as_mut_ptr()), rest.len() as u64, 0, 0, 0],
        )?;
        if n == 0 {
            break;
        }
        at += usize::try_from(n).map_err(|_| Errno::EIO)?;
    }
    out.truncate(at);
    Ok(out)
}
