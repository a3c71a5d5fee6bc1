//! Prometheus request metrics on the user-metrics port, with upstream's names, when
//! `OBSERVABILITY_CONFIG` asks for `prometheus`. Off by default, and then free.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{Request, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use pin_project_lite::pin_project;
use proxy_core::{
    BoxError,
    body::Guarded,
    breaker::Breaker,
    error::{QueueFull, Timeout, is_caused_by},
    headers,
};
use tokio::time::Instant;
use tower::{Layer, Service};

/// Seconds a request spent in the application, labelled by status.
const INVOCATION_DURATION: &str = "kn_serving_invocation_duration_seconds";
/// Requests queued or running in the breaker, sampled as each request enters it.
const QUEUE_DEPTH: &str = "kn_serving_queue_depth";
/// Seconds from the request reaching the queue-proxy to the end of its response.
const SERVER_DURATION: &str = "http_server_request_duration_seconds";
/// Upstream's invocation-duration buckets.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Installs the global recorder and returns the handle that renders the text format.
pub(crate) fn install() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(INVOCATION_DURATION.to_owned()), &BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(SERVER_DURATION.to_owned()), &BUCKETS))
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())
}

/// Which of the two measuring points a layer is.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Point {
    /// Outside the breaker: HTTP server metrics, queueing included.
    Server,
    /// Inside the breaker: the application's own time, and the queue depth at entry.
    Invocation,
}

/// Records request metrics at `point`; a pass-through when metrics are off.
#[derive(Clone, Debug)]
pub(crate) struct RequestMetricsLayer {
    on: Option<(Point, Option<Arc<Breaker>>)>,
}

impl RequestMetricsLayer {
    pub(crate) fn new(enabled: bool, point: Point, breaker: Option<Arc<Breaker>>) -> Self {
        Self {
            on: enabled.then_some((point, breaker)),
        }
    }
}

impl<S> Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics {
            inner,
            on: self.on.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct RequestMetrics<S> {
    inner: S,
    on: Option<(Point, Option<Arc<Breaker>>)>,
}

/// Records the duration when the response body ends.
#[derive(Debug)]
pub(crate) struct Timer {
    point: Point,
    start: Instant,
    status: u16,
    labels: Option<(http::Method, http::Version)>,
}

impl Drop for Timer {
    fn drop(&mut self) {
        let secs = self.start.elapsed().as_secs_f64();
        let status = self.status.to_string();
        match (self.point, self.labels.take()) {
            (Point::Invocation, _) => {
                metrics::histogram!(INVOCATION_DURATION, "http_response_status_code" => status)
                    .record(secs)
            }
            (Point::Server, Some((method, version))) => {
                let version = match version {
                    http::Version::HTTP_2 => "2",
                    http::Version::HTTP_10 => "1.0",
                    _ => "1.1",
                };
                metrics::histogram!(
                    SERVER_DURATION,
                    "http_request_method" => method.to_string(),
                    "http_response_status_code" => status,
                    "network_protocol_name" => "http",
                    "network_protocol_version" => version,
                    "url_scheme" => "http",
                )
                .record(secs);
            }
            (Point::Server, None) => {}
        }
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for RequestMetrics<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>, Error = BoxError>,
{
    type Response = Response<Guarded<ResB, Timer>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // Probes stay out of request metrics, as upstream.
        let timer = match &self.on {
            Some((point, breaker)) if !headers::is_probe(req.headers()) => {
                if let (Point::Invocation, Some(b)) = (point, breaker) {
                    metrics::gauge!(QUEUE_DEPTH).set(b.in_flight() as f64);
                }
                Some(Timer {
                    point: *point,
                    start: Instant::now(),
                    status: 0,
                    labels: Some((req.method().clone(), req.version())),
                })
            }
            _ => None,
        };
        ResponseFuture {
            inner: self.inner.call(req),
            timer,
        }
    }
}

pin_project! {
    pub(crate) struct ResponseFuture<F> {
        #[pin]
        inner: F,
        timer: Option<Timer>,
    }
}

impl<F, B> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, BoxError>>,
{
    type Output = Result<Response<Guarded<B, Timer>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = match ready!(this.inner.poll(cx)) {
            Ok(res) => res,
            Err(e) => {
                // The edge will answer with an error status; record what the client will see.
                if let Some(t) = this.timer.as_mut() {
                    t.status = if is_caused_by::<QueueFull>(&*e) {
                        503
                    } else if is_caused_by::<Timeout>(&*e) {
                        504
                    } else {
                        502
                    };
                }
                return Poll::Ready(Err(e));
            }
        };
        let timer = this.timer.take().map(|mut t| {
            t.status = res.status().as_u16();
            t
        });
        Poll::Ready(Ok(res.map(|b| match timer {
            Some(t) => Guarded::new(b, t),
            None => Guarded::unguarded(b),
        })))
    }
}
