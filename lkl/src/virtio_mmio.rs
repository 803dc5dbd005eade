//! virtio-mmio (version 2, "modern") transport for host device models, and the MMIO
//! dispatch the kernel's readl/writel land in.
//!
//! Devices are registered before boot; each gets a 4 KiB register window at a fixed
//! address (only ever used through readl/writel, never dereferenced) and an IRQ line,
//! described to the kernel with `virtio_mmio.device=` words. Queue notifications are
//! served synchronously on the thread that wrote the register (it holds the kernel's
//! CPU, so the completion interrupt simply stays pending until interrupts are enabled).
use crate::ffi;
use core::ffi::{c_int, c_ulong, c_void};
use std::sync::atomic::{Ordering, fence};
use std::sync::{Mutex, PoisonError};

const WINDOW_BASE: u64 = 0x1_0000_0000;
const WINDOW_SIZE: u64 = 0x1000;
const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION_MODERN: u32 = 2;
const VENDOR: u32 = 0x786f_626b; // "kbox"
pub const F_VERSION_1: u64 = 1 << 32;
const QUEUE_SIZE: u32 = 128;
const STATUS_FAILED: u32 = 0x80;

/// What a device model implements; the transport handles registers and rings.
pub trait Device: Send {
    fn device_id(&self) -> u32;
    fn features(&self) -> u64;
    fn config(&self) -> &[u8];
    /// Serve one descriptor chain; returns the number of bytes written to the driver.
    fn serve(&mut self, chain: &mut Chain<'_>) -> u32;
}

/// One descriptor chain, as host slices. Addresses come from the kernel's own memory.
pub struct Chain<'a> {
    pub readable: Vec<&'a [u8]>,
    pub writable: Vec<&'a mut [u8]>,
}

#[derive(Default)]
struct Queue {
    num: u32,
    ready: u32,
    desc: u64,
    avail: u64,
    used: u64,
    last_avail: u16,
}

struct Slot {
    dev: Box<dyn Device>,
    irq: c_int,
    status: u32,
    dev_feat_sel: u32,
    drv_feat_sel: u32,
    drv_features: u64,
    queue_sel: u32,
    queue: Queue,
    interrupt_status: u32,
}

static DEVICES: Mutex<Vec<Slot>> = Mutex::new(Vec::new());

#[derive(Debug)]
pub enum RegisterError {
    NoIrq,
}

/// Adds a device; call before the kernel boots. Returns its index.
pub fn register(dev: Box<dyn Device>) -> Result<usize, RegisterError> {
    // SAFETY: the name is a static C string; the call only claims a bit in a bitmap.
    let irq = unsafe { ffi::lkl_get_free_irq(c"virtio".as_ptr()) };
    if irq < 0 {
        return Err(RegisterError::NoIrq);
    }
    let mut devices = DEVICES.lock().unwrap_or_else(PoisonError::into_inner);
    devices.push(Slot {
        dev,
        irq,
        status: 0,
        dev_feat_sel: 0,
        drv_feat_sel: 0,
        drv_features: 0,
        queue_sel: 0,
        queue: Queue::default(),
        interrupt_status: 0,
    });
    Ok(devices.len() - 1)
}

/// How many devices are registered.
pub fn count() -> usize {
    DEVICES.lock().unwrap_or_else(PoisonError::into_inner).len()
}

static CMDLINE: std::sync::OnceLock<std::ffi::CString> = std::sync::OnceLock::new();

/// Whether the kernel has read the device list (it boots with it; no hotplug).
pub fn frozen() -> bool {
    CMDLINE.get().is_some()
}

