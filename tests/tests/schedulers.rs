//! dropshim's MPTCP packet schedulers (kernel/mptcp-schedulers) in the
//! kernels of the uml and lkl stacks: each is offered in the stack's
//! `net.mptcp.available_schedulers`, and each, selected with `[mptcp]
//! scheduler` in the device file, shows its behaviour in the bytes every
//! subflow carried. The client in gw1 runs on the stack under test and
//! uploads to a native MPTCP server in gw2 that reports the bytes of each
//! subflow and the sha256 of what arrived (`dropshim_tests::upload`).

use anyhow::{bail, ensure, Context, Result};
use dropshim_tests::lkl::liblkl;
use dropshim_tests::stack::Stack;
use dropshim_tests::uml::{guest_mptcp, uml_device_with};
use dropshim_tests::upload::{gw2_accepts_many, gw2_link, testbed, ServerOptions, Upload, MIB};
use dropshim_tests::*;
use std::time::Instant;

fn extra(scheduler: &str, costs: &[Option<u32>]) -> DeviceExtra {
    DeviceExtra {
        scheduler: Some(scheduler.to_string()),
        costs: costs.to_vec(),
        ..DeviceExtra::default()
    }
}

// ------------------------------------------------------------ offered

fn assert_offers_all(list: &str, stack: &str) -> Result<()> {
    let offered: Vec<&str> = list.split_whitespace().collect();
    for want in dropshim_conf::BUILT_SCHEDULERS {
        ensure!(
            offered.contains(want),
            "{stack}'s net.mptcp.available_schedulers is {offered:?}, without {want}"
        );
    }
    Ok(())
}

#[test]
fn lkl_kernel_offers_every_scheduler_and_takes_each() -> Result<()> {
    let lib = liblkl()?;
    let lkl = dropshim_backend_lkl::Lkl::boot(&dropshim_backend_lkl::BootOptions {
        library: Some(lib),
        ..Default::default()
    })?;
    let list = lkl.sysctl("net.mptcp.available_schedulers")?;
    assert_offers_all(&list, "lkl")?;
    for name in dropshim_conf::BUILT_SCHEDULERS {
        lkl.set_sysctl("net.mptcp.scheduler", name)?;
        ensure!(lkl.sysctl("net.mptcp.scheduler")? == *name);
    }
    ensure!(
        lkl.set_sysctl("net.mptcp.scheduler", "nosuch").is_err(),
        "the library kernel took an unknown scheduler"
    );
    Ok(())
}

#[test]
fn uml_kernel_offers_every_scheduler_and_runs_the_chosen_one() -> Result<()> {
    let tb = testbed(None)?;
    let dev = uml_device_with(&tb, "gw1", &[1, 2], "so", &extra("costaware", &[]))?;
    let text = guest_mptcp(&dev.name)?;
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(" = "))
            .map(str::to_string)
    };
    let list = value("net.mptcp.available_schedulers")
        .with_context(|| format!("no available_schedulers in {text:?}"))?;
    assert_offers_all(&list, "uml")?;
    ensure!(
        value("net.mptcp.scheduler").as_deref() == Some("costaware"),
        "the guest runs scheduler {:?}, not the device file's costaware",
        value("net.mptcp.scheduler")
    );
    Ok(())
}

// ------------------------------------------------------------ behaviour

/// roundrobin on two equal links: each subflow carries 35-65 %.
fn roundrobin_splits_evenly(kind: &str) -> Result<()> {
    let tb = testbed(Some(200))?;
    let stack = Stack::up_with(kind, &tb, "rr", &extra("roundrobin", &[]))?;
    let split = Upload::start(&tb, &stack, 32 * MIB, 0, 4 * MIB)?.finish()?;
    for link in [1, 2] {
        let share = split.share(&tb, link)?;
        eprintln!(
            "{kind} roundrobin: link {link} carried {:.1} %",
            share * 100.0
        );
        ensure!(
            (0.35..=0.65).contains(&share),
            "{kind} roundrobin: link {link} carried {:.1} % of the bytes ({:?})",
            share * 100.0,
            split.per_addr()
        );
    }
    Ok(())
}

#[test]
fn uml_roundrobin_splits_equal_links_evenly() -> Result<()> {
    roundrobin_splits_evenly("uml")
}

#[test]
fn lkl_roundrobin_splits_equal_links_evenly() -> Result<()> {
    roundrobin_splits_evenly("lkl")
}

