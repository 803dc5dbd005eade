//! `--stats`: what kbox answered, per syscall, counted as each answer goes out and printed
//! at exit (a table, or JSON with `--stats=json`).
//!
//! Counters are relaxed atomics in static storage, indexed by the host syscall number: the
//! receiver threads add to them without a lock, and with `--stats` off a call pays one
//! load. Only notified calls are counted: the ones the filter lets run on the host
//! (read/write on shadows, mmap, futex, ...) never reach kbox.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use kbox_lkl::Errno;

use crate::cli::StatsFormat;
use crate::dispatch::{self, Reply};

/// Host syscall numbers counted (both arches' tables stay below this).
const CALLS: usize = 512;
/// Errno values counted one by one (Linux's stay below this).
const ERRNOS: usize = 160;
/// Rows in each of the table's top lists.
const TOP: usize = 15;

struct Counters {
    calls: AtomicU64,
    /// Continued on the host (SECCOMP_USER_NOTIF_FLAG_CONTINUE).
    host: AtomicU64,
    failed: AtomicU64,
    ns: AtomicU64,
}

impl Counters {
    const fn new() -> Counters {
        Counters {
            calls: AtomicU64::new(0),
            host: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            ns: AtomicU64::new(0),
        }
    }
}

static ON: AtomicBool = AtomicBool::new(false);
static BY_CALL: [Counters; CALLS] = [const { Counters::new() }; CALLS];
static BY_ERRNO: [AtomicU64; ERRNOS] = [const { AtomicU64::new(0) }; ERRNOS];

/// Starts counting.
pub fn enable() {
    ON.store(true, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Counts host call `nr`, answered with `reply` after `took`.
pub fn record(nr: u32, reply: Reply, took: Duration) {
    let Some(c) = usize::try_from(nr).ok().and_then(|i| BY_CALL.get(i)) else {
        return;
    };
    c.calls.fetch_add(1, Ordering::Relaxed);
    c.ns.fetch_add(
        u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    match reply {
        Reply::Continue => {
            c.host.fetch_add(1, Ordering::Relaxed);
        }
        Reply::Fail(e) => {
            c.failed.fetch_add(1, Ordering::Relaxed);
            let slot = usize::try_from(e.0).ok().and_then(|i| BY_ERRNO.get(i));
            if let Some(n) = slot.or(BY_ERRNO.first()) {
                n.fetch_add(1, Ordering::Relaxed);
            }
        }
        Reply::Value(_) => {}
    }
}

/// One syscall's totals.
struct Row {
    name: String,
    calls: u64,
    host: u64,
    failed: u64,
    ns: u64,
}

fn rows() -> Vec<Row> {
    BY_CALL
        .iter()
        .enumerate()
        .filter_map(|(nr, c)| {
            let calls = c.calls.load(Ordering::Relaxed);
            (calls > 0).then(|| Row {
                name: u32::try_from(nr)
                    .ok()
                    .and_then(dispatch::syscall_name)
                    .map_or_else(|| format!("syscall_{nr}"), str::to_owned),
                calls,
                host: c.host.load(Ordering::Relaxed),
                failed: c.failed.load(Ordering::Relaxed),
                ns: c.ns.load(Ordering::Relaxed),
            })
        })
        .collect()
}

/// (errno name, count) for every errno answered, most frequent first. Errno 0 collects
/// values beyond the table.
fn errors() -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = BY_ERRNO
        .iter()
        .enumerate()
        .filter_map(|(e, n)| {
            let n = n.load(Ordering::Relaxed);
            let errno = Errno(i32::try_from(e).ok()?);
            let name = match errno.describe() {
                Some((name, _)) => name.to_owned(),
                None if e == 0 => "other".to_owned(),
                None => format!("errno_{e}"),
            };
            (n > 0).then_some((name, n))
        })
        .collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

/// The report, in `format`.
pub fn report(format: StatsFormat) -> String {
    let mut rows = rows();
    rows.sort_by(|a, b| b.calls.cmp(&a.calls).then_with(|| a.name.cmp(&b.name)));
    let errors = errors();
    match format {
        StatsFormat::Json => json(&rows, &errors),
        StatsFormat::Table => table(rows, &errors),
    }
}

fn json(rows: &[Row], errors: &[(String, u64)]) -> String {
    let calls: u64 = rows.iter().map(|r| r.calls).sum();
    let ns: u64 = rows.iter().map(|r| r.ns).sum();
    let mut s =
        format!("{{\"tier\":\"seccomp\",\"calls\":{calls},\"total_ns\":{ns},\"syscalls\":[");
    for (i, r) in rows.iter().enumerate() {
        let _ = write!(
            s,
            "{}{{\"name\":\"{}\",\"calls\":{},\"host\":{},\"failed\":{},\"total_ns\":{}}}",
            if i > 0 { "," } else { "" },
            r.name,
            r.calls,
            r.host,
            r.failed,
            r.ns
        );
    }
    s.push_str("],\"errors\":{");
    for (i, (name, n)) in errors.iter().enumerate() {
        let _ = write!(s, "{}\"{name}\":{n}", if i > 0 { "," } else { "" });
    }
    s.push_str("}}\n");
    s
}

fn table(mut rows: Vec<Row>, errors: &[(String, u64)]) -> String {
    let calls: u64 = rows.iter().map(|r| r.calls).sum();
    let ns: u64 = rows.iter().map(|r| r.ns).sum();
    let mut s = format!(
        "kbox stats (seccomp tier): {calls} notified calls, {:.3} s answering them\n",
        ns as f64 / 1e9
    );
    let head = format!(
        "  {:<20} {:>10} {:>10} {:>10} {:>12} {:>10}\n",
        "syscall", "calls", "on host", "failed", "total ms", "mean µs"
    );
    let line = |s: &mut String, r: &Row| {
        let _ = writeln!(
            s,
            "  {:<20} {:>10} {:>10} {:>10} {:>12.3} {:>10.2}",
            r.name,
            r.calls,
            r.host,
            r.failed,
            r.ns as f64 / 1e6,
            r.ns as f64 / 1e3 / r.calls.max(1) as f64
        );
    };
    s.push_str("by count:\n");
    s.push_str(&head);
    rows.iter().take(TOP).for_each(|r| line(&mut s, r));
    rows.sort_by(|a, b| b.ns.cmp(&a.ns).then_with(|| a.name.cmp(&b.name)));
    s.push_str("by time:\n");
    s.push_str(&head);
    rows.iter().take(TOP).for_each(|r| line(&mut s, r));
    s.push_str("errors:");
    if errors.is_empty() {
        s.push_str(" none");
    }
    for (name, n) in errors {
        let _ = write!(s, " {name} {n}");
    }
    s.push('\n');
    s
}
