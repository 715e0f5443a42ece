//! Reliability on the native backend: nothing lost, nothing hung, under
//! load, faults and bad input. Every test name contains `reliability`, so
//! `cargo test reliability` runs the suite; CI runs the bounded sizes
//! below, `scripts/reliability-long.sh` the long ones (RELIABILITY_*).
//!
//! Each check is what a user would see: every byte verified by sha256 in
//! both directions, MPTCP proven per connection (MPTCP_INFO without the
//! fallback flag) and at the peer (MPTcpExt counters), errnos compared
//! with the same calls made without the shim.

use anyhow::{ensure, Result};
use dropshim_testbed::Testbed;
use dropshim_tests::reliability::*;
use dropshim_tests::*;
use std::process::Command;
use std::time::{Duration, Instant};

const SHORT: Duration = Duration::from_secs(20);
const LONG: Duration = Duration::from_secs(600);

#[test]
fn reliability_load_64_connections_every_byte_mptcp_no_leaks() -> Result<()> {
    let conns = knob("RELIABILITY_CONNS", 64)?;
    let max_size = knob("RELIABILITY_MAX_SIZE", 2 << 20)?;
    let rounds = load_rounds(conns, max_size, 5)?;
    let tb = two_gateways()?;
    let scripts = Scripts::new()?;
    let port = unique_port();
    let before = mptcp_counters(tb.netns("gw2")?)?;
    let server = load_server(&tb, &scripts, port)?;
    let client = load_client(
        &tb,
        &scripts,
        port,
        (conns, rounds, max_size),
        server.pid(),
        &[],
    )?;
    let mut reports = Vec::new();
    let started = Instant::now();
    while let Some(line) = client.next_line(LONG)? {
        if line.starts_with("round=") {
            reports.push(fields(&line));
        }
    }
    let elapsed = started.elapsed();
    let (status, _, client_err) = client.finish(SHORT)?;
    ensure!(status.success(), "load client failed: {client_err}");
    let server_err = stop_server(server)?;
    ensure!(
        !server_err.contains("error"),
        "the server saw errors: {server_err}"
    );
    ensure!(
        reports.len() as u64 == rounds,
        "{} of {rounds} rounds reported",
        reports.len()
    );
    let mut bytes = 0;
    for r in &reports {
        bytes += get(r, "bytes");
        ensure!(
            get(r, "mptcp") == conns,
            "round {}: only {} of {conns} connections were MPTCP at the client",
            get(r, "round"),
            get(r, "mptcp")
        );
        ensure!(
            get(r, "joined") >= 1,
            "round {}: no second subflow",
            get(r, "round")
        );
    }
    let after = mptcp_counters(tb.netns("gw2")?)?;
    let capable = delta(&before, &after, "MPCapableSYNRX");
    let joins = delta(&before, &after, "MPJoinSynRx");
    ensure!(
        capable >= conns * rounds,
        "the server saw {capable} MP_CAPABLE SYNs for {} connections",
        conns * rounds
    );
    ensure!(joins >= 1, "the server saw no MP_JOIN");
    // Round 0 warms the allocators up; from round 1 on nothing may grow.
    let base = &reports[1.min(reports.len() - 1)];
    let last = &reports[reports.len() - 1];
    for who in ["client", "server"] {
        for k in ["fds", "threads"] {
            let key = format!("{who}_{k}");
            ensure!(
                get(last, &key) <= get(base, &key),
                "{key} grew from {} to {} across rounds",
                get(base, &key),
                get(last, &key)
            );
        }
        let key = format!("{who}_rss_kib");
        ensure!(
            get(last, &key) <= get(base, &key) + 8 * 1024,
            "{key} grew from {} to {} KiB across rounds",
            get(base, &key),
            get(last, &key)
        );
    }
    eprintln!(
        "reliability load: {} connections in {rounds} rounds, {bytes} bytes verified in {elapsed:?}, \
         {capable} MP_CAPABLE / {joins} MP_JOIN at the server",
        conns * rounds
    );
    Ok(())
}

#[test]
fn reliability_path_cut_and_restored_during_load_loses_nothing() -> Result<()> {
    path_cuts_during_load("reliability faults", |tb, node| {
        shimmed(tb, node, "python3", &[])
    })
}

