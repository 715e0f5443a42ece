//! The policies against a recorded command log: what each asks the kernel
//! to do for a given sequence of events, link changes and load.

use super::*;

#[derive(Debug, Default)]
struct Log {
    calls: Vec<String>,
}

impl Commands for Log {
    fn create(
        &mut self,
        token: u32,
        local: &LocalAddr,
        backup: bool,
        remote: SocketAddr,
    ) -> io::Result<()> {
        self.calls.push(format!(
            "create {token} {}#{} -> {remote}{}",
            local.addr,
            local.id,
            if backup { " backup" } else { "" }
        ));
        Ok(())
    }
    fn destroy(&mut self, token: u32, local: SocketAddr, remote: SocketAddr) -> io::Result<()> {
        self.calls
            .push(format!("destroy {token} {local} -> {remote}"));
        Ok(())
    }
    fn set_backup(
        &mut self,
        token: u32,
        local: SocketAddr,
        remote: SocketAddr,
        backup: bool,
    ) -> io::Result<()> {
        self.calls
            .push(format!("prio {token} {local} -> {remote} backup={backup}"));
        Ok(())
    }
    fn announce(&mut self, token: u32, local: &LocalAddr) -> io::Result<()> {
        self.calls
            .push(format!("announce {token} {}#{}", local.addr, local.id));
        Ok(())
    }
}

impl Log {
    fn take(&mut self) -> Vec<String> {
        std::mem::take(&mut self.calls)
    }
}

fn local(i: u8, backup: bool, cost: u32) -> LocalAddr {
    LocalAddr {
        ifname: format!("eth{i}"),
        ifindex: u32::from(i) + 10,
        addr: format!("198.18.{i}.1").parse().unwrap(),
        id: i,
        backup,
        cost,
    }
}

