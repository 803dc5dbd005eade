//! Layouts against linux-raw-sys and the running kernel, and the conversions.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::mem::offset_of;

use kbox_core::abi::dirent::{self, DirEntry};
use kbox_core::abi::oflags::{self, arm64, generic};
use kbox_core::abi::stat::{GenericStat, X86Stat};
use kbox_core::abi::statx::{self, Statx};
use linux_raw_sys::general as g;
use proptest::prelude::*;

#[cfg(target_arch = "x86_64")]
#[test]
fn x86_64_stat_layout_matches_linux_raw_sys() {
    assert_eq!(size_of::<g::stat>(), size_of::<X86Stat>());
    assert_eq!(offset_of!(g::stat, st_nlink), offset_of!(X86Stat, st_nlink));
    assert_eq!(offset_of!(g::stat, st_mode), offset_of!(X86Stat, st_mode));
    assert_eq!(offset_of!(g::stat, st_size), offset_of!(X86Stat, st_size));
    assert_eq!(
        offset_of!(g::stat, st_blksize),
        offset_of!(X86Stat, st_blksize)
    );
    assert_eq!(offset_of!(g::stat, st_mtime), offset_of!(X86Stat, st_mtime));
    assert_eq!(
        offset_of!(g::stat, st_ctime_nsec),
        offset_of!(X86Stat, st_ctime_nsec)
    );
}

#[cfg(target_arch = "aarch64")]
#[test]
fn aarch64_stat_is_the_generic_layout() {
    assert_eq!(size_of::<g::stat>(), size_of::<GenericStat>());
    assert_eq!(
        offset_of!(g::stat, st_nlink),
        offset_of!(GenericStat, st_nlink)
    );
    assert_eq!(
        offset_of!(g::stat, st_mode),
        offset_of!(GenericStat, st_mode)
    );
    assert_eq!(
        offset_of!(g::stat, st_size),
        offset_of!(GenericStat, st_size)
    );
    assert_eq!(
        offset_of!(g::stat, st_blksize),
        offset_of!(GenericStat, st_blksize)
    );
    assert_eq!(
        offset_of!(g::stat, st_mtime),
        offset_of!(GenericStat, st_mtime)
    );
    assert_eq!(
        offset_of!(g::stat, st_ctime_nsec),
        offset_of!(GenericStat, st_ctime_nsec)
    );
}

#[test]
fn statx_layout_matches_linux_raw_sys() {
    assert_eq!(size_of::<g::statx>(), size_of::<Statx>());
    assert_eq!(offset_of!(g::statx, stx_ino), offset_of!(Statx, stx_ino));
    assert_eq!(
        offset_of!(g::statx, stx_mtime),
        offset_of!(Statx, stx_mtime)
    );
    assert_eq!(
        offset_of!(g::statx, stx_dev_minor),
        offset_of!(Statx, stx_dev_minor)
    );
    assert_eq!(
        offset_of!(g::statx, stx_subvol),
        offset_of!(Statx, stx_subvol)
    );
}

#[test]
fn statx_key_reads_the_running_kernels_statx() {
    let path = CString::new("/proc/self/exe").expect("no NUL");
    let mut buf = [0u8; statx::STATX_SIZE];
    // SAFETY: path is NUL-terminated and buf is a writable struct statx-sized buffer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_statx,
            libc::AT_FDCWD,
            path.as_ptr(),
            0,
            0xfff,
            buf.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0, "statx: {}", std::io::Error::last_os_error());
    let key = statx::key_from_bytes(&buf);
    let meta = std::fs::metadata("/proc/self/exe").expect("stat");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(key.ino, meta.ino());
    assert_eq!(key.size, meta.size());
    assert_eq!(key.mtime_sec, meta.mtime());
    assert_eq!(i64::from(key.mtime_nsec), meta.mtime_nsec());
}

