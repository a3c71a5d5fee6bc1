//! The outermost layer: every error becomes a response here, and upgraded tunnels are spliced.
//!
//! hyper drops a connection without a word when a service fails, so nothing inside may reach it
//! as an error. This layer picks the status once, from the error's type: a full queue is 503, an
//! expired timeout 504, an unreachable or failing upstream 502.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::{
    BoxError,
    body::FromBytes,
    drain::Drain,
    error::{QueueFull, Timeout, Upstream, cause_ref, is_caused_by},
    h1::RawUpgrade,
    proxy::Tunnel,
    timeout::TunnelDeadline,
};

/// Response texts that differ between the queue-proxy and the activator.
#[derive(Clone, Copy, Debug)]
pub struct Texts {
    /// Body of a 504 (`request timeout` in the queue-proxy, `activator request timeout` in the
    /// activator); sent without a newline, as upstream.
    pub timeout: &'static str,
}

impl Default for Texts {
    fn default() -> Self {
        Self {
            timeout: "request timeout",
        }
    }
}

/// The response an error becomes.
pub fn error_response<B: FromBytes>(err: &BoxError, texts: &Texts) -> Response<B> {
    let err: &(dyn std::error::Error + 'static) = &**err;
    let (status, body): (StatusCode, Bytes) = if is_caused_by::<QueueFull>(err) {
        tracing::debug!("pending request queue full");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::from_static(b"pending request queue full\n"),
        )
    } else if let Some(t) = cause_ref::<Timeout>(err) {
        tracing::warn!(error = %t, "request timed out");
        (
            StatusCode::GATEWAY_TIMEOUT,
            Bytes::from_static(texts.timeout.as_bytes()),
        )
    } else if let Some(u) = cause_ref::<Upstream>(err) {
        tracing::warn!(error = %u, "error reverse proxying request");
        (StatusCode::BAD_GATEWAY, Bytes::from(format!("{u}\n")))
    } else {
        tracing::error!(error = %err, "unexpected error");
        (StatusCode::BAD_GATEWAY, Bytes::from(format!("{err}\n")))
    };
    text(status, body)
}

/// A plain-text response, shaped like Go's `http.Error`.
pub fn text<B: FromBytes>(status: StatusCode, body: impl Into<Bytes>) -> Response<B> {
    let mut res = Response::new(B::from_bytes(body.into()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}

/// A service for a metrics port: `GET /metrics` answers `render()` as `content_type`, any other
/// path 404 as Go's mux does.
pub fn metrics_page<R>(
    content_type: &'static str,
    render: R,
) -> impl tower::Service<
    http::Request<hyper::body::Incoming>,
    Response = Response<http_body_util::Full<Bytes>>,
    Error = Infallible,
    Future = std::future::Ready<Result<Response<http_body_util::Full<Bytes>>, Infallible>>,
> + Clone
where
    R: Fn() -> Bytes + Clone + Send + 'static,
{
    tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let res = if req.uri().path() == "/metrics" {
            let mut res = Response::new(http_body_util::Full::new(render()));
            res.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            res
        } else {
            text(StatusCode::NOT_FOUND, "404 page not found\n")
        };
        std::future::ready(Ok(res))
    })
}

// === Layer ===

/// See the [module docs](self).
#[derive(Clone, Debug)]
pub struct EdgeLayer {
    drain: Drain,
    texts: Texts,
}

impl EdgeLayer {
    /// Tunnels are tracked by `drain`, so a drain waits for websockets to close.
    pub fn new(drain: Drain, texts: Texts) -> Self {
        Self { drain, texts }
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Edge {
            inner,
            drain: self.drain.clone(),
            texts: self.texts,
        }
    }
}

/// See [`EdgeLayer`].
#[derive(Clone, Debug)]
pub struct Edge<S> {
    inner: S,
    drain: Drain,
    texts: Texts,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Edge<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: FromBytes + Send + 'static,
{
    type Response = Response<ResB>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Our stacks are always ready; an inner error here would still become a response below.
        let _ = ready!(self.inner.poll_ready(cx));
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        ResponseFuture {
            inner: self.inner.call(req),
            drain: Some(self.drain.clone()),
            texts: self.texts,
        }
    }
}

pin_project! {
    /// Response future of [`Edge`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        drain: Option<Drain>,
        texts: Texts,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: FromBytes + Send + 'static,
{
    type Output = Result<Response<B>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = match ready!(this.inner.poll(cx)) {
            Ok(res) => res,
            Err(e) => return Poll::Ready(Ok(error_response(&e.into(), this.texts))),
        };
        if let Some(tunnel) = res.extensions_mut().remove::<Tunnel>() {
            let deadline = res.extensions_mut().remove::<TunnelDeadline>().map(|d| d.0);
            // The body carries every guard of the layers inside (breaker slot, statistics): the
            // tunnel keeps them until it closes.
            let hold = std::mem::replace(res.body_mut(), B::empty());
            let drain = this.drain.take().expect("polled after completion");
            spawn_tunnel(tunnel, hold, deadline, drain);
        }
        Poll::Ready(Ok(res))
    }
}

fn spawn_tunnel<H: Send + 'static>(
    tunnel: Tunnel,
    hold: H,
    deadline: Option<Instant>,
    drain: Drain,
) {
    let token = drain.track();
    tokio::spawn(async move {
        let _hold = hold;
        let _token = token;
        let splice = async {
            let Some(RawUpgrade {
                io: mut up,
                read_ahead,
            }) = tunnel.take_upstream()
            else {
                return Err::<(), BoxError>("upgraded connection already taken".into());
            };
            let mut down = TokioIo::new(tunnel.downstream.await?);
            // What the upstream sent right after its 101 belongs to the client.
            if !read_ahead.is_empty() {
                down.write_all(&read_ahead).await?;
            }
            tokio::io::copy_bidirectional(&mut down, &mut up).await?;
            Ok(())
        };
        let result = match deadline {
            Some(at) => tokio::time::timeout_at(at, splice)
                .await
                .unwrap_or_else(|_| Err("request timeout".into())),
            None => splice.await,
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "upgraded connection ended");
        }
    });
}
