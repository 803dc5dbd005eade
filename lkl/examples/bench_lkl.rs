//! `make bench-lkl`: the kernel library's own costs, measured in-process.
//! Boot time to the first syscall, then µs per call for getpid, stat of a cached path
//! and open+close, each the median of several batches. Prints a markdown table.
use kbox_lkl::sys::{self, Syscalls};
use kbox_lkl::{BootConfig, Kernel, TaskKind};
use std::time::Instant;

const BATCHES: usize = 9;

fn per_call_us(calls: u32, mut body: impl FnMut()) -> f64 {
    let mut samples: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..calls {
                body();
            }
            start.elapsed().as_secs_f64() * 1e6 / f64::from(calls)
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[BATCHES / 2]
}

fn main() {
    let calls: u32 = std::env::var("KBOX_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let start = Instant::now();
    let kernel = Kernel::boot(&BootConfig::default()).expect("kernel boots");
    kernel.getpid().expect("first syscall");
    let boot_ms = start.elapsed().as_secs_f64() * 1e3;

    kernel.mkdir(c"/bench", 0o755).expect("mkdir");
    let fd = kernel
        .open(c"/bench/file", sys::O_RDWR | sys::O_CREAT, 0o644)
        .expect("create");
    kernel.close(fd).expect("close");

    let getpid = per_call_us(calls, || {
        kernel.getpid().expect("getpid");
    });
    let stat = per_call_us(calls, || {
        kernel.stat(c"/bench/file").expect("stat");
    });
    let open_close = per_call_us(calls / 2, || {
        let fd = kernel.open(c"/bench/file", sys::O_RDONLY, 0).expect("open");
        kernel.close(fd).expect("close");
    });

    // A task forked and ended: what kbox pays for each helper task it makes (a socket's
    // pumps and waiters each drive one).
    let parent = kernel.create_task(None, TaskKind::Process).expect("a task");
    let fork_drop = per_call_us((calls / 100).max(1), || {
        drop(parent.fork(TaskKind::Process).expect("fork"));
    });

    println!("| kernel library (in-process) | measured | target |");
    println!("|---|---|---|");
    println!("| boot to first syscall | {boot_ms:.1} ms | ≤ 30 ms |");
    println!("| getpid | {getpid:.3} µs | ≤ 0.3 µs |");
    println!("| stat (cached path) | {stat:.3} µs | ≤ 1 µs |");
    println!("| open+close | {open_close:.3} µs | |");
    println!("| task fork + end | {fork_drop:.1} µs | |");
    drop(parent);
    kernel.halt().expect("halt");
}
