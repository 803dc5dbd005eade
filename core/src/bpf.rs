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
/// BPF_JMP | BPF_JSET | BPF_K
pub const BPF_JMP_JSET_K: u16 = 0x45;
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
/// `args[0]`; each argument is 8 bytes, its low 32 bits first on the little-endian arches
/// kbox supports.
pub const SECCOMP_DATA_ARGS: u32 = 16;
/// Argument checks one filter may hold.
pub const MAX_ARG_RULES: usize = 32;

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

/// A test on the low 32 bits of one syscall argument (flags and ioctl commands are there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgTest {
    /// Any of these bits is set.
    AnyBit(u32),
    /// Equal to this value.
    Equals(u32),
    /// At least `low` and below `high` (a block of ioctl numbers).
    InRange { low: u32, high: u32 },
}

impl ArgTest {
    /// Instructions of a check with this test: a load, the test, a `ret`.
    const fn insns(self) -> usize {
        match self {
            Self::InRange { .. } => 4,
            Self::AnyBit(_) | Self::Equals(_) => 3,
        }
    }
}

/// For syscall `nr`, when argument `arg` (0..6) passes `test`, `then` applies instead of the
/// syscall's own action. Several checks on one syscall are tried in the order given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArgRule {
    pub nr: u32,
    pub arg: u8,
    pub test: ArgTest,
    pub then: Action,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BpfError {
    /// More than [`MAX_RULES`] rules.
    TooManyRules { given: usize },
    /// Two rules name the same syscall; which one wins would be an accident of order.
    DuplicateRule { nr: u32 },
    /// The program does not fit the output buffer (or the kernel's 4096 limit).
    ProgramTooLong { needed: usize, capacity: usize },
    /// More than [`MAX_ARG_RULES`] argument checks, or one on an argument past the sixth.
    BadArgRules,
}

/// What a leaf of the search tree does: return an action, or test arguments first
/// (`checks` is the range of the sorted argument rules for that one syscall).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Leaf {
    Ret(Action),
    Checked {
        base: Action,
        first: usize,
        count: usize,
        /// Instructions of the leaf: its checks' and the final `ret`.
        insns: usize,
    },
}

/// Where the leaf changes on the number line: numbers from `start` up to the next
/// segment's start get `leaf`.
#[derive(Clone, Copy)]
struct Segment {
    start: u32,
    leaf: Leaf,
}

type Segments = Vec<Segment, { 2 * (MAX_RULES + MAX_ARG_RULES) + 1 }>;

/// Compiles the filter into `out`, returning how many instructions it used.
pub fn compile(
    arch: AuditArch,
    rules: &[Rule],
    default: Action,
    out: &mut [SockFilter],
) -> Result<usize, BpfError> {
    compile_checked(arch, rules, &[], default, out)
}

/// [`compile`] with argument checks: a syscall named in `arg_rules` gets, at its leaf, a
/// test of each argument in turn before its own action (or the default).
pub fn compile_checked(
    arch: AuditArch,
    rules: &[Rule],
    arg_rules: &[ArgRule],
    default: Action,
    out: &mut [SockFilter],
) -> Result<usize, BpfError> {
    let mut sorted: Vec<Rule, MAX_RULES> =
        Vec::from_slice(rules).map_err(|_| BpfError::TooManyRules { given: rules.len() })?;
    sorted.sort_unstable_by_key(|r| r.nr);
    if let Some(w) = sorted.windows(2).find(|w| w[0].nr == w[1].nr) {
        return Err(BpfError::DuplicateRule { nr: w[0].nr });
    }
    let mut checks: Vec<ArgRule, MAX_ARG_RULES> =
        Vec::from_slice(arg_rules).map_err(|_| BpfError::BadArgRules)?;
    if checks.iter().any(|c| c.arg >= 6) {
        return Err(BpfError::BadArgRules);
    }
    // A stable insertion sort (no allocator here): checks on one syscall keep their order.
    for i in 1..checks.len() {
        let mut j = i;
        while j > 0 && checks[j - 1].nr > checks[j].nr {
            checks.swap(j - 1, j);
            j -= 1;
        }
    }
    let segments = segments(&sorted, &checks, default);

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
    let end = emit_tree(&segments, &checks, &mut out[prologue.len()..needed]);
    debug_assert_eq!(end, needed - prologue.len());
    Ok(needed)
}

