//! MPTCP path management on the host kernel: endpoints and limits through
//! the generic netlink family `mptcp_pm` (what `ip mptcp` speaks), the path
//! manager and scheduler through `/proc/sys/net/mptcp`.
//!
//! Used by the `dropshim` CLI (`up`, `down`, `status`). The netlink client
//! in [`nl`] makes raw system calls rather than calling libc's socket
//! functions by name, so it stays correct inside `libdropshim.so` too.
//! Everything here acts on the calling thread's network namespace.

pub(crate) mod nl;

use nl::{AttrWriter, Attrs, NlSocket};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

const MPTCP_PM_NAME: &str = "mptcp_pm";
const MPTCP_PM_VER: u8 = 1;

const MPTCP_PM_CMD_ADD_ADDR: u8 = 1;
const MPTCP_PM_CMD_DEL_ADDR: u8 = 2;
const MPTCP_PM_CMD_GET_ADDR: u8 = 3;
const MPTCP_PM_CMD_SET_LIMITS: u8 = 5;
const MPTCP_PM_CMD_GET_LIMITS: u8 = 6;

const MPTCP_PM_ATTR_ADDR: u16 = 1;
const MPTCP_PM_ATTR_RCV_ADD_ADDRS: u16 = 2;
const MPTCP_PM_ATTR_SUBFLOWS: u16 = 3;

const ADDR_ATTR_FAMILY: u16 = 1;
const ADDR_ATTR_ID: u16 = 2;
const ADDR_ATTR_ADDR4: u16 = 3;
const ADDR_ATTR_ADDR6: u16 = 4;
const ADDR_ATTR_PORT: u16 = 5;
const ADDR_ATTR_FLAGS: u16 = 6;
const ADDR_ATTR_IF_IDX: u16 = 7;

/// Endpoint flags, bit for bit the kernel's `MPTCP_PM_ADDR_FLAG_*`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct EndpointFlags(pub u32);

impl EndpointFlags {
    pub const SIGNAL: u32 = 1 << 0;
    pub const SUBFLOW: u32 = 1 << 1;
    pub const BACKUP: u32 = 1 << 2;
    pub const FULLMESH: u32 = 1 << 3;
    /// Set by the kernel on endpoints it created itself for a subflow.
    pub const IMPLICIT: u32 = 1 << 4;

    const NAMES: [(u32, &'static str); 5] = [
        (Self::SIGNAL, "signal"),
        (Self::SUBFLOW, "subflow"),
        (Self::BACKUP, "backup"),
        (Self::FULLMESH, "fullmesh"),
        (Self::IMPLICIT, "implicit"),
    ];

    /// The flags for a device file's endpoint roles.
    pub fn from_roles(roles: &[dropshim_conf::EndpointRole]) -> Self {
        use dropshim_conf::EndpointRole::*;
        EndpointFlags(roles.iter().fold(0, |acc, r| {
            acc | match r {
                Signal => Self::SIGNAL,
                Subflow => Self::SUBFLOW,
                Backup => Self::BACKUP,
                Fullmesh => Self::FULLMESH,
            }
        }))
    }

    /// Parses names as `ip mptcp endpoint` writes them.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let mut bits = 0;
        for n in names {
            bits |= Self::NAMES.iter().find(|(_, name)| *name == n)?.0;
        }
        Some(EndpointFlags(bits))
    }

    pub fn contains(self, bit: u32) -> bool {
        self.0 & bit == bit
    }

    /// Flag names in the kernel's order (unknown bits as hex).
    pub fn names(self) -> Vec<String> {
        let mut out: Vec<String> = Self::NAMES
            .iter()
            .filter(|(bit, _)| self.0 & bit != 0)
            .map(|(_, n)| n.to_string())
            .collect();
        let unknown = self.0 & !Self::NAMES.iter().fold(0, |a, (b, _)| a | b);
        if unknown != 0 {
            out.push(format!("{unknown:#x}"));
        }
        out
    }
}

