//! Knative's three timeouts: the revision (total) timeout, response start, and idle.
//!
//! The clock starts when the request enters this layer, before the breaker, so queued time counts.
//! Before the response starts an expiry is an error (the edge answers 504 `request timeout`); once
//! it has started, the total and idle timeouts end the body with an error, which aborts the stream.
//! An upgraded connection (websocket) is bounded by the total timeout only: it is not cut by the
//! response-start or idle timeouts, which would close a healthy but quiet socket.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};
use tower::{Layer, Service};

use crate::{
    BoxError,
    body::FromBytes,
    error::{Timeout as TimeoutError, TimeoutKind},
};

/// The three timeouts of a revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// The longest a request may take, start to end (`timeoutSeconds`; Knative's default 300 s).
    pub request: Duration,
    /// How long the response headers may take (`responseStartTimeoutSeconds`); `None` is off.
    pub response_start: Option<Duration>,
    /// The longest gap between writes of the response (`idleTimeoutSeconds`); `None` is off.
    pub idle: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            request: Duration::from_secs(300),
            response_start: None,
            idle: None,
        }
    }
}

/// `start + d`, saturating: a configured timeout of centuries must not overflow the clock.
fn after(start: Instant, d: Duration) -> Instant {
    start
        .checked_add(d)
        .unwrap_or_else(|| start + Duration::from_secs(100 * 365 * 86_400))
}

/// When an upgraded connection started from this request must close.
#[derive(Clone, Copy, Debug)]
pub struct TunnelDeadline(pub Instant);

// === Layer ===

/// Applies [`Timeouts`] to every request: those in the request's extensions (a proxy in front of
/// many revisions puts each one's there), else the layer's. See the [module docs](self).
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    timeouts: Timeouts,
}

impl TimeoutLayer {
    /// Applies `timeouts`.
    pub const fn new(timeouts: Timeouts) -> Self {
        Self { timeouts }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout {
            inner,
            timeouts: self.timeouts,
        }
    }
}

/// See [`TimeoutLayer`].
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    timeouts: Timeouts,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Timeout<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<TimeoutBody<ResB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let start = Instant::now();
        let t = req
            .extensions()
            .get::<Timeouts>()
            .copied()
            .unwrap_or(self.timeouts);
        let total = after(start, t.request);
        let mut first = total;
        for d in [t.response_start, t.idle].into_iter().flatten() {
            first = first.min(after(start, d));
        }
        ResponseFuture {
            inner: self.inner.call(req),
            sleep: sleep_until(first),
            start,
            timeouts: t,
        }
    }
}

pin_project! {
    /// Response future of [`Timeout`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        start: Instant,
        timeouts: Timeouts,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<TimeoutBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(res) = this.inner.as_mut().poll(cx) {
            let mut res = res.map_err(Into::into)?;
            let total = after(*this.start, this.timeouts.request);
            if res.status() == StatusCode::SWITCHING_PROTOCOLS {
                res.extensions_mut().insert(TunnelDeadline(total));
                return Poll::Ready(Ok(res.map(TimeoutBody::unbounded)));
            }
            let idle = this.timeouts.idle;
            let next = idle.map_or(total, |i| total.min(after(Instant::now(), i)));
            return Poll::Ready(Ok(res.map(|b| TimeoutBody {
                inner: b,
                sleep: Some(sleep_until(next)),
                total,
                idle,
            })));
        }
        ready!(this.sleep.as_mut().poll(cx));
        let now = Instant::now();
        let t = *this.timeouts;
        let (kind, after) = if now >= after(*this.start, t.request) {
            (TimeoutKind::Request, t.request)
        } else if let Some(rs) = t.response_start.filter(|rs| now >= after(*this.start, *rs)) {
            (TimeoutKind::ResponseStart, rs)
        } else {
            // Before the first byte the idle timer can only have fired as a response-start timeout.
            (TimeoutKind::Idle, t.idle.unwrap_or(t.request))
        };
        Poll::Ready(Err(Box::new(TimeoutError { kind, after })))
    }
}

