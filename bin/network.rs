//! The guest's network (`--net`).
//!
//! - `none`: the kernel library's loopback only (nothing to set up here).
//! - `user`: the kernel library gets a virtio network interface, eth0 at 10.0.2.15/24,
//!   whose frames passt turns into the host's own sockets. The gateway 10.0.2.2 is the
//!   host's loopback, 10.0.2.3 relays DNS to the host's resolver or `--dns`
//!   (dns_relay.rs), and
//!   `-p` ports are published on the host's 127.0.0.1. These are slirp's addresses, the
//!   ones users of qemu, podman and slirp4netns know.
//! - `host`: the guest's internet sockets are host sockets (dispatch does that); here
//!   only its /etc/resolv.conf is set, to the host's.
//!
//! The guest's /etc/resolv.conf is kbox's file bind-mounted over the image's (the
//! image does not change, unless it has none and is writable: then an empty one is
//! created to mount over).
mod dns_relay;
mod iface;
mod passt;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::net::UnixStream;

use kbox_lkl::{DiskId, Kernel, Overlaid, Task};

use crate::cli::{Config, NetMode, Proto};
pub use iface::IfaceError;
pub use passt::PasstError;

pub const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
pub const PREFIX: u8 = 24;
/// The gateway, which is also how the guest reaches the host's loopback.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub const DNS_FORWARDER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
/// passt carries frames of up to 64 KiB; a large MTU lets TCP fill them.
pub const MTU: u16 = 65520;
/// A locally administered address in qemu's range, as slirp users expect.
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const INTERFACE: &str = "eth0";
/// Send buffer asked for on each end of the socket pair to passt.
const SOCKET_BUFFER: usize = 4 << 20;

#[derive(Debug)]
pub enum NetError {
    Passt(PasstError),
    Socket(std::io::Error),
    Device(kbox_lkl::NetError),
    Interface(IfaceError),
    DnsRelay(kbox_lkl::Errno),
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Passt(e) => e.fmt(f),
            Self::Socket(e) => write!(f, "cannot create the socket pair for passt: {e}"),
            Self::Device(e) => e.fmt(f),
            Self::Interface(e) => write!(f, "cannot {} of {INTERFACE}: {}", e.what, e.errno),
            Self::DnsRelay(errno) => write!(f, "cannot start the DNS relay: {errno}"),
        }
    }
}

impl NetError {
    pub const fn hint(&self) -> Option<&'static str> {
        match self {
            Self::Passt(PasstError::NotFound) => {
                Some("install passt (Debian and Ubuntu: apt-get install passt), or use --net=host")
            }
            Self::Passt(PasstError::Exited(_)) => {
                Some("a published port may be in use on the host; -v shows passt's messages")
            }
            _ => None,
        }
    }
}

/// The guest's network while kbox runs. Drop it before the kernel halts: that stops the
/// device's receive thread and ends passt.
pub struct Network {
    // Field order is drop order: the relay and the device's thread stop before passt ends.
    relay: Option<dns_relay::DnsRelay>,
    device: Option<kbox_lkl::Net>,
    passt: Option<passt::Passt>,
}

/// Before the kernel boots: for `--net=user`, starts passt and gives the kernel library
/// its network device (devices are fixed at boot).
pub fn attach(config: &Config) -> Result<Network, NetError> {
    if config.net != NetMode::User {
        return Ok(Network {
            relay: None,
            device: None,
            passt: None,
        });
    }
    let (ours, theirs) = UnixStream::pair().map_err(NetError::Socket)?;
    // A unix stream's capacity is its sender's send buffer. passt drops frames it cannot
    // write at once (TCP then waits for a retransmission), so give it room: the most
    // the host allows, beyond that limit where kbox may.
    for (end, size) in [(&theirs, SOCKET_BUFFER), (&ours, SOCKET_BUFFER)] {
        use rustix::net::sockopt;
        if sockopt::set_socket_send_buffer_size_force(end, size).is_err() {
            let _ = sockopt::set_socket_send_buffer_size(end, size);
        }
    }
    let plan = passt::Plan {
        guest: GUEST,
        prefix: PREFIX,
        gateway: GATEWAY,
        mtu: MTU,
        publish: &config.publish,
        verbose: config.verbose,
    };
    let passt = passt::Passt::start(&plan, theirs).map_err(NetError::Passt)?;
    let device = kbox_lkl::add_net(
        ours,
        kbox_lkl::NetConfig {
            mac: GUEST_MAC,
            mtu: MTU,
        },
    )
    .map_err(NetError::Device)?;
    Ok(Network {
        relay: None,
        device: Some(device),
        passt: Some(passt),
    })
}

