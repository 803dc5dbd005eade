//! The DNS server at 10.0.2.3 in `--net=user`: a relay, inside the kernel library's
//! network, that passes each query to the host's resolver over a host socket and the
//! answer back.
//!
//! passt has a DNS forwarder of its own, but the one Debian ships gives an answer from a
//! resolver on the host's loopback (systemd-resolved's 127.0.0.53, a local dnsmasq) the
//! gateway's address as its source, which resolvers then reject; a host socket of kbox's
//! reaches any resolver the host can, loopback ones included. Queries are relayed one at
//! a time (a lookup's A and AAAA queries are answered in turn); DNS over TCP is not.
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kbox_core::sysno::generic as g;
use kbox_lkl::{Errno, Task};

const AF_INET: usize = 2;
const SOCK_DGRAM: usize = 2;
const SHUT_RDWR: usize = 2;
/// How long the host's resolver has to answer one query.
const ANSWER_WITHIN: Duration = Duration::from_secs(4);

/// The running relay; dropping it stops it.
pub struct DnsRelay {
    stop: Arc<AtomicBool>,
    /// A task sharing the relay's socket, to shut it down (which ends a blocked receive).
    control: Task,
    socket: usize,
    thread: Option<JoinHandle<()>>,
}

/// Starts relaying queries sent to `listen`:53 (an address of the kernel library's) to
/// `upstream`.
pub fn start(root: &Task, listen: Ipv4Addr, upstream: SocketAddr) -> Result<DnsRelay, Errno> {
    let task = crate::dispatch::fork_helper(root, 0)?;
    let socket = task.syscall(g::SOCKET, [AF_INET, SOCK_DGRAM, 0, 0, 0, 0])?;
    let addr = super::iface::sockaddr_in_port(listen, 53);
    task.syscall(
        g::BIND,
        [socket, addr.as_ptr() as usize, addr.len(), 0, 0, 0],
    )?;
    let control =
        crate::dispatch::fork_helper(&task, i32::try_from(socket).map_err(|_| Errno::EBADF)?)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("kbox-dns".into())
        .spawn(move || relay(&task, socket, upstream, &stopped))
        .map_err(|_| Errno::EAGAIN)?;
    Ok(DnsRelay {
        stop,
        control,
        socket,
        thread: Some(thread),
    })
}

impl Drop for DnsRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self
            .control
            .syscall(g::SHUTDOWN, [self.socket, SHUT_RDWR, 0, 0, 0, 0]);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn relay(task: &Task, socket: usize, upstream: SocketAddr, stop: &AtomicBool) {
    let mut query = [0u8; 4096];
    while !stop.load(Ordering::Acquire) {
        let mut from = [0u8; 16];
        let mut from_len: u32 = 16;
        let got = task.syscall(
            g::RECVFROM,
            [
                socket,
                query.as_mut_ptr() as usize,
                query.len(),
                0,
                from.as_mut_ptr() as usize,
                (&raw mut from_len) as usize,
            ],
        );
        let n = match got {
            Ok(0) if stop.load(Ordering::Acquire) => return,
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(_) => return,
        };
        // A query has at least its 12-byte header.
        let Some(query) = query.get(..n).filter(|q| q.len() >= 12) else {
            continue;
        };
        if let Some(answer) = ask(upstream, query) {
            let _ = task.syscall(
                g::SENDTO,
                [
                    socket,
                    answer.as_ptr() as usize,
                    answer.len(),
                    0,
                    from.as_ptr() as usize,
                    from_len as usize,
                ],
            );
        }
    }
}

/// The upstream resolver's answer to `query` (matched by its id), if one comes in time.
fn ask(upstream: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let local: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let host = UdpSocket::bind(local).ok()?;
    host.connect(upstream).ok()?;
    host.send(query).ok()?;
    let deadline = Instant::now() + ANSWER_WITHIN;
    let mut answer = vec![0u8; 4096];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        host.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        let n = host.recv(&mut answer).ok()?;
        if n >= 12 && answer[..2] == query[..2] {
            answer.truncate(n);
            return Some(answer);
        }
    }
}

/// The first resolver the host's /etc/resolv.conf names.
pub fn host_resolver() -> Option<std::net::IpAddr> {
    let conf = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    conf.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some("nameserver"))
            .then(|| words.next()?.split('%').next()?.parse().ok())
            .flatten()
    })
}
