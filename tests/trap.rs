//! The trap tier (`--syscall-mode=trap`, x86_64): the first guest process runs in kbox's own
//! process, loaded by kbox's loader; the processes it forks are served by that process's
//! kernel. Each guest program runs natively first, then under the seccomp
//! tier and the trap tier, and must give the same result in all three.
#![cfg(target_arch = "x86_64")]

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use common::{Image, expect, run_with_timeout, text};

fn guest_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("KBOX_GUEST_BINS")
        .expect("KBOX_GUEST_BINS must name build/guest-ARCH (make check-kbox sets it)");
    PathBuf::from(dir).join(name)
}

/// A scratch directory of the host's, removed when dropped: on a failed assertion too.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Exit status and the names of the checks that passed ("ok NAME[: details]"; a FAIL line
/// fails the test). Details such as counts vary from run to run.
fn verdict(out: &std::process::Output, what: &str) -> (i32, BTreeSet<String>) {
    let stdout = text(&out.stdout);
    assert!(
        !stdout.contains("FAIL"),
        "{what}:\n{stdout}\n{}",
        text(&out.stderr)
    );
    let oks = stdout
        .lines()
        .filter(|l| l.starts_with("ok "))
        .map(|l| l.split(':').next().unwrap_or(l).to_owned())
        .collect();
    (out.status.code().unwrap_or(-1), oks)
}

/// Guest programs pass natively, then give the seccomp tier's
/// result under the trap tier (the same checks pass: which ones run can depend on the file
/// system, e.g. user xattrs on the host's /tmp but not in the image).
#[test]
fn guest_programs_give_the_native_result_under_both_tiers() {
    let img = Image::default("trap-programs");
    let scratch =
        Scratch(std::env::temp_dir().join(format!("kbox-trap-native-{}", std::process::id())));
    let work = &scratch.0;
    for prog in [
        "startup",
        "threads",
        "fdtest",
        "efault",
        "hello",
        "coherence",
        "forkthread",
        "spawnstress",
        "interrupt",
        "fdpass",
        "sockets",
        "sigstress",
        "denied",
    ] {
        let _ = std::fs::remove_dir_all(work);
        std::fs::create_dir_all(work).expect("work dir");
        let mut native = Command::new(guest_bin(prog));
        native.arg(work);
        let native = verdict(
            &run_with_timeout(native, std::time::Duration::from_secs(60)),
            &format!("{prog} natively"),
        );
        assert_eq!(native.0, 0, "{prog} natively");
        let path = format!("/opt/kbox-tests/{prog}");
        let run = |mode: &str| {
            let out = img.run(&[mode, "-S"], &[&path, "/tmp"]);
            verdict(&out, &format!("{prog} {mode}"))
        };
        let (seccomp, trap) = (run("--syscall-mode=seccomp"), run("--syscall-mode=trap"));
        assert_eq!(seccomp.0, native.0, "{prog} under seccomp");
        assert_eq!(trap.0, native.0, "{prog} under trap");
        let differ: Vec<&String> = seccomp.1.symmetric_difference(&trap.1).collect();
        assert!(
            differ.is_empty(),
            "{prog}: checks only one tier ran: {differ:?}"
        );
    }
    img.assert_clean();
}

/// A shell's builtins, redirections and exec run in kbox's process; what they write is in the
/// image afterwards, and exec replaces the program (the exit status is the new program's).
#[test]
fn a_shell_writes_files_and_execs_in_process() {
    let img = Image::default("trap-shell");
    let script = "cd /opt && echo one > f && read x < f && echo \"$x two\" >> f && \
                  exec /opt/kbox-tests/hello 5";
    let out = img.run(&["--syscall-mode=trap", "-S"], &["/bin/sh", "-c", script]);
    let stdout = expect(&out, 5);
    assert!(
        stdout.starts_with("hello from kbox guest: argc=2\n"),
        "{stdout}"
    );
    let cat = expect(&img.run(&["-S"], &["/bin/cat", "/opt/f"]), 0);
    assert_eq!(cat, "one\none two\n");
    img.assert_clean();
}

/// Processes: one kernel for the whole tree. A forked child's calls are served by the
/// first process's kernel, so the parent sees what its child wrote, a child's `cd` leaves
/// its parent where it was, and pipelines work. The same script natively, then under both
/// tiers.
#[test]
fn forked_children_share_the_one_kernel() {
    let script = "cd /opt && (echo from-child > /opt/child-wrote; cd /tmp) && pwd && \
                  cat /opt/child-wrote && echo abc | tr a-c x-z | wc -c && \
                  /bin/sh -c 'exit 3'; echo status=$?";
    let want = "/opt\nfrom-child\n4\nstatus=3\n";
    for mode in ["--syscall-mode=seccomp", "--syscall-mode=trap"] {
        let img = Image::default("trap-processes");
        let out = img.run(&[mode, "-S"], &["/bin/sh", "-c", script]);
        assert_eq!(expect(&out, 0), want, "{mode}");
        img.assert_clean();
    }
}

/// A guest killed by a signal: kbox reports 128+N, as the seccomp tier does, and the image
/// is unmounted cleanly all the same.
#[test]
fn a_guest_killed_by_a_signal_ends_kbox_cleanly() {
    let img = Image::default("trap-signal");
    let out = img.run(
        &["--syscall-mode=trap", "-S"],
        &["/bin/sh", "-c", "echo x > /opt/before && kill -SEGV $$"],
    );
    assert_eq!(out.status.code(), Some(128 + 11), "{}", text(&out.stderr));
    let cat = expect(&img.run(&["-S"], &["/bin/cat", "/opt/before"]), 0);
    assert_eq!(cat, "x\n");
    img.assert_clean();
}

/// A program that is not one: the loader refuses it with ENOEXEC, reported as the seccomp
/// tier reports it (126).
#[test]
fn a_file_that_is_not_a_program_is_not_executable() {
    let img = Image::default("trap-noexec");
    let seccomp = img.run(&["-S"], &["/etc/hostname"]);
    let trap = img.run(&["--syscall-mode=trap", "-S"], &["/etc/hostname"]);
    assert_eq!(seccomp.status.code(), trap.status.code());
    let _ = expect(&trap, 126);
}
