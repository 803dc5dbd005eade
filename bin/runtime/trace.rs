//! `--trace=FILE`: one JSON object per line for each call kbox answers (schema in
//! docs/trace.md). Arguments are read from the guest before the call is served (the guest
//! may reuse its memory once answered); the line is written after, with the result.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use super::json::Str;
use super::observe::Served;
use crate::dispatch::{self, Guest, Reply};

/// Host syscall numbers traced (both arches' tables stay below this).
const CALLS: usize = 512;
const AT_FDCWD: i32 = -100;

/// Where the lines go and which calls they are for.
pub struct Tracer {
    out: Mutex<Box<dyn std::io::Write + Send>>,
    /// Traced calls by host number; all of them without `--trace-filter`.
    wanted: Box<[bool; CALLS]>,
    /// Host thread id → (pid, tid) as the guest knows them.
    ids: Mutex<HashMap<u32, (u32, u32)>>,
}

static TRACER: OnceLock<Tracer> = OnceLock::new();

/// Starts tracing to `out`, only calls in `only` when given (host numbers).
pub fn enable(out: Box<dyn std::io::Write + Send>, only: Option<&[u32]>) {
    let mut wanted = Box::new([only.is_none(); CALLS]);
    for &nr in only.unwrap_or(&[]) {
        if let Some(w) = usize::try_from(nr).ok().and_then(|i| wanted.get_mut(i)) {
            *w = true;
        }
    }
    let _ = TRACER.set(Tracer {
        out: Mutex::new(out),
        wanted,
        ids: Mutex::new(HashMap::new()),
    });
}

/// The arguments of a call being traced, as JSON, read before it is served.
pub struct Before {
    args: String,
}

/// Reads call `nr`'s arguments from `guest` if it is traced.
pub fn before(guest: &dyn Guest, nr: u32, args: [u64; 6]) -> Option<Before> {
    let t = TRACER.get()?;
    if !usize::try_from(nr)
        .ok()
        .and_then(|i| t.wanted.get(i))
        .copied()
        .unwrap_or(false)
    {
        return None;
    }
    Some(Before {
        args: decode(guest, nr, args),
    })
}

/// Writes the line of a call that `before` captured.
pub fn after(before: Before, tid: u32, nr: u32, reply: Reply, served: Served, took_ns: u64) {
    let Some(t) = TRACER.get() else {
        return;
    };
    let (pid, gtid) = t.ids(tid, nr);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = dispatch::syscall_name(nr).unwrap_or("unknown");
    let mut line = format!(
        "{{\"t_ns\":{now},\"pid\":{pid},\"tid\":{gtid},\"host_tid\":{tid},\"nr\":{nr},\"name\":{},\"args\":[{}],",
        Str(name.as_bytes()),
        before.args
    );
    let _ = match reply {
        Reply::Value(v) => write!(line, "\"ret\":{v},"),
        Reply::Fail(e) => {
            let errno = e
                .describe()
                .map_or_else(|| format!("E{}", e.0), |d| d.0.to_owned());
            write!(
                line,
                "\"ret\":-{},\"errno\":{},",
                e.0,
                Str(errno.as_bytes())
            )
        }
        Reply::Continue => write!(line, "\"ret\":null,"),
    };
    let _ = writeln!(
        line,
        "\"tier\":\"seccomp\",\"served\":\"{}\",\"ns\":{}}}",
        served.name(),
        took_ns
    );
    let mut out = t
        .out
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // One write per line: lines from concurrent calls never interleave.
    let _ = out.write_all(line.as_bytes());
}

/// Flushes what is buffered (at exit).
pub fn flush() {
    if let Some(t) = TRACER.get() {
        let mut out = t
            .out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = out.flush();
    }
}

impl Tracer {
    /// The guest's (pid, tid) of host thread `tid`; forgotten when the thread execs or
    /// exits (its host id may come back for another thread).
    fn ids(&self, tid: u32, nr: u32) -> (u32, u32) {
        let mut ids = self
            .ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let found = match ids.get(&tid) {
            Some(&v) => v,
            None => {
                let v = dispatch::guest_ids(tid).unwrap_or((0, 0));
                ids.insert(tid, v);
                v
            }
        };
        if matches!(
            dispatch::syscall_name(nr),
            Some("exit" | "exit_group" | "execve" | "execveat")
        ) {
            ids.remove(&tid);
        }
        found
    }
}

/// How one argument is shown.
#[derive(Clone, Copy)]
enum Kind {
    /// A signed number.
    Int,
    /// An FD, or AT_FDCWD by name.
    Fd,
    /// A guest string (shown as text; an unreadable one as its address).
    Path,
    /// Open flags by name.
    Flags,
    /// A mode, in octal.
    Mode,
    /// An address or bit pattern, in hex.
    Hex,
}

use Kind::*;