/// The same load and cuts with no dropshim at all: client and server
/// under `mptcpize run`, the host kernel's MPTCP alone. The soak's
/// reference (scripts/soak.sh --stack mptcpize): a mismatch here is not
/// the shim's.
#[test]
fn reliability_mptcpize_path_cut_and_restored_during_load_loses_nothing() -> Result<()> {
    path_cuts_during_load("reliability mptcpize faults", mptcpized)
}

/// The path-cut test on the host kernel, each program started by
/// `python`; repeated while a soak's budget lasts (soak_path_cuts).
fn path_cuts_during_load(what: &str, python: fn(&Testbed, &str) -> Result<Command>) -> Result<()> {
    let conns = knob("RELIABILITY_CONNS", 64)?;
    let max_size = knob("RELIABILITY_FAULT_MAX_SIZE", 16 << 20)?;
    let min_faults = knob("RELIABILITY_MIN_FAULTS", 4)?;
    let alternate = knob("RELIABILITY_CUT_BOTH", 0)? != 0;
    let tb = two_gateways()?;
    let scripts = Scripts::new()?;
    soak_path_cuts(&tb, || {
        let port = unique_port();
        let before = mptcp_counters(tb.netns("gw2")?)?;
        let server = load_server_with(&tb, &scripts, port, python(&tb, "gw2")?)?;
        let client = load_client_with(
            &tb,
            &scripts,
            port,
            (conns, 1, max_size),
            server.pid(),
            python(&tb, "gw1")?,
        )?;
        client.expect("connected=", SHORT)?;
        // Every connection is up before the first cut. Link 2 carries the
        // joined subflows; link 1 the initial ones, and stays up: the
        // kernel path manager never retries a join that failed, so on
        // this testbed some of 64 simultaneous connections have one
        // subflow only (gw1's MPJoinSynTxConnectErr counts them) and could
        // not survive a link-1 cut. RELIABILITY_CUT_BOTH=1 alternates both
        // links anyway.
        let cuts = PathCuts {
            at: CutAt::Link,
            alternate,
            ..PathCuts::new(&tb, before, conns, min_faults)
        }
        .run(client, server)?;
        ensure!(
            cuts.round.get("mptcp") == Some(&conns),
            "not all MPTCP: {:?}",
            cuts.round
        );
        eprintln!(
            "{what}: {} path cuts during {} bytes over {conns} connections, \
             all verified; longest wait for progress on the surviving path {:?}; ran on {:?} after the cuts stopped",
            cuts.faults,
            get(&cuts.round, "bytes"),
            cuts.worst,
            cuts.settled
        );
        Ok(cuts)
    })?;
    Ok(())
}

/// Starts peer.py's server in gw2 and its client in gw1 (both shimmed).
fn peers(
    tb: &Testbed,
    scripts: &Scripts,
    server_mode: &str,
    client_mode: &str,
) -> Result<(Lines, Lines)> {
    let ip = tb.addr4("gw2", 1)?.to_string();
    let port = unique_port();
    let server = native_peer_server(tb, scripts, port, server_mode)?;
    let port = port.to_string();
    let joins_before = mptcp_counters(tb.netns("gw2")?)?;
    let mut c = shimmed(tb, "gw1", "python3", &[])?;
    c.arg(scripts.path("peer.py"))
        .args(["client", &ip, &port, client_mode]);
    let client = Lines::spawn(&mut c, "peer client")?;
    client.expect("connected", SHORT)?;
    // Kill only once the second subflow has joined (or clearly will not):
    // these cases are about established connections. A kill while the
    // join handshake is in flight is a kernel race of its own (seen once
    // under load: the peer's recv then waited > 10 s).
    let _ = wait_counter_grows(
        tb.netns("gw2")?,
        &joins_before,
        "MPJoinAckRx",
        Duration::from_secs(5),
    );
    Ok((server, client))
}

