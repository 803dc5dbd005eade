//! Calls the kernel library serves as they are, once their pointer arguments are copied in and
//! out of the guest: described by shape, one table for all of them.

use std::ffi::CString;

use kbox_core::abi::stat::{GENERIC_STAT_SIZE, GenericStat};
use kbox_core::shadow::FileId;
use kbox_core::sysno::generic as g;
use kbox_lkl::Errno;

use super::binds::Place;
use super::files::AT_FDCWD;
use super::linux::{AT_REMOVEDIR, AT_SYMLINK_NOFOLLOW, RENAME_EXCHANGE, S_IFMT, S_IFREG};
use super::{Engine, Guest, Reply, fd_arg, lkl, ptr};

/// What one argument is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum A {
    /// Passed as is.
    Int,
    /// A `*at` directory FD (checked against the served FDs; the path is the next Path).
    Dir,
    /// A guest FD the kernel library must serve; a host-only one sends the call to the host.
    Fd,
    /// A NUL-terminated guest string.
    Path,
    /// A guest string or NULL.
    PathOrNull,
    /// Guest bytes in, length in argument `.0`.
    In(u8),
    /// Guest bytes in, a fixed length, or NULL.
    InFixed(usize),
    /// Guest bytes out, capacity in argument `.0`; the result is the length written.
    OutLen(u8),
    /// Guest bytes out, a fixed length, written on success.
    OutFixed(usize),
    /// `count` entries of `size` bytes out, count in argument `.0` (getgroups).
    OutArray(u8, usize),
    /// `count` entries of `size` bytes in (setgroups).
    InArray(u8, usize),
}

use A::*;

/// The arguments of call `nr` that name places in the filesystem: (path argument, its dirfd
/// argument if any). Other string arguments (a symlink's target, an xattr name, a mount's
/// source or options) are data.
fn locations(nr: u32, shape: &[A]) -> Vec<(usize, Option<usize>)> {
    let mut out: Vec<(usize, Option<usize>)> = shape
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[0] == Dir && matches!(w[1], Path | PathOrNull))
        .map(|(i, _)| (i + 1, Some(i)))
        .collect();
    match nr {
        g::TRUNCATE
        | g::CHDIR
        | g::CHROOT
        | g::STATFS
        | g::GETXATTR
        | g::LGETXATTR
        | g::SETXATTR
        | g::LSETXATTR
        | g::LISTXATTR
        | g::LLISTXATTR
        | g::REMOVEXATTR
        | g::LREMOVEXATTR
        | g::UMOUNT2 => out.push((0, None)),
        g::MOUNT => out.push((1, None)),
        _ => {}
    }
    out
}

/// Largest buffer copied in or out for one call.
const MAX_BUF: usize = 1 << 20;

