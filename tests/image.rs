//! `kbox image import`: images built by tests/image/make_images.py (three layers over the
//! host's static busybox, with owners, setuid, xattrs, links, a device node, a FIFO,
//! whiteouts and an opaque directory) are imported from an OCI layout, an OCI layout tar,
//! a `docker save` archive and a plain tarball; the result is checked with e2fsck and
//! debugfs (the host's tools, not kbox), then run. The same checks fail on the plain
//! tarball's image (the first layer alone), which shows each can fail. Tampered blobs and
//! names that leave the image are refused, leaving no output behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{KBOX, expect, run_with_timeout, text};

/// The fixtures, made once per test binary run (each test makes its own copy of nothing:
/// they only read them).
fn fixtures() -> PathBuf {
    static MADE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    MADE.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("oci-fixtures");
        let busybox = which("busybox");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/image/make_images.py");
        let made = Command::new("python3")
            .arg(&script)
            .arg(&busybox)
            .arg(&out)
            .output()
            .expect("python3 on the host");
        assert!(made.status.success(), "{}", text(&made.stderr));
        out
    })
    .clone()
}

fn which(program: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} is not on PATH (make deps installs it)"))
}

fn out_path(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("imported");
    std::fs::create_dir_all(&dir).expect("dir");
    let p = dir.join(format!("{name}.ext4"));
    let _ = std::fs::remove_file(&p);
    p
}

fn import(archive: &Path, out: &Path) -> std::process::Output {
    let mut c = Command::new(KBOX);
    c.args(["image", "import"]).arg(archive).arg(out);
    run_with_timeout(c, std::time::Duration::from_secs(120))
}

fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", request])
        .arg(image)
        .output()
        .expect("debugfs (e2fsprogs)");
    text(&out.stdout)
}

