//! kbox's own exit status, following podman's conventions: the guest's code when it exits,
//! 128+N when it dies of signal N, and 125/126/127 for failures of kbox itself, a command
//! that cannot be executed and a command that does not exist.

use rustix::io::Errno;

/// Status for any failure of kbox itself, bad arguments included.
pub const KBOX_ERROR: u8 = 125;
/// Status when the command exists in the image but cannot be executed.
pub const NOT_EXECUTABLE: u8 = 126;
/// Status when the command does not exist in the image.
pub const NOT_FOUND: u8 = 127;

/// Why kbox ends, and so which status it reports to its parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// kbox did what was asked without running a guest (`--help`, `--version`).
    Done,
    /// The guest exited on its own with this code.
    Guest(u8),
    /// The guest was killed by this signal number.
    GuestSignal(u8),
    /// kbox failed before or while running the guest.
    KboxError,
    /// The command was found but exec refused it (permissions, bad format...).
    NotExecutable,
    /// The command was not found in the image.
    NotFound,
}

impl Exit {
    /// Decodes a raw `wait` status of the guest's first process (as rustix's
    /// `WaitStatus::as_raw` gives it).
    ///
    /// Returns `None` for statuses that do not end the process (stopped, continued).
    pub const fn from_wait_status(status: u32) -> Option<Self> {
        let [low_byte, code, ..] = status.to_le_bytes();
        let low = low_byte & 0x7f;
        if low == 0 {
            // WIFEXITED: the code is in bits 8..16.
            Some(Exit::Guest(code))
        } else if low == 0x7f {
            // WIFSTOPPED (or, with 0xffff, WIFCONTINUED): the process is still alive.
            None
        } else {
            // WIFSIGNALED: `low` is the signal number, 1..=126; bit 7 is the core-dump flag.
            Some(Exit::GuestSignal(low))
        }
    }

    /// Maps the error of a failed `execve` of the guest's command to the exit status.
    pub const fn from_exec_error(errno: Errno) -> Self {
        match errno {
            Errno::NOENT | Errno::NOTDIR | Errno::LOOP | Errno::NAMETOOLONG => Exit::NotFound,
            _ => Exit::NotExecutable,
        }
    }

    /// The status number kbox exits with.
    pub const fn code(self) -> u8 {
        match self {
            Exit::Done => 0,
            Exit::Guest(code) => code,
            // Signal numbers stop at 126 (0x7f means "stopped"), so 128 + N fits in a byte.
            Exit::GuestSignal(signal) => 128 + (signal & 0x7f),
            Exit::KboxError => KBOX_ERROR,
            Exit::NotExecutable => NOT_EXECUTABLE,
            Exit::NotFound => NOT_FOUND,
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds the wait status of a process that called `exit(code)`, as the kernel does.
    const fn exited(code: u32) -> u32 {
        (code & 0xff) << 8
    }

    /// Builds the wait status of a process killed by `signal`, with or without a core dump.
    const fn signaled(signal: u32, core: bool) -> u32 {
        signal | if core { 0x80 } else { 0 }
    }

    #[test]
    fn wait_status_when_exit_zero_is_zero() {
        assert_eq!(Exit::from_wait_status(exited(0)).map(Exit::code), Some(0));
    }

    #[test]
    fn wait_status_when_exit_code_is_that_code() {
        assert_eq!(Exit::from_wait_status(exited(42)), Some(Exit::Guest(42)));
        assert_eq!(Exit::from_wait_status(exited(42)).map(Exit::code), Some(42));
    }

    #[test]
    fn wait_status_when_exit_255_is_255() {
        assert_eq!(
            Exit::from_wait_status(exited(255)).map(Exit::code),
            Some(255)
        );
    }

    #[test]
    fn wait_status_when_guest_itself_exits_125_is_125() {
        // The guest's own 125 passes through unchanged, as in podman.
        assert_eq!(Exit::from_wait_status(exited(125)), Some(Exit::Guest(125)));
    }

    #[test]
    fn wait_status_when_killed_by_term_is_143() {
        let status = signaled(libc_like::SIGTERM, false);
        assert_eq!(Exit::from_wait_status(status), Some(Exit::GuestSignal(15)));
        assert_eq!(Exit::from_wait_status(status).map(Exit::code), Some(143));
    }

    #[test]
    fn wait_status_when_killed_by_kill_is_137() {
        let status = signaled(libc_like::SIGKILL, false);
        assert_eq!(Exit::from_wait_status(status).map(Exit::code), Some(137));
    }

    #[test]
    fn wait_status_when_core_dumped_ignores_core_flag() {
        let status = signaled(libc_like::SIGSEGV, true);
        assert_eq!(Exit::from_wait_status(status).map(Exit::code), Some(139));
    }

    #[test]
    fn wait_status_when_killed_by_highest_rt_signal_fits_a_byte() {
        let status = signaled(64, false);
        assert_eq!(Exit::from_wait_status(status).map(Exit::code), Some(192));
    }

    #[test]
    fn wait_status_when_stopped_is_none() {
        // WIFSTOPPED by SIGTSTP: 0x7f in the low byte, the signal above it.
        let status = 0x7f | (libc_like::SIGTSTP << 8);
        assert_eq!(Exit::from_wait_status(status), None);
    }

    #[test]
    fn wait_status_when_continued_is_none() {
        assert_eq!(Exit::from_wait_status(0xffff), None);
    }

    #[test]
    fn kbox_failures_when_mapped_are_125_126_127() {
        assert_eq!(Exit::KboxError.code(), 125);
        assert_eq!(Exit::NotExecutable.code(), 126);
        assert_eq!(Exit::NotFound.code(), 127);
    }

    #[test]
    fn exec_error_when_enoent_is_not_found() {
        assert_eq!(Exit::from_exec_error(Errno::NOENT), Exit::NotFound);
    }

    #[test]
    fn exec_error_when_enotdir_is_not_found() {
        assert_eq!(Exit::from_exec_error(Errno::NOTDIR), Exit::NotFound);
    }

    #[test]
    fn exec_error_when_eacces_is_not_executable() {
        assert_eq!(Exit::from_exec_error(Errno::ACCESS), Exit::NotExecutable);
    }

    #[test]
    fn exec_error_when_enoexec_is_not_executable() {
        assert_eq!(Exit::from_exec_error(Errno::NOEXEC), Exit::NotExecutable);
    }

    /// Linux signal numbers used above (identical on x86_64 and aarch64).
    mod libc_like {
        pub const SIGKILL: u32 = 9;
        pub const SIGSEGV: u32 = 11;
        pub const SIGTERM: u32 = 15;
        pub const SIGTSTP: u32 = 20;
    }
}
