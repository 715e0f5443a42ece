//! Programs that bypass libc under `dropshim run`: busybox-static (a
//! statically linked binary: LD_PRELOAD cannot enter it) and a Go program
//! built here with Debian's Go (its runtime makes socket system calls
//! itself). On the native backend `dropshim run`'s seccomp supervisor
//! turns their TCP sockets into MPTCP; on the uml backend it connects
//! and accepts their connections through the device's instance (both
//! sides: busybox nc and the Go HTTP server listen in it). Each transfer checks the bytes (sha256) and MPTCP with a
//! second subflow at the peer (gw2's MPTcpExt counters, `ss -M`). On the
//! lkl backend such a program is refused before it starts. A program
//! linked with libc still works under the supervisor, and the shim's own
//! choices (a loopback listener stays TCP) hold.

use anyhow::{ensure, Context, Result};
use dropshim_testbed::{Options, Spec, Testbed};
use dropshim_tests::reliability::Lines;
use dropshim_tests::uml::{uml_device, UmlDevice};
use dropshim_tests::*;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
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
    dropshim_stacks::clear_stack_env(&mut cmd);
    cmd.arg("run").args(extra).arg("--").args(program);
    cmd
}

/// The two-gateways testbed with both links shaped to `mbit`: a transfer
/// that lasts long enough for the second subflow to join whatever the
/// machine's pace (an unshaped veth moves 32 MB in a few milliseconds).
fn shaped(mbit: u32) -> Result<Testbed> {
    Ok(Testbed::up(
        &Spec::builtin("two-gateways")?,
        &Options {
            rate_mbit: Some(mbit),
            ..Options::default()
        },
    )?)
}

fn busybox() -> Result<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("busybox is missing: run scripts/setup.sh (it installs busybox-static)")
}

/// Builds tests/go/reachgo.go with Debian's Go into `dir`, statically
/// linked (no cgo). Go's build cache lives next to the test
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
    ensure!(
        joins >= 1,
        "gw2 saw no MP_JOIN completed: only one subflow (gw2: {})",
        deltas_named(before, &after, "MPJoin")
    );
    Ok(())
}

/// gw2 was the client: the server answered MP_CAPABLE, and a second
/// subflow from gw2 was answered too.
fn ensure_two_subflows_to_server(
    tb: &Testbed,
    before: &std::collections::HashMap<String, u64>,
) -> Result<()> {
    let after = mptcp_counters(tb.netns("gw2")?)?;
    ensure!(
        delta(before, &after, "MPCapableSYNACKRX") >= 1,
        "the server in the instance did not answer MP_CAPABLE"
    );
    ensure!(
        delta(before, &after, "MPJoinSynAckRx") >= 1,
        "the server in the instance answered no MP_JOIN: only one subflow (gw2: {})",
        deltas_named(before, &after, "MPJoin")
    );
    Ok(())
}

/// The second subflow of a download between gw2 and the instance, as
/// gw2's counters show it: gw2's own join to a server in the instance
/// answered, or the instance's join to gw2 completed.
#[derive(Clone, Copy)]
enum Join {
    FromGw2,
    FromInstance,
}

impl Join {
    fn counter(self) -> &'static str {
        match self {
            Join::FromGw2 => "MPJoinSynAckRx",
            Join::FromInstance => "MPJoinAckRx",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Join::FromGw2 => "gw2's second subflow to the instance",
            Join::FromInstance => "the instance's second subflow to gw2",
        }
    }
}

/// A FIFO at `dir/name`, for a client's download to go through.
fn fifo(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    run_ok(Command::new("mkfifo").arg(&path), SHORT)?;
    Ok(path)
}

/// Runs `client`, a download between gw2 and the instance written into
/// the FIFO `fifo` (named in its arguments, or as its standard output
/// with `to_stdout`), with its input held open, and leaves the download
/// unread until `join` shows in gw2's counters; then drains it into
/// `out`. Unread, the download cannot end first: 32 MiB are far beyond
/// the buffers on the way. Left free, it could: a join answered late (a
/// lost MP_JOIN SYN is sent again after 1 s) finds the connection gone
/// and is never completed, a timing race that touches no data.
fn download_after_the_join(
    tb: &Testbed,
    mut client: Command,
    fifo: &Path,
    to_stdout: bool,
    join: Join,
    before: &std::collections::HashMap<String, u64>,
    out: &Path,
) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    // Opened for reading and writing, the FIFO opens at once and never
    // reads as ended: the client's exit says when it is done.
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)?;
    if to_stdout {
        client.stdout(std::fs::OpenOptions::new().write(true).open(fifo)?);
    }
    let errors = out.with_extension("stderr");
    client
        .stdin(Stdio::piped())
        .stderr(std::fs::File::create(&errors)?);
    let mut child = client.spawn().context("spawning the client")?;
    drop(client);
    let input = child.stdin.take();
    let drained = drain_after_the_join(tb, &mut child, &mut reader, join, before, out);
    if drained.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    drop(input);
    drained.with_context(|| {
        format!(
            "the client's errors: {}",
            std::fs::read_to_string(&errors).unwrap_or_default()
        )
    })
}

