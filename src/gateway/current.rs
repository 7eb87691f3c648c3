//! A value replaced while warden runs (the users file, on SIGHUP), read on
//! every request: each reader keeps its own `Arc` and swaps it only when
//! the version moved, so a lookup costs one atomic load and never waits on
//! a reload in progress.

use std::sync::Arc;
use tokio::sync::watch;

pub struct Current<T> {
    rx: watch::Receiver<Arc<T>>,
    now: Arc<T>,
}

impl<T> Current<T> {
    pub fn new(rx: watch::Receiver<Arc<T>>) -> Self {
        let now = Arc::clone(&rx.borrow());
        Self { rx, now }
    }

    /// A value that never changes (tests, a plane without reloads).
    #[cfg(test)]
    pub fn fixed(value: Arc<T>) -> Self {
        Self::new(watch::channel(value).1)
    }

    /// Takes a newer value if one was published. Called after a wake-up,
    /// before the value is used for what woke the task (calling it before
    /// sleeping would answer the next request with what was current then).
    pub fn refresh(&mut self) -> &Arc<T> {
        if self.rx.has_changed().unwrap_or(false) {
            self.now = Arc::clone(&self.rx.borrow_and_update());
        }
        &self.now
    }

    /// The value as of the last [`refresh`](Self::refresh).
    pub fn get(&self) -> &Arc<T> {
        &self.now
    }
}

impl<T> Clone for Current<T> {
    fn clone(&self) -> Self {
        Self { rx: self.rx.clone(), now: Arc::clone(&self.now) }
    }
}

/// PEAP-MSCHAPv2 on the EAP pool asks the users file as it is now.
impl crate::eap::peap::Credentials for watch::Receiver<Arc<crate::users::Users>> {
    fn nt_hash(&self, user: &str) -> Option<zeroize::Zeroizing<[u8; 16]>> {
        let users = Arc::clone(&self.borrow());
        crate::eap::peap::Credentials::nt_hash(&*users, user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_sees_a_new_value_after_refresh() {
        let (tx, rx) = watch::channel(Arc::new(1));
        let mut c = Current::new(rx);
        assert_eq!(**c.get(), 1);
        tx.send_replace(Arc::new(2));
        assert_eq!(**c.get(), 1, "only on refresh");
        assert_eq!(**c.refresh(), 2);
        drop(tx);
        assert_eq!(**c.refresh(), 2, "the last value stays when the sender is gone");
    }
}
