//! Delay, jitter and loss for links: the host kernel's netem where it has
//! one, else the link emulator.
//!
//! The link emulator is User Mode Linux (the kernel the uml backend
//! builds, which carries `NET_SCH_NETEM` and `BRIDGE`) in the testbed's
//! own namespace `ds-<id>-emu`: one instance per [`LINKS_PER_INSTANCE`]
//! links, because a UML kernel takes its interfaces on a command line of
//! at most 4,096 bytes. Each emulated link is two
//! veth pairs, node a <-> `l<N>a` and `l<N>b` <-> node b. Each emulator end
//! sits in a host bridge `p<N>a` / `p<N>b` together with a spare veth
//! pair's end that always has a carrier,
//! and the guest owns the bridge (vector raw transport). Inside, a bridge
//! per link joins its two ports and netem sits on each port's egress: port
//! `p<N>a` sends towards node a, so it carries the b->a values.
//!
//! Why the host bridge: when a node's end goes down, its veth peer loses
//! the carrier, the host stops that device's queue, and the guest's vector
//! driver, unable to send, trips its transmit watchdog and then a BUG in
//! its queue accounting (a kernel panic); closing and reopening the guest
//! device under traffic ends the same way. The spare port keeps the
//! bridge's carrier up, so the guest's sends always succeed (frames for a
//! dead half are dropped by the host bridge, as a cable pulled out would).
//!
//! Each guest's init is a shell script written here and run from the
//! host's root through hostfs; it reports through files in the run
//! directory (`/run/dropshim/testbeds/<id>.emu/`): `ready-K` once every
//! link of instance K is set up, `error-K` if a command failed. A link taken down and up needs nothing
//! from the guest: its raw sockets sit on the host bridges, which never
//! lose their carrier.
//!
//! Loss and jitter patterns: netem draws them from a per-qdisc generator
//! that Linux 6.12 seeds at creation from `get_random_u64()`. The UML
//! kernel seeds its own random pool from the host's getrandom at boot
//! (`add_bootloader_randomness` in `arch/um/kernel/um_arch.c`; its log
//! says `crng init done` at 0.000000), so that seed differs per boot, but
//! nobody could read it back and repeat a run. Each testbed therefore
//! draws a seed from the host ([`run_seed`]; `Options::netem_seed` or
//! [`ENV_SEED`] repeat a run), derives one per netem qdisc ([`port_seed`])
//! and sets it through rtnetlink (`netem_seed.py`: the tc of Debian
//! bookworm has no `seed` keyword). The seed is written to `netem-seed`
//! in the run directory. With the same seed, each qdisc makes the same
//! decisions for the same sequence of frames it is given; frames the
//! nodes send on their own (neighbour discovery, ARP) are part of that
//! sequence.
//!
//! CPU: [`cpu`] sums the user and system time of each instance's host
//! processes (the kernel and its guest processes' hosts, all carrying
//! the instance's `umid=` and `uml_dir=` on their command line).

use crate::exec::tool;
use crate::link::{DirParams, LinkParams};
use crate::{sys, Error, STATE_DIR};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Forces the method: `host` (host netem) or `uml` (the emulator).
pub const ENV_NETEM: &str = "DROPSHIM_TESTBED_NETEM";
/// A seed (decimal or 0x hex) for every netem qdisc of the emulator,
/// to repeat a run's loss and jitter pattern; a fresh one from the host's
/// random source otherwise.
pub const ENV_SEED: &str = "DROPSHIM_TESTBED_NETEM_SEED";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Links per emulator instance: two `vecN:` arguments each (about 50
/// bytes with the receive filter named relative to the run directory),
/// well inside the UML kernel's 4,096-byte command line.
pub const LINKS_PER_INSTANCE: usize = 24;
/// The guest's memory: netem queues hold up to a link's rate x delay.
const GUEST_MEM_MIB: u32 = 256;

fn emu_err(e: impl std::fmt::Display) -> Error {
    Error::Emulator(e.to_string())
}

/// Whether the host kernel can run netem (asked once per process): a
/// netem qdisc on a dummy interface in a throwaway namespace.
pub(crate) fn host_has_netem() -> bool {
    static PROBE: OnceLock<bool> = OnceLock::new();
    match std::env::var(ENV_NETEM).as_deref() {
        Ok("host") => return true,
        Ok("uml") => return false,
        _ => {}
    }
    *PROBE.get_or_init(|| {
        let ns = format!("dsprobe-{}", std::process::id());
        if tool("ip", &["netns", "add", &ns]).is_err() {
            return false;
        }
        let ok = tool("ip", &["-n", &ns, "link", "add", "p0", "type", "dummy"]).is_ok()
            && tool(
                "tc",
                &[
                    "-n", &ns, "qdisc", "add", "dev", "p0", "root", "netem", "delay", "1ms",
                ],
            )
            .is_ok();
        let _ = tool("ip", &["netns", "del", &ns]);
        ok
    })
}

/// The seed of a testbed's emulator when its options give none:
/// [`ENV_SEED`] when set, else 8 bytes from the host's random source.
pub(crate) fn run_seed() -> Result<u64, Error> {
    if let Some(v) = std::env::var_os(ENV_SEED).filter(|v| !v.is_empty()) {
        let text = v.to_string_lossy();
        let t = text.trim();
        let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => t.parse::<u64>(),
        };
        return parsed.map_err(|_| {
            emu_err(format!(
                "{ENV_SEED}={text:?} is not a seed: give a number from 0 to 2^64-1 (decimal or 0x hex), as `dropshim testbed up` prints it, or unset it for a fresh seed"
            ))
        });
    }
    let mut buf = [0u8; 8];
    // SAFETY: buf is valid for writes of buf.len() bytes for the whole
    // call; getrandom writes at most that many.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        return Err(emu_err(format!(
            "no seed from the host's random source: {}",
            io::Error::last_os_error()
        )));
    }
    Ok(u64::from_ne_bytes(buf))
}

