//! Guest processes and their kernel tasks. Each guest process (thread group) has its own task
//! in the kernel library, forked from its parent's task at the moment the parent called
//! fork/clone, so FD tables, cwd, umask and credentials follow Linux's fork semantics.

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use kbox_core::fd::{FdEntry, FdKind, FdTable, GuestFd, KernelFd};
use kbox_core::shadow::FileId;
use kbox_core::sysno::generic as g;
use kbox_lkl::{Errno, PID_MAX, PidWish, Task, TaskKind};

use super::hostio;
use super::proc_files::ProcFiles;
use super::shadow::{Shadows, Writable};

/// One guest process as the engine knows it.
pub struct Proc {
    pub task: Task,
    /// What serves each guest FD the kernel library holds (kind, close-on-exec); the kernel
    /// FD number always equals the guest's.
    pub fds: Box<FdTable>,
    /// Host copies of writable opens, by guest FD.
    pub writable: HashMap<i32, Arc<Writable>>,
    /// Served sockets, by guest FD: kbox's end of the host socketpair the guest holds the
    /// other end of (shared by dup and fork, as the socket is).
    pub sockets: HashMap<i32, Arc<super::sockets::SockEnd>>,
    pub pidfd: Option<OwnedFd>,
    /// The cwd, when it is inside a `-b` bind (the kernel task's cwd is then stale).
    pub cwd_bind: Option<Vec<u8>>,
    /// Directory FDs opened in a bind, with their guest paths (for `*at` and fchdir).
    pub bind_fds: HashMap<i32, Vec<u8>>,
    /// The host pid of the parent (when the process appeared).
    pub parent: u32,
    /// The guest path of the program running, for /proc/self/exe.
    pub exe: CString,
    /// Its /proc files kbox reads often (children, thread count).
    pub proc_files: ProcFiles,
}

struct Forked {
    task: Task,
    fds: Box<FdTable>,
    writable: HashMap<i32, Arc<Writable>>,
    sockets: HashMap<i32, Arc<super::sockets::SockEnd>>,
    cwd_bind: Option<Vec<u8>>,
    bind_fds: HashMap<i32, Vec<u8>>,
    exe: CString,
}

fn empty_table() -> Box<FdTable> {
    let b = Box::<FdTable>::new_zeroed();
    // SAFETY: FdTable's all-zero bit pattern is its empty value (FdTable::new documents it and
    // the core's tests check it), and new_zeroed gives zeroed memory: a valid table. The
    // allocation is fresh zero pages that stay untouched until used.
    unsafe { b.assume_init() }
}

/// The child's table after fork: the parent's open entries, inserted one by one so only the
/// pages they live on are touched (a whole-table copy would fault in a megabyte per fork).
fn copy_table(src: &FdTable) -> Box<FdTable> {
    let mut t = empty_table();
    let _ = t.set_limit(src.limit());
    for (fd, entry) in src.iter() {
        let _ = t.insert_at(fd, entry);
    }
    t
}

pub struct Procs {
    /// The image root's task; None once kbox is shutting down.
    root: Option<Task>,
    procs: HashMap<u32, Proc>,
    /// Host thread id to thread group id.
    tids: HashMap<u32, u32>,
    /// For children a process forked (fork runs on the host, unnotified) and that have not
    /// made a call yet: the parent's state as it was before the parent changed it, by
    /// child pid.
    snapshots: HashMap<u32, Forked>,
    /// kbox's init of the guest's PID namespace, if any: a parent, never a guest process.
    init: Option<u32>,
    /// Writable shadows whose last guest FD kbox knows of was closed: the process may have
    /// passed the FD to another (SCM_RIGHTS), which writes through it where kbox cannot
    /// see. Each keeps a kernel FD of its file in the root task, so what is written is
    /// still written back (`sync_file`, sync, exit).
    kept: KeptShadows,
    /// No guest process can fork behind kbox's back (the trap tier refuses process
    /// creation), so there are never unmet children to snapshot for.
    no_forks: bool,
}

