//! Support for the reliability suite (`tests/tests/reliability*.rs`):
//! the small programs it runs under the shim (Python, written to a temp
//! dir per test), sampling a process's descriptors, threads and memory
//! from /proc, reading per-link byte counters, and the knobs that turn
//! the bounded CI run into the long one (`scripts/reliability-long.sh`)
//! and into a soak (`scripts/soak.sh`, see `soak_path_cuts`).

use crate::{delta, mptcp_counters, run_ok, wait_counter_grows, wait_until};
use anyhow::{bail, ensure, Context, Result};
use dropshim_testbed::Testbed;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use crate::{plain, shimmed, two_gateways};

/// Resolves gw1's neighbours on both links (one ping each) so a short
/// transfer's join SYN is not held in the ARP queue until the
/// connection is already over.
pub fn warm_paths(tb: &Testbed) -> Result<()> {
    for link in [1, 2] {
        let peer = tb.addr4("gw2", link)?.to_string();
        run_ok(
            plain(tb, "gw1", "ping")?.args(["-c", "1", "-W", "5", &peer]),
            Duration::from_secs(10),
        )?;
    }
    Ok(())
}

/// A number from the environment (the long run sets these), else `default`.
/// A value that does not parse is an error, not silently the default.
pub fn knob(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .with_context(|| format!("{name}={v:?} is not a whole number")),
        _ => Ok(default),
    }
}

/// The helper programs, written once per test into a temp dir.
pub struct Scripts {
    dir: tempfile::TempDir,
}

impl Scripts {
    /// Writes the scripts into a fresh temporary directory.
    pub fn new() -> Result<Scripts> {
        let dir = tempfile::tempdir()?;
        for (name, text) in [
            ("load.py", LOAD_PY),
            ("peer.py", PEER_PY),
            ("fork.py", FORK_PY),
            ("badcalls.py", BADCALLS_PY),
            ("sig.py", SIG_PY),
        ] {
            std::fs::write(dir.path().join(name), text)?;
        }
        Ok(Scripts { dir })
    }

    /// Where the script `name` was written.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The directory holding the scripts.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// What a process holds, from /proc/PID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Open file descriptors.
    pub fds: u64,
    /// Threads of the process (`Threads:` in /proc/PID/status).
    pub threads: u64,
    /// Resident memory (`VmRSS`) in KiB.
    pub rss_kib: u64,
}

/// What process `pid` holds now; fails when the process is gone.
pub fn usage(pid: u32) -> Result<Usage> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("process {pid} is gone"))?
        .count() as u64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |key: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {key} in /proc/{pid}/status"))
    };
    Ok(Usage {
        fds,
        threads: field("Threads:")?,
        rss_kib: field("VmRSS:")?,
    })
}

/// Signals during blocking calls (see the script's first lines).
pub const SIGNALS_PY: &str = r##"# Signals during blocking socket calls, at the C level (ctypes -> libc ->
# the shim when preloaded). For each call and each of "no SA_RESTART" /
# "SA_RESTART": the main thread blocks in the call; a helper thread waits
# until the main thread has sat in a system call for a while, sends it
# SIGUSR1, waits until the C-level handler ran (Python's wakeup fd), then
# unblocks the call. connect() goes to an address on link 1 nobody holds:
# the neighbour never resolves, a plain kernel fails it after about 3 s.
# argv: HOST DEAD PORT CALLS (comma-separated: accept,recv,send | connect).
# Prints one JSON object: call -> outcome, where the outcome holds only
# what a program sees (ok, errno, bytes intact), plus timings.
import ctypes, errno, hashlib, json, os, select, signal, socket, struct, sys, threading, time

libc = ctypes.CDLL(None, use_errno=True)
for n in ("accept", "recv", "send", "connect"):
    getattr(libc, n).restype = ctypes.c_ssize_t if n in ("recv", "send") else ctypes.c_int
HOST, DEAD, PORT = sys.argv[1], sys.argv[2], int(sys.argv[3])
CALLS = sys.argv[4].split(",")
MAIN_TID = threading.get_native_id()
rd, wr = os.pipe()
os.set_blocking(wr, False)
signal.set_wakeup_fd(wr)
signal.signal(signal.SIGUSR1, lambda *_: None)

def blocked(deadline):
    # In a system call, sleeping, for 20 samples in a row (~0.2 s): a
    # short wait for the GIL does not last that long.
    seen = 0
    while time.monotonic() < deadline:
        with open("/proc/self/task/%d/stat" % MAIN_TID) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open("/proc/self/task/%d/syscall" % MAIN_TID) as f:
            nr = f.read().split()[0]
        seen = seen + 1 if state == "S" and nr.isdigit() else 0
        if seen >= 20:
            return True
        select.select([], [], [], 0.01)  # poll pacing, bounded by deadline
    return False

def helper(unblock, report, t0):
    if not blocked(time.monotonic() + 10):
        report["error"] = "main thread never blocked"
        unblock()
        return
    report["signal_s"] = round(time.monotonic() - t0, 2)
    signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
    ready, _, _ = select.select([rd], [], [], 10)
    report["handled"] = bool(ready) and os.read(rd, 16) != b""
    unblock()

def run(restart, call, unblock):
    signal.siginterrupt(signal.SIGUSR1, not restart)
    report = {}
    t0 = time.monotonic()
    t = threading.Thread(target=helper, args=(unblock, report, t0))
    t.start()
    ctypes.set_errno(0)
    ret = call()
    err = ctypes.get_errno() if ret < 0 else 0
    report["return_s"] = round(time.monotonic() - t0, 2)
    t.join(15)
    report.update({"ok": ret >= 0, "errno": errno.errorcode.get(err, str(err)) if err else "0"})
    return ret, report

out, timing = {}, {}
def keep(name, report):
    timing[name] = {k: report.pop(k) for k in ("signal_s", "return_s") if k in report}
    out[name] = report

for restart in (False, True):
    tag = "restart" if restart else "norestart"
    if "connect" in CALLS:
        c = socket.socket()
        dead = struct.pack("=H", socket.AF_INET) + struct.pack(">H", PORT) + socket.inet_aton(DEAD) + b"\0" * 8
        ret, rep = run(restart, lambda: libc.connect(c.fileno(), dead, len(dead)), lambda: None)
        keep("connect_" + tag, rep)
        c.close()
    if "accept" not in CALLS:
        continue
    lst = socket.socket(); lst.bind((HOST, 0)); lst.listen(4)
    # accept(): a connection from the helper unblocks it.
    conns = []
    def unblock_accept():
        c = socket.socket(); c.connect(lst.getsockname()); conns.append(c)
    ret, rep = run(restart, lambda: libc.accept(lst.fileno(), None, None), unblock_accept)
    if ret < 0:  # EINTR: the connection waits in the queue for the next call
        ret = libc.accept(lst.fileno(), None, None)
    a = socket.socket(fileno=ret)
    rep["peer_is_ours"] = a.getpeername() == conns[0].getsockname()
    a.close()
    keep("accept_" + tag, rep)
    # recv(): the peer sends bytes to unblock it; they must arrive intact.
    a = socket.socket(); a.connect(lst.getsockname()); b, _ = lst.accept()
    buf = ctypes.create_string_buffer(64)
    msg = b"after the signal " + os.urandom(8).hex().encode()
    ret, rep = run(restart, lambda: libc.recv(a.fileno(), buf, 64, 0), lambda: b.sendall(msg))
    if ret < 0:  # EINTR: the bytes are still there for the next call
        ret = libc.recv(a.fileno(), buf, 64, 0)
    rep["intact"] = buf.raw[:ret] == msg
    keep("recv_" + tag, rep)
    # send(): 16 MiB into a peer that does not read; the helper starts
    # draining. Whatever send() says it sent must arrive, intact.
    big = os.urandom(16 << 20)
    cbig = ctypes.create_string_buffer(big, len(big))
    got = hashlib.sha256()
    count = [0]
    def drain():
        while True:
            d = b.recv(1 << 20)
            if not d:
                break
            got.update(d); count[0] += len(d)
    drainer = threading.Thread(target=drain)
    ret, rep = run(restart, lambda: libc.send(a.fileno(), cbig, len(big), 0), drainer.start)
    sent = max(ret, 0)
    a.shutdown(socket.SHUT_WR)
    drainer.join(30)
    rep["complete"] = sent == len(big)
    rep["intact"] = count[0] == sent and got.digest() == hashlib.sha256(big[:sent]).digest()
    keep("send_" + tag, rep)
    a.close(); b.close(); lst.close()
    for c in conns:
        c.close()
print(json.dumps(out, sort_keys=True))
print(json.dumps(timing, sort_keys=True))
"##;

