//! Guest signals end the waits kbox does on a guest's behalf.
//!
//! Calls that wait (a FIFO's open, accept, a stream connect) are served on threads of their
//! own while the guest sits in its notified call. There only fatal signals reach it (the
//! filter waits killably once a call is received), so nothing tells kbox that the guest got
//! a signal its program handles. A watcher therefore looks, every [`TICK`], at each waiting
//! guest thread: when a signal it would take is pending (not blocked, and caught, or a stop
//! signal), or the thread is gone, it ends kbox's wait. The call then answers ERESTARTSYS,
//! which the guest's own kernel turns into EINTR, or into restarting the call when the
//! handler has SA_RESTART, exactly as for a wait of its own.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use kbox_core::sysno::generic as g;
use kbox_lkl::{Errno, Task};

/// How often waiting guest threads are looked at: the longest a signal waits to interrupt.
const TICK: Duration = Duration::from_millis(10);

/// A wait kbox does for guest thread `tid`, ended by `cancel` (called again each tick until
/// the waiter finishes, so a cancel that lands just before the wait starts is not lost).
struct Entry {
    tid: u32,
    cancel: Box<dyn Fn() + Send>,
    fired: bool,
}

#[derive(Default)]
struct Waits {
    entries: Mutex<(u64, HashMap<u64, Entry>)>,
    work: Condvar,
}

fn waits() -> &'static Waits {
    static WAITS: OnceLock<&'static Waits> = OnceLock::new();
    WAITS.get_or_init(|| {
        let w: &'static Waits = Box::leak(Box::default());
        // Without the watcher, waits just are not interrupted (as before it existed).
        let _ = std::thread::Builder::new()
            .name("kbox-sigwatch".into())
            .spawn(move || watch_loop(w));
        w
    })
}

fn watch_loop(w: &Waits) {
    let mut guard = w.entries.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        while guard.1.is_empty() {
            guard = w.work.wait(guard).unwrap_or_else(PoisonError::into_inner);
        }
        drop(guard);
        std::thread::sleep(TICK);
        guard = w.entries.lock().unwrap_or_else(PoisonError::into_inner);
        for e in guard.1.values_mut() {
            if e.fired || signalled(e.tid) {
                e.fired = true;
                (e.cancel)();
            }
        }
    }
}

/// Ends every wait kbox does for guest thread `tid` now, as the watcher does when it sees
/// a signal the thread takes (an in-process tier sees that itself: the thread is kbox's).
pub fn interrupt_waits_of(tid: u32) {
    let w = waits();
    let mut guard = w.entries.lock().unwrap_or_else(PoisonError::into_inner);
    for e in guard.1.values_mut().filter(|e| e.tid == tid) {
        e.fired = true;
        (e.cancel)();
    }
}

/// One wait being watched; [`Watch::finish`] (or drop) ends the watching.
pub struct Watch {
    id: u64,
    done: bool,
}

/// Watches guest thread `tid` until the returned [`Watch`] finishes; `cancel` ends the wait.
pub fn watch(tid: u32, cancel: impl Fn() + Send + 'static) -> Watch {
    let w = waits();
    let mut guard = w.entries.lock().unwrap_or_else(PoisonError::into_inner);
    let id = guard.0;
    guard.0 += 1;
    guard.1.insert(
        id,
        Entry {
            tid,
            cancel: Box::new(cancel),
            fired: false,
        },
    );
    w.work.notify_one();
    Watch { id, done: false }
}

/// Watches guest thread `tid` while the calling host thread waits in a host syscall, which
/// a signal of kbox's own then interrupts (EINTR).
pub fn watch_this_thread(tid: u32) -> Watch {
    install_kick_handler();
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() };
    // A pthread_t is a pointer on musl; it travels as an address so the cancel is Send.
    let me = me as usize;
    // The waiter finishes its watch before its thread exits, and no cancel runs after
    // that, so `me` names a live thread whenever the cancel runs.
    watch(tid, move || {
        // SAFETY: `me` is a live thread (see above); the kick signal has a handler.
        unsafe { libc::pthread_kill(me as libc::pthread_t, kick_signal()) };
    })
}

/// Runs syscall `nr` on `task` (a task of kbox's own for this wait, never the guest's, which
/// the engine uses meanwhile) while watching guest thread `tid`: a signal the guest takes
/// ends the call with ERESTARTSYS.
pub fn lkl_call(task: &Arc<Task>, tid: u32, nr: u32, args: [u64; 6]) -> Result<i64, Errno> {
    let target = Arc::clone(task);
    let watch = watch(tid, move || {
        let _ = target.interrupt();
    });
    let r = super::lkl(task, nr, args);
    if watch.finish() {
        // A call that ended on its own may leave the request set; a call that never waits
        // spends it (a fork from the task, for the pumps, would fail otherwise).
        let _ = super::lkl(task, g::GETPID, [0; 6]);
    }
    r
}

impl Watch {
    /// Stops watching; true when the guest was signalled (or is gone), in which case the
    /// wait may have been ended early and the call should answer ERESTARTSYS.
    pub fn finish(mut self) -> bool {
        self.done = true;
        remove(self.id)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if !self.done {
            remove(self.id);
        }
    }
}

fn remove(id: u64) -> bool {
    let w = waits();
    let mut guard = w.entries.lock().unwrap_or_else(PoisonError::into_inner);
    guard.1.remove(&id).is_some_and(|e| e.fired)
}

