//! One scenario, every stack: the stack gw1's programs run on in a
//! two-gateways testbed (native, uml or lkl), and the native MPTCP peer
//! in gw2. A test written against [`Stack`] runs unchanged on each.

use crate::lkl::{lkl_node, on_lkl, LklNode};
use crate::uml::UmlDevice;
use crate::{plain, shimmed};
use anyhow::{bail, Result};
use dropshim_testbed::Testbed;
use std::process::Command;

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
        Ok(match name {
            "native" => Stack::Native,
            "uml" => Stack::Uml(UmlDevice::up(tb, "gw1", &[1, 2], tag)?),
            "lkl" => Stack::Lkl(lkl_node(tb, "\"subflow\"")?),
            other => bail!("unknown stack {other}"),
        })
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

/// `program` in gw2 as a native MPTCP program (Debian's mptcpize).
pub fn peer(tb: &Testbed, program: &str) -> Result<Command> {
    let mut cmd = plain(tb, "gw2", "mptcpize")?;
    cmd.args(["run", program]);
    Ok(cmd)
}