#[test]
fn reliability_peer_killed_gives_an_error_never_a_hang() -> Result<()> {
    let tb = two_gateways()?;
    let scripts = Scripts::new()?;
    let before = mptcp_counters(tb.netns("gw2")?)?;
    let bound = Duration::from_secs(2);
    let mut figures = Vec::new();

    // Client blocked in recv(), server killed: EOF before the reply.
    let (server, client) = peers(&tb, &scripts, "hold", "recv")?;
    server.expect("accepted", SHORT)?;
    let (took, said) = kill_and_time(&tb, server, client, Duration::from_secs(10))?;
    ensure!(said.contains("error="), "client said {said}");
    ensure!(took < bound, "client took {took:?} to notice");
    figures.push(format!("recv-blocked client: {said} after {took:?}"));

    // Client blocked in send() into a server that stopped reading: the
    // killed server's unread data means a reset.
    let (server, client) = peers(&tb, &scripts, "stall", "send")?;
    server.expect("stalled", SHORT)?;
    let (took, said) = kill_and_time(&tb, server, client, Duration::from_secs(10))?;
    ensure!(
        said.contains("error=ECONNRESET") || said.contains("error=EPIPE"),
        "client said {said}"
    );
    ensure!(took < bound, "client took {took:?} to notice");
    figures.push(format!("send-blocked client: {said} after {took:?}"));

    // Server blocked in recv(), client killed: the server sees the end.
    let (server, client) = peers(&tb, &scripts, "hold", "recv")?;
    server.expect("accepted", SHORT)?;
    let (took, said) = kill_and_time(&tb, client, server, Duration::from_secs(10))?;
    ensure!(
        said.contains("eof") || said.contains("error="),
        "server said {said}"
    );
    ensure!(took < bound, "server took {took:?} to notice");
    figures.push(format!("recv-blocked server: {said} after {took:?}"));

    let after = mptcp_counters(tb.netns("gw2")?)?;
    ensure!(
        delta(&before, &after, "MPCapableSYNRX") >= 3,
        "peers were not MPTCP"
    );
    eprintln!("reliability peer killed: {}", figures.join("; "));
    Ok(())
}

/// Runs a probe script in gw1 with and without the shim; returns both
/// outputs' lines.
fn with_and_without(
    tb: &Testbed,
    scripts: &Scripts,
    script: &str,
    args: &[String],
) -> Result<(Vec<String>, Vec<String>)> {
    let mut out = Vec::new();
    for shim in [false, true] {
        let mut cmd = if shim {
            shimmed(tb, "gw1", "python3", &[])?
        } else {
            plain(tb, "gw1", "python3")?
        };
        cmd.arg(scripts.path(script)).args(args);
        let res = run_bounded(&mut cmd, Duration::from_secs(60))?;
        let stdout = String::from_utf8_lossy(&res.stdout).into_owned();
        ensure!(
            res.status.success(),
            "{script} {} ({}): {stdout}\n{}",
            if shim { "shimmed" } else { "plain" },
            res.status,
            String::from_utf8_lossy(&res.stderr)
        );
        out.push(stdout.lines().map(str::to_string).collect::<Vec<_>>());
    }
    let shimmed = out.pop().unwrap_or_default();
    let plain = out.pop().unwrap_or_default();
    Ok((plain, shimmed))
}

/// A listener in gw2 for probes that need a live peer.
fn listener(tb: &Testbed, port: u16) -> Result<Background> {
    let ip = tb.addr4("gw2", 1)?;
    let mut cmd = plain(tb, "gw2", "python3")?;
    cmd.args([
        "-c",
        &format!(
            "import socket\ns=socket.socket()\ns.bind(('{ip}',{port}))\ns.listen(64)\n\
             import signal\nsignal.pause()"
        ),
    ]);
    let bg = Background::spawn(&mut cmd, "listener")?;
    wait_listening(tb.netns("gw2")?, port, SHORT)?;
    Ok(bg)
}

/// Compares two JSON objects printed with sorted keys, entry by entry, so
/// a mismatch names the call.
fn diff_entries(plain: &str, shimmed: &str) -> Vec<String> {
    let split = |s: &str| -> Vec<String> {
        s.trim_matches(|c| c == '{' || c == '}')
            .split("], \"")
            .map(str::to_string)
            .collect()
    };
    let (a, b) = (split(plain), split(shimmed));
    let mut out: Vec<String> = a
        .iter()
        .zip(b.iter())
        .filter(|(x, y)| x != y)
        .map(|(x, y)| format!("plain {x} / shimmed {y}"))
        .collect();
    if a.len() != b.len() {
        out.push(format!("{} entries plain, {} shimmed", a.len(), b.len()));
    }
    out
}

