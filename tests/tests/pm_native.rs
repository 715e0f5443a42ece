//! dropshim's userspace path manager on the native stack, end to end: the
//! daemon `dropshim up` starts in gw1 of the two-gateways testbed drives
//! the host kernel's MPTCP by its policy. Every test downloads a random
//! file from a shimmed server in gw2 to a shimmed client in gw1 (bytes
//! checked by sha256) and proves the policy by the bytes each subflow
//! carried, read at the peer (gw2) with `ss -tin` while the connection is
//! still open.

use anyhow::{bail, ensure, Context, Result};
use dropshim_stacks::{unique_name, DeviceFile, HostDevice, Iface};
use dropshim_testbed::Testbed;
use dropshim_tests::upload::gw2_accepts_many;
use dropshim_tests::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const SHORT: Duration = Duration::from_secs(20);
const TRANSFER: Duration = Duration::from_secs(90);

/// Sends a file to the first client, then waits for it to close.
const SERVER: &str = r#"
import socket, sys
port, path, bind = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((bind, port))
s.listen(1)
c, _ = s.accept()
with open(path, "rb") as f:
    while True:
        b = f.read(1 << 16)
        if not b:
            break
        c.sendall(b)
c.shutdown(socket.SHUT_WR)
while c.recv(65536):
    pass
c.close()
"#;

/// Reads to EOF, prints "bytes sha256", keeps the connection open until a
/// line arrives on stdin.
const CLIENT: &str = r#"
import socket, sys, hashlib
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
h, n = hashlib.sha256(), 0
while True:
    b = s.recv(1 << 16)
    if not b:
        break
    h.update(b)
    n += len(b)
print(n, h.hexdigest(), flush=True)
sys.stdin.readline()
s.close()
"#;

/// Writes gw1's device file (its two links, `links`) with the userspace
/// path manager and `policy_lines`, runs `dropshim up` in gw1 and lets
/// gw2 accept 8 subflows.
fn up(tb: &Testbed, policy_lines: &str, links: [Iface; 2]) -> Result<HostDevice> {
    let mut file = DeviceFile::new(links.to_vec());
    file.subflows = None;
    file.userspace = Some(policy_lines.to_string());
    gw2_accepts_many(tb)?;
    // The testbed gives gw1 a kernel path manager endpoint; the userspace
    // path manager does without.
    run_ok(
        Command::new("ip").args(["-n", tb.netns("gw1")?, "mptcp", "endpoint", "flush"]),
        SHORT,
    )?;
    let dev = HostDevice::up(tb, "gw1", &file, &unique_name("pm"), &cli_path())?;
    ensure!(
        dev.up_said.contains("path manager daemon started"),
        "`dropshim up` did not start the daemon: {}",
        dev.up_said
    );
    ensure!(
        pm_type(tb)? == "1",
        "net.mptcp.pm_type in gw1 should be 1 (userspace) while the daemon runs"
    );
    Ok(dev)
}

/// gw1's links 1 and 2, no endpoint, no cost.
fn two_links() -> [Iface; 2] {
    [Iface::on(1), Iface::on(2)]
}

