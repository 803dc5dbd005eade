//! `struct stat`: the asm-generic layout (128 bytes), which the kernel library writes and
//! aarch64 guests read, and the x86_64 layout (144 bytes) x86_64 guests read.

use core::mem::{offset_of, size_of};

use super::{read_field, write_field};

/// asm-generic `struct stat` (include/uapi/asm-generic/stat.h, 64-bit).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenericStat {
    pub st_dev: u64,
    pub st_ino: u64,
    pub st_mode: u32,
    pub st_nlink: u32,
    pub st_uid: u32,
    pub st_gid: u32,
    pub st_rdev: u64,
    pub pad1: u64,
    pub st_size: i64,
    pub st_blksize: i32,
    pub pad2: i32,
    pub st_blocks: i64,
    pub st_atime: i64,
    pub st_atime_nsec: u64,
    pub st_mtime: i64,
    pub st_mtime_nsec: u64,
    pub st_ctime: i64,
    pub st_ctime_nsec: u64,
    pub unused4: u32,
    pub unused5: u32,
}

/// x86_64 `struct stat` (arch/x86/include/uapi/asm/stat.h).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct X86Stat {
    pub st_dev: u64,
    pub st_ino: u64,
    pub st_nlink: u64,
    pub st_mode: u32,
    pub st_uid: u32,
    pub st_gid: u32,
    pub pad0: u32,
    pub st_rdev: u64,
    pub st_size: i64,
    pub st_blksize: i64,
    pub st_blocks: i64,
    pub st_atime: u64,
    pub st_atime_nsec: u64,
    pub st_mtime: u64,
    pub st_mtime_nsec: u64,
    pub st_ctime: u64,
    pub st_ctime_nsec: u64,
    pub unused: [i64; 3],
}

static_assertions::const_assert_eq!(size_of::<GenericStat>(), 128);
static_assertions::const_assert_eq!(offset_of!(GenericStat, st_mode), 16);
static_assertions::const_assert_eq!(offset_of!(GenericStat, st_rdev), 32);
static_assertions::const_assert_eq!(offset_of!(GenericStat, st_size), 48);
static_assertions::const_assert_eq!(offset_of!(GenericStat, st_blksize), 56);
static_assertions::const_assert_eq!(offset_of!(GenericStat, st_blocks), 64);
static_assertions::const_assert_eq!(offset_of!(GenericStat, st_mtime), 88);
static_assertions::const_assert_eq!(offset_of!(GenericStat, st_ctime_nsec), 112);
static_assertions::const_assert_eq!(size_of::<X86Stat>(), 144);
static_assertions::const_assert_eq!(offset_of!(X86Stat, st_nlink), 16);
static_assertions::const_assert_eq!(offset_of!(X86Stat, st_mode), 24);
static_assertions::const_assert_eq!(offset_of!(X86Stat, st_rdev), 40);
static_assertions::const_assert_eq!(offset_of!(X86Stat, st_size), 48);
static_assertions::const_assert_eq!(offset_of!(X86Stat, st_blocks), 64);
static_assertions::const_assert_eq!(offset_of!(X86Stat, st_mtime), 88);
static_assertions::const_assert_eq!(offset_of!(X86Stat, st_ctime_nsec), 112);

pub const GENERIC_STAT_SIZE: usize = size_of::<GenericStat>();
pub const X86_STAT_SIZE: usize = size_of::<X86Stat>();

/// Reinterprets times the kernel stores as `long` into x86_64's `unsigned long` fields:
/// the bits are kept, as the kernel's own cp_new_stat does for pre-1970 times.
fn time_bits(t: i64) -> u64 {
    u64::from_ne_bytes(t.to_ne_bytes())
}

impl GenericStat {
    /// Decodes the bytes the kernel library wrote.
    pub fn from_bytes(b: &[u8; GENERIC_STAT_SIZE]) -> Self {
        macro_rules! f {
            ($field:ident, $ty:ty) => {
                read_field!(b, offset_of!(GenericStat, $field), $ty)
            };
        }
        Self {
            st_dev: f!(st_dev, u64),
            st_ino: f!(st_ino, u64),
            st_mode: f!(st_mode, u32),
            st_nlink: f!(st_nlink, u32),
            st_uid: f!(st_uid, u32),
            st_gid: f!(st_gid, u32),
            st_rdev: f!(st_rdev, u64),
            pad1: 0,
            st_size: f!(st_size, i64),
            st_blksize: f!(st_blksize, i32),
            pad2: 0,
            st_blocks: f!(st_blocks, i64),
            st_atime: f!(st_atime, i64),
            st_atime_nsec: f!(st_atime_nsec, u64),
            st_mtime: f!(st_mtime, i64),
            st_mtime_nsec: f!(st_mtime_nsec, u64),
            st_ctime: f!(st_ctime, i64),
            st_ctime_nsec: f!(st_ctime_nsec, u64),
            unused4: 0,
            unused5: 0,
        }
    }

    /// The same file as an x86_64 guest expects it.
    pub fn to_x86_64(&self) -> X86Stat {
        X86Stat {
            st_dev: self.st_dev,
            st_ino: self.st_ino,
            st_nlink: u64::from(self.st_nlink),
            st_mode: self.st_mode,
            st_uid: self.st_uid,
            st_gid: self.st_gid,
            pad0: 0,
            st_rdev: self.st_rdev,
            st_size: self.st_size,
            st_blksize: i64::from(self.st_blksize),
            st_blocks: self.st_blocks,
            st_atime: time_bits(self.st_atime),
            st_atime_nsec: self.st_atime_nsec,
            st_mtime: time_bits(self.st_mtime),
            st_mtime_nsec: self.st_mtime_nsec,
            st_ctime: time_bits(self.st_ctime),
            st_ctime_nsec: self.st_ctime_nsec,
            unused: [0; 3],
        }
    }
}

impl X86Stat {
    /// The bytes to copy into an x86_64 guest's `struct stat`.
    pub fn to_bytes(&self) -> [u8; X86_STAT_SIZE] {
        let mut b = [0u8; X86_STAT_SIZE];
        macro_rules! f {
            ($field:ident) => {
                write_field!(b, offset_of!(X86Stat, $field), self.$field)
            };
        }
        f!(st_dev);
        f!(st_ino);
        f!(st_nlink);
        f!(st_mode);
        f!(st_uid);
        f!(st_gid);
        f!(st_rdev);
        f!(st_size);
        f!(st_blksize);
        f!(st_blocks);
        f!(st_atime);
        f!(st_atime_nsec);
        f!(st_mtime);
        f!(st_mtime_nsec);
        f!(st_ctime);
        f!(st_ctime_nsec);
        b
    }
}
