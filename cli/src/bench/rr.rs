//! rr: request/response traffic, the interactive half of performance.
//! `dropshim-rr client` in gw1, on the stack under test, against a
//! `dropshim-rr server` (an echo server) in gw2, on the unshaped
//! two-gateways testbed: round-trip latency of 64 B, 1 KiB and 16 KiB
//! messages on one connection (TCP_NODELAY, as interactive programs set
//! it), transactions per second on 1 and 50 connections, connection
//! set-up (connect to the first byte back), and the process's first
//! connection (the stack's start-up included). Every echo is checked byte for
//! byte by the probe; a wrong byte fails the run. Where redis is
//! installed, redis-benchmark (50 connections, GET) runs too, once against
//! a native redis-server in gw2 and once against redis-server on the
//! stack in gw1.

use super::stacks::{self, Device, Role, Stack};
use super::{Ctx, Plan, Record, Scenario};
use anyhow::{bail, Context, Result};
use dropshim_testbed::{Options, Spec, Testbed};
use std::path::PathBuf;
use std::time::Duration;

/// Message sizes of the one-connection round trips.
pub const SIZES: [usize; 3] = [64, 1024, 16 * 1024];
/// Connection counts of the transactions-per-second runs.
pub const CONNS: [usize; 2] = [1, 50];

/// How much each run measures.
#[derive(Clone, Debug)]
pub struct Settings {
    pub count: u64,
    pub tps_seconds: f64,
    pub setups: u64,
    /// redis-benchmark requests per run (GET).
    pub redis_requests: u64,
}

impl Settings {
    pub fn new(quick: bool) -> Settings {
        if quick {
            Settings {
                count: 1000,
                tps_seconds: 1.0,
                setups: 20,
                redis_requests: 20_000,
            }
        } else {
            Settings {
                count: 10_000,
                tps_seconds: 3.0,
                setups: 100,
                redis_requests: 100_000,
            }
        }
    }

    /// Rough seconds per stack and run, for the estimate (uml and lkl at
    /// about 0.2 ms a small round trip, 16 KiB a few times that).
    pub fn expected_seconds(&self) -> f64 {
        let redis = if redis_installed() {
            2.0 * self.redis_requests as f64 / 10_000.0 + 2.0
        } else {
            0.0
        };
        self.count as f64 * 0.0015 + self.tps_seconds * CONNS.len() as f64 + 2.0 + redis
    }

    /// Measurements (rows) one run of one stack gives.
    pub fn rows() -> u64 {
        (SIZES.len() + CONNS.len() + 2 + if redis_installed() { 2 } else { 0 }) as u64
    }
}

fn redis_installed() -> bool {
    super::on_path("redis-server")
        && super::on_path("redis-benchmark")
        && super::on_path("redis-cli")
}

pub const REDIS_NATIVE: &str = "redis GET, 50 connections, server native";
pub const REDIS_ON_STACK: &str = "redis GET, 50 connections, server on the stack";

/// Where redis-server runs in a redis row.
#[derive(Clone, Copy, PartialEq)]
enum RedisServer {
    /// In gw2, native (the stack's server side), driven from the stack.
    Native,
    /// In gw1 on the stack, driven by a native redis-benchmark in gw2.
    OnStack,
}

pub fn size_label(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB round trip", size / 1024)
    } else {
        format!("{size} B round trip")
    }
}

pub fn conns_label(n: usize) -> String {
    if n == 1 {
        "64 B, 1 connection".to_string()
    } else {
        format!("64 B, {n} connections")
    }
}

pub const SETUP_LABEL: &str = "connect to first byte";
/// The probe's first connection: what a short-lived program pays, the
/// stack's start-up in the process included.
pub const FIRST_LABEL: &str = "first connection of a process";

/// The probe, next to this executable.
fn probe_path() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the dropshim executable")?;
    let probe = exe.with_file_name("dropshim-rr");
    if !probe.is_file() {
        bail!(
            "{} missing: `cargo build --release` builds it next to dropshim",
            probe.display()
        );
    }
    Ok(probe)
}