/// kbox's own signal for ending a host syscall of one of its threads (a real-time signal
/// nothing else in kbox uses; its handler does nothing and has no SA_RESTART).
/// The signal that interrupts a host call kbox waits in on a guest's behalf.
pub fn kick_signal() -> i32 {
    libc::SIGRTMIN() + 3
}

fn install_kick_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    extern "C" fn nothing(_: i32) {}
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is valid; the handler is async-signal-safe (empty).
        unsafe {
            let mut sa: libc::sigaction = core::mem::zeroed();
            sa.sa_sigaction = nothing as extern "C" fn(i32) as usize;
            libc::sigemptyset(&raw mut sa.sa_mask);
            libc::sigaction(kick_signal(), &raw const sa, core::ptr::null_mut());
        }
    });
}

/// Whether guest thread `tid` has a signal to take (or is gone), from /proc.
/// The signal masks of guest threads that run kbox's code while kbox serves them (an
/// in-process tier): their host mask then blocks everything, and the guest's is this one.
static GUEST_MASKS: Mutex<Option<HashMap<u32, u64>>> = Mutex::new(None);

/// While kbox serves guest thread `tid` on that thread itself, its signal mask is `mask`
/// (None: the thread's own again).
pub fn set_guest_mask(tid: u32, mask: Option<u64>) {
    let mut masks = GUEST_MASKS.lock().unwrap_or_else(PoisonError::into_inner);
    let masks = masks.get_or_insert_with(HashMap::new);
    match mask {
        Some(m) => masks.insert(tid, m),
        None => masks.remove(&tid),
    };
}

fn signalled(tid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{tid}/status")) {
        Ok(status) => {
            let masks = GUEST_MASKS.lock().unwrap_or_else(PoisonError::into_inner);
            match masks.as_ref().and_then(|m| m.get(&tid)) {
                Some(&mask) => takes_signal_with_mask(&status, Some(mask)),
                None => takes_signal(&status),
            }
        }
        Err(_) => true,
    }
}

/// Signals whose default action stops the process: they end a wait too (the call is
/// restarted once the process continues).
const STOPS: u64 = (1 << (libc::SIGSTOP - 1))
    | (1 << (libc::SIGTSTP - 1))
    | (1 << (libc::SIGTTIN - 1))
    | (1 << (libc::SIGTTOU - 1));

/// From a /proc/PID/status text: a signal is pending that the thread takes (not blocked,
/// and handled, or stopping it), or the thread is dead (a zombie).
pub(crate) fn takes_signal(status: &str) -> bool {
    takes_signal_with_mask(status, None)
}

/// [`takes_signal`] with the thread's blocked set taken from `mask` when given.
fn takes_signal_with_mask(status: &str, mask: Option<u64>) -> bool {
    let mut pending = 0u64;
    let (mut blocked, mut ignored, mut caught) = (0u64, 0u64, 0u64);
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let mask = || u64::from_str_radix(value, 16).unwrap_or(0);
        match key {
            "State" if value.starts_with('Z') || value.starts_with('X') => return true,
            "SigPnd" | "ShdPnd" => pending |= mask(),
            "SigBlk" => blocked = mask(),
            "SigIgn" => ignored = mask(),
            "SigCgt" => caught = mask(),
            _ => {}
        }
    }
    let blocked = mask.unwrap_or(blocked);
    let stops = STOPS & !ignored & !caught;
    pending & !blocked & (caught | stops) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: &str, pnd: u64, shd: u64, blk: u64, ign: u64, cgt: u64) -> String {
        format!(
            "Name:\tx\nState:\t{state}\nSigQ:\t0/1\nSigPnd:\t{pnd:016x}\nShdPnd:\t{shd:016x}\n\
             SigBlk:\t{blk:016x}\nSigIgn:\t{ign:016x}\nSigCgt:\t{cgt:016x}\n"
        )
    }

    const ALRM: u64 = 1 << (libc::SIGALRM - 1);
    const CHLD: u64 = 1 << (libc::SIGCHLD - 1);
    const TSTP: u64 = 1 << (libc::SIGTSTP - 1);

    #[test]
    fn a_pending_handled_signal_is_taken() {
        assert!(takes_signal(&status("S (sleeping)", ALRM, 0, 0, 0, ALRM)));
        assert!(takes_signal(&status("S (sleeping)", 0, ALRM, 0, 0, ALRM)));
    }

    #[test]
    fn blocked_or_unhandled_signals_are_not_taken() {
        assert!(!takes_signal(&status(
            "S (sleeping)",
            ALRM,
            0,
            ALRM,
            0,
            ALRM
        )));
        // A default-ignored signal without a handler changes nothing.
        assert!(!takes_signal(&status("S (sleeping)", CHLD, 0, 0, 0, 0)));
        assert!(!takes_signal(&status("S (sleeping)", 0, 0, 0, 0, ALRM)));
    }

    #[test]
    fn a_stop_signal_is_taken_unless_ignored() {
        assert!(takes_signal(&status("S (sleeping)", TSTP, 0, 0, 0, 0)));
        assert!(!takes_signal(&status("S (sleeping)", TSTP, 0, 0, TSTP, 0)));
    }

    #[test]
    fn a_dead_thread_ends_the_wait() {
        assert!(takes_signal(&status("Z (zombie)", 0, 0, 0, 0, 0)));
    }
}
