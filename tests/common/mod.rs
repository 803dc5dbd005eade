//! What the guest test files share: private copies of the images, running kbox on them with
//! a time limit, and checking exit statuses and the image afterwards. `make check-kbox`
//! sets KBOX_ROOTFS and KBOX_DEBIAN to the images and KBOX_GUEST_BINS to the guest programs
//! built for the host (for their native runs).
// Each test file uses its own subset of these helpers.
#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const KBOX: &str = env!("CARGO_BIN_EXE_kbox");

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A private copy of an image (sparse, so cheap), removed on drop.
pub struct Image {
    pub path: PathBuf,
}

impl Image {
    pub fn copy_of(var: &str, name: &str) -> Image {
        let src = match std::env::var_os(var) {
            Some(p) => PathBuf::from(p),
            None => panic!("{var} is not set: run these tests through `make check-kbox`"),
        };
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest-images");
        if let Err(e) = fs::create_dir_all(&dir) {
            panic!("cannot create {}: {e}", dir.display());
        }
        let path = dir.join(format!("{name}.ext4"));
        let ok = Command::new("cp")
            .args(["--sparse=always"])
            .arg(&src)
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot copy {} to {}", src.display(), path.display());
        Image { path }
    }

    pub fn default(name: &str) -> Image {
        Image::copy_of("KBOX_ROOTFS", name)
    }

    pub fn arg(&self) -> &str {
        match self.path.to_str() {
            Some(s) => s,
            None => panic!("image path is not UTF-8"),
        }
    }

    /// Runs kbox on this image with `opts` before `--` and `cmd` after it.
    pub fn run(&self, opts: &[&str], cmd: &[&str]) -> Output {
        let mut c = Command::new(KBOX);
        // kbox keeps exec copies per image under $HOME/.cache; every test image is a new
        // file, so keep those stores with the build, not in the user's home.
        c.env("HOME", Path::new(env!("CARGO_TARGET_TMPDIR")).join("home"));
        c.args(opts).arg(self.arg()).arg("--").args(cmd);
        c.stdin(Stdio::null());
        run_with_timeout(c, Duration::from_secs(120))
    }

    pub fn sh(&self, script: &str) -> Output {
        self.run(&["-S"], &["/bin/sh", "-c", script])
    }

    /// `e2fsck -fn` finds nothing to fix.
    pub fn assert_clean(&self) {
        let out = Command::new("e2fsck").args(["-fn", self.arg()]).output();
        let out = match out {
            Ok(o) => o,
            Err(e) => panic!("cannot run e2fsck: {e}"),
        };
        assert!(
            out.status.success(),
            "e2fsck -fn {} failed:\n{}{}",
            self.arg(),
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

pub fn run_with_timeout(mut c: Command, limit: Duration) -> Output {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = match c.spawn() {
        Ok(ch) => ch,
        Err(e) => panic!("cannot run {KBOX}: {e}"),
    };
    let mut out = child.stdout.take().map(|mut s| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = s.read_to_end(&mut v);
            v
        })
    });
    let mut err = child.stderr.take().map(|mut s| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = s.read_to_end(&mut v);
            v
        })
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                panic!("kbox did not finish within {limit:?}");
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("wait: {e}"),
        }
    };
    let take = |h: &mut Option<std::thread::JoinHandle<Vec<u8>>>| {
        h.take().and_then(|h| h.join().ok()).unwrap_or_default()
    };
    Output {
        status,
        stdout: take(&mut out),
        stderr: take(&mut err),
    }
}

/// Asserts exit status `code` and returns stdout.
pub fn expect(out: &Output, code: i32) -> String {
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    stdout
}
