//! Request statistics for the autoscaler: time-weighted concurrency and arrivals per window.
//!
//! A request counts from before the breaker (queued time is concurrency, as upstream) until its
//! response body ends or its upgraded connection closes. Requests forwarded by the activator
//! (`K-Proxy-Request: activator`) are also counted apart, because the activator reports them
//! itself and the autoscaler subtracts them.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, ready},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::{body::Guarded, headers};

/// One window's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Report {
    /// Time-weighted average of requests in flight over the window.
    pub average_concurrency: f64,
    /// The same, for requests forwarded by the activator only.
    pub average_proxied_concurrency: f64,
    /// Arrivals in the window.
    pub request_count: f64,
    /// Arrivals forwarded by the activator.
    pub proxied_request_count: f64,
}

#[derive(Debug)]
struct Window {
    concurrency: u64,
    proxied: u64,
    integral: f64,
    proxied_integral: f64,
    seconds: f64,
    last: Instant,
    requests: u64,
    proxied_requests: u64,
}

impl Window {
    fn advance(&mut self, now: Instant) {
        // Events stamped by different threads can arrive slightly out of order; time never runs back.
        if now <= self.last {
            return;
        }
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.integral += self.concurrency as f64 * dt;
        self.proxied_integral += self.proxied as f64 * dt;
        self.seconds += dt;
        self.last = now;
    }
}

/// The statistics recorder. One short critical section per arrival and per departure.
#[derive(Debug)]
pub struct RequestStats {
    window: Mutex<Window>,
}

impl RequestStats {
    /// A recorder whose first window starts at `now`.
    pub fn new(now: Instant) -> Arc<Self> {
        Arc::new(Self {
            window: Mutex::new(Window {
                concurrency: 0,
                proxied: 0,
                integral: 0.0,
                proxied_integral: 0.0,
                seconds: 0.0,
                last: now,
                requests: 0,
                proxied_requests: 0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // A panic while holding this lock cannot leave the counters inconsistent enough to matter.
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an arrival; the returned guard records the departure when dropped.
    pub fn arrive(self: &Arc<Self>, proxied: bool, now: Instant) -> InFlight {
        let mut w = self.lock();
        w.advance(now);
        w.concurrency += 1;
        w.requests += 1;
        if proxied {
            w.proxied += 1;
            w.proxied_requests += 1;
        }
        InFlight {
            stats: self.clone(),
            proxied,
        }
    }

    fn depart(&self, proxied: bool, now: Instant) {
        let mut w = self.lock();
        w.advance(now);
        w.concurrency -= 1;
        if proxied {
            w.proxied -= 1;
        }
    }

    /// Starts a fresh window at `now` for a recorder that was idle and unreported, so that its
    /// next report averages over the time since activity resumed rather than over the idle time
    /// too. The requests in flight count as the new window's arrivals.
    pub fn restart(&self, now: Instant) {
        let mut w = self.lock();
        w.integral = 0.0;
        w.proxied_integral = 0.0;
        w.seconds = 0.0;
        w.requests = w.concurrency;
        w.proxied_requests = w.proxied;
        w.last = w.last.max(now);
    }

    /// Requests in flight right now.
    pub fn concurrency(&self) -> u64 {
        self.lock().concurrency
    }

    /// Closes the window at `now`, returns its figures and starts the next one.
    pub fn report(&self, now: Instant) -> Report {
        let mut w = self.lock();
        w.advance(now);
        let report = if w.seconds > 0.0 {
            Report {
                average_concurrency: w.integral / w.seconds,
                average_proxied_concurrency: w.proxied_integral / w.seconds,
                request_count: w.requests as f64,
                proxied_request_count: w.proxied_requests as f64,
            }
        } else {
            Report {
                average_concurrency: w.concurrency as f64,
                average_proxied_concurrency: w.proxied as f64,
                request_count: w.requests as f64,
                proxied_request_count: w.proxied_requests as f64,
            }
        };
        w.integral = 0.0;
        w.proxied_integral = 0.0;
        w.seconds = 0.0;
        w.requests = 0;
        w.proxied_requests = 0;
        report
    }
}

/// A request in flight; its departure is recorded on drop.
#[derive(Debug)]
pub struct InFlight {
    stats: Arc<RequestStats>,
    proxied: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.depart(self.proxied, Instant::now());
    }
}

// === Layer ===

/// Records every request that passes into a [`RequestStats`]; kubelet probes are skipped.
#[derive(Clone, Debug)]
pub struct StatsLayer {
    stats: Arc<RequestStats>,
}

impl StatsLayer {
    /// Records into `stats`.
    pub fn new(stats: Arc<RequestStats>) -> Self {
        Self { stats }
    }
}

impl<S> Layer<S> for StatsLayer {
    type Service = Stats<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Stats {
            inner,
            stats: self.stats.clone(),
        }
    }
}

/// See [`StatsLayer`].
#[derive(Clone, Debug)]
pub struct Stats<S> {
    inner: S,
    stats: Arc<RequestStats>,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Stats<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<Guarded<ResB, InFlight>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let guard = if headers::is_kubelet_probe(req.headers()) {
            None
        } else {
            Some(
                self.stats
                    .arrive(headers::is_proxied(req.headers()), Instant::now()),
            )
        };
        ResponseFuture {
            inner: self.inner.call(req),
            guard,
        }
    }
}

pin_project! {
    /// Response future of [`Stats`]: hands the request's place in the statistics to its response
    /// body, which keeps it until the last byte (or, upgraded, until the tunnel closes).
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InFlight>,
    }
}

impl<F> ResponseFuture<F> {
    /// Holds `guard` (from [`RequestStats::arrive`]) in the body of `inner`'s response, for a
    /// caller that records arrivals itself, e.g. into per-revision statistics.
    pub fn new(inner: F, guard: Option<InFlight>) -> Self {
        Self { inner, guard }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<Guarded<B, InFlight>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // On error the guard drops with the future: a rejected request counts in and out at once.
        let res = ready!(this.inner.poll(cx))?;
        let guard = this.guard.take();
        Poll::Ready(Ok(res.map(|b| match guard {
            Some(g) => Guarded::new(b, g),
            None => Guarded::unguarded(b),
        })))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn average_is_time_weighted() {
        let stats = RequestStats::new(Instant::now());
        let _a = stats.arrive(false, Instant::now());
        tokio::time::advance(Duration::from_millis(500)).await;
        let b = stats.arrive(true, Instant::now());
        tokio::time::advance(Duration::from_millis(250)).await;
        drop(b);
        tokio::time::advance(Duration::from_millis(250)).await;
        let r = stats.report(Instant::now());
        assert_eq!(r.request_count, 2.0);
        assert_eq!(r.proxied_request_count, 1.0);
        assert!((r.average_concurrency - 1.25).abs() < 1e-9, "{r:?}");
        assert!((r.average_proxied_concurrency - 0.25).abs() < 1e-9, "{r:?}");
        tokio::time::advance(Duration::from_secs(1)).await;
        let next = stats.report(Instant::now());
        assert_eq!(next.request_count, 0.0, "counts reset per window");
        assert!(
            (next.average_concurrency - 1.0).abs() < 1e-9,
            "a is still in flight"
        );
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn long_requests_count_in_every_window() {
        let t0 = Instant::now();
        let stats = RequestStats::new(t0);
        let _ws = stats.arrive(false, t0);
        for i in 1..=3 {
            let r = stats.report(t0 + Duration::from_secs(i));
            assert!((r.average_concurrency - 1.0).abs() < 1e-9);
        }
    }
}
