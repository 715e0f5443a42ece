//! Testbeds built for real (needs root): reachability over every link and
//! family, shaping, link down/up, cleanup, side-by-side runs, MPTCP
//! subflows over the second link, and shaped throughput.

use dropshim_testbed::{
    run_with_timeout, Error, Options, Shaper, Spec, Status, Testbed, STATE_DIR,
};
use std::collections::HashMap;
use std::io::Read;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

fn up(spec: &str, opts: Options) -> Testbed {
    let spec = Spec::load(spec).expect("builtin spec");
    Testbed::up(&spec, &opts).expect("testbed up")
}

fn ping(tb: &Testbed, from: &str, to: IpAddr) -> bool {
    let mut cmd = tb.command(from, "ping").unwrap();
    cmd.args(["-c", "1", "-W", "1", "-n", &to.to_string()]);
    run_with_timeout(&mut cmd, T).unwrap().status.success()
}

fn run_ok(mut cmd: Command) -> String {
    let out = run_with_timeout(&mut cmd, T).unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn namespaces_with(id: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.contains(&format!("-{id}-")))
                .collect()
        })
        .unwrap_or_default()
}

/// Counters from /proc/net/netstat (e.g. MPTcpExt*) inside `node`.
fn netstat(tb: &Testbed, node: &str) -> HashMap<String, u64> {
    let mut cmd = tb.command(node, "cat").unwrap();
    cmd.arg("/proc/net/netstat");
    let text = run_ok(cmd);
    let lines: Vec<&str> = text.lines().collect();
    let mut map = HashMap::new();
    for pair in lines.chunks(2) {
        if let [names, values] = pair {
            let mut n = names.split_whitespace();
            let mut v = values.split_whitespace();
            let prefix = n.next().unwrap_or("").trim_end_matches(':').to_string();
            v.next();
            for (k, val) in n.zip(v) {
                map.insert(format!("{prefix}{k}"), val.parse().unwrap_or(0));
            }
        }
    }
    map
}

/// Bytes sent on `ifname` inside `node`, from /proc/net/dev.
fn tx_bytes(tb: &Testbed, node: &str, ifname: &str) -> u64 {
    let mut cmd = tb.command(node, "cat").unwrap();
    cmd.arg("/proc/net/dev");
    let text = run_ok(cmd);
    for line in text.lines() {
        if let Some((name, rest)) = line.split_once(':') {
            if name.trim() == ifname {
                // rx: 8 fields, then tx bytes
                return rest
                    .split_whitespace()
                    .nth(8)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
            }
        }
    }
    panic!("no interface {ifname} in {node}: {text}");
}

