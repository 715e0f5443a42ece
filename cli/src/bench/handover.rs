//! handover: the client downloads a file from `python3 -m http.server`
//! over the local-cache testbed; mid-transfer the client's link 1 (the
//! link TCP and the first MPTCP subflow use) goes down, then comes back.
//! `--links wifi,lte` (or any two profiles or rates) builds the two links
//! from those presets instead of the default rate-only 100,100: the cut
//! then takes the Wi-Fi away while LTE carries on.
//! A small receiver (python3, run on the stack under test like any other
//! program) timestamps every read: the stall is the longest gap between
//! received bytes; it also reports whether the transfer completed and the
//! sha256 of what arrived.

use super::local_cache::{make_file, serve, Served};
use super::stacks::{self, Device, DeviceMptcp, PathManager, Role, Stack};
use super::{Ctx, Plan, Record, Scenario};
use anyhow::{bail, Context, Result};
use dropshim_testbed::{LinkChoice, Options, Spec, Testbed};
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Settings {
    /// Link 1 and link 2 (client = side a): shaped so the transfer lasts
    /// seconds.
    pub links: Vec<LinkChoice>,
    /// The slowest download rate among them (for time budgets).
    pub rate_mbit: u32,
    pub size_mb: u64,
    /// Link 1 goes down this long after the first byte...
    pub cut_after_s: f64,
    /// ...and comes back after this long.
    pub outage_s: f64,
}

impl Settings {
    pub fn new(quick: bool, links: Option<Vec<LinkChoice>>) -> Settings {
        let links = links.unwrap_or_else(|| vec![LinkChoice::Rate(100); 2]);
        let rate_mbit = links
            .iter()
            .map(|l| match l {
                LinkChoice::Rate(r) => *r,
                LinkChoice::Profile(p) => p.params().b_to_a.rate_mbit.unwrap_or(u32::MAX),
            })
            .min()
            .unwrap_or(100)
            .max(1);
        if quick {
            Settings {
                links,
                rate_mbit,
                size_mb: 40,
                cut_after_s: 0.7,
                outage_s: 1.5,
            }
        } else {
            Settings {
                links,
                rate_mbit,
                size_mb: 80,
                cut_after_s: 1.0,
                outage_s: 2.0,
            }
        }
    }

    /// Rough seconds per transfer, for the estimate: plain TCP at the
    /// rate of one link, plus the outage and TCP's back-off after it.
    pub fn expected_seconds(&self) -> f64 {
        let tcp = self.size_mb as f64 * 8.0 / f64::from(self.rate_mbit);
        (tcp + self.outage_s * 2.0) * 0.6 + 1.0
    }

    pub fn label(&self) -> String {
        let links: Vec<String> = self.links.iter().map(|l| l.to_string()).collect();
        if self
            .links
            .iter()
            .all(|l| *l == LinkChoice::Rate(self.rate_mbit))
        {
            format!(
                "{} MB at {} Mbit/s, link 1 down {:.1} s",
                self.size_mb, self.rate_mbit, self.outage_s
            )
        } else {
            format!(
                "{} MB over links {}, link 1 down {:.1} s",
                self.size_mb,
                links.join(","),
                self.outage_s
            )
        }
    }
}

/// Receives the transfer and timestamps every recv; prints FIRST at the
/// first byte, then one JSON line at the end. `get`: connects and reads
/// the HTTP response to a GET of PATH. `sink`: listens (prints LISTENING),
/// accepts one connection and reads LENGTH bytes of body, no header.
const RECEIVER: &str = r#"
import hashlib, json, socket, sys, time
mode, host, port, what, idle = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
if mode == "get":
    s = socket.create_connection((host, port), timeout=idle)
    s.sendall(("GET /%s HTTP/1.0\r\nHost: %s\r\n\r\n" % (what, host)).encode())
    length = None
else:
    listener = socket.create_server((host, port))
    print("LISTENING", flush=True)
    s = listener.accept()[0]
    s.settimeout(idle)
    length = int(what)
