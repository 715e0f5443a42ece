//! Reliability on the uml backend: gw1's links belong to a UML instance,
//! the load client in gw1 runs under the shim with backend uml (its TCP
//! lives in the instance, as MPTCP), the load server in gw2 under the
//! shim with the native backend. Every test name contains `reliability`
//! and `uml`. Bounded for CI (the three together take well under three
//! minutes); the RELIABILITY_* knobs of tests/src/reliability.rs make
//! them longer.
//!
//! What is checked is what a user would see: every byte verified by
//! sha256 in both directions (load.py), MPTCP proven at the peer (gw2's
//! MPTcpExt counters; the client's descriptors are bridges, host TCP),
//! programs getting errors instead of hangs when the instance dies, the
//! instance working again after a restart, and a long-lived shimmed
//! process keeping its descriptors and threads flat across rounds.

use anyhow::{ensure, Context, Result};
use dropshim_testbed::Testbed;
use dropshim_tests::reliability::*;
use dropshim_tests::uml::UmlDevice;
use dropshim_tests::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const SHORT: Duration = Duration::from_secs(20);
const LONG: Duration = Duration::from_secs(300);

/// The load client in gw1 on backend uml (asyncio: non-blocking
/// connects), otherwise as the native one.
fn load_client_uml(
    tb: &Testbed,
    dev: &UmlDevice,
    scripts: &Scripts,
    port: u16,
    shape: (u64, u64, u64),
    server_pid: u32,
) -> Result<Lines> {
    let config = dev.config().display().to_string();
    load_client(
        tb,
        scripts,
        port,
        shape,
        server_pid,
        &[("DROPSHIM_CONFIG", &config)],
    )
}

/// One small connection from the instance to gw2 before the load: it
/// resolves the neighbours on both links (the join goes over link 2).
/// Without it, 64 simultaneous connections from a freshly booted
/// instance stall on retransmissions: 3 rounds took 27 to 53 s instead
/// of 2 (see the README's known limits).
fn warm_up(
    tb: &Testbed,
    dev: &UmlDevice,
    scripts: &Scripts,
    port: u16,
    server: &Lines,
) -> Result<()> {
    let client = load_client_uml(tb, dev, scripts, port, (1, 1, 1024), server.pid())?;
    run_rounds(client, 1).context("warm-up connection")?;
    Ok(())
}

/// Stops the server and returns its stderr.
fn stop(server: Lines) -> Result<String> {
    server.signal(libc::SIGTERM)?;
    let (_, _, stderr) = server.finish(SHORT)?;
    Ok(stderr)
}

/// Runs a load client to the end; returns its round reports.
fn run_rounds(client: Lines, rounds: u64) -> Result<Vec<HashMap<String, u64>>> {
    let mut reports = Vec::new();
    while let Some(line) = client.next_line(LONG)? {
        if line.starts_with("round=") {
            reports.push(fields(&line));
        }
    }
    let (status, _, stderr) = client.finish(SHORT)?;
    ensure!(status.success(), "load client failed: {stderr}");
    ensure!(
        reports.len() as u64 == rounds,
        "{} of {rounds} rounds reported",
        reports.len()
    );
    Ok(reports)
}

fn get(r: &HashMap<String, u64>, k: &str) -> u64 {
    r.get(k).copied().unwrap_or(u64::MAX)
}