/// Start an iperf3 server in `node` and wait (bounded) until it listens.
struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn iperf_server(tb: &Testbed, node: &str, port: u16, mptcp: bool) -> Server {
    let mut cmd = if mptcp {
        let mut c = tb.command(node, "mptcpize").unwrap();
        c.args(["run", "iperf3"]);
        c
    } else {
        tb.command(node, "iperf3").unwrap()
    };
    cmd.args(["-s", "-1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let server = Server(cmd.spawn().expect("iperf3 server"));
    let deadline = Instant::now() + T;
    loop {
        let mut ss = tb.command(node, "ss").unwrap();
        ss.args(["-Hltn", &format!("sport = :{port}")]);
        if run_ok(ss).contains(&format!(":{port}")) {
            return server;
        }
        assert!(
            Instant::now() < deadline,
            "iperf3 server in {node} never listened on {port}"
        );
    }
}

/// iperf3 client from `node`: received throughput in Mbit/s.
fn iperf_client(tb: &Testbed, node: &str, to: IpAddr, port: u16, secs: u32, mptcp: bool) -> f64 {
    let mut cmd = if mptcp {
        let mut c = tb.command(node, "mptcpize").unwrap();
        c.args(["run", "iperf3"]);
        c
    } else {
        tb.command(node, "iperf3").unwrap()
    };
    cmd.args([
        "-c",
        &to.to_string(),
        "-p",
        &port.to_string(),
        "-t",
        &secs.to_string(),
        "-J",
    ]);
    let json = run_ok(cmd);
    let v: serde_json::Value = serde_json::from_str(&json).expect("iperf3 -J output");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no received bits_per_second in iperf3's report: {json}"))
        / 1e6
}

#[test]
fn two_gateways_reach_each_other_on_both_links_and_families() {
    let tb = up("two-gateways", Options::default());
    for link in [1, 2] {
        let v4 = tb.addr4("gw2", link).unwrap();
        let v6 = tb.addr6("gw2", link).unwrap();
        assert_eq!(v4.to_string(), format!("198.18.{link}.2"));
        assert_eq!(v6.to_string(), format!("2001:2:0:{link}::2"));
        assert_eq!(
            tb.addr4("gw1", link).unwrap().to_string(),
            format!("198.18.{link}.1")
        );
        assert!(ping(&tb, "gw1", v4.into()), "ping {v4} over link {link}");
        assert!(ping(&tb, "gw1", v6.into()), "ping {v6} over link {link}");
        assert!(ping(&tb, "gw2", tb.addr6("gw1", link).unwrap().into()));
    }
    // No shaping unless asked.
    let mut tc = Command::new("tc");
    tc.args([
        "-n",
        tb.netns("gw1").unwrap(),
        "qdisc",
        "show",
        "dev",
        tb.ifname("gw1", 1).unwrap(),
    ]);
    let q = run_ok(tc);
    assert!(!q.contains("tbf") && !q.contains("htb"), "{q}");
    // No internet node without --internet.
    assert!(matches!(
        tb.netns("internet"),
        Err(Error::UnknownNode { .. })
    ));
    // lo is up in every namespace.
    assert!(ping(&tb, "gw2", "127.0.0.1".parse().unwrap()));
}

/// Every node's TCP defaults to the spec's congestion control (cubic
/// unless the spec names another), whatever the host's default is.
#[test]
fn nodes_use_the_specs_congestion_control_not_the_hosts() {
    for (cc, line) in [(None, "cubic"), (Some("reno"), "reno")] {
        let mut spec = Spec::builtin("two-gateways").unwrap();
        if let Some(cc) = cc {
            spec.congestion_control = cc.to_string();
        }
        let tb = Testbed::up(&spec, &Options::default()).unwrap();
        assert_eq!(tb.describe().congestion_control, line);
        for node in ["gw1", "gw2"] {
            let mut cmd = tb.command(node, "sysctl").unwrap();
            cmd.args(["-n", "net.ipv4.tcp_congestion_control"]);
            assert_eq!(run_ok(cmd).trim(), line, "{node}");
        }
    }
}

#[test]
fn shaping_is_installed_on_both_ends_and_can_change() {
    for shaper in [Shaper::Tbf, Shaper::Htb] {
        let tb = up(
            "two-gateways",
            Options {
                rate_mbit: Some(100),
                shaper,
                ..Options::default()
            },
        );
        let show = |node: &str, link: u32, what: &str| {
            let mut c = Command::new("tc");
            c.args([
                "-n",
                tb.netns(node).unwrap(),
                what,
                "show",
                "dev",
                tb.ifname(node, link).unwrap(),
            ]);
            run_ok(c)
        };
        let kind = if shaper == Shaper::Tbf {
            "qdisc"
        } else {
            "class"
        };
        for node in ["gw1", "gw2"] {
            for link in [1, 2] {
                let out = show(node, link, kind);
                assert!(out.contains(shaper.as_str()), "{node} link {link}: {out}");
                assert!(out.contains("rate 100Mbit"), "{node} link {link}: {out}");
            }
        }
        tb.set_rate(2, Some(250)).unwrap();
        assert!(show("gw2", 2, kind).contains("rate 250Mbit"));
        assert!(show("gw1", 1, kind).contains("rate 100Mbit"));
        tb.set_rate(2, None).unwrap();
        let q = show("gw1", 2, "qdisc");
        assert!(!q.contains("tbf") && !q.contains("htb"), "{q}");
        assert!(ping(&tb, "gw1", tb.addr4("gw2", 2).unwrap().into()));
        assert_eq!(tb.describe().links[1].rate_mbit, None);
        assert_eq!(tb.describe().links[0].rate_mbit, Some(100));
    }
}

#[test]
fn link_down_cuts_only_that_link_and_up_restores_it() {
    let tb = up("two-gateways", Options::default());
    let l2 = [
        IpAddr::from(tb.addr4("gw2", 2).unwrap()),
        tb.addr6("gw2", 2).unwrap().into(),
    ];
    let l1 = [
        IpAddr::from(tb.addr4("gw2", 1).unwrap()),
        tb.addr6("gw2", 1).unwrap().into(),
    ];
    tb.set_link(2, false).unwrap();
    for a in l2 {
        assert!(!ping(&tb, "gw1", a), "{a} still answers with link 2 down");
    }
    for a in l1 {
        assert!(ping(&tb, "gw1", a), "{a} lost with link 2 down");
    }
    tb.set_link(2, true).unwrap();
    for a in l2.into_iter().chain(l1) {
        assert!(ping(&tb, "gw1", a), "{a} not back after link 2 up");
    }
    assert!(matches!(
        tb.set_link(7, false),
        Err(Error::UnknownLink { .. })
    ));
}

#[test]
fn drop_removes_namespaces_state_and_leftover_processes() {
    let tb = up("two-gateways", Options::default());
    let id = tb.id().to_string();
    assert_eq!(namespaces_with(&id).len(), 2);
    assert!(Path::new(STATE_DIR).join(format!("{id}.json")).exists());
    // A program left running inside the testbed must not keep it alive.
    let mut cmd = tb.command("gw2", "cat").unwrap();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    drop(tb);
    assert_eq!(namespaces_with(&id), Vec::<String>::new());
    assert!(!Path::new(STATE_DIR).join(format!("{id}.json")).exists());
    // Killed: its stdout reaches EOF (bounded by the test's own timeout).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        let _ = tx.send(());
    });
    rx.recv_timeout(T)
        .expect("process inside the testbed was not killed");
    let status = child.wait().unwrap();
    assert!(!status.success());
}

