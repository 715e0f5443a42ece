//! The lkl backend end to end: programs in gw1 run with the shim and
//! backend lkl, so their TCP lives in a Linux Kernel Library booted inside
//! their own process, which owns gw1's two links through packet sockets
//! (gw1's host stack keeps no address on them). The peer in gw2 is a
//! native MPTCP program (under Debian's `mptcpize`). Each test checks the
//! bytes (sha256) and MPTCP with a second subflow at the peer (MPTcpExt
//! counters in gw2).

use anyhow::{ensure, Context, Result};
use dropshim_testbed::{Options, Spec, Testbed};
use dropshim_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

const SHORT: Duration = Duration::from_secs(20);
const TRANSFER: Duration = Duration::from_secs(120);

/// liblkl.so, built (or found in its cache) by build-lkl.sh once per run.
fn liblkl() -> Result<PathBuf> {
    static LIB: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    LIB.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../backend-lkl/build-lkl.sh");
        let out = run_ok(Command::new("sh").arg(&script), Duration::from_secs(1800))
            .map_err(|e| format!("{}: {e:#}", script.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let dir = stdout.lines().last().unwrap_or("").trim();
        let lib = Path::new(dir).join("liblkl.so");
        if lib.is_file() {
            Ok(lib)
        } else {
            Err(format!(
                "{} did not produce {}",
                script.display(),
                lib.display()
            ))
        }
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// gw1 handed over to the library kernel: its links carry no host
/// address (the packet sockets see every frame; a host address would make
/// the host stack answer too), and a device file gives gw1's addresses to
/// the library kernel instead.
struct LklNode {
    _dir: tempfile::TempDir,
    config: PathBuf,
}

fn lkl_node(tb: &Testbed, roles2: &str) -> Result<LklNode> {
    for link in ["link1", "link2"] {
        run_ok(
            tb.command("gw1", "ip")?
                .args(["addr", "flush", "dev", link]),
            SHORT,
        )?;
    }
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("gw1-lkl.toml");
    std::fs::write(
        &config,
        format!(
            r#"[device]
name = "gw1lkl"
backend = "lkl"

[[interfaces]]
name = "link1"
addresses = ["{a1}/24"]

[[interfaces]]
name = "link2"
addresses = ["{a2}/24"]
endpoint = [{roles2}]

[mptcp]
limits = {{ subflows = 2, add_addr_accepted = 2 }}
"#,
            a1 = tb.addr4("gw1", 1)?,
            a2 = tb.addr4("gw1", 2)?,
        ),
    )?;
    Ok(LklNode { _dir: dir, config })
}

fn two_gateways(rate_mbit: Option<u32>) -> Result<Testbed> {
    Ok(Testbed::up(
        &Spec::builtin("two-gateways")?,
        &Options {
            rate_mbit,
            ..Options::default()
        },
    )?)
}

/// `program` in gw1 under the shim with backend lkl.
fn on_lkl(tb: &Testbed, node: &LklNode, program: &str) -> Result<Command> {
    let mut cmd = tb.command("gw1", program)?;
    cmd.env("LD_PRELOAD", shim_path())
        .env("DROPSHIM_CONFIG", &node.config)
        .env("DROPSHIM_BACKEND", "lkl")
        .env("DROPSHIM_LKL_LIB", liblkl()?)
        .env_remove("DROPSHIM_LOG");
    Ok(cmd)
}

/// `program` in gw2 as a native MPTCP program.
fn native_peer(tb: &Testbed, program: &str) -> Result<Command> {
    let mut cmd = tb.command("gw2", "mptcpize")?;
    cmd.args(["run", program]);
    Ok(cmd)
}

#[test]
fn lkl_curl_downloads_20mb_from_native_server_over_two_subflows() -> Result<()> {
    let tb = two_gateways(None)?;
    let node = lkl_node(&tb, r#""subflow""#)?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("blob.bin");
    write_random_file(&file, 20 << 20, 5)?;
    let port = unique_port();
    let ip = tb.addr4("gw2", 1)?;
    let mut srv = native_peer(&tb, "python3")?;
    srv.args([
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        &ip.to_string(),
        "--directory",
    ])
    .arg(dir.path());
    let _server = Background::spawn(&mut srv, "python3 -m http.server in gw2")?;
    wait_listening(tb.netns("gw2")?, port, SHORT)?;

    let before = mptcp_counters(tb.netns("gw2")?)?;
    let out = dir.path().join("got.bin");
    run_ok(
        on_lkl(&tb, &node, "curl")?
            .args(["-sS", "--fail", "-o"])
            .arg(&out)
            .arg(format!("http://{ip}:{port}/blob.bin")),
        TRANSFER,
    )?;
    let after = mptcp_counters(tb.netns("gw2")?)?;
    ensure!(
        sha256_file(&out)? == sha256_file(&file)?,
        "the 20 MiB file arrived corrupted through the lkl backend"
    );
    ensure!(
        delta(&before, &after, "MPCapableSYNRX") >= 1,
        "gw2 saw no MPTCP connection: {after:?}"
    );
    ensure!(
        delta(&before, &after, "MPJoinSynRx") >= 1,
        "gw2 saw no second subflow (MPJoinSynRx did not grow): {after:?}"
    );
    Ok(())
}

#[test]
fn lkl_http_server_serves_native_curl_and_announces_link2() -> Result<()> {
    let tb = two_gateways(None)?;
    // `signal`: the library kernel announces its link-2 address, so the
    // native client in gw2 opens the second subflow.
    let node = lkl_node(&tb, r#""signal""#)?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("served.bin");
    write_random_file(&file, 20 << 20, 6)?;
    let port = unique_port();
    let ip = tb.addr4("gw1", 1)?;
    let mut srv = on_lkl(&tb, &node, "python3")?;
    // Bound to every address: the second subflow arrives at the announced
    // link-2 address, and a join needs a listener that matches it.
    srv.args([
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        "0.0.0.0",
        "--directory",
    ])
    .arg(dir.path());
    let _server = Background::spawn(&mut srv, "python3 -m http.server on lkl")?;
    // The listener lives in the library kernel, invisible to `ss`: wait
    // until gw2 can fetch something.
    let probe = dir.path().join("probe.html");
    wait_until(SHORT, "the lkl http server answering", || {
        native_peer(&tb, "curl")
            .map(|mut c| {
                c.args(["-s", "--fail", "--max-time", "2", "-o"])
                    .arg(&probe)
                    .arg(format!("http://{ip}:{port}/"));
                run_ok(&mut c, SHORT).is_ok()
            })
            .unwrap_or(false)
    })?;

    let before = mptcp_counters(tb.netns("gw2")?)?;
    let out = dir.path().join("got.bin");
    run_ok(
        native_peer(&tb, "curl")?
            .args(["-sS", "--fail", "-o"])
            .arg(&out)
            .arg(format!("http://{ip}:{port}/served.bin")),
        TRANSFER,
    )?;
    let after = mptcp_counters(tb.netns("gw2")?)?;
    ensure!(
        sha256_file(&out)? == sha256_file(&file)?,
        "the file served through the lkl backend arrived corrupted"
    );
    ensure!(
        delta(&before, &after, "MPCapableSYNACKRX") >= 1,
        "gw2's client did not get an MPTCP SYN-ACK from the lkl server: {after:?}"
    );
    ensure!(
        delta(&before, &after, "MPJoinSynAckRx") >= 1,
        "gw2 opened no second subflow towards the announced address: {after:?}"
    );
    Ok(())
}

/// Socket semantics a program relies on, checked from inside a python
/// program on the lkl backend: non-blocking connect (EINPROGRESS, then
/// SO_ERROR 0 and the real addresses), a refused connect (SO_ERROR
/// ECONNREFUSED), options, accept4 with flags, and readiness of the
/// listening socket through select, poll and epoll mixed with a pipe.
const SEMANTICS: &str = r#"
import errno, os, select, socket, sys
gw1, gw2, port, closed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

c = socket.socket(); c.setblocking(False)
assert c.connect_ex((gw2, port)) == errno.EINPROGRESS
_, w, _ = select.select([], [c], [], 10); assert w == [c], "not writable"
assert c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
assert c.getsockname()[0] == gw1, c.getsockname()
assert c.getpeername() == (gw2, port), c.getpeername()
assert c.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
assert c.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) == socket.IPPROTO_TCP
assert c.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN) == socket.AF_INET
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
assert c.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
c.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
assert c.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
c.setblocking(True)
c.sendall(b"ping\n")
assert c.makefile("rb").readline() == b"ping\n"
c.close()

r = socket.socket(); r.setblocking(False)
assert r.connect_ex((gw2, closed)) == errno.EINPROGRESS
select.select([], [r], [], 10)
assert r.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED
r.close()

l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((gw1, 0)); l.listen(8); l.setblocking(False)
lport = l.getsockname()[1]; assert lport != 0
assert l.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
try:
    l.accept(); raise SystemExit("accept on an empty queue did not say EAGAIN")
except BlockingIOError:
    pass
pr, pw = os.pipe()
ep = select.epoll(); ep.register(l.fileno(), select.EPOLLIN); ep.register(pr, select.EPOLLIN)
po = select.poll(); po.register(l, select.POLLIN); po.register(pr, select.POLLIN)
assert ep.poll(0.2) == [] and po.poll(200) == []
k = socket.socket(); k.connect((gw1, lport))
assert ep.poll(10) == [(l.fileno(), select.EPOLLIN)]
assert [fd for fd, _ in po.poll(10000)] == [l.fileno()]
assert select.select([l, pr], [], [], 10)[0] == [l]
# python's accept() is accept4(SOCK_CLOEXEC)
a, peer = l.accept()
import fcntl
assert fcntl.fcntl(a.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC
assert peer == k.getsockname(), (peer, k.getsockname())
assert a.getpeername() == k.getsockname()
assert a.getsockname() == (gw1, lport)
k.sendall(b"x" * 100000); k.shutdown(socket.SHUT_WR)
a.setblocking(True)
got = b""
while True:
    b = a.recv(65536)
    if not b: break
    got += b
assert got == b"x" * 100000, len(got)
print("semantics ok")
"#;

#[test]
fn lkl_socket_semantics_nonblocking_connect_options_accept_and_readiness() -> Result<()> {
    let tb = two_gateways(None)?;
    let node = lkl_node(&tb, r#""subflow""#)?;
    let port = unique_port();
    let closed = unique_port();
    let gw2 = tb.addr4("gw2", 1)?;
    let mut echo = native_peer(&tb, "socat")?;
    echo.args([
        &format!("TCP-LISTEN:{port},bind={gw2},reuseaddr,fork"),
        "EXEC:cat",
    ]);
    let _echo = Background::spawn(&mut echo, "socat echo in gw2")?;
    wait_listening(tb.netns("gw2")?, port, SHORT)?;
    let out = run_ok(
        on_lkl(&tb, &node, "python3")?.args([
            "-c",
            SEMANTICS,
            &tb.addr4("gw1", 1)?.to_string(),
            &gw2.to_string(),
            &port.to_string(),
            &closed.to_string(),
        ]),
        SHORT,
    )
    .context("the semantics script failed on the lkl backend")?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("semantics ok"),
        "the script did not finish: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}
