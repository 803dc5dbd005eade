//! Runs a guest under the seccomp tier: boot the kernel library, mount the image, spawn the
//! command with the filter, answer its notifications until it exits, then unmount cleanly.

use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};

use kbox_core::bpf::Action;
use kbox_core::sysno::generic as g;
use kbox_lkl::{BootConfig, Errno, Kernel, RootMode, Task};

use crate::cli::{Config, Identity, Mounts, NetMode, TraceTarget};
use crate::dispatch::{self, Engine, Guest, Reply};
use crate::exit::Exit;
use crate::seccomp::child::{self, Command, ExitStatus, SpawnError};
use crate::seccomp::filter::Program;
use crate::seccomp::guest_mem::{self, MemError, PATH_MAX};
use crate::seccomp::notify::{FdTarget, NotifyError, NotifyFd, Pending};

mod json;
mod observe;
mod receivers;
mod stats;
mod ticks;
mod trace;
mod web;

/// The guest's RLIMIT_NOFILE (and the kernel library's): FD numbers up to this work.
const GUEST_NOFILE: u64 = 65536;
/// Signals sent to kbox that it passes on to the guest.
const FORWARDED: [i32; 7] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
];
/// AT_FDCWD (-100) as a register value.
const AT_FDCWD: usize = 0usize.wrapping_sub(100);
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A step of starting or running the guest that failed.
#[derive(Debug)]
pub enum RuntimeError {
    Disk(kbox_lkl::DiskError),
    Boot(kbox_lkl::BootError),
    Mount(kbox_lkl::MountError),
    /// Preparing the guest's world in the kernel library (identity, working directory).
    Setup {
        what: String,
        errno: Errno,
    },
    ExecDir(std::io::Error),
    /// Another kbox holds the image.
    Lock(crate::image_lock::LockError),
    Filter(kbox_core::bpf::BpfError),
    Spawn(SpawnError),
    Notify(NotifyError),
    /// `--trace FILE` cannot be created.
    TraceFile {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    /// `--net`: the guest's network cannot be set up.
    Network(crate::network::NetError),
    /// `--web` cannot listen.
    Web {
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
    /// The trap tier cannot start.
    Trap(crate::tiers::trap::TrapError),
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Disk(e) => write!(f, "cannot attach the image: {e}"),
            Self::Boot(e) => write!(f, "cannot boot the kernel library: {e}"),
            Self::Mount(e) => write!(f, "cannot mount the image: {e}"),
            Self::Setup { what, errno } => write!(f, "cannot {what}: {errno}"),
            Self::ExecDir(e) => write!(f, "cannot create kbox's private exec directory: {e}"),
            Self::Lock(e) => e.fmt(f),
            Self::Filter(e) => write!(f, "cannot build the seccomp filter: {e:?}"),
            Self::Spawn(e) => write!(f, "cannot start the guest: {e}"),
            Self::Notify(e) => write!(f, "lost contact with the guest: {e}"),
            Self::TraceFile { path, error } => {
                write!(
                    f,
                    "cannot create the trace file {}: {error}",
                    path.display()
                )
            }
            Self::Web { addr, error } => write!(f, "cannot serve the dashboard on {addr}: {error}"),
            Self::Network(e) => write!(f, "cannot set up the guest's network: {e}"),
            Self::Trap(e) => e.fmt(f),
        }
    }
}

impl RuntimeError {
    pub const fn hint(&self) -> Option<&'static str> {
        match self {
            Self::Mount(_) => Some("check the image with `e2fsck -fn IMAGE`"),
            Self::ExecDir(_) => Some("kbox needs a writable, exec-allowed TMPDIR or ~/.cache"),
            Self::Web { .. } => Some("pick another port, e.g. --web=127.0.0.1:0 for a free one"),
            Self::Network(e) => e.hint(),
            _ => None,
        }
    }
}

/// The seccomp tier's view of one notified thread. The notification moves out when the
/// engine answers with an FD (ADDFD with SEND) or defers the answer, so it is answered
/// exactly once.
struct SeccompGuest<'a> {
    notif: crate::seccomp::notify::Notification,
    pending: std::cell::RefCell<Option<Pending<'static>>>,
    /// Lets another thread receive while this one does slow work.
    slow: &'a dyn Fn(),
}

