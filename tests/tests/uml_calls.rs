//! The uml backend's answers to socket calls with awkward arguments,
//! duplicated sockets, and fork while another thread is inside the shim: what a program sees must
//! be what the plain kernel gives, and the program must never crash or
//! hang inside the shim. gw1's links belong to a UML instance; the
//! reference runs of the same program use the plain kernel in gw2.

use anyhow::{ensure, Context, Result};
use dropshim_testbed::{Options, Spec, Testbed};
use dropshim_tests::uml::{uml_device, UmlDevice};
use dropshim_tests::*;
use std::process::Command;
use std::time::Duration;

const RUN: Duration = Duration::from_secs(60);

fn two_gateways() -> Result<Testbed> {
    Ok(Testbed::up(
        &Spec::builtin("two-gateways")?,
        &Options::default(),
    )?)
}

/// `program` in gw1 under the shim, on `dev`'s uml instance.
fn on_uml(tb: &Testbed, dev: &UmlDevice, program: &str) -> Result<Command> {
    let config = dev.config().display().to_string();
    shimmed(tb, "gw1", program, &[("DROPSHIM_CONFIG", &config)])
}

/// getsockopt into an unaligned buffer, into a bad pointer, with a short
/// length and without a length; setsockopt from a bad and an unaligned
/// pointer; on a fresh socket and on one whose non-blocking connect is
/// pending (an address nobody holds: no neighbour ever answers);
/// getsockname into a bad address or length pointer. One JSON object:
/// call -> [return, errno, length after, bytes written].
const SOCKOPT_PY: &str = r##"import ctypes, errno, json, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
dead = sys.argv[1]
BAD = ctypes.c_void_p(1)
out = {}

def call(name, fn, *args, extra=lambda: []):
    ctypes.set_errno(0)
    r = fn(*args)
    e = ctypes.get_errno() if r < 0 else 0
    out[name] = [r, errno.errorcode.get(e, str(e))] + extra()

def get(name, fd, level, opt, size=4, bad=False, no_len=False):
    raw = ctypes.create_string_buffer(16)
    val = BAD if bad else ctypes.c_void_p(ctypes.addressof(raw) + 1)
    ln = ctypes.c_uint(size)
    call(name, libc.getsockopt, fd, level, opt, val, None if no_len else ctypes.byref(ln),
         extra=lambda: [ln.value, raw.raw[1:1 + min(ln.value, size)].hex()])

def put(name, fd, level, opt, bad=False):
    raw = ctypes.create_string_buffer(16)
    raw[1:5] = (1).to_bytes(4, sys.byteorder)
    val = BAD if bad else ctypes.c_void_p(ctypes.addressof(raw) + 1)
    call(name, libc.setsockopt, fd, level, opt, val, 4)

def name(nm, fd, bad_len=False):
    ln = ctypes.c_uint(16)
    call(nm, libc.getsockname, fd, BAD, BAD if bad_len else ctypes.byref(ln))

fresh = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
assert fresh >= 0, "socket() failed"
get("fresh_type_unaligned", fresh, socket.SOL_SOCKET, socket.SO_TYPE)
get("fresh_domain_bad_pointer", fresh, socket.SOL_SOCKET, socket.SO_DOMAIN, bad=True)
get("fresh_protocol_bad_pointer", fresh, socket.SOL_SOCKET, socket.SO_PROTOCOL, bad=True)
get("fresh_type_short", fresh, socket.SOL_SOCKET, socket.SO_TYPE, size=2)
get("fresh_type_no_length", fresh, socket.SOL_SOCKET, socket.SO_TYPE, no_len=True)
name("fresh_name_bad_pointer", fresh)
name("fresh_name_bad_length", fresh, bad_len=True)

s = socket.socket()
s.setblocking(False)
rc = s.connect_ex((dead, 9))
assert rc == errno.EINPROGRESS, "connect said %s" % errno.errorcode.get(rc, rc)
fd = s.fileno()
get("connecting_error_unaligned", fd, socket.SOL_SOCKET, socket.SO_ERROR)
get("connecting_error_bad_pointer", fd, socket.SOL_SOCKET, socket.SO_ERROR, bad=True)
get("connecting_nodelay_unaligned", fd, socket.IPPROTO_TCP, socket.TCP_NODELAY)
get("connecting_nodelay_bad_pointer", fd, socket.IPPROTO_TCP, socket.TCP_NODELAY, bad=True)
put("connecting_set_keepalive_bad_pointer", fd, socket.SOL_SOCKET, socket.SO_KEEPALIVE, bad=True)
put("connecting_set_nodelay_bad_pointer", fd, socket.IPPROTO_TCP, socket.TCP_NODELAY, bad=True)
put("connecting_set_keepalive_unaligned", fd, socket.SOL_SOCKET, socket.SO_KEEPALIVE)
name("connecting_name_bad_pointer", fd)
print(json.dumps(out, sort_keys=True))
"##;

