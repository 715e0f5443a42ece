//! Support for dropshim's end-to-end tests: where the built artifacts are,
//! running programs with a bounded wait, checksums, and reading MPTCP
//! counters inside a namespace.
//!
//! The tests themselves live in `tests/tests/`, one file per area. They
//! need root (namespaces) and the release artifacts (`cargo build
//! --release` first; `scripts/test.sh` does both).

#![warn(missing_docs)]

pub mod device;
pub mod lkl;
pub mod reliability;
pub mod stack;
pub mod uml;
pub mod upload;

use anyhow::{bail, Context, Result};
use dropshim_stacks::{DeviceFile, Iface};
use dropshim_testbed::{Options, Spec, Testbed};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// Where `libdropshim.so` and `dropshim` are: `$DROPSHIM_TARGET_DIR`, else
/// `release` in cargo's `$CARGO_TARGET_DIR` (relative to the workspace, as
/// cargo takes it when run there), else the workspace's `target/release`.
pub fn target_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    match (
        std::env::var_os("DROPSHIM_TARGET_DIR"),
        std::env::var_os("CARGO_TARGET_DIR"),
    ) {
        (Some(dir), _) => PathBuf::from(dir),
        (None, Some(cargo)) => workspace.join(cargo).join("release"),
        (None, None) => workspace.join("target/release"),
    }
}

fn artifact(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --release` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// The preloaded library under test; panics (failing the test) when it was not built.
pub fn shim_path() -> PathBuf {
    artifact("libdropshim.so")
}

/// The `dropshim` command under test; panics (failing the test) when it was not built.
pub fn cli_path() -> PathBuf {
    artifact("dropshim")
}

/// The two-gateways testbed, unshaped.
pub fn two_gateways() -> Result<Testbed> {
    Ok(Testbed::up(
        &Spec::builtin("two-gateways")?,
        &Options::default(),
    )?)
}

/// `program` in `node` with the shim preloaded (native default policy,
/// unless `env` says otherwise) and no inherited dropshim settings.
pub fn shimmed(tb: &Testbed, node: &str, program: &str, env: &[(&str, &str)]) -> Result<Command> {
    let mut cmd = plain(tb, node, program)?;
    cmd.env("LD_PRELOAD", shim_path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(cmd)
}

/// `program` in `node` without the shim: the kernel's own behaviour.
pub fn plain(tb: &Testbed, node: &str, program: &str) -> Result<Command> {
    let mut cmd = tb.command(node, program)?;
    dropshim_stacks::clear_stack_env(&mut cmd);
    Ok(cmd)
}

/// An http URL for `file` at `ip:port` (IPv6 in brackets).
pub fn url(ip: std::net::IpAddr, port: u16, file: &str) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => format!("http://{v4}:{port}/{file}"),
        std::net::IpAddr::V6(v6) => format!("http://[{v6}]:{port}/{file}"),
    }
}

/// A port no other test in this run uses: tests run side by side in one
/// process (threads) and in several (nextest), so mix in the pid.
pub fn unique_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 2_000) as u16 * 10;
    base + NEXT.fetch_add(1, Ordering::Relaxed) % 10
}

/// Waits for `child` to exit, at most `timeout`; kills it past that.
pub fn wait_bounded(mut child: Child, timeout: Duration) -> Result<Output> {
    let pid = child.id() as libc::pid_t;
    // SAFETY: pidfd_open takes a pid and flags; it returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as libc::c_int;
    if pidfd < 0 {
        bail!("pidfd_open: {}", std::io::Error::last_os_error());
    }
    let mut pfd = libc::pollfd {
        fd: pidfd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd for the duration of the call.
    let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
    // SAFETY: closing the pidfd we opened above.
    unsafe { libc::close(pidfd) };
    if ready <= 0 {
        let _ = child.kill();
        let out = child.wait_with_output()?;
        bail!(
            "timed out after {timeout:?}; stdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(child.wait_with_output()?)
}

/// Runs `cmd` to completion with captured output, at most `timeout`.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    wait_bounded(child, timeout)
}

/// Like [`run_bounded`] but fails unless the program exits 0.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let out = run_bounded(cmd, timeout)?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// What a program that must succeed printed (trimmed stdout), or why
/// there is nothing to compare: a crash (inside the shim, say) shows up
/// as the signal that killed it, a failure with its output.
pub fn program_stdout(out: &Output, what: &str) -> Result<String> {
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = out.status.signal() {
        bail!(
            "{what} was killed by signal {sig}; stdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if !out.status.success() {
        bail!(
            "{what} failed ({}): stdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Device-file additions for tests of schedulers and path managers:
/// `[mptcp] scheduler`, a `cost` per interface (by position in the file)
/// dropshim's userspace path manager (`pm`: the lines of its
/// `[mptcp.userspace]` table, e.g. `policy = "fullmesh"`) and the MPTCP
/// endpoint roles of a node's last interface (`roles2`, in place of
/// `subflow`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeviceExtra {
    /// `[mptcp] scheduler`, if set.
    pub scheduler: Option<String>,
    /// Cost of each interface, by position in the file; `None` leaves it unset.
    pub costs: Vec<Option<u32>>,
    /// Lines of `[mptcp.userspace]`; setting it also selects `path_manager = "userspace"`.
    pub pm: Option<String>,
    /// Endpoint roles of the node's last interface.
    pub roles2: Option<Vec<String>>,
    /// Extra arguments of a uml instance's kernel command line (`[uml]
    /// cmdline`), such as a `sysctl.` setting of the guest.
    pub uml_cmdline: Vec<String>,
}

