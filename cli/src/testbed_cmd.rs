//! `dropshim testbed`: build, list, drive and remove emulated networks
//! (namespaces + veth pairs) from the specs in `conf/testbeds/`.

use anyhow::{bail, Context};
use dropshim_testbed::{
    Description, EmulatorCpu, LinkChoice, Listing, Method, Options, Shaper, Spec, Status, Testbed,
    ENV_SEED, STATE_DIR,
};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Build a testbed and keep it until `dropshim testbed down ID`.
    Up(UpArgs),
    /// Remove a kept testbed (the only one if ID is left out).
    Down {
        /// Testbed id, as printed by `up` and `list`.
        id: Option<String>,
        /// Remove every kept, stale or orphaned testbed (not those owned
        /// by running processes).
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// Show the testbeds on this machine.
    List,
    /// Show testbed ID (the only kept one if ID is left out): its nodes,
    /// links, and the link emulator's seed and CPU use so far.
    Status {
        /// Testbed id, as printed by `up` and `list`.
        id: Option<String>,
    },
    /// Take both ends of link N of testbed ID down or up.
    Link {
        id: String,
        /// Link number (1-based).
        n: u32,
        state: LinkState,
    },
}

#[derive(clap::Args)]
struct UpArgs {
    /// Builtin spec name (two-gateways, local-cache, drop-home, drop-mesh)
    /// or a path to a .toml spec.
    #[arg(default_value = "two-gateways")]
    spec: String,
    /// drop-mesh only: how many devices (default 8).
    #[arg(long, value_name = "N")]
    devices: Option<u32>,
    /// Shape every link at this rate (Mbit/s) on both ends; unshaped if left out.
    #[arg(long, value_name = "MBIT", value_parser = clap::value_parser!(u32).range(1..))]
    rate: Option<u32>,
    /// Queueing discipline used for shaping.
    #[arg(long, value_enum, default_value = "tbf")]
    shaper: ShaperArg,
    /// Links 1, 2, ... of the spec (in the order it lists them): each a
    /// profile (ethernet, wifi, wifi-direct, lte, bluetooth) or a rate in
    /// Mbit/s (rate only), e.g. `--links wifi,lte`. Links not named keep
    /// the spec's settings. --rate still overrides every link's rate.
    #[arg(long, value_name = "LINK,LINK...", value_delimiter = ',')]
    links: Vec<LinkChoice>,
    /// Add the spec's internet node and link.
    #[arg(long)]
    internet: bool,
    /// Testbed id (letters, digits, `_`); a unique one is chosen if left out.
    #[arg(long)]
    id: Option<String>,
    /// Seed of the link emulator's loss and jitter pattern, as a previous
    /// `up` printed it, to repeat that pattern (default: a fresh one, or
    /// $DROPSHIM_TESTBED_NETEM_SEED).
    #[arg(long, value_name = "N", value_parser = parse_seed)]
    netem_seed: Option<u64>,
}

