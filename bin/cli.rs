//! The command line: `kbox [OPTIONS] [--] [COMMAND [ARGS...]]`, parsed into a [`Config`].
//!
//! [`parse`] is pure (no filesystem access), so every rule is unit-tested; [`check_host`]
//! then checks what only the host can tell: that the image and the bind sources exist and
//! can be used. docs/cli.md describes the options for users.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::Access;
use rustix::io::Errno;

use crate::error::{BindError, Error, ImageError, UsageError, Warning};

/// Smallest `--shadow-limit`: one page.
pub const SHADOW_LIMIT_MIN: u64 = 4 << 10;
/// Largest `--shadow-limit`.
pub const SHADOW_LIMIT_MAX: u64 = 4 << 30;
/// `--shadow-limit` when not given.
pub const SHADOW_LIMIT_DEFAULT: u64 = 256 << 20;
/// Memory given to the kernel library unless `-k` sets `mem=` itself.
pub const DEFAULT_MEMORY: &str = "mem=256M";
/// The command run when none is given.
pub const DEFAULT_COMMAND: &str = "/bin/sh";

/// The usage text printed by `--help`.
pub const USAGE: &str = "\
Usage: kbox [OPTIONS] [--] [COMMAND [ARGS...]]
       kbox image import [--size SIZE] ARCHIVE OUT.ext4
       kbox image pull [--arch ARCH] [--insecure] [--size SIZE] REF OUT.ext4

Run COMMAND from an ext4 image, without root, with its file system calls served by
a Linux kernel running inside kbox. COMMAND defaults to the command an imported
image names, else /bin/sh. `kbox image` builds an image from a registry, an OCI
image layout, a `docker save` archive or a root filesystem tarball (kbox image --help).

Image (exactly one):
  -r IMAGE                use IMAGE as the root filesystem, nothing else mounted
  -R IMAGE                like -r, plus /proc, /sys, /dev, /dev/pts, /tmp and /run
  -S IMAGE                like -R, and the guest runs as root (uid 0, gid 0)

Options:
  -t FSTYPE               filesystem of IMAGE: ext4 (default), ext3 or ext2
  -k CMDLINE              extra kernel command line (memory: mem=256M unless set)
  -b HOST:GUEST           show the host file or directory HOST at GUEST (repeatable)
  -w DIR                  working directory in the guest (default /)
  -0, --root-id           run the guest as root (uid 0, gid 0)
      --change-id UID:GID run the guest as UID:GID
      --syscall-mode MODE seccomp (default), trap, rewrite or auto; trap and rewrite
                          run the guest in kbox's own process, for speed, not for
                          code you distrust; auto picks rewrite for a static
                          program that starts no processes, else seccomp
      --shadow-limit BYTES files up to this size are mapped from a host copy
                          (suffix K, M or G; default 256M; 4K to 4G)
      --preserve-fds N    pass kbox's FDs 3..3+N-1 to the guest (default 0: every
                          FD above 2 is closed)
  -v, --verbose           one line per dispatched syscall on stderr
      --stats[=FORMAT]    at exit, count and time the calls kbox answered, per
                          syscall, with errors by errno, on stderr; FORMAT is
                          table (default) or json
      --trace FILE        one JSON line per call kbox answers, to FILE (- for
                          stderr); see docs/trace.md
      --trace-filter NAMES  trace only these syscalls (comma-separated names);
                          alone, it traces to stderr
      --web[=ADDR:PORT]   serve a live dashboard of the guest's calls and
                          processes (default 127.0.0.1 and a free port, printed
                          at start)
      --net[=MODE]        none (default): the guest's IP sockets reach only its
                          own loopback; user (a bare --net): a network of its
                          own (10.0.2.15) through passt, the host's loopback
                          at 10.0.2.2, DNS at 10.0.2.3; host: the sockets are
                          the host's (its interfaces, its addresses)
  -p, --publish HOSTPORT:GUESTPORT[/tcp|/udp]
                          with --net=user, serve the guest's port on the host's
                          127.0.0.1 (repeatable; tcp unless /udp)
      --dns ADDR          the DNS server guest lookups reach (user: the one
                          10.0.2.3 forwards to; host: the guest's
                          /etc/resolv.conf); default: the host's first
  -h, --help              print this help and exit
      --version           print the version and exit

Options with a value take it as `-S IMAGE`, `-SIMAGE`, `--opt VALUE` or `--opt=VALUE`.
Options stop at `--` or at the first argument that is not an option.

Exit status: COMMAND's own; 128+N if it dies of signal N; 125 if kbox fails;
126 if COMMAND cannot be executed; 127 if it is not found.
";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Invocation {
    /// Print the usage and exit successfully.
    Help,
    /// Print the version and exit successfully.
    Version,
    /// Run a guest.
    Run(Box<Config>),
}

/// Which mounts the guest gets besides the image itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mounts {
    /// `-r`: the image is the whole filesystem.
    ImageOnly,
    /// `-R`/`-S`: also /proc, /sys, /dev, /dev/pts, /tmp and /run.
    System,
}

/// Who the guest runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    /// The uid and gid of the user running kbox.
    Caller,
    /// Root (uid 0, gid 0): `-S` or `-0`.
    Root,
    /// `--change-id UID:GID`.
    Ids {
        /// The guest's uid.
        uid: u32,
        /// The guest's gid.
        gid: u32,
    },
}

/// The image's filesystem (`-t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsType {
    /// ext2.
    Ext2,
    /// ext3.
    Ext3,
    /// ext4, the default.
    Ext4,
}

impl FsType {
    /// The name the kernel knows the filesystem by.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ext2 => "ext2",
            Self::Ext3 => "ext3",
            Self::Ext4 => "ext4",
        }
    }
}

/// How guest syscalls are intercepted. `--syscall-mode=auto` resolves to one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyscallTier {
    /// seccomp user notification: the guest runs in child processes kbox answers for.
    Seccomp,
    /// SIGSYS trap: the first guest process runs in kbox's own process.
    Trap,
    /// The trap tier with the guest's syscall sites patched to call kbox directly.
    Rewrite,
    /// The fastest tier that keeps the command's semantics, chosen once its program is
    /// found in the image.
    Auto,
}

/// Without `--syscall-mode`: the tier that keeps the guest out of kbox's process. The
/// in-process tiers share kbox's address space (docs/security.md), so kbox runs a guest
/// there only when asked to, `auto` included.
const DEFAULT_TIER: SyscallTier = SyscallTier::Seccomp;

impl SyscallTier {
    /// The name `--syscall-mode` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Seccomp => "seccomp",
            Self::Trap => "trap",
            Self::Rewrite => "rewrite",
            Self::Auto => "auto",
        }
    }

    /// The guest runs in kbox's own process.
    pub fn in_process(self) -> bool {
        matches!(self, Self::Trap | Self::Rewrite)
    }
}

/// What the guest's internet sockets reach (`--net`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetMode {
    /// The kernel library's loopback only.
    None,
    /// A network of the guest's own: the kernel library's interface, whose frames a
    /// user-mode network stack (passt) carries to the host's sockets.
    User,
    /// The host's network: a guest's AF_INET/AF_INET6 socket is a host socket.
    Host,
}

/// The transport of a published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

/// `-p HOSTPORT:GUESTPORT[/PROTO]`: the guest's port served on the host's 127.0.0.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Publish {
    pub host_port: u16,
    pub guest_port: u16,
    pub proto: Proto,
}

/// How `--stats` prints its report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsFormat {
    Table,
    Json,
}

/// Where `--trace` writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceTarget {
    Stderr,
    File(PathBuf),
}

/// `--web` without an address: loopback, a port the system picks.
pub const WEB_DEFAULT: std::net::SocketAddr = std::net::SocketAddr::V4(
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 0),
);

/// A `-b HOST:GUEST` bind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    /// The host file or directory.
    pub host: PathBuf,
    /// Where the guest sees it (absolute, without `..`).
    pub guest: PathBuf,
}