/// The seed of the netem qdisc on the port of link `link` towards side
/// `side` (splitmix64 of the run seed and the port), so that the ports
/// draw independent patterns from one run seed.
pub fn port_seed(run_seed: u64, link: u32, side: usize) -> u64 {
    let port = (u64::from(link) << 1) | (side as u64 & 1);
    let mut z = run_seed ^ port.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The emulator's run directory of testbed `id`.
pub(crate) fn run_dir(id: &str) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{id}.emu"))
}

/// Remove the emulator's run directory (the instance itself dies with
/// its namespace's processes).
pub(crate) fn remove_files(id: &str) -> io::Result<()> {
    match fs::remove_dir_all(run_dir(id)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The emulator-side veth end of link `link` towards side `side`.
pub(crate) fn port_ifname(link: u32, side: usize) -> String {
    format!("l{link}{}", side_letter(side))
}

/// The host bridge the guest owns for that port.
fn bridge_ifname(link: u32, side: usize) -> String {
    format!("p{link}{}", side_letter(side))
}

fn side_letter(side: usize) -> char {
    if side == 0 {
        'a'
    } else {
        'b'
    }
}

/// In the emulator's namespace `ns`: put the veth end of link `link`
/// towards `side` into a host bridge with a spare veth end (see the
/// module documentation), promiscuous so that every frame from the node
/// reaches the guest's raw socket.
pub(crate) fn plumb_port(ns: &str, link: u32, side: usize) -> Result<(), Error> {
    let (veth, br) = (port_ifname(link, side), bridge_ifname(link, side));
    let dummy = format!("d{link}{}", side_letter(side));
    let ip = |args: &[&str]| -> Result<(), Error> {
        let mut all = vec!["-n", ns];
        all.extend_from_slice(args);
        tool("ip", &all)
    };
    ip(&[
        "link",
        "add",
        &br,
        "type",
        "bridge",
        "stp_state",
        "0",
        "mcast_snooping",
        "0",
    ])?;
    // A veth pair whose far end stays up (the host has no dummy driver
    // everywhere): what reaches it is dropped by this namespace's stack,
    // which has no addresses.
    let far = format!("e{link}{}", side_letter(side));
    ip(&["link", "add", &dummy, "type", "veth", "peer", "name", &far])?;
    ip(&["link", "set", &far, "up"])?;
    ip(&["link", "set", &veth, "master", &br])?;
    ip(&["link", "set", &dummy, "master", &br])?;
    for dev in [&veth, &dummy, &br] {
        ip(&["link", "set", dev, "up"])?;
    }
    ip(&["link", "set", &br, "promisc", "on"])
}

/// A node's end of an emulated link sends whole frames, segmented and
/// checksummed by the node's own stack (no TSO/GSO, no checksum offload):
/// the guest's ports read frames of at most the MTU, as a wire carries
/// them, so a 64 KiB offloaded segment would be cut short there.
pub(crate) fn whole_frames(ns: &str, ifname: &str) -> Result<(), Error> {
    tool(
        "ip",
        &[
            "netns", "exec", ns, "ethtool", "-K", ifname, "rx", "off", "tx", "off", "sg", "off",
            "tso", "off", "gso", "off",
        ],
    )
}

/// One emulated link as the emulator sees it.
pub(crate) struct EmuLink {
    pub number: u32,
    pub params: LinkParams,
}

/// The init script of emulator instance `k`.
fn init_script(run: &Path, k: usize, links: &[EmuLink], seed: u64) -> String {
    let run = run.display();
    let mut s = format!(
        r#"#!/bin/sh
# Init of a dropshim testbed's link emulator (generated; runs inside the
# UML guest with the host's root through hostfs).
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
RUN='{run}'
fail() {{
    echo "$*" > "$RUN/error-{k}"
    exec sleep infinity
}}
run() {{
    "$@" 2>> "$RUN/guest-{k}.log" || fail "inside the emulator, \`$*\` failed: $(tail -n 1 "$RUN/guest-{k}.log")"
}}
run mount -t proc proc /proc
run mount -t sysfs sysfs /sys
# The guest only forwards frames: none of its own on the links.
echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6
echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6
run ip link set lo up
"#
    );
    let mut seeds = Vec::new();
    for (i, l) in links.iter().enumerate() {
        let br = format!("br{}", l.number);
        s.push_str(&format!(
            "run ip link add {br} type bridge stp_state 0 mcast_snooping 0\nrun ip link set {br} up\n"
        ));
        for side in 0..2 {
            let dev = format!("vec{}", 2 * i + side);
            // The port towards side a carries what side b sends, and back.
            let dir: &DirParams = l.params.from_side(1 - side);
            s.push_str(&format!(
                "run ip link set {dev} master {br}\nrun ip link set {dev} up\n"
            ));
            if dir.needs_netem() {
                s.push_str(&format!(
                    "run tc qdisc replace dev {dev} root netem {}\n",
                    dir.netem_args().join(" ")
                ));
                seeds.push(format!("{dev}={}", port_seed(seed, l.number, side)));
            }
        }
    }
    if !seeds.is_empty() {
        s.push_str(&format!(
            "run python3 \"$RUN/{SEED_SCRIPT}\" {}\n",
            seeds.join(" ")
        ));
    }
    s.push_str(&format!(
        "echo ready > \"$RUN/ready-{k}\"\nexec sleep infinity\n"
    ));
    s
}

/// Build the emulator of testbed `id` inside namespace `netns` (which
/// exists and holds the `l<N>a`/`l<N>b` ends of every link in `links`)
/// and return once every instance has set its links up. The instances
/// lead their own sessions, so they outlive the calling process when the
/// testbed is kept; they die with their namespace's processes. On an
/// error, the instances already started are stopped.
/// Every netem qdisc gets its seed from `seed` (see [`port_seed`]).
pub(crate) fn start(
    id: &str,
    netns: &str,
    links: &[EmuLink],
    seed: u64,
) -> Result<Vec<Child>, Error> {
    if !["/usr/bin/python3", "/bin/python3"]
        .iter()
        .any(|p| Path::new(p).exists())
    {
        return Err(emu_err(
            "python3 is missing: the emulator sets its netem seeds with it (apt-get install python3)",
        ));
    }
    let kernel = match std::env::var_os(dropshim_backend_uml::ENV_KERNEL).filter(|v| !v.is_empty())
    {
        Some(k) => PathBuf::from(k),
        None => dropshim_backend_uml::host::build_kernel().map_err(|e| {
            emu_err(format!(
                "no UML kernel to run the link emulator ({e}); the host kernel has no netem either"
            ))
        })?,
    };
    let run = run_dir(id);
    let _ = fs::remove_dir_all(&run);
    fs::create_dir_all(&run).map_err(|e| emu_err(format!("creating {}: {e}", run.display())))?;
    write_file(&run, FILTER_FILE, &dropshim_backend_uml::host::rx_filter())?;
    write_file(&run, SEED_SCRIPT, NETEM_SEED_PY.as_bytes())?;
    write_file(&run, SEED_FILE, format!("{seed}\n").as_bytes())?;
    if run
        .to_str()
        .is_none_or(|s| s.contains([',', ' ', '\t', '\n']))
    {
        return Err(emu_err(format!(
            "{} cannot go on a kernel command line (comma or space in it)",
            run.display()
        )));
    }
    let mut children = Vec::new();
    for (k, chunk) in links.chunks(LINKS_PER_INSTANCE).enumerate() {
        match start_instance(&kernel, &run, netns, k, chunk, seed) {
            Ok(child) => children.push(child),
            Err(e) => {
                stop(&mut children);
                return Err(e);
            }
        }
    }
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let pending: Vec<usize> = (0..children.len())
            .filter(|k| !run.join(format!("ready-{k}")).exists())
            .collect();
        if pending.is_empty() {
            return Ok(children);
        }
        let failure = pending
            .iter()
            .find_map(|&k| boot_failure(&run, k, &mut children[k], deadline));
        if let Some(msg) = failure {
            stop(&mut children);
            return Err(emu_err(msg));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Why instance `k`, not ready yet, will not be: its init reported an
/// error, its kernel exited, or the deadline passed.
fn boot_failure(run: &Path, k: usize, child: &mut Child, deadline: Instant) -> Option<String> {
    let console = run.join(format!("console-{k}.log"));
    if let Ok(err) = fs::read_to_string(run.join(format!("error-{k}"))) {
        Some(err.trim().to_string())
    } else if let Ok(Some(st)) = child.try_wait() {
        Some(format!(
            "the UML kernel exited ({st}) while booting; see {}",
            console.display()
        ))
    } else if Instant::now() > deadline {
        Some(format!(
            "not ready within {} s; see {}",
            READY_TIMEOUT.as_secs(),
            console.display()
        ))
    } else {
        None
    }
}

/// The receive filter every emulator port loads (see
/// `dropshim_backend_uml::host::rx_filter`), named relative to the run
/// directory, the instances' working directory.
const FILTER_FILE: &str = "rx-filter.bpf";
/// The guest's tool that sets netem seeds, in the run directory.
const SEED_SCRIPT: &str = "netem_seed.py";
const NETEM_SEED_PY: &str = include_str!("netem_seed.py");
/// The run seed, in decimal, in the run directory.
const SEED_FILE: &str = "netem-seed";

fn write_file(run: &Path, name: &str, data: &[u8]) -> Result<(), Error> {
    fs::write(run.join(name), data)
        .map_err(|e| emu_err(format!("writing {}: {e}", run.join(name).display())))
}

/// CPU time one emulator instance has used since it started, from
/// /proc/PID/stat of its host processes.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EmulatorCpu {
    /// The instance (0, 1, ...: links 1-24 of the emulator go to 0).
    pub instance: usize,
    /// Host processes found for it.
    pub processes: usize,
    /// User time, seconds (with that of its exited children).
    pub user_s: f64,
    /// System time, seconds (with that of its exited children).
    pub sys_s: f64,
    /// Seconds since its kernel started.
    pub elapsed_s: f64,
}

impl EmulatorCpu {
    /// User + system seconds.
    pub fn cpu_s(&self) -> f64 {
        self.user_s + self.sys_s
    }

    /// Average use over its life, in % of one CPU.
    pub fn pct_of_one_cpu(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            100.0 * self.cpu_s() / self.elapsed_s
        } else {
            0.0
        }
    }
}

/// The CPU use of each running emulator instance of testbed `id`, in
/// instance order (empty when it has none).
pub(crate) fn cpu(id: &str) -> Vec<EmulatorCpu> {
    let dir_arg = format!("uml_dir={}", run_dir(id).display());
    // SAFETY: sysconf has no preconditions.
    let hz = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as f64,
        _ => 100.0,
    };
    let uptime = fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    // Per instance: processes, user and system ticks, earliest start.
    let mut found: std::collections::BTreeMap<usize, (usize, u64, u64, u64)> =
        std::collections::BTreeMap::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    for pid in entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
    {
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        if !args.contains(&dir_arg.as_bytes()) {
            continue;
        }
        let Some(k) = args.iter().find_map(|a| {
            std::str::from_utf8(a)
                .ok()?
                .strip_prefix("umid=emu")?
                .parse::<usize>()
                .ok()
        }) else {
            continue;
        };
        let Some(t) = stat_times(pid) else { continue };
        let e = found.entry(k).or_insert((0, 0, 0, u64::MAX));
        e.0 += 1;
        e.1 += t.user;
        e.2 += t.sys;
        e.3 = e.3.min(t.start);
    }
    found
        .into_iter()
        .map(|(instance, (processes, user, sys, start))| EmulatorCpu {
            instance,
            processes,
            user_s: user as f64 / hz,
            sys_s: sys as f64 / hz,
            elapsed_s: (uptime - start as f64 / hz).max(0.0),
        })
        .collect()
}

struct StatTimes {
    /// utime + cutime, in clock ticks.
    user: u64,
    /// stime + cstime, in clock ticks.
    sys: u64,
    /// Start time, clock ticks after boot.
    start: u64,
}

fn stat_times(pid: u32) -> Option<StatTimes> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: field 3
    // (state) is at index 0.
    let f: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let n = |field: usize| -> Option<u64> { f.get(field - 3)?.parse().ok() };
    Some(StatTimes {
        user: n(14)? + n(16)?,
        sys: n(15)? + n(17)?,
        start: n(22)?,
    })
}