/// Offsets of `seccomp_data.instruction_pointer`'s halves (the address after the syscall
/// instruction).
pub const SECCOMP_DATA_IP_LO: u32 = 8;
pub const SECCOMP_DATA_IP_HI: u32 = 12;
/// Exact call sites and code regions one gate may name.
pub const MAX_GATE_ENTRIES: usize = 64;

/// Compiles a filter that decides by *where* a call is made, not what it is (the in-process
/// tiers: kbox's own code may call the host; the guest's calls trap). A call whose
/// instruction pointer equals one of `sites` gets that site's action; one from inside a
/// `regions` range `[start, end)` gets that region's action (the first that holds it);
/// every other call gets `outside`. The arch check and the x32 refusal are those of
/// [`compile`]. A region is split where it crosses a 4 GiB boundary, so each piece compares
/// one high half.
pub fn compile_ip_gate(
    arch: AuditArch,
    sites: &[(u64, Action)],
    regions: &[(u64, u64, Action)],
    outside: Action,
    out: &mut [SockFilter],
) -> Result<usize, BpfError> {
    let mut pieces: Vec<(u32, u32, u64, Action), MAX_GATE_ENTRIES> = Vec::new();
    for &(start, end, action) in regions {
        let mut at = start;
        while at < end {
            let high = at >> 32;
            let block_end = (high + 1) << 32;
            let piece_end = end.min(block_end);
            // Halves: the high word, the low start, the low end (2^32 when the piece runs to
            // the block's end, which every low word is below).
            pieces
                .push((
                    low_word(high),
                    low_word(at),
                    piece_end - (high << 32),
                    action,
                ))
                .map_err(|_| BpfError::TooManyRules {
                    given: regions.len(),
                })?;
            at = piece_end;
        }
    }
    if sites.len() > MAX_GATE_ENTRIES {
        return Err(BpfError::TooManyRules { given: sites.len() });
    }
    let prologue = if arch == AuditArch::X86_64 { 6 } else { 3 };
    let needed = prologue + 5 * sites.len() + 6 * pieces.len() + 1;
    let capacity = out.len().min(MAX_INSNS);
    if needed > capacity {
        return Err(BpfError::ProgramTooLong { needed, capacity });
    }
    let mut at = 0;
    let mut emit = |insn| {
        out[at] = insn;
        at += 1;
    };
    emit(stmt(BPF_LD_W_ABS, SECCOMP_DATA_ARCH));
    emit(jump(BPF_JMP_JEQ_K, arch.value(), 1, 0));
    emit(stmt(BPF_RET_K, RET_KILL_PROCESS));
    if arch == AuditArch::X86_64 {
        emit(stmt(BPF_LD_W_ABS, SECCOMP_DATA_NR));
        emit(jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1));
        emit(stmt(BPF_RET_K, RET_KILL_PROCESS));
    }
    for &(ip, action) in sites {
        emit(stmt(BPF_LD_W_ABS, SECCOMP_DATA_IP_LO));
        emit(jump(BPF_JMP_JEQ_K, low_word(ip), 0, 3));
        emit(stmt(BPF_LD_W_ABS, SECCOMP_DATA_IP_HI));
        emit(jump(BPF_JMP_JEQ_K, low_word(ip >> 32), 0, 1));
        emit(stmt(BPF_RET_K, action.ret_value()));
    }
    for &(high, low_start, low_end, inside) in &pieces {
        emit(stmt(BPF_LD_W_ABS, SECCOMP_DATA_IP_HI));
        emit(jump(BPF_JMP_JEQ_K, high, 0, 4));
        emit(stmt(BPF_LD_W_ABS, SECCOMP_DATA_IP_LO));
        emit(jump(BPF_JMP_JGE_K, low_start, 0, 2));
        match u32::try_from(low_end) {
            Ok(end) => emit(jump(BPF_JMP_JGE_K, end, 1, 0)),
            Err(_) => emit(stmt(BPF_JMP_JA, 0)),
        }
        emit(stmt(BPF_RET_K, inside.ret_value()));
    }
    emit(stmt(BPF_RET_K, outside.ret_value()));
    debug_assert_eq!(at, needed);
    Ok(needed)
}

