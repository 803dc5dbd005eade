//! The calls a guest thread makes on the host exactly as it made them, with nothing of
//! kbox's around them: the policy allows them whatever their arguments, and the tier does
//! nothing of its own for them. A patched site's call of one is made straight by the
//! trampoline's entry stub (no Rust code, no signal mask or thread pointer switch, nothing
//! of kbox's running when a signal comes), and a trapped one skips the policy program's
//! evaluation.

use kbox_core::bpf::{Action, ArgRule, Rule};

use kbox_arch::entry::{self, HOST_CALLS_LEN};

/// Syscall numbers the table covers (x86_64's and AArch64's are below 512).
const CALLS: usize = HOST_CALLS_LEN;

/// The calls the tier serves itself (`super::tier_call`, `super::serve`): they never run
/// straight, whatever the policy says of them.
const TIER_OWN: &[u64] = &[
    super::sysno::SYS_CLOSE,
    super::sysno::SYS_RT_SIGACTION,
    super::sysno::SYS_SIGALTSTACK,
    super::sysno::SYS_RT_SIGPROCMASK,
    super::sysno::SYS_RT_SIGRETURN,
    super::sysno::SYS_BRK,
    super::sysno::SYS_MUNMAP,
    super::sysno::SYS_MREMAP,
    super::sysno::SYS_MMAP,
    super::sysno::SYS_MPROTECT,
    super::sysno::SYS_MSYNC,
    super::sysno::SYS_MINCORE,
    super::sysno::SYS_MADVISE,
    super::sysno::SYS_DUP2,
    super::sysno::SYS_CLONE,
    super::sysno::SYS_FORK,
    super::sysno::SYS_VFORK,
    super::sysno::SYS_EXECVE,
    super::sysno::SYS_EXIT,
    super::sysno::SYS_ARCH_PRCTL,
    super::sysno::SYS_EXIT_GROUP,
    super::sysno::SYS_DUP3,
    super::sysno::SYS_EXECVEAT,
    super::sysno::SYS_CLONE3,
    super::sysno::SYS_CLOSE_RANGE,
    super::sysno::SYS_RSEQ,
    super::sysno::SYS_SECCOMP,
    super::sysno::SYS_PRCTL,
    super::sysno::SYS_GETRLIMIT,
    super::sysno::SYS_SETRLIMIT,
    super::sysno::SYS_PRLIMIT64,
];

/// Fills the table (the trampoline stub's) from the policy's rules and argument checks.
pub fn init(rules: &[Rule], checks: &[ArgRule]) {
    for (nr, runs) in table(rules, checks).iter().enumerate() {
        entry::set_host_call(nr, *runs);
    }
}

/// The guest process is ending: every call reaches the tier again, which ends the thread.
pub fn stop() {
    entry::clear_host_calls();
}

fn table(rules: &[Rule], checks: &[ArgRule]) -> [bool; CALLS] {
    let mut t = [false; CALLS];
    for r in rules.iter().filter(|r| r.action == Action::Allow) {
        let nr = u64::from(r.nr);
        let checked = checks.iter().any(|c| c.nr == r.nr);
        if let Some(slot) = usize::try_from(nr).ok().and_then(|i| t.get_mut(i)) {
            *slot = !checked && !TIER_OWN.contains(&nr);
        }
    }
    t
}

/// Whether call `nr` runs on the host as the guest made it.
pub fn contains(nr: u64) -> bool {
    entry::is_host_call(nr)
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::dispatch::policy;

    fn policy_table(counted: bool) -> [bool; CALLS] {
        table(&policy::rules(false, false, counted), &policy::checks())
    }

    #[test]
    fn plain_host_calls_run_straight() {
        let t = policy_table(false);
        // read, write, lseek, getpid, futex, nanosleep
        for nr in [0usize, 1, 8, 39, 202, 35] {
            assert!(t[nr], "call {nr}");
        }
    }

    #[test]
    fn the_tiers_own_calls_argument_checked_and_served_ones_never_do() {
        for counted in [false, true] {
            let t = policy_table(counted);
            for &nr in TIER_OWN {
                assert!(!t[usize::try_from(nr).unwrap_or(0)], "tier's own {nr}");
            }
            // ioctl (argument checks), openat and stat (the engine's), kill (pid-naming),
            // socket (the engine's).
            for nr in [16usize, 257, 4, 62, 41] {
                assert!(!t[nr], "call {nr}");
            }
        }
    }
}
