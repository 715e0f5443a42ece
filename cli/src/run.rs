//! `dropshim run`: start a program with libdropshim.so preloaded.
//!
//! The program replaces this process (exec), so signals, exit status and
//! the terminal are the program's own. An LD_PRELOAD the user already had
//! is kept, after ours.

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use dropshim_conf::{BackendKind, ENV_BACKEND, ENV_CONFIG};
use std::ffi::OsString;
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
    if let Some(config) = &args.config {
        // Check before running: a broken file would only give the program
        // one stderr line and plain TCP, which is easy to miss.
        dropshim_conf::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
        let config = config
            .canonicalize()
            .with_context(|| format!("resolving {}", config.display()))?;
        cmd.env(ENV_CONFIG, config);
    }
    if let Some(backend) = &args.backend {
        if BackendKind::from_name(backend).is_none() {
            bail!("unknown backend {backend:?}; expected one of native, uml, lkl");
        }
        cmd.env(ENV_BACKEND, backend);
    }
    let err = cmd.exec();
    bail!("cannot run {:?}: {err}", args.command[0])
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
