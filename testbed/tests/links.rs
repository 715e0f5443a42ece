//! Links with delay, jitter and loss, built for real (needs root): each
//! emulation method this machine can run proves its delay (ping RTT), its
//! loss (binomial bound over thousands of pings) and its rate (iperf3);
//! per-direction values act per direction; links go down and up; nothing
//! is left behind; MPTCP spreads over an emulated wifi + lte pair; the
//! loss pattern is fresh on every boot; the emulator's CPU use is
//! reported.

use dropshim_testbed::{
    run_with_timeout, Error, LinkChoice, Method, Options, Profile, Spec, Testbed, STATE_DIR,
};
use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

const TWO_NODES: &str = "name = 'links'\n[[node]]\nname = 'a'\n[[node]]\nname = 'b'\n";

fn build(links: &str) -> Testbed {
    let spec = Spec::parse(&format!("{TWO_NODES}{links}"), "test spec").expect("spec");
    Testbed::up(&spec, &Options::default()).expect("testbed up")
}

/// The method this machine uses for links with delay/jitter/loss.
fn expected_method(tb: &Testbed, link: u32) -> Method {
    let d = tb.describe();
    let info = d.links.iter().find(|l| l.number == link).expect("link");
    assert_ne!(info.method, Method::Plain, "link {link} needs netem");
    info.method
}

