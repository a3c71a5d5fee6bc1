//! Response bodies: the proxied body, small synthetic ones, and a guard that lives until the end.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::{BoxError, h1::H1Body};

/// A body that a layer can make up on the spot, for answers that never reach the upstream
/// (probe answers, error pages).
pub trait FromBytes {
    /// A complete body holding `bytes`.
    fn from_bytes(bytes: Bytes) -> Self;

    /// An empty body.
    fn empty() -> Self
    where
        Self: Sized,
    {
        Self::from_bytes(Bytes::new())
    }
}

pin_project! {
    /// The body of a proxied response, or a synthetic one.
    pub struct Body {
        #[pin]
        kind: Kind,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind {
        // A complete body (possibly empty), sent in one frame.
        Full { data: Option<Bytes> },
        // Read straight from an upstream HTTP/1.1 connection, which goes back to the pool when
        // the body ends.
        Http1 { inner: H1Body },
        // A stream of the shared h2c connection.
        H2 { #[pin] inner: Incoming },
    }
}

impl Body {
    pub(crate) fn http1(inner: H1Body) -> Self {
        Self {
            kind: Kind::Http1 { inner },
        }
    }

    pub(crate) fn h2(inner: Incoming) -> Self {
        Self {
            kind: Kind::H2 { inner },
        }
    }
}

impl FromBytes for http_body_util::Full<Bytes> {
    fn from_bytes(bytes: Bytes) -> Self {
        Self::new(bytes)
    }
}

impl FromBytes for Body {
    fn from_bytes(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Full {
                data: (!bytes.is_empty()).then_some(bytes),
            },
        }
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Full { data } => f
                .debug_struct("Full")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::Http1 { inner } => inner.fmt(f),
            Kind::H2 { .. } => f.debug_struct("H2").finish_non_exhaustive(),
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Http1 { inner } => Pin::new(inner).poll_frame(cx),
            KindProj::H2 { inner } => inner.poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data } => data.is_none(),
            Kind::Http1 { inner } => inner.is_end_stream(),
            Kind::H2 { inner } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Http1 { inner } => inner.size_hint(),
            Kind::H2 { inner } => inner.size_hint(),
        }
    }
}

pin_project! {
    /// A body that holds `G` until the body ends, fails or is dropped.
    ///
    /// This is how a request keeps its breaker slot, its place in the statistics and the drain
    /// until the last byte of its response, not just until the headers.
    pub struct Guarded<B, G> {
        #[pin]
        inner: B,
        guard: Option<G>,
    }
}

impl<B, G> Guarded<B, G> {
    /// Wraps `inner`, holding `guard` for as long as it streams.
    pub fn new(inner: B, guard: G) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }

    /// Wraps `inner` with no guard.
    pub fn unguarded(inner: B) -> Self {
        Self { inner, guard: None }
    }

    /// Takes the guard out, e.g. to move it into an upgraded connection's task.
    pub fn take_guard(&mut self) -> Option<G> {
        self.guard.take()
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The wrapped body, mutably.
    pub fn get_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    /// Unwraps the body, dropping the guard.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: FromBytes, G> FromBytes for Guarded<B, G> {
    fn from_bytes(bytes: Bytes) -> Self {
        Self::unguarded(B::from_bytes(bytes))
    }
}

impl<B: std::fmt::Debug, G> std::fmt::Debug for Guarded<B, G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .field("guarded", &self.guard.is_some())
            .finish()
    }
}

impl<B: http_body::Body, G> http_body::Body for Guarded<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.guard.take();
        }
        polled
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
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use http_body_util::BodyExt;

    use super::*;

    struct Count(Arc<AtomicUsize>);
    impl Drop for Count {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn guard_is_released_at_end_of_stream_not_before() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let mut body = Guarded::new(
            Body::from_bytes(Bytes::from_static(b"hi")),
            Count(dropped.clone()),
        );
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "hi");
        assert_eq!(dropped.load(Ordering::SeqCst), 0, "still streaming");
        assert!(body.frame().await.is_none());
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "released at the end");
        drop(body);
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "released once");
    }

    #[test]
    fn guard_is_released_when_the_body_is_dropped() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let body = Guarded::new(
            Body::from_bytes(Bytes::from_static(b"hi")),
            Count(dropped.clone()),
        );
        drop(body);
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
    }
}
