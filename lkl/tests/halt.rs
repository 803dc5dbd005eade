//! Halting: a process of its own, since a halted kernel stays halted.
use kbox_lkl::sys::{self, Syscalls};
use kbox_lkl::{BootConfig, Errno, Kernel};

#[test]
fn halt_returns_and_later_syscalls_fail_with_eshutdown() {
    let k = Kernel::boot(&BootConfig::default()).expect("boot");
    let fd = k
        .open(c"/f", sys::O_RDWR | sys::O_CREAT, 0o600)
        .expect("create");
    k.write(fd, b"data").expect("write");
    let worker = std::thread::spawn(|| ());
    worker.join().expect("thread");
    k.halt().expect("halt");
    assert_eq!(k.getpid(), Err(Errno::ESHUTDOWN));
}
