//! The host operations the kernel calls (see `ffi::HostOps`): threads, locks, thread
//! keys, memory, clocks, timers and the console.
//!
//! Every function here is called by kernel C code with pointers it got from these same
//! functions, which is the invariant the SAFETY comments rely on.
use crate::ffi::HostOps;
use crate::sync::{RawLock, Semaphore};
use core::ffi::{c_char, c_int, c_ulong, c_ulonglong, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

/// Kernel threads run deep call chains (ext4 over the block layer); host stacks are
/// only committed as touched, so be generous.
const KERNEL_THREAD_STACK: usize = 1 << 20;
/// How much of the kernel log to keep for error messages.
const LOG_KEEP: usize = 64 * 1024;

pub static VERBOSE: AtomicBool = AtomicBool::new(false);
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// The last lines the kernel printed (for errors such as a failed mount).
pub fn log_tail(max_lines: usize) -> String {
    let log = LOG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let text = String::from_utf8_lossy(&log);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(max_lines)..].join("\n")
}

unsafe extern "C" fn print(text: *const c_char, len: c_int) {
    let Ok(len) = usize::try_from(len) else {
        return;
    };
    // SAFETY: the kernel passes a buffer of `len` bytes.
    let bytes = unsafe { std::slice::from_raw_parts(text.cast::<u8>(), len) };
    if VERBOSE.load(Ordering::Relaxed) {
        let _ = rustix::io::write(rustix::stdio::stderr(), bytes);
    }
    let mut log = LOG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    log.extend_from_slice(bytes);
    if log.len() > 2 * LOG_KEEP {
        let cut = log.len() - LOG_KEEP;
        log.drain(..cut);
    }
}

unsafe extern "C" fn panic() {
    eprintln!("kbox: the kernel library panicked:\n{}", log_tail(20));
    std::process::abort();
}

unsafe extern "C" fn sem_alloc(count: c_int) -> *mut c_void {
    let count = u32::try_from(count).unwrap_or(0);
    Box::into_raw(Box::new(Semaphore::new(count))).cast()
}

unsafe extern "C" fn sem_free(sem: *mut c_void) {
    // SAFETY: `sem` came from sem_alloc and the kernel frees it once.
    drop(unsafe { Box::from_raw(sem.cast::<Semaphore>()) });
}

unsafe extern "C" fn sem_up(sem: *mut c_void) {
    // SAFETY: `sem` came from sem_alloc and is live.
    unsafe { &*sem.cast::<Semaphore>() }.up();
}

unsafe extern "C" fn sem_down(sem: *mut c_void) {
    // SAFETY: `sem` came from sem_alloc and is live.
    unsafe { &*sem.cast::<Semaphore>() }.down();
}

unsafe extern "C" fn mutex_alloc() -> *mut c_void {
    Box::into_raw(Box::new(RawLock::default())).cast()
}

unsafe extern "C" fn mutex_free(lock: *mut c_void) {
    // SAFETY: `lock` came from mutex_alloc and the kernel frees it once.
    drop(unsafe { Box::from_raw(lock.cast::<RawLock>()) });
}

unsafe extern "C" fn mutex_lock(lock: *mut c_void) {
    // SAFETY: `lock` came from mutex_alloc and is live.
    unsafe { &*lock.cast::<RawLock>() }.lock();
}

unsafe extern "C" fn mutex_unlock(lock: *mut c_void) {
    // SAFETY: `lock` came from mutex_alloc and is live.
    unsafe { &*lock.cast::<RawLock>() }.unlock();
}

struct ThreadStart {
    entry: unsafe extern "C" fn(*mut c_void),
    arg: *mut c_void,
}

extern "C" fn thread_trampoline(start: *mut c_void) -> *mut c_void {
    // SAFETY: thread_create passes a leaked Box<ThreadStart> to exactly one thread.
    let start = unsafe { Box::from_raw(start.cast::<ThreadStart>()) };
    // SAFETY: the kernel gave us its own entry point and argument.
    unsafe { (start.entry)(start.arg) };
    std::ptr::null_mut()
}

