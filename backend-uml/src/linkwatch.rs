//! Link state of the host interfaces an instance owns, from rtnetlink
//! (RTM_NEWLINK multicasts), so the supervisor learns within a moment when
//! one comes back up after a flap.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `RTMGRP_LINK`: the multicast group of link changes.
const RTMGRP_LINK: u32 = 1;
/// Size of `struct nlmsghdr` and of `struct ifinfomsg`.
const NLMSG_HDR: usize = 16;
const IFINFO_LEN: usize = 16;

/// A netlink socket subscribed to link changes of the network namespace
/// the calling thread was in when it was opened (it stays bound to that
/// namespace whatever the thread does later).
pub struct LinkWatch {
    fd: OwnedFd,
}

/// One link change: the interface index and whether it is running (up
/// with its carrier).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkEvent {
    /// The interface's index in the watched namespace.
    pub ifindex: i32,
    /// Whether the interface is up with its carrier.
    pub running: bool,
}

impl LinkWatch {
    /// Opens a watch on the network namespace of the calling thread.
    pub fn open() -> io::Result<LinkWatch> {
        // SAFETY: socket(2) takes integers only.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: socket(2) just returned `fd`; nobody else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; all-zero is valid.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        sa.nl_groups = RTMGRP_LINK;
        // SAFETY: `sa` is a valid sockaddr_nl of the length given.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(LinkWatch { fd })
    }

    /// Blocks until the next batch of link messages and returns the link
    /// states they carry. `ENOBUFS` means messages were lost: the caller
    /// must assume any interface may have flapped.
    pub fn next(&self) -> io::Result<Vec<LinkEvent>> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(e);
            }
            return Ok(parse(&buf[..n as usize]));
        }
    }
}

/// The RTM_NEWLINK messages of one datagram, as link events.
pub fn parse(mut b: &[u8]) -> Vec<LinkEvent> {
    let mut out = Vec::new();
    while b.len() >= NLMSG_HDR {
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let kind = u16::from_ne_bytes([b[4], b[5]]);
        if len < NLMSG_HDR || len > b.len() {
            break;
        }
        if kind == libc::RTM_NEWLINK && len >= NLMSG_HDR + IFINFO_LEN {
            let m = &b[NLMSG_HDR..];
            // ifinfomsg: family u8, pad u8, type u16, index i32, flags u32, change u32.
            let ifindex = i32::from_ne_bytes([m[4], m[5], m[6], m[7]]);
            let flags = u32::from_ne_bytes([m[8], m[9], m[10], m[11]]);
            out.push(LinkEvent {
                ifindex,
                running: flags & (libc::IFF_UP | libc::IFF_RUNNING) as u32
                    == (libc::IFF_UP | libc::IFF_RUNNING) as u32,
            });
        }
        // Messages are 4-byte aligned.
        let step = (len + 3) & !3;
        if step >= b.len() {
            break;
        }
        b = &b[step..];
    }
    out
}

/// The index of interface `name` in the calling thread's namespace.
pub fn ifindex(name: &str) -> io::Result<i32> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"))?;
    // SAFETY: `c` is a valid NUL-terminated string alive for the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(i as i32)
    }
}

/// Whether interface `name` (in the calling thread's namespace) is up
/// with its carrier.
pub fn is_running(name: &str) -> io::Result<bool> {
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: socket(2) takes integers only.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket(2) just returned `fd`; nobody else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: SIOCGIFFLAGS reads the name from and writes the flags into
    // the `ifreq` we pass, which lives for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the union's flags member.
    let flags = i32::from(unsafe { req.ifr_ifru.ifru_flags });
    let want = libc::IFF_UP | libc::IFF_RUNNING;
    Ok(flags & want == want)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn newlink(index: i32, flags: u32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDR + IFINFO_LEN + 8) as u32).to_ne_bytes());
        m.extend_from_slice(&libc::RTM_NEWLINK.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[0, 0, 1, 0]);
        m.extend_from_slice(&index.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&[0; 4]);
        m.extend_from_slice(&[8, 0, 3, 0, b'e', b't', b'h', 0]); // IFLA_IFNAME
        m
    }

    #[test]
    fn parses_running_and_down_links() {
        let up = (libc::IFF_UP | libc::IFF_RUNNING | libc::IFF_LOWER_UP) as u32;
        let mut b = newlink(7, up);
        b.extend(newlink(9, libc::IFF_UP as u32)); // up, no carrier
        let ev = parse(&b);
        assert_eq!(
            ev,
            vec![
                LinkEvent {
                    ifindex: 7,
                    running: true
                },
                LinkEvent {
                    ifindex: 9,
                    running: false
                }
            ]
        );
        assert!(parse(&b[..10]).is_empty());
    }

    #[test]
    fn loopback_is_running_and_a_missing_interface_is_an_error() {
        assert!(is_running("lo").unwrap_or(false));
        assert!(is_running("nosuchif0").is_err());
    }
}