/// Runs SIGNALS_PY for `calls` twice: as `backend` (python3 in gw1 on the
/// backend under test) and, for the reference, on gw2's plain kernel.
/// Returns (plain outcomes, backend outcomes, backend timings).
pub fn signal_outcomes(
    tb: &Testbed,
    mut backend: Command,
    calls: &str,
    bound: Duration,
) -> Result<(String, String, String)> {
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("sig.py");
    std::fs::write(&script, SIGNALS_PY)?;
    let port = crate::unique_port().to_string();
    // On link 1's prefix, held by nobody: a connect to it stays pending.
    let dead = "198.18.1.77";
    let mut plain = crate::plain(tb, "gw2", "python3")?;
    let mut outs = Vec::new();
    for (what, cmd, host) in [
        ("plain", &mut plain, tb.addr4("gw2", 1)?),
        ("on the backend", &mut backend, tb.addr4("gw1", 1)?),
    ] {
        cmd.arg(&script)
            .args([&host.to_string(), dead, &port, calls]);
        let out =
            crate::run_bounded(cmd, bound).with_context(|| format!("sig.py ({calls}) {what}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "sig.py {what} ({}): {stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        outs.push(stdout);
    }
    let plain: Vec<&str> = outs[0].lines().collect();
    let backend: Vec<&str> = outs[1].lines().collect();
    if plain.len() != 2 || backend.len() != 2 {
        bail!("probe output: {outs:?}");
    }
    Ok((
        plain[0].to_string(),
        backend[0].to_string(),
        backend[1].to_string(),
    ))
}

/// The calls whose outcomes differ between the plain kernel's JSON and
/// the backend's (objects of objects printed with sorted keys), one line
/// per call, so a mismatch names the call.
pub fn signal_differences(plain: &str, backend: &str) -> Vec<String> {
    let entries = |json: &str| -> Vec<String> {
        json.trim()
            .trim_start_matches('{')
            .trim_end_matches('}')
            .split("}, \"")
            .map(|e| e.trim_start_matches('"').trim_end_matches('}').to_string())
            .collect()
    };
    let (a, b) = (entries(plain), entries(backend));
    let mut out: Vec<String> = a
        .iter()
        .zip(b.iter())
        .filter(|(x, y)| x != y)
        .map(|(x, y)| format!("plain \"{x}}} / backend \"{y}}}"))
        .collect();
    if a.len() != b.len() {
        out.push(format!(
            "{} calls plain, {} on the backend",
            a.len(),
            b.len()
        ));
    }
    out
}

/// peer.py's server in gw2 on the native backend (shimmed), listening.
pub fn native_peer_server(tb: &Testbed, scripts: &Scripts, port: u16, mode: &str) -> Result<Lines> {
    let ip = tb.addr4("gw2", 1)?.to_string();
    let mut s = crate::shimmed(tb, "gw2", "python3", &[])?;
    s.arg(scripts.path("peer.py"))
        .args(["server", &ip, &port.to_string(), mode]);
    let server = Lines::spawn(&mut s, "peer server in gw2")?;
    server.expect("listening", Duration::from_secs(20))?;
    Ok(server)
}

/// Size of the files the program tests move: `RELIABILITY_PROGRAM_BYTES`,
/// else `default`.
pub fn program_bytes(default: u64) -> Result<usize> {
    Ok(knob("RELIABILITY_PROGRAM_BYTES", default)? as usize)
}

/// `bytes` random bytes in `dir/blob.bin` (seeded by `seed` and the pid)
/// and their sha256.
pub fn random_blob(dir: &Path, bytes: usize, seed: u64) -> Result<(PathBuf, String)> {
    let file = dir.join("blob.bin");
    crate::write_random_file(&file, bytes, u64::from(std::process::id()) ^ seed)?;
    let sum = crate::sha256_file(&file)?;
    Ok((file, sum))
}

/// Fails with what to install unless every program is on the PATH
/// (scripts/setup.sh installs them all).
pub fn need_programs(programs: &[&str]) -> Result<()> {
    for p in programs {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {p}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            bail!("{p} is not installed: run scripts/setup.sh (apt-get install socat netcat-openbsd wget nginx-light curl)");
        }
    }
    Ok(())
}

/// SIGKILLs `victim`; how long `survivor` took to end (at most `limit`)
/// and what it said. A survivor that hangs fails the test with both
/// gateways' TCP and MPTCP sockets (`ss -taniM`) in the error, so a rare
/// hang leaves its evidence behind.
pub fn kill_and_time(
    tb: &Testbed,
    victim: Lines,
    survivor: Lines,
    limit: Duration,
) -> Result<(Duration, String)> {
    victim.signal(libc::SIGKILL)?;
    let killed = std::time::Instant::now();
    let finished = survivor.finish(limit);
    let took = killed.elapsed();
    drop(victim);
    let (status, lines, stderr) = match finished {
        Ok(f) => f,
        Err(e) => {
            let mut sockets = String::new();
            for node in ["gw1", "gw2"] {
                if let Ok(mut ss) = crate::plain(tb, node, "ss") {
                    if let Ok(out) = run_ok(ss.arg("-taniM"), Duration::from_secs(10)) {
                        sockets.push_str(&format!(
                            "--- {node}:\n{}",
                            String::from_utf8_lossy(&out.stdout)
                        ));
                    }
                }
            }
            return Err(e.context(format!("sockets when it hung:\n{sockets}")));
        }
    };
    let said = lines.join(" ");
    if status.success() && !said.contains("eof") {
        bail!("the survivor did not notice: {said} {stderr}");
    }
    Ok((took, said))
}

/// Rounds of the load test: `RELIABILITY_ROUNDS` (else `default`), or,
/// when `RELIABILITY_BYTES` asks for a total, enough rounds to move it. A
/// round moves `conns * max_size` bytes on average (both directions, sizes
/// uniform in 0..=max_size); a tenth more rounds makes the random total
/// reach the target, and at least 3 leave rounds to compare for leaks.
pub fn load_rounds(conns: u64, max_size: u64, default: u64) -> Result<u64> {
    Ok(match knob("RELIABILITY_BYTES", 0)? {
        0 => knob("RELIABILITY_ROUNDS", default)?,
        bytes => {
            let per_round = (conns * max_size).max(1);
            (bytes.div_ceil(per_round) * 11).div_ceil(10).max(3)
        }
    })
}

/// Stops a load server (SIGTERM) and returns its stderr, which the
/// caller checks for errors.
pub fn stop_server(server: Lines) -> Result<String> {
    server.signal(libc::SIGTERM)?;
    let (_, _, stderr) = server.finish(Duration::from_secs(20))?;
    Ok(stderr)
}

/// Runs a load client to the end (each line at most `timeout` apart);
/// returns its round reports, all `rounds` of them.
pub fn run_rounds(
    client: Lines,
    rounds: u64,
    timeout: Duration,
) -> Result<Vec<HashMap<String, u64>>> {
    let mut reports = Vec::new();
    while let Some(line) = client.next_line(timeout)? {
        if line.starts_with("round=") {
            reports.push(fields(&line));
        }
    }
    let (status, _, stderr) = client.finish(Duration::from_secs(20))?;
    ensure!(status.success(), "load client failed: {stderr}");
    ensure!(
        reports.len() as u64 == rounds,
        "{} of {rounds} rounds reported",
        reports.len()
    );
    Ok(reports)
}

/// Runs a load client's rounds against `server`, then stops the server.
/// A failure of either carries the server's account: it says where an
/// upload went wrong, which the client only sees as a wrong digest.
pub fn run_load(
    client: Lines,
    server: Lines,
    rounds: u64,
    timeout: Duration,
) -> Result<Vec<HashMap<String, u64>>> {
    let reports = run_rounds(client, rounds, timeout);
    let server_err = stop_server(server)?;
    let reports = reports.with_context(|| format!("the server said: {server_err}"))?;
    ensure!(
        !server_err.contains("error"),
        "the server saw errors: {server_err}"
    );
    Ok(reports)
}

/// Where a path is cut.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum CutAt {
    /// The whole link, both ends (native: gw1's end is the host's).
    Link,
    /// gw2's end only, which takes gw1's carrier with it: gw1's end
    /// belongs to the backend's kernel (uml, lkl), and its host side has
    /// no address or routes to bring back.
    PeerEnd,
}

/// The path-cut test, for one backend.
pub struct PathCuts<'a> {
    /// The testbed both gateways are in.
    pub tb: &'a Testbed,
    /// gw2's MPTCP counters from before the connections.
    pub before: HashMap<String, u64>,
    /// Connections the load client opens; gw2 must see at least this many MP_CAPABLE SYNs.
    pub conns: u64,
    /// Fewer cuts than this before the transfer ended fails the test.
    pub min_faults: u64,
    /// Which end of the link a cut takes down.
    pub at: CutAt,
    /// Cut link 1 and link 2 in turn (link 1 carries the initial
    /// subflows, which a connection whose join failed cannot do without);
    /// otherwise only link 2, which carries the joined ones.
    pub alternate: bool,
    /// The stack's own account of a stall, taken with gw2's while it
    /// lasts (before the link is restored): uml's host-side state.
    pub stack_state: Option<&'a dyn Fn() -> String>,
}

/// What a path-cut run saw.
pub struct CutReport {
    /// Cuts made before the transfer ended.
    pub faults: u64,
    /// Longest wait for 1 MiB to get through the surviving path.
    pub worst: Duration,
    /// How long the load ran on after the cuts stopped (zero if it
    /// ended during them).
    pub settled: Duration,
    /// The load client's round report.
    pub round: HashMap<String, u64>,
    /// The server's account when stopped: `served`, `mptcp` and `csum`
    /// (connections with MPTCP checksums on).
    pub server: HashMap<String, u64>,
}

impl<'a> PathCuts<'a> {
    /// Link 2 cut at gw2's end, as the uml and lkl suites do.
    pub fn new(tb: &'a Testbed, before: HashMap<String, u64>, conns: u64, min_faults: u64) -> Self {
        PathCuts {
            tb,
            before,
            conns,
            min_faults,
            at: CutAt::PeerEnd,
            alternate: false,
            stack_state: None,
        }
    }

