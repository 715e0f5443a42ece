//! `dropshim up/down/status` for the native backend, each test in network
//! namespaces of its own (root needed): the endpoints, limits and sysctls
//! the kernel reports afterwards are the proof, read back with `ip`.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name no other test uses. Not `ds-...`: that prefix belongs to
/// testbeds, and `dropshim testbed down --all` removes such a namespace
/// without a state file as an orphan, with what runs inside.
fn unique(tag: &str) -> String {
    format!(
        "dsdev-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    out
}

fn must(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh network namespace, deleted on drop (even when the test fails).
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Self {
        let name = unique(tag);
        must(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, prog]);
        c
    }

    fn ip(&self, args: &[&str]) -> String {
        must(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    fn dropshim(&self, args: &[&str]) -> Output {
        run(self.cmd(env!("CARGO_BIN_EXE_dropshim")).args(args))
    }

    /// Endpoints as `ip -j mptcp endpoint show` lists them.
    fn endpoints(&self) -> Vec<Value> {
        let text = self.ip(&["-j", "mptcp", "endpoint", "show"]);
        serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("bad JSON from ip: {e}: {text}"))
    }

    /// (subflows, add_addr_accepted) from `ip mptcp limits show`.
    fn limits(&self) -> (u32, u32) {
        let text = self.ip(&["mptcp", "limits", "show"]);
        let words: Vec<&str> = text.split_whitespace().collect();
        let get = |key: &str| -> u32 {
            let i = words
                .iter()
                .position(|w| *w == key)
                .unwrap_or_else(|| panic!("no {key} in {text:?}"));
            words[i + 1].parse().unwrap()
        };
        (get("subflows"), get("add_addr_accepted"))
    }

    fn sysctl(&self, name: &str) -> String {
        must(self.cmd("cat").arg(format!("/proc/sys/net/mptcp/{name}")))
            .trim()
            .to_string()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A veth pair inside one namespace, each end with an address and up.
fn veth_with_address(ns: &Netns, a: &str, b: &str, addr: &str) {
    ns.ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
    ns.ip(&["addr", "add", addr, "dev", a]);
    ns.ip(&["link", "set", a, "up"]);
    ns.ip(&["link", "set", b, "up"]);
}

/// A veth pair joining two namespaces, with an address on each end.
fn link(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ]);
    a.ip(&["addr", "add", a_addr, "dev", a_if]);
    b.ip(&["addr", "add", b_addr, "dev", b_if]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// A temporary directory holding device files, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let p = std::env::temp_dir().join(unique("device-test"));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `dropshim down` on drop, so a failing test leaves no state file
/// behind (down without a state file is a no-op).
struct DownOnDrop<'a>(&'a Netns, PathBuf);

impl Drop for DownOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .dropshim(&["down", "--config", &self.1.to_string_lossy()]);
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({:?}):\n{}\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

fn find<'a>(eps: &'a [Value], addr: &str) -> Option<&'a Value> {
    eps.iter().find(|e| e["address"] == addr)
}

fn device_file(dir: &TempDir, name: &str, body: &str) -> PathBuf {
    dir.file(
        &format!("{name}.toml"),
        &format!("[device]\nname = \"{name}\"\nbackend = \"native\"\n\n{body}"),
    )
}