#[derive(Default)]
struct KeptShadows {
    /// Each with its file open in the root task.
    by_file: HashMap<FileId, (Arc<Writable>, i32)>,
    /// Their order of arrival: the oldest is written back and dropped beyond `MAX_KEPT`.
    order: VecDeque<FileId>,
}

impl KeptShadows {
    /// Keeps `w`, guest FD `fd` of `task`, which is being closed for the last time (see
    /// `Procs::keep_if_passed`).
    fn keep(
        &mut self,
        root: &Task,
        task: &Task,
        fd: i32,
        w: &Arc<Writable>,
        shadows: &mut Shadows,
    ) {
        if self.by_file.contains_key(&w.id) {
            return;
        }
        let Ok(kfd) = take_kernel_fd(root, task, fd) else {
            return;
        };
        self.by_file.insert(w.id, (Arc::clone(w), kfd));
        self.order.push_back(w.id);
        while self.order.len() > MAX_KEPT {
            if let Some(old) = self.order.front().copied() {
                self.release(root, old, false, shadows);
            }
        }
    }

    /// Writes kept shadow `id` back one last time (`thorough`: see `Writable::write_back`)
    /// and closes its kernel FD.
    fn release(&mut self, root: &Task, id: FileId, thorough: bool, shadows: &mut Shadows) {
        self.order.retain(|&other| other != id);
        let Some((w, kfd)) = self.by_file.remove(&id) else {
            return;
        };
        let _ = shadows.write_back(&w, root, kfd, thorough);
        let _ = root.syscall(
            g::CLOSE,
            [usize::try_from(kfd).unwrap_or(usize::MAX), 0, 0, 0, 0, 0],
        );
    }

    fn release_all(&mut self, root: &Task, shadows: &mut Shadows) {
        let ids: Vec<FileId> = self.by_file.keys().copied().collect();
        for id in ids {
            self.release(root, id, true, shadows);
        }
    }

    /// Writes back what was written through kept shadows (of file `id`, or of all).
    fn sync(&self, root: &Task, id: Option<FileId>, shadows: &mut Shadows) {
        for (w, kfd) in self.by_file.values() {
            if id.is_none_or(|id| id == w.id) {
                let _ = shadows.write_back(w, root, *kfd, id.is_none());
            }
        }
    }
}

/// Writable shadows kept after their last close, at most (each pins its host copy).
const MAX_KEPT: usize = 64;

impl Procs {
    pub fn new(root: Task) -> Procs {
        Procs {
            init: None,
            root: Some(root),
            procs: HashMap::new(),
            tids: HashMap::new(),
            snapshots: HashMap::new(),
            kept: KeptShadows::default(),
            no_forks: false,
        }
    }

    /// See `no_forks`.
    pub fn set_no_forks(&mut self) {
        self.no_forks = true;
    }

    pub fn get(&self, pid: u32) -> Option<&Proc> {
        self.procs.get(&pid)
    }

    /// kbox's init of the guest's PID namespace (see `Engine::set_init`).
    pub fn set_init(&mut self, pid: u32) {
        self.init = Some(pid);
    }

    pub fn get_mut(&mut self, pid: u32) -> Option<&mut Proc> {
        self.procs.get_mut(&pid)
    }

