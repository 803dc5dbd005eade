//! The transport against the real kernel: a probe program (probe.c, built here with
//! `musl-gcc -static`) runs under a filter that notifies a few syscalls, and the test plays
//! the supervisor. The probe reports by exit code: 0 means it saw the expected answer.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Command as HostCommand;
use std::sync::OnceLock;

use kbox_core::Errno;
use kbox_core::bpf::{Action, Rule};
use rustix::event::{PollFd, PollFlags, Timespec};

use super::child::{self, Child, Command, ExitStatus};
use super::filter::Program;
use super::guest_mem::{self, MemError, PATH_MAX};
use super::notify::{FdTarget, NotifyError, NotifyFd, Pending};
use super::sys;

#[cfg(target_arch = "aarch64")]
use kbox_core::sysno::aarch64 as nr;
#[cfg(target_arch = "x86_64")]
use kbox_core::sysno::x86_64 as nr;

/// A guest that runs longer than this is stuck: fail rather than hang the suite.
const TIMEOUT: Timespec = Timespec {
    tv_sec: 20,
    tv_nsec: 0,
};

/// Builds probe.c once per test process.
fn probe() -> &'static PathBuf {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE.get_or_init(|| {
        // One directory for every run (built anew each time and renamed into place), so
        // test runs do not leave a directory each behind.
        let dir = std::env::temp_dir().join("kbox-seccomp-probe");
        std::fs::create_dir_all(&dir).expect("temp dir");
        let out = dir.join("probe");
        let tmp = dir.join(format!("probe.{}", std::process::id()));
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/bin/seccomp/probe.c");
        let status = HostCommand::new("musl-gcc")
            .args(["-static", "-O1", "-Wall", "-o"])
            .arg(&tmp)
            .arg(src)
            .status()
            .expect("musl-gcc runs (Debian package musl-tools)");
        assert!(status.success(), "probe.c does not compile");
        std::fs::rename(&tmp, &out).expect("rename the probe into place");
        out
    })
}

fn notifying(nrs: &[u32]) -> Program {
    let rules: Vec<Rule> = nrs
        .iter()
        .map(|&nr| Rule {
            nr,
            action: Action::Notify,
        })
        .collect();
    Program::compile(&rules, Action::Allow).expect("filter compiles")
}

fn spawn_probe(args: &[&str], notified: &[u32]) -> (Child, NotifyFd) {
    let path = probe().as_os_str();
    let argv = std::iter::once(path).chain(args.iter().map(OsStr::new));
    let cmd = Command::new(path, argv, std::iter::empty::<&OsStr>()).expect("no NULs");
    child::spawn(&cmd, &notifying(notified)).expect("spawn")
}

