//! What the native backend does to a single socket: open it as TCP or
//! MPTCP, switch an unconnected socket between the two in place, and
//! report what MPTCP really did on it.

use crate::sys;
use dropshim_abi::{
    decode, encode, sock, IPPROTO_MPTCP, MPTCP_INFO, MPTCP_INFO_FLAG_FALLBACK, MPTCP_SUBFLOW_ADDRS,
    SOL_MPTCP,
};
use std::io;
use std::net::SocketAddr;
use std::os::raw::c_int;

/// The protocol a stream socket speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// Plain TCP (`IPPROTO_TCP`).
    Tcp,
    /// Multipath TCP (`IPPROTO_MPTCP`).
    Mptcp,
}

impl Proto {
    /// The protocol number to pass as the third argument of `socket(2)`.
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
    /// The `setsockopt` level (`SOL_SOCKET`, `IPPROTO_TCP`, ...).
    pub level: c_int,
    /// The option name within that level.
    pub name: c_int,
    /// The option value exactly as the program passed it.
    pub value: Vec<u8>,
}

/// The protocol of a stream socket, or `None` when `fd` is not an
/// AF_INET/AF_INET6 TCP or MPTCP stream socket (anymore).
pub fn stream_protocol(fd: c_int) -> Option<(c_int, Proto)> {
    let ty = sock::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE).ok()?;
    if ty != libc::SOCK_STREAM {
        return None;
    }
    let domain = sock::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).ok()?;
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return None;
    }
    match sock::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL).ok()? {
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
        sock::setsockopt(new, opt.level, opt.name, &opt.value)?;
    }
    // A socket of no IP family (EAFNOSUPPORT, which getsockname itself
    // never answers) is taken as unbound.
    let local = match dropshim_abi::sock::local_addr(old) {
        Ok(addr) => Some(addr).filter(|a| a.port() != 0),
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => None,
        Err(e) => return Err(e),
    };
    if let Some(local) = local {
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
        sock::setsockopt_int(old, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        sock::setsockopt_int(new, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        sys::bind(new, &encode(&local))?;
        if !wanted {
            sock::setsockopt_int(new, libc::SOL_SOCKET, libc::SO_REUSEADDR, 0)?;
        }
    }
    Ok(())
}

/// What MPTCP did on one connection, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MptcpReport {
    /// The connection fell back to plain TCP (the peer did not speak MPTCP).
    pub fallback: bool,
    /// Subflows open now, the initial one included.
    pub subflows: u32,
    /// Bytes sent at the MPTCP data level (`mptcpi_bytes_sent`); 0 when the kernel does not report
    /// it.
    pub bytes_sent: u64,
    /// Bytes received at the MPTCP data level (`mptcpi_bytes_received`); 0 when the kernel does not
    /// report it.
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
    let len = match sock::getsockopt(fd, SOL_MPTCP, MPTCP_INFO, &mut raw) {
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
    let len = sock::getsockopt(fd, SOL_MPTCP, MPTCP_SUBFLOW_ADDRS, &mut buf)?;
    let count = u32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    let mut out = Vec::new();
    for i in 0..count.min(MAX_SUBFLOWS) {
        let start = HEADER + i * PAIR;
        if start + PAIR > len {
            break;
        }
        let local = decode(&buf[start..start + PAIR / 2]);
        let remote = decode(&buf[start + PAIR / 2..start + PAIR]);
        if let (Some(l), Some(r)) = (local, remote) {
            out.push((l, r));
        }
    }
    Ok(out)
}
