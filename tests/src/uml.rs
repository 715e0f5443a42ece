//! Support for the uml backend's tests: a device whose interfaces a UML
//! instance owns, brought up with `dropshim up` inside a testbed node and
//! brought down (even on failure) when the guard drops.

use crate::{cli_path, DeviceExtra};
use anyhow::{Context, Result};
use dropshim_testbed::Testbed;
use std::path::PathBuf;

/// A unique device name per test: run directories, private namespaces
/// and interface names derive from it.
pub fn unique_device(tag: &str) -> String {
    dropshim_stacks::unique_name(&format!("uml{tag}"))
}

pub use dropshim_stacks::UmlDevice;

/// Hands `node`'s interfaces on `links` to a new instance: their host
/// addresses (IPv4 and IPv6) move into the guest; the last link gets a
/// `subflow` endpoint so MPTCP opens a second subflow over it.
pub fn uml_device(tb: &Testbed, node: &str, links: &[u32], tag: &str) -> Result<UmlDevice> {
    uml_device_with(tb, node, links, tag, &DeviceExtra::default())
}

/// [`uml_device`] with a scheduler, interface costs, a path manager,
/// the last link's endpoint roles or guest kernel arguments.
pub fn uml_device_with(
    tb: &Testbed,
    node: &str,
    links: &[u32],
    tag: &str,
    extra: &DeviceExtra,
) -> Result<UmlDevice> {
    let file = extra.device_file(links, true);
    UmlDevice::up(tb, node, &file, &unique_device(tag), &cli_path())
}

/// Non-blocking connect the way event loops do it, one line per case
/// (`NAME key=value ...`): for a listening peer and a closed port, through epoll
/// (selectors) and poll: connect's errno, how long the call took, whether
/// the socket became writable, SO_ERROR (twice: it is cleared once read);
/// for the listening peer also 1 MiB echoed back as its sha256; and an
/// unreachable address, which must leave the loop free (not writable
/// within 0.5 s, connect returning at once).
pub const NONBLOCKING_PY: &str = r##"import errno, hashlib, os, select, selectors, socket, sys, time
peer, port, closed, dead = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
out = {}

def start(addr):
    s = socket.socket()
    s.setblocking(False)
    t0 = time.monotonic()
    rc = s.connect_ex(addr)
    return s, rc, time.monotonic() - t0

def wait_epoll(s, timeout):
    sel = selectors.EpollSelector()
    sel.register(s, selectors.EVENT_WRITE)
    ev = sel.select(timeout)
    sel.unregister(s)
    sel.close()
    return bool(ev)

def wait_poll(s, timeout):
    p = select.poll()
    p.register(s, select.POLLOUT)
    return bool(p.poll(timeout * 1000))

def case(name, addr, waiter, timeout=10):
    s, rc, took = start(addr)
    t0 = time.monotonic()
    writable = waiter(s, timeout)
    r = {"connect": errno.errorcode.get(rc, str(rc)), "call_s": round(took, 4),
         "writable": int(writable), "wait_s": round(time.monotonic() - t0, 3)}
    if writable:
        e = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        r["so_error"] = errno.errorcode.get(e, str(e)) if e else "0"
        r["so_error_again"] = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    out[name] = r
    return s

for name, waiter in (("epoll", wait_epoll), ("poll", wait_poll)):
    s = case("listening_" + name, (peer, port), waiter)
    if out["listening_" + name].get("so_error") == "0":
        s.setblocking(True)
        body = os.urandom(1 << 20)
        s.sendall(body)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            b = s.recv(1 << 16)
            if not b:
                break
            got += b
        out["listening_" + name]["digest_ok"] = int(got == hashlib.sha256(body).digest())
        out["listening_" + name]["peer"] = "%s:%d" % s.getpeername()[:2]
    s.close()
    case("closed_" + name, (peer, closed), waiter).close()
s = case("unreachable", (dead, port), wait_epoll, timeout=0.5)
s.close()
for name, r in sorted(out.items()):
    print(name + " " + " ".join("%s=%s" % kv for kv in sorted(r.items())))
"##;

/// A plain server: for each connection, reads to EOF and answers with
/// the sha256 of what it read.
pub const DIGEST_SERVER_PY: &str = r##"import hashlib, socket, sys
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((sys.argv[1], int(sys.argv[2])))
l.listen(16)
print("listening", flush=True)
while True:
    c, _ = l.accept()
    h = hashlib.sha256()
    while True:
        b = c.recv(1 << 16)
        if not b:
            break
        h.update(b)
    c.sendall(h.digest())
    c.close()
"##;

/// Connects, sends one byte, prints "connected", then blocks in recv()
/// (the server never answers) and prints how that ended.
pub const BLOCKED_RECV_PY: &str = r##"import errno, socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
c.sendall(b"x")
print("connected", flush=True)
try:
    got = c.recv(100)
    print("eof" if not got else "data", flush=True)
except OSError as e:
    print("error=%s" % errno.errorcode.get(e.errno, e.errno), flush=True)
"##;

