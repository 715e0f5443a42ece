//! rtnetlink: links (index by name, up and down), addresses, routes and
//! source rules, with netlink-packet-route's codec.

use crate::transport::{Conn, Transport};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The main routing table.
pub const TABLE_MAIN: u32 = 254;

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Its index.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Administratively up.
    pub up: bool,
}

/// One address on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Address {
    /// The interface's index.
    pub index: u32,
    /// The address.
    pub addr: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
}

/// One route (unicast, one next hop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// Destination network (the unspecified address for a default route).
    pub dst: IpAddr,
    /// Its prefix length (0 for a default route).
    pub prefix: u8,
    /// Next hop, None for an on-link route.
    pub gateway: Option<IpAddr>,
    /// Outgoing interface.
    pub oif: Option<u32>,
    /// Metric (priority); lower wins.
    pub metric: u32,
    /// Routing table.
    pub table: u32,
}

impl Route {
    /// A default route via `gateway` out of `oif` in the main table.
    pub fn default_via(gateway: IpAddr, oif: u32, metric: u32) -> Self {
        let dst = match gateway {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        Route {
            dst,
            prefix: 0,
            gateway: Some(gateway),
            oif: Some(oif),
            metric,
            table: TABLE_MAIN,
        }
    }

    /// Whether this is a default route.
    pub fn is_default(&self) -> bool {
        self.prefix == 0
    }
}

/// A source rule: traffic from `src/prefix` looks up `table`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Source network.
    pub src: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
    /// The table to look up.
    pub table: u32,
    /// The rule's priority (order).
    pub priority: u32,
}

