//! Testbed specs: the TOML format, its validation, and the addressing
//! scheme (link N = 198.18.N.0/24 and 2001:2:0:N::/64, side a host 1,
//! side b host 2).

use crate::link::{DirParams, LinkChoice, LinkParams, Mbit, Millis, Percent, Profile};
use crate::Error;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

const TWO_GATEWAYS: &str = include_str!("../../conf/testbeds/two-gateways.toml");
const LOCAL_CACHE: &str = include_str!("../../conf/testbeds/local-cache.toml");
const DROP_HOME: &str = include_str!("../../conf/testbeds/drop-home.toml");
const DROP_MESH: &str = include_str!("../../conf/testbeds/drop-mesh.toml");

/// The specs shipped with dropshim, by name.
pub const BUILTIN: &[(&str, &str)] = &[
    ("two-gateways", TWO_GATEWAYS),
    ("local-cache", LOCAL_CACHE),
    ("drop-home", DROP_HOME),
    ("drop-mesh", DROP_MESH),
];

/// Devices in `drop-mesh` when no count is given.
pub const MESH_DEFAULT_DEVICES: u32 = 8;
/// Most devices a shared segment (and so `drop-mesh`) can hold.
pub const SEGMENT_MAX_MEMBERS: usize = 250;

/// A parsed and validated testbed spec (see `conf/testbeds/two-gateways.toml`
/// for the format).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// What the topology is called (`two-gateways`, ...).
    pub name: String,
    /// What the topology is, in a sentence or two.
    #[serde(default)]
    pub description: String,
    /// Per node and link, an `ip rule` that sends traffic from the node's address on link N out of
    /// link N when the main table would route it elsewhere; default true.
    #[serde(default = "yes")]
    pub source_routing: bool,
    /// The TCP congestion control of every node (`net.ipv4.tcp_congestion_control`
    /// in each namespace); default [`DEFAULT_CONGESTION_CONTROL`].
    #[serde(default = "default_congestion_control")]
    pub congestion_control: String,
    /// The nodes (`[[node]]`), one network namespace each.
    #[serde(rename = "node", default)]
    pub nodes: Vec<NodeSpec>,
    /// The point-to-point links (`[[link]]`), one veth pair each.
    #[serde(rename = "link", default)]
    pub links: Vec<LinkSpec>,
    /// Static routes (`[[route]]`).
    #[serde(rename = "route", default)]
    pub routes: Vec<RouteSpec>,
    /// Shared segments: one bridge joining several nodes.
    #[serde(rename = "segment", default)]
    pub segments: Vec<SegmentSpec>,
    /// Parts built only when asked for (`[internet]`, [`crate::Options::internet`]).
    #[serde(default)]
    pub internet: Option<InternetSpec>,
}

/// A shared segment (`[[segment]]`): a bridge in its own namespace
/// (`ds-<id>-<name>`) and, per member, a hop between the member's
/// interface `link<number>` and a port of that bridge. The hop carries the
/// segment's link settings: `a_to_b` is the member's uplink to the bridge,
/// `b_to_a` its downlink, so member-to-member traffic crosses two hops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentSpec {
    /// Number 1..=255, shared with the `[[link]]` numbers; members' interfaces are `link<number>`.
    pub number: u32,
    /// Name of the bridge's namespace (like a node name).
    pub name: String,
    /// The member nodes, 2 to 250; the i-th (from 1) gets host address i.
    pub members: Vec<String>,
    /// IPv4 prefix instead of `198.18.<number>.0/24` (inside 198.18.0.0/15).
    pub ipv4: Option<String>,
    /// IPv6 prefix instead of `2001:2:0:<number>::/64` (inside 2001:2::/48).
    pub ipv6: Option<String>,
    /// Shaping rate of every hop, both directions.
    pub rate_mbit: Option<Mbit>,
    /// One-way delay added on every hop, both directions.
    pub delay_ms: Option<Millis>,
    /// Random variation of that delay.
    pub jitter_ms: Option<Millis>,
    /// Random loss on every hop, per direction.
    pub loss_pct: Option<Percent>,
    /// A preset the keys above and the direction tables override.
    pub profile: Option<Profile>,
    /// Values for every member's uplink to the bridge only.
    pub a_to_b: Option<DirSpec>,
    /// Values for every member's downlink from the bridge only.
    pub b_to_a: Option<DirSpec>,
}

/// Where a link built for a segment member sits: segment `segment`,
/// member host number `host` (its address there, and its bridge port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hop {
    /// The segment's number.
    pub segment: u32,
    /// The member's host number in the segment (from 1).
    pub host: u32,
}

impl SegmentSpec {
    /// The link number of member `host`'s hop (above the 1..=255 of
    /// `[[link]]`s, so the two never meet).
    pub fn hop_number(&self, host: u32) -> u32 {
        256 * self.number + host
    }

