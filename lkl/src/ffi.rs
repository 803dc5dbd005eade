//! The C boundary of the kernel library: the host-operations table (mirror of
//! `arch/lkl/include/asm/host_ops.h`, same order) and the exported functions.
use core::ffi::{c_char, c_int, c_long, c_ulong, c_ulonglong, c_void};

#[repr(C)]
pub struct HostOps {
    pub print: unsafe extern "C" fn(*const c_char, c_int),
    pub panic: unsafe extern "C" fn(),
    pub sem_alloc: unsafe extern "C" fn(c_int) -> *mut c_void,
    pub sem_free: unsafe extern "C" fn(*mut c_void),
    pub sem_up: unsafe extern "C" fn(*mut c_void),
    pub sem_down: unsafe extern "C" fn(*mut c_void),
    pub mutex_alloc: unsafe extern "C" fn() -> *mut c_void,
    pub mutex_free: unsafe extern "C" fn(*mut c_void),
    pub mutex_lock: unsafe extern "C" fn(*mut c_void),
    pub mutex_unlock: unsafe extern "C" fn(*mut c_void),
    pub thread_create:
        unsafe extern "C" fn(unsafe extern "C" fn(*mut c_void), *mut c_void) -> c_int,
    pub thread_exit: unsafe extern "C" fn(),
    pub thread_self: unsafe extern "C" fn() -> c_ulong,
    pub tls_alloc: unsafe extern "C" fn(Option<unsafe extern "C" fn(*mut c_void)>) -> *mut c_void,
    pub tls_set: unsafe extern "C" fn(*mut c_void, *mut c_void) -> c_int,
    pub tls_get: unsafe extern "C" fn(*mut c_void) -> *mut c_void,
    pub mem_alloc: unsafe extern "C" fn(c_ulong) -> *mut c_void,
    pub mem_free: unsafe extern "C" fn(*mut c_void),
    pub page_alloc: unsafe extern "C" fn(c_ulong) -> *mut c_void,
    pub time: unsafe extern "C" fn() -> c_ulonglong,
    pub realtime: unsafe extern "C" fn() -> c_ulonglong,
    pub timer_alloc:
        unsafe extern "C" fn(unsafe extern "C" fn(*mut c_void), *mut c_void) -> *mut c_void,
    pub timer_set_oneshot: unsafe extern "C" fn(*mut c_void, c_ulonglong),
    pub timer_cancel: unsafe extern "C" fn(*mut c_void),
    pub iomem_access: unsafe extern "C" fn(c_ulong, *mut c_void, c_int, c_int) -> c_int,
    pub memcpy: unsafe extern "C" fn(*mut c_void, *const c_void, c_ulong) -> *mut c_void,
    pub memset: unsafe extern "C" fn(*mut c_void, c_int, c_ulong) -> *mut c_void,
    pub memmove: unsafe extern "C" fn(*mut c_void, *const c_void, c_ulong) -> *mut c_void,
    pub devices_cmdline: unsafe extern "C" fn() -> *const c_char,
}

unsafe extern "C" {
    pub fn lkl_init(ops: *const HostOps) -> c_int;
    pub fn lkl_start_kernel(fmt: *const c_char, ...) -> c_int;
    pub fn lkl_syscall(no: c_long, params: *mut c_long) -> c_long;
    pub fn lkl_sys_halt() -> c_long;
    pub fn lkl_task_create_pid(
        parent: *mut c_void,
        flags: c_ulong,
        pid: c_int,
        out: *mut *mut c_void,
    ) -> c_long;
    pub fn lkl_task_syscall(task: *mut c_void, no: c_long, params: *mut c_long) -> c_long;
    pub fn lkl_task_destroy(task: *mut c_void) -> c_long;
    pub fn lkl_task_interrupt(task: *mut c_void) -> c_long;
    #[allow(dead_code, reason = "for host device models")]
    pub fn lkl_trigger_irq(irq: c_int);
    #[allow(dead_code, reason = "for host device models")]
    pub fn lkl_get_free_irq(user: *const c_char) -> c_int;
    #[allow(dead_code, reason = "for host device models")]
    pub fn lkl_dma_to_host(phys: c_ulong) -> *mut c_void;
}
