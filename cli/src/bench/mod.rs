//! `dropshim bench`: the Drop Computing study's experiments on the
//! testbeds of `dropshim testbed`, every stack side by side in one run.
//!
//! Scenarios (one file each): `two-gateways` (iperf3 over two shaped
//! links, TCP on one vs MPTCP over both, per backend, path manager and
//! scheduler), `local-cache` (curl downloads from `python3 -m
//! http.server`, per size), `handover` (the client's link 1 goes down mid
//! transfer and comes back) and `overhead` (unshaped throughput and CPU
//! per GB), `rr` (request/response: round-trip latency, transactions
//! per second and connection set-up); not run by default: `conns` (many
//! connections held at once by one server on the stack: its threads and
//! memory, round trips under that load) and the study's topologies,
//! `drop-home` (end devices on each stack pull from a local cache and the
//! cloud) and `drop-mesh` (all-to-all among 4 to 32 devices on shared
//! Wi-Fi and Ethernet segments). A stack that cannot run is recorded as
//! skipped with the reason,
//! never dropped; MPTCP use is read from the server namespace's MPTcpExt
//! counters, so a run that silently fell back to TCP shows as 0 subflows.
//! Runs are interleaved (stack A, B, C, A, B, C...) so drift hits all alike.

mod conns;
mod drop_home;
mod drop_mesh;
mod handover;
mod local_cache;
mod output;
mod overhead;
mod plot;
mod rr;
mod schedulers;
mod stacks;
mod two_gateways;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

pub use stacks::Stack;

#[derive(ClapArgs, Clone, Debug)]
pub struct Args {
    /// Scenarios to run, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "two-gateways,local-cache,handover,overhead,rr"
    )]
    pub scenario: Vec<Scenario>,
    /// Link rate in Mbit/s for two-gateways and local-cache.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// The links of two-gateways and handover, link 1 then link 2: each a
    /// profile (ethernet, wifi, wifi-direct, lte, bluetooth) or a rate in
    /// Mbit/s, e.g. `ethernet,wifi` or `wifi,lte`. Default: rate only,
    /// --rate for two-gateways and 100,100 for handover.
    #[arg(long, value_name = "LINK,LINK", value_delimiter = ',')]
    pub links: Option<Vec<dropshim_testbed::LinkChoice>>,
    /// Repetitions of each measurement (median and spread are reported).
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// Seconds per iperf3 measurement (two-gateways, overhead).
    #[arg(long, default_value_t = 10)]
    pub duration: u32,
    /// local-cache file sizes in MB (default 1,10,100,1000; --quick: 1,10).
    #[arg(long, value_delimiter = ',')]
    pub sizes: Option<Vec<u64>>,
    /// A smoke run of every scenario: one run each, short transfers.
    #[arg(long)]
    pub quick: bool,
    /// Folder for results: run-NNN.json, results.csv, summary.md, *.svg.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Path to libdropshim.so (default: next to this executable).
    #[arg(long)]
    pub library: Option<PathBuf>,
    /// drop-home and drop-mesh: links at their profiles' rates only, no
    /// delay, jitter or loss (no link emulator).
    #[arg(long)]
    pub rate_only: bool,
    /// drop-mesh: one mesh of N devices (default: 4, 8, 16 and 32; with
    /// --quick 4 and 8).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(2..=250))]
    pub devices: Option<u32>,
    /// Stacks to measure, comma-separated (default: all); the others are
    /// listed as not selected.
    #[arg(long, value_delimiter = ',')]
    pub stacks: Option<Vec<Stack>>,
    /// Path managers the `schedulers` scenario crosses with every
    /// scheduler on its uml and lkl devices, comma-separated: `kernel`
    /// and the userspace policies `fullmesh`, `ndiffports`, `backup`
    /// (link 2 the backup) and `costaware` (link 2 ten times the cost).
    #[arg(long, value_delimiter = ',', default_value = "kernel")]
    pub path_managers: Vec<stacks::PathManager>,
    /// MPTCP schedulers of the project's kernels that the `schedulers`
    /// scenario runs, and the `handover` scenario's uploads from a uml or
    /// lkl device (one row per scheduler), comma-separated (default: all;
    /// with --quick `default,redundant`).
    #[arg(long, value_delimiter = ',', value_parser = scheduler_name)]
    pub schedulers: Option<Vec<String>>,
    /// Connections the `conns` scenario holds open at once.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    TwoGateways,
    LocalCache,
    Handover,
    Overhead,
    Rr,
    Conns,
    /// The study's home: end devices on each stack pull from the local
    /// cache and the cloud (not in the default list).
    DropHome,
    /// All-to-all transfers in a mesh of 4 to 32 devices (not in the
    /// default list: minutes).
    DropMesh,
    /// Each MPTCP scheduler of the project's kernels on uml and lkl
    /// devices over unequal links (default `--links wifi,lte`): goodput
    /// and the share of bytes on link 1 (not in the default list).
    Schedulers,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::TwoGateways => "two-gateways",
            Scenario::LocalCache => "local-cache",
            Scenario::Handover => "handover",
            Scenario::Overhead => "overhead",
            Scenario::Rr => "rr",
            Scenario::Conns => "conns",
            Scenario::DropHome => "drop-home",
            Scenario::DropMesh => "drop-mesh",
            Scenario::Schedulers => "schedulers",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Ok,
    Skipped,
    Failed,
}

