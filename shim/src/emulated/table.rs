//! The emulated sockets of a process, by descriptor. A socket may have
//! several descriptors (dup, dup2, dup3, F_DUPFD): they all name one
//! entry, and when the file under the socket changes (connect, listen, a
//! local destination) it changes under every one of them, as on a kernel
//! socket. The socket goes with the last of its descriptors.
//!
//! Each backend keeps its table behind a [`crate::forklock::ForkMutex`]
//! that its fork handlers hold across fork().

use super::epoll::Epolls;
use libc::c_int;
use std::collections::HashMap;

/// What the table needs of a backend's socket: its recorded epoll
/// registrations, which name descriptors.
pub(crate) trait Emulated {
    /// The socket's recorded epoll registrations.
    fn epolls(&mut self) -> &mut Epolls;
}

/// Descriptor -> socket, with several descriptors per socket.
pub(crate) struct Table<S> {
    /// Descriptor -> socket key.
    fds: HashMap<c_int, u64>,
    socks: HashMap<u64, S>,
    next: u64,
}

impl<S: Emulated> Table<S> {
    pub(crate) fn new() -> Table<S> {
        Table {
            fds: HashMap::new(),
            socks: HashMap::new(),
            next: 1,
        }
    }

    /// The key of the socket `fd` names.
    pub(crate) fn key(&self, fd: c_int) -> Option<u64> {
        self.fds.get(&fd).copied()
    }

    pub(crate) fn get(&self, fd: c_int) -> Option<&S> {
        self.socks.get(&self.key(fd)?)
    }

    pub(crate) fn get_mut(&mut self, fd: c_int) -> Option<&mut S> {
        let key = self.key(fd)?;
        self.socks.get_mut(&key)
    }

    /// The socket with key `key`.
    pub(crate) fn by_key(&mut self, key: u64) -> Option<&mut S> {
        self.socks.get_mut(&key)
    }

    /// A new socket under `fd`.
    pub(crate) fn insert(&mut self, fd: c_int, sock: S) {
        self.remove(fd);
        let key = self.next;
        self.next += 1;
        self.fds.insert(fd, key);
        self.socks.insert(key, sock);
    }

    /// `new` is a second descriptor of `old`'s socket.
    pub(crate) fn dup(&mut self, old: c_int, new: c_int) -> bool {
        let Some(key) = self.key(old) else {
            return false;
        };
        self.remove(new);
        self.fds.insert(new, key);
        true
    }

    /// Forgets `fd`; the socket goes with its last descriptor, and is
    /// returned then.
    pub(crate) fn remove(&mut self, fd: c_int) -> Option<S> {
        let key = self.fds.remove(&fd)?;
        if let Some(s) = self.socks.get_mut(&key) {
            s.epolls().forget_fd(fd);
        }
        if self.fds.values().any(|&k| k == key) {
            return None;
        }
        self.socks.remove(&key)
    }

    /// Every descriptor of socket `key`, in order.
    pub(crate) fn fds_of(&self, key: u64) -> Vec<c_int> {
        let mut fds: Vec<c_int> = self
            .fds
            .iter()
            .filter(|&(_, &k)| k == key)
            .map(|(&fd, _)| fd)
            .collect();
        fds.sort_unstable();
        fds
    }

    /// Every descriptor of the socket `fd` names (just `fd` if it names
    /// none).
    pub(crate) fn fds_with(&self, fd: c_int) -> Vec<c_int> {
        self.key(fd).map_or_else(|| vec![fd], |k| self.fds_of(k))
    }

    /// Every socket, with its key.
    pub(crate) fn sockets(&self) -> impl Iterator<Item = (u64, &S)> {
        self.socks.iter().map(|(&k, s)| (k, s))
    }

    /// Every descriptor, with the socket it names.
    pub(crate) fn descriptors(&self) -> impl Iterator<Item = (c_int, &S)> {
        self.fds
            .iter()
            .filter_map(|(&fd, k)| self.socks.get(k).map(|s| (fd, s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct S {
        name: &'static str,
        epolls: Epolls,
    }

    impl Emulated for S {
        fn epolls(&mut self) -> &mut Epolls {
            &mut self.epolls
        }
    }

    fn sock(name: &'static str) -> S {
        S {
            name,
            ..S::default()
        }
    }

    #[test]
    fn twins_share_one_socket_which_goes_with_the_last() {
        let mut t = Table::new();
        t.insert(5, sock("a"));
        assert!(t.dup(5, 9));
        assert!(!t.dup(6, 7), "a descriptor of no socket has no twin");
        assert_eq!(t.fds_with(9), vec![5, 9]);
        t.get_mut(9).expect("twin").name = "changed";
        assert_eq!(t.get(5).map(|s| s.name), Some("changed"));
        assert!(t.remove(5).is_none(), "the twin keeps the socket");
        assert_eq!(t.get(9).map(|s| s.name), Some("changed"));
        assert_eq!(t.remove(9).map(|s| s.name), Some("changed"));
        assert!(t.get(9).is_none());
        assert_eq!(t.fds_with(9), vec![9]);
    }

    #[test]
    fn a_new_socket_or_twin_over_a_descriptor_replaces_what_it_named() {
        let mut t = Table::new();
        t.insert(3, sock("a"));
        t.insert(4, sock("b"));
        // dup2(4, 3): 3 is now b's, and a went with its only descriptor.
        assert!(t.dup(4, 3));
        assert_eq!(t.get(3).map(|s| s.name), Some("b"));
        assert_eq!(t.sockets().count(), 1);
        t.insert(4, sock("c"));
        assert_eq!(t.get(3).map(|s| s.name), Some("b"));
        assert_eq!(t.get(4).map(|s| s.name), Some("c"));
        let mut named: Vec<_> = t.descriptors().map(|(fd, s)| (fd, s.name)).collect();
        named.sort_unstable();
        assert_eq!(named, vec![(3, "b"), (4, "c")]);
    }
}
