//! Protocols through the proxy: h2c and HTTP/1.1 mirroring, gRPC-shaped streams with trailers,
//! full duplex, large and `Expect: 100-continue` bodies, websockets (upgrades) and trailers on
//! HTTP/1.1.

use std::{future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version, header};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Semaphore,
};

use tests::{
    App, Body, QueueProxy, assert_grpc_ok, channel_body, echo_app, full, get, grpc_echo_app,
    grpc_message, grpc_ok_trailers, grpc_response, h2c, http1, next_frame, queue_proxy_env,
    read_data, send,
};

/// The longest any single network step may take before the test fails instead of hanging.
const WAIT: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test after [`WAIT`].
async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tests::within(what, WAIT, fut).await
}

// === bodies ===

/// Reads the rest of `body`: it must be trailers (possibly after empty DATA frames), then the end.
async fn read_trailers(body: &mut Incoming) -> HeaderMap {
    loop {
        let frame = next_frame(body).await.expect("trailers before the end");
        match frame.into_trailers() {
            Ok(t) => {
                assert!(next_frame(body).await.is_none(), "frames after trailers");
                return t;
            }
            Err(f) => assert!(
                f.data_ref().is_some_and(|d| d.is_empty()),
                "unexpected frame before the trailers: {f:?}"
            ),
        }
    }
}

/// A response with `content-type: application/grpc` and `body`.
fn fnv1a(hash: u64, data: &[u8]) -> u64 {
    data.iter().fold(hash, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// An app that reads the whole request body and answers `<bytes> <fnv1a hex>`.
async fn counting_app() -> App {
    App::start(|req: Request<Incoming>| async move {
        let mut body = req.into_body();
        let (mut len, mut hash) = (0usize, FNV_OFFSET);
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Some(d) = f.data_ref() {
                        len += d.len();
                        hash = fnv1a(hash, d);
                    }
                }
                Err(e) => {
                    return Response::builder()
                        .status(StatusCode::BAD_REQUEST)
                        .body(full(format!("body error after {len} bytes: {e}")))
                        .unwrap();
                }
            }
        }
        Response::new(full(format!("{len} {hash:016x}")))
    })
    .await
}

/// `len` pseudo-random bytes (xorshift), the same on every run.
fn pseudo_random(len: usize) -> Bytes {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out.into()
}

// === raw HTTP/1.1 ===

/// A response head read off a raw connection.
#[derive(Debug)]
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A plain TCP connection speaking HTTP/1.1 by hand, for what client libraries hide.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(addr: std::net::SocketAddr) -> Self {
        let stream = within("connect", TcpStream::connect(addr))
            .await
            .expect("connect");
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    async fn write(&mut self, data: &[u8]) {
        within("write", self.stream.write_all(data))
            .await
            .expect("write");
    }

    /// Reads more bytes into the buffer; panics at the end of the stream.
    async fn fill(&mut self, what: &str) {
        let mut chunk = [0u8; 16 * 1024];
        let n = within(what, self.stream.read(&mut chunk))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            n > 0,
            "{what}: connection closed; had {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        self.buf.extend_from_slice(&chunk[..n]);
    }

    async fn read_head(&mut self) -> Head {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            self.fill("response head").await;
        };
        let text = String::from_utf8(self.buf[..end].to_vec()).expect("head is text");
        self.buf.drain(..end + 4);
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(':').expect("header line");
                (k.trim().to_owned(), v.trim().to_owned())
            })
            .collect();
        Head { status, headers }
    }

    async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            self.fill("body bytes").await;
        }
        self.buf.drain(..n).collect()
    }

    /// Reads a `Content-Length` body.
    async fn read_body(&mut self, head: &Head) -> String {
        let len = head
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no content-length in {head:?}"));
        String::from_utf8(self.read_exact(len).await).unwrap()
    }

    /// Whether the peer closes the connection (EOF or reset) within `timeout`, discarding data.
    async fn closed_within(&mut self, timeout: Duration) -> bool {
        let mut chunk = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return false,
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }
}

// === websockets ===

const GREETING: &[u8] = b"hello from the app\n";

/// An app that accepts `Upgrade: websocket` with a `101`, greets, then echoes raw bytes on the
/// upgraded connection until the client closes it. Other requests get 200 `plain`, after 3 s on
/// `/slow`.
async fn websocket_app() -> App {
    App::start(|mut req: Request<Incoming>| async move {
        let wants_ws = req
            .headers()
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        if !wants_ws {
            if req.uri().path() == "/slow" {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            return Response::new(full("plain"));
        }
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut io = TokioIo::new(upgraded);
            if io.write_all(GREETING).await.is_err() {
                return;
            }
            let mut buf = [0u8; 4096];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if io.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "websocket")
            .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            .body(full(""))
            .unwrap()
    })
    .await
}

