//! Shadow memfds: host copies of image files that the guest reads, writes and maps natively.
//!
//! Read-only opens share one memfd per file (the core's LRU cache keyed by device and inode,
//! seed 001); each open gets its own read-only open file description of it, so offsets are
//! private and a write fails with EBADF as on Linux (seed 004). Writable opens get a private
//! memfd, written back to the kernel library on close, fsync, exec and exit.
//!
//! kbox is the only writer of the image, so it keeps the shared copies current itself rather
//! than trusting timestamps (the kernel library's are one tick coarse, and a same-size
//! rewrite within a tick looks unchanged): every path that changes a file's contents
//! (write-back, O_TRUNC, truncate) updates the cached copy *in place*, so read-only FDs
//! opened before the change read the new data, as they would on Linux; a file that loses a
//! name (unlink, rename over it) is dropped from the cache, because its inode number may
//! be reused by a new file. The (mtime, size) check on lookup stays as a second line.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

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
    /// Files changed since the exec copies last looked (see `take_changes`).
    changes: Vec<FileId>,
    /// More changes than `changes` keeps came: treat every file as changed.
    changes_overflowed: bool,
    /// Opens served from a current cached copy, and opens that had to copy (the dashboard).
    hits: u64,
    misses: u64,
}

/// What the shadow cache holds, for the dashboard.
pub struct CacheUse {
    /// Cached copies.
    pub copies: usize,
    pub hits: u64,
    pub misses: u64,
    /// Bytes of file contents in the copies.
    pub bytes: u64,
}

/// Changed files remembered between two execs, at most.
const CHANGES_KEPT: usize = 4096;

impl Shadows {
    pub fn new(limit: u64) -> Shadows {
        let limit = ShadowLimit::new(limit).unwrap_or(ShadowLimit::DEFAULT);
        Shadows {
            cache: ShadowCache::new(limit),
            slab: Vec::new(),
            limit: limit.bytes(),
            changes: Vec::new(),
            changes_overflowed: false,
            hits: 0,
            misses: 0,
        }
    }

    pub fn usage(&self) -> CacheUse {
        CacheUse {
            copies: self.cache.len(),
            hits: self.hits,
            misses: self.misses,
            bytes: self.cache.bytes(),
        }
    }

    pub fn admits(&self, size: u64) -> bool {
        size <= self.limit
    }

    /// A fresh read-only open file description of the shared shadow of the file open as
    /// `kfd` in `task`.
    /// `slow` is called before any copying (the cache missed).
    pub fn read_only(
        &mut self,
        task: &Task,
        kfd: i32,
        st: &GenericStat,
        slow: &dyn Fn(),
    ) -> Result<OwnedFd, Errno> {
        if st.st_size == 0 {
            // Pseudo files report size 0 and change between reads: copy, never cache.
            let fd = snapshot(task, kfd)?;
            return hostio::reopen(fd.as_fd(), OFlags::RDONLY);
        }
        let h = self.inode_copy(task, kfd, st, slow)?;
        hostio::reopen(self.copy_fd(h)?, OFlags::RDONLY)
    }

    /// The shared shadow itself (a duplicate of kbox's FD of it), for a writable open: every
    /// open of the file, reading or writing, in any guest process, is then a description of
    /// one host file, so writes are seen at once and locks (flock, record and OFD locks)
    /// lock between them, all on the host.
    pub fn shared(
        &mut self,
        task: &Task,
        kfd: i32,
        st: &GenericStat,
        slow: &dyn Fn(),
    ) -> Result<OwnedFd, Errno> {
        let h = self.inode_copy(task, kfd, st, slow)?;
        rustix::io::dup(self.copy_fd(h)?)
            .map(hostio::lift)
            .map_err(hostio::errno)
    }

