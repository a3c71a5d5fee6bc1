//! The upstream client: pooled HTTP/1.1 connections and one shared h2c connection per upstream.
//!
//! Checking out a connection and sending on it are separate steps, so a caller knows that nothing
//! of a request left this process when the checkout fails, and may try elsewhere.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::BytesMut;
use http::{Request, Response};
use hyper::{body::Incoming, client::conn::http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{net::TcpStream, sync::Notify, time::Instant};

use crate::{
    body::Body,
    error::Upstream,
    h1::{self, RawUpgrade},
};

/// Which protocol to speak upstream. The proxy mirrors the inbound one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1, one request at a time per connection.
    Http1,
    /// HTTP/2 with prior knowledge over cleartext, all requests multiplexed on one connection.
    H2c,
}

/// Client settings.
///
/// ## HTTP/1.1 connection strategy
///
/// Each HTTP/1.1 connection costs memory (a socket, a read buffer), and a request occupies one for
/// its whole exchange. When a burst keeps more requests in flight than
/// the application can work on, opening a connection per request only moves the queue into the
/// application's sockets and multiplies memory. So beyond `soft_max_connections` a request first
/// waits for a connection to come back, for as long as connections keep coming back: if none was
/// returned for `stall_wait`, the pool is held by slow exchanges (long polls, streams) rather than
/// a busy application, and the request dials a new connection after all. No request is ever
/// limited to the soft maximum, and none waits longer than `stall_wait` past the last sign of
/// progress.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Idle HTTP/1.1 connections kept per upstream (upstream keeps `cc`, or 1000 when cc is 0).
    pub max_idle: usize,
    /// Largest response head accepted, in bytes (default 1 MiB, as the server side).
    pub max_header_bytes: usize,
    /// HTTP/1.1 connections opened without first waiting for a free one (default 128; 0 turns
    /// the waiting off). See the type docs.
    pub soft_max_connections: usize,
    /// How long without any connection coming back before a waiting request dials anyway
    /// (default 10 ms).
    pub stall_wait: Duration,
    /// Longest a TCP connect may take (default: none, the kernel's own, about two minutes). A
    /// proxy in front of pods that can vanish sets one, so a black-holed address fails fast
    /// and, since nothing was sent, can be retried elsewhere.
    pub connect_timeout: Option<Duration>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            max_idle: 1000,
            max_header_bytes: 1 << 20,
            soft_max_connections: 128,
            stall_wait: Duration::from_millis(10),
            connect_timeout: None,
        }
    }
}

/// A client for one upstream address. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    addr: SocketAddr,
    authority: String,
    config: ClientConfig,
    idle: Mutex<Vec<Pooled>>,
    h2: Mutex<Option<http2::SendRequest<Incoming>>>,
    h2_connect: tokio::sync::Mutex<()>,
    /// HTTP/1.1 connections open, idle or busy.
    open: AtomicUsize,
    returned: Notify,
    epoch: Instant,
    /// When a connection last came back, in µs since `epoch`.
    last_return_us: AtomicU64,
}