fn settings(policy: PmPolicy) -> Settings {
    Settings {
        policy,
        subflows: 4,
        saturation_bytes: 100_000,
        saturation_time: Duration::from_millis(500),
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ev(kind: EventKind, token: u32, local: &str, remote: &str) -> Event {
    Event {
        kind: Some(kind),
        token: Some(token),
        local: Some(sa(local)),
        remote: Some(sa(remote)),
        server_side: Some(false),
        ..Event::default()
    }
}

/// A client connection 198.18.1.1:40000 -> 198.18.1.2:80, established.
fn established(p: &mut Planner, log: &mut Log, now: Instant) {
    p.event(
        &ev(EventKind::Created, 7, "198.18.1.1:40000", "198.18.1.2:80"),
        now,
        log,
    );
    assert!(log.take().is_empty(), "nothing before establishment");
    p.event(
        &ev(
            EventKind::Established,
            7,
            "198.18.1.1:40000",
            "198.18.1.2:80",
        ),
        now,
        log,
    );
}

#[test]
fn ndiffports_opens_the_missing_subflows_over_the_one_pair_once() {
    let now = Instant::now();
    let mut p = Planner::new(
        settings(PmPolicy::Ndiffports),
        vec![local(1, false, 0), local(2, false, 0)],
    );
    let mut log = Log::default();
    established(&mut p, &mut log, now);
    assert_eq!(
        log.take(),
        vec!["create 7 198.18.1.1#1 -> 198.18.1.2:80"; 3]
    );
    // Pending ones are not asked for again...
    p.reconcile(now + Duration::from_millis(100), &mut log);
    assert!(log.take().is_empty());
    // ... established ones neither, and no subflow on the other link.
    for port in [40001, 40002, 40003] {
        p.event(
            &ev(
                EventKind::SubEstablished,
                7,
                &format!("198.18.1.1:{port}"),
                "198.18.1.2:80",
            ),
            now,
            &mut log,
        );
    }
    p.reconcile(now + PENDING_HOLD * 2, &mut log);
    assert!(log.take().is_empty());
    assert_eq!(p.connections()[0].subflows.len(), 4);
    // One closes: it is replaced.
    p.event(
        &ev(EventKind::SubClosed, 7, "198.18.1.1:40002", "198.18.1.2:80"),
        now,
        &mut log,
    );
    assert_eq!(log.take(), vec!["create 7 198.18.1.1#1 -> 198.18.1.2:80"]);
    p.event(
        &ev(EventKind::Closed, 7, "198.18.1.1:40000", "198.18.1.2:80"),
        now,
        &mut log,
    );
    assert!(p.connections().is_empty());
}

#[test]
fn fullmesh_covers_every_address_pair_including_announced_ones() {
    let now = Instant::now();
    let mut p = Planner::new(
        settings(PmPolicy::Fullmesh),
        vec![local(1, false, 0), local(2, false, 0)],
    );
    let mut log = Log::default();
    established(&mut p, &mut log, now);
    assert_eq!(log.take(), vec!["create 7 198.18.2.1#2 -> 198.18.1.2:80"]);
    let mut ann = Event {
        kind: Some(EventKind::Announced),
        token: Some(7),
        remote: Some(sa("198.18.2.2:0")),
        remote_id: Some(1),
        ..Event::default()
    };
    p.event(&ann, now, &mut log);
    assert_eq!(
        log.take(),
        vec![
            "create 7 198.18.1.1#1 -> 198.18.2.2:80",
            "create 7 198.18.2.1#2 -> 198.18.2.2:80"
        ]
    );
    // Announced twice: nothing new.
    p.event(&ann, now, &mut log);
    assert!(log.take().is_empty());
    // An IPv6 announcement is of no use to IPv4 addresses.
    ann.remote = Some(sa("[2001:2::2]:0"));
    ann.remote_id = Some(2);
    p.event(&ann, now, &mut log);
    assert!(log.take().is_empty());
}

#[test]
fn fullmesh_server_side_announces_its_other_addresses() {
    let now = Instant::now();
    let mut p = Planner::new(
        settings(PmPolicy::Fullmesh),
        vec![local(1, false, 0), local(2, false, 0)],
    );
    let mut log = Log::default();
    let mut e = ev(
        EventKind::Established,
        9,
        "198.18.1.1:80",
        "198.18.1.2:5000",
    );
    e.server_side = Some(true);
    p.event(&e, now, &mut log);
    assert_eq!(log.take(), vec!["announce 9 198.18.2.1#2"]);
    p.reconcile(now, &mut log);
    assert!(log.take().is_empty(), "announced once");
}

#[test]
fn backup_opens_flagged_then_promotes_when_the_active_link_fails() {
    let now = Instant::now();
    let mut p = Planner::new(
        settings(PmPolicy::Backup),
        vec![local(1, false, 0), local(2, true, 0)],
    );
    let mut log = Log::default();
    established(&mut p, &mut log, now);
    assert_eq!(
        log.take(),
        vec!["create 7 198.18.2.1#2 -> 198.18.1.2:80 backup"]
    );
    let mut sub = ev(
        EventKind::SubEstablished,
        7,
        "198.18.2.1:40100",
        "198.18.1.2:80",
    );
    sub.backup = Some(true);
    p.event(&sub, now, &mut log);
    assert!(log.take().is_empty());
    // The active interface goes down: promote, close the dead subflow.
    p.links(&[(11, false), (12, true)], now, &mut log);
    assert_eq!(
        log.take(),
        vec![
            "prio 7 198.18.2.1:40100 -> 198.18.1.2:80 backup=false",
            "destroy 7 198.18.1.1:40000 -> 198.18.1.2:80"
        ]
    );
    // It comes back: a new active subflow, and the backup is demoted.
    p.links(&[(11, true), (12, true)], now, &mut log);
    assert_eq!(
        log.take(),
        vec![
            "create 7 198.18.1.1#1 -> 198.18.1.2:80",
            "prio 7 198.18.2.1:40100 -> 198.18.1.2:80 backup=true"
        ]
    );
}

#[test]
fn backup_promotes_while_the_active_path_is_stalled_and_keeps_its_subflow() {
    let now = Instant::now();
    let mut p = Planner::new(
        settings(PmPolicy::Backup),
        vec![local(1, false, 0), local(2, true, 0)],
    );
    let mut log = Log::default();
    established(&mut p, &mut log, now);
    log.take();
    let mut sub = ev(
        EventKind::SubEstablished,
        7,
        "198.18.2.1:40100",
        "198.18.1.2:80",
    );
    sub.backup = Some(true);
    p.event(&sub, now, &mut log);
    // A stalled backup path alone changes nothing.
    let (a1, a2): (IpAddr, IpAddr) = ("198.18.1.1".parse().unwrap(), "198.18.2.1".parse().unwrap());
    p.stalls(&[a2], now, &mut log);
    assert!(log.take().is_empty());
    // The active path stalls (its link still up): promote, close nothing.
    p.stalls(&[a1], now, &mut log);
    assert_eq!(
        log.take(),
        vec!["prio 7 198.18.2.1:40100 -> 198.18.1.2:80 backup=false"]
    );
    assert_eq!(p.connections()[0].subflows.len(), 2);
    // The same stall reported again issues nothing.
    p.stalls(&[a1], now, &mut log);
    assert!(log.take().is_empty());
    // Acknowledgements get through again: demoted.
    p.stalls(&[], now, &mut log);
    assert_eq!(
        log.take(),
        vec!["prio 7 198.18.2.1:40100 -> 198.18.1.2:80 backup=true"]
    );
}

#[test]
fn costaware_opens_the_costly_path_while_every_cheap_path_is_stalled() {
    let now = Instant::now();
    let mut p = Planner::new(
        settings(PmPolicy::Costaware),
        vec![local(1, false, 0), local(2, false, 10), local(3, false, 20)],
    );
    let mut log = Log::default();
    established(&mut p, &mut log, now);
    assert!(log.take().is_empty(), "the cheap path alone");
    let a = |i: u8| -> IpAddr { format!("198.18.{i}.1").parse().unwrap() };
    // The cheap path stalls: the next tier opens, the cheap subflow stays.
    p.stalls(&[a(1)], now, &mut log);
    assert_eq!(log.take(), vec!["create 7 198.18.2.1#2 -> 198.18.1.2:80"]);
    p.event(
        &ev(
            EventKind::SubEstablished,
            7,
            "198.18.2.1:40200",
            "198.18.1.2:80",
        ),
        now,
        &mut log,
    );
    assert!(log.take().is_empty(), "the stalled cheap subflow is kept");
    // That one stalls too: the tier above opens.
    p.stalls(&[a(1), a(2)], now, &mut log);
    assert_eq!(log.take(), vec!["create 7 198.18.3.1#3 -> 198.18.1.2:80"]);
    p.event(
        &ev(
            EventKind::SubEstablished,
            7,
            "198.18.3.1:40300",
            "198.18.1.2:80",
        ),
        now,
        &mut log,
    );
    // The cheap path recovers: both costlier subflows close.
    p.stalls(&[a(2)], now, &mut log);
    assert_eq!(
        log.take(),
        vec![
            "destroy 7 198.18.2.1:40200 -> 198.18.1.2:80",
            "destroy 7 198.18.3.1:40300 -> 198.18.1.2:80"
        ]
    );
    assert_eq!(
        p.connections()[0].subflows,
        vec![(sa("198.18.1.1:40000"), sa("198.18.1.2:80"), false)]
    );
}

#[test]
fn the_last_subflow_is_never_closed() {
    let now = Instant::now();
    let mut p = Planner::new(
        settings(PmPolicy::Backup),
        vec![local(1, false, 0), local(2, true, 0)],
    );
    let mut log = Log::default();
    established(&mut p, &mut log, now);
    log.take();
    // Both links down before the backup subflow came up.
    p.links(&[(11, false), (12, false)], now, &mut log);
    assert!(log.take().is_empty(), "nothing to open, nothing to close");
    assert_eq!(p.connections()[0].subflows.len(), 1);
}

#[test]
fn costaware_opens_the_costly_path_only_while_the_cheap_one_is_down_or_saturated() {
    let t0 = Instant::now();
    let mut p = Planner::new(
        settings(PmPolicy::Costaware),
        vec![local(1, false, 0), local(2, false, 10)],
    );
    let mut log = Log::default();
    established(&mut p, &mut log, t0);
    assert!(log.take().is_empty(), "the cheap path alone");
    assert_eq!(p.cheapest(), vec!["198.18.1.1".parse::<IpAddr>().unwrap()]);

    // Cut: the costly subflow opens at once.
    p.links(&[(11, false), (12, true)], t0, &mut log);
    assert_eq!(log.take(), vec!["create 7 198.18.2.1#2 -> 198.18.1.2:80"]);
    p.event(
        &ev(
            EventKind::SubEstablished,
            7,
            "198.18.2.1:40200",
            "198.18.1.2:80",
        ),
        t0,
        &mut log,
    );
    assert_eq!(
        log.take(),
        vec!["destroy 7 198.18.1.1:40000 -> 198.18.1.2:80"],
        "the dead cheap subflow goes once another carries"
    );
    // Recovery: cheap again, and the costly one closes once it is up.
    p.links(&[(11, true), (12, true)], t0, &mut log);
    assert_eq!(log.take(), vec!["create 7 198.18.1.1#1 -> 198.18.1.2:80"]);
    p.event(
        &ev(
            EventKind::SubEstablished,
            7,
            "198.18.1.1:40300",
            "198.18.1.2:80",
        ),
        t0,
        &mut log,
    );
    // Now the costly one is no longer the last subflow: it closes.
    assert_eq!(
        log.take(),
        vec!["destroy 7 198.18.2.1:40200 -> 198.18.1.2:80"]
    );
    assert_eq!(
        p.connections()[0].subflows,
        vec![(sa("198.18.1.1:40300"), sa("198.18.1.2:80"), false)]
    );

    // Saturation: over the threshold for the saturation time, no sooner.
    let ms = Duration::from_millis;
    p.load(200_000, t0 + ms(1000), &mut log);
    p.load(200_000, t0 + ms(1400), &mut log);
    assert!(!p.saturated() && log.take().is_empty());
    p.load(200_000, t0 + ms(1500), &mut log);
    assert!(p.saturated());
    assert_eq!(log.take(), vec!["create 7 198.18.2.1#2 -> 198.18.1.2:80"]);
    p.event(
        &ev(
            EventKind::SubEstablished,
            7,
            "198.18.2.1:40400",
            "198.18.1.2:80",
        ),
        t0,
        &mut log,
    );
    // Above half the threshold is not yet recovered.
    p.load(60_000, t0 + ms(1600), &mut log);
    p.load(60_000, t0 + ms(3000), &mut log);
    assert!(p.saturated() && log.take().is_empty());
    p.load(10_000, t0 + ms(3100), &mut log);
    p.load(10_000, t0 + ms(3600), &mut log);
    assert!(!p.saturated());
    assert_eq!(
        log.take(),
        vec!["destroy 7 198.18.2.1:40400 -> 198.18.1.2:80"]
    );
}

#[test]
fn device_file_gives_ids_backup_and_cost() {
    let cfg = dropshim_conf::parse(
        "[device]\nname = \"d\"\nbackend = \"native\"\n\
         [[interfaces]]\nname = \"a\"\naddresses = [\"198.18.1.1/24\", \"2001:2::1/64\"]\n\
         [[interfaces]]\nname = \"gone\"\naddresses = [\"198.18.3.1/24\"]\n\
         [[interfaces]]\nname = \"b\"\naddresses = [\"198.18.2.1/24\"]\nendpoint = [\"backup\"]\ncost = 5\n\
         [mptcp]\npath_manager = \"userspace\"\n[mptcp.userspace]\npolicy = \"backup\"\n",
        "d.toml",
    )
    .unwrap();
    let (locals, missing) = locals_from(&cfg, |n| match n {
        "a" => Some(3),
        "b" => Some(4),
        _ => None,
    });
    assert_eq!(missing, vec!["gone"]);
    let view: Vec<(u8, u32, bool, u32)> = locals
        .iter()
        .map(|l| (l.id, l.ifindex, l.backup, l.cost))
        .collect();
    assert_eq!(
        view,
        vec![(1, 3, false, 0), (2, 3, false, 0), (3, 4, true, 5)]
    );
    let s = Settings::from_config(&cfg).unwrap();
    assert_eq!(s.policy, PmPolicy::Backup);
    assert_eq!(s.subflows, DEFAULT_SUBFLOWS);
}

/// A kernel made of queued answers: events per wait, links per poll.
struct FakeStack<'a> {
    events: Vec<io::Result<Vec<Event>>>,
    links: Vec<(u32, bool)>,
    open: Vec<(MptcpConnection, bool)>,
    log: Log,
    waits: usize,
    stop: &'a std::sync::atomic::AtomicBool,
}

impl crate::stack::Stack for FakeStack<'_> {
    fn events(&mut self, _timeout: Duration) -> io::Result<Vec<Event>> {
        self.waits += 1;
        if self.events.is_empty() {
            self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
            return Ok(Vec::new());
        }
        self.events.remove(0)
    }
    fn links(&mut self) -> io::Result<Vec<(u32, bool)>> {
        Ok(self.links.clone())
    }
    fn unacked(&mut self, _addrs: &[IpAddr]) -> u64 {
        0
    }
    fn stalled(&mut self, _addrs: &[IpAddr]) -> Vec<IpAddr> {
        Vec::new()
    }
    fn commands(&mut self) -> &mut dyn Commands {
        &mut self.log
    }
    fn connections(&mut self) -> io::Result<Vec<(MptcpConnection, bool)>> {
        Ok(std::mem::take(&mut self.open))
    }
}

