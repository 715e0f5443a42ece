//! overhead: the two-gateways transfer unshaped, so the stack itself is
//! the bottleneck: throughput and CPU seconds per GB for every stack, with
//! mptcpize as the native backend's peer.

use super::two_gateways::{iperf_matrix, Variant};
use super::{Ctx, Plan, Scenario, Stack};
use anyhow::Result;

pub fn run(ctx: &mut Ctx, plan: &Plan) -> Result<()> {
    let sched = ctx.stacks.schedulers[0].clone();
    let variants = [Stack::Tcp, Stack::Native, Stack::Mptcpize]
        .into_iter()
        .map(|stack| Variant {
            stack,
            path_manager: "kernel".into(),
            scheduler: sched.clone(),
        })
        .collect();
    iperf_matrix(
        ctx,
        plan,
        Scenario::Overhead,
        dropshim_testbed::Options::default(),
        "unshaped",
        variants,
    )
}