fn sample_generic() -> [u8; 128] {
    let s = GenericStat {
        st_dev: 0x0801,
        st_ino: 123_456_789_012,
        st_mode: 0o100_644,
        st_nlink: 3,
        st_uid: 1000,
        st_gid: 100,
        st_rdev: 0x0102,
        st_size: 1 << 40,
        st_blksize: 4096,
        st_blocks: 8,
        st_atime: 1_700_000_000,
        st_atime_nsec: 1,
        st_mtime: -5,
        st_mtime_nsec: 999_999_999,
        st_ctime: 1_700_000_002,
        st_ctime_nsec: 3,
        ..GenericStat::default()
    };
    let mut b = [0u8; 128];
    let mut put = |off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
    put(offset_of!(GenericStat, st_dev), &s.st_dev.to_ne_bytes());
    put(offset_of!(GenericStat, st_ino), &s.st_ino.to_ne_bytes());
    put(offset_of!(GenericStat, st_mode), &s.st_mode.to_ne_bytes());
    put(offset_of!(GenericStat, st_nlink), &s.st_nlink.to_ne_bytes());
    put(offset_of!(GenericStat, st_uid), &s.st_uid.to_ne_bytes());
    put(offset_of!(GenericStat, st_gid), &s.st_gid.to_ne_bytes());
    put(offset_of!(GenericStat, st_rdev), &s.st_rdev.to_ne_bytes());
    put(offset_of!(GenericStat, st_size), &s.st_size.to_ne_bytes());
    put(
        offset_of!(GenericStat, st_blksize),
        &s.st_blksize.to_ne_bytes(),
    );
    put(
        offset_of!(GenericStat, st_blocks),
        &s.st_blocks.to_ne_bytes(),
    );
    put(offset_of!(GenericStat, st_atime), &s.st_atime.to_ne_bytes());
    put(
        offset_of!(GenericStat, st_atime_nsec),
        &s.st_atime_nsec.to_ne_bytes(),
    );
    put(offset_of!(GenericStat, st_mtime), &s.st_mtime.to_ne_bytes());
    put(
        offset_of!(GenericStat, st_mtime_nsec),
        &s.st_mtime_nsec.to_ne_bytes(),
    );
    put(offset_of!(GenericStat, st_ctime), &s.st_ctime.to_ne_bytes());
    put(
        offset_of!(GenericStat, st_ctime_nsec),
        &s.st_ctime_nsec.to_ne_bytes(),
    );
    b
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

#[test]
fn generic_stat_converts_field_by_field_to_x86_64_bytes() {
    let x: X86Stat = GenericStat::from_bytes(&sample_generic()).to_x86_64();
    let x = x.to_bytes();
    assert_eq!(x.len(), 144);
    assert_eq!(u64_at(&x, 0), 0x0801);
    assert_eq!(u64_at(&x, 8), 123_456_789_012);
    assert_eq!(u64_at(&x, 16), 3, "st_nlink widened");
    assert_eq!(u32_at(&x, 24), 0o100_644, "st_mode moved");
    assert_eq!(u32_at(&x, 28), 1000);
    assert_eq!(u32_at(&x, 32), 100);
    assert_eq!(u64_at(&x, 40), 0x0102);
    assert_eq!(u64_at(&x, 48), 1 << 40);
    assert_eq!(u64_at(&x, 56), 4096, "st_blksize widened");
    assert_eq!(u64_at(&x, 64), 8);
    assert_eq!(u64_at(&x, 72), 1_700_000_000);
    assert_eq!(
        u64_at(&x, 88),
        u64::from_ne_bytes((-5i64).to_ne_bytes()),
        "pre-1970 mtime keeps its bits"
    );
    assert_eq!(u64_at(&x, 96), 999_999_999);
    assert_eq!(u64_at(&x, 112), 3);
    assert!(x[120..].iter().all(|&b| b == 0));
}

#[test]
fn aarch64_oflags_that_differ_are_swapped() {
    assert_eq!(
        oflags::aarch64_to_generic(arm64::O_DIRECTORY),
        generic::O_DIRECTORY
    );
    assert_eq!(
        oflags::aarch64_to_generic(arm64::O_NOFOLLOW),
        generic::O_NOFOLLOW
    );
    assert_eq!(
        oflags::aarch64_to_generic(arm64::O_DIRECT),
        generic::O_DIRECT
    );
    assert_eq!(
        oflags::aarch64_to_generic(arm64::O_LARGEFILE),
        generic::O_LARGEFILE
    );
    // O_TMPFILE is __O_TMPFILE | O_DIRECTORY on both.
    assert_eq!(
        oflags::aarch64_to_generic(0o20_000_000 | arm64::O_DIRECTORY),
        0o20_000_000 | generic::O_DIRECTORY
    );
    // O_RDWR | O_CREAT | O_CLOEXEC agree on both.
    assert_eq!(oflags::aarch64_to_generic(0o2_000_102), 0o2_000_102);
}

#[cfg(target_arch = "aarch64")]
#[test]
fn arm64_oflags_match_linux_raw_sys() {
    assert_eq!(g::O_DIRECTORY, arm64::O_DIRECTORY);
    assert_eq!(g::O_NOFOLLOW, arm64::O_NOFOLLOW);
    assert_eq!(g::O_DIRECT, arm64::O_DIRECT);
    assert_eq!(g::O_LARGEFILE, arm64::O_LARGEFILE);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn x86_64_oflags_are_the_generic_ones() {
    assert_eq!(g::O_DIRECTORY, generic::O_DIRECTORY);
    assert_eq!(g::O_NOFOLLOW, generic::O_NOFOLLOW);
    assert_eq!(g::O_DIRECT, generic::O_DIRECT);
    assert_eq!(g::O_LARGEFILE, generic::O_LARGEFILE);
}

proptest! {
    #[test]
    fn oflags_translation_round_trips(flags in any::<u32>()) {
        prop_assert_eq!(oflags::generic_to_aarch64(oflags::aarch64_to_generic(flags)), flags);
        prop_assert_eq!(oflags::aarch64_to_generic(oflags::generic_to_aarch64(flags)), flags);
        prop_assert_eq!(oflags::aarch64_to_generic(flags).count_ones(), flags.count_ones());
    }
}

/// A directory with a few names of different lengths, opened O_DIRECTORY.
fn sample_dir() -> (std::path::PathBuf, std::fs::File, BTreeSet<Vec<u8>>) {
    // Tests run in parallel threads of one process: each call needs its own directory.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("kbox-core-dirent-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).expect("mkdir");
    let mut names = BTreeSet::from([b".".to_vec(), b"..".to_vec()]);
    for n in ["a", "bb", "ccccccc", "name-exactly-16b", &"x".repeat(255)] {
        std::fs::write(dir.join(n), b"").expect("create");
        names.insert(n.as_bytes().to_vec());
    }
    let f = std::fs::File::open(&dir).expect("open dir");
    (dir, f, names)
}

fn getdents(nr: libc::c_long, f: &std::fs::File) -> Vec<u8> {
    use std::os::fd::AsRawFd;
    let mut buf = vec![0u8; 8192];
    // SAFETY: buf is writable for its whole length, which is what we pass.
    let n = unsafe { libc::syscall(nr, f.as_raw_fd(), buf.as_mut_ptr(), buf.len()) };
    buf.truncate(usize::try_from(n).expect("getdents failed"));
    buf
}

#[test]
fn dirent64_records_parse_a_real_getdents64_buffer() {
    let (dir, f, names) = sample_dir();
    let buf = getdents(libc::SYS_getdents64, &f);
    let got: BTreeSet<Vec<u8>> = dirent::dirent64_records(&buf)
        .map(|r| r.expect("well formed").name.to_vec())
        .collect();
    std::fs::remove_dir_all(dir).expect("cleanup");
    assert_eq!(got, names);
}

#[test]
fn dirent64_offset_steps_by_each_records_length() {
    let (dir, f, _) = sample_dir();
    let buf = getdents(libc::SYS_getdents64, &f);
    std::fs::remove_dir_all(dir).expect("cleanup");
    let mut records = dirent::dirent64_records(&buf);
    let mut starts = Vec::new();
    while let Some(r) = records.next() {
        r.expect("well formed");
        starts.push(records.offset());
    }
    assert!(starts.len() > 2, "{starts:?}");
    let mut at = 0;
    for end in starts {
        // Each record's d_reclen, read from the buffer itself, reaches the next start.
        at += usize::from(u16::from_ne_bytes([buf[at + 16], buf[at + 17]]));
        assert_eq!(at, end);
    }
    assert_eq!(at, buf.len());
}

#[cfg(target_arch = "x86_64")]
#[test]
fn legacy_records_equal_what_the_kernels_getdents_writes() {
    let (dir, f, _) = sample_dir();
    let modern = getdents(libc::SYS_getdents64, &f);
    // SAFETY: rewinding our own directory fd.
    unsafe { libc::lseek(std::os::fd::AsRawFd::as_raw_fd(&f), 0, libc::SEEK_SET) };
    let legacy = getdents(libc::SYS_getdents, &f);
    std::fs::remove_dir_all(dir).expect("cleanup");
    let mut ours = vec![0u8; 8192];
    let mut at = 0;
    for rec in dirent::dirent64_records(&modern) {
        at += dirent::write_legacy(&rec.expect("well formed"), &mut ours[at..]).expect("fits");
    }
    ours.truncate(at);
    // The kernel leaves the padding between the name's NUL and d_type unspecified; compare
    // record by record with the padding masked.
    assert_eq!(ours.len(), legacy.len());
    let mut at = 0;
    while at < ours.len() {
        let reclen = usize::from(u16::from_ne_bytes([ours[at + 16], ours[at + 17]]));
        let name_end = at + 18 + ours[at + 18..].iter().position(|&b| b == 0).expect("NUL");
        assert_eq!(ours[at..=name_end], legacy[at..=name_end], "record at {at}");
        assert_eq!(
            ours[at + reclen - 1],
            legacy[at + reclen - 1],
            "d_type of record at {at}"
        );
        at += reclen;
    }
}

#[test]
fn truncated_or_overrunning_records_are_refused() {
    let e = DirEntry {
        ino: 7,
        off: 1,
        d_type: 4,
        name: b"abc",
    };
    let mut buf = [0u8; 32];
    // A valid dirent64 record by hand: head, name, NUL, padded to 24.
    buf[..8].copy_from_slice(&7u64.to_ne_bytes());
    buf[16..18].copy_from_slice(&24u16.to_ne_bytes());
    buf[18] = 4;
    buf[19..22].copy_from_slice(b"abc");
    assert_eq!(
        dirent::dirent64_records(&buf[..24]).next(),
        Some(Ok(DirEntry { off: 0, ..e }))
    );
    assert!(matches!(
        dirent::dirent64_records(&buf[..20]).next(),
        Some(Err(_))
    ));
    buf[16..18].copy_from_slice(&40u16.to_ne_bytes());
    assert!(matches!(
        dirent::dirent64_records(&buf).next(),
        Some(Err(_))
    ));
    assert_eq!(dirent::write_legacy(&e, &mut [0u8; 16]), None);
    assert_eq!(dirent::legacy_reclen(3), 24);
}
