//! `kbox image import [--size SIZE] ARCHIVE OUT.ext4`: builds an ext4 image from a
//! container image on disk (an OCI image layout, a `docker save` archive, or a plain root
//! filesystem tarball), rootless: a fresh ext4 made by mke2fs, each layer applied through
//! the kernel library (apply.rs), the image config's Env, WorkingDir, User, Entrypoint and
//! Cmd kept in `/.kbox/config.json`. OUT appears only when everything worked.
mod apply;
mod registry;
mod source;

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use kbox_core::sysno::generic as g;
use kbox_lkl::{BootConfig, Kernel, RootMode};

use crate::exit::Exit;

pub const USAGE: &str = "\
Usage: kbox image import [--size SIZE] ARCHIVE OUT.ext4
       kbox image pull [--arch ARCH] [--insecure] [--size SIZE] REF OUT.ext4

Build OUT.ext4 from ARCHIVE: an OCI image layout (a directory, or a tar of one), a
`docker save` archive, or a root filesystem tarball (.tar or .tar.gz). Owners, modes,
extended attributes, links, device nodes and whiteouts are applied as the image says,
through kbox's kernel; no root is needed. `kbox -S OUT.ext4` then runs the image's
command with its environment, working directory and user.

pull fetches REF ([docker://]HOST[:PORT]/NAME[:TAG|@DIGEST]) from its registry into
~/.cache/kbox/blobs (each blob checked against its digest), then builds OUT.ext4 the
same way. HTTPS with the system's CA store; plain HTTP for a registry on the loopback.

  --size SIZE   the image's size (suffix K, M or G); default: the layers plus room
  --arch ARCH   the platform to pull: amd64 or arm64 (default: this machine's)
  --insecure    plain HTTP to a registry that is not on the loopback
";

/// Most space an image may be given (1 TiB): a typo should not fill the disk.
const SIZE_MAX: u64 = 1 << 40;

#[derive(Debug)]
pub enum ImageError {
    Usage(String),
    Source(source::SourceError),
    Pull(registry::PullError),
    Layer {
        index: usize,
        error: apply::ApplyError,
    },
    Mkfs(String),
    Kernel(String),
    Output(PathBuf, std::io::Error),
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(why) => write!(f, "{why} (see kbox image --help)"),
            Self::Source(e) => e.fmt(f),
            Self::Pull(e) => e.fmt(f),
            Self::Layer { index, error } => write!(f, "layer {index}: {error}"),
            Self::Mkfs(why) => write!(f, "cannot make the ext4 file system: {why}"),
            Self::Kernel(why) => f.write_str(why),
            Self::Output(p, e) => write!(f, "cannot write {}: {e}", p.display()),
        }
    }
}

/// Parses a size with an optional K, M or G suffix.
fn parse_size(text: &str) -> Option<u64> {
    let (digits, unit) = match text.as_bytes().last()? {
        b'k' | b'K' => (&text[..text.len() - 1], 1 << 10),
        b'm' | b'M' => (&text[..text.len() - 1], 1 << 20),
        b'g' | b'G' => (&text[..text.len() - 1], 1 << 30),
        _ => (text, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(unit)
}

/// `kbox image ARGS...`.
pub fn main(args: &[OsString]) -> Result<Exit, ImageError> {
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_str().map(str::to_string))
        .collect::<Option<_>>()
        .ok_or_else(|| ImageError::Usage("arguments must be UTF-8".into()))?;
    let command = match args.first().map(String::as_str) {
        Some(c @ ("import" | "pull")) => c,
        Some("-h" | "--help") | None => {
            print!("{USAGE}");
            return Ok(Exit::Done);
        }
        Some(other) => return Err(ImageError::Usage(format!("unknown command {other:?}"))),
    };
    let mut size = None;
    let mut arch = source::platform_arch().to_string();
    let mut insecure = false;
    let mut rest = Vec::new();
    let mut it = args[1..].iter();
    let value = |it: &mut std::slice::Iter<'_, String>, name: &str| {
        it.next()
            .cloned()
            .ok_or_else(|| ImageError::Usage(format!("{name} needs a value")))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--size" => size = Some(value(&mut it, "--size")?),
            "--arch" if command == "pull" => arch = value(&mut it, "--arch")?,
            "--insecure" if command == "pull" => insecure = true,
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(Exit::Done);
            }
            _ if a.starts_with("--size=") => size = Some(a["--size=".len()..].to_string()),
            _ if a.starts_with("--arch=") && command == "pull" => {
                arch = a["--arch=".len()..].to_string()
            }
            _ if a.starts_with('-') && a.len() > 1 => {
                return Err(ImageError::Usage(format!("unknown option {a}")));
            }
            _ => rest.push(a.clone()),
        }
    }
    let arch = match arch.as_str() {
        "amd64" | "x86_64" => "amd64",
        "arm64" | "aarch64" => "arm64",
        other => return Err(ImageError::Usage(format!("--arch {other}: amd64 or arm64"))),
    };
    let [from, out] = rest.as_slice() else {
        return Err(ImageError::Usage(format!(
            "{command} takes {} and OUT.ext4",
            if command == "pull" { "REF" } else { "ARCHIVE" }
        )));
    };
    let size = match size {
        Some(s) => Some(
            parse_size(&s)
                .filter(|&n| (16 << 20..=SIZE_MAX).contains(&n))
                .ok_or_else(|| {
                    ImageError::Usage(format!("--size {s} is not a size from 16M to 1024G"))
                })?,
        ),
        None => None,
    };
    let src = if command == "pull" {
        registry::pull(from, arch, insecure).map_err(ImageError::Pull)?
    } else {
        source::open(Path::new(from)).map_err(ImageError::Source)?
    };
    build_image(&src, Path::new(out), size)?;
    Ok(Exit::Done)
}