#[test]
fn drive_feeds_events_to_the_policy_and_survives_timeouts_and_lost_events() {
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut stack = FakeStack {
        events: vec![
            Err(io::Error::from(io::ErrorKind::WouldBlock)),
            Ok(vec![
                ev(EventKind::Created, 7, "198.18.1.1:40000", "198.18.1.2:5201"),
                ev(
                    EventKind::Established,
                    7,
                    "198.18.1.1:40000",
                    "198.18.1.2:5201",
                ),
            ]),
            Err(io::Error::from_raw_os_error(libc::ENOBUFS)),
        ],
        links: vec![(11, true), (12, true)],
        open: Vec::new(),
        log: Log::default(),
        waits: 0,
        stop: &stop,
    };
    let mut notes = Vec::new();
    crate::stack::drive(
        &mut stack,
        settings(PmPolicy::Ndiffports),
        vec![local(1, false, 0), local(2, false, 0)],
        &stop,
        |l| notes.push(l.to_string()),
        |_| {},
    )
    .unwrap();
    assert_eq!(stack.waits, 4);
    let creates: Vec<&String> = stack
        .log
        .calls
        .iter()
        .filter(|c| c.starts_with("create 7 198.18.1.1#1 -> 198.18.1.2:5201"))
        .collect();
    assert_eq!(creates.len(), 3, "{:?}", stack.log.calls);
    assert_eq!(notes, ["events were lost (socket buffer full)"]);

    // Any other error ends the loop with it.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut stack = FakeStack {
        events: vec![Err(io::Error::from_raw_os_error(libc::EBADF))],
        links: Vec::new(),
        open: Vec::new(),
        log: Log::default(),
        waits: 0,
        stop: &stop,
    };
    let err = crate::stack::drive(
        &mut stack,
        settings(PmPolicy::Fullmesh),
        vec![local(1, false, 0)],
        &stop,
        |_| {},
        |_| {},
    )
    .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EBADF));
}

