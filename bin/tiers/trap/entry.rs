//! The trap tier's signal entry: the SIGSYS a guest's syscall raises arrives here on the
//! guest's own thread, with the guest's thread pointer (its TLS) in place. Until kbox's own
//! is restored nothing may touch TLS, so this part uses only statics and raw syscalls; then
//! the call is served as ordinary Rust (`super::serve`), and the guest's thread pointer goes
//! back before returning.
//!
//! A SIGSYS can also come from kbox's own code: the vDSO's fallback syscall (the vDSO lies
//! outside kbox's text) on any thread, or kbox's code serving a call on a guest thread. Those
//! are made as asked.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use kbox_arch::x86_64::trap::{gettid, raw_syscall, set_thread_pointer, thread_pointer};

/// Guest threads one kbox serves (the trap tier runs one guest process).
const MAX_THREADS: usize = 64;
const SYS_RT_SIGPROCMASK: u64 = 14;
const SIG_SETMASK: u64 = 2;
/// SIGSYS's bit in a kernel sigset: never blocked while guest code runs.
pub const SIGSYS_BIT: u64 = 1 << (libc::SIGSYS - 1);

struct Slot {
    tid: AtomicU32,
    /// kbox's thread pointer for this thread.
    kbox_tp: AtomicU64,
    /// kbox's code is running on the thread (its SIGSYS are its own).
    in_kbox: AtomicBool,
}

static SLOTS: [Slot; MAX_THREADS] = [const {
    Slot {
        tid: AtomicU32::new(0),
        kbox_tp: AtomicU64::new(0),
        in_kbox: AtomicBool::new(false),
    }
}; MAX_THREADS];
/// rdfsbase/wrfsbase are usable (AT_HWCAP2 bit 1): no syscall to switch thread pointers.
static FSGSBASE: AtomicBool = AtomicBool::new(false);

/// Makes the calling thread a guest thread: once it runs guest code ([`leave_kbox`]), its
/// SIGSYS are guest calls.
pub fn adopt_current_thread() -> bool {
    // SAFETY: getauxval reads this process's auxiliary vector.
    let hwcap2 = unsafe { libc::getauxval(libc::AT_HWCAP2) };
    FSGSBASE.store(hwcap2 & 2 != 0, Ordering::Relaxed);
    let tid = gettid();
    let tp = thread_pointer(FSGSBASE.load(Ordering::Relaxed));
    for slot in &SLOTS {
        if slot
            .tid
            .compare_exchange(0, tid, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            slot.kbox_tp.store(tp, Ordering::Relaxed);
            slot.in_kbox.store(true, Ordering::Release);
            return true;
        }
    }
    false
}

fn own_slot() -> Option<&'static Slot> {
    let tid = gettid();
    SLOTS.iter().find(|s| s.tid.load(Ordering::Acquire) == tid)
}

/// The calling guest thread is about to run guest code.
pub fn leave_kbox() {
    if let Some(s) = own_slot() {
        s.in_kbox.store(false, Ordering::Release);
    }
}

/// In a process just forked from a guest thread: the parent's threads do not exist here;
/// the calling thread is this process's only guest thread, running kbox's code.
pub fn adopt_after_fork() {
    for slot in &SLOTS {
        slot.tid.store(0, Ordering::Relaxed);
    }
    adopt_current_thread();
}

/// The calling thread is no longer a guest thread (it is about to end).
pub fn release_current_thread() {
    if let Some(s) = own_slot() {
        s.tid.store(0, Ordering::Release);
    }
}

/// Guest threads alive.
pub fn guest_threads() -> usize {
    SLOTS
        .iter()
        .filter(|s| s.tid.load(Ordering::Acquire) != 0)
        .count()
}

/// Whether FS base switches use rdfsbase/wrfsbase.
pub fn fsgsbase() -> bool {
    FSGSBASE.load(Ordering::Relaxed)
}

