//! `kbox image pull`: an image from a registry (the OCI distribution API, v2). The
//! manifest (an index is followed to this machine's platform), the config and the layers
//! are fetched into a cache of blobs by digest (`~/.cache/kbox/blobs/sha256/HEX`), each
//! checked against its digest before it is kept and again whenever it is read.
//!
//! Registries that want a token say so in a 401's `WWW-Authenticate: Bearer realm=...,
//! service=..., scope=...`; kbox fetches an anonymous token there and tries once more.
//! TLS uses the system's CA store (`SSL_CERT_FILE` too); plain HTTP is used only for a
//! registry on the loopback whose HTTPS does not connect (Docker's rule for loopback
//! registries), or with `--insecure`.
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::source::{Blob, Source};

const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug)]
pub enum PullError {
    BadReference(String),
    /// The registry has no such repository, tag or digest.
    NotFound(String),
    AuthRefused(String),
    Http(String),
    DigestMismatch {
        want: String,
        got: String,
    },
    Malformed(String),
    NoPlatform(String),
    Cache(PathBuf, io::Error),
}

impl fmt::Display for PullError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadReference(r) => write!(
                f,
                "{r:?} is not an image reference (HOST[:PORT]/NAME[:TAG|@DIGEST])"
            ),
            Self::NotFound(what) => write!(f, "no such image: {what}"),
            Self::AuthRefused(why) => write!(f, "the registry refused access: {why}"),
            Self::Http(why) => write!(f, "registry: {why}"),
            Self::DigestMismatch { want, got } => {
                write!(f, "digest mismatch: {want} expected, sha256:{got} received")
            }
            Self::Malformed(what) => write!(f, "malformed {what} from the registry"),
            Self::NoPlatform(arch) => write!(f, "the image has no linux/{arch} manifest"),
            Self::Cache(p, e) => write!(f, "blob cache {}: {e}", p.display()),
        }
    }
}

/// `[docker://]HOST[:PORT]/NAME[:TAG][@DIGEST]`; without a host, Docker Hub.
#[derive(Debug, PartialEq, Eq)]
pub struct Reference {
    pub host: String,
    pub repo: String,
    /// A tag or a digest.
    pub reference: String,
}

pub fn parse_reference(text: &str) -> Result<Reference, PullError> {
    let bad = || PullError::BadReference(text.to_string());
    let rest = text.strip_prefix("docker://").unwrap_or(text);
    let (first, after) = rest.split_once('/').ok_or_else(bad)?;
    let has_host = first.contains('.') || first.contains(':') || first == "localhost";
    let (host, path) = if has_host {
        (first.to_string(), after.to_string())
    } else if rest.contains('/') {
        ("registry-1.docker.io".to_string(), rest.to_string())
    } else {
        return Err(bad());
    };
    let (path, reference) = match path.split_once('@') {
        Some((p, d)) => (p.to_string(), d.to_string()),
        None => match path.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
            Some((p, t)) => (p.to_string(), t.to_string()),
            None => (path.clone(), "latest".to_string()),
        },
    };
    let ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/:".contains(&b))
            && !s.split('/').any(|c| c == ".." || c.is_empty())
    };
    if !ok(&path) || !ok(&reference) {
        return Err(bad());
    }
    Ok(Reference {
        host,
        repo: path,
        reference,
    })
}

