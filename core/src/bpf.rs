//! Builds the classic-BPF seccomp filter kbox installs on the guest, without libseccomp.
//!
//! Layout: check `seccomp_data.arch` (kill on mismatch), load `nr`, on x86_64 kill every
//! number from the x32 bit up (x32 calls share AUDIT_ARCH_X86_64, so a default of "allow"
//! would otherwise let them bypass the rules; no 64-bit syscall lives up there), then a balanced binary search over the syscall-number line. The line is cut
//! into segments where the action changes (gaps take the default), so each leaf is a lone
//! `ret` and each inner node one `jge`. Conditional jumps only reach 255 instructions
//! ahead, so a node whose left subtree is larger jumps to its right subtree through a
//! `ja`, whose offset is 32 bits; that keeps any number of rules within reach.

use heapless::Vec;

use crate::Errno;

/// `struct sock_filter` from `<linux/filter.h>`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockFilter {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

static_assertions::assert_eq_size!(SockFilter, u64);
static_assertions::const_assert_eq!(core::mem::offset_of!(SockFilter, k), 4);

// Opcodes (linux/bpf_common.h) and seccomp return values (linux/seccomp.h).
/// BPF_LD | BPF_W | BPF_ABS
pub const BPF_LD_W_ABS: u16 = 0x20;
/// BPF_JMP | BPF_JA
pub const BPF_JMP_JA: u16 = 0x05;
/// BPF_JMP | BPF_JEQ | BPF_K
pub const BPF_JMP_JEQ_K: u16 = 0x15;
/// BPF_JMP | BPF_JGE | BPF_K
pub const BPF_JMP_JGE_K: u16 = 0x35;
/// BPF_RET | BPF_K
pub const BPF_RET_K: u16 = 0x06;

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_KILL_THREAD: u32 = 0;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_USER_NOTIF: u32 = 0x7fc0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

/// Offsets in `struct seccomp_data`.
pub const SECCOMP_DATA_NR: u32 = 0;
pub const SECCOMP_DATA_ARCH: u32 = 4;

/// The kernel's limit on a filter's length (BPF_MAXINSNS).
pub const MAX_INSNS: usize = 4096;
/// Rules one filter may hold; far above the ~460 syscalls of either arch.
pub const MAX_RULES: usize = 1024;
/// x86_64 numbers with this bit set are x32-ABI syscalls, which report the same
/// AUDIT_ARCH as 64-bit ones.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The `AUDIT_ARCH_*` value a filter accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditArch {
    X86_64,
    Aarch64,
}

impl AuditArch {
    pub const fn value(self) -> u32 {
        match self {
            // EM_X86_64 (62) | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
            Self::X86_64 => 0xc000_003e,
            // EM_AARCH64 (183) | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
            Self::Aarch64 => 0xc000_00b7,
        }
    }
}

/// What the filter does with a syscall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Allow,
    /// Hand the call to the supervisor (SECCOMP_RET_USER_NOTIF).
    Notify,
    /// Raise SIGSYS in the calling thread with this value in `si_errno`.
    Trap(u16),
    /// Fail the call with this errno without running it.
    Errno(Errno),
    /// Allow, and log it in the host's audit log.
    Log,
    KillThread,
    KillProcess,
}

impl Action {
    /// The filter's return value for this action.
    pub const fn ret_value(self) -> u32 {
        match self {
            Self::Allow => RET_ALLOW,
            Self::Notify => RET_USER_NOTIF,
            Self::Trap(data) => RET_TRAP | data as u32,
            Self::Errno(e) => RET_ERRNO | e.get() as u32,
            Self::Log => RET_LOG,
            Self::KillThread => RET_KILL_THREAD,
            Self::KillProcess => RET_KILL_PROCESS,
        }
    }
}

/// One syscall number and what to do with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub nr: u32,
    pub action: Action,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BpfError {
    /// More than [`MAX_RULES`] rules.
    TooManyRules { given: usize },
    /// Two rules name the same syscall; which one wins would be an accident of order.
    DuplicateRule { nr: u32 },
    /// The program does not fit the output buffer (or the kernel's 4096 limit).
    ProgramTooLong { needed: usize, capacity: usize },
}

/// Where the action changes on the number line: numbers from `start` up to the next
/// segment's start get `action`.
#[derive(Clone, Copy)]
struct Segment {
    start: u32,
    action: Action,
}

