//! exec, fork and exit of guest processes.
//!
//! The host kernel must load the guest's program, but only from a host path, and a seccomp
//! supervisor cannot change the path register. So kbox keeps, in a private host directory
//! that is every guest process's host working directory, copies of the image's programs under
//! their guest path made relative ("/bin/ls" becomes "bin/ls"), and overwrites the guest's
//! path string in place with that relative name, which is never longer. Dynamic programs get
//! their PT_INTERP rewritten to the interpreter's relative name in the same directory; `#!`
//! scripts get a copy whose first line names the interpreter's copy. See docs/dispatch.md.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kbox_core::abi::stat::GenericStat;
use kbox_core::shadow::FileId;
use kbox_core::sysno::generic as g;
use kbox_lkl::{Errno, Task};

use super::files::{Route, lkl_stat};
use super::linux::{AT_FDCWD, O_CLOEXEC, PR_SET_NAME, S_IFMT, S_IFREG, X_OK};
use super::{Engine, Guest, Reply, fdv, hostio, lkl, ptr};

const PT_INTERP: u32 = 3;
/// Nested `#!` interpreters followed, as Linux's binfmt_script does (BINPRM_MAX_RECURSION).
const MAX_SCRIPT_DEPTH: usize = 4;
const SHEBANG_MAX: usize = 256;
/// FS_IOC_GETVERSION, _IOR('v', 1, long): an inode's generation number.
const FS_IOC_GETVERSION: u64 = 0x8008_7601;

/// How the host finds the copies of guest programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecMode {
    /// The guest processes' host root is kbox's `root/` directory (chroot, in a user
    /// namespace when kbox is not root): a program's copy sits at its guest path there, so
    /// the host resolves the guest's own path, PT_INTERP and `#!` lines unchanged and kbox
    /// never writes guest memory.
    Rooted,
    /// No chroot was possible: the guest's path string is overwritten in place with a
    /// relative name of the copy (see docs/dispatch.md for what that costs).
    Rewrite,
}

/// How deep the guest processes' host working directory lies below `root/`: relative exec
/// paths with up to this many leading `..` stay in the part of the tree kept for them.
const REL_DEPTH: usize = 8;

/// kbox's private host directory: `root/` is the guest processes' host root in rooted mode
/// (programs at their guest paths; relative ones below `root/.kbox-rel/d/d/...`, the host
/// cwd), `store/` the copies of this run only, `empty/` the directory placeholder.
pub struct ExecDir {
    base: PathBuf,
    root: PathBuf,
    /// The host working directory of every guest process.
    cwd: PathBuf,
    /// Copies kept across runs for files of the image's own filesystem.
    persistent: Option<Persistent>,
    /// Copies of this run only (files on other filesystems, or changed during the run).
    private: PathBuf,
    empty: PathBuf,
    mode: ExecMode,
    /// Link location to the store key placed there.
    linked: HashMap<PathBuf, String>,
    /// Each program version's PT_INTERP (path, file offset, length), once read.
    interps: HashMap<String, Option<(Vec<u8>, usize, usize)>>,
    /// Files changed during this run (write-back, truncate, unlink): their copies are
    /// made per run, named by how often they changed, never taken from or put in the
    /// persistent store (the image's coarse timestamps could not tell the versions apart).
    changes: HashMap<FileId, u32>,
    /// How often every file may have changed at once (see `forget_all`).
    epoch: u32,
    /// Names whose link depends on the calling process (relative paths, /proc/self/exe),
    /// with the thread whose exec may still be walking it.
    pending: HashMap<PathBuf, u32>,
    generated: u32,
    /// The run directory's lock, held while kbox runs (see `remove_abandoned`).
    _in_use: fs::File,
}

/// The persistent store of one image filesystem and that filesystem's device number in
/// the kernel library.
struct Persistent {
    dir: PathBuf,
    dev: u64,
}

impl ExecDir {
    /// `image` names the image the guest runs from and `image_dev` its root filesystem's
    /// device in the kernel library: copies of its programs are kept across runs in a
    /// store named by the filesystem's UUID (see `persistent_store`).
    pub fn create(image: &Path, image_dev: u64) -> std::io::Result<ExecDir> {
        let (base, in_use) = pick_base()?;
        let dir = |name: &str| -> std::io::Result<PathBuf> {
            let p = base.join(name);
            fs::create_dir_all(&p)?;
            Ok(p)
        };
        let root = dir("root")?;
        let mut cwd = root.join(".kbox-rel");
        for _ in 0..REL_DEPTH {
            cwd.push("d");
        }
        fs::create_dir_all(&cwd)?;
        Ok(ExecDir {
            persistent: persistent_store(image).map(|dir| Persistent {
                dir,
                dev: image_dev,
            }),
            private: dir("store")?,
            empty: dir("empty")?,
            root,
            cwd,
            base,
            mode: ExecMode::Rooted,
            linked: HashMap::new(),
            interps: HashMap::new(),
            changes: HashMap::new(),
            epoch: 0,
            pending: HashMap::new(),
            generated: 0,
            _in_use: in_use,
        })
    }

    /// The host directory that is the guest processes' root in rooted mode.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The guest processes' host working directory.
    pub fn path(&self) -> &Path {
        &self.cwd
    }

    pub fn set_mode(&mut self, mode: ExecMode) {
        self.mode = mode;
    }

    pub fn mode(&self) -> ExecMode {
        self.mode
    }

    pub fn empty_dir(&self) -> &Path {
        &self.empty
    }