pub fn run(ctx: &mut Ctx, plan: &Plan) -> Result<()> {
    let probe = probe_path()?;
    let avail = ctx.stacks.clone();
    let mut host = Vec::new();
    for stack in Stack::ALL {
        match avail.reason(stack) {
            Some(reason) => ctx
                .records
                .push(Record::new(Scenario::Rr, stack, "", 0).skipped(reason)),
            None if matches!(stack, Stack::Uml | Stack::Lkl) => {}
            None => host.push(stack),
        }
    }
    let spec = Spec::builtin("two-gateways")?;
    let opts = Options::default();
    {
        ctx.step("rr: building the testbed".to_string());
        let tb = Testbed::up(&spec, &opts)?;
        for run in 1..=plan.runs {
            for &stack in &host {
                measure(ctx, plan, &probe, &tb, stack, None, run);
            }
        }
    }
    for stack in [Stack::Uml, Stack::Lkl] {
        if avail.reason(stack).is_some() {
            continue;
        }
        ctx.step(format!(
            "rr: handing gw1's links to the {} device",
            stack.name()
        ));
        let tb = Testbed::up(&spec, &opts)?;
        match stacks::device(stack, &tb, "gw1", &ctx.library, &avail) {
            Err(e) => {
                ctx.records.push(
                    Record::new(Scenario::Rr, stack, "", 0).skipped(super::one_line(&format!(
                        "{} device did not start: {e:#}",
                        stack.name()
                    ))),
                )
            }
            Ok(handle) => {
                for run in 1..=plan.runs {
                    measure(ctx, plan, &probe, &tb, stack, Some(&handle), run);
                }
            }
        }
    }
    Ok(())
}

/// One run of the probe on `stack`; its rows (or one failure per row).
fn measure(
    ctx: &mut Ctx,
    plan: &Plan,
    probe: &std::path::Path,
    tb: &Testbed,
    stack: Stack,
    device: Option<&Device>,
    run: u32,
) {
    ctx.step(format!("rr run {run}: {}", stack.label()));
    match probe_once(ctx, plan, probe, tb, stack, device) {
        Ok(rows) => {
            for (setting, fill) in rows {
                let mut rec = Record::new(Scenario::Rr, stack, setting, run);
                fill.apply(&mut rec);
                ctx.push(rec);
            }
        }
        Err(e) => {
            let labels = SIZES
                .iter()
                .map(|s| size_label(*s))
                .chain(CONNS.iter().map(|n| conns_label(*n)))
                .chain([SETUP_LABEL.to_string(), FIRST_LABEL.to_string()]);
            for setting in labels {
                ctx.push(Record::new(Scenario::Rr, stack, setting, run).failed(&e));
            }
        }
    }
    if !redis_installed() {
        return;
    }
    for (server, label) in [
        (RedisServer::Native, REDIS_NATIVE),
        (RedisServer::OnStack, REDIS_ON_STACK),
    ] {
        ctx.step(format!("rr run {run}: redis-benchmark, {}", stack.label()));
        let mut rec = Record::new(Scenario::Rr, stack, label, run);
        match redis(ctx, plan, tb, stack, device, server) {
            Ok(fill) => fill.apply(&mut rec),
            Err(e) => rec = rec.failed(&e),
        }
        ctx.push(rec);
    }
}