/// costaware with link 1 costly (cost 10) and link 2 cheap (cost 1), both
/// 200 Mbit/s, a client sending 4 Mbit/s: the cheap link has room, the
/// costly one carries under 5 %. Link 1 carries the connection's first
/// subflow, the one the kernel's `default` scheduler favours at this load
/// (about 70 % there, measured), so the split is costaware's doing. Then,
/// in a second transfer, link 2 is cut at a quarter: the transfer
/// completes over link 1, which carries most of it. (The offered load is low because the stack's own scheduling on a
/// busy machine turns a steady sender into bursts, and a burst larger than
/// the cheap subflow's window is what costaware rightly spills.)
fn costaware_keeps_to_the_cheap_link(kind: &str) -> Result<()> {
    let tb = testbed(Some(200))?;
    let costs = [Some(10), Some(1)];
    let stack = Stack::up_with(kind, &tb, "ca", &extra("costaware", &costs))?;
    let rate = MIB / 2;

    let split = Upload::start(&tb, &stack, 3 * MIB, rate, MIB)?.finish()?;
    let costly = split.share(&tb, 1)?;
    eprintln!(
        "{kind} costaware, cheap link up: costly link carried {:.2} %",
        costly * 100.0
    );
    ensure!(
        costly < 0.05,
        "{kind} costaware: the costly link carried {:.1} % while the cheap one had room ({:?})",
        costly * 100.0,
        split.per_addr()
    );

    let up = Upload::start(&tb, &stack, 3 * MIB, rate, MIB / 4)?;
    up.wait_progress(3 * MIB / 4)?;
    gw2_link(&tb, 2, false)?;
    let split = up.finish();
    gw2_link(&tb, 2, true)?;
    let split = split?;
    let costly = split.share(&tb, 1)?;
    eprintln!(
        "{kind} costaware, cheap link cut at 768 KiB: costly link carried {:.1} %",
        costly * 100.0
    );
    ensure!(
        costly > 0.5,
        "{kind} costaware: after the cheap link was cut the costly one carried only {:.1} % ({:?})",
        costly * 100.0,
        split.per_addr()
    );
    Ok(())
}

#[test]
fn uml_costaware_keeps_to_the_cheap_link_until_it_is_cut() -> Result<()> {
    costaware_keeps_to_the_cheap_link("uml")
}

#[test]
fn lkl_costaware_keeps_to_the_cheap_link_until_it_is_cut() -> Result<()> {
    costaware_keeps_to_the_cheap_link("lkl")
}

/// blest on unequal links (link 1 at 100 Mbit/s, link 2 at 5 Mbit/s, a
/// cellular uplink's rate): the transfer is intact, both subflows were
/// used, and the fast link carries at least 70 % (its share of the
/// capacity is 95 %). The slow link is kept far below the fast one because
/// a stack's sending rate is bounded by its CPU: when a busy host holds a
/// uml instance to 50 Mbit/s, a 20 Mbit/s slow link alone takes 40 %
/// whatever the scheduler does, while 5 Mbit/s leaves the fast link at
/// least 75 % of any rate above 20 Mbit/s.
fn blest_prefers_the_fast_link(kind: &str) -> Result<()> {
    let tb = testbed(None)?;
    tb.set_rate(1, Some(100))?;
    tb.set_rate(2, Some(5))?;
    let stack = Stack::up_with(kind, &tb, "bl", &extra("blest", &[]))?;
    let started = Instant::now();
    let split = Upload::start(&tb, &stack, 16 * MIB, 0, 4 * MIB)?.finish()?;
    let fast = split.share(&tb, 1)?;
    eprintln!(
        "{kind} blest: 16 MiB in {:.2} s, the fast link carried {:.1} % ({:?})",
        started.elapsed().as_secs_f64(),
        fast * 100.0,
        split.per_addr()
    );
    ensure!(
        fast >= 0.7,
        "{kind} blest: the fast link carried only {:.1} % ({:?})",
        fast * 100.0,
        split.per_addr()
    );
    if split.per_addr().len() < 2 {
        bail!(
            "{kind} blest: only one subflow reached gw2 ({:?})",
            split.per_addr()
        );
    }
    Ok(())
}

#[test]
fn uml_blest_transfer_is_intact_and_prefers_the_fast_link() -> Result<()> {
    blest_prefers_the_fast_link("uml")
}

#[test]
fn lkl_blest_transfer_is_intact_and_prefers_the_fast_link() -> Result<()> {
    blest_prefers_the_fast_link("lkl")
}

