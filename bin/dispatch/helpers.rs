//! The kernel-library tasks that hold a served socket for one of kbox's jobs on it: a
//! connect or accept that waits, each pump, the control that shuts it down at exit.
//!
//! A unix socket's helper is forked from the socket's owner (`procs::fork_helper`): a path
//! it connects to is looked up in the owner's root and cwd, with the owner's credentials,
//! and a peer's credentials (SO_PEERCRED, SCM_CREDENTIALS) are the helper's. An internet
//! socket depends on none of that, so its helper is a kept task, forked once from a bare
//! task of kbox's own, that takes a duplicate of the socket (pidfd_getfd) and closes it
//! when the job ends. A fork and a task's end cost about 58 µs, and a connection through
//! passt took three of them; the duplicate is four calls.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use kbox_core::sysno::generic as g;
use kbox_lkl::{Errno, Task};

use super::{fdv, lkl};

/// Kept tasks waiting for a job; more than this are ended when their job ends.
const MAX_IDLE: usize = 32;

/// A task holding a served socket at `fd()` (its own FD number for it) for one job.
#[derive(Debug)]
pub struct Helper {
    task: Option<Task>,
    fd: i32,
    /// Where a kept task goes back to, its duplicate closed; None for a forked one, which
    /// ends with the job.
    back: Option<Kept>,
}

impl Helper {
    pub fn fd(&self) -> i32 {
        self.fd
    }
}

impl Deref for Helper {
    type Target = Task;

    fn deref(&self) -> &Task {
        // Taken only in drop.
        self.task.as_ref().expect("helper task present until drop")
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let (Some(task), Some(kept)) = (self.task.take(), self.back.take()) else {
            return;
        };
        // A task whose duplicate does not close is left to end: it would hold the socket.
        if lkl(&task, g::CLOSE, [fdv(self.fd), 0, 0, 0, 0, 0]).is_ok() {
            kept.put(task);
        }
    }
}

/// The kept tasks, shared by every clone.
#[derive(Clone, Debug, Default)]
pub struct Kept {
    idle: Arc<Mutex<Vec<Task>>>,
    /// A task of kbox's own with no FD, which kept tasks are forked from.
    bare: Arc<Mutex<Option<Task>>>,
    /// Set at shutdown: tasks coming back then end.
    closed: Arc<AtomicBool>,
}

impl Kept {
    /// Kept tasks are forked from a bare fork of `root` (the image root's task).
    pub fn set_origin(&self, root: &Task) -> Result<(), Errno> {
        let bare = super::procs::fork_bare(root)?;
        *self.bare.lock().unwrap_or_else(PoisonError::into_inner) = Some(bare);
        Ok(())
    }

    /// A helper for socket `kfd` of `owner`: a kept task when `internet` (the socket is
    /// AF_INET or AF_INET6) and kbox has an origin for them, a fork of `owner` otherwise.
    pub fn hold(&self, owner: &Task, kfd: i32, internet: bool) -> Result<Helper, Errno> {
        let forked = || {
            Ok(Helper {
                task: Some(super::procs::fork_helper(owner, kfd)?),
                fd: kfd,
                back: None,
            })
        };
        if !internet || self.closed.load(Ordering::Relaxed) {
            return forked();
        }
        let task = match self.take() {
            Some(t) => t,
            None => {
                let bare = self.bare.lock().unwrap_or_else(PoisonError::into_inner);
                match bare.as_ref() {
                    Some(bare) => super::procs::fork_bare(bare)?,
                    None => return forked(),
                }
            }
        };
        match super::procs::take_kernel_fd(&task, owner, kfd) {
            Ok(fd) => Ok(Helper {
                task: Some(task),
                fd,
                back: Some(self.clone()),
            }),
            Err(e) => {
                self.put(task);
                Err(e)
            }
        }
    }

    fn take(&self) -> Option<Task> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    fn put(&self, task: Task) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(task);
        }
    }

    /// Ends the kept tasks and the bare one's use (they hold the image root: the image
    /// must unmount). Helpers still at work end with their jobs.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(PoisonError::into_inner));
        drop(idle);
        drop(
            self.bare
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }
}
