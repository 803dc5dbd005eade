//! Structures and flags whose layout differs between what the guest expects and what the
//! kernel library (asm-generic) produces, with conversions written field by field.
//! Conversions go through byte arrays so core stays free of unsafe casts.

pub mod dirent;
pub mod oflags;
pub mod stat;
pub mod statx;

/// Reads a native-endian integer field at `off`; the callers' offsets are checked against
/// the struct layouts by static assertions.
macro_rules! read_field {
    ($bytes:expr, $off:expr, $ty:ty) => {{
        const N: usize = core::mem::size_of::<$ty>();
        let mut raw = [0u8; N];
        raw.copy_from_slice(&$bytes[$off..$off + N]);
        <$ty>::from_ne_bytes(raw)
    }};
}

macro_rules! write_field {
    ($bytes:expr, $off:expr, $value:expr) => {{
        let raw = $value.to_ne_bytes();
        $bytes[$off..$off + raw.len()].copy_from_slice(&raw);
    }};
}

pub(crate) use {read_field, write_field};
