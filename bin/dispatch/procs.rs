//! Guest processes and their kernel tasks. Each guest process (thread group) has its own task
//! in the kernel library, forked from its parent's task at the moment the parent called
//! fork/clone, so FD tables, cwd, umask and credentials follow Linux's fork semantics.

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use kbox_core::fd::{FdEntry, FdKind, FdTable, GuestFd, KernelFd};
use kbox_lkl::{Errno, Task, TaskKind};

use super::hostio;
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
    /// Tasks forked at this process's clone calls, not yet claimed by the new process.
    pending: VecDeque<Forked>,
    /// The guest path of the program running, for /proc/self/exe.
    pub exe: CString,
    /// Set while this process shares its parent's memory (vfork, CLONE_VM) until it execs.
    pub vm_parent: Option<u32>,
    /// Relative names the kernel gave a script's interpreter (see exec.rs), to their guest
    /// paths.
    pub aliases: Vec<(CString, CString)>,
}

struct Forked {
    task: Task,
    fds: Box<FdTable>,
    writable: HashMap<i32, Arc<Writable>>,
    sockets: HashMap<i32, Arc<super::sockets::SockEnd>>,
    cwd_bind: Option<Vec<u8>>,
    bind_fds: HashMap<i32, Vec<u8>>,
    exe: CString,
    vm_shared: bool,
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
}

impl Procs {
    pub fn new(root: Task) -> Procs {
        Procs {
            root: Some(root),
            procs: HashMap::new(),
            tids: HashMap::new(),
        }
    }

    pub fn get(&self, pid: u32) -> Option<&Proc> {
        self.procs.get(&pid)
    }

    pub fn get_mut(&mut self, pid: u32) -> Option<&mut Proc> {
        self.procs.get_mut(&pid)
    }

    /// The process of host thread `tid`, creating its state the first time it is seen.
    pub fn attach(&mut self, tid: u32, shadows: &mut Shadows) -> Option<u32> {
        if let Some(&pid) = self.tids.get(&tid) {
            return Some(pid);
        }
        // pidfd_open succeeds only for a thread-group leader: a new process. When exactly
        // one process has a fork pending, it is the parent, and /proc need not be read
        // (that read is the costliest part of a fork).
        let leader_pidfd = hostio::pidfd_open(tid);
        let sole_forker = {
            let mut forkers = self.procs.iter().filter(|(_, p)| !p.pending.is_empty());
            match (forkers.next(), forkers.next()) {
                (Some((&pid, _)), None) => Some(pid),
                _ => None,
            }
        };
        let (tgid, ppid) = match (&leader_pidfd, sole_forker) {
            (Some(_), Some(parent)) => (tid, parent),
            _ => hostio::thread_ids(tid)?,
        };
        if self.procs.contains_key(&tgid) {
            self.tids.insert(tid, tgid);
            return Some(tgid);
        }
        self.sweep(shadows);
        let forked = self
            .procs
            .get_mut(&ppid)
            .and_then(|p| p.pending.pop_front());
        let proc = match forked {
            Some(f) => Proc {
                task: f.task,
                fds: f.fds,
                writable: f.writable,
                sockets: f.sockets,
                cwd_bind: f.cwd_bind,
                bind_fds: f.bind_fds,
                pidfd: leader_pidfd,
                pending: VecDeque::new(),
                exe: f.exe,
                vm_parent: f.vm_shared.then_some(ppid),
                aliases: Vec::new(),
            },
            None => {
                // A process kbox did not see being forked: the first command, or one whose
                // parent is not a guest. It starts from the image root's state.
                let parent = match self.procs.get(&ppid) {
                    Some(p) => &p.task,
                    None => self.root.as_ref()?,
                };
                let task = fork_task(parent).ok()?;
                Proc {
                    task,
                    fds: empty_table(),
                    writable: HashMap::new(),
                    sockets: HashMap::new(),
                    cwd_bind: None,
                    bind_fds: HashMap::new(),
                    pidfd: hostio::pidfd_open(tgid),
                    pending: VecDeque::new(),
                    exe: CString::default(),
                    vm_parent: None,
                    aliases: Vec::new(),
                }
            }
        };
        self.procs.insert(tgid, proc);
        self.tids.insert(tid, tgid);
        Some(tgid)
    }

    /// Records a fork of `pid` happening now: the child's task is forked before the host
    /// runs the clone, so the child starts from exactly this state.
    pub fn fork(&mut self, pid: u32, vm_shared: bool) -> Result<(), Errno> {
        let p = self.procs.get_mut(&pid).ok_or(Errno::ESRCH)?;
        let task = fork_task(&p.task)?;
        let forked = Forked {
            task,
            fds: copy_table(&p.fds),
            writable: p.writable.clone(),
            sockets: p.sockets.clone(),
            cwd_bind: p.cwd_bind.clone(),
            bind_fds: p.bind_fds.clone(),
            exe: p.exe.clone(),
            vm_shared,
        };
        p.pending.push_back(forked);
        Ok(())
    }

    /// The process called exit_group: write its files back and forget it.
    pub fn exit(&mut self, pid: u32, shadows: &mut Shadows) {
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
    }

    pub fn flush_all(&mut self, _shadows: &mut Shadows) {
        for p in self.procs.values() {
            flush(p);
        }
    }

    /// Forgets every process (writing their files back) and the root task: afterwards no
    /// task of the engine holds the image.
    pub fn clear(&mut self, shadows: &mut Shadows) {
        let pids: Vec<u32> = self.procs.keys().copied().collect();
        for pid in pids {
            self.exit(pid, shadows);
        }
        self.root = None;
    }

    /// Writes back every writable shadow of file `id`, in whichever process holds it, so a
    /// new open or stat of the file sees what was written through it.
    pub fn sync_file(&self, id: kbox_core::shadow::FileId) {
        for p in self.procs.values() {
            for (&fd, w) in &p.writable {
                if w.id == id {
                    let _ = w.write_back(&p.task, fd);
                }
            }
        }
    }

    /// Whether any process holds a writable shadow (most calls can skip `sync_file`).
    pub fn any_writable(&self) -> bool {
        self.procs.values().any(|p| !p.writable.is_empty())
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs.keys().copied().collect()
    }
}

fn fork_task(parent: &Task) -> Result<Task, Errno> {
    parent.fork(TaskKind::Process)
}

/// Writes back every writable shadow of `p`.
fn flush(p: &Proc) {
    for (&fd, w) in &p.writable {
        let _ = w.write_back(&p.task, fd);
    }
}

fn finish(p: Proc, _shadows: &mut Shadows) {
    flush(&p);
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
