//! A native device: a device file for a node's own kernel, applied with
//! `dropshim up` (its MPTCP limits, path manager and scheduler, and the
//! userspace path manager's daemon when the file chooses it) and taken
//! back with `dropshim down` when dropped. The node keeps its addresses:
//! on the native backend they are the administrator's.

use crate::file::Written;
use crate::{run_ok, DeviceFile};
use anyhow::{Context, Result};
use dropshim_testbed::Testbed;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long a `dropshim` command on a native device may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// A device file applied to a node's own kernel.
pub struct HostDevice {
    file: Written,
    netns: String,
    dropshim: PathBuf,
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
            file: file.write(tb, node, name, "native")?,
            netns: tb.netns(node)?.to_string(),
            dropshim: dropshim.to_path_buf(),
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
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns])
            .arg(&self.dropshim)
            .args(args)
            .arg("--config")
            .arg(self.config());
        let out = run_ok(&mut cmd, CLI_TIMEOUT)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The device file.
    pub fn config(&self) -> &Path {
        &self.file.path
    }
}

impl Drop for HostDevice {
    fn drop(&mut self) {
        let _ = self.dropshim(&["down"]);
    }
}
