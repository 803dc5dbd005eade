//! Host threads for the blocking jobs of served sockets: a connect, an accept, a pump.
//!
//! A thread that finishes its job waits a while for the next one instead of ending. A
//! connection takes two such jobs, and creating and ending a thread each time (its stack
//! mapped and unmapped, under the address space's lock that the other threads of kbox
//! take too) was a large part of kbox's time per connection.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use kbox_lkl::Errno;

/// How long a thread without a job waits for one before it ends.
const IDLE: Duration = Duration::from_secs(5);

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct State {
    queued: VecDeque<(&'static str, Job)>,
    /// Threads waiting for a job.
    idle: usize,
    /// Jobs queued or running.
    unfinished: usize,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// A job was queued.
    queued: Condvar,
    /// A job finished.
    finished: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The threads, shared by every clone.
#[derive(Default, Clone)]
pub struct Workers {
    shared: Arc<Shared>,
}

impl Workers {
    /// Runs `job` on a waiting thread, or on a new one when none waits. `name` names the
    /// thread while the job runs (it shows in `top -H` and `perf`).
    pub fn run(
        &self,
        name: &'static str,
        job: impl FnOnce() + Send + 'static,
    ) -> Result<(), Errno> {
        let mut state = self.shared.lock();
        state.unfinished += 1;
        if state.idle > state.queued.len() {
            state.queued.push_back((name, Box::new(job)));
            self.shared.queued.notify_one();
            return Ok(());
        }
        drop(state);
        let shared = Arc::clone(&self.shared);
        let spawned = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || serve(&shared, Box::new(job)));
        if spawned.is_err() {
            self.finish_one();
            return Err(Errno::EAGAIN);
        }
        Ok(())
    }

    /// Waits until every job has finished, or until `deadline`; true if they all have.
    pub fn wait_finished(&self, deadline: Instant) -> bool {
        let mut state = self.shared.lock();
        while state.unfinished > 0 {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            state = self
                .shared
                .finished
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    fn finish_one(&self) {
        finish_one(&self.shared);
    }
}

fn finish_one(shared: &Shared) {
    let mut state = shared.lock();
    state.unfinished -= 1;
    if state.unfinished == 0 {
        shared.finished.notify_all();
    }
}

/// A thread's life: its first job, then the jobs it is given until it has waited [`IDLE`]
/// for one.
fn serve(shared: &Shared, first: Job) {
    first();
    finish_one(shared);
    loop {
        let mut state = shared.lock();
        state.idle += 1;
        let deadline = Instant::now() + IDLE;
        let next = loop {
            if let Some(next) = state.queued.pop_front() {
                break Some(next);
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break None;
            };
            state = shared
                .queued
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        };
        state.idle -= 1;
        drop(state);
        let Some((name, job)) = next else {
            return;
        };
        let _ = rustix::thread::set_name(&thread_name(name));
        job();
        finish_one(shared);
    }
}

/// `name` as the kernel takes a thread's name: at most 15 bytes and a NUL.
fn thread_name(name: &str) -> std::ffi::CString {
    let bytes: Vec<u8> = name.bytes().filter(|&b| b != 0).take(15).collect();
    std::ffi::CString::new(bytes).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_finished_thread_takes_the_next_job() {
        let workers = Workers::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let tx1 = tx.clone();
        workers
            .run("kbox-test", move || {
                tx1.send(std::thread::current().id()).expect("send")
            })
            .expect("first job");
        let first = rx.recv().expect("first thread");
        assert!(workers.wait_finished(Instant::now() + Duration::from_secs(5)));
        // Its thread now waits for a job: the next one runs there, not on a new thread.
        while workers.shared.lock().idle == 0 {
            std::thread::yield_now();
        }
        workers
            .run("kbox-test", move || {
                tx.send(std::thread::current().id()).expect("send")
            })
            .expect("second job");
        assert_eq!(rx.recv().expect("second thread"), first);
    }

    #[test]
    fn jobs_that_block_each_get_a_thread_and_all_finish() {
        let workers = Workers::default();
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let ran = Arc::new(AtomicUsize::new(0));
        for _ in 0..4 {
            let (gate, ran) = (Arc::clone(&gate), Arc::clone(&ran));
            workers
                .run("kbox-test", move || {
                    let mut open = gate.0.lock().expect("gate");
                    while !*open {
                        open = gate.1.wait(open).expect("gate");
                    }
                    ran.fetch_add(1, Ordering::SeqCst);
                })
                .expect("job");
        }
        // Four jobs that wait for each other's gate cannot share a thread.
        assert!(!workers.wait_finished(Instant::now() + Duration::from_millis(50)));
        *gate.0.lock().expect("gate") = true;
        gate.1.notify_all();
        assert!(workers.wait_finished(Instant::now() + Duration::from_secs(5)));
        assert_eq!(ran.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn long_names_are_cut_to_what_the_kernel_keeps() {
        assert_eq!(
            thread_name("kbox-a-very-long-name").as_bytes(),
            b"kbox-a-very-lon"
        );
    }
}
