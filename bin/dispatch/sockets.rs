//! Sockets served by the kernel library (unix, IPv4, IPv6 on its loopback).
//!
//! The guest holds one end of a host socketpair; kbox pumps bytes between the other end and
//! the kernel library's socket, in both directions, on two threads that each drive their own
//! task (forked from the socket's owner, so each holds the socket). The guest's reads,
//! writes, polls and sends therefore run natively; bind, listen, connect, accept and the
//! name and option calls are served by the kernel library. accept blocks, so it runs on a
//! thread of its own and answers the guest from there.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};

use kbox_core::fd::FdKind;
use kbox_core::sysno::generic as g;
use kbox_lkl::{Errno, Task};
use rustix::net::{AddressFamily, SocketFlags, SocketType};

use super::datagrams::{self, Datagrams};
use super::linux::{
    AF_INET, AF_INET6, AF_UNIX, SHUT_RDWR, SHUT_WR, SO_ACCEPTCONN, SO_TYPE, SOCK_CLOEXEC,
    SOCK_DGRAM, SOCK_NONBLOCK, SOCK_SEQPACKET, SOCK_STREAM, SOCK_TYPE_MASK, SOL_SOCKET,
};
use super::listeners::{self, Readiness};
use super::rights;
use super::workers::Workers;
use super::{Answer, Engine, Guest, Reply, fd_arg, fdv, hostio, interrupt, lkl, procs, ptr};

/// Largest socket address (sizeof(struct sockaddr_storage)).
const ADDR_MAX: usize = 128;
const ADDR_MAX_U32: u32 = 128;
const PUMP_CHUNK: usize = 256 << 10;

/// Connections kbox pumps, each with an idle task holding the kernel socket so that kbox can
/// shut it down (and so release both pump threads) when it exits.
#[derive(Default, Clone)]
pub struct Pumps {
    controls: Arc<Mutex<std::collections::HashMap<u64, (Task, i32)>>>,
    next: Arc<std::sync::atomic::AtomicU64>,
    workers: Workers,
}

impl Pumps {
    /// Shuts every kernel socket kbox pumps or accepts on down and waits (a little) for the
    /// jobs on them to end, so that no task of theirs keeps the image busy at unmount.
    pub fn shutdown_all(&self) {
        let controls =
            std::mem::take(&mut *self.controls.lock().unwrap_or_else(PoisonError::into_inner));
        for (task, fd) in controls.values() {
            let _ = lkl(task, g::SHUTDOWN, [fdv(*fd), SHUT_RDWR, 0, 0, 0, 0]);
        }
        drop(controls);
        // A job still blocked after the deadline is left behind: its task may keep the
        // image busy, and the unmount then reports it.
        let _ = self
            .workers
            .wait_finished(std::time::Instant::now() + std::time::Duration::from_secs(2));
    }

    /// Keeps a task holding socket `kfd` of `owner`, for `shutdown_all`, until `release`.
    fn control(&self, owner: &Task, kfd: i32) -> Result<u64, Errno> {
        let control = super::procs::fork_helper(owner, kfd)?;
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.controls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, (control, kfd));
        Ok(id)
    }

    fn release(&self, id: u64) {
        let removed = self
            .controls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        drop(removed);
    }

    fn spawn(&self, name: &'static str, f: impl FnOnce() + Send + 'static) -> Result<(), Errno> {
        self.workers.run(name, f)
    }

    /// Starts the two pump threads between host socket `host` and kernel socket `kfd`,
    /// which `owner` holds; `notes` for a datagram socket (datagrams.rs).
    fn start(
        &self,
        owner: &Task,
        kfd: i32,
        host: OwnedFd,
        notes: Option<Notes>,
    ) -> Result<(), Errno> {
        let to_kernel = super::procs::fork_helper(owner, kfd)?;
        let to_host = super::procs::fork_helper(owner, kfd)?;
        let host2 = host
            .try_clone()
            .map(hostio::lift)
            .map_err(|_| Errno::EMFILE)?;
        let id = self.control(owner, kfd)?;
        let datagrams = notes.is_some();
        self.spawn("kbox-sock-out", move || {
            pump_to_kernel(&to_kernel, kfd, &host, datagrams)
        })?;
        let me = self.clone();
        // The connection is over once the peer's data has all reached the guest.
        self.spawn("kbox-sock-in", move || {
            match notes {
                Some(notes) => datagrams::pump_to_host(&to_host, kfd, &host2, &notes),
                None => pump_to_host(&to_host, kfd, &host2),
            }
            me.release(id);
        })
    }
}

impl Pumps {
    /// After a blocking connect on `task` (a helper holding stream socket `kfd`, with
    /// `control` registered for it): starts the kernel-to-guest pump on a new task and
    /// thread, answers the guest, and pumps guest-to-kernel on the calling thread until
    /// the guest's end of stream.
    fn continue_connected(
        &self,
        task: Task,
        control: u64,
        kfd: i32,
        host: OwnedFd,
        answer: Box<dyn Answer>,
    ) {
        let started = super::procs::fork_helper(&task, kfd).and_then(|to_host| {
            let host2 = host
                .try_clone()
                .map(hostio::lift)
                .map_err(|_| Errno::EMFILE)?;
            let me = self.clone();
            self.spawn("kbox-sock-in", move || {
                pump_to_host(&to_host, kfd, &host2);
                me.release(control);
            })
        });
        if let Err(e) = started {
            self.release(control);
            return answer.fail(e);
        }
        answer.value(0);
        pump_to_kernel(&task, kfd, &host, false);
    }
}

