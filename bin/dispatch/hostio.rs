//! Host-side file plumbing the engine needs: memfds, mappings, reopening an FD with another
//! access mode, and peeking at a guest process through /proc. All the engine's `unsafe` is
//! here.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use kbox_lkl::Errno;
use rustix::fs::{MemfdFlags, Mode, OFlags};
use rustix::mm::{MapFlags, ProtFlags};

/// Where kbox's own FDs start when the guest shares kbox's FD table (the in-process tiers):
/// numbers below are the guest's, which must find them free, lowest first, as POSIX says.
/// 0 for the seccomp tier, whose guests have FD tables of their own.
static FD_FLOOR: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

pub fn set_fd_floor(floor: i32) {
    FD_FLOOR.store(floor, std::sync::atomic::Ordering::Relaxed);
}

/// The FD floor, when the guest shares kbox's FD table.
pub fn fd_floor() -> Option<i32> {
    Some(FD_FLOOR.load(std::sync::atomic::Ordering::Relaxed)).filter(|&f| f > 0)
}

/// Moves an FD kbox just made to or above the floor, out of the guest's numbers. On
/// failure (RLIMIT_NOFILE) it stays where it is: a guest then skips that number.
pub fn lift(fd: OwnedFd) -> OwnedFd {
    let floor = FD_FLOOR.load(std::sync::atomic::Ordering::Relaxed);
    if floor == 0 || fd.as_raw_fd() >= floor {
        return fd;
    }
    rustix::io::fcntl_dupfd_cloexec(&fd, floor).unwrap_or(fd)
}

pub fn errno(e: rustix::io::Errno) -> Errno {
    Errno(e.raw_os_error())
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno(e.raw_os_error().unwrap_or(libc::EIO))
}

