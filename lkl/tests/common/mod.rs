//! Helpers shared by the kernel-library test binaries (each binary uses a subset).
#![allow(dead_code, reason = "each test binary uses only some helpers")]

use kbox_lkl::sys::{self, Syscalls};
use kbox_lkl::{Errno, Kernel};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn c(s: &str) -> CString {
    CString::new(s).expect("test paths have no NUL")
}

/// Deterministic bytes per seed (xorshift), so a misplaced or stale block shows.
pub fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[1]
        })
        .collect()
}

/// A fresh, empty directory for one test process.
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kbox-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Runs a host tool and requires success, showing its output otherwise.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("host tool runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `mke2fs -d TREE` into IMAGE (4 KiB blocks).
pub fn mke2fs(fstype: &str, tree: &Path, image: &Path, size: &str) {
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", fstype, "-b", "4096", "-d"])
        .arg(tree)
        .arg(image)
        .arg(size));
}

/// `e2fsck -fn`: nothing to fix.
pub fn assert_fsck_clean(image: &Path) {
    run(Command::new("e2fsck").arg("-fn").arg(image));
}

/// A file's bytes as debugfs reads them from the image (empty when absent).
pub fn debugfs_cat(image: &Path, path: &str) -> Vec<u8> {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(image)
        .output()
        .expect("debugfs runs");
    out.stdout
}

pub fn read_all(k: &impl Syscalls, path: &str) -> Vec<u8> {
    let fd = k
        .open(&c(path), sys::O_RDONLY, 0)
        .unwrap_or_else(|e| panic!("open {path}: {e}"));
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = k.read(fd, &mut buf).expect("read");
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    k.close(fd).expect("close");
    out
}

pub fn mount_proc(k: &Kernel) {
    match k.mkdir(c"/proc", 0o555) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => panic!("mkdir /proc: {e}"),
    }
    match k.mount(c"proc", c"/proc", c"proc", 0, None) {
        Ok(()) | Err(Errno::EBUSY) => {}
        Err(e) => panic!("mount proc: {e}"),
    }
}
