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
use kbox_core::sysno::generic as g;
use kbox_lkl::{Errno, Task};

use super::files::{Route, lkl_stat};
use super::linux::{AT_FDCWD, O_CLOEXEC, PR_SET_NAME, S_IFMT, S_IFREG, X_OK};
use super::{Engine, Guest, Reply, fdv, hostio, lkl, ptr};

const PT_INTERP: u32 = 3;
/// Nested `#!` interpreters followed, as Linux's binfmt_script does (BINPRM_MAX_RECURSION).
const MAX_SCRIPT_DEPTH: usize = 4;
const SHEBANG_MAX: usize = 256;

/// kbox's private host directory: `root/` holds the exec copies under relative guest paths
/// (it is the guest processes' host cwd), `store/` the copies by file version, `empty/` the
/// directory placeholder.
pub struct ExecDir {
    base: PathBuf,
    root: PathBuf,
    store: PathBuf,
    empty: PathBuf,
    /// Relative name in `root` to the store key linked there.
    linked: HashMap<Vec<u8>, String>,
    /// Each program version's PT_INTERP (path, file offset, length), once read.
    interps: HashMap<String, Option<(Vec<u8>, usize, usize)>>,
    generated: u32,
}

impl ExecDir {
    /// `image` names the image the guest runs from: copies of its programs are kept across
    /// runs in a per-image store (see `persistent_store`).
    pub fn create(image: &Path) -> std::io::Result<ExecDir> {
        let base = pick_base()?;
        let dir = |name: &str| -> std::io::Result<PathBuf> {
            let p = base.join(name);
            fs::create_dir_all(&p)?;
            Ok(p)
        };
        let store = match persistent_store(image) {
            Some(s) => s,
            None => dir("store")?,
        };
        Ok(ExecDir {
            root: dir("root")?,
            store,
            empty: dir("empty")?,
            base,
            linked: HashMap::new(),
            interps: HashMap::new(),
            generated: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.root
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

    /// Where shadows of files over --shadow-limit live (unlinked files on disk).
    pub fn spill_dir(&self) -> &Path {
        &self.base
    }

    /// Makes `root/<name>` the file `content` (stored once per `key`).
    fn link(
        &mut self,
        name: &[u8],
        key: &str,
        content: &dyn Fn() -> Result<Vec<u8>, Errno>,
    ) -> Result<(), Errno> {
        if self.linked.get(name).is_some_and(|k| k == key) {
            return Ok(());
        }
        let stored = self.store.join(key);
        if !stored.exists() {
            // Another kbox may be storing the same copy: each writes its own temporary
            // file and renames it into place, which is atomic.
            let tmp = self.store.join(format!("{key}.tmp.{}", std::process::id()));
            fs::write(&tmp, content()?).map_err(|_| Errno::EIO)?;
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).map_err(|_| Errno::EIO)?;
            fs::rename(&tmp, &stored).map_err(|_| Errno::EIO)?;
        }
        let at = self.root.join(std::ffi::OsStr::from_bytes(name));
        if let Some(parent) = at.parent() {
            fs::create_dir_all(parent).map_err(|_| Errno::EIO)?;
        }
        let _ = fs::remove_file(&at);
        std::os::unix::fs::symlink(&stored, &at).map_err(|_| Errno::EIO)?;
        self.linked.insert(name.to_vec(), key.to_string());
        Ok(())
    }

    /// Makes `root/<name>` a symlink to host file `host` (programs in `-b` binds).
    fn link_host(&mut self, name: &[u8], host: &Path) -> Result<(), Errno> {
        let key = format!("host:{}", host.display());
        if self.linked.get(name).is_some_and(|k| *k == key) {
            return Ok(());
        }
        let at = self.root.join(std::ffi::OsStr::from_bytes(name));
        if let Some(parent) = at.parent() {
            fs::create_dir_all(parent).map_err(|_| Errno::EIO)?;
        }
        let _ = fs::remove_file(&at);
        std::os::unix::fs::symlink(host, &at).map_err(|_| Errno::EIO)?;
        self.linked.insert(name.to_vec(), key);
        Ok(())
    }

    /// A short generated name for paths that cannot be used relative to `root`.
    fn generate(&mut self) -> Vec<u8> {
        self.generated += 1;
        format!("_{}", self.generated).into_bytes()
    }
}

impl ExecDir {
    /// Prepares the host copy of the ELF program `path` and returns its relative name.
    /// Links the host copy of ELF program `img` at `name` (and its interpreter's copy at
    /// the interpreter's relative name). Files are read only when their version is not in
    /// the store yet, so a repeated exec costs a few stats.
    fn prepare_elf(&mut self, task: &Task, img: &Image, name: &[u8]) -> Result<(), Errno> {
        let key = img.key("");
        let interp = match self.interps.get(&key) {
            Some(i) => i.clone(),
            None => {
                let whole = img.read_all(task)?;
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
            return self.link(name, &key, &|| img.read_all(task));
        };
        let iname = relative_name(&ipath).ok_or(Errno::ENOEXEC)?;
        if iname.len() >= len {
            return Err(Errno::ENOEXEC);
        }
        let icstr = CString::new(ipath).map_err(|_| Errno::ENOEXEC)?;
        let iimg = Image::open(task, AT_FDCWD, &icstr)
            .map_err(|e| if e == Errno::EACCES { e } else { Errno::ENOENT })?;
        let linked = self.link(&iname, &iimg.key(""), &|| {
            let bytes = iimg.read_all(task)?;
            // An interpreter that wants an interpreter is not loadable (Linux: ELIBBAD).
            match interp_range(&bytes)? {
                Some(_) => Err(Errno::ELIBBAD),
                None => Ok(bytes),
            }
        });
        iimg.close(task);
        linked?;
        self.link(name, &img.key("-i"), &|| {
            let mut patched = img.read_all(task)?;
            let slot = patched.get_mut(off..off + len).ok_or(Errno::ENOEXEC)?;
            slot.fill(0);
            slot[..iname.len()].copy_from_slice(&iname);
            Ok(patched)
        })
    }

    fn prepare_script(
        &mut self,
        task: &Task,
        img: &Image,
        name: &[u8],
        head: &[u8],
        depth: usize,
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
        let iname = relative_name(interp).ok_or(Errno::ENOEXEC)?;
        let icstr = CString::new(interp).map_err(|_| Errno::ENOEXEC)?;
        let iimg = Image::open(task, AT_FDCWD, &icstr)?;
        let ihead = iimg.head(task);
        let ihead = ihead.as_slice();
        let r = if ihead.starts_with(b"\x7fELF") {
            self.prepare_elf(task, &iimg, &iname)
        } else if ihead.starts_with(b"#!") {
            self.prepare_script(task, &iimg, &iname, ihead, depth + 1)
        } else {
            Err(Errno::ENOEXEC)
        };
        iimg.close(task);
        r?;
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
        let key = img.key(&format!("-s{}", iname.len()));
        self.link(name, &key, &|| Ok(copy.clone()))
    }
}

impl Drop for ExecDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.base);
    }
}

