//! Building, describing and removing one testbed.
//!
//! Naming: a testbed has an id; node N lives in namespace `ds-<id>-<N>`,
//! and its end of link K is the interface `link<K>` inside that namespace.
//! Interfaces are created directly inside their namespaces, so two
//! testbeds never meet in one interface namespace and never clash.
//!
//! Ownership: `/run/dropshim/testbeds/<id>.json` is written (atomically,
//! exclusively: it also claims the id) before any namespace exists and names
//! the owning process (pid + start time). A testbed whose owner is dead is
//! stale and removed by the next `up`; `keep` clears the owner, so kept
//! testbeds stay until removed by id.

use crate::emu::{self, EmuLink, EmulatorCpu};
use crate::exec::tool;
use crate::link::{LinkParams, Method, Profile};
use crate::spec::{self, EndpointFlag, Family, Hop, MptcpSpec, RouteSpec, Spec, EMULATOR_NODE};
use crate::{sys, Error, Options, Shaper};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where testbed state files live (one `<id>.json` per testbed).
pub const STATE_DIR: &str = "/run/dropshim/testbeds";
const NETNS_DIR: &str = "/run/netns";
const NS_PREFIX: &str = "ds-";
/// The bridge in a segment's namespace.
const SEGMENT_BRIDGE: &str = "br0";
/// Policy-routing tables are 1000 + link number; their rules sit after the
/// main table (pref 32766) so they only catch what main cannot route.
const TABLE_BASE: u32 = 1000;
const RULE_PREF_BASE: u32 = 33000;

static NEXT_AUTO_ID: AtomicU32 = AtomicU32::new(0);

/// An emulated network. Dropping it removes everything it created (its
/// namespaces, which take their veth ends with them), unless it was
/// [`kept`](Testbed::keep).
pub struct Testbed {
    id: String,
    spec: Spec,
    opts: Options,
    nodes: Vec<Node>,
    links: Vec<Link>,
    routes: Vec<RouteSpec>,
    /// Current shaping per link and direction ([a->b, b->a]; None =
    /// unshaped).
    rates: Mutex<BTreeMap<u32, [Option<u32>; 2]>>,
    owned: bool,
    /// The link emulator's kernels, when this handle started them
    /// (waited for after removal so no zombie stays behind).
    emulator: Mutex<Vec<Child>>,
    /// The seed of the emulator's netem qdiscs, when it has any.
    netem_seed: Option<u64>,
}

struct Node {
    name: String,
    netns: String,
    forwarding: bool,
    mptcp: Option<MptcpSpec>,
    proxy_arp: bool,
    /// Holds a segment's bridge (`br0`), which its links' ends join.
    bridge: bool,
}

struct Link {
    number: u32,
    ends: [End; 2],
    profile: Option<Profile>,
    /// Rates as built (the current ones are in `Testbed::rates`), delay,
    /// jitter and loss.
    params: LinkParams,
    method: Method,
    /// Set when the link is a member's hop onto a segment's bridge.
    hop: Option<Hop>,
}

struct End {
    node: usize,
    ifname: String,
    addr4: Ipv4Addr,
    len4: u8,
    addr6: Ipv6Addr,
    len6: u8,
    /// A port of its node's bridge: no addresses of its own.
    bridged: bool,
}

/// What the state file holds.
#[derive(Serialize, Deserialize)]
struct State {
    id: String,
    /// The process whose exit makes this testbed stale; None once kept.
    owner: Option<Owner>,
    created_unix: u64,
    description: Description,
    spec: Spec,
    options: Options,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
struct Owner {
    pid: u32,
    start_time: u64,
}

impl Owner {
    fn me() -> Owner {
        let pid = std::process::id();
        Owner {
            pid,
            start_time: sys::start_time(pid).unwrap_or(0),
        }
    }
    fn alive(&self) -> bool {
        sys::start_time(self.pid) == Some(self.start_time)
    }
}

/// A readable account of a testbed (printed by the CLI, stored in the
/// state file).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Description {
    /// The testbed's id; every namespace it made is named `ds-<id>-...`.
    pub id: String,
    /// The name of the spec it was built from.
    pub spec: String,
    /// The qdisc shaping its links.
    pub shaper: Shaper,
    /// Whether the spec's `[internet]` part was built.
    pub internet: bool,
    /// Every node's TCP congestion control (the spec's `congestion_control`).
    #[serde(default)]
    pub congestion_control: String,
    /// Its nodes, in spec order.
    pub nodes: Vec<NodeInfo>,
    /// Its links, in the order they were built.
    pub links: Vec<LinkInfo>,
    /// The seed of the link emulator's netem qdiscs (its loss and jitter
    /// pattern), when links run on it: setting `DROPSHIM_TESTBED_NETEM_SEED`
    /// to it before `up` repeats the pattern.
    #[serde(default)]
    pub netem_seed: Option<u64>,
}

/// One node of a built testbed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's name in the spec.
    pub name: String,
    /// The network namespace that is the node.
    pub netns: String,
}

/// One link of a built testbed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkInfo {
    /// The link's number (a segment hop's is above 255).
    pub number: u32,
    /// Shaping rate from a to b (the same both ways unless the link's
    /// directions differ), None = unshaped.
    pub rate_mbit: Option<u32>,
    /// Side a of the link (the device).
    pub a: EndInfo,
    /// Side b of the link (the network).
    pub b: EndInfo,
    /// The preset the link was built from, if any.
    #[serde(default)]
    pub profile: Option<Profile>,
    /// Current rates, delay, jitter and loss per direction.
    #[serde(default)]
    pub params: LinkParams,
    /// How delay, jitter and loss are applied.
    #[serde(default = "plain")]
    pub method: Method,
}

