//! Escape attempts and edge cases for the guest path normalizer.

use kbox_core::Errno;
use kbox_core::path::{self, Anchor, NAME_MAX, PATH_MAX, PathBuf, ProcPid};

const CWD: &[u8] = b"/home/user";

fn norm(p: &[u8]) -> Result<(String, Anchor), Errno> {
    let mut out = PathBuf::new();
    let n = path::normalize(p, CWD, &mut out)?;
    Ok((String::from_utf8(out.to_vec()).expect("ascii"), n.anchor))
}

#[test]
fn escape_attempts_stay_inside_the_guest_root() {
    use Anchor::*;
    let cases: &[(&str, &str, Anchor)] = &[
        ("/", "/", Root),
        ("/../..", "/", Root),
        ("/../../etc/passwd", "/etc/passwd", Root),
        ("a/../../..", "/", Root),
        ("../../../../../../etc", "/etc", Root),
        ("//x", "/x", Root),
        ("///x//y///", "/x/y/", Root),
        ("/a/./b/../c", "/a/c", Root),
        ("x", "/home/user/x", Root),
        ("./x/.", "/home/user/x/", Root),
        ("..", "/home/", Root),
        ("/a/b/", "/a/b/", Root),
        ("/a/b/..", "/a/", Root),
        ("/proc/self/root", "/", ProcRoot(ProcPid::Current)),
        ("/proc/self/root/..", "/", ProcRoot(ProcPid::Current)),
        (
            "/proc/self/root/../../etc/shadow",
            "/etc/shadow",
            ProcRoot(ProcPid::Current),
        ),
        (
            "/proc/thread-self/root/etc",
            "/etc",
            ProcRoot(ProcPid::Current),
        ),
        ("/proc/1/root/../..", "/", ProcRoot(ProcPid::Pid(1))),
        (
            "/proc/x/../self/root/bin",
            "/bin",
            ProcRoot(ProcPid::Current),
        ),
        (
            "../../proc/self/root/tmp",
            "/tmp",
            ProcRoot(ProcPid::Current),
        ),
        ("/proc/self/cwd", "/home/user", ProcCwd),
        ("/proc/self/cwd/../../../../x", "/x", ProcCwd),
        ("/proc/self/cwd/f", "/home/user/f", ProcCwd),
        ("/proc/1/cwd/x", "x", OtherCwd(1)),
        ("/proc/42/cwd//../y", "../y", OtherCwd(42)),
        ("/proc/42/cwd", ".", OtherCwd(42)),
        ("/proc/01/root/x", "/proc/01/root/x", Root),
        ("/proc/self/rootx/y", "/proc/self/rootx/y", Root),
        ("/proc/99999999999/root", "/proc/99999999999/root", Root),
        ("/proc/self", "/proc/self", Root),
    ];
    for &(input, want, anchor) in cases {
        assert_eq!(
            norm(input.as_bytes()),
            Ok((want.to_string(), anchor)),
            "input {input:?}"
        );
    }
}

#[test]
fn other_cwd_remainder_renormalized_cannot_escape() {
    let mut rest = PathBuf::new();
    path::normalize(b"/proc/7/cwd/../../../../etc", CWD, &mut rest).expect("valid");
    let mut out = PathBuf::new();
    path::normalize(&rest, b"/srv/app", &mut out).expect("valid");
    assert_eq!(out.as_slice(), b"/etc");
}

#[test]
fn trailing_slash_or_dot_requires_a_directory() {
    let mut out = PathBuf::new();
    for (p, dir) in [
        (&b"/a/"[..], true),
        (b"/a/.", true),
        (b"/a/..", true),
        (b"/a", false),
        (b".", true),
    ] {
        assert_eq!(
            path::normalize(p, CWD, &mut out).map(|n| n.must_be_dir),
            Ok(dir),
            "{p:?}"
        );
    }
}

#[test]
fn empty_path_is_enoent() {
    assert_eq!(norm(b""), Err(Errno::ENOENT));
    assert_eq!(norm(b"\0/etc"), Err(Errno::ENOENT));
}

#[test]
fn bytes_after_nul_are_ignored() {
    assert_eq!(
        norm(b"/etc\0/../.."),
        Ok(("/etc".to_string(), Anchor::Root))
    );
}

#[test]
fn overlong_paths_are_enametoolong() {
    // PATH_MAX counts the NUL: 4095 bytes fit, 4096 and 4097 do not.
    let fits: Vec<u8> = b"/"
        .iter()
        .chain(std::iter::repeat_n(&b'a', 200))
        .copied()
        .cycle()
        .take(PATH_MAX - 1)
        .collect();
    assert!(norm(&fits).is_ok());
    for len in [PATH_MAX, PATH_MAX + 1] {
        let long: Vec<u8> = b"/"
            .iter()
            .chain(std::iter::repeat_n(&b'a', 200))
            .copied()
            .cycle()
            .take(len)
            .collect();
        assert_eq!(norm(&long), Err(Errno::ENAMETOOLONG), "len {len}");
    }
}

#[test]
fn component_longer_than_name_max_is_enametoolong() {
    let ok = [b"/".to_vec(), vec![b'n'; NAME_MAX]].concat();
    assert!(norm(&ok).is_ok());
    let long = [b"/".to_vec(), vec![b'n'; NAME_MAX + 1]].concat();
    assert_eq!(norm(&long), Err(Errno::ENAMETOOLONG));
}

#[test]
fn relative_path_overflowing_when_joined_is_enametoolong() {
    let cwd: Vec<u8> = b"/"
        .iter()
        .chain(std::iter::repeat_n(&b'd', 250))
        .copied()
        .cycle()
        .take(4000)
        .collect();
    let rel = vec![b'f'; 200];
    let mut out = PathBuf::new();
    assert_eq!(
        path::normalize(&rel, &cwd, &mut out),
        Err(Errno::ENAMETOOLONG)
    );
}

#[test]
fn relative_cwd_is_einval() {
    let mut out = PathBuf::new();
    assert_eq!(path::normalize(b"x", b"home", &mut out), Err(Errno::EINVAL));
}