    /// The process of host thread `tid`, creating its state the first time it is seen.
    ///
    /// fork, vfork and clone run on the host without a notification (a notified fork could
    /// be interrupted into EINTR by a signal before kbox received it). A new process takes
    /// its parent's kernel state: a snapshot if the parent changed that state since
    /// (`before_change`), else the parent's state now; FDs the parent opened after the fork
    /// are then dropped by comparing the two processes' FD tables (kcmp).
    /// `slow` is called before any work beyond a lookup (a new thread or process).
    pub fn attach(&mut self, tid: u32, shadows: &mut Shadows, slow: &dyn Fn()) -> Option<u32> {
        if let Some(&pid) = self.tids.get(&tid) {
            return Some(pid);
        }
        slow();
        let status = hostio::thread_status(tid)?;
        let (tgid, ppid) = (status.tgid, status.ppid);
        // The process's pid as the guest knows it: the leader's own, read with the rest.
        let guest_pid = if tid == tgid {
            status.ns_tid
        } else {
            super::pidview::guest_pid(tgid)
        };
        if self.procs.contains_key(&tgid) {
            self.tids.insert(tid, tgid);
            return Some(tgid);
        }
        self.sweep(shadows);
        // A parent that has made no call yet (a subshell that only forked) is met first,
        // so that its child inherits from it and not from the image root.
        if !self.procs.contains_key(&ppid)
            && !self.snapshots.contains_key(&tgid)
            && Some(ppid) != self.init
            && is_guest(ppid)
        {
            let _ = self.attach(ppid, shadows, slow);
        }
        let forked = match self.snapshots.remove(&tgid) {
            Some(f) => Some(f),
            None => self
                .procs
                .get(&ppid)
                .and_then(|p| snapshot(p, guest_pid).ok()),
        };
        let proc = match forked {
            Some(f) => {
                let mut proc = Proc {
                    task: f.task,
                    fds: f.fds,
                    writable: f.writable,
                    sockets: f.sockets,
                    cwd_bind: f.cwd_bind,
                    bind_fds: f.bind_fds,
                    pidfd: hostio::pidfd_open(tgid),
                    parent: ppid,
                    exe: f.exe,
                    proc_files: ProcFiles::default(),
                };
                let (kept, root) = (&mut self.kept, self.root.as_ref());
                reconcile(&mut proc, tgid, ppid, |task, fd, w| {
                    // The parent's last FD of that open closed before the child was met:
                    // a copy the child got passed may still write to it.
                    if let Some(root) = root
                        && Arc::strong_count(&w) == 1
                    {
                        kept.keep(root, task, fd, &w, shadows);
                    }
                });
                proc
            }
            None => {
                // A process whose parent kbox does not know: the first command (or one
                // reparented after its parent died without kbox seeing it fork). It starts
                // from the image root's state.
                let task = fork_task(self.root.as_ref()?, guest_pid).ok()?;
                Proc {
                    task,
                    fds: empty_table(),
                    writable: HashMap::new(),
                    sockets: HashMap::new(),
                    cwd_bind: None,
                    bind_fds: HashMap::new(),
                    pidfd: hostio::pidfd_open(tgid),
                    parent: ppid,
                    exe: CString::default(),
                    proc_files: ProcFiles::default(),
                }
            }
        };
        self.procs.insert(tgid, proc);
        self.tids.insert(tid, tgid);
        Some(tgid)
    }

    /// Process `pid` (thread `tid`) is about to change kernel state its children inherit
    /// (close an FD, cd, umask, credentials, exec, exit): children it forked that kbox has
    /// not met yet get a snapshot of the state they were forked with (after `slow` is
    /// called: a snapshot forks a kernel task).
    /// Process `parent` (known by a thread `tid` of it) has just forked `child`, which has
    /// made no call yet: what it inherits is taken now (an in-process tier, which performs
    /// the fork, says so at once instead of kbox finding out later).
    pub fn record_fork(&mut self, tid: u32, child: u32, shadows: &mut Shadows) {
        let Some(parent) = self.attach(tid, shadows, &|| {}) else {
            return;
        };
        if self.procs.contains_key(&child) || self.snapshots.contains_key(&child) {
            return;
        }
        if let Some(p) = self.procs.get(&parent)
            && let Ok(f) = snapshot(p, super::pidview::guest_pid(child))
        {
            self.snapshots.insert(child, f);
        }
    }

    pub fn before_change(&mut self, pid: u32, slow: &dyn Fn()) {
        if self.no_forks {
            return;
        }
        let Some(kids) = self.procs.get_mut(&pid).map(|p| p.proc_files.children(pid)) else {
            return;
        };
        for kid in kids {
            if self.procs.contains_key(&kid) || self.snapshots.contains_key(&kid) {
                continue;
            }
            slow();
            if let Some(p) = self.procs.get(&pid)
                && let Ok(f) = snapshot(p, super::pidview::guest_pid(kid))
            {
                self.snapshots.insert(kid, f);
            }
        }
    }

