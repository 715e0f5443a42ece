//! The programs a user tries first, each scenario written once and run on
//! every stack: curl downloading from a server in gw2, python's
//! http.server serving a curl in gw2, and iperf3 as client (both
//! directions) and as server. gw1's programs run on the stack under test
//! ([`Stack`]); the peer in gw2 is a native MPTCP program (Debian's
//! mptcpize). Each checks what a user would: the bytes (sha256, or
//! iperf3's own report) and MPTCP with a second subflow, counted at the
//! peer (its MPTcpExt counters).
//!
//! Both links run at 100 Mbit/s: every transfer then lasts about a second,
//! time enough for a server's address announcement and the peer's join,
//! whichever stack answers.

use anyhow::{ensure, Context, Result};
use dropshim_testbed::Testbed;
use dropshim_tests::reliability::Lines;
use dropshim_tests::stack::{peer, Stack};
use dropshim_tests::upload::testbed;
use dropshim_tests::*;
use std::process::Command;
use std::time::Duration;

const SHORT: Duration = Duration::from_secs(20);
const TRANSFER: Duration = Duration::from_secs(120);
const FILE_SIZE: usize = 20 << 20;

/// gw1 as a server: link 2's address is announced (ADD_ADDR), so the peer
/// in gw2 opens the second subflow to it.
fn server_stack(name: &str, tb: &Testbed, tag: &str) -> Result<Stack> {
    let signal = DeviceExtra {
        roles2: Some(vec!["signal".to_string()]),
        ..DeviceExtra::default()
    };
    Stack::up_with(name, tb, tag, &signal)
}

/// The peer's MPTcpExt counters, before and after `run`.
fn counted<T>(tb: &Testbed, run: impl FnOnce() -> Result<T>) -> Result<(T, Counters)> {
    let before = mptcp_counters(tb.netns("gw2")?)?;
    let out = run()?;
    let after = mptcp_counters(tb.netns("gw2")?)?;
    Ok((out, Counters { before, after }))
}

struct Counters {
    before: std::collections::HashMap<String, u64>,
    after: std::collections::HashMap<String, u64>,
}

impl Counters {
    /// Fails unless counter `name` grew by at least `want`.
    fn grew(&self, name: &str, want: u64, what: &str) -> Result<()> {
        let got = delta(&self.before, &self.after, name);
        ensure!(
            got >= want,
            "{what}: gw2's {name} grew by {got}, want at least {want}; moved: {}",
            deltas_named(&self.before, &self.after, "")
        );
        Ok(())
    }
}

/// curl on the stack downloads a 20 MiB random file from a native
/// http.server in gw2: intact, over MPTCP, with a joined subflow. The
/// native shim's close report names the two subflows as well.
fn curl_downloads_intact_over_two_subflows(name: &str) -> Result<()> {
    let tb = testbed(Some(100))?;
    let stack = Stack::up(name, &tb, "cd")?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("blob.bin");
    write_random_file(&file, FILE_SIZE, u64::from(std::process::id()))?;
    let port = unique_port();
    let ip = tb.addr4("gw2", 1)?;
    let mut srv = peer(&tb, "python3")?;
    srv.args(["-m", "http.server", &port.to_string(), "--bind"])
        .arg(ip.to_string())
        .arg("--directory")
        .arg(dir.path());
    let _server = Background::spawn(&mut srv, "python3 -m http.server in gw2")?;
    wait_listening(tb.netns("gw2")?, port, SHORT)?;
    let got = dir.path().join("got.bin");
    let (out, peer_saw) = counted(&tb, || {
        let mut curl = stack.command(&tb, "curl")?;
        curl.args(["-sS", "--fail", "-o"])
            .arg(&got)
            .arg(url(ip.into(), port, "blob.bin"))
            .env("DROPSHIM_LOG", "info");
        run_ok(&mut curl, TRANSFER)
    })?;
    ensure!(
        sha256_file(&got)? == sha256_file(&file)?,
        "{name}: curl's download differs from the served file"
    );
    peer_saw.grew("MPCapableSYNRX", 1, &format!("{name}: curl's connection"))?;
    peer_saw.grew("MPJoinSynRx", 1, &format!("{name}: curl's second subflow"))?;
    if stack.name() == "native" {
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            stderr.contains("MPTCP, 2 subflow(s)") && !stderr.contains("fell back"),
            "native: the shim's close report should say 2 subflows; curl said: {stderr}"
        );
    }
    Ok(())
}

