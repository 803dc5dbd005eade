//! The loader against the host kernel's own execve: each program runs natively first, then
//! loaded by kbox's loader in a forked child (with no interception: its syscalls are the
//! host's), and both must print the same. Errors are checked without starting anything.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::*;

/// Reads host files, as the in-process tiers read the image's.
struct HostFiles;

impl Files for HostFiles {
    fn executable(&mut self, path: &[u8]) -> Result<Vec<u8>, Errno> {
        let p = Path::new(std::ffi::OsStr::from_bytes(path));
        let meta = std::fs::metadata(p).map_err(io_errno)?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            return Err(Errno::EACCES);
        }
        std::fs::read(p).map_err(io_errno)
    }
    fn readable(&mut self, path: &[u8]) -> Result<Vec<u8>, Errno> {
        std::fs::read(std::ffi::OsStr::from_bytes(path)).map_err(io_errno)
    }
}

use std::os::unix::ffi::OsStrExt;

fn io_errno(e: std::io::Error) -> Errno {
    Errno(e.raw_os_error().unwrap_or(5))
}

fn guest_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("KBOX_GUEST_BINS")
        .expect("KBOX_GUEST_BINS must name build/guest-ARCH (make check-kbox sets it)");
    Path::new(&dir).join(name)
}

/// Removes a scratch directory when dropped: on a failed assertion too.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kbox-loader-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

const NOTE: &str = "STARTUP_NOTE=from the loader test";

/// Output and exit status of `argv` run by the host's execve.
fn native(argv: &[&str]) -> (String, i32) {
    let out = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .env_clear()
        .env("STARTUP_NOTE", &NOTE[13..])
        .output()
        .expect("run natively");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (text, out.status.code().unwrap_or(-1))
}

/// Output and exit status of `argv` loaded by kbox's loader into a forked child.
fn loaded(argv: &[&str], dir: &Path) -> (String, i32) {
    let out_path = dir.join("out");
    let out = std::fs::File::create(&out_path).expect("output file");
    let req = Request {
        path: argv[0].as_bytes().to_vec(),
        argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
        envp: vec![NOTE.as_bytes().to_vec()],
        creds: Creds::default(),
    };
    // SAFETY: the child only loads and starts the program, or writes a line and exits; musl's
    // fork leaves malloc usable in the child (its atfork handling).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        use std::os::fd::AsRawFd;
        // SAFETY: plain fd calls in the child, which owns these descriptors.
        unsafe {
            libc::dup2(out.as_raw_fd(), 1);
            libc::dup2(out.as_raw_fd(), 2);
        }
        match load(&mut HostFiles, &req, &mut AsInFile) {
            Ok(program) => {
                let (entry, sp, _) = program.keep();
                // SAFETY: entry and sp are a program and stack the loader just built.
                unsafe { start_program(entry, sp) }
            }
            Err(e) => {
                eprintln!("load failed: {e}");
                // SAFETY: ends the child without running the parent's atexit handlers.
                unsafe { libc::_exit(99) }
            }
        }
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    let mut text = String::new();
    std::fs::File::open(&out_path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .expect("read output");
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -libc::WTERMSIG(status)
    };
    (text, code)
}

#[cfg(target_arch = "aarch64")]
use kbox_arch::aarch64::start::start_program;
#[cfg(target_arch = "x86_64")]
use kbox_arch::x86_64::start::start_program;

fn same_as_native(argv: &[&str], dir: &Path) -> String {
    let (want, want_code) = native(argv);
    let (got, got_code) = loaded(argv, dir);
    assert_eq!(got, want, "{argv:?}: loaded output differs from native");
    assert_eq!(got_code, want_code, "{argv:?}: exit status");
    want
}

#[test]
fn a_static_program_starts_as_execve_starts_it() {
    let dir = scratch("static");
    let _cleanup = Cleanup(dir.clone());
    let prog = guest_bin("startup");
    let out = same_as_native(&[prog.to_str().expect("utf-8"), "a", "b c"], &dir);
    assert!(out.contains("note=from the loader test\n"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
}

#[test]
fn a_dynamic_program_gets_its_interpreter_and_libraries() {
    let dir = scratch("dynamic");
    let _cleanup = Cleanup(dir.clone());
    let out = same_as_native(
        &["/bin/sh", "-c", "echo \"$0 $# $STARTUP_NOTE\"", "x", "y"],
        &dir,
    );
    assert_eq!(out, "x 1 from the loader test\n");
}

#[test]
fn a_script_runs_its_interpreter_with_the_scripts_path() {
    let dir = scratch("script");
    let _cleanup = Cleanup(dir.clone());
    let script = dir.join("s");
    std::fs::write(&script, "#! /bin/echo  first arg \t\nignored\n").expect("write");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let s = script.to_str().expect("utf-8");
    let out = same_as_native(&[s, "z"], &dir);
    assert_eq!(out, format!("first arg {s} z\n"));
}

#[test]
fn what_cannot_be_loaded_fails_with_execves_errno() {
    let dir = scratch("errors");
    let _cleanup = Cleanup(dir.clone());
    let req = |path: &Path| Request {
        path: path.as_os_str().as_bytes().to_vec(),
        argv: vec![b"x".to_vec()],
        envp: vec![],
        creds: Creds::default(),
    };
    let write = |name: &str, body: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, body).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    };
    let garbage = write(
        "garbage",
        b"\x7fELF\x02\x01\x01 not really an ELF file at all.....",
    );
    let empty_line = write("empty", b"#!   \n");
    let missing_interp = write("missing", b"#!/nonexistent/interpreter\n");
    // Six scripts each run by the next: one more than Linux follows.
    let mut deepest = write("loop0", b"#!/bin/true\n");
    for i in 1..=5 {
        let body = format!("#!{}\n", deepest.display());
        deepest = write(&format!("loop{i}"), body.as_bytes());
    }
    let noexec = dir.join("noexec");
    std::fs::write(&noexec, b"#!/bin/true\n").expect("write");
    let cases = [
        (garbage, Errno::ENOEXEC),
        (empty_line, Errno::ENOEXEC),
        (missing_interp, Errno::ENOENT),
        (deepest, Errno::ELOOP),
        (noexec, Errno::EACCES),
        (dir.join("absent"), Errno::ENOENT),
    ];
    for (path, want) in cases {
        // The host's execve agrees.
        let native = std::process::Command::new(&path)
            .output()
            .map_err(|e| e.raw_os_error());
        assert_eq!(
            native.err(),
            Some(Some(want.0)),
            "{} natively",
            path.display()
        );
        let got = load(&mut HostFiles, &req(&path), &mut AsInFile)
            .map(|_| ())
            .map_err(|e| e.errno());
        assert_eq!(got, Err(want), "{}", path.display());
    }
}
