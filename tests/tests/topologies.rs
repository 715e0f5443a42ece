//! The study's topologies end to end, over their links' profiles (delay,
//! jitter and loss included: host netem, or the UML link emulator):
//! drop-home with every stack on the end devices (downloads from the
//! local cache and the cloud, bytes and subflows checked), and drop-mesh
//! all-to-all with nothing left behind.
//! Needs root and the release build.

use anyhow::{ensure, Result};
use dropshim_testbed::{Options, Spec, Testbed};
use dropshim_tests::device::{node_stack, Iface, NodeStack, STACKS};
use dropshim_tests::{
    delta, mptcp_counters, run_bounded, sha256_file, shim_path, shimmed, unique_port,
    wait_listening, write_random_file, Background,
};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

/// Long enough (about 2.5 s over Wi-Fi) for the phone's second subflow
/// to join over LTE before the download ends, the join count being read
/// once the download is done: three LTE round trips of 50 ms or more,
/// plus, when a handshake packet or the first ARP on the emulated link
/// is lost, the one-second retransmission. With 8 MiB (0.8 s) a uml
/// phone once finished its download before its join.
const FILE_SIZE: usize = 24 << 20;

/// One download: `device` pulls the file from `server` at `addr`; the
/// server's counters must show an MPTCP connection and at least `joins`
/// subflows joined to it. Returns how long curl took.
#[allow(clippy::too_many_arguments)]
fn pull(
    tb: &Testbed,
    device: &NodeStack,
    server: &str,
    addr: Ipv4Addr,
    port: u16,
    joins: u64,
    out: &Path,
    want: &str,
) -> Result<Duration> {
    let ns = tb.netns(server)?.to_string();
    let before = mptcp_counters(&ns)?;
    let url = format!("http://{addr}:{port}/blob");
    let mut curl = device.command(tb, "curl", &shim_path())?;
    curl.args(["-sS", "--fail", "--max-time", "60", "-o"])
        .arg(out)
        .arg(&url);
    let t0 = Instant::now();
    let o = run_bounded(&mut curl, Duration::from_secs(90))?;
    let took = t0.elapsed();
    ensure!(
        o.status.success(),
        "{} ({}) curl {url}: {}",
        device.node(),
        device.kind(),
        String::from_utf8_lossy(&o.stderr)
    );
    let got = sha256_file(out)?;
    ensure!(
        got == want,
        "{} ({}) from {server}: sha256 {got} ({} bytes), want {want}",
        device.node(),
        device.kind(),
        std::fs::metadata(out).map(|m| m.len()).unwrap_or(0)
    );
    let after = mptcp_counters(&ns)?;
    let capable = delta(&before, &after, "MPCapableSYNRX");
    let joined = delta(&before, &after, "MPJoinAckRx");
    eprintln!(
        "{} ({}) <- {server} {addr}: {} bytes in {:.3} s, MP_CAPABLE {capable}, joins {joined}",
        device.node(),
        device.kind(),
        std::fs::metadata(out).map(|m| m.len()).unwrap_or(0),
        took.as_secs_f64()
    );
    ensure!(
        capable >= 1,
        "{} ({}) -> {server}: no MPTCP connection at the server",
        device.node(),
        device.kind()
    );
    ensure!(
        joined >= joins,
        "{} ({}) -> {server}: {joined} subflows joined at the server, want {joins} (one per other interface)",
        device.node(),
        device.kind()
    );
    Ok(took)
}

fn drop_home(stack: &str) -> Result<()> {
    let spec = Spec::builtin("drop-home")?;
    let tb = Testbed::up(&spec, &Options::default())?;
    let dir = tempfile::tempdir()?;
    let blob = dir.path().join("blob");
    write_random_file(&blob, FILE_SIZE, 0x5eed_0017)?;
    let want = sha256_file(&blob)?;
    let port = unique_port();
    let mut servers = Vec::new();
    for node in ["gw1", "cloud"] {
        let mut cmd = shimmed(&tb, node, "python3", &[])?;
        cmd.args(["-m", "http.server", "--bind", "0.0.0.0", "--directory"])
            .arg(dir.path())
            .arg(port.to_string());
        servers.push(Background::spawn(
            &mut cmd,
            &format!("http.server in {node}"),
        )?);
        wait_listening(tb.netns(node)?, port, Duration::from_secs(20))?;
    }
    let phone = node_stack(
        &tb,
        "phone",
        stack,
        &[
            Iface::on(5)
                .roles(&["subflow"])
                .gateway(tb.addr4("gw1", 5)?),
            Iface::on(6).roles(&["subflow"]),
        ],
    )?;
    let tv = node_stack(
        &tb,
        "tv",
        stack,
        &[Iface::on(7).gateway(tb.addr4("gw2", 7)?)],
    )?;
    let out = dir.path().join("got");
    // The phone has two interfaces: one subflow joins; the TV has one.
    pull(
        &tb,
        &phone,
        "gw1",
        tb.addr4("gw1", 5)?,
        port,
        1,
        &out,
        &want,
    )?;
    pull(
        &tb,
        &phone,
        "cloud",
        tb.addr4("cloud", 3)?,
        port,
        1,
        &out,
        &want,
    )?;
    pull(&tb, &tv, "gw1", tb.addr4("gw1", 1)?, port, 0, &out, &want)?;
    pull(
        &tb,
        &tv,
        "cloud",
        tb.addr4("cloud", 4)?,
        port,
        0,
        &out,
        &want,
    )?;
    Ok(())
}