    /// The host FIFO standing for image FIFO (dev, ino), made on first use.
    pub fn fifo_path(&self, dev: u64, ino: u64) -> Result<PathBuf, Errno> {
        let dir = self.base.join("fifo");
        fs::create_dir_all(&dir).map_err(|_| Errno::EIO)?;
        let path = dir.join(format!("{dev}-{ino}"));
        match rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_bits_truncate(0o600),
            0,
        ) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(path),
            Err(e) => Err(hostio::errno(e)),
        }
    }

    /// The host directory behind the guest's `/dev/shm`: shared memory objects and named
    /// semaphores are files every guest process opens as the same host file (a writable
    /// shadow would give each open its own copy). Private to the run, gone with it.
    pub fn shm_dir(&self) -> std::io::Result<PathBuf> {
        let dir = self.base.join("shm");
        fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Where shadows of files over --shadow-limit live (unlinked files on disk).
    pub fn spill_dir(&self) -> &Path {
        &self.base
    }

    /// File `id` changed (or lost a name and may give its inode number to another file).
    pub fn changed(&mut self, id: FileId) {
        *self.changes.entry(id).or_insert(0) += 1;
        let prefix = key_prefix(id);
        self.interps.retain(|k, _| !k.starts_with(&prefix));
    }

    /// Every file may have changed (a mount or unmount, or more changes than were kept):
    /// from now on copies are private to the run and named by this epoch too.
    pub fn forget_all(&mut self) {
        self.interps.clear();
        self.linked.clear();
        self.epoch += 1;
    }

    /// Where the host finds guest path `name` (as the guest's exec, PT_INTERP or `#!`
    /// line names it): below `root/` for absolute paths in rooted mode, below the host
    /// cwd otherwise.
    fn location(&self, name: &[u8]) -> PathBuf {
        let rel = std::ffi::OsStr::from_bytes(name);
        match (self.mode, name.first()) {
            (ExecMode::Rooted, Some(b'/')) => {
                let trimmed: &[u8] = {
                    let mut p = name;
                    while let Some(rest) = p.strip_prefix(b"/") {
                        p = rest;
                    }
                    p
                };
                self.root.join(std::ffi::OsStr::from_bytes(trimmed))
            }
            _ => self.cwd.join(rel),
        }
    }

    /// The store file for `key` of `img`, and whether it is the persistent store's.
    fn stored(&self, img: &Image, key: &str) -> PathBuf {
        let changed = self.changes.get(&img.id()).copied().unwrap_or(0);
        match &self.persistent {
            Some(p) if changed == 0 && self.epoch == 0 && img.st.st_dev == p.dev => p.dir.join(key),
            _ => self.private.join(format!(
                "{}-{key}-c{changed}-e{}",
                img.st.st_dev, self.epoch
            )),
        }
    }

    /// Makes the host find `content` (stored once per `key` of file `img`) at guest path
    /// `name`. `exact`: the content is the file's own bytes, so a stored copy is checked
    /// against the file before use. `dependent`: the name means different files for
    /// different processes (relative paths, /proc/self/exe), so a link another process's
    /// exec may still be walking is not replaced under it.
    #[allow(clippy::too_many_arguments)]
    fn link(
        &mut self,
        task: &Task,
        img: &Image,
        name: &[u8],
        key: &str,
        exact: bool,
        dependent: Option<u32>,
        content: &dyn Fn() -> Result<Vec<u8>, Errno>,
    ) -> Result<(), Errno> {
        let at = self.location(name);
        let stored = self.stored(img, key);
        if self
            .linked
            .get(&at)
            .is_some_and(|k| *k == stored.to_string_lossy())
        {
            if let Some(tid) = dependent {
                self.pending.insert(at, tid);
            }
            return Ok(());
        }
        if !(stored.exists() && (!exact || img.matches(task, &stored))) {
            // Another kbox may be storing the same copy: each writes its own temporary
            // file and renames it into place, which is atomic.
            let tmp = tmp_name(&stored);
            fs::write(&tmp, content()?).map_err(|_| Errno::EIO)?;
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).map_err(|_| Errno::EIO)?;
            fs::rename(&tmp, &stored).map_err(|_| Errno::EIO)?;
        }
        if let Some(tid) = dependent {
            self.wait_for_pending(&at, tid);
        }
        self.place(&stored, &at)?;
        self.linked
            .insert(at.clone(), stored.to_string_lossy().into_owned());
        if let Some(tid) = dependent {
            self.pending.insert(at, tid);
        }
        Ok(())
    }

    /// Puts `stored` at `at`, replacing what was there in one step (a concurrent exec sees
    /// the old file or the new one, never none). Rooted: a hard link, or a copy where the
    /// store is on another filesystem, since a symlink out of the root would not resolve.
    fn place(&self, stored: &Path, at: &Path) -> Result<(), Errno> {
        if let Some(parent) = at.parent() {
            fs::create_dir_all(parent).map_err(|_| Errno::EIO)?;
        }
        let tmp = tmp_name(at);
        let _ = fs::remove_file(&tmp);
        let made = match self.mode {
            ExecMode::Rooted => fs::hard_link(stored, &tmp)
                .or_else(|_| fs::copy(stored, &tmp).map(|_| ()))
                .and_then(|()| fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))),
            ExecMode::Rewrite => std::os::unix::fs::symlink(stored, &tmp),
        };
        made.and_then(|()| fs::rename(&tmp, at)).map_err(|_| {
            let _ = fs::remove_file(&tmp);
            Errno::EIO
        })
    }

    /// Waits (a little) until the exec of another thread that may still be walking `at`
    /// has got past it.
    fn wait_for_pending(&mut self, at: &Path, tid: u32) {
        let Some(&other) = self.pending.get(at) else {
            return;
        };
        if other == tid {
            return;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while in_exec(other) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        self.pending.remove(at);
    }

    /// Makes guest path `name` the host file `host` (programs in `-b` binds): a symlink in
    /// rewrite mode; rooted, a hard link or copy (a symlink would leave the root).
    fn link_host(&mut self, name: &[u8], host: &Path, tid: u32) -> Result<(), Errno> {
        let at = self.location(name);
        self.wait_for_pending(&at, tid);
        match self.mode {
            ExecMode::Rewrite => {
                if let Some(parent) = at.parent() {
                    fs::create_dir_all(parent).map_err(|_| Errno::EIO)?;
                }
                let tmp = tmp_name(&at);
                let _ = fs::remove_file(&tmp);
                std::os::unix::fs::symlink(host, &tmp)
                    .and_then(|()| fs::rename(&tmp, &at))
                    .map_err(|_| Errno::EIO)?;
            }
            ExecMode::Rooted => self.place(host, &at)?,
        }
        self.linked.remove(&at);
        self.pending.insert(at, tid);
        Ok(())
    }

    /// A short generated name for paths that cannot be used relative to the cwd.
    fn generate(&mut self) -> Vec<u8> {
        self.generated += 1;
        format!("_{}", self.generated).into_bytes()
    }
}

