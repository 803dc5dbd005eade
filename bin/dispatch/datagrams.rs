//! Datagrams with addresses on served sockets (UDP, UDP over IPv6, unix datagrams).
//!
//! A served datagram socket's bytes cross a host SEQPACKET pair like a stream's (so the
//! guest's read, write, poll and epoll stay native), but a datagram also has an address:
//! where it goes (sendto, sendmsg, sendmmsg with one) and where it came from (recvfrom,
//! recvmsg, recvmmsg asking for it). Those calls are notified, and kbox serves them:
//! - sending with an address is the kernel library's sendto, on the caller's task;
//! - the pump that moves datagrams to the guest receives each with its sender and notes
//!   (sender, length, checksum) in a queue before writing it to the guest's end; a call
//!   that asks for the sender receives on kbox's duplicate of the guest's end (the same
//!   open file) and takes the matching note. Notes of datagrams the guest read natively
//!   (read, recv) are passed over by that match.
//!
//! A receive that has to wait does so on a thread of its own (interrupt.rs ends it when the
//! guest takes a signal).

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};

use kbox_core::sysno::generic as g;
use kbox_lkl::{Errno, Task};

use super::sockets::SockEnd;
use super::{Engine, Guest, Reply, fd_arg, fdv, interrupt, lkl, ptr};

/// Largest socket address (sizeof(struct sockaddr_storage)).
const ADDR_MAX: usize = 128;
const ADDR_MAX_U32: u32 = 128;
/// The most kbox moves in one datagram (a UDP datagram is at most 65,507 bytes).
const DATAGRAM_MAX: usize = 64 << 10;
/// Notes kept per socket: older ones are dropped (their datagrams were read natively, or
/// are lost with their sender).
const NOTES_MAX: usize = 8192;

const MSG_PEEK: u64 = 2;
const MSG_TRUNC: u64 = 0x20;
/// MSG_TRUNC as msg_flags holds it.
const MSG_TRUNC_FLAG: i32 = 0x20;
const MSG_DONTWAIT: u64 = 0x40;
const MSG_WAITFORONE: u64 = 0x10000;
const MSG_CMSG_CLOEXEC: u64 = 0x4000_0000;

/// Where one pumped datagram came from.
pub struct Note {
    addr: [u8; ADDR_MAX],
    addr_len: u32,
    len: usize,
    sum: u64,
}

/// What kbox keeps for a datagram socket: its duplicate of the guest's end, and the notes.
pub struct Datagrams {
    guest: OwnedFd,
    notes: Arc<Mutex<VecDeque<Note>>>,
}

impl Datagrams {
    pub fn new(guest_end: &OwnedFd) -> Result<Datagrams, Errno> {
        Ok(Datagrams {
            guest: guest_end
                .try_clone()
                .map(super::hostio::lift)
                .map_err(|_| Errno::EMFILE)?,
            notes: Arc::default(),
        })
    }

    /// The queue the pump to the guest writes notes to.
    pub fn notes(&self) -> Arc<Mutex<VecDeque<Note>>> {
        Arc::clone(&self.notes)
    }

    /// Whether the guest's end (its open file) is non-blocking.
    fn nonblocking(&self) -> bool {
        rustix::fs::fcntl_getfl(&self.guest).is_ok_and(|f| f.contains(rustix::fs::OFlags::NONBLOCK))
    }

    /// Receives one datagram from the guest's end (as the guest would) and finds its note.
    fn receive(&self, flags: u64) -> Result<Received, Errno> {
        let mut data = vec![0u8; DATAGRAM_MAX];
        let host_flags = flags & (MSG_PEEK | MSG_DONTWAIT);
        // SAFETY: `data` is writable for its length; the FD is ours.
        let full = unsafe {
            libc::recv(
                self.guest.as_raw_fd(),
                data.as_mut_ptr().cast(),
                data.len(),
                i32::try_from(host_flags | MSG_TRUNC).unwrap_or(0),
            )
        };
        let full = usize::try_from(full).map_err(|_| last_errno())?;
        data.truncate(full.min(DATAGRAM_MAX));
        let sum = checksum(&data);
        let mut notes = self.notes.lock().unwrap_or_else(PoisonError::into_inner);
        let found = notes.iter().position(|n| n.len == full && n.sum == sum);
        let sender = found.map(|i| {
            let n = &notes[i];
            let sender = (n.addr, n.addr_len);
            if flags & MSG_PEEK == 0 {
                notes.drain(..=i);
            }
            sender
        });
        Ok(Received { data, full, sender })
    }
}

