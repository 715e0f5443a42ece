//! What MPTCP is doing right now in this network namespace: connections
//! and their subflows from `NETLINK_SOCK_DIAG` (the source `ss -M` uses).
//!
//! An MPTCP connection is dumped as protocol `IPPROTO_MPTCP` with its
//! `struct mptcp_info`; each subflow is a TCP socket whose ULP is "mptcp",
//! carrying the connection's local token. Joining the two by token gives
//! every connection its subflows.
//!
//! Works over any [`Transport`]: the host's sock_diag socket
//! ([`connections`]) or a library kernel's.

use crate::attr::{self as nl, Attrs, RawMessage};
use crate::transport::{Conn, HostSocket, Protocol, Transport};
use dropshim_abi::MPTCP_INFO_FLAG_FALLBACK;
use netlink_packet_core::NLM_F_DUMP;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const INET_DIAG_REQ_PROTOCOL: u16 = 3;
const INET_DIAG_INFO: u16 = 2;
const INET_DIAG_ULP_INFO: u16 = 19;
const INET_ULP_INFO_NAME: u16 = 1;
const INET_ULP_INFO_MPTCP: u16 = 3;
const MPTCP_SUBFLOW_ATTR_TOKEN_LOC: u16 = 2;
const MPTCP_SUBFLOW_ATTR_FLAGS: u16 = 8;
const MPTCP_SUBFLOW_ATTR_ID_REM: u16 = 9;
const MPTCP_SUBFLOW_ATTR_ID_LOC: u16 = 10;
const MPTCP_SUBFLOW_FLAG_JOIN_REM: u32 = 1 << 2;
const MPTCP_SUBFLOW_FLAG_JOIN_LOC: u32 = 1 << 3;
const MPTCP_SUBFLOW_FLAG_BKUP_REM: u32 = 1 << 4;
const MPTCP_SUBFLOW_FLAG_BKUP_LOC: u32 = 1 << 5;
const TCP_LISTEN: u8 = 10;
/// `struct inet_diag_msg`: family, state, timer, retrans, sockid (48), 5 x u32.
const DIAG_MSG_LEN: usize = 72;

/// One subflow (a TCP connection) of an MPTCP connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subflow {
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote address and port.
    pub remote: SocketAddr,
    /// TCP state as `ss` names it.
    pub state: &'static str,
    /// Endpoint ids, 0 for the initial subflow's addresses.
    pub local_id: u8,
    /// The peer's endpoint id.
    pub remote_id: u8,
    /// Opened with MP_JOIN (not the initial subflow).
    pub join: bool,
    /// Either side marked this subflow as backup.
    pub backup: bool,
}

/// One MPTCP connection (`IPPROTO_MPTCP` socket), listeners excluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MptcpConnection {
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote address and port.
    pub remote: SocketAddr,
    /// State as `ss` names it.
    pub state: &'static str,
    /// The connection's local token; its subflows carry the same one.
    pub token: u32,
    /// Subflows found by token (needs CAP_NET_ADMIN to see ULP info).
    pub subflows: Vec<Subflow>,
    /// Subflow count as MPTCP reports it (`mptcpi_subflows_total`, or
    /// `mptcpi_subflows + 1` on kernels before 6.10).
    pub subflow_count: u32,
    /// Bytes sent / received at the MPTCP level; None before Linux 6.7.
    pub bytes_sent: Option<u64>,
    /// Bytes received at the MPTCP level.
    pub bytes_received: Option<u64>,
    /// The connection fell back to plain TCP.
    pub fallback: bool,
}

/// The MPTCP connections of the calling thread's network namespace (host
/// kernel), with their subflows.
pub fn connections() -> io::Result<Vec<MptcpConnection>> {
    let sock = HostSocket::open(Protocol::SockDiag).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot open a sock_diag netlink socket: {e}"),
        )
    })?;
    connections_over(&mut Conn::new(sock))
}

/// The MPTCP connections of the kernel behind a `NETLINK_SOCK_DIAG`
/// transport, with their subflows.
pub fn connections_over<T: Transport>(conn: &mut Conn<T>) -> io::Result<Vec<MptcpConnection>> {
    let mut dump = |family, protocol| {
        conn.request(
            RawMessage {
                message_type: SOCK_DIAG_BY_FAMILY,
                payload: request(family, protocol),
            },
            NLM_F_DUMP,
        )
    };
    let mut conns = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        let replies = dump(family, libc::IPPROTO_MPTCP)?;
        conns.extend(replies.iter().filter_map(|r| parse_connection(&r.payload)));
    }
    let mut subflows = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        let replies = dump(family, libc::IPPROTO_TCP)?;
        subflows.extend(replies.iter().filter_map(|r| parse_subflow(&r.payload)));
    }
    attach(&mut conns, subflows);
    Ok(conns)
}

