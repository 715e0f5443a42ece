//! The lkl backend's socket calls where the program's descriptor (one end
//! of a Unix socket pair) must still look like the TCP socket it stands
//! for: duplicates of a socket, and a connection the peer resets. gw1's
//! links belong to the library kernel of each program; the peer in gw2 is
//! a native MPTCP program.

use anyhow::{ensure, Result};
use dropshim_testbed::{Options, Spec, Testbed};
use dropshim_tests::lkl::*;
use dropshim_tests::reliability::Lines;
use dropshim_tests::*;
use std::time::Duration;

const SHORT: Duration = Duration::from_secs(20);
const RUN: Duration = Duration::from_secs(60);

fn two_gateways() -> Result<Testbed> {
    Ok(Testbed::up(
        &Spec::builtin("two-gateways")?,
        &Options::default(),
    )?)
}

#[test]
fn lkl_dup_of_a_socket_answers_as_the_original() -> Result<()> {
    let tb = two_gateways()?;
    let node = lkl_node(&tb, &["subflow"])?;
    let port = unique_port();
    let gw2 = tb.addr4("gw2", 1)?;
    let mut echo = native_peer(&tb, "socat")?;
    echo.args([
        &format!("TCP-LISTEN:{port},bind={gw2},reuseaddr,fork"),
        "EXEC:cat",
    ]);
    let _echo = Background::spawn(&mut echo, "socat echo in gw2")?;
    wait_listening(tb.netns("gw2")?, port, SHORT)?;
    let out = run_ok(
        on_lkl(&tb, &node, "python3")?.args([
            "-c",
            DUP_PY,
            &tb.addr4("gw1", 1)?.to_string(),
            &gw2.to_string(),
            &port.to_string(),
        ]),
        RUN,
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.lines().any(|l| l == "dup ok"),
        "duplicates of lkl sockets differ from the original:\n{text}"
    );
    Ok(())
}

/// A native server in gw2, for two connections in turn: sends 64 KiB,
/// waits until the client says it has them all, then resets the
/// connection (SO_LINGER 0 close).
const RESET_SERVER_PY: &str = r##"import socket, struct, sys
ip, port = sys.argv[1], int(sys.argv[2])
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((ip, port))
l.listen(1)
print("listening", flush=True)
for _ in range(2):
    c, _ = l.accept()
    c.sendall(bytes(range(256)) * 256)
    got = b""
    while len(got) < 2:
        b = c.recv(2 - len(got))
        if not b:
            break
        got += b
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    print("reset after %r" % got, flush=True)
"##;

/// The client, twice: reads the 64 KiB, says "ok", then reads until the
/// stream ends and says how (`end=EOF` or `end=ERRNO`). The second time
/// it shuts down its writing after the "ok" first (`half_` lines).
const RESET_CLIENT_PY: &str = r##"import errno, socket, sys
for tag in ("", "half_"):
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
    want = bytes(range(256)) * 256
    got = b""
    while len(got) < len(want):
        b = s.recv(65536)
        if not b:
            break
        got += b
    print("%sintact=%d" % (tag, got == want), flush=True)
    s.sendall(b"ok")
    if tag:
        s.shutdown(socket.SHUT_WR)
    try:
        while True:
            if not s.recv(65536):
                print("%send=EOF" % tag, flush=True)
                break
    except OSError as e:
        print("%send=%s" % (tag, errno.errorcode.get(e.errno, e.errno)), flush=True)
    s.close()
"##;

#[test]
fn lkl_connection_reset_by_the_peer_reaches_the_program_as_econnreset() -> Result<()> {
    let tb = two_gateways()?;
    let node = lkl_node(&tb, &["subflow"])?;
    let port = unique_port();
    let gw2 = tb.addr4("gw2", 1)?.to_string();
    let mut server = native_peer(&tb, "python3")?;
    server.args(["-c", RESET_SERVER_PY, &gw2, &port.to_string()]);
    let server = Lines::spawn(&mut server, "resetting server in gw2")?;
    server.expect("listening", SHORT)?;
    let out = run_ok(
        on_lkl(&tb, &node, "python3")?.args(["-c", RESET_CLIENT_PY, &gw2, &port.to_string()]),
        RUN,
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let said = server.expect("reset", SHORT)?;
    ensure!(
        text.lines().any(|l| l == "intact=1"),
        "the bytes before the reset did not arrive intact: {text}"
    );
    ensure!(
        text.lines().any(|l| l == "end=ECONNRESET"),
        "the program on lkl must read ECONNRESET after the peer's reset, as from a kernel socket; \
         it said: {text} (server: {said})"
    );
    // Its writing shut down, the program cannot carry the reset through
    // its socket pair (README, known limits): end of stream, never a hang.
    let said = server.expect("reset", SHORT)?;
    ensure!(
        text.lines().any(|l| l == "half_intact=1")
            && text
                .lines()
                .any(|l| l == "half_end=EOF" || l == "half_end=ECONNRESET"),
        "after shutdown(SHUT_WR) the reset must end the stream: {text} (server: {said})"
    );
    eprintln!("lkl reset by the peer: {}", text.trim().replace('\n', "; "));
    Ok(())
}
