//! The containerConcurrency breaker: at most `cc` requests run, `10 × cc` wait, the rest get 503.
//!
//! A request holds its slot until its response body ends (or an upgraded connection closes), not
//! just until the response headers: the application is busy for as long as it streams.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use crate::{BoxError, body::Guarded, error::QueueFull, headers};

/// How many requests may wait per running slot, as upstream (`QueueDepth = 10 × cc`).
pub const QUEUE_DEPTH_FACTOR: usize = 10;

/// Shared breaker state. Cheap to share: one atomic and one semaphore.
#[derive(Debug)]
pub struct Breaker {
    capacity: usize,
    total_slots: usize,
    in_flight: AtomicUsize,
    sem: Arc<Semaphore>,
}

impl Breaker {
    /// A breaker for `container_concurrency` running requests; `0` means no limit.
    pub fn new(container_concurrency: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: container_concurrency,
            total_slots: container_concurrency.saturating_mul(QUEUE_DEPTH_FACTOR + 1),
            in_flight: AtomicUsize::new(0),
            sem: Arc::new(Semaphore::new(container_concurrency)),
        })
    }

    /// The running capacity (containerConcurrency); `0` is unlimited.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Requests waiting or running. Always 0 for an unlimited breaker.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Takes a place in the queue, or fails at once when `11 × cc` requests are already in.
    pub fn try_reserve(self: &Arc<Self>) -> Result<Reservation, QueueFull> {
        let mut cur = self.in_flight.load(Ordering::Relaxed);
        loop {
            if cur >= self.total_slots {
                return Err(QueueFull::default());
            }
            match self.in_flight.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Ok(Reservation {
                        breaker: self.clone(),
                    });
                }
                Err(actual) => cur = actual,
            }
        }
    }
}

/// A place in the breaker's queue; becomes a [`Permit`] once a running slot is free.
#[derive(Debug)]
pub struct Reservation {
    breaker: Arc<Breaker>,
}

impl Reservation {
    /// Takes a running slot if one is free now, without waiting.
    pub fn try_run(self) -> Result<Permit, Self> {
        match self.breaker.sem.clone().try_acquire_owned() {
            Ok(slot) => Ok(Permit {
                _slot: slot,
                _queue: self,
            }),
            Err(_) => Err(self),
        }
    }

    /// Waits for a running slot.
    pub async fn run(self) -> Permit {
        let slot = self
            .breaker
            .sem
            .clone()
            .acquire_owned()
            .await
            .expect("the breaker's semaphore is never closed");
        Permit {
            _slot: slot,
            _queue: self,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.breaker.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A running slot plus its queue place; both are returned when it drops.
#[derive(Debug)]
pub struct Permit {
    _slot: OwnedSemaphorePermit,
    _queue: Reservation,
}

// === Layer ===

/// Puts a [`Breaker`] in front of a service. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct BreakerLayer {
    breaker: Arc<Breaker>,
}

impl BreakerLayer {
    /// Admits requests through `breaker`.
    pub fn new(breaker: Arc<Breaker>) -> Self {
        Self { breaker }
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = BreakerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BreakerService {
            inner,
            breaker: self.breaker.clone(),
        }
    }
}

// === Service ===

/// The breaker in front of `S`. Kubelet probes (`K-Kubelet-Probe`) bypass it, as upstream.
#[derive(Clone, Debug)]
pub struct BreakerService<S> {
    inner: S,
    breaker: Arc<Breaker>,
}

impl<S> BreakerService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for BreakerService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    ReqB: Send + 'static,
{
    type Response = Response<Guarded<ResB, Permit>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        if self.breaker.capacity == 0 || headers::is_kubelet_probe(req.headers()) {
            return ResponseFuture::running(self.inner.call(req), None);
        }
        let reservation = match self.breaker.try_reserve() {
            Ok(r) => r,
            Err(full) => {
                return ResponseFuture {
                    state: State::Failed {
                        error: Some(full.into()),
                    },
                };
            }
        };
        match reservation.try_run() {
            Ok(permit) => ResponseFuture::running(self.inner.call(req), Some(permit)),
            Err(reservation) => {
                // The inner service was made ready for this call; the clone that runs later must
                // be driven to ready itself, and the ready one stays here (tower's clone rule).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture {
                    state: State::Waiting {
                        wait: Box::pin(async move {
                            let permit = reservation.run().await;
                            std::future::poll_fn(|cx| inner.poll_ready(cx))
                                .await
                                .map_err(Into::into)?;
                            Ok((inner.call(req), permit))
                        }),
                    },
                }
            }
        }
    }
}