fn drain_after_the_join(
    tb: &Testbed,
    child: &mut std::process::Child,
    reader: &mut std::fs::File,
    join: Join,
    before: &std::collections::HashMap<String, u64>,
    out: &Path,
) -> Result<()> {
    use std::io::{ErrorKind, Read, Write};
    use std::os::fd::AsRawFd;
    let netns = tb.netns("gw2")?;
    let waited = std::time::Instant::now();
    if let Err(e) = wait_counter_grows(netns, before, join.counter(), SHORT) {
        let after = mptcp_counters(netns)?;
        anyhow::bail!(
            "no MP_JOIN completed while the download was open: {e} (gw2: {})",
            deltas_named(before, &after, "MPJoin")
        );
    }
    eprintln!(
        "{} {:?} after the client started",
        join.what(),
        waited.elapsed()
    );
    let mut file = std::fs::File::create(out)?;
    let mut buf = vec![0u8; 1 << 16];
    let deadline = std::time::Instant::now() + TRANSFER;
    loop {
        // Looked at before reading: once the client has exited, one more
        // read takes everything it wrote.
        let exited = child.try_wait()?;
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => file.write_all(&buf[..n])?,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(status) = exited {
            ensure!(status.success(), "the client failed ({status})");
            return Ok(());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the download did not end within {TRANSFER:?}"
        );
        let mut pfd = libc::pollfd {
            fd: reader.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd for the duration of the call; the wait
        // is bounded (50 ms) so the client's exit is seen soon.
        unsafe { libc::poll(&mut pfd, 1, 50) };
    }
}

/// Kills and reaps a child on drop, so a failing test leaves no server.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server under `dropshim run --config UML` in gw1, ready once the
/// supervisor has answered its listen() (a listener inside the guest is
/// invisible to the host's `ss`): its debug lines go to `log`.
fn uml_server(tb: &Testbed, config: &str, program: &[&str], log: &Path) -> Result<ChildGuard> {
    let mut cmd = dropshim_run(tb, "gw1", &["--config", config], program)?;
    cmd.env("DROPSHIM_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?);
    let child = ChildGuard(cmd.spawn().context("spawning the server on uml")?);
    wait_until(SHORT, "the server's listen() in the instance", || {
        std::fs::read_to_string(log).is_ok_and(|l| l.contains("listen(fd"))
    })?;
    Ok(child)
}

/// Runs `argv` under `dropshim run RUN_ARGS` in gw1, a download into
/// `out`, and checks that `out` holds the bytes whose sha256 is `want`.
fn download_intact(
    tb: &Testbed,
    run_args: &[&str],
    argv: &[&str],
    out: &Path,
    want: &str,
    what: &str,
) -> Result<()> {
    run_ok(&mut dropshim_run(tb, "gw1", run_args, argv)?, TRANSFER)?;
    ensure!(sha256_file(out)? == want, "{what}: bytes differ");
    Ok(())
}

/// A `subflow` endpoint on gw2's second link (its IPv6 address with
/// `v6`), so that a client in gw2 opens a second subflow to a server in
/// the instance.
fn gw2_subflow_endpoint(tb: &Testbed, v6: bool) -> Result<()> {
    let addr = if v6 {
        tb.addr6("gw2", 2)?.to_string()
    } else {
        tb.addr4("gw2", 2)?.to_string()
    };
    let ifname = tb.ifname("gw2", 2)?.to_string();
    run_ok(
        tb.command("gw2", "ip")?
            .args(["mptcp", "endpoint", "add", &addr, "dev", &ifname, "subflow"]),
        SHORT,
    )?;
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

/// A busybox `nc` server in gw2 under `dropshim run` (native) that sends
/// `file` to every connection. It keeps listening (`-ll`): an MPTCP
/// listener that closed after its first accept would refuse the second
/// subflow's MP_JOIN.
fn nc_file_server(tb: &Testbed, bb: &str, file: &Path, port: u16) -> Result<Background> {
    let file = file.to_str().context("file path")?;
    let port_s = port.to_string();
    let mut server = dropshim_run(
        tb,
        "gw2",
        &[],
        &[bb, "nc", "-ll", "-p", &port_s, "-e", bb, "cat", file],
    )?;
    let server = Background::spawn(&mut server, "busybox nc -ll")?;
    wait_listening(tb.netns("gw2")?, port, SHORT)?;
    Ok(server)
}

/// busybox `nc IP PORT` in `node` under `dropshim run` with `extra` options,
/// its input held open (nc ends the connection at the end of its input),
/// its output into `out`, until the server ends the connection.
fn nc_receive(
    tb: &Testbed,
    node: &str,
    bb: &str,
    extra: &[&str],
    ip: IpAddr,
    port: u16,
    out: &Path,
) -> Result<()> {
    let (ip, port) = (ip.to_string(), port.to_string());
    let client = dropshim_run(tb, node, extra, &[bb, "nc", &ip, &port])?;
    receive_with_input_open(client, Stdio::from(std::fs::File::create(out)?))
}

/// Runs `client` with its input held open and its output into `out`
/// until it ends, successfully.
fn receive_with_input_open(mut client: Command, out: Stdio) -> Result<()> {
    client
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(Stdio::piped());
    let mut client = client.spawn().context("spawning the nc client")?;
    let input = client.stdin.take().context("client stdin")?;
    let res = wait_bounded(client, TRANSFER)?;
    drop(input);
    ensure!(
        res.status.success(),
        "nc client failed ({}): {}",
        res.status,
        String::from_utf8_lossy(&res.stderr)
    );
    Ok(())
}

#[test]
fn reach_native_busybox_nc_transfer_between_two_supervised_ends() -> Result<()> {
    let tb = shaped(400)?;
    let bb = busybox()?;
    let bb = bb.to_str().context("busybox path")?;
    let dir = tempfile::tempdir()?;
    let (file, want) = blob(dir.path(), "blob.bin", 32 << 20)?;
    let port = unique_port();
    let ip = IpAddr::V4(tb.addr4("gw2", 1)?);
    let before = mptcp_counters(tb.netns("gw2")?)?;
    let _server = nc_file_server(&tb, bb, &file, port)?;
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
    nc_receive(&tb, "gw1", bb, &[], ip, port, &out)?;
    ensure!(sha256_file(&out)? == want, "nc: received bytes differ");
    ensure_two_subflows(&tb, &before, 1)
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
    download_intact(
        &tb,
        &[],
        &[go, "get", &link, out_s],
        &out,
        &want,
        "Go client",
    )?;
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

/// Checks a refusal on lkl: non-zero status, one line naming the
/// program's kind and the backends that can serve it, nothing from the
/// program itself.
fn ensure_refused(res: &std::process::Output, kind: &str) -> Result<()> {
    let stderr = String::from_utf8_lossy(&res.stderr);
    ensure!(!res.status.success(), "the program was not refused");
    ensure!(
        stderr.lines().count() == 1,
        "expected one line, got: {stderr}"
    );
    ensure!(
        stderr.contains(kind) && stderr.contains("the lkl backend"),
        "the line should name the program's kind: {stderr}"
    );
    ensure!(
        stderr.contains("--backend native") && stderr.contains("--backend uml"),
        "the line should name the backends that serve it: {stderr}"
    );
    ensure!(res.stdout.is_empty(), "the program ran");
    Ok(())
}

#[test]
fn reach_lkl_refuses_static_and_go_programs_before_they_start() -> Result<()> {
    let bb = busybox()?;
    let bb = bb.to_str().context("busybox path")?;
    let dir = tempfile::tempdir()?;
    let marker = dir.path().join("started");
    let touch = format!("touch {}; echo started", marker.display());
    let build = tempfile::tempdir()?;
    let go = build_go(build.path())?;
    let go = go.to_str().context("go binary path")?;
    let lkl = ["--backend", "lkl"];
    let res = run_bounded(
        &mut dropshim_run_here(&lkl, &[bb, "sh", "-c", &touch]),
        SHORT,
    )?;
    ensure_refused(&res, "statically linked")?;
    ensure!(!marker.exists(), "busybox started");
    // Found through PATH like exec would.
    let mut by_name = dropshim_run_here(&lkl, &["busybox", "true"]);
    by_name.env("PATH", "/usr/bin:/bin");
    ensure_refused(&run_bounded(&mut by_name, SHORT)?, "statically linked")?;
    // Without arguments reachgo prints its usage: it must not.
    let res = run_bounded(&mut dropshim_run_here(&lkl, &[go]), SHORT)?;
    ensure_refused(&res, "Go program")?;
    // A program linked with libc still runs on lkl (its kernel boots at
    // the first TCP socket, which this one never opens).
    let res = run_ok(
        &mut dropshim_run_here(&lkl, &["sh", "-c", "printf ran"]),
        SHORT,
    )?;
    ensure!(res.stdout == b"ran", "sh did not run on lkl");
    Ok(())
}

/// The testbed (shaped) with gw1 handed to a UML instance.
fn uml_setup(tag: &str) -> Result<(Testbed, UmlDevice)> {
    let tb = shaped(400)?;
    let dev = uml_device(&tb, "gw1", &[1, 2], tag)?;
    Ok((tb, dev))
}

/// A native MPTCP HTTP server in gw2 (under Debian's mptcpize, so the
/// peer does not depend on dropshim).
fn mptcpize_http_server(tb: &Testbed, dir: &Path, ip: IpAddr, port: u16) -> Result<Background> {
    let mut cmd = plain(tb, "gw2", "mptcpize")?;
    cmd.args([
        "run",
        "python3",
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        &ip.to_string(),
        "--directory",
    ])
    .arg(dir);
    let server = Background::spawn(&mut cmd, "mptcpize python3 -m http.server")?;
    wait_listening(tb.netns("gw2")?, port, SHORT)?;
    Ok(server)
}

#[test]
fn reach_uml_busybox_wget_and_nc_client_and_server_run_through_the_instance() -> Result<()> {
    let (tb, dev) = uml_setup("rb")?;
    let config = dev.config().to_str().context("config path")?.to_string();
    let bb = busybox()?;
    let bb = bb.to_str().context("busybox path")?;
    let dir = tempfile::tempdir()?;
    let (file, want) = blob(dir.path(), "blob.bin", 32 << 20)?;
    let ip = IpAddr::V4(tb.addr4("gw2", 1)?);

    // wget: HTTP from the native server in gw2.
    let port = unique_port();
    let _server = mptcpize_http_server(&tb, dir.path(), ip, port)?;
    let before = mptcp_counters(tb.netns("gw2")?)?;
    let got = tempfile::tempdir()?;
    let out = got.path().join("wget.bin");
    let pipe = fifo(got.path(), "wget.fifo")?;
    let pipe_s = pipe.to_str().context("fifo path")?;
    let link = url(ip, port, "blob.bin");
    let wget = dropshim_run(
        &tb,
        "gw1",
        &["--config", &config],
        &[bb, "wget", "-q", "-O", pipe_s, &link],
    )?;
    download_after_the_join(&tb, wget, &pipe, false, Join::FromInstance, &before, &out)?;
    ensure!(sha256_file(&out)? == want, "wget on uml: bytes differ");
    ensure_two_subflows(&tb, &before, 1)?;

    // nc: a native nc in gw2 sends the file; gw1's nc receives it
    // through the instance.
    let port = unique_port();
    let before = mptcp_counters(tb.netns("gw2")?)?;
    let _server = nc_file_server(&tb, bb, &file, port)?;
    let out = got.path().join("nc.bin");
    let pipe = fifo(got.path(), "nc.fifo")?;
    let nc = dropshim_run(
        &tb,
        "gw1",
        &["--config", &config],
        &[bb, "nc", &ip.to_string(), &port.to_string()],
    )?;
    download_after_the_join(&tb, nc, &pipe, true, Join::FromInstance, &before, &out)?;
    ensure!(
        sha256_file(&out)? == want,
        "nc on uml: received bytes differ"
    );
    ensure_two_subflows(&tb, &before, 1)?;

    // The server side: busybox nc listening in the instance (a blocking
    // accept), a supervised busybox nc in gw2 receiving the file.
    gw2_subflow_endpoint(&tb, false)?;
    let port = unique_port();
    let port_s = port.to_string();
    let file_s = file.to_str().context("file path")?;
    let log = got.path().join("nc-server.log");
    let _server = uml_server(
        &tb,
        &config,
        &[bb, "nc", "-ll", "-p", &port_s, "-e", bb, "cat", file_s],
        &log,
    )?;
    let before = mptcp_counters(tb.netns("gw2")?)?;
    let out = got.path().join("nc-from-uml.bin");
    let gw1 = tb.addr4("gw1", 1)?.to_string();
    let client = dropshim_run(&tb, "gw2", &[], &[bb, "nc", &gw1, &port_s])?;
    let pipe = fifo(got.path(), "nc-from-uml.fifo")?;
    download_after_the_join(&tb, client, &pipe, true, Join::FromGw2, &before, &out)?;
    ensure!(
        sha256_file(&out)? == want,
        "nc server on uml: received bytes differ"
    );
    ensure_two_subflows_to_server(&tb, &before)
}

#[test]
fn reach_uml_go_http_client_and_server_run_through_the_instance() -> Result<()> {
    go_through_the_instance(false)
}

/// IPv6: the same, except that the instance's own client connection has
/// one subflow: its second would leave its link-2 address for gw2's
/// link-1 address, which IPv6 routes only with a route or source routing
/// in the guest (IPv4 takes it as on-link).
#[test]
fn reach_uml_go_over_ipv6_client_and_server_run_through_the_instance() -> Result<()> {
    go_through_the_instance(true)
}

/// The Go program under `dropshim run` on a uml device, over IPv4 or
/// IPv6: as an HTTP client (bytes intact, MPTCP at gw2; the addresses Go
/// reads back are the guest socket's), then as an HTTP server in the
/// instance that curl in gw2 downloads from over two subflows.
fn go_through_the_instance(v6: bool) -> Result<()> {
    let build = tempfile::tempdir()?;
    let go = build_go(build.path())?;
    let go = go.to_str().context("go binary path")?;
    let (tb, dev) = uml_setup(if v6 { "r6" } else { "rg" })?;
    let config = dev.config().to_str().context("config path")?.to_string();
    let addr_of = |node: &str| -> Result<IpAddr> {
        Ok(if v6 {
            IpAddr::V6(tb.addr6(node, 1)?)
        } else {
            IpAddr::V4(tb.addr4(node, 1)?)
        })
    };
    let family = if v6 { "IPv6" } else { "IPv4" };
    let dir = tempfile::tempdir()?;
    let (_, want) = blob(dir.path(), "blob.bin", 32 << 20)?;
    let ip = addr_of("gw2")?;
    let port = unique_port();
    let _server = mptcpize_http_server(&tb, dir.path(), ip, port)?;
    let before = mptcp_counters(tb.netns("gw2")?)?;
    let got = tempfile::tempdir()?;
    let out = got.path().join("go.bin");
    let out_s = out.to_str().context("out path")?;
    let link = url(ip, port, "blob.bin");
    if v6 {
        download_intact(
            &tb,
            &["--config", &config],
            &[go, "get", &link, out_s],
            &out,
            &want,
            &format!("Go client on uml over {family}"),
        )?;
        let after = mptcp_counters(tb.netns("gw2")?)?;
        ensure!(
            delta(&before, &after, "MPCapableSYNRX") >= 1,
            "gw2 saw no MP_CAPABLE SYN over IPv6: not MPTCP"
        );
    } else {
        let pipe = fifo(got.path(), "go.fifo")?;
        let pipe_s = pipe.to_str().context("fifo path")?;
        let client = dropshim_run(
            &tb,
            "gw1",
            &["--config", &config],
            &[go, "get", &link, pipe_s],
        )?;
        download_after_the_join(&tb, client, &pipe, false, Join::FromInstance, &before, &out)?;
        ensure!(
            sha256_file(&out)? == want,
            "Go client on uml over {family}: bytes differ"
        );
        ensure_two_subflows(&tb, &before, 1)?;
    }

    // The addresses Go reads back (getsockname/getpeername) are the guest
    // socket's: gw1's own address and the server's, not the bridge's.
    let server = SocketAddr::new(ip, port);
    let dial = run_ok(
        &mut dropshim_run(
            &tb,
            "gw1",
            &["--config", &config],
            &[go, "dial", &server.to_string(), "-"],
        )?,
        SHORT,
    )?;
    let seen = String::from_utf8_lossy(&dial.stdout);
    let gw1 = addr_of("gw1")?;
    let local = match gw1 {
        IpAddr::V4(a) => format!("local={a}:"),
        IpAddr::V6(a) => format!("local=[{a}]:"),
    };
    ensure!(
        seen.contains(&local) && seen.contains(&format!("remote={server}")),
        "Go saw other addresses than the guest socket's: {seen}"
    );

    // The server side: the Go HTTP server in the instance, curl in gw2
    // (native MPTCP under mptcpize) downloading from it.
    gw2_subflow_endpoint(&tb, v6)?;
    let port = unique_port();
    let listen = if v6 {
        format!("[::]:{port}")
    } else {
        format!(":{port}")
    };
    let served = dir.path().to_str().context("dir path")?;
    let log = got.path().join("go-server.log");
    let _server = uml_server(&tb, &config, &[go, "serve", &listen, served], &log)?;
    let before = mptcp_counters(tb.netns("gw2")?)?;
    let out = got.path().join("from-uml.bin");
    let mut curl = plain(&tb, "gw2", "mptcpize")?;
    curl.args(["run", "curl", "-sS", "--fail", "-o", "-"])
        .arg(url(gw1, port, "blob.bin"));
    let pipe = fifo(got.path(), "from-uml.fifo")?;
    download_after_the_join(&tb, curl, &pipe, true, Join::FromGw2, &before, &out)?;
    ensure!(
        sha256_file(&out)? == want,
        "Go server on uml over {family}: bytes differ"
    );
    ensure_two_subflows_to_server(&tb, &before)
}

/// Whether any process's command line mentions `needle`.
fn any_process_mentions(needle: &str) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(needle))
            .unwrap_or(false)
    })
}