impl Inner {
    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("addr", &self.addr)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `addr`.
    pub fn new(addr: SocketAddr, config: ClientConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                addr,
                authority: addr.to_string(),
                config,
                idle: Mutex::new(Vec::new()),
                h2: Mutex::new(None),
                h2_connect: tokio::sync::Mutex::new(()),
                open: AtomicUsize::new(0),
                returned: Notify::new(),
                epoch: Instant::now(),
                last_return_us: AtomicU64::new(0),
            }),
        }
    }

    /// The upstream address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Largest response head accepted.
    pub(crate) fn max_header_bytes(&self) -> usize {
        self.inner.config.max_header_bytes
    }

    /// The upstream address as a `Host` value, for requests that carry none.
    pub(crate) fn authority(&self) -> &str {
        &self.inner.authority
    }

    /// Idle HTTP/1.1 connections in the pool.
    pub fn idle_connections(&self) -> usize {
        lock(&self.inner.idle).len()
    }

    /// HTTP/1.1 connections open, idle or busy.
    pub fn open_connections(&self) -> usize {
        self.inner.open.load(Ordering::Relaxed)
    }

    /// A connection ready to carry one request. Fails only before anything was sent.
    pub async fn checkout(&self, protocol: Protocol) -> Result<Connection, Upstream> {
        // The pooled case needs no await; the rest is boxed so that the future every request
        // carries (and moves) stays small.
        if protocol == Protocol::Http1
            && let Some(pooled) = self.pooled_http1()
        {
            return Ok(Connection(Conn::Http1 {
                pooled,
                reused: true,
            }));
        }
        Box::pin(self.checkout_slow(protocol)).await
    }

    async fn checkout_slow(&self, protocol: Protocol) -> Result<Connection, Upstream> {
        match protocol {
            Protocol::Http1 => {
                let (pooled, reused) = self.http1().await?;
                Ok(Connection(Conn::Http1 { pooled, reused }))
            }
            Protocol::H2c => Ok(Connection(Conn::H2c {
                sender: self.h2c().await?,
            })),
        }
    }

    /// An idle connection, a new one, or (past the soft maximum) the next one to come back.
    async fn http1(&self) -> Result<(Pooled, bool), Upstream> {
        let inner = &*self.inner;
        let soft_max = inner.config.soft_max_connections;
        loop {
            if let Some(pooled) = self.pooled_http1() {
                return Ok((pooled, true));
            }
            let slot = if soft_max == 0 {
                Some(OpenSlot::take(&self.inner))
            } else {
                OpenSlot::take_below(&self.inner, soft_max)
            };
            if let Some(slot) = slot {
                return Ok((self.connect_http1(slot).await?, false));
            }
            let returned = inner.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            // A connection may have come back between the first look and registering.
            if let Some(pooled) = self.pooled_http1() {
                return Ok((pooled, true));
            }
            if tokio::time::timeout(inner.config.stall_wait, returned)
                .await
                .is_err()
            {
                let since = inner
                    .now_us()
                    .saturating_sub(inner.last_return_us.load(Ordering::Relaxed));
                if u128::from(since) >= inner.config.stall_wait.as_micros() {
                    return Ok((self.dial_http1().await?, false));
                }
            }
        }
    }

    /// Opens HTTP/1.1 connections until `n` are open (never past the soft maximum or the idle
    /// limit) and parks them in the pool; returns how many it opened. Stops at the first
    /// connect that fails.
    ///
    /// For an upstream that accepts connections but cannot serve yet (a pod still starting,
    /// with requests waiting for it): the connects then happen while nothing else can, instead
    /// of in the burst that follows the moment it is ready.
    pub async fn prewarm_http1(&self, n: usize) -> usize {
        let inner = &*self.inner;
        let mut limit = n.min(inner.config.max_idle);
        if inner.config.soft_max_connections > 0 {
            limit = limit.min(inner.config.soft_max_connections);
        }
        let mut opened = 0;
        while let Some(slot) = OpenSlot::take_below(&self.inner, limit) {
            match self.connect_http1(slot).await {
                Ok(pooled) => {
                    if !self.put_http1(pooled) {
                        // The pool filled up meanwhile: more would only be closed again.
                        break;
                    }
                    opened += 1;
                }
                Err(_) => break,
            }
        }
        opened
    }

    fn pooled_http1(&self) -> Option<Pooled> {
        loop {
            let pooled = lock(&self.inner.idle).pop()?;
            // A connection that sat idle may have been closed by the app (Node.js closes idle
            // ones after 5 s) or written to out of turn; one non-blocking read tells.
            if pooled.idle_since.elapsed() < RECHECK_IDLE_AFTER || h1::still_open(&pooled.io) {
                return Some(pooled);
            }
        }
    }

    /// A fresh HTTP/1.1 connection, counted whatever the soft maximum.
    pub(crate) async fn dial_http1(&self) -> Result<Pooled, Upstream> {
        self.connect_http1(OpenSlot::take(&self.inner)).await
    }

    async fn connect_http1(&self, slot: OpenSlot) -> Result<Pooled, Upstream> {
        let io = self.connect().await?;
        Ok(Pooled::new(io, BytesMut::with_capacity(8192), slot))
    }

    /// Puts a connection whose last exchange ended cleanly back in the pool; false when the
    /// pool was full and the connection was closed instead.
    pub(crate) fn put_http1(&self, mut pooled: Pooled) -> bool {
        let pool = &*self.inner;
        let now = Instant::now();
        pooled.idle_since = now;
        {
            let mut idle = lock(&pool.idle);
            if idle.len() >= pool.config.max_idle {
                return false;
            }
            idle.push(pooled);
        }
        let since_epoch = now.saturating_duration_since(pool.epoch).as_micros();
        pool.last_return_us.store(
            u64::try_from(since_epoch).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        pool.returned.notify_one();
        true
    }

    async fn connect(&self) -> Result<TcpStream, Upstream> {
        let addr = self.inner.addr;
        let connect = TcpStream::connect(addr);
        let result = match self.inner.config.connect_timeout {
            Some(limit) => tokio::time::timeout(limit, connect)
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
            None => connect.await,
        };
        let stream = result.map_err(|e| Upstream::connect(&addr.to_string(), e))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn h2c(&self) -> Result<http2::SendRequest<Incoming>, Upstream> {
        if let Some(sender) = self.live_h2() {
            return Ok(sender);
        }
        // One connect at a time, so a burst on a cold upstream shares one connection.
        let _gate = self.inner.h2_connect.lock().await;
        if let Some(sender) = self.live_h2() {
            return Ok(sender);
        }
        let stream = self.connect().await?;
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder.max_header_list_size(
            u32::try_from(self.inner.config.max_header_bytes).unwrap_or(u32::MAX),
        );
        let (sender, conn) = builder
            .handshake(TokioIo::new(stream))
            .await
            .map_err(Upstream::exchange)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        *lock(&self.inner.h2) = Some(sender.clone());
        Ok(sender)
    }

    fn live_h2(&self) -> Option<http2::SendRequest<Incoming>> {
        lock(&self.inner.h2)
            .as_ref()
            .filter(|s| !s.is_closed())
            .cloned()
    }
}

/// One open (or opening) HTTP/1.1 connection, counted against the soft maximum until dropped.
pub(crate) struct OpenSlot(Arc<Inner>);

impl OpenSlot {
    /// A place whatever the count.
    fn take(inner: &Arc<Inner>) -> Self {
        inner.open.fetch_add(1, Ordering::AcqRel);
        Self(inner.clone())
    }

    /// A place if fewer than `limit` are open. Taken before the connect, so that requests and
    /// prewarming dialling at once cannot overshoot together while connects run.
    fn take_below(inner: &Arc<Inner>, limit: usize) -> Option<Self> {
        inner
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < limit).then_some(open + 1)
            })
            .ok()
            .map(|_| Self(inner.clone()))
    }
}