/// One datagram received for the guest.
struct Received {
    data: Vec<u8>,
    /// Its whole length (more than `data` holds if it was cut).
    full: usize,
    sender: Option<([u8; ADDR_MAX], u32)>,
}

fn last_errno() -> Errno {
    Errno(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

/// FNV-1a: tells datagrams apart in the note queue (not a security measure).
fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Kernel socket → guest, for a datagram socket: each datagram is noted with its sender
/// before it is written to the guest's end.
pub fn pump_to_host(task: &Task, kfd: i32, host: &OwnedFd, notes: &Mutex<VecDeque<Note>>) {
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        let mut addr = [0u8; ADDR_MAX];
        let mut addr_len = ADDR_MAX_U32;
        let n = match lkl(
            task,
            g::RECVFROM,
            [
                fdv(kfd),
                ptr(buf.as_mut_ptr()),
                buf.len() as u64,
                0,
                ptr(addr.as_mut_ptr()),
                ptr(&raw mut addr_len),
            ],
        ) {
            Ok(n) => usize::try_from(n).unwrap_or(0),
            Err(_) => break,
        };
        {
            let mut q = notes.lock().unwrap_or_else(PoisonError::into_inner);
            if q.len() >= NOTES_MAX {
                q.pop_front();
            }
            q.push_back(Note {
                addr,
                addr_len,
                len: n,
                sum: checksum(&buf[..n]),
            });
        }
        // A full guest end drops nothing: the write waits, as the kernel socket's queue
        // would have. Only a closed guest end ends the pump.
        if rustix::net::send(host, &buf[..n], rustix::net::SendFlags::empty()).is_err() {
            let _ = lkl(task, g::SHUTDOWN, [fdv(kfd), 0, 0, 0, 0, 0]);
            return;
        }
    }
    let _ = rustix::net::shutdown(host, rustix::net::Shutdown::Write);
}

/// struct msghdr, as the guest lays it out (the 64-bit layout both arches share).
#[derive(Clone, Copy, Default)]
struct MsgHdr {
    name: u64,
    name_len: u32,
    iov: u64,
    iov_len: u64,
    control: u64,
    control_len: u64,
}

const MSGHDR_SIZE: u64 = 56;
const MMSGHDR_SIZE: u64 = 64;

fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(v)
}

fn read_msghdr(guest: &dyn Guest, at: u64) -> Result<MsgHdr, Errno> {
    let mut b = [0u8; 56];
    guest.read(at, &mut b)?;
    Ok(MsgHdr {
        name: read_u64(&b, 0),
        name_len: u32::try_from(read_u64(&b, 8) & 0xffff_ffff).unwrap_or(0),
        iov: read_u64(&b, 16),
        iov_len: read_u64(&b, 24),
        control: read_u64(&b, 32),
        control_len: read_u64(&b, 40),
    })
}

/// The guest's iovec array: (base, len) pairs.
fn read_iovecs(guest: &dyn Guest, at: u64, count: u64) -> Result<Vec<(u64, usize)>, Errno> {
    if count > 1024 {
        return Err(Errno::EMSGSIZE);
    }
    let mut out = Vec::new();
    for i in 0..count {
        let mut b = [0u8; 16];
        guest.read(at + i * 16, &mut b)?;
        let len = usize::try_from(read_u64(&b, 8)).map_err(|_| Errno::EINVAL)?;
        out.push((read_u64(&b, 0), len));
    }
    Ok(out)
}

/// What the iovecs hold, gathered (at most DATAGRAM_MAX * 4 bytes: EMSGSIZE beyond).
fn gather(guest: &dyn Guest, iov: &[(u64, usize)]) -> Result<Vec<u8>, Errno> {
    let total: usize = iov.iter().map(|&(_, l)| l).sum();
    if total > DATAGRAM_MAX * 4 {
        return Err(Errno::EMSGSIZE);
    }
    let mut data = vec![0u8; total];
    let mut at = 0;
    for &(base, len) in iov {
        guest.read(base, &mut data[at..at + len])?;
        at += len;
    }
    Ok(data)
}