impl Network {
    /// After boot, before the guest starts: configures the interface (as the kernel
    /// library's root), the guest's resolv.conf, and waits for passt to be ready.
    pub fn bring_up(
        &mut self,
        kernel: &Kernel,
        disk: DiskId,
        root: &Task,
        config: &Config,
        read_only: bool,
    ) -> Result<(), NetError> {
        if self.device.is_some() {
            iface::configure(
                root,
                INTERFACE,
                &iface::Ipv4Config {
                    address: GUEST,
                    prefix: PREFIX,
                    gateway: GATEWAY,
                    mtu: MTU,
                },
            )
            .map_err(NetError::Interface)?;
            iface::add_alias(root, "eth0:1", DNS_FORWARDER).map_err(NetError::Interface)?;
            match upstream_dns(config) {
                Some(upstream) => {
                    self.relay = Some(
                        dns_relay::start(root, DNS_FORWARDER, (upstream, 53).into())
                            .map_err(NetError::DnsRelay)?,
                    );
                }
                None => eprintln!(
                    "kbox: warning: the host's /etc/resolv.conf names no resolver and --dns is \
                     not given: the guest cannot look names up"
                ),
            }
        }
        if let Some(content) = resolv_conf(config) {
            match kernel.overlay_file(disk, "/etc/resolv.conf", content.as_bytes(), !read_only) {
                Ok(Overlaid::OverImageFile) => {}
                Ok(Overlaid::CreatedInImage) => {
                    eprintln!(
                        "kbox: the image had no /etc/resolv.conf: created an empty one to show kbox's over"
                    );
                }
                Err(e) => {
                    eprintln!("kbox: warning: the guest's DNS is not set up ({e})");
                }
            }
        }
        if let Some(passt) = &mut self.passt {
            passt.wait_ready().map_err(NetError::Passt)?;
        }
        Ok(())
    }
}

/// What the guest's /etc/resolv.conf says, for the modes that reach a DNS server.
fn resolv_conf(config: &Config) -> Option<String> {
    match config.net {
        NetMode::None => None,
        NetMode::User => Some(format!("nameserver {DNS_FORWARDER}\n")),
        NetMode::Host => match config.dns {
            Some(dns) => Some(format!("nameserver {dns}\n")),
            // The guest's sockets are the host's, so the host's resolvers (loopback ones
            // included) answer it.
            None => std::fs::read_to_string("/etc/resolv.conf").ok(),
        },
    }
}

/// The resolver the guest's lookups go to: `--dns`, else the host's.
fn upstream_dns(config: &Config) -> Option<IpAddr> {
    config.dns.or_else(dns_relay::host_resolver)
}

/// The `-v` line describing the network.
pub fn summary(config: &Config) -> String {
    match config.net {
        NetMode::None => "none (internet sockets reach the kernel library's loopback only)".into(),
        NetMode::Host => {
            "host (internet sockets are the host's, on its interfaces and addresses)".into()
        }
        NetMode::User => {
            let upstream = upstream_dns(config)
                .map_or_else(|| "nowhere (no resolver)".to_string(), |d| d.to_string());
            // Which passt matters: some have bugs kbox cannot work around (docs/network.md).
            let passt = passt::find()
                .map_or_else(|| "not on PATH".to_string(), |p| p.display().to_string());
            let mut line = format!(
                "user (passt at {passt}): {INTERFACE} {GUEST}/{PREFIX} mtu {MTU}, gateway and \
                 host loopback {GATEWAY}, DNS {DNS_FORWARDER} -> {upstream}"
            );
            for p in &config.publish {
                let proto = match p.proto {
                    Proto::Tcp => "tcp",
                    Proto::Udp => "udp",
                };
                line.push_str(&format!(
                    "; 127.0.0.1:{} -> {}:{} ({proto})",
                    p.host_port, GUEST, p.guest_port
                ));
            }
            line
        }
    }
}