fn run_ok(mut cmd: Command) -> String {
    let out = run_with_timeout(&mut cmd, T).unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `count` pings at `interval_s` from `from` to `to`: (sent, received,
/// median RTT in ms). The median, not the mean: the first reply waits for
/// neighbour discovery, and a busy machine delays a few more.
/// Round-trip times of one ping run, in ms.
#[derive(Clone, Copy, Debug)]
struct Rtt {
    /// The floor the emulated delay sets: CPU contention on the host or
    /// in the emulator can only add to a round trip, never take away.
    min: f64,
    median: f64,
}

fn ping(tb: &Testbed, from: &str, to: IpAddr, count: u32, interval_s: f64) -> (u64, u64, Rtt) {
    let mut cmd = tb.command(from, "ping").unwrap();
    cmd.args([
        "-n",
        "-c",
        &count.to_string(),
        "-i",
        &format!("{interval_s}"),
        "-W",
        "2",
        &to.to_string(),
    ]);
    let out = run_with_timeout(&mut cmd, T).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let Some(line) = text.lines().find(|l| l.contains("packets transmitted")) else {
        // No route at all (the interface is down): nothing was sent.
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("unreachable"), "no ping summary: {text} {err}");
        let none = Rtt {
            min: f64::NAN,
            median: f64::NAN,
        };
        return (0, 0, none);
    };
    let num = |word: &str| -> u64 {
        let words: Vec<&str> = line.split_whitespace().collect();
        let i = words
            .iter()
            .position(|w| w.starts_with(word))
            .unwrap_or_else(|| panic!("{word} in {line}"));
        words[i - 1].parse().unwrap()
    };
    let (sent, received) = (num("packets"), num("received"));
    let mut rtts: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .collect();
    rtts.sort_by(f64::total_cmp);
    let at = |i: usize| rtts.get(i).copied().unwrap_or(f64::NAN);
    let rtt = Rtt {
        min: at(0),
        median: at(rtts.len() / 2),
    };
    (sent, received, rtt)
}

/// Wait (bounded) until `from` reaches `to` by ping.
fn wait_reachable(tb: &Testbed, from: &str, to: IpAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while ping(tb, from, to, 1, 0.2).1 != 1 {
        assert!(Instant::now() < deadline, "{from} never reached {to}");
    }
}

/// Counters from /proc/net/snmp or /proc/net/netstat inside `node`
/// (`Icmp` + `InEchos`, `MPTcpExt` + `MPJoinAckRx`, ...).
fn counters(tb: &Testbed, node: &str, file: &str) -> HashMap<String, u64> {
    let mut cmd = tb.command(node, "cat").unwrap();
    cmd.arg(file);
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

/// Bytes sent on `ifname` inside `node`.
fn tx_bytes(tb: &Testbed, node: &str, ifname: &str) -> u64 {
    let mut cmd = tb.command(node, "cat").unwrap();
    cmd.arg("/proc/net/dev");
    let text = run_ok(cmd);
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim() == ifname)
        .and_then(|(_, rest)| rest.split_whitespace().nth(8)?.parse().ok())
        .unwrap_or_else(|| panic!("no interface {ifname} in {node}"))
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_listening(tb: &Testbed, node: &str, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut ss = tb.command(node, "ss").unwrap();
        ss.args(["-Hltn", &format!("sport = :{port}")]);
        if run_ok(ss).contains(&format!(":{port}")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nothing listens on {port} in {node}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// iperf3 TCP from `from` to `to` (reverse: `to` sends), Mbit/s received.
fn iperf(tb: &Testbed, from: &str, server: &str, to: IpAddr, port: u16, reverse: bool) -> f64 {
    let mut s = tb.command(server, "iperf3").unwrap();
    s.args(["-s", "-1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _server = Server(s.spawn().expect("iperf3 server"));
    wait_listening(tb, server, port);
    let mut c = tb.command(from, "iperf3").unwrap();
    c.args([
        "-c",
        &to.to_string(),
        "-p",
        &port.to_string(),
        "-t",
        "5",
        "-J",
    ]);
    if reverse {
        c.arg("-R");
    }
    let v: serde_json::Value = serde_json::from_str(&run_ok(c)).expect("iperf3 -J");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("bits_per_second")
        / 1e6
}

/// 99 % two-sided binomial interval for `n` trials at probability `p`
/// (normal approximation, z = 2.576), in counts.
fn binomial_99(n: u64, p: f64) -> (f64, f64) {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (mean - 2.576 * sd, mean + 2.576 * sd)
}

#[test]
fn delay_gives_the_round_trip_time() {
    let tb = build("[[link]]\nnumber = 1\na = 'a'\nb = 'b'\ndelay_ms = 10\n");
    let method = expected_method(&tb, 1);
    let to = IpAddr::from(tb.addr4("b", 1).unwrap());
    wait_reachable(&tb, "a", to);
    let (sent, received, rtt) = ping(&tb, "a", to, 50, 0.02);
    eprintln!(
        "{}: delay 10 ms per direction: RTT min {:.2} ms, median {:.2} ms ({received}/{sent})",
        method.as_str(),
        rtt.min,
        rtt.median
    );
    assert_eq!(sent, received, "no loss configured");
    // The configured delay is the floor of every round trip, so the
    // fastest one shows it; a busy CPU (the whole suite runs beside this
    // test) only delays the others, and gets a generous bound.
    let allowed = (20.0f64 * 0.1).max(0.5);
    let check = |family: &str, rtt: Rtt| {
        assert!(
            rtt.min >= 20.0 - 0.5 && rtt.min <= 20.0 + allowed,
            "{family}: fastest RTT {:.2} ms, expected 20 ms (-0.5, +{allowed}) ms",
            rtt.min
        );
        assert!(
            rtt.median <= 20.0 + 20.0,
            "{family}: median RTT {:.2} ms, over twice the configured 20 ms",
            rtt.median
        );
    };
    check("IPv4", rtt);
    // Both families cross the emulator.
    let (_, received6, rtt6) = ping(&tb, "b", tb.addr6("a", 1).unwrap().into(), 20, 0.02);
    assert_eq!(received6, 20);
    check("IPv6", rtt6);
}

/// The netem seed of the loss test.
const LOSS_SEED: u64 = 0x5eed_0005;

#[test]
fn loss_over_thousands_of_pings_is_within_the_binomial_bound() {
    // A fixed seed: with a fresh one, a correct 5 % link falls outside a
    // 99 % bound in one run out of a hundred per direction. The seed
    // fixes netem's draws, not the count: a link that lost 0 % or 10 %
    // still fails. Fresh seeds per boot are the_loss_pattern_differs_from_boot_to_boot's.
    let spec = Spec::parse(
        &format!("{TWO_NODES}[[link]]\nnumber = 1\na = 'a'\nb = 'b'\nloss_pct = 5\n"),
        "test spec",
    )
    .expect("spec");
    let opts = Options {
        netem_seed: Some(LOSS_SEED),
        ..Options::default()
    };
    let tb = Testbed::up(&spec, &opts).expect("testbed up");
    let method = expected_method(&tb, 1);
    let to = IpAddr::from(tb.addr4("b", 1).unwrap());
    wait_reachable(&tb, "a", to);
    let snmp = |node: &str, key: &str| counters(&tb, node, "/proc/net/snmp")[key];
    let (echos, replies) = (snmp("b", "IcmpInEchos"), snmp("a", "IcmpInEchoReps"));
    let (sent, received, _) = ping(&tb, "a", to, 3000, 0.002);
    assert_eq!(sent, 3000);
    // Counted where they arrive: requests at b (a->b), replies at a (b->a).
    let arrived = snmp("b", "IcmpInEchos") - echos;
    let back = snmp("a", "IcmpInEchoReps") - replies;
    for (what, n, got) in [("a->b", sent, arrived), ("b->a", arrived, back)] {
        let lost = n - got;
        let (lo, hi) = binomial_99(n, 0.05);
        eprintln!(
            "{}: loss 5 % {what}: {lost} of {n} lost ({:.2} %, 99 % bound {lo:.0}..{hi:.0})",
            method.as_str(),
            lost as f64 * 100.0 / n as f64
        );
        assert!(
            (lo..=hi).contains(&(lost as f64)),
            "{what}: {lost} lost of {n}, outside the 99 % bound {lo:.0}..{hi:.0}"
        );
    }
    assert_eq!(received, back, "ping and the counters disagree");
}

#[test]
fn rate_holds_on_a_link_with_delay() {
    let tb = build("[[link]]\nnumber = 1\na = 'a'\nb = 'b'\nrate_mbit = 50\ndelay_ms = 5\n");
    let method = expected_method(&tb, 1);
    let to = IpAddr::from(tb.addr4("b", 1).unwrap());
    wait_reachable(&tb, "a", to);
    let mbit = iperf(&tb, "a", "b", to, 15401, false);
    eprintln!(
        "{}: 50 Mbit/s + 5 ms: iperf3 TCP {mbit:.1} Mbit/s",
        method.as_str()
    );
    // The ceiling proves the shaping (10 %); the floor only that the
    // link carries about its rate: the emulator shares two CPUs with the
    // rest of a parallel suite (it measured 39.6 once there), and how
    // close an emulated link comes to its rate is the links bench's to
    // report, not a pass/fail bound.
    assert!(
        (30.0..=55.0).contains(&mbit),
        "{mbit:.1} Mbit/s over a 50 Mbit/s link"
    );
}

/// The sequence numbers of `count` pings from `from` to `to` that got no
/// reply.
fn lost_pings(tb: &Testbed, from: &str, to: IpAddr, count: u32) -> BTreeSet<u32> {
    let mut cmd = tb.command(from, "ping").unwrap();
    cmd.args([
        "-n",
        "-c",
        &count.to_string(),
        "-i",
        "0.002",
        "-W",
        "2",
        &to.to_string(),
    ]);
    let text = run_with_timeout(&mut cmd, T).unwrap().stdout;
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains("packets transmitted"),
        "no ping summary: {text}"
    );
    let answered: BTreeSet<u32> = text
        .lines()
        .filter_map(|l| l.split("icmp_seq=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .collect();
    (1..=count).filter(|n| !answered.contains(n)).collect()
}

/// How much of loss set `a` reappears in `b`: `a` is cut into pieces of
/// 500 ping numbers, each piece is matched against `b` shifted by the
/// best of -50..50 packets, and the matched share of `a` is returned.
/// Near 1 for the same pattern, even where a stray frame (neighbour
/// discovery) moved the rest of it by one; about 0.2 for independent
/// patterns at 5 % loss (the best of 101 shifts of a few dozen losses).
fn pattern_match(a: &BTreeSet<u32>, b: &BTreeSet<u32>) -> f64 {
    let mut matched = 0usize;
    for start in (0..=a.last().copied().unwrap_or(0)).step_by(500) {
        let piece: Vec<i64> = a.range(start..start + 500).map(|&n| i64::from(n)).collect();
        matched += (-50i64..=50)
            .map(|shift| {
                piece
                    .iter()
                    .filter(|&&n| u32::try_from(n + shift).is_ok_and(|m| b.contains(&m)))
                    .count()
            })
            .max()
            .unwrap_or(0);
    }
    matched as f64 / a.len().max(1) as f64
}

const LOSSY_A_TO_B: &str = "[[link]]\nnumber = 1\na = 'a'\nb = 'b'\n[link.a_to_b]\nloss_pct = 5\n";

/// Make the pings the only frames a sends on link 1 (no IPv6, neighbours
/// fixed both ways), so that netem's decisions on that direction fall on
/// the same pings whenever its seed is the same.
fn quiet_link_1(tb: &Testbed) {
    let mac = |node: &str| -> String {
        let mut c = tb.command(node, "ip").unwrap();
        c.args(["-br", "link", "show", "dev", tb.ifname(node, 1).unwrap()]);
        let line = run_ok(c);
        // NAME STATE MAC FLAGS
        let mac = line
            .split_whitespace()
            .nth(2)
            .unwrap_or_default()
            .to_string();
        assert_eq!(mac.len(), 17, "no MAC address in {line:?}");
        mac
    };
    for (node, peer) in [("a", "b"), ("b", "a")] {
        let ifname = tb.ifname(node, 1).unwrap();
        let mut off = tb.command(node, "sysctl").unwrap();
        off.args(["-qw", &format!("net.ipv6.conf.{ifname}.disable_ipv6=1")]);
        run_ok(off);
        let mut neigh = tb.command(node, "ip").unwrap();
        neigh.args([
            "neigh",
            "replace",
            &tb.addr4(peer, 1).unwrap().to_string(),
            "lladdr",
            &mac(peer),
            "dev",
            ifname,
            "nud",
            "permanent",
        ]);
        run_ok(neigh);
    }
}

/// Boot a testbed whose link 1 loses 5 % from a to b (netem seed from
/// `seed`, or fresh), send 3,000 numbered pings, check the loss rate
/// against the binomial bound; the seed reported and the pings lost.
fn lossy_round(round: u32, seed: Option<u64>) -> (Option<u64>, BTreeSet<u32>) {
    const N: u32 = 3000;
    let spec = Spec::parse(&format!("{TWO_NODES}{LOSSY_A_TO_B}"), "test spec").expect("spec");
    let tb = Testbed::up(
        &spec,
        &Options {
            netem_seed: seed,
            ..Options::default()
        },
    )
    .expect("testbed up");
    let method = expected_method(&tb, 1);
    let reported = tb.describe().netem_seed;
    if method == Method::UmlNetem {
        let reported = reported.expect("the emulator's seed is in the description");
        let run = Path::new(STATE_DIR).join(format!("{}.emu", tb.id()));
        let recorded = std::fs::read_to_string(run.join("netem-seed")).unwrap();
        assert_eq!(
            recorded.trim(),
            reported.to_string(),
            "seed file vs description"
        );
        if let Some(s) = seed {
            assert_eq!(reported, s, "the seed asked for is the one used");
        }
    }
    quiet_link_1(&tb);
    let to = IpAddr::from(tb.addr4("b", 1).unwrap());
    wait_reachable(&tb, "a", to);
    let lost = lost_pings(&tb, "a", to, N);
    // These rounds compare which pings were lost, and draw fresh seeds:
    // a correct 5 % link would fall outside a 99 % bound in one round out
    // of a hundred. The count's 99 % bound is the fixed-seed loss test's;
    // here only a link that is not losing about 5 % fails (2.5-10 %: more
    // than six standard deviations either side).
    let (lo, hi) = (f64::from(N) * 0.025, f64::from(N) * 0.10);
    eprintln!(
        "{} round {round}: seed {reported:?}, {} of {N} lost (about 5 %: {lo:.0}..{hi:.0}), first: {:?}",
        method.as_str(),
        lost.len(),
        lost.iter().take(12).collect::<Vec<_>>()
    );
    assert!(
        (lo..=hi).contains(&(lost.len() as f64)),
        "round {round}: {} of {N} lost, not about 5 % ({lo:.0}..{hi:.0})",
        lost.len()
    );
    (reported, lost)
}

/// Two boots of the same 5 % lossy link lose different packets: netem's
/// random state is seeded afresh (and the seed recorded) every time,
/// while each run's rate stays within the binomial bound.
#[test]
fn the_loss_pattern_differs_from_boot_to_boot() {
    let (seed0, lost0) = lossy_round(0, None);
    let (seed1, lost1) = lossy_round(1, None);
    let m = pattern_match(&lost0, &lost1);
    eprintln!("share of round 0's losses repeated in round 1: {m:.3}");
    assert_ne!(lost0, lost1, "both boots lost the same pings");
    assert!(
        m < 0.5,
        "{m:.3} of round 0's losses repeat in round 1: the loss pattern repeats"
    );
    if let (Some(a), Some(b)) = (seed0, seed1) {
        assert_ne!(a, b, "two boots drew the same seed");
    }
}

/// The seed a run reported repeats its loss pattern on a fresh boot.
#[test]
fn the_same_seed_repeats_the_loss_pattern() {
    let (seed, lost0) = lossy_round(0, None);
    let Some(seed) = seed else {
        eprintln!("host netem: seeded by the host kernel, no seed to repeat");
        return;
    };
    let (_, lost1) = lossy_round(1, Some(seed));
    let m = pattern_match(&lost0, &lost1);
    eprintln!("seed {seed} again: share of round 0's losses repeated in round 1: {m:.3}");
    assert!(
        m >= 0.9,
        "only {m:.3} of round 0's losses repeat with the same seed {seed}"
    );
}

/// The emulator's CPU use is reported per instance and grows with the
/// traffic it carries.
#[test]
fn emulator_cpu_is_reported_and_rises_with_traffic() {
    let tb = build("[[link]]\nnumber = 1\na = 'a'\nb = 'b'\nrate_mbit = 200\ndelay_ms = 1\n");
    let method = expected_method(&tb, 1);
    let before = tb.emulator_cpu();
    if method != Method::UmlNetem {
        assert!(before.is_empty(), "no emulator, yet {before:?}");
        return;
    }
    assert_eq!(before.len(), 1, "one instance carries one link: {before:?}");
    let b = before[0];
    assert!(b.processes >= 1, "{b:?}");
    assert!(
        b.user_s >= 0.0 && b.sys_s >= 0.0 && b.elapsed_s > 0.0,
        "{b:?}"
    );
    let to = IpAddr::from(tb.addr4("b", 1).unwrap());
    wait_reachable(&tb, "a", to);
    let mbit = iperf(&tb, "a", "b", to, 15405, false);
    let after = tb.emulator_cpu();
    assert_eq!(after.len(), 1, "{after:?}");
    let a = after[0];
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    eprintln!(
        "emulator: before {:.2} s CPU over {:.1} s; after {mbit:.0} Mbit/s for 5 s: {:.2} s (user {:.2}, sys {:.2}) over {:.1} s = {:.1} % of one CPU, {} processes",
        b.cpu_s(),
        b.elapsed_s,
        a.cpu_s(),
        a.user_s,
        a.sys_s,
        a.elapsed_s,
        a.pct_of_one_cpu(),
        a.processes
    );
    assert!(mbit > 10.0, "only {mbit:.1} Mbit/s crossed the link");
    // Moving tens of MB through the guest costs well over one clock tick.
    assert!(
        a.cpu_s() >= b.cpu_s() + 0.05,
        "CPU did not rise with traffic: {b:?} -> {a:?}"
    );
    assert!(a.elapsed_s > b.elapsed_s, "{b:?} -> {a:?}");
    let pct = a.pct_of_one_cpu();
    assert!(
        pct > 0.0 && pct <= 100.0 * cores + 1.0,
        "{pct:.1} % of one CPU on {cores} cores"
    );
}

/// Link 1 loses only from a to b, link 2 is faster from a to b than back:
/// counted at each end and measured each way.
#[test]
fn per_direction_values_act_per_direction() {
    let tb = build(
        "[[link]]\nnumber = 1\na = 'a'\nb = 'b'\n[link.a_to_b]\nloss_pct = 20\n\
         [[link]]\nnumber = 2\na = 'a'\nb = 'b'\ndelay_ms = 2\n\
         [link.a_to_b]\nrate_mbit = 40\n[link.b_to_a]\nrate_mbit = 15\n",
    );
    expected_method(&tb, 1);
    let to = IpAddr::from(tb.addr4("b", 1).unwrap());
    wait_reachable(&tb, "a", to);
    let (echos_b, replies_a) = (
        counters(&tb, "b", "/proc/net/snmp"),
        counters(&tb, "a", "/proc/net/snmp"),
    );
    let (sent, received, _) = ping(&tb, "a", to, 2000, 0.002);
    let arrived = counters(&tb, "b", "/proc/net/snmp")["IcmpInEchos"] - echos_b["IcmpInEchos"];
    let back = counters(&tb, "a", "/proc/net/snmp")["IcmpInEchoReps"] - replies_a["IcmpInEchoReps"];
    eprintln!("loss a->b 20 %, b->a 0: {arrived} of {sent} requests arrived, {back} replies came back ({received} counted by ping)");
    // 70-90 % rather than the binomial 99 % interval (1554..1646 of 2000):
    // 500 requests a second into an emulator that a busy host keeps off
    // its CPU can overflow the queue in front of netem (seen: 1524 of
    // 2000, 4 sigma low, while another test ran a bench). The band still
    // tells 20 % loss from none and from 40 %; the replies show b->a
    // loses nothing.
    let (lo, hi) = (0.7 * sent as f64, 0.9 * sent as f64);
    assert!(
        (lo..=hi).contains(&(arrived as f64)),
        "{arrived} of {sent} arrived at b, outside {lo:.0}..{hi:.0}"
    );
    assert_eq!(back, arrived, "replies were lost from b to a");

    let to2 = IpAddr::from(tb.addr4("b", 2).unwrap());
    let up = iperf(&tb, "a", "b", to2, 15402, false);
    let down = iperf(&tb, "a", "b", to2, 15403, true);
    eprintln!("link 2: a->b {up:.1} Mbit/s (40), b->a {down:.1} Mbit/s (15)");
    // Each direction keeps its own cap (the ceilings, 10 %); the floors
    // are as loose as rate_holds_on_a_link_with_delay's, for the same
    // reason, and still far apart: 24 up against at most 16.5 down.
    assert!((24.0..=44.0).contains(&up), "a->b {up:.1} Mbit/s, 40 set");
    assert!(
        (9.0..=16.5).contains(&down),
        "b->a {down:.1} Mbit/s, 15 set"
    );
}

#[test]
fn an_emulated_link_goes_down_and_comes_back() {
    let tb = build(
        "[[link]]\nnumber = 1\na = 'a'\nb = 'b'\ndelay_ms = 1\n\
         [[link]]\nnumber = 2\na = 'a'\nb = 'b'\ndelay_ms = 1\n",
    );
    let (to1, to2) = (
        IpAddr::from(tb.addr4("b", 1).unwrap()),
        IpAddr::from(tb.addr4("b", 2).unwrap()),
    );
    wait_reachable(&tb, "a", to1);
    wait_reachable(&tb, "a", to2);
    tb.set_link(1, false).unwrap();
    assert_eq!(
        ping(&tb, "a", to1, 3, 0.05).1,
        0,
        "link 1 carries while down"
    );
    assert_eq!(ping(&tb, "a", to2, 5, 0.05).1, 5, "link 2 suffered");
    tb.set_link(1, true).unwrap();
    // Back at once: the emulator's ports never noticed.
    let (sent, received, _) = ping(&tb, "a", to1, 20, 0.02);
    assert_eq!(received, sent, "link 1 did not come back");

    // A cut of one end only (as a device's interface going away), with b
    // still sending into the emulator towards the dead half.
    let ns_a = tb.netns("a").unwrap().to_string();
    let ifname = tb.ifname("a", 1).unwrap().to_string();
    run_ok({
        let mut c = Command::new("ip");
        c.args(["-n", &ns_a, "link", "set", &ifname, "down"]);
        c
    });
    let (_, received, _) = ping(&tb, "b", tb.addr4("a", 1).unwrap().into(), 50, 0.005);
    assert_eq!(received, 0, "a's end is down, yet b got answers");
    tb.set_link(1, true).unwrap();
    let (sent, received, _) = ping(&tb, "b", tb.addr4("a", 1).unwrap().into(), 20, 0.02);
    assert_eq!(
        received, sent,
        "link 1 did not come back after a one-sided cut"
    );
}

#[test]
fn nothing_is_left_after_drop() {
    let tb = build(
        "[[link]]\nnumber = 1\na = 'a'\nb = 'b'\nprofile = 'wifi'\n\
         [[link]]\nnumber = 2\na = 'a'\nb = 'b'\nrate_mbit = 100\n",
    );
    let id = tb.id().to_string();
    let d = tb.describe();
    assert_eq!(
        d.links[1].method,
        Method::Plain,
        "a rate-only link stays plain"
    );
    let run = Path::new(STATE_DIR).join(format!("{id}.emu"));
    let netns: Vec<String> = std::fs::read_dir("/run/netns")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(&format!("ds-{id}-")))
        .collect();
    let uml_running = d.links[0].method == Method::UmlNetem;
    if uml_running {
        assert!(run.is_dir(), "no emulator run directory {}", run.display());
        assert!(netns.contains(&format!("ds-{id}-emu")), "{netns:?}");
        assert!(!emulator_processes(&run).is_empty(), "no emulator running");
    }
    drop(tb);
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(&format!("ds-{id}-")))
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    assert!(!run.exists(), "{} left", run.display());
    assert!(
        !Path::new(STATE_DIR).join(format!("{id}.json")).exists(),
        "state file left"
    );
    let procs = emulator_processes(&run);
    assert!(procs.is_empty(), "emulator processes left: {procs:?}");
    // Every interface lived in the testbed's namespaces; none leaked here.
    let links = run_ok({
        let mut c = Command::new("ip");
        c.args(["-o", "link", "show"]);
        c
    });
    assert!(
        !links
            .lines()
            .any(|l| l.contains(" l1a") || l.contains(" l1b")),
        "{links}"
    );
}

/// Processes whose command line names `run` (the UML kernel and its
/// helper processes carry it in uml_dir=), and children of this process
/// (a kernel not reaped would stay as a zombie).
fn emulator_processes(run: &Path) -> Vec<u32> {
    let needle = run.to_string_lossy().to_string();
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Fields after the command name: state, ppid, ...
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().nth(1).map(str::to_string));
            String::from_utf8_lossy(&cmdline).contains(&needle)
                || (stat.contains("(linux)") && ppid.as_deref() == Some(me.as_str()))
        })
        .collect()
}

#[test]
fn bad_link_values_are_errors_with_file_and_line() {
    let dir = std::env::temp_dir().join(format!("dropshim-links-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(dir.clone());
    let head = format!("{TWO_NODES}[[link]]\nnumber = 1\na = 'a'\nb = 'b'\n");
    for (i, (bad, line, what)) in [
        ("delay_ms = -3\n", 10, "not a usable delay"),
        ("loss_pct = 250\n", 10, "not a usable loss rate"),
        ("jitter_ms = nan\n", 10, "not a usable delay"),
        ("profile = '5g'\n", 10, "unknown variant `5g`"),
        (
            "[link.b_to_a]\nloss_pct = -1\n",
            11,
            "not a usable loss rate",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.join(format!("bad{i}.toml"));
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(format!("{head}{bad}").as_bytes()).unwrap();
        let path = path.to_string_lossy().to_string();
        let e = Spec::load(&path).unwrap_err().to_string();
        assert!(e.contains(&path), "{e}");
        assert!(e.contains(&format!("line {line}")), "{bad}: {e}");
        assert!(e.contains(what), "{bad}: {e}");
    }
    let spec = Spec::builtin("two-gateways").unwrap();
    let e = Testbed::up(
        &spec,
        &Options {
            links: vec![LinkChoice::Profile(Profile::Wifi); 3],
            ..Options::default()
        },
    )
    .err()
    .unwrap();
    assert!(matches!(e, Error::TooManyLinks { .. }), "{e}");
    assert!(e.to_string().contains("give at most 2"), "{e}");
}

/// A phone-like gw1 with Wi-Fi on link 1 and LTE on link 2: one MPTCP
/// connection carries a file over both, every byte checked.
#[test]
fn mptcp_over_emulated_wifi_and_lte_uses_both_links() {
    let spec = Spec::builtin("two-gateways").unwrap();
    let tb = Testbed::up(
        &spec,
        &Options {
            links: vec![
                LinkChoice::Profile(Profile::Wifi),
                LinkChoice::Profile(Profile::Lte),
            ],
            ..Options::default()
        },
    )
    .unwrap();
    let d = tb.describe();
    assert_eq!(d.links[0].profile, Some(Profile::Wifi));
    assert_eq!(d.links[1].params.b_to_a.rate_mbit, Some(30));
    let to = IpAddr::from(tb.addr4("gw2", 1).unwrap());
    wait_reachable(&tb, "gw1", to);
    wait_reachable(&tb, "gw1", tb.addr4("gw2", 2).unwrap().into());
    let port = 15404u16;
    // Receiver on gw2: an MPTCP socket (IPPROTO_MPTCP = 262) that hashes
    // what arrives; sender on gw1: 12 MB of seeded pseudo-random bytes.
    const RECV: &str = "import hashlib,socket,sys\n\
s=socket.socket(socket.AF_INET,socket.SOCK_STREAM,262)\n\
s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
s.bind(('0.0.0.0',int(sys.argv[1])));s.listen(1)\n\
c,_=s.accept();h=hashlib.sha256();n=0\n\
while True:\n d=c.recv(1<<16)\n if not d: break\n h.update(d);n+=len(d)\n\
print(n,h.hexdigest(),flush=True)\n";
    const SEND: &str = "import hashlib,random,socket,sys\n\
r=random.Random(17);data=r.randbytes(12*1000*1000)\n\
s=socket.socket(socket.AF_INET,socket.SOCK_STREAM,262)\n\
s.connect((sys.argv[1],int(sys.argv[2])));s.sendall(data);s.close()\n\
print(len(data),hashlib.sha256(data).hexdigest(),flush=True)\n";
    let mut r = tb.command("gw2", "python3").unwrap();
    r.args(["-c", RECV, &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut receiver = Server(r.spawn().unwrap());
    wait_listening(&tb, "gw2", port);
    let joins_before = counters(&tb, "gw2", "/proc/net/netstat")
        .get("MPTcpExtMPJoinAckRx")
        .copied()
        .unwrap_or(0);
    let tx = [tx_bytes(&tb, "gw1", "link1"), tx_bytes(&tb, "gw1", "link2")];
    let mut s = tb.command("gw1", "python3").unwrap();
    s.args(["-c", SEND, &to.to_string(), &port.to_string()]);
    let sent = run_ok(s);
    let out = wait_output(&mut receiver.0);
    assert_eq!(
        out.trim(),
        sent.trim(),
        "bytes and sha256 received (left) vs sent (right) differ; gw2 counters: {:?}",
        counters(&tb, "gw2", "/proc/net/netstat")
            .into_iter()
            .filter(|(k, v)| k.starts_with("MPTcpExt") && *v > 0)
            .collect::<Vec<_>>()
    );
    let joins = counters(&tb, "gw2", "/proc/net/netstat")
        .get("MPTcpExtMPJoinAckRx")
        .copied()
        .unwrap_or(0)
        - joins_before;
    let over = [
        tx_bytes(&tb, "gw1", "link1") - tx[0],
        tx_bytes(&tb, "gw1", "link2") - tx[1],
    ];
    eprintln!(
        "wifi+lte: {} ; joins {joins}; bytes out over wifi {} and lte {}",
        sent.trim(),
        over[0],
        over[1]
    );
    assert!(joins >= 1, "no MP_JOIN acked at gw2");
    for (i, b) in over.iter().enumerate() {
        assert!(*b > 500_000, "link {} carried only {b} bytes", i + 1);
    }
}

/// Output of a child whose stdout is piped, waited for with a bound.
fn wait_output(child: &mut Child) -> String {
    let deadline = Instant::now() + T;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            if let Some(mut o) = child.stdout.take() {
                std::io::Read::read_to_string(&mut o, &mut out).unwrap();
            }
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            assert!(status.success(), "receiver failed: {err}");
            return out;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("receiver did not finish within {T:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `mb` MB of seeded random bytes over TCP from `from` to `to` (a
/// receiver on node `server`): the (length, sha256) sent and received.
fn transfer(
    tb: &Testbed,
    from: &str,
    server: &str,
    to: IpAddr,
    port: u16,
    mb: u32,
) -> (String, String) {
    const RECV: &str = "import hashlib,socket,sys\n\
s=socket.socket()\n\
s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
s.bind(('0.0.0.0',int(sys.argv[1])));s.listen(1)\n\
c,_=s.accept();h=hashlib.sha256();n=0\n\
while True:\n d=c.recv(1<<16)\n if not d: break\n h.update(d);n+=len(d)\n\
print(n,h.hexdigest(),flush=True)\n";
    const SEND: &str = "import hashlib,random,socket,sys\n\
r=random.Random(29);data=r.randbytes(int(sys.argv[3])*1000*1000)\n\
s=socket.create_connection((sys.argv[1],int(sys.argv[2])));s.sendall(data);s.close()\n\
print(len(data),hashlib.sha256(data).hexdigest(),flush=True)\n";
    let mut r = tb.command(server, "python3").unwrap();
    r.args(["-c", RECV, &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut receiver = Server(r.spawn().unwrap());
    wait_listening(tb, server, port);
    let mut s = tb.command(from, "python3").unwrap();
    s.args([
        "-c",
        SEND,
        &to.to_string(),
        &port.to_string(),
        &mb.to_string(),
    ]);
    let sent = run_ok(s).trim().to_string();
    let got = wait_output(&mut receiver.0).trim().to_string();
    (sent, got)
}

/// Every byte crosses an emulated link intact in both directions, at a
/// rate, with delay and loss. Before the UML kernel's vector driver fix
/// (patch 0003: no frag-list offload), the emulator sent megabytes of
/// stray memory in place of payload here, under checksums nothing checked.
#[test]
fn bytes_cross_an_emulated_link_intact_both_ways() {
    let tb = build(
        "[[link]]\nnumber = 1\na = 'a'\nb = 'b'\nrate_mbit = 100\ndelay_ms = 2\nloss_pct = 0.1\n",
    );
    expected_method(&tb, 1);
    let (a, b) = (
        IpAddr::from(tb.addr4("a", 1).unwrap()),
        IpAddr::from(tb.addr4("b", 1).unwrap()),
    );
    wait_reachable(&tb, "a", b);
    for (from, server, to, port) in [("a", "b", b, 15411u16), ("b", "a", a, 15412)] {
        let (sent, got) = transfer(&tb, from, server, to, port, 40);
        assert_eq!(
            got, sent,
            "{from} -> {server}: received (left) differs from sent (right)"
        );
        eprintln!("{from} -> {server}: {got} intact");
    }
}
