//! drop-mesh: N devices on a shared Wi-Fi segment and a shared Ethernet
//! segment (`conf/testbeds/drop-mesh.toml`), stacks assigned round-robin
//! over the runnable ones of native, uml and lkl. Every device serves a
//! file and pulls every other device's (all-to-all), each byte checked by
//! sha256 inside the agent (`dropshim_testbed::MESH_AGENT_PY`). Reported:
//! the time until every transfer finished and the aggregate goodput, for
//! 4, 8, 16 and 32 devices (how it scales).

use super::stacks::{self, DeviceFile, Iface, Role, Stack};
use super::{Ctx, Plan, Record, Scenario};
use anyhow::{bail, Context, Result};
use dropshim_testbed::{Spec, Testbed};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn setting(n: u32) -> String {
    format!("{n} devices")
}

pub fn run(ctx: &mut Ctx, plan: &Plan) -> Result<()> {
    let avail = ctx.stacks.clone();
    let order: Vec<Stack> = [Stack::Native, Stack::Uml, Stack::Lkl]
        .into_iter()
        .filter(|s| avail.reason(*s).is_none())
        .collect();
    if order.is_empty() {
        for n in &plan.mesh_devices {
            ctx.records.push(
                Record::new(Scenario::DropMesh, Stack::Mixed, setting(*n), 0)
                    .skipped("none of native, uml and lkl can run here"),
            );
        }
        return Ok(());
    }
    let size: u64 = if ctx.args.quick { 256 * 1024 } else { 1 << 20 };
    for &n in &plan.mesh_devices {
        for run in 1..=plan.runs {
            ctx.step(format!("drop-mesh {n} devices run {run}: building"));
            let mut rec = Record::new(Scenario::DropMesh, Stack::Mixed, setting(n), run);
            match mesh(ctx, &order, n, size) {
                Ok(m) => {
                    let label = format!("drop-mesh {n} devices run {run}");
                    for c in &m.emulator {
                        ctx.emulator.push((label.clone(), *c));
                    }
                    let total = u64::from(n * (n - 1)) * size;
                    rec.seconds = Some(m.seconds);
                    rec.bytes = Some(m.intact_pulls * size);
                    rec.mbit_per_s = Some(total as f64 * 8.0 / m.seconds.max(1e-9) / 1e6);
                    rec.subflows = Some(m.subflows);
                    rec.intact = Some(m.intact_pulls == u64::from(n * (n - 1)));
                    rec.completed = rec.intact;
                    ctx.progress.println(format!(
                        "  drop-mesh {n} devices ({}): {:.2} s, {:.0} Mbit/s aggregate, {} of {} transfers intact",
                        m.mix,
                        m.seconds,
                        rec.mbit_per_s.unwrap_or(0.0),
                        m.intact_pulls,
                        n * (n - 1)
                    ));
                }
                Err(e) => rec = rec.failed(&e),
            }
            ctx.push(rec);
        }
    }
    Ok(())
}

struct Mesh {
    /// The link emulator's CPU use over the run, per instance.
    emulator: Vec<dropshim_testbed::EmulatorCpu>,
    seconds: f64,
    intact_pulls: u64,
    subflows: f64,
    mix: String,
}

fn mesh(ctx: &Ctx, order: &[Stack], n: u32, size: u64) -> Result<Mesh> {
    let spec = Spec::drop_mesh(n)?;
    let tb = Testbed::up(&spec, &super::topology_options(ctx, &spec))?;
    let file = DeviceFile::new(vec![Iface::on(1), Iface::on(2).roles(&["signal"])]);
    let mut devices = Vec::new();
    for i in 1..=n {
        let node = format!("dev{i}");
        let stack = order[(i as usize - 1) % order.len()];
        let handle = match stack {
            Stack::Uml | Stack::Lkl => Some(stacks::device_on(
                stack,
                &tb,
                &node,
                &ctx.library,
                &ctx.stacks,
                &file,
            )?),
            _ => None,
        };
        devices.push((node, stack, handle));
    }
    let mix = order
        .iter()
        .map(|s| {
            let k = devices.iter().filter(|(_, st, _)| st == s).count();
            format!("{} {k}", s.name())
        })
        .collect::<Vec<_>>()
        .join(", ");
    let natives: Vec<String> = devices
        .iter()
        .filter(|(_, s, _)| *s == Stack::Native)
        .map(|(node, _, _)| tb.netns(node).map(str::to_string))
        .collect::<Result<_, _>>()?;
    let before: Vec<_> = natives
        .iter()
        .map(|ns| super::mptcp_counters(ns))
        .collect::<Result<_>>()?;
    let port = super::port(6);
    let prefix = {
        let a = tb.addr4("dev1", 1)?.octets();
        format!("{}.{}.{}.", a[0], a[1], a[2])
    };
    let limit = 60 + 5 * u64::from(n);
    ctx.step(format!("drop-mesh {n} devices: all-to-all ({mix})"));
    let t0 = Instant::now();
    let mut agents = Vec::new();
    for (i, (node, stack, handle)) in devices.iter().enumerate() {
        let mut cmd = stacks::command(
            &tb,
            node,
            *stack,
            Role::Client,
            &ctx.library,
            handle.as_ref(),
            "python3",
        )?;
        cmd.args(["-c", dropshim_testbed::MESH_AGENT_PY])
            .arg((i + 1).to_string())
            .arg(n.to_string())
            .arg(port.to_string())
            .arg(size.to_string())
            .arg(&prefix)
            .arg(limit.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting the mesh agent of {node}"))?;
        agents.push((node.clone(), super::KillOnDrop(child)));
    }
    let mut intact = 0u64;
    let mut failures = Vec::new();
    for (node, mut agent) in agents {
        let out = wait_output(&mut agent, Duration::from_secs(limit + 20))
            .with_context(|| format!("mesh agent of {node}"))?;
        intact += out
            .lines()
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() == 5 && f[0] == "pull" && f[2] == "ok" && f[3] == size.to_string()
            })
            .count() as u64;
        if !out.lines().any(|l| l == format!("served {}", n - 1)) {
            failures.push(node);
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let mut capable = 0;
    let mut joins = 0;
    for (ns, b) in natives.iter().zip(&before) {
        let a = super::mptcp_counters(ns)?;
        let d = |k: &str| {
            a.get(k)
                .copied()
                .unwrap_or(0)
                .saturating_sub(b.get(k).copied().unwrap_or(0))
        };
        capable += d("MPCapableSYNRX");
        joins += d("MPJoinSynRx");
    }
    if !failures.is_empty() {
        bail!(
            "devices {} were not pulled from by every peer",
            failures.join(", ")
        );
    }
    Ok(Mesh {
        emulator: tb.emulator_cpu(),
        seconds,
        intact_pulls: intact,
        // Seen at the native devices' servers: 1 + joins per connection.
        subflows: if capable == 0 {
            0.0
        } else {
            1.0 + joins as f64 / capable as f64
        },
        mix,
    })
}

/// Waits for `agent` (bounded) and returns its standard output.
fn wait_output(agent: &mut super::KillOnDrop, timeout: Duration) -> Result<String> {
    use std::io::Read;
    let mut stdout = agent.0.stdout.take().context("agent output")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    loop {
        if agent.0.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = agent.0.kill();
            bail!("did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("reading the agent's output"))
}
