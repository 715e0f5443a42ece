//! What only the native backend does, end to end: IPv6, the fallback to
//! TCP when MPTCP is off, broken configs, policy rules, sockets it must
//! leave alone, fork and exec, `dropshim run`. (curl, http.server and
//! iperf3 on every stack, native included, are in `programs.rs`.) Each
//! test checks what a user would: bytes intact (sha256) and
//! MPTCP really used (the peer namespace's MPTcpExt counters, or the
//! shim's own close report), not merely that the program exited 0.

use anyhow::{ensure, Context, Result};
use dropshim_testbed::Testbed;
use dropshim_tests::*;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const SHORT: Duration = Duration::from_secs(20);
const TRANSFER: Duration = Duration::from_secs(90);

/// Serves `dir` with `python3 -m http.server` in `node`, bound to `ip`.
fn http_server(
    tb: &Testbed,
    node: &str,
    dir: &Path,
    ip: IpAddr,
    port: u16,
    env: &[(&str, &str)],
) -> Result<Background> {
    let mut cmd = shimmed(tb, node, "python3", env)?;
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
    wait_listening(tb.netns(node)?, port, SHORT)?;
    Ok(server)
}

/// Downloads a 50 MB random file from a shimmed http.server in gw2 with a
/// shimmed curl in gw1 and returns (curl's stderr, gw2's counter deltas).
fn download(tb: &Testbed, ip: IpAddr, env: &[(&str, &str)]) -> Result<(String, u64, u64)> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("blob.bin");
    write_random_file(&file, 50 << 20, u64::from(std::process::id()))?;
    let want = sha256_file(&file)?;
    let port = unique_port();
    let before = mptcp_counters(tb.netns("gw2")?)?;
    let _server = http_server(tb, "gw2", dir.path(), ip, port, env)?;
    let out_dir = tempfile::tempdir()?;
    let out = out_dir.path().join("got.bin");
    let mut curl = shimmed(tb, "gw1", "curl", env)?;
    curl.args(["-sS", "--fail", "-o"])
        .arg(&out)
        .arg(url(ip, port, "blob.bin"));
    let res = run_ok(&mut curl, TRANSFER)?;
    ensure!(
        sha256_file(&out)? == want,
        "downloaded bytes differ from the served file"
    );
    let after = mptcp_counters(tb.netns("gw2")?)?;
    Ok((
        String::from_utf8_lossy(&res.stderr).into_owned(),
        delta(&before, &after, "MPCapableSYNRX"),
        delta(&before, &after, "MPJoinSynRx"),
    ))
}

#[test]
fn native_curl_from_http_server_ipv6_is_mptcp_with_two_subflows() -> Result<()> {
    let tb = two_gateways()?;
    let ip = IpAddr::V6(tb.addr6("gw2", 1)?);
    let (_, capable, joins) = download(&tb, ip, &[])?;
    ensure!(capable >= 1, "the server saw no MP_CAPABLE SYN over IPv6");
    ensure!(joins >= 1, "the server saw no MP_JOIN over IPv6");
    Ok(())
}

#[test]
fn native_fallback_when_mptcp_disabled_warns_once_and_transfers_intact() -> Result<()> {
    let tb = two_gateways()?;
    for node in ["gw1", "gw2"] {
        run_ok(
            tb.command(node, "sysctl")?
                .args(["-qw", "net.mptcp.enabled=0"]),
            SHORT,
        )?;
    }
    let ip = IpAddr::V4(tb.addr4("gw2", 1)?);
    let (stderr, capable, _) = download(&tb, ip, &[])?;
    ensure!(
        capable == 0,
        "MPTCP was disabled, yet the server saw MP_CAPABLE"
    );
    let warnings = stderr
        .lines()
        .filter(|l| l.contains("MPTCP is not available"))
        .count();
    ensure!(
        warnings == 1,
        "expected exactly one fallback warning, got {warnings}: {stderr}"
    );
    Ok(())
}

