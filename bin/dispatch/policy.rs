//! Which syscalls the guest's filter lets through to the host, which it refuses outright and
//! which it hands to the dispatcher. Lists are by name, looked up in the host arch's table,
//! so one list serves x86_64 and aarch64 (names an arch lacks are skipped; the tests check
//! that every name exists on at least one arch and every deny name on both where Linux has it).

use kbox_core::Errno;
use kbox_core::bpf::{Action, ArgRule, ArgTest, Rule};

/// Served by the host kernel without a notification: memory, threads, signals, time,
/// scheduling, and I/O on FDs the host already holds (shadow memfds, pipes, the terminal).
/// Nothing here takes a path.
pub const HOST: &[&str] = &[
    // I/O on FDs the guest holds on the host (shadow memfds, pipes, the terminal).
    "read",
    "write",
    "pread64",
    "pwrite64",
    "readv",
    "writev",
    "preadv",
    "pwritev",
    "preadv2",
    "pwritev2",
    "lseek",
    "sendfile",
    "splice",
    "tee",
    "vmsplice",
    "copy_file_range",
    "ftruncate",
    "fallocate",
    "fadvise64",
    "readahead",
    "flock",
    "sync_file_range",
    "pipe",
    "pipe2",
    "eventfd",
    "eventfd2",
    "poll",
    "ppoll",
    "select",
    "pselect6",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "timerfd_create",
    "timerfd_settime",
    "timerfd_gettime",
    "signalfd",
    "signalfd4",
    "memfd_create",
    "socketpair",
    // Data on sockets: the guest's sockets are host socketpair ends (sockets.rs). sendto
    // and recvfrom with an address are notified (checks); sendmsg, recvmsg, sendmmsg and
    // recvmmsg always are (their addresses are in memory): datagrams.rs.
    "sendto",
    "recvfrom",
    "shutdown",
    // Memory.
    "brk",
    "mmap",
    "munmap",
    "mremap",
    "mprotect",
    "madvise",
    "msync",
    "mincore",
    "mlock",
    "mlock2",
    "munlock",
    "mlockall",
    "munlockall",
    "membarrier",
    "pkey_mprotect",
    "pkey_alloc",
    "pkey_free",
    "map_shadow_stack",
    // Threads, futexes, process state of the calling process.
    "futex",
    "futex_waitv",
    "set_tid_address",
    "set_robust_list",
    "rseq",
    "arch_prctl",
    "prctl",
    "gettid",
    "getpid",
    "getppid",
    "getpgid",
    "getpgrp",
    "getsid",
    "setpgid",
    "setsid",
    // Process creation: the child's kernel task is made when it first calls in
    // (procs.rs); a notified fork could be turned into EINTR by a signal. clone is
    // allowed by an argument check (no namespace flags); clone3 is ENOSYS (below).
    "fork",
    "vfork",
    "exit",
    "wait4",
    "waitid",
    "getrusage",
    "getrlimit",
    "setrlimit",
    "getcpu",
    "sched_yield",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "capget",
    "personality",
    "times",
    // Signals.
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "rt_sigpending",
    "rt_sigtimedwait",
    "rt_sigsuspend",
    "sigaltstack",
    "pause",
    "alarm",
    "getitimer",
    "setitimer",
    // Time.
    "nanosleep",
    "clock_nanosleep",
    "clock_gettime",
    "clock_getres",
    "gettimeofday",
    "time",
    "timer_create",
    "timer_settime",
    "timer_gettime",
    "timer_getoverrun",
    "timer_delete",
    "getrandom",
];

/// Calls that name another process by pid (or pgid, or user): notified, and the engine
/// lets the host run them only when the target is a guest process (signals.rs), unless the
/// guest has a PID namespace of its own. [`PID_FIRST`] are those whose first argument is
/// the pid, 0 meaning the caller: [`checks`] lets that form through without a notification.
pub fn pid_targeted() -> impl Iterator<Item = &'static str> {
    PID_OTHER.iter().chain(PID_FIRST).copied()
}

/// Pid-naming calls whose first argument is the pid (0: the caller).
pub const PID_FIRST: &[&str] = &[
    "prlimit64",
    "sched_getaffinity",
    "sched_setaffinity",
    "sched_getparam",
    "sched_setparam",
    "sched_getscheduler",
    "sched_setscheduler",
    "sched_rr_get_interval",
    "sched_getattr",
    "sched_setattr",
    "get_robust_list",
];

/// The other pid-naming calls (a pid that may be a group or -1, a thread, or a `which`).
pub const PID_OTHER: &[&str] = &[
    "kill",
    "tkill",
    "tgkill",
    "rt_sigqueueinfo",
    "rt_tgsigqueueinfo",
    "pidfd_open",
    "getpriority",
    "setpriority",
    "ioprio_get",
    "ioprio_set",
];

