//! The guest agent: init of the UML instance.
//!
//! It runs the configuration commands the supervisor wrote (the device
//! file through the device configurator, then the private link), listens on the private
//! link, and for each bridge connection opens the program's socket in the
//! guest (MPTCP or TCP as the host's policy decided); once established,
//! the guest kernel's relay moves their bytes (or, on a kernel without
//! it, the agent does), every connection on one event loop ([`evloop`]).
//! This module owns the guest's start-up and the guest socket helpers.

mod evloop;

use crate::proto::{Reply, Request};
use dropshim_abi::IPPROTO_MPTCP;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Entry point when the kernel runs us as init. Never returns normally:
/// the instance powers off if configuration fails.
pub fn main() -> ! {
    std::env::set_var(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    let cmds = std::env::var_os(crate::ENV_GUEST).map(PathBuf::from);
    let Some(cmds) = cmds else {
        eprintln!(
            "dropshim-uml agent: {} is not set; not started by a dropshim supervisor",
            crate::ENV_GUEST
        );
        power_off();
    };
    let run = cmds.parent().map(Path::to_path_buf).unwrap_or_default();
    match setup(&cmds) {
        Ok(listener) => {
            // The supervisor waits for this file before serving programs.
            if let Err(e) = std::fs::write(run.join("ready"), b"ready\n") {
                eprintln!("dropshim-uml agent: cannot write ready file: {e}");
            }
            if let Err(e) = evloop::serve(listener) {
                eprintln!("dropshim-uml agent: the relay loop failed: {e}");
            }
        }
        Err(e) => {
            eprintln!("dropshim-uml agent: {e}");
            let _ = std::fs::write(run.join("agent-error"), format!("{e}\n"));
        }
    }
    power_off();
}

fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers; as init we may power off.
    unsafe {
        libc::sync();
        libc::reboot(libc::LINUX_REBOOT_CMD_POWER_OFF);
    }
    std::process::exit(1);
}

fn mount(src: &str, target: &str, fstype: &str) {
    let c = |s: &str| std::ffi::CString::new(s).unwrap_or_default();
    let (src, target, fstype) = (c(src), c(target), c(fstype));
    // SAFETY: all three are valid NUL-terminated strings alive for the call.
    unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
}

