//! What only the uml backend does, end to end: gw1's two links belong to
//! a User Mode Linux instance (`dropshim up` with backend uml); unmodified
//! programs in gw1 run with the shim and their TCP lives in that
//! instance, as MPTCP. The peer in gw2 is a native MPTCP program. Here:
//! the instance's failure modes (not running, killed mid-transfer), link
//! flaps and cuts, many connections, the guest's view of its sockets and
//! its in-kernel relay; the programs every stack runs (curl, http.server,
//! iperf3) are in `programs.rs`. Each test checks bytes intact (sha256)
//! and MPTCP with two subflows at the peer (MPTcpExt counters in gw2).

use anyhow::{ensure, Context, Result};
use dropshim_testbed::{Options, Spec, Testbed};
use dropshim_tests::reliability::Lines;
use dropshim_tests::uml::{guest_socket, uml_device, GuestSocket, UmlDevice};
use dropshim_tests::*;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const SHORT: Duration = Duration::from_secs(20);
const TRANSFER: Duration = Duration::from_secs(120);

fn two_gateways() -> Result<Testbed> {
    Ok(Testbed::up(
        &Spec::builtin("two-gateways")?,
        &Options::default(),
    )?)
}

/// A command in `node`: with a device, under the shim with backend uml
/// and that device's file; without, the native MPTCP peer, run under
/// Debian's `mptcpize` so these tests depend on the uml backend only.
fn shimmed(tb: &Testbed, node: &str, program: &str, dev: Option<&UmlDevice>) -> Result<Command> {
    let mut cmd = match dev {
        Some(dev) => {
            let mut cmd = tb.command(node, program)?;
            cmd.env("LD_PRELOAD", shim_path())
                .env("DROPSHIM_CONFIG", dev.config());
            cmd
        }
        None => {
            let mut cmd = tb.command(node, "mptcpize")?;
            cmd.args(["run", program]);
            cmd
        }
    };
    for var in ["DROPSHIM_BACKEND", "DROPSHIM_LOG"] {
        cmd.env_remove(var);
    }
    Ok(cmd)
}

/// Waits until a TCP connect from `node` to `ip:port` succeeds (the
/// listener may live inside a UML guest, invisible to `ss` on the host).
fn wait_reachable(tb: &Testbed, node: &str, ip: IpAddr, port: u16) -> Result<()> {
    let netns = tb.netns(node)?.to_string();
    let target = match ip {
        IpAddr::V4(v4) => format!("{v4}"),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    wait_until(
        SHORT,
        &format!("{target}:{port} reachable from {node}"),
        || {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &netns,
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "--max-time",
                    "1",
                ])
                .arg(format!("http://{target}:{port}/"))
                .status()
                .map(|s| s.code() != Some(7) && s.code() != Some(28))
                .unwrap_or(false)
        },
    )
}

fn http_server(
    tb: &Testbed,
    node: &str,
    dir: &Path,
    ip: IpAddr,
    port: u16,
    dev: Option<&UmlDevice>,
) -> Result<Background> {
    let mut cmd = shimmed(tb, node, "python3", dev)?;
    cmd.args([
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        &ip.to_string(),
        "--directory",
    ])
    .arg(dir);
    let server = Background::spawn(&mut cmd, "python3 -m http.server")?;
    Ok(server)
}

#[test]
fn uml_instance_not_running_fails_at_once_and_says_what_to_run() -> Result<()> {
    let tb = two_gateways()?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("down.toml");
    let name = dropshim_tests::uml::unique_device("nr");
    std::fs::write(
        &config,
        format!("[device]\nname = \"{name}\"\nbackend = \"uml\"\n"),
    )?;
    let ip = tb.addr4("gw2", 1)?;
    let mut curl = tb.command("gw1", "curl")?;
    curl.env("LD_PRELOAD", shim_path())
        .env("DROPSHIM_CONFIG", &config)
        .env_remove("DROPSHIM_BACKEND");
    curl.args(["-sS", "--max-time", "10"])
        .arg(format!("http://{ip}:9/"));
    let start = Instant::now();
    let out = run_bounded(&mut curl, SHORT)?;
    let took = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "curl succeeded without a running instance"
    );
    ensure!(
        took < Duration::from_secs(2),
        "failing took {took:?}; it must not hang"
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("dropshim up --config"))
        .collect();
    ensure!(
        lines.len() == 1,
        "expected one line saying to run `dropshim up`, got: {stderr}"
    );
    ensure!(
        lines[0].contains("not running"),
        "the line should say the instance is not running: {stderr}"
    );
    Ok(())
}