impl fmt::Display for EndpointFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = self.names();
        if names.is_empty() {
            f.write_str("(none)")
        } else {
            f.write_str(&names.join(" "))
        }
    }
}

/// One MPTCP endpoint, as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub id: u8,
    pub addr: IpAddr,
    /// 0 when the endpoint has no port of its own.
    pub port: u16,
    pub flags: EndpointFlags,
    /// The interface the endpoint is bound to, if any.
    pub ifindex: Option<u32>,
}

/// An endpoint to add; the kernel picks the id unless one is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEndpoint {
    pub addr: IpAddr,
    pub port: u16,
    pub flags: EndpointFlags,
    pub ifindex: Option<u32>,
    pub id: Option<u8>,
}

/// `ip mptcp limits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub subflows: u32,
    pub add_addr_accepted: u32,
}

/// A connection to the kernel's `mptcp_pm` generic netlink family.
pub struct PathManager {
    sock: NlSocket,
    family: u16,
}

impl PathManager {
    /// Opens a netlink socket and resolves the `mptcp_pm` family id.
    pub fn open() -> io::Result<Self> {
        let mut sock = NlSocket::open(libc::NETLINK_GENERIC).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open a generic netlink socket: {e}"),
            )
        })?;
        let mut w = AttrWriter::new(&genl_header(CTRL_CMD_GETFAMILY, 1));
        w.put(CTRL_ATTR_FAMILY_NAME, b"mptcp_pm\0");
        let replies = sock.request(GENL_ID_CTRL, 0, &w.buf).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOENT) {
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "the kernel has no `{MPTCP_PM_NAME}` netlink family: MPTCP is not available \
                         (needs Linux >= 5.7 with CONFIG_MPTCP); use the uml or lkl backend instead"
                    ),
                )
            } else {
                io::Error::new(e.kind(), format!("cannot resolve the `{MPTCP_PM_NAME}` netlink family: {e}"))
            }
        })?;
        let family = replies
            .iter()
            .filter_map(|r| r.get(4..))
            .flat_map(Attrs::new)
            .find(|(ty, _)| *ty == CTRL_ATTR_FAMILY_ID)
            .and_then(|(_, d)| nl::get_u16(d))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "nlctrl reply without a family id",
                )
            })?;
        Ok(PathManager { sock, family })
    }

    fn call(&mut self, flags: u16, attrs: AttrWriter) -> io::Result<Vec<Vec<u8>>> {
        self.sock
            .request(self.family, flags, &attrs.buf)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::EPERM) {
                    io::Error::new(
                        e.kind(),
                        format!("{e}; changing MPTCP settings needs CAP_NET_ADMIN (run as root)"),
                    )
                } else {
                    e
                }
            })
    }

    /// All endpoints of this network namespace, by id.
    pub fn endpoints(&mut self) -> io::Result<Vec<Endpoint>> {
        let w = AttrWriter::new(&genl_header(MPTCP_PM_CMD_GET_ADDR, MPTCP_PM_VER));
        let replies = self
            .call(nl::NLM_F_DUMP, w)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot list MPTCP endpoints: {e}")))?;
        let mut out = Vec::new();
        for r in &replies {
            let attrs = r.get(4..).unwrap_or(&[]);
            for (ty, nested) in Attrs::new(attrs) {
                if ty == MPTCP_PM_ATTR_ADDR {
                    if let Some(ep) = parse_endpoint(nested) {
                        out.push(ep);
                    }
                }
            }
        }
        out.sort_by_key(|e| e.id);
        Ok(out)
    }

    /// Adds an endpoint. The kernel's own reason is in the error if it
    /// refuses (duplicate address, bad flag combination, ...).
    pub fn add_endpoint(&mut self, ep: &NewEndpoint) -> io::Result<()> {
        let mut w = AttrWriter::new(&genl_header(MPTCP_PM_CMD_ADD_ADDR, MPTCP_PM_VER));
        let n = w.begin_nested(MPTCP_PM_ATTR_ADDR);
        put_addr(&mut w, ep.addr);
        if let Some(id) = ep.id {
            w.put_u8(ADDR_ATTR_ID, id);
        }
        if ep.port != 0 {
            w.put_u16(ADDR_ATTR_PORT, ep.port);
        }
        w.put_u32(ADDR_ATTR_FLAGS, ep.flags.0);
        if let Some(ifindex) = ep.ifindex {
            w.put_u32(ADDR_ATTR_IF_IDX, ifindex);
        }
        w.end_nested(n);
        self.call(0, w).map(drop).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot add MPTCP endpoint {} ({}): {e}", ep.addr, ep.flags),
            )
        })
    }

    /// Deletes the endpoint with this id (not 0: that one is the initial
    /// subflow's address and is deleted by address, which dropshim never does).
    pub fn delete_endpoint(&mut self, id: u8) -> io::Result<()> {
        let mut w = AttrWriter::new(&genl_header(MPTCP_PM_CMD_DEL_ADDR, MPTCP_PM_VER));
        let n = w.begin_nested(MPTCP_PM_ATTR_ADDR);
        w.put_u8(ADDR_ATTR_ID, id);
        w.end_nested(n);
        self.call(0, w).map(drop).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot delete MPTCP endpoint id {id}: {e}"),
            )
        })
    }

    pub fn limits(&mut self) -> io::Result<Limits> {
        let w = AttrWriter::new(&genl_header(MPTCP_PM_CMD_GET_LIMITS, MPTCP_PM_VER));
        let replies = self
            .call(0, w)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot read MPTCP limits: {e}")))?;
        let mut subflows = None;
        let mut accepted = None;
        for r in &replies {
            for (ty, d) in Attrs::new(r.get(4..).unwrap_or(&[])) {
                match ty {
                    MPTCP_PM_ATTR_SUBFLOWS => subflows = nl::get_u32(d),
                    MPTCP_PM_ATTR_RCV_ADD_ADDRS => accepted = nl::get_u32(d),
                    _ => {}
                }
            }
        }
        match (subflows, accepted) {
            (Some(subflows), Some(add_addr_accepted)) => Ok(Limits {
                subflows,
                add_addr_accepted,
            }),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "MPTCP limits reply is incomplete",
            )),
        }
    }

    pub fn set_limits(&mut self, limits: Limits) -> io::Result<()> {
        let mut w = AttrWriter::new(&genl_header(MPTCP_PM_CMD_SET_LIMITS, MPTCP_PM_VER));
        w.put_u32(MPTCP_PM_ATTR_RCV_ADD_ADDRS, limits.add_addr_accepted);
        w.put_u32(MPTCP_PM_ATTR_SUBFLOWS, limits.subflows);
        self.call(0, w).map(drop).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot set MPTCP limits (subflows {}, add_addr_accepted {}): {e}",
                    limits.subflows, limits.add_addr_accepted
                ),
            )
        })
    }
}

