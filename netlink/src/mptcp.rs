//! The `mptcp_pm` generic netlink family (what `ip mptcp` and mptcpd
//! speak): endpoints (add, delete, get, dump, flush, set flags), limits,
//! the userspace path manager's commands (announce, remove, subflow
//! create and destroy) and the `mptcp_pm_events` multicast events.
//!
//! No synchronous crate of the rust-netlink family covers this family
//! (the `mptcp-pm` crate is built on an async runtime), so its messages
//! are written here on netlink-packet-generic's [`GenlFamily`] and
//! netlink-packet-core's attribute codec.

use crate::genl::{self, Family};
use crate::transport::{Conn, Transport};
use netlink_packet_core::{
    emit_u16, emit_u32, parse_u16, parse_u32, parse_u8, DecodeError, DefaultNla, Emitable, Nla,
    NlaBuffer, NlasIterator, Parseable, ParseableParametrized, NLA_F_NESTED, NLM_F_DUMP,
};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The family's name.
pub const FAMILY_NAME: &str = "mptcp_pm";
/// The events' multicast group.
pub const EVENTS_GROUP: &str = "mptcp_pm_events";
const VERSION: u8 = 1;

/// `MPTCP_PM_CMD_*`.
#[allow(missing_docs)]
pub mod cmd {
    pub const ADD_ADDR: u8 = 1;
    pub const DEL_ADDR: u8 = 2;
    pub const GET_ADDR: u8 = 3;
    pub const FLUSH_ADDRS: u8 = 4;
    pub const SET_LIMITS: u8 = 5;
    pub const GET_LIMITS: u8 = 6;
    pub const SET_FLAGS: u8 = 7;
    pub const ANNOUNCE: u8 = 8;
    pub const REMOVE: u8 = 9;
    pub const SUBFLOW_CREATE: u8 = 10;
    pub const SUBFLOW_DESTROY: u8 = 11;
}

const ATTR_ADDR: u16 = 1;
const ATTR_RCV_ADD_ADDRS: u16 = 2;
const ATTR_SUBFLOWS: u16 = 3;
const ATTR_TOKEN: u16 = 4;
const ATTR_LOC_ID: u16 = 5;
const ATTR_ADDR_REMOTE: u16 = 6;

const ADDR_ATTR_FAMILY: u16 = 1;
const ADDR_ATTR_ID: u16 = 2;
const ADDR_ATTR_ADDR4: u16 = 3;
const ADDR_ATTR_ADDR6: u16 = 4;
const ADDR_ATTR_PORT: u16 = 5;
const ADDR_ATTR_FLAGS: u16 = 6;
const ADDR_ATTR_IF_IDX: u16 = 7;

/// Endpoint flags, bit for bit the kernel's `MPTCP_PM_ADDR_FLAG_*`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct EndpointFlags(pub u32);

impl EndpointFlags {
    /// Announce the address to the peer (ADD_ADDR).
    pub const SIGNAL: u32 = 1 << 0;
    /// Open subflows from this address.
    pub const SUBFLOW: u32 = 1 << 1;
    /// Subflows from it are backups.
    pub const BACKUP: u32 = 1 << 2;
    /// Subflows to every address the peer announced.
    pub const FULLMESH: u32 = 1 << 3;
    /// Set by the kernel on endpoints it created itself for a subflow.
    pub const IMPLICIT: u32 = 1 << 4;

    const NAMES: [(u32, &'static str); 5] = [
        (Self::SIGNAL, "signal"),
        (Self::SUBFLOW, "subflow"),
        (Self::BACKUP, "backup"),
        (Self::FULLMESH, "fullmesh"),
        (Self::IMPLICIT, "implicit"),
    ];

    /// The flags for a device file's endpoint roles.
    pub fn from_roles(roles: &[dropshim_conf::EndpointRole]) -> Self {
        use dropshim_conf::EndpointRole::*;
        EndpointFlags(roles.iter().fold(0, |acc, r| {
            acc | match r {
                Signal => Self::SIGNAL,
                Subflow => Self::SUBFLOW,
                Backup => Self::BACKUP,
                Fullmesh => Self::FULLMESH,
            }
        }))
    }

    /// Parses names as `ip mptcp endpoint` writes them.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let mut bits = 0;
        for n in names {
            bits |= Self::NAMES.iter().find(|(_, name)| *name == n)?.0;
        }
        Some(EndpointFlags(bits))
    }

