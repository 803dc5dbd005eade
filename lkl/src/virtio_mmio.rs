//! virtio-mmio (version 2, "modern") transport for host device models, and the MMIO
//! dispatch the kernel's readl/writel land in.
//!
//! Devices are registered before boot; each gets a 4 KiB register window at a fixed
//! address (only ever used through readl/writel, never dereferenced) and an IRQ line,
//! described to the kernel with `virtio_mmio.device=` words. Queue notifications are
//! served synchronously on the thread that wrote the register (it holds the kernel's
//! CPU, so the completion interrupt simply stays pending until interrupts are enabled).
//! A queue the device fills on its own (a network device's receive queue) is instead
//! filled from the device's thread with [`fill`], which raises the interrupt itself.
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
/// Descriptors may point to tables of descriptors: a request of many segments (a large
/// network frame in pages) then takes one ring slot, not one per segment.
const F_INDIRECT_DESC: u64 = 1 << 28;
const QUEUE_SIZE: u32 = 256;
const STATUS_FAILED: u32 = 0x80;
/// Queues per device, at most (a network device without multiqueue has two).
const MAX_QUEUES: usize = 4;

/// What a device model implements; the transport handles registers and rings.
pub trait Device: Send {
    fn device_id(&self) -> u32;
    fn features(&self) -> u64;
    fn config(&self) -> &[u8];
    /// How many virtqueues the device has.
    fn queue_count(&self) -> usize {
        1
    }
    /// Whether the device takes `queue`'s buffers when it has something to put in them
    /// (with [`fill`]), not when the driver notifies.
    fn filled_by_device(&self, _queue: usize) -> bool {
        false
    }
    /// The driver made buffers available on a queue the device fills itself.
    fn buffers_added(&mut self, _queue: usize) {}
    /// Serve one descriptor chain of `queue`; returns the number of bytes written to the
    /// driver.
    fn serve(&mut self, queue: usize, chain: &mut Chain<'_>) -> u32;
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
    queues: [Queue; MAX_QUEUES],
    interrupt_status: u32,
}

static DEVICES: Mutex<Vec<Slot>> = Mutex::new(Vec::new());

#[derive(Debug)]
pub enum RegisterError {
    NoIrq,
    TooManyQueues,
}

/// Adds a device; call before the kernel boots. Returns its index.
pub fn register(dev: Box<dyn Device>) -> Result<usize, RegisterError> {
    if dev.queue_count() > MAX_QUEUES {
        return Err(RegisterError::TooManyQueues);
    }
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
        queues: Default::default(),
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
        let features = self.dev.features() | F_VERSION_1 | F_INDIRECT_DESC;
        let queue = self.selected();
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
            0x034 => queue.map_or(0, |_| QUEUE_SIZE),
            0x044 => queue.map_or(0, |q| q.ready),
            0x060 => self.interrupt_status,
            0x070 => self.status,
            _ => 0,
        })
    }

    /// The queue QueueSel names, if the device has it.
    fn selected(&self) -> Option<&Queue> {
        let index = usize::try_from(self.queue_sel).ok()?;
        (index < self.dev.queue_count()).then(|| &self.queues[index])
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
            0x050 => self.notify(r as usize),
            0x064 => self.interrupt_status &= !r,
            0x070 => {
                self.status = r;
                if self.status == 0 {
                    self.queues = Default::default();
                    self.drv_features = 0;
                }
            }
            _ => {
                let count = self.dev.queue_count();
                let Some(q) = usize::try_from(self.queue_sel)
                    .ok()
                    .filter(|&i| i < count)
                    .map(|i| &mut self.queues[i])
                else {
                    return;
                };
                match reg {
                    0x038 => q.num = r.min(QUEUE_SIZE),
                    0x044 => q.ready = r,
                    0x080 => q.desc = (q.desc & !0xffff_ffff) | v32,
                    0x084 => q.desc = low(q.desc) | (v32 << 32),
                    0x090 => q.avail = (q.avail & !0xffff_ffff) | v32,
                    0x094 => q.avail = low(q.avail) | (v32 << 32),
                    0x0a0 => q.used = (q.used & !0xffff_ffff) | v32,
                    0x0a4 => q.used = low(q.used) | (v32 << 32),
                    _ => {}
                }
            }
        }
    }

    /// The driver kicked `queue`: serve every new chain in its available ring, then raise
    /// the interrupt; or tell a device that fills the queue itself.
    fn notify(&mut self, queue: usize) {
        if queue >= self.dev.queue_count() {
            return;
        }
        if self.dev.filled_by_device(queue) {
            self.dev.buffers_added(queue);
            return;
        }
        let q = &mut self.queues[queue];
        let mut served = false;
        loop {
            match q.next_chain() {
                Next::Empty => break,
                Next::Malformed => {
                    self.status |= STATUS_FAILED;
                    return;
                }
                Next::Chain(head, mut chain) => {
                    let written = self.dev.serve(queue, &mut chain);
                    q.push_used(head, written);
                    served = true;
                }
            }
        }
        if served {
            self.interrupt_status |= 1;
            fence(Ordering::SeqCst);
            // SAFETY: raising an interrupt line we own.
            unsafe { ffi::lkl_trigger_irq(self.irq) };
        }
    }
}

enum Next<'a> {
    Empty,
    Malformed,
    Chain(u16, Chain<'a>),
}

