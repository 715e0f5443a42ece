//! Uploads from gw1 on the uml or lkl stack to a native MPTCP server in
//! gw2 that reports what every subflow carried: the measuring rig of the
//! scheduler and path manager tests. The server reads each subflow's
//! `tcpi_bytes_received` from its own socket (MPTCP_TCPINFO, MPTCP_ADDRS)
//! and the sha256 of what arrived; the client checks that digest against
//! what it sent.

use crate::reliability::Lines;
use crate::stack::Stack;
use crate::{run_ok, unique_port};
use anyhow::{ensure, Context, Result};
use dropshim_testbed::{Options, Spec, Testbed};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

const SHORT: Duration = Duration::from_secs(20);
/// The longest an upload may take.
pub const TRANSFER: Duration = Duration::from_secs(180);
/// One mebibyte.
pub const MIB: u64 = 1 << 20;

/// The native MPTCP server in gw2: one connection; says hello (a byte
/// that lets the client's path manager start), and once it has WANT
/// subflows (polled, at most 10 s) tells the client to go; reads to
/// EOF; prints `progress N` every STEP bytes, then
/// `done SHA256 TOTAL LOCAL,REMOTE,PORT=BYTES ...` with the bytes each
/// subflow received (gw2's address, gw1's address and port; the largest
/// value seen over the transfer, so a subflow closed before the end still
/// counts), and answers with the raw digest.
const SERVER_PY: &str = r##"import ctypes, hashlib, socket, struct, sys, time
SOL_MPTCP, MPTCP_TCPINFO, MPTCP_ADDRS = 284, 2, 3
libc = ctypes.CDLL(None, use_errno=True)

def subflow_data(fd, opt, elem, count=16):
    buf = ctypes.create_string_buffer(16 + count * elem)
    struct.pack_into("IIII", buf, 0, 16, 0, 0, elem)
    ln = ctypes.c_int(len(buf))
    if libc.getsockopt(fd, SOL_MPTCP, opt, buf, ctypes.byref(ln)) != 0:
        raise OSError(ctypes.get_errno(), "getsockopt")
    _, num, _, usize = struct.unpack_from("IIII", buf, 0)
    raw = buf.raw
    return [raw[16 + i * usize:16 + (i + 1) * usize] for i in range(min(num, count))]

def endpoint(entry, at):
    # struct mptcp_subflow_addrs: local, then remote, 128 bytes each
    family, port = struct.unpack_from("H", entry, at)[0], struct.unpack_from("!H", entry, at + 2)[0]
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, entry[at + 4:at + 8]), port
    return socket.inet_ntop(socket.AF_INET6, entry[at + 8:at + 24]), port

best = {}
def sample(fd):
    infos = subflow_data(fd, MPTCP_TCPINFO, 256)
    addrs = subflow_data(fd, MPTCP_ADDRS, 256)
    for info, addr in zip(infos, addrs):
        lip, _ = endpoint(addr, 0)
        rip, rport = endpoint(addr, 128)
        key = "%s,%s,%d" % (lip, rip, rport)
        best[key] = max(best.get(key, 0), struct.unpack_from("Q", info, 128)[0])

host, port, step, want, drain = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
l = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_MPTCP)
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((host, port))
l.listen(4)
print("listening", flush=True)
c, _ = l.accept()
# A first byte from this side makes the client's connection fully
# established (it has sent no data yet), and only then does its path
# manager open more subflows. The client sends once they are up (or after
# 10 s): every byte then had the choice of all of them.
c.sendall(b"h")
deadline = time.monotonic() + 10
while len(subflow_data(c.fileno(), MPTCP_TCPINFO, 256)) < want and time.monotonic() < deadline:
    time.sleep(0.005)
c.sendall(b"g")
h = hashlib.sha256()
total, mark = 0, step
while True:
    b = c.recv(1 << 16)
    if not b:
        break
    h.update(b)
    total += len(b)
    if total >= mark:
        sample(c.fileno())
        print("progress", total, flush=True)
        mark += step
sample(c.fileno())
# With copies on every subflow (the redundant scheduler), a slower subflow
# may still be delivering its copy when the stream has ended: wait until
# every subflow has received the whole stream, or no subflow has moved for
# half a second (at most 10 s), so that its share counts what it carried.
if drain:
    deadline, still, last = time.monotonic() + 10, 0, dict(best)
    while time.monotonic() < deadline and still < 25 and min(best.values(), default=total) < total:
        time.sleep(0.02)
        sample(c.fileno())
        still = still + 1 if best == last else 0
        last = dict(best)
print("done", h.hexdigest(), total, " ".join("%s=%d" % kv for kv in sorted(best.items())), flush=True)
c.sendall(h.digest())
c.close()
"##;

/// The client on the stack under test: waits for the server's hello and
/// go (the subflows joined), sends SIZE pseudo-random bytes (seeded), at most
/// RATE bytes/s when RATE > 0, half-closes, and prints
/// `sent SHA256 peer DIGEST` (the digest the server answered with).
const CLIENT_PY: &str = r##"import hashlib, random, socket, sys, time
host, port, size, rate, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
rng = random.Random(seed)
s = socket.create_connection((host, port))