#[test]
fn uml_sockopt_unaligned_and_bad_pointers_answer_as_the_kernel() -> Result<()> {
    let tb = two_gateways()?;
    let dev = uml_device(&tb, "gw1", &[1, 2], "so")?;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("sockopt.py");
    std::fs::write(&script, SOCKOPT_PY)?;
    // An address on link 1's prefix that nobody holds: both connects
    // stay pending for seconds, waiting for a neighbour.
    let o = tb.addr4("gw2", 1)?.octets();
    let dead = format!("{}.{}.{}.77", o[0], o[1], o[2]);

    let mut reference = plain(&tb, "gw2", "python3")?;
    reference.arg(&script).arg(&dead);
    let want = program_stdout(&run_bounded(&mut reference, RUN)?, "the plain-kernel run")?;
    for efault in [
        r#""fresh_domain_bad_pointer": [-1, "EFAULT""#,
        r#""connecting_error_bad_pointer": [-1, "EFAULT""#,
        r#""connecting_set_keepalive_bad_pointer": [-1, "EFAULT""#,
        r#""fresh_name_bad_pointer": [-1, "EFAULT""#,
        r#""fresh_name_bad_length": [-1, "EFAULT""#,
    ] {
        ensure!(
            want.contains(efault),
            "the plain kernel's reference lacks {efault}: {want}"
        );
    }

    let mut shimmed = on_uml(&tb, &dev, "python3")?;
    shimmed.arg(&script).arg(&dead);
    let got = program_stdout(&run_bounded(&mut shimmed, RUN)?, "the program on uml")?;
    ensure!(
        got == want,
        "socket calls on uml differ from the plain kernel:\nkernel {want}\numl    {got}"
    );
    Ok(())
}

/// A thread calls getsockname on a uml socket without pause (each call
/// takes the shim's socket map lock) while the main thread forks; every
/// child uses the inherited socket and a new one, then exits. A child
/// that does not exit within 5 s is stuck (it inherited the lock held)
/// and is reported and killed.
const FORK_C: &str = r#"
#define _GNU_SOURCE
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int fd;
static atomic_int stop;

static void *hammer(void *arg) {
    (void)arg;
    long n = 0;
    while (!atomic_load(&stop)) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        getsockname(fd, (struct sockaddr *)&ss, &len);
        n++;
    }
    return (void *)n;
}

static int child(void) {
    struct sockaddr_in sin;
    socklen_t len = sizeof sin;
    if (getsockname(fd, (struct sockaddr *)&sin, &len) != 0 || sin.sin_family != AF_INET)
        return 3;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0)
        return 4;
    int one = 1;
    if (setsockopt(s, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one) != 0)
        return 5;
    close(s);
    return 0;
}

int main(int argc, char **argv) {
    int forks = argc > 1 ? atoi(argv[1]) : 200;
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        perror("socket");
        return 2;
    }
    pthread_t t;
    pthread_create(&t, NULL, hammer, NULL);
    int ok = 0, bad = 0;
    for (int i = 0; i < forks; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 2;
        }
        if (pid == 0)
            _exit(child());
        int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
        struct pollfd p = {pfd, POLLIN, 0};
        if (pfd < 0 || poll(&p, 1, 5000) != 1) {
            printf("stuck fork=%d of %d: the child did not exit within 5 s\n", i + 1, forks);
            fflush(stdout);
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            _exit(1);
        }
        close(pfd);
        int status;
        waitpid(pid, &status, 0);
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
            ok++;
        else if (bad++ == 0)
            printf("child %d: status %d\n", i + 1, status);
    }
    atomic_store(&stop, 1);
    void *calls;
    pthread_join(t, &calls);
    printf("forks=%d ok=%d hammer_calls=%ld\n", forks, ok, (long)calls);
    return ok == forks ? 0 : 1;
}
"#;

#[test]
fn uml_fork_while_another_thread_is_in_the_shim_never_hangs_the_child() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("fork.c");
    let bin = dir.path().join("fork");
    std::fs::write(&src, FORK_C)?;
    run_ok(
        Command::new("cc")
            .args(["-O1", "-pthread", "-o"])
            .arg(&bin)
            .arg(&src),
        RUN,
    )
    .context("compiling the fork program (needs a C compiler)")?;
    let tb = two_gateways()?;
    let dev = uml_device(&tb, "gw1", &[1, 2], "fl")?;
    let forks = 200;
    let mut cmd = on_uml(&tb, &dev, &bin.display().to_string())?;
    cmd.arg(forks.to_string());
    let out = run_bounded(&mut cmd, Duration::from_secs(120))?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && text.contains(&format!("forks={forks} ok={forks} ")),
        "fork under uml ({}): {text}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("uml fork: {}", text.trim());
    Ok(())
}

#[test]
fn uml_dup_of_a_socket_answers_as_the_original() -> Result<()> {
    let tb = two_gateways()?;
    let dev = uml_device(&tb, "gw1", &[1, 2], "dp")?;
    let port = unique_port();
    let gw2 = tb.addr4("gw2", 1)?;
    let mut echo = tb.command("gw2", "socat")?;
    echo.args([
        &format!("TCP-LISTEN:{port},bind={gw2},reuseaddr,fork"),
        "EXEC:cat",
    ]);
    let _echo = Background::spawn(&mut echo, "socat echo in gw2")?;
    wait_listening(tb.netns("gw2")?, port, Duration::from_secs(20))?;
    let out = run_bounded(
        on_uml(&tb, &dev, "python3")?.args([
            "-c",
            DUP_PY,
            &tb.addr4("gw1", 1)?.to_string(),
            &gw2.to_string(),
            &port.to_string(),
        ]),
        RUN,
    )?;
    let text = program_stdout(&out, "the dup program on uml")?;
    ensure!(
        text.lines().any(|l| l == "dup ok"),
        "duplicates of uml sockets differ from the original:\n{text}"
    );
    Ok(())
}
