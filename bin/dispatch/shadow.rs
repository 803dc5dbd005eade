//! Shadow memfds: host copies of image files that the guest reads, writes and maps natively.
//!
//! Read-only opens share one sealed memfd per file version (the core's LRU cache keyed by
//! device, inode, mtime and size, seed 001); each open gets its own read-only open file
//! description of it, so offsets are private and a write fails with EBADF as on Linux (seed
//! 004). Writable opens get a private unsealed memfd, written back to the kernel library on
//! close, fsync, exec and exit.

use std::os::fd::{AsFd, OwnedFd};

use kbox_core::abi::stat::GenericStat;
use kbox_core::shadow::{FileId, FileVersion, Insert, Lookup, ShadowCache, ShadowLimit};
use kbox_core::sysno::generic as g;
use kbox_lkl::{Errno, Task};
use rustix::fs::OFlags;

use super::hostio::{self, Mapping};
use super::{fdv, lkl, ptr};

/// Largest read of a file whose size the kernel library does not report (/proc, /sys).
const PSEUDO_FILE_MAX: usize = 16 << 20;

pub struct Shadows {
    cache: ShadowCache<u32>,
    slab: Vec<Option<OwnedFd>>,
    limit: u64,
}

impl Shadows {
    pub fn new(limit: u64) -> Shadows {
        let limit = ShadowLimit::new(limit).unwrap_or(ShadowLimit::DEFAULT);
        Shadows {
            cache: ShadowCache::new(limit),
            slab: Vec::new(),
            limit: limit.bytes(),
        }
    }

    pub fn admits(&self, size: u64) -> bool {
        size <= self.limit
    }

    /// A fresh read-only open file description of the sealed shadow of the file open as
    /// `kfd` in `task`.
    /// `slow` is called before any copying (the cache missed).
    pub fn read_only(
        &mut self,
        task: &Task,
        kfd: i32,
        st: &GenericStat,
        slow: &dyn Fn(),
    ) -> Result<OwnedFd, Errno> {
        let size = u64::try_from(st.st_size).unwrap_or(0);
        if size == 0 {
            // Pseudo files report size 0 and change between reads: copy, never cache.
            let fd = snapshot(task, kfd)?;
            return hostio::reopen(fd.as_fd(), OFlags::RDONLY);
        }
        let id = FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        };
        let version = FileVersion {
            mtime_sec: st.st_mtime,
            mtime_nsec: u32::try_from(st.st_mtime_nsec).unwrap_or(0),
            size,
        };
        match self.cache.lookup(id, version) {
            Lookup::Hit(h) => {
                if let Some(Some(fd)) = self.slab.get(slot(h)) {
                    return hostio::reopen(fd.as_fd(), OFlags::RDONLY);
                }
            }
            Lookup::Stale(h) => self.release(h),
            Lookup::TooLarge => return Err(Errno::EFBIG),
            Lookup::Miss => {}
        }
        slow();
        let fd = fill(task, kfd, size)?;
        hostio::seal(&fd)?;
        let ro = hostio::reopen(fd.as_fd(), OFlags::RDONLY)?;
        let h = self.store(fd);
        match self.cache.insert(id, version, h) {
            Insert::Cached { evicted } => {
                if let Some(old) = evicted {
                    self.release(old);
                }
            }
            Insert::Refused(h) => self.release(h),
        }
        Ok(ro)
    }

    fn store(&mut self, fd: OwnedFd) -> u32 {
        let i = match self.slab.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.slab.push(None);
                self.slab.len() - 1
            }
        };
        self.slab[i] = Some(fd);
        u32::try_from(i).unwrap_or(u32::MAX)
    }

    fn release(&mut self, h: u32) {
        if let Some(s) = self.slab.get_mut(slot(h)) {
            *s = None;
        }
    }
}

fn slot(h: u32) -> usize {
    usize::try_from(h).unwrap_or(usize::MAX)
}

/// A memfd holding the first `size` bytes of `kfd` (read straight into a shared mapping:
/// the kernel library copies from its page cache into the memfd's pages once).
pub fn fill(task: &Task, kfd: i32, size: u64) -> Result<OwnedFd, Errno> {
    let fd = hostio::memfd(size)?;
    let len = usize::try_from(size).map_err(|_| Errno::EFBIG)?;
    {
        let map = Mapping::new(fd.as_fd(), len, true)?;
        let done = kernel_io(task, g::PREAD64, kfd, map.addr(), len)?;
        if done < len {
            // The file shrank under us: keep what was read.
            rustix::fs::ftruncate(&fd, done as u64).map_err(hostio::errno)?;
        }
    }
    Ok(fd)
}

