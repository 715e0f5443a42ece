//! The uml backend: a User Mode Linux kernel with MPTCP that owns a
//! device's data interfaces and carries shimmed programs' TCP.
//!
//! Owns: building the UML kernel, booting and stopping an instance per
//! device, the guest agent, and the channel between shimmed programs and
//! the instance.
//!
//! Must not touch: the host's own network configuration beyond the
//! interfaces a device file hands to the instance.
//!
//! How the pieces fit (one instance per device):
//! - [`host::up`] starts a supervisor (`dropshim-uml supervise`), which
//!   boots the kernel with the host's root through hostfs, the device's
//!   interfaces (vector raw transport) and one private veth link whose
//!   other end lives in a private network namespace, then serves the
//!   control socket `<run dir>/ctl` (mode 0600, in a 0700 directory).
//! - Inside the guest, `dropshim-uml agent` runs as init: it configures
//!   addresses, routes and MPTCP, then relays each bridge connection (a
//!   TCP connection across the private link) to an MPTCP socket of its own.
//! - The shim ([`client`]) asks the supervisor over the control socket and
//!   receives the host end of a bridge, which becomes the program's
//!   descriptor: reads, writes, poll and epoll need no translation.
//! - The supervisor watches the device's host interfaces ([`linkwatch`]);
//!   when one comes back up after going down, it has the agent reopen the
//!   guest device, in case its vector transport did not survive the
//!   outage (an error other than the ENOBUFS/ENETDOWN the kernel's
//!   patches turn into dropped frames).

#![warn(missing_docs)]

pub mod agent;
pub mod client;
pub mod guest_config;
pub mod host;
pub mod linkwatch;
pub mod proto;
pub mod sys;

use std::path::PathBuf;

/// Overrides the base of the per-device runtime directories.
pub const ENV_RUN_DIR: &str = "DROPSHIM_UML_RUN";
/// Overrides the kernel to boot (else the device file's, else the built one).
pub const ENV_KERNEL: &str = "DROPSHIM_UML_KERNEL";
/// The host CPU an instance runs on: a CPU number, or `any` to leave
/// placement to the scheduler (default: one CPU chosen by device name).
pub const ENV_CPU: &str = "DROPSHIM_UML_CPU";
/// Passed to the guest agent on the kernel command line.
pub const ENV_GUEST: &str = "DROPSHIM_UML_GUEST";
const DEFAULT_RUN_DIR: &str = "/run/dropshim/uml";

/// The guest's end of the private link and the port its agent listens on.
pub const GUEST_BRIDGE_ADDR: [u8; 4] = [198, 19, 255, 254];
/// The private namespace's end of the private link.
pub const HOST_BRIDGE_ADDR: [u8; 4] = [198, 19, 255, 253];
/// The TCP port the guest agent listens on at [`GUEST_BRIDGE_ADDR`].
pub const BRIDGE_PORT: u16 = 4701;

/// A device name made safe for file and interface names.
pub fn safe_name(device: &str) -> String {
    device
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Where every device's run directory is (`DROPSHIM_UML_RUN_DIR`, or
/// /run/dropshim/uml).
pub fn run_base() -> PathBuf {
    std::env::var_os(ENV_RUN_DIR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR))
}

/// `<base>/<device>`: pid files, logs, the control socket.
pub fn run_dir(device: &str) -> PathBuf {
    run_base().join(safe_name(device))
}

/// The control socket shimmed programs talk to.
pub fn control_socket(device: &str) -> PathBuf {
    run_dir(device).join("ctl")
}
