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
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};

use kbox_arch::trap::{gettid, raw_syscall, set_thread_pointer, thread_pointer};

use super::context::{self, SigFrame};
pub use super::context::{Registers, initial_registers};
use super::sysno::{SYS_RT_SIGPROCMASK, SYS_SIGALTSTACK};

/// Guest threads one kbox serves (the trap tier runs one guest process).
const MAX_THREADS: usize = 64;
const SIG_SETMASK: u64 = 2;
/// SIGSYS's bit in a kernel sigset: never blocked while guest code runs.
pub const SIGSYS_BIT: u64 = 1 << (libc::SIGSYS - 1);

struct Slot {
    tid: AtomicU32,
    /// kbox's thread pointer for this thread.
    kbox_tp: AtomicU64,
    /// kbox's code is running on the thread (its SIGSYS are its own).
    in_kbox: AtomicBool,
    /// Where kbox's code serving this thread's calls starts its stack: the thread's own
    /// (kbox started it), unused once it runs guest code. A guest's stack may be tiny (musl's
    /// posix_spawn runs its child on 5 KiB), so calls are never served on it.
    kbox_stack: AtomicU64,
    /// While kbox waits on a call the guest's way ([`Trapped::as_guest`]), the lowest
    /// address its frames on the kbox stack use: a guest signal handler may then run (on
    /// the guest's stack, or its alternate one) and make calls, which are served below it.
    kbox_stack_busy: AtomicU64,
    /// Where the kernel puts SIGSYS frames while the guest has no alternate signal stack
    /// on the thread ([`SIGNAL_STACK`] bytes, kept for the slot's later threads).
    signal_stack: AtomicU64,
    /// The alternate signal stack the guest set on the thread (size 0: none), which is the
    /// host's while it is set.
    guest_alt: AltStack,
}

/// An alternate signal stack as sigaltstack takes it (flags: SS_AUTODISARM or 0).
struct AltStack {
    sp: AtomicU64,
    size: AtomicU64,
    flags: AtomicI32,
}

impl AltStack {
    fn get(&self) -> (u64, u64, i32) {
        (
            self.sp.load(Ordering::Relaxed),
            self.size.load(Ordering::Relaxed),
            self.flags.load(Ordering::Relaxed),
        )
    }

    fn set(&self, (sp, size, flags): (u64, u64, i32)) {
        self.sp.store(sp, Ordering::Relaxed);
        self.size.store(size, Ordering::Relaxed);
        self.flags.store(flags, Ordering::Relaxed);
    }
}

/// Stack every guest thread gets from kbox, for kbox's code serving its calls.
pub const KBOX_STACK: usize = 1 << 20;
/// How far below a thread's stack top serving may be found already (nested: a guest signal
/// handler that ran while kbox waited on the guest's behalf made a call).
const KBOX_STACK_SPAN: u64 = (KBOX_STACK as u64) - (64 << 10);

static SLOTS: [Slot; MAX_THREADS] = [const {
    Slot {
        tid: AtomicU32::new(0),
        kbox_tp: AtomicU64::new(0),
        in_kbox: AtomicBool::new(false),
        kbox_stack: AtomicU64::new(0),
        kbox_stack_busy: AtomicU64::new(0),
        signal_stack: AtomicU64::new(0),
        guest_alt: AltStack {
            sp: AtomicU64::new(0),
            size: AtomicU64::new(0),
            flags: AtomicI32::new(0),
        },
    }
}; MAX_THREADS];

/// kbox's SIGSYS (and fatal-signal) handler runs on an alternate stack: on AArch64, whose
/// frames (over 4.5 KiB) overran the 5 KiB stacks musl's posix_spawn children run on. On
/// x86-64 the frames fit there (`smallstack`), and with SA_ONSTACK Debian's 6.1 kernel
/// under TCG (AVX2, PKU) killed `altstack` with a SIGSEGV at a SIGSYS nested on the
/// guest's alternate stack (the signal frame did not fit, it said); not root-caused, so
/// x86-64 keeps its frames on the stack the guest runs on.
pub const SIGNALS_ON_SIGNAL_STACK: bool = cfg!(target_arch = "aarch64");

/// Bytes of a guest thread's own signal stack (a few SIGSYS frames: AArch64's with SVE
/// state are the largest, about 10 KiB).
const SIGNAL_STACK: usize = 64 << 10;
const SS_DISABLE: i32 = 2;
const SS_AUTODISARM: i32 = 1 << 31;
/// rdfsbase/wrfsbase are usable (AT_HWCAP2 bit 1): no syscall to switch thread pointers.
static FSGSBASE: AtomicBool = AtomicBool::new(false);