/// Whether `host` (with its port) is this machine's loopback.
fn loopback(host: &str) -> bool {
    let name = host
        .strip_prefix('[')
        .and_then(|h| h.split_once(']').map(|(a, _)| a))
        .unwrap_or_else(|| host.rsplit_once(':').map_or(host, |(h, _)| h));
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

struct Client {
    agent: ureq::Agent,
    base: String,
    /// For a loopback registry: plain HTTP, if HTTPS cannot even connect (as Docker
    /// treats loopback registries).
    fallback: Option<String>,
    token: Option<String>,
}

fn hex(hash: Sha256) -> String {
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl Client {
    fn new(r: &Reference, insecure: bool) -> Client {
        let url = |scheme: &str| format!("{scheme}://{}/v2/{}", r.host, r.repo);
        Client {
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(20))
                .timeout_read(Duration::from_secs(120))
                .build(),
            base: url(if insecure { "http" } else { "https" }),
            fallback: (!insecure && loopback(&r.host)).then(|| url("http")),
            token: None,
        }
    }

    fn get(&mut self, path: &str, accept: &str) -> Result<ureq::Response, PullError> {
        for attempt in 0..2 {
            let mut req = self
                .agent
                .get(&format!("{}/{path}", self.base))
                .set("Accept", accept);
            if let Some(t) = &self.token {
                req = req.set("Authorization", &format!("Bearer {t}"));
            }
            match req.call() {
                Ok(resp) => return Ok(resp),
                Err(ureq::Error::Status(401, resp)) if attempt == 0 => {
                    let challenge = resp.header("WWW-Authenticate").unwrap_or("").to_string();
                    self.token = Some(self.fetch_token(&challenge)?);
                }
                Err(ureq::Error::Status(401 | 403, _)) => {
                    return Err(PullError::AuthRefused(format!("{path}: not allowed")));
                }
                Err(ureq::Error::Status(404, _)) => {
                    return Err(PullError::NotFound(path.to_string()));
                }
                Err(ureq::Error::Status(code, _)) => {
                    return Err(PullError::Http(format!("{path}: HTTP {code}")));
                }
                Err(ureq::Error::Transport(_)) if self.fallback.is_some() => {
                    if let Some(plain) = self.fallback.take() {
                        self.base = plain;
                    }
                    return self.get(path, accept);
                }
                Err(e) => return Err(PullError::Http(e.to_string())),
            }
        }
        Err(PullError::AuthRefused("the token was not accepted".into()))
    }

    /// An anonymous token from the realm a `Bearer` challenge names.
    fn fetch_token(&self, challenge: &str) -> Result<String, PullError> {
        let Some(params) = challenge.strip_prefix("Bearer ") else {
            return Err(PullError::AuthRefused(format!(
                "unsupported challenge {challenge:?}"
            )));
        };
        let mut realm = None;
        let mut query = Vec::new();
        for part in params.split(',') {
            let Some((k, v)) = part.trim().split_once('=') else {
                continue;
            };
            let v = v.trim_matches('"');
            match k {
                "realm" => realm = Some(v.to_string()),
                "service" | "scope" => query.push((k.to_string(), v.to_string())),
                _ => {}
            }
        }
        let realm =
            realm.ok_or_else(|| PullError::AuthRefused("a challenge without realm".into()))?;
        let mut req = self.agent.get(&realm);
        for (k, v) in &query {
            req = req.query(k, v);
        }
        let body: Value = req
            .call()
            .map_err(|e| PullError::AuthRefused(format!("token: {e}")))?
            .into_json()
            .map_err(|e| PullError::AuthRefused(format!("token: {e}")))?;
        body.get("token")
            .or_else(|| body.get("access_token"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| PullError::AuthRefused("no token in the answer".into()))
    }

    /// A manifest (by tag or digest) as JSON; by digest, its bytes are checked.
    fn manifest(&mut self, reference: &str) -> Result<Value, PullError> {
        let resp = self.get(&format!("manifests/{reference}"), ACCEPT_MANIFESTS)?;
        let mut bytes = Vec::new();
        resp.into_reader()
            .take(16 << 20)
            .read_to_end(&mut bytes)
            .map_err(|e| PullError::Http(e.to_string()))?;
        if let Some(want) = reference.strip_prefix("sha256:") {
            let got = hex(Sha256::new_with_prefix(&bytes));
            if got != want {
                return Err(PullError::DigestMismatch {
                    want: reference.to_string(),
                    got,
                });
            }
        }
        serde_json::from_slice(&bytes).map_err(|_| PullError::Malformed("manifest".into()))
    }

    /// The blob, from the cache or fetched into it (kept only if its digest matches).
    fn blob(&mut self, cache: &Path, digest: &str, label: &str) -> Result<PathBuf, PullError> {
        let want = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| PullError::Malformed(format!("digest {digest:?}")))?;
        let path = cache.join(want);
        if path.is_file() {
            if file_sha256(&path).is_some_and(|got| got == want) {
                eprintln!("kbox image: {label}: cached");
                return Ok(path);
            }
            // A cached copy that no longer matches its name is dropped and fetched anew.
            eprintln!("kbox image: {label}: the cached copy is damaged; fetching it again");
            fs::remove_file(&path).map_err(|e| PullError::Cache(path.clone(), e))?;
        }
        let resp = self.get(&format!("blobs/{digest}"), "*/*")?;
        let tmp = cache.join(format!(".{want}.{}", std::process::id()));
        let mut out = fs::File::create(&tmp).map_err(|e| PullError::Cache(tmp.clone(), e))?;
        let mut reader = resp.into_reader();
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 << 10];
        let mut total = 0u64;
        let mut shown = 0u64;
        let copied = loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(e) => break Err(PullError::Http(e.to_string())),
            };
            hash.update(&buf[..n]);
            if let Err(e) = out.write_all(&buf[..n]) {
                break Err(PullError::Cache(tmp.clone(), e));
            }
            total += n as u64;
            if total - shown >= 32 << 20 {
                shown = total;
                eprintln!("kbox image: {label}: {} MB", total / 1_000_000);
            }
        };
        let got = hex(hash);
        let kept = copied.and_then(|()| {
            if got != want {
                return Err(PullError::DigestMismatch {
                    want: digest.to_string(),
                    got,
                });
            }
            out.sync_all()
                .map_err(|e| PullError::Cache(tmp.clone(), e))?;
            fs::rename(&tmp, &path).map_err(|e| PullError::Cache(path.clone(), e))
        });
        if kept.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        kept?;
        eprintln!("kbox image: {label}: {:.1} MB fetched", total as f64 / 1e6);
        Ok(path)
    }
}

