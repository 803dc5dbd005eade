//! Disks: a virtio block device backed by a host image file, and mounting it inside the
//! kernel library.
//!
//! Reads and writes go straight to the image with pread/pwrite; a flush request is an
//! fdatasync, so whatever the kernel flushed (fsync, sync, unmount, a journal commit)
//! is on the host disk when the request completes.
use crate::errno::Errno;
use crate::kernel::{self, Kernel};
use crate::sys::Syscalls;
use crate::virtio_mmio::{self, Chain, Device};
use std::ffi::{CStr, CString};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

const DEVICE_ID_BLOCK: u32 = 2;
const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;
const SECTOR: u64 = 512;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
const MS_RDONLY: u64 = 1;
const MAX_DISKS: usize = 26;

struct BlockDevice {
    file: File,
    read_only: bool,
    config: [u8; 8],
}

impl BlockDevice {
    fn request(&mut self, kind: u32, sector: u64, chain: &mut Chain<'_>) -> (u8, u32) {
        let Some(offset) = sector.checked_mul(SECTOR) else {
            return (S_IOERR, 0);
        };
        let data_out = chain.readable.get(1..).unwrap_or(&[]);
        let last = chain.writable.len().saturating_sub(1);
        match kind {
            T_IN => {
                let mut at = offset;
                let mut written = 0u32;
                for buf in chain.writable.iter_mut().take(last) {
                    if self.file.read_exact_at(buf, at).is_err() {
                        return (S_IOERR, written);
                    }
                    at += buf.len() as u64;
                    written = written.saturating_add(u32::try_from(buf.len()).unwrap_or(u32::MAX));
                }
                (S_OK, written)
            }
            T_OUT if self.read_only => (S_IOERR, 0),
            T_OUT => {
                let mut at = offset;
                for buf in data_out {
                    if self.file.write_all_at(buf, at).is_err() {
                        return (S_IOERR, 0);
                    }
                    at += buf.len() as u64;
                }
                (S_OK, 0)
            }
            T_FLUSH => (
                if self.file.sync_data().is_ok() {
                    S_OK
                } else {
                    S_IOERR
                },
                0,
            ),
            T_GET_ID => {
                if let Some(buf) = chain.writable.first_mut().filter(|_| last > 0) {
                    let id = b"kbox-disk";
                    let n = id.len().min(buf.len());
                    buf[..n].copy_from_slice(&id[..n]);
                    return (S_OK, u32::try_from(n).unwrap_or(0));
                }
                (S_IOERR, 0)
            }
            _ => (S_UNSUPP, 0),
        }
    }
}

impl Device for BlockDevice {
    fn device_id(&self) -> u32 {
        DEVICE_ID_BLOCK
    }

    fn features(&self) -> u64 {
        F_FLUSH | if self.read_only { F_RO } else { 0 }
    }

    fn config(&self) -> &[u8] {
        &self.config
    }

    fn serve(&mut self, _queue: usize, chain: &mut Chain<'_>) -> u32 {
        let header = chain.readable.first().filter(|h| h.len() >= 16).map(|h| {
            let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
            let mut sector = [0u8; 8];
            sector.copy_from_slice(&h[8..16]);
            (kind, u64::from_le_bytes(sector))
        });
        let (status, written) = match header {
            Some((kind, sector)) => self.request(kind, sector, chain),
            None => (S_IOERR, 0),
        };
        if let Some(status_byte) = chain.writable.last_mut().and_then(|b| b.last_mut()) {
            *status_byte = status;
        }
        written.saturating_add(1)
    }
}

/// A disk registered with [`add_disk`]; its index decides its name (`vda`, `vdb`...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskId(usize);

