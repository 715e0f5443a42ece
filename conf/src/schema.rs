//! The device file schema. Every struct denies unknown keys: a typo is an
//! error, never a silently ignored setting.

use dropshim_abi::{is_local_destination, is_loopback, unmapped};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// Which network stack carries a device's TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The host kernel's own MPTCP (`IPPROTO_MPTCP`).
    Native,
    /// A User Mode Linux kernel that owns the device's data interfaces.
    Uml,
    /// A Linux Kernel Library linked into the program.
    Lkl,
}

impl BackendKind {
    /// The name a device file and `DROPSHIM_BACKEND` use for this backend.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Native => "native",
            BackendKind::Uml => "uml",
            BackendKind::Lkl => "lkl",
        }
    }

    /// Parses the value of `DROPSHIM_BACKEND` or `--backend`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "native" => Some(BackendKind::Native),
            "uml" => Some(BackendKind::Uml),
            "lkl" => Some(BackendKind::Lkl),
            _ => None,
        }
    }
}

/// One device file, parsed and validated.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Name and backend of the device (`[device]`).
    pub device: Device,
    /// The device's network interfaces (`[[interfaces]]`), in file order.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Endpoint limits, path manager and scheduler (`[mptcp]`).
    #[serde(default)]
    pub mptcp: MptcpSettings,
    /// Which sockets get MPTCP (`[policy]`).
    #[serde(default)]
    pub policy: Policy,
    /// Settings for the uml backend (`[uml]`); defaults apply when absent.
    pub uml: Option<UmlSettings>,
    /// Settings for the lkl backend (`[lkl]`); defaults apply when absent.
    pub lkl: Option<LklSettings>,
}

/// `[device]`: what the device is called and which stack carries its TCP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// A short name; it names the device's runtime files (UML socket, state).
    pub name: String,
    /// The stack that carries the device's TCP, unless `DROPSHIM_BACKEND` or `--backend` overrides
    /// it.
    pub backend: BackendKind,
}

/// MPTCP endpoint roles, as `ip mptcp endpoint` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointRole {
    /// Open an extra subflow from this address to the peer.
    Subflow,
    /// Announce this address to the peer (ADD_ADDR).
    Signal,
    /// Subflows over this address are used only when others fail.
    Backup,
    /// Open subflows from this address to every address the peer announced.
    Fullmesh,
}

impl EndpointRole {
    /// The name `ip mptcp endpoint` uses for this role.
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointRole::Subflow => "subflow",
            EndpointRole::Signal => "signal",
            EndpointRole::Backup => "backup",
            EndpointRole::Fullmesh => "fullmesh",
        }
    }
}

/// An address with its prefix length, written `198.18.1.1/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network (or host) address.
    pub addr: IpAddr,
    /// Prefix length in bits: at most 32 for IPv4, 128 for IPv6.
    pub prefix: u8,
}

/// One of the device's network interfaces.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// Host interface name (at most 15 bytes).
    pub name: String,
    /// Addresses with prefix length. For native they must already be on the
    /// interface; uml and lkl configure them inside their own kernel.
    #[serde(default)]
    pub addresses: Vec<Cidr>,
    /// MPTCP endpoint roles for every address of this interface.
    #[serde(default)]
    pub endpoint: Vec<EndpointRole>,
    /// Default gateway reached through this interface (uml and lkl only):
    /// each interface with one gets its own default route, metric 100 +
    /// its position in the file, so the first carries the traffic.
    pub gateway: Option<IpAddr>,
    /// What sending over this interface costs (money, energy), 0 to
    /// [`MAX_COST`]; lower is cheaper. uml and lkl set it as the
    /// interface's link group (`ip link set dev X group N`) inside their
    /// kernel, where the `costaware` scheduler reads it. Unset: 0.
    pub cost: Option<u32>,
}

/// The highest interface cost a device file may state.
pub const MAX_COST: u32 = 1_000_000;

/// Path managers a stack may offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathManager {
    /// The kernel's in-kernel path manager, driven by the MPTCP endpoints.
    Kernel,
    /// dropshim's own path manager in user space (`[mptcp.userspace]`), over generic netlink.
    Userspace,
}

impl PathManager {
    /// The name a device file uses for this path manager.
    pub fn as_str(self) -> &'static str {
        match self {
            PathManager::Kernel => "kernel",
            PathManager::Userspace => "userspace",
        }
    }
}

/// `[mptcp]`: how the device's kernel runs MPTCP.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MptcpSettings {
    /// Subflow and ADD_ADDR limits (`ip mptcp limits`); absent, the stack's current limits stay.
    #[serde(default)]
    pub limits: Option<Limits>,
    /// Which path manager opens subflows; absent, the stack's setting stays.
    pub path_manager: Option<PathManager>,
    /// Packet scheduler name (`net.mptcp.scheduler`); the host kernel here
    /// offers only `default`.
    pub scheduler: Option<String>,
    /// dropshim's own path manager, used with `path_manager = "userspace"`.
    pub userspace: Option<UserspacePm>,
}