/// Makes the calling thread a guest thread: once it runs guest code ([`leave_kbox`]), its
/// SIGSYS are guest calls.
///
/// Its calls are served on the stack below the caller's frame, which must not return
/// before the thread ends (it starts guest code with [`enter_guest`]).
pub fn adopt_current_thread() -> bool {
    // Below this function's frame, with room for what runs until the guest starts.
    let stack = (current_sp() - (16 << 10)) & !15;
    adopt(stack, None)
}

/// Takes a slot for the calling thread, with its kbox stack, and the signal stack and
/// guest alternate stack it inherits (a forked copy), or none yet.
fn adopt(kbox_stack: u64, inherited: Option<(u64, (u64, u64, i32))>) -> bool {
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
            slot.kbox_stack.store(kbox_stack, Ordering::Relaxed);
            // Nothing of this thread's waits on the stack yet (a reused slot's mark is
            // another thread's).
            slot.kbox_stack_busy.store(0, Ordering::Relaxed);
            match inherited {
                Some((signal_stack, guest_alt)) => {
                    slot.signal_stack.store(signal_stack, Ordering::Relaxed);
                    slot.guest_alt.set(guest_alt);
                }
                None => {
                    if SIGNALS_ON_SIGNAL_STACK && slot.signal_stack.load(Ordering::Relaxed) == 0 {
                        slot.signal_stack
                            .store(new_signal_stack(), Ordering::Relaxed);
                    }
                    // A new thread has no alternate stack of its own (as after clone).
                    slot.guest_alt.set((0, 0, 0));
                }
            }
            set_host_altstack(&host_altstack(slot));
            slot.in_kbox.store(true, Ordering::Release);
            return true;
        }
    }
    false
}

/// The stack pointer, near enough (a local's address).
#[inline(always)]
fn current_sp() -> u64 {
    let here = 0u8;
    std::hint::black_box(&raw const here) as u64
}

/// Whether `sp` is on the kbox stack that starts at `top`.
fn within(top: u64, sp: u64) -> bool {
    top != 0 && sp <= top && top - sp < KBOX_STACK_SPAN
}

/// Runs `f` on the calling guest thread's kbox stack: from its top, or below the frames of
/// a call kbox is waiting on meanwhile (a guest signal handler's call), or where it is when
/// it is on that stack already.
fn on_kbox_stack(slot: &Slot, f: &mut dyn FnMut()) {
    /// Room left below a waiting call's frames (its red zone and more).
    const GAP: u64 = 4096;
    let mut top = slot.kbox_stack.load(Ordering::Relaxed);
    if top == 0 || within(top, current_sp()) {
        return f();
    }
    let busy = slot.kbox_stack_busy.load(Ordering::Acquire);
    if within(top, busy) {
        top = (busy - GAP) & !15;
    }
    extern "C" fn run(arg: *mut c_void) {
        // SAFETY: `arg` is the `&mut &mut dyn FnMut()` passed below, alive for the call.
        let f = unsafe { &mut *arg.cast::<&mut dyn FnMut()>() };
        f();
    }
    let mut f = f;
    // SAFETY: the thread's own kbox stack, unused by anything else while the thread runs
    // kbox's code (checked above: not already on it).
    unsafe {
        kbox_arch::trap::call_on_stack(top, run, (&raw mut f).cast());
    }
}

fn own_slot() -> Option<&'static Slot> {
    let tid = gettid();
    SLOTS.iter().find(|s| s.tid.load(Ordering::Acquire) == tid)
}

/// The calling thread's slot once kbox has served a call on `slot` as thread `tid`: the
/// same one, unless the call forked this process, whose one thread has a slot of its own
/// (and another tid). Saves a gettid per call.
fn slot_after_call(slot: &'static Slot, tid: u32) -> Option<&'static Slot> {
    if slot.tid.load(Ordering::Acquire) == tid {
        Some(slot)
    } else {
        own_slot()
    }
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
    // The forking thread serves this call on its kbox stack, which this copy keeps.
    let sp = current_sp();
    let forking = SLOTS
        .iter()
        .find(|s| within(s.kbox_stack.load(Ordering::Relaxed), sp));
    let stack = forking.map_or(0, |s| s.kbox_stack.load(Ordering::Relaxed));
    // Its signal stacks too (the copy's memory has them where they were).
    let inherited = forking.map(|s| (s.signal_stack.load(Ordering::Relaxed), s.guest_alt.get()));
    for slot in &SLOTS {
        slot.tid.store(0, Ordering::Relaxed);
    }
    adopt(stack, inherited);
}

/// Maps a signal stack for a guest thread (0 when none can be had).
fn new_signal_stack() -> u64 {
    // SAFETY: a fresh private anonymous mapping, owned by the slot from here on.
    unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            SIGNAL_STACK,
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::PRIVATE,
        )
    }
    .map_or(0, |p| p as u64)
}

