//! The error type of every fallible operation in core: a Linux errno value.
//!
//! Core's decisions end up as syscall results for a guest, so the error *is* the errno the
//! guest will see; carrying anything richer would only be flattened again by the dispatcher.

use core::fmt;
use linux_raw_sys::errno as e;

/// A positive Linux errno value (1..=4095). The numbers are the asm-generic ones, which both
/// x86_64 and aarch64 use.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(u16);

impl Errno {
    pub const EPERM: Self = Self::from_const(e::EPERM);
    pub const ENOENT: Self = Self::from_const(e::ENOENT);
    pub const EBADF: Self = Self::from_const(e::EBADF);
    pub const EINVAL: Self = Self::from_const(e::EINVAL);
    pub const EMFILE: Self = Self::from_const(e::EMFILE);
    pub const EFBIG: Self = Self::from_const(e::EFBIG);
    pub const ENOSYS: Self = Self::from_const(e::ENOSYS);
    pub const ENAMETOOLONG: Self = Self::from_const(e::ENAMETOOLONG);
    pub const ENOTDIR: Self = Self::from_const(e::ENOTDIR);

    /// Largest value the kernel treats as an error return (`-4095..=-1`).
    pub const MAX: u16 = 4095;

    const fn from_const(v: u32) -> Self {
        assert!(v >= 1 && v <= Self::MAX as u32);
        // The assert above bounds v to 12 bits, so the narrowing cannot lose bits.
        #[allow(clippy::cast_possible_truncation)] // reason: bounded by the assert above
        Self(v as u16)
    }

    /// Wraps a raw errno, refusing 0 and values the kernel would not return as an error.
    pub const fn new(v: u16) -> Option<Self> {
        if v >= 1 && v <= Self::MAX {
            Some(Self(v))
        } else {
            None
        }
    }

    /// The positive errno number.
    pub const fn get(self) -> u16 {
        self.0
    }

    /// The value a syscall returns for this error (`-errno`).
    pub const fn as_syscall_ret(self) -> i64 {
        -(self.0 as i64)
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Errno({})", self.0)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "errno {}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_when_zero_or_above_4095_refuses() {
        assert_eq!(Errno::new(0), None);
        assert_eq!(Errno::new(4096), None);
        assert_eq!(Errno::new(4095).map(Errno::get), Some(4095));
    }

    #[test]
    fn as_syscall_ret_is_negative_errno() {
        assert_eq!(Errno::EBADF.as_syscall_ret(), -9);
        assert_eq!(Errno::ENAMETOOLONG.as_syscall_ret(), -36);
    }
}
