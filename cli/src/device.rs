//! `dropshim up`, `down` and `status`: prepare a device's MPTCP (endpoints,
//! limits, path manager, scheduler), release exactly what was prepared, and
//! show what MPTCP is doing.
//!
//! `up` records every change and the values it replaced in a state file
//! per device and network namespace, so `down` can undo precisely that and
//! nothing a user set by hand.

use anyhow::{anyhow, bail, Context};
use dropshim_conf::{BackendKind, DeviceConfig};
use dropshim_netlink::configure::{DeviceState, Iface, Kernel, Options, Ownership};
use dropshim_netlink::diag::{self, MptcpConnection};
use dropshim_netlink::mptcp::{Endpoint, Limits, MptcpPm};
use dropshim_netlink::route::Rtnl;
use dropshim_netlink::sysctl::{MptcpSysctl, ProcSys};
use dropshim_netlink::HostSocket;
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
    /// uml device: also print what its guest kernel sees, its TCP and
    /// MPTCP sockets with their memory (`ss -tmiMn`) and its TCP and MPTCP
    /// counters (`nstat` names), to diagnose a stalled transfer.
    #[arg(long, requires = "config")]
    pub guest: bool,
}

#[derive(clap::Args)]
pub struct ShowArgs {
    /// The device file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Override the file's backend (native, uml, lkl).
    #[arg(long)]
    pub backend: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
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

/// The host kernel's netlink clients and sysctls.
struct Host {
    rtnl: Rtnl<HostSocket>,
    pm: MptcpPm<HostSocket>,
    sys: ProcSys,
}

impl Host {
    fn open() -> anyhow::Result<Self> {
        Ok(Host {
            rtnl: dropshim_netlink::host_rtnl()?,
            pm: dropshim_netlink::host_mptcp_pm()?,
            sys: ProcSys::default(),
        })
    }