/// gw1's `net.mptcp.pm_type`.
fn pm_type(tb: &Testbed) -> Result<String> {
    let out = run_ok(
        Command::new("ip").args([
            "netns",
            "exec",
            tb.netns("gw1")?,
            "cat",
            "/proc/sys/net/mptcp/pm_type",
        ]),
        SHORT,
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// One subflow as gw2 sees it: local (gw2), remote (gw1), bytes acked.
#[derive(Debug, Clone)]
struct PeerSubflow {
    remote: SocketAddr,
    acked: u64,
}

/// gw2's established TCP sockets (MPTCP subflows) on server port `port`.
fn peer_subflows(tb: &Testbed, port: u16) -> Result<Vec<PeerSubflow>> {
    Ok(
        dropshim_tests::upload::peer_counter(tb, port, "bytes_acked")?
            .into_iter()
            .map(|(remote, acked)| PeerSubflow { remote, acked })
            .collect(),
    )
}

/// Bytes acked at gw2 per gw1 address.
fn by_client_addr(subs: &[PeerSubflow], addr: IpAddr) -> u64 {
    subs.iter()
        .filter(|s| s.remote.ip() == addr)
        .map(|s| s.acked)
        .sum()
}

/// A transfer in flight: the server in gw2, the client in gw1 holding the
/// connection open once it has every byte.
struct Transfer {
    port: u16,
    want: String,
    size: u64,
    _server: Background,
    client: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    _dir: tempfile::TempDir,
}

impl Transfer {
    /// Starts a transfer of `size` bytes to gw2's link-1 address; the
    /// server listens on every address with `any` (for joins to the
    /// addresses it announces), else on that one.
    fn start(tb: &Testbed, size: usize, any: bool) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("blob.bin");
        write_random_file(&file, size, u64::from(std::process::id()) ^ size as u64)?;
        let want = sha256_file(&file)?;
        let port = unique_port();
        let ip = tb.addr4("gw2", 1)?;
        let mut server = shimmed(tb, "gw2", "python3", &[])?;
        server
            .args(["-c", SERVER, &port.to_string()])
            .arg(&file)
            .arg(if any {
                "0.0.0.0".to_string()
            } else {
                ip.to_string()
            });
        let server = Background::spawn(&mut server, "python3 server")?;
        wait_listening(tb.netns("gw2")?, port, SHORT)?;
        let mut client = shimmed(tb, "gw1", "python3", &[])?;
        client
            .args(["-c", CLIENT, &ip.to_string(), &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut client = client.spawn().context("spawning the client")?;
        let stdin = client.stdin.take();
        let stdout = BufReader::new(client.stdout.take().context("client stdout")?);
        Ok(Transfer {
            port,
            want,
            size: size as u64,
            _server: server,
            client,
            stdin,
            stdout,
            _dir: dir,
        })
    }

    /// Waits for the client's report and checks every byte arrived intact.
    fn finish(&mut self) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut line = String::new();
        // A bounded wait on a blocking read: the read runs on a thread.
        std::thread::scope(|s| -> Result<()> {
            let stdout = &mut self.stdout;
            s.spawn(move || {
                let r = stdout.read_line(&mut line).map(|_| line);
                let _ = tx.send(r);
            });
            let got = match rx.recv_timeout(TRANSFER) {
                Ok(r) => r?,
                Err(_) => {
                    let _ = self.client.kill();
                    bail!("the transfer did not finish within {TRANSFER:?}");
                }
            };
            let mut parts = got.split_whitespace();
            let n: u64 = parts.next().unwrap_or("0").parse().unwrap_or(0);
            let sha = parts.next().unwrap_or("");
            ensure!(n == self.size, "received {n} bytes of {}", self.size);
            ensure!(sha == self.want, "received bytes differ from the file sent");
            Ok(())
        })
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        if let Some(mut i) = self.stdin.take() {
            let _ = i.write_all(b"close\n");
        }
        let deadline = Instant::now() + SHORT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.client.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.client.kill();
        let _ = self.client.wait();
    }
}

fn shaped(rate_mbit: u32) -> Result<Testbed> {
    let tb = two_gateways()?;
    tb.set_rate(1, Some(rate_mbit))?;
    tb.set_rate(2, Some(rate_mbit))?;
    Ok(tb)
}

#[test]
fn pm_ndiffports_4_gives_four_subflows_on_one_link() -> Result<()> {
    let tb = shaped(100)?;
    let _dev = up(&tb, "policy = \"ndiffports\"\nsubflows = 4\n", two_links())?;
    let mut t = Transfer::start(&tb, 20 << 20, false)?;
    t.finish()?;
    let subs = peer_subflows(&tb, t.port)?;
    let a1 = IpAddr::V4(tb.addr4("gw1", 1)?);
    let on_link1: Vec<&PeerSubflow> = subs.iter().filter(|s| s.remote.ip() == a1).collect();
    ensure!(
        on_link1.len() == 4 && subs.len() == 4,
        "want 4 subflows, all from {a1}: {subs:?}"
    );
    let ports: std::collections::BTreeSet<u16> = on_link1.iter().map(|s| s.remote.port()).collect();
    ensure!(ports.len() == 4, "each subflow its own port: {subs:?}");
    ensure!(
        on_link1.iter().all(|s| s.acked > 0),
        "every subflow carried bytes: {subs:?}"
    );
    let total: u64 = subs.iter().map(|s| s.acked).sum();
    ensure!(total >= t.size, "acked {total} of {}", t.size);
    Ok(())
}

#[test]
fn pm_fullmesh_gives_a_subflow_per_address_pair() -> Result<()> {
    let tb = shaped(100)?;
    // gw2 announces its second address.
    run_ok(
        Command::new("ip").args([
            "-n",
            tb.netns("gw2")?,
            "mptcp",
            "endpoint",
            "add",
            &tb.addr4("gw2", 2)?.to_string(),
            "dev",
            tb.ifname("gw2", 2)?,
            "signal",
        ]),
        SHORT,
    )?;
    let _dev = up(&tb, "policy = \"fullmesh\"\n", two_links())?;
    let mut t = Transfer::start(&tb, 20 << 20, true)?;
    t.finish()?;
    let subs = peer_subflows(&tb, t.port)?;
    // The server port is the same on both gw2 addresses.
    let mut pairs = std::collections::BTreeSet::new();
    let out = run_ok(
        Command::new("ip").args([
            "netns",
            "exec",
            tb.netns("gw2")?,
            "ss",
            "-tnH",
            "state",
            "established",
            &format!("sport = :{}", t.port),
        ]),
        SHORT,
    )?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let a: Vec<SocketAddr> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        if a.len() == 2 {
            pairs.insert((a[0].ip(), a[1].ip()));
        }
    }
    let mut want = std::collections::BTreeSet::new();
    for l in [1, 2] {
        for r in [1, 2] {
            want.insert((
                IpAddr::V4(tb.addr4("gw2", r)?),
                IpAddr::V4(tb.addr4("gw1", l)?),
            ));
        }
    }
    ensure!(
        pairs == want && subs.len() == 4,
        "want one subflow per address pair {want:?}, got {pairs:?} ({subs:?})"
    );
    ensure!(
        subs.iter().all(|s| s.acked > 0),
        "every subflow carried bytes: {subs:?}"
    );
    Ok(())
}

/// Waits until the transfer on `port` has moved `fraction` of `size`.
fn wait_progress(tb: &Testbed, port: u16, size: u64, fraction: f64) -> Result<Vec<PeerSubflow>> {
    let mut last = Vec::new();
    wait_until(TRANSFER, "the transfer to get going", || {
        last = peer_subflows(tb, port).unwrap_or_default();
        last.iter().map(|s| s.acked).sum::<u64>() as f64 >= size as f64 * fraction
    })?;
    Ok(last)
}

/// gw1 under the backup policy (link 2 the backup), a transfer of `size`
/// bytes started, and the backup subflow seen at gw2: the device, gw1's
/// addresses on links 1 and 2, and the transfer.
fn backup_transfer(tb: &Testbed, size: usize) -> Result<(HostDevice, IpAddr, IpAddr, Transfer)> {
    let dev = up(
        tb,
        "policy = \"backup\"\n",
        [Iface::on(1), Iface::on(2).roles(&["backup"])],
    )?;
    let (a1, a2) = (
        IpAddr::V4(tb.addr4("gw1", 1)?),
        IpAddr::V4(tb.addr4("gw1", 2)?),
    );
    let t = Transfer::start(tb, size, false)?;
    wait_until(SHORT, "the backup subflow", || {
        peer_subflows(tb, t.port)
            .map(|s| s.iter().any(|s| s.remote.ip() == a2))
            .unwrap_or(false)
    })?;
    Ok((dev, a1, a2, t))
}

#[test]
fn pm_backup_carries_little_until_the_active_link_is_cut_then_completes() -> Result<()> {
    let tb = shaped(50)?;
    // The backup subflow is there...
    let (_dev, a1, a2, mut t) = backup_transfer(&tb, 40 << 20)?;
    let port = t.port;
    let before = wait_progress(&tb, port, t.size, 0.3)?;
    let (active, backup) = (by_client_addr(&before, a1), by_client_addr(&before, a2));
    // ... and carries under 5 % while the active link is up.
    ensure!(
        (backup as f64) < 0.05 * (active + backup) as f64,
        "backup subflow carried {backup} of {} bytes before the cut",
        active + backup
    );
    let at_cut = by_client_addr(&peer_subflows(&tb, port)?, a1);
    tb.set_link(1, false)?;
    t.finish()?;
    let after = peer_subflows(&tb, port)?;
    let backup_after = by_client_addr(&after, a2);
    let active = at_cut.max(by_client_addr(&after, a1));
    // Everything the active link had not delivered went over the backup.
    ensure!(
        backup_after + active >= t.size,
        "after the cut the backup carried {backup_after}, the active {active}: not all of {}",
        t.size
    );
    Ok(())
}

/// Fail-back: the backup takes over while the active link is cut, and when
/// the link returns the path manager demotes the backup again, so it goes
/// back to carrying next to nothing (under 10 % of what moves once the
/// returned link carries again). Bytes intact.
#[test]
fn pm_backup_hands_back_to_the_active_link_when_it_returns() -> Result<()> {
    let tb = shaped(50)?;
    let (_dev, a1, a2, mut t) = backup_transfer(&tb, 80 << 20)?;
    let (port, size) = (t.port, t.size);
    let step = size / 8;
    wait_progress(&tb, port, size, 0.15)?;
    let before_cut = by_client_addr(&peer_subflows(&tb, port)?, a2);
    tb.set_link(1, false)?;
    let took_over = wait_until(TRANSFER, "the backup to take over", || {
        peer_subflows(&tb, port)
            .map(|s| by_client_addr(&s, a2) >= before_cut + step)
            .unwrap_or(false)
    });
    tb.set_link(1, true)?;
    took_over?;
    // Measured once the returned link has carried a quarter step again
    // (the hand-back itself is not the steady state). Its subflow may be
    // the one from before the cut, if it survived, or a new one.
    let returned = by_client_addr(&peer_subflows(&tb, port)?, a1);
    let mut back = Vec::new();
    wait_until(TRANSFER, "the returned link to carry again", || {
        back = peer_subflows(&tb, port).unwrap_or_default();
        by_client_addr(&back, a1) >= returned + step / 4
    })?;
    let (a1_back, a2_back) = (by_client_addr(&back, a1), by_client_addr(&back, a2));
    let mut later = Vec::new();
    wait_until(TRANSFER, "the returned link to carry", || {
        later = peer_subflows(&tb, port).unwrap_or_default();
        by_client_addr(&later, a1) + by_client_addr(&later, a2) >= a1_back + a2_back + step
    })?;
    let on_active = by_client_addr(&later, a1).saturating_sub(a1_back);
    let on_backup = by_client_addr(&later, a2).saturating_sub(a2_back);
    eprintln!(
        "after the link returned: {on_active} bytes on the active link, {on_backup} on the backup"
    );
    ensure!(
        (on_backup as f64) < 0.1 * (on_active + on_backup) as f64,
        "after the active link returned the backup still carried {on_backup} of {} bytes ({later:?})",
        on_active + on_backup
    );
    t.finish()
}

#[test]
fn pm_costaware_keeps_off_the_costly_link_until_the_cheap_one_is_cut() -> Result<()> {
    let tb = shaped(50)?;
    let _dev = up(
        &tb,
        "policy = \"costaware\"\n",
        [Iface::on(1).cost(1), Iface::on(2).cost(100)],
    )?;
    let (cheap, costly) = (
        IpAddr::V4(tb.addr4("gw1", 1)?),
        IpAddr::V4(tb.addr4("gw1", 2)?),
    );
    let mut t = Transfer::start(&tb, 40 << 20, false)?;
    let port = t.port;
    let before = wait_progress(&tb, port, t.size, 0.3)?;
    let (c, x) = (
        by_client_addr(&before, cheap),
        by_client_addr(&before, costly),
    );
    ensure!(
        (x as f64) < 0.05 * (c + x) as f64,
        "the costly link carried {x} of {} bytes while the cheap one was up",
        c + x
    );
    let at_cut = by_client_addr(&peer_subflows(&tb, port)?, cheap);
    tb.set_link(1, false)?;
    let cut = Instant::now();
    wait_until(SHORT, "a subflow on the costly link", || {
        peer_subflows(&tb, port)
            .map(|s| s.iter().any(|s| s.remote.ip() == costly && s.acked > 0))
            .unwrap_or(false)
    })?;
    let took = cut.elapsed();
    ensure!(
        took < Duration::from_secs(1),
        "the costly link took over {took:?} after the cut (want under 1 s)"
    );
    t.finish()?;
    let after = peer_subflows(&tb, port)?;
    let c = at_cut.max(by_client_addr(&after, cheap));
    ensure!(
        by_client_addr(&after, costly) + c >= t.size,
        "the rest of the transfer did not go over the costly link: {after:?}"
    );
    Ok(())
}

#[test]
fn pm_daemon_killed_connections_keep_subflows_and_status_says_down() -> Result<()> {
    let tb = shaped(100)?;
    let dev = up(&tb, "policy = \"ndiffports\"\nsubflows = 3\n", two_links())?;
    let mut t = Transfer::start(&tb, 20 << 20, false)?;
    let port = t.port;
    wait_until(SHORT, "three subflows", || {
        peer_subflows(&tb, port)
            .map(|s| s.len() == 3)
            .unwrap_or(false)
    })?;
    kill_daemon(&dev)?;
    t.finish()?;
    let subs = peer_subflows(&tb, port)?;
    ensure!(
        subs.len() == 3 && subs.iter().all(|s| s.acked > 0),
        "the connection lost subflows when the daemon died: {subs:?}"
    );
    let status = dev.dropshim(&["status"])?;
    ensure!(
        status.contains("path manager daemon: DOWN since"),
        "status should say the daemon is down: {status}"
    );
    let again = dev.dropshim(&["up"])?;
    ensure!(
        again.contains("path manager daemon started"),
        "`dropshim up` should start it again: {again}"
    );
    let status = dev.dropshim(&["status"])?;
    ensure!(status.contains("running since"), "status: {status}");
    dev.dropshim(&["down"])?;
    ensure!(
        pm_type(&tb)? == "0",
        "`dropshim down` should give gw1 the kernel path manager back"
    );
    Ok(())
}

/// Kills the device's path manager daemon (its pid read from `dropshim
/// status`) and waits until it is gone.
fn kill_daemon(dev: &HostDevice) -> Result<()> {
    let status = dev.dropshim(&["status"])?;
    ensure!(
        status.contains("path manager daemon: running since"),
        "status: {status}"
    );
    let pid: i32 = status
        .split("pid ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|p| p.trim().parse().ok())
        .context("no daemon pid in status")?;
    ensure!(
        // SAFETY: kill(2) on the daemon's pid, read from `dropshim status`;
        // no memory is passed.
        unsafe { libc::kill(pid, libc::SIGKILL) } == 0,
        "cannot kill {pid}"
    );
    wait_until(SHORT, "the daemon to die", || {
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z"))
                .unwrap_or(true)
    })
}

/// A connection made while the daemon is down has only its first
/// subflow (nothing else opens any under the userspace path manager);
/// the daemon `dropshim up` starts again adopts it and gives it the rest.
#[test]
fn pm_daemon_started_again_adopts_a_connection_made_while_it_was_down() -> Result<()> {
    let tb = shaped(50)?;
    let dev = up(&tb, "policy = \"ndiffports\"\nsubflows = 3\n", two_links())?;
    kill_daemon(&dev)?;
    // 40 MiB at 50 Mbit/s: about 7 s on the one subflow it starts with.
    let mut t = Transfer::start(&tb, 40 << 20, false)?;
    let port = t.port;
    wait_until(SHORT, "the connection to carry bytes", || {
        peer_subflows(&tb, port)
            .map(|s| s.iter().any(|s| s.acked > 0))
            .unwrap_or(false)
    })?;
    let before = peer_subflows(&tb, port)?;
    ensure!(
        before.len() == 1,
        "with no path manager running the connection should have one subflow: {before:?}"
    );
    let again = dev.dropshim(&["up"])?;
    ensure!(
        again.contains("path manager daemon started"),
        "`dropshim up` should start the daemon again: {again}"
    );
    wait_until(SHORT, "the adopted connection's three subflows", || {
        peer_subflows(&tb, port)
            .map(|s| s.len() == 3)
            .unwrap_or(false)
    })
    .with_context(|| format!("gw2 sees {:?}", peer_subflows(&tb, port)))?;
    t.finish()?;
    let subs = peer_subflows(&tb, port)?;
    ensure!(
        subs.len() == 3 && subs.iter().all(|s| s.acked > 0),
        "every subflow of the adopted connection should carry bytes: {subs:?}"
    );
    Ok(())
}