/// One measurement (or one skipped stack): a row of the CSV and one JSON
/// file. Metrics a scenario does not measure stay `None`.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    pub scenario: Scenario,
    pub stack: Stack,
    /// `kernel` / `userspace`; empty for plain TCP.
    pub path_manager: String,
    /// MPTCP scheduler; empty for plain TCP.
    pub scheduler: String,
    /// What was varied: "2 x 1000 Mbit/s", "10 MB", "unshaped"...
    pub setting: String,
    pub run: u32,
    pub status: Status,
    /// Why a stack was skipped or a run failed.
    pub reason: Option<String>,
    pub mbit_per_s: Option<f64>,
    pub seconds: Option<f64>,
    pub bytes: Option<u64>,
    pub cpu_s_per_gb: Option<f64>,
    /// Subflows per MPTCP connection seen by the server, the first one
    /// included; 0 = no MPTCP connection at all (plain TCP).
    pub subflows: Option<f64>,
    /// Longest gap between received bytes (handover).
    pub stall_s: Option<f64>,
    pub completed: Option<bool>,
    /// sha256 of what arrived matches the source.
    pub intact: Option<bool>,
    /// Handover: (seconds since the first byte, bytes received so far).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<(f64, u64)>,
    /// Handover: when the link went down and came back (s since first byte).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outage: Option<(f64, f64)>,
    /// rr: round-trip (or set-up) time percentiles in microseconds.
    pub median_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub max_us: Option<f64>,
    /// rr: round trips over 10 ms, and how many were timed.
    pub over_10ms: Option<u64>,
    pub samples: Option<u64>,
    /// rr: transactions per second.
    pub per_s: Option<f64>,
    /// conns: the server's host threads at their peak, and how many of
    /// them were the library kernel's own tasks.
    pub threads: Option<u64>,
    pub kernel_tasks: Option<u64>,
    /// conns: the server's resident memory per idle connection.
    pub rss_kib_per_conn: Option<f64>,
    /// schedulers: the share of the bytes received over link 1 (0 to 1).
    pub link1_share: Option<f64>,
}

impl Record {
    pub fn new(scenario: Scenario, stack: Stack, setting: impl Into<String>, run: u32) -> Record {
        let mptcp = stack != Stack::Tcp;
        Record {
            scenario,
            stack,
            path_manager: if mptcp {
                "kernel".into()
            } else {
                String::new()
            },
            scheduler: if mptcp {
                "default".into()
            } else {
                String::new()
            },
            setting: setting.into(),
            run,
            status: Status::Ok,
            reason: None,
            mbit_per_s: None,
            seconds: None,
            bytes: None,
            cpu_s_per_gb: None,
            subflows: None,
            stall_s: None,
            completed: None,
            intact: None,
            timeline: Vec::new(),
            outage: None,
            median_us: None,
            p99_us: None,
            max_us: None,
            over_10ms: None,
            samples: None,
            per_s: None,
            threads: None,
            kernel_tasks: None,
            rss_kib_per_conn: None,
            link1_share: None,
        }
    }

