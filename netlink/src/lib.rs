//! dropshim's one netlink layer and its device configurator.
//!
//! Owns every netlink exchange dropshim has with a kernel, whichever
//! kernel it is: the host's (native backend, `dropshim up/down/status`),
//! the uml guest's (its agent runs inside the instance) or the library
//! kernel's (lkl, in the program's process). It speaks
//!
//! - generic netlink family resolution ([`genl`]),
//! - `mptcp_pm`: endpoints, limits, flags, the userspace path manager's
//!   commands and the `mptcp_pm_events` events ([`mptcp`]),
//! - rtnetlink: links, addresses, routes, source rules ([`route`]),
//! - sock_diag for MPTCP connections and their subflows ([`diag`]),
//!
//! over any [`Transport`] (send one datagram, receive one): a host
//! socket ([`HostSocket`]) or the library kernel's socket (backend-lkl
//! implements the trait). [`configure`] applies a device file through it
//! by one code path for all three stacks, with [`sysctl`] for the path
//! manager and scheduler.
//!
//! Messages are encoded and decoded with the rust-netlink family's
//! synchronous codec crates (netlink-packet-core, -route, -generic): plain
//! functions over byte buffers, no runtime, no threads and no socket of
//! their own, which is what a library preloaded into arbitrary programs
//! (and a kernel linked into them) can afford. Written here is only what
//! they lack: the `mptcp_pm` family and its events (the `mptcp-pm` crate
//! needs an async runtime), sock_diag's MPTCP attributes (the sock-diag
//! crate does not decode `mptcp_info` or subflow ULP data), and the host
//! socket itself, which makes raw system calls because inside
//! `libdropshim.so` libc's socket functions are the shim's own hooks
//! (netlink-sys calls them by name).

#![warn(missing_docs)]

pub mod attr;
pub mod configure;
pub mod diag;
pub mod genl;
pub mod mptcp;
pub mod route;
pub mod sysctl;
pub mod transport;

pub use transport::{Conn, HostSocket, Protocol, Transport};

use std::io;

/// The host kernel's `NETLINK_ROUTE` client.
pub fn host_rtnl() -> io::Result<route::Rtnl<HostSocket>> {
    Ok(route::Rtnl::new(HostSocket::open(Protocol::Route)?))
}

/// The host kernel's `mptcp_pm` client.
pub fn host_mptcp_pm() -> io::Result<mptcp::MptcpPm<HostSocket>> {
    mptcp::MptcpPm::new(HostSocket::open(Protocol::Generic)?)
}

/// The index of a host interface, with an error naming it.
pub fn interface_index(name: &str) -> io::Result<u32> {
    host_rtnl()?.link_index(name)
}

/// The name of the host interface with this index, if it exists.
pub fn interface_name(index: u32) -> Option<String> {
    host_rtnl()
        .and_then(|mut r| r.links())
        .ok()?
        .into_iter()
        .find(|l| l.index == index)
        .map(|l| l.name)
}
