//! Netlink requests to the library kernel (not the host's): links,
//! addresses, routes (rtnetlink) and the MPTCP path manager (generic
//! netlink family "mptcp_pm"). Messages are built by hand: the handful
//! needed here are a few fixed headers plus attributes.

use std::net::IpAddr;

use crate::{check, Error, Fd, Lkl, Result};

const NETLINK_ROUTE: i32 = 0;
const NETLINK_GENERIC: i32 = 16;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const MPTCP_PM_CMD_ADD_ADDR: u8 = 1;
const MPTCP_PM_CMD_SET_LIMITS: u8 = 5;
const MPTCP_PM_ATTR_ADDR: u16 = 1;
const MPTCP_PM_ATTR_RCV_ADD_ADDRS: u16 = 2;
const MPTCP_PM_ATTR_SUBFLOWS: u16 = 3;
const MPTCP_PM_ADDR_ATTR_FAMILY: u16 = 1;
const MPTCP_PM_ADDR_ATTR_ADDR4: u16 = 3;
const MPTCP_PM_ADDR_ATTR_ADDR6: u16 = 4;
const MPTCP_PM_ADDR_ATTR_FLAGS: u16 = 6;
const MPTCP_PM_ADDR_ATTR_IF_IDX: u16 = 7;
const NLA_F_NESTED: u16 = 0x8000;

/// MPTCP endpoint flags (MPTCP_PM_ADDR_FLAG_*).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MptcpFlags {
    /// Announce the address to the peer (ADD_ADDR).
    pub signal: bool,
    /// Open subflows from this address.
    pub subflow: bool,
    /// Subflows from it are backups.
    pub backup: bool,
    /// Subflows to every peer address.
    pub fullmesh: bool,
}

impl MptcpFlags {
    fn bits(self) -> u32 {
        u32::from(self.signal)
            | u32::from(self.subflow) << 1
            | u32::from(self.backup) << 2
            | u32::from(self.fullmesh) << 3
    }
}

fn attr(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(data);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

fn ip_bytes(a: IpAddr) -> (u8, Vec<u8>) {
    match a {
        IpAddr::V4(v4) => (libc::AF_INET as u8, v4.octets().to_vec()),
        IpAddr::V6(v6) => (libc::AF_INET6 as u8, v6.octets().to_vec()),
    }
}

pub(crate) struct Netlink<'a> {
    lkl: &'a Lkl,
    fd: Fd,
    seq: std::cell::Cell<u32>,
    mptcp_family: u16,
}

impl<'a> Netlink<'a> {
    pub(crate) fn open(lkl: &'a Lkl) -> Result<Netlink<'a>> {
        let fd = lkl.socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_ROUTE,
        )?;
        Ok(Netlink {
            lkl,
            fd,
            seq: std::cell::Cell::new(1),
            mptcp_family: 0,
        })
    }

    pub(crate) fn open_generic(lkl: &'a Lkl) -> Result<Netlink<'a>> {
        let fd = lkl.socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_GENERIC,
        )?;
        let mut nl = Netlink {
            lkl,
            fd,
            seq: std::cell::Cell::new(1),
            mptcp_family: 0,
        };
        let mut p = vec![CTRL_CMD_GETFAMILY, 1, 0, 0];
        attr(&mut p, CTRL_ATTR_FAMILY_NAME, b"mptcp_pm\0");
        let reply = nl.request(
            GENL_ID_CTRL,
            0,
            &p,
            "resolve generic netlink family mptcp_pm",
        )?;
        nl.mptcp_family = find_u16_attr(&reply, 16 + 4, CTRL_ATTR_FAMILY_ID).ok_or_else(|| {
            Error::Host("the library kernel has no mptcp_pm netlink family (MPTCP missing?)".into())
        })?;
        Ok(nl)
    }

    pub(crate) fn close(self) {
        let _ = self.lkl.close(self.fd);
    }