#[test]
fn up_is_idempotent_and_down_removes_only_what_up_added() {
    let ns = Netns::new("updown");
    veth_with_address(&ns, "dsa0", "dsb0", "198.18.0.1/24");
    veth_with_address(&ns, "dsa1", "dsb1", "198.18.1.1/24");
    ns.ip(&["addr", "add", "2001:2:0:1::1/64", "dev", "dsa1", "nodad"]);
    // A user's own endpoint, there before up: it must survive down.
    ns.ip(&["mptcp", "endpoint", "add", "198.18.3.3", "signal"]);
    let before_limits = ns.limits();
    assert_eq!(ns.sysctl("path_manager"), "kernel");

    let dir = TempDir::new();
    let name = unique("gw");
    let cfg = device_file(
        &dir,
        &name,
        r#"
[[interfaces]]
name = "dsa0"
addresses = ["198.18.0.1/24"]
endpoint = ["subflow", "fullmesh"]

[[interfaces]]
name = "dsa1"
addresses = ["198.18.1.1/24", "2001:2:0:1::1/64"]
endpoint = ["signal", "backup"]

[mptcp]
limits = { subflows = 5, add_addr_accepted = 3 }
path_manager = "userspace"
scheduler = "default"
"#,
    );
    let _down = DownOnDrop(&ns, cfg.clone());
    let cfg = cfg.to_str().unwrap();

    let up = ns.dropshim(&["up", "--config", cfg]);
    assert_ok(&up, "first up");
    let eps = ns.endpoints();
    assert_eq!(eps.len(), 4, "user endpoint + three of ours: {eps:?}");
    let a = find(&eps, "198.18.0.1").expect("endpoint for dsa0");
    assert_eq!(a["subflow"], true);
    assert_eq!(a["fullmesh"], true);
    assert!(
        a.get("signal").is_none() && a.get("backup").is_none(),
        "{a}"
    );
    assert_eq!(a["dev"], "dsa0");
    let b = find(&eps, "198.18.1.1").expect("endpoint for dsa1");
    assert_eq!(b["signal"], true);
    assert_eq!(b["backup"], true);
    assert!(b.get("subflow").is_none(), "{b}");
    assert_eq!(b["dev"], "dsa1");
    let b6 = find(&eps, "2001:2:0:1::1").expect("IPv6 endpoint for dsa1");
    assert_eq!(
        (
            b6["signal"].clone(),
            b6["backup"].clone(),
            b6["dev"].clone()
        ),
        (true.into(), true.into(), "dsa1".into())
    );
    assert_eq!(ns.limits(), (5, 3));
    assert_eq!(ns.sysctl("path_manager"), "userspace");

    // Second up: nothing added twice, nothing changed.
    let again = ns.dropshim(&["up", "--config", cfg]);
    assert_ok(&again, "second up");
    assert!(
        stdout(&again).contains("nothing changed"),
        "{}",
        stdout(&again)
    );
    assert_eq!(ns.endpoints(), eps);
    assert_eq!(ns.limits(), (5, 3));

    let st = ns.dropshim(&["status", "--json", "--config", cfg]);
    assert_ok(&st, "status");
    let doc: Value = serde_json::from_str(&stdout(&st)).unwrap();
    assert_eq!(doc["device"]["up"], true);
    assert_eq!(
        doc["device"]["added_endpoints"].as_array().unwrap().len(),
        3
    );
    assert_eq!(doc["mptcp"]["limits"]["subflows"], 5);
    assert_eq!(doc["mptcp"]["path_manager"], "userspace");

    let down = ns.dropshim(&["down", "--config", cfg]);
    assert_ok(&down, "down");
    let left = ns.endpoints();
    assert_eq!(left.len(), 1, "only the user's endpoint stays: {left:?}");
    assert_eq!(left[0]["address"], "198.18.3.3");
    assert_eq!(left[0]["signal"], true);
    assert_eq!(ns.limits(), before_limits);
    assert_eq!(ns.sysctl("path_manager"), "kernel");

    // Down again: nothing recorded, a clear message, success.
    let twice = ns.dropshim(&["down", "--config", cfg]);
    assert_ok(&twice, "down without up");
    assert!(stdout(&twice).contains("not up"), "{}", stdout(&twice));
    assert_eq!(ns.endpoints().len(), 1);
}

#[test]
fn identical_endpoint_made_by_hand_is_reused_and_kept() {
    let ns = Netns::new("handmade");
    veth_with_address(&ns, "dsa0", "dsb0", "198.18.4.1/24");
    ns.ip(&[
        "mptcp",
        "endpoint",
        "add",
        "198.18.4.1",
        "dev",
        "dsa0",
        "subflow",
    ]);
    let dir = TempDir::new();
    let name = unique("gw");
    let cfg = device_file(
        &dir,
        &name,
        "[[interfaces]]\nname = \"dsa0\"\naddresses = [\"198.18.4.1/24\"]\nendpoint = [\"subflow\"]\n",
    );
    let _down = DownOnDrop(&ns, cfg.clone());
    let cfg = cfg.to_str().unwrap();
    let before = ns.endpoints();
    assert_ok(&ns.dropshim(&["up", "-c", cfg]), "up");
    assert_eq!(
        ns.endpoints(),
        before,
        "the existing identical endpoint is not duplicated"
    );
    assert_ok(&ns.dropshim(&["down", "-c", cfg]), "down");
    assert_eq!(
        ns.endpoints(),
        before,
        "an endpoint up did not add survives down"
    );
}

