//! Opening files and everything that follows a guest FD: close, dup, fcntl, stat, directory
//! reads, fchdir, fsync.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use kbox_core::abi::stat::{GENERIC_STAT_SIZE, GenericStat};
use kbox_core::fd::{FdKind, GuestFd};
use kbox_core::shadow::FileId;
use kbox_core::sysno::generic as g;
use kbox_lkl::{Errno, Task};
use rustix::fs::OFlags;

use super::binds::Place;
pub use super::linux::AT_FDCWD;
use super::linux::{
    AT_EMPTY_PATH, AT_SYMLINK_NOFOLLOW, CLOSE_RANGE_CLOEXEC, F_DUPFD, F_DUPFD_CLOEXEC, O_ACCMODE,
    O_APPEND, O_CLOEXEC, O_NONBLOCK, O_PATH, O_RDWR, O_TRUNC, O_WRONLY, S_IFCHR, S_IFDIR, S_IFIFO,
    S_IFMT, S_IFREG, STATX_SIZE,
};
use super::shadow::{self, Writable};
use super::{Engine, Guest, Reply, fd_arg, fdv, hostio, interrupt, lkl, procs, ptr};

/// Where a path-taking call goes (see [`Engine::route`]).
pub enum Route {
    Kernel(u64, CString),
    Host(usize, Vec<u8>),
}

/// Largest directory read handed to the kernel library at once.
const DIRENT_CHUNK: usize = 64 << 10;

/// The guest's open flags in asm-generic encoding (aarch64 numbers four of them differently).
fn generic_oflags(flags: u64) -> u64 {
    #[cfg(target_arch = "aarch64")]
    {
        let low = u32::try_from(flags & 0xffff_ffff).unwrap_or(0);
        u64::from(kbox_core::abi::oflags::aarch64_to_generic(low))
    }
    #[cfg(not(target_arch = "aarch64"))]
    flags
}

/// Host files standing in for character devices: the terminal and the memory devices are
/// the host's (same behaviour, and the terminal must be the real one).
fn host_device(rdev: u64) -> Option<String> {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    Some(match (major, minor) {
        (1, 3) => "/dev/null".into(),
        (1, 5) => "/dev/zero".into(),
        (1, 7) => "/dev/full".into(),
        (1, 8) => "/dev/random".into(),
        (1, 9) => "/dev/urandom".into(),
        (5, 0) => "/dev/tty".into(),
        (5, 2) => "/dev/ptmx".into(),
        (136, n) => format!("/dev/pts/{n}"),
        _ => return None,
    })
}

/// O_CREAT | O_TRUNC | O_EXCL, which an O_PATH open must not carry.
const O_CREAT_TRUNC: u64 = 0o100 | 0o1000 | 0o200;

/// A `*at` call's path argument; with AT_EMPTY_PATH a NULL pointer means "" (Linux 6.11+).
fn path_or_empty(guest: &dyn Guest, addr: u64, empty_ok: bool) -> Result<CString, Errno> {
    if addr == 0 && empty_ok {
        Ok(CString::default())
    } else {
        guest.read_path(addr)
    }
}

/// The kernel library's `struct stat` of FD `kfd` in `task`.
pub(super) fn lkl_stat(task: &Task, kfd: i32) -> Result<GenericStat, Errno> {
    let mut buf = [0u8; GENERIC_STAT_SIZE];
    lkl(
        task,
        g::FSTAT,
        [fdv(kfd), ptr(buf.as_mut_ptr()), 0, 0, 0, 0],
    )?;
    Ok(GenericStat::from_bytes(&buf))
}

/// Whether the file open as `kfd` in `task` is on /proc or /sys (its filesystem's magic).
fn pseudo_file(task: &Task, kfd: i32) -> bool {
    const PROC_SUPER_MAGIC: i64 = 0x9fa0;
    const SYSFS_MAGIC: i64 = 0x6265_6572;
    let mut buf = [0u8; 120];
    if lkl(
        task,
        g::FSTATFS,
        [fdv(kfd), ptr(buf.as_mut_ptr()), 0, 0, 0, 0],
    )
    .is_err()
    {
        return false;
    }
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&buf[..8]);
    matches!(i64::from_ne_bytes(magic), PROC_SUPER_MAGIC | SYSFS_MAGIC)
}

/// The kernel library's `struct stat` of `path` in `task`.
pub(super) fn lkl_stat_path(task: &Task, path: &std::ffi::CStr) -> Result<GenericStat, Errno> {
    let mut buf = [0u8; GENERIC_STAT_SIZE];
    lkl(
        task,
        g::NEWFSTATAT,
        [AT_FDCWD, ptr(path.as_ptr()), ptr(buf.as_mut_ptr()), 0, 0, 0],
    )?;
    Ok(GenericStat::from_bytes(&buf))
}