fn fsck_clean(image: &Path) {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .output()
        .expect("e2fsck");
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// What the layers say the image holds, as debugfs shows it; `Err` names the first
/// difference.
fn check_tree(image: &Path) -> Result<(), String> {
    let want = |path: &str, parts: &[&str]| -> Result<(), String> {
        let stat = debugfs(image, &format!("stat {path}"));
        match parts.iter().find(|p| !stat.contains(*p)) {
            None => Ok(()),
            Some(p) => Err(format!("{path}: no {p:?} in:\n{stat}")),
        }
    };
    want(
        "/usr/bin/suid",
        &["Type: regular", "Mode:  04755", "User:     0"],
    )?;
    want(
        "/home/app/data",
        &["Mode:  0640", "User:  1000   Group:  1000"],
    )?;
    want(
        "/home/app",
        &["Type: directory", "Mode:  0750", "User:  1000"],
    )?;
    want("/bin/cat", &["Links: 2"])?;
    want("/bin/sh", &["Type: symlink", "Fast link dest: \"busybox\""])?;
    want(
        "/dev/null",
        &[
            "Type: character special",
            "Device major/minor number: 01:03",
        ],
    )?;
    want("/run/fifo", &["Type: FIFO"])?;
    want("/tmp", &["Mode:  01777"])?;
    let xattrs = debugfs(image, "ea_list /home/app/data");
    if !xattrs.contains("user.kbox (5) = \"hello\"") {
        return Err(format!("user.kbox missing: {xattrs}"));
    }
    let caps = debugfs(image, "ea_list /usr/bin/pinger");
    if !caps.contains("security.capability (20)") {
        return Err(format!("security.capability missing: {caps}"));
    }
    let opt = debugfs(image, "ls /opt");
    if opt.contains("old") || !opt.contains("keep") {
        return Err(format!("the whiteout of /opt/old: {opt}"));
    }
    let opq = debugfs(image, "ls /opt/opq");
    if opq.contains(" x ") || !opq.contains(" y ") {
        return Err(format!("the opaque /opt/opq: {opq}"));
    }
    Ok(())
}

#[test]
fn an_oci_layout_imports_exactly_and_the_checks_can_fail() {
    let fx = fixtures();
    // First the image without the upper layers: the checks must find what it lacks.
    let plain = out_path("plain");
    expect(&import(&fx.join("rootfs.tar.gz"), &plain), 0);
    fsck_clean(&plain);
    assert!(
        check_tree(&plain).is_err(),
        "the checks pass on an image that lacks them"
    );
    let img = out_path("oci");
    let out = import(&fx.join("oci"), &img);
    expect(&out, 0);
    let progress = text(&out.stderr);
    assert!(progress.contains("layer 3/3"), "{progress}");
    fsck_clean(&img);
    if let Err(e) = check_tree(&img) {
        panic!("{e}");
    }
    let saved = debugfs(&img, "cat /.kbox/config.json");
    assert!(saved.contains("\"User\":\"app\""), "{saved}");
}

#[test]
fn every_archive_form_gives_the_same_image() {
    let fx = fixtures();
    for form in ["oci.tar", "docker.tar"] {
        let img = out_path(form);
        expect(&import(&fx.join(form), &img), 0);
        fsck_clean(&img);
        if let Err(e) = check_tree(&img) {
            panic!("{form}: {e}");
        }
    }
}

#[test]
fn the_image_runs_its_saved_command_as_its_user_unless_one_is_given() {
    let fx = fixtures();
    let img = out_path("run");
    expect(&import(&fx.join("oci"), &img), 0);
    let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("home");
    let run = |args: &[&str]| {
        let mut c = Command::new(KBOX);
        c.env("HOME", &home).args(args);
        run_with_timeout(c, std::time::Duration::from_secs(120))
    };
    let out = run(&["-S", img.to_str().expect("UTF-8")]);
    assert_eq!(
        expect(&out, 0),
        "hello-from-the-image\n/home/app\n1000\nimported by kbox\n"
    );
    // A command given overrides it, as with podman; -S then means root.
    let out = run(&[
        "-S",
        img.to_str().expect("UTF-8"),
        "--",
        "/bin/sh",
        "-c",
        "id -u; pwd",
    ]);
    assert_eq!(expect(&out, 0), "0\n/\n");
    fsck_clean(&img);
}

#[test]
fn tampered_blobs_and_escaping_names_are_refused_leaving_nothing() {
    let fx = fixtures();
    let dir = out_path("x").parent().expect("dir").to_path_buf();
    for (archive, says) in [
        ("tampered", "digest mismatch"),
        ("evil.tar", "outside the image"),
        ("evil-abs.tar", "outside the image"),
    ] {
        let img = out_path(&format!("refused-{archive}"));
        let out = import(&fx.join(archive), &img);
        assert_eq!(
            out.status.code(),
            Some(125),
            "{archive}: {}",
            text(&out.stderr)
        );
        let stderr = text(&out.stderr);
        let last = stderr.lines().last().unwrap_or("");
        assert!(
            last.starts_with("kbox: image: ") && last.contains(says),
            "{archive}: {stderr}"
        );
        assert!(!img.exists(), "{archive}: {} was left", img.display());
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".kbox-"))
            .collect();
        assert!(leftovers.is_empty(), "{archive}: a partial image was left");
    }
    assert!(!dir.join("escaped").exists() && !dir.parent().expect("up").join("escaped").exists());
}

#[test]
fn a_symlink_out_of_the_image_cannot_carry_a_write_out() {
    let fx = fixtures();
    let img = out_path("evil-link");
    let out = import(&fx.join("evil-link.tar"), &img);
    // The symlink points at the fixtures' directory on the host; the file behind it must
    // land in the image (the parent becomes a directory of the image's) and never there.
    expect(&out, 0);
    assert!(
        !fx.join("escaped-through-a-link").exists(),
        "a write left the image"
    );
    let inside = debugfs(&img, "ls -l /up");
    assert!(inside.contains("escaped-through-a-link"), "{inside}");
    fsck_clean(&img);
}

