//! The syscall numbers the trap tier acts on, for the architecture kbox is built for. A
//! call one architecture lacks (AArch64 has no fork, vfork, dup2 or arch_prctl) gets a
//! number no kernel has, so matching on it never fires there.

pub const SYS_BRK: u64 = libc::SYS_brk.cast_unsigned();
pub const SYS_CLONE: u64 = libc::SYS_clone.cast_unsigned();
pub const SYS_CLONE3: u64 = libc::SYS_clone3.cast_unsigned();
pub const SYS_CLOSE: u64 = libc::SYS_close.cast_unsigned();
pub const SYS_CLOSE_RANGE: u64 = libc::SYS_close_range.cast_unsigned();
pub const SYS_DUP3: u64 = libc::SYS_dup3.cast_unsigned();
pub const SYS_EXECVE: u64 = libc::SYS_execve.cast_unsigned();
pub const SYS_EXECVEAT: u64 = libc::SYS_execveat.cast_unsigned();
pub const SYS_EXIT: u64 = libc::SYS_exit.cast_unsigned();
pub const SYS_EXIT_GROUP: u64 = libc::SYS_exit_group.cast_unsigned();
pub const SYS_FACCESSAT: u64 = libc::SYS_faccessat.cast_unsigned();
pub const SYS_FUTEX: u64 = libc::SYS_futex.cast_unsigned();
pub const SYS_GETRLIMIT: u64 = libc::SYS_getrlimit.cast_unsigned();
pub const SYS_MADVISE: u64 = libc::SYS_madvise.cast_unsigned();
pub const SYS_MINCORE: u64 = libc::SYS_mincore.cast_unsigned();
pub const SYS_MMAP: u64 = libc::SYS_mmap.cast_unsigned();
pub const SYS_MPROTECT: u64 = libc::SYS_mprotect.cast_unsigned();
pub const SYS_MREMAP: u64 = libc::SYS_mremap.cast_unsigned();
pub const SYS_MSYNC: u64 = libc::SYS_msync.cast_unsigned();
pub const SYS_MUNMAP: u64 = libc::SYS_munmap.cast_unsigned();
pub const SYS_OPENAT: u64 = libc::SYS_openat.cast_unsigned();
pub const SYS_PRCTL: u64 = libc::SYS_prctl.cast_unsigned();
pub const SYS_PRLIMIT64: u64 = libc::SYS_prlimit64.cast_unsigned();
pub const SYS_READ: u64 = libc::SYS_read.cast_unsigned();
pub const SYS_RSEQ: u64 = libc::SYS_rseq.cast_unsigned();
pub const SYS_RT_SIGACTION: u64 = libc::SYS_rt_sigaction.cast_unsigned();
pub const SYS_RT_SIGPENDING: u64 = libc::SYS_rt_sigpending.cast_unsigned();
pub const SYS_RT_SIGPROCMASK: u64 = libc::SYS_rt_sigprocmask.cast_unsigned();
pub const SYS_RT_SIGRETURN: u64 = libc::SYS_rt_sigreturn.cast_unsigned();
pub const SYS_SECCOMP: u64 = libc::SYS_seccomp.cast_unsigned();
pub const SYS_SETRLIMIT: u64 = libc::SYS_setrlimit.cast_unsigned();
pub const SYS_SET_TID_ADDRESS: u64 = libc::SYS_set_tid_address.cast_unsigned();
pub const SYS_SIGALTSTACK: u64 = libc::SYS_sigaltstack.cast_unsigned();
pub const SYS_TGKILL: u64 = libc::SYS_tgkill.cast_unsigned();

#[cfg(target_arch = "x86_64")]
pub const SYS_ARCH_PRCTL: u64 = libc::SYS_arch_prctl.cast_unsigned();
#[cfg(not(target_arch = "x86_64"))]
pub const SYS_ARCH_PRCTL: u64 = u64::MAX;
#[cfg(target_arch = "x86_64")]
pub const SYS_DUP2: u64 = libc::SYS_dup2.cast_unsigned();
#[cfg(not(target_arch = "x86_64"))]
pub const SYS_DUP2: u64 = u64::MAX - 1;
#[cfg(target_arch = "x86_64")]
pub const SYS_FORK: u64 = libc::SYS_fork.cast_unsigned();
#[cfg(not(target_arch = "x86_64"))]
pub const SYS_FORK: u64 = u64::MAX - 2;
#[cfg(target_arch = "x86_64")]
pub const SYS_VFORK: u64 = libc::SYS_vfork.cast_unsigned();
#[cfg(not(target_arch = "x86_64"))]
pub const SYS_VFORK: u64 = u64::MAX - 3;
