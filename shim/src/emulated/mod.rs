//! The emulated TCP socket shared by the uml and lkl backends.
//!
//! On both, the program's descriptor is a host file that stands in for a
//! socket living in another kernel (the uml instance, the library
//! kernel): a placeholder until connect or listen, a bridge or a
//! socketpair end after. This module owns what that takes whatever the
//! kernel behind it: what connect() answers at once, the connect gate and
//! the blocking connect's wait ([`connect`]), replacing the file under a
//! descriptor and its twins ([`files`]), replaying the program's epoll
//! registrations on the new file ([`epoll`]), the socket options that
//! follow from the socket being TCP and SO_ERROR ([`options`]), the
//! names getsockname and getpeername give ([`names`]), and handing a
//! socket whose destination is this host back to the host kernel
//! ([`local`]).
//! Each backend keeps only what is its own: asking the uml supervisor
//! for a bridge, or the library kernel's sockets and relays.

pub(crate) mod connect;
pub(crate) mod epoll;
pub(crate) mod files;
pub(crate) mod local;
pub(crate) mod names;
pub(crate) mod options;
pub(crate) mod table;