/// Guest memory writes from wherever the answer is given (the engine or a waiting thread).
type Write<'a> = &'a dyn Fn(u64, &[u8]) -> Result<(), Errno>;

/// Writes a received datagram where a recvmsg asked: data over the iovecs, the sender in
/// msg_name (its length in msg_namelen), no control data, MSG_TRUNC in msg_flags if cut.
/// Returns the call's value.
fn deliver_msg(
    write: Write<'_>,
    hdr_at: u64,
    hdr: &MsgHdr,
    iov: &[(u64, usize)],
    r: &Received,
    flags: u64,
) -> Result<i64, Errno> {
    let mut at = 0;
    for &(base, len) in iov {
        if at >= r.data.len() {
            break;
        }
        let n = len.min(r.data.len() - at);
        write(base, &r.data[at..at + n])?;
        at += n;
    }
    let cut = at < r.full;
    if hdr.name != 0 {
        let (addr, len) = r.sender.unwrap_or(([0; ADDR_MAX], 0));
        let n = (hdr.name_len as usize).min(len as usize).min(ADDR_MAX);
        write(hdr.name, &addr[..n])?;
        write(hdr_at + 8, &len.to_ne_bytes())?;
    }
    write(hdr_at + 40, &0u64.to_ne_bytes())?;
    let msg_flags: i32 = if cut { MSG_TRUNC_FLAG } else { 0 };
    write(hdr_at + 48, &msg_flags.to_ne_bytes())?;
    let value = if flags & MSG_TRUNC != 0 { r.full } else { at };
    Ok(i64::try_from(value).unwrap_or(i64::MAX))
}

/// Writes a received datagram's bytes where a recvfrom asked; returns the call's value.
fn deliver_from(write: Write<'_>, args: [u64; 6], r: &Received) -> Result<i64, Errno> {
    let cap = usize::try_from(args[2]).unwrap_or(usize::MAX);
    let n = cap.min(r.data.len());
    write(args[1], &r.data[..n])?;
    let value = if args[3] & MSG_TRUNC != 0 { r.full } else { n };
    Ok(i64::try_from(value).unwrap_or(i64::MAX))
}

impl Engine {
    /// The served datagram socket behind guest FD `raw` of `pid`, if it is one.
    fn datagram_end(&self, pid: u32, raw: u64) -> Option<(i32, Arc<SockEnd>)> {
        let fd = fd_arg(raw);
        let end = self.procs.get(pid)?.sockets.get(&fd)?;
        end.datagram.as_ref()?;
        Some((fd, Arc::clone(end)))
    }

    /// Sends `data` to `addr` (or the connected peer) on served datagram socket `fd`, and
    /// makes sure answers can come back (the pumps run).
    fn send_datagram(
        &mut self,
        pid: u32,
        fd: i32,
        data: &[u8],
        addr: &[u8],
        flags: u64,
    ) -> Result<i64, Errno> {
        let p = self.procs.get(pid).ok_or(Errno::ESRCH)?;
        let addr_ptr = if addr.is_empty() {
            0
        } else {
            ptr(addr.as_ptr())
        };
        let n = lkl(
            &p.task,
            g::SENDTO,
            [
                fdv(fd),
                ptr(data.as_ptr()),
                data.len() as u64,
                flags,
                addr_ptr,
                addr.len() as u64,
            ],
        )?;
        self.start_pumps(pid, fd)?;
        Ok(n)
    }

    /// sendto with a destination, on any socket (notified because of the destination).
    pub(super) fn sendto(&mut self, guest: &dyn Guest, pid: u32, args: [u64; 6]) -> Reply {
        let Some((fd, _)) = self.datagram_end(pid, args[0]) else {
            return Reply::Continue;
        };
        let r = (|| {
            let len = usize::try_from(args[2]).map_err(|_| Errno::EMSGSIZE)?;
            if len > DATAGRAM_MAX * 4 {
                return Err(Errno::EMSGSIZE);
            }
            let mut data = vec![0u8; len];
            guest.read(args[1], &mut data)?;
            let addr_len = usize::try_from(args[5] & 0xffff_ffff).unwrap_or(usize::MAX);
            if addr_len > ADDR_MAX {
                return Err(Errno::EINVAL);
            }
            let mut addr = vec![0u8; addr_len];
            guest.read(args[4], &mut addr)?;
            self.send_datagram(pid, fd, &data, &addr, args[3])
        })();
        r.into()
    }