#[test]
fn reliability_invalid_arguments_get_the_kernels_errno() -> Result<()> {
    let tb = two_gateways()?;
    let scripts = Scripts::new()?;
    let port = unique_port();
    let _peer = listener(&tb, port)?;
    let args = [
        tb.addr4("gw1", 1)?.to_string(),
        tb.addr4("gw2", 1)?.to_string(),
        port.to_string(),
    ];
    let (plain, shim) = with_and_without(&tb, &scripts, "badcalls.py", &args)?;
    ensure!(
        plain.len() == 2 && shim.len() == 2,
        "probe output: {plain:?} {shim:?}"
    );
    let diffs = diff_entries(&plain[0], &shim[0]);
    ensure!(
        diffs.is_empty(),
        "the shim differs from the kernel:\n{}",
        diffs.join("\n")
    );
    // The probe's own sanity: the kernel really refused these.
    for e in [
        "\"connect_bad_ptr\": [-1, 14",
        "\"connect_short_len\": [-1, 22",
        "\"connect_wrong_family_v6_on_v4\": [-1, 97",
        "\"setsockopt_null_value\": [-1, 14",
        "\"getsockopt_protocol_short_2\": [0, 0, [2, \"0600\"]",
        "\"setsockopt_bad_congestion\": [-1, 2",
    ] {
        ensure!(plain[0].contains(e), "expected {e} in {}", plain[0]);
    }
    // Bad calls must not turn MPTCP off for the rest of the process.
    ensure!(
        shim[1].contains("\"mptcp_after\": true"),
        "after the bad calls: {}",
        shim[1]
    );
    ensure!(
        plain[1].contains("\"mptcp_after\": false"),
        "plain run: {}",
        plain[1]
    );
    let calls = plain[0].matches("], \"").count() + 1;
    eprintln!(
        "reliability bad input: {calls} invalid calls, same result with and without the shim"
    );
    Ok(())
}

#[test]
fn reliability_signals_during_blocking_calls_behave_as_the_kernels() -> Result<()> {
    let tb = two_gateways()?;
    let scripts = Scripts::new()?;
    let port = unique_port();
    // An address on link 1 that nobody holds: connect() blocks until the
    // neighbour lookup fails, long enough to be interrupted.
    let args = [
        tb.addr4("gw1", 1)?.to_string(),
        tb.addr4("gw2", 1)?.to_string(),
        port.to_string(),
        "198.18.1.77".to_string(),
    ];
    let (plain, shim) = with_and_without(&tb, &scripts, "sig.py", &args)?;
    ensure!(
        plain.len() == 2 && shim.len() == 2,
        "probe output: {plain:?} {shim:?}"
    );
    ensure!(
        plain[0] == shim[0],
        "signals behave differently:\nplain   {}\nshimmed {}",
        plain[0],
        shim[0]
    );
    for e in [
        "\"accept_norestart\": {\"errno\": 4, \"handled\": true, \"ok\": false}",
        "\"accept_restart\": {\"errno\": 0, \"handled\": true, \"ok\": true}",
        "\"recv_norestart\": {\"errno\": 4, \"handled\": true, \"ok\": false}",
        "\"recv_restart\": {\"errno\": 0, \"handled\": true, \"ok\": true}",
        "\"connect_norestart\": {\"errno\": 4, \"handled\": true, \"ok\": false}",
    ] {
        ensure!(plain[0].contains(e), "expected {e} in {}", plain[0]);
    }
    ensure!(
        shim[1] == "mptcp_norestart=1 mptcp_restart=1",
        "shimmed sockets were not MPTCP: {}",
        shim[1]
    );
    ensure!(plain[1] == "mptcp_norestart=0 mptcp_restart=0");
    Ok(())
}