    /// Thread `tid` ends its process (exit_group) before kbox has met the process (a fork
    /// that only exits): true when that needs nothing of kbox, which then spares making the
    /// process a kernel task only to end it. It does not when the process has children
    /// kbox has not met either: they inherit its state, so it is met (and they get
    /// snapshots) as usual, nor when it has a snapshot (see below).
    pub fn end_unmet(&mut self, tid: u32) -> bool {
        if self.tids.contains_key(&tid) {
            return false;
        }
        // A thread alone in its group is the group (a stat, where the group's id costs a
        // read of the thread's status).
        let tgid = if hostio::thread_count(tid) == Some(1) {
            tid
        } else {
            match tgid_of(tid) {
                Some(tgid) => tgid,
                None => return false,
            }
        };
        // A snapshot holds the writable shadows the process inherited: ending it unmet
        // would drop them unwritten when the parent has closed its own copies.
        if self.procs.contains_key(&tgid)
            || self.snapshots.contains_key(&tgid)
            || !ProcFiles::default().children(tgid).is_empty()
        {
            return false;
        }
        true
    }

    /// The process called exit_group: write its files back and forget it.
    pub fn exit(&mut self, pid: u32, shadows: &mut Shadows) {
        if let Some(p) = self.procs.get_mut(&pid) {
            let writable = std::mem::take(&mut p.writable);
            for (fd, w) in writable {
                if let Some(p) = self.procs.get(&pid) {
                    let _ = shadows.write_back(&w, &p.task, fd, true);
                }
                self.keep_if_passed(pid, fd, &w, shadows);
            }
        }
        if let Some(p) = self.procs.remove(&pid) {
            finish(p, shadows);
        }
        self.tids.retain(|_, tgid| *tgid != pid);
    }

    /// Forgets processes that died without exit_group (killed by a signal).
    fn sweep(&mut self, shadows: &mut Shadows) {
        let dead: Vec<u32> = self
            .procs
            .iter()
            .filter(|(_, p)| p.pidfd.as_ref().is_some_and(hostio::exited))
            .map(|(&pid, _)| pid)
            .collect();
        for pid in dead {
            self.exit(pid, shadows);
        }
        // Snapshots for children that died before their first call.
        self.snapshots
            .retain(|&kid, _| std::path::Path::new(&format!("/proc/{kid}")).exists());
    }

    pub fn flush_all(&mut self, shadows: &mut Shadows) {
        for p in self.procs.values() {
            flush(p, shadows);
        }
        if let Some(root) = self.root.as_ref() {
            self.kept.sync(root, None, shadows);
        }
    }

    /// Forgets every process (writing their files back) and the root task: afterwards no
    /// task of the engine holds the image.
    pub fn clear(&mut self, shadows: &mut Shadows) {
        let pids: Vec<u32> = self.procs.keys().copied().collect();
        for pid in pids {
            self.exit(pid, shadows);
        }
        self.release_all_kept(shadows);
        self.snapshots.clear();
        self.root = None;
    }

    /// Writes back every writable shadow of file `id`, in whichever process holds it, so a
    /// new open or stat of the file sees what was written through it.
    pub fn sync_file(&self, id: FileId, shadows: &mut Shadows) {
        for p in self.procs.values() {
            for (&fd, w) in &p.writable {
                if w.id == id {
                    let _ = shadows.write_back(w, &p.task, fd, false);
                }
            }
        }
        if let Some(root) = self.root.as_ref() {
            self.kept.sync(root, Some(id), shadows);
        }
    }

    /// Whether any writable shadow is held or kept (most calls can skip `sync_file`).
    pub fn any_writable(&self) -> bool {
        !self.kept.by_file.is_empty() || self.procs.values().any(|p| !p.writable.is_empty())
    }