pub fn shape(nr: u32) -> Option<&'static [A]> {
    Some(match nr {
        g::FACCESSAT => &[Dir, Path, Int],
        g::FACCESSAT2 => &[Dir, Path, Int, Int],
        g::MKDIRAT => &[Dir, Path, Int],
        g::MKNODAT => &[Dir, Path, Int, Int],
        g::UNLINKAT => &[Dir, Path, Int],
        g::SYMLINKAT => &[Path, Dir, Path],
        g::LINKAT => &[Dir, Path, Dir, Path, Int],
        g::RENAMEAT => &[Dir, Path, Dir, Path],
        g::RENAMEAT2 => &[Dir, Path, Dir, Path, Int],
        g::FCHMODAT => &[Dir, Path, Int],
        g::FCHMODAT2 => &[Dir, Path, Int, Int],
        g::FCHOWNAT => &[Dir, Path, Int, Int, Int],
        g::UTIMENSAT => &[Dir, PathOrNull, InFixed(32), Int],
        g::TRUNCATE => &[Path, Int],
        g::CHDIR => &[Path],
        g::CHROOT => &[Path],
        g::STATFS => &[Path, OutFixed(120)],
        g::FSTATFS => &[Fd, OutFixed(120)],
        g::GETXATTR | g::LGETXATTR => &[Path, Path, OutLen(3), Int],
        g::FGETXATTR => &[Fd, Path, OutLen(3), Int],
        g::SETXATTR | g::LSETXATTR => &[Path, Path, In(3), Int, Int],
        g::FSETXATTR => &[Fd, Path, In(3), Int, Int],
        g::LISTXATTR | g::LLISTXATTR => &[Path, OutLen(2), Int],
        g::FLISTXATTR => &[Fd, OutLen(2), Int],
        g::REMOVEXATTR | g::LREMOVEXATTR => &[Path, Path],
        g::FREMOVEXATTR => &[Fd, Path],
        g::GETCWD => &[OutLen(1), Int],
        g::MOUNT => &[PathOrNull, Path, PathOrNull, Int, PathOrNull],
        g::UMOUNT2 => &[Path, Int],
        g::FCHMOD => &[Fd, Int],
        g::FCHOWN => &[Fd, Int, Int],
        g::SYNC => &[],
        g::SYNCFS => &[Fd],
        g::UMASK => &[Int],
        g::SETHOSTNAME | g::SETDOMAINNAME => &[In(1), Int],
        g::SYSINFO => &[OutFixed(112)],
        g::GETUID | g::GETEUID | g::GETGID | g::GETEGID => &[],
        g::SETUID | g::SETGID | g::SETFSUID | g::SETFSGID => &[Int],
        g::SETREUID | g::SETREGID => &[Int, Int],
        g::SETRESUID | g::SETRESGID => &[Int, Int, Int],
        g::GETRESUID | g::GETRESGID => &[OutFixed(4), OutFixed(4), OutFixed(4)],
        g::GETGROUPS => &[Int, OutArray(0, 4)],
        g::LISTEN => &[Fd, Int],
        g::SETSOCKOPT => &[Fd, Int, Int, In(4), Int],
        g::SETGROUPS => &[Int, InArray(0, 4)],
        _ => return None,
    })
}

impl Engine {
    pub(super) fn forward(
        &mut self,
        guest: &dyn Guest,
        pid: u32,
        nr: u32,
        args: [u64; 6],
    ) -> Reply {
        let Some(shape) = shape(nr) else {
            return Reply::Fail(Errno::ENOSYS);
        };
        match self.forward_shaped(guest, pid, nr, shape, args, None) {
            Ok(Some(v)) => Reply::Value(v),
            Ok(None) => Reply::Continue,
            Err(e) => Reply::Fail(e),
        }
    }

