//! The path manager over the host kernel (native backend, and the uml
//! guest agent inside its instance, where the "host" is the guest
//! kernel): the `mptcp_pm` command socket, the events group, the links
//! read through rtnetlink and the cheap paths' load read from
//! `/proc/net/tcp{,6}`.

use crate::stack::{drive, Stack};
use crate::{Commands, LocalAddr, Planner, Settings};
use dropshim_netlink::diag::{self, MptcpConnection};
use dropshim_netlink::mptcp::{Event, Events, MptcpPm};
use dropshim_netlink::route::Rtnl;
use dropshim_netlink::{Conn, HostSocket, Protocol};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

pub use crate::stack::TICK;

/// The kernel this process runs on, as a [`Stack`].
pub struct HostStack {
    pm: MptcpPm<HostSocket>,
    events: Events<HostSocket>,
    rtnl: Rtnl<HostSocket>,
}

impl HostStack {
    /// Opens the command socket, joins the events group and opens
    /// rtnetlink.
    pub fn open() -> io::Result<Self> {
        let pm = dropshim_netlink::host_mptcp_pm()?;
        let events = Events::subscribe(HostSocket::open(Protocol::Generic)?, pm.family())?;
        let rtnl = dropshim_netlink::host_rtnl()?;
        Ok(HostStack { pm, events, rtnl })
    }
}

impl Stack for HostStack {
    fn events(&mut self, timeout: Duration) -> io::Result<Vec<Event>> {
        let fd = self.events.transport().as_raw_fd();
        if readable(fd, timeout)? {
            self.events.wait()
        } else {
            Ok(Vec::new())
        }
    }

    fn links(&mut self) -> io::Result<Vec<(u32, bool)>> {
        self.rtnl.link_states()
    }

    fn unacked(&mut self, addrs: &[IpAddr]) -> u64 {
        unacked_bytes(addrs)
    }

    fn commands(&mut self) -> &mut dyn Commands {
        &mut self.pm
    }

    fn connections(&mut self) -> io::Result<Vec<(MptcpConnection, bool)>> {
        let mut diag = Conn::new(HostSocket::open(Protocol::SockDiag)?);
        let listeners = diag::mptcp_listeners_over(&mut diag)?;
        Ok(diag::connections_over(&mut diag)?
            .into_iter()
            .map(|c| {
                let accepted = diag::accepted_on(c.local, &listeners);
                (c, accepted)
            })
            .collect())
    }
}

/// Runs the path manager on the host kernel until `stop` is set. `tick`
/// is called about every [`TICK`] with the planner (for a heartbeat or a
/// status file). Command failures are written to stderr.
pub fn run(
    settings: Settings,
    locals: Vec<LocalAddr>,
    stop: &AtomicBool,
    tick: impl FnMut(&Planner),
) -> io::Result<()> {
    let mut stack = HostStack::open()?;
    drive(
        &mut stack,
        settings,
        locals,
        stop,
        |line| eprintln!("dropshim pm: {line}"),
        tick,
    )
}

/// Waits up to `timeout` for `fd` to become readable.
fn readable(fd: i32, timeout: Duration) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `p` is one valid pollfd living across the call, and the
    // count passed is 1.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(n > 0 && p.revents & libc::POLLIN != 0)
}

/// Bytes that established TCP sockets (MPTCP subflows included) bound to
/// one of `addrs` hold unacknowledged, from `/proc/net/tcp` and `tcp6`.
pub fn unacked_bytes(addrs: &[IpAddr]) -> u64 {
    let mut total = 0;
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(file) {
            total += unacked_in(&text, addrs);
        }
    }
    total
}

/// [`unacked_bytes`] over the text of one `/proc/net/tcp*` file.
pub fn unacked_in(text: &str, addrs: &[IpAddr]) -> u64 {
    let mut total = 0;
    for line in text.lines().skip(1) {
        let mut cols = line.split_whitespace();
        let (Some(_), Some(local), Some(_), Some(state), Some(queues)) = (
            cols.next(),
            cols.next(),
            cols.next(),
            cols.next(),
            cols.next(),
        ) else {
            continue;
        };
        // 01: TCP_ESTABLISHED.
        if state != "01" {
            continue;
        }
        let Some(ip) = local.split(':').next().and_then(proc_ip) else {
            continue;
        };
        if !addrs.contains(&ip) {
            continue;
        }
        if let Some(tx) = queues
            .split(':')
            .next()
            .and_then(|t| u64::from_str_radix(t, 16).ok())
        {
            total += tx;
        }
    }
    total
}

/// An address as `/proc/net/tcp*` prints it: 32-bit words in host order.
fn proc_ip(hex: &str) -> Option<IpAddr> {
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::to_ne_bytes);
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(hex)?))),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(hex.get(i * 8..i * 8 + 8)?)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_unacked_bytes_of_chosen_addresses() {
        // 198.18.1.1 is 0x0101_12C6 in host (little-endian) order.
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 010112C6:9C40 020112C6:1451 01 00010000:00000000 01:00000014 00000000     0        0 1 1\n\
   1: 010112C6:9C41 020112C6:1451 0A 00020000:00000000 00:00000000 00000000     0        0 2 1\n\
   2: 010212C6:9C42 020212C6:1451 01 00000400:00000000 00:00000000 00000000     0        0 3 1\n";
        let a: IpAddr = "198.18.1.1".parse().unwrap();
        let b: IpAddr = "198.18.2.1".parse().unwrap();
        assert_eq!(unacked_in(text, &[a]), 0x10000);
        assert_eq!(unacked_in(text, &[a, b]), 0x10400);
        assert_eq!(unacked_in(text, &[]), 0);
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue\n\
   0: 00000220000000000000000001000000:9C40 00000220000000000000000002000000:1451 01 00000010:00000000\n";
        let six: IpAddr = "2002::1".parse().unwrap();
        assert_eq!(proc_ip("00000220000000000000000001000000"), Some(six));
        assert_eq!(unacked_in(v6, &[six]), 16);
    }
}