    /// Process `pid` is closing guest FD `fd`, writable shadow `w` (already written back,
    /// and no longer in its table). When no other guest FD kbox knows of shares `w`, the
    /// FD may still live on in a process it was passed to (SCM_RIGHTS, over any unix
    /// socket, the host's socketpairs included, which kbox does not see): `w` is kept, with
    /// a kernel FD of its file (see `kept`).
    pub fn keep_if_passed(&mut self, pid: u32, fd: i32, w: &Arc<Writable>, shadows: &mut Shadows) {
        let Procs {
            procs, kept, root, ..
        } = self;
        let (Some(p), Some(root)) = (procs.get(&pid), root.as_ref()) else {
            return;
        };
        if Arc::strong_count(w) > 1 {
            return;
        }
        kept.keep(root, &p.task, fd, w, shadows);
    }

    /// File `id` lost a name: a kept shadow of it is written back and let go (kbox must
    /// not keep the inode alive).
    pub fn release_kept(&mut self, id: FileId, shadows: &mut Shadows) {
        if let Some(root) = self.root.as_ref() {
            self.kept.release(root, id, false, shadows);
        }
    }

    /// Releases every kept shadow (before an unmount, and at exit).
    pub fn release_all_kept(&mut self, shadows: &mut Shadows) {
        if let Some(root) = self.root.as_ref() {
            self.kept.release_all(root, shadows);
        }
    }

    /// The host pid of the guest process known to the guest as `pid` (its task's pid).
    pub fn by_guest_pid(&self, pid: u32) -> Option<u32> {
        use kbox_lkl::sys::Syscalls;
        self.procs
            .iter()
            .find(|(_, p)| p.task.getpid().ok().and_then(|v| u32::try_from(v).ok()) == Some(pid))
            .map(|(&host, _)| host)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs.keys().copied().collect()
    }

    /// Every guest process, by host pid.
    pub fn iter(&self) -> impl Iterator<Item = (&u32, &Proc)> {
        self.procs.iter()
    }

    /// The image root's task, until shutdown.
    pub fn root(&self) -> Option<&Task> {
        self.root.as_ref()
    }
}

/// The thread group (process) host thread `tid` belongs to.
pub fn tgid_of(tid: u32) -> Option<u32> {
    hostio::thread_ids(tid).map(|(tgid, _)| tgid)
}

/// Every host process that descends from kbox: the guest tree, wherever it forked to.
pub fn descendants() -> Vec<u32> {
    processes(is_guest)
}

/// Host processes (thread groups) for which `keep` holds.
pub fn processes(keep: impl Fn(u32) -> bool) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| keep(p))
        .collect()
}

/// Whether host process `pid` descends from kbox (a guest), walking up parent pids.
pub fn is_guest(pid: u32) -> bool {
    let me = std::process::id();
    let mut at = pid;
    for _ in 0..64 {
        if at <= 1 {
            return false;
        }
        match hostio::thread_ids(at) {
            Some((_, parent)) if parent == me => return true,
            Some((_, parent)) => at = parent,
            None => return false,
        }
    }
    false
}

/// Process `p`'s state, for a child of it known to the guest as `guest_pid`.
fn snapshot(p: &Proc, guest_pid: Option<u32>) -> Result<Forked, Errno> {
    Ok(Forked {
        task: fork_task(&p.task, guest_pid)?,
        fds: copy_table(&p.fds),
        writable: p.writable.clone(),
        sockets: p.sockets.clone(),
        cwd_bind: p.cwd_bind.clone(),
        bind_fds: p.bind_fds.clone(),
        exe: p.exe.clone(),
    })
}

/// Drops from a new process's inherited table the FDs it does not actually hold: those
/// its parent opened (or replaced) after the fork. An FD counts as held when the child's
/// host FD is the same file as the parent's (kcmp), or the parent has closed it since.
/// `dropped` sees each writable shadow dropped so, before its kernel FD closes.
fn reconcile(
    proc: &mut Proc,
    child: u32,
    parent: u32,
    mut dropped: impl FnMut(&Task, i32, Arc<Writable>),
) {
    let fds: Vec<i32> = proc.fds.iter().map(|(g, _)| g.as_raw()).collect();
    for fd in fds {
        let held = match hostio::same_file(child, parent, fd) {
            Some(same) => same,
            None => hostio::has_fd(child, fd),
        };
        if held {
            continue;
        }
        if let Ok(g) = GuestFd::from_raw(fd) {
            let _ = proc.fds.remove(g);
        }
        if let Some(w) = proc.writable.remove(&fd) {
            dropped(&proc.task, fd, w);
        }
        proc.sockets.remove(&fd);
        proc.bind_fds.remove(&fd);
        let _ = proc.task.syscall(
            kbox_core::sysno::generic::CLOSE,
            [usize::try_from(fd).unwrap_or(usize::MAX), 0, 0, 0, 0, 0],
        );
    }
}