/// A temporary name beside `path`, unique to this kbox.
fn tmp_name(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".tmp.{}", std::process::id()));
    PathBuf::from(name)
}

/// Whether thread `tid` is (still) in execve or execveat.
fn in_exec(tid: u32) -> bool {
    #[cfg(target_arch = "x86_64")]
    const EXECS: [&str; 2] = ["59", "322"];
    #[cfg(target_arch = "aarch64")]
    const EXECS: [&str; 2] = ["221", "281"];
    std::fs::read_to_string(format!("/proc/{tid}/syscall")).is_ok_and(|t| {
        t.split_whitespace()
            .next()
            .is_some_and(|nr| EXECS.contains(&nr))
    })
}

/// The start of every store key of file `id` (see `Image::key`).
fn key_prefix(id: FileId) -> String {
    format!("{}-{}-", id.dev, id.ino)
}

impl ExecDir {
    /// Makes the host find ELF program `img` at guest path `name` (and, for a dynamic
    /// program, its interpreter where the host will look for it). Files are read only when
    /// their version is not stored yet, so a repeated exec costs a few stats.
    fn prepare_elf(
        &mut self,
        task: &Task,
        img: &Image,
        name: &[u8],
        dependent: Option<u32>,
    ) -> Result<(), Errno> {
        let key = img.key(task, "");
        let interp = match self.interps.get(&key) {
            Some(i) => i.clone(),
            None => {
                // The headers are near the start: read the rest only when they are not
                // (a whole busybox or python3 cost 1-5 ms on every run's first exec of it).
                let start = img.read_upto(task, ELF_HEAD_READ)?;
                let whole = match interp_range(&start) {
                    Err(_) if i64::try_from(start.len()).is_ok_and(|n| n < img.st.st_size) => {
                        img.read_all(task)?
                    }
                    _ => start,
                };
                let i = interp_range(&whole)?.map(|(off, len)| {
                    let s = &whole[off..off + len];
                    (
                        s.split(|&b| b == 0).next().unwrap_or(b"").to_vec(),
                        off,
                        len,
                    )
                });
                self.interps.insert(key.clone(), i.clone());
                i
            }
        };
        let Some((ipath, off, len)) = interp else {
            return self.link(task, img, name, &key, true, dependent, &|| {
                img.read_all(task)
            });
        };
        // Rooted, the interpreter is found at its own path; rewriting, at a relative name
        // patched into the program's copy.
        let iname = match self.mode {
            ExecMode::Rooted => ipath.clone(),
            ExecMode::Rewrite => {
                let n = relative_name(&ipath).ok_or(Errno::ENOEXEC)?;
                if n.len() >= len {
                    return Err(Errno::ENOEXEC);
                }
                n
            }
        };
        let icstr = CString::new(ipath).map_err(|_| Errno::ENOEXEC)?;
        let iimg = Image::open(task, AT_FDCWD, &icstr)
            .map_err(|e| if e == Errno::EACCES { e } else { Errno::ENOENT })?;
        let ikey = iimg.key(task, "");
        let linked = self.link(task, &iimg, &iname, &ikey, true, None, &|| {
            let bytes = iimg.read_all(task)?;
            // An interpreter that wants an interpreter is not loadable (Linux: ELIBBAD).
            match interp_range(&bytes)? {
                Some(_) => Err(Errno::ELIBBAD),
                None => Ok(bytes),
            }
        });
        iimg.close(task);
        linked?;
        if self.mode == ExecMode::Rooted {
            return self.link(task, img, name, &key, true, dependent, &|| {
                img.read_all(task)
            });
        }
        let pkey = img.key(task, "-i");
        self.link(task, img, name, &pkey, false, dependent, &|| {
            let mut patched = img.read_all(task)?;
            let slot = patched.get_mut(off..off + len).ok_or(Errno::ENOEXEC)?;
            slot.fill(0);
            slot[..iname.len()].copy_from_slice(&iname);
            Ok(patched)
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn prepare_script(
        &mut self,
        task: &Task,
        img: &Image,
        name: &[u8],
        head: &[u8],
        depth: usize,
        dependent: Option<u32>,
    ) -> Result<(), Errno> {
        if depth >= MAX_SCRIPT_DEPTH {
            return Err(Errno::ELOOP);
        }
        let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
        let line = &head[2..line_end];
        let line = line.trim_ascii();
        let (interp, arg) = match line.iter().position(|b| b.is_ascii_whitespace()) {
            Some(i) => (&line[..i], Some(line[i..].trim_ascii())),
            None => (line, None),
        };
        if interp.is_empty() {
            return Err(Errno::ENOEXEC);
        }
        let iname = match self.mode {
            ExecMode::Rooted => interp.to_vec(),
            ExecMode::Rewrite => relative_name(interp).ok_or(Errno::ENOEXEC)?,
        };
        let icstr = CString::new(interp).map_err(|_| Errno::ENOEXEC)?;
        let iimg = Image::open(task, AT_FDCWD, &icstr)?;
        let ihead = iimg.head(task);
        let ihead = ihead.as_slice();
        let r = if ihead.starts_with(b"\x7fELF") {
            self.prepare_elf(task, &iimg, &iname, None)
        } else if ihead.starts_with(b"#!") {
            self.prepare_script(task, &iimg, &iname, ihead, depth + 1, None)
        } else {
            Err(Errno::ENOEXEC)
        };
        iimg.close(task);
        r?;
        if self.mode == ExecMode::Rooted {
            // The host reads the `#!` line itself and finds the interpreter at its path.
            let key = img.key(task, "");
            return self.link(task, img, name, &key, true, dependent, &|| {
                img.read_all(task)
            });
        }
        let whole = img.read_all(task)?;
        let rest = &whole[line_end.min(whole.len())..];
        let mut copy = b"#!".to_vec();
        copy.extend_from_slice(
            self.path()
                .join(std::ffi::OsStr::from_bytes(&iname))
                .as_os_str()
                .as_bytes(),
        );
        if let Some(a) = arg.filter(|a| !a.is_empty()) {
            copy.push(b' ');
            copy.extend_from_slice(a);
        }
        copy.extend_from_slice(rest);
        if copy.len() > SHEBANG_MAX && copy[..SHEBANG_MAX].iter().all(|&b| b != b'\n') {
            return Err(Errno::ENOEXEC);
        }
        let key = img.key(task, &format!("-s{}", iname.len()));
        self.link(
            task,
            img,
            name,
            &key,
            false,
            dependent,
            &|| Ok(copy.clone()),
        )
    }
}

impl Drop for ExecDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.base);
    }
}

