//! dropshim's userspace path manager on the uml and lkl stacks: with
//! `path_manager = "userspace"` and a policy in the device file, the
//! policy engine drives the stack's own kernel through its `mptcp_pm`
//! netlink (inside the uml guest, run by the guest agent; in the lkl
//! program's process, on a thread of its own). Each test uploads from gw1
//! on the stack to a native MPTCP server in gw2 and proves the policy by
//! the subflows gw2 saw and the bytes each carried; the bytes are checked
//! intact by sha256 at both ends.

use anyhow::{ensure, Result};
use dropshim_testbed::Testbed;
use dropshim_tests::upload::{testbed, Gw1, Kind, ServerOptions, Split, Upload, MIB};
use dropshim_tests::*;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

const SHORT: Duration = Duration::from_secs(20);

fn policy(lines: &str) -> DeviceExtra {
    DeviceExtra {
        pm: Some(lines.to_string()),
        ..DeviceExtra::default()
    }
}

/// gw2 accepts up to 8 subflows and announcements per connection.
fn gw2_accepts_many(tb: &Testbed) -> Result<()> {
    run_ok(
        tb.command("gw2", "ip")?.args([
            "mptcp",
            "limits",
            "set",
            "subflows",
            "8",
            "add_addr_accepted",
            "8",
        ]),
        SHORT,
    )?;
    Ok(())
}

fn report(kind: Kind, what: &str, split: &Split) {
    for s in &split.subflows {
        eprintln!(
            "{kind:?} {what}: {} -> {} carried {:.1} %",
            s.remote,
            s.local,
            s.bytes as f64 * 100.0 / split.total.max(1) as f64
        );
    }
}

/// ndiffports 4: four subflows, all over gw1's and gw2's link-1
/// addresses, each from its own port, each carrying bytes.
fn ndiffports_4(kind: Kind) -> Result<()> {
    let tb = testbed(Some(100))?;
    gw2_accepts_many(&tb)?;
    let stack = Gw1::up(
        &tb,
        kind,
        "nd",
        &policy("policy = \"ndiffports\"\nsubflows = 4"),
    )?;
    let opts = ServerOptions {
        any: false,
        subflows: 4,
    };
    let split = Upload::start_with(&tb, &stack, 16 * MIB, 0, 4 * MIB, opts)?.finish()?;
    report(kind, "ndiffports 4", &split);
    let a1 = IpAddr::V4(tb.addr4("gw1", 1)?);
    let g1 = IpAddr::V4(tb.addr4("gw2", 1)?);
    let subs = &split.subflows;
    ensure!(
        subs.len() == 4 && subs.iter().all(|s| s.remote.ip() == a1 && s.local == g1),
        "{kind:?}: want 4 subflows, all {a1} -> {g1}: {subs:?}"
    );
    let ports: BTreeSet<u16> = subs.iter().map(|s| s.remote.port()).collect();
    ensure!(
        ports.len() == 4,
        "{kind:?}: each subflow its own port: {subs:?}"
    );
    ensure!(
        subs.iter().all(|s| s.bytes > 0),
        "{kind:?}: every subflow carried bytes: {subs:?}"
    );
    Ok(())
}

#[test]
fn uml_pm_ndiffports_4_gives_four_subflows_on_one_link() -> Result<()> {
    ndiffports_4(Kind::Uml)
}

#[test]
fn lkl_pm_ndiffports_4_gives_four_subflows_on_one_link() -> Result<()> {
    ndiffports_4(Kind::Lkl)
}

/// fullmesh, gw2 announcing its link-2 address: a subflow per address
/// pair (gw1's two addresses x gw2's two), each carrying bytes.
fn fullmesh(kind: Kind) -> Result<()> {
    let tb = testbed(Some(100))?;
    gw2_accepts_many(&tb)?;
    let g2 = tb.addr4("gw2", 2)?.to_string();
    let g2dev = tb.ifname("gw2", 2)?.to_string();
    run_ok(
        tb.command("gw2", "ip")?
            .args(["mptcp", "endpoint", "add", &g2, "dev", &g2dev, "signal"]),
        SHORT,
    )?;
    let stack = Gw1::up(&tb, kind, "fm", &policy("policy = \"fullmesh\""))?;
    let opts = ServerOptions {
        any: true,
        subflows: 4,
    };
    let split = Upload::start_with(&tb, &stack, 16 * MIB, 0, 4 * MIB, opts)?.finish()?;
    report(kind, "fullmesh", &split);
    let mut want = BTreeSet::new();
    for l in [1, 2] {
        for r in [1, 2] {
            want.insert((
                IpAddr::V4(tb.addr4("gw1", l)?),
                IpAddr::V4(tb.addr4("gw2", r)?),
            ));
        }
    }
    let pairs: BTreeSet<(IpAddr, IpAddr)> = split
        .subflows
        .iter()
        .map(|s| (s.remote.ip(), s.local))
        .collect();
    ensure!(
        pairs == want && split.subflows.len() == 4,
        "{kind:?}: want one subflow per address pair {want:?}, got {:?}",
        split.subflows
    );
    ensure!(
        split.subflows.iter().all(|s| s.bytes > 0),
        "{kind:?}: every subflow carried bytes: {:?}",
        split.subflows
    );
    Ok(())
}

#[test]
fn uml_pm_fullmesh_gives_a_subflow_per_address_pair() -> Result<()> {
    fullmesh(Kind::Uml)
}

#[test]
fn lkl_pm_fullmesh_gives_a_subflow_per_address_pair() -> Result<()> {
    fullmesh(Kind::Lkl)
}