#[test]
fn bad_arguments_are_one_line_errors() {
    let fx = fixtures();
    for (args, says) in [
        (
            vec!["image", "import", "/nonexistent.tar", "/tmp/never.ext4"],
            "cannot read",
        ),
        (vec!["image", "import", "--size", "12Q", "a", "b"], "--size"),
        (vec!["image", "export", "a"], "unknown command"),
        (vec!["image", "import", "only-one"], "ARCHIVE and OUT"),
    ] {
        let out = Command::new(KBOX).args(&args).output().expect("kbox");
        assert_eq!(out.status.code(), Some(125), "{args:?}");
        let stderr = text(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let _ = fx;
}

/// A registry on 127.0.0.1 (Debian's docker-registry) with the fixture image pushed to it
/// by skopeo as kbox/test:1; ended on drop.
struct Registry {
    child: std::process::Child,
    port: u16,
    storage: PathBuf,
}

impl Registry {
    fn start(name: &str) -> Registry {
        Registry::start_with(name, None)
    }

    /// With `tls`, the registry serves HTTPS only, with that certificate and key.
    fn start_with(name: &str, tls: Option<(&Path, &Path)>) -> Registry {
        let fx = fixtures();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("registry-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let storage = dir.join("data");
        let config = dir.join("config.yml");
        let mut yml = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        if let Some((cert, key)) = tls {
            yml.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
        }
        std::fs::write(&config, yml).expect("config");
        let child = Command::new(which("docker-registry"))
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry (make deps installs it)");
        let registry = Registry {
            child,
            port,
            storage,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the registry did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let pushed = Command::new(which("skopeo"))
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:1", fx.join("oci-single").display()))
            .arg(format!("docker://127.0.0.1:{port}/kbox/test:1"))
            .output()
            .expect("skopeo (make deps installs it)");
        assert!(pushed.status.success(), "{}", text(&pushed.stderr));
        registry
    }

    fn reference(&self, tag: &str) -> String {
        format!("docker://127.0.0.1:{}/kbox/test:{tag}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pull(reference: &str, out: &Path, cache: &Path) -> std::process::Output {
    let mut c = Command::new(KBOX);
    c.env("KBOX_CACHE", cache)
        .args(["image", "pull", reference])
        .arg(out);
    run_with_timeout(c, std::time::Duration::from_secs(120))
}

#[test]
fn an_image_pulled_from_a_registry_is_the_image_pushed_and_runs() {
    let registry = Registry::start("pull");
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pull-cache");
    let _ = std::fs::remove_dir_all(&cache);
    let img = out_path("pulled");
    let out = pull(&registry.reference("1"), &img, &cache);
    let stderr = expect(&out, 0);
    let _ = stderr;
    assert!(
        text(&out.stderr).contains("fetched"),
        "{}",
        text(&out.stderr)
    );
    fsck_clean(&img);
    if let Err(e) = check_tree(&img) {
        panic!("{e}");
    }
    let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("home");
    let mut c = Command::new(KBOX);
    c.env("HOME", &home)
        .args(["-S", img.to_str().expect("UTF-8")]);
    let ran = run_with_timeout(c, std::time::Duration::from_secs(120));
    assert_eq!(
        expect(&ran, 0),
        "hello-from-the-image\n/home/app\n1000\nimported by kbox\n"
    );
    // Again: every blob comes from the cache.
    let again = out_path("pulled-again");
    let out = pull(&registry.reference("1"), &again, &cache);
    expect(&out, 0);
    let log = text(&out.stderr);
    assert!(!log.contains("fetched") && log.contains("cached"), "{log}");
    // A tag the registry does not have.
    let missing = out_path("pulled-missing");
    let out = pull(&registry.reference("nope"), &missing, &cache);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("no such image"),
        "{}",
        text(&out.stderr)
    );
    assert!(!missing.exists());
}

/// Every blob file the registry stores (its filesystem driver keeps them as
/// blobs/sha256/XX/HEX/data).
fn stored_blobs(dir: &Path, found: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            stored_blobs(&p, found);
        } else if p.file_name().is_some_and(|n| n == "data")
            && p.to_string_lossy().contains("/blobs/sha256/")
        {
            found.push(p);
        }
    }
}

#[test]
fn a_damaged_cache_is_refetched_and_a_tampered_registry_blob_refused() {
    let registry = Registry::start("tamper");
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tamper-cache");
    let _ = std::fs::remove_dir_all(&cache);
    // Fill the cache, then change one cached layer: the next build must notice.
    let img = out_path("tamper-first");
    expect(&pull(&registry.reference("1"), &img, &cache), 0);
    // The largest cached blob: the busybox layer (skopeo may have recompressed layers, so
    // digests are the registry's, not the fixture's).
    let cached = std::fs::read_dir(cache.join("blobs/sha256"))
        .expect("the cache")
        .flatten()
        .map(|e| e.path())
        .max_by_key(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .expect("a cached blob");
    let name = cached.file_name().expect("name").to_owned();
    let name = name.as_os_str();
    let mut bytes = std::fs::read(&cached).expect("cached layer");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&cached, &bytes).expect("tamper the cache");
    let img = out_path("tamper-cache");
    let out = pull(&registry.reference("1"), &img, &cache);
    expect(&out, 0);
    assert!(
        text(&out.stderr).contains("damaged"),
        "{}",
        text(&out.stderr)
    );
    assert_ne!(std::fs::read(&cached).expect("refetched"), bytes);
    fsck_clean(&img);
    // Now the registry's own copy, with an empty cache.
    let _ = std::fs::remove_dir_all(&cache);
    let mut stored = Vec::new();
    stored_blobs(&registry.storage, &mut stored);
    let victim = stored
        .iter()
        .find(|p| p.parent().and_then(Path::file_name) == Some(name))
        .expect("the registry's copy of the layer");
    std::fs::write(victim, &bytes).expect("tamper the registry");
    let img = out_path("tamper-registry");
    let out = pull(&registry.reference("1"), &img, &cache);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("digest mismatch"),
        "{}",
        text(&out.stderr)
    );
    assert!(!img.exists());
    // Nothing that failed its digest is kept.
    let kept: Vec<_> = std::fs::read_dir(cache.join("blobs/sha256"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name() == name)
        .collect();
    assert!(kept.is_empty(), "a tampered blob was cached");
}

/// A CA and a certificate for 127.0.0.1 signed by it, made with the host's openssl:
/// (CA certificate, server certificate, server key).
fn loopback_certificate(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("dir");
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl on the host");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            text(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=kbox test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

#[test]
fn a_registry_speaking_only_https_is_pulled_from_with_the_ca_given_and_refused_without() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tls");
    let (ca, cert, key) = loopback_certificate(&dir);
    let registry = Registry::start_with("tls", Some((&cert, &key)));
    let cache = dir.join("cache");
    // Trusting the CA (rustls reads SSL_CERT_FILE as the system store): HTTPS works.
    let img = out_path("tls");
    let mut c = Command::new(KBOX);
    c.env("KBOX_CACHE", &cache)
        .env("SSL_CERT_FILE", &ca)
        .args(["image", "pull", &registry.reference("1")])
        .arg(&img);
    let out = run_with_timeout(c, std::time::Duration::from_secs(120));
    expect(&out, 0);
    if let Err(e) = check_tree(&img) {
        panic!("{e}");
    }
    // Not trusting it: HTTPS fails, and the plain HTTP a loopback registry may fall back
    // to is refused by this one; nothing is built.
    let _ = std::fs::remove_dir_all(&cache);
    let img = out_path("tls-untrusted");
    let out = pull(&registry.reference("1"), &img, &cache);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr).lines().count(),
        1,
        "{}",
        text(&out.stderr)
    );
    assert!(!img.exists());
}

#[test]
fn import_needs_no_root() {
    let fx = fixtures();
    // As nobody when the tests run as root; as the caller (not root) otherwise.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("rootless");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let chmod = |p: &Path, mode: &str| {
        let ok = Command::new("chmod").args(["-R", mode]).arg(p).status();
        assert!(ok.is_ok_and(|s| s.success()));
    };
    chmod(&dir, "0777");
    let layout = dir.join("oci");
    let ok = Command::new("cp")
        .arg("-r")
        .arg(fx.join("oci"))
        .arg(&layout)
        .status();
    assert!(ok.is_ok_and(|s| s.success()));
    chmod(&layout, "a+rX");
    let img = dir.join("rootless.ext4");
    let root = rustix::process::geteuid().is_root();
    let mut c = if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", KBOX]);
        c
    } else {
        Command::new(KBOX)
    };
    c.env("HOME", &dir)
        .args(["image", "import"])
        .arg(&layout)
        .arg(&img);
    let out = run_with_timeout(c, std::time::Duration::from_secs(120));
    expect(&out, 0);
    if root {
        let owner = std::fs::metadata(&img).map(|m| std::os::unix::fs::MetadataExt::uid(&m));
        assert_eq!(owner.ok(), Some(65534), "not built by nobody");
    }
    fsck_clean(&img);
    if let Err(e) = check_tree(&img) {
        panic!("{e}");
    }
}

