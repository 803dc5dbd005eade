//! The C API with LKL's names, used the way a C program uses it: no Rust wrappers.
mod common;

use common::{assert_fsck_clean, fresh_dir, mke2fs};
use core::ffi::{c_char, c_int, c_long, c_uint, c_void};
use kbox_lkl::block::{LklDevBlkOps, LklDisk};
use std::os::fd::AsRawFd;

unsafe extern "C" {
    static lkl_host_ops: c_void;
    static lkl_dev_blk_ops: LklDevBlkOps;
    fn lkl_init(ops: *const c_void) -> c_int;
    fn lkl_start_kernel(fmt: *const c_char, ...) -> c_int;
    fn lkl_syscall(no: c_long, params: *mut c_long) -> c_long;
    fn lkl_disk_add(disk: *const LklDisk) -> c_int;
    fn lkl_mount_dev(
        id: c_uint,
        part: c_uint,
        fstype: *const c_char,
        flags: c_int,
        opts: *const c_char,
        out: *mut c_char,
        len: c_uint,
    ) -> c_long;
    fn lkl_sys_halt() -> c_long;
    fn lkl_strerror(err: c_int) -> *const c_char;
}

#[test]
fn a_c_program_mounts_an_image_and_reads_a_file() {
    let dir = fresh_dir("capi");
    std::fs::create_dir_all(dir.join("tree")).expect("tree");
    std::fs::write(dir.join("tree/greeting"), "hello from ext4").expect("file");
    let image = dir.join("c.ext4");
    mke2fs("ext4", &dir.join("tree"), &image, "8M");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&image)
        .expect("open image");
    let disk = LklDisk {
        fd: file.as_raw_fd(),
        read_only: 0,
    };

    // SAFETY: the C API, called with valid arguments in its documented order.
    unsafe {
        let mut bytes = 0u64;
        assert_eq!((lkl_dev_blk_ops.get_capacity)(&disk, &mut bytes), 0);
        assert_eq!(bytes, 8 << 20);
        assert_eq!(lkl_disk_add(&disk), 0, "first disk gets id 0");
        assert_eq!(lkl_init(&lkl_host_ops), 0);
        assert_eq!(lkl_start_kernel(c"mem=64M quiet".as_ptr()), 0);
        let mut path = [0 as c_char; 64];
        assert_eq!(
            lkl_mount_dev(
                0,
                0,
                c"ext4".as_ptr(),
                0,
                core::ptr::null(),
                path.as_mut_ptr(),
                64
            ),
            0
        );
        let mount = std::ffi::CStr::from_ptr(path.as_ptr())
            .to_str()
            .expect("utf8")
            .to_owned();
        assert_eq!(mount, "/mnt/vda");

        let file_path = std::ffi::CString::new(format!("{mount}/greeting")).expect("path");
        let mut params = [-100, file_path.as_ptr() as c_long, 0, 0, 0, 0];
        let fd = lkl_syscall(kbox_lkl::sysno::OPENAT.into(), params.as_mut_ptr());
        assert!(fd >= 0, "openat: {fd}");
        let mut buf = [0u8; 64];
        let mut params = [fd, buf.as_mut_ptr() as c_long, 64, 0, 0, 0];
        let n = lkl_syscall(kbox_lkl::sysno::READ.into(), params.as_mut_ptr());
        assert_eq!(
            &buf[..usize::try_from(n).expect("read")],
            b"hello from ext4"
        );
        let mut params = [fd, 0, 0, 0, 0, 0];
        assert_eq!(
            lkl_syscall(kbox_lkl::sysno::CLOSE.into(), params.as_mut_ptr()),
            0
        );
        let text = std::ffi::CStr::from_ptr(lkl_strerror(2))
            .to_str()
            .expect("utf8");
        assert_eq!(text, "No such file or directory");
        // Unmount through the C API too, so the image is clean afterwards.
        let target = std::ffi::CString::new(mount).expect("mount");
        let mut params = [target.as_ptr() as c_long, 0, 0, 0, 0, 0];
        assert_eq!(
            lkl_syscall(kbox_lkl::sysno::UMOUNT2.into(), params.as_mut_ptr()),
            0
        );
        assert_eq!(lkl_sys_halt(), 0);
    }
    assert_fsck_clean(&image);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
