//! The filter builder's output run through a small classic-BPF interpreter that accepts
//! only what the kernel's seccomp verifier would (forward jumps inside the program, a
//! `ret` on every path), for random rule sets on both arches.

use kbox_core::Errno;
use kbox_core::bpf::{self, Action, ArgRule, ArgTest, AuditArch, BpfError, Rule, SockFilter};
use kbox_core::sysno;
use proptest::prelude::*;

const KILL_PROCESS: u32 = 0x8000_0000;

/// Runs `prog` on a `seccomp_data` with this arch and nr; returns the filter's verdict.
fn run(prog: &[SockFilter], arch: u32, nr: u32) -> u32 {
    run_args(prog, arch, nr, [0; 6])
}

/// [`run`] with the call's arguments.
fn run_args(prog: &[SockFilter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let mut acc = 0u32;
    let mut pc = 0usize;
    loop {
        let insn = prog
            .get(pc)
            .unwrap_or_else(|| panic!("fell off the program at {pc}"));
        let next = pc + 1;
        pc = match insn.code {
            bpf::BPF_LD_W_ABS => {
                acc = match insn.k {
                    bpf::SECCOMP_DATA_NR => nr,
                    bpf::SECCOMP_DATA_ARCH => arch,
                    k if (16..64).contains(&k) => {
                        let a = args[(k as usize - 16) / 8];
                        let word = if k % 8 == 0 { a } else { a >> 32 };
                        u32::try_from(word & 0xffff_ffff).unwrap_or(0)
                    }
                    k => panic!("load from unexpected offset {k}"),
                };
                next
            }
            bpf::BPF_JMP_JA => next + insn.k as usize,
            bpf::BPF_JMP_JEQ_K | bpf::BPF_JMP_JGE_K => {
                let taken = if insn.code == bpf::BPF_JMP_JEQ_K {
                    acc == insn.k
                } else {
                    acc >= insn.k
                };
                next + usize::from(if taken { insn.jt } else { insn.jf })
            }
            bpf::BPF_JMP_JSET_K => {
                next + usize::from(if acc & insn.k != 0 { insn.jt } else { insn.jf })
            }
            bpf::BPF_RET_K => return insn.k,
            code => panic!("unexpected opcode {code:#x} at {pc}"),
        };
    }
}

fn compile(arch: AuditArch, rules: &[Rule], default: Action) -> Vec<SockFilter> {
    let mut out = vec![SockFilter::default(); bpf::MAX_INSNS];
    let n = bpf::compile(arch, rules, default, &mut out).expect("compiles");
    out.truncate(n);
    out
}

fn errno(n: u16) -> Action {
    Action::Errno(Errno::new(n).expect("valid errno"))
}

#[test]
fn ret_values_match_linux_seccomp_h() {
    use linux_raw_sys::ptrace as p;
    assert_eq!(Action::Allow.ret_value(), p::SECCOMP_RET_ALLOW);
    assert_eq!(Action::Notify.ret_value(), p::SECCOMP_RET_USER_NOTIF);
    assert_eq!(Action::Log.ret_value(), p::SECCOMP_RET_LOG);
    assert_eq!(Action::KillThread.ret_value(), p::SECCOMP_RET_KILL_THREAD);
    assert_eq!(Action::KillProcess.ret_value(), p::SECCOMP_RET_KILL_PROCESS);
    assert_eq!(Action::Trap(7).ret_value(), p::SECCOMP_RET_TRAP | 7);
    assert_eq!(errno(1234).ret_value(), p::SECCOMP_RET_ERRNO | 1234);
    assert_eq!(AuditArch::X86_64.value(), p::AUDIT_ARCH_X86_64);
    assert_eq!(AuditArch::Aarch64.value(), p::AUDIT_ARCH_AARCH64);
}

#[test]
fn arch_mismatch_kills() {
    let prog = compile(
        AuditArch::X86_64,
        &[Rule {
            nr: 39,
            action: Action::Allow,
        }],
        Action::Allow,
    );
    assert_eq!(run(&prog, AuditArch::Aarch64.value(), 39), KILL_PROCESS);
    assert_eq!(
        run(&prog, AuditArch::X86_64.value(), 39),
        Action::Allow.ret_value()
    );
}

#[test]
fn x32_numbers_on_x86_64_are_killed_even_when_default_allows() {
    let prog = compile(AuditArch::X86_64, &[], Action::Allow);
    assert_eq!(
        run(&prog, AuditArch::X86_64.value(), bpf::X32_SYSCALL_BIT | 39),
        KILL_PROCESS
    );
    let prog = compile(AuditArch::Aarch64, &[], Action::Allow);
    assert_eq!(
        run(&prog, AuditArch::Aarch64.value(), bpf::X32_SYSCALL_BIT | 39),
        Action::Allow.ret_value()
    );
}

#[test]
fn every_syscall_of_both_arches_gets_its_rule() {
    // Alternate actions so no two neighbours merge: the largest tree the tables allow.
    let actions = [Action::Notify, Action::Allow, errno(1), Action::Trap(3)];
    for (arch, numbers) in [
        (
            AuditArch::X86_64,
            sysno::x86_64::TABLE
                .iter()
                .map(|s| s.nr)
                .collect::<Vec<_>>(),
        ),
        (
            AuditArch::Aarch64,
            sysno::aarch64::TABLE.iter().map(|s| s.nr).collect(),
        ),
    ] {
        let rules: Vec<Rule> = numbers
            .iter()
            .enumerate()
            .map(|(i, &nr)| Rule {
                nr,
                action: actions[i % 4],
            })
            .collect();
        let prog = compile(arch, &rules, Action::KillProcess);
        for r in &rules {
            assert_eq!(
                run(&prog, arch.value(), r.nr),
                r.action.ret_value(),
                "{arch:?} nr {}",
                r.nr
            );
        }
        assert_eq!(run(&prog, arch.value(), 1000), KILL_PROCESS);
    }
}

#[test]
fn large_left_subtrees_are_reached_through_ja() {
    let rules: Vec<Rule> = (0..1000)
        .map(|nr| Rule {
            nr: nr * 3,
            action: if nr % 2 == 0 { Action::Allow } else { errno(5) },
        })
        .collect();
    let prog = compile(AuditArch::Aarch64, &rules, Action::Notify);
    assert!(
        prog.iter().any(|i| i.code == bpf::BPF_JMP_JA),
        "tree too small to need ja"
    );
    for r in &rules {
        assert_eq!(
            run(&prog, AuditArch::Aarch64.value(), r.nr),
            r.action.ret_value()
        );
        assert_eq!(
            run(&prog, AuditArch::Aarch64.value(), r.nr + 1),
            Action::Notify.ret_value()
        );
    }
}

#[test]
fn duplicate_rules_are_refused() {
    let rules = [
        Rule {
            nr: 5,
            action: Action::Allow,
        },
        Rule {
            nr: 5,
            action: Action::Notify,
        },
    ];
    let mut out = [SockFilter::default(); 64];
    assert_eq!(
        bpf::compile(AuditArch::X86_64, &rules, Action::Allow, &mut out),
        Err(BpfError::DuplicateRule { nr: 5 })
    );
}

#[test]
fn output_too_small_is_a_typed_error() {
    let rules: Vec<Rule> = (0..10)
        .map(|nr| Rule {
            nr: nr * 2,
            action: Action::Notify,
        })
        .collect();
    let mut out = [SockFilter::default(); 8];
    let err = bpf::compile(AuditArch::Aarch64, &rules, Action::Allow, &mut out);
    assert!(
        matches!(err, Err(BpfError::ProgramTooLong { needed, capacity: 8 }) if needed > 8),
        "{err:?}"
    );
}

#[test]
fn too_many_rules_are_refused() {
    let rules: Vec<Rule> = (0..=u32::try_from(bpf::MAX_RULES).expect("small"))
        .map(|nr| Rule {
            nr,
            action: Action::Allow,
        })
        .collect();
    let mut out = vec![SockFilter::default(); bpf::MAX_INSNS];
    assert_eq!(
        bpf::compile(AuditArch::Aarch64, &rules, Action::Allow, &mut out),
        Err(BpfError::TooManyRules {
            given: bpf::MAX_RULES + 1
        })
    );
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        Just(Action::Allow),
        Just(Action::Notify),
        Just(Action::KillProcess),
        Just(Action::KillThread),
        Just(Action::Log),
        (0..100u16).prop_map(Action::Trap),
        (1..4096u16).prop_map(errno),
    ]
}