    /// One point-to-point link per member, member on side a, the bridge's
    /// namespace on side b.
    fn hops(&self) -> Vec<LinkSpec> {
        self.members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let host = i as u32 + 1;
                LinkSpec {
                    number: self.hop_number(host),
                    a: m.clone(),
                    b: self.name.clone(),
                    ipv4: self.ipv4.clone(),
                    ipv6: self.ipv6.clone(),
                    rate_mbit: self.rate_mbit,
                    delay_ms: self.delay_ms,
                    jitter_ms: self.jitter_ms,
                    loss_pct: self.loss_pct,
                    profile: self.profile,
                    a_to_b: self.a_to_b,
                    b_to_a: self.b_to_a,
                    hop: Some(Hop {
                        segment: self.number,
                        host,
                    }),
                }
            })
            .collect()
    }

    /// The segment's addressing as a link (prefixes only).
    fn as_link(&self) -> LinkSpec {
        LinkSpec {
            number: self.number,
            a: String::new(),
            b: String::new(),
            ipv4: self.ipv4.clone(),
            ipv6: self.ipv6.clone(),
            rate_mbit: None,
            delay_ms: None,
            jitter_ms: None,
            loss_pct: None,
            profile: None,
            a_to_b: None,
            b_to_a: None,
            hop: None,
        }
    }
}

fn yes() -> bool {
    true
}

/// The congestion control a testbed's nodes use unless the spec names
/// another: Linux's own default, and the one the uml and lkl stacks' kernels
/// run, so every stack and the peers they talk to compare like for like.
/// A new namespace would otherwise inherit the host's choice, which varies
/// between machines (`bbr` on some).
pub const DEFAULT_CONGESTION_CONTROL: &str = "cubic";

fn default_congestion_control() -> String {
    DEFAULT_CONGESTION_CONTROL.to_string()
}

/// `[[node]]`: one network namespace (`ds-<id>-<name>`) with `lo` up and IPv6 DAD off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Letters, digits and `_`; not `emu`, which names the link emulator's namespace.
    pub name: String,
    /// Route packets between its links; default false.
    #[serde(default)]
    pub forwarding: bool,
    /// The kernel path manager's limits and endpoints inside the namespace.
    #[serde(default)]
    pub mptcp: Option<MptcpSpec>,
    /// Answer ARP for addresses it routes elsewhere, at once: a device
    /// whose kernel sends a subflow on-link out of the interface it is
    /// bound to (no source routing, as in uml and lkl) still reaches a
    /// server behind this node. IPv4 only.
    #[serde(default)]
    pub proxy_arp: bool,
    /// Set on the namespace that holds a segment's bridge (never in a
    /// spec file).
    #[serde(skip)]
    pub bridge: bool,
}

/// `[node.mptcp]`: the in-kernel path manager's setup in a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MptcpSpec {
    /// `ip mptcp limits set subflows N` (0..=8); absent leaves the kernel's.
    pub subflows: Option<u32>,
    /// `ip mptcp limits set add_addr_accepted N` (0..=8); absent leaves the kernel's.
    pub add_addr_accepted: Option<u32>,
    /// MPTCP endpoints on the node's addresses.
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
}

/// One `ip mptcp endpoint add` for the node's address on a link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// The link (or segment) whose address becomes the endpoint.
    pub link: u32,
    /// The endpoint's flags.
    pub flags: Vec<EndpointFlag>,
    /// Which of the node's addresses on that link get an endpoint.
    #[serde(default)]
    pub family: Family,
}

/// An MPTCP endpoint flag, as `ip mptcp endpoint` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointFlag {
    /// Open an extra subflow from this address.
    Subflow,
    /// Announce this address to the peer (ADD_ADDR).
    Signal,
    /// Use subflows over this address only when others fail.
    Backup,
    /// Open subflows from this address to every address the peer announced.
    Fullmesh,
}

impl EndpointFlag {
    /// The flag as `ip mptcp endpoint` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointFlag::Subflow => "subflow",
            EndpointFlag::Signal => "signal",
            EndpointFlag::Backup => "backup",
            EndpointFlag::Fullmesh => "fullmesh",
        }
    }
}

/// Which address families an endpoint covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// The IPv4 and the IPv6 address.
    #[default]
    Both,
    /// The IPv4 address only.
    Ipv4,
    /// The IPv6 address only.
    Ipv6,
}

