//! The library kernel as a target of dropshim's netlink layer: its
//! netlink sockets as a [`Transport`], its sysctls as [`Sysctls`], the
//! device configurator run against it ([`Lkl::configure`]) and dropshim's
//! userspace path manager driving its MPTCP ([`LklStack`],
//! [`LklStack::run_path_manager`]).

use std::io;
use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use dropshim_conf::DeviceConfig;
use dropshim_netlink::configure::{Applied, Iface, Kernel, Options, Ownership};
use dropshim_netlink::diag::MptcpConnection;
use dropshim_netlink::mptcp::{Event, Events, MptcpPm};
use dropshim_netlink::route::Rtnl;
use dropshim_netlink::sysctl::Sysctls;
use dropshim_netlink::{Protocol, Transport};
use dropshim_pm::stack::{drive, Stack};
use dropshim_pm::{Commands, LocalAddr, Settings};

use crate::{Error, Fd, Interface, Lkl, Result};

const NETLINK_ADD_MEMBERSHIP: i32 = 1;
const NETLINK_EXT_ACK: i32 = 11;
const NETLINK_CAP_ACK: i32 = 10;

fn to_io(e: Error) -> io::Error {
    match e {
        // Kept as the bare errno: a reader of events tells a full socket
        // buffer (events lost, not fatal) by it.
        Error::Sys { errno, .. } if errno == libc::ENOBUFS => io::Error::from_raw_os_error(errno),
        Error::Sys { what, errno } => {
            let os = io::Error::from_raw_os_error(errno);
            io::Error::new(os.kind(), format!("{what}: {os} (in the library kernel)"))
        }
        other => io::Error::other(other.to_string()),
    }
}

/// A netlink socket inside the library kernel; closed on drop.
pub struct LklSocket<'a> {
    lkl: &'a Lkl,
    fd: Fd,
}

impl<'a> LklSocket<'a> {
    /// Opens a netlink socket of `protocol` in the library kernel.
    pub fn open(lkl: &'a Lkl, protocol: Protocol) -> Result<Self> {
        let fd = lkl.socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol.number(),
        )?;
        let socket = LklSocket { lkl, fd };
        // Only the kernel's error texts depend on these: failures ignored.
        let _ = lkl.setsockopt_int(fd, libc::SOL_NETLINK, NETLINK_EXT_ACK, 1);
        let _ = lkl.setsockopt_int(fd, libc::SOL_NETLINK, NETLINK_CAP_ACK, 1);
        lkl.bind_netlink(fd)?;
        Ok(socket)
    }
}

impl LklSocket<'_> {
    /// A blocking receive fails with `EAGAIN` after `timeout` (at least
    /// a millisecond: zero would mean never).
    pub fn set_recv_timeout(&self, timeout: Duration) -> Result<()> {
        self.lkl
            .set_recv_timeout(self.fd, timeout.max(Duration::from_millis(1)))
    }
}

impl Drop for LklSocket<'_> {
    fn drop(&mut self) {
        let _ = self.lkl.close(self.fd);
    }
}

impl Transport for LklSocket<'_> {
    fn send(&mut self, datagram: &[u8]) -> io::Result<()> {
        self.lkl.send(self.fd, datagram, 0).map(drop).map_err(to_io)
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self
            .lkl
            .recv(self.fd, buf, libc::MSG_TRUNC)
            .map_err(to_io)?;
        if n > buf.len() {
            return Err(io::Error::other(format!(
                "netlink datagram of {n} bytes does not fit the {} byte buffer",
                buf.len()
            )));
        }
        Ok(n)
    }

    fn add_membership(&mut self, group: u32) -> io::Result<()> {
        self.lkl
            .setsockopt_int(
                self.fd,
                libc::SOL_NETLINK,
                NETLINK_ADD_MEMBERSHIP,
                group as i32,
            )
            .map_err(to_io)
    }
}

impl Sysctls for Lkl {
    fn read(&self, name: &str) -> io::Result<String> {
        self.sysctl(name).map_err(to_io)
    }

    fn write(&self, name: &str, value: &str) -> io::Result<()> {
        self.set_sysctl(name, value).map_err(to_io)
    }
}

