//! Wire-level tests of the HTTP/1.1 upstream client: the proxy's own server and edge in front of
//! a scripted app on a raw socket, driven by a raw client, so that every byte on both sides is
//! the test's choice.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use proxy_core::{
    client::{Client, ClientConfig},
    drain::Drain,
    edge::{EdgeLayer, Texts},
    proxy::Proxy,
    server::{ConnInfo, Server, ServerConfig},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::{Instant, sleep, timeout},
};
use tower::Layer;

/// The longest any single wait in these tests may take.
const WAIT: Duration = Duration::from_secs(5);

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// Waits (bounded) until `f` holds.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        sleep(Duration::from_millis(5)).await;
    }
}

// === the proxy ===

/// The proxy's server, edge and client in front of `upstream`; returns its address and client.
async fn proxy(upstream: SocketAddr, config: ClientConfig) -> (SocketAddr, Client) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = Client::new(upstream, config);
    let proxy = Proxy::new(client.clone());
    let drain = Drain::new();
    let edge = EdgeLayer::new(drain.clone(), Texts::default());
    let make = move |info: ConnInfo| edge.layer(proxy.with_peer(info.remote.ip()));
    tokio::spawn(Server::new(&ServerConfig::default()).serve(listener, make, drain));
    (addr, client)
}

/// A scripted app and a proxy in front of it.
async fn setup() -> (TcpListener, SocketAddr, Client) {
    setup_with(ClientConfig::default()).await
}

async fn setup_with(config: ClientConfig) -> (TcpListener, SocketAddr, Client) {
    let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, client) = proxy(app.local_addr().unwrap(), config).await;
    (app, addr, client)
}

// === raw HTTP/1.1 on both sides ===

/// A message head.
#[derive(Debug, Clone)]
struct Head {
    start: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn status(&self) -> u16 {
        self.start.split(' ').nth(1).unwrap().parse().unwrap()
    }

    fn method(&self) -> &str {
        self.start.split(' ').next().unwrap()
    }

    fn chunked(&self) -> bool {
        self.get("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    fn length(&self) -> Option<usize> {
        self.get("content-length")
            .map(|v| v.trim().parse().unwrap())
    }
}

/// A message: head, body and trailers.
#[derive(Debug)]
struct Msg {
    head: Head,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

/// One side of a raw connection with a read buffer.
struct Wire {
    io: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    async fn connect(addr: SocketAddr) -> Self {
        let io = within("connect", TcpStream::connect(addr)).await.unwrap();
        io.set_nodelay(true).unwrap();
        Self {
            io,
            buf: Vec::new(),
        }
    }

    async fn accept(listener: &TcpListener) -> Self {
        let (io, _) = within("accept", listener.accept()).await.unwrap();
        io.set_nodelay(true).unwrap();
        Self {
            io,
            buf: Vec::new(),
        }
    }

    /// Reads more into the buffer; cancel-safe. Returns how much came (0 at EOF).
    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut tmp = [0u8; 16384];
        let n = self.io.read(&mut tmp).await?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    async fn fill_or_eof(&mut self) -> usize {
        within("read", self.fill()).await.unwrap_or(0)
    }

    async fn write(&mut self, bytes: &[u8]) {
        within("write", self.io.write_all(bytes)).await.unwrap();
    }

