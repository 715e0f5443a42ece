//! What `dropshim bench` writes: one JSON file per run, one CSV of every
//! run, and the Markdown summary (also printed): per scenario a table of
//! medians and spread, skipped stacks with their reason, then the ratios
//! the design's bars are about.

use super::{median, Record, Scenario, Stack, Status};
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::Path;

/// Runs of one scenario, setting and stack configuration.
pub struct Group<'a> {
    pub scenario: Scenario,
    pub setting: &'a str,
    pub stack: Stack,
    pub path_manager: &'a str,
    pub scheduler: &'a str,
    pub records: Vec<&'a Record>,
}

impl<'a> Group<'a> {
    pub fn ok(&self) -> Vec<&'a Record> {
        self.records
            .iter()
            .copied()
            .filter(|r| r.status == Status::Ok)
            .collect()
    }

    /// Median, min and max of a metric over the successful runs.
    pub fn stat(&self, f: impl Fn(&Record) -> Option<f64>) -> Option<(f64, f64, f64)> {
        let v: Vec<f64> = self.ok().iter().filter_map(|r| f(r)).collect();
        if v.is_empty() {
            return None;
        }
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some((median(v), lo, hi))
    }

    /// "skipped: why" / "failed: why" when no run succeeded.
    pub fn not_run(&self) -> Option<String> {
        if !self.ok().is_empty() {
            return None;
        }
        let r = self.records.first()?;
        let what = if r.status == Status::Skipped {
            "skipped"
        } else {
            "failed"
        };
        Some(format!(
            "{what}: {}",
            r.reason.as_deref().unwrap_or("no reason recorded")
        ))
    }

    fn runs(&self) -> String {
        let ok = self.ok().len();
        let failed = self
            .records
            .iter()
            .filter(|r| r.status == Status::Failed)
            .count();
        if failed > 0 {
            let why = self
                .records
                .iter()
                .find(|r| r.status == Status::Failed)
                .and_then(|r| r.reason.as_deref())
                .unwrap_or("no reason recorded");
            format!("{ok} ok, {failed} failed ({why})")
        } else {
            ok.to_string()
        }
    }
}

/// Groups in a stable order: scenario, setting as first seen, stack,
/// path manager, scheduler.
pub fn groups(records: &[Record]) -> Vec<Group<'_>> {
    let mut settings: Vec<(Scenario, &str)> = Vec::new();
    for r in records {
        if !r.setting.is_empty() && !settings.contains(&(r.scenario, r.setting.as_str())) {
            settings.push((r.scenario, &r.setting));
        }
    }
    let scen_order = |s: Scenario| {
        [
            Scenario::TwoGateways,
            Scenario::LocalCache,
            Scenario::Handover,
            Scenario::Overhead,
            Scenario::Rr,
            Scenario::Conns,
            Scenario::DropHome,
            Scenario::DropMesh,
            Scenario::Schedulers,
        ]
        .iter()
        .position(|x| *x == s)
        .unwrap_or(9)
    };
    let mut out: Vec<Group> = Vec::new();
    for r in records {
        match out.iter_mut().find(|g| {
            g.scenario == r.scenario
                && g.setting == r.setting
                && g.stack == r.stack
                && g.path_manager == r.path_manager
                && g.scheduler == r.scheduler
        }) {
            Some(g) => g.records.push(r),
            None => out.push(Group {
                scenario: r.scenario,
                setting: &r.setting,
                stack: r.stack,
                path_manager: &r.path_manager,
                scheduler: &r.scheduler,
                records: vec![r],
            }),
        }
    }
    out.sort_by_key(|g| {
        (
            scen_order(g.scenario),
            settings
                .iter()
                .position(|s| *s == (g.scenario, g.setting))
                .unwrap_or(usize::MAX),
            g.stack,
            g.path_manager.to_string(),
            g.scheduler.to_string(),
        )
    });
    out
}

fn f0(x: f64) -> String {
    format!("{x:.0}")
}

fn spread(s: Option<(f64, f64, f64)>, digits: usize) -> (String, String) {
    match s {
        Some((m, lo, hi)) => (
            format!("{m:.digits$}"),
            format!("{lo:.digits$}..{hi:.digits$}"),
        ),
        None => ("-".into(), "-".into()),
    }
}

fn subflows(g: &Group) -> String {
    match g.stat(|r| r.subflows) {
        Some((0.0, _, _)) => "0 (TCP)".into(),
        Some((m, _, _)) => format!("{m:.1}"),
        None => "-".into(),
    }
}

