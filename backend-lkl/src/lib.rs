//! The lkl backend: a Linux Kernel Library linked into the program.
//!
//! Not built yet: no LKL package exists in any registry reachable here and
//! its architecture port is not in mainline Linux, so this backend needs
//! an `arch/lkl` port of dropshim's own (GPL-2.0, to live in
//! `backend-lkl/kernel/` under that licence). Until then the shim reports
//! `backend lkl is not available` and the program gets a clear error.

/// Why the lkl backend cannot be used in this build.
pub const UNAVAILABLE: &str = "the lkl backend is not built yet (no Linux Kernel Library in this build); use backend = \"native\" or \"uml\"";
