//! Applies one image layer (a tar stream) to an ext4 image through the kernel library: a
//! task chrooted at the image's root makes every entry with the owner, mode, extended
//! attributes and times the archive gives (no root on the host, no fakeroot), and carries
//! out the layer's whiteouts (`.wh.NAME` removes NAME of the layers below, `.wh..wh..opq`
//! empties a directory of them).
//!
//! Names are confined to the image: an absolute name or one with a `..` component is
//! refused, and every path is resolved by the chrooted task, so no symlink in the image
//! can lead a write outside it.
use std::collections::HashSet;
use std::ffi::CString;
use std::fmt;
use std::io::Read;

use kbox_core::sysno::generic as g;
use kbox_lkl::{Errno, Task};

pub const AT_FDCWD: usize = 0usize.wrapping_sub(100);
const AT_SYMLINK_NOFOLLOW: usize = 0x100;
const AT_REMOVEDIR: usize = 0x200;
const O_WRONLY: usize = 0o1;
const O_CREAT: usize = 0o100;
const O_TRUNC: usize = 0o1000;
const O_NOFOLLOW: usize = 0o400000;
const O_DIRECTORY: usize = 0o200000;
const O_RDONLY: usize = 0;
const S_IFCHR: usize = 0o020000;
const S_IFBLK: usize = 0o060000;
const S_IFIFO: usize = 0o010000;
const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Why a layer could not be applied.
#[derive(Debug)]
pub enum ApplyError {
    /// The tar stream is damaged (or its compression is).
    Archive(std::io::Error),
    /// An entry names a path outside the image.
    Unsafe(String),
    /// The kernel library refused to make an entry (a full disk is ENOSPC).
    Make { path: String, errno: Errno },
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Archive(e) => write!(f, "damaged layer: {e}"),
            Self::Unsafe(name) => write!(
                f,
                "refused entry {name:?}: it names a path outside the image"
            ),
            Self::Make { path, errno } if *errno == Errno::ENOSPC => {
                write!(f, "the image is full writing {path} (give a larger --size)")
            }
            Self::Make { path, errno } => write!(f, "cannot make {path}: {errno}"),
        }
    }
}

