//! The shim inside awkward processes: sockets opened by a constructor
//! before main, many threads creating and closing sockets at once, and a
//! forked child that keeps using the shim. A small C program checks each
//! socket's real protocol with a raw getsockopt(SO_PROTOCOL) system call,
//! which the shim cannot intercept (libc's getsockopt would be told TCP).

use anyhow::{ensure, Context, Result};
use dropshim_tests::*;
use std::process::Command;
use std::time::Duration;

const PROGRAM: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <unistd.h>

static int real_protocol(int fd) {
    int proto = -1; socklen_t len = sizeof proto;
    if (syscall(SYS_getsockopt, fd, SOL_SOCKET, SO_PROTOCOL, &proto, &len) < 0) return -1;
    return proto;
}

static int early_proto = -1;
__attribute__((constructor)) static void before_main(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    early_proto = real_protocol(fd);
    close(fd);
}

static void *worker(void *arg) {
    long bad = 0;
    for (int i = 0; i < 2000; i++) {
        int fd = socket(i % 2 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || real_protocol(fd) != 262) bad++;
        /* What the program sees must still be TCP. */
        int p = 0; socklen_t l = sizeof p;
        getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &p, &l);
        if (p != IPPROTO_TCP) bad++;
        close(fd);
    }
    return (void *)bad;
}

int main(void) {
    printf("early=%d\n", early_proto);
    pthread_t t[8]; long bad = 0;
    for (int i = 0; i < 8; i++) pthread_create(&t[i], 0, worker, 0);
    for (int i = 0; i < 8; i++) { void *r; pthread_join(t[i], &r); bad += (long)r; }
    printf("thread_bad=%ld\n", bad);
    int udp = socket(AF_INET, SOCK_DGRAM, 0);
    printf("udp=%d\n", real_protocol(udp));
    pid_t pid = fork();
    if (pid == 0) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        printf("child=%d\n", real_protocol(fd));
        fflush(stdout);
        _exit(0);
    }
    int status; waitpid(pid, &status, 0);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    printf("parent_after_fork=%d\n", real_protocol(fd));
    return 0;
}
"#;

fn build_program(dir: &std::path::Path) -> Result<std::path::PathBuf> {
    let src = dir.join("prog.c");
    let bin = dir.join("prog");
    std::fs::write(&src, PROGRAM)?;
    run_ok(
        Command::new("cc")
            .arg("-O1")
            .arg("-pthread")
            .arg("-o")
            .arg(&bin)
            .arg(&src),
        Duration::from_secs(60),
    )
    .context("compiling the test program (needs a C compiler)")?;
    Ok(bin)
}

#[test]
fn shim_upgrades_sockets_before_main_in_threads_and_after_fork() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let bin = build_program(dir.path())?;
    let mut cmd = Command::new(&bin);
    cmd.env("LD_PRELOAD", shim_path())
        .env_remove("DROPSHIM_CONFIG")
        .env_remove("DROPSHIM_BACKEND");
    let out = run_ok(&mut cmd, Duration::from_secs(60))?;
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "early=262",
        "thread_bad=0",
        "udp=17",
        "child=262",
        "parent_after_fork=262",
    ] {
        ensure!(
            text.lines().any(|l| l == want),
            "expected {want:?} in:\n{text}"
        );
    }
    ensure!(
        out.stderr.is_empty(),
        "the shim printed on a clean run: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Without the shim the same program sees plain TCP: the checks can fail.
    let out = run_ok(&mut Command::new(&bin), Duration::from_secs(60))?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.lines().any(|l| l == "early=6"),
        "control run should be TCP:\n{text}"
    );
    Ok(())
}
