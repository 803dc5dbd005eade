//! The decoder, sweep and planner never panic, and decoded lengths stay within bounds.
#![no_main]

use kbox_arch::x86_64::decode::{MAX_LEN, decode};
use kbox_arch::x86_64::plan::{self, Analysis};
use kbox_arch::x86_64::scan::scan_segment;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(insn) = decode(data) {
        assert!((1..=MAX_LEN).contains(&insn.size()) && insn.size() <= data.len());
    }
    let mut sites = Vec::new();
    scan_segment(data, 0x40_0000, &mut sites);
    let an = Analysis::new(data, 0x40_0000);
    let (plans, _) = plan::plan_segment(&an, &sites);
    for p in &plans {
        assert!(p.len >= 5);
        let _ = plan::trampoline(p, 0x50_0000, 1, 0x60_0000);
        let _ = plan::patch_bytes(p, 0x50_0000);
    }
});
