//! Moving netlink datagrams: the [`Transport`] trait (send one datagram,
//! receive one), the host kernel's socket ([`HostSocket`]), and
//! [`Conn`], the request/reply exchange every protocol module uses on
//! top of any transport.

use netlink_packet_core::{
    NetlinkBuffer, NetlinkDeserializable, NetlinkHeader, NetlinkSerializable, NLM_F_ACK,
    NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_REQUEST,
};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `NLMSG_ERROR`: an error or, with code 0, an acknowledgement.
const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: the end of a dump.
const NLMSG_DONE: u16 = 3;
/// `NLMSG_NOOP`.
const NLMSG_NOOP: u16 = 1;
/// Header length of a netlink message.
const NLMSG_HDRLEN: usize = 16;
/// `NLMSGERR_ATTR_MSG`: the kernel's extended-ack text.
const NLMSGERR_ATTR_MSG: u16 = 1;
const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;
const NETLINK_EXT_ACK: libc::c_int = 11;
const NETLINK_CAP_ACK: libc::c_int = 10;

/// One netlink socket of one protocol, in whichever kernel it lives: the
/// host's ([`HostSocket`]) or a library kernel's (backend-lkl).
pub trait Transport {
    /// Sends one datagram to the kernel.
    fn send(&mut self, datagram: &[u8]) -> io::Result<()>;
    /// Receives one datagram into `buf`, returning its length. A datagram
    /// longer than `buf` is an error, never silently cut.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Joins a multicast group (for events).
    fn add_membership(&mut self, group: u32) -> io::Result<()>;
}

impl<T: Transport + ?Sized> Transport for &mut T {
    fn send(&mut self, datagram: &[u8]) -> io::Result<()> {
        (**self).send(datagram)
    }
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (**self).recv(buf)
    }
    fn add_membership(&mut self, group: u32) -> io::Result<()> {
        (**self).add_membership(group)
    }
}

/// The netlink protocols this crate speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `NETLINK_ROUTE`: links, addresses, routes, rules.
    Route,
    /// `NETLINK_SOCK_DIAG`: socket listings.
    SockDiag,
    /// `NETLINK_GENERIC`: `mptcp_pm` and the family controller.
    Generic,
}

impl Protocol {
    /// The protocol number for `socket(AF_NETLINK, SOCK_RAW, n)`.
    pub fn number(self) -> i32 {
        match self {
            Protocol::Route => libc::NETLINK_ROUTE,
            Protocol::SockDiag => libc::NETLINK_SOCK_DIAG,
            Protocol::Generic => libc::NETLINK_GENERIC,
        }
    }
}

/// A netlink socket in the host kernel (this process's network namespace).
///
/// The calls are raw system calls, not libc's functions: inside
/// `libdropshim.so` libc's `socket`, `send` and `recv` are the shim's own
/// hooks.
pub struct HostSocket {
    fd: OwnedFd,
}

impl HostSocket {
    /// Opens and binds a socket of `protocol`, asking the kernel for its
    /// error texts (extended acks) and for short acknowledgements.
    pub fn open(protocol: Protocol) -> io::Result<Self> {
        // SAFETY: socket(2) with integer arguments only; checked below.
        let raw = unsafe {
            libc::syscall(
                libc::SYS_socket,
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol.number(),
            )
        };
        if raw < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("cannot open a netlink socket ({protocol:?}): {e}"),
            ));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw as libc::c_int) };
        let s = HostSocket { fd };
        // Failure only loses the kernel's error text: ignored.
        let _ = s.setsockopt(NETLINK_EXT_ACK, 1);
        let _ = s.setsockopt(NETLINK_CAP_ACK, 1);
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `addr` is a valid sockaddr_nl and its exact size is passed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bind,
                s.fd.as_raw_fd(),
                &addr as *const libc::sockaddr_nl,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(s)
    }

    /// Makes a blocking receive fail with `WouldBlock` after `timeout`.
    pub fn set_recv_timeout(&self, timeout: std::time::Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: libc::suseconds_t::from(timeout.subsec_micros() as i32),
        };
        // SAFETY: `tv` lives across the call and its exact size is passed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_setsockopt,
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn setsockopt(&self, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
        dropshim_abi::sock::setsockopt_int(self.fd.as_raw_fd(), libc::SOL_NETLINK, opt, value)
    }
}