#[test]
fn drop_home_native() -> Result<()> {
    drop_home("native")
}

#[test]
fn drop_home_uml() -> Result<()> {
    drop_home("uml")
}

#[test]
fn drop_home_lkl() -> Result<()> {
    drop_home("lkl")
}

/// The phone's download from the local cache over Wi-Fi and LTE together
/// (MPTCP needs a window of about the sum of the rates times LTE's round
/// trip, 1.6 MB or more): lkl keeps up with the native stack on the same
/// links, within a generous bound. A behaviour check, not a benchmark:
/// it catches a window capped far below the path's needs (the library
/// kernel's own TCP buffer ceiling, 1 MB from its 128 MiB, held lkl at
/// 0.61 to 0.71 of native here, best of two, against 0.85 to 0.91
/// without it; the bench has the numbers).
#[test]
fn drop_home_lkl_phone_keeps_up_with_native_over_wifi_and_lte() -> Result<()> {
    /// lkl's goodput at least this share of native's (best of `TRIES`
    /// downloads each: one slow download on a busy machine says little).
    const SHARE: f64 = 0.75;
    const TRIES: usize = 2;
    let spec = Spec::builtin("drop-home")?;
    let tb = Testbed::up(&spec, &Options::default())?;
    let dir = tempfile::tempdir()?;
    let blob = dir.path().join("blob");
    write_random_file(&blob, 20 << 20, 0x5eed_0018)?;
    let want = sha256_file(&blob)?;
    let port = unique_port();
    let mut cmd = shimmed(&tb, "gw1", "python3", &[])?;
    cmd.args(["-m", "http.server", "--bind", "0.0.0.0", "--directory"])
        .arg(dir.path())
        .arg(port.to_string());
    let _server = Background::spawn(&mut cmd, "http.server in gw1")?;
    wait_listening(tb.netns("gw1")?, port, Duration::from_secs(20))?;
    let addr = tb.addr4("gw1", 5)?;
    let out = dir.path().join("got");
    let mut best = Vec::new();
    // native first: lkl then takes the phone's interfaces over.
    for stack in ["native", "lkl"] {
        let phone = node_stack(
            &tb,
            "phone",
            stack,
            &[
                Iface::on(5)
                    .roles(&["subflow"])
                    .gateway(tb.addr4("gw1", 5)?),
                Iface::on(6).roles(&["subflow"]),
            ],
        )?;
        let mut fastest = Duration::MAX;
        for _ in 0..TRIES {
            fastest = fastest.min(pull(&tb, &phone, "gw1", addr, port, 1, &out, &want)?);
        }
        best.push(fastest.as_secs_f64());
    }
    let (native, lkl) = (best[0], best[1]);
    eprintln!(
        "phone <- cache, best of {TRIES}: native {native:.3} s, lkl {lkl:.3} s, lkl/native goodput {:.2}",
        native / lkl
    );
    ensure!(
        native / lkl >= SHARE,
        "lkl downloaded at {:.2} of native's goodput over Wi-Fi + LTE (native {native:.3} s, lkl {lkl:.3} s), want at least {SHARE}",
        native / lkl
    );
    Ok(())
}

/// Every namespace, UML kernel and state file of testbed `id` and of the
/// given uml devices is gone.
fn nothing_left(id: &str, uml_pids: &[i32]) -> Result<()> {
    let prefix = format!("ds-{id}-");
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    ensure!(left.is_empty(), "namespaces left behind: {left:?}");
    for pid in uml_pids {
        ensure!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "uml kernel {pid} still runs"
        );
    }
    let state = Path::new(dropshim_testbed::STATE_DIR).join(format!("{id}.json"));
    ensure!(!state.exists(), "{} left behind", state.display());
    let emu = Path::new(dropshim_testbed::STATE_DIR).join(format!("{id}.emu"));
    ensure!(!emu.exists(), "{} left behind", emu.display());
    Ok(())
}