impl DeviceExtra {
    /// The device file of a node's `links` with these additions: each
    /// link's IPv4 address (and IPv6 with `ipv6`), and, with two links or
    /// more, the last one an MPTCP endpoint (`subflow` unless `roles2`
    /// says otherwise).
    pub fn device_file(&self, links: &[u32], ipv6: bool) -> DeviceFile {
        let subflow = vec!["subflow".to_string()];
        let interfaces = links
            .iter()
            .enumerate()
            .map(|(i, &link)| {
                let mut iface = Iface::on(link);
                iface.ipv6 = ipv6;
                if i + 1 == links.len() && links.len() > 1 {
                    iface.roles = self.roles2.clone().unwrap_or_else(|| subflow.clone());
                }
                iface.cost = self.costs.get(i).copied().flatten();
                iface
            })
            .collect();
        let mut file = DeviceFile::new(interfaces);
        file.scheduler.clone_from(&self.scheduler);
        file.userspace.clone_from(&self.pm);
        file.uml_cmdline.clone_from(&self.uml_cmdline);
        file
    }
}

/// A background process killed when the guard drops, so a failing test
/// never leaves a server behind.
pub struct Background {
    child: Option<Child>,
    name: String,
}

impl Background {
    /// Starts `cmd` (stdin empty, stdout and stderr piped); `name` labels it in errors.
    pub fn spawn(cmd: &mut Command, name: &str) -> Result<Self> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        Ok(Background {
            child: Some(child),
            name: name.to_string(),
        })
    }

    /// The process id; 0 once the process has been reaped.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Waits for the process to exit by itself, at most `timeout`.
    pub fn wait(mut self, timeout: Duration) -> Result<Output> {
        let child = self.child.take().context("already waited")?;
        wait_bounded(child, timeout).with_context(|| format!("waiting for {}", self.name))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `check` until it returns true or `timeout` passes. For waiting on
/// a condition another process brings about (a port listening), never as
/// a substitute for it.
pub fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    while Instant::now() < deadline {
        if check() {
            return Ok(());
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// Waits until something listens on TCP `port` inside namespace `netns`.
pub fn wait_listening(netns: &str, port: u16, timeout: Duration) -> Result<()> {
    wait_until(
        timeout,
        &format!("port {port} listening in {netns}"),
        || {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    netns,
                    "ss",
                    "-Hltn",
                    &format!("sport = :{port}"),
                ])
                .output()
                .map(|o| !o.stdout.is_empty())
                .unwrap_or(false)
        },
    )
}

/// The MPTcpExt counters of namespace `netns` (from /proc/net/netstat).
pub fn mptcp_counters(netns: &str) -> Result<HashMap<String, u64>> {
    let out = run_ok(
        Command::new("ip").args(["netns", "exec", netns, "cat", "/proc/net/netstat"]),
        Duration::from_secs(10),
    )?;
    Ok(parse_netstat(
        &String::from_utf8_lossy(&out.stdout),
        "MPTcpExt",
    ))
}

/// /proc/net/netstat holds pairs of lines: `Prefix: names...` then
/// `Prefix: values...`.
pub fn parse_netstat(text: &str, prefix: &str) -> HashMap<String, u64> {
    let tag = format!("{prefix}:");
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&tag)).collect();
    let mut out = HashMap::new();
    if let [names, values, ..] = lines.as_slice() {
        for (n, v) in names
            .split_whitespace()
            .skip(1)
            .zip(values.split_whitespace().skip(1))
        {
            if let Ok(v) = v.parse() {
                out.insert(n.to_string(), v);
            }
        }
    }
    out
}