    /// `given`: the bytes of one In/InFixed argument that kbox has already read (and
    /// converted) itself, by argument index.
    fn forward_shaped(
        &mut self,
        guest: &dyn Guest,
        pid: u32,
        nr: u32,
        shape: &[A],
        args: [u64; 6],
        mut given: Option<(usize, Vec<u8>)>,
    ) -> Result<Option<i64>, Errno> {
        // utimensat(AT_FDCWD, NULL, ...) has no file to act on: Linux faults on the NULL
        // name (a NULL name with a real directory FD means that FD itself).
        if nr == g::UTIMENSAT && args[1] == 0 && (args[0] == AT_FDCWD || fd_arg(args[0]) == -100) {
            return Err(Errno::EFAULT);
        }
        let mut strings: Vec<CString> = Vec::new();
        let mut bufs: Vec<Vec<u8>> = Vec::new();
        let mut out: Vec<(usize, u64, bool)> = Vec::new(); // (buf index, guest addr, by result)
        let mut kargs = args;
        // Paths first: a Dir's check needs the path after it.
        let mut paths: [Option<usize>; 6] = [None; 6];
        for (i, a) in shape.iter().enumerate() {
            if matches!(a, Path) || (matches!(a, PathOrNull) && args[i] != 0) {
                strings.push(guest.read_path(args[i])?);
                paths[i] = Some(strings.len() - 1);
            }
        }
        // Paths that name places: in a bind, the host serves the call; relative ones while
        // the cwd is in a bind reach the kernel library as absolute paths.
        let mut cwd_dirs = [false; 6];
        if !self.binds.is_empty() {
            let mut places = Vec::new();
            for (at, dir) in locations(nr, shape) {
                let Some(si) = paths[at] else { continue };
                let raw_dir = dir.map_or(AT_FDCWD, |d| args[d]);
                let place = self.locate(pid, raw_dir, &strings[si])?;
                if let Place::Kernel { abs: Some(abs) } = &place {
                    strings[si] = abs.clone();
                    if let Some(d) = dir {
                        cwd_dirs[d] = true;
                    }
                }
                places.push((at, place));
            }
            if places.iter().any(|(_, p)| matches!(p, Place::Host { .. })) {
                return match self.bind_call(guest, pid, nr, args, &places) {
                    Reply::Value(v) => Ok(Some(v)),
                    Reply::Fail(e) => Err(e),
                    Reply::Continue => Ok(None),
                };
            }
        }
        for (i, a) in shape.iter().enumerate() {
            match *a {
                Int => {}
                Path | PathOrNull => {
                    kargs[i] = paths[i].map_or(0, |s| ptr(strings[s].as_ptr()));
                }
                Dir if cwd_dirs[i] => kargs[i] = AT_FDCWD,
                Dir => {
                    let next = paths.get(i + 1).copied().flatten();
                    let path = next.map_or(&b""[..], |s| strings[s].as_bytes());
                    kargs[i] = self.dirfd(pid, args[i], path)?;
                }
                Fd => {
                    if self.served(pid, fd_arg(args[i])).is_none() {
                        return Ok(None);
                    }
                }
                In(n) => {
                    let len = len_arg(args[usize::from(n)])?;
                    let mut b = vec![0u8; len];
                    guest.read(args[i], &mut b)?;
                    kargs[i] = ptr(b.as_mut_ptr());
                    bufs.push(b);
                }
                InFixed(_) if given.as_ref().is_some_and(|(at, _)| *at == i) => {
                    if let Some((_, mut b)) = given.take() {
                        kargs[i] = ptr(b.as_mut_ptr());
                        bufs.push(b);
                    }
                }
                InFixed(len) => {
                    if args[i] != 0 {
                        let mut b = vec![0u8; len];
                        guest.read(args[i], &mut b)?;
                        kargs[i] = ptr(b.as_mut_ptr());
                        bufs.push(b);
                    }
                }
                InArray(n, size) => {
                    let len = len_arg(args[usize::from(n)])?.saturating_mul(size);
                    let mut b = vec![0u8; len.min(MAX_BUF)];
                    guest.read(args[i], &mut b)?;
                    kargs[i] = ptr(b.as_mut_ptr());
                    bufs.push(b);
                }
                OutLen(n) => {
                    let len = cap_arg(args[usize::from(n)]);
                    // Always kbox's own buffer: the kernel library has no MMU, so a guest
                    // address handed to it would be written as kbox's memory. A bad guest
                    // address fails when the result is copied out, with EFAULT.
                    let mut b = vec![0u8; len];
                    kargs[i] = ptr(b.as_mut_ptr());
                    out.push((bufs.len(), args[i], true));
                    bufs.push(b);
                }
                OutFixed(len) => {
                    let mut b = vec![0u8; len];
                    kargs[i] = ptr(b.as_mut_ptr());
                    out.push((bufs.len(), args[i], false));
                    bufs.push(b);
                }
                OutArray(n, size) => {
                    let len = cap_arg(args[usize::from(n)])
                        .saturating_mul(size)
                        .min(MAX_BUF);
                    let mut b = vec![0u8; len];
                    kargs[i] = ptr(b.as_mut_ptr());
                    out.push((bufs.len(), args[i], false));
                    bufs.push(b);
                }
            }
        }
        let p = self.procs.get_mut(pid).ok_or(Errno::ESRCH)?;
        if nr == g::GETCWD
            && let Some(cwd) = &p.cwd_bind
        {
            // The cwd is in a bind: the kernel task's own cwd is stale.
            let mut text = cwd.clone();
            text.push(0);
            if text.len() > usize::try_from(args[1]).unwrap_or(0) {
                return Err(Errno::ERANGE);
            }
            guest.write(args[0], &text)?;
            return Ok(Some(i64::try_from(text.len()).unwrap_or(0)));
        }
        let victim = file_replaced_by(&p.task, nr, kargs);
        let ret = lkl(&p.task, nr, kargs)?;
        if nr == g::CHDIR {
            p.cwd_bind = None;
        }
        self.after_change(pid, nr, kargs, victim);
        for (b, addr, by_result) in out {
            let buf = &bufs[b];
            let n = if by_result {
                usize::try_from(ret).unwrap_or(0).min(buf.len())
            } else if nr == g::GETGROUPS {
                (usize::try_from(ret).unwrap_or(0) * 4).min(buf.len())
            } else {
                buf.len()
            };
            if n > 0 {
                guest.write(addr, &buf[..n])?;
            }
        }
        Ok(Some(ret))
    }

