//! The interface and routing ioctls (SIOCGIFCONF, SIOCGIFADDR, SIOCSIFMTU, SIOCADDRT...):
//! answered by the kernel library, whose interfaces are the guest's, whichever socket the
//! guest asks on. On the host they would describe (and, with the capability, change) the
//! host's interfaces. The filter notifies only this block of ioctl numbers
//! ([`FIRST`]..[`END`]); the per-socket ones below it (owner, timestamps) stay the host's.
//! With `--net=host`, a host socket's questions are the host's to answer.

use kbox_core::sysno::generic as g;
use kbox_lkl::Errno;

use super::linux::{AF_INET, SOCK_DGRAM};
use super::{Engine, Guest, Reply, fd_arg, fdv, lkl, ptr};

/// The first notified ioctl number (SIOCADDRT) and the end of the block.
pub const FIRST: u32 = 0x890b;
pub const END: u32 = 0x8a00;

const SIOCADDRT: u64 = 0x890b;
const SIOCDELRT: u64 = 0x890c;
const SIOCGIFCONF: u64 = 0x8912;
/// `struct ifreq`.
const IFREQ: usize = 40;
/// `struct ifconf` of a 64-bit process: the length, padding, the buffer's address.
const IFCONF: usize = 16;
/// `struct rtentry` of a 64-bit process, and where its `rt_dev` pointer sits.
const RTENTRY: usize = 120;
const RT_DEV: usize = 88;
const IFNAMSIZ: usize = 16;
/// Most bytes of interface records SIOCGIFCONF copies (a thousand interfaces).
const IFCONF_MAX: usize = 40 << 10;

/// Requests whose argument is one `struct ifreq`, in and out, with no pointer inside.
fn plain_ifreq(request: u64) -> bool {
    matches!(
        request,
        0x8910 // SIOCGIFNAME
            | 0x8913..=0x891e // flags, addresses, masks, metric
            | 0x8921..=0x8924 // MTU, name, hardware address (set)
            | 0x8927 // SIOCGIFHWADDR
            | 0x8931..=0x8937 // multicast, index, pflags, address delete, broadcast
            | 0x8942 | 0x8943 // txqueuelen
            | 0x8970 | 0x8971 // map
    )
}

impl Engine {
    pub(super) fn interface_ioctl(&mut self, guest: &dyn Guest, pid: u32, args: [u64; 6]) -> Reply {
        let fd = fd_arg(args[0]);
        let request = args[1] & 0xffff_ffff;
        let served_socket = self.socket_of_fd(pid, fd);
        if served_socket.is_none() {
            match self.served(pid, fd) {
                // A file of the kernel library's: not a socket.
                Some(_) => return Reply::Fail(Errno::ENOTTY),
                // A host object. In host mode a host socket's interfaces are the host's.
                None if self.settings.host_network => return Reply::Continue,
                // Otherwise the guest's interfaces are the kernel library's.
                None => {}
            }
        }
        let Some(p) = self.procs.get(pid) else {
            return Reply::Fail(Errno::ESRCH);
        };
        let task = &p.task;
        // The guest's own socket when the kernel library serves it (its family decides
        // what some requests mean), else a scratch IPv4 socket of the caller's task.
        let (kfd, scratch) = match served_socket {
            Some(kfd) => (kfd, false),
            None => match lkl(task, g::SOCKET, [AF_INET, SOCK_DGRAM, 0, 0, 0, 0]) {
                Ok(k) => (i32::try_from(k).unwrap_or(-1), true),
                Err(e) => return Reply::Fail(e),
            },
        };
        let result = match request {
            SIOCGIFCONF => ifconf(guest, task, kfd, args[2]),
            SIOCADDRT | SIOCDELRT => route(guest, task, kfd, request, args[2]),
            r if plain_ifreq(r) => {
                let mut ifr = [0u8; IFREQ];
                guest
                    .read(args[2], &mut ifr)
                    .and_then(|()| {
                        lkl(
                            task,
                            g::IOCTL,
                            [fdv(kfd), r, ptr(ifr.as_mut_ptr()), 0, 0, 0],
                        )
                    })
                    .and_then(|v| guest.write(args[2], &ifr).map(|()| v))
            }
            // ethtool, MII, bridges, bonding, device-private: pointers kbox does not
            // translate, for drivers the kernel library does not have.
            _ => Err(Errno::EOPNOTSUPP),
        };
        if scratch {
            let _ = lkl(task, g::CLOSE, [fdv(kfd), 0, 0, 0, 0, 0]);
        }
        match result {
            Ok(v) => Reply::Value(v),
            Err(e) => Reply::Fail(e),
        }
    }

