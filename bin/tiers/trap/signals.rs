//! The guest's signal dispositions and mask, kept apart from kbox's own needs: SIGSYS stays
//! kbox's (the guest's action for it is only recorded, and no mask ever blocks it), and a
//! signal whose default action ends the process reaches kbox first, so kbox unmounts the
//! image cleanly and exits as the guest would have died.

use std::ffi::c_void;
use std::sync::Mutex;

use kbox_arch::trap::raw_syscall;
use kbox_lkl::Errno;

use super::entry::{SIGSYS_BIT, Trapped, with_guest_frame};
use super::sysno::SYS_RT_SIGACTION;

const SIG_DFL: u64 = 0;
const SIG_IGN: u64 = 1;
const NSIG: usize = 65;

/// `struct sigaction` as the x86-64 kernel reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelSigaction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

impl KernelSigaction {
    fn to_bytes(self) -> [u8; 32] {
        let mut b = [0u8; 32];
        for (i, v) in [self.handler, self.flags, self.restorer, self.mask]
            .iter()
            .enumerate()
        {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_ne_bytes());
        }
        b
    }

    fn from_bytes(b: &[u8; 32]) -> Self {
        let w = |i: usize| u64::from_ne_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        KernelSigaction {
            handler: w(0),
            flags: w(1),
            restorer: w(2),
            mask: w(3),
        }
    }
}

/// What the guest believes each signal's action is.
static GUEST: Mutex<[KernelSigaction; NSIG]> = Mutex::new(
    [KernelSigaction {
        handler: 0,
        flags: 0,
        restorer: 0,
        mask: 0,
    }; NSIG],
);

/// Holds the guest's signal table (across a fork: see `super::hold_for_fork`).
pub fn hold() -> std::sync::MutexGuard<'static, [KernelSigaction; NSIG]> {
    GUEST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Signals 1..32 whose default action ends the process (SIGKILL aside: nothing catches it).
fn ends_process(sig: usize) -> bool {
    let sig = i32::try_from(sig).unwrap_or(0);
    (1..32).contains(&sig)
        && ![
            libc::SIGKILL,
            libc::SIGSTOP,
            libc::SIGTSTP,
            libc::SIGTTIN,
            libc::SIGTTOU,
            libc::SIGCHLD,
            libc::SIGCONT,
            libc::SIGURG,
            libc::SIGWINCH,
            libc::SIGSYS,
        ]
        .contains(&sig)
}

fn host_action(
    sig: usize,
    act: Option<&KernelSigaction>,
    old: Option<&mut KernelSigaction>,
) -> i64 {
    let new_ptr = act.map_or(0, |a| std::ptr::from_ref(a) as u64);
    let old_ptr = old.map_or(0, |o| std::ptr::from_mut(o) as u64);
    // SAFETY: rt_sigaction with kbox's own 32-byte structs (or null) and the kernel's
    // sigset size.
    unsafe { raw_syscall(SYS_RT_SIGACTION, [sig as u64, new_ptr, old_ptr, 8, 0, 0]) }
}

fn kbox_action(
    handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut c_void),
) -> libc::sigaction {
    // SAFETY: an all-zero sigaction is valid (SIG_DFL, no flags, empty mask).
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = handler as usize;
    // Where the architecture's frames are too big for a guest's small stacks, on the
    // thread's signal stack or the guest's alternate one (entry::host_altstack).
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
    if super::entry::SIGNALS_ON_SIGNAL_STACK {
        sa.sa_flags |= libc::SA_ONSTACK;
    }
    // SAFETY: sa_mask is a valid sigset to fill; nothing but SIGSYS may interrupt kbox while
    // it serves a call (guest handlers must not run on kbox's thread pointer).
    unsafe {
        libc::sigfillset(&mut sa.sa_mask);
        libc::sigdelset(&mut sa.sa_mask, libc::SIGSYS);
        // Threads kbox starts while serving (to wait on the guest's behalf) inherit this
        // mask, and must stay interruptible by kbox (its handler does nothing).
        libc::sigdelset(&mut sa.sa_mask, crate::dispatch::kick_signal());
    }
    sa
}

