//! Programs that bypass libc under `dropshim run`: busybox-static (a
//! statically linked binary: LD_PRELOAD cannot enter it) and a Go program
//! built here with Debian's Go (its runtime makes socket system calls
//! itself). On the native backend `dropshim run`'s seccomp supervisor
//! turns their TCP sockets into MPTCP: each test checks the bytes (sha256)
//! and MPTCP with a second subflow at the peer (gw2's MPTcpExt counters,
//! `ss -M`). On the lkl and uml backends such a program is refused before
//! it starts. A program linked with libc still works under the supervisor,
//! and the shim's own choices (a loopback listener stays TCP) hold.

use anyhow::{ensure, Context, Result};
use dropshim_testbed::Testbed;
use dropshim_tests::*;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const SHORT: Duration = Duration::from_secs(20);
const TRANSFER: Duration = Duration::from_secs(90);
/// `go build` of a small stdlib program, cold cache included.
const GO_BUILD: Duration = Duration::from_secs(300);

/// `dropshim run [extra...] -- program args...` in `node`, with no
/// inherited dropshim settings.
fn dropshim_run(tb: &Testbed, node: &str, extra: &[&str], program: &[&str]) -> Result<Command> {
    let cli = cli_path();
    let mut cmd = plain(
        tb,
        node,
        cli.to_str().context("dropshim's path is not UTF-8")?,
    )?;
    cmd.arg("run").args(extra).arg("--").args(program);
    Ok(cmd)
}

/// `dropshim run` outside any testbed, for the refusals.
fn dropshim_run_here(extra: &[&str], program: &[&str]) -> Command {
    let mut cmd = Command::new(cli_path());
    for var in [
        "LD_PRELOAD",
        "DROPSHIM_CONFIG",
        "DROPSHIM_BACKEND",
        "DROPSHIM_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd.arg("run").args(extra).arg("--").args(program);
    cmd
}

fn busybox() -> Result<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("busybox is missing: run scripts/setup.sh (it installs busybox-static)")
}

/// Builds tests/go/reachgo.go with Debian's Go into `dir`; statically
/// linked unless `cgo`. Go's build cache lives next to the test
/// artifacts so that later runs are quick.
fn build_go(dir: &Path) -> Result<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("go/reachgo.go");
    let cache = target_dir().join("reach-go");
    std::fs::create_dir_all(&cache)?;
    let out = dir.join("reachgo");
    let mut go = Command::new("go");
    go.current_dir(dir)
        .env("HOME", &cache)
        .env("GOCACHE", cache.join("cache"))
        .env("GOPATH", cache.join("gopath"))
        .env("GO111MODULE", "off")
        .env("CGO_ENABLED", "0")
        .env_remove("LD_PRELOAD")
        .args(["build", "-o"])
        .arg(&out)
        .arg(&src);
    run_ok(&mut go, GO_BUILD).context("go build failed (scripts/setup.sh installs golang-go)")?;
    Ok(out)
}

/// gw2 serving `dir` with python's http.server under the shim (a native
/// MPTCP peer whose counters tell what arrived).
fn http_server(tb: &Testbed, dir: &Path, ip: IpAddr, port: u16) -> Result<Background> {
    let mut cmd = shimmed(tb, "gw2", "python3", &[])?;
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
    wait_listening(tb.netns("gw2")?, port, SHORT)?;
    Ok(server)
}

/// A random file of `size` bytes in `dir`, and its sha256.
fn blob(dir: &Path, name: &str, size: usize) -> Result<(PathBuf, String)> {
    let file = dir.join(name);
    write_random_file(&file, size, u64::from(std::process::id()) ^ size as u64)?;
    let sum = sha256_file(&file)?;
    Ok((file, sum))
}

fn ensure_two_subflows(
    tb: &Testbed,
    before: &std::collections::HashMap<String, u64>,
    connections: u64,
) -> Result<()> {
    let after = mptcp_counters(tb.netns("gw2")?)?;
    let capable = delta(before, &after, "MPCapableSYNRX");
    let joins = delta(before, &after, "MPJoinAckRx");
    ensure!(
        capable >= connections,
        "gw2 saw {capable} MP_CAPABLE SYN(s), expected {connections}: not MPTCP"
    );
    ensure!(joins >= 1, "gw2 saw no MP_JOIN completed: only one subflow");
    Ok(())
}

