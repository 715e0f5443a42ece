//! drop-home: the study's home (two gateways, a cloud, a phone on Wi-Fi
//! and LTE, a TV on Wi-Fi; `conf/testbeds/drop-home.toml`). Each end
//! device downloads a file from the local cache (`python3 -m http.server`
//! on gw1) and from the cloud, on each stack in turn: completion time,
//! goodput, subflows seen by the server, bytes checked by sha256. Plain
//! TCP over the best single path is the baseline.

use super::local_cache::{make_file, Served};
use super::stacks::{self, Device, DeviceFile, Iface, Role, Stack};
use super::{Ctx, Plan, Record, Scenario};
use anyhow::{bail, Context, Result};
use dropshim_testbed::{Spec, Testbed};
use std::net::Ipv4Addr;
use std::time::Duration;

/// The downloads: (device, server, the server's link whose address is
/// pulled from). The phone's first subflow takes Wi-Fi (its best path),
/// the second LTE; the TV has Wi-Fi only.
const PULLS: [(&str, &str, u32); 4] = [
    ("phone", "gw1", 5),
    ("phone", "cloud", 3),
    ("tv", "gw1", 1),
    ("tv", "cloud", 4),
];

fn setting(device: &str, server: &str) -> String {
    let what = if server == "gw1" { "cache" } else { "cloud" };
    format!("{device} <- {what}")
}

/// The device file of each end device's uml or lkl stack: the
/// interfaces it takes over.
fn device_file(tb: &Testbed, device: &str) -> Result<DeviceFile> {
    Ok(DeviceFile::new(match device {
        "phone" => vec![
            Iface::on(5)
                .roles(&["subflow"])
                .gateway(tb.addr4("gw1", 5)?),
            Iface::on(6).roles(&["subflow"]),
        ],
        _ => vec![Iface::on(7).gateway(tb.addr4("gw2", 7)?)],
    }))
}

pub fn run(ctx: &mut Ctx, plan: &Plan) -> Result<()> {
    let mb = if ctx.args.quick { 2 } else { 20 };
    let www = ctx.work.join("home");
    ctx.step("drop-home: writing the file to serve".into());
    let file = make_file(&www, "blob", mb * 1_000_000, 0xd0_17)?;
    let avail = ctx.stacks.clone();
    let order = [Stack::Tcp, Stack::Native, Stack::Uml, Stack::Lkl];
    for (stack, reason) in &avail.reasons {
        let reason = match (order.contains(stack), reason) {
            (false, _) => Some("not an end-device stack in this scenario".to_string()),
            (true, r) => r.clone(),
        };
        if let Some(reason) = reason {
            for (d, s, _) in PULLS {
                ctx.records.push(
                    Record::new(Scenario::DropHome, *stack, setting(d, s), 0).skipped(&reason),
                );
            }
        }
    }
    let spec = Spec::builtin("drop-home")?;
    ctx.step("drop-home: building the testbed".into());
    // uml and lkl take the end devices' interfaces over (their host
    // addresses go), so each of those stacks gets a testbed of its own.
    let mut tb: Option<Testbed> = None;
    // The stacks that ran on the current testbed (for the emulator's CPU).
    let mut on_tb: Vec<&str> = Vec::new();
    for stack in order {
        if avail.reason(stack).is_some() {
            continue;
        }
        if tb.is_none() || matches!(stack, Stack::Uml | Stack::Lkl) {
            // The previous one goes first: its uml instances with it.
            if let Some(old) = tb.take() {
                ctx.note_emulator(&format!("drop-home ({})", on_tb.join(", ")), &old);
            }
            on_tb.clear();
            tb = Some(Testbed::up(&spec, &super::topology_options(ctx, &spec))?);
        }
        on_tb.push(stack.name());
        let Some(tb) = tb.as_ref() else {
            bail!("internal: no testbed");
        };
        let port = super::port(5);
        let mut servers = Vec::new();
        for node in ["gw1", "cloud"] {
            let mut cmd = stacks::command(
                tb,
                node,
                Stack::Native,
                Role::Server,
                &ctx.library,
                None,
                "python3",
            )?;
            cmd.args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "0.0.0.0",
                "--directory",
            ])
            .arg(&www);
            let mut server = super::spawn_server(cmd)?;
            super::wait_listening(tb.netns(node)?, port, &mut server)
                .with_context(|| format!("python3 -m http.server in {node}"))?;
            servers.push(server);
        }
        let mut devices = Vec::new();
        for device in ["phone", "tv"] {
            let handle = match stack {
                Stack::Uml | Stack::Lkl => Some(stacks::device_on(
                    stack,
                    tb,
                    device,
                    &ctx.library,
                    &avail,
                    &device_file(tb, device)?,
                )?),
                _ => None,
            };
            devices.push((device, handle));
        }
        for run in 1..=plan.runs {
            for (device, server, link) in PULLS {
                let handle = devices
                    .iter()
                    .find(|(d, _)| *d == device)
                    .and_then(|(_, h)| h.as_ref());
                let addr = tb.addr4(server, link)?;
                ctx.step(format!(
                    "drop-home run {run}: {} {}",
                    setting(device, server),
                    stack.label()
                ));
                let mut rec = Record::new(Scenario::DropHome, stack, setting(device, server), run);
                match pull(ctx, tb, stack, handle, device, server, addr, port, &file) {
                    Ok(r) => rec = r.into_record(rec, file.bytes),
                    Err(e) => rec = rec.failed(&e),
                }
                ctx.push(rec);
            }
        }
    }
    if let Some(last) = tb.take() {
        ctx.note_emulator(&format!("drop-home ({})", on_tb.join(", ")), &last);
    }
    Ok(())
}