/// A notification answered later, from another thread.
struct Deferred(Pending<'static>);

impl dispatch::Answer for Deferred {
    fn fail(self: Box<Self>, e: Errno) {
        let _ = self.0.respond_errno(core_errno(e));
    }

    fn value(self: Box<Self>, v: i64) {
        let _ = self.0.respond_value(v);
    }

    fn with_fd(self: Box<Self>, fd: BorrowedFd<'_>, cloexec: bool) {
        let _ = self.0.respond_add_fd(fd, FdTarget::Lowest, cloexec);
    }

    fn add_fd(&self, fd: BorrowedFd<'_>, cloexec: bool) -> Result<i32, Errno> {
        self.0
            .add_fd(fd, FdTarget::Lowest, cloexec)
            .map_err(|e| match e {
                NotifyError::AddFd(errno) => Errno(i32::from(errno.get())),
                NotifyError::Gone => Errno::ESRCH,
                _ => Errno::EIO,
            })
    }
}

impl SeccompGuest<'_> {
    fn with<T>(&self, f: impl FnOnce(&Pending<'_>) -> Result<T, Errno>) -> Result<T, Errno> {
        match self.pending.borrow().as_ref() {
            Some(p) => f(p),
            None => Err(Errno::EINVAL),
        }
    }
}

fn mem_errno(e: MemError) -> Errno {
    match e {
        MemError::Fault => Errno::EFAULT,
        MemError::NameTooLong => Errno::ENAMETOOLONG,
        other => Errno(i32::from(other.errno().get())),
    }
}

impl Guest for SeccompGuest<'_> {
    fn slow(&self) {
        (self.slow)();
    }

    fn defer(&self) -> Option<Box<dyn dispatch::Answer>> {
        let pending = self.pending.borrow_mut().take()?;
        Some(Box::new(Deferred(pending)))
    }

    fn tid(&self) -> u32 {
        self.notif.pid
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.with(|p| guest_mem::read_checked(p, addr, buf).map_err(mem_errno))
    }

    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), Errno> {
        guest_mem::write(self.tid(), addr, buf).map_err(mem_errno)
    }

    fn read_path(&self, addr: u64) -> Result<CString, Errno> {
        self.with(|p| guest_mem::read_cstr_checked(p, addr, PATH_MAX).map_err(mem_errno))
    }

    fn answer_with_fd(
        &self,
        fd: BorrowedFd<'_>,
        at: Option<i32>,
        cloexec: bool,
    ) -> Result<i32, Errno> {
        let target = match at {
            Some(n) => FdTarget::At(u32::try_from(n).map_err(|_| Errno::EBADF)?),
            None => FdTarget::Lowest,
        };
        let pending = self.pending.borrow_mut().take().ok_or(Errno::EINVAL)?;
        pending
            .respond_add_fd(fd, target, cloexec)
            .map_err(|e| match e {
                NotifyError::AddFd(errno) => Errno(i32::from(errno.get())),
                NotifyError::Gone => Errno::ESRCH,
                _ => Errno::EIO,
            })
    }
}

/// Runs the guest of `config` (on an image mounted read-only when the user cannot write
/// it); returns how kbox should exit.
pub fn run(config: &Config, read_only: bool) -> Result<Exit, RuntimeError> {
    raise_nofile();
    // The trap tier's guest shares kbox's FD table: kbox's files go above its numbers.
    // (auto may choose it, once the program is found in the image: it undoes this when not.)
    if config.tier != crate::cli::SyscallTier::Seccomp {
        crate::tiers::trap::reserve_fds(crate::tiers::trap::fd_floor());
        // Signals sent to kbox are the guest's: only its threads (which start with an
        // empty mask) take them, never the kernel library's or kbox's own.
        crate::tiers::trap::block_all_signals();
    }
    block_forwarded_signals();
    crate::seccomp::sys_ignore_terminal_stops();
    // Held until kbox exits, after the image is unmounted.
    let _lock = crate::image_lock::ImageLock::take(&config.image, !read_only)
        .map_err(RuntimeError::Lock)?;
    let disk = kbox_lkl::add_disk(&config.image, read_only).map_err(RuntimeError::Disk)?;
    // Devices are fixed at boot; passt starts meanwhile.
    let mut network = crate::network::attach(config).map_err(RuntimeError::Network)?;
    let (memory_mib, cmdline) = split_memory(&config.kernel_cmdline);
    // Ours first: a `-k` setting of the same sysctl comes later and wins.
    let cmdline = format!("{TCP_RECEIVE_BUFFERS} {cmdline}");
    let kernel = Kernel::boot(&BootConfig {
        memory_mib,
        cmdline,
        // -v is about the guest's syscalls; the kernel's boot log stays out of it (errors
        // quote its tail).
        verbose: false,
    })
    .map_err(RuntimeError::Boot)?;
    let result = run_booted(&kernel, disk, config, read_only, &mut network);
    // The network device's thread must not raise interrupts in a halted kernel.
    drop(network);
    // Whatever happened, the image is unmounted cleanly (halt unmounts first).
    let halted = kernel.halt();
    let exit = result?;
    if let Err(errno) = halted {
        return Err(RuntimeError::Setup {
            what: "unmount the image".into(),
            errno,
        });
    }
    Ok(exit)
}

