//! Arbitrary bytes through the bounds-checked ELF reader and both site scanners: errors are
//! fine, panics are not.
#![no_main]

use kbox_arch::{elf, site};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The reader requires 8-byte alignment (xmas-elf asserts it); give it an aligned copy so
    // the fuzzer reaches the parsing rather than the alignment check.
    let mut buf = vec![0u8; data.len() + 8];
    let off = buf.as_ptr().align_offset(8);
    buf[off..off + data.len()].copy_from_slice(data);
    let aligned = &buf[off..off + data.len()];
    if let Ok(image) = elf::parse(aligned) {
        let _ = site::scan(&image);
        let _ = site::has_fork_sites(&image);
    }
});