    /// Whether every bit of `bit` is set.
    pub fn contains(self, bit: u32) -> bool {
        self.0 & bit == bit
    }

    /// Flag names in the kernel's order (unknown bits as hex).
    pub fn names(self) -> Vec<String> {
        let mut out: Vec<String> = Self::NAMES
            .iter()
            .filter(|(bit, _)| self.0 & bit != 0)
            .map(|(_, n)| n.to_string())
            .collect();
        let unknown = self.0 & !Self::NAMES.iter().fold(0, |a, (b, _)| a | b);
        if unknown != 0 {
            out.push(format!("{unknown:#x}"));
        }
        out
    }
}

impl fmt::Display for EndpointFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = self.names();
        if names.is_empty() {
            f.write_str("(none)")
        } else {
            f.write_str(&names.join(" "))
        }
    }
}

/// One MPTCP endpoint, as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The endpoint id (announced to peers).
    pub id: u8,
    /// Its address.
    pub addr: IpAddr,
    /// 0 when the endpoint has no port of its own.
    pub port: u16,
    /// Its flags.
    pub flags: EndpointFlags,
    /// The interface the endpoint is bound to, if any.
    pub ifindex: Option<u32>,
}

/// An endpoint to add; the kernel picks the id unless one is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEndpoint {
    /// Its address.
    pub addr: IpAddr,
    /// A port of its own (signal endpoints), or 0.
    pub port: u16,
    /// Its flags.
    pub flags: EndpointFlags,
    /// The interface to bind it to.
    pub ifindex: Option<u32>,
    /// The id to use, or None to let the kernel choose.
    pub id: Option<u8>,
}

/// `ip mptcp limits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Extra subflows per connection.
    pub subflows: u32,
    /// Addresses accepted from a peer's ADD_ADDR.
    pub add_addr_accepted: u32,
}

/// One attribute of a nested `MPTCP_PM_ATTR_ADDR` (or `ADDR_REMOTE`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum AddrAttr {
    Family(u16),
    Id(u8),
    Addr4(Ipv4Addr),
    Addr6(Ipv6Addr),
    Port(u16),
    Flags(u32),
    IfIdx(u32),
    Other(DefaultNla),
}

