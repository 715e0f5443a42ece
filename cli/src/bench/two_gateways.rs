//! two-gateways: iperf3 from gw1 to gw2 over two links shaped at --rate
//! (or built from `--links PROFILE,PROFILE`, e.g. `ethernet,wifi`),
//! TCP on link 1 vs MPTCP over both, for every stack, path manager and
//! scheduler. The iperf3 measurement here is shared with `overhead`.

use super::stacks::{self, Availability, Device, DeviceFile, Iface, Role, Stack};
use super::{Ctx, Plan, Record, Scenario};
use anyhow::{bail, Context, Result};
use dropshim_stacks::{unique_name, HostDevice};
use dropshim_testbed::{LinkChoice, Options, Spec, Testbed};
use std::process::Command;
use std::time::Duration;

/// One stack configuration to measure.
#[derive(Clone, Debug)]
pub struct Variant {
    pub stack: Stack,
    pub path_manager: String,
    pub scheduler: String,
}

impl Variant {
    fn new(stack: Stack, pm: &str, sched: &str) -> Variant {
        Variant {
            stack,
            path_manager: pm.to_string(),
            scheduler: sched.to_string(),
        }
    }

    fn record(&self, scenario: Scenario, setting: &str, run: u32) -> Record {
        let mut r = Record::new(scenario, self.stack, setting, run);
        if self.stack != Stack::Tcp {
            r.path_manager = self.path_manager.clone();
            r.scheduler = self.scheduler.clone();
        }
        r
    }
}

pub fn run(ctx: &mut Ctx, plan: &Plan) -> Result<()> {
    let rate = ctx.args.rate;
    let links = ctx
        .args
        .links
        .clone()
        .unwrap_or_else(|| vec![LinkChoice::Rate(rate); 2]);
    let setting = if links.iter().all(|l| *l == LinkChoice::Rate(rate)) && links.len() == 2 {
        format!("2 x {rate} Mbit/s")
    } else {
        let names: Vec<String> = links.iter().map(|l| l.to_string()).collect();
        format!("links {}", names.join(","))
    };
    let opts = Options {
        links,
        ..Default::default()
    };
    let avail = ctx.stacks.clone();
    let mut variants = vec![Variant::new(Stack::Tcp, "", "")];
    for sched in &avail.schedulers {
        for stack in [Stack::Native, Stack::Mptcpize] {
            variants.push(Variant::new(stack, "kernel", sched));
        }
    }
    // The userspace path manager runs with dropshim's own daemon (policy
    // fullmesh: a subflow per gw1 link, as the kernel's endpoints give);
    // other path managers are listed, with why they are not run.
    for pm in avail.path_managers.iter().filter(|p| *p != "kernel") {
        for stack in [Stack::Native, Stack::Mptcpize] {
            let v = Variant::new(stack, pm, &avail.schedulers[0]);
            if pm == "userspace" {
                variants.push(v);
                continue;
            }
            ctx.records.push(
                v.record(Scenario::TwoGateways, &setting, 0)
                    .skipped(Availability::path_manager_reason(pm)),
            );
        }
    }
    iperf_matrix(ctx, plan, Scenario::TwoGateways, opts, &setting, variants)
}

