//! dropshim's userspace path manager on the uml and lkl stacks: with
//! `path_manager = "userspace"` and a policy in the device file, the
//! policy engine drives the stack's own kernel through its `mptcp_pm`
//! netlink (inside the uml guest, run by the guest agent; in the lkl
//! program's process, on a thread of its own). Each test uploads from gw1
//! on the stack to a native MPTCP server in gw2 and proves the policy by
//! the subflows gw2 saw and the bytes each carried; the bytes are checked
//! intact by sha256 at both ends. The failover policies (`backup`,
//! `costaware`) are also watched while the upload runs, through `ss -tin`
//! in gw2, before and after gw1's link 1 is cut.

use anyhow::{ensure, Context, Result};
use dropshim_testbed::Testbed;
use dropshim_tests::stack::Stack;
use dropshim_tests::upload::{
    gw2_accepts_many, peer_received, testbed, ServerOptions, Split, Upload, MIB, TRANSFER,
};
use dropshim_tests::*;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

const SHORT: Duration = Duration::from_secs(20);

fn policy(lines: &str) -> DeviceExtra {
    DeviceExtra {
        pm: Some(lines.to_string()),
        ..DeviceExtra::default()
    }
}

fn report(kind: &str, what: &str, split: &Split) {
    for s in &split.subflows {
        eprintln!(
            "{kind} {what}: {} -> {} carried {:.1} %",
            s.remote,
            s.local,
            s.bytes as f64 * 100.0 / split.total.max(1) as f64
        );
    }
}

/// ndiffports 4: four subflows, all over gw1's and gw2's link-1
/// addresses, each from its own port, each carrying bytes.
fn ndiffports_4(kind: &str) -> Result<()> {
    let tb = testbed(Some(100))?;
    gw2_accepts_many(&tb)?;
    let stack = Stack::up_with(
        kind,
        &tb,
        "nd",
        &policy("policy = \"ndiffports\"\nsubflows = 4"),
    )?;
    let opts = ServerOptions {
        any: false,
        subflows: 4,
        ..ServerOptions::default()
    };
    let split = Upload::start_with(&tb, &stack, 16 * MIB, 0, 4 * MIB, opts)?.finish()?;
    report(kind, "ndiffports 4", &split);
    let a1 = IpAddr::V4(tb.addr4("gw1", 1)?);
    let g1 = IpAddr::V4(tb.addr4("gw2", 1)?);
    let subs = &split.subflows;
    ensure!(
        subs.len() == 4 && subs.iter().all(|s| s.remote.ip() == a1 && s.local == g1),
        "{kind}: want 4 subflows, all {a1} -> {g1}: {subs:?}"
    );
    let ports: BTreeSet<u16> = subs.iter().map(|s| s.remote.port()).collect();
    ensure!(
        ports.len() == 4,
        "{kind}: each subflow its own port: {subs:?}"
    );
    ensure!(
        subs.iter().all(|s| s.bytes > 0),
        "{kind}: every subflow carried bytes: {subs:?}"
    );
    Ok(())
}

#[test]
fn uml_pm_ndiffports_4_gives_four_subflows_on_one_link() -> Result<()> {
    ndiffports_4("uml")
}

#[test]
fn lkl_pm_ndiffports_4_gives_four_subflows_on_one_link() -> Result<()> {
    ndiffports_4("lkl")
}

/// fullmesh, gw2 announcing its link-2 address: a subflow per address
/// pair (gw1's two addresses x gw2's two), each carrying bytes.
fn fullmesh(kind: &str) -> Result<()> {
    let tb = testbed(Some(100))?;
    gw2_accepts_many(&tb)?;
    let g2 = tb.addr4("gw2", 2)?.to_string();
    let g2dev = tb.ifname("gw2", 2)?.to_string();
    run_ok(
        tb.command("gw2", "ip")?
            .args(["mptcp", "endpoint", "add", &g2, "dev", &g2dev, "signal"]),
        SHORT,
    )?;
    let stack = Stack::up_with(kind, &tb, "fm", &policy("policy = \"fullmesh\""))?;
    let opts = ServerOptions {
        any: true,
        subflows: 4,
        ..ServerOptions::default()
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
        "{kind}: want one subflow per address pair {want:?}, got {:?}",
        split.subflows
    );
    ensure!(
        split.subflows.iter().all(|s| s.bytes > 0),
        "{kind}: every subflow carried bytes: {:?}",
        split.subflows
    );
    Ok(())
}

#[test]
fn uml_pm_fullmesh_gives_a_subflow_per_address_pair() -> Result<()> {
    fullmesh("uml")
}

#[test]
fn lkl_pm_fullmesh_gives_a_subflow_per_address_pair() -> Result<()> {
    fullmesh("lkl")
}

/// Bytes gw2 has received so far from gw1's address `addr`, over all
/// its subflows.
fn received_from(subs: &[(SocketAddr, u64)], addr: IpAddr) -> u64 {
    subs.iter().filter(|s| s.0.ip() == addr).map(|s| s.1).sum()
}

