//! `-b HOST:GUEST`: host files and directories shown inside the guest.
//!
//! A path is in a bind when, made absolute against the caller's cwd and normalized
//! lexically (core::path), it is the bind's GUEST path or below it. Such calls are run on the
//! host, relative to an O_PATH descriptor of the bind's HOST path, with every lookup confined
//! beneath it (openat2 RESOLVE_IN_ROOT: `..` and symlinks, absolute or relative, stay inside
//! the bind). FDs opened in a bind are plain host FDs: reads, writes, mmap, fstat and getdents
//! on them run natively. A process may `cd` into a bind; kbox then remembers its cwd there.
//! Limits (docs/dispatch.md): a symlink in the image pointing into a bind is followed inside
//! the image, not into the bind; programs exec'd from a bind use the host's interpreters.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use kbox_core::path::normalize;
use kbox_core::sysno::generic as g;
use kbox_lkl::Errno;
use rustix::fs::{Mode, OFlags, ResolveFlags};

use super::linux::{AT_EMPTY_PATH, AT_FDCWD, AT_SYMLINK_NOFOLLOW};
use super::{Engine, Guest, Reply, fd_arg, hostio, lkl, ptr};

pub struct Bind {
    /// Normalized absolute guest path, without a trailing `/`.
    guest: Vec<u8>,
    root: OwnedFd,
}

#[derive(Default)]
pub struct Binds(Vec<Bind>);

/// Where a path leads.
pub enum Place {
    /// The kernel library; `abs` is the path to hand it when the caller's own cwd is in a
    /// bind (the kernel task's cwd is then stale), else None (use the guest's path as is).
    Kernel { abs: Option<CString> },
    /// Bind number `bind`, at `rel` below its root (empty for the root itself).
    Host { bind: usize, rel: Vec<u8> },
}

