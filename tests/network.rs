//! `--net`: what a guest's internet sockets reach. A server the test starts on the host's
//! 127.0.0.1 answers the same client run natively and in the guest, in host mode (at
//! 127.0.0.1) and user mode (at 10.0.2.2, passt's way to the host's loopback); the same
//! call fails with `--net=none` (the guest's loopback is then the kernel library's, where
//! nothing listens, and it has no other network), so each run shows the other could fail.
//! Only this machine's loopback is used. `make check-kbox` sets the image variables.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
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

/// A UDP echo on 127.0.0.1 (answers "echo:" + the datagram), counting answers, for `life`.
fn udp_echo(life: Duration) -> (u16, Arc<AtomicUsize>) {
    let echo = UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let port = echo.local_addr().expect("address").port();
    echo.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let answered = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&answered);
    std::thread::spawn(move || {
        let end = Instant::now() + life;
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
    (port, answered)
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
    let (port, answered) = udp_echo(Duration::from_secs(60));
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

#[test]
fn user_mode_reaches_the_hosts_loopback_at_the_gateway_and_none_does_not() {
    let img = Image::default("net-user-tcp");
    let body = token("through-passt");
    let (port, connections) = http_server(body.clone(), Duration::from_secs(60));
    let native = Command::new("busybox")
        .args([
            "wget",
            "-q",
            "-O",
            "-",
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .expect("busybox on the host");
    assert_eq!(expect(&native, 0), body);
    let url = format!("http://10.0.2.2:{port}/");
    let out = img.run(&["--net=user", "-S"], &["wget", "-q", "-O", "-", &url]);
    assert_eq!(expect(&out, 0), body, "{}", text(&out.stderr));
    // A bare --net is user mode.
    let out = img.run(&["--net", "-S"], &["wget", "-q", "-O", "-", &url]);
    assert_eq!(expect(&out, 0), body);
    assert_eq!(connections.load(Ordering::SeqCst), 3);
    let out = img.run(&["-S"], &["wget", "-q", "-T", "3", "-O", "-", &url]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert_eq!(
        connections.load(Ordering::SeqCst),
        3,
        "--net=none reached the host"
    );
}

#[test]
fn user_mode_carries_udp_to_the_hosts_loopback() {
    let img = Image::copy_of("KBOX_DEBIAN", "net-user-udp");
    let (port, answered) = udp_echo(Duration::from_secs(60));
    let probe = |host: &str| {
        format!(
            "import socket\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             s.settimeout(3)\n\
             s.sendto(b'ping', ('{host}', {port}))\n\
             print(s.recvfrom(256)[0].decode())"
        )
    };
    let native = Command::new("python3")
        .args(["-c", &probe("127.0.0.1")])
        .output()
        .expect("python3 on the host");
    assert_eq!(expect(&native, 0), "echo:ping\n");
    let out = img.run(
        &["--net=user", "-S"],
        &["/usr/bin/python3", "-c", &probe("10.0.2.2")],
    );
    assert_eq!(expect(&out, 0), "echo:ping\n", "{}", text(&out.stderr));
    assert_eq!(answered.load(Ordering::SeqCst), 2);
}

/// A DNS server for one name on `addr`:53, answering A queries for `name` with
/// 192.0.2.77 (a documentation address nobody contacts) and NXDOMAIN otherwise.
fn dns_server(addr: &str, name: &str, life: Duration) -> Arc<AtomicUsize> {
    let socket = match UdpSocket::bind((addr, 53)) {
        Ok(s) => s,
        Err(e) => panic!("the DNS test needs to bind {addr}:53 (root, as make check runs): {e}"),
    };
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let mut wire = Vec::new();
    for label in name.split('.') {
        wire.push(u8::try_from(label.len()).expect("short label"));
        wire.extend_from_slice(label.as_bytes());
    }
    wire.push(0);
    let asked = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&asked);
    std::thread::spawn(move || {
        let end = Instant::now() + life;
        let mut buf = [0u8; 512];
        while Instant::now() < end {
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                continue;
            };
            // Header (12 bytes), then the question: name, type, class.
            let Some(question) = buf.get(12..n) else {
                continue;
            };
            let Some(name_end) = question.iter().position(|&b| b == 0) else {
                continue;
            };
            let Some(qtype) = question.get(name_end + 1..name_end + 3) else {
                continue;
            };
            let question = &question[..name_end + 5];
            let ours = question[..=name_end].eq_ignore_ascii_case(&wire);
            let a = qtype == [0, 1];
            if ours {
                count.fetch_add(1, Ordering::SeqCst);
            }
            let mut reply = buf[..12].to_vec();
            // QR, RD copied, RA; NXDOMAIN unless the name is ours.
            reply[2] = 0x80 | (buf[2] & 0x01);
            reply[3] = 0x80 | if ours { 0 } else { 3 };
            reply[4..6].copy_from_slice(&[0, 1]);
            reply[6..8].copy_from_slice(&[0, u8::from(ours && a)]);
            reply[8..12].fill(0);
            reply.extend_from_slice(question);
            if ours && a {
                reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 77]);
            }
            let _ = socket.send_to(&reply, from);
        }
    });
    asked
}

#[test]
fn lookups_reach_the_dns_server_given_in_user_and_host_modes() {
    let img = Image::default("net-dns");
    let name = format!("{}.kbox.test", token("dns"));
    let asked = dns_server("127.0.0.77", &name, Duration::from_secs(90));
    // Natively first: the host's busybox asks the server directly.
    let native = Command::new("busybox")
        .args(["nslookup", &name, "127.0.0.77"])
        .output()
        .expect("busybox on the host");
    assert!(expect(&native, 0).contains("192.0.2.77"));
    let before = asked.load(Ordering::SeqCst);
    // User mode: the guest asks 10.0.2.3, passt forwards to --dns.
    let script = format!("cat /etc/resolv.conf; nslookup {name}");
    let out = img.run(
        &["--net", "--dns", "127.0.0.77", "-S"],
        &["/bin/sh", "-c", &script],
    );
    let stdout = expect(&out, 0);
    assert!(stdout.contains("nameserver 10.0.2.3"), "{stdout}");
    assert!(
        stdout.contains("192.0.2.77"),
        "{stdout}{}",
        text(&out.stderr)
    );
    assert!(asked.load(Ordering::SeqCst) > before);
    // Host mode: the guest's resolv.conf names --dns, reached by a host socket.
    let out = img.run(
        &["--net=host", "--dns=127.0.0.77", "-S"],
        &["/bin/sh", "-c", &script],
    );
    let stdout = expect(&out, 0);
    assert!(stdout.contains("nameserver 127.0.0.77"), "{stdout}");
    assert!(stdout.contains("192.0.2.77"), "{stdout}");
    // No network: the lookup fails, and the image's own resolv.conf is untouched.
    let out = img.run(&["-S"], &["/bin/sh", "-c", &script]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(!text(&out.stdout).contains("192.0.2.77"));
    img.assert_clean();
}

/// A port nothing listens on now (the system's pick, released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The body of `GET /` from 127.0.0.1:`port`, if it answers 200.
fn http_get(port: u16) -> Option<String> {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).ok()?;
    let (head, body) = reply.split_once("\r\n\r\n")?;
    head.contains(" 200 ").then(|| body.to_string())
}

/// `GET /` from 127.0.0.1:`port` until it answers (or `limit` passes). (Not the host's
/// busybox wget: Debian's segfaults with -T.)
fn fetch_until_served(port: u16, limit: Duration) -> Option<String> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Some(body) = http_get(port) {
            return Some(body);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn a_published_guest_port_is_served_on_the_hosts_loopback() {
    let img = Image::default("net-publish");
    let body = token("published");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(token("www"));
    std::fs::create_dir_all(&dir).expect("web dir");
    std::fs::write(dir.join("index.html"), &body).expect("index");
    // Natively first: the same busybox httpd and fetch on the host.
    let port = free_port();
    let mut native = Command::new("busybox")
        .args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"])
        .arg(&dir)
        .spawn()
        .expect("busybox httpd on the host");
    let got = fetch_until_served(port, Duration::from_secs(10));
    let _ = native.kill();
    let _ = native.wait();
    assert_eq!(got.as_deref(), Some(body.as_str()));
    let _ = std::fs::remove_dir_all(&dir);
    // In the guest, on port 80 of its own network, published on a host port.
    let port = free_port();
    let script = format!(
        "mkdir -p /tmp/www && echo -n {body} > /tmp/www/index.html && \
         httpd -p 80 -h /tmp/www && sleep 30"
    );
    let mut c = Command::new(common::KBOX);
    c.env("HOME", Path::new(env!("CARGO_TARGET_TMPDIR")).join("home"));
    c.args([
        "--net",
        "-p",
        &format!("{port}:80"),
        "-S",
        img.arg(),
        "--",
        "/bin/sh",
        "-c",
        &script,
    ]);
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut guest = c.spawn().expect("kbox");
    let got = fetch_until_served(port, Duration::from_secs(20));
    let _ = guest.kill();
    let _ = guest.wait();
    assert_eq!(got.as_deref(), Some(body.as_str()));
    // Without -p the port is not there.
    let out = Command::new("busybox")
        .args([
            "wget",
            "-q",
            "-T",
            "2",
            "-O",
            "-",
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .expect("busybox");
    assert!(!out.status.success());
}

#[test]
fn verbose_names_the_mode_the_address_and_the_published_ports() {
    let img = Image::default("net-verbose");
    let out = img.run(
        &["--net", "-p", "18080:80", "-p", "15353:53/udp", "-v", "-S"],
        &["true"],
    );
    expect(&out, 0);
    let stderr = text(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("kbox: network:"))
        .unwrap_or_else(|| panic!("no network line in:\n{stderr}"));
    for part in [
        "user (passt at /",
        "10.0.2.15/24",
        "10.0.2.2",
        "10.0.2.3",
        "127.0.0.1:18080 -> 10.0.2.15:80 (tcp)",
        "127.0.0.1:15353 -> 10.0.2.15:53 (udp)",
    ] {
        assert!(line.contains(part), "{part} missing from: {line}");
    }
    // The guest sees the interface as configured.
    let out = img.run(
        &["--net", "-S"],
        &[
            "/bin/sh",
            "-c",
            "cat /sys/class/net/eth0/mtu /sys/class/net/eth0/address; route -n",
        ],
    );
    let stdout = expect(&out, 0);
    assert!(stdout.starts_with("65520\n52:54:00:12:34:56\n"), "{stdout}");
    assert!(stdout.contains("0.0.0.0         10.0.2.2"), "{stdout}");
}

#[test]
fn user_mode_without_passt_on_path_is_a_clear_error() {
    let img = Image::default("net-no-passt");
    let out = Command::new(common::KBOX)
        .env("PATH", "/nonexistent")
        .args(["--net", "-S", img.arg(), "--", "true"])
        .output()
        .expect("kbox");
    assert_eq!(out.status.code(), Some(125));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("passt"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn ifconfig_shows_and_sets_the_guests_interfaces_not_the_hosts() {
    let img = Image::default("net-ifconfig");
    // Natively, the host's busybox ifconfig shows an address of the host's besides the
    // loopback: the one the guest must not see.
    let native = Command::new("busybox")
        .arg("ifconfig")
        .output()
        .expect("busybox on the host");
    let native = expect(&native, 0);
    let host_addr = native
        .split("inet addr:")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next())
        .find(|a| !a.starts_with("127."))
        .unwrap_or_else(|| panic!("no host address in:\n{native}"))
        .to_string();
    let out = img.run(&["-S"], &["ifconfig"]);
    let stdout = expect(&out, 0);
    assert!(stdout.contains("inet addr:127.0.0.1"), "{stdout}");
    assert!(
        !stdout.contains(&host_addr),
        "the host's {host_addr} in:\n{stdout}"
    );
    let script = "ifconfig eth0 && route del default && route add default gw 10.0.2.2 dev eth0 \
                  && route -n | grep -c '^0.0.0.0 *10.0.2.2 .*eth0$' \
                  && ifconfig eth0 mtu 1500 && cat /sys/class/net/eth0/mtu";
    let out = img.run(&["--net", "-S"], &["/bin/sh", "-c", script]);
    let stdout = expect(&out, 0);
    assert!(stdout.contains("HWaddr 52:54:00:12:34:56"), "{stdout}");
    assert!(stdout.contains("inet addr:10.0.2.15"), "{stdout}");
    assert!(stdout.ends_with("1\n1500\n"), "{stdout}");
    assert!(
        !stdout.contains(&host_addr),
        "the host's {host_addr} in:\n{stdout}"
    );
}

/// The 8 MB both transfer tests send: each byte a hash of its offset, so a piece lost,
/// doubled or moved does not compare equal.
fn transfer_bytes() -> Vec<u8> {
    (0..8_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// Accepts one connection on 127.0.0.1 and returns its port and a handle yielding every
/// byte the peer sent.
fn tcp_sink() -> (u16, std::thread::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let port = listener.local_addr().expect("address").port();
    let handle = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("a connection");
        let mut got = Vec::new();
        conn.read_to_end(&mut got).expect("read");
        got
    });
    (port, handle)
}

#[test]
fn user_mode_uploads_arrive_whole() {
    let img = Image::default("net-upload");
    let data = transfer_bytes();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(token("upload"));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("blob"), &data).expect("blob");
    // Natively first: the host's busybox nc sends the file.
    let (port, sink) = tcp_sink();
    let native = Command::new("/bin/sh")
        .args([
            "-c",
            &format!(
                "busybox nc 127.0.0.1 {port} < {}",
                dir.join("blob").display()
            ),
        ])
        .output()
        .expect("busybox on the host");
    expect(&native, 0);
    assert!(
        sink.join().expect("sink") == data,
        "the native upload differs"
    );
    // The guest sends it through passt to the host's loopback.
    let (port, sink) = tcp_sink();
    let bind = format!("{}:/mnt/up", dir.display());
    let out = img.run(
        &["--net", "-b", &bind, "-S"],
        &[
            "/bin/sh",
            "-c",
            &format!("nc 10.0.2.2 {port} < /mnt/up/blob"),
        ],
    );
    expect(&out, 0);
    let got = sink.join().expect("sink");
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the upload arrived changed");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server on the host's loopback that sends `data` to its one connection, then closes it.
fn tcp_source(data: Vec<u8>) -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let port = listener.local_addr().expect("address").port();
    let handle = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("a connection");
        conn.write_all(&data).expect("send");
    });
    (port, handle)
}

/// Downloads come in frames of up to 64 KiB, which the device reads straight into the
/// kernel's buffers when whole in passt's socket and through a buffer of its own when
/// not: either way every byte must arrive, once, in order.
#[test]
fn user_mode_downloads_arrive_whole() {
    let img = Image::default("net-download");
    let data = transfer_bytes();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(token("download"));
    std::fs::create_dir_all(&dir).expect("dir");
    // Natively first: the host's busybox nc receives the file.
    let (port, source) = tcp_source(data.clone());
    let native = Command::new("/bin/sh")
        .args([
            "-c",
            &format!(
                "busybox nc 127.0.0.1 {port} </dev/null > {}",
                dir.join("native").display()
            ),
        ])
        .output()
        .expect("busybox on the host");
    expect(&native, 0);
    source.join().expect("source");
    assert!(
        std::fs::read(dir.join("native")).expect("native copy") == data,
        "the native download differs"
    );
    // The guest receives it through passt from the host's loopback.
    let (port, source) = tcp_source(data.clone());
    let bind = format!("{}:/mnt/down", dir.display());
    let out = img.run(
        &["--net", "-b", &bind, "-S"],
        &[
            "/bin/sh",
            "-c",
            &format!("nc 10.0.2.2 {port} </dev/null > /mnt/down/got"),
        ],
    );
    expect(&out, 0);
    source.join().expect("source");
    let got = std::fs::read(dir.join("got")).expect("the guest's copy");
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the download arrived changed");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Connections between guest processes on the kernel library's loopback: a woken accept
/// or read must run when its waker's call returns, not at the kernel's next tick (10 ms).
/// Before that was so, each connection waited for ticks: 4.8 ms a connection against
/// 0.1 ms natively (42×), and 0.9 ms (9×) since. The line tick-paced wake-ups cross is
/// drawn twice: over 2.5 ms *and* over 25× native, so that a slow machine (under qemu's
/// TCG: 1.6 ms natively, 18 ms in kbox, 11×) is not taken for one. It is no benchmark
/// (make bench is).
#[test]
fn loopback_connections_between_guest_threads_are_not_paced_by_the_tick() {
    const SCRIPT: &str = "import socket, sys, threading, time\n\
        l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(16)\n\
        def serve():\n\
        \x20   while True:\n\
        \x20       c, _ = l.accept(); c.sendall(b'k'); c.close()\n\
        threading.Thread(target=serve, daemon=True).start()\n\
        n = 100\n\
        t = time.perf_counter()\n\
        for _ in range(n):\n\
        \x20   s = socket.create_connection(l.getsockname())\n\
        \x20   assert s.recv(1) == b'k'\n\
        \x20   s.close()\n\
        print(int((time.perf_counter() - t) / n * 1e6))\n";
    let micros = |out: &std::process::Output| -> u64 {
        let stdout = expect(out, 0);
        stdout
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {stdout:?}"))
    };
    let native = Command::new("python3")
        .args(["-c", SCRIPT])
        .output()
        .expect("python3 on the host");
    let native = micros(&native);
    let img = Image::copy_of("KBOX_DEBIAN", "net-loopback-pace");
    let guest = micros(&img.run(&["-S"], &["/usr/bin/python3", "-c", SCRIPT]));
    assert!(
        guest < 2500 || guest < 25 * native,
        "{guest} µs a connection in the guest ({native} µs natively): woken tasks wait for the tick"
    );
}
