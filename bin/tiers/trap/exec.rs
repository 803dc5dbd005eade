//! execve in the trap tier: kbox's loader replaces the guest's program inside kbox's own
//! process (the host's execve would replace kbox too). What Linux does at exec, kbox does
//! here: close-on-exec FDs close, caught signals return to their default action, the old
//! program's memory goes, the new one starts with a fresh stack and break.

use std::sync::Mutex;

use kbox_lkl::Errno;

use super::entry::Trapped;
use super::guest::InProcess;
use super::{EngineFiles, brk, signals};
use crate::dispatch::{Engine, Guest};
use crate::loader::{self, Creds, Request};

/// The most argv or envp entries accepted (Linux's limit is by size; this bounds the reads).
const MAX_STRINGS: usize = 1 << 17;
const AT_FDCWD: i32 = -100;

fn read_strings(guest: &InProcess, mut at: u64) -> Result<Vec<Vec<u8>>, Errno> {
    let mut out = Vec::new();
    if at == 0 {
        return Ok(out);
    }
    loop {
        let mut word = [0u8; 8];
        guest.read(at, &mut word)?;
        let p = u64::from_ne_bytes(word);
        if p == 0 {
            return Ok(out);
        }
        if out.len() == MAX_STRINGS {
            return Err(Errno::E2BIG);
        }
        let s = crate::seccomp::guest_mem::read_cstr(
            guest.tid,
            p,
            kbox_arch::initstack::MAX_ARG_STRLEN,
        )
        .map_err(|e| match e {
            crate::seccomp::guest_mem::MemError::NameTooLong => Errno::E2BIG,
            e => Errno(i32::from(e.errno().get())),
        })?;
        out.push(s.into_bytes());
        at += 8;
    }
}

/// execve (`at`: execveat) for the calling guest thread. On success the trapped frame
/// starts the new program when the handler returns.
pub fn execve(
    call: &mut Trapped<'_>,
    engine: &Mutex<Engine>,
    guest: &InProcess,
    args: [u64; 6],
    at: bool,
) -> Result<(), Errno> {
    let (dirfd, path, argv, envp) = if at {
        (args[0], args[1], args[2], args[3])
    } else {
        (
            i64::from(AT_FDCWD).cast_unsigned(),
            args[0],
            args[1],
            args[2],
        )
    };
    if i32::try_from(dirfd.cast_signed()).ok() != Some(AT_FDCWD) || (at && args[4] != 0) {
        // execveat relative to an FD, or with flags: not yet.
        return Err(Errno::ENOSYS);
    }
    let mut path = guest.read_path(path)?;
    if path.as_bytes().is_empty() {
        return Err(Errno::ENOENT);
    }
    // The host's /proc/self/exe is kbox: the program running now is the one meant
    // (busybox re-execs itself this way).
    if matches!(
        path.as_bytes(),
        b"/proc/self/exe" | b"/proc/thread-self/exe"
    ) {
        path = super::current_program();
    }
    let req = Request {
        path: path.as_bytes().to_vec(),
        argv: read_strings(guest, argv)?,
        envp: read_strings(guest, envp)?,
        creds: Creds::default(),
    };
    let prepared = if super::process::is_remote() {
        loader::prepare(&mut super::process::RemoteFiles, &req)
    } else {
        let mut files = EngineFiles {
            engine,
            tid: guest.tid,
        };
        loader::prepare(&mut files, &req)
    }
    .map_err(|e| e.errno())?;
    // Linux's point of no return: the old program goes; a failure now ends the process.
    // The call's frame may be in it (on its alternate signal stack).
    call.detach_frame();
    super::unmap_program_image();
    brk::release();
    let hook = super::STATE.get().map(super::State::code_hook);
    let program = match loader::map(
        &prepared,
        &mut *hook.unwrap_or_else(|| Box::new(loader::AsInFile)),
    ) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("kbox: exec {}: {e}", path.to_string_lossy());
            super::guest_died(libc::SIGSEGV);
            return Err(e.errno());
        }
    };
    if super::process::is_remote() {
        super::process::exec_performed(&path);
    } else {
        let _ = super::lock(engine).exec_performed(guest.tid, &path);
    }
    close_on_exec(guest.fd_floor);
    signals::reset_on_exec();
    // execve clears the alternate signal stack: the old program's is in memory the new one
    // does not know (CPython's faulthandler sets one, and CPython's handlers ask for it, so
    // a program exec'd from one got its signals delivered onto a stale stack).
    let _ = call.set_alternate_stack((0, 0, 0));
    super::set_current_program(&path);
    let (entry, sp, brk_start) = super::replace_program(program);
    brk::reset(brk_start);
    call.guest_tp = 0;
    call.restart_at(entry, sp);
    Ok(())
}

/// Closes the guest's host FDs marked close-on-exec (the engine forgot its own first).
/// The open ones are listed from /proc/self/fd: asking each number below the floor would
/// cost one call per number (17500 of them here) on every exec.
fn close_on_exec(floor: i32) {
    let listed = open_fd_list().map(|fds| fds.into_iter().filter(|&fd| fd < floor).collect());
    let fds: Vec<i32> = listed.unwrap_or_else(|| (0..floor).collect());
    for fd in fds {
        // SAFETY: a guest FD number below the floor (never kbox's): F_GETFD only reads flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags >= 0 && flags & libc::FD_CLOEXEC != 0 {
            // SAFETY: the guest's own FD, which its exec closes.
            unsafe { libc::close(fd) };
        }
    }
}

/// The process's open FD numbers, read through a directory FD of kbox's (above the floor,
/// so not one of them), or None when /proc cannot be read.
fn open_fd_list() -> Option<Vec<i32>> {
    let dir = rustix::fs::open(
        "/proc/self/fd",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()?;
    let dir = crate::dispatch::lift_fd(dir);
    use std::os::fd::AsRawFd;
    let own = dir.as_raw_fd();
    let mut fds = Vec::new();
    for entry in rustix::fs::Dir::new(dir).ok()? {
        let entry = entry.ok()?;
        if let Some(fd) = entry
            .file_name()
            .to_str()
            .ok()
            .and_then(|n| n.parse::<i32>().ok())
            && fd != own
        {
            fds.push(fd);
        }
    }
    Some(fds)
}
