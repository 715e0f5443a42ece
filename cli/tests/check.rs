//! `dropshim check` as a user runs it: exit codes, what goes to stdout and
//! stderr, and that errors point at the right line of the right file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A file under the temp dir, unique per test and process, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(text: &str) -> TempFile {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("dropshim-check-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, text).expect("write temp device file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn check(path: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dropshim"))
        .arg("check")
        .arg("--config")
        .arg(path)
        .output()
        .expect("run dropshim check")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn good_file_exits_0_with_summary() {
    let f = TempFile::new(
        "[device]\nname = \"gw1\"\nbackend = \"native\"\n\
         [[interfaces]]\nname = \"eth1\"\naddresses = [\"198.18.1.1/24\"]\nendpoint = [\"subflow\", \"backup\"]\n\
         [mptcp]\nlimits = { subflows = 2, add_addr_accepted = 1 }\npath_manager = \"kernel\"\n\
         [[policy.rule]]\ndest = \"198.18.0.0/15\"\nports = [\"5201-5210\"]\naction = \"mptcp\"\n",
    );
    let out = check(&f.0);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{stdout}");
    assert!(lines[0].starts_with("device:") && lines[0].contains("gw1"));
    assert!(lines[1].starts_with("backend:") && lines[1].contains("native"));
    assert!(
        lines[2].contains("eth1 198.18.1.1/24 [subflow,backup]"),
        "{stdout}"
    );
    assert!(
        lines[3].contains("subflows 2, add_addr_accepted 1"),
        "{stdout}"
    );
    assert!(lines[4].starts_with("pm:") && lines[4].contains("kernel"));
    assert!(
        lines[5].contains("198.18.0.0/15 port 5201-5210 -> mptcp"),
        "{stdout}"
    );
}

#[test]
fn shipped_examples_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/examples");
    for name in ["native.toml", "uml.toml", "lkl.toml"] {
        let out = check(&dir.join(name));
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out.stderr));
    }
}

#[test]
fn bad_file_exits_1_with_every_error_located() {
    let f = TempFile::new(
        "[device]\nname = \"gw1\"\nbackend = \"native\"\n\
         [[interfaces]]\nname = \"eth1\"\naddresses = [\"198.18.1.1/24\"]\n\
         [[interfaces]]\nname = \"eth1\"\naddresses = [\"198.18.2.1/24\"]\n\
         [mptcp.limits]\nsubflows = 12\nadd_addr_accepted = 0\n",
    );
    let out = check(&f.0);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    let file = f.0.display().to_string();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(lines[0].starts_with(&format!("{file}:8:")), "{stderr}");
    assert!(
        lines[0].contains("interface `eth1` is already described"),
        "{stderr}"
    );
    assert!(lines[1].starts_with(&format!("{file}:11:")), "{stderr}");
    assert!(
        lines[1].contains("expected an integer from 0 to 8"),
        "{stderr}"
    );
    assert_eq!(lines[2], format!("2 error(s) in {file}"));
}

#[test]
fn unknown_key_names_line_and_allowed_keys() {
    let f = TempFile::new("[device]\nname = \"gw1\"\nbackend = \"native\"\nbakend = \"uml\"\n");
    let out = check(&f.0);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let file = f.0.display().to_string();
    assert!(
        stderr.starts_with(&format!("{file}:4:1: unknown key `bakend` in [device]")),
        "{stderr}"
    );
    assert!(
        stderr.contains("expected one of `name`, `backend`"),
        "{stderr}"
    );
}

#[test]
fn missing_file_exits_1_naming_path() {
    let path = std::env::temp_dir().join(format!(
        "dropshim-check-missing-{}.toml",
        std::process::id()
    ));
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let file = path.display().to_string();
    assert!(
        stderr.starts_with(&format!("{file}: cannot read device file")),
        "{stderr}"
    );
    assert!(
        stderr.ends_with(&format!("1 error(s) in {file}\n")),
        "{stderr}"
    );
}

#[test]
fn scheduler_of_dropshims_kernels_on_uml_passes_and_unknown_one_fails_with_its_line() {
    let ok = TempFile::new(
        "[device]\nname = \"gw1\"\nbackend = \"uml\"\n\n[mptcp]\nscheduler = \"costaware\"\n",
    );
    let out = check(&ok.0);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("scheduler costaware"));

    let bad = TempFile::new(
        "[device]\nname = \"gw1\"\nbackend = \"lkl\"\n\n[mptcp]\nscheduler = \"fastest\"\n",
    );
    let out = check(&bad.0);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    let first = stderr.lines().next().unwrap_or("");
    assert!(
        first.starts_with(&format!("{}:6:", bad.0.display())),
        "{stderr}"
    );
    assert!(
        first.contains("scheduler `fastest` is not offered by the lkl backend")
            && first.contains("one of default, roundrobin, blest, costaware, redundant"),
        "{stderr}"
    );
}

#[test]
fn native_scheduler_is_checked_against_the_host_kernel() {
    let host: Vec<String> = std::fs::read_to_string("/proc/sys/net/mptcp/available_schedulers")
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    // costaware is built into dropshim's kernels, not the host's
    if host.iter().any(|s| s == "costaware") {
        return;
    }
    let f = TempFile::new(
        "[device]\nname = \"gw1\"\nbackend = \"native\"\n\n[mptcp]\nscheduler = \"costaware\"\n",
    );
    let out = check(&f.0);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(":6:")
            && stderr.contains("not offered by the native backend")
            && stderr.contains("offered by the uml, lkl backend(s)"),
        "{stderr}"
    );
}