/// Guest writes → kernel socket. At the guest's end of stream, the kernel side's write half
/// is shut, as the guest's shutdown or close would have done. A datagram the kernel refuses
/// (no destination on an unconnected socket, no one listening) is dropped, as a datagram
/// socket drops it; a stream ends at the first refusal.
fn pump_to_kernel(task: &Task, kfd: i32, host: &OwnedFd, datagrams: bool) {
    let mut buf = vec![0u8; PUMP_CHUNK];
    loop {
        let (n, fds) = match rights::recv_host(host, &mut buf) {
            Ok((0, _)) | Err(_) => break,
            Ok(got) => got,
        };
        let mut done = 0;
        if !fds.is_empty() {
            // The FDs go with the first byte, as the guest sent them.
            match rights::send_kernel(task, kfd, &buf[..n], fds) {
                Ok(w) if w > 0 => done = w,
                _ if datagrams => continue,
                // A socket that takes no FDs (TCP) gets the bytes alone, as Linux's would
                // refuse them.
                Err(Errno::EINVAL) | Err(Errno::EOPNOTSUPP) => {}
                _ => return finish_to_kernel(task, kfd, host),
            }
        }
        while done < n {
            let chunk = &buf[done..n];
            match lkl(
                task,
                g::WRITE,
                [fdv(kfd), ptr(chunk.as_ptr()), chunk.len() as u64, 0, 0, 0],
            ) {
                Ok(w) if w > 0 => done += usize::try_from(w).unwrap_or(0),
                _ if datagrams => break,
                _ => return finish_to_kernel(task, kfd, host),
            }
        }
    }
    finish_to_kernel(task, kfd, host);
}

fn finish_to_kernel(task: &Task, kfd: i32, host: &OwnedFd) {
    let _ = lkl(task, g::SHUTDOWN, [fdv(kfd), SHUT_WR, 0, 0, 0, 0]);
    let _ = rustix::net::shutdown(host, rustix::net::Shutdown::Read);
    // What the guest sent that can no longer go (the peer reset the connection) is dropped,
    // so a guest waiting for room to write wakes up and its next write fails (EPIPE), as a
    // write to a reset TCP connection does.
    let mut sink = vec![0u8; PUMP_CHUNK];
    while let Ok((n, _)) = rustix::net::recv(host, &mut sink, rustix::net::RecvFlags::DONTWAIT) {
        if n == 0 {
            break;
        }
    }
}

/// Kernel socket → guest reads. At the peer's end of stream, the guest reads end of file.
fn pump_to_host(task: &Task, kfd: i32, host: &OwnedFd) {
    let mut buf = vec![0u8; PUMP_CHUNK];
    loop {
        let (n, fds) = match rights::recv_kernel(task, kfd, &mut buf) {
            Ok((n, fds)) if n > 0 => (n, fds),
            _ => break,
        };
        let mut done = 0;
        if !fds.is_empty() {
            match rights::send_host(host, &buf[..n], &fds) {
                Ok(w) if w > 0 => done = w,
                _ => {
                    let _ = lkl(task, g::SHUTDOWN, [fdv(kfd), 0, 0, 0, 0, 0]);
                    return;
                }
            }
        }
        while done < n {
            match rustix::io::write(host, &buf[done..n]) {
                Ok(w) if w > 0 => done += w,
                _ => {
                    let _ = lkl(task, g::SHUTDOWN, [fdv(kfd), 0, 0, 0, 0, 0]);
                    return;
                }
            }
        }
    }
    let _ = rustix::net::shutdown(host, rustix::net::Shutdown::Write);
}

/// kbox's end of the host socketpair behind a served socket, shared by every guest FD (dup,
/// fork) of that socket.
pub struct SockEnd {
    /// kbox's end; for a stream socket, set once the guest's socket is linked to it.
    fd: std::sync::OnceLock<OwnedFd>,
    linking: Mutex<()>,
    /// Whether the pumps run already (a datagram socket may bind and then connect).
    pumping: std::sync::atomic::AtomicBool,
    /// For a datagram socket: what serving addresses takes (datagrams.rs).
    pub datagram: Option<Datagrams>,
    /// For a listening socket: its readiness on the guest's end (listeners.rs).
    listening: std::sync::OnceLock<Arc<Readiness>>,
}

type Notes = Arc<Mutex<std::collections::VecDeque<datagrams::Note>>>;

impl SockEnd {
    fn new(fd: Option<OwnedFd>, pumping: bool, datagram: Option<Datagrams>) -> SockEnd {
        let cell = std::sync::OnceLock::new();
        if let Some(fd) = fd {
            let _ = cell.set(fd);
        }
        SockEnd {
            fd: cell,
            linking: Mutex::new(()),
            pumping: std::sync::atomic::AtomicBool::new(pumping),
            datagram,
            listening: std::sync::OnceLock::new(),
        }
    }

    /// kbox's end, if the guest's socket is linked to it.
    pub fn fd(&self) -> Option<&OwnedFd> {
        self.fd.get()
    }

