//! Network: a virtio network device whose Ethernet frames travel over a connected stream
//! socket, each preceded by its length as a 32-bit big-endian number. That is the
//! protocol qemu's stream netdev speaks, and so the one user-mode network stacks made
//! for qemu (passt) speak too.
//!
//! Frames the kernel sends are written to the socket on the thread that kicked the
//! transmit queue. Frames from the socket are read by a thread of the device's own,
//! which puts them in the receive buffers the driver posted and raises the interrupt.
//! A large frame already whole in the socket is read straight into the driver's
//! buffers; anything else is drained at once into a buffer of the thread's (see
//! [`Inbox`]) and copied from there.
use crate::kernel;
use crate::virtio_mmio::{self, Chain, Device};
use std::fmt;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

const DEVICE_ID_NET: u32 = 1;
/// The driver may take received frames' checksums as checked: the peer made the frames
/// itself from data the host's own TCP/UDP stack had verified, so checking again would
/// be a pass over every byte for nothing.
const F_GUEST_CSUM: u64 = 1 << 1;
const F_MTU: u64 = 1 << 3;
const F_MAC: u64 = 1 << 5;
/// The header in front of every frame in the rings (`virtio_net_hdr_v1`): no offloads
/// are offered, so it is all zero but for `num_buffers`.
const HEADER: usize = 12;
const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;
/// An Ethernet header plus the largest MTU a virtio device can announce.
const MAX_FRAME: usize = 14 + 65535;
/// Room the receive buffer keeps for one read: a whole frame at least.
const READ_CHUNK: usize = 256 << 10;
/// Most bytes of frames kept for a kernel that has no buffers for them (see [`Inbox`]).
const INBOX_MAX: usize = 32 << 20;
/// Frames from this size up are read straight into the driver's buffers when they can be:
/// for them the copy through the inbox costs more than the two extra syscalls (the
/// socket's queue length, and the frame's own read) that reading them alone takes.
const DIRECT_MIN: usize = 16 << 10;
/// The length prefix in front of every frame on the socket.
const PREFIX: usize = 4;

/// How the device presents itself to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The interface's MAC address.
    pub mac: [u8; 6],
    /// The largest IP packet; above 1500 the driver posts receive buffers that large.
    pub mtu: u16,
}

/// What the device counted; frames dropped are also counted by the kernel's interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    pub frames_out: u64,
    pub frames_in: u64,
    /// Frames the peer sent that no receive buffer could hold, or that could not be sent.
    pub dropped: u64,
}

#[derive(Default)]
struct Counters {
    frames_out: AtomicU64,
    frames_in: AtomicU64,
    dropped: AtomicU64,
}

/// What the receive thread and the device model share.
struct Shared {
    /// Readable when the driver posted receive buffers; the receive thread polls it.
    posted: OwnedFd,
    stop: AtomicBool,
    counters: Counters,
}

struct NetDevice {
    /// The transmit side of the socket.
    peer: UnixStream,
    config: [u8; 12],
    shared: Arc<Shared>,
}

impl Device for NetDevice {
    fn device_id(&self) -> u32 {
        DEVICE_ID_NET
    }

    fn features(&self) -> u64 {
        F_MAC | F_MTU | F_GUEST_CSUM
    }

    fn config(&self) -> &[u8] {
        &self.config
    }

    fn queue_count(&self) -> usize {
        2
    }

    fn filled_by_device(&self, queue: usize) -> bool {
        queue == RX_QUEUE
    }

    fn buffers_added(&mut self, _queue: usize) {
        let _ = rustix::io::write(&self.shared.posted, &1u64.to_ne_bytes());
    }