fn family(a: IpAddr) -> AddressFamily {
    match a {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn ip_of(r: &RouteAddress) -> Option<IpAddr> {
    match r {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// A client of one kernel's rtnetlink.
pub struct Rtnl<T> {
    conn: Conn<T>,
}

impl<T: Transport> Rtnl<T> {
    /// Over a `NETLINK_ROUTE` transport.
    pub fn new(transport: T) -> Self {
        Rtnl {
            conn: Conn::new(transport),
        }
    }

    fn call(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.conn.request(msg, flags)
    }

    /// Every interface.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let replies = self.call(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for r in replies {
            if let RouteNetlinkMessage::NewLink(m) = r {
                let name = m.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                });
                out.push(Link {
                    index: m.header.index,
                    name: name.unwrap_or_default(),
                    up: m.header.flags.contains(LinkFlags::Up),
                });
            }
        }
        Ok(out)
    }

    /// Every interface as (index, administratively up): what a path
    /// manager watches on any kernel.
    pub fn link_states(&mut self) -> io::Result<Vec<(u32, bool)>> {
        Ok(self.links()?.into_iter().map(|l| (l.index, l.up)).collect())
    }

    /// The index of the interface called `name`, with an error naming it.
    pub fn link_index(&mut self, name: &str) -> io::Result<u32> {
        self.links()?
            .into_iter()
            .find(|l| l.name == name)
            .map(|l| l.index)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("interface {name:?} does not exist in this network namespace"),
                )
            })
    }

    /// Sets an interface administratively up or down.
    pub fn set_link_up(&mut self, index: u32, up: bool) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.change_mask = LinkFlags::Up;
        if up {
            m.header.flags = LinkFlags::Up;
        }
        self.call(RouteNetlinkMessage::SetLink(m), 0)
            .map(drop)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot set interface {index} {}: {e}",
                        if up { "up" } else { "down" }
                    ),
                )
            })
    }

    /// Puts interface `index` in link group `group` (`ip link set dev X
    /// group N`); the `costaware` MPTCP scheduler of dropshim's kernels
    /// reads an interface's group as its cost.
    pub fn set_link_group(&mut self, index: u32, group: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Group(group));
        self.call(RouteNetlinkMessage::SetLink(m), 0)
            .map(drop)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot put interface {index} in link group {group}: {e}"),
                )
            })
    }

    /// Every address, of one interface or of all (link-local IPv6 ones
    /// included).
    pub fn addresses(&mut self, index: Option<u32>) -> io::Result<Vec<Address>> {
        let replies = self.call(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for r in replies {
            if let RouteNetlinkMessage::NewAddress(m) = r {
                if index.is_some_and(|i| i != m.header.index) {
                    continue;
                }
                // IFA_LOCAL is the address itself (IFA_ADDRESS is the peer's
                // on point-to-point links); IPv6 only sends IFA_ADDRESS.
                let local = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(a) => Some(*a),
                    _ => None,
                });
                let address = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(a) => Some(*a),
                    _ => None,
                });
                if let Some(addr) = local.or(address) {
                    out.push(Address {
                        index: m.header.index,
                        addr,
                        prefix: m.header.prefix_len,
                    });
                }
            }
        }
        Ok(out)
    }

    fn address_message(a: &Address) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.family = family(a.addr);
        m.header.prefix_len = a.prefix;
        m.header.index = a.index;
        if a.addr.is_ipv6() {
            // Usable at once: no duplicate address detection wait.
            m.header.flags = AddressHeaderFlags::Nodad;
        }
        m.attributes.push(AddressAttribute::Local(a.addr));
        m.attributes.push(AddressAttribute::Address(a.addr));
        m
    }

    /// Adds an address (IPv6 ones without duplicate detection).
    pub fn add_address(&mut self, a: &Address) -> io::Result<()> {
        self.call(
            RouteNetlinkMessage::NewAddress(Self::address_message(a)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot add address {}/{} to interface {}: {e}",
                    a.addr, a.prefix, a.index
                ),
            )
        })
    }

    /// Deletes an address.
    pub fn delete_address(&mut self, a: &Address) -> io::Result<()> {
        self.call(RouteNetlinkMessage::DelAddress(Self::address_message(a)), 0)
            .map(drop)
    }

    /// Unicast routes of `table` for one family (`v6`).
    pub fn routes(&mut self, v6: bool, table: u32) -> io::Result<Vec<Route>> {
        let mut req = RouteMessage::default();
        req.header.address_family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let replies = self.call(RouteNetlinkMessage::GetRoute(req), NLM_F_DUMP)?;
        let mut out = Vec::new();
        for r in replies {
            let RouteNetlinkMessage::NewRoute(m) = r else {
                continue;
            };
            if m.header.kind != RouteType::Unicast {
                continue;
            }
            let mut t = u32::from(m.header.table);
            let (mut dst, mut gateway, mut oif, mut metric) = (None, None, None, 0);
            for a in &m.attributes {
                match a {
                    RouteAttribute::Table(x) => t = *x,
                    RouteAttribute::Destination(d) => dst = ip_of(d),
                    RouteAttribute::Gateway(g) => gateway = ip_of(g),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Priority(p) => metric = *p,
                    _ => {}
                }
            }
            if t != table {
                continue;
            }
            let dst = dst.unwrap_or(if v6 {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            });
            out.push(Route {
                dst,
                prefix: m.header.destination_prefix_length,
                gateway,
                oif,
                metric,
                table: t,
            });
        }
        out.sort();
        Ok(out)
    }

    fn route_message(r: &Route) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = family(r.dst);
        m.header.destination_prefix_length = r.prefix;
        m.header.protocol = RouteProtocol::Static;
        m.header.kind = RouteType::Unicast;
        m.header.scope = if r.gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if r.table < 256 {
            m.header.table = r.table as u8;
        } else {
            m.header.table = 252; // RT_TABLE_COMPAT: the attribute says which
            m.attributes.push(RouteAttribute::Table(r.table));
        }
        if r.prefix > 0 {
            m.attributes.push(RouteAttribute::Destination(r.dst.into()));
        }
        if let Some(g) = r.gateway {
            m.attributes.push(RouteAttribute::Gateway(g.into()));
        }
        if let Some(i) = r.oif {
            m.attributes.push(RouteAttribute::Oif(i));
        }
        if r.metric != 0 {
            m.attributes.push(RouteAttribute::Priority(r.metric));
        }
        m
    }

    /// Adds a route.
    pub fn add_route(&mut self, r: &Route) -> io::Result<()> {
        self.call(
            RouteNetlinkMessage::NewRoute(Self::route_message(r)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot add route {}/{}{} metric {}: {e}",
                    r.dst,
                    r.prefix,
                    r.gateway.map(|g| format!(" via {g}")).unwrap_or_default(),
                    r.metric
                ),
            )
        })
    }

    /// Deletes a route.
    pub fn delete_route(&mut self, r: &Route) -> io::Result<()> {
        self.call(RouteNetlinkMessage::DelRoute(Self::route_message(r)), 0)
            .map(drop)
    }

    /// Source rules of one family (rules without a source are left out).
    pub fn rules(&mut self, v6: bool) -> io::Result<Vec<Rule>> {
        let mut req = RuleMessage::default();
        req.header.family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let replies = self.call(RouteNetlinkMessage::GetRule(req), NLM_F_DUMP)?;
        let mut out = Vec::new();
        for r in replies {
            let RouteNetlinkMessage::NewRule(m) = r else {
                continue;
            };
            let mut table = u32::from(m.header.table);
            let (mut src, mut priority) = (None, 0);
            for a in &m.attributes {
                match a {
                    RuleAttribute::Source(s) => src = Some(*s),
                    RuleAttribute::Table(t) => table = *t,
                    RuleAttribute::Priority(p) => priority = *p,
                    _ => {}
                }
            }
            if let Some(src) = src {
                out.push(Rule {
                    src,
                    prefix: m.header.src_len,
                    table,
                    priority,
                });
            }
        }
        Ok(out)
    }

    fn rule_message(r: &Rule) -> RuleMessage {
        let mut m = RuleMessage::default();
        m.header.family = family(r.src);
        m.header.src_len = r.prefix;
        m.header.action = RuleAction::ToTable;
        m.header.table = if r.table < 256 { r.table as u8 } else { 0 };
        m.attributes.push(RuleAttribute::Source(r.src));
        m.attributes.push(RuleAttribute::Table(r.table));
        m.attributes.push(RuleAttribute::Priority(r.priority));
        m
    }

    /// Adds a source rule.
    pub fn add_rule(&mut self, r: &Rule) -> io::Result<()> {
        self.call(
            RouteNetlinkMessage::NewRule(Self::rule_message(r)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Deletes a source rule.
    pub fn delete_rule(&mut self, r: &Rule) -> io::Result<()> {
        self.call(RouteNetlinkMessage::DelRule(Self::rule_message(r)), 0)
            .map(drop)
    }
}
