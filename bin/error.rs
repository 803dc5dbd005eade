//! Everything that can stop kbox before the guest runs, one variant per failing step.
//!
//! `Display` gives the message alone (what failed and why); [`Error::hint`] gives the fix
//! where it is known. [`Report`] joins them into the single line kbox prints on stderr.
//! User-supplied text is shown through [`Shown`], which escapes control characters and
//! invalid UTF-8, so a report is always exactly one line.

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::io::Errno;

/// A command line kbox rejects, found by `cli::parse` without touching the filesystem.
#[derive(Debug, PartialEq, Eq)]
pub enum UsageError {
    /// An argument starting with `-` that is not one of kbox's options.
    UnknownOption(Box<OsStr>),
    /// An option that takes a value came last, with nothing after it.
    MissingValue(&'static str),
    /// An option was given an empty value.
    EmptyValue(&'static str),
    /// A long option that takes no value was written `--opt=value`.
    UnexpectedValue(&'static str),
    /// None of `-r`, `-R`, `-S` was given.
    NoImage,
    /// More than one of `-r`, `-R`, `-S` (or one of them twice) was given.
    SecondImage {
        /// The image option seen first.
        first: &'static str,
        /// The image option seen next.
        second: &'static str,
    },
    /// `-t` named a filesystem kbox does not mount.
    UnsupportedFsType(Box<OsStr>),
    /// `-b` without a `:` between HOST and GUEST.
    BindWithoutSeparator(Box<OsStr>),
    /// `-b :GUEST`: the host side is empty.
    BindHostEmpty(Box<OsStr>),
    /// `-b HOST:GUEST` with a relative GUEST.
    BindGuestNotAbsolute(Box<OsStr>),
    /// `-b HOST:GUEST` with a `..` component in GUEST.
    BindGuestHasDotDot(Box<OsStr>),
    /// `-w` with a relative directory.
    WorkDirNotAbsolute(Box<OsStr>),
    /// `--change-id` whose value is not two decimal ids `UID:GID`.
    BadChangeId(Box<OsStr>),
    /// Two options that choose the guest's identity differently.
    ConflictingIdentity {
        /// The option that asked for root.
        root: &'static str,
    },
    /// `--syscall-mode` with a value that is not a mode at all.
    UnknownSyscallMode(Box<OsStr>),
    /// `--stats=` with a value that is not a report format.
    UnknownStatsFormat(Box<OsStr>),
    /// `--trace-filter` naming something that is not a syscall of this arch.
    UnknownSyscallName(Box<OsStr>),
    /// `--web=` with a value that is not `ADDR:PORT`.
    BadWebAddress(Box<OsStr>),
    /// `--net=` with a value that is not a network mode.
    UnknownNetMode(Box<OsStr>),
    /// `-p` whose value is not `HOSTPORT:GUESTPORT[/tcp|/udp]`.
    BadPublish(Box<OsStr>),
    /// `-p` without `--net=user`.
    PublishNeedsUserNet,
    /// The same host port published twice.
    PublishTwice(u16),
    /// `--dns` whose value is not an IP address.
    BadDnsAddress(Box<OsStr>),
    /// `--dns` with no network to reach it.
    DnsWithoutNet,
    /// `--shadow-limit` whose value is not a size.
    BadShadowLimit(Box<OsStr>),
    /// `--shadow-limit` outside the accepted bounds.
    ShadowLimitOutOfRange(Box<OsStr>),
    /// `--preserve-fds` that is not a count of at most 65000.
    BadPreserveFds(Box<OsStr>),
    /// `-k` whose value is not UTF-8 text.
    KernelCmdlineNotText(Box<OsStr>),
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::cli::{SHADOW_LIMIT_MAX, SHADOW_LIMIT_MIN};
        match self {
            Self::UnknownOption(arg) => write!(f, "unknown option {}", Shown(arg)),
            Self::MissingValue(opt) => write!(f, "option {opt} needs a value"),
            Self::EmptyValue(opt) => write!(f, "option {opt} was given an empty value"),
            Self::UnexpectedValue(opt) => write!(f, "option {opt} takes no value"),
            Self::NoImage => write!(f, "no image given: one of -r, -R or -S is required"),
            Self::SecondImage { first, second } => write!(
                f,
                "only one image option is allowed, but {second} follows {first}"
            ),
            Self::UnsupportedFsType(ty) => {
                write!(f, "unsupported filesystem type {} for -t", Shown(ty))
            }
            Self::BindWithoutSeparator(arg) => {
                write!(f, "bind {} is not of the form HOST:GUEST", Shown(arg))
            }
            Self::BindHostEmpty(arg) => write!(f, "bind {} has an empty HOST path", Shown(arg)),
            Self::BindGuestNotAbsolute(arg) => {
                write!(f, "bind {}: the GUEST path must be absolute", Shown(arg))
            }
            Self::BindGuestHasDotDot(arg) => {
                write!(
                    f,
                    "bind {}: the GUEST path must not contain '..'",
                    Shown(arg)
                )
            }
            Self::WorkDirNotAbsolute(dir) => {
                write!(f, "working directory {} is not absolute", Shown(dir))
            }
            Self::BadChangeId(arg) => write!(
                f,
                "--change-id {} is not UID:GID with two decimal ids below 4294967295",
                Shown(arg)
            ),
            Self::ConflictingIdentity { root } => write!(
                f,
                "{root} makes the guest root, which conflicts with --change-id"
            ),
            Self::UnknownSyscallMode(mode) => {
                write!(f, "unknown syscall mode {}", Shown(mode))
            }
            Self::UnknownStatsFormat(format) => {
                write!(f, "unknown --stats format {}", Shown(format))
            }
            Self::UnknownSyscallName(name) => {
                write!(f, "--trace-filter: {} is not a syscall here", Shown(name))
            }
            Self::BadWebAddress(addr) => {
                write!(f, "--web={} is not an ADDR:PORT address", Shown(addr))
            }
            Self::UnknownNetMode(mode) => write!(f, "unknown network mode {}", Shown(mode)),
            Self::BadPublish(v) => {
                write!(f, "-p {} is not HOSTPORT:GUESTPORT[/tcp|/udp]", Shown(v))
            }
            Self::PublishNeedsUserNet => f.write_str("-p publishes a port of --net=user only"),
            Self::PublishTwice(port) => write!(f, "host port {port} is published twice"),
            Self::BadDnsAddress(v) => write!(f, "--dns {} is not an IP address", Shown(v)),
            Self::DnsWithoutNet => f.write_str("--dns needs --net=user or --net=host"),
            Self::BadPreserveFds(arg) => write!(
                f,
                "--preserve-fds {} is not a number of FDs from 0 to 65000",
                Shown(arg)
            ),
            Self::BadShadowLimit(arg) => write!(
                f,
                "--shadow-limit {} is not a size in bytes (digits, optionally followed by K, M or G)",
                Shown(arg)
            ),
            Self::ShadowLimitOutOfRange(arg) => write!(
                f,
                "--shadow-limit {} is out of range: it must be between {} bytes (4K) and {} bytes (4G)",
                Shown(arg),
                SHADOW_LIMIT_MIN,
                SHADOW_LIMIT_MAX
            ),
            Self::KernelCmdlineNotText(arg) => {
                write!(f, "kernel command line {} is not valid UTF-8", Shown(arg))
            }
        }
    }
}

impl UsageError {
    /// The fix, where one is known.
    pub const fn hint(&self) -> Option<&'static str> {
        Some(match self {
            Self::UnknownOption(_) => {
                "run `kbox --help` for the options; put `--` before a command that starts with '-'"
            }
            Self::MissingValue(_) | Self::EmptyValue(_) | Self::UnexpectedValue(_) => {
                "run `kbox --help` for the options"
            }
            Self::NoImage => "pass the image, e.g. `kbox -S build/rootfs-x86_64.ext4 -- /bin/sh`",
            Self::SecondImage { .. } => "keep one of -r, -R, -S",
            Self::UnsupportedFsType(_) => "use -t ext4 (the default), ext3 or ext2",
            Self::BindWithoutSeparator(_) | Self::BindHostEmpty(_) => {
                "write -b HOST:GUEST, e.g. -b /home/me/src:/src"
            }
            Self::BindGuestNotAbsolute(_) | Self::BindGuestHasDotDot(_) => {
                "give GUEST as an absolute path inside the image, e.g. /mnt/data"
            }
            Self::WorkDirNotAbsolute(_) => "give -w an absolute path inside the image, e.g. /root",
            Self::BadChangeId(_) => "write --change-id UID:GID, e.g. --change-id 1000:1000",
            Self::ConflictingIdentity { .. } => {
                "use -R instead of -S (or drop -0) to run as --change-id's user"
            }
            Self::UnknownSyscallMode(_) => "use --syscall-mode=auto or --syscall-mode=seccomp",
            Self::UnknownStatsFormat(_) => "use --stats (a table) or --stats=json",
            Self::UnknownSyscallName(_) => {
                "name syscalls as the kernel does, e.g. --trace-filter=openat,newfstatat,execve"
            }
            Self::BadWebAddress(_) => "e.g. --web=127.0.0.1:8080 or --web alone for a free port",
            Self::UnknownNetMode(_) => "use --net=none (the default), --net=user or --net=host",
            Self::BadPublish(_) => "e.g. -p 8080:80 or -p 5353:53/udp",
            Self::PublishNeedsUserNet => "add --net=user (or a bare --net)",
            Self::PublishTwice(_) => "give each -p its own host port",
            Self::BadDnsAddress(_) => "e.g. --dns 192.0.2.53",
            Self::DnsWithoutNet => "add --net=user or --net=host",
            Self::BadShadowLimit(_) | Self::ShadowLimitOutOfRange(_) => {
                "e.g. --shadow-limit 512M; the default is 256M"
            }
            Self::BadPreserveFds(_) => "e.g. --preserve-fds 2 passes FDs 3 and 4",
            Self::KernelCmdlineNotText(_) => return None,
        })
    }
}

/// The image given to `-r`/`-R`/`-S` cannot be used.
#[derive(Debug)]
pub enum ImageError {
    /// Nothing exists at the path.
    Missing(PathBuf),
    /// The path could not be examined (a parent not searchable, a loop...).
    Inaccessible {
        /// The image path as given.
        path: PathBuf,
        /// Why `stat` failed.
        source: io::Error,
    },
    /// The path is a directory.
    IsDirectory(PathBuf),
    /// The path is neither a regular file nor a block device.
    NotAnImageFile(PathBuf),
    /// The file exists but cannot be opened for reading.
    Unreadable {
        /// The image path as given.
        path: PathBuf,
        /// Why `open` failed.
        source: io::Error,
    },
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing(path) => write!(f, "image {} does not exist", ShownPath(path)),
            Self::Inaccessible { path, source } => {
                write!(f, "cannot examine image {}: {source}", ShownPath(path))
            }
            Self::IsDirectory(path) => write!(
                f,
                "image {} is a directory, not a filesystem image",
                ShownPath(path)
            ),
            Self::NotAnImageFile(path) => write!(
                f,
                "image {} is neither a regular file nor a block device",
                ShownPath(path)
            ),
            Self::Unreadable { path, source } => {
                write!(f, "cannot read image {}: {source}", ShownPath(path))
            }
        }
    }
}

