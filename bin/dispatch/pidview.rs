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

/// `/proc/TID/status` as the guest should see it, in a memfd: the host's lines for what the
/// host runs (state, memory, signal masks, threads, CPUs), the kernel library's for what the
/// guest's task holds (name, umask, ids, groups, capabilities), and pids as the guest knows
/// them (`NS*` lines keep only the guest's namespace and those below it).
pub fn guest_status(tid: u32, kernel: &[u8]) -> Result<OwnedFd, Errno> {
    let host = std::fs::read(format!("/proc/{tid}/status")).map_err(|_| Errno::ESRCH)?;
    let depth = ns_pids(tid).map_or(1, |v| v.len());
    let text = merge_status(&host, kernel, |pid| seen_at_depth(pid, depth), depth);
    let fd = hostio::memfd(0)?;
    rustix::io::write(&fd, &text).map_err(hostio::errno)?;
    rustix::fs::seek(&fd, rustix::fs::SeekFrom::Start(0)).map_err(hostio::errno)?;
    Ok(fd)
}

/// The status lines the kernel library's task answers for.
const FROM_KERNEL: [&[u8]; 10] = [
    b"Name", b"Umask", b"Uid", b"Gid", b"Groups", b"CapInh", b"CapPrm", b"CapEff", b"CapBnd",
    b"CapAmb",
];

fn merge_status(host: &[u8], kernel: &[u8], map: impl Fn(i64) -> i64, depth: usize) -> Vec<u8> {
    let key =
        |line: &[u8]| -> Vec<u8> { line.split(|&b| b == b':').next().unwrap_or(b"").to_vec() };
    let from_kernel = |k: &[u8]| {
        kernel
            .split(|&b| b == b'\n')
            .find(|l| key(l) == k)
            .map(<[u8]>::to_vec)
    };
    let mut out = Vec::with_capacity(host.len() + 64);
    for line in host.split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let k = key(line);
        let value = line.get(k.len() + 1..).unwrap_or(b"");
        let numbers = || -> Option<Vec<i64>> {
            std::str::from_utf8(value)
                .ok()?
                .split_whitespace()
                .map(|v| v.parse().ok())
                .collect()
        };
        let replaced = match k.as_slice() {
            k if FROM_KERNEL.contains(&k) => from_kernel(k),
            b"Tgid" | b"Pid" | b"PPid" | b"TracerPid" => numbers()
                .and_then(|n| n.first().copied())
                .map(|n| format!("{}:\t{}", String::from_utf8_lossy(&k), map(n)).into_bytes()),
            b"NStgid" | b"NSpid" | b"NSpgid" | b"NSsid" => numbers().map(|n| {
                let inner = n.get(depth.saturating_sub(1)..).unwrap_or(&[]);
                let mut l = format!("{}:", String::from_utf8_lossy(&k));
                for v in inner {
                    l.push_str(&format!("\t{v}"));
                }
                l.into_bytes()
            }),
            _ => None,
        };
        out.extend_from_slice(replaced.as_deref().unwrap_or(line));
        out.push(b'\n');
    }
    out
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
    use super::{merge_status, translate_stat};

    #[test]
    fn status_merges_host_kernel_and_guest_pids() {
        let host = b"Name:\tpython3\nUmask:\t0022\nTgid:\t5002\nPid:\t5002\nPPid:\t5001\n\
            Uid:\t1000\t1000\t1000\t1000\nNSpid:\t5002\t2\nSigIgn:\t0000000000001000\n";
        let kernel =
            b"Name:\tpy\nUmask:\t0077\nPid:\t2\nUid:\t0\t0\t0\t0\nSigIgn:\t0000000000010000\n";
        let out = merge_status(host, kernel, |p| p - 5000, 2);
        assert_eq!(
            String::from_utf8(out).expect("ASCII"),
            "Name:\tpy\nUmask:\t0077\nTgid:\t2\nPid:\t2\nPPid:\t1\n\
             Uid:\t0\t0\t0\t0\nNSpid:\t2\nSigIgn:\t0000000000001000\n"
        );
    }

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
