//! kbox's own ELF loader, for the in-process tiers: maps a guest program (and the interpreter
//! it names) into kbox's process and builds the stack it starts on, as execve does, from
//! bytes read out of the image, so a guest never needs a host path. `#!` scripts run their
//! interpreter. What to map is decided by `kbox_arch::load` (pure, fuzzed); this module
//! only maps it.
//!
//! Segments are copied into anonymous memory rather than mapped from a file: the bytes come
//! from the kernel library, which has no host file to map.

mod memory;

use kbox_arch::elf::Machine;
use kbox_arch::initstack::{self, StackSpec};
use kbox_arch::load::{self, LoadPlan, Shebang};
use kbox_lkl::Errno;

pub use memory::{AlignedBytes, Region};
use memory::{map_program, map_stack};

/// Linux runs at most five nested `#!` scripts (measured on 6.12: the sixth is ELOOP).
const MAX_SCRIPT_DEPTH: usize = 5;
/// The stack every program gets (RLIMIT_STACK's usual soft limit).
pub const STACK_SIZE: usize = 8 << 20;
/// argv, envp and their strings may use a quarter of the stack, as on Linux.
const ARGS_LIMIT: usize = STACK_SIZE / 4;

/// Where the guest's files come from.
pub trait Files {
    /// The whole file at `path`, if the guest may execute it (ENOENT, EACCES, ...).
    fn executable(&mut self, path: &[u8]) -> Result<Vec<u8>, Errno>;
    /// The whole file at `path` (an ELF interpreter: Linux asks only that it be readable).
    fn readable(&mut self, path: &[u8]) -> Result<Vec<u8>, Errno>;
}

/// What execve was asked to run.
#[derive(Debug, Clone)]
pub struct Request {
    pub path: Vec<u8>,
    pub argv: Vec<Vec<u8>>,
    pub envp: Vec<Vec<u8>>,
    pub creds: Creds,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Creds {
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    pub egid: u32,
}

/// A program ready to start.
#[derive(Debug)]
pub struct Loaded {
    pub entry: u64,
    pub sp: u64,
    /// Where the program break starts.
    pub brk: u64,
    /// The program's and its interpreter's memory, unmapped when dropped.
    pub image: Vec<Region>,
    /// The stack it starts on, unmapped when dropped.
    pub stack: Region,
}

impl Loaded {
    /// Leaves the memory mapped for the program's lifetime.
    #[cfg(test)]
    pub fn keep(self) -> (u64, u64, u64) {
        for r in self.image {
            r.keep();
        }
        self.stack.keep();
        (self.entry, self.sp, self.brk)
    }
}

/// Everything execve checks before its point of no return: the files are read, `#!`
/// lines followed, the formats and the argument sizes checked. Mapping it can still fail
/// only for lack of memory or address space.
pub struct Prepared {
    path: Vec<u8>,
    argv: Vec<Vec<u8>>,
    envp: Vec<Vec<u8>>,
    creds: Creds,
    program: AlignedBytes,
    interp: Option<AlignedBytes>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    /// Reading `path` failed.
    File { path: Vec<u8>, errno: Errno },
    /// Not a program kbox can load (ENOEXEC).
    Format(load::LoadError),
    /// A `#!` line without an interpreter name (ENOEXEC).
    BadScript,
    /// A program for another machine (ENOEXEC).
    OtherMachine,
    /// More nested `#!` interpreters than Linux follows (ELOOP).
    ScriptDepth,
    /// The interpreter names an interpreter of its own (ELIBBAD).
    NestedInterpreter,
    /// argv and envp do not fit (E2BIG).
    TooBig,
    /// A fixed-address program overlaps memory in use (kbox's own), or mapping failed.
    Map(Errno),
}

impl LoadError {
    /// The errno execve fails with.
    pub fn errno(&self) -> Errno {
        match self {
            Self::File { errno, .. } => *errno,
            Self::Format(_) | Self::BadScript | Self::OtherMachine => Errno::ENOEXEC,
            Self::ScriptDepth => Errno::ELOOP,
            Self::NestedInterpreter => Errno(80), // ELIBBAD
            Self::TooBig => Errno::E2BIG,
            Self::Map(e) => *e,
        }
    }
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File { path, errno } => {
                write!(f, "{}: errno {}", String::from_utf8_lossy(path), errno.0)
            }
            Self::Format(e) => e.fmt(f),
            Self::BadScript => f.write_str("#! line without an interpreter"),
            Self::OtherMachine => f.write_str("a program for another machine"),
            Self::ScriptDepth => f.write_str("too many nested #! interpreters"),
            Self::NestedInterpreter => f.write_str("the interpreter has an interpreter"),
            Self::TooBig => f.write_str("argument list too long"),
            Self::Map(e) => write!(f, "cannot map the program: errno {}", e.0),
        }
    }
}