/// The sha256 (hex) of a file's bytes.
fn file_sha256(path: &Path) -> Option<String> {
    let mut f = fs::File::open(path).ok()?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Some(hex(hash)),
            Ok(n) => hash.update(&buf[..n]),
            Err(_) => return None,
        }
    }
}

/// The blob cache directory, made if missing.
fn cache_dir() -> Result<PathBuf, PullError> {
    let base = std::env::var_os("KBOX_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/kbox")))
        .unwrap_or_else(|| std::env::temp_dir().join("kbox-cache"));
    let dir = base.join("blobs/sha256");
    fs::create_dir_all(&dir).map_err(|e| PullError::Cache(dir.clone(), e))?;
    Ok(dir)
}

/// Fetches `reference`'s image for `arch` into the cache and describes it for the build.
pub fn pull(reference: &str, arch: &str, insecure: bool) -> Result<Source, PullError> {
    let r = parse_reference(reference)?;
    let cache = cache_dir()?;
    let mut client = Client::new(&r, insecure);
    let mut manifest = client.manifest(&r.reference)?;
    for _ in 0..4 {
        let Some(list) = manifest.get("manifests").and_then(Value::as_array) else {
            break;
        };
        let digest = super::source::choose_platform(list, arch)
            .and_then(|m| m.get("digest").and_then(Value::as_str))
            .ok_or_else(|| PullError::NoPlatform(arch.to_string()))?
            .to_string();
        manifest = client.manifest(&digest)?;
    }
    let digest_of = |v: &Value| {
        v.get("digest")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| PullError::Malformed("manifest (a descriptor without digest)".into()))
    };
    let config_digest = digest_of(
        manifest
            .get("config")
            .ok_or_else(|| PullError::Malformed("manifest (no config)".into()))?,
    )?;
    let layers = manifest
        .get("layers")
        .and_then(Value::as_array)
        .ok_or_else(|| PullError::Malformed("manifest (no layers)".into()))?
        .clone();
    let config_path = client.blob(&cache, &config_digest, "config")?;
    let config_text =
        fs::read(&config_path).map_err(|e| PullError::Cache(config_path.clone(), e))?;
    let config: Value =
        serde_json::from_slice(&config_text).map_err(|_| PullError::Malformed("config".into()))?;
    let mut blobs = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let media = layer.get("mediaType").and_then(Value::as_str).unwrap_or("");
        if media.contains("zstd") {
            return Err(PullError::Malformed(format!(
                "layer media type {media} (zstd is not supported)"
            )));
        }
        let digest = digest_of(layer)?;
        let label = format!("layer {}/{}", i + 1, layers.len());
        let path = client.blob(&cache, &digest, &label)?;
        blobs.push(Blob {
            file: path,
            offset: 0,
            len: None,
            // Checked again as it is read: a cache changed since is caught.
            sha256: digest.strip_prefix("sha256:").map(str::to_string),
        });
    }
    Ok(Source {
        layers: blobs,
        config: Some(config),
        kind: "registry image",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_host_repository_and_tag_or_digest() {
        let r = parse_reference("docker://127.0.0.1:5000/kbox/test:1").expect("ok");
        assert_eq!(
            r,
            Reference {
                host: "127.0.0.1:5000".into(),
                repo: "kbox/test".into(),
                reference: "1".into()
            }
        );
        let r = parse_reference("localhost:5000/app").expect("ok");
        assert_eq!(r.reference, "latest");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse_reference(&format!("ghcr.io/o/app@{d}")).expect("ok");
        assert_eq!(
            (r.host.as_str(), r.reference.as_str()),
            ("ghcr.io", d.as_str())
        );
        let r = parse_reference("library/debian:12").expect("ok");
        assert_eq!(r.host, "registry-1.docker.io");
        for bad in ["debian", "host:1/../x", "h.io/", "h.io/a b"] {
            assert!(parse_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        for h in [
            "127.0.0.1:5000",
            "localhost:5000",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(loopback(h), "{h}");
        }
        for h in [
            "10.0.0.1:5000",
            "registry.example:443",
            "[2001:db8::1]:5000",
        ] {
            assert!(!loopback(h), "{h}");
        }
    }
}
