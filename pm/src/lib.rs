//! dropshim's userspace MPTCP path manager.
//!
//! Owns the path-management policy: which subflows each MPTCP connection
//! should have, with which priority, and when to open or close them. The
//! [`Planner`] consumes `mptcp_pm` events (connection created,
//! established and closed, subflow established and closed, address
//! announced and removed, priority changed), the state of the local
//! links and, for `costaware`, how loaded the cheap paths are; it issues
//! `mptcp_pm` commands (subflow create and destroy, announce, set flags /
//! MP_PRIO) through [`Commands`], which the netlink layer's
//! [`MptcpPm`] implements over any [`Transport`]. Nothing here knows
//! which kernel it talks to: [`stack::drive`] runs it on any
//! [`stack::Stack`], the host's (native, [`host::run`]), a uml guest's
//! (the guest agent runs [`host::run`] inside the instance) or the
//! library kernel's (backend-lkl, in the program's process).
//!
//! Policies (see [`dropshim_conf::PmPolicy`]):
//!
//! - `fullmesh`: a subflow over every local address x peer address pair
//!   (the peer's addresses: the one connected to and those it announces).
//!   On connections this side accepted, it announces its other addresses
//!   instead, since the peer opens the subflows.
//! - `ndiffports`: `subflows` subflows over the connection's one address
//!   pair, each from its own source port.
//! - `backup`: a subflow from every interface; those on interfaces whose
//!   endpoint roles include `backup` are opened with the backup flag.
//!   While no non-backup interface is up with a live path, the backups
//!   are promoted (MP_PRIO, backup flag cleared), and demoted again when
//!   one returns. Subflows on an interface that went down are closed, so
//!   the data they held is sent again on the others; those on a stalled
//!   path (see below) are kept, to carry on when it recovers.
//! - `costaware`: interfaces with the lowest `cost` carry the traffic. The
//!   next cost tier gets a subflow only while every cheaper interface is
//!   down or its path stalled, or while the cheap paths are *saturated*: the TCP sockets
//!   (MPTCP subflows included) on the cheapest interfaces hold more than
//!   `saturation_kib` unacknowledged bytes for `saturation_ms` on end,
//!   i.e. this device has more to send than they carry. They count as
//!   recovered after the same time below half that; then the costly
//!   subflow is closed again. Saturation is about what this device
//!   sends: a device that mostly receives never saturates its paths.
//!
//! A path is *stalled* when its interface is up but nothing gets through:
//! every socket on the address that has bytes to deliver has gone
//! [`host::STALL_RTOS`] retransmission timeouts in a row with nothing
//! acknowledged (a cut beyond the interface: the far end's link, a
//! router, or on the uml and lkl stacks a host interface the stack's own
//! kernel never sees go down). `backup` and `costaware` treat it as down
//! for choosing which paths carry the traffic, until an acknowledgement
//! gets through again.
//!
//! A connection is never left without a subflow by the path manager: the
//! last one is kept until another is established.

#![warn(missing_docs)]

pub mod host;
pub mod stack;

use dropshim_conf::{DeviceConfig, PmPolicy};
use dropshim_netlink::diag::MptcpConnection;
use dropshim_netlink::mptcp::{addr_attrs, EndpointFlags, Event, EventKind, MptcpPm};
use dropshim_netlink::Transport;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How long a subflow asked for counts as on its way; after that, if it
/// has not been established, it is asked for again.
pub const PENDING_HOLD: Duration = Duration::from_secs(2);
/// How long before a subflow the kernel refused (say, the connection was
/// not yet fully established) is asked for again.
pub const RETRY_AFTER: Duration = Duration::from_millis(250);
/// ndiffports' subflows when the device file gives no number.
pub const DEFAULT_SUBFLOWS: u32 = 2;
/// costaware's saturation threshold when the device file gives none.
pub const DEFAULT_SATURATION_KIB: u32 = 1024;
/// costaware's saturation time when the device file gives none.
pub const DEFAULT_SATURATION_MS: u32 = 1000;

/// One local address the path manager may open subflows from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAddr {
    /// The interface it is on.
    pub ifname: String,
    /// That interface's index.
    pub ifindex: u32,
    /// The address.
    pub addr: IpAddr,
    /// The local address id announced to peers (1-255).
    pub id: u8,
    /// Subflows from it are backups (backup policy).
    pub backup: bool,
    /// What sending over it costs (costaware).
    pub cost: u32,
}

