//! The program's epoll registrations of an emulated socket whose file is
//! not final yet. Replacing the file under a descriptor (the gate, the
//! bridge or data end, the listener's token end, a host socket for a
//! local destination) drops its registrations in the kernel, so they are
//! recorded when made and made again on the new file.

use crate::log;
use libc::c_int;

/// One registration: `fd` in the epoll set `epfd`, with the program's
/// events and data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Registration {
    fd: c_int,
    epfd: c_int,
    events: u32,
    data: u64,
}

/// The registrations recorded for one socket (under any of its
/// descriptors).
#[derive(Debug, Clone, Default)]
pub(crate) struct Epolls(Vec<Registration>);

impl Epolls {
    /// Makes the program's epoll_ctl and, if it succeeded, records what
    /// it leaves registered for `fd` in `epfd` (nothing after a delete).
    ///
    /// # Safety
    ///
    /// `ev` is the program's argument to epoll_ctl(), unchanged.
    pub(crate) unsafe fn ctl(
        this: Option<&mut Epolls>,
        epfd: c_int,
        op: c_int,
        fd: c_int,
        ev: *mut libc::epoll_event,
    ) -> c_int {
        // SAFETY: the program's own arguments (# Safety above); the kernel
        // checks the pointer, and the raw syscall skips the hook.
        let r = unsafe {
            libc::syscall(
                libc::SYS_epoll_ctl,
                epfd as libc::c_long,
                op as libc::c_long,
                fd as libc::c_long,
                ev,
            )
        } as c_int;
        if r != 0 {
            return r;
        }
        if let Some(this) = this {
            this.0.retain(|r| !(r.fd == fd && r.epfd == epfd));
            if op != libc::EPOLL_CTL_DEL && !ev.is_null() {
                // SAFETY: the kernel just read this epoll_event successfully.
                let e = unsafe { std::ptr::read_unaligned(ev) };
                this.0.push(Registration {
                    fd,
                    epfd,
                    events: e.events,
                    data: e.u64,
                });
            }
        }
        r
    }

    /// Makes every recorded registration again on the file now under its
    /// descriptor (`EPOLL_CTL_ADD`), or takes it off the file still there
    /// (`EPOLL_CTL_DEL`).
    pub(crate) fn replay(&self, op: c_int) {
        for r in &self.0 {
            let mut ev = libc::epoll_event {
                events: r.events,
                u64: r.data,
            };
            // SAFETY: `ev` is a live epoll_event; the raw syscall skips the hook.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_epoll_ctl,
                    r.epfd as libc::c_long,
                    op as libc::c_long,
                    r.fd as libc::c_long,
                    &mut ev as *mut libc::epoll_event,
                )
            };
            if ret < 0 && op == libc::EPOLL_CTL_ADD {
                log::debug!(
                    "re-adding fd {} to epoll {}: {}",
                    r.fd,
                    r.epfd,
                    std::io::Error::last_os_error()
                );
            }
        }
    }

    /// The registrations of descriptor `fd` alone.
    pub(crate) fn of_fd(&self, fd: c_int) -> Epolls {
        Epolls(self.0.iter().filter(|r| r.fd == fd).copied().collect())
    }

    /// Forgets the registrations of descriptor `fd` (it is going away).
    pub(crate) fn forget_fd(&mut self, fd: c_int) {
        self.0.retain(|r| r.fd != fd);
    }

    /// The file is final: nothing needs recording any more.
    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An epoll set and a socketpair, closed on drop.
    struct Fds(Vec<c_int>);

    impl Drop for Fds {
        fn drop(&mut self) {
            for &fd in &self.0 {
                crate::emulated::files::close_fd(fd);
            }
        }
    }

    fn registered(epfd: c_int, fd: c_int) -> bool {
        // Modifying succeeds only on a registered descriptor (ENOENT
        // otherwise).
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 0,
        };
        // SAFETY: `ev` is a live epoll_event; both descriptors are ours.
        unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_MOD, fd, &mut ev) == 0 }
    }

    #[test]
    fn registrations_follow_a_replaced_file_and_deletes_are_forgotten() {
        // SAFETY: epoll_create1 takes an integer.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(epfd >= 0);
        let mut fds = Fds(vec![epfd]);
        let [a, b] = crate::emulated::files::pair().expect("a socketpair");
        let [c, d] = crate::emulated::files::pair().expect("a second socketpair");
        fds.0.extend([a, b, c, d]);

        let mut rec = Epolls::default();
        let mut ev = libc::epoll_event {
            events: libc::EPOLLOUT as u32,
            u64: 7,
        };
        // SAFETY: `ev` is a live epoll_event.
        let r = unsafe { Epolls::ctl(Some(&mut rec), epfd, libc::EPOLL_CTL_ADD, a, &mut ev) };
        assert_eq!(r, 0);
        assert_eq!(rec.0.len(), 1);

        // A failed call records nothing: `b` is not in the set.
        // SAFETY: as above.
        let r = unsafe { Epolls::ctl(Some(&mut rec), epfd, libc::EPOLL_CTL_MOD, b, &mut ev) };
        assert_eq!(r, -1);
        assert_eq!(rec.0.len(), 1);

        // Replace the file under `a`: the kernel drops the registration
        // with the old file; replaying puts it on the new one.
        // SAFETY: `a` is this test's own descriptor.
        unsafe { crate::emulated::files::put_file(c, a) }.expect("dup3");
        assert!(!registered(epfd, a));
        rec.replay(libc::EPOLL_CTL_ADD);
        assert!(registered(epfd, a));

        // A delete is made and forgotten.
        // SAFETY: a delete passes no event.
        let r = unsafe {
            Epolls::ctl(
                Some(&mut rec),
                epfd,
                libc::EPOLL_CTL_DEL,
                a,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(r, 0);
        assert!(rec.0.is_empty());
        assert!(!registered(epfd, a));
    }
}