impl ImageError {
    /// The fix, where one is known.
    pub const fn hint(&self) -> Option<&'static str> {
        match self {
            Self::Missing(_) => Some("build the default image with `make rootfs`"),
            Self::IsDirectory(_) | Self::NotAnImageFile(_) => {
                Some("pass an ext4 image file, e.g. one built with `make rootfs`")
            }
            Self::Unreadable { .. } => Some("check the image file's permissions"),
            Self::Inaccessible { .. } => None,
        }
    }
}

/// The host side of a `-b HOST:GUEST` bind cannot be used.
#[derive(Debug)]
pub enum BindError {
    /// Nothing exists at HOST.
    HostMissing(PathBuf),
    /// HOST could not be examined.
    HostInaccessible {
        /// The host path as given.
        host: PathBuf,
        /// Why `stat` failed.
        source: io::Error,
    },
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HostMissing(host) => {
                write!(
                    f,
                    "bind source {} does not exist on the host",
                    ShownPath(host)
                )
            }
            Self::HostInaccessible { host, source } => {
                write!(
                    f,
                    "cannot examine bind source {}: {source}",
                    ShownPath(host)
                )
            }
        }
    }
}

impl BindError {
    /// The fix, where one is known.
    pub const fn hint(&self) -> Option<&'static str> {
        match self {
            Self::HostMissing(_) => Some("create it first, or fix the HOST part of -b HOST:GUEST"),
            Self::HostInaccessible { .. } => None,
        }
    }
}