    fn socket_of_fd(&self, pid: u32, fd: i32) -> Option<i32> {
        let p = self.procs.get(pid)?;
        p.sockets.contains_key(&fd).then_some(fd)
    }
}

/// SIOCGIFCONF: the records go to the guest's buffer, the length back into its ifconf.
fn ifconf(guest: &dyn Guest, task: &kbox_lkl::Task, kfd: i32, arg: u64) -> Result<i64, Errno> {
    let mut conf = [0u8; IFCONF];
    guest.read(arg, &mut conf)?;
    let len = i32::from_ne_bytes([conf[0], conf[1], conf[2], conf[3]]);
    let buf = u64::from_ne_bytes([
        conf[8], conf[9], conf[10], conf[11], conf[12], conf[13], conf[14], conf[15],
    ]);
    let len = usize::try_from(len)
        .map_err(|_| Errno::EINVAL)?
        .min(IFCONF_MAX);
    let mut records = vec![0u8; len];
    let mut ours = [0u8; IFCONF];
    ours[..4].copy_from_slice(&i32::try_from(len).unwrap_or(0).to_ne_bytes());
    // A null buffer asks only for the length needed.
    let local = if buf == 0 {
        0
    } else {
        ptr(records.as_mut_ptr())
    };
    ours[8..].copy_from_slice(&local.to_ne_bytes());
    let v = lkl(
        task,
        g::IOCTL,
        [fdv(kfd), SIOCGIFCONF, ptr(ours.as_mut_ptr()), 0, 0, 0],
    )?;
    let got = i32::from_ne_bytes([ours[0], ours[1], ours[2], ours[3]]);
    if buf != 0 {
        let n = usize::try_from(got).unwrap_or(0).min(len);
        guest.write(buf, &records[..n])?;
    }
    conf[..4].copy_from_slice(&got.to_ne_bytes());
    guest.write(arg, &conf[..4])?;
    Ok(v)
}

/// SIOCADDRT/SIOCDELRT: the route, with its device name (a pointer) copied in.
fn route(
    guest: &dyn Guest,
    task: &kbox_lkl::Task,
    kfd: i32,
    request: u64,
    arg: u64,
) -> Result<i64, Errno> {
    let mut rt = [0u8; RTENTRY];
    guest.read(arg, &mut rt)?;
    let dev_ptr = u64::from_ne_bytes(
        rt[RT_DEV..RT_DEV + 8]
            .try_into()
            .map_err(|_| Errno::EINVAL)?,
    );
    // The device name, read as the guest's other strings are (the copy outlives the call).
    let dev = if dev_ptr == 0 {
        None
    } else {
        let name = guest.read_path(dev_ptr)?;
        if name.as_bytes().len() >= IFNAMSIZ {
            return Err(Errno::ENODEV);
        }
        Some(name)
    };
    if let Some(name) = &dev {
        rt[RT_DEV..RT_DEV + 8].copy_from_slice(&ptr(name.as_ptr()).to_ne_bytes());
    }
    lkl(
        task,
        g::IOCTL,
        [fdv(kfd), request, ptr(rt.as_mut_ptr()), 0, 0, 0],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_requests_are_the_ifreq_ones() {
        for r in [0x8913, 0x8915, 0x8921, 0x8922, 0x8927, 0x8933, 0x8942] {
            assert!(plain_ifreq(r), "{r:#x}");
        }
        for r in [SIOCGIFCONF, SIOCADDRT, 0x8946, 0x89f0] {
            assert!(!plain_ifreq(r), "{r:#x}");
        }
    }
}