    /// Sends one request and returns the first non-error reply message (or
    /// an empty vector when the kernel only acknowledged).
    fn request(&self, ty: u16, flags: u16, payload: &[u8], what: &str) -> Result<Vec<u8>> {
        let seq = self.seq.get();
        self.seq.set(seq + 1);
        let mut msg = Vec::with_capacity(16 + payload.len());
        msg.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&ty.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(payload);
        self.lkl.send(self.fd, &msg, 0)?;
        let mut reply = Vec::new();
        let mut buf = vec![0u8; 16384];
        loop {
            let n = self.lkl.recv(self.fd, &mut buf, 0)?;
            let mut off = 0;
            while off + 16 <= n {
                let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]])
                    as usize;
                let mty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                let mseq =
                    u32::from_ne_bytes([buf[off + 8], buf[off + 9], buf[off + 10], buf[off + 11]]);
                if len < 16 || off + len > n {
                    return Err(Error::Host(format!("{what}: malformed netlink reply")));
                }
                if mseq == seq {
                    if mty == NLMSG_ERROR {
                        let err = i32::from_ne_bytes([
                            buf[off + 16],
                            buf[off + 17],
                            buf[off + 18],
                            buf[off + 19],
                        ]);
                        if err != 0 {
                            return check(|| what.to_string(), err as i64).map(|_| Vec::new());
                        }
                        return Ok(reply);
                    }
                    if reply.is_empty() {
                        reply = buf[off..off + len].to_vec();
                    }
                }
                off += (len + 3) & !3;
            }
        }
    }

    pub(crate) fn link_up(&self, ifindex: i32) -> Result<()> {
        let mut p = vec![0u8; 16];
        p[0] = libc::AF_UNSPEC as u8;
        p[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        p[8..12].copy_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
        p[12..16].copy_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
        self.request(RTM_NEWLINK, 0, &p, &format!("bring up interface {ifindex}"))
            .map(|_| ())
    }

    /// Sets an interface's link group (IFLA_GROUP), as `ip link set dev X group N`.
    pub(crate) fn set_group(&self, ifindex: i32, group: u32) -> Result<()> {
        let mut p = vec![0u8; 16];
        p[0] = libc::AF_UNSPEC as u8;
        p[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        attr(&mut p, 27, &group.to_ne_bytes()); // IFLA_GROUP
        self.request(
            RTM_NEWLINK,
            0,
            &p,
            &format!("set the group of interface {ifindex} to {group}"),
        )
        .map(|_| ())
    }

    pub(crate) fn add_addr(&self, ifindex: i32, addr: IpAddr, prefix: u8) -> Result<()> {
        let (family, bytes) = ip_bytes(addr);
        // IFA_F_NODAD: the address is usable at once (no duplicate detection wait).
        let flags = if family == libc::AF_INET6 as u8 {
            0x02
        } else {
            0
        };
        let mut p = vec![family, prefix, flags, 0];
        p.extend_from_slice(&ifindex.to_ne_bytes());
        attr(&mut p, 2, &bytes); // IFA_LOCAL
        attr(&mut p, 1, &bytes); // IFA_ADDRESS
        self.request(
            RTM_NEWADDR,
            NLM_F_CREATE | NLM_F_EXCL,
            &p,
            &format!("add address {addr}/{prefix}"),
        )
        .map(|_| ())
    }

    pub(crate) fn add_route(
        &self,
        ifindex: i32,
        dst: IpAddr,
        prefix: u8,
        gw: Option<IpAddr>,
    ) -> Result<()> {
        let (family, bytes) = ip_bytes(dst);
        // rtmsg: family, dst_len, src_len, tos, table main, proto boot,
        // scope (link without a gateway), type unicast, flags.
        let scope = if gw.is_some() { 0 } else { 253 };
        let mut p = vec![family, prefix, 0, 0, 254, 3, scope, 1, 0, 0, 0, 0];
        if prefix > 0 {
            attr(&mut p, 1, &bytes); // RTA_DST
        }
        if let Some(g) = gw {
            attr(&mut p, 5, &ip_bytes(g).1); // RTA_GATEWAY
        }
        attr(&mut p, 4, &(ifindex as u32).to_ne_bytes()); // RTA_OIF
        self.request(
            RTM_NEWROUTE,
            NLM_F_CREATE | NLM_F_EXCL,
            &p,
            &format!("add route {dst}/{prefix}"),
        )
        .map(|_| ())
    }

    pub(crate) fn mptcp_set_limits(&self, subflows: u32, add_addr_accepted: u32) -> Result<()> {
        let mut p = vec![MPTCP_PM_CMD_SET_LIMITS, 1, 0, 0];
        attr(
            &mut p,
            MPTCP_PM_ATTR_RCV_ADD_ADDRS,
            &add_addr_accepted.to_ne_bytes(),
        );
        attr(&mut p, MPTCP_PM_ATTR_SUBFLOWS, &subflows.to_ne_bytes());
        self.request(self.mptcp_family, 0, &p, "set MPTCP limits")
            .map(|_| ())
    }

    pub(crate) fn mptcp_add_endpoint(
        &self,
        addr: IpAddr,
        ifindex: Option<i32>,
        flags: MptcpFlags,
    ) -> Result<()> {
        let (family, bytes) = ip_bytes(addr);
        let mut nested = Vec::new();
        attr(
            &mut nested,
            MPTCP_PM_ADDR_ATTR_FAMILY,
            &u16::from(family).to_ne_bytes(),
        );
        let a = if family == libc::AF_INET as u8 {
            MPTCP_PM_ADDR_ATTR_ADDR4
        } else {
            MPTCP_PM_ADDR_ATTR_ADDR6
        };
        attr(&mut nested, a, &bytes);
        attr(
            &mut nested,
            MPTCP_PM_ADDR_ATTR_FLAGS,
            &flags.bits().to_ne_bytes(),
        );
        if let Some(i) = ifindex {
            attr(&mut nested, MPTCP_PM_ADDR_ATTR_IF_IDX, &i.to_ne_bytes());
        }
        let mut p = vec![MPTCP_PM_CMD_ADD_ADDR, 1, 0, 0];
        attr(&mut p, MPTCP_PM_ATTR_ADDR | NLA_F_NESTED, &nested);
        self.request(
            self.mptcp_family,
            0,
            &p,
            &format!("add MPTCP endpoint {addr}"),
        )
        .map(|_| ())
    }
}

fn find_u16_attr(msg: &[u8], mut off: usize, ty: u16) -> Option<u16> {
    while off + 4 <= msg.len() {
        let len = u16::from_ne_bytes([msg[off], msg[off + 1]]) as usize;
        let t = u16::from_ne_bytes([msg[off + 2], msg[off + 3]]) & 0x3fff;
        if len < 4 {
            return None;
        }
        if t == ty && len >= 6 && off + 6 <= msg.len() {
            return Some(u16::from_ne_bytes([msg[off + 4], msg[off + 5]]));
        }
        off += (len + 3) & !3;
    }
    None
}
