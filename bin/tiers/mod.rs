//! The interception tiers that run beside the seccomp tier (bin/seccomp) over the same
//! engine.

#[cfg(target_arch = "x86_64")]
pub mod auto;
pub mod rewrite;
pub mod trap;