#[test]
fn reach_native_descendants_left_behind_are_served_then_the_supervisor_goes() -> Result<()> {
    let tb = two_gateways()?;
    let bb = busybox()?;
    let bb = bb.to_str().context("busybox path")?;
    let dir = tempfile::tempdir()?;
    let (_, want) = blob(dir.path(), "blob.bin", 16 << 20)?;
    let ip = IpAddr::V4(tb.addr4("gw2", 1)?);
    let port = unique_port();
    let _server = http_server(&tb, dir.path(), ip, port)?;
    let got = tempfile::tempdir()?;
    let out = got.path().join("late.bin");
    let done = got.path().join("late.done");
    let link = url(ip, port, "blob.bin");
    // The program exits at once; the wget it leaves behind connects after.
    let script = format!(
        "({bb} sleep 0.5; {bb} wget -q -O {out} {link}; {bb} touch {done}) </dev/null >/dev/null 2>&1 & exit 5",
        out = out.display(),
        done = done.display()
    );
    let before = mptcp_counters(tb.netns("gw2")?)?;
    let res = run_bounded(
        &mut dropshim_run(&tb, "gw1", &[], &[bb, "sh", "-c", &script])?,
        SHORT,
    )?;
    ensure!(
        res.status.code() == Some(5),
        "dropshim run should end with the program's status at once, got {}",
        res.status
    );
    wait_until(TRANSFER, "the left-behind wget to finish", || done.exists())?;
    ensure!(sha256_file(&out)? == want, "late wget: bytes differ");
    let after = mptcp_counters(tb.netns("gw2")?)?;
    ensure!(
        delta(&before, &after, "MPCapableSYNRX") >= 1,
        "the left-behind wget was not MPTCP: nobody served its socket()"
    );
    // Nothing of the run remains once its last process is gone.
    let tag = done.display().to_string();
    wait_until(SHORT, "the detached supervisor to exit", || {
        !any_process_mentions(&tag)
    })
}

