//! Guest pids as the guest sees them. kbox watches its guests from the pid namespace above
//! theirs (when they have one), so the pids it reads in the host's /proc are not the ones
//! the guest knows; `/proc/PID/status` lists each process's pid in every namespace from
//! kbox's down to its own (`NSpid`), which is how they are translated.

use std::os::fd::OwnedFd;

use kbox_lkl::Errno;

use super::hostio;

/// The `NSpid` numbers of host process `pid`, outermost (kbox's namespace) first.
fn ns_pids(pid: u32) -> Option<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().map(|v| v.parse().ok()).collect()
}

/// The pid process `pid` has in its own pid namespace: what its getpid returns.
pub fn guest_pid(pid: u32) -> Option<u32> {
    ns_pids(pid)?.last().copied()
}

/// Host pid `pid` as a process `depth` namespaces below kbox's sees it: its number there,
/// or 0 when it is not in that namespace (an ancestor outside the guest's tree), as Linux
/// shows processes of outer namespaces.
fn seen_at_depth(pid: i64, depth: usize) -> i64 {
    let Ok(p) = u32::try_from(pid) else {
        return pid;
    };
    if p == 0 {
        return 0;
    }
    match ns_pids(p) {
        Some(ids) if ids.len() == depth => ids.last().map_or(0, |&v| i64::from(v)),
        _ => 0,
    }
}

/// `/proc/TID/stat` of a guest thread with its pid, parent pid, process group, session and
/// terminal group as the guest knows them (the rest is the host's: times, memory, state),
/// in a memfd. The text is a snapshot taken at open, as the guest reads it right after.
pub fn guest_stat(tid: u32) -> Result<OwnedFd, Errno> {
    let text = std::fs::read(format!("/proc/{tid}/stat")).map_err(|_| Errno::ESRCH)?;
    let depth = ns_pids(tid).map_or(1, |v| v.len());
    let text = if depth > 1 {
        translate_stat(&text, |pid| seen_at_depth(pid, depth))
    } else {
        text
    };
    let fd = hostio::memfd(0)?;
    rustix::io::write(&fd, &text).map_err(hostio::errno)?;
    rustix::fs::seek(&fd, rustix::fs::SeekFrom::Start(0)).map_err(hostio::errno)?;
    Ok(fd)
}

/// `stat` text with its pid fields (1 pid, 4 ppid, 5 pgrp, 6 session, 8 tpgid) mapped by
/// `map`. The name in parentheses may hold anything, so fields are counted after its last
/// closing parenthesis.
fn translate_stat(text: &[u8], map: impl Fn(i64) -> i64) -> Vec<u8> {
    let Some(close) = text.iter().rposition(|&b| b == b')') else {
        return text.to_vec();
    };
    let (head, tail) = text.split_at(close);
    let Some(open) = head.iter().position(|&b| b == b'(') else {
        return text.to_vec();
    };
    let number = |b: &[u8]| std::str::from_utf8(b).ok()?.trim().parse::<i64>().ok();
    let mut out = Vec::with_capacity(text.len() + 16);
    match number(&head[..open]) {
        Some(pid) => out.extend_from_slice(format!("{} ", map(pid)).as_bytes()),
        None => return text.to_vec(),
    }
    out.extend_from_slice(&head[open..]);
    out.push(b')');
    // tail[1..] is " state ppid pgrp session tty_nr tpgid ...": fields 3 onwards.
    for (i, field) in tail[1..].split(|&b| b == b' ').enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        // i counts from the empty field before the state: field n is i + 2.
        match (i + 2, number(field)) {
            (4 | 5 | 6 | 8, Some(v)) if v > 0 => {
                out.extend_from_slice(map(v).to_string().as_bytes());
            }
            _ => out.extend_from_slice(field),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::translate_stat;

    #[test]
    fn only_the_pid_fields_are_mapped() {
        let text = b"4242 (a (b) c) S 4241 4240 4239 34816 4240 4194560 1 2 3\n";
        let out = translate_stat(text, |p| p - 4000);
        assert_eq!(
            String::from_utf8(out).expect("ASCII in, ASCII out"),
            "242 (a (b) c) S 241 240 239 34816 240 4194560 1 2 3\n"
        );
    }

    #[test]
    fn no_terminal_stays_minus_one() {
        let text = b"7 (sh) R 1 7 7 0 -1 4194304\n";
        let out = translate_stat(text, |p| p + 100);
        assert_eq!(
            String::from_utf8(out).expect("ASCII in, ASCII out"),
            "107 (sh) R 101 107 107 0 -1 4194304\n"
        );
    }
}
