//! The device file of a uml or lkl device on a testbed node, written from
//! the testbed's own addresses.

use anyhow::{bail, Context, Result};
use dropshim_testbed::Testbed;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// One interface a device takes over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    /// The testbed link (or segment) the interface is on.
    pub link: u32,
    /// The interface's IPv6 address too, not only its IPv4 one.
    pub ipv6: bool,
    /// MPTCP endpoint roles of its addresses (`subflow`, `signal`,
    /// `backup`, ...); none leaves it without an endpoint.
    pub roles: Vec<String>,
    /// A default gateway through this interface.
    pub gateway: Option<Ipv4Addr>,
    /// Its `cost`, for the cost-aware scheduler and path manager.
    pub cost: Option<u32>,
}

impl Iface {
    /// The interface on `link`: IPv4 only, no endpoint, no gateway.
    pub fn on(link: u32) -> Iface {
        Iface {
            link,
            ipv6: false,
            roles: Vec::new(),
            gateway: None,
            cost: None,
        }
    }

    /// With the interface's IPv6 address as well.
    pub fn ipv6(mut self) -> Iface {
        self.ipv6 = true;
        self
    }

    /// With these MPTCP endpoint roles.
    pub fn roles(mut self, roles: &[&str]) -> Iface {
        self.roles = roles.iter().map(|r| r.to_string()).collect();
        self
    }

    /// With a default gateway through it.
    pub fn gateway(mut self, gateway: Ipv4Addr) -> Iface {
        self.gateway = Some(gateway);
        self
    }

    /// With a cost.
    pub fn cost(mut self, cost: u32) -> Iface {
        self.cost = Some(cost);
        self
    }
}

/// What a device file says: the interfaces and the MPTCP choices. The
/// rest (`[policy]`, memory) keeps the backends' defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceFile {
    /// The interfaces the device takes over, in file order.
    pub interfaces: Vec<Iface>,
    /// `[mptcp] limits`: subflows and accepted ADD_ADDRs; `None` leaves
    /// the kernel's.
    pub subflows: Option<u32>,
    /// `[mptcp] scheduler`; `None` keeps the kernel's.
    pub scheduler: Option<String>,
    /// The lines of `[mptcp.userspace]`; setting them selects dropshim's
    /// userspace path manager, `None` the kernel's.
    pub userspace: Option<String>,
    /// Extra arguments of a uml instance's kernel command line (`[uml]
    /// cmdline`), such as a `sysctl.` setting of the guest.
    pub uml_cmdline: Vec<String>,
}

impl DeviceFile {
    /// A file for `interfaces`, with two subflows and everything else the
    /// backends' defaults.
    pub fn new(interfaces: Vec<Iface>) -> DeviceFile {
        DeviceFile {
            interfaces,
            subflows: Some(2),
            scheduler: None,
            userspace: None,
            uml_cmdline: Vec::new(),
        }
    }

    /// The file's text for device `name` of `backend` (`uml` or `lkl`) on
    /// `node` of `tb`, its addresses the testbed's.
    pub fn text(&self, tb: &Testbed, node: &str, name: &str, backend: &str) -> Result<String> {
        self.render(name, backend, |link| {
            Ok(LinkAddrs {
                ifname: tb.ifname(node, link)?.to_string(),
                v4: format!("{}/24", tb.addr4(node, link)?),
                v6: format!("{}/64", tb.addr6(node, link)?),
            })
        })
    }

    /// The file's text with each link's interface name and addresses from
    /// `addrs`.
    pub fn render(
        &self,
        name: &str,
        backend: &str,
        addrs: impl Fn(u32) -> Result<LinkAddrs>,
    ) -> Result<String> {
        if backend != "uml" && !self.uml_cmdline.is_empty() {
            bail!(
                "a uml kernel command line for a {backend} device: {:?}",
                self.uml_cmdline
            );
        }
        let mut text = format!("[device]\nname = \"{name}\"\nbackend = \"{backend}\"\n\n");
        for i in &self.interfaces {
            let a = addrs(i.link)?;
            text += &format!("[[interfaces]]\nname = \"{}\"\n", a.ifname);
            text += &match i.ipv6 {
                true => format!("addresses = [\"{}\", \"{}\"]\n", a.v4, a.v6),
                false => format!("addresses = [\"{}\"]\n", a.v4),
            };
            if !i.roles.is_empty() {
                text += &format!("endpoint = [{}]\n", toml_strings(&i.roles));
            }
            if let Some(gw) = i.gateway {
                text += &format!("gateway = \"{gw}\"\n");
            }
            if let Some(cost) = i.cost {
                text += &format!("cost = {cost}\n");
            }
            text.push('\n');
        }
        text += "[mptcp]\n";
        if let Some(n) = self.subflows {
            text += &format!("limits = {{ subflows = {n}, add_addr_accepted = {n} }}\n");
        }
        if let Some(s) = &self.scheduler {
            text += &format!("scheduler = \"{s}\"\n");
        }
        if let Some(lines) = &self.userspace {
            text += &format!("path_manager = \"userspace\"\n\n[mptcp.userspace]\n{lines}\n");
        }
        if !self.uml_cmdline.is_empty() {
            text += &format!("\n[uml]\ncmdline = [{}]\n", toml_strings(&self.uml_cmdline));
        }
        Ok(text)
    }