/// A seed in decimal or 0x hex.
fn parse_seed(s: &str) -> Result<u64, String> {
    let t = s.trim();
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse(),
    }
    .map_err(|_| format!("{s:?} is not a seed: give a number from 0 to 2^64-1 (decimal or 0x hex), as `up` prints it"))
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ShaperArg {
    Tbf,
    Htb,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LinkState {
    Up,
    Down,
}

pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Sub::Up(a) => up(a),
        Sub::Down { id, all } => down(id, all),
        Sub::List => list(),
        Sub::Status { id } => status(id),
        Sub::Link { id, n, state } => {
            let tb = Testbed::attach(&id)?;
            tb.set_link(n, matches!(state, LinkState::Up))?;
            let word = if matches!(state, LinkState::Up) {
                "up"
            } else {
                "down"
            };
            println!("testbed {id}: link {n} {word}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn up(a: UpArgs) -> anyhow::Result<ExitCode> {
    let spec = Spec::load_with_devices(&a.spec, a.devices)?;
    let opts = Options {
        rate_mbit: a.rate,
        shaper: match a.shaper {
            ShaperArg::Tbf => Shaper::Tbf,
            ShaperArg::Htb => Shaper::Htb,
        },
        internet: a.internet,
        id: a.id,
        links: a.links,
        netem_seed: a.netem_seed,
    };
    let tb =
        Testbed::up(&spec, &opts).with_context(|| format!("building testbed {}", spec.name))?;
    let desc = tb.describe();
    let cpu = tb.emulator_cpu();
    let id = tb.keep();
    print_description(&desc);
    print_emulator(&desc, &cpu);
    println!();
    println!("state: {STATE_DIR}/{id}.json");
    println!(
        "run a program in a node:  ip netns exec {} PROGRAM",
        desc.nodes.first().map_or("NS", |n| n.netns.as_str())
    );
    println!("remove:                   dropshim testbed down {id}");
    Ok(ExitCode::SUCCESS)
}

fn print_description(d: &Description) {
    println!(
        "testbed {} (spec {}{})",
        d.id,
        d.spec,
        if d.internet { ", with internet" } else { "" }
    );
    println!(
        "tcp congestion control: {} (every node)",
        d.congestion_control
    );
    println!("nodes:");
    let width = d.nodes.iter().map(|n| n.name.len()).max().unwrap_or(0);
    for n in &d.nodes {
        println!("  {:width$}  netns {}", n.name, n.netns);
    }
    println!("links:");
    for l in &d.links {
        let profile = l.profile.map(|p| format!("{p}: ")).unwrap_or_default();
        let rates = [l.params.a_to_b.rate_mbit, l.params.b_to_a.rate_mbit];
        let shaper = if rates.iter().any(Option::is_some) {
            d.shaper.as_str()
        } else {
            "unshaped"
        };
        let method = match l.method {
            Method::Plain => format!("rate: {shaper}"),
            m => format!("rate: {shaper}; delay/jitter/loss: {}", m.as_str()),
        };
        let settings = l.params.to_string();
        if l.number > 255 {
            // A member's hop onto shared segment number / 256.
            println!(
                "  segment {} hop {}  {profile}{settings}  [{method}]",
                l.number / 256,
                l.number % 256
            );
        } else {
            println!("  link {}  {profile}{settings}  [{method}]", l.number);
        }
        for e in [&l.a, &l.b] {
            if e.addr4.is_unspecified() {
                println!("    {:width$}  {:8} bridge port", e.node, e.ifname);
                continue;
            }
            println!(
                "    {:width$}  {:8} {}/{}  {}/{}",
                e.node, e.ifname, e.addr4, e.prefix4, e.addr6, e.prefix6
            );
        }
    }
}

/// The link emulator's seed and each instance's CPU use, when links run
/// on it.
fn print_emulator(d: &Description, cpu: &[EmulatorCpu]) {
    let Some(seed) = d.netem_seed else {
        return;
    };
    println!(
        "link emulator: netem seed {seed} (`up --netem-seed {seed}` or {ENV_SEED}={seed} repeats the loss/jitter pattern)"
    );
    if cpu.is_empty() {
        println!("  not running");
    }
    for c in cpu {
        println!(
            "  instance {}: CPU {:.2} s (user {:.2} s, sys {:.2} s) over {:.1} s = {:.1} % of one CPU, {} host processes",
            c.instance,
            c.cpu_s(),
            c.user_s,
            c.sys_s,
            c.elapsed_s,
            c.pct_of_one_cpu(),
            c.processes
        );
    }
}

fn status(id: Option<String>) -> anyhow::Result<ExitCode> {
    let id = match id {
        Some(id) => id,
        None => only_kept(&Testbed::list(), "show")?,
    };
    let tb = Testbed::attach(&id)?;
    let desc = tb.describe();
    print_description(&desc);
    print_emulator(&desc, &tb.emulator_cpu());
    Ok(ExitCode::SUCCESS)
}

/// The id of the only kept testbed, or an error saying what to do.
fn only_kept(listed: &[Listing], verb: &str) -> anyhow::Result<String> {
    let kept: Vec<&str> = listed
        .iter()
        .filter(|l| l.status == Status::Kept)
        .map(|l| l.id.as_str())
        .collect();
    match kept.as_slice() {
        [one] => Ok(one.to_string()),
        [] => bail!("no kept testbed to {verb}; `dropshim testbed list` shows what exists"),
        many => bail!(
            "several testbeds are kept ({}); say which: dropshim testbed {} ID",
            many.join(", "),
            if verb == "remove" { "down" } else { "status" }
        ),
    }
}

fn down(id: Option<String>, all: bool) -> anyhow::Result<ExitCode> {
    let listed = Testbed::list();
    if all {
        let mut failed = false;
        for l in &listed {
            if let Status::Running { pid } = l.status {
                println!("skipping {}: in use by running process {pid}", l.id);
                continue;
            }
            match Testbed::remove(&l.id) {
                Ok(()) => println!("removed {}", l.id),
                Err(e) => {
                    eprintln!("dropshim: error: removing {}: {e}", l.id);
                    failed = true;
                }
            }
        }
        if listed.is_empty() {
            println!("no testbeds");
        }
        return Ok(if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    }
    let id = match id {
        Some(id) => id,
        None => only_kept(&listed, "remove")?,
    };
    if let Some(Status::Running { pid }) = listed.iter().find(|l| l.id == id).map(|l| l.status) {
        eprintln!(
            "dropshim: warning: testbed {id} belongs to running process {pid}; removing it anyway"
        );
    }
    Testbed::remove(&id)?;
    println!("removed {id}");
    Ok(ExitCode::SUCCESS)
}

fn list() -> anyhow::Result<ExitCode> {
    let listed = Testbed::list();
    if listed.is_empty() {
        println!("no testbeds");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:24} {:14} {:20} namespaces", "id", "spec", "status");
    for l in listed {
        let status = match l.status {
            Status::Kept => "kept".to_string(),
            Status::Running { pid } => format!("in use by pid {pid}"),
            Status::Stale { pid } => format!("stale (pid {pid} gone)"),
            Status::Orphan => "orphan".to_string(),
        };
        println!(
            "{:24} {:14} {:20} {}",
            l.id,
            l.spec.as_deref().unwrap_or("?"),
            status,
            l.namespaces.join(" ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
