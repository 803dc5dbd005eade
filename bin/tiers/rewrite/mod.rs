//! The binary-rewriting tier: the trap tier, with the guest's syscall sites patched as its
//! code is mapped. Each patched site jumps to a trampoline that calls kbox's entry stub on
//! the guest's own stack; the call is served there, as the trap tier serves a
//! SIGSYS, without a signal. Sites the planner refuses, code kbox did not see mapped (JIT
//! code, the vDSO) and the rt_sigreturn restorers stay on the trap path: the gate filter
//! still turns every syscall instruction outside kbox's code into SIGSYS.
//!
//! Patching happens in two places: while kbox's loader maps a program and its interpreter
//! (still writable, before their protections are set), and after the guest maps a file
//! private and executable itself (the dynamic linker loading a library).

mod patch;
#[cfg_attr(target_arch = "x86_64", path = "sites_x86_64.rs")]
#[cfg_attr(target_arch = "aarch64", path = "sites_aarch64.rs")]
mod sites;

use std::sync::{Arc, Mutex};

use crate::dispatch::Engine;
use crate::exit::Exit;
use crate::tiers::trap::{self, CodeTier, Launch, TrapError};

/// Runs the guest until it exits; returns how it ended.
pub fn run(engine: Arc<Mutex<Engine>>, mut launch: Launch) -> Result<Exit, TrapError> {
    patch::set_verbose(launch.verbose);
    trap::accept_trampolines();
    launch.code = Some(CodeTier {
        loading: patch::loading,
        mapped: patch::mapped,
        replaced: patch::forget_sites,
    });
    let verbose = launch.verbose;
    let exit = trap::run(engine, launch);
    if verbose {
        eprintln!("kbox: rewrite: {}", patch::totals());
    }
    exit
}