    /// kbox's end, linking the guest's socket to it first if it is not yet. A stream
    /// socket starts unconnected on the host, as the guest's socket is until it connects or
    /// listens (recv gives ENOTCONN, as TLS libraries check before a handshake); `guest` is
    /// the guest's own open file of it (pidfd_getfd), which kbox connects to a listener of
    /// its own, in the abstract namespace that guests' sockets (the kernel library's) never
    /// reach, and whose accepted end becomes kbox's.
    fn link(&self, guest: &OwnedFd) -> Result<&OwnedFd, Errno> {
        use rustix::net::{SocketAddrUnix, accept_with, bind, connect, listen, socket_with};
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let _linking = self.linking.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(fd) = self.fd.get() {
            return Ok(fd);
        }
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("kbox-{}-link-{n}", std::process::id());
        let addr = SocketAddrUnix::new_abstract_name(name.as_bytes()).map_err(hostio::errno)?;
        let listener = socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(hostio::errno)?;
        bind(&listener, &addr).map_err(hostio::errno)?;
        listen(&listener, 1).map_err(hostio::errno)?;
        // A unix connect to a listener with room completes at once, blocking or not.
        connect(guest, &addr).map_err(hostio::errno)?;
        let mine = accept_with(&listener, SocketFlags::CLOEXEC)
            .map(hostio::lift)
            .map_err(hostio::errno)?;
        let _ = self.fd.set(mine);
        self.fd.get().ok_or(Errno::EBADF)
    }
}

/// A connection accepted on a thread, its host end already in the guest at `fd`: the engine
/// makes it a served socket of `pid` (so its options, names and shutdown reach the kernel
/// library) before it answers any other call.
struct Adopted {
    pid: u32,
    fd: i32,
    cloexec: bool,
    /// The task that accepted it, holding the kernel socket at `kfd`.
    from: Arc<Task>,
    kfd: i32,
    end: Arc<SockEnd>,
}

/// A waiting call's task, control id and deferred answer (Engine::prepare_wait).
type Waiting = (Arc<Task>, u64, Box<dyn Answer>);

/// Accepted sockets waiting for the engine (filled by accept threads).
#[derive(Default, Clone)]
pub struct Adoptions(Arc<Mutex<Vec<Adopted>>>);

/// A host socketpair of the guest socket's kind: (guest end, pump end).
fn host_pair(sock_type: u64, guest_flags: u64) -> Result<(OwnedFd, OwnedFd), Errno> {
    // Datagrams cross as SEQPACKET: boundaries are kept and, unlike a datagram pair, the
    // pump sees end of file when the guest closes its end.
    let ty = match sock_type {
        SOCK_DGRAM | SOCK_SEQPACKET => SocketType::SEQPACKET,
        _ => SocketType::STREAM,
    };
    let (a, b) = rustix::net::socketpair(AddressFamily::UNIX, ty, SocketFlags::CLOEXEC, None)
        .map_err(hostio::errno)?;
    let (a, b) = (hostio::lift(a), hostio::lift(b));
    nonblocking_if_asked(&a, guest_flags)?;
    Ok((a, b))
}

fn nonblocking_if_asked(fd: &OwnedFd, guest_flags: u64) -> Result<(), Errno> {
    if guest_flags & SOCK_NONBLOCK != 0 {
        rustix::fs::fcntl_setfl(fd, rustix::fs::OFlags::NONBLOCK).map_err(hostio::errno)?;
    }
    Ok(())
}

/// The guest's host socket for a new served socket of `sock_type`, and kbox's end when
/// it is linked from the start: a stream socket starts alone and unconnected, as the
/// guest's is (SockEnd::link).
fn new_host_socket(sock_type: u64, guest_flags: u64) -> Result<(OwnedFd, Option<OwnedFd>), Errno> {
    if sock_type != SOCK_STREAM {
        return host_pair(sock_type, guest_flags).map(|(a, b)| (a, Some(b)));
    }
    let a = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map(hostio::lift)
    .map_err(hostio::errno)?;
    nonblocking_if_asked(&a, guest_flags)?;
    Ok((a, None))
}

impl Engine {
    pub(super) fn socket(&mut self, guest: &dyn Guest, pid: u32, args: [u64; 6]) -> Reply {
        let (domain, ty) = (args[0] & 0xffff_ffff, args[1] & 0xffff_ffff);
        if !matches!(domain, AF_UNIX | AF_INET | AF_INET6) {
            return Reply::Fail(Errno::EAFNOSUPPORT);
        }
        let kind = ty & SOCK_TYPE_MASK;
        if !matches!(kind, SOCK_STREAM | SOCK_DGRAM | SOCK_SEQPACKET) {
            return Reply::Fail(Errno::EPROTONOSUPPORT);
        }
        if self.settings.host_network && domain != AF_UNIX {
            // --net=host: the host makes it, and every later call on it is the host's
            // (kbox does not know the FD, so it lets them run).
            return Reply::Continue;
        }
        self.served_socket(guest, pid, args).into()
    }

