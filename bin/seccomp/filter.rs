//! The guest's seccomp filter: compiled before fork by the core crate's builder, installed in
//! the child between fork and exec, where only async-signal-safe calls are allowed (the
//! install path allocates nothing).

use std::fmt;

use kbox_core::Errno;
use kbox_core::bpf::{self, Action, AuditArch, BpfError, Rule, SockFilter};

use super::sys;

/// The `AUDIT_ARCH_*` of the host: the guest runs natively, so its syscalls carry it.
#[cfg(target_arch = "x86_64")]
pub const HOST_ARCH: AuditArch = AuditArch::X86_64;
#[cfg(target_arch = "aarch64")]
pub const HOST_ARCH: AuditArch = AuditArch::Aarch64;

/// A compiled filter, ready to install.
#[derive(Debug)]
pub struct Program {
    insns: Vec<SockFilter>,
}

impl Program {
    /// Compiles `rules` (syscall numbers of the host arch) with `default` for the rest.
    #[cfg(test)]
    pub fn compile(rules: &[Rule], default: Action) -> Result<Self, BpfError> {
        Self::compile_checked(rules, &[], default)
    }

    /// [`Program::compile`] with argument checks.
    pub fn compile_checked(
        rules: &[Rule],
        checks: &[bpf::ArgRule],
        default: Action,
    ) -> Result<Self, BpfError> {
        let mut insns = vec![SockFilter::default(); bpf::MAX_INSNS];
        let n = bpf::compile_checked(HOST_ARCH, rules, checks, default, &mut insns)?;
        insns.truncate(n);
        Ok(Self { insns })
    }

    pub fn len(&self) -> usize {
        self.insns.len()
    }
}

/// An installed filter's listener, as a raw number: the child has no use for ownership (it
/// hands the number to the supervisor and execs, which closes it: the kernel creates the
/// listener close-on-exec).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listener {
    pub fd: i32,
    /// Whether SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV took: once the supervisor has received
    /// a notification, only fatal signals interrupt the guest's wait (kernel ≥ 5.19), so a
    /// handler that has read guest memory is not undone by a harmless signal.
    pub killable_wait: bool,
}

/// Which step of installing the filter failed, with the errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstallError {
    /// `prctl(PR_SET_NO_NEW_PRIVS)`, required to load a filter without CAP_SYS_ADMIN.
    NoNewPrivs(Errno),
    /// `seccomp(SECCOMP_SET_MODE_FILTER)`; ENOSYS under qemu-user.
    Seccomp(Errno),
    /// The program is longer than `sock_fprog.len` can say (cannot happen with the
    /// builder's 4096 cap, but the conversion is checked rather than assumed).
    ProgramTooLong,
}

impl fmt::Display for InstallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoNewPrivs(e) => write!(f, "prctl(PR_SET_NO_NEW_PRIVS) failed: {e}"),
            Self::Seccomp(e) => write!(f, "seccomp(SET_MODE_FILTER) failed: {e}"),
            Self::ProgramTooLong => f.write_str("seccomp filter longer than 65535 instructions"),
        }
    }
}

/// Raw errno → `Errno`, EINVAL for a value the kernel would not return (never happens).
pub(super) fn errno_from_raw(raw: i32) -> Errno {
    u16::try_from(raw)
        .ok()
        .and_then(Errno::new)
        .unwrap_or(Errno::EINVAL)
}

/// Installs `prog` on the calling thread with a new listener. Async-signal-safe: meant for
/// the forked guest child before exec (the filter is inherited across exec and fork).
pub fn install(prog: &Program) -> Result<Listener, InstallError> {
    rustix::thread::set_no_new_privs(true)
        .map_err(|e| InstallError::NoNewPrivs(errno_from_raw(e.raw_os_error())))?;
    let fprog = sys::SockFprog {
        len: u16::try_from(prog.insns.len()).map_err(|_| InstallError::ProgramTooLong)?,
        filter: prog.insns.as_ptr(),
    };
    let base = sys::SECCOMP_FILTER_FLAG_NEW_LISTENER;
    let killable = base | sys::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
    // Kernels before 5.19 reject the unknown flag with EINVAL: fall back to the plain
    // listener, whose wait any signal interrupts (the supervisor then sees ENOENT on SEND).
    let (r, killable_wait) = match sys::seccomp_set_mode_filter(killable, &fprog) {
        Err(libc::EINVAL) => (sys::seccomp_set_mode_filter(base, &fprog), false),
        r => (r, true),
    };
    let fd = r.map_err(|e| InstallError::Seccomp(errno_from_raw(e)))?;
    let fd = i32::try_from(fd).map_err(|_| InstallError::Seccomp(Errno::EINVAL))?;
    Ok(Listener { fd, killable_wait })
}