/// `fork.py` in gw1 (`client`: python3 on the stack under test) against
/// the load server in gw2 (`server`); fails with the script's output and
/// the server's account (which says where an upload went wrong), and
/// otherwise returns both.
fn run_fork(
    tb: &Testbed,
    scripts: &Scripts,
    server: Command,
    mut client: Command,
) -> Result<(String, String)> {
    let port = unique_port();
    let server = load_server_with(tb, scripts, port, server)?;
    client.arg(scripts.path("fork.py")).args([
        tb.addr4("gw1", 1)?.to_string(),
        tb.addr4("gw2", 1)?.to_string(),
        port.to_string(),
    ]);
    let out = run_bounded(&mut client, Duration::from_secs(60))?;
    let server_err = stop_server(server)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "fork.py failed ({}): {text}{}\nthe server said: {server_err}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(!server_err.contains("error"), "server errors: {server_err}");
    Ok((text, server_err))
}

#[test]
fn reliability_fork_with_open_sockets_used_by_parent_and_child() -> Result<()> {
    let tb = two_gateways()?;
    let scripts = Scripts::new()?;
    let before = mptcp_counters(tb.netns("gw2")?)?;
    let server = shimmed(&tb, "gw2", "python3", &[])?;
    let client = shimmed(&tb, "gw1", "python3", &[])?;
    let (text, _) = run_fork(&tb, &scripts, server, client)?;
    for e in [
        "child mptcp_accepted=1 mptcp_own=1",
        "parent mptcp_shared=1 mptcp_to_child=1",
    ] {
        ensure!(text.contains(e), "expected {e}: {text}");
    }
    let after = mptcp_counters(tb.netns("gw2")?)?;
    ensure!(delta(&before, &after, "MPCapableSYNRX") >= 2);
    Ok(())
}

/// The host kernel's own bug, without dropshim: `fork.py` with the load
/// server and the client both under `mptcpize run` (no shim at either
/// end). About one run in 60 to 90 with both CPUs busy, the child's own
/// connection reaches the server with 632 bytes missing, always at
/// offset 85712 of its upload (the server then names offset 86344), the
/// same hole `reliability_fork_with_open_sockets_used_by_parent_and_child`
/// meets under the shim. Ignored: it fails only as often as the kernel
/// does; run it in a loop to reproduce (README, known limits).
#[test]
#[ignore = "a host-kernel reproducer: run in a loop with --run-ignored only"]
fn host_kernel_fork_upload_hole_without_dropshim() -> Result<()> {
    let tb = two_gateways()?;
    let scripts = Scripts::new()?;
    let (server, client) = (mptcpized(&tb, "gw2")?, mptcpized(&tb, "gw1")?);
    let (text, _) = run_fork(&tb, &scripts, server, client)?;
    ensure!(
        text.contains("parent mptcp_shared=1") && text.contains("mptcp_own=1"),
        "the connections were not MPTCP: {text}"
    );
    Ok(())
}