#[test]
fn two_testbeds_side_by_side_do_not_clash() {
    let a = up("two-gateways", Options::default());
    let b = up("two-gateways", Options::default());
    assert_ne!(a.id(), b.id());
    assert_ne!(a.netns("gw1").unwrap(), b.netns("gw1").unwrap());
    assert!(ping(&a, "gw1", a.addr4("gw2", 1).unwrap().into()));
    assert!(ping(&b, "gw1", b.addr4("gw2", 2).unwrap().into()));
    // Taking a link down in one leaves the other alone.
    a.set_link(1, false).unwrap();
    assert!(!ping(&a, "gw1", a.addr4("gw2", 1).unwrap().into()));
    assert!(ping(&b, "gw1", b.addr4("gw2", 1).unwrap().into()));
    let id_a = a.id().to_string();
    drop(a);
    assert!(namespaces_with(&id_a).is_empty());
    assert!(ping(&b, "gw1", b.addr6("gw2", 1).unwrap().into()));
    // An explicit id that is taken is refused, and says what to do.
    let spec = Spec::builtin("two-gateways").unwrap();
    let err = Testbed::up(
        &spec,
        &Options {
            id: Some(b.id().to_string()),
            ..Options::default()
        },
    )
    .err()
    .unwrap();
    assert!(matches!(err, Error::Exists(_)), "{err}");
    assert!(err.to_string().contains("dropshim testbed down"), "{err}");
}

#[test]
fn local_cache_comes_up() {
    let tb = up("local-cache", Options::default());
    assert!(tb.netns("client").unwrap().ends_with("-client"));
    for link in [1, 2] {
        assert!(ping(&tb, "client", tb.addr4("cache", link).unwrap().into()));
        assert!(ping(&tb, "client", tb.addr6("cache", link).unwrap().into()));
    }
    let mut eps = tb.command("client", "ip").unwrap();
    eps.args(["mptcp", "endpoint", "show"]);
    let eps = run_ok(eps);
    assert!(
        eps.contains("198.18.2.1") && eps.contains("subflow") && eps.contains("dev link2"),
        "{eps}"
    );
}

