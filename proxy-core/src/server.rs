//! Serves HTTP/1.1 and h2c (prior knowledge) on one port, with TLS optional, and drains gracefully.

use std::{
    convert::Infallible, future::Future, io, net::SocketAddr, pin::Pin, sync::Arc, time::Duration,
};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::{
    rt::bounds::Http2ServerConnExec,
    server::conn::{http1, http2},
    service::HttpService,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tower::Service;

use crate::{BoxError, drain::Drain, runtime};

/// Server limits. The defaults are upstream's (Go's `net/http` and `x/net/http2`).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// How long a new connection may take to send its first bytes, and a TLS handshake to
    /// finish (default 60 s, upstream's `ReadHeaderTimeout`).
    pub header_read_timeout: Duration,
    /// Concurrent streams per HTTP/2 connection (default 250).
    pub max_concurrent_streams: u32,
    /// Largest request head, in bytes (default 1 MiB).
    pub max_header_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(60),
            max_concurrent_streams: 250,
            max_header_bytes: 1 << 20,
        }
    }
}

/// What a service learns about the connection it serves.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    /// The peer.
    pub remote: SocketAddr,
    /// Our side.
    pub local: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// Binds `addr` with `SO_REUSEADDR` and a listen backlog of `net.core.somaxconn` (Go's choice;
/// a backlog of 128 drops connections in a burst).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(runtime::somaxconn())?;
    TcpListener::from_std(socket.into())
}

/// A server for one listener. Build it, then [`serve`](Self::serve).
#[derive(Clone)]
pub struct Server {
    http1: Arc<http1::Builder>,
    http2: Arc<http2::Builder<TokioExecutor>>,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl Server {
    /// A plaintext server (HTTP/1.1 and h2c) with `config`'s limits.
    pub fn new(config: &ServerConfig) -> Self {
        let mut http1 = http1::Builder::new();
        // hyper's head-read timer also runs while a keep-alive connection waits for its next
        // request, so it would close idle connections from the activator and the ingress after
        // 60 s and race their reuse into resets. Go starts the timer at the first byte of each
        // request instead; here the timeout bounds the wait for a connection's first bytes (see
        // `sniff_h2`) and TLS handshakes.
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(config.max_header_bytes.max(8192));
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(config.max_concurrent_streams)
            .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX));
        Self {
            http1: Arc::new(http1),
            http2: Arc::new(http2),
            tls: None,
            handshake_timeout: config.header_read_timeout,
        }
    }

    /// Serves TLS (ALPN `h2` and `http/1.1`) through `acceptor` instead of plaintext.
    pub fn with_tls(mut self, acceptor: TlsAcceptor) -> Self {
        self.tls = Some(acceptor);
        self
    }

    /// Accepts connections until `drain` starts, then finishes each connection gracefully:
    /// HTTP/1.1 connections close after their current exchange, HTTP/2 ones get a GOAWAY and
    /// keep their open streams. Every connection holds a drain token until it closes.
    ///
    /// `make` builds the service for each connection; it should be cheap (clones of shared
    /// state). The service must be always ready: hyper has no backpressure hook.
    pub async fn serve<M, S, B>(self, listener: TcpListener, make: M, drain: Drain)
    where
        M: Fn(ConnInfo) -> S,
        S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let local = listener.local_addr().ok();
        loop {
            let (stream, remote) = tokio::select! {
                biased;
                () = drain.signaled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        if is_connection_error(&e) {
                            continue;
                        }
                        // Out of file descriptors or similar: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let info = ConnInfo {
                remote,
                local: local.unwrap_or(remote),
                tls: self.tls.is_some(),
            };
            let service = make(info);
            let token = drain.track();
            let this = self.clone();
            let drain = drain.clone();
            tokio::spawn(async move {
                this.serve_connection(stream, service, drain).await;
                drop(token);
            });
        }
    }

    async fn serve_connection<S, B>(&self, stream: TcpStream, service: S, drain: Drain)
    where
        S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        match &self.tls {
            None => {
                // Peeking at the preface, rather than reading it through a rewinding wrapper as
                // hyper-util's auto server does, leaves every later read of the connection direct.
                match tokio::time::timeout(self.handshake_timeout, sniff_h2(&stream)).await {
                    Ok(Ok(true)) => {
                        until_done(
                            self.http2
                                .serve_connection(TokioIo::new(stream), Ready::new(service)),
                            drain,
                        )
                        .await
                    }
                    Ok(Ok(false)) => {
                        until_done(
                            self.http1
                                .serve_connection(TokioIo::new(stream), Ready::new(service))
                                .with_upgrades(),
                            drain,
                        )
                        .await
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "connection failed before a request"),
                    Err(_) => tracing::debug!("no request before the header read timeout"),
                }
            }
            Some(acceptor) => {
                match tokio::time::timeout(self.handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let io = TokioIo::new(tls);
                        let service = Ready::new(service);
                        if io.inner().get_ref().1.alpn_protocol() == Some(b"h2") {
                            until_done(self.http2.serve_connection(io, service), drain).await;
                        } else {
                            until_done(
                                self.http1.serve_connection(io, service).with_upgrades(),
                                drain,
                            )
                            .await;
                        }
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            }
        }
    }
}

