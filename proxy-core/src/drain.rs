//! Graceful drain: a signal that tells connections to finish, and a count of what is still running.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use tokio::sync::{Notify, watch};

/// A drain handle, shared by servers, connections and upgraded tunnels. Cheap to clone.
///
/// Work that must finish before the process exits holds a [`Token`]: each connection holds one
/// for its lifetime, and so does each upgraded connection (websocket), which hyper no longer
/// tracks once it has handed the socket over.
#[derive(Clone, Debug)]
pub struct Drain {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    signal: watch::Sender<bool>,
    active: AtomicUsize,
    idle: Notify,
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    /// A drain that has not started and tracks nothing.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                signal: watch::Sender::new(false),
                active: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
        }
    }

    /// Tells every server to stop accepting and every connection to finish what it has.
    pub fn start(&self) {
        self.inner.signal.send_replace(true);
    }

    /// Whether [`start`](Self::start) was called.
    pub fn is_draining(&self) -> bool {
        *self.inner.signal.borrow()
    }

    /// Resolves once the drain has started.
    pub async fn signaled(&self) {
        let mut rx = self.inner.signal.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|draining| *draining).await;
    }

    /// Registers a unit of work that the drain waits for until the token drops.
    pub fn track(&self) -> Token {
        self.inner.active.fetch_add(1, Ordering::AcqRel);
        Token {
            inner: self.inner.clone(),
        }
    }

    /// Units of work still running.
    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    /// Resolves when no tracked work is left.
    pub async fn idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A unit of tracked work; see [`Drain::track`].
#[derive(Debug)]
pub struct Token {
    inner: Arc<Inner>,
}

impl Drop for Token {
    fn drop(&mut self) {
        if self.inner.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn idle_waits_for_every_token() {
        let drain = Drain::new();
        let a = drain.track();
        let b = drain.track();
        let waiter = tokio::spawn({
            let drain = drain.clone();
            async move { drain.idle().await }
        });
        drop(a);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(!waiter.is_finished(), "one token is left");
        drop(b);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("idle resolves")
            .unwrap();
    }

    #[tokio::test]
    async fn signal_reaches_late_subscribers() {
        let drain = Drain::new();
        assert!(!drain.is_draining());
        drain.start();
        drain.signaled().await;
        assert!(drain.is_draining());
    }
}
