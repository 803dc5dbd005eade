//! Futex-based semaphore and lock for the kernel's CPU token and task hand-offs.
//!
//! Both are on the path of every syscall that changes hands, so the uncontended case is
//! one atomic operation and no system call.
use rustix::thread::futex;
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Default)]
pub struct Semaphore {
    count: AtomicU32,
    sleepers: AtomicU32,
}

impl Semaphore {
    pub fn new(count: u32) -> Self {
        Self {
            count: AtomicU32::new(count),
            sleepers: AtomicU32::new(0),
        }
    }

    pub fn up(&self) {
        // SeqCst on both sides: either down() sees the new count before it sleeps, or
        // this thread sees its sleeper count and wakes it.
        self.count.fetch_add(1, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) != 0 {
            // A failed wake only means nobody was asleep any more.
            let _ = futex::wake(&self.count, futex::Flags::PRIVATE, 1);
        }
    }

    pub fn down(&self) {
        loop {
            let count = self.count.load(Ordering::SeqCst);
            if count > 0 {
                if self
                    .count
                    .compare_exchange_weak(count, count - 1, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
                {
                    return;
                }
                continue;
            }
            self.sleepers.fetch_add(1, Ordering::SeqCst);
            // EAGAIN (the count moved) and EINTR both just mean: look again.
            let _ = futex::wait(&self.count, futex::Flags::PRIVATE, 0, None);
            self.sleepers.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A lock held across FFI calls (lock and unlock are separate calls from C).
#[derive(Default)]
pub struct RawLock {
    // 0 free, 1 held, 2 held with waiters.
    state: AtomicU32,
}

impl RawLock {
    pub fn lock(&self) {
        if self
            .state
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
        while self.state.swap(2, Ordering::Acquire) != 0 {
            let _ = futex::wait(&self.state, futex::Flags::PRIVATE, 2, None);
        }
    }

    pub fn unlock(&self) {
        if self.state.swap(0, Ordering::Release) == 2 {
            let _ = futex::wake(&self.state, futex::Flags::PRIVATE, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn semaphore_hands_every_unit_to_a_waiter() {
        let sem = Arc::new(Semaphore::new(0));
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let sem = Arc::clone(&sem);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        sem.down();
                    }
                })
            })
            .collect();
        for _ in 0..4000 {
            sem.up();
        }
        for w in waiters {
            w.join().expect("waiter thread");
        }
        assert_eq!(sem.count.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn lock_makes_increments_exclusive() {
        struct Shared {
            lock: RawLock,
            value: std::cell::UnsafeCell<u64>,
        }
        // SAFETY: `value` is only touched while `lock` is held.
        unsafe impl Sync for Shared {}
        let shared = Arc::new(Shared {
            lock: RawLock::default(),
            value: 0.into(),
        });
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        shared.lock.lock();
                        // SAFETY: the lock is held.
                        unsafe { *shared.value.get() += 1 };
                        shared.lock.unlock();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("worker thread");
        }
        // SAFETY: every other thread has been joined.
        assert_eq!(unsafe { *shared.value.get() }, 40_000);
    }
}