    /// While `client` (connected, one round) runs: cuts a link, waits
    /// for 1 MiB to get through the other (or the client to finish),
    /// brings the link back, waits for 1 MiB more across both, and again,
    /// for at most `CUT_PHASE`; then, with every link up, waits for the
    /// client to finish, as long as 1 MiB gets through every `WAIT`.
    /// Then checks that the client verified every byte, `server` saw no
    /// error, enough cuts happened, and the connections were MPTCP with a
    /// subflow joined over link 2.
    ///
    /// The cut phase is bounded because link bytes are not the client's
    /// progress: each cut makes the peer send its unacknowledged data
    /// again over the surviving link, so a connection that stopped
    /// moving still keeps the links busy, and cuts made whenever 1 MiB
    /// went by would go on for as long as one connection stays stuck.
    pub fn run(&self, mut client: Lines, server: Lines) -> Result<CutReport> {
        const WAIT: Duration = Duration::from_secs(20);
        const CUT_PHASE: Duration = Duration::from_secs(45);
        const SETTLE: Duration = Duration::from_secs(120);
        let tb = self.tb;
        let both = |tb: &Testbed| -> u64 {
            link_bytes(tb, "gw2", 1).unwrap_or(0) + link_bytes(tb, "gw2", 2).unwrap_or(0)
        };
        // The connections are up, but their joins are made after the
        // handshake, asynchronously: a first cut of link 2 at that moment
        // fails every join (MPJoinSynTxConnectErr) and the kernel's path
        // manager does not try again, so the load would run on one path.
        // The cuts begin once gw2 has seen a join.
        wait_counter_grows(tb.netns("gw2")?, &self.before, "MPJoinSynRx", WAIT)
            .context("no subflow joined over link 2 before the first cut")?;
        let mut faults = 0u64;
        let mut worst = Duration::ZERO;
        let mut link = 2;
        let cutting = Instant::now();
        while client.try_status()?.is_none() && cutting.elapsed() < CUT_PHASE {
            let other = 3 - link;
            let from = link_bytes(tb, "gw2", other)?;
            self.set_link(link, false)?;
            let cut = Instant::now();
            faults += 1;
            let progressed = wait_until(WAIT, "progress on the surviving path", || {
                link_bytes(tb, "gw2", other).is_ok_and(|b| b >= from + (1 << 20))
                    || client.try_status().is_ok_and(|s| s.is_some())
            });
            worst = worst.max(cut.elapsed());
            // What gw2 saw while stalled, taken before the restore changes it.
            let stalled = progressed.is_err().then(|| self.peer_state());
            self.set_link(link, true)?;
            progressed.with_context(|| {
                format!(
                    "link {link} cut: the transfer stalled\n{}",
                    stalled.unwrap_or_default()
                )
            })?;
            let total = both(tb);
            wait_until(WAIT, "progress after the restore", || {
                both(tb) >= total + (1 << 20) || client.try_status().is_ok_and(|s| s.is_some())
            })
            .with_context(|| {
                format!(
                    "link {link} restored after cut {faults}: the transfer did not resume\n{}",
                    self.peer_state()
                )
            })?;
            if self.alternate {
                link = other;
            }
        }
        // Every link is up from here; the rest must get through.
        let cut_phase = cutting.elapsed();
        let settling = Instant::now();
        while client.try_status()?.is_none() {
            let total = both(tb);
            let moved = wait_until(WAIT, "progress with every link up", || {
                both(tb) >= total + (1 << 20) || client.try_status().is_ok_and(|s| s.is_some())
            });
            let late = settling.elapsed() > SETTLE;
            if moved.is_err() || late {
                bail!(
                    "after {faults} cuts in {:?} and {:?} with every link up, the load client \
                     has not finished{}\n{}",
                    cut_phase,
                    settling.elapsed(),
                    if late {
                        " though the links stay busy"
                    } else {
                        ""
                    },
                    self.peer_state()
                );
            }
        }
        let settled = settling.elapsed();
        let (status, lines, stderr) = client.finish(WAIT)?;
        // The server's own account goes with a client's failure: it says
        // where an upload went wrong.
        let server_err = stop_server(server)?;
        if !status.success() {
            // What gw2's MPTCP did meanwhile (resets, fast closes,
            // fallbacks, retransmissions) goes with the failure: it says
            // which end gave up on a connection, and how.
            let stack = self.stack_state.map(|f| f()).unwrap_or_default();
            bail!(
                "load client failed under path cuts after {faults} cuts: {stderr}\n\
                 the server said: {server_err}\n\
                 gw2's MPTcpExt counters that moved: {}\n{stack}",
                self.counters_moved()
            );
        }
        let round = lines
            .iter()
            .find(|l| l.starts_with("round="))
            .map(|l| fields(l))
            .context("no round report")?;
        ensure!(!server_err.contains("error"), "server errors: {server_err}");
        ensure!(
            faults >= self.min_faults,
            "only {faults} cuts happened before the transfer ended; raise RELIABILITY_FAULT_MAX_SIZE"
        );
        let after = mptcp_counters(tb.netns("gw2")?)?;
        ensure!(
            delta(&self.before, &after, "MPCapableSYNRX") >= self.conns,
            "gw2 saw fewer MP_CAPABLE SYNs than the {} connections: not all were MPTCP",
            self.conns
        );
        ensure!(
            delta(&self.before, &after, "MPJoinSynRx") >= 1,
            "no subflow joined over link 2"
        );
        let server = server_err
            .lines()
            .filter_map(|l| l.strip_prefix("server: "))
            .map(fields)
            .find(|f| f.contains_key("served"))
            .unwrap_or_default();
        Ok(CutReport {
            faults,
            worst,
            settled,
            round,
            server,
        })
    }

    /// gw2's MPTcpExt counters that moved since the start, as `Name +N`.
    fn counters_moved(&self) -> String {
        let after = self
            .tb
            .netns("gw2")
            .ok()
            .and_then(|ns| mptcp_counters(ns).ok())
            .unwrap_or_default();
        let mut moved: Vec<String> = after
            .keys()
            .filter(|k| delta(&self.before, &after, k) > 0)
            .map(|k| format!("{k} +{}", delta(&self.before, &after, k)))
            .collect();
        moved.sort();
        moved.join(", ")
    }