impl Binds {
    pub fn new(list: &[(PathBuf, PathBuf)]) -> std::io::Result<Binds> {
        let mut out = Vec::new();
        for (host, guest) in list {
            let host = std::fs::canonicalize(host)?;
            let root = rustix::fs::open(&host, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
                .map_err(std::io::Error::from)?;
            let mut g = guest.as_os_str().as_encoded_bytes().to_vec();
            while g.len() > 1 && g.ends_with(b"/") {
                g.pop();
            }
            out.push(Bind { guest: g, root });
        }
        // Longest first, so a bind inside another bind wins.
        out.sort_by_key(|b| std::cmp::Reverse(b.guest.len()));
        Ok(Binds(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn find(&self, abs: &[u8]) -> Option<(usize, Vec<u8>)> {
        self.0.iter().enumerate().find_map(|(i, b)| {
            let rest = abs.strip_prefix(b.guest.as_slice())?;
            if b.guest == b"/" {
                return Some((i, rest.to_vec()));
            }
            match rest {
                [] => Some((i, Vec::new())),
                [b'/', tail @ ..] => Some((i, tail.to_vec())),
                _ => None,
            }
        })
    }

    fn root(&self, bind: usize) -> Result<BorrowedFd<'_>, Errno> {
        self.0
            .get(bind)
            .map(|b| b.root.as_fd())
            .ok_or(Errno::ENOENT)
    }

    fn guest_path(&self, bind: usize, rel: &[u8]) -> Vec<u8> {
        let mut p = self
            .0
            .get(bind)
            .map(|b| b.guest.clone())
            .unwrap_or_default();
        if !rel.is_empty() {
            if p != b"/" {
                p.push(b'/');
            }
            p.extend_from_slice(rel);
        }
        p
    }

    /// Opens `rel` with every lookup kept beneath the bind's root.
    pub fn open(
        &self,
        bind: usize,
        rel: &[u8],
        flags: OFlags,
        mode: u32,
    ) -> Result<OwnedFd, Errno> {
        let root = self.root(bind)?;
        let path = if rel.is_empty() {
            c".".to_owned()
        } else {
            cstring(rel)?
        };
        rustix::fs::openat2(
            root,
            path.as_c_str(),
            flags | OFlags::CLOEXEC,
            Mode::from_bits_truncate(mode),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(hostio::errno)
    }

    /// The directory holding `rel` (confined) and the last component's name. The bind's
    /// root itself has no parent here: EBUSY, as for a mount point.
    fn parent(&self, bind: usize, rel: &[u8]) -> Result<(OwnedFd, CString), Errno> {
        if rel.is_empty() {
            return Err(Errno::EBUSY);
        }
        let (dir, base) = match rel.iter().rposition(|&b| b == b'/') {
            Some(i) => (&rel[..i], &rel[i + 1..]),
            None => (&b""[..], rel),
        };
        let d = self.open(bind, dir, OFlags::PATH | OFlags::DIRECTORY, 0)?;
        Ok((d, cstring(base)?))
    }
}

fn cstring(b: &[u8]) -> Result<CString, Errno> {
    CString::new(b).map_err(|_| Errno::EINVAL)
}

fn dirfd_of(fd: &impl AsRawFd) -> u64 {
    super::fdv(fd.as_raw_fd())
}

impl Engine {
    /// Where `path` (relative to `dirfd`) leads for process `pid`.
    pub(super) fn locate(&self, pid: u32, dirfd: u64, path: &CStr) -> Result<Place, Errno> {
        if self.binds.is_empty() {
            return Ok(Place::Kernel { abs: None });
        }
        let p = self.procs.get(pid).ok_or(Errno::ESRCH)?;
        let bytes = path.to_bytes();
        let fd = fd_arg(dirfd);
        let base: Vec<u8> = if bytes.first() == Some(&b'/') {
            b"/".to_vec()
        } else if dirfd == AT_FDCWD || fd == -100 {
            match &p.cwd_bind {
                Some(c) => c.clone(),
                None => {
                    let buf = [0u8; 4096];
                    let n = lkl(&p.task, g::GETCWD, [ptr(buf.as_ptr()), 4096, 0, 0, 0, 0])?;
                    buf[..usize::try_from(n).unwrap_or(1).saturating_sub(1)].to_vec()
                }
            }
        } else if let Some(dir) = p.bind_fds.get(&fd) {
            dir.clone()
        } else {
            // A directory FD of the image: the kernel library resolves it there.
            return Ok(Place::Kernel { abs: None });
        };
        let mut abs = kbox_core::path::PathBuf::new();
        normalize(bytes, &base, &mut abs).map_err(|e| Errno(i32::from(e.get())))?;
        let trimmed: &[u8] = if abs.len() > 1 && abs.ends_with(b"/") {
            &abs[..abs.len() - 1]
        } else {
            &abs
        };
        Ok(match self.binds.find(trimmed) {
            Some((bind, rel)) => Place::Host { bind, rel },
            None if p.cwd_bind.is_some() && bytes.first() != Some(&b'/') => Place::Kernel {
                abs: Some(cstring(&abs)?),
            },
            None => Place::Kernel { abs: None },
        })
    }

    /// open/openat of a path in a bind: a plain host FD.
    pub(super) fn bind_open(
        &mut self,
        guest: &dyn Guest,
        pid: u32,
        bind: usize,
        rel: &[u8],
        flags: u64,
        mode: u64,
    ) -> Result<i64, Errno> {
        let oflags = OFlags::from_bits_retain(u32::try_from(flags & 0xffff_ffff).unwrap_or(0))
            & !OFlags::CLOEXEC;
        // The mode means something only with O_CREAT or O_TMPFILE; otherwise it is whatever
        // the caller passed (Go's os.OpenFile(name, O_RDONLY, 0644) passes 0644), which
        // openat ignores and openat2 refuses (EINVAL).
        let creates = oflags.contains(OFlags::CREATE) || oflags.contains(OFlags::TMPFILE);
        let mode = if creates { mode & 0o7777 } else { 0 };
        let fd = self
            .binds
            .open(bind, rel, oflags, u32::try_from(mode).unwrap_or(0))?;
        let is_dir = rustix::fs::fstat(&fd).is_ok_and(|st| st.st_mode & 0o170000 == 0o040000);
        let n = guest.answer_with_fd(fd.as_fd(), None, flags & 0o2000000 != 0)?;
        if let Some(p) = self.procs.get_mut(pid) {
            if is_dir {
                p.bind_fds.insert(n, self.binds.guest_path(bind, rel));
            } else {
                p.bind_fds.remove(&n);
            }
        }
        Ok(i64::from(n))
    }

    /// stat/lstat/fstatat of a path in a bind, in the host's layout (the guest's own).
    pub(super) fn bind_stat(&self, bind: usize, rel: &[u8], flags: u64) -> Result<Vec<u8>, Errno> {
        if flags & AT_SYMLINK_NOFOLLOW != 0 && !rel.is_empty() {
            let (dir, base) = self.binds.parent(bind, rel)?;
            return hostio::stat_raw(dir.as_fd(), &base, AT_SYMLINK_NOFOLLOW);
        }
        let fd = self.binds.open(bind, rel, OFlags::PATH, 0)?;
        hostio::stat_raw(fd.as_fd(), c"", AT_EMPTY_PATH)
    }

    pub(super) fn bind_statx(
        &self,
        bind: usize,
        rel: &[u8],
        flags: u64,
        mask: u64,
    ) -> Result<Vec<u8>, Errno> {
        if flags & AT_SYMLINK_NOFOLLOW != 0 && !rel.is_empty() {
            let (dir, base) = self.binds.parent(bind, rel)?;
            return hostio::statx_raw(dir.as_fd(), &base, flags, mask);
        }
        let fd = self.binds.open(bind, rel, OFlags::PATH, 0)?;
        hostio::statx_raw(
            fd.as_fd(),
            c"",
            (flags & !AT_SYMLINK_NOFOLLOW) | AT_EMPTY_PATH,
            mask,
        )
    }

    /// The path-based calls of forward.rs when their path is in a bind. `places` are the
    /// call's paths in argument order, already located.
    pub(super) fn bind_call(
        &mut self,
        guest: &dyn Guest,
        pid: u32,
        nr: u32,
        args: [u64; 6],
        places: &[(usize, Place)],
    ) -> Reply {
        match self.bind_call_inner(guest, pid, nr, args, places) {
            Ok(v) => Reply::Value(v),
            Err(e) => Reply::Fail(e),
        }
    }

    fn bind_call_inner(
        &mut self,
        guest: &dyn Guest,
        pid: u32,
        nr: u32,
        args: [u64; 6],
        places: &[(usize, Place)],
    ) -> Result<i64, Errno> {
        let host = |i: usize| -> Result<(usize, &[u8]), Errno> {
            match places.iter().find(|(a, _)| *a == i) {
                Some((_, Place::Host { bind, rel })) => Ok((*bind, rel.as_slice())),
                // One path in a bind and one in the image: different filesystems.
                _ => Err(Errno::EXDEV),
            }
        };
        let b = &self.binds;
        match nr {
            g::FACCESSAT | g::FACCESSAT2 => {
                let (bind, rel) = host(1)?;
                let fd = b.open(bind, rel, OFlags::PATH, 0)?;
                let flags = if nr == g::FACCESSAT2 { args[3] } else { 0 };
                hostio::at_call(
                    libc::SYS_faccessat2,
                    [
                        dirfd_of(&fd),
                        ptr(c"".as_ptr()),
                        args[2],
                        flags | AT_EMPTY_PATH,
                        0,
                        0,
                    ],
                )
            }
            g::MKDIRAT => {
                let (bind, rel) = host(1)?;
                let (d, base) = b.parent(bind, rel)?;
                hostio::at_call(
                    libc::SYS_mkdirat,
                    [dirfd_of(&d), ptr(base.as_ptr()), args[2], 0, 0, 0],
                )
            }
            g::UNLINKAT => {
                let (bind, rel) = host(1)?;
                let (d, base) = b.parent(bind, rel)?;
                hostio::at_call(
                    libc::SYS_unlinkat,
                    [dirfd_of(&d), ptr(base.as_ptr()), args[2], 0, 0, 0],
                )
            }
            g::SYMLINKAT => {
                let target = guest.read_path(args[0])?;
                let (bind, rel) = host(2)?;
                let (d, base) = b.parent(bind, rel)?;
                hostio::at_call(
                    libc::SYS_symlinkat,
                    [
                        ptr(target.as_ptr()),
                        dirfd_of(&d),
                        ptr(base.as_ptr()),
                        0,
                        0,
                        0,
                    ],
                )
            }
            g::LINKAT | g::RENAMEAT | g::RENAMEAT2 => {
                let ((b1, r1), (b2, r2)) = (host(1)?, host(3)?);
                if b1 != b2 {
                    return Err(Errno::EXDEV);
                }
                let (d1, n1) = b.parent(b1, r1)?;
                let (d2, n2) = b.parent(b2, r2)?;
                let (no, flags) = match nr {
                    g::LINKAT => (libc::SYS_linkat, args[4]),
                    g::RENAMEAT => (libc::SYS_renameat2, 0),
                    _ => (libc::SYS_renameat2, args[4]),
                };
                hostio::at_call(
                    no,
                    [
                        dirfd_of(&d1),
                        ptr(n1.as_ptr()),
                        dirfd_of(&d2),
                        ptr(n2.as_ptr()),
                        flags,
                        0,
                    ],
                )
            }
            g::FCHMODAT | g::FCHMODAT2 => {
                let (bind, rel) = host(1)?;
                let fd = b.open(bind, rel, OFlags::PATH, 0)?;
                let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
                rustix::fs::chmod(
                    path.as_str(),
                    Mode::from_bits_truncate(u32::try_from(args[2] & 0o7777).unwrap_or(0)),
                )
                .map(|()| 0)
                .map_err(hostio::errno)
            }
            g::FCHOWNAT => {
                let (bind, rel) = host(1)?;
                let fd = b.open(bind, rel, OFlags::PATH, 0)?;
                hostio::at_call(
                    libc::SYS_fchownat,
                    [
                        dirfd_of(&fd),
                        ptr(c"".as_ptr()),
                        args[2],
                        args[3],
                        AT_EMPTY_PATH,
                        0,
                    ],
                )
            }
            g::UTIMENSAT => {
                let (bind, rel) = host(1)?;
                let mut times = [0u8; 32];
                let tp = if args[2] == 0 {
                    0
                } else {
                    guest.read(args[2], &mut times)?;
                    ptr(times.as_ptr())
                };
                let fd = b.open(bind, rel, OFlags::PATH, 0)?;
                hostio::at_call(
                    libc::SYS_utimensat,
                    [dirfd_of(&fd), ptr(c"".as_ptr()), tp, AT_EMPTY_PATH, 0, 0],
                )
            }
            g::TRUNCATE => {
                let (bind, rel) = host(0)?;
                let fd = b.open(bind, rel, OFlags::WRONLY, 0)?;
                rustix::fs::ftruncate(&fd, args[1])
                    .map(|()| 0)
                    .map_err(hostio::errno)
            }
            g::STATFS => {
                let (bind, rel) = host(0)?;
                let fd = b.open(bind, rel, OFlags::PATH, 0)?;
                let buf = hostio::fstatfs_raw(fd.as_fd())?;
                guest.write(args[1], &buf)?;
                Ok(0)
            }
            g::CHDIR => {
                let (bind, rel) = host(0)?;
                let fd = b.open(bind, rel, OFlags::PATH | OFlags::DIRECTORY, 0)?;
                drop(fd);
                let path = b.guest_path(bind, rel);
                let p = self.procs.get_mut(pid).ok_or(Errno::ESRCH)?;
                p.cwd_bind = Some(path);
                Ok(0)
            }
            g::READLINKAT => {
                let (bind, rel) = host(1)?;
                let (d, base) = b.parent(bind, rel)?;
                let target = rustix::fs::readlinkat(&d, base.as_c_str(), Vec::new())
                    .map_err(hostio::errno)?;
                let t = target.as_bytes();
                let n = t
                    .len()
                    .min(usize::try_from(args[3] & 0xffff_ffff).unwrap_or(0));
                guest.write(args[2], &t[..n])?;
                Ok(i64::try_from(n).unwrap_or(0))
            }
            g::GETXATTR
            | g::LGETXATTR
            | g::SETXATTR
            | g::LSETXATTR
            | g::LISTXATTR
            | g::LLISTXATTR
            | g::REMOVEXATTR
            | g::LREMOVEXATTR => Err(Errno::EOPNOTSUPP),
            _ => Err(Errno::EPERM),
        }
    }

    /// The guest path of `rel` in bind `bind`.
    pub(super) fn binds_guest_path(&self, bind: usize, rel: &[u8]) -> Vec<u8> {
        self.binds.guest_path(bind, rel)
    }

    /// The host path to exec for a program in a bind.
    pub(super) fn bind_exec_path(&self, bind: usize, rel: &[u8]) -> Result<PathBuf, Errno> {
        let fd = self.binds.open(bind, rel, OFlags::PATH, 0)?;
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(|_| Errno::ENOENT)
    }
}