/// `[[link]]`: one veth pair, each end named `link<number>` in its node's namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// Number 1..=255; by default the link's prefixes are 198.18.N.0/24 and 2001:2:0:N::/64.
    pub number: u32,
    /// Node on side a (the device); it gets host 1.
    pub a: String,
    /// Node on side b (the network); it gets host 2.
    pub b: String,
    /// IPv4 prefix instead of the default (inside 198.18.0.0/15).
    pub ipv4: Option<String>,
    /// IPv6 prefix instead of the default (inside 2001:2::/48).
    pub ipv6: Option<String>,
    /// Both directions, unless a direction table says otherwise.
    pub rate_mbit: Option<Mbit>,
    /// One-way delay added in each direction, unless a direction table says otherwise.
    pub delay_ms: Option<Millis>,
    /// Random variation of that delay; packets are never reordered by it.
    pub jitter_ms: Option<Millis>,
    /// Random loss per direction, unless a direction table says otherwise.
    pub loss_pct: Option<Percent>,
    /// A preset the keys above and the direction tables override.
    pub profile: Option<Profile>,
    /// Values for the direction from side a to side b only.
    pub a_to_b: Option<DirSpec>,
    /// Values for the direction from side b to side a only.
    pub b_to_a: Option<DirSpec>,
    /// Set on the links a segment is built from (never in a spec file).
    #[serde(skip)]
    pub hop: Option<Hop>,
}

/// The keys a `[link.a_to_b]` / `[link.b_to_a]` table may hold.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirSpec {
    /// Shaping rate of this direction.
    pub rate_mbit: Option<Mbit>,
    /// One-way delay added in this direction.
    pub delay_ms: Option<Millis>,
    /// Random variation of that delay.
    pub jitter_ms: Option<Millis>,
    /// Random loss in this direction.
    pub loss_pct: Option<Percent>,
}

impl DirSpec {
    fn apply(&self, d: &mut DirParams) {
        if let Some(r) = self.rate_mbit {
            d.rate_mbit = Some(r.get());
        }
        if let Some(v) = self.delay_ms {
            d.delay_ms = v.get();
        }
        if let Some(v) = self.jitter_ms {
            d.jitter_ms = v.get();
        }
        if let Some(v) = self.loss_pct {
            d.loss_pct = v.get();
        }
    }
}

impl LinkSpec {
    /// What the link does: its profile's values, overridden by the
    /// link's own keys, overridden by the direction tables.
    pub fn params(&self) -> LinkParams {
        let mut p = self
            .profile
            .map(Profile::params)
            .unwrap_or_else(|| LinkParams::rate_only(None));
        let both = DirSpec {
            rate_mbit: self.rate_mbit,
            delay_ms: self.delay_ms,
            jitter_ms: self.jitter_ms,
            loss_pct: self.loss_pct,
        };
        both.apply(&mut p.a_to_b);
        both.apply(&mut p.b_to_a);
        if let Some(d) = &self.a_to_b {
            d.apply(&mut p.a_to_b);
        }
        if let Some(d) = &self.b_to_a {
            d.apply(&mut p.b_to_a);
        }
        p
    }

    /// The link as built when `choice` (from `Options::links`) applies to
    /// it: a profile takes the place of the spec's own `profile` (its
    /// explicit keys still win); a rate makes it a rate-only link.
    /// Returns the profile in force and the values.
    pub fn params_with(&self, choice: Option<LinkChoice>) -> (Option<Profile>, LinkParams) {
        match choice {
            None => (self.profile, self.params()),
            Some(LinkChoice::Rate(r)) => (None, LinkParams::rate_only(Some(r))),
            Some(LinkChoice::Profile(p)) => {
                let mut l = self.clone();
                l.profile = Some(p);
                (Some(p), l.params())
            }
        }
    }
}

/// `[[route]]`: a static route, IPv4 and IPv6.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// The node the route is added in.
    pub node: String,
    /// The link (or segment) whose prefixes the route reaches.
    pub to_link: u32,
    /// The link whose peer node the route goes through.
    pub via_link: u32,
}

/// `[internet]`: parts added only when [`crate::Options::internet`] is set.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InternetSpec {
    /// Extra nodes (`[[internet.node]]`).
    #[serde(rename = "node", default)]
    pub nodes: Vec<NodeSpec>,
    /// Extra links (`[[internet.link]]`).
    #[serde(rename = "link", default)]
    pub links: Vec<LinkSpec>,
    /// Extra routes (`[[internet.route]]`).
    #[serde(rename = "route", default)]
    pub routes: Vec<RouteSpec>,
    /// Existing nodes that forward packets once the internet part is built.
    #[serde(default)]
    pub forwarding: Vec<String>,
}

/// The part of a spec that is built for one run (the internet part merged
/// in or left out).
#[derive(Debug, Clone)]
pub(crate) struct Active {
    pub nodes: Vec<NodeSpec>,
    pub links: Vec<LinkSpec>,
    pub routes: Vec<RouteSpec>,
}

