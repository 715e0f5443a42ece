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
fn init_script(run: &Path, k: usize, links: &[EmuLink]) -> String {
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
            }
        }
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
pub(crate) fn start(id: &str, netns: &str, links: &[EmuLink]) -> Result<Vec<Child>, Error> {
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
        match start_instance(&kernel, &run, netns, k, chunk) {
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

fn write_file(run: &Path, name: &str, data: &[u8]) -> Result<(), Error> {
    fs::write(run.join(name), data)
        .map_err(|e| emu_err(format!("writing {}: {e}", run.join(name).display())))
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
) -> Result<Child, Error> {
    let init = run.join(format!("init-{k}"));
    write_file(
        run,
        &format!("init-{k}"),
        init_script(run, k, links).as_bytes(),
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
        let s = init_script(Path::new("/run/x.emu"), 0, &links);
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
    }
}