/// `virtio_mmio.device=` words for every registered device, read once by the booting
/// kernel; from then on the list is fixed.
pub fn freeze_cmdline() -> &'static std::ffi::CStr {
    CMDLINE.get_or_init(|| {
        let devices = DEVICES.lock().unwrap_or_else(PoisonError::into_inner);
        let words: String = devices
            .iter()
            .enumerate()
            .map(|(i, slot)| {
                format!(
                    "virtio_mmio.device=4K@{:#x}:{} ",
                    WINDOW_BASE + WINDOW_SIZE * i as u64,
                    slot.irq
                )
            })
            .collect();
        // Built from numbers only: no NUL byte.
        std::ffi::CString::new(words).unwrap_or_default()
    })
}

/// The kernel's MMIO access: `value` points to `size` bytes to fill (read) or take (write).
pub fn access(addr: c_ulong, value: *mut c_void, size: c_int, write: bool) -> c_int {
    let Some(offset) = addr.checked_sub(WINDOW_BASE) else {
        return -1;
    };
    let Ok(index) = usize::try_from(offset / WINDOW_SIZE) else {
        return -1;
    };
    let reg = offset % WINDOW_SIZE;
    let Ok(size) = usize::try_from(size) else {
        return -1;
    };
    if !matches!(size, 1 | 2 | 4 | 8) {
        return -1;
    }
    let mut devices = DEVICES.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(slot) = devices.get_mut(index) else {
        return -1;
    };
    let mut bytes = [0u8; 8];
    if write {
        // SAFETY: the kernel passes `size` readable bytes.
        unsafe { core::ptr::copy_nonoverlapping(value.cast::<u8>(), bytes.as_mut_ptr(), size) };
        slot.write(reg, u64::from_le_bytes(bytes));
    } else {
        bytes = slot.read(reg, size).to_le_bytes();
        // SAFETY: the kernel passes `size` writable bytes.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), value.cast::<u8>(), size) };
    }
    0
}

fn low(v: u64) -> u64 {
    v & 0xffff_ffff
}

impl Slot {
    fn read(&self, reg: u64, size: usize) -> u64 {
        if reg >= 0x100 {
            let config = self.dev.config();
            let Ok(start) = usize::try_from(reg - 0x100) else {
                return 0;
            };
            let mut bytes = [0u8; 8];
            for (i, b) in bytes.iter_mut().take(size).enumerate() {
                *b = config.get(start + i).copied().unwrap_or(0);
            }
            return u64::from_le_bytes(bytes);
        }
        let features = self.dev.features() | F_VERSION_1;
        u64::from(match reg {
            0x000 => MAGIC,
            0x004 => VERSION_MODERN,
            0x008 => self.dev.device_id(),
            0x00c => VENDOR,
            0x010 => match self.dev_feat_sel {
                0 => u32::try_from(low(features)).unwrap_or_default(),
                1 => u32::try_from(features >> 32).unwrap_or_default(),
                _ => 0,
            },
            0x034 => QUEUE_SIZE,
            0x044 => self.queue.ready,
            0x060 => self.interrupt_status,
            0x070 => self.status,
            _ => 0,
        })
    }

    fn write(&mut self, reg: u64, value: u64) {
        // Registers are 32 bits wide; the driver writes them with writel.
        let r = u32::try_from(low(value)).unwrap_or_default();
        let v32 = u64::from(r);
        match reg {
            0x014 => self.dev_feat_sel = r,
            0x020 => {
                let shift = if self.drv_feat_sel == 1 { 32 } else { 0 };
                self.drv_features |= v32 << shift;
            }
            0x024 => self.drv_feat_sel = r,
            0x030 => self.queue_sel = r,
            0x038 => self.queue.num = r,
            0x044 => self.queue.ready = r,
            0x050 => self.notify(),
            0x064 => self.interrupt_status &= !r,
            0x070 => {
                self.status = r;
                if self.status == 0 {
                    self.queue = Queue::default();
                    self.drv_features = 0;
                }
            }
            0x080 => self.queue.desc = (self.queue.desc & !0xffff_ffff) | v32,
            0x084 => self.queue.desc = low(self.queue.desc) | (v32 << 32),
            0x090 => self.queue.avail = (self.queue.avail & !0xffff_ffff) | v32,
            0x094 => self.queue.avail = low(self.queue.avail) | (v32 << 32),
            0x0a0 => self.queue.used = (self.queue.used & !0xffff_ffff) | v32,
            0x0a4 => self.queue.used = low(self.queue.used) | (v32 << 32),
            _ => {}
        }
    }

