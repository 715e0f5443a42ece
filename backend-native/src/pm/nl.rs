//! A small netlink client over a raw `AF_NETLINK` socket: build a request,
//! send it, collect the replies (dumps and acknowledgements), and walk the
//! attributes inside them. Shared by [`crate::pm`] (generic netlink,
//! `mptcp_pm`) and [`crate::diag`] (`NETLINK_SOCK_DIAG`).
//!
//! `pm` and `diag` are used by the `dropshim` CLI, but this crate is also
//! linked into `libdropshim.so`, where libc's `socket`, `bind`, `send` and
//! `recv` are the shim's own hooks. So the socket calls here are raw
//! system calls, safe to make from either place. (Closing goes through
//! `OwnedFd`; the shim's `close` hook passes descriptors it does not own
//! straight through.)

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub const NLMSG_HDRLEN: usize = 16;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;
/// Attribute type bits that are flags, not the type (nested, byte order).
const NLA_TYPE_MASK: u16 = 0x3fff;
pub const NLA_F_NESTED: u16 = 0x8000;

/// Rounds up to netlink's 4-byte alignment.
pub fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// An open netlink socket of one protocol (`NETLINK_GENERIC`, ...).
pub struct NlSocket {
    fd: OwnedFd,
    seq: u32,
}

impl NlSocket {
    pub fn open(protocol: libc::c_int) -> io::Result<Self> {
        // SAFETY: socket(2) with constant integer arguments; no memory is
        // passed and the result is checked before use.
        let raw = unsafe {
            libc::syscall(
                libc::SYS_socket,
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw as libc::c_int) };
        let one: libc::c_int = 1;
        for opt in [NETLINK_EXT_ACK, NETLINK_CAP_ACK] {
            // SAFETY: `one` lives across the call and its size is passed.
            // Failure only loses the kernel's error text, so it is ignored.
            unsafe {
                libc::syscall(
                    libc::SYS_setsockopt,
                    fd.as_raw_fd(),
                    libc::SOL_NETLINK,
                    opt,
                    &one as *const libc::c_int,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `addr` is a valid sockaddr_nl and its exact size is passed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bind,
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_nl,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(NlSocket { fd, seq: 1 })
    }

    /// Sends one request and returns the payloads (after the netlink
    /// header) of every data message the kernel answers with. With
    /// `NLM_F_DUMP` it reads until `NLMSG_DONE`; otherwise it asks for an
    /// acknowledgement and reads until it arrives, so errors are never lost.
    pub fn request(
        &mut self,
        msg_type: u16,
        flags: u16,
        payload: &[u8],
    ) -> io::Result<Vec<Vec<u8>>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let flags = if dump {
            flags | NLM_F_REQUEST
        } else {
            flags | NLM_F_REQUEST | NLM_F_ACK
        };
        let len = NLMSG_HDRLEN + payload.len();
        let mut msg = Vec::with_capacity(align4(len));
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&msg_type.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(payload);
        msg.resize(align4(len), 0);
        // SAFETY: `msg` is a live buffer of `msg.len()` bytes; the socket is
        // bound, so send(2) goes to the kernel (port 0).
        let sent = unsafe {
            libc::syscall(
                libc::SYS_sendto,
                self.fd.as_raw_fd(),
                msg.as_ptr(),
                msg.len(),
                0,
                std::ptr::null::<libc::sockaddr>(),
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }

        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
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
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            let n = n as usize;
            if n > buf.len() {
                return Err(io::Error::other(format!(
                    "netlink reply of {n} bytes does not fit the {} byte buffer",
                    buf.len()
                )));
            }
            for m in Messages::new(&buf[..n]) {
                let m = m?;
                if m.seq != seq {
                    continue; // a late reply to an earlier request
                }
                match m.msg_type {
                    NLMSG_ERROR => {
                        let (code, text) = parse_error(&m)?;
                        if code == 0 {
                            return Ok(out); // the acknowledgement
                        }
                        let os = io::Error::from_raw_os_error(-code);
                        return Err(match text {
                            Some(t) => io::Error::new(os.kind(), format!("{t} ({os})")),
                            None => os,
                        });
                    }
                    NLMSG_DONE => {
                        // A dump's end carries an error code too.
                        let code = m
                            .payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                        if let Some(code) = code.filter(|c| *c < 0) {
                            return Err(io::Error::from_raw_os_error(-code));
                        }
                        return Ok(out);
                    }
                    // Data; for a plain request the acknowledgement follows.
                    _ => out.push(m.payload.to_vec()),
                }
            }
        }
    }
}

/// One netlink message inside a datagram.
pub struct Message<'a> {
    pub msg_type: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

/// Splits a received datagram into its messages.
pub struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Messages<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Messages { rest: buf }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = io::Result<Message<'a>>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32_at(self.rest, 0) as usize;
        if len < NLMSG_HDRLEN || len > self.rest.len() {
            self.rest = &[];
            return Some(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed netlink message length",
            )));
        }
        let m = Message {
            msg_type: u16_at(self.rest, 4),
            flags: u16_at(self.rest, 6),
            seq: u32_at(self.rest, 8),
            payload: &self.rest[NLMSG_HDRLEN..len],
        };
        self.rest = self.rest.get(align4(len)..).unwrap_or(&[]);
        Some(Ok(m))
    }
}

