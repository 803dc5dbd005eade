//! Calls that name another process: signals, priorities, scheduling, resource limits.
//! Guests share the host's pid space (and user), so unmediated, `kill -9 <host pid>` or
//! `kill(-1, SIGKILL)` from a guest would reach every process the user owns. Each of these
//! calls is notified (the filter lets the "myself" forms through) and the host runs it
//! only when every process it names is a guest; calls on a process group or on "every
//! process" that also name host processes are carried out on their guest members only.

use kbox_lkl::Errno;

use super::{Engine, Reply, procs};

/// `which` values of get/setpriority and ioprio_get/set.
const PRIO_PROCESS: u64 = 0;
const PRIO_PGRP: u64 = 1;
const IOPRIO_WHO_PROCESS: u64 = 1;
const IOPRIO_WHO_PGRP: u64 = 2;

/// The target of a pid-naming call, as the kernel will read it.
enum Target {
    /// The caller's own process (or thread).
    Caller,
    /// One process (or, for tkill, one thread) by host id.
    One(u32),
    /// A process group: 0 is the caller's.
    Group(u32),
    /// Every process the caller may signal (kill -1).
    All,
    /// Every process of a user (PRIO_USER): never only the guest's.
    User,
}

impl Engine {
    /// Serves pid-naming call `name` (host arch name) of guest thread `tid`, or None if
    /// `name` is not one.
    pub(super) fn pid_targeted(&self, tid: u32, name: &str, args: [u64; 6]) -> Option<Reply> {
        let pid =
            |v: u64| i32::from_ne_bytes(u32::try_from(v & 0xffff_ffff).unwrap_or(0).to_ne_bytes());
        let one = |v: u64| match pid(v) {
            0 => Target::Caller,
            p if p > 0 => Target::One(p.unsigned_abs()),
            _ => Target::One(0),
        };
        let target = match name {
            "kill" => match pid(args[0]) {
                0 => Target::Group(0),
                -1 => Target::All,
                p if p < 0 => Target::Group(p.unsigned_abs()),
                p => Target::One(p.unsigned_abs()),
            },
            // A thread id names its process's thread; tgkill and rt_tgsigqueueinfo name the
            // thread group first.
            "tkill" | "tgkill" | "rt_sigqueueinfo" | "rt_tgsigqueueinfo" | "pidfd_open" => {
                one(args[0])
            }
            "getpriority" | "setpriority" => match args[0] {
                PRIO_PROCESS => one(args[1]),
                PRIO_PGRP => Target::Group(pid(args[1]).unsigned_abs()),
                _ => Target::User,
            },
            "ioprio_get" | "ioprio_set" => match args[0] {
                IOPRIO_WHO_PROCESS => one(args[1]),
                IOPRIO_WHO_PGRP => Target::Group(pid(args[1]).unsigned_abs()),
                _ => Target::User,
            },
            _ if super::policy::PID_FIRST.contains(&name) => one(args[0]),
            _ => return None,
        };
        Some(match target {
            Target::Caller => Reply::Continue,
            Target::One(id) if self.is_guest_thread(id) || id == 0 => Reply::Continue,
            // As if there were no such process: the guest's world has none.
            Target::One(_) => Reply::Fail(Errno::ESRCH),
            Target::User => Reply::Fail(Errno::EPERM),
            Target::Group(g) => {
                let group = if g == 0 { pgrp_of(tid) } else { Some(g) };
                let Some(group) = group else {
                    return Some(Reply::Fail(Errno::ESRCH));
                };
                let members = procs::processes(|p| pgrp_of(p) == Some(group));
                if members.is_empty() {
                    Reply::Fail(Errno::ESRCH)
                } else if members.iter().all(|&p| self.is_guest_thread(p)) {
                    Reply::Continue
                } else if name == "kill" {
                    // A group shared with the host (the first guest process is in kbox's
                    // group, and so is whatever the user's shell ran it with): signal the
                    // guest members only.
                    self.signal_each(&members, args[1])
                } else {
                    Reply::Fail(Errno::EPERM)
                }
            }
            Target::All => {
                let caller = procs::tgid_of(tid).unwrap_or(tid);
                let members = procs::processes(|p| p != caller);
                self.signal_each(&members, args[1])
            }
        })
    }

    /// pidfd_send_signal. A pidfd is the host's (the guest got it from pidfd_open, which is
    /// mediated): the host serves it. Linux also takes an FD of a `/proc/PID` directory,
    /// and that one is the kernel library's: kbox signals the guest process it names.
    pub(super) fn pidfd_send_signal(&self, pid: u32, args: [u64; 6]) -> Reply {
        let fd = super::fd_arg(args[0]);
        if self.served(pid, fd).is_none() {
            return Reply::Continue;
        }
        let Some(p) = self.procs.get(pid) else {
            return Reply::Fail(Errno::ESRCH);
        };
        let Some(target) = proc_dir_pid(&p.task, fd).and_then(|n| self.procs.by_guest_pid(n))
        else {
            return Reply::Fail(Errno::EBADF);
        };
        if args[3] != 0 {
            return Reply::Fail(Errno::EINVAL);
        }
        if args[2] != 0 {
            // A caller-made siginfo: Linux takes it from another process only with a
            // negative si_code, which kbox cannot vouch for.
            return Reply::Fail(Errno::EPERM);
        }
        self.signal_each(&[target], args[1])
    }

    /// Whether host id `id` (a process or a thread) belongs to a guest process.
    fn is_guest_thread(&self, id: u32) -> bool {
        let tgid = procs::tgid_of(id).unwrap_or(id);
        self.procs.get(tgid).is_some() || procs::is_guest(tgid)
    }

    /// kill(sig) on each guest process among `pids`, as the guest's kill would: 0 if any was
    /// signalled, else the first error (ESRCH when there were none).
    fn signal_each(&self, pids: &[u32], sig: u64) -> Reply {
        let Ok(sig) = i32::try_from(sig & 0xffff_ffff) else {
            return Reply::Fail(Errno::EINVAL);
        };
        let mut result = Reply::Fail(Errno::ESRCH);
        for &p in pids.iter().filter(|&&p| self.is_guest_thread(p)) {
            let Ok(p) = i32::try_from(p) else { continue };
            // SAFETY: kill(2) takes plain integers and touches no memory of ours.
            let r = unsafe { libc::kill(p, sig) };
            if r == 0 {
                result = Reply::Value(0);
            } else if result != Reply::Value(0) {
                let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                result = Reply::Fail(Errno(e));
            }
        }
        result
    }
}

/// The guest pid N when kernel FD `kfd` of `task` is the directory `/proc/N`.
fn proc_dir_pid(task: &kbox_lkl::Task, kfd: i32) -> Option<u32> {
    let target = super::fdlist::kernel_fd_path(task, kfd)?;
    std::str::from_utf8(target.strip_prefix(b"/proc/")?)
        .ok()?
        .parse()
        .ok()
}

/// The process group of host process (or thread) `pid`: field 5 of /proc/PID/stat, after
/// the parenthesised command name (which may itself hold spaces and parentheses).
fn pgrp_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(2)?.parse().ok()
}