#[test]
fn uml_instance_killed_mid_transfer_fails_the_program_quickly() -> Result<()> {
    let tb = two_gateways()?;
    let dev = uml_device(&tb, "gw1", &[1, 2], "kl")?;
    let port = unique_port();
    let server_ip = tb.addr4("gw2", 1)?.to_string();
    let mut server = shimmed(&tb, "gw2", "iperf3", None)?;
    server.args(["-s", "-1", "-p", &port.to_string()]);
    let _server = Background::spawn(&mut server, "iperf3 -s")?;
    wait_listening(tb.netns("gw2")?, port, SHORT)?;
    let before = mptcp_counters(tb.netns("gw2")?)?;
    let mut client = shimmed(&tb, "gw1", "iperf3", Some(&dev))?;
    client.args(["-c", &server_ip, "-p", &port.to_string(), "-t", "60"]);
    let client = Background::spawn(&mut client, "iperf3 -c (uml)")?;
    // Mid-transfer: the data connection (iperf3's second) reached gw2.
    wait_until(SHORT, "the data connection to start", || {
        mptcp_counters(tb.netns("gw2").unwrap_or_default())
            .map(|after| delta(&before, &after, "MPCapableSYNRX") >= 2)
            .unwrap_or(false)
    })?;
    // Still transferring right before the kill (not exited, not a zombie).
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", client.pid()))?;
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next());
    ensure!(
        state.is_some_and(|s| s != "Z"),
        "iperf3 ended before the kill: {stat}"
    );
    let kpid = dev.kernel_pid()?;
    // SAFETY: SIGKILL to the UML kernel process this test started.
    let killed = unsafe { libc::kill(kpid, libc::SIGKILL) };
    ensure!(killed == 0, "could not kill the UML kernel {kpid}");
    let start = Instant::now();
    let out = client.wait(Duration::from_secs(10))?;
    let took = start.elapsed();
    eprintln!(
        "uml killed mid-transfer: iperf3 exited after {took:?} with {}",
        out.status
    );
    ensure!(
        !out.status.success(),
        "iperf3 reported success although its stack died"
    );
    ensure!(
        took < Duration::from_secs(2),
        "the program noticed after {took:?}; the bar is 2 s"
    );
    Ok(())
}

/// Writes one of the helper scripts into `dir` and returns its path.
fn script(dir: &Path, name: &str, text: &str) -> Result<std::path::PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

/// An address on gw2's link-1 subnet that nobody holds: a connect to it
/// waits for a neighbour that never answers.
fn unheld_address(tb: &Testbed) -> Result<String> {
    let o = tb.addr4("gw2", 1)?.octets();
    Ok(format!("{}.{}.{}.77", o[0], o[1], o[2]))
}

#[test]
fn uml_nonblocking_connect_reports_through_poll_and_so_error() -> Result<()> {
    let tb = two_gateways()?;
    let dev = uml_device(&tb, "gw1", &[1, 2], "nb")?;
    let dir = tempfile::tempdir()?;
    let server_py = script(
        dir.path(),
        "digest.py",
        dropshim_tests::uml::DIGEST_SERVER_PY,
    )?;
    let client_py = script(dir.path(), "nb.py", dropshim_tests::uml::NONBLOCKING_PY)?;
    let ip = tb.addr4("gw2", 1)?.to_string();
    let (port, closed) = (unique_port(), unique_port());
    let mut server = shimmed(&tb, "gw2", "python3", None)?;
    server
        .arg(&server_py)
        .args([ip.as_str(), &port.to_string()]);
    let server = Lines::spawn(&mut server, "digest server")?;
    server.expect("listening", SHORT)?;
    let before = mptcp_counters(tb.netns("gw2")?)?;
    let mut client = shimmed(&tb, "gw1", "python3", Some(&dev))?;
    client.arg(&client_py).args([
        ip.as_str(),
        &port.to_string(),
        &closed.to_string(),
        &unheld_address(&tb)?,
    ]);
    let out = run_ok(&mut client, TRANSFER)?;
    let report = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let cases: std::collections::HashMap<String, std::collections::HashMap<String, String>> =
        report
            .lines()
            .filter_map(|l| {
                let (name, rest) = l.split_once(' ')?;
                let kv = rest
                    .split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                Some((name.to_string(), kv))
            })
            .collect();
    let field = |case: &str, key: &str| -> String {
        cases
            .get(case)
            .and_then(|c| c.get(key))
            .cloned()
            .unwrap_or_default()
    };
    let secs = |case: &str, key: &str| field(case, key).parse::<f64>().unwrap_or(f64::MAX);
    for case in [
        "listening_epoll",
        "listening_poll",
        "closed_epoll",
        "closed_poll",
        "unreachable",
    ] {
        ensure!(
            field(case, "connect") == "EINPROGRESS",
            "{case}: connect() did not say EINPROGRESS: {report}"
        );
        ensure!(
            secs(case, "call_s") < 0.05,
            "{case}: the non-blocking connect() blocked: {report}"
        );
    }
    for case in ["listening_epoll", "listening_poll"] {
        ensure!(
            field(case, "writable") == "1" && field(case, "so_error") == "0",
            "{case}: not writable with SO_ERROR 0: {report}"
        );
        ensure!(
            field(case, "digest_ok") == "1",
            "{case}: the echoed digest differs: {report}"
        );
        ensure!(
            field(case, "peer") == format!("{ip}:{port}"),
            "{case}: getpeername: {report}"
        );
    }
    for case in ["closed_epoll", "closed_poll"] {
        ensure!(
            field(case, "writable") == "1" && field(case, "so_error") == "ECONNREFUSED",
            "{case}: a closed port must be writable with SO_ERROR ECONNREFUSED: {report}"
        );
        ensure!(
            field(case, "so_error_again") == "0",
            "{case}: SO_ERROR must clear once read: {report}"
        );
    }
    ensure!(
        field("unreachable", "writable") == "0",
        "an unreachable host cannot be connected within 0.5 s: {report}"
    );
    let after = mptcp_counters(tb.netns("gw2")?)?;
    ensure!(
        delta(&before, &after, "MPCapableSYNRX") >= 2,
        "the connections from the UML instance were not MPTCP"
    );
    eprintln!("uml non-blocking connect: {report}");
    Ok(())
}