#[test]
fn reach_native_busybox_wget_and_its_children_download_over_two_subflows() -> Result<()> {
    let tb = two_gateways()?;
    let bb = busybox()?;
    let bb = bb.to_str().context("busybox path")?;
    let dir = tempfile::tempdir()?;
    let (_, want) = blob(dir.path(), "blob.bin", 32 << 20)?;
    let ip = IpAddr::V4(tb.addr4("gw2", 1)?);
    let port = unique_port();
    let _server = http_server(&tb, dir.path(), ip, port)?;
    let got = tempfile::tempdir()?;
    let link = url(ip, port, "blob.bin");

    // The shim alone cannot enter a static binary: plain TCP.
    let before = mptcp_counters(tb.netns("gw2")?)?;
    let out = got.path().join("preloaded.bin");
    let mut preloaded = shimmed(&tb, "gw1", bb, &[])?;
    preloaded.args(["wget", "-q", "-O"]).arg(&out).arg(&link);
    run_ok(&mut preloaded, TRANSFER)?;
    ensure!(sha256_file(&out)? == want, "preloaded wget: bytes differ");
    let after = mptcp_counters(tb.netns("gw2")?)?;
    ensure!(
        delta(&before, &after, "MPCapableSYNRX") == 0,
        "busybox wget with LD_PRELOAD only was MPTCP: it is not the static binary this test needs"
    );

    // Under dropshim run: a shell and the two wgets it starts, all static.
    let before = mptcp_counters(tb.netns("gw2")?)?;
    let (a, b) = (got.path().join("a.bin"), got.path().join("b.bin"));
    let script = format!(
        "{bb} wget -q -O {} {link} && {bb} wget -q -O {} {link}",
        a.display(),
        b.display()
    );
    run_ok(
        &mut dropshim_run(&tb, "gw1", &[], &[bb, "sh", "-c", &script])?,
        TRANSFER,
    )?;
    ensure!(sha256_file(&a)? == want, "first wget: bytes differ");
    ensure!(sha256_file(&b)? == want, "second wget: bytes differ");
    ensure_two_subflows(&tb, &before, 2)
}

#[test]
fn reach_native_busybox_nc_transfer_between_two_supervised_ends() -> Result<()> {
    let tb = two_gateways()?;
    let bb = busybox()?;
    let bb = bb.to_str().context("busybox path")?;
    let dir = tempfile::tempdir()?;
    let (file, want) = blob(dir.path(), "blob.bin", 32 << 20)?;
    let port = unique_port();
    let ip = tb.addr4("gw2", 1)?.to_string();
    let before = mptcp_counters(tb.netns("gw2")?)?;

    // gw2 listens and sends the file; gw1 says hello and receives it.
    // (MPTCP opens the second subflow once data has gone both ways.)
    let mut server = dropshim_run(&tb, "gw2", &[], &[bb, "nc", "-l", "-p", &port.to_string()])?;
    server
        .stdin(std::fs::File::open(&file)?)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let server = server.spawn().context("spawning the nc server")?;
    let server = ChildGuard(Some(server));
    wait_listening(tb.netns("gw2")?, port, SHORT)?;
    let listeners = run_ok(
        tb.command("gw2", "ss")?
            .args(["-HlnM", &format!("sport = :{port}")]),
        SHORT,
    )?;
    ensure!(
        !listeners.stdout.is_empty(),
        "busybox nc's listener in gw2 is not an MPTCP socket"
    );

    let out = dir.path().join("got.bin");
    let mut client = dropshim_run(&tb, "gw1", &[], &[bb, "nc", &ip, &port.to_string()])?;
    client
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&out)?)
        .stderr(Stdio::piped());
    let mut client = client.spawn().context("spawning the nc client")?;
    // Held open until nc exits: its end of the input is not the end of
    // the transfer.
    let mut input = client.stdin.take().context("client stdin")?;
    input.write_all(b"hello\n")?;
    let res = wait_bounded(client, TRANSFER)?;
    drop(input);
    ensure!(
        res.status.success(),
        "nc client failed ({}): {}",
        res.status,
        String::from_utf8_lossy(&res.stderr)
    );
    server.wait(SHORT)?;
    ensure!(sha256_file(&out)? == want, "nc: received bytes differ");
    ensure_two_subflows(&tb, &before, 1)
}