/// Argument kinds of the calls worth showing well, by host name (both arches).
const KINDS: &[(&str, &[Kind])] = &[
    ("open", &[Path, Flags, Mode]),
    ("creat", &[Path, Mode]),
    ("openat", &[Fd, Path, Flags, Mode]),
    ("openat2", &[Fd, Path, Hex, Int]),
    ("close", &[Fd]),
    ("stat", &[Path, Hex]),
    ("lstat", &[Path, Hex]),
    ("fstat", &[Fd, Hex]),
    ("newfstatat", &[Fd, Path, Hex, Hex]),
    ("fstatat", &[Fd, Path, Hex, Hex]),
    ("statx", &[Fd, Path, Hex, Hex, Hex]),
    ("access", &[Path, Int]),
    ("faccessat", &[Fd, Path, Int]),
    ("faccessat2", &[Fd, Path, Int, Hex]),
    ("readlink", &[Path, Hex, Int]),
    ("readlinkat", &[Fd, Path, Hex, Int]),
    ("execve", &[Path, Hex, Hex]),
    ("execveat", &[Fd, Path, Hex, Hex, Hex]),
    ("chdir", &[Path]),
    ("fchdir", &[Fd]),
    ("mkdir", &[Path, Mode]),
    ("mkdirat", &[Fd, Path, Mode]),
    ("rmdir", &[Path]),
    ("unlink", &[Path]),
    ("unlinkat", &[Fd, Path, Hex]),
    ("rename", &[Path, Path]),
    ("renameat", &[Fd, Path, Fd, Path]),
    ("renameat2", &[Fd, Path, Fd, Path, Hex]),
    ("link", &[Path, Path]),
    ("linkat", &[Fd, Path, Fd, Path, Hex]),
    ("symlink", &[Path, Path]),
    ("symlinkat", &[Path, Fd, Path]),
    ("chmod", &[Path, Mode]),
    ("fchmodat", &[Fd, Path, Mode]),
    ("chown", &[Path, Int, Int]),
    ("lchown", &[Path, Int, Int]),
    ("fchownat", &[Fd, Path, Int, Int, Hex]),
    ("truncate", &[Path, Int]),
    ("utimensat", &[Fd, Path, Hex, Hex]),
    ("statfs", &[Path, Hex]),
    ("getdents64", &[Fd, Hex, Int]),
    ("getdents", &[Fd, Hex, Int]),
    ("dup", &[Fd]),
    ("dup2", &[Fd, Fd]),
    ("dup3", &[Fd, Fd, Flags]),
    ("fcntl", &[Fd, Int, Hex]),
    ("ioctl", &[Fd, Hex, Hex]),
    ("socket", &[Int, Hex, Int]),
    ("connect", &[Fd, Hex, Int]),
    ("bind", &[Fd, Hex, Int]),
    ("listen", &[Fd, Int]),
    ("accept", &[Fd, Hex, Hex]),
    ("accept4", &[Fd, Hex, Hex, Hex]),
    ("kill", &[Int, Int]),
    ("tgkill", &[Int, Int, Int]),
    ("wait4", &[Int, Hex, Hex, Hex]),
    ("exit", &[Int]),
    ("exit_group", &[Int]),
    ("umask", &[Mode]),
    ("getcwd", &[Hex, Int]),
    ("mount", &[Path, Path, Path, Hex, Hex]),
    ("umount2", &[Path, Hex]),
    ("chroot", &[Path]),
    ("getpid", &[]),
    ("getppid", &[]),
    ("gettid", &[]),
    ("getuid", &[]),
    ("geteuid", &[]),
    ("getgid", &[]),
    ("getegid", &[]),
    ("getpgrp", &[]),
    ("setsid", &[]),
    ("fork", &[]),
    ("vfork", &[]),
    ("sync", &[]),
    ("getpgid", &[Int]),
    ("getsid", &[Int]),
    ("setpgid", &[Int, Int]),
    ("setuid", &[Int]),
    ("setgid", &[Int]),
    ("setresuid", &[Int, Int, Int]),
    ("setresgid", &[Int, Int, Int]),
    ("getgroups", &[Int, Hex]),
    ("setgroups", &[Int, Hex]),
    ("uname", &[Hex]),
    ("sysinfo", &[Hex]),
    ("clone", &[Hex, Hex, Hex, Hex, Hex]),
    ("prctl", &[Int, Hex, Hex, Hex, Hex]),
    ("fsync", &[Fd]),
    ("fdatasync", &[Fd]),
    ("syncfs", &[Fd]),
    ("fchmod", &[Fd, Mode]),
    ("fchown", &[Fd, Int, Int]),
    ("fstatfs", &[Fd, Hex]),
    ("close_range", &[Fd, Fd, Hex]),
    ("shutdown", &[Fd, Int]),
    ("getsockname", &[Fd, Hex, Hex]),
    ("getpeername", &[Fd, Hex, Hex]),
    ("getsockopt", &[Fd, Int, Int, Hex, Hex]),
    ("setsockopt", &[Fd, Int, Int, Hex, Int]),
    ("sendto", &[Fd, Hex, Int, Hex, Hex, Int]),
    ("recvfrom", &[Fd, Hex, Int, Hex, Hex, Hex]),
    ("sendmsg", &[Fd, Hex, Hex]),
    ("recvmsg", &[Fd, Hex, Hex]),
    ("pidfd_open", &[Int, Hex]),
    ("pidfd_send_signal", &[Fd, Int, Hex, Hex]),
    ("rt_sigqueueinfo", &[Int, Int, Hex]),
    ("tkill", &[Int, Int]),
    ("waitid", &[Int, Int, Hex, Hex, Hex]),
    ("ptrace", &[Int, Int, Hex, Hex]),
    ("bpf", &[Int, Hex, Int]),
];