/// Opens a websocket through `qp` and reads the `101` and the app's greeting.
async fn open_websocket(qp: &QueueProxy) -> Raw {
    let mut ws = Raw::connect(qp.addr()).await;
    ws.write(
        b"GET /ws HTTP/1.1\r\n\
          Host: hello.default.example.com\r\n\
          Connection: Upgrade\r\n\
          Upgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    let head = ws.read_head().await;
    assert_eq!(head.status, 101, "{head:?}");
    assert!(
        head.header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "{head:?}"
    );
    assert!(
        head.header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")),
        "{head:?}"
    );
    assert_eq!(ws.read_exact(GREETING.len()).await, GREETING);
    ws
}

/// Sends `msg` on the tunnel and expects it echoed back.
async fn echo_through(ws: &mut Raw, msg: &[u8]) {
    ws.write(msg).await;
    assert_eq!(ws.read_exact(msg.len()).await, msg);
}

// === tests ===

#[tokio::test]
async fn h2c_request_reaches_the_app_over_http2() {
    let app = echo_app().await;
    let qp = QueueProxy::start(&queue_proxy_env(app.port()));
    let req = Request::get(qp.url("/h2")).body(full("")).unwrap();
    let res = within("h2c response", h2c().request(req))
        .await
        .expect("h2c response");
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), Version::HTTP_2);
    assert_eq!(
        res.headers().get("x-echo-version").unwrap(),
        "HTTP/2.0",
        "the app must be reached over h2c"
    );
    assert_eq!(res.headers().get("x-echo-path").unwrap(), "/h2");
}

#[tokio::test]
async fn http1_request_reaches_the_app_over_http1() {
    let app = echo_app().await;
    let qp = QueueProxy::start(&queue_proxy_env(app.port()));
    let res = get(&qp.url("/h1"), &[]).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("x-echo-version"), Some("HTTP/1.1"));
    assert_eq!(res.header("x-echo-path"), Some("/h1"));
}

#[tokio::test]
async fn grpc_unary_over_h2c_gets_every_data_frame_and_the_trailers() {
    let app = App::start(|req: Request<Incoming>| async move {
        let grpc = req.version() == Version::HTTP_2
            && req
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v == "application/grpc");
        if !grpc {
            return Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .body(full(format!("not gRPC over h2: {req:?}")))
                .unwrap();
        }
        let request = req.into_body().collect().await.unwrap().to_bytes();
        let mut payload = b"reply to ".to_vec();
        payload.extend_from_slice(&request[5..]);
        let message = grpc_message(&payload);
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            // One message in three DATA frames, then the trailers.
            for part in [message.slice(..2), message.slice(2..9), message.slice(9..)] {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = tx.send(Frame::data(part)).await;
            }
            let _ = tx.send(Frame::trailers(grpc_ok_trailers())).await;
        });
        grpc_response(body)
    })
    .await;
    let qp = QueueProxy::start(&queue_proxy_env(app.port()));

    let req = Request::post(qp.url("/echo.Echo/Unary"))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(full(grpc_message(b"ping")))
        .unwrap();
    let res = within("unary response", h2c().request(req))
        .await
        .expect("unary response");
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers().get(header::CONTENT_TYPE).unwrap(),
        "application/grpc"
    );
    let mut body = res.into_body();
    let expected = grpc_message(b"reply to ping");
    assert_eq!(read_data(&mut body, expected.len()).await, expected);
    assert_grpc_ok(&read_trailers(&mut body).await);
}