h = hashlib.sha256()
head, body = b"", 0
first = last = None
gap, error, buckets = 0.0, None, {}
try:
    while True:
        d = s.recv(1 << 16)
        now = time.monotonic()
        if not d:
            break
        if first is None:
            first = last = now
            print("FIRST", flush=True)
        gap = max(gap, now - last)
        last = now
        if length is None:
            head += d
            i = head.find(b"\r\n\r\n")
            if i < 0:
                continue
            d = head[i + 4:]
            length = -1
            for line in head[:i].decode("latin1").split("\r\n")[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v)
        h.update(d)
        body += len(d)
        buckets[int((now - first) * 10)] = body
except OSError as e:
    error = str(e) or type(e).__name__
    if last is not None:
        # A transfer that never resumed stalled until we gave up.
        gap = max(gap, time.monotonic() - last)
timeline, seen = [], 0
for b in range(max(buckets) + 1 if buckets else 0):
    seen = buckets.get(b, seen)
    timeline.append([round((b + 1) / 10, 1), seen])
print(json.dumps({"bytes": body, "length": length, "sha256": h.hexdigest(),
                  "gap": gap, "error": error, "timeline": timeline}), flush=True)
"#;

/// Sends the file at PATH to HOST:PORT, then waits for the receiver to
/// close: a program on the lkl stack takes its kernel with it when it
/// exits, so it stays until every byte is acknowledged.
const SENDER: &str = r#"
import socket, sys
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((host, port))
with open(path, "rb") as f:
    while True:
        chunk = f.read(1 << 16)
        if not chunk:
            break
        s.sendall(chunk)
s.shutdown(socket.SHUT_WR)
while s.recv(1 << 16):
    pass
"#;

/// Which way the file goes. Download: a server on the stack under test
/// (native for uml and lkl) sends it to the client. Upload: the client,
/// on the device with the scheduler under test, sends it to a native
/// receiver; what the device's scheduler does around the cut is then
/// what the receiver sees.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Download,
    Upload,
}

pub fn run(ctx: &mut Ctx, plan: &Plan) -> Result<()> {
    let set = plan.handover.clone();
    let setting = set.label();
    let dir = ctx.work.join("handover");
    ctx.step("handover: writing the file to serve".into());
    let file = make_file(
        &dir,
        &format!("handover-{}MB", set.size_mb),
        set.size_mb * 1_000_000,
        0x5eed,
    )?;
    let avail = ctx.stacks.clone();
    let mut host = Vec::new();
    for stack in Stack::ALL {
        match (avail.reason(stack), stack) {
            (Some(reason), _) => ctx
                .records
                .push(Record::new(Scenario::Handover, stack, &setting, 0).skipped(reason)),
            (None, Stack::Uml | Stack::Lkl) => {}
            (None, _) => host.push(stack),
        }
    }
    let spec = Spec::builtin("local-cache")?;
    let opts = Options {
        links: set.links.clone(),
        ..Default::default()
    };
    {
        ctx.step("handover: building the testbed".into());
        let tb = Testbed::up(&spec, &opts)?;
        let mut servers = Vec::new();
        for (slot, &stack) in host.iter().enumerate() {
            let port = super::port(5 + slot as u16);
            servers.push((stack, port, serve(ctx, &tb, "cache", stack, &dir, port)?));
        }
        for run in 1..=plan.runs {
            for (stack, port, _server) in &servers {
                let leg = Leg {
                    stack: *stack,
                    device: None,
                    port: *port,
                    direction: Direction::Download,
                };
                let rec = one(ctx, &tb, &leg, &dir, &file, &set, &setting, run);
                ctx.push(rec);
            }
        }
        ctx.note_emulator(&format!("handover {setting} (host stacks)"), &tb);
    }
    for stack in [Stack::Uml, Stack::Lkl] {
        if avail.reason(stack).is_some() {
            continue;
        }
        ctx.step(format!("handover: starting the {} device", stack.name()));
        let tb = Testbed::up(&spec, &opts)?;
        match stacks::device(stack, &tb, "client", &ctx.library, &avail) {
            Err(e) => ctx
                .records
                .push(device_failed(stack, &setting, "default", &e)),
            Ok(dev) => {
                let port = super::port(9);
                let _server = serve(ctx, &tb, "cache", stack, &dir, port)?;
                let leg = Leg {
                    stack,
                    device: Some(&dev),
                    port,
                    direction: Direction::Download,
                };
                for run in 1..=plan.runs {
                    let rec = one(ctx, &tb, &leg, &dir, &file, &set, &setting, run);
                    ctx.push(rec);
                }
                ctx.note_emulator(&format!("handover {setting} ({})", stack.name()), &tb);
            }
        }
    }
    // Per scheduler: the device uploads, so its scheduler decides what
    // the native receiver sees around the cut.
    let up_setting = format!("upload {setting}");
    for stack in [Stack::Uml, Stack::Lkl] {
        if avail.reason(stack).is_some() {
            continue;
        }
        for scheduler in &plan.schedulers {
            let mptcp = DeviceMptcp {
                scheduler,
                path_manager: PathManager::Kernel,
            };
            ctx.step(format!(
                "handover: a {} device with {scheduler}",
                stack.name()
            ));
            let tb = Testbed::up(&spec, &opts)?;
            match stacks::device_with(stack, &tb, "client", &ctx.library, &avail, mptcp) {
                Err(e) => ctx
                    .records
                    .push(device_failed(stack, &up_setting, scheduler, &e)),
                Ok(dev) => {
                    let leg = Leg {
                        stack,
                        device: Some(&dev),
                        port: super::port(9),
                        direction: Direction::Upload,
                    };
                    for run in 1..=plan.runs {
                        let mut rec = one(ctx, &tb, &leg, &dir, &file, &set, &up_setting, run);
                        rec.scheduler = scheduler.clone();
                        ctx.push(rec);
                    }
                    ctx.note_emulator(
                        &format!("handover {up_setting} ({} {scheduler})", stack.name()),
                        &tb,
                    );
                }
            }
        }
    }
    Ok(())
}