/// The store of exec copies kept across runs for `image`:
/// `$HOME/.cache/kbox/exec/<filesystem UUID>`. Host inode numbers are reused and an image
/// may be copied or rewritten, so the image file's identity is not used; the UUID in its
/// superblock names the filesystem, and copies in it are named by the guest file's inode,
/// generation, times and size, and checked against the file before use. None when the
/// image has no ext2/3/4 superblock or there is no exec-allowed directory; the run then
/// keeps its copies to itself.
fn persistent_store(image: &Path) -> Option<PathBuf> {
    let uuid = ext_uuid(image)?;
    let home = PathBuf::from(std::env::var_os("HOME")?);
    let stores = home.join(".cache/kbox/exec");
    prune_stores(&stores);
    let dir = stores.join(uuid);
    fs::create_dir_all(&dir).ok()?;
    // Marks the store as used (pruning goes by the directory's mtime).
    let _ = rustix::fs::utimensat(
        rustix::fs::CWD,
        &dir,
        &hostio::timestamps(rustix::fs::UTIME_NOW, rustix::fs::UTIME_NOW),
        rustix::fs::AtFlags::empty(),
    );
    let noexec = rustix::fs::statvfs(&dir)
        .map(|s| s.f_flag.contains(rustix::fs::StatVfsMountFlags::NOEXEC))
        .unwrap_or(true);
    (!noexec).then_some(dir)
}

/// The UUID of the ext2/3/4 filesystem in `image`, as 32 hex digits.
fn ext_uuid(image: &Path) -> Option<String> {
    use std::os::unix::fs::FileExt;
    const SUPERBLOCK: u64 = 1024;
    const MAGIC: usize = 0x38;
    const UUID: usize = 0x68;
    let file = fs::File::open(image).ok()?;
    let mut sb = [0u8; 0x78];
    file.read_exact_at(&mut sb, SUPERBLOCK).ok()?;
    if sb[MAGIC..MAGIC + 2] != [0x53, 0xef] {
        return None;
    }
    let uuid = &sb[UUID..UUID + 16];
    if uuid.iter().all(|&b| b == 0) {
        return None;
    }
    Some(uuid.iter().map(|b| format!("{b:02x}")).collect())
}

