//! The syscall tables and the x86_64 → asm-generic lowering.

use kbox_core::sysno::{self, Arg, Conversion, Lowering, generic, x86_64};

#[test]
fn tables_are_strictly_ascending() {
    assert!(generic::TABLE.windows(2).all(|w| w[0].nr < w[1].nr));
    assert!(sysno::aarch64::TABLE.windows(2).all(|w| w[0].nr < w[1].nr));
    assert!(x86_64::TABLE.windows(2).all(|w| w[0].nr < w[1].nr));
}

#[test]
fn aarch64_table_is_generic_plus_memfd_secret() {
    let extra: Vec<_> = sysno::aarch64::TABLE
        .iter()
        .filter(|s| !generic::TABLE.contains(s))
        .map(|s| s.name)
        .collect();
    assert_eq!(extra, ["memfd_secret"]);
    assert_eq!(sysno::aarch64::TABLE.len(), generic::TABLE.len() + 1);
}

#[test]
fn x86_64_to_generic_agrees_with_names() {
    for s in x86_64::TABLE {
        let by_name = generic::TABLE
            .iter()
            .find(|g| g.name == s.name)
            .map(|g| g.nr);
        assert_eq!(sysno::x86_64_to_generic(s.nr), by_name, "{}", s.name);
    }
}

#[test]
fn x86_64_to_generic_known_pairs() {
    let pairs = [
        (x86_64::READ, Some(63)),
        (x86_64::OPENAT, Some(56)),
        (x86_64::NEWFSTATAT, Some(79)),
        (x86_64::FSTAT, Some(80)),
        (x86_64::GETDENTS64, Some(61)),
        (x86_64::EXIT_GROUP, Some(94)),
        (x86_64::OPEN, None),
        (x86_64::STAT, None),
        (x86_64::DUP2, None),
        (x86_64::FORK, None),
    ];
    for (x, g) in pairs {
        assert_eq!(sysno::x86_64_to_generic(x), g, "x86_64 {x}");
    }
    assert_eq!(sysno::x86_64_to_generic(600), None);
}

#[test]
fn names_resolve_by_number() {
    assert_eq!(x86_64::name(257), Some("openat"));
    assert_eq!(generic::name(56), Some("openat"));
    assert_eq!(sysno::aarch64::name(447), Some("memfd_secret"));
    assert_eq!(generic::name(447), None);
}

#[test]
fn every_x86_64_syscall_has_a_lowering_into_existing_generic_syscalls() {
    for s in x86_64::TABLE {
        let lowering = sysno::lower_x86_64(s.nr).expect("listed syscall");
        let target = match lowering {
            Lowering::Same(nr) => Some(nr),
            Lowering::Rewrite(r) => {
                assert!(r.args.len() <= 6, "{}", s.name);
                Some(r.nr)
            }
            Lowering::Convert { nr, .. } => Some(nr),
            Lowering::HostOnly | Lowering::Obsolete => None,
        };
        if let Some(nr) = target {
            assert!(
                generic::name(nr).is_some(),
                "{} lowers to unknown {nr}",
                s.name
            );
        }
        assert_eq!(
            matches!(lowering, Lowering::Same(_)),
            s.generic.is_some(),
            "{}",
            s.name
        );
    }
}

#[test]
fn open_lowers_to_openat_at_fdcwd() {
    let Some(Lowering::Rewrite(r)) = sysno::lower_x86_64(x86_64::OPEN) else {
        panic!("open is a rewrite")
    };
    assert_eq!(r.nr, generic::OPENAT);
    let at_fdcwd = u64::from_ne_bytes((-100i64).to_ne_bytes());
    assert_eq!(
        r.apply([0x1000, 0o2, 0o644, 9, 9, 9]),
        [at_fdcwd, 0x1000, 0o2, 0o644, 0, 0]
    );
}

#[test]
fn path_syscalls_lower_with_the_right_flags() {
    let rewrite = |nr| match sysno::lower_x86_64(nr) {
        Some(Lowering::Rewrite(r)) => (r.nr, r.args),
        other => panic!("{nr}: {other:?}"),
    };
    let cwd = Arg::Const(u64::from_ne_bytes((-100i64).to_ne_bytes()));
    assert_eq!(
        rewrite(x86_64::LSTAT),
        (
            generic::NEWFSTATAT,
            &[cwd, Arg::Guest(0), Arg::Guest(1), Arg::Const(0x100)][..]
        )
    );
    assert_eq!(
        rewrite(x86_64::RMDIR),
        (
            generic::UNLINKAT,
            &[cwd, Arg::Guest(0), Arg::Const(0x200)][..]
        )
    );
    assert_eq!(
        rewrite(x86_64::SYMLINK),
        (generic::SYMLINKAT, &[Arg::Guest(0), cwd, Arg::Guest(1)][..])
    );
    assert_eq!(rewrite(x86_64::CREAT).1[2], Arg::Const(0o1101));
}

#[test]
fn non_reorderable_syscalls_name_their_conversion() {
    assert_eq!(
        sysno::lower_x86_64(x86_64::DUP2),
        Some(Lowering::Convert {
            nr: generic::DUP3,
            conversion: Conversion::Dup2SameFd
        })
    );
    assert_eq!(
        sysno::lower_x86_64(x86_64::GETDENTS),
        Some(Lowering::Convert {
            nr: generic::GETDENTS64,
            conversion: Conversion::LegacyDirents
        })
    );
    assert_eq!(
        sysno::lower_x86_64(x86_64::ARCH_PRCTL),
        Some(Lowering::HostOnly)
    );
    assert_eq!(
        sysno::lower_x86_64(x86_64::USELIB),
        Some(Lowering::Obsolete)
    );
    assert_eq!(sysno::lower_x86_64(1000), None);
}
