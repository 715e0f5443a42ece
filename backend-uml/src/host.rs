//! The host side of an instance: `up`, `down`, `status`, the kernel
//! build, and the supervisor process that boots the kernel and serves
//! shimmed programs.

use crate::proto::{Kind, Notice, Reply, Request, MAX_REQUEST, NOTICE_LEN, REPLY_LEN};
use crate::{run_dir, safe_name, sys};
use dropshim_conf::DeviceConfig;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The kernel build script, embedded so an installed binary can build
/// the kernel on a fresh machine without the source tree.
pub const BUILD_SCRIPT: &str = include_str!("../build-kernel.sh");

/// The kernel patches the script applies (GPL-2.0, `backend-uml/kernel/`),
/// carried as data for the same reason; handed to the script unchanged.
const KERNEL_PATCHES: &[(&str, &str)] = &[
    (
        "0001-um-x86-xstate-of-any-size.patch",
        include_str!("../kernel/patches/0001-um-x86-xstate-of-any-size.patch"),
    ),
    (
        "0002-um-tick-at-1000-hz.patch",
        include_str!("../kernel/patches/0002-um-tick-at-1000-hz.patch"),
    ),
    (
        "0003-um-vector-no-frag-list-offload.patch",
        include_str!("../kernel/patches/0003-um-vector-no-frag-list-offload.patch"),
    ),
    (
        "0004-um-vector-drop-a-frame-the-host-refused.patch",
        include_str!("../kernel/patches/0004-um-vector-drop-a-frame-the-host-refused.patch"),
    ),
    (
        "0005-um-vector-host-interface-down-is-a-dead-wire.patch",
        include_str!("../kernel/patches/0005-um-vector-host-interface-down-is-a-dead-wire.patch"),
    ),
    (
        "0006-net-dropshim-relay-in-the-guest-kernel.patch",
        include_str!("../kernel/patches/0006-net-dropshim-relay-in-the-guest-kernel.patch"),
    ),
    (
        "0007-um-idle-do-not-sleep-with-an-interrupt-pending.patch",
        include_str!("../kernel/patches/0007-um-idle-do-not-sleep-with-an-interrupt-pending.patch"),
    ),
];

/// dropshim's MPTCP packet schedulers (GPL-2.0, `kernel/mptcp-schedulers/`
/// at the workspace root, shared with the lkl build): the files the script
/// lays onto the kernel tree, handed over in a sub-folder of the patches'.
const MPTCP_SCHEDULERS: &[(&str, &str)] = &[
    (
        "apply.sh",
        include_str!("../../kernel/mptcp-schedulers/apply.sh"),
    ),
    (
        "0001-mptcp-dropshim-schedulers.patch",
        include_str!("../../kernel/mptcp-schedulers/0001-mptcp-dropshim-schedulers.patch"),
    ),
    (
        "0002-mptcp-redundant-push.patch",
        include_str!("../../kernel/mptcp-schedulers/0002-mptcp-redundant-push.patch"),
    ),
    (
        "0003-mptcp-in-sequence-data-may-take-the-room-of-the-ofo-queue.patch",
        include_str!(
            "../../kernel/mptcp-schedulers/0003-mptcp-in-sequence-data-may-take-the-room-of-the-ofo-queue.patch"
        ),
    ),
    (
        "dropshim_sched.h",
        include_str!("../../kernel/mptcp-schedulers/dropshim_sched.h"),
    ),
    (
        "sched_blest.c",
        include_str!("../../kernel/mptcp-schedulers/sched_blest.c"),
    ),
    (
        "sched_costaware.c",
        include_str!("../../kernel/mptcp-schedulers/sched_costaware.c"),
    ),
    (
        "sched_redundant.c",
        include_str!("../../kernel/mptcp-schedulers/sched_redundant.c"),
    ),
    (
        "sched_roundrobin.c",
        include_str!("../../kernel/mptcp-schedulers/sched_roundrobin.c"),
    ),
];

/// The name of the sub-folder of [`patches_dir`] holding [`MPTCP_SCHEDULERS`].
const SCHEDULERS_SUBDIR: &str = "mptcp-schedulers";

/// Writes [`KERNEL_PATCHES`] (and [`MPTCP_SCHEDULERS`] in
/// [`SCHEDULERS_SUBDIR`]) into a fresh private folder for the script.
fn patches_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "dropshim-uml-patches-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir(&dir).map_err(io_err(format!("cannot create {}", dir.display())))?;
    for (name, text) in KERNEL_PATCHES {
        std::fs::write(dir.join(name), text).map_err(io_err(format!(
            "cannot write {name} into {}",
            dir.display()
        )))?;
    }
    let sched = dir.join(SCHEDULERS_SUBDIR);
    std::fs::create_dir(&sched).map_err(io_err(format!("cannot create {}", sched.display())))?;
    for (name, text) in MPTCP_SCHEDULERS {
        std::fs::write(sched.join(name), text).map_err(io_err(format!(
            "cannot write {name} into {}",
            sched.display()
        )))?;
    }
    Ok(dir)
}

type Result<T> = std::result::Result<T, String>;

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// Runs the build script (building only if the cache lacks the kernel)
/// and returns the kernel's path. Progress goes to stderr.
pub fn build_kernel() -> Result<PathBuf> {
    run_build_script(&[])
}

/// Where the built kernel is, if it is built.
fn built_kernel() -> Option<PathBuf> {
    run_build_script(&["--path"]).ok()
}