fn plain() -> Method {
    Method::Plain
}

/// One end of a built link.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndInfo {
    /// The node this end is in.
    pub node: String,
    /// The interface's name in that node (`link<number>`; a segment's bridge port `m<host>`).
    pub ifname: String,
    /// The end's IPv4 address.
    pub addr4: Ipv4Addr,
    /// Prefix length of the IPv4 address.
    pub prefix4: u8,
    /// The end's IPv6 address.
    pub addr6: Ipv6Addr,
    /// Prefix length of the IPv6 address.
    pub prefix6: u8,
}

/// One testbed found on the machine.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The testbed's id.
    pub id: String,
    /// Whether it is kept, in use or left behind.
    pub status: Status,
    /// Spec name, when the state file could be read.
    pub spec: Option<String>,
    /// Its network namespaces that exist now.
    pub namespaces: Vec<String>,
}

/// Who owns a testbed found on the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Kept for later use (`dropshim testbed up`); removed only by id.
    Kept,
    /// Owned by a running process; removed when it drops the testbed.
    Running {
        /// The owning process.
        pid: u32,
    },
    /// Its owner died without removing it.
    Stale {
        /// The process that owned it.
        pid: u32,
    },
    /// Namespaces without a state file.
    Orphan,
}

fn check_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 24
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::BadId(id.to_string()))
    }
}

fn state_path(id: &str) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{id}.json"))
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |err| Error::Io { what, err }
}

/// The host's list of the congestion controls a network namespace may make
/// its default: the others fail with EPERM there.
const ALLOWED_CONGESTION_CONTROL: &str = "/proc/sys/net/ipv4/tcp_allowed_congestion_control";

/// Makes `name` one a namespace may choose, adding it to the host's allowed
/// list if it is not there (the list holds the host's default and `reno`
/// unless an administrator widened it). Adding only widens what may be
/// chosen: the host's own default and its sockets stay as they are.
fn allow_congestion_control(name: &str) -> Result<(), Error> {
    let allowed = fs::read_to_string(ALLOWED_CONGESTION_CONTROL)
        .map_err(io_err(format!("reading {ALLOWED_CONGESTION_CONTROL}")))?;
    if allowed.split_whitespace().any(|a| a == name) {
        return Ok(());
    }
    let wider = format!("{} {name}", allowed.trim());
    fs::write(ALLOWED_CONGESTION_CONTROL, &wider).map_err(io_err(format!(
        "adding the spec's congestion_control {name:?} to {ALLOWED_CONGESTION_CONTROL} \
         (is it in net.ipv4.tcp_available_congestion_control?)"
    )))?;
    eprintln!(
        "testbed: added {name} to the host's net.ipv4.tcp_allowed_congestion_control \
         (now \"{wider}\"), so that the nodes' namespaces may use it"
    );
    Ok(())
}

/// Namespaces under /run/netns grouped by testbed id.
fn namespaces_by_id() -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let Ok(dir) = fs::read_dir(NETNS_DIR) else {
        return map;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let Some((id, node)) = rest.split_once('-') else {
            continue;
        };
        if check_id(id).is_ok() && !node.is_empty() {
            map.entry(id.to_string()).or_default().push(name);
        }
    }
    map
}

fn read_state(id: &str) -> Option<State> {
    let text = fs::read_to_string(state_path(id)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Ids that have a state file.
fn state_ids() -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let Ok(dir) = fs::read_dir(STATE_DIR) else {
        return ids;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(id) = name.strip_suffix(".json") {
            if check_id(id).is_ok() {
                ids.insert(id.to_string());
            }
        }
    }
    ids
}

/// Write `state` to its file. `exclusive`: fail with Exists if the file is
/// already there (claiming the id). Written to a temporary file first so
/// readers never see half a file.
fn write_state(state: &State, exclusive: bool) -> Result<(), Error> {
    fs::create_dir_all(STATE_DIR).map_err(io_err(format!("creating {STATE_DIR}")))?;
    let path = state_path(&state.id);
    let tmp = Path::new(STATE_DIR).join(format!(".{}.{}.tmp", state.id, std::process::id()));
    let text = serde_json::to_string_pretty(state).map_err(|e| Error::Io {
        what: "encoding testbed state".into(),
        err: io::Error::other(e),
    })?;
    let mut f = fs::File::create(&tmp).map_err(io_err(format!("writing {}", tmp.display())))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.write_all(b"\n"))
        .map_err(io_err(format!("writing {}", tmp.display())))?;
    drop(f);
    let result = if exclusive {
        // link() fails if the name exists: an atomic claim of the id.
        fs::hard_link(&tmp, &path).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                Error::Exists(state.id.clone())
            } else {
                Error::Io {
                    what: format!("writing {}", path.display()),
                    err: e,
                }
            }
        })
    } else {
        fs::rename(&tmp, &path).map_err(io_err(format!("writing {}", path.display())))
    };
    let _ = fs::remove_file(&tmp);
    result
}

/// Kill every process whose network namespace is `ns` (the testbed's
/// programs that are still running), so the namespace really goes away.
fn kill_processes_in(ns: &str) {
    let Ok(target) = fs::metadata(Path::new(NETNS_DIR).join(ns)) else {
        return;
    };
    let me = std::process::id();
    let Ok(proc_dir) = fs::read_dir("/proc") else {
        return;
    };
    for entry in proc_dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(m) = fs::metadata(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        if m.dev() == target.dev() && m.ino() == target.ino() {
            sys::kill_pid(pid);
        }
    }
}

