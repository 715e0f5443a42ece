//! The emulated TCP socket shared by the uml and lkl backends.
//!
//! On both, the program's descriptor is a host file that stands in for a
//! socket living in another kernel (the uml instance, the library
//! kernel): a placeholder until connect or listen, a bridge or a
//! socketpair end after. This module owns what that takes whatever the
//! kernel behind it: the connect gate and the blocking connect's wait
//! ([`connect`]).
//! Each backend keeps only what is its own: asking the uml supervisor
//! for a bridge, or the library kernel's sockets and relays.

pub(crate) mod connect;