/// A valid command line: everything the runtime needs to start the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The filesystem image (`-r`/`-R`/`-S`).
    pub image: PathBuf,
    /// The image's filesystem type.
    pub fstype: FsType,
    /// Mounts besides the image.
    pub mounts: Mounts,
    /// Who the guest runs as.
    pub identity: Identity,
    /// The kernel command line kbox passes on: `-k` values joined by spaces, preceded by
    /// [`DEFAULT_MEMORY`] unless one of them sets `mem=`.
    pub kernel_cmdline: String,
    /// Host paths shown in the guest, in command-line order.
    pub binds: Vec<Bind>,
    /// The guest's working directory (absolute).
    pub workdir: PathBuf,
    /// The interception tier.
    pub tier: SyscallTier,
    /// Largest file, in bytes, that gets a host shadow copy.
    pub shadow_limit: u64,
    /// `--preserve-fds N`: host FDs 3..3+N-1 stay open in the guest.
    pub preserve_fds: u32,
    /// `-v`: report dispatched syscalls.
    pub verbose: bool,
    /// `--stats`: report counts and times at exit.
    pub stats: Option<StatsFormat>,
    /// `--trace`: where the JSON lines go.
    pub trace: Option<TraceTarget>,
    /// `--trace-filter`: the host numbers of the syscalls traced (all when empty).
    pub trace_filter: Vec<u32>,
    /// `--web`: where the dashboard listens.
    pub web: Option<std::net::SocketAddr>,
    /// `--net`: what the guest's internet sockets reach.
    pub net: NetMode,
    /// `-p`: guest ports served on the host (user mode only).
    pub publish: Vec<Publish>,
    /// `--dns`: the DNS server guest lookups reach.
    pub dns: Option<std::net::IpAddr>,
    /// The guest's argv; never empty.
    pub command: Vec<OsString>,
    /// Whether the user gave the command (else it is [`DEFAULT_COMMAND`], or the image's
    /// saved one).
    pub command_given: bool,
    /// Environment the image adds to the guest's (its saved `Env`).
    pub extra_env: Vec<OsString>,
}

/// Every option kbox knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opt {
    ImageOnly,
    ImageSystem,
    ImageSystemRoot,
    FsType,
    Kernel,
    Bind,
    WorkDir,
    RootId,
    ChangeId,
    SyscallMode,
    ShadowLimit,
    PreserveFds,
    Verbose,
    Stats,
    Trace,
    TraceFilter,
    Web,
    Net,
    Publish,
    Dns,
    Help,
    Version,
}

impl Opt {
    fn from_short(c: u8) -> Option<Self> {
        Some(match c {
            b'r' => Self::ImageOnly,
            b'R' => Self::ImageSystem,
            b'S' => Self::ImageSystemRoot,
            b't' => Self::FsType,
            b'k' => Self::Kernel,
            b'b' => Self::Bind,
            b'w' => Self::WorkDir,
            b'0' => Self::RootId,
            b'v' => Self::Verbose,
            b'p' => Self::Publish,
            b'h' => Self::Help,
            _ => return None,
        })
    }

    fn from_long(name: &[u8]) -> Option<Self> {
        Some(match name {
            b"root-id" => Self::RootId,
            b"change-id" => Self::ChangeId,
            b"syscall-mode" => Self::SyscallMode,
            b"shadow-limit" => Self::ShadowLimit,
            b"preserve-fds" => Self::PreserveFds,
            b"verbose" => Self::Verbose,
            b"stats" => Self::Stats,
            b"trace" => Self::Trace,
            b"trace-filter" => Self::TraceFilter,
            b"web" => Self::Web,
            b"net" => Self::Net,
            b"publish" => Self::Publish,
            b"dns" => Self::Dns,
            b"help" => Self::Help,
            b"version" => Self::Version,
            _ => return None,
        })
    }

    const fn takes_value(self) -> bool {
        !matches!(
            self,
            Self::RootId
                | Self::Verbose
                | Self::Stats
                | Self::Web
                | Self::Net
                | Self::Help
                | Self::Version
        )
    }

    /// The option as messages name it (each option with a value has one spelling).
    const fn name(self) -> &'static str {
        match self {
            Self::ImageOnly => "-r",
            Self::ImageSystem => "-R",
            Self::ImageSystemRoot => "-S",
            Self::FsType => "-t",
            Self::Kernel => "-k",
            Self::Bind => "-b",
            Self::WorkDir => "-w",
            Self::RootId => "-0/--root-id",
            Self::ChangeId => "--change-id",
            Self::SyscallMode => "--syscall-mode",
            Self::ShadowLimit => "--shadow-limit",
            Self::PreserveFds => "--preserve-fds",
            Self::Verbose => "-v/--verbose",
            Self::Stats => "--stats",
            Self::Trace => "--trace",
            Self::TraceFilter => "--trace-filter",
            Self::Web => "--web",
            Self::Net => "--net",
            Self::Publish => "-p/--publish",
            Self::Dns => "--dns",
            Self::Help => "-h/--help",
            Self::Version => "--version",
        }
    }
}

/// The options seen so far.
struct Builder {
    image: Option<(Opt, PathBuf)>,
    fstype: FsType,
    kernel: Vec<String>,
    binds: Vec<Bind>,
    workdir: PathBuf,
    root_id: bool,
    change_id: Option<(u32, u32)>,
    tier: SyscallTier,
    shadow_limit: u64,
    preserve_fds: u32,
    verbose: bool,
    stats: Option<StatsFormat>,
    trace: Option<TraceTarget>,
    trace_filter: Vec<u32>,
    web: Option<std::net::SocketAddr>,
    net: NetMode,
    publish: Vec<Publish>,
    dns: Option<std::net::IpAddr>,
}

/// Parses kbox's arguments (without argv\[0\]).
///
/// `--help` and `--version` win as soon as they are seen; options before them are still
/// checked for syntax, options after them are not.
pub fn parse<I>(args: I) -> Result<Invocation, UsageError>
where
    I: IntoIterator<Item = OsString>,
{
    let mut b = Builder {
        image: None,
        fstype: FsType::Ext4,
        kernel: Vec::new(),
        binds: Vec::new(),
        workdir: PathBuf::from("/"),
        root_id: false,
        change_id: None,
        tier: DEFAULT_TIER,
        shadow_limit: SHADOW_LIMIT_DEFAULT,
        preserve_fds: 0,
        verbose: false,
        stats: None,
        trace: None,
        trace_filter: Vec::new(),
        web: None,
        net: NetMode::None,
        publish: Vec::new(),
        dns: None,
    };
    let mut args = args.into_iter();
    let mut command = Vec::new();
    while let Some(arg) = args.next() {
        let bytes = arg.as_bytes();
        if bytes == b"--" {
            command.extend(args.by_ref());
            break;
        }
        if let Some(long) = bytes.strip_prefix(b"--") {
            let (name, inline) = match long.iter().position(|&c| c == b'=') {
                Some(eq) => (&long[..eq], Some(&long[eq + 1..])),
                None => (long, None),
            };
            let opt = Opt::from_long(name)
                .ok_or_else(|| UsageError::UnknownOption(Box::from(OsStr::from_bytes(bytes))))?;
            if opt.takes_value() {
                let value = match inline {
                    Some(v) => OsString::from_vec(v.to_vec()),
                    None => args.next().ok_or(UsageError::MissingValue(opt.name()))?,
                };
                b.apply_value(opt, value)?;
            } else if opt == Opt::Stats {
                // Options whose value is optional (and so only given inline).
                b.stats = Some(parse_stats_format(inline)?);
            } else if opt == Opt::Web {
                b.web = Some(parse_web_address(inline)?);
            } else if opt == Opt::Net {
                b.net = parse_net_mode(inline)?;
            } else if inline.is_some() {
                return Err(UsageError::UnexpectedValue(opt.name()));
            } else if let Some(done) = b.apply_flag(opt) {
                return Ok(done);
            }
        } else if let Some(cluster) = bytes.strip_prefix(b"-").filter(|c| !c.is_empty()) {
            // Short options: flags may be grouped (`-0v`); an option with a value takes
            // the rest of the argument (`-Sroot.ext4`) or, if nothing is left, the next one.
            let mut rest = cluster;
            while let Some((&c, after)) = rest.split_first() {
                let opt = Opt::from_short(c).ok_or_else(|| unknown_short(c, bytes))?;
                if opt.takes_value() {
                    let value = if after.is_empty() {
                        args.next().ok_or(UsageError::MissingValue(opt.name()))?
                    } else {
                        OsString::from_vec(after.to_vec())
                    };
                    b.apply_value(opt, value)?;
                    break;
                }
                if let Some(done) = b.apply_flag(opt) {
                    return Ok(done);
                }
                rest = after;
            }
        } else {
            // The first argument that is not an option (a lone `-` included) is COMMAND.
            command.push(arg);
            command.extend(args.by_ref());
            break;
        }
    }
    b.finish(command).map(|c| Invocation::Run(Box::new(c)))
}

