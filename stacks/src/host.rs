//! A native device: a device file for a node's own kernel, applied with
//! `dropshim up` (its MPTCP limits, path manager and scheduler, and the
//! userspace path manager's daemon when the file chooses it) and taken
//! back with `dropshim down` when dropped. The node keeps its addresses:
//! on the native backend they are the administrator's.

use crate::file::Applied;
use crate::DeviceFile;
use anyhow::{Context, Result};
use dropshim_testbed::Testbed;
use std::path::Path;
use std::time::Duration;

/// How long a `dropshim` command on a native device may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// A device file applied to a node's own kernel.
pub struct HostDevice {
    applied: Applied,
    /// What `dropshim up` printed.
    pub up_said: String,
}

impl HostDevice {
    /// Writes `file` for `node`'s own kernel as device `name` and runs
    /// `dropshim up` on it there.
    pub fn up(
        tb: &Testbed,
        node: &str,
        file: &DeviceFile,
        name: &str,
        dropshim: &Path,
    ) -> Result<HostDevice> {
        let mut dev = HostDevice {
            applied: Applied::write(tb, node, file, name, "native", dropshim)?,
            up_said: String::new(),
        };
        dev.up_said = dev
            .dropshim(&["up"])
            .with_context(|| format!("`dropshim up` of native device {name} in {node}"))?;
        Ok(dev)
    }

    /// `dropshim ARGS --config FILE` in the device's node; what it
    /// printed on stdout.
    pub fn dropshim(&self, args: &[&str]) -> Result<String> {
        let out = self.applied.dropshim(args, CLI_TIMEOUT)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The device file.
    pub fn config(&self) -> &Path {
        &self.applied.file.path
    }
}

impl Drop for HostDevice {
    fn drop(&mut self) {
        let _ = self.dropshim(&["down"]);
    }
}