/// An empty memfd of `size` bytes that can be sealed later.
pub fn memfd(size: u64) -> Result<OwnedFd, Errno> {
    let fd = rustix::fs::memfd_create(
        c"kbox-shadow",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .map_err(errno)?;
    rustix::fs::ftruncate(&fd, size).map_err(errno)?;
    Ok(lift(fd))
}

/// Access and modification times for futimens/utimensat, each the epoch plus `nsec`
/// nanoseconds, or UTIME_NOW / UTIME_OMIT.
pub fn timestamps(atime_nsec: i64, mtime_nsec: i64) -> rustix::fs::Timestamps {
    let at = |tv_nsec| rustix::fs::Timespec { tv_sec: 0, tv_nsec };
    rustix::fs::Timestamps {
        last_access: at(atime_nsec),
        last_modification: at(mtime_nsec),
    }
}

/// A new open file description of the file `fd` refers to, with its own access mode and
/// offset (through /proc/self/fd, as Linux allows for memfds and regular files). Every
/// open of a shadowed file does this: the directory stays open, which spares the walk of
/// /proc and /proc/self each time (3.4 µs to 2.4 µs here).
pub fn reopen(fd: BorrowedFd<'_>, flags: OFlags) -> Result<OwnedFd, Errno> {
    static FD_DIR: std::sync::OnceLock<Option<OwnedFd>> = std::sync::OnceLock::new();
    let name = fd.as_raw_fd().to_string();
    let flags = flags | OFlags::CLOEXEC;
    // Opened by kbox's own process (only kbox's threads reopen, never a process it
    // forks), so "self" stays kbox.
    let dir = FD_DIR.get_or_init(|| {
        rustix::fs::open(
            "/proc/self/fd",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()
        .map(lift)
    });
    match dir {
        Some(dir) => rustix::fs::openat(dir, name.as_str(), flags, Mode::empty()),
        None => rustix::fs::open(
            format!("/proc/self/fd/{name}").as_str(),
            flags,
            Mode::empty(),
        ),
    }
    .map(lift)
    .map_err(errno)
}

/// A shared mapping of `len` bytes of `fd`, unmapped on drop; for a small read-only one,
/// a copy of the bytes instead (see `COPY_BELOW`).
pub struct Mapping {
    addr: *mut core::ffi::c_void,
    len: usize,
    copy: Option<Box<[u8]>>,
}

/// Read-only "mappings" smaller than this are copies: a pread of a few KiB costs about a
/// microsecond, where mmap, the page faults on reading and munmap (which must flush the
/// other CPUs' TLBs while kbox's threads run there) cost several. Most files a guest
/// writes and closes are this small.
const COPY_BELOW: usize = 64 << 10;

impl Mapping {
    pub fn new(fd: BorrowedFd<'_>, len: usize, writable: bool) -> Result<Mapping, Errno> {
        if len == 0 {
            return Ok(Mapping {
                addr: core::ptr::null_mut(),
                len: 0,
                copy: None,
            });
        }
        if !writable && len < COPY_BELOW {
            let mut copy = vec![0u8; len].into_boxed_slice();
            let mut done = 0;
            while done < len {
                match rustix::io::pread(fd, &mut copy[done..], done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(errno(e)),
                }
            }
            // Short only if the file shrank since the caller's stat: the rest stays zeros
            // (a mapping would fault there instead).
            return Ok(Mapping {
                addr: copy.as_mut_ptr().cast(),
                len,
                copy: Some(copy),
            });
        }
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        // SAFETY: a fresh mapping chosen by the kernel; nothing else refers to that range.
        let addr =
            unsafe { rustix::mm::mmap(core::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0) }
                .map_err(errno)?;
        Ok(Mapping {
            addr,
            len,
            copy: None,
        })
    }

    pub fn addr(&self) -> u64 {
        self.addr as usize as u64
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The mapped bytes. Another process may change them meanwhile (the file is shared),
    /// which for plain bytes is a changed value, never undefined behaviour of ours.
    pub fn bytes(&self) -> &[u8] {
        if let Some(copy) = &self.copy {
            return copy;
        }
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `addr` is a live mapping of `len` readable bytes until `self` drops.
        unsafe { core::slice::from_raw_parts(self.addr.cast::<u8>(), self.len) }
    }

    /// The mapped bytes, writable (the mapping must have been made writable).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        if let Some(copy) = &mut self.copy {
            return copy;
        }
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: as in `bytes`, and `&mut self` makes this the only slice of the mapping.
        unsafe { core::slice::from_raw_parts_mut(self.addr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len > 0 && self.copy.is_none() {
            // SAFETY: unmaps exactly the range `new` mapped, once.
            let _ = unsafe { rustix::mm::munmap(self.addr, self.len) };
        }
    }
}

/// Appends `data` to a memfd (used when the size is not known ahead, e.g. /proc files).
pub fn append(fd: &OwnedFd, data: &[u8]) -> Result<(), Errno> {
    let mut f = File::from(fd.try_clone().map_err(|e| io_errno(&e))?);
    f.seek(SeekFrom::End(0)).map_err(|e| io_errno(&e))?;
    f.write_all(data).map_err(|e| io_errno(&e))
}

/// The host file of guest process `pidfd`'s FD `fd` (pidfd_getfd).
pub fn guest_file(pidfd: BorrowedFd<'_>, fd: i32) -> Result<OwnedFd, Errno> {
    rustix::process::pidfd_getfd(pidfd, fd, rustix::process::PidfdGetfdFlags::empty())
        .map(lift)
        .map_err(errno)
}

/// Writes `data` into guest process `pid`'s memory through /proc/PID/mem, which (unlike
/// process_vm_writev) also writes read-only private pages, as a debugger does.
pub fn force_write(pid: u32, addr: u64, data: &[u8]) -> Result<(), Errno> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .map_err(|e| io_errno(&e))?;
    f.seek(SeekFrom::Start(addr)).map_err(|e| io_errno(&e))?;
    f.write_all(data).map_err(|_| Errno::EFAULT)
}

/// Reads guest memory through /proc/PID/mem (for restoring what `force_write` changed).
pub fn force_read(pid: u32, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
    let mut f = File::open(format!("/proc/{pid}/mem")).map_err(|e| io_errno(&e))?;
    f.seek(SeekFrom::Start(addr)).map_err(|e| io_errno(&e))?;
    f.read_exact(buf).map_err(|_| Errno::EFAULT)
}

/// `Tgid` and `PPid` of host thread `tid`.
pub fn thread_ids(tid: u32) -> Option<(u32, u32)> {
    thread_status(tid).map(|s| (s.tgid, s.ppid))
}

/// What /proc/TID/status tells of host thread `tid`, read once: the status of a new
/// process costs 15-25 µs to read here, and meeting one needs all three.
pub struct ThreadStatus {
    pub tgid: u32,
    pub ppid: u32,
    /// The thread's id in its own pid namespace (the last of `NSpid`).
    pub ns_tid: Option<u32>,
}

pub fn thread_status(tid: u32) -> Option<ThreadStatus> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let line = |name: &str| status.lines().find_map(|l| l.strip_prefix(name));
    let field = |name: &str| line(name).and_then(|v| v.trim().parse::<u32>().ok());
    Some(ThreadStatus {
        tgid: field("Tgid:")?,
        ppid: field("PPid:")?,
        ns_tid: line("NSpid:")
            .and_then(|v| v.split_whitespace().last())
            .and_then(|v| v.parse().ok()),
    })
}

/// How many threads the thread group of thread `tid` has (its task directory's link count
/// is that plus two); None when `tid` is gone.
pub fn thread_count(tid: u32) -> Option<u64> {
    let st = rustix::fs::stat(format!("/proc/{tid}/task").as_str()).ok()?;
    Some(links(&st).saturating_sub(2))
}

/// Whether guest FD `fd` of process `pid` is close-on-exec right now (its fdinfo flags).
pub fn is_cloexec(pid: u32, fd: i32) -> Option<bool> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?;
    let flags = u32::from_str_radix(flags.trim(), 8).ok()?;
    Some(flags & 0o2000000 != 0)
}