    /// Serve every new chain in the available ring, then raise the interrupt.
    fn notify(&mut self) {
        let q = &mut self.queue;
        if q.ready == 0 || q.num == 0 || self.queue_sel != 0 {
            return;
        }
        let num = q.num;
        let avail = host(q.avail);
        let used = host(q.used);
        let mut served = false;
        loop {
            fence(Ordering::Acquire);
            // SAFETY: the avail ring lies in kernel RAM (ring addresses the driver gave us).
            let avail_idx = unsafe { core::ptr::read_volatile(avail.add(2).cast::<u16>()) };
            if avail_idx == q.last_avail {
                break;
            }
            let slot = usize::from(q.last_avail) % num as usize;
            // SAFETY: as above; `slot` < num.
            let head = unsafe { core::ptr::read_volatile(avail.add(4 + 2 * slot).cast::<u16>()) };
            let written = match chain(q.desc, num, head) {
                Some(mut chain) => self.dev.serve(&mut chain),
                None => {
                    self.status |= STATUS_FAILED;
                    return;
                }
            };
            // SAFETY: the used ring lies in kernel RAM; `slot` < num.
            unsafe {
                let used_idx = core::ptr::read_volatile(used.add(2).cast::<u16>());
                let elem = used.add(4 + 8 * (usize::from(used_idx) % num as usize));
                core::ptr::write_volatile(elem.cast::<u32>(), u32::from(head));
                core::ptr::write_volatile(elem.add(4).cast::<u32>(), written);
                fence(Ordering::Release);
                core::ptr::write_volatile(used.add(2).cast::<u16>(), used_idx.wrapping_add(1));
            }
            q.last_avail = q.last_avail.wrapping_add(1);
            served = true;
        }
        if served {
            self.interrupt_status |= 1;
            fence(Ordering::SeqCst);
            // SAFETY: raising an interrupt line we own.
            unsafe { ffi::lkl_trigger_irq(self.irq) };
        }
    }
}

fn host(dma: u64) -> *mut u8 {
    let addr: c_ulong = dma;
    // SAFETY: pure address arithmetic in the kernel.
    unsafe { ffi::lkl_dma_to_host(addr) }.cast()
}

/// Walks a descriptor chain into host slices; `None` for a malformed chain.
fn chain<'a>(desc: u64, num: u32, head: u16) -> Option<Chain<'a>> {
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    let table = host(desc);
    let mut out = Chain {
        readable: Vec::new(),
        writable: Vec::new(),
    };
    let mut index = head;
    for _ in 0..num {
        if u32::from(index) >= num {
            return None;
        }
        // SAFETY: the descriptor table lies in kernel RAM; index < num.
        let (addr, len, flags, next) = unsafe {
            let d = table.add(16 * usize::from(index));
            (
                core::ptr::read_volatile(d.cast::<u64>()),
                core::ptr::read_volatile(d.add(8).cast::<u32>()),
                core::ptr::read_volatile(d.add(12).cast::<u16>()),
                core::ptr::read_volatile(d.add(14).cast::<u16>()),
            )
        };
        let len = usize::try_from(len).ok()?;
        let ptr = host(addr);
        if flags & WRITE != 0 {
            // SAFETY: a buffer the driver handed to the device for this request.
            out.writable
                .push(unsafe { core::slice::from_raw_parts_mut(ptr, len) });
        } else {
            // SAFETY: as above, read-only for the device.
            out.readable
                .push(unsafe { core::slice::from_raw_parts(ptr, len) });
        }
        if flags & NEXT == 0 {
            return Some(out);
        }
        index = next;
    }
    None
}