    /// gw2's side of a stall: the counters that moved, and its first
    /// established TCP sockets (MPTCP subflows) with their congestion
    /// state (`ss -tin`: cwnd, pacing and delivery rate, backoff, lost,
    /// unacked), which say whether the sender backed off, lost its rate
    /// estimate, or has nothing to send.
    /// Its MPTCP connections too (`ss -Mmi`: what each holds in memory,
    /// its sequence numbers): a connection whose buffer is full of data
    /// beyond a hole stops taking data from its subflows.
    fn peer_state(&self) -> String {
        const SOCKETS: usize = 24;
        let ss = |args: &[&str]| {
            self.tb
                .command("gw2", "ss")
                .ok()
                .and_then(|mut c| run_ok(c.args(args), Duration::from_secs(10)).ok())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let subflows = ss(&["-tinH", "state", "established"]);
        let subflows: Vec<&str> = subflows.lines().take(2 * SOCKETS).collect();
        let conns = ss(&["-MmiH"]);
        let conns: Vec<&str> = conns.lines().take(2 * SOCKETS).collect();
        let stack = self.stack_state.map(|f| f()).unwrap_or_default();
        format!(
            "gw2's MPTcpExt counters that moved: {}\n\
             gw2's first {SOCKETS} established sockets (ss -tin):\n{}\n\
             gw2's first {SOCKETS} MPTCP connections (ss -Mmi):\n{}\n{stack}",
            self.counters_moved(),
            subflows.join("\n"),
            conns.join("\n")
        )
    }

    fn set_link(&self, link: u32, up: bool) -> Result<()> {
        match self.at {
            CutAt::Link => Ok(self.tb.set_link(link, up)?),
            CutAt::PeerEnd => set_peer_end(self.tb, link, up),
        }
    }
}

/// The soak driver's folder (`RELIABILITY_SOAK_DIR`, set by
/// scripts/soak.sh), if this run is part of a soak.
pub fn soak_dir() -> Option<PathBuf> {
    std::env::var_os("RELIABILITY_SOAK_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// What all the runs of a soak moved.
#[derive(Debug, Default)]
pub struct SoakTotals {
    /// Runs completed.
    pub runs: u64,
    /// Bytes the load clients moved, over all runs.
    pub bytes: u64,
    /// Link cuts made, over all runs.
    pub cuts: u64,
    /// Connections the load server served, and how many of them had
    /// MPTCP checksums on.
    pub served: u64,
    /// Of those, the connections with MPTCP checksums on.
    pub csum: u64,
}

impl SoakTotals {
    fn line(&self, elapsed: Duration) -> String {
        format!(
            "runs={} bytes={} cuts={} served={} csum={} seconds={}",
            self.runs,
            self.bytes,
            self.cuts,
            self.served,
            self.csum,
            elapsed.as_secs()
        )
    }
}

/// Runs a path-cut test's body `once` (one load round under cuts, with
/// its own server and client) again and again on the same testbed until
/// the soak's budget is spent: `RELIABILITY_SOAK_SECONDS` of running or
/// `RELIABILITY_SOAK_BYTES` moved, whichever comes first (neither set:
/// one run, the CI test as it always was). A failed run ends it.
///
/// For scripts/soak.sh, with `RELIABILITY_SOAK_DIR` set: writes
/// `testbed` (the namespaces and the testbed id, so the script can
/// capture on the receiver and clean up after an interrupt), waits for
/// the script's `capture-ready` so no byte goes by uncaptured, appends the
/// running totals to `progress` after every run, and at the end writes
/// `counters` (the MPTcpExt deltas of gw1's and gw2's namespaces) and
/// `result`, and waits for the script's `capture-stopped` before the
/// testbed goes. `RELIABILITY_CHECKSUM=1` turns MPTCP checksums on in gw2
/// (the receiver) first; the server then proves every connection used
/// them.
pub fn soak_path_cuts(
    tb: &Testbed,
    mut once: impl FnMut() -> Result<CutReport>,
) -> Result<SoakTotals> {
    let seconds = knob("RELIABILITY_SOAK_SECONDS", 0)?;
    let bytes_goal = knob("RELIABILITY_SOAK_BYTES", 0)?;
    let checksum = knob("RELIABILITY_CHECKSUM", 0)? == 1;
    let dir = soak_dir();
    let nodes = ["gw1", "gw2"];
    if checksum {
        sysctl_in(tb, "gw2", "net.mptcp.checksum_enabled=1")?;
    }
    let mut before = Vec::new();
    for node in nodes {
        before.push(mptcp_counters(tb.netns(node)?)?);
    }
    if let Some(dir) = &dir {
        let mut text = format!("id={}\n", tb.id());
        for node in nodes {
            text.push_str(&format!("{node}_netns={}\n", tb.netns(node)?));
        }
        std::fs::write(dir.join("testbed"), text)?;
        let ready = dir.join("capture-ready");
        wait_until(Duration::from_secs(60), "the soak's capture", || {
            ready.exists()
        })?;
    }
    let started = Instant::now();
    let mut totals = SoakTotals::default();
    let outcome = loop {
        match once() {
            Ok(run) => {
                totals.runs += 1;
                totals.bytes += get(&run.round, "bytes");
                totals.cuts += run.faults;
                totals.served += run.server.get("served").copied().unwrap_or(0);
                totals.csum += run.server.get("csum").copied().unwrap_or(0);
                if let Some(dir) = &dir {
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(dir.join("progress"))?;
                    std::io::Write::write_all(
                        &mut f,
                        format!("{}\n", totals.line(started.elapsed())).as_bytes(),
                    )?;
                }
            }
            Err(e) => break Err(e),
        }
        let spent = (seconds > 0 && started.elapsed() >= Duration::from_secs(seconds))
            || (bytes_goal > 0 && totals.bytes >= bytes_goal);
        if spent || (seconds == 0 && bytes_goal == 0) {
            break Ok(());
        }
    };
    if let Some(dir) = &dir {
        // Written whatever the outcome: after a mismatch these say what
        // each side's MPTCP saw (retransmits, checksum errors, fallbacks).
        let mut text = String::new();
        for (node, before) in nodes.iter().zip(&before) {
            let after = mptcp_counters(tb.netns(node)?)?;
            let mut names: Vec<&String> = after.keys().collect();
            names.sort();
            for name in names {
                let d = delta(before, &after, name);
                if d > 0 {
                    text.push_str(&format!("{node} {name} {d}\n"));
                }
            }
        }
        std::fs::write(dir.join("counters"), text)?;
        let verdict = match &outcome {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("failed: {e:#}"),
        };
        std::fs::write(
            dir.join("result"),
            format!("{}\n{verdict}\n", totals.line(started.elapsed())),
        )?;
        // The capture runs in gw2's namespace, whose removal would kill
        // it mid-write: the script stops it first, then says so.
        let stopped = dir.join("capture-stopped");
        let _ = wait_until(
            Duration::from_secs(20),
            "the soak's capture to stop",
            || stopped.exists(),
        );
    }
    outcome?;
    if checksum {
        ensure!(
            totals.served > 0 && totals.csum == totals.served,
            "checksums asked for, but only {} of {} connections had them",
            totals.csum,
            totals.served
        );
    }
    Ok(totals)
}

/// Takes gw2's end of `link` down or up; its connected routes come back
/// with it (its addresses are kept while down).
pub fn set_peer_end(tb: &Testbed, link: u32, up: bool) -> Result<()> {
    let netns = tb.netns("gw2")?.to_string();
    let ifname = tb.ifname("gw2", link)?.to_string();
    let state = if up { "up" } else { "down" };
    run_ok(
        Command::new("ip").args(["-n", &netns, "link", "set", &ifname, state]),
        Duration::from_secs(20),
    )?;
    Ok(())
}

/// `key` of a report; u64::MAX if missing, so that no bound is met by
/// a report that lacks it.
pub fn get(report: &HashMap<String, u64>, key: &str) -> u64 {
    report.get(key).copied().unwrap_or(u64::MAX)
}

/// Parses a `key=value key=value` line of whole numbers.
pub fn fields(line: &str) -> HashMap<String, u64> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

/// The counters of `node`'s interface for `link`, from /proc/net/dev as
/// seen inside the node (the testbed does not remount /sys).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DevCounters {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Frames the stack handed to the device and the device dropped (a
    /// veth whose peer is down drops every frame written to it).
    pub tx_dropped: u64,
}

/// Reads `node`'s /proc/net/dev line for its interface on `link`.
pub fn dev_counters(tb: &Testbed, node: &str, link: u32) -> Result<DevCounters> {
    let ifname = tb.ifname(node, link)?.to_string();
    let out = run_ok(
        plain(tb, node, "cat")?.arg("/proc/net/dev"),
        Duration::from_secs(10),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (_, rest) = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim() == ifname)
        .with_context(|| format!("interface {ifname} not in /proc/net/dev of {node}"))?;
    // Columns: rx bytes, packets, errs, drop, fifo, frame, compressed,
    // multicast, then tx bytes, packets, errs, drop, ...
    let cols: Vec<u64> = rest
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    ensure!(
        cols.len() >= 12,
        "short /proc/net/dev line for {ifname} in {node}: {rest}"
    );
    Ok(DevCounters {
        rx_bytes: cols[0],
        tx_bytes: cols[8],
        tx_dropped: cols[11],
    })
}

/// Bytes received plus sent on `node`'s interface for `link`: traffic
/// in either direction.
pub fn link_bytes(tb: &Testbed, node: &str, link: u32) -> Result<u64> {
    let c = dev_counters(tb, node, link)?;
    Ok(c.rx_bytes + c.tx_bytes)
}

/// A child whose stdout is read line by line in a thread, so a test can
/// wait for a line with a deadline while the program keeps running. It
/// is killed when dropped.
pub struct Lines {
    child: Option<Child>,
    rx: mpsc::Receiver<String>,
    name: String,
}

impl Lines {
    /// Starts `cmd` (stdin empty, stdout read line by line, stderr piped); `name` labels it in
    /// errors.
    pub fn spawn(cmd: &mut Command, name: &str) -> Result<Lines> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        let stdout: ChildStdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Lines {
            child: Some(child),
            rx,
            name: name.to_string(),
        })
    }

    /// The process id; 0 once the process has been reaped.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// The next line, at most `timeout` away; `None` once stdout closed.
    pub fn next_line(&self, timeout: Duration) -> Result<Option<String>> {
        match self.rx.recv_timeout(timeout) {
            Ok(line) => Ok(Some(line)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Ok(None),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("{} printed nothing for {timeout:?}", self.name)
            }
        }
    }

    /// Waits for a line starting with `prefix`, returning it.
    pub fn expect(&self, prefix: &str, timeout: Duration) -> Result<String> {
        loop {
            match self.next_line(timeout)? {
                Some(line) if line.starts_with(prefix) => return Ok(line),
                Some(_) => continue,
                None => bail!("{} ended before printing {prefix:?}", self.name),
            }
        }
    }