def recv_exactly(n):
    got = b""
    while len(got) < n:
        b = s.recv(n - len(got))
        if not b:
            break
        got += b
    return got

hello = recv_exactly(2)
if hello != b"hg":
    sys.exit("the server did not say hello, then go: %r" % hello)
h = hashlib.sha256()
sent, t0 = 0, time.monotonic()
while sent < size:
    n = min(1 << 16, size - sent)
    b = rng.randbytes(n)
    s.sendall(b)
    h.update(b)
    sent += n
    if rate > 0:
        ahead = t0 + sent / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
s.shutdown(socket.SHUT_WR)
got = recv_exactly(32)
print("sent", h.hexdigest(), "peer", got.hex(), flush=True)
"##;

/// The two-gateways testbed, both links at `rate_mbit` (None: unshaped).
pub fn testbed(rate_mbit: Option<u32>) -> Result<Testbed> {
    Ok(Testbed::up(
        &Spec::builtin("two-gateways")?,
        &Options {
            rate_mbit,
            ..Options::default()
        },
    )?)
}

/// gw2 accepts up to 8 subflows and announcements per connection.
pub fn gw2_accepts_many(tb: &Testbed) -> Result<()> {
    run_ok(
        tb.command("gw2", "ip")?.args([
            "mptcp",
            "limits",
            "set",
            "subflows",
            "8",
            "add_addr_accepted",
            "8",
        ]),
        Duration::from_secs(20),
    )?;
    Ok(())
}

/// One subflow as the server saw it.
#[derive(Debug, Clone)]
pub struct PeerSubflow {
    /// gw2's end.
    pub local: IpAddr,
    /// gw1's end.
    pub remote: SocketAddr,
    /// Bytes it received.
    pub bytes: u64,
}

/// What the server reported: the bytes of every subflow, and the total.
#[derive(Debug)]
pub struct Split {
    /// Bytes of every subflow the server saw.
    pub subflows: Vec<PeerSubflow>,
    /// Bytes the server received in total.
    pub total: u64,
}

impl Split {
    /// Bytes per gw1 address.
    pub fn per_addr(&self) -> HashMap<String, u64> {
        let mut out = HashMap::new();
        for s in &self.subflows {
            *out.entry(s.remote.ip().to_string()).or_insert(0) += s.bytes;
        }
        out
    }

    /// The share of the bytes the subflows from gw1's link-`link`
    /// address carried.
    pub fn share(&self, tb: &Testbed, link: u32) -> Result<f64> {
        let addr = tb.addr4("gw1", link)?.to_string();
        let got = self.per_addr().get(&addr).copied().unwrap_or(0);
        Ok(got as f64 / self.total.max(1) as f64)
    }
}

/// Where the server listens and when it says go.
#[derive(Debug, Clone, Copy)]
pub struct ServerOptions {
    /// Listen on every address (joins to the addresses gw2 announces),
    /// not only gw2's link-1 address.
    pub any: bool,
    /// Subflows to wait for (at most 10 s) before the client sends.
    pub subflows: usize,
    /// After the end of the stream, wait for every subflow to have
    /// delivered its copy of it (at most 10 s) before reporting their
    /// bytes: with the redundant scheduler the slower one is still sending.
    pub drain_copies: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            any: false,
            subflows: 2,
            drain_copies: false,
        }
    }
}

/// An upload from gw1 (on `stack`) to the server in gw2, checked intact.
pub struct Upload {
    server: Lines,
    client: Lines,
    size: u64,
    port: u16,
}

impl Upload {
    /// Starts an upload of `size` bytes at `rate` bytes/s (0: as fast as
    /// it goes); the server reports progress every `step` bytes.
    pub fn start(tb: &Testbed, stack: &Stack, size: u64, rate: u64, step: u64) -> Result<Upload> {
        Self::start_with(tb, stack, size, rate, step, ServerOptions::default())
    }

    /// [`Upload::start`] with the server's options.
    pub fn start_with(
        tb: &Testbed,
        stack: &Stack,
        size: u64,
        rate: u64,
        step: u64,
        opts: ServerOptions,
    ) -> Result<Upload> {
        let port = unique_port();
        let ip = tb.addr4("gw2", 1)?;
        let bind = if opts.any {
            "0.0.0.0".to_string()
        } else {
            ip.to_string()
        };
        let mut srv = tb.command("gw2", "python3")?;
        srv.args(["-c", SERVER_PY, &bind, &port.to_string()])
            .arg(step.to_string())
            .arg(opts.subflows.to_string())
            .arg(if opts.drain_copies { "1" } else { "0" });
        let server = Lines::spawn(&mut srv, "the MPTCP server in gw2")?;
        server.expect("listening", SHORT)?;
        let mut cli = stack.command(tb, "python3")?;
        cli.args(["-c", CLIENT_PY, &ip.to_string(), &port.to_string()])
            .arg(size.to_string())
            .arg(rate.to_string())
            .arg(std::process::id().to_string());
        let client = Lines::spawn(&mut cli, "the client on the stack")?;
        Ok(Upload {
            server,
            client,
            size,
            port,
        })
    }

