//! dropshim's MPTCP packet schedulers (kernel/mptcp-schedulers) in the
//! kernels of the uml and lkl stacks: each is offered in the stack's
//! `net.mptcp.available_schedulers`, and each, selected with `[mptcp]
//! scheduler` in the device file, shows its behaviour in the bytes every
//! subflow carried. The client in gw1 runs on the stack under test and
//! uploads to a native MPTCP server in gw2, which reads every subflow's
//! `tcpi_bytes_received` from its own socket (MPTCP_TCPINFO, MPTCP_ADDRS)
//! and the sha256 of what arrived; the client checks that digest against
//! what it sent.

use anyhow::{bail, ensure, Context, Result};
use dropshim_testbed::{Options, Spec, Testbed};
use dropshim_tests::lkl::{liblkl, lkl_node_extra, on_lkl, LklNode};
use dropshim_tests::reliability::Lines;
use dropshim_tests::uml::{guest_mptcp, UmlDevice};
use dropshim_tests::*;
use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

const SHORT: Duration = Duration::from_secs(20);
const TRANSFER: Duration = Duration::from_secs(180);

/// The native MPTCP server in gw2: one connection; once it has two
/// subflows (polled, at most 10 s) it tells the client to go; reads to
/// EOF; prints
/// `progress N` every STEP bytes, then `done SHA256 TOTAL ADDR=BYTES ...`
/// with the bytes the subflows from each client address received (every
/// subflow ends at gw2's link-1 address; the testbed's source routing
/// sends each over the link of its client address) (the largest
/// value seen over the transfer, so a subflow closed before the end still
/// counts), and answers with the raw digest.
const SERVER_PY: &str = r##"import ctypes, hashlib, socket, struct, sys, time
SOL_MPTCP, MPTCP_TCPINFO, MPTCP_ADDRS = 284, 2, 3
libc = ctypes.CDLL(None, use_errno=True)

def subflow_data(fd, opt, elem, count=8):
    buf = ctypes.create_string_buffer(16 + count * elem)
    struct.pack_into("IIII", buf, 0, 16, 0, 0, elem)
    ln = ctypes.c_int(len(buf))
    if libc.getsockopt(fd, SOL_MPTCP, opt, buf, ctypes.byref(ln)) != 0:
        raise OSError(ctypes.get_errno(), "getsockopt")
    _, num, _, usize = struct.unpack_from("IIII", buf, 0)
    raw = buf.raw
    return [raw[16 + i * usize:16 + (i + 1) * usize] for i in range(min(num, count))]

def remote_ip(entry):
    # struct mptcp_subflow_addrs: local, then remote, 128 bytes each
    family = struct.unpack_from("H", entry, 128)[0]
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, entry[132:136])
    return socket.inet_ntop(socket.AF_INET6, entry[136:152])

best = {}
def sample(fd):
    infos = subflow_data(fd, MPTCP_TCPINFO, 256)
    addrs = subflow_data(fd, MPTCP_ADDRS, 256)
    now = {}
    for info, addr in zip(infos, addrs):
        ip = remote_ip(addr)
        now[ip] = now.get(ip, 0) + struct.unpack_from("Q", info, 128)[0]
    for ip, n in now.items():
        best[ip] = max(best.get(ip, 0), n)

host, port, step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
l = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_MPTCP)
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((host, port))
l.listen(4)
print("listening", flush=True)
c, _ = l.accept()
# the client sends once both subflows are up (or after 10 s): every byte
# then had the choice of both links
deadline = time.monotonic() + 10
while len(subflow_data(c.fileno(), MPTCP_TCPINFO, 256)) < 2 and time.monotonic() < deadline:
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
print("done", h.hexdigest(), total, " ".join("%s=%d" % kv for kv in sorted(best.items())), flush=True)
c.sendall(h.digest())
c.close()
"##;