/// System V IPC and POSIX message queues: the host's own calls when the guest has an IPC
/// namespace of its own (its objects are then its own); refused otherwise, since the
/// host's objects are not the guest's to attach.
pub const SYSV_IPC: &[&str] = &[
    "shmget",
    "shmat",
    "shmdt",
    "shmctl",
    "semget",
    "semop",
    "semtimedop",
    "semctl",
    "msgget",
    "msgsnd",
    "msgrcv",
    "msgctl",
    // POSIX message queues live in the IPC namespace too.
    "mq_open",
    "mq_unlink",
    "mq_timedsend",
    "mq_timedreceive",
    "mq_notify",
    "mq_getsetattr",
];

/// Refused by the filter with EPERM: calls that would let the guest reach past the kernel
/// library into the host, or that have no meaning for a sandboxed program.
pub const DENY: &[&str] = &[
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "bpf",
    "ptrace",
    "perf_event_open",
    "add_key",
    "request_key",
    "keyctl",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "quotactl_fd",
    "lookup_dcookie",
    "name_to_handle_at",
    "open_by_handle_at",
    "syslog",
    "vhangup",
    "setns",
    "unshare",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "iopl",
    "ioperm",
    "kcmp",
    "process_madvise",
    "pidfd_getfd",
    "uselib",
    "nfsservctl",
    "landlock_create_ruleset",
    "landlock_add_rule",
    "landlock_restrict_self",
    "fanotify_init",
    "fanotify_mark",
    "mbind",
    "set_mempolicy",
    "migrate_pages",
    "move_pages",
    "lsm_set_self_attr",
    "seccomp",
];

/// The host arch's number for `name`.
pub fn host_nr(name: &str) -> Option<u32> {
    #[cfg(target_arch = "x86_64")]
    let table = kbox_core::sysno::x86_64::TABLE
        .iter()
        .map(|s| (s.nr, s.name));
    #[cfg(target_arch = "aarch64")]
    let table = kbox_core::sysno::aarch64::TABLE
        .iter()
        .map(|s| (s.nr, s.name));
    table
        .into_iter()
        .find(|&(_, n)| n == name)
        .map(|(nr, _)| nr)
}

/// Every namespace clone can create (CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER,
/// NEWPID, NEWNET, NEWTIME): a guest creates none.
pub const CLONE_NEW_ANY: u32 = 0x7e02_0080;
/// ioctls that act on the terminal beyond the caller: TIOCSTI pushes input into it (the
/// user's shell would run it), TIOCLINUX reaches the console.
pub const TIOCSTI: u32 = 0x5412;
pub const TIOCLINUX: u32 = 0x541c;

/// Whether host call `nr` is one of DENY's: refused with EPERM by kbox when the filter
/// notifies it (`rules` with `counted`), as the filter itself would.
pub fn denied(nr: u32) -> bool {
    /// Host numbers stay below this on both arches.
    const CALLS: usize = 512;
    static DENIED: std::sync::OnceLock<[bool; CALLS]> = std::sync::OnceLock::new();
    let table = DENIED.get_or_init(|| {
        let mut t = [false; CALLS];
        for nr in DENY.iter().filter_map(|n| host_nr(n)) {
            if let Some(d) = usize::try_from(nr).ok().and_then(|i| t.get_mut(i)) {
                *d = true;
            }
        }
        t
    });
    usize::try_from(nr)
        .ok()
        .and_then(|i| table.get(i))
        .copied()
        .unwrap_or(false)
}

/// The filter's rules: HOST allowed, DENY refused, clone3 ENOSYS (libcs fall back to
/// clone, whose flags the filter can see), SysV IPC allowed only with an IPC namespace of
/// the guest's own (`own_ipc`), pid-naming calls run by the host only when the guest has a
/// PID namespace of its own (`own_pid`: the kernel then confines them to it), else notified
/// and mediated; everything else (the default) notifies. With `counted` (the user watches
/// the calls), DENY's calls are notified instead, for kbox to count and refuse (`denied`):
/// a notified call never runs on the host unless kbox lets it.
pub fn rules(own_ipc: bool, own_pid: bool, counted: bool) -> Vec<Rule> {
    let mut rules: Vec<Rule> = Vec::new();
    let mut push = |name: &str, action: Action| {
        if let Some(nr) = host_nr(name)
            && !rules.iter().any(|r| r.nr == nr)
        {
            rules.push(Rule { nr, action });
        }
    };
    for name in DENY.iter().filter(|_| !counted) {
        push(name, Action::Errno(Errno::EPERM));
    }
    push("clone3", Action::Errno(Errno::ENOSYS));
    for name in SYSV_IPC {
        push(
            name,
            if own_ipc {
                Action::Allow
            } else {
                Action::Errno(Errno::ENOSYS)
            },
        );
    }
    for name in HOST.iter().chain(&["clone", "ioctl"]) {
        push(name, Action::Allow);
    }
    if own_pid {
        for name in pid_targeted() {
            push(name, Action::Allow);
        }
    }
    rules
}

