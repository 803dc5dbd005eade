//! What trampolines hand to kbox, and the registry that decides whether a trampoline entry
//! is genuine. Shared by both architectures so the checks exist once.
//!
//! A guest can reach the common entry stub with any site id it likes (it only has to jump
//! there). The registry binds each id to the one return address its trampoline's call
//! pushes; an entry whose id or return address does not match is refused before any
//! handler runs, and no trampoline contains a syscall instruction of its own.

use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Capacity of the site registry.
pub const MAX_SITES: usize = 1 << 15;
/// Returned to the guest for a refused entry.
pub const ENOSYS: i64 = -38;

/// Syscall numbers [`set_host_call`] covers (x86-64's and AArch64's are below 512).
pub const HOST_CALLS_LEN: usize = 512;
/// The calls a genuine entry makes on the host straight from the stub (one byte each, read
/// by both stubs' fast paths).
pub(crate) static HOST_CALLS: [AtomicBool; HOST_CALLS_LEN] =
    [const { AtomicBool::new(false) }; HOST_CALLS_LEN];

/// Whether a patched site's call `nr` is made on the host as it was made, by the stub
/// alone (the runtime decides which calls may: its policy allows them whatever their
/// arguments and it has nothing of its own to do for them).
pub fn set_host_call(nr: usize, straight: bool) {
    if let Some(b) = HOST_CALLS.get(nr) {
        b.store(straight, Ordering::Release);
    }
}

/// Whether [`set_host_call`] made `nr` a straight call.
pub fn is_host_call(nr: u64) -> bool {
    usize::try_from(nr)
        .ok()
        .and_then(|i| HOST_CALLS.get(i))
        .is_some_and(|b| b.load(Ordering::Acquire))
}

/// No call is made straight any more (the process is ending: every thread's next call must
/// reach the runtime).
pub fn clear_host_calls() {
    for b in &HOST_CALLS {
        b.store(false, Ordering::Release);
    }
}

/// One intercepted syscall, decoded from the registers the site's ABI uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyscallRequest {
    pub nr: u64,
    pub args: [u64; 6],
    pub site: u32,
}

/// Where a site takes its number from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteKind {
    /// The kernel ABI: rax on x86-64, x8 on AArch64.
    Syscall,
    /// A promoted cancellable-call site: number in x6, arguments in x0-x5 (AArch64).
    Cancel,
}

/// The decision kbox makes for a request: the value the guest sees in rax/x0.
pub type Handler = fn(&SyscallRequest) -> i64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    UnknownSite,
    WrongReturnAddress,
    NoHandler,
}

/// Read by the stubs' fast paths too (tramp.rs), with the same checks as [`validate`].
pub(crate) static RETURN_ADDRS: [AtomicU64; MAX_SITES] = [const { AtomicU64::new(0) }; MAX_SITES];
/// Read by the AArch64 stub's fast path (a promoted cancel site never runs straight).
pub(crate) static KINDS: [AtomicU8; MAX_SITES] = [const { AtomicU8::new(0) }; MAX_SITES];
static NEXT_ID: AtomicU32 = AtomicU32::new(0);
static REJECTED: AtomicU64 = AtomicU64::new(0);
static HANDLER: AtomicUsize = AtomicUsize::new(0);

/// Records a trampoline whose call into kbox returns to `return_addr`; returns its site id.
pub fn register_site(return_addr: u64, kind: SiteKind) -> Option<u32> {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let slot = usize::try_from(id).ok().filter(|&i| i < MAX_SITES)?;
    KINDS[slot].store(kind as u8, Ordering::Relaxed);
    // Published last: a concurrent lookup sees 0 (refused) until the kind is in place.
    RETURN_ADDRS[slot].store(return_addr, Ordering::Release);
    Some(id)
}

/// Installs the function every genuine request is passed to.
pub fn set_handler(h: Handler) {
    HANDLER.store(h as usize, Ordering::Release);
}

/// How many entries were refused so far.
pub fn rejected_count() -> u64 {
    REJECTED.load(Ordering::Relaxed)
}

/// Checks that `site` was registered with `return_addr` and returns its kind.
pub fn validate(site: u64, return_addr: u64) -> Result<(u32, SiteKind), Rejected> {
    let id = u32::try_from(site).map_err(|_| Rejected::UnknownSite)?;
    let slot = usize::try_from(id)
        .ok()
        .filter(|&i| i < MAX_SITES)
        .ok_or(Rejected::UnknownSite)?;
    let expected = RETURN_ADDRS[slot].load(Ordering::Acquire);
    if expected == 0 {
        return Err(Rejected::UnknownSite);
    }
    if expected != return_addr {
        return Err(Rejected::WrongReturnAddress);
    }
    let kind = if KINDS[slot].load(Ordering::Relaxed) == SiteKind::Cancel as u8 {
        SiteKind::Cancel
    } else {
        SiteKind::Syscall
    };
    Ok((id, kind))
}

/// [`validate`], counting a refusal.
pub fn admit(site: u64, return_addr: u64) -> Result<(u32, SiteKind), Rejected> {
    validate(site, return_addr).inspect_err(|_| {
        REJECTED.fetch_add(1, Ordering::Relaxed);
    })
}

/// Forgets every registered site: their code is gone (a new program replaced it, and no
/// thread of the old one is left). Ids are handed out from 0 again.
pub fn reset_sites() {
    let used = usize::try_from(NEXT_ID.swap(0, Ordering::AcqRel)).unwrap_or(MAX_SITES);
    for slot in RETURN_ADDRS.iter().take(used.min(MAX_SITES)) {
        slot.store(0, Ordering::Release);
    }
}

/// Validates an entry and runs the handler; `decode` builds the request for the site's kind.
pub fn dispatch(
    site: u64,
    return_addr: u64,
    decode: impl FnOnce(u32, SiteKind) -> SyscallRequest,
) -> Result<i64, Rejected> {
    let (id, kind) = admit(site, return_addr)?;
    let h = HANDLER.load(Ordering::Acquire);
    if h == 0 {
        REJECTED.fetch_add(1, Ordering::Relaxed);
        return Err(Rejected::NoHandler);
    }
    // SAFETY: HANDLER only ever holds 0 or a `Handler` stored by set_handler.
    let handler: Handler = unsafe { core::mem::transmute::<usize, Handler>(h) };
    Ok(handler(&decode(id, kind)))
}
