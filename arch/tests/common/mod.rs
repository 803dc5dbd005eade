//! Helpers shared by the integration tests: reference disassembly from binutils' objdump
//! and test programs built on the fly.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One instruction as objdump printed it.
#[derive(Debug, Clone)]
pub struct RefInsn {
    pub addr: u64,
    pub text: String,
}

/// objdump -d of every section it disassembles, keyed by section name. `-z` keeps runs of
/// zero bytes (otherwise elided as "..."), and without raw bytes each instruction is one line.
pub fn objdump(objdump: &str, file: &Path) -> BTreeMap<String, Vec<RefInsn>> {
    let out = Command::new(objdump)
        .args(["-d", "-z", "-w", "--no-show-raw-insn"])
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {objdump}: {e}"));
    assert!(
        out.status.success(),
        "{objdump} failed on {}",
        file.display()
    );
    let text = String::from_utf8(out.stdout).expect("objdump output is UTF-8");
    let mut sections = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("Disassembly of section ") {
            let name = name.trim_end_matches(':').to_string();
            sections.insert(name.clone(), Vec::new());
            current = Some(name);
            continue;
        }
        let Some(sec) = current.as_ref() else {
            continue;
        };
        // Instruction lines look like "  401000:\tendbr64".
        let Some((addr, rest)) = line.split_once(":\t") else {
            continue;
        };
        let Ok(addr) = u64::from_str_radix(addr.trim(), 16) else {
            continue;
        };
        sections
            .get_mut(sec)
            .expect("section was inserted")
            .push(RefInsn {
                addr,
                text: rest.trim().to_string(),
            });
    }
    sections
}

/// Address, file offset and size of a named section.
pub fn section(data: &[u8], name: &str) -> Option<(u64, usize, usize)> {
    let elf = xmas_elf::ElfFile::new(data).ok()?;
    for sh in elf.section_iter() {
        if sh.get_name(&elf).is_ok_and(|n| n == name) {
            let off = usize::try_from(sh.offset()).ok()?;
            let size = usize::try_from(sh.size()).ok()?;
            return Some((sh.address(), off, size));
        }
    }
    None
}

/// A scratch directory unique to this test process, in the build's own temporary directory
/// (so nothing is left behind in the host's /tmp).
pub fn scratch(tag: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kbox-arch-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Builds tests/data/`src` with `cc` and `args`; panics with the compiler's output on failure.
pub fn build_c(cc: &str, src: &str, args: &[&str]) -> PathBuf {
    // Tests run in parallel and may build the same source: one output file per call.
    static BUILDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = scratch("cc");
    let out = dir.join(format!(
        "{}-{n}",
        src.trim_end_matches(".c").trim_end_matches(".S")
    ));
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(src);
    let res = Command::new(cc)
        .args(args)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cc}: {e} (make deps installs it)"));
    assert!(
        res.status.success(),
        "{cc} {} failed: {}",
        src.display(),
        String::from_utf8_lossy(&res.stderr)
    );
    out
}

pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The file's bytes in 8-byte aligned storage, as the ELF reader requires of its input.
pub struct Aligned {
    words: Vec<u64>,
    len: usize,
}

impl Aligned {
    pub fn load(path: &Path) -> Self {
        let bytes = read(path);
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        for (w, chunk) in words.iter_mut().zip(bytes.chunks(8)) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            *w = u64::from_le_bytes(b);
        }
        Self {
            words,
            len: bytes.len(),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the words are initialised, u8 has no validity or alignment requirement and
        // len never exceeds words.len() * 8.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }
}

/// Debian's arm64 busybox-static, fetched by scripts/fetch-deb.sh (make check-arch runs it
/// and passes the directory in KBOX_ARM64_BUSYBOX_DIR).
pub fn arm64_busybox() -> PathBuf {
    let dir = std::env::var("KBOX_ARM64_BUSYBOX_DIR").unwrap_or_else(|_| {
        let out = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/fetch-deb.sh"
        ))
        .args(["busybox-static", "arm64"])
        .output()
        .expect("run scripts/fetch-deb.sh");
        assert!(
            out.status.success(),
            "fetch-deb.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8 path")
            .trim()
            .to_string()
    });
    Path::new(&dir).join("bin/busybox")
}