/// The error for an unknown short option `c` met inside the argument `arg`.
fn unknown_short(c: u8, arg: &[u8]) -> UsageError {
    let shown: &[u8] = if c.is_ascii() { &[b'-', c] } else { arg };
    UsageError::UnknownOption(Box::from(OsStr::from_bytes(shown)))
}

impl Builder {
    /// Applies a flag; returns the invocation when the flag ends parsing.
    fn apply_flag(&mut self, opt: Opt) -> Option<Invocation> {
        match opt {
            Opt::Help => return Some(Invocation::Help),
            Opt::Version => return Some(Invocation::Version),
            Opt::RootId => self.root_id = true,
            Opt::Verbose => self.verbose = true,
            Opt::Stats => self.stats = Some(StatsFormat::Table),
            Opt::Web => self.web = Some(WEB_DEFAULT),
            _ => {}
        }
        None
    }

    fn apply_value(&mut self, opt: Opt, value: OsString) -> Result<(), UsageError> {
        if value.is_empty() {
            return Err(UsageError::EmptyValue(opt.name()));
        }
        match opt {
            Opt::ImageOnly | Opt::ImageSystem | Opt::ImageSystemRoot => {
                if let Some((first, _)) = self.image {
                    return Err(UsageError::SecondImage {
                        first: first.name(),
                        second: opt.name(),
                    });
                }
                self.image = Some((opt, PathBuf::from(value)));
            }
            Opt::FsType => self.fstype = parse_fstype(&value)?,
            Opt::Kernel => {
                let text = value
                    .into_string()
                    .map_err(|v| UsageError::KernelCmdlineNotText(v.into_boxed_os_str()))?;
                self.kernel.push(text);
            }
            Opt::Bind => self.binds.push(parse_bind(&value)?),
            Opt::WorkDir => {
                if !value.as_bytes().starts_with(b"/") {
                    return Err(UsageError::WorkDirNotAbsolute(value.into_boxed_os_str()));
                }
                self.workdir = PathBuf::from(value);
            }
            Opt::ChangeId => self.change_id = Some(parse_ids(&value)?),
            Opt::SyscallMode => self.tier = parse_syscall_mode(&value)?,
            Opt::ShadowLimit => self.shadow_limit = parse_shadow_limit(&value)?,
            Opt::PreserveFds => self.preserve_fds = parse_preserve_fds(&value)?,
            Opt::Trace => {
                self.trace = Some(if value.as_bytes() == b"-" {
                    TraceTarget::Stderr
                } else {
                    TraceTarget::File(PathBuf::from(value))
                });
            }
            Opt::TraceFilter => self.trace_filter.extend(parse_trace_filter(&value)?),
            Opt::Publish => self.publish.push(parse_publish(&value)?),
            Opt::Dns => {
                self.dns = Some(
                    value
                        .to_str()
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| UsageError::BadDnsAddress(value.into_boxed_os_str()))?,
                );
            }
            Opt::RootId
            | Opt::Verbose
            | Opt::Stats
            | Opt::Web
            | Opt::Net
            | Opt::Help
            | Opt::Version => {}
        }
        Ok(())
    }

    fn finish(self, mut command: Vec<OsString>) -> Result<Config, UsageError> {
        let (image_opt, image) = self.image.ok_or(UsageError::NoImage)?;
        let root_by = if image_opt == Opt::ImageSystemRoot {
            Some(image_opt)
        } else if self.root_id {
            Some(Opt::RootId)
        } else {
            None
        };
        let identity = match (root_by, self.change_id) {
            (Some(opt), Some(_)) => {
                return Err(UsageError::ConflictingIdentity { root: opt.name() });
            }
            (Some(_), None) => Identity::Root,
            (None, Some((uid, gid))) => Identity::Ids { uid, gid },
            (None, None) => Identity::Caller,
        };
        let command_given = !command.is_empty();
        if command.is_empty() {
            command.push(OsString::from(DEFAULT_COMMAND));
        }
        if !self.publish.is_empty() && self.net != NetMode::User {
            return Err(UsageError::PublishNeedsUserNet);
        }
        if self.dns.is_some() && self.net == NetMode::None {
            return Err(UsageError::DnsWithoutNet);
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(p) = self
            .publish
            .iter()
            .find(|p| !seen.insert((p.host_port, p.proto)))
        {
            return Err(UsageError::PublishTwice(p.host_port));
        }
        Ok(Config {
            image,
            fstype: self.fstype,
            mounts: if image_opt == Opt::ImageOnly {
                Mounts::ImageOnly
            } else {
                Mounts::System
            },
            identity,
            kernel_cmdline: kernel_cmdline(&self.kernel),
            binds: self.binds,
            workdir: self.workdir,
            tier: self.tier,
            shadow_limit: self.shadow_limit,
            preserve_fds: self.preserve_fds,
            verbose: self.verbose,
            stats: self.stats,
            // A filter alone asks for a trace: to stderr, as strace does.
            trace: self
                .trace
                .or_else(|| (!self.trace_filter.is_empty()).then_some(TraceTarget::Stderr)),
            trace_filter: self.trace_filter,
            web: self.web,
            net: self.net,
            publish: self.publish,
            dns: self.dns,
            command,
            command_given,
            extra_env: Vec::new(),
        })
    }
}

fn parse_fstype(value: &OsStr) -> Result<FsType, UsageError> {
    match value.as_bytes() {
        b"ext4" => Ok(FsType::Ext4),
        b"ext3" => Ok(FsType::Ext3),
        b"ext2" => Ok(FsType::Ext2),
        _ => Err(UsageError::UnsupportedFsType(Box::from(value))),
    }
}

/// Splits `HOST:GUEST` at the last `:` (so HOST may contain `:`, GUEST may not).
fn parse_bind(value: &OsStr) -> Result<Bind, UsageError> {
    let bytes = value.as_bytes();
    let boxed = || Box::from(value);
    let colon = bytes
        .iter()
        .rposition(|&c| c == b':')
        .ok_or_else(|| UsageError::BindWithoutSeparator(boxed()))?;
    let (host, guest) = (&bytes[..colon], &bytes[colon + 1..]);
    if host.is_empty() {
        return Err(UsageError::BindHostEmpty(boxed()));
    }
    let guest = Path::new(OsStr::from_bytes(guest));
    if !guest.is_absolute() {
        return Err(UsageError::BindGuestNotAbsolute(boxed()));
    }
    if guest.components().any(|c| c == Component::ParentDir) {
        return Err(UsageError::BindGuestHasDotDot(boxed()));
    }
    Ok(Bind {
        host: PathBuf::from(OsStr::from_bytes(host)),
        guest: guest.to_path_buf(),
    })
}

/// Parses `UID:GID`: two decimal ids, neither 4294967295 (which means "unchanged" to
/// `setresuid`).
fn parse_ids(value: &OsStr) -> Result<(u32, u32), UsageError> {
    let bad = || UsageError::BadChangeId(Box::from(value));
    let bytes = value.as_bytes();
    let colon = bytes.iter().position(|&c| c == b':').ok_or_else(bad)?;
    let uid = parse_id(&bytes[..colon]).ok_or_else(bad)?;
    let gid = parse_id(&bytes[colon + 1..]).ok_or_else(bad)?;
    Ok((uid, gid))
}

fn parse_id(digits: &[u8]) -> Option<u32> {
    let n = parse_decimal(digits)?;
    u32::try_from(n).ok().filter(|&id| id != u32::MAX)
}

/// Parses a non-empty run of ASCII digits (no sign, no spaces) that fits in a `u64`.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let digit = d.is_ascii_digit().then(|| d - b'0')?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

