//! Sysctls of one kernel ([`Sysctls`]: `/proc/sys` for the host and the
//! uml guest, the library kernel's own for lkl) and the MPTCP choices made
//! through them ([`MptcpSysctl`]: enabled, path manager, scheduler).

use std::io;
use std::path::PathBuf;

/// Reads and writes one kernel's sysctls by dotted name
/// (`net.mptcp.scheduler`).
pub trait Sysctls {
    /// The value, trimmed.
    fn read(&self, name: &str) -> io::Result<String>;
    /// Sets the value.
    fn write(&self, name: &str, value: &str) -> io::Result<()>;
    /// Whether the sysctl exists in this kernel.
    fn exists(&self, name: &str) -> bool {
        self.read(name).is_ok()
    }
}

/// The sysctls under a `/proc/sys` folder (the calling process's kernel
/// and network namespace by default).
#[derive(Debug, Clone)]
pub struct ProcSys {
    root: PathBuf,
}

impl Default for ProcSys {
    fn default() -> Self {
        ProcSys {
            root: PathBuf::from("/proc/sys"),
        }
    }
}

impl ProcSys {
    /// A tree rooted elsewhere (tests).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        ProcSys { root: root.into() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name.replace('.', "/"))
    }
}

impl Sysctls for ProcSys {
    fn read(&self, name: &str) -> io::Result<String> {
        let p = self.path(name);
        std::fs::read_to_string(&p)
            .map(|s| s.trim().to_string())
            .map_err(|e| io::Error::new(e.kind(), format!("cannot read {}: {e}", p.display())))
    }

    fn write(&self, name: &str, value: &str) -> io::Result<()> {
        let p = self.path(name);
        std::fs::write(&p, value).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot write {value:?} to {}: {e} (this needs root)",
                    p.display()
                ),
            )
        })
    }

    fn exists(&self, name: &str) -> bool {
        self.path(name).exists()
    }
}

/// The MPTCP sysctls (`net.mptcp.*`) of one kernel.
pub struct MptcpSysctl<'a, S: ?Sized> {
    sys: &'a S,
}

impl<'a, S: Sysctls + ?Sized> MptcpSysctl<'a, S> {
    /// Over a kernel's sysctls.
    pub fn new(sys: &'a S) -> Self {
        MptcpSysctl { sys }
    }

    /// Whether MPTCP is enabled (`net.mptcp.enabled`).
    pub fn enabled(&self) -> io::Result<bool> {
        Ok(self.sys.read("net.mptcp.enabled")? != "0")
    }

    /// The current path manager. Kernels before 6.15 only have the
    /// numeric `pm_type` (0 kernel, 1 userspace).
    pub fn path_manager(&self) -> io::Result<String> {
        if self.sys.exists("net.mptcp.path_manager") {
            return self.sys.read("net.mptcp.path_manager");
        }
        Ok(match self.sys.read("net.mptcp.pm_type")?.as_str() {
            "0" => "kernel".to_string(),
            "1" => "userspace".to_string(),
            other => format!("pm_type {other}"),
        })
    }

    /// The path managers this kernel offers.
    pub fn available_path_managers(&self) -> io::Result<Vec<String>> {
        if self.sys.exists("net.mptcp.available_path_managers") {
            return Ok(words(&self.sys.read("net.mptcp.available_path_managers")?));
        }
        self.sys.read("net.mptcp.pm_type")?;
        Ok(vec!["kernel".to_string(), "userspace".to_string()])
    }

    /// Selects a path manager, with an error naming the available ones.
    pub fn set_path_manager(&self, name: &str) -> io::Result<()> {
        check_available("path manager", name, &self.available_path_managers()?)?;
        if self.sys.exists("net.mptcp.path_manager") {
            return self.sys.write("net.mptcp.path_manager", name);
        }
        self.sys.write(
            "net.mptcp.pm_type",
            if name == "kernel" { "0" } else { "1" },
        )
    }

    /// The current packet scheduler.
    pub fn scheduler(&self) -> io::Result<String> {
        self.sys.read("net.mptcp.scheduler")
    }

    /// The schedulers this kernel offers.
    pub fn available_schedulers(&self) -> io::Result<Vec<String>> {
        Ok(words(&self.sys.read("net.mptcp.available_schedulers")?))
    }

    /// Selects a packet scheduler, with an error naming the available ones.
    pub fn set_scheduler(&self, name: &str) -> io::Result<()> {
        check_available("scheduler", name, &self.available_schedulers()?)?;
        self.sys.write("net.mptcp.scheduler", name)
    }
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

/// Fails with the list of what the kernel offers when `want` is not in it.
pub fn check_available(what: &str, want: &str, available: &[String]) -> io::Result<()> {
    if available.iter().any(|a| a == want) {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "MPTCP {what} {want:?} is not available in this kernel; available: {} \
             (change the device file, or load the module that provides it)",
            if available.is_empty() {
                "none".to_string()
            } else {
                available.join(", ")
            }
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_choice_lists_what_exists() {
        let root = std::env::temp_dir().join(format!("dropshim-nl-sysctl-{}", std::process::id()));
        let dir = root.join("net/mptcp");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("available_schedulers"), "default\n").unwrap();
        std::fs::write(dir.join("scheduler"), "default\n").unwrap();
        std::fs::write(dir.join("available_path_managers"), "kernel userspace\n").unwrap();
        std::fs::write(dir.join("path_manager"), "kernel\n").unwrap();
        let sys = ProcSys::at(&root);
        let s = MptcpSysctl::new(&sys);

        let err = s.set_scheduler("redundant").unwrap_err().to_string();
        assert!(err.contains("\"redundant\" is not available"), "{err}");
        assert!(err.contains("available: default"), "{err}");
        assert_eq!(s.scheduler().unwrap(), "default");

        s.set_path_manager("userspace").unwrap();
        assert_eq!(s.path_manager().unwrap(), "userspace");
        let err = s.set_path_manager("bpf").unwrap_err().to_string();
        assert!(err.contains("available: kernel, userspace"), "{err}");

        // Kernels before 6.15: numeric pm_type only.
        std::fs::remove_file(dir.join("path_manager")).unwrap();
        std::fs::remove_file(dir.join("available_path_managers")).unwrap();
        std::fs::write(dir.join("pm_type"), "0\n").unwrap();
        assert_eq!(s.path_manager().unwrap(), "kernel");
        s.set_path_manager("userspace").unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("pm_type")).unwrap(), "1");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