/// A general register's index in the frame (libc numbers them as i32).
fn reg(r: i32) -> usize {
    usize::try_from(r).unwrap_or(0)
}

/// One trapped call: the guest's registers as the signal frame holds them.
pub struct Trapped<'a> {
    uc: &'a mut libc::ucontext_t,
    /// The guest's thread pointer, put back when the handler returns.
    pub guest_tp: u64,
}

impl Trapped<'_> {
    /// The syscall number and its six arguments.
    pub fn call(&self) -> (u64, [u64; 6]) {
        call_of(self.uc)
    }

    pub fn set_result(&mut self, v: i64) {
        self.uc.uc_mcontext.gregs[reg(libc::REG_RAX)] = v;
    }

    /// The guest's registers and its frame's flags (a new thread starts from a copy).
    pub fn registers(&self) -> ([i64; 23], u64) {
        (self.uc.uc_mcontext.gregs, self.uc.uc_flags)
    }

    /// The signal mask the guest had when it made the call (restored on return).
    pub fn sigmask(&self) -> u64 {
        // SAFETY: the kernel's sigset (8 bytes) is the start of libc's sigset_t.
        unsafe { *(&raw const self.uc.uc_sigmask).cast::<u64>() }
    }

    pub fn set_sigmask(&mut self, mask: u64) {
        // SAFETY: as in sigmask; the kernel reads these 8 bytes back on sigreturn.
        unsafe { *(&raw mut self.uc.uc_sigmask).cast::<u64>() = mask & !SIGSYS_BIT };
    }

    /// Returns to `ip` with stack pointer `sp` and every general register zero (a new
    /// program's start).
    pub fn restart_at(&mut self, ip: u64, sp: u64) {
        let g = &mut self.uc.uc_mcontext.gregs;
        for r in [
            libc::REG_R8,
            libc::REG_R9,
            libc::REG_R10,
            libc::REG_R11,
            libc::REG_R12,
            libc::REG_R13,
            libc::REG_R14,
            libc::REG_R15,
            libc::REG_RDI,
            libc::REG_RSI,
            libc::REG_RBP,
            libc::REG_RBX,
            libc::REG_RDX,
            libc::REG_RAX,
            libc::REG_RCX,
        ] {
            g[reg(r)] = 0;
        }
        g[reg(libc::REG_RIP)] = ip.cast_signed();
        g[reg(libc::REG_RSP)] = sp.cast_signed();
    }

    /// Resumes the guest at `ip` instead of after its syscall, registers otherwise as they
    /// are (rt_sigreturn's stub).
    pub fn resume_at(&mut self, ip: u64) {
        self.uc.uc_mcontext.gregs[reg(libc::REG_RIP)] = ip.cast_signed();
    }

    /// Moves the stack pointer the guest resumes with (a forked child on its own stack).
    pub fn set_sp(&mut self, sp: u64) {
        self.uc.uc_mcontext.gregs[reg(libc::REG_RSP)] = sp.cast_signed();
    }

    /// Makes the call on the host as the guest would have: with the guest's signal mask and
    /// thread pointer, so a signal interrupts it and the guest's handler runs as it would.
    pub fn run_as_guest(&mut self, nr: u64, args: [u64; 6]) -> i64 {
        // SAFETY: the caller's call, made as the guest made it.
        self.as_guest(|| unsafe { raw_syscall(nr, args) })
    }

    /// As [`Trapped::run_as_guest`], for a call made by `make` (a raw syscall, or one from
    /// the notification gadget), which must touch no TLS.
    pub fn as_guest(&mut self, make: impl FnOnce() -> i64) -> i64 {
        let Some(slot) = own_slot() else {
            return make();
        };
        let fsgs = FSGSBASE.load(Ordering::Relaxed);
        let guest_mask = self.sigmask() & !SIGSYS_BIT;
        let mut kbox_mask = 0u64;
        // SAFETY: rt_sigprocmask on local 8-byte sets; set_thread_pointer switches to the
        // guest's TLS for the one raw syscall below, which touches none.
        unsafe {
            raw_syscall(
                SYS_RT_SIGPROCMASK,
                [
                    SIG_SETMASK,
                    (&raw const guest_mask) as u64,
                    (&raw mut kbox_mask) as u64,
                    8,
                    0,
                    0,
                ],
            );
            set_thread_pointer(fsgs, self.guest_tp);
            slot.in_kbox.store(false, Ordering::Release);
            let r = make();
            slot.in_kbox.store(true, Ordering::Release);
            set_thread_pointer(fsgs, slot.kbox_tp.load(Ordering::Relaxed));
            raw_syscall(
                SYS_RT_SIGPROCMASK,
                [SIG_SETMASK, (&raw const kbox_mask) as u64, 0, 8, 0, 0],
            );
            r
        }
    }
}