    /// sendmsg: served for datagram sockets (with or without a destination), the host's
    /// otherwise.
    pub(super) fn sendmsg(&mut self, guest: &dyn Guest, pid: u32, args: [u64; 6]) -> Reply {
        let Some((fd, _)) = self.datagram_end(pid, args[0]) else {
            return Reply::Continue;
        };
        self.send_one_msg(guest, pid, fd, args[1], args[2]).into()
    }

    fn send_one_msg(
        &mut self,
        guest: &dyn Guest,
        pid: u32,
        fd: i32,
        at: u64,
        flags: u64,
    ) -> Result<i64, Errno> {
        let hdr = read_msghdr(guest, at)?;
        if hdr.control != 0 && hdr.control_len != 0 {
            // Ancillary data (SCM_RIGHTS, credentials) is not carried (docs/dispatch.md).
            return Err(Errno::EOPNOTSUPP);
        }
        let iov = read_iovecs(guest, hdr.iov, hdr.iov_len)?;
        let data = gather(guest, &iov)?;
        let mut addr = vec![0u8; (hdr.name_len as usize).min(ADDR_MAX)];
        if hdr.name != 0 {
            guest.read(hdr.name, &mut addr)?;
        } else {
            addr.clear();
        }
        self.send_datagram(pid, fd, &data, &addr, flags)
    }

    /// sendmmsg: each message as sendmsg, its length written to msg_len.
    pub(super) fn sendmmsg(&mut self, guest: &dyn Guest, pid: u32, args: [u64; 6]) -> Reply {
        let Some((fd, _)) = self.datagram_end(pid, args[0]) else {
            return Reply::Continue;
        };
        let count = args[2].min(1024);
        let mut sent = 0u64;
        while sent < count {
            let at = args[1] + sent * MMSGHDR_SIZE;
            match self.send_one_msg(guest, pid, fd, at, args[3]) {
                Ok(n) => {
                    let len = u32::try_from(n).unwrap_or(u32::MAX);
                    if let Err(e) = guest.write(at + MSGHDR_SIZE, &len.to_ne_bytes()) {
                        return if sent == 0 { Reply::Fail(e) } else { break };
                    }
                    sent += 1;
                }
                Err(e) if sent == 0 => return Reply::Fail(e),
                Err(_) => break,
            }
        }
        Reply::Value(i64::try_from(sent).unwrap_or(0))
    }

    /// recvfrom asking for the sender (notified because of the address pointer).
    pub(super) fn recvfrom(&mut self, guest: &dyn Guest, pid: u32, args: [u64; 6]) -> Reply {
        let Some((_, end)) = self.datagram_end(pid, args[0]) else {
            return Reply::Continue;
        };
        let mut cap = [0u8; 4];
        if let Err(e) = guest.read(args[5], &mut cap) {
            return Reply::Fail(e);
        }
        let cap = u32::from_ne_bytes(cap) as usize;
        let (addr_at, len_at) = (args[4], args[5]);
        self.receive(guest, end, args[3], move |write, r| {
            let value = deliver_from(write, args, r)?;
            let (addr, len) = r.sender.unwrap_or(([0; ADDR_MAX], 0));
            write(addr_at, &addr[..cap.min(len as usize).min(ADDR_MAX)])?;
            write(len_at, &len.to_ne_bytes())?;
            Ok(value)
        })
    }

    /// recvmsg: served for datagram sockets, the host's otherwise.
    pub(super) fn recvmsg(&mut self, guest: &dyn Guest, pid: u32, args: [u64; 6]) -> Reply {
        let Some((_, end)) = self.datagram_end(pid, args[0]) else {
            return Reply::Continue;
        };
        let hdr = match read_msghdr(guest, args[1]) {
            Ok(h) => h,
            Err(e) => return Reply::Fail(e),
        };
        let iov = match read_iovecs(guest, hdr.iov, hdr.iov_len) {
            Ok(v) => v,
            Err(e) => return Reply::Fail(e),
        };
        let (at, flags) = (args[1], args[2] & !MSG_CMSG_CLOEXEC);
        self.receive(guest, end, flags, move |write, r| {
            deliver_msg(write, at, &hdr, &iov, r, flags)
        })
    }

