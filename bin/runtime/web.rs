//! `--web`: a live dashboard of the guest, served by kbox on a loopback port (unless the
//! user names another address). Read-only: `GET /` is the page (inside the binary),
//! `GET /api/stats` a JSON snapshot, `GET /api/events` a server-sent-events stream of
//! snapshots twice a second; nothing on it can change the guest. HTTP parsing is
//! tiny_http's.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::json::Str;
use super::stats;
use crate::dispatch::Engine;
use crate::dispatch::overview::Overview;

const PAGE: &str = include_str!("web/dashboard.html");
/// Between two events of the stream.
const EVENT_EVERY: Duration = Duration::from_millis(500);
/// Requests served at once (each stream holds one); more get 503.
const MAX_CLIENTS: usize = 32;

/// Cleared when the guest has exited: streams send a last snapshot and end.
static RUNNING: AtomicBool = AtomicBool::new(true);
static CLIENTS: AtomicUsize = AtomicUsize::new(0);

/// Listens on `addr` and serves the dashboard from a thread of its own; the address it
/// listens on (the port the system picked, for port 0).
pub fn start(addr: SocketAddr, engine: Arc<Mutex<Engine>>) -> Result<SocketAddr, std::io::Error> {
    let server = tiny_http::Server::http(addr).map_err(std::io::Error::other)?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| std::io::Error::other("not an IP listener"))?;
    stats::enable();
    std::thread::Builder::new()
        .name("kbox-web".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                if CLIENTS.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
                    CLIENTS.fetch_sub(1, Ordering::AcqRel);
                    let _ = request.respond(tiny_http::Response::empty(503));
                    continue;
                }
                let engine = Arc::clone(&engine);
                let served = std::thread::Builder::new()
                    .name("kbox-web-client".into())
                    .spawn(move || {
                        serve(request, &engine);
                        CLIENTS.fetch_sub(1, Ordering::AcqRel);
                    });
                if served.is_err() {
                    CLIENTS.fetch_sub(1, Ordering::AcqRel);
                }
            }
        })?;
    Ok(bound)
}

/// The guest has exited: streams end after one more snapshot.
pub fn guest_ended() {
    RUNNING.store(false, Ordering::Release);
}

/// `response` with kbox's own headers (constants, so they always parse).
fn with_headers<R: std::io::Read>(
    mut response: tiny_http::Response<R>,
    headers: &[&str],
) -> tiny_http::Response<R> {
    for h in headers {
        if let Ok(h) = h.parse::<tiny_http::Header>() {
            response.add_header(h);
        }
    }
    response
}

fn serve(request: tiny_http::Request, engine: &Mutex<Engine>) {
    use tiny_http::{Method, Response};
    if *request.method() != Method::Get {
        let _ = request.respond(Response::from_string("read-only\n").with_status_code(405));
        return;
    }
    let path = request.url().split('?').next().unwrap_or("").to_owned();
    let _ = match path.as_str() {
        "/" | "/index.html" => request.respond(with_headers(
            Response::from_string(PAGE),
            &[
                "Content-Type: text/html; charset=utf-8",
                "Cache-Control: no-store",
            ],
        )),
        "/api/stats" => request.respond(with_headers(
            Response::from_string(snapshot(engine)),
            &["Content-Type: application/json", "Cache-Control: no-store"],
        )),
        "/api/events" => {
            stream(request, engine);
            Ok(())
        }
        "/favicon.ico" => request.respond(Response::empty(204)),
        _ => request.respond(Response::from_string("not found\n").with_status_code(404)),
    };
}

/// Server-sent events: a snapshot every `EVENT_EVERY` until the guest exits or the client
/// goes. Written by hand (each event flushed at once); the request was parsed by tiny_http.
fn stream(request: tiny_http::Request, engine: &Mutex<Engine>) {
    let mut out = request.into_writer();
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\
                Connection: close\r\n\r\n";
    if out
        .write_all(head.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        return;
    }
    loop {
        let last = !RUNNING.load(Ordering::Acquire);
        let event = format!("data: {}\n\n", snapshot(engine));
        if out
            .write_all(event.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
            || last
        {
            return;
        }
        std::thread::sleep(EVENT_EVERY);
    }
}

/// The dashboard's snapshot (schema in docs/web.md).
pub fn snapshot(engine: &Mutex<Engine>) -> String {
    let view = engine
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .overview();
    let mut s = String::from("{");
    stats::write_json_members(&mut s);
    let _ = write!(s, ",\"running\":{}", RUNNING.load(Ordering::Acquire));
    write_overview(&mut s, &view);
    s.push('}');
    s
}

fn write_overview(s: &mut String, v: &Overview) {
    s.push_str(",\"processes\":[");
    for (i, p) in v.processes.iter().enumerate() {
        let _ = write!(
            s,
            "{}{{\"pid\":{},\"ppid\":{},\"host_pid\":{},\"comm\":{},\"fds\":{},\"cwd\":{}}}",
            if i > 0 { "," } else { "" },
            p.pid,
            p.ppid,
            p.host_pid,
            Str(p.comm.as_bytes()),
            p.fds,
            Str(&p.cwd)
        );
    }
    let _ = write!(
        s,
        "],\"shadows\":{{\"open\":{},\"hits\":{},\"misses\":{},\"bytes\":{}}},\
         \"kernel_memory\":{{\"total_bytes\":{},\"free_bytes\":{}}}",
        v.shadows.copies,
        v.shadows.hits,
        v.shadows.misses,
        v.shadows.bytes,
        v.kernel_total,
        v.kernel_free
    );
}