impl Transport for HostSocket {
    fn send(&mut self, datagram: &[u8]) -> io::Result<()> {
        loop {
            // SAFETY: `datagram` is a live buffer of its length; the socket
            // is bound, so send goes to the kernel.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_sendto,
                    self.fd.as_raw_fd(),
                    datagram.as_ptr(),
                    datagram.len(),
                    0,
                    std::ptr::null::<libc::sockaddr>(),
                    0,
                )
            };
            if n >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes.
            // MSG_TRUNC makes the kernel report the real datagram length.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_recvfrom,
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr(),
                    buf.len(),
                    libc::MSG_TRUNC,
                    std::ptr::null_mut::<libc::sockaddr>(),
                    std::ptr::null_mut::<libc::socklen_t>(),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let n = n as usize;
            if n > buf.len() {
                return Err(io::Error::other(format!(
                    "netlink datagram of {n} bytes does not fit the {} byte buffer",
                    buf.len()
                )));
            }
            return Ok(n);
        }
    }

    fn add_membership(&mut self, group: u32) -> io::Result<()> {
        self.setsockopt(NETLINK_ADD_MEMBERSHIP, group as libc::c_int)
    }
}

impl AsRawFd for HostSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

/// Request/reply exchanges over one transport: numbers requests, collects
/// the replies of a dump until its end, waits for the acknowledgement of a
/// plain request, and turns a kernel error into an `io::Error` carrying
/// the kernel's own text when it gave one.
pub struct Conn<T> {
    transport: T,
    seq: u32,
    buf: Vec<u8>,
}

impl<T: Transport> Conn<T> {
    /// Wraps a transport.
    pub fn new(transport: T) -> Self {
        Conn {
            transport,
            seq: 0,
            buf: vec![0; 64 * 1024],
        }
    }

    /// The transport (to join groups, or give it back).
    pub fn transport(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Sends `msg` with `flags` (NLM_F_REQUEST is added; NLM_F_ACK too
    /// unless it is a dump) and returns every data message of the answer.
    pub fn request<M>(&mut self, msg: M, flags: u16) -> io::Result<Vec<M>>
    where
        M: NetlinkSerializable + NetlinkDeserializable,
    {
        let mut out = Vec::new();
        self.request_each(msg, flags, |m| {
            out.push(m);
            Ok(())
        })?;
        Ok(out)
    }

    /// Like [`Conn::request`] with a callback per reply message, for long
    /// dumps.
    pub fn request_each<M, F>(&mut self, msg: M, flags: u16, mut each: F) -> io::Result<()>
    where
        M: NetlinkSerializable + NetlinkDeserializable,
        F: FnMut(M) -> io::Result<()>,
    {
        self.seq = self.seq.wrapping_add(1).max(1);
        let seq = self.seq;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let flags = if dump {
            flags | NLM_F_REQUEST
        } else {
            flags | NLM_F_REQUEST | NLM_F_ACK
        };
        let mut header = NetlinkHeader::default();
        header.message_type = msg.message_type();
        header.flags = flags;
        header.sequence_number = seq;
        let mut message = netlink_packet_core::NetlinkMessage::new(
            header,
            netlink_packet_core::NetlinkPayload::InnerMessage(msg),
        );
        message.finalize();
        let mut out = vec![0u8; message.buffer_len()];
        message.serialize(&mut out);
        self.transport.send(&out)?;

        loop {
            let n = self.transport.recv(&mut self.buf)?;
            let mut rest = &self.buf[..n];
            while rest.len() >= NLMSG_HDRLEN {
                let nb = NetlinkBuffer::new_checked(rest).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("malformed netlink message: {e}"),
                    )
                })?;
                let len = nb.length() as usize;
                let (ty, mflags, mseq) = (nb.message_type(), nb.flags(), nb.sequence_number());
                let payload = &rest[NLMSG_HDRLEN..len];
                rest = rest.get(align4(len)..).unwrap_or(&[]);
                if mseq != seq {
                    continue; // a late answer to an earlier request, or an event
                }
                match ty {
                    NLMSG_NOOP => {}
                    NLMSG_ERROR => return error_result(payload, mflags),
                    NLMSG_DONE => {
                        let code = payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                        if let Some(code) = code.filter(|c| *c < 0) {
                            return Err(io::Error::from_raw_os_error(-code));
                        }
                        return Ok(());
                    }
                    _ => {
                        let mut h = NetlinkHeader::default();
                        h.length = len as u32;
                        h.message_type = ty;
                        h.flags = mflags;
                        h.sequence_number = mseq;
                        let m = M::deserialize(&h, payload).map_err(|e| {
                            io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("undecodable netlink reply (type {ty}): {e}"),
                            )
                        })?;
                        each(m)?;
                    }
                }
            }
        }
    }

    /// Receives the next datagram and decodes its messages (events of a
    /// multicast group the transport joined). Errors and other control
    /// messages are skipped.
    pub fn recv_messages<M: NetlinkDeserializable>(&mut self) -> io::Result<Vec<M>> {
        let n = self.transport.recv(&mut self.buf)?;
        let mut out = Vec::new();
        let mut rest = &self.buf[..n];
        while rest.len() >= NLMSG_HDRLEN {
            let Ok(nb) = NetlinkBuffer::new_checked(rest) else {
                break;
            };
            let len = nb.length() as usize;
            let mut h = NetlinkHeader::default();
            h.length = len as u32;
            h.message_type = nb.message_type();
            h.flags = nb.flags();
            h.sequence_number = nb.sequence_number();
            let payload = &rest[NLMSG_HDRLEN..len];
            rest = rest.get(align4(len)..).unwrap_or(&[]);
            if h.message_type <= NLMSG_DONE {
                continue;
            }
            if let Ok(m) = M::deserialize(&h, payload) {
                out.push(m);
            }
        }
        Ok(out)
    }
}