/// The local addresses of the MPTCP listeners of the kernel behind a
/// `NETLINK_SOCK_DIAG` transport (an unspecified address: every address).
/// A connection whose local port one of them holds was accepted, not
/// connected: the path manager needs to know which side it is on.
pub fn mptcp_listeners_over<T: Transport>(conn: &mut Conn<T>) -> io::Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        let replies = conn.request(
            RawMessage {
                message_type: SOCK_DIAG_BY_FAMILY,
                payload: request_states(family, libc::IPPROTO_MPTCP, 1 << TCP_LISTEN),
            },
            NLM_F_DUMP,
        )?;
        out.extend(
            replies
                .iter()
                .filter_map(|r| endpoints(&r.payload))
                .filter(|(_, _, state)| *state == TCP_LISTEN)
                .map(|(local, _, _)| local),
        );
    }
    Ok(out)
}

/// Whether `local` (a connection's local address) is one that a listener
/// in `listeners` accepts on.
pub fn accepted_on(local: SocketAddr, listeners: &[SocketAddr]) -> bool {
    listeners
        .iter()
        .any(|l| l.port() == local.port() && (l.ip().is_unspecified() || l.ip() == local.ip()))
}

/// Gives each connection the subflows carrying its token, initial first.
fn attach(conns: &mut [MptcpConnection], subflows: Vec<(u32, Subflow)>) {
    for (token, sf) in subflows {
        if let Some(c) = conns.iter_mut().find(|c| c.token == token) {
            c.subflows.push(sf);
        }
    }
    for c in conns.iter_mut() {
        c.subflows.sort_by_key(|s| (s.join, s.local_id, s.local));
    }
}

/// An `inet_diag_req_v2` for every non-listening socket of one family and
/// protocol, asking for `INET_DIAG_INFO`. The protocol goes in an attribute
/// too, since `IPPROTO_MPTCP` (262) does not fit the u8 field.
fn request(family: libc::c_int, protocol: libc::c_int) -> Vec<u8> {
    request_states(family, protocol, !(1 << TCP_LISTEN))
}

/// An `inet_diag_req_v2` for the sockets of one family and protocol in
/// `states` (a bit per TCP state).
fn request_states(family: libc::c_int, protocol: libc::c_int, states: u32) -> Vec<u8> {
    let mut req = vec![0u8; 56];
    req[0] = family as u8;
    req[1] = protocol as u8;
    req[2] = 1 << (INET_DIAG_INFO - 1);
    req[4..8].copy_from_slice(&states.to_ne_bytes());
    let mut w = nl::AttrWriter::new(&req);
    if protocol > 255 {
        w.put_u32(INET_DIAG_REQ_PROTOCOL, protocol as u32);
    }
    w.buf
}

/// Local and remote addresses and state from an `inet_diag_msg`.
fn endpoints(msg: &[u8]) -> Option<(SocketAddr, SocketAddr, u8)> {
    if msg.len() < DIAG_MSG_LEN {
        return None;
    }
    let family = msg[0] as libc::c_int;
    let state = msg[1];
    let sport = u16::from_be_bytes([msg[4], msg[5]]);
    let dport = u16::from_be_bytes([msg[6], msg[7]]);
    let ip = |b: &[u8]| -> Option<IpAddr> {
        match family {
            libc::AF_INET => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
            libc::AF_INET6 => {
                let a: [u8; 16] = b.try_into().ok()?;
                let v6 = Ipv6Addr::from(a);
                // Dual-stack sockets talking IPv4: show the IPv4 address.
                Some(
                    v6.to_ipv4_mapped()
                        .map(IpAddr::V4)
                        .unwrap_or(IpAddr::V6(v6)),
                )
            }
            _ => None,
        }
    };
    let src = ip(&msg[8..24])?;
    let dst = ip(&msg[24..40])?;
    Some((
        SocketAddr::new(src, sport),
        SocketAddr::new(dst, dport),
        state,
    ))
}

fn parse_connection(msg: &[u8]) -> Option<MptcpConnection> {
    let (local, remote, state) = endpoints(msg)?;
    let info = Attrs::new(&msg[DIAG_MSG_LEN..])
        .find(|(ty, _)| *ty == INET_DIAG_INFO)
        .map(|(_, d)| d);
    let info = info.map(MptcpInfo::parse).unwrap_or_default();
    Some(MptcpConnection {
        local,
        remote,
        state: state_name(state),
        token: info.token,
        subflows: Vec::new(),
        subflow_count: info.subflow_count,
        bytes_sent: info.bytes_sent,
        bytes_received: info.bytes_received,
        fallback: info.flags & MPTCP_INFO_FLAG_FALLBACK != 0,
    })
}