proptest! {
    #[test]
    fn compiled_filter_matches_rule_map(
        rules in prop::collection::btree_map(0..700u32, action(), 0..400),
        default in action(),
        aarch64 in any::<bool>(),
        probes in prop::collection::vec(any::<u32>(), 32),
    ) {
        let arch = if aarch64 { AuditArch::Aarch64 } else { AuditArch::X86_64 };
        let list: Vec<Rule> = rules.iter().map(|(&nr, &action)| Rule { nr, action }).collect();
        let prog = compile(arch, &list, default);
        let expect = |nr: u32| {
            if arch == AuditArch::X86_64 && nr >= bpf::X32_SYSCALL_BIT {
                return KILL_PROCESS;
            }
            rules.get(&nr).copied().unwrap_or(default).ret_value()
        };
        let neighbours = rules.keys().flat_map(|&nr| [nr.saturating_sub(1), nr, nr + 1]);
        for nr in neighbours.chain(probes).chain([0, u32::MAX]) {
            prop_assert_eq!(run(&prog, arch.value(), nr), expect(nr), "nr {}", nr);
        }
    }
}

fn compile_checked(
    arch: AuditArch,
    rules: &[Rule],
    checks: &[ArgRule],
    default: Action,
) -> Vec<SockFilter> {
    let mut out = vec![SockFilter::default(); bpf::MAX_INSNS];
    let n = bpf::compile_checked(arch, rules, checks, default, &mut out).expect("compiles");
    out.truncate(n);
    out
}