#[test]
fn reliability_uml_load_64_connections_every_byte_mptcp_no_leaks() -> Result<()> {
    let conns = knob("RELIABILITY_CONNS", 64)?;
    // 256 KiB: larger concurrent payloads hit the retransmission stalls
    // of the README's known limits (1 MiB x 5 rounds took 130 s), which
    // would take this over its CI budget without testing more here.
    let max_size = knob("RELIABILITY_MAX_SIZE", 256 << 10)?;
    let rounds = load_rounds(conns, max_size, 3)?;
    let tb = two_gateways()?;
    let dev = UmlDevice::up(&tb, "gw1", &[1, 2], "rl")?;
    let scripts = Scripts::new()?;
    let port = unique_port();
    let before = mptcp_counters(tb.netns("gw2")?)?;
    let server = load_server(&tb, &scripts, port)?;
    warm_up(&tb, &dev, &scripts, port, &server)?;
    let started = Instant::now();
    let client = load_client_uml(
        &tb,
        &dev,
        &scripts,
        port,
        (conns, rounds, max_size),
        server.pid(),
    )?;
    let reports = run_rounds(client, rounds)?;
    let elapsed = started.elapsed();
    let server_err = stop(server)?;
    ensure!(
        !server_err.contains("error"),
        "the server saw errors: {server_err}"
    );
    let bytes: u64 = reports.iter().map(|r| get(r, "bytes")).sum();
    let after = mptcp_counters(tb.netns("gw2")?)?;
    let capable = delta(&before, &after, "MPCapableSYNRX");
    let joins = delta(&before, &after, "MPJoinSynRx");
    ensure!(
        capable >= conns * rounds,
        "the server saw {capable} MP_CAPABLE SYNs for {} connections from the instance",
        conns * rounds
    );
    ensure!(joins >= 1, "the server saw no MP_JOIN from the instance");
    // Round 0 warms up (the watch thread starts with the first bridge);
    // from round 1 on nothing may grow.
    let base = &reports[1.min(reports.len() - 1)];
    let last = &reports[reports.len() - 1];
    for k in [
        "client_fds",
        "client_threads",
        "server_fds",
        "server_threads",
    ] {
        ensure!(
            get(last, k) <= get(base, k),
            "{k} grew from {} to {} across rounds",
            get(base, k),
            get(base, k).max(get(last, k))
        );
    }
    ensure!(
        get(last, "client_rss_kib") <= get(base, "client_rss_kib") + 8 * 1024,
        "client memory grew from {} to {} KiB",
        get(base, "client_rss_kib"),
        get(last, "client_rss_kib")
    );
    eprintln!(
        "reliability uml load: {} connections in {rounds} rounds, {bytes} bytes verified in {elapsed:?}, \
         {capable} MP_CAPABLE / {joins} MP_JOIN at the peer; client fds {} -> {}, threads {} -> {}",
        conns * rounds,
        get(base, "client_fds"),
        get(last, "client_fds"),
        get(base, "client_threads"),
        get(last, "client_threads"),
    );
    Ok(())
}

#[test]
fn reliability_uml_instance_killed_and_restarted_errors_then_works() -> Result<()> {
    let conns = knob("RELIABILITY_CONNS", 64)?.min(32);
    let tb = two_gateways()?;
    let dev = UmlDevice::up(&tb, "gw1", &[1, 2], "rk")?;
    let scripts = Scripts::new()?;
    let port = unique_port();
    let server = load_server(&tb, &scripts, port)?;
    warm_up(&tb, &dev, &scripts, port, &server)?;
    // Large payloads: still transferring when the instance dies.
    let client = load_client_uml(&tb, &dev, &scripts, port, (conns, 1, 1 << 30), server.pid())?;
    client.expect("connected=", SHORT)?;
    let kernel = dev.kernel_pid()?;
    // SAFETY: SIGKILL to the UML kernel this test started.
    ensure!(
        unsafe { libc::kill(kernel, libc::SIGKILL) } == 0,
        "could not kill the UML kernel {kernel}"
    );
    let killed = Instant::now();
    let (status, _, stderr) = client.finish(Duration::from_secs(10))?;
    let took = killed.elapsed();
    ensure!(
        !status.success(),
        "the load client reported success although its stack died"
    );
    ensure!(
        took < Duration::from_secs(2),
        "the load client took {took:?} to fail; the bar is 2 s"
    );
    let reason = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_string();
    // A new program fails at once while the instance is down.
    let config = dev.config().display().to_string();
    let ip = tb.addr4("gw2", 1)?.to_string();
    let probe = format!(
        "import socket,errno\ntry:\n  socket.create_connection(('{ip}',{port}),timeout=5)\n  print('connected')\n\
         except OSError as e:\n  print('error=%s' % errno.errorcode.get(e.errno, e.errno))"
    );
    let mut cmd = shimmed(&tb, "gw1", "python3", &[("DROPSHIM_CONFIG", &config)])?;
    cmd.args(["-c", &probe]);
    let out = run_bounded(&mut cmd, SHORT)?;
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    ensure!(
        said.starts_with("error="),
        "a program started while the instance is dead must get an error, got {said:?}"
    );
    // Restart: the same device works again, every byte verified, MPTCP.
    dev.restart(&tb, "gw1")?;
    let before = mptcp_counters(tb.netns("gw2")?)?;
    warm_up(&tb, &dev, &scripts, port, &server)?;
    let client = load_client_uml(
        &tb,
        &dev,
        &scripts,
        port,
        (conns, 2, 256 << 10),
        server.pid(),
    )?;
    let reports = run_rounds(client, 2)?;
    let after = mptcp_counters(tb.netns("gw2")?)?;
    ensure!(
        delta(&before, &after, "MPCapableSYNRX") >= 2 * conns,
        "after the restart the connections were not MPTCP"
    );
    let server_err = stop(server)?;
    // The server saw the killed connections end; nothing else.
    let unexpected: Vec<&str> = server_err
        .lines()
        .filter(|l| l.contains("error") && !l.contains("connection error"))
        .collect();
    ensure!(unexpected.is_empty(), "server errors: {unexpected:?}");
    eprintln!(
        "reliability uml restart: {conns} connections failed {took:?} after the kernel was killed ({reason}); \
         a new program got {said}; after down/up {} bytes verified over {} connections",
        reports.iter().map(|r| get(r, "bytes")).sum::<u64>(),
        2 * conns
    );
    Ok(())
}

