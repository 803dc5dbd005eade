//! FD table behaviour: fixed cases for the limits and the seed bugs, and a property test
//! against a plain std model under random open/dup/dup2/dup3/F_DUPFD/close/exec/fork runs.

use std::collections::{BTreeMap, BTreeSet};

use kbox_core::Errno;
use kbox_core::fd::{Closed, FD_LIMIT, FdEntry, FdKind, FdTable, GuestFd, HostFd, KernelFd};
use proptest::prelude::*;

static EMPTY: FdTable = FdTable::new();

/// A heap table without a megabyte-sized stack temporary (test threads have 2 MiB).
fn boxed_table() -> Box<FdTable> {
    let zeroed = Box::<FdTable>::new_zeroed();
    // SAFETY: FdTable is made only of integer fields and arrays of them (no references,
    // enums or padding-sensitive types), so the all-zero bit pattern is a valid value;
    // `zeroed_table_equals_new` checks that it is also the empty table.
    unsafe { zeroed.assume_init() }
}

fn kfd(n: u16) -> KernelFd {
    KernelFd::from_index(n)
}
fn hfd(n: u16) -> HostFd {
    HostFd::from_index(n)
}
fn gfd(n: u16) -> GuestFd {
    GuestFd::from_index(n)
}
fn entry(kernel: Option<u16>, host: Option<u16>) -> FdEntry {
    FdEntry {
        kind: FdKind::Shadow,
        kernel: kernel.map(kfd),
        host: host.map(hfd),
        cloexec: false,
    }
}

#[test]
fn zeroed_table_equals_new() {
    assert!(*boxed_table() == EMPTY);
}

#[test]
fn insert_when_slots_closed_returns_lowest_free() {
    let mut t = boxed_table();
    for want in 0..3 {
        assert_eq!(t.insert(gfd(0), entry(Some(want), None)), Ok(gfd(want)));
    }
    t.remove(gfd(0)).expect("fd 0 is open");
    assert_eq!(t.insert(gfd(0), entry(Some(9), None)), Ok(gfd(0)));
    assert_eq!(t.insert(gfd(0), entry(Some(9), None)), Ok(gfd(3)));
}

#[test]
fn insert_at_gap_range_numbers_succeeds() {
    let mut t = boxed_table();
    for n in [1025, 32767, 65535] {
        assert_eq!(t.insert_at(gfd(n), entry(Some(1), None)), Ok(None));
        assert_eq!(t.lookup(i32::from(n)), Ok(entry(Some(1), None)));
    }
    assert_eq!(t.kernel_refs(kfd(1)), 3);
}

#[test]
fn fd_numbers_at_or_past_limit_are_ebadf_and_einval() {
    let t = boxed_table();
    assert_eq!(GuestFd::from_raw(65536), Err(Errno::EBADF));
    assert_eq!(GuestFd::from_raw(-1), Err(Errno::EBADF));
    assert_eq!(GuestFd::dupfd_min(65536), Err(Errno::EINVAL));
    assert_eq!(GuestFd::dupfd_min(-5), Err(Errno::EINVAL));
    assert_eq!(t.lookup(65536), Err(Errno::EBADF));
    assert_eq!(t.lookup(65535), Err(Errno::EBADF));
    assert_eq!(KernelFd::from_raw(70000), Err(Errno::EMFILE));
}

#[test]
fn insert_when_every_number_used_is_emfile() {
    let mut t = boxed_table();
    for _ in 0..FD_LIMIT {
        t.insert(gfd(0), entry(Some(0), None)).expect("room left");
    }
    assert_eq!(t.len(), FD_LIMIT);
    assert_eq!(t.kernel_refs(kfd(0)), 65536);
    assert_eq!(t.insert(gfd(0), entry(None, None)), Err(Errno::EMFILE));
    let displaced = t
        .insert_at(gfd(65535), entry(Some(1), None))
        .expect("in range");
    assert_eq!(displaced.map(|c| c.kernel_released), Some(None));
    assert_eq!(t.kernel_refs(kfd(0)), 65535);
}