#[test]
fn uml_supervisor_and_instance_killed_fail_blocked_calls_within_2s() -> Result<()> {
    let tb = two_gateways()?;
    let dev = uml_device(&tb, "gw1", &[1, 2], "sk")?;
    let dir = tempfile::tempdir()?;
    let server_py = script(
        dir.path(),
        "digest.py",
        dropshim_tests::uml::DIGEST_SERVER_PY,
    )?;
    let client_py = script(dir.path(), "recv.py", dropshim_tests::uml::BLOCKED_RECV_PY)?;
    let ip = tb.addr4("gw2", 1)?.to_string();
    let port = unique_port().to_string();
    let mut server = shimmed(&tb, "gw2", "python3", None)?;
    server.arg(&server_py).args([ip.as_str(), &port]);
    let server = Lines::spawn(&mut server, "digest server")?;
    server.expect("listening", SHORT)?;
    let mut client = shimmed(&tb, "gw1", "python3", Some(&dev))?;
    client.arg(&client_py).args([ip.as_str(), &port]);
    let client = Lines::spawn(&mut client, "blocked client")?;
    client.expect("connected", SHORT)?;
    // Blocked in recvfrom(2) (syscall 45 on x86_64) before the kill.
    let pid = client.pid();
    wait_until(SHORT, "the client to block in recv", || {
        std::fs::read_to_string(format!("/proc/{pid}/syscall"))
            .is_ok_and(|s| s.split_whitespace().next() == Some("45"))
    })?;
    let (sup, kernel) = (dev.supervisor_pid()?, dev.kernel_pid()?);
    // SAFETY: SIGKILL to the supervisor and kernel this test started.
    let killed =
        unsafe { libc::kill(sup, libc::SIGKILL) == 0 && libc::kill(kernel, libc::SIGKILL) == 0 };
    ensure!(
        killed,
        "could not kill supervisor {sup} and kernel {kernel}"
    );
    let start = Instant::now();
    let line = client.next_line(Duration::from_secs(10))?;
    let took = start.elapsed();
    eprintln!("uml supervisor+kernel killed: the blocked recv ended after {took:?} with {line:?}");
    ensure!(
        line.as_deref().is_some_and(|l| l.starts_with("error=")),
        "the blocked recv must fail with an error, not {line:?}"
    );
    ensure!(
        took < Duration::from_secs(2),
        "the program noticed after {took:?}; the bar is 2 s"
    );
    Ok(())
}

/// One ping from `node`'s address on `link` to `dst`, which leaves
/// through that link only (the address is on the link's subnet).
fn ping_once(tb: &Testbed, node: &str, link: u32, dst: IpAddr) -> bool {
    let src = match dst {
        IpAddr::V4(_) => tb.addr4(node, link).map(|a| a.to_string()),
        IpAddr::V6(_) => tb.addr6(node, link).map(|a| a.to_string()),
    };
    let (Ok(src), Ok(mut ping)) = (src, tb.command(node, "ping")) else {
        return false;
    };
    ping.args(["-n", "-c", "1", "-W", "1", "-I", &src])
        .arg(dst.to_string());
    run_bounded(&mut ping, Duration::from_secs(5)).is_ok_and(|o| o.status.success())
}

/// `ip link set IF STATE` on `node`'s end of `link`.
fn link_state(tb: &Testbed, node: &str, link: u32, state: &str) -> Result<()> {
    let ifname = tb.ifname(node, link)?.to_string();
    let mut ip = tb.command(node, "ip")?;
    ip.args(["link", "set", &ifname, state]);
    run_ok(&mut ip, SHORT)?;
    Ok(())
}