/// The image-relative path of an archive name ("./usr/bin" → "usr/bin"); `None` for the
/// root itself. Absolute names and `..` components are refused.
pub fn confine(name: &str) -> Result<Option<String>, ApplyError> {
    if name.starts_with('/') {
        return Err(ApplyError::Unsafe(name.to_string()));
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(ApplyError::Unsafe(name.to_string())),
            p => parts.push(p),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// What applying a layer counted.
#[derive(Default, Debug, Clone, Copy)]
pub struct Applied {
    pub entries: u64,
    pub bytes: u64,
}

struct Layer<'a> {
    task: &'a Task,
    /// Paths this layer made: an opaque directory keeps them.
    made: HashSet<String>,
    /// Directories' times, set last (making their entries changes them).
    dir_times: Vec<(String, i64)>,
}

fn cpath(path: &str) -> Result<CString, ApplyError> {
    CString::new(format!("/{path}")).map_err(|_| ApplyError::Unsafe(path.to_string()))
}

impl Layer<'_> {
    fn call(&self, path: &str, nr: u32, args: [usize; 6]) -> Result<usize, ApplyError> {
        self.task
            .syscall(nr, args)
            .map_err(|errno| ApplyError::Make {
                path: format!("/{path}"),
                errno,
            })
    }

    /// The type bits of what is at `path` now (without following a symlink), if anything.
    fn kind(&self, path: &str) -> Option<u32> {
        let c = cpath(path).ok()?;
        let mut st = kbox_lkl::sys::Stat::default();
        self.task
            .syscall(
                g::NEWFSTATAT,
                [
                    AT_FDCWD,
                    c.as_ptr() as usize,
                    (&raw mut st) as usize,
                    AT_SYMLINK_NOFOLLOW,
                    0,
                    0,
                ],
            )
            .ok()
            .map(|_| st.st_mode & 0o170000)
    }

    /// Removes `path` and everything beneath it.
    fn remove(&self, path: &str) -> Result<(), ApplyError> {
        match self.kind(path) {
            None => Ok(()),
            Some(0o040000) => {
                for child in self.children(path)? {
                    self.remove(&format!("{path}/{child}"))?;
                }
                let c = cpath(path)?;
                self.call(
                    path,
                    g::UNLINKAT,
                    [AT_FDCWD, c.as_ptr() as usize, AT_REMOVEDIR, 0, 0, 0],
                )
                .map(drop)
            }
            Some(_) => {
                let c = cpath(path)?;
                self.call(
                    path,
                    g::UNLINKAT,
                    [AT_FDCWD, c.as_ptr() as usize, 0, 0, 0, 0],
                )
                .map(drop)
            }
        }
    }

    /// The names in directory `path` (without `.` and `..`).
    fn children(&self, path: &str) -> Result<Vec<String>, ApplyError> {
        let c = cpath(path)?;
        let fd = self.call(
            path,
            g::OPENAT,
            [
                AT_FDCWD,
                c.as_ptr() as usize,
                O_RDONLY | O_DIRECTORY | O_NOFOLLOW,
                0,
                0,
                0,
            ],
        )?;
        let mut names = Vec::new();
        let mut buf = vec![0u8; 32 << 10];
        let result = loop {
            let n = match self.call(
                path,
                g::GETDENTS64,
                [fd, buf.as_mut_ptr() as usize, buf.len(), 0, 0, 0],
            ) {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(e) => break Err(e),
            };
            let mut at = 0;
            // struct linux_dirent64: ino (8), off (8), reclen (2), type (1), name.
            while at + 19 <= n {
                let reclen = usize::from(u16::from_ne_bytes([buf[at + 16], buf[at + 17]]));
                if reclen == 0 || at + reclen > n {
                    break;
                }
                let name = &buf[at + 19..at + reclen];
                let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
                if name != b"." && name != b".." {
                    names.push(String::from_utf8_lossy(name).into_owned());
                }
                at += reclen;
            }
        };
        let _ = self.task.syscall(g::CLOSE, [fd, 0, 0, 0, 0, 0]);
        result.map(|()| names)
    }

    /// Makes the directories leading to `path` that are missing (0755, root's).
    fn parents(&self, path: &str) -> Result<(), ApplyError> {
        let mut at = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            match self.kind(&at) {
                Some(0o040000) => {}
                Some(_) => {
                    // A file or symlink where a directory must be: the later entry wins.
                    self.remove(&at)?;
                    self.mkdir(&at, 0o755)?;
                }
                None => self.mkdir(&at, 0o755)?,
            }
        }
        Ok(())
    }

    fn mkdir(&self, path: &str, mode: u32) -> Result<(), ApplyError> {
        let c = cpath(path)?;
        self.call(
            path,
            g::MKDIRAT,
            [AT_FDCWD, c.as_ptr() as usize, mode as usize, 0, 0, 0],
        )
        .map(drop)
    }

    /// Makes room for a new entry at `path`: anything there goes, unless both are
    /// directories (then the new entry only updates the old one's metadata).
    fn clear_for(&self, path: &str, is_dir: bool) -> Result<bool, ApplyError> {
        match self.kind(path) {
            None => Ok(false),
            Some(0o040000) if is_dir => Ok(true),
            Some(_) => self.remove(path).map(|()| false),
        }
    }

    fn entry<R: Read>(
        &mut self,
        mut e: tar::Entry<'_, R>,
        counted: &mut Applied,
    ) -> Result<(), ApplyError> {
        let raw = e.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let Some(path) = confine(&name)? else {
            return Ok(());
        };
        let (dir, base) = match path.rsplit_once('/') {
            Some((d, b)) => (Some(d), b),
            None => (None, path.as_str()),
        };
        if base == OPAQUE {
            let dir = dir.unwrap_or("");
            let children = if dir.is_empty() {
                self.children("")?
            } else {
                self.children(dir).unwrap_or_default()
            };
            for child in children {
                let child = if dir.is_empty() {
                    child
                } else {
                    format!("{dir}/{child}")
                };
                if !self.made.contains(&child) {
                    self.remove(&child)?;
                }
            }
            return Ok(());
        }
        if let Some(hidden) = base.strip_prefix(WHITEOUT) {
            let target = match dir {
                Some(d) => format!("{d}/{hidden}"),
                None => hidden.to_string(),
            };
            return self.remove(&target);
        }
        let header = e.header().clone();
        let kind = header.entry_type();
        let mode = header.mode().map_err(ApplyError::Archive)? & 0o7777;
        let uid = header.uid().map_err(ApplyError::Archive)?;
        let gid = header.gid().map_err(ApplyError::Archive)?;
        let mtime = i64::try_from(header.mtime().map_err(ApplyError::Archive)?).unwrap_or(0);
        let mut xattrs = Vec::new();
        if let Ok(Some(exts)) = e.pax_extensions() {
            for ext in exts.flatten() {
                if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
                }
            }
        }
        self.parents(&path)?;
        let c = cpath(&path)?;
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                if !self.clear_for(&path, true)? {
                    self.mkdir(&path, 0o700)?;
                }
                self.dir_times.push((path.clone(), mtime));
            }
            T::Regular | T::Continuous => {
                self.clear_for(&path, false)?;
                let fd = self.call(
                    &path,
                    g::OPENAT,
                    [
                        AT_FDCWD,
                        c.as_ptr() as usize,
                        O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW,
                        0o600,
                        0,
                        0,
                    ],
                )?;
                let copied = self.copy_in(&path, fd, &mut e);
                let _ = self.task.syscall(g::CLOSE, [fd, 0, 0, 0, 0, 0]);
                counted.bytes += copied?;
            }
            T::Symlink => {
                self.clear_for(&path, false)?;
                let target = e
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let target = CString::new(target).map_err(|_| ApplyError::Unsafe(name.clone()))?;
                self.call(
                    &path,
                    g::SYMLINKAT,
                    [
                        target.as_ptr() as usize,
                        AT_FDCWD,
                        c.as_ptr() as usize,
                        0,
                        0,
                        0,
                    ],
                )?;
            }
            T::Link => {
                let target = e
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                let target = confine(&target)?.ok_or_else(|| ApplyError::Unsafe(name.clone()))?;
                self.clear_for(&path, false)?;
                let t = cpath(&target)?;
                self.call(
                    &path,
                    g::LINKAT,
                    [
                        AT_FDCWD,
                        t.as_ptr() as usize,
                        AT_FDCWD,
                        c.as_ptr() as usize,
                        0,
                        0,
                    ],
                )?;
                // A hard link shares its target's inode: nothing more to set.
                self.made.insert(path);
                counted.entries += 1;
                return Ok(());
            }
            T::Char | T::Block | T::Fifo => {
                self.clear_for(&path, false)?;
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let (ty, dev) = match kind {
                    T::Char => (S_IFCHR, makedev(major, minor)),
                    T::Block => (S_IFBLK, makedev(major, minor)),
                    _ => (S_IFIFO, 0),
                };
                self.call(
                    &path,
                    g::MKNODAT,
                    [AT_FDCWD, c.as_ptr() as usize, ty | 0o600, dev, 0, 0],
                )?;
            }
            // Metadata records (pax, GNU long names) are read by the tar reader itself;
            // anything else has no file to make.
            _ => return Ok(()),
        }
        self.metadata(&path, kind == T::Symlink, uid, gid, mode, &xattrs, mtime)?;
        self.made.insert(path);
        counted.entries += 1;
        Ok(())
    }

    fn copy_in<R: Read>(
        &self,
        path: &str,
        fd: usize,
        e: &mut tar::Entry<'_, R>,
    ) -> Result<u64, ApplyError> {
        let mut buf = vec![0u8; 256 << 10];
        let mut total = 0u64;
        loop {
            let n = e.read(&mut buf).map_err(ApplyError::Archive)?;
            if n == 0 {
                return Ok(total);
            }
            let mut done = 0;
            while done < n {
                let w = self.call(
                    path,
                    g::WRITE,
                    [fd, buf[done..].as_ptr() as usize, n - done, 0, 0, 0],
                )?;
                if w == 0 {
                    return Err(ApplyError::Make {
                        path: format!("/{path}"),
                        errno: Errno::EIO,
                    });
                }
                done += w;
            }
            total += n as u64;
        }
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "one entry's metadata, set in order"
    )]
    fn metadata(
        &self,
        path: &str,
        symlink: bool,
        uid: u64,
        gid: u64,
        mode: u32,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        mtime: i64,
    ) -> Result<(), ApplyError> {
        let c = cpath(path)?;
        let p = c.as_ptr() as usize;
        self.call(
            path,
            g::FCHOWNAT,
            [
                AT_FDCWD,
                p,
                usize::try_from(uid).unwrap_or(usize::MAX),
                usize::try_from(gid).unwrap_or(usize::MAX),
                AT_SYMLINK_NOFOLLOW,
                0,
            ],
        )?;
        // After the owner: a chown clears set-user-ID and set-group-ID bits.
        if !symlink {
            self.call(path, g::FCHMODAT, [AT_FDCWD, p, mode as usize, 0, 0, 0])?;
        }
        for (name, value) in xattrs {
            let Ok(name) = CString::new(name.clone()) else {
                continue;
            };
            self.call(
                path,
                g::LSETXATTR,
                [
                    p,
                    name.as_ptr() as usize,
                    value.as_ptr() as usize,
                    value.len(),
                    0,
                    0,
                ],
            )?;
        }
        self.set_time(path, mtime)
    }

    fn set_time(&self, path: &str, mtime: i64) -> Result<(), ApplyError> {
        let c = cpath(path)?;
        let times = [mtime, 0, mtime, 0];
        self.call(
            path,
            g::UTIMENSAT,
            [
                AT_FDCWD,
                c.as_ptr() as usize,
                times.as_ptr() as usize,
                AT_SYMLINK_NOFOLLOW,
                0,
                0,
            ],
        )
        .map(drop)
    }
}