#[test]
fn set_limit_bounds_allocation_and_dup2_target() {
    let mut t = boxed_table();
    t.set_limit(2).expect("valid limit");
    t.insert(gfd(0), entry(None, None)).expect("0 free");
    t.insert(gfd(0), entry(None, None)).expect("1 free");
    assert_eq!(t.insert(gfd(0), entry(None, None)), Err(Errno::EMFILE));
    assert_eq!(t.insert_at(gfd(2), entry(None, None)), Err(Errno::EBADF));
    assert_eq!(t.set_limit(FD_LIMIT + 1), Err(Errno::EINVAL));
}

#[test]
fn insert_at_over_live_slot_releases_only_unshared_backing() {
    let mut t = boxed_table();
    t.insert_at(gfd(5), entry(Some(7), Some(40)))
        .expect("in range");
    // Overwrite with a dup of the same open file: nothing is released.
    let d = t
        .insert_at(gfd(5), entry(Some(7), Some(40)))
        .expect("in range");
    assert_eq!(
        d.map(|c| (c.kernel_released, c.host_released)),
        Some((None, None))
    );
    assert_eq!(t.kernel_refs(kfd(7)), 1);
    // Overwrite with another file: both old backings go.
    let d = t
        .insert_at(gfd(5), entry(Some(8), Some(41)))
        .expect("in range");
    assert_eq!(
        d.map(|c| (c.kernel_released, c.host_released)),
        Some((Some(kfd(7)), Some(hfd(40))))
    );
    assert_eq!(t.kernel_refs(kfd(7)), 0);
    assert_eq!(t.find_by_host_fd(hfd(40)), None);
    assert_eq!(t.find_by_host_fd(hfd(41)), Some(gfd(5)));
}

#[test]
fn close_by_host_fd_when_shared_finds_every_holder_then_releases() {
    let mut t = boxed_table();
    for g in [3, 1025, 60000] {
        t.insert_at(gfd(g), entry(Some(2), Some(9)))
            .expect("in range");
    }
    let mut seen = BTreeSet::new();
    for round in 0..3 {
        let c = t.close_by_host_fd(hfd(9)).expect("a holder remains");
        seen.insert(c.fd.as_raw());
        let last = round == 2;
        assert_eq!(c.host_released.is_some(), last);
        assert_eq!(c.kernel_released.is_some(), last);
    }
    assert_eq!(seen, BTreeSet::from([3, 1025, 60000]));
    assert_eq!(t.close_by_host_fd(hfd(9)), None);
}

#[test]
fn close_on_exec_closes_only_cloexec_fds() {
    let mut t = boxed_table();
    t.insert_at(gfd(0), entry(Some(1), None)).expect("in range");
    t.insert_at(
        gfd(1),
        FdEntry {
            cloexec: true,
            ..entry(Some(1), None)
        },
    )
    .expect("in range");
    t.insert_at(
        gfd(40000),
        FdEntry {
            cloexec: true,
            ..entry(Some(2), None)
        },
    )
    .expect("in range");
    let mut closed = Vec::new();
    t.close_on_exec(|c| closed.push((c.fd.as_raw(), c.kernel_released)));
    assert_eq!(closed, vec![(1, None), (40000, Some(kfd(2)))]);
    assert_eq!(t.len(), 1);
}

// ---- the model -------------------------------------------------------------------------

/// What the guest asks for, in syscall terms; `run` turns it into table operations the way
/// the dispatcher does.
#[derive(Clone, Debug)]
enum Op {
    Open {
        kernel: Option<u16>,
        host: Option<u16>,
        cloexec: bool,
    },
    Dup {
        old: i32,
    },
    DupFd {
        old: i32,
        min: i32,
        cloexec: bool,
    },
    Dup2 {
        old: i32,
        new: i32,
    },
    Dup3 {
        old: i32,
        new: i32,
        cloexec: bool,
    },
    Close {
        fd: i32,
    },
    CloseByHost {
        host: u16,
    },
    SetCloexec {
        fd: i32,
        on: bool,
    },
    Exec,
    Fork,
    SetLimit {
        limit: usize,
    },
}