#[derive(Debug)]
pub enum DiskError {
    /// Disks are described to the kernel on its command line, so only before boot.
    AfterBoot,
    Open {
        path: PathBuf,
        error: std::io::Error,
    },
    NotAFile(PathBuf),
    NoInterrupt,
    /// Disks are named vda..vdz.
    TooMany,
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AfterBoot => f.write_str("disks must be added before the kernel boots"),
            Self::Open { path, error } => {
                write!(f, "cannot open image {}: {error}", path.display())
            }
            Self::NotAFile(path) => write!(f, "image {} is not a regular file", path.display()),
            Self::NoInterrupt => f.write_str("no free interrupt line for another disk"),
            Self::TooMany => write!(f, "at most {MAX_DISKS} disks (vda..vdz)"),
        }
    }
}

impl std::error::Error for DiskError {}

/// Registers an image file as the next disk. Must run before [`Kernel::boot`].
pub fn add_disk(path: &Path, read_only: bool) -> Result<DiskId, DiskError> {
    let open = |write| OpenOptions::new().read(true).write(write).open(path);
    let file = open(!read_only).map_err(|error| DiskError::Open {
        path: path.to_path_buf(),
        error,
    })?;
    if kernel::booted() {
        return Err(DiskError::AfterBoot);
    }
    let meta = file.metadata().map_err(|error| DiskError::Open {
        path: path.to_path_buf(),
        error,
    })?;
    if !meta.is_file() {
        return Err(DiskError::NotAFile(path.to_path_buf()));
    }
    if virtio_mmio::count() >= MAX_DISKS {
        return Err(DiskError::TooMany);
    }
    let config = (meta.len() / SECTOR).to_le_bytes();
    let dev = BlockDevice {
        file,
        read_only,
        config,
    };
    virtio_mmio::register(Box::new(dev))
        .map(DiskId)
        .map_err(|_| DiskError::NoInterrupt)
}

#[derive(Debug)]
pub enum MountError {
    /// Preparing /dev (devtmpfs) or the mount point failed.
    Prepare { what: String, errno: Errno },
    /// The kernel refused the mount; `log` is what it printed about it.
    Mount {
        device: String,
        fstype: String,
        errno: Errno,
        log: String,
    },
}

impl fmt::Display for MountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Prepare { what, errno } => write!(f, "{what}: {errno}"),
            Self::Mount {
                device,
                fstype,
                errno,
                log,
            } => {
                write!(f, "cannot mount {device} as {fstype}: {errno}")?;
                if !log.is_empty() {
                    write!(f, " (kernel: {log})")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for MountError {}

static MOUNTED: Mutex<Vec<CString>> = Mutex::new(Vec::new());

fn cstr(s: &str) -> CString {
    // Paths built here come from fixed names and disk indexes: no NUL bytes.
    CString::new(s).unwrap_or_default()
}

fn ensure_dir(k: &Kernel, path: &str) -> Result<(), MountError> {
    match k.mkdir(&cstr(path), 0o755) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(errno) => Err(MountError::Prepare {
            what: format!("mkdir {path}"),
            errno,
        }),
    }
}

impl Kernel {
    /// Mounts `disk` at `target` inside the kernel (creating it), as `fstype`.
    pub fn mount_disk(
        &self,
        disk: DiskId,
        fstype: &str,
        target: &str,
        read_only: bool,
    ) -> Result<(), MountError> {
        ensure_dir(self, "/dev")?;
        match self.mount(c"devtmpfs", c"/dev", c"devtmpfs", 0, None) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(errno) => {
                return Err(MountError::Prepare {
                    what: "mount devtmpfs on /dev".into(),
                    errno,
                });
            }
        }
        let mut path = String::new();
        for part in target.split('/').filter(|p| !p.is_empty()) {
            path.push('/');
            path.push_str(part);
            ensure_dir(self, &path)?;
        }
        let letter = char::from(b'a' + u8::try_from(disk.0 % 26).unwrap_or(0));
        let device = format!("/dev/vd{letter}");
        let flags = if read_only { MS_RDONLY } else { 0 };
        self.mount(&cstr(&device), &cstr(target), &cstr(fstype), flags, None)
            .map_err(|errno| MountError::Mount {
                device: device.clone(),
                fstype: fstype.to_string(),
                errno,
                log: self.log_tail(3).replace('\n', "; "),
            })?;
        MOUNTED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(cstr(target));
        Ok(())
    }

    /// Unmounts every disk [`Kernel::mount_disk`] mounted, newest first.
    pub fn unmount_disks(&self) -> Result<(), Errno> {
        let mut mounted = MOUNTED.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(target) = mounted.pop() {
            self.umount(&target, 0)?;
        }
        Ok(())
    }
}

