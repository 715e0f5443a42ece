//! `dropshim run`: start a program with libdropshim.so preloaded.
//!
//! Programs that bypass libc (Go programs, static binaries) never meet
//! the shim. On the native backend `dropshim run` reaches them anyway: it
//! stays the program's parent as the supervisor of a seccomp filter that
//! turns their TCP `socket()` calls into MPTCP ([`seccomp`]), forwards
//! signals to the program and exits with its status. On the uml backend
//! the same supervisor, with another filter, answers such a program's
//! connect/bind/listen/accept through the device's instance ([`guest`]).
//! On the lkl backend, whose kernel only a libc call can enter, such a
//! program is refused before it starts ([`program`]). Otherwise the
//! program replaces this process (exec), so signals, exit status and the
//! terminal are its own. An LD_PRELOAD the user already had is kept,
//! after ours.

mod guest;
mod native;
mod program;
mod seccomp;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use dropshim_conf::{BackendKind, ENV_BACKEND, ENV_CONFIG};
use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

#[derive(ClapArgs)]
pub struct Args {
    /// Device file (default: $DROPSHIM_CONFIG, else the embedded default).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Override the device file's backend: native, uml or lkl.
    #[arg(long, short)]
    pub backend: Option<String>,
    /// Path to libdropshim.so (default: next to this executable).
    #[arg(long)]
    pub library: Option<PathBuf>,
    /// Preload the shim only, without the seccomp supervisor that reaches
    /// programs bypassing libc (Go, static binaries) on native and uml.
    #[arg(long)]
    pub preload_only: bool,
    /// The program and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<OsString>,
}

pub fn main(args: Args) -> Result<ExitCode> {
    let library = library_path(args.library)?;
    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..]);
    cmd.env(
        "LD_PRELOAD",
        preload_value(&library, std::env::var_os("LD_PRELOAD")),
    );
    let mut config_path = std::env::var_os(ENV_CONFIG)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    if let Some(config) = &args.config {
        // Check before running: a broken file would only give the program
        // one stderr line and plain TCP, which is easy to miss.
        dropshim_conf::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
        let config = config
            .canonicalize()
            .with_context(|| format!("resolving {}", config.display()))?;
        cmd.env(ENV_CONFIG, &config);
        config_path = Some(config);
    }
    if let Some(backend) = &args.backend {
        if BackendKind::from_name(backend).is_none() {
            bail!("unknown backend {backend:?}; expected one of native, uml, lkl");
        }
        cmd.env(ENV_BACKEND, backend);
    }
    let backend = args
        .backend
        .clone()
        .or_else(|| std::env::var(ENV_BACKEND).ok())
        .filter(|b| !b.trim().is_empty());
    // The shim says so itself (one line, plain TCP) when the environment's
    // file is broken; only a working file decides the backend here.
    let device = dropshim_conf::resolve(config_path.as_deref(), backend.as_deref()).ok();
    let reach = !args.preload_only;
    if let (Some(d), Some((file, abi))) = (&device, foreign_program(&args.command[0])) {
        let host = std::env::consts::ARCH;
        if d.device.backend != BackendKind::Native {
            bail!(
                "{} is {abi}: dropshim reaches {host} programs only, so the {} backend cannot \
                 carry its connections; run it with --backend native (it keeps plain TCP) or \
                 use an {host} build of it",
                file.display(),
                d.device.backend.as_str(),
            );
        }
        // The shim cannot load into it (the dynamic loader would say
        // "wrong ELF class") and the filter lets its calls through.
        eprintln!(
            "dropshim: {} is {abi}: dropshim reaches {host} programs only; it runs with the \
             host's plain TCP",
            file.display()
        );
        match std::env::var_os("LD_PRELOAD").filter(|p| !p.is_empty()) {
            Some(theirs) => cmd.env("LD_PRELOAD", theirs),
            None => cmd.env_remove("LD_PRELOAD"),
        };
        let err = cmd.exec();
        bail!("cannot run {:?}: {err}", args.command[0]);
    }
    match device {
        Some(d) if d.device.backend == BackendKind::Lkl => {
            refuse_if_unreachable(&args.command[0])?;
            if reach {
                // Only to tell a 32-bit process of the tree, should one
                // start, that it is not served.
                let mode = seccomp::Mode::Watch {
                    backend: BackendKind::Lkl,
                };
                return supervised(cmd, &args.command[0], mode);
            }
        }
        Some(d) if d.device.backend == BackendKind::Uml && reach => {
            // The processes linked with libc are the shim's (the
            // supervisor lets their calls run, and the shim's own
            // connect/bind/listen carry this run's pass past the filter);
            // the filter serves those that bypass libc, the program
            // itself or any it starts.
            let pass = random_pass()?;
            cmd.env(dropshim_abi::pass::ENV_ADDRESS_PASS, format!("{pass:016x}"));
            let mode = seccomp::Mode::Uml {
                device: d.device.name.clone(),
                policy: d.policy.clone(),
                pass,
            };
            return supervised(cmd, &args.command[0], mode);
        }
        Some(d) if d.device.backend == BackendKind::Native && reach => {
            // The supervisor applies the policy at bind(), connect() and
            // listen() of the sockets it opened (for the processes that
            // bypass libc). The shim applies it in the processes linked
            // with libc, and makes those calls with this run's pass,
            // which the filter lets through: they never wait for the
            // supervisor.
            let addresses = native::needs_addresses(&d.policy);
            let serve = if addresses {
                native::can_give_mptcp(&d.policy)
            } else {
                d.policy.initial() == dropshim_conf::Action::Mptcp
            };
            if serve {
                let pass = if addresses { random_pass()? } else { 0 };
                if addresses {
                    cmd.env(dropshim_abi::pass::ENV_ADDRESS_PASS, format!("{pass:016x}"));
                }
                let mode = seccomp::Mode::Native {
                    policy: d.policy.clone(),
                    addresses,
                    pass,
                };
                return supervised(cmd, &args.command[0], mode);
            }
        }
        _ => {}
    }
    let err = cmd.exec();
    bail!("cannot run {:?}: {err}", args.command[0])
}

