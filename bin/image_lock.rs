//! One writer per image: a kbox that mounts an image read-write holds an exclusive lock on
//! the image file for as long as it runs, and read-only users share a lock. Two kernels
//! writing one ext4 image would each trust their own block and inode bitmaps, and the image
//! ends up with wrong free counts or worse.
//!
//! The lock is flock(2): it belongs to the open file description, so it lives exactly as
//! long as this FD (closing another FD of the same file, as POSIX record locks would, does
//! not drop it), and the kernel releases it when kbox dies, however it dies.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

/// A held lock on an image file; released on drop.
#[derive(Debug)]
pub struct ImageLock {
    _file: File,
}

#[derive(Debug)]
pub enum LockError {
    /// Another process holds a conflicting lock.
    Busy {
        image: PathBuf,
        /// Who holds it, from /proc/locks (absent where that file is not readable).
        holder: Option<u32>,
        /// Whether this kbox wanted to write.
        writing: bool,
    },
    /// The image could not be opened or locked at all.
    Io {
        image: PathBuf,
        error: std::io::Error,
    },
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Busy {
                image,
                holder,
                writing,
            } => {
                write!(f, "image {} is in use by another kbox", image.display())?;
                if let Some(pid) = holder {
                    write!(f, " (pid {pid})")?;
                }
                if *writing {
                    f.write_str(": only one kbox may mount an image read-write")
                } else {
                    f.write_str(", which mounted it read-write")
                }
            }
            Self::Io { image, error } => {
                write!(f, "cannot lock image {}: {error}", image.display())
            }
        }
    }
}

impl std::error::Error for LockError {}

impl ImageLock {
    /// Takes the lock on `image`: exclusive when `writing`, shared otherwise. Never waits.
    pub fn take(image: &Path, writing: bool) -> Result<ImageLock, LockError> {
        let io = |error| LockError::Io {
            image: image.to_path_buf(),
            error,
        };
        // Read access is enough to take either lock.
        let file = File::open(image).map_err(io)?;
        let op = if writing {
            FlockOperation::NonBlockingLockExclusive
        } else {
            FlockOperation::NonBlockingLockShared
        };
        match rustix::fs::flock(&file, op) {
            Ok(()) => Ok(ImageLock { _file: file }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(LockError::Busy {
                image: image.to_path_buf(),
                holder: file.metadata().ok().and_then(|m| {
                    holder(m.dev(), m.ino()).or_else(|| holder_by_fd(m.dev(), m.ino()))
                }),
                writing,
            }),
            Err(e) => Err(io(e.into())),
        }
    }
}

/// The pid holding a flock on the file (dev, ino), from /proc/locks, where each line reads
/// `N: FLOCK ADVISORY WRITE PID MAJ:MIN:INO START END` (device numbers in hex).
fn holder(dev: u64, ino: u64) -> Option<u32> {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let want = format!("{major:02x}:{minor:02x}:{ino}");
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let kind = fields.get(1)?;
        let at = fields.iter().position(|f| *f == want)?;
        if *kind != "FLOCK" || at < 1 {
            return None;
        }
        fields.get(at - 1)?.parse().ok()
    })
}

/// The pid holding a flock on the file (dev, ino), from the FDs of every process: where
/// /proc/locks names another device than stat does (overlayfs, as under containers, locks
/// the file below), a process's FD still stats as the file, and its fdinfo lists its lock
/// as `lock:\t1: FLOCK ADVISORY WRITE PID ...` (only the description holding the lock has
/// the line).
fn holder_by_fd(dev: u64, ino: u64) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    for proc in std::fs::read_dir("/proc").ok()?.flatten() {
        if proc
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
            .is_none()
        {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(proc.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let same = std::fs::metadata(fd.path()).is_ok_and(|m| m.dev() == dev && m.ino() == ino);
            if !same {
                continue;
            }
            let info = proc.path().join("fdinfo").join(fd.file_name());
            let Ok(info) = std::fs::read_to_string(info) else {
                continue;
            };
            let holder = info.lines().find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.first() != Some(&"lock:") || !fields.contains(&"FLOCK") {
                    return None;
                }
                let at = fields.iter().position(|f| *f == "READ" || *f == "WRITE")?;
                fields.get(at + 1)?.parse().ok()
            });
            if holder.is_some() {
                return holder;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("kbox-lock-{}-{name}", std::process::id()));
        std::fs::write(&p, b"image").unwrap_or_else(|e| panic!("{e}"));
        p
    }

    #[test]
    fn a_second_writer_is_refused_and_named() {
        let p = temp_file("writer");
        let first = ImageLock::take(&p, true).unwrap_or_else(|e| panic!("{e}"));
        match ImageLock::take(&p, true) {
            Err(LockError::Busy { holder, .. }) => {
                assert_eq!(holder, Some(std::process::id()));
            }
            other => panic!("second writer got {other:?}"),
        }
        assert!(matches!(
            ImageLock::take(&p, false),
            Err(LockError::Busy { writing: false, .. })
        ));
        drop(first);
        assert!(
            ImageLock::take(&p, true).is_ok(),
            "the lock dies with its holder"
        );
        let _ = std::fs::remove_file(&p);
    }

    /// What overlayfs needs (its /proc/locks line names the file below): the FD scan finds
    /// the holder on its own.
    #[test]
    fn the_holder_is_found_through_its_fd_as_well() {
        use std::os::unix::fs::MetadataExt;
        let p = temp_file("by-fd");
        let held = ImageLock::take(&p, true).expect("first");
        let m = std::fs::metadata(&p).expect("stat");
        assert_eq!(holder_by_fd(m.dev(), m.ino()), Some(std::process::id()));
        drop(held);
        assert_eq!(holder_by_fd(m.dev(), m.ino()), None);
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn readers_share() {
        let p = temp_file("readers");
        let a = ImageLock::take(&p, false);
        let b = ImageLock::take(&p, false);
        assert!(a.is_ok() && b.is_ok(), "{a:?} {b:?}");
        assert!(matches!(
            ImageLock::take(&p, true),
            Err(LockError::Busy { writing: true, .. })
        ));
        let _ = std::fs::remove_file(&p);
    }
}