/// Runs the probe, answering each notification with `handle`, until it exits.
fn run(args: &[&str], notified: &[u32], mut handle: impl FnMut(Pending<'_>, &Child)) -> ExitStatus {
    let (mut child, notify) = spawn_probe(args, notified);
    loop {
        let pidfd = child.pidfd();
        let mut fds = [
            PollFd::new(&notify, PollFlags::IN),
            PollFd::new(&pidfd, PollFlags::IN),
        ];
        let ready = rustix::event::poll(&mut fds, Some(&TIMEOUT)).expect("poll");
        assert!(ready > 0, "probe {args:?} timed out");
        if fds[0].revents().contains(PollFlags::IN) {
            if let Some(p) = notify.recv().expect("recv") {
                handle(p, &child);
            }
        } else if fds[1].revents().contains(PollFlags::IN) {
            return child.wait().expect("wait");
        }
    }
}

#[test]
fn ioctl_numbers_match_the_kernel_encoding() {
    // The generic _IOC layout, which both x86_64 and aarch64 use.
    assert_eq!(u64::from(sys::NOTIF_RECV), 0xc050_2100);
    assert_eq!(u64::from(sys::NOTIF_SEND), 0xc018_2101);
    assert_eq!(u64::from(sys::NOTIF_ID_VALID), 0x4008_2102);
    assert_eq!(u64::from(sys::NOTIF_ADDFD), 0x4018_2103);
    assert_eq!(u64::from(sys::NOTIF_SET_FLAGS), 0x4008_2104);
}

#[test]
fn value_answer_is_what_the_guest_gets() {
    let mut seen = 0;
    let status = run(&["getppid", "4242"], &[nr::GETPPID], |p, child| {
        let n = *p.notification();
        assert_eq!(n.nr, i32::try_from(nr::GETPPID).expect("small"));
        assert_eq!(n.arch, super::filter::HOST_ARCH.value());
        assert_eq!(
            i64::from(n.pid),
            i64::from(child.pid().as_raw_nonzero().get())
        );
        assert!(p.is_valid().expect("id_valid"));
        seen += 1;
        p.respond_value(4242).expect("send");
    });
    assert_eq!(status, ExitStatus::Exited(0));
    assert_eq!(seen, 1);
}

#[test]
fn dropped_notification_answers_enosys() {
    // The guest's getppid fails with ENOSYS instead of blocking forever.
    let status = run(&["getppid-enosys"], &[nr::GETPPID], |p, _| drop(p));
    assert_eq!(status, ExitStatus::Exited(0));
}

#[test]
fn errno_answer_fails_the_guest_call() {
    let status = run(&["uname-eperm"], &[nr::UNAME], |p, _| {
        p.respond_errno(Errno::EPERM).expect("send");
    });
    assert_eq!(status, ExitStatus::Exited(0));
}

#[test]
fn continue_answer_runs_the_call_on_the_host() {
    let mut seen = 0;
    let status = run(&["getpid"], &[nr::GETPID], |p, _| {
        seen += 1;
        p.respond_continue().expect("send");
    });
    assert_eq!(status, ExitStatus::Exited(0));
    assert!(seen >= 1);
}

/// The running kernel's (major, minor), from uname.
fn kernel_version() -> (u32, u32) {
    let uname = rustix::system::uname();
    let release = uname.release().to_string_lossy();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[test]
fn sync_wakeup_is_accepted_where_known_and_answers_arrive_either_way() {
    let (mut child, notify) = spawn_probe(&["getppid", "7"], &[nr::GETPPID]);
    let known = kernel_version() >= (6, 6);
    assert_eq!(
        notify.set_sync_wakeup().expect("set_flags"),
        known,
        "kernels from 6.6 on know the flag, older ones refuse it (EINVAL)"
    );
    notify
        .recv()
        .expect("recv")
        .expect("one notification")
        .respond_value(7)
        .expect("send");
    assert_eq!(child.wait().expect("wait"), ExitStatus::Exited(0));
}

#[test]
fn addfd_with_send_places_a_host_file_at_the_chosen_number() {
    let dir = std::env::temp_dir().join(format!("kbox-seccomp-addfd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("content");
    std::fs::write(&file, "from-the-host").expect("write");
    let status = run(&["addfd", "42", "from-the-host"], &[nr::OPENAT], |p, _| {
        let host = std::fs::File::open(&file).expect("open host file");
        let fd = p
            .respond_add_fd(host.as_fd(), FdTarget::At(42), false)
            .expect("addfd");
        assert_eq!(fd, 42);
    });
    assert_eq!(status, ExitStatus::Exited(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn addfd_without_send_returns_the_lowest_free_number_and_keeps_the_call_pending() {
    let dir = std::env::temp_dir();
    let status = run(&["addfd", "3", "x"], &[nr::OPENAT], |p, _| {
        let host = std::fs::File::open(&dir).expect("open temp dir");
        // fds 0-2 are the probe's stdio, so the lowest free number is 3.
        let fd = p
            .add_fd(host.as_fd(), FdTarget::Lowest, true)
            .expect("addfd");
        assert_eq!(fd, 3);
        assert!(p.is_valid().expect("id_valid"));
        // The probe reads 3 and fails on a directory: only the fd number is under test here.
        p.respond_value(i64::from(fd)).expect("send");
    });
    assert_eq!(status, ExitStatus::Exited(2));
}

/// Answers mkdirat by reading its path: 0 when it equals `expected`, EINVAL when it does
/// not, the read's own errno when reading fails.
fn answer_path(expected: &str) -> impl FnMut(Pending<'_>, &Child) + '_ {
    move |p, _| {
        let addr = p.notification().args[1];
        match guest_mem::read_cstr_checked(&p, addr, PATH_MAX) {
            Ok(s) if s.as_bytes() == expected.as_bytes() => p.respond_value(0),
            Ok(_) => p.respond_errno(Errno::EINVAL),
            Err(e) => p.respond_errno(e.errno()),
        }
        .expect("send");
    }
}

#[test]
fn path_is_read_from_guest_memory() {
    let status = run(
        &["path", "/some/dir"],
        &[nr::MKDIRAT],
        answer_path("/some/dir"),
    );
    assert_eq!(status, ExitStatus::Exited(0));
}

#[test]
fn path_straddling_a_page_boundary_is_read_whole() {
    let status = run(
        &["path-straddle"],
        &[nr::MKDIRAT],
        answer_path("kbox/straddle"),
    );
    assert_eq!(status, ExitStatus::Exited(0));
}

#[test]
fn path_of_path_max_minus_one_bytes_is_accepted() {
    let long = "a".repeat(PATH_MAX - 1);
    let status = run(&["path", &long], &[nr::MKDIRAT], answer_path(&long));
    assert_eq!(status, ExitStatus::Exited(0));
}

#[test]
fn path_running_into_an_unmapped_page_is_efault() {
    let status = run(&["path-fault"], &[nr::MKDIRAT], answer_path(""));
    assert_eq!(status, ExitStatus::Exited(0));
}

#[test]
fn path_without_nul_within_path_max_is_enametoolong() {
    let status = run(&["path-long"], &[nr::MKDIRAT], answer_path(""));
    assert_eq!(status, ExitStatus::Exited(0));
}

#[test]
fn uname_answered_by_writing_a_fake_utsname_into_the_guest() {
    const FIELD: usize = 65; // __NEW_UTS_LEN + 1
    let status = run(&["uname-fake"], &[nr::UNAME], |p, _| {
        let mut uts = [0u8; 6 * FIELD];
        uts[..4].copy_from_slice(b"kbox");
        uts[2 * FIELD..2 * FIELD + 5].copy_from_slice(b"9.9.9");
        let n = p.notification();
        guest_mem::write(n.pid, n.args[0], &uts).expect("write utsname");
        p.respond_value(0).expect("send");
    });
    assert_eq!(status, ExitStatus::Exited(0));
}

#[test]
fn memory_of_an_unmapped_address_is_a_fault() {
    let (mut child, notify) = spawn_probe(&["getppid", "1"], &[nr::GETPPID]);
    let p = notify.recv().expect("recv").expect("notification");
    let mut buf = [0u8; 8];
    // Page zero is never mapped in a normal process.
    assert_eq!(
        guest_mem::read(p.notification().pid, 16, &mut buf),
        Err(MemError::Fault)
    );
    assert_eq!(
        guest_mem::write(p.notification().pid, 16, &buf),
        Err(MemError::Fault)
    );
    p.respond_value(1).expect("send");
    assert_eq!(child.wait().expect("wait"), ExitStatus::Exited(0));
}

#[test]
fn killed_guest_makes_its_notification_gone_and_ends_recv() {
    let (mut child, notify) = spawn_probe(&["getppid", "1"], &[nr::GETPPID]);
    let p = notify.recv().expect("recv").expect("notification");
    child.kill().expect("kill");
    assert_eq!(
        child.wait().expect("wait"),
        ExitStatus::Signaled(libc::SIGKILL)
    );
    assert!(!p.is_valid().expect("id_valid"));
    let mut buf = [0u8; 8];
    assert_eq!(
        guest_mem::read_checked(&p, p.notification().args[0], &mut buf),
        Err(MemError::Os(
            Errno::new(u16::try_from(libc::ESRCH).expect("small")).expect("errno")
        ))
    );
    assert!(matches!(p.respond_value(1), Err(NotifyError::Gone)));
    // The only task using the filter is reaped: the listener hangs up.
    assert!(notify.recv().expect("recv").is_none());
}

#[test]
fn failed_exec_is_reported_when_waited_for() {
    let path = OsStr::new("/nonexistent/kbox-probe");
    let cmd = Command::new(path, [path], std::iter::empty::<&OsStr>()).expect("no NULs");
    let (mut child, _notify) = child::spawn(&cmd, &notifying(&[])).expect("spawn");
    match child.wait() {
        Err(child::SpawnError::Exec(e)) => assert_eq!(e, Errno::ENOENT),
        other => panic!("expected an exec error, got {other:?}"),
    }
}
