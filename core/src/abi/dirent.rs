//! `struct linux_dirent64` records (getdents64, what the kernel library writes) and the
//! legacy `struct linux_dirent` records x86_64's getdents returns.

use core::mem::offset_of;

use super::{read_field, write_field};

/// The fixed head of `struct linux_dirent64`; `d_name` follows at byte 19.
#[repr(C)]
pub struct Dirent64Head {
    pub d_ino: u64,
    pub d_off: i64,
    pub d_reclen: u16,
    pub d_type: u8,
}

static_assertions::const_assert_eq!(offset_of!(Dirent64Head, d_reclen), 16);
static_assertions::const_assert_eq!(offset_of!(Dirent64Head, d_type), 18);

/// Where `d_name` starts in a linux_dirent64 record.
pub const DIRENT64_NAME: usize = 19;
/// Where `d_name` starts in a legacy linux_dirent record (after d_ino, d_off, d_reclen).
pub const LEGACY_NAME: usize = 18;

/// One decoded record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirEntry<'a> {
    pub ino: u64,
    pub off: i64,
    pub d_type: u8,
    pub name: &'a [u8],
}

/// A malformed record in a getdents64 buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadRecord {
    pub at: usize,
}

/// Iterates the records of a getdents64 buffer, refusing records that overrun it.
pub fn dirent64_records(buf: &[u8]) -> Dirent64Records<'_> {
    Dirent64Records { buf, at: 0 }
}

pub struct Dirent64Records<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Dirent64Records<'_> {
    /// Where the next record starts (after the last, the end of the records read).
    pub fn offset(&self) -> usize {
        self.at
    }
}

impl<'a> Iterator for Dirent64Records<'a> {
    type Item = Result<DirEntry<'a>, BadRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        let at = self.at;
        let rest = self.buf.get(at..)?;
        if rest.is_empty() {
            return None;
        }
        let bad = || Some(Err(BadRecord { at }));
        if rest.len() < DIRENT64_NAME + 1 {
            self.at = self.buf.len();
            return bad();
        }
        let reclen = usize::from(read_field!(rest, 16, u16));
        let Some(record) = rest.get(..reclen).filter(|r| r.len() > DIRENT64_NAME) else {
            self.at = self.buf.len();
            return bad();
        };
        let name_area = &record[DIRENT64_NAME..];
        let Some(name_len) = name_area.iter().position(|&c| c == 0) else {
            self.at = self.buf.len();
            return bad();
        };
        self.at += reclen;
        Some(Ok(DirEntry {
            ino: read_field!(record, 0, u64),
            off: read_field!(record, 8, i64),
            d_type: record[18],
            name: &name_area[..name_len],
        }))
    }
}

/// Length of the legacy record for a name of `name_len` bytes: head, name, NUL, d_type,
/// rounded up to 8 as the kernel does.
pub const fn legacy_reclen(name_len: usize) -> usize {
    (LEGACY_NAME + name_len + 2).next_multiple_of(8)
}

/// Writes `e` as a legacy `struct linux_dirent` at the start of `out`; returns its length,
/// or None when it does not fit (getdents then stops, or fails EINVAL if nothing fit).
pub fn write_legacy(e: &DirEntry<'_>, out: &mut [u8]) -> Option<usize> {
    let len = legacy_reclen(e.name.len());
    let rec = out.get_mut(..len)?;
    rec.fill(0);
    write_field!(rec, 0, e.ino);
    write_field!(rec, 8, e.off);
    write_field!(rec, 16, u16::try_from(len).ok()?);
    rec[LEGACY_NAME..LEGACY_NAME + e.name.len()].copy_from_slice(e.name);
    rec[len - 1] = e.d_type;
    Some(len)
}