fn run_booted(
    kernel: &Kernel,
    disk: kbox_lkl::DiskId,
    config: &Config,
    read_only: bool,
    network: &mut crate::network::Network,
) -> Result<Exit, RuntimeError> {
    let mode = match config.mounts {
        Mounts::ImageOnly => RootMode::Raw,
        Mounts::System => RootMode::Recommended,
    };
    let root = kernel
        .image_root(disk, config.fstype.name(), mode, read_only)
        .map_err(RuntimeError::Mount)?;
    // An image built by `kbox image import` names its own command when none is given.
    let mut adjusted = config.clone();
    if let Some(note) = crate::image::apply_saved_process(&root, &mut adjusted)
        && config.verbose
    {
        eprintln!("kbox: {note}");
    }
    let config = &adjusted;
    // Before the identity drops: only root may configure interfaces.
    Engine::network_up(&root).map_err(|errno| RuntimeError::Setup {
        what: "bring up the kernel library's loopback interface".into(),
        errno,
    })?;
    network
        .bring_up(kernel, disk, &root, config, read_only)
        .map_err(RuntimeError::Network)?;
    make_bind_points(&root, config)?;
    if config.mounts == Mounts::System {
        standard_files(&root, config.verbose);
    }
    prepare_root(&root, config)?;
    let command = match resolve_command(&root, &config.command[0]) {
        Ok(c) => c,
        Err(exit) => {
            let what = if exit == Exit::NotFound {
                "not found in the image"
            } else {
                "not executable"
            };
            eprintln!("kbox: {}: {what}", config.command[0].to_string_lossy());
            return Ok(exit);
        }
    };
    let tier = match config.tier {
        crate::cli::SyscallTier::Auto => auto_tier(&root, &command, config.verbose),
        t => t,
    };
    let settings = dispatch::Settings {
        verbose: config.verbose,
        shadow_limit: config.shadow_limit,
        image: config.image.clone(),
        binds: config
            .binds
            .iter()
            .map(|b| (b.host.clone(), b.guest.clone()))
            .collect(),
        shared_memory: config.mounts == Mounts::System,
        host_network: config.net == NetMode::Host,
    };
    let engine = Arc::new(Mutex::new(
        Engine::new(root, settings).map_err(RuntimeError::ExecDir)?,
    ));
    let env = guest_env(config);
    if tier.in_process() {
        return run_in_process(&engine, config, tier, command, &env);
    }
    let mut cmd = Command::new(OsStr::from_bytes(command.as_bytes()), &config.command, &env)
        .map_err(RuntimeError::Spawn)?;
    cmd.current_dir(lock(&engine).host_cwd())
        .map_err(RuntimeError::Spawn)?;
    // KBOX_NO_CHROOT=1 forces the fallback that hosts without chroot get (for its tests).
    if std::env::var_os("KBOX_NO_CHROOT").is_none_or(|v| v != "1") {
        cmd.root(lock(&engine).host_root())
            .map_err(RuntimeError::Spawn)?;
    }
    cmd.preserve_fds(config.preserve_fds);
    start_observers(config, &engine)?;
    let compile = |own_ipc, own_pid| {
        Program::compile_checked(
            &dispatch::policy::rules(own_ipc, own_pid, observe::enabled()),
            &dispatch::policy::checks(),
            Action::Notify,
        )
        .map_err(RuntimeError::Filter)
    };
    // Indexed as child::spawn_with wants: bit 0 own IPC namespace, bit 1 own PID namespace.
    let progs = [
        compile(false, false)?,
        compile(true, false)?,
        compile(false, true)?,
        compile(true, true)?,
    ];
    let (mut guest, notify) = child::spawn_with(&cmd, [&progs[0], &progs[1], &progs[2], &progs[3]])
        .map_err(RuntimeError::Spawn)?;
    let prog = &progs[usize::from(guest.own_ipc()) | usize::from(guest.own_pid()) << 1];
    if let Some(init) = guest.init_pid() {
        lock(&engine).set_init(init);
    }

    // Before the first notification (the guest's exec) is answered.
    lock(&engine).set_rooted(guest.rooted());
    if config.verbose {
        eprintln!(
            "kbox: isolation: SysV IPC {}; {}; FDs above {} closed",
            if guest.own_ipc() {
                "in an IPC namespace of the guest's own"
            } else {
                "refused (no IPC namespace possible here)"
            },
            if guest.own_pid() {
                "a PID namespace of the guest's own (signals, priorities and limits reach only it)"
            } else {
                "no PID namespace possible here: signals, priorities and limits reach guest processes only (mediated)"
            },
            2 + config.preserve_fds
        );
    }
    if !guest.rooted() {
        eprintln!(
            "kbox: warning: cannot chroot the guest here (neither root nor user namespaces): \
             exec rewrites the guest's path strings in memory (see docs/dispatch.md, \"exec\")"
        );
    }
    // Deferred answers (accept) reach it from other threads for as long as kbox runs.
    let notify: &'static NotifyFd = Box::leak(Box::new(notify));
    let sync_wakeup = notify.set_sync_wakeup().unwrap_or(false);
    if config.verbose {
        eprintln!(
            "kbox: seccomp filter of {} instructions; killable wait {}; synchronous wake-up {}; exec {}",
            prog.len(),
            yes(guest.killable_wait()),
            yes(sync_wakeup),
            if guest.rooted() {
                "rooted (guests chrooted into kbox's copies, guest memory never written)"
            } else {
                "by path rewrite (no chroot possible here: see docs/dispatch.md)"
            }
        );
        eprintln!("kbox: network: {}", crate::network::summary(config));
        if !sync_wakeup {
            eprintln!(
                "kbox: note: this kernel has no synchronous wake-up for seccomp notifications \
                 (Linux 6.6+): each notified call costs about twice the round trip"
            );
        }
        if !guest.killable_wait() {
            eprintln!(
                "kbox: note: this kernel has no killable seccomp waits (Linux 5.19+): a signal \
                 arriving during a notified call can make the guest repeat a call kbox served"
            );
        }
    }
    start_forwarder(guest.pid().as_raw_nonzero().get());
    let served = serve(&engine, notify, guest.pidfd());
    let status = guest.wait();
    web::guest_ended();
    trace::flush();
    if let Some(format) = config.stats {
        eprint!("{}", stats::report(format));
    }
    // Guest processes still running (daemons, orphans) end with the first one.
    let mut engine = lock(&engine);
    for pid in engine.pids() {
        if let Some(pid) = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap_or(0)) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    // Every task the engine holds ends here (receiver threads still blocked in recv hold
    // only the now-empty engine), so the image can unmount.
    engine.shutdown();
    drop(engine);
    served?;
    let stopped_by = STOPPED_BY.load(std::sync::atomic::Ordering::Acquire);
    if stopped_by != 0 {
        eprintln!(
            "kbox: the guest did not end within {} s of signal {stopped_by}: ended it",
            STOP_GRACE.as_secs()
        );
        return Ok(Exit::GuestSignal(u8::try_from(stopped_by).unwrap_or(0)));
    }
    match status {
        Ok(ExitStatus::Exited(code)) => Ok(Exit::Guest(u8::try_from(code & 0xff).unwrap_or(0))),
        Ok(ExitStatus::Signaled(sig)) => {
            Ok(Exit::GuestSignal(u8::try_from(sig & 0x7f).unwrap_or(0)))
        }
        Err(SpawnError::Exec(errno)) => Ok(Exit::from_exec_error(
            rustix::io::Errno::from_raw_os_error(i32::from(errno.get())),
        )),
        Err(e) => Err(RuntimeError::Spawn(e)),
    }
}