/// Removes stores of images not run for two weeks (images come and go; copies of their
/// programs should not pile up).
fn prune_stores(stores: &Path) {
    const UNUSED: std::time::Duration = std::time::Duration::from_secs(14 * 24 * 3600);
    let Ok(entries) = fs::read_dir(stores) else {
        return;
    };
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > UNUSED);
        if old {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// A directory on a filesystem that allows exec, private to this kbox: under
/// `~/.cache/kbox/run` first (the persistent store's filesystem, so rooted copies are hard
/// links), else under $TMPDIR, with the lock that says it is in use (held until kbox exits,
/// however it exits). Directories of kbox processes that no longer run are removed first:
/// a killed kbox cannot clean up after itself.
fn pick_base() -> std::io::Result<(PathBuf, fs::File)> {
    let mut candidates = Vec::new();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cache/kbox/run"));
    }
    candidates.push(std::env::temp_dir());
    for c in &candidates {
        remove_abandoned(c);
    }
    let mut last = std::io::Error::from(std::io::ErrorKind::NotFound);
    for c in candidates {
        if fs::create_dir_all(&c).is_err() {
            continue;
        }
        let noexec = rustix::fs::statvfs(&c)
            .map(|s| s.f_flag.contains(rustix::fs::StatVfsMountFlags::NOEXEC))
            .unwrap_or(true);
        if noexec {
            continue;
        }
        let dir = c.join(format!("kbox-run-{}-{}", std::process::id(), unique()));
        match fs::create_dir(&dir) {
            Ok(()) => {
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
                let lock = fs::File::create(dir.join(RUN_LOCK))?;
                rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)?;
                return Ok((dir, lock));
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A number that differs between runs that get the same pid.
fn unique() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()) ^ d.as_secs())
}

/// The file in a run directory that its kbox holds locked while it runs.
const RUN_LOCK: &str = "in-use.lock";

/// Removes `kbox-run-*` directories in `dir` whose kbox is gone: their lock can be taken
/// (the kernel dropped it when that kbox died). A directory still without a lock file is
/// being created, unless its pid (`kbox-run-PID-...`) no longer exists.
fn remove_abandoned(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("kbox-run-")) else {
            continue;
        };
        let abandoned = match fs::File::open(e.path().join(RUN_LOCK)) {
            Ok(lock) => {
                rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                    .is_ok()
            }
            Err(_) => rest
                .split('-')
                .next()
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()),
        };
        if abandoned {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// A file opened in the kernel library for exec: its FD, stat and first bytes.
struct Image {
    kfd: i32,
    st: GenericStat,
}

impl Image {
    fn open(task: &Task, dirfd: u64, path: &CStr) -> Result<Image, Errno> {
        let kfd = lkl(
            task,
            g::OPENAT,
            [dirfd, ptr(path.as_ptr()), O_CLOEXEC, 0, 0, 0],
        )?;
        let kfd = i32::try_from(kfd).map_err(|_| Errno::EMFILE)?;
        let checked = lkl_stat(task, kfd).and_then(|st| {
            if st.st_mode & S_IFMT != S_IFREG {
                return Err(Errno::EACCES);
            }
            lkl(
                task,
                g::FACCESSAT,
                [dirfd, ptr(path.as_ptr()), X_OK, 0, 0, 0],
            )?;
            Ok(st)
        });
        match checked {
            Ok(st) => Ok(Image { kfd, st }),
            Err(e) => {
                let _ = lkl(task, g::CLOSE, [fdv(kfd), 0, 0, 0, 0, 0]);
                Err(e)
            }
        }
    }

    fn id(&self) -> FileId {
        FileId {
            dev: self.st.st_dev,
            ino: self.st.st_ino,
        }
    }

    /// The name of this file version's copy: device, inode, the inode's generation (a
    /// reused inode number gets a new one on ext4), mtime, ctime and size.
    fn key(&self, task: &Task, tag: &str) -> String {
        let mut generation: u64 = 0;
        // FS_IOC_GETVERSION: filesystems without it (tmpfs) leave 0, and their files are
        // never kept across runs anyway.
        let _ = lkl(
            task,
            g::IOCTL,
            [
                fdv(self.kfd),
                FS_IOC_GETVERSION,
                ptr(&raw mut generation),
                0,
                0,
                0,
            ],
        );
        format!(
            "{}{}-{}.{}-{}.{}-{}{tag}",
            key_prefix(self.id()),
            generation & 0xffff_ffff,
            self.st.st_mtime,
            self.st.st_mtime_nsec,
            self.st.st_ctime,
            self.st.st_ctime_nsec,
            self.st.st_size
        )
    }

    /// Whether host file `stored` is an intact copy of this file: same size, same first and
    /// last bytes (a store entry reached through a reused name, a copied image or an
    /// interrupted write fails this).
    fn matches(&self, task: &Task, stored: &Path) -> bool {
        use std::os::unix::fs::FileExt;
        const SAMPLE: u64 = 4096;
        let Ok(file) = fs::File::open(stored) else {
            return false;
        };
        let size = u64::try_from(self.st.st_size).unwrap_or(0);
        if file.metadata().map(|m| m.len()).ok() != Some(size) {
            return false;
        }
        let tail = size.saturating_sub(SAMPLE);
        [0, tail].iter().all(|&at| {
            let len = usize::try_from(SAMPLE.min(size - at)).unwrap_or(0);
            let mut mine = vec![0u8; len];
            let mut theirs = vec![0u8; len];
            let read = lkl(
                task,
                g::PREAD64,
                [fdv(self.kfd), ptr(mine.as_mut_ptr()), len as u64, at, 0, 0],
            );
            read.is_ok_and(|n| usize::try_from(n) == Ok(len))
                && file.read_exact_at(&mut theirs, at).is_ok()
                && mine == theirs
        })
    }

    /// The first bytes (enough for an ELF magic or a `#!` line).
    fn head(&self, task: &Task) -> Vec<u8> {
        let mut head = vec![0u8; SHEBANG_MAX];
        let n = lkl(
            task,
            g::PREAD64,
            [
                fdv(self.kfd),
                ptr(head.as_mut_ptr()),
                SHEBANG_MAX as u64,
                0,
                0,
                0,
            ],
        );
        head.truncate(n.map_or(0, |n| usize::try_from(n).unwrap_or(0)));
        head
    }

    fn read_all(&self, task: &Task) -> Result<Vec<u8>, Errno> {
        self.read_upto(task, usize::MAX)
    }

    /// The file's first `limit` bytes (fewer if it is shorter).
    fn read_upto(&self, task: &Task, limit: usize) -> Result<Vec<u8>, Errno> {
        let size = usize::try_from(self.st.st_size)
            .map_err(|_| Errno::EFBIG)?
            .min(limit);
        let mut buf = vec![0u8; size];
        let mut done = 0;
        while done < size {
            let n = lkl(
                task,
                g::PREAD64,
                [
                    fdv(self.kfd),
                    ptr(buf[done..].as_mut_ptr()),
                    (size - done) as u64,
                    done as u64,
                    0,
                    0,
                ],
            )?;
            if n <= 0 {
                buf.truncate(done);
                break;
            }
            done += usize::try_from(n).unwrap_or(0);
        }
        Ok(buf)
    }

    fn close(self, task: &Task) {
        let _ = lkl(task, g::CLOSE, [fdv(self.kfd), 0, 0, 0, 0, 0]);
    }
}

/// The relative name a guest path gets under the exec root, if usable as is.
fn relative_name(path: &[u8]) -> Option<Vec<u8>> {
    let rel: &[u8] = {
        let mut p = path;
        while let Some(rest) = p.strip_prefix(b"/") {
            p = rest;
        }
        p
    };
    let ok =
        !rel.is_empty() && rel.split(|&b| b == b'/').all(|c| c != b"..") && !rel.ends_with(b"/");
    ok.then(|| rel.to_vec())
}

/// How much of a program is read to find its interpreter (its headers and PT_INTERP
/// string); more only when they lie further in.
const ELF_HEAD_READ: usize = 64 << 10;

/// The PT_INTERP string's file range in an ELF64 little-endian image, if it has one.
fn interp_range(elf: &[u8]) -> Result<Option<(usize, usize)>, Errno> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    // ELFCLASS64, little-endian: what the host arches run.
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err(Errno::ENOEXEC);
    }
    let phoff = usize::try_from(u64_at(0x20).ok_or(Errno::ENOEXEC)?).map_err(|_| Errno::ENOEXEC)?;
    let phentsize = usize::from(u16_at(0x36).ok_or(Errno::ENOEXEC)?);
    let phnum = usize::from(u16_at(0x38).ok_or(Errno::ENOEXEC)?);
    if phentsize < 56 {
        return Err(Errno::ENOEXEC);
    }
    // Program headers past the end of what was read: not an ELF the kernel loads (or, for
    // a prefix of the file, one to read whole).
    let table_end = phnum
        .checked_mul(phentsize)
        .and_then(|n| n.checked_add(phoff))
        .ok_or(Errno::ENOEXEC)?;
    if table_end > elf.len() {
        return Err(Errno::ENOEXEC);
    }
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(ph) == Some(PT_INTERP) {
            let off = usize::try_from(u64_at(ph + 8).ok_or(Errno::ENOEXEC)?)
                .map_err(|_| Errno::ENOEXEC)?;
            let len = usize::try_from(u64_at(ph + 0x20).ok_or(Errno::ENOEXEC)?)
                .map_err(|_| Errno::ENOEXEC)?;
            if off.checked_add(len).is_none_or(|end| end > elf.len()) || len < 2 {
                return Err(Errno::ENOEXEC);
            }
            return Ok(Some((off, len)));
        }
    }
    Ok(None)
}