/// The kernel named by `DROPSHIM_UML_KERNEL`, which every device boots in
/// place of any other.
fn named_kernel() -> Option<PathBuf> {
    std::env::var_os(crate::ENV_KERNEL)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The kernel a device would boot without building one: the named
/// kernel, else dropshim's own if it is built.
pub fn bootable_kernel() -> Option<PathBuf> {
    named_kernel().or_else(built_kernel)
}

fn run_build_script(args: &[&str]) -> Result<PathBuf> {
    let patches = patches_dir()?;
    let result = run_build_script_with(args, &patches);
    let _ = std::fs::remove_dir_all(&patches);
    result
}

fn run_build_script_with(args: &[&str], patches: &Path) -> Result<PathBuf> {
    let mut child = Command::new("sh")
        .env("DROPSHIM_UML_PATCHES", patches)
        .env("DROPSHIM_MPTCP_SCHEDULERS", patches.join(SCHEDULERS_SUBDIR))
        .arg("-s")
        .arg("--")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(if args.is_empty() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .map_err(io_err("cannot run sh for the kernel build"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(BUILD_SCRIPT.as_bytes())
            .map_err(io_err("cannot feed the build script"))?;
    }
    let out = child.wait_with_output().map_err(io_err("kernel build"))?;
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .to_string();
    if !out.status.success() || path.is_empty() {
        return Err("the UML kernel build failed (see the messages above); it needs linux-source-6.12 bc flex bison libelf-dev build-essential".into());
    }
    Ok(PathBuf::from(path))
}

/// The kernel a device boots: `DROPSHIM_UML_KERNEL`, the device file's
/// `[uml] kernel`, or the one dropshim builds (built now if missing).
pub fn kernel_for(cfg: &DeviceConfig) -> Result<PathBuf> {
    if let Some(k) = named_kernel() {
        return Ok(k);
    }
    if let Some(k) = cfg.uml.as_ref().and_then(|u| u.kernel.as_ref()) {
        let p = PathBuf::from(k);
        if !p.is_file() {
            return Err(format!("[uml] kernel = {k:?} does not exist; remove the key to use the kernel dropshim builds"));
        }
        return Ok(p);
    }
    build_kernel()
}

/// The `dropshim-uml` helper binary: next to the running executable, or
/// `DROPSHIM_UML_BIN`.
pub fn helper_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("DROPSHIM_UML_BIN").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(io_err("cannot locate the running executable"))?;
    let p = exe.with_file_name("dropshim-uml");
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "{} not found; build it with `cargo build --release -p dropshim-backend-uml`",
            p.display()
        ))
    }
}

/// Names derived from the device: private namespace and veth ends.
pub struct Names {
    /// The private network namespace the instance runs in (`dropshim-uml-<device>`).
    pub netns: String,
    /// The veth end handed to the guest (stays in the device's namespace).
    pub guest_if: String,
    /// The veth end in the private namespace.
    pub host_if: String,
}

/// FNV-1a of the device name: short, stable tags derived from it.
fn name_hash(device: &str) -> u32 {
    let mut h: u32 = 2166136261;
    for b in device.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(16777619);
    }
    h
}

