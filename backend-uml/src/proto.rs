//! The wire format between shimmed programs, the supervisor and the guest
//! agent.
//!
//! Three hops, one encoding:
//! - program -> supervisor: one [`Request`] per SOCK_SEQPACKET connection
//!   on the device's control socket; the answer is one [`Reply`] with the
//!   bridge descriptor attached (SCM_RIGHTS).
//! - supervisor -> agent: the same [`Request`] as the first bytes of a
//!   fresh bridge TCP connection; the agent answers with a [`Reply`] and
//!   from then on the connection carries only the program's bytes.
//! - agent -> supervisor on a listener's bridge: one [`Notice`] per
//!   connection the guest accepted; supervisor -> program on the
//!   listener's socketpair: a [`Reply`] with the new bridge attached.
//!
//! Everything is fixed-size or length-prefixed so neither side ever reads
//! into the program's data.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

/// Encoded size of an optional socket address.
pub const ADDR_LEN: usize = 23;
/// Encoded size of a [`Reply`].
pub const REPLY_LEN: usize = 4 + 2 * ADDR_LEN;
/// Encoded size of a [`Notice`].
pub const NOTICE_LEN: usize = 8 + 2 * ADDR_LEN;
/// Upper bound of an encoded request (options included).
pub const MAX_REQUEST: usize = 8192;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Is the instance there? (control socket only)
    Ping = 1,
    /// Open a connection from the guest to `addr`.
    Connect = 2,
    /// Listen in the guest on `addr`.
    Listen = 3,
    /// Hand over the guest connection a listener announced as `id`.
    Attach = 4,
    /// Keep this control connection open while the instance lives (control
    /// socket only): the supervisor acknowledges, and the connection ends
    /// when the supervisor does, so a program learns of the instance's
    /// death even if the supervisor was killed with it.
    Watch = 5,
    /// Supervisor -> agent only: the host interface of `vec<id>` came back
    /// up after being down. The vector driver drops frames while the link
    /// is down (ENOBUFS, ENETDOWN: kernel patches 0004 and 0005), but any
    /// other send/receive error marks its transport dead, a mark only
    /// closing the device clears, so the agent bounces `vec<id>` and
    /// restores what the bounce removed.
    Reset = 6,
    /// The guest's network state, for diagnosis: the agent answers, then
    /// writes text on the bridge until it closes it (its sockets with
    /// their memory, `ss -tmiMn`, and its TCP and MPTCP counters). The
    /// supervisor passes that bridge to the asking program.
    Stats = 7,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        match v {
            1 => Some(Kind::Ping),
            2 => Some(Kind::Connect),
            3 => Some(Kind::Listen),
            4 => Some(Kind::Attach),
            5 => Some(Kind::Watch),
            6 => Some(Kind::Reset),
            7 => Some(Kind::Stats),
            _ => None,
        }
    }
}

/// A socket option the program set, replayed on the guest socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opt {
    /// The `setsockopt` level.
    pub level: i32,
    /// The option name within that level.
    pub name: i32,
    /// The option value as the program passed it (at most 1024 bytes are sent).
    pub value: Vec<u8>,
}

/// One request from a program (through the supervisor) to the guest agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What is asked.
    pub kind: Kind,
    /// AF_INET or AF_INET6: the family of the guest socket.
    pub domain: i32,
    /// Speak MPTCP in the guest (else plain TCP), as the policy decided.
    pub mptcp: bool,
    /// Destination (Connect) or local address (Listen).
    pub addr: Option<SocketAddr>,
    /// Local address to bind before connecting, if the program bound one.
    pub bind: Option<SocketAddr>,
    /// The listen backlog (Listen); the agent uses at least 1.
    pub backlog: i32,
    /// The accepted connection to attach (Attach).
    pub id: u64,
    /// Options the program set, replayed on the guest socket (at most 64 are sent).
    pub opts: Vec<Opt>,
}