/// A TCP socket that is an MPTCP subflow, with its connection's token.
fn parse_subflow(msg: &[u8]) -> Option<(u32, Subflow)> {
    let (local, remote, state) = endpoints(msg)?;
    let ulp = Attrs::new(&msg[DIAG_MSG_LEN..])
        .find(|(ty, _)| *ty == INET_DIAG_ULP_INFO)?
        .1;
    let mut is_mptcp = false;
    let mut sf_attrs = None;
    for (ty, d) in Attrs::new(ulp) {
        match ty {
            INET_ULP_INFO_NAME => is_mptcp = d.split(|b| *b == 0).next() == Some(b"mptcp"),
            INET_ULP_INFO_MPTCP => sf_attrs = Some(d),
            _ => {}
        }
    }
    if !is_mptcp {
        return None;
    }
    let (mut token, mut flags, mut local_id, mut remote_id) = (None, 0, 0, 0);
    for (ty, d) in Attrs::new(sf_attrs?) {
        match ty {
            MPTCP_SUBFLOW_ATTR_TOKEN_LOC => token = nl::get_u32(d),
            MPTCP_SUBFLOW_ATTR_FLAGS => flags = nl::get_u32(d).unwrap_or(0),
            MPTCP_SUBFLOW_ATTR_ID_LOC => local_id = nl::get_u8(d).unwrap_or(0),
            MPTCP_SUBFLOW_ATTR_ID_REM => remote_id = nl::get_u8(d).unwrap_or(0),
            _ => {}
        }
    }
    Some((
        token?,
        Subflow {
            local,
            remote,
            state: state_name(state),
            local_id,
            remote_id,
            join: flags & (MPTCP_SUBFLOW_FLAG_JOIN_LOC | MPTCP_SUBFLOW_FLAG_JOIN_REM) != 0,
            backup: flags & (MPTCP_SUBFLOW_FLAG_BKUP_LOC | MPTCP_SUBFLOW_FLAG_BKUP_REM) != 0,
        },
    ))
}

/// The fields of `struct mptcp_info` dropshim shows. The struct grew over
/// kernel versions; fields past the end of what the kernel sent are absent.
#[derive(Debug, Default, PartialEq, Eq)]
struct MptcpInfo {
    flags: u32,
    token: u32,
    subflow_count: u32,
    bytes_sent: Option<u64>,
    bytes_received: Option<u64>,
}

impl MptcpInfo {
    // Offsets in struct mptcp_info (include/uapi/linux/mptcp.h, C layout).
    const SUBFLOWS: usize = 0;
    const FLAGS: usize = 8;
    const TOKEN: usize = 12;
    const BYTES_SENT: usize = 56;
    const BYTES_RECEIVED: usize = 64;
    const SUBFLOWS_TOTAL: usize = 80;

    fn parse(d: &[u8]) -> Self {
        let u64_at = |off: usize| d.get(off..off + 8).and_then(nl::get_u64);
        let u32_at = |off: usize| d.get(off..off + 4).and_then(nl::get_u32).unwrap_or(0);
        let extra = d.get(Self::SUBFLOWS).copied().unwrap_or(0) as u32;
        // subflows_total exists since 6.10; before it, `subflows` counted
        // only the joined subflows, not the initial one.
        let total = d
            .get(Self::SUBFLOWS_TOTAL)
            .map(|t| *t as u32)
            .unwrap_or(extra + 1);
        MptcpInfo {
            flags: u32_at(Self::FLAGS),
            token: u32_at(Self::TOKEN),
            subflow_count: total,
            bytes_sent: u64_at(Self::BYTES_SENT),
            bytes_received: u64_at(Self::BYTES_RECEIVED),
        }
    }
}