struct Pulled {
    seconds: f64,
    bytes: u64,
    subflows: f64,
    intact: bool,
}

impl Pulled {
    fn into_record(self, mut rec: Record, want: u64) -> Record {
        rec.seconds = Some(self.seconds);
        rec.bytes = Some(self.bytes);
        rec.mbit_per_s = Some(self.bytes as f64 * 8.0 / self.seconds.max(1e-9) / 1e6);
        rec.subflows = Some(self.subflows);
        rec.intact = Some(self.intact);
        rec.completed = Some(self.bytes == want);
        rec
    }
}

#[allow(clippy::too_many_arguments)]
fn pull(
    ctx: &Ctx,
    tb: &Testbed,
    stack: Stack,
    device: Option<&Device>,
    node: &str,
    server: &str,
    addr: Ipv4Addr,
    port: u16,
    file: &Served,
) -> Result<Pulled> {
    let ns = tb.netns(server)?.to_string();
    let out_file = ctx.work.join(format!("home-{node}-{}", stack.name()));
    let _ = std::fs::remove_file(&out_file);
    // Generous: 2 Mbit/s at least, plus start-up.
    let budget = 20 + file.bytes * 8 / 2_000_000;
    let before = super::mptcp_counters(&ns)?;
    let mut curl = stacks::command(tb, node, stack, Role::Client, &ctx.library, device, "curl")?;
    curl.args(["-sS", "--fail", "--max-time", &budget.to_string(), "-o"])
        .arg(&out_file)
        .args(["-w", "%{time_total} %{size_download}"])
        .arg(format!("http://{addr}:{port}/{}", file.name));
    let out = dropshim_testbed::run_with_timeout(&mut curl, Duration::from_secs(budget + 10))?;
    if !out.status.success() {
        bail!(
            "curl failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let after = super::mptcp_counters(&ns)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace();
    let (Some(t), Some(n)) = (it.next(), it.next()) else {
        bail!("unexpected curl -w output {text:?}");
    };
    let seconds: f64 = t.parse().with_context(|| format!("curl time {t:?}"))?;
    let bytes: f64 = n.parse().with_context(|| format!("curl size {n:?}"))?;
    let intact = super::sha256_file(&out_file)? == file.sha256;
    let _ = std::fs::remove_file(&out_file);
    Ok(Pulled {
        seconds,
        bytes: bytes as u64,
        subflows: super::subflows_between(&before, &after),
        intact,
    })
}
