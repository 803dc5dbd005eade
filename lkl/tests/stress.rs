//! Concurrency stress for the scheduling model: task churn from many host threads at
//! once, and blocking pipe ping-pong between tasks on different threads, while the
//! timer interrupt keeps arriving. Every result is checked.
mod common;

use common::mount_proc;
use kbox_lkl::sys::{self, Syscalls};
use kbox_lkl::{BootConfig, Errno, Kernel, Task, TaskKind, sysno};
use std::ffi::CString;
use std::sync::{Arc, OnceLock};

fn kernel() -> &'static Kernel {
    static KERNEL: OnceLock<Kernel> = OnceLock::new();
    KERNEL.get_or_init(|| Kernel::boot(&BootConfig::default()).expect("kernel boots"))
}

fn pipe(task: &Task) -> (i32, i32) {
    let mut fds = [0i32; 2];
    task.syscall(sysno::PIPE2, [fds.as_mut_ptr() as usize, 0, 0, 0, 0, 0])
        .expect("pipe2");
    (fds[0], fds[1])
}

#[test]
fn eight_threads_create_use_and_end_tasks_at_once() {
    let k = kernel();
    let workers: Vec<_> = (0..8)
        .map(|w| {
            std::thread::spawn(move || {
                let k = kernel();
                for round in 0..150 {
                    let task = k.create_task(None, TaskKind::Process).expect("create task");
                    let path = CString::new(format!("/churn-{w}-{round}")).expect("path");
                    let fd = task
                        .open(&path, sys::O_RDWR | sys::O_CREAT, 0o600)
                        .expect("open");
                    let word = format!("{w}:{round}");
                    assert_eq!(task.write(fd, word.as_bytes()), Ok(word.len()));
                    let mut back = [0u8; 32];
                    assert_eq!(task.pread(fd, &mut back, 0), Ok(word.len()));
                    assert_eq!(&back[..word.len()], word.as_bytes());
                    let child = k.create_task(Some(&task), TaskKind::Process).expect("fork");
                    assert_eq!(child.close(fd), Ok(()));
                    assert_eq!(task.close(fd), Ok(()));
                    assert_eq!(task.unlink(&path), Ok(()));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    assert!(k.getpid().is_ok());
}

#[test]
fn blocking_ping_pong_between_tasks_on_different_threads() {
    let k = kernel();
    let a = Arc::new(k.create_task(None, TaskKind::Process).expect("task a"));
    let (a_rd, b_wr) = pipe(&a);
    let (b_rd, a_wr) = pipe(&a);
    // b is a fork of a after both pipes exist, so it holds all four ends too.
    let b = k.create_task(Some(&a), TaskKind::Process).expect("task b");
    let rounds = 2000u32;
    let pong = std::thread::spawn(move || {
        let mut buf = [0u8; 4];
        for i in 0..rounds {
            assert_eq!(b.read(b_rd, &mut buf), Ok(4));
            assert_eq!(u32::from_le_bytes(buf), i);
            assert_eq!(b.write(b_wr, &(i + 1).to_le_bytes()), Ok(4));
        }
    });
    let mut buf = [0u8; 4];
    for i in 0..rounds {
        assert_eq!(a.write(a_wr, &i.to_le_bytes()), Ok(4));
        assert_eq!(a.read(a_rd, &mut buf), Ok(4));
        assert_eq!(u32::from_le_bytes(buf), i + 1);
    }
    pong.join().expect("pong");
}

#[test]
fn a_task_entered_by_two_threads_at_once_is_busy_not_broken() {
    let k = kernel();
    mount_proc(k);
    let task = Arc::new(k.create_task(None, TaskKind::Process).expect("task"));
    let pid = task.getpid().expect("getpid");
    let (rd, wr) = pipe(&task);
    let reader = {
        let task = Arc::clone(&task);
        std::thread::spawn(move || {
            let mut buf = [0u8; 1];
            task.read(rd, &mut buf)
        })
    };
    // Once the reader is parked inside the task, a second entry must be refused.
    let mut busy = false;
    for _ in 0..400 {
        if task.getpid() == Err(Errno::EBUSY) {
            busy = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(
        busy,
        "a second thread entered a task that is inside a syscall"
    );
    // Release the reader from outside the task: through its fd in /proc.
    let path = CString::new(format!("/proc/{pid}/fd/{wr}")).expect("path");
    let fd = k
        .open(&path, sys::O_WRONLY, 0)
        .expect("open the pipe through /proc");
    assert_eq!(k.write(fd, b"x"), Ok(1));
    assert_eq!(reader.join().expect("reader"), Ok(1));
    assert_eq!(task.getpid(), Ok(pid), "the task is usable again");
    k.close(fd).expect("close");
}