/// A 4 MiB file served over HTTP by a native MPTCP server in gw2, for a
/// download by programs in gw1 on the uml device.
struct Download {
    config: String,
    busybox: String,
    want: String,
    link: String,
    got: tempfile::TempDir,
    _dir: tempfile::TempDir,
    _server: Background,
}

impl Download {
    fn serve(tb: &Testbed, dev: &UmlDevice) -> Result<Download> {
        let dir = tempfile::tempdir()?;
        let (_, want) = blob(dir.path(), "blob.bin", 4 << 20)?;
        let ip = IpAddr::V4(tb.addr4("gw2", 1)?);
        let port = unique_port();
        let server = mptcpize_http_server(tb, dir.path(), ip, port)?;
        Ok(Download {
            config: dev.config().to_str().context("config path")?.to_string(),
            busybox: busybox()?.to_str().context("busybox path")?.to_string(),
            want,
            link: url(ip, port, "blob.bin"),
            got: tempfile::tempdir()?,
            _dir: dir,
            _server: server,
        })
    }

    /// The device file, busybox, the file's sha256 and the folder for
    /// what the programs download.
    fn parts(&self) -> (&str, &str, &str, &Path) {
        (&self.config, &self.busybox, &self.want, self.got.path())
    }
}

/// A static program started by a program linked with libc (a shell
/// script running busybox-static's wget) reaches the instance too: the
/// shell and curl are the shim's, wget the supervisor's. gw1's links
/// hold no host address (the instance owns them), so a download that
/// bypassed both would not get through at all.
#[test]
fn reach_uml_static_program_started_by_a_libc_shell_runs_through_the_instance() -> Result<()> {
    let (tb, dev) = uml_setup("sc")?;
    let d = Download::serve(&tb, &dev)?;
    let (config, bb, want, got) = d.parts();
    let (by_wget, by_curl) = (got.join("wget.bin"), got.join("curl.bin"));
    let link = &d.link;
    let script = format!(
        "curl -sS --fail -o {curl} {link} && {bb} wget -q -O {wget} {link}",
        curl = by_curl.display(),
        wget = by_wget.display(),
    );
    let before = mptcp_counters(tb.netns("gw2")?)?;
    let res = run_bounded(
        &mut dropshim_run(&tb, "gw1", &["--config", config], &["sh", "-c", &script])?,
        TRANSFER,
    )?;
    ensure!(
        res.status.success(),
        "the script failed ({}): {}",
        res.status,
        String::from_utf8_lossy(&res.stderr).trim()
    );
    ensure!(sha256_file(&by_curl)? == want, "curl: bytes differ");
    ensure!(
        sha256_file(&by_wget)? == want,
        "busybox wget started by sh: bytes differ"
    );
    let after = mptcp_counters(tb.netns("gw2")?)?;
    ensure!(
        delta(&before, &after, "MPCapableSYNRX") >= 2,
        "gw2 saw {} MPTCP connections, want 2 (curl's and wget's)",
        delta(&before, &after, "MPCapableSYNRX")
    );
    Ok(())
}

/// A blackhole route in a namespace until dropped (even when the test
/// fails): the namespace's answers to that address are dropped.
struct Blackhole {
    netns: String,
    dest: String,
}

impl Blackhole {
    fn add(netns: &str, addr: std::net::Ipv4Addr) -> Result<Blackhole> {
        let dest = format!("{addr}/32");
        run_ok(
            Command::new("ip").args(["-n", netns, "route", "add", "blackhole", &dest]),
            SHORT,
        )?;
        Ok(Blackhole {
            netns: netns.to_string(),
            dest,
        })
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        let _ = run_bounded(
            Command::new("ip").args(["-n", &self.netns, "route", "del", "blackhole", &self.dest]),
            SHORT,
        );
    }
}

/// A connect that a left-behind process has in progress when the program
/// exits is carried on by the detached supervisor: while gw2 drops its
/// answers to the instance, no connect through it can end; the program
/// exits once the supervisor has sent the left-behind wget's connect to
/// the instance; then gw2 answers again (the guest sends its SYN again),
/// and the download must complete, every byte intact.
#[test]
fn reach_uml_connect_in_progress_when_the_program_exits_completes() -> Result<()> {
    let (tb, dev) = uml_setup("cx")?;
    let d = Download::serve(&tb, &dev)?;
    let (config, bb, want, got) = d.parts();
    let (out, status) = (got.join("late.bin"), got.join("late.status"));
    let said = got.join("late.stderr");
    let go = fifo(got, "go.fifo")?;
    // Held open by the test, so neither end of the FIFO blocks.
    let go_w = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&go)?;
    let script = format!(
        "({bb} wget -q -O {out} {link} 2>{said}; echo $? > {status}) </dev/null >/dev/null 2>&1 & read x < {go}; exit 5",
        out = out.display(),
        said = said.display(),
        link = d.link,
        status = status.display(),
        go = go.display(),
    );
    let before = mptcp_counters(tb.netns("gw2")?)?;
    let silent = Blackhole::add(tb.netns("gw2")?, tb.addr4("gw1", 1)?)?;
    let cli = cli_path();
    let mut cmd = plain(&tb, "gw1", "sh")?;
    // The supervisor's log (stderr) read as lines on stdout.
    cmd.args(["-c", "exec \"$@\" 2>&1", "sh"])
        .arg(&cli)
        .args(["run", "--config", config, "--", bb, "sh", "-c", &script])
        .env("DROPSHIM_LOG", "debug");
    let run = Lines::spawn(&mut cmd, "dropshim run")?;
    // Logged just before the request goes to the device, in the same
    // turn of the supervisor's loop: it is sent before the program's
    // exit can be seen.
    loop {
        let line = run
            .next_line(SHORT)?
            .context("dropshim run ended before the left-behind wget connected")?;
        if line.contains("through the uml instance") {
            break;
        }
    }
    std::io::Write::write_all(&mut &go_w, b"go\n")?;
    let (ended, _, _) = run.finish(SHORT)?;
    ensure!(
        ended.code() == Some(5),
        "dropshim run should end with the program's status, got {ended}"
    );
    drop(silent);
    wait_until(TRANSFER, "the left-behind wget to end", || status.exists())?;
    let code = std::fs::read_to_string(&status)?;
    ensure!(
        code.trim() == "0",
        "the left-behind wget failed (exit {}, {:?}): its connect, in progress when the program exited, was not carried on",
        code.trim(),
        std::fs::read_to_string(&said).unwrap_or_default().trim()
    );
    ensure!(sha256_file(&out)? == want, "left-behind wget: bytes differ");
    let after = mptcp_counters(tb.netns("gw2")?)?;
    ensure!(
        delta(&before, &after, "MPCapableSYNRX") >= 1,
        "the left-behind wget's connection was not MPTCP"
    );
    Ok(())
}

/// Sends the file `argv[3]` to `argv[1]`:`argv[2]` and closes.
const SEND_PY: &str = r##"import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
c.sendall(open(sys.argv[3], "rb").read())
c.close()
"##;

/// An IPv4-mapped loopback address is loopback: a static program under
/// the supervisor that binds `::ffff:127.0.0.1` on an IPv6 socket listens
/// on the host, where a host client on 127.0.0.1 reaches it.
#[test]
fn reach_uml_mapped_loopback_listener_stays_on_the_host() -> Result<()> {
    let build = tempfile::tempdir()?;
    let go = build_go(build.path())?;
    let go = go.to_str().context("go binary path")?;
    let (tb, dev) = uml_setup("ml")?;
    let config = dev.config().to_str().context("config path")?.to_string();
    let dir = tempfile::tempdir()?;
    let (file, want) = blob(dir.path(), "blob.bin", 1 << 20)?;
    let out = dir.path().join("received.bin");
    let out_s = out.to_str().context("out path")?;
    let port = unique_port();
    let addr = format!("[::ffff:127.0.0.1]:{port}");
    let server = Background::spawn(
        &mut dropshim_run(
            &tb,
            "gw1",
            &["--config", &config],
            &[go, "listen6", &addr, out_s],
        )?,
        "reachgo listen6 under dropshim run",
    )?;
    wait_listening(tb.netns("gw1")?, port, SHORT)
        .context("the mapped-loopback listener is not on the host")?;
    let py = dir.path().join("send.py");
    std::fs::write(&py, SEND_PY)?;
    run_ok(
        plain(&tb, "gw1", "python3")?
            .arg(&py)
            .args(["127.0.0.1", &port.to_string()])
            .arg(&file),
        SHORT,
    )?;
    let done = server.wait(SHORT)?;
    ensure!(
        done.status.success(),
        "the listener failed: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    ensure!(sha256_file(&out)? == want, "received bytes differ");
    Ok(())
}

/// Reads `argv[3]` bytes from one connection on `argv[1]`:`argv[2]`,
/// prints their sha256, then keeps the connection open until the client
/// closes it.
const HOLD_PY: &str = r##"import hashlib, socket, sys
l = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((sys.argv[1], int(sys.argv[2])))
l.listen(1)
print("listening", flush=True)
c, _ = l.accept()
want, h = int(sys.argv[3]), hashlib.sha256()
while want > 0:
    b = c.recv(min(want, 1 << 16))
    if not b:
        break
    h.update(b)
    want -= len(b)
print("sha256 " + h.hexdigest(), flush=True)
while c.recv(1 << 16):
    pass
"##;

/// Segments gw2 received on its established connections of local port
/// `port` from `from` (the subflows' `segs_in`).
fn segments_in(tb: &Testbed, port: u16, from: IpAddr) -> Result<u64> {
    let out = run_ok(
        plain(tb, "gw2", "ss")?.args([
            "-Htin",
            "state",
            "established",
            &format!("( sport = :{port} and dst {from} )"),
        ]),
        SHORT,
    )?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("segs_in:"))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum())
}

