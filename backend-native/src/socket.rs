//! What the native backend does to a single socket: open it as TCP or
//! MPTCP, switch an unconnected socket between the two in place, and
//! report what MPTCP really did on it.

use crate::sys;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::raw::c_int;

pub const IPPROTO_MPTCP: c_int = 262;
pub const SOL_MPTCP: c_int = 284;
const MPTCP_INFO: c_int = 1;
const MPTCP_SUBFLOW_ADDRS: c_int = 3;
const MPTCP_INFO_FLAG_FALLBACK: u32 = 1;

/// The protocol a stream socket speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Mptcp,
}

impl Proto {
    pub fn number(self) -> c_int {
        match self {
            Proto::Tcp => libc::IPPROTO_TCP,
            Proto::Mptcp => IPPROTO_MPTCP,
        }
    }
}

/// Errors from `socket(..., IPPROTO_MPTCP)` that mean "no MPTCP here"
/// (disabled by `net.mptcp.enabled=0`, a kernel built without it, or no
/// MPTCP for this address family), as opposed to real resource errors.
pub fn mptcp_unavailable(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(
            libc::ENOPROTOOPT
                | libc::EPROTONOSUPPORT
                | libc::EINVAL
                | libc::EAFNOSUPPORT
                | libc::ESOCKTNOSUPPORT
        )
    )
}

/// Opens a stream socket. `ty` carries the caller's SOCK_NONBLOCK and
/// SOCK_CLOEXEC flags unchanged.
pub fn open(domain: c_int, ty: c_int, proto: Proto) -> io::Result<c_int> {
    sys::socket(domain, ty, proto.number())
}

/// A `setsockopt` the program made, kept so that a replacement socket can
/// be given the same options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SockOpt {
    pub level: c_int,
    pub name: c_int,
    pub value: Vec<u8>,
}

/// The protocol of a stream socket, or `None` when `fd` is not an
/// AF_INET/AF_INET6 TCP or MPTCP stream socket (anymore).
pub fn stream_protocol(fd: c_int) -> Option<(c_int, Proto)> {
    let ty = sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE).ok()?;
    if ty != libc::SOCK_STREAM {
        return None;
    }
    let domain = sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).ok()?;
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return None;
    }
    match sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL).ok()? {
        libc::IPPROTO_TCP => Some((domain, Proto::Tcp)),
        IPPROTO_MPTCP => Some((domain, Proto::Mptcp)),
        _ => None,
    }
}

/// Replaces the unconnected stream socket `fd` by a new one speaking `to`,
/// under the same descriptor number, with the same file flags, the same
/// recorded options and, when it was bound, the same local address.
///
/// Nothing changes when any step fails: the new socket is closed and the
/// error returned, so the caller can carry on with the socket it had.
pub fn switch_protocol(fd: c_int, to: Proto, options: &[SockOpt]) -> io::Result<()> {
    let (domain, from) =
        stream_protocol(fd).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOTSOCK))?;
    if from == to {
        return Ok(());
    }
    let status = sys::fcntl(fd, libc::F_GETFL, 0)?;
    let fd_flags = sys::fcntl(fd, libc::F_GETFD, 0)?;
    let mut ty = libc::SOCK_STREAM;
    if status & libc::O_NONBLOCK != 0 {
        ty |= libc::SOCK_NONBLOCK;
    }
    let cloexec = fd_flags & libc::FD_CLOEXEC != 0;
    if cloexec {
        ty |= libc::SOCK_CLOEXEC;
    }
    let new = sys::socket(domain, ty, to.number())?;
    let result = prepare_replacement(fd, new, options)
        .and_then(|()| sys::dup3(new, fd, if cloexec { libc::O_CLOEXEC } else { 0 }));
    // The replacement now lives on under `fd` (or failed): drop our extra
    // reference either way.
    let _ = sys::close(new);
    result
}

