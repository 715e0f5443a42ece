//! The uml backend's answers to socket calls with awkward arguments:
//! what a program sees must be what the plain kernel gives, and the
//! program must never crash inside the shim. gw1's links belong to a UML
//! instance; the reference runs of the same program use the plain kernel
//! in gw2.

use anyhow::{bail, ensure, Result};
use dropshim_testbed::{Options, Spec, Testbed};
use dropshim_tests::uml::UmlDevice;
use dropshim_tests::*;
use std::process::{Command, Output};
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

/// What a run says: stdout, or why there is nothing to compare (a crash
/// inside the shim shows up here as the signal that killed the program).
fn report(out: &Output, what: &str) -> Result<String> {
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = out.status.signal() {
        bail!(
            "{what} was killed by signal {sig}; stdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    ensure!(
        out.status.success(),
        "{what} failed ({}): stdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// getsockopt into an unaligned buffer, into a bad pointer, with a short
/// length and without a length; setsockopt from a bad and an unaligned
/// pointer; on a fresh socket and on one whose non-blocking connect is
/// pending (an address nobody holds: no neighbour ever answers). One JSON
/// object: call -> [return, errno, length after, bytes written].
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

fresh = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
assert fresh >= 0, "socket() failed"
get("fresh_type_unaligned", fresh, socket.SOL_SOCKET, socket.SO_TYPE)
get("fresh_domain_bad_pointer", fresh, socket.SOL_SOCKET, socket.SO_DOMAIN, bad=True)
get("fresh_protocol_bad_pointer", fresh, socket.SOL_SOCKET, socket.SO_PROTOCOL, bad=True)
get("fresh_type_short", fresh, socket.SOL_SOCKET, socket.SO_TYPE, size=2)
get("fresh_type_no_length", fresh, socket.SOL_SOCKET, socket.SO_TYPE, no_len=True)

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
print(json.dumps(out, sort_keys=True))
"##;

#[test]
fn uml_sockopt_unaligned_and_bad_pointers_answer_as_the_kernel() -> Result<()> {
    let tb = two_gateways()?;
    let dev = UmlDevice::up(&tb, "gw1", &[1, 2], "so")?;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("sockopt.py");
    std::fs::write(&script, SOCKOPT_PY)?;
    // An address on link 1's prefix that nobody holds: both connects
    // stay pending for seconds, waiting for a neighbour.
    let o = tb.addr4("gw2", 1)?.octets();
    let dead = format!("{}.{}.{}.77", o[0], o[1], o[2]);

    let mut reference = plain(&tb, "gw2", "python3")?;
    reference.arg(&script).arg(&dead);
    let want = report(&run_bounded(&mut reference, RUN)?, "the plain-kernel run")?;
    for efault in [
        r#""fresh_domain_bad_pointer": [-1, "EFAULT""#,
        r#""connecting_error_bad_pointer": [-1, "EFAULT""#,
        r#""connecting_set_keepalive_bad_pointer": [-1, "EFAULT""#,
    ] {
        ensure!(
            want.contains(efault),
            "the plain kernel's reference lacks {efault}: {want}"
        );
    }

    let mut shimmed = on_uml(&tb, &dev, "python3")?;
    shimmed.arg(&script).arg(&dead);
    let got = report(&run_bounded(&mut shimmed, RUN)?, "the program on uml")?;
    ensure!(
        got == want,
        "getsockopt/setsockopt on uml differ from the plain kernel:\nkernel {want}\numl    {got}"
    );
    Ok(())
}