#[test]
fn internet_node_is_reached_through_gw2() {
    let tb = up(
        "two-gateways",
        Options {
            internet: true,
            ..Options::default()
        },
    );
    let inet4 = tb.addr4("internet", 3).unwrap();
    let inet6 = tb.addr6("internet", 3).unwrap();
    assert_eq!(inet4.to_string(), "198.18.3.2");
    assert_eq!(tb.addr4("gw2", 3).unwrap().to_string(), "198.18.3.1");
    assert!(ping(&tb, "gw1", inet4.into()));
    assert!(ping(&tb, "gw1", inet6.into()));
    // Through gw2 over link 1: cut link 1 and the route is gone.
    tb.set_link(1, false).unwrap();
    assert!(!ping(&tb, "gw1", inet4.into()));
    tb.set_link(1, true).unwrap();
    assert!(
        ping(&tb, "gw1", inet4.into()),
        "route to the internet not restored with link 1"
    );
    assert!(matches!(tb.ifname("gw1", 3), Err(Error::NotOnLink { .. })));
}

#[test]
fn mptcp_connection_opens_a_second_subflow_over_link_2() {
    let tb = up("two-gateways", Options::default());
    for (port, to) in [
        (15201u16, IpAddr::from(tb.addr4("gw2", 1).unwrap())),
        (15202, tb.addr6("gw2", 1).unwrap().into()),
    ] {
        let before = netstat(&tb, "gw2");
        let tx_before = tx_bytes(&tb, "gw1", "link2");
        let _server = iperf_server(&tb, "gw2", port, true);
        let mbit = iperf_client(&tb, "gw1", to, port, 1, true);
        let after = netstat(&tb, "gw2");
        let joins = |m: &HashMap<String, u64>| m.get("MPTcpExtMPJoinAckRx").copied().unwrap_or(0);
        assert!(
            joins(&after) > joins(&before),
            "no MP_JOIN acked in gw2 for {to}: {before:?} -> {after:?}"
        );
        let capable =
            |m: &HashMap<String, u64>| m.get("MPTcpExtMPCapableSYNRX").copied().unwrap_or(0);
        assert!(
            capable(&after) > capable(&before),
            "connection to {to} was not MPTCP"
        );
        // The subflow really carries data over link 2 (1 s unshaped: far more than 1 MB).
        let sent = tx_bytes(&tb, "gw1", "link2") - tx_before;
        assert!(
            sent > 1_000_000,
            "only {sent} bytes over link 2 to {to} ({mbit:.0} Mbit/s)"
        );
    }
}

/// The shaper caps a TCP stream at the link's rate and lets it come close.
/// The rate is low enough that a busy CI machine still fills it (1 Gbit/s
/// under a parallel test run sometimes measured 799 Mbit/s); what a
/// 1 Gbit/s link delivers is the bench's to report, not a timed test's.
#[test]
fn shaped_tcp_is_capped_at_the_rate() {
    let tb = up(
        "two-gateways",
        Options {
            rate_mbit: Some(200),
            ..Options::default()
        },
    );
    let _server = iperf_server(&tb, "gw2", 15301, false);
    let mbit = iperf_client(
        &tb,
        "gw1",
        tb.addr4("gw2", 1).unwrap().into(),
        15301,
        3,
        false,
    );
    eprintln!("iperf3 TCP over tbf 200 Mbit/s: {mbit:.1} Mbit/s");
    assert!(
        mbit <= 210.0,
        "the shaper let {mbit:.1} Mbit/s through a 200 Mbit/s link"
    );
    assert!(
        mbit >= 120.0,
        "only {mbit:.1} Mbit/s through a 200 Mbit/s link"
    );
}

/// Child half of `stale_testbeds_are_removed_and_kept_ones_stay`: builds a
/// testbed and exits without dropping it.
#[test]
#[ignore = "run only as a child process by stale_testbeds_are_removed_and_kept_ones_stay"]
fn child_leaves_a_testbed_behind() {
    if std::env::var_os("DROPSHIM_TESTBED_CHILD").is_none() {
        return;
    }
    let tb = up("local-cache", Options::default());
    println!("ID={}", tb.id());
    std::process::exit(0); // no Drop: the testbed is left behind
}