/// A fresh random pass for this run's address calls (never 0, which
/// means none).
fn random_pass() -> Result<u64> {
    let mut bytes = [0u8; 8];
    loop {
        // SAFETY: getrandom writes at most `bytes.len()` bytes into our buffer.
        let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            bail!("getrandom: {err}");
        }
        let pass = u64::from_ne_bytes(bytes);
        if n as usize == bytes.len() && pass != 0 {
            return Ok(pass);
        }
    }
}

/// The file `command` runs and what it is, when its machine code is not
/// of the ABI dropshim serves (a 32-bit program on a 64-bit host).
fn foreign_program(command: &OsString) -> Option<(PathBuf, &'static str)> {
    let path = std::env::var_os("PATH");
    let file = program::resolve(Path::new(command), path.as_deref())?;
    let abi = program::foreign_abi(&file)?;
    Some((file, abi))
}

/// On the lkl backend the program's sockets enter the library kernel
/// through the shim's libc hooks; a program that makes its system calls
/// itself would silently keep the host's plain TCP. Refuse it instead.
fn refuse_if_unreachable(command: &OsString) -> Result<()> {
    let path = std::env::var_os("PATH");
    let Some(file) = program::resolve(Path::new(command), path.as_deref()) else {
        return Ok(()); // exec says what is wrong
    };
    if let Some(kind) = program::classify(&file).filter(|k| k.bypasses_libc()) {
        bail!(
            "{} is {}: it makes its socket calls without libc, which the lkl backend cannot \
             reach; run it with --backend native or --backend uml",
            file.display(),
            kind.describe(),
        );
    }
    Ok(())
}

/// Runs the program under the seccomp supervisor (native; uml for a
/// program that bypasses libc; otherwise watching for 32-bit processes).
fn supervised(mut cmd: Command, name: &OsString, mode: seccomp::Mode) -> Result<ExitCode> {
    let log = seccomp::Log::from_env();
    let mut pair = [0; 2];
    // SAFETY: socketpair writes two descriptors into `pair`.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            pair.as_mut_ptr(),
        )
    };
    if rc != 0 {
        bail!("socketpair: {}", std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are ours alone.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
    let setup = seccomp::ChildSetup::new(theirs.as_raw_fd(), &mode);
    seccomp::block_signals().context("blocking signals")?;
    // SAFETY: `apply` makes only async-signal-safe system calls on memory
    // prepared before the fork.
    unsafe { cmd.pre_exec(move || setup.apply()) };
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(err) => {
            seccomp::unblock_signals();
            bail!("cannot run {name:?}: {err}");
        }
    };
    drop(theirs);
    let pid = child.id() as libc::pid_t;
    let sup = match seccomp::receive_listener(ours.as_raw_fd()) {
        Ok(seccomp::Listener::Ready(fd)) => {
            Some(seccomp::Supervisor::new(fd, log, mode).context("starting the supervisor")?)
        }
        Ok(seccomp::Listener::Unsupported(err)) => {
            log.warn(&format!(
                "this kernel cannot pass a program's socket() calls to dropshim (seccomp user \
                 notification: {err}); programs that bypass libc keep plain TCP"
            ));
            None
        }
        Err(err) => {
            log.warn(&format!(
                "no seccomp listener from the program ({err}); programs that bypass libc keep plain TCP"
            ));
            None
        }
    };
    drop(ours);
    let ended = seccomp::supervise(pid, sup, log).context("supervising the program")?;
    Ok(seccomp::exit_like(ended))
}

/// The shim to preload: `--library`, else the default location; checked to
/// exist so a missing build is reported here, not by the dynamic loader.
pub fn library_path(given: Option<PathBuf>) -> Result<PathBuf> {
    let library = match given {
        Some(path) => path,
        None => default_library()?,
    };
    if !library.is_file() {
        bail!(
            "{} does not exist; build it with `cargo build --release` or pass --library PATH",
            library.display()
        );
    }
    library
        .canonicalize()
        .with_context(|| format!("resolving {}", library.display()))
}

/// libdropshim.so sits next to the dropshim executable in a cargo build
/// (target/release/), in lib/ beside bin/ in an install from source, and
/// in the multiarch library folder in the Debian package
/// (/usr/lib/x86_64-linux-gnu/).
fn default_library() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the dropshim executable")?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let candidates = [
        dir.join("libdropshim.so"),
        dir.join("../lib/libdropshim.so"),
        dir.join(format!(
            "../lib/{}-linux-gnu/libdropshim.so",
            std::env::consts::ARCH
        )),
    ];
    Ok(candidates
        .iter()
        .find(|p| p.is_file())
        .unwrap_or(&candidates[0])
        .clone())
}

/// Ours first so the shim's hooks win, then whatever the user preloaded.
fn preload_value(library: &Path, existing: Option<OsString>) -> OsString {
    let mut value = library.as_os_str().to_owned();
    if let Some(existing) = existing.filter(|e| !e.is_empty()) {
        if existing != value {
            value.push(":");
            value.push(existing);
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_users_preload_after_ours() {
        let v = preload_value(
            Path::new("/x/libdropshim.so"),
            Some("/y/libother.so".into()),
        );
        assert_eq!(v, OsString::from("/x/libdropshim.so:/y/libother.so"));
        let v = preload_value(Path::new("/x/libdropshim.so"), None);
        assert_eq!(v, OsString::from("/x/libdropshim.so"));
    }
}