    /// The server's port in gw2.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Waits for the server to have received at least `bytes`.
    pub fn wait_progress(&self, bytes: u64) -> Result<()> {
        loop {
            let line = self.server.expect("progress ", TRANSFER)?;
            let n: u64 = line["progress ".len()..].trim().parse()?;
            if n >= bytes {
                return Ok(());
            }
        }
    }

    /// Waits for the end: both digests must match what was sent.
    pub fn finish(self) -> Result<Split> {
        let done = self.server.expect("done ", TRANSFER)?;
        let (status, lines, stderr) = self.client.finish(TRANSFER)?;
        ensure!(status.success(), "the client failed ({status}): {stderr}");
        let sent = lines
            .iter()
            .find(|l| l.starts_with("sent "))
            .with_context(|| format!("the client printed no digest: {lines:?} {stderr}"))?;
        let words: Vec<&str> = sent.split_whitespace().collect();
        ensure!(words.len() == 4, "odd client line {sent:?}");
        let (sent_sha, peer_sha) = (words[1], words[3]);
        let fields: Vec<&str> = done.split_whitespace().collect();
        ensure!(fields.len() >= 3, "odd server line {done:?}");
        ensure!(
            fields[1] == sent_sha && peer_sha == sent_sha,
            "bytes changed on the way: sent {sent_sha}, server got {}, client heard {peer_sha}",
            fields[1]
        );
        let total: u64 = fields[2].parse()?;
        ensure!(
            total == self.size,
            "server got {total} bytes of {}",
            self.size
        );
        let mut subflows = Vec::new();
        for kv in &fields[3..] {
            let odd = || format!("odd per-subflow field {kv:?}");
            let (key, n) = kv.split_once('=').with_context(odd)?;
            let parts: Vec<&str> = key.split(',').collect();
            ensure!(parts.len() == 3, "{}", odd());
            let remote_ip: IpAddr = parts[1].parse().with_context(odd)?;
            subflows.push(PeerSubflow {
                local: parts[0].parse().with_context(odd)?,
                remote: SocketAddr::new(remote_ip, parts[2].parse().with_context(odd)?),
                bytes: n.parse().with_context(odd)?,
            });
        }
        Ok(Split { subflows, total })
    }
}

/// Cuts or restores link `link` at gw2's end (gw1's end may belong to the
/// stack under test).
pub fn gw2_link(tb: &Testbed, link: u32, up: bool) -> Result<()> {
    let ifname = tb.ifname("gw2", link)?.to_string();
    run_ok(
        tb.command("gw2", "ip")?.args([
            "link",
            "set",
            "dev",
            &ifname,
            if up { "up" } else { "down" },
        ]),
        SHORT,
    )?;
    Ok(())
}

/// gw2's established subflows of the server on `port` as `ss -tin` shows
/// them while the transfer runs: gw1's end (address and port) and the
/// bytes each has received so far.
pub fn peer_received(tb: &Testbed, port: u16) -> Result<Vec<(SocketAddr, u64)>> {
    peer_counter(tb, port, "bytes_received")
}

/// gw2's established subflows of the server on `port`, each with gw1's
/// end and the value of one of its `ss -tin` counters (`bytes_received`,
/// `bytes_acked`, ...; 0 where `ss` shows none).
pub fn peer_counter(tb: &Testbed, port: u16, counter: &str) -> Result<Vec<(SocketAddr, u64)>> {
    let out = run_ok(
        tb.command("gw2", "ss")?.args([
            "-tinH",
            "state",
            "established",
            &format!("sport = :{port}"),
        ]),
        SHORT,
    )?;
    Ok(parse_ss_counter(
        &String::from_utf8_lossy(&out.stdout),
        counter,
    ))
}

/// [`peer_counter`] over the text of `ss -tinH`: a line per socket with
/// its two ends, then an indented line of its details.
fn parse_ss_counter(text: &str, counter: &str) -> Vec<(SocketAddr, u64)> {
    let key = format!("{counter}:");
    let mut out: Vec<(SocketAddr, u64)> = Vec::new();
    for line in text.lines() {
        if line.starts_with(char::is_whitespace) {
            let got = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key.as_str()))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if let Some(last) = out.last_mut() {
                last.1 = got;
            }
        } else {
            let ends: Vec<SocketAddr> = line
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            if ends.len() == 2 {
                out.push((ends[1], 0));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ss_lines_give_each_subflow_its_received_bytes() {
        let text = "0 0 198.18.1.2:5000 198.18.1.1:40000\n\t cubic bytes_acked:1 bytes_received:4096 segs_out:3\n\
0 0 198.18.1.2:5000 198.18.2.1:40001\n\t cubic bytes_received:17 segs_out:3\n";
        let got = parse_ss_counter(text, "bytes_received");
        let a: SocketAddr = "198.18.1.1:40000".parse().unwrap();
        let b: SocketAddr = "198.18.2.1:40001".parse().unwrap();
        assert_eq!(got, vec![(a, 4096), (b, 17)]);
        assert_eq!(parse_ss_counter(text, "bytes_acked"), vec![(a, 1), (b, 0)]);
    }
}
