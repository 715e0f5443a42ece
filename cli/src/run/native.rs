//! The native backend's policy for programs that bypass libc.
//!
//! Owns: what happens at a trapped `bind()`, `connect()` or `listen()`
//! of a socket the supervisor opened for the program's `socket()` call,
//! as the shim does for a program linked with libc
//! (`shim/src/native.rs`): the device file's policy decides by address
//! (loopback stays plain TCP unless `loopback = true`, then the rules,
//! then the default; a listener is matched by its bound address, and
//! `listeners = false` keeps servers on TCP). When the socket's protocol
//! is not the one wanted, it is switched in place: a socket of the other
//! protocol with the options the program set and the address it bound
//! (`dropshim_backend_native::socket::switch_protocol`) is installed at
//! the program's descriptor number (`SECCOMP_ADDFD_FLAG_SETFD`). The
//! call itself then continues into the kernel, so nothing waits on the
//! supervisor while it connects. After `connect()` or `listen()` the
//! protocol is fixed and the socket is no longer looked at.

use super::guest::{inode_of, Target};
use super::seccomp::{ignore_gone, Call, Supervisor};
use dropshim_abi::IPPROTO_MPTCP;
use dropshim_backend_native::socket::{self as nsock, Proto, SockOpt};
use dropshim_conf::{Action, Policy};
use std::io;
use std::os::fd::AsRawFd;

const CONTINUE: u32 = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32;

/// Whether the native filter must trap `bind()`, `connect()` and
/// `listen()` for `policy`: unless every TCP socket gets MPTCP whatever
/// its address, loopback included.
pub fn needs_addresses(policy: &Policy) -> bool {
    !(policy.default == Action::Mptcp
        && policy.loopback
        && policy.listeners
        && policy.rules.iter().all(|r| r.action == Action::Mptcp))
}

/// Whether `policy` can give any socket MPTCP (else the supervisor has
/// nothing to do on native).
pub fn can_give_mptcp(policy: &Policy) -> bool {
    policy.default == Action::Mptcp || policy.rules.iter().any(|r| r.action == Action::Mptcp)
}

impl Supervisor {
    /// Answers a trapped bind(), connect() or listen() on native: the
    /// socket is settled to the policy's protocol first, then the call
    /// runs in the kernel.
    pub(super) fn answer_native_call(&mut self, call: &Call, policy: &Policy) -> io::Result<()> {
        if let Err(e) = self.settle_native(call, policy) {
            // The socket stays as it was; the program must not notice.
            self.log.debug(|| {
                format!(
                    "pid {}: fd {}: protocol kept ({e})",
                    call.pid, call.args[0] as i32
                )
            });
        }
        self.respond(call.id, 0, 0, CONTINUE).or_else(ignore_gone)
    }

    fn settle_native(&mut self, call: &Call, policy: &Policy) -> io::Result<()> {
        if self.guest.unsettled.is_empty() {
            // Nothing to settle (a program linked with libc: the shim
            // opens its sockets): no need to look at the descriptor.
            return Ok(());
        }
        let nr = i64::from(call.nr);
        let fd = call.args[0] as i32;
        let Some(target) = Target::open(call.pid, fd) else {
            return Ok(()); // the kernel reports EBADF & co.
        };
        let inode = target.inode();
        if !self.guest.unsettled.contains(&inode) {
            return Ok(()); // not ours, or fixed already
        }
        let (want, addr) = if nr == libc::SYS_connect {
            let Some(dest) = self.read_sockaddr(call, call.args[1], call.args[2])? else {
                return Ok(());
            };
            self.guest.unsettled.remove(&inode);
            (policy.decide(&dest), Some(dest))
        } else if nr == libc::SYS_bind {
            let Some(local) = self.read_sockaddr(call, call.args[1], call.args[2])? else {
                return Ok(());
            };
            (policy.decide_bind(&local), Some(local))
        } else if nr == libc::SYS_listen {
            self.guest.unsettled.remove(&inode);
            if policy.listeners {
                return Ok(());
            }
            (Action::Tcp, None)
        } else {
            return Ok(());
        };
        let (to, number) = match want {
            Action::Mptcp => (Proto::Mptcp, IPPROTO_MPTCP),
            Action::Tcp => (Proto::Tcp, libc::IPPROTO_TCP),
        };
        let have = target
            .int_opt(libc::SOL_SOCKET, libc::SO_PROTOCOL)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOTSOCK))?;
        if have == number || (to == Proto::Mptcp && self.mptcp_missing) {
            return Ok(());
        }
        let domain = target
            .int_opt(libc::SOL_SOCKET, libc::SO_DOMAIN)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOTSOCK))?;
        let opts: Vec<SockOpt> = self
            .guest
            .set_options(&target, domain, have)
            .into_iter()
            .map(|o| SockOpt {
                level: o.level,
                name: o.name,
                value: o.value,
            })
            .collect();
        {
            // The replacement belongs in the program's namespace.
            let _netns = self.enter_netns(call)?;
            // Our copy of the program's descriptor becomes the new socket.
            nsock::switch_protocol(target.copy.as_raw_fd(), to, &opts)?;
        }
        self.install_at(call, &target, fd, &target.copy)?;
        if nr == libc::SYS_bind {
            self.guest.unsettled.remove(&inode);
            self.guest
                .unsettled
                .insert(inode_of(target.copy.as_raw_fd())?);
        }
        self.log.debug(|| {
            let at = addr.map(|a| format!(" {a}")).unwrap_or_default();
            format!(
                "pid {}: fd {fd}{at}: switched to {to:?} by policy",
                call.pid
            )
        });
        Ok(())
    }
}
