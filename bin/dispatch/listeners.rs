//! A listening socket's readiness, as poll and epoll see it on the guest's FD.
//!
//! The guest's FD for a served socket is one end of a host socketpair; for a listening
//! socket nothing would ever make it readable, so event loops (asyncio, libuv, nginx-style
//! servers) would never learn of a connection. kbox keeps one byte (the token) in the guest
//! end's receive queue exactly while the kernel library's listener has a connection
//! waiting: a thread waits in the kernel library's poll and writes the token; every served
//! accept takes it out again once the queue is empty. Between those two, poll on the
//! guest's FD says POLLIN when Linux would.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use kbox_core::sysno::generic as g;
use kbox_lkl::{Errno, Task};

use super::{lkl, ptr};

const POLLIN: i16 = 1;
const POLLERR: i16 = 8;
const POLLHUP: i16 = 0x10;
const POLLNVAL: i16 = 0x20;

/// The token state of one listening socket.
pub struct Readiness {
    /// kbox's duplicate of the guest's end (to take the token back out).
    guest: OwnedFd,
    /// Whether the token is in the guest end's queue.
    token: Mutex<bool>,
    taken: Condvar,
}

/// Whether listening socket `kfd` (held by `task`) has a connection waiting, without
/// waiting (`wait` false) or until it has, or the socket is shut (`wait` true). None when
/// the socket is shut down or gone.
pub fn has_connection(task: &Task, kfd: i32, wait: bool) -> Option<bool> {
    let (n, revents) = poll_one(task, kfd, POLLIN, wait).ok()?;
    if revents & (POLLERR | POLLHUP | POLLNVAL) != 0 {
        return None;
    }
    Some(n > 0 && revents & POLLIN != 0)
}

/// The kernel library's ppoll of `kfd` for `events` on `task`, at once (`wait` false) or
/// until something happens: (its value, revents).
pub fn poll_one(task: &Task, kfd: i32, events: i16, wait: bool) -> Result<(i64, i16), Errno> {
    #[repr(C)]
    struct PollFd {
        fd: i32,
        events: i16,
        revents: i16,
    }
    let mut p = PollFd {
        fd: kfd,
        events,
        revents: 0,
    };
    let zero = [0i64; 2];
    let timeout = if wait { 0 } else { ptr(zero.as_ptr()) };
    let n = lkl(task, g::PPOLL, [ptr(&raw mut p), 1, timeout, 0, 0, 0])?;
    Ok((n, p.revents))
}

impl Readiness {
    pub fn new(guest_end: OwnedFd) -> Readiness {
        Readiness {
            guest: guest_end,
            token: Mutex::new(false),
            taken: Condvar::new(),
        }
    }

    /// The watcher: puts the token in (through kbox's end `pump_end`) whenever the
    /// listener has a connection waiting and the token is out; ends when the socket is shut
    /// down (at the guest's last close, or when kbox exits).
    pub fn watch(&self, task: &Task, kfd: i32, pump_end: &OwnedFd) {
        loop {
            {
                let mut token = self.token.lock().unwrap_or_else(PoisonError::into_inner);
                while *token {
                    // Woken by an accept taking the token, or now and then to see whether
                    // the socket was shut meanwhile (its task must not outlive kbox's run).
                    token = self
                        .taken
                        .wait_timeout(token, std::time::Duration::from_millis(200))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    if *token && has_connection(task, kfd, false).is_none() {
                        return;
                    }
                }
            }
            match has_connection(task, kfd, true) {
                Some(true) => {}
                Some(false) => continue,
                None => return,
            }
            let mut token = self.token.lock().unwrap_or_else(PoisonError::into_inner);
            if !*token {
                if rustix::net::send(pump_end, b"!", rustix::net::SendFlags::DONTWAIT).is_err() {
                    return;
                }
                *token = true;
            }
        }
    }

    /// After a served accept (or a non-blocking one that found nothing): takes the token
    /// out if the listener has no connection waiting any more, and lets the watcher wait
    /// for the next one.
    pub fn settle(&self, task: &Task, kfd: i32) {
        let mut token = self.token.lock().unwrap_or_else(PoisonError::into_inner);
        if !*token || has_connection(task, kfd, false) == Some(true) {
            return;
        }
        let mut byte = [0u8; 1];
        let _ = rustix::net::recv(&self.guest, &mut byte, rustix::net::RecvFlags::DONTWAIT);
        *token = false;
        self.taken.notify_all();
    }

    /// The guest's end, to see whether the guest made it non-blocking.
    pub fn guest_end(&self) -> std::os::fd::BorrowedFd<'_> {
        self.guest.as_fd()
    }
}

/// Starts watching listening socket `kfd` for the guest end `guest_end`: returns the
/// shared state; the watcher runs on `task` (a task of its own holding the socket).
pub fn start(
    task: Task,
    kfd: i32,
    guest_end: OwnedFd,
    pump_end: OwnedFd,
    spawn: impl FnOnce(Box<dyn FnOnce() + Send>) -> Result<(), Errno>,
) -> Result<Arc<Readiness>, Errno> {
    let r = Arc::new(Readiness::new(guest_end));
    let watched = Arc::clone(&r);
    spawn(Box::new(move || watched.watch(&task, kfd, &pump_end)))?;
    Ok(r)
}