/// Why kbox stops with status 125.
#[derive(Debug)]
pub enum Error {
    /// The command line is wrong.
    Usage(UsageError),
    /// The image cannot be used.
    Image(ImageError),
    /// A bind's host path cannot be used.
    Bind(BindError),
    /// `--help` or `--version` could not be written to stdout.
    WriteStdout(io::Error),
    /// Starting or running the guest failed.
    Runtime(crate::runtime::RuntimeError),
    /// `kbox image` failed.
    ImageBuild(crate::image::ImageError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(e) => e.fmt(f),
            Self::Image(e) => e.fmt(f),
            Self::Bind(e) => e.fmt(f),
            Self::WriteStdout(e) => write!(f, "cannot write to stdout: {e}"),
            Self::Runtime(e) => e.fmt(f),
            Self::ImageBuild(e) => write!(f, "image: {e}"),
        }
    }
}

impl Error {
    /// The fix, where one is known.
    pub const fn hint(&self) -> Option<&'static str> {
        match self {
            Self::Usage(e) => e.hint(),
            Self::Image(e) => e.hint(),
            Self::Bind(e) => e.hint(),
            Self::Runtime(e) => e.hint(),
            Self::WriteStdout(_) | Self::ImageBuild(_) => None,
        }
    }
}

impl From<UsageError> for Error {
    fn from(e: UsageError) -> Self {
        Self::Usage(e)
    }
}

