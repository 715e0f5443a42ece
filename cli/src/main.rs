//! The `dropshim` command: runs programs under the shim, checks and
//! applies device files, builds testbeds and runs the experiments.
//!
//! Owns: argument parsing and what the user sees. Each subcommand lives in
//! its own module and does its work through the library crates; nothing
//! here is on a shimmed program's call path.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod bench;
mod check;
mod device;
mod generate;
mod pm;
mod run;
mod testbed_cmd;

#[derive(Parser)]
#[command(
    name = "dropshim",
    version,
    about = "Multipath TCP for programs you cannot change"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a program with libdropshim.so preloaded.
    Run(run::Args),
    /// Validate a device file and explain every error.
    Check(check::Args),
    /// Prepare a device: MPTCP endpoints and limits (native), boot the instance (uml).
    Up(device::UpArgs),
    /// Release what `up` prepared.
    Down(device::DownArgs),
    /// Show MPTCP connections with their subflows and bytes.
    Status(device::StatusArgs),
    /// Show what a device's stack holds (addresses, default routes, MPTCP
    /// endpoints, limits, path manager, scheduler), read back through netlink.
    Show(device::ShowArgs),
    /// Run dropshim's userspace path manager in the foreground (`up` starts
    /// it in the background for a device file that chooses it).
    Pm(pm::Args),
    /// Build or remove an emulated network of namespaces.
    Testbed(testbed_cmd::Args),
    /// Measure TCP vs MPTCP (dropshim, mptcpize) on the two-gateways testbed.
    Bench(bench::Args),
    /// Write man pages and shell completions (used to build the package).
    #[command(hide = true)]
    Generate(generate::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::main(args),
        Command::Check(args) => check::main(args),
        Command::Up(args) => device::up(args),
        Command::Down(args) => device::down(args),
        Command::Status(args) => device::status(args),
        Command::Show(args) => device::show(args),
        Command::Pm(args) => pm::main(args),
        Command::Testbed(args) => testbed_cmd::main(args),
        Command::Bench(args) => bench::main(args),
        Command::Generate(args) => generate::main::<Cli>(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("dropshim: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