/// `--syscall-mode=auto`: the tier for the program `command` names (its file, as the
/// first guest process would read it). When that is not an in-process tier, what kbox did
/// for one before it booted the kernel library is undone.
fn auto_tier(root: &Task, command: &CString, verbose: bool) -> crate::cli::SyscallTier {
    use crate::tiers::auto;
    // A script's or a dynamic program's start is enough; a static one is read whole.
    let program = dispatch::read_program(root, command, auto::HEAD)
        .and_then(|head| {
            if head.len() < auto::HEAD || auto::head_decides(&head) {
                Ok(head)
            } else {
                dispatch::read_program(root, command, usize::MAX)
            }
        })
        .map(|bytes| crate::loader::AlignedBytes::copy_of(&bytes));
    let (tier, why) = match &program {
        Ok(bytes) => auto::choose(bytes.as_slice()),
        Err(_) => (crate::cli::SyscallTier::Seccomp, "its file cannot be read"),
    };
    if verbose {
        eprintln!(
            "kbox: syscall mode auto: {} for {}: {why}",
            tier.name(),
            command.to_string_lossy()
        );
    }
    if !tier.in_process() {
        crate::tiers::trap::unreserve_fds();
        unblock_signals();
        block_forwarded_signals();
    }
    tier
}

/// Empties the calling thread's signal mask.
fn unblock_signals() {
    // SAFETY: an empty set, applied to this thread's mask.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
}