    pub fn skipped(mut self, reason: impl Into<String>) -> Record {
        self.status = Status::Skipped;
        self.reason = Some(reason.into());
        self.run = 0;
        self
    }

    pub fn failed(mut self, err: &anyhow::Error) -> Record {
        self.status = Status::Failed;
        self.reason = Some(one_line(&format!("{err:#}")));
        // A run that failed did not complete and delivered nothing
        // verified: the CSV and JSON say so where the scenario checks it.
        if matches!(
            self.scenario,
            Scenario::Handover | Scenario::LocalCache | Scenario::DropHome | Scenario::DropMesh
        ) {
            self.completed = Some(false);
            self.intact = Some(false);
        }
        self
    }
}

/// Error text fit for a table cell: one line, no pipes, bounded.
pub fn one_line(s: &str) -> String {
    let s: String = s
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "/");
    if s.chars().count() > 200 {
        let cut: String = s.chars().take(197).collect();
        format!("{cut}...")
    } else {
        s
    }
}

/// Everything a scenario needs from the run: settings, the stacks and
/// their availability, the progress bar, and where records go.
pub struct Ctx {
    pub args: Args,
    pub library: PathBuf,
    pub stacks: stacks::Availability,
    pub progress: ProgressBar,
    pub records: Vec<Record>,
    /// The link emulator's CPU use per testbed that had emulated links
    /// (label, one entry per instance), read just before it went.
    pub emulator: Vec<(String, dropshim_testbed::EmulatorCpu)>,
    /// Scratch space (served files, downloads, device files); removed at the end.
    pub work: PathBuf,
}

impl Ctx {
    /// Records a finished measurement (or failure) and advances the bar.
    pub fn push(&mut self, record: Record) {
        if record.status == Status::Failed {
            self.progress.println(format!(
                "  {} {} {} run {}: failed: {}",
                record.scenario.name(),
                record.setting,
                record.stack.label(),
                record.run,
                record.reason.as_deref().unwrap_or("")
            ));
        }
        if record.status != Status::Skipped {
            self.progress.inc(1);
        }
        self.records.push(record);
    }

    /// Keeps the link emulator's CPU use so far on testbed `tb` for the
    /// summary, under `label` (nothing when none of its links is
    /// emulated). Called just before the testbed goes.
    pub fn note_emulator(&mut self, label: &str, tb: &dropshim_testbed::Testbed) {
        for c in tb.emulator_cpu() {
            self.progress.println(format!(
                "  {label}: link emulator instance {}: {:.2} s CPU, {:.1} % of one CPU",
                c.instance,
                c.cpu_s(),
                c.pct_of_one_cpu()
            ));
            self.emulator.push((label.to_string(), c));
        }
    }

    pub fn step(&self, what: String) {
        self.progress.set_message(what);
    }
}

/// Scenario sizes and durations, resolved from the arguments.
#[derive(Clone, Debug)]
pub struct Plan {
    pub runs: u32,
    pub duration: u32,
    pub sizes_mb: Vec<u64>,
    pub handover: handover::Settings,
    pub rr: rr::Settings,
    pub conns: conns::Settings,
    /// drop-mesh sizes (devices), one mesh each.
    pub mesh_devices: Vec<u32>,
    /// schedulers: the path managers, each once, in the order given.
    pub path_managers: Vec<stacks::PathManager>,
    /// schedulers and handover uploads: the schedulers, each once.
    pub schedulers: Vec<String>,
}

/// A `--schedulers` entry: one the project's kernels build.
fn scheduler_name(s: &str) -> Result<String, String> {
    if dropshim_conf::BUILT_SCHEDULERS.contains(&s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "not a scheduler of the project's kernels (they build {})",
            dropshim_conf::BUILT_SCHEDULERS.join(", ")
        ))
    }
}

