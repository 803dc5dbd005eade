//! Links the kernel library (`liblkl.a`) and turns its generated syscall-number header
//! into Rust constants.
//!
//! Where the library is: `KBOX_LKL_DIR` (set by `make`), else `LKL_DIR` (a user's own
//! build), else `build/lkl-<arch>` in the workspace.
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=KBOX_LKL_DIR");
    println!("cargo:rerun-if-env-changed=LKL_DIR");
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets CARGO_CFG_TARGET_ARCH");
    let dir = env::var_os("KBOX_LKL_DIR")
        .or_else(|| env::var_os("LKL_DIR"))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            manifest
                .join("..")
                .join("build")
                .join(format!("lkl-{arch}"))
        });

    let lib = dir.join("liblkl.a");
    let header = dir.join("unistd_64.h");
    if !lib.exists() || !header.exists() {
        panic!(
            "kernel library not found in {}: run `make lkl` first (or set KBOX_LKL_DIR)",
            dir.display()
        );
    }
    println!("cargo:rerun-if-changed={}", lib.display());
    println!("cargo:rerun-if-changed={}", header.display());
    println!("cargo:rustc-link-search=native={}", dir.display());
    println!("cargo:rustc-link-lib=static=lkl");

    let text = fs::read_to_string(&header).expect("readable unistd_64.h");
    let mut out = String::from("// Generated from the kernel library's unistd_64.h.\n");
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("#define") {
            continue;
        }
        let (Some(name), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        let Some(name) = name.strip_prefix("__NR_") else {
            continue;
        };
        if let Ok(n) = value.parse::<u32>() {
            writeln!(out, "pub const {}: u32 = {n};", name.to_uppercase())
                .expect("write to String");
        }
    }
    let out_file = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("sysno.rs");
    fs::write(out_file, out).expect("write sysno.rs");
}