/// The host's alternate signal stack for a guest thread: the guest's own while it has one
/// (so its SA_ONSTACK handlers run there, as natively), else the thread's signal stack
/// where SIGSYS is SA_ONSTACK ([`SIGNALS_ON_SIGNAL_STACK`]: its frames then land on one of
/// these and never on a stack the guest runs code on), else none. The thread's own is
/// SS_AUTODISARM: while a handler runs on it the host has none, so a signal kbox's wait
/// lets through (or the guest's call of sigaltstack) finds no stack in use by kbox's
/// frames.
fn host_altstack(slot: &Slot) -> libc::stack_t {
    let (sp, size, flags) = slot.guest_alt.get();
    if size != 0 {
        return libc::stack_t {
            ss_sp: sp as *mut c_void,
            ss_flags: flags,
            ss_size: usize::try_from(size).unwrap_or(0),
        };
    }
    match slot.signal_stack.load(Ordering::Relaxed) {
        0 => libc::stack_t {
            ss_sp: std::ptr::null_mut(),
            ss_flags: SS_DISABLE,
            ss_size: 0,
        },
        base => libc::stack_t {
            ss_sp: base as *mut c_void,
            ss_flags: SS_AUTODISARM,
            ss_size: SIGNAL_STACK,
        },
    }
}

/// sigaltstack on the host: the raw result.
fn set_host_altstack(st: &libc::stack_t) -> i64 {
    // SAFETY: sigaltstack reads the caller's stack_t and changes this thread's setting.
    unsafe {
        raw_syscall(
            SYS_SIGALTSTACK,
            [std::ptr::from_ref(st) as u64, 0, 0, 0, 0, 0],
        )
    }
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

/// One trapped call: the guest's registers as the signal frame holds them.
pub struct Trapped<'a> {
    uc: &'a mut libc::ucontext_t,
    /// The guest's thread pointer, put back when the handler returns.
    pub guest_tp: u64,
    /// How far before where the guest resumes its call is made again: the syscall
    /// instruction for a trap, the trampoline's call sequence for a patched site.
    restart_back: i64,
    /// The call's first argument as the guest made it (AArch64's result register holds it).
    first_arg: u64,
    /// The frame is a copy in kbox's memory ([`Trapped::detach_frame`]).
    detached: bool,
    /// The calling thread's tid.
    tid: u32,
}

impl<'a> Trapped<'a> {
    /// A call whose registers are in `uc`, made on thread pointer `guest_tp` by the thread
    /// of `slot`; a restart goes `restart_back` bytes back from where it resumes.
    fn new(uc: &'a mut libc::ucontext_t, guest_tp: u64, restart_back: i64, slot: &Slot) -> Self {
        let first_arg = context::call_of(uc).1[0];
        Trapped {
            uc,
            guest_tp,
            restart_back,
            first_arg,
            detached: false,
            tid: slot.tid.load(Ordering::Relaxed),
        }
    }

    /// The calling thread's tid (the thread's own, not a copy's after a fork it made).
    pub fn tid(&self) -> u32 {
        self.tid
    }

    /// The syscall number and its six arguments.
    pub fn call(&self) -> (u64, [u64; 6]) {
        context::call_of(self.uc)
    }

    pub fn set_result(&mut self, v: i64) {
        context::set_result(self.uc, v);
    }

    /// The guest's registers and its frame's flags (a new thread starts from a copy).
    pub fn registers(&self) -> (Registers, u64) {
        (context::registers(self.uc), self.uc.uc_flags)
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
        self.detach_frame();
        context::clear_for_exec(self.uc);
        context::set_ip(self.uc, ip);
        context::set_sp(self.uc, sp);
    }

    /// Makes the guest make call `nr` again when it resumes (after a signal's handler has
    /// run, as SA_RESTART asks).
    pub fn restart_syscall(&mut self, nr: u64) {
        context::restart(self.uc, nr, self.restart_back, self.first_arg);
    }

