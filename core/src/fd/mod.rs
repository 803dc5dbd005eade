//! The guest's virtual FD table: which guest FD numbers are open, what backs each one, and
//! the reverse indexes the close path needs in O(1). See docs/core.md for the policies.

mod bitmap;
mod table;

pub use table::{Closed, FdTable, HostHolders};

use crate::Errno;

/// Guest FD numbers are `0..FD_LIMIT`, the RLIMIT_NOFILE kbox gives the guest. Host and
/// kernel-library FD numbers tracked by the table live in the same range.
pub const FD_LIMIT: usize = 65536;

// Every FD number in the table fits a u16, which keeps an entry at 10 bytes.
static_assertions::const_assert_eq!(FD_LIMIT - 1, u16::MAX as usize);

macro_rules! fd_newtype {
    ($(#[$doc:meta])* $name:ident, $range_err:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(u16);

        impl $name {
            /// Converts a raw FD number, refusing negative numbers and numbers at or past
            /// [`FD_LIMIT`].
            pub fn from_raw(raw: i32) -> Result<Self, Errno> {
                u16::try_from(raw).map(Self).map_err(|_| $range_err)
            }

            /// The FD at a table index; every `u16` is in range.
            pub const fn from_index(index: u16) -> Self {
                Self(index)
            }

            pub const fn as_raw(self) -> i32 {
                self.0 as i32
            }

            pub const fn index(self) -> usize {
                self.0 as usize
            }
        }
    };
}

fd_newtype!(
    /// An FD number as the guest sees it. Out-of-range numbers are EBADF, as for dup2.
    GuestFd,
    Errno::EBADF
);
fd_newtype!(
    /// An FD of the kernel library (in the guest process's own kernel task). An out-of-range
    /// number means the kernel library ran past the limit kbox set for it: EMFILE.
    KernelFd,
    Errno::EMFILE
);
fd_newtype!(
    /// An FD of the host kernel: a shadow memfd or a passed-through host object.
    HostFd,
    Errno::EMFILE
);

impl GuestFd {
    /// The lower bound of `fcntl(F_DUPFD/F_DUPFD_CLOEXEC, arg)`: a negative or too large
    /// `arg` is EINVAL there, unlike the EBADF of an out-of-range dup2 target.
    pub fn dupfd_min(arg: i32) -> Result<Self, Errno> {
        u16::try_from(arg).map(Self).map_err(|_| Errno::EINVAL)
    }
}

/// What serves a guest FD; the dispatcher picks the handler family from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FdKind {
    /// Served only by the kernel library (directories, sockets, writable files without a
    /// shadow in trap mode).
    Kernel = 1,
    /// A read-only file with a sealed host memfd copy the host can mmap.
    Shadow = 2,
    /// A writable file with a host memfd copy that is written back to the kernel library.
    WritebackShadow = 3,
    /// A host object passed through untouched (host pipes, eventfds, the terminal).
    Host = 4,
}

impl FdKind {
    const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Kernel),
            2 => Some(Self::Shadow),
            3 => Some(Self::WritebackShadow),
            4 => Some(Self::Host),
            _ => None,
        }
    }
}

/// One open guest FD.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FdEntry {
    pub kind: FdKind,
    /// The kernel library's FD for this open file, if the kernel library holds one.
    pub kernel: Option<KernelFd>,
    /// The host FD backing it (shadow memfd or passthrough), if any.
    pub host: Option<HostFd>,
    pub cloexec: bool,
}