/// The store of exec copies kept across runs for `image`: `$HOME/.cache/kbox/exec/<dev>-<ino>`
/// of the image file (copies are named by the guest file's inode, times and size, so a
/// changed file gets a new copy). None when there is no such exec-allowed directory; the
/// run then keeps its copies to itself.
fn persistent_store(image: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(image).ok()?;
    let home = PathBuf::from(std::env::var_os("HOME")?);
    let stores = home.join(".cache/kbox/exec");
    prune_stores(&stores);
    let dir = stores.join(format!("{}-{}", meta.dev(), meta.ino()));
    fs::create_dir_all(&dir).ok()?;
    // Marks the store as used (pruning goes by the directory's mtime).
    let _ = rustix::fs::utimensat(
        rustix::fs::CWD,
        &dir,
        &rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_NOW,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_NOW,
            },
        },
        rustix::fs::AtFlags::empty(),
    );
    let noexec = rustix::fs::statvfs(&dir)
        .map(|s| s.f_flag.contains(rustix::fs::StatVfsMountFlags::NOEXEC))
        .unwrap_or(true);
    (!noexec).then_some(dir)
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

/// A directory on a filesystem that allows exec, private to this kbox.
fn pick_base() -> std::io::Result<PathBuf> {
    let mut candidates = vec![std::env::temp_dir()];
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cache/kbox"));
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
        let dir = c.join(format!("kbox-run-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        match fs::create_dir(&dir) {
            Ok(()) => {
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
                return Ok(dir);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
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

    fn key(&self, tag: &str) -> String {
        format!(
            "{}-{}-{}.{}-{}.{}-{}{tag}",
            self.st.st_dev,
            self.st.st_ino,
            self.st.st_mtime,
            self.st.st_mtime_nsec,
            self.st.st_ctime,
            self.st.st_ctime_nsec,
            self.st.st_size
        )
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
        let size = usize::try_from(self.st.st_size).map_err(|_| Errno::EFBIG)?;
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
    for i in 0..phnum {
        let ph = phoff
            .checked_add(i.checked_mul(phentsize).ok_or(Errno::ENOEXEC)?)
            .ok_or(Errno::ENOEXEC)?;
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
        match self.exec_prepare(guest, pid, dirfd, path_addr, argv) {
            Ok(()) => Reply::Continue,
            Err(e) => Reply::Fail(e),
        }
    }

    fn exec_prepare(
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
        let path = kpath;
        let task = &self.procs.get(pid).ok_or(Errno::ESRCH)?.task;
        let (alias, guest_path) = if let Some((bind, rel)) = in_bind {
            // A program in a bind is the host's file: the host runs it as it is.
            let host = self.bind_exec_path(bind, &rel)?;
            self.exec.link_host(&name, &host)?;
            (
                None,
                CString::new(self.binds_guest_path(bind, &rel)).map_err(|_| Errno::EINVAL)?,
            )
        } else {
            let exec = &mut self.exec;
            let alias = prepare_image(exec, task, dirfd, &path, &name)?;
            (alias, absolute(task, &path)?)
        };
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
        // The relative name replaces the guest's path string for the host's execve.
        let tid = guest.tid();
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
        self.close_on_exec(pid);
        let p = self.procs.get_mut(pid).ok_or(Errno::ESRCH)?;
        if hostio::same_vm(p.parent, pid) == Some(true) {
            // vfork/posix_spawn: the strings live in memory the parent shares until the
            // exec is done: put the parent's bytes back then.
            self.restore = Some(Restore {
                parent: p.parent,
                child: pid,
                undo,
            });
        }
        p.aliases.clear();
        if let Some(a) = alias {
            p.aliases.push((
                CString::new(a).map_err(|_| Errno::EINVAL)?,
                guest_path.clone(),
            ));
        }
        p.exe = guest_path;
        Ok(())
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
    let text =
        std::fs::read_to_string(format!("/proc/{tid}/syscall")).map_err(|_| Errno::EFAULT)?;
    let sp = text
        .split_whitespace()
        .nth(7)
        .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        .ok_or(Errno::EFAULT)?;
    Ok(sp.checked_sub(1024 + len as u64).ok_or(Errno::EFAULT)? & !15)
}

/// Opens the image's program `path` and links its host copy at `name`; returns the alias
/// a script's interpreter will open it by.
fn prepare_image(
    exec: &mut ExecDir,
    task: &Task,
    dirfd: u64,
    path: &CStr,
    name: &[u8],
) -> Result<Option<Vec<u8>>, Errno> {
    let img = Image::open(task, dirfd, path)?;
    let head = img.head(task);
    let head = head.as_slice();
    let mut alias = None;
    let prepared = if head.starts_with(b"\x7fELF") {
        exec.prepare_elf(task, &img, name)
    } else if head.starts_with(b"#!") {
        alias = Some(name.to_vec());
        exec.prepare_script(task, &img, name, head, 0)
    } else {
        Err(Errno::ENOEXEC)
    };
    img.close(task);
    prepared?;
    Ok(alias)
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