/// Reads an `NLMSG_ERROR` payload: the error code (0 = ack) and the
/// kernel's extended-ack text if it sent one.
fn parse_error(m: &Message<'_>) -> io::Result<(i32, Option<String>)> {
    let p = m.payload;
    if p.len() < 4 + NLMSG_HDRLEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short netlink error message",
        ));
    }
    let code = u32_at(p, 0) as i32;
    let mut text = None;
    if m.flags & NLM_F_ACK_TLVS != 0 {
        // With NETLINK_CAP_ACK the echoed request is only its header.
        let echoed = if m.flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            u32_at(p, 4) as usize
        };
        let tlvs = p.get(4 + align4(echoed)..).unwrap_or(&[]);
        for (ty, data) in Attrs::new(tlvs) {
            if ty == NLMSGERR_ATTR_MSG {
                let s = data.split(|b| *b == 0).next().unwrap_or(&[]);
                text = Some(String::from_utf8_lossy(s).into_owned());
            }
        }
    }
    Ok((code, text))
}

/// Iterates over netlink attributes: (type without flag bits, payload).
/// Malformed trailing bytes end the iteration.
pub struct Attrs<'a> {
    rest: &'a [u8],
}

impl<'a> Attrs<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Attrs { rest: buf }
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.len() < 4 {
            return None;
        }
        let len = u16_at(self.rest, 0) as usize;
        let ty = u16_at(self.rest, 2) & NLA_TYPE_MASK;
        if len < 4 || len > self.rest.len() {
            self.rest = &[];
            return None;
        }
        let data = &self.rest[4..len];
        self.rest = self.rest.get(align4(len)..).unwrap_or(&[]);
        Some((ty, data))
    }
}

/// Builds a sequence of netlink attributes.
#[derive(Default)]
pub struct AttrWriter {
    pub buf: Vec<u8>,
}

impl AttrWriter {
    pub fn new(prefix: &[u8]) -> Self {
        AttrWriter {
            buf: prefix.to_vec(),
        }
    }

    pub fn put(&mut self, ty: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    pub fn put_u8(&mut self, ty: u16, v: u8) {
        self.put(ty, &[v]);
    }
    pub fn put_u16(&mut self, ty: u16, v: u16) {
        self.put(ty, &v.to_ne_bytes());
    }
    pub fn put_u32(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_ne_bytes());
    }

    /// Starts a nested attribute; close it with [`AttrWriter::end_nested`].
    pub fn begin_nested(&mut self, ty: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        start
    }

    pub fn end_nested(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }
}

pub fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([b[off], b[off + 1]])
}

pub fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Reads a native-endian integer attribute payload of the given width,
/// or None if it is too short.
pub fn get_u8(d: &[u8]) -> Option<u8> {
    d.first().copied()
}
pub fn get_u16(d: &[u8]) -> Option<u16> {
    (d.len() >= 2).then(|| u16_at(d, 0))
}
pub fn get_u32(d: &[u8]) -> Option<u32> {
    (d.len() >= 4).then(|| u32_at(d, 0))
}
pub fn get_u64(d: &[u8]) -> Option<u64> {
    let b: [u8; 8] = d.get(..8)?.try_into().ok()?;
    Some(u64::from_ne_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_with_padding_and_nesting() {
        let mut w = AttrWriter::new(&[9, 9, 0, 0]);
        w.put_u8(1, 7);
        let n = w.begin_nested(2);
        w.put_u16(3, 0x1234);
        w.put(4, b"abcde");
        w.end_nested(n);
        w.put_u32(5, 0xdead_beef);
        assert_eq!(w.buf.len() % 4, 0);

        let top: Vec<_> = Attrs::new(&w.buf[4..]).collect();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0], (1, &[7u8][..]));
        assert_eq!(top[1].0, 2, "nested flag is masked off the type");
        let inner: Vec<_> = Attrs::new(top[1].1).collect();
        assert_eq!(get_u16(inner[0].1), Some(0x1234));
        assert_eq!(inner[1], (4, &b"abcde"[..]));
        assert_eq!(get_u32(top[2].1), Some(0xdead_beef));
    }

    #[test]
    fn truncated_attribute_stops_iteration() {
        // Claims 12 bytes but only 6 are there.
        let buf = [12u8, 0, 1, 0, 1, 2];
        assert_eq!(Attrs::new(&buf).count(), 0);
    }

    #[test]
    fn error_message_carries_extack_text() {
        let mut p = Vec::new();
        p.extend_from_slice(&(-22i32).to_ne_bytes());
        p.extend_from_slice(&[0u8; NLMSG_HDRLEN]); // echoed header (capped)
        let mut w = AttrWriter::default();
        w.put(
            NLMSGERR_ATTR_MSG,
            b"flags mustn't have both signal and fullmesh\0",
        );
        p.extend_from_slice(&w.buf);
        let m = Message {
            msg_type: NLMSG_ERROR,
            flags: NLM_F_CAPPED | NLM_F_ACK_TLVS,
            seq: 1,
            payload: &p,
        };
        let (code, text) = parse_error(&m).unwrap();
        assert_eq!(code, -22);
        assert_eq!(
            text.as_deref(),
            Some("flags mustn't have both signal and fullmesh")
        );
    }
}