#[test]
fn argument_checks_apply_to_their_syscall_and_argument_only() {
    const CLONE: u32 = 56;
    const IOCTL: u32 = 16;
    const NEW_NAMESPACES: u32 = 0x7e02_0080;
    let eperm = errno(1);
    let prog = compile_checked(
        AuditArch::X86_64,
        &[
            Rule {
                nr: CLONE,
                action: Action::Allow,
            },
            Rule {
                nr: IOCTL,
                action: Action::Allow,
            },
        ],
        &[
            ArgRule {
                nr: IOCTL,
                arg: 1,
                test: ArgTest::Equals(0x5412),
                then: eperm,
            },
            ArgRule {
                nr: CLONE,
                arg: 0,
                test: ArgTest::AnyBit(NEW_NAMESPACES),
                then: eperm,
            },
            ArgRule {
                nr: IOCTL,
                arg: 1,
                test: ArgTest::Equals(0x541c),
                then: errno(2),
            },
            // A check on a syscall without a rule: its base is the default.
            ArgRule {
                nr: 500,
                arg: 5,
                test: ArgTest::Equals(7),
                then: Action::Allow,
            },
        ],
        Action::Notify,
    );
    let arch = AuditArch::X86_64.value();
    let allow = Action::Allow.ret_value();
    // fork-like and thread-like clones pass, any namespace flag is refused.
    assert_eq!(run_args(&prog, arch, CLONE, [0x11, 0, 0, 0, 0, 0]), allow);
    assert_eq!(
        run_args(&prog, arch, CLONE, [0x3d0f00, 0, 0, 0, 0, 0]),
        allow
    );
    for flag in [
        0x20000u64,
        0x0200_0000,
        0x0400_0000,
        0x0800_0000,
        0x1000_0000,
        0x2000_0000,
        0x4000_0000,
        0x80,
    ] {
        assert_eq!(
            run_args(&prog, arch, CLONE, [0x11 | flag, 0, 0, 0, 0, 0]),
            eperm.ret_value(),
            "{flag:#x}"
        );
    }
    // Only the low 32 bits are tested (what the kernel reads of an int or these flags).
    assert_eq!(
        run_args(
            &prog,
            arch,
            CLONE,
            [0x11 | (0x1000_0000 << 32), 0, 0, 0, 0, 0]
        ),
        allow
    );
    assert_eq!(
        run_args(&prog, arch, IOCTL, [0, 0x5412, 0, 0, 0, 0]),
        eperm.ret_value()
    );
    assert_eq!(
        run_args(&prog, arch, IOCTL, [0, 0x541c, 0, 0, 0, 0]),
        errno(2).ret_value()
    );
    assert_eq!(
        run_args(&prog, arch, IOCTL, [0x5412, 0x5401, 0, 0, 0, 0]),
        allow
    );
    assert_eq!(run_args(&prog, arch, 500, [0, 0, 0, 0, 0, 7]), allow);
    assert_eq!(
        run_args(&prog, arch, 500, [0, 0, 0, 0, 0, 8]),
        Action::Notify.ret_value()
    );
    // Neighbours keep their own actions.
    for nr in [CLONE - 1, CLONE + 1, IOCTL - 1, IOCTL + 1, 499, 501] {
        assert_eq!(
            run_args(&prog, arch, nr, [u64::MAX; 6]),
            Action::Notify.ret_value(),
            "{nr}"
        );
    }
}

