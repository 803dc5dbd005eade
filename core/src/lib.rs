//! kbox's core: plain data structures and decisions, no I/O, no heap, no unsafe.
#![no_std]
#![deny(unsafe_code)]