/// Runs every variant `plan.runs` times, interleaved, on a fresh
/// two-gateways testbed; then the uml and lkl stacks, each on a testbed
/// of its own (their device takes gw1's links over). Unavailable stacks are recorded
/// as skipped.
pub fn iperf_matrix(
    ctx: &mut Ctx,
    plan: &Plan,
    scenario: Scenario,
    opts: Options,
    setting: &str,
    variants: Vec<Variant>,
) -> Result<()> {
    let avail = ctx.stacks.clone();
    let mut host = Vec::new();
    for v in variants {
        match avail.reason(v.stack) {
            Some(reason) => ctx
                .records
                .push(v.record(scenario, setting, 0).skipped(reason)),
            None => host.push(v),
        }
    }
    for stack in [Stack::Uml, Stack::Lkl] {
        if let Some(reason) = avail.reason(stack) {
            let v = Variant::new(stack, "kernel", &avail.schedulers[0]);
            ctx.records
                .push(v.record(scenario, setting, 0).skipped(reason));
        }
    }
    let spec = Spec::builtin("two-gateways")?;
    {
        ctx.step(format!("{}: building the testbed", scenario.name()));
        let tb = Testbed::up(&spec, &opts)?;
        let several_schedulers = avail.schedulers.len() > 1;
        for run in 1..=plan.runs {
            for v in &host {
                ctx.step(format!(
                    "{} {setting} run {run}: {}",
                    scenario.name(),
                    v.stack.label()
                ));
                let mut rec = v.record(scenario, setting, run);
                let result = (|| {
                    if several_schedulers && v.stack != Stack::Tcp {
                        set_scheduler(&tb, &v.scheduler)?;
                    }
                    let _pm = if v.path_manager == "userspace" {
                        Some(userspace_pm(&tb)?)
                    } else {
                        None
                    };
                    iperf(ctx, &tb, v.stack, None, plan.duration)
                })();
                match result {
                    Ok(m) => m.fill(&mut rec),
                    Err(e) => rec = rec.failed(&e),
                }
                ctx.push(rec);
            }
        }
        ctx.note_emulator(&format!("{} {setting} (host stacks)", scenario.name()), &tb);
    }
    for stack in [Stack::Uml, Stack::Lkl] {
        if avail.reason(stack).is_some() {
            continue;
        }
        let v = Variant::new(stack, "kernel", &avail.schedulers[0]);
        ctx.step(format!(
            "{}: handing gw1's links to the {} device",
            scenario.name(),
            stack.name()
        ));
        let tb = Testbed::up(&spec, &opts)?;
        let handle = stacks::device(stack, &tb, "gw1", &ctx.library, &avail);
        let device = handle.as_ref();
        match device {
            Err(e) => {
                ctx.records.push(
                    v.record(scenario, setting, 0)
                        .skipped(super::one_line(&format!(
                            "{} device did not start: {e:#}",
                            stack.name()
                        ))),
                )
            }
            Ok(dev) => {
                for run in 1..=plan.runs {
                    ctx.step(format!(
                        "{} {setting} run {run}: {}",
                        scenario.name(),
                        stack.label()
                    ));
                    let mut rec = v.record(scenario, setting, run);
                    match iperf(ctx, &tb, stack, Some(dev), plan.duration) {
                        Ok(m) => m.fill(&mut rec),
                        Err(e) => rec = rec.failed(&e),
                    }
                    ctx.push(rec);
                }
            }
        }
        ctx.note_emulator(
            &format!("{} {setting} ({})", scenario.name(), stack.name()),
            &tb,
        );
    }
    Ok(())
}

/// dropshim's userspace path manager in gw1 (policy fullmesh over gw1's
/// two links), from `dropshim up` to `dropshim down` when dropped.
fn userspace_pm(tb: &Testbed) -> Result<HostDevice> {
    let mut file = DeviceFile::new(vec![Iface::on(1), Iface::on(2)]);
    file.subflows = None;
    file.userspace = Some("policy = \"fullmesh\"".to_string());
    let exe = std::env::current_exe().context("locating the dropshim executable")?;
    HostDevice::up(tb, "gw1", &file, &unique_name("benchpm"), &exe)
        .context("the userspace path manager")
}

