//! The seccomp user-notification tier's transport: installing the filter in the guest,
//! receiving and answering notifications, reading and writing guest memory, and spawning the
//! guest child with its listener handed to the supervisor. Nothing here decides what a
//! syscall means; the dispatcher (tier-neutral, elsewhere) does that.

pub mod child;
pub mod filter;
pub mod guest_mem;
pub mod notify;
mod sys;

pub use sys::ask_short_slice;
pub use sys::ignore_terminal_stops as sys_ignore_terminal_stops;

// Native x86_64 only: the probe guest is compiled by the host's x86_64 musl-gcc, and under
// qemu-user (how aarch64 tests run here) seccomp(2) is ENOSYS.
#[cfg(all(test, target_arch = "x86_64"))]
mod tests;
