//! The stacks a measurement can run on, whether each can run here, and
//! how a program is started on one: plain TCP, the shim on the native
//! backend, mptcpize (the native backend's peer), the shim on a uml device
//! booted inside the client's namespace, and the shim on the lkl backend
//! (a Linux Kernel Library booted inside the client program itself).

use anyhow::{bail, Context, Result};
use dropshim_stacks::{unique_name, Tools};
pub use dropshim_stacks::{Device, DeviceFile, Iface};
use dropshim_testbed::Testbed;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Stack {
    /// Plain TCP, no shim: one link.
    Tcp,
    /// LD_PRELOAD=libdropshim.so, no configuration: the native backend.
    Native,
    /// `mptcpize run` (mptcpd's LD_PRELOAD wrapper), the native peer.
    Mptcpize,
    /// The shim with a device file whose backend is uml.
    Uml,
    /// The shim on the lkl backend.
    Lkl,
    /// drop-mesh: devices on native, uml and lkl in turn (not a choice
    /// for --stacks; the mesh follows the stacks that are runnable).
    #[value(skip)]
    Mixed,
}

impl Stack {
    pub const ALL: [Stack; 5] = [
        Stack::Tcp,
        Stack::Native,
        Stack::Mptcpize,
        Stack::Uml,
        Stack::Lkl,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Stack::Tcp => "TCP, one link",
            Stack::Native => "MPTCP via dropshim (native)",
            Stack::Mptcpize => "MPTCP via mptcpize",
            Stack::Uml => "MPTCP via dropshim (uml)",
            Stack::Lkl => "MPTCP via dropshim (lkl)",
            Stack::Mixed => "MPTCP via dropshim, stacks round-robin",
        }
    }

    /// Short name for CSV, file names and plot axes.
    pub fn name(self) -> &'static str {
        match self {
            Stack::Tcp => "tcp",
            Stack::Native => "native",
            Stack::Mptcpize => "mptcpize",
            Stack::Uml => "uml",
            Stack::Lkl => "lkl",
            Stack::Mixed => "mixed",
        }
    }
}

/// Which stacks can run here, and why the others cannot.
#[derive(Clone, Debug)]
pub struct Availability {
    /// `None` = runnable; `Some(reason)` = skipped.
    pub reasons: Vec<(Stack, Option<String>)>,
    pub path_managers: Vec<String>,
    pub schedulers: Vec<String>,
    /// liblkl.so for the lkl stack, when it is runnable.
    pub lkl_library: Option<PathBuf>,
}

const MPTCP_SYSCTL: &str = "/proc/sys/net/mptcp";

impl Availability {
    pub fn probe(library: &Path) -> Availability {
        let read = |name: &str| {
            std::fs::read_to_string(Path::new(MPTCP_SYSCTL).join(name))
                .map(|s| s.trim().to_string())
                .ok()
        };
        let mptcp = match read("enabled").as_deref() {
            Some("1") => None,
            Some(_) => Some(
                "net.mptcp.enabled is 0 on this host: `sysctl -w net.mptcp.enabled=1`".to_string(),
            ),
            None => Some("this kernel has no MPTCP (/proc/sys/net/mptcp missing)".to_string()),
        };
        let mptcpize = if !super::on_path("mptcpize") {
            Some("mptcpize not installed (apt-get install mptcpize)".to_string())
        } else {
            mptcp.clone()
        };
        let list = |name: &str, fallback: &str| -> Vec<String> {
            read(name)
                .unwrap_or_else(|| fallback.to_string())
                .split_whitespace()
                .map(str::to_string)
                .collect()
        };
        // The lkl client's peer is the shim on the native backend, so the
        // host's MPTCP is needed too.
        let lkl = match (&mptcp, library.is_file()) {
            (Some(r), _) => Err(r.clone()),
            (None, false) => Err(format!("{} missing", library.display())),
            (None, true) => lkl_library(),
        };
        let (lkl_reason, lkl_library) = match lkl {
            Ok(lib) => (None, Some(lib)),
            Err(r) => (Some(r), None),
        };
        Availability {
            reasons: vec![
                (Stack::Tcp, None),
                (Stack::Native, mptcp),
                (Stack::Mptcpize, mptcpize),
                (Stack::Uml, uml_reason(library)),
                (Stack::Lkl, lkl_reason),
            ],
            path_managers: list("available_path_managers", "kernel"),
            schedulers: list("available_schedulers", "default"),
            lkl_library,
        }
    }

