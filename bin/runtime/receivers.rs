//! The threads that receive and answer seccomp notifications (leader/followers).
//!
//! A guest's notified call can be interrupted by a (handled) signal until a supervisor
//! thread has received it; after that only fatal signals end the wait (WAIT_KILLABLE_RECV).
//! A signal landing in that window turns even fork or close into EINTR, which Linux never
//! returns for them (Python's forkserver died of a close interrupted by SIGCHLD). So a
//! notification must always find a thread waiting in RECV:
//!
//! - A thread that received a call passes the right to receive on before anything slow (the
//!   engine says when: exec, fork, a new process, socket set-up, filling a shadow, a
//!   write-back; or the engine is busy with another call). When no thread is free to take
//!   it, another is started (up to [`MAX_RECEIVERS`]).
//! - Fast calls (a few microseconds) are answered by the thread that received them, which
//!   saves a thread wake-up per call. But answering wakes the guest, which often takes the
//!   answering thread's CPU from it, and no thread receives until it gets the CPU back: a
//!   call another guest thread makes meanwhile waits unreceived, exposed to signals. So while
//!   guest threads make calls concurrently, two threads wait in RECV instead of one (each
//!   notification then wakes both, which costs the loser a wake-up: about 3 µs a call, paid
//!   only then: the spare thread steps out when the stretch ends).
//! - Receivers ask for the shortest time slice (see `ask_short_slice`), so a receiver the
//!   guest wakes gets a busy CPU sooner.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Instant;

use crate::dispatch::Engine;
use crate::seccomp::notify::{NotifyFd, Pending};

/// Threads started at once.
const RECEIVERS: usize = 4;
/// Most receiver threads: more are started only while every one holds a call, so this
/// bounds the guest calls kbox has received and not yet answered.
const MAX_RECEIVERS: usize = 64;
/// Calls from two guest threads this close together (ns) mean they run concurrently...
const CONCURRENT_GAP_NS: u64 = 2_000_000;
/// ...and two threads then wait in RECV for this long (ns) after the last such pair.
const CONCURRENT_HOLD_NS: u64 = 100_000_000;

/// Answers one received call; `slow` passes the right to receive on.
pub type Answer = fn(&mut Engine, Pending<'static>, &dyn Fn());

/// Starts the receiver threads; they run until the listener ends.
pub fn start(
    engine: &Arc<Mutex<Engine>>,
    notify: &'static NotifyFd,
    answer: Answer,
) -> std::io::Result<()> {
    let all = Arc::new(Receivers {
        engine: Arc::clone(engine),
        notify,
        answer,
        state: Mutex::new(State {
            receiving: 0,
            idle: 0,
            started: RECEIVERS,
        }),
        free: Condvar::new(),
        last_tid: AtomicU32::new(0),
        last_call: AtomicU64::new(0),
        concurrent_until: AtomicU64::new(0),
    });
    for _ in 0..RECEIVERS {
        start_one(&all)?;
    }
    Ok(())
}

struct Receivers {
    engine: Arc<Mutex<Engine>>,
    notify: &'static NotifyFd,
    answer: Answer,
    state: Mutex<State>,
    free: Condvar,
    /// The guest thread of the last call received, and when (ns since `now`'s start).
    last_tid: AtomicU32,
    last_call: AtomicU64,
    /// Until when (ns) two threads wait in RECV.
    concurrent_until: AtomicU64,
}

struct State {
    /// Threads in (or on their way into) RECV.
    receiving: usize,
    /// Threads waiting in `take` for their turn to receive.
    idle: usize,
    started: usize,
}

/// Nanoseconds since the first call: a monotonic clock read through the vDSO.
fn now() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

impl Receivers {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many threads should wait in RECV now.
    fn wanted(&self) -> usize {
        if now() < self.concurrent_until.load(Ordering::Relaxed) {
            2
        } else {
            1
        }
    }

    /// Waits for the right to receive.
    fn take(&self) {
        let mut state = self.state();
        state.idle += 1;
        while state.receiving >= self.wanted() {
            state = self
                .free
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.idle -= 1;
        state.receiving += 1;
    }

    /// Gives up the right to receive. Returns whether a new receiver must be started
    /// because none is waiting for it (counted as started already).
    fn pass(&self) -> bool {
        let mut state = self.state();
        state.receiving -= 1;
        self.free.notify_one();
        let starved = state.idle == 0 && state.started < MAX_RECEIVERS;
        if starved {
            state.started += 1;
        }
        starved
    }

    /// Notes a call of guest thread `tid`; a second thread calling soon after another
    /// starts (or prolongs) a concurrent stretch.
    fn note_caller(&self, tid: u32) {
        let t = now();
        let last = self.last_call.swap(t, Ordering::Relaxed);
        if self.last_tid.swap(tid, Ordering::Relaxed) == tid
            || t.saturating_sub(last) > CONCURRENT_GAP_NS
        {
            return;
        }
        let was = self
            .concurrent_until
            .swap(t + CONCURRENT_HOLD_NS, Ordering::Relaxed);
        if was <= t {
            // A second thread may now receive: wake one that waits for its turn.
            let _state = self.state();
            self.free.notify_one();
        }
    }
}

impl Receivers {
    /// Once a concurrent stretch is over, the spare thread in RECV steps out (else every
    /// later call would go on waking two threads). Returns whether the caller must step
    /// out: it then waits in `take`.
    fn step_down_if_spare(&self) -> bool {
        let until = self.concurrent_until.load(Ordering::Relaxed);
        if until == 0 || now() < until {
            return false;
        }
        let mut state = self.state();
        if state.receiving > 1 {
            state.receiving -= 1;
            return true;
        }
        // One receiver left: the stretch is over for good (unless a new one began).
        let _ =
            self.concurrent_until
                .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed);
        false
    }
}

fn start_one(all: &Arc<Receivers>) -> std::io::Result<()> {
    let all = Arc::clone(all);
    std::thread::Builder::new()
        .name("kbox-receiver".into())
        .spawn(move || receive(&all))
        .map(drop)
}

fn receive(all: &Arc<Receivers>) {
    // Without it (kernels before 6.12) receivers just wait for the CPU like any thread.
    let _ = crate::seccomp::ask_short_slice();
    all.take();
    loop {
        let Ok(Some(pending)) = all.notify.recv() else {
            all.pass();
            return;
        };
        all.note_caller(pending.notification().pid);
        let passed = std::cell::Cell::new(false);
        let pass = || {
            // A thread that cannot start just leaves the work to the others.
            if !passed.replace(true) && all.pass() && start_one(all).is_err() {
                all.state().started -= 1;
            }
        };
        let mut engine = match all.engine.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                pass();
                all.engine.lock().unwrap_or_else(PoisonError::into_inner)
            }
        };
        (all.answer)(&mut engine, pending, &pass);
        drop(engine);
        if passed.get() || all.step_down_if_spare() {
            all.take();
        }
    }
}
