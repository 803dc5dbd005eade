//! kbox's own kernel-library tasks (socket pumps, waiters, the image root's thread) are
//! processes in the guest's pid namespace, with pids above `PID_MAX / 2` (procs.rs
//! `HELPER_PIDS` counts down from the top to there; the guests' count up from 1). A
//! listing of `/proc` leaves them out, so `ps`, `pgrep` and `pkill` in the guest see the
//! guest's processes only, not several more per open connection (eight for one listener
//! and one TCP connection in a python process: each end's pumps and control, and the
//! listener's watch and control).

use kbox_core::abi::dirent::dirent64_records;
use kbox_core::abi::stat::{GENERIC_STAT_SIZE, GenericStat};
use kbox_core::sysno::generic as g;
use kbox_lkl::{PID_MAX, Task};

use super::{fdv, lkl, ptr};

/// procfs's root inode (PROC_ROOT_INO).
const PROC_ROOT_INO: u64 = 1;

/// Whether a directory entry names one of kbox's own tasks.
fn is_own_task(name: &[u8]) -> bool {
    if name.is_empty() || name.len() > 10 || !name.iter().all(u8::is_ascii_digit) {
        return false;
    }
    std::str::from_utf8(name)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .is_some_and(|pid| pid > u64::from(PID_MAX / 2))
}

/// Removes the records that name kbox's own tasks, moving the rest down; the new length.
/// Records after a malformed one (the kernel writes none) are dropped.
fn drop_own_tasks(buf: &mut [u8]) -> usize {
    let mut keep = Vec::new();
    let mut records = dirent64_records(buf);
    loop {
        let start = records.offset();
        match records.next() {
            Some(Ok(e)) if is_own_task(e.name) => {}
            Some(Ok(_)) => keep.push(start..records.offset()),
            _ => break,
        }
    }
    let mut to = 0;
    for record in keep {
        let len = record.len();
        buf.copy_within(record, to);
        to += len;
    }
    to
}

/// `buf` is what getdents64 read from kernel-library directory `fd` of `task`: when that
/// is `/proc` and it names kbox's own tasks, they are taken out. The new length (0 only
/// when every record was one of them: the caller reads on).
pub(super) fn hide_from_proc_listing(task: &Task, fd: i32, buf: &mut [u8]) -> usize {
    if !dirent64_records(buf).flatten().any(|e| is_own_task(e.name)) {
        return buf.len();
    }
    let mut st = [0u8; GENERIC_STAT_SIZE];
    let is_proc_root = lkl(task, g::FSTAT, [fdv(fd), ptr(st.as_mut_ptr()), 0, 0, 0, 0])
        .is_ok_and(|_| GenericStat::from_bytes(&st).st_ino == PROC_ROOT_INO);
    if !is_proc_root {
        return buf.len();
    }
    drop_own_tasks(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kbox_core::abi::dirent::DIRENT64_NAME;

    fn record(name: &str) -> Vec<u8> {
        let len = (DIRENT64_NAME + name.len() + 1).div_ceil(8) * 8;
        let mut r = vec![0u8; len];
        r[16..18].copy_from_slice(&u16::try_from(len).expect("short record").to_ne_bytes());
        r[DIRENT64_NAME..DIRENT64_NAME + name.len()].copy_from_slice(name.as_bytes());
        r
    }

    fn names(buf: &[u8]) -> Vec<String> {
        dirent64_records(buf)
            .map(|e| String::from_utf8_lossy(e.expect("well formed").name).into_owned())
            .collect()
    }

    #[test]
    fn only_pids_above_half_the_range_are_kboxs() {
        assert!(is_own_task(b"4194302"));
        assert!(is_own_task(format!("{}", PID_MAX / 2 + 1).as_bytes()));
        assert!(!is_own_task(format!("{}", PID_MAX / 2).as_bytes()));
        assert!(!is_own_task(b"1"));
        assert!(!is_own_task(b"self"));
        assert!(!is_own_task(b""));
        assert!(!is_own_task(b"99999999999999999999"));
    }

    #[test]
    fn own_tasks_are_cut_out_and_the_rest_keeps_its_order() {
        let mut buf: Vec<u8> = ["self", "1", "4194300", "2", "4194302", "uptime"]
            .iter()
            .flat_map(|n| record(n))
            .collect();
        let n = drop_own_tasks(&mut buf);
        assert_eq!(names(&buf[..n]), ["self", "1", "2", "uptime"]);
    }

    #[test]
    fn a_buffer_of_own_tasks_only_becomes_empty() {
        let mut buf: Vec<u8> = ["4194300", "4194301"]
            .iter()
            .flat_map(|n| record(n))
            .collect();
        assert_eq!(drop_own_tasks(&mut buf), 0);
    }
}