impl Testbed {
    /// Build `spec` on this machine. Removes stale testbeds first.
    pub fn up(spec: &Spec, opts: &Options) -> Result<Testbed, Error> {
        if !sys::is_root() {
            return Err(Error::NotRoot);
        }
        if opts.rate_mbit == Some(0) {
            return Err(Error::ZeroRate);
        }
        if opts.internet && spec.internet.is_none() {
            return Err(Error::NoInternet(spec.name.clone()));
        }
        if let Some(id) = &opts.id {
            check_id(id)?;
        }
        Testbed::remove_stale();
        let tb = loop {
            let id = match &opts.id {
                Some(id) => id.clone(),
                None => format!(
                    "p{}n{}",
                    std::process::id(),
                    NEXT_AUTO_ID.fetch_add(1, Ordering::Relaxed)
                ),
            };
            let mut tb = Testbed::layout(spec, opts, &id, false)?;
            if tb.links.iter().any(|l| l.method == Method::UmlNetem) && emu::host_has_netem() {
                for l in tb.links.iter_mut().filter(|l| l.method == Method::UmlNetem) {
                    l.method = Method::HostNetem;
                }
            }
            if tb.links.iter().any(|l| l.method == Method::UmlNetem) {
                tb.netem_seed = Some(match opts.netem_seed {
                    Some(seed) => seed,
                    None => emu::run_seed()?,
                });
            }
            let exists = namespaces_by_id().contains_key(&id);
            let claimed = if exists {
                Err(Error::Exists(id.clone()))
            } else {
                tb.write(Some(Owner::me()), true)
            };
            match claimed {
                Ok(()) => {
                    tb.owned = true;
                    break tb;
                }
                Err(Error::Exists(_)) if opts.id.is_none() => continue,
                Err(e) => return Err(e),
            }
        };
        // From here on, a failure drops `tb`, which removes what was made.
        tb.create()?;
        Ok(tb)
    }

    /// A handle on a kept testbed (for `dropshim testbed link`). Dropping
    /// it leaves the testbed in place.
    pub fn attach(id: &str) -> Result<Testbed, Error> {
        check_id(id)?;
        let state = read_state(id).ok_or_else(|| Error::NotFound(id.to_string()))?;
        let mut tb = Testbed::layout(&state.spec, &state.options, id, false)?;
        let rates: BTreeMap<u32, [Option<u32>; 2]> = state
            .description
            .links
            .iter()
            .map(|l| {
                (
                    l.number,
                    [l.params.a_to_b.rate_mbit, l.params.b_to_a.rate_mbit],
                )
            })
            .collect();
        tb.rates = Mutex::new(rates);
        tb.netem_seed = state.description.netem_seed;
        for info in &state.description.links {
            if let Some(l) = tb.links.iter_mut().find(|l| l.number == info.number) {
                l.method = info.method;
            }
        }
        Ok(tb)
    }

    /// Work out names and addresses without touching the system.
    fn layout(spec: &Spec, opts: &Options, id: &str, owned: bool) -> Result<Testbed, Error> {
        let active = spec.active(opts.internet);
        if opts.links.len() > active.links.len() {
            return Err(Error::TooManyLinks {
                given: opts.links.len(),
                spec: spec.name.clone(),
                links: active.links.len(),
            });
        }
        let nodes: Vec<Node> = active
            .nodes
            .iter()
            .map(|n| Node {
                name: n.name.clone(),
                netns: format!("{NS_PREFIX}{id}-{}", n.name),
                forwarding: n.forwarding,
                mptcp: n.mptcp.clone(),
                proxy_arp: n.proxy_arp,
                bridge: n.bridge,
            })
            .collect();
        let index = |name: &str| nodes.iter().position(|n| n.name == name);
        let bad = |message: String| Error::Spec {
            origin: spec.name.clone(),
            message,
        };
        let mut links = Vec::new();
        let mut rates = BTreeMap::new();
        for (i, l) in active.links.iter().enumerate() {
            let end = |host: u8, name: &str| -> Result<End, Error> {
                let node = index(name)
                    .ok_or_else(|| bad(format!("link {}: unknown node {name:?}", l.number)))?;
                let (addr4, len4) = spec::host4(l, host).map_err(bad)?;
                let (addr6, len6) = spec::host6(l, host).map_err(bad)?;
                let ifname = format!("link{}", l.number);
                Ok(End {
                    node,
                    ifname,
                    addr4,
                    len4,
                    addr6,
                    len6,
                    bridged: false,
                })
            };
            let ends = match l.hop {
                None => [end(1, &l.a)?, end(2, &l.b)?],
                Some(hop) => hop_ends(l, hop, &index).map_err(bad)?,
            };
            let (profile, mut params) = l.params_with(opts.links.get(i).copied());
            if let Some(r) = opts.rate_mbit {
                params.a_to_b.rate_mbit = Some(r);
                params.b_to_a.rate_mbit = Some(r);
            }
            let method = if params.needs_netem() {
                Method::UmlNetem
            } else {
                Method::Plain
            };
            rates.insert(l.number, [params.a_to_b.rate_mbit, params.b_to_a.rate_mbit]);
            links.push(Link {
                number: l.number,
                ends,
                profile,
                params,
                method,
                hop: l.hop,
            });
        }
        let mut opts = opts.clone();
        opts.id = Some(id.to_string());
        Ok(Testbed {
            id: id.to_string(),
            spec: spec.clone(),
            opts,
            nodes,
            links,
            routes: active.routes,
            rates: Mutex::new(rates),
            owned,
            emulator: Mutex::new(Vec::new()),
            netem_seed: None,
        })
    }