#[test]
fn address_missing_from_interface_is_refused_before_any_change() {
    let ns = Netns::new("noaddr");
    veth_with_address(&ns, "dsa0", "dsb0", "198.18.6.1/24");
    veth_with_address(&ns, "dsa1", "dsb1", "198.18.7.1/24");
    let before_limits = ns.limits();
    let dir = TempDir::new();
    let name = unique("gw");
    let cfg = device_file(
        &dir,
        &name,
        r#"
[[interfaces]]
name = "dsa0"
addresses = ["198.18.6.1/24"]
endpoint = ["subflow"]

[[interfaces]]
name = "dsa1"
addresses = ["198.18.9.9/24"]
endpoint = ["signal"]

[mptcp]
limits = { subflows = 4, add_addr_accepted = 4 }
"#,
    );
    let out = ns.dropshim(&["up", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("198.18.9.9"), "{err}");
    assert!(err.contains("interface \"dsa1\""), "{err}");
    assert!(err.contains("ip addr add 198.18.9.9/24 dev dsa1"), "{err}");
    assert!(
        ns.endpoints().is_empty(),
        "nothing added: {:?}",
        ns.endpoints()
    );
    assert_eq!(ns.limits(), before_limits, "limits untouched");
    let down = ns.dropshim(&["down", "--config", cfg.to_str().unwrap()]);
    assert_ok(&down, "down after a refused up");
    assert!(
        stdout(&down).contains("not up"),
        "no state was recorded: {}",
        stdout(&down)
    );
}

#[test]
fn unavailable_scheduler_lists_available_ones() {
    let ns = Netns::new("sched");
    let dir = TempDir::new();
    let name = unique("gw");
    let cfg = device_file(&dir, &name, "[mptcp]\nscheduler = \"redundant\"\n");
    let out = ns.dropshim(&["up", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let available = ns
        .sysctl("available_schedulers")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(", ");
    assert!(err.contains("\"redundant\" is not available"), "{err}");
    assert!(err.contains(&format!("available: {available}")), "{err}");
}

#[test]
fn lkl_backend_up_says_it_is_not_available() {
    let dir = TempDir::new();
    let name = unique("gw");
    let cfg = device_file(&dir, &name, "");
    let out = run(Command::new(env!("CARGO_BIN_EXE_dropshim")).args([
        "up",
        "--config",
        cfg.to_str().unwrap(),
        "--backend",
        "lkl",
    ]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("backend lkl: `dropshim up` is provided by the lkl backend"),
        "{}",
        stderr(&out)
    );
}

/// A child process killed on drop, so a failing test leaves none behind.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads the child's first stdout line, waiting at most `limit`.
fn first_line(child: &mut Child, limit: Duration) -> String {
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(limit).unwrap_or_default()
}

const SERVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
while c.recv(1 << 16):
    pass
"#;

const CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
s.connect((sys.argv[1], int(sys.argv[2])))
buf = b"x" * (1 << 16)
while True:
    s.sendall(buf)
"#;

/// What the kernels of both ends list, for a failure message: every TCP
/// socket with its MPTCP subflow details (`ss -tinoe`, which reads the
/// same sock_diag dump as `dropshim status`), the MPTCP sockets
/// (`ss -Mi`) and the MPTCP counters, so a missing subflow can be told
/// from one the status code failed to show.
fn sockets_seen(server: &Netns, client: &Netns) -> String {
    let mut out = String::new();
    for (side, ns) in [("server", server), ("client", client)] {
        for args in [
            &["ss", "-tinoe"][..],
            &["ss", "-Mi"],
            &["nstat", "-asz", "MPTcp*"],
        ] {
            let o = run(ns.cmd(args[0]).args(&args[1..]));
            out += &format!(
                "--- {side}: {}\n{}{}",
                args.join(" "),
                stdout(&o),
                stderr(&o)
            );
        }
    }
    out
}

#[test]
fn status_shows_a_connection_and_its_joined_subflow() {
    let server = Netns::new("srv");
    let client = Netns::new("cli");
    link(
        &client,
        "dsc0",
        "198.18.20.1/24",
        &server,
        "dss0",
        "198.18.20.2/24",
    );
    link(
        &client,
        "dsc1",
        "198.18.21.1/24",
        &server,
        "dss1",
        "198.18.21.2/24",
    );

    // The client opens a second subflow from its second link (a `subflow`
    // endpoint bound to dsc1); both sides' limits allow it. Both prepared
    // by `dropshim up`.
    let dir = TempDir::new();
    let srv_cfg = device_file(
        &dir,
        &unique("srv"),
        "[mptcp]\nlimits = { subflows = 2, add_addr_accepted = 0 }\n",
    );
    let cli_cfg = device_file(
        &dir,
        &unique("cli"),
        r#"
[[interfaces]]
name = "dsc1"
addresses = ["198.18.21.1/24"]
endpoint = ["subflow"]

[mptcp]
limits = { subflows = 2, add_addr_accepted = 0 }
"#,
    );
    let _srv_down = DownOnDrop(&server, srv_cfg.clone());
    let _cli_down = DownOnDrop(&client, cli_cfg.clone());
    assert_ok(
        &server.dropshim(&["up", "-c", srv_cfg.to_str().unwrap()]),
        "server up",
    );
    assert_ok(
        &client.dropshim(&["up", "-c", cli_cfg.to_str().unwrap()]),
        "client up",
    );

    let port = (20000 + std::process::id() % 20000).to_string();
    let mut srv = Reap(
        server
            .cmd("python3")
            .args(["-c", SERVER, "198.18.20.2", &port])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python3 server"),
    );
    assert_eq!(
        first_line(&mut srv.0, Duration::from_secs(10)).trim(),
        "ready",
        "server did not start"
    );
    let _cli = Reap(
        client
            .cmd("python3")
            .args(["-c", CLIENT, "198.18.20.2", &port])
            .spawn()
            .expect("start python3 client"),
    );

    let deadline = Instant::now() + Duration::from_secs(15);
    let conn = loop {
        let out = server.dropshim(&["status", "--json"]);
        assert_ok(&out, "status --json");
        let doc: Value = serde_json::from_str(&stdout(&out)).expect("status --json is JSON");
        let found = doc["connections"].as_array().and_then(|cs| {
            cs.iter()
                .find(|c| {
                    c["local"] == format!("198.18.20.2:{port}")
                        && c["subflows"].as_array().is_some_and(|s| s.len() >= 2)
                        // MPTCP_INFO's count can lag the subflow list by an
                        // instant: wait until both agree.
                        && c["subflow_count"].as_u64().is_some_and(|n| n >= 2)
                        && c["bytes_received"].as_u64().is_some_and(|b| b > 0)
                })
                .cloned()
        });
        if let Some(c) = found {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "no connection with 2 subflows in time; last status: {doc:#}\n{}",
            sockets_seen(&server, &client)
        );
        // A pause between polls: each poll is two processes, and spinning
        // made thousands a second, cycling this machine's 32768 pids
        // under the other tests' feet.
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(conn["state"], "ESTAB");
    assert!(conn["subflow_count"].as_u64().unwrap() >= 2, "{conn:#}");
    assert_eq!(conn["fallback"], false);
    assert!(conn["token"].as_u64().unwrap() != 0);
    let subflows = conn["subflows"].as_array().unwrap();
    assert!(
        subflows
            .iter()
            .any(|s| s["join"] == true && s["remote"].as_str().unwrap().starts_with("198.18.21.1:")),
        "a joined subflow from the client's second link: {conn:#}"
    );
    assert!(subflows
        .iter()
        .any(|s| s["join"] == false && s["remote"].as_str().unwrap().starts_with("198.18.20.1:")));

    // The readable form says the same.
    let human = server.dropshim(&["status"]);
    assert_ok(&human, "status");
    let text = stdout(&human);
    assert!(
        text.contains(&format!("198.18.20.2:{port} -> 198.18.20.1:")),
        "{text}"
    );
    assert!(text.contains("join"), "{text}");

    assert_ok(
        &server.dropshim(&["down", "-c", srv_cfg.to_str().unwrap()]),
        "server down",
    );
    assert_ok(
        &client.dropshim(&["down", "-c", cli_cfg.to_str().unwrap()]),
        "client down",
    );
}
