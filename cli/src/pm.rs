//! The path manager daemon of the native backend: `dropshim pm` runs
//! dropshim's userspace path manager (crate dropshim-pm) in the
//! foreground; `dropshim up` starts it detached, `dropshim down` stops it,
//! `dropshim status` reports it.
//!
//! Owns the daemon's life and its record in `/run/dropshim/pm/`: one JSON
//! file per device and network namespace with the pid, the policy, when
//! it started, a heartbeat written every second and, after a clean stop,
//! when it stopped. A daemon that was killed leaves its last heartbeat,
//! which is when `status` says it went down. Its stderr goes to a log
//! file next to it.

use anyhow::{anyhow, bail, Context};
use dropshim_conf::DeviceConfig;
use dropshim_pm::{host, locals_from, Settings};
use serde::{Deserialize, Serialize};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where the daemons keep their records.
pub const PM_DIR: &str = "/run/dropshim/pm";
/// How long `up` waits for a new daemon to report, and `down` for one to
/// stop, before giving up (up) or killing it (down).
const WAIT: Duration = Duration::from_secs(5);
const HEARTBEAT: Duration = Duration::from_secs(1);

#[derive(clap::Args)]
pub struct Args {
    /// The device file (with `path_manager = "userspace"` and a
    /// `[mptcp.userspace]` policy).
    #[arg(long, short)]
    pub config: PathBuf,
}

/// A daemon's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub device: String,
    pub pid: u32,
    pub policy: String,
    /// Unix seconds.
    pub started: u64,
    /// Unix seconds, rewritten every second while it runs.
    pub heartbeat: u64,
    /// Unix seconds, set when it stopped cleanly.
    pub stopped: Option<u64>,
}

/// What `status` says about a device's daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Daemon {
    /// No record: never started here (or removed by `down`).
    NotStarted,
    /// Running since `started`.
    Running {
        pid: u32,
        started: u64,
        policy: String,
    },
    /// Gone since `since` (its clean stop, else its last heartbeat).
    Down { since: u64, policy: String },
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The record and log of `device`'s daemon in network namespace `netns`.
pub fn paths(device: &str, netns: u64) -> (PathBuf, PathBuf) {
    let base = Path::new(PM_DIR).join(format!("{}-netns{netns}", safe(device)));
    (base.with_extension("json"), base.with_extension("log"))
}

fn read(path: &Path) -> Option<Record> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

fn write(path: &Path, r: &Record) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create {} (this needs root)", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(r)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Whether `pid` is a live (not zombie) dropshim process.
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name.
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next());
    if matches!(state, Some("Z") | Some("X") | None) {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("dropshim"))
        .unwrap_or(false)
}

/// The state of the daemon recorded at `record`.
pub fn state(record: &Path) -> Daemon {
    match read(record) {
        None => Daemon::NotStarted,
        Some(r) if r.stopped.is_none() && alive(r.pid) => Daemon::Running {
            pid: r.pid,
            started: r.started,
            policy: r.policy,
        },
        Some(r) => Daemon::Down {
            since: r.stopped.unwrap_or(r.heartbeat),
            policy: r.policy,
        },
    }
}

