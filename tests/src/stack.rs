//! One scenario, every stack: the stack gw1's programs run on in a
//! two-gateways testbed (native, uml or lkl), and the native MPTCP peer
//! in gw2. A test written against [`Stack`] runs unchanged on each.

use crate::lkl::{lkl_node_extra, on_lkl, LklNode};
use crate::uml::UmlDevice;
use crate::{plain, run_ok, shimmed, DeviceExtra};
use anyhow::{bail, Result};
use dropshim_testbed::Testbed;
use std::process::Command;
use std::time::Duration;

/// The stacks, by the names the tests and the bench use.
pub const STACKS: [&str; 3] = ["native", "uml", "lkl"];

/// The stack gw1's programs run on.
pub enum Stack {
    /// The host kernel's MPTCP.
    Native,
    /// A User Mode Linux instance owning gw1's links.
    Uml(UmlDevice),
    /// A Linux Kernel Library device file for gw1.
    Lkl(LklNode),
}

impl Stack {
    /// Brings the stack up on gw1's two links (`tag` names the uml
    /// instance; unique per test).
    pub fn up(name: &str, tb: &Testbed, tag: &str) -> Result<Stack> {
        Stack::up_with(name, tb, tag, &DeviceExtra::default())
    }

    /// [`Stack::up`] with `extra` lines in the device file (scheduler,
    /// costs, path manager, link 2's endpoint roles). The native stack has
    /// no device file of its own: gw1's kernel is the testbed's, so it
    /// takes no extras.
    pub fn up_with(name: &str, tb: &Testbed, tag: &str, extra: &DeviceExtra) -> Result<Stack> {
        Ok(match name {
            "native" => {
                let only_roles = DeviceExtra {
                    roles2: extra.roles2.clone(),
                    ..DeviceExtra::default()
                };
                if *extra != only_roles {
                    bail!("the native stack runs gw1's own kernel: it takes only link 2's endpoint roles ({extra:?})");
                }
                if let Some(roles) = &extra.roles2 {
                    native_endpoint_roles(tb, roles)?;
                }
                Stack::Native
            }
            "uml" => Stack::Uml(UmlDevice::up_with(tb, "gw1", &[1, 2], tag, extra)?),
            "lkl" => {
                let roles2 = extra.roles2.as_deref().unwrap_or("\"subflow\"");
                Stack::Lkl(lkl_node_extra(tb, roles2, false, extra)?)
            }
            other => bail!("unknown stack {other}"),
        })
    }

    /// The stack's name, as in [`STACKS`].
    pub fn name(&self) -> &'static str {
        match self {
            Stack::Native => "native",
            Stack::Uml(_) => "uml",
            Stack::Lkl(_) => "lkl",
        }
    }

    /// `program` in gw1 on this stack.
    pub fn command(&self, tb: &Testbed, program: &str) -> Result<Command> {
        match self {
            Stack::Native => shimmed(tb, "gw1", program, &[]),
            Stack::Uml(dev) => {
                let mut cmd = shimmed(tb, "gw1", program, &[])?;
                cmd.env("DROPSHIM_CONFIG", dev.config());
                Ok(cmd)
            }
            Stack::Lkl(node) => on_lkl(tb, node, program),
        }
    }

    /// The address in gw1 a program on gw2 reaches this stack's server at
    /// (the link-1 address, which the stack owns).
    pub fn address(tb: &Testbed) -> Result<String> {
        Ok(tb.addr4("gw1", 1)?.to_string())
    }
}

/// Gives gw1's kernel one MPTCP endpoint, its link-2 address with
/// `roles` (TOML list items, as in a device file: `"signal"`), in place of
/// the testbed's.
fn native_endpoint_roles(tb: &Testbed, roles: &str) -> Result<()> {
    let flags: Vec<String> = roles
        .split(',')
        .map(|r| r.trim().trim_matches('"').to_string())
        .filter(|r| !r.is_empty())
        .collect();
    let addr = tb.addr4("gw1", 2)?.to_string();
    let ifname = tb.ifname("gw1", 2)?.to_string();
    run_ok(
        tb.command("gw1", "ip")?
            .args(["mptcp", "endpoint", "flush"]),
        Duration::from_secs(20),
    )?;
    run_ok(
        tb.command("gw1", "ip")?
            .args(["mptcp", "endpoint", "add", &addr, "dev", &ifname])
            .args(&flags),
        Duration::from_secs(20),
    )?;
    Ok(())
}

/// `program` in gw2 as a native MPTCP program (Debian's mptcpize).
pub fn peer(tb: &Testbed, program: &str) -> Result<Command> {
    let mut cmd = plain(tb, "gw2", "mptcpize")?;
    cmd.args(["run", program]);
    Ok(cmd)
}