    pub(super) fn readlinkat(&mut self, guest: &dyn Guest, pid: u32, args: [u64; 6]) -> Reply {
        let path = match guest.read_path(args[1]) {
            Ok(p) => p,
            Err(e) => return Reply::Fail(e),
        };
        // /proc/self/exe is the guest path of the running program (the kernel library's
        // task runs no program of its own).
        if matches!(
            path.as_bytes(),
            b"/proc/self/exe" | b"/proc/thread-self/exe"
        ) && let Some(p) = self.procs.get(pid)
            && !p.exe.as_bytes().is_empty()
        {
            return answer_link(guest, args, p.exe.as_bytes());
        }
        if let Some(link) = self.host_fd_link(guest, pid, path.as_bytes()) {
            return answer_link(guest, args, &link);
        }
        let _ = AT_FDCWD;
        self.forward_shaped(
            guest,
            pid,
            g::READLINKAT,
            &[Dir, Path, OutLen(3), Int],
            args,
            None,
        )
        .map(|v| v.unwrap_or(0))
        .into()
    }

    /// The target of `/proc/self/fd/N` (or thread-self's) when FD N is one kbox does not
    /// serve: the host's link, for the kinds whose text names nothing of the host's
    /// (pipes, sockets, anonymous inodes, memfds, devices); None otherwise.
    fn host_fd_link(&self, guest: &dyn Guest, pid: u32, path: &[u8]) -> Option<Vec<u8>> {
        let n = path
            .strip_prefix(b"/proc/self/fd/")
            .or_else(|| path.strip_prefix(b"/proc/thread-self/fd/"))?;
        let fd: i32 = std::str::from_utf8(n).ok()?.parse().ok()?;
        if self.served(pid, fd).is_some() {
            return None;
        }
        let link = std::fs::read_link(format!("/proc/{}/fd/{fd}", guest.tid())).ok()?;
        let link = link.into_os_string().into_encoded_bytes();
        let shown = [
            &b"pipe:["[..],
            b"socket:[",
            b"anon_inode:",
            b"/memfd:",
            b"/dev/",
        ];
        shown.iter().any(|p| link.starts_with(p)).then_some(link)
    }

    /// utime, utimes and futimesat, lowered to utimensat (`args` in its order): the guest's
    /// `struct utimbuf` (`seconds`) or two timevals become two timespecs.
    pub(super) fn legacy_utimes(
        &mut self,
        guest: &dyn Guest,
        pid: u32,
        args: [u64; 6],
        seconds: bool,
    ) -> Reply {
        let mut given = None;
        if args[2] != 0 {
            let mut raw = [0u8; 32];
            if let Err(e) = guest.read(args[2], &mut raw[..if seconds { 16 } else { 32 }]) {
                return Reply::Fail(e);
            }
            let word = |i: usize| {
                let mut w = [0u8; 8];
                w.copy_from_slice(&raw[i * 8..i * 8 + 8]);
                i64::from_ne_bytes(w)
            };
            let pairs = if seconds {
                [(word(0), 0), (word(1), 0)]
            } else {
                [(word(0), word(1)), (word(2), word(3))]
            };
            let mut ts = Vec::with_capacity(32);
            for (sec, usec) in pairs {
                if !(0..1_000_000).contains(&usec) {
                    return Reply::Fail(Errno::EINVAL);
                }
                ts.extend_from_slice(&sec.to_ne_bytes());
                ts.extend_from_slice(&(usec * 1000).to_ne_bytes());
            }
            given = Some((2, ts));
        }
        let shape = shape(g::UTIMENSAT).unwrap_or(&[]);
        match self.forward_shaped(guest, pid, g::UTIMENSAT, shape, args, given) {
            Ok(Some(v)) => Reply::Value(v),
            Ok(None) => Reply::Continue,
            Err(e) => Reply::Fail(e),
        }
    }