fn install(sig: usize, sa: &libc::sigaction) {
    // SAFETY: a valid sigaction for a catchable signal.
    unsafe { libc::sigaction(i32::try_from(sig).unwrap_or(0), sa, std::ptr::null_mut()) };
}

/// Takes SIGSYS and the process-ending signals, recording what the guest inherits.
pub fn install_initial() {
    let mut table = GUEST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // The guest inherits what kbox's own parent left ignored; every other signal starts at
    // its default action (handlers kbox's runtime installed, such as Rust's SIGSEGV one for
    // stack overflows, are kbox's, not the guest's, and give way to on_fatal).
    for (sig, entry) in table.iter_mut().enumerate().skip(1) {
        let mut old = KernelSigaction::default();
        let ignored = host_action(sig, None, Some(&mut old)) == 0 && old.handler == SIG_IGN;
        *entry = KernelSigaction {
            handler: if ignored { SIG_IGN } else { SIG_DFL },
            ..KernelSigaction::default()
        };
    }
    install(libc::SIGSYS as usize, &kbox_action(super::entry::on_sigsys));
    table[libc::SIGSYS as usize] = KernelSigaction::default();
    let fatal = kbox_action(on_fatal);
    for (sig, entry) in table.iter().enumerate() {
        if ends_process(sig) && entry.handler == SIG_DFL {
            install(sig, &fatal);
        }
    }
}

fn guest_read(tid: u32, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
    crate::seccomp::guest_mem::read(tid, addr, buf).map_err(|e| Errno(i32::from(e.errno().get())))
}

fn guest_write(tid: u32, addr: u64, buf: &[u8]) -> Result<(), Errno> {
    crate::seccomp::guest_mem::write(tid, addr, buf).map_err(|e| Errno(i32::from(e.errno().get())))
}

/// Whether the guest's handler for `sig` asks for interrupted calls to restart.
pub fn restarts(sig: usize) -> bool {
    const SA_RESTART: u64 = 0x1000_0000;
    let table = GUEST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    table.get(sig).is_some_and(|a| a.flags & SA_RESTART != 0)
}

/// rt_sigaction for the guest.
pub fn sigaction(tid: u32, args: [u64; 6]) -> Result<i64, Errno> {
    let (sig, act, oldact, size) = (args[0], args[1], args[2], args[3]);
    let sig = usize::try_from(sig)
        .ok()
        .filter(|s| (1..NSIG).contains(s))
        .ok_or(Errno::EINVAL)?;
    if size != 8 {
        return Err(Errno::EINVAL);
    }
    let uncatchable = sig == libc::SIGKILL as usize || sig == libc::SIGSTOP as usize;
    if uncatchable && act != 0 {
        return Err(Errno::EINVAL);
    }
    let new = if act == 0 {
        None
    } else {
        let mut b = [0u8; 32];
        guest_read(tid, act, &mut b)?;
        Some(KernelSigaction::from_bytes(&b))
    };
    let mut table = GUEST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let previous = table[sig];
    // kbox's own signals: what the guest asks for them is recorded only.
    let kbox_own = sig == libc::SIGSYS as usize
        || i32::try_from(sig).ok() == Some(crate::dispatch::kick_signal());
    if let Some(new) = new {
        if !kbox_own {
            if new.handler == SIG_DFL && ends_process(sig) {
                install(sig, &kbox_action(on_fatal));
            } else {
                let host = KernelSigaction {
                    mask: new.mask & !SIGSYS_BIT,
                    ..new
                };
                let r = host_action(sig, Some(&host), None);
                if r < 0 {
                    return Err(Errno(i32::try_from(-r).unwrap_or(22)));
                }
            }
        }
        table[sig] = new;
    }
    if oldact != 0 {
        guest_write(tid, oldact, &previous.to_bytes())?;
    }
    Ok(0)
}