#[test]
fn drop_mesh_8_devices_all_to_all_bytes_intact_nothing_left() -> Result<()> {
    let n = 8u32;
    let spec = Spec::drop_mesh(n)?;
    let tb = Testbed::up(&spec, &Options::default())?;
    let id = tb.id().to_string();
    let mut stacks = Vec::new();
    for i in 1..=n {
        let kind = STACKS[(i as usize - 1) % STACKS.len()];
        let node = format!("dev{i}");
        let s = node_stack(
            &tb,
            &node,
            kind,
            &[Iface::on(1), Iface::on(2).roles(&["signal"])],
        )?;
        stacks.push(s);
    }
    let uml_pids: Vec<i32> = stacks
        .iter()
        .filter_map(NodeStack::uml_kernel_pid)
        .collect();
    let natives: Vec<&NodeStack> = stacks.iter().filter(|s| s.kind() == "native").collect();
    let before: Vec<_> = natives
        .iter()
        .map(|s| mptcp_counters(tb.netns(s.node())?))
        .collect::<Result<_, _>>()?;
    let port = unique_port();
    let size = 256 * 1024;
    let prefix = {
        let a = tb.addr4("dev1", 1)?.octets();
        format!("{}.{}.{}.", a[0], a[1], a[2])
    };
    let t0 = Instant::now();
    let mut agents = Vec::new();
    for (i, s) in stacks.iter().enumerate() {
        let mut cmd = s.command(&tb, "python3", &shim_path())?;
        cmd.args(["-c", dropshim_testbed::MESH_AGENT_PY])
            .arg((i + 1).to_string())
            .arg(n.to_string())
            .arg(port.to_string())
            .arg(size.to_string())
            .arg(&prefix)
            .arg("80");
        agents.push((
            s,
            Background::spawn(&mut cmd, &format!("mesh agent {}", s.node()))?,
        ));
    }
    let mut pairs = BTreeSet::new();
    let mut failures = Vec::new();
    for (s, agent) in agents {
        let o = agent.wait(Duration::from_secs(120))?;
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 5 && f[0] == "pull" && f[2] == "ok" && f[3] == size.to_string() {
                pairs.insert((s.node().to_string(), f[1].to_string()));
            }
        }
        if !o.status.success() {
            failures.push(format!(
                "{} ({}): {}\n{}",
                s.node(),
                s.kind(),
                text.trim(),
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
    }
    let took = t0.elapsed().as_secs_f64();
    ensure!(
        failures.is_empty(),
        "mesh agents failed:\n{}",
        failures.join("\n")
    );
    let want = (n * (n - 1)) as usize;
    ensure!(
        pairs.len() == want,
        "{} of {want} transfers intact",
        pairs.len()
    );
    eprintln!(
        "drop-mesh {n}: {want} transfers of {size} bytes intact in {took:.2} s ({:.1} Mbit/s aggregate)",
        (want * size * 8) as f64 / took / 1e6
    );
    // Every native device served n-1 MPTCP connections and saw subflows
    // join over the Ethernet segment (to it, or from it to its peers).
    for (s, b) in natives.iter().zip(&before) {
        let a = mptcp_counters(tb.netns(s.node())?)?;
        let capable = delta(b, &a, "MPCapableSYNRX");
        let joins = delta(b, &a, "MPJoinAckRx") + delta(b, &a, "MPJoinSynAckRx");
        eprintln!("{}: MP_CAPABLE SYN rx {capable}, joins {joins}", s.node());
        ensure!(
            capable >= u64::from(n - 1),
            "{}: {capable} MPTCP connections served, want {}",
            s.node(),
            n - 1
        );
        // 2 (n-1) possible: its own n-1 connections and its peers' n-1.
        ensure!(
            joins >= u64::from(n - 1),
            "{}: {joins} subflows joined, want at least {}",
            s.node(),
            n - 1
        );
    }
    drop(stacks);
    drop(tb);
    nothing_left(&id, &uml_pids)
}

#[test]
fn mesh_device_count_is_checked() {
    let e = Spec::drop_mesh(1).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("use 2 to"), "{e}");
    let e = Spec::load_with_devices("two-gateways", Some(4))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("drop-mesh only"), "{e}");
    if let Err(e) = Spec::drop_mesh(32) {
        panic!("32 devices: {e}");
    }
}
