//! The answers uml and lkl both give through the shared emulated socket:
//! the names of a socket (getsockname, getpeername, with good and bad
//! pointers), SO_ERROR before, during and after a connect, connect on a
//! pending or listening socket, connect again after a failed attempt (and
//! the epoll registrations made before it), and connects to a local
//! destination
//! (loopback and the unspecified address, which name this host and must
//! reach its listeners). One program runs on the plain kernel in gw2 for
//! reference, then under the shim on each stack in gw1; every answer must
//! be the kernel's.

use anyhow::{bail, ensure, Result};
use dropshim_testbed::Testbed;
use dropshim_tests::reliability::Lines;
use dropshim_tests::stack::Stack;
use dropshim_tests::*;
use std::time::Duration;

const SHORT: Duration = Duration::from_secs(20);
const RUN: Duration = Duration::from_secs(90);

/// A listener, no shim, on the host loopback (or the address given as its
/// second argument): answers `host` to each connection.
const HOST_SERVER_PY: &str = r##"import socket, sys
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1", int(sys.argv[1])))
l.listen(16)
print("listening", flush=True)
while True:
    c, _ = l.accept()
    c.recv(64)
    c.sendall(b"host\n")
    c.close()
"##;

/// The calls, one JSON object: case -> [outcome, details...]. Ephemeral
/// ports show as "any" (they differ from run to run).
const CALLS_PY: &str = r##"import ctypes, errno, json, select, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
host_port = int(sys.argv[1])
refused_ip, refused_port = sys.argv[2], int(sys.argv[3])
dead_ip = sys.argv[4]
reach_ip, reach_port = sys.argv[5], int(sys.argv[6])
BAD = ctypes.c_void_p(1)
out = {}

def code(e):
    return errno.errorcode.get(e, str(e))

def outcome(r):
    return code(ctypes.get_errno()) if r < 0 else "ok"

def decode(raw, n, port):
    fam = int.from_bytes(raw[0:2], sys.byteorder)
    p = int.from_bytes(raw[2:4], "big")
    if not port and p:
        p = "any"
    if fam == socket.AF_INET:
        return [n, "inet", socket.inet_ntop(socket.AF_INET, raw[4:8]), p]
    if fam == socket.AF_INET6:
        return [n, "inet6", socket.inet_ntop(socket.AF_INET6, raw[8:24]), p]
    return [n, fam]

def name(key, fn, fd, a="ok", l="ok", port=True):
    buf = ctypes.create_string_buffer(128)
    ln = ctypes.c_uint(128)
    ap = {"ok": buf, "null": None, "bad": BAD}[a]
    lp = {"ok": ctypes.byref(ln), "null": None, "bad": BAD}[l]
    ctypes.set_errno(0)
    r = fn(fd, ap, lp)
    got = [outcome(r)]
    if r == 0 and a == "ok" and l == "ok":
        got += decode(buf.raw, ln.value, port)
    out[key] = got

def so_error(key, fd, bad=False):
    v = ctypes.c_int(-1)
    ln = ctypes.c_uint(4)
    ctypes.set_errno(0)
    r = libc.getsockopt(fd, socket.SOL_SOCKET, socket.SO_ERROR,
                        BAD if bad else ctypes.byref(v), ctypes.byref(ln))
    out[key] = [outcome(r)] + ([code(v.value)] if r == 0 else [])

for fam, tag in ((socket.AF_INET, "v4"), (socket.AF_INET6, "v6")):
    s = socket.socket(fam)
    fd = s.fileno()
    name(tag + "_fresh_name", libc.getsockname, fd)
    name(tag + "_fresh_name_null_addr", libc.getsockname, fd, a="null")
    name(tag + "_fresh_name_null_len", libc.getsockname, fd, l="null")
    name(tag + "_fresh_name_bad_addr", libc.getsockname, fd, a="bad")
    name(tag + "_fresh_peer", libc.getpeername, fd)
    name(tag + "_fresh_peer_bad_addr", libc.getpeername, fd, a="bad")
    so_error(tag + "_fresh_so_error", fd)
    s.close()