/// Removes the half-built image unless disarmed.
struct Partial(PathBuf);

impl Drop for Partial {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn build_image(src: &source::Source, out: &Path, size: Option<u64>) -> Result<(), ImageError> {
    eprintln!(
        "kbox image: {} with {} layer(s)",
        src.kind,
        src.layers.len()
    );
    let size = match size {
        Some(s) => s,
        None => estimate(src)?,
    };
    let tmp = out.with_file_name(format!(
        ".{}.kbox-{}",
        out.file_name()
            .map_or("image".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let partial = Partial(tmp.clone());
    make_fs(&tmp, size)?;
    build(&tmp, src)?;
    std::fs::rename(&tmp, out).map_err(|e| ImageError::Output(out.to_path_buf(), e))?;
    std::mem::forget(partial);
    eprintln!("kbox image: built {} ({} MiB)", out.display(), size >> 20);
    Ok(())
}

/// The layers' bytes and entries (a first pass over each), with room to spare.
fn estimate(src: &source::Source) -> Result<u64, ImageError> {
    let mut total: u64 = 0;
    for (i, blob) in src.layers.iter().enumerate() {
        let layer = source::open_layer(blob).map_err(ImageError::Source)?;
        let mut archive = tar::Archive::new(layer);
        let entries = archive.entries().map_err(|e| ImageError::Layer {
            index: i + 1,
            error: apply::ApplyError::Archive(e),
        })?;
        for e in entries {
            let e = e.map_err(|e| ImageError::Layer {
                index: i + 1,
                error: apply::ApplyError::Archive(e),
            })?;
            // Data rounded to blocks, plus an inode's and a directory entry's share.
            total += e.size().div_ceil(4096) * 4096 + 4096;
        }
    }
    let with_room = total + total / 4 + (64 << 20);
    Ok(with_room.div_ceil(1 << 20) << 20)
}

fn make_fs(path: &Path, size: u64) -> Result<(), ImageError> {
    let f =
        std::fs::File::create_new(path).map_err(|e| ImageError::Output(path.to_path_buf(), e))?;
    f.set_len(size)
        .map_err(|e| ImageError::Output(path.to_path_buf(), e))?;
    drop(f);
    let out = std::process::Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0"])
        .arg(path)
        .output()
        .map_err(|e| ImageError::Mkfs(format!("mke2fs (e2fsprogs): {e}")))?;
    if !out.status.success() {
        return Err(ImageError::Mkfs(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

fn build(path: &Path, src: &source::Source) -> Result<(), ImageError> {
    let disk = kbox_lkl::add_disk(path, false).map_err(|e| ImageError::Kernel(e.to_string()))?;
    let kernel = Kernel::boot(&BootConfig {
        memory_mib: 256,
        cmdline: String::new(),
        verbose: false,
    })
    .map_err(|e| ImageError::Kernel(format!("cannot boot the kernel library: {e}")))?;
    let result = (|| {
        let root = kernel
            .image_root(disk, "ext4", RootMode::Raw, false)
            .map_err(|e| ImageError::Kernel(e.to_string()))?;
        // ext4's lost+found stays; everything else comes from the layers.
        let _ = root.syscall(g::UMASK, [0, 0, 0, 0, 0, 0]);
        for (i, blob) in src.layers.iter().enumerate() {
            let layer = source::open_layer(blob).map_err(ImageError::Source)?;
            let applied = apply::apply(&root, layer).map_err(|error| ImageError::Layer {
                index: i + 1,
                error,
            })?;
            eprintln!(
                "kbox image: layer {}/{}: {} entries, {:.1} MB",
                i + 1,
                src.layers.len(),
                applied.entries,
                applied.bytes as f64 / 1e6
            );
        }
        if let Some(config) = &src.config {
            save_config(&root, config)?;
        }
        Ok(())
    })();
    let halted = kernel.halt();
    result?;
    halted.map_err(|e| ImageError::Kernel(format!("cannot unmount the image: {e}")))
}

/// What kbox keeps of the image config: the process it describes.
pub const CONFIG_PATH: &std::ffi::CStr = c"/.kbox/config.json";

fn save_config(root: &kbox_lkl::Task, config: &serde_json::Value) -> Result<(), ImageError> {
    let process = config
        .get("config")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    let mut kept = serde_json::Map::new();
    for key in ["Env", "WorkingDir", "User", "Entrypoint", "Cmd"] {
        if let Some(v) = process.get(key).filter(|v| !v.is_null()) {
            kept.insert(key.to_string(), v.clone());
        }
    }
    let text = serde_json::Value::Object(kept).to_string();
    let fail = |errno| ImageError::Kernel(format!("cannot write /.kbox/config.json: {errno}"));
    match root.syscall(
        g::MKDIRAT,
        [apply::AT_FDCWD, c"/.kbox".as_ptr() as usize, 0o755, 0, 0, 0],
    ) {
        Ok(_) | Err(kbox_lkl::Errno::EEXIST) => {}
        Err(e) => return Err(fail(e)),
    }
    let fd = root
        .syscall(
            g::OPENAT,
            [
                apply::AT_FDCWD,
                CONFIG_PATH.as_ptr() as usize,
                0o1 | 0o100 | 0o1000,
                0o644,
                0,
                0,
            ],
        )
        .map_err(fail)?;
    let written = root.syscall(g::WRITE, [fd, text.as_ptr() as usize, text.len(), 0, 0, 0]);
    let _ = root.syscall(g::CLOSE, [fd, 0, 0, 0, 0, 0]);
    match written {
        Ok(n) if n == text.len() => Ok(()),
        Ok(_) => Err(fail(kbox_lkl::Errno::EIO)),
        Err(e) => Err(fail(e)),
    }
}

/// A file of the image, read through `root` (small files only: config, passwd).
fn read_file(root: &kbox_lkl::Task, path: &std::ffi::CStr) -> Option<Vec<u8>> {
    let fd = root
        .syscall(
            g::OPENAT,
            [apply::AT_FDCWD, path.as_ptr() as usize, 0, 0, 0, 0],
        )
        .ok()?;
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = root.syscall(g::READ, [fd, buf.as_mut_ptr() as usize, buf.len(), 0, 0, 0]) {
        if n == 0 || text.len() > (1 << 20) {
            break;
        }
        text.extend_from_slice(&buf[..n]);
    }
    let _ = root.syscall(g::CLOSE, [fd, 0, 0, 0, 0, 0]);
    Some(text)
}

/// The uid and gid an image's `User` names: `uid`, `uid:gid`, `name` or `name:group`,
/// names looked up in the image's /etc/passwd and /etc/group.
fn resolve_user(root: &kbox_lkl::Task, user: &str) -> Option<(u32, u32)> {
    let passwd = read_file(root, c"/etc/passwd").unwrap_or_default();
    let passwd = String::from_utf8_lossy(&passwd);
    let group = read_file(root, c"/etc/group").unwrap_or_default();
    let group = String::from_utf8_lossy(&group);
    let (u, gr) = match user.split_once(':') {
        Some((u, gr)) => (u, Some(gr)),
        None => (user, None),
    };
    // passwd: name:x:uid:gid:...
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && (f[0] == u || f[2] == u));
    let uid = match u.parse::<u32>() {
        Ok(n) => n,
        Err(_) => entry.as_ref()?.get(2)?.parse().ok()?,
    };
    let gid = match gr {
        Some(gr) => match gr.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 2 && f[0] == gr)?
                .get(2)?
                .parse()
                .ok()?,
        },
        None => entry.and_then(|f| f.get(3)?.parse().ok()).unwrap_or(0),
    };
    Some((uid, gid))
}

/// With no command given, the image's saved process (`kbox image import`) fills it in:
/// Entrypoint + Cmd as the command, Env added to the environment, WorkingDir unless `-w`
/// named one, User unless `--change-id` did. Returns a note for `-v`.
pub fn apply_saved_process(
    root: &kbox_lkl::Task,
    config: &mut crate::cli::Config,
) -> Option<String> {
    if config.command_given {
        return None;
    }
    let text = read_file(root, CONFIG_PATH)?;
    let saved: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let strings = |key: &str| -> Vec<String> {
        saved
            .get(key)
            .and_then(serde_json::Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let command: Vec<String> = strings("Entrypoint")
        .into_iter()
        .chain(strings("Cmd"))
        .collect();
    if !command.is_empty() {
        config.command = command.into_iter().map(OsString::from).collect();
    }
    config.extra_env = strings("Env").into_iter().map(OsString::from).collect();
    if let Some(dir) = saved.get("WorkingDir").and_then(serde_json::Value::as_str)
        && dir.starts_with('/')
        && config.workdir == Path::new("/")
    {
        config.workdir = PathBuf::from(dir);
    }
    if let Some(user) = saved
        .get("User")
        .and_then(serde_json::Value::as_str)
        .filter(|u| !u.is_empty())
        && !matches!(config.identity, crate::cli::Identity::Ids { .. })
    {
        match resolve_user(root, user) {
            Some((uid, gid)) => config.identity = crate::cli::Identity::Ids { uid, gid },
            None => eprintln!(
                "kbox: the image's user {user:?} is not in its /etc/passwd: running as root"
            ),
        }
    }
    Some(format!(
        "the image's saved process: {:?} in {}",
        config.command,
        config.workdir.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_suffixes() {
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("2g"), Some(2 << 30));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size("-1M"), None);
    }
}
