//! Programs under injected faults (`DROPSHIM_FAULTS`) and traced
//! (`DROPSHIM_TRACE`), on every stack: curl downloading, python's
//! http.server serving, iperf3 sending. Faults a correct program copes
//! with (EINTR, EAGAIN, short reads and writes) must leave the bytes
//! intact; a reset must end in the program's own clean error. Never a
//! hang, never a crash. Each run proves from the trace that faults were
//! injected and that the calls went through the stack under test.

use anyhow::{ensure, Context, Result};
use dropshim_testbed::Testbed;
use dropshim_tests::stack::{peer, Stack};
use dropshim_tests::*;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const SHORT: Duration = Duration::from_secs(20);
/// A bound on each program's run: far beyond what the transfers take.
const RUN: Duration = Duration::from_secs(90);
const SIZE: usize = 8 << 20;
/// Faults a correct program copes with, often enough for hundreds of
/// them in one transfer.
const SURVIVABLE: &str = "eintr,eagain,short,rate=0.2,seed=11";

/// A served directory holding one random file: (dir, file name, sha256).
fn served_file() -> Result<(tempfile::TempDir, String)> {
    let dir = tempfile::tempdir()?;
    write_random_file(&dir.path().join("data.bin"), SIZE, 0xfa17)?;
    let sum = sha256_file(&dir.path().join("data.bin"))?;
    Ok((dir, sum))
}

/// The trace's lines that carry an injected fault, and whether a line
/// shows `call` going through `backend`.
fn read_trace(path: &Path, backend: &str, call: &str) -> Result<(usize, bool)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("no trace written at {}", path.display()))?;
    let injected = text.lines().filter(|l| l.ends_with(" injected")).count();
    let routed = text
        .lines()
        .any(|l| l.contains(&format!(" {backend} {call}(")));
    Ok((injected, routed))
}

/// The trace's last lines, for a run that hung or failed.
fn trace_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(25);
    format!("the trace ends with:\n{}", lines[from..].join("\n"))
}