/// "good/attempted": a failed run counts as attempted and not good, so a
/// failure can never shrink the denominator.
fn all_true(g: &Group, f: impl Fn(&Record) -> Option<bool>) -> String {
    let attempted = g
        .records
        .iter()
        .filter(|r| r.status == Status::Failed || (r.status == Status::Ok && f(r).is_some()))
        .count();
    if attempted == 0 {
        return "-".into();
    }
    let good = g
        .records
        .iter()
        .filter(|r| r.status == Status::Ok && f(r) == Some(true))
        .count();
    format!("{good}/{attempted}")
}

/// The Markdown summary of all records.
pub fn markdown(records: &[Record]) -> String {
    let groups = groups(records);
    let mut md = String::new();
    let scenarios: Vec<Scenario> = {
        let mut v: Vec<Scenario> = groups.iter().map(|g| g.scenario).collect();
        v.dedup();
        v
    };
    for scenario in scenarios {
        let gs: Vec<&Group> = groups.iter().filter(|g| g.scenario == scenario).collect();
        let _ = writeln!(md, "### {}\n", scenario.name());
        let header = match scenario {
            Scenario::TwoGateways => "| links | stack | path manager | scheduler | Mbit/s (median) | min..max | subflows/conn | runs |",
            Scenario::LocalCache => "| size | stack | download s (median) | min..max | goodput Mbit/s | subflows/conn | sha256 ok | runs |",
            Scenario::DropHome => "| download | stack | completion s (median) | min..max | goodput Mbit/s | subflows/conn | sha256 ok | runs |",
            Scenario::DropMesh => "| mesh | stack | completion s (median) | min..max | aggregate Mbit/s | subflows/conn | sha256 ok | runs |",
            Scenario::Handover => "| transfer | stack | scheduler | stall s (median) | min..max | completed | bytes intact | subflows/conn | runs |",
            Scenario::Overhead => "| links | stack | Mbit/s (median) | min..max | CPU s/GB | subflows/conn | runs |",
            Scenario::Rr => "| measurement | stack | median us | p99 us | max us | over 10 ms | per second | subflows/conn | echo intact | runs |",
            Scenario::Schedulers => "| links | stack | path manager | scheduler | Mbit/s (median) | min..max | bytes on link 1 | subflows/conn | runs |",
            Scenario::Conns => "| connections | stack | host threads (peak) | of them library-kernel tasks | others | RSS KiB per idle conn | open all s | round trip median us | p99 us | subflows/conn | echo intact | runs |",
        };
        let cols = header.matches('|').count() - 1;
        let _ = writeln!(md, "{header}");
        let _ = writeln!(md, "|{}", "---|".repeat(cols));
        for g in gs {
            let lead = format!("| {} | {} |", g.setting, g.stack.label());
            if let Some(why) = g.not_run() {
                let pad = match scenario {
                    Scenario::TwoGateways => format!(
                        " {} | {} | {why} |{}",
                        g.path_manager,
                        g.scheduler,
                        " |".repeat(cols - 5)
                    ),
                    Scenario::Schedulers => format!(
                        " {} | {} | {why} |{}",
                        g.path_manager,
                        g.scheduler,
                        " |".repeat(cols - 5)
                    ),
                    Scenario::Handover => format!(
                        " {} | {why} |{}",
                        or_dash(g.scheduler),
                        " |".repeat(cols - 4)
                    ),
                    _ => format!(" {why} |{}", " |".repeat(cols - 3)),
                };
                let _ = writeln!(md, "{lead}{pad}");
                continue;
            }
            let row = match scenario {
                Scenario::TwoGateways => {
                    let (m, s) = spread(g.stat(|r| r.mbit_per_s), 0);
                    format!(
                        " {} | {} | {m} | {s} | {} | {} |",
                        or_dash(g.path_manager),
                        or_dash(g.scheduler),
                        subflows(g),
                        g.runs()
                    )
                }
                Scenario::LocalCache | Scenario::DropHome | Scenario::DropMesh => {
                    let (m, s) = spread(g.stat(|r| r.seconds), 3);
                    let goodput = g.stat(|r| r.mbit_per_s).map_or("-".into(), |x| f0(x.0));
                    format!(
                        " {m} | {s} | {goodput} | {} | {} | {} |",
                        subflows(g),
                        all_true(g, |r| r.intact),
                        g.runs()
                    )
                }
                Scenario::Handover => {
                    let (m, s) = spread(g.stat(|r| r.stall_s), 2);
                    let mut completed = all_true(g, |r| r.completed);
                    if let Some(why) = g
                        .ok()
                        .iter()
                        .find(|r| r.completed == Some(false))
                        .and_then(|r| r.reason.as_deref())
                    {
                        completed.push_str(&format!(" ({why})"));
                    }
                    format!(
                        " {} | {m} | {s} | {completed} | {} | {} | {} |",
                        or_dash(g.scheduler),
                        all_true(g, |r| r.intact),
                        subflows(g),
                        g.runs()
                    )
                }
                Scenario::Schedulers => {
                    let (m, s) = spread(g.stat(|r| r.mbit_per_s), 0);
                    let share = g
                        .stat(|r| r.link1_share)
                        .map_or("-".into(), |x| format!("{:.0} %", x.0 * 100.0));
                    format!(
                        " {} | {} | {m} | {s} | {share} | {} | {} |",
                        or_dash(g.path_manager),
                        g.scheduler,
                        subflows(g),
                        g.runs()
                    )
                }
                Scenario::Overhead => {
                    let (m, s) = spread(g.stat(|r| r.mbit_per_s), 0);
                    let cpu = g
                        .stat(|r| r.cpu_s_per_gb)
                        .map_or("-".into(), |x| format!("{:.2}", x.0));
                    format!(" {m} | {s} | {cpu} | {} | {} |", subflows(g), g.runs())
                }
                Scenario::Conns => {
                    let n = |f: fn(&Record) -> Option<f64>, digits: usize| {
                        g.stat(f)
                            .map_or("-".into(), |x| format!("{:.digits$}", x.0))
                    };
                    let threads = n(|r| r.threads.map(|t| t as f64), 0);
                    let kernel = n(|r| r.kernel_tasks.map(|t| t as f64), 0);
                    let own = n(
                        |r| {
                            r.threads
                                .zip(r.kernel_tasks)
                                .map(|(t, k)| t.saturating_sub(k) as f64)
                        },
                        0,
                    );
                    format!(
                        " {threads} | {kernel} | {own} | {} | {} | {} | {} | {} | {} | {} |",
                        n(|r| r.rss_kib_per_conn, 1),
                        n(|r| r.seconds, 2),
                        n(|r| r.median_us, 0),
                        n(|r| r.p99_us, 0),
                        subflows(g),
                        all_true(g, |r| r.intact),
                        g.runs()
                    )
                }
                Scenario::Rr => {
                    let us = |f: fn(&Record) -> Option<f64>| {
                        g.stat(f).map_or("-".into(), |x| format!("{:.0}", x.0))
                    };
                    let over = g
                        .ok()
                        .iter()
                        .filter_map(|r| r.over_10ms.zip(r.samples))
                        .fold(None, |acc: Option<(u64, u64)>, (o, n)| {
                            let (ao, an) = acc.unwrap_or((0, 0));
                            Some((ao + o, an + n))
                        })
                        .map_or("-".into(), |(o, n)| format!("{o} of {n}"));
                    format!(
                        " {} | {} | {} | {over} | {} | {} | {} | {} |",
                        us(|r| r.median_us),
                        us(|r| r.p99_us),
                        us(|r| r.max_us),
                        us(|r| r.per_s),
                        subflows(g),
                        all_true(g, |r| r.intact),
                        g.runs()
                    )
                }
            };
            let _ = writeln!(md, "{lead}{row}");
        }
        let _ = writeln!(md);
    }
    let bars = ratios(&groups);
    if !bars.is_empty() {
        let _ = writeln!(md, "### ratios (medians, same run)\n");
        for b in bars {
            let _ = writeln!(md, "- {b}");
        }
    }
    md
}