    /// uname from the kernel library (its hostname, which the guest may set), with the
    /// machine field of the host the guest's binaries actually run on.
    pub(super) fn uname(&mut self, guest: &dyn Guest, pid: u32, addr: u64) -> Reply {
        const FIELD: usize = 65;
        let Some(p) = self.procs.get(pid) else {
            return Reply::Fail(Errno::ESRCH);
        };
        let mut buf = [0u8; FIELD * 6];
        if let Err(e) = lkl(&p.task, g::UNAME, [ptr(buf.as_mut_ptr()), 0, 0, 0, 0, 0]) {
            return Reply::Fail(e);
        }
        let host = rustix::system::uname();
        let machine = host.machine().to_bytes();
        let slot = &mut buf[FIELD * 4..FIELD * 5];
        slot.fill(0);
        let n = machine.len().min(FIELD - 1);
        slot[..n].copy_from_slice(&machine[..n]);
        match guest.write(addr, &buf) {
            Ok(()) => Reply::Value(0),
            Err(e) => Reply::Fail(e),
        }
    }
}

/// The regular file that call `nr` (with kernel-side arguments `kargs`) is about to unlink
/// or rename another file over, if any.
fn file_replaced_by(task: &kbox_lkl::Task, nr: u32, kargs: [u64; 6]) -> Option<FileId> {
    let (dirfd, path) = match nr {
        g::UNLINKAT if kargs[2] & AT_REMOVEDIR == 0 => (kargs[0], kargs[1]),
        g::RENAMEAT => (kargs[2], kargs[3]),
        g::RENAMEAT2 if kargs[4] & RENAME_EXCHANGE == 0 => (kargs[2], kargs[3]),
        _ => return None,
    };
    let st = stat_at(task, dirfd, path, AT_SYMLINK_NOFOLLOW).ok()?;
    (st.st_mode & S_IFMT == S_IFREG).then_some(FileId {
        dev: st.st_dev,
        ino: st.st_ino,
    })
}

/// newfstatat in the kernel library, `path` being a pointer to our own memory.
/// readlinkat's answer made by kbox: `link`, cut to the guest's buffer (args[2], size
/// args[3]) as readlink cuts it, without a NUL.
fn answer_link(guest: &dyn Guest, args: [u64; 6], link: &[u8]) -> Reply {
    let n = link
        .len()
        .min(usize::try_from(args[3] & 0xffff_ffff).unwrap_or(0));
    match guest.write(args[2], &link[..n]) {
        Ok(()) => Reply::Value(i64::try_from(n).unwrap_or(0)),
        Err(e) => Reply::Fail(e),
    }
}

fn stat_at(task: &kbox_lkl::Task, dirfd: u64, path: u64, flags: u64) -> Result<GenericStat, Errno> {
    let mut buf = [0u8; GENERIC_STAT_SIZE];
    lkl(
        task,
        g::NEWFSTATAT,
        [dirfd, path, ptr(buf.as_mut_ptr()), flags, 0, 0],
    )?;
    Ok(GenericStat::from_bytes(&buf))
}

impl Engine {
    /// Keeps the shadow cache true to the image after a successful call that changed a
    /// file's contents or names (see shadow.rs: kbox, the image's only writer, updates
    /// copies itself instead of trusting timestamps).
    fn after_change(&mut self, pid: u32, nr: u32, kargs: [u64; 6], victim: Option<FileId>) {
        if let Some(id) = victim {
            self.procs.release_kept(id, &mut self.shadows);
            self.shadows.unlinked(id);
        }
        match nr {
            g::TRUNCATE => {
                let Some(p) = self.procs.get(pid) else { return };
                if let Ok(st) = stat_at(&p.task, AT_FDCWD, kargs[0], 0) {
                    let id = FileId {
                        dev: st.st_dev,
                        ino: st.st_ino,
                    };
                    self.shadows.resized(id, &st);
                }
            }
            g::MOUNT | g::UMOUNT2 => {
                self.shadows.forget_all();
                self.exec.forget_all();
            }
            _ => {}
        }
    }
}

/// An output capacity, capped: the kernel library writes no more than that anyway.
fn cap_arg(v: u64) -> usize {
    usize::try_from(v & 0xffff_ffff)
        .unwrap_or(MAX_BUF)
        .min(MAX_BUF)
}

fn len_arg(v: u64) -> Result<usize, Errno> {
    let n = usize::try_from(v & 0xffff_ffff_ffff).map_err(|_| Errno::EINVAL)?;
    if n > MAX_BUF {
        return Err(Errno::E2BIG);
    }
    Ok(n)
}