    /// kbox's FD of cached copy `h`.
    fn copy_fd(&self, h: u32) -> Result<BorrowedFd<'_>, Errno> {
        match self.slab.get(slot(h)) {
            Some(Some(fd)) => Ok(fd.as_fd()),
            _ => Err(Errno::EIO),
        }
    }

    /// The handle of the cached copy of the file open as `kfd` (`st` its metadata), made or
    /// brought up to date first.
    fn inode_copy(
        &mut self,
        task: &Task,
        kfd: i32,
        st: &GenericStat,
        slow: &dyn Fn(),
    ) -> Result<u32, Errno> {
        let size = u64::try_from(st.st_size).unwrap_or(0);
        let id = FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        };
        let version = version_of(st);
        let h = match self.cache.lookup(id, version) {
            Lookup::Hit(h) => {
                if let Some(Some(_)) = self.slab.get(slot(h)) {
                    self.hits += 1;
                    return Ok(h);
                }
                self.release(h);
                None
            }
            // Changed behind kbox's back: the FDs sharing the copy get the new data too.
            Lookup::Stale(h) => Some(h),
            Lookup::TooLarge => return Err(Errno::EFBIG),
            Lookup::Miss => None,
        };
        slow();
        self.misses += 1;
        let h = match h.and_then(|h| Some((h, self.slab.get(slot(h))?.as_ref()?))) {
            Some((h, fd)) => {
                // Refilled from the file, the copy is the file: parked clean, or a writer's
                // (or a kept shadow's) next write-back would take kbox's own refill for a
                // guest's write and move the file's mtime (a utime'd file lost its time).
                if let Err(e) =
                    fill_into(task, kfd, size, fd.as_fd()).and_then(|()| park(fd.as_fd()))
                {
                    self.release(h);
                    return Err(e);
                }
                h
            }
            None => {
                let fd = fill(task, kfd, size)?;
                self.store(fd)
            }
        };
        self.keep(id, version, h);
        // Refused by the cache (over its limit) and so already closed.
        if self.slab.get(slot(h)).is_none_or(Option::is_none) {
            return Err(Errno::EFBIG);
        }
        Ok(h)
    }

    /// The files changed since the last call (None: too many to list, assume all).
    pub fn take_changes(&mut self) -> Option<Vec<FileId>> {
        let overflowed = std::mem::take(&mut self.changes_overflowed);
        let changes = std::mem::take(&mut self.changes);
        (!overflowed).then_some(changes)
    }

    fn note_change(&mut self, id: FileId) {
        if self.changes.last() == Some(&id) {
            return;
        }
        if self.changes.len() >= CHANGES_KEPT {
            self.changes_overflowed = true;
            self.changes.clear();
        } else if !self.changes_overflowed {
            self.changes.push(id);
        }
    }

    /// Caches handle `h` as the copy of `id` at `version`, closing whatever that pushes out.
    fn keep(&mut self, id: FileId, version: FileVersion, h: u32) {
        match self.cache.insert(id, version, h) {
            Insert::Cached { evicted } => {
                if let Some(old) = evicted.filter(|&old| old != h) {
                    self.release(old);
                }
            }
            Insert::Refused(h) => self.release(h),
        }
    }

    /// Writes writable shadow `w` (open as `kfd` in `task`) back to its file if it changed,
    /// and gives the file's cached copy the same contents.
    /// `thorough`: see [`Writable::write_back`].
    pub fn write_back(
        &mut self,
        w: &Writable,
        task: &Task,
        kfd: i32,
        thorough: bool,
    ) -> Result<(), Errno> {
        if !w.write_back(task, kfd, thorough)? {
            return Ok(());
        }
        self.note_change(w.id);
        let Some(h) = self.cache.remove(w.id) else {
            return Ok(());
        };
        let st = super::files::lkl_stat(task, kfd);
        let copied = st.and_then(|st| {
            let fd = self
                .slab
                .get(slot(h))
                .and_then(Option::as_ref)
                .ok_or(Errno::EIO)?;
            // Usually the writer's shadow is the cached copy itself; a copy made after it
            // (the cache let go of the writer's) gets its contents.
            if !same_file(w.fd.as_fd(), fd.as_fd()) {
                copy_into(w.fd.as_fd(), fd.as_fd())?;
                park(fd.as_fd())?;
            }
            Ok(st)
        });
        match copied {
            Ok(st) => self.keep(w.id, version_of(&st), h),
            // A copy that could not be brought up to date must not be found again.
            Err(e) => {
                self.release(h);
                return Err(e);
            }
        }
        Ok(())
    }

    /// File `id` was truncated (truncate, O_TRUNC) and now has `st`'s size: so does its
    /// cached copy.
    pub fn resized(&mut self, id: FileId, st: &GenericStat) {
        self.note_change(id);
        let Some(h) = self.cache.remove(id) else {
            return;
        };
        let size = u64::try_from(st.st_size).unwrap_or(0);
        let ok = self
            .slab
            .get(slot(h))
            .and_then(Option::as_ref)
            .is_some_and(|fd| rustix::fs::ftruncate(fd, size).is_ok() && park(fd.as_fd()).is_ok());
        if ok {
            self.keep(id, version_of(st), h);
        } else {
            self.release(h);
        }
    }

    /// File `id` lost a name (unlink, rename over it): once its last FD closes, its inode
    /// number may be given to a new file, so its copy must not be found by that number any
    /// more. FDs already open keep reading it, as they keep the inode on Linux.
    pub fn unlinked(&mut self, id: FileId) {
        self.note_change(id);
        if let Some(h) = self.cache.remove(id) {
            self.release(h);
        }
    }

    /// Forgets every copy (a mount or unmount may give a device number to another
    /// filesystem).
    pub fn forget_all(&mut self) {
        let mut dropped = Vec::new();
        self.cache.drain(|h| dropped.push(h));
        for h in dropped {
            self.release(h);
        }
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

/// The version a cached copy of a file with metadata `st` is of.
fn version_of(st: &GenericStat) -> FileVersion {
    FileVersion {
        mtime_sec: st.st_mtime,
        mtime_nsec: u32::try_from(st.st_mtime_nsec).unwrap_or(0),
        size: u64::try_from(st.st_size).unwrap_or(0),
    }
}

/// A memfd holding the first `size` bytes of `kfd`.
pub fn fill(task: &Task, kfd: i32, size: u64) -> Result<OwnedFd, Errno> {
    let fd = hostio::memfd(size)?;
    fill_into(task, kfd, size, fd.as_fd())?;
    Ok(fd)
}

/// Files up to this size are filled through a buffer (one read from the kernel library,
/// one write into the memfd): cheaper for them than mapping the memfd, whose munmap must
/// flush the TLBs of the other CPUs kbox's threads run on.
const FILL_BUFFERED_BELOW: usize = 64 << 10;

/// Makes memfd `fd` hold the first `size` bytes of `kfd` (larger files are read straight
/// into a shared mapping: the kernel library copies from its page cache into the memfd's
/// pages once).
fn fill_into(task: &Task, kfd: i32, size: u64, fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let len = usize::try_from(size).map_err(|_| Errno::EFBIG)?;
    check_holes_fit(task, kfd, size)?;
    if len < FILL_BUFFERED_BELOW {
        let mut buf = vec![0u8; len];
        let done = kernel_io(task, g::PREAD64, kfd, ptr(buf.as_mut_ptr()), len)?;
        rustix::fs::ftruncate(fd, done as u64).map_err(hostio::errno)?;
        let mut at = 0;
        while at < done {
            match rustix::io::pwrite(fd, &buf[at..done], at as u64) {
                Ok(0) => return Err(Errno::EIO),
                Ok(n) => at += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(hostio::errno(e)),
            }
        }
        return Ok(());
    }
    rustix::fs::ftruncate(fd, size).map_err(hostio::errno)?;
    let map = Mapping::new(fd, len, true)?;
    let done = kernel_io(task, g::PREAD64, kfd, map.addr(), len)?;
    if done < len {
        // The file shrank under us: keep what was read.
        rustix::fs::ftruncate(fd, done as u64).map_err(hostio::errno)?;
    }
    Ok(())
}

/// Whether two FDs are the same host file.
fn same_file(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> bool {
    match (rustix::fs::fstat(a), rustix::fs::fstat(b)) {
        (Ok(x), Ok(y)) => x.st_dev == y.st_dev && x.st_ino == y.st_ino,
        _ => false,
    }
}

/// Makes memfd `to` a copy of memfd `from`.
fn copy_into(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> Result<(), Errno> {
    let st = rustix::fs::fstat(from).map_err(hostio::errno)?;
    let len = usize::try_from(st.st_size).map_err(|_| Errno::EFBIG)?;
    rustix::fs::ftruncate(to, len as u64).map_err(hostio::errno)?;
    let src = Mapping::new(from, len, false)?;
    let mut dst = Mapping::new(to, len, true)?;
    dst.bytes_mut().copy_from_slice(src.bytes());
    Ok(())
}

/// pread64/pwrite64 (`nr`) of `len` bytes at offset 0 of `kfd`, between it and our memory at
/// `addr`, looping over short transfers; returns how much moved (less than `len` only at end
/// of file).
fn kernel_io(task: &Task, nr: u32, kfd: i32, addr: u64, len: usize) -> Result<usize, Errno> {
    kernel_io_at(task, nr, kfd, addr, len, 0)
}

/// As [`kernel_io`], `len` bytes at `addr` to or from file offset `offset`.
fn kernel_io_at(
    task: &Task,
    nr: u32,
    kfd: i32,
    addr: u64,
    len: usize,
    offset: u64,
) -> Result<usize, Errno> {
    let mut done = 0usize;
    while done < len {
        let n = lkl(
            task,
            nr,
            [
                fdv(kfd),
                addr + done as u64,
                (len - done) as u64,
                offset + done as u64,
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

/// A new file in `dir` with no name: O_TMPFILE, or where the filesystem has none (overlayfs
/// before Linux 6.6, as under many containers) a file made under a unique name and
/// unlinked at once.
fn unlinked_file(dir: &std::path::Path) -> Result<OwnedFd, Errno> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mode = rustix::fs::Mode::from_bits_truncate(0o600);
    match rustix::fs::open(dir, OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC, mode) {
        Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::ISDIR => {}
        r => return r.map(hostio::lift).map_err(hostio::errno),
    }
    let name = dir.join(format!(
        ".shadow-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let fd = rustix::fs::open(
        &name,
        OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        mode,
    )
    .map_err(hostio::errno)?;
    rustix::fs::unlink(&name).map_err(hostio::errno)?;
    Ok(hostio::lift(fd))
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
    let fd = unlinked_file(dir)?;
    check_holes_fit(task, kfd, size)?;
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
    /// Opened for reading too: the guest may have mapped it and written through the mapping.
    pub readable: bool,
}

impl Writable {
    /// `dirty`: the copy already differs from the file (O_TRUNC, O_CREAT of a new file).
    pub fn new(fd: OwnedFd, id: FileId, readable: bool, dirty: bool) -> Result<Writable, Errno> {
        let w = Writable { fd, id, readable };
        if !dirty {
            w.mark_clean()?;
        }
        Ok(w)
    }

    /// The host sets a memfd's mtime on every write and truncate; kbox parks it at the epoch
    /// whenever the copy matches the file, so "mtime is not zero" means "changed" whatever
    /// the host clock's granularity, and an untouched file's own mtime never moves.
    fn mark_clean(&self) -> Result<(), Errno> {
        park(self.fd.as_fd())
    }

    /// Copies the shadow back into the file open as `kfd` in `task` if it changed: contents,
    /// then size. Returns whether the file changed.
    ///
    /// Writes through a shared mapping set the memfd's mtime only at the first fault on a
    /// page, so a copy that is mapped may have changed with its mtime still parked: a
    /// readable copy whose mtime says "clean" is compared with the file instead.
    ///
    /// That comparison reads the whole file, so it is made only when `thorough` (the FD's
    /// close, fsync, exec or exit), not when another open or stat merely syncs the file.
    ///
    /// The copy is parked clean *before* it is read: another process may write to it at any
    /// moment (it is shared, and may have been passed on), and a write that lands while it
    /// is copied must leave it dirty for the next write-back, not be declared written.
    pub fn write_back(&self, task: &Task, kfd: i32, thorough: bool) -> Result<bool, Errno> {
        let st = rustix::fs::fstat(&self.fd).map_err(hostio::errno)?;
        let looks_clean = st.st_mtime == 0 && st.st_mtime_nsec == 0;
        if looks_clean && !(thorough && self.readable) {
            return Ok(false);
        }
        if !looks_clean {
            self.mark_clean()?;
        }
        let copied = self.copy_back(task, kfd, looks_clean);
        if copied.is_err() && !looks_clean {
            // Not written: still dirty.
            let _ = self.mark_dirty();
        }
        copied
    }

    /// Copies the shadow into the file when `compare` finds them different, or always;
    /// returns whether it copied.
    fn copy_back(&self, task: &Task, kfd: i32, compare: bool) -> Result<bool, Errno> {
        let st = rustix::fs::fstat(&self.fd).map_err(hostio::errno)?;
        let len = usize::try_from(st.st_size).unwrap_or(0);
        let map = Mapping::new(self.fd.as_fd(), len, false)?;
        if compare && !differs(task, kfd, &map)? {
            return Ok(false);
        }
        write_extents(&self.fd, task, kfd, &map)?;
        match lkl(task, g::FTRUNCATE, [fdv(kfd), len as u64, 0, 0, 0, 0]) {
            // Pseudo files (sysctl) take writes but not truncation.
            Ok(_) | Err(Errno::EINVAL) | Err(Errno::EPERM) | Err(Errno::EACCES) => {}
            Err(e) => return Err(e),
        }
        Ok(true)
    }

    /// Marks the copy changed (its mtime now), as a write would.
    fn mark_dirty(&self) -> Result<(), Errno> {
        let now = hostio::timestamps(rustix::fs::UTIME_OMIT, rustix::fs::UTIME_NOW);
        rustix::fs::futimens(&self.fd, &now).map_err(hostio::errno)
    }
}

/// Parks copy `fd`'s mtime at the epoch: "the copy matches the file" (see
/// `Writable::mark_clean`).
fn park(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let epoch = hostio::timestamps(rustix::fs::UTIME_OMIT, 0);
    rustix::fs::futimens(fd, &epoch).map_err(hostio::errno)
}

/// The data extents of memfd `fd` below `len` (SEEK_DATA/SEEK_HOLE): (start, end) pairs.
/// A file written at 2 GiB and nowhere else has one small extent, not 2 GiB of zeros.
fn extents(fd: &OwnedFd, len: u64) -> Vec<(u64, u64)> {
    use rustix::fs::{SeekFrom, seek};
    let mut out = Vec::new();
    let mut at = 0u64;
    while at < len {
        let start = match seek(fd, SeekFrom::Data(at)) {
            Ok(d) => d,
            // No data after `at` (ENXIO); on any other error, copy everything left.
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => {
                out.push((at, len));
                break;
            }
        };
        if start >= len {
            break;
        }
        let end = seek(fd, SeekFrom::Hole(start)).map_or(len, |h| h.min(len));
        out.push((start, end));
        at = end;
    }
    out
}

/// RAMFS_MAGIC: the kernel library's tmpfs (/tmp, /run) is ramfs (no MMU, no shmem), whose
/// pages can be neither reclaimed nor limited.
const RAMFS_MAGIC: u64 = 0x8584_58f6;
/// What a write into ramfs must leave of the kernel library's memory: below it, the kernel
/// would loop in reclaim for ever instead of failing.
const RAMFS_RESERVE: u64 = 48 << 20;

/// Copies the shadow `fd` (mapped as `map`) into the file open as `kfd`: its data extents
/// written, its holes made holes (or zeros) where the file had data. ENOSPC, leaving the
/// file as it was, when the file is on ramfs and the new data would not leave the kernel
/// library [`RAMFS_RESERVE`] of memory.
fn write_extents(fd: &OwnedFd, task: &Task, kfd: i32, map: &Mapping) -> Result<(), Errno> {
    let len = map.len() as u64;
    let old = u64::try_from(super::files::lkl_stat(task, kfd)?.st_size).unwrap_or(0);
    let data = extents(fd, len);
    if on_ramfs(task, kfd) {
        let adding: u64 = data
            .iter()
            .map(|(a, b)| b - a)
            .sum::<u64>()
            .saturating_sub(old);
        if adding > 0 && adding.saturating_add(RAMFS_RESERVE) > kernel_available(task) {
            return Err(Errno::ENOSPC);
        }
    }
    let mut at = 0u64;
    for &(start, end) in data.iter().chain(std::iter::once(&(len, len))) {
        if start > at && at < old {
            clear(task, kfd, at, start.min(old))?;
        }
        if end > start {
            let n = usize::try_from(end - start).map_err(|_| Errno::EFBIG)?;
            let addr = map.addr() + start;
            if kernel_io_at(task, g::PWRITE64, kfd, addr, n, start)? < n {
                return Err(Errno::EIO);
            }
        }
        at = end;
    }
    Ok(())
}

/// Makes bytes `from..to` of the file zeros: a punched hole where the file system has them,
/// else written zeros.
fn clear(task: &Task, kfd: i32, from: u64, to: u64) -> Result<(), Errno> {
    const PUNCH_HOLE_KEEP_SIZE: u64 = 0x03;
    let punched = lkl(
        task,
        g::FALLOCATE,
        [fdv(kfd), PUNCH_HOLE_KEEP_SIZE, from, to - from, 0, 0],
    );
    if punched.is_ok() {
        return Ok(());
    }
    let zeros = vec![0u8; 64 << 10];
    let mut at = from;
    while at < to {
        let n = usize::try_from(to - at)
            .unwrap_or(usize::MAX)
            .min(zeros.len());
        if kernel_io_at(task, g::PWRITE64, kfd, ptr(zeros.as_ptr()), n, at)? < n {
            return Err(Errno::EIO);
        }
        at += n as u64;
    }
    Ok(())
}

/// Reading a hole of a ramfs file gives it a page it never gives back: ENOMEM, rather than a
/// kernel looping in reclaim, when reading `size` bytes of `kfd` would fill holes the
/// kernel library has no memory for (ramfs counts a file's pages in st_blocks).
fn check_holes_fit(task: &Task, kfd: i32, size: u64) -> Result<(), Errno> {
    if !on_ramfs(task, kfd) {
        return Ok(());
    }
    let st = super::files::lkl_stat(task, kfd)?;
    let held = u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512);
    let holes = size.saturating_sub(held);
    if holes > 0 && holes.saturating_add(RAMFS_RESERVE) > kernel_available(task) {
        return Err(Errno::ENOMEM);
    }
    Ok(())
}

fn on_ramfs(task: &Task, kfd: i32) -> bool {
    // struct statfs starts with f_type (a long on 64-bit arches); 120 bytes in all.
    let mut buf = [0u64; 15];
    lkl(
        task,
        g::FSTATFS,
        [fdv(kfd), ptr(buf.as_mut_ptr()), 0, 0, 0, 0],
    )
    .is_ok()
        && buf[0] == RAMFS_MAGIC
}

/// The kernel library's available memory: MemAvailable from its /proc/meminfo (free pages
/// plus the caches it can drop), else sysinfo's free RAM (the safe side).
fn kernel_available(task: &Task) -> u64 {
    const O_RDONLY_CLOEXEC: u64 = 0o2000000;
    const AT_FDCWD: u64 = (-100i64).cast_unsigned();
    let path = c"/proc/meminfo";
    if let Ok(fd) = lkl(
        task,
        g::OPENAT,
        [AT_FDCWD, ptr(path.as_ptr()), O_RDONLY_CLOEXEC, 0, 0, 0],
    ) {
        let mut buf = [0u8; 4096];
        let n = lkl(
            task,
            g::READ,
            [fd.cast_unsigned(), ptr(buf.as_mut_ptr()), 4096, 0, 0, 0],
        );
        let _ = lkl(task, g::CLOSE, [fd.cast_unsigned(), 0, 0, 0, 0, 0]);
        let text =
            std::str::from_utf8(&buf[..usize::try_from(n.unwrap_or(0)).unwrap_or(0)]).unwrap_or("");
        let kib = text
            .lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
        if let Some(kib) = kib {
            return kib.saturating_mul(1024);
        }
    }
    // struct sysinfo: uptime, loads[3], totalram, freeram, sharedram, bufferram, ...,
    // mem_unit (u32) at byte 104.
    let mut buf = [0u64; 16];
    if lkl(task, g::SYSINFO, [ptr(buf.as_mut_ptr()), 0, 0, 0, 0, 0]).is_err() {
        return u64::MAX;
    }
    let unit = buf[13] & 0xffff_ffff;
    (buf[5] + buf[7]).saturating_mul(unit.max(1))
}

/// Whether the file open as `kfd` in `task` differs from the bytes of `map`.
fn differs(task: &Task, kfd: i32, map: &Mapping) -> Result<bool, Errno> {
    const CHUNK: usize = 64 << 10;
    let st = super::files::lkl_stat(task, kfd)?;
    if u64::try_from(st.st_size).ok() != Some(map.len() as u64) {
        return Ok(true);
    }
    if check_holes_fit(task, kfd, map.len() as u64).is_err() {
        // Reading it all could exhaust the kernel library: count it as changed.
        return Ok(true);
    }
    let mut buf = vec![0u8; CHUNK.min(map.len())];
    let mut at = 0usize;
    while at < map.len() {
        let want = CHUNK.min(map.len() - at);
        let n = lkl(
            task,
            g::PREAD64,
            [
                fdv(kfd),
                ptr(buf.as_mut_ptr()),
                want as u64,
                at as u64,
                0,
                0,
            ],
        )?;
        let n = usize::try_from(n).unwrap_or(0);
        if n == 0 {
            return Ok(true);
        }
        if map.bytes().get(at..at + n) != Some(&buf[..n]) {
            return Ok(true);
        }
        at += n;
    }
    Ok(false)
}