/// The client on the stack under test: waits for the server's go (both
/// subflows joined), sends SIZE pseudo-random bytes
/// (seeded), at most RATE bytes/s when RATE > 0, half-closes, and prints
/// `sent SHA256 peer DIGEST` (the digest the server answered with).
const CLIENT_PY: &str = r##"import hashlib, random, socket, sys, time
host, port, size, rate, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
rng = random.Random(seed)
s = socket.create_connection((host, port))
if s.recv(1) != b"g":
    sys.exit("the server did not say go")
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
got = b""
while len(got) < 32:
    b = s.recv(32 - len(got))
    if not b:
        break
    got += b
print("sent", h.hexdigest(), "peer", got.hex(), flush=True)
"##;

const MIB: u64 = 1 << 20;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Uml,
    Lkl,
}

/// gw1 on the stack under test, with the device file it runs.
enum Stack {
    Uml(UmlDevice),
    Lkl(LklNode),
}

impl Stack {
    fn up(tb: &Testbed, kind: Kind, tag: &str, extra: &DeviceExtra) -> Result<Stack> {
        Ok(match kind {
            Kind::Uml => Stack::Uml(UmlDevice::up_with(tb, "gw1", &[1, 2], tag, extra)?),
            Kind::Lkl => Stack::Lkl(lkl_node_extra(tb, r#""subflow""#, false, extra)?),
        })
    }

    /// `program` in gw1 on this stack.
    fn command(&self, tb: &Testbed, program: &str) -> Result<Command> {
        match self {
            Stack::Uml(dev) => {
                let mut cmd = tb.command("gw1", program)?;
                cmd.env("LD_PRELOAD", shim_path())
                    .env("DROPSHIM_CONFIG", dev.config())
                    .env_remove("DROPSHIM_BACKEND")
                    .env_remove("DROPSHIM_LOG");
                Ok(cmd)
            }
            Stack::Lkl(node) => on_lkl(tb, node, program),
        }
    }
}

fn testbed(rate_mbit: Option<u32>) -> Result<Testbed> {
    Ok(Testbed::up(
        &Spec::builtin("two-gateways")?,
        &Options {
            rate_mbit,
            ..Options::default()
        },
    )?)
}

/// What the server reported: per client address (gw1's address on each
/// link), the bytes its subflows received, and the total.
struct Split {
    per_addr: HashMap<String, u64>,
    total: u64,
}

impl Split {
    fn share(&self, tb: &Testbed, link: u32) -> Result<f64> {
        let addr = tb.addr4("gw1", link)?.to_string();
        let got = self.per_addr.get(&addr).copied().unwrap_or(0);
        Ok(got as f64 / self.total.max(1) as f64)
    }
}

/// An upload from gw1 (on `stack`) to the server in gw2, checked intact.
struct Upload {
    server: Lines,
    client: Lines,
    size: u64,
}

impl Upload {
    fn start(tb: &Testbed, stack: &Stack, size: u64, rate: u64, step: u64) -> Result<Upload> {
        let port = unique_port();
        let ip = tb.addr4("gw2", 1)?;
        let mut srv = tb.command("gw2", "python3")?;
        srv.args(["-c", SERVER_PY, &ip.to_string(), &port.to_string()])
            .arg(step.to_string());
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
        })
    }

    /// Waits for the server to have received at least `bytes`.
    fn wait_progress(&self, bytes: u64) -> Result<()> {
        loop {
            let line = self.server.expect("progress ", TRANSFER)?;
            let n: u64 = line["progress ".len()..].trim().parse()?;
            if n >= bytes {
                return Ok(());
            }
        }
    }

    /// Waits for the end: both digests must match what was sent.
    fn finish(self) -> Result<Split> {
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
        let mut per_addr = HashMap::new();
        for kv in &fields[3..] {
            let (addr, n) = kv.split_once('=').context("odd per-subflow field")?;
            per_addr.insert(addr.to_string(), n.parse()?);
        }
        Ok(Split { per_addr, total })
    }
}

