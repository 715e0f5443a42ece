//! The device configurator: applies a device file's network part
//! (interfaces up, addresses, default routes, MPTCP endpoints, limits,
//! path manager and scheduler) to one kernel through this crate's netlink
//! layer and that kernel's sysctls. The same code path serves the host
//! (native backend), the uml guest and the library kernel (lkl).
//!
//! Routing rule, the same on every stack: each interface that names a
//! `gateway` gets its own default route via that gateway out of that
//! interface, with metric [`METRIC_BASE`] + the interface's position in
//! the file. The first interface with a gateway of a family carries that
//! family's traffic; the others stay in the table as fallbacks (and for
//! subflows bound to their interface), and several defaults of one family
//! never collide.
//!
//! Ownership decides what is touched. On the host ([`Ownership::Host`])
//! interfaces, addresses and routes belong to the administrator: they are
//! checked, never changed, and only MPTCP is configured. In a stack that
//! exists for the device alone ([`Ownership::Stack`], uml and lkl) the
//! configurator brings links up and adds the addresses and routes too.
//!
//! Every run is idempotent (what already matches is left alone) and
//! journaled ([`Applied`]): a failure undoes the run's own changes, and
//! the journal tells a caller (`dropshim up`) what to undo later.

use crate::mptcp::{Endpoint, EndpointFlags, Limits, MptcpPm, NewEndpoint};
use crate::route::{Address, Route, Rtnl, TABLE_MAIN};
use crate::sysctl::{check_available, MptcpSysctl, Sysctls};
use crate::transport::Transport;
use dropshim_conf::DeviceConfig;
use std::io;
use std::net::IpAddr;

/// Metric of the first interface's default route; the n-th interface's is
/// `METRIC_BASE + n`.
pub const METRIC_BASE: u32 = 100;

/// Who owns the kernel's interfaces, addresses and routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// The host: addresses must already be there; only MPTCP is set.
    Host,
    /// A stack for this device alone: links, addresses and routes are set.
    Stack,
}

/// How the kernel knows one of the device file's interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Iface {
    /// By name, resolved through rtnetlink.
    Named(String),
    /// By index (a device the caller just created).
    Index(u32),
}

/// What to apply and how.
pub struct Options<'a> {
    /// Who owns links, addresses and routes.
    pub ownership: Ownership,
    /// The kernel's interface for each of the file's interfaces, in order.
    pub interfaces: Vec<Iface>,
    /// Endpoints an earlier run added (id, address): these may be replaced
    /// when the file changed; any other differing endpoint is an error.
    pub owned_endpoints: Vec<(u8, IpAddr)>,
    /// The device file's path, for hints in errors.
    pub origin: &'a str,
}

/// An endpoint the configurator added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedEndpoint {
    /// The id the kernel gave it.
    pub id: u8,
    /// Its address.
    pub addr: IpAddr,
    /// Its flags.
    pub flags: EndpointFlags,
    /// The device file's name of its interface.
    pub interface: String,
    /// The kernel's index of that interface.
    pub ifindex: u32,
}

/// What one run changed, with the values it replaced.
#[derive(Debug, Default, Clone)]
pub struct Applied {
    /// Links brought up.
    pub links_up: Vec<u32>,
    /// Addresses added.
    pub addresses: Vec<Address>,
    /// Routes added.
    pub routes: Vec<Route>,
    /// Endpoints added.
    pub endpoints_added: Vec<AddedEndpoint>,
    /// Endpoints deleted (owned ones the file no longer asks for, or asks
    /// for differently).
    pub endpoints_removed: Vec<Endpoint>,
    /// The limits before, when they were changed.
    pub limits_before: Option<Limits>,
    /// The path manager before, when it was changed.
    pub path_manager_before: Option<String>,
    /// The scheduler before, when it was changed.
    pub scheduler_before: Option<String>,
    /// One line per change, for people.
    pub report: Vec<String>,
}