/// python's http.server on the stack serves a native curl in gw2: the
/// 20 MiB file intact, MP_CAPABLE answered by the stack, and the peer's
/// join to the announced link-2 address accepted.
fn http_server_serves_native_curl_intact(name: &str) -> Result<()> {
    let tb = testbed(Some(100))?;
    let stack = server_stack(name, &tb, "hs")?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("served.bin");
    write_random_file(&file, FILE_SIZE, u64::from(std::process::id()) + 1)?;
    let port = unique_port();
    let ip = Stack::address(&tb)?;
    let mut srv = stack.command(&tb, "python3")?;
    // Bound to every address: the second subflow arrives at the announced
    // link-2 address, and a join needs a listener that matches it.
    srv.args(["-m", "http.server", &port.to_string(), "--bind", "0.0.0.0"])
        .arg("--directory")
        .arg(dir.path());
    let _server = Background::spawn(&mut srv, "python3 -m http.server on the stack")?;
    // A listener in a uml guest or a library kernel is invisible to `ss`:
    // wait until gw2 can fetch the directory listing.
    wait_until(SHORT, "the http.server on the stack answering", || {
        Command::new("ip")
            .args(["netns", "exec", tb.netns("gw2").unwrap_or_default()])
            .args(["curl", "-s", "--fail", "-o", "/dev/null", "--max-time", "2"])
            .arg(format!("http://{ip}:{port}/"))
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    })?;
    let got = dir.path().join("got.bin");
    let (_, peer_saw) = counted(&tb, || {
        let mut curl = peer(&tb, "curl")?;
        curl.args(["-sS", "--fail", "-o"])
            .arg(&got)
            .arg(format!("http://{ip}:{port}/served.bin"));
        run_ok(&mut curl, TRANSFER)
    })?;
    ensure!(
        sha256_file(&got)? == sha256_file(&file)?,
        "{name}: the file http.server served differs at gw2"
    );
    peer_saw.grew(
        "MPCapableSYNACKRX",
        1,
        &format!("{name}: http.server's MP_CAPABLE answer"),
    )?;
    peer_saw.grew(
        "MPJoinSynAckRx",
        1,
        &format!("{name}: the join to http.server's announced address"),
    )?;
    Ok(())
}

/// iperf3 on the stack against a native iperf3 server, sending and then
/// receiving (`-R`): iperf3's own report, nothing of the shim on its
/// stdout, both of its connections MPTCP and a joined subflow.
fn iperf3_client_both_directions_over_two_subflows(name: &str) -> Result<()> {
    let tb = testbed(Some(100))?;
    let stack = Stack::up(name, &tb, "ic")?;
    let ip = tb.addr4("gw2", 1)?.to_string();
    for reverse in [false, true] {
        let what = format!("{name} iperf3 client (reverse={reverse})");
        let port = unique_port();
        let mut srv = peer(&tb, "iperf3")?;
        srv.args(["-s", "-1", "-p", &port.to_string(), "-B", &ip]);
        let server = Background::spawn(&mut srv, "iperf3 -s in gw2")?;
        wait_listening(tb.netns("gw2")?, port, SHORT)?;
        let (out, peer_saw) = counted(&tb, || {
            let mut client = stack.command(&tb, "iperf3")?;
            client.args(["-c", &ip, "-p", &port.to_string(), "-t", "2", "-J"]);
            if reverse {
                client.arg("-R");
            }
            run_bounded(&mut client, TRANSFER)
        })?;
        let served = server.wait(SHORT)?;
        let report = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success()
                && report.contains("\"sum_received\"")
                && !report.contains("\"error\""),
            "{what}: no result ({}): {report}\nclient stderr: {}\nserver ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            served.status,
            String::from_utf8_lossy(&served.stdout),
            String::from_utf8_lossy(&served.stderr),
        );
        ensure!(
            !report.contains("dropshim"),
            "{what}: the shim wrote on the program's stdout"
        );
        // iperf3 opens a control and a data connection: both MPTCP.
        peer_saw.grew("MPCapableSYNRX", 2, &what)?;
        peer_saw.grew("MPJoinSynRx", 1, &what)?;
    }
    Ok(())
}