/// Cuts or restores link `link` at gw2's end (gw1's end may belong to the
/// stack under test).
fn gw2_link(tb: &Testbed, link: u32, up: bool) -> Result<()> {
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

fn extra(scheduler: &str, costs: &[Option<u32>]) -> DeviceExtra {
    DeviceExtra {
        scheduler: Some(scheduler.to_string()),
        costs: costs.to_vec(),
    }
}

// ------------------------------------------------------------ offered

fn assert_offers_all(list: &str, stack: &str) -> Result<()> {
    let offered: Vec<&str> = list.split_whitespace().collect();
    for want in dropshim_conf::BUILT_SCHEDULERS {
        ensure!(
            offered.contains(want),
            "{stack}'s net.mptcp.available_schedulers is {offered:?}, without {want}"
        );
    }
    Ok(())
}

#[test]
fn lkl_kernel_offers_every_scheduler_and_takes_each() -> Result<()> {
    let lib = liblkl()?;
    let lkl = dropshim_backend_lkl::Lkl::boot(&dropshim_backend_lkl::BootOptions {
        library: Some(lib),
        ..Default::default()
    })?;
    let list = lkl.sysctl("net.mptcp.available_schedulers")?;
    assert_offers_all(&list, "lkl")?;
    for name in dropshim_conf::BUILT_SCHEDULERS {
        lkl.set_sysctl("net.mptcp.scheduler", name)?;
        ensure!(lkl.sysctl("net.mptcp.scheduler")? == *name);
    }
    ensure!(
        lkl.set_sysctl("net.mptcp.scheduler", "nosuch").is_err(),
        "the library kernel took an unknown scheduler"
    );
    Ok(())
}

#[test]
fn uml_kernel_offers_every_scheduler_and_runs_the_chosen_one() -> Result<()> {
    let tb = testbed(None)?;
    let dev = UmlDevice::up_with(&tb, "gw1", &[1, 2], "so", &extra("costaware", &[]))?;
    let text = guest_mptcp(&dev.name)?;
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(" = "))
            .map(str::to_string)
    };
    let list = value("net.mptcp.available_schedulers")
        .with_context(|| format!("no available_schedulers in {text:?}"))?;
    assert_offers_all(&list, "uml")?;
    ensure!(
        value("net.mptcp.scheduler").as_deref() == Some("costaware"),
        "the guest runs scheduler {:?}, not the device file's costaware",
        value("net.mptcp.scheduler")
    );
    Ok(())
}

// ------------------------------------------------------------ behaviour

/// roundrobin on two equal links: each subflow carries 35-65 %.
fn roundrobin_splits_evenly(kind: Kind) -> Result<()> {
    let tb = testbed(Some(200))?;
    let stack = Stack::up(&tb, kind, "rr", &extra("roundrobin", &[]))?;
    let split = Upload::start(&tb, &stack, 32 * MIB, 0, 4 * MIB)?.finish()?;
    for link in [1, 2] {
        let share = split.share(&tb, link)?;
        eprintln!(
            "{kind:?} roundrobin: link {link} carried {:.1} %",
            share * 100.0
        );
        ensure!(
            (0.35..=0.65).contains(&share),
            "{kind:?} roundrobin: link {link} carried {:.1} % of the bytes ({:?})",
            share * 100.0,
            split.per_addr
        );
    }
    Ok(())
}

#[test]
fn uml_roundrobin_splits_equal_links_evenly() -> Result<()> {
    roundrobin_splits_evenly(Kind::Uml)
}

#[test]
fn lkl_roundrobin_splits_equal_links_evenly() -> Result<()> {
    roundrobin_splits_evenly(Kind::Lkl)
}

