//! Host side and safe API of the in-process Linux kernel library (`liblkl.a`, built
//! from our arch port in `lkl/kernel`). See docs/kernel-library.md.
pub mod block;
mod errno;
mod ffi;
mod host;
mod kernel;
pub mod net;
pub mod sync;
pub mod sys;
mod virtio_mmio;

pub use block::{DiskError, DiskId, MountError, Overlaid, RootMode, add_disk};
pub use errno::Errno;
pub use kernel::{BootConfig, BootError, Kernel, PID_MAX, PidWish, Task, TaskKind, calls_made};
pub use net::{Net, NetConfig, NetCounters, NetError, add_net};

/// Syscall numbers of the kernel library (the asm-generic table).
pub mod sysno {
    include!(concat!(env!("OUT_DIR"), "/sysno.rs"));
}