    /// A head, or `None` on a clean EOF before any byte. Cancel-safe.
    async fn try_head(&mut self) -> Option<Head> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let text = String::from_utf8(self.buf.drain(..end + 4).collect()).unwrap();
                let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
                let start = lines.next().unwrap().to_owned();
                let headers = lines
                    .map(|l| {
                        let (k, v) = l.split_once(':').unwrap();
                        (k.trim().to_owned(), v.trim().to_owned())
                    })
                    .collect();
                return Some(Head { start, headers });
            }
            match self.fill().await {
                Ok(0) | Err(_) if self.buf.is_empty() => return None,
                Ok(0) | Err(_) => panic!("EOF inside a head: {:?}", self.buf),
                Ok(_) => {}
            }
        }
    }

    async fn head(&mut self) -> Head {
        within("head", self.try_head()).await.expect("a head")
    }

    async fn exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill_or_eof().await > 0, "EOF in a body");
        }
        self.buf.drain(..n).collect()
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8(self.buf.drain(..end + 2).collect()).unwrap();
                return line.trim_end().to_owned();
            }
            assert!(self.fill_or_eof().await > 0, "EOF in a line");
        }
    }

    async fn read_to_end(&mut self) -> Vec<u8> {
        while self.fill_or_eof().await > 0 {}
        std::mem::take(&mut self.buf)
    }

    /// Reads a chunked body and its trailers.
    async fn chunked(&mut self) -> (Vec<u8>, Vec<(String, String)>) {
        let mut body = Vec::new();
        loop {
            let line = self.line().await;
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).unwrap();
            if size == 0 {
                break;
            }
            body.extend(self.exact(size).await);
            assert_eq!(self.exact(2).await, b"\r\n");
        }
        let mut trailers = Vec::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                return (body, trailers);
            }
            let (k, v) = line.split_once(':').unwrap();
            trailers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }

    /// A request (the app's side), or `None` on EOF.
    async fn try_request(&mut self) -> Option<Msg> {
        let head = self.try_head().await?;
        let (body, trailers) = if head.chunked() {
            self.chunked().await
        } else {
            let n = head.length().unwrap_or(0);
            (self.exact(n).await, Vec::new())
        };
        Some(Msg {
            head,
            body,
            trailers,
        })
    }

    async fn request(&mut self) -> Msg {
        within("request", self.try_request())
            .await
            .expect("a request")
    }

    /// A response (the client's side), skipping `100 Continue`.
    async fn response(&mut self, to_head: bool) -> Msg {
        let mut head = self.head().await;
        while head.status() == 100 {
            head = self.head().await;
        }
        let status = head.status();
        let (body, trailers) = if to_head || status == 204 || status == 304 || status == 101 {
            (Vec::new(), Vec::new())
        } else if head.chunked() {
            self.chunked().await
        } else if let Some(n) = head.length() {
            (self.exact(n).await, Vec::new())
        } else {
            (self.read_to_end().await, Vec::new())
        };
        Msg {
            head,
            body,
            trailers,
        }
    }

    /// Whether the peer closes (EOF or reset) within `limit`, reading and discarding anything
    /// that still arrives.
    async fn drains_to_close(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => self.buf.clear(),
                Err(_) => return false,
            }
        }
    }

    /// Whether the peer closed (EOF or reset) within a short while, with nothing else to read.
    async fn closed_soon(&mut self, within_: Duration) -> bool {
        match timeout(within_, self.fill()).await {
            Ok(Ok(0) | Err(_)) => true,
            Ok(Ok(_)) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&self.buf)),
            Err(_) => false,
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends a bodiless request on `wire` and reads the response.
async fn get(wire: &mut Wire, method: &str, path: &str, extra: &str) -> Msg {
    wire.write(format!("{method} {path} HTTP/1.1\r\nhost: test\r\n{extra}\r\n").as_bytes())
        .await;
    wire.response(method == "HEAD").await
}