/// The policy and its parameters, resolved with defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// The policy.
    pub policy: PmPolicy,
    /// ndiffports: subflows per connection, the initial one included.
    pub subflows: u32,
    /// costaware: unacknowledged bytes on the cheap paths that count as
    /// saturated.
    pub saturation_bytes: u64,
    /// costaware: how long saturation (or recovery) must last.
    pub saturation_time: Duration,
}

impl Settings {
    /// The settings of a device file's `[mptcp.userspace]` table, or None
    /// when it has none.
    pub fn from_config(cfg: &DeviceConfig) -> Option<Self> {
        let us = cfg.mptcp.userspace.as_ref()?;
        Some(Settings {
            policy: us.policy,
            subflows: us.subflows.unwrap_or(DEFAULT_SUBFLOWS),
            saturation_bytes: u64::from(us.saturation_kib.unwrap_or(DEFAULT_SATURATION_KIB)) * 1024,
            saturation_time: Duration::from_millis(u64::from(
                us.saturation_ms.unwrap_or(DEFAULT_SATURATION_MS),
            )),
        })
    }
}

/// The `mptcp_pm` commands a policy issues.
pub trait Commands {
    /// Opens a subflow of `token` from `local` to `remote`, with the
    /// backup flag if `backup`.
    fn create(
        &mut self,
        token: u32,
        local: &LocalAddr,
        backup: bool,
        remote: SocketAddr,
    ) -> io::Result<()>;
    /// Closes the subflow `local` -> `remote` of `token`.
    fn destroy(&mut self, token: u32, local: SocketAddr, remote: SocketAddr) -> io::Result<()>;
    /// Sets or clears the backup flag of a subflow (MP_PRIO to the peer).
    fn set_backup(
        &mut self,
        token: u32,
        local: SocketAddr,
        remote: SocketAddr,
        backup: bool,
    ) -> io::Result<()>;
    /// Announces `local` to the peer of `token` (ADD_ADDR).
    fn announce(&mut self, token: u32, local: &LocalAddr) -> io::Result<()>;
}

impl<T: Transport> Commands for MptcpPm<T> {
    fn create(
        &mut self,
        token: u32,
        local: &LocalAddr,
        backup: bool,
        remote: SocketAddr,
    ) -> io::Result<()> {
        let flags = if backup { EndpointFlags::BACKUP } else { 0 };
        self.subflow_create(
            token,
            local.id,
            local.addr,
            flags,
            Some(local.ifindex),
            remote,
        )
    }

    fn destroy(&mut self, token: u32, local: SocketAddr, remote: SocketAddr) -> io::Result<()> {
        self.subflow_destroy(token, local, remote)
    }

    fn set_backup(
        &mut self,
        token: u32,
        local: SocketAddr,
        remote: SocketAddr,
        backup: bool,
    ) -> io::Result<()> {
        let flags = if backup { EndpointFlags::BACKUP } else { 0 };
        let l = addr_attrs(local.ip(), local.port(), None, flags, None);
        self.set_flags(l, Some(token), Some(remote))
    }

    fn announce(&mut self, token: u32, local: &LocalAddr) -> io::Result<()> {
        MptcpPm::announce(self, token, local.id, SocketAddr::new(local.addr, 0))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Subflow {
    local: SocketAddr,
    remote: SocketAddr,
    backup: bool,
}

#[derive(Debug, Clone)]
struct Pending {
    local: IpAddr,
    remote: IpAddr,
    since: Instant,
    hold: Duration,
}

#[derive(Debug, Clone)]
struct Conn {
    server_side: bool,
    established: bool,
    /// The peer's addresses: the one connected to, then those announced
    /// (with their id).
    peers: Vec<(Option<u8>, SocketAddr)>,
    subflows: Vec<Subflow>,
    pending: Vec<Pending>,
    announced: bool,
}

/// One subflow a policy wants.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Want {
    local: usize,
    remote: SocketAddr,
    count: usize,
    backup: bool,
}

/// What one connection looks like to the planner (for status and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionView {
    /// The connection's token.
    pub token: u32,
    /// Its established subflows: local, remote, backup flag.
    pub subflows: Vec<(SocketAddr, SocketAddr, bool)>,
}