#[tokio::test]
async fn grpc_server_streaming_over_h2c_delivers_each_message_as_it_is_sent() {
    const MESSAGES: usize = 5;
    // The app sends message i+1 only once the client has acknowledged message i, so a proxy
    // that buffered the stream would stall the exchange instead of passing it.
    let acks = Arc::new(Semaphore::new(0));
    let app = App::start({
        let acks = acks.clone();
        move |_req: Request<Incoming>| {
            let acks = acks.clone();
            async move {
                let (tx, body) = channel_body();
                tokio::spawn(async move {
                    for i in 0..MESSAGES {
                        if i > 0 {
                            let acked = tokio::time::timeout(WAIT, acks.acquire()).await;
                            let Ok(Ok(permit)) = acked else {
                                let mut t = HeaderMap::new();
                                t.insert("grpc-status", "4".parse().unwrap());
                                t.insert("grpc-message", "no ack".parse().unwrap());
                                let _ = tx.send(Frame::trailers(t)).await;
                                return;
                            };
                            permit.forget();
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        let msg = grpc_message(format!("message {i}").as_bytes());
                        let _ = tx.send(Frame::data(msg)).await;
                    }
                    let _ = tx.send(Frame::trailers(grpc_ok_trailers())).await;
                });
                grpc_response(body)
            }
        }
    })
    .await;
    let qp = QueueProxy::start(&queue_proxy_env(app.port()));

    let req = Request::post(qp.url("/echo.Echo/ServerStream"))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(full(grpc_message(b"start")))
        .unwrap();
    let res = within("stream response", h2c().request(req))
        .await
        .expect("stream response");
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    for i in 0..MESSAGES {
        let expected = grpc_message(format!("message {i}").as_bytes());
        assert_eq!(
            read_data(&mut body, expected.len()).await,
            expected,
            "message {i}"
        );
        acks.add_permits(1);
    }
    assert_grpc_ok(&read_trailers(&mut body).await);
}

/// Sends request chunks one at a time and reads each echo before sending the next: the response
/// must start, and stream, while the request body is still open.
async fn full_duplex_exchange(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Body,
    >,
    url: String,
) -> Incoming {
    let (tx, req_body) = channel_body();
    let req = Request::post(url)
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(req_body)
        .unwrap();
    // No byte of the request body has been sent yet: the headers must still come back.
    let res = within(
        "response headers before the request body",
        client.request(req),
    )
    .await
    .expect("response");
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    for i in 0..4 {
        let chunk = grpc_message(format!("chunk {i}").as_bytes());
        within("send a request chunk", tx.send(Frame::data(chunk.clone())))
            .await
            .expect("request body still open");
        assert_eq!(read_data(&mut body, chunk.len()).await, chunk, "chunk {i}");
    }
    drop(tx);
    body
}

#[tokio::test]
async fn h2c_streaming_request_is_full_duplex() {
    let app = grpc_echo_app().await;
    let qp = QueueProxy::start(&queue_proxy_env(app.port()));
    let mut body = full_duplex_exchange(&h2c(), qp.url("/echo.Echo/BidiStream")).await;
    assert_grpc_ok(&read_trailers(&mut body).await);
}

#[tokio::test]
async fn http1_streaming_request_is_full_duplex() {
    let app = grpc_echo_app().await;
    let qp = QueueProxy::start(&queue_proxy_env(app.port()));
    let mut body = full_duplex_exchange(&http1(), qp.url("/duplex")).await;
    // The app declares no `Trailer`, so over HTTP/1.1 only the end of the body matters here.
    while let Some(frame) = next_frame(&mut body).await {
        assert!(
            frame.data_ref().is_none_or(|d| d.is_empty()),
            "unexpected data after the echoes: {frame:?}"
        );
    }
}

#[tokio::test]
async fn http1_large_chunked_request_body_arrives_intact() {
    const LEN: usize = 8 << 20;
    let app = counting_app().await;
    let qp = QueueProxy::start(&queue_proxy_env(app.port()));
    let data = pseudo_random(LEN);
    let expected = format!("{LEN} {:016x}", fnv1a(FNV_OFFSET, &data));

    let (tx, body) = channel_body();
    let feeder = tokio::spawn({
        let data = data.clone();
        async move {
            for start in (0..LEN).step_by(64 * 1024) {
                let end = (start + 64 * 1024).min(LEN);
                if tx.send(Frame::data(data.slice(start..end))).await.is_err() {
                    return;
                }
            }
        }
    });
    // A body of unknown length goes out chunked.
    let req = Request::post(qp.url("/upload")).body(body).unwrap();
    let res = send(&http1(), req).await;
    within("feeder", feeder).await.unwrap();
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.text(), expected);
}