unsafe extern "C" fn thread_create(
    entry: unsafe extern "C" fn(*mut c_void),
    arg: *mut c_void,
) -> c_int {
    let start = Box::into_raw(Box::new(ThreadStart { entry, arg }));
    // SAFETY: plain pthread calls on locals; on failure the start record is reclaimed.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        let mut thread: libc::pthread_t = std::mem::zeroed();
        libc::pthread_attr_init(&mut attr);
        libc::pthread_attr_setstacksize(&mut attr, KERNEL_THREAD_STACK);
        libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
        let rc = libc::pthread_create(&mut thread, &attr, thread_trampoline, start.cast());
        libc::pthread_attr_destroy(&mut attr);
        if rc != 0 {
            drop(Box::from_raw(start));
            return 0;
        }
    }
    1
}

unsafe extern "C" fn thread_exit() {
    // SAFETY: called on a thread made by thread_create, which owns nothing to unwind.
    unsafe { libc::pthread_exit(std::ptr::null_mut()) }
}

unsafe extern "C" fn thread_self() -> c_ulong {
    // SAFETY: pthread_self has no preconditions.
    let id = unsafe { libc::pthread_self() };
    id as c_ulong
}

unsafe extern "C" fn tls_alloc(
    destructor: Option<unsafe extern "C" fn(*mut c_void)>,
) -> *mut c_void {
    let key = Box::into_raw(Box::new(0 as libc::pthread_key_t));
    // SAFETY: `key` points to a live pthread_key_t.
    if unsafe { libc::pthread_key_create(key, destructor) } != 0 {
        // SAFETY: `key` was leaked just above.
        drop(unsafe { Box::from_raw(key) });
        return std::ptr::null_mut();
    }
    key.cast()
}

unsafe extern "C" fn tls_set(key: *mut c_void, data: *mut c_void) -> c_int {
    // SAFETY: `key` came from tls_alloc.
    unsafe { libc::pthread_setspecific(*key.cast::<libc::pthread_key_t>(), data) }
}

unsafe extern "C" fn tls_get(key: *mut c_void) -> *mut c_void {
    // SAFETY: `key` came from tls_alloc.
    unsafe { libc::pthread_getspecific(*key.cast::<libc::pthread_key_t>()) }
}

unsafe extern "C" fn mem_alloc(size: c_ulong) -> *mut c_void {
    let Ok(size) = usize::try_from(size) else {
        return std::ptr::null_mut();
    };
    // SAFETY: malloc has no preconditions.
    unsafe { libc::malloc(size) }
}

unsafe extern "C" fn mem_free(ptr: *mut c_void) {
    // SAFETY: `ptr` came from mem_alloc (malloc) or is null.
    unsafe { libc::free(ptr) }
}

unsafe extern "C" fn page_alloc(size: c_ulong) -> *mut c_void {
    let Ok(size) = usize::try_from(size) else {
        return std::ptr::null_mut();
    };
    use rustix::mm::{Advice, MapFlags, ProtFlags, madvise, mmap_anonymous};
    // SAFETY: a fresh private anonymous mapping aliases nothing.
    let mem = unsafe {
        mmap_anonymous(
            std::ptr::null_mut(),
            size,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE | MapFlags::NORESERVE,
        )
    }
    .unwrap_or(std::ptr::null_mut());
    if !mem.is_null() {
        // The kernel's memory is never a forked copy's to use (a process kbox forks execs a
        // guest, or is a guest process served by this one's kernel): not copying it makes
        // fork cost what kbox's own memory costs, and a stray use fault.
        // SAFETY: advice on the mapping just made.
        let _ = unsafe { madvise(mem, size, Advice::LinuxDontFork) };
    }
    mem
}

fn clock_ns(id: rustix::time::ClockId) -> u64 {
    let ts = rustix::time::clock_gettime(id);
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs * 1_000_000_000 + nanos
}

unsafe extern "C" fn time() -> c_ulonglong {
    clock_ns(rustix::time::ClockId::Monotonic)
}

unsafe extern "C" fn realtime() -> c_ulonglong {
    clock_ns(rustix::time::ClockId::Realtime)
}

/// A one-shot timer with its own thread: it sleeps until the deadline, then calls the
/// kernel's expiry function (which raises the timer interrupt).
struct Timer {
    deadline: Mutex<Option<u64>>,
    changed: Condvar,
    expire: unsafe extern "C" fn(*mut c_void),
    arg: *mut c_void,
}

// SAFETY: `arg` is an opaque kernel cookie passed back to the kernel's own function.
unsafe impl Send for Timer {}
// SAFETY: as above; all mutable state is behind the mutex.
unsafe impl Sync for Timer {}

