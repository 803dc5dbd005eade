//! The compiled filter loaded for real, in a forked child that reports by exit status.
//!
//! Under qemu-user (how the aarch64 tests run on an x86_64 machine) seccomp(2) is not
//! emulated and returns ENOSYS; only that case is skipped, with a note on stderr.

use std::io::Write;

use kbox_core::Errno;
use kbox_core::bpf::{self, Action, AuditArch, Rule, SockFilter};

#[cfg(target_arch = "aarch64")]
use kbox_core::sysno::aarch64 as host;
#[cfg(target_arch = "x86_64")]
use kbox_core::sysno::x86_64 as host;

#[cfg(target_arch = "x86_64")]
const HOST_ARCH: AuditArch = AuditArch::X86_64;
#[cfg(target_arch = "aarch64")]
const HOST_ARCH: AuditArch = AuditArch::Aarch64;
#[cfg(target_arch = "x86_64")]
const OTHER_ARCH: AuditArch = AuditArch::Aarch64;
#[cfg(target_arch = "aarch64")]
const OTHER_ARCH: AuditArch = AuditArch::X86_64;

/// `struct sock_fprog` from `<linux/filter.h>`.
#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const SockFilter,
}

const EXIT_SECCOMP_ENOSYS: i32 = 77;
const EXIT_SECCOMP_FAILED: i32 = 78;

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Exited(i32),
    Signaled(i32),
    /// seccomp(2) is not there: qemu-user.
    Unsupported,
}

fn under_qemu() -> bool {
    cfg!(target_arch = "aarch64")
        && std::env::var("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER")
            .is_ok_and(|r| r.contains("qemu"))
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Forks; the child installs `prog`, runs `body` and exits with its result.
fn run_filtered(prog: &[SockFilter], body: fn() -> i32) -> Outcome {
    let fprog = SockFprog {
        len: u16::try_from(prog.len()).expect("short program"),
        filter: prog.as_ptr(),
    };
    // SAFETY: the child only makes raw syscalls and calls `body`, which does the same, then
    // leaves through _exit; nothing in it allocates or takes a lock another thread of the
    // test harness could hold.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: prctl with integer arguments has no memory effects.
        let nnp = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        // SAFETY: fprog points at `prog`, which outlives the call; the kernel copies it.
        let r = unsafe { libc::syscall(libc::SYS_seccomp, 1u32, 0u32, &raw const fprog) };
        let code = match (nnp, r) {
            (0, 0) => body(),
            _ if errno() == libc::ENOSYS => EXIT_SECCOMP_ENOSYS,
            _ => EXIT_SECCOMP_FAILED,
        };
        // SAFETY: _exit ends the child without running the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child with a valid status pointer.
    let waited = unsafe { libc::waitpid(pid, &raw mut status, 0) };
    assert_eq!(waited, pid);
    if libc::WIFSIGNALED(status) {
        return Outcome::Signaled(libc::WTERMSIG(status));
    }
    match libc::WEXITSTATUS(status) {
        EXIT_SECCOMP_ENOSYS => Outcome::Unsupported,
        code => Outcome::Exited(code),
    }
}

/// Ok(false) with a note when seccomp is missing under qemu; any other ENOSYS fails.
fn seccomp_available(outcome: &Outcome) -> bool {
    if *outcome == Outcome::Unsupported {
        assert!(under_qemu(), "seccomp(2) returned ENOSYS outside qemu-user");
        // Straight to stderr: libtest captures eprintln!, and this note must show in make's
        // output.
        let _ = writeln!(
            std::io::stderr(),
            "note: seccomp(2) is ENOSYS under qemu-user; real-load check skipped on this arch"
        );
        return false;
    }
    true
}

fn compile(arch: AuditArch, rules: &[Rule], default: Action) -> Vec<SockFilter> {
    let mut out = vec![SockFilter::default(); bpf::MAX_INSNS];
    let n = bpf::compile(arch, rules, default, &mut out).expect("compiles");
    out.truncate(n);
    out
}

/// 0 when getpid works and getppid/uname fail with the filter's errnos.
fn allowed_and_errno_body() -> i32 {
    // SAFETY: getpid has no arguments.
    if unsafe { libc::syscall(libc::SYS_getpid) } <= 0 {
        return 1;
    }
    // SAFETY: getppid has no arguments.
    if unsafe { libc::syscall(libc::SYS_getppid) } != -1 || errno() != 1234 {
        return 2;
    }
    let mut uts = std::mem::MaybeUninit::<libc::utsname>::uninit();
    // SAFETY: uts is writable and large enough for struct utsname.
    if unsafe { libc::syscall(libc::SYS_uname, uts.as_mut_ptr()) } != -1 || errno() != libc::EPERM {
        return 3;
    }
    0
}

#[test]
fn host_numbers_agree_with_libc() {
    assert_eq!(i64::from(host::GETPPID), libc::SYS_getppid);
    assert_eq!(i64::from(host::UNAME), libc::SYS_uname);
}

#[test]
fn errno_rule_fails_the_call_and_default_allows_the_rest() {
    let rules = [
        Rule {
            nr: host::GETPPID,
            action: Action::Errno(Errno::new(1234).expect("valid")),
        },
        Rule {
            nr: host::UNAME,
            action: Action::Errno(Errno::EPERM),
        },
    ];
    let outcome = run_filtered(
        &compile(HOST_ARCH, &rules, Action::Allow),
        allowed_and_errno_body,
    );
    if seccomp_available(&outcome) {
        assert_eq!(outcome, Outcome::Exited(0));
    }
}

#[test]
fn filter_for_another_arch_kills_on_first_syscall() {
    let outcome = run_filtered(
        &compile(OTHER_ARCH, &[], Action::Allow),
        allowed_and_errno_body,
    );
    if seccomp_available(&outcome) {
        assert_eq!(outcome, Outcome::Signaled(libc::SIGSYS));
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn x32_syscall_is_killed() {
    fn body() -> i32 {
        // SAFETY: getpid through the x32 ABI bit takes no arguments.
        unsafe { libc::syscall(i64::from(bpf::X32_SYSCALL_BIT | host::GETPID)) };
        0
    }
    let outcome = run_filtered(&compile(HOST_ARCH, &[], Action::Allow), body);
    assert_eq!(outcome, Outcome::Signaled(libc::SIGSYS));
}