#[test]
fn native_broken_config_never_breaks_the_program() -> Result<()> {
    let tb = two_gateways()?;
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[device]\nname = \"x\"\nbackend = \"native\"\ncolour = 1\n",
    )?;
    let ip = IpAddr::V4(tb.addr4("gw2", 1)?);
    for config in [
        bad.to_string_lossy().into_owned(),
        "/nonexistent/dropshim.toml".to_string(),
    ] {
        // Only the client gets the broken file; the server runs default.
        let port = unique_port();
        let srv_dir = tempfile::tempdir()?;
        std::fs::write(srv_dir.path().join("hello.txt"), b"hello over tcp\n")?;
        let _server = http_server(&tb, "gw2", srv_dir.path(), ip, port, &[])?;
        let before = mptcp_counters(tb.netns("gw2")?)?;
        let mut curl = shimmed(&tb, "gw1", "curl", &[("DROPSHIM_CONFIG", &config)])?;
        curl.args(["-sS", "--fail"]).arg(url(ip, port, "hello.txt"));
        let out = run_ok(&mut curl, SHORT)?;
        ensure!(
            out.stdout == b"hello over tcp\n",
            "wrong body with config {config}"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("dropshim["))
            .collect();
        ensure!(
            lines.len() == 1,
            "expected one dropshim line for {config}, got: {stderr}"
        );
        ensure!(
            lines[0].contains("plain TCP"),
            "the line should say what happens: {}",
            lines[0]
        );
        let after = mptcp_counters(tb.netns("gw2")?)?;
        ensure!(
            delta(&before, &after, "MPCapableSYNRX") == 0,
            "a broken config must mean plain TCP"
        );
    }
    Ok(())
}

#[test]
fn native_policy_rule_keeps_an_excluded_destination_on_tcp() -> Result<()> {
    let tb = two_gateways()?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("policy.toml");
    // Link 1's subnet stays TCP; anything else (link 2) gets MPTCP.
    std::fs::write(
        &config,
        "[device]\nname = \"policy-test\"\nbackend = \"native\"\n\n[policy]\ndefault = \"mptcp\"\n\n\
         [[policy.rule]]\ndest = \"198.18.1.0/24\"\naction = \"tcp\"\n",
    )?;
    let config = config.to_string_lossy().into_owned();
    let srv_dir = tempfile::tempdir()?;
    std::fs::write(srv_dir.path().join("a.txt"), b"policy\n")?;
    let port = unique_port();
    let any = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
    let _server = http_server(&tb, "gw2", srv_dir.path(), any, port, &[])?;
    for (link, want_mptcp) in [(1, false), (2, true)] {
        let ip = IpAddr::V4(tb.addr4("gw2", link)?);
        let before = mptcp_counters(tb.netns("gw2")?)?;
        let mut curl = shimmed(&tb, "gw1", "curl", &[("DROPSHIM_CONFIG", &config)])?;
        curl.args(["-sS", "--fail"]).arg(url(ip, port, "a.txt"));
        let out = run_ok(&mut curl, SHORT)?;
        ensure!(out.stdout == b"policy\n");
        let after = mptcp_counters(tb.netns("gw2")?)?;
        let got_mptcp = delta(&before, &after, "MPCapableSYNRX") > 0;
        ensure!(
            got_mptcp == want_mptcp,
            "link {link}: MPTCP {got_mptcp}, policy wants {want_mptcp}"
        );
    }
    Ok(())
}

/// A Python program exercising the corners: other socket kinds untouched,
/// SO_PROTOCOL still says TCP, options set before connect survive the
/// switch to TCP for a loopback destination, and so does the port of an
/// explicit bind (the replacement socket takes it over).
const CORNERS: &str = r#"
import json, socket, subprocess, sys
out = {}
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
out["udp_proto"] = u.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
a, b = socket.socketpair()
a.sendall(b"unix"); out["unix_ok"] = b.recv(4) == b"unix"
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1]))); srv.listen()
lo = socket.socket(); lo.bind(("127.0.0.1", 0)); lo.listen()
out["tcp_proto_reported"] = srv.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
# python's http.server tries IPV6_V6ONLY even on IPv4 sockets, where TCP
# refuses it too: same errno, and the socket must stay MPTCP.
v = socket.socket()
try:
    v.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0); out["v6only_on_v4_errno"] = 0
except OSError as e:
    out["v6only_on_v4_errno"] = e.errno