impl Nla for AddrAttr {
    fn value_len(&self) -> usize {
        match self {
            AddrAttr::Id(_) => 1,
            AddrAttr::Family(_) | AddrAttr::Port(_) => 2,
            AddrAttr::Addr4(_) | AddrAttr::Flags(_) | AddrAttr::IfIdx(_) => 4,
            AddrAttr::Addr6(_) => 16,
            AddrAttr::Other(n) => n.value_len(),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            AddrAttr::Family(_) => ADDR_ATTR_FAMILY,
            AddrAttr::Id(_) => ADDR_ATTR_ID,
            AddrAttr::Addr4(_) => ADDR_ATTR_ADDR4,
            AddrAttr::Addr6(_) => ADDR_ATTR_ADDR6,
            AddrAttr::Port(_) => ADDR_ATTR_PORT,
            AddrAttr::Flags(_) => ADDR_ATTR_FLAGS,
            AddrAttr::IfIdx(_) => ADDR_ATTR_IF_IDX,
            AddrAttr::Other(n) => n.kind(),
        }
    }
    fn emit_value(&self, b: &mut [u8]) {
        match self {
            AddrAttr::Family(v) | AddrAttr::Port(v) => emit_u16(b, *v).unwrap_or_default(),
            AddrAttr::Id(v) => b[0] = *v,
            AddrAttr::Addr4(a) => b[..4].copy_from_slice(&a.octets()),
            AddrAttr::Addr6(a) => b[..16].copy_from_slice(&a.octets()),
            AddrAttr::Flags(v) | AddrAttr::IfIdx(v) => emit_u32(b, *v).unwrap_or_default(),
            AddrAttr::Other(n) => n.emit_value(b),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for AddrAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() {
            ADDR_ATTR_FAMILY => AddrAttr::Family(parse_u16(v)?),
            ADDR_ATTR_ID => AddrAttr::Id(parse_u8(v)?),
            ADDR_ATTR_ADDR4 => AddrAttr::Addr4(Ipv4Addr::from(
                <[u8; 4]>::try_from(v).map_err(|_| DecodeError::from("bad IPv4 address"))?,
            )),
            ADDR_ATTR_ADDR6 => AddrAttr::Addr6(Ipv6Addr::from(
                <[u8; 16]>::try_from(v).map_err(|_| DecodeError::from("bad IPv6 address"))?,
            )),
            ADDR_ATTR_PORT => AddrAttr::Port(parse_u16(v)?),
            ADDR_ATTR_FLAGS => AddrAttr::Flags(parse_u32(v)?),
            ADDR_ATTR_IF_IDX => AddrAttr::IfIdx(parse_u32(v)?),
            _ => AddrAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// One top-level attribute of an `mptcp_pm` command.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum PmAttr {
    Addr(Vec<AddrAttr>),
    RcvAddAddrs(u32),
    Subflows(u32),
    Token(u32),
    LocId(u8),
    AddrRemote(Vec<AddrAttr>),
    Other(DefaultNla),
}

impl Nla for PmAttr {
    fn value_len(&self) -> usize {
        match self {
            PmAttr::Addr(a) | PmAttr::AddrRemote(a) => a.as_slice().buffer_len(),
            PmAttr::RcvAddAddrs(_) | PmAttr::Subflows(_) | PmAttr::Token(_) => 4,
            PmAttr::LocId(_) => 1,
            PmAttr::Other(n) => n.value_len(),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            PmAttr::Addr(_) => ATTR_ADDR | NLA_F_NESTED,
            PmAttr::RcvAddAddrs(_) => ATTR_RCV_ADD_ADDRS,
            PmAttr::Subflows(_) => ATTR_SUBFLOWS,
            PmAttr::Token(_) => ATTR_TOKEN,
            PmAttr::LocId(_) => ATTR_LOC_ID,
            PmAttr::AddrRemote(_) => ATTR_ADDR_REMOTE | NLA_F_NESTED,
            PmAttr::Other(n) => n.kind(),
        }
    }
    fn emit_value(&self, b: &mut [u8]) {
        match self {
            PmAttr::Addr(a) | PmAttr::AddrRemote(a) => a.as_slice().emit(b),
            PmAttr::RcvAddAddrs(v) | PmAttr::Subflows(v) | PmAttr::Token(v) => {
                emit_u32(b, *v).unwrap_or_default()
            }
            PmAttr::LocId(v) => b[0] = *v,
            PmAttr::Other(n) => n.emit_value(b),
        }
    }
}

fn parse_addr_attrs(v: &[u8]) -> Result<Vec<AddrAttr>, DecodeError> {
    let mut out = Vec::new();
    for nla in NlasIterator::new(v) {
        out.push(AddrAttr::parse(&nla?)?);
    }
    Ok(out)
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for PmAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() {
            ATTR_ADDR => PmAttr::Addr(parse_addr_attrs(v)?),
            ATTR_RCV_ADD_ADDRS => PmAttr::RcvAddAddrs(parse_u32(v)?),
            ATTR_SUBFLOWS => PmAttr::Subflows(parse_u32(v)?),
            ATTR_TOKEN => PmAttr::Token(parse_u32(v)?),
            ATTR_LOC_ID => PmAttr::LocId(parse_u8(v)?),
            ATTR_ADDR_REMOTE => PmAttr::AddrRemote(parse_addr_attrs(v)?),
            _ => PmAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// An `mptcp_pm` command or its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PmMessage {
    /// One of [`cmd`].
    pub cmd: u8,
    /// Its attributes.
    pub attrs: Vec<PmAttr>,
}

impl GenlFamily for PmMessage {
    fn family_name() -> &'static str {
        FAMILY_NAME
    }
    fn command(&self) -> u8 {
        self.cmd
    }
    fn version(&self) -> u8 {
        VERSION
    }
}

impl Emitable for PmMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for PmMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let mut attrs = Vec::new();
        for nla in NlasIterator::new(buf) {
            attrs.push(PmAttr::parse(&nla?)?);
        }
        Ok(PmMessage {
            cmd: header.cmd,
            attrs,
        })
    }
}

/// The attributes of an address (and its port, id, flags, interface).
pub fn addr_attrs(
    addr: IpAddr,
    port: u16,
    id: Option<u8>,
    flags: u32,
    ifindex: Option<u32>,
) -> Vec<AddrAttr> {
    let mut v = match addr {
        IpAddr::V4(a) => vec![AddrAttr::Family(libc::AF_INET as u16), AddrAttr::Addr4(a)],
        IpAddr::V6(a) => vec![AddrAttr::Family(libc::AF_INET6 as u16), AddrAttr::Addr6(a)],
    };
    if let Some(id) = id {
        v.push(AddrAttr::Id(id));
    }
    if port != 0 {
        v.push(AddrAttr::Port(port));
    }
    if flags != 0 {
        v.push(AddrAttr::Flags(flags));
    }
    if let Some(i) = ifindex {
        v.push(AddrAttr::IfIdx(i));
    }
    v
}

/// Reads an endpoint back from its attributes (None without id or address).
pub fn endpoint_from(attrs: &[AddrAttr]) -> Option<Endpoint> {
    let mut id = None;
    let mut addr = None;
    let mut port = 0;
    let mut flags = 0;
    let mut ifindex = None;
    for a in attrs {
        match a {
            AddrAttr::Id(i) => id = Some(*i),
            AddrAttr::Addr4(a) => addr = Some(IpAddr::V4(*a)),
            AddrAttr::Addr6(a) => addr = Some(IpAddr::V6(*a)),
            AddrAttr::Port(p) => port = *p,
            AddrAttr::Flags(f) => flags = *f,
            AddrAttr::IfIdx(i) if *i != 0 => ifindex = Some(*i),
            _ => {}
        }
    }
    Some(Endpoint {
        id: id?,
        addr: addr?,
        port,
        flags: EndpointFlags(flags),
        ifindex,
    })
}

/// `MPTCP_EVENT_*`: what happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum EventKind {
    Created,
    Established,
    Closed,
    Announced,
    Removed,
    SubEstablished,
    SubClosed,
    SubPriority,
    ListenerCreated,
    ListenerClosed,
    Other(u8),
}

