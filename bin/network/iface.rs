//! Configures the kernel library's network interface the way `ip addr`/`ip route` would,
//! with the classic ioctls (the kernel library has no netlink users to spare a config
//! option for, and these need none).
use std::net::Ipv4Addr;

use kbox_core::sysno::generic as g;
use kbox_lkl::{Errno, Task};

const AF_INET: usize = 2;
const SOCK_DGRAM: usize = 2;
const SIOCADDRT: usize = 0x890b;
const SIOCGIFFLAGS: usize = 0x8913;
const SIOCSIFFLAGS: usize = 0x8914;
const SIOCSIFADDR: usize = 0x8916;
const SIOCSIFNETMASK: usize = 0x891c;
const SIOCSIFMTU: usize = 0x8922;
const IFF_UP: u16 = 1;
const RTF_UP: u16 = 1;
const RTF_GATEWAY: u16 = 2;
/// `struct ifreq`: a 16-byte name, then a 24-byte union (address, flags or MTU).
const IFREQ: usize = 40;
/// `struct rtentry` of a 64-bit kernel (the kernel library is 64-bit on every arch).
const RTENTRY: usize = 120;

/// An interface's IPv4 set-up.
pub struct Ipv4Config {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub mtu: u16,
}

/// The step that failed, for the one-line error.
#[derive(Debug)]
pub struct IfaceError {
    pub what: &'static str,
    pub errno: Errno,
}

/// `struct sockaddr_in` for `addr:port`.
pub fn sockaddr_in_port(addr: Ipv4Addr, port: u16) -> [u8; 16] {
    const FAMILY: u16 = 2;
    let mut sa = [0u8; 16];
    sa[..2].copy_from_slice(&FAMILY.to_ne_bytes());
    sa[2..4].copy_from_slice(&port.to_be_bytes());
    sa[4..8].copy_from_slice(&addr.octets());
    sa
}

fn sockaddr_in(addr: Ipv4Addr) -> [u8; 16] {
    sockaddr_in_port(addr, 0)
}

fn netmask(prefix: u8) -> Ipv4Addr {
    let bits = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    Ipv4Addr::from(bits)
}

fn ifreq(name: &str) -> [u8; IFREQ] {
    let mut ifr = [0u8; IFREQ];
    let n = name.len().min(15);
    ifr[..n].copy_from_slice(&name.as_bytes()[..n]);
    ifr
}

/// The default route's `struct rtentry`: destination and mask 0.0.0.0, via `gateway`.
fn default_route(gateway: Ipv4Addr) -> [u8; RTENTRY] {
    let mut rt = [0u8; RTENTRY];
    rt[8..24].copy_from_slice(&sockaddr_in(Ipv4Addr::UNSPECIFIED));
    rt[24..40].copy_from_slice(&sockaddr_in(gateway));
    rt[40..56].copy_from_slice(&sockaddr_in(Ipv4Addr::UNSPECIFIED));
    rt[56..58].copy_from_slice(&(RTF_UP | RTF_GATEWAY).to_ne_bytes());
    rt
}

/// Runs `steps` with an ioctl caller on a configuration socket of `task`'s, closed after.
fn with_socket(
    task: &Task,
    steps: impl FnOnce(
        &dyn Fn(&'static str, usize, &mut [u8]) -> Result<(), IfaceError>,
    ) -> Result<(), IfaceError>,
) -> Result<(), IfaceError> {
    let socket = task
        .syscall(g::SOCKET, [AF_INET, SOCK_DGRAM, 0, 0, 0, 0])
        .map_err(|errno| IfaceError {
            what: "open a configuration socket",
            errno,
        })?;
    let ioctl = |what: &'static str, request: usize, arg: &mut [u8]| {
        task.syscall(
            g::IOCTL,
            [socket, request, arg.as_mut_ptr() as usize, 0, 0, 0],
        )
        .map(drop)
        .map_err(|errno| IfaceError { what, errno })
    };
    let result = steps(&ioctl);
    let _ = task.syscall(g::CLOSE, [socket, 0, 0, 0, 0, 0]);
    result
}

/// Gives interface `name` its address, mask and MTU, brings it up and routes everything
/// else through the gateway. Runs as the kernel library's root (before the guest's
/// identity is taken).
pub fn configure(task: &Task, name: &str, config: &Ipv4Config) -> Result<(), IfaceError> {
    with_socket(task, |ioctl| {
        let mut ifr = ifreq(name);
        ifr[16..32].copy_from_slice(&sockaddr_in(config.address));
        ioctl("set the interface's address", SIOCSIFADDR, &mut ifr)?;
        let mut ifr = ifreq(name);
        ifr[16..32].copy_from_slice(&sockaddr_in(netmask(config.prefix)));
        ioctl("set the interface's netmask", SIOCSIFNETMASK, &mut ifr)?;
        let mut ifr = ifreq(name);
        ifr[16..20].copy_from_slice(&i32::from(config.mtu).to_ne_bytes());
        ioctl("set the interface's MTU", SIOCSIFMTU, &mut ifr)?;
        let mut ifr = ifreq(name);
        ioctl("read the interface's flags", SIOCGIFFLAGS, &mut ifr)?;
        let flags = u16::from_ne_bytes([ifr[16], ifr[17]]) | IFF_UP;
        ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
        ioctl("bring the interface up", SIOCSIFFLAGS, &mut ifr)?;
        let mut rt = default_route(config.gateway);
        ioctl("add the default route", SIOCADDRT, &mut rt)
    })
}

/// Adds `address`/32 to interface `label` (an alias such as `eth0:1`).
pub fn add_alias(task: &Task, label: &str, address: Ipv4Addr) -> Result<(), IfaceError> {
    with_socket(task, |ioctl| {
        let mut ifr = ifreq(label);
        ifr[16..32].copy_from_slice(&sockaddr_in(address));
        ioctl("add the DNS relay's address", SIOCSIFADDR, &mut ifr)?;
        let mut ifr = ifreq(label);
        ifr[16..32].copy_from_slice(&sockaddr_in(netmask(32)));
        ioctl("set the DNS relay's netmask", SIOCSIFNETMASK, &mut ifr)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_become_masks() {
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(32), Ipv4Addr::BROADCAST);
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(netmask(9), Ipv4Addr::new(255, 128, 0, 0));
    }

    #[test]
    fn a_default_route_names_its_gateway_in_network_order() {
        let rt = default_route(Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(&rt[24..26], &2u16.to_ne_bytes());
        assert_eq!(&rt[28..32], &[10, 0, 2, 2]);
        assert_eq!(u16::from_ne_bytes([rt[56], rt[57]]), RTF_UP | RTF_GATEWAY);
        assert!(rt[8..24].iter().all(|&b| b == 2 || b == 0));
    }
}
