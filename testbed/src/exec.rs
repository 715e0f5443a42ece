//! Running programs with a bounded wait, and the `ip`/`tc` calls the
//! testbed is built from.

use crate::{sys, Error};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long an `ip`/`tc` call may take before we call it stuck.
const TOOL_TIMEOUT: Duration = Duration::from_secs(20);

/// Run `cmd` to completion like [`Command::output`] (stdin null, stdout and
/// stderr captured), but give up after `timeout`: the child and everything
/// it started (it leads its own process group) are killed and
/// [`Error::Timeout`] carries what it had printed. The wait blocks on a
/// pidfd with the deadline; nothing polls with sleeps.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output, Error> {
    let deadline = Instant::now() + timeout;
    let shown = show(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Own process group, so a timeout also kills what the child forked.
    cmd.process_group(0);
    let mut child = cmd.spawn().map_err(|e| spawn_error(&shown, cmd, e))?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel::<(bool, Vec<u8>)>();
    if let Some(mut out) = child.stdout.take() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = out.read_to_end(&mut buf);
            let _ = tx.send((true, buf));
        });
    }
    if let Some(mut err) = child.stderr.take() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = err.read_to_end(&mut buf);
            let _ = tx.send((false, buf));
        });
    }
    drop(tx);

    let pidfd = sys::pidfd_open(pid).map_err(|e| Error::Io {
        what: format!("waiting for {shown}"),
        err: e,
    })?;
    let exited = sys::wait_readable(&pidfd, deadline).map_err(|e| Error::Io {
        what: format!("waiting for {shown}"),
        err: e,
    })?;
    if !exited {
        sys::kill_group(pid);
        let _ = child.kill();
        let _ = child.wait();
        // The pipes close once the group is dead; allow a moment for the
        // readers to hand over what was printed.
        let (_, stderr) = collect(&rx, Instant::now() + Duration::from_millis(500));
        return Err(Error::Timeout {
            command: shown,
            timeout: sys::secs(timeout),
            stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
        });
    }
    let status = child.wait().map_err(|e| Error::Io {
        what: format!("waiting for {shown}"),
        err: e,
    })?;
    // Something the child left running may still hold the pipes open: give
    // the readers until the deadline, but at least 200 ms and at most 2 s.
    let now = Instant::now();
    let grace = deadline
        .saturating_duration_since(now)
        .clamp(Duration::from_millis(200), Duration::from_secs(2));
    let (stdout, stderr) = collect(&rx, now + grace);
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

fn collect(rx: &mpsc::Receiver<(bool, Vec<u8>)>, until: Instant) -> (Vec<u8>, Vec<u8>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok((true, b)) => out = b,
            Ok((false, b)) => err = b,
            Err(_) => break,
        }
    }
    (out, err)
}

fn spawn_error(shown: &str, cmd: &Command, e: std::io::Error) -> Error {
    let program = cmd.get_program().to_string_lossy().to_string();
    if e.kind() == std::io::ErrorKind::NotFound {
        let package = match program.as_str() {
            "ip" | "tc" => "iproute2",
            "iperf3" => "iperf3",
            "ping" => "iputils-ping",
            "mptcpize" => "mptcpize",
            _ => "the package that provides it",
        };
        return Error::MissingTool {
            program,
            package: package.to_string(),
        };
    }
    Error::Io {
        what: format!("starting {shown}"),
        err: e,
    }
}

/// The command line as a user would type it, for messages.
pub(crate) fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().to_string();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Run a configuration tool (`ip`, `tc`) and turn a failure into an error
/// that shows the command and what it printed.
pub(crate) fn tool(program: &str, args: &[&str]) -> Result<(), Error> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let out = run_with_timeout(&mut cmd, TOOL_TIMEOUT)?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::Failed {
        command: show(&cmd),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}
