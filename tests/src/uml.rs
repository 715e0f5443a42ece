//! Support for the uml backend's tests: a device whose interfaces a UML
//! instance owns, brought up with `dropshim up` inside a testbed node and
//! brought down (even on failure) when the guard drops.

use crate::{cli_path, run_ok};
use anyhow::{Context, Result};
use dropshim_testbed::Testbed;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique device name per test (pid + counter): run directories,
/// private namespaces and interface names derive from it.
pub fn unique_device(tag: &str) -> String {
    format!(
        "uml{tag}{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A running UML instance owning `node`'s links.
pub struct UmlDevice {
    pub name: String,
    pub config: PathBuf,
    netns: String,
    _dir: tempfile::TempDir,
}

impl UmlDevice {
    /// Hands `node`'s interfaces on `links` to a new instance: their host
    /// addresses move into the guest; the last link gets a `subflow`
    /// endpoint so MPTCP opens a second subflow over it.
    pub fn up(tb: &Testbed, node: &str, links: &[u32], tag: &str) -> Result<UmlDevice> {
        let name = unique_device(tag);
        let netns = tb.netns(node)?.to_string();
        let dir = tempfile::tempdir()?;
        let config = dir.path().join(format!("{name}.toml"));
        let mut toml = format!("[device]\nname = \"{name}\"\nbackend = \"uml\"\n\n");
        for (i, &link) in links.iter().enumerate() {
            let ifname = tb.ifname(node, link)?.to_string();
            let a4 = tb.addr4(node, link)?;
            let a6 = tb.addr6(node, link)?;
            run_ok(
                Command::new("ip").args(["-n", &netns, "addr", "flush", "dev", &ifname]),
                Duration::from_secs(10),
            )?;
            toml.push_str(&format!(
                "[[interfaces]]\nname = \"{ifname}\"\naddresses = [\"{a4}/24\", \"{a6}/64\"]\n"
            ));
            if i + 1 == links.len() && links.len() > 1 {
                toml.push_str("endpoint = [\"subflow\"]\n");
            }
            toml.push('\n');
        }
        toml.push_str("[mptcp]\nlimits = { subflows = 2, add_addr_accepted = 2 }\n");
        std::fs::write(&config, toml)?;
        let dev = UmlDevice {
            name,
            config,
            netns,
            _dir: dir,
        };
        let mut cmd = tb.command(node, &cli_path().display().to_string())?;
        cmd.arg("up").arg("--config").arg(&dev.config);
        run_ok(&mut cmd, Duration::from_secs(600)).context("dropshim up (uml)")?;
        Ok(dev)
    }

    /// The instance's kernel process, for tests that kill it.
    pub fn kernel_pid(&self) -> Result<i32> {
        let path = run_dir(&self.name).join("kernel.pid");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(text.trim().parse()?)
    }

    pub fn config(&self) -> &Path {
        &self.config
    }
}

/// Same rule as the backend: `DROPSHIM_UML_RUN` or /run/dropshim/uml.
pub fn run_dir(device: &str) -> PathBuf {
    let base = std::env::var_os("DROPSHIM_UML_RUN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/dropshim/uml"));
    base.join(device)
}

impl Drop for UmlDevice {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(cli_path())
            .arg("down")
            .arg("--config")
            .arg(&self.config)
            .output();
    }
}
