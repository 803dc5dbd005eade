//! The CPU's cycle counter, for timing short stretches cheaply (a few ns to read, where
//! `clock_gettime` costs about 20): x86_64's TSC, aarch64's virtual counter. Its rate is
//! the caller's to measure (kbox's `--stats` compares it with a real clock over the run).

/// The counter now.
#[cfg(target_arch = "x86_64")]
pub fn now() -> u64 {
    // SAFETY: RDTSC reads a counter and touches no memory; every x86_64 CPU has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The counter now.
#[cfg(target_arch = "aarch64")]
pub fn now() -> u64 {
    let v: u64;
    // SAFETY: CNTVCT_EL0 is readable at EL0 on Linux (the kernel enables it for the vDSO);
    // the read touches no memory and no flags.
    unsafe {
        core::arch::asm!("mrs {}, cntvct_el0", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_counter_moves_forward() {
        let a = super::now();
        let mut x = 0u64;
        for i in 0..10_000u64 {
            x = x.wrapping_add(core::hint::black_box(i));
        }
        let b = super::now();
        assert!(b > a, "{a} then {b} ({x})");
    }
}
