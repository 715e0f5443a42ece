//! A testbed node's programs on a stack: native (the host kernel through
//! the shim), uml (a User Mode Linux instance that owns the node's links)
//! or lkl (a Linux Kernel Library booted inside each program).
//!
//! This crate owns what a scenario needs to put a node on a stack: the
//! device file written from the testbed's addresses ([`DeviceFile`]), the
//! host addresses taken off the interfaces the device owns, a uml
//! instance's life (`dropshim up` and `dropshim down`, [`UmlDevice`]), a
//! device file applied to a node's own kernel ([`HostDevice`]), and
//! the environment a program starts with on each stack
//! ([`NodeStack::command`]). `dropshim bench` and the end-to-end tests
//! both go through it, so a scenario measured is a scenario tested.
//!
//! It must not touch the testbed's topology (`dropshim-testbed` builds and
//! removes it) nor a backend's inside: it only writes device files and
//! runs the `dropshim` command and programs, as a user would.

#![warn(missing_docs)]

mod file;
mod host;
mod lkl;
mod uml;

pub use file::{DeviceFile, Iface, LinkAddrs};
pub use host::HostDevice;
pub use lkl::LklDevice;
pub use uml::UmlDevice;

use anyhow::{bail, Result};
use dropshim_testbed::Testbed;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The stacks a node's programs can run on, by the names the bench, the
/// tests and device files use.
pub const STACKS: [&str; 3] = ["native", "uml", "lkl"];

/// The variables that put a program on a stack. A program started for a
/// stack gets exactly the ones that stack sets, none inherited.
const STACK_ENV: [&str; 5] = [
    "LD_PRELOAD",
    "DROPSHIM_CONFIG",
    "DROPSHIM_BACKEND",
    "DROPSHIM_LOG",
    "DROPSHIM_LKL_LIB",
];

/// The built artifacts a stack needs.
#[derive(Clone, Debug)]
pub struct Tools {
    /// `libdropshim.so`, preloaded into every program on every stack.
    pub shim: PathBuf,
    /// The `dropshim` command, which brings uml instances up and down.
    pub dropshim: PathBuf,
    /// `liblkl.so`, for the lkl stack (found once by the caller, so no
    /// program builds it behind a measurement's back).
    pub liblkl: Option<PathBuf>,
}

/// A device name no other device of this run has (run directories,
/// private namespaces and interface names derive from it): `prefix`, the
/// process id and a counter.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A uml or lkl device that owns some of a node's interfaces.
pub enum Device {
    /// A running UML instance (shut down when dropped).
    Uml(UmlDevice),
    /// A device file each lkl program boots its library kernel from.
    Lkl(LklDevice),
}

impl Device {
    /// Hands `node`'s interfaces named in `file` to a new device of
    /// `kind` (`uml` or `lkl`) called `name`.
    pub fn up(
        kind: &str,
        tb: &Testbed,
        node: &str,
        file: &DeviceFile,
        name: &str,
        tools: &Tools,
    ) -> Result<Device> {
        Ok(match kind {
            "uml" => Device::Uml(UmlDevice::up(tb, node, file, name, &tools.dropshim)?),
            "lkl" => {
                let Some(library) = &tools.liblkl else {
                    bail!("the lkl stack needs liblkl.so: run backend-lkl/build-lkl.sh (or point DROPSHIM_LKL_LIB at one)");
                };
                Device::Lkl(LklDevice::up(tb, node, file, name, library)?)
            }
            other => bail!("{other:?} is not a device's stack: uml or lkl"),
        })
    }

    /// `uml` or `lkl`.
    pub fn kind(&self) -> &'static str {
        match self {
            Device::Uml(_) => "uml",
            Device::Lkl(_) => "lkl",
        }
    }

    /// The device file the device runs.
    pub fn config(&self) -> &Path {
        match self {
            Device::Uml(d) => d.config(),
            Device::Lkl(d) => d.config(),
        }
    }

    /// Puts `cmd` on this device (see the devices' own `program_env`).
    pub fn program_env(&self, cmd: &mut Command, shim: &Path) {
        match self {
            Device::Uml(d) => d.program_env(cmd, shim),
            Device::Lkl(d) => d.program_env(cmd, shim),
        }
    }

    /// CPU seconds used so far outside the programs: the UML kernel's
    /// processes. The library kernel runs inside each program, so the
    /// program's own CPU figure already holds it (0 here).
    pub fn cpu_seconds(&self) -> f64 {
        match self {
            Device::Uml(d) => d.cpu_seconds(),
            Device::Lkl(_) => 0.0,
        }
    }
}