impl Lkl {
    /// rtnetlink of the library kernel.
    pub fn rtnl(&self) -> Result<Rtnl<LklSocket<'_>>> {
        Ok(Rtnl::new(LklSocket::open(self, Protocol::Route)?))
    }

    /// `mptcp_pm` of the library kernel.
    pub fn mptcp_pm(&self) -> Result<MptcpPm<LklSocket<'_>>> {
        MptcpPm::new(LklSocket::open(self, Protocol::Generic)?)
            .map_err(|e| Error::Host(e.to_string()))
    }

    /// Applies `cfg` (interfaces up, addresses, default routes, MPTCP
    /// endpoints, limits, path manager, scheduler) with dropshim's device
    /// configurator; `devices[i]` is the device made for the file's i-th
    /// interface ([`Lkl::add_device`]).
    pub fn configure(&self, cfg: &DeviceConfig, devices: &[Interface]) -> Result<Applied> {
        let mut rtnl = self.rtnl()?;
        let mut pm = self.mptcp_pm()?;
        let mut kernel = Kernel {
            rtnl: &mut rtnl,
            pm: &mut pm,
            sys: self,
        };
        let opts = Options {
            ownership: Ownership::Stack,
            interfaces: devices
                .iter()
                .map(|d| Iface::Index(d.ifindex as u32))
                .collect(),
            owned_endpoints: Vec::new(),
            origin: "the device file",
        };
        kernel
            .apply(cfg, &opts)
            .map_err(|e| Error::Host(format!("configuring the library kernel: {e}")))
    }
}

/// The library kernel as a [`Stack`] for dropshim's path manager: its
/// `mptcp_pm` commands and events, its links, and the load and stalls of
/// its TCP sockets read from its `/proc/net/tcp{,6}`.
pub struct LklStack<'a> {
    lkl: &'a Lkl,
    pm: MptcpPm<LklSocket<'a>>,
    events: Events<LklSocket<'a>>,
    rtnl: Rtnl<LklSocket<'a>>,
    /// The receive timeout the events socket has now.
    timeout: Option<Duration>,
}

impl<'a> LklStack<'a> {
    /// Opens the command socket, joins the events group and opens
    /// rtnetlink, all in the library kernel.
    pub fn open(lkl: &'a Lkl) -> Result<Self> {
        let pm = lkl.mptcp_pm()?;
        let events = Events::subscribe(LklSocket::open(lkl, Protocol::Generic)?, pm.family())
            .map_err(|e| Error::Host(format!("mptcp_pm events: {e}")))?;
        let rtnl = lkl.rtnl()?;
        Ok(LklStack {
            lkl,
            pm,
            events,
            rtnl,
            timeout: None,
        })
    }
}

impl Stack for LklStack<'_> {
    fn events(&mut self, timeout: Duration) -> io::Result<Vec<Event>> {
        // Whole milliseconds, so the timeout is set again only when the
        // wait really changes.
        let timeout = Duration::from_millis(timeout.as_millis().max(1) as u64);
        if self.timeout != Some(timeout) {
            self.events
                .transport()
                .set_recv_timeout(timeout)
                .map_err(to_io)?;
            self.timeout = Some(timeout);
        }
        self.events.wait()
    }

    fn links(&mut self) -> io::Result<Vec<(u32, bool)>> {
        self.rtnl.link_states()
    }

    fn unacked(&mut self, addrs: &[IpAddr]) -> u64 {
        ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|f| self.lkl.read_file(f).ok())
            .map(|text| dropshim_pm::host::unacked_in(&String::from_utf8_lossy(&text), addrs))
            .sum()
    }

    fn stalled(&mut self, addrs: &[IpAddr]) -> Vec<IpAddr> {
        let text: String = ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|f| self.lkl.read_file(f).ok())
            .map(|text| String::from_utf8_lossy(&text).into_owned())
            .collect();
        dropshim_pm::host::stalled_in(&text, addrs)
    }

    fn commands(&mut self) -> &mut dyn Commands {
        &mut self.pm
    }

    /// None to adopt: the path manager starts with the library kernel,
    /// before the program can open a connection (and the library kernel
    /// is built without sock_diag).
    fn connections(&mut self) -> io::Result<Vec<(MptcpConnection, bool)>> {
        Ok(Vec::new())
    }
}

impl LklStack<'_> {
    /// Runs dropshim's userspace path manager on the library kernel until
    /// `stop` is set (the kernel's `net.mptcp.pm_type` must be userspace,
    /// as the device configurator sets it for `path_manager =
    /// "userspace"`). `locals` are the library kernel's interfaces;
    /// `note` gets each command failure. The stack is opened (the events
    /// group joined) before, so no connection made after that is missed.
    pub fn run_path_manager(
        mut self,
        settings: Settings,
        locals: Vec<LocalAddr>,
        stop: &AtomicBool,
        note: impl FnMut(&str),
    ) -> Result<()> {
        drive(&mut self, settings, locals, stop, note, |_| {})
            .map_err(|e| Error::Host(format!("the path manager stopped: {e}")))
    }
}
