//! `dropshim up`, `down` and `status`: prepare a device's MPTCP (endpoints,
//! limits, path manager, scheduler), release exactly what was prepared, and
//! show what MPTCP is doing.
//!
//! `up` records every change and the values it replaced in a state file
//! per device and network namespace, so `down` can undo precisely that and
//! nothing a user set by hand.

use anyhow::{anyhow, bail, Context};
use dropshim_backend_native::diag::{self, MptcpConnection};
use dropshim_backend_native::pm::{
    self, Endpoint, EndpointFlags, Limits, NewEndpoint, PathManager, Sysctl,
};
use dropshim_conf::{BackendKind, DeviceConfig};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Where native device state lives; one file per device and namespace.
const STATE_DIR: &str = "/run/dropshim/native";

#[derive(clap::Args)]
pub struct UpArgs {
    /// The device file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Override the file's backend (native, uml, lkl).
    #[arg(long)]
    pub backend: Option<String>,
}

#[derive(clap::Args)]
pub struct DownArgs {
    /// The device file given to `dropshim up`.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Override the file's backend (native, uml, lkl).
    #[arg(long)]
    pub backend: Option<String>,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Also show what `dropshim up` did for this device.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

/// What `up` changed, and what it replaced, for `down` to undo.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    device: String,
    netns: u64,
    endpoints: Vec<AddedEndpoint>,
    previous_limits: Option<SavedLimits>,
    previous_path_manager: Option<String>,
    previous_scheduler: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AddedEndpoint {
    id: u8,
    address: IpAddr,
    flags: Vec<String>,
    interface: String,
    ifindex: u32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct SavedLimits {
    subflows: u32,
    add_addr_accepted: u32,
}

impl From<Limits> for SavedLimits {
    fn from(l: Limits) -> Self {
        SavedLimits {
            subflows: l.subflows,
            add_addr_accepted: l.add_addr_accepted,
        }
    }
}

impl From<SavedLimits> for Limits {
    fn from(l: SavedLimits) -> Self {
        Limits {
            subflows: l.subflows,
            add_addr_accepted: l.add_addr_accepted,
        }
    }
}

/// One endpoint the device file asks for.
struct Wanted {
    interface: String,
    ifindex: u32,
    addr: IpAddr,
    flags: EndpointFlags,
}

fn load_device(
    config: &Path,
    backend: Option<&str>,
) -> anyhow::Result<(DeviceConfig, BackendKind)> {
    let cfg = dropshim_conf::load(config).map_err(|e| anyhow!("{e}"))?;
    let kind = match backend {
        Some(name) => BackendKind::from_name(name).ok_or_else(|| {
            anyhow!("unknown backend {name:?} in --backend: expected native, uml or lkl")
        })?,
        None => cfg.device.backend,
    };
    Ok((cfg, kind))
}

fn not_native(kind: BackendKind, command: &str) -> anyhow::Error {
    let b = kind.as_str();
    anyhow!("backend {b}: `dropshim {command}` is provided by the {b} backend (not available in this build yet)")
}

/// The inode of this process's network namespace: it tells namespaces
/// apart, so the same device can be up in several at once.
fn netns_inode() -> anyhow::Result<u64> {
    let meta =
        std::fs::metadata("/proc/self/ns/net").context("cannot identify the network namespace")?;
    Ok(meta.ino())
}

fn state_path(device: &str, netns: u64) -> PathBuf {
    let safe: String = device
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    Path::new(STATE_DIR).join(format!("{safe}-netns{netns}.json"))
}

fn read_state(path: &Path) -> anyhow::Result<Option<State>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map(Some).with_context(|| {
            format!(
                "state file {} is damaged; check the endpoints with `ip mptcp endpoint show`, then delete it",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read state file {}", path.display())),
    }
}

fn write_state(path: &Path, state: &State) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create {} (this needs root)", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(state)?;
    // Write then rename, so a crash never leaves half a state file.
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Reads the endpoints the device file asks for and checks that each
/// address really is on its interface.
fn wanted_endpoints(cfg: &DeviceConfig, config: &Path) -> anyhow::Result<Vec<Wanted>> {
    let mut wanted = Vec::new();
    let mut problems = Vec::new();
    // Every listed interface and address is checked, roles or not: a file
    // that names an address the host lacks is wrong either way.
    for iface in &cfg.interfaces {
        let ifindex = match pm::interface_index(&iface.name) {
            Ok(i) => i,
            Err(e) => {
                problems.push(format!(
                    "{e}: create it or fix interface {:?} in {}",
                    iface.name,
                    config.display()
                ));
                continue;
            }
        };
        let present = pm::interface_addresses(&iface.name)
            .with_context(|| format!("cannot list the addresses of interface {:?}", iface.name))?;
        let flags = EndpointFlags::from_roles(&iface.endpoint);
        for cidr in &iface.addresses {
            if !present.contains(&cidr.addr) {
                problems.push(format!(
                    "address {} is not configured on interface {:?} (it has: {}); the native backend uses \
                     the host's addresses: run `ip addr add {}/{} dev {}` or fix {}",
                    cidr.addr,
                    iface.name,
                    if present.is_empty() {
                        "no addresses".to_string()
                    } else {
                        present.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
                    },
                    cidr.addr,
                    cidr.prefix,
                    iface.name,
                    config.display()
                ));
                continue;
            }
            if iface.endpoint.is_empty() {
                continue;
            }
            wanted.push(Wanted {
                interface: iface.name.clone(),
                ifindex,
                addr: cidr.addr,
                flags,
            });
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(wanted)
}

/// Changes made by this run of `up`, undone if a later step fails.
#[derive(Default)]
struct Undo {
    endpoints: Vec<u8>,
    limits: Option<Limits>,
    path_manager: Option<String>,
    scheduler: Option<String>,
}

impl Undo {
    fn run(self, nl: &mut PathManager, sys: &Sysctl) {
        for id in self.endpoints {
            if let Err(e) = nl.delete_endpoint(id) {
                eprintln!("dropshim: warning: rollback: {e}");
            }
        }
        if let Some(l) = self.limits {
            if let Err(e) = nl.set_limits(l) {
                eprintln!("dropshim: warning: rollback: {e}");
            }
        }
        if let Some(p) = self.path_manager {
            if let Err(e) = sys.set_path_manager(&p) {
                eprintln!("dropshim: warning: rollback: {e}");
            }
        }
        if let Some(s) = self.scheduler {
            if let Err(e) = sys.set_scheduler(&s) {
                eprintln!("dropshim: warning: rollback: {e}");
            }
        }
    }
}

pub fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    let (cfg, kind) = load_device(&args.config, args.backend.as_deref())?;
    if kind == BackendKind::Uml {
        dropshim_backend_uml::host::up(&args.config, &cfg)
            .map_err(|e| anyhow!("device {}: {e}", cfg.device.name))?;
        println!("{}", dropshim_backend_uml::host::status(&cfg));
        return Ok(ExitCode::SUCCESS);
    }
    if kind != BackendKind::Native {
        return Err(not_native(kind, "up"));
    }
    let name = cfg.device.name.clone();
    let sys = Sysctl::default();
    if !sys.enabled()? {
        bail!(
            "MPTCP is disabled in this network namespace (net.mptcp.enabled = 0): \
             run `sysctl -w net.mptcp.enabled=1`, then `dropshim up` again"
        );
    }
    let wanted = wanted_endpoints(&cfg, &args.config)?;
    // Refuse unavailable choices before changing anything.
    if let Some(p) = cfg.mptcp.path_manager {
        pm::check_available("path manager", p.as_str(), &sys.available_path_managers()?)?;
    }
    if let Some(s) = &cfg.mptcp.scheduler {
        pm::check_available("scheduler", s, &sys.available_schedulers()?)?;
    }

    let netns = netns_inode()?;
    let path = state_path(&name, netns);
    let previous = read_state(&path)?;
    let was_up = previous.is_some();
    let mut state = previous.unwrap_or_else(|| State {
        device: name.clone(),
        netns,
        ..State::default()
    });
    let mut nl = PathManager::open()?;
    let mut undo = Undo::default();
    let mut report = Vec::new();
    let result = apply(
        &cfg,
        &wanted,
        &mut state,
        &mut nl,
        &sys,
        &mut undo,
        &mut report,
    )
    // Unrecorded changes could never be undone by `down`: undo them now.
    .and_then(|()| write_state(&path, &state));
    if let Err(e) = result {
        undo.run(&mut nl, &sys);
        return Err(e.context(format!(
            "device {name}: `dropshim up` failed; changes of this run were undone"
        )));
    }
    match (report.is_empty(), was_up) {
        (true, true) => println!("device {name} (native): already up, nothing changed"),
        (true, false) => {
            println!("device {name} (native): up, the system already matched the device file")
        }
        (false, _) => {
            println!("device {name} (native): up");
            for line in report {
                println!("  {line}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn apply(
    cfg: &DeviceConfig,
    wanted: &[Wanted],
    state: &mut State,
    nl: &mut PathManager,
    sys: &Sysctl,
    undo: &mut Undo,
    report: &mut Vec<String>,
) -> anyhow::Result<()> {
    let current = nl.endpoints()?;
    let ours = |id: u8, addr: IpAddr| {
        state
            .endpoints
            .iter()
            .any(|e| e.id == id && e.address == addr)
    };

    // Endpoints we added earlier that the file no longer asks for, or asks
    // for differently, are replaced; anything else a user made is left alone.
    let mut to_add = Vec::new();
    let mut to_delete = Vec::new();
    for w in wanted {
        match current.iter().find(|e| e.addr == w.addr) {
            Some(e) if e.port == 0 && e.flags == w.flags && e.ifindex == Some(w.ifindex) => {}
            Some(e) if ours(e.id, e.addr) => {
                to_delete.push(e.clone());
                to_add.push(w);
            }
            Some(e) => bail!(
                "address {} already has MPTCP endpoint id {} ({}{}) that dropshim did not add, and it differs \
                 from the device file ({} dev {}): delete it with `ip mptcp endpoint delete id {}` or make the \
                 device file match",
                e.addr,
                e.id,
                e.flags,
                e.ifindex
                    .map(|i| format!(" dev {}", pm::interface_name(i).unwrap_or_else(|| format!("#{i}"))))
                    .unwrap_or_default(),
                w.flags,
                w.interface,
                e.id
            ),
            None => to_add.push(w),
        }
    }
    for rec in &state.endpoints {
        let still_wanted = wanted.iter().any(|w| w.addr == rec.address);
        if !still_wanted {
            if let Some(e) = current
                .iter()
                .find(|e| e.id == rec.id && e.addr == rec.address)
            {
                to_delete.push(e.clone());
            }
        }
    }
    for e in &to_delete {
        nl.delete_endpoint(e.id)?;
        state.endpoints.retain(|r| r.id != e.id);
        report.push(format!(
            "removed endpoint id {} {} ({}) added by an earlier up",
            e.id, e.addr, e.flags
        ));
    }
    for w in to_add {
        nl.add_endpoint(&NewEndpoint {
            addr: w.addr,
            port: 0,
            flags: w.flags,
            ifindex: Some(w.ifindex),
            id: None,
        })?;
        let id = find_endpoint(nl, w.addr)?.id;
        undo.endpoints.push(id);
        state.endpoints.push(AddedEndpoint {
            id,
            address: w.addr,
            flags: w.flags.names(),
            interface: w.interface.clone(),
            ifindex: w.ifindex,
        });
        report.push(format!(
            "added endpoint id {id} {} {} dev {}",
            w.addr, w.flags, w.interface
        ));
    }

    if let Some(l) = cfg.mptcp.limits {
        let want = Limits {
            subflows: l.subflows,
            add_addr_accepted: l.add_addr_accepted,
        };
        let now = nl.limits()?;
        if now != want {
            nl.set_limits(want)?;
            undo.limits = Some(now);
            // Keep the value from before the first up, not our own.
            state.previous_limits.get_or_insert(now.into());
            report.push(format!(
                "limits subflows {} add_addr_accepted {} (were {} and {})",
                want.subflows, want.add_addr_accepted, now.subflows, now.add_addr_accepted
            ));
        }
    }
    if let Some(p) = cfg.mptcp.path_manager {
        let now = sys.path_manager()?;
        if now != p.as_str() {
            sys.set_path_manager(p.as_str())?;
            undo.path_manager = Some(now.clone());
            report.push(format!("path manager {} (was {now})", p.as_str()));
            state.previous_path_manager.get_or_insert(now);
        }
    }
    if let Some(s) = &cfg.mptcp.scheduler {
        let now = sys.scheduler()?;
        if &now != s {
            sys.set_scheduler(s)?;
            undo.scheduler = Some(now.clone());
            report.push(format!("scheduler {s} (was {now})"));
            state.previous_scheduler.get_or_insert(now);
        }
    }
    Ok(())
}

fn find_endpoint(nl: &mut PathManager, addr: IpAddr) -> anyhow::Result<Endpoint> {
    nl.endpoints()?
        .into_iter()
        .find(|e| e.addr == addr)
        .ok_or_else(|| anyhow!("the kernel accepted endpoint {addr} but does not list it"))
}

pub fn down(args: DownArgs) -> anyhow::Result<ExitCode> {
    let (cfg, kind) = load_device(&args.config, args.backend.as_deref())?;
    if kind == BackendKind::Uml {
        let was = dropshim_backend_uml::host::down(&cfg)
            .map_err(|e| anyhow!("device {}: {e}", cfg.device.name))?;
        let what = if was {
            "stopped"
        } else {
            "was not running; cleaned up"
        };
        println!("uml device {:?}: {what}", cfg.device.name);
        return Ok(ExitCode::SUCCESS);
    }
    if kind != BackendKind::Native {
        return Err(not_native(kind, "down"));
    }
    let name = &cfg.device.name;
    let path = state_path(name, netns_inode()?);
    let Some(mut state) = read_state(&path)? else {
        println!(
            "device {name} (native): not up in this network namespace (no {}); nothing to release",
            path.display()
        );
        return Ok(ExitCode::SUCCESS);
    };
    let mut nl = PathManager::open()?;
    let sys = Sysctl::default();
    let current = nl.endpoints()?;
    let mut failures = Vec::new();
    let mut report = Vec::new();

    let mut kept = Vec::new();
    for rec in std::mem::take(&mut state.endpoints) {
        // Only delete the id if it still holds our address: a user may
        // have deleted ours and reused the id since.
        if !current
            .iter()
            .any(|e| e.id == rec.id && e.addr == rec.address)
        {
            report.push(format!(
                "endpoint id {} {} was already gone",
                rec.id, rec.address
            ));
            continue;
        }
        match nl.delete_endpoint(rec.id) {
            Ok(()) => report.push(format!("removed endpoint id {} {}", rec.id, rec.address)),
            Err(e) => {
                failures.push(e.to_string());
                kept.push(rec);
            }
        }
    }
    state.endpoints = kept;
    if let Some(l) = state.previous_limits {
        match nl.set_limits(l.into()) {
            Ok(()) => {
                report.push(format!(
                    "limits restored to subflows {} add_addr_accepted {}",
                    l.subflows, l.add_addr_accepted
                ));
                state.previous_limits = None;
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    if let Some(p) = state.previous_path_manager.clone() {
        match sys.set_path_manager(&p) {
            Ok(()) => {
                report.push(format!("path manager restored to {p}"));
                state.previous_path_manager = None;
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    if let Some(s) = state.previous_scheduler.clone() {
        match sys.set_scheduler(&s) {
            Ok(()) => {
                report.push(format!("scheduler restored to {s}"));
                state.previous_scheduler = None;
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    if !failures.is_empty() {
        // Keep what is left to undo, so `down` can be retried.
        write_state(&path, &state)?;
        bail!(
            "device {name}: `dropshim down` could not undo everything:\n{}\nfix the cause and run `dropshim down` again",
            failures.join("\n")
        );
    }
    std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    println!("device {name} (native): down");
    for line in report {
        println!("  {line}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let device = match &args.config {
        Some(config) => {
            let (cfg, kind) = load_device(config, None)?;
            if kind == BackendKind::Uml {
                println!("{}", dropshim_backend_uml::host::status(&cfg));
                return Ok(ExitCode::SUCCESS);
            }
            if kind != BackendKind::Native {
                return Err(not_native(kind, "status"));
            }
            let path = state_path(&cfg.device.name, netns_inode()?);
            let state = read_state(&path)?;
            Some((cfg.device.name, path, state))
        }
        None => None,
    };
    let sys = Sysctl::default();
    let enabled = sys.enabled()?;
    let path_manager = sys.path_manager()?;
    let scheduler = sys.scheduler()?;
    let mut nl = PathManager::open()?;
    let limits = nl.limits()?;
    let endpoints = nl.endpoints()?;
    let conns = diag::connections().context("cannot list MPTCP connections")?;

    if args.json {
        let doc = json!({
            "mptcp": {
                "enabled": enabled,
                "path_manager": path_manager,
                "scheduler": scheduler,
                "limits": {"subflows": limits.subflows, "add_addr_accepted": limits.add_addr_accepted},
            },
            "endpoints": endpoints.iter().map(endpoint_json).collect::<Vec<_>>(),
            "device": device.as_ref().map(|(name, path, state)| json!({
                "name": name,
                "backend": "native",
                "up": state.is_some(),
                "state_file": path,
                "added_endpoints": state.as_ref().map(|s| s.endpoints.iter().map(|e| e.id).collect::<Vec<_>>()),
            })),
            "connections": conns.iter().map(connection_json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }

    println!(
        "MPTCP {}: path manager {path_manager}, scheduler {scheduler}, limits subflows {} add_addr_accepted {}",
        if enabled { "enabled" } else { "DISABLED (net.mptcp.enabled = 0)" },
        limits.subflows,
        limits.add_addr_accepted
    );
    if let Some((name, _, state)) = &device {
        match state {
            Some(s) => println!(
                "device {name} (native): up, {} endpoint(s) added by dropshim{}",
                s.endpoints.len(),
                if s.endpoints.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (id {})",
                        s.endpoints
                            .iter()
                            .map(|e| e.id.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            ),
            None => println!("device {name} (native): not up in this network namespace"),
        }
    }
    println!("endpoints: {}", endpoints.len());
    for e in &endpoints {
        println!(
            "  id {:<3} {:<24} {}{}",
            e.id,
            endpoint_addr(e),
            e.flags,
            endpoint_dev(e)
        );
    }
    println!("connections: {}", conns.len());
    for c in &conns {
        println!(
            "  {} -> {}  {}  {} subflow{}{}  sent {}  received {}  token {:08x}",
            c.local,
            c.remote,
            c.state,
            c.subflow_count,
            if c.subflow_count == 1 { "" } else { "s" },
            if c.fallback {
                " (fell back to TCP)"
            } else {
                ""
            },
            c.bytes_sent
                .map(human_bytes)
                .unwrap_or_else(|| "n/a".into()),
            c.bytes_received
                .map(human_bytes)
                .unwrap_or_else(|| "n/a".into()),
            c.token
        );
        for s in &c.subflows {
            println!(
                "    {} -> {}  {}  {}  ids {}/{}{}",
                s.local,
                s.remote,
                s.state,
                if s.join { "join" } else { "initial" },
                s.local_id,
                s.remote_id,
                if s.backup { "  backup" } else { "" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn endpoint_addr(e: &Endpoint) -> String {
    match (e.port, e.addr) {
        (0, a) => a.to_string(),
        (p, a) => std::net::SocketAddr::new(a, p).to_string(),
    }
}

fn endpoint_dev(e: &Endpoint) -> String {
    e.ifindex
        .map(|i| {
            format!(
                " dev {}",
                pm::interface_name(i).unwrap_or_else(|| format!("#{i}"))
            )
        })
        .unwrap_or_default()
}

fn endpoint_json(e: &Endpoint) -> serde_json::Value {
    json!({
        "id": e.id,
        "address": e.addr,
        "port": e.port,
        "flags": e.flags.names(),
        "ifindex": e.ifindex,
        "dev": e.ifindex.and_then(pm::interface_name),
    })
}

fn connection_json(c: &MptcpConnection) -> serde_json::Value {
    json!({
        "local": c.local,
        "remote": c.remote,
        "state": c.state,
        "token": c.token,
        "subflow_count": c.subflow_count,
        "bytes_sent": c.bytes_sent,
        "bytes_received": c.bytes_received,
        "fallback": c.fallback,
        "subflows": c.subflows.iter().map(|s| json!({
            "local": s.local,
            "remote": s.remote,
            "state": s.state,
            "local_id": s.local_id,
            "remote_id": s.remote_id,
            "join": s.join,
            "backup": s.backup,
        })).collect::<Vec<_>>(),
    })
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
