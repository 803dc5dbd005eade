//! Where the static kbox binary sits in memory. The in-process tiers load the guest's
//! program into kbox's own process, and a non-PIE guest wants its link address (0x400000
//! for most). Rust builds x86-64 musl binaries as static-pie, which the kernel places far
//! above that; its aarch64 musl binaries are not position independent and link at
//! 0x400000 themselves, so they are linked at 256 GiB instead (within the 39-bit address
//! spaces some arm64 kernels have). See ldscripts/README.md.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("aarch64") {
        println!("cargo:rustc-link-arg-bins=-Wl,-Ttext-segment=0x4000000000");
    }
}