/// What the guest recorded about its MPTCP schedulers
/// (`net.mptcp.available_schedulers = ...`, `net.mptcp.scheduler = ...`).
pub fn guest_mptcp(device: &str) -> Result<String> {
    // the uml agent's GUEST_MPTCP_FILE
    let path = run_dir(device).join("guest.mptcp");
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// The counters of the guest's stats ([`UmlDevice::guest_stats`]), by
/// the names `nstat` gives them (`MPTcpExtRcvPruned`).
pub fn guest_counters(stats: &str) -> std::collections::HashMap<String, u64> {
    stats
        .lines()
        .skip_while(|l| !l.starts_with("# counters"))
        .skip(1)
        .take_while(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The guest's stats ([`UmlDevice::guest_stats`]) cut for a failure's
/// report: the relays and the first `sockets` lines of its sockets, then
/// every counter that is not zero and the devices' and memory's sections
/// in full (a guest short of socket memory shows there: `TCP: ... mem`
/// against `tcp_mem`, and `MPTcpExtRcvPruned`).
pub fn stats_for_report(stats: &str, sockets: usize) -> String {
    let mut out = Vec::new();
    let mut section = "";
    let mut shown = 0;
    for line in stats.lines() {
        if line.starts_with('#') {
            section = line;
            out.push(line.to_string());
            continue;
        }
        if section.starts_with("# sockets") {
            shown += 1;
            if shown <= sockets {
                out.push(line.to_string());
            } else if shown == sockets + 1 {
                out.push("...".to_string());
            }
        } else if section.starts_with("# counters") {
            if line.split_whitespace().nth(1).is_some_and(|v| v != "0") {
                out.push(line.to_string());
            }
        } else {
            out.push(line.to_string());
        }
    }
    out.join("\n")
}

/// One guest socket's queue and memory, from [`UmlDevice::guest_stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestSocket {
    /// Bytes received in order that the reader has not taken (`Recv-Q`).
    pub recv_q: u64,
    /// What the socket's received data is charged (`skmem` `r`).
    pub rmem: u64,
    /// Its receive buffer (`skmem` `rb`).
    pub rcvbuf: u64,
}

/// The first socket of kind `netid` (`tcp`, `mptcp`) whose peer is on
/// `peer_port`, in the `ss -tmiMn` part of a guest's stats: a line
/// `NETID STATE RECV-Q SEND-Q LOCAL PEER`, then indented lines, one with
/// `skmem:(r..,rb..,...)`.
pub fn guest_socket(stats: &str, netid: &str, peer_port: u16) -> Option<GuestSocket> {
    let port = format!(":{peer_port}");
    let mut found: Option<u64> = None;
    for line in stats.lines() {
        if !line.starts_with([' ', '\t']) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            found = match cols[..] {
                [id, _state, recv_q, _send_q, _local, peer, ..]
                    if id == netid && peer.ends_with(&port) =>
                {
                    recv_q.parse().ok()
                }
                _ => None,
            };
            continue;
        }
        let (Some(recv_q), Some(at)) = (found, line.find("skmem:(")) else {
            continue;
        };
        let inner = line[at + 7..].split(')').next().unwrap_or_default();
        let field = |name: &str| {
            inner
                .split(',')
                .find_map(|f| f.strip_prefix(name)?.parse::<u64>().ok())
        };
        return Some(GuestSocket {
            recv_q,
            rmem: field("r")?,
            rcvbuf: field("rb")?,
        });
    }
    None
}

/// The device's run directory, by the backend's own rule.
pub fn run_dir(device: &str) -> PathBuf {
    dropshim_backend_uml::run_dir(device)
}

#[cfg(test)]
mod tests {
    use super::{guest_counters, guest_socket, stats_for_report, GuestSocket};

    #[test]
    fn stats_for_report_keeps_memory_and_moved_counters_and_cuts_sockets() {
        let stats = "# relay: kernel\nrelays active 2\n# sockets (ss -tmiMn)\na\nb\nc\n\
                     # counters (/proc/net/snmp, /proc/net/netstat)\nMPTcpExtRcvPruned 7\nTcpExtPruneCalled 0\n\
                     # /proc/net/sockstat\nTCP: inuse 3 mem 2100\n";
        let report = stats_for_report(stats, 2);
        assert_eq!(
            report,
            "# relay: kernel\nrelays active 2\n# sockets (ss -tmiMn)\na\nb\n...\n\
             # counters (/proc/net/snmp, /proc/net/netstat)\nMPTcpExtRcvPruned 7\n\
             # /proc/net/sockstat\nTCP: inuse 3 mem 2100"
        );
    }

    #[test]
    fn guest_counters_are_read_from_their_section_only() {
        let stats = "# sockets (ss -tmiMn)\nTcpExtNotACounter 9\n\
                     # counters (/proc/net/snmp, /proc/net/netstat)\nMPTcpExtRcvPruned 7\nTcpInSegs 12\n\
                     # /proc/net/sockstat\nTCP: inuse 3 mem 2100\n";
        let c = guest_counters(stats);
        assert_eq!(c.get("MPTcpExtRcvPruned"), Some(&7));
        assert_eq!(c.get("TcpInSegs"), Some(&12));
        assert_eq!(c.len(), 2, "{c:?}");
    }

    #[test]
    fn guest_socket_reads_the_queue_and_memory_of_the_right_socket() {
        let stats = "# sockets (ss -tmiMn)\n\
            Netid State Recv-Q Send-Q Local Address:Port Peer Address:Port Process\n\
            tcp   ESTAB 0      7      198.18.1.1:40000   198.18.1.2:5001\n\
            \t skmem:(r0,rb131072,t0,tb87040,f0,w0,o0,bl0,d0) cubic\n\
            mptcp ESTAB 2048   0      198.18.1.1:40000   198.18.1.2:5001\n\
            \t skmem:(r4608,rb16777216,t0,tb46080,f0,w0,o0,bl0,d0) subflows:1\n";
        assert_eq!(
            guest_socket(stats, "mptcp", 5001),
            Some(GuestSocket {
                recv_q: 2048,
                rmem: 4608,
                rcvbuf: 16_777_216
            })
        );
        assert_eq!(
            guest_socket(stats, "tcp", 5001).map(|s| s.rcvbuf),
            Some(131_072)
        );
        assert_eq!(guest_socket(stats, "mptcp", 5002), None);
    }
}