fn genl_header(cmd: u8, version: u8) -> [u8; 4] {
    [cmd, version, 0, 0]
}

fn put_addr(w: &mut AttrWriter, addr: IpAddr) {
    match addr {
        IpAddr::V4(a) => {
            w.put_u16(ADDR_ATTR_FAMILY, libc::AF_INET as u16);
            w.put(ADDR_ATTR_ADDR4, &a.octets());
        }
        IpAddr::V6(a) => {
            w.put_u16(ADDR_ATTR_FAMILY, libc::AF_INET6 as u16);
            w.put(ADDR_ATTR_ADDR6, &a.octets());
        }
    }
}

/// Reads one nested `MPTCP_PM_ATTR_ADDR`.
fn parse_endpoint(nested: &[u8]) -> Option<Endpoint> {
    let mut id = None;
    let mut addr = None;
    let mut port = 0;
    let mut flags = 0;
    let mut ifindex = None;
    for (ty, d) in Attrs::new(nested) {
        match ty {
            ADDR_ATTR_ID => id = nl::get_u8(d),
            ADDR_ATTR_ADDR4 => {
                let b: [u8; 4] = d.get(..4)?.try_into().ok()?;
                addr = Some(IpAddr::V4(Ipv4Addr::from(b)));
            }
            ADDR_ATTR_ADDR6 => {
                let b: [u8; 16] = d.get(..16)?.try_into().ok()?;
                addr = Some(IpAddr::V6(Ipv6Addr::from(b)));
            }
            ADDR_ATTR_PORT => port = nl::get_u16(d).unwrap_or(0),
            ADDR_ATTR_FLAGS => flags = nl::get_u32(d).unwrap_or(0),
            ADDR_ATTR_IF_IDX => ifindex = nl::get_u32(d).filter(|i| *i != 0),
            _ => {}
        }
    }
    Some(Endpoint {
        id: id?,
        addr: addr?,
        port,
        flags: EndpointFlags(flags),
        ifindex,
    })
}