/// Removes every variable that puts a program on a stack.
pub fn clear_stack_env(cmd: &mut Command) {
    for var in STACK_ENV {
        cmd.env_remove(var);
    }
}

/// The stack one node's programs run on.
pub struct NodeStack {
    node: String,
    device: Option<Device>,
}

impl NodeStack {
    /// `node` on the native stack: its own kernel, addresses, endpoints
    /// and routes, through the shim.
    pub fn native(node: &str) -> NodeStack {
        NodeStack {
            node: node.to_string(),
            device: None,
        }
    }

    /// `node` on `kind` (`native`, `uml` or `lkl`). uml and lkl take the
    /// interfaces of `file` over (their host addresses go) under a new
    /// device named from `prefix`; native ignores `file`, since the node's
    /// kernel is the testbed's.
    pub fn up(
        kind: &str,
        tb: &Testbed,
        node: &str,
        file: &DeviceFile,
        prefix: &str,
        tools: &Tools,
    ) -> Result<NodeStack> {
        if !STACKS.contains(&kind) {
            bail!("unknown stack {kind:?}: use native, uml or lkl");
        }
        let device = match kind {
            "native" => None,
            _ => Some(Device::up(
                kind,
                tb,
                node,
                file,
                &unique_name(prefix),
                tools,
            )?),
        };
        Ok(NodeStack {
            node: node.to_string(),
            device,
        })
    }

    /// The node whose programs run on this stack.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// `native`, `uml` or `lkl`.
    pub fn kind(&self) -> &'static str {
        self.device.as_ref().map_or("native", Device::kind)
    }

    /// The uml or lkl device; `None` on native.
    pub fn device(&self) -> Option<&Device> {
        self.device.as_ref()
    }

    /// The uml instance's kernel process (uml stacks only).
    pub fn uml_kernel_pid(&self) -> Option<i32> {
        match &self.device {
            Some(Device::Uml(d)) => d.kernel_pid().ok(),
            _ => None,
        }
    }

    /// `program` in the node, on this stack (the shim preloaded).
    pub fn command(&self, tb: &Testbed, program: &str, shim: &Path) -> Result<Command> {
        let mut cmd = tb.command(&self.node, program)?;
        match &self.device {
            None => {
                clear_stack_env(&mut cmd);
                cmd.env("LD_PRELOAD", shim);
            }
            Some(d) => d.program_env(&mut cmd, shim),
        }
        Ok(cmd)
    }
}

/// Runs `cmd` to its end, at most `timeout`, and fails unless it exits 0,
/// with what it printed.
fn run_ok(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let out = dropshim_testbed::run_with_timeout(cmd, timeout)?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(cmd: &Command) -> Vec<(String, Option<String>)> {
        let mut v: Vec<_> = cmd
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// A program on an lkl device gets the shim, the device file, the
    /// backend and the library, and none of the caller's own settings.
    #[test]
    fn an_lkl_program_gets_its_device_and_library_and_nothing_inherited() {
        let dev = LklDevice {
            file: file::Written {
                path: PathBuf::from("/x/d.toml"),
                _dir: tempfile::tempdir().unwrap(),
            },
            library: PathBuf::from("/x/liblkl.so"),
        };
        let mut cmd = Command::new("true");
        cmd.env("DROPSHIM_LOG", "debug");
        Device::Lkl(dev).program_env(&mut cmd, Path::new("/x/libdropshim.so"));
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            env(&cmd),
            vec![
                ("DROPSHIM_BACKEND".to_string(), s("lkl")),
                ("DROPSHIM_CONFIG".to_string(), s("/x/d.toml")),
                ("DROPSHIM_LKL_LIB".to_string(), s("/x/liblkl.so")),
                ("DROPSHIM_LOG".to_string(), None),
                ("LD_PRELOAD".to_string(), s("/x/libdropshim.so")),
            ]
        );
    }

    #[test]
    fn names_are_unique_and_native_has_no_device() {
        assert_ne!(unique_name("a"), unique_name("a"));
        let node = NodeStack::native("gw1");
        assert_eq!(node.kind(), "native");
        assert!(node.device().is_none());
    }
}