type Segments = Vec<Segment, { 2 * MAX_RULES + 1 }>;

/// Compiles the filter into `out`, returning how many instructions it used.
pub fn compile(
    arch: AuditArch,
    rules: &[Rule],
    default: Action,
    out: &mut [SockFilter],
) -> Result<usize, BpfError> {
    let mut sorted: Vec<Rule, MAX_RULES> =
        Vec::from_slice(rules).map_err(|_| BpfError::TooManyRules { given: rules.len() })?;
    sorted.sort_unstable_by_key(|r| r.nr);
    if let Some(w) = sorted.windows(2).find(|w| w[0].nr == w[1].nr) {
        return Err(BpfError::DuplicateRule { nr: w[0].nr });
    }
    let segments = segments(&sorted, default);

    let mut prologue: Vec<SockFilter, 6> = Vec::new();
    let mut push = |insn| prologue.push(insn).ok();
    push(stmt(BPF_LD_W_ABS, SECCOMP_DATA_ARCH));
    push(jump(BPF_JMP_JEQ_K, arch.value(), 1, 0));
    push(stmt(BPF_RET_K, RET_KILL_PROCESS));
    push(stmt(BPF_LD_W_ABS, SECCOMP_DATA_NR));
    if arch == AuditArch::X86_64 {
        push(jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1));
        push(stmt(BPF_RET_K, RET_KILL_PROCESS));
    }

    let needed = prologue.len() + tree_len(&segments);
    let capacity = out.len().min(MAX_INSNS);
    if needed > capacity {
        return Err(BpfError::ProgramTooLong { needed, capacity });
    }
    out[..prologue.len()].copy_from_slice(&prologue);
    let end = emit_tree(&segments, &mut out[prologue.len()..needed]);
    debug_assert_eq!(end, needed - prologue.len());
    Ok(needed)
}

/// Cuts `0..=u32::MAX` into segments of equal action; `rules` is sorted and unique.
fn segments(rules: &[Rule], default: Action) -> Segments {
    fn push(segs: &mut Segments, start: u32, action: Action) {
        if segs.last().is_some_and(|s| s.start == start) {
            segs.pop();
        }
        if segs.last().is_some_and(|s| s.action == action) {
            return;
        }
        // Capacity is 2 per rule plus one, and each rule pushes at most two segments.
        let _ = segs.push(Segment { start, action });
    }
    let mut segs = Segments::new();
    push(&mut segs, 0, default);
    for r in rules {
        push(&mut segs, r.nr, r.action);
        if let Some(after) = r.nr.checked_add(1) {
            push(&mut segs, after, default);
        }
    }
    segs
}

fn tree_len(segs: &[Segment]) -> usize {
    if segs.len() <= 1 {
        return 1;
    }
    let (left, right) = segs.split_at(segs.len() / 2);
    let l = tree_len(left);
    node_len(l) + l + tree_len(right)
}

/// Instructions of an inner node whose left subtree is `left_len` long.
fn node_len(left_len: usize) -> usize {
    if u8::try_from(left_len).is_ok() { 1 } else { 2 }
}

/// Writes the search tree over `segs` at the start of `out`; returns its length.
fn emit_tree(segs: &[Segment], out: &mut [SockFilter]) -> usize {
    let [only] = segs else {
        let (left, right) = segs.split_at(segs.len() / 2);
        let pivot = right[0].start;
        let left_len = tree_len(left);
        let mut at = match u8::try_from(left_len) {
            Ok(jt) => {
                out[0] = jump(BPF_JMP_JGE_K, pivot, jt, 0);
                1
            }
            Err(_) => {
                out[0] = jump(BPF_JMP_JGE_K, pivot, 0, 1);
                // left_len < MAX_INSNS, checked by compile() before emitting.
                out[1] = stmt(BPF_JMP_JA, u32::try_from(left_len).unwrap_or(u32::MAX));
                2
            }
        };
        at += emit_tree(left, &mut out[at..]);
        at += emit_tree(right, &mut out[at..]);
        return at;
    };
    out[0] = stmt(BPF_RET_K, only.action.ret_value());
    1
}

const fn stmt(code: u16, k: u32) -> SockFilter {
    SockFilter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> SockFilter {
    SockFilter { code, jt, jf, k }
}