fn set_scheduler(tb: &Testbed, sched: &str) -> Result<()> {
    for node in ["gw1", "gw2"] {
        let out = tb
            .command(node, "sysctl")?
            .args(["-qw", &format!("net.mptcp.scheduler={sched}")])
            .output()?;
        if !out.status.success() {
            bail!(
                "cannot select scheduler {sched}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

/// What one iperf3 run measured.
pub struct Measured {
    pub mbit_per_s: f64,
    pub bytes: u64,
    pub seconds: f64,
    pub cpu_s_per_gb: f64,
    pub subflows: f64,
}

impl Measured {
    fn fill(&self, r: &mut Record) {
        r.mbit_per_s = Some(self.mbit_per_s);
        r.bytes = Some(self.bytes);
        r.seconds = Some(self.seconds);
        r.cpu_s_per_gb = Some(self.cpu_s_per_gb);
        r.subflows = Some(self.subflows);
    }
}

/// iperf3 from gw1 to gw2's link-1 address for `duration` seconds. CPU is
/// both iperf3 processes' (as iperf3 reports it, which on lkl holds the
/// library kernel's threads) plus, on uml, the UML kernel's processes.
pub fn iperf(
    ctx: &Ctx,
    tb: &Testbed,
    stack: Stack,
    uml: Option<&Device>,
    duration: u32,
) -> Result<Measured> {
    let server_ns = tb.netns("gw2")?.to_string();
    let addr = tb.addr4("gw2", 1)?.to_string();
    let port = super::port(0);
    let before = super::mptcp_counters(&server_ns)?;
    let mut server = stacks::command(tb, "gw2", stack, Role::Server, &ctx.library, uml, "iperf3")?;
    server.args(["-s", "-1", "-B", &addr, "-p", &port.to_string()]);
    let mut server = super::spawn_server(server)?;
    super::wait_listening(&server_ns, port, &mut server)?;
    let mut client: Command =
        stacks::command(tb, "gw1", stack, Role::Client, &ctx.library, uml, "iperf3")?;
    client.args([
        "-c",
        &addr,
        "-p",
        &port.to_string(),
        "-t",
        &duration.to_string(),
        "-J",
    ]);
    let uml_cpu_before = uml.map_or(0.0, Device::cpu_seconds);
    let out = dropshim_testbed::run_with_timeout(
        &mut client,
        Duration::from_secs(u64::from(duration) + 30),
    )?;
    let uml_cpu = uml.map_or(0.0, Device::cpu_seconds) - uml_cpu_before;
    if !out.status.success() {
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let why = report["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
        bail!("iperf3 client failed: {why}");
    }
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing iperf3 -J output")?;
    let after = super::mptcp_counters(&server_ns)?;
    parse_iperf(&report, uml_cpu, super::subflows_between(&before, &after))
}

/// Throughput, bytes and CPU per GB out of an iperf3 `-J` report.
pub fn parse_iperf(
    report: &serde_json::Value,
    extra_cpu_s: f64,
    subflows: f64,
) -> Result<Measured> {
    let received = &report["end"]["sum_received"];
    let Some(bits) = received["bits_per_second"].as_f64() else {
        // What iperf3 did say goes with the failure.
        let said = match report["error"].as_str() {
            Some(e) => format!("its error: {e}"),
            None => format!(
                "its summary: {}",
                serde_json::to_string(&report["end"]).unwrap_or_default()
            ),
        };
        bail!("iperf3 reported no throughput; {said:.600}");
    };
    let bytes = received["bytes"].as_u64().unwrap_or(0);
    let secs = received["seconds"].as_f64().unwrap_or(0.0);
    let cpu = &report["end"]["cpu_utilization_percent"];
    let cpu_pct =
        cpu["host_total"].as_f64().unwrap_or(0.0) + cpu["remote_total"].as_f64().unwrap_or(0.0);
    let cpu_s = cpu_pct / 100.0 * secs + extra_cpu_s;
    let gb = bytes as f64 / 1e9;
    Ok(Measured {
        mbit_per_s: bits / 1e6,
        bytes,
        seconds: secs,
        cpu_s_per_gb: if gb > 0.0 { cpu_s / gb } else { 0.0 },
        subflows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf_report_gives_rate_and_cpu_per_gb() {
        let report = serde_json::json!({"end": {
            "sum_received": {"bits_per_second": 1.88e9, "bytes": 2_000_000_000u64, "seconds": 10.0},
            "cpu_utilization_percent": {"host_total": 30.0, "remote_total": 20.0}
        }});
        let m = parse_iperf(&report, 1.0, 2.0).unwrap();
        assert_eq!(m.mbit_per_s, 1880.0);
        // (0.5 CPU x 10 s + 1 s extra) / 2 GB
        assert!((m.cpu_s_per_gb - 3.0).abs() < 1e-9, "{}", m.cpu_s_per_gb);
        assert!(parse_iperf(&serde_json::json!({}), 0.0, 0.0).is_err());
    }
}