/// Runs the guest under an in-process tier (trap or rewrite), in kbox's own process.
fn run_in_process(
    engine: &Arc<Mutex<Engine>>,
    config: &Config,
    tier: crate::cli::SyscallTier,
    command: CString,
    env: &[OsString],
) -> Result<Exit, RuntimeError> {
    start_observers(config, engine)?;
    let launch = crate::tiers::trap::Launch {
        path: command,
        argv: config
            .command
            .iter()
            .map(|a| a.as_bytes().to_vec())
            .collect(),
        envp: env.iter().map(|e| e.as_bytes().to_vec()).collect(),
        verbose: config.verbose,
        fd_floor: crate::tiers::trap::fd_floor(),
        counted: observe::enabled(),
        code: None,
    };
    let exit = if tier == crate::cli::SyscallTier::Rewrite {
        crate::tiers::rewrite::run(Arc::clone(engine), launch)
    } else {
        crate::tiers::trap::run(Arc::clone(engine), launch)
    }
    .map_err(RuntimeError::Trap)?;
    web::guest_ended();
    trace::flush();
    if let Some(format) = config.stats {
        eprint!("{}", stats::report(format));
    }
    // The first guest process ended, but kbox's process (which it was) goes on: its FDs
    // close as an exit would close them, so that what waits on their other ends (the
    // engine's socket pumps) sees the end.
    crate::tiers::trap::close_guest_fds();
    // Guest processes still running (daemons, orphans) end with the first one, which is
    // kbox's own process.
    let mut engine = lock(engine);
    let me = std::process::id();
    for pid in engine.pids().into_iter().filter(|&p| p != me) {
        if let Some(pid) = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap_or(0)) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    engine.shutdown();
    Ok(exit)
}

/// Starts what the user asked to watch the guest with: `--stats` counting, `--trace`
/// lines, the `--web` dashboard (whose address is printed: the port may be the system's
/// pick).
fn start_observers(config: &Config, engine: &Arc<Mutex<Engine>>) -> Result<(), RuntimeError> {
    if config.stats.is_some() {
        stats::enable();
    }
    if let Some(target) = &config.trace {
        let out: Box<dyn std::io::Write + Send> = match target {
            TraceTarget::Stderr => Box::new(std::io::stderr()),
            TraceTarget::File(path) => {
                Box::new(
                    std::fs::File::create(path).map_err(|error| RuntimeError::TraceFile {
                        path: path.clone(),
                        error,
                    })?,
                )
            }
        };
        let only = (!config.trace_filter.is_empty()).then_some(config.trace_filter.as_slice());
        trace::enable(out, only);
    }
    if let Some(addr) = config.web {
        let bound = web::start(addr, Arc::clone(engine))
            .map_err(|error| RuntimeError::Web { addr, error })?;
        eprintln!("kbox: dashboard at http://{bound}/");
    }
    if config.stats.is_some() || config.trace.is_some() || config.web.is_some() {
        observe::enable();
    }
    Ok(())
}