    /// Marks every stack not in `selected` as skipped, saying so.
    pub fn keep_only(&mut self, selected: &[Stack]) {
        for (stack, reason) in &mut self.reasons {
            if !selected.contains(stack) && reason.is_none() {
                *reason = Some("not selected (--stacks)".to_string());
            }
        }
    }

    pub fn reason(&self, stack: Stack) -> Option<&str> {
        self.reasons
            .iter()
            .find(|(s, _)| *s == stack)
            .and_then(|(_, r)| r.as_deref())
    }

    pub fn runnable(&self) -> Vec<Stack> {
        self.reasons
            .iter()
            .filter(|(_, r)| r.is_none())
            .map(|(s, _)| *s)
            .collect()
    }

    pub fn summary(&self) -> String {
        self.runnable()
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Why a path manager the host lists cannot be measured: the bench
    /// runs `kernel`, and `userspace` with dropshim's own daemon.
    pub fn path_manager_reason(pm: &str) -> String {
        format!("path manager {pm:?} is not known to dropshim bench")
    }
}

/// Why the uml stack cannot run, before trying to boot it.
fn uml_reason(library: &Path) -> Option<String> {
    if dropshim_backend_uml::host::bootable_kernel().is_none() {
        return Some("no UML kernel built yet: `dropshim up` on a uml device file builds it (about 3 minutes)".to_string());
    }
    if let Err(e) = dropshim_backend_uml::host::helper_binary() {
        return Some(e);
    }
    if !library.is_file() {
        return Some(format!("{} missing", library.display()));
    }
    None
}

const BUILD_LKL: &str = "run backend-lkl/build-lkl.sh (or point DROPSHIM_LKL_LIB at a liblkl.so)";

/// liblkl.so for the lkl stack, found the way the shim finds it, but
/// never built here: a build takes minutes and must not start behind a
/// benchmark's back.
fn lkl_library() -> Result<PathBuf, String> {
    dropshim_backend_lkl::locate_library(false).map_err(|e| format!("{e}; {BUILD_LKL}"))
}

/// Which end of a transfer a program is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    Client,
    Server,
}

/// Hands `node`'s links 1 and 2 of `tb` to a new device of `stack`
/// (uml or lkl), with the kernel's scheduler and path manager.
pub fn device(
    stack: Stack,
    tb: &Testbed,
    node: &str,
    shim: &Path,
    avail: &Availability,
) -> Result<Device> {
    device_with(stack, tb, node, shim, avail, DeviceMptcp::default())
}

/// [`device`] with the device's MPTCP packet scheduler and path manager.
pub fn device_with(
    stack: Stack,
    tb: &Testbed,
    node: &str,
    shim: &Path,
    avail: &Availability,
    mptcp: DeviceMptcp,
) -> Result<Device> {
    device_on(stack, tb, node, shim, avail, &device_file(mptcp))
}

/// A device of `stack` (uml or lkl) owning `node`'s interfaces of `file`.
pub fn device_on(
    stack: Stack,
    tb: &Testbed,
    node: &str,
    shim: &Path,
    avail: &Availability,
    file: &DeviceFile,
) -> Result<Device> {
    let prefix = match stack {
        Stack::Uml => "bench",
        Stack::Lkl if avail.lkl_library.is_some() => "benchlkl",
        Stack::Lkl => bail!("internal: lkl runnable without a library"),
        other => bail!("internal: {} has no device", other.name()),
    };
    let tools = Tools {
        shim: shim.to_path_buf(),
        dropshim: std::env::current_exe().context("locating the dropshim executable")?,
        liblkl: avail.lkl_library.clone(),
    };
    Device::up(stack.name(), tb, node, file, &unique_name(prefix), &tools)
}

/// `program` in `node`, started the way `stack` runs programs. On the uml
/// and lkl stacks only the client goes through the device; the server
/// side is the native backend.
pub fn command(
    tb: &Testbed,
    node: &str,
    stack: Stack,
    role: Role,
    library: &Path,
    device: Option<&Device>,
    program: &str,
) -> Result<Command> {
    let mut cmd = if stack == Stack::Mptcpize {
        let mut c = tb.command(node, "mptcpize")?;
        c.args(["run", program]);
        c
    } else {
        tb.command(node, program)?
    };
    stack_env(&mut cmd, stack, role, library, device)?;
    Ok(cmd)
}

