//! The stacks a measurement can run on, whether each can run here, and
//! how a program is started on one: plain TCP, the shim on the native
//! backend, mptcpize (the native backend's peer), the shim on a uml device
//! booted inside the client's namespace, and the shim on the lkl backend
//! (a Linux Kernel Library booted inside the client program itself).

use anyhow::{bail, Context, Result};
use dropshim_testbed::Testbed;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

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

    /// Why a path manager other than `kernel` cannot be measured.
    pub fn path_manager_reason(pm: &str) -> String {
        match pm {
            "userspace" => "userspace path manager: needs a daemon (e.g. mptcpd) to create subflows; none installed".to_string(),
            other => format!("path manager {other:?} is not known to dropshim bench"),
        }
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

/// The device a client program of the uml or lkl stack goes through.
#[derive(Clone, Copy)]
pub enum Device<'a> {
    Uml(&'a UmlDevice),
    Lkl(&'a LklDevice),
}

impl Device<'_> {
    /// CPU seconds used so far outside the measured programs: the UML
    /// kernel's processes. The library kernel runs inside the program,
    /// so the program's own CPU figure already holds it.
    pub fn cpu_seconds(self) -> f64 {
        match self {
            Device::Uml(d) => d.cpu_seconds(),
            Device::Lkl(_) => 0.0,
        }
    }
}

/// A started uml or lkl device, owned for as long as a scenario measures
/// through it (the uml instance is shut down on drop).
pub enum DeviceHandle {
    Uml(UmlDevice),
    Lkl(LklDevice),
}

impl DeviceHandle {
    /// Hands `node`'s links 1 and 2 of `tb` to a new device of `stack`.
    pub fn start(
        stack: Stack,
        tb: &Testbed,
        node: &str,
        work: &Path,
        avail: &Availability,
    ) -> Result<DeviceHandle> {
        DeviceHandle::start_with(stack, tb, node, work, avail, DeviceMptcp::default())
    }

    /// [`DeviceHandle::start`] with the device's MPTCP packet scheduler
    /// and path manager.
    pub fn start_with(
        stack: Stack,
        tb: &Testbed,
        node: &str,
        work: &Path,
        avail: &Availability,
        mptcp: DeviceMptcp,
    ) -> Result<DeviceHandle> {
        let ifaces = two_links(mptcp.path_manager);
        match stack {
            Stack::Uml => UmlDevice::up_with(tb, node, work, &ifaces, mptcp).map(DeviceHandle::Uml),
            Stack::Lkl => match &avail.lkl_library {
                Some(lib) => {
                    LklDevice::up_with(tb, node, work, lib, &ifaces, mptcp).map(DeviceHandle::Lkl)
                }
                None => bail!("internal: lkl runnable without a library"),
            },
            other => bail!("internal: {} has no device", other.name()),
        }
    }

    pub fn device(&self) -> Device<'_> {
        match self {
            DeviceHandle::Uml(d) => Device::Uml(d),
            DeviceHandle::Lkl(d) => Device::Lkl(d),
        }
    }
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
    device: Option<Device>,
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
    device: Option<Device>,
) -> Result<()> {
    for var in [
        "LD_PRELOAD",
        "DROPSHIM_CONFIG",
        "DROPSHIM_BACKEND",
        "DROPSHIM_LOG",
        "DROPSHIM_LKL_LIB",
    ] {
        cmd.env_remove(var);
    }
    match (stack, role) {
        (Stack::Mixed, _) => bail!("internal: a mixed mesh starts each device on its own stack"),
        (Stack::Tcp | Stack::Mptcpize, _) => {}
        (Stack::Native, _) | (Stack::Uml | Stack::Lkl, Role::Server) => {
            cmd.env("LD_PRELOAD", library);
        }
        (Stack::Uml, Role::Client) => {
            let Some(Device::Uml(dev)) = device else {
                bail!("internal: uml stack without a uml device");
            };
            cmd.env("LD_PRELOAD", library);
            cmd.env("DROPSHIM_CONFIG", &dev.config);
        }
        (Stack::Lkl, Role::Client) => {
            let Some(Device::Lkl(dev)) = device else {
                bail!("internal: lkl stack without an lkl device");
            };
            cmd.env("LD_PRELOAD", library);
            cmd.env("DROPSHIM_CONFIG", &dev.config);
            cmd.env("DROPSHIM_BACKEND", "lkl");
            // Found once by the bench, so no client runs build-lkl.sh.
            cmd.env("DROPSHIM_LKL_LIB", &dev.library);
        }
    }
    Ok(())
}