/// The index of a network interface of this namespace, with an error
/// that names it when it does not exist.
pub fn interface_index(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} contains a NUL byte"),
        )
    })?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("interface {name:?} does not exist in this network namespace"),
        ));
    }
    Ok(index)
}

/// The name of the interface with this index, if it exists.
pub fn interface_name(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname may write.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success if_indextoname wrote a NUL-terminated name in `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// Every IPv4 and IPv6 address configured on the named interface.
pub fn interface_addresses(name: &str) -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, alive
        // until freeifaddrs; its name is NUL-terminated and its address,
        // when not null, is a sockaddr of the family it declares.
        unsafe {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null()
                || std::ffi::CStr::from_ptr(ifa.ifa_name).to_bytes() != name.as_bytes()
            {
                continue;
            }
            match (*ifa.ifa_addr).sa_family as libc::c_int {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        sin.sin_addr.s_addr,
                    ))));
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                }
                _ => {}
            }
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The per-namespace MPTCP sysctls (`/proc/sys/net/mptcp`).
#[derive(Debug, Clone)]
pub struct Sysctl {
    dir: PathBuf,
}

impl Default for Sysctl {
    fn default() -> Self {
        Sysctl {
            dir: PathBuf::from("/proc/sys/net/mptcp"),
        }
    }
}

impl Sysctl {
    /// A sysctl tree rooted elsewhere (tests).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Sysctl { dir: dir.into() }
    }

    fn read(&self, name: &str) -> io::Result<String> {
        let path = self.dir.join(name);
        std::fs::read_to_string(&path)
            .map(|s| s.trim().to_string())
            .map_err(|e| io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display())))
    }

    fn write(&self, name: &str, value: &str) -> io::Result<()> {
        let path = self.dir.join(name);
        std::fs::write(&path, value).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot write {value:?} to {}: {e} (this needs root)",
                    path.display()
                ),
            )
        })
    }

    /// Whether MPTCP is enabled in this namespace (`net.mptcp.enabled`).
    pub fn enabled(&self) -> io::Result<bool> {
        Ok(self.read("enabled")? != "0")
    }

    /// The current path manager. Kernels before 6.15 only have the
    /// numeric `pm_type` (0 kernel, 1 userspace).
    pub fn path_manager(&self) -> io::Result<String> {
        if self.dir.join("path_manager").exists() {
            return self.read("path_manager");
        }
        Ok(match self.read("pm_type")?.as_str() {
            "0" => "kernel".to_string(),
            "1" => "userspace".to_string(),
            other => format!("pm_type {other}"),
        })
    }

    pub fn available_path_managers(&self) -> io::Result<Vec<String>> {
        if self.dir.join("available_path_managers").exists() {
            return Ok(words(&self.read("available_path_managers")?));
        }
        self.read("pm_type")?;
        Ok(vec!["kernel".to_string(), "userspace".to_string()])
    }

    /// Selects a path manager, with an error naming the available ones.
    pub fn set_path_manager(&self, name: &str) -> io::Result<()> {
        check_available("path manager", name, &self.available_path_managers()?)?;
        if self.dir.join("path_manager").exists() {
            return self.write("path_manager", name);
        }
        self.write("pm_type", if name == "kernel" { "0" } else { "1" })
    }

    pub fn scheduler(&self) -> io::Result<String> {
        self.read("scheduler")
    }

    pub fn available_schedulers(&self) -> io::Result<Vec<String>> {
        Ok(words(&self.read("available_schedulers")?))
    }

    /// Selects a packet scheduler, with an error naming the available ones.
    pub fn set_scheduler(&self, name: &str) -> io::Result<()> {
        check_available("scheduler", name, &self.available_schedulers()?)?;
        self.write("scheduler", name)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
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
    use dropshim_conf::EndpointRole;

    #[test]
    fn roles_map_to_kernel_flag_bits() {
        let f = EndpointFlags::from_roles(&[EndpointRole::Subflow, EndpointRole::Signal]);
        assert_eq!(f.0, 0b11);
        let f = EndpointFlags::from_roles(&[EndpointRole::Backup, EndpointRole::Fullmesh]);
        assert_eq!(f.0, 0b1100);
        assert_eq!(f.to_string(), "backup fullmesh");
        assert_eq!(EndpointFlags(0x40 | 1).names(), vec!["signal", "0x40"]);
        assert_eq!(
            EndpointFlags::from_names(["subflow", "backup"]),
            Some(EndpointFlags(0b110))
        );
        assert_eq!(EndpointFlags::from_names(["subflw"]), None);
    }

    #[test]
    fn endpoint_attributes_parse_back() {
        let mut w = AttrWriter::default();
        put_addr(&mut w, "2001:2::7".parse().unwrap());
        w.put_u8(ADDR_ATTR_ID, 9);
        w.put_u16(ADDR_ATTR_PORT, 4242);
        w.put_u32(
            ADDR_ATTR_FLAGS,
            EndpointFlags::SIGNAL | EndpointFlags::BACKUP,
        );
        w.put_u32(ADDR_ATTR_IF_IDX, 3);
        let ep = parse_endpoint(&w.buf).unwrap();
        assert_eq!(
            ep,
            Endpoint {
                id: 9,
                addr: "2001:2::7".parse().unwrap(),
                port: 4242,
                flags: EndpointFlags(0b101),
                ifindex: Some(3),
            }
        );

        // Without an id the kernel's answer is unusable: no endpoint.
        let mut w = AttrWriter::default();
        put_addr(&mut w, "198.18.0.1".parse().unwrap());
        assert_eq!(parse_endpoint(&w.buf), None);
    }

    #[test]
    fn unavailable_choice_lists_what_exists() {
        let dir = std::env::temp_dir().join(format!("dropshim-pm-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("available_schedulers"), "default\n").unwrap();
        std::fs::write(dir.join("scheduler"), "default\n").unwrap();
        std::fs::write(dir.join("available_path_managers"), "kernel userspace\n").unwrap();
        std::fs::write(dir.join("path_manager"), "kernel\n").unwrap();
        let s = Sysctl::at(&dir);

        let err = s.set_scheduler("redundant").unwrap_err().to_string();
        assert!(err.contains("\"redundant\" is not available"), "{err}");
        assert!(err.contains("available: default"), "{err}");
        assert_eq!(s.scheduler().unwrap(), "default");

        s.set_path_manager("userspace").unwrap();
        assert_eq!(s.path_manager().unwrap(), "userspace");
        let err = s.set_path_manager("bpf").unwrap_err().to_string();
        assert!(err.contains("available: kernel, userspace"), "{err}");

        // Pre-6.15 kernels: numeric pm_type only.
        std::fs::remove_file(dir.join("path_manager")).unwrap();
        std::fs::remove_file(dir.join("available_path_managers")).unwrap();
        std::fs::write(dir.join("pm_type"), "0\n").unwrap();
        assert_eq!(s.path_manager().unwrap(), "kernel");
        s.set_path_manager("userspace").unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("pm_type")).unwrap(), "1");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