#[test]
fn stale_testbeds_are_removed_and_kept_ones_stay() {
    let kept = up("local-cache", Options::default()).keep();
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe);
    child
        .args([
            "--exact",
            "child_leaves_a_testbed_behind",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DROPSHIM_TESTBED_CHILD", "1");
    let out = run_ok(child);
    let id = out
        .lines()
        .find_map(|l| l.split_once("ID=").map(|(_, id)| id.trim()))
        .expect("child printed its id")
        .to_string();
    assert_eq!(namespaces_with(&id).len(), 2);
    // (Another test's `up` may clean it first; then it is simply gone.)
    if let Some(listed) = Testbed::list().into_iter().find(|l| l.id == id) {
        assert!(matches!(listed.status, Status::Stale { .. }), "{listed:?}");
    }
    Testbed::remove_stale();
    assert!(
        namespaces_with(&id).is_empty(),
        "stale testbed {id} survived"
    );
    assert!(!Path::new(STATE_DIR).join(format!("{id}.json")).exists());
    assert_eq!(namespaces_with(&kept).len(), 2, "kept testbed was removed");
    let listed = Testbed::list()
        .into_iter()
        .find(|l| l.id == kept)
        .expect("kept listed");
    assert_eq!(listed.status, Status::Kept);
    // A kept testbed can be driven by id.
    let handle = Testbed::attach(&kept).unwrap();
    handle.set_link(2, false).unwrap();
    assert!(!ping(
        &handle,
        "client",
        handle.addr4("cache", 2).unwrap().into()
    ));
    drop(handle);
    assert_eq!(
        namespaces_with(&kept).len(),
        2,
        "dropping an attached handle removed the testbed"
    );
    Testbed::remove(&kept).unwrap();
    assert!(namespaces_with(&kept).is_empty());
    assert!(matches!(Testbed::remove(&kept), Err(Error::NotFound(_))));
}

#[test]
fn a_namespace_that_only_looks_like_a_testbeds_is_left_alone() {
    // A `ds-` namespace with no state file: perhaps a testbed whose file
    // was lost, perhaps another program's. Another testbed coming up
    // must not remove it (nor kill what runs inside); only an explicit
    // removal by id does.
    let id = format!("orph{}", std::process::id());
    let ns = format!("ds-{id}-node");
    run_ok({
        let mut c = Command::new("ip");
        c.args(["netns", "add", &ns]);
        c
    });
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _cleanup = Cleanup(ns.clone());
    let tb = up("two-gateways", Options::default());
    assert_eq!(
        namespaces_with(&id),
        vec![ns.clone()],
        "another testbed's up removed it"
    );
    drop(tb);
    let listed = Testbed::list()
        .into_iter()
        .find(|l| l.id == id)
        .expect("the namespace is listed");
    assert_eq!(listed.status, Status::Orphan);
    Testbed::remove(&id).unwrap();
    assert!(namespaces_with(&id).is_empty(), "removal by id left it");
}

#[test]
fn run_with_timeout_kills_and_reports() {
    let start = Instant::now();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo started >&2; sleep 30 & wait"]);
    let err = run_with_timeout(&mut cmd, Duration::from_millis(300)).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
    match &err {
        Error::Timeout { stderr, .. } => assert_eq!(stderr, "started"),
        other => panic!("{other}"),
    }
    let mut ok = Command::new("sh");
    ok.args(["-c", "printf out; printf err >&2; exit 3"]);
    let out = run_with_timeout(&mut ok, T).unwrap();
    assert_eq!(
        (
            out.stdout.as_slice(),
            out.stderr.as_slice(),
            out.status.code()
        ),
        (&b"out"[..], &b"err"[..], Some(3))
    );
    let mut missing = Command::new("dropshim-no-such-program");
    assert!(matches!(
        run_with_timeout(&mut missing, T),
        Err(Error::MissingTool { .. })
    ));
}

#[test]
fn bad_requests_say_what_to_do() {
    let spec = Spec::builtin("local-cache").unwrap();
    let err = Testbed::up(
        &spec,
        &Options {
            internet: true,
            ..Options::default()
        },
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("drop --internet"), "{err}");
    let err = Testbed::up(
        &spec,
        &Options {
            id: Some("a-b".into()),
            ..Options::default()
        },
    )
    .err()
    .unwrap();
    assert!(matches!(err, Error::BadId(_)), "{err}");
    let err = Testbed::up(
        &spec,
        &Options {
            rate_mbit: Some(0),
            ..Options::default()
        },
    )
    .err()
    .unwrap();
    assert!(matches!(err, Error::ZeroRate), "{err}");
    let tb = Testbed::up(&spec, &Options::default()).unwrap();
    let err = tb.netns("gw1").unwrap_err().to_string();
    assert!(err.contains("client, cache"), "{err}");
}