impl Timer {
    fn run(&self) {
        let mut deadline = self
            .deadline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            match *deadline {
                None => {
                    deadline = self
                        .changed
                        .wait(deadline)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                Some(at) => {
                    let now = clock_ns(rustix::time::ClockId::Monotonic);
                    if now < at {
                        let wait = std::time::Duration::from_nanos(at - now);
                        deadline = self
                            .changed
                            .wait_timeout(deadline, wait)
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .0;
                        continue;
                    }
                    *deadline = None;
                    drop(deadline);
                    // SAFETY: the kernel's expiry function with its own cookie.
                    unsafe { (self.expire)(self.arg) };
                    deadline = self
                        .deadline
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            }
        }
    }
}

unsafe extern "C" fn timer_alloc(
    expire: unsafe extern "C" fn(*mut c_void),
    arg: *mut c_void,
) -> *mut c_void {
    let timer: &'static Timer = Box::leak(Box::new(Timer {
        deadline: Mutex::new(None),
        changed: Condvar::new(),
        expire,
        arg,
    }));
    let spawned = std::thread::Builder::new()
        .name("lkl-timer".into())
        .spawn(move || timer.run());
    if spawned.is_err() {
        return std::ptr::null_mut();
    }
    std::ptr::from_ref(timer).cast_mut().cast()
}

unsafe extern "C" fn timer_set_oneshot(timer: *mut c_void, ns: c_ulonglong) {
    // SAFETY: `timer` came from timer_alloc and lives for the process.
    let timer = unsafe { &*timer.cast::<Timer>() };
    let at = clock_ns(rustix::time::ClockId::Monotonic).saturating_add(ns);
    *timer
        .deadline
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(at);
    timer.changed.notify_one();
}

unsafe extern "C" fn timer_cancel(timer: *mut c_void) {
    // SAFETY: `timer` came from timer_alloc and lives for the process.
    let timer = unsafe { &*timer.cast::<Timer>() };
    *timer
        .deadline
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    timer.changed.notify_one();
}

unsafe extern "C" fn iomem_access(
    addr: c_ulong,
    value: *mut c_void,
    size: c_int,
    write: c_int,
) -> c_int {
    crate::virtio_mmio::access(addr, value, size, write != 0)
}

#[allow(
    clippy::cast_possible_truncation,
    reason = "64-bit hosts only: c_ulong is usize"
)]
unsafe extern "C" fn mem_copy(dest: *mut c_void, src: *const c_void, n: c_ulong) -> *mut c_void {
    // SAFETY: the kernel's memcpy contract: valid, non-overlapping ranges of n bytes.
    unsafe { libc::memcpy(dest, src, n as usize) }
}

#[allow(
    clippy::cast_possible_truncation,
    reason = "64-bit hosts only: c_ulong is usize"
)]
unsafe extern "C" fn mem_set(dest: *mut c_void, byte: c_int, n: c_ulong) -> *mut c_void {
    // SAFETY: the kernel's memset contract: a valid range of n bytes.
    unsafe { libc::memset(dest, byte, n as usize) }
}

#[allow(
    clippy::cast_possible_truncation,
    reason = "64-bit hosts only: c_ulong is usize"
)]
unsafe extern "C" fn mem_move(dest: *mut c_void, src: *const c_void, n: c_ulong) -> *mut c_void {
    // SAFETY: the kernel's memmove contract: valid ranges of n bytes.
    unsafe { libc::memmove(dest, src, n as usize) }
}

unsafe extern "C" fn devices_cmdline() -> *const c_char {
    crate::virtio_mmio::freeze_cmdline().as_ptr()
}

/// The table handed to `lkl_init`; also exported under LKL's data-symbol name.
#[unsafe(no_mangle)]
pub static lkl_host_ops: HostOps = HostOps {
    print,
    panic,
    sem_alloc,
    sem_free,
    sem_up,
    sem_down,
    mutex_alloc,
    mutex_free,
    mutex_lock,
    mutex_unlock,
    thread_create,
    thread_exit,
    thread_self,
    tls_alloc,
    tls_set,
    tls_get,
    mem_alloc,
    mem_free,
    page_alloc,
    time,
    realtime,
    timer_alloc,
    timer_set_oneshot,
    timer_cancel,
    iomem_access,
    memcpy: mem_copy,
    memset: mem_set,
    memmove: mem_move,
    devices_cmdline,
};
