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
use std::ffi::CString;
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

    fn serve(&mut self, chain: &mut Chain<'_>) -> u32 {
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

const RECOMMENDED_MOUNTS: [(&str, &str, &str); 6] = [
    ("proc", "proc", "proc"),
    ("sysfs", "sys", "sysfs"),
    ("devtmpfs", "dev", "devtmpfs"),
    ("devpts", "dev/pts", "devpts"),
    ("tmpfs", "tmp", "tmpfs"),
    ("tmpfs", "run", "tmpfs"),
];

impl Kernel {
    /// Mounts `disk` as a guest root and returns a task chrooted into it, from which
    /// guest processes' tasks are forked. Drop every such task before [`Kernel::halt`]
    /// so the image unmounts cleanly.
    pub fn image_root(
        &self,
        disk: DiskId,
        fstype: &str,
        mode: RootMode,
        read_only: bool,
    ) -> Result<crate::Task, MountError> {
        let base = format!("/guest-root{}", disk.0);
        self.mount_disk(disk, fstype, &base, read_only)?;
        if mode == RootMode::Recommended {
            for (source, dir, fstype) in RECOMMENDED_MOUNTS {
                let target = format!("{base}/{dir}");
                // An image without the directory gets one, unless it is read-only.
                ensure_dir(self, &target)?;
                self.mount(&cstr(source), &cstr(&target), &cstr(fstype), 0, None)
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
        let root = self
            .create_task(None, crate::TaskKind::Process)
            .map_err(|errno| MountError::Prepare {
                what: "create the guest root task".into(),
                errno,
            })?;
        root.chroot(&cstr(&base))
            .and_then(|()| root.chdir(c"/"))
            .map_err(|errno| MountError::Prepare {
                what: format!("chroot {base}"),
                errno,
            })?;
        Ok(root)
    }
}
