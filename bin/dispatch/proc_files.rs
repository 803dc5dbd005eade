//! What kbox reads of a guest process in the host's /proc on hot paths: which children it
//! has forked, read before every change of state its children inherit (procs.rs
//! `before_change`), and how many threads it has (files.rs `host_can_dup`). Reading them
//! by path cost 6.4 µs a time (path walks, open, read, close, a stat for the thread
//! count), a large share of a notified close; the files are kept open per process
//! instead, which brings it to about 0.5 µs (one pread and one fstat) for a
//! single-threaded process.

use std::os::fd::OwnedFd;

use rustix::fs::{Mode, OFlags};

/// Open /proc files of one process (its thread group leader's), opened on first use.
#[derive(Default)]
pub struct ProcFiles {
    /// /proc/PID/task: its link count is the number of threads plus two.
    task_dir: Option<OwnedFd>,
    /// /proc/PID/task/PID/children. Kept only for the leader: /proc files name a pid, and
    /// the thread group's pid lives as long as the process (an exec by another thread
    /// hands it to that thread), where another thread's id can come back for a new thread
    /// while a file of the dead one reads empty.
    leader: Option<OwnedFd>,
}

impl ProcFiles {
    /// The children of process `pid`, forked by any of its threads (CONFIG_PROC_CHILDREN;
    /// empty where the kernel lacks it).
    pub fn children(&mut self, pid: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let leader = cached(
            &mut self.leader,
            &format!("/proc/{pid}/task/{pid}/children"),
        )
        .map(|fd| parse_into(&read_all(fd), &mut out))
        .is_some();
        if leader && self.threads(pid) == 1 {
            return out;
        }
        // Several threads (or a leader already gone): each one's list, by path.
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return out;
        };
        for t in dir.flatten() {
            if let Some(t) = t.file_name().to_str().and_then(|n| n.parse::<u32>().ok())
                && t != pid
                && let Ok(text) = std::fs::read(format!("/proc/{pid}/task/{t}/children"))
            {
                parse_into(&text, &mut out);
            }
        }
        out
    }

    /// How many threads process `pid` has; 0 when unknown.
    pub fn threads(&mut self, pid: u32) -> u64 {
        cached(&mut self.task_dir, &format!("/proc/{pid}/task"))
            .and_then(|fd| rustix::fs::fstat(fd).ok())
            .map_or(0, |st| super::hostio::links(&st).saturating_sub(2))
    }
}

/// The file in `slot`, opened from `path` the first time.
fn cached<'a>(slot: &'a mut Option<OwnedFd>, path: &str) -> Option<&'a OwnedFd> {
    if slot.is_none() {
        *slot = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .ok()
            .map(super::hostio::lift);
    }
    slot.as_ref()
}

/// A /proc file's whole text, read from its start.
fn read_all(fd: &OwnedFd) -> Vec<u8> {
    let mut buf = vec![0u8; 512];
    let mut len = 0;
    loop {
        match rustix::io::pread(fd, &mut buf[len..], len as u64) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                len += n;
                if len == buf.len() {
                    buf.resize(buf.len() * 2, 0);
                }
            }
        }
    }
    buf.truncate(len);
    buf
}

fn parse_into(text: &[u8], out: &mut Vec<u32>) {
    out.extend(
        text.split(u8::is_ascii_whitespace)
            .filter_map(|v| std::str::from_utf8(v).ok()?.parse::<u32>().ok()),
    );
}
