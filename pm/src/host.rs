//! The path manager over the host kernel (native backend, and the uml
//! guest agent inside its instance, where the "host" is the guest
//! kernel): the `mptcp_pm` command socket, the events group, the links
//! read through rtnetlink and the cheap paths' load and stalls read from
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

    fn stalled(&mut self, addrs: &[IpAddr]) -> Vec<IpAddr> {
        stalled_addrs(addrs)
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
    established_in(text)
        .filter(|s| addrs.contains(&s.local))
        .map(|s| s.unacked)
        .sum()
}

/// The addresses among `addrs` whose paths are stalled, from
/// `/proc/net/tcp` and `tcp6` (see [`stalled_in`]).
pub fn stalled_addrs(addrs: &[IpAddr]) -> Vec<IpAddr> {
    let text: String = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .collect();
    stalled_in(&text, addrs)
}

/// The addresses among `addrs` whose paths are stalled, over the text of
/// `/proc/net/tcp*` files (concatenated, header lines included): an
/// address is stalled when at least one established TCP socket bound to
/// it (an MPTCP subflow, say) holds unacknowledged bytes and every such
/// socket has gone [`STALL_RTOS`] retransmission timeouts in a row with
/// nothing acknowledged: the path beyond the interface is cut, even
/// though the interface itself is up. Idle sockets say nothing either
/// way.
pub fn stalled_in(text: &str, addrs: &[IpAddr]) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for a in addrs {
        let (mut sending, mut stuck) = (0, 0);
        for s in established_in(text).filter(|s| s.local == *a && s.unacked > 0) {
            sending += 1;
            if s.timeouts >= STALL_RTOS {
                stuck += 1;
            }
        }
        if sending > 0 && stuck == sending {
            out.push(*a);
        }
    }
    out
}

/// Retransmission timeouts in a row, with nothing acknowledged, after
/// which a sending socket counts as stalled: about three RTOs after a cut
/// (0.6 s at the 200 ms floor), where a fast retransmit or a tail loss
/// probe never counts.
pub const STALL_RTOS: u32 = 2;

/// One established socket of a `/proc/net/tcp*` table.
struct TcpRow {
    local: IpAddr,
    /// Bytes sent and not yet acknowledged (`tx_queue`).
    unacked: u64,
    /// Retransmission timeouts since the last acknowledgement
    /// (`retrnsmt`).
    timeouts: u32,
}

/// The established sockets of the text of `/proc/net/tcp*` files.
fn established_in(text: &str) -> impl Iterator<Item = TcpRow> + '_ {
    text.lines().filter_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // sl, local, remote, st, tx_queue:rx_queue, tr:tm->when, retrnsmt
        let [_, local, _, state, queues, rest @ ..] = cols.as_slice() else {
            return None;
        };
        // 01: TCP_ESTABLISHED (header lines do not match).
        if *state != "01" {
            return None;
        }
        let local = local.split(':').next().and_then(proc_ip)?;
        let unacked = queues
            .split(':')
            .next()
            .and_then(|t| u64::from_str_radix(t, 16).ok())?;
        // A table cut short of the count reads as no timeouts.
        let timeouts = rest
            .get(1)
            .and_then(|t| u32::from_str_radix(t, 16).ok())
            .unwrap_or(0);
        Some(TcpRow {
            local,
            unacked,
            timeouts,
        })
    })
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

    #[test]
    fn a_path_is_stalled_when_every_sending_socket_is_in_rto_backoff() {
        let head = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
        // 198.18.1.1: one sending socket after 2 timeouts, one idle (no
        // unacked bytes) after 5: stalled. 198.18.2.1: one after 3 but
        // another still making progress: not stalled. 198.18.3.1: after 1
        // timeout only: not yet. 198.18.4.1: listening, after 9: ignored.
        let rows = "   0: 010112C6:9C40 020112C6:1451 01 00010000:00000000 01:00000014 00000002     0        0 1 1\n\
   1: 010112C6:9C41 020112C6:1451 01 00000000:00000000 00:00000000 00000005     0        0 2 1\n\
   2: 010212C6:9C42 020212C6:1451 01 00000400:00000000 01:00000014 00000003     0        0 3 1\n\
   3: 010212C6:9C43 020212C6:1451 01 00000400:00000000 01:00000014 00000000     0        0 4 1\n\
   4: 010312C6:9C44 020312C6:1451 01 00000400:00000000 01:00000014 00000001     0        0 5 1\n\
   5: 010412C6:9C45 00000000:0000 0A 00000400:00000000 01:00000014 00000009     0        0 6 1\n";
        let text = format!("{head}{rows}");
        let a = |s: &str| -> IpAddr { s.parse().unwrap() };
        let all = [
            a("198.18.1.1"),
            a("198.18.2.1"),
            a("198.18.3.1"),
            a("198.18.4.1"),
            a("198.18.5.1"),
        ];
        assert_eq!(stalled_in(&text, &all), vec![a("198.18.1.1")]);
        assert_eq!(stalled_in(&text, &all[1..]), Vec::<IpAddr>::new());
        // The row's counts still add up the load as before.
        assert_eq!(unacked_in(&text, &[a("198.18.2.1")]), 0x800);
    }
}