impl From<u8> for EventKind {
    fn from(v: u8) -> Self {
        match v {
            1 => EventKind::Created,
            2 => EventKind::Established,
            3 => EventKind::Closed,
            6 => EventKind::Announced,
            7 => EventKind::Removed,
            10 => EventKind::SubEstablished,
            11 => EventKind::SubClosed,
            13 => EventKind::SubPriority,
            15 => EventKind::ListenerCreated,
            16 => EventKind::ListenerClosed,
            o => EventKind::Other(o),
        }
    }
}

/// One event of the `mptcp_pm_events` group, its attributes decoded
/// (`mptcp_event_attr`); absent ones are None.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Event {
    pub kind: Option<EventKind>,
    pub token: Option<u32>,
    pub local_id: Option<u8>,
    pub remote_id: Option<u8>,
    /// Local address and port (saddr/sport).
    pub local: Option<SocketAddr>,
    /// Remote address and port (daddr/dport).
    pub remote: Option<SocketAddr>,
    pub backup: Option<bool>,
    pub error: Option<u8>,
    pub flags: Option<u16>,
    pub timeout: Option<u32>,
    pub ifindex: Option<u32>,
    pub reset_reason: Option<u32>,
    pub reset_flags: Option<u32>,
    pub server_side: Option<bool>,
}

