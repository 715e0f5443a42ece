//! What this process was asked for: backend and policy, read once from
//! the environment and the device file at the first TCP socket.
//!
//! A missing or broken configuration never breaks the program: the shim
//! says so in one line and leaves sockets as plain TCP.

use crate::log::{self, Level};
use dropshim_conf::{BackendKind, DeviceConfig, Policy, ENV_BACKEND, ENV_CONFIG, ENV_LOG};
use once_cell::sync::OnceCell;
use std::path::PathBuf;

/// How the shim treats new TCP sockets in this process.
pub enum Mode {
    /// Host-kernel MPTCP under this policy.
    Native(Policy),
    /// A User Mode Linux instance carries the sockets.
    Uml(Box<DeviceConfig>),
    /// A Linux Kernel Library booted inside this process (at the first TCP
    /// socket) carries the sockets.
    Lkl(Box<DeviceConfig>),
    /// Configuration could not be read: plain TCP, untouched.
    Passthrough,
}

static MODE: OnceCell<Mode> = OnceCell::new();

pub fn mode() -> &'static Mode {
    MODE.get_or_init(load)
}

/// Sets the log level from `DROPSHIM_LOG`; called at load time so even the
/// first message honours it.
pub fn init_logging() {
    if let Ok(value) = std::env::var(ENV_LOG) {
        match Level::parse(&value) {
            Some(level) => log::set_level(level),
            None => {
                log::warning!("{ENV_LOG}={value:?} is not one of error|warn|info|debug; using warn")
            }
        }
    }
}

fn load() -> Mode {
    let path = std::env::var_os(ENV_CONFIG)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    let backend = std::env::var(ENV_BACKEND).ok().filter(|b| !b.is_empty());
    match dropshim_conf::resolve(path.as_deref(), backend.as_deref()) {
        Ok(config) => {
            log::debug!(
                "device {:?}, backend {}, from {}",
                config.device.name,
                config.device.backend.as_str(),
                path.as_ref()
                    .map_or("the embedded default".to_string(), |p| p
                        .display()
                        .to_string())
            );
            match config.device.backend {
                BackendKind::Native => Mode::Native(config.policy),
                BackendKind::Uml => Mode::Uml(Box::new(config)),
                BackendKind::Lkl => Mode::Lkl(Box::new(config)),
            }
        }
        Err(err) => {
            // One line, then plain TCP: the program keeps working.
            let first = err.to_string();
            let first = first.lines().next().unwrap_or("invalid configuration");
            log::error!(
                "{first}; sockets stay plain TCP (run `dropshim check --config FILE` for details)"
            );
            Mode::Passthrough
        }
    }
}