/// The policy engine: fed events, link states and load, it issues
/// commands. One per kernel.
pub struct Planner {
    settings: Settings,
    locals: Vec<LocalAddr>,
    /// Interface index -> up.
    links: BTreeMap<u32, bool>,
    /// Local addresses whose paths are stalled (backup, costaware).
    stalled: BTreeSet<IpAddr>,
    conns: BTreeMap<u32, Conn>,
    /// costaware: since when the cheap paths have been above (or, once
    /// saturated, below half) the threshold.
    load_since: Option<Instant>,
    saturated: bool,
    /// Failed commands, for the log (bounded).
    errors: Vec<String>,
}

impl Planner {
    /// A planner for `locals` (every interface counted up until told
    /// otherwise).
    pub fn new(settings: Settings, locals: Vec<LocalAddr>) -> Self {
        let links = locals.iter().map(|l| (l.ifindex, true)).collect();
        Planner {
            settings,
            locals,
            links,
            stalled: BTreeSet::new(),
            conns: BTreeMap::new(),
            load_since: None,
            saturated: false,
            errors: Vec::new(),
        }
    }

    /// The local addresses it manages.
    pub fn locals(&self) -> &[LocalAddr] {
        &self.locals
    }

    /// Whether costaware considers the cheap paths saturated.
    pub fn saturated(&self) -> bool {
        self.saturated
    }

    /// Command failures since the last call (for the log).
    pub fn take_errors(&mut self) -> Vec<String> {
        std::mem::take(&mut self.errors)
    }

    /// The connections it tracks.
    pub fn connections(&self) -> Vec<ConnectionView> {
        self.conns
            .iter()
            .map(|(token, c)| ConnectionView {
                token: *token,
                subflows: c
                    .subflows
                    .iter()
                    .map(|s| (s.local, s.remote, s.backup))
                    .collect(),
            })
            .collect()
    }

    /// Takes in one `mptcp_pm` event.
    pub fn event(&mut self, e: &Event, now: Instant, cmds: &mut dyn Commands) {
        let (Some(kind), Some(token)) = (e.kind, e.token) else {
            return;
        };
        match kind {
            EventKind::Created | EventKind::Established => {
                let c = self.conns.entry(token).or_insert_with(|| Conn {
                    server_side: false,
                    established: false,
                    peers: Vec::new(),
                    subflows: Vec::new(),
                    pending: Vec::new(),
                    announced: false,
                });
                if let Some(s) = e.server_side {
                    c.server_side = s;
                }
                if let (Some(l), Some(r)) = (e.local, e.remote) {
                    if c.peers.is_empty() {
                        c.peers.push((e.remote_id, r));
                    }
                    if !c.subflows.iter().any(|s| s.local == l && s.remote == r) {
                        c.subflows.push(Subflow {
                            local: l,
                            remote: r,
                            backup: false,
                        });
                    }
                }
                if kind == EventKind::Established {
                    c.established = true;
                }
            }
            EventKind::Closed => {
                self.conns.remove(&token);
                return;
            }
            EventKind::SubEstablished => {
                let Some(c) = self.conns.get_mut(&token) else {
                    return;
                };
                if let (Some(l), Some(r)) = (e.local, e.remote) {
                    // A subflow already known (an adopted connection's,
                    // listed and then reported) answers no request.
                    if c.subflows.iter().any(|s| s.local == l && s.remote == r) {
                        return;
                    }
                    if let Some(i) = c
                        .pending
                        .iter()
                        .position(|p| p.local == l.ip() && p.remote == r.ip())
                    {
                        c.pending.remove(i);
                    }
                    c.subflows.push(Subflow {
                        local: l,
                        remote: r,
                        backup: e.backup.unwrap_or(false),
                    });
                }
            }
            EventKind::SubClosed => {
                let Some(c) = self.conns.get_mut(&token) else {
                    return;
                };
                if let (Some(l), Some(r)) = (e.local, e.remote) {
                    c.subflows.retain(|s| !(s.local == l && s.remote == r));
                }
            }
            EventKind::SubPriority => {
                let Some(c) = self.conns.get_mut(&token) else {
                    return;
                };
                if let (Some(l), Some(r), Some(b)) = (e.local, e.remote, e.backup) {
                    for s in c.subflows.iter_mut() {
                        if s.local == l && s.remote == r {
                            s.backup = b;
                        }
                    }
                }
            }
            EventKind::Announced => {
                let Some(c) = self.conns.get_mut(&token) else {
                    return;
                };
                if let Some(r) = e.remote {
                    // An announcement without a port means the connection's.
                    let port = if r.port() == 0 {
                        c.peers.first().map(|p| p.1.port()).unwrap_or(0)
                    } else {
                        r.port()
                    };
                    let r = SocketAddr::new(r.ip(), port);
                    if !c.peers.iter().any(|p| p.1.ip() == r.ip()) {
                        c.peers.push((e.remote_id, r));
                    }
                }
            }
            EventKind::Removed => {
                let Some(c) = self.conns.get_mut(&token) else {
                    return;
                };
                if let Some(id) = e.remote_id {
                    // The first peer address is the one connected to.
                    let first = c.peers.first().cloned();
                    c.peers
                        .retain(|p| p.0 != Some(id) || Some(p) == first.as_ref());
                }
            }
            _ => return,
        }
        self.reconcile_one(token, now, cmds);
    }

