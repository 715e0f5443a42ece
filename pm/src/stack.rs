//! The path manager's main loop over any kernel: [`Stack`] is what the
//! loop needs from one (its `mptcp_pm` events and commands, its links,
//! the load and stalls of its sockets), [`drive`] runs the [`Planner`] on it. The
//! host kernel ([`crate::host`]), a uml guest's kernel (the guest agent
//! runs the host implementation inside the instance) and the library
//! kernel of the lkl backend (backend-lkl) each provide a [`Stack`].

use crate::{Commands, LocalAddr, Planner, Settings};
use dropshim_conf::PmPolicy;
use dropshim_netlink::diag::MptcpConnection;
use dropshim_netlink::mptcp::Event;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often links and load are looked at.
pub const TICK: Duration = Duration::from_millis(100);

/// One kernel as the path manager drives it.
pub trait Stack {
    /// The `mptcp_pm` events that arrive within `timeout` (empty when
    /// none did).
    fn events(&mut self, timeout: Duration) -> io::Result<Vec<Event>>;
    /// Every link of the kernel: (interface index, up).
    fn links(&mut self) -> io::Result<Vec<(u32, bool)>>;
    /// Bytes the established TCP sockets (MPTCP subflows included) bound
    /// to one of `addrs` hold unacknowledged.
    fn unacked(&mut self, addrs: &[IpAddr]) -> u64;
    /// The addresses among `addrs` whose paths are stalled: every
    /// established TCP socket on them that has bytes to deliver has gone
    /// retransmission timeouts in a row with nothing acknowledged (see
    /// [`crate::host::stalled_in`]). A cut beyond the interface, which
    /// leaves the link itself up, shows only this way.
    fn stalled(&mut self, addrs: &[IpAddr]) -> Vec<IpAddr>;
    /// The kernel's `mptcp_pm` commands.
    fn commands(&mut self) -> &mut dyn Commands;
    /// The MPTCP connections open now, each with whether it was accepted
    /// (true) or connected: those made while no path manager ran, which
    /// [`drive`] adopts when it starts.
    fn connections(&mut self) -> io::Result<Vec<(MptcpConnection, bool)>>;
}

/// Runs the path manager on `stack` until `stop` is set. `note` gets
/// every command failure and lost-event report (one line each); `tick`
/// is called about every [`TICK`] with the planner (for a heartbeat or a
/// status file).
pub fn drive(
    stack: &mut dyn Stack,
    settings: Settings,
    locals: Vec<LocalAddr>,
    stop: &AtomicBool,
    mut note: impl FnMut(&str),
    mut tick: impl FnMut(&Planner),
) -> io::Result<()> {
    let mut planner = Planner::new(settings, locals);
    // Connections made while no path manager ran (it was down, or
    // restarted) get their subflows now. The events group is already
    // joined, so one made after this list shows up as events, and one
    // in both is taken once.
    match stack.connections() {
        Ok(open) => {
            let now = Instant::now();
            for (c, server_side) in &open {
                planner.adopt(c, *server_side, now, stack.commands());
            }
        }
        Err(e) => note(&format!(
            "cannot list the open connections to adopt them: {e}"
        )),
    }
    let mut last_tick = Instant::now() - TICK;
    while !stop.load(Ordering::Relaxed) {
        let wait = TICK.saturating_sub(last_tick.elapsed());
        match stack.events(wait) {
            Ok(list) => {
                let now = Instant::now();
                for e in list {
                    planner.event(&e, now, stack.commands());
                }
            }
            // A burst overflowed the socket buffer: state is rebuilt
            // from later events; links and load are polled anyway.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                note("events were lost (socket buffer full)");
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        if now.duration_since(last_tick) >= TICK {
            last_tick = now;
            let links = stack.links()?;
            planner.links(&links, now, stack.commands());
            if matches!(settings.policy, PmPolicy::Backup | PmPolicy::Costaware) {
                let addrs: Vec<IpAddr> = planner.locals().iter().map(|l| l.addr).collect();
                let stalled = stack.stalled(&addrs);
                planner.stalls(&stalled, now, stack.commands());
            }
            if settings.policy == PmPolicy::Costaware {
                let cheap = planner.cheapest();
                let unacked = stack.unacked(&cheap);
                planner.load(unacked, now, stack.commands());
            }
            planner.reconcile(now, stack.commands());
            for e in planner.take_errors() {
                note(&e);
            }
            tick(&planner);
        }
    }
    Ok(())
}