/// redis-benchmark -c 50 -t get against a redis-server placed as `where_`
/// says: requests per second, and subflows seen at gw2.
fn redis(
    ctx: &Ctx,
    plan: &Plan,
    tb: &Testbed,
    stack: Stack,
    device: Option<&Device>,
    where_: RedisServer,
) -> Result<Fill> {
    let gw2 = tb.netns("gw2")?.to_string();
    let port = super::port(4).to_string();
    let (server_node, server_role, client_node, client_role) = match where_ {
        RedisServer::Native => ("gw2", Role::Server, "gw1", Role::Client),
        RedisServer::OnStack => ("gw1", Role::Client, "gw2", Role::Server),
    };
    let addr = tb.addr4(server_node, 1)?.to_string();
    let before = super::mptcp_counters(&gw2)?;
    let mut server = stacks::command(
        tb,
        server_node,
        stack,
        server_role,
        &ctx.library,
        device,
        "redis-server",
    )?;
    server.args([
        "--port",
        &port,
        "--bind",
        &addr,
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
    ]);
    let mut server = super::spawn_server(server)?;
    // The client's programs run from the client's side, on the client's
    // stack: on uml and lkl gw1's links belong to the device, so a plain
    // program there reaches nothing.
    let on_client = |program: &str| {
        stacks::command(
            tb,
            client_node,
            stack,
            client_role,
            &ctx.library,
            device,
            program,
        )
    };
    // A server on the stack listens inside the device, where the host's
    // `ss` cannot see it: wait for its answer to a PING instead.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let mut ping = on_client("redis-cli")?;
        ping.args(["-h", &addr, "-p", &port, "ping"]);
        let out = dropshim_testbed::run_with_timeout(&mut ping, Duration::from_secs(5))?;
        if String::from_utf8_lossy(&out.stdout).contains("PONG") {
            break;
        }
        if let Ok(Some(status)) = server.0.try_wait() {
            bail!("redis-server exited ({status}) before answering");
        }
        if std::time::Instant::now() > deadline {
            bail!("redis-server did not answer a PING within 15 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut client = on_client("redis-benchmark")?;
    let requests = plan.rr.redis_requests.to_string();
    client.args([
        "-h", &addr, "-p", &port, "-c", "50", "-n", &requests, "-t", "get", "--csv",
    ]);
    let out = dropshim_testbed::run_with_timeout(&mut client, Duration::from_secs(300))?;
    if !out.status.success() {
        bail!(
            "redis-benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let per_s = redis_get_rate(&String::from_utf8_lossy(&out.stdout))?;
    let after = super::mptcp_counters(&gw2)?;
    // The server in gw2 counts the MPTCP connections it accepted; a
    // client in gw2 the ones it opened (SYN-ACKs with MP_CAPABLE).
    let subflows = match where_ {
        RedisServer::Native => super::subflows_between(&before, &after),
        RedisServer::OnStack => {
            super::subflow_ratio(&before, &after, "MPCapableSYNACKRX", "MPJoinSynAckRx")
        }
    };
    Ok(Fill {
        per_s: Some(per_s),
        samples: plan.rr.redis_requests.into(),
        subflows,
        ..Fill::default()
    })
}

/// Requests per second of the GET line of `redis-benchmark --csv`.
fn redis_get_rate(csv: &str) -> Result<f64> {
    let line = csv
        .lines()
        .find(|l| l.starts_with("\"GET\""))
        .with_context(|| format!("redis-benchmark printed no GET result: {csv}"))?;
    line.split(',')
        .nth(1)
        .map(|f| f.trim_matches('"'))
        .and_then(|f| f.parse().ok())
        .with_context(|| format!("no requests per second in {line:?}"))
}

/// What one row measured.
#[derive(Default)]
struct Fill {
    median_us: Option<f64>,
    p99_us: Option<f64>,
    max_us: Option<f64>,
    over_10ms: Option<u64>,
    samples: Option<u64>,
    per_s: Option<f64>,
    subflows: f64,
}

impl Fill {
    fn apply(&self, r: &mut Record) {
        r.median_us = self.median_us;
        r.p99_us = self.p99_us;
        r.max_us = self.max_us;
        r.over_10ms = self.over_10ms;
        r.samples = self.samples;
        r.per_s = self.per_s;
        r.subflows = Some(self.subflows);
        r.intact = Some(true);
    }
}

fn probe_once(
    ctx: &Ctx,
    plan: &Plan,
    probe: &std::path::Path,
    tb: &Testbed,
    stack: Stack,
    device: Option<&Device>,
) -> Result<Vec<(String, Fill)>> {
    let s = &plan.rr;
    let server_ns = tb.netns("gw2")?.to_string();
    let addr = tb.addr4("gw2", 1)?;
    let port = super::port(3);
    let probe_s = probe.display().to_string();
    let before = super::mptcp_counters(&server_ns)?;
    let mut server = stacks::command(
        tb,
        "gw2",
        stack,
        Role::Server,
        &ctx.library,
        device,
        &probe_s,
    )?;
    server.args(["server", "--bind", &format!("{addr}:{port}")]);
    let mut server = super::spawn_server(server)?;
    super::wait_listening(&server_ns, port, &mut server)?;
    let mut client = stacks::command(
        tb,
        "gw1",
        stack,
        Role::Client,
        &ctx.library,
        device,
        &probe_s,
    )?;
    let join = |v: Vec<String>| v.join(",");
    client.args([
        "client".to_string(),
        "--to".into(),
        format!("{addr}:{port}"),
        "--sizes".into(),
        join(SIZES.iter().map(|x| x.to_string()).collect()),
        "--conns".into(),
        join(CONNS.iter().map(|x| x.to_string()).collect()),
        "--count".into(),
        s.count.to_string(),
        "--tps-seconds".into(),
        s.tps_seconds.to_string(),
        "--setups".into(),
        s.setups.to_string(),
    ]);
    let timeout = Duration::from_secs_f64(s.expected_seconds() * 10.0 + 60.0);
    let out = dropshim_testbed::run_with_timeout(&mut client, timeout)?;
    if !out.status.success() {
        bail!(
            "dropshim-rr client failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let after = super::mptcp_counters(&server_ns)?;
    let subflows = super::subflows_between(&before, &after);
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing the dropshim-rr report")?;
    parse(&report, subflows)
}

fn summary_fill(v: &serde_json::Value, subflows: f64) -> Fill {
    Fill {
        median_us: v["median_us"].as_f64(),
        p99_us: v["p99_us"].as_f64(),
        max_us: v["max_us"].as_f64(),
        over_10ms: v["over_10ms"].as_u64(),
        samples: v["count"].as_u64(),
        per_s: None,
        subflows,
    }
}

/// The probe's JSON report as rows: one per size, per connection count,
/// and the set-up times.
fn parse(report: &serde_json::Value, subflows: f64) -> Result<Vec<(String, Fill)>> {
    let mut rows = Vec::new();
    for l in report["latency"]
        .as_array()
        .context("report has no latency")?
    {
        let size = l["size"].as_u64().context("latency row without size")? as usize;
        rows.push((size_label(size), summary_fill(l, subflows)));
    }
    for t in report["tps"].as_array().context("report has no tps")? {
        let n = t["conns"].as_u64().context("tps row without conns")? as usize;
        rows.push((
            conns_label(n),
            Fill {
                per_s: t["per_s"].as_f64(),
                samples: t["transactions"].as_u64(),
                subflows,
                ..Fill::default()
            },
        ));
    }
    if !report["setup"].is_null() {
        rows.push((
            SETUP_LABEL.to_string(),
            summary_fill(&report["setup"], subflows),
        ));
    }
    if !report["first"].is_null() {
        rows.push((
            FIRST_LABEL.to_string(),
            summary_fill(&report["first"], subflows),
        ));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_becomes_one_row_per_size_connection_count_and_setup() {
        let report = serde_json::json!({
            "latency": [
                {"size": 64, "count": 1000, "median_us": 60.0, "p99_us": 90.0, "max_us": 400.0, "over_10ms": 0},
                {"size": 16384, "count": 1000, "median_us": 160.0, "p99_us": 290.0, "max_us": 900.0, "over_10ms": 1}
            ],
            "tps": [{"conns": 50, "transactions": 90000, "seconds": 3.0, "per_s": 30000.0}],
            "setup": {"size": 8, "count": 20, "median_us": 300.0, "p99_us": 500.0, "max_us": 600.0, "over_10ms": 0},
            "first": {"size": 8, "count": 1, "median_us": 12000.0, "p99_us": 12000.0, "max_us": 12000.0, "over_10ms": 1}
        });
        let rows = parse(&report, 2.0).unwrap();
        let names: Vec<&str> = rows.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "64 B round trip",
                "16 KiB round trip",
                "64 B, 50 connections",
                SETUP_LABEL,
                FIRST_LABEL
            ]
        );
        assert_eq!(rows[1].1.over_10ms, Some(1));
        assert_eq!(rows[2].1.per_s, Some(30000.0));
        assert_eq!(rows[3].1.median_us, Some(300.0));
        assert_eq!(rows[4].1.median_us, Some(12000.0));
        assert!(parse(&serde_json::json!({}), 0.0).is_err());
    }

    #[test]
    fn redis_csv_gives_the_get_rate() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\"\n\"GET\",\"70921.99\",\"0.4\"\n";
        assert_eq!(redis_get_rate(csv).unwrap(), 70921.99);
        assert!(redis_get_rate("\"SET\",\"1\"").is_err());
    }
}