    fn write(&self, owner: Option<Owner>, exclusive: bool) -> Result<(), Error> {
        let created_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let state = State {
            id: self.id.clone(),
            owner,
            created_unix,
            description: self.describe(),
            spec: self.spec.clone(),
            options: self.opts.clone(),
        };
        write_state(&state, exclusive)
    }

    fn create(&self) -> Result<(), Error> {
        allow_congestion_control(&self.spec.congestion_control)?;
        for node in &self.nodes {
            tool("ip", &["netns", "add", &node.netns])?;
            let mut settings = vec![
                // Addresses usable at once, and kept while a link is down so
                // that taking it up again restores it as it was.
                ("net/ipv6/conf/all/accept_dad", "0"),
                ("net/ipv6/conf/default/accept_dad", "0"),
                ("net/ipv6/conf/all/keep_addr_on_down", "1"),
                ("net/ipv6/conf/default/keep_addr_on_down", "1"),
                // A new namespace inherits the host's choice otherwise.
                (
                    "net/ipv4/tcp_congestion_control",
                    self.spec.congestion_control.as_str(),
                ),
            ];
            if node.proxy_arp {
                settings.push(("net/ipv4/conf/all/proxy_arp", "1"));
            }
            if node.forwarding {
                settings.push(("net/ipv4/ip_forward", "1"));
                settings.push(("net/ipv6/conf/all/forwarding", "1"));
            }
            let ns_file = format!("{NETNS_DIR}/{}", node.netns);
            let ns = node.netns.clone();
            let settings: Vec<(String, String)> = settings
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            sys::in_netns(&ns_file, move || {
                for (key, value) in &settings {
                    fs::write(Path::new("/proc/sys").join(key), value).map_err(|e| {
                        io::Error::new(e.kind(), format!("setting {key} = {value}: {e}"))
                    })?;
                }
                Ok(())
            })
            .map_err(io_err(format!("configuring namespace {ns}")))?;
            tool("ip", &["-n", &node.netns, "link", "set", "lo", "up"])?;
            if node.bridge {
                tool(
                    "ip",
                    &[
                        "-n",
                        &node.netns,
                        "link",
                        "add",
                        SEGMENT_BRIDGE,
                        "type",
                        "bridge",
                    ],
                )?;
                tool(
                    "ip",
                    &["-n", &node.netns, "link", "set", SEGMENT_BRIDGE, "up"],
                )?;
            }
        }
        let emu_ns = self.emulator_netns();
        let emulated = self.emulated_links();
        if !emulated.is_empty() {
            self.create_emulator_netns(&emu_ns)?;
        }
        for link in &self.links {
            let [a, b] = &link.ends;
            let (ns_a, ns_b) = (&self.nodes[a.node].netns, &self.nodes[b.node].netns);
            if link.method == Method::UmlNetem {
                // Two halves, node <-> emulator, joined inside the guest.
                for (side, end, ns) in [(0, a, ns_a), (1, b, ns_b)] {
                    let port = emu::port_ifname(link.number, side);
                    tool(
                        "ip",
                        &[
                            "-n",
                            ns,
                            "link",
                            "add",
                            &end.ifname,
                            "type",
                            "veth",
                            "peer",
                            "name",
                            &port,
                            "netns",
                            &emu_ns,
                        ],
                    )?;
                    emu::plumb_port(&emu_ns, link.number, side)?;
                    emu::whole_frames(ns, &end.ifname)?;
                }
            } else {
                tool(
                    "ip",
                    &[
                        "-n", ns_a, "link", "add", &a.ifname, "type", "veth", "peer", "name",
                        &b.ifname, "netns", ns_b,
                    ],
                )?;
            }
            for (end, ns) in [(a, ns_a), (b, ns_b)] {
                if end.bridged {
                    tool(
                        "ip",
                        &[
                            "-n",
                            ns,
                            "link",
                            "set",
                            &end.ifname,
                            "master",
                            SEGMENT_BRIDGE,
                            "up",
                        ],
                    )?;
                    continue;
                }
                let v4 = format!("{}/{}", end.addr4, end.len4);
                let v6 = format!("{}/{}", end.addr6, end.len6);
                tool("ip", &["-n", ns, "addr", "add", &v4, "dev", &end.ifname])?;
                tool(
                    "ip",
                    &["-n", ns, "addr", "add", &v6, "dev", &end.ifname, "nodad"],
                )?;
                tool("ip", &["-n", ns, "link", "set", &end.ifname, "up"])?;
            }
            self.shape(link, self.rates_of(link.number), [None, None])?;
        }
        for (i, node) in self.nodes.iter().enumerate().filter(|(_, n)| n.proxy_arp) {
            self.answer_proxy_arp_at_once(i, node)?;
        }
        if !emulated.is_empty() {
            let seed = match self.netem_seed {
                Some(seed) => seed,
                None => emu::run_seed()?,
            };
            let children = emu::start(&self.id, &emu_ns, &emulated, seed)?;
            *self.emulator.lock().unwrap_or_else(|p| p.into_inner()) = children;
        }
        for link in &self.links {
            self.apply_routes(link.number)?;
        }
        if self.spec.source_routing {
            for link in self.links.iter().filter(|l| l.hop.is_none()) {
                for end in &link.ends {
                    let ns = &self.nodes[end.node].netns;
                    let table = (TABLE_BASE + link.number).to_string();
                    let pref = (RULE_PREF_BASE + link.number).to_string();
                    let (a4, a6) = (end.addr4.to_string(), end.addr6.to_string());
                    tool(
                        "ip",
                        &[
                            "-n", ns, "-4", "rule", "add", "from", &a4, "lookup", &table, "pref",
                            &pref,
                        ],
                    )?;
                    tool(
                        "ip",
                        &[
                            "-n", ns, "-6", "rule", "add", "from", &a6, "lookup", &table, "pref",
                            &pref,
                        ],
                    )?;
                }
            }
        }
        for node in &self.nodes {
            self.apply_mptcp(node)?;
        }
        Ok(())
    }