    /// Takes over a connection that was open before this planner started
    /// (the path manager was down when it was made, so nothing gave it its
    /// subflows): records it with the subflows it has and lets the policy
    /// complete it. `server_side` says it was accepted, not connected.
    /// Connections that fell back to TCP, are not established or are
    /// already known are left alone.
    pub fn adopt(
        &mut self,
        c: &MptcpConnection,
        server_side: bool,
        now: Instant,
        cmds: &mut dyn Commands,
    ) {
        if c.fallback || c.state != "ESTAB" || self.conns.contains_key(&c.token) {
            return;
        }
        let mut subflows: Vec<Subflow> = c
            .subflows
            .iter()
            .filter(|s| s.state == "ESTAB")
            .map(|s| Subflow {
                local: s.local,
                remote: s.remote,
                backup: s.backup,
            })
            .collect();
        // Without the subflows' ULP details (no CAP_NET_ADMIN), the
        // connection's own addresses are its initial subflow's.
        if subflows.is_empty() {
            subflows.push(Subflow {
                local: c.local,
                remote: c.remote,
                backup: false,
            });
        }
        self.conns.insert(
            c.token,
            Conn {
                server_side,
                established: true,
                peers: vec![(None, c.remote)],
                subflows,
                pending: Vec::new(),
                announced: false,
            },
        );
        self.reconcile_one(c.token, now, cmds);
    }

    /// Takes in the state of the local links (index, up); changes lead to
    /// subflows opened, closed or promoted.
    pub fn links(&mut self, state: &[(u32, bool)], now: Instant, cmds: &mut dyn Commands) {
        let mut changed = false;
        for (index, up) in state {
            if let Some(old) = self.links.get_mut(index) {
                if *old != *up {
                    *old = *up;
                    changed = true;
                }
            }
        }
        if changed {
            self.reconcile(now, cmds);
        }
    }

    /// Takes in the local addresses whose paths are stalled now (the
    /// others are not); changes lead to backups promoted or demoted and
    /// costlier subflows opened or closed.
    pub fn stalls(&mut self, stalled: &[IpAddr], now: Instant, cmds: &mut dyn Commands) {
        let now_set: BTreeSet<IpAddr> = stalled.iter().copied().collect();
        if now_set != self.stalled {
            self.stalled = now_set;
            self.reconcile(now, cmds);
        }
    }

    /// costaware: takes in how many bytes the sockets on the cheapest
    /// interfaces hold unacknowledged.
    pub fn load(&mut self, unacked: u64, now: Instant, cmds: &mut dyn Commands) {
        let over = if self.saturated {
            unacked * 2 < self.settings.saturation_bytes
        } else {
            unacked > self.settings.saturation_bytes
        };
        if !over {
            self.load_since = None;
            return;
        }
        let since = *self.load_since.get_or_insert(now);
        if now.duration_since(since) >= self.settings.saturation_time {
            self.saturated = !self.saturated;
            self.load_since = None;
            self.reconcile(now, cmds);
        }
    }

    /// The local addresses on the cheapest interfaces (costaware).
    pub fn cheapest(&self) -> Vec<IpAddr> {
        let min = self.locals.iter().map(|l| l.cost).min();
        self.locals
            .iter()
            .filter(|l| Some(l.cost) == min)
            .map(|l| l.addr)
            .collect()
    }

    /// Brings every connection to what the policy wants now.
    pub fn reconcile(&mut self, now: Instant, cmds: &mut dyn Commands) {
        let tokens: Vec<u32> = self.conns.keys().copied().collect();
        for t in tokens {
            self.reconcile_one(t, now, cmds);
        }
    }