/// iperf3 -s on the stack serves a native client in gw2: the server's
/// run ends well, the client's report arrives, both connections are
/// answered with MP_CAPABLE and the join to the announced address is
/// accepted.
fn iperf3_server_serves_native_client(name: &str) -> Result<()> {
    let tb = testbed(Some(100))?;
    let stack = server_stack(name, &tb, "is")?;
    let port = unique_port();
    let ip = Stack::address(&tb)?;
    let mut srv = stack.command(&tb, "iperf3")?;
    // --forceflush: stdout is a pipe, and "Server listening" (printed
    // after listen(), which returns once the stack listens) is the
    // readiness signal; a probe connection would use up `-s -1`'s one
    // test.
    srv.args(["-s", "-1", "--forceflush", "-p", &port.to_string()]);
    let server = Lines::spawn(&mut srv, "iperf3 -s on the stack")?;
    server.expect("Server listening on", SHORT)?;
    // One attempt only: iperf3 -s -1 serves a single test, and iperf3
    // 3.12 exits 0 even when it cannot connect (the error is in the JSON).
    let (out, peer_saw) = counted(&tb, || {
        let mut client = peer(&tb, "iperf3")?;
        client.args(["-c", &ip, "-p", &port.to_string(), "-t", "2", "-J"]);
        run_ok(&mut client, TRANSFER)
    })?;
    let report = String::from_utf8_lossy(&out.stdout);
    ensure!(
        !report.contains("\"error\"") && report.contains("\"sum_received\""),
        "{name}: the native client printed no result: {report}"
    );
    let (status, _, stderr) = server.finish(SHORT)?;
    ensure!(
        status.success(),
        "{name}: iperf3 -s -1 on the stack failed ({status}): {stderr}"
    );
    let what = format!("{name} iperf3 server");
    peer_saw.grew("MPCapableSYNACKRX", 2, &what)?;
    peer_saw
        .grew("MPJoinSynAckRx", 1, &what)
        .context("the client did not join the server's announced address")?;
    Ok(())
}

/// One `#[test]` per stack for each scenario, named
/// `programs_<stack>_<scenario>`.
macro_rules! on_every_stack {
    ($($scenario:ident => $native:ident, $uml:ident, $lkl:ident;)+) => {$(
        #[test]
        fn $native() -> Result<()> {
            $scenario("native")
        }

        #[test]
        fn $uml() -> Result<()> {
            $scenario("uml")
        }

        #[test]
        fn $lkl() -> Result<()> {
            $scenario("lkl")
        }
    )+};
}

on_every_stack! {
    curl_downloads_intact_over_two_subflows =>
        programs_native_curl_downloads_intact_over_two_subflows,
        programs_uml_curl_downloads_intact_over_two_subflows,
        programs_lkl_curl_downloads_intact_over_two_subflows;
    http_server_serves_native_curl_intact =>
        programs_native_http_server_serves_native_curl_intact,
        programs_uml_http_server_serves_native_curl_intact,
        programs_lkl_http_server_serves_native_curl_intact;
    iperf3_client_both_directions_over_two_subflows =>
        programs_native_iperf3_client_both_directions_over_two_subflows,
        programs_uml_iperf3_client_both_directions_over_two_subflows,
        programs_lkl_iperf3_client_both_directions_over_two_subflows;
    iperf3_server_serves_native_client =>
        programs_native_iperf3_server_serves_native_client,
        programs_uml_iperf3_server_serves_native_client,
        programs_lkl_iperf3_server_serves_native_client;
}