#[tokio::test]
async fn http1_expect_100_continue() {
    const LEN: usize = 1 << 20;
    let app = counting_app().await;
    let qp = QueueProxy::start(&queue_proxy_env(app.port()));
    let data = pseudo_random(LEN);

    let mut conn = Raw::connect(qp.addr()).await;
    conn.write(
        format!(
            "POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Length: {LEN}\r\n\
             Expect: 100-continue\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    // Nothing of the body is sent before the interim response.
    let interim = conn.read_head().await;
    assert_eq!(interim.status, 100, "{interim:?}");
    conn.write(&data).await;
    let head = conn.read_head().await;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(
        conn.read_body(&head).await,
        format!("{LEN} {:016x}", fnv1a(FNV_OFFSET, &data))
    );
}

#[tokio::test]
async fn websocket_bytes_flow_both_ways() {
    let app = websocket_app().await;
    let qp = QueueProxy::start(&queue_proxy_env(app.port()));
    // The greeting travelled app to client; the echoes go client to app and back.
    let mut ws = open_websocket(&qp).await;
    echo_through(&mut ws, b"ping 1").await;
    let big = pseudo_random(256 * 1024);
    echo_through(&mut ws, &big).await;
    echo_through(&mut ws, b"ping 2").await;
}

/// The control for the tests above: the 1 s timeout is in force, a plain request whose response
/// starts after 3 s gets 504.
async fn assert_timeout_is_armed(qp: &QueueProxy) {
    let res = get(&qp.url("/slow"), &[]).await;
    assert_eq!(res.status, 504, "{}", res.text());
}

/// A websocket that stays quiet for 2.5 s under a 1 s `timeout_key` still works afterwards.
async fn websocket_outlives(timeout_key: &str) {
    let app = websocket_app().await;
    let mut env = queue_proxy_env(app.port());
    env.insert(timeout_key.into(), "1".into());
    let qp = QueueProxy::start(&env);
    let mut ws = open_websocket(&qp).await;
    echo_through(&mut ws, b"before").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    echo_through(&mut ws, b"after an idle 2.5 s").await;
    assert_timeout_is_armed(&qp).await;
}

#[tokio::test]
async fn websocket_is_not_cut_by_the_response_start_timeout() {
    websocket_outlives("REVISION_RESPONSE_START_TIMEOUT_SECONDS").await;
}

#[tokio::test]
async fn websocket_is_not_cut_by_the_idle_timeout() {
    websocket_outlives("REVISION_IDLE_TIMEOUT_SECONDS").await;
}

#[tokio::test]
async fn websocket_is_closed_at_the_revision_timeout() {
    let app = websocket_app().await;
    let mut env = queue_proxy_env(app.port());
    env.insert("REVISION_TIMEOUT_SECONDS".into(), "3".into());
    let qp = QueueProxy::start(&env);
    let mut ws = open_websocket(&qp).await;
    echo_through(&mut ws, b"while in time").await;
    assert!(
        ws.closed_within(WAIT).await,
        "the tunnel outlived the revision timeout"
    );
}

#[tokio::test]
async fn websocket_holds_its_breaker_slot_until_it_closes() {
    let app = websocket_app().await;
    let mut env = queue_proxy_env(app.port());
    env.insert("CONTAINER_CONCURRENCY".into(), "1".into());
    let qp = QueueProxy::start(&env);
    let mut ws = open_websocket(&qp).await;
    echo_through(&mut ws, b"open").await;

    let url = qp.url("/plain");
    let queued = tokio::spawn(async move { get(&url, &[]).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !queued.is_finished(),
        "a request ran while the websocket held the only slot: {:?}",
        queued.await
    );
    // The tunnel is still usable while the request waits.
    echo_through(&mut ws, b"still open").await;

    drop(ws);
    let res = within("queued request after the websocket closed", queued)
        .await
        .unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "plain");
}

#[tokio::test]
async fn upgrade_h2c_is_declined_and_served_as_http1() {
    let app = echo_app().await;
    let qp = QueueProxy::start(&queue_proxy_env(app.port()));
    let mut conn = Raw::connect(qp.addr()).await;
    conn.write(
        b"GET /h2c HTTP/1.1\r\n\
          Host: hello.default.example.com\r\n\
          Connection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\n\
          HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    let head = conn.read_head().await;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("x-echo-version"), Some("HTTP/1.1"), "{head:?}");
    assert_eq!(head.header("x-echo-upgrade"), None, "{head:?}");
    assert_eq!(head.header("x-echo-http2-settings"), None, "{head:?}");
    assert_eq!(head.header("upgrade"), None, "{head:?}");
    assert_eq!(conn.read_body(&head).await, "hello");

    // The connection still speaks HTTP/1.1.
    conn.write(b"GET /again HTTP/1.1\r\nHost: hello.default.example.com\r\n\r\n")
        .await;
    let head = conn.read_head().await;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("x-echo-path"), Some("/again"), "{head:?}");
    assert_eq!(conn.read_body(&head).await, "hello");
}

/// An app that answers with a chunked body and declared trailers `grpc-status` and
/// `grpc-message` (hyper sends trailers on HTTP/1.1 only when the response declares them in
/// `Trailer` and the request carried `TE: trailers`).
async fn trailers_app() -> App {
    App::start(|_req: Request<Incoming>| async move {
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            for part in ["part 1;", "part 2"] {
                let _ = tx
                    .send(Frame::data(Bytes::from_static(part.as_bytes())))
                    .await;
            }
            let _ = tx.send(Frame::trailers(grpc_ok_trailers())).await;
        });
        Response::builder()
            .header(header::TRAILER, "grpc-status, grpc-message")
            .body(body)
            .unwrap()
    })
    .await
}