/// Rewrites getdents64 records (ino, off, reclen, type, name) as `struct linux_dirent`
/// (ino, off, reclen, name, NUL, ..., type in the record's last byte), in place.
fn to_legacy_dirents(buf: &mut [u8]) {
    const NAME64: usize = 19;
    const NAME: usize = 18;
    let mut at = 0;
    while at + NAME64 <= buf.len() {
        let reclen = usize::from(u16::from_ne_bytes([buf[at + 16], buf[at + 17]]));
        if reclen < NAME64 + 1 || at + reclen > buf.len() {
            break;
        }
        let rec = &mut buf[at..at + reclen];
        let kind = rec[NAME64 - 1];
        let name_len = rec[NAME64..].iter().position(|&b| b == 0).unwrap_or(0);
        rec.copy_within(NAME64..NAME64 + name_len, NAME);
        rec[NAME + name_len..].fill(0);
        rec[reclen - 1] = kind;
        at += reclen;
    }
}

/// Writes a kernel-library `struct stat` to the guest in the host arch's layout.
fn put_stat(guest: &dyn Guest, addr: u64, raw: &[u8; GENERIC_STAT_SIZE]) -> Result<(), Errno> {
    #[cfg(target_arch = "x86_64")]
    {
        let st = GenericStat::from_bytes(raw);
        guest.write(addr, &st.to_x86_64().to_bytes())
    }
    #[cfg(not(target_arch = "x86_64"))]
    guest.write(addr, raw)
}

impl Engine {
    /// The dirfd to pass to the kernel library for a `*at` call of process `pid`.
    pub(super) fn dirfd(&self, pid: u32, raw: u64, path: &[u8]) -> Result<u64, Errno> {
        let fd = fd_arg(raw);
        if raw == AT_FDCWD || fd == -100 || path.first() == Some(&b'/') {
            return Ok(AT_FDCWD);
        }
        match self.served(pid, fd) {
            Some(_) => Ok(u64::try_from(fd).unwrap_or(0)),
            // A host-only FD (pipe, terminal) is not a directory; a closed one is EBADF.
            None if fd >= 0 && self.host_fd_open(pid, fd) => Err(Errno::ENOTDIR),
            None => Err(Errno::EBADF),
        }
    }

    /// Where a `*at` call's (dirfd, path) goes: the kernel library (with the dirfd and path
    /// to hand it) or a bind.
    pub(super) fn route(&self, pid: u32, raw_dirfd: u64, path: CString) -> Result<Route, Errno> {
        Ok(match self.locate(pid, raw_dirfd, &path)? {
            Place::Host { bind, rel } => Route::Host(bind, rel),
            Place::Kernel { abs: Some(abs) } => Route::Kernel(AT_FDCWD, abs),
            Place::Kernel { abs: None } => {
                Route::Kernel(self.dirfd(pid, raw_dirfd, path.as_bytes())?, path)
            }
        })
    }

    /// The kind of guest FD `fd` of `pid` if the kernel library serves it.
    pub(super) fn served(&self, pid: u32, fd: i32) -> Option<FdKind> {
        let p = self.procs.get(pid)?;
        let g = GuestFd::from_raw(fd).ok()?;
        p.fds.get(g).map(|e| e.kind)
    }