pin_project! {
    /// A response body bounded by the total and idle timeouts.
    pub struct TimeoutBody<B> {
        #[pin]
        inner: B,
        #[pin]
        sleep: Option<Sleep>,
        total: Instant,
        idle: Option<Duration>,
    }
}

impl<B> TimeoutBody<B> {
    fn unbounded(inner: B) -> Self {
        Self {
            inner,
            sleep: None,
            total: Instant::now(),
            idle: None,
        }
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The wrapped body, mutably.
    pub fn get_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B: FromBytes> FromBytes for TimeoutBody<B> {
    fn from_bytes(bytes: Bytes) -> Self {
        Self::unbounded(B::from_bytes(bytes))
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for TimeoutBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimeoutBody")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<B> http_body::Body for TimeoutBody<B>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let mut this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            if let (Some(idle), Some(Ok(_)), Some(sleep)) =
                (this.idle, &frame, this.sleep.as_mut().as_pin_mut())
            {
                sleep.reset((*this.total).min(after(Instant::now(), *idle)));
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let Some(sleep) = this.sleep.as_pin_mut() else {
            return Poll::Pending;
        };
        ready!(sleep.poll(cx));
        let (kind, after) = if Instant::now() >= *this.total {
            (TimeoutKind::Request, Duration::ZERO)
        } else {
            (TimeoutKind::Idle, this.idle.unwrap_or_default())
        };
        Poll::Ready(Some(Err(Box::new(TimeoutError { kind, after }))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    use tower_test::mock;

    use super::*;
    use crate::{body::Body, error::is_caused_by};

    fn layer(request: u64, response_start: Option<u64>, idle: Option<u64>) -> TimeoutLayer {
        TimeoutLayer::new(Timeouts {
            request: Duration::from_secs(request),
            response_start: response_start.map(Duration::from_secs),
            idle: idle.map(Duration::from_secs),
        })
    }

    fn kind(err: &BoxError) -> TimeoutKind {
        assert!(is_caused_by::<TimeoutError>(&**err), "{err}");
        crate::error::cause_ref::<TimeoutError>(&**err)
            .unwrap()
            .kind
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn response_start_fires_before_headers() {
        let (svc, mut handle) = mock::pair::<Request<()>, Response<Body>>();
        let svc = layer(10, Some(2), None).layer(svc);
        handle.allow(1);
        let call = tokio::spawn(svc.oneshot(Request::new(())));
        let _pending = handle.next_request().await.unwrap();
        tokio::time::advance(Duration::from_secs(3)).await;
        let err = call.await.unwrap().unwrap_err();
        assert_eq!(kind(&err), TimeoutKind::ResponseStart);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn total_timeout_cuts_a_started_body() {
        let (svc, mut handle) = mock::pair::<Request<()>, Response<Never>>();
        let svc = layer(5, None, None).layer(svc);
        handle.allow(1);
        let call = tokio::spawn(svc.oneshot(Request::new(())));
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(Response::new(Never));
        let res = call.await.unwrap().expect("headers arrived in time");
        let started = Instant::now();
        let err = res.into_body().collect().await.unwrap_err();
        assert_eq!(kind(&err), TimeoutKind::Request);
        assert!(Instant::now() - started >= Duration::from_secs(5));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn idle_timeout_cuts_a_quiet_body_and_upgrades_escape_it() {
        let (svc, mut handle) = mock::pair::<Request<()>, Response<Never>>();
        let svc = layer(100, None, Some(1)).layer(svc);
        handle.allow(2);
        let call = tokio::spawn(svc.clone().oneshot(Request::new(())));
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(Response::new(Never));
        let err = call
            .await
            .unwrap()
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap_err();
        assert_eq!(kind(&err), TimeoutKind::Idle);

        let call = tokio::spawn(svc.oneshot(Request::new(())));
        let (_, send) = handle.next_request().await.unwrap();
        let mut res = Response::new(Never);
        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        send.send_response(res);
        let res = call.await.unwrap().unwrap();
        let deadline = res
            .extensions()
            .get::<TunnelDeadline>()
            .expect("tunnel deadline")
            .0;
        assert!(deadline > Instant::now() + Duration::from_secs(99));
    }

    /// A body that never yields a frame.
    struct Never;

    impl http_body::Body for Never {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }
}