fn parse_stats_format(value: Option<&[u8]>) -> Result<StatsFormat, UsageError> {
    match value {
        None | Some(b"table") => Ok(StatsFormat::Table),
        Some(b"json") => Ok(StatsFormat::Json),
        Some(other) => Err(UsageError::UnknownStatsFormat(Box::from(
            OsStr::from_bytes(other),
        ))),
    }
}

/// Parses `--trace-filter` names (comma-separated) into host syscall numbers.
fn parse_trace_filter(value: &OsStr) -> Result<Vec<u32>, UsageError> {
    value
        .as_bytes()
        .split(|&c| c == b',')
        .filter(|name| !name.is_empty())
        .map(|name| {
            std::str::from_utf8(name)
                .ok()
                .and_then(crate::dispatch::policy::host_nr)
                .ok_or_else(|| UsageError::UnknownSyscallName(Box::from(OsStr::from_bytes(name))))
        })
        .collect()
}

/// Parses `--web`'s optional `ADDR:PORT` (IPv6 as `[ADDR]:PORT`).
fn parse_web_address(value: Option<&[u8]>) -> Result<std::net::SocketAddr, UsageError> {
    let Some(value) = value else {
        return Ok(WEB_DEFAULT);
    };
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| UsageError::BadWebAddress(Box::from(OsStr::from_bytes(value))))
}

/// Parses `--net`'s optional value (only inline, like `--stats`); alone it means `user`.
fn parse_net_mode(value: Option<&[u8]>) -> Result<NetMode, UsageError> {
    match value {
        Some(b"none") => Ok(NetMode::None),
        Some(b"host") => Ok(NetMode::Host),
        None | Some(b"user") => Ok(NetMode::User),
        Some(other) => Err(UsageError::UnknownNetMode(Box::from(OsStr::from_bytes(
            other,
        )))),
    }
}

/// Parses `HOSTPORT:GUESTPORT[/tcp|/udp]` (ports 1..=65535).
fn parse_publish(value: &OsStr) -> Result<Publish, UsageError> {
    let bad = || UsageError::BadPublish(Box::from(value));
    let text = value.to_str().ok_or_else(bad)?;
    let (ports, proto) = match text.split_once('/') {
        None => (text, Proto::Tcp),
        Some((ports, "tcp")) => (ports, Proto::Tcp),
        Some((ports, "udp")) => (ports, Proto::Udp),
        Some(_) => return Err(bad()),
    };
    let (host, guest) = ports.split_once(':').ok_or_else(bad)?;
    let port = |p: &str| {
        parse_decimal(p.as_bytes())
            .and_then(|n| u16::try_from(n).ok())
            .filter(|&n| n != 0)
    };
    Ok(Publish {
        host_port: port(host).ok_or_else(bad)?,
        guest_port: port(guest).ok_or_else(bad)?,
        proto,
    })
}

fn parse_syscall_mode(value: &OsStr) -> Result<SyscallTier, UsageError> {
    match value.as_bytes() {
        b"seccomp" => Ok(SyscallTier::Seccomp),
        b"auto" => Ok(SyscallTier::Auto),
        b"trap" => Ok(SyscallTier::Trap),
        b"rewrite" => Ok(SyscallTier::Rewrite),
        _ => Err(UsageError::UnknownSyscallMode(Box::from(value))),
    }
}

/// Parses a size in bytes with an optional binary suffix (K, M, G in either case) and
/// checks it against [`SHADOW_LIMIT_MIN`]..=[`SHADOW_LIMIT_MAX`].
/// Most FDs `--preserve-fds` passes (the guest's RLIMIT_NOFILE is 65536).
const PRESERVE_FDS_MAX: u32 = 65_000;

fn parse_preserve_fds(value: &OsStr) -> Result<u32, UsageError> {
    value
        .to_str()
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|&n| n <= PRESERVE_FDS_MAX)
        .ok_or_else(|| UsageError::BadPreserveFds(Box::from(value)))
}

fn parse_shadow_limit(value: &OsStr) -> Result<u64, UsageError> {
    let bytes = value.as_bytes();
    let (digits, shift) = match bytes.split_last() {
        Some((b'k' | b'K', digits)) => (digits, 10),
        Some((b'm' | b'M', digits)) => (digits, 20),
        Some((b'g' | b'G', digits)) => (digits, 30),
        _ => (bytes, 0),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(UsageError::BadShadowLimit(Box::from(value)));
    }
    // Sizes too big for a u64 saturate, which is out of range too.
    let size = parse_decimal(digits).map_or(u64::MAX, |n| n.saturating_mul(1u64 << shift));
    if (SHADOW_LIMIT_MIN..=SHADOW_LIMIT_MAX).contains(&size) {
        Ok(size)
    } else {
        Err(UsageError::ShadowLimitOutOfRange(Box::from(value)))
    }
}

/// Joins the `-k` values, with [`DEFAULT_MEMORY`] first unless one of them sets `mem=`.
fn kernel_cmdline(extra: &[String]) -> String {
    let sets_memory = extra
        .iter()
        .flat_map(|s| s.split_ascii_whitespace())
        .any(|word| word.starts_with("mem="));
    let mut words: Vec<&str> = Vec::with_capacity(extra.len() + 1);
    if !sets_memory {
        words.push(DEFAULT_MEMORY);
    }
    words.extend(extra.iter().map(String::as_str));
    words.join(" ")
}

/// Whether the image can be written, as found by [`check_host`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageAccess {
    /// The user can write the image: mount it read-write.
    ReadWrite,
    /// The user cannot write the image (`access(W_OK)` said why): mount it read-only.
    ReadOnly(Errno),
}

impl ImageAccess {
    /// The warning to print for this access, if any.
    pub fn warning(self, image: &Path) -> Option<Warning> {
        match self {
            Self::ReadWrite => None,
            Self::ReadOnly(reason) => Some(Warning::ImageReadOnly {
                path: image.to_path_buf(),
                reason,
            }),
        }
    }
}

/// Checks on the host what the command line names: the image, then each bind source.
pub fn check_host(config: &Config) -> Result<ImageAccess, Error> {
    let access = check_image(&config.image)?;
    for bind in &config.binds {
        check_bind_host(&bind.host)?;
    }
    Ok(access)
}

/// The image must be an existing, readable regular file or block device.
fn check_image(path: &Path) -> Result<ImageAccess, ImageError> {
    let meta = fs::metadata(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => ImageError::Missing(path.to_path_buf()),
        _ => ImageError::Inaccessible {
            path: path.to_path_buf(),
            source,
        },
    })?;
    let kind = meta.file_type();
    if kind.is_dir() {
        return Err(ImageError::IsDirectory(path.to_path_buf()));
    }
    // Checked before opening: opening a FIFO would block.
    if !kind.is_file() && !kind.is_block_device() {
        return Err(ImageError::NotAnImageFile(path.to_path_buf()));
    }
    File::open(path).map_err(|source| ImageError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(match rustix::fs::access(path, Access::WRITE_OK) {
        Ok(()) => ImageAccess::ReadWrite,
        Err(reason) => ImageAccess::ReadOnly(reason),
    })
}