impl Spec {
    /// One of the specs shipped in `conf/testbeds/`: "two-gateways",
    /// "local-cache", "drop-home" or "drop-mesh" (with its default of 8
    /// devices).
    pub fn builtin(name: &str) -> Result<Spec, Error> {
        if name == "drop-mesh" {
            return Spec::drop_mesh(MESH_DEFAULT_DEVICES);
        }
        let text = BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| *t)
            .ok_or_else(|| Error::UnknownSpec(name.to_string()))?;
        Spec::parse(text, &format!("builtin {name}"))
    }

    /// `drop-mesh` with `devices` devices (2..=250): the shipped spec's
    /// segments and settings, its device list replaced by `dev1`..`devN`.
    pub fn drop_mesh(devices: u32) -> Result<Spec, Error> {
        if !(2..=SEGMENT_MAX_MEMBERS as u32).contains(&devices) {
            return Err(Error::Spec {
                origin: "builtin drop-mesh".into(),
                message: format!("--devices {devices}: use 2 to {SEGMENT_MAX_MEMBERS} devices"),
            });
        }
        let mut spec = Spec::parse(DROP_MESH, "builtin drop-mesh")?;
        let template = spec.nodes.first().cloned().ok_or_else(|| Error::Spec {
            origin: "builtin drop-mesh".into(),
            message: "no [[node]] to copy".into(),
        })?;
        spec.nodes = (1..=devices)
            .map(|i| NodeSpec {
                name: format!("dev{i}"),
                ..template.clone()
            })
            .collect();
        let names: Vec<String> = spec.nodes.iter().map(|n| n.name.clone()).collect();
        for g in spec.segments.iter_mut() {
            g.members = names.clone();
        }
        spec.validate().map_err(|message| Error::Spec {
            origin: "builtin drop-mesh".into(),
            message,
        })?;
        Ok(spec)
    }

    /// [`Spec::load`], with a device count for specs that take one
    /// (`drop-mesh`; `None` = its default of 8). A count for any other
    /// spec is an error.
    pub fn load_with_devices(name_or_path: &str, devices: Option<u32>) -> Result<Spec, Error> {
        match (name_or_path, devices) {
            ("drop-mesh", n) => Spec::drop_mesh(n.unwrap_or(MESH_DEFAULT_DEVICES)),
            (other, Some(_)) => Err(Error::Spec {
                origin: other.to_string(),
                message: "--devices applies to drop-mesh only".into(),
            }),
            (other, None) => Spec::load(other),
        }
    }

    /// For `Options::links`: every link built (the base links, then each
    /// segment's hops) as a rate-only link at its downlink rate (b to a;
    /// else a to b; else 1000 Mbit/s), without delay, jitter or loss, so
    /// no link emulator is needed.
    pub fn rate_only(&self) -> Vec<LinkChoice> {
        self.active(false)
            .links
            .iter()
            .map(|l| {
                let p = l.params();
                LinkChoice::Rate(p.b_to_a.rate_mbit.or(p.a_to_b.rate_mbit).unwrap_or(1000))
            })
            .collect()
    }

    /// A builtin name, or a path to a `.toml` file.
    pub fn load(name_or_path: &str) -> Result<Spec, Error> {
        let looks_like_path = name_or_path.contains('/') || name_or_path.ends_with(".toml");
        if !looks_like_path {
            return Spec::builtin(name_or_path);
        }
        let path = Path::new(name_or_path);
        let text = std::fs::read_to_string(path).map_err(|e| Error::SpecRead {
            path: name_or_path.to_string(),
            err: e,
        })?;
        Spec::parse(&text, name_or_path)
    }

    /// Parse and validate spec text; `origin` names it in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Spec, Error> {
        let spec: Spec = toml::from_str(text).map_err(|e| Error::Spec {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        spec.validate().map_err(|message| Error::Spec {
            origin: origin.to_string(),
            message,
        })?;
        Ok(spec)
    }

    fn validate(&self) -> Result<(), String> {
        if self.nodes.is_empty() {
            return Err("no [[node]]: a testbed needs at least two nodes and one [[link]]".into());
        }
        let cc = &self.congestion_control;
        let word = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
        if cc.is_empty() || cc.len() > 15 || !cc.chars().all(word) {
            return Err(format!(
                "congestion_control {cc:?}: expected the name of a TCP congestion control \
                 (`sysctl net.ipv4.tcp_available_congestion_control`), e.g. \"cubic\""
            ));
        }
        // Validate the biggest topology (internet part included); the base
        // alone is a subset of it, except that it must not refer to the
        // internet part's nodes (checked below).
        let full = self.active(true);
        let mut names = BTreeSet::new();
        for n in &full.nodes {
            check_name(&n.name).map_err(|m| format!("node {:?}: {m}", n.name))?;
            if !names.insert(n.name.as_str()) {
                return Err(format!(
                    "node {:?} is defined twice; node names must be unique",
                    n.name
                ));
            }
        }
        let mut numbers = BTreeSet::new();
        for l in full.links.iter().filter(|l| l.hop.is_none()) {
            if !(1..=255).contains(&l.number) {
                return Err(format!(
                    "link number {} is out of range: use 1..=255",
                    l.number
                ));
            }
            if !numbers.insert(l.number) {
                return Err(format!(
                    "link {} is defined twice; link numbers must be unique",
                    l.number
                ));
            }
            for end in [&l.a, &l.b] {
                if !names.contains(end.as_str()) {
                    return Err(format!(
                        "link {}: unknown node {end:?}; define it with [[node]] name = {end:?}",
                        l.number
                    ));
                }
            }
            if l.a == l.b {
                return Err(format!(
                    "link {} joins {:?} to itself; a and b must be different nodes",
                    l.number, l.a
                ));
            }
            link_prefix4(l)?;
            link_prefix6(l)?;
        }
        let base_names: BTreeSet<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
        let mut segments = BTreeSet::new();
        for g in &self.segments {
            let what = format!("segment {} ({:?})", g.number, g.name);
            if !(1..=255).contains(&g.number) {
                return Err(format!("{what}: number out of range: use 1..=255"));
            }
            if numbers.contains(&g.number) || !segments.insert(g.number) {
                return Err(format!(
                    "{what}: number {} is already used by another [[link]] or [[segment]]; link and segment numbers must be unique",
                    g.number
                ));
            }
            if g.members.len() < 2 {
                return Err(format!(
                    "{what}: needs at least two members (for two nodes, use a [[link]])"
                ));
            }
            if g.members.len() > SEGMENT_MAX_MEMBERS {
                return Err(format!(
                    "{what}: {} members; at most {SEGMENT_MAX_MEMBERS}",
                    g.members.len()
                ));
            }
            let mut seen = BTreeSet::new();
            for m in &g.members {
                if !base_names.contains(m.as_str()) {
                    return Err(format!(
                        "{what}: unknown member {m:?}; define it with [[node]] name = {m:?} (segments join base nodes only)"
                    ));
                }
                if !seen.insert(m.as_str()) {
                    return Err(format!("{what}: member {m:?} is listed twice"));
                }
            }
            let l = g.as_link();
            let (_, len4) = link_prefix4(&l).map_err(|m| m.replacen("link", "segment", 1))?;
            let (_, len6) = link_prefix6(&l).map_err(|m| m.replacen("link", "segment", 1))?;
            let fits = |bits: u32| bits >= 31 || (g.members.len() as u128) + 2 <= (1u128 << bits);
            if !fits(32 - u32::from(len4)) || !fits(128 - u32::from(len6)) {
                return Err(format!(
                    "{what}: its prefixes are too small for {} members; use a shorter prefix",
                    g.members.len()
                ));
            }
        }
        let on_link = |node: &str, link: u32| {
            full.links
                .iter()
                .filter(|l| l.hop.is_none())
                .any(|l| l.number == link && (l.a == node || l.b == node))
                || self
                    .segments
                    .iter()
                    .any(|g| g.number == link && g.members.iter().any(|m| m == node))
        };
        for n in &full.nodes {
            if let Some(m) = &n.mptcp {
                for (what, v) in [
                    ("subflows", m.subflows),
                    ("add_addr_accepted", m.add_addr_accepted),
                ] {
                    if v.is_some_and(|v| v > 8) {
                        return Err(format!(
                            "node {:?}: mptcp.{what} must be 0..=8 (the kernel's maximum)",
                            n.name
                        ));
                    }
                }
                for e in &m.endpoints {
                    if !on_link(&n.name, e.link) {
                        return Err(format!("node {:?}: mptcp endpoint on link {}, but the node is not on that link", n.name, e.link));
                    }
                    if e.flags.is_empty() {
                        return Err(format!("node {:?}: mptcp endpoint on link {} has no flags; use subflow, signal, backup or fullmesh", n.name, e.link));
                    }
                }
            }
        }
        for r in &full.routes {
            if !names.contains(r.node.as_str()) {
                return Err(format!("route: unknown node {:?}", r.node));
            }
            if !numbers.contains(&r.to_link) {
                return Err(format!(
                    "route in {:?}: unknown to_link {}",
                    r.node, r.to_link
                ));
            }
            if !on_link(&r.node, r.via_link) {
                return Err(format!(
                    "route in {:?}: via_link {} is not one of the node's links",
                    r.node, r.via_link
                ));
            }
        }
        if let Some(inet) = &self.internet {
            for f in &inet.forwarding {
                if !names.contains(f.as_str()) {
                    return Err(format!("internet.forwarding: unknown node {f:?}"));
                }
            }
        }
        for l in &self.links {
            for end in [&l.a, &l.b] {
                if !base_names.contains(end.as_str()) {
                    return Err(format!("link {}: node {end:?} exists only in [internet]; move the link to [[internet.link]]", l.number));
                }
            }
        }
        for r in &self.routes {
            if !base_names.contains(r.node.as_str()) {
                return Err(format!("route: node {:?} exists only in [internet]; move the route to [[internet.route]]", r.node));
            }
        }
        Ok(())
    }

    /// The topology to build: the base, plus the internet part when asked.
    /// Endpoints and routes on links that are not built are left out.
    pub(crate) fn active(&self, internet: bool) -> Active {
        let mut nodes = self.nodes.clone();
        let mut links = self.links.clone();
        let mut routes = self.routes.clone();
        if let (true, Some(inet)) = (internet, &self.internet) {
            nodes.extend(inet.nodes.iter().cloned());
            links.extend(inet.links.iter().cloned());
            routes.extend(inet.routes.iter().cloned());
            for n in nodes.iter_mut() {
                if inet.forwarding.contains(&n.name) {
                    n.forwarding = true;
                }
            }
        }
        for g in &self.segments {
            nodes.push(NodeSpec {
                name: g.name.clone(),
                forwarding: false,
                mptcp: None,
                proxy_arp: false,
                bridge: true,
            });
            links.extend(g.hops());
        }
        let mut numbers: BTreeSet<u32> = links.iter().map(|l| l.number).collect();
        numbers.extend(self.segments.iter().map(|g| g.number));
        for n in nodes.iter_mut() {
            if let Some(m) = n.mptcp.as_mut() {
                m.endpoints.retain(|e| numbers.contains(&e.link));
            }
        }
        routes.retain(|r| numbers.contains(&r.to_link) && numbers.contains(&r.via_link));
        Active {
            nodes,
            links,
            routes,
        }
    }
}