    /// recvmmsg: the first datagram as recvmsg (waiting if the socket blocks), then what
    /// else is already there, up to `vlen` (as with MSG_WAITFORONE; the timeout is not
    /// used).
    pub(super) fn recvmmsg(&mut self, guest: &dyn Guest, pid: u32, args: [u64; 6]) -> Reply {
        let Some((_, end)) = self.datagram_end(pid, args[0]) else {
            return Reply::Continue;
        };
        let count = args[2].min(1024);
        if count == 0 {
            return Reply::Value(0);
        }
        let mut msgs = Vec::new();
        for i in 0..count {
            let at = args[1] + i * MMSGHDR_SIZE;
            let got = read_msghdr(guest, at)
                .and_then(|h| Ok((at, h, read_iovecs(guest, h.iov, h.iov_len)?)));
            match got {
                Ok(m) => msgs.push(m),
                Err(e) => return Reply::Fail(e),
            }
        }
        let flags = args[3] & !(MSG_CMSG_CLOEXEC | MSG_WAITFORONE);
        let rest = Arc::clone(&end);
        self.receive(guest, end, flags, move |write, first| {
            let mut n = 0i64;
            for (i, (at, hdr, iov)) in msgs.iter().enumerate() {
                let r;
                let got = if i == 0 {
                    first
                } else {
                    let Some(d) = rest.datagram.as_ref() else {
                        break;
                    };
                    match d.receive(flags | MSG_DONTWAIT) {
                        Ok(x) => {
                            r = x;
                            &r
                        }
                        Err(_) => break,
                    }
                };
                let len = deliver_msg(write, *at, hdr, iov, got, flags)?;
                write(
                    at + MSGHDR_SIZE,
                    &u32::try_from(len).unwrap_or(0).to_ne_bytes(),
                )?;
                n += 1;
            }
            Ok(n)
        })
    }

    /// Receives one datagram for the guest and hands it to `deliver` (which writes it into
    /// guest memory and gives the call's value): at once when one is there or the call must
    /// not wait, else on a thread that waits (and that a signal the guest takes ends).
    fn receive(
        &mut self,
        guest: &dyn Guest,
        end: Arc<SockEnd>,
        flags: u64,
        deliver: impl FnOnce(Write<'_>, &Received) -> Result<i64, Errno> + Send + 'static,
    ) -> Reply {
        let Some(d) = end.datagram.as_ref() else {
            return Reply::Fail(Errno::ENOTSOCK);
        };
        let must_not_wait = flags & MSG_DONTWAIT != 0 || d.nonblocking();
        match d.receive(flags | MSG_DONTWAIT) {
            Ok(r) => {
                let write = |at: u64, b: &[u8]| guest.write(at, b);
                return deliver(&write, &r).into();
            }
            Err(e) if e != Errno::EAGAIN || must_not_wait => return Reply::Fail(e),
            Err(_) => {}
        }
        let Some(answer) = guest.defer() else {
            return Reply::Fail(Errno::ENOSYS);
        };
        let tid = guest.tid();
        let spawned = std::thread::Builder::new()
            .name("kbox-recv".into())
            .spawn(move || {
                let Some(d) = end.datagram.as_ref() else {
                    return answer.fail(Errno::ENOTSOCK);
                };
                let watch = interrupt::watch_this_thread(tid);
                let got = d.receive(flags);
                let signalled = watch.finish();
                let write = |at: u64, b: &[u8]| {
                    crate::seccomp::guest_mem::write(tid, at, b).map_err(|_| Errno::EFAULT)
                };
                match got {
                    Ok(r) => match deliver(&write, &r) {
                        Ok(v) => answer.value(v),
                        Err(e) => answer.fail(e),
                    },
                    Err(Errno::EINTR) if signalled => answer.fail(Errno::ERESTARTSYS),
                    Err(e) => answer.fail(e),
                }
            });
        // A thread that could not start drops the answer, which answers ENOSYS.
        drop(spawned);
        Reply::Continue // answered by the thread
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_tell_datagrams_apart() {
        assert_ne!(checksum(b"ping"), checksum(b"pong"));
        assert_eq!(checksum(b"ping"), checksum(b"ping"));
        assert_ne!(checksum(b""), checksum(b"\0"));
    }
}