/// Counter difference `after - before` for one name (0 when absent).
pub fn delta(before: &HashMap<String, u64>, after: &HashMap<String, u64>, name: &str) -> u64 {
    after
        .get(name)
        .copied()
        .unwrap_or(0)
        .saturating_sub(before.get(name).copied().unwrap_or(0))
}

/// Waits up to `timeout` until the MPTCP counter `name` of namespace
/// `netns` has grown since `before` (a join counted, say).
pub fn wait_counter_grows(
    netns: &str,
    before: &HashMap<String, u64>,
    name: &str,
    timeout: Duration,
) -> Result<()> {
    wait_until(timeout, &format!("{netns}'s {name} to grow"), || {
        mptcp_counters(netns).is_ok_and(|now| delta(before, &now, name) >= 1)
    })
}

/// The counters whose name starts with `prefix` that moved between two
/// readings, as `Name +N` pairs: the evidence a failed check prints.
pub fn deltas_named(
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
    prefix: &str,
) -> String {
    let mut moved: Vec<String> = after
        .keys()
        .filter(|k| k.starts_with(prefix))
        .filter_map(|k| {
            let d = delta(before, after, k);
            (d > 0).then(|| format!("{k} +{d}"))
        })
        .collect();
    moved.sort();
    if moved.is_empty() {
        format!("no {prefix}* counter moved")
    } else {
        moved.join(", ")
    }
}

/// Hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Writes `size` pseudo-random bytes (xorshift, seeded) to `path`:
/// incompressible and different per seed, without needing /dev/urandom.
pub fn write_random_file(path: &Path, size: usize, seed: u64) -> Result<()> {
    use std::io::Write;
    let mut state = seed | 1;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut chunk = [0u8; 8];
    for _ in 0..size / 8 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes());
        file.write_all(&chunk)?;
    }
    file.write_all(&vec![0x5a; size % 8])?;
    file.flush()?;
    Ok(())
}

/// A native peer that reads slowly, run as `python3 -c READER_PY IP PORT
/// PAUSE CHUNK PACE`: listens on IP:PORT, says `listening`, accepts one
/// connection, does not read for PAUSE seconds, then reads CHUNK bytes
/// at a time, waiting PACE seconds after each (the pauses are the
/// scenario, not a synchronisation), to the end of the stream, and says
/// `got LENGTH SHA256` of what came.
pub const READER_PY: &str = r#"
import hashlib, socket, sys, time
ip, port = sys.argv[1], int(sys.argv[2])
pause, chunk, pace = float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((ip, port))
l.listen(1)
print("listening", flush=True)
c, _ = l.accept()
time.sleep(pause)
h, n = hashlib.sha256(), 0
while True:
    b = c.recv(chunk)
    if not b:
        break
    n += len(b)
    h.update(b)
    if pace:
        time.sleep(pace)
print("got %d %s" % (n, h.hexdigest()), flush=True)
"#;

/// A python program for the emulated-socket backends (uml, lkl), run as
/// `python3 -c DUP_PY LOCAL PEER PORT` against an echo server at
/// PEER:PORT, LOCAL being the program's own address. Every way to
/// duplicate a socket (socket.dup and os.dup are
/// fcntl(F_DUPFD_CLOEXEC), os.dup2, fcntl(F_DUPFD), libc's dup), on a
/// connected socket, on one duplicated before its connect, on one
/// duplicated while its non-blocking connect is pending, and on one
/// duplicated before its listen: each duplicate must say what the
/// original says (the family python finds, SO_DOMAIN, SO_TYPE,
/// SO_PROTOCOL, getsockname, getpeername) and carry the
/// same connection (an echo through it arrives intact, and the original
/// still works once every duplicate is closed). One line per mismatch,
/// then `dup ok`.
pub const DUP_PY: &str = r##"import ctypes, fcntl, os, select, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
local, peer, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
bad = []