/// The app's next request: on `conn`, or on a new connection that then replaces `conn`.
/// Says whether `conn` (the previous connection) carried it.
async fn next_request(app: &TcpListener, conn: &mut Wire) -> (bool, Msg) {
    let reused = within("next request", async {
        tokio::select! {
            head = conn.try_head() => match head {
                // Put it back and parse the whole request below.
                Some(h) => {
                    let mut raw = format!("{}\r\n", h.start);
                    for (k, v) in &h.headers {
                        raw.push_str(&format!("{k}: {v}\r\n"));
                    }
                    raw.push_str("\r\n");
                    let mut b = raw.into_bytes();
                    b.extend_from_slice(&conn.buf);
                    conn.buf = b;
                    true
                }
                None => {
                    *conn = Wire::accept(app).await;
                    false
                }
            },
            accepted = app.accept() => {
                let (io, _) = accepted.unwrap();
                io.set_nodelay(true).unwrap();
                *conn = Wire { io, buf: Vec::new() };
                false
            }
        }
    })
    .await;
    (reused, conn.request().await)
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

// === response framing ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_204_and_304_responses_have_no_body_and_keep_the_connection() {
    let (app, addr, client) = setup().await;
    let mut c = Wire::connect(addr).await;
    let script = tokio::spawn(async move {
        let mut up = Wire::accept(&app).await;
        let req = up.request().await;
        assert_eq!(req.head.method(), "HEAD");
        up.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
            .await;
        let (reused, req) = next_request(&app, &mut up).await;
        assert!(reused, "the connection after a HEAD is reused");
        assert_eq!(req.head.start, "GET /204 HTTP/1.1");
        up.write(b"HTTP/1.1 204 No Content\r\nx-a: 1\r\n\r\n").await;
        let (reused, _) = next_request(&app, &mut up).await;
        assert!(reused, "the connection after a 204 is reused");
        up.write(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n")
            .await;
        let (reused, _) = next_request(&app, &mut up).await;
        assert!(reused, "the connection after a 304 is reused");
        up.write(OK).await;
    });
    let res = get(&mut c, "HEAD", "/", "").await;
    assert_eq!(res.head.status(), 200);
    assert_eq!(res.head.get("content-length"), Some("5"));
    let res = get(&mut c, "GET", "/204", "").await;
    assert_eq!((res.head.status(), res.head.get("x-a")), (204, Some("1")));
    let res = get(&mut c, "GET", "/304", "").await;
    assert_eq!(res.head.status(), 304);
    let res = get(&mut c, "GET", "/", "").await;
    assert_eq!(res.body, b"ok");
    within("script", script).await.unwrap();
    assert_eq!(client.open_connections(), 1);
    eventually("pooled", || client.idle_connections() == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_with_extensions_and_trailers_split_across_reads() {
    let (app, addr, client) = setup().await;
    let mut c = Wire::connect(addr).await;
    let script = tokio::spawn(async move {
        let mut up = Wire::accept(&app).await;
        up.request().await;
        let wire: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\ntrailer: grpc-status\r\ntransfer-encoding: chunked\r\n\r\n5",
            b";ext=\"a;b\"\r\nhel",
            b"lo\r",
            b"\n6\r\n world\r\n0;last\r",
            b"\ngrpc-status: 0\r\n",
            b"\r",
            b"\n",
        ];
        for part in wire {
            up.write(part).await;
            sleep(Duration::from_millis(20)).await;
        }
        let (reused, _) = next_request(&app, &mut up).await;
        assert!(
            reused,
            "a chunked body read to its end leaves the connection reusable"
        );
        up.write(OK).await;
    });
    let res = get(&mut c, "GET", "/", "te: trailers\r\n").await;
    assert_eq!(res.body, b"hello world");
    assert_eq!(
        res.trailers,
        vec![("grpc-status".to_owned(), "0".to_owned())]
    );
    assert_eq!(get(&mut c, "GET", "/", "").await.body, b"ok");
    within("script", script).await.unwrap();
    assert_eq!(client.open_connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_bodies_split_across_reads_are_streamed() {
    let (app, addr, _client) = setup().await;
    let mut c = Wire::connect(addr).await;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let script = tokio::spawn(async move {
        let mut up = Wire::accept(&app).await;
        up.request().await;
        up.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello")
            .await;
        // The second half only after the client has seen the first.
        within("client saw the first half", rx).await.unwrap();
        up.write(b"world").await;
        let (reused, _) = next_request(&app, &mut up).await;
        assert!(reused);
        up.write(OK).await;
    });
    c.write(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
    let head = c.head().await;
    assert_eq!(head.length(), Some(10));
    while c.buf.len() < 5 {
        c.fill_or_eof().await;
    }
    tx.send(()).unwrap();
    assert_eq!(c.exact(10).await, b"helloworld");
    assert_eq!(get(&mut c, "GET", "/", "").await.body, b"ok");
    within("script", script).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delimited_bodies_stream_and_the_connection_is_not_reused() {
    for te in ["", "transfer-encoding: identity\r\n"] {
        let (app, addr, client) = setup().await;
        let mut c = Wire::connect(addr).await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let script = tokio::spawn(async move {
            let mut up = Wire::accept(&app).await;
            up.request().await;
            up.write(format!("HTTP/1.1 200 OK\r\n{te}\r\npart one,").as_bytes())
                .await;
            within("client saw part one", rx).await.unwrap();
            up.write(b" part two").await;
            drop(up);
            let mut up = Wire::accept(&app).await;
            up.request().await;
            up.write(OK).await;
        });
        c.write(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
        let head = c.head().await;
        assert!(head.chunked(), "{head:?}");
        assert_eq!(head.get("content-length"), None);
        let first = c.line().await;
        let size = usize::from_str_radix(&first, 16).unwrap();
        assert_eq!(c.exact(size).await, b"part one,", "streamed before the end");
        tx.send(()).unwrap();
        assert_eq!(c.exact(2).await, b"\r\n");
        let (rest, _) = c.chunked().await;
        assert_eq!(rest, b" part two");
        assert_eq!(get(&mut c, "GET", "/", "").await.body, b"ok");
        within("script", script).await.unwrap();
        assert_eq!(
            client.open_connections(),
            1,
            "the close-delimited one is gone"
        );
    }
}

/// RFC 9112 §6.3: with both `Transfer-Encoding` and `Content-Length`, the former frames the
/// message, and an intermediary MUST remove `Content-Length` before forwarding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_responses_lose_their_content_length() {
    let (app, addr, _client) = setup().await;
    let mut c = Wire::connect(addr).await;
    let script = tokio::spawn(async move {
        let mut up = Wire::accept(&app).await;
        up.request().await;
        up.write(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n\
              b\r\nhello world\r\n0\r\n\r\n",
        )
        .await;
        // Keep the connection open until the client is done.
        let _ = timeout(WAIT, up.try_request()).await;
    });
    c.write(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
    let res = c.response(false).await;
    assert_eq!(res.head.get("content-length"), None, "{:?}", res.head);
    assert_eq!(res.body, b"hello world");
    script.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_and_http10_responses_are_not_reused() {
    let (app, addr, client) = setup().await;
    let mut c = Wire::connect(addr).await;
    let script = tokio::spawn(async move {
        let mut up = Wire::accept(&app).await;
        up.request().await;
        up.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\na")
            .await;
        let (reused, _) = next_request(&app, &mut up).await;
        assert!(!reused, "Connection: close");
        up.write(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\nb")
            .await;
        let (reused, _) = next_request(&app, &mut up).await;
        assert!(!reused, "HTTP/1.0 without keep-alive");
        up.write(b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\nc")
            .await;
        let (reused, _) = next_request(&app, &mut up).await;
        assert!(reused, "HTTP/1.0 with keep-alive");
        up.write(OK).await;
    });
    for want in [&b"a"[..], b"b", b"c", b"ok"] {
        let res = get(&mut c, "GET", "/", "").await;
        assert_eq!(res.body, want);
        assert_eq!(res.head.get("connection"), None, "hop-by-hop");
    }
    within("script", script).await.unwrap();
    eventually("one connection left", || client.open_connections() == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_response_heads_are_502() {
    let bad: &[&[u8]] = &[
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab",
    ];
    for (i, wire) in bad.iter().enumerate() {
        let (app, addr, client) = setup().await;
        let mut c = Wire::connect(addr).await;
        let wire = *wire;
        let script = tokio::spawn(async move {
            let mut up = Wire::accept(&app).await;
            up.request().await;
            up.write(wire).await;
            drop(up);
            // The proxy still works afterwards, on a fresh connection.
            let mut up = Wire::accept(&app).await;
            up.request().await;
            up.write(OK).await;
            up
        });
        c.write(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
        if i == bad.len() - 1 {
            // Truncated body: the head went out already; the client sees the body abort.
            // Truncated body: the client sees the exchange abort (hyper may not even have
            // flushed the head), never a complete response.
            let got = c.read_to_end().await;
            assert!(
                find(&got, b"\r\n\r\nab").is_none_or(|at| got.len() < at + 4 + 5),
                "{:?}",
                String::from_utf8_lossy(&got)
            );
            c = Wire::connect(addr).await;
        } else {
            let res = c.response(false).await;
            assert_eq!(res.head.status(), 502, "case {i}: {res:?}");
        }
        assert_eq!(get(&mut c, "GET", "/", "").await.body, b"ok", "case {i}");
        let _up = within("script", script).await.unwrap();
        eventually("only the good connection is open", || {
            client.open_connections() == 1
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_mid_response_aborts_the_body_and_the_connection_is_dropped() {
    let (app, addr, client) = setup().await;
    let mut c = Wire::connect(addr).await;
    let script = tokio::spawn(async move {
        let mut up = Wire::accept(&app).await;
        up.request().await;
        up.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
            .await;
        sleep(Duration::from_millis(50)).await;
        up.io.set_zero_linger().unwrap();
        drop(up);
        let mut up = Wire::accept(&app).await;
        up.request().await;
        up.write(OK).await;
        up
    });
    c.write(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
    assert_eq!(c.head().await.length(), Some(100));
    let got = c.read_to_end().await;
    assert_eq!(got, b"0123456789", "the client sees the body end early");
    let mut c = Wire::connect(addr).await;
    assert_eq!(get(&mut c, "GET", "/", "").await.body, b"ok");
    let _up = within("script", script).await.unwrap();
    eventually("the broken connection is not counted", || {
        client.open_connections() == 1
    })
    .await;
}

// === connection reuse ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_on_a_connection_the_app_closed_is_retried_on_a_fresh_one() {
    let (app, addr, client) = setup().await;
    let mut c = Wire::connect(addr).await;
    let script = tokio::spawn(async move {
        let mut up = Wire::accept(&app).await;
        up.request().await;
        up.write(OK).await;
        // The app closes the idle connection (as Node.js does after its keep-alive timeout).
        sleep(Duration::from_millis(50)).await;
        drop(up);
        let mut up = Wire::accept(&app).await;
        let req = up.request().await;
        assert_eq!(req.head.start, "GET /again HTTP/1.1");
        up.write(OK).await;
        up
    });
    assert_eq!(get(&mut c, "GET", "/", "").await.body, b"ok");
    sleep(Duration::from_millis(150)).await;
    // Below the 500 ms after which the pool checks an idle connection: the exchange finds out.
    assert_eq!(get(&mut c, "GET", "/again", "").await.body, b"ok");
    let _up = within("script", script).await.unwrap();
    assert_eq!(client.open_connections(), 1);
}

/// Sends `request` as the second exchange of a client connection; the app reads it on the reused
/// upstream connection, then dies without answering (say, after charging a card). Returns how
/// many times the app saw it and the status the client got.
async fn deliveries_when_the_app_dies(request: &'static [u8]) -> (usize, u16) {
    let (app, addr, _client) = setup().await;
    let seen = Arc::new(AtomicUsize::new(0));
    let seen2 = seen.clone();
    let script = tokio::spawn(async move {
        let mut up = Wire::accept(&app).await;
        up.request().await;
        up.write(OK).await;
        let (reused, req) = next_request(&app, &mut up).await;
        assert!(reused);
        assert_eq!(req.head.method(), "POST");
        seen2.fetch_add(1, Ordering::SeqCst);
        drop(up);
        // Any further connection would be a second delivery.
        if let Ok(Ok((io, _))) = timeout(Duration::from_millis(500), app.accept()).await {
            let mut up = Wire {
                io,
                buf: Vec::new(),
            };
            if up.try_request().await.is_some() {
                seen2.fetch_add(1, Ordering::SeqCst);
                up.write(OK).await;
            }
        }
    });
    let mut c = Wire::connect(addr).await;
    assert_eq!(get(&mut c, "GET", "/", "").await.body, b"ok");
    c.write(request).await;
    let status = c.response(false).await.head.status();
    within("script", script).await.unwrap();
    (seen.load(Ordering::SeqCst), status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_with_a_body_is_never_sent_twice() {
    let (seen, status) = deliveries_when_the_app_dies(
        b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(
        (seen, status),
        (1, 502),
        "the POST reached the app {seen} times"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_with_a_body_on_a_connection_the_app_closed_goes_on_a_fresh_one() {
    let (app, addr, client) = setup().await;
    let script = tokio::spawn(async move {
        let mut up = Wire::accept(&app).await;
        up.request().await;
        up.write(OK).await;
        sleep(Duration::from_millis(50)).await;
        drop(up);
        let mut up = Wire::accept(&app).await;
        let req = up.request().await;
        assert_eq!(req.body, b"hello");
        up.write(OK).await;
        up
    });
    let mut c = Wire::connect(addr).await;
    assert_eq!(get(&mut c, "GET", "/", "").await.body, b"ok");
    sleep(Duration::from_millis(150)).await;
    c.write(b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\nhello")
        .await;
    assert_eq!(c.response(false).await.body, b"ok");
    let _up = within("script", script).await.unwrap();
    assert_eq!(client.open_connections(), 1);
}

/// What [`Connection::try_send`](proxy_core::client::Connection::try_send) did with a request
/// whose reused connection turned out dead and whose upstream then refused a new one: `handed
/// back` (another upstream may take it), `kept` (it may have been seen) or the response.
async fn fate_when_the_upstream_is_gone(request: &'static [u8]) -> String {
    use http::{Request, Response};
    use http_body_util::{BodyExt, Full};
    use proxy_core::client::Protocol;

    let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = Client::new(app.local_addr().unwrap(), ClientConfig::default());
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = front.local_addr().unwrap();
    let svc = tower::service_fn(move |req: Request<hyper::body::Incoming>| {
        let client = client.clone();
        async move {
            let conn = client.checkout(Protocol::Http1).await.unwrap();
            let text = match conn.try_send(req, &client).await {
                Ok(ex) => {
                    let body = ex.response.into_body().collect().await.unwrap().to_bytes();
                    String::from_utf8_lossy(&body).into_owned()
                }
                Err((_, Some(_))) => "handed back".to_owned(),
                Err((_, None)) => "kept".to_owned(),
            };
            Ok::<_, std::convert::Infallible>(Response::new(Full::new(bytes::Bytes::from(text))))
        }
    });
    tokio::spawn(Server::new(&ServerConfig::default()).serve(
        front,
        move |_: ConnInfo| svc.clone(),
        Drain::new(),
    ));
    let script = tokio::spawn(async move {
        let mut up = Wire::accept(&app).await;
        up.request().await;
        up.write(OK).await;
        // The pod goes away: nothing listens any more, and the pooled connection dies as soon
        // as the next request arrives on it.
        drop(app);
        up.try_head().await;
    });
    let mut c = Wire::connect(addr).await;
    assert_eq!(get(&mut c, "GET", "/", "").await.body, b"ok");
    c.write(request).await;
    let text = String::from_utf8(c.response(false).await.body).unwrap();
    within("script", script).await.unwrap();
    text
}

/// A pod that died between two requests costs none of them: the GET it never answered is safe
/// to send again (Go's rule), so when the pod refuses a new connection the request is given back
/// for another pod; a POST that reached the dead connection is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayable_request_is_handed_back_when_its_upstream_is_gone() {
    assert_eq!(
        fate_when_the_upstream_is_gone(b"GET /again HTTP/1.1\r\nhost: t\r\n\r\n").await,
        "handed back"
    );
    assert_eq!(
        fate_when_the_upstream_is_gone(
            b"POST /charge HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n"
        )
        .await,
        "kept"
    );
}

/// RFC 9112 §9.3.1.1: "A proxy MUST NOT automatically retry non-idempotent requests." A POST
/// without a body is still a POST; Go's transport (upstream's queue-proxy) only replays GET, HEAD,
/// OPTIONS and TRACE (or requests with an `Idempotency-Key`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bodiless_post_is_never_sent_twice() {
    let (seen, status) = deliveries_when_the_app_dies(
        b"POST /charge HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(
        (seen, status),
        (1, 502),
        "the POST reached the app {seen} times"
    );
}

/// Bytes an app sends on an idle connection (here: a body after a HEAD response, which buggy
/// apps do) must not be read as the next request's response. Go's transport and hyper's client
/// watch idle connections and close one that receives anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_arriving_on_an_idle_connection_do_not_poison_the_next_request() {
    let (app, addr, _client) = setup().await;
    let script = tokio::spawn(async move {
        let mut up = Wire::accept(&app).await;
        up.request().await;
        up.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
            .await;
        sleep(Duration::from_millis(30)).await;
        up.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale")
            .await;
        // Whichever connection the next request comes on gets a proper answer.
        let (_, req) = next_request(&app, &mut up).await;
        assert_eq!(req.head.start, "GET /next HTTP/1.1");
        up.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh")
            .await;
        up
    });
    let mut c = Wire::connect(addr).await;
    assert_eq!(get(&mut c, "HEAD", "/", "").await.head.status(), 200);
    sleep(Duration::from_millis(100)).await;
    let res = get(&mut c, "GET", "/next", "").await;
    assert_eq!(res.body, b"fresh", "{res:?}");
    let _up = within("script", script).await;
}

// === request bodies ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_with_length_chunked_and_trailers_arrive_intact() {
    let (app, addr, client) = setup().await;
    let script = tokio::spawn(async move {
        let mut up = Wire::accept(&app).await;
        let req = up.request().await;
        assert_eq!(req.head.length(), Some(11));
        assert!(!req.head.chunked());
        assert_eq!(req.body, b"hello world");
        up.write(OK).await;
        let (reused, req) = next_request(&app, &mut up).await;
        assert!(reused);
        assert!(req.head.chunked(), "{:?}", req.head);
        assert_eq!(req.head.get("content-length"), None);
        assert_eq!(req.body, b"hello chunked world");
        assert_eq!(req.trailers, vec![("x-sum".to_owned(), "42".to_owned())]);
        up.write(OK).await;
        let (reused, req) = next_request(&app, &mut up).await;
        assert!(reused, "the connection is reused after a fully sent body");
        assert_eq!(req.head.method(), "GET");
        up.write(OK).await;
    });
    let mut c = Wire::connect(addr).await;
    c.write(b"PUT / HTTP/1.1\r\nhost: t\r\ncontent-length: 11\r\n\r\nhello")
        .await;
    sleep(Duration::from_millis(20)).await;
    c.write(b" world").await;
    assert_eq!(c.response(false).await.body, b"ok");
    c.write(
        b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n\
          6\r\nhello \r\n",
    )
    .await;
    sleep(Duration::from_millis(20)).await;
    c.write(b"d\r\nchunked world\r\n0\r\nx-sum: 42\r\n\r\n")
        .await;
    assert_eq!(c.response(false).await.body, b"ok");
    assert_eq!(get(&mut c, "GET", "/", "").await.body, b"ok");
    within("script", script).await.unwrap();
    assert_eq!(client.open_connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_gets_the_body_through() {
    let (app, addr, _client) = setup().await;
    let script = tokio::spawn(async move {
        let mut up = Wire::accept(&app).await;
        let head = up.head().await;
        // The app may or may not send its own 100; it does here.
        up.write(b"HTTP/1.1 100 Continue\r\n\r\n").await;
        let n = head.length().unwrap();
        assert_eq!(up.exact(n).await, b"payload");
        up.write(OK).await;
    });
    let mut c = Wire::connect(addr).await;
    c.write(b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 7\r\nexpect: 100-continue\r\n\r\n")
        .await;
    let first = c.head().await;
    assert_eq!(first.status(), 100, "the client is told to go on");
    c.write(b"payload").await;
    let res = c.response(false).await;
    assert_eq!((res.head.status(), res.body.as_slice()), (200, &b"ok"[..]));
    assert!(
        c.buf.is_empty(),
        "exactly one interim response: {:?}",
        c.buf
    );
    within("script", script).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn very_large_heads_pass_both_ways() {
    let (app, addr, _client) = setup().await;
    let big = "x".repeat(200_000);
    let big2 = big.clone();
    let script = tokio::spawn(async move {
        let mut up = Wire::accept(&app).await;
        let req = up.request().await;
        assert_eq!(req.head.get("x-big").map(str::len), Some(200_000));
        let mut res = String::from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n");
        for i in 0..100 {
            res.push_str(&format!("x-h{i}: {i}\r\n"));
        }
        res.push_str(&format!("x-big: {big2}\r\n\r\nok"));
        // A byte at a time at first, then the rest: the head spans many reads.
        for b in res.as_bytes()[..50].chunks(1) {
            up.write(b).await;
        }
        up.write(&res.as_bytes()[50..]).await;
    });
    let mut c = Wire::connect(addr).await;
    let res = get(&mut c, "GET", "/", &format!("x-big: {big}\r\n")).await;
    assert_eq!(res.head.get("x-big").map(str::len), Some(200_000));
    assert_eq!(res.head.get("x-h99"), Some("99"));
    assert_eq!(res.body, b"ok");
    within("script", script).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_head_limit_is_the_configured_one() {
    let (app, addr, _client) = setup_with(ClientConfig {
        max_header_bytes: 4096,
        ..ClientConfig::default()
    })
    .await;
    let script = tokio::spawn(async move {
        let mut up = Wire::accept(&app).await;
        up.request().await;
        let big = "x".repeat(64 * 1024);
        up.write(
            format!("HTTP/1.1 200 OK\r\nx-big: {big}\r\ncontent-length: 2\r\n\r\nok").as_bytes(),
        )
        .await;
        up
    });
    let mut c = Wire::connect(addr).await;
    let res = get(&mut c, "GET", "/", "").await;
    let _up = within("script", script).await;
    assert_eq!(
        res.head.status(),
        502,
        "a 64 KiB head is over a 4 KiB limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_upload_frees_the_upstream_connection() {
    for chunked in [false, true] {
        let (app, addr, client) = setup().await;
        let mut c = Wire::connect(addr).await;
        let head: &[u8] = if chunked {
            b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"
        } else {
            b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 1000\r\n\r\nhello"
        };
        c.write(head).await;
        let mut up = Wire::accept(&app).await;
        up.head().await;
        while up.buf.len() < 5 {
            up.fill_or_eof().await;
        }
        drop(c);
        // The app must learn that the request is dead: its connection closes.
        let closed = up.drains_to_close(WAIT).await;
        assert!(
            closed,
            "chunked={chunked}: the upstream connection stays open"
        );
        // hyper's server keeps the service future after the client left, so the exchange waits
        // for the app's answer to the truncated request; once it comes, everything is freed.
        up.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 3\r\n\r\nbad")
            .await;
        eventually("the slot is given back", || client.open_connections() == 0).await;
    }
}

/// The app answers before it has read the request body while the client keeps uploading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_response_while_the_body_is_still_uploading() {
    let (app, addr, client) = setup().await;
    let mut c = Wire::connect(addr).await;
    c.write(b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await;
    let mut up = Wire::accept(&app).await;
    up.head().await;
    up.write(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 3\r\n\r\nbig")
        .await;
    let res = c.response(false).await;
    assert_eq!((res.head.status(), res.body.as_slice()), (413, &b"big"[..]));
    // The exchange is over once the response is: as in Go's proxy, the rest of the upload is
    // not sent and the app's connection closes instead of being pooled mid-upload.
    // The client may already be cut off; either way nothing more reaches the app.
    let _ = c.io.write_all(b"5\r\nworld\r\n0\r\n\r\n").await;
    assert!(
        up.drains_to_close(WAIT).await,
        "the app's connection stays open after the exchange ended"
    );
    assert_eq!(client.idle_connections(), 0, "never pooled mid-upload");
    // The next request gets a connection of its own.
    let script = tokio::spawn(async move {
        let mut up2 = Wire::accept(&app).await;
        up2.request().await;
        up2.write(OK).await;
        up2
    });
    let mut c = Wire::connect(addr).await;
    assert_eq!(get(&mut c, "GET", "/", "").await.body, b"ok");
    let _ = within("script", script).await.unwrap();
}

/// When the exchange fails (here: a malformed response head; likewise a timeout that drops it),
/// the upstream connection is given up. The request body pump must stop too, or it keeps the
/// socket open (uncounted by the pool) and feeds the client's upload to a connection nobody
/// reads from, for as long as the client keeps uploading. Go closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_exchange_stops_pumping_the_request_body() {
    let (app, addr, client) = setup().await;
    let mut c = Wire::connect(addr).await;
    c.write(b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await;
    let mut up = Wire::accept(&app).await;
    up.head().await;
    up.write(b"garbage\r\n\r\n").await;
    let res = c.response(false).await;
    assert_eq!(res.head.status(), 502);
    assert_eq!(client.open_connections(), 0, "the pool let go of it");
    // The client is still uploading (slowly); the app should see its connection closed.
    let closed = up.drains_to_close(Duration::from_secs(2)).await;
    assert!(
        closed,
        "the upstream connection is still open after the 502"
    );
    drop(c);
}

/// A transfer coding other than chunked survives to the client only in the bytes: the proxy
/// removes `Transfer-Encoding` (hop-by-hop) but forwards the still-encoded body as if it were
/// plain. Go's transport refuses such a response (502); keeping the coding visible would do too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_transfer_coding_is_not_passed_off_as_a_plain_body() {
    let (app, addr, _client) = setup().await;
    let script = tokio::spawn(async move {
        let mut up = Wire::accept(&app).await;
        up.request().await;
        up.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n3\r\n\x1f\x8b\x08\r\n0\r\n\r\n")
            .await;
        up
    });
    let mut c = Wire::connect(addr).await;
    let res = get(&mut c, "GET", "/", "").await;
    let _up = within("script", script).await.unwrap();
    let labelled = res
        .head
        .all("transfer-encoding")
        .iter()
        .any(|v| v.contains("gzip"))
        || res.head.get("content-encoding") == Some("gzip");
    assert!(
        res.head.status() == 502 || labelled,
        "gzip bytes passed as a plain body: {res:?}"
    );
}

// === upgrades ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_right_after_a_101_reach_the_client() {
    let (app, addr, client) = setup().await;
    let script = tokio::spawn(async move {
        let mut up = Wire::accept(&app).await;
        let req = up.request().await;
        assert_eq!(req.head.get("upgrade"), Some("websocket"));
        // The 101 and the first bytes of the new protocol in one write.
        up.write(
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n\
              HELLO",
        )
        .await;
        assert_eq!(up.exact(4).await, b"ping");
        up.write(b"pong").await;
        up
    });
    let mut c = Wire::connect(addr).await;
    c.write(b"GET /ws HTTP/1.1\r\nhost: t\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
        .await;
    let head = c.head().await;
    assert_eq!(head.status(), 101);
    assert_eq!(head.get("upgrade"), Some("websocket"));
    assert_eq!(c.exact(5).await, b"HELLO");
    c.write(b"ping").await;
    assert_eq!(c.exact(4).await, b"pong");
    let up = within("script", script).await.unwrap();
    assert_eq!(
        client.open_connections(),
        0,
        "a tunnel does not count against the pool"
    );
    drop(up);
    assert!(c.closed_soon(WAIT).await, "the tunnel closes with the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unasked_101_is_502_and_frees_the_slot() {
    let (app, addr, client) = setup().await;
    let script = tokio::spawn(async move {
        let mut up = Wire::accept(&app).await;
        up.request().await;
        up.write(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n")
            .await;
        up
    });
    let mut c = Wire::connect(addr).await;
    assert_eq!(get(&mut c, "GET", "/", "").await.head.status(), 502);
    let mut up = within("script", script).await.unwrap();
    assert!(up.closed_soon(WAIT).await);
    assert_eq!(client.open_connections(), 0);
}

// === open-connection accounting ===

/// An app that answers every request after `delay`, on keep-alive connections.
async fn slow_app(delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = app.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let conns2 = conns.clone();
    tokio::spawn(async move {
        loop {
            let Ok((io, _)) = app.accept().await else {
                return;
            };
            conns2.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut up = Wire {
                    io,
                    buf: Vec::new(),
                };
                while let Ok(Some(req)) = timeout(Duration::from_secs(30), up.try_request()).await {
                    sleep(delay).await;
                    let path = req.head.start.split(' ').nth(1).unwrap().to_owned();
                    let reply = match path.as_str() {
                        "/reset" => {
                            up.io.set_zero_linger().unwrap();
                            return;
                        }
                        "/partial" => &b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc"[..],
                        _ => OK,
                    };
                    if up.io.write_all(reply).await.is_err() {
                        return;
                    }
                    if path == "/partial" {
                        sleep(Duration::from_millis(50)).await;
                        return;
                    }
                }
            });
        }
    });
    (addr, conns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_return_to_the_pooled_count_after_a_burst_past_the_soft_maximum() {
    let (app, _) = slow_app(Duration::from_millis(300)).await;
    let (addr, client) = proxy(app, ClientConfig::default()).await;
    let paths = ["/", "/", "/", "/reset", "/partial", "/drop"];
    let mut tasks = Vec::new();
    for i in 0..200 {
        let path = paths[i % paths.len()];
        tasks.push(tokio::spawn(async move {
            let mut c = Wire::connect(addr).await;
            c.write(format!("GET {path} HTTP/1.1\r\nhost: t\r\n\r\n").as_bytes())
                .await;
            match path {
                "/drop" => {
                    // The client gives up while the app is still working.
                    sleep(Duration::from_millis(100)).await;
                }
                "/reset" => {
                    assert_eq!(c.response(false).await.head.status(), 502);
                }
                "/partial" => {
                    assert_eq!(c.head().await.status(), 200);
                    let _ = c.read_to_end().await;
                }
                _ => assert_eq!(c.response(false).await.body, b"ok"),
            }
        }));
    }
    for t in tasks {
        within("burst", t).await.unwrap();
    }
    eventually("every open connection is a pooled one", || {
        client.open_connections() == client.idle_connections()
    })
    .await;
    assert!(client.open_connections() > 0);
    // And the next requests are served as soon as the app answers, all at once.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..150 {
        tasks.push(tokio::spawn(async move {
            let mut c = Wire::connect(addr).await;
            assert_eq!(get(&mut c, "GET", "/", "").await.body, b"ok");
        }));
    }
    for t in tasks {
        within("second burst", t).await.unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    eventually("settled again", || {
        client.open_connections() == client.idle_connections()
    })
    .await;
}

// === prewarming ===

/// Prewarming opens up to the asked number of connections, counts those already open, never
/// passes the soft maximum, and the connections it opened carry the next requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarmed_connections_are_bounded_and_carry_the_next_requests() {
    let config = ClientConfig {
        soft_max_connections: 4,
        ..ClientConfig::default()
    };
    let (app, addr, client) = setup_with(config).await;
    assert_eq!(client.prewarm_http1(3).await, 3);
    assert_eq!(client.prewarm_http1(3).await, 0);
    assert_eq!(client.prewarm_http1(10).await, 1, "the soft maximum");
    assert_eq!(
        (client.open_connections(), client.idle_connections()),
        (4, 4)
    );
    let mut ups = Vec::new();
    for _ in 0..4 {
        ups.push(within("prewarmed accept", app.accept()).await.unwrap().0);
    }
    // The request goes on one of them: the app sees no fifth connection.
    let mut c = Wire::connect(addr).await;
    c.write(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
    let mut served = false;
    for io in ups {
        let mut up = Wire {
            io,
            buf: Vec::new(),
        };
        if let Ok(Some(_)) = timeout(Duration::from_millis(200), up.try_request()).await {
            up.write(OK).await;
            served = true;
            assert_eq!(c.response(false).await.body, b"ok");
            break;
        }
    }
    assert!(served, "no prewarmed connection carried the request");
    assert_eq!(client.open_connections(), 4);

    // Nothing listens: the first failed connect ends it.
    drop(app);
    let gone = Client::new(addr_of_closed().await, ClientConfig::default());
    assert_eq!(
        within("prewarm a closed port", gone.prewarm_http1(3)).await,
        0
    );
    assert_eq!(gone.open_connections(), 0);

    // The idle limit bounds it too: what could not stay idle would only be closed again.
    let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let small = Client::new(
        app.local_addr().unwrap(),
        ClientConfig {
            max_idle: 2,
            soft_max_connections: 4,
            ..ClientConfig::default()
        },
    );
    assert_eq!(within("prewarm", small.prewarm_http1(4)).await, 2);
    assert_eq!((small.open_connections(), small.idle_connections()), (2, 2));
}

/// An address nothing listens on.
async fn addr_of_closed() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}