/// The policies of dropshim's userspace path manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PmPolicy {
    /// A subflow over every local address x peer address pair.
    Fullmesh,
    /// `subflows` subflows over the connection's one address pair.
    Ndiffports,
    /// A subflow per interface; those on `backup` interfaces are backups,
    /// promoted (MP_PRIO) while no active interface is up.
    Backup,
    /// Interfaces above the lowest `cost` carry a subflow only while the
    /// cheapest are down or saturated.
    Costaware,
}

impl PmPolicy {
    /// The name a device file uses for this policy.
    pub fn as_str(self) -> &'static str {
        match self {
            PmPolicy::Fullmesh => "fullmesh",
            PmPolicy::Ndiffports => "ndiffports",
            PmPolicy::Backup => "backup",
            PmPolicy::Costaware => "costaware",
        }
    }
}

/// `[mptcp.userspace]`: the policy of dropshim's path manager and its
/// parameters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserspacePm {
    /// Which policy opens subflows.
    pub policy: PmPolicy,
    /// ndiffports: subflows per connection, initial one included
    /// ([`NDIFFPORTS_MAX`] at most). Default 2.
    pub subflows: Option<u32>,
    /// costaware: the cheap subflows count as saturated while the bytes
    /// they hold unacknowledged stay above this many KiB ...
    pub saturation_kib: Option<u32>,
    /// ... for this many milliseconds. Default 1000.
    pub saturation_ms: Option<u32>,
}

/// The most subflows ndiffports opens per connection.
pub const NDIFFPORTS_MAX: u32 = 8;

/// `ip mptcp limits`: at most 8 each in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Extra subflows per connection the kernel may open or accept.
    pub subflows: u32,
    /// ADD_ADDR announcements per connection the kernel accepts from the peer.
    pub add_addr_accepted: u32,
}

/// What a socket becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Upgrade the socket to MPTCP.
    Mptcp,
    /// Leave the socket on plain TCP.
    Tcp,
}

/// Which TCP sockets are upgraded to MPTCP. Rules are tried in order; the
/// first whose destination and ports match decides, otherwise `default`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// What a socket gets when no rule matches.
    #[serde(default = "Policy::default_action")]
    pub default: Action,
    /// Whether loopback destinations (127.0.0.0/8, ::1) may get MPTCP.
    #[serde(default)]
    pub loopback: bool,
    /// Whether listening sockets get MPTCP (they still accept plain TCP).
    #[serde(default = "Policy::default_listeners")]
    pub listeners: bool,
    /// The rules, tried in file order (`[[policy.rule]]`).
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
}

/// `[[policy.rule]]`: an action for the destinations and ports it names.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Destination network; absent means any.
    pub dest: Option<Cidr>,
    /// Destination ports; absent means any.
    #[serde(default)]
    pub ports: Vec<PortRange>,
    /// What a matching socket gets.
    pub action: Action,
}

/// A port or an inclusive range, written `443` or `"5201-5210"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// The first port of the range.
    pub first: u16,
    /// The last port of the range, included; never below `first`.
    pub last: u16,
}

/// UML backend settings (`[uml]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UmlSettings {
    /// A prebuilt UML kernel with MPTCP; absent means the one dropshim builds.
    pub kernel: Option<String>,
    /// Guest memory in MiB.
    #[serde(default = "UmlSettings::default_memory")]
    pub memory_mib: u32,
    /// Extra kernel command-line arguments.
    #[serde(default)]
    pub cmdline: Vec<String>,
}

/// LKL backend settings (`[lkl]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LklSettings {
    /// Memory of the library kernel in MiB. Its TCP memory pool reaches
    /// pressure at 1/6 of it: 128 MiB holds two connections at full
    /// window on a long path.
    #[serde(default = "LklSettings::default_memory")]
    pub memory_mib: u32,
    /// Extra boot options for the library kernel.
    #[serde(default)]
    pub boot_options: Vec<String>,
}

impl UmlSettings {
    fn default_memory() -> u32 {
        256
    }
}

impl LklSettings {
    /// The library kernel's own default (`BootOptions`), so that a table
    /// written only for `boot_options` does not halve its memory.
    fn default_memory() -> u32 {
        128
    }
}

impl Policy {
    fn default_action() -> Action {
        Action::Mptcp
    }
    fn default_listeners() -> bool {
        true
    }

    /// What a socket gets before its address is known (at `socket()`).
    pub fn initial(&self) -> Action {
        // Rules are about destinations, unknown yet: start with the
        // default and let connect(), bind() or listen() correct it.
        self.default
    }

    /// What a socket connecting to `dest` gets.
    pub fn decide(&self, dest: &SocketAddr) -> Action {
        let ip = unmapped(dest.ip());
        if is_local_destination(ip) && !self.loopback {
            return Action::Tcp;
        }
        for rule in &self.rules {
            if rule.matches(ip, dest.port()) {
                return rule.action;
            }
        }
        self.default
    }