/// The node name the link emulator's namespace takes (`ds-<id>-emu`).
pub(crate) const EMULATOR_NODE: &str = "emu";

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 32 {
        return Err("must be 1 to 32 characters".into());
    }
    if name == EMULATOR_NODE {
        return Err(format!(
            "{EMULATOR_NODE:?} is reserved for the link emulator's namespace; choose another name"
        ));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(
            "use only letters, digits and `_` (it becomes part of a namespace name)".into(),
        );
    }
    Ok(())
}

/// Network address and prefix length of link `l`'s IPv4 subnet.
pub(crate) fn link_prefix4(l: &LinkSpec) -> Result<(Ipv4Addr, u8), String> {
    let Some(text) = &l.ipv4 else {
        return Ok((Ipv4Addr::new(198, 18, l.number as u8, 0), 24));
    };
    let (addr, len) = split_prefix(text).ok_or_else(|| {
        format!(
            "link {}: ipv4 = {text:?} is not a prefix like \"198.18.7.0/24\"",
            l.number
        )
    })?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("link {}: ipv4 = {text:?}: bad address", l.number))?;
    if !(15..=30).contains(&len) {
        return Err(format!(
            "link {}: ipv4 = {text:?}: prefix length must be 15..=30",
            l.number
        ));
    }
    let mask = u32::MAX << (32 - len);
    let net = u32::from(addr) & mask;
    // Inside the benchmarking range 198.18.0.0/15 only: nothing we build may
    // look like a real destination.
    if net & 0xfffe_0000 != 0xc612_0000 {
        return Err(format!(
            "link {}: ipv4 = {text:?} is outside 198.18.0.0/15, the only range testbeds may use",
            l.number
        ));
    }
    Ok((Ipv4Addr::from(net), len))
}