/// Runs the supervisor's command list, then listens on the private link.
fn setup(cmds: &Path) -> Result<TcpListener, String> {
    mount("proc", "/proc", "proc");
    mount("sysfs", "/sys", "sysfs");
    // SAFETY: socket(2) takes integers only; the probe is closed at once.
    let probe = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, IPPROTO_MPTCP) };
    if probe < 0 {
        return Err(format!(
            "this UML kernel has no MPTCP ({}); Debian's user-mode-linux package is built without CONFIG_MPTCP. \
             Remove `kernel` from [uml] to boot the kernel dropshim builds (backend-uml/build-kernel.sh)",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: closing the probe socket we just opened.
    unsafe { libc::close(probe) };
    let text = std::fs::read_to_string(cmds)
        .map_err(|e| format!("cannot read {}: {e}", cmds.display()))?;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let argv: Vec<&str> = line.split('\t').collect();
        run_command(&argv)?;
    }
    record_mptcp(cmds);
    // dropshim's path manager, when the device file chooses it: once per
    // instance (a device reopen runs `configure` again, not this).
    for line in text.lines() {
        if let ["configure", path] = line.split('\t').collect::<Vec<_>>()[..] {
            if let Some(said) = crate::guest_config::start_path_manager(Path::new(path))? {
                eprintln!("dropshim-uml agent: {said}");
            }
        }
    }
    let addr = SocketAddrV4::new(Ipv4Addr::from(crate::GUEST_BRIDGE_ADDR), crate::BRIDGE_PORT);
    TcpListener::bind(addr).map_err(|e| format!("cannot listen on the private link {addr}: {e}"))
}

/// The name of the file, next to the command list in the run directory,
/// where the guest records its MPTCP packet schedulers once configured:
/// `net.mptcp.available_schedulers = ...` and `net.mptcp.scheduler = ...`.
pub const GUEST_MPTCP_FILE: &str = "guest.mptcp";

/// Writes [`GUEST_MPTCP_FILE`], so the host can see which schedulers the
/// guest kernel offers and which one it runs. Best effort: the instance
/// works without it.
fn record_mptcp(cmds: &Path) {
    let mut text = String::new();
    for key in ["available_schedulers", "scheduler"] {
        let value =
            std::fs::read_to_string(Path::new("/proc/sys/net/mptcp").join(key)).unwrap_or_default();
        text.push_str(&format!("net.mptcp.{key} = {}\n", value.trim()));
    }
    let _ = std::fs::write(cmds.with_file_name(GUEST_MPTCP_FILE), text);
}

fn run_command(argv: &[&str]) -> Result<(), String> {
    match argv {
        // `configure FILE`: the device file, by the device configurator.
        ["configure", path] => crate::guest_config::apply(Path::new(path)).map(drop),
        // `sysctl KEY VALUE`: written directly, the guest has no sysctl(8) need.
        ["sysctl", key, value] => {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            std::fs::write(&path, value).map_err(|e| format!("cannot set {key}={value}: {e}"))
        }
        [prog, args @ ..] => {
            let out = Command::new(prog)
                .args(args)
                .output()
                .map_err(|e| format!("cannot run {prog}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "`{}` failed: {}",
                    argv.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        }
        [] => Ok(()),
    }
}

/// Reopens `vec<index>` after its host interface came back: closing the
/// device clears the vector driver's failed-transport mark and opening it
/// makes a fresh raw socket. The bounce removes the device's IPv6
/// addresses and the routes through it, so its configuration commands
/// run again; those whose result survived the bounce (IPv4 addresses,
/// MPTCP endpoints) fail with "File exists", "already assigned" or
/// "duplicate", which is fine.
///
/// Endpoints are deliberately not deleted and added again to make the
/// path manager open fresh subflows for existing connections: tried, and
/// it stalled the connection at the data level (a 128 MiB download never
/// finished). New connections get a subflow over the device again.
fn reset_device(index: u64) -> Result<(), String> {
    let dev = format!("vec{index}");
    run_command(&["ip", "link", "set", &dev, "down"])?;
    run_command(&["ip", "link", "set", &dev, "up"])?;
    let cmds = std::env::var_os(crate::ENV_GUEST)
        .map(PathBuf::from)
        .ok_or_else(|| format!("{} is not set", crate::ENV_GUEST))?;
    let text = std::fs::read_to_string(&cmds)
        .map_err(|e| format!("cannot read {}: {e}", cmds.display()))?;
    for line in text.lines() {
        let argv: Vec<&str> = line.split('\t').collect();
        if !argv.contains(&dev.as_str()) && argv.first() != Some(&"configure") {
            continue;
        }
        if let Err(e) = run_command(&argv) {
            let benign = ["exists", "already assigned", "duplicate"];
            if !benign.iter().any(|b| e.contains(b)) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The guest's network state as text, for [`crate::proto::Kind::Stats`]:
/// its TCP and MPTCP sockets with their memory (`ss -tmiMn`: `skmem` `r`
/// is what the socket's received data is charged, `rb` its receive
/// buffer) and its counters, one `NameValue` per line as `nstat` names
/// them (`TcpExtPruneCalled 3`, `MPTcpExtRcvPruned 0`).
pub(crate) fn guest_stats() -> String {
    let mut text = match std::fs::read_to_string(evloop::KERNEL_RELAY) {
        Ok(relays) => format!("# relay: kernel ({})\n{relays}", evloop::KERNEL_RELAY),
        Err(_) => "# relay: agent (this kernel has no in-kernel relay)\n".to_string(),
    };
    text.push_str("# sockets (ss -tmiMn)\n");
    text.push_str(&tool_output("ss", &["-tmiMn"]));
    text.push_str("# counters (/proc/net/snmp, /proc/net/netstat)\n");
    for file in ["/proc/net/snmp", "/proc/net/netstat"] {
        let table = std::fs::read_to_string(file).unwrap_or_default();
        text.push_str(&counter_lines(&table));
    }
    // The devices' side: which interrupt each vec device holds and how
    // often it fired, the softirqs that ran, and each interface's frames
    // and drops. A connection that stalls while the instance idles, or
    // while it spins, shows here whether its device still receives.
    for file in [
        "/proc/interrupts",
        "/proc/softirqs",
        "/proc/net/dev",
        "/proc/net/sockstat",
        "/proc/sys/net/ipv4/tcp_mem",
        // The guest's memory as a whole: an atomic allocation that fails
        // (an skb extension for every MPTCP segment) drops segments
        // without a counter.
        "/proc/meminfo",
    ] {
        text.push_str(&format!("# {file}\n"));
        match std::fs::read_to_string(file) {
            Ok(table) => text.push_str(&table),
            Err(e) => text.push_str(&format!("(cannot read it: {e})\n")),
        }
    }
    text.push_str(&transmit_queues());
    // The kernel's own complaints (allocation failures, warnings), which
    // the quiet console does not show.
    text.push_str("# kernel log, last lines (dmesg)\n");
    let log = tool_output("dmesg", &[]);
    let lines: Vec<&str> = log.lines().collect();
    for line in &lines[lines.len().saturating_sub(40)..] {
        text.push_str(line);
        text.push('\n');
    }
    // A copy in the run directory (the guest's root is the host's): a
    // guest short of socket memory resets the connection that carries
    // this text, and then the copy is what tells why.
    if let Some(run) = std::env::var_os(crate::ENV_GUEST)
        .map(PathBuf::from)
        .and_then(|cmds| cmds.parent().map(Path::to_path_buf))
    {
        let _ = std::fs::write(run.join(crate::host::GUEST_STATS_FILE), &text);
    }
    text
}

/// Each interface's transmit side: its state, each queue's byte queue
/// limits (a queue whose bytes in flight reach the limit stops until the
/// driver reports frames done, so a lost completion stops it for good,
/// the CPU idle), the vector driver's counters (`ethtool -S`) and the
/// qdiscs' backlog and requeues (`tc -s qdisc`).
fn transmit_queues() -> String {
    let mut text = String::from("# transmit queues (/sys/class/net/*/queues/tx-*)\n");
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_or_else(|e| format!("({e})"), |v| v.trim().to_string())
    };
    let mut devs: Vec<PathBuf> = std::fs::read_dir("/sys/class/net")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    devs.sort();
    let mut names = Vec::new();
    for dev in devs {
        let name = dev
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        text.push_str(&format!(
            "{name}: operstate {} carrier {}\n",
            read(&dev.join("operstate")),
            read(&dev.join("carrier"))
        ));
        let mut queues: Vec<PathBuf> = std::fs::read_dir(dev.join("queues"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("tx-"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        queues.sort();
        for q in queues {
            let bql = q.join("byte_queue_limits");
            text.push_str(&format!(
                "{name} {}: bql inflight {} limit {} tx_timeout {}\n",
                q.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                read(&bql.join("inflight")),
                read(&bql.join("limit")),
                read(&q.join("tx_timeout"))
            ));
        }
        names.push(name);
    }
    // The vector driver's own counters: transmit restarts and timeouts,
    // queue depths, interrupts taken.
    for dev in names.iter().filter(|n| n.starts_with("vec")) {
        text.push_str(&format!("# driver counters (ethtool -S {dev})\n"));
        text.push_str(&tool_output("ethtool", &["-S", dev]));
    }
    text.push_str("# qdiscs (tc -s qdisc show)\n");
    text.push_str(&tool_output("tc", &["-s", "qdisc", "show"]));
    text
}

/// What a tool of the guest's root prints, or one line saying why it
/// could not run (the stats go on without it).
fn tool_output(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(e) => format!("(cannot run {program}: {e})\n"),
    }
}

/// `/proc/net/snmp` and `/proc/net/netstat` give each group as two lines,
/// `Group: name name ...` then `Group: value value ...`; this pairs them
/// as `GroupName value` lines.
fn counter_lines(table: &str) -> String {
    let mut out = String::new();
    let lines: Vec<&str> = table.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((group, names)), Some((_, values))) =
            (names.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            out.push_str(&format!("{group}{name} {value}\n"));
        }
    }
    out
}

fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A guest socket of the request's family, MPTCP if asked (falling back to
/// TCP only if the guest kernel refuses MPTCP, which ours never does),
/// with the program's options applied.
fn new_socket(req: &Request) -> io::Result<OwnedFd> {
    let proto = if req.mptcp {
        IPPROTO_MPTCP
    } else {
        libc::IPPROTO_TCP
    };
    // SAFETY: socket(2) takes integers only.
    let fd =
        cvt(unsafe { libc::socket(req.domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, proto) })?;
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    for opt in &req.opts {
        // Options the program set on a TCP socket; MPTCP may refuse a
        // few (it says so with EOPNOTSUPP), which TCP semantics survive.
        let _ = dropshim_abi::sock::setsockopt(fd, opt.level, opt.name, &opt.value);
    }
    Ok(sock)
}

/// The socket's local or peer address, as the guest kernel sees it.
fn sock_addr(fd: RawFd, peer: bool) -> Option<SocketAddr> {
    if peer {
        dropshim_abi::sock::peer_addr(fd).ok()
    } else {
        dropshim_abi::sock::local_addr(fd).ok()
    }
}

fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL take integers only.
    let fl = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    let fl = if on {
        fl | libc::O_NONBLOCK
    } else {
        fl & !libc::O_NONBLOCK
    };
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, fl) }).map(drop)
}

fn open_listener(req: &Request) -> io::Result<(OwnedFd, Reply)> {
    let sock = new_socket(req)?;
    let fd = sock.as_raw_fd();
    let local = req.addr.unwrap_or_else(|| {
        if req.domain == libc::AF_INET6 {
            "[::]:0"
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
        } else {
            SocketAddr::from(([0, 0, 0, 0], 0))
        }
    });
    let local = dropshim_abi::encode_in_domain(&local, req.domain);
    // SAFETY: `local` holds a valid address of `local.len()` bytes.
    cvt(unsafe { libc::bind(fd, local.as_ptr(), local.len()) })?;
    // SAFETY: listen(2) takes integers only.
    cvt(unsafe { libc::listen(fd, req.backlog.max(1)) })?;
    let reply = Reply {
        errno: 0,
        local: sock_addr(fd, false),
        peer: None,
    };
    Ok((sock, reply))
}

/// setsockopt of one int; failure leaves the kernel's default.
fn set_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) {
    let _ = dropshim_abi::sock::setsockopt_int(fd, level, name, value);
}

#[cfg(test)]
mod tests {
    use super::counter_lines;

    #[test]
    fn counters_pair_each_name_with_its_value() {
        let table = "TcpExt: SyncookiesSent PruneCalled\nTcpExt: 0 17\n\
                     MPTcpExt: MPCapableSYNRX RcvPruned\nMPTcpExt: 4 2\n";
        assert_eq!(
            counter_lines(table),
            "TcpExtSyncookiesSent 0\nTcpExtPruneCalled 17\n\
             MPTcpExtMPCapableSYNRX 4\nMPTcpExtRcvPruned 2\n"
        );
    }
}
