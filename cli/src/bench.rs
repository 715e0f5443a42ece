//! `dropshim bench`: the study's throughput experiment on the
//! two-gateways testbed, side by side in one run: plain TCP over one link,
//! MPTCP through the shim (native backend), and MPTCP under mptcpize (the
//! peer of the native backend), shaped and unshaped.
//!
//! Each measurement is iperf3 between the two gateway namespaces; MPTCP
//! use is read from the server namespace's MPTcpExt counters, so a run
//! that silently fell back to TCP shows up as such. Runs are interleaved
//! (mode A, B, C, A, B, C...) so drift hits every mode alike.

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use dropshim_testbed::{Options, Spec, Testbed};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

#[derive(ClapArgs, Clone)]
pub struct Args {
    /// Scenarios to run: two-gateways (shaped at --rate), overhead (unshaped).
    #[arg(long, value_delimiter = ',', default_value = "two-gateways,overhead")]
    pub scenario: Vec<Scenario>,
    /// Link rate in Mbit/s for the shaped scenario.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Repetitions of each measurement (median and spread are reported).
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// Seconds per iperf3 measurement.
    #[arg(long, default_value_t = 10)]
    pub duration: u32,
    /// One short run of everything (smoke test).
    #[arg(long)]
    pub quick: bool,
    /// Folder for results (JSON per run, CSV, Markdown summary).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Path to libdropshim.so (default: next to this executable).
    #[arg(long)]
    pub library: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    TwoGateways,
    Overhead,
}

/// How the two iperf3 ends are run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Plain TCP, no shim: one link.
    Tcp,
    /// LD_PRELOAD=libdropshim.so, no configuration (native backend).
    Shim,
    /// mptcpize run (mptcpd's LD_PRELOAD wrapper).
    Mptcpize,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Tcp => "TCP, one link",
            Mode::Shim => "MPTCP via dropshim (native)",
            Mode::Mptcpize => "MPTCP via mptcpize",
        }
    }
}

/// One iperf3 measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub scenario: Scenario,
    pub mode: Mode,
    pub run: u32,
    pub rate_mbit: Option<u32>,
    pub mbit_per_s: f64,
    pub bytes: u64,
    /// Client plus server CPU time per GB moved.
    pub cpu_s_per_gb: f64,
    /// MPTCP connections the server saw (iperf3 opens two: control, data).
    pub mptcp_connections: u64,
    /// Extra subflows that joined those connections.
    pub joins: u64,
}

impl Sample {
    /// Subflows per MPTCP connection, the initial one included.
    pub fn subflows(&self) -> f64 {
        if self.mptcp_connections == 0 {
            0.0
        } else {
            1.0 + self.joins as f64 / self.mptcp_connections as f64
        }
    }
}

