//! The in-process tiers: `--syscall-mode=trap` (the first guest process runs in
//! kbox's own process, loaded by kbox's loader, its calls trapped by SIGSYS; the processes it
//! forks are served by that process's kernel), `--syscall-mode=rewrite` (the same, with the
//! guest's syscall sites patched to call kbox directly) and `auto` (which picks rewrite for
//! a static program that starts no processes). Each guest program runs natively first, then
//! under the seccomp tier and each of these, and must give the same result in all.

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

/// The in-process tiers, as `--syscall-mode` names them, and auto.
const IN_PROCESS: &[&str] = &[
    "--syscall-mode=trap",
    "--syscall-mode=rewrite",
    "--syscall-mode=auto",
];

/// The in-process tiers, as `--syscall-mode` names them.
const EXPLICIT: &[&str] = &["--syscall-mode=trap", "--syscall-mode=rewrite"];

/// Guest programs pass natively, then give the seccomp tier's result under every
/// in-process tier (the same checks pass: which ones run can depend on the file system,
/// e.g. user xattrs on the host's /tmp but not in the image). smallstack makes its calls on
/// a 5 KiB stack, as musl's posix_spawn child does; altstack's signal handlers run on an
/// alternate stack while kbox is in a call, and a program it execs must start without that
/// stack (CPython's test_signal found both, under the rewrite tier).
#[test]
fn guest_programs_give_the_native_result_under_every_tier() {
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
        "smallstack",
        "altstack",
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
        let seccomp = run("--syscall-mode=seccomp");
        assert_eq!(seccomp.0, native.0, "{prog} under seccomp");
        for &mode in IN_PROCESS {
            let got = run(mode);
            assert_eq!(got.0, native.0, "{prog} {mode}");
            let differ: Vec<&String> = seccomp.1.symmetric_difference(&got.1).collect();
            assert!(
                differ.is_empty(),
                "{prog}: checks only seccomp or {mode} ran: {differ:?}"
            );
        }
    }
    img.assert_clean();
}

/// A shell's builtins, redirections and exec run in kbox's process; what they write is in the
/// image afterwards, and exec replaces the program (the exit status is the new program's).
#[test]
fn a_shell_writes_files_and_execs_in_process() {
    for &mode in EXPLICIT {
        let img = Image::default("trap-shell");
        let script = "cd /opt && echo one > f && read x < f && echo \"$x two\" >> f && \
                      exec /opt/kbox-tests/hello 5";
        let out = img.run(&[mode, "-S"], &["/bin/sh", "-c", script]);
        let stdout = expect(&out, 5);
        assert!(
            stdout.starts_with("hello from kbox guest: argc=2\n"),
            "{mode}: {stdout}"
        );
        let cat = expect(&img.run(&["-S"], &["/bin/cat", "/opt/f"]), 0);
        assert_eq!(cat, "one\none two\n", "{mode}");
        img.assert_clean();
    }
}

/// Programs a shell exec'd in kbox's process spawn children on small stacks: posix_spawn's
/// child runs on 5 KiB, and smallstack's on a 5 KiB stack above a pattern it checks. kbox
/// once served their calls on those stacks (the child crashed, or the pattern changed).
#[test]
fn programs_started_by_exec_make_calls_on_small_stacks() {
    let img = Image::default("trap-small-stacks");
    for &mode in EXPLICIT {
        for prog in ["smallstack", "spawnstress"] {
            let script = format!("exec /opt/kbox-tests/{prog} /tmp");
            let out = img.run(&[mode, "-S"], &["/bin/sh", "-c", &script]);
            let (status, oks) = verdict(&out, &format!("{prog} after exec, {mode}"));
            assert_eq!(status, 0, "{prog} after exec, {mode}");
            assert!(!oks.is_empty(), "{prog} after exec, {mode}: no check ran");
        }
    }
    img.assert_clean();
}