/// Socket options a Go program sets before connect (SO_KEEPALIVE,
/// TCP_KEEPIDLE 1 s, TCP_KEEPINTVL 1 s, through net.Dialer's Control)
/// reach the guest socket: once the connection is idle its subflow sends
/// keepalive probes, which the peer receives.
#[test]
fn reach_uml_go_keepalive_set_before_connect_reaches_the_guest_socket() -> Result<()> {
    let build = tempfile::tempdir()?;
    let go = build_go(build.path())?;
    let go = go.to_str().context("go binary path")?;
    let (tb, dev) = uml_setup("ka")?;
    let config = dev.config().to_str().context("config path")?.to_string();
    let dir = tempfile::tempdir()?;
    let size = 256 << 10;
    let (file, want) = blob(dir.path(), "blob.bin", size)?;
    let file_s = file.to_str().context("file path")?;
    let ip = IpAddr::V4(tb.addr4("gw2", 1)?);
    let port = unique_port();
    let py = dir.path().join("hold.py");
    std::fs::write(&py, HOLD_PY)?;
    let mut server = plain(&tb, "gw2", "mptcpize")?;
    server.args(["run", "python3"]).arg(&py).args([
        ip.to_string(),
        port.to_string(),
        size.to_string(),
    ]);
    let server = Lines::spawn(&mut server, "hold server")?;
    server.expect("listening", SHORT)?;
    let mut client = dropshim_run(
        &tb,
        "gw1",
        &["--config", &config],
        &[go, "keepalive", &format!("{ip}:{port}"), file_s],
    )?;
    let _client = Background::spawn(&mut client, "reachgo keepalive")?;
    let digest = server.expect("sha256 ", TRANSFER)?;
    ensure!(digest == format!("sha256 {want}"), "bytes differ: {digest}");
    // The connection is idle from here on: only keepalive sends segments.
    let gw1 = IpAddr::V4(tb.addr4("gw1", 1)?);
    let base = segments_in(&tb, port, gw1)?;
    ensure!(base > 0, "gw2 holds no connection from {gw1}");
    let mut last = base;
    wait_until(
        Duration::from_secs(20),
        "keepalive probes from the guest socket at gw2",
        || {
            last = segments_in(&tb, port, gw1).unwrap_or(last);
            last >= base + 4
        },
    )
    .with_context(|| format!("gw2's subflow received {} segments while idle", last - base))?;
    Ok(())
}

