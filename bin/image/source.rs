//! Where an image's layers and config come from: an OCI image layout (a directory or a
//! tar of one), a `docker save` archive, or a plain root filesystem tarball (gzip or
//! not). Every blob named by a digest is checked against it while it is read; a layer
//! whose bytes do not match fails with the digest it should have had.
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

#[derive(Debug)]
pub enum SourceError {
    Open(PathBuf, io::Error),
    /// A file the format needs is missing or unreadable.
    Missing(String),
    /// A manifest or config that is not what the format says.
    Malformed(String),
    /// No manifest for this machine's architecture.
    NoPlatform(&'static str),
    Unsupported(String),
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Open(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            Self::Missing(what) => write!(f, "the archive has no {what}"),
            Self::Malformed(what) => write!(f, "malformed {what}"),
            Self::NoPlatform(arch) => write!(f, "the image has no linux/{arch} manifest"),
            Self::Unsupported(what) => write!(f, "{what} is not supported"),
        }
    }
}

/// Where a blob's bytes are: a whole file, or a member of a tar file.
#[derive(Clone, Debug)]
pub struct Blob {
    pub file: PathBuf,
    pub offset: u64,
    /// `None`: to the end of the file.
    pub len: Option<u64>,
    /// The sha256 (hex) the bytes must have, when the format names one.
    pub sha256: Option<String>,
}

/// An image to build: its layers, lowest first, and its config (OCI or Docker).
pub struct Source {
    pub layers: Vec<Blob>,
    pub config: Option<Value>,
    /// What the archive is, for the progress line.
    pub kind: &'static str,
}

/// This machine's architecture as image platforms name it.
pub const fn platform_arch() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        "amd64"
    }
}

/// Reads what `archive` holds.
pub fn open(archive: &Path) -> Result<Source, SourceError> {
    let meta =
        std::fs::metadata(archive).map_err(|e| SourceError::Open(archive.to_path_buf(), e))?;
    if meta.is_dir() {
        let blobs = |digest: &str| -> Result<Blob, SourceError> {
            let (alg, hex) = split_digest(digest)?;
            Ok(Blob {
                file: archive.join("blobs").join(alg).join(hex),
                offset: 0,
                len: None,
                sha256: Some(hex.to_string()),
            })
        };
        let index = read_json(&Blob {
            file: archive.join("index.json"),
            offset: 0,
            len: None,
            sha256: None,
        })
        .map_err(|_| SourceError::Missing("index.json (an OCI image layout)".into()))?;
        return oci(&index, &blobs, "OCI layout");
    }
    let mut head = [0u8; 2];
    let mut f = File::open(archive).map_err(|e| SourceError::Open(archive.to_path_buf(), e))?;
    let _ = f.read(&mut head);
    let whole = Blob {
        file: archive.to_path_buf(),
        offset: 0,
        len: None,
        sha256: None,
    };
    if head == [0x1f, 0x8b] {
        // A compressed tarball: a root filesystem (image archives are not compressed).
        return Ok(Source {
            layers: vec![whole],
            config: None,
            kind: "root filesystem tarball",
        });
    }
    let members = tar_members(archive)?;
    let member = |name: &str| -> Option<Blob> {
        let name = name.trim_start_matches("./");
        members
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, off, len)| Blob {
                file: archive.to_path_buf(),
                offset: *off,
                len: Some(*len),
                sha256: None,
            })
    };
    if let (Some(index), Some(_)) = (member("index.json"), member("oci-layout")) {
        let index = read_json(&index)?;
        let blobs = |digest: &str| -> Result<Blob, SourceError> {
            let (alg, hex) = split_digest(digest)?;
            let mut b = member(&format!("blobs/{alg}/{hex}"))
                .ok_or_else(|| SourceError::Missing(format!("blob {digest}")))?;
            b.sha256 = Some(hex.to_string());
            Ok(b)
        };
        return oci(&index, &blobs, "OCI layout archive");
    }
    if let Some(manifest) = member("manifest.json") {
        let manifest = read_json(&manifest)?;
        let first = manifest
            .as_array()
            .and_then(|a| a.first())
            .ok_or_else(|| SourceError::Malformed("manifest.json".into()))?;
        let named = |name: &str| -> Result<Blob, SourceError> {
            let mut b = member(name).ok_or_else(|| SourceError::Missing(name.to_string()))?;
            // Newer docker names blobs by digest: check them too.
            if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                b.sha256 = Some(hex.to_string());
            }
            Ok(b)
        };
        let config = match first.get("Config").and_then(Value::as_str) {
            Some(name) => Some(read_json(&named(name)?)?),
            None => None,
        };
        let layers = first
            .get("Layers")
            .and_then(Value::as_array)
            .ok_or_else(|| SourceError::Malformed("manifest.json (no Layers)".into()))?
            .iter()
            .map(|l| {
                l.as_str()
                    .ok_or_else(|| SourceError::Malformed("manifest.json".into()))
                    .and_then(named)
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Source {
            layers,
            config,
            kind: "docker save archive",
        });
    }
    Ok(Source {
        layers: vec![whole],
        config: None,
        kind: "root filesystem tarball",
    })
}