fn device_failed(stack: Stack, setting: &str, scheduler: &str, e: &anyhow::Error) -> Record {
    let mut rec = Record::new(Scenario::Handover, stack, setting, 0).skipped(super::one_line(
        &format!("{} device did not start: {e:#}", stack.name()),
    ));
    rec.scheduler = scheduler.to_string();
    rec
}

/// One side of the measurement: the stack under test, its device (uml,
/// lkl), the port the transfer uses and which way the file goes.
struct Leg<'a> {
    stack: Stack,
    device: Option<&'a Device>,
    port: u16,
    direction: Direction,
}

#[allow(clippy::too_many_arguments)]
fn one(
    ctx: &Ctx,
    tb: &Testbed,
    leg: &Leg,
    dir: &Path,
    file: &Served,
    set: &Settings,
    setting: &str,
    run: u32,
) -> Record {
    ctx.step(format!(
        "handover {setting} run {run}: {}",
        leg.stack.label()
    ));
    let mut rec = Record::new(Scenario::Handover, leg.stack, setting, run);
    match transfer(ctx, tb, leg, dir, file, set) {
        Ok(t) => {
            rec.bytes = Some(t.bytes);
            rec.stall_s = Some(t.gap);
            rec.completed = Some(t.completed);
            rec.intact = Some(t.completed && t.sha256 == file.sha256);
            rec.seconds = t.timeline.last().map(|p| p.0);
            rec.subflows = Some(t.subflows);
            if let Some(reason) = t.error {
                rec.reason = Some(super::one_line(&reason));
            }
            rec.timeline = t.timeline;
            rec.outage = Some(t.outage);
        }
        Err(e) => rec = rec.failed(&e),
    }
    rec
}

struct Transfer {
    bytes: u64,
    completed: bool,
    sha256: String,
    gap: f64,
    error: Option<String>,
    timeline: Vec<(f64, u64)>,
    outage: (f64, f64),
    subflows: f64,
}