fn prepare_replacement(old: c_int, new: c_int, options: &[SockOpt]) -> io::Result<()> {
    for opt in options {
        sys::setsockopt(new, opt.level, opt.name, &opt.value)?;
    }
    let (local, len) = sys::getsockname(old)?;
    let bound = socket_addr(&local, len).is_some_and(|a| a.port() != 0);
    if bound {
        // Both sockets must allow address reuse for the new one to take the
        // old one's address while the old one still holds it (neither is
        // listening, so Linux permits it). The program's own choice for the
        // new socket is restored afterwards.
        let wanted = options
            .iter()
            .rev()
            .find(|o| o.level == libc::SOL_SOCKET && o.name == libc::SO_REUSEADDR)
            .map(|o| o.value.iter().any(|b| *b != 0))
            .unwrap_or(false);
        sys::setsockopt_int(old, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        sys::setsockopt_int(new, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        sys::bind(new, &local, len)?;
        if !wanted {
            sys::setsockopt_int(new, libc::SOL_SOCKET, libc::SO_REUSEADDR, 0)?;
        }
    }
    Ok(())
}

/// Converts a kernel socket address into a std one; `None` for families
/// other than AF_INET/AF_INET6 or a length too short for the family.
pub fn socket_addr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match storage.ss_family as c_int {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, the
            // length says it is all there, and sockaddr_storage is aligned
            // for every sockaddr type.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage as *const libc::sockaddr_in6)
            };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// The kernel form of a std socket address, the inverse of
/// [`socket_addr`]: the storage and how many of its bytes are the address.
pub fn sockaddr_of(a: &SocketAddr) -> (libc::sockaddr_storage, usize) {
    // SAFETY: sockaddr_storage is plain data; all-zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for
            // every sockaddr type.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len)
}

/// What MPTCP did on one connection, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MptcpReport {
    /// The connection fell back to plain TCP (the peer did not speak MPTCP).
    pub fallback: bool,
    /// Subflows open now, the initial one included.
    pub subflows: u32,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Local and remote address of each current subflow.
    pub subflow_addrs: Vec<(SocketAddr, SocketAddr)>,
}

/// `struct mptcp_info` as of Linux 6.12 (include/uapi/linux/mptcp.h).
#[repr(C)]
#[derive(Default)]
struct MptcpInfo {
    subflows: u8,
    add_addr_signal: u8,
    add_addr_accepted: u8,
    subflows_max: u8,
    add_addr_signal_max: u8,
    add_addr_accepted_max: u8,
    flags: u32,
    token: u32,
    write_seq: u64,
    snd_una: u64,
    rcv_nxt: u64,
    local_addr_used: u8,
    local_addr_max: u8,
    csum_enabled: u8,
    retransmits: u32,
    bytes_retrans: u64,
    bytes_sent: u64,
    bytes_received: u64,
    bytes_acked: u64,
    subflows_total: u8,
    reserved: [u8; 3],
    last_data_sent: u32,
    last_data_recv: u32,
    last_ack_recv: u32,
}

/// Reads MPTCP_INFO and the subflow addresses of an MPTCP socket. A
/// socket that fell back to TCP reports `fallback` (older kernels refuse
/// SOL_MPTCP options on such sockets; that counts as fallback too).
pub fn mptcp_report(fd: c_int) -> io::Result<MptcpReport> {
    let mut raw = [0u8; std::mem::size_of::<MptcpInfo>()];
    let len = match sys::getsockopt(fd, SOL_MPTCP, MPTCP_INFO, &mut raw) {
        Ok(len) => len,
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOPROTOOPT)) => {
            return Ok(MptcpReport {
                fallback: true,
                subflows: 1,
                bytes_sent: 0,
                bytes_received: 0,
                subflow_addrs: Vec::new(),
            });
        }
        Err(e) => return Err(e),
    };
    let mut info = MptcpInfo::default();
    // SAFETY: MptcpInfo is repr(C) plain integers, valid for any bytes;
    // we copy at most its size and the kernel zero-fills what it lacks.
    unsafe {
        std::ptr::copy_nonoverlapping(
            raw.as_ptr(),
            &mut info as *mut MptcpInfo as *mut u8,
            len.min(raw.len()),
        );
    }
    let subflows = if info.subflows_total > 0 {
        u32::from(info.subflows_total)
    } else {
        // Kernels before 6.8: `subflows` counts the extra ones only.
        u32::from(info.subflows) + 1
    };
    Ok(MptcpReport {
        fallback: info.flags & MPTCP_INFO_FLAG_FALLBACK != 0,
        subflows,
        bytes_sent: info.bytes_sent,
        bytes_received: info.bytes_received,
        subflow_addrs: subflow_addrs(fd).unwrap_or_default(),
    })
}

/// MPTCP_SUBFLOW_ADDRS: a `mptcp_subflow_data` header followed by one
/// (local, remote) pair of `sockaddr_storage` per subflow.
fn subflow_addrs(fd: c_int) -> io::Result<Vec<(SocketAddr, SocketAddr)>> {
    const HEADER: usize = 16;
    const PAIR: usize = 2 * std::mem::size_of::<libc::sockaddr_storage>();
    const MAX_SUBFLOWS: usize = 8;
    let mut buf = vec![0u8; HEADER + PAIR * MAX_SUBFLOWS];
    buf[0..4].copy_from_slice(&(HEADER as u32).to_ne_bytes());
    buf[12..16].copy_from_slice(&(PAIR as u32).to_ne_bytes());
    let len = sys::getsockopt(fd, SOL_MPTCP, MPTCP_SUBFLOW_ADDRS, &mut buf)?;
    let count = u32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    let mut out = Vec::new();
    for i in 0..count.min(MAX_SUBFLOWS) {
        let start = HEADER + i * PAIR;
        if start + PAIR > len {
            break;
        }
        let local = storage_from(&buf[start..start + PAIR / 2]);
        let remote = storage_from(&buf[start + PAIR / 2..start + PAIR]);
        let full = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if let (Some(l), Some(r)) = (socket_addr(&local, full), socket_addr(&remote, full)) {
            out.push((l, r));
        }
    }
    Ok(out)
}

fn storage_from(bytes: &[u8]) -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain data; all-zero is valid, and we
    // copy no more than its size.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let n = bytes
            .len()
            .min(std::mem::size_of::<libc::sockaddr_storage>());
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), &mut storage as *mut _ as *mut u8, n);
        storage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_survive_the_kernel_form() {
        for text in ["198.18.1.2:8080", "[2001:2:0:1::2]:443", "0.0.0.0:0"] {
            let a: SocketAddr = text.parse().unwrap();
            let (storage, len) = sockaddr_of(&a);
            assert_eq!(socket_addr(&storage, len as libc::socklen_t), Some(a));
            // One byte short is not an address of the family.
            assert_eq!(socket_addr(&storage, len as libc::socklen_t - 1), None);
        }
    }
}