/// costaware with link 1 costly (cost 10) and link 2 cheap (cost 1), both
/// 200 Mbit/s, a client sending 4 Mbit/s: the cheap link has room, the
/// costly one carries under 5 %. Link 1 carries the connection's first
/// subflow, the one the kernel's `default` scheduler favours at this load
/// (about 70 % there, measured), so the split is costaware's doing. Then,
/// in a second transfer, link 2 is cut at a quarter: the transfer
/// completes over link 1, which carries most of it. (The offered load is low because the stack's own scheduling on a
/// busy machine turns a steady sender into bursts, and a burst larger than
/// the cheap subflow's window is what costaware rightly spills.)
fn costaware_keeps_to_the_cheap_link(kind: Kind) -> Result<()> {
    let tb = testbed(Some(200))?;
    let costs = [Some(10), Some(1)];
    let stack = Stack::up(&tb, kind, "ca", &extra("costaware", &costs))?;
    let rate = MIB / 2;

    let split = Upload::start(&tb, &stack, 3 * MIB, rate, MIB)?.finish()?;
    let costly = split.share(&tb, 1)?;
    eprintln!(
        "{kind:?} costaware, cheap link up: costly link carried {:.2} %",
        costly * 100.0
    );
    ensure!(
        costly < 0.05,
        "{kind:?} costaware: the costly link carried {:.1} % while the cheap one had room ({:?})",
        costly * 100.0,
        split.per_addr
    );

    let up = Upload::start(&tb, &stack, 3 * MIB, rate, MIB / 4)?;
    up.wait_progress(3 * MIB / 4)?;
    gw2_link(&tb, 2, false)?;
    let split = up.finish();
    gw2_link(&tb, 2, true)?;
    let split = split?;
    let costly = split.share(&tb, 1)?;
    eprintln!(
        "{kind:?} costaware, cheap link cut at 768 KiB: costly link carried {:.1} %",
        costly * 100.0
    );
    ensure!(
        costly > 0.5,
        "{kind:?} costaware: after the cheap link was cut the costly one carried only {:.1} % ({:?})",
        costly * 100.0,
        split.per_addr
    );
    Ok(())
}

#[test]
fn uml_costaware_keeps_to_the_cheap_link_until_it_is_cut() -> Result<()> {
    costaware_keeps_to_the_cheap_link(Kind::Uml)
}

#[test]
fn lkl_costaware_keeps_to_the_cheap_link_until_it_is_cut() -> Result<()> {
    costaware_keeps_to_the_cheap_link(Kind::Lkl)
}

/// blest on unequal links (link 1 at 100 Mbit/s, link 2 at 20 Mbit/s):
/// the transfer is intact, both subflows were used, and the fast link
/// carries the larger share (at least 60 %: its fair share of the capacity
/// is 83 %, and blest keeps the slow one from taking more than it can
/// without blocking the fast one).
fn blest_prefers_the_fast_link(kind: Kind) -> Result<()> {
    let tb = testbed(None)?;
    tb.set_rate(1, Some(100))?;
    tb.set_rate(2, Some(20))?;
    let stack = Stack::up(&tb, kind, "bl", &extra("blest", &[]))?;
    let split = Upload::start(&tb, &stack, 16 * MIB, 0, 4 * MIB)?.finish()?;
    let fast = split.share(&tb, 1)?;
    eprintln!(
        "{kind:?} blest: fast link carried {:.1} % ({:?})",
        fast * 100.0,
        split.per_addr
    );
    ensure!(
        fast >= 0.6,
        "{kind:?} blest: the fast link carried only {:.1} % ({:?})",
        fast * 100.0,
        split.per_addr
    );
    if split.per_addr.len() < 2 {
        bail!(
            "{kind:?} blest: only one subflow reached gw2 ({:?})",
            split.per_addr
        );
    }
    Ok(())
}

#[test]
fn uml_blest_transfer_is_intact_and_prefers_the_fast_link() -> Result<()> {
    blest_prefers_the_fast_link(Kind::Uml)
}

#[test]
fn lkl_blest_transfer_is_intact_and_prefers_the_fast_link() -> Result<()> {
    blest_prefers_the_fast_link(Kind::Lkl)
}