// === ResponseFuture ===

type Wait<F> = Pin<Box<dyn Future<Output = Result<(F, Permit), BoxError>> + Send>>;

pin_project! {
    /// Response future of [`BreakerService`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // Queued for a running slot.
        Waiting { wait: Wait<F> },
        // Running in the inner service.
        Running { #[pin] inner: F, permit: Option<Permit> },
        // Rejected: the queue is full.
        Failed { error: Option<BoxError> },
    }
}

impl<F> ResponseFuture<F> {
    fn running(inner: F, permit: Option<Permit>) -> Self {
        Self {
            state: State::Running { inner, permit },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<Guarded<B, Permit>>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut state = self.as_mut().project().state;
            match state.as_mut().project() {
                StateProj::Waiting { wait } => {
                    let (inner, permit) = ready!(wait.as_mut().poll(cx))?;
                    state.set(State::Running {
                        inner,
                        permit: Some(permit),
                    });
                }
                StateProj::Running { inner, permit } => {
                    let res = ready!(inner.poll(cx)).map_err(Into::into)?;
                    let permit = permit.take();
                    return Poll::Ready(Ok(res.map(|b| match permit {
                        Some(p) => Guarded::new(b, p),
                        None => Guarded::unguarded(b),
                    })));
                }
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error.take().expect("polled after completion")));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cc_one_admits_one_running_and_ten_queued() {
        let b = Breaker::new(1);
        let mut held = Vec::new();
        for _ in 0..11 {
            held.push(b.try_reserve().expect("room"));
        }
        assert!(b.try_reserve().is_err(), "the 12th is rejected");
        assert_eq!(b.in_flight(), 11);
        held.pop();
        assert!(b.try_reserve().is_ok(), "a freed place is reusable");
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn waiters_run_when_the_slot_is_released() {
        let b = Breaker::new(1);
        let first = b.try_reserve().unwrap().try_run().expect("free slot");
        let second = b.try_reserve().unwrap();
        let second = second.try_run().expect_err("slot is taken");
        let mut waiting = tokio_test_spawn(second.run());
        assert!(futures_poll(&mut waiting).is_pending());
        drop(first);
        assert!(futures_poll(&mut waiting).is_ready());
        assert_eq!(b.in_flight(), 0, "the permit was dropped after it resolved");
    }

    fn tokio_test_spawn<F: Future>(f: F) -> Pin<Box<F>> {
        Box::pin(f)
    }

    fn futures_poll<F: Future + ?Sized>(f: &mut Pin<Box<F>>) -> Poll<F::Output> {
        let waker = std::task::Waker::noop();
        f.as_mut().poll(&mut Context::from_waker(waker))
    }

    #[tokio::test]
    async fn layer_answers_queue_full_and_holds_the_slot_until_the_body_ends() {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        use tower_test::mock;

        use crate::body::{Body, FromBytes};

        let breaker = Breaker::new(1);
        let (svc, mut handle) = mock::pair::<Request<()>, Response<Body>>();
        let mut svc = BreakerLayer::new(breaker.clone()).layer(svc);
        handle.allow(100);

        let first = tokio::spawn(svc.clone().oneshot(Request::new(())));
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(Response::new(Body::from_bytes("body".into())));
        let res = first.await.unwrap().unwrap();
        assert_eq!(breaker.in_flight(), 1, "held while the body is unread");

        let mut queued = Vec::new();
        for _ in 0..10 {
            queued.push(tokio::spawn(svc.clone().oneshot(Request::new(()))));
        }
        while breaker.in_flight() < 11 {
            tokio::task::yield_now().await;
        }
        let err = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .unwrap_err();
        assert!(crate::error::is_caused_by::<QueueFull>(&*err));

        res.into_body().collect().await.unwrap();
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(Response::new(Body::empty()));
        drop(queued);
    }
}