const HOST_MACHINE: Machine = if cfg!(target_arch = "aarch64") {
    Machine::Aarch64
} else {
    Machine::X86_64
};
const PLATFORM: &[u8] = if cfg!(target_arch = "aarch64") {
    b"aarch64"
} else {
    b"x86_64"
};

/// Sees each executable segment of a program being mapped while it is still writable,
/// before its protection is set (the rewrite tier patches syscall sites there). Returns
/// memory to keep, and unmap, with the program.
pub trait CodeHook {
    /// The program about to be mapped, whole (not its interpreter, which follows it).
    fn program(&mut self, _bytes: &[u8]) {}

    fn code(&mut self, vaddr: u64, code: &mut [u8]) -> Vec<Region>;
}

/// Leaves code as the file has it.
pub struct AsInFile;

impl CodeHook for AsInFile {
    fn code(&mut self, _: u64, _: &mut [u8]) -> Vec<Region> {
        Vec::new()
    }
}

/// Loads what `req` names: [`prepare`], then [`map`].
pub fn load(
    files: &mut dyn Files,
    req: &Request,
    hook: &mut dyn CodeHook,
) -> Result<Loaded, LoadError> {
    map(&prepare(files, req)?, hook)
}

/// Reads and checks what `req` names, following `#!` lines, without mapping anything.
pub fn prepare(files: &mut dyn Files, req: &Request) -> Result<Prepared, LoadError> {
    let mut argv = req.argv.clone();
    let mut path = req.path.clone();
    let mut bytes = read(files, &path, true)?;
    for depth in 0.. {
        let Some(line) = load::shebang(bytes.as_slice()) else {
            break;
        };
        if depth == MAX_SCRIPT_DEPTH {
            return Err(LoadError::ScriptDepth);
        }
        let Shebang { interpreter, arg } = line.map_err(|()| LoadError::BadScript)?;
        // argv[0] gives way to: interpreter, its argument, the script's path.
        let mut next = vec![interpreter.to_vec()];
        next.extend(arg.map(<[u8]>::to_vec));
        next.push(path.clone());
        next.extend(argv.into_iter().skip(1));
        argv = next;
        path = interpreter.to_vec();
        bytes = read(files, &path, true)?;
    }
    let plan = checked_plan(bytes.as_slice())?;
    let interp = match plan.interp {
        Some(interp) => {
            let ibytes = read(files, interp, false)?;
            if checked_plan(ibytes.as_slice())?.interp.is_some() {
                return Err(LoadError::NestedInterpreter);
            }
            Some(ibytes)
        }
        None => None,
    };
    let strings: usize = argv.iter().chain(&req.envp).map(|s| s.len() + 1).sum();
    if strings + req.path.len() > ARGS_LIMIT {
        return Err(LoadError::TooBig);
    }
    Ok(Prepared {
        path: req.path.clone(),
        argv,
        envp: req.envp.clone(),
        creds: req.creds,
        program: bytes,
        interp,
    })
}