    /// A socket of the kernel library's, reached by the guest through a host socketpair
    /// end that kbox pumps.
    fn served_socket(&mut self, guest: &dyn Guest, pid: u32, args: [u64; 6]) -> Result<i64, Errno> {
        let (domain, ty) = (args[0] & 0xffff_ffff, args[1] & 0xffff_ffff);
        let kind = ty & SOCK_TYPE_MASK;
        let p = self.procs.get(pid).ok_or(Errno::ESRCH)?;
        // The kernel socket stays blocking: the pump threads wait in it.
        let kfd = lkl(&p.task, g::SOCKET, [domain, kind, args[2], 0, 0, 0])?;
        let kfd = i32::try_from(kfd).map_err(|_| Errno::EMFILE)?;
        let installed = new_host_socket(kind, ty).and_then(|(a, b)| {
            let datagram = match kind {
                SOCK_DGRAM => Some(Datagrams::new(&a)?),
                _ => None,
            };
            let n = guest.answer_with_fd(a.as_fd(), None, ty & SOCK_CLOEXEC != 0)?;
            Ok((n, b, datagram))
        });
        let p = self.procs.get_mut(pid).ok_or(Errno::ESRCH)?;
        let (n, pump_end, datagram) = match installed {
            Ok(v) => v,
            Err(e) => {
                let _ = lkl(&p.task, g::CLOSE, [fdv(kfd), 0, 0, 0, 0, 0]);
                return Err(e);
            }
        };
        if n != kfd {
            lkl(&p.task, g::DUP3, [fdv(kfd), fdv(n), 0, 0, 0, 0])?;
            let _ = lkl(&p.task, g::CLOSE, [fdv(kfd), 0, 0, 0, 0, 0]);
        }
        let (gfd, entry) = procs::entry(n, FdKind::Kernel, ty & SOCK_CLOEXEC != 0)?;
        p.fds.insert_at(gfd, entry).map_err(|_| Errno::EMFILE)?;
        p.sockets.insert(
            n,
            std::sync::Arc::new(SockEnd::new(pump_end, false, datagram)),
        );
        Ok(i64::from(n))
    }

    fn socket_of(&self, pid: u32, raw: u64) -> Option<i32> {
        let fd = fd_arg(raw);
        let p = self.procs.get(pid)?;
        p.sockets.contains_key(&fd).then_some(fd)
    }

    /// bind/connect: the address is copied in; connect starts the pumps.
    pub(super) fn sock_addr_call(
        &mut self,
        guest: &dyn Guest,
        pid: u32,
        nr: u32,
        args: [u64; 6],
    ) -> Reply {
        let Some(fd) = self.socket_of(pid, args[0]) else {
            return self.not_a_served_socket(pid, args[0]);
        };
        let len = usize::try_from(args[2] & 0xffff_ffff).unwrap_or(usize::MAX);
        if len > ADDR_MAX {
            return Reply::Fail(Errno::EINVAL);
        }
        let mut addr = [0u8; ADDR_MAX];
        if let Err(e) = guest.read(args[1], &mut addr[..len]) {
            return Reply::Fail(e);
        }
        let Some(p) = self.procs.get(pid) else {
            return Reply::Fail(Errno::ESRCH);
        };
        let ty = lkl_sock_type(&p.task, fd);
        if nr == g::CONNECT && (ty == SOCK_STREAM || ty == SOCK_SEQPACKET) {
            return self.connect_waiting(guest, pid, fd, addr, len);
        }
        if let Err(e) = lkl(
            &p.task,
            nr,
            [fdv(fd), ptr(addr.as_ptr()), len as u64, 0, 0, 0],
        ) {
            return Reply::Fail(e);
        }
        // Data flows once the socket has a peer (connect) or, for datagrams, an address to
        // receive on (bind); a listening stream socket only accepts.
        let flows = nr == g::CONNECT || ty != SOCK_STREAM;
        if flows && let Err(e) = self.start_pumps(pid, fd) {
            return Reply::Fail(e);
        }
        Reply::Value(0)
    }

    /// Starts the pumps of served socket `fd` of `pid` unless they run already.
    pub(super) fn start_pumps(&mut self, pid: u32, fd: i32) -> Result<(), Errno> {
        let p = self.procs.get(pid).ok_or(Errno::ESRCH)?;
        let Some(end) = p.sockets.get(&fd) else {
            return Ok(());
        };
        if end.pumping.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let end = Arc::clone(end);
        let host = self.linked_end(pid, fd, &end)?;
        if end.pumping.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let notes = end.datagram.as_ref().map(Datagrams::notes);
        let p = self.procs.get(pid).ok_or(Errno::ESRCH)?;
        self.pumps.start(&p.task, fd, host, notes)
    }

    /// A stream connect may wait (for room in a unix listener's backlog, for a TCP
    /// handshake), so it runs on a thread of its own, on a task forked from the guest's (it
    /// holds the same socket), which a signal the guest takes interrupts; it starts the
    /// pumps and answers the guest.
    fn connect_waiting(
        &mut self,
        guest: &dyn Guest,
        pid: u32,
        fd: i32,
        addr: [u8; ADDR_MAX],
        len: usize,
    ) -> Reply {
        if self.guest_nonblocking(pid, fd) {
            return self.connect_nonblocking(pid, fd, &addr, len);
        }
        let Some(p) = self.procs.get(pid) else {
            return Reply::Fail(Errno::ESRCH);
        };
        let Some(end) = p.sockets.get(&fd).cloned() else {
            return Reply::Fail(Errno::EBADF);
        };
        // The guest's socket is connected (to kbox) from the connect on, as its peer's
        // data can come in as soon as the kernel library's connect is done.
        let host = match self.linked_end(pid, fd, &end) {
            Ok(h) => h,
            Err(e) => return Reply::Fail(e),
        };
        let Some(p) = self.procs.get(pid) else {
            return Reply::Fail(Errno::ESRCH);
        };
        let (waiter, control, answer) = match self.prepare_wait(guest, &p.task, fd) {
            Ok(v) => v,
            Err(e) => return Reply::Fail(e),
        };
        let pumps = self.pumps.clone();
        let tid = guest.tid();
        // On failure the deferred answer is dropped, which answers ENOSYS.
        let _ = self.pumps.clone().spawn("kbox-connect", move || {
            let args = [fdv(fd), ptr(addr.as_ptr()), len as u64, 0, 0, 0];
            if let Err(e) = interrupt::lkl_call(&waiter, tid, g::CONNECT, args) {
                pumps.release(control);
                return answer.fail(e);
            }
            if end.pumping.swap(true, std::sync::atomic::Ordering::Relaxed) {
                pumps.release(control);
                return answer.value(0);
            }
            // The waiter and its control become the connection's pump task and control,
            // and this thread its guest-to-kernel pump: a connect then costs one task
            // fork and one thread fewer each (a fork and end is ~58 µs).
            match Arc::try_unwrap(waiter) {
                Ok(task) => pumps.continue_connected(task, control, fd, host, answer),
                Err(waiter) => {
                    let started = pumps.start(&waiter, fd, host, None);
                    pumps.release(control);
                    match started {
                        Ok(()) => answer.value(0),
                        Err(e) => answer.fail(e),
                    }
                }
            }
        });
        Reply::Continue // answered by the thread
    }

