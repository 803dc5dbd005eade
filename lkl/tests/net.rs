//! The network device's vhost-user front-end, against a back-end played by this test: what
//! it tells the back-end at boot (features, the kernel's memory, the rings, the eventfds),
//! and that kicks and interrupts pass through those eventfds.
mod common;

use common::mount_proc;
use kbox_lkl::sys::Syscalls;
use kbox_lkl::{BootConfig, Kernel, NetConfig, add_net, sysno};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::Duration;

const F_VERSION_1: u64 = 1 << 32;
const F_MRG_RXBUF: u64 = 1 << 15;
const F_PROTOCOL_FEATURES: u64 = 1 << 30;
const SET_OWNER: u32 = 3;
const GET_FEATURES: u32 = 1;
const SET_FEATURES: u32 = 2;
const SET_MEM_TABLE: u32 = 5;
const SET_VRING_NUM: u32 = 8;
const SET_VRING_ADDR: u32 = 9;
const SET_VRING_BASE: u32 = 10;
const SET_VRING_KICK: u32 = 12;
const SET_VRING_CALL: u32 = 13;

struct Message {
    request: u32,
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"))
}

/// Reads one message: header, payload, FDs.
fn receive(sock: &UnixStream) -> Option<Message> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
    let mut header = [0u8; 12];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
    let got = recvmsg(
        sock,
        &mut [std::io::IoSliceMut::new(&mut header)],
        &mut ancillary,
        RecvFlags::WAITALL,
    )
    .ok()?;
    if got.bytes != header.len() {
        return None;
    }
    let mut fds = Vec::new();
    for m in ancillary.drain() {
        if let RecvAncillaryMessage::ScmRights(got) = m {
            fds.extend(got);
        }
    }
    let mut payload = vec![0u8; u32_at(&header, 8) as usize];
    if !payload.is_empty() {
        rustix::net::recv(sock, &mut payload, RecvFlags::WAITALL).ok()?;
    }
    Some(Message {
        request: u32_at(&header, 0),
        payload,
        fds,
    })
}

/// The back-end: answers GET_FEATURES and hands every message to the test.
fn back_end(sock: UnixStream, out: mpsc::Sender<Message>) {
    while let Some(m) = receive(&sock) {
        if m.request == GET_FEATURES {
            let mut reply = Vec::new();
            for w in [GET_FEATURES, 1 | 4, 8] {
                reply.extend_from_slice(&w.to_le_bytes());
            }
            let features = F_VERSION_1 | F_MRG_RXBUF | F_PROTOCOL_FEATURES;
            reply.extend_from_slice(&features.to_le_bytes());
            rustix::io::write(&sock, &reply).expect("reply");
        }
        if out.send(m).is_err() {
            return;
        }
    }
}

