//! MMIO dispatch for host device models: the kernel's readl/writel on a device's
//! register window arrive here. No device is registered yet, so every access fails.
use core::ffi::{c_int, c_ulong, c_void};

pub fn access(_addr: c_ulong, _value: *mut c_void, _size: c_int, _write: bool) -> c_int {
    -1
}

/// Kernel command-line words that describe the registered devices to the kernel
/// (`virtio_mmio.device=<size>@<base>:<irq>`), appended at boot.
pub fn boot_cmdline() -> String {
    String::new()
}