/// How long a connection may sit idle before it is checked for a close before reuse.
///
/// Under load a connection is reused within microseconds and the check (one `recv` that would
/// block) is skipped; an app that writes past its response (a body after a HEAD answer, a late
/// 408 on an idle connection) is caught unless its stray bytes land in that window.
const RECHECK_IDLE_AFTER: Duration = Duration::from_millis(1);

/// An idle HTTP/1.1 connection with its read buffer.
pub(crate) struct Pooled {
    pub(crate) io: TcpStream,
    pub(crate) buf: BytesMut,
    pub(crate) slot: OpenSlot,
    idle_since: Instant,
}

impl Pooled {
    /// A connection; `idle_since` is stamped when it goes back to the pool.
    pub(crate) fn new(io: TcpStream, buf: BytesMut, slot: OpenSlot) -> Self {
        let idle_since = slot.0.epoch;
        Self {
            io,
            buf,
            slot,
            idle_since,
        }
    }
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled").finish_non_exhaustive()
    }
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        // A waiter may now dial below the soft maximum.
        self.0.returned.notify_one();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A checked-out connection for one request.
#[derive(Debug)]
pub struct Connection(Conn);

#[derive(Debug)]
enum Conn {
    Http1 {
        pooled: Pooled,
        reused: bool,
    },
    H2c {
        sender: http2::SendRequest<Incoming>,
    },
}

impl Connection {
    /// Sends `req`. The request must already be in the form the protocol expects (see
    /// [`crate::proxy`]). A replayable request that meets a reused HTTP/1.1 connection the
    /// upstream had closed is sent again on a fresh connection.
    pub async fn send(self, req: Request<Incoming>, client: &Client) -> Result<Exchange, Upstream> {
        self.try_send(req, client).await.map_err(|(e, _)| e)
    }

    /// [`send`](Self::send), giving the request back when it may go to another upstream:
    /// nothing of it reached this one, or it is replayable (Go's rule) and the reused
    /// connection died before any byte of a response, with no fresh one to be had.
    pub async fn try_send(
        self,
        req: Request<Incoming>,
        client: &Client,
    ) -> Result<Exchange, (Upstream, Option<Request<Incoming>>)> {
        match self.0 {
            Conn::Http1 { pooled, reused } => {
                let done = h1::exchange(pooled, reused, req, client).await?;
                Ok(Exchange {
                    response: done.response.map(Body::http1),
                    upgraded: done.upgraded,
                })
            }
            Conn::H2c { mut sender } => {
                if let Err(e) = sender.ready().await {
                    return Err((Upstream::exchange(e), Some(req)));
                }
                let response = sender
                    .send_request(req)
                    .await
                    .map_err(|e| (Upstream::exchange(e), None))?;
                Ok(Exchange {
                    response: response.map(Body::h2),
                    upgraded: None,
                })
            }
        }
    }
}

/// An upstream response.
#[derive(Debug)]
pub struct Exchange {
    /// The response; its body returns an HTTP/1.1 connection to the pool when it ends.
    pub response: Response<Body>,
    /// The upstream's side of a connection it switched to another protocol (`101`).
    pub upgraded: Option<RawUpgrade>,
}
