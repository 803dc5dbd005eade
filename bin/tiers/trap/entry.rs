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

    /// Makes the guest make call `nr` again when it resumes (after a signal's handler has
    /// run, as SA_RESTART asks): its syscall instruction is two bytes before where it
    /// resumes.
    pub fn restart_syscall(&mut self, nr: u64) {
        let g = &mut self.uc.uc_mcontext.gregs;
        g[reg(libc::REG_RAX)] = nr.cast_signed();
        g[reg(libc::REG_RIP)] -= 2;
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
        // The order matters: a signal may arrive whenever the guest's mask is in place, and
        // its handler (the guest's) must then find the guest's thread pointer and this
        // thread marked as running guest code. So the thread pointer switches while every
        // signal is still blocked, on both sides.
        // SAFETY: rt_sigprocmask on local 8-byte sets; between the two thread-pointer
        // switches only raw syscalls and atomics run, which touch no TLS.
        unsafe {
            set_thread_pointer(fsgs, self.guest_tp);
            slot.in_kbox.store(false, Ordering::Release);
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
            let r = make();
            raw_syscall(
                SYS_RT_SIGPROCMASK,
                [SIG_SETMASK, (&raw const kbox_mask) as u64, 0, 8, 0, 0],
            );
            slot.in_kbox.store(true, Ordering::Release);
            set_thread_pointer(fsgs, slot.kbox_tp.load(Ordering::Relaxed));
            r
        }
    }
}

#[repr(C, align(16))]
struct Frame {
    /// The return address slot a handler's `ret` pops before rt_sigreturn runs.
    _pretcode: u64,
    uc: libc::ucontext_t,
    _info: libc::siginfo_t,
}

/// Starts guest code on the calling guest thread with every register, the signal mask and
/// the thread pointer at once (rt_sigreturn loads them together, so no signal can find the
/// thread half switched). `regs` and `uc_flags` are as a signal frame holds them; the FPU
/// starts in its initial state.
pub fn enter_guest(regs: [i64; 23], uc_flags: u64, mask: u64, tp: u64) -> ! {
    // SAFETY: an all-zero frame is valid to fill in.
    let mut frame: Box<Frame> = Box::new(unsafe { std::mem::zeroed() });
    frame.uc.uc_flags = uc_flags;
    frame.uc.uc_mcontext.gregs = regs;
    frame.uc.uc_stack.ss_flags = libc::SS_DISABLE;
    // SAFETY: the kernel's sigset is the first 8 bytes of libc's.
    unsafe { *(&raw mut frame.uc.uc_sigmask).cast::<u64>() = mask & !SIGSYS_BIT };
    let uc = std::ptr::from_ref(&frame.uc) as u64;
    // Never freed: the thread is the guest's from here on.
    std::mem::forget(frame);
    leave_kbox();
    // SAFETY: a complete register state for guest code, with the guest's thread pointer;
    // every signal is blocked until rt_sigreturn installs `mask`.
    unsafe { kbox_arch::x86_64::trap::resume_context(uc, tp, FSGSBASE.load(Ordering::Relaxed)) }
}

/// The register state a program starts with: everything zero but its entry, its stack and
/// the user code and stack segments.
pub fn initial_registers(entry: u64, sp: u64) -> [i64; 23] {
    const USER_CS: i64 = 0x33;
    const USER_SS: i64 = 0x2b;
    const EFLAGS_IF: i64 = 0x202;
    let mut g = [0i64; 23];
    g[reg(libc::REG_RIP)] = entry.cast_signed();
    g[reg(libc::REG_RSP)] = sp.cast_signed();
    g[reg(libc::REG_EFL)] = EFLAGS_IF;
    g[reg(libc::REG_CSGSFS)] = USER_CS | (USER_SS << 48);
    g
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
pub extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    /// si_code of a SIGSYS raised by a seccomp filter (any other was sent by someone).
    const SYS_SECCOMP: i32 = 1;
    // SAFETY: the kernel passes a valid siginfo to this SA_SIGINFO handler.
    if unsafe { (*info).si_code } != SYS_SECCOMP {
        return;
    }
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