/// A uml device booted in the client's namespace of a testbed, owning the
/// client's links 1 and 2 (their host addresses move into the guest).
/// `dropshim down` runs on drop.
pub struct UmlDevice {
    pub config: PathBuf,
    netns: String,
    /// CPU time of the UML kernel's processes is added to the stack's cost.
    run_dir: PathBuf,
}

static DEVICES: AtomicU32 = AtomicU32::new(0);

impl UmlDevice {
    /// A uml device owning `node`'s interfaces `ifaces`.
    pub fn up_on(
        tb: &Testbed,
        client: &str,
        work: &Path,
        ifaces: &[DevIface],
    ) -> Result<UmlDevice> {
        UmlDevice::up_with(tb, client, work, ifaces, DeviceMptcp::default())
    }

    /// [`UmlDevice::up_on`] with the guest's MPTCP packet scheduler.
    pub fn up_with(
        tb: &Testbed,
        client: &str,
        work: &Path,
        ifaces: &[DevIface],
        mptcp: DeviceMptcp,
    ) -> Result<UmlDevice> {
        let n = DEVICES.fetch_add(1, Ordering::Relaxed);
        let name = format!("bench{}x{n}", std::process::id());
        let netns = tb.netns(client)?.to_string();
        let ifaces = device_interfaces(tb, client, &netns, ifaces)?;
        let config = work.join(format!("{name}.toml"));
        let text = format!(
            "# written by dropshim bench\n[device]\nname = \"{name}\"\nbackend = \"uml\"\n\n{ifaces}\
             {}\n[policy]\ndefault = \"mptcp\"\n\n[uml]\nmemory_mib = 256\n",
            mptcp_section(mptcp)
        );
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let dev = UmlDevice {
            config,
            netns,
            run_dir: dropshim_backend_uml::run_dir(&name),
        };
        let out = dev.dropshim("up", Duration::from_secs(120))?;
        if !out.status.success() {
            bail!(
                "`dropshim up` of the uml device failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(dev)
    }

    fn dropshim(&self, verb: &str, timeout: Duration) -> Result<std::process::Output> {
        let exe = std::env::current_exe().context("locating the dropshim executable")?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns])
            .arg(exe)
            .arg(verb)
            .arg("--config")
            .arg(&self.config);
        Ok(dropshim_testbed::run_with_timeout(&mut cmd, timeout)?)
    }

    /// CPU seconds (user + system) used so far by the UML kernel's
    /// processes (its process group).
    pub fn cpu_seconds(&self) -> f64 {
        let Some(pgrp) = std::fs::read_to_string(self.run_dir.join("kernel.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        else {
            return 0.0;
        };
        dropshim_testbed::process_group_cpu(pgrp).as_secs_f64()
    }
}

impl Drop for UmlDevice {
    fn drop(&mut self) {
        let _ = self.dropshim("down", Duration::from_secs(30));
    }
}

/// The client's links 1 and 2 handed to the library kernel of the lkl
/// stack: their host addresses go (the packet sockets see every frame, so
/// the host stack must not answer too) and a device file gives them to
/// the library kernel, which each lkl client boots in-process.
pub struct LklDevice {
    pub config: PathBuf,
    pub library: PathBuf,
}

impl LklDevice {
    /// An lkl device owning `node`'s interfaces `ifaces`.
    pub fn up_on(
        tb: &Testbed,
        client: &str,
        work: &Path,
        library: &Path,
        ifaces: &[DevIface],
    ) -> Result<LklDevice> {
        LklDevice::up_with(tb, client, work, library, ifaces, DeviceMptcp::default())
    }

