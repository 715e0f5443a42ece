//! The guest's network configuration: the agent applies the device file
//! inside the instance with dropshim's device configurator (addresses,
//! default routes, MPTCP endpoints, limits, path manager, scheduler),
//! the same code the host and the library kernel use; and, when the file
//! chooses `path_manager = "userspace"`, runs dropshim's path manager on
//! the guest kernel ([`start_path_manager`]).
//!
//! The device file's interfaces are the guest's `vec0`..`vecN-1`, in the
//! file's order.

use dropshim_netlink::configure::{Iface, Kernel, Options, Ownership};
use dropshim_netlink::sysctl::ProcSys;
use std::path::Path;

/// The guest's name for the file's `index`-th interface.
pub fn guest_ifname(index: usize) -> String {
    format!("vec{index}")
}

/// Where the guest records the state it read back after configuring,
/// next to the device file it applied (`dropshim show` reads it).
pub const STATE_FILE: &str = "guest-state.json";

/// Loads the device file at `path` (reached through hostfs) and applies
/// it to the guest kernel. Idempotent: what already matches is left alone,
/// so it also restores what a device reopen removed. Then reads the state
/// back through netlink and records it in [`STATE_FILE`] beside `path`.
pub fn apply(path: &Path) -> Result<Vec<String>, String> {
    let cfg = dropshim_conf::resolve(Some(path), Some("uml")).map_err(|e| e.to_string())?;
    let mut rtnl = dropshim_netlink::host_rtnl().map_err(|e| e.to_string())?;
    let mut pm = dropshim_netlink::host_mptcp_pm().map_err(|e| e.to_string())?;
    let sys = ProcSys::default();
    let mut kernel = Kernel {
        rtnl: &mut rtnl,
        pm: &mut pm,
        sys: &sys,
    };
    let origin = path.display().to_string();
    let opts = Options {
        ownership: Ownership::Stack,
        interfaces: (0..cfg.interfaces.len())
            .map(|i| Iface::Named(guest_ifname(i)))
            .collect(),
        owned_endpoints: Vec::new(),
        origin: &origin,
    };
    let applied = kernel
        .apply(&cfg, &opts)
        .map_err(|e| format!("configuring the guest from {origin}: {e}"))?;
    let mut indexes = Vec::new();
    for i in 0..cfg.interfaces.len() {
        indexes.push(
            kernel
                .rtnl
                .link_index(&guest_ifname(i))
                .map_err(|e| e.to_string())?,
        );
    }
    let state = kernel
        .state(&indexes)
        .map_err(|e| format!("reading the guest's state back: {e}"))?;
    let file = path.with_file_name(STATE_FILE);
    std::fs::write(&file, state.to_json())
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    Ok(applied.report)
}

/// When the device file at `path` chooses dropshim's userspace path
/// manager, starts it on a thread of the agent, driving the guest
/// kernel's MPTCP for the life of the instance; returns a line saying
/// what it did, None when the file has no such path manager.
pub fn start_path_manager(path: &Path) -> Result<Option<String>, String> {
    let cfg = dropshim_conf::resolve(Some(path), Some("uml")).map_err(|e| e.to_string())?;
    if cfg.mptcp.path_manager != Some(dropshim_conf::PathManager::Userspace) {
        return Ok(None);
    }
    let Some(settings) = dropshim_pm::Settings::from_config(&cfg) else {
        return Ok(None);
    };
    let mut rtnl = dropshim_netlink::host_rtnl().map_err(|e| e.to_string())?;
    let (locals, missing) = dropshim_pm::locals_from(&cfg, |name| {
        let i = cfg.interfaces.iter().position(|f| f.name == name)?;
        rtnl.link_index(&guest_ifname(i)).ok()
    });
    if !missing.is_empty() {
        return Err(format!(
            "the path manager has no guest interface for {}",
            missing.join(", ")
        ));
    }
    let policy = settings.policy.as_str();
    // Joined here, before the agent says it is ready: no connection's
    // events are missed.
    let mut stack = dropshim_pm::host::HostStack::open()
        .map_err(|e| format!("the path manager cannot open the guest's mptcp_pm: {e}"))?;
    std::thread::Builder::new()
        .name("dropshim-pm".into())
        .spawn(move || {
            static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            let note = |line: &str| eprintln!("dropshim-uml agent: path manager: {line}");
            let run = dropshim_pm::stack::drive(&mut stack, settings, locals, &STOP, note, |_| {});
            if let Err(e) = run {
                eprintln!(
                    "dropshim-uml agent: the path manager stopped: {e}; connections keep their subflows but get no new ones"
                );
            }
        })
        .map_err(|e| format!("cannot start the path manager thread: {e}"))?;
    Ok(Some(format!("path manager started (policy {policy})")))
}