fn call_of(uc: &libc::ucontext_t) -> (u64, [u64; 6]) {
    let g = &uc.uc_mcontext.gregs;
    let r = |i: i32| g[reg(i)].cast_unsigned();
    (
        r(libc::REG_RAX),
        [
            r(libc::REG_RDI),
            r(libc::REG_RSI),
            r(libc::REG_RDX),
            r(libc::REG_R10),
            r(libc::REG_R8),
            r(libc::REG_R9),
        ],
    )
}

/// The thread's slot if it is a guest thread running guest code.
fn guest_slot() -> Option<&'static Slot> {
    let tid = gettid();
    SLOTS
        .iter()
        .find(|s| s.tid.load(Ordering::Acquire) == tid)
        .filter(|s| !s.in_kbox.load(Ordering::Acquire))
}

/// Runs `serve` for a signal that interrupted guest code on a guest thread, between the two
/// thread-pointer switches; None when the thread was not running guest code.
///
/// # Safety
/// `ctx` is the ucontext the kernel passed to an SA_SIGINFO handler.
pub unsafe fn with_guest_frame(ctx: *mut c_void, serve: impl FnOnce(&mut Trapped<'_>)) -> bool {
    let Some(slot) = guest_slot() else {
        return false;
    };
    let fsgs = FSGSBASE.load(Ordering::Relaxed);
    let guest_tp = thread_pointer(fsgs);
    // SAFETY: this thread's kbox thread pointer, recorded by adopt_current_thread.
    unsafe { set_thread_pointer(fsgs, slot.kbox_tp.load(Ordering::Relaxed)) };
    slot.in_kbox.store(true, Ordering::Release);
    // SAFETY: the caller passes the kernel's ucontext, valid for the handler's duration.
    let uc = unsafe { &mut *ctx.cast::<libc::ucontext_t>() };
    let mut call = Trapped { uc, guest_tp };
    serve(&mut call);
    let guest_tp = call.guest_tp;
    // Looked up again: in a child forked meanwhile, this thread has a new slot.
    if let Some(slot) = own_slot() {
        slot.in_kbox.store(false, Ordering::Release);
    }
    // SAFETY: back to the guest's TLS for the guest code the handler returns to.
    unsafe { set_thread_pointer(fsgs, guest_tp) };
    true
}

/// The SIGSYS handler.
pub extern "C" fn on_sigsys(_sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut c_void) {
    // SAFETY: the kernel passes its ucontext to this SA_SIGINFO handler.
    if unsafe { with_guest_frame(ctx, super::serve) } {
        return;
    }
    // kbox's own call: made as asked, on kbox's thread pointer, which is in place.
    // SAFETY: as for ctx above.
    let uc = unsafe { &mut *ctx.cast::<libc::ucontext_t>() };
    let (nr, args) = call_of(uc);
    // SAFETY: kbox's own code asked for this call with these arguments.
    uc.uc_mcontext.gregs[reg(libc::REG_RAX)] = unsafe { raw_syscall(nr, args) };
}