/// The task of a host process, forked from `parent` with the pid the guest knows the
/// process by (`guest_pid`), so its /proc/self, /proc/PID and getpid agree. (Should the
/// kernel library have that pid in use, the task gets the next free one.)
fn fork_task(parent: &Task, guest_pid: Option<u32>) -> Result<Task, Errno> {
    let wish = guest_pid.map_or(PidWish::Any, PidWish::Exact);
    parent.fork_with_pid(TaskKind::Process, wish)
}

/// The next pid for a task kbox forks for its own work (socket pumps, waiters): they count
/// down from the top of the kernel library's range, out of the way of the guests' pids,
/// which count up (the image root's thread holds the top one).
static HELPER_PIDS: AtomicU32 = AtomicU32::new(PID_MAX - 2);

/// A task forked from `parent` for kbox's own work on its kernel FD `keep` (a socket it
/// pumps or waits on), with a pid out of the guests' way. It holds no other FD of the
/// parent's: a copy of the whole table would keep every other file open after the guest
/// closed it (a closed socket's port stayed bound).
pub fn fork_helper(parent: &Task, keep: i32) -> Result<Task, Errno> {
    let pid = HELPER_PIDS
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
            Some(if p <= PID_MAX / 2 { PID_MAX - 2 } else { p - 1 })
        })
        .unwrap_or(PID_MAX - 2);
    let task = parent.fork_with_pid(TaskKind::Process, PidWish::Exact(pid))?;
    let keep = u32::try_from(keep).map_err(|_| Errno::EBADF)?;
    let close = |first: u32, last: u32| {
        task.syscall(
            kbox_core::sysno::generic::CLOSE_RANGE,
            [first as usize, last as usize, 0, 0, 0, 0],
        )
    };
    if keep > 0 {
        close(0, keep - 1)?;
    }
    close(keep + 1, u32::MAX)?;
    Ok(task)
}

/// A duplicate, in task `to`, of kernel FD `fd` of task `from` (the same open file).
fn take_kernel_fd(to: &Task, from: &Task, fd: i32) -> Result<i32, Errno> {
    let call = |task: &Task, nr: u32, a: [usize; 3]| task.syscall(nr, [a[0], a[1], a[2], 0, 0, 0]);
    let pid = call(from, g::GETPID, [0; 3])?;
    let pidfd = call(to, g::PIDFD_OPEN, [pid, 0, 0])?;
    let got = call(
        to,
        g::PIDFD_GETFD,
        [pidfd, usize::try_from(fd).map_err(|_| Errno::EBADF)?, 0],
    );
    let _ = call(to, g::CLOSE, [pidfd, 0, 0]);
    i32::try_from(got?).map_err(|_| Errno::EBADF)
}

/// Writes back every writable shadow of `p`.
fn flush(p: &Proc, shadows: &mut Shadows) {
    for (&fd, w) in &p.writable {
        let _ = shadows.write_back(w, &p.task, fd, true);
    }
}

fn finish(p: Proc, shadows: &mut Shadows) {
    flush(&p, shadows);
    // Dropping the task closes its kernel FDs and ends it.
}

/// A table entry for guest FD `fd`, served by kernel FD `fd`.
pub fn entry(fd: i32, kind: FdKind, cloexec: bool) -> Result<(GuestFd, FdEntry), Errno> {
    let g = GuestFd::from_raw(fd).map_err(|_| Errno::EMFILE)?;
    let k = KernelFd::from_raw(fd).map_err(|_| Errno::EMFILE)?;
    Ok((
        g,
        FdEntry {
            kind,
            kernel: Some(k),
            host: None,
            cloexec,
        },
    ))
}
