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

use http::{Request, Response};
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{net::TcpStream, sync::Notify, time::Instant};

use crate::{body::Body, error::Upstream};

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
/// Each HTTP/1.1 connection costs ~35 KiB in hyper (buffers, a dispatch channel, a task), and a
/// request occupies one for its whole exchange. When a burst keeps more requests in flight than
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
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            max_idle: 1000,
            max_header_bytes: 1 << 20,
            soft_max_connections: 128,
            stall_wait: Duration::from_millis(10),
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
    config: ClientConfig,
    idle: Mutex<Vec<http1::SendRequest<Incoming>>>,
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
            && let Some(sender) = self.pooled_http1()
        {
            return Ok(Connection(Conn::Http1 {
                sender,
                pool: self.inner.clone(),
                reused: true,
            }));
        }
        Box::pin(self.checkout_slow(protocol)).await
    }

    async fn checkout_slow(&self, protocol: Protocol) -> Result<Connection, Upstream> {
        match protocol {
            Protocol::Http1 => {
                let (sender, reused) = self.http1().await?;
                Ok(Connection(Conn::Http1 {
                    sender,
                    pool: self.inner.clone(),
                    reused,
                }))
            }
            Protocol::H2c => Ok(Connection(Conn::H2c {
                sender: self.h2c().await?,
            })),
        }
    }

    /// An idle connection, a new one, or (past the soft maximum) the next one to come back.
    async fn http1(&self) -> Result<(http1::SendRequest<Incoming>, bool), Upstream> {
        let inner = &*self.inner;
        let soft_max = inner.config.soft_max_connections;
        loop {
            if let Some(sender) = self.pooled_http1() {
                return Ok((sender, true));
            }
            // Reserve the place before dialling, so a burst cannot overshoot while connects run.
            let below_max = soft_max == 0
                || inner
                    .open
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                        (open < soft_max).then_some(open + 1)
                    })
                    .is_ok();
            if below_max {
                if soft_max == 0 {
                    inner.open.fetch_add(1, Ordering::AcqRel);
                }
                return Ok((
                    self.connect_http1(OpenSlot(self.inner.clone())).await?,
                    false,
                ));
            }
            let returned = inner.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            // A connection may have come back between the first look and registering.
            if let Some(sender) = self.pooled_http1() {
                return Ok((sender, true));
            }
            if tokio::time::timeout(inner.config.stall_wait, returned)
                .await
                .is_err()
            {
                let since = inner
                    .now_us()
                    .saturating_sub(inner.last_return_us.load(Ordering::Relaxed));
                if u128::from(since) >= inner.config.stall_wait.as_micros() {
                    return Ok((self.connect_http1(self.reserve()).await?, false));
                }
            }
        }
    }

    fn pooled_http1(&self) -> Option<http1::SendRequest<Incoming>> {
        let mut idle = lock(&self.inner.idle);
        while let Some(sender) = idle.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
            // Closed, or (rarely) still finishing its last exchange: let it go.
        }
        None
    }

    async fn connect(&self) -> Result<TcpStream, Upstream> {
        let stream = TcpStream::connect(self.inner.addr)
            .await
            .map_err(|e| Upstream::connect(&self.inner.addr.to_string(), e))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Counts a connection about to be dialled, whatever the soft maximum.
    fn reserve(&self) -> OpenSlot {
        self.inner.open.fetch_add(1, Ordering::AcqRel);
        OpenSlot(self.inner.clone())
    }

    async fn connect_http1(
        &self,
        slot: OpenSlot,
    ) -> Result<http1::SendRequest<Incoming>, Upstream> {
        let stream = self.connect().await?;
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(self.inner.config.max_header_bytes.max(8192))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(Upstream::exchange)?;
        tokio::spawn(async move {
            // Errors surface on the request that was in flight; nothing to add here.
            let _ = conn.with_upgrades().await;
            drop(slot);
        });
        Ok(sender)
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
struct OpenSlot(Arc<Inner>);

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
        sender: http1::SendRequest<Incoming>,
        pool: Arc<Inner>,
        reused: bool,
    },
    H2c {
        sender: http2::SendRequest<Incoming>,
    },
}

impl Connection {
    /// Sends `req`. The request must already be in the form the protocol expects (see
    /// [`crate::proxy`]). On a reused HTTP/1.1 connection that the upstream closed while idle,
    /// the request, never written, is retried once on a fresh connection.
    pub async fn send(self, req: Request<Incoming>, client: &Client) -> Result<Exchange, Upstream> {
        match self.0 {
            Conn::Http1 {
                mut sender,
                pool,
                reused,
            } => {
                let res = match sender.try_send_request(req).await {
                    Ok(res) => res,
                    Err(mut err) => match err.take_message() {
                        Some(req) if reused => {
                            return Box::pin(async move {
                                let mut fresh = client.connect_http1(client.reserve()).await?;
                                let res =
                                    fresh.send_request(req).await.map_err(Upstream::exchange)?;
                                Ok(with_checkin(res, fresh, pool))
                            })
                            .await;
                        }
                        _ => return Err(Upstream::exchange(err.into_error())),
                    },
                };
                Ok(with_checkin(res, sender, pool))
            }
            Conn::H2c { mut sender } => {
                sender.ready().await.map_err(Upstream::exchange)?;
                let response = sender.send_request(req).await.map_err(Upstream::exchange)?;
                Ok(Exchange {
                    response,
                    checkin: None,
                })
            }
        }
    }
}

fn with_checkin(
    response: Response<Incoming>,
    sender: http1::SendRequest<Incoming>,
    pool: Arc<Inner>,
) -> Exchange {
    Exchange {
        response,
        checkin: Some(Checkin { sender, pool }),
    }
}

/// An upstream response, with what returns its connection to the pool.
#[derive(Debug)]
pub struct Exchange {
    /// The response as received.
    pub response: Response<Incoming>,
    /// Returns the HTTP/1.1 connection to the pool; `None` for h2c.
    pub checkin: Option<Checkin>,
}

impl Exchange {
    /// The response with a body that returns its connection when it ends.
    pub fn into_response(self) -> Response<Body> {
        let checkin = self.checkin;
        self.response.map(|b| Body::upstream(b, checkin))
    }
}

/// Returns an HTTP/1.1 connection to its pool once the response that used it is over.
pub struct Checkin {
    sender: http1::SendRequest<Incoming>,
    pool: Arc<Inner>,
}

impl std::fmt::Debug for Checkin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkin").finish_non_exhaustive()
    }
}

impl Checkin {
    /// Puts the connection back; called when the response body has ended cleanly.
    pub(crate) fn release(self) {
        let Self { mut sender, pool } = self;
        if sender.is_closed() {
            return;
        }
        if sender.is_ready() {
            put(&pool, sender);
            return;
        }
        // The connection task has not yet noticed the end of the exchange; hand it back as soon
        // as it does instead of dialling a new one for the next request.
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                put(&pool, sender);
            }
        });
    }
}

fn put(pool: &Inner, sender: http1::SendRequest<Incoming>) {
    {
        let mut idle = lock(&pool.idle);
        if idle.len() >= pool.config.max_idle {
            return;
        }
        idle.push(sender);
    }
    pool.last_return_us.store(pool.now_us(), Ordering::Relaxed);
    pool.returned.notify_one();
}
