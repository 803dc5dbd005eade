//! kbox's core: plain data structures and decisions, no I/O, no heap, no unsafe.
#![no_std]
#![deny(unsafe_code)]

#[cfg(test)]
extern crate std;

pub mod abi;
pub mod bpf;
mod errno;
pub mod fd;
pub mod path;
pub mod shadow;
pub mod sysno;

pub use errno::Errno;