/// Kills and reaps a child on drop, so a failing test leaves no server.
struct ChildGuard(Option<std::process::Child>);

impl ChildGuard {
    fn wait(mut self, timeout: Duration) -> Result<()> {
        let child = self.0.take().context("already waited")?;
        let out = wait_bounded(child, timeout)?;
        ensure!(
            out.status.success(),
            "server failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn reach_native_go_http_server_and_client_use_two_subflows() -> Result<()> {
    let build = tempfile::tempdir()?;
    let go = build_go(build.path())?;
    let go = go.to_str().context("go binary path")?;
    let tb = two_gateways()?;
    let dir = tempfile::tempdir()?;
    let (_, want) = blob(dir.path(), "blob.bin", 32 << 20)?;
    let ip = IpAddr::V4(tb.addr4("gw2", 1)?);
    let port = unique_port();
    let before = mptcp_counters(tb.netns("gw2")?)?;

    let served = dir.path().to_str().context("dir path")?;
    let addr = format!("{ip}:{port}");
    let mut server = dropshim_run(&tb, "gw2", &[], &[go, "serve", &addr, served])?;
    let _server = Background::spawn(&mut server, "reachgo serve")?;
    wait_listening(tb.netns("gw2")?, port, SHORT)?;
    let listeners = run_ok(
        tb.command("gw2", "ss")?
            .args(["-HlnM", &format!("sport = :{port}")]),
        SHORT,
    )?;
    ensure!(
        !listeners.stdout.is_empty(),
        "the Go server's listener is not an MPTCP socket"
    );

    let got = tempfile::tempdir()?;
    let out = got.path().join("got.bin");
    let out_s = out.to_str().context("out path")?;
    let link = url(ip, port, "blob.bin");
    run_ok(
        &mut dropshim_run(&tb, "gw1", &[], &[go, "get", &link, out_s])?,
        TRANSFER,
    )?;
    ensure!(sha256_file(&out)? == want, "Go client: bytes differ");
    ensure_two_subflows(&tb, &before, 1)
}

/// Under `dropshim run`, a python program binds a listener to loopback
/// (the shim keeps it TCP: its replacement socket must not be turned
/// into MPTCP by the filter) and to the wildcard (MPTCP), and prints
/// which of its ports `ss -M` lists.
const LOOPBACK_PY: &str = r#"
import socket, subprocess
lo = socket.socket(); lo.bind(("127.0.0.1", 0)); lo.listen()
wild = socket.socket(); wild.bind(("0.0.0.0", 0)); wild.listen()
ss = subprocess.run(["ss", "-HlnM"], capture_output=True, text=True).stdout
print("loopback_mptcp=%s" % ((":%d " % lo.getsockname()[1]) in ss))
print("wildcard_mptcp=%s" % ((":%d " % wild.getsockname()[1]) in ss))
"#;

#[test]
fn reach_native_dynamic_programs_work_under_the_supervisor() -> Result<()> {
    let tb = two_gateways()?;
    let dir = tempfile::tempdir()?;
    let (_, want) = blob(dir.path(), "blob.bin", 32 << 20)?;
    let ip = IpAddr::V4(tb.addr4("gw2", 1)?);
    let port = unique_port();
    let _server = http_server(&tb, dir.path(), ip, port)?;
    let before = mptcp_counters(tb.netns("gw2")?)?;
    let got = tempfile::tempdir()?;
    let out = got.path().join("got.bin");
    let out_s = out.to_str().context("out path")?;
    let link = url(ip, port, "blob.bin");
    run_ok(
        &mut dropshim_run(
            &tb,
            "gw1",
            &[],
            &["curl", "-sS", "--fail", "-o", out_s, &link],
        )?,
        TRANSFER,
    )?;
    ensure!(sha256_file(&out)? == want, "curl: bytes differ");
    ensure_two_subflows(&tb, &before, 1)?;

    let res = run_ok(
        &mut dropshim_run(&tb, "gw1", &[], &["python3", "-c", LOOPBACK_PY])?,
        SHORT,
    )?;
    let text = String::from_utf8_lossy(&res.stdout);
    ensure!(
        text.contains("loopback_mptcp=False"),
        "the shim's loopback listener should stay TCP under the supervisor: {text}"
    );
    ensure!(
        text.contains("wildcard_mptcp=True"),
        "the wildcard listener should be MPTCP: {text}"
    );
    Ok(())
}

#[test]
fn reach_native_supervisor_passes_on_exit_status_and_signals() -> Result<()> {
    let bb = busybox()?;
    let bb = bb.to_str().context("busybox path")?;
    let res = run_bounded(
        &mut dropshim_run_here(&[], &[bb, "sh", "-c", "exit 7"]),
        SHORT,
    )?;
    ensure!(res.status.code() == Some(7), "exit status {}", res.status);

    // SIGTERM sent to dropshim reaches the program, and dropshim dies of
    // it the way the program did.
    let mut cmd = dropshim_run_here(&[], &[bb, "sleep", "60"]);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id() as libc::pid_t;
    // The program runs once dropshim has a child: wait for it, bounded.
    wait_until(SHORT, "the supervised program to start", || {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .map(|c| !c.trim().is_empty())
            .unwrap_or(false)
    })?;
    // SAFETY: kill takes integers; `pid` is our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let res = wait_bounded(child, SHORT)?;
    ensure!(
        res.status.signal() == Some(libc::SIGTERM),
        "dropshim should end by SIGTERM like its program, ended {}",
        res.status
    );
    Ok(())
}

/// Checks a refusal: non-zero status, one line naming the program's kind
/// and the backend that can serve it, nothing from the program itself.
fn ensure_refused(res: &std::process::Output, kind: &str, backend: &str) -> Result<()> {
    let stderr = String::from_utf8_lossy(&res.stderr);
    ensure!(
        !res.status.success(),
        "{backend}: the program was not refused"
    );
    ensure!(
        stderr.lines().count() == 1,
        "{backend}: expected one line, got: {stderr}"
    );
    ensure!(
        stderr.contains(kind) && stderr.contains(&format!("the {backend} backend")),
        "{backend}: the line should name the program's kind: {stderr}"
    );
    ensure!(
        stderr.contains("--backend native"),
        "{backend}: the line should name the backend that serves it: {stderr}"
    );
    ensure!(res.stdout.is_empty(), "{backend}: the program ran");
    Ok(())
}

#[test]
fn reach_lkl_and_uml_refuse_static_and_go_programs_before_they_start() -> Result<()> {
    let bb = busybox()?;
    let bb = bb.to_str().context("busybox path")?;
    let dir = tempfile::tempdir()?;
    let marker = dir.path().join("started");
    let touch = format!("touch {}; echo started", marker.display());
    let build = tempfile::tempdir()?;
    let go = build_go(build.path())?;
    let go = go.to_str().context("go binary path")?;
    for backend in ["lkl", "uml"] {
        let res = run_bounded(
            &mut dropshim_run_here(&["--backend", backend], &[bb, "sh", "-c", &touch]),
            SHORT,
        )?;
        ensure_refused(&res, "statically linked", backend)?;
        ensure!(!marker.exists(), "{backend}: busybox started");
        // Found through PATH like exec would.
        let mut by_name = dropshim_run_here(&["--backend", backend], &["busybox", "true"]);
        by_name.env("PATH", "/usr/bin:/bin");
        ensure_refused(
            &run_bounded(&mut by_name, SHORT)?,
            "statically linked",
            backend,
        )?;
        // Without arguments reachgo prints its usage: it must not.
        let res = run_bounded(
            &mut dropshim_run_here(&["--backend", backend], &[go]),
            SHORT,
        )?;
        ensure_refused(&res, "Go program", backend)?;
    }
    // A program linked with libc still runs on lkl (its kernel boots at
    // the first TCP socket, which this one never opens).
    let res = run_ok(
        &mut dropshim_run_here(&["--backend", "lkl"], &["sh", "-c", "printf ran"]),
        SHORT,
    )?;
    ensure!(res.stdout == b"ran", "sh did not run on lkl");
    Ok(())
}