    /// A connect on a socket the guest made non-blocking: the kernel library's connect,
    /// non-blocking too (its socket stays blocking otherwise, for the pumps). EINPROGRESS
    /// leaves a thread waiting for the handshake, which starts the pumps once connected or
    /// shuts the guest's end (POLLHUP, as a failed connect gives) if it fails; the guest
    /// reads the outcome with getsockopt(SO_ERROR) from the kernel library.
    fn connect_nonblocking(&mut self, pid: u32, fd: i32, addr: &[u8], len: usize) -> Reply {
        const F_GETFL: u64 = 3;
        const F_SETFL: u64 = 4;
        const O_NONBLOCK: i64 = 0o4000;
        if let Some(end) = self
            .procs
            .get(pid)
            .and_then(|p| p.sockets.get(&fd))
            .cloned()
            && let Err(e) = self.linked_end(pid, fd, &end)
        {
            return Reply::Fail(e);
        }
        let Some(p) = self.procs.get(pid) else {
            return Reply::Fail(Errno::ESRCH);
        };
        let flags = match lkl(&p.task, g::FCNTL, [fdv(fd), F_GETFL, 0, 0, 0, 0]) {
            Ok(f) => f,
            Err(e) => return Reply::Fail(e),
        };
        let set = |f: i64| {
            lkl(
                &p.task,
                g::FCNTL,
                [fdv(fd), F_SETFL, f.cast_unsigned(), 0, 0, 0],
            )
        };
        if let Err(e) = set(flags | O_NONBLOCK) {
            return Reply::Fail(e);
        }
        let r = lkl(
            &p.task,
            g::CONNECT,
            [fdv(fd), ptr(addr.as_ptr()), len as u64, 0, 0, 0],
        );
        let _ = set(flags);
        match r {
            Ok(_) => self.start_pumps(pid, fd).map(|()| 0).into(),
            Err(Errno::EINPROGRESS) => match self.finish_connect_later(pid, fd) {
                Ok(()) => Reply::Fail(Errno::EINPROGRESS),
                Err(e) => Reply::Fail(e),
            },
            Err(e) => Reply::Fail(e),
        }
    }

    fn finish_connect_later(&mut self, pid: u32, fd: i32) -> Result<(), Errno> {
        let p = self.procs.get(pid).ok_or(Errno::ESRCH)?;
        let end = p.sockets.get(&fd).cloned().ok_or(Errno::EBADF)?;
        let waiter = super::procs::fork_helper(&p.task, fd)?;
        let control = self.pumps.control(&p.task, fd)?;
        let pumps = self.pumps.clone();
        self.pumps.clone().spawn("kbox-connect", move || {
            const POLLOUT: i16 = 4;
            let _ = listeners::poll_one(&waiter, fd, POLLOUT, true);
            // Connected once it has a peer (reading SO_ERROR here would take the error
            // away from the guest).
            let mut name = [0u8; ADDR_MAX];
            let mut name_len = ADDR_MAX_U32;
            let peer = lkl(
                &waiter,
                g::GETPEERNAME,
                [
                    fdv(fd),
                    ptr(name.as_mut_ptr()),
                    ptr(&raw mut name_len),
                    0,
                    0,
                    0,
                ],
            );
            let started = peer.is_ok()
                && (end.pumping.swap(true, std::sync::atomic::Ordering::Relaxed)
                    || end
                        .fd()
                        .and_then(|f| f.try_clone().ok().map(hostio::lift))
                        .is_some_and(|host| pumps.start(&waiter, fd, host, None).is_ok()));
            if !started && let Some(f) = end.fd() {
                let _ = rustix::net::shutdown(f, rustix::net::Shutdown::Both);
            }
            pumps.release(control);
        })
    }

    /// What a call that waits on a thread of its own needs (accept, a stream connect): a
    /// task forked from the caller's (it holds the socket), a control task for
    /// shutdown_all (so a wait still going on when kbox exits is woken), and the deferred
    /// answer, taken last so that a failure before it still answers now.
    fn prepare_wait(&self, guest: &dyn Guest, owner: &Task, fd: i32) -> Result<Waiting, Errno> {
        let waiter = Arc::new(super::procs::fork_helper(owner, fd)?);
        let control = self.pumps.control(owner, fd)?;
        let Some(answer) = guest.defer() else {
            self.pumps.release(control);
            return Err(Errno::ENOSYS);
        };
        Ok((waiter, control, answer))
    }

