//! Network over vhost-user: a virtio network device whose queues a back-end in another
//! process (passt with `--vhost-user`) serves itself, in the kernel's own memory.
//!
//! kbox keeps the device's registers and configuration; the back-end maps the kernel's
//! RAM (a memfd, see `host::share_ram`) and reads sent frames from, and writes received
//! ones into, the driver's buffers directly. Compared with frames over a stream socket
//! (qemu's stream protocol, which passt also speaks), that saves two copies of every
//! byte and a system call per frame each way.
//! The driver's kicks reach the back-end as eventfd writes; the back-end's "used buffers"
//! eventfds wake a thread of the device's, which raises the interrupt.
//!
//! The protocol (vhost-user, as QEMU defines it) runs on a connected unix stream socket:
//! a 12-byte header (request, flags, payload size), a payload, and FDs as ancillary
//! data. kbox asks only what a front-end must: it negotiates no protocol features, so
//! every ring starts enabled and no request is acknowledged but those with a reply.
use crate::host;
use crate::virtio_mmio::{self, Chain, Device, F_VERSION_1, Ring};
use std::fmt;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::JoinHandle;

/// How the device presents itself to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The interface's MAC address.
    pub mac: [u8; 6],
    /// The largest IP packet.
    pub mtu: u16,
}

const DEVICE_ID_NET: u32 = 1;
const F_MTU: u64 = 1 << 3;
const F_MAC: u64 = 1 << 5;
/// Received frames may span several of the driver's buffers: the back-end needs it.
const F_MRG_RXBUF: u64 = 1 << 15;
/// In the back-end's feature word: it speaks the protocol-features extension (not used).
const F_PROTOCOL_FEATURES: u64 = 1 << 30;

const GET_FEATURES: u32 = 1;
const SET_FEATURES: u32 = 2;
const SET_OWNER: u32 = 3;
const SET_MEM_TABLE: u32 = 5;
const SET_VRING_NUM: u32 = 8;
const SET_VRING_ADDR: u32 = 9;
const SET_VRING_BASE: u32 = 10;
const SET_VRING_KICK: u32 = 12;
const SET_VRING_CALL: u32 = 13;
const VERSION: u32 = 1;
const REPLY: u32 = 1 << 2;
const HEADER: usize = 12;
const QUEUES: usize = 2;

#[derive(Debug)]
pub enum NetError {
    /// Devices are described to the kernel on its command line, so only before boot.
    AfterBoot,
    /// The socket to the back-end failed.
    Control(std::io::Error),
    /// The back-end's answer was not the one asked for.
    Protocol(&'static str),
    /// The back-end cannot serve a modern device with merged receive buffers.
    Features(u64),
    NoInterrupt,
    Thread(std::io::Error),
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AfterBoot => f.write_str("network devices must be added before the kernel boots"),
            Self::Control(e) => write!(f, "cannot talk to the vhost-user back-end: {e}"),
            Self::Protocol(what) => write!(f, "the vhost-user back-end answered {what}"),
            Self::Features(got) => write!(
                f,
                "the vhost-user back-end lacks virtio 1.0 or merged receive buffers (features {got:#x})"
            ),
            Self::NoInterrupt => f.write_str("no free interrupt line for a network device"),
            Self::Thread(e) => write!(f, "cannot start the network interrupt thread: {e}"),
        }
    }
}

impl std::error::Error for NetError {}

fn eventfd() -> std::io::Result<OwnedFd> {
    Ok(rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
    )?)
}

