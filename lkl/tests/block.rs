//! Disks end to end: ext4 images built by mke2fs from a known tree, served by the
//! virtio block device, read back, written, unmounted at halt, then checked by e2fsck
//! and debugfs on the host. One kernel per process, so one sequential scenario.
mod common;

use common::{assert_fsck_clean, c, debugfs_cat, fresh_dir, mke2fs, pattern, read_all};
use kbox_lkl::sys::{self, Syscalls};
use kbox_lkl::{BootConfig, DiskError, Errno, Kernel, MountError, add_disk};
use std::path::{Path, PathBuf};
use std::process::Command;

const FILES: [(&str, u32, usize); 4] = [
    ("small.txt", 1, 13),
    ("block.bin", 2, 4096),
    ("odd.bin", 3, 70_001),
    ("sub/big.bin", 4, 3 << 20),
];

fn make_image(dir: &Path, name: &str) -> PathBuf {
    let tree = dir.join(format!("{name}-tree"));
    std::fs::create_dir_all(tree.join("sub")).expect("tree");
    for (path, seed, len) in FILES {
        std::fs::write(tree.join(path), pattern(seed, len)).expect("write tree file");
    }
    let image = dir.join(format!("{name}.ext4"));
    mke2fs("ext4", &tree, &image, "32M");
    image
}

fn write_file(k: &Kernel, path: &str, data: &[u8]) {
    let fd = k
        .open(&c(path), sys::O_WRONLY | sys::O_CREAT | sys::O_TRUNC, 0o644)
        .expect("create");
    assert_eq!(k.write(fd, data), Ok(data.len()));
    k.fsync(fd).expect("fsync");
    k.close(fd).expect("close");
}

#[test]
fn ext4_images_round_trip_and_stay_clean() {
    let dir = fresh_dir("block");
    let main = make_image(&dir, "main");
    let second = make_image(&dir, "second");
    let junk = dir.join("junk.img");
    std::fs::write(&junk, pattern(9, 4 << 20)).expect("junk");

    // A missing image is refused, naming the path.
    match add_disk(&dir.join("missing.ext4"), false) {
        Err(e @ DiskError::Open { .. }) => assert!(e.to_string().contains("missing.ext4"), "{e}"),
        other => panic!("missing image: {other:?}"),
    }
    let d_main = add_disk(&main, false).expect("add main");
    let d_second = add_disk(&second, true).expect("add second");
    let d_junk = add_disk(&junk, false).expect("add junk");

    let k = Kernel::boot(&BootConfig::default()).expect("boot");
    assert!(matches!(add_disk(&second, true), Err(DiskError::AfterBoot)));
    k.mount_disk(d_main, "ext4", "/mnt/main", false)
        .expect("mount main");
    k.mount_disk(d_second, "ext4", "/mnt/second", true)
        .expect("mount second read-only");
    match k.mount_disk(d_junk, "ext4", "/mnt/junk", false) {
        Err(MountError::Mount { errno, .. }) => assert_eq!(errno, Errno::EINVAL),
        other => panic!("junk image must not mount: {other:?}"),
    }

    // Every file reads back byte for byte, from both disks at once.
    for (path, seed, len) in FILES {
        assert_eq!(
            read_all(&k, &format!("/mnt/main/{path}")),
            pattern(seed, len),
            "{path}"
        );
        assert_eq!(
            read_all(&k, &format!("/mnt/second/{path}")),
            pattern(seed, len),
            "{path}"
        );
    }

    // The read-only disk refuses writes.
    assert_eq!(
        k.open(&c("/mnt/second/new"), sys::O_WRONLY | sys::O_CREAT, 0o644)
            .map(drop),
        Err(Errno::EROFS)
    );

    // Create, rename, unlink, truncate and fsync many files on the writable disk.
    k.mkdir(&c("/mnt/main/made"), 0o755).expect("mkdir");
    for i in 0..200u32 {
        let len = usize::try_from(i * 97 + 1).expect("len");
        write_file(&k, &format!("/mnt/main/made/f{i}"), &pattern(100 + i, len));
    }
    for i in (0..200u32).step_by(3) {
        k.rename(
            &c(&format!("/mnt/main/made/f{i}")),
            &c(&format!("/mnt/main/made/r{i}")),
        )
        .expect("rename");
    }
    for i in (1..200u32).step_by(5) {
        if i % 3 != 0 {
            k.unlink(&c(&format!("/mnt/main/made/f{i}")))
                .expect("unlink");
        }
    }
    let fd = k
        .open(&c("/mnt/main/odd.bin"), sys::O_WRONLY, 0)
        .expect("open odd");
    k.syscall(
        kbox_lkl::sysno::FTRUNCATE,
        [usize::try_from(fd).expect("fd"), 1000, 0, 0, 0, 0],
    )
    .expect("truncate");
    k.close(fd).expect("close");

    k.halt().expect("halt unmounts and syncs");

    // The host sees a clean filesystem with the data.
    assert_fsck_clean(&main);
    let cat = |path: &str| debugfs_cat(&main, path);
    assert_eq!(cat("/made/f2"), pattern(102, 2 * 97 + 1));
    assert!(cat("/made/f1").is_empty(), "f1 was unlinked");
    assert_eq!(cat("/made/r3"), pattern(103, 3 * 97 + 1));
    assert_eq!(cat("/odd.bin"), pattern(3, 70_001)[..1000].to_vec());
    let ls = Command::new("debugfs")
        .args(["-R", "ls -l /made"])
        .arg(&main)
        .output()
        .expect("debugfs ls");
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert!(
        !listing.contains(" f6 ") && !listing.contains(" f0 "),
        "unlinked/renamed names remain: {listing}"
    );
    assert_fsck_clean(&second);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