/// State names as `ss` prints them.
fn state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTAB",
        2 => "SYN-SENT",
        3 => "SYN-RECV",
        4 => "FIN-WAIT-1",
        5 => "FIN-WAIT-2",
        6 => "TIME-WAIT",
        7 => "CLOSE",
        8 => "CLOSE-WAIT",
        9 => "LAST-ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attr::AttrWriter;

    fn diag_msg(family: u8, state: u8, src: &[u8], sport: u16, dst: &[u8], dport: u16) -> Vec<u8> {
        let mut m = vec![0u8; DIAG_MSG_LEN];
        m[0] = family;
        m[1] = state;
        m[4..6].copy_from_slice(&sport.to_be_bytes());
        m[6..8].copy_from_slice(&dport.to_be_bytes());
        m[8..8 + src.len()].copy_from_slice(src);
        m[24..24 + dst.len()].copy_from_slice(dst);
        m
    }

    fn mptcp_info(
        len: usize,
        subflows: u8,
        token: u32,
        sent: u64,
        recv: u64,
        total: u8,
    ) -> Vec<u8> {
        let mut i = vec![0u8; len];
        i[0] = subflows;
        i[12..16].copy_from_slice(&token.to_ne_bytes());
        if len >= 72 {
            i[56..64].copy_from_slice(&sent.to_ne_bytes());
            i[64..72].copy_from_slice(&recv.to_ne_bytes());
        }
        if len > 80 {
            i[80] = total;
        }
        i
    }

    #[test]
    fn connection_and_subflows_join_by_token() {
        let mut w = AttrWriter::new(&diag_msg(
            2,
            1,
            &[198, 18, 0, 2],
            5201,
            &[198, 18, 0, 1],
            40000,
        ));
        w.put(INET_DIAG_INFO, &mptcp_info(96, 1, 0xabcd, 10, 123_456, 2));
        let mut conns = vec![parse_connection(&w.buf).unwrap()];
        assert_eq!(conns[0].local, "198.18.0.2:5201".parse().unwrap());
        assert_eq!(conns[0].remote, "198.18.0.1:40000".parse().unwrap());
        assert_eq!(conns[0].state, "ESTAB");
        assert_eq!(conns[0].token, 0xabcd);
        assert_eq!(conns[0].subflow_count, 2);
        assert_eq!(conns[0].bytes_received, Some(123_456));

        let subflow = |src: [u8; 4], sport, token: u32, flags: u32, id: u8| {
            let mut w = AttrWriter::new(&diag_msg(2, 1, &src, sport, &[198, 18, 0, 1], 40000));
            let ulp = w.begin_nested(INET_DIAG_ULP_INFO);
            w.put(INET_ULP_INFO_NAME, b"mptcp\0");
            let sf = w.begin_nested(INET_ULP_INFO_MPTCP);
            w.put_u32(MPTCP_SUBFLOW_ATTR_TOKEN_LOC, token);
            w.put_u32(MPTCP_SUBFLOW_ATTR_FLAGS, flags);
            w.put_u8(MPTCP_SUBFLOW_ATTR_ID_LOC, id);
            w.end_nested(sf);
            w.end_nested(ulp);
            parse_subflow(&w.buf).unwrap()
        };
        let joined = subflow(
            [198, 18, 1, 2],
            5201,
            0xabcd,
            MPTCP_SUBFLOW_FLAG_JOIN_REM,
            2,
        );
        let initial = subflow([198, 18, 0, 2], 5201, 0xabcd, 0, 0);
        let other = subflow([198, 18, 0, 2], 5202, 0x9999, 0, 0);
        attach(&mut conns, vec![joined, other, initial]);
        let sfs = &conns[0].subflows;
        assert_eq!(sfs.len(), 2, "the other connection's subflow is not ours");
        assert!(!sfs[0].join && sfs[1].join, "initial subflow first");
        assert_eq!(sfs[1].local, "198.18.1.2:5201".parse().unwrap());
        assert_eq!(sfs[1].local_id, 2);
    }

    #[test]
    fn plain_tcp_and_tls_sockets_are_not_subflows() {
        let plain = diag_msg(2, 1, &[198, 18, 0, 2], 22, &[198, 18, 0, 1], 5000);
        assert_eq!(parse_subflow(&plain), None);
        let mut w = AttrWriter::new(&plain);
        let ulp = w.begin_nested(INET_DIAG_ULP_INFO);
        w.put(INET_ULP_INFO_NAME, b"tls\0");
        w.end_nested(ulp);
        assert_eq!(parse_subflow(&w.buf), None);
    }

    #[test]
    fn older_mptcp_info_has_no_byte_counters() {
        // 5.x-sized struct (43 bytes, padded to 48): no bytes, no total.
        let info = MptcpInfo::parse(&mptcp_info(48, 1, 7, 0, 0, 0));
        assert_eq!(info.bytes_sent, None);
        assert_eq!(info.bytes_received, None);
        assert_eq!(info.subflow_count, 2, "subflows + the initial one");
        assert_eq!(info.token, 7);
    }

    #[test]
    fn ipv4_mapped_addresses_show_as_ipv4() {
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..].copy_from_slice(&[198, 18, 0, 2]);
        let m = diag_msg(
            10,
            1,
            &mapped,
            80,
            &"2001:2::1".parse::<Ipv6Addr>().unwrap().octets(),
            9,
        );
        let (l, r, _) = endpoints(&m).unwrap();
        assert_eq!(l, "198.18.0.2:80".parse().unwrap());
        assert_eq!(r, "[2001:2::1]:9".parse().unwrap());
    }
}