/// The names for `device`; the same device name always gives the same names.
pub fn names(device: &str) -> Names {
    // Interface names are at most 15 bytes: a short hash keeps them unique.
    let tag = format!("{:06x}", name_hash(device) & 0xff_ffff);
    Names {
        netns: format!("dropshim-uml-{}", safe_name(device)),
        guest_if: format!("dsu{tag}g"),
        host_if: format!("dsu{tag}h"),
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(io_err("cannot run ip (install iproute2)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Host addresses (other than link-local) on an interface.
fn host_addresses(ifname: &str) -> Result<Vec<String>> {
    let out = Command::new("ip")
        .args(["-o", "addr", "show", "dev", ifname])
        .output()
        .map_err(io_err("cannot run ip"))?;
    if !out.status.success() {
        return Err(format!(
            "interface {ifname:?} named in the device file does not exist in this network namespace ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            it.position(|w| w == "inet" || w == "inet6")?;
            it.next().map(str::to_string)
        })
        .filter(|a| !a.starts_with("fe80:"))
        .collect())
}

/// The device file's copy in the run directory, which the guest applies.
const GUEST_DEVICE_FILE: &str = "device.toml";

/// The commands the guest agent runs, one per line, arguments separated
/// by tabs: `configure FILE` applies the device file with the device
/// configurator ([`crate::guest_config`]; interfaces are vec0..vecN-1 in
/// the file's order), then the private link vecN comes up.
pub fn guest_commands(cfg: &DeviceConfig, config_path: &Path) -> Vec<Vec<String>> {
    let mut cmds: Vec<Vec<String>> = Vec::new();
    let mut add = |v: &[&str]| cmds.push(v.iter().map(|s| s.to_string()).collect());
    add(&["configure", &config_path.to_string_lossy()]);
    let n = cfg.interfaces.len();
    let bridge = format!("{}/30", Ipv4Addr::from(crate::GUEST_BRIDGE_ADDR));
    let pdev = format!("vec{n}");
    add(&["ip", "link", "set", &pdev, "up"]);
    add(&["ip", "addr", "add", &bridge, "dev", &pdev]);
    cmds
}

/// The receive filter each guest device's raw socket gets, in the run
/// directory.
const RX_FILTER_FILE: &str = "rx-filter.bpf";

/// A classic BPF program for the vector driver's receive socket: drop the
/// frames the guest itself sent (`PACKET_OUTGOING`), keep the rest whole.
///
/// Why: the driver transmits on a second raw socket, so its receive
/// socket is handed a copy of every frame the guest sends. The driver
/// means to filter those out by source MAC, but attaches that filter only
/// when `PACKET_QDISC_BYPASS` fails, which it never does here; without a
/// filter each sent frame (up to 64 KiB with TSO) is queued back, raises
/// a SIGIO, is copied into the guest and dropped there. Measured on the
/// unshaped bench: 22 % more throughput, 22 % less UML CPU per GB.
/// The driver reads the file at every device open (boot, and again when
/// the agent bounces a device after a link flap). The testbed's link
/// emulator uses the same filter: there a bridge would otherwise forward
/// each sent frame back and learn MAC addresses on the wrong port.
pub fn rx_filter() -> Vec<u8> {
    // struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; }, host order.
    const SKF_AD_PKTTYPE: u32 = 0xffff_f000 + 4; // SKF_AD_OFF + SKF_AD_PKTTYPE
    const PACKET_OUTGOING: u32 = 4;
    let prog: [(u16, u8, u8, u32); 4] = [
        (0x20, 0, 0, SKF_AD_PKTTYPE),  // ld  pkttype
        (0x15, 0, 1, PACKET_OUTGOING), // jeq #PACKET_OUTGOING, drop, keep
        (0x06, 0, 0, 0),               // drop: ret #0
        (0x06, 0, 0, u32::MAX),        // keep: ret #-1 (the whole frame)
    ];
    let mut out = Vec::with_capacity(prog.len() * 8);
    for (code, jt, jf, k) in prog {
        out.extend_from_slice(&code.to_ne_bytes());
        out.extend_from_slice(&[jt, jf]);
        out.extend_from_slice(&k.to_ne_bytes());
    }
    out
}

/// The kernel command line for this device.
pub fn kernel_args(cfg: &DeviceConfig, agent: &Path, run: &Path) -> Vec<String> {
    let mem = cfg.uml.as_ref().map_or(256, |u| u.memory_mib);
    let mut args = vec![
        "umid=uml".to_string(),
        format!("uml_dir={}", run.display()),
        "rootfstype=hostfs".into(),
        "rootflags=/".into(),
        "rw".into(),
        format!("mem={mem}M"),
        format!("init={}", agent.display()),
        "con=null".into(),
        "con0=null,fd:1".into(),
        // Warnings stay in the kernel's ring buffer, not on the console.
        "loglevel=4".into(),
    ];
    // The filter file is named only if the path survives the kernel's
    // comma-separated option syntax (the default run directory does).
    let filter = run.join(RX_FILTER_FILE);
    let filter = filter
        .to_str()
        .filter(|p| !p.contains([',', ' ', '\t', '\n']))
        .map(|p| format!(",bpffile={p}"))
        .unwrap_or_default();
    let ifnames = cfg
        .interfaces
        .iter()
        .map(|i| i.name.clone())
        .chain([names(&cfg.device.name).guest_if]);
    for (i, ifname) in ifnames.enumerate() {
        args.push(format!(
            "vec{i}:transport=raw,ifname={ifname},gro=1{filter}"
        ));
    }
    if let Some(u) = &cfg.uml {
        args.extend(u.cmdline.iter().cloned());
    }
    args.push(format!(
        "{}={}",
        crate::ENV_GUEST,
        run.join("guest.cmds").display()
    ));
    args
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes at most size_of::<cpu_set_t>() bytes into `set`.
    let ret =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if ret < 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET only reads `set` at an index below CPU_SETSIZE.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// The one host CPU the instance's processes are pinned to, or `None`.
///
/// Why pin: a UML kernel is a uniprocessor whose host processes (the
/// kernel, and the guest's processes it drives with ptrace) run one at a
/// time, handing the CPU back and forth at every guest system call and
/// interrupt. Left to the scheduler they often land on different CPUs,
/// and each hand-over becomes a cross-CPU wake-up. Measured on the
/// unshaped bench (2 CPUs): kernel and agent on different CPUs 3.6-4.1
/// Gbit/s, both on one CPU 4.2-5.1, unpinned anywhere between 3.2 and 5.4.
/// Pinning takes no parallelism from the instance. The CPU is chosen by
/// device name, so several instances spread over the CPUs.
pub fn instance_cpu(device: &str) -> Result<Option<usize>> {
    let wanted = std::env::var(crate::ENV_CPU).unwrap_or_default();
    pick_cpu(wanted.trim(), &allowed_cpus(), device)
}

/// `wanted`: the value of `DROPSHIM_UML_CPU` ("" when unset).
fn pick_cpu(wanted: &str, allowed: &[usize], device: &str) -> Result<Option<usize>> {
    if wanted == "any" {
        return Ok(None);
    }
    if !wanted.is_empty() {
        return match wanted.parse::<usize>() {
            Ok(c) if allowed.contains(&c) => Ok(Some(c)),
            _ => Err(format!(
                "{}={wanted:?}: expected a CPU this process may run on ({}) or `any`",
                crate::ENV_CPU,
                allowed
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        };
    }
    if allowed.len() < 2 {
        return Ok(None);
    }
    Ok(Some(allowed[name_hash(device) as usize % allowed.len()]))
}

/// Boots the device's instance and returns once programs can use it.
pub fn up(config_path: &Path, cfg: &DeviceConfig) -> Result<()> {
    let device = &cfg.device.name;
    if crate::client::ping(device) {
        return Err(format!("the uml instance of device {device:?} is already running; `dropshim down --config {}` stops it", config_path.display()));
    }
    for iface in &cfg.interfaces {
        let addrs = host_addresses(&iface.name)?;
        if !addrs.is_empty() {
            return Err(format!(
                "interface {} carries host address(es) {}; the UML instance owns this interface and configures {} itself. Remove them first: ip addr flush dev {}",
                iface.name,
                addrs.join(", "),
                if iface.addresses.is_empty() { "nothing".to_string() } else { iface.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ") },
                iface.name
            ));
        }
    }
    remove_stale_instances(&crate::run_base());
    // Checked here too, so a bad DROPSHIM_UML_CPU fails before the boot.
    instance_cpu(device)?;
    let kernel = kernel_for(cfg)?;
    let helper = helper_binary()?;
    let run = run_dir(device);
    let _ = std::fs::remove_dir_all(&run);
    std::fs::create_dir_all(&run).map_err(io_err(format!("cannot create {}", run.display())))?;
    // Owner-only: the control socket inside is the device's door.
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err("chmod run dir"))?;
    let config_abs = std::fs::canonicalize(config_path)
        .map_err(io_err(format!("cannot resolve {}", config_path.display())))?;
    let log = std::fs::File::create(run.join("supervisor.log"))
        .map_err(io_err("cannot create supervisor.log"))?;
    let log2 = log.try_clone().map_err(io_err("log"))?;
    let mut cmd = Command::new(&helper);
    cmd.arg("supervise").arg(&config_abs).arg(&kernel);
    cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
    // SAFETY: setsid is async-signal-safe; the supervisor outlives `up`
    // in its own session, detached from the terminal.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(io_err(format!("cannot start {}", helper.display())))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if crate::client::ping(device) {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let tail = std::fs::read_to_string(run.join("supervisor.log")).unwrap_or_default();
            return Err(format!(
                "the uml supervisor exited ({status}) before the instance was ready:\n{}",
                tail.trim()
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(format!(
                "the uml instance did not become ready within 60 s; see {}",
                run.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops the instance and removes everything `up` created.
pub fn down(cfg: &DeviceConfig) -> Result<bool> {
    let device = &cfg.device.name;
    let run = run_dir(device);
    let mut was_running = false;
    if let Some(pid) = read_pid(&run.join("supervisor.pid")) {
        if pid_alive(pid) {
            was_running = true;
            // SAFETY: plain signal to the supervisor we started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while pid_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if pid_alive(pid) {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    if let Some(pid) = read_pid(&run.join("kernel.pid")) {
        if pid_alive(pid) {
            // SAFETY: the kernel leads its own process group.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
    }
    cleanup_network(device);
    let _ = std::fs::remove_dir_all(&run);
    Ok(was_running)
}

/// Removes what instances that ended without `down` left under `base`:
/// each run directory whose supervisor and kernel are both gone, with its
/// private namespace. A supervisor killed outright (SIGKILL, as a test
/// runner kills a test that hangs) cannot clean up after itself, and no
/// later `up` of another device would, so the namespaces would pile up.
/// A directory without `supervisor.pid` may be one an `up` is filling
/// right now, and is left alone.
fn remove_stale_instances(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let alive = |file: &str| read_pid(&dir.join(file)).is_some_and(pid_alive);
        if !dir.join("supervisor.pid").is_file() || alive("supervisor.pid") || alive("kernel.pid") {
            continue;
        }
        // The directory is named safe_name(device), as the namespace is.
        if let Some(name) = entry.file_name().to_str() {
            let _ = ip(&["netns", "del", &format!("dropshim-uml-{name}")]);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn cleanup_network(device: &str) {
    let n = names(device);
    let _ = ip(&["netns", "del", &n.netns]);
    let _ = ip(&["link", "del", &n.guest_if]);
}

/// Where the guest agent also writes the text of its last stats, in the
/// run directory.
pub const GUEST_STATS_FILE: &str = "guest-stats.txt";

/// The instance's network state as its guest sees it (see
/// [`Kind::Stats`]): its sockets with their memory and its TCP and MPTCP
/// counters. If the reply breaks off (a guest short of socket memory
/// resets it), the copy the guest wrote for this request is returned,
/// headed by a line that says so.
pub fn guest_stats(cfg: &DeviceConfig) -> Result<String> {
    let device = &cfg.device.name;
    let not_answered = |what: String| {
        format!("uml device {device:?}: {what} (is it up? `dropshim up --config FILE`)")
    };
    let (reply, bridge) = crate::client::request(device, &Request::new(Kind::Stats))
        .map_err(|e| not_answered(format!("no stats ({e:?})")))?;
    let Some(bridge) = bridge.filter(|_| reply.errno == 0) else {
        return Err(not_answered(format!(
            "no stats: {}",
            io::Error::from_raw_os_error(reply.errno)
        )));
    };
    // SAFETY: the supervisor passed this descriptor to us; we own it now.
    let mut bridge = unsafe { TcpStream::from_raw_fd(bridge) };
    let asked = std::time::SystemTime::now();
    let mut text = String::new();
    let read = bridge
        .set_read_timeout(Some(Duration::from_secs(30)))
        .and_then(|()| bridge.read_to_string(&mut text));
    match read {
        Ok(_) => Ok(text),
        Err(e) => {
            let copy = run_dir(device).join(GUEST_STATS_FILE);
            let fresh = std::fs::metadata(&copy)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= asked - Duration::from_secs(1));
            match std::fs::read_to_string(&copy) {
                Ok(saved) if fresh => Ok(format!(
                    "# the reply broke off ({e}); the guest's copy, {}:\n{saved}",
                    copy.display()
                )),
                _ => Err(format!("uml device {device:?}: reading its stats: {e}")),
            }
        }
    }
}

/// One line about the instance.
pub fn status(cfg: &DeviceConfig) -> String {
    let device = &cfg.device.name;
    let run = run_dir(device);
    if crate::client::ping(device) {
        let sup = read_pid(&run.join("supervisor.pid")).unwrap_or(0);
        let k = read_pid(&run.join("kernel.pid")).unwrap_or(0);
        let ifs: Vec<&str> = cfg.interfaces.iter().map(|i| i.name.as_str()).collect();
        format!(
            "uml device {device:?}: running (supervisor pid {sup}, kernel pid {k}, interfaces {}, control socket {})",
            ifs.join(","),
            crate::control_socket(device).display()
        )
    } else {
        format!("uml device {device:?}: not running (start it with `dropshim up --config FILE`)")
    }
}

// ---------------------------------------------------------------- supervisor

/// `dropshim-uml supervise CONFIG KERNEL`: the device's supervisor.
pub fn supervise(config_path: &Path, kernel: &Path) -> Result<()> {
    let cfg = dropshim_conf::resolve(Some(config_path), Some("uml")).map_err(|e| e.to_string())?;
    let device = cfg.device.name.clone();
    let run = run_dir(&device);
    std::fs::write(
        run.join("supervisor.pid"),
        format!("{}\n", std::process::id()),
    )
    .map_err(io_err("pid file"))?;
    std::fs::copy(config_path, run.join(GUEST_DEVICE_FILE)).map_err(io_err(format!(
        "cannot copy {} to the run directory",
        config_path.display()
    )))?;
    let n = names(&device);
    cleanup_network(&device);
    // Block the stop signals in every thread; one thread waits for them.
    // SAFETY: sigset manipulation on a local set, then the process mask.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let result = boot_and_serve(&cfg, kernel, &run, &n, set);
    cleanup_network(&device);
    let _ = std::fs::remove_file(run.join("ctl"));
    result
}

fn boot_and_serve(
    cfg: &DeviceConfig,
    kernel: &Path,
    run: &Path,
    n: &Names,
    set: libc::sigset_t,
) -> Result<()> {
    ip(&["netns", "add", &n.netns])?;
    ip(&[
        "link",
        "add",
        &n.guest_if,
        "type",
        "veth",
        "peer",
        "name",
        &n.host_if,
        "netns",
        &n.netns,
    ])?;
    // The guest's end carries no host address: the raw socket sees every frame.
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", n.guest_if),
        "1",
    );
    ip(&["link", "set", &n.guest_if, "up"])?;
    let host_addr = format!("{}/30", Ipv4Addr::from(crate::HOST_BRIDGE_ADDR));
    ip(&["-n", &n.netns, "addr", "add", &host_addr, "dev", &n.host_if])?;
    ip(&["-n", &n.netns, "link", "set", &n.host_if, "up"])?;
    ip(&["-n", &n.netns, "link", "set", "lo", "up"])?;
    for iface in &cfg.interfaces {
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", iface.name),
            "1",
        );
        ip(&["link", "set", &iface.name, "up"])?;
    }

    // The guest applies this snapshot, at boot and again when a device is
    // reopened: an edit of the file while the instance runs changes nothing.
    let snapshot = run.join(GUEST_DEVICE_FILE);
    let text: String = guest_commands(cfg, &snapshot)
        .iter()
        .map(|c| c.join("\t") + "\n")
        .collect();
    std::fs::write(run.join("guest.cmds"), text).map_err(io_err("guest.cmds"))?;
    std::fs::write(run.join(RX_FILTER_FILE), rx_filter()).map_err(io_err(RX_FILTER_FILE))?;
    let agent = std::env::current_exe().map_err(io_err("current exe"))?;
    let console = std::fs::File::create(run.join("console.log")).map_err(io_err("console.log"))?;
    let cpu = instance_cpu(&cfg.device.name)?.map(|c| {
        // SAFETY: cpu_set_t is plain data; all-zero is the empty set, and
        // `c` is below CPU_SETSIZE (it came from CPU_ISSET's range).
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(c, &mut set);
            set
        }
    });
    let mut cmd = Command::new(kernel);
    cmd.args(kernel_args(cfg, &agent, run))
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(Stdio::null());
    // SAFETY: async-signal-safe calls between fork and exec: its own
    // process group (so `down` can kill the whole instance), death with
    // the supervisor, the default signal mask, and the CPU (inherited by
    // every process the kernel starts; failure leaves it unpinned).
    unsafe {
        cmd.pre_exec(move || {
            libc::setpgid(0, 0);
            if let Some(set) = &cpu {
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set);
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(io_err(format!(
        "cannot start the UML kernel {}",
        kernel.display()
    )))?;
    let kpid = child.id() as i32;
    std::fs::write(run.join("kernel.pid"), format!("{kpid}\n")).map_err(io_err("kernel.pid"))?;

    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        if run.join("ready").exists() {
            break;
        }
        if let Ok(err) = std::fs::read_to_string(run.join("agent-error")) {
            let _ = child.kill();
            return Err(format!("the guest agent failed: {}", err.trim()));
        }
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!(
                "the UML kernel exited ({st}) while booting; see {}",
                run.join("console.log").display()
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(format!(
                "the guest agent was not ready within 45 s; see {}",
                run.join("console.log").display()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    // Link changes of the device's interfaces, watched from their own
    // namespace (the socket stays there after the setns below).
    let links = LinkWatcher::open(cfg)?;

    // From here on, this process lives in the private namespace: bridge
    // sockets are created there, out of reach of the host's other users.
    let nsf = std::fs::File::open(format!("/run/netns/{}", n.netns))
        .map_err(io_err("open private netns"))?;
    // SAFETY: setns on a namespace descriptor we hold; still one thread.
    if unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
        let _ = child.kill();
        return Err(format!(
            "cannot enter the private namespace: {}",
            io::Error::last_os_error()
        ));
    }

    let ctl_path = run.join("ctl");
    let lfd = sys::listen_unix(&ctl_path).map_err(io_err("control socket"))?;
    std::fs::set_permissions(&ctl_path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("chmod ctl"))?;

    // Stop signal: kill the instance; the waiter below then cleans up.
    std::thread::spawn(move || loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: sigwait on the blocked set, writing one integer.
        if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
            // SAFETY: the kernel leads its own process group.
            unsafe { libc::kill(-kpid, libc::SIGKILL) };
        }
    });
    std::thread::spawn(move || loop {
        match sys::accept(lfd) {
            Ok(fd) => {
                std::thread::spawn(move || serve_client(fd));
            }
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    });
    std::thread::spawn(move || links.run());
    println!(
        "uml instance of {:?} ready (kernel pid {kpid})",
        cfg.device.name
    );
    let status = child.wait().map_err(io_err("wait for the kernel"))?;
    // The instance is gone: nobody may keep talking to it. Abort every
    // bridge now so blocked calls in programs fail at once.
    let _ = std::fs::remove_file(&ctl_path);
    let _ = Command::new("ss")
        .args([
            "-K",
            "dst",
            &Ipv4Addr::from(crate::GUEST_BRIDGE_ADDR).to_string(),
        ])
        .stdout(Stdio::null())
        .status();
    // SAFETY: kill what is left of the instance's process group.
    unsafe { libc::kill(-kpid, libc::SIGKILL) };
    println!("uml kernel exited ({status})");
    Ok(())
}

/// Brings an instance's interface back after its host interface went
/// down and up again (either end of a veth: admin down here, or the peer
/// down, which drops the carrier here).
///
/// While the host interface is down, the vector driver's raw socket fails
/// sends and receives. The kernel's patches 0004 and 0005 make ENOBUFS
/// and ENETDOWN drop frames, as on a dead wire; any other error still
/// makes the driver mark its transport as failed for good: every later
/// transmit is refused and the device's descriptors are deactivated, so
/// the link stays dead when the host interface returns. Only closing and
/// reopening the guest device clears that, so on each down -> running
/// transition the agent bounces the device and restores its
/// configuration (IPv6 addresses and the routes the bounce removed).
struct LinkWatcher {
    watch: crate::linkwatch::LinkWatch,
    /// Host interface name and index, in `vec<i>` order.
    ifaces: Vec<(String, i32)>,
    running: Vec<bool>,
}

impl LinkWatcher {
    fn open(cfg: &DeviceConfig) -> Result<LinkWatcher> {
        let watch = crate::linkwatch::LinkWatch::open()
            .map_err(io_err("cannot watch link changes (rtnetlink)"))?;
        let mut ifaces = Vec::new();
        let mut running = Vec::new();
        for iface in &cfg.interfaces {
            let index = crate::linkwatch::ifindex(&iface.name)
                .map_err(io_err(format!("interface {}", iface.name)))?;
            ifaces.push((iface.name.clone(), index));
            running.push(crate::linkwatch::is_running(&iface.name).unwrap_or(true));
        }
        Ok(LinkWatcher {
            watch,
            ifaces,
            running,
        })
    }

    fn run(mut self) {
        loop {
            match self.watch.next() {
                Ok(events) => {
                    for ev in events {
                        let Some(i) = self.ifaces.iter().position(|(_, x)| *x == ev.ifindex) else {
                            continue;
                        };
                        if ev.running && !self.running[i] {
                            self.reset(i);
                        }
                        self.running[i] = ev.running;
                    }
                }
                // Messages were lost: resync from the interfaces' state and
                // reset only those that are back after being seen down.
                // Bouncing a healthy device would stall the subflows that
                // carry the traffic (a flap hidden entirely in the lost
                // messages is missed: rare, and the next one is seen).
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    for i in 0..self.ifaces.len() {
                        let now = crate::linkwatch::is_running(&self.ifaces[i].0).unwrap_or(true);
                        if now && !self.running[i] {
                            self.reset(i);
                        }
                        self.running[i] = now;
                    }
                }
                Err(e) => {
                    eprintln!("link watch ended: {e}; interfaces that flap now stay down until `dropshim down` and `up`");
                    return;
                }
            }
        }
    }

    fn reset(&self, i: usize) {
        let mut req = Request::new(Kind::Reset);
        req.id = i as u64;
        let name = &self.ifaces[i].0;
        match ask_agent(&req) {
            Ok((_, r)) if r.errno == 0 => println!("{name} is back up: guest vec{i} reopened"),
            Ok((_, r)) => eprintln!(
                "{name} is back up but the guest could not reopen vec{i}: {}",
                io::Error::from_raw_os_error(r.errno)
            ),
            Err(e) => eprintln!("{name} is back up but the agent did not answer: {e}"),
        }
    }
}

/// A TCP connection to the agent across the private link, congestion
/// control cubic.
///
/// When the kernel dies, the supervisor aborts every bridge at once
/// (SOCK_DESTROY through `ss -K`); when the supervisor dies too, the
/// shim's watch connection hangs up and the shim aborts them. Keepalive
/// is only the last resort for an idle bridge (about 15 s), lenient on
/// purpose: a guest saturated by a transfer drops frames on the private
/// link, and an idle control connection (iperf3's) whose probes were
/// lost must not be reset under the program. No TCP_USER_TIMEOUT: Linux
/// applies it to zero-window probing too, so a bridge whose guest end
/// waits on a peer that stopped reading (the guest socket full, the
/// agent not reading the bridge) would fail with ETIMEDOUT where a
/// kernel socket waits as long as the peer likes.
fn open_bridge() -> io::Result<TcpStream> {
    let addr = SocketAddr::new(
        IpAddr::V4(Ipv4Addr::from(crate::GUEST_BRIDGE_ADDR)),
        crate::BRIDGE_PORT,
    );
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_nodelay(true)?;
    let fd = s.as_raw_fd();
    // Cubic, as the guest and the testbed run, whatever the host's
    // default is: the private link drops frames while the guest is busy,
    // and BBR took such drops for a slow path once before (a testbed
    // subflow paced at 14 kbit/s), which on a bridge would starve the
    // connection behind it. A kernel without cubic keeps its default.
    let _ = dropshim_abi::sock::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_CONGESTION, b"cubic");
    for (level, name, v) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 5),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 2),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 5),
    ] {
        dropshim_abi::sock::setsockopt_int(fd, level, name, v)?;
    }
    Ok(s)
}

fn ask_agent(req: &Request) -> io::Result<(TcpStream, Reply)> {
    ask_agent_for(req, None)
}

/// Asks the agent; if `client` (the program's control connection) hangs
/// up before the agent answers, gives up and closes the bridge, which
/// makes the agent abandon the guest connect: a program that closed a
/// socket whose non-blocking connect was still in progress leaves nothing
/// behind.
fn ask_agent_for(req: &Request, client: Option<libc::c_int>) -> io::Result<(TcpStream, Reply)> {
    let mut b = open_bridge()?;
    b.write_all(&req.encode())?;
    if let Some(client) = client {
        let mut fds = [
            libc::pollfd {
                fd: b.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: client,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            sys::poll(&mut fds, -1)?;
            if fds[0].revents != 0 {
                break;
            }
            if fds[1].revents != 0 {
                return Err(io::Error::from_raw_os_error(libc::ECANCELED));
            }
        }
    }
    let mut buf = [0u8; REPLY_LEN];
    b.read_exact(&mut buf)?;
    let reply = Reply::decode(&buf)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad reply"))?;
    Ok((b, reply))
}

fn serve_client(fd: libc::c_int) {
    // SAFETY: accept returned this descriptor; we own it from now on.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut buf = vec![0u8; MAX_REQUEST + 4];
    let req = match sys::recv_fd(fd, &mut buf, 0) {
        Ok((n, extra)) => {
            if let Some(e) = extra {
                sys::close(e);
            }
            if n < 4 {
                return;
            }
            match Request::decode(&buf[4..n]) {
                Some(r) => r,
                None => return,
            }
        }
        Err(_) => return,
    };
    let answer = |reply: Reply, pass: Option<libc::c_int>| {
        let _ = sys::send_fd(owned.as_raw_fd(), &reply.encode(), pass);
    };
    let errno = |e: &io::Error| e.raw_os_error().unwrap_or(libc::ECONNABORTED);
    match req.kind {
        Kind::Ping => answer(Reply::error(0), None),
        Kind::Watch => {
            answer(Reply::error(0), None);
            // Held until the program closes it (or this process ends,
            // which is what the program is watching for).
            let mut fds = [libc::pollfd {
                fd: owned.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            let _ = sys::poll(&mut fds, -1);
        }
        // A stats bridge carries the guest's text, as a connect's carries
        // the program's bytes.
        Kind::Connect | Kind::Stats => match ask_agent_for(&req, Some(owned.as_raw_fd())) {
            Ok((bridge, reply)) if reply.errno == 0 => answer(reply, Some(bridge.as_raw_fd())),
            Ok((_, reply)) => answer(reply, None),
            Err(e) => answer(Reply::error(bridge_errno(&e, errno(&e))), None),
        },
        Kind::Listen => match ask_agent(&req) {
            Ok((bridge, reply)) if reply.errno == 0 => {
                match dropshim_abi::sock::unix_pair(libc::SOCK_SEQPACKET) {
                    Ok([mine, theirs]) => {
                        answer(reply, Some(theirs));
                        sys::close(theirs);
                        // SAFETY: socketpair returned `mine`; owned here.
                        let mine = unsafe { OwnedFd::from_raw_fd(mine) };
                        drop(owned);
                        listener_loop(bridge, mine);
                    }
                    Err(e) => answer(Reply::error(errno(&e)), None),
                }
            }
            Ok((_, reply)) => answer(reply, None),
            Err(e) => answer(Reply::error(bridge_errno(&e, errno(&e))), None),
        },
        Kind::Attach | Kind::Reset => answer(Reply::error(libc::EINVAL), None),
    }
}

/// A broken private link means the instance is gone or going.
fn bridge_errno(e: &io::Error, default: i32) -> i32 {
    match e.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::TimedOut => libc::ENETDOWN,
        _ => default,
    }
}

/// Delivers each connection the guest accepted to the program's listener
/// descriptor, as a fresh bridge; ends when the program closes it.
fn listener_loop(mut bridge: TcpStream, mine: OwnedFd) {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: bridge.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: mine.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a live array of two pollfd.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            continue;
        }
        if fds[1].revents != 0 {
            return; // the program closed its listener (or sent nonsense)
        }
        if fds[0].revents == 0 {
            continue;
        }
        let mut buf = [0u8; NOTICE_LEN];
        if bridge.read_exact(&mut buf).is_err() {
            return; // instance gone: the program's accept() sees EOF
        }
        let Some(notice) = Notice::decode(&buf) else {
            return;
        };
        let mut req = Request::new(Kind::Attach);
        req.id = notice.id;
        match ask_agent(&req) {
            Ok((conn, reply)) if reply.errno == 0 => {
                if sys::send_fd(mine.as_raw_fd(), &reply.encode(), Some(conn.as_raw_fd())).is_err()
                {
                    return;
                }
            }
            _ => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a run directory whose supervisor and kernel are both gone is
    /// removed; a live instance's, and one an `up` is still filling, stay.
    #[test]
    fn stale_run_directories_go_and_live_ones_stay() {
        let base = std::env::temp_dir().join(format!("dropshim-uml-stale-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let mut child = Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let me = std::process::id();
        let runs = [
            ("dead", Some(dead), Some(dead)),
            ("live-supervisor", Some(me), Some(dead)),
            ("live-kernel", Some(dead), Some(me)),
            ("starting", None, None),
        ];
        for (name, supervisor, kernel) in runs {
            let dir = base.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            for (file, pid) in [("supervisor.pid", supervisor), ("kernel.pid", kernel)] {
                if let Some(pid) = pid {
                    std::fs::write(dir.join(file), format!("{pid}\n")).unwrap();
                }
            }
        }
        remove_stale_instances(&base);
        let left: Vec<bool> = runs.iter().map(|(n, ..)| base.join(n).exists()).collect();
        let _ = std::fs::remove_dir_all(&base);
        assert_eq!(left, [false, true, true, true]);
    }

    #[test]
    fn every_kernel_patch_in_the_tree_is_carried_and_handed_to_the_script() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernel/patches");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".patch"))
            .collect();
        on_disk.sort();
        let carried: Vec<String> = KERNEL_PATCHES.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(
            carried, on_disk,
            "KERNEL_PATCHES must list kernel/patches/*.patch in order"
        );
        let written = patches_dir().unwrap();
        for (name, text) in KERNEL_PATCHES {
            assert_eq!(&std::fs::read_to_string(written.join(name)).unwrap(), text);
            assert_eq!(&std::fs::read_to_string(dir.join(name)).unwrap(), text);
        }
        std::fs::remove_dir_all(written).unwrap();
    }

    #[test]
    fn every_scheduler_source_is_carried_and_handed_to_the_script() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernel/mptcp-schedulers");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                n == "apply.sh" || n.ends_with(".patch") || n.ends_with(".c") || n.ends_with(".h")
            })
            .collect();
        on_disk.sort();
        let mut carried: Vec<String> = MPTCP_SCHEDULERS
            .iter()
            .map(|(n, _)| n.to_string())
            .collect();
        carried.sort();
        assert_eq!(
            carried, on_disk,
            "MPTCP_SCHEDULERS must list the files build-kernel.sh hashes and apply.sh uses"
        );
        let written = patches_dir().unwrap();
        for (name, text) in MPTCP_SCHEDULERS {
            let got = std::fs::read_to_string(written.join(SCHEDULERS_SUBDIR).join(name)).unwrap();
            assert_eq!(&got, text);
            assert_eq!(&std::fs::read_to_string(dir.join(name)).unwrap(), text);
        }
        std::fs::remove_dir_all(written).unwrap();
    }

    fn device() -> DeviceConfig {
        let text = r#"
[device]
name = "t1"
backend = "uml"

[[interfaces]]
name = "eth1"
addresses = ["198.18.1.1/24", "2001:2:0:1::1/64"]
gateway = "198.18.1.2"

[[interfaces]]
name = "eth2"
addresses = ["198.18.2.1/24"]
endpoint = ["subflow", "backup"]

[mptcp]
limits = { subflows = 2, add_addr_accepted = 1 }
path_manager = "kernel"

[uml]
memory_mib = 128
cmdline = ["quiet"]
"#;
        dropshim_conf::parse(text, "t1.toml").unwrap()
    }

    #[test]
    fn guest_commands_configure_the_device_then_the_private_link() {
        let lines: Vec<String> = guest_commands(&device(), Path::new("/etc/dropshim/t1.toml"))
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert_eq!(
            lines,
            [
                "configure /etc/dropshim/t1.toml",
                "ip link set vec2 up",
                "ip addr add 198.19.255.254/30 dev vec2",
            ]
        );
    }

    #[test]
    fn rx_filter_drops_only_outgoing_frames() {
        let f = rx_filter();
        assert_eq!(f.len(), 4 * 8, "four sock_filter instructions");
        let insn = |i: usize| {
            let b = &f[i * 8..i * 8 + 8];
            (
                u16::from_ne_bytes([b[0], b[1]]),
                b[2],
                b[3],
                u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
            )
        };
        // ld pkttype; jeq #PACKET_OUTGOING -> ret 0, else -> ret whole frame.
        assert_eq!(insn(0), (0x20, 0, 0, 0xffff_f004));
        assert_eq!(insn(1), (0x15, 0, 1, libc::PACKET_OUTGOING as u32));
        assert_eq!(insn(2), (0x06, 0, 0, 0));
        assert_eq!(insn(3), (0x06, 0, 0, u32::MAX));
    }

    #[test]
    fn instance_cpu_is_an_allowed_one_or_the_users_choice() {
        let allowed = [0, 2, 3];
        let picked = pick_cpu("", &allowed, "gw1").unwrap();
        assert!(picked.is_some_and(|c| allowed.contains(&c)));
        assert_eq!(
            pick_cpu("", &allowed, "gw1").unwrap(),
            picked,
            "stable per device"
        );
        let spread: std::collections::HashSet<_> = (0..32)
            .map(|i| pick_cpu("", &allowed, &format!("dev{i}")).unwrap())
            .collect();
        assert!(spread.len() > 1, "devices spread over CPUs");
        assert_eq!(pick_cpu("any", &allowed, "gw1").unwrap(), None);
        assert_eq!(pick_cpu("3", &allowed, "gw1").unwrap(), Some(3));
        assert_eq!(
            pick_cpu("", &[5], "gw1").unwrap(),
            None,
            "one CPU: no pinning"
        );
        let e = pick_cpu("1", &allowed, "gw1").unwrap_err();
        assert!(
            e.contains("DROPSHIM_UML_CPU=\"1\"") && e.contains("(0, 2, 3)"),
            "{e}"
        );
        assert!(pick_cpu("x", &allowed, "gw1").is_err());
    }

    #[test]
    fn kernel_args_hand_over_interfaces_in_order() {
        let cfg = device();
        let args = kernel_args(&cfg, Path::new("/x/dropshim-uml"), Path::new("/run/d/t1"));
        let n = names("t1");
        assert!(args.contains(&"mem=128M".to_string()));
        assert!(args.contains(&"init=/x/dropshim-uml".to_string()));
        let f = ",bpffile=/run/d/t1/rx-filter.bpf";
        assert!(args.contains(&format!("vec0:transport=raw,ifname=eth1,gro=1{f}")));
        assert!(args.contains(&format!("vec1:transport=raw,ifname=eth2,gro=1{f}")));
        assert!(args.contains(&format!(
            "vec2:transport=raw,ifname={},gro=1{f}",
            n.guest_if
        )));
        assert!(args.contains(&"quiet".to_string()));
        assert!(args
            .last()
            .is_some_and(|a| a == "DROPSHIM_UML_GUEST=/run/d/t1/guest.cmds"));
        assert!(n.guest_if.len() <= 15 && n.host_if.len() <= 15);
        assert_ne!(names("t1").guest_if, names("t2").guest_if);
    }
}
