//! FDs passed over served stream sockets (SCM_RIGHTS), as Python's multiprocessing does.
//!
//! The FDs a guest passes are host FDs, and they arrive at kbox's end of the socketpair the
//! guest holds. They cannot cross the kernel library's socket as they are, so each travels
//! as a stand-in: the read end of a kernel-library pipe, made for it alone, sent with the
//! same bytes; kbox keeps the host FD under the stand-in's inode. The pump of the receiving
//! end finds the host FDs again by the stand-ins it receives and passes them on to its
//! guest with the same bytes, so the receiver gets them where Linux would give them to it.
//! A served file or socket passed this way arrives as its host side (its data is the
//! same; kbox's own calls on it are the sender's, see docs/dispatch.md).

use std::collections::{HashMap, VecDeque};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, PoisonError};

use kbox_core::sysno::generic as g;
use kbox_lkl::{Errno, Task};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use super::files::lkl_stat;
use super::{fdv, lkl, ptr};

/// Most FDs one message carries (Linux's SCM_MAX_FD).
const MAX_FDS: usize = 253;
/// Host FDs in flight at once; the oldest is dropped beyond this (a stand-in nobody ever
/// received: its receiver closed the socket unread).
const MAX_IN_FLIGHT: usize = 4096;
const SOL_SOCKET: i32 = 1;
const SCM_RIGHTS: i32 = 1;

/// Host FDs in flight, by their stand-ins' (device, inode) in the kernel library.
struct InFlight {
    fds: HashMap<(u64, u64), OwnedFd>,
    order: VecDeque<(u64, u64)>,
}

static IN_FLIGHT: Mutex<Option<InFlight>> = Mutex::new(None);

fn with_in_flight<R>(f: impl FnOnce(&mut InFlight) -> R) -> R {
    let mut guard = IN_FLIGHT.lock().unwrap_or_else(PoisonError::into_inner);
    let stash = guard.get_or_insert_with(|| InFlight {
        fds: HashMap::new(),
        order: VecDeque::new(),
    });
    f(stash)
}

/// Reads from kbox's host end of a socketpair: the bytes, and the host FDs the guest sent
/// with them. A read stops where FDs were attached, so they belong to the first byte.
pub fn recv_host(host: &OwnedFd, buf: &mut [u8]) -> rustix::io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        host,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(passed) = message {
            fds.extend(passed);
        }
    }
    Ok((msg.bytes, fds))
}