/// The argument checks: clone with a namespace flag is EPERM; TIOCSTI and TIOCLINUX are
/// EPERM; interface and routing ioctls are notified; pid-targeted calls whose target is the caller itself (pid 0) run unnotified;
/// sendto and recvfrom with an address are notified.
pub fn checks() -> Vec<ArgRule> {
    let eperm = Action::Errno(Errno::EPERM);
    let mut out = Vec::new();
    let mut check = |name: &str, arg: u8, test: ArgTest, then: Action| {
        if let Some(nr) = host_nr(name) {
            out.push(ArgRule {
                nr,
                arg,
                test,
                then,
            });
        }
    };
    check("clone", 0, ArgTest::AnyBit(CLONE_NEW_ANY), eperm);
    check("ioctl", 1, ArgTest::Equals(TIOCSTI), eperm);
    check("ioctl", 1, ArgTest::Equals(TIOCLINUX), eperm);
    // The interfaces and routes a socket's ioctls describe are the kernel library's
    // (ifioctl.rs).
    check(
        "ioctl",
        1,
        ArgTest::InRange {
            low: super::ifioctl::FIRST,
            high: super::ifioctl::END,
        },
        Action::Notify,
    );
    for name in PID_FIRST {
        check(name, 0, ArgTest::Equals(0), Action::Allow);
    }
    // A datagram's destination or sender address: kbox serves it (datagrams.rs). (The test
    // sees the pointer's low 32 bits: one whose low half is zero goes to the host.)
    check("sendto", 4, ArgTest::AnyBit(u32::MAX), Action::Notify);
    check("recvfrom", 4, ArgTest::AnyBit(u32::MAX), Action::Notify);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_do_not_overlap_and_name_real_syscalls() {
        for name in HOST {
            assert!(!DENY.contains(name), "{name} is both allowed and denied");
        }
        let x86 = |n: &str| kbox_core::sysno::x86_64::TABLE.iter().any(|s| s.name == n);
        let arm = |n: &str| kbox_core::sysno::aarch64::TABLE.iter().any(|s| s.name == n);
        for name in DENY {
            assert!(
                x86(name) || arm(name),
                "{name} is not a syscall on either arch"
            );
        }
        // Denied calls that both arches have must be denied on both (the numbers differ;
        // the names resolve per arch).
        for name in [
            "bpf",
            "ptrace",
            "kexec_load",
            "init_module",
            "io_uring_setup",
            "fsopen",
        ] {
            assert!(x86(name) && arm(name), "{name}");
        }
    }

    #[test]
    fn rules_compile_to_a_filter() {
        for (own_ipc, own_pid, counted) in [
            (false, false, false),
            (true, false, false),
            (false, true, false),
            (true, true, false),
            (true, true, true),
        ] {
            let rules = rules(own_ipc, own_pid, counted);
            // aarch64 has none of the legacy calls (open, stat, fork...).
            let least = if cfg!(target_arch = "aarch64") {
                100
            } else {
                150
            };
            assert!(rules.len() > least, "{} rules", rules.len());
            let mut out = vec![kbox_core::bpf::SockFilter::default(); kbox_core::bpf::MAX_INSNS];
            let arch = crate::seccomp::filter::HOST_ARCH;
            assert!(
                kbox_core::bpf::compile_checked(arch, &rules, &checks(), Action::Notify, &mut out)
                    .is_ok()
            );
        }
    }

    #[test]
    fn counted_denials_are_notified_and_still_refused() {
        for name in DENY {
            let Some(nr) = host_nr(name) else { continue };
            assert!(denied(nr), "{name}");
            assert!(rules(false, false, false).iter().any(|r| r.nr == nr));
            assert!(rules(false, false, true).iter().all(|r| r.nr != nr));
        }
        assert!(!denied(host_nr("openat").unwrap_or(u32::MAX)));
    }

    #[test]
    fn pid_targeted_calls_are_mediated_unless_the_guest_has_its_own_pids() {
        for name in pid_targeted() {
            assert!(!HOST.contains(&name) && !DENY.contains(&name), "{name}");
            let nr = host_nr(name).unwrap_or_else(|| panic!("{name} has no number"));
            assert!(
                rules(true, false, false).iter().all(|r| r.nr != nr),
                "{name} has a rule"
            );
            assert!(
                rules(false, true, false).iter().any(|r| r.nr == nr),
                "{name} is not allowed"
            );
        }
    }
}