impl Plan {
    pub fn from_args(args: &Args) -> Plan {
        let runs = if args.quick { 1 } else { args.runs.max(1) };
        let duration = if args.quick { 3 } else { args.duration.max(1) };
        let sizes_mb = match &args.sizes {
            Some(s) => s.clone(),
            None if args.quick => vec![1, 10],
            None => vec![1, 10, 100, 1000],
        };
        let mut path_managers = Vec::new();
        for pm in &args.path_managers {
            if !path_managers.contains(pm) {
                path_managers.push(*pm);
            }
        }
        // A smoke run keeps the kernel's default and redundant, the one
        // meant to make a cut invisible.
        let mut schedulers: Vec<String> = Vec::new();
        let wanted = args.schedulers.clone().unwrap_or_else(|| {
            dropshim_conf::BUILT_SCHEDULERS
                .iter()
                .filter(|s| !args.quick || ["default", "redundant"].contains(s))
                .map(|s| s.to_string())
                .collect()
        });
        for name in wanted {
            if !schedulers.contains(&name) {
                schedulers.push(name);
            }
        }
        Plan {
            runs,
            duration,
            sizes_mb,
            path_managers,
            schedulers,
            handover: handover::Settings::new(args.quick, args.links.clone()),
            rr: rr::Settings::new(args.quick),
            conns: conns::Settings::new(args.quick, args.conns),
            mesh_devices: match args.devices {
                Some(n) => vec![n],
                None if args.quick => vec![4, 8],
                None => vec![4, 8, 16, 32],
            },
        }
    }

    /// Measurements and a time estimate in seconds for `n_stacks` stacks.
    pub fn estimate(&self, scenarios: &[Scenario], rate: u32, n_stacks: u32) -> (u64, f64) {
        let mut steps = 0u64;
        let mut secs = 0.0;
        for s in scenarios {
            let per_stack_run = match s {
                Scenario::TwoGateways | Scenario::Overhead => {
                    steps += 1;
                    f64::from(self.duration) + 2.0
                }
                Scenario::LocalCache => {
                    steps += self.sizes_mb.len() as u64;
                    self.sizes_mb
                        .iter()
                        .map(|mb| *mb as f64 * 8.0 / f64::from(rate.max(1)) * 0.75 + 0.5)
                        .sum()
                }
                Scenario::Handover => {
                    // a download per stack, and an upload per scheduler
                    // on uml and lkl (counted here as if on every stack)
                    let n = 1 + self.schedulers.len();
                    steps += n as u64;
                    n as f64 * self.handover.expected_seconds()
                }
                Scenario::Rr => {
                    steps += rr::Settings::rows();
                    self.rr.expected_seconds()
                }
                Scenario::Conns => {
                    steps += 1;
                    self.conns.expected_seconds()
                }
                Scenario::DropHome => {
                    steps += 4;
                    20.0
                }
                Scenario::DropMesh => {
                    steps += self.mesh_devices.len() as u64;
                    self.mesh_devices.iter().map(|n| 2.0 * f64::from(*n)).sum()
                }
                Scenario::Schedulers => {
                    let n = self.schedulers.len() * self.path_managers.len().max(1);
                    steps += n as u64;
                    n as f64 * (f64::from(self.duration) + 4.0)
                }
            };
            secs += per_stack_run * f64::from(self.runs * n_stacks) + 3.0;
        }
        (steps * u64::from(self.runs * n_stacks), secs)
    }
}