/// What the guest sees besides the image's own tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootMode {
    /// The image's root only.
    Raw,
    /// Also proc, sysfs, devtmpfs (+ devpts) and tmpfs on /tmp and /run, all inside the
    /// kernel library.
    Recommended,
}

/// (source, directory, fstype, mount data): /tmp is world-writable and sticky, as on any
/// Linux system. proc comes first, apart: all are mounted by the guests' pid 1, proc so
/// that it shows the guests' pid namespace.
const RECOMMENDED_MOUNTS: [(&str, &str, &str, Option<&CStr>); 5] = [
    ("sysfs", "sys", "sysfs", None),
    ("devtmpfs", "dev", "devtmpfs", None),
    ("devpts", "dev/pts", "devpts", None),
    ("tmpfs", "tmp", "tmpfs", Some(c"mode=1777")),
    ("tmpfs", "run", "tmpfs", Some(c"mode=755")),
];

const CLONE_NEWPID: usize = 0x2000_0000;
const MS_BIND: u64 = 4096;

/// Where the kernel library mounts an image root ([`Kernel::image_root`]).
fn root_dir(disk: DiskId) -> String {
    format!("/guest-root{}", disk.0)
}

/// How [`Kernel::overlay_file`] showed a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overlaid {
    /// Over the image's own file, which is unchanged.
    OverImageFile,
    /// The image had none: an empty one was created in it to be shown over.
    CreatedInImage,
}