/// Stop (and reap) emulator instances.
pub(crate) fn stop(children: &mut Vec<Child>) {
    for c in children.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
    children.clear();
}

/// Start instance `k` of the emulator, carrying `links`.
fn start_instance(
    kernel: &Path,
    run: &Path,
    netns: &str,
    k: usize,
    links: &[EmuLink],
    seed: u64,
) -> Result<Child, Error> {
    let init = run.join(format!("init-{k}"));
    write_file(
        run,
        &format!("init-{k}"),
        init_script(run, k, links, seed).as_bytes(),
    )?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))
        .map_err(|e| emu_err(format!("chmod {}: {e}", init.display())))?;
    let console = fs::File::create(run.join(format!("console-{k}.log")))
        .map_err(|e| emu_err(format!("creating console-{k}.log: {e}")))?;
    let mut args = vec![
        format!("umid=emu{k}"),
        format!("uml_dir={}", run.display()),
        "rootfstype=hostfs".into(),
        "rootflags=/".into(),
        "rw".into(),
        format!("mem={GUEST_MEM_MIB}M"),
        format!("init={}", init.display()),
        "con=null".into(),
        "con0=null,fd:1".into(),
        "loglevel=4".into(),
    ];
    for (i, l) in links.iter().enumerate() {
        for side in 0..2 {
            args.push(format!(
                "vec{}:transport=raw,ifname={},bpffile={FILTER_FILE}",
                2 * i + side,
                bridge_ifname(l.number, side),
            ));
        }
    }
    let mut cmd = Command::new(kernel);
    cmd.args(&args)
        .current_dir(run)
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(Stdio::null());
    let ns_file = format!("/run/netns/{netns}");
    sys::enter_netns_on_exec(&mut cmd, &ns_file)
        .map_err(|e| emu_err(format!("opening {ns_file}: {e}")))?;
    // SAFETY: setsid is async-signal-safe; the instance gets its own
    // session so a terminal's signals do not reach it (it is stopped by
    // killing its namespace's processes).
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| emu_err(format!("cannot start {}: {e}", kernel.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::Profile;

    #[test]
    fn init_script_bridges_each_link_with_netem_per_direction() {
        let mut params = Profile::Lte.params();
        params.a_to_b.loss_pct = 0.0;
        params.a_to_b.jitter_ms = 0.0;
        let links = [
            EmuLink {
                number: 3,
                params: LinkParams::rate_only(Some(5)),
            },
            EmuLink { number: 7, params },
        ];
        let s = init_script(Path::new("/run/x.emu"), 0, &links, 42);
        assert!(s.contains("run ip link set vec0 master br3\n"), "{s}");
        assert!(!s.contains("dev vec0 root netem"), "{s}");
        // vec2 faces side a of link 7: it carries b->a (the downlink).
        assert!(
            s.contains("dev vec2 root netem limit 20000 delay 25000us 4000us loss random 0.1% rate 10gbit\n"),
            "{s}"
        );
        assert!(
            s.contains("dev vec3 root netem limit 20000 delay 25000us\n"),
            "{s}"
        );
        // Only the ports with netem get a seed, each its own.
        let (a, b) = (port_seed(42, 7, 0), port_seed(42, 7, 1));
        assert_ne!(a, b);
        assert!(
            s.contains(&format!(
                "run python3 \"$RUN/netem_seed.py\" vec2={a} vec3={b}\n"
            )),
            "{s}"
        );
    }

    #[test]
    fn port_seeds_differ_per_port_and_run() {
        let mut all = std::collections::HashSet::new();
        for run in [0, 1, u64::MAX] {
            for link in [1, 2, 300] {
                for side in 0..2 {
                    assert!(all.insert(port_seed(run, link, side)));
                }
            }
        }
    }
}
