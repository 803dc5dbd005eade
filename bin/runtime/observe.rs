//! Watching the calls kbox answers, for `--stats`, `--trace` and `--web`: each answered
//! call is timed, classified by how it was served, and handed to whichever of them is on.
//! With none on, a call pays one relaxed load.

use std::sync::atomic::{AtomicBool, Ordering};

use super::{stats, ticks, trace};
use crate::dispatch::{Guest, Reply};

/// How kbox served a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// By the guest process's task in the kernel library.
    Kernel,
    /// Run by the host kernel as the guest made it.
    Host,
    /// By kbox itself, without the kernel library (pid translation, answers kbox makes up).
    Emulated,
    /// Refused by kbox's policy.
    Denied,
}

impl Served {
    pub fn name(self) -> &'static str {
        match self {
            Served::Kernel => "kernel",
            Served::Host => "host",
            Served::Emulated => "emulated",
            Served::Denied => "denied",
        }
    }
}

static ON: AtomicBool = AtomicBool::new(false);

/// Turns watching on (stats or trace is enabled).
pub fn enable() {
    ticks::start();
    ON.store(true, Ordering::Relaxed);
}

/// Whether calls are watched (the filter then notifies the calls it would deny, so that
/// they are counted: see `policy::rules`).
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// One call being answered.
pub struct Watch {
    trace: Option<trace::Before>,
    kernel_calls: u64,
    started: u64,
}

/// Starts watching call `nr` of `guest`, if anything is on.
pub fn start(guest: &dyn Guest, nr: u32, args: [u64; 6]) -> Option<Watch> {
    if !enabled() {
        return None;
    }
    let trace = trace::before(guest, nr, args);
    Some(Watch {
        trace,
        ..start_untraced()
    })
}

/// A watch without a trace line (also what `stats::overhead_ns` times).
pub fn start_untraced() -> Watch {
    Watch {
        trace: None,
        kernel_calls: kbox_lkl::calls_made(),
        started: ticks::now(),
    }
}

impl Watch {
    /// The call was answered with `reply` (`denied`: by the policy), taken just before
    /// the answer is sent: with the synchronous wake-up the guest may run before sending
    /// returns, which is not kbox's time.
    pub fn end(self, reply: Reply, denied: bool) -> Ended {
        let took = ticks::now().wrapping_sub(self.started);
        let served = match reply {
            _ if denied => Served::Denied,
            Reply::Continue => Served::Host,
            _ if kbox_lkl::calls_made() != self.kernel_calls => Served::Kernel,
            _ => Served::Emulated,
        };
        Ended {
            trace: self.trace,
            served,
            took,
        }
    }
}

/// A watched call, answered.
pub struct Ended {
    trace: Option<trace::Before>,
    pub served: Served,
    /// Ticks from receiving the call to answering it.
    pub took: u64,
}

impl Ended {
    /// Counts and traces call `nr` of host thread `tid`, answered with `reply`.
    pub fn finish(self, tid: u32, nr: u32, reply: Reply) {
        if stats::enabled() {
            stats::record(nr, reply, self.served, self.took);
        }
        if let Some(before) = self.trace {
            trace::after(before, tid, nr, reply, self.served, ticks::to_ns(self.took));
        }
    }
}
