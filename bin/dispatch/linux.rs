//! The Linux ABI values the engine reads in guest arguments and passes to the kernel
//! library (asm-generic encodings, which x86_64 shares for these), in one place.

/// `AT_FDCWD` (-100) as a register value.
pub const AT_FDCWD: u64 = 0u64.wrapping_sub(100);
pub const AT_SYMLINK_NOFOLLOW: u64 = 0x100;
pub const AT_EMPTY_PATH: u64 = 0x1000;
pub const AT_REMOVEDIR: u64 = 0x200;
pub const RENAME_EXCHANGE: u64 = 2;

pub const O_ACCMODE: u64 = 0o3;
pub const O_WRONLY: u64 = 0o1;
pub const O_RDWR: u64 = 0o2;
pub const O_TRUNC: u64 = 0o1000;
pub const O_APPEND: u64 = 0o2000;
pub const O_NONBLOCK: u64 = 0o4000;
pub const O_CLOEXEC: u64 = 0o2000000;
pub const O_PATH: u64 = 0o10000000;

pub const S_IFMT: u32 = 0o170000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFDIR: u32 = 0o40000;
pub const S_IFCHR: u32 = 0o20000;
pub const S_IFIFO: u32 = 0o10000;

pub const F_DUPFD: u64 = 0;
pub const F_DUPFD_CLOEXEC: u64 = 1030;
pub const CLOSE_RANGE_CLOEXEC: u64 = 4;
pub const X_OK: u64 = 1;
pub const PR_SET_NAME: u64 = 15;

pub const AF_UNIX: u64 = 1;
pub const AF_INET: u64 = 2;
pub const AF_INET6: u64 = 10;
pub const SOCK_STREAM: u64 = 1;
pub const SOCK_DGRAM: u64 = 2;
pub const SOCK_SEQPACKET: u64 = 5;
pub const SOCK_TYPE_MASK: u64 = 0xf;
pub const SOCK_NONBLOCK: u64 = O_NONBLOCK;
pub const SOCK_CLOEXEC: u64 = O_CLOEXEC;
pub const SOL_SOCKET: u64 = 1;
pub const SO_TYPE: u64 = 3;
pub const SO_ACCEPTCONN: u64 = 30;
pub const SHUT_WR: u64 = 1;
pub const SHUT_RDWR: u64 = 2;

/// `struct statx` is the same on every arch.
pub const STATX_SIZE: usize = 256;
