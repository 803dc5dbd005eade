//! The interception tiers that run beside the seccomp tier (bin/seccomp) over the same
//! engine.

pub mod auto;
pub mod rewrite;
pub mod trap;