    /// Calls on served sockets that only copy buffers (listen, names, options).
    pub(super) fn sock_forward(
        &mut self,
        guest: &dyn Guest,
        pid: u32,
        nr: u32,
        args: [u64; 6],
    ) -> Reply {
        let Some(fd) = self.socket_of(pid, args[0]) else {
            return self.not_a_served_socket(pid, args[0]);
        };
        let reply = self.forward(guest, pid, nr, args);
        if nr == g::LISTEN
            && matches!(reply, Reply::Value(_))
            && let Err(e) = self.watch_listener(pid, fd)
            && self.settings.verbose
        {
            // The socket listens all the same; only poll and epoll will not see it ready.
            eprintln!(
                "kbox: [{}] cannot watch listening socket {fd} for poll/epoll: {e}",
                guest.tid()
            );
        }
        reply
    }

    /// A copy of kbox's end of served socket `fd`, linking the guest's socket to it first
    /// if need be (SockEnd::link).
    fn linked_end(&self, pid: u32, fd: i32, end: &SockEnd) -> Result<OwnedFd, Errno> {
        let mine = match end.fd() {
            Some(f) => f,
            None => end.link(&self.guest_end(pid, fd)?)?,
        };
        mine.try_clone()
            .map(hostio::lift)
            .map_err(|_| Errno::EMFILE)
    }

    /// The guest's own end of served socket `fd` (the same open file), through its pidfd.
    fn guest_end(&self, pid: u32, fd: i32) -> Result<OwnedFd, Errno> {
        let p = self.procs.get(pid).ok_or(Errno::ESRCH)?;
        let pidfd = p.pidfd.as_ref().ok_or(Errno::ESRCH)?;
        hostio::guest_file(pidfd.as_fd(), fd)
    }

    /// Whether the guest made served socket `fd` non-blocking (on its own end).
    fn guest_nonblocking(&self, pid: u32, fd: i32) -> bool {
        let end = self.procs.get(pid).and_then(|p| p.sockets.get(&fd));
        let flags = match end.and_then(|e| e.listening.get()) {
            Some(r) => rustix::fs::fcntl_getfl(r.guest_end()),
            None => match self.guest_end(pid, fd) {
                Ok(g) => rustix::fs::fcntl_getfl(&g),
                Err(_) => return false,
            },
        };
        flags.is_ok_and(|f| f.contains(rustix::fs::OFlags::NONBLOCK))
    }

    /// Starts keeping listening socket `fd`'s readiness on the guest's end (once).
    fn watch_listener(&mut self, pid: u32, fd: i32) -> Result<(), Errno> {
        let guest_end = self.guest_end(pid, fd)?;
        let p = self.procs.get(pid).ok_or(Errno::ESRCH)?;
        let Some(end) = p.sockets.get(&fd).cloned() else {
            return Ok(());
        };
        if end.listening.get().is_some() {
            return Ok(());
        }
        let task = super::procs::fork_helper(&p.task, fd)?;
        let control = self.pumps.control(&p.task, fd)?;
        let pump_end = self.linked_end(pid, fd, &end)?;
        let pumps = self.pumps.clone();
        let readiness = listeners::start(task, fd, guest_end, pump_end, |watch| {
            let releaser = pumps.clone();
            pumps.spawn("kbox-listen", move || {
                watch();
                releaser.release(control);
            })
        })?;
        let _ = end.listening.set(readiness);
        Ok(())
    }

    fn not_a_served_socket(&self, pid: u32, raw: u64) -> Reply {
        match self.served(pid, fd_arg(raw)) {
            // A file or directory the kernel library serves: ENOTSOCK, as Linux says.
            Some(_) => Reply::Fail(Errno::ENOTSOCK),
            // A host object (socketpair end, pipe): the host answers.
            None => Reply::Continue,
        }
    }

    /// accept/accept4 on a served listening socket: waits on a thread of its own, then
    /// gives the guest a pumped host socket for the connection.
    pub(super) fn accept(&mut self, guest: &dyn Guest, pid: u32, args: [u64; 6]) -> Reply {
        let Some(fd) = self.socket_of(pid, args[0]) else {
            return self.not_a_served_socket(pid, args[0]);
        };
        let nonblocking = self.guest_nonblocking(pid, fd);
        let Some(p) = self.procs.get(pid) else {
            return Reply::Fail(Errno::ESRCH);
        };
        let readiness = p.sockets.get(&fd).and_then(|e| e.listening.get().cloned());
        if nonblocking && listeners::has_connection(&p.task, fd, false) == Some(false) {
            if let Some(r) = &readiness {
                r.settle(&p.task, fd);
            }
            return Reply::Fail(Errno::EAGAIN);
        }
        let (waiter, control, answer) = match self.prepare_wait(guest, &p.task, fd) {
            Ok(v) => v,
            Err(e) => return Reply::Fail(e),
        };
        let pumps = self.pumps.clone();
        let adoptions = self.adopted.clone();
        let call = Accept {
            pid,
            fd,
            tid: guest.tid(),
            addr_ptr: args[1],
            len_ptr: args[2],
            flags: args[3],
        };
        // On failure the deferred answer is dropped, which answers ENOSYS.
        let _ = self.pumps.clone().spawn("kbox-accept", move || {
            call.run(&waiter, &pumps, readiness.as_deref(), &adoptions, answer);
            pumps.release(control);
        });
        Reply::Continue // answered by the thread
    }

