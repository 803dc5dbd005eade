//! `make bench-core`: cost of FD table lookup and close-by-host-fd as the number of open
//! guest FDs grows. Prints numbers; asserts nothing. Flat columns mean O(1).

use std::hint::black_box;
use std::time::Instant;

use kbox_core::fd::{FdEntry, FdKind, FdTable, GuestFd, HostFd, KernelFd};

const SIZES: [usize; 5] = [10, 100, 1000, 10_000, 60_000];
const LOOKUPS: usize = 2_000_000;
const CLOSE_BATCH_MAX: usize = 1000;
const CLOSED_PER_SIZE: usize = 1_000_000;

fn boxed_table() -> Box<FdTable> {
    let zeroed = Box::<FdTable>::new_zeroed();
    // SAFETY: FdTable consists only of integers and arrays of them, so all-zero is a valid
    // value, and it is the empty table (core's tests check it equals FdTable::new()).
    unsafe { zeroed.assume_init() }
}

fn entry(i: usize) -> FdEntry {
    let n = u16::try_from(i).expect("below 65536");
    FdEntry {
        kind: FdKind::Shadow,
        kernel: Some(KernelFd::from_index(n)),
        host: Some(HostFd::from_index(n)),
        cloexec: false,
    }
}

/// A cheap deterministic sequence so lookups do not walk memory in order.
fn scramble(i: usize, n: usize) -> usize {
    i.wrapping_mul(2_654_435_761) % n
}

fn main() {
    println!("FdTable: {} bytes", size_of::<FdTable>());
    println!(
        "{:>8} {:>14} {:>22}",
        "open fds", "lookup ns/op", "close_by_host ns/op"
    );
    for n in SIZES {
        let mut t = boxed_table();
        for i in 0..n {
            t.insert(GuestFd::from_index(0), entry(i)).expect("room");
        }

        let start = Instant::now();
        let mut hits = 0usize;
        for i in 0..LOOKUPS {
            let fd = i32::try_from(scramble(i, n)).expect("small");
            hits += usize::from(black_box(&t).lookup(black_box(fd)).is_ok());
        }
        let lookup_ns = start.elapsed().as_nanos() as f64 / LOOKUPS as f64;
        assert_eq!(hits, LOOKUPS, "every looked-up fd is open");

        // Batches of distinct fds, timed as a whole so the clock's own cost stays small.
        let batch = n.min(CLOSE_BATCH_MAX);
        let rounds = CLOSED_PER_SIZE / batch;
        let mut close_ns = 0u128;
        for round in 0..rounds {
            let first = scramble(round, n);
            let victims: Vec<usize> = (0..batch).map(|k| (first + k) % n).collect();
            let start = Instant::now();
            for &v in &victims {
                let h = HostFd::from_index(u16::try_from(v).expect("small"));
                black_box(t.close_by_host_fd(black_box(h)));
            }
            close_ns += start.elapsed().as_nanos();
            for &v in &victims {
                if t.find_by_host_fd(HostFd::from_index(u16::try_from(v).expect("small")))
                    .is_none()
                {
                    t.insert(GuestFd::from_index(0), entry(v)).expect("room");
                }
            }
        }
        let close = close_ns as f64 / (rounds * batch) as f64;
        println!("{n:>8} {lookup_ns:>14.1} {close:>22.1}");
    }
}