impl Request {
    /// A request of `kind` for an MPTCP AF_INET socket, every other field empty.
    pub fn new(kind: Kind) -> Request {
        Request {
            kind,
            domain: libc::AF_INET,
            mptcp: true,
            addr: None,
            bind: None,
            backlog: 0,
            id: 0,
            opts: Vec::new(),
        }
    }

    /// Encodes with a 4-byte length prefix (stream transports read the
    /// prefix first; datagram transports ignore it).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(128);
        b.extend_from_slice(&[0; 4]);
        b.push(self.kind as u8);
        b.push(u8::from(self.mptcp));
        b.extend_from_slice(&self.domain.to_le_bytes());
        put_addr(&mut b, self.addr);
        put_addr(&mut b, self.bind);
        b.extend_from_slice(&self.backlog.to_le_bytes());
        b.extend_from_slice(&self.id.to_le_bytes());
        let n = self.opts.len().min(64);
        b.push(n as u8);
        for o in &self.opts[..n] {
            let len = o.value.len().min(1024);
            b.extend_from_slice(&o.level.to_le_bytes());
            b.extend_from_slice(&o.name.to_le_bytes());
            b.extend_from_slice(&(len as u16).to_le_bytes());
            b.extend_from_slice(&o.value[..len]);
        }
        let total = (b.len() - 4) as u32;
        b[..4].copy_from_slice(&total.to_le_bytes());
        b
    }

    /// Decodes the body (everything after the length prefix).
    pub fn decode(body: &[u8]) -> Option<Request> {
        let mut r = Reader(body);
        let kind = Kind::from_u8(r.u8()?)?;
        let mptcp = r.u8()? != 0;
        let domain = r.i32()?;
        let addr = get_addr(r.take(ADDR_LEN)?);
        let bind = get_addr(r.take(ADDR_LEN)?);
        let backlog = r.i32()?;
        let id = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
        let n = r.u8()?;
        let mut opts = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let level = r.i32()?;
            let name = r.i32()?;
            let len = u16::from_le_bytes(r.take(2)?.try_into().ok()?) as usize;
            opts.push(Opt {
                level,
                name,
                value: r.take(len)?.to_vec(),
            });
        }
        Some(Request {
            kind,
            domain,
            mptcp,
            addr,
            bind,
            backlog,
            id,
            opts,
        })
    }
}

/// The outcome of a request: an errno (0 for success) and the guest
/// socket's own addresses, which are what the peer really sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// 0 on success, else the errno the program's call should fail with.
    pub errno: i32,
    /// The guest socket's local address.
    pub local: Option<SocketAddr>,
    /// The guest socket's peer address.
    pub peer: Option<SocketAddr>,
}

impl Reply {
    /// A reply that carries only a failure (`errno`), no addresses.
    pub fn error(errno: i32) -> Reply {
        Reply {
            errno,
            local: None,
            peer: None,
        }
    }

    /// Encodes to the fixed [`REPLY_LEN`] bytes.
    pub fn encode(&self) -> [u8; REPLY_LEN] {
        let mut b = Vec::with_capacity(REPLY_LEN);
        b.extend_from_slice(&self.errno.to_le_bytes());
        put_addr(&mut b, self.local);
        put_addr(&mut b, self.peer);
        let mut out = [0u8; REPLY_LEN];
        out.copy_from_slice(&b);
        out
    }

    /// Decodes the first [`REPLY_LEN`] bytes; `None` when `b` is shorter.
    pub fn decode(b: &[u8]) -> Option<Reply> {
        if b.len() < REPLY_LEN {
            return None;
        }
        Some(Reply {
            errno: i32::from_le_bytes(b[..4].try_into().ok()?),
            local: get_addr(&b[4..4 + ADDR_LEN]),
            peer: get_addr(&b[4 + ADDR_LEN..REPLY_LEN]),
        })
    }
}

