//! A process's own `/proc/PID/fd` directory as the guest lists it. The guest's /proc is the
//! kernel library's, whose task holds only the FDs kbox serves, so the listing of a process's
//! own fd directory comes from the host's, where every guest FD is (pipes, eventfds, the
//! terminal included): programs that close what they inherit by listing it (CPython's
//! subprocess, glibc's closefrom fallback) then see them all.

use kbox_core::sysno::generic as g;
use kbox_lkl::{Errno, Task};

use super::{fdv, lkl, ptr};

/// What kernel FD `kfd` of `task` refers to, as the task's /proc shows it.
pub fn kernel_fd_path(task: &Task, kfd: i32) -> Option<Vec<u8>> {
    let link = format!("/proc/self/fd/{kfd}\0");
    let mut target = [0u8; 256];
    let n = lkl(
        task,
        g::READLINKAT,
        [
            super::files::AT_FDCWD,
            ptr(link.as_ptr()),
            ptr(target.as_mut_ptr()),
            target.len() as u64,
            0,
            0,
        ],
    )
    .ok()?;
    target.get(..usize::try_from(n).ok()?).map(<[u8]>::to_vec)
}

/// Whether kernel FD `kfd` of `task` is the fd directory of the task's own process
/// (`/proc/self/fd`, `/proc/PID/fd`, `/proc/PID/task/TID/fd`).
pub fn is_own_fd_dir(task: &Task, kfd: i32) -> bool {
    let Some(target) = kernel_fd_path(task, kfd) else {
        return false;
    };
    let Ok(me) = lkl(task, g::GETPID, [0; 6]) else {
        return false;
    };
    let Some(rest) = target
        .strip_prefix(b"/proc/")
        .and_then(|r| r.strip_suffix(b"/fd"))
    else {
        return false;
    };
    let pid = rest.split(|&b| b == b'/').next().unwrap_or(b"");
    pid == me.to_string().as_bytes()
}

/// One getdents64 read of the fd directory of host thread `tid`'s process, from position
/// `pos` (Linux's: 0 is ".", 1 is "..", FD n is n + 2), into at most `max` bytes. Returns the
/// records and the position after them; an empty result is the end.
pub fn list(tid: u32, pos: u64, max: usize) -> Result<(Vec<u8>, u64), Errno> {
    // Opened where kbox's own FDs are (above the guest's numbers when the guest shares
    // kbox's table), so that it is not listed itself; kbox's FDs there are not the guest's.
    let fd = super::hostio::open_host(
        &format!("/proc/{tid}/fd"),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
    )
    .map_err(|_| Errno::ESRCH)?;
    let floor = super::hostio::fd_floor().map_or(u64::MAX, |f| u64::try_from(f).unwrap_or(0));
    let mut dir = rustix::fs::Dir::new(fd).map_err(super::hostio::errno)?;
    let mut fds: Vec<u64> = Vec::new();
    while let Some(Ok(e)) = dir.next() {
        if let Some(n) = e
            .file_name()
            .to_str()
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            && n < floor
        {
            fds.push(n);
        }
    }
    fds.sort_unstable();
    let mut entries: Vec<(u64, String, u8)> =
        vec![(0, ".".into(), DT_DIR), (1, "..".into(), DT_DIR)];
    entries.extend(fds.into_iter().map(|fd| (fd + 2, fd.to_string(), DT_LNK)));
    let mut out = Vec::new();
    let mut at = pos;
    for (p, name, kind) in entries.into_iter().filter(|(p, _, _)| *p >= pos) {
        let record = record(p, &name, kind);
        if out.len() + record.len() > max {
            if out.is_empty() {
                return Err(Errno::EINVAL);
            }
            break;
        }
        out.extend_from_slice(&record);
        at = p + 1;
    }
    Ok((out, at))
}

const DT_DIR: u8 = 4;
const DT_LNK: u8 = 10;

/// A `struct linux_dirent64` for the entry at position `p` (its d_off is the next
/// position).
fn record(p: u64, name: &str, kind: u8) -> Vec<u8> {
    let len = (19 + name.len() + 1).next_multiple_of(8);
    let mut r = vec![0u8; len];
    r[..8].copy_from_slice(&(0x1000 + p).to_ne_bytes());
    r[8..16].copy_from_slice(&(p + 1).to_ne_bytes());
    r[16..18].copy_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
    r[18] = kind;
    r[19..19 + name.len()].copy_from_slice(name.as_bytes());
    r
}

/// Moves the kernel-library directory FD's position, which stands for the guest's.
pub fn seek(task: &Task, kfd: i32, pos: u64) {
    let _ = lkl(task, g::LSEEK, [fdv(kfd), pos, 0, 0, 0, 0]);
}

#[cfg(test)]
mod tests {
    use super::record;

    #[test]
    fn records_are_aligned_and_point_to_the_next() {
        let r = record(5, "3", 10);
        assert_eq!(r.len(), 24);
        assert_eq!(u64::from_ne_bytes(r[8..16].try_into().expect("8 bytes")), 6);
        assert_eq!(&r[19..21], b"3\0");
    }
}
