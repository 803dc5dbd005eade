//! passt, the user-mode network stack `--net=user` hands the guest's frames to: a helper
//! process found on PATH, given one end of a socket pair (its `--fd`), speaking qemu's
//! stream protocol. It turns the guest's TCP, UDP and ICMP into the host's own sockets,
//! answers ARP and forwards DNS, and publishes ports (`-t`/`-u`) on the host.
//!
//! kbox waits for passt's pid file, which passt writes once its set-up (port binding
//! included) is done; a passt that exits first is reported with its last words.
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::cli::{Proto, Publish};

/// How long passt may take to be ready (it takes about 10 ms).
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The addresses passt gives the guest's network.
pub struct Plan<'a> {
    pub guest: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub mtu: u16,
    pub publish: &'a [Publish],
    pub verbose: bool,
}

#[derive(Debug)]
pub enum PasstError {
    NotFound,
    Spawn(std::io::Error),
    TempDir(std::io::Error),
    /// passt exited during its set-up; its last meaningful message.
    Exited(String),
    NotReady,
}

impl fmt::Display for PasstError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound => f.write_str("--net=user needs passt, which is not on PATH"),
            Self::Spawn(e) => write!(f, "cannot start passt: {e}"),
            Self::TempDir(e) => write!(f, "cannot create passt's pid file: {e}"),
            Self::Exited(why) if why.is_empty() => f.write_str("passt exited at start"),
            Self::Exited(why) => write!(f, "passt exited at start: {why}"),
            Self::NotReady => write!(
                f,
                "passt was not ready within {} s",
                READY_TIMEOUT.as_secs()
            ),
        }
    }
}

/// A running passt; dropping it ends it.
pub struct Passt {
    child: Child,
    pid_dir: PathBuf,
    said: Arc<Mutex<Vec<String>>>,
}

/// The passt kbox runs: the first on PATH.
pub fn find() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("passt"))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

fn arguments(plan: &Plan<'_>, pid_file: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--foreground".into(),
        "--quiet".into(),
        // The guest network is IPv4 (guest IPv6 reaches its own loopback only).
        "--ipv4-only".into(),
        "--fd".into(),
        "0".into(),
        "--pid".into(),
        pid_file.into(),
        "--address".into(),
        plan.guest.to_string().into(),
        "--netmask".into(),
        plan.prefix.to_string().into(),
        "--gateway".into(),
        plan.gateway.to_string().into(),
        "--mtu".into(),
        plan.mtu.to_string().into(),
        // kbox relays DNS itself (dns_relay.rs).
        "--dns".into(),
        "none".into(),
    ];
    for p in plan.publish {
        args.push(match p.proto {
            Proto::Tcp => "--tcp-ports".into(),
            Proto::Udp => "--udp-ports".into(),
        });
        // Bound on the host's loopback only: publishing to other machines is a choice
        // kbox does not make for the user.
        args.push(format!("127.0.0.1/{}:{}", p.host_port, p.guest_port).into());
    }
    args
}

/// Lines passt prints that say nothing about the network (it cannot reach syslog from
/// its sandbox; as root it drops to nobody).
fn noise(line: &str) -> bool {
    line.contains("to syslog") || line.starts_with("Don't run as root")
}

impl Passt {
    /// Starts passt on `peer` (passt's end of the socket pair).
    pub fn start(plan: &Plan<'_>, peer: UnixStream) -> Result<Self, PasstError> {
        let program = find().ok_or(PasstError::NotFound)?;
        // passt writes its pid file after dropping root (to nobody): a directory anyone
        // may pass through, holding a file anyone may write, made for this run only.
        let pid_dir = std::env::temp_dir().join(format!(
            "kbox-passt-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        ));
        fs::DirBuilder::new()
            .mode(0o711)
            .create(&pid_dir)
            .map_err(PasstError::TempDir)?;
        let pid_file = pid_dir.join("pid");
        let made = fs::File::create_new(&pid_file)
            .and_then(|_| fs::set_permissions(&pid_file, fs::Permissions::from_mode(0o666)))
            .and_then(|()| fs::set_permissions(&pid_dir, fs::Permissions::from_mode(0o711)));
        if let Err(e) = made {
            let _ = fs::remove_dir_all(&pid_dir);
            return Err(PasstError::TempDir(e));
        }
        let spawned = Command::new(program)
            .args(arguments(plan, &pid_file))
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(peer)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let _ = fs::remove_dir_all(&pid_dir);
                return Err(PasstError::Spawn(e));
            }
        };
        let said = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let said = Arc::clone(&said);
            let verbose = plan.verbose;
            // Keeps passt's stderr drained for as long as it runs.
            let _ = std::thread::Builder::new()
                .name("kbox-passt-log".into())
                .spawn(move || {
                    for line in BufReader::new(stderr).lines() {
                        let Ok(line) = line else { break };
                        if noise(&line) {
                            continue;
                        }
                        if verbose {
                            eprintln!("kbox: passt: {line}");
                        }
                        let mut said = said.lock().unwrap_or_else(PoisonError::into_inner);
                        if said.len() < 16 {
                            said.push(line);
                        }
                    }
                });
        }
        Ok(Self {
            child,
            pid_dir,
            said,
        })
    }

    /// Waits until passt has finished its set-up.
    pub fn wait_ready(&mut self) -> Result<(), PasstError> {
        let pid_file = self.pid_dir.join("pid");
        let started = Instant::now();
        let result = loop {
            if fs::metadata(&pid_file).is_ok_and(|m| m.len() > 0) {
                break Ok(());
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                // Let the log thread read passt's last line.
                std::thread::sleep(Duration::from_millis(20));
                let said = self.said.lock().unwrap_or_else(PoisonError::into_inner);
                break Err(PasstError::Exited(said.last().cloned().unwrap_or_default()));
            }
            if started.elapsed() > READY_TIMEOUT {
                break Err(PasstError::NotReady);
            }
            std::thread::sleep(Duration::from_micros(500));
        };
        let _ = fs::remove_dir_all(&self.pid_dir);
        result
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.pid_dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_ports_bind_the_hosts_loopback() {
        let publish = [
            Publish {
                host_port: 8080,
                guest_port: 80,
                proto: Proto::Tcp,
            },
            Publish {
                host_port: 5353,
                guest_port: 53,
                proto: Proto::Udp,
            },
        ];
        let plan = Plan {
            guest: Ipv4Addr::new(10, 0, 2, 15),
            prefix: 24,
            gateway: Ipv4Addr::new(10, 0, 2, 2),
            mtu: 65520,
            publish: &publish,
            verbose: false,
        };
        let args: Vec<String> = arguments(&plan, Path::new("/x/pid"))
            .into_iter()
            .map(|a| a.into_string().expect("UTF-8"))
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("--fd 0 --pid /x/pid"), "{joined}");
        assert!(joined.contains("--address 10.0.2.15 --netmask 24 --gateway 10.0.2.2"));
        assert!(joined.contains("--dns none"));
        assert!(joined.ends_with("--tcp-ports 127.0.0.1/8080:80 --udp-ports 127.0.0.1/5353:53"));
    }
}