fn split_digest(digest: &str) -> Result<(&str, &str), SourceError> {
    match digest.split_once(':') {
        Some(("sha256", hex)) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(("sha256", hex))
        }
        _ => Err(SourceError::Unsupported(format!("digest {digest:?}"))),
    }
}

/// The entry of an index's `manifests` for linux on `arch`, else one that names no
/// platform (a single-image index).
pub fn choose_platform<'a>(manifests: &'a [Value], arch: &str) -> Option<&'a Value> {
    manifests
        .iter()
        .find(|m| {
            m.get("platform").is_some_and(|p| {
                p.get("architecture").and_then(Value::as_str) == Some(arch)
                    && p.get("os")
                        .and_then(Value::as_str)
                        .is_none_or(|os| os == "linux")
            })
        })
        .or_else(|| manifests.iter().find(|m| m.get("platform").is_none()))
}

/// Follows an OCI index (nested ones too) to this machine's manifest, then its config and
/// layers.
fn oci(
    index: &Value,
    blobs: &dyn Fn(&str) -> Result<Blob, SourceError>,
    kind: &'static str,
) -> Result<Source, SourceError> {
    let arch = platform_arch();
    let mut current = index.clone();
    for _ in 0..4 {
        let Some(manifests) = current.get("manifests").and_then(Value::as_array) else {
            break;
        };
        let chosen = choose_platform(manifests, arch).ok_or(SourceError::NoPlatform(arch))?;
        let digest = chosen
            .get("digest")
            .and_then(Value::as_str)
            .ok_or_else(|| SourceError::Malformed("index (a manifest without digest)".into()))?;
        current = read_json(&blobs(digest)?)?;
    }
    let config = match current
        .get("config")
        .and_then(|c| c.get("digest"))
        .and_then(Value::as_str)
    {
        Some(d) => Some(read_json(&blobs(d)?)?),
        None => None,
    };
    let layers = current
        .get("layers")
        .and_then(Value::as_array)
        .ok_or_else(|| SourceError::Malformed("manifest (no layers)".into()))?
        .iter()
        .map(|l| {
            let media = l.get("mediaType").and_then(Value::as_str).unwrap_or("");
            if media.contains("zstd") {
                return Err(SourceError::Unsupported(format!(
                    "layer media type {media}"
                )));
            }
            let digest = l.get("digest").and_then(Value::as_str).ok_or_else(|| {
                SourceError::Malformed("manifest (a layer without digest)".into())
            })?;
            blobs(digest)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Source {
        layers,
        config,
        kind,
    })
}

/// Every regular member of the tar file: (name, data offset, size).
fn tar_members(path: &Path) -> Result<Vec<(String, u64, u64)>, SourceError> {
    let f = File::open(path).map_err(|e| SourceError::Open(path.to_path_buf(), e))?;
    let mut archive = tar::Archive::new(BufReader::new(f));
    let mut out = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| SourceError::Open(path.to_path_buf(), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| SourceError::Open(path.to_path_buf(), e))?;
        if entry.header().entry_type().is_file() {
            let name = String::from_utf8_lossy(&entry.path_bytes())
                .trim_start_matches("./")
                .to_string();
            out.push((name, entry.raw_file_position(), entry.size()));
        }
    }
    Ok(out)
}