/// A served connection that can be asked to finish what it has and close.
trait Graceful: Future<Output = hyper::Result<()>> {
    fn finish(self: Pin<&mut Self>);
}

impl<I, B, S> Graceful for http1::UpgradeableConnection<I, S>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: http_body::Body + 'static,
    B::Error: Into<BoxError>,
{
    fn finish(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, B, S, E> Graceful for http2::Connection<I, S, E>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<BoxError>,
    E: Http2ServerConnExec<S::Future, B>,
{
    fn finish(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Runs `conn` to its end; once the drain starts, HTTP/1.1 finishes its exchange and HTTP/2 sends
/// a GOAWAY and finishes its open streams.
async fn until_done<C: Graceful>(conn: C, drain: Drain) {
    tokio::pin!(conn);
    let result = tokio::select! {
        res = conn.as_mut() => res,
        () = drain.signaled() => {
            conn.as_mut().finish();
            conn.await
        }
    };
    log_end(result);
}

/// Serves a tower service to hyper. hyper has no readiness step, so the service is polled for
/// readiness with a no-op waker first: every proxy-core layer is always ready, which makes that a
/// branch rather than the `Oneshot` state machine `TowerToHyperService` runs per request. A
/// service that is not ready gets a proper wait.
#[derive(Clone, Debug)]
struct Ready<S>(S);

impl<S> Ready<S> {
    fn new(service: S) -> Self {
        Self(service)
    }
}

impl<S, R> hyper::service::Service<R> for Ready<S>
where
    S: Service<R> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ReadyFuture<S, R>;

    fn call(&self, req: R) -> Self::Future {
        let mut svc = self.0.clone();
        let waker = std::task::Waker::noop();
        match svc.poll_ready(&mut std::task::Context::from_waker(waker)) {
            std::task::Poll::Ready(Ok(())) => ReadyFuture::Called { fut: svc.call(req) },
            std::task::Poll::Ready(Err(e)) => ReadyFuture::Failed { error: Some(e) },
            std::task::Poll::Pending => ReadyFuture::Waiting {
                fut: Box::pin(tower::ServiceExt::oneshot(svc, req)),
            },
        }
    }
}

pin_project_lite::pin_project! {
    #[project = ReadyFutureProj]
    enum ReadyFuture<S: Service<R>, R> {
        Called { #[pin] fut: S::Future },
        Waiting { fut: Pin<Box<tower::util::Oneshot<S, R>>> },
        Failed { error: Option<S::Error> },
    }
}

impl<S: Service<R>, R> Future for ReadyFuture<S, R> {
    type Output = Result<S::Response, S::Error>;

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project() {
            ReadyFutureProj::Called { fut } => fut.poll(cx),
            ReadyFutureProj::Waiting { fut } => fut.as_mut().poll(cx),
            ReadyFutureProj::Failed { error } => {
                std::task::Poll::Ready(Err(error.take().expect("polled after completion")))
            }
        }
    }
}

fn log_end(result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        // Clients hang up all the time; that is not an error of ours (upstream #14818).
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Whether the client opens with the HTTP/2 preface (h2c with prior knowledge). Only peeks, so
/// the bytes stay for the protocol that serves the connection.
async fn sniff_h2(stream: &TcpStream) -> io::Result<bool> {
    let mut buf = [0u8; 24];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 || !H2_PREFACE.starts_with(&buf[..n]) {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // A preface split across packets: peeking again at once would see the same bytes.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// [`bind_any`] for the setting `key`, whose name is in the error, and logs the port bound as
/// `listening (KEY)` (port 0 picks a free one; tests and operators read it from the log).
pub fn listen(port: u16, key: &str) -> Result<TcpListener, String> {
    let listener =
        bind_any(port).map_err(|e| format!("{key}: cannot listen on port {port}: {e}"))?;
    let bound = listener.local_addr().map(|a| a.port()).unwrap_or(port);
    tracing::info!(port = bound, "listening ({key})");
    Ok(listener)
}

/// Binds `port` on every address: IPv6 and IPv4 together where the host has IPv6, else IPv4, as
/// Go's `:port` does.
pub fn bind_any(port: u16) -> io::Result<TcpListener> {
    let v6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
    let dual = (|| {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV6,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_only_v6(false)?;
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&v6.into())?;
        socket.listen(runtime::somaxconn())?;
        TcpListener::from_std(socket.into())
    })();
    match dual {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(e),
        Err(_) => bind(SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port))),
    }
}

#[cfg(test)]
mod tests {
    use hyper::service::Service as _;
    use tower_test::mock;

    use super::*;

    #[tokio::test]
    async fn ready_services_are_called_directly_and_others_waited_for() {
        let (svc, mut handle) = mock::pair::<&'static str, &'static str>();
        let ready = Ready::new(svc);

        handle.allow(1);
        let direct = tokio::spawn(ready.call("now"));
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req, "now");
        send.send_response("done");
        assert_eq!(direct.await.unwrap().unwrap(), "done");

        // Not ready: the call waits for capacity instead of failing or skipping readiness.
        let waiting = tokio::spawn(ready.call("later"));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        handle.allow(1);
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req, "later");
        send.send_response("done later");
        assert_eq!(waiting.await.unwrap().unwrap(), "done later");
    }
}