    /// Takes the interfaces of this file off `node`'s host stack: the
    /// device's transport sees every frame, so the host must not answer on
    /// them too (design brief); their addresses move into the device.
    pub fn take_interfaces(&self, tb: &Testbed, node: &str) -> Result<()> {
        let netns = tb.netns(node)?;
        for i in &self.interfaces {
            let ifname = tb.ifname(node, i.link)?;
            crate::run_ok(
                Command::new("ip").args(["-n", netns, "addr", "flush", "dev", ifname]),
                Duration::from_secs(20),
            )?;
        }
        Ok(())
    }
}

/// A device file on disk, in a private folder removed when this is
/// dropped.
pub(crate) struct Written {
    pub(crate) path: PathBuf,
    pub(crate) _dir: tempfile::TempDir,
}

impl DeviceFile {
    /// Writes the file for device `name` of `backend` on `node`; a uml or
    /// lkl device takes its interfaces off the host first.
    pub(crate) fn write(
        &self,
        tb: &Testbed,
        node: &str,
        name: &str,
        backend: &str,
    ) -> Result<Written> {
        let text = self.text(tb, node, name, backend)?;
        if backend != "native" {
            self.take_interfaces(tb, node)?;
        }
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(Written { path, _dir: dir })
    }
}

/// A device file written for a node, with the `dropshim` command that
/// brings it up and down there (uml and native devices).
pub(crate) struct Applied {
    pub(crate) file: Written,
    pub(crate) netns: String,
    dropshim: PathBuf,
}

impl Applied {
    /// Writes `file` for device `name` of `backend` on `node`.
    pub(crate) fn write(
        tb: &Testbed,
        node: &str,
        file: &DeviceFile,
        name: &str,
        backend: &str,
        dropshim: &Path,
    ) -> Result<Applied> {
        Ok(Applied {
            file: file.write(tb, node, name, backend)?,
            netns: tb.netns(node)?.to_string(),
            dropshim: dropshim.to_path_buf(),
        })
    }

    /// `dropshim ARGS --config FILE` in the device's node, at most
    /// `timeout`; fails unless it exits 0.
    pub(crate) fn dropshim(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns])
            .arg(&self.dropshim)
            .args(args)
            .arg("--config")
            .arg(&self.file.path);
        crate::run_ok(&mut cmd, timeout)
    }
}

/// A link's interface name and addresses (with their prefix lengths).
#[derive(Clone, Debug)]
pub struct LinkAddrs {
    /// The interface's name in the node.
    pub ifname: String,
    /// Its IPv4 address, `a.b.c.d/len`.
    pub v4: String,
    /// Its IPv6 address, `x::y/len`.
    pub v6: String,
}

/// `"a", "b"`: TOML list items.
fn toml_strings(items: &[String]) -> String {
    items
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use dropshim_conf::{PathManager, PmPolicy};

    fn addrs(link: u32) -> Result<LinkAddrs> {
        Ok(LinkAddrs {
            ifname: format!("link{link}"),
            v4: format!("10.0.{link}.1/24"),
            v6: format!("fd00:{link}::1/64"),
        })
    }

    /// Every field the file writes parses back, through the project's
    /// own device-file parser, to what was asked for.
    #[test]
    fn every_choice_parses_back_to_itself() {
        let mut file = DeviceFile::new(vec![
            Iface::on(1)
                .ipv6()
                .gateway(Ipv4Addr::new(10, 0, 1, 254))
                .cost(1),
            Iface::on(2).roles(&["subflow", "backup"]).cost(10),
        ]);
        file.subflows = Some(4);
        file.scheduler = Some("blest".into());
        file.userspace = Some("policy = \"backup\"".into());
        file.uml_cmdline = vec!["sysctl.net.core.rmem_max=1".into()];
        let text = file.render("d", "uml", addrs).unwrap();
        let cfg = dropshim_conf::parse(&text, "d.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(cfg.device.name, "d");
        assert_eq!(cfg.interfaces.len(), 2);
        assert_eq!(cfg.interfaces[0].name, "link1");
        assert_eq!(cfg.interfaces[0].addresses.len(), 2, "{text}");
        assert_eq!(cfg.interfaces[1].addresses.len(), 1, "{text}");
        assert_eq!(cfg.interfaces[0].cost, Some(1));
        assert_eq!(cfg.interfaces[1].cost, Some(10));
        assert!(cfg.interfaces[0].gateway.is_some(), "{text}");
        assert_eq!(cfg.interfaces[1].endpoint.len(), 2, "{text}");
        assert_eq!(cfg.mptcp.scheduler.as_deref(), Some("blest"));
        assert_eq!(cfg.mptcp.path_manager, Some(PathManager::Userspace));
        assert_eq!(
            cfg.mptcp.userspace.as_ref().map(|u| u.policy),
            Some(PmPolicy::Backup)
        );
        assert_eq!(
            cfg.uml.map(|u| u.cmdline),
            Some(vec!["sysctl.net.core.rmem_max=1".to_string()])
        );
    }

    #[test]
    fn a_plain_file_keeps_the_kernels_choices_and_lkl_refuses_a_uml_cmdline() {
        let file = DeviceFile::new(vec![Iface::on(1)]);
        let text = file.render("d", "lkl", addrs).unwrap();
        let cfg = dropshim_conf::parse(&text, "d.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(cfg.mptcp.scheduler, None);
        assert_ne!(cfg.mptcp.path_manager, Some(PathManager::Userspace));
        let mut file = file;
        file.uml_cmdline = vec!["x=1".into()];
        let err = file.render("d", "lkl", addrs).unwrap_err();
        assert!(err.to_string().contains("uml kernel command line"), "{err}");
    }
}