/// Network address and prefix length of link `l`'s IPv6 subnet.
pub(crate) fn link_prefix6(l: &LinkSpec) -> Result<(Ipv6Addr, u8), String> {
    let Some(text) = &l.ipv6 else {
        return Ok((Ipv6Addr::new(0x2001, 2, 0, l.number as u16, 0, 0, 0, 0), 64));
    };
    let (addr, len) = split_prefix(text).ok_or_else(|| {
        format!(
            "link {}: ipv6 = {text:?} is not a prefix like \"2001:2:0:7::/64\"",
            l.number
        )
    })?;
    let addr: Ipv6Addr = addr
        .parse()
        .map_err(|_| format!("link {}: ipv6 = {text:?}: bad address", l.number))?;
    if !(48..=126).contains(&len) {
        return Err(format!(
            "link {}: ipv6 = {text:?}: prefix length must be 48..=126",
            l.number
        ));
    }
    let mask = u128::MAX << (128 - len);
    let net = u128::from(addr) & mask;
    if net >> 80 != 0x2001_0002_0000 {
        return Err(format!(
            "link {}: ipv6 = {text:?} is outside 2001:2::/48, the only range testbeds may use",
            l.number
        ));
    }
    Ok((Ipv6Addr::from(net), len))
}

fn split_prefix(text: &str) -> Option<(&str, u8)> {
    let (addr, len) = text.split_once('/')?;
    Some((addr, len.parse().ok()?))
}

/// Host `host` (1 for side a, 2 for side b) of link `l`, IPv4.
pub(crate) fn host4(l: &LinkSpec, host: u8) -> Result<(Ipv4Addr, u8), String> {
    let (net, len) = link_prefix4(l)?;
    Ok((Ipv4Addr::from(u32::from(net) + u32::from(host)), len))
}