    fn host_fd_open(&self, pid: u32, fd: i32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}/fd/{fd}")).exists()
    }

    pub(super) fn open(
        &mut self,
        guest: &dyn Guest,
        pid: u32,
        args: [u64; 6],
    ) -> Result<i64, Errno> {
        let path = guest.read_path(args[1])?;
        let flags = generic_oflags(args[2]);
        let cloexec = flags & O_CLOEXEC != 0;
        if let Some(fd) = self.open_host_view(guest, pid, &path, flags)? {
            return Ok(fd);
        }
        if let Some(fd) = self.reopen_host_fd(guest, pid, &path, flags)? {
            return Ok(fd);
        }
        let (dirfd, path) = match self.route(pid, args[0], path)? {
            Route::Host(bind, rel) => {
                // The host takes the guest's own flags, not their asm-generic lowering
                // (on aarch64, O_DIRECTORY lowered is the host's O_DIRECT).
                return self.bind_open(guest, pid, bind, &rel, args[2], args[3]);
            }
            Route::Kernel(dirfd, path) => (dirfd, path),
        };
        let p = self.procs.get(pid).ok_or(Errno::ESRCH)?;
        // The kernel library's description never appends (write-back writes at offsets)
        // and never blocks: a FIFO's open waits for its other end, which only the host
        // FIFO standing in for it can do (open_fifo); elsewhere the flag changes nothing
        // kbox does with the kernel FD.
        let kflags = (flags & !O_APPEND) | O_NONBLOCK;
        let open = |kflags: u64| {
            lkl(
                &p.task,
                g::OPENAT,
                [dirfd, ptr(path.as_ptr()), kflags, args[3], 0, 0],
            )
        };
        // A write-only open still needs to read the file into its shadow, so the kernel
        // library's description is read-write where permissions allow.
        let kfd = if flags & O_ACCMODE == O_WRONLY {
            match open((kflags & !O_ACCMODE) | O_RDWR) {
                Err(Errno::EACCES) | Err(Errno::EPERM) => open(kflags),
                other => other,
            }
        } else {
            open(kflags)
        };
        // ENXIO: a write-only, non-blocking open of a FIFO nobody reads; O_PATH still gives
        // kbox the FIFO to hand to open_fifo.
        let kfd = match kfd {
            Err(Errno::ENXIO) => open((kflags & !O_ACCMODE & !O_CREAT_TRUNC) | O_PATH)?,
            other => other?,
        };
        let kfd = i32::try_from(kfd).map_err(|_| Errno::EMFILE)?;
        match self.install(guest, pid, kfd, flags, cloexec) {
            Ok(fd) => Ok(i64::from(fd)),
            Err(e) => {
                if let Some(p) = self.procs.get(pid) {
                    let _ = lkl(&p.task, g::CLOSE, [fdv(kfd), 0, 0, 0, 0, 0]);
                }
                Err(e)
            }
        }
    }

    /// Per-process memory views must describe the real process, so these few /proc/self
    /// files are the host's (`status` merged with the kernel library's, see pidview).
    fn open_host_view(
        &self,
        guest: &dyn Guest,
        pid: u32,
        path: &std::ffi::CStr,
        flags: u64,
    ) -> Result<Option<i64>, Errno> {
        let p = path.to_bytes();
        let tail = p
            .strip_prefix(b"/proc/self/")
            .or_else(|| p.strip_prefix(b"/proc/thread-self/"));
        let Some(tail) = tail else { return Ok(None) };
        if !matches!(
            tail,
            b"maps"
                | b"smaps"
                | b"mem"
                | b"auxv"
                | b"pagemap"
                | b"stat"
                | b"statm"
                | b"exe"
                | b"cmdline"
                | b"environ"
                | b"limits"
                | b"status"
        ) {
            return Ok(None);
        }
        let acc = host_access(flags);
        let fd = if tail == b"stat" {
            // Its pid fields must be the guest's, as the rest of its /proc has them.
            if acc != OFlags::RDONLY {
                return Err(Errno::EACCES);
            }
            super::pidview::guest_stat(guest.tid())?
        } else if tail == b"status" {
            if acc != OFlags::RDONLY {
                return Err(Errno::EACCES);
            }
            let p = self.procs.get(pid).ok_or(Errno::ESRCH)?;
            let kernel = read_kernel_file(&p.task, c"/proc/self/status")?;
            super::pidview::guest_status(guest.tid(), &kernel)?
        } else {
            let host = format!("/proc/{}/{}", guest.tid(), String::from_utf8_lossy(tail));
            hostio::open_host(&host, acc)?
        };
        let n = guest.answer_with_fd(fd.as_fd(), None, flags & O_CLOEXEC != 0)?;
        Ok(Some(i64::from(n)))
    }

    /// The FD number N when `path` names one of the caller's own FDs (`/dev/stdin`,
    /// `/dev/fd/N`, `/proc/self/fd/N`) that kbox does not serve (a pipe, the terminal, a
    /// socketpair) and the host has: such a name is the host's to resolve, as kbox's
    /// kernel library does not hold the FD. FDs kbox serves are the kernel library's.
    fn own_host_fd_named(&self, guest: &dyn Guest, pid: u32, path: &[u8]) -> Option<i32> {
        let n = match path {
            b"/dev/stdin" => 0,
            b"/dev/stdout" => 1,
            b"/dev/stderr" => 2,
            _ => path
                .strip_prefix(b"/dev/fd/")
                .or_else(|| path.strip_prefix(b"/proc/self/fd/"))
                .or_else(|| path.strip_prefix(b"/proc/thread-self/fd/"))
                .and_then(|n| std::str::from_utf8(n).ok()?.parse::<i32>().ok())?,
        };
        let kernel_backed = self.served(pid, n).is_some_and(|k| k != FdKind::Host);
        (!kernel_backed && self.host_fd_open(guest.tid(), n)).then_some(n)
    }

    /// The host object behind the caller's FD `n`, opened O_PATH (for stat).
    fn own_host_fd_path(guest: &dyn Guest, n: i32) -> Result<OwnedFd, Errno> {
        hostio::open_host(&format!("/proc/{}/fd/{n}", guest.tid()), OFlags::PATH)
    }

    /// Opening one of the caller's own host FDs by name reopens it as Linux would, so
    /// `cat /dev/stdin` and a shell's `<(...)` work.
    fn reopen_host_fd(
        &self,
        guest: &dyn Guest,
        pid: u32,
        path: &std::ffi::CStr,
        flags: u64,
    ) -> Result<Option<i64>, Errno> {
        let Some(n) = self.own_host_fd_named(guest, pid, path.to_bytes()) else {
            return Ok(None);
        };
        let fd = hostio::open_host(&format!("/proc/{}/fd/{n}", guest.tid()), host_access(flags))?;
        let installed = guest.answer_with_fd(fd.as_fd(), None, flags & O_CLOEXEC != 0)?;
        Ok(Some(i64::from(installed)))
    }

    /// Gives the guest a host FD for kernel FD `kfd` and makes the numbers agree.
    fn install(
        &mut self,
        guest: &dyn Guest,
        pid: u32,
        kfd: i32,
        flags: u64,
        cloexec: bool,
    ) -> Result<i32, Errno> {
        let p = self.procs.get(pid).ok_or(Errno::ESRCH)?;
        let mut st = lkl_stat(&p.task, kfd)?;
        if st.st_mode & S_IFMT == S_IFIFO {
            let _ = lkl(&p.task, g::CLOSE, [fdv(kfd), 0, 0, 0, 0, 0]);
            self.open_fifo(guest, &st, flags, cloexec)?;
            // Answered by the thread that waits for the other end.
            return Ok(0);
        }
        let id = FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        };
        if st.st_mode & S_IFMT == S_IFREG && self.procs.any_writable() {
            self.procs.sync_file(id, &mut self.shadows);
            st = lkl_stat(&p.task, kfd)?;
        }
        let acc = flags & O_ACCMODE;
        if st.st_mode & S_IFMT == S_IFREG && flags & O_TRUNC != 0 && acc != 0 {
            // The kernel emptied the file: readers that have it open see that at once.
            self.shadows.resized(id, &st);
        }
        let mut writable = None;
        let (host, kind): (OwnedFd, FdKind) = match st.st_mode & S_IFMT {
            _ if flags & O_PATH != 0 => (self.placeholder()?, FdKind::Kernel),
            S_IFDIR => (self.placeholder()?, FdKind::Kernel),
            S_IFREG if acc == 0 => {
                let size = u64::try_from(st.st_size).unwrap_or(0);
                if self.shadows.admits(size) {
                    let slow = || guest.slow();
                    (
                        self.shadows.read_only(&p.task, kfd, &st, &slow)?,
                        FdKind::Shadow,
                    )
                } else {
                    guest.slow();
                    let spilled = shadow::fill_on_disk(self.exec.spill_dir(), &p.task, kfd, size)?;
                    self.note_spill(guest.tid(), size);
                    (
                        hostio::reopen(spilled.as_fd(), OFlags::RDONLY)?,
                        FdKind::Shadow,
                    )
                }
            }
            S_IFREG => {
                let size = u64::try_from(st.st_size).unwrap_or(0);
                guest.slow();
                let memfd = if size == 0 && pseudo_file(&p.task, kfd) {
                    // /proc and /sys files: each write is a message to the kernel, not
                    // contents to share.
                    shadow::fill(&p.task, kfd, 0)?
                } else if self.shadows.admits(size) {
                    let slow = || guest.slow();
                    self.shadows.shared(&p.task, kfd, &st, &slow)?
                } else {
                    self.note_spill(guest.tid(), size);
                    shadow::fill_on_disk(self.exec.spill_dir(), &p.task, kfd, size)?
                };
                let mut oflags = if acc == O_WRONLY {
                    OFlags::WRONLY
                } else {
                    OFlags::RDWR
                };
                if flags & O_APPEND != 0 {
                    oflags |= OFlags::APPEND;
                }
                let guest_side = hostio::reopen(memfd.as_fd(), oflags)?;
                writable = Some(Arc::new(Writable::new(memfd, id, acc == O_RDWR, false)?));
                (guest_side, FdKind::WritebackShadow)
            }
            S_IFCHR => {
                let dev = host_device(st.st_rdev).ok_or(Errno::ENXIO)?;
                let mut oflags = match acc {
                    O_WRONLY => OFlags::WRONLY,
                    O_RDWR => OFlags::RDWR,
                    _ => OFlags::RDONLY,
                };
                if flags & O_NONBLOCK != 0 {
                    oflags |= OFlags::NONBLOCK;
                }
                (hostio::open_host(&dev, oflags)?, FdKind::Host)
            }
            _ => return Err(Errno::ENXIO),
        };
        let n = guest.answer_with_fd(host.as_fd(), None, cloexec)?;
        let p = self.procs.get_mut(pid).ok_or(Errno::ESRCH)?;
        if n != kfd {
            lkl(&p.task, g::DUP3, [fdv(kfd), fdv(n), 0, 0, 0, 0])?;
            let _ = lkl(&p.task, g::CLOSE, [fdv(kfd), 0, 0, 0, 0, 0]);
        }
        let (gfd, entry) = procs::entry(n, kind, cloexec)?;
        p.fds.insert_at(gfd, entry).map_err(|_| Errno::EMFILE)?;
        if let Some(w) = writable {
            p.writable.insert(n, w);
        }
        Ok(n)
    }

    /// A FIFO in the image: guests meet at one host FIFO per image FIFO (in kbox's private
    /// directory), so data and end-of-file behave as on Linux. Opening one waits for the
    /// other end, so it happens on a thread of its own, which answers the guest (and which
    /// a signal the guest takes interrupts, as it would interrupt the guest's own open).
    fn open_fifo(
        &self,
        guest: &dyn Guest,
        st: &GenericStat,
        flags: u64,
        cloexec: bool,
    ) -> Result<(), Errno> {
        let path = self.exec.fifo_path(st.st_dev, st.st_ino)?;
        let mut oflags = match flags & O_ACCMODE {
            O_WRONLY => OFlags::WRONLY,
            O_RDWR => OFlags::RDWR,
            _ => OFlags::RDONLY,
        };
        if flags & O_NONBLOCK != 0 {
            oflags |= OFlags::NONBLOCK;
        }
        let answer = guest.defer().ok_or(Errno::ENXIO)?;
        let tid = guest.tid();
        let spawned = std::thread::Builder::new()
            .name("kbox-fifo".into())
            .spawn(move || {
                let watch = interrupt::watch_this_thread(tid);
                let opened = hostio::open_host(&path.to_string_lossy(), oflags);
                let signalled = watch.finish();
                match opened {
                    Ok(fd) => answer.with_fd(fd.as_fd(), cloexec),
                    Err(Errno::EINTR) if signalled => answer.fail(Errno::ERESTARTSYS),
                    Err(e) => answer.fail(e),
                }
            });
        // A thread that could not start drops the answer, which answers ENOSYS.
        drop(spawned);
        Ok(())
    }

    /// Under -v, says that a file too large for a memory shadow got one on disk.
    fn note_spill(&self, tid: u32, size: u64) {
        if self.settings.verbose {
            eprintln!(
                "kbox: [{tid}] file of {size} bytes is over --shadow-limit: shadowed on disk in {}",
                self.exec.spill_dir().display()
            );
        }
    }

    /// A host directory with nothing in it: what a guest directory FD holds on the host
    /// (reads fail with EISDIR natively; everything else is served by the kernel library).
    fn placeholder(&self) -> Result<OwnedFd, Errno> {
        hostio::open_host(
            &self.exec.empty_dir().to_string_lossy(),
            OFlags::RDONLY | OFlags::DIRECTORY,
        )
    }

    /// Drops guest FD `fd` of `pid` from the kernel side (writing a shadow back first).
    pub(super) fn forget(&mut self, pid: u32, fd: i32) {
        let Some(p) = self.procs.get_mut(pid) else {
            return;
        };
        p.bind_fds.remove(&fd);
        let Ok(gfd) = GuestFd::from_raw(fd) else {
            return;
        };
        if p.fds.get(gfd).is_none() {
            return;
        }
        if let Some(w) = p.writable.remove(&fd) {
            let _ = self.shadows.write_back(&w, &p.task, fd, true);
            self.procs.keep_if_passed(pid, fd, &w, &mut self.shadows);
        }
        self.socket_closed(pid, fd);
        let Some(p) = self.procs.get_mut(pid) else {
            return;
        };
        let _ = lkl(&p.task, g::CLOSE, [fdv(fd), 0, 0, 0, 0, 0]);
        let _ = p.fds.remove(gfd);
    }

    pub(super) fn close(&mut self, guest: &dyn Guest, pid: u32, raw: u64) -> Reply {
        let fd = fd_arg(raw);
        // Closing a writable shadow writes it back, which may take a while.
        if self
            .procs
            .get(pid)
            .is_some_and(|p| p.writable.contains_key(&fd))
        {
            guest.slow();
        }
        self.forget(pid, fd);
        Reply::Continue
    }

    pub(super) fn close_range(&mut self, pid: u32, args: [u64; 6]) -> Reply {
        let Some(p) = self.procs.get_mut(pid) else {
            return Reply::Continue;
        };
        let open: Vec<i32> = p
            .fds
            .iter()
            .map(|(g, _)| g.as_raw())
            .filter(|&fd| {
                let fd = u64::try_from(fd).unwrap_or(0);
                fd >= args[0] && fd <= args[1]
            })
            .collect();
        for fd in open {
            if args[2] & CLOSE_RANGE_CLOEXEC != 0 {
                if let (Some(p), Ok(g)) = (self.procs.get_mut(pid), GuestFd::from_raw(fd)) {
                    let _ = p.fds.set_cloexec(g, true);
                }
            } else {
                self.forget(pid, fd);
            }
        }
        Reply::Continue
    }

    /// dup/dup2/dup3/F_DUPFD of served FD `raw` of `pid` (at `at`, or the lowest free
    /// number): the kernel FD and the host file are duplicated to the same number, on the
    /// host by an FD kbox hands the guest (ADDFD), or, with `by_host`, by the guest's own
    /// call, which the caller then lets run (the host makes the same duplicate at `at`,
    /// which must be given).
    pub(super) fn dup(
        &mut self,
        guest: &dyn Guest,
        pid: u32,
        raw: u64,
        at: Option<i32>,
        cloexec: bool,
        by_host: bool,
    ) -> Result<i64, Errno> {
        let fd = fd_arg(raw);
        let Some(kind) = self.served(pid, fd) else {
            return Err(Errno::ENOENT); // caller maps to Continue
        };
        let p = self.procs.get(pid).ok_or(Errno::ESRCH)?;
        let pidfd = p.pidfd.as_ref().ok_or(Errno::ESRCH)?;
        let host = if by_host {
            None
        } else {
            Some(hostio::guest_file(pidfd.as_fd(), fd)?)
        };
        if let Some(at) = at {
            self.forget(pid, at);
        }
        let n = match (host, at) {
            (Some(host), _) => guest.answer_with_fd(host.as_fd(), at, cloexec)?,
            (None, Some(at)) => at,
            (None, None) => return Err(Errno::EINVAL),
        };
        let p = self.procs.get_mut(pid).ok_or(Errno::ESRCH)?;
        lkl(&p.task, g::DUP3, [fdv(fd), fdv(n), 0, 0, 0, 0])?;
        let (gfd, entry) = procs::entry(n, kind, cloexec)?;
        p.fds.insert_at(gfd, entry).map_err(|_| Errno::EMFILE)?;
        if let Some(w) = p.writable.get(&fd).cloned() {
            p.writable.insert(n, w);
        }
        if let Some(end) = p.sockets.get(&fd).cloned() {
            p.sockets.insert(n, end);
        }
        Ok(i64::from(n))
    }

    pub(super) fn dup3(
        &mut self,
        guest: &dyn Guest,
        pid: u32,
        args: [u64; 6],
        conv: super::Conv,
    ) -> Reply {
        let (old, new) = (fd_arg(args[0]), fd_arg(args[1]));
        if old == new {
            return Reply::Continue; // dup2: EBADF or old; dup3: EINVAL — the host knows.
        }
        if new < 0 {
            return Reply::Fail(Errno::EBADF);
        }
        if conv != super::Conv::Dup2 && args[2] & !O_CLOEXEC != 0 {
            return Reply::Fail(Errno::EINVAL);
        }
        let cloexec = conv != super::Conv::Dup2 && args[2] & O_CLOEXEC != 0;
        if self.served(pid, old).is_some() {
            return self.dup_at(guest, pid, args[0], new, cloexec);
        }
        // The host duplicates a host-only FD; a served FD at `new` is replaced by it. A
        // closed `old` leaves `new` alone, so check before forgetting it.
        if self.served(pid, new).is_some() {
            if !self.host_fd_open(pid, old) {
                return Reply::Fail(Errno::EBADF);
            }
            self.forget(pid, new);
        }
        Reply::Continue
    }

    pub(super) fn fcntl(&mut self, guest: &dyn Guest, pid: u32, args: [u64; 6]) -> Reply {
        let cmd = args[1] & 0xffff_ffff;
        if (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) && self.served(pid, fd_arg(args[0])).is_some()
        {
            let Ok(min) = i32::try_from(args[2] & 0xffff_ffff) else {
                return Reply::Fail(Errno::EINVAL);
            };
            let at = match self.lowest_free_from(pid, min) {
                Ok(at) => at,
                Err(e) => return Reply::Fail(e),
            };
            // The host picks the lowest free number from `min` too: `at`.
            return self.dup_at(guest, pid, args[0], at, cmd == F_DUPFD_CLOEXEC);
        }
        Reply::Continue
    }

    /// The lowest FD number at or above `min` that process `pid` has free on the host.
    /// [`Engine::dup`] to number `at`, by the guest's own call when the host can make it.
    fn dup_at(&mut self, guest: &dyn Guest, pid: u32, raw: u64, at: i32, cloexec: bool) -> Reply {
        let by_host = self.host_can_dup(pid, at);
        match self.dup(guest, pid, raw, Some(at), cloexec, by_host) {
            Ok(_) if by_host => Reply::Continue,
            r => r.into(),
        }
    }

    /// Whether the guest's own dup2/dup3/F_DUPFD of a served FD, to number `at`, can run
    /// on the host once kbox has made the same duplicate in the kernel task, instead of
    /// kbox handing over the FD (ADDFD: 15-20 µs of cross-CPU wake-ups here, against one
    /// notification). Only in a process with one thread: another could close the source
    /// or take `at` between kbox's answer and the host's call, and the two sides would
    /// differ. And only below the process's own FD limit, where the host's call cannot
    /// fail.
    fn host_can_dup(&mut self, pid: u32, at: i32) -> bool {
        let Some(p) = self.procs.get_mut(pid) else {
            return false;
        };
        if p.proc_files.threads(pid) != 1 {
            return false;
        }
        hostio::nofile_limit(pid).is_some_and(|limit| u64::try_from(at).is_ok_and(|at| at < limit))
    }

    fn lowest_free_from(&self, pid: u32, min: i32) -> Result<i32, Errno> {
        if min < 0 {
            return Err(Errno::EINVAL);
        }
        let mut used: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map_err(|_| Errno::ESRCH)?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        used.sort_unstable();
        let mut n = min;
        for u in used {
            if u == n {
                n += 1;
            } else if u > n {
                break;
            }
        }
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        if u64::try_from(n).unwrap_or(u64::MAX) >= limit {
            return Err(Errno::EMFILE);
        }
        Ok(n)
    }

    pub(super) fn fstat(&mut self, guest: &dyn Guest, pid: u32, args: [u64; 6]) -> Reply {
        let fd = fd_arg(args[0]);
        match self.served(pid, fd) {
            Some(FdKind::Host) | None => Reply::Continue,
            Some(_) => self.stat_into(guest, pid, fd, args[1]),
        }
    }

    fn stat_into(&mut self, guest: &dyn Guest, pid: u32, fd: i32, addr: u64) -> Reply {
        let Some(p) = self.procs.get(pid) else {
            return Reply::Fail(Errno::ESRCH);
        };
        if let Some(w) = p.writable.get(&fd) {
            let _ = self.shadows.write_back(w, &p.task, fd, false);
        }
        let mut buf = [0u8; GENERIC_STAT_SIZE];
        let r = lkl(
            &p.task,
            g::FSTAT,
            [fdv(fd), ptr(buf.as_mut_ptr()), 0, 0, 0, 0],
        )
        .and_then(|_| put_stat(guest, addr, &buf))
        .map(|()| 0);
        r.into()
    }

    pub(super) fn fstatat(&mut self, guest: &dyn Guest, pid: u32, args: [u64; 6]) -> Reply {
        let empty_ok = args[3] & AT_EMPTY_PATH != 0;
        let path = match path_or_empty(guest, args[1], empty_ok) {
            Ok(p) => p,
            Err(e) => return Reply::Fail(e),
        };
        if path.as_bytes().is_empty() && empty_ok && args[0] != AT_FDCWD {
            return self.fstat(guest, pid, [args[0], args[2], 0, 0, 0, 0]);
        }
        if args[3] & AT_SYMLINK_NOFOLLOW == 0
            && let Some(n) = self.own_host_fd_named(guest, pid, path.as_bytes())
        {
            return Self::own_host_fd_path(guest, n)
                .and_then(|fd| hostio::stat_raw(fd.as_fd(), c"", AT_EMPTY_PATH))
                .and_then(|st| guest.write(args[2], &st))
                .map(|()| 0)
                .into();
        }
        let (dirfd, path) = match self.route(pid, args[0], path) {
            Ok(Route::Kernel(d, p)) => (d, p),
            Ok(Route::Host(bind, rel)) => {
                let r = self
                    .bind_stat(bind, &rel, args[3])
                    .and_then(|st| guest.write(args[2], &st))
                    .map(|()| 0);
                return r.into();
            }
            Err(e) => return Reply::Fail(e),
        };
        let Some(p) = self.procs.get(pid) else {
            return Reply::Fail(Errno::ESRCH);
        };
        let mut buf = [0u8; GENERIC_STAT_SIZE];
        let r = lkl(
            &p.task,
            g::NEWFSTATAT,
            [
                dirfd,
                ptr(path.as_ptr()),
                ptr(buf.as_mut_ptr()),
                args[3],
                0,
                0,
            ],
        )
        .and_then(|_| {
            let st = GenericStat::from_bytes(&buf);
            if self.procs.any_writable() && st.st_mode & S_IFMT == S_IFREG {
                self.procs.sync_file(
                    FileId {
                        dev: st.st_dev,
                        ino: st.st_ino,
                    },
                    &mut self.shadows,
                );
                lkl(
                    &p.task,
                    g::NEWFSTATAT,
                    [
                        dirfd,
                        ptr(path.as_ptr()),
                        ptr(buf.as_mut_ptr()),
                        args[3],
                        0,
                        0,
                    ],
                )?;
            }
            put_stat(guest, args[2], &buf)
        })
        .map(|()| 0);
        r.into()
    }

    pub(super) fn statx(&mut self, guest: &dyn Guest, pid: u32, args: [u64; 6]) -> Reply {
        let empty_ok = args[2] & AT_EMPTY_PATH != 0;
        let mut path = match path_or_empty(guest, args[1], empty_ok) {
            Ok(p) => p,
            Err(e) => return Reply::Fail(e),
        };
        let fd = fd_arg(args[0]);
        if args[2] & AT_SYMLINK_NOFOLLOW == 0
            && let Some(n) = self.own_host_fd_named(guest, pid, path.as_bytes())
        {
            return Self::own_host_fd_path(guest, n)
                .and_then(|h| hostio::statx_raw(h.as_fd(), c"", args[2] | AT_EMPTY_PATH, args[3]))
                .and_then(|st| guest.write(args[4], &st))
                .map(|()| 0)
                .into();
        }
        let dirfd = if path.as_bytes().is_empty() && empty_ok && args[0] != AT_FDCWD {
            match self.served(pid, fd) {
                Some(FdKind::Host) | None => return Reply::Continue,
                Some(_) => args[0],
            }
        } else {
            match self.route(pid, args[0], path.clone()) {
                Ok(Route::Kernel(d, p)) => {
                    path = p;
                    d
                }
                Ok(Route::Host(bind, rel)) => {
                    let r = self
                        .bind_statx(bind, &rel, args[2], args[3])
                        .and_then(|st| guest.write(args[4], &st))
                        .map(|()| 0);
                    return r.into();
                }
                Err(e) => return Reply::Fail(e),
            }
        };
        let Some(p) = self.procs.get(pid) else {
            return Reply::Fail(Errno::ESRCH);
        };
        let mut buf = [0u8; STATX_SIZE];
        let r = lkl(
            &p.task,
            g::STATX,
            [
                dirfd,
                ptr(path.as_ptr()),
                args[2],
                args[3],
                ptr(buf.as_mut_ptr()),
                0,
            ],
        )
        .and_then(|_| guest.write(args[4], &buf))
        .map(|()| 0);
        r.into()
    }

    /// getdents64, or getdents (`legacy`): the two record formats have the same length for
    /// the same name, so the records are rewritten in place.
    pub(super) fn getdents(
        &mut self,
        guest: &dyn Guest,
        pid: u32,
        args: [u64; 6],
        legacy: bool,
    ) -> Reply {
        let fd = fd_arg(args[0]);
        if self.served(pid, fd).is_none() {
            return Reply::Continue;
        }
        let Some(p) = self.procs.get(pid) else {
            return Reply::Fail(Errno::ESRCH);
        };
        // The guest seeks its host placeholder (rewinddir is lseek(fd, 0, SEEK_SET)); kbox
        // leaves the placeholder at 1 after each read, so 0 means "rewound" (or "fresh").
        let placeholder = p
            .pidfd
            .as_ref()
            .and_then(|pidfd| hostio::guest_file(pidfd.as_fd(), fd).ok());
        if let Some(h) = &placeholder
            && rustix::fs::seek(h, rustix::fs::SeekFrom::Current(0)) == Ok(0)
        {
            let _ = lkl(&p.task, g::LSEEK, [fdv(fd), 0, 0, 0, 0, 0]);
        }
        let len = usize::try_from(args[2] & 0xffff_ffff)
            .unwrap_or(0)
            .min(DIRENT_CHUNK);
        if super::fdlist::is_own_fd_dir(&p.task, fd) {
            const SEEK_CUR: u64 = 1;
            let r = lkl(&p.task, g::LSEEK, [fdv(fd), 0, SEEK_CUR, 0, 0, 0])
                .and_then(|pos| super::fdlist::list(guest.tid(), pos.unsigned_abs(), len))
                .and_then(|(mut out, next)| {
                    super::fdlist::seek(&p.task, fd, next);
                    if legacy {
                        to_legacy_dirents(&mut out);
                    }
                    guest
                        .write(args[1], &out)
                        .map(|()| i64::try_from(out.len()).unwrap_or(0))
                });
            if let Some(h) = &placeholder {
                let _ = rustix::fs::seek(h, rustix::fs::SeekFrom::Start(1));
            }
            return r.into();
        }
        let mut buf = vec![0u8; len];
        let mut read = || loop {
            let n = lkl(
                &p.task,
                g::GETDENTS64,
                [fdv(fd), ptr(buf.as_mut_ptr()), len as u64, 0, 0, 0],
            )?;
            let n = usize::try_from(n).unwrap_or(0).min(len);
            let kept = super::own_tasks::hide_from_proc_listing(&p.task, fd, &mut buf[..n]);
            // A read of kbox's tasks alone is not the end of the directory.
            if n == 0 || kept > 0 {
                return Ok(kept);
            }
        };
        let got = read();
        let r = got.and_then(|n| {
            if legacy {
                to_legacy_dirents(&mut buf[..n]);
            }
            guest
                .write(args[1], &buf[..n])
                .map(|()| i64::try_from(n).unwrap_or(0))
        });
        if let Some(h) = &placeholder {
            let _ = rustix::fs::seek(h, rustix::fs::SeekFrom::Start(1));
        }
        r.into()
    }

    pub(super) fn fchdir(&mut self, pid: u32, raw: u64) -> Reply {
        let fd = fd_arg(raw);
        if let Some(p) = self.procs.get_mut(pid) {
            if let Some(dir) = p.bind_fds.get(&fd).cloned() {
                p.cwd_bind = Some(dir);
                return Reply::Value(0);
            }
            if self.served(pid, fd).is_some()
                && let Some(p) = self.procs.get_mut(pid)
            {
                p.cwd_bind = None;
            }
        }
        match (self.served(pid, fd), self.procs.get(pid)) {
            (Some(_), Some(p)) => lkl(&p.task, g::FCHDIR, [fdv(fd), 0, 0, 0, 0, 0]).into(),
            _ if fd >= 0 && self.host_fd_open(pid, fd) => Reply::Fail(Errno::ENOTDIR),
            _ => Reply::Fail(Errno::EBADF),
        }
    }

    pub(super) fn fsync(&mut self, pid: u32, nr: u32, raw: u64) -> Reply {
        let fd = fd_arg(raw);
        if self.served(pid, fd).is_none() {
            return Reply::Continue;
        }
        let Some(p) = self.procs.get(pid) else {
            return Reply::Fail(Errno::ESRCH);
        };
        if let Some(w) = p.writable.get(&fd)
            && let Err(e) = self.shadows.write_back(w, &p.task, fd, true)
        {
            return Reply::Fail(e);
        }
        lkl(&p.task, nr, [fdv(fd), 0, 0, 0, 0, 0]).into()
    }
}

/// The host access mode of a guest's open flags.
fn host_access(flags: u64) -> OFlags {
    match flags & O_ACCMODE {
        O_WRONLY => OFlags::WRONLY,
        O_RDWR => OFlags::RDWR,
        _ => OFlags::RDONLY,
    }
}

/// The whole of a small kernel-library file (a /proc file), read by `task`.
fn read_kernel_file(task: &kbox_lkl::Task, path: &std::ffi::CStr) -> Result<Vec<u8>, Errno> {
    use kbox_lkl::sys::Syscalls;
    let fd = task.open(path, kbox_lkl::sys::O_RDONLY | kbox_lkl::sys::O_CLOEXEC, 0)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = loop {
        match task.read(fd, &mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => break Err(e),
        }
        if out.len() > 1 << 20 {
            break Ok(());
        }
    };
    let _ = task.close(fd);
    read.map(|()| out)
}