v.bind(("0.0.0.0", 0)); v.listen()
ss = subprocess.run(["ss", "-HlnM"], capture_output=True, text=True).stdout
out["wildcard_listener_mptcp"] = (":%s" % sys.argv[1]) in ss
out["loopback_listener_mptcp"] = (":%d" % lo.getsockname()[1]) in ss
out["failed_option_listener_mptcp"] = (":%d" % v.getsockname()[1]) in ss
c = socket.socket()
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
c.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
c.bind(("0.0.0.0", 0)); port = c.getsockname()[1]
c.connect(lo.getsockname())
out["nodelay_kept"] = c.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
out["keepalive_kept"] = c.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
out["bound_port_kept"] = c.getsockname()[1] == port
s, _ = lo.accept(); c.sendall(b"x" * 1000); got = b""
while len(got) < 1000: got += s.recv(1000)
out["loopback_bytes_ok"] = got == b"x" * 1000
print(json.dumps(out))
"#;

#[test]
fn native_leaves_other_sockets_alone_and_keeps_options_across_a_switch() -> Result<()> {
    let tb = two_gateways()?;
    let port = unique_port();
    let mut py = shimmed(&tb, "gw2", "python3", &[("DROPSHIM_LOG", "info")])?;
    py.args(["-c", CORNERS, &port.to_string()]);
    let out = run_ok(&mut py, SHORT)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // An option that fails on TCP as well is no reason to leave MPTCP.
    ensure!(
        !stderr.contains("stays plain TCP"),
        "needless switch to TCP: {stderr}"
    );
    let expect = [
        "\"udp_proto\": 17",
        "\"unix_ok\": true",
        "\"tcp_proto_reported\": 6",
        "\"wildcard_listener_mptcp\": true",
        "\"loopback_listener_mptcp\": false",
        "\"v6only_on_v4_errno\": 92",
        "\"failed_option_listener_mptcp\": true",
        "\"nodelay_kept\": true",
        "\"keepalive_kept\": true",
        "\"bound_port_kept\": true",
        "\"loopback_bytes_ok\": true",
    ];
    for e in expect {
        ensure!(text.contains(e), "expected {e} in {text}");
    }
    Ok(())
}

#[test]
fn native_children_inherit_the_shim_across_fork_and_exec() -> Result<()> {
    let tb = two_gateways()?;
    let ip = IpAddr::V4(tb.addr4("gw2", 1)?);
    let port = unique_port();
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("c.txt"), b"child\n")?;
    let _server = http_server(&tb, "gw2", dir.path(), ip, port, &[])?;
    let before = mptcp_counters(tb.netns("gw2")?)?;
    // sh forks and execs curl; only the environment carries the shim.
    let mut sh = shimmed(&tb, "gw1", "sh", &[])?;
    sh.args([
        "-c",
        &format!(
            "curl -sS --fail {} && curl -sS --fail {}",
            url(ip, port, "c.txt"),
            url(ip, port, "c.txt")
        ),
    ]);
    let out = run_ok(&mut sh, SHORT)?;
    ensure!(out.stdout == b"child\nchild\n");
    let after = mptcp_counters(tb.netns("gw2")?)?;
    ensure!(
        delta(&before, &after, "MPCapableSYNRX") >= 2,
        "exec'd children did not use MPTCP"
    );
    Ok(())
}

#[test]
fn native_dropshim_run_preloads_and_keeps_the_users_preload() -> Result<()> {
    let other = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
    ]
    .into_iter()
    .find(|p| Path::new(p).is_file())
    .context("no libm to preload")?;
    let mut cmd = Command::new(cli_path());
    cmd.env("LD_PRELOAD", other)
        .args(["run", "--", "sh", "-c", "printf %s \"$LD_PRELOAD\""]);
    let out = run_ok(&mut cmd, SHORT)?;
    let value = String::from_utf8_lossy(&out.stdout).into_owned();
    let shim = shim_path().canonicalize()?;
    ensure!(
        value == format!("{}:{other}", shim.display()),
        "LD_PRELOAD was {value:?}"
    );

    let mut bad = Command::new(cli_path());
    bad.args(["run", "--backend", "quantum", "--", "true"]);
    let out = run_bounded(&mut bad, SHORT)?;
    ensure!(!out.status.success());
    ensure!(String::from_utf8_lossy(&out.stderr).contains("native, uml, lkl"));
    Ok(())
}