    fn kernel(&mut self) -> Kernel<'_, HostSocket, HostSocket, ProcSys> {
        Kernel {
            rtnl: &mut self.rtnl,
            pm: &mut self.pm,
            sys: &self.sys,
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
    let netns = netns_inode()?;
    let path = state_path(&name, netns);
    let previous = read_state(&path)?;
    let was_up = previous.is_some();
    let mut state = previous.unwrap_or_else(|| State {
        device: name.clone(),
        netns,
        ..State::default()
    });
    let mut host = Host::open()?;
    let origin = args.config.display().to_string();
    let opts = Options {
        ownership: Ownership::Host,
        interfaces: cfg
            .interfaces
            .iter()
            .map(|i| Iface::Named(i.name.clone()))
            .collect(),
        owned_endpoints: state.endpoints.iter().map(|e| (e.id, e.address)).collect(),
        origin: &origin,
    };
    let applied = host.kernel().apply(&cfg, &opts).map_err(|e| {
        anyhow!("{e}").context(format!(
            "device {name}: `dropshim up` failed; changes of this run were undone"
        ))
    })?;
    for e in &applied.endpoints_removed {
        state.endpoints.retain(|r| r.id != e.id);
    }
    for e in &applied.endpoints_added {
        state.endpoints.push(AddedEndpoint {
            id: e.id,
            address: e.addr,
            flags: e.flags.names(),
            interface: e.interface.clone(),
            ifindex: e.ifindex,
        });
    }
    // Keep the values from before the first up, not our own.
    if let Some(l) = applied.limits_before {
        state.previous_limits.get_or_insert(l.into());
    }
    if let Some(p) = &applied.path_manager_before {
        state.previous_path_manager.get_or_insert(p.clone());
    }
    if let Some(s) = &applied.scheduler_before {
        state.previous_scheduler.get_or_insert(s.clone());
    }
    // Unrecorded changes could never be undone by `down`: undo them now.
    if let Err(e) = write_state(&path, &state) {
        for line in host.kernel().undo(&applied) {
            eprintln!("dropshim: warning: rollback: {line}");
        }
        return Err(e.context(format!(
            "device {name}: `dropshim up` failed; changes of this run were undone"
        )));
    }
    // dropshim's own path manager, when the file chooses it; started
    // again if it died since the last `up`.
    let mut daemon = None;
    if cfg.mptcp.path_manager == Some(dropshim_conf::PathManager::Userspace)
        && cfg.mptcp.userspace.is_some()
    {
        match crate::pm::start(&args.config, &cfg, netns) {
            Ok(line) => daemon = Some(line),
            Err(e) => {
                return Err(e.context(format!(
                    "device {name}: up, but its path manager did not start; fix the cause and run `dropshim up` again (`dropshim down` releases the device)"
                )))
            }
        }
    }
    let already = match daemon.as_deref() {
        None => true,
        Some(d) => d.contains("already running"),
    };
    if let Some(d) = &daemon {
        if !already {
            println!("device {name} (native): {d}");
        }
    }
    match (applied.report.is_empty() && already, was_up) {
        (true, true) => println!("device {name} (native): already up, nothing changed"),
        (true, false) => {
            println!("device {name} (native): up, the system already matched the device file")
        }
        (false, _) => {
            println!("device {name} (native): up");
            for line in applied.report {
                println!("  {line}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
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
    let netns = netns_inode()?;
    let path = state_path(name, netns);
    // The path manager goes first, before the kernel's is restored.
    let daemon = crate::pm::stop(name, netns)?;
    if daemon != "no path manager daemon" {
        println!("device {name} (native): {daemon}");
    }
    let Some(mut state) = read_state(&path)? else {
        println!(
            "device {name} (native): not up in this network namespace (no {}); nothing to release",
            path.display()
        );
        return Ok(ExitCode::SUCCESS);
    };
    let mut host = Host::open()?;
    let current = host.pm.endpoints()?;
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
        match host.pm.delete_endpoint(rec.id) {
            Ok(()) => report.push(format!("removed endpoint id {} {}", rec.id, rec.address)),
            Err(e) => {
                failures.push(e.to_string());
                kept.push(rec);
            }
        }
    }
    state.endpoints = kept;
    if let Some(l) = state.previous_limits {
        match host.pm.set_limits(l.into()) {
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
        match MptcpSysctl::new(&host.sys).set_path_manager(&p) {
            Ok(()) => {
                report.push(format!("path manager restored to {p}"));
                state.previous_path_manager = None;
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    if let Some(s) = state.previous_scheduler.clone() {
        match MptcpSysctl::new(&host.sys).set_scheduler(&s) {
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
                if args.guest {
                    let text = dropshim_backend_uml::host::guest_stats(&cfg)
                        .map_err(anyhow::Error::msg)?;
                    print!("{text}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            if args.guest {
                anyhow::bail!("--guest is for uml devices (this one is {kind:?})");
            }
            if kind != BackendKind::Native {
                return Err(not_native(kind, "status"));
            }
            let netns = netns_inode()?;
            let path = state_path(&cfg.device.name, netns);
            let state = read_state(&path)?;
            let daemon = crate::pm::state(&crate::pm::paths(&cfg.device.name, netns).0);
            Some((cfg.device.name, path, state, daemon))
        }
        None => None,
    };
    let mut host = Host::open()?;
    let sys = MptcpSysctl::new(&host.sys);
    let enabled = sys.enabled()?;
    let path_manager = sys.path_manager()?;
    let scheduler = sys.scheduler()?;
    let limits = host.pm.limits()?;
    let endpoints = host.pm.endpoints()?;
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
            "device": device.as_ref().map(|(name, path, state, daemon)| json!({
                "path_manager_daemon": crate::pm::json(daemon),
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
    if let Some((name, _, state, daemon)) = &device {
        if *daemon != crate::pm::Daemon::NotStarted {
            println!("{}", crate::pm::describe(daemon));
        }
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
                dropshim_netlink::interface_name(i).unwrap_or_else(|| format!("#{i}"))
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
        "dev": e.ifindex.and_then(dropshim_netlink::interface_name),
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

/// `dropshim show`: the state of the device's stack as far as the device
/// file describes it, read back through the netlink layer. native: this
/// network namespace; uml: the running instance's guest, as its agent read
/// it back after configuring; lkl: a library kernel booted in this process
/// and configured as a program's would be.
pub fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let (cfg, kind) = load_device(&args.config, args.backend.as_deref())?;
    let names: Vec<String> = cfg.interfaces.iter().map(|i| i.name.clone()).collect();
    let state = match kind {
        BackendKind::Native => {
            let mut host = Host::open()?;
            let mut indexes = Vec::new();
            for n in &names {
                indexes.push(host.rtnl.link_index(n)?);
            }
            host.kernel().state(&indexes)?
        }
        BackendKind::Uml => {
            let file = dropshim_backend_uml::run_dir(&cfg.device.name)
                .join(dropshim_backend_uml::guest_config::STATE_FILE);
            let text = std::fs::read_to_string(&file).with_context(|| {
                format!(
                    "uml device {:?} is not running or not configured yet (no {}); start it with `dropshim up --config {}`",
                    cfg.device.name,
                    file.display(),
                    args.config.display()
                )
            })?;
            DeviceState::from_json(&text)?
        }
        BackendKind::Lkl => lkl_state(&cfg)?,
    };
    if args.json {
        println!("{}", state.to_json());
    } else {
        println!("device {} ({}):", cfg.device.name, kind.as_str());
        for line in state.lines(&names) {
            println!("  {line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Boots a library kernel here, gives it the file's interfaces, applies the
/// file and reads the state back.
fn lkl_state(cfg: &DeviceConfig) -> anyhow::Result<DeviceState> {
    use dropshim_backend_lkl::{BootOptions, Lkl};
    let mut opts = BootOptions {
        build_if_missing: false,
        ..BootOptions::default()
    };
    if let Some(s) = &cfg.lkl {
        opts.mem_bytes = u64::from(s.memory_mib) << 20;
        for o in &s.boot_options {
            opts.cmdline.push(' ');
            opts.cmdline.push_str(o);
        }
    }
    let lkl = Lkl::boot(&opts).map_err(|e| anyhow!("{e}"))?;
    let result = (|| -> anyhow::Result<DeviceState> {
        let mut devices = Vec::new();
        for iface in &cfg.interfaces {
            devices.push(
                lkl.add_device(&iface.name)
                    .map_err(|e| anyhow!("interface {}: {e}", iface.name))?,
            );
        }
        lkl.configure(cfg, &devices).map_err(|e| anyhow!("{e}"))?;
        let mut rtnl = lkl.rtnl().map_err(|e| anyhow!("{e}"))?;
        let mut pm = lkl.mptcp_pm().map_err(|e| anyhow!("{e}"))?;
        let indexes: Vec<u32> = devices.iter().map(|d| d.ifindex as u32).collect();
        let state = Kernel {
            rtnl: &mut rtnl,
            pm: &mut pm,
            sys: &lkl,
        }
        .state(&indexes)?;
        Ok(state)
    })();
    let _ = lkl.halt();
    result
}