/// Host `host` (1 for side a, 2 for side b) of link `l`, IPv6.
pub(crate) fn host6(l: &LinkSpec, host: u8) -> Result<(Ipv6Addr, u8), String> {
    let (net, len) = link_prefix6(l)?;
    Ok((Ipv6Addr::from(u128::from(net) + u128::from(host)), len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse_and_use_the_addressing_scheme() {
        let s = Spec::builtin("two-gateways").unwrap();
        assert_eq!(s.links.len(), 2);
        let inet = s.active(true);
        assert_eq!(inet.nodes.len(), 3);
        assert!(inet.nodes.iter().any(|n| n.name == "gw2" && n.forwarding));
        let base = s.active(false);
        assert_eq!(base.nodes.len(), 2);
        assert!(base.routes.is_empty());
        assert!(!base.nodes.iter().any(|n| n.forwarding));
        let l2 = &s.links[1];
        assert_eq!(host4(l2, 1).unwrap(), ("198.18.2.1".parse().unwrap(), 24));
        assert_eq!(
            host6(l2, 2).unwrap(),
            ("2001:2:0:2::2".parse().unwrap(), 64)
        );
        let c = Spec::load("local-cache").unwrap();
        assert_eq!(c.nodes[0].name, "client");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let base = "name='x'\n[[node]]\nname='a'\n[[node]]\nname='b'\n";
        let bad_key = format!("{base}[[link]]\nnumber=1\na='a'\nb='b'\nspeed=3\n");
        let e = Spec::parse(&bad_key, "t").unwrap_err().to_string();
        assert!(e.contains("unknown field `speed`"), "{e}");
        assert!(e.contains("line 10"), "{e}");
        let bad_node = format!("{base}[[link]]\nnumber=1\na='a'\nb='c'\n");
        let e = Spec::parse(&bad_node, "t").unwrap_err().to_string();
        assert!(e.contains("unknown node \"c\""), "{e}");
        let outside = format!("{base}[[link]]\nnumber=1\na='a'\nb='b'\nipv4='10.0.0.0/24'\n");
        let e = Spec::parse(&outside, "t").unwrap_err().to_string();
        assert!(e.contains("outside 198.18.0.0/15"), "{e}");
        let outside6 = format!("{base}[[link]]\nnumber=1\na='a'\nb='b'\nipv6='2001:db8::/64'\n");
        let e = Spec::parse(&outside6, "t").unwrap_err().to_string();
        assert!(e.contains("outside 2001:2::/48"), "{e}");
        let ok = format!("{base}[[link]]\nnumber=9\na='a'\nb='b'\nipv4='198.19.4.0/24'\nipv6='2001:2:0:99::/64'\n");
        let s = Spec::parse(&ok, "t").unwrap();
        assert_eq!(
            host4(&s.links[0], 2).unwrap().0,
            "198.19.4.2".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(
            host6(&s.links[0], 1).unwrap().0,
            "2001:2:0:99::1".parse::<Ipv6Addr>().unwrap()
        );
        let e = Spec::load("no-such-spec").unwrap_err().to_string();
        assert!(e.contains("two-gateways"), "{e}");
        let e = Spec::load("/nonexistent/x.toml").unwrap_err().to_string();
        assert!(e.contains("/nonexistent/x.toml"), "{e}");
    }

    #[test]
    fn congestion_control_defaults_to_cubic_and_takes_a_name_only() {
        let base =
            "name='x'\n[[node]]\nname='a'\n[[node]]\nname='b'\n[[link]]\nnumber=1\na='a'\nb='b'\n";
        assert_eq!(Spec::parse(base, "t").unwrap().congestion_control, "cubic");
        let reno = format!("congestion_control='reno'\n{base}");
        assert_eq!(Spec::parse(&reno, "t").unwrap().congestion_control, "reno");
        for bad in ["", "../x", "Cubic", "a_name_longer_than_15"] {
            let text = format!("congestion_control='{bad}'\n{base}");
            let e = Spec::parse(&text, "t").unwrap_err().to_string();
            assert!(e.contains("congestion_control"), "{bad}: {e}");
        }
    }

    #[test]
    fn segments_expand_to_hops_and_bad_ones_are_errors() {
        let home = Spec::builtin("drop-home").unwrap();
        assert_eq!(home.nodes.len(), 5);
        assert_eq!(home.links.len(), 7);
        let mesh = Spec::drop_mesh(32).unwrap();
        assert_eq!(mesh.nodes.len(), 32);
        let active = mesh.active(false);
        // 32 devices + two bridges; one hop per device and segment.
        assert_eq!(active.nodes.len(), 34);
        assert_eq!(active.links.len(), 64);
        let hop = active
            .links
            .iter()
            .find(|l| l.a == "dev7" && l.b == "ethernet")
            .unwrap();
        assert_eq!(
            hop.hop,
            Some(Hop {
                segment: 2,
                host: 7
            })
        );
        assert_eq!(hop.params().a_to_b.rate_mbit, Some(1000));
        assert_eq!(Spec::builtin("drop-mesh").unwrap().nodes.len(), 8);
        // Endpoints on a segment are kept.
        let dev = active.nodes.iter().find(|n| n.name == "dev3").unwrap();
        assert_eq!(dev.mptcp.as_ref().unwrap().endpoints[0].link, 2);

        let base = "name='x'\n[[node]]\nname='a'\n[[node]]\nname='b'\n[[node]]\nname='c'\n";
        for (bad, what) in [
            ("[[segment]]\nnumber=1\nname='s'\nmembers=['a']\n", "at least two members"),
            ("[[segment]]\nnumber=1\nname='s'\nmembers=['a','d']\n", "unknown member \"d\""),
            ("[[segment]]\nnumber=1\nname='s'\nmembers=['a','a']\n", "listed twice"),
            ("[[segment]]\nnumber=1\nname='a'\nmembers=['b','c']\n", "defined twice"),
            ("[[segment]]\nnumber=0\nname='s'\nmembers=['b','c']\n", "out of range"),
            (
                "[[link]]\nnumber=1\na='a'\nb='b'\n[[segment]]\nnumber=1\nname='s'\nmembers=['b','c']\n",
                "already used",
            ),
            (
                "[[segment]]\nnumber=1\nname='s'\nmembers=['a','b','c']\nipv4='198.18.1.0/30'\n",
                "too small for 3 members",
            ),
            (
                "[[segment]]\nnumber=1\nname='s'\nmembers=['a','b']\nloss_pct=120\n",
                "120 % is not a usable loss rate",
            ),
        ] {
            let e = Spec::parse(&format!("{base}{bad}"), "mesh.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains(what), "{bad}: {e}");
            assert!(e.starts_with("testbed spec mesh.toml: "), "{bad}: {e}");
        }
        let e = Spec::parse(
            &format!("{base}[[segment]]\nnumber=1\nname='s'\nmembers=['a','b']\nspeed=3\n"),
            "mesh.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("unknown field `speed`") && e.contains("line 12"),
            "{e}"
        );
    }

    #[test]
    fn link_profiles_keys_and_directions_combine() {
        let base =
            "name='x'\n[[node]]\nname='a'\n[[node]]\nname='b'\n[[link]]\nnumber=1\na='a'\nb='b'\n";
        let text = format!(
            "{base}profile='lte'\ndelay_ms=30\n[link.a_to_b]\nloss_pct=2.5\n[link.b_to_a]\nrate_mbit=40\njitter_ms=0\n"
        );
        let s = Spec::parse(&text, "t").unwrap();
        let p = s.links[0].params();
        // The profile's, then the link's keys, then each direction's.
        assert_eq!(p.a_to_b.rate_mbit, Some(10));
        assert_eq!(p.a_to_b.delay_ms, 30.0);
        assert_eq!(p.a_to_b.jitter_ms, 4.0);
        assert_eq!(p.a_to_b.loss_pct, 2.5);
        assert_eq!(p.b_to_a.rate_mbit, Some(40));
        assert_eq!(p.b_to_a.delay_ms, 30.0);
        assert_eq!(p.b_to_a.jitter_ms, 0.0);
        assert_eq!(p.b_to_a.loss_pct, 0.1);
        // A profile given in Options replaces the spec's; explicit keys stay.
        let (prof, q) = s.links[0].params_with(Some(LinkChoice::Profile(Profile::Wifi)));
        assert_eq!(prof, Some(Profile::Wifi));
        assert_eq!(q.a_to_b.rate_mbit, Some(50));
        assert_eq!(q.a_to_b.delay_ms, 30.0);
        let (prof, q) = s.links[0].params_with(Some(LinkChoice::Rate(7)));
        assert_eq!(prof, None);
        assert_eq!(q, LinkParams::rate_only(Some(7)));

        for (bad, line, what) in [
            ("delay_ms=-1\n", 10, "-1 ms is not a usable delay"),
            ("jitter_ms=nan\n", 10, "NaN ms is not a usable delay"),
            ("loss_pct=101\n", 10, "101 % is not a usable loss rate"),
            ("profile='wimax'\n", 10, "unknown variant `wimax`"),
            ("rate_mbit=0\n", 10, "rate 0 Mbit/s"),
            ("rate_mbit=-5\n", 10, "rate -5 Mbit/s"),
            (
                "[link.b_to_a]\nloss_pct=-0.5\n",
                11,
                "-0.5 % is not a usable loss rate",
            ),
            ("[link.a_to_b]\ndelay=3\n", 11, "unknown field `delay`"),
        ] {
            let e = Spec::parse(&format!("{base}{bad}"), "spec.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains(what), "{bad}: {e}");
            assert!(e.contains(&format!("line {line}")), "{bad}: {e}");
            assert!(e.starts_with("testbed spec spec.toml: "), "{bad}: {e}");
        }
        let e = Spec::parse("name='x'\n[[node]]\nname='emu'\n", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("reserved for the link emulator"), "{e}");
    }
}
