//! Reading and writing a guest's memory with `process_vm_readv/writev`.
//!
//! These calls honour the guest's page protections (a write to read-only memory fails, as
//! the guest's own syscall would), and unmapped addresses give EFAULT, which is what the
//! guest should see. A pid names a thread only while it lives: after reading memory for a
//! notification, check the notification is still valid ([`read_checked`]) before acting
//! on what was read.

use std::ffi::CString;
use std::fmt;

use kbox_core::Errno;

use super::filter::errno_from_raw;
use super::notify::{NotifyError, Pending};
use super::sys;

/// Longest path the kernel accepts, terminating NUL included (PATH_MAX).
pub const PATH_MAX: usize = 4096;

/// Strings are read in chunks that never cross a 4 KiB boundary: a fault then stops at the
/// exact page, and bytes before it are kept. Larger pages (aarch64 16/64 KiB) are multiples
/// of 4 KiB, so this holds on every arch.
const CHUNK: usize = 4096;

#[derive(Debug, PartialEq, Eq)]
pub enum MemError {
    /// Some address in the range is not mapped (or not accessible as asked).
    Fault,
    /// `read_cstr` found no NUL within `max` bytes.
    NameTooLong,
    /// The process is gone (ESRCH), or another errno from the kernel.
    Os(Errno),
    /// The notification became invalid while its memory was being read; what was read may
    /// belong to another process that reused the pid.
    Gone,
}

impl MemError {
    /// The errno the guest should get for this failure.
    pub fn errno(&self) -> Errno {
        match self {
            Self::Fault => errno_from_raw(libc::EFAULT),
            Self::NameTooLong => Errno::ENAMETOOLONG,
            Self::Os(e) => *e,
            Self::Gone => errno_from_raw(libc::ESRCH),
        }
    }
}

impl fmt::Display for MemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fault => f.write_str("guest address not mapped (EFAULT)"),
            Self::NameTooLong => f.write_str("guest string longer than PATH_MAX"),
            Self::Os(e) => write!(f, "guest memory access failed: {e}"),
            Self::Gone => f.write_str("guest thread gone while its memory was read"),
        }
    }
}

impl std::error::Error for MemError {}

fn os_error(e: &std::io::Error) -> MemError {
    match e.raw_os_error() {
        Some(libc::EFAULT) | None => MemError::Fault,
        Some(raw) => MemError::Os(errno_from_raw(raw)),
    }
}

/// Fills `buf` from the guest's `addr`; a short copy (a fault part-way) is `Fault`.
pub fn read(pid: u32, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
    if buf.is_empty() {
        return Ok(());
    }
    let (pid, addr) = target(pid, addr, buf.len())?;
    match sys::vm_read(pid, buf, addr) {
        Ok(n) if n == buf.len() => Ok(()),
        Ok(_) => Err(MemError::Fault),
        Err(e) => Err(os_error(&e)),
    }
}

/// Writes `buf` to the guest's `addr`; a short copy is `Fault` (the bytes before the fault
/// are written, as with the kernel's own copy_to_user).
pub fn write(pid: u32, addr: u64, buf: &[u8]) -> Result<(), MemError> {
    if buf.is_empty() {
        return Ok(());
    }
    let (pid, addr) = target(pid, addr, buf.len())?;
    match sys::vm_write(pid, buf, addr) {
        Ok(n) if n == buf.len() => Ok(()),
        Ok(_) => Err(MemError::Fault),
        Err(e) => Err(os_error(&e)),
    }
}

/// Reads a NUL-terminated string at `addr` of at most `max` bytes counting the NUL (use
/// [`PATH_MAX`] for paths): `NameTooLong` past that, `Fault` if an unmapped page comes first.
pub fn read_cstr(pid: u32, addr: u64, max: usize) -> Result<CString, MemError> {
    let mut out = Vec::new();
    let mut chunk = [0u8; CHUNK];
    let mut at = addr;
    while out.len() < max {
        // Up to the next 4 KiB boundary, and no further than `max` in total.
        let to_boundary = CHUNK - usize::try_from(at % CHUNK as u64).unwrap_or(0);
        let len = to_boundary.min(max - out.len());
        read(pid, at, &mut chunk[..len])?;
        if let Some(nul) = chunk[..len].iter().position(|&b| b == 0) {
            out.extend_from_slice(&chunk[..nul]);
            // No interior NUL: `out` holds only bytes before the first one.
            return CString::new(out).map_err(|_| MemError::Fault);
        }
        out.extend_from_slice(&chunk[..len]);
        at = at.checked_add(len as u64).ok_or(MemError::Fault)?;
    }
    Err(MemError::NameTooLong)
}

/// [`read`] for a notification's thread, then a check that the notification is still
/// live: only then is `buf` known to come from the thread that made the call.
pub fn read_checked(pending: &Pending<'_>, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
    read(pending.notification().pid, addr, buf)?;
    still_valid(pending)
}

/// [`read_cstr`] for a notification's thread, validated like [`read_checked`].
pub fn read_cstr_checked(
    pending: &Pending<'_>,
    addr: u64,
    max: usize,
) -> Result<CString, MemError> {
    let s = read_cstr(pending.notification().pid, addr, max)?;
    still_valid(pending)?;
    Ok(s)
}

fn still_valid(pending: &Pending<'_>) -> Result<(), MemError> {
    match pending.is_valid() {
        Ok(true) => Ok(()),
        Ok(false) => Err(MemError::Gone),
        Err(NotifyError::Gone) => Err(MemError::Gone),
        Err(_) => Err(MemError::Os(errno_from_raw(libc::EIO))),
    }
}

/// Checks the pid and the range: a range that wraps the address space is a fault, as it
/// would be for the guest's own syscall, and is never handed to the kernel.
fn target(pid: u32, addr: u64, len: usize) -> Result<(i32, usize), MemError> {
    let pid = i32::try_from(pid)
        .ok()
        .filter(|&p| p > 0)
        .ok_or(MemError::Os(errno_from_raw(libc::ESRCH)))?;
    let addr = usize::try_from(addr).map_err(|_| MemError::Fault)?;
    addr.checked_add(len).ok_or(MemError::Fault)?;
    Ok((pid, addr))
}
