//! One scenario, every stack: the stack gw1's programs run on in a
//! two-gateways testbed (native, uml or lkl), and the native MPTCP peer
//! in gw2. A test written against [`Stack`] runs unchanged on each.

use crate::lkl::liblkl;
use crate::{cli_path, plain, run_ok, shim_path, DeviceExtra};
use anyhow::{bail, Result};
use dropshim_stacks::{NodeStack, Tools};
use dropshim_testbed::Testbed;
use std::process::Command;
use std::time::Duration;

/// The stack gw1's programs run on.
pub struct Stack(NodeStack);

/// This run's artifacts for a node on `kind` (liblkl.so only for lkl,
/// where it is built or found once per run).
pub fn tools(kind: &str) -> Result<Tools> {
    Ok(Tools {
        shim: shim_path(),
        dropshim: cli_path(),
        liblkl: if kind == "lkl" { Some(liblkl()?) } else { None },
    })
}

impl Stack {
    /// Brings the stack up on gw1's two links (`tag` names the uml
    /// instance; unique per test).
    pub fn up(name: &str, tb: &Testbed, tag: &str) -> Result<Stack> {
        Stack::up_with(name, tb, tag, &DeviceExtra::default())
    }

    /// [`Stack::up`] with `extra` in the device file (scheduler, costs,
    /// path manager, link 2's endpoint roles). The native stack has no
    /// device file of its own: gw1's kernel is the testbed's, so it takes
    /// no extras but link 2's endpoint roles, which it gives gw1's kernel.
    pub fn up_with(name: &str, tb: &Testbed, tag: &str, extra: &DeviceExtra) -> Result<Stack> {
        let node = match name {
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
                NodeStack::native("gw1")
            }
            "uml" | "lkl" => {
                // The uml devices of the tests carry IPv6 too; lkl's
                // IPv6 tests bring their own node (lkl::lkl_node_with).
                let file = extra.device_file(&[1, 2], name == "uml");
                NodeStack::up(
                    name,
                    tb,
                    "gw1",
                    &file,
                    &format!("{name}{tag}"),
                    &tools(name)?,
                )?
            }
            other => bail!("unknown stack {other}"),
        };
        Ok(Stack(node))
    }

    /// `native`, `uml` or `lkl`.
    pub fn name(&self) -> &'static str {
        self.0.kind()
    }

    /// `program` in gw1 on this stack.
    pub fn command(&self, tb: &Testbed, program: &str) -> Result<Command> {
        self.0.command(tb, program, &shim_path())
    }

    /// The address in gw1 a program on gw2 reaches this stack's server at
    /// (the link-1 address, which the stack owns).
    pub fn address(tb: &Testbed) -> Result<String> {
        Ok(tb.addr4("gw1", 1)?.to_string())
    }
}

/// Gives gw1's kernel one MPTCP endpoint, its link-2 address with
/// `roles` (`signal`, ...), in place of the testbed's.
fn native_endpoint_roles(tb: &Testbed, roles: &[String]) -> Result<()> {
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
            .args(roles),
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