/// The environment that puts `cmd` on `stack` (and nothing left over
/// from the bench's own environment).
fn stack_env(
    cmd: &mut Command,
    stack: Stack,
    role: Role,
    library: &Path,
    device: Option<&Device>,
) -> Result<()> {
    dropshim_stacks::clear_stack_env(cmd);
    match (stack, role) {
        (Stack::Mixed, _) => bail!("internal: a mixed mesh starts each device on its own stack"),
        (Stack::Tcp | Stack::Mptcpize, _) => {}
        (Stack::Native, _) | (Stack::Uml | Stack::Lkl, Role::Server) => {
            cmd.env("LD_PRELOAD", library);
        }
        (Stack::Uml | Stack::Lkl, Role::Client) => match device {
            Some(d) if d.kind() == stack.name() => d.program_env(cmd, library),
            _ => bail!(
                "internal: {} stack without a {} device",
                stack.name(),
                stack.name()
            ),
        },
    }
    Ok(())
}

/// The path managers a bench device can run: the kernel's, or one of the
/// policies of dropshim's userspace path manager.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PathManager {
    /// The kernel's in-kernel path manager.
    #[default]
    Kernel,
    /// Userspace: a subflow per address pair.
    Fullmesh,
    /// Userspace: two subflows over the one address pair.
    Ndiffports,
    /// Userspace: link 2 is a backup, promoted while link 1 is down.
    Backup,
    /// Userspace: link 2 costs more and carries only while link 1 is down
    /// or saturated.
    Costaware,
}

impl PathManager {
    /// The name in the bench's tables: `kernel`, else `userspace <policy>`.
    pub fn label(self) -> &'static str {
        match self {
            PathManager::Kernel => "kernel",
            PathManager::Fullmesh => "userspace fullmesh",
            PathManager::Ndiffports => "userspace ndiffports",
            PathManager::Backup => "userspace backup",
            PathManager::Costaware => "userspace costaware",
        }
    }

    fn policy(self) -> Option<&'static str> {
        match self {
            PathManager::Kernel => None,
            PathManager::Fullmesh => Some("fullmesh"),
            PathManager::Ndiffports => Some("ndiffports"),
            PathManager::Backup => Some("backup"),
            PathManager::Costaware => Some("costaware"),
        }
    }
}

/// What a bench device's `[mptcp]` section chooses.
#[derive(Clone, Copy, Debug)]
pub struct DeviceMptcp<'a> {
    /// The packet scheduler (`default` leaves the kernel's).
    pub scheduler: &'a str,
    /// The path manager.
    pub path_manager: PathManager,
}

impl Default for DeviceMptcp<'_> {
    fn default() -> Self {
        DeviceMptcp {
            scheduler: "default",
            path_manager: PathManager::Kernel,
        }
    }
}

/// A bench device's file: the client's links 1 and 2, link 2 a `subflow`
/// endpoint bound to its device (the guest opens the second subflow out
/// of link 2 to the server's link-1 address, which the server accepts on
/// any link), two subflows, the chosen path manager and scheduler. Under
/// the userspace `backup` policy link 2 is the backup; under `costaware`
/// it costs ten times link 1.
fn device_file(mptcp: DeviceMptcp) -> DeviceFile {
    let (link1, link2) = (Iface::on(1), Iface::on(2));
    let links = match mptcp.path_manager {
        PathManager::Backup => vec![link1, link2.roles(&["subflow", "backup"])],
        PathManager::Costaware => vec![link1.cost(1), link2.roles(&["subflow"]).cost(10)],
        _ => vec![link1, link2.roles(&["subflow"])],
    };
    let mut file = DeviceFile::new(links);
    if mptcp.scheduler != "default" {
        file.scheduler = Some(mptcp.scheduler.to_string());
    }
    file.userspace = mptcp
        .path_manager
        .policy()
        .map(|p| format!("policy = \"{p}\""));
    file
}

#[cfg(test)]
mod tests {
    use super::*;
    use dropshim_stacks::LinkAddrs;