#[test]
fn a_full_image_is_a_one_line_error_that_leaves_nothing() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("full");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("tree")).expect("dir");
    // 24 MB of data for a 16 MB image.
    let blob = std::fs::File::create(dir.join("tree/blob")).expect("blob");
    blob.set_len(24 << 20).expect("size");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(dir.join("tree"))
        .arg("-cf")
        .arg(dir.join("big.tar"))
        .arg(".")
        .status();
    assert!(ok.is_ok_and(|s| s.success()));
    let img = dir.join("full.ext4");
    let out = Command::new(KBOX)
        .args(["image", "import", "--size", "16M"])
        .arg(dir.join("big.tar"))
        .arg(&img)
        .output()
        .expect("kbox");
    assert_eq!(out.status.code(), Some(125));
    let stderr = text(&out.stderr);
    let last = stderr.lines().last().unwrap_or("");
    assert!(last.contains("the image is full"), "{stderr}");
    assert!(!img.exists());
    let left: Vec<_> = std::fs::read_dir(&dir)
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".kbox-"))
        .collect();
    assert!(left.is_empty(), "a partial image was left");
}

/// A registry of the test's own that wants a bearer token, as Docker Hub does: a request
/// without `Authorization: Bearer <token>` gets 401 with a challenge naming a realm on the
/// same server, which hands the token out for the right service and scope. It serves the
/// fixture's one-manifest layout. Returns the port and the log of requests it saw.
fn token_registry() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let layout = fixtures().join("oci-single");
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&log);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let mut auth = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() || line.trim().is_empty() {
                    break;
                }
                if let Some(v) = line.strip_prefix("Authorization: ") {
                    auth = Some(v.trim().to_string());
                }
            }
            let target = request.split_whitespace().nth(1).unwrap_or("").to_string();
            seen.lock()
                .expect("log")
                .push(format!("{target} auth={auth:?}"));
            let reply = |conn: &mut std::net::TcpStream,
                         status: &str,
                         headers: &str,
                         body: &[u8]| {
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
                    body.len()
                );
                let _ = conn.write_all(body);
            };
            if target.starts_with("/token?") {
                let good = target.contains("service=kbox-test")
                    && target.contains("scope=repository%3Akbox%2Ftest%3Apull");
                if good {
                    reply(
                        &mut conn,
                        "200 OK",
                        "Content-Type: application/json\r\n",
                        b"{\"token\":\"s3cret\"}",
                    );
                } else {
                    reply(&mut conn, "400 Bad Request", "", b"");
                }
                continue;
            }
            if auth.as_deref() != Some("Bearer s3cret") {
                let challenge = format!(
                    "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"kbox-test\",scope=\"repository:kbox/test:pull\"\r\n"
                );
                reply(&mut conn, "401 Unauthorized", &challenge, b"");
                continue;
            }
            let index: serde_json::Value =
                serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index"))
                    .expect("json");
            let manifest = index["manifests"][0]["digest"]
                .as_str()
                .expect("digest")
                .to_string();
            let blob = |digest: &str| {
                std::fs::read(
                    layout
                        .join("blobs/sha256")
                        .join(digest.trim_start_matches("sha256:")),
                )
            };
            let body = if target == "/v2/kbox/test/manifests/1" {
                blob(&manifest)
                    .ok()
                    .map(|b| (b, "application/vnd.oci.image.manifest.v1+json"))
            } else if let Some(d) = target.strip_prefix("/v2/kbox/test/blobs/") {
                blob(d).ok().map(|b| (b, "application/octet-stream"))
            } else {
                None
            };
            match body {
                Some((b, ty)) => reply(&mut conn, "200 OK", &format!("Content-Type: {ty}\r\n"), &b),
                None => reply(&mut conn, "404 Not Found", "", b""),
            }
        }
    });
    (port, log)
}

#[test]
fn a_registry_that_wants_a_bearer_token_gets_one_from_its_realm() {
    let (port, log) = token_registry();
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("token-cache");
    let _ = std::fs::remove_dir_all(&cache);
    let img = out_path("token");
    // --insecure: the test's registry speaks plain HTTP only.
    let mut c = Command::new(KBOX);
    c.env("KBOX_CACHE", &cache)
        .args([
            "image",
            "pull",
            "--insecure",
            &format!("127.0.0.1:{port}/kbox/test:1"),
        ])
        .arg(&img);
    let out = run_with_timeout(c, std::time::Duration::from_secs(120));
    expect(&out, 0);
    if let Err(e) = check_tree(&img) {
        panic!("{e}");
    }
    let log = log.lock().expect("log").clone();
    assert!(log.iter().any(|l| l.starts_with("/token?")), "{log:#?}");
    // Every blob was fetched with the token.
    assert!(
        log.iter()
            .filter(|l| l.contains("/blobs/"))
            .all(|l| l.contains("Bearer s3cret")),
        "{log:#?}"
    );
}
