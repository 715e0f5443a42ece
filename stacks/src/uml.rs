//! A uml device: a User Mode Linux instance, brought up with `dropshim
//! up` inside a testbed node, that owns some of the node's links, and is
//! brought down (even when a scenario fails) when dropped.

use crate::file::Applied;
use crate::{run_ok, DeviceFile};
use anyhow::{Context, Result};
use dropshim_testbed::Testbed;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long `dropshim up` may take to boot an instance before it counts
/// as stuck.
const UP_TIMEOUT: Duration = Duration::from_secs(600);

/// A running UML instance owning some of a node's links.
pub struct UmlDevice {
    /// The device's name, which names its run directory.
    pub name: String,
    applied: Applied,
}

impl UmlDevice {
    /// Hands `node`'s interfaces of `file` to a new instance called
    /// `name`, started by the `dropshim` command at `dropshim`.
    pub fn up(
        tb: &Testbed,
        node: &str,
        file: &DeviceFile,
        name: &str,
        dropshim: &Path,
    ) -> Result<UmlDevice> {
        let dev = UmlDevice {
            name: name.to_string(),
            applied: Applied::write(tb, node, file, name, "uml", dropshim)?,
        };
        dev.applied
            .dropshim(&["up"], UP_TIMEOUT)
            .with_context(|| format!("`dropshim up` of uml device {name} in {node}"))?;
        Ok(dev)
    }

    /// `dropshim down` then `dropshim up` for this device.
    pub fn restart(&self) -> Result<()> {
        self.applied
            .dropshim(&["down"], Duration::from_secs(120))
            .context("dropshim down (uml)")?;
        self.applied
            .dropshim(&["up"], UP_TIMEOUT)
            .context("dropshim up (uml)")?;
        Ok(())
    }

    /// Puts `cmd` on this device: the shim preloaded with this device
    /// file, nothing else inherited.
    pub fn program_env(&self, cmd: &mut Command, shim: &Path) {
        crate::clear_stack_env(cmd);
        cmd.env("LD_PRELOAD", shim)
            .env("DROPSHIM_CONFIG", self.config());
    }

    /// The device's run directory, by the backend's own rule.
    pub fn run_dir(&self) -> PathBuf {
        dropshim_backend_uml::run_dir(&self.name)
    }

    /// CPU seconds (user and system) used so far by the instance's
    /// processes (the kernel's process group); 0 once it is gone.
    pub fn cpu_seconds(&self) -> f64 {
        match self.kernel_pid() {
            Ok(group) => dropshim_testbed::process_group_cpu(group).as_secs_f64(),
            Err(_) => 0.0,
        }
    }

    /// The instance's kernel process, for tests that kill it.
    pub fn kernel_pid(&self) -> Result<i32> {
        let path = self.run_dir().join("kernel.pid");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(text.trim().parse()?)
    }

    /// The instance's supervisor process.
    pub fn supervisor_pid(&self) -> Result<i32> {
        let path = self.run_dir().join("supervisor.pid");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(text.trim().parse()?)
    }

    /// The device file the instance runs.
    pub fn config(&self) -> &Path {
        &self.applied.file.path
    }

    /// The last `lines` lines of the instance's console (the guest
    /// kernel's messages and the agent's), for a failure's report.
    pub fn console_tail(&self, lines: usize) -> String {
        self.log_tail("console.log", lines)
    }

    /// The last `lines` lines of the instance's supervisor log (the
    /// links it saw go down and come back, and what reopening them in
    /// the guest answered), for a failure's report.
    pub fn supervisor_tail(&self, lines: usize) -> String {
        self.log_tail("supervisor.log", lines)
    }