    /// [`LklDevice::up_on`] with the library kernel's MPTCP packet
    /// scheduler.
    pub fn up_with(
        tb: &Testbed,
        client: &str,
        work: &Path,
        library: &Path,
        ifaces: &[DevIface],
        mptcp: DeviceMptcp,
    ) -> Result<LklDevice> {
        let n = DEVICES.fetch_add(1, Ordering::Relaxed);
        let name = format!("benchlkl{}x{n}", std::process::id());
        let netns = tb.netns(client)?.to_string();
        let ifaces = device_interfaces(tb, client, &netns, ifaces)?;
        let config = work.join(format!("{name}.toml"));
        let text = format!(
            "# written by dropshim bench\n[device]\nname = \"{name}\"\nbackend = \"lkl\"\n\n{ifaces}\
             {}\n[policy]\ndefault = \"mptcp\"\n",
            mptcp_section(mptcp)
        );
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        Ok(LklDevice {
            config,
            library: library.to_path_buf(),
        })
    }
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

/// A bench device's `[mptcp]` section: two subflows, the chosen path
/// manager, and the scheduler unless it is the kernel's default.
fn mptcp_section(mptcp: DeviceMptcp) -> String {
    let mut s = String::from("[mptcp]\nlimits = { subflows = 2, add_addr_accepted = 2 }\n");
    match mptcp.path_manager.policy() {
        None => s.push_str("path_manager = \"kernel\"\n"),
        Some(_) => s.push_str("path_manager = \"userspace\"\n"),
    }
    if mptcp.scheduler != "default" {
        s.push_str(&format!("scheduler = \"{}\"\n", mptcp.scheduler));
    }
    if let Some(policy) = mptcp.path_manager.policy() {
        s.push_str(&format!("\n[mptcp.userspace]\npolicy = \"{policy}\"\n"));
    }
    s
}

/// One interface a uml or lkl device takes over: the link (or segment)
/// number, its MPTCP endpoint roles, an optional default gateway.
#[derive(Clone, Debug)]
pub struct DevIface {
    pub link: u32,
    pub roles: &'static [&'static str],
    pub gateway: Option<std::net::Ipv4Addr>,
    /// The interface's `cost` (for the costaware path manager).
    pub cost: Option<u32>,
}

/// The client's links 1 and 2. Link 2 is a `subflow` endpoint bound to
/// its device: the guest opens the second subflow out of link 2 (to the
/// server's link-1 address, which the server accepts on any link). Under
/// the userspace `backup` policy link 2 is the backup; under `costaware`
/// it costs ten times link 1.
fn two_links(path_manager: PathManager) -> [DevIface; 2] {
    let (roles2, cost): (&'static [&'static str], _) = match path_manager {
        PathManager::Backup => (&["subflow", "backup"], None),
        PathManager::Costaware => (&["subflow"], Some([1, 10])),
        _ => (&["subflow"], None),
    };
    [
        DevIface {
            link: 1,
            roles: &[],
            gateway: None,
            cost: cost.map(|c| c[0]),
        },
        DevIface {
            link: 2,
            roles: roles2,
            gateway: None,
            cost: cost.map(|c| c[1]),
        },
    ]
}

/// The `[[interfaces]]` of a device file for `ifaces` of `node`. The raw
/// transport and the packet sockets see every frame: the host must not
/// answer on these interfaces too (design brief), so their addresses go.
fn device_interfaces(tb: &Testbed, node: &str, netns: &str, ifaces: &[DevIface]) -> Result<String> {
    let mut text = String::new();
    for i in ifaces {
        let ifname = tb.ifname(node, i.link)?.to_string();
        let a4 = tb.addr4(node, i.link)?;
        ip(&["-n", netns, "addr", "flush", "dev", &ifname])?;
        text.push_str(&format!(
            "[[interfaces]]\nname = \"{ifname}\"\naddresses = [\"{a4}/24\"]\n"
        ));
        if !i.roles.is_empty() {
            let roles: Vec<String> = i.roles.iter().map(|r| format!("\"{r}\"")).collect();
            text.push_str(&format!("endpoint = [{}]\n", roles.join(", ")));
        }
        if let Some(gw) = i.gateway {
            text.push_str(&format!("gateway = \"{gw}\"\n"));
        }
        if let Some(cost) = i.cost {
            text.push_str(&format!("cost = {cost}\n"));
        }
        text.push('\n');
    }
    Ok(text)
}