/// The kernel's `dev_t` encoding of a major and minor number.
fn makedev(major: u32, minor: u32) -> usize {
    let (major, minor) = (major as usize, minor as usize);
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12) | ((major & !0xfff) << 32)
}

/// Applies the tar stream `layer` to the image `task` is chrooted at.
pub fn apply(task: &Task, layer: impl Read) -> Result<Applied, ApplyError> {
    let mut state = Layer {
        task,
        made: HashSet::new(),
        dir_times: Vec::new(),
    };
    let mut counted = Applied::default();
    let mut archive = tar::Archive::new(layer);
    for entry in archive.entries().map_err(ApplyError::Archive)? {
        let entry = entry.map_err(ApplyError::Archive)?;
        state.entry(entry, &mut counted)?;
    }
    // Read past the archive's end blocks to the end of the blob, so that its digest is
    // checked over every byte (a change in the padding is a change all the same).
    std::io::copy(&mut archive.into_inner(), &mut std::io::sink()).map_err(ApplyError::Archive)?;
    for (dir, mtime) in state.dir_times.iter().rev() {
        state.set_time(dir, *mtime)?;
    }
    Ok(counted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_confined_to_the_image() {
        assert_eq!(
            confine("./usr/bin/").ok().flatten().as_deref(),
            Some("usr/bin")
        );
        assert_eq!(
            confine("etc//passwd").ok().flatten().as_deref(),
            Some("etc/passwd")
        );
        assert!(matches!(confine("./"), Ok(None)));
        assert!(matches!(confine("/etc/passwd"), Err(ApplyError::Unsafe(_))));
        assert!(matches!(confine("a/../../etc"), Err(ApplyError::Unsafe(_))));
        assert!(matches!(confine(".."), Err(ApplyError::Unsafe(_))));
    }

    #[test]
    fn device_numbers_use_the_kernels_encoding() {
        assert_eq!(makedev(1, 3), 0x103);
        assert_eq!(makedev(259, 0x12345), 0x1231_0345);
    }
}