/// One kernel to configure: its rtnetlink, its `mptcp_pm` and its sysctls.
pub struct Kernel<'k, R, G, S: ?Sized> {
    /// rtnetlink of the kernel.
    pub rtnl: &'k mut Rtnl<R>,
    /// `mptcp_pm` of the kernel.
    pub pm: &'k mut MptcpPm<G>,
    /// Sysctls of the kernel.
    pub sys: &'k S,
}

/// One endpoint the file asks for.
struct Wanted {
    interface: String,
    ifindex: u32,
    addr: IpAddr,
    flags: EndpointFlags,
}

/// The state of a kernel as far as a device file describes it; read back
/// the same way on every stack.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceState {
    /// Per interface of the file: its addresses (link-local ones left out),
    /// sorted.
    pub addresses: Vec<Vec<(IpAddr, u8)>>,
    /// Default routes of the main table: (interface position, gateway,
    /// metric), sorted.
    pub default_routes: Vec<(usize, IpAddr, u32)>,
    /// Endpoints: (address, flags, interface position), sorted.
    pub endpoints: Vec<(IpAddr, EndpointFlags, Option<usize>)>,
    /// Limits.
    pub limits: Limits,
    /// Path manager name.
    pub path_manager: String,
    /// Scheduler name.
    pub scheduler: String,
}

