//! AArch64: instruction matching, syscall-site planning, cancel-wrapper promotion and
//! trampolines.

pub mod cancel;
pub mod insn;
pub mod plan;
pub mod scan;
#[cfg(target_arch = "aarch64")]
pub mod start;
#[cfg(target_arch = "aarch64")]
pub mod tramp;
#[cfg(target_arch = "aarch64")]
pub mod trap;