/// Rounds up to netlink's 4-byte alignment.
pub(crate) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Reads an `NLMSG_ERROR` payload: Ok for an acknowledgement, else the
/// error with the kernel's extended-ack text when it sent one.
fn error_result(p: &[u8], flags: u16) -> io::Result<()> {
    let Some(code) = p.get(..4) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short netlink error message",
        ));
    };
    let code = i32::from_ne_bytes([code[0], code[1], code[2], code[3]]);
    if code == 0 {
        return Ok(());
    }
    let mut text = None;
    if flags & NLM_F_ACK_TLVS != 0 {
        // With NETLINK_CAP_ACK the echoed request is only its header.
        let echoed = if flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            p.get(4..8)
                .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .unwrap_or(NLMSG_HDRLEN)
        };
        let tlvs = p.get(4 + align4(echoed)..).unwrap_or(&[]);
        for nla in netlink_packet_core::NlasIterator::new(tlvs).flatten() {
            if nla.kind() == NLMSGERR_ATTR_MSG {
                let s = nla.value().split(|b| *b == 0).next().unwrap_or(&[]);
                text = Some(String::from_utf8_lossy(s).into_owned());
            }
        }
    }
    let os = io::Error::from_raw_os_error(-code);
    Err(match text {
        Some(t) => io::Error::new(os.kind(), format!("{t} ({os})")),
        None => os,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_message_carries_extack_text() {
        let mut p = Vec::new();
        p.extend_from_slice(&(-22i32).to_ne_bytes());
        p.extend_from_slice(&[0u8; NLMSG_HDRLEN]); // echoed header (capped)
        let text = b"flags mustn't have both signal and fullmesh\0";
        p.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
        p.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        p.extend_from_slice(text);
        p.resize(align4(p.len()), 0);
        let e = error_result(&p, NLM_F_CAPPED | NLM_F_ACK_TLVS).unwrap_err();
        assert_eq!(e.raw_os_error(), None);
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let s = e.to_string();
        assert!(
            s.starts_with("flags mustn't have both signal and fullmesh ("),
            "{s}"
        );
        // Code 0 is the acknowledgement.
        assert!(error_result(&0i32.to_ne_bytes(), 0).is_ok());
        // Without text the plain OS error stays, errno intact.
        let e = error_result(&(-17i32).to_ne_bytes(), 0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(17));
    }
}