for key, fam, dest in (("local_v4_unspecified", socket.AF_INET, "0.0.0.0"),
                       ("local_v6_mapped_unspecified", socket.AF_INET6, "::ffff:0.0.0.0"),
                       ("local_v4_loopback", socket.AF_INET, "127.0.0.1")):
    s = socket.socket(fam)
    try:
        s.connect((dest, host_port))
        s.sendall(b"who\n")
        out[key] = s.recv(64).decode().strip()
        name(key + "_peer", libc.getpeername, s.fileno())
        name(key + "_peer_bad_addr", libc.getpeername, s.fileno(), a="bad")
        name(key + "_name", libc.getsockname, s.fileno(), port=False)
    except OSError as e:
        out[key] = code(e.errno)
    s.close()

def refused():
    s = socket.socket()
    s.setblocking(False)
    rc = s.connect_ex((refused_ip, refused_port))
    select.select([], [s], [], 20)
    return s, code(rc)

s, out["refused_connect"] = refused()
so_error("refused_so_error", s.fileno())
so_error("refused_so_error_again", s.fileno())
name("refused_peer", libc.getpeername, s.fileno())
s.close()
s, _ = refused()
so_error("refused_so_error_bad_pointer", s.fileno(), bad=True)
so_error("refused_so_error_after_bad_pointer", s.fileno())
s.close()

# Connecting again after a failed attempt. The kernel's rule: once a
# non-blocking attempt's error has been taken (SO_ERROR), the next connect
# answers ECONNABORTED and the one after starts afresh; an error nobody
# took is answered by the next connect; a blocking connect always tries
# afresh.
def again(s):
    return code(s.connect_ex((refused_ip, refused_port)))

s, _ = refused()
so_error("retry_taken_so_error", s.fileno())
out["retry_taken_1"] = again(s)
out["retry_taken_2"] = again(s)
select.select([], [s], [], 20)
so_error("retry_taken_2_so_error", s.fileno())
out["retry_taken_3"] = again(s)
s.close()
s, _ = refused()
out["retry_untaken_1"] = again(s)
out["retry_untaken_2"] = again(s)
select.select([], [s], [], 20)
so_error("retry_untaken_2_so_error", s.fileno())
s.close()
s = socket.socket()
out["retry_blocking_1"] = code(s.connect_ex((refused_ip, refused_port)))
out["retry_blocking_2"] = code(s.connect_ex((refused_ip, refused_port)))
s.close()
# ... and the socket then carries a connection like any other.
s, _ = refused()
so_error("retry_reach_so_error", s.fileno())
out["retry_reach_1"] = again(s)
s.setblocking(True)
out["retry_reach_2"] = code(s.connect_ex((reach_ip, reach_port)))
s.sendall(b"who\n")
out["retry_reach_answer"] = s.recv(64).decode().strip()
s.close()
# An epoll registration made before the failed attempt is the socket's:
# it still reports the connection a later attempt makes.
s, _ = refused()
ep = select.epoll()
ep.register(s.fileno(), select.EPOLLIN)
so_error("retry_epoll_so_error", s.fileno())
out["retry_epoll_1"] = again(s)
out["retry_epoll_2"] = code(s.connect_ex((reach_ip, reach_port)))
select.select([], [s], [], 20)
s.sendall(b"who\n")
out["retry_epoll_events"] = [e for f, e in ep.poll(10) if f == s.fileno()]
out["retry_epoll_answer"] = s.recv(64).decode().strip()
ep.close()
s.close()

s = socket.socket()
s.setblocking(False)
out["pending_connect"] = code(s.connect_ex((dead_ip, 9)))
so_error("pending_so_error", s.fileno())
name("pending_peer", libc.getpeername, s.fileno())
out["pending_connect_again"] = code(s.connect_ex((dead_ip, 9)))
s.close()

l = socket.socket()
l.bind(("0.0.0.0", 0))
l.listen(4)
name("listening_name", libc.getsockname, l.fileno(), port=False)
name("listening_peer", libc.getpeername, l.fileno())
so_error("listening_so_error", l.fileno())
out["listening_connect"] = code(l.connect_ex((refused_ip, refused_port)))
l.close()
print(json.dumps(out, sort_keys=True))
"##;