    fn serve(&mut self, queue: usize, chain: &mut Chain<'_>) -> u32 {
        if queue == TX_QUEUE {
            let counters = &self.shared.counters;
            if send_frame(&self.peer, &chain.readable) {
                counters.frames_out.fetch_add(1, Ordering::Relaxed);
            } else {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        0
    }
}

/// Writes one frame (the chain's bytes after the header) with its length in front.
fn send_frame(peer: &UnixStream, readable: &[&[u8]]) -> bool {
    let mut skip = HEADER;
    let mut parts: Vec<IoSlice<'_>> = Vec::with_capacity(readable.len() + 1);
    let mut len = 0usize;
    for buf in readable {
        let taken = skip.min(buf.len());
        skip -= taken;
        if let Some(rest) = buf.get(taken..).filter(|r| !r.is_empty()) {
            len += rest.len();
            parts.push(IoSlice::new(rest));
        }
    }
    let Ok(len32) = u32::try_from(len) else {
        return false;
    };
    if len == 0 || len > MAX_FRAME {
        return false;
    }
    let prefix = len32.to_be_bytes();
    parts.insert(0, IoSlice::new(&prefix));
    let mut slices = &mut parts[..];
    while !slices.is_empty() {
        // NOSIGNAL: a peer that went away is a dropped frame, not a SIGPIPE for kbox.
        match rustix::net::sendmsg(
            peer,
            slices,
            &mut rustix::net::SendAncillaryBuffer::default(),
            rustix::net::SendFlags::NOSIGNAL,
        ) {
            Ok(0) => return false,
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return false,
        }
    }
    true
}

/// Frames read from the socket and not yet handed to the kernel.
///
/// The socket is drained eagerly into this buffer, whether or not the driver has
/// buffers: a user-mode stack drops what it cannot write at once (passt does, and then
/// waits for TCP to retransmit), so the socket must never fill while the kernel is
/// busy. TCP's own windows bound what can be in flight, far below [`INBOX_MAX`].
struct Inbox {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Inbox {
    /// The next whole frame, if the buffer holds one.
    fn peek(&self) -> Option<&[u8]> {
        let have = self.buf.get(self.start..self.end)?;
        let len = u32::from_be_bytes(have.get(..4)?.try_into().ok()?) as usize;
        have.get(4..4 + len)
    }

    fn consume(&mut self) {
        if let Some(frame) = self.peek() {
            self.start += 4 + frame.len();
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The next frame's length, when the inbox holds its prefix and nothing after it: the
    /// frame itself is still in the socket.
    fn lone_prefix(&self) -> Option<usize> {
        let have = self.buf.get(self.start..self.end)?;
        let prefix: [u8; PREFIX] = have.try_into().ok()?;
        Some(u32::from_be_bytes(prefix) as usize)
    }

    /// Reads the next frame's length prefix alone, into an empty inbox; false at the end of
    /// the stream. Whether the frame then goes straight to the driver is decided once its
    /// length is known.
    fn read_prefix(&mut self, peer: &UnixStream) -> bool {
        debug_assert!(self.is_empty());
        self.start = 0;
        self.end = 0;
        loop {
            match rustix::io::read(peer, &mut self.buf[..PREFIX]) {
                Ok(0) => return false,
                Ok(n) => {
                    self.end = n;
                    return true;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => return true,
                Err(_) => return false,
            }
        }
    }

    /// A length prefix no device could take: the peer is not speaking the protocol.
    fn garbled(&self) -> bool {
        self.buf
            .get(self.start..self.end)
            .and_then(|h| h.get(..4))
            .is_some_and(|h| {
                let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
                len == 0 || len > MAX_FRAME
            })
    }

    /// Whether there is room to read into (after moving what is left to the front).
    fn make_room(&mut self) -> bool {
        if self.buf.len() - self.end >= READ_CHUNK {
            return true;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < READ_CHUNK && self.buf.len() < INBOX_MAX {
            let grown = (self.buf.len() * 2).clamp(READ_CHUNK, INBOX_MAX);
            self.buf.resize(grown, 0);
        }
        self.buf.len() - self.end >= READ_CHUNK
    }

    /// Reads what the socket has without blocking; false at the end of the stream.
    fn read_available(&mut self, peer: &UnixStream) -> bool {
        while self.make_room() {
            match rustix::io::read(peer, &mut self.buf[self.end..]) {
                Ok(0) => return false,
                Ok(n) => self.end += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => return true,
                Err(_) => return false,
            }
        }
        true
    }
}

/// The header in front of a received frame. flags: DATA_VALID (see [`F_GUEST_CSUM`]);
/// num_buffers: the frame is in this one chain.
fn received_header() -> [u8; HEADER] {
    let mut header = [0u8; HEADER];
    header[0] = 2;
    header[10] = 1;
    header
}

/// Copies `frame` behind a header into the chain's writable buffers; `None` when they
/// cannot hold it.
fn put_frame(chain: &mut Chain<'_>, frame: &[u8]) -> Option<u32> {
    let room: usize = chain.writable.iter().map(|b| b.len()).sum();
    if room < HEADER + frame.len() {
        return None;
    }
    let header = received_header();
    let mut sources = [&header[..], frame];
    let mut written = 0usize;
    for buf in &mut chain.writable {
        let mut at = 0;
        for src in &mut sources {
            let n = src.len().min(buf.len() - at);
            buf[at..at + n].copy_from_slice(&src[..n]);
            *src = &src[n..];
            at += n;
        }
        written += at;
        if sources.iter().all(|s| s.is_empty()) {
            break;
        }
    }
    u32::try_from(written).ok()
}

/// Reads the frame whose prefix the inbox holds, `len` bytes that are all in the socket
/// already, straight into the chain behind its header; the next frame's prefix comes in
/// the same read when the socket has it (`queued` bytes in all). `None` if the socket
/// gave less than it said it had: the stream can no longer be cut into frames.
fn read_into_chain(
    inbox: &mut Inbox,
    peer: &UnixStream,
    chain: &mut Chain<'_>,
    len: usize,
    queued: usize,
) -> Option<u32> {
    let header = received_header();
    let mut header_left = &header[..];
    let mut body_left = len;
    let mut parts: Vec<IoSliceMut<'_>> = Vec::with_capacity(chain.writable.len() + 1);
    for buf in &mut chain.writable {
        let n = header_left.len().min(buf.len());
        buf[..n].copy_from_slice(&header_left[..n]);
        header_left = &header_left[n..];
        let rest = &mut buf[n..];
        let take = body_left.min(rest.len());
        if take > 0 {
            parts.push(IoSliceMut::new(&mut rest[..take]));
            body_left -= take;
        }
        if header_left.is_empty() && body_left == 0 {
            break;
        }
    }
    if body_left > 0 || !header_left.is_empty() {
        return None;
    }
    let next = if queued >= len + PREFIX { PREFIX } else { 0 };
    inbox.start = 0;
    inbox.end = 0;
    parts.push(IoSliceMut::new(&mut inbox.buf[..next]));
    let want = len + next;
    let mut got = 0usize;
    let mut slices = &mut parts[..];
    while got < want {
        match rustix::io::readv(peer, slices) {
            Ok(0) => break,
            Ok(n) => {
                got += n;
                IoSliceMut::advance_slices(&mut slices, n);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => break,
        }
    }
    drop(parts);
    if got < len {
        return None;
    }
    inbox.end = got - len;
    u32::try_from(HEADER + len).ok()
}

/// What one round of handing frames to the kernel came to.
#[derive(Default)]
struct Delivery {
    /// Frames wait in the inbox for want of buffers.
    left_over: bool,
    /// The driver had no buffer left.
    starved: bool,
    /// The stream cannot be read as frames any more, or it ended.
    broken: bool,
}

/// The length of a frame that should be read straight into the driver's buffers: its
/// prefix alone is in the inbox, it is large, and it is all in the socket already.
fn direct_candidate(inbox: &Inbox, peer: &UnixStream) -> Option<(usize, usize)> {
    let len = inbox.lone_prefix().filter(|&len| len >= DIRECT_MIN)?;
    let queued = usize::try_from(rustix::io::ioctl_fionread(peer).ok()?).ok()?;
    (queued >= len).then_some((len, queued))
}

/// Hands the kernel every frame its posted buffers can take: those in the inbox, and
/// large ones straight from the socket.
fn deliver(inbox: &mut Inbox, peer: &UnixStream, device: usize, shared: &Shared) -> Delivery {
    let mut delivery = Delivery::default();
    let has_work =
        inbox.peek().is_some() || inbox.lone_prefix().is_some_and(|len| len >= DIRECT_MIN);
    if !has_work || !kernel::booted() {
        delivery.left_over = inbox.peek().is_some();
        return delivery;
    }
    let mut broken = false;
    let filled = virtio_mmio::fill(device, RX_QUEUE, &mut |chain| loop {
        if let Some(frame) = inbox.peek() {
            match put_frame(chain, frame) {
                Some(written) => {
                    inbox.consume();
                    shared.counters.frames_in.fetch_add(1, Ordering::Relaxed);
                    return Some(written);
                }
                None => {
                    // Larger than the driver's buffers (its MTU): the kernel would drop it too.
                    inbox.consume();
                    shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        }
        let (len, queued) = direct_candidate(inbox, peer)?;
        let room: usize = chain.writable.iter().map(|b| b.len()).sum();
        if room < HEADER + len {
            // Through the inbox, which drops it (above).
            if !inbox.read_available(peer) {
                broken = true;
                return None;
            }
            continue;
        }
        return match read_into_chain(inbox, peer, chain, len, queued) {
            Some(written) => {
                shared.counters.frames_in.fetch_add(1, Ordering::Relaxed);
                Some(written)
            }
            None => {
                broken = true;
                None
            }
        };
    });
    delivery.starved = filled.starved;
    delivery.broken = broken;
    delivery.left_over = filled.starved && inbox.peek().is_some();
    delivery
}

/// The receive thread: socket → receive queue, until the stream ends or the device
/// is removed.
fn receive(peer: UnixStream, device: usize, shared: &Shared) {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut inbox = Inbox {
        buf: vec![0; READ_CHUNK * 2],
        start: 0,
        end: 0,
    };
    let _ = rustix::io::ioctl_fionbio(&peer, true);
    // Buffers the driver posts, and a kernel that is not booted yet, are rechecked at
    // least this often.
    let retry = Timespec {
        tv_sec: 0,
        tv_nsec: 20_000_000,
    };
    loop {
        if shared.stop.load(Ordering::Acquire) || inbox.garbled() {
            return;
        }
        let delivery = deliver(&mut inbox, &peer, device, shared);
        if delivery.broken {
            return;
        }
        let mut fds = [
            PollFd::new(&peer, PollFlags::IN),
            PollFd::new(&shared.posted, PollFlags::IN),
        ];
        let timeout = (delivery.left_over || inbox.peek().is_some()).then_some(&retry);
        if poll(&mut fds, timeout).is_err() {
            continue;
        }
        let (readable, posted) = (!fds[0].revents().is_empty(), !fds[1].revents().is_empty());
        if posted {
            let mut count = [0u8; 8];
            let _ = rustix::io::read(&shared.posted, &mut count);
        }
        if !readable {
            continue;
        }
        let mut open = true;
        if inbox.is_empty() {
            open = inbox.read_prefix(&peer);
        }
        // A large frame whose prefix alone is read, and which is all in the socket, waits
        // there for the next round to read it into the driver's buffers, unless the driver
        // had none: the socket is drained at once otherwise.
        let direct_next = open && !delivery.starved && direct_candidate(&inbox, &peer).is_some();
        if open && !direct_next {
            open = inbox.read_available(&peer);
        }
        if !open {
            // The peer is gone; what was read still reaches the kernel if it can.
            let _ = deliver(&mut inbox, &peer, device, shared);
            return;
        }
    }
}

/// A network device added with [`add_net`]. Dropping it stops its receive thread and
/// closes the socket; drop it before the kernel halts.
pub struct Net {
    peer: UnixStream,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Net {
    pub fn counters(&self) -> NetCounters {
        let c = &self.shared.counters;
        NetCounters {
            frames_out: c.frames_out.load(Ordering::Relaxed),
            frames_in: c.frames_in.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        let _ = rustix::io::write(&self.shared.posted, &1u64.to_ne_bytes());
        let _ = self.peer.shutdown(std::net::Shutdown::Both);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[derive(Debug)]
pub enum NetError {
    /// Devices are described to the kernel on its command line, so only before boot.
    AfterBoot,
    /// The socket cannot be shared with the receive thread.
    Socket(std::io::Error),
    NoInterrupt,
    Thread(std::io::Error),
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AfterBoot => f.write_str("network devices must be added before the kernel boots"),
            Self::Socket(e) => write!(f, "cannot use the network socket: {e}"),
            Self::NoInterrupt => f.write_str("no free interrupt line for a network device"),
            Self::Thread(e) => write!(f, "cannot start the network receive thread: {e}"),
        }
    }
}

impl std::error::Error for NetError {}

/// Adds a network device (the kernel names it eth0, eth1... in order) whose frames go to
/// and come from `peer`. Must run before [`crate::Kernel::boot`].
pub fn add_net(peer: UnixStream, config: NetConfig) -> Result<Net, NetError> {
    if kernel::booted() || virtio_mmio::frozen() {
        return Err(NetError::AfterBoot);
    }
    let mut bytes = [0u8; 12];
    bytes[..6].copy_from_slice(&config.mac);
    // status (not offered), max_virtqueue_pairs = 1, mtu.
    bytes[8..10].copy_from_slice(&1u16.to_le_bytes());
    bytes[10..12].copy_from_slice(&config.mtu.to_le_bytes());
    let posted = rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
    )
    .map_err(|e| NetError::Socket(e.into()))?;
    let shared = Arc::new(Shared {
        posted,
        stop: AtomicBool::new(false),
        counters: Counters::default(),
    });
    let tx = peer.try_clone().map_err(NetError::Socket)?;
    let rx = peer.try_clone().map_err(NetError::Socket)?;
    let device = virtio_mmio::register(Box::new(NetDevice {
        peer: tx,
        config: bytes,
        shared: Arc::clone(&shared),
    }))
    .map_err(|_| NetError::NoInterrupt)?;
    let for_thread = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name("kbox-net-rx".into())
        .spawn(move || receive(rx, device, &for_thread))
        .map_err(NetError::Thread)?;
    Ok(Net {
        peer,
        shared,
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_spreads_over_the_chain_behind_its_header() {
        let mut a = [0xffu8; 8];
        let mut b = [0xffu8; 16];
        let mut chain = Chain {
            readable: Vec::new(),
            writable: vec![&mut a[..], &mut b[..]],
        };
        let frame: Vec<u8> = (1..=10).collect();
        assert_eq!(put_frame(&mut chain, &frame), Some(22));
        assert_eq!(a, [2, 0, 0, 0, 0, 0, 0, 0]);
        // The header's last four bytes: gso fields, then num_buffers = 1.
        assert_eq!(&b[..4], &[0, 0, 1, 0]);
        assert_eq!(&b[4..14], &frame[..]);
        assert_eq!(&b[14..], &[0xff; 2]);
    }

    #[test]
    fn a_frame_larger_than_the_chain_is_refused() {
        let mut a = [0u8; 20];
        let mut chain = Chain {
            readable: Vec::new(),
            writable: vec![&mut a[..]],
        };
        assert_eq!(put_frame(&mut chain, &[7u8; 9]), None);
    }

    #[test]
    fn frames_are_cut_at_their_length_prefixes() {
        let mut inbox = Inbox {
            buf: vec![0, 0, 0, 2, 9, 8, 0, 0, 0, 3, 1, 2],
            start: 0,
            end: 12,
        };
        assert_eq!(inbox.peek(), Some(&[9u8, 8][..]));
        inbox.consume();
        // The second frame is not whole yet.
        assert_eq!(inbox.peek(), None);
        assert!(!inbox.garbled());
        inbox.buf[4..8].copy_from_slice(&0x0010_0000u32.to_be_bytes());
        inbox.start = 4;
        assert!(inbox.garbled());
    }

    #[test]
    fn a_large_frame_whole_in_the_socket_is_read_straight_into_the_chain() {
        use std::io::Write;
        let (mut a, b) = UnixStream::pair().expect("socket pair");
        b.set_nonblocking(true).expect("nonblocking");
        let frame: Vec<u8> = (0..DIRECT_MIN + 100)
            .map(|i| u8::try_from(i % 251).unwrap_or(0))
            .collect();
        let len = u32::try_from(frame.len()).expect("len").to_be_bytes();
        a.write_all(&len).expect("prefix");
        a.write_all(&frame[..100]).expect("part of the frame");
        let mut inbox = Inbox {
            buf: vec![0; READ_CHUNK * 2],
            start: 0,
            end: 0,
        };
        assert!(inbox.read_prefix(&b));
        assert_eq!(inbox.lone_prefix(), Some(frame.len()));
        // Not all of it is in the socket yet.
        assert_eq!(direct_candidate(&inbox, &b), None);
        a.write_all(&frame[100..]).expect("rest of the frame");
        a.write_all(&[0, 0]).expect("half the next prefix");
        let (got_len, queued) = direct_candidate(&inbox, &b).expect("a candidate");
        assert_eq!((got_len, queued), (frame.len(), frame.len() + 2));
        let mut first = vec![0xffu8; 10];
        let mut second = vec![0xffu8; DIRECT_MIN + 200];
        let mut chain = Chain {
            readable: Vec::new(),
            writable: vec![&mut first[..], &mut second[..]],
        };
        let written = read_into_chain(&mut inbox, &b, &mut chain, got_len, queued);
        assert_eq!(
            written,
            Some(u32::try_from(HEADER + frame.len()).expect("size"))
        );
        let mut all = first.clone();
        all.extend_from_slice(&second);
        assert_eq!(&all[..HEADER], &received_header());
        assert_eq!(&all[HEADER..HEADER + frame.len()], &frame[..]);
        // Half a prefix is left in the socket, for the next round.
        assert!(inbox.is_empty());
        // A small frame is never a candidate: it goes through the inbox.
        a.write_all(&[0, 8]).expect("the rest of the prefix");
        assert!(inbox.read_prefix(&b));
        assert_eq!(inbox.lone_prefix(), Some(8));
        assert_eq!(direct_candidate(&inbox, &b), None);
    }

    #[test]
    fn the_next_prefix_comes_in_the_same_read_when_it_is_all_there() {
        use std::io::Write;
        let (mut a, b) = UnixStream::pair().expect("socket pair");
        b.set_nonblocking(true).expect("nonblocking");
        a.write_all(&[1, 2, 3, 4, 0, 0, 0, 9, 7])
            .expect("a frame, a prefix, a byte");
        let mut inbox = Inbox {
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: PREFIX,
        };
        inbox.buf[..PREFIX].copy_from_slice(&[0, 0, 0, 4]);
        let mut room = [0u8; HEADER + 4];
        let mut chain = Chain {
            readable: Vec::new(),
            writable: vec![&mut room[..]],
        };
        assert_eq!(read_into_chain(&mut inbox, &b, &mut chain, 4, 9), Some(16));
        assert_eq!(&room[HEADER..], &[1, 2, 3, 4]);
        assert_eq!(inbox.lone_prefix(), Some(9));
        // The next frame's own bytes stay in the socket.
        assert_eq!(rustix::io::ioctl_fionread(&b).expect("queued"), 1);
    }

    #[test]
    fn a_sent_frame_loses_its_header_and_gains_its_length() {
        use std::io::Read;
        let (a, mut b) = UnixStream::pair().expect("socket pair");
        let header = [0u8; HEADER];
        let body = [5u8, 6, 7];
        assert!(send_frame(&a, &[&header[..8], &header[8..], &body]));
        let mut got = [0u8; 7];
        b.read_exact(&mut got).expect("the frame");
        assert_eq!(got, [0, 0, 0, 3, 5, 6, 7]);
        // A header alone is no frame.
        assert!(!send_frame(&a, &[&header[..]]));
    }
}
