//! Counters of what kbox answered, per syscall, as each answer goes out: the `--stats`
//! report at exit (a table, or JSON with `--stats=json`) and the dashboard's snapshots.
//!
//! Counters are relaxed atomics in static storage, indexed by the host syscall number: the
//! receiver threads add to them without a lock, and with counting off a call pays one
//! load. Only notified calls are counted: the ones the filter lets run on the host
//! (read/write on shadows, mmap, futex, ...) never reach kbox.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use kbox_lkl::Errno;

use super::json::Str;
use super::observe::Served;
use super::ticks;
use crate::cli::StatsFormat;
use crate::dispatch::{self, Reply};

/// Host syscall numbers counted (both arches' tables stay below this).
const CALLS: usize = 512;
/// Errno values counted one by one (Linux's stay below this).
const ERRNOS: usize = 160;
/// Latency buckets: bucket `i` holds calls that took less than 2^i ticks (and at least
/// 2^(i-1)); the last one holds everything slower. Reports show the bounds in ns.
pub const BUCKETS: usize = 40;
/// Rows in each of the table's top lists.
const TOP: usize = 15;

struct Counters {
    calls: AtomicU64,
    /// Continued on the host (SECCOMP_USER_NOTIF_FLAG_CONTINUE).
    host: AtomicU64,
    failed: AtomicU64,
    /// Refused by kbox's policy (a call the filter denies, notified while observing).
    denied: AtomicU64,
    /// Failed with ENOSYS: kbox has no way to serve it.
    unsupported: AtomicU64,
    /// Time answering, in ticks (ticks.rs).
    ticks: AtomicU64,
}

impl Counters {
    const fn new() -> Counters {
        Counters {
            calls: AtomicU64::new(0),
            host: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            denied: AtomicU64::new(0),
            unsupported: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
        }
    }
}

/// Every counter of one run.
struct Table {
    by_call: [Counters; CALLS],
    by_errno: [AtomicU64; ERRNOS],
    latency: [AtomicU64; BUCKETS],
}

impl Table {
    const fn new() -> Table {
        Table {
            by_call: [const { Counters::new() }; CALLS],
            by_errno: [const { AtomicU64::new(0) }; ERRNOS],
            latency: [const { AtomicU64::new(0) }; BUCKETS],
        }
    }

    fn record(&self, nr: u32, reply: Reply, served: Served, took: u64) {
        let Some(c) = usize::try_from(nr).ok().and_then(|i| self.by_call.get(i)) else {
            return;
        };
        c.calls.fetch_add(1, Ordering::Relaxed);
        c.ticks.fetch_add(took, Ordering::Relaxed);
        let bucket = usize::try_from(u64::BITS - took.leading_zeros()).unwrap_or(BUCKETS);
        if let Some(b) = self.latency.get(bucket.min(BUCKETS - 1)) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        match (reply, served) {
            (Reply::Continue, _) => {
                c.host.fetch_add(1, Ordering::Relaxed);
            }
            (Reply::Fail(e), served) => {
                c.failed.fetch_add(1, Ordering::Relaxed);
                if served == Served::Denied {
                    c.denied.fetch_add(1, Ordering::Relaxed);
                } else if e == Errno::ENOSYS {
                    c.unsupported.fetch_add(1, Ordering::Relaxed);
                }
                let slot = usize::try_from(e.0).ok().and_then(|i| self.by_errno.get(i));
                if let Some(n) = slot.or(self.by_errno.first()) {
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }
            (Reply::Value(_), _) => {}
        }
    }
}

static ON: AtomicBool = AtomicBool::new(false);
static TABLE: Table = Table::new();
/// When counting started (the dashboard's uptime).
static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Starts counting.
pub fn enable() {
    STARTED.get_or_init(Instant::now);
    ticks::start();
    ON.store(true, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Counts host call `nr`, answered with `reply` (served as `served`) after `took` ticks.
pub fn record(nr: u32, reply: Reply, served: Served, took: u64) {
    TABLE.record(nr, reply, served, took);
}

/// What watching costs a call while only counting is on, in ns: what `observe` does
/// around each call (the checks, two counter readings, the kernel-call count) and the
/// counter updates, timed on a scratch table (the run's own counts stay as they are).
pub fn overhead_ns() -> f64 {
    const ROUNDS: u32 = 100_000;
    let scratch = Box::new(Table::new());
    let started = Instant::now();
    for i in 0..ROUNDS {
        let watch = super::observe::start_untraced();
        let reply = if i % 8 == 0 {
            Reply::Fail(Errno::ENOENT)
        } else {
            Reply::Value(0)
        };
        let ended = std::hint::black_box(watch).end(reply, false);
        scratch.record(i % 300, reply, ended.served, ended.took);
    }
    started.elapsed().as_nanos() as f64 / f64::from(ROUNDS)
}

/// One syscall's totals.
struct Row {
    name: String,
    calls: u64,
    host: u64,
    failed: u64,
    denied: u64,
    unsupported: u64,
    ns: u64,
}

fn rows() -> Vec<Row> {
    let ns = ticks::converter();
    TABLE
        .by_call
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
                denied: c.denied.load(Ordering::Relaxed),
                unsupported: c.unsupported.load(Ordering::Relaxed),
                ns: ns(c.ticks.load(Ordering::Relaxed)),
            })
        })
        .collect()
}