    fn up(&self, i: usize) -> bool {
        self.links
            .get(&self.locals[i].ifindex)
            .copied()
            .unwrap_or(false)
    }

    /// Whether local address `i`'s path is stalled.
    fn stalled(&self, i: usize) -> bool {
        self.stalled.contains(&self.locals[i].addr)
    }

    fn local_of(&self, ip: IpAddr) -> Option<usize> {
        self.locals.iter().position(|l| l.addr == ip)
    }

    /// What the policy wants for a connection to `peers`, whose first
    /// subflow runs from `initial`.
    fn wants(&self, initial: Option<&Subflow>, peers: &[SocketAddr]) -> Vec<Want> {
        let Some(first_peer) = peers.first().copied() else {
            return Vec::new();
        };
        let same_family = |i: usize, r: &SocketAddr| self.locals[i].addr.is_ipv4() == r.is_ipv4();
        let up_locals: Vec<usize> = (0..self.locals.len())
            .filter(|i| self.up(*i) && same_family(*i, &first_peer))
            .collect();
        let one = |local: usize, remote: SocketAddr, backup: bool| Want {
            local,
            remote,
            count: 1,
            backup,
        };
        match self.settings.policy {
            PmPolicy::Fullmesh => up_locals
                .iter()
                .flat_map(|l| {
                    peers
                        .iter()
                        .filter(|r| same_family(*l, r))
                        .map(|r| one(*l, *r, self.locals[*l].backup))
                        .collect::<Vec<_>>()
                })
                .collect(),
            PmPolicy::Ndiffports => {
                let Some(l) = initial.and_then(|s| self.local_of(s.local.ip())) else {
                    return Vec::new();
                };
                if !self.up(l) {
                    return Vec::new();
                }
                vec![Want {
                    local: l,
                    remote: first_peer,
                    count: self.settings.subflows as usize,
                    backup: false,
                }]
            }
            PmPolicy::Backup => {
                let active_up = up_locals
                    .iter()
                    .any(|l| !self.locals[*l].backup && !self.stalled(*l));
                up_locals
                    .iter()
                    .map(|l| one(*l, first_peer, self.locals[*l].backup && active_up))
                    .collect()
            }
            PmPolicy::Costaware => {
                let mut tiers: Vec<u32> = up_locals.iter().map(|l| self.locals[*l].cost).collect();
                tiers.sort_unstable();
                tiers.dedup();
                let min_all = self.locals.iter().map(|l| l.cost).min();
                // The cheapest tier that is up; and the next one while the
                // cheapest interfaces are saturated, or while every path of
                // a tier is stalled (and so on up).
                let mut open = Vec::new();
                for (k, tier) in tiers.iter().enumerate() {
                    open.push(*tier);
                    let spill = k == 0 && self.saturated && Some(*tier) == min_all;
                    let stalled = up_locals
                        .iter()
                        .filter(|l| self.locals[**l].cost == *tier)
                        .all(|l| self.stalled(*l));
                    if !spill && !stalled {
                        break;
                    }
                }
                up_locals
                    .iter()
                    .filter(|l| open.contains(&self.locals[**l].cost))
                    .map(|l| one(*l, first_peer, false))
                    .collect()
            }
        }
    }