fn ip(args: &[&str]) -> Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let out = dropshim_testbed::run_with_timeout(&mut cmd, Duration::from_secs(20))?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path manager the schedulers bench offers, with a scheduler of
    /// the project's kernels, gives a device file that parses to that
    /// choice; backup and costaware mark link 2 as the backup or the
    /// costly one.
    #[test]
    fn bench_device_files_carry_the_path_manager_and_scheduler() {
        use dropshim_conf::{PathManager as Pm, PmPolicy};
        let all = [
            (PathManager::Kernel, None),
            (PathManager::Fullmesh, Some(PmPolicy::Fullmesh)),
            (PathManager::Ndiffports, Some(PmPolicy::Ndiffports)),
            (PathManager::Backup, Some(PmPolicy::Backup)),
            (PathManager::Costaware, Some(PmPolicy::Costaware)),
        ];
        for (pm, policy) in all {
            let mptcp = DeviceMptcp {
                scheduler: "blest",
                path_manager: pm,
            };
            let mut text = String::from("[device]\nname = \"t\"\nbackend = \"uml\"\n\n");
            for (i, dev) in two_links(pm).iter().enumerate() {
                text.push_str(&format!(
                    "[[interfaces]]\nname = \"l{i}\"\naddresses = [\"10.0.{i}.1/24\"]\n"
                ));
                if !dev.roles.is_empty() {
                    let roles: Vec<String> = dev.roles.iter().map(|r| format!("\"{r}\"")).collect();
                    text.push_str(&format!("endpoint = [{}]\n", roles.join(", ")));
                }
                if let Some(cost) = dev.cost {
                    text.push_str(&format!("cost = {cost}\n"));
                }
                text.push('\n');
            }
            text.push_str(&mptcp_section(mptcp));
            text.push_str("\n[policy]\ndefault = \"mptcp\"\n");
            let cfg = dropshim_conf::parse(&text, "bench.toml")
                .unwrap_or_else(|e| panic!("{pm:?}: {e}\n{text}"));
            assert_eq!(cfg.mptcp.scheduler.as_deref(), Some("blest"), "{pm:?}");
            let userspace = cfg.mptcp.userspace.as_ref().map(|u| u.policy);
            assert_eq!(userspace, policy, "{pm:?}");
            let want = if policy.is_some() {
                Pm::Userspace
            } else {
                Pm::Kernel
            };
            assert_eq!(cfg.mptcp.path_manager, Some(want), "{pm:?}");
            let links = two_links(pm);
            assert_eq!(
                links[1].roles.contains(&"backup"),
                pm == PathManager::Backup,
                "{pm:?}"
            );
            assert_eq!(
                links[1].cost > links[0].cost,
                pm == PathManager::Costaware,
                "{pm:?}"
            );
        }
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

    fn lkl_command(role: Role, shim: &Path, device: Option<Device>) -> Result<Command> {
        let mut cmd = Command::new("true");
        stack_env(&mut cmd, Stack::Lkl, role, shim, device)?;
        Ok(cmd)
    }

    #[test]
    fn lkl_client_gets_the_device_backend_and_library_and_server_stays_native() {
        let work = tempfile::tempdir().unwrap();
        let config = work.path().join("d.toml");
        std::fs::write(&config, "").unwrap();
        let dev = LklDevice {
            config: config.clone(),
            library: PathBuf::from("/x/liblkl.so"),
        };
        let env = |c: &Command| -> Vec<(String, Option<String>)> {
            let mut v: Vec<_> = c
                .get_envs()
                .map(|(k, v)| {
                    (
                        k.to_string_lossy().into_owned(),
                        v.map(|v| v.to_string_lossy().into_owned()),
                    )
                })
                .collect();
            v.sort();
            v
        };
        let shim = Path::new("/x/libdropshim.so");
        let client = lkl_command(Role::Client, shim, Some(Device::Lkl(&dev))).unwrap();
        let e = env(&client);
        let get = |k: &str| e.iter().find(|(n, _)| n == k).and_then(|(_, v)| v.clone());
        assert_eq!(get("LD_PRELOAD").as_deref(), Some("/x/libdropshim.so"));
        assert_eq!(get("DROPSHIM_BACKEND").as_deref(), Some("lkl"));
        assert_eq!(get("DROPSHIM_LKL_LIB").as_deref(), Some("/x/liblkl.so"));
        assert_eq!(get("DROPSHIM_CONFIG"), Some(config.display().to_string()));
        let server = lkl_command(Role::Server, shim, None).unwrap();
        let e = env(&server);
        let get = |k: &str| e.iter().find(|(n, _)| n == k).and_then(|(_, v)| v.clone());
        assert_eq!(get("LD_PRELOAD").as_deref(), Some("/x/libdropshim.so"));
        assert_eq!(get("DROPSHIM_BACKEND"), None);
        assert_eq!(get("DROPSHIM_LKL_LIB"), None);
        let err = lkl_command(Role::Client, shim, None).unwrap_err();
        assert!(err.to_string().contains("without an lkl device"), "{err}");
    }
}