    /// The host's side of the instance, for a failure's report: the CPU
    /// its processes use, its node's links (drops on a cut link), the
    /// programs' bridges to the guest (`ss -tin`: unacknowledged bytes,
    /// retransmissions, back-off) and the private link's counters.
    pub fn host_side_state(&self) -> String {
        let guest = std::net::Ipv4Addr::from(dropshim_backend_uml::GUEST_BRIDGE_ADDR).to_string();
        // The supervisor makes the bridges in the private namespace and
        // passes them to the programs.
        let private = dropshim_backend_uml::host::names(&self.name).netns;
        let mut text = match self.cpu_percent() {
            Ok(p) if p >= 50 => format!(
                "the instance's processes used {p} % of a CPU over 1 s; where it went:\n{}\n",
                self.cpu_profile()
            ),
            Ok(p) => format!("the instance's processes used {p} % of a CPU over 1 s\n"),
            Err(e) => format!("(the instance's CPU: {e:#})\n"),
        };
        for (netns, args) in [
            (self.applied.netns.as_str(), vec!["ip", "-s", "link"]),
            (private.as_str(), vec!["ss", "-tinH", "dst", guest.as_str()]),
            (private.as_str(), vec!["ip", "-s", "link"]),
        ] {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", netns]).args(&args);
            let out = match run_ok(&mut cmd, Duration::from_secs(10)) {
                Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
                Err(e) => format!("({e:#})"),
            };
            let shown: Vec<&str> = out.lines().take(80).collect();
            text.push_str(&format!(
                "{} in {netns}:\n{}\n",
                args.join(" "),
                shown.join("\n")
            ));
        }
        text
    }

    /// Host CPU time the instance's processes (the kernel's process
    /// group) used over one second, in percent of one CPU: near 100 while
    /// its network has gone quiet means the guest is busy with something
    /// else, such as a device polling a dead link.
    pub fn cpu_percent(&self) -> Result<u64> {
        let group = self.kernel_pid()?;
        let before = dropshim_testbed::process_group_cpu(group);
        std::thread::sleep(Duration::from_secs(1));
        let used = dropshim_testbed::process_group_cpu(group).saturating_sub(before);
        Ok((used.as_millis() / 10) as u64)
    }

    /// Where the instance's kernel process spends its CPU: the functions
    /// `perf` samples most over one second, or why there is no profile.
    /// Those of the guest kernel are in the `linux` binary (it carries its
    /// symbols); `[kernel.kallsyms]` is the host's, on the guest's
    /// behalf (its system calls, page faults, signals).
    pub fn cpu_profile(&self) -> String {
        let pid = match self.kernel_pid() {
            Ok(pid) => pid.to_string(),
            Err(e) => return format!("({e:#})"),
        };
        let data = self.run_dir().join("stall.perf");
        let mut record = Command::new("perf");
        record
            .args(["record", "-q", "-F", "999", "-p", &pid, "-o"])
            .arg(&data)
            .args(["--", "sleep", "1"]);
        if let Err(e) = run_ok(&mut record, Duration::from_secs(20)) {
            return format!("(no profile: perf record: {e:#})");
        }
        let mut report = Command::new("perf");
        report
            .args([
                "report",
                "--stdio",
                "--no-children",
                "--sort",
                "dso,sym",
                "-i",
            ])
            .arg(&data);
        let text = match run_ok(&mut report, Duration::from_secs(60)) {
            Ok(o) => String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .take(25)
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => format!("(no profile: perf report: {e:#})"),
        };
        let _ = std::fs::remove_file(&data);
        text
    }

    /// The last `lines` lines of `file` in the instance's run directory.
    fn log_tail(&self, file: &str, lines: usize) -> String {
        let path = self.run_dir().join(file);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(e) => format!("(cannot read {}: {e})", path.display()),
        }
    }

    /// What the instance's guest kernel reports (`dropshim status --guest`):
    /// its sockets with their memory (`ss -tmiMn`) and its counters.
    pub fn guest_stats(&self) -> Result<String> {
        let out = self
            .applied
            .dropshim(&["status", "--guest"], Duration::from_secs(60))
            .context("dropshim status --guest")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for UmlDevice {
    fn drop(&mut self) {
        let _ = self.applied.dropshim(&["down"], Duration::from_secs(60));
    }
}