/// A non-blocking connect under the supervisor on uml answers as a kernel
/// socket's: EINPROGRESS at once; writable through an epoll registration
/// made after connect returned (edge-triggered, as Go's runtime makes
/// it); SO_ERROR 0 and the answer to the bytes sent, intact, waited for
/// through that same registration; to a closed port, ECONNREFUSED in
/// SO_ERROR.
#[test]
fn reach_uml_nonblocking_connect_says_einprogress_then_so_error() -> Result<()> {
    let build = tempfile::tempdir()?;
    let go = build_go(build.path())?;
    let go = go.to_str().context("go binary path")?;
    let (tb, dev) = uml_setup("nb")?;
    let config = dev.config().to_str().context("config path")?.to_string();
    let dir = tempfile::tempdir()?;
    let (file, want) = blob(dir.path(), "blob.bin", 1 << 20)?;
    let file_s = file.to_str().context("file path")?;
    let py = dir.path().join("digest.py");
    std::fs::write(&py, dropshim_tests::uml::DIGEST_SERVER_PY)?;
    let ip = tb.addr4("gw2", 1)?.to_string();
    let (port, closed) = (unique_port(), unique_port());
    let mut server = plain(&tb, "gw2", "mptcpize")?;
    server
        .args(["run", "python3"])
        .arg(&py)
        .args([ip.as_str(), &port.to_string()]);
    let server = Lines::spawn(&mut server, "digest server")?;
    server.expect("listening", SHORT)?;
    let before = mptcp_counters(tb.netns("gw2")?)?;
    let run = |to: u16| -> Result<String> {
        let out = run_ok(
            &mut dropshim_run(
                &tb,
                "gw1",
                &["--config", &config],
                &[go, "nbconnect", &format!("{ip}:{to}"), file_s],
            )?,
            SHORT,
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let open = run(port)?;
    ensure!(
        open == format!("connect=EINPROGRESS\nso_error=0\nanswer={want}"),
        "to a listening peer: {open:?}"
    );
    let after = mptcp_counters(tb.netns("gw2")?)?;
    ensure!(
        delta(&before, &after, "MPCapableSYNRX") >= 1,
        "gw2 saw no MP_CAPABLE SYN: not MPTCP"
    );
    let refused = run(closed)?;
    ensure!(
        refused == "connect=EINPROGRESS\nso_error=ECONNREFUSED",
        "to a closed port: {refused:?}"
    );
    Ok(())
}

/// The Go program's `acceptget` in gw1 under `dropshim run RUN_ARGS`: one
/// thread blocked in a raw accept() on gw1's link-1 address while its
/// other goroutines download a file from `server` in gw2 (HTTP), then
/// connect to that listener and send the file. Both transfers are
/// checked (sha256), and gw2 must have seen MPTCP.
fn accept_blocks_nothing(
    tb: &Testbed,
    go: &str,
    run_args: &[&str],
    dir: &Path,
    port: u16,
) -> Result<()> {
    let (_, want) = blob(dir, "blob.bin", 4 << 20)?;
    let ip = IpAddr::V4(tb.addr4("gw2", 1)?);
    let before = mptcp_counters(tb.netns("gw2")?)?;
    let got = tempfile::tempdir()?;
    let out = got.path().join("got.bin");
    let out_s = out.to_str().context("out path")?;
    let listen = format!("{}:{}", tb.addr4("gw1", 1)?, unique_port());
    let link = url(ip, port, "blob.bin");
    let res = run_ok(
        &mut dropshim_run(
            tb,
            "gw1",
            run_args,
            &[go, "acceptget", &listen, &link, out_s],
        )?,
        TRANSFER,
    )?;
    let said = String::from_utf8_lossy(&res.stdout).trim().to_string();
    ensure!(
        said == format!("got\naccepted={want}"),
        "the program said {said:?}; stderr: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    ensure!(sha256_file(&out)? == want, "download: bytes differ");
    let after = mptcp_counters(tb.netns("gw2")?)?;
    ensure!(
        delta(&before, &after, "MPCapableSYNRX") >= 1,
        "gw2 saw no MP_CAPABLE SYN: the download was not MPTCP"
    );
    Ok(())
}

/// A thread of a static program blocked in accept() holds none of its
/// other socket calls (native: only socket() is trapped, the accept is
/// the kernel's).
#[test]
fn reach_native_blocked_accept_holds_no_other_call() -> Result<()> {
    let build = tempfile::tempdir()?;
    let go = build_go(build.path())?;
    let go = go.to_str().context("go binary path")?;
    let tb = two_gateways()?;
    let dir = tempfile::tempdir()?;
    let port = unique_port();
    let _server = http_server(&tb, dir.path(), IpAddr::V4(tb.addr4("gw2", 1)?), port)?;
    accept_blocks_nothing(&tb, go, &[], dir.path(), port)
}

/// On uml the supervisor answers accept() itself: a thread of the
/// program blocked in it must not hold the program's connect (the
/// download) nor the supervisor's answers to it. The listener is in the
/// instance; the program's own connection to it is accepted there.
#[test]
fn reach_uml_blocked_accept_holds_no_other_call() -> Result<()> {
    let build = tempfile::tempdir()?;
    let go = build_go(build.path())?;
    let go = go.to_str().context("go binary path")?;
    let (tb, dev) = uml_setup("ba")?;
    let config = dev.config().to_str().context("config path")?.to_string();
    let dir = tempfile::tempdir()?;
    let port = unique_port();
    let _server = mptcpize_http_server(&tb, dir.path(), IpAddr::V4(tb.addr4("gw2", 1)?), port)?;
    accept_blocks_nothing(&tb, go, &["--config", &config], dir.path(), port)
}

/// The device file's policy holds for programs that bypass libc on
/// native, as the shim applies it to programs linked with libc: a
/// busybox-static `nc` connecting to 127.0.0.1 stays plain TCP (no
/// MP_CAPABLE reaches gw1's stack, though its listener is MPTCP), a Go
/// listener bound to 127.0.0.1 is plain TCP (`ss -M` does not list it),
/// and a `tcp` rule for gw2's address keeps `nc`'s connection there on
/// TCP while, without the rule, the same connection is MPTCP. Bytes are
/// checked each time.
#[test]
fn reach_native_loopback_and_policy_rules_hold_for_static_programs() -> Result<()> {
    let build = tempfile::tempdir()?;
    let go = build_go(build.path())?;
    let go = go.to_str().context("go binary path")?;
    let tb = two_gateways()?;
    let bb = busybox()?;
    let bb = bb.to_str().context("busybox path")?;
    let dir = tempfile::tempdir()?;
    let (file, want) = blob(dir.path(), "blob.bin", 1 << 20)?;
    let file_s = file.to_str().context("file path")?;
    let got = tempfile::tempdir()?;

    // nc to 127.0.0.1, its server (an MPTCP listener on the wildcard)
    // in the same namespace.
    let port = unique_port();
    let port_s = port.to_string();
    let mut server = dropshim_run(
        &tb,
        "gw1",
        &[],
        &[bb, "nc", "-ll", "-p", &port_s, "-e", bb, "cat", file_s],
    )?;
    let _server = Background::spawn(&mut server, "busybox nc -ll in gw1")?;
    wait_listening(tb.netns("gw1")?, port, SHORT)?;
    let before = mptcp_counters(tb.netns("gw1")?)?;
    let out = got.path().join("loopback.bin");
    let lo = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    nc_receive(&tb, "gw1", bb, &[], lo, port, &out)?;
    ensure!(sha256_file(&out)? == want, "nc over loopback: bytes differ");
    let after = mptcp_counters(tb.netns("gw1")?)?;
    ensure!(
        delta(&before, &after, "MPCapableSYNRX") == 0,
        "nc's connection to 127.0.0.1 was MPTCP: loopback must stay plain TCP"
    );

    // A Go server bound to 127.0.0.1: a plain TCP listener.
    let port = unique_port();
    let addr = format!("127.0.0.1:{port}");
    let served = dir.path().to_str().context("dir path")?;
    let mut server = dropshim_run(&tb, "gw1", &[], &[go, "serve", &addr, served])?;
    let _go_server = Background::spawn(&mut server, "reachgo serve on loopback")?;
    wait_listening(tb.netns("gw1")?, port, SHORT)?;
    let mptcp_listeners = run_ok(
        tb.command("gw1", "ss")?
            .args(["-HlnM", &format!("sport = :{port}")]),
        SHORT,
    )?;
    ensure!(
        mptcp_listeners.stdout.is_empty(),
        "the Go server bound to 127.0.0.1 is an MPTCP listener: {}",
        String::from_utf8_lossy(&mptcp_listeners.stdout)
    );
    let out = got.path().join("go-loopback.bin");
    let out_s = out.to_str().context("out path")?;
    download_intact(
        &tb,
        &[],
        &[go, "get", &url(lo, port, "blob.bin"), out_s],
        &out,
        &want,
        "Go client over loopback",
    )?;

    // A `tcp` rule for gw2's link-1 address.
    let gw2 = tb.addr4("gw2", 1)?;
    let config = dir.path().join("policy.toml");
    std::fs::write(
        &config,
        format!(
            "[device]\nname = \"reach-policy\"\nbackend = \"native\"\n\n[policy]\n\
             default = \"mptcp\"\n\n[[policy.rule]]\ndest = \"{gw2}/32\"\naction = \"tcp\"\n"
        ),
    )?;
    let config = config.to_str().context("config path")?;
    let port = unique_port();
    let _server = nc_file_server(&tb, bb, &file, port)?;
    let before = mptcp_counters(tb.netns("gw2")?)?;
    let out = got.path().join("rule.bin");
    nc_receive(
        &tb,
        "gw1",
        bb,
        &["--config", config],
        gw2.into(),
        port,
        &out,
    )?;
    ensure!(
        sha256_file(&out)? == want,
        "nc under a tcp rule: bytes differ"
    );
    let after = mptcp_counters(tb.netns("gw2")?)?;
    ensure!(
        delta(&before, &after, "MPCapableSYNRX") == 0,
        "nc's connection to {gw2} was MPTCP though a rule says tcp"
    );
    let out = got.path().join("default.bin");
    nc_receive(&tb, "gw1", bb, &[], gw2.into(), port, &out)?;
    ensure!(sha256_file(&out)? == want, "nc by default: bytes differ");
    let last = mptcp_counters(tb.netns("gw2")?)?;
    ensure!(
        delta(&after, &last, "MPCapableSYNRX") >= 1,
        "without the rule nc's connection to {gw2} was not MPTCP"
    );
    Ok(())
}

/// exit(0) through `int 0x80`.
const I386_EXIT: [u8; 9] = [0x31, 0xdb, 0xb8, 1, 0, 0, 0, 0xcd, 0x80];

/// The smallest i386 program: exit(0) through `int 0x80` (an ELF header,
/// one loadable segment, nine bytes of code), so that no 32-bit
/// toolchain is needed.
fn i386_exit_program() -> Vec<u8> {
    i386_program(&I386_EXIT)
}

/// An i386 program that opens two TCP sockets, the first through
/// `socketcall(SYS_SOCKET, {AF_INET, SOCK_STREAM, 0})`, the second with
/// `socket(AF_INET, SOCK_STREAM, 0)` (system call 359), then exits 0.
fn i386_socket_program() -> Vec<u8> {
    let mut code = vec![
        0x6a, 0x00, // push 0
        0x6a, 0x01, // push SOCK_STREAM
        0x6a, 0x02, // push AF_INET
        0x89, 0xe1, // mov ecx, esp
        0xbb, 1, 0, 0, 0, // mov ebx, SYS_SOCKET
        0xb8, 102, 0, 0, 0, // mov eax, socketcall
        0xcd, 0x80, // int 0x80
        0xbb, 2, 0, 0, 0, // mov ebx, AF_INET
        0xb9, 1, 0, 0, 0, // mov ecx, SOCK_STREAM
        0x31, 0xd2, // xor edx, edx
        0xb8, 0x67, 0x01, 0, 0, // mov eax, 359 (socket)
        0xcd, 0x80, // int 0x80
    ];
    code.extend_from_slice(&I386_EXIT);
    i386_program(&code)
}

/// An i386 ELF executable: a header, one loadable segment, `code`.
fn i386_program(code: &[u8]) -> Vec<u8> {
    let base: u32 = 0x0804_8000;
    let total = 52 + 32 + code.len() as u32;
    let mut elf = b"\x7fELF\x01\x01\x01".to_vec();
    elf.resize(16, 0);
    for half in [2u16, 3] {
        elf.extend_from_slice(&half.to_le_bytes());
    }
    for word in [1u32, base + 52 + 32, 52, 0, 0] {
        elf.extend_from_slice(&word.to_le_bytes());
    }
    for half in [52u16, 32, 1, 0, 0, 0] {
        elf.extend_from_slice(&half.to_le_bytes());
    }
    for word in [1u32, 0, base, base, total, total, 5, 0x1000] {
        elf.extend_from_slice(&word.to_le_bytes());
    }
    elf.extend_from_slice(code);
    elf
}

/// A 32-bit program, which neither the filter (it checks the host's
/// audit arch) nor the 64-bit shim can reach, is not served silently:
/// on native it runs with one line saying it keeps plain TCP (and no
/// dynamic loader complaint about the shim); on uml and lkl it is refused
/// before it starts with one line naming native.
#[test]
fn reach_a_32_bit_program_gets_one_clear_line_on_every_backend() -> Result<()> {
    ensure!(
        cfg!(target_arch = "x86_64"),
        "this test runs an i386 program on an x86_64 host"
    );
    let dir = tempfile::tempdir()?;
    let prog = dir.path().join("exit32");
    std::fs::write(&prog, i386_exit_program())?;
    std::fs::set_permissions(&prog, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let prog = prog.to_str().context("program path")?;
    let ran = run_bounded(&mut dropshim_run_here(&[], &[prog]), SHORT)?;
    let said = String::from_utf8_lossy(&ran.stderr).to_string();
    ensure!(ran.status.success(), "native: {} {said}", ran.status);
    ensure!(
        said.lines().count() == 1 && said.contains("32-bit x86") && said.contains("plain TCP"),
        "native: expected one line saying the 32-bit program keeps plain TCP, got {said:?}"
    );
    for backend in ["uml", "lkl"] {
        let res = run_bounded(
            &mut dropshim_run_here(&["--backend", backend], &[prog]),
            SHORT,
        )?;
        let said = String::from_utf8_lossy(&res.stderr).to_string();
        ensure!(
            res.status.code() == Some(1),
            "{backend}: the 32-bit program was not refused ({}): {said}",
            res.status
        );
        ensure!(
            said.lines().count() == 1
                && said.contains("32-bit x86")
                && said.contains("--backend native"),
            "{backend}: expected one line naming native, got {said:?}"
        );
    }
    Ok(())
}

/// A 32-bit program started by a 64-bit one (a shell linked with libc)
/// is told about too, when it opens its first TCP socket: one line per
/// such process (two sockets each, one line), naming the program and what
/// its connections get on the stack (native: plain TCP; uml and lkl: the
/// backend that runs it).
#[test]
fn reach_a_32_bit_child_of_a_64_bit_program_gets_one_line_per_process() -> Result<()> {
    ensure!(
        cfg!(target_arch = "x86_64"),
        "this test runs an i386 program on an x86_64 host"
    );
    let dir = tempfile::tempdir()?;
    let prog = dir.path().join("socket32");
    std::fs::write(&prog, i386_socket_program())?;
    std::fs::set_permissions(&prog, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let prog = prog.to_str().context("program path")?;
    let script = format!("{prog} && {prog} && echo ran");
    for (backend, says) in [
        ("native", "plain TCP"),
        ("uml", "native backend runs it"),
        ("lkl", "native backend runs it"),
    ] {
        let ran = run_bounded(
            &mut dropshim_run_here(&["--backend", backend], &["sh", "-c", &script]),
            SHORT,
        )?;
        let said = String::from_utf8_lossy(&ran.stderr).to_string();
        ensure!(
            ran.status.success() && ran.stdout == b"ran\n",
            "{backend}: {} {said}",
            ran.status
        );
        let lines: Vec<&str> = said.lines().collect();
        ensure!(
            lines.len() == 2
                && lines
                    .iter()
                    .all(|l| l.contains("32-bit x86") && l.contains(prog) && l.contains(says)),
            "{backend}: expected one line per 32-bit process saying {says:?}, got {said:?}"
        );
        ensure!(
            lines[0] != lines[1],
            "{backend}: both lines name the same process: {said:?}"
        );
    }
    Ok(())
}

/// Builds tests/c/accept_signal.c into `dir`, statically linked.
fn build_accept_signal(dir: &Path) -> Result<PathBuf> {
    build_static_c(dir, "accept_signal")
}

/// Builds tests/c/NAME.c into `dir`, statically linked.
fn build_static_c(dir: &Path, name: &str) -> Result<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("c/{name}.c"));
    let out = dir.join(name);
    run_ok(
        Command::new("gcc")
            .args(["-static", "-O1", "-o"])
            .arg(&out)
            .arg(&src),
        GO_BUILD,
    )
    .context("gcc -static failed (scripts/setup.sh installs build-essential)")?;
    Ok(out)
}

/// Whether the program `pid` started (`dropshim run`'s child), or `pid`
/// itself when it has none, is blocked in one of the system calls `nrs`.
fn blocked_in(pid: u32, nrs: &[i64]) -> bool {
    let kids =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let target = kids
        .split_whitespace()
        .next()
        .and_then(|k| k.parse::<u32>().ok())
        .unwrap_or(pid);
    std::fs::read_to_string(format!("/proc/{target}/syscall")).is_ok_and(|s| {
        s.split_whitespace()
            .next()
            .and_then(|nr| nr.parse::<i64>().ok())
            .is_some_and(|nr| nrs.contains(&nr))
    })
}

fn blocked_in_accept(pid: u32) -> bool {
    blocked_in(pid, &[libc::SYS_accept, libc::SYS_accept4])
}

/// Runs accept_signal (`cmd`, listening on `ip:port`), sends SIGUSR1 once
/// its accept() blocks, and returns what it printed after: the handler's
/// line and accept()'s outcome (with `restart`, the bytes of a connection
/// made from gw2 after the signal).
fn accept_signal_outcome(
    tb: &Testbed,
    cmd: &mut Command,
    ip: IpAddr,
    port: u16,
    restart: bool,
) -> Result<Vec<String>> {
    let prog = Lines::spawn(cmd, "accept_signal")?;
    prog.expect("listening", SHORT)?;
    let pid = prog.pid();
    wait_until(SHORT, "accept_signal blocked in accept()", || {
        blocked_in_accept(pid)
    })?;
    // SAFETY: kill takes integers only; `pid` is our child, still running
    // (it blocks in accept).
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR1) };
    let handled = prog.expect("handled", SHORT)?;
    if restart {
        let message = "hello-from-gw2";
        run_ok(
            plain(tb, "gw2", "python3")?.args([
                "-c",
                "import socket,sys\n\
                 s=socket.create_connection((sys.argv[1],int(sys.argv[2])))\n\
                 s.sendall(sys.argv[3].encode()); s.close()",
                &ip.to_string(),
                &port.to_string(),
                message,
            ]),
            SHORT,
        )?;
        Ok(vec![handled, prog.expect("data=", SHORT)?])
    } else {
        Ok(vec![handled, prog.expect("accept=", SHORT)?])
    }
}

/// A signal to a static program blocked in accept() on a uml listener
/// acts as on a kernel socket: its handler runs at once; without
/// SA_RESTART accept() fails with EINTR, with it accept() goes on and
/// takes the next connection (its bytes checked). The kernel's own
/// behaviour is taken from the same program, without dropshim, in gw2.
#[test]
fn reach_uml_signal_to_a_blocked_accept_acts_as_on_a_kernel_socket() -> Result<()> {
    let build = tempfile::tempdir()?;
    let prog = build_accept_signal(build.path())?;
    let prog = prog.to_str().context("program path")?;
    let (tb, dev) = uml_setup("as")?;
    let config = dev.config().to_str().context("config path")?.to_string();
    let gw1 = IpAddr::V4(tb.addr4("gw1", 1)?);
    let gw2 = IpAddr::V4(tb.addr4("gw2", 1)?);
    for mode in ["norestart", "restart"] {
        let restart = mode == "restart";
        let port = unique_port();
        let port_s = port.to_string();
        let mut kernel = plain(&tb, "gw2", prog)?;
        kernel.args([gw2.to_string().as_str(), &port_s, mode]);
        let want = accept_signal_outcome(&tb, &mut kernel, gw2, port, restart)?;
        let expected = if restart {
            "data=hello-from-gw2".to_string()
        } else {
            "accept=EINTR".to_string()
        };
        ensure!(
            want == ["handled".to_string(), expected],
            "{mode}: the kernel's own socket said {want:?}"
        );
        let port = unique_port();
        let port_s = port.to_string();
        let gw1_s = gw1.to_string();
        let mut uml = dropshim_run(
            &tb,
            "gw1",
            &["--config", &config],
            &[prog, &gw1_s, &port_s, mode],
        )?;
        let got = accept_signal_outcome(&tb, &mut uml, gw1, port, restart)?;
        ensure!(
            got == want,
            "{mode}: on uml {got:?}, a kernel socket {want:?}"
        );
    }
    Ok(())
}

/// A TCP listener in gw2 whose accept queue is full (backlog 0, one
/// connection of its own waiting), so a connect to it waits in SYN_SENT,
/// its SYNs dropped, until the file `trigger` exists: it then takes its
/// own connection off the queue, accepts the next one and prints
/// `data=` and what that connection sent.
fn full_listener(tb: &Testbed, ip: IpAddr, port: u16, trigger: &Path) -> Result<Lines> {
    let mut cmd = plain(tb, "gw2", "python3")?;
    cmd.args([
        "-c",
        "import os,socket,sys,time\n\
         ip,port,trigger=sys.argv[1],int(sys.argv[2]),sys.argv[3]\n\
         l=socket.socket(); l.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         l.bind((ip,port)); l.listen(0)\n\
         own=socket.create_connection((ip,port))\n\
         print('full',flush=True)\n\
         deadline=time.monotonic()+60\n\
         while not os.path.exists(trigger):\n\
         \x20   if time.monotonic()>deadline: sys.exit('no trigger')\n\
         \x20   time.sleep(0.01)\n\
         l.accept()[0].close(); own.close()\n\
         c=l.accept()[0]; data=b''\n\
         while True:\n\
         \x20   b=c.recv(4096)\n\
         \x20   if not b: break\n\
         \x20   data+=b\n\
         print('data='+data.decode(),flush=True)\n",
        &ip.to_string(),
        &port.to_string(),
    ]);
    cmd.arg(trigger);
    let server = Lines::spawn(&mut cmd, "full listener")?;
    server.expect("full", SHORT)?;
    Ok(server)
}

/// Runs connect_signal (`cmd`, connecting to `ip:port`, a [`full_listener`]
/// there), sends SIGUSR1 once its connect() blocks, lets the listener
/// take the connection once the signal's outcome is printed, and returns
/// the program's lines after "connecting" and what the listener received.
fn connect_signal_outcome(
    tb: &Testbed,
    cmd: &mut Command,
    ip: IpAddr,
    port: u16,
    restart: bool,
    dir: &Path,
) -> Result<(Vec<String>, String)> {
    let trigger = dir.join(format!("go-{port}"));
    let server = full_listener(tb, ip, port, &trigger)?;
    let prog = Lines::spawn(cmd, "connect_signal")?;
    prog.expect("connecting", SHORT)?;
    let pid = prog.pid();
    wait_until(SHORT, "connect_signal blocked in connect()", || {
        blocked_in(pid, &[libc::SYS_connect])
    })?;
    prog.signal(libc::SIGUSR1)?;
    let mut lines = vec![prog.expect("handled", SHORT)?];
    if !restart {
        lines.push(prog.expect("connect=", SHORT)?);
        // The second connect() waits for the attempt still in progress.
        wait_until(SHORT, "connect_signal's second connect()", || {
            blocked_in(pid, &[libc::SYS_connect])
        })?;
    }
    std::fs::write(&trigger, b"")?;
    // SYN retransmissions come 1, 3, 7 and 15 s after the first.
    let long = Duration::from_secs(40);
    if restart {
        lines.push(prog.expect("connect=", long)?);
    } else {
        lines.push(prog.expect("again=", long)?);
        lines.push(prog.expect("third=", SHORT)?);
    }
    lines.push(prog.expect("sent", SHORT)?);
    let data = server.expect("data=", SHORT)?;
    Ok((lines, data))
}

/// A signal to a static program blocked in a blocking connect() through
/// the uml instance acts as on a kernel socket: its handler runs at once;
/// without SA_RESTART connect() fails with EINTR while the connection
/// attempt goes on, so a second connect() waits for it and succeeds and a
/// third says EISCONN; with SA_RESTART the one connect() goes on and
/// succeeds. Each time the listener receives the program's bytes. The
/// kernel's own behaviour is taken from the same program, without
/// dropshim, in gw2.
#[test]
fn reach_uml_signal_to_a_blocked_connect_acts_as_on_a_kernel_socket() -> Result<()> {
    let build = tempfile::tempdir()?;
    let prog = build_static_c(build.path(), "connect_signal")?;
    let prog = prog.to_str().context("program path")?;
    let (tb, dev) = uml_setup("cs")?;
    let config = dev.config().to_str().context("config path")?.to_string();
    let gw2 = IpAddr::V4(tb.addr4("gw2", 1)?);
    let gw2_s = gw2.to_string();
    let dir = tempfile::tempdir()?;
    for mode in ["norestart", "restart"] {
        let restart = mode == "restart";
        let port = unique_port();
        let port_s = port.to_string();
        let mut kernel = plain(&tb, "gw2", prog)?;
        kernel.args([gw2_s.as_str(), &port_s, mode]);
        let (want, data) =
            connect_signal_outcome(&tb, &mut kernel, gw2, port, restart, dir.path())?;
        let expected: &[&str] = if restart {
            &["handled", "connect=0", "sent"]
        } else {
            &[
                "handled",
                "connect=EINTR",
                "again=0",
                "third=EISCONN",
                "sent",
            ]
        };
        ensure!(
            want == expected,
            "{mode}: the kernel's own socket said {want:?}"
        );
        ensure!(
            data == format!("data=hello-from-{port}"),
            "{mode}: the kernel's listener got {data:?}"
        );
        let port = unique_port();
        let port_s = port.to_string();
        let mut uml = dropshim_run(
            &tb,
            "gw1",
            &["--config", &config],
            &[prog, &gw2_s, &port_s, mode],
        )?;
        let (got, data) = connect_signal_outcome(&tb, &mut uml, gw2, port, restart, dir.path())?;
        ensure!(
            got == want,
            "{mode}: on uml {got:?}, a kernel socket {want:?}"
        );
        ensure!(
            data == format!("data=hello-from-{port}"),
            "{mode}: on uml the listener got {data:?}"
        );
    }
    Ok(())
}

/// A static program started by a program linked with libc (a shell
/// script running busybox-static `nc`) gets the device file's policy at
/// connect(), as one started by a static program does: its connection
/// to 127.0.0.1 stays plain TCP (the MPTCP listener in gw1 sees no
/// MP_CAPABLE) while its connection to gw2 is MPTCP with a second
/// subflow. The shell's own calls carry the run's pass and are not
/// trapped. Bytes are checked each time.
#[test]
fn reach_native_static_child_of_a_libc_program_gets_the_policy() -> Result<()> {
    let tb = shaped(400)?;
    let bb = busybox()?;
    let bb = bb.to_str().context("busybox path")?;
    let dir = tempfile::tempdir()?;
    let (file, want) = blob(dir.path(), "blob.bin", 32 << 20)?;
    let file_s = file.to_str().context("file path")?;
    // A loopback server in gw1 (an MPTCP listener on the wildcard) and
    // a server in gw2.
    let lo_port = unique_port();
    let lo_port_s = lo_port.to_string();
    let mut lo_server = dropshim_run(
        &tb,
        "gw1",
        &[],
        &[bb, "nc", "-ll", "-p", &lo_port_s, "-e", bb, "cat", file_s],
    )?;
    let _lo_server = Background::spawn(&mut lo_server, "busybox nc -ll in gw1")?;
    wait_listening(tb.netns("gw1")?, lo_port, SHORT)?;
    let port = unique_port();
    let _server = nc_file_server(&tb, bb, &file, port)?;
    let gw2 = tb.addr4("gw2", 1)?;

    let (lo_out, far_out) = (dir.path().join("lo.bin"), dir.path().join("far.bin"));
    let script = format!(
        "{bb} nc 127.0.0.1 {lo_port} > {} && {bb} nc {gw2} {port} > {}",
        lo_out.display(),
        far_out.display()
    );
    let sh = Path::new("/bin/sh");
    ensure!(
        std::fs::read(sh)?.windows(10).any(|w| w == b"libc.so.6\0"),
        "/bin/sh is not linked with libc: it is not the program this test needs"
    );
    let lo_before = mptcp_counters(tb.netns("gw1")?)?;
    let before = mptcp_counters(tb.netns("gw2")?)?;
    let client = dropshim_run(&tb, "gw1", &[], &["/bin/sh", "-c", &script])?;
    receive_with_input_open(client, Stdio::null())?;
    ensure!(
        sha256_file(&lo_out)? == want,
        "nc over loopback: bytes differ"
    );
    ensure!(sha256_file(&far_out)? == want, "nc to gw2: bytes differ");
    let lo_after = mptcp_counters(tb.netns("gw1")?)?;
    ensure!(
        delta(&lo_before, &lo_after, "MPCapableSYNRX") == 0,
        "the static child's connection to 127.0.0.1 was MPTCP: loopback must stay plain TCP"
    );
    ensure_two_subflows(&tb, &before, 1)
}
