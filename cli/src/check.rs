//! `dropshim check --config FILE`: validates a device file, explains every
//! error with file, line and what was expected, or summarises what the
//! file asks for.

use dropshim_conf::{BackendKind, ConfError, DeviceConfig, Interface, PortRange, Rule};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The device file to validate.
    #[arg(long, short)]
    pub config: PathBuf,
}

pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    let file = args.config.display().to_string();
    match dropshim_conf::load(&args.config) {
        Ok(device) => {
            if let Some(d) = scheduler_offered(&args.config, &file, &device) {
                let mut stderr = std::io::stderr().lock();
                writeln!(stderr, "{d}")?;
                writeln!(stderr, "1 error(s) in {file}")?;
                return Ok(ExitCode::from(1));
            }
            let mut out = std::io::stdout().lock();
            for line in summary(&device) {
                writeln!(out, "{line}")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            let mut stderr = std::io::stderr().lock();
            let count = match &err {
                ConfError::Invalid { diagnostics, .. } => {
                    for d in diagnostics {
                        writeln!(stderr, "{d}")?;
                    }
                    diagnostics.len()
                }
                other => {
                    writeln!(stderr, "{other}")?;
                    1
                }
            };
            writeln!(stderr, "{count} error(s) in {file}")?;
            Ok(ExitCode::from(1))
        }
    }
}

/// Where the host kernel lists its MPTCP packet schedulers.
const NATIVE_SCHEDULERS: &str = "/proc/sys/net/mptcp/available_schedulers";

/// The file's scheduler checked against what its backend offers (the
/// host kernel's list for native, dropshim's kernels for uml and lkl).
fn scheduler_offered(
    path: &std::path::Path,
    file: &str,
    device: &DeviceConfig,
) -> Option<dropshim_conf::Diagnostic> {
    device.mptcp.scheduler.as_ref()?;
    // the file was just read by load(); a failure now leaves it unchecked
    let text = std::fs::read_to_string(path).ok()?;
    let native: Vec<String> = std::fs::read_to_string(NATIVE_SCHEDULERS)
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    dropshim_conf::check_scheduler(&text, file, device, &native)
}

/// One line per section of the file, as the device will run it.
fn summary(d: &DeviceConfig) -> Vec<String> {
    let mut lines = vec![format!("device:     {}", d.device.name)];
    lines.push(format!("backend:    {}", backend_line(d)));

    let interfaces = if d.interfaces.is_empty() {
        "none (the native backend uses the host's routes as they are)".to_string()
    } else {
        d.interfaces
            .iter()
            .map(interface_item)
            .collect::<Vec<_>>()
            .join("; ")
    };
    lines.push(format!("interfaces: {interfaces}"));

    let limits = match d.mptcp.limits {
        Some(l) => format!(
            "subflows {}, add_addr_accepted {}",
            l.subflows, l.add_addr_accepted
        ),
        None => "not set (the stack's current limits stay)".to_string(),
    };
    lines.push(format!("limits:     {limits}"));

    let pm = d
        .mptcp
        .path_manager
        .map_or("not set (unchanged)", |p| p.as_str());
    let scheduler = d
        .mptcp
        .scheduler
        .as_deref()
        .unwrap_or("not set (unchanged)");
    lines.push(format!("pm:         {pm}, scheduler {scheduler}"));

    let p = &d.policy;
    let mut policy = format!(
        "default {}, loopback {}, listeners {}",
        action(p.default),
        if p.loopback { "allowed" } else { "tcp" },
        if p.listeners { "mptcp" } else { "tcp" },
    );
    if p.rules.is_empty() {
        policy.push_str(", no rules");
    } else {
        let rules: Vec<String> = p.rules.iter().map(rule_item).collect();
        policy.push_str(&format!(
            ", {} rule(s): {}",
            p.rules.len(),
            rules.join("; ")
        ));
    }
    lines.push(format!("policy:     {policy}"));
    lines
}

fn backend_line(d: &DeviceConfig) -> String {
    match d.device.backend {
        BackendKind::Native => "native (host kernel MPTCP)".to_string(),
        BackendKind::Uml => {
            let (kernel, memory, extra) = match &d.uml {
                Some(u) => (u.kernel.clone(), u.memory_mib, u.cmdline.join(" ")),
                None => (None, 256, String::new()),
            };
            let kernel = kernel.unwrap_or_else(|| "the one dropshim builds".to_string());
            let mut line = format!("uml (kernel {kernel}, {memory} MiB");
            if !extra.is_empty() {
                line.push_str(&format!(", cmdline {extra}"));
            }
            line.push(')');
            line
        }
        BackendKind::Lkl => {
            let (memory, extra) = match &d.lkl {
                Some(l) => (l.memory_mib, l.boot_options.join(" ")),
                None => (64, String::new()),
            };
            let mut line = format!("lkl ({memory} MiB");
            if !extra.is_empty() {
                line.push_str(&format!(", boot options {extra}"));
            }
            line.push(')');
            line
        }
    }
}

fn interface_item(i: &Interface) -> String {
    let addresses: Vec<String> = i.addresses.iter().map(ToString::to_string).collect();
    let roles: Vec<&str> = i.endpoint.iter().map(|r| r.as_str()).collect();
    let mut item = i.name.clone();
    if !addresses.is_empty() {
        item.push_str(&format!(" {}", addresses.join(" ")));
    }
    if roles.is_empty() {
        item.push_str(" [no endpoint]");
    } else {
        item.push_str(&format!(" [{}]", roles.join(",")));
    }
    if let Some(gw) = i.gateway {
        item.push_str(&format!(" via {gw}"));
    }
    if let Some(cost) = i.cost {
        item.push_str(&format!(" cost {cost}"));
    }
    item
}

fn rule_item(r: &Rule) -> String {
    let dest = r.dest.map_or_else(|| "any".to_string(), |c| c.to_string());
    let ports = if r.ports.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = r.ports.iter().map(PortRange::to_string).collect();
        format!(" port {}", list.join(","))
    };
    format!("{dest}{ports} -> {}", action(r.action))
}

fn action(a: dropshim_conf::Action) -> &'static str {
    match a {
        dropshim_conf::Action::Mptcp => "mptcp",
        dropshim_conf::Action::Tcp => "tcp",
    }
}