/// The peer's end of link 2 goes down and comes back (the UML instance's
/// host interface loses its carrier meanwhile). The vector driver used to
/// mark its transport failed for good at the first send error, so the
/// link stayed dead; now the supervisor has the guest reopen it: IPv4 and
/// IPv6 over link 2 work again, and an MPTCP download running across the
/// flap goes on over link 1 and completes byte-exact.
#[test]
fn uml_link_flap_recovers() -> Result<()> {
    const MIB: u64 = 1 << 20;
    let tb = two_gateways()?;
    let dev = uml_device(&tb, "gw1", &[1, 2], "lf")?;
    let guest4 = IpAddr::V4(tb.addr4("gw1", 2)?);
    let guest6 = IpAddr::V6(tb.addr6("gw1", 2)?);
    for dst in [guest4, guest6] {
        wait_until(
            SHORT,
            &format!("ping over link 2 to {dst} before the flap"),
            || ping_once(&tb, "gw2", 2, dst),
        )?;
    }

    // Both links shaped, so the download fills both (the scheduler uses
    // link 2 only when link 1 is full) and spans the flap and recovery:
    // 128 MiB at 2 x 50 Mbit/s is about 11 s.
    for link in [1, 2] {
        tb.set_rate(link, Some(50))?;
    }
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("blob.bin");
    write_random_file(&file, 128 << 20, u64::from(std::process::id()) + 7)?;
    let want = sha256_file(&file)?;
    let port = unique_port();
    let server_ip = IpAddr::V4(tb.addr4("gw2", 1)?);
    let _server = http_server(&tb, "gw2", dir.path(), server_ip, port, None)?;
    wait_listening(tb.netns("gw2")?, port, SHORT)?;
    let out_dir = tempfile::tempdir()?;
    let out = out_dir.path().join("got.bin");
    let mut curl = shimmed(&tb, "gw1", "curl", Some(&dev))?;
    curl.args(["-sS", "--fail", "-o"])
        .arg(&out)
        .arg(url(server_ip, port, "blob.bin"));
    let curl = Background::spawn(&mut curl, "curl (uml) across the flap")?;

    let sent2 = |tb: &Testbed| sent_on(tb, 2);
    let sent1 = |tb: &Testbed| sent_on(tb, 1);
    let start2 = sent2(&tb);
    // Flap early (the join carries its first bytes within moments of the
    // start), so most of the 128 MiB is still to come.
    wait_until(
        SHORT,
        "the download's subflow over link 2 to carry 256 KiB",
        || sent2(&tb) >= start2 + MIB / 4,
    )?;

    link_state(&tb, "gw2", 2, "down")?;
    let flap = Instant::now();
    let down1 = sent1(&tb);
    let up_result = wait_until(SHORT, "the download to go on over link 1", || {
        sent1(&tb) >= down1 + MIB
    });
    link_state(&tb, "gw2", 2, "up")?;
    up_result?;

    for dst in [guest4, guest6] {
        wait_until(
            SHORT,
            &format!("ping over link 2 to {dst} after the flap"),
            || ping_once(&tb, "gw2", 2, dst),
        )?;
    }
    let pinged = flap.elapsed();
    eprintln!("uml link flap: pings over link 2 answered {pinged:?} after it went down");
    let got = curl
        .wait(TRANSFER)
        .context("the download across the flap")?;
    ensure!(
        got.status.success(),
        "curl across the flap failed ({}): {}",
        got.status,
        String::from_utf8_lossy(&got.stderr)
    );
    ensure!(
        sha256_file(&out)? == want,
        "the download across the flap is not byte-exact"
    );
    let done = flap.elapsed();

    eprintln!("uml link flap: the 128 MiB download across it completed byte-exact {done:?} after");

    // Now the instance's own host interface (gw1's end): its raw socket
    // sees the device go away, which is what killed the vector transport.
    link_state(&tb, "gw1", 2, "down")?;
    let flap = Instant::now();
    link_state(&tb, "gw1", 2, "up")?;
    for dst in [guest4, guest6] {
        wait_until(
            SHORT,
            &format!("ping over link 2 to {dst} after gw1's end flapped"),
            || ping_once(&tb, "gw2", 2, dst),
        )?;
    }
    eprintln!(
        "uml link flap: pings over link 2 answered {:?} after gw1's end went down",
        flap.elapsed()
    );
    Ok(())
}

/// Downloads into a program on the uml stack while the instance's link 1
/// (the first subflow's) is cut and restored, several times in a row, and
/// checks every byte. Linux 6.12's MPTCP in the guest stopped such a
/// download now and then (about one bench handover in three): once
/// out-of-order data filled the receive buffer, each read moved one skb
/// out of the full subflows and the retransmission filling the hole could
/// not come in. The agent's guest sockets now have a receive buffer that
/// the window cannot fill.
#[test]
fn uml_download_across_repeated_link_cuts_is_intact() -> Result<()> {
    const MB: u64 = 1_000_000;
    const ROUNDS: u32 = 5;
    let tb = two_gateways()?;
    // Shaped like the bench's handover, so the cut loses data in flight
    // and both subflows carry the rest.
    for link in [1, 2] {
        tb.set_rate(link, Some(100))?;
    }
    let dev = uml_device(&tb, "gw1", &[1, 2], "lc")?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("blob.bin");
    write_random_file(&file, 48 << 20, u64::from(std::process::id()) + 11)?;
    let want = sha256_file(&file)?;
    let port = unique_port();
    let server_ip = IpAddr::V4(tb.addr4("gw2", 1)?);
    let _server = http_server(&tb, "gw2", dir.path(), server_ip, port, None)?;
    wait_listening(tb.netns("gw2")?, port, SHORT)?;
    let out_dir = tempfile::tempdir()?;
    let sent = |link: u32| sent_on(&tb, link);
    let run_round = |round: u32| -> Result<()> {
        let out = out_dir.path().join(format!("got-{round}.bin"));
        let mut curl = shimmed(&tb, "gw1", "curl", Some(&dev))?;
        curl.args(["-sS", "--fail", "-o"])
            .arg(&out)
            .arg(url(server_ip, port, "blob.bin"));
        let (start1, start2) = (sent(1), sent(2));
        let curl = Background::spawn(&mut curl, "curl (uml) across a cut of link 1")?;
        wait_until(SHORT, "the download to carry 6 MB over link 1", || {
            sent(1) >= start1 + 6 * MB
        })
        .with_context(|| {
            // The connection's state at gw2 (both subflows and the MPTCP
            // socket) goes with the stall.
            let ss = tb
                .netns("gw2")
                .ok()
                .and_then(|ns| {
                    run_bounded(
                        Command::new("ip").args([
                            "netns",
                            "exec",
                            ns,
                            "ss",
                            "-tmniM",
                            "state",
                            "established",
                        ]),
                        SHORT,
                    )
                    .ok()
                })
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            format!(
                "round {round}: before the cut, gw2 sent {} bytes over link 1 and {} over link 2\n\
                 gw2's established sockets:\n{ss}",
                sent(1) - start1,
                sent(2) - start2
            )
        })?;
        // gw1's end: the instance's own host interface, as when a
        // device loses its Wi-Fi.
        link_state(&tb, "gw1", 1, "down")?;
        // The outage's length is the experiment's schedule, as in the
        // bench's handover (2 s there), not a wait for anything.
        std::thread::sleep(Duration::from_millis(1500));
        link_state(&tb, "gw1", 1, "up")?;
        // 48 MB take a few seconds on a quiet machine; the bound is for a
        // transfer that never ends (the stall this test guards against),
        // with room for a CI machine running the whole suite at once.
        let got = curl
            .wait(Duration::from_secs(60))
            .with_context(|| format!("round {round}: the download across the cut"))?;
        ensure!(
            got.status.success(),
            "round {round}: curl across the cut failed ({}): {}",
            got.status,
            String::from_utf8_lossy(&got.stderr)
        );
        ensure!(
            sha256_file(&out)? == want,
            "round {round}: the download across the cut is not byte-exact"
        );
        std::fs::remove_file(&out)?;
        Ok(())
    };
    for round in 1..=ROUNDS {
        // The instance's last words go with any failure of a round.
        run_round(round).map_err(|e| {
            e.context(format!(
                "the instance's console ends with:\n{}",
                dev.console_tail(40)
            ))
        })?;
    }
    Ok(())
}