/// UTC date and time of unix seconds `t`, like `2026-12-06 07:30:00 UTC`.
pub fn utc(t: u64) -> String {
    let days = (t / 86_400) as i64;
    let secs = t % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's method).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// One line for `dropshim status`.
pub fn describe(d: &Daemon) -> String {
    let ago = |t: u64| now_secs().saturating_sub(t);
    match d {
        Daemon::NotStarted => "path manager daemon: not started".into(),
        Daemon::Running {
            pid,
            started,
            policy,
        } => format!(
            "path manager daemon: running since {} ({} s), pid {pid}, policy {policy}",
            utc(*started),
            ago(*started)
        ),
        Daemon::Down { since, policy } => format!(
            "path manager daemon: DOWN since {} ({} s ago), policy {policy}; existing connections keep their subflows; `dropshim up` starts it again",
            utc(*since),
            ago(*since)
        ),
    }
}

/// JSON for `dropshim status --json`.
pub fn json(d: &Daemon) -> serde_json::Value {
    match d {
        Daemon::NotStarted => serde_json::json!({"state": "not started"}),
        Daemon::Running {
            pid,
            started,
            policy,
        } => {
            serde_json::json!({"state": "running", "pid": pid, "since": started, "policy": policy})
        }
        Daemon::Down { since, policy } => {
            serde_json::json!({"state": "down", "since": since, "policy": policy})
        }
    }
}

/// Starts the daemon for `cfg` (read from `config`) detached, unless one
/// runs; returns what happened.
pub fn start(config: &Path, cfg: &DeviceConfig, netns: u64) -> anyhow::Result<String> {
    let (record, log) = paths(&cfg.device.name, netns);
    if let Daemon::Running { pid, .. } = state(&record) {
        return Ok(format!("path manager daemon already running (pid {pid})"));
    }
    if let Some(dir) = record.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create {} (this needs root)", dir.display()))?;
    }
    let config = std::fs::canonicalize(config)
        .with_context(|| format!("cannot find {}", config.display()))?;
    let exe = std::env::current_exe().context("cannot find the dropshim executable")?;
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("pm")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
    // SAFETY: between fork and exec the closure only calls setsid(2),
    // which is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .context("cannot start the path manager daemon")?;
    let pid = child.id();
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(r) = read(&record) {
            if r.pid == pid && r.stopped.is_none() {
                return Ok(format!(
                    "path manager daemon started (pid {pid}, policy {}, log {})",
                    r.policy,
                    log.display()
                ));
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            bail!(
                "the path manager daemon exited at once ({status}):\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the path manager daemon (pid {pid}) did not report within {} s; see {}",
                WAIT.as_secs(),
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops `device`'s daemon (SIGTERM, then SIGKILL after a while) and
/// removes its record; returns what happened.
pub fn stop(device: &str, netns: u64) -> anyhow::Result<String> {
    let (record, log) = paths(device, netns);
    let msg = match state(&record) {
        Daemon::NotStarted => return Ok("no path manager daemon".into()),
        Daemon::Down { since, .. } => {
            format!(
                "path manager daemon was already down (since {})",
                utc(since)
            )
        }
        Daemon::Running { pid, .. } => {
            let pid_t = i32::try_from(pid).map_err(|_| anyhow!("bad pid {pid}"))?;
            // SAFETY: kill(2) with a pid read from our record and checked
            // to be a live dropshim process; no memory is involved.
            unsafe { libc::kill(pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + WAIT;
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if alive(pid) {
                // SAFETY: as above.
                unsafe { libc::kill(pid_t, libc::SIGKILL) };
                format!("path manager daemon (pid {pid}) did not stop in time: killed")
            } else {
                format!("path manager daemon (pid {pid}) stopped")
            }
        }
    };
    for p in [&record, &log] {
        match std::fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", p.display())),
        }
    }
    Ok(msg)
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// `dropshim pm`: the daemon itself, in the foreground.
pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    let cfg = dropshim_conf::load(&args.config).map_err(|e| anyhow!("{e}"))?;
    let settings = Settings::from_config(&cfg).ok_or_else(|| {
        anyhow!(
            "{}: no [mptcp.userspace] table: add path_manager = \"userspace\" to [mptcp] and a \
             [mptcp.userspace] table with policy = \"fullmesh\", \"ndiffports\", \"backup\" or \"costaware\"",
            args.config.display()
        )
    })?;
    let mut rtnl = dropshim_netlink::host_rtnl()?;
    let (locals, missing) = locals_from(&cfg, |name| rtnl.link_index(name).ok());
    for m in &missing {
        eprintln!("dropshim pm: interface {m} of the device file does not exist here; skipped");
    }
    if locals.is_empty() {
        bail!(
            "{}: no interface of the device file has an address here: list the interfaces and their addresses in [[interfaces]]",
            args.config.display()
        );
    }
    let netns = std::fs::metadata("/proc/self/ns/net")
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .context("cannot identify the network namespace")?;
    let (record_path, _) = paths(&cfg.device.name, netns);
    let started = now_secs();
    let mut record = Record {
        device: cfg.device.name.clone(),
        pid: std::process::id(),
        policy: settings.policy.as_str().to_string(),
        started,
        heartbeat: started,
        stopped: None,
    };
    // SAFETY: the handler only stores into an atomic, which is
    // async-signal-safe; the function pointer lives for the program.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    eprintln!(
        "dropshim pm: device {}, policy {}, {} local address(es)",
        cfg.device.name,
        record.policy,
        locals.len()
    );
    write(&record_path, &record)?;
    let mut last = Instant::now();
    let result = host::run(settings, locals, &STOP, |_| {
        if last.elapsed() >= HEARTBEAT {
            last = Instant::now();
            record.heartbeat = now_secs();
            if let Err(e) = write(&record_path, &record) {
                eprintln!("dropshim pm: {e:#}");
            }
        }
    });
    // Stopped cleanly (signal) or by an error: either way it is down now.
    let mut last_record = read(&record_path).unwrap_or(Record {
        device: cfg.device.name.clone(),
        pid: std::process::id(),
        policy: settings.policy.as_str().to_string(),
        started,
        heartbeat: now_secs(),
        stopped: None,
    });
    last_record.stopped = Some(now_secs());
    write(&record_path, &last_record)?;
    result.context("the path manager stopped")?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_796_543_400), "2026-12-06 07:50:00 UTC");
    }
}