/// redundant on two equal links (200 Mbit/s each): every byte goes out on
/// both subflows, so each carries at least 90 % of the bytes (counted at
/// the peer, where the copies arrive, once the slower subflow has
/// delivered its copy; the connection keeps one). Then, in
/// a second upload, link 2 is cut at a quarter: the transfer completes
/// intact, and link 1 has carried it all.
fn redundant_sends_everything_on_both(kind: &str) -> Result<()> {
    let tb = testbed(Some(200))?;
    let stack = Stack::up_with(kind, &tb, "rd", &extra("redundant", &[]))?;
    let opts = ServerOptions {
        drain_copies: true,
        ..ServerOptions::default()
    };
    let split = Upload::start_with(&tb, &stack, 32 * MIB, 0, 4 * MIB, opts)?.finish()?;
    for link in [1, 2] {
        let share = split.share(&tb, link)?;
        eprintln!(
            "{kind} redundant: link {link} carried {:.1} % of the bytes",
            share * 100.0
        );
        ensure!(
            share >= 0.9,
            "{kind} redundant: link {link} carried only {:.1} % of the bytes ({:?})",
            share * 100.0,
            split.subflows
        );
    }

    let up = Upload::start(&tb, &stack, 16 * MIB, 0, MIB)?;
    up.wait_progress(4 * MIB)?;
    gw2_link(&tb, 2, false)?;
    let split = up.finish();
    gw2_link(&tb, 2, true)?;
    let split = split?;
    let (one, two) = (split.share(&tb, 1)?, split.share(&tb, 2)?);
    eprintln!(
        "{kind} redundant, link 2 cut at 4 MiB of 16: link 1 carried {:.1} %, link 2 {:.1} %",
        one * 100.0,
        two * 100.0
    );
    ensure!(
        one >= 0.9,
        "{kind} redundant: after link 2 was cut link 1 carried only {:.1} % ({:?})",
        one * 100.0,
        split.subflows
    );
    Ok(())
}

#[test]
fn uml_redundant_sends_every_byte_on_both_links_and_survives_a_cut() -> Result<()> {
    redundant_sends_everything_on_both("uml")
}

#[test]
fn lkl_redundant_sends_every_byte_on_both_links_and_survives_a_cut() -> Result<()> {
    redundant_sends_everything_on_both("lkl")
}

/// redundant under ndiffports 2 (two subflows over link 1's one address
/// pair): one copy per path, so the pair's first subflow carries the
/// transfer and link 1 carries it once, not once per subflow. A second
/// copy over the same links would halve what they deliver and survive no
/// cut the first does not.
fn redundant_copies_once_per_address_pair(kind: &str) -> Result<()> {
    let tb = testbed(Some(200))?;
    gw2_accepts_many(&tb)?;
    let extra = DeviceExtra {
        scheduler: Some("redundant".into()),
        pm: Some("policy = \"ndiffports\"\nsubflows = 2".into()),
        ..DeviceExtra::default()
    };
    let stack = Stack::up_with(kind, &tb, "rn", &extra)?;
    let opts = ServerOptions {
        subflows: 2,
        ..ServerOptions::default()
    };
    let split = Upload::start_with(&tb, &stack, 16 * MIB, 0, 4 * MIB, opts)?.finish()?;
    let a1 = tb.addr4("gw1", 1)?;
    ensure!(
        split.subflows.len() == 2
            && split
                .subflows
                .iter()
                .all(|s| s.remote.ip() == std::net::IpAddr::V4(a1)),
        "{kind} redundant, ndiffports 2: want two subflows from {a1}, got {:?}",
        split.subflows
    );
    let carried = split.share(&tb, 1)?;
    let first = split.subflows.iter().map(|s| s.bytes).max().unwrap_or(0) as f64
        / split.total.max(1) as f64;
    eprintln!(
        "{kind} redundant, ndiffports 2: link 1 carried {carried:.2} times the bytes, its busiest subflow {:.1} % ({:?})",
        first * 100.0,
        split.subflows
    );
    ensure!(
        carried < 1.2,
        "{kind} redundant, ndiffports 2: link 1 carried {carried:.2} times the bytes: a copy per subflow of one path ({:?})",
        split.subflows
    );
    ensure!(
        first >= 0.9,
        "{kind} redundant, ndiffports 2: no subflow carried the path's copy ({:?})",
        split.subflows
    );
    Ok(())
}

#[test]
fn uml_redundant_copies_once_per_address_pair_under_ndiffports() -> Result<()> {
    redundant_copies_once_per_address_pair("uml")
}

#[test]
fn lkl_redundant_copies_once_per_address_pair_under_ndiffports() -> Result<()> {
    redundant_copies_once_per_address_pair("lkl")
}