/// Serves the file `argv[3]` once on `argv[1]`:`argv[2]`, then closes.
const SEND_ONCE_PY: &str = r#"
import socket, sys
data = open(sys.argv[3], "rb").read()
l = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((sys.argv[1], int(sys.argv[2])))
l.listen(1)
print("listening", flush=True)
c, _ = l.accept()
c.sendall(data)
c.close()
print("sent", len(data), flush=True)
"#;

/// Connects to `argv[1]`:`argv[2]`, reads nothing until the file `argv[3]`
/// exists, then reads to the end and prints `got LENGTH SHA256`.
const READ_WHEN_TOLD_PY: &str = r#"
import hashlib, os, socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
print("connected", flush=True)
deadline = time.time() + 120
while not os.path.exists(sys.argv[3]):
    if time.time() > deadline:
        sys.exit("never told to read")
    time.sleep(0.05)
h, n = hashlib.sha256(), 0
while True:
    b = s.recv(1 << 16)
    if not b:
        break
    h.update(b)
    n += len(b)
print("got", n, h.hexdigest(), flush=True)
"#;

/// `dropshim status --guest` shows what the guest kernel holds: a download
/// whose reader pauses fills the guest MPTCP socket, which the report
/// lists with its queue and the memory that queue is charged, along with
/// the guest's counters; the bytes are checked once the reader reads.
#[test]
fn uml_status_guest_shows_a_paused_downloads_socket_and_its_memory() -> Result<()> {
    let tb = two_gateways()?;
    let dev = uml_device(&tb, "gw1", &[1, 2], "sg")?;
    let dir = tempfile::tempdir()?;
    // More than the bridge into the instance and the guest socket hold
    // together, so the guest socket fills while the reader waits.
    let file = dir.path().join("blob.bin");
    write_random_file(&file, 48 << 20, u64::from(std::process::id()) + 23)?;
    let want = format!("got {} {}", 48 << 20, sha256_file(&file)?);
    let port = unique_port();
    let ip = tb.addr4("gw2", 1)?.to_string();
    let mut sender = shimmed(&tb, "gw2", "python3", None)?;
    sender
        .args(["-c", SEND_ONCE_PY, &ip, &port.to_string()])
        .arg(&file);
    let sender = Lines::spawn(&mut sender, "sender in gw2")?;
    sender.expect("listening", SHORT)?;
    let go = dir.path().join("read-now");
    let mut reader = shimmed(&tb, "gw1", "python3", Some(&dev))?;
    reader
        .args(["-c", READ_WHEN_TOLD_PY, &ip, &port.to_string()])
        .arg(&go);
    let reader = Lines::spawn(&mut reader, "paused reader (uml)")?;
    reader.expect("connected", SHORT)?;
    // The guest socket is full once its queue stops growing.
    let mut last: Option<(GuestSocket, Instant)> = None;
    let mut stats = String::new();
    wait_until(
        Duration::from_secs(60),
        "the guest socket's queue to stop growing",
        || {
            let Ok(now) = dev.guest_stats() else {
                return false;
            };
            stats = now;
            let Some(sock) = guest_socket(&stats, "mptcp", port) else {
                return false;
            };
            match last {
                Some((prev, since)) if prev.recv_q == sock.recv_q => {
                    sock.recv_q > 0 && since.elapsed() >= Duration::from_secs(1)
                }
                _ => {
                    last = Some((sock, Instant::now()));
                    false
                }
            }
        },
    )
    .with_context(|| format!("the guest's last stats:\n{stats}"))?;
    let sock = guest_socket(&stats, "mptcp", port).context("no guest MPTCP socket")?;
    eprintln!(
        "uml paused download: the guest MPTCP socket holds {} bytes, charged {}, receive buffer {}",
        sock.recv_q, sock.rmem, sock.rcvbuf
    );
    // The reader paused with megabytes still to come: the guest holds a
    // window's worth, charged at least what it holds, within its buffer.
    ensure!(
        sock.recv_q >= 1 << 20 && sock.rmem >= sock.recv_q && sock.rmem <= sock.rcvbuf,
        "implausible guest socket {sock:?} in the stats:\n{stats}"
    );
    for counter in [
        "TcpExtPruneCalled ",
        "TcpExtTCPOFOQueue ",
        "MPTcpExtRcvPruned ",
    ] {
        ensure!(
            stats.lines().any(|l| l.starts_with(counter)),
            "no {counter}in the guest's stats:\n{stats}"
        );
    }
    std::fs::write(&go, b"")?;
    let got = reader.expect("got ", TRANSFER)?;
    ensure!(
        got.trim() == want,
        "the reader received {got:?}, expected {want:?}"
    );
    sender.expect("sent ", SHORT)?;
    Ok(())
}