/// pread64/pwrite64 (`nr`) of `len` bytes at offset 0 of `kfd`, between it and our memory at
/// `addr`, looping over short transfers; returns how much moved (less than `len` only at end
/// of file).
fn kernel_io(task: &Task, nr: u32, kfd: i32, addr: u64, len: usize) -> Result<usize, Errno> {
    let mut done = 0usize;
    while done < len {
        let n = lkl(
            task,
            nr,
            [
                fdv(kfd),
                addr + done as u64,
                (len - done) as u64,
                done as u64,
                0,
                0,
            ],
        )?;
        if n <= 0 {
            break;
        }
        done += usize::try_from(n).unwrap_or(0);
    }
    Ok(done)
}

/// Like [`fill`], for files over the shadow limit: an unlinked file in kbox's private
/// directory on disk (the host's page cache holds it, not pinned memory), copied in chunks.
pub fn fill_on_disk(
    dir: &std::path::Path,
    task: &Task,
    kfd: i32,
    size: u64,
) -> Result<OwnedFd, Errno> {
    const CHUNK: usize = 1 << 20;
    let fd = rustix::fs::open(
        dir,
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        rustix::fs::Mode::from_bits_truncate(0o600),
    )
    .map_err(hostio::errno)?;
    let mut buf = vec![0u8; CHUNK];
    let mut done: u64 = 0;
    while done < size {
        let want = usize::try_from((size - done).min(CHUNK as u64)).unwrap_or(CHUNK);
        let n = lkl(
            task,
            g::PREAD64,
            [fdv(kfd), ptr(buf.as_mut_ptr()), want as u64, done, 0, 0],
        )?;
        let n = usize::try_from(n).unwrap_or(0);
        if n == 0 {
            break;
        }
        let mut off = 0;
        while off < n {
            let w =
                rustix::io::pwrite(&fd, &buf[off..n], done + off as u64).map_err(hostio::errno)?;
            off += w;
        }
        done += n as u64;
    }
    Ok(fd)
}

/// A memfd with everything `kfd` reads until end of file (pseudo files).
pub fn snapshot(task: &Task, kfd: i32) -> Result<OwnedFd, Errno> {
    let fd = hostio::memfd(0)?;
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0usize;
    loop {
        let n = lkl(
            task,
            g::READ,
            [fdv(kfd), ptr(buf.as_mut_ptr()), buf.len() as u64, 0, 0, 0],
        )?;
        let n = usize::try_from(n).unwrap_or(0);
        if n == 0 {
            break;
        }
        hostio::append(&fd, &buf[..n])?;
        total += n;
        if total >= PSEUDO_FILE_MAX {
            break;
        }
    }
    // The guest's reads start at 0 on their own description; the kernel library's offset
    // goes back to 0 so that a later write (sysctl) starts there too.
    let _ = lkl(task, g::LSEEK, [fdv(kfd), 0, 0, 0, 0, 0]);
    Ok(fd)
}

/// The host copy behind a writable guest open, shared by every guest FD (across dup and
/// fork) that refers to that open.
pub struct Writable {
    pub fd: OwnedFd,
    /// The file it shadows, so other opens of it can bring it up to date first.
    pub id: FileId,
}

impl Writable {
    /// `dirty`: the copy already differs from the file (O_TRUNC, O_CREAT of a new file).
    pub fn new(fd: OwnedFd, id: FileId, dirty: bool) -> Result<Writable, Errno> {
        let w = Writable { fd, id };
        if !dirty {
            w.mark_clean()?;
        }
        Ok(w)
    }

    /// The host sets a memfd's mtime on every write and truncate; kbox parks it at the epoch
    /// whenever the copy matches the file, so "mtime is not zero" means "changed" whatever
    /// the host clock's granularity, and an untouched file's own mtime never moves.
    fn mark_clean(&self) -> Result<(), Errno> {
        let epoch = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_OMIT,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
        };
        rustix::fs::futimens(&self.fd, &epoch).map_err(hostio::errno)
    }

    /// Copies the shadow back into the file open as `kfd` in `task` if it changed: contents,
    /// then size.
    pub fn write_back(&self, task: &Task, kfd: i32) -> Result<(), Errno> {
        let st = rustix::fs::fstat(&self.fd).map_err(hostio::errno)?;
        if st.st_mtime == 0 && st.st_mtime_nsec == 0 {
            return Ok(());
        }
        let len = usize::try_from(st.st_size).unwrap_or(0);
        let map = Mapping::new(self.fd.as_fd(), len, false)?;
        if kernel_io(task, g::PWRITE64, kfd, map.addr(), map.len())? < map.len() {
            return Err(Errno::EIO);
        }
        match lkl(task, g::FTRUNCATE, [fdv(kfd), len as u64, 0, 0, 0, 0]) {
            // Pseudo files (sysctl) take writes but not truncation.
            Ok(_) | Err(Errno::EINVAL) | Err(Errno::EPERM) | Err(Errno::EACCES) => {}
            Err(e) => return Err(e),
        }
        self.mark_clean()
    }
}