/// Sends request `request` with `payload` and `fds`.
fn send(
    control: &UnixStream,
    request: u32,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> std::io::Result<()> {
    let mut header = [0u8; HEADER];
    header[..4].copy_from_slice(&request.to_le_bytes());
    header[4..8].copy_from_slice(&VERSION.to_le_bytes());
    let size = u32::try_from(payload.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    header[8..].copy_from_slice(&size.to_le_bytes());
    let parts = [IoSlice::new(&header), IoSlice::new(payload)];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut ancillary = rustix::net::SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !ancillary.push(rustix::net::SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    let total = HEADER + payload.len();
    // A message this small goes whole on a stream socket, or the socket failed.
    let sent = rustix::net::sendmsg(
        control,
        &parts,
        &mut ancillary,
        rustix::net::SendFlags::NOSIGNAL,
    )?;
    if sent != total {
        return Err(std::io::ErrorKind::WriteZero.into());
    }
    Ok(())
}

/// Asks `request` and reads its 64-bit answer.
fn ask_u64(control: &UnixStream, request: u32) -> Result<u64, NetError> {
    send(control, request, &[], &[]).map_err(NetError::Control)?;
    let mut header = [0u8; HEADER];
    let mut value = [0u8; 8];
    let mut got = 0;
    while got < HEADER + 8 {
        let (h, v) = (got.min(HEADER), got.saturating_sub(HEADER));
        let mut parts = [
            IoSliceMut::new(&mut header[h..]),
            IoSliceMut::new(&mut value[v..]),
        ];
        let n = rustix::io::readv(control, &mut parts).map_err(|e| NetError::Control(e.into()))?;
        if n == 0 {
            return Err(NetError::Protocol("nothing (it closed the socket)"));
        }
        got += n;
    }
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    if word(0) != request || word(4) & REPLY == 0 || word(8) != 8 {
        return Err(NetError::Protocol("a different request than the one asked"));
    }
    Ok(u64::from_le_bytes(value))
}

fn pair(a: u32, b: u32) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&a.to_le_bytes());
    out[4..].copy_from_slice(&b.to_le_bytes());
    out
}

struct NetDevice {
    control: UnixStream,
    config: [u8; 12],
    /// What the back-end offered (GET_FEATURES).
    backend: u64,
    /// Written on the driver's kicks, one per queue (the back-end's ends are dups).
    kicks: [OwnedFd; QUEUES],
    /// The back-end writes these when it used buffers; the interrupt thread reads them.
    calls: [OwnedFd; QUEUES],
}

impl NetDevice {
    /// Tells the back-end the negotiated features, the kernel's memory and the rings.
    fn start(&self, features: u64, rings: &[Ring]) -> std::io::Result<()> {
        let ram = host::shared_ram().ok_or(std::io::ErrorKind::NotFound)?;
        let first = rings.first().ok_or(std::io::ErrorKind::InvalidInput)?;
        // DMA addresses are the RAM's own offsets from a base the kernel chose.
        let base = first.desc - (virtio_mmio::host_address(first.desc) - ram.start) as u64;
        let c = &self.control;
        send(
            c,
            SET_FEATURES,
            &(features & self.backend).to_le_bytes(),
            &[],
        )?;
        // One region: (guest address, size, address here, offset in the file).
        let mut table = Vec::with_capacity(40);
        table.extend_from_slice(&pair(1, 0));
        for v in [base, ram.size as u64, ram.start as u64, 0] {
            table.extend_from_slice(&v.to_le_bytes());
        }
        send(c, SET_MEM_TABLE, &table, &[ram.fd.as_fd()])?;
        for (index, ring) in (0u32..).zip(rings) {
            let i = index as usize;
            send(c, SET_VRING_NUM, &pair(index, ring.num), &[])?;
            send(c, SET_VRING_BASE, &pair(index, 0), &[])?;
            let mut addr = Vec::with_capacity(40);
            addr.extend_from_slice(&pair(index, 0));
            for dma in [ring.desc, ring.used, ring.avail] {
                addr.extend_from_slice(&(virtio_mmio::host_address(dma) as u64).to_le_bytes());
            }
            addr.extend_from_slice(&0u64.to_le_bytes());
            send(c, SET_VRING_ADDR, &addr, &[])?;
            // The call before the kick: the kick starts the queue, which may use buffers.
            send(
                c,
                SET_VRING_CALL,
                &u64::from(index).to_le_bytes(),
                &[self.calls[i].as_fd()],
            )?;
            send(
                c,
                SET_VRING_KICK,
                &u64::from(index).to_le_bytes(),
                &[self.kicks[i].as_fd()],
            )?;
        }
        Ok(())
    }
}

impl Device for NetDevice {
    fn device_id(&self) -> u32 {
        DEVICE_ID_NET
    }

    fn features(&self) -> u64 {
        F_MAC | F_MTU | F_MRG_RXBUF
    }

    fn transport_features(&self) -> u64 {
        F_VERSION_1
    }

    fn config(&self) -> &[u8] {
        &self.config
    }

    fn queue_count(&self) -> usize {
        QUEUES
    }

    fn serve(&mut self, _queue: usize, _chain: &mut Chain<'_>) -> u32 {
        0
    }

    fn kick(&mut self, queue: usize) -> bool {
        if let Some(kick) = self.kicks.get(queue) {
            // A full counter (never, at 2^64 - 1) still wakes the back-end.
            let _ = rustix::io::write(kick, &1u64.to_ne_bytes());
        }
        true
    }

    fn driver_ok(&mut self, features: u64, rings: &[Ring]) {
        if let Err(e) = self.start(features, rings) {
            // The device then never moves a frame; the interface's counters show it.
            eprintln!("kbox: cannot start the network device's back-end: {e}");
        }
    }
}

/// A network device added with [`add_net`]. Dropping it stops its interrupt thread
/// and closes the back-end's socket (passt then exits); drop it before the kernel halts.
pub struct Net {
    control: UnixStream,
    stop: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = rustix::io::write(&*self.stop, &1u64.to_ne_bytes());
        let _ = self.control.shutdown(std::net::Shutdown::Both);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Raises the device's interrupt whenever the back-end says it used buffers.
fn relay_interrupts(device: usize, calls: [OwnedFd; QUEUES], stop: &OwnedFd) {
    use rustix::event::{PollFd, PollFlags, poll};
    loop {
        let mut fds = [
            PollFd::new(&calls[0], PollFlags::IN),
            PollFd::new(&calls[1], PollFlags::IN),
            PollFd::new(stop, PollFlags::IN),
        ];
        if poll(&mut fds, None).is_err() {
            continue;
        }
        if !fds[2].revents().is_empty() {
            return;
        }
        let mut raised = false;
        for call in &calls {
            let mut count = [0u8; 8];
            if rustix::io::read(call, &mut count).is_ok() {
                raised = true;
            }
        }
        if raised {
            virtio_mmio::interrupt(device);
        }
    }
}

/// Adds a network device (eth0, eth1... in order) served by the vhost-user back-end on
/// `control`. Must run before [`crate::Kernel::boot`]; asks for the kernel's RAM to be
/// shared memory.
pub fn add_net(control: UnixStream, config: NetConfig) -> Result<Net, NetError> {
    if crate::kernel::booted() || virtio_mmio::frozen() {
        return Err(NetError::AfterBoot);
    }
    send(&control, SET_OWNER, &[], &[]).map_err(NetError::Control)?;
    let backend = ask_u64(&control, GET_FEATURES)?;
    let needed = F_VERSION_1 | F_MRG_RXBUF;
    if backend & needed != needed {
        return Err(NetError::Features(backend));
    }
    host::share_ram();
    let mut bytes = [0u8; 12];
    bytes[..6].copy_from_slice(&config.mac);
    // status (not offered), max_virtqueue_pairs = 1, mtu.
    bytes[8..10].copy_from_slice(&1u16.to_le_bytes());
    bytes[10..12].copy_from_slice(&config.mtu.to_le_bytes());
    let fds = || -> std::io::Result<[OwnedFd; QUEUES]> { Ok([eventfd()?, eventfd()?]) };
    let kicks = fds().map_err(NetError::Control)?;
    let calls = fds().map_err(NetError::Control)?;
    let read_calls = [
        calls[0].try_clone().map_err(NetError::Control)?,
        calls[1].try_clone().map_err(NetError::Control)?,
    ];
    let stop = Arc::new(eventfd().map_err(NetError::Control)?);
    let device = virtio_mmio::register(Box::new(NetDevice {
        control: control.try_clone().map_err(NetError::Control)?,
        config: bytes,
        backend: backend & !F_PROTOCOL_FEATURES,
        kicks,
        calls,
    }))
    .map_err(|_| NetError::NoInterrupt)?;
    let for_thread = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("kbox-net-irq".into())
        .spawn(move || relay_interrupts(device, read_calls, &for_thread))
        .map_err(NetError::Thread)?;
    Ok(Net {
        control,
        stop,
        thread: Some(thread),
    })
}