/// Connections open at once through one instance in the scale tests:
/// well beyond the 64 of the reliability load, each one a bridge, a
/// guest MPTCP socket and its relay in the guest agent's event loop.
const MANY: u64 = 256;

#[test]
fn uml_256_concurrent_connections_from_the_instance_every_byte_checked() -> Result<()> {
    use dropshim_tests::reliability::{get, load_client, load_server, run_load, Scripts};
    let tb = two_gateways()?;
    let dev = uml_device(&tb, "gw1", &[1, 2], "mc")?;
    let scripts = Scripts::new()?;
    let port = unique_port();
    let before = mptcp_counters(tb.netns("gw2")?)?;
    let server = load_server(&tb, &scripts, port)?;
    let config = dev.config().display().to_string();
    // All MANY connect first ("connected=MANY"), then each sends and
    // receives up to 64 KiB of its own pattern; both sides compare
    // sha256 digests of every connection's bytes.
    let client = load_client(
        &tb,
        &scripts,
        port,
        (MANY, 1, 64 << 10),
        server.pid(),
        &[("DROPSHIM_CONFIG", &config)],
    )?;
    client.expect(&format!("connected={MANY}"), Duration::from_secs(60))?;
    let reports = run_load(client, server, 1, TRANSFER)?;
    let bytes: u64 = reports.iter().map(|r| get(r, "bytes")).sum();
    ensure!(bytes > 0, "no bytes moved: {reports:?}");
    let after = mptcp_counters(tb.netns("gw2")?)?;
    let capable = delta(&before, &after, "MPCapableSYNRX");
    ensure!(
        capable >= MANY,
        "the peer saw {capable} MP_CAPABLE SYNs for {MANY} connections from the instance"
    );
    eprintln!("uml {MANY} concurrent connections: {bytes} bytes verified, {capable} MP_CAPABLE at the peer");
    Ok(())
}

#[test]
fn uml_server_in_instance_holds_256_concurrent_connections_every_echo_checked() -> Result<()> {
    let tb = two_gateways()?;
    let dev = uml_device(&tb, "gw1", &[1, 2], "ms")?;
    let port = unique_port();
    let ip = IpAddr::V4(tb.addr4("gw1", 1)?);
    let probe = target_dir().join("dropshim-rr").display().to_string();
    let mut server = shimmed(&tb, "gw1", &probe, Some(&dev))?;
    server.args(["server", "--bind", &format!("{ip}:{port}")]);
    let _server = Background::spawn(&mut server, "dropshim-rr server in uml")?;
    wait_reachable(&tb, "gw2", ip, port)?;
    let before = mptcp_counters(tb.netns("gw2")?)?;
    // MANY connections, all open before the first message, each doing
    // 64-byte round trips; the probe compares every echoed byte and
    // fails on any difference, reset or 10 s wait.
    let mut client = shimmed(&tb, "gw2", &probe, None)?;
    client.args([
        "client",
        "--to",
        &format!("{ip}:{port}"),
        "--count",
        "10",
        "--warmup",
        "0",
        "--conns",
        &MANY.to_string(),
        "--tps-seconds",
        "2",
        "--setups",
        "0",
    ]);
    let out = run_ok(&mut client, TRANSFER).context("dropshim-rr client (it checks every echo)")?;
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing the probe's report")?;
    let tps = &report["tps"][0];
    ensure!(
        tps["conns"] == MANY,
        "no run on {MANY} connections: {report}"
    );
    let transactions = tps["transactions"].as_u64().unwrap_or(0);
    ensure!(
        transactions >= MANY,
        "{transactions} transactions on {MANY} connections: some never answered: {report}"
    );
    let after = mptcp_counters(tb.netns("gw2")?)?;
    let capable = delta(&before, &after, "MPCapableSYNACKRX");
    ensure!(
        capable > MANY,
        "the server in the instance answered MP_CAPABLE {capable} times for {} connections",
        MANY + 1
    );
    eprintln!("uml server, {MANY} concurrent connections: {transactions} transactions, every echo checked");
    Ok(())
}

/// The program of the same test: writes a file to the peer and closes.
const STEADY_WRITER: &str = r#"
import socket, sys
data = open(sys.argv[3], "rb").read()
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.sendall(data)
s.close()
print("sent", len(data), flush=True)
"#;

