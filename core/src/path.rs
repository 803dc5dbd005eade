//! Lexical normalization of guest paths, so that no path kbox resolves on the guest's
//! behalf can climb out of the guest root, and so that `/proc/<pid>/root` and
//! `/proc/<pid>/cwd` mean the guest's root and cwd rather than the host's.
//!
//! This is lexical: `a/..` is removed without asking whether `a` is a symlink. That is the
//! containment rule, not a replacement for the kernel library's own lookup, which still
//! resolves symlinks inside its root. Rules are listed in docs/core.md.

use heapless::Vec;

use crate::Errno;

/// Longest path including its NUL, as in Linux's PATH_MAX.
pub const PATH_MAX: usize = 4096;
/// Longest path component.
pub const NAME_MAX: usize = 255;

/// A normalized path (without NUL) in fixed storage.
pub type PathBuf = Vec<u8, PATH_MAX>;

/// Which process a `/proc/<pid>/` prefix named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcPid {
    /// `self` or `thread-self`.
    Current,
    Pid(u32),
}

/// Where a normalized path is anchored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anchor {
    /// An ordinary path; the output is absolute in the guest root.
    Root,
    /// It went through `/proc/<pid>/root`: the output is absolute in the guest root (every
    /// guest process shares that root), and must not be handed to the host's /proc.
    ProcRoot(ProcPid),
    /// It went through `/proc/self/cwd` (or `thread-self`): the output is absolute, joined
    /// onto the caller's cwd.
    ProcCwd,
    /// It went through `/proc/<pid>/cwd` of some process whose cwd only the caller knows:
    /// the output is the rest of the path, relative; normalize it again with that cwd.
    OtherCwd(u32),
}

/// What [`normalize`] found besides the path itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Normalized {
    pub anchor: Anchor,
    /// The path ended in `/`, `/.` or `/..`, so Linux requires a directory there; the
    /// output keeps one trailing `/` to say the same to the kernel library.
    pub must_be_dir: bool,
}

/// Normalizes `path` (bytes up to the first NUL) against the absolute, normalized `cwd`,
/// writing the result to `out`.
///
/// Errors: ENOENT for an empty path, ENAMETOOLONG when `path` or the result reaches
/// PATH_MAX or a component exceeds NAME_MAX, EINVAL when `cwd` is not absolute.
pub fn normalize(path: &[u8], cwd: &[u8], out: &mut PathBuf) -> Result<Normalized, Errno> {
    let path = path.split(|&b| b == 0).next().unwrap_or_default();
    if path.is_empty() {
        return Err(Errno::ENOENT);
    }
    if path.len() >= PATH_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    if cwd.first() != Some(&b'/') {
        return Err(Errno::EINVAL);
    }
    let must_be_dir = path.ends_with(b"/")
        || path.ends_with(b"/.")
        || path.ends_with(b"/..")
        || path == b"."
        || path == b"..";
    let mut w = Walker { out, depth: 0 };
    w.out.clear();
    if path[0] != b'/' {
        w.push_all(cwd)?;
    }
    let mut anchor = Anchor::Root;
    let mut rest = path;
    while !rest.is_empty() {
        let (name, tail) = match rest.iter().position(|&b| b == b'/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        rest = tail;
        w.push(name)?;
        match w.proc_link() {
            None => {}
            Some((pid, ProcLink::Root)) => {
                anchor = Anchor::ProcRoot(pid);
                w.reset();
            }
            Some((ProcPid::Current, ProcLink::Cwd)) => {
                anchor = Anchor::ProcCwd;
                w.reset();
                w.push_all(cwd)?;
            }
            Some((ProcPid::Pid(pid), ProcLink::Cwd)) => {
                let rest = trim_leading_slashes(rest);
                w.out.clear();
                let rest = if rest.is_empty() { &b"."[..] } else { rest };
                w.out
                    .extend_from_slice(rest)
                    .map_err(|_| Errno::ENAMETOOLONG)?;
                return Ok(Normalized {
                    anchor: Anchor::OtherCwd(pid),
                    must_be_dir,
                });
            }
        }
    }
    if w.out.is_empty() {
        w.out.push(b'/').map_err(|_| Errno::ENAMETOOLONG)?;
    } else if must_be_dir {
        w.out.push(b'/').map_err(|_| Errno::ENAMETOOLONG)?;
    }
    // The result must still fit a PATH_MAX buffer with its NUL.
    if w.out.len() >= PATH_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(Normalized {
        anchor,
        must_be_dir,
    })
}

enum ProcLink {
    Root,
    Cwd,
}

/// Builds the output as `/a/b/c`; the empty buffer is the root.
struct Walker<'a> {
    out: &'a mut PathBuf,
    depth: usize,
}

impl Walker<'_> {
    fn reset(&mut self) {
        self.out.clear();
        self.depth = 0;
    }

    fn push_all(&mut self, path: &[u8]) -> Result<(), Errno> {
        path.split(|&b| b == b'/')
            .try_for_each(|name| self.push(name))
    }

    fn push(&mut self, name: &[u8]) -> Result<(), Errno> {
        match name {
            b"" | b"." => Ok(()),
            b".." => {
                // At the root `..` stays put: the guest root is the top of the world.
                if self.depth > 0 {
                    let cut = self.out.iter().rposition(|&b| b == b'/').unwrap_or(0);
                    self.out.truncate(cut);
                    self.depth -= 1;
                }
                Ok(())
            }
            _ if name.len() > NAME_MAX => Err(Errno::ENAMETOOLONG),
            _ => {
                // One byte is kept for the NUL the kernel library will need.
                if self.out.len() + 1 + name.len() >= PATH_MAX {
                    return Err(Errno::ENAMETOOLONG);
                }
                self.out.push(b'/').map_err(|_| Errno::ENAMETOOLONG)?;
                self.out
                    .extend_from_slice(name)
                    .map_err(|_| Errno::ENAMETOOLONG)?;
                self.depth += 1;
                Ok(())
            }
        }
    }

    /// Whether the output is now exactly `/proc/<pid>/root` or `/proc/<pid>/cwd`.
    fn proc_link(&self) -> Option<(ProcPid, ProcLink)> {
        if self.depth != 3 {
            return None;
        }
        let mut parts = self.out.split(|&b| b == b'/').skip(1);
        if parts.next()? != b"proc" {
            return None;
        }
        let pid = proc_pid(parts.next()?)?;
        let link = match parts.next()? {
            b"root" => ProcLink::Root,
            b"cwd" => ProcLink::Cwd,
            _ => return None,
        };
        Some((pid, link))
    }
}

/// Parses a /proc directory name the way procfs does: `self`, `thread-self`, or a decimal
/// number without leading zeros.
fn proc_pid(name: &[u8]) -> Option<ProcPid> {
    match name {
        b"self" | b"thread-self" => Some(ProcPid::Current),
        [b'0', _, ..] | [] => None,
        digits => {
            let mut v: u32 = 0;
            for &d in digits {
                if !d.is_ascii_digit() {
                    return None;
                }
                v = v.checked_mul(10)?.checked_add(u32::from(d - b'0'))?;
            }
            Some(ProcPid::Pid(v))
        }
    }
}

fn trim_leading_slashes(mut p: &[u8]) -> &[u8] {
    while let [b'/', tail @ ..] = p {
        p = tail;
    }
    p
}