/// Maps a prepared program and its interpreter and builds its stack. Nothing stays mapped
/// on failure.
pub fn map(p: &Prepared, hook: &mut dyn CodeHook) -> Result<Loaded, LoadError> {
    let plan = checked_plan(p.program.as_slice())?;
    hook.program(p.program.as_slice());
    let (bias, program, extra) = map_program(&plan, p.program.as_slice(), hook)?;
    let mut image = vec![program];
    image.extend(extra);
    let mut entry = plan.entry + bias;
    let mut interp_base = 0;
    if let Some(ibytes) = &p.interp {
        let iplan = checked_plan(ibytes.as_slice())?;
        let (ibias, region, extra) = map_program(&iplan, ibytes.as_slice(), hook)?;
        image.push(region);
        image.extend(extra);
        entry = iplan.entry + ibias;
        interp_base = iplan.span.0 + ibias;
    }
    let stack = map_stack(STACK_SIZE, plan.exec_stack)?;
    let aux = auxv(&plan, bias, interp_base, p.creds);
    let argv_refs: Vec<&[u8]> = p.argv.iter().map(Vec::as_slice).collect();
    let envp_refs: Vec<&[u8]> = p.envp.iter().map(Vec::as_slice).collect();
    let spec = StackSpec {
        argv: &argv_refs,
        envp: &envp_refs,
        execfn: &p.path,
        platform: PLATFORM,
        random: random_bytes(),
        auxv: &aux,
    };
    let built = initstack::build(stack.end(), &spec, ARGS_LIMIT).map_err(|_| LoadError::TooBig)?;
    stack.write(built.sp, &built.bytes);
    Ok(Loaded {
        entry,
        sp: built.sp,
        brk: plan.brk() + bias,
        image,
        stack,
    })
}

fn read(files: &mut dyn Files, path: &[u8], exec: bool) -> Result<AlignedBytes, LoadError> {
    let got = if exec {
        files.executable(path)
    } else {
        files.readable(path)
    };
    got.map(|v| AlignedBytes::copy_of(&v))
        .map_err(|errno| LoadError::File {
            path: path.to_vec(),
            errno,
        })
}

fn checked_plan(bytes: &[u8]) -> Result<LoadPlan<'_>, LoadError> {
    let plan = load::plan(bytes).map_err(LoadError::Format)?;
    if plan.machine != HOST_MACHINE {
        return Err(LoadError::OtherMachine);
    }
    Ok(plan)
}

fn auxv(plan: &LoadPlan<'_>, bias: u64, interp_base: u64, creds: Creds) -> Vec<(u64, u64)> {
    use initstack::*;
    let host = |key: u64| {
        // SAFETY: getauxval reads this process's auxiliary vector; any key is allowed.
        unsafe { libc::getauxval(key) }
    };
    let mut aux = vec![
        (AT_SYSINFO_EHDR, host(AT_SYSINFO_EHDR)),
        (AT_MINSIGSTKSZ, host(AT_MINSIGSTKSZ)),
        (AT_HWCAP, host(AT_HWCAP)),
        (AT_PAGESZ, load::PAGE),
        (AT_CLKTCK, host(AT_CLKTCK)),
        (AT_PHENT, 56),
        (AT_PHNUM, u64::from(plan.phnum)),
        (AT_BASE, interp_base),
        (AT_FLAGS, 0),
        (AT_ENTRY, plan.entry + bias),
        (AT_UID, u64::from(creds.uid)),
        (AT_EUID, u64::from(creds.euid)),
        (AT_GID, u64::from(creds.gid)),
        (AT_EGID, u64::from(creds.egid)),
        (AT_SECURE, 0),
        (AT_HWCAP2, host(AT_HWCAP2)),
    ];
    if let Some(phdr) = plan.phdr {
        aux.push((AT_PHDR, phdr + bias));
    }
    // Entries the host kernel does not give (no vDSO, an old kernel) are left out.
    aux.retain(|&(k, v)| v != 0 || !matches!(k, AT_SYSINFO_EHDR | AT_MINSIGSTKSZ));
    aux
}

fn random_bytes() -> [u8; 16] {
    let mut r = [0u8; 16];
    // Falls back to the clock only where getrandom is missing (before Linux 3.17).
    if rustix::rand::getrandom(&mut r, rustix::rand::GetRandomFlags::empty()).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        r = t.to_le_bytes();
    }
    r
}

#[cfg(test)]
mod tests;