    fn reconcile_one(&mut self, token: u32, now: Instant, cmds: &mut dyn Commands) {
        let Some(conn) = self.conns.get(&token) else {
            return;
        };
        if !conn.established {
            return;
        }
        if conn.server_side {
            self.announce_once(token, cmds);
            return;
        }
        let peers: Vec<SocketAddr> = conn.peers.iter().map(|p| p.1).collect();
        let wants = self.wants(conn.subflows.first(), &peers);
        let mut conn = conn.clone();
        conn.pending
            .retain(|p| now.duration_since(p.since) < p.hold);

        let mut keep = vec![false; conn.subflows.len()];
        let mut creates = Vec::new();
        let mut prio = Vec::new();
        for w in &wants {
            let local_ip = self.locals[w.local].addr;
            let matching: Vec<usize> = (0..conn.subflows.len())
                .filter(|i| {
                    !keep[*i]
                        && conn.subflows[*i].local.ip() == local_ip
                        && conn.subflows[*i].remote.ip() == w.remote.ip()
                })
                .collect();
            for i in matching.iter().take(w.count) {
                keep[*i] = true;
                if conn.subflows[*i].backup != w.backup {
                    prio.push(*i);
                }
            }
            let pending = conn
                .pending
                .iter()
                .filter(|p| p.local == local_ip && p.remote == w.remote.ip())
                .count();
            let have = matching.len().min(w.count) + pending;
            for _ in have..w.count {
                creates.push(w.clone());
            }
        }
        // Subflows from addresses the planner does not manage are left alone.
        for (i, s) in conn.subflows.iter().enumerate() {
            if self.local_of(s.local.ip()).is_none() {
                keep[i] = true;
            }
        }

        for w in creates {
            let local = self.locals[w.local].clone();
            match cmds.create(token, &local, w.backup, w.remote) {
                Ok(()) => conn.pending.push(Pending {
                    local: local.addr,
                    remote: w.remote.ip(),
                    since: now,
                    hold: PENDING_HOLD,
                }),
                Err(e) => {
                    self.note(format!(
                        "token {token:08x}: cannot open a subflow {} -> {}: {e}",
                        local.addr, w.remote
                    ));
                    // Held briefly, then asked for again.
                    conn.pending.push(Pending {
                        local: local.addr,
                        remote: w.remote.ip(),
                        since: now,
                        hold: RETRY_AFTER,
                    });
                }
            }
        }
        for i in prio {
            let s = &mut conn.subflows[i];
            let want = !s.backup;
            match cmds.set_backup(token, s.local, s.remote, want) {
                Ok(()) => s.backup = want,
                Err(e) => {
                    let msg = format!(
                        "token {token:08x}: cannot set backup={want} on {} -> {}: {e}",
                        s.local, s.remote
                    );
                    self.note(msg);
                }
            }
        }
        // Close what is not wanted, but never the last subflow.
        let mut kept = Vec::new();
        let mut remaining = conn.subflows.len();
        for (idx, s) in std::mem::take(&mut conn.subflows).into_iter().enumerate() {
            if keep[idx] || remaining <= 1 {
                kept.push(s);
                continue;
            }
            match cmds.destroy(token, s.local, s.remote) {
                Ok(()) => remaining -= 1,
                Err(e) => {
                    self.note(format!(
                        "token {token:08x}: cannot close the subflow {} -> {}: {e}",
                        s.local, s.remote
                    ));
                    kept.push(s);
                }
            }
        }
        conn.subflows = kept;
        self.conns.insert(token, conn);
    }

    fn announce_once(&mut self, token: u32, cmds: &mut dyn Commands) {
        if self.settings.policy != PmPolicy::Fullmesh {
            return;
        }
        let Some(conn) = self.conns.get(&token) else {
            return;
        };
        if conn.announced {
            return;
        }
        let in_use: Vec<IpAddr> = conn.subflows.iter().map(|s| s.local.ip()).collect();
        let family_v4 = conn.peers.first().map(|p| p.1.is_ipv4());
        let mut errors = Vec::new();
        for (i, l) in self.locals.iter().enumerate() {
            if !self.up(i) || in_use.contains(&l.addr) || Some(l.addr.is_ipv4()) != family_v4 {
                continue;
            }
            if let Err(e) = cmds.announce(token, l) {
                errors.push(format!(
                    "token {token:08x}: cannot announce {}: {e}",
                    l.addr
                ));
            }
        }
        for e in errors {
            self.note(e);
        }
        if let Some(c) = self.conns.get_mut(&token) {
            c.announced = true;
        }
    }

    fn note(&mut self, msg: String) {
        if self.errors.len() < 64 {
            self.errors.push(msg);
        }
    }
}

/// The local addresses of a device file's interfaces, with ids from 1 in
/// file order; `index` names an interface's index (None: not present,
/// skipped with a warning in the returned list).
pub fn locals_from(
    cfg: &DeviceConfig,
    mut index: impl FnMut(&str) -> Option<u32>,
) -> (Vec<LocalAddr>, Vec<String>) {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    let mut id: u8 = 1;
    for iface in &cfg.interfaces {
        let Some(ifindex) = index(&iface.name) else {
            missing.push(iface.name.clone());
            continue;
        };
        let backup = iface
            .endpoint
            .contains(&dropshim_conf::EndpointRole::Backup);
        for a in &iface.addresses {
            out.push(LocalAddr {
                ifname: iface.name.clone(),
                ifindex,
                addr: a.addr,
                id,
                backup,
                cost: iface.cost.unwrap_or(0),
            });
            id = id.saturating_add(1);
        }
    }
    (out, missing)
}

#[cfg(test)]
mod tests;
