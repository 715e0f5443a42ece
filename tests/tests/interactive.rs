//! Interactive traffic on every stack: request/response round trips that
//! never wait on anything dropshim adds, a program's TCP_CORK held and
//! released as on a kernel socket, and redis-benchmark (client and server
//! side). The peer in gw2 is a native MPTCP program (Debian's mptcpize),
//! so these tests depend only on the stack under test; each one proves
//! MPTCP at the peer (MPTcpExt counters) and checks the bytes.
//!
//! Round-trip times here are a behaviour check with a generous bound (a
//! round trip over 50 ms is a lost wakeup or a cork wait, not noise); the
//! latency figures themselves come from `dropshim bench --scenario rr`.

use anyhow::{bail, ensure, Context, Result};
use dropshim_tests::stack::{peer, Stack};
use dropshim_tests::*;
use std::process::Command;
use std::time::Duration;

const SHORT: Duration = Duration::from_secs(20);
const RUN: Duration = Duration::from_secs(120);

fn probe() -> String {
    target_dir().join("dropshim-rr").display().to_string()
}

/// Round trips per message size: enough that a wake-up lost about once in
/// a thousand round trips shows. Before the uml kernel's idle fix (patch
/// 0007: a guest that went idle with a frame's interrupt pending waited
/// for its next timer, 20 to 40 ms), two runs had 7 and 9 such waits
/// over 20 ms.
const ROUND_TRIPS: u64 = 10_000;

/// Round trips over 20 ms a run may have among all sizes: a few, for a
/// host that deschedules the program or the instance at the wrong moment
/// (a CI rehearsal saw two uml round trips of 20-25 ms in 30,000, the
/// other sizes' tails under 9 ms). What this guards against, a wakeup
/// that waits for a timer, gave 7 to 9 over 20 ms per run on uml before
/// its patch 0007; none may pass 50 ms.
const OVER_20MS_ALLOWED: u64 = 3;

/// 10,000 round trips each of 64 B, 1 KiB and 16 KiB with TCP_NODELAY, a
/// short transactions run and a few fresh connections: every echo intact
/// (the probe compares each byte and fails otherwise), none over 50 ms and
/// at most three over 20 ms, MPTCP with a joined subflow at the peer.
fn round_trips(stack_name: &str) -> Result<()> {
    let tb = two_gateways()?;
    let stack = Stack::up(stack_name, &tb, "rr")?;
    let port = unique_port();
    let addr = tb.addr4("gw2", 1)?;
    let before = mptcp_counters(tb.netns("gw2")?)?;
    let mut server = peer(&tb, &probe())?;
    server.args(["server", "--bind", &format!("{addr}:{port}")]);
    let _server = Background::spawn(&mut server, "dropshim-rr server")?;
    wait_listening(tb.netns("gw2")?, port, SHORT)?;
    let mut client = stack.command(&tb, &probe())?;
    client.args([
        "client",
        "--to",
        &format!("{addr}:{port}"),
        "--sizes",
        "64,1024,16384",
        "--count",
        &ROUND_TRIPS.to_string(),
        "--warmup",
        "10",
        "--conns",
        "1,8",
        "--tps-seconds",
        "0.3",
        "--setups",
        "5",
    ]);
    let out = run_ok(&mut client, RUN).context("dropshim-rr client (it checks every echo)")?;
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing the probe's report")?;
    let rows = report["latency"].as_array().context("no latency rows")?;
    ensure!(rows.len() == 3, "expected 3 sizes: {report}");
    let mut over_20ms = 0;
    for row in rows {
        ensure!(
            row["count"] == ROUND_TRIPS,
            "not every round trip was timed: {row}"
        );
        ensure!(
            row["over_50ms"] == 0,
            "{stack_name}: round trips over 50 ms (a lost wakeup or a cork wait): {row}"
        );
        over_20ms += row["over_20ms"].as_u64().context("no over_20ms count")?;
    }
    ensure!(
        over_20ms <= OVER_20MS_ALLOWED,
        "{stack_name}: {over_20ms} round trips over 20 ms (a wakeup that waited for a timer): {}",
        report["latency"]
    );
    for t in report["tps"].as_array().context("no tps rows")? {
        ensure!(
            t["transactions"].as_u64().unwrap_or(0) > 0,
            "{stack_name}: no transaction completed: {t}"
        );
    }
    let after = mptcp_counters(tb.netns("gw2")?)?;
    ensure!(
        // The first connection, the round trips', 1 + 8 for the
        // transactions and the 5 set-ups.
        delta(&before, &after, "MPCapableSYNRX") >= 1 + 1 + 1 + 8 + 5,
        "{stack_name}: the probe's connections were not all MPTCP at the peer"
    );
    ensure!(
        delta(&before, &after, "MPJoinSynRx") >= 1,
        "{stack_name}: no second subflow joined at the peer"
    );
    Ok(())
}