impl Kernel {
    /// Shows `content` at `path` (absolute, inside the image root of `disk`) without
    /// writing it into the image: the file lives in the kernel library's own root and is
    /// bind-mounted over the image's. An image without a file there gets an empty one
    /// when `create_missing` (and it can be written). Unmounted with the disks.
    pub fn overlay_file(
        &self,
        disk: DiskId,
        path: &str,
        content: &[u8],
        create_missing: bool,
    ) -> Result<Overlaid, MountError> {
        use crate::sys::{O_CREAT, O_TRUNC, O_WRONLY};
        let fail = |what: String| move |errno| MountError::Prepare { what, errno };
        ensure_dir(self, "/kbox-files")?;
        let index = MOUNTED.lock().unwrap_or_else(PoisonError::into_inner).len();
        let source = cstr(&format!("/kbox-files/{index}"));
        let fd = self
            .open(&source, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            .map_err(fail("create the kernel's copy of a file".into()))?;
        let written = self.write(fd, content);
        let _ = self.close(fd);
        match written {
            Ok(n) if n == content.len() => {}
            Ok(_) => {
                return Err(MountError::Prepare {
                    what: "write the kernel's copy of a file".into(),
                    errno: Errno::EIO,
                });
            }
            Err(errno) => return Err(fail("write the kernel's copy of a file".into())(errno)),
        }
        let target = cstr(&format!(
            "{}/{}",
            root_dir(disk),
            path.trim_start_matches('/')
        ));
        let mut how = Overlaid::OverImageFile;
        match self.stat(&target) {
            Ok(_) => {}
            Err(Errno::ENOENT) if create_missing => {
                let fd = self
                    .open(&target, O_WRONLY | O_CREAT, 0o644)
                    .map_err(fail(format!("create {path} in the image")))?;
                let _ = self.close(fd);
                how = Overlaid::CreatedInImage;
            }
            Err(errno) => return Err(fail(format!("find {path} in the image"))(errno)),
        }
        self.mount(&source, &target, c"", MS_BIND, None)
            .map_err(fail(format!("show kbox's {path}")))?;
        MOUNTED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(target);
        Ok(how)
    }
}
const PR_SET_NAME: usize = 15;

impl Kernel {
    /// Mounts `disk` as a guest root and returns a task chrooted into it, from which
    /// guest processes' tasks are forked. Drop every such task before [`Kernel::halt`]
    /// so the image unmounts cleanly.
    ///
    /// Every image root has a pid namespace of its own, so guests' pids can mirror the
    /// host's and their /proc lists their own processes only. Its pid 1 is a task of the
    /// kernel library's own root (it holds no mount) that is never ended: its exit would
    /// kill every task in the namespace. The returned task is a thread of that pid 1, so
    /// the tasks forked from it have parent pid 1, as processes started by an init do.
    pub fn image_root(
        &self,
        disk: DiskId,
        fstype: &str,
        mode: RootMode,
        read_only: bool,
    ) -> Result<crate::Task, MountError> {
        let base = root_dir(disk);
        self.mount_disk(disk, fstype, &base, read_only)?;
        let prepare = |what: &str| {
            let what = what.to_string();
            move |errno| MountError::Prepare { what, errno }
        };
        let init = self
            .pid_namespace()
            .map_err(prepare("create the guests' pid namespace"))?;
        if mode == RootMode::Recommended {
            let mounts = [("proc", "proc", "proc", None)]
                .into_iter()
                .chain(RECOMMENDED_MOUNTS);
            for (source, dir, fstype, data) in mounts {
                let target = format!("{base}/{dir}");
                // An image without the directory gets one, unless it is read-only.
                ensure_dir(self, &target)?;
                // proc shows the pid namespace of the task that mounts it.
                init.mount(&cstr(source), &cstr(&target), &cstr(fstype), 0, data)
                    .map_err(|errno| MountError::Mount {
                        device: source.into(),
                        fstype: fstype.into(),
                        errno,
                        log: String::new(),
                    })?;
                MOUNTED
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(cstr(&target));
            }
        }
        let root = init
            .fork_with_pid(
                crate::TaskKind::PrivateThread,
                crate::PidWish::Exact(crate::PID_MAX - 1),
            )
            .map_err(prepare("create the guest root task"))?;
        // Never ended (see above).
        std::mem::forget(init);
        root.chroot(&cstr(&base))
            .and_then(|()| root.chdir(c"/"))
            .map_err(prepare(&format!("chroot {base}")))?;
        Ok(root)
    }