/// A deferred write to guest memory, done once the tier has answered (see `after_reply`).
pub struct Restore {
    parent: u32,
    child: u32,
    /// (address, original bytes), put back in this order.
    undo: Vec<(u64, Vec<u8>)>,
}

impl Engine {
    /// execve/execveat: `path_addr` and `argv` are the guest's pointers (envp and flags
    /// pass to the host untouched).
    pub(super) fn execve(
        &mut self,
        guest: &dyn Guest,
        pid: u32,
        dirfd: u64,
        path_addr: u64,
        argv: u64,
    ) -> Reply {
        let r = match self.exec.mode() {
            ExecMode::Rooted => self.exec_rooted(guest, pid, dirfd, path_addr),
            ExecMode::Rewrite => self.exec_rewrite(guest, pid, dirfd, path_addr, argv),
        };
        match r {
            Ok(()) => Reply::Continue,
            Err(e) => Reply::Fail(e),
        }
    }

    /// Rooted exec: the host walks the guest's own path string inside kbox's root, where
    /// kbox has just put the program's copy; guest memory is only read.
    fn exec_rooted(
        &mut self,
        guest: &dyn Guest,
        pid: u32,
        dirfd: u64,
        path_addr: u64,
    ) -> Result<(), Errno> {
        // A directory FD's host file is a placeholder outside the root, from which the
        // host would resolve the path; glibc's fexecve falls back to /proc/self/fd/N on
        // ENOSYS, which is served like any path.
        if dirfd != AT_FDCWD && super::fd_arg(dirfd) != -100 {
            return Err(Errno::ENOSYS);
        }
        let path = guest.read_path(path_addr)?;
        if path.as_bytes().is_empty() {
            return Err(Errno::ENOENT);
        }
        let p = self.procs.get(pid).ok_or(Errno::ESRCH)?;
        let self_exe = matches!(
            path.as_bytes(),
            b"/proc/self/exe" | b"/proc/thread-self/exe"
        ) && !p.exe.as_bytes().is_empty();
        let kpath = if self_exe {
            p.exe.clone()
        } else {
            path.clone()
        };
        // What a relative path or a /proc path names depends on the calling process.
        let name = path.as_bytes();
        let dependent =
            (name.first() != Some(&b'/') || name.starts_with(b"/proc/")).then_some(guest.tid());
        let guest_path = match self.route(pid, AT_FDCWD, kpath)? {
            Route::Host(bind, rel) => {
                let host = self.bind_exec_path(bind, &rel)?;
                self.exec.link_host(name, &host, guest.tid())?;
                CString::new(self.binds_guest_path(bind, &rel)).map_err(|_| Errno::EINVAL)?
            }
            Route::Kernel(d, kp) => {
                let task = &self.procs.get(pid).ok_or(Errno::ESRCH)?.task;
                prepare_image(&mut self.exec, task, d, &kp, name, dependent)?;
                absolute(task, &kp)?
            }
        };
        self.exec_done(pid, guest_path)
    }