/// `-v` says what the rewrite tier patched, and what auto chose and why: rewrite for a
/// static program that starts no processes, seccomp for busybox's shell (it forks). Without
/// `--syscall-mode` the guest stays out of kbox's process.
#[test]
fn verbose_output_says_what_was_patched_and_which_tier_auto_chose() {
    let img = Image::default("trap-verbose");
    let out = img.run(
        &["-v", "--syscall-mode=rewrite", "-S"],
        &["/opt/kbox-tests/hello"],
    );
    let _ = expect(&out, 0);
    let err = text(&out.stderr);
    let patched: usize = err
        .lines()
        .filter_map(|l| l.strip_prefix("kbox: rewrite: "))
        .filter_map(|l| l.split(" sites patched").next()?.parse().ok())
        .next_back()
        .unwrap_or(0);
    assert!(patched > 0, "no site patched:\n{err}");
    for (cmd, tier) in [("/opt/kbox-tests/hello", "rewrite"), ("/bin/sh", "seccomp")] {
        let out = img.run(&["-v", "--syscall-mode=auto", "-S"], &[cmd, "-c", "true"]);
        let _ = expect(&out, 0);
        let err = text(&out.stderr);
        let said = format!("kbox: syscall mode auto: {tier} for {cmd}: ");
        assert!(err.contains(&said), "{cmd}: want {said:?} in:\n{err}");
    }
    let out = img.run(&["-v", "-S"], &["/opt/kbox-tests/hello"]);
    let _ = expect(&out, 0);
    let err = text(&out.stderr);
    assert!(
        !err.contains("syscall mode auto") && !err.contains("kbox's process"),
        "{err}"
    );
}

/// Dynamic glibc programs from the Debian image: the dynamic linker's libraries are
/// patched as it maps them (rewrite), and glibc's posix_spawn and vfork children work.
/// The same commands as under the seccomp tier, with the same output.
#[test]
fn dynamic_glibc_programs_run_in_process() {
    let img = Image::copy_of("KBOX_DEBIAN", "trap-debian");
    let commands: [&[&str]; 2] = [
        &[
            "/bin/bash",
            "-c",
            "echo $((6*7)) $BASH_VERSION | cut -c1-4; ls /usr/bin | grep -c . | sed 's/.*/ok/'",
        ],
        &[
            "/usr/bin/python3",
            "-c",
            "import os, subprocess, json; os.system('/bin/echo one'); \
             print(subprocess.run(['/bin/echo', 'two'], capture_output=True, text=True).stdout, end=''); \
             print(json.dumps(sorted(os.listdir('/'))[:2]))",
        ],
    ];
    for cmd in commands {
        let want = expect(&img.run(&["--syscall-mode=seccomp", "-S"], cmd), 0);
        for &mode in EXPLICIT {
            let got = img.run(&[mode, "-v", "-S"], cmd);
            assert_eq!(expect(&got, 0), want, "{cmd:?} {mode}");
            if mode.ends_with("rewrite") {
                let err = text(&got.stderr);
                // The program has no site of its own (its calls are libc's): ld.so's line
                // (the loader's) and at least libc's (the guest's own mmap).
                let libc = err
                    .lines()
                    .filter(|l| l.starts_with("kbox: rewrite: code at 0x"))
                    .count();
                assert!(
                    libc >= 2,
                    "ld.so and libc patched as they were mapped:\n{err}"
                );
            }
        }
    }
    img.assert_clean();
}

/// Processes: one kernel for the whole tree. A forked child's calls are served by the
/// first process's kernel, so the parent sees what its child wrote, a child's `cd` leaves
/// its parent where it was, and pipelines work. The same script under every tier.
#[test]
fn forked_children_share_the_one_kernel() {
    let script = "cd /opt && (echo from-child > /opt/child-wrote; cd /tmp) && pwd && \
                  cat /opt/child-wrote && echo abc | tr a-c x-z | wc -c && \
                  /bin/sh -c 'exit 3'; echo status=$?";
    let want = "/opt\nfrom-child\n4\nstatus=3\n";
    for &mode in ["--syscall-mode=seccomp"].iter().chain(EXPLICIT) {
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
    for &mode in EXPLICIT {
        let img = Image::default("trap-signal");
        let out = img.run(
            &[mode, "-S"],
            &["/bin/sh", "-c", "echo x > /opt/before && kill -SEGV $$"],
        );
        assert_eq!(
            out.status.code(),
            Some(128 + 11),
            "{mode}: {}",
            text(&out.stderr)
        );
        let cat = expect(&img.run(&["-S"], &["/bin/cat", "/opt/before"]), 0);
        assert_eq!(cat, "x\n", "{mode}");
        img.assert_clean();
    }
}

/// A program that is not one: the loader refuses it with ENOEXEC, reported as the seccomp
/// tier reports it (126).
#[test]
fn a_file_that_is_not_a_program_is_not_executable() {
    let img = Image::default("trap-noexec");
    let seccomp = img.run(&["--syscall-mode=seccomp", "-S"], &["/etc/hostname"]);
    let _ = expect(&seccomp, 126);
    for &mode in IN_PROCESS {
        let got = img.run(&[mode, "-S"], &["/etc/hostname"]);
        assert_eq!(seccomp.status.code(), got.status.code(), "{mode}");
    }
}
