//! Arbitrary bytes through the loader's planning (program headers, interpreter path, entry,
//! segment layout) and its `#!` reader: errors are fine, panics are not, and a plan that is
//! returned must be one the loader can map without arithmetic surprises.
#![no_main]

use kbox_arch::load;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = load::shebang(data);
    let mut buf = vec![0u8; data.len() + 8];
    let off = buf.as_ptr().align_offset(8);
    buf[off..off + data.len()].copy_from_slice(data);
    if let Ok(plan) = load::plan(&buf[off..off + data.len()]) {
        assert!(plan.span.0 < plan.span.1);
        let mut last_end = 0;
        for seg in &plan.segments {
            let (first, end) = seg.pages();
            assert!(first >= plan.span.0 && end <= plan.span.1);
            assert!(seg.vaddr >= last_end, "segments sorted and apart");
            last_end = seg.vaddr + seg.mem_size;
            assert!(seg.file_offset + seg.file_size <= data.len() as u64);
        }
        assert!(plan.brk() >= last_end);
    }
});