impl Event {
    fn parse(cmd: u8, buf: &[u8]) -> Result<Self, DecodeError> {
        let mut e = Event {
            kind: Some(EventKind::from(cmd)),
            ..Event::default()
        };
        let (mut saddr, mut daddr, mut sport, mut dport) = (None, None, 0u16, 0u16);
        for nla in NlasIterator::new(buf) {
            let nla = nla?;
            let v = nla.value();
            match nla.kind() {
                1 => e.token = Some(parse_u32(v)?),
                3 => e.local_id = Some(parse_u8(v)?),
                4 => e.remote_id = Some(parse_u8(v)?),
                5 => saddr = ip4(v).map(IpAddr::V4),
                6 => saddr = ip6(v).map(IpAddr::V6),
                7 => daddr = ip4(v).map(IpAddr::V4),
                8 => daddr = ip6(v).map(IpAddr::V6),
                // Ports travel in network byte order.
                9 => sport = u16::from_be(parse_u16(v)?),
                10 => dport = u16::from_be(parse_u16(v)?),
                11 => e.backup = Some(parse_u8(v)? != 0),
                12 => e.error = Some(parse_u8(v)?),
                13 => e.flags = Some(parse_u16(v)?),
                14 => e.timeout = Some(parse_u32(v)?),
                15 => e.ifindex = Some(parse_u32(v)?),
                16 => e.reset_reason = Some(parse_u32(v)?),
                17 => e.reset_flags = Some(parse_u32(v)?),
                18 => e.server_side = Some(parse_u8(v)? != 0),
                _ => {}
            }
        }
        e.local = saddr.map(|a| SocketAddr::new(a, sport));
        e.remote = daddr.map(|a| SocketAddr::new(a, dport));
        Ok(e)
    }
}

fn ip4(v: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(v).ok().map(Ipv4Addr::from)
}

fn ip6(v: &[u8]) -> Option<Ipv6Addr> {
    <[u8; 16]>::try_from(v).ok().map(Ipv6Addr::from)
}

/// An event message as it arrives from the multicast group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMessage(pub Event);

impl GenlFamily for EventMessage {
    fn family_name() -> &'static str {
        FAMILY_NAME
    }
    fn command(&self) -> u8 {
        0
    }
    fn version(&self) -> u8 {
        VERSION
    }
}

impl Emitable for EventMessage {
    fn buffer_len(&self) -> usize {
        0
    }
    fn emit(&self, _: &mut [u8]) {}
}

impl ParseableParametrized<[u8], GenlHeader> for EventMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        Event::parse(header.cmd, buf).map(EventMessage)
    }
}

/// A client of one kernel's `mptcp_pm` family.
pub struct MptcpPm<T> {
    conn: Conn<T>,
    family: Family,
}