    /// Has the program exited? Its status if so.
    pub fn try_status(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => bail!("{} already reaped", self.name),
        }
    }

    /// Sends `signal` to the program.
    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        let pid = self.pid() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid, which stays reserved
        // until we reap it.
        if unsafe { libc::kill(pid, signal) } != 0 {
            bail!("kill {pid}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits for exit (bounded, killed past it): status, the rest of
    /// stdout's lines, and all of stderr.
    pub fn finish(
        mut self,
        timeout: Duration,
    ) -> Result<(std::process::ExitStatus, Vec<String>, String)> {
        let mut child = self.child.take().context("already reaped")?;
        let name = self.name.clone();
        let out = match child.try_wait()? {
            // Already reaped by try_status: only its stderr is left.
            Some(status) => {
                let mut stderr = Vec::new();
                if let Some(mut e) = child.stderr.take() {
                    std::io::Read::read_to_end(&mut e, &mut stderr)?;
                }
                std::process::Output {
                    status,
                    stdout: Vec::new(),
                    stderr,
                }
            }
            None => crate::wait_bounded(child, timeout)
                .with_context(|| format!("waiting for {name}"))?,
        };
        let mut rest = Vec::new();
        while let Ok(line) = self.rx.recv_timeout(Duration::from_secs(5)) {
            rest.push(line);
        }
        Ok((
            out.status,
            rest,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Load generator: asyncio server and client, random payloads verified by sha256 both ways, per-round MPTCP and /proc figures.
pub const LOAD_PY: &str = r##"# Load generator for dropshim's reliability tests: asyncio on both sides.
# Protocol per connection: client sends 16-byte header (up, down sizes,
# big-endian u64) then `up` bytes; server replies sha256(up), then
# `down` random bytes, then sha256(down); the client half-closes once it
# has read that, the server checks that nothing followed the upload and
# closes, and the client checks that nothing followed the trailer. Each
# side verifies.
# The client's upload is a pattern of 8-byte words that each name their
# connection and offset, so that when the server's digest differs, the
# server can say where and how (lost, repeated, from another connection).
# Server environment (set by the soak driver, scripts/soak.sh):
#   LOAD_MISMATCH_FILE  the first difference of each upload is also appended
#                       there the moment it is seen, so a packet capture can
#                       be stopped before its ring buffer rotates it away;
#   LOAD_FAKE_MISMATCH=1  flips one byte of the first upload of 1 MiB or more
#                       as it arrives: proves the report and capture path.
# LOAD_RCVBUF=N gives each accepted connection an N-byte receive buffer
# (SO_RCVBUFFORCE, after the handshake fixed the window scale): see
# load_server_with() for why.
import array, asyncio, hashlib, os, random, signal, socket, struct, sys

CHUNK = 1 << 16
MAGIC = 0xD5A7 << 48

def pattern(tag, start, n):
    # Bytes start..start+n of connection `tag`'s upload (start % 8 == 0).
    base = MAGIC | tag << 32
    first = start // 8
    return array.array("Q", range(base + first, base + first + (n + 7) // 8)).tobytes()[:n]

def describe(word):
    if word >> 48 != MAGIC >> 48:
        return "no pattern word (%#x)" % word
    return "the word of offset %d of connection %d" % ((word & 0xFFFFFFFF) * 8, word >> 32 & 0xFFFF)

class PatternCheck:
    # Checks an upload against the pattern named by its first word; the
    # first difference is kept, and `on_wrong(offset)` called with the
    # upload offset of its first wrong byte. Uploads of other programs (no
    # pattern) are left to the digest.
    def __init__(self, on_wrong=None):
        self.carry, self.offset, self.base, self.wrong = b"", 0, None, None
        self.on_wrong = on_wrong

    def feed(self, block):
        data = self.carry + block
        k = len(data) // 8 * 8
        self.carry = data[k:]
        if k == 0 or self.wrong is not None:
            self.offset += k
            return
        words = array.array("Q", data[:k])
        if self.base is None:
            self.base = words[0] & ~0xFFFFFFFF if words[0] >> 48 == MAGIC >> 48 else -1
        if self.base >= 0:
            first = self.offset // 8
            want = array.array("Q", range(self.base + first, self.base + first + len(words)))
            if words != want:
                i = next(i for i in range(len(words)) if words[i] != want[i])
                got, exp = struct.pack("=Q", words[i]), struct.pack("=Q", want[i])
                first = next(j for j in range(8) if got[j] != exp[j])
                at = self.offset + 8 * i + first
                self.wrong = "at offset %d: expected %s, got %s (bytes %s, expected %s)" % (
                    at, describe(want[i]), describe(words[i]),
                    data[8 * i + first:8 * i + first + 32].hex(), exp[first:].hex())
                if self.on_wrong:
                    self.on_wrong(at)
        self.offset += k
SOL_MPTCP, MPTCP_INFO = 284, 1

def usage(pid):
    fds = len(os.listdir("/proc/%d/fd" % pid))
    st = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            st[k] = v.split()
    return {"fds": fds, "threads": int(st["Threads"][0]), "rss_kib": int(st["VmRSS"][0])}

def mptcp_state(sock):
    # Real kernel MPTCP_INFO (the shim passes SOL_MPTCP through).
    try:
        raw = sock.getsockopt(SOL_MPTCP, MPTCP_INFO, 96)
    except OSError:
        return None
    flags = struct.unpack_from("=I", raw, 8)[0]
    if flags & 1:
        return None
    return raw[0]  # extra subflows now open

async def send_random(writer, n):
    h = hashlib.sha256()
    while n > 0:
        block = os.urandom(min(CHUNK, n))
        h.update(block)
        writer.write(block)
        await writer.drain()
        n -= len(block)
    return h.digest()

async def send_pattern(writer, tag, n):
    h, off = hashlib.sha256(), 0
    while off < n:
        block = pattern(tag, off, min(CHUNK, n - off))
        h.update(block)
        writer.write(block)
        await writer.drain()
        off += len(block)
    return h.digest()

def mptcp_info(sock):
    # (first data sequence number, token, checksums on), from the kernel's
    # MPTCP_INFO: rcv_nxt less the in-order bytes received so far is the
    # sequence number of the connection's first data byte. None if the
    # socket is not MPTCP (or the kernel predates bytes_received).
    try:
        raw = sock.getsockopt(SOL_MPTCP, MPTCP_INFO, 96)
    except OSError:
        return None
    if len(raw) < 72 or struct.unpack_from("=I", raw, 8)[0] & 1:
        return None
    token, = struct.unpack_from("=I", raw, 12)
    rcv_nxt, = struct.unpack_from("=Q", raw, 32)
    received, = struct.unpack_from("=Q", raw, 64)
    return (rcv_nxt - received) % (1 << 64), token, raw[42]

FAKE = {"left": 1 if os.environ.get("LOAD_FAKE_MISMATCH") == "1" else 0}
RCVBUF = int(os.environ.get("LOAD_RCVBUF") or 0)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SERVED = {"served": 0, "mptcp": 0, "csum": 0}

async def recv_hashed(reader, n, check=None, alter=None):
    h = hashlib.sha256()
    pos = 0
    while n > 0:
        block = await reader.read(min(CHUNK, n))
        if not block:
            raise ConnectionError("peer closed with %d bytes missing" % n)
        if alter is not None and pos <= alter < pos + len(block):
            i = alter - pos
            block = block[:i] + bytes([block[i] ^ 0x5A]) + block[i + 1:]
        pos += len(block)
        h.update(block)
        if check:
            check.feed(block)
        n -= len(block)
    return h.digest()

async def serve(reader, writer):
    try:
        sock = writer.get_extra_info("socket")
        if RCVBUF:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        up, down = struct.unpack(">QQ", await reader.readexactly(16))
        info = mptcp_info(sock)
        SERVED["served"] += 1
        SERVED["mptcp"] += info is not None
        SERVED["csum"] += bool(info and info[2])
        peer = "%s:%d" % writer.get_extra_info("peername")[:2]

        def on_wrong(at):
            # The data sequence number of the wrong byte: the first data
            # byte's, plus the 16-byte header, plus the offset.
            now = mptcp_info(sock)
            where = ("token %08x, dsn %d (%#x), checksums %s" % (
                now[1], (now[0] + 16 + at) % (1 << 64), (now[0] + 16 + at) % (1 << 64),
                "on" if now[2] else "off") if now else "not MPTCP")
            note = "peer %s, %s" % (peer, where)
            check.wrong += "; " + note
            path = os.environ.get("LOAD_MISMATCH_FILE")
            if path:
                with open(path, "a") as f:
                    f.write("an upload of %d bytes differs %s\n" % (up, check.wrong))

        check = PatternCheck(on_wrong)
        alter = None
        if FAKE["left"] and up >= 1 << 20:
            FAKE["left"] = 0
            alter = 4096 + 3
        writer.write(await recv_hashed(reader, up, check, alter))
        if check.wrong:
            print("server: error: an upload of %d bytes differs %s" % (up, check.wrong),
                  file=sys.stderr, flush=True)
        writer.write(await send_random(writer, down))
        await writer.drain()
        # End of stream: the client half-closes once it has read the
        # trailer, and nothing may have followed the upload (a repeated
        # or stray segment shows here); then the server closes. Nobody
        # half-closes earlier: Linux opens no new subflow for a
        # half-closed MPTCP connection, so one whose paths are cut while
        # the download still runs would lose them all.
        extra = await reader.read(64)
        if extra:
            word = describe(struct.unpack_from("=Q", extra)[0]) if len(extra) >= 8 else "part of a word"
            print("server: error: an upload of %d bytes differs after its end: %d or more bytes "
                  "followed it, %s (bytes %s)" % (up, len(extra), word, extra[:32].hex()),
                  file=sys.stderr, flush=True)
    except (ConnectionError, asyncio.IncompleteReadError) as e:
        print("server: connection error: %r" % e, file=sys.stderr, flush=True)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass

async def server_main(host, port):
    srv = await asyncio.start_server(serve, host, port, backlog=256)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("listening", flush=True)
    await stop.wait()
    # Stopped (SIGTERM): what it served, for the soak's account of how
    # many connections ran with checksums. Connections still open are
    # not waited for, as before when SIGTERM killed it outright.
    print("server: " + " ".join("%s=%d" % kv for kv in SERVED.items()), file=sys.stderr, flush=True)
    os._exit(0)

async def one(tag, host, port, up, down, started, go, all_in, conns):
    reader, writer = await asyncio.open_connection(host, port)
    started.append(1)
    if len(started) == conns:
        all_in.set()
    await go.wait()
    writer.write(struct.pack(">QQ", up, down))
    sent = await send_pattern(writer, tag, up)
    if await reader.readexactly(32) != sent:
        raise AssertionError("server's digest of the upload of connection %d differs" % tag)
    got = await recv_hashed(reader, down)
    if await reader.readexactly(32) != got:
        raise AssertionError("download digest differs")
    extra = mptcp_state(writer.get_extra_info("socket"))
    writer.write_eof()  # the server checks that nothing followed the upload
    if await reader.read(1) != b"":
        raise AssertionError("bytes after the trailer")
    writer.close()
    await writer.wait_closed()
    return extra

async def client_round(host, port, conns, max_size, rng):
    sizes = [(rng.randint(0, max_size), rng.randint(0, max_size)) for _ in range(conns)]
    # Edge sizes: an empty and a one-byte payload in every round.
    sizes[0] = (0, 1)
    if conns > 1:
        sizes[1] = (1, 0)
    started, go, all_in = [], asyncio.Event(), asyncio.Event()
    tasks = [asyncio.ensure_future(one(i, host, port, u, d, started, go, all_in, conns))
             for i, (u, d) in enumerate(sizes)]
    waiter = asyncio.ensure_future(all_in.wait())
    while not waiter.done():
        done, _ = await asyncio.wait(tasks + [waiter], return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t is not waiter:
                t.result()  # a connect error surfaces here
    print("connected=%d" % conns, flush=True)
    go.set()
    extras = await asyncio.gather(*tasks)
    return sum(u + d for u, d in sizes), extras

async def client_main(a):
    rng = random.Random(a["seed"])
    for r in range(a["rounds"]):
        moved, extras = await client_round(a["host"], a["port"], a["conns"], a["max_size"], rng)
        rep = {"round": r, "bytes": moved, "conns": a["conns"],
               "mptcp": sum(1 for e in extras if e is not None),
               "joined": sum(1 for e in extras if e)}
        for who, pid in (("client", os.getpid()), ("server", a["server_pid"])):
            if pid:
                for k, v in usage(pid).items():
                    rep[who + "_" + k] = v
        print(" ".join("%s=%d" % kv for kv in rep.items()), flush=True)

def main():
    if sys.argv[1] == "server":
        asyncio.run(server_main(sys.argv[2], int(sys.argv[3])))
    else:
        a = {"host": sys.argv[2], "port": int(sys.argv[3]), "conns": int(sys.argv[4]),
             "rounds": int(sys.argv[5]), "max_size": int(sys.argv[6]), "seed": int(sys.argv[7]),
             "server_pid": int(sys.argv[8]) if len(sys.argv) > 8 else 0}
        asyncio.run(client_main(a))

main()
"##;

/// Peer-death cases: a server that holds or stalls, a client that waits or floods.
pub const PEER_PY: &str = r##"# Peer-death cases for dropshim's reliability tests. Blocking sockets.
# server HOST PORT hold|stall ; client HOST PORT recv|send|wait
import socket, struct, sys
role, host, port, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

def report_error(e):
    print("error=%s" % (type(e).__name__ if not isinstance(e, OSError) or not e.errno
                         else __import__("errno").errorcode[e.errno]), flush=True)
    sys.exit(3)

if role == "server":
    lst = socket.socket()
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind((host, port)); lst.listen(1)
    print("listening", flush=True)
    conn, _ = lst.accept()
    if mode == "stall":
        # Killed with unread data, this socket must reset the connection.
        # Linux 6.18's MPTCP sometimes closes it gracefully instead, and
        # the orphan then holds a blocked sender for a minute (README,
        # known limits); SO_LINGER 0 makes the close an abort for sure.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        got = 0
        while got < 1 << 20:
            got += len(conn.recv(1 << 16))
        print("stalled", flush=True)
    else:
        print("accepted", flush=True)
    try:
        while True:  # blocks until the peer goes away
            if not conn.recv(1 << 16):
                print("eof", flush=True)
                break
    except OSError as e:
        report_error(e)
    sys.exit(0)

c = socket.socket()
c.connect((host, port))
print("connected", flush=True)
try:
    if mode == "send":
        block = b"\xa5" * (1 << 20)
        for _ in range(4096):
            c.sendall(block)
        print("sent everything", flush=True)
    else:
        c.sendall(b"hello")
        got = c.recv(1 << 20)  # the server never answers
        if not got:
            raise ConnectionError("closed by peer before the reply")
except (OSError, ConnectionError) as e:
    report_error(e)
"##;

/// fork() with open sockets used by parent and child.
pub const FORK_PY: &str = r##"# fork() with open sockets: one connection written by the child then the
# parent, a listener created by the parent and used by the child, and a
# new connection opened by the child. Speaks load.py's protocol to PEER.
import array, hashlib, os, socket, struct, sys
host, peer, port = sys.argv[1], sys.argv[2], int(sys.argv[3])

def pattern(tag, start, n):
    # load.py's upload pattern (n and start multiples of 8): its server
    # then says where an upload went wrong, not only that it did.
    base = 0xD5A7 << 48 | tag << 32
    return array.array("Q", range(base + start // 8, base + (start + n) // 8)).tobytes()

def mptcp(s):
    try:
        raw = s.getsockopt(284, 1, 96)
        return not struct.unpack_from("=I", raw, 8)[0] & 1
    except OSError:
        return False

def recv_exact(s, n):
    out = b""
    while len(out) < n:
        b = s.recv(n - len(out))
        if not b:
            raise ConnectionError("short read")
        out += b
    return out

def exchange_tail(s, up_digest):
    if recv_exact(s, 32) != up_digest:
        raise AssertionError("upload digest differs")
    if recv_exact(s, 32) != hashlib.sha256(b"").digest():
        raise AssertionError("trailer differs")
    s.shutdown(socket.SHUT_WR)  # the server checks that nothing followed the upload
    if s.recv(1) != b"":
        raise AssertionError("extra bytes")

part_a, part_b = pattern(1, 0, 3 << 20), pattern(1, 3 << 20, 5 << 20)
shared = socket.create_connection((peer, port))
shared.sendall(struct.pack(">QQ", len(part_a) + len(part_b), 0))
lst = socket.socket(); lst.bind((host, 0)); lst.listen(1)
pid = os.fork()
if pid == 0:
    code = 0
    try:
        shared.sendall(part_a)          # the parent's connection
        conn, _ = lst.accept()          # the parent's listener
        msg = recv_exact(conn, 1 << 20)
        conn.sendall(hashlib.sha256(msg).digest())
        ok_accepted = mptcp(conn)
        own = socket.create_connection((peer, port))  # a new one
        body = pattern(2, 0, 2 << 20)
        own.sendall(struct.pack(">QQ", len(body), 0) + body)
        ok_own = mptcp(own)
        exchange_tail(own, hashlib.sha256(body).digest())
        print("child mptcp_accepted=%d mptcp_own=%d" % (ok_accepted, ok_own), flush=True)
    except Exception as e:
        print("child failed: %r" % e, flush=True)
        code = 1
    os._exit(code)
# The parent talks to its own listener, which the child accepts on.
to_child = socket.create_connection(lst.getsockname())
msg = os.urandom(1 << 20)
to_child.sendall(msg)
if recv_exact(to_child, 32) != hashlib.sha256(msg).digest():
    raise AssertionError("child's digest differs")
_, status = os.waitpid(pid, 0)
if status != 0:
    raise SystemExit("child exited with status %d" % status)
shared.sendall(part_b)                  # after the child wrote its part
ok_shared = mptcp(shared)
exchange_tail(shared, hashlib.sha256(part_a + part_b).digest())
print("parent mptcp_shared=%d mptcp_to_child=%d" % (ok_shared, mptcp(to_child)), flush=True)
print("bytes=%d" % (len(part_a) + len(part_b) + (2 << 20) + 2 * (1 << 20)))
"##;

/// Invalid arguments to every intercepted call, at the C level.
pub const BADCALLS_PY: &str = r##"# Invalid arguments to the calls dropshim intercepts, made at the C level
# (ctypes -> libc, so through the shim when it is preloaded). Prints one
# JSON object: call -> [return value, errno, extra]. Run with and without
# the shim; the results must be identical.
import ctypes, json, os, socket, struct, sys

libc = ctypes.CDLL(None, use_errno=True)
for name in ["socket", "connect", "bind", "listen", "accept", "accept4", "setsockopt",
             "getsockopt", "getsockname", "getpeername", "shutdown", "close", "dup2", "dup3"]:
    getattr(libc, name).restype = ctypes.c_int
VP = ctypes.c_void_p
BAD_PTR = VP(1)  # non-NULL, never mapped: the kernel says EFAULT
HOST, PEER, PORT = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = {}

def call(name, fn, *args, extra=None):
    ctypes.set_errno(0)
    ret = fn(*args)
    err = ctypes.get_errno() if ret < 0 else 0
    out[name] = [ret if ret < 0 else 0, err, extra() if extra else None]
    return ret

def tcp(family=socket.AF_INET, ty=socket.SOCK_STREAM):
    fd = libc.socket(family, ty, 0)
    assert fd >= 0, "socket() failed"
    return fd

def sin(ip, port):
    return struct.pack("=H", socket.AF_INET) + struct.pack(">H", port) + socket.inet_aton(ip) + b"\0" * 8

def sin6(ip, port):
    return struct.pack("=H", socket.AF_INET6) + struct.pack(">HI", port, 0) + socket.inet_pton(socket.AF_INET6, ip) + struct.pack("=I", 0)

def buf(b):
    return ctypes.create_string_buffer(b, len(b))

r, w = os.pipe()
peer = sin(PEER, PORT)
# socket()
call("socket_bad_protocol", libc.socket, socket.AF_INET, socket.SOCK_STREAM, 99)
call("socket_bad_type_flags", libc.socket, socket.AF_INET, socket.SOCK_STREAM | 0x40000000, 0)
call("socket_bad_family", libc.socket, 12345, socket.SOCK_STREAM, 0)
# connect()
call("connect_bad_fd", libc.connect, 9999, buf(peer), len(peer))
call("connect_negative_fd", libc.connect, -1, buf(peer), len(peer))
call("connect_not_socket", libc.connect, r, buf(peer), len(peer))
call("connect_null_addr", libc.connect, tcp(), None, 16)
call("connect_bad_ptr", libc.connect, tcp(), BAD_PTR, 16)
call("connect_zero_len", libc.connect, tcp(), buf(peer), 0)
call("connect_short_len", libc.connect, tcp(), buf(peer), 4)
call("connect_huge_len", libc.connect, tcp(), buf(peer), 100000)
six = sin6("2001:2:0:1::2", PORT)
call("connect_wrong_family_v6_on_v4", libc.connect, tcp(), buf(six), len(six))
call("connect_v4_on_v6", libc.connect, tcp(socket.AF_INET6), buf(peer), len(peer))
unix = struct.pack("=H", socket.AF_UNIX) + b"/nonexistent\0"
call("connect_unix_family", libc.connect, tcp(), buf(unix), len(unix))
fd = tcp(); libc.connect(fd, buf(peer), len(peer))
call("connect_twice", libc.connect, fd, buf(peer), len(peer))
refused = sin(PEER, 1)
call("connect_refused", libc.connect, tcp(), buf(refused), len(refused))
# bind()
local = sin(HOST, 0)
call("bind_bad_fd", libc.bind, 9999, buf(local), len(local))
call("bind_not_socket", libc.bind, r, buf(local), len(local))
call("bind_null_addr", libc.bind, tcp(), None, 16)
call("bind_bad_ptr", libc.bind, tcp(), BAD_PTR, 16)
call("bind_short_len", libc.bind, tcp(), buf(local), 8)
call("bind_wrong_family", libc.bind, tcp(), buf(six), len(six))
foreign = sin("198.18.250.250", 0)
call("bind_not_local", libc.bind, tcp(), buf(foreign), len(foreign))
fd = tcp(); libc.bind(fd, buf(local), len(local))
call("bind_twice", libc.bind, fd, buf(local), len(local))
busy = tcp(); used = sin(HOST, PORT + 1); libc.bind(busy, buf(used), len(used)); libc.listen(busy, 1)
call("bind_in_use", libc.bind, tcp(), buf(used), len(used))
# listen()
call("listen_bad_fd", libc.listen, 9999, 1)
call("listen_not_socket", libc.listen, r, 1)
call("listen_negative_backlog", libc.listen, tcp(), -5)
# accept()/accept4()
call("accept_bad_fd", libc.accept, 9999, None, None)
call("accept_not_socket", libc.accept, r, None, None)
call("accept_not_listening", libc.accept, tcp(), None, None)
nb = tcp(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK); libc.listen(nb, 1)
call("accept_nonblocking_empty", libc.accept, nb, None, None)
call("accept4_bad_flags", libc.accept4, busy, None, None, 0x1234)
# setsockopt()
one = ctypes.c_int(1)
call("setsockopt_bad_fd", libc.setsockopt, 9999, socket.SOL_SOCKET, socket.SO_REUSEADDR, ctypes.byref(one), 4)
call("setsockopt_not_socket", libc.setsockopt, r, socket.SOL_SOCKET, socket.SO_REUSEADDR, ctypes.byref(one), 4)
call("setsockopt_null_value", libc.setsockopt, tcp(), socket.SOL_SOCKET, socket.SO_REUSEADDR, None, 4)
call("setsockopt_null_value_zero_len", libc.setsockopt, tcp(), socket.SOL_SOCKET, socket.SO_REUSEADDR, None, 0)
call("setsockopt_bad_ptr", libc.setsockopt, tcp(), socket.SOL_SOCKET, socket.SO_REUSEADDR, BAD_PTR, 4)
call("setsockopt_short_len", libc.setsockopt, tcp(), socket.SOL_SOCKET, socket.SO_REUSEADDR, ctypes.byref(one), 1)
call("setsockopt_tcp_null_value", libc.setsockopt, tcp(), socket.IPPROTO_TCP, socket.TCP_NODELAY, None, 4)
call("setsockopt_maxseg_null_value", libc.setsockopt, tcp(), socket.IPPROTO_TCP, socket.TCP_MAXSEG, None, 4)
call("setsockopt_maxseg_bad_ptr", libc.setsockopt, tcp(), socket.IPPROTO_TCP, socket.TCP_MAXSEG, BAD_PTR, 4)
tiny = ctypes.c_int(1)
call("setsockopt_maxseg_too_small", libc.setsockopt, tcp(), socket.IPPROTO_TCP, socket.TCP_MAXSEG, ctypes.byref(tiny), 4)
fd = tcp(); mss = ctypes.c_int(1200)
call("setsockopt_maxseg_ok", libc.setsockopt, fd, socket.IPPROTO_TCP, socket.TCP_MAXSEG, ctypes.byref(mss), 4)
call("setsockopt_unknown_option", libc.setsockopt, tcp(), socket.SOL_SOCKET, 9999, ctypes.byref(one), 4)
call("setsockopt_unknown_level", libc.setsockopt, tcp(), 7777, 1, ctypes.byref(one), 4)
cc = buf(b"no_such_cc\0")
call("setsockopt_bad_congestion", libc.setsockopt, tcp(), socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc, 11)
call("setsockopt_huge_len", libc.setsockopt, tcp(), socket.SOL_SOCKET, socket.SO_RCVBUF, ctypes.byref(one), 1 << 20)
# getsockopt()
def get(name, fd, level, opt, size, lenval=None, null_val=False, null_len=False, bad_val=False):
    b = ctypes.create_string_buffer(max(size, 1))
    ln = ctypes.c_uint(size if lenval is None else lenval)
    val = None if null_val else (BAD_PTR if bad_val else b)
    lp = None if null_len else ctypes.byref(ln)
    call(name, libc.getsockopt, fd, level, opt, val, lp,
         extra=lambda: [ln.value, b.raw[:min(ln.value, size)].hex() if not (null_val or bad_val) else None])
get("getsockopt_bad_fd", 9999, socket.SOL_SOCKET, socket.SO_TYPE, 4)
get("getsockopt_null_len", tcp(), socket.SOL_SOCKET, socket.SO_TYPE, 4, null_len=True)
get("getsockopt_null_value", tcp(), socket.SOL_SOCKET, socket.SO_TYPE, 4, null_val=True)
get("getsockopt_bad_ptr", tcp(), socket.SOL_SOCKET, socket.SO_TYPE, 4, bad_val=True)
get("getsockopt_negative_len", tcp(), socket.SOL_SOCKET, socket.SO_TYPE, 4, lenval=0xffffffff)
get("getsockopt_protocol_full", tcp(), socket.SOL_SOCKET, socket.SO_PROTOCOL, 4)
get("getsockopt_protocol_short_2", tcp(), socket.SOL_SOCKET, socket.SO_PROTOCOL, 2)
get("getsockopt_protocol_short_1", tcp(), socket.SOL_SOCKET, socket.SO_PROTOCOL, 1)
get("getsockopt_protocol_zero", tcp(), socket.SOL_SOCKET, socket.SO_PROTOCOL, 0)
get("getsockopt_protocol_long", tcp(), socket.SOL_SOCKET, socket.SO_PROTOCOL, 8)
get("getsockopt_type_short", tcp(), socket.SOL_SOCKET, socket.SO_TYPE, 2)
get("getsockopt_nodelay_short", tcp(), socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
get("getsockopt_error_fresh", tcp(), socket.SOL_SOCKET, socket.SO_ERROR, 4)
get("getsockopt_congestion_short", tcp(), socket.IPPROTO_TCP, socket.TCP_CONGESTION, 3)
get("getsockopt_unknown", tcp(), socket.SOL_SOCKET, 9999, 4)
get("getsockopt_maxseg_unconnected", fd, socket.IPPROTO_TCP, socket.TCP_MAXSEG, 4)
# getsockname()/getpeername()
def name_call(label, fn, fd, size, null_addr=False, null_len=False, bad_ptr=False):
    b = ctypes.create_string_buffer(max(size, 1))
    ln = ctypes.c_uint(size)
    a = None if null_addr else (BAD_PTR if bad_ptr else b)
    call(label, fn, fd, a, None if null_len else ctypes.byref(ln),
         extra=lambda: [ln.value, b.raw[:2].hex() if size >= 2 and not (null_addr or bad_ptr) else None])
name_call("getsockname_bad_fd", libc.getsockname, 9999, 16)
name_call("getsockname_not_socket", libc.getsockname, r, 16)
name_call("getsockname_null_addr", libc.getsockname, tcp(), 16, null_addr=True)
name_call("getsockname_null_len", libc.getsockname, tcp(), 16, null_len=True)
name_call("getsockname_bad_ptr", libc.getsockname, tcp(), 16, bad_ptr=True)
name_call("getsockname_short", libc.getsockname, tcp(), 4)
name_call("getpeername_unconnected", libc.getpeername, tcp(), 16)
name_call("getpeername_bad_fd", libc.getpeername, 9999, 16)
# shutdown()/close()/dup2()/dup3()
call("shutdown_bad_fd", libc.shutdown, 9999, socket.SHUT_RDWR)
call("shutdown_bad_how", libc.shutdown, tcp(), 7)
call("shutdown_unconnected", libc.shutdown, tcp(), socket.SHUT_RDWR)
call("close_bad_fd", libc.close, 9999)
fd = tcp(); libc.close(fd)
call("close_twice", libc.close, fd)
call("dup2_bad_fd", libc.dup2, 9999, 50)
call("dup3_same_fd", libc.dup3, r, r, 0)
call("dup3_bad_flags", libc.dup3, r, 60, 0x1234)
# A socket replaced by dup2 must be forgotten: the new fd works as a pipe.
fd = tcp(); libc.dup2(w, fd)
call("dup2_over_socket_then_write", lambda: os.write(fd, b"x") - 1)
print(json.dumps(out, sort_keys=True))
# Not compared: whether a socket opened after all of the above still
# speaks MPTCP (a bad call must not turn MPTCP off for the process).
probe = socket.socket()
try:
    probe.getsockopt(284, 1, 96)
    still = True
except OSError:
    still = False
print(json.dumps({"mptcp_after": still}))
"##;

/// Signals delivered during blocking calls, with and without SA_RESTART.
pub const SIG_PY: &str = r##"# Signals during blocking socket calls, at the C level (ctypes -> libc ->
# the shim when preloaded). For each call: the main thread blocks in it, a
# helper thread waits until /proc says the main thread sits in that very
# system call, sends SIGUSR1 to it, waits until the C-level handler ran
# (Python's wakeup fd), then unblocks the call. Without SA_RESTART the
# call must fail with EINTR; with SA_RESTART it must complete.
import ctypes, json, os, select, signal, socket, struct, sys, threading, time

libc = ctypes.CDLL(None, use_errno=True)
HOST, PEER, PORT, DEAD = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
NR = {"accept": {43, 288}, "recvfrom": {45, 0}, "connect": {42}, "sendto": {44, 1}}
MAIN_TID = threading.get_native_id()
rd, wr = os.pipe()
os.set_blocking(wr, False)
signal.set_wakeup_fd(wr)
signal.signal(signal.SIGUSR1, lambda *_: None)

def in_syscall(nrs, deadline):
    while time.monotonic() < deadline:
        with open("/proc/self/task/%d/syscall" % MAIN_TID) as f:
            first = f.read().split()[0]
        if first.isdigit() and int(first) in nrs:
            return True
        select.select([], [], [], 0.002)  # poll pacing, bounded by deadline
    return False

def helper(kind, unblock, report):
    deadline = time.monotonic() + 10
    if not in_syscall(NR[kind], deadline):
        report["error"] = "main thread never blocked in %s" % kind
        unblock()
        return
    signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
    ready, _, _ = select.select([rd], [], [], 10)
    report["handled"] = bool(ready) and os.read(rd, 16) != b""
    unblock()

def run(kind, restart, call, unblock):
    signal.siginterrupt(signal.SIGUSR1, not restart)
    report = {}
    t = threading.Thread(target=helper, args=(kind, unblock, report))
    t.start()
    ctypes.set_errno(0)
    ret = call()
    err = ctypes.get_errno() if ret < 0 else 0
    t.join(15)
    return {"ok": ret >= 0, "errno": err, **report}

def mptcp(s):
    try:
        s.getsockopt(284, 1, 96)
        return True
    except OSError:
        return False

out, meta = {}, {}
for restart in (False, True):
    tag = "restart" if restart else "norestart"
    # accept(): a connection from the helper unblocks it.
    lst = socket.socket(); lst.bind((HOST, 0)); lst.listen(4)
    conns = []
    def unblock_accept():
        c = socket.socket(); c.connect(lst.getsockname()); conns.append(c)
    out["accept_" + tag] = run("accept", restart, lambda: libc.accept(lst.fileno(), None, None), unblock_accept)
    # recv(): the peer sends one byte to unblock it.
    a = socket.socket(); a.connect(lst.getsockname()); b, _ = lst.accept()
    meta["mptcp_" + tag] = mptcp(a)
    buf = ctypes.create_string_buffer(16)
    out["recv_" + tag] = run("recvfrom", restart, lambda: libc.recv(a.fileno(), buf, 16, 0), lambda: b.send(b"!"))
    # send(): the peer drains its receive buffer to unblock it.
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big = ctypes.create_string_buffer(8 << 20)
    stop = threading.Event()
    def drain():
        b.settimeout(10)
        try:
            while not stop.is_set():
                if not b.recv(1 << 20):
                    break
        except OSError:
            pass
    def unblock_send():
        threading.Thread(target=drain, daemon=True).start()
    res = run("sendto", restart, lambda: libc.send(a.fileno(), big, len(big), 0), unblock_send)
    out["send_" + tag] = res
    stop.set(); a.close(); b.close(); lst.close()
    for c in conns:
        c.close()
    # connect(): to an address nobody answers on link 1 (the neighbour
    # never resolves); the helper has nothing to do but wait.
    c = socket.socket()
    dead = struct.pack("=H", socket.AF_INET) + struct.pack(">H", PORT) + socket.inet_aton(DEAD) + b"\0" * 8
    res = run("connect", restart, lambda: libc.connect(c.fileno(), dead, len(dead)), lambda: None)
    out["connect_" + tag] = res
    c.close()
print(json.dumps(out, sort_keys=True))
print(" ".join("%s=%d" % kv for kv in sorted(meta.items())))
"##;

/// The load server (shimmed on the native backend, long-lived) in gw2 on
/// its link-1 address.
pub fn load_server(tb: &Testbed, scripts: &Scripts, port: u16) -> Result<Lines> {
    load_server_with(tb, scripts, port, shimmed(tb, "gw2", "python3", &[])?)
}

/// `python3` in `node` under `mptcpize run`, no shim: the kernel's own
/// MPTCP through mptcpd's wrapper, the soak's reference with no dropshim.
pub fn mptcpized(tb: &Testbed, node: &str) -> Result<Command> {
    let mut cmd = plain(tb, node, "mptcpize")?;
    cmd.args(["run", "python3"]);
    Ok(cmd)
}

/// Sets `setting` (`name=value`) with sysctl in `node`'s namespace.
fn sysctl_in(tb: &Testbed, node: &str, setting: &str) -> Result<()> {
    run_ok(
        Command::new("ip").args(["netns", "exec", tb.netns(node)?, "sysctl", "-qw", setting]),
        Duration::from_secs(10),
    )?;
    Ok(())
}

/// The receive buffer the load server gives each connection
/// (`RELIABILITY_PEER_RCVBUF`, bytes; 0 leaves gw2's defaults and the
/// host kernel's autotuning). The host kernel's MPTCP stops taking data
/// out of its subflows while a connection's memory is over its buffer,
/// the data that fills a hole included: a connection whose buffer holds
/// data beyond a hole lost on a cut link then waits for good (README,
/// known limits; seen with a uml or lkl guest's 6.12 as the sender).
/// That is the native peer's kernel, not the stack under test. So gw2's
/// largest automatic buffer (`tcp_rmem`) is 4 MiB, which caps every
/// window it advertises at 8 MiB through the window scale chosen at the
/// handshake, and the server then forces each connection's buffer to
/// this (doubled by the kernel): more than any such window's data can
/// take, whatever it holds beyond a hole.
const PEER_RCVBUF: u64 = 16 << 20;

/// gw2's `tcp_rmem` while the load server forces its buffers (above).
const PEER_TCP_RMEM: &str = "net.ipv4.tcp_rmem=4096 131072 4194304";

/// The load server in gw2 on its link-1 address, started by `cmd` (a
/// python3 command): shimmed or under mptcpize. In a soak it reports
/// each mismatch to the soak's folder the moment it sees it.
pub fn load_server_with(
    tb: &Testbed,
    scripts: &Scripts,
    port: u16,
    mut cmd: Command,
) -> Result<Lines> {
    let ip = tb.addr4("gw2", 1)?.to_string();
    let rcvbuf = knob("RELIABILITY_PEER_RCVBUF", PEER_RCVBUF)?;
    if rcvbuf > 0 {
        sysctl_in(tb, "gw2", PEER_TCP_RMEM)?;
        cmd.env("LOAD_RCVBUF", rcvbuf.to_string());
    }
    if let Some(dir) = soak_dir() {
        cmd.env("LOAD_MISMATCH_FILE", dir.join("mismatch"));
    }
    if knob("RELIABILITY_FAKE_MISMATCH", 0)? == 1 {
        cmd.env("LOAD_FAKE_MISMATCH", "1");
    }
    cmd.arg(scripts.path("load.py"))
        .args(["server", &ip, &port.to_string()]);
    let server = Lines::spawn(&mut cmd, "load server")?;
    server.expect("listening", Duration::from_secs(20))?;
    Ok(server)
}

/// The load client's arguments after its mode: the server (gw2's link-1
/// address and `port`), the load, a per-run seed and the server's pid.
pub fn load_client_args(
    tb: &Testbed,
    port: u16,
    (conns, rounds, max_size): (u64, u64, u64),
    server_pid: u32,
) -> Result<Vec<String>> {
    let seed = u64::from(std::process::id()) * 7919 + u64::from(port);
    Ok(vec![
        tb.addr4("gw2", 1)?.to_string(),
        port.to_string(),
        conns.to_string(),
        rounds.to_string(),
        max_size.to_string(),
        seed.to_string(),
        server_pid.to_string(),
    ])
}

/// The shimmed load client in gw1: `rounds` rounds of `conns` concurrent
/// connections, payload sizes up to `max_size` each way; `env` picks the
/// backend (empty: native).
pub fn load_client(
    tb: &Testbed,
    scripts: &Scripts,
    port: u16,
    shape: (u64, u64, u64),
    server_pid: u32,
    env: &[(&str, &str)],
) -> Result<Lines> {
    let cmd = shimmed(tb, "gw1", "python3", env)?;
    load_client_with(tb, scripts, port, shape, server_pid, cmd)
}

/// The load client in gw1, started by `cmd` (a python3 command).
pub fn load_client_with(
    tb: &Testbed,
    scripts: &Scripts,
    port: u16,
    (conns, rounds, max_size): (u64, u64, u64),
    server_pid: u32,
    mut cmd: Command,
) -> Result<Lines> {
    cmd.arg(scripts.path("load.py"))
        .arg("client")
        .args(load_client_args(
            tb,
            port,
            (conns, rounds, max_size),
            server_pid,
        )?);
    Lines::spawn(&mut cmd, "load client")
}