    /// What every exec that is about to happen changes in the engine: the task's name,
    /// close-on-exec FDs, /proc/self/exe.
    pub(super) fn exec_done(&mut self, pid: u32, guest_path: CString) -> Result<(), Errno> {
        let task = &self.procs.get(pid).ok_or(Errno::ESRCH)?.task;
        // The task's name, as /proc/self/status and ps show it, is the program's (comm is
        // 15 bytes at most, as Linux truncates it).
        let base = guest_path
            .as_bytes()
            .rsplit(|&b| b == b'/')
            .next()
            .unwrap_or(b"");
        let comm = CString::new(&base[..base.len().min(15)]).unwrap_or_default();
        let _ = lkl(
            task,
            g::PRCTL,
            [PR_SET_NAME, ptr(comm.as_ptr()), 0, 0, 0, 0],
        );
        self.close_on_exec(pid);
        let p = self.procs.get_mut(pid).ok_or(Errno::ESRCH)?;
        p.exe = guest_path;
        Ok(())
    }

    /// Rewrite exec (no chroot possible): the guest's path string is overwritten with the
    /// copy's name relative to the host cwd.
    fn exec_rewrite(
        &mut self,
        guest: &dyn Guest,
        pid: u32,
        dirfd: u64,
        path_addr: u64,
        argv: u64,
    ) -> Result<(), Errno> {
        let mut path = guest.read_path(path_addr)?;
        if path.as_bytes().is_empty() {
            return Err(Errno::ENOENT);
        }
        // The guest's buffer: the host name must fit in it (/proc/self/exe is replaced by
        // a path that may be longer).
        let buffer_len = path.as_bytes().len();
        let p = self.procs.get(pid).ok_or(Errno::ESRCH)?;
        if matches!(
            path.as_bytes(),
            b"/proc/self/exe" | b"/proc/thread-self/exe"
        ) && !p.exe.as_bytes().is_empty()
        {
            path = p.exe.clone();
        }
        let (dirfd, kpath, in_bind) = match self.route(pid, dirfd, path.clone())? {
            Route::Kernel(d, p) => (d, p, None),
            Route::Host(bind, rel) => (AT_FDCWD, path.clone(), Some((bind, rel))),
        };
        let name_source = if in_bind.is_some() { &path } else { &kpath };
        let name = match relative_name(name_source.as_bytes()) {
            Some(n) if n.len() <= buffer_len => n,
            _ => self.exec.generate(),
        };
        if name.len() > buffer_len {
            return Err(Errno::ENAMETOOLONG);
        }
        let tid = guest.tid();
        let guest_path = if let Some((bind, rel)) = in_bind {
            // A program in a bind is the host's file: the host runs it as it is.
            let host = self.bind_exec_path(bind, &rel)?;
            self.exec.link_host(&name, &host, tid)?;
            CString::new(self.binds_guest_path(bind, &rel)).map_err(|_| Errno::EINVAL)?
        } else {
            let task = &self.procs.get(pid).ok_or(Errno::ESRCH)?.task;
            prepare_image(&mut self.exec, task, dirfd, &kpath, &name, Some(tid))?;
            absolute(task, &kpath)?
        };
        // The relative name replaces the guest's path string for the host's execve.
        let mut undo = Vec::new();
        let mut original = vec![0u8; buffer_len + 1];
        hostio::force_read(tid, path_addr, &mut original)?;
        // argv[0] is often the very same string (execvp(argv[0], argv)): give the program
        // its own copy, below the caller's stack pointer, so its argv stays intact.
        if argv != 0 {
            let mut slot = [0u8; 8];
            guest.read(argv, &mut slot)?;
            let arg0 = u64::from_le_bytes(slot);
            let end = path_addr + original.len() as u64;
            if arg0 >= path_addr && arg0 < end {
                let copy_at = scratch_below_sp(tid, original.len())?;
                let offset = usize::try_from(arg0 - path_addr).unwrap_or(0);
                hostio::force_write(tid, copy_at, &original[offset..])?;
                hostio::force_write(tid, argv, &copy_at.to_le_bytes())?;
                undo.push((argv, slot.to_vec()));
            }
        }
        let mut with_nul = name.clone();
        with_nul.push(0);
        hostio::force_write(tid, path_addr, &with_nul)?;
        undo.push((path_addr, original));
        let parent = self.procs.get(pid).ok_or(Errno::ESRCH)?.parent;
        if hostio::same_vm(parent, pid) == Some(true) {
            // vfork/posix_spawn: the strings live in memory the parent shares until the
            // exec is done: put the parent's bytes back then.
            self.restore = Some(Restore {
                parent,
                child: pid,
                undo,
            });
        }
        self.exec_done(pid, guest_path)
    }