fn kinds(nr: u32) -> Option<&'static [Kind]> {
    let name = dispatch::syscall_name(nr)?;
    KINDS.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
}

/// The arguments as JSON array members. Calls with no entry in `KINDS` show all six
/// registers in hex (kbox does not know how many they take).
fn decode(guest: &dyn Guest, nr: u32, args: [u64; 6]) -> String {
    let mut s = String::new();
    let Some(kinds) = kinds(nr) else {
        for (i, a) in args.iter().enumerate() {
            let _ = write!(s, "{}\"{a:#x}\"", if i > 0 { "," } else { "" });
        }
        return s;
    };
    for (i, (kind, &a)) in kinds.iter().zip(&args).enumerate() {
        if i > 0 {
            s.push(',');
        }
        let int = i64::from_ne_bytes(a.to_ne_bytes());
        // An FD argument is an int: the register's low half.
        let fd = i32::from_ne_bytes(u32::try_from(a & 0xffff_ffff).unwrap_or(0).to_ne_bytes());
        let _ = match kind {
            Int => write!(s, "{int}"),
            Fd if fd == AT_FDCWD => write!(s, "\"AT_FDCWD\""),
            Fd => write!(s, "{fd}"),
            Path if a == 0 => write!(s, "null"),
            Path => match guest.read_path(a) {
                Ok(p) => write!(s, "{}", Str(p.as_bytes())),
                Err(_) => write!(s, "\"{a:#x}\""),
            },
            Flags => write!(s, "{}", Str(open_flags(a).as_bytes())),
            Mode => write!(s, "\"0{a:o}\""),
            Hex => write!(s, "\"{a:#x}\""),
        };
    }
    s
}

/// Open flags by name (`O_RDONLY|O_CLOEXEC`); bits without a name in hex.
fn open_flags(v: u64) -> String {
    // The bits are the same on x86_64 and aarch64 but for the four below, which differ
    // (aarch64 swaps O_DIRECTORY/O_NOFOLLOW with O_DIRECT/O_LARGEFILE).
    #[cfg(target_arch = "x86_64")]
    const ARCH: &[(u64, &str)] = &[
        (0o40000, "O_DIRECT"),
        (0o100000, "O_LARGEFILE"),
        (0o200000, "O_DIRECTORY"),
        (0o400000, "O_NOFOLLOW"),
    ];
    #[cfg(target_arch = "aarch64")]
    const ARCH: &[(u64, &str)] = &[
        (0o40000, "O_DIRECTORY"),
        (0o100000, "O_NOFOLLOW"),
        (0o200000, "O_DIRECT"),
        (0o400000, "O_LARGEFILE"),
    ];
    const COMMON: &[(u64, &str)] = &[
        (0o100, "O_CREAT"),
        (0o200, "O_EXCL"),
        (0o400, "O_NOCTTY"),
        (0o1000, "O_TRUNC"),
        (0o2000, "O_APPEND"),
        (0o4000, "O_NONBLOCK"),
        // O_SYNC holds O_DSYNC's bit: tried first, so it is named alone.
        (0o4010000, "O_SYNC"),
        (0o10000, "O_DSYNC"),
        (0o20000, "O_ASYNC"),
        (0o1000000, "O_NOATIME"),
        (0o2000000, "O_CLOEXEC"),
        (0o10000000, "O_PATH"),
        (0o20000000, "O_TMPFILE"),
    ];
    let mut out = String::from(match v & 0o3 {
        0 => "O_RDONLY",
        1 => "O_WRONLY",
        2 => "O_RDWR",
        _ => "O_ACCMODE",
    });
    let mut rest = v & !0o3;
    for &(bit, name) in COMMON.iter().chain(ARCH) {
        if rest & bit == bit {
            out.push('|');
            out.push_str(name);
            rest &= !bit;
        }
    }
    if rest != 0 {
        let _ = write!(out, "|{rest:#x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::open_flags;

    #[test]
    fn open_flags_are_named() {
        assert_eq!(open_flags(0), "O_RDONLY");
        assert_eq!(open_flags(0o2000101), "O_WRONLY|O_CREAT|O_CLOEXEC");
        assert_eq!(open_flags(0o4010002), "O_RDWR|O_SYNC");
        assert_eq!(open_flags(0o10000 | 1), "O_WRONLY|O_DSYNC");
        assert_eq!(open_flags(2 | (1 << 40)), "O_RDWR|0x10000000000");
    }
}
