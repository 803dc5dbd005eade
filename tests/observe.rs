//! Watching the guest: `--trace` lines, `--stats` denials and the `--web` dashboard (its
//! JSON API and its page in a real headless Chromium). Each check ties what kbox reports
//! to something the guest itself printed (its pid, a file name made up for the run), so a
//! report that does not follow the guest fails. `make check-kbox` sets the variables.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Image, KBOX, expect, text};
use serde_json::Value;

/// A name no earlier run used.
fn unique(tag: &str) -> String {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{tag}-{}-{ns}", std::process::id())
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("observe");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir.join(name)
}

fn lines(path: &Path) -> Vec<Value> {
    let body = std::fs::read_to_string(path).expect("the trace file");
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("")
}

#[test]
fn trace_lines_are_json_and_follow_what_the_guest_did() {
    let img = Image::default("trace");
    let name = unique("traced");
    let file = format!("/tmp/{name}");
    let missing = format!("/no/{name}");
    let trace = scratch("trace.jsonl");
    let script = format!("echo $$; echo x > {file}; cat {file}; ls {missing}; exit 3");
    let out = img.run(
        &[&format!("--trace={}", trace.display()), "-S"],
        &["/bin/sh", "-c", &script],
    );
    // ls fails (2), then the shell exits 3: both are the guest's own doing.
    let stdout = expect(&out, 3);
    let pid: u64 = stdout
        .lines()
        .next()
        .and_then(|l| l.parse().ok())
        .expect("the shell's pid");
    assert_eq!(stdout.lines().nth(1), Some("x"), "{stdout}");
    let lines = lines(&trace);
    for l in &lines {
        for key in ["t_ns", "pid", "tid", "host_tid", "nr", "ns"] {
            assert!(l[key].is_u64(), "{key} in {l}");
        }
        assert!(l["args"].is_array() && l["name"].is_string(), "{l}");
        assert_eq!(str_of(l, "tier"), "seccomp", "{l}");
        assert!(
            ["kernel", "host", "emulated", "denied"].contains(&str_of(l, "served")),
            "{l}"
        );
    }
    let with_path = |p: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| {
                l["args"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|v| v == p))
            })
            .collect()
    };
    // The redirection: an open that creates and truncates, by the shell itself, served by
    // the kernel library, returning an FD.
    let creates = with_path(&file);
    let create = creates
        .iter()
        .find(|l| {
            l["args"].as_array().is_some_and(|a| {
                a.iter().any(|v| {
                    v.as_str()
                        .is_some_and(|f| f.contains("O_CREAT") && f.contains("O_TRUNC"))
                })
            })
        })
        .unwrap_or_else(|| panic!("no O_CREAT|O_TRUNC open of {file} in {creates:?}"));
    assert_eq!(create["pid"].as_u64(), Some(pid), "{create}");
    assert_eq!(str_of(create, "served"), "kernel", "{create}");
    assert!(create["ret"].as_i64().is_some_and(|fd| fd >= 0), "{create}");
    // cat opened it too, in another process.
    assert!(
        creates
            .iter()
            .any(|l| l["pid"].as_u64() != Some(pid) && l["ret"].as_i64().is_some_and(|r| r >= 0)),
        "{creates:?}"
    );
    // ls's look at the missing path failed with ENOENT.
    let misses = with_path(&missing);
    assert!(
        misses
            .iter()
            .any(|l| str_of(l, "errno") == "ENOENT" && l["ret"].as_i64() == Some(-2)),
        "{misses:?}"
    );
    img.assert_clean();
}

#[test]
fn trace_filter_keeps_only_the_named_calls() {
    let img = Image::default("trace-filter");
    let trace = scratch("trace-filter.jsonl");
    let out = img.run(
        &[
            &format!("--trace={}", trace.display()),
            "--trace-filter=chdir,getcwd",
            "-S",
        ],
        &[
            "/bin/sh",
            "-c",
            "cd /etc && pwd && cat /etc/hostname >/dev/null",
        ],
    );
    expect(&out, 0);
    let lines = lines(&trace);
    let names: Vec<&str> = lines.iter().map(|l| str_of(l, "name")).collect();
    assert!(names.contains(&"chdir"), "{names:?}");
    assert!(
        names.iter().all(|n| ["chdir", "getcwd"].contains(n)),
        "{names:?}"
    );
    let chdir = lines
        .iter()
        .find(|l| str_of(l, "name") == "chdir")
        .expect("chdir");
    assert_eq!(chdir["args"][0], "/etc", "{chdir}");
    assert_eq!(chdir["ret"], 0, "{chdir}");
}

#[test]
fn a_trace_file_that_cannot_be_made_is_a_clear_error() {
    let img = Image::default("trace-bad");
    let out = img.run(&["--trace=/nonexistent-dir/t.jsonl", "-S"], &["/bin/true"]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot create the trace file /nonexistent-dir/t.jsonl"),
        "{err}"
    );
}

/// Watching changes the filter (denied calls are notified, to be counted): they must still
/// be refused with EPERM, and each counted as denied.
#[test]
fn watched_denials_are_still_refused_and_counted() {
    let img = Image::default("denied-stats");
    let out = img.run(
        &["--stats=json", "-S"],
        &["/opt/kbox-tests/denied", "/tmp", "expect-eperm"],
    );
    let stdout = expect(&out, 0);
    let refused = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(refused >= 15, "{stdout}");
    let stderr = text(&out.stderr);
    let report: Value = stderr
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON report in {stderr}"));
    assert_eq!(report["denied"].as_u64(), Some(refused as u64), "{report}");
    assert!(
        report["errors"]["EPERM"].as_u64() >= Some(refused as u64),
        "{report}"
    );
    let overhead = report["overhead_ns"].as_f64().unwrap_or(f64::MAX);
    assert!(overhead > 0.0 && overhead < 10_000.0, "{report}");
}