impl Queue {
    /// The next chain the driver made available, without consuming it.
    fn peek<'a>(&self) -> Next<'a> {
        if self.ready == 0 || self.num == 0 {
            return Next::Empty;
        }
        let avail = host(self.avail);
        fence(Ordering::Acquire);
        // SAFETY: the avail ring lies in kernel RAM (ring addresses the driver gave us).
        let avail_idx = unsafe { core::ptr::read_volatile(avail.add(2).cast::<u16>()) };
        if avail_idx == self.last_avail {
            return Next::Empty;
        }
        let slot = usize::from(self.last_avail) % self.num as usize;
        // SAFETY: as above; `slot` < num.
        let head = unsafe { core::ptr::read_volatile(avail.add(4 + 2 * slot).cast::<u16>()) };
        match chain(self.desc, self.num, head) {
            Some(c) => Next::Chain(head, c),
            None => Next::Malformed,
        }
    }

    fn next_chain<'a>(&mut self) -> Next<'a> {
        let next = self.peek();
        if matches!(next, Next::Chain(..)) {
            self.last_avail = self.last_avail.wrapping_add(1);
        }
        next
    }

    fn push_used(&self, head: u16, written: u32) {
        let used = host(self.used);
        // SAFETY: the used ring lies in kernel RAM; the index is reduced modulo num.
        unsafe {
            let used_idx = core::ptr::read_volatile(used.add(2).cast::<u16>());
            let elem = used.add(4 + 8 * (usize::from(used_idx) % self.num as usize));
            core::ptr::write_volatile(elem.cast::<u32>(), u32::from(head));
            core::ptr::write_volatile(elem.add(4).cast::<u32>(), written);
            fence(Ordering::Release);
            core::ptr::write_volatile(used.add(2).cast::<u16>(), used_idx.wrapping_add(1));
        }
    }
}

/// What [`fill`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filled {
    /// Chains handed back to the driver.
    pub used: usize,
    /// The producer still had something when the driver's buffers ran out.
    pub starved: bool,
}

/// From a device's own thread: hands the driver's available buffers of `queue` to
/// `produce` one chain at a time until it returns `None` (nothing more to put in them)
/// or the buffers run out, then raises the interrupt. `produce` returns the bytes it
/// wrote into the chain.
pub fn fill(
    device: usize,
    queue: usize,
    produce: &mut dyn FnMut(&mut Chain<'_>) -> Option<u32>,
) -> Filled {
    let mut filled = Filled {
        used: 0,
        starved: false,
    };
    let irq = {
        let mut devices = DEVICES.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(slot) = devices.get_mut(device) else {
            return filled;
        };
        if queue >= slot.dev.queue_count() {
            return filled;
        }
        loop {
            let q = &mut slot.queues[queue];
            match q.peek() {
                Next::Empty => {
                    filled.starved = true;
                    break;
                }
                Next::Malformed => {
                    slot.status |= STATUS_FAILED;
                    break;
                }
                Next::Chain(head, mut chain) => {
                    let Some(written) = produce(&mut chain) else {
                        break;
                    };
                    q.last_avail = q.last_avail.wrapping_add(1);
                    q.push_used(head, written);
                    filled.used += 1;
                }
            }
        }
        if filled.used > 0 {
            slot.interrupt_status |= 1;
        }
        slot.irq
    };
    if filled.used > 0 {
        fence(Ordering::SeqCst);
        // SAFETY: raising an interrupt line we own, without holding the device lock (the
        // handler reads the interrupt status through it).
        unsafe { ffi::lkl_trigger_irq(irq) };
    }
    filled
}

fn host(dma: u64) -> *mut u8 {
    let addr: c_ulong = dma;
    // SAFETY: pure address arithmetic in the kernel.
    unsafe { ffi::lkl_dma_to_host(addr) }.cast()
}

/// Walks a descriptor chain into host slices; `None` for a malformed chain.
fn chain<'a>(desc: u64, num: u32, head: u16) -> Option<Chain<'a>> {
    const INDIRECT: u16 = 4;
    let mut out = Chain {
        readable: Vec::new(),
        writable: Vec::new(),
    };
    let (addr, len, flags, _) = descriptor(host(desc), num, head)?;
    if flags & INDIRECT != 0 {
        // One descriptor naming a table that holds the whole chain, starting at entry 0.
        let entries = len / 16;
        if len % 16 != 0 || entries == 0 {
            return None;
        }
        walk(host(addr), entries, 0, &mut out)?;
    } else {
        walk(host(desc), num, head, &mut out)?;
    }
    Some(out)
}

/// Descriptor `index` of a table of `num`: (address, length, flags, next).
fn descriptor(table: *mut u8, num: u32, index: u16) -> Option<(u64, u32, u16, u16)> {
    if u32::from(index) >= num {
        return None;
    }
    // SAFETY: the descriptor table lies in kernel RAM; index < num.
    Some(unsafe {
        let d = table.add(16 * usize::from(index));
        (
            core::ptr::read_volatile(d.cast::<u64>()),
            core::ptr::read_volatile(d.add(8).cast::<u32>()),
            core::ptr::read_volatile(d.add(12).cast::<u16>()),
            core::ptr::read_volatile(d.add(14).cast::<u16>()),
        )
    })
}

/// Follows `next` links through a table from `index`, collecting the buffers; a chain
/// longer than the table (a loop) or nesting another indirect table is malformed.
fn walk<'a>(table: *mut u8, num: u32, mut index: u16, out: &mut Chain<'a>) -> Option<()> {
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    const INDIRECT: u16 = 4;
    for _ in 0..num {
        let (addr, len, flags, next) = descriptor(table, num, index)?;
        if flags & INDIRECT != 0 {
            return None;
        }
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
            return Some(());
        }
        index = next;
    }
    None
}