/// GETs `url` over HTTP/1.1 with `TE: trailers`; returns the body and the trailers.
async fn get_with_trailers(url: String) -> (Bytes, Option<HeaderMap>) {
    let req = Request::get(url)
        .header(header::TE, "trailers")
        .body(full(""))
        .unwrap();
    let res = within("response", http1().request(req))
        .await
        .expect("response");
    assert_eq!(res.status(), 200);
    let collected = within("body", res.into_body().collect())
        .await
        .expect("body");
    let trailers = collected.trailers().cloned();
    (collected.to_bytes(), trailers)
}

#[tokio::test]
async fn http1_chunked_response_trailers_reach_a_te_trailers_client() {
    let app = trailers_app().await;
    // The app itself does send them over HTTP/1.1.
    let (body, trailers) = get_with_trailers(format!("http://{}/direct", app.addr)).await;
    assert_eq!(body, "part 1;part 2");
    assert_grpc_ok(&trailers.expect("trailers straight from the app"));

    let qp = QueueProxy::start(&queue_proxy_env(app.port()));
    let (body, trailers) = get_with_trailers(qp.url("/proxied")).await;
    assert_eq!(body, "part 1;part 2");
    assert_grpc_ok(&trailers.expect("trailers through queue-proxy"));
}

/// An app that reads the request body and answers `<data>|<trailers>`, the trailers as
/// `name=value` pairs joined by `,` (empty when none came).
async fn request_trailers_app() -> App {
    App::start(|req: Request<Incoming>| async move {
        let collected = req.into_body().collect().await.unwrap();
        let trailers = collected
            .trailers()
            .map(|t| {
                t.iter()
                    .map(|(k, v)| format!("{k}={}", v.to_str().unwrap()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let data = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
        Response::new(full(format!("{data}|{trailers}")))
    })
    .await
}

/// POSTs a chunked body with a declared trailer `x-checksum` over HTTP/1.1.
async fn post_with_trailers(url: String) -> String {
    let (tx, body) = channel_body();
    tx.send(Frame::data(Bytes::from_static(b"abc")))
        .await
        .unwrap();
    let mut t = HeaderMap::new();
    t.insert("x-checksum", "1234".parse().unwrap());
    tx.send(Frame::trailers(t)).await.unwrap();
    drop(tx);
    let req = Request::post(url)
        .header(header::TRAILER, "x-checksum")
        .body(body)
        .unwrap();
    let res = send(&http1(), req).await;
    assert_eq!(res.status, 200, "{}", res.text());
    res.text()
}

#[tokio::test]
async fn http1_chunked_request_trailers_reach_the_app() {
    let app = request_trailers_app().await;
    // hyper's client and server do carry them end to end.
    let direct = post_with_trailers(format!("http://{}/direct", app.addr)).await;
    assert_eq!(direct, "abc|x-checksum=1234");

    let qp = QueueProxy::start(&queue_proxy_env(app.port()));
    assert_eq!(
        post_with_trailers(qp.url("/proxied")).await,
        "abc|x-checksum=1234"
    );
}

#[tokio::test]
async fn an_upstream_switching_to_another_protocol_is_a_502() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = app.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = app.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: something-else\r\n\r\n")
            .await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let qp = QueueProxy::start(&queue_proxy_env(port));
    let mut c = tokio::net::TcpStream::connect(qp.addr()).await.unwrap();
    c.write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .await
        .unwrap();
    let mut got = vec![0u8; 1024];
    let n = within("the proxy's answer", c.read(&mut got))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&got[..n]);
    assert!(text.starts_with("HTTP/1.1 502"), "{text}");
}