/// A running kbox with `--web`, its stdout lines and the dashboard's address.
struct Dashboard {
    child: std::process::Child,
    url: String,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Dashboard {
    fn start(img: &Image, script: &str) -> Dashboard {
        let mut c = Command::new(KBOX);
        c.env("HOME", Path::new(env!("CARGO_TARGET_TMPDIR")).join("home"))
            .args(["--web", "-S", img.arg(), "--", "/bin/sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("kbox");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let mut line = String::new();
        let _ = stderr.read_line(&mut line);
        let url = line
            .trim()
            .strip_prefix("kbox: dashboard at ")
            .unwrap_or_else(|| panic!("no dashboard address: {line:?}"))
            .to_owned();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        // The rest of stderr is read away so kbox never blocks on it.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        });
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Dashboard { child, url, stdout }
    }

    /// (status code, body) of `METHOD path`, HTTP/1.0 so the server closes when done.
    fn request(&self, method: &str, path: &str) -> (u32, String) {
        let host = self.url.trim_start_matches("http://").trim_end_matches('/');
        let mut s = TcpStream::connect(host).expect("connect to the dashboard");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n"
        )
        .expect("request");
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        let code = reply
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = reply
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        (code, body)
    }
}

#[test]
fn web_api_reports_the_guest_processes_and_counts_and_refuses_changes() {
    let img = Image::default("web-api");
    let mut d = Dashboard::start(
        &img,
        "cd /tmp; echo $$; i=0; while [ $i -lt 100 ]; do [ -e /no/such ]; sleep 0.05; i=$((i+1)); done",
    );
    let mut first = String::new();
    d.stdout.read_line(&mut first).expect("the shell's pid");
    let pid: u64 = first.trim().parse().expect("a pid");
    let snapshot = || -> Value {
        let (code, body) = d.request("GET", "/api/stats");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
    };
    let a = snapshot();
    std::thread::sleep(Duration::from_millis(700));
    let b = snapshot();
    assert_eq!(b["running"], true, "{b}");
    assert!(b["calls"].as_u64() > a["calls"].as_u64(), "{a}\n{b}");
    assert!(b["errors"]["ENOENT"].as_u64() > Some(0), "{b}");
    let procs = b["processes"].as_array().expect("processes");
    let sh = procs
        .iter()
        .find(|p| p["pid"].as_u64() == Some(pid))
        .unwrap_or_else(|| panic!("pid {pid} not in {procs:?}"));
    assert_eq!(
        (sh["comm"].as_str(), sh["cwd"].as_str()),
        (Some("sh"), Some("/tmp")),
        "{sh}"
    );
    assert!(sh["fds"].as_u64() >= Some(3), "{sh}");
    assert!(
        b["kernel_memory"]["total_bytes"].as_u64() > Some(1 << 20),
        "{b}"
    );
    let buckets: u64 = b["latency"]
        .as_array()
        .expect("latency")
        .iter()
        .filter_map(|x| x["count"].as_u64())
        .sum();
    assert_eq!(Some(buckets), b["calls"].as_u64(), "{b}");
    // Nothing on the page can change the guest.
    assert_eq!(d.request("POST", "/api/stats").0, 405);
    assert_eq!(d.request("DELETE", "/").0, 405);
    assert_eq!(d.request("GET", "/nothing-here").0, 404);
    let (code, page) = d.request("GET", "/");
    assert!(code == 200 && page.contains("id=\"syscalls\""), "{code}");
    let status = d.child.wait().expect("kbox");
    assert_eq!(status.code(), Some(0));
    img.assert_clean();
}

/// The page in Debian's Chromium, headless: it loads without console errors, fills the
/// syscall table and updates while the guest runs; the screenshot is not blank
/// (tests/web/check_dashboard.py drives the browser over the DevTools protocol).
#[test]
fn web_page_renders_and_updates_in_a_real_browser() {
    let img = Image::default("web-page");
    let mut d = Dashboard::start(
        &img,
        "cd /tmp; i=0; while [ $i -lt 300 ]; do ls / >/dev/null; [ -e /no/such ]; sleep 0.05; i=$((i+1)); done",
    );
    let shot = scratch("dashboard.png");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web/check_dashboard.py");
    let started = Instant::now();
    let out = Command::new("python3")
        .arg(&script)
        .arg(&d.url)
        .arg(&shot)
        .output()
        .expect("python3");
    // kbox passes SIGTERM on to the guest and ends with it.
    let _ = Command::new("kill")
        .args(["-TERM", &d.child.id().to_string()])
        .status();
    let status = d.child.wait().expect("kbox");
    assert!(
        out.status.success(),
        "dashboard check failed after {:?}:\n{}{}",
        started.elapsed(),
        text(&out.stdout),
        text(&out.stderr)
    );
    println!("{}", text(&out.stdout).trim());
    assert_eq!(status.code(), Some(128 + 15), "kbox after SIGTERM");
    let _ = d.stdout.read_to_end(&mut Vec::new());
}