    /// What a socket bound to `local` gets. Unlike a destination, the
    /// wildcard address is not local: a server bound to 0.0.0.0 serves
    /// every network, so only an explicit loopback bind, the rules (a rule
    /// naming only ports matches a wildcard bind on that port) and the
    /// default count. Whether a listening socket keeps MPTCP is
    /// [`Policy::listeners`], applied at listen().
    pub fn decide_bind(&self, local: &SocketAddr) -> Action {
        let ip = unmapped(local.ip());
        if is_loopback(ip) && !self.loopback {
            return Action::Tcp;
        }
        for rule in &self.rules {
            if rule.matches(ip, local.port()) {
                return rule.action;
            }
        }
        self.default
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            default: Action::Mptcp,
            loopback: false,
            listeners: true,
            rules: Vec::new(),
        }
    }
}

impl Rule {
    /// Whether a destination (already [`unmapped`]) falls under this rule.
    pub fn matches(&self, ip: IpAddr, port: u16) -> bool {
        let net_ok = match self.dest {
            Some(net) => net.contains(ip),
            None => true,
        };
        net_ok && (self.ports.is_empty() || self.ports.iter().any(|p| p.contains(port)))
    }
}

impl Cidr {
    /// Whether `ip` lies inside this network; an IPv4 address never lies in an IPv6 network and the
    /// reverse.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl PortRange {
    /// Whether `port` lies inside the range, both ends included.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl DeviceConfig {
    /// The configuration used when no device file is given: native
    /// backend, every non-loopback TCP socket upgraded to MPTCP.
    pub fn embedded_default() -> Self {
        DeviceConfig {
            device: Device {
                name: "default".to_string(),
                backend: BackendKind::Native,
            },
            interfaces: Vec::new(),
            mptcp: MptcpSettings::default(),
            policy: Policy::default(),
            uml: None,
            lkl: None,
        }
    }
}

/// What a `Cidr` looks like, for error messages.
pub(crate) const CIDR_EXPECTED: &str =
    "an address with optional prefix length, like \"198.18.1.1/24\" or \"2001:2::1/64\"";
/// What a `PortRange` looks like, for error messages.
pub(crate) const PORTS_EXPECTED: &str =
    "a port from 1 to 65535 like 443, or a range like \"5201-5210\" with first <= last";

/// Why a `Cidr` or `PortRange` did not parse. Its Display is the part
/// before "; expected" in a diagnostic; the caller adds the expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError(pub String);

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ValueError {}

impl FromStr for Cidr {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Self, ValueError> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| ValueError(format!("`{addr_text}` is not an IPv4 or IPv6 address")))?;
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            Some(p) => {
                // u8::from_str would accept "+24"; only plain digits are a prefix.
                let digits_only = !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
                let value = if digits_only {
                    p.parse::<u32>().ok()
                } else {
                    None
                };
                match value {
                    Some(v) if v <= u32::from(max) => v as u8,
                    Some(v) => {
                        let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
                        return Err(ValueError(format!(
                            "prefix length {v} in `{text}` is longer than {max}, the maximum for {family}"
                        )));
                    }
                    None => {
                        return Err(ValueError(format!(
                            "`{p}` in `{text}` is not a prefix length"
                        )))
                    }
                }
            }
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CidrVisitor;
        impl Visitor<'_> for CidrVisitor {
            type Value = Cidr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(CIDR_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Cidr, E> {
                v.parse()
                    .map_err(|e: ValueError| E::custom(format!("{e}; expected {CIDR_EXPECTED}")))
            }
        }
        deserializer.deserialize_str(CidrVisitor)
    }
}

impl PortRange {
    fn checked(first: i64, last: i64, text: &str) -> Result<Self, ValueError> {
        let valid = 1..=i64::from(u16::MAX);
        for port in [first, last] {
            if !valid.contains(&port) {
                return Err(ValueError(format!(
                    "port {port} in `{text}` is outside 1-65535"
                )));
            }
        }
        if first > last {
            return Err(ValueError(format!(
                "range `{text}` runs backwards ({first} > {last})"
            )));
        }
        // Both are within 1..=65535, checked above.
        Ok(PortRange {
            first: first as u16,
            last: last as u16,
        })
    }
}

impl FromStr for PortRange {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Self, ValueError> {
        let number = |part: &str| -> Result<i64, ValueError> {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ValueError(format!(
                    "`{text}` is not a port or a port range"
                )));
            }
            // Digits only; anything too long for i64 is out of range anyway.
            Ok(part.parse::<i64>().unwrap_or(i64::MAX))
        };
        match text.split_once('-') {
            Some((a, b)) => PortRange::checked(number(a)?, number(b)?, text),
            None => {
                let port = number(text)?;
                PortRange::checked(port, port, text)
            }
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PortVisitor;
        impl Visitor<'_> for PortVisitor {
            type Value = PortRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(PORTS_EXPECTED)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortRange, E> {
                PortRange::checked(v, v, &v.to_string())
                    .map_err(|e| E::custom(format!("{e}; expected {PORTS_EXPECTED}")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortRange, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortRange, E> {
                v.parse()
                    .map_err(|e: ValueError| E::custom(format!("{e}; expected {PORTS_EXPECTED}")))
            }
        }
        deserializer.deserialize_any(PortVisitor)
    }
}