fn read_json(blob: &Blob) -> Result<Value, SourceError> {
    let mut text = Vec::new();
    open_blob(blob)?
        .read_to_end(&mut text)
        .map_err(|e| SourceError::Malformed(format!("{} ({e})", blob.file.display())))?;
    serde_json::from_slice(&text)
        .map_err(|e| SourceError::Malformed(format!("JSON in {} ({e})", blob.file.display())))
}

/// A blob's bytes, checked against its digest at the end; gzip layers are decompressed.
pub fn open_layer(blob: &Blob) -> Result<Box<dyn Read>, SourceError> {
    let mut raw = open_blob(blob)?;
    let mut head = [0u8; 2];
    let n = raw
        .read(&mut head)
        .map_err(|e| SourceError::Open(blob.file.clone(), e))?;
    let whole = io::Cursor::new(head[..n].to_vec()).chain(raw);
    Ok(if head[..n] == [0x1f, 0x8b] {
        Box::new(flate2::read::MultiGzDecoder::new(whole))
    } else {
        Box::new(whole)
    })
}

fn open_blob(blob: &Blob) -> Result<Box<dyn Read>, SourceError> {
    let mut f = File::open(&blob.file).map_err(|e| SourceError::Open(blob.file.clone(), e))?;
    f.seek(SeekFrom::Start(blob.offset))
        .map_err(|e| SourceError::Open(blob.file.clone(), e))?;
    let f = BufReader::with_capacity(256 << 10, f);
    let limited: Box<dyn Read> = match blob.len {
        Some(len) => Box::new(f.take(len)),
        None => Box::new(f),
    };
    Ok(match &blob.sha256 {
        Some(hex) => Box::new(Checked {
            inner: limited,
            hash: Sha256::new(),
            want: hex.to_ascii_lowercase(),
        }),
        None => limited,
    })
}

/// Hashes what passes through; at the end, a mismatch is a read error.
struct Checked {
    inner: Box<dyn Read>,
    hash: Sha256,
    want: String,
}

impl Read for Checked {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 {
            let got: String = self
                .hash
                .clone()
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if got != self.want {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "digest mismatch: sha256:{} expected, sha256:{got} read",
                        self.want
                    ),
                ));
            }
            return Ok(0);
        }
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_that_does_not_match_its_digest_fails_at_its_end() {
        let dir = std::env::temp_dir().join(format!("kbox-digest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("blob");
        std::fs::write(&file, b"hello").expect("write");
        // sha256("hello")
        let good = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        let mut blob = Blob {
            file: file.clone(),
            offset: 0,
            len: None,
            sha256: Some(good.into()),
        };
        let mut out = Vec::new();
        open_blob(&blob)
            .expect("open")
            .read_to_end(&mut out)
            .expect("matches");
        assert_eq!(out, b"hello");
        blob.sha256 = Some(good.replace('2', "3"));
        let err = open_blob(&blob).expect("open").read_to_end(&mut Vec::new());
        assert!(err.is_err_and(|e| e.to_string().contains("digest mismatch")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn digests_are_sha256_hex() {
        assert!(split_digest(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(split_digest("sha512:abc").is_err());
        assert!(split_digest("sha256:../../etc").is_err());
    }
}