/// Runs the calls on the plain kernel and on `stack_name` in gw1 and
/// compares every answer.
fn answers_as_the_kernel(stack_name: &str) -> Result<()> {
    let tb: Testbed = two_gateways()?;
    let stack = Stack::up(stack_name, &tb, "ec")?;
    let dir = tempfile::tempdir()?;
    let server_py = dir.path().join("host_server.py");
    std::fs::write(&server_py, HOST_SERVER_PY)?;
    let calls_py = dir.path().join("calls.py");
    std::fs::write(&calls_py, CALLS_PY)?;

    // A listener on the host loopback of gw1, where the program runs, and
    // of gw2, where the reference runs (gw1's links belong to the stack
    // under test: the plain kernel there reaches nothing).
    let host_port = unique_port().to_string();
    let mut servers = Vec::new();
    for node in ["gw1", "gw2"] {
        let mut server = plain(&tb, node, "python3")?;
        server.arg(&server_py).arg(&host_port);
        let server = Lines::spawn(&mut server, &format!("listener on {node}'s host loopback"))?;
        server.expect("listening", SHORT)?;
        servers.push(server);
    }

    // gw2's link-1 address with nothing listening on the port: refused
    // (for the reference, its own address).
    let refused_ip = tb.addr4("gw2", 1)?.to_string();
    let refused_port = unique_port().to_string();
    // An address on link 1's prefix that nobody holds: a connect to it
    // stays pending, waiting for a neighbour.
    let o = tb.addr4("gw2", 1)?.octets();
    let dead_ip = format!("{}.{}.{}.77", o[0], o[1], o[2]);
    // A listener on gw2's link-1 address, which both runs reach.
    let reach_ip = tb.addr4("gw2", 1)?.to_string();
    let reach_port = unique_port().to_string();
    let mut reach = plain(&tb, "gw2", "python3")?;
    reach.arg(&server_py).arg(&reach_port).arg(&reach_ip);
    let reach = Lines::spawn(&mut reach, "listener on gw2's link-1 address")?;
    reach.expect("listening", SHORT)?;
    servers.push(reach);
    let args = [
        &host_port,
        &refused_ip,
        &refused_port,
        &dead_ip,
        &reach_ip,
        &reach_port,
    ];

    let mut reference = plain(&tb, "gw2", "python3")?;
    reference.arg(&calls_py).args(args);
    let want = program_stdout(&run_bounded(&mut reference, RUN)?, "the plain-kernel run")?;
    for expected in [
        r#""local_v4_unspecified": "host""#,
        r#""local_v6_mapped_unspecified": "host""#,
        r#""v4_fresh_name_bad_addr": ["EFAULT"]"#,
        r#""v4_fresh_name_null_len": ["EFAULT"]"#,
        r#""refused_so_error": ["ok", "ECONNREFUSED"]"#,
        r#""refused_so_error_after_bad_pointer": ["ok", "0"]"#,
        r#""listening_connect": "EISCONN""#,
        r#""pending_connect": "EINPROGRESS""#,
        r#""retry_taken_1": "ECONNABORTED""#,
        r#""retry_untaken_1": "ECONNREFUSED""#,
        r#""retry_blocking_2": "ECONNREFUSED""#,
        r#""retry_reach_answer": "host""#,
        r#""retry_epoll_events": [1]"#,
    ] {
        ensure!(
            want.contains(expected),
            "the plain kernel's reference lacks {expected}: {want}"
        );
    }

    let mut shimmed = stack.command(&tb, "python3")?;
    shimmed.arg(&calls_py).args(args);
    let got = program_stdout(
        &run_bounded(&mut shimmed, RUN)?,
        &format!("the program on {stack_name}"),
    )?;
    if got != want {
        let parse = |s: &str| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(s);
        let (w, g) = (parse(&want)?, parse(&got)?);
        let differ: Vec<String> = w
            .iter()
            .filter(|(k, v)| g.get(*k) != Some(*v))
            .map(|(k, v)| {
                format!(
                    "{k}: kernel {v}, {stack_name} {}",
                    g.get(k).unwrap_or(&serde_json::Value::Null)
                )
            })
            .collect();
        bail!(
            "socket calls on {stack_name} differ from the plain kernel:\n{}",
            differ.join("\n")
        );
    }
    drop(servers);
    Ok(())
}

#[test]
fn emulated_calls_uml_answer_as_the_kernel() -> Result<()> {
    answers_as_the_kernel("uml")
}

#[test]
fn emulated_calls_lkl_answer_as_the_kernel() -> Result<()> {
    answers_as_the_kernel("lkl")
}

#[test]
fn emulated_calls_native_answer_as_the_kernel() -> Result<()> {
    answers_as_the_kernel("native")
}