/// A peer that stops reading keeps a kernel socket's writer waiting for
/// as long as it likes (zero-window probes answered): the writer on the
/// uml backend must wait the same way, however long the window stays
/// shut, and deliver every byte once the peer reads again, never fail
/// with ETIMEDOUT because the stretch of the path that dropshim adds
/// (the host side of the bridge into the instance) gave up.
#[test]
fn uml_writer_waits_out_a_peer_that_stops_reading_for_25s() -> Result<()> {
    let tb = two_gateways()?;
    let dev = uml_device(&tb, "gw1", &[1, 2], "zw")?;
    let dir = tempfile::tempdir()?;
    // More than every buffer on the way holds (the peer's, the guest's,
    // the bridge's), so the writer really waits on a shut window.
    let data = dir.path().join("data.bin");
    write_random_file(&data, 64 << 20, 31)?;
    let port = unique_port();
    let ip = tb.addr4("gw2", 1)?.to_string();
    let mut peer = shimmed(&tb, "gw2", "python3", None)?;
    // Does not read for 25 s, then reads to the end.
    peer.args(["-c", READER_PY, &ip, &port.to_string(), "25", "65536", "0"]);
    let peer = Lines::spawn(&mut peer, "pausing reader in gw2")?;
    peer.expect("listening", SHORT)?;
    let mut writer = shimmed(&tb, "gw1", "python3", Some(&dev))?;
    writer
        .args(["-c", STEADY_WRITER, &ip, &port.to_string()])
        .arg(&data);
    let out = run_bounded(&mut writer, TRANSFER)?;
    ensure!(
        out.status.success(),
        "the writer failed while the peer paused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = format!("got {} {}", 64 << 20, sha256_file(&data)?);
    let got = peer.expect("got ", TRANSFER)?;
    ensure!(
        got.trim() == want,
        "the peer received {got:?}, expected {want:?}"
    );
    Ok(())
}

/// Sends the file `argv[3]` from an AF_INET6 socket connected to
/// `argv[1]`:`argv[2]`, ends its side, and prints the hex of what the
/// server answers.
const SEND6_PY: &str = r##"import socket, sys
data = open(sys.argv[3], "rb").read()
c = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
c.connect((sys.argv[1], int(sys.argv[2])))
c.sendall(data)
c.shutdown(socket.SHUT_WR)
got = b""
while True:
    b = c.recv(1 << 16)
    if not b:
        break
    got += b
print(got.hex(), flush=True)
"##;

/// `connect()` to `::ffff:0.0.0.0` names this host, as `0.0.0.0` does:
/// a program under the shim on a uml device reaches a listener on the
/// host's loopback, not the instance's.
#[test]
fn uml_connect_to_mapped_unspecified_address_reaches_the_host_loopback() -> Result<()> {
    let tb = two_gateways()?;
    let dev = uml_device(&tb, "gw1", &[1, 2], "mu")?;
    let dir = tempfile::tempdir()?;
    let server_py = script(
        dir.path(),
        "digest.py",
        dropshim_tests::uml::DIGEST_SERVER_PY,
    )?;
    let client_py = script(dir.path(), "send6.py", SEND6_PY)?;
    let file = dir.path().join("blob.bin");
    write_random_file(&file, 1 << 20, u64::from(std::process::id()))?;
    let want = sha256_file(&file)?;
    let port = unique_port().to_string();
    // The listener: gw1's host loopback, no shim.
    let mut server = plain(&tb, "gw1", "python3")?;
    server.arg(&server_py).args(["127.0.0.1", &port]);
    let server = Lines::spawn(&mut server, "digest server on the host's loopback")?;
    server.expect("listening", SHORT)?;
    let mut client = shimmed(&tb, "gw1", "python3", Some(&dev))?;
    client
        .arg(&client_py)
        .args(["::ffff:0.0.0.0", &port])
        .arg(&file);
    let out = run_ok(&mut client, SHORT)
        .with_context(|| format!("console:\n{}", dev.console_tail(20)))?;
    let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
    ensure!(
        got == want,
        "the host's listener saw other bytes: sha256 {got:?}, sent {want}"
    );
    Ok(())
}

/// Bytes gw2's end of `link` has sent so far (0 if unreadable).
fn sent_on(tb: &Testbed, link: u32) -> u64 {
    dropshim_tests::reliability::dev_counters(tb, "gw2", link).map_or(0, |c| c.tx_bytes)
}

/// What both scripts of the kernel-relay test read with: exactly `n`
/// bytes, or fewer at the end of stream.
const EXACT_PY: &str = r#"
def exact(c, n):
    b = bytearray()
    while len(b) < n:
        m = c.recv(n - len(b))
        if not m:
            break
        b += m
    return bytes(b)
"#;

/// The native peer of the kernel-relay test: per connection, a 6-byte
/// mode. `echo..` echoes until the program's end of stream, then sends
/// the digest of what it got and closes; `rstpee` resets at once
/// (linger 0); `rstprg` says ready and reports how its read ends.
const RELAY_PEER_PY: &str = r#"
import hashlib, socket, struct, sys
ip, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((ip, port)); s.listen(8)
print("listening", flush=True)
for _ in range(3):
    c, _ = s.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    mode = exact(c, 6)
    if mode == b"echo..":
        h, n = hashlib.sha256(), 0
        while True:
            b = c.recv(65536)
            if not b:
                break
            h.update(b); n += len(b)
            c.sendall(b)
        c.sendall(("digest %d %s\n" % (n, h.hexdigest())).encode())
        c.close()
        print("echoed", n, flush=True)
    elif mode == b"rstpee":
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
        print("reset sent", flush=True)
    elif mode == b"rstprg":
        c.sendall(b"ready\n")
        try:
            while c.recv(65536):
                pass
            print("read ended: end of stream", flush=True)
        except ConnectionResetError:
            print("read ended: reset", flush=True)
        c.close()
"#;

/// The program of the kernel-relay test (under the shim, on the uml
/// device): one echoed connection with a first exchange, a pause until
/// told, the rest and a half-close; then a reset by the peer and one by
/// the program.
const RELAY_PROGRAM_PY: &str = r#"
import hashlib, os, socket, struct, sys, time
ip, port, go, size = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
data = os.urandom(size)
def conn(mode):
    c = socket.create_connection((ip, port))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.sendall(mode)
    return c
c = conn(b"echo..")
c.sendall(data[:65536])
assert exact(c, 65536) == data[:65536], "first echo differs"
print("first exchange", c.getsockname()[1], flush=True)
while not os.path.exists(go):
    time.sleep(0.01)
c.sendall(data[65536:])
c.shutdown(socket.SHUT_WR)
back = data[:65536] + exact(c, size - 65536)
rest = b""
while True:
    b = c.recv(65536)
    if not b:
        break
    rest += b
want = "digest %d %s\n" % (size, hashlib.sha256(data).hexdigest())
diff = next((i for i in range(len(back)) if back[i] != data[i]), len(back))
print("echo", "intact" if back == data else "differs (%d of %d bytes back, first difference at %d)" % (len(back), size, diff),
      "digest", "intact" if rest.decode() == want else repr(rest[:200]), flush=True)
c.close()
c = conn(b"rstpee")
try:
    got = c.recv(1)
    print("peer reset: read returned", got, flush=True)
except ConnectionResetError:
    print("peer reset: seen", flush=True)
c.close()
c = conn(b"rstprg")
assert exact(c, 6) == b"ready\n"
c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
c.close()
print("program reset: sent", flush=True)
"#;

/// A field of `/proc/dropshim_relay`'s summary lines in the guest's
/// stats: the number after `key`.
fn relay_field(stats: &str, key: &str) -> Option<u64> {
    stats.lines().find_map(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        let at = words.iter().position(|w| *w == key)?;
        words.get(at + 1)?.parse().ok()
    })
}