/// An open MPTCP connection as sock_diag lists it: `subflows` (local,
/// remote, joined) established.
fn open_conn(token: u32, subflows: &[(&str, &str, bool)], fallback: bool) -> MptcpConnection {
    use dropshim_netlink::diag::Subflow as DiagSubflow;
    MptcpConnection {
        local: sa(subflows[0].0),
        remote: sa(subflows[0].1),
        state: "ESTAB",
        token,
        subflows: subflows
            .iter()
            .map(|(l, r, join)| DiagSubflow {
                local: sa(l),
                remote: sa(r),
                state: "ESTAB",
                local_id: 0,
                remote_id: 0,
                join: *join,
                backup: false,
            })
            .collect(),
        subflow_count: subflows.len() as u32,
        bytes_sent: None,
        bytes_received: None,
        fallback,
    }
}

#[test]
fn drive_adopts_connections_opened_before_it_started() {
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (a, b) = ("198.18.1.1:40000", "198.18.1.2:5201");
    let mut stack = FakeStack {
        // The adopted connection's own events, seen again: nothing twice.
        events: vec![Ok(vec![
            ev(EventKind::Established, 9, a, b),
            ev(EventKind::SubEstablished, 9, "198.18.1.1:40001", b),
        ])],
        links: vec![(11, true), (12, true)],
        open: vec![
            // One of ndiffports' 4 subflows is joined already: 2 are missing.
            (
                open_conn(9, &[(a, b, false), ("198.18.1.1:40001", b, true)], false),
                false,
            ),
            // Fell back to TCP: nothing to add.
            (
                open_conn(10, &[("198.18.1.1:40002", b, false)], true),
                false,
            ),
            // Accepted: the peer opens the subflows.
            (
                open_conn(11, &[("198.18.1.1:5201", "198.18.1.2:40003", false)], false),
                true,
            ),
        ],
        log: Log::default(),
        waits: 0,
        stop: &stop,
    };
    crate::stack::drive(
        &mut stack,
        settings(PmPolicy::Ndiffports),
        vec![local(1, false, 0), local(2, false, 0)],
        &stop,
        |_| {},
        |_| {},
    )
    .unwrap();
    assert_eq!(
        stack.log.calls,
        vec![
            "create 9 198.18.1.1#1 -> 198.18.1.2:5201",
            "create 9 198.18.1.1#1 -> 198.18.1.2:5201"
        ]
    );

    // Fullmesh on an accepted connection announces the other address.
    let mut p = Planner::new(
        settings(PmPolicy::Fullmesh),
        vec![local(1, false, 0), local(2, false, 0)],
    );
    let mut log = Log::default();
    let accepted = open_conn(11, &[("198.18.1.1:5201", "198.18.1.2:40003", false)], false);
    p.adopt(&accepted, true, Instant::now(), &mut log);
    assert_eq!(log.take(), vec!["announce 11 198.18.2.1#2"]);
    // Adopting it again changes nothing.
    p.adopt(&accepted, true, Instant::now(), &mut log);
    assert!(log.take().is_empty());
}