/// The rows and the latency histogram of one moment: calls keep being counted while they
/// are read, and a call counted in one and not yet in the other made the dashboard's
/// histogram disagree with its total (seen under qemu's TCG). Read again until the
/// histogram did not move while the rows were read and adds up to their calls (a few
/// tries at most: counting one call takes nanoseconds).
fn consistent_counts() -> (Vec<Row>, [u64; BUCKETS]) {
    let histogram =
        || -> [u64; BUCKETS] { std::array::from_fn(|i| TABLE.latency[i].load(Ordering::Acquire)) };
    let mut last = (rows(), histogram());
    for _ in 0..100 {
        let before = histogram();
        let rows = rows();
        let after = histogram();
        let calls: u64 = rows.iter().map(|r| r.calls).sum();
        let settled = before == after && after.iter().sum::<u64>() == calls;
        last = (rows, after);
        if settled {
            break;
        }
        std::thread::yield_now();
    }
    last
}

/// (errno name, count) for every errno answered, most frequent first. Errno 0 collects
/// values beyond the table.
fn errors() -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = TABLE
        .by_errno
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
    let (mut rows, latency) = consistent_counts();
    rows.sort_by(|a, b| b.calls.cmp(&a.calls).then_with(|| a.name.cmp(&b.name)));
    let errors = errors();
    let overhead = overhead_ns();
    match format {
        StatsFormat::Json => {
            let mut s = String::from("{");
            write_counts(&mut s, &rows, &latency, &errors);
            let _ = writeln!(s, ",\"overhead_ns\":{overhead:.1}}}");
            s
        }
        StatsFormat::Table => table(rows, &errors, overhead),
    }
}

/// The counters as JSON object members (no braces), for the dashboard's snapshots: totals,
/// `syscalls` (by count), `errors` and the `latency` histogram.
pub fn write_json_members(s: &mut String) {
    let (mut rows, latency) = consistent_counts();
    rows.sort_by(|a, b| b.calls.cmp(&a.calls).then_with(|| a.name.cmp(&b.name)));
    write_counts(s, &rows, &latency, &errors());
    let uptime = STARTED.get().map_or(0, |t| t.elapsed().as_millis());
    let _ = write!(s, ",\"uptime_ms\":{uptime}");
}

fn write_counts(s: &mut String, rows: &[Row], latency: &[u64; BUCKETS], errors: &[(String, u64)]) {
    let sum = |f: fn(&Row) -> u64| rows.iter().map(f).sum::<u64>();
    let _ = write!(
        s,
        "\"tier\":\"seccomp\",\"calls\":{},\"total_ns\":{},\"denied\":{},\"unsupported\":{},\"syscalls\":[",
        sum(|r| r.calls),
        sum(|r| r.ns),
        sum(|r| r.denied),
        sum(|r| r.unsupported),
    );
    for (i, r) in rows.iter().enumerate() {
        let _ = write!(
            s,
            "{}{{\"name\":{},\"calls\":{},\"host\":{},\"failed\":{},\"denied\":{},\"unsupported\":{},\"total_ns\":{}}}",
            if i > 0 { "," } else { "" },
            Str(r.name.as_bytes()),
            r.calls,
            r.host,
            r.failed,
            r.denied,
            r.unsupported,
            r.ns
        );
    }
    s.push_str("],\"errors\":{");
    for (i, (name, n)) in errors.iter().enumerate() {
        let _ = write!(
            s,
            "{}{}:{n}",
            if i > 0 { "," } else { "" },
            Str(name.as_bytes())
        );
    }
    s.push_str("},\"latency\":[");
    let ns = ticks::converter();
    for (i, b) in latency.iter().enumerate() {
        let le = if i + 1 == BUCKETS {
            u64::MAX
        } else {
            ns(1u64 << i)
        };
        let _ = write!(
            s,
            "{}{{\"le_ns\":{le},\"count\":{}}}",
            if i > 0 { "," } else { "" },
            b
        );
    }
    s.push(']');
}

fn table(mut rows: Vec<Row>, errors: &[(String, u64)], overhead: f64) -> String {
    let calls: u64 = rows.iter().map(|r| r.calls).sum();
    let ns: u64 = rows.iter().map(|r| r.ns).sum();
    let mut s = format!(
        "kbox stats (seccomp tier): {calls} notified calls, {:.3} s answering them\n",
        ns as f64 / 1e9
    );
    let head = format!(
        "  {:<20} {:>10} {:>10} {:>10} {:>8} {:>8} {:>12} {:>10}\n",
        "syscall", "calls", "on host", "failed", "denied", "no impl", "total ms", "mean µs"
    );
    let line = |s: &mut String, r: &Row| {
        let _ = writeln!(
            s,
            "  {:<20} {:>10} {:>10} {:>10} {:>8} {:>8} {:>12.3} {:>10.2}",
            r.name,
            r.calls,
            r.host,
            r.failed,
            r.denied,
            r.unsupported,
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
    let _ = writeln!(
        s,
        "\ncounting cost: {overhead:.0} ns a call (timed at exit)"
    );
    s
}