/// Takes gw2's end of `link` down or up; its connected routes come back
/// with it (its addresses are kept while down).
fn set_peer_end(tb: &Testbed, link: u32, up: bool) -> Result<()> {
    let netns = tb.netns("gw2")?.to_string();
    let ifname = tb.ifname("gw2", link)?.to_string();
    let state = if up { "up" } else { "down" };
    run_ok(
        std::process::Command::new("ip").args(["-n", &netns, "link", "set", &ifname, state]),
        SHORT,
    )?;
    Ok(())
}

#[test]
fn reliability_uml_path_cut_and_restored_during_load_loses_nothing() -> Result<()> {
    let conns = knob("RELIABILITY_CONNS", 64)?;
    let max_size = knob("RELIABILITY_FAULT_MAX_SIZE", 4 << 20)?;
    let min_faults = knob("RELIABILITY_MIN_FAULTS", 2)?;
    let tb = two_gateways()?;
    let dev = UmlDevice::up(&tb, "gw1", &[1, 2], "rp")?;
    let scripts = Scripts::new()?;
    let port = unique_port();
    let before = mptcp_counters(tb.netns("gw2")?)?;
    let server = load_server(&tb, &scripts, port)?;
    warm_up(&tb, &dev, &scripts, port, &server)?;
    let mut client = load_client_uml(
        &tb,
        &dev,
        &scripts,
        port,
        (conns, 1, max_size),
        server.pid(),
    )?;
    client.expect("connected=", SHORT)?;
    // Link 2 carries the joined subflows and is cut; link 1 (initial
    // subflows) stays up, as in the native suite. Only gw2's end is
    // switched (which takes the carrier of gw1's end with it): gw1's end
    // belongs to the instance, and its host side has no routes to restore.
    let (link, other) = (2, 1);
    let mut faults = 0u64;
    let mut worst = Duration::ZERO;
    while client.try_status()?.is_none() {
        let from = link_bytes(&tb, "gw2", other)?;
        set_peer_end(&tb, link, false)?;
        let cut = Instant::now();
        faults += 1;
        let progressed = wait_until(SHORT, "progress on the surviving path", || {
            link_bytes(&tb, "gw2", other).is_ok_and(|b| b >= from + (1 << 20))
                || client.try_status().is_ok_and(|s| s.is_some())
        });
        worst = worst.max(cut.elapsed());
        set_peer_end(&tb, link, true)?;
        progressed.with_context(|| format!("link {link} cut: the transfer stalled"))?;
        let total = link_bytes(&tb, "gw2", 1)? + link_bytes(&tb, "gw2", 2)?;
        wait_until(SHORT, "progress after the restore", || {
            let now =
                link_bytes(&tb, "gw2", 1).unwrap_or(0) + link_bytes(&tb, "gw2", 2).unwrap_or(0);
            now >= total + (1 << 20) || client.try_status().is_ok_and(|s| s.is_some())
        })?;
    }
    let (status, lines, stderr) = client.finish(SHORT)?;
    ensure!(
        status.success(),
        "load client failed under path cuts: {stderr}"
    );
    let report = lines
        .iter()
        .find(|l| l.starts_with("round="))
        .map(|l| fields(l))
        .context("no round report")?;
    let server_err = stop(server)?;
    ensure!(!server_err.contains("error"), "server errors: {server_err}");
    ensure!(
        faults >= min_faults,
        "only {faults} cuts happened before the transfer ended; raise RELIABILITY_FAULT_MAX_SIZE"
    );
    let after = mptcp_counters(tb.netns("gw2")?)?;
    ensure!(
        delta(&before, &after, "MPCapableSYNRX") >= conns,
        "the connections from the instance were not MPTCP"
    );
    ensure!(
        delta(&before, &after, "MPJoinSynRx") >= 1,
        "no subflow joined over link 2"
    );
    eprintln!(
        "reliability uml path cuts: {faults} cuts of link 2 during {} bytes over {conns} connections, \
         all verified; longest wait for progress on link 1 {worst:?}",
        get(&report, "bytes")
    );
    Ok(())
}