/// The link emulator's CPU use per testbed with emulated links (empty
/// when there were none): whether the emulator itself was a bottleneck.
pub fn emulator_markdown(notes: &[(String, dropshim_testbed::EmulatorCpu)]) -> String {
    if notes.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "\n## Link emulator CPU\n\nUser + system time of the UML link emulator's host processes per testbed, over the testbed's life; near 100 % of one CPU means the emulator, not the stack, set the pace.\n\n\
         | testbed | instance | CPU s | user s | sys s | over s | % of one CPU |\n|---|---|---|---|---|---|---|\n",
    );
    for (label, c) in notes {
        let _ = writeln!(
            s,
            "| {label} | {} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} |",
            c.instance,
            c.cpu_s(),
            c.user_s,
            c.sys_s,
            c.elapsed_s,
            c.pct_of_one_cpu()
        );
    }
    s
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// The design's bars, from the medians.
fn ratios(groups: &[Group]) -> Vec<String> {
    let med = |scenario: Scenario, setting: &str, stack: Stack, f: fn(&Record) -> Option<f64>| {
        groups
            .iter()
            .find(|g| {
                g.scenario == scenario
                    && g.setting == setting
                    && g.stack == stack
                    && (g.path_manager.is_empty() || g.path_manager == "kernel")
            })
            .and_then(|g| g.stat(f))
            .map(|s| s.0)
    };
    let mbit: fn(&Record) -> Option<f64> = |r| r.mbit_per_s;
    let mut out = Vec::new();
    let mut seen: Vec<(Scenario, &str)> = Vec::new();
    for g in groups {
        if seen.contains(&(g.scenario, g.setting)) {
            continue;
        }
        seen.push((g.scenario, g.setting));
        let (sc, set) = (g.scenario, g.setting);
        let native = med(sc, set, Stack::Native, mbit);
        match sc {
            Scenario::Schedulers => {
                let mut path_managers: Vec<&str> = Vec::new();
                for g in groups
                    .iter()
                    .filter(|g| g.scenario == sc && g.setting == set)
                {
                    if !path_managers.contains(&g.path_manager) {
                        path_managers.push(g.path_manager);
                    }
                }
                for stack in [Stack::Uml, Stack::Lkl] {
                    for &pm in &path_managers {
                        let of = |sched: &str| {
                            groups
                                .iter()
                                .find(|g| {
                                    g.scenario == sc
                                        && g.setting == set
                                        && g.stack == stack
                                        && g.path_manager == pm
                                        && g.scheduler == sched
                                })
                                .and_then(|g| g.stat(mbit))
                                .map(|s| s.0)
                        };
                        let Some(base) = of("default") else { continue };
                        let under = if pm == "kernel" {
                            String::new()
                        } else {
                            format!(" ({pm})")
                        };
                        for sched in dropshim_conf::BUILT_SCHEDULERS.iter().skip(1) {
                            if let Some(x) = of(sched) {
                                out.push(format!(
                                    "schedulers {set}: {} {sched} / default goodput{under} = {:.2}",
                                    stack.name(),
                                    x / base
                                ));
                            }
                        }
                    }
                }
            }
            Scenario::TwoGateways | Scenario::Overhead => {
                let name = format!("{} ({set})", sc.name());
                if let (Some(n), Some(p)) = (native, med(sc, set, Stack::Mptcpize, mbit)) {
                    out.push(format!(
                        "{name}: dropshim native / mptcpize = {:.3} (bar >= 0.99)",
                        n / p
                    ));
                }
                if sc == Scenario::TwoGateways {
                    if let (Some(n), Some(t)) = (native, med(sc, set, Stack::Tcp, mbit)) {
                        out.push(format!(
                            "{name}: MPTCP (dropshim native) / TCP one link = {:.3} (bar >= 1.9)",
                            n / t
                        ));
                    }
                }
                for (stack, bar) in [
                    (
                        Stack::Uml,
                        if sc == Scenario::TwoGateways {
                            0.95
                        } else {
                            0.5
                        },
                    ),
                    (
                        Stack::Lkl,
                        if sc == Scenario::TwoGateways {
                            0.95
                        } else {
                            0.7
                        },
                    ),
                ] {
                    if let (Some(n), Some(x)) = (native, med(sc, set, stack, mbit)) {
                        out.push(format!(
                            "{name}: {} / native = {:.3} (bar >= {bar})",
                            stack.name(),
                            x / n
                        ));
                    }
                }
            }
            Scenario::LocalCache => {
                let secs: fn(&Record) -> Option<f64> = |r| r.seconds;
                if let (Some(t), Some(n)) = (
                    med(sc, set, Stack::Tcp, secs),
                    med(sc, set, Stack::Native, secs),
                ) {
                    out.push(format!(
                        "local-cache {set}: download time TCP / MPTCP (dropshim native) = {:.2}",
                        t / n
                    ));
                }
            }
            Scenario::Rr => out.extend(rr_ratios(set, |stack, f| med(sc, set, stack, f))),
            Scenario::Conns => {
                let own: fn(&Record) -> Option<f64> = |r| {
                    r.threads
                        .zip(r.kernel_tasks)
                        .map(|(t, k)| t.saturating_sub(k) as f64)
                };
                if let Some(t) = med(sc, set, Stack::Lkl, own) {
                    out.push(format!(
                        "conns {set}: lkl server's host threads beyond the library kernel's tasks = {t:.0} (bar <= 16)"
                    ));
                }
            }
            Scenario::DropHome => {
                if let Some(t) = med(sc, set, Stack::Tcp, mbit) {
                    for stack in [Stack::Native, Stack::Uml, Stack::Lkl] {
                        if let Some(x) = med(sc, set, stack, mbit) {
                            out.push(format!(
                                "drop-home {set}: goodput {} / TCP best single path = {:.2}",
                                stack.name(),
                                x / t
                            ));
                        }
                    }
                }
            }
            Scenario::DropMesh => {
                if let Some(x) = med(sc, set, Stack::Mixed, mbit) {
                    out.push(format!("drop-mesh {set}: aggregate goodput {x:.0} Mbit/s"));
                }
            }
            Scenario::Handover => {
                // one line per stack, and per scheduler where the setting
                // runs several (the uploads from a uml or lkl device)
                let rows: Vec<&Group> = groups
                    .iter()
                    .filter(|g| {
                        g.scenario == sc
                            && g.setting == set
                            && matches!(g.stack, Stack::Native | Stack::Uml | Stack::Lkl)
                    })
                    .collect();
                let several = rows
                    .iter()
                    .any(|g| g.stack == rows[0].stack && g.scheduler != rows[0].scheduler);
                for g in rows {
                    if let Some((s, _, _)) = g.stat(|r| r.stall_s) {
                        let sched = if several {
                            format!(" {}", g.scheduler)
                        } else {
                            String::new()
                        };
                        out.push(format!(
                            "handover: {}{sched} stall = {s:.2} s (bar < 1.5 s, completed and byte-exact)",
                            g.stack.label()
                        ));
                    }
                }
            }
        }
    }
    out
}