#[test]
fn interactive_native_round_trips_never_wait_and_echo_intact() -> Result<()> {
    round_trips("native")
}

#[test]
fn interactive_uml_round_trips_never_wait_and_echo_intact() -> Result<()> {
    round_trips("uml")
}

#[test]
fn interactive_lkl_round_trips_never_wait_and_echo_intact() -> Result<()> {
    round_trips("lkl")
}

/// Corked rounds the program sends; each is held, then released.
const CORK_ROUNDS: usize = 5;
/// The rounds every stack must hold until their release: the first.
/// Linux's MPTCP (host 6.18, and 6.12 in uml and lkl) at times sends a
/// later round at once, with or without dropshim: with mptcpize on both
/// ends, rounds 1 and 2 of 5 reached the peer 150 ms before their release
/// in 1 of 3 runs (README, known limits).
const CORK_HELD: usize = 1;

/// The peer: accepts one connection; the program sends ROUNDS rounds of
/// 1000 bytes, round r all of byte 65 + r. The peer notes on the monotonic
/// clock (shared by every namespace) when each round's first byte arrived,
/// answers one byte when a round is complete, and at end of stream prints
/// the arrival times and the sha256 of everything.
const CORK_PEER: &str = r#"
import hashlib, socket, sys, time
rounds = int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
c, _ = s.accept()
h = hashlib.sha256()
first, total = [], 0
while True:
    b = c.recv(65536)
    if not b:
        break
    now = time.clock_gettime(time.CLOCK_MONOTONIC)
    h.update(b)
    before, total = total, total + len(b)
    while len(first) < rounds and len(first) * 1000 < total:
        first.append(now)
    if total // 1000 > before // 1000:
        c.sendall(b"k" * (total // 1000 - before // 1000))
print("first %s sha256 %s" % (",".join("%.6f" % t for t in first), h.hexdigest()), flush=True)
"#;

/// The program: in each round, writes ten small pieces while corked
/// (TCP_CORK with TCP_NODELAY, as nginx's `tcp_nopush` does), holds them
/// 150 ms, clears the cork, notes when, and waits for the peer to have
/// the whole round before the next one.
///
/// MSG_MORE is not tested: Linux's own MPTCP sends MSG_MORE data at once
/// (host 6.18: the peer had it 150 ms before the release, where TCP held
/// it), so no MPTCP stack holds it; see the README's known limits.
const CORK_PROGRAM: &str = r#"
import hashlib, socket, sys, time
rounds = int(sys.argv[3])
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
h = hashlib.sha256()
released = []
for r in range(rounds):
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    for _ in range(10):
        p = bytes([65 + r]) * 100
        s.sendall(p)
        h.update(p)
    time.sleep(0.15)
    released.append(time.clock_gettime(time.CLOCK_MONOTONIC))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
    if s.recv(1) != b"k":
        sys.exit("the peer did not confirm round %d" % r)
s.close()
print("released %s sha256 %s" % (",".join("%.6f" % t for t in released), h.hexdigest()), flush=True)
"#;

/// Per round: (first byte at the peer, release at the program); the
/// digests are checked equal.
fn corked(stack_name: &str) -> Result<Vec<(f64, f64)>> {
    let tb = two_gateways()?;
    let stack = Stack::up(stack_name, &tb, "ck")?;
    let dir = tempfile::tempdir()?;
    let peer_py = dir.path().join("peer.py");
    let prog_py = dir.path().join("program.py");
    std::fs::write(&peer_py, CORK_PEER)?;
    std::fs::write(&prog_py, CORK_PROGRAM)?;
    let port = unique_port();
    let addr = tb.addr4("gw2", 1)?.to_string();
    let rounds = CORK_ROUNDS.to_string();
    let before = mptcp_counters(tb.netns("gw2")?)?;
    let mut server = peer(&tb, "python3")?;
    server
        .arg(&peer_py)
        .args([&addr, &port.to_string(), &rounds]);
    let server = Background::spawn(&mut server, "cork peer")?;
    wait_listening(tb.netns("gw2")?, port, SHORT)?;
    let mut program = stack.command(&tb, "python3")?;
    program
        .arg(&prog_py)
        .args([&addr, &port.to_string(), &rounds]);
    let out = run_ok(&mut program, RUN)?;
    let peer_out = server.wait(SHORT)?;
    let field = |text: &str, key: &str| -> Result<String> {
        let mut words = text.split_whitespace();
        while let Some(w) = words.next() {
            if w == key {
                return words.next().map(str::to_string).context("value missing");
            }
        }
        bail!("no {key} in {text:?}")
    };
    let times = |text: &str, key: &str| -> Result<Vec<f64>> {
        let list = field(text, key)?;
        let parsed: Result<Vec<f64>, _> = list.split(',').map(str::parse).collect();
        let parsed = parsed.with_context(|| format!("odd {key} list {list:?}"))?;
        ensure!(
            parsed.len() == CORK_ROUNDS,
            "{key}: {} rounds of {CORK_ROUNDS} in {text:?}",
            parsed.len()
        );
        Ok(parsed)
    };
    let prog = String::from_utf8_lossy(&out.stdout).to_string();
    let got = String::from_utf8_lossy(&peer_out.stdout).to_string();
    ensure!(
        field(&prog, "sha256")? == field(&got, "sha256")?,
        "{stack_name}: the peer's bytes differ from the program's: {prog} / {got}"
    );
    let after = mptcp_counters(tb.netns("gw2")?)?;
    ensure!(
        delta(&before, &after, "MPCapableSYNRX") >= 1,
        "{stack_name}: the connection was not MPTCP at the peer"
    );
    Ok(times(&got, "first")?
        .into_iter()
        .zip(times(&prog, "released")?)
        .collect())
}

/// Held while corked (in none of the first `held` rounds does anything
/// reach the peer in the 150 ms before the release), and sent at once when
/// released: within 50 ms in all rounds but at most one. A wait that
/// dropshim added (a cork of its own, a lost wakeup) shows in every round;
/// one late round is the scheduler of a busy host holding a user-space
/// kernel off its CPU.
fn cork_holds_until_release(stack_name: &str, held: usize) -> Result<()> {
    let rounds = corked(stack_name)?;
    let delays: Vec<String> = rounds
        .iter()
        .map(|(first, released)| format!("{:.1}", (first - released) * 1e3))
        .collect();
    eprintln!("{stack_name}: release to first byte at the peer, ms: {delays:?}");
    for (r, (first, released)) in rounds.iter().enumerate().take(held) {
        ensure!(
            first >= released,
            "{stack_name}: round {r}: the peer had bytes {:.1} ms before the program released them",
            (released - first) * 1e3
        );
    }
    let late = rounds
        .iter()
        .filter(|(first, released)| first - released >= 0.05)
        .count();
    ensure!(
        late <= 1,
        "{stack_name}: released bytes took 50 ms or more to reach the peer in {late} of {CORK_ROUNDS} rounds (ms: {delays:?})"
    );
    Ok(())
}

#[test]
fn interactive_native_cork_holds_until_uncork() -> Result<()> {
    cork_holds_until_release("native", CORK_HELD)
}

#[test]
fn interactive_uml_cork_holds_until_uncork() -> Result<()> {
    cork_holds_until_release("uml", CORK_HELD)
}

#[test]
fn interactive_lkl_cork_holds_until_uncork() -> Result<()> {
    cork_holds_until_release("lkl", CORK_HELD)
}

/// redis-benchmark against redis-server, 50 connections, GET and SET:
/// `client_on_stack` puts redis-benchmark on the stack (server native in
/// gw2), else redis-server runs on the stack and the native
/// redis-benchmark in gw2 drives it. Every request must complete (the
/// benchmark checks each reply) and the connections be MPTCP at gw2.
fn redis(stack_name: &str, client_on_stack: bool) -> Result<()> {
    for tool in ["redis-server", "redis-benchmark"] {
        ensure!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()?
                .status
                .success(),
            "{tool} missing: scripts/setup.sh installs it"
        );
    }
    let tb = two_gateways()?;
    let stack = Stack::up(stack_name, &tb, "rd")?;
    let port = unique_port().to_string();
    let requests = "5000";
    let before = mptcp_counters(tb.netns("gw2")?)?;
    let server_addr = if client_on_stack {
        tb.addr4("gw2", 1)?.to_string()
    } else {
        Stack::address(&tb)?
    };
    let server_args = [
        "--port",
        port.as_str(),
        "--bind",
        server_addr.as_str(),
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
    ];
    let mut server = if client_on_stack {
        peer(&tb, "redis-server")?
    } else {
        stack.command(&tb, "redis-server")?
    };
    server.args(server_args);
    let _server = Background::spawn(&mut server, "redis-server")?;
    let mut client = if client_on_stack {
        stack.command(&tb, "redis-benchmark")?
    } else {
        peer(&tb, "redis-benchmark")?
    };
    client.args([
        "-h",
        server_addr.as_str(),
        "-p",
        port.as_str(),
        "-c",
        "50",
        "-n",
        requests,
        "-t",
        "get,set",
        "--csv",
    ]);
    // The server inside a stack is not visible to `ss` in the host
    // namespace; wait until redis answers a PING from gw2.
    wait_until(SHORT, "redis-server answering", || {
        let mut ping = match plain(&tb, "gw2", "redis-cli") {
            Ok(c) => c,
            Err(_) => return false,
        };
        ping.args(["-h", &server_addr, "-p", &port, "ping"]);
        run_bounded(&mut ping, Duration::from_secs(5))
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
            .unwrap_or(false)
    })?;
    let out = run_ok(&mut client, RUN)?;
    let csv = String::from_utf8_lossy(&out.stdout);
    for test in ["\"SET\"", "\"GET\""] {
        let line = csv
            .lines()
            .find(|l| l.starts_with(test))
            .with_context(|| format!("no {test} result in {csv}"))?;
        let rps: f64 = line
            .split(',')
            .nth(1)
            .map(|f| f.trim_matches('"'))
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("no requests per second in {line}"))?;
        ensure!(rps > 0.0, "{test}: {line}");
        eprintln!("{stack_name} (client on stack: {client_on_stack}) {test}: {rps:.0} requests/s");
    }
    let after = mptcp_counters(tb.netns("gw2")?)?;
    let mptcp = if client_on_stack {
        delta(&before, &after, "MPCapableSYNRX")
    } else {
        delta(&before, &after, "MPCapableSYNACKRX")
    };
    ensure!(
        mptcp >= 50,
        "{stack_name}: only {mptcp} MPTCP connections at gw2 for 50 benchmark clients"
    );
    Ok(())
}

#[test]
fn interactive_native_redis_benchmark_client_and_server() -> Result<()> {
    redis("native", true)?;
    redis("native", false)
}

#[test]
fn interactive_uml_redis_benchmark_client_and_server() -> Result<()> {
    redis("uml", true)?;
    redis("uml", false)
}

#[test]
fn interactive_lkl_redis_benchmark_client_and_server() -> Result<()> {
    redis("lkl", true)?;
    redis("lkl", false)
}
