//! The kbox binary as a user meets it: exit statuses, stdout and the one-line errors.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const KBOX: &str = env!("CARGO_BIN_EXE_kbox");

/// Runs kbox with `args`, stdin closed.
fn kbox(args: &[&str]) -> Output {
    match Command::new(KBOX).args(args).stdin(Stdio::null()).output() {
        Ok(output) => output,
        Err(e) => panic!("cannot run {KBOX}: {e}"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts kbox failed as itself: status 125, nothing on stdout, and exactly one line on
/// stderr starting with `kbox: `. Returns that line.
fn kbox_error(output: &Output) -> String {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(125), "stderr: {stderr}");
    assert_eq!(text(&output.stdout), "");
    assert!(stderr.starts_with("kbox: "), "stderr: {stderr:?}");
    assert!(stderr.ends_with('\n'), "stderr: {stderr:?}");
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr:?}");
    stderr
}

/// A directory for one test under cargo's scratch space, emptied first.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{name}"));
    let _ = fs::remove_dir_all(&dir);
    if let Err(e) = fs::create_dir_all(&dir) {
        panic!("cannot create {}: {e}", dir.display());
    }
    dir
}

/// A regular file of zeros standing in for an image: it passes the host checks but holds no
/// filesystem.
fn image_file(dir: &Path) -> PathBuf {
    let path = dir.join("rootfs.ext4");
    if let Err(e) = fs::write(&path, [0u8; 4096]) {
        panic!("cannot write {}: {e}", path.display());
    }
    path
}

fn utf8(path: &Path) -> &str {
    match path.to_str() {
        Some(s) => s,
        None => panic!("scratch path {} is not UTF-8", path.display()),
    }
}

#[test]
fn help_when_long_prints_usage_on_stdout_and_exits_zero() {
    let output = kbox(&["--help"]);
    assert_eq!(output.status.code(), Some(0));
    assert!(text(&output.stdout).starts_with("Usage: kbox "));
    assert_eq!(text(&output.stderr), "");
}

#[test]
fn help_when_short_lists_every_option() {
    let usage = text(&kbox(&["-h"]).stdout);
    for option in [
        "-r IMAGE",
        "-R IMAGE",
        "-S IMAGE",
        "-t FSTYPE",
        "-k CMDLINE",
        "-b HOST:GUEST",
        "-w DIR",
        "--root-id",
        "--change-id",
        "--syscall-mode",
        "--shadow-limit",
        "--verbose",
        "--help",
        "--version",
    ] {
        assert!(usage.contains(option), "usage lacks {option}");
    }
}

#[test]
fn help_when_stdout_unwritable_is_kbox_error() {
    let full = match fs::OpenOptions::new().write(true).open("/dev/full") {
        Ok(f) => f,
        Err(e) => panic!("cannot open /dev/full: {e}"),
    };
    let output = Command::new(KBOX)
        .arg("--help")
        .stdout(full)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {KBOX}: {e}"));
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(125));
    assert!(
        stderr.starts_with("kbox: cannot write to stdout"),
        "{stderr}"
    );
}

#[test]
fn version_when_asked_prints_name_and_version() {
    let output = kbox(&["--version"]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        text(&output.stdout),
        format!("kbox {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn no_arguments_when_run_is_one_line_error_naming_image_options() {
    let line = kbox_error(&kbox(&[]));
    assert!(line.contains("-r, -R or -S"), "{line}");
}

#[test]
fn unknown_option_when_given_is_one_line_error_naming_it() {
    let line = kbox_error(&kbox(&["--frobnicate", "-S", "x.ext4"]));
    assert!(line.contains("\"--frobnicate\""), "{line}");
    assert!(line.contains("Hint: "), "{line}");
}

#[test]
fn missing_value_when_option_last_is_one_line_error() {
    let line = kbox_error(&kbox(&["-S"]));
    assert!(line.contains("-S needs a value"), "{line}");
}

#[test]
fn two_images_when_given_is_one_line_error() {
    let line = kbox_error(&kbox(&["-r", "a.ext4", "-S", "b.ext4"]));
    assert!(line.contains("-S follows -r"), "{line}");
}

/// Every mode name is accepted (the run then fails on the missing image).
#[test]
fn syscall_modes_are_accepted() {
    for mode in ["seccomp", "auto", "trap", "rewrite"] {
        let line = kbox_error(&kbox(&[
            "-S",
            "/nonexistent/x.ext4",
            &format!("--syscall-mode={mode}"),
        ]));
        // Every tier is built on both architectures: the image is what is missing.
        assert!(line.contains("x.ext4"), "{mode}: {line}");
    }
}

#[test]
fn shadow_limit_when_too_big_names_bounds() {
    let line = kbox_error(&kbox(&["-S", "x.ext4", "--shadow-limit", "8G"]));
    assert!(line.contains("4096 bytes"), "{line}");
    assert!(line.contains("4294967296 bytes"), "{line}");
}

#[test]
fn change_id_when_bad_is_one_line_error() {
    let line = kbox_error(&kbox(&["-R", "x.ext4", "--change-id", "root:root"]));
    assert!(line.contains("\"root:root\""), "{line}");
}

#[test]
fn missing_image_when_given_names_path_and_make_rootfs() {
    let dir = scratch("missing-image");
    let image = dir.join("absent.ext4");
    let line = kbox_error(&kbox(&["-S", utf8(&image), "--", "/bin/true"]));
    assert!(line.contains(utf8(&image)), "{line}");
    assert!(line.contains("make rootfs"), "{line}");
}

#[test]
fn directory_image_when_given_names_path() {
    let dir = scratch("dir-image");
    let line = kbox_error(&kbox(&["-r", utf8(&dir)]));
    assert!(line.contains(utf8(&dir)), "{line}");
    assert!(line.contains("is a directory"), "{line}");
}

#[test]
fn image_path_when_it_has_newline_is_still_one_line() {
    let line = kbox_error(&kbox(&["-r", "bad\nname.ext4"]));
    assert!(line.contains("bad\\x0aname.ext4"), "{line}");
}

#[test]
fn bind_when_host_missing_names_host_path() {
    let dir = scratch("bind-missing");
    let image = image_file(&dir);
    let host = dir.join("no-such-src");
    let bind = format!("{}:/src", utf8(&host));
    let line = kbox_error(&kbox(&["-R", utf8(&image), "-b", &bind]));
    assert!(line.contains(utf8(&host)), "{line}");
}

#[test]
fn corrupt_image_when_given_is_one_line_mount_error() {
    // A file of zeros is no ext4 filesystem: the kernel library refuses to mount it.
    let dir = scratch("corrupt");
    let image = image_file(&dir);
    let line = kbox_error(&kbox(&["-S", utf8(&image), "--", "/bin/true"]));
    assert!(line.contains("cannot mount the image"), "{line}");
    assert!(line.contains("e2fsck"), "{line}");
}