/// A connection the guest accepted on a listener, waiting to be attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notice {
    /// The number a [`Kind::Attach`] request names to claim this connection.
    pub id: u64,
    /// The guest connection's local address.
    pub local: Option<SocketAddr>,
    /// The guest connection's peer address.
    pub peer: Option<SocketAddr>,
}

impl Notice {
    /// Encodes to the fixed [`NOTICE_LEN`] bytes.
    pub fn encode(&self) -> [u8; NOTICE_LEN] {
        let mut b = Vec::with_capacity(NOTICE_LEN);
        b.extend_from_slice(&self.id.to_le_bytes());
        put_addr(&mut b, self.local);
        put_addr(&mut b, self.peer);
        let mut out = [0u8; NOTICE_LEN];
        out.copy_from_slice(&b);
        out
    }

    /// Decodes the first [`NOTICE_LEN`] bytes; `None` when `b` is shorter.
    pub fn decode(b: &[u8]) -> Option<Notice> {
        if b.len() < NOTICE_LEN {
            return None;
        }
        Some(Notice {
            id: u64::from_le_bytes(b[..8].try_into().ok()?),
            local: get_addr(&b[8..8 + ADDR_LEN]),
            peer: get_addr(&b[8 + ADDR_LEN..NOTICE_LEN]),
        })
    }
}

/// family (0 none, 4, 6), 16 address bytes, port, IPv6 scope id.
fn put_addr(b: &mut Vec<u8>, a: Option<SocketAddr>) {
    match a {
        None => b.extend_from_slice(&[0; ADDR_LEN]),
        Some(SocketAddr::V4(v4)) => {
            b.push(4);
            let mut ip = [0u8; 16];
            ip[..4].copy_from_slice(&v4.ip().octets());
            b.extend_from_slice(&ip);
            b.extend_from_slice(&v4.port().to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
        }
        Some(SocketAddr::V6(v6)) => {
            b.push(6);
            b.extend_from_slice(&v6.ip().octets());
            b.extend_from_slice(&v6.port().to_le_bytes());
            b.extend_from_slice(&v6.scope_id().to_le_bytes());
        }
    }
}

fn get_addr(b: &[u8]) -> Option<SocketAddr> {
    let port = u16::from_le_bytes([b[17], b[18]]);
    match b[0] {
        4 => {
            let ip = Ipv4Addr::new(b[1], b[2], b[3], b[4]);
            Some(SocketAddr::new(IpAddr::V4(ip), port))
        }
        6 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[1..17]);
            let scope = u32::from_le_bytes([b[19], b[20], b[21], b[22]]);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(o),
                port,
                0,
                scope,
            )))
        }
        _ => None,
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn i32(&mut self) -> Option<i32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(i32::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips() {
        let mut r = Request::new(Kind::Connect);
        r.domain = libc::AF_INET6;
        r.addr = Some("[2001:2::1]:5201".parse().unwrap());
        r.bind = Some("198.18.0.1:0".parse().unwrap());
        r.opts.push(Opt {
            level: 6,
            name: 1,
            value: vec![1, 0, 0, 0],
        });
        let enc = r.encode();
        let len = u32::from_le_bytes(enc[..4].try_into().unwrap()) as usize;
        assert_eq!(len, enc.len() - 4);
        assert_eq!(Request::decode(&enc[4..]), Some(r));
        assert_eq!(Request::decode(&enc[4..10]), None);
    }

    #[test]
    fn reply_and_notice_round_trip() {
        let rep = Reply {
            errno: 111,
            local: Some("198.18.0.1:40000".parse().unwrap()),
            peer: None,
        };
        assert_eq!(Reply::decode(&rep.encode()), Some(rep));
        let n = Notice {
            id: 7,
            local: None,
            peer: Some("[2001:2::2]:80".parse().unwrap()),
        };
        assert_eq!(Notice::decode(&n.encode()), Some(n));
    }
}