/// The rr bars: round trips within 3x native (median) and under 1 ms
/// (p99); many small requests at least half (lkl) or a fifth (uml) of
/// native's rate.
fn rr_ratios(
    set: &str,
    med: impl Fn(Stack, fn(&Record) -> Option<f64>) -> Option<f64>,
) -> Vec<String> {
    let mut out = Vec::new();
    let median: fn(&Record) -> Option<f64> = |r| r.median_us;
    let p99: fn(&Record) -> Option<f64> = |r| r.p99_us;
    let per_s: fn(&Record) -> Option<f64> = |r| r.per_s;
    for stack in [Stack::Uml, Stack::Lkl] {
        if set.ends_with("round trip") {
            if let (Some(n), Some(x)) = (med(Stack::Native, median), med(stack, median)) {
                let p = med(stack, p99)
                    .map_or(String::new(), |p| format!(", p99 {:.0} us (bar < 1000)", p));
                out.push(format!(
                    "rr {set}: {} / native median = {:.2} (bar <= 3){p}",
                    stack.name(),
                    x / n
                ));
            }
        } else if set.contains("connection") {
            if let (Some(n), Some(x)) = (med(Stack::Native, per_s), med(stack, per_s)) {
                let bar = if stack == Stack::Lkl { 0.5 } else { 0.2 };
                out.push(format!(
                    "rr {set}: {} / native transactions = {:.2} (bar >= {bar})",
                    stack.name(),
                    x / n
                ));
            }
        } else if let (Some(n), Some(x)) = (med(Stack::Native, median), med(stack, median)) {
            out.push(format!(
                "rr {set}: {} {:.0} us, native {:.0} us",
                stack.name(),
                x,
                n
            ));
        }
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or(String::new(), |x| x.to_string())
}

fn optf(v: Option<f64>, digits: usize) -> String {
    v.map_or(String::new(), |x| format!("{x:.digits$}"))
}

pub const CSV_HEADER: &str = "scenario,setting,stack,path_manager,scheduler,run,status,reason,mbit_per_s,seconds,bytes,cpu_s_per_gb,subflows,stall_s,completed,intact,median_us,p99_us,max_us,over_10ms,samples,per_s,threads,kernel_tasks,rss_kib_per_conn,link1_share";

/// Every record, one row each (handover timelines stay in the JSON).
pub fn csv(records: &[Record]) -> String {
    let mut s = String::from(CSV_HEADER);
    s.push('\n');
    for r in records {
        let status = match r.status {
            Status::Ok => "ok",
            Status::Skipped => "skipped",
            Status::Failed => "failed",
        };
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            r.scenario.name(),
            csv_field(&r.setting),
            r.stack.name(),
            csv_field(&r.path_manager),
            csv_field(&r.scheduler),
            r.run,
            status,
            csv_field(r.reason.as_deref().unwrap_or("")),
            optf(r.mbit_per_s, 1),
            optf(r.seconds, 4),
            opt(r.bytes),
            optf(r.cpu_s_per_gb, 3),
            optf(r.subflows, 2),
            optf(r.stall_s, 3),
            opt(r.completed),
            opt(r.intact),
            optf(r.median_us, 1),
            optf(r.p99_us, 1),
            optf(r.max_us, 1),
            opt(r.over_10ms),
            opt(r.samples),
            optf(r.per_s, 1),
            opt(r.threads),
            opt(r.kernel_tasks),
            optf(r.rss_kib_per_conn, 1),
            optf(r.link1_share, 3),
        );
    }
    s
}

