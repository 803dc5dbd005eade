//! A SIGKILL in the middle of writing: the image must be repairable by journal replay
//! (`e2fsck -fy`), and every file fsync'd before the kill must be intact. The test runs
//! itself again as the writer (a child process with its own kernel) and kills it.
mod common;

use common::{c, debugfs_cat, pattern};
use kbox_lkl::sys::{self, Syscalls};
use kbox_lkl::{BootConfig, Kernel, add_disk};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

const CHILD_ENV: &str = "KBOX_KILL_TEST_IMAGE";
const SYNCED_BEFORE_KILL: usize = 25;

fn seed(i: usize) -> u32 {
    u32::try_from(i).expect("small index")
}

fn file_len(i: usize) -> usize {
    10_000 + i * 1_111
}

/// The writer: fsync'd files are announced on stdout; unsynced ones are written in between.
fn writer(image: &Path) -> ! {
    let disk = add_disk(image, false).expect("add disk");
    let k = Kernel::boot(&BootConfig::default()).expect("boot");
    k.mount_disk(disk, "ext4", "/mnt/k", false).expect("mount");
    k.mkdir(c"/mnt/k/kill", 0o755).expect("mkdir");
    let dir = k
        .open(c"/mnt/k/kill", sys::O_RDONLY | sys::O_DIRECTORY, 0)
        .expect("open dir");
    let mut out = std::io::stdout().lock();
    for i in 0.. {
        let fd = k
            .open(
                &c(&format!("/mnt/k/kill/f{i}")),
                sys::O_WRONLY | sys::O_CREAT,
                0o644,
            )
            .expect("create");
        assert_eq!(k.write(fd, &pattern(seed(i), file_len(i))), Ok(file_len(i)));
        k.fsync(fd).expect("fsync file");
        k.fsync(dir).expect("fsync dir");
        k.close(fd).expect("close");
        writeln!(out, "synced {i}").expect("stdout");
        out.flush().expect("flush");
        let fd = k
            .open(
                &c(&format!("/mnt/k/kill/u{i}")),
                sys::O_WRONLY | sys::O_CREAT,
                0o644,
            )
            .expect("create");
        assert_eq!(k.write(fd, &pattern(seed(1000 + i), 50_000)), Ok(50_000));
        k.close(fd).expect("close");
    }
    unreachable!("the loop only ends with the kill")
}

#[test]
fn sigkill_mid_write_keeps_every_fsynced_file() {
    if let Some(image) = std::env::var_os(CHILD_ENV) {
        writer(Path::new(&image));
    }
    let dir = std::env::temp_dir().join(format!("kbox-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("tree")).expect("tmp");
    let image = dir.join("kill.ext4");
    let made = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-d"])
        .arg(dir.join("tree"))
        .arg(&image)
        .arg("64M")
        .status()
        .expect("mke2fs");
    assert!(made.success());

    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "sigkill_mid_write_keeps_every_fsynced_file",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &image)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn writer");
    let lines = BufReader::new(child.stdout.take().expect("stdout"));
    let mut synced = 0;
    for line in lines.lines() {
        let line = line.expect("line");
        if let Some(n) = line.strip_prefix("synced ") {
            synced = n.parse::<usize>().expect("number") + 1;
            if synced >= SYNCED_BEFORE_KILL {
                break;
            }
        }
    }
    child.kill().expect("SIGKILL the writer");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "the writer was killed");
    assert!(
        synced >= SYNCED_BEFORE_KILL,
        "writer stopped after {synced} files"
    );

    // Journal replay repairs the image (exit 0: clean, 1: errors corrected).
    let repair = Command::new("e2fsck")
        .args(["-fy"])
        .arg(&image)
        .output()
        .expect("e2fsck -fy");
    assert!(
        matches!(repair.status.code(), Some(0 | 1)),
        "e2fsck -fy: {}",
        String::from_utf8_lossy(&repair.stdout)
    );
    let check = Command::new("e2fsck")
        .args(["-fn"])
        .arg(&image)
        .output()
        .expect("e2fsck -fn");
    assert!(
        check.status.success(),
        "after repair: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    for i in 0..synced {
        assert_eq!(
            debugfs_cat(&image, &format!("/kill/f{i}")),
            pattern(seed(i), file_len(i)),
            "fsync'd file f{i} damaged or lost"
        );
    }
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