/// Bytes the whole transfer carried from gw1's address `addr`, as the
/// server counted them.
fn carried_from(split: &Split, addr: IpAddr) -> u64 {
    split
        .subflows
        .iter()
        .filter(|s| s.remote.ip() == addr)
        .map(|s| s.bytes)
        .sum()
}

/// Cuts link 1 (both ends) and returns how long it took until gw2 had
/// received `more` bytes beyond `from` from gw1's address `addr` (at
/// most `within`).
fn cut_and_time_takeover(
    tb: &dropshim_testbed::Testbed,
    port: u16,
    addr: IpAddr,
    from: u64,
    more: u64,
    within: Duration,
) -> Result<Duration> {
    tb.set_link(1, false)?;
    let cut = Instant::now();
    let mut seen = from;
    wait_until(within, "the other link to take over after the cut", || {
        seen = peer_received(tb, port)
            .map(|s| received_from(&s, addr))
            .unwrap_or(seen);
        seen >= from + more
    })
    .with_context(|| {
        format!(
            "{addr} carried {} bytes since the cut",
            seen.saturating_sub(from)
        )
    })?;
    Ok(cut.elapsed())
}

/// gw1 on `kind` with the `backup` policy and link 2 in the `backup`
/// role, uploading `size` bytes as fast as it can to gw2, which waits
/// for both subflows: the stack, gw1's link-1 (active) and link-2
/// (backup) addresses, and the running upload.
fn backup_upload(
    tb: &Testbed,
    kind: &str,
    tag: &str,
    size: u64,
) -> Result<(Stack, IpAddr, IpAddr, Upload)> {
    gw2_accepts_many(tb)?;
    let extra = DeviceExtra {
        pm: Some("policy = \"backup\"".to_string()),
        roles2: Some(vec!["backup".to_string()]),
        ..DeviceExtra::default()
    };
    let stack = Stack::up_with(kind, tb, tag, &extra)?;
    let (active, spare) = (
        IpAddr::V4(tb.addr4("gw1", 1)?),
        IpAddr::V4(tb.addr4("gw1", 2)?),
    );
    let opts = ServerOptions {
        any: false,
        subflows: 2,
        ..ServerOptions::default()
    };
    let up = Upload::start_with(tb, &stack, size, 0, MIB, opts)?;
    Ok((stack, active, spare, up))
}

/// backup, link 2 with the `backup` role, both links 50 Mbit/s: the
/// backup subflow is opened but carries under 5 % while link 1 is up;
/// once link 1 is cut the transfer completes over it, which carries at
/// least everything link 1 had not delivered.
fn backup(kind: &str) -> Result<()> {
    let tb = testbed(Some(50))?;
    let size = 40 * MIB;
    let (_stack, active, spare, up) = backup_upload(&tb, kind, "bk", size)?;
    let port = up.port();
    up.wait_progress(size * 3 / 10)?;
    let before = peer_received(&tb, port)?;
    let (a, b) = (
        received_from(&before, active),
        received_from(&before, spare),
    );
    let share = b as f64 * 100.0 / (a + b).max(1) as f64;
    eprintln!(
        "{kind} backup: before the cut the backup subflow carried {share:.2} % of {}",
        a + b
    );
    ensure!(
        before.iter().any(|s| s.0.ip() == spare),
        "{kind}: no backup subflow from {spare}: {before:?}"
    );
    ensure!(
        share < 5.0,
        "{kind}: the backup subflow carried {share:.1} % before the cut: {before:?}"
    );
    let took = cut_and_time_takeover(&tb, port, spare, b, MIB, Duration::from_secs(60))?;
    eprintln!("{kind} backup: the backup subflow carried 1 MiB more {took:?} after the cut");
    let split = up.finish()?;
    report(kind, "backup", &split);
    let (a, b) = (carried_from(&split, active), carried_from(&split, spare));
    ensure!(
        b + a >= size && b >= size / 2,
        "{kind}: after the cut the backup carried {b} bytes, the active link {a}, of {size}"
    );
    Ok(())
}

#[test]
fn uml_pm_backup_carries_little_until_the_active_link_is_cut_then_completes() -> Result<()> {
    backup("uml")
}

#[test]
fn lkl_pm_backup_carries_little_until_the_active_link_is_cut_then_completes() -> Result<()> {
    backup("lkl")
}

