//! A cheap clock for timing each answered call: the CPU's cycle counter (x86_64's TSC,
//! aarch64's virtual counter), a few ns to read where `clock_gettime` costs about 20. Ticks
//! become ns by the rate measured over the whole run so far (ticks and a real clock both
//! read when timing starts and when a report is made), so no start-up calibration.

use std::sync::OnceLock;
use std::time::Instant;

/// Both clocks, read when timing started.
static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();

/// Starts timing (idempotent).
pub fn start() {
    ANCHOR.get_or_init(|| (Instant::now(), now()));
}

/// The counter now.
pub fn now() -> u64 {
    kbox_arch::cycles::now()
}

/// Ticks per ns over the run so far (1 until some time has passed).
fn rate() -> f64 {
    let Some(&(t0, c0)) = ANCHOR.get() else {
        return 1.0;
    };
    let ns = t0.elapsed().as_nanos() as f64;
    let ticks = now().wrapping_sub(c0) as f64;
    if ns < 1e5 || ticks <= 0.0 {
        return 1.0;
    }
    ticks / ns
}

/// `ticks` in ns, at the run's rate.
pub fn to_ns(ticks: u64) -> u64 {
    converter()(ticks)
}

/// A converter at the current rate, for converting many values consistently.
pub fn converter() -> impl Fn(u64) -> u64 {
    let rate = rate();
    move |ticks| whole(ticks as f64 / rate)
}

/// `v` rounded down to a whole number, 0 for what is not a finite non-negative number.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn whole(v: f64) -> u64 {
    // Checked finite and non-negative first; `as` saturates above u64::MAX.
    if v.is_finite() && v >= 0.0 {
        v as u64
    } else {
        0
    }
}
