//! An image as the guest's root: the recommended mounts come from the kernel library,
//! `..` cannot climb out, and after halt the image is clean.
mod common;

use common::{assert_fsck_clean, fresh_dir, mke2fs};
use kbox_lkl::sys::{self, Syscalls};
use kbox_lkl::{BootConfig, Errno, Kernel, RootMode, add_disk};
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
        .create_task(Some(&root), kbox_lkl::TaskKind::Process)
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