/// Whether two processes share one address space (kcmp KCMP_VM); None when unknown (one has
/// exited, or kcmp is unavailable).
pub fn same_vm(a: u32, b: u32) -> Option<bool> {
    const KCMP_VM: libc::c_long = 1;
    // SAFETY: kcmp takes only integers and touches no memory of ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            libc::c_long::from(a),
            libc::c_long::from(b),
            KCMP_VM,
            0 as libc::c_long,
            0 as libc::c_long,
        )
    };
    (r >= 0).then_some(r == 0)
}

/// Whether FD `fd` of `a` and of `b` are the same open file (kcmp KCMP_FILE); None when
/// either does not have it.
pub fn same_file(a: u32, b: u32, fd: i32) -> Option<bool> {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: kcmp takes only integers and touches no memory of ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            libc::c_long::from(a),
            libc::c_long::from(b),
            KCMP_FILE,
            libc::c_long::from(fd),
            libc::c_long::from(fd),
        )
    };
    (r >= 0).then_some(r == 0)
}

/// Whether process `pid` has FD `fd` open.
pub fn has_fd(pid: u32, fd: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}/fdinfo/{fd}")).exists()
}

/// Whether the process behind `pidfd` has exited.
pub fn exited(pidfd: &OwnedFd) -> bool {
    let mut fds = [rustix::event::PollFd::new(
        pidfd,
        rustix::event::PollFlags::IN,
    )];
    matches!(rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default())), Ok(n) if n > 0)
}

pub fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        .ok()
        .map(lift)
}

/// A stat's link count, as u64 on every arch.
#[allow(clippy::useless_conversion)] // u64 on x86_64 already, u32 on aarch64
pub fn links(st: &rustix::fs::Stat) -> u64 {
    u64::from(st.st_nlink)
}

/// Process `pid`'s soft RLIMIT_NOFILE (the guest may lower its own: kbox's is not its).
pub fn nofile_limit(pid: u32) -> Option<u64> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a NULL new limit only reads; `old` is a valid rlimit to write.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, core::ptr::null(), &raw mut old) };
    (r == 0).then_some(old.rlim_cur)
}

/// Opens a host path for a guest (devices kbox passes through), close-on-exec in kbox.
pub fn open_host(path: &str, flags: OFlags) -> Result<OwnedFd, Errno> {
    rustix::fs::open(
        path,
        flags | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map(lift)
    .map_err(errno)
}

/// A raw host syscall with six register arguments (the `*at` calls kbox runs for binds,
/// with pointers to kbox's own buffers).
pub fn at_call(nr: libc::c_long, a: [u64; 6]) -> Result<i64, Errno> {
    let a = a.map(|v| libc::c_long::from_ne_bytes(v.to_ne_bytes()));
    // SAFETY: callers pass syscall numbers whose pointer arguments point to live buffers of
    // kbox (NUL-terminated names, stat-sized outputs) or are zero.
    let r = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
    if r < 0 {
        Err(Errno(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        ))
    } else {
        Ok(r)
    }
}

/// Host `struct stat` bytes of `name` under `dir` (the guest's layout: it runs natively).
pub fn stat_raw(dir: BorrowedFd<'_>, name: &std::ffi::CStr, flags: u64) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; core::mem::size_of::<libc::stat>()];
    at_call(
        libc::SYS_newfstatat,
        [
            u64::from_ne_bytes(i64::from(dir.as_raw_fd()).to_ne_bytes()),
            name.as_ptr() as usize as u64,
            buf.as_mut_ptr() as usize as u64,
            flags,
            0,
            0,
        ],
    )?;
    Ok(buf)
}

/// Host `struct statx` bytes.
pub fn statx_raw(
    dir: BorrowedFd<'_>,
    name: &std::ffi::CStr,
    flags: u64,
    mask: u64,
) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; 256];
    at_call(
        libc::SYS_statx,
        [
            u64::from_ne_bytes(i64::from(dir.as_raw_fd()).to_ne_bytes()),
            name.as_ptr() as usize as u64,
            flags,
            mask,
            buf.as_mut_ptr() as usize as u64,
            0,
        ],
    )?;
    Ok(buf)
}

/// Host `struct statfs` bytes.
pub fn fstatfs_raw(fd: BorrowedFd<'_>) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; core::mem::size_of::<libc::statfs>()];
    at_call(
        libc::SYS_fstatfs,
        [
            u64::from_ne_bytes(i64::from(fd.as_raw_fd()).to_ne_bytes()),
            buf.as_mut_ptr() as usize as u64,
            0,
            0,
            0,
            0,
        ],
    )?;
    Ok(buf)
}