fn not_killed(out: &Output, what: &str) -> Result<()> {
    ensure!(
        out.status.signal().is_none(),
        "{what} was killed by signal {:?}; stderr: {}",
        out.status.signal(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn with_faults(cmd: &mut Command, faults: &str, trace: &Path) {
    cmd.env("DROPSHIM_FAULTS", faults)
        .env("DROPSHIM_TRACE", trace);
}

/// curl on the stack downloads from a native http.server in gw2.
fn curl_client(stack_name: &str, faults: &str, tb: &Testbed, stack: &Stack) -> Result<()> {
    let (dir, sum) = served_file()?;
    let port = unique_port();
    let addr = tb.addr4("gw2", 1)?;
    let mut srv = peer(tb, "python3")?;
    srv.args([
        "-m",
        "http.server",
        "--bind",
        &addr.to_string(),
        &port.to_string(),
    ])
    .current_dir(dir.path());
    let _srv = Background::spawn(&mut srv, "http.server in gw2")?;
    wait_listening(tb.netns("gw2")?, port, SHORT)?;
    let work = tempfile::tempdir()?;
    let out_file = work.path().join("got.bin");
    let trace = work.path().join("trace");
    let mut curl = stack.command(tb, "curl")?;
    curl.args(["-sS", "--max-time", "60", "-o"])
        .arg(&out_file)
        .arg(url(addr.into(), port, "data.bin"));
    with_faults(&mut curl, faults, &trace);
    let out = run_bounded(&mut curl, RUN).with_context(|| trace_tail(&trace))?;
    not_killed(&out, "curl")?;
    let (injected, routed) = read_trace(&trace, stack_name, "connect")?;
    ensure!(
        routed,
        "{stack_name}: the trace shows no connect through {stack_name}"
    );
    ensure!(
        injected > 0,
        "{stack_name}: no fault was injected into curl"
    );
    if faults.contains("reset") && !out.status.success() {
        // The program's own clean error: curl names what failed.
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            err.contains("curl: ("),
            "{stack_name}: curl failed without its own error message ({}): {err}",
            out.status
        );
        eprintln!("{stack_name}: curl under resets: {}", err.trim());
        return Ok(());
    }
    ensure!(
        out.status.success(),
        "{stack_name}: curl failed under {faults} ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        sha256_file(&out_file)? == sum,
        "{stack_name}: curl's download differs from the served file under {faults}"
    );
    eprintln!("{stack_name}: curl download intact with {injected} faults injected");
    Ok(())
}

/// python's http.server on the stack serves a native curl in gw2, twice.
fn http_server(stack_name: &str, tb: &Testbed, stack: &Stack) -> Result<()> {
    let (dir, sum) = served_file()?;
    let port = unique_port();
    let work = tempfile::tempdir()?;
    let trace = work.path().join("trace");
    let mut srv = stack.command(tb, "python3")?;
    srv.args([
        "-m",
        "http.server",
        "--bind",
        &Stack::address(tb)?,
        &port.to_string(),
    ])
    .current_dir(dir.path());
    with_faults(&mut srv, SURVIVABLE, &trace);
    let _srv = Background::spawn(&mut srv, "http.server on the stack")?;
    // The server's own listening socket lives in the stack (uml, lkl) or
    // in gw1's kernel (native): wait on what the client sees.
    let address = Stack::address(tb)?;
    wait_until(SHORT, "the http.server on the stack to answer", || {
        Command::new("ip")
            .args(["netns", "exec", tb.netns("gw2").unwrap_or_default()])
            .args(["curl", "-s", "-o", "/dev/null", "--max-time", "2"])
            .arg(format!("http://{address}:{port}/"))
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    })?;
    for round in 0..2 {
        let got = work.path().join(format!("got{round}.bin"));
        let mut curl = peer(tb, "curl")?;
        curl.args(["-sS", "--max-time", "60", "-o"])
            .arg(&got)
            .arg(format!("http://{address}:{port}/data.bin"));
        run_ok(&mut curl, RUN).with_context(|| format!("{stack_name}: download {round}"))?;
        ensure!(
            sha256_file(&got)? == sum,
            "{stack_name}: download {round} from http.server under faults differs"
        );
    }
    let (injected, routed) = read_trace(&trace, stack_name, "listen")?;
    ensure!(
        routed,
        "{stack_name}: the trace shows no listen through {stack_name}"
    );
    ensure!(
        injected > 0,
        "{stack_name}: no fault was injected into http.server"
    );
    eprintln!("{stack_name}: http.server served intact with {injected} faults injected");
    Ok(())
}

/// Faults for iperf3: no EINTR. iperf3 (3.12) takes an EINTR from
/// write() on its control connection for a partial write and moves on
/// without the rest of the message, so its server waits for bytes that
/// never come and both ends wait forever (seen here: `write(fd=4, 123) =
/// -1 EINTR`, then nothing). A signal would do the same to it without
/// dropshim; that is iperf3's to fix, not a fault of the stack.
const SURVIVABLE_IPERF3: &str = "eagain,short,rate=0.2,seed=11";

/// iperf3 on the stack sends to a native server: it must end, with its
/// report or its own error, and never hang or crash.
fn iperf3_client(stack_name: &str, tb: &Testbed, stack: &Stack) -> Result<()> {
    let port = unique_port();
    let addr = tb.addr4("gw2", 1)?;
    let mut srv = peer(tb, "iperf3")?;
    srv.args(["-s", "-1", "-p", &port.to_string(), "-B", &addr.to_string()]);
    let _srv = Background::spawn(&mut srv, "iperf3 -s in gw2")?;
    wait_listening(tb.netns("gw2")?, port, SHORT)?;
    let work = tempfile::tempdir()?;
    let trace = work.path().join("trace");
    let mut client = stack.command(tb, "iperf3")?;
    client.args(["-c", &addr.to_string(), "-p", &port.to_string(), "-t", "2"]);
    with_faults(&mut client, SURVIVABLE_IPERF3, &trace);
    let out = run_bounded(&mut client, RUN).with_context(|| trace_tail(&trace))?;
    not_killed(&out, "iperf3")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        ensure!(
            text.contains("receiver"),
            "{stack_name}: iperf3 exited 0 without its report: {text}"
        );
    } else {
        ensure!(
            text.contains("iperf3: error") || err.contains("iperf3: error"),
            "{stack_name}: iperf3 failed without its own error ({}): {text} {err}",
            out.status
        );
    }
    let (injected, routed) = read_trace(&trace, stack_name, "connect")?;
    ensure!(
        routed,
        "{stack_name}: the trace shows no connect through {stack_name}"
    );
    ensure!(
        injected > 0,
        "{stack_name}: no fault was injected into iperf3"
    );
    eprintln!(
        "{stack_name}: iperf3 under faults: exit {} with {injected} faults injected",
        out.status
    );
    Ok(())
}

fn programs_under_faults(stack_name: &str) -> Result<()> {
    let tb = two_gateways()?;
    let stack = Stack::up(stack_name, &tb, "ft")?;
    curl_client(stack_name, SURVIVABLE, &tb, &stack)?;
    curl_client(stack_name, "reset,rate=0.05,seed=3", &tb, &stack)?;
    http_server(stack_name, &tb, &stack)?;
    iperf3_client(stack_name, &tb, &stack)
}

#[test]
fn faults_native_programs_keep_their_bytes_or_fail_cleanly() -> Result<()> {
    programs_under_faults("native")
}

#[test]
fn faults_uml_programs_keep_their_bytes_or_fail_cleanly() -> Result<()> {
    programs_under_faults("uml")
}

#[test]
fn faults_lkl_programs_keep_their_bytes_or_fail_cleanly() -> Result<()> {
    programs_under_faults("lkl")
}

/// A malformed DROPSHIM_FAULTS and an unwritable DROPSHIM_TRACE each get
/// one line on stderr; the program runs as if neither were set.
#[test]
fn faults_and_trace_malformed_values_are_reported_and_ignored() -> Result<()> {
    let tb = two_gateways()?;
    let (dir, sum) = served_file()?;
    let port = unique_port();
    let addr = tb.addr4("gw2", 1)?;
    let mut srv = peer(&tb, "python3")?;
    srv.args([
        "-m",
        "http.server",
        "--bind",
        &addr.to_string(),
        &port.to_string(),
    ])
    .current_dir(dir.path());
    let _srv = Background::spawn(&mut srv, "http.server in gw2")?;
    wait_listening(tb.netns("gw2")?, port, SHORT)?;
    let work = tempfile::tempdir()?;
    let got = work.path().join("got.bin");
    let mut curl = shimmed(&tb, "gw1", "curl", &[])?;
    curl.args(["-sS", "-o"])
        .arg(&got)
        .arg(url(addr.into(), port, "data.bin"))
        .env("DROPSHIM_FAULTS", "eintr,sometimes,rate=0.5")
        .env("DROPSHIM_TRACE", work.path().join("missing/dir/trace"));
    let out = run_ok(&mut curl, RUN)?;
    ensure!(sha256_file(&got)? == sum, "the download differs");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    ensure!(
        lines
            .iter()
            .filter(|l| l.contains("DROPSHIM_FAULTS"))
            .count()
            == 1
            && lines
                .iter()
                .any(|l| l.contains("unknown fault `sometimes`")),
        "expected one line naming the bad fault: {err}"
    );
    ensure!(
        lines
            .iter()
            .filter(|l| l.contains("DROPSHIM_TRACE"))
            .count()
            == 1
            && lines.iter().any(|l| l.contains("cannot open")),
        "expected one line about the trace file: {err}"
    );
    Ok(())
}