impl<T: Transport> MptcpPm<T> {
    /// Resolves the family over a `NETLINK_GENERIC` transport. A kernel
    /// without MPTCP has no such family: the error says so.
    pub fn new(transport: T) -> io::Result<Self> {
        let mut conn = Conn::new(transport);
        let family = genl::resolve(&mut conn, FAMILY_NAME).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "the kernel has no `{FAMILY_NAME}` netlink family: MPTCP is not available \
                         (needs Linux >= 5.7 with CONFIG_MPTCP); use the uml or lkl backend instead"
                    ),
                )
            } else {
                e
            }
        })?;
        Ok(MptcpPm { conn, family })
    }

    /// The resolved family (id and groups).
    pub fn family(&self) -> &Family {
        &self.family
    }

    fn call(&mut self, cmd: u8, attrs: Vec<PmAttr>, flags: u16) -> io::Result<Vec<PmMessage>> {
        let mut msg = GenlMessage::from_payload(PmMessage { cmd, attrs });
        msg.set_resolved_family_id(self.family.id);
        let replies = self.conn.request(msg, flags).map_err(|e| {
            if e.raw_os_error() == Some(libc::EPERM) || e.kind() == io::ErrorKind::PermissionDenied
            {
                io::Error::new(
                    e.kind(),
                    format!("{e}; changing MPTCP settings needs CAP_NET_ADMIN (run as root)"),
                )
            } else {
                e
            }
        })?;
        Ok(replies.into_iter().map(|m| m.payload).collect())
    }

    /// Every endpoint, sorted by id.
    pub fn endpoints(&mut self) -> io::Result<Vec<Endpoint>> {
        let replies = self
            .call(cmd::GET_ADDR, vec![], NLM_F_DUMP)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot list MPTCP endpoints: {e}")))?;
        let mut out: Vec<Endpoint> = replies
            .iter()
            .flat_map(|m| m.attrs.iter())
            .filter_map(|a| match a {
                PmAttr::Addr(v) => endpoint_from(v),
                _ => None,
            })
            .collect();
        out.sort_by_key(|e| e.id);
        Ok(out)
    }

    /// The endpoint with this id.
    pub fn endpoint(&mut self, id: u8) -> io::Result<Endpoint> {
        let replies = self.call(cmd::GET_ADDR, vec![PmAttr::Addr(vec![AddrAttr::Id(id)])], 0)?;
        replies
            .iter()
            .flat_map(|m| m.attrs.iter())
            .find_map(|a| match a {
                PmAttr::Addr(v) => endpoint_from(v),
                _ => None,
            })
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no MPTCP endpoint id {id}"),
                )
            })
    }

    /// Adds an endpoint. The kernel's own reason is in the error if it
    /// refuses (duplicate address, bad flag combination, ...).
    pub fn add_endpoint(&mut self, ep: &NewEndpoint) -> io::Result<()> {
        let attrs = addr_attrs(ep.addr, ep.port, ep.id, ep.flags.0, ep.ifindex);
        self.call(cmd::ADD_ADDR, vec![PmAttr::Addr(attrs)], 0)
            .map(drop)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot add MPTCP endpoint {} ({}): {e}", ep.addr, ep.flags),
                )
            })
    }

    /// Deletes the endpoint with this id.
    pub fn delete_endpoint(&mut self, id: u8) -> io::Result<()> {
        self.call(cmd::DEL_ADDR, vec![PmAttr::Addr(vec![AddrAttr::Id(id)])], 0)
            .map(drop)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot delete MPTCP endpoint id {id}: {e}"),
                )
            })
    }

    /// Deletes every endpoint.
    pub fn flush_endpoints(&mut self) -> io::Result<()> {
        self.call(cmd::FLUSH_ADDRS, vec![], 0).map(drop)
    }

    /// Changes an endpoint's flags (backup, fullmesh), found by id or
    /// address; for the userspace path manager, of one connection
    /// (`token`) towards `remote`.
    pub fn set_flags(
        &mut self,
        local: Vec<AddrAttr>,
        token: Option<u32>,
        remote: Option<SocketAddr>,
    ) -> io::Result<()> {
        let mut attrs = vec![PmAttr::Addr(local)];
        if let Some(t) = token {
            attrs.push(PmAttr::Token(t));
        }
        if let Some(r) = remote {
            attrs.push(PmAttr::AddrRemote(addr_attrs(
                r.ip(),
                r.port(),
                None,
                0,
                None,
            )));
        }
        self.call(cmd::SET_FLAGS, attrs, 0).map(drop)
    }

    /// Reads the limits.
    pub fn limits(&mut self) -> io::Result<Limits> {
        let replies = self
            .call(cmd::GET_LIMITS, vec![], 0)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot read MPTCP limits: {e}")))?;
        let (mut subflows, mut accepted) = (None, None);
        for a in replies.iter().flat_map(|m| m.attrs.iter()) {
            match a {
                PmAttr::Subflows(v) => subflows = Some(*v),
                PmAttr::RcvAddAddrs(v) => accepted = Some(*v),
                _ => {}
            }
        }
        match (subflows, accepted) {
            (Some(subflows), Some(add_addr_accepted)) => Ok(Limits {
                subflows,
                add_addr_accepted,
            }),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "MPTCP limits reply is incomplete",
            )),
        }
    }

    /// Sets the limits.
    pub fn set_limits(&mut self, limits: Limits) -> io::Result<()> {
        self.call(
            cmd::SET_LIMITS,
            vec![
                PmAttr::RcvAddAddrs(limits.add_addr_accepted),
                PmAttr::Subflows(limits.subflows),
            ],
            0,
        )
        .map(drop)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot set MPTCP limits (subflows {}, add_addr_accepted {}): {e}",
                    limits.subflows, limits.add_addr_accepted
                ),
            )
        })
    }

    /// Userspace path manager: announces local address `addr` with id
    /// `id` on connection `token` (ADD_ADDR).
    pub fn announce(&mut self, token: u32, id: u8, addr: SocketAddr) -> io::Result<()> {
        let a = addr_attrs(
            addr.ip(),
            addr.port(),
            Some(id),
            EndpointFlags::SIGNAL,
            None,
        );
        self.call(
            cmd::ANNOUNCE,
            vec![PmAttr::Token(token), PmAttr::Addr(a)],
            0,
        )
        .map(drop)
    }

    /// Userspace path manager: withdraws the address with `id` from
    /// connection `token` (REMOVE_ADDR).
    pub fn remove(&mut self, token: u32, id: u8) -> io::Result<()> {
        self.call(
            cmd::REMOVE,
            vec![PmAttr::Token(token), PmAttr::LocId(id)],
            0,
        )
        .map(drop)
    }

    /// Userspace path manager: opens a subflow of connection `token`
    /// from `local` (with its endpoint id) to `remote`.
    pub fn subflow_create(
        &mut self,
        token: u32,
        local_id: u8,
        local: IpAddr,
        flags: u32,
        ifindex: Option<u32>,
        remote: SocketAddr,
    ) -> io::Result<()> {
        let l = addr_attrs(local, 0, Some(local_id), flags, ifindex);
        let r = addr_attrs(remote.ip(), remote.port(), None, 0, None);
        self.call(
            cmd::SUBFLOW_CREATE,
            vec![PmAttr::Token(token), PmAttr::Addr(l), PmAttr::AddrRemote(r)],
            0,
        )
        .map(drop)
    }

    /// Userspace path manager: closes the subflow `local` -> `remote` of
    /// connection `token`.
    pub fn subflow_destroy(
        &mut self,
        token: u32,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> io::Result<()> {
        let l = addr_attrs(local.ip(), local.port(), None, 0, None);
        let r = addr_attrs(remote.ip(), remote.port(), None, 0, None);
        self.call(
            cmd::SUBFLOW_DESTROY,
            vec![PmAttr::Token(token), PmAttr::Addr(l), PmAttr::AddrRemote(r)],
            0,
        )
        .map(drop)
    }
}

