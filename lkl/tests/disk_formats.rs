//! Disks beyond a clean ext4: ext2 and ext3 images (served by the ext4 driver), data
//! that reaches the image through sync(2) while the kernel keeps running, and images
//! whose metadata is corrupt (a clear mount error carrying the kernel's words, no
//! panic). One kernel per process, so one sequential scenario over four disks.
mod common;

use common::{c, debugfs_cat, pattern, read_all, run};
use kbox_lkl::sys::{self, Syscalls};
use kbox_lkl::{BootConfig, Errno, Kernel, MountError, add_disk, sysno};
use std::path::{Path, PathBuf};
use std::process::Command;

const TREE: [(&str, u32, usize); 3] = [
    ("a.txt", 1, 10),
    ("d/b.bin", 2, 123_457),
    ("d/e/c.bin", 3, 1 << 20),
];

fn make_image(dir: &Path, fstype: &str) -> PathBuf {
    let tree = dir.join(format!("{fstype}-tree"));
    std::fs::create_dir_all(tree.join("d/e")).expect("tree dirs");
    for (path, seed, len) in TREE {
        std::fs::write(tree.join(path), pattern(seed, len)).expect("tree file");
    }
    let image = dir.join(format!("{fstype}.img"));
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", fstype, "-b", "4096", "-d"])
        .arg(&tree)
        .arg(&image)
        .arg("16M"));
    image
}

fn write_new(k: &Kernel, path: &str, data: &[u8]) {
    let fd = k
        .open(&c(path), sys::O_WRONLY | sys::O_CREAT | sys::O_EXCL, 0o644)
        .expect(path);
    assert_eq!(k.write(fd, data).expect("write"), data.len());
    k.close(fd).expect("close");
}

#[test]
fn ext2_ext3_sync_and_corrupt_images() {
    let dir = std::env::temp_dir().join(format!("kbox-disk-formats-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let ext2 = make_image(&dir, "ext2");
    let ext3 = make_image(&dir, "ext3");
    let ext4 = make_image(&dir, "ext4");
    // A real ext4 whose first group descriptor points its block bitmap far outside the
    // filesystem: the superblock is fine, so the failure comes from ext4's own checks.
    let corrupt = make_image(&dir, "corrupt-ext4");
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&corrupt)
            .expect("open corrupt");
        file.write_all_at(&[0xff; 8], 4096)
            .expect("clobber descriptor");
    }

    let d2 = add_disk(&ext2, false).expect("add ext2");
    let d3 = add_disk(&ext3, false).expect("add ext3");
    let d4 = add_disk(&ext4, false).expect("add ext4");
    let dc = add_disk(&corrupt, false).expect("add corrupt");
    let verbose = std::env::var_os("KBOX_LKL_VERBOSE").is_some();
    let k = Kernel::boot(&BootConfig {
        verbose,
        ..BootConfig::default()
    })
    .expect("boot");

    // A corrupt image: a typed mount error with the kernel's explanation.
    match k.mount_disk(dc, "ext4", "/mnt/corrupt", false) {
        Err(e @ MountError::Mount { .. }) => {
            let text = e.to_string();
            assert!(text.contains("EXT4-fs"), "no kernel words in: {text}");
        }
        other => panic!("corrupt image must not mount: {other:?}"),
    }

    // ext2 and ext3 mount under their own names and read back byte for byte.
    k.mount_disk(d2, "ext2", "/mnt/ext2", false)
        .expect("mount ext2");
    k.mount_disk(d3, "ext3", "/mnt/ext3", false)
        .expect("mount ext3");
    for fs in ["ext2", "ext3"] {
        for (path, seed, len) in TREE {
            assert_eq!(
                read_all(&k, &format!("/mnt/{fs}/{path}")),
                pattern(seed, len),
                "{fs}: {path}"
            );
        }
        for i in 0..20u32 {
            write_new(
                &k,
                &format!("/mnt/{fs}/new{i}"),
                &pattern(100 + i, 5000 * i as usize),
            );
        }
        k.rename(
            &c(&format!("/mnt/{fs}/a.txt")),
            &c(&format!("/mnt/{fs}/d/a2")),
        )
        .expect("rename");
        k.unlink(&c(&format!("/mnt/{fs}/d/b.bin"))).expect("unlink");
    }

    // sync(2) alone puts written files on the image while the kernel keeps running: a
    // copy taken now, after journal replay, holds them.
    k.mount_disk(d4, "ext4", "/mnt/ext4", false)
        .expect("mount ext4");
    for i in 0..30u32 {
        write_new(
            &k,
            &format!("/mnt/ext4/s{i}"),
            &pattern(200 + i, 3000 * i as usize + 1),
        );
    }
    k.syscall(sysno::SYNC, [0; 6]).expect("sync");
    let snapshot = dir.join("snapshot.img");
    std::fs::copy(&ext4, &snapshot).expect("copy image");
    let fix = Command::new("e2fsck")
        .arg("-fy")
        .arg(&snapshot)
        .output()
        .expect("e2fsck -fy");
    // 0: clean, 1: errors corrected (the journal replay counts as one).
    assert!(
        matches!(fix.status.code(), Some(0 | 1)),
        "snapshot not repairable: {}",
        String::from_utf8_lossy(&fix.stdout)
    );
    run(Command::new("e2fsck").arg("-fn").arg(&snapshot));
    for i in 0..30u32 {
        assert_eq!(
            debugfs_cat(&snapshot, &format!("/s{i}")),
            pattern(200 + i, 3000 * i as usize + 1),
            "s{i} after sync"
        );
    }

    // After halt every image is clean, with the data in place.
    k.halt().expect("halt unmounts everything");
    assert_eq!(k.getpid(), Err(Errno::ESHUTDOWN));
    for (fs, image) in [("ext2", &ext2), ("ext3", &ext3), ("ext4", &ext4)] {
        run(Command::new("e2fsck").arg("-fn").arg(image));
        if fs == "ext4" {
            continue;
        }
        assert_eq!(debugfs_cat(image, "/d/a2"), pattern(1, 10), "{fs}");
        assert_eq!(
            debugfs_cat(image, "/d/e/c.bin"),
            pattern(3, 1 << 20),
            "{fs}"
        );
        assert!(debugfs_cat(image, "/d/b.bin").is_empty(), "{fs}: unlinked");
        for i in 0..20u32 {
            assert_eq!(
                debugfs_cat(image, &format!("/new{i}")),
                pattern(100 + i, 5000 * i as usize),
                "{fs}: new{i}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