/// Established uml connections are relayed in the guest kernel, not by
/// the agent: `dropshim status --guest` lists the connection among the
/// kernel's relays with the bytes it moved each way, the bytes come
/// back intact across the program's half-close, a reset by the peer
/// reaches the program and one by the program reaches the peer, and
/// each relay is gone once its connection is (two of three aborted).
#[test]
fn uml_connections_are_relayed_in_the_guest_kernel_intact_through_half_close_and_resets(
) -> Result<()> {
    let tb = two_gateways()?;
    let dev = uml_device(&tb, "gw1", &[1, 2], "kr")?;
    let dir = tempfile::tempdir()?;
    let port = unique_port();
    let ip = tb.addr4("gw2", 1)?.to_string();
    let before = mptcp_counters(tb.netns("gw2")?)?;
    let mut peer = shimmed(&tb, "gw2", "python3", None)?;
    peer.args([
        "-c",
        &format!("{EXACT_PY}{RELAY_PEER_PY}"),
        &ip,
        &port.to_string(),
    ]);
    let peer = Lines::spawn(&mut peer, "native peer in gw2")?;
    peer.expect("listening", SHORT)?;
    let go = dir.path().join("go");
    let size = 4 << 20;
    let mut program = shimmed(&tb, "gw1", "python3", Some(&dev))?;
    program
        .args(["-c", &format!("{EXACT_PY}{RELAY_PROGRAM_PY}")])
        .args([&ip, &port.to_string()])
        .arg(&go)
        .arg(size.to_string());
    let program = Lines::spawn(&mut program, "program (uml)")?;
    program.expect("first exchange", SHORT)?;

    let stats = dev.guest_stats()?;
    ensure!(
        stats.contains("# relay: kernel"),
        "the guest does not relay in its kernel:\n{stats}"
    );
    // The relay's line: the guest socket's addresses (peer port ours),
    // then what it moved: the mode and the first 64 KiB to the peer,
    // the 64 KiB echo back.
    let line = stats
        .lines()
        .find(|l| l.starts_with("relay ") && l.contains(&format!(":{port} ")))
        .with_context(|| format!("no kernel relay for port {port}:\n{stats}"))?;
    ensure!(
        relay_field(line, "to_guest") == Some(6 + 65536)
            && relay_field(line, "to_program") == Some(65536),
        "the kernel relay's counts are off: {line}"
    );

    std::fs::write(&go, b"")?;
    let echoed = program.expect("echo ", TRANSFER)?;
    ensure!(
        echoed.trim() == "echo intact digest intact",
        "the program's echo: {echoed}"
    );
    ensure!(
        peer.expect("echoed ", SHORT)?.trim() == format!("echoed {size}"),
        "the peer did not get every byte"
    );
    ensure!(peer.expect("reset sent", SHORT).is_ok());
    let seen = program.expect("peer reset: ", SHORT)?;
    ensure!(
        seen.trim() == "peer reset: seen",
        "the peer's reset did not reach the program: {seen}"
    );
    program.expect("program reset: sent", SHORT)?;
    let seen = peer.expect("read ended: ", SHORT)?;
    ensure!(
        seen.trim() == "read ended: reset",
        "the program's reset did not reach the peer: {seen}"
    );

    let mut stats = String::new();
    wait_until(SHORT, "the kernel relays to end", || {
        stats = dev.guest_stats().unwrap_or_default();
        relay_field(&stats, "active") == Some(0)
    })
    .with_context(|| format!("the guest's last stats:\n{stats}"))?;
    ensure!(
        relay_field(&stats, "started") == Some(3) && relay_field(&stats, "aborted") == Some(2),
        "expected 3 kernel relays, 2 of them reset:\n{stats}"
    );
    let after = mptcp_counters(tb.netns("gw2")?)?;
    ensure!(
        delta(&before, &after, "MPCapableSYNRX") >= 3,
        "the program's connections did not reach the peer as MPTCP"
    );
    Ok(())
}