fn yes(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

/// Answers notifications (on the receiver threads) until the first guest process exits.
fn serve(
    engine: &Arc<Mutex<Engine>>,
    notify: &'static NotifyFd,
    child: BorrowedFd<'_>,
) -> Result<(), RuntimeError> {
    use rustix::event::{PollFd, PollFlags, poll};
    receivers::start(engine, notify, answer)
        .map_err(|e| RuntimeError::Notify(NotifyError::Poll(e)))?;
    loop {
        let mut fds = [PollFd::new(&child, PollFlags::IN)];
        match poll(&mut fds, None) {
            Ok(_) if fds[0].revents().contains(PollFlags::IN) => return Ok(()),
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(RuntimeError::Notify(NotifyError::Poll(e.into()))),
        }
    }
}

fn lock(engine: &Mutex<Engine>) -> std::sync::MutexGuard<'_, Engine> {
    engine
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Serves the notifications of `listener` on receiver threads, for as long as kbox runs
/// (the trap tier's forked guest processes).
pub(crate) fn serve_notifications(
    engine: &Arc<Mutex<Engine>>,
    listener: std::os::fd::OwnedFd,
) -> std::io::Result<()> {
    let notify: &'static NotifyFd = Box::leak(Box::new(NotifyFd::new(listener)));
    let _ = notify.set_sync_wakeup();
    receivers::start(engine, notify, answer)
}

fn answer(engine: &mut Engine, pending: Pending<'static>, slow: &dyn Fn()) {
    let n = *pending.notification();
    let nr = u32::try_from(n.nr).unwrap_or(u32::MAX);
    let guest = SeccompGuest {
        notif: n,
        pending: std::cell::RefCell::new(Some(pending)),
        slow,
    };
    // The trap tier's own calls from its forked processes.
    if let Some(reply) =
        crate::tiers::trap::marker(engine, &guest, u64::from(nr), n.args, n.instruction_pointer)
    {
        if let Some(pending) = guest.pending.into_inner() {
            let _ = match reply {
                Reply::Value(v) => pending.respond_value(v),
                Reply::Fail(e) => pending.respond_errno(core_errno(e)),
                Reply::Continue => pending.respond_continue(),
            };
        }
        return;
    }
    let watch = observe::start(&guest, nr, n.args);
    // Calls the filter denies reach kbox only while they are watched (`policy::rules`
    // with `counted`); refused here exactly as the filter refuses them.
    let denied = watch.is_some() && dispatch::policy::denied(nr);
    let reply = if denied {
        Reply::Fail(Errno::EPERM)
    } else {
        engine.handle(&guest, nr, n.args)
    };
    let ended = watch.map(|w| w.end(reply, denied));
    // Already answered with an FD: nothing more to send.
    if let Some(pending) = guest.pending.into_inner() {
        // A guest thread that died meanwhile cannot be answered; nothing else to do for it.
        let _ = match reply {
            Reply::Value(v) => pending.respond_value(v),
            Reply::Fail(e) => pending.respond_errno(core_errno(e)),
            Reply::Continue => pending.respond_continue(),
        };
    }
    if let Some(e) = ended {
        e.finish(n.pid, nr, reply);
    }
    engine.after_reply();
}

fn core_errno(e: Errno) -> kbox_core::Errno {
    u16::try_from(e.0)
        .ok()
        .and_then(kbox_core::Errno::new)
        .unwrap_or(kbox_core::Errno::EINVAL)
}

/// Creates each `-b` GUEST path in the image (a directory, or an empty file for a file
/// bind), so that the guest sees it in listings of its parent; the bind's contents are served
/// from the host.
fn make_bind_points(root: &Task, config: &Config) -> Result<(), RuntimeError> {
    const O_CREAT: usize = 0o100;
    for b in &config.binds {
        let is_dir = std::fs::metadata(&b.host)
            .map(|m| m.is_dir())
            .unwrap_or(true);
        let guest = b.guest.as_os_str().as_bytes();
        let mut prefix = Vec::new();
        let parts: Vec<&[u8]> = guest
            .split(|&c| c == b'/')
            .filter(|p| !p.is_empty())
            .collect();
        for (i, part) in parts.iter().enumerate() {
            prefix.push(b'/');
            prefix.extend_from_slice(part);
            let path = CString::new(prefix.clone()).map_err(|_| RuntimeError::Setup {
                what: "create a bind point".into(),
                errno: Errno::EINVAL,
            })?;
            let last = i + 1 == parts.len();
            let r = if last && !is_dir {
                root.syscall(
                    g::OPENAT,
                    [AT_FDCWD, path.as_ptr() as usize, O_CREAT, 0o644, 0, 0],
                )
                .and_then(|fd| root.syscall(g::CLOSE, [fd, 0, 0, 0, 0, 0]))
            } else {
                root.syscall(
                    g::MKDIRAT,
                    [AT_FDCWD, path.as_ptr() as usize, 0o755, 0, 0, 0],
                )
            };
            match r {
                // A read-only image keeps its tree: the bind works, listings just miss it.
                Ok(_) | Err(Errno::EEXIST) | Err(Errno::EROFS) => {}
                Err(errno) => {
                    return Err(RuntimeError::Setup {
                        what: format!("create bind point {}", b.guest.display()),
                        errno,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Identity, resource limits and working directory of the task every guest forks from.
/// What a container runtime gives a program besides the image: `/dev/shm` (kbox serves it
/// from a host directory of its own, see dispatch.md) and an `/etc/hosts` that makes
/// `localhost` resolve, written into the image only where it has none (and said so).
fn standard_files(root: &Task, verbose: bool) {
    // /dev is the kernel library's devtmpfs: the image does not change.
    let _ = root.syscall(
        g::MKDIRAT,
        [AT_FDCWD, c"/dev/shm".as_ptr() as usize, 0o1777, 0, 0, 0],
    );
    const O_WRONLY_CREAT_EXCL: usize = 0o1 | 0o100 | 0o200;
    let hosts = b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";
    let Ok(fd) = root.syscall(
        g::OPENAT,
        [
            AT_FDCWD,
            c"/etc/hosts".as_ptr() as usize,
            O_WRONLY_CREAT_EXCL,
            0o644,
            0,
            0,
        ],
    ) else {
        // The image has one (EEXIST), or cannot get one (read-only, no /etc).
        return;
    };
    let written = root.syscall(
        g::WRITE,
        [fd, hosts.as_ptr() as usize, hosts.len(), 0, 0, 0],
    );
    let _ = root.syscall(g::CLOSE, [fd, 0, 0, 0, 0, 0]);
    if written.is_ok() {
        // One line even without -v: kbox changed the image.
        eprintln!("kbox: the image had no /etc/hosts: wrote one that resolves localhost");
    }
    let _ = verbose;
}

fn prepare_root(root: &Task, config: &Config) -> Result<(), RuntimeError> {
    let setup = |what: &str, r: Result<usize, Errno>| {
        r.map(|_| ()).map_err(|errno| RuntimeError::Setup {
            what: what.into(),
            errno,
        })
    };
    let lim = [GUEST_NOFILE, GUEST_NOFILE];
    setup(
        "raise the kernel library's RLIMIT_NOFILE",
        root.syscall(g::PRLIMIT64, [0, 7, lim.as_ptr() as usize, 0, 0, 0]),
    )?;
    let (uid, gid) = match config.identity {
        Identity::Root => (0, 0),
        Identity::Ids { uid, gid } => (uid, gid),
        Identity::Caller => (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        ),
    };
    if (uid, gid) != (0, 0) {
        setup(
            "drop supplementary groups",
            root.syscall(g::SETGROUPS, [0, 0, 0, 0, 0, 0]),
        )?;
        let (u, gg) = (uid as usize, gid as usize);
        setup(
            "set the guest's gid",
            root.syscall(g::SETRESGID, [gg, gg, gg, 0, 0, 0]),
        )?;
        setup(
            "set the guest's uid",
            root.syscall(g::SETRESUID, [u, u, u, 0, 0, 0]),
        )?;
    }
    let dir =
        CString::new(config.workdir.as_os_str().as_bytes()).map_err(|_| RuntimeError::Setup {
            what: "use the working directory".into(),
            errno: Errno::EINVAL,
        })?;
    root.syscall(g::CHDIR, [dir.as_ptr() as usize, 0, 0, 0, 0, 0])
        .map_err(|errno| RuntimeError::Setup {
            what: format!("enter working directory {}", config.workdir.display()),
            errno,
        })?;
    Ok(())
}

/// The command's path in the image: as given when it has a `/`, else found on PATH.
fn resolve_command(root: &Task, cmd: &OsStr) -> Result<CString, Exit> {
    let bytes = cmd.as_bytes();
    let candidates: Vec<Vec<u8>> = if bytes.contains(&b'/') {
        vec![bytes.to_vec()]
    } else {
        DEFAULT_PATH
            .split(':')
            .map(|d| [d.as_bytes(), b"/", bytes].concat())
            .collect()
    };
    let mut found_not_exec = false;
    for c in candidates {
        let Ok(path) = CString::new(c) else {
            return Err(Exit::NotFound);
        };
        let access = |mode: usize| {
            root.syscall(
                g::FACCESSAT,
                [AT_FDCWD, path.as_ptr() as usize, mode, 0, 0, 0],
            )
        };
        match access(1) {
            Ok(_) => return Ok(path),
            Err(Errno::EACCES) if access(0).is_ok() => found_not_exec = true,
            Err(_) => {}
        }
    }
    Err(if found_not_exec {
        Exit::NotExecutable
    } else {
        Exit::NotFound
    })
}

/// The guest's environment: a clean one, as container runtimes give.
fn guest_env(config: &Config) -> Vec<OsString> {
    let home = match config.identity {
        Identity::Root => "/root",
        _ if rustix::process::getuid().is_root() && matches!(config.identity, Identity::Caller) => {
            "/root"
        }
        _ => "/",
    };
    let mut env = vec![
        OsString::from(format!("PATH={DEFAULT_PATH}")),
        OsString::from(format!("HOME={home}")),
    ];
    // The image's own (PATH included) replace kbox's defaults.
    for kv in &config.extra_env {
        let key = kv.as_bytes().split(|&b| b == b'=').next().unwrap_or(b"");
        env.retain(|e| e.as_bytes().split(|&b| b == b'=').next() != Some(key));
        env.push(kv.clone());
    }
    for key in ["TERM", "LANG", "LC_ALL", "COLUMNS", "LINES"] {
        if let Some(v) = std::env::var_os(key) {
            let mut kv = OsString::from(format!("{key}="));
            kv.push(v);
            env.push(kv);
        }
    }
    env
}

/// Linux sizes TCP's buffer limits by its memory: on the kernel library's 256 MiB a
/// socket may receive into 2 MiB at most, where Linux on a machine of about 1 GiB or more
/// allows 6 MiB. That smaller window slowed `--net=user` downloads by about a tenth
/// (docs/network.md); the guest gets Linux's usual limit instead.
const TCP_RECEIVE_BUFFERS: &str = r#"sysctl.net.ipv4.tcp_rmem="4096 131072 6291456""#;

/// `-k` text without its `mem=`, and the memory it asked for (MiB).
fn split_memory(cmdline: &str) -> (u32, String) {
    let mut mib = 256;
    let mut rest = Vec::new();
    for word in cmdline.split_whitespace() {
        if let Some(v) = word.strip_prefix("mem=") {
            let (num, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
            if let Ok(n) = num.parse::<u64>() {
                let bytes = match unit {
                    "G" | "g" => n << 30,
                    "K" | "k" => n << 10,
                    "" => n,
                    _ => n << 20,
                };
                mib = u32::try_from(bytes >> 20).unwrap_or(u32::MAX).max(16);
            }
        } else {
            rest.push(word);
        }
    }
    (mib, rest.join(" "))
}

fn raise_nofile() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let cur = getrlimit(Resource::Nofile);
    let hard = cur.maximum.unwrap_or(u64::MAX);
    let want = GUEST_NOFILE.min(hard);
    if cur.current.is_some_and(|c| c < want) {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(want),
                maximum: cur.maximum,
            },
        );
    }
}

fn forwarded_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local set.
    unsafe {
        let mut set: libc::sigset_t = core::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        for s in FORWARDED {
            libc::sigaddset(&raw mut set, s);
        }
        set
    }
}

/// Blocks the forwarded signals in every kbox thread (threads inherit the mask), so only the
/// forwarder thread's sigwaitinfo sees them.
fn block_forwarded_signals() {
    let set = forwarded_set();
    // SAFETY: `set` is initialised; the old mask is not wanted.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, core::ptr::null_mut()) };
}

/// Passes signals sent to kbox on to the guest. Signals the terminal sends (Ctrl-C) reach
/// the guest directly, as it shares kbox's process group, so those are not sent twice.
fn start_forwarder(guest: i32) {
    let _ = std::thread::Builder::new()
        .name("kbox-signals".into())
        .spawn(move || {
            let set = forwarded_set();
            loop {
                // SAFETY: `info` is written by sigwaitinfo; `set` is initialised.
                let (sig, code) = unsafe {
                    let mut info: libc::siginfo_t = core::mem::zeroed();
                    let sig = libc::sigwaitinfo(&raw const set, &raw mut info);
                    (sig, info.si_code)
                };
                if sig < 0 {
                    continue;
                }
                if code == libc::SI_KERNEL {
                    continue;
                }
                // SAFETY: kill takes plain integers.
                unsafe { libc::kill(guest, sig) };
                if STOP_SIGNALS.contains(&sig) {
                    stop_after_grace(sig);
                }
            }
        });
}

/// Signals that ask kbox to stop (a service manager, `timeout`, a CI runner, a hang-up).
/// The guest gets them; if it has not ended [`STOP_GRACE`] later, kbox ends it.
const STOP_SIGNALS: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The signal that made kbox end the guest (0: none); kbox then exits 128+N.
static STOPPED_BY: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// After [`STOP_GRACE`], SIGKILLs every process descending from kbox (the guest tree, and
/// kbox's init of its PID namespace) unless they are gone by then. One timer at a time.
fn stop_after_grace(sig: i32) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static ARMED: AtomicBool = AtomicBool::new(false);
    if ARMED.swap(true, Ordering::AcqRel) {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("kbox-stop".into())
        .spawn(move || {
            std::thread::sleep(STOP_GRACE);
            let tree = dispatch::descendants();
            if tree.is_empty() {
                return;
            }
            STOPPED_BY.store(sig, Ordering::Release);
            for pid in tree {
                if let Some(pid) = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap_or(0)) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        });
}