fn interrupts(k: &Kernel) -> u64 {
    let fd = k
        .open(c"/proc/interrupts", 0, 0)
        .expect("open /proc/interrupts");
    let mut buf = vec![0u8; 8192];
    let n = k.read(fd, &mut buf).expect("read /proc/interrupts");
    let _ = k.close(fd);
    // The device's line is the one named after virtio's MMIO transport: "N: COUNT ... virtioX".
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .filter(|l| l.contains("virtio"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

fn eventfd_count(fd: &OwnedFd) -> u64 {
    let mut count = [0u8; 8];
    match rustix::io::read(fd, &mut count) {
        Ok(8) => u64::from_ne_bytes(count),
        _ => 0,
    }
}

#[test]
fn the_back_end_gets_the_kernels_memory_and_rings_and_kicks_and_interrupts_pass() {
    let (front, back) = UnixStream::pair().expect("socket pair");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || back_end(back, tx));
    let config = NetConfig {
        mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
        mtu: 65520,
    };
    let _net = add_net(front, config).expect("add the device");
    let k = Kernel::boot(&BootConfig::default()).expect("kernel boots");

    // Everything the driver's probe made the front-end say, up to the last ring's kick.
    let mut messages = Vec::new();
    loop {
        let m = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the front-end goes on");
        let done = m.request == SET_VRING_KICK && u64_at(&m.payload, 0) == 1;
        messages.push(m);
        if done {
            break;
        }
    }
    let requests: Vec<u32> = messages.iter().map(|m| m.request).collect();
    let ring = [
        SET_VRING_NUM,
        SET_VRING_BASE,
        SET_VRING_ADDR,
        SET_VRING_CALL,
        SET_VRING_KICK,
    ];
    let mut expected = vec![SET_OWNER, GET_FEATURES, SET_FEATURES, SET_MEM_TABLE];
    expected.extend(ring);
    expected.extend(ring);
    assert_eq!(requests, expected);

    // Modern, merged receive buffers, and no protocol extension (so rings start enabled).
    let features = u64_at(&messages[2].payload, 0);
    assert_eq!(
        features & (F_VERSION_1 | F_MRG_RXBUF),
        F_VERSION_1 | F_MRG_RXBUF
    );
    assert_eq!(features & F_PROTOCOL_FEATURES, 0, "{features:#x}");

    // One region, with the memfd of the kernel's RAM.
    let table = &messages[3];
    assert_eq!(u32_at(&table.payload, 0), 1, "one region");
    let (size, start) = (u64_at(&table.payload, 16), u64_at(&table.payload, 24));
    let len = usize::try_from(size).expect("the region fits the address space");
    assert_eq!(table.fds.len(), 1);
    let stat = rustix::fs::fstat(&table.fds[0]).expect("fstat the region's fd");
    assert_eq!(stat.st_size.cast_unsigned(), size, "the file is the region");
    // SAFETY: a fresh shared read-only mapping of the region's file, unmapped below.
    let mapped = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            rustix::mm::ProtFlags::READ,
            rustix::mm::MapFlags::SHARED,
            &table.fds[0],
            0,
        )
    }
    .expect("map the region")
    .cast::<u8>();

    // Each ring lies in the region, and the file holds what the kernel wrote there: the
    // same bytes through the back-end's mapping as at the kernel's address.
    let mut calls = Vec::new();
    let mut kicks = Vec::new();
    for q in 0..2u32 {
        let base = 4 + 5 * q as usize;
        assert_eq!(u32_at(&messages[base].payload, 0), q);
        assert_eq!(u32_at(&messages[base].payload, 4), 256, "ring size");
        assert_eq!(
            u32_at(&messages[base + 1].payload, 4),
            0,
            "rings start at 0"
        );
        let addr = &messages[base + 2].payload;
        for i in 0..3 {
            let at = u64_at(addr, 8 + 8 * i);
            assert!(
                at >= start && at + 16 <= start + size,
                "ring {q} part {i} at {at:#x}"
            );
            // SAFETY: `at` is inside the kernel's RAM (checked above) and in the mapping.
            let (ours, theirs) = unsafe {
                (
                    std::slice::from_raw_parts(at as *const u8, 16).to_vec(),
                    std::slice::from_raw_parts(
                        mapped.add(usize::try_from(at - start).expect("in the region")),
                        16,
                    )
                    .to_vec(),
                )
            };
            assert_eq!(ours, theirs, "ring {q} part {i}");
        }
        assert_eq!(messages[base + 3].fds.len(), 1, "call fd");
        assert_eq!(messages[base + 4].fds.len(), 1, "kick fd");
        calls.push(messages[base + 3].fds[0].try_clone().expect("dup"));
        kicks.push(messages[base + 4].fds[0].try_clone().expect("dup"));
    }
    // SAFETY: the mapping made above, no longer used.
    let _ = unsafe { rustix::mm::munmap(mapped.cast(), len) };

    // Bringing eth0 up posts receive buffers: a kick of queue 0 reaches the back-end.
    let _ = eventfd_count(&kicks[0]);
    let sock = k
        .syscall(sysno::SOCKET, [2, 2, 0, 0, 0, 0])
        .expect("socket");
    let mut ifr = [0u8; 40];
    ifr[..4].copy_from_slice(b"eth0");
    let ifreq = |ifr: &mut [u8; 40]| ifr.as_mut_ptr() as usize;
    k.syscall(sysno::IOCTL, [sock, 0x8913, ifreq(&mut ifr), 0, 0, 0])
        .expect("SIOCGIFFLAGS");
    ifr[16] |= 1; // IFF_UP
    k.syscall(sysno::IOCTL, [sock, 0x8914, ifreq(&mut ifr), 0, 0, 0])
        .expect("SIOCSIFFLAGS");
    let _ = k.syscall(sysno::CLOSE, [sock, 0, 0, 0, 0, 0]);
    assert!(
        eventfd_count(&kicks[0]) > 0,
        "no kick for the receive queue"
    );

    // The back-end's call raises the device's interrupt.
    mount_proc(&k);
    let before = interrupts(&k);
    rustix::io::write(calls[0].as_fd(), &1u64.to_ne_bytes()).expect("call");
    let mut after = before;
    for _ in 0..200 {
        after = interrupts(&k);
        if after > before {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(after > before, "interrupts stayed at {before}");
}