/// Fail-back: with `backup`, the backup subflow takes over while link 1
/// is cut; when link 1 returns, its path carries again and the path
/// manager demotes the backup, so the backup carries under 10 % of what
/// moves once the returned link carries again. Link 1 is cut beyond the
/// stack's kernel (it never sees an interface go down), so the path
/// manager learns of the cut and of the return from the path's own
/// retransmissions and acknowledgements. Bytes intact (sha256 at both
/// ends).
fn backup_hands_back(kind: &str) -> Result<()> {
    let tb = testbed(Some(50))?;
    let size = 96 * MIB;
    let step = size / 8;
    let (_stack, active, spare, up) = backup_upload(&tb, kind, "fb", size)?;
    let port = up.port();
    up.wait_progress(size * 15 / 100)?;
    let before_cut = received_from(&peer_received(&tb, port)?, spare);
    let took = cut_and_time_takeover(&tb, port, spare, before_cut, step, TRANSFER);
    tb.set_link(1, true)?;
    let took = took?;
    eprintln!("{kind} fail-back: the backup carried {step} bytes {took:?} after the cut");
    // Measured once the returned link has carried a quarter step (the
    // hand-back itself is not the steady state). Its subflow may be the
    // one from before the cut, if it survived, or a new one.
    let returned = received_from(&peer_received(&tb, port)?, active);
    let mut back = Vec::new();
    wait_until(TRANSFER, "the returned link to carry again", || {
        back = peer_received(&tb, port).unwrap_or_default();
        received_from(&back, active) >= returned + step / 4
    })?;
    let (a_back, b_back) = (received_from(&back, active), received_from(&back, spare));
    let mut later = Vec::new();
    wait_until(TRANSFER, "the returned link to carry a step", || {
        later = peer_received(&tb, port).unwrap_or_default();
        received_from(&later, active) + received_from(&later, spare) >= a_back + b_back + step
    })?;
    let on_active = received_from(&later, active).saturating_sub(a_back);
    let on_backup = received_from(&later, spare).saturating_sub(b_back);
    eprintln!(
        "{kind} fail-back: after the link returned, {on_active} bytes on the active link, {on_backup} on the backup"
    );
    ensure!(
        (on_backup as f64) < 0.1 * (on_active + on_backup) as f64,
        "{kind}: after the active link returned the backup still carried {on_backup} of {} bytes ({later:?})",
        on_active + on_backup
    );
    let split = up.finish()?;
    report(kind, "fail-back", &split);
    Ok(())
}

#[test]
fn uml_pm_backup_hands_back_to_the_active_link_when_it_returns() -> Result<()> {
    backup_hands_back("uml")
}

#[test]
fn lkl_pm_backup_hands_back_to_the_active_link_when_it_returns() -> Result<()> {
    backup_hands_back("lkl")
}

/// costaware, link 1 cheap (cost 1) and link 2 costly (cost 100), both
/// 50 Mbit/s, the client sending 3 MiB/s (about 25 Mbit/s: the cheap link
/// has room): the
/// costly link carries under 5 % while link 1 is up; once it is cut the
/// costly link takes over (within 5 s; the time is printed) and carries
/// the rest of the transfer.
fn costaware(kind: &str) -> Result<()> {
    let tb = testbed(Some(50))?;
    gw2_accepts_many(&tb)?;
    let extra = DeviceExtra {
        pm: Some("policy = \"costaware\"".to_string()),
        costs: vec![Some(1), Some(100)],
        ..DeviceExtra::default()
    };
    let stack = Stack::up_with(kind, &tb, "ca", &extra)?;
    let (cheap, costly) = (
        IpAddr::V4(tb.addr4("gw1", 1)?),
        IpAddr::V4(tb.addr4("gw1", 2)?),
    );
    let size = 24 * MIB;
    let opts = ServerOptions {
        any: false,
        subflows: 1,
        ..ServerOptions::default()
    };
    let up = Upload::start_with(&tb, &stack, size, 3 * MIB, MIB / 2, opts)?;
    let port = up.port();
    up.wait_progress(size * 3 / 10)?;
    let before = peer_received(&tb, port)?;
    let (c, x) = (
        received_from(&before, cheap),
        received_from(&before, costly),
    );
    let share = x as f64 * 100.0 / (c + x).max(1) as f64;
    eprintln!(
        "{kind} costaware: before the cut the costly link carried {share:.2} % of {}",
        c + x
    );
    ensure!(
        share < 5.0,
        "{kind}: the costly link carried {share:.1} % while the cheap one had room: {before:?}"
    );
    let took = cut_and_time_takeover(&tb, port, costly, x, 1, SHORT)?;
    eprintln!("{kind} costaware: the costly link carried bytes {took:?} after the cut");
    ensure!(
        took < Duration::from_secs(5),
        "{kind}: the costly link took over {took:?} after the cut"
    );
    let split = up.finish()?;
    report(kind, "costaware", &split);
    let (c, x) = (carried_from(&split, cheap), carried_from(&split, costly));
    ensure!(
        x + c >= size && x >= size / 2,
        "{kind}: after the cut the costly link carried {x} bytes, the cheap one {c}, of {size}"
    );
    Ok(())
}

#[test]
fn uml_pm_costaware_keeps_off_the_costly_link_until_the_cheap_one_is_cut() -> Result<()> {
    costaware("uml")
}

#[test]
fn lkl_pm_costaware_keeps_off_the_costly_link_until_the_cheap_one_is_cut() -> Result<()> {
    costaware("lkl")
}
