//! Which syscalls the guest's filter lets through to the host, which it refuses outright and
//! which it hands to the dispatcher. Lists are by name, looked up in the host arch's table,
//! so one list serves x86_64 and aarch64 (names an arch lacks are skipped; the tests check
//! that every name exists on at least one arch and every deny name on both where Linux has it).

use kbox_core::Errno;
use kbox_core::bpf::{Action, Rule};

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
    "ioctl",
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
    // Data on sockets: the guest's sockets are host socketpair ends (sockets.rs).
    "sendto",
    "recvfrom",
    "sendmsg",
    "recvmsg",
    "sendmmsg",
    "recvmmsg",
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
    "get_robust_list",
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
    // (procs.rs); a notified fork could be turned into EINTR by a signal.
    "clone",
    "clone3",
    "fork",
    "vfork",
    "exit",
    "wait4",
    "waitid",
    "getrusage",
    "getrlimit",
    "setrlimit",
    "prlimit64",
    "getcpu",
    "sched_yield",
    "sched_getaffinity",
    "sched_setaffinity",
    "sched_getparam",
    "sched_setparam",
    "sched_getscheduler",
    "sched_setscheduler",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_rr_get_interval",
    "sched_getattr",
    "sched_setattr",
    "getpriority",
    "setpriority",
    "capget",
    "personality",
    "pidfd_open",
    "pidfd_send_signal",
    "times",
    // Signals.
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "rt_sigpending",
    "rt_sigtimedwait",
    "rt_sigsuspend",
    "rt_sigqueueinfo",
    "rt_tgsigqueueinfo",
    "sigaltstack",
    "kill",
    "tkill",
    "tgkill",
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
    // System V IPC and POSIX message queues live in host memory, like the guest itself.
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

/// The filter's rules: HOST allowed, DENY refused; everything else (the default) notifies.
pub fn rules() -> Vec<Rule> {
    let mut rules: Vec<Rule> = Vec::new();
    let mut push = |name: &str, action: Action| {
        if let Some(nr) = host_nr(name)
            && !rules.iter().any(|r| r.nr == nr)
        {
            rules.push(Rule { nr, action });
        }
    };
    for name in DENY {
        push(name, Action::Errno(Errno::EPERM));
    }
    for name in HOST {
        push(name, Action::Allow);
    }
    rules
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
        let rules = rules();
        assert!(rules.len() > 150);
        let mut out = vec![kbox_core::bpf::SockFilter::default(); kbox_core::bpf::MAX_INSNS];
        let arch = crate::seccomp::filter::HOST_ARCH;
        assert!(kbox_core::bpf::compile(arch, &rules, Action::Notify, &mut out).is_ok());
    }
}