fn check_bind_host(host: &Path) -> Result<(), BindError> {
    match fs::metadata(host) {
        Ok(_) => Ok(()),
        Err(source) if source.kind() == io::ErrorKind::NotFound => {
            Err(BindError::HostMissing(host.to_path_buf()))
        }
        Err(source) => Err(BindError::HostInaccessible {
            host: host.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    /// Parses `list`, which must be a valid command line that runs a guest.
    fn config(list: &[&str]) -> Config {
        match parse(args(list)) {
            Ok(Invocation::Run(config)) => *config,
            other => panic!("{list:?} gave {other:?}"),
        }
    }

    /// Parses `list`, which must be rejected.
    fn error(list: &[&str]) -> UsageError {
        match parse(args(list)) {
            Err(e) => e,
            other => panic!("{list:?} gave {other:?}"),
        }
    }

    fn os(s: &str) -> Box<OsStr> {
        Box::from(OsStr::new(s))
    }

    // Image options and defaults.

    #[test]
    fn image_only_when_no_other_option_gives_every_default() {
        let expected = Config {
            image: PathBuf::from("root.ext4"),
            fstype: FsType::Ext4,
            mounts: Mounts::ImageOnly,
            identity: Identity::Caller,
            kernel_cmdline: String::from("mem=256M"),
            binds: Vec::new(),
            workdir: PathBuf::from("/"),
            tier: DEFAULT_TIER,
            shadow_limit: 256 << 20,
            preserve_fds: 0,
            verbose: false,
            stats: None,
            trace: None,
            trace_filter: Vec::new(),
            web: None,
            net: NetMode::None,
            publish: Vec::new(),
            dns: None,
            command: args(&["/bin/sh"]),
            command_given: false,
            extra_env: Vec::new(),
        };
        assert_eq!(config(&["-r", "root.ext4"]), expected);
    }

    #[test]
    fn system_image_when_given_mounts_system_as_caller() {
        let c = config(&["-R", "root.ext4"]);
        assert_eq!((c.mounts, c.identity), (Mounts::System, Identity::Caller));
    }

    #[test]
    fn system_root_image_when_given_mounts_system_as_root() {
        let c = config(&["-S", "root.ext4"]);
        assert_eq!((c.mounts, c.identity), (Mounts::System, Identity::Root));
    }

    #[test]
    fn image_when_value_attached_takes_rest_of_argument() {
        assert_eq!(config(&["-Sfoo.ext4"]).image, PathBuf::from("foo.ext4"));
    }

    #[test]
    fn image_when_value_starts_with_dash_takes_it() {
        assert_eq!(
            config(&["-r", "-odd.ext4"]).image,
            PathBuf::from("-odd.ext4")
        );
    }

    #[test]
    fn image_when_path_not_utf8_keeps_bytes() {
        let raw = OsString::from_vec(b"img\xff.ext4".to_vec());
        let parsed = parse(vec![OsString::from("-r"), raw.clone()]);
        let image = match parsed {
            Ok(Invocation::Run(c)) => c.image,
            other => panic!("{other:?}"),
        };
        assert_eq!(image, PathBuf::from(raw));
    }

    #[test]
    fn image_when_value_missing_is_missing_value() {
        assert_eq!(error(&["-S"]), UsageError::MissingValue("-S"));
    }

    #[test]
    fn image_when_value_empty_is_empty_value() {
        assert_eq!(error(&["-r", ""]), UsageError::EmptyValue("-r"));
    }

    #[test]
    fn image_when_absent_is_no_image() {
        assert_eq!(error(&["-v", "--", "ls"]), UsageError::NoImage);
    }

    #[test]
    fn image_when_no_arguments_is_no_image() {
        assert_eq!(error(&[]), UsageError::NoImage);
    }

    #[test]
    fn image_when_two_modes_is_second_image() {
        assert_eq!(
            error(&["-r", "a.ext4", "-R", "b.ext4"]),
            UsageError::SecondImage {
                first: "-r",
                second: "-R"
            }
        );
    }

    #[test]
    fn image_when_same_mode_twice_is_second_image() {
        assert_eq!(
            error(&["-S", "a.ext4", "-Sb.ext4"]),
            UsageError::SecondImage {
                first: "-S",
                second: "-S"
            }
        );
    }

    // -t

    #[test]
    fn fstype_when_ext3_is_ext3() {
        assert_eq!(config(&["-r", "i", "-t", "ext3"]).fstype, FsType::Ext3);
    }

    #[test]
    fn fstype_when_ext2_attached_is_ext2() {
        assert_eq!(config(&["-r", "i", "-text2"]).fstype, FsType::Ext2);
    }

    #[test]
    fn fstype_when_given_twice_last_wins() {
        assert_eq!(
            config(&["-r", "i", "-t", "ext2", "-t", "ext4"]).fstype,
            FsType::Ext4
        );
    }

    #[test]
    fn fstype_when_xfs_is_unsupported() {
        assert_eq!(
            error(&["-r", "i", "-t", "xfs"]),
            UsageError::UnsupportedFsType(os("xfs"))
        );
    }

    #[test]
    fn fstype_when_uppercase_is_unsupported() {
        assert_eq!(
            error(&["-r", "i", "-t", "EXT4"]),
            UsageError::UnsupportedFsType(os("EXT4"))
        );
    }

    #[test]
    fn fstype_when_value_missing_is_missing_value() {
        assert_eq!(error(&["-r", "i", "-t"]), UsageError::MissingValue("-t"));
    }

    // -k

    #[test]
    fn kernel_when_given_follows_default_memory() {
        assert_eq!(
            config(&["-r", "i", "-k", "loglevel=7"]).kernel_cmdline,
            "mem=256M loglevel=7"
        );
    }

    #[test]
    fn kernel_when_sets_memory_drops_default_memory() {
        assert_eq!(
            config(&["-r", "i", "-k", "quiet mem=1G"]).kernel_cmdline,
            "quiet mem=1G"
        );
    }

    #[test]
    fn kernel_when_repeated_joins_in_order() {
        assert_eq!(
            config(&["-r", "i", "-k", "a=1", "-kmem=64M", "-k", "b"]).kernel_cmdline,
            "a=1 mem=64M b"
        );
    }

    #[test]
    fn kernel_when_word_only_ends_in_mem_keeps_default_memory() {
        assert_eq!(
            config(&["-r", "i", "-k", "nomem=1"]).kernel_cmdline,
            "mem=256M nomem=1"
        );
    }

    #[test]
    fn kernel_when_not_utf8_is_not_text() {
        let raw = OsString::from_vec(b"a\xff".to_vec());
        let parsed = parse(vec![
            OsString::from("-r"),
            OsString::from("i"),
            OsString::from("-k"),
            raw.clone(),
        ]);
        assert_eq!(
            parsed,
            Err(UsageError::KernelCmdlineNotText(raw.into_boxed_os_str()))
        );
    }

    #[test]
    fn kernel_when_value_missing_is_missing_value() {
        assert_eq!(error(&["-r", "i", "-k"]), UsageError::MissingValue("-k"));
    }

    // -b

    #[test]
    fn bind_when_valid_splits_host_and_guest() {
        assert_eq!(
            config(&["-r", "i", "-b", "/home/me/src:/src"]).binds,
            vec![Bind {
                host: PathBuf::from("/home/me/src"),
                guest: PathBuf::from("/src"),
            }]
        );
    }

    #[test]
    fn bind_when_repeated_keeps_order() {
        let guests: Vec<PathBuf> = config(&["-r", "i", "-b", "a:/x", "-bb:/y"])
            .binds
            .into_iter()
            .map(|b| b.guest)
            .collect();
        assert_eq!(guests, vec![PathBuf::from("/x"), PathBuf::from("/y")]);
    }

    #[test]
    fn bind_when_host_has_colon_splits_at_last() {
        let binds = config(&["-r", "i", "-b", "/a:b:/c"]).binds;
        assert_eq!(
            binds,
            vec![Bind {
                host: PathBuf::from("/a:b"),
                guest: PathBuf::from("/c"),
            }]
        );
    }

    #[test]
    fn bind_when_relative_host_is_kept_relative() {
        let binds = config(&["-r", "i", "-b", "data:/data"]).binds;
        assert_eq!(
            binds.first().map(|b| b.host.clone()),
            Some(PathBuf::from("data"))
        );
    }

    #[test]
    fn bind_when_no_colon_is_without_separator() {
        assert_eq!(
            error(&["-r", "i", "-b", "/src"]),
            UsageError::BindWithoutSeparator(os("/src"))
        );
    }

    #[test]
    fn bind_when_host_empty_is_host_empty() {
        assert_eq!(
            error(&["-r", "i", "-b", ":/src"]),
            UsageError::BindHostEmpty(os(":/src"))
        );
    }

    #[test]
    fn bind_when_guest_relative_is_not_absolute() {
        assert_eq!(
            error(&["-r", "i", "-b", "/src:src"]),
            UsageError::BindGuestNotAbsolute(os("/src:src"))
        );
    }

    #[test]
    fn bind_when_guest_empty_is_not_absolute() {
        assert_eq!(
            error(&["-r", "i", "-b", "/src:"]),
            UsageError::BindGuestNotAbsolute(os("/src:"))
        );
    }

    #[test]
    fn bind_when_guest_has_dotdot_is_rejected() {
        assert_eq!(
            error(&["-r", "i", "-b", "/src:/mnt/../etc"]),
            UsageError::BindGuestHasDotDot(os("/src:/mnt/../etc"))
        );
    }

    // -w

    #[test]
    fn workdir_when_absolute_is_kept() {
        assert_eq!(
            config(&["-r", "i", "-w", "/root"]).workdir,
            PathBuf::from("/root")
        );
    }

    #[test]
    fn workdir_when_attached_is_kept() {
        assert_eq!(
            config(&["-r", "i", "-w/tmp"]).workdir,
            PathBuf::from("/tmp")
        );
    }

    #[test]
    fn workdir_when_relative_is_not_absolute() {
        assert_eq!(
            error(&["-r", "i", "-w", "root"]),
            UsageError::WorkDirNotAbsolute(os("root"))
        );
    }

    #[test]
    fn workdir_when_value_missing_is_missing_value() {
        assert_eq!(error(&["-r", "i", "-w"]), UsageError::MissingValue("-w"));
    }

    // Identity

    #[test]
    fn root_id_when_short_is_root() {
        assert_eq!(config(&["-r", "i", "-0"]).identity, Identity::Root);
    }

    #[test]
    fn root_id_when_long_is_root() {
        assert_eq!(config(&["-R", "i", "--root-id"]).identity, Identity::Root);
    }

    #[test]
    fn root_id_when_given_value_is_unexpected_value() {
        assert_eq!(
            error(&["-r", "i", "--root-id=1"]),
            UsageError::UnexpectedValue("-0/--root-id")
        );
    }

    #[test]
    fn root_id_when_with_system_root_is_root() {
        assert_eq!(config(&["-S", "i", "-0"]).identity, Identity::Root);
    }

    #[test]
    fn change_id_when_separate_value_sets_ids() {
        assert_eq!(
            config(&["-R", "i", "--change-id", "1000:100"]).identity,
            Identity::Ids {
                uid: 1000,
                gid: 100
            }
        );
    }

    #[test]
    fn change_id_when_inline_value_sets_ids() {
        assert_eq!(
            config(&["-r", "i", "--change-id=0:4294967294"]).identity,
            Identity::Ids {
                uid: 0,
                gid: 4_294_967_294
            }
        );
    }

    #[test]
    fn change_id_when_one_id_is_bad() {
        assert_eq!(
            error(&["-r", "i", "--change-id", "1000"]),
            UsageError::BadChangeId(os("1000"))
        );
    }

    #[test]
    fn change_id_when_names_is_bad() {
        assert_eq!(
            error(&["-r", "i", "--change-id", "me:users"]),
            UsageError::BadChangeId(os("me:users"))
        );
    }

    #[test]
    fn change_id_when_gid_empty_is_bad() {
        assert_eq!(
            error(&["-r", "i", "--change-id", "1:"]),
            UsageError::BadChangeId(os("1:"))
        );
    }

    #[test]
    fn change_id_when_uid_empty_is_bad() {
        assert_eq!(
            error(&["-r", "i", "--change-id", ":1"]),
            UsageError::BadChangeId(os(":1"))
        );
    }

    #[test]
    fn change_id_when_signed_is_bad() {
        assert_eq!(
            error(&["-r", "i", "--change-id", "+1:1"]),
            UsageError::BadChangeId(os("+1:1"))
        );
    }

    #[test]
    fn change_id_when_three_fields_is_bad() {
        assert_eq!(
            error(&["-r", "i", "--change-id", "1:2:3"]),
            UsageError::BadChangeId(os("1:2:3"))
        );
    }

    #[test]
    fn change_id_when_minus_one_is_bad() {
        assert_eq!(
            error(&["-r", "i", "--change-id", "4294967295:0"]),
            UsageError::BadChangeId(os("4294967295:0"))
        );
    }

    #[test]
    fn change_id_when_above_u32_is_bad() {
        assert_eq!(
            error(&["-r", "i", "--change-id", "0:4294967296"]),
            UsageError::BadChangeId(os("0:4294967296"))
        );
    }

    #[test]
    fn change_id_when_value_missing_is_missing_value() {
        assert_eq!(
            error(&["-r", "i", "--change-id"]),
            UsageError::MissingValue("--change-id")
        );
    }

    #[test]
    fn change_id_when_with_system_root_conflicts() {
        assert_eq!(
            error(&["-S", "i", "--change-id", "1:1"]),
            UsageError::ConflictingIdentity { root: "-S" }
        );
    }

    #[test]
    fn change_id_when_with_root_id_conflicts() {
        assert_eq!(
            error(&["--change-id", "1:1", "-r", "i", "-0"]),
            UsageError::ConflictingIdentity {
                root: "-0/--root-id"
            }
        );
    }

    // --syscall-mode

    #[test]
    fn syscall_mode_default_keeps_the_guest_out_of_kbox() {
        assert_eq!(config(&["-r", "i"]).tier, SyscallTier::Seccomp);
    }

    #[test]
    fn syscall_mode_auto_is_chosen_later_from_the_program() {
        assert_eq!(
            config(&["-r", "i", "--syscall-mode=auto"]).tier,
            SyscallTier::Auto
        );
    }

    #[test]
    fn syscall_mode_when_seccomp_separate_is_seccomp() {
        assert_eq!(
            config(&["-r", "i", "--syscall-mode", "seccomp"]).tier,
            SyscallTier::Seccomp
        );
    }

    #[test]
    fn syscall_mode_trap_is_the_trap_tier() {
        assert_eq!(
            config(&["-r", "i", "--syscall-mode=trap"]).tier,
            SyscallTier::Trap
        );
    }

    #[test]
    fn syscall_mode_rewrite_is_the_rewrite_tier() {
        assert_eq!(
            config(&["-r", "i", "--syscall-mode=rewrite"]).tier,
            SyscallTier::Rewrite
        );
    }

    #[test]
    fn syscall_mode_when_unknown_is_unknown_mode() {
        assert_eq!(
            error(&["-r", "i", "--syscall-mode=ptrace"]),
            UsageError::UnknownSyscallMode(os("ptrace"))
        );
    }

    #[test]
    fn syscall_mode_when_inline_empty_is_empty_value() {
        assert_eq!(
            error(&["-r", "i", "--syscall-mode="]),
            UsageError::EmptyValue("--syscall-mode")
        );
    }

    #[test]
    fn syscall_mode_when_value_missing_is_missing_value() {
        assert_eq!(
            error(&["-r", "i", "--syscall-mode"]),
            UsageError::MissingValue("--syscall-mode")
        );
    }

    // --shadow-limit

    fn shadow(value: &str) -> Result<u64, UsageError> {
        parse_shadow_limit(OsStr::new(value))
    }

    #[test]
    fn preserve_fds_takes_a_count() {
        assert_eq!(config(&["-r", "i", "--preserve-fds", "2"]).preserve_fds, 2);
        assert_eq!(config(&["-r", "i", "--preserve-fds=0"]).preserve_fds, 0);
        for bad in ["-1", "x", "65001", "2k"] {
            assert_eq!(
                parse(args(&["-r", "i", "--preserve-fds", bad])),
                Err(UsageError::BadPreserveFds(os(bad))),
                "{bad}"
            );
        }
    }

    #[test]
    fn shadow_limit_when_plain_bytes_is_bytes() {
        assert_eq!(
            config(&["-r", "i", "--shadow-limit", "1000000"]).shadow_limit,
            1_000_000
        );
    }

    #[test]
    fn shadow_limit_when_inline_is_parsed() {
        assert_eq!(
            config(&["-r", "i", "--shadow-limit=64M"]).shadow_limit,
            64 << 20
        );
    }

    #[test]
    fn shadow_limit_when_k_suffix_is_kibibytes() {
        assert_eq!(shadow("8k"), Ok(8 << 10));
        assert_eq!(shadow("8K"), Ok(8 << 10));
    }

    #[test]
    fn shadow_limit_when_m_suffix_is_mebibytes() {
        assert_eq!(shadow("512m"), Ok(512 << 20));
        assert_eq!(shadow("512M"), Ok(512 << 20));
    }

    #[test]
    fn shadow_limit_when_g_suffix_is_gibibytes() {
        assert_eq!(shadow("2g"), Ok(2 << 30));
        assert_eq!(shadow("2G"), Ok(2 << 30));
    }

    #[test]
    fn shadow_limit_when_at_bounds_is_accepted() {
        assert_eq!(shadow("4096"), Ok(SHADOW_LIMIT_MIN));
        assert_eq!(shadow("4G"), Ok(SHADOW_LIMIT_MAX));
        assert_eq!(shadow("4194304K"), Ok(SHADOW_LIMIT_MAX));
    }

    #[test]
    fn shadow_limit_when_below_minimum_is_out_of_range() {
        assert_eq!(
            shadow("4095"),
            Err(UsageError::ShadowLimitOutOfRange(os("4095")))
        );
    }

    #[test]
    fn shadow_limit_when_zero_is_out_of_range() {
        assert_eq!(shadow("0"), Err(UsageError::ShadowLimitOutOfRange(os("0"))));
    }

    #[test]
    fn shadow_limit_when_one_byte_above_maximum_is_out_of_range() {
        assert_eq!(
            shadow("4294967297"),
            Err(UsageError::ShadowLimitOutOfRange(os("4294967297")))
        );
    }

    #[test]
    fn shadow_limit_when_suffix_overflows_is_out_of_range() {
        assert_eq!(
            shadow("17179869184G"),
            Err(UsageError::ShadowLimitOutOfRange(os("17179869184G")))
        );
    }

    #[test]
    fn shadow_limit_when_digits_overflow_is_out_of_range() {
        let huge = "99999999999999999999999";
        assert_eq!(
            shadow(huge),
            Err(UsageError::ShadowLimitOutOfRange(os(huge)))
        );
    }

    #[test]
    fn shadow_limit_when_unknown_suffix_is_bad() {
        assert_eq!(shadow("12T"), Err(UsageError::BadShadowLimit(os("12T"))));
    }

    #[test]
    fn shadow_limit_when_suffix_alone_is_bad() {
        assert_eq!(shadow("M"), Err(UsageError::BadShadowLimit(os("M"))));
    }

    #[test]
    fn shadow_limit_when_negative_is_bad() {
        assert_eq!(
            error(&["-r", "i", "--shadow-limit", "-1"]),
            UsageError::BadShadowLimit(os("-1"))
        );
    }

    #[test]
    fn shadow_limit_when_spaced_is_bad() {
        assert_eq!(shadow("64 M"), Err(UsageError::BadShadowLimit(os("64 M"))));
    }

    #[test]
    fn shadow_limit_when_value_missing_is_missing_value() {
        assert_eq!(
            error(&["-r", "i", "--shadow-limit"]),
            UsageError::MissingValue("--shadow-limit")
        );
    }

    // Flags, help, version

    #[test]
    fn stats_is_a_table_unless_json_is_asked_for() {
        assert_eq!(
            config(&["-r", "i", "--stats"]).stats,
            Some(StatsFormat::Table)
        );
        assert_eq!(
            config(&["-r", "i", "--stats=table"]).stats,
            Some(StatsFormat::Table)
        );
        assert_eq!(
            config(&["-r", "i", "--stats=json"]).stats,
            Some(StatsFormat::Json)
        );
        assert_eq!(config(&["-r", "i"]).stats, None);
        // The value is only ever inline: a next argument is the command.
        assert_eq!(
            config(&["-r", "i", "--stats", "json"]).command,
            args(&["json"])
        );
    }

    #[test]
    fn stats_with_an_unknown_format_is_an_error() {
        assert_eq!(
            error(&["-r", "i", "--stats=xml"]),
            UsageError::UnknownStatsFormat(os("xml"))
        );
    }

    #[test]
    fn trace_goes_to_a_file_or_to_stderr() {
        assert_eq!(
            config(&["-r", "i", "--trace", "t.jsonl"]).trace,
            Some(TraceTarget::File(PathBuf::from("t.jsonl")))
        );
        assert_eq!(
            config(&["-r", "i", "--trace=-"]).trace,
            Some(TraceTarget::Stderr)
        );
        assert_eq!(config(&["-r", "i"]).trace, None);
    }

    #[test]
    fn trace_filter_names_syscalls_and_alone_traces_to_stderr() {
        let c = config(&[
            "-r",
            "i",
            "--trace-filter=openat,close",
            "--trace-filter",
            "execve",
        ]);
        let nr = |n| crate::dispatch::policy::host_nr(n).unwrap_or(u32::MAX);
        assert_eq!(
            c.trace_filter,
            vec![nr("openat"), nr("close"), nr("execve")]
        );
        assert_eq!(c.trace, Some(TraceTarget::Stderr));
        assert_eq!(
            error(&["-r", "i", "--trace-filter=openat,nosuchcall"]),
            UsageError::UnknownSyscallName(os("nosuchcall"))
        );
    }

    #[test]
    fn web_listens_on_loopback_unless_told_otherwise() {
        assert_eq!(config(&["-r", "i", "--web"]).web, Some(WEB_DEFAULT));
        assert_eq!(
            config(&["-r", "i", "--web=0.0.0.0:8080"]).web,
            Some("0.0.0.0:8080".parse().unwrap_or(WEB_DEFAULT))
        );
        assert_eq!(config(&["-r", "i"]).web, None);
        // The value is only ever inline: a next argument is the command.
        assert_eq!(
            config(&["-r", "i", "--web", "127.0.0.1:1"]).command,
            args(&["127.0.0.1:1"])
        );
        assert_eq!(
            error(&["-r", "i", "--web=localhost"]),
            UsageError::BadWebAddress(os("localhost"))
        );
    }

    #[test]
    fn net_is_none_unless_asked_for_and_a_bare_net_is_user() {
        assert_eq!(config(&["-r", "i"]).net, NetMode::None);
        assert_eq!(config(&["-r", "i", "--net=none"]).net, NetMode::None);
        assert_eq!(config(&["-r", "i", "--net=host"]).net, NetMode::Host);
        assert_eq!(config(&["-r", "i", "--net=user"]).net, NetMode::User);
        assert_eq!(config(&["-r", "i", "--net", "true"]).net, NetMode::User);
        assert_eq!(
            config(&["-r", "i", "--net", "true"]).command,
            args(&["true"])
        );
        assert_eq!(
            error(&["-r", "i", "--net=bridge"]),
            UsageError::UnknownNetMode(os("bridge"))
        );
    }

    #[test]
    fn publish_takes_ports_and_a_protocol_and_needs_user_net() {
        let c = config(&["-r", "i", "--net", "-p", "8080:80", "--publish=5353:53/udp"]);
        assert_eq!(
            c.publish,
            [
                Publish {
                    host_port: 8080,
                    guest_port: 80,
                    proto: Proto::Tcp
                },
                Publish {
                    host_port: 5353,
                    guest_port: 53,
                    proto: Proto::Udp
                }
            ]
        );
        assert_eq!(
            config(&["-r", "i", "--net", "-p1:2/tcp"]).publish[0].guest_port,
            2
        );
        for bad in [
            "80",
            "0:80",
            "80:0",
            "80:65536",
            "a:80",
            "80:80/sctp",
            "80:80/",
            ":80",
        ] {
            assert_eq!(
                error(&["-r", "i", "--net", "-p", bad]),
                UsageError::BadPublish(os(bad)),
                "{bad}"
            );
        }
        assert_eq!(
            error(&["-r", "i", "-p", "80:80"]),
            UsageError::PublishNeedsUserNet
        );
        assert_eq!(
            error(&["-r", "i", "--net=host", "-p", "80:80"]),
            UsageError::PublishNeedsUserNet
        );
        assert_eq!(
            error(&["-r", "i", "--net", "-p", "80:80", "-p", "80:81"]),
            UsageError::PublishTwice(80)
        );
        // The same port number over both protocols is two publications.
        assert_eq!(
            config(&["-r", "i", "--net", "-p", "80:80", "-p", "80:80/udp"])
                .publish
                .len(),
            2
        );
    }

    #[test]
    fn dns_is_an_address_for_a_network_mode() {
        assert_eq!(
            config(&["-r", "i", "--net", "--dns", "127.0.0.77"]).dns,
            Some("127.0.0.77".parse().expect("an address"))
        );
        assert_eq!(
            config(&["-r", "i", "--net=host", "--dns=::1"]).dns,
            Some("::1".parse().expect("an address"))
        );
        assert_eq!(
            error(&["-r", "i", "--net", "--dns", "resolver"]),
            UsageError::BadDnsAddress(os("resolver"))
        );
        assert_eq!(
            error(&["-r", "i", "--dns", "127.0.0.1"]),
            UsageError::DnsWithoutNet
        );
    }

    #[test]
    fn verbose_when_short_is_set() {
        assert!(config(&["-r", "i", "-v"]).verbose);
    }

    #[test]
    fn verbose_when_long_is_set() {
        assert!(config(&["-r", "i", "--verbose"]).verbose);
    }

    #[test]
    fn verbose_when_given_value_is_unexpected_value() {
        assert_eq!(
            error(&["-r", "i", "--verbose=yes"]),
            UsageError::UnexpectedValue("-v/--verbose")
        );
    }

    #[test]
    fn flags_when_grouped_all_apply() {
        let c = config(&["-r", "i", "-0v"]);
        assert_eq!((c.identity, c.verbose), (Identity::Root, true));
    }

    #[test]
    fn flags_when_grouped_before_value_option_take_value() {
        let c = config(&["-vRroot.ext4"]);
        assert_eq!(
            (c.verbose, c.mounts, c.image),
            (true, Mounts::System, PathBuf::from("root.ext4"))
        );
    }

    #[test]
    fn flags_when_grouped_with_unknown_letter_name_it() {
        assert_eq!(
            error(&["-r", "i", "-vx"]),
            UsageError::UnknownOption(os("-x"))
        );
    }

    #[test]
    fn help_when_short_is_help() {
        assert_eq!(parse(args(&["-h"])), Ok(Invocation::Help));
    }

    #[test]
    fn help_when_long_after_options_is_help() {
        assert_eq!(
            parse(args(&["-S", "i", "--help", "--bogus"])),
            Ok(Invocation::Help)
        );
    }

    #[test]
    fn help_when_given_value_is_unexpected_value() {
        assert_eq!(
            error(&["--help=all"]),
            UsageError::UnexpectedValue("-h/--help")
        );
    }

    #[test]
    fn help_when_after_command_belongs_to_command() {
        assert_eq!(
            config(&["-r", "i", "ls", "--help"]).command,
            args(&["ls", "--help"])
        );
    }

    #[test]
    fn version_when_long_is_version() {
        assert_eq!(parse(args(&["--version"])), Ok(Invocation::Version));
    }

    // Unknown options

    #[test]
    fn unknown_when_long_is_unknown_option() {
        assert_eq!(
            error(&["--bogus"]),
            UsageError::UnknownOption(os("--bogus"))
        );
    }

    #[test]
    fn unknown_when_long_with_value_names_whole_argument() {
        assert_eq!(
            error(&["--bogus=1"]),
            UsageError::UnknownOption(os("--bogus=1"))
        );
    }

    #[test]
    fn unknown_when_long_prefix_is_not_abbreviation() {
        assert_eq!(
            error(&["-r", "i", "--verb"]),
            UsageError::UnknownOption(os("--verb"))
        );
    }

    #[test]
    fn unknown_when_short_is_unknown_option() {
        assert_eq!(
            error(&["-x", "-r", "i"]),
            UsageError::UnknownOption(os("-x"))
        );
    }

    #[test]
    fn unknown_when_version_short_is_unknown_option() {
        assert_eq!(error(&["-V"]), UsageError::UnknownOption(os("-V")));
    }

    // Command

    #[test]
    fn command_when_double_dash_ends_options() {
        let c = config(&["-r", "i", "--", "-v", "x"]);
        assert_eq!((c.command, c.verbose), (args(&["-v", "x"]), false));
    }

    #[test]
    fn command_when_first_non_option_starts_it() {
        assert_eq!(
            config(&["-r", "i", "sh", "-c", "echo hi", "--", "-v"]).command,
            args(&["sh", "-c", "echo hi", "--", "-v"])
        );
    }

    #[test]
    fn command_when_lone_dash_starts_it() {
        assert_eq!(config(&["-r", "i", "-", "x"]).command, args(&["-", "x"]));
    }

    #[test]
    fn command_when_double_dash_without_command_is_default_shell() {
        assert_eq!(config(&["-r", "i", "--"]).command, args(&["/bin/sh"]));
    }

    #[test]
    fn command_when_options_follow_image_and_dash_dash_is_kept_whole() {
        let c = config(&["-R", "i", "-v", "-w", "/tmp", "--", "/bin/ls", "-la"]);
        assert_eq!(
            (c.command, c.workdir, c.verbose),
            (args(&["/bin/ls", "-la"]), PathBuf::from("/tmp"), true)
        );
    }

    // Host checks

    /// A fresh, empty directory for one test, removed when the test ends.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("kbox-cli-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            if let Err(e) = fs::create_dir_all(&dir) {
                panic!("cannot create {}: {e}", dir.display());
            }
            Self(dir)
        }

        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn write_file(path: &Path) {
        if let Err(e) = fs::write(path, b"not really ext4") {
            panic!("cannot write {}: {e}", path.display());
        }
    }

    #[test]
    fn check_image_when_missing_is_missing() {
        let dir = Scratch::new("missing");
        let path = dir.join("nope.ext4");
        assert!(matches!(check_image(&path), Err(ImageError::Missing(p)) if p == path));
    }

    #[test]
    fn check_image_when_directory_is_directory() {
        let dir = Scratch::new("dir");
        assert!(matches!(check_image(&dir.0), Err(ImageError::IsDirectory(p)) if p == dir.0));
    }

    #[test]
    fn check_image_when_character_device_is_not_image_file() {
        let null = Path::new("/dev/null");
        assert!(matches!(
            check_image(null),
            Err(ImageError::NotAnImageFile(_))
        ));
    }

    #[test]
    fn check_image_when_parent_is_file_is_inaccessible() {
        let dir = Scratch::new("parent");
        let file = dir.join("file");
        write_file(&file);
        let result = check_image(&file.join("img.ext4"));
        assert!(matches!(result, Err(ImageError::Inaccessible { .. })));
    }

    #[test]
    fn check_image_when_own_file_is_read_write() {
        let dir = Scratch::new("own");
        let file = dir.join("img.ext4");
        write_file(&file);
        assert_eq!(check_image(&file).ok(), Some(ImageAccess::ReadWrite));
    }

    #[test]
    fn image_access_when_read_only_warns_with_reason() {
        let warning = ImageAccess::ReadOnly(Errno::ACCESS).warning(Path::new("a.ext4"));
        assert_eq!(
            warning,
            Some(Warning::ImageReadOnly {
                path: PathBuf::from("a.ext4"),
                reason: Errno::ACCESS
            })
        );
    }

    #[test]
    fn image_access_when_read_write_does_not_warn() {
        assert_eq!(ImageAccess::ReadWrite.warning(Path::new("a.ext4")), None);
    }

    #[test]
    fn check_bind_host_when_missing_names_host() {
        let dir = Scratch::new("bind-missing");
        let host = dir.join("src");
        assert!(matches!(check_bind_host(&host), Err(BindError::HostMissing(p)) if p == host));
    }

    #[test]
    fn check_bind_host_when_directory_exists_is_ok() {
        let dir = Scratch::new("bind-dir");
        assert!(check_bind_host(&dir.0).is_ok());
    }

    #[test]
    fn check_host_when_image_fine_but_bind_missing_is_bind_error() {
        let dir = Scratch::new("host");
        let image = dir.join("img.ext4");
        write_file(&image);
        let mut c = config(&["-r", "x", "-b", "h:/g"]);
        c.image = image;
        c.binds = vec![Bind {
            host: dir.join("absent"),
            guest: PathBuf::from("/g"),
        }];
        assert!(matches!(
            check_host(&c),
            Err(Error::Bind(BindError::HostMissing(_)))
        ));
    }
}
