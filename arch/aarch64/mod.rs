//! AArch64: instruction matching, syscall-site planning, cancel-wrapper promotion and
//! trampolines.

pub mod insn;
pub mod scan;
