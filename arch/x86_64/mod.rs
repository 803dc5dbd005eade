//! x86-64: instruction decoding, syscall-site planning and trampolines.

pub mod decode;
pub mod scan;
pub mod sweep;