/// Sends bytes with host FDs to the guest through kbox's host end.
pub fn send_host(host: &OwnedFd, data: &[u8], fds: &[OwnedFd]) -> rustix::io::Result<usize> {
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(rustix::io::Errno::INVAL);
    }
    rustix::net::sendmsg(
        host,
        &[IoSlice::new(data)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
}

/// The kernel library's `struct msghdr` and `struct iovec` (64-bit layout).
#[repr(C)]
struct MsgHdr {
    name: u64,
    namelen: u32,
    pad: u32,
    iov: u64,
    iovlen: u64,
    control: u64,
    controllen: u64,
    flags: i32,
    pad2: u32,
}

#[repr(C)]
struct IoVec {
    base: u64,
    len: u64,
}

impl MsgHdr {
    /// A message of one buffer and a control buffer (which recvmsg fills), no address.
    fn new(iov: &IoVec, control: &mut [u8]) -> MsgHdr {
        MsgHdr {
            name: 0,
            namelen: 0,
            pad: 0,
            iov: ptr(iov),
            iovlen: 1,
            control: ptr(control.as_mut_ptr()),
            controllen: control.len() as u64,
            flags: 0,
            pad2: 0,
        }
    }
}

/// Bytes of a control message carrying `n` FDs, header included, padded to 8 bytes.
fn rights_space(n: usize) -> usize {
    (16 + 4 * n).next_multiple_of(8)
}

/// Sends `data` on kernel socket `kfd` of `task` with stand-ins for `fds`, which kbox keeps
/// until the receiving pump redeems them. Returns how many bytes went.
pub fn send_kernel(task: &Task, kfd: i32, data: &[u8], fds: Vec<OwnedFd>) -> Result<usize, Errno> {
    let mut stand_ins = Vec::with_capacity(fds.len());
    let mut keys = Vec::with_capacity(fds.len());
    let close_all = |kfds: &[i32]| {
        for &k in kfds {
            let _ = lkl(task, g::CLOSE, [fdv(k), 0, 0, 0, 0, 0]);
        }
    };
    for _ in &fds {
        let mut pipe = [0i32; 2];
        if let Err(e) = lkl(task, g::PIPE2, [ptr(pipe.as_mut_ptr()), 0, 0, 0, 0, 0]) {
            close_all(&stand_ins);
            return Err(e);
        }
        let _ = lkl(task, g::CLOSE, [fdv(pipe[1]), 0, 0, 0, 0, 0]);
        match lkl_stat(task, pipe[0]) {
            Ok(st) => keys.push((st.st_dev, st.st_ino)),
            Err(e) => {
                close_all(&stand_ins);
                let _ = lkl(task, g::CLOSE, [fdv(pipe[0]), 0, 0, 0, 0, 0]);
                return Err(e);
            }
        }
        stand_ins.push(pipe[0]);
    }
    let mut control = vec![0u8; rights_space(stand_ins.len())];
    let len = 16 + 4 * stand_ins.len();
    control[..8].copy_from_slice(&(len as u64).to_ne_bytes());
    control[8..12].copy_from_slice(&SOL_SOCKET.to_ne_bytes());
    control[12..16].copy_from_slice(&SCM_RIGHTS.to_ne_bytes());
    for (i, k) in stand_ins.iter().enumerate() {
        control[16 + 4 * i..20 + 4 * i].copy_from_slice(&k.to_ne_bytes());
    }
    let iov = IoVec {
        base: ptr(data.as_ptr()),
        len: data.len() as u64,
    };
    let msg = MsgHdr::new(&iov, &mut control);
    const MSG_NOSIGNAL: u64 = 0x4000;
    // Keep the host FDs before the stand-ins can reach anyone.
    with_in_flight(|s| {
        for (key, fd) in keys.iter().zip(fds) {
            s.fds.insert(*key, fd);
            s.order.push_back(*key);
        }
        while s.order.len() > MAX_IN_FLIGHT {
            if let Some(old) = s.order.pop_front() {
                s.fds.remove(&old);
            }
        }
    });
    let sent = lkl(
        task,
        g::SENDMSG,
        [fdv(kfd), ptr(&raw const msg), MSG_NOSIGNAL, 0, 0, 0],
    );
    // In flight, the stand-ins hold themselves; the sender's copies go.
    close_all(&stand_ins);
    if sent.is_err() {
        with_in_flight(|s| {
            for key in &keys {
                s.fds.remove(key);
            }
        });
    }
    sent.map(|n| usize::try_from(n).unwrap_or(0))
}

/// Reads from kernel socket `kfd` of `task`: the bytes, and the host FDs whose stand-ins
/// came with them (stand-ins kbox does not know, such as FDs a kernel-library task passed
/// itself, are dropped).
pub fn recv_kernel(task: &Task, kfd: i32, buf: &mut [u8]) -> Result<(usize, Vec<OwnedFd>), Errno> {
    // The kernel library writes into both buffers through these addresses.
    let mut control = vec![0u8; rights_space(MAX_FDS)];
    let iov = IoVec {
        base: ptr(buf.as_mut_ptr()),
        len: buf.len() as u64,
    };
    let mut msg = MsgHdr::new(&iov, &mut control);
    const MSG_CMSG_CLOEXEC: u64 = 0x4000_0000;
    let n = lkl(
        task,
        g::RECVMSG,
        [fdv(kfd), ptr(&raw mut msg), MSG_CMSG_CLOEXEC, 0, 0, 0],
    )?;
    let n = usize::try_from(n).unwrap_or(0);
    let used = usize::try_from(msg.controllen)
        .unwrap_or(0)
        .min(control.len());
    let stand_ins = rights_in(&control[..used]);
    let mut fds = Vec::with_capacity(stand_ins.len());
    for k in stand_ins {
        if let Ok(st) = lkl_stat(task, k)
            && let Some(fd) = with_in_flight(|s| s.fds.remove(&(st.st_dev, st.st_ino)))
        {
            fds.push(fd);
        }
        let _ = lkl(task, g::CLOSE, [fdv(k), 0, 0, 0, 0, 0]);
    }
    Ok((n, fds))
}

/// The FDs of every SCM_RIGHTS message in a received control buffer.
fn rights_in(control: &[u8]) -> Vec<i32> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= control.len() {
        let word = |o: usize, n: usize| control.get(at + o..at + o + n);
        let len = word(0, 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, |b: [u8; 8]| {
                usize::try_from(u64::from_ne_bytes(b)).unwrap_or(0)
            });
        let level = word(8, 4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, i32::from_ne_bytes);
        let kind = word(12, 4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, i32::from_ne_bytes);
        if len < 16 || at + len > control.len() {
            break;
        }
        if level == SOL_SOCKET && kind == SCM_RIGHTS {
            for fd in control[at + 16..at + len].chunks_exact(4) {
                if let Ok(b) = fd.try_into() {
                    out.push(i32::from_ne_bytes(b));
                }
            }
        }
        at += len.next_multiple_of(8);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{rights_in, rights_space};

    #[test]
    fn control_messages_parse_back() {
        let mut control = vec![0u8; rights_space(3) + rights_space(1)];
        let mut put = |at: usize, fds: &[i32], kind: i32| {
            let len = 16 + 4 * fds.len();
            control[at..at + 8].copy_from_slice(&(len as u64).to_ne_bytes());
            control[at + 8..at + 12].copy_from_slice(&1i32.to_ne_bytes());
            control[at + 12..at + 16].copy_from_slice(&kind.to_ne_bytes());
            for (i, fd) in fds.iter().enumerate() {
                control[at + 16 + 4 * i..at + 20 + 4 * i].copy_from_slice(&fd.to_ne_bytes());
            }
        };
        put(0, &[5, 6, 7], 1);
        put(rights_space(3), &[9], 2);
        assert_eq!(rights_in(&control), vec![5, 6, 7]);
        assert_eq!(rights_space(3), 32);
    }
}
