//! `--net`: what a guest's internet sockets reach. A server the test starts on the host's
//! 127.0.0.1 answers the same client run natively and in the guest in host mode; the same
//! call fails with `--net=none` (the guest's loopback is then the kernel library's, where
//! nothing listens), so each run shows the other could fail. Only this machine's loopback is used. `make check-kbox` sets
//! the image variables.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Image, expect, text};

/// A one-page HTTP server on 127.0.0.1 serving `body`, counting connections, for `life`.
fn http_server(body: String, life: Duration) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let port = listener.local_addr().expect("address").port();
    listener.set_nonblocking(true).expect("nonblocking");
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    std::thread::spawn(move || {
        let end = Instant::now() + life;
        while Instant::now() < end {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    seen.fetch_add(1, Ordering::SeqCst);
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut req = [0u8; 1024];
                    let _ = conn.read(&mut req);
                    let _ = write!(
                        conn,
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    (port, count)
}

fn token(tag: &str) -> String {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{tag}-{}-{ns}", std::process::id())
}

#[test]
fn host_mode_reaches_a_tcp_server_on_the_hosts_loopback_and_none_does_not() {
    let img = Image::default("net-tcp");
    let body = token("served");
    let (port, connections) = http_server(body.clone(), Duration::from_secs(60));
    let url = format!("http://127.0.0.1:{port}/");
    // Natively first, with the host's own busybox (make deps installs busybox-static).
    let native = Command::new("busybox")
        .args(["wget", "-q", "-O", "-", &url])
        .output()
        .expect("busybox on the host");
    assert_eq!(expect(&native, 0), body);
    let out = img.run(&["--net=host", "-S"], &["wget", "-q", "-O", "-", &url]);
    assert_eq!(expect(&out, 0), body);
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    let out = img.run(&["-S"], &["wget", "-q", "-O", "-", &url]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("refused"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        connections.load(Ordering::SeqCst),
        2,
        "--net=none reached the host"
    );
}

#[test]
fn host_mode_reaches_a_udp_echo_on_the_hosts_loopback_and_none_does_not() {
    let img = Image::copy_of("KBOX_DEBIAN", "net-udp");
    let echo = UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let port = echo.local_addr().expect("address").port();
    echo.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let answered = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&answered);
    std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(60);
        let mut buf = [0u8; 256];
        while Instant::now() < end {
            if let Ok((n, from)) = echo.recv_from(&mut buf) {
                count.fetch_add(1, Ordering::SeqCst);
                let mut reply = b"echo:".to_vec();
                reply.extend_from_slice(&buf[..n]);
                let _ = echo.send_to(&reply, from);
            }
        }
    });
    let probe = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.settimeout(2)\n\
         s.sendto(b'ping', ('127.0.0.1', {port}))\n\
         print(s.recvfrom(256)[0].decode())"
    );
    // Natively first, with the host's python3.
    let native = Command::new("python3")
        .args(["-c", &probe])
        .output()
        .expect("python3 on the host");
    assert_eq!(expect(&native, 0), "echo:ping\n");
    let out = img.run(&["--net=host", "-S"], &["/usr/bin/python3", "-c", &probe]);
    assert_eq!(expect(&out, 0), "echo:ping\n");
    let out = img.run(&["-S"], &["/usr/bin/python3", "-c", &probe]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert_eq!(
        answered.load(Ordering::SeqCst),
        2,
        "--net=none reached the host"
    );
}

#[test]
fn guest_sockets_between_guest_processes_still_work_in_host_mode() {
    // Unix sockets stay the kernel library's; internet ones between two guest processes
    // now meet on the host's loopback. sockets.c checks both (it passes natively too).
    let img = Image::default("net-sockets");
    let out = img.run(&["--net=host", "-S"], &["/opt/kbox-tests/sockets", "/tmp"]);
    let stdout = expect(&out, 0);
    assert!(stdout.contains("ok accepted6"), "{stdout}");
    img.assert_clean();
}
