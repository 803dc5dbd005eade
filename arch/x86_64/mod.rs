//! x86-64: instruction decoding, syscall-site planning and trampolines.

pub mod decode;
pub mod plan;
pub mod scan;
#[cfg(target_arch = "x86_64")]
pub mod start;
pub mod sweep;
#[cfg(target_arch = "x86_64")]
pub mod tramp;
#[cfg(target_arch = "x86_64")]
pub mod trap;