/// The fields of `struct seccomp_data` a filter reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeccompData {
    pub nr: u32,
    pub arch: u32,
    pub instruction_pointer: u64,
    pub args: [u64; 6],
}

/// Runs a filter this module compiled on `data` as the kernel would, returning its verdict
/// (the in-process tiers decide with the seccomp tier's own program, so both tiers follow
/// one policy). Only the instructions the compilers here emit are understood; anything
/// else, a load outside `seccomp_data` or a jump past the end yields KILL_PROCESS.
pub fn evaluate(prog: &[SockFilter], data: &SeccompData) -> u32 {
    let word = |k: u32| -> Option<u32> {
        Some(match k {
            SECCOMP_DATA_NR => data.nr,
            SECCOMP_DATA_ARCH => data.arch,
            SECCOMP_DATA_IP_LO => low_word(data.instruction_pointer),
            SECCOMP_DATA_IP_HI => low_word(data.instruction_pointer >> 32),
            k if (SECCOMP_DATA_ARGS..SECCOMP_DATA_ARGS + 48).contains(&k) && k % 4 == 0 => {
                let i = ((k - SECCOMP_DATA_ARGS) / 8) as usize;
                let a = data.args[i];
                low_word(if k % 8 == 0 { a } else { a >> 32 })
            }
            _ => return None,
        })
    };
    let mut acc = 0u32;
    let mut pc = 0usize;
    while let Some(insn) = prog.get(pc) {
        let next = pc + 1;
        let branch = |taken: bool| next + usize::from(if taken { insn.jt } else { insn.jf });
        pc = match insn.code {
            BPF_LD_W_ABS => match word(insn.k) {
                Some(w) => {
                    acc = w;
                    next
                }
                None => return RET_KILL_PROCESS,
            },
            BPF_JMP_JA => next + insn.k as usize,
            BPF_JMP_JEQ_K => branch(acc == insn.k),
            BPF_JMP_JGE_K => branch(acc >= insn.k),
            BPF_JMP_JSET_K => branch(acc & insn.k != 0),
            BPF_RET_K => return insn.k,
            _ => return RET_KILL_PROCESS,
        };
    }
    RET_KILL_PROCESS
}

/// A verdict's action part (the top 16 bits) and its data (the errno of RET_ERRNO).
pub const fn verdict_parts(verdict: u32) -> (u32, u16) {
    (verdict & 0xffff_0000, (verdict & 0xffff) as u16)
}

/// Verdict actions, as [`verdict_parts`] splits them.
pub const VERDICT_ALLOW: u32 = RET_ALLOW;
pub const VERDICT_NOTIFY: u32 = RET_USER_NOTIF;
pub const VERDICT_ERRNO: u32 = RET_ERRNO;
pub const VERDICT_LOG: u32 = RET_LOG;

/// The low 32 bits (BPF compares 32-bit words; dropping the rest is the point).
#[allow(clippy::cast_possible_truncation)]
const fn low_word(v: u64) -> u32 {
    v as u32
}