fn transfer(
    ctx: &Ctx,
    tb: &Testbed,
    leg: &Leg,
    dir: &Path,
    file: &Served,
    set: &Settings,
) -> Result<Transfer> {
    let cache_ns = tb.netns("cache")?.to_string();
    let client_ns = tb.netns("client")?.to_string();
    let client_if = tb.ifname("client", 1)?.to_string();
    let addr = tb.addr4("cache", 1)?.to_string();
    let port = leg.port.to_string();
    // The receiver gives up after this long without a byte: long enough
    // for TCP's back-off after the outage, short of hanging the bench.
    let idle = set.outage_s * 4.0 + 10.0;
    let before = super::mptcp_counters(&cache_ns)?;
    let client = |program_args: &[&str]| -> Result<Command> {
        let mut cmd = stacks::command(
            tb,
            "client",
            leg.stack,
            Role::Client,
            &ctx.library,
            leg.device,
            "python3",
        )?;
        cmd.args(program_args);
        Ok(cmd)
    };
    let mut cmd = match leg.direction {
        Direction::Download => client(&["-c", RECEIVER, "get", &addr, &port, &file.name])?,
        Direction::Upload => {
            let mut cmd = stacks::command(
                tb,
                "cache",
                Stack::Native,
                Role::Server,
                &ctx.library,
                None,
                "python3",
            )?;
            let length = file.bytes.to_string();
            cmd.args(["-c", RECEIVER, "sink", &addr, &port, &length]);
            cmd
        }
    };
    cmd.arg(idle.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.spawn().context("starting the python3 receiver")?;
    let mut child = super::KillOnDrop(child);
    let (tx, rx) = mpsc::channel::<String>();
    if let Some(out) = child.0.stdout.take() {
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    let mut _sender = None;
    if leg.direction == Direction::Upload {
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(l) if l == "LISTENING" => {}
            other => bail!("the receiver did not listen within 15 s ({other:?})"),
        }
        let path = dir.join(&file.name);
        let mut cmd = client(&["-c", SENDER, &addr, &port])?;
        cmd.arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        _sender = Some(super::KillOnDrop(
            cmd.spawn().context("starting the python3 sender")?,
        ));
    }
    match rx.recv_timeout(Duration::from_secs(15)) {
        Ok(l) if l == "FIRST" => {}
        Ok(l) => bail!("receiver said {l:?} before any byte arrived"),
        Err(_) => {
            let _ = child.0.kill();
            let mut err = String::new();
            if let Some(mut e) = child.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            let err = err.trim();
            bail!(
                "no byte arrived within 15 s{}",
                if err.is_empty() {
                    " (the receiver printed nothing)".to_string()
                } else {
                    format!(": {err}")
                }
            );
        }
    }
    let t0 = Instant::now();
    // The schedule of the experiment itself (cut at T, restore at T+D).
    std::thread::sleep(Duration::from_secs_f64(set.cut_after_s));
    link(&client_ns, &client_if, false)?;
    let down = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs_f64(set.outage_s));
    if leg.device.is_some() {
        // The device owns the link; the host end has no routes to restore.
        link(&client_ns, &client_if, true)?;
    } else {
        tb.set_link(1, true)?;
    }
    let up = t0.elapsed().as_secs_f64();
    let budget = Duration::from_secs_f64(
        idle + file.bytes as f64 * 8.0 / 1e6 / f64::from(set.rate_mbit) + 10.0,
    );
    let line = rx
        .recv_timeout(budget)
        .map_err(|_| anyhow::anyhow!("receiver did not finish within {budget:?}"))?;
    let after = super::mptcp_counters(&cache_ns)?;
    let v: serde_json::Value =
        serde_json::from_str(&line).with_context(|| format!("receiver output {line:?}"))?;
    let bytes = v["bytes"].as_u64().unwrap_or(0);
    let length = v["length"].as_i64().unwrap_or(-1);
    let timeline = v["timeline"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p[0].as_f64()?, p[1].as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    Ok(Transfer {
        bytes,
        completed: length >= 0 && bytes == length as u64 && v["error"].is_null(),
        sha256: v["sha256"].as_str().unwrap_or("").to_string(),
        gap: v["gap"].as_f64().unwrap_or(f64::NAN),
        error: v["error"].as_str().map(str::to_string),
        timeline,
        outage: (down, up),
        subflows: super::subflows_between(&before, &after),
    })
}

/// The client's end only: a client losing its Wi-Fi. (Both ends down would
/// also take the cache's link-1 address, the one every subflow talks to.)
fn link(netns: &str, ifname: &str, up: bool) -> Result<()> {
    let mut cmd = std::process::Command::new("ip");
    cmd.args([
        "-n",
        netns,
        "link",
        "set",
        ifname,
        if up { "up" } else { "down" },
    ]);
    let out = dropshim_testbed::run_with_timeout(&mut cmd, Duration::from_secs(10))?;
    if !out.status.success() {
        bail!(
            "cannot set {ifname} {}: {}",
            if up { "up" } else { "down" },
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