impl DeviceState {
    /// As JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// From JSON written by [`DeviceState::to_json`].
    pub fn from_json(text: &str) -> io::Result<Self> {
        serde_json::from_str(text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// One line per item, for people; interfaces named as in the file.
    pub fn lines(&self, names: &[String]) -> Vec<String> {
        let name = |i: usize| names.get(i).cloned().unwrap_or_else(|| format!("#{i}"));
        let mut out = Vec::new();
        for (i, addrs) in self.addresses.iter().enumerate() {
            let list: Vec<String> = addrs.iter().map(|(a, p)| format!("{a}/{p}")).collect();
            out.push(format!("interface {}: {}", name(i), list.join(" ")));
        }
        for (i, gw, metric) in &self.default_routes {
            out.push(format!("default via {gw} dev {} metric {metric}", name(*i)));
        }
        for (a, flags, i) in &self.endpoints {
            let dev = i.map(|i| format!(" dev {}", name(i))).unwrap_or_default();
            out.push(format!("endpoint {a} {flags}{dev}"));
        }
        out.push(format!(
            "limits subflows {} add_addr_accepted {}",
            self.limits.subflows, self.limits.add_addr_accepted
        ));
        out.push(format!("path manager {}", self.path_manager));
        out.push(format!("scheduler {}", self.scheduler));
        out
    }
}

impl<R: Transport, G: Transport, S: Sysctls + ?Sized> Kernel<'_, R, G, S> {
    fn resolve(
        &mut self,
        cfg: &DeviceConfig,
        opts: &Options<'_>,
        problems: &mut Vec<String>,
    ) -> io::Result<Vec<Option<u32>>> {
        let mut links = None;
        let mut out = Vec::new();
        for (iface, how) in cfg.interfaces.iter().zip(&opts.interfaces) {
            out.push(match how {
                Iface::Index(i) => Some(*i),
                Iface::Named(name) => {
                    let all = match &links {
                        Some(l) => l,
                        None => links.insert(self.rtnl.links()?),
                    };
                    match all.iter().find(|l| &l.name == name) {
                        Some(l) => Some(l.index),
                        None => {
                            problems.push(format!(
                                "interface {name:?} does not exist in this network namespace: create it or fix interface {:?} in {}",
                                iface.name, opts.origin
                            ));
                            None
                        }
                    }
                }
            });
        }
        if opts.interfaces.len() != cfg.interfaces.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} interface(s) given for the {} of the device file",
                    opts.interfaces.len(),
                    cfg.interfaces.len()
                ),
            ));
        }
        Ok(out)
    }

    /// Applies the device file. On failure the run's own changes are undone
    /// before the error returns; nothing is changed at all when a check
    /// fails (missing interface or address, unavailable scheduler).
    pub fn apply(&mut self, cfg: &DeviceConfig, opts: &Options<'_>) -> io::Result<Applied> {
        let mut problems = Vec::new();
        let indexes = self.resolve(cfg, opts, &mut problems)?;
        let mptcp = MptcpSysctl::new(self.sys);
        if opts.ownership == Ownership::Host && !mptcp.enabled()? {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "MPTCP is disabled in this network namespace (net.mptcp.enabled = 0): \
                 run `sysctl -w net.mptcp.enabled=1`, then `dropshim up` again",
            ));
        }
        let present = self.rtnl.addresses(None)?;
        let mut wanted = Vec::new();
        for (iface, index) in cfg.interfaces.iter().zip(&indexes) {
            let Some(index) = *index else { continue };
            let flags = EndpointFlags::from_roles(&iface.endpoint);
            let here: Vec<IpAddr> = present
                .iter()
                .filter(|a| a.index == index)
                .map(|a| a.addr)
                .collect();
            for cidr in &iface.addresses {
                if opts.ownership == Ownership::Host && !here.contains(&cidr.addr) {
                    problems.push(format!(
                        "address {} is not configured on interface {:?} (it has: {}); the native backend uses \
                         the host's addresses: run `ip addr add {}/{} dev {}` or fix {}",
                        cidr.addr,
                        iface.name,
                        if here.is_empty() {
                            "no addresses".to_string()
                        } else {
                            here.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
                        },
                        cidr.addr,
                        cidr.prefix,
                        iface.name,
                        opts.origin
                    ));
                    continue;
                }
                if !iface.endpoint.is_empty() {
                    wanted.push(Wanted {
                        interface: iface.name.clone(),
                        ifindex: index,
                        addr: cidr.addr,
                        flags,
                    });
                }
            }
        }
        if !problems.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                problems.join("\n"),
            ));
        }
        // Refuse unavailable choices before changing anything.
        if let Some(p) = cfg.mptcp.path_manager {
            check_available(
                "path manager",
                p.as_str(),
                &mptcp.available_path_managers()?,
            )?;
        }
        if let Some(s) = &cfg.mptcp.scheduler {
            check_available("scheduler", s, &mptcp.available_schedulers()?)?;
        }

        let mut done = Applied::default();
        let indexes: Vec<u32> = indexes.into_iter().flatten().collect();
        match self.apply_steps(cfg, opts, &indexes, &present, &wanted, &mut done) {
            Ok(()) => Ok(done),
            Err(e) => {
                self.undo(&done);
                Err(e)
            }
        }
    }

    fn apply_steps(
        &mut self,
        cfg: &DeviceConfig,
        opts: &Options<'_>,
        indexes: &[u32],
        present: &[Address],
        wanted: &[Wanted],
        done: &mut Applied,
    ) -> io::Result<()> {
        if opts.ownership == Ownership::Stack {
            let links = self.rtnl.links()?;
            let lo = links.iter().find(|l| l.name == "lo").map(|l| l.index);
            for index in lo.into_iter().chain(indexes.iter().copied()) {
                if !links.iter().any(|l| l.index == index && l.up) {
                    self.rtnl.set_link_up(index, true)?;
                    done.links_up.push(index);
                }
            }
            let sys = MptcpSysctl::new(self.sys);
            if !sys.enabled()? {
                self.sys.write("net.mptcp.enabled", "1")?;
            }
            for (iface, index) in cfg.interfaces.iter().zip(indexes) {
                if let Some(cost) = iface.cost {
                    self.rtnl.set_link_group(*index, cost)?;
                }
                for c in &iface.addresses {
                    let a = Address {
                        index: *index,
                        addr: c.addr,
                        prefix: c.prefix,
                    };
                    if present
                        .iter()
                        .any(|p| p.index == a.index && p.addr == a.addr)
                    {
                        continue;
                    }
                    self.rtnl.add_address(&a)?;
                    done.report
                        .push(format!("address {}/{} on {}", a.addr, a.prefix, iface.name));
                    done.addresses.push(a);
                }
            }
            let mut tables = [None, None];
            for (pos, (iface, index)) in cfg.interfaces.iter().zip(indexes).enumerate() {
                let Some(gw) = iface.gateway else { continue };
                let want = Route::default_via(gw, *index, METRIC_BASE + pos as u32);
                let table = &mut tables[usize::from(gw.is_ipv6())];
                let routes = match table {
                    Some(t) => t,
                    None => table.insert(self.rtnl.routes(gw.is_ipv6(), TABLE_MAIN)?),
                };
                if routes.contains(&want) {
                    continue;
                }
                self.rtnl.add_route(&want)?;
                done.report.push(format!(
                    "default route via {gw} dev {} metric {}",
                    iface.name, want.metric
                ));
                done.routes.push(want);
            }
        }
        self.endpoints(opts, wanted, done)?;
        let sys = MptcpSysctl::new(self.sys);
        if let Some(l) = cfg.mptcp.limits {
            let want = Limits {
                subflows: l.subflows,
                add_addr_accepted: l.add_addr_accepted,
            };
            let now = self.pm.limits()?;
            if now != want {
                self.pm.set_limits(want)?;
                done.limits_before = Some(now);
                done.report.push(format!(
                    "limits subflows {} add_addr_accepted {} (were {} and {})",
                    want.subflows, want.add_addr_accepted, now.subflows, now.add_addr_accepted
                ));
            }
        }
        if let Some(p) = cfg.mptcp.path_manager {
            let now = sys.path_manager()?;
            if now != p.as_str() {
                sys.set_path_manager(p.as_str())?;
                done.report
                    .push(format!("path manager {} (was {now})", p.as_str()));
                done.path_manager_before = Some(now);
            }
        }
        if let Some(s) = &cfg.mptcp.scheduler {
            let now = sys.scheduler()?;
            if &now != s {
                sys.set_scheduler(s)?;
                done.report.push(format!("scheduler {s} (was {now})"));
                done.scheduler_before = Some(now);
            }
        }
        Ok(())
    }

    fn endpoints(
        &mut self,
        opts: &Options<'_>,
        wanted: &[Wanted],
        done: &mut Applied,
    ) -> io::Result<()> {
        let current = self.pm.endpoints()?;
        let ours = |e: &Endpoint| {
            opts.owned_endpoints
                .iter()
                .any(|(id, a)| *id == e.id && *a == e.addr)
        };
        let mut to_add = Vec::new();
        let mut to_delete = Vec::new();
        for w in wanted {
            match current.iter().find(|e| e.addr == w.addr) {
                Some(e) if e.port == 0 && e.flags == w.flags && e.ifindex == Some(w.ifindex) => {}
                Some(e) if ours(e) => {
                    to_delete.push(e.clone());
                    to_add.push(w);
                }
                Some(e) => {
                    let dev = match e.ifindex {
                        Some(i) => {
                            let links = self.rtnl.links().unwrap_or_default();
                            let name = links.into_iter().find(|l| l.index == i).map(|l| l.name);
                            format!(" dev {}", name.unwrap_or_else(|| format!("#{i}")))
                        }
                        None => String::new(),
                    };
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!(
                            "address {} already has MPTCP endpoint id {} ({}{}) that dropshim did not add, and it \
                             differs from the device file ({} dev {}): delete it with `ip mptcp endpoint delete id {}` \
                             or make the device file match",
                            e.addr,
                            e.id,
                            e.flags,
                            dev,
                            w.flags,
                            w.interface,
                            e.id
                        ),
                    ));
                }
                None => to_add.push(w),
            }
        }
        for (id, addr) in &opts.owned_endpoints {
            if !wanted.iter().any(|w| w.addr == *addr) {
                if let Some(e) = current.iter().find(|e| e.id == *id && e.addr == *addr) {
                    to_delete.push(e.clone());
                }
            }
        }
        for e in to_delete {
            self.pm.delete_endpoint(e.id)?;
            done.report.push(format!(
                "removed endpoint id {} {} ({}) added by an earlier up",
                e.id, e.addr, e.flags
            ));
            done.endpoints_removed.push(e);
        }
        for w in to_add {
            self.pm.add_endpoint(&NewEndpoint {
                addr: w.addr,
                port: 0,
                flags: w.flags,
                ifindex: Some(w.ifindex),
                id: None,
            })?;
            let id = self
                .pm
                .endpoints()?
                .into_iter()
                .find(|e| e.addr == w.addr)
                .map(|e| e.id)
                .ok_or_else(|| {
                    io::Error::other(format!(
                        "the kernel accepted endpoint {} but does not list it",
                        w.addr
                    ))
                })?;
            done.report.push(format!(
                "added endpoint id {id} {} {} dev {}",
                w.addr, w.flags, w.interface
            ));
            done.endpoints_added.push(AddedEndpoint {
                id,
                addr: w.addr,
                flags: w.flags,
                interface: w.interface.clone(),
                ifindex: w.ifindex,
            });
        }
        Ok(())
    }

    /// Undoes what a run did (best effort, in reverse; failures are
    /// returned as lines for the caller to show).
    pub fn undo(&mut self, done: &Applied) -> Vec<String> {
        let mut failed = Vec::new();
        let sys = MptcpSysctl::new(self.sys);
        let mut note = |r: io::Result<()>| {
            if let Err(e) = r {
                failed.push(e.to_string());
            }
        };
        if let Some(s) = &done.scheduler_before {
            note(sys.set_scheduler(s));
        }
        if let Some(p) = &done.path_manager_before {
            note(sys.set_path_manager(p));
        }
        if let Some(l) = done.limits_before {
            note(self.pm.set_limits(l));
        }
        for e in &done.endpoints_added {
            note(self.pm.delete_endpoint(e.id));
        }
        for r in &done.routes {
            note(self.rtnl.delete_route(r));
        }
        for a in &done.addresses {
            note(self.rtnl.delete_address(a));
        }
        for l in &done.links_up {
            note(self.rtnl.set_link_up(*l, false));
        }
        failed
    }

    /// Reads back what a device file describes, interface by interface in
    /// the file's order (`indexes`).
    pub fn state(&mut self, indexes: &[u32]) -> io::Result<DeviceState> {
        let pos = |i: u32| indexes.iter().position(|x| *x == i);
        let all = self.rtnl.addresses(None)?;
        let addresses = indexes
            .iter()
            .map(|i| {
                let mut v: Vec<(IpAddr, u8)> = all
                    .iter()
                    .filter(|a| a.index == *i)
                    .filter(|a| !matches!(a.addr, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80))
                    .map(|a| (a.addr, a.prefix))
                    .collect();
                v.sort();
                v
            })
            .collect();
        let mut default_routes = Vec::new();
        for v6 in [false, true] {
            for r in self.rtnl.routes(v6, TABLE_MAIN)? {
                if let (true, Some(gw), Some(p)) = (r.is_default(), r.gateway, r.oif.and_then(pos))
                {
                    default_routes.push((p, gw, r.metric));
                }
            }
        }
        default_routes.sort();
        let mut endpoints: Vec<_> = self
            .pm
            .endpoints()?
            .into_iter()
            .map(|e| (e.addr, e.flags, e.ifindex.and_then(pos)))
            .collect();
        endpoints.sort_by_key(|e| (e.0, e.1 .0, e.2));
        let sys = MptcpSysctl::new(self.sys);
        Ok(DeviceState {
            addresses,
            default_routes,
            endpoints,
            limits: self.pm.limits()?,
            path_manager: sys.path_manager()?,
            scheduler: sys.scheduler()?,
        })
    }
}