#[test]
fn bad_argument_checks_are_refused() {
    let mut out = vec![SockFilter::default(); bpf::MAX_INSNS];
    let check = ArgRule {
        nr: 1,
        arg: 6,
        test: ArgTest::Equals(0),
        then: Action::Allow,
    };
    assert_eq!(
        bpf::compile_checked(AuditArch::X86_64, &[], &[check], Action::Allow, &mut out),
        Err(BpfError::BadArgRules)
    );
    let many = vec![ArgRule { arg: 0, ..check }; bpf::MAX_ARG_RULES + 1];
    assert_eq!(
        bpf::compile_checked(AuditArch::X86_64, &[], &many, Action::Allow, &mut out),
        Err(BpfError::BadArgRules)
    );
}

fn arg_test() -> impl Strategy<Value = ArgTest> {
    prop_oneof![
        any::<u32>().prop_map(ArgTest::AnyBit),
        (0..8u32).prop_map(ArgTest::Equals),
        (0..8u32, 0..8u32).prop_map(|(low, high)| ArgTest::InRange { low, high }),
    ]
}

proptest! {
    #[test]
    fn argument_checks_match_a_model(
        rules in prop::collection::btree_map(0..300u32, action(), 0..100),
        checks in prop::collection::vec((0..300u32, 0..6u8, arg_test(), action()), 0..bpf::MAX_ARG_RULES),
        default in action(),
        probes in prop::collection::vec((0..300u32, prop::array::uniform6(0..8u64)), 64),
    ) {
        let list: Vec<Rule> = rules.iter().map(|(&nr, &action)| Rule { nr, action }).collect();
        let checks: Vec<ArgRule> = checks
            .into_iter()
            .map(|(nr, arg, test, then)| ArgRule { nr, arg, test, then })
            .collect();
        let prog = compile_checked(AuditArch::Aarch64, &list, &checks, default);
        for (nr, args) in probes {
            let low = |a: u8| u32::try_from(args[usize::from(a)] & 0xffff_ffff).unwrap_or(0);
            let expect = checks
                .iter()
                .filter(|c| c.nr == nr)
                .find(|c| match c.test {
                    ArgTest::AnyBit(m) => low(c.arg) & m != 0,
                    ArgTest::Equals(v) => low(c.arg) == v,
                    ArgTest::InRange { low: lo, high: hi } => (lo..hi).contains(&low(c.arg)),
                })
                .map(|c| c.then)
                .unwrap_or_else(|| rules.get(&nr).copied().unwrap_or(default));
            prop_assert_eq!(run_args(&prog, AuditArch::Aarch64.value(), nr, args), expect.ret_value(), "nr {} args {:?}", nr, args);
        }
    }
}

/// Runs an IP gate on a call made from `ip` (x86_64, a 64-bit number).
fn run_gate(prog: &[SockFilter], ip: u64, nr: u32) -> u32 {
    run_gate_on(prog, AuditArch::X86_64, ip, nr)
}

fn run_gate_on(prog: &[SockFilter], arch: AuditArch, ip: u64, nr: u32) -> u32 {
    let mut acc = 0u32;
    let mut pc = 0usize;
    loop {
        let insn = prog.get(pc).unwrap_or_else(|| panic!("fell off at {pc}"));
        let next = pc + 1;
        pc = match insn.code {
            bpf::BPF_LD_W_ABS => {
                acc = match insn.k {
                    bpf::SECCOMP_DATA_NR => nr,
                    bpf::SECCOMP_DATA_ARCH => arch.value(),
                    bpf::SECCOMP_DATA_IP_LO => u32::try_from(ip & 0xffff_ffff).unwrap_or(0),
                    bpf::SECCOMP_DATA_IP_HI => u32::try_from(ip >> 32).unwrap_or(0),
                    k => panic!("load from unexpected offset {k}"),
                };
                next
            }
            bpf::BPF_JMP_JA => next + insn.k as usize,
            bpf::BPF_JMP_JEQ_K => next + usize::from(if acc == insn.k { insn.jt } else { insn.jf }),
            bpf::BPF_JMP_JGE_K => next + usize::from(if acc >= insn.k { insn.jt } else { insn.jf }),
            bpf::BPF_RET_K => return insn.k,
            code => panic!("unexpected opcode {code:#x} at {pc}"),
        };
    }
}