    /// Every path manager the schedulers bench offers, with a scheduler of
    /// the project's kernels, gives a device file that parses to that
    /// choice; backup and costaware mark link 2 as the backup or the
    /// costly one.
    #[test]
    fn bench_device_files_carry_the_path_manager_and_scheduler() {
        use dropshim_conf::{EndpointRole, PathManager as Pm, PmPolicy};
        let all = [
            (PathManager::Kernel, None),
            (PathManager::Fullmesh, Some(PmPolicy::Fullmesh)),
            (PathManager::Ndiffports, Some(PmPolicy::Ndiffports)),
            (PathManager::Backup, Some(PmPolicy::Backup)),
            (PathManager::Costaware, Some(PmPolicy::Costaware)),
        ];
        let addrs = |link: u32| {
            Ok(LinkAddrs {
                ifname: format!("l{link}"),
                v4: format!("10.0.{link}.1/24"),
                v6: format!("fd00:{link}::1/64"),
            })
        };
        for (pm, policy) in all {
            let mptcp = DeviceMptcp {
                scheduler: "blest",
                path_manager: pm,
            };
            let text = device_file(mptcp).render("t", "uml", addrs).unwrap();
            let cfg = dropshim_conf::parse(&text, "bench.toml")
                .unwrap_or_else(|e| panic!("{pm:?}: {e}\n{text}"));
            assert_eq!(cfg.mptcp.scheduler.as_deref(), Some("blest"), "{pm:?}");
            let userspace = cfg.mptcp.userspace.as_ref().map(|u| u.policy);
            assert_eq!(userspace, policy, "{pm:?}");
            assert_eq!(
                cfg.mptcp.path_manager == Some(Pm::Userspace),
                policy.is_some(),
                "{pm:?}"
            );
            let [l1, l2] = &cfg.interfaces[..] else {
                panic!("{pm:?}: two interfaces\n{text}");
            };
            assert!(l2.endpoint.contains(&EndpointRole::Subflow), "{pm:?}");
            assert_eq!(
                l2.endpoint.contains(&EndpointRole::Backup),
                pm == PathManager::Backup,
                "{pm:?}"
            );
            assert_eq!(l2.cost > l1.cost, pm == PathManager::Costaware, "{pm:?}");
        }
        let plain = device_file(DeviceMptcp::default())
            .render("t", "lkl", addrs)
            .unwrap();
        let cfg = dropshim_conf::parse(&plain, "bench.toml").unwrap();
        assert_eq!(cfg.mptcp.scheduler, None, "{plain}");
    }

    #[test]
    fn without_the_shim_lkl_is_skipped_with_a_reason_and_tcp_always_runs() {
        let a = Availability::probe(Path::new("/nonexistent/libdropshim.so"));
        let lkl = a.reason(Stack::Lkl).unwrap_or_default().to_string();
        assert!(
            lkl.contains("/nonexistent/libdropshim.so missing") || lkl.contains("MPTCP"),
            "{lkl}"
        );
        assert_eq!(a.lkl_library, None);
        assert_eq!(a.reason(Stack::Tcp), None);
        assert!(a.runnable().contains(&Stack::Tcp));
        assert!(!a.schedulers.is_empty());
    }

    /// The server of an lkl or uml measurement is the native backend (the
    /// shim alone, nothing inherited); a client needs its device.
    #[test]
    fn servers_stay_native_and_a_client_needs_its_device() {
        let shim = Path::new("/x/libdropshim.so");
        for stack in [Stack::Uml, Stack::Lkl] {
            let mut server = Command::new("true");
            server.env("DROPSHIM_BACKEND", "lkl");
            stack_env(&mut server, stack, Role::Server, shim, None).unwrap();
            let env: Vec<_> = server
                .get_envs()
                .filter_map(|(k, v)| Some((k.to_str()?.to_string(), v?.to_str()?.to_string())))
                .collect();
            assert_eq!(
                env,
                vec![("LD_PRELOAD".to_string(), "/x/libdropshim.so".to_string())],
                "{stack:?}"
            );
            let mut client = Command::new("true");
            let err = stack_env(&mut client, stack, Role::Client, shim, None).unwrap_err();
            assert!(err.to_string().contains("device"), "{err}");
        }
    }
}
