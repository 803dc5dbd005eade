//! `struct statx`: one layout on every arch, so the kernel library's bytes go to the guest
//! unchanged; the struct is here for the dispatcher to read fields (e.g. for the shadow
//! cache key) with offsets checked against the 6.12 uapi header.

use core::mem::{offset_of, size_of};

use super::read_field;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatxTimestamp {
    pub tv_sec: i64,
    pub tv_nsec: u32,
    pub reserved: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Statx {
    pub stx_mask: u32,
    pub stx_blksize: u32,
    pub stx_attributes: u64,
    pub stx_nlink: u32,
    pub stx_uid: u32,
    pub stx_gid: u32,
    pub stx_mode: u16,
    pub spare0: u16,
    pub stx_ino: u64,
    pub stx_size: u64,
    pub stx_blocks: u64,
    pub stx_attributes_mask: u64,
    pub stx_atime: StatxTimestamp,
    pub stx_btime: StatxTimestamp,
    pub stx_ctime: StatxTimestamp,
    pub stx_mtime: StatxTimestamp,
    pub stx_rdev_major: u32,
    pub stx_rdev_minor: u32,
    pub stx_dev_major: u32,
    pub stx_dev_minor: u32,
    pub stx_mnt_id: u64,
    pub stx_dio_mem_align: u32,
    pub stx_dio_offset_align: u32,
    pub stx_subvol: u64,
    pub stx_atomic_write_unit_min: u32,
    pub stx_atomic_write_unit_max: u32,
    pub stx_atomic_write_segments_max: u32,
    pub spare1: u32,
    pub spare3: [u64; 9],
}

static_assertions::const_assert_eq!(size_of::<StatxTimestamp>(), 16);
static_assertions::const_assert_eq!(size_of::<Statx>(), 256);
static_assertions::const_assert_eq!(offset_of!(Statx, stx_mode), 28);
static_assertions::const_assert_eq!(offset_of!(Statx, stx_ino), 32);
static_assertions::const_assert_eq!(offset_of!(Statx, stx_size), 40);
static_assertions::const_assert_eq!(offset_of!(Statx, stx_atime), 64);
static_assertions::const_assert_eq!(offset_of!(Statx, stx_mtime), 112);
static_assertions::const_assert_eq!(offset_of!(Statx, stx_dev_major), 136);
static_assertions::const_assert_eq!(offset_of!(Statx, stx_mnt_id), 144);
static_assertions::const_assert_eq!(offset_of!(Statx, stx_subvol), 160);
static_assertions::const_assert_eq!(offset_of!(Statx, spare3), 184);

pub const STATX_SIZE: usize = size_of::<Statx>();

/// The identity and version fields the shadow cache keys on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatxKey {
    pub dev_major: u32,
    pub dev_minor: u32,
    pub ino: u64,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
}

/// Reads the cache key fields from the bytes of a `struct statx`.
pub fn key_from_bytes(b: &[u8; STATX_SIZE]) -> StatxKey {
    let mtime = offset_of!(Statx, stx_mtime);
    StatxKey {
        dev_major: read_field!(b, offset_of!(Statx, stx_dev_major), u32),
        dev_minor: read_field!(b, offset_of!(Statx, stx_dev_minor), u32),
        ino: read_field!(b, offset_of!(Statx, stx_ino), u64),
        size: read_field!(b, offset_of!(Statx, stx_size), u64),
        mtime_sec: read_field!(b, mtime + offset_of!(StatxTimestamp, tv_sec), i64),
        mtime_nsec: read_field!(b, mtime + offset_of!(StatxTimestamp, tv_nsec), u32),
    }
}