    /// Proxy ARP answers wait up to `proxy_delay` (0.8 s by default) on
    /// each interface; a node that proxies answers at once.
    fn answer_proxy_arp_at_once(&self, index: usize, node: &Node) -> Result<(), Error> {
        let keys: Vec<String> = self
            .links
            .iter()
            .flat_map(|l| l.ends.iter())
            .filter(|e| e.node == index && !e.bridged)
            .map(|e| format!("net/ipv4/neigh/{}/proxy_delay", e.ifname))
            .collect();
        let ns_file = format!("{NETNS_DIR}/{}", node.netns);
        sys::in_netns(&ns_file, move || {
            for key in &keys {
                fs::write(Path::new("/proc/sys").join(key), "0")
                    .map_err(|e| io::Error::new(e.kind(), format!("setting {key} = 0: {e}")))?;
            }
            Ok(())
        })
        .map_err(io_err(format!("configuring namespace {}", node.netns)))
    }

    /// Current rates of `link`, [a->b, b->a].
    fn rates_of(&self, link: u32) -> [Option<u32>; 2] {
        self.rates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&link)
            .copied()
            .unwrap_or([None, None])
    }

    /// The link emulator's namespace (exists only when a link needs it).
    fn emulator_netns(&self) -> String {
        format!("{NS_PREFIX}{}-{EMULATOR_NODE}", self.id)
    }

    /// The links the emulator carries, in the order it is given them.
    fn emulated_links(&self) -> Vec<EmuLink> {
        self.links
            .iter()
            .filter(|l| l.method == Method::UmlNetem)
            .map(|l| EmuLink {
                number: l.number,
                params: l.params,
            })
            .collect()
    }

    fn create_emulator_netns(&self, ns: &str) -> Result<(), Error> {
        tool("ip", &["netns", "add", ns])?;
        tool("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        // The emulator's ends carry no addresses of the host's: no IPv6
        // (router solicitations, DAD) from this namespace onto the links.
        let ns_file = format!("{NETNS_DIR}/{ns}");
        sys::in_netns(&ns_file, || {
            for key in [
                "net/ipv6/conf/all/disable_ipv6",
                "net/ipv6/conf/default/disable_ipv6",
            ] {
                fs::write(Path::new("/proc/sys").join(key), "1")
                    .map_err(|e| io::Error::new(e.kind(), format!("setting {key} = 1: {e}")))?;
            }
            Ok(())
        })
        .map_err(io_err(format!("configuring namespace {ns}")))
    }

    /// Routes that go through `link`: static routes via it and its source
    /// routing tables. The kernel drops them when the link goes down, so
    /// they are (re)applied after it comes up.
    fn apply_routes(&self, link_no: u32) -> Result<(), Error> {
        let Some(link) = self.links.iter().find(|l| l.number == link_no) else {
            return Ok(());
        };
        for r in self.routes.iter().filter(|r| r.via_link == link_no) {
            let Some(side) = link
                .ends
                .iter()
                .position(|e| self.nodes[e.node].name == r.node)
            else {
                continue;
            };
            let (me, peer) = (&link.ends[side], &link.ends[1 - side]);
            let Some(to) = self.links.iter().find(|l| l.number == r.to_link) else {
                continue;
            };
            let to_end = &to.ends[0];
            let net4 = prefix4(to_end.addr4, to_end.len4);
            let net6 = prefix6(to_end.addr6, to_end.len6);
            let ns = &self.nodes[me.node].netns;
            let (g4, g6) = (peer.addr4.to_string(), peer.addr6.to_string());
            tool(
                "ip",
                &[
                    "-n", ns, "-4", "route", "replace", &net4, "via", &g4, "dev", &me.ifname,
                    "onlink",
                ],
            )?;
            if ipv6_on(ns, &me.ifname) {
                tool(
                    "ip",
                    &[
                        "-n", ns, "-6", "route", "replace", &net6, "via", &g6, "dev", &me.ifname,
                        "onlink",
                    ],
                )?;
            }
        }
        if self.spec.source_routing && link.hop.is_none() {
            for side in 0..2 {
                let (me, peer) = (&link.ends[side], &link.ends[1 - side]);
                let ns = &self.nodes[me.node].netns;
                let table = (TABLE_BASE + link_no).to_string();
                let (g4, g6) = (peer.addr4.to_string(), peer.addr6.to_string());
                let dev = me.ifname.as_str();
                tool(
                    "ip",
                    &[
                        "-n", ns, "-4", "route", "replace", "default", "via", &g4, "dev", dev,
                        "onlink", "table", &table,
                    ],
                )?;
                if ipv6_on(ns, dev) {
                    tool(
                        "ip",
                        &[
                            "-n", ns, "-6", "route", "replace", "default", "via", &g6, "dev", dev,
                            "onlink", "table", &table,
                        ],
                    )?;
                }
            }
        }
        Ok(())
    }

    fn apply_mptcp(&self, node: &Node) -> Result<(), Error> {
        let Some(m) = &node.mptcp else { return Ok(()) };
        let mut limits = vec!["-n", node.netns.as_str(), "mptcp", "limits", "set"];
        let (s, a) = (
            m.subflows.map(|v| v.to_string()),
            m.add_addr_accepted.map(|v| v.to_string()),
        );
        if let Some(s) = &s {
            limits.extend(["subflows", s.as_str()]);
        }
        if let Some(a) = &a {
            limits.extend(["add_addr_accepted", a.as_str()]);
        }
        if s.is_some() || a.is_some() {
            tool("ip", &limits)?;
        }
        for e in &m.endpoints {
            let (_, end) = self.end_of(&node.name, e.link)?;
            let mut addrs = Vec::new();
            if e.family != Family::Ipv6 {
                addrs.push(end.addr4.to_string());
            }
            if e.family != Family::Ipv4 {
                addrs.push(end.addr6.to_string());
            }
            for addr in &addrs {
                let mut args = vec![
                    "-n",
                    node.netns.as_str(),
                    "mptcp",
                    "endpoint",
                    "add",
                    addr,
                    "dev",
                    &end.ifname,
                ];
                args.extend(e.flags.iter().map(|f: &EndpointFlag| f.as_str()));
                tool("ip", &args)?;
            }
        }
        Ok(())
    }

    /// (link, end) of `node` on link `link`.
    fn end_of(&self, node: &str, link: u32) -> Result<(&Link, &End), Error> {
        let n = self.node_index(node)?;
        if let Some(hop) = self
            .links
            .iter()
            .find(|l| l.hop.is_some_and(|h| h.segment == link) && l.ends[0].node == n)
        {
            return Ok((hop, &hop.ends[0]));
        }
        let l = self.link(link)?;
        let end = l
            .ends
            .iter()
            .find(|e| e.node == n)
            .ok_or_else(|| Error::NotOnLink {
                id: self.id.clone(),
                node: node.to_string(),
                link,
                a: self.nodes[l.ends[0].node].name.clone(),
                b: self.nodes[l.ends[1].node].name.clone(),
            })?;
        Ok((l, end))
    }

    fn node_index(&self, node: &str) -> Result<usize, Error> {
        self.nodes
            .iter()
            .position(|n| n.name == node)
            .ok_or_else(|| Error::UnknownNode {
                id: self.id.clone(),
                node: node.to_string(),
                known: self
                    .nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    fn link(&self, link: u32) -> Result<&Link, Error> {
        self.links
            .iter()
            .find(|l| l.number == link)
            .ok_or_else(|| Error::UnknownLink {
                id: self.id.clone(),
                link,
                known: self
                    .links
                    .iter()
                    .map(|l| l.number.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Install, change or remove shaping on both ends of `link` (`rates`
    /// and `previous` per direction: [a->b, b->a], shaped at a's and b's
    /// egress), with host netem under it where the link uses that.
    fn shape(
        &self,
        link: &Link,
        rates: [Option<u32>; 2],
        previous: [Option<u32>; 2],
    ) -> Result<(), Error> {
        for (side, end) in link.ends.iter().enumerate() {
            let ns = self.nodes[end.node].netns.as_str();
            let dev = end.ifname.as_str();
            let dir = link.params.from_side(side);
            let netem =
                (link.method == Method::HostNetem && dir.needs_netem()).then(|| dir.netem_args());
            let (rate, previous) = (rates[side], previous[side]);
            if let Some(netem) = &netem {
                // Rebuilt from scratch: netem hangs under the shaper's class.
                let _ = tool("tc", &["-n", ns, "qdisc", "del", "dev", dev, "root"]);
                if rate.is_none() {
                    let mut args = vec!["-n", ns, "qdisc", "add", "dev", dev, "root", "netem"];
                    args.extend(netem.iter().map(String::as_str));
                    tool("tc", &args)?;
                    continue;
                }
            }
            let Some(rate) = rate else {
                if previous.is_some() {
                    tool("tc", &["-n", ns, "qdisc", "del", "dev", dev, "root"])?;
                }
                continue;
            };
            // Burst: 1 ms at the rate, at least 32 KiB so that a GSO burst
            // fits (tbf would otherwise split it). Queue: 5 ms at the rate,
            // at least 3 bursts. At 1000 Mbit/s this gives iperf3 TCP about
            // 956 Mbit/s (wire overhead excluded).
            let per_ms = u64::from(rate) * 125;
            let burst = per_ms.max(32 * 1024);
            let limit = (per_ms * 5).max(burst * 3);
            let (r, b, l) = (format!("{rate}mbit"), burst.to_string(), limit.to_string());
            let fresh = previous.is_none() || netem.is_some();
            match self.opts.shaper {
                Shaper::Tbf => {
                    tool(
                        "tc",
                        &[
                            "-n", ns, "qdisc", "replace", "dev", dev, "root", "handle", "1:",
                            "tbf", "rate", &r, "burst", &b, "limit", &l,
                        ],
                    )?;
                }
                Shaper::Htb => {
                    if fresh {
                        tool(
                            "tc",
                            &[
                                "-n", ns, "qdisc", "replace", "dev", dev, "root", "handle", "1:",
                                "htb", "default", "1",
                            ],
                        )?;
                    }
                    // An explicit quantum keeps htb from warning about the
                    // one it would derive from a high rate.
                    tool(
                        "tc",
                        &[
                            "-n", ns, "class", "replace", "dev", dev, "parent", "1:", "classid",
                            "1:1", "htb", "rate", &r, "ceil", &r, "burst", &b, "cburst", &b,
                            "quantum", "60000",
                        ],
                    )?;
                }
            }
            if let Some(netem) = &netem {
                let mut args = vec![
                    "-n", ns, "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", "netem",
                ];
                args.extend(netem.iter().map(String::as_str));
                tool("tc", &args)?;
            }
        }
        Ok(())
    }

    /// This testbed's id (part of every namespace name).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The name of the spec it was built from.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// Namespace name of `node` (for `ip netns exec NAME ...`).
    pub fn netns(&self, node: &str) -> Result<&str, Error> {
        Ok(&self.nodes[self.node_index(node)?].netns)
    }

    /// `node`'s interface on link `link` (inside its namespace).
    pub fn ifname(&self, node: &str, link: u32) -> Result<&str, Error> {
        Ok(&self.end_of(node, link)?.1.ifname)
    }

    /// `node`'s IPv4 address on link `link`.
    pub fn addr4(&self, node: &str, link: u32) -> Result<Ipv4Addr, Error> {
        Ok(self.end_of(node, link)?.1.addr4)
    }

    /// `node`'s IPv6 address on link `link`.
    pub fn addr6(&self, node: &str, link: u32) -> Result<Ipv6Addr, Error> {
        Ok(self.end_of(node, link)?.1.addr6)
    }

    /// A command that runs `program` inside `node`'s network namespace (it
    /// joins the namespace between fork and exec). The environment is
    /// inherited, so LD_PRELOAD passes through. Unlike `ip netns exec`, /sys
    /// is not remounted: read interface counters from /proc/net/dev or `ip`.
    pub fn command(&self, node: &str, program: &str) -> Result<Command, Error> {
        let ns = self.netns(node)?;
        let mut cmd = Command::new(program);
        let ns_file = format!("{NETNS_DIR}/{ns}");
        sys::enter_netns_on_exec(&mut cmd, &ns_file)
            .map_err(io_err(format!("opening namespace {ns_file}")))?;
        Ok(cmd)
    }

    /// Take both ends of link `link` down or up (handover tests). Bringing
    /// it up restores its addresses (kept while down) and its routes.
    pub fn set_link(&self, link: u32, up: bool) -> Result<(), Error> {
        let l = self.link(link)?;
        let state = if up { "up" } else { "down" };
        for end in &l.ends {
            tool(
                "ip",
                &[
                    "-n",
                    &self.nodes[end.node].netns,
                    "link",
                    "set",
                    &end.ifname,
                    state,
                ],
            )?;
        }
        if up {
            self.apply_routes(link)?;
        }
        Ok(())
    }

    /// Shape link `link` at `rate_mbit` on both ends (None = remove shaping).
    pub fn set_rate(&self, link: u32, rate_mbit: Option<u32>) -> Result<(), Error> {
        if rate_mbit == Some(0) {
            return Err(Error::ZeroRate);
        }
        let l = self.link(link)?;
        let mut rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        let previous = rates.get(&link).copied().unwrap_or([None, None]);
        self.shape(l, [rate_mbit, rate_mbit], previous)?;
        rates.insert(link, [rate_mbit, rate_mbit]);
        Ok(())
    }

    /// Names, namespaces, interfaces, addresses and rates.
    pub fn describe(&self) -> Description {
        let end_info = |e: &End| EndInfo {
            node: self.nodes[e.node].name.clone(),
            ifname: e.ifname.clone(),
            addr4: e.addr4,
            prefix4: e.len4,
            addr6: e.addr6,
            prefix6: e.len6,
        };
        Description {
            id: self.id.clone(),
            spec: self.spec.name.clone(),
            shaper: self.opts.shaper,
            internet: self.opts.internet,
            congestion_control: self.spec.congestion_control.clone(),
            nodes: self
                .nodes
                .iter()
                .map(|n| NodeInfo {
                    name: n.name.clone(),
                    netns: n.netns.clone(),
                })
                .collect(),
            links: self
                .links
                .iter()
                .map(|l| {
                    let [ab, ba] = self.rates_of(l.number);
                    let mut params = l.params;
                    params.a_to_b.rate_mbit = ab;
                    params.b_to_a.rate_mbit = ba;
                    LinkInfo {
                        number: l.number,
                        rate_mbit: ab,
                        a: end_info(&l.ends[0]),
                        b: end_info(&l.ends[1]),
                        profile: l.profile,
                        params,
                        method: l.method,
                    }
                })
                .collect(),
            netem_seed: self.netem_seed,
        }
    }

    /// CPU used by each instance of the link emulator so far (empty when
    /// no link runs on it, or it is not running): tells whether the
    /// emulator kept up or was itself the bottleneck.
    pub fn emulator_cpu(&self) -> Vec<EmulatorCpu> {
        if self.links.iter().any(|l| l.method == Method::UmlNetem) {
            emu::cpu(&self.id)
        } else {
            Vec::new()
        }
    }

    /// Leave the testbed in place after this handle is gone (for the CLI);
    /// returns its id. Remove it later with [`Testbed::remove`].
    pub fn keep(mut self) -> String {
        if self.owned {
            if let Err(e) = self.write(None, false) {
                // Without the update it still names us as owner and will be
                // cleaned up as stale after we exit.
                eprintln!(
                    "dropshim-testbed: warning: could not mark testbed {} as kept: {e}",
                    self.id
                );
            }
        }
        self.owned = false;
        self.id.clone()
    }

    /// Remove testbed `id`: kill what still runs in its namespaces, delete
    /// them (their veth ends go with them) and its state file.
    pub fn remove(id: &str) -> Result<(), Error> {
        check_id(id)?;
        if !sys::is_root() {
            return Err(Error::NotRoot);
        }
        let namespaces = namespaces_by_id().remove(id).unwrap_or_default();
        let state = state_path(id);
        if namespaces.is_empty() && !state.exists() {
            return Err(Error::NotFound(id.to_string()));
        }
        let mut first_err = None;
        for ns in &namespaces {
            kill_processes_in(ns);
            if let Err(e) = tool("ip", &["netns", "del", ns]) {
                first_err.get_or_insert(e);
            }
        }
        // A namespace that could not be deleted keeps the state file: the
        // testbed stays listed under its owner, and once that owner is
        // gone the next `up` removes it as stale. Without the file it
        // would be a nameless orphan that nothing removes on its own.
        if let Some(e) = first_err.take() {
            return Err(e);
        }
        if let Err(e) = emu::remove_files(id) {
            first_err.get_or_insert(Error::Io {
                what: format!("removing {}", emu::run_dir(id).display()),
                err: e,
            });
        }
        if let Err(e) = fs::remove_file(&state) {
            if e.kind() != io::ErrorKind::NotFound {
                first_err.get_or_insert(Error::Io {
                    what: format!("removing {}", state.display()),
                    err: e,
                });
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Every testbed on this machine, with its status.
    pub fn list() -> Vec<Listing> {
        let mut by_id = namespaces_by_id();
        let mut ids: BTreeSet<String> = by_id.keys().cloned().collect();
        ids.extend(state_ids());
        ids.into_iter()
            .map(|id| {
                let namespaces = by_id.remove(&id).unwrap_or_default();
                let state = read_state(&id);
                let status = match &state {
                    None => Status::Orphan,
                    Some(State { owner: None, .. }) => Status::Kept,
                    Some(State { owner: Some(o), .. }) if o.alive() => {
                        Status::Running { pid: o.pid }
                    }
                    Some(State { owner: Some(o), .. }) => Status::Stale { pid: o.pid },
                };
                Listing {
                    id,
                    status,
                    spec: state.map(|s| s.spec.name),
                    namespaces,
                }
            })
            .collect()
    }

    /// Remove the testbeds whose creating process has died. Returns how
    /// many were removed.
    ///
    /// Namespaces that only look like ours (the `ds-` prefix, no state
    /// file) are left alone: nothing proves they are a testbed's, and
    /// another program, or a test that borrowed the prefix, may be using
    /// them. They are listed as orphans and removed only when asked
    /// (`dropshim testbed down --all`, or by id).
    pub fn remove_stale() -> usize {
        if !sys::is_root() {
            return 0;
        }
        Testbed::list()
            .into_iter()
            .filter(|l| matches!(l.status, Status::Stale { .. }))
            .filter(|l| Testbed::remove(&l.id).is_ok())
            .count()
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if self.owned {
            if let Err(e) = Testbed::remove(&self.id) {
                eprintln!(
                    "dropshim-testbed: warning: could not remove testbed {}: {e}",
                    self.id
                );
            }
        }
        // Killed with its namespace (or still running for a kept
        // testbed): reap it only once it is gone.
        let children = self.emulator.get_mut().unwrap_or_else(|p| p.into_inner());
        if self.owned {
            emu::stop(children);
        } else {
            for c in children.iter_mut() {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    let _ = c.wait();
                }
            }
        }
    }
}

fn prefix4(addr: Ipv4Addr, len: u8) -> String {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    format!("{}/{len}", Ipv4Addr::from(u32::from(addr) & mask))
}

fn prefix6(addr: Ipv6Addr, len: u8) -> String {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    };
    format!("{}/{len}", Ipv6Addr::from(u128::from(addr) & mask))
}

/// The ends of a segment member's hop: the member's interface `link<S>`
/// with its address on segment S (host `hop.host`), and the bridge port
/// `m<host>` in the segment's namespace.
fn hop_ends(
    l: &spec::LinkSpec,
    hop: Hop,
    index: &dyn Fn(&str) -> Option<usize>,
) -> Result<[End; 2], String> {
    let seg = spec::LinkSpec {
        number: hop.segment,
        hop: None,
        ..l.clone()
    };
    let node = |name: &str| {
        index(name).ok_or_else(|| format!("segment {}: unknown node {name:?}", hop.segment))
    };
    let (net4, len4) = spec::link_prefix4(&seg)?;
    let (net6, len6) = spec::link_prefix6(&seg)?;
    let member = End {
        node: node(&l.a)?,
        ifname: format!("link{}", hop.segment),
        addr4: Ipv4Addr::from(u32::from(net4) + hop.host),
        len4,
        addr6: Ipv6Addr::from(u128::from(net6) + u128::from(hop.host)),
        len6,
        bridged: false,
    };
    let port = End {
        node: node(&l.b)?,
        ifname: format!("m{}", hop.host),
        addr4: Ipv4Addr::UNSPECIFIED,
        len4: 0,
        addr6: Ipv6Addr::UNSPECIFIED,
        len6: 0,
        bridged: true,
    };
    Ok([member, port])
}

/// Whether `ifname` in namespace `ns` takes IPv6. An interface handed to
/// a user-space stack (the uml backend reads its frames raw) has IPv6
/// turned off on the host's side, so no IPv6 route can go through it
/// there; the stack keeps its own routes.
fn ipv6_on(ns: &str, ifname: &str) -> bool {
    let key = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    sys::in_netns(&format!("{NETNS_DIR}/{ns}"), move || {
        fs::read_to_string(key)
    })
    .map(|v| v.trim() != "1")
    .unwrap_or(true)
}