/// A subscription to the `mptcp_pm_events` group of one kernel.
pub struct Events<T> {
    conn: Conn<T>,
}

impl<T: Transport> Events<T> {
    /// Joins the events group, whose id `family` names (resolve it with
    /// [`MptcpPm::family`] on another socket of the same kernel).
    pub fn subscribe(mut transport: T, family: &Family) -> io::Result<Self> {
        let group = family.group(EVENTS_GROUP).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                format!("this kernel's {FAMILY_NAME} family has no {EVENTS_GROUP} group"),
            )
        })?;
        transport.add_membership(group)?;
        Ok(Events {
            conn: Conn::new(transport),
        })
    }

    /// Blocks for the next datagram and returns its events.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> io::Result<Vec<Event>> {
        Ok(self
            .conn
            .recv_messages::<GenlMessage<EventMessage>>()?
            .into_iter()
            .map(|m| m.payload.0)
            .collect())
    }

    /// The transport (for its descriptor, to wait on it).
    pub fn transport(&mut self) -> &mut T {
        self.conn.transport()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dropshim_conf::EndpointRole;

    #[test]
    fn roles_map_to_kernel_flag_bits() {
        let f = EndpointFlags::from_roles(&[EndpointRole::Subflow, EndpointRole::Signal]);
        assert_eq!(f.0, 0b11);
        let f = EndpointFlags::from_roles(&[EndpointRole::Backup, EndpointRole::Fullmesh]);
        assert_eq!(f.0, 0b1100);
        assert_eq!(f.to_string(), "backup fullmesh");
        assert_eq!(EndpointFlags(0x40 | 1).names(), vec!["signal", "0x40"]);
        assert_eq!(
            EndpointFlags::from_names(["subflow", "backup"]),
            Some(EndpointFlags(0b110))
        );
        assert_eq!(EndpointFlags::from_names(["subflw"]), None);
    }

    #[test]
    fn endpoint_command_round_trips_through_the_codec() {
        let msg = PmMessage {
            cmd: cmd::ADD_ADDR,
            attrs: vec![PmAttr::Addr(addr_attrs(
                "2001:2::7".parse().unwrap(),
                4242,
                Some(9),
                EndpointFlags::SIGNAL | EndpointFlags::BACKUP,
                Some(3),
            ))],
        };
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.emit(&mut buf);
        assert_eq!(buf.len() % 4, 0);
        // The nested flag is on the wire.
        assert_eq!(
            u16::from_ne_bytes([buf[2], buf[3]]),
            ATTR_ADDR | NLA_F_NESTED
        );
        let back = PmMessage::parse_with_param(
            &buf,
            GenlHeader {
                cmd: cmd::ADD_ADDR,
                version: 1,
            },
        )
        .unwrap();
        assert_eq!(back, msg);
        let PmAttr::Addr(a) = &back.attrs[0] else {
            panic!("{back:?}")
        };
        assert_eq!(
            endpoint_from(a),
            Some(Endpoint {
                id: 9,
                addr: "2001:2::7".parse().unwrap(),
                port: 4242,
                flags: EndpointFlags(0b101),
                ifindex: Some(3),
            })
        );
        // Without an id the kernel's answer is unusable: no endpoint.
        assert_eq!(
            endpoint_from(&addr_attrs("198.18.0.1".parse().unwrap(), 0, None, 0, None)),
            None
        );
    }

    #[test]
    fn event_attributes_decode_with_network_order_ports() {
        // MPTCP_EVENT_SUB_ESTABLISHED with token, ids, addresses, ports.
        let mut b = Vec::new();
        let mut put = |ty: u16, v: &[u8]| {
            b.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
            b.extend_from_slice(&ty.to_ne_bytes());
            b.extend_from_slice(v);
            b.resize((b.len() + 3) & !3, 0);
        };
        put(1, &0xdead_beefu32.to_ne_bytes());
        put(2, &(libc::AF_INET as u16).to_ne_bytes());
        put(3, &[1]);
        put(4, &[2]);
        put(5, &[198, 18, 1, 1]);
        put(7, &[198, 18, 1, 2]);
        put(9, &40000u16.to_be_bytes());
        put(10, &5201u16.to_be_bytes());
        put(11, &[1]);
        put(15, &7u32.to_ne_bytes());
        let e = EventMessage::parse_with_param(
            &b,
            GenlHeader {
                cmd: 10,
                version: 1,
            },
        )
        .unwrap()
        .0;
        assert_eq!(e.kind, Some(EventKind::SubEstablished));
        assert_eq!(e.token, Some(0xdead_beef));
        assert_eq!((e.local_id, e.remote_id), (Some(1), Some(2)));
        assert_eq!(e.local, Some("198.18.1.1:40000".parse().unwrap()));
        assert_eq!(e.remote, Some("198.18.1.2:5201".parse().unwrap()));
        assert_eq!(e.backup, Some(true));
        assert_eq!(e.ifindex, Some(7));
    }
}