pub fn main(mut args: Args) -> Result<ExitCode> {
    if args.quick {
        args.runs = 1;
        args.duration = 3;
    }
    let library = crate::run::library_path(args.library.clone())?;
    require_tools(&["iperf3", "mptcpize", "ip", "tc"])?;
    let modes = [Mode::Tcp, Mode::Shim, Mode::Mptcpize];
    let total = args.scenario.len() as u32 * args.runs * modes.len() as u32;
    eprintln!(
        "dropshim bench: {total} iperf3 runs of {} s each, about {} s in all",
        args.duration,
        total * (args.duration + 2)
    );
    let mut samples = Vec::new();
    for &scenario in &args.scenario {
        let rate = match scenario {
            Scenario::TwoGateways => Some(args.rate),
            Scenario::Overhead => None,
        };
        let spec = Spec::builtin("two-gateways")?;
        let tb = Testbed::up(
            &spec,
            &Options {
                rate_mbit: rate,
                ..Default::default()
            },
        )?;
        for run in 1..=args.runs {
            for mode in modes {
                let done = samples.len() + 1;
                eprintln!("[{done}/{total}] {scenario:?} run {run}: {}", mode.label());
                let sample = measure(&tb, &library, scenario, mode, run, rate, args.duration)?;
                samples.push(sample);
            }
        }
    }
    let summary = summarize(&samples);
    print!("{summary}");
    if let Some(dir) = &args.out {
        write_results(dir, &samples, &summary)?;
        eprintln!("results in {}", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn require_tools(tools: &[&str]) -> Result<()> {
    for tool in tools {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            bail!("`{tool}` not found; install it (scripts/setup.sh installs everything the benchmarks need)");
        }
    }
    Ok(())
}

/// A command in `node`, wrapped the way `mode` runs programs.
fn wrapped(
    tb: &Testbed,
    node: &str,
    mode: Mode,
    library: &Path,
    args: &[String],
) -> Result<Command> {
    let mut cmd = match mode {
        Mode::Mptcpize => {
            let mut c = tb.command(node, "mptcpize")?;
            c.args(["run", "iperf3"]);
            c
        }
        Mode::Tcp | Mode::Shim => tb.command(node, "iperf3")?,
    };
    cmd.args(args);
    for var in [
        "LD_PRELOAD",
        "DROPSHIM_CONFIG",
        "DROPSHIM_BACKEND",
        "DROPSHIM_LOG",
    ] {
        cmd.env_remove(var);
    }
    if mode == Mode::Shim {
        cmd.env("LD_PRELOAD", library);
    }
    Ok(cmd)
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn measure(
    tb: &Testbed,
    library: &Path,
    scenario: Scenario,
    mode: Mode,
    run: u32,
    rate_mbit: Option<u32>,
    duration: u32,
) -> Result<Sample> {
    let server_ns = tb.netns("gw2")?.to_string();
    let addr = tb.addr4("gw2", 1)?.to_string();
    let port = (5201 + (std::process::id() % 1000) as u16).to_string();
    let before = mptcp_counters(&server_ns)?;
    let server_args = ["-s", "-1", "-B", &addr, "-p", &port].map(String::from);
    let server = wrapped(tb, "gw2", mode, library, &server_args)?
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -s")?;
    let _server = KillOnDrop(server);
    wait_listening(&server_ns, &port)?;
    let client_args =
        ["-c", &addr, "-p", &port, "-t", &duration.to_string(), "-J"].map(String::from);
    let mut client = wrapped(tb, "gw1", mode, library, &client_args)?;
    let out = dropshim_testbed::run_with_timeout(
        &mut client,
        Duration::from_secs(u64::from(duration) + 30),
    )?;
    if !out.status.success() {
        bail!(
            "iperf3 client ({}) failed: {}{}",
            mode.label(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing iperf3 -J output")?;
    let received = &report["end"]["sum_received"];
    let bits = received["bits_per_second"]
        .as_f64()
        .context("iperf3 reported no throughput")?;
    let bytes = received["bytes"].as_u64().unwrap_or(0);
    let secs = received["seconds"].as_f64().unwrap_or(f64::from(duration));
    let cpu = &report["end"]["cpu_utilization_percent"];
    let cpu_pct =
        cpu["host_total"].as_f64().unwrap_or(0.0) + cpu["remote_total"].as_f64().unwrap_or(0.0);
    let gb = bytes as f64 / 1e9;
    let after = mptcp_counters(&server_ns)?;
    let diff = |name: &str| {
        after
            .get(name)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before.get(name).copied().unwrap_or(0))
    };
    Ok(Sample {
        scenario,
        mode,
        run,
        rate_mbit,
        mbit_per_s: bits / 1e6,
        bytes,
        cpu_s_per_gb: if gb > 0.0 {
            cpu_pct / 100.0 * secs / gb
        } else {
            0.0
        },
        mptcp_connections: diff("MPCapableSYNRX"),
        joins: diff("MPJoinSynRx"),
    })
}

/// Waits until the server listens (bounded; checked with ss, not slept on).
fn wait_listening(netns: &str, port: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut pause = Duration::from_millis(2);
    while std::time::Instant::now() < deadline {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                netns,
                "ss",
                "-Hltn",
                &format!("sport = :{port}"),
            ])
            .output()?;
        if !out.stdout.is_empty() {
            return Ok(());
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
    bail!("iperf3 server did not start listening on port {port} within 10 s")
}

pub fn mptcp_counters(netns: &str) -> Result<HashMap<String, u64>> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "cat", "/proc/net/netstat"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("MPTcpExt:"))
        .collect();
    let mut map = HashMap::new();
    if let [names, values, ..] = lines.as_slice() {
        for (n, v) in names
            .split_whitespace()
            .zip(values.split_whitespace())
            .skip(1)
        {
            map.insert(n.to_string(), v.parse().unwrap_or(0));
        }
    }
    Ok(map)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The Markdown summary: one row per scenario and mode, then the ratios
/// the design's bars are about.
pub fn summarize(samples: &[Sample]) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| scenario | mode | Mbit/s (median) | min..max | subflows/conn | CPU s/GB | runs |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    let mut medians: HashMap<(String, Mode), f64> = HashMap::new();
    let mut scenarios: Vec<Scenario> = Vec::new();
    for s in samples {
        if !scenarios.contains(&s.scenario) {
            scenarios.push(s.scenario);
        }
    }
    for &scenario in &scenarios {
        for mode in [Mode::Tcp, Mode::Shim, Mode::Mptcpize] {
            let rows: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.scenario == scenario && s.mode == mode)
                .collect();
            if rows.is_empty() {
                continue;
            }
            let tput: Vec<f64> = rows.iter().map(|s| s.mbit_per_s).collect();
            let (lo, hi) = tput
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
            let med = median(tput);
            medians.insert((format!("{scenario:?}"), mode), med);
            let name = match (scenario, rows[0].rate_mbit) {
                (_, Some(rate)) => format!("two-gateways, 2 x {rate} Mbit/s"),
                (_, None) => "two-gateways, unshaped".to_string(),
            };
            let _ = writeln!(
                md,
                "| {name} | {} | {med:.0} | {lo:.0}..{hi:.0} | {:.1} | {:.2} | {} |",
                mode.label(),
                median(rows.iter().map(|s| s.subflows()).collect()),
                median(rows.iter().map(|s| s.cpu_s_per_gb).collect()),
                rows.len()
            );
        }
    }
    let _ = writeln!(md);
    for &scenario in &scenarios {
        let key = |m| medians.get(&(format!("{scenario:?}"), m)).copied();
        if let (Some(shim), Some(mptcpize)) = (key(Mode::Shim), key(Mode::Mptcpize)) {
            let _ = writeln!(
                md,
                "- {scenario:?}: dropshim / mptcpize = {:.3} (bar >= 0.99)",
                shim / mptcpize
            );
        }
        if let (Some(shim), Some(tcp), Scenario::TwoGateways) =
            (key(Mode::Shim), key(Mode::Tcp), scenario)
        {
            let _ = writeln!(
                md,
                "- {scenario:?}: MPTCP (dropshim) / TCP = {:.3} (bar >= 1.9)",
                shim / tcp
            );
        }
    }
    md
}

fn write_results(dir: &Path, samples: &[Sample], summary: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut csv = String::from(
        "scenario,mode,run,rate_mbit,mbit_per_s,bytes,cpu_s_per_gb,mptcp_connections,joins\n",
    );
    for (i, s) in samples.iter().enumerate() {
        let json = serde_json::to_string_pretty(s)?;
        std::fs::write(dir.join(format!("run-{:03}.json", i + 1)), json)?;
        let _ = writeln!(
            csv,
            "{:?},{:?},{},{},{:.1},{},{:.3},{},{}",
            s.scenario,
            s.mode,
            s.run,
            s.rate_mbit.map_or(String::new(), |r| r.to_string()),
            s.mbit_per_s,
            s.bytes,
            s.cpu_s_per_gb,
            s.mptcp_connections,
            s.joins
        );
    }
    std::fs::write(dir.join("results.csv"), csv)?;
    std::fs::write(dir.join("summary.md"), summary)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(mode: Mode, mbit: f64) -> Sample {
        Sample {
            scenario: Scenario::TwoGateways,
            mode,
            run: 1,
            rate_mbit: Some(1000),
            mbit_per_s: mbit,
            bytes: 1,
            cpu_s_per_gb: 1.0,
            mptcp_connections: if mode == Mode::Tcp { 0 } else { 2 },
            joins: if mode == Mode::Tcp { 0 } else { 2 },
        }
    }

    #[test]
    fn summary_reports_medians_and_the_bar_ratios() {
        let samples = vec![
            sample(Mode::Tcp, 950.0),
            sample(Mode::Tcp, 940.0),
            sample(Mode::Tcp, 960.0),
            sample(Mode::Shim, 1880.0),
            sample(Mode::Mptcpize, 1880.0),
        ];
        let md = summarize(&samples);
        assert!(
            md.contains("| TCP, one link | 950 | 940..960 | 0.0 |"),
            "{md}"
        );
        assert!(
            md.contains("| MPTCP via dropshim (native) | 1880 | 1880..1880 | 2.0 |"),
            "{md}"
        );
        assert!(md.contains("dropshim / mptcpize = 1.000"), "{md}");
        assert!(md.contains("MPTCP (dropshim) / TCP = 1.979"), "{md}");
    }
}
