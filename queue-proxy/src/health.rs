//! Health checks, network probes and the drain's quiet period, in front of the data path.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use proxy_core::{body::FromBytes, edge::text, headers};
use tokio::{sync::Notify, time::Instant};
use tower::{Layer, Service};

use crate::readiness::Readiness;

/// The drain's quiet period: it ends once no request arrived for `quiet`.
#[derive(Debug)]
pub(crate) struct Drainer {
    quiet: Duration,
    draining: AtomicBool,
    epoch: Instant,
    deadline_ms: AtomicU64,
    changed: Notify,
}

impl Drainer {
    pub(crate) fn new(quiet: Duration) -> Arc<Self> {
        Arc::new(Self {
            quiet,
            draining: AtomicBool::new(false),
            epoch: Instant::now(),
            deadline_ms: AtomicU64::new(0),
            changed: Notify::new(),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Traffic restarts the quiet period while draining.
    fn touch(&self) {
        if self.is_draining() {
            let quiet = u64::try_from(self.quiet.as_millis()).unwrap_or(u64::MAX);
            self.deadline_ms
                .fetch_max(self.now_ms().saturating_add(quiet), Ordering::AcqRel);
        }
    }

    /// Starts draining (if not yet) and returns once the quiet period passed without traffic,
    /// or the drain was [reset](Self::reset).
    pub(crate) async fn drain(&self) {
        if !self.draining.swap(true, Ordering::AcqRel) {
            let quiet = u64::try_from(self.quiet.as_millis()).unwrap_or(u64::MAX);
            self.deadline_ms
                .store(self.now_ms().saturating_add(quiet), Ordering::Release);
        }
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if !self.is_draining() {
                return;
            }
            let deadline = self.deadline_ms.load(Ordering::Acquire);
            if self.now_ms() >= deadline {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep_until(self.epoch + Duration::from_millis(deadline)) => {}
                () = changed => {}
            }
        }
    }

    /// Aborts a drain: probes succeed again and waiters return.
    pub(crate) fn reset(&self) {
        self.draining.store(false, Ordering::Release);
        self.changed.notify_waiters();
    }
}

// === Layer ===

/// Answers health checks and network probes; every other request goes inward. See upstream's
/// drain handler: health checks are recognised by User-Agent on any path.
#[derive(Clone, Debug)]
pub(crate) struct HealthLayer {
    drainer: Arc<Drainer>,
    readiness: Arc<Readiness>,
}

impl HealthLayer {
    pub(crate) fn new(drainer: Arc<Drainer>, readiness: Arc<Readiness>) -> Self {
        Self { drainer, readiness }
    }
}

impl<S> Layer<S> for HealthLayer {
    type Service = Health<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Health {
            inner,
            drainer: self.drainer.clone(),
            readiness: self.readiness.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Health<S> {
    inner: S,
    drainer: Arc<Drainer>,
    readiness: Arc<Readiness>,
}

fn shutting_down<B: FromBytes>() -> Response<B> {
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        Bytes::from_static(b"shutting down\n"),
    )
}

impl<S, ReqB, B> Service<Request<ReqB>> for Health<S>
where
    S: Service<Request<ReqB>, Response = Response<B>>,
    B: FromBytes + Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = HealthFuture<S::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let h = req.headers();
        if headers::is_health_check(h) {
            if self.drainer.is_draining() {
                return HealthFuture::answer(shutting_down());
            }
            let value = h
                .get(headers::K_NETWORK_PROBE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            if value != headers::PROBE_VALUE_QUEUE {
                return HealthFuture::answer(text(
                    StatusCode::BAD_REQUEST,
                    format!("unexpected probe header value: {value}\n"),
                ));
            }
            let readiness = self.readiness.clone();
            return HealthFuture::Probe {
                f: Box::pin(async move {
                    if readiness.check().await {
                        let mut res = Response::new(B::from_bytes(Bytes::from_static(b"queue")));
                        res.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            HeaderValue::from_static("text/plain; charset=utf-8"),
                        );
                        res
                    } else {
                        let mut res = Response::new(B::empty());
                        *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        res
                    }
                }),
            };
        }
        if headers::is_network_probe(h) {
            if self.drainer.is_draining() {
                return HealthFuture::answer(shutting_down());
            }
            return HealthFuture::answer(
                match h.get(headers::K_NETWORK_HASH).filter(|v| !v.is_empty()) {
                    None => text(
                        StatusCode::BAD_REQUEST,
                        "a probe request must contain a non-empty \"K-Network-Hash\" header\n",
                    ),
                    Some(hash) => {
                        let mut res = Response::new(B::empty());
                        res.headers_mut()
                            .insert(headers::K_NETWORK_HASH, hash.clone());
                        res
                    }
                },
            );
        }
        self.drainer.touch();
        HealthFuture::Inner {
            f: self.inner.call(req),
        }
    }
}

type ProbeAnswer<B> = Pin<Box<dyn Future<Output = Response<B>> + Send>>;

pin_project! {
    #[project = HealthFutureProj]
    pub(crate) enum HealthFuture<F, B> {
        Inner { #[pin] f: F },
        Answer { res: Option<Response<B>> },
        Probe { f: ProbeAnswer<B> },
    }
}

impl<F, B> HealthFuture<F, B> {
    fn answer(res: Response<B>) -> Self {
        Self::Answer { res: Some(res) }
    }
}

impl<F, B, E> Future for HealthFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            HealthFutureProj::Inner { f } => f.poll(cx),
            HealthFutureProj::Answer { res } => {
                Poll::Ready(Ok(res.take().expect("polled after completion")))
            }
            HealthFutureProj::Probe { f } => f.as_mut().poll(cx).map(Ok),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn quiet_period_restarts_on_traffic_and_reset_aborts() {
        let d = Drainer::new(Duration::from_secs(30));
        let start = Instant::now();
        let draining = tokio::spawn({
            let d = d.clone();
            async move { d.drain().await }
        });
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(d.is_draining());
        d.touch();
        draining.await.unwrap();
        assert!(
            start.elapsed() >= Duration::from_secs(50),
            "restarted at 20 s: {:?}",
            start.elapsed()
        );

        let d = Drainer::new(Duration::from_secs(30));
        let draining = tokio::spawn({
            let d = d.clone();
            async move { d.drain().await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        d.reset();
        draining.await.unwrap();
        assert!(!d.is_draining());
    }
}