/// run-NNN-<scenario>-<stack>.json per record, results.csv, summary.md.
pub fn write_all(dir: &Path, records: &[Record], summary: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (i, r) in records.iter().enumerate() {
        let path = dir.join(format!(
            "run-{:03}-{}-{}.json",
            i + 1,
            r.scenario.name(),
            r.stack.name()
        ));
        std::fs::write(&path, serde_json::to_string_pretty(r)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    std::fs::write(dir.join("results.csv"), csv(records))
        .with_context(|| format!("writing {}/results.csv", dir.display()))?;
    std::fs::write(dir.join("summary.md"), summary)
        .with_context(|| format!("writing {}/summary.md", dir.display()))?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn rec(scenario: Scenario, stack: Stack, setting: &str, run: u32, mbit: f64) -> Record {
        let mut r = Record::new(scenario, stack, setting, run);
        r.mbit_per_s = Some(mbit);
        r.seconds = Some(8000.0 / mbit);
        r.subflows = Some(if stack == Stack::Tcp { 0.0 } else { 2.0 });
        r.cpu_s_per_gb = Some(1.5);
        r
    }

    pub fn sample() -> Vec<Record> {
        let tg = Scenario::TwoGateways;
        let set = "2 x 1000 Mbit/s";
        let mut v = vec![
            rec(tg, Stack::Tcp, set, 1, 950.0),
            rec(tg, Stack::Native, set, 1, 1880.0),
            rec(tg, Stack::Mptcpize, set, 1, 1870.0),
            rec(tg, Stack::Tcp, set, 2, 940.0),
            rec(tg, Stack::Native, set, 2, 1860.0),
            rec(tg, Stack::Mptcpize, set, 2, 1880.0),
            rec(tg, Stack::Tcp, set, 3, 960.0),
            rec(tg, Stack::Native, set, 3, 1870.0),
            rec(tg, Stack::Mptcpize, set, 3, 1875.0),
            Record::new(tg, Stack::Lkl, set, 0).skipped("run backend-lkl/build-lkl.sh"),
        ];
        let mut us = Record::new(tg, Stack::Native, set, 0).skipped("needs a daemon, a, \"b\"");
        us.path_manager = "userspace".into();
        v.push(us);
        let mut h = Record::new(Scenario::Handover, Stack::Native, "40 MB", 1);
        h.stall_s = Some(0.42);
        h.completed = Some(true);
        h.intact = Some(true);
        h.subflows = Some(2.0);
        h.timeline = vec![(0.1, 1000), (0.2, 2000)];
        h.outage = Some((0.05, 0.15));
        v.push(h);
        let mut hu = Record::new(Scenario::Handover, Stack::Uml, "40 MB", 1);
        hu.stall_s = Some(16.0);
        hu.completed = Some(false);
        hu.intact = Some(false);
        hu.subflows = Some(1.0);
        hu.reason = Some("timed out".into());
        v.push(hu);
        let mut lc = Record::new(Scenario::LocalCache, Stack::Tcp, "10 MB", 1);
        lc.seconds = Some(0.09);
        lc.mbit_per_s = Some(888.0);
        lc.intact = Some(true);
        lc.subflows = Some(0.0);
        v.push(lc);
        v.push(
            Record::new(Scenario::LocalCache, Stack::Tcp, "10 MB", 2)
                .failed(&anyhow::anyhow!("no byte arrived")),
        );
        let failed = Record::new(Scenario::LocalCache, Stack::Native, "10 MB", 1)
            .failed(&anyhow::anyhow!("curl failed | badly"));
        v.push(failed);
        v
    }

    #[test]
    fn emulator_cpu_table_only_when_links_were_emulated() {
        assert_eq!(emulator_markdown(&[]), "");
        let c = dropshim_testbed::EmulatorCpu {
            instance: 0,
            processes: 3,
            user_s: 1.5,
            sys_s: 0.5,
            elapsed_s: 8.0,
        };
        let s = emulator_markdown(&[("drop-home (tcp, native)".into(), c)]);
        assert!(s.contains("## Link emulator CPU"), "{s}");
        assert!(
            s.contains("| drop-home (tcp, native) | 0 | 2.00 | 1.50 | 0.50 | 8.0 | 25.0 |"),
            "{s}"
        );
    }

    #[test]
    fn summary_has_medians_spread_skips_and_bars() {
        let md = markdown(&sample());
        let expect = [
            "### two-gateways",
            "| 2 x 1000 Mbit/s | TCP, one link | - | - | 950 | 940..960 | 0 (TCP) | 3 |",
            "| 2 x 1000 Mbit/s | MPTCP via dropshim (native) | kernel | default | 1870 | 1860..1880 | 2.0 | 3 |",
            "| 2 x 1000 Mbit/s | MPTCP via mptcpize | kernel | default | 1875 | 1870..1880 | 2.0 | 3 |",
            "| 2 x 1000 Mbit/s | MPTCP via dropshim (native) | userspace | default | skipped: needs a daemon, a, \"b\" | | | |",
            "| 2 x 1000 Mbit/s | MPTCP via dropshim (lkl) | kernel | default | skipped: run backend-lkl/build-lkl.sh | | | |",
            "| 10 MB | TCP, one link | 0.090 | 0.090..0.090 | 888 | 0 (TCP) | 1/2 | 1 ok, 1 failed (no byte arrived) |",
            "| 10 MB | MPTCP via dropshim (native) | failed: curl failed / badly | | | | | |",
            "| 40 MB | MPTCP via dropshim (native) | default | 0.42 | 0.42..0.42 | 1/1 | 1/1 | 2.0 | 1 |",
            "| 40 MB | MPTCP via dropshim (uml) | default | 16.00 | 16.00..16.00 | 0/1 (timed out) | 0/1 | 1.0 | 1 |",
            "dropshim native / mptcpize = 0.997 (bar >= 0.99)",
            "MPTCP (dropshim native) / TCP one link = 1.968 (bar >= 1.9)",
            "MPTCP via dropshim (native) stall = 0.42 s",
        ];
        for e in expect {
            assert!(md.contains(e), "missing {e:?} in\n{md}");
        }
        // Every table row has as many cells as its header.
        for table in md.split("### ").skip(1) {
            let rows: Vec<&str> = table.lines().filter(|l| l.starts_with('|')).collect();
            if rows.is_empty() {
                continue;
            }
            let n = rows[0].matches('|').count();
            for r in &rows {
                assert_eq!(r.matches('|').count(), n, "row {r:?} in\n{table}");
            }
        }
        // The userspace row sorts after the kernel row of the same stack.
        let k = md.find("| kernel | default | 1870").unwrap();
        let u = md.find("| userspace |").unwrap();
        assert!(k < u);
    }

    /// A 10-run handover table with one failed run: the failure counts
    /// against completed and intact, in the table, the CSV and the JSON.
    #[test]
    fn scheduler_rows_show_link_1_share_and_ratios_to_default() {
        let rec = |stack, sched: &str, mbit, share| {
            let mut r = Record::new(Scenario::Schedulers, stack, "links wifi,lte", 1);
            r.path_manager = "kernel".into();
            r.scheduler = sched.into();
            r.mbit_per_s = Some(mbit);
            r.link1_share = Some(share);
            r.subflows = Some(2.0);
            r
        };
        let userspace = |sched: &str, mbit| {
            let mut r = rec(Stack::Uml, sched, mbit, 0.8);
            r.path_manager = "userspace fullmesh".into();
            r
        };
        let mut skipped = Record::new(Scenario::Schedulers, Stack::Lkl, "links wifi,lte", 0)
            .skipped("run backend-lkl/build-lkl.sh");
        skipped.path_manager = "kernel".into();
        skipped.scheduler = "default".into();
        let v = vec![
            rec(Stack::Uml, "default", 54.0, 0.85),
            rec(Stack::Uml, "roundrobin", 18.0, 0.53),
            userspace("default", 50.0),
            userspace("blest", 40.0),
            skipped,
        ];
        let md = markdown(&v);
        for e in [
            "| links wifi,lte | MPTCP via dropshim (uml) | kernel | roundrobin | 18 | 18..18 | 53 % | 2.0 | 1 |",
            "| links wifi,lte | MPTCP via dropshim (uml) | userspace fullmesh | blest | 40 | 40..40 | 80 % | 2.0 | 1 |",
            "| links wifi,lte | MPTCP via dropshim (lkl) | kernel | default | skipped: run backend-lkl/build-lkl.sh | | | | |",
            "uml roundrobin / default goodput = 0.33",
            "uml blest / default goodput (userspace fullmesh) = 0.80",
        ] {
            assert!(md.contains(e), "missing {e:?} in\n{md}");
        }
        assert!(csv(&v)
            .lines()
            .nth(2)
            .is_some_and(|l| l.ends_with(",0.530")));
    }

    #[test]
    fn handover_uploads_have_a_row_and_a_stall_line_per_scheduler() {
        let up = |stack, sched: &str, stall| {
            let mut r = Record::new(Scenario::Handover, stack, "upload 40 MB", 1);
            r.scheduler = sched.into();
            r.stall_s = Some(stall);
            r.completed = Some(true);
            r.intact = Some(true);
            r.subflows = Some(2.0);
            r
        };
        let v = vec![
            up(Stack::Lkl, "default", 0.61),
            up(Stack::Lkl, "redundant", 0.05),
        ];
        let md = markdown(&v);
        for e in [
            "| upload 40 MB | MPTCP via dropshim (lkl) | default | 0.61 | 0.61..0.61 | 1/1 | 1/1 | 2.0 | 1 |",
            "| upload 40 MB | MPTCP via dropshim (lkl) | redundant | 0.05 | 0.05..0.05 | 1/1 | 1/1 | 2.0 | 1 |",
            "handover: MPTCP via dropshim (lkl) default stall = 0.61 s",
            "handover: MPTCP via dropshim (lkl) redundant stall = 0.05 s",
        ] {
            assert!(md.contains(e), "missing {e:?} in\n{md}");
        }
    }

    #[test]
    fn completed_and_intact_are_out_of_the_runs_attempted() {
        let mut v = Vec::new();
        for run in 1..=10 {
            let r = Record::new(Scenario::Handover, Stack::Uml, "40 MB", run);
            if run == 7 {
                v.push(r.failed(&anyhow::anyhow!("the download stopped")));
                continue;
            }
            let mut r = r;
            r.stall_s = Some(0.3);
            r.completed = Some(true);
            r.intact = Some(true);
            r.subflows = Some(2.0);
            v.push(r);
        }
        let md = markdown(&v);
        let row = "| 40 MB | MPTCP via dropshim (uml) | default | 0.30 | 0.30..0.30 | 9/10 | 9/10 | 2.0 | 9 ok, 1 failed (the download stopped) |";
        assert!(md.contains(row), "missing {row:?} in\n{md}");
        let csv = csv(&v);
        let failed = csv
            .lines()
            .find(|l| l.contains(",7,failed,"))
            .expect("the failed run has a CSV row");
        assert!(
            failed.contains(",false,false,"),
            "the failed run must say not completed, not intact: {failed}"
        );
        let json: serde_json::Value = serde_json::to_value(&v[6]).unwrap();
        assert_eq!(json["completed"], false, "{json}");
        assert_eq!(json["intact"], false, "{json}");
    }

    fn rr(stack: Stack, setting: &str, median: Option<f64>, per_s: Option<f64>) -> Record {
        let mut r = Record::new(Scenario::Rr, stack, setting, 1);
        r.median_us = median;
        r.p99_us = median.map(|m| m * 2.0);
        r.max_us = median.map(|m| m * 10.0);
        r.over_10ms = median.map(|_| 1);
        r.samples = Some(1000);
        r.per_s = per_s;
        r.subflows = Some(2.0);
        r.intact = Some(true);
        r
    }

    #[test]
    fn rr_rows_and_ratios_to_native() {
        let rt = "64 B round trip";
        let tps = "64 B, 50 connections";
        let recs = vec![
            rr(Stack::Native, rt, Some(10.0), None),
            rr(Stack::Lkl, rt, Some(40.0), None),
            rr(Stack::Uml, rt, Some(130.0), None),
            rr(Stack::Native, tps, None, Some(100_000.0)),
            rr(Stack::Lkl, tps, None, Some(20_000.0)),
            Record::new(Scenario::Rr, Stack::Uml, tps, 1).failed(&anyhow::anyhow!("probe died")),
        ];
        let md = markdown(&recs);
        assert!(md.contains("### rr"), "{md}");
        assert!(
            md.contains("| 64 B round trip | MPTCP via dropshim (lkl) | 40 | 80 | 400 | 1 of 1000 | - | 2.0 | 1/1 | 1 |"),
            "{md}"
        );
        assert!(
            md.contains("lkl / native median = 4.00 (bar <= 3), p99 80 us"),
            "{md}"
        );
        assert!(md.contains("uml / native median = 13.00"), "{md}");
        assert!(
            md.contains("lkl / native transactions = 0.20 (bar >= 0.5)"),
            "{md}"
        );
        // A failed run is a row that says so, never a silent gap.
        assert!(
            md.contains("| 64 B, 50 connections | MPTCP via dropshim (uml) | failed: probe died"),
            "{md}"
        );
        let csv = csv(&recs);
        assert!(
            csv.lines()
                .nth(2)
                .unwrap_or("")
                .ends_with(",40.0,80.0,400.0,1,1000,,,,,"),
            "{csv}"
        );
    }

    #[test]
    fn csv_has_one_row_per_record_and_quotes_reasons() {
        let recs = sample();
        let csv = csv(&recs);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(lines.len(), recs.len() + 1);
        assert_eq!(
            lines[1],
            "two-gateways,2 x 1000 Mbit/s,tcp,,,1,ok,,950.0,8.4211,,1.500,0.00,,,,,,,,,,,,,"
        );
        assert!(csv.contains(
            "two-gateways,2 x 1000 Mbit/s,native,userspace,default,0,skipped,\"needs a daemon, a, \"\"b\"\"\","
        ), "{csv}");
        assert!(
            csv.contains("handover,40 MB,native,kernel,default,1,ok,,,,,,2.00,0.420,true,true"),
            "{csv}"
        );
    }

    #[test]
    fn write_all_writes_json_per_record() {
        let dir = tempfile::tempdir().unwrap();
        let recs = sample();
        write_all(dir.path(), &recs, "summary").unwrap();
        let json =
            std::fs::read_to_string(dir.path().join("run-012-handover-native.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["stall_s"], 0.42);
        assert_eq!(v["timeline"][1][1], 2000);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("summary.md")).unwrap(),
            "summary"
        );
        let n = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(n, recs.len() + 2);
    }
}