impl From<ImageError> for Error {
    fn from(e: ImageError) -> Self {
        Self::Image(e)
    }
}

impl From<BindError> for Error {
    fn from(e: BindError) -> Self {
        Self::Bind(e)
    }
}

/// Something kbox tells the user without stopping.
#[derive(Debug, PartialEq, Eq)]
pub enum Warning {
    /// The user cannot write the image, so it is mounted read-only.
    ImageReadOnly {
        /// The image path as given.
        path: PathBuf,
        /// Why `access(W_OK)` refused.
        reason: Errno,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ImageReadOnly { path, reason } => write!(
                f,
                "warning: image {} is not writable ({}); mounting it read-only",
                ShownPath(path),
                io::Error::from(*reason)
            ),
        }
    }
}

/// The one line kbox prints for an error: `kbox: <message>. Hint: <fix>`.
pub struct Report<'a>(pub &'a Error);

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kbox: {}", self.0)?;
        if let Some(hint) = self.0.hint() {
            write!(f, ". Hint: {hint}")?;
        }
        Ok(())
    }
}

/// User-supplied bytes shown between double quotes on one line: printable UTF-8 as is,
/// `"` and `\` backslashed, control characters and invalid bytes as `\xNN`.
pub struct Shown<'a>(pub &'a OsStr);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for chunk in self.0.as_bytes().utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '"' | '\\' => write!(f, "\\{c}")?,
                    c if c.is_control() => {
                        let mut buf = [0u8; 4];
                        for byte in c.encode_utf8(&mut buf).bytes() {
                            write!(f, "\\x{byte:02x}")?;
                        }
                    }
                    c => write!(f, "{c}")?,
                }
            }
            for byte in chunk.invalid() {
                write!(f, "\\x{byte:02x}")?;
            }
        }
        f.write_str("\"")
    }
}

/// [`Shown`] for a path.
struct ShownPath<'a>(&'a Path);

impl fmt::Display for ShownPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Shown(self.0.as_os_str()).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    fn shown(bytes: &[u8]) -> String {
        Shown(OsStr::from_bytes(bytes)).to_string()
    }

    #[test]
    fn shown_when_plain_text_is_quoted_unchanged() {
        assert_eq!(shown(b"rootfs.ext4"), "\"rootfs.ext4\"");
    }

    #[test]
    fn shown_when_newline_is_escaped() {
        assert_eq!(shown(b"a\nb"), "\"a\\x0ab\"");
    }

    #[test]
    fn shown_when_invalid_utf8_is_escaped() {
        assert_eq!(shown(b"a\xffb"), "\"a\\xffb\"");
    }

    #[test]
    fn shown_when_quote_is_backslashed() {
        assert_eq!(shown(b"a\"b"), "\"a\\\"b\"");
    }

    #[test]
    fn shown_when_non_ascii_text_is_kept() {
        assert_eq!(shown("é".as_bytes()), "\"é\"");
    }

    #[test]
    fn report_when_hint_known_appends_it() {
        let e = Error::Image(ImageError::Missing(PathBuf::from("x.ext4")));
        assert_eq!(
            Report(&e).to_string(),
            "kbox: image \"x.ext4\" does not exist. Hint: build the default image with `make rootfs`"
        );
    }

    #[test]
    fn report_when_no_hint_is_message_alone() {
        let e = Error::Runtime(crate::runtime::RuntimeError::Setup {
            what: "enter working directory /x".into(),
            errno: kbox_lkl::Errno::ENOENT,
        });
        assert!(!Report(&e).to_string().contains("Hint"));
    }

    #[test]
    fn report_when_path_has_newline_is_one_line() {
        let e = Error::Image(ImageError::IsDirectory(PathBuf::from("a\nb")));
        assert!(!Report(&e).to_string().contains('\n'));
    }

    #[test]
    fn warning_when_read_only_names_path_and_reason() {
        let w = Warning::ImageReadOnly {
            path: PathBuf::from("ro.ext4"),
            reason: Errno::ROFS,
        };
        let text = w.to_string();
        assert!(text.contains("\"ro.ext4\""), "{text}");
        assert!(text.contains("Read-only file system"), "{text}");
    }
}