/// sigaltstack for the guest. The guest's setting is kept by kbox (entry.rs), since the
/// host's is the thread's own signal stack while the guest has none, and the handler's
/// return would undo a host setting made during the call: ss_sp, ss_flags, ss_size as the
/// kernel lays out `stack_t` (24 bytes).
pub fn sigaltstack(call: &mut Trapped<'_>, tid: u32, args: [u64; 6]) -> Result<i64, Errno> {
    const SS_ONSTACK: i32 = 1;
    const SS_DISABLE: i32 = 2;
    const SS_AUTODISARM: i32 = 1 << 31;
    let (new, old) = (args[0], args[1]);
    let (sp, size, flags) = call.alternate_stack();
    // As the kernel's on_sig_stack: the stack grows down from sp + size.
    let guest_sp = call.guest_sp();
    let on_it = size != 0 && flags & SS_AUTODISARM == 0 && guest_sp > sp && guest_sp - sp <= size;
    let word = |b: &[u8], at: usize| u64::from_ne_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
    if new != 0 {
        let mut b = [0u8; 24];
        guest_read(tid, new, &mut b)?;
        let ss_flags = i32::from_ne_bytes(b[8..12].try_into().unwrap_or([0; 4]));
        if on_it {
            return Err(Errno::EPERM);
        }
        let alt = match ss_flags & !SS_AUTODISARM {
            SS_DISABLE => (0, 0, 0),
            0 | SS_ONSTACK => (word(&b, 0), word(&b, 16), ss_flags & SS_AUTODISARM),
            _ => return Err(Errno::EINVAL),
        };
        // The kernel checks the size (MINSIGSTKSZ) as for the guest's own call.
        call.set_alternate_stack(alt).map_err(Errno)?;
    }
    if old != 0 {
        let state = if on_it {
            SS_ONSTACK
        } else if size == 0 {
            SS_DISABLE
        } else {
            0
        };
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&sp.to_ne_bytes());
        b[8..12].copy_from_slice(&(state | flags).to_ne_bytes());
        b[16..].copy_from_slice(&size.to_ne_bytes());
        guest_write(tid, old, &b)?;
    }
    Ok(0)
}

/// rt_sigprocmask for the guest: the mask lives in the signal frame, which the kernel
/// restores when the handler returns.
pub fn sigprocmask(call: &mut Trapped<'_>, tid: u32, args: [u64; 6]) -> Result<i64, Errno> {
    let (how, set, oldset, size) = (args[0], args[1], args[2], args[3]);
    if size != 8 {
        return Err(Errno::EINVAL);
    }
    let current = call.sigmask();
    let new = if set == 0 {
        None
    } else {
        let mut b = [0u8; 8];
        guest_read(tid, set, &mut b)?;
        let given = u64::from_ne_bytes(b);
        Some(match how {
            0 => current | given,
            1 => current & !given,
            2 => given,
            _ => return Err(Errno::EINVAL),
        })
    };
    if oldset != 0 {
        guest_write(tid, oldset, &current.to_ne_bytes())?;
    }
    if let Some(mask) = new {
        let unblockable = (1u64 << (libc::SIGKILL - 1)) | (1u64 << (libc::SIGSTOP - 1));
        call.set_sigmask(mask & !unblockable);
    }
    Ok(0)
}

/// execve resets caught signals to their default action; ignored ones stay ignored.
pub fn reset_on_exec() {
    let mut table = GUEST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for (sig, entry) in table.iter_mut().enumerate().skip(1) {
        if entry.handler == SIG_DFL || entry.handler == SIG_IGN {
            continue;
        }
        *entry = KernelSigaction::default();
        if sig == libc::SIGSYS as usize
            || i32::try_from(sig).ok() == Some(crate::dispatch::kick_signal())
        {
            continue;
        }
        if ends_process(sig) {
            install(sig, &kbox_action(on_fatal));
        } else {
            host_action(sig, Some(&KernelSigaction::default()), None);
        }
    }
}

/// A process-ending signal with the guest's default action: the guest dies of it.
extern "C" fn on_fatal(sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut c_void) {
    // SAFETY: the kernel passes its ucontext to this SA_SIGINFO handler.
    let guest = unsafe { with_guest_frame(ctx, |_| super::guest_died(sig)) };
    if !guest {
        // kbox's own fault (or a signal on one of its threads): its default action, now.
        // SAFETY: resets a signal kbox installed a handler for.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }
}