    /// pid 1 of a new pid namespace: the first child of a task that unshared one.
    fn pid_namespace(&self) -> Result<crate::Task, Errno> {
        let creator = self.create_task(None, crate::TaskKind::Process)?;
        creator.raw(crate::sysno::UNSHARE, [CLONE_NEWPID, 0, 0, 0, 0, 0])?;
        // The creator ends here; pid 1 is reparented to the kernel's own init.
        let init = creator.fork(crate::TaskKind::Process)?;
        // As the guests' pid 1 appears on the host when kbox runs one: kbox's own init.
        let name = c"kbox";
        init.raw(
            crate::sysno::PRCTL,
            [PR_SET_NAME, name.as_ptr() as usize, 0, 0, 0, 0],
        )?;
        Ok(init)
    }
}

/// LKL's `struct lkl_disk` as kbox's C API takes it: an open image and its mode.
#[repr(C)]
pub struct LklDisk {
    pub fd: core::ffi::c_int,
    pub read_only: core::ffi::c_int,
}

/// LKL's `lkl_dev_blk_ops`: what C callers can ask of a disk before adding it.
#[repr(C)]
pub struct LklDevBlkOps {
    /// Capacity in bytes of the disk's image, or a negative errno.
    pub get_capacity: extern "C" fn(disk: *const LklDisk, bytes: *mut u64) -> core::ffi::c_int,
}

extern "C" fn blk_get_capacity(disk: *const LklDisk, bytes: *mut u64) -> core::ffi::c_int {
    use std::os::fd::BorrowedFd;
    // SAFETY: the caller passes a valid disk description and result slot.
    let (fd, out) = unsafe { ((*disk).fd, &mut *bytes) };
    if fd < 0 {
        return -Errno::EBADF.0;
    }
    // SAFETY: the descriptor stays open for the duration of this call (caller's contract).
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    match rustix::fs::fstat(fd) {
        Ok(st) => {
            *out = u64::try_from(st.st_size).unwrap_or(0);
            0
        }
        Err(e) => -e.raw_os_error(),
    }
}

#[unsafe(no_mangle)]
pub static lkl_dev_blk_ops: LklDevBlkOps = LklDevBlkOps {
    get_capacity: blk_get_capacity,
};

/// LKL's `lkl_disk_add`: registers the image open on `disk->fd` (duplicated, so the
/// caller keeps its descriptor). Returns the disk id or a negative errno. Before boot.
///
/// # Safety
/// `disk` is null or points to a valid `LklDisk`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lkl_disk_add(disk: *const LklDisk) -> core::ffi::c_int {
    if disk.is_null() {
        return -Errno::EINVAL.0;
    }
    // SAFETY: checked non-null; the caller passes a valid description.
    let (fd, read_only) = unsafe { ((*disk).fd, (*disk).read_only != 0) };
    let path = PathBuf::from(format!("/proc/self/fd/{fd}"));
    match add_disk(&path, read_only) {
        Ok(DiskId(id)) => core::ffi::c_int::try_from(id).unwrap_or(-Errno::ENOSPC.0),
        Err(DiskError::AfterBoot) => -Errno::EBUSY.0,
        Err(DiskError::Open { error, .. }) => -error.raw_os_error().unwrap_or(Errno::EIO.0),
        Err(DiskError::NotAFile(_)) => -Errno::EINVAL.0,
        Err(DiskError::NoInterrupt | DiskError::TooMany) => -Errno::ENOSPC.0,
    }
}

/// LKL's `lkl_mount_dev`: mounts disk `disk_id` (whole disk: `part` must be 0) at
/// `/mnt/vdX` and writes that path to `mnt_str`. Returns 0 or a negative errno.
///
/// # Safety
/// `fs_type` is a C string; `mnt_str` has room for `mnt_str_len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lkl_mount_dev(
    disk_id: core::ffi::c_uint,
    part: core::ffi::c_uint,
    fs_type: *const core::ffi::c_char,
    flags: core::ffi::c_int,
    _opts: *const core::ffi::c_char,
    mnt_str: *mut core::ffi::c_char,
    mnt_str_len: core::ffi::c_uint,
) -> core::ffi::c_long {
    if part != 0 || fs_type.is_null() || mnt_str.is_null() || !kernel::booted() {
        return (-Errno::EINVAL.0).into();
    }
    // SAFETY: checked non-null; the caller's contract makes it a C string.
    let Ok(fstype) = unsafe { std::ffi::CStr::from_ptr(fs_type) }.to_str() else {
        return (-Errno::EINVAL.0).into();
    };
    let Ok(index) = usize::try_from(disk_id) else {
        return (-Errno::EINVAL.0).into();
    };
    let letter = char::from(b'a' + u8::try_from(index % 26).unwrap_or(0));
    let target = format!("/mnt/vd{letter}");
    let Ok(room) = usize::try_from(mnt_str_len) else {
        return (-Errno::EINVAL.0).into();
    };
    if target.len() >= room {
        return (-Errno::ERANGE.0).into();
    }
    let read_only = flags & 1 != 0;
    match Kernel::token().mount_disk(DiskId(index), fstype, &target, read_only) {
        Ok(()) => {
            // SAFETY: `room` bytes are writable and the path plus NUL fits.
            unsafe {
                core::ptr::copy_nonoverlapping(target.as_ptr(), mnt_str.cast::<u8>(), target.len());
                *mnt_str.add(target.len()) = 0;
            }
            0
        }
        Err(MountError::Prepare { errno, .. } | MountError::Mount { errno, .. }) => {
            (-errno.0).into()
        }
    }
}
