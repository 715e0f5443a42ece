//! Locks that fork() cannot leave locked in the child.
//!
//! fork() copies a locked mutex as locked, and the child has no copy of
//! the thread that held it. The shim's maps that a child may use are
//! [`ForkMutex`]es: a pthread_atfork prepare handler takes each with
//! [`ForkMutex::hold`], and the parent and child handlers give them back
//! with [`release_held`]. std's futex mutex is used because its unlock
//! only clears a word and wakes any waiter; parking_lot's may hand the
//! lock over to a thread that parked on it meanwhile, and in the child
//! that thread does not exist, so the lock stayed taken for good.

use std::any::Any;
use std::cell::RefCell;
use std::sync::{Mutex, MutexGuard, PoisonError};

pub struct ForkMutex<T>(Mutex<T>);

impl<T> ForkMutex<T> {
    pub const fn new(value: T) -> ForkMutex<T> {
        ForkMutex(Mutex::new(value))
    }

    /// Locks. The shim never panics while holding one, and a hook that
    /// did would have its call fall back to libc, so a poisoned lock's
    /// data is still whole: it is used as it is.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

thread_local! {
    /// Locks taken by the prepare handlers in this thread (the forking
    /// one; the child's only thread is its copy).
    static HELD: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

impl<T: 'static> ForkMutex<T> {
    /// For a prepare handler: takes the lock and keeps it until
    /// [`release_held`] in this thread.
    pub fn hold(&'static self) {
        let guard = self.lock();
        HELD.with(|h| h.borrow_mut().push(Box::new(guard)));
    }
}

/// For the parent and child handlers: releases every lock [`ForkMutex::hold`]
/// took in this thread, the last taken first.
pub fn release_held() {
    HELD.with(|h| {
        let mut held = h.borrow_mut();
        while let Some(guard) = held.pop() {
            drop(guard);
        }
    });
}