    /// Moves the frame to memory of kbox's own (an exec is about to unmap the program, and
    /// the kernel's frame may be in it: on its alternate signal stack). Once per call; the
    /// copy is never freed (nothing of the handler runs again after an exec, so a few KiB
    /// per exec).
    pub fn detach_frame(&mut self) {
        if self.detached {
            return;
        }
        // SAFETY: an all-zero frame is valid to fill in.
        let mut copy: Box<SigFrame> = Box::new(unsafe { std::mem::zeroed() });
        copy.uc = *self.uc;
        self.uc = &mut Box::leak(copy).uc;
        self.detached = true;
    }

    /// The frame the guest resumes from.
    fn into_frame(self) -> &'a mut libc::ucontext_t {
        self.uc
    }

    /// The guest's alternate signal stack on this thread: start, size (0: none) and
    /// SS_AUTODISARM.
    pub fn alternate_stack(&self) -> (u64, u64, i32) {
        own_slot().map_or((0, 0, 0), |s| s.guest_alt.get())
    }

    /// Gives the guest thread a new alternate signal stack (size 0: none), checked by the
    /// host's kernel as it would check the guest's own call; the frame's copy, which
    /// rt_sigreturn installs, follows.
    pub fn set_alternate_stack(&mut self, alt: (u64, u64, i32)) -> Result<(), i32> {
        let Some(slot) = own_slot() else {
            return Err(libc::ENOSYS);
        };
        let before = slot.guest_alt.get();
        slot.guest_alt.set(alt);
        let host = host_altstack(slot);
        let r = set_host_altstack(&host);
        if r < 0 {
            slot.guest_alt.set(before);
            return Err(i32::try_from(-r).unwrap_or(libc::EINVAL));
        }
        self.uc.uc_stack = host;
        Ok(())
    }

    /// The stack pointer the guest made its call with.
    pub fn guest_sp(&self) -> u64 {
        context::sp(self.uc)
    }

    /// Resumes the guest at `ip` instead of after its syscall, registers otherwise as they
    /// are (rt_sigreturn's stub).
    pub fn resume_at(&mut self, ip: u64) {
        context::set_ip(self.uc, ip);
    }

    /// Moves the stack pointer the guest resumes with (a forked child on its own stack).
    pub fn set_sp(&mut self, sp: u64) {
        context::set_sp(self.uc, sp);
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
        // A guest handler that runs meanwhile must not have its calls served over these
        // frames.
        let busy_before = slot
            .kbox_stack_busy
            .swap(current_sp() & !15, Ordering::AcqRel);
        let r = self.as_guest_in(slot, make);
        slot.kbox_stack_busy.store(busy_before, Ordering::Release);
        r
    }

    fn as_guest_in(&mut self, slot: &Slot, make: impl FnOnce() -> i64) -> i64 {
        let before = self.keep_signals_off_frame(slot);
        let r = self.as_guest_masked(slot, make);
        if let Some(before) = before {
            set_host_altstack(&before);
        }
        r
    }

    /// When this call's signal frame is on the guest's alternate stack (the host took the
    /// trap there), or the guest made it from there (a handler on that stack; a patched
    /// call's saves are there), a guest handler for a signal let through meanwhile would
    /// start at that stack's top, over them, since kbox's code waits on another stack:
    /// until the call ends the host's alternate stack stops below them (found by the
    /// aarch64 VM: altstack's timer handler ran over a SIGUSR1 handler's patched getpid).
    /// Returns the setting to restore when it was changed (a nested call's restores its
    /// caller's).
    fn keep_signals_off_frame(&self, slot: &Slot) -> Option<libc::stack_t> {
        /// Below a patched call's guest stack pointer: the trampoline's and the entry
        /// stub's saves and the Rust frames that ran there before the stack switch.
        const STUB_ROOM: u64 = 8 << 10;
        let (sp, size, flags) = slot.guest_alt.get();
        let on_alt = |at: u64| size != 0 && (sp..sp + size).contains(&at);
        // The kernel's frame (a trap taken there), and the guest's own stack pointer (a
        // handler running there made the call: a patched call's frames are below it, and
        // natively a signal would nest below them, not start at the top).
        let frame = std::ptr::from_ref(&*self.uc) as u64;
        let guest_sp = context::sp(self.uc);
        let in_use = [
            on_alt(frame).then(|| frame.saturating_sub(1024)),
            on_alt(guest_sp).then(|| guest_sp.saturating_sub(STUB_ROOM)),
        ]
        .into_iter()
        .flatten()
        .min()?;
        let mut before = libc::stack_t {
            ss_sp: std::ptr::null_mut(),
            ss_flags: SS_DISABLE,
            ss_size: 0,
        };
        // SAFETY: sigaltstack writes the current setting to the local.
        unsafe { raw_syscall(SYS_SIGALTSTACK, [0, (&raw mut before) as u64, 0, 0, 0, 0]) };
        // The siginfo and a record or two lie below a ucontext.
        let below = in_use & !15;
        let shrunk = libc::stack_t {
            ss_sp: sp as *mut c_void,
            ss_flags: flags,
            ss_size: usize::try_from(below - sp.min(below)).unwrap_or(0),
        };
        if set_host_altstack(&shrunk) < 0 {
            // Too small to hold a frame: no alternate stack until the call ends.
            set_host_altstack(&libc::stack_t {
                ss_sp: std::ptr::null_mut(),
                ss_flags: SS_DISABLE,
                ss_size: 0,
            });
        }
        // The kernel reports SS_ONSTACK for a stack in use; it takes only 0 or the flags.
        before.ss_flags &= SS_DISABLE | SS_AUTODISARM;
        Some(before)
    }

    fn as_guest_masked(&mut self, slot: &Slot, make: impl FnOnce() -> i64) -> i64 {
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

/// Starts guest code on the calling guest thread with every register, the signal mask and
/// the thread pointer at once (rt_sigreturn loads them together, so no signal can find the
/// thread half switched). `regs` and `uc_flags` are as a signal frame holds them; the FPU
/// starts in its initial state.
pub fn enter_guest(regs: &Registers, uc_flags: u64, mask: u64, tp: u64) -> ! {
    // SAFETY: an all-zero frame is valid to fill in.
    let mut frame: Box<SigFrame> = Box::new(unsafe { std::mem::zeroed() });
    frame.uc.uc_flags = uc_flags;
    context::set_registers(&mut frame.uc, regs);
    // rt_sigreturn installs it: the one adopt gave the thread.
    frame.uc.uc_stack = own_slot().map_or(
        libc::stack_t {
            ss_sp: std::ptr::null_mut(),
            ss_flags: SS_DISABLE,
            ss_size: 0,
        },
        host_altstack,
    );
    // SAFETY: the kernel's sigset is the first 8 bytes of libc's.
    unsafe { *(&raw mut frame.uc.uc_sigmask).cast::<u64>() = mask & !SIGSYS_BIT };
    let uc = std::ptr::from_ref(&frame.uc) as u64;
    // Never freed: the thread is the guest's from here on.
    std::mem::forget(frame);
    leave_kbox();
    // SAFETY: a complete register state for guest code, with the guest's thread pointer;
    // every signal is blocked until rt_sigreturn installs `mask`.
    unsafe { kbox_arch::trap::resume_context(uc, tp, FSGSBASE.load(Ordering::Relaxed)) }
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
    // Everything else runs on the thread's kbox stack: the guest's holds the kernel's
    // signal frame already and may be small.
    let mut serve = Some(serve);
    on_kbox_stack(slot, &mut || {
        if let Some(serve) = serve.take() {
            // SAFETY: as the caller vouches for ctx.
            unsafe { serve_trapped(slot, ctx, serve) };
        }
    });
    true
}

/// [`with_guest_frame`]'s work, on the kbox stack.
///
/// # Safety
/// As [`with_guest_frame`].
#[inline(never)]
unsafe fn serve_trapped(
    slot: &'static Slot,
    ctx: *mut c_void,
    serve: impl FnOnce(&mut Trapped<'_>),
) {
    let fsgs = FSGSBASE.load(Ordering::Relaxed);
    let guest_tp = thread_pointer(fsgs);
    // SAFETY: this thread's kbox thread pointer, recorded by adopt_current_thread.
    unsafe { set_thread_pointer(fsgs, slot.kbox_tp.load(Ordering::Relaxed)) };
    slot.in_kbox.store(true, Ordering::Release);
    // SAFETY: the caller passes the kernel's ucontext, valid for the handler's duration.
    let uc = unsafe { &mut *ctx.cast::<libc::ucontext_t>() };
    let mut call = Trapped::new(uc, guest_tp, context::SYSCALL_INSN_LEN, slot);
    serve(&mut call);
    let (guest_tp, tid) = (call.guest_tp, call.tid);
    // A new program starts from the frame's copy (the kernel's may be on the old
    // program's alternate signal stack, which the exec unmapped).
    let detached = call.detached.then(|| std::ptr::from_ref(&*call.uc) as u64);
    if let Some(slot) = slot_after_call(slot, tid) {
        slot.in_kbox.store(false, Ordering::Release);
    }
    if let Some(uc) = detached {
        // SAFETY: a complete register state for the guest in a SigFrame of kbox's, with
        // its thread pointer; every signal is blocked until rt_sigreturn installs the
        // frame's mask.
        unsafe { kbox_arch::trap::resume_context(uc, guest_tp, fsgs) }
    }
    // SAFETY: back to the guest's TLS for the guest code the handler returns to.
    unsafe { set_thread_pointer(fsgs, guest_tp) };
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
    let (nr, args) = context::call_of(uc);
    // SAFETY: kbox's own code asked for this call with these arguments.
    context::set_result(uc, unsafe { raw_syscall(nr, args) });
}

pub use patched::init_trampolines;

/// Signals kbox blocks while it serves a patched call: all but SIGSYS and the signal kbox
/// interrupts its own waits with (set by [`prepare_patched_calls`]).
static KBOX_BLOCKED: AtomicU64 = AtomicU64::new(!SIGSYS_BIT);

/// Before the first patched call: kbox's interrupt signal stays deliverable.
fn prepare_patched_calls() {
    let kick = u32::try_from(crate::dispatch::kick_signal() - 1).unwrap_or(63);
    KBOX_BLOCKED.store(!SIGSYS_BIT & !(1u64 << kick), Ordering::Relaxed);
}

/// A patched call's first step, on the guest's stack: blocks every signal kbox does not
/// need and returns the guest's mask. Until kbox's thread pointer is in place only raw
/// syscalls and atomics run.
fn block_for_patched_call() -> u64 {
    let blocked = KBOX_BLOCKED.load(Ordering::Relaxed);
    let mut guest_mask = 0u64;
    // SAFETY: rt_sigprocmask on local 8-byte sets.
    unsafe {
        raw_syscall(
            SYS_RT_SIGPROCMASK,
            [
                SIG_SETMASK,
                (&raw const blocked) as u64,
                (&raw mut guest_mask) as u64,
                8,
                0,
                0,
            ],
        )
    };
    guest_mask
}

/// kbox's thread pointer in place, and the thread marked as running kbox's code, to serve
/// a patched call; returns the guest's thread pointer.
fn enter_patched_call(slot: &Slot) -> u64 {
    let fsgs = FSGSBASE.load(Ordering::Relaxed);
    let guest_tp = thread_pointer(fsgs);
    // SAFETY: this thread's kbox thread pointer, recorded by adopt_current_thread.
    unsafe { set_thread_pointer(fsgs, slot.kbox_tp.load(Ordering::Relaxed)) };
    slot.in_kbox.store(true, Ordering::Release);
    guest_tp
}

/// A patched call's service on `slot` for thread `tid` ends: `resume` when the guest goes
/// on after its call (the stub restores the frame's registers and mask), else the address
/// of `uc`, which the stub loads whole by rt_sigreturn, with the thread's alternate stack
/// kept (rt_sigreturn also installs the frame's). The guest's thread pointer is back
/// either way; every signal is still blocked.
fn leave_patched_call(
    (slot, tid): (&'static Slot, u32),
    uc: &mut libc::ucontext_t,
    resumes_after_call: bool,
    resume: u64,
    guest_tp: u64,
) -> u64 {
    if !resumes_after_call {
        // SAFETY: sigaltstack changes nothing and writes the current setting to uc_stack.
        unsafe {
            raw_syscall(
                SYS_SIGALTSTACK,
                [0, (&raw mut uc.uc_stack) as u64, 0, 0, 0, 0],
            )
        };
    }
    if let Some(slot) = slot_after_call(slot, tid) {
        slot.in_kbox.store(false, Ordering::Release);
    }
    // SAFETY: back to the guest's TLS for the guest code the stub returns to.
    unsafe { set_thread_pointer(FSGSBASE.load(Ordering::Relaxed), guest_tp) };
    if resumes_after_call {
        resume
    } else {
        std::ptr::from_mut(uc) as u64
    }
}

/// Calls from the rewrite tier's patched sites (the trampolines' entry stub).
#[cfg_attr(target_arch = "x86_64", path = "patched_x86_64.rs")]
#[cfg_attr(target_arch = "aarch64", path = "patched_aarch64.rs")]
mod patched;