    /// The kernel side of close-on-exec: served FDs the host will close at this exec.
    fn close_on_exec(&mut self, pid: u32) {
        let Some(p) = self.procs.get(pid) else { return };
        let doomed: Vec<i32> = p
            .fds
            .iter()
            .map(|(g, _)| g.as_raw())
            .filter(|&fd| hostio::is_cloexec(pid, fd).unwrap_or(false))
            .collect();
        for fd in doomed {
            self.forget(pid, fd);
        }
    }

    /// Work that must wait until the guest has been answered.
    pub fn after_reply(&mut self) {
        let Some(r) = self.restore.take() else { return };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while hostio::same_vm(r.parent, r.child) == Some(true)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        for (addr, bytes) in r.undo.iter().rev() {
            let _ = hostio::force_write(r.parent, *addr, bytes);
        }
    }

    pub(super) fn exit_group(&mut self, pid: u32) -> Reply {
        self.procs.exit(pid, &mut self.shadows);
        Reply::Continue
    }
}

/// A 16-byte aligned guest address with `len` free bytes well below the calling thread's
/// stack pointer (past the 128-byte red zone): memory nothing live uses while the thread
/// waits in execve. The stack pointer comes from /proc/TID/syscall.
fn scratch_below_sp(tid: u32, len: usize) -> Result<u64, Errno> {
    // The file says "running" until the thread has gone to sleep in its notified execve,
    // which it may not have yet when kbox gets the notification (the supervisor is woken
    // first): one exec in a few dozen on an arm64 6.1 kernel under emulation failed with
    // EFAULT. Ask again until it gives the registers.
    let path = format!("/proc/{tid}/syscall");
    let sp = (0..10_000)
        .find_map(|_| {
            let sp = std::fs::read_to_string(&path).ok().and_then(|text| {
                let sp = text.split_whitespace().nth(7)?;
                u64::from_str_radix(sp.trim_start_matches("0x"), 16).ok()
            });
            if sp.is_none() {
                std::thread::yield_now();
            }
            sp
        })
        .ok_or(Errno::EFAULT)?;
    Ok(sp.checked_sub(1024 + len as u64).ok_or(Errno::EFAULT)? & !15)
}

/// Opens the image's program `path` and puts its host copy where the host will look for
/// `name`.
fn prepare_image(
    exec: &mut ExecDir,
    task: &Task,
    dirfd: u64,
    path: &CStr,
    name: &[u8],
    dependent: Option<u32>,
) -> Result<(), Errno> {
    let img = Image::open(task, dirfd, path)?;
    let head = img.head(task);
    let head = head.as_slice();
    let prepared = if head.starts_with(b"\x7fELF") {
        exec.prepare_elf(task, &img, name, dependent)
    } else if head.starts_with(b"#!") {
        exec.prepare_script(task, &img, name, head, 0, dependent)
    } else {
        Err(Errno::ENOEXEC)
    };
    img.close(task);
    prepared
}

/// `path` made absolute against the task's cwd (for /proc/self/exe).
fn absolute(task: &Task, path: &CStr) -> Result<CString, Errno> {
    if path.to_bytes().first() == Some(&b'/') {
        return Ok(path.to_owned());
    }
    let mut buf = [0u8; 4096];
    let n = lkl(
        task,
        g::GETCWD,
        [ptr(buf.as_mut_ptr()), buf.len() as u64, 0, 0, 0, 0],
    )?;
    let cwd = &buf[..usize::try_from(n).unwrap_or(1).saturating_sub(1)];
    let mut out = cwd.to_vec();
    if out.last() != Some(&b'/') {
        out.push(b'/');
    }
    out.extend_from_slice(path.to_bytes());
    CString::new(out).map_err(|_| Errno::EINVAL)
}

#[cfg(test)]
mod tests {
    use super::{Errno, PT_INTERP, interp_range};

    /// An ELF64 little-endian header with `phnum` program headers at 64, the last a
    /// PT_INTERP naming `interp`, placed at `at`.
    fn elf(phnum: u16, interp: &[u8], at: usize) -> Vec<u8> {
        let mut e = vec![0u8; at + interp.len()];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2;
        e[5] = 1;
        e[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&phnum.to_le_bytes());
        let last = 64 + 56 * (usize::from(phnum) - 1);
        e[last..last + 4].copy_from_slice(&PT_INTERP.to_le_bytes());
        e[last + 8..last + 16].copy_from_slice(&(at as u64).to_le_bytes());
        e[last + 0x20..last + 0x28].copy_from_slice(&(interp.len() as u64).to_le_bytes());
        e[at..].copy_from_slice(interp);
        e
    }

    #[test]
    fn the_interpreter_is_found_and_a_short_prefix_asks_for_more() {
        let whole = elf(4, b"/lib/ld.so\0", 100_000);
        assert_eq!(interp_range(&whole), Ok(Some((100_000, 11))));
        // The headers are in the prefix but the string is not: read more.
        assert_eq!(interp_range(&whole[..65_536]), Err(Errno::ENOEXEC));
        // A prefix that cuts the program headers must not pass for a static program.
        assert_eq!(interp_range(&whole[..100]), Err(Errno::ENOEXEC));
        // Headers that run past the file are refused, as the kernel refuses them.
        let mut bad = elf(2, b"/x\0", 200);
        bad[0x38..0x3a].copy_from_slice(&9u16.to_le_bytes());
        assert_eq!(interp_range(&bad), Err(Errno::ENOEXEC));
    }
}
