//! The native backend: MPTCP from the host kernel (`IPPROTO_MPTCP`).
//!
//! Owns: turning a TCP socket into an MPTCP one and back (same descriptor
//! number, options carried over), reading what MPTCP really did on a
//! socket (MPTCP_INFO, subflows). Preparing a device (endpoints, limits,
//! path manager, scheduler) and listing connections is the netlink
//! layer's work (`dropshim-netlink`).
//!
//! Must not touch: the data path. Once a socket speaks the right protocol
//! the program talks to the kernel directly; nothing here runs per read or
//! write. It also must not call libc's socket functions by their exported
//! names: inside `libdropshim.so` those names are the shim's own hooks,
//! so [`sys`] issues raw system calls instead.

#![warn(missing_docs)]

pub mod socket;
pub mod sys;