    /// The guest closes served socket `fd` (before the kernel side is closed). Closing the
    /// last FD of a listening socket must wake an accept waiting on it in another task;
    /// a connected socket is left to its pumps, which flush what the guest wrote.
    pub(super) fn socket_closed(&mut self, pid: u32, fd: i32) {
        let Some(p) = self.procs.get_mut(pid) else {
            return;
        };
        let Some(end) = p.sockets.remove(&fd) else {
            return;
        };
        let mut listening: i32 = 0;
        let mut len: u32 = 4;
        let _ = lkl(
            &p.task,
            g::GETSOCKOPT,
            [
                fdv(fd),
                SOL_SOCKET,
                SO_ACCEPTCONN,
                ptr(&raw mut listening),
                ptr(&raw mut len),
                0,
            ],
        );
        // Other guest FDs (dup, fork) may still hold it: only the last one shuts it.
        if listening != 0 && std::sync::Arc::strong_count(&end) == 1 {
            let _ = lkl(&p.task, g::SHUTDOWN, [fdv(fd), SHUT_RDWR, 0, 0, 0, 0]);
        }
    }

    /// getsockname/getpeername: the address out, its length in and out through a pointer.
    pub(super) fn sock_name(
        &mut self,
        guest: &dyn Guest,
        pid: u32,
        nr: u32,
        args: [u64; 6],
    ) -> Reply {
        let Some(fd) = self.socket_of(pid, args[0]) else {
            return self.not_a_served_socket(pid, args[0]);
        };
        let r = (|| {
            let mut cap = [0u8; 4];
            guest.read(args[2], &mut cap)?;
            let cap = usize::try_from(u32::from_ne_bytes(cap)).unwrap_or(0);
            let mut addr = [0u8; ADDR_MAX];
            let mut len: u32 = ADDR_MAX_U32;
            let p = self.procs.get(pid).ok_or(Errno::ESRCH)?;
            lkl(
                &p.task,
                nr,
                [fdv(fd), ptr(addr.as_mut_ptr()), ptr(&raw mut len), 0, 0, 0],
            )?;
            let n = cap.min(usize::try_from(len).unwrap_or(0));
            guest.write(args[1], &addr[..n])?;
            guest.write(args[2], &len.to_ne_bytes())?;
            Ok(0)
        })();
        r.into()
    }

    /// getsockopt: the value out, its length in and out through a pointer.
    pub(super) fn getsockopt(&mut self, guest: &dyn Guest, pid: u32, args: [u64; 6]) -> Reply {
        let Some(fd) = self.socket_of(pid, args[0]) else {
            return self.not_a_served_socket(pid, args[0]);
        };
        let r = (|| {
            let mut cap = [0u8; 4];
            guest.read(args[4], &mut cap)?;
            let cap = usize::try_from(u32::from_ne_bytes(cap))
                .unwrap_or(0)
                .min(256);
            let mut val = [0u8; 256];
            let mut len = u32::try_from(cap).unwrap_or(0);
            let p = self.procs.get(pid).ok_or(Errno::ESRCH)?;
            lkl(
                &p.task,
                g::GETSOCKOPT,
                [
                    fdv(fd),
                    args[1],
                    args[2],
                    ptr(val.as_mut_ptr()),
                    ptr(&raw mut len),
                    0,
                ],
            )?;
            let n = cap.min(usize::try_from(len).unwrap_or(0));
            guest.write(args[3], &val[..n])?;
            guest.write(args[4], &len.to_ne_bytes())?;
            Ok(0)
        })();
        r.into()
    }
}

/// One guest accept/accept4, run on a thread of its own.
struct Accept {
    pid: u32,
    fd: i32,
    tid: u32,
    addr_ptr: u64,
    len_ptr: u64,
    flags: u64,
}

impl Accept {
    fn run(
        &self,
        task: &Arc<Task>,
        pumps: &Pumps,
        readiness: Option<&Readiness>,
        adoptions: &Adoptions,
        answer: Box<dyn Answer>,
    ) {
        let (fd, tid) = (self.fd, self.tid);
        let mut addr = [0u8; ADDR_MAX];
        let mut len: u32 = ADDR_MAX_U32;
        let accepted = interrupt::lkl_call(
            task,
            tid,
            g::ACCEPT4,
            [fdv(fd), ptr(addr.as_mut_ptr()), ptr(&raw mut len), 0, 0, 0],
        );
        // Before the answer: a poll right after it must not see a stale token.
        if let Some(r) = readiness {
            r.settle(task, fd);
        }
        let kfd = match accepted {
            Ok(k) => i32::try_from(k).unwrap_or(-1),
            Err(e) => return answer.fail(e),
        };
        let result = (|| {
            let ty = lkl_sock_type(task, kfd);
            let (a, b) = host_pair(ty, self.flags)?;
            let pump_end = b.try_clone().map(hostio::lift).map_err(|_| Errno::EMFILE)?;
            pumps.start(task, kfd, b, None)?;
            if self.addr_ptr != 0 && self.len_ptr != 0 {
                let mut cap = [0u8; 4];
                crate::seccomp::guest_mem::read(tid, self.len_ptr, &mut cap)
                    .map_err(|_| Errno::EFAULT)?;
                let cap = usize::try_from(u32::from_ne_bytes(cap)).unwrap_or(0);
                let n = cap.min(usize::try_from(len).unwrap_or(0));
                crate::seccomp::guest_mem::write(tid, self.addr_ptr, &addr[..n])
                    .map_err(|_| Errno::EFAULT)?;
                crate::seccomp::guest_mem::write(tid, self.len_ptr, &len.to_ne_bytes())
                    .map_err(|_| Errno::EFAULT)?;
            }
            Ok::<(OwnedFd, OwnedFd), Errno>((a, pump_end))
        })();
        let (a, pump_end) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = lkl(task, g::CLOSE, [fdv(kfd), 0, 0, 0, 0, 0]);
                return answer.fail(e);
            }
        };
        let cloexec = self.flags & SOCK_CLOEXEC != 0;
        let fd = match answer.add_fd(a.as_fd(), cloexec) {
            Ok(n) => n,
            Err(e) => {
                let _ = lkl(task, g::CLOSE, [fdv(kfd), 0, 0, 0, 0, 0]);
                return answer.fail(e);
            }
        };
        // Queued before the answer: the guest's next call (setsockopt, say) finds it.
        adoptions
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Adopted {
                pid: self.pid,
                fd,
                cloexec,
                from: Arc::clone(task),
                kfd,
                end: Arc::new(SockEnd::new(Some(pump_end), true, None)),
            });
        answer.value(i64::from(fd));
    }
}