/// Cuts `0..=u32::MAX` into segments of equal leaf; `rules` and `checks` are sorted by
/// number and `rules` is unique.
fn segments(rules: &[Rule], checks: &[ArgRule], default: Action) -> Segments {
    fn push(segs: &mut Segments, start: u32, leaf: Leaf) {
        if segs.last().is_some_and(|s| s.start == start) {
            segs.pop();
        }
        if segs.last().is_some_and(|s| s.leaf == leaf) {
            return;
        }
        // Capacity is 2 per numbered syscall plus one, and each pushes at most two.
        let _ = segs.push(Segment { start, leaf });
    }
    let leaf_of = |nr: u32, base: Action| {
        let first = checks.iter().position(|c| c.nr == nr);
        match first {
            Some(first) => {
                let count = checks[first..].iter().take_while(|c| c.nr == nr).count();
                Leaf::Checked {
                    base,
                    first,
                    count,
                    insns: 1 + checks[first..first + count]
                        .iter()
                        .map(|c| c.test.insns())
                        .sum::<usize>(),
                }
            }
            None => Leaf::Ret(base),
        }
    };
    // Every syscall with a rule or a check, in order.
    let mut numbers: Vec<u32, { MAX_RULES + MAX_ARG_RULES }> = Vec::new();
    for nr in rules
        .iter()
        .map(|r| r.nr)
        .chain(checks.iter().map(|c| c.nr))
    {
        if !numbers.contains(&nr) {
            let _ = numbers.push(nr);
        }
    }
    numbers.sort_unstable();
    let mut segs = Segments::new();
    push(&mut segs, 0, Leaf::Ret(default));
    for nr in numbers {
        let base = rules
            .iter()
            .find(|r| r.nr == nr)
            .map_or(default, |r| r.action);
        push(&mut segs, nr, leaf_of(nr, base));
        if let Some(after) = nr.checked_add(1) {
            push(&mut segs, after, Leaf::Ret(default));
        }
    }
    segs
}

/// Instructions of a leaf: a `ret`, or per check a load, its test and a `ret`, then a `ret`.
fn leaf_len(leaf: Leaf) -> usize {
    match leaf {
        Leaf::Ret(_) => 1,
        Leaf::Checked { insns, .. } => insns,
    }
}

fn tree_len(segs: &[Segment]) -> usize {
    if let [only] = segs {
        return leaf_len(only.leaf);
    }
    if segs.is_empty() {
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
fn emit_tree(segs: &[Segment], checks: &[ArgRule], out: &mut [SockFilter]) -> usize {
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
        at += emit_tree(left, checks, &mut out[at..]);
        at += emit_tree(right, checks, &mut out[at..]);
        return at;
    };
    match only.leaf {
        Leaf::Ret(action) => {
            out[0] = stmt(BPF_RET_K, action.ret_value());
            1
        }
        Leaf::Checked {
            base, first, count, ..
        } => {
            let mut at = 0;
            for c in &checks[first..first + count] {
                out[at] = stmt(BPF_LD_W_ABS, SECCOMP_DATA_ARGS + 8 * u32::from(c.arg));
                // Taken: fall through to the `ret` of this check; else skip it.
                match c.test {
                    ArgTest::AnyBit(mask) => out[at + 1] = jump(BPF_JMP_JSET_K, mask, 0, 1),
                    ArgTest::Equals(v) => out[at + 1] = jump(BPF_JMP_JEQ_K, v, 0, 1),
                    ArgTest::InRange { low, high } => {
                        // Below `low`: skip the second test and the `ret`; at or above
                        // `high`: skip the `ret`.
                        out[at + 1] = jump(BPF_JMP_JGE_K, low, 0, 2);
                        out[at + 2] = jump(BPF_JMP_JGE_K, high, 1, 0);
                    }
                }
                let ret = at + c.test.insns() - 1;
                out[ret] = stmt(BPF_RET_K, c.then.ret_value());
                at = ret + 1;
            }
            out[at] = stmt(BPF_RET_K, base.ret_value());
            at + 1
        }
    }
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