pub fn main(args: Args) -> Result<ExitCode> {
    let started = Instant::now();
    let library = crate::run::library_path(args.library.clone())?;
    require_tools(&["iperf3", "ip", "tc", "curl", "python3"])?;
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out)
            .with_context(|| format!("cannot create the output folder {}", out.display()))?;
    }
    let plan = Plan::from_args(&args);
    let mut availability = stacks::Availability::probe(&library);
    if let Some(selected) = &args.stacks {
        availability.keep_only(selected);
    }
    let runnable = availability.runnable().len() as u32;
    let (steps, secs) = plan.estimate(&args.scenario, args.rate, runnable);
    eprintln!(
        "dropshim bench: {} scenario(s), {} stack(s) runnable ({}), {} run(s) each: {steps} measurements, about {} to go",
        args.scenario.len(),
        runnable,
        availability.summary(),
        plan.runs,
        human_duration(secs),
    );
    let progress = ProgressBar::new(steps);
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {wide_msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    progress.enable_steady_tick(Duration::from_millis(200));
    let work = std::env::temp_dir().join(format!("dropshim-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)
        .with_context(|| format!("cannot create scratch folder {}", work.display()))?;
    let _work_guard = RemoveDir(work.clone());
    let mut ctx = Ctx {
        args: args.clone(),
        library,
        stacks: availability,
        progress,
        records: Vec::new(),
        emulator: Vec::new(),
        work,
    };
    for &scenario in &args.scenario {
        let result = match scenario {
            Scenario::TwoGateways => two_gateways::run(&mut ctx, &plan),
            Scenario::LocalCache => local_cache::run(&mut ctx, &plan),
            Scenario::Handover => handover::run(&mut ctx, &plan),
            Scenario::Overhead => overhead::run(&mut ctx, &plan),
            Scenario::Rr => rr::run(&mut ctx, &plan),
            Scenario::Conns => conns::run(&mut ctx, &plan),
            Scenario::DropHome => drop_home::run(&mut ctx, &plan),
            Scenario::DropMesh => drop_mesh::run(&mut ctx, &plan),
            Scenario::Schedulers => schedulers::run(&mut ctx, &plan),
        };
        if let Err(err) = result {
            // A testbed that cannot be built fails the whole scenario; say
            // so in the results and go on with the others.
            ctx.progress
                .println(format!("{}: {err:#}", scenario.name()));
            let err = err.context("scenario aborted");
            for stack in Stack::ALL {
                ctx.records
                    .push(Record::new(scenario, stack, "", 0).failed(&err));
            }
        }
    }
    ctx.progress.finish_and_clear();
    let mut summary = output::markdown(&ctx.records);
    summary.push_str(&output::emulator_markdown(&ctx.emulator));
    print!("{summary}");
    if let Some(dir) = &args.out {
        output::write_all(dir, &ctx.records, &summary)?;
        plot::write_all(dir, &ctx.records)?;
        eprintln!("results in {}", dir.display());
    }
    eprintln!(
        "dropshim bench: done in {}",
        human_duration(started.elapsed().as_secs_f64())
    );
    Ok(ExitCode::SUCCESS)
}

pub fn human_duration(secs: f64) -> String {
    let s = secs.round() as u64;
    if s >= 60 {
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        format!("{s} s")
    }
}

fn require_tools(tools: &[&str]) -> Result<()> {
    for tool in tools {
        if !on_path(tool) {
            bail!("`{tool}` not found; install it (scripts/setup.sh installs everything the benchmarks need)");
        }
    }
    Ok(())
}

pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A background program (server) killed with its process group on drop.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: signals the process group this child leads (spawned with
        // process_group(0)), so what it forked goes too.
        unsafe {
            libc::kill(-(self.0.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a server in its own process group, output discarded.
pub fn spawn_server(mut cmd: Command) -> Result<KillOnDrop> {
    use std::os::unix::process::CommandExt;
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    Ok(KillOnDrop(child))
}

/// Waits until something listens on `port` in `netns` (bounded; checked
/// with ss, never slept on blindly). Fails early if `server` died.
pub fn wait_listening(netns: &str, port: u16, server: &mut KillOnDrop) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut pause = Duration::from_millis(2);
    while Instant::now() < deadline {
        let out = Command::new("ip")
            .args(["netns", "exec", netns, "ss", "-Hltn"])
            .arg(format!("sport = :{port}"))
            .output()?;
        if !out.stdout.is_empty() {
            return Ok(());
        }
        if let Ok(Some(status)) = server.0.try_wait() {
            bail!("the server exited ({status}) before listening on port {port}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
    bail!("no server listening on port {port} within 15 s")
}

/// The testbed options of drop-home and drop-mesh: the spec's links, or
/// with --rate-only their rates alone.
pub fn topology_options(ctx: &Ctx, spec: &dropshim_testbed::Spec) -> dropshim_testbed::Options {
    dropshim_testbed::Options {
        links: if ctx.args.rate_only {
            spec.rate_only()
        } else {
            Vec::new()
        },
        ..Default::default()
    }
}

/// A port for this run's servers: distinct per process and `slot`.
pub fn port(slot: u16) -> u16 {
    20000 + (std::process::id() % 2000) as u16 * 10 + slot
}

/// The MPTcpExt counters of a namespace (`/proc/net/netstat`).
pub fn mptcp_counters(netns: &str) -> Result<HashMap<String, u64>> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "cat", "/proc/net/netstat"])
        .output()
        .context("reading MPTcpExt counters")?;
    Ok(parse_mptcp_counters(&String::from_utf8_lossy(&out.stdout)))
}

pub fn parse_mptcp_counters(text: &str) -> HashMap<String, u64> {
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
    map
}

/// Subflows per MPTCP connection the server accepted between two counter
/// snapshots: 1 + joins / connections; 0 when no MPTCP connection came.
/// Counted on the handshakes' final ACKs, not their SYNs: a SYN sent again
/// (a slow host, a path manager asking twice) adds no subflow.
pub fn subflows_between(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> f64 {
    subflow_ratio(before, after, "MPCapableACKRX", "MPJoinAckRx")
}

/// 1 + `joins` / `conns` between two counter snapshots (0 without
/// connections): the server's view takes the SYN counters, a client's
/// the SYN-ACK ones.
pub fn subflow_ratio(
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
    conns: &str,
    joins: &str,
) -> f64 {
    let diff = |name: &str| {
        after
            .get(name)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before.get(name).copied().unwrap_or(0))
    };
    match diff(conns) {
        0 => 0.0,
        n => 1.0 + diff(joins) as f64 / n as f64,
    }
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_give_subflows_per_connection() {
        let before = parse_mptcp_counters(
            "TcpExt: A B\nTcpExt: 1 2\nMPTcpExt: MPCapableACKRX MPJoinSynRx MPJoinAckRx\nMPTcpExt: 3 1 1\n",
        );
        // One join SYN came twice: still one joined subflow per connection.
        let after = parse_mptcp_counters(
            "MPTcpExt: MPCapableACKRX MPJoinSynRx MPJoinAckRx\nMPTcpExt: 5 4 3\n",
        );
        assert_eq!(subflows_between(&before, &after), 2.0);
        assert_eq!(subflows_between(&after, &after), 0.0);
    }

    #[test]
    fn plan_quick_is_small_and_estimates_grow_with_runs() {
        let args = Args {
            scenario: vec![Scenario::TwoGateways, Scenario::LocalCache],
            rate: 1000,
            links: None,
            runs: 3,
            duration: 10,
            sizes: None,
            quick: true,
            out: None,
            library: None,
            devices: None,
            rate_only: false,
            stacks: None,
            conns: 1000,
            path_managers: vec![
                stacks::PathManager::Kernel,
                stacks::PathManager::Backup,
                stacks::PathManager::Kernel,
            ],
            schedulers: None,
        };
        let quick = Plan::from_args(&args);
        assert_eq!(quick.mesh_devices, vec![4, 8]);
        assert_eq!(
            quick.path_managers,
            vec![stacks::PathManager::Kernel, stacks::PathManager::Backup],
            "each path manager once, in the order given"
        );
        assert_eq!((quick.runs, quick.duration), (1, 3));
        assert_eq!(quick.sizes_mb, vec![1, 10]);
        let full = Plan::from_args(&Args {
            quick: false,
            ..args.clone()
        });
        assert_eq!(full.sizes_mb, vec![1, 10, 100, 1000]);
        assert_eq!(quick.schedulers, ["default", "redundant"]);
        assert_eq!(full.schedulers, dropshim_conf::BUILT_SCHEDULERS);
        let chosen = Plan::from_args(&Args {
            schedulers: Some(vec![
                "costaware".into(),
                "default".into(),
                "costaware".into(),
            ]),
            ..args.clone()
        });
        assert_eq!(
            chosen.schedulers,
            ["costaware", "default"],
            "each once, in the order given"
        );
        assert!(scheduler_name("nosuch").is_err());
        let (qs, qt) = quick.estimate(&args.scenario, 1000, 3);
        let (fs, ft) = full.estimate(&args.scenario, 1000, 3);
        assert_eq!(qs, 3 * (1 + 2));
        assert_eq!(fs, 3 * 3 * (1 + 4));
        assert!(ft > qt * 3.0, "{ft} vs {qt}");
    }

    #[test]
    fn one_line_flattens_and_bounds() {
        assert_eq!(one_line("a |b\n  c"), "a /b c");
        assert_eq!(one_line(&"x".repeat(500)).chars().count(), 200);
    }
}