/// AArch64's gate has no x32 check: the length it reports is what it wrote (the trap tier's
/// first aarch64 run failed that count), and it decides as x86-64's does.
#[test]
fn ip_gate_for_aarch64_is_as_long_as_it_says() {
    let regions = [
        (0x40_0000, 0x50_0000, Action::Allow),
        (0x7000, 0x8000, Action::Notify),
    ];
    let mut out = vec![SockFilter::default(); bpf::MAX_INSNS];
    let n = bpf::compile_ip_gate(AuditArch::Aarch64, &[], &regions, Action::Trap(0), &mut out)
        .expect("compiles");
    assert_eq!(n, 3 + 6 * regions.len() + 1);
    let prog = &out[..n];
    let a = AuditArch::Aarch64;
    assert_eq!(
        run_gate_on(prog, a, 0x40_0010, 57),
        Action::Allow.ret_value()
    );
    assert_eq!(run_gate_on(prog, a, 0x7ff8, 57), Action::Notify.ret_value());
    assert_eq!(
        run_gate_on(prog, a, 0x50_0000, 57),
        Action::Trap(0).ret_value()
    );
    assert_eq!(
        run_gate_on(prog, AuditArch::X86_64, 0x40_0010, 57),
        KILL_PROCESS
    );
}

proptest! {
    /// Every address gets the action of the first site it equals, else `inside` when some
    /// region holds it, else `outside`: regions anywhere, across 4 GiB boundaries too.
    #[test]
    fn ip_gate_decides_by_call_site(
        regions in proptest::collection::vec((0u64..1 << 40, 1u64..1 << 34), 0..6),
        sites in proptest::collection::vec(0u64..1 << 40, 0..4),
        probes in proptest::collection::vec(0u64..1 << 40, 32),
    ) {
        // Odd regions notify, even ones allow: the first region holding an address decides.
        let regions: Vec<(u64, u64, Action)> = regions
            .iter()
            .enumerate()
            .map(|(i, &(s, len))| (s, s + len, if i % 2 == 0 { Action::Allow } else { Action::Notify }))
            .collect();
        let sites: Vec<(u64, Action)> = sites.iter().map(|&ip| (ip, Action::Log)).collect();
        let mut out = vec![SockFilter::default(); bpf::MAX_INSNS];
        let n = bpf::compile_ip_gate(AuditArch::X86_64, &sites, &regions, Action::Trap(0), &mut out)
            .expect("compiles");
        let prog = &out[..n];
        let mut interesting = probes.clone();
        for &(s, e, _) in &regions {
            interesting.extend([s, e - 1, e, s.wrapping_sub(1)]);
        }
        interesting.extend(sites.iter().map(|s| s.0));
        for ip in interesting {
            let want = if sites.iter().any(|s| s.0 == ip) {
                Action::Log
            } else if let Some(&(_, _, a)) = regions.iter().find(|&&(s, e, _)| ip >= s && ip < e) {
                a
            } else {
                Action::Trap(0)
            };
            prop_assert_eq!(run_gate(prog, ip, 1), want.ret_value(), "ip {:#x}", ip);
        }
        prop_assert_eq!(run_gate(prog, 0, 0x4000_0001), KILL_PROCESS);
    }
}

proptest! {
    /// The library's own evaluator agrees with this file's interpreter (which follows the
    /// kernel's rules) on random rule sets, arguments included.
    #[test]
    fn evaluate_agrees_with_the_reference_interpreter(
        nrs in proptest::collection::btree_set(0u32..500, 0..40),
        pick in proptest::collection::vec(0u8..4, 40),
        probe in 0u32..520,
        arg1 in any::<u64>(),
    ) {
        let actions = [Action::Allow, Action::Notify, errno(1), errno(38)];
        let rules: Vec<Rule> = nrs.iter().zip(&pick).map(|(&nr, &p)| Rule { nr, action: actions[usize::from(p)] }).collect();
        let checks = [ArgRule { nr: probe, arg: 1, test: ArgTest::AnyBit(0x10), then: errno(13) }];
        let mut out = vec![SockFilter::default(); bpf::MAX_INSNS];
        let n = bpf::compile_checked(AuditArch::X86_64, &rules, &checks, Action::Notify, &mut out).expect("compiles");
        let prog = &out[..n];
        let arch = AuditArch::X86_64.value();
        let data = bpf::SeccompData { nr: probe, arch, instruction_pointer: 0, args: [0, arg1, 0, 0, 0, 0] };
        prop_assert_eq!(bpf::evaluate(prog, &data), run_args(prog, arch, probe, data.args));
    }
}
