//! An image as the guest's root: the recommended mounts come from the kernel library,
//! `..` cannot climb out, and after halt the image is clean.
mod common;

use common::{assert_fsck_clean, fresh_dir, mke2fs};
use kbox_lkl::sys::{self, Syscalls};
use kbox_lkl::{BootConfig, Errno, Kernel, PidWish, RootMode, TaskKind, add_disk};
use std::process::Command;

#[test]
fn recommended_root_is_the_image_plus_kernel_filesystems() {
    let dir = fresh_dir("root");
    std::fs::create_dir_all(dir.join("tree/etc")).expect("tree");
    std::fs::write(dir.join("tree/etc/hostname"), "from-the-image\n").expect("hostname");
    let image = dir.join("root.ext4");
    mke2fs("ext4", &dir.join("tree"), &image, "16M");

    let disk = add_disk(&image, false).expect("add disk");
    let k = Kernel::boot(&BootConfig::default()).expect("boot");
    let root = k
        .image_root(disk, "ext4", RootMode::Recommended, false)
        .expect("image root");
    let guest = k
        .create_task(Some(&root), TaskKind::Process)
        .expect("guest task");

    let mut buf = [0u8; 64];
    let fd = guest
        .open(c"/etc/hostname", sys::O_RDONLY, 0)
        .expect("image file at /");
    let n = guest.read(fd, &mut buf).expect("read");
    assert_eq!(&buf[..n], b"from-the-image\n");
    guest.close(fd).expect("close");

    guest.chdir(c"/../../..").expect("chdir up");
    assert_eq!(
        guest.getcwd().expect("getcwd"),
        b"/",
        "`..` stops at the image root"
    );
    let pid = guest.getpid().expect("getpid");
    assert!(
        guest
            .stat(&std::ffi::CString::new(format!("/proc/{pid}/status")).expect("path"))
            .is_ok()
    );
    assert!(guest.stat(c"/sys/block").is_ok(), "sysfs");
    assert!(guest.stat(c"/dev/null").is_ok(), "devtmpfs");
    assert!(guest.stat(c"/dev/pts/ptmx").is_ok(), "devpts");
    let tmp = guest
        .open(c"/tmp/scratch", sys::O_RDWR | sys::O_CREAT, 0o600)
        .expect("tmpfs /tmp");
    guest.close(tmp).expect("close");
    assert_eq!(
        guest.stat(c"/run").map(|s| s.st_mode & 0o170000),
        Ok(0o040000)
    );
    assert_eq!(
        guest.stat(c"/guest-root0").map(drop),
        Err(Errno::ENOENT),
        "the host-side path is invisible"
    );

    // The image root's pid namespace: guest tasks can have the pids their host processes
    // have, /proc is that namespace's, and their parent is its pid 1.
    let two = root
        .fork_with_pid(TaskKind::Process, PidWish::Exact(2))
        .expect("pid 2");
    assert_eq!(two.getpid(), Ok(2));
    let next = root
        .fork_with_pid(TaskKind::Process, PidWish::Exact(2))
        .expect("pid 2 again");
    assert_eq!(next.getpid(), Ok(3), "a pid in use gives the next free one");
    let status = read_text(&two, c"/proc/self/status");
    assert!(
        status.contains("\nPid:\t2\n") && status.contains("\nPPid:\t1\n"),
        "{status}"
    );
    assert_eq!(read_text(&two, c"/proc/1/comm"), "kbox\n");
    assert!(two.stat(c"/proc/3/status").is_ok(), "a sibling is in /proc");
    let outside = k
        .create_task(None, TaskKind::Process)
        .expect("root-namespace task");
    let outside_pid = outside.getpid().expect("getpid");
    assert_eq!(
        two.stat(&std::ffi::CString::new(format!("/proc/{outside_pid}/comm")).expect("path"))
            .map(drop),
        Err(Errno::ENOENT),
        "tasks outside the namespace are not in its /proc"
    );
    drop((two, next, outside));

    drop(guest);
    drop(root);
    k.halt().expect("halt unmounts everything");
    assert_fsck_clean(&image);
    let out = Command::new("debugfs")
        .args(["-R", "stat /tmp/scratch"])
        .arg(&image)
        .output()
        .expect("debugfs");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "/tmp is tmpfs, not the image"
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

fn read_text(task: &kbox_lkl::Task, path: &std::ffi::CStr) -> String {
    let fd = task.open(path, sys::O_RDONLY, 0).expect("open");
    let mut buf = vec![0u8; 8192];
    let n = task.read(fd, &mut buf).expect("read");
    task.close(fd).expect("close");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}