def view(s):
    out = [s.family] + [s.getsockopt(socket.SOL_SOCKET, o) for o in
                        (socket.SO_DOMAIN, socket.SO_TYPE, socket.SO_PROTOCOL)]
    out.append(s.getsockname())
    try:
        out.append(s.getpeername())
    except OSError as e:
        out.append("getpeername: errno %d" % e.errno)
    return out

def echo(s, tag):
    msg = (tag * 4096)[:65536]
    s.sendall(msg)
    got = b""
    while len(got) < len(msg):
        b = s.recv(65536)
        if not b:
            break
        got += b
    if got != msg:
        bad.append("%s: the echo came back altered (%d of %d bytes)" % (tag.decode(), len(got), len(msg)))

def same(name, orig, fd):
    d = socket.socket(fileno=fd)
    if view(d) != view(orig):
        bad.append("%s: %r, the original %r" % (name, view(d), view(orig)))
    return d

s = socket.create_connection((peer, port))
dups = [
    same("socket.dup", s, s.dup().detach()),
    same("os.dup", s, os.dup(s.fileno())),
    same("os.dup2", s, os.dup2(s.fileno(), 100)),
    same("F_DUPFD", s, fcntl.fcntl(s.fileno(), fcntl.F_DUPFD, 200)),
    same("dup", s, libc.dup(s.fileno())),
]
for i, d in enumerate(dups):
    echo(d, b"dup%d-" % i)
for d in dups:
    d.close()
echo(s, b"original-")
s.close()

# Duplicated before connect: the connect through the duplicate connects both.
f = socket.socket()
g = socket.socket(fileno=os.dup(f.fileno()))
try:
    g.connect((peer, port))
    if view(f) != view(g):
        bad.append("dup before connect: %r, the duplicate %r" % (view(f), view(g)))
    g.close()
    echo(f, b"before-connect-")
except Exception as e:
    bad.append("dup before connect: %r" % e)
f.close()

# Duplicated while a non-blocking connect is pending: the duplicate
# carries the connection too once it is made.
p = socket.socket()
p.setblocking(False)
p.connect_ex((peer, port))
q = socket.socket(fileno=os.dup(p.fileno()))
try:
    if not select.select([], [p], [], 10)[1]:
        bad.append("dup during connect: never writable")
    elif p.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
        bad.append("dup during connect: SO_ERROR %d" % p.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
    else:
        q.setblocking(True)
        if view(p) != view(q):
            bad.append("dup during connect: %r, the duplicate %r" % (view(p), view(q)))
        echo(q, b"during-connect-")
except Exception as e:
    bad.append("dup during connect: %r" % e)
q.close()
p.close()

# Duplicated before listen: both are the listening socket.
l = socket.socket()
l.bind((local, 0))
m = socket.socket(fileno=os.dup(l.fileno()))
try:
    l.listen(1)
    if view(l) != view(m):
        bad.append("dup before listen: %r, the duplicate %r" % (view(l), view(m)))
except Exception as e:
    bad.append("dup before listen: %r" % e)
m.close()
l.close()

for b in bad:
    print("MISMATCH", b)
print("dup ok" if not bad else "dup failed", flush=True)
"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netstat_pairs_are_read_by_name() {
        let text =
            "TcpExt: A B\nTcpExt: 1 2\nMPTcpExt: MPCapableSYNRX MPJoinAckRx\nMPTcpExt: 3 4\n";
        let m = parse_netstat(text, "MPTcpExt");
        assert_eq!(m.get("MPCapableSYNRX"), Some(&3));
        assert_eq!(m.get("MPJoinAckRx"), Some(&4));
        assert_eq!(m.get("A"), None);
    }

    #[test]
    fn moved_counters_are_named_with_their_growth() {
        let before = parse_netstat(
            "MPTcpExt: MPJoinSynTx MPJoinSynAckRx MPCapableSYNRX\nMPTcpExt: 1 0 5\n",
            "MPTcpExt",
        );
        let after = parse_netstat(
            "MPTcpExt: MPJoinSynTx MPJoinSynAckRx MPCapableSYNRX\nMPTcpExt: 3 0 9\n",
            "MPTcpExt",
        );
        assert_eq!(deltas_named(&before, &after, "MPJoin"), "MPJoinSynTx +2");
        assert_eq!(
            deltas_named(&before, &before, "MPJoin"),
            "no MPJoin* counter moved"
        );
    }
}
