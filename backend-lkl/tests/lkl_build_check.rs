//! `build-lkl.sh` asked with LKL_NO_BUILD=1 (as the shim and the bench
//! ask) answers from its cache and never starts a build: with an empty
//! cache it fails at once, saying what to run.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn lkl_build_script_never_builds_when_told_not_to() {
    let cache = std::env::temp_dir().join(format!("dropshim-lkl-empty-{}", std::process::id()));
    std::fs::create_dir_all(&cache).expect("temp dir");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/build-lkl.sh");
    let start = Instant::now();
    let out = Command::new("sh")
        .arg(script)
        .env("LKL_NO_BUILD", "1")
        .env("DROPSHIM_LKL_CACHE", &cache)
        .output()
        .expect("run build-lkl.sh");
    let took = start.elapsed();
    let leftovers: Vec<_> = std::fs::read_dir(&cache)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let _ = std::fs::remove_dir_all(&cache);
    assert_eq!(
        out.status.code(),
        Some(3),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not built yet") && stderr.contains("build-lkl.sh"),
        "{stderr}"
    );
    assert!(
        took < Duration::from_secs(60),
        "took {took:?}: it must not build"
    );
    assert!(
        leftovers
            .iter()
            .all(|n| !n.to_string_lossy().starts_with("out-")),
        "{leftovers:?}"
    );
}
