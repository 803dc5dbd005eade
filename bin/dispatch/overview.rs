//! What the engine holds, as the dashboard shows it: the guest's processes (pid as the
//! guest knows it, FDs, cwd), the shadow cache and the kernel library's memory.

use kbox_core::sysno::generic as g;

use super::shadow::CacheUse;
use super::{Engine, lkl, pidview, ptr};

/// One guest process.
pub struct ProcessView {
    /// As the guest knows it.
    pub pid: u32,
    /// Its parent's pid as the guest knows it; 0 when the parent is not a guest process.
    pub ppid: u32,
    pub host_pid: u32,
    pub comm: String,
    /// FDs open in the process (host and served alike).
    pub fds: usize,
    pub cwd: Vec<u8>,
}

pub struct Overview {
    pub processes: Vec<ProcessView>,
    pub shadows: CacheUse,
    /// The kernel library's memory (sysinfo): total and free bytes.
    pub kernel_total: u64,
    pub kernel_free: u64,
}

impl Engine {
    pub fn overview(&self) -> Overview {
        let mut processes: Vec<ProcessView> = self
            .procs
            .iter()
            .map(|(&host, p)| {
                let cwd = match &p.cwd_bind {
                    Some(c) => c.clone(),
                    None => task_cwd(&p.task),
                };
                ProcessView {
                    pid: pidview::guest_pid(host).unwrap_or(0),
                    ppid: p.parent,
                    host_pid: host,
                    comm: std::fs::read_to_string(format!("/proc/{host}/comm"))
                        .map(|c| c.trim_end().to_owned())
                        .unwrap_or_default(),
                    fds: std::fs::read_dir(format!("/proc/{host}/fd")).map_or(0, Iterator::count),
                    cwd,
                }
            })
            .collect();
        // Parents by guest pid, when they are guest processes too.
        let by_host: Vec<(u32, u32)> = processes.iter().map(|p| (p.host_pid, p.pid)).collect();
        for p in &mut processes {
            p.ppid = by_host
                .iter()
                .find(|(host, _)| *host == p.ppid)
                .map_or(0, |&(_, pid)| pid);
        }
        processes.sort_by_key(|p| p.pid);
        let (kernel_total, kernel_free) = self.procs.root().map_or((0, 0), kernel_memory);
        Overview {
            processes,
            shadows: self.shadows.usage(),
            kernel_total,
            kernel_free,
        }
    }
}

/// The task's working directory in the kernel library.
fn task_cwd(task: &kbox_lkl::Task) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let len = u64::try_from(buf.len()).unwrap_or(0);
    match lkl(task, g::GETCWD, [ptr(buf.as_mut_ptr()), len, 0, 0, 0, 0]) {
        Ok(n) => {
            // getcwd's length counts the NUL.
            buf.truncate(usize::try_from(n).unwrap_or(1).saturating_sub(1));
            buf
        }
        Err(_) => Vec::new(),
    }
}

/// (total, free) bytes of the kernel library's memory.
fn kernel_memory(root: &kbox_lkl::Task) -> (u64, u64) {
    // struct sysinfo on 64-bit: totalram at 32, freeram at 40, mem_unit at 104.
    let mut info = [0u8; 112];
    if lkl(root, g::SYSINFO, [ptr(info.as_mut_ptr()), 0, 0, 0, 0, 0]).is_err() {
        return (0, 0);
    }
    let word = |at: usize| {
        info.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_ne_bytes)
    };
    let unit = info
        .get(104..108)
        .and_then(|b| b.try_into().ok())
        .map_or(1, u32::from_ne_bytes)
        .max(1);
    (
        word(32).saturating_mul(u64::from(unit)),
        word(40).saturating_mul(u64::from(unit)),
    )
}
