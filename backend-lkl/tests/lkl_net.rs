//! Step 4: the library kernel on two raw-socket interfaces talks TCP and
//! MPTCP to an ordinary Linux peer in a network namespace; the bytes
//! arrive intact and the peer sees the MPTCP connection use two subflows,
//! one per interface. Needs root. One boot per process: one test.

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dropshim_backend_lkl::{BootOptions, Fd, Lkl};
use sha2::{Digest, Sha256};

use dropshim_abi::{IPPROTO_MPTCP, MPTCP_INFO, SOL_MPTCP};

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run command");
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Peer namespace with two veth pairs; removed (with the veths) on drop.
struct Testbed {
    ns: String,
    host_if: [String; 2],
    server: Option<Child>,
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        remove_setup(&self.ns, &self.host_if);
    }
}

/// Removes a run's namespace and host interfaces (whatever of them exists).
fn remove_setup(ns: &str, host_if: &[String; 2]) {
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
    for h in host_if {
        let _ = Command::new("ip")
            .args(["link", "del", h])
            .stderr(Stdio::null())
            .status();
    }
}

/// The names one run uses, from its process id.
fn setup_names(pid: u32) -> (String, [String; 2]) {
    (
        format!("lklnet{pid}"),
        [format!("lk{pid}a"), format!("lk{pid}b")],
    )
}

/// Removes what earlier runs left behind when they were killed before
/// their `Drop` ran (a hung library kernel killed by the test runner's
/// timeout): a namespace named after a process that no longer exists.
fn remove_stale_setups() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("lklnet")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let (ns, host_if) = setup_names(pid);
            remove_setup(&ns, &host_if);
        }
    }
}

const SERVER: &str = r#"
import hashlib, socket, struct, sys
ports = [int(p) for p in sys.argv[1:]]
socks = []
for i, port in enumerate(ports):
    proto = 262 if i == 1 else 0
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(4)
    socks.append(s)
print("ready", flush=True)
for s in socks:
    c, peer = s.accept()
    h = hashlib.sha256()
    total = 0
    while True:
        b = c.recv(1 << 20)
        if not b:
            break
        h.update(b)
        total += len(b)
    subflows = -1
    if s.proto == 262:
        info = c.getsockopt(284, 1, 64)
        subflows = info[0]
    c.sendall(("%s %d %d\n" % (h.hexdigest(), total, subflows)).encode())
    c.close()
    print("done", peer[0], total, subflows, flush=True)
"#;

