//! Per-architecture machinery for the trap and rewrite tiers: instruction decoders, the
//! syscall-site scanner and classifier, patch planning and the trampolines patched code
//! lands in.
//!
//! Decoders and planners for both architectures are pure byte analysis and build on every
//! host, so both are tested on x86-64; only trampolines and code that runs patched bytes
//! are built for their own architecture.
#![no_std]

extern crate alloc;

pub mod cycles;
pub mod elf;

#[path = "../x86_64/mod.rs"]
pub mod x86_64;

#[path = "../aarch64/mod.rs"]
pub mod aarch64;

/// The trap tier's machinery for the architecture kbox is built for (one interface).
#[cfg(target_arch = "aarch64")]
pub use aarch64::trap;
#[cfg(target_arch = "x86_64")]
pub use x86_64::trap;

pub mod entry;
pub mod initstack;
pub mod load;
pub mod site;