/// The load server's end-of-stream check can fail: a client that sends
/// one word more than its header announced (the next word of its own
/// pattern, as a repeated segment would) is named by the server. No
/// shim: this checks the check.
#[test]
fn reliability_load_server_names_bytes_after_an_upload() -> Result<()> {
    const CLIENT: &str = r#"import array, hashlib, socket, struct, sys
n = 1 << 16
base = 0xD5A7 << 48 | 3 << 32
body = array.array("Q", range(base, base + n // 8)).tobytes()
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(struct.pack(">QQ", n, 0) + body + struct.pack("=Q", base + n // 8))
got = b""
while len(got) < 64:
    b = s.recv(64 - len(got))
    if not b:
        break
    got += b
s.shutdown(socket.SHUT_WR)
while s.recv(1 << 16):
    pass
s.close()
ok = got == hashlib.sha256(body).digest() + hashlib.sha256(b"").digest()
print("answered" if ok else "answer=" + got.hex())
"#;
    let scripts = Scripts::new()?;
    let port = unique_port();
    let mut srv = Command::new("python3");
    srv.arg(scripts.path("load.py"))
        .args(["server", "127.0.0.1", &port.to_string()]);
    let server = Lines::spawn(&mut srv, "load server")?;
    server.expect("listening", SHORT)?;
    let out = run_bounded(
        Command::new("python3")
            .args(["-c", CLIENT])
            .arg(port.to_string()),
        SHORT,
    )?;
    let server_err = stop_server(server)?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && text.trim() == "answered",
        "the client should get the digest of the announced bytes and the trailer: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        server_err.contains("error: an upload of 65536 bytes differs after its end")
            && server_err.contains("the word of offset 65536 of connection 3"),
        "the server should name the word after the upload: {server_err}"
    );
    Ok(())
}

/// Writes a device file and runs `dropshim check` and, in gw1, `dropshim
/// up` then `down`; returns (check ok, check output, up ok, up output).
fn check_and_up(tb: &Testbed, body: &str) -> Result<(bool, String, bool, String)> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("device.toml");
    std::fs::write(&file, body)?;
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let check = run_bounded(
        Command::new(cli_path())
            .arg("check")
            .arg("--config")
            .arg(&file),
        SHORT,
    )?;
    let mut up = plain(tb, "gw1", &cli_path().display().to_string())?;
    up.arg("up").arg("--config").arg(&file);
    let upped = run_bounded(&mut up, SHORT)?;
    if upped.status.success() {
        let mut down = plain(tb, "gw1", &cli_path().display().to_string())?;
        run_ok(down.arg("down").arg("--config").arg(&file), SHORT)?;
    }
    Ok((
        check.status.success(),
        text(&check),
        upped.status.success(),
        text(&upped),
    ))
}

#[test]
fn reliability_absurd_device_values_are_refused_with_a_place() -> Result<()> {
    let tb = two_gateways()?;
    let a1 = tb.addr4("gw1", 1)?;
    let head = "[device]\nname = \"absurd\"\nbackend = \"native\"\n";
    let iface = |name: &str, addr: &str| {
        format!(
            "\n[[interfaces]]\nname = \"{name}\"\naddresses = [\"{addr}/24\"]\nendpoint = [\"subflow\"]\n"
        )
    };
    // (what, file, check must pass, up must pass, text the error must hold)
    let cases: Vec<(&str, String, bool, bool, &str)> = vec![
        (
            "huge limits",
            format!("{head}\n[mptcp]\nlimits = {{ subflows = 4000000000, add_addr_accepted = 2 }}\n"),
            false,
            false,
            ":6:",
        ),
        (
            "limit above the kernel's 8",
            format!("{head}\n[mptcp]\nlimits = {{ subflows = 9, add_addr_accepted = 2 }}\n"),
            false,
            false,
            "maximum of 8",
        ),
        (
            "limit beyond 64 bits",
            format!("{head}\n[mptcp]\nlimits = {{ subflows = 99999999999999999999999, add_addr_accepted = 2 }}\n"),
            false,
            false,
            ":6:",
        ),
        (
            "negative limit",
            format!("{head}\n[mptcp]\nlimits = {{ subflows = -1, add_addr_accepted = 2 }}\n"),
            false,
            false,
            ":6:",
        ),
        (
            "duplicate interfaces",
            format!("{head}{}{}", iface("link1", &a1.to_string()), iface("link1", "198.18.9.1")),
            false,
            false,
            "already described",
        ),
        (
            "an address not on its interface",
            format!("{head}{}", iface("link1", "198.18.77.1")),
            true,
            false,
            "is not configured on interface",
        ),
        (
            "an interface that does not exist",
            format!("{head}{}", iface("nosuch0", "198.18.77.1")),
            true,
            false,
            "nosuch0",
        ),
        (
            "zero limits (valid: no extra subflows)",
            format!("{head}{}\n[mptcp]\nlimits = {{ subflows = 0, add_addr_accepted = 0 }}\n", iface("link1", &a1.to_string())),
            true,
            true,
            "",
        ),
    ];
    let count = cases.len();
    for (what, body, check_ok, up_ok, needle) in cases {
        let (c_ok, c_out, u_ok, u_out) = check_and_up(&tb, &body)?;
        ensure!(
            c_ok == check_ok,
            "{what}: check ok={c_ok}, want {check_ok}: {c_out}"
        );
        ensure!(u_ok == up_ok, "{what}: up ok={u_ok}, want {up_ok}: {u_out}");
        let shown = if !check_ok { &c_out } else { &u_out };
        ensure!(
            shown.contains(needle),
            "{what}: the error should contain {needle:?}: {shown}"
        );
        ensure!(
            !shown.contains("panicked"),
            "{what}: dropshim panicked: {shown}"
        );
    }
    eprintln!("reliability absurd values: {count} device files judged as expected");
    Ok(())
}
