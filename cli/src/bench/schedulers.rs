//! schedulers: the study's question of which MPTCP packet scheduler
//! serves a device, asked on unequal links. Two-gateways with links 1 and
//! 2 from `--links` (default `wifi,lte`: a fast, near path and a slow,
//! far one); gw1 is a uml or lkl device running each scheduler the
//! project's kernels build in turn, iperf3 to a native peer in gw2. Per
//! run: goodput, and the share of the bytes that arrived over link 1 at
//! gw2 (what the scheduler put on the better path). The native stack runs
//! the host's `default` as the reference. With `--path-managers` each
//! scheduler runs under each path manager in turn (the kernel's, or a
//! policy of dropshim's userspace one).

use super::stacks::{self, Device, DeviceMptcp, Stack};
use super::two_gateways::{iperf, Measured};
use super::{Ctx, Plan, Record, Scenario};
use anyhow::{Context, Result};
use dropshim_testbed::{LinkChoice, Options, Profile, Spec, Testbed};

/// The links when `--links` is not given.
fn default_links() -> Vec<LinkChoice> {
    vec![
        LinkChoice::Profile(Profile::Wifi),
        LinkChoice::Profile(Profile::Lte),
    ]
}

pub fn run(ctx: &mut Ctx, plan: &Plan) -> Result<()> {
    let links = ctx.args.links.clone().unwrap_or_else(default_links);
    let names: Vec<String> = links.iter().map(|l| l.to_string()).collect();
    let setting = format!("links {}", names.join(","));
    let opts = Options {
        links,
        ..Default::default()
    };
    let spec = Spec::builtin("two-gateways")?;
    let avail = ctx.stacks.clone();
    let record = |stack: Stack, mptcp: DeviceMptcp, run: u32| {
        let mut r = Record::new(Scenario::Schedulers, stack, &setting, run);
        r.path_manager = mptcp.path_manager.label().into();
        r.scheduler = mptcp.scheduler.into();
        r
    };
    let reference = DeviceMptcp::default();

    match avail.reason(Stack::Native) {
        Some(why) => ctx
            .records
            .push(record(Stack::Native, reference, 0).skipped(why)),
        None => {
            ctx.step("schedulers: building the testbed for the native reference".into());
            let tb = Testbed::up(&spec, &opts)?;
            for run in 1..=plan.runs {
                ctx.step(format!("schedulers {setting} run {run}: native default"));
                let result = measure(ctx, &tb, Stack::Native, None, plan.duration);
                ctx.push(fill(record(Stack::Native, reference, run), result));
            }
        }
    }
    for stack in [Stack::Uml, Stack::Lkl] {
        if let Some(why) = avail.reason(stack) {
            ctx.records.push(record(stack, reference, 0).skipped(why));
            continue;
        }
        for &path_manager in &plan.path_managers {
            for scheduler in &plan.schedulers {
                let mptcp = DeviceMptcp {
                    scheduler,
                    path_manager,
                };
                let what = format!(
                    "{} {scheduler} ({} path manager)",
                    stack.name(),
                    path_manager.label()
                );
                ctx.step(format!("schedulers: a device: {what}"));
                // A fresh testbed per device: its links go to the device.
                let tb = Testbed::up(&spec, &opts)?;
                let handle = stacks::device_with(stack, &tb, "gw1", &ctx.library, &avail, mptcp);
                let handle = match handle {
                    Ok(h) => h,
                    Err(e) => {
                        ctx.records
                            .push(record(stack, mptcp, 0).skipped(super::one_line(&format!(
                                "{} device did not start: {e:#}",
                                stack.name()
                            ))));
                        continue;
                    }
                };
                for run in 1..=plan.runs {
                    ctx.step(format!("schedulers {setting} run {run}: {what}"));
                    let result = measure(ctx, &tb, stack, Some(&handle), plan.duration);
                    ctx.push(fill(record(stack, mptcp, run), result));
                }
            }
        }
    }
    Ok(())
}

fn fill(mut rec: Record, result: Result<(Measured, f64)>) -> Record {
    match result {
        Ok((m, share)) => {
            rec.mbit_per_s = Some(m.mbit_per_s);
            rec.bytes = Some(m.bytes);
            rec.seconds = Some(m.seconds);
            rec.subflows = Some(m.subflows);
            rec.link1_share = Some(share);
            rec
        }
        Err(e) => rec.failed(&e),
    }
}

/// iperf3 through `stack`, and the share of the bytes gw2 received on
/// link 1 meanwhile.
fn measure(
    ctx: &Ctx,
    tb: &Testbed,
    stack: Stack,
    device: Option<&Device>,
    duration: u32,
) -> Result<(Measured, f64)> {
    let before = received_per_link(tb)?;
    let m = iperf(ctx, tb, stack, device, duration)?;
    let after = received_per_link(tb)?;
    let got = [
        after[0].saturating_sub(before[0]),
        after[1].saturating_sub(before[1]),
    ];
    let total = got[0] + got[1];
    anyhow::ensure!(total > 0, "gw2 received nothing on links 1 and 2");
    Ok((m, got[0] as f64 / total as f64))
}

/// Bytes gw2's interfaces of links 1 and 2 have received so far.
fn received_per_link(tb: &Testbed) -> Result<[u64; 2]> {
    let ns = tb.netns("gw2")?;
    let mut out = [0u64; 2];
    for (i, link) in [1u32, 2].iter().enumerate() {
        let ifname = tb.ifname("gw2", *link)?;
        let path = format!("/sys/class/net/{ifname}/statistics/rx_bytes");
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", ns, "cat", &path]);
        let o = dropshim_testbed::run_with_timeout(&mut cmd, std::time::Duration::from_secs(10))?;
        out[i] = String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .with_context(|| format!("reading {path} in {ns}"))?;
    }
    Ok(out)
}