impl Engine {
    /// Registers the sockets accept threads handed over (see [`Adopted`]): the kernel
    /// socket moves into the guest process's task at the guest's FD number.
    pub(super) fn adopt_accepted(&mut self) {
        let pending = std::mem::take(
            &mut *self
                .adopted
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for a in pending {
            let Some(p) = self.procs.get_mut(a.pid) else {
                continue;
            };
            let moved = (|| {
                let from_pid = lkl(&a.from, g::GETPID, [0; 6])?;
                let pidfd = lkl(
                    &p.task,
                    g::PIDFD_OPEN,
                    [from_pid.cast_unsigned(), 0, 0, 0, 0, 0],
                )?;
                let got = lkl(
                    &p.task,
                    g::PIDFD_GETFD,
                    [pidfd.cast_unsigned(), fdv(a.kfd), 0, 0, 0, 0],
                );
                let _ = lkl(&p.task, g::CLOSE, [pidfd.cast_unsigned(), 0, 0, 0, 0, 0]);
                let tmp = got?;
                if tmp != i64::from(a.fd) {
                    let r = lkl(
                        &p.task,
                        g::DUP3,
                        [tmp.cast_unsigned(), fdv(a.fd), 0, 0, 0, 0],
                    );
                    let _ = lkl(&p.task, g::CLOSE, [tmp.cast_unsigned(), 0, 0, 0, 0, 0]);
                    r?;
                }
                let (gfd, entry) = procs::entry(a.fd, FdKind::Kernel, a.cloexec)?;
                p.fds.insert_at(gfd, entry).map_err(|_| Errno::EMFILE)?;
                Ok::<(), Errno>(())
            })();
            match moved {
                Ok(()) => {
                    p.sockets.insert(a.fd, a.end);
                }
                Err(e) if self.settings.verbose => eprintln!(
                    "kbox: accepted socket {} of process {} stays a host socket: {e}",
                    a.fd, a.pid
                ),
                Err(_) => {}
            }
        }
    }
}

fn lkl_sock_type(task: &Task, kfd: i32) -> u64 {
    let mut ty: i32 = 1;
    let mut len: u32 = 4;
    let _ = lkl(
        task,
        g::GETSOCKOPT,
        [
            fdv(kfd),
            SOL_SOCKET,
            SO_TYPE,
            ptr(&raw mut ty),
            ptr(&raw mut len),
            0,
        ],
    );
    u64::try_from(ty).unwrap_or(SOCK_STREAM)
}

/// Brings the kernel library's loopback interface up, so IPv4/IPv6 sockets on 127.0.0.1 and
/// ::1 work.
pub fn loopback_up(task: &Task) -> Result<(), Errno> {
    const SIOCGIFFLAGS: u64 = 0x8913;
    const SIOCSIFFLAGS: u64 = 0x8914;
    const IFF_UP: u16 = 1;
    let s = lkl(task, g::SOCKET, [AF_INET, SOCK_DGRAM, 0, 0, 0, 0])?;
    // struct ifreq: 16-byte name, then the flags as a short (rest of the 40-byte union).
    let mut ifr = [0u8; 40];
    ifr[..2].copy_from_slice(b"lo");
    let r = lkl(
        task,
        g::IOCTL,
        [
            u64::try_from(s).unwrap_or(0),
            SIOCGIFFLAGS,
            ptr(ifr.as_mut_ptr()),
            0,
            0,
            0,
        ],
    )
    .and_then(|_| {
        let flags = u16::from_ne_bytes([ifr[16], ifr[17]]) | IFF_UP;
        ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
        lkl(
            task,
            g::IOCTL,
            [
                u64::try_from(s).unwrap_or(0),
                SIOCSIFFLAGS,
                ptr(ifr.as_mut_ptr()),
                0,
                0,
                0,
            ],
        )
    });
    let _ = lkl(
        task,
        g::CLOSE,
        [u64::try_from(s).unwrap_or(0), 0, 0, 0, 0, 0],
    );
    r.map(|_| ())
}