fn chunk(i: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|j| ((i * len as u64 + j).wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

/// Sends at least `min_bytes`; for MPTCP keeps going (up to 20 s) until
/// `min_bytes` more have been sent after the client saw its second
/// subflow, so the joined subflow carries data whenever the join came.
/// Returns (sha256 sent, bytes sent, peer's reply, seconds).
fn transfer(lkl: &Lkl, proto: i32, port: u16, min_bytes: u64) -> (String, u64, String, f64) {
    let fd: Fd = lkl
        .socket(libc::AF_INET, libc::SOCK_STREAM, proto)
        .expect("socket");
    // Bounded waits: 30 s receive timeout inside the library kernel.
    let tv = libc::timeval {
        tv_sec: 30,
        tv_usec: 0,
    };
    // SAFETY: fd is a socket of this kernel and tv lives across the call.
    let r = unsafe {
        lkl.syscall(
            dropshim_backend_lkl::nr::SETSOCKOPT,
            [
                fd.0 as i64,
                libc::SOL_SOCKET as i64,
                libc::SO_RCVTIMEO as i64,
                &tv as *const _ as i64,
                16,
                0,
            ],
        )
    };
    assert_eq!(r, 0);
    lkl.connect(fd, format!("198.18.1.2:{port}").parse().expect("addr"))
        .expect("connect to peer");
    let start = Instant::now();
    let deadline = start + Duration::from_secs(20);
    let mut hash = Sha256::new();
    let mut sent = 0u64;
    let mut i = 0u64;
    let mut joined_at = None;
    loop {
        let c = chunk(i, 256 * 1024);
        i += 1;
        lkl.send_all(fd, &c).expect("send");
        hash.update(&c);
        sent += c.len() as u64;
        if sent < min_bytes {
            continue;
        }
        if proto != IPPROTO_MPTCP || Instant::now() > deadline {
            break;
        }
        let mut info = [0u8; 64];
        lkl.getsockopt(fd, SOL_MPTCP, MPTCP_INFO, &mut info)
            .expect("MPTCP_INFO");
        if info[0] >= 1 {
            let at = *joined_at.get_or_insert(sent);
            if sent >= at + min_bytes {
                break;
            }
        }
    }
    lkl.shutdown(fd, libc::SHUT_WR).expect("shutdown");
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = lkl.recv(fd, &mut buf, 0).expect("recv reply");
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
    }
    let secs = start.elapsed().as_secs_f64();
    lkl.close(fd).expect("close");
    (
        format!("{:x}", hash.finalize()),
        sent,
        String::from_utf8_lossy(&reply).to_string(),
        secs,
    )
}

fn parse_reply(r: &str) -> (String, u64, i32) {
    let mut it = r.split_whitespace();
    let digest = it.next().unwrap_or("").to_string();
    let total = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let subflows = it.next().and_then(|s| s.parse().ok()).unwrap_or(-2);
    (digest, total, subflows)
}

#[test]
fn lkl_net_tcp_and_mptcp_two_interfaces() {
    remove_stale_setups();
    let pid = std::process::id();
    let (ns, host_if) = setup_names(pid);
    let mut tb = Testbed {
        ns: ns.clone(),
        host_if,
        server: None,
    };
    let peer_if = [format!("lp{pid}a"), format!("lp{pid}b")];
    sh(&["ip", "netns", "add", &ns]);
    for (i, (h, p)) in tb.host_if.iter().zip(peer_if.iter()).enumerate() {
        sh(&[
            "ip", "link", "add", h, "type", "veth", "peer", "name", p, "netns", &ns,
        ]);
        // The host end carries no address: only the library kernel uses it.
        sh(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{h}.disable_ipv6=1"),
        ]);
        sh(&["ip", "link", "set", h, "up"]);
        sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("198.18.{}.2/24", i + 1),
            "dev",
            p,
        ]);
        sh(&["ip", "-n", &ns, "link", "set", p, "up"]);
    }
    sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
    sh(&[
        "ip",
        "netns",
        "exec",
        &ns,
        "sysctl",
        "-qw",
        "net.mptcp.enabled=1",
    ]);
    sh(&[
        "ip",
        "-n",
        &ns,
        "mptcp",
        "limits",
        "set",
        "subflows",
        "2",
        "add_addr_accepted",
        "2",
    ]);
    sh(&[
        "ip",
        "-n",
        &ns,
        "mptcp",
        "endpoint",
        "add",
        "198.18.2.2",
        "dev",
        &peer_if[1],
        "signal",
    ]);

    let (tcp_port, mptcp_port) = (20000 + (pid % 20000) as u16, 40000 + (pid % 20000) as u16);
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "python3",
            "-c",
            SERVER,
            &tcp_port.to_string(),
            &mptcp_port.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start peer server");
    let stdout = child.stdout.take().expect("server stdout");
    tb.server = Some(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let ready = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("peer server did not start");
    assert_eq!(ready, "ready");

    let lkl = Lkl::boot(&BootOptions::default()).expect("boot");
    let a: IpAddr = "198.18.1.1".parse().expect("ip");
    let b: IpAddr = "198.18.2.1".parse().expect("ip");
    lkl.add_interface(&tb.host_if[0], &[(a, 24)], &[])
        .expect("interface a");
    lkl.add_interface(&tb.host_if[1], &[(b, 24)], &[])
        .expect("interface b");
    lkl.mptcp_set_limits(2, 2).expect("mptcp limits");

    let (want, sent, reply, secs) = transfer(&lkl, 0, tcp_port, 16 << 20);
    let (digest, total, _) = parse_reply(&reply);
    assert_eq!(total, sent, "TCP byte count at the peer");
    assert_eq!(digest, want, "TCP bytes differ at the peer");
    eprintln!(
        "lkl TCP: {} MiB in {:.2} s = {:.0} Mbit/s",
        sent >> 20,
        secs,
        sent as f64 * 8.0 / secs / 1e6
    );

    let before = (
        lkl.frame_counts(0).unwrap_or((0, 0)),
        lkl.frame_counts(1).unwrap_or((0, 0)),
    );
    let (want, sent, reply, secs) = transfer(&lkl, IPPROTO_MPTCP, mptcp_port, 16 << 20);
    let after = (
        lkl.frame_counts(0).unwrap_or((0, 0)),
        lkl.frame_counts(1).unwrap_or((0, 0)),
    );
    let (digest, total, subflows) = parse_reply(&reply);
    assert_eq!(total, sent, "MPTCP byte count at the peer");
    assert_eq!(digest, want, "MPTCP bytes differ at the peer");
    eprintln!(
        "lkl MPTCP: {} MiB in {:.2} s = {:.0} Mbit/s; peer subflows {subflows}; frames tx a {} b {}",
        sent >> 20,
        secs,
        sent as f64 * 8.0 / secs / 1e6,
        after.0 .1 - before.0 .1,
        after.1 .1 - before.1 .1
    );
    // The peer's MPTCP_INFO counts one extra subflow, and both interfaces
    // carried a real share of the data.
    assert!(subflows >= 1, "peer saw {subflows} additional subflows");
    assert!(
        after.0 .1 - before.0 .1 > 100,
        "interface a carried too little"
    );
    assert!(
        after.1 .1 - before.1 .1 > 100,
        "interface b carried too little"
    );

    let mut done = Vec::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(5)) {
        done.push(l);
        if done.len() == 2 {
            break;
        }
    }
    assert!(
        done.iter().all(|l| l.starts_with("done 198.18.1.1")),
        "peer log {done:?}"
    );
    lkl.halt().expect("halt");
}
