//! The project's UML kernel keeps a guest task's CPU state whole (needs
//! gcc and a host CPU with AVX2). The kernel serves a task's page fault
//! through a signal to the task's stub, and the host resets the vector
//! registers on every signal it delivers; what the kernel saved before
//! must come back whole, or glibc's AVX memcpy in the guest (the agent's,
//! python's) copies wrong bytes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// A folder removed with everything in it when the test ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn host_has_avx2() -> bool {
    fs::read_to_string("/proc/cpuinfo")
        .map(|c| {
            c.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "avx2"))
        })
        .unwrap_or(false)
}

fn compile(source: &Path, out: &Path) {
    let status = Command::new("gcc")
        .args(["-O2", "-mavx2", "-static", "-o"])
        .arg(out)
        .arg(source)
        .status()
        .expect("gcc (apt-get install build-essential)");
    assert!(status.success(), "gcc failed on {}", source.display());
}

#[test]
fn guest_avx_state_survives_page_faults_and_memcpy_is_exact() {
    if !host_has_avx2() {
        eprintln!("skipped: this host CPU has no AVX2");
        return;
    }
    let kernel = dropshim_backend_uml::host::build_kernel().expect("UML kernel");
    let dir = std::env::temp_dir().join(format!("dropshim-cpustate-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("scratch folder");
    let scratch = Scratch(dir);
    let init = scratch.0.join("avx_across_faults");
    compile(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/avx_across_faults.c"),
        &init,
    );
    let console = scratch.0.join("console.log");
    let mut child = Command::new(&kernel)
        .args([
            "umid=cpustate".to_string(),
            format!("uml_dir={}", scratch.0.display()),
            "rootfstype=hostfs".into(),
            "rootflags=/".into(),
            "rw".into(),
            "mem=128M".into(),
            format!("init={}", init.display()),
            "con=null".into(),
            "con0=null,fd:1".into(),
        ])
        .stdin(Stdio::null())
        .stdout(fs::File::create(&console).expect("console file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the UML kernel");
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        if child
            .try_wait()
            .expect("waiting for the UML kernel")
            .is_some()
        {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the guest did not power off within {BOOT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = fs::read_to_string(&console).unwrap_or_default();
    let report: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("lost in") || l.contains("wrong in") || l.contains("RESULT"))
        .collect();
    let report = report.join("\n");
    eprintln!("{report}");
    assert!(
        out.contains("RESULT good"),
        "the guest task's CPU state was not kept:\n{}",
        if report.is_empty() { &out } else { &report }
    );
}
