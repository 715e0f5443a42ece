//! A network stack for any node of a testbed, over any of its links or
//! segments: native (the host kernel through the shim), uml (a UML
//! instance that owns those interfaces) or lkl (a kernel in each
//! program's process). Used by the drop-home and drop-mesh tests, where
//! every end device picks its own stack.

use crate::lkl::liblkl;
use crate::uml::{run_dir, unique_device};
use crate::{cli_path, plain, run_ok, shim_path};
use anyhow::{bail, Context, Result};
use dropshim_testbed::Testbed;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The stacks, by the names the tests use.
pub const STACKS: [&str; 3] = ["native", "uml", "lkl"];

/// One interface of a device: the link (or segment) number, the MPTCP
/// endpoint roles of its address, and an optional default gateway.
#[derive(Debug, Clone)]
pub struct Iface {
    /// The testbed link (or segment) the interface is on.
    pub link: u32,
    /// MPTCP endpoint roles of the interface's address (`subflow`, `signal`, ...).
    pub roles: Vec<&'static str>,
    /// Default gateway through this interface, if any.
    pub gateway: Option<Ipv4Addr>,
}

/// The stack a node's programs run on. Dropping it stops a uml instance.
pub struct NodeStack {
    /// The testbed node whose programs run on this stack.
    pub node: String,
    /// `native`, `uml` or `lkl`.
    pub kind: &'static str,
    config: Option<PathBuf>,
    /// The uml or lkl device's name (its run directory for uml).
    device: Option<String>,
    netns: String,
    _dir: Option<tempfile::TempDir>,
}

impl NodeStack {
    /// Bring `kind` up for `node` over `ifaces`. native uses the
    /// namespace's own addresses, endpoints and routes (from the spec);
    /// uml and lkl take the interfaces over (their host addresses are
    /// flushed) with a device file written from the testbed's addresses.
    pub fn up(tb: &Testbed, node: &str, kind: &str, ifaces: &[Iface]) -> Result<NodeStack> {
        let kind = match STACKS.iter().find(|s| **s == kind) {
            Some(k) => *k,
            None => bail!("unknown stack {kind:?}: use native, uml or lkl"),
        };
        let netns = tb.netns(node)?.to_string();
        if kind == "native" {
            return Ok(NodeStack {
                node: node.to_string(),
                kind,
                config: None,
                device: None,
                netns,
                _dir: None,
            });
        }
        let name = unique_device(if kind == "uml" { "u" } else { "l" });
        let dir = tempfile::tempdir()?;
        let config = dir.path().join(format!("{name}.toml"));
        let mut toml = format!("[device]\nname = \"{name}\"\nbackend = \"{kind}\"\n\n");
        for i in ifaces {
            let ifname = tb.ifname(node, i.link)?.to_string();
            let a4 = tb.addr4(node, i.link)?;
            run_ok(
                Command::new("ip").args(["-n", &netns, "addr", "flush", "dev", &ifname]),
                Duration::from_secs(10),
            )?;
            toml.push_str(&format!(
                "[[interfaces]]\nname = \"{ifname}\"\naddresses = [\"{a4}/24\"]\n"
            ));
            if !i.roles.is_empty() {
                let roles: Vec<String> = i.roles.iter().map(|r| format!("\"{r}\"")).collect();
                toml.push_str(&format!("endpoint = [{}]\n", roles.join(", ")));
            }
            if let Some(gw) = i.gateway {
                toml.push_str(&format!("gateway = \"{gw}\"\n"));
            }
            toml.push('\n');
        }
        toml.push_str("[mptcp]\nlimits = { subflows = 4, add_addr_accepted = 4 }\n");
        std::fs::write(&config, toml)?;
        let stack = NodeStack {
            node: node.to_string(),
            kind,
            config: Some(config),
            device: Some(name),
            netns,
            _dir: Some(dir),
        };
        if kind == "uml" {
            let mut cmd = tb.command(node, &cli_path().display().to_string())?;
            cmd.arg("up").arg("--config").arg(stack.config_path()?);
            run_ok(&mut cmd, Duration::from_secs(120))
                .with_context(|| format!("dropshim up (uml) for {node}"))?;
        }
        Ok(stack)
    }

    /// The uml kernel's pid (uml stacks only).
    pub fn uml_kernel_pid(&self) -> Option<i32> {
        if self.kind != "uml" {
            return None;
        }
        let path = run_dir(self.device.as_deref()?).join("kernel.pid");
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    fn config_path(&self) -> Result<&Path> {
        self.config
            .as_deref()
            .context("the native stack has no device file")
    }

    /// `program` in the node, on this stack (the shim preloaded).
    pub fn command(&self, tb: &Testbed, program: &str) -> Result<Command> {
        let mut cmd = plain(tb, &self.node, program)?;
        cmd.env("LD_PRELOAD", shim_path());
        match self.kind {
            "native" => {}
            "uml" => {
                cmd.env("DROPSHIM_CONFIG", self.config_path()?);
            }
            _ => {
                cmd.env("DROPSHIM_CONFIG", self.config_path()?)
                    .env("DROPSHIM_BACKEND", "lkl")
                    .env("DROPSHIM_LKL_LIB", liblkl()?);
            }
        }
        Ok(cmd)
    }
}

impl Drop for NodeStack {
    fn drop(&mut self) {
        if self.kind != "uml" {
            return;
        }
        if let Some(config) = &self.config {
            let _ = Command::new("ip")
                .args(["netns", "exec", &self.netns])
                .arg(cli_path())
                .arg("down")
                .arg("--config")
                .arg(config)
                .output();
        }
    }
}