fn fd_arg() -> impl Strategy<Value = i32> {
    prop_oneof![
        8 => 0..12i32,
        1 => Just(1025),
        1 => Just(32767),
        1 => Just(65534),
        1 => Just(65535),
        1 => Just(65536),
        1 => Just(-1),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let small = || prop::option::of(0..5u16);
    prop_oneof![
        6 => (small(), small(), any::<bool>()).prop_map(|(kernel, host, cloexec)| Op::Open { kernel, host, cloexec }),
        2 => fd_arg().prop_map(|old| Op::Dup { old }),
        2 => (fd_arg(), fd_arg(), any::<bool>()).prop_map(|(old, min, cloexec)| Op::DupFd { old, min, cloexec }),
        3 => (fd_arg(), fd_arg()).prop_map(|(old, new)| Op::Dup2 { old, new }),
        2 => (fd_arg(), fd_arg(), any::<bool>()).prop_map(|(old, new, cloexec)| Op::Dup3 { old, new, cloexec }),
        4 => fd_arg().prop_map(|fd| Op::Close { fd }),
        2 => (0..5u16).prop_map(|host| Op::CloseByHost { host }),
        2 => (fd_arg(), any::<bool>()).prop_map(|(fd, on)| Op::SetCloexec { fd, on }),
        1 => Just(Op::Exec),
        1 => Just(Op::Fork),
        1 => prop_oneof![Just(3usize), Just(12), Just(1026), Just(FD_LIMIT)].prop_map(|limit| Op::SetLimit { limit }),
    ]
}

#[derive(Clone, Debug, Default)]
struct Model {
    fds: BTreeMap<i32, FdEntry>,
    limit: usize,
}

/// Outcome of one op: the syscall's result and the backing FDs it released, sorted.
type Outcome = (Result<i32, Errno>, Vec<i32>, Vec<i32>);

impl Model {
    fn new() -> Self {
        Self {
            fds: BTreeMap::new(),
            limit: FD_LIMIT,
        }
    }

    fn lowest_free(&self, min: i32) -> Result<i32, Errno> {
        (min..i32::try_from(self.limit).expect("limit fits"))
            .find(|n| !self.fds.contains_key(n))
            .ok_or(Errno::EMFILE)
    }

    fn valid_fd(fd: i32) -> Result<i32, Errno> {
        if (0..65536).contains(&fd) {
            Ok(fd)
        } else {
            Err(Errno::EBADF)
        }
    }

    fn open_entry(&self, fd: i32) -> Result<FdEntry, Errno> {
        Self::valid_fd(fd)?;
        self.fds.get(&fd).copied().ok_or(Errno::EBADF)
    }

    /// Removes `fds` and reports which backing FDs no remaining entry holds.
    fn drop_fds(&mut self, fds: &[i32]) -> (Vec<i32>, Vec<i32>) {
        let removed: Vec<FdEntry> = fds.iter().filter_map(|fd| self.fds.remove(fd)).collect();
        let mut kernel: Vec<i32> = removed
            .iter()
            .filter_map(|e| e.kernel)
            .map(KernelFd::as_raw)
            .collect();
        let mut host: Vec<i32> = removed
            .iter()
            .filter_map(|e| e.host)
            .map(HostFd::as_raw)
            .collect();
        kernel.retain(|k| {
            !self
                .fds
                .values()
                .any(|e| e.kernel.map(KernelFd::as_raw) == Some(*k))
        });
        host.retain(|h| {
            !self
                .fds
                .values()
                .any(|e| e.host.map(HostFd::as_raw) == Some(*h))
        });
        kernel.sort_unstable();
        kernel.dedup();
        host.sort_unstable();
        host.dedup();
        (kernel, host)
    }

    fn place(&mut self, new: i32, e: FdEntry) -> (Vec<i32>, Vec<i32>) {
        let old = self.fds.insert(new, e);
        let mut rel = (Vec::new(), Vec::new());
        if let Some(old) = old {
            // Put the displaced entry back under a number nobody uses so drop_fds can
            // compute what it released with `e` already installed.
            self.fds.insert(-100, old);
            rel = self.drop_fds(&[-100]);
        }
        rel
    }

    fn run(&mut self, op: &Op) -> Outcome {
        let none = (Vec::new(), Vec::new());
        let with = |r: Result<i32, Errno>| (r, Vec::new(), Vec::new());
        match *op {
            Op::Open {
                kernel,
                host,
                cloexec,
            } => {
                let e = FdEntry {
                    kind: FdKind::Kernel,
                    kernel: kernel.map(kfd),
                    host: host.map(hfd),
                    cloexec,
                };
                with(self.lowest_free(0).inspect(|&fd| {
                    self.fds.insert(fd, e);
                }))
            }
            Op::Dup { old } => self.run(&Op::DupFd {
                old,
                min: 0,
                cloexec: false,
            }),
            Op::DupFd { old, min, cloexec } => {
                let r = self.open_entry(old).and_then(|e| {
                    if !(0..65536).contains(&min) {
                        return Err(Errno::EINVAL);
                    }
                    let fd = self.lowest_free(min)?;
                    self.fds.insert(fd, FdEntry { cloexec, ..e });
                    Ok(fd)
                });
                with(r)
            }
            Op::Dup2 { old, new } => match self.open_entry(old) {
                Err(e) => with(Err(e)),
                Ok(_) if old == new => with(Ok(new)),
                Ok(e) => {
                    if Self::valid_fd(new).is_err()
                        || new >= i32::try_from(self.limit).expect("limit fits")
                    {
                        return with(Err(Errno::EBADF));
                    }
                    let (k, h) = self.place(
                        new,
                        FdEntry {
                            cloexec: false,
                            ..e
                        },
                    );
                    (Ok(new), k, h)
                }
            },
            Op::Dup3 { old, new, cloexec } => {
                if old == new {
                    return with(Err(Errno::EINVAL));
                }
                let (r, k, h) = self.run(&Op::Dup2 { old, new });
                if let Ok(fd) = r {
                    self.fds.get_mut(&fd).expect("just placed").cloexec = cloexec;
                }
                (r, k, h)
            }
            Op::Close { fd } => match self.open_entry(fd) {
                Err(e) => with(Err(e)),
                Ok(_) => {
                    let (k, h) = self.drop_fds(&[fd]);
                    (Ok(0), k, h)
                }
            },
            Op::CloseByHost { host } => {
                let holders: Vec<i32> = self
                    .fds
                    .iter()
                    .filter(|(_, e)| e.host == Some(hfd(host)))
                    .map(|(fd, _)| *fd)
                    .collect();
                if holders.is_empty() {
                    return with(Err(Errno::EBADF));
                }
                // The table picks any holder; the test harness closes all of them so the
                // outcome does not depend on which.
                let (k, h) = self.drop_fds(&holders);
                (Ok(i32::try_from(holders.len()).expect("small")), k, h)
            }
            Op::SetCloexec { fd, on } => with(self.open_entry(fd).map(|_| {
                self.fds.get_mut(&fd).expect("open").cloexec = on;
                0
            })),
            Op::Exec => {
                let doomed: Vec<i32> = self
                    .fds
                    .iter()
                    .filter(|(_, e)| e.cloexec)
                    .map(|(fd, _)| *fd)
                    .collect();
                let (k, h) = self.drop_fds(&doomed);
                (Ok(0), k, h)
            }
            Op::Fork => (Ok(0), none.0, none.1),
            Op::SetLimit { limit } => {
                self.limit = limit;
                with(Ok(0))
            }
        }
    }
}

fn released(closed: &[Closed]) -> (Vec<i32>, Vec<i32>) {
    let mut k: Vec<i32> = closed
        .iter()
        .filter_map(|c| c.kernel_released)
        .map(KernelFd::as_raw)
        .collect();
    let mut h: Vec<i32> = closed
        .iter()
        .filter_map(|c| c.host_released)
        .map(HostFd::as_raw)
        .collect();
    k.sort_unstable();
    h.sort_unstable();
    (k, h)
}

/// Runs `op` against the table as the dispatcher would.
fn run_table(t: &mut FdTable, op: &Op) -> Outcome {
    let mut closed = Vec::new();
    let r = match *op {
        Op::Open {
            kernel,
            host,
            cloexec,
        } => {
            let e = FdEntry {
                kind: FdKind::Kernel,
                kernel: kernel.map(kfd),
                host: host.map(hfd),
                cloexec,
            };
            t.insert(gfd(0), e).map(GuestFd::as_raw)
        }
        Op::Dup { old } => t
            .lookup(old)
            .and_then(|e| {
                t.insert(
                    gfd(0),
                    FdEntry {
                        cloexec: false,
                        ..e
                    },
                )
            })
            .map(GuestFd::as_raw),
        Op::DupFd { old, min, cloexec } => t
            .lookup(old)
            .and_then(|e| t.insert(GuestFd::dupfd_min(min)?, FdEntry { cloexec, ..e }))
            .map(GuestFd::as_raw),
        Op::Dup2 { old, new } | Op::Dup3 { old, new, .. } => {
            let cloexec = matches!(*op, Op::Dup3 { cloexec: true, .. });
            if matches!(op, Op::Dup3 { .. }) && old == new {
                Err(Errno::EINVAL)
            } else {
                t.lookup(old).and_then(|e| {
                    let target = GuestFd::from_raw(new)?;
                    if old == new {
                        return Ok(new);
                    }
                    closed.extend(t.insert_at(target, FdEntry { cloexec, ..e })?);
                    Ok(new)
                })
            }
        }
        Op::Close { fd } => GuestFd::from_raw(fd).and_then(|fd| t.remove(fd)).map(|c| {
            closed.push(c);
            0
        }),
        Op::CloseByHost { host } => {
            while let Some(c) = t.close_by_host_fd(hfd(host)) {
                assert_eq!(c.entry.host, Some(hfd(host)));
                closed.push(c);
            }
            if closed.is_empty() {
                Err(Errno::EBADF)
            } else {
                Ok(i32::try_from(closed.len()).expect("small"))
            }
        }
        Op::SetCloexec { fd, on } => GuestFd::from_raw(fd)
            .and_then(|fd| t.set_cloexec(fd, on))
            .map(|()| 0),
        Op::Exec => {
            t.close_on_exec(|c| closed.push(c));
            Ok(0)
        }
        Op::Fork => Ok(0),
        Op::SetLimit { limit } => t.set_limit(limit).map(|()| 0),
    };
    let (k, h) = released(&closed);
    (r, k, h)
}

fn assert_matches(t: &FdTable, m: &Model) {
    let table: BTreeMap<i32, FdEntry> = t.iter().map(|(fd, e)| (fd.as_raw(), e)).collect();
    assert_eq!(table, m.fds);
    assert_eq!(t.len(), m.fds.len());
    for n in 0..5u16 {
        let kernel_holders = m.fds.values().filter(|e| e.kernel == Some(kfd(n))).count();
        assert_eq!(
            t.kernel_refs(kfd(n)) as usize,
            kernel_holders,
            "kernel fd {n}"
        );
        let want: BTreeSet<i32> = m
            .fds
            .iter()
            .filter(|(_, e)| e.host == Some(hfd(n)))
            .map(|(fd, _)| *fd)
            .collect();
        let got: BTreeSet<i32> = t.host_holders(hfd(n)).map(GuestFd::as_raw).collect();
        assert_eq!(got, want, "holders of host fd {n}");
        assert_eq!(
            t.host_holders(hfd(n)).count(),
            want.len(),
            "no holder listed twice"
        );
        match t.find_by_host_fd(hfd(n)) {
            Some(fd) => assert!(want.contains(&fd.as_raw())),
            None => assert!(want.is_empty()),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn table_matches_model_under_random_syscalls(ops in prop::collection::vec(op(), 1..120)) {
        let mut table = boxed_table();
        let mut model = Model::new();
        let mut parent: Option<(Box<FdTable>, Model)> = None;
        for op in &ops {
            if let Op::Fork = op {
                // Continue in the child; the parent must be unaffected by what follows.
                let mut child = boxed_table();
                child.copy_from(&table);
                let parent_table = std::mem::replace(&mut table, child);
                parent = Some((parent_table, model.clone()));
            }
            let got = run_table(&mut table, op);
            let want = model.run(op);
            prop_assert_eq!(&got, &want, "op {:?}", op);
            assert_matches(&table, &model);
        }
        if let Some((t, m)) = parent {
            assert_matches(&t, &m);
        }
    }
}
