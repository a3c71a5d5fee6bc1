//! Protocols end to end: app ← real queue-proxy ← activator. HTTP/1.1, a streamed request body,
//! h2c with prior knowledge, gRPC-shaped streams with trailers, and websockets (which also hold
//! their revision's concurrency slot while open).
//!
//! The websocket helpers here are shared with `drain.rs`.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, Version, header};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tests::{
    Activator, App, Body, QueueProxy, assert_grpc_ok, channel_body, echo_app, eventually, full,
    get, grpc_echo_app, grpc_message, grpc_ok_trailers, h2c, http1, read_data, revision, send,
    start_queue_proxy, with_trailers,
};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    WebSocketStream, client_async,
    tungstenite::{
        Message, client::IntoClientRequest, handshake::derive_accept_key, protocol::Role,
    },
};

/// The revision every test here uses.
pub(crate) const REV: &str = "hello-00001";

/// The headers that name [`REV`] in namespace `default`.
pub(crate) const REV_HEADERS: [(&str, &str); 2] = [
    ("knative-serving-namespace", "default"),
    ("knative-serving-revision", REV),
];

/// The longest any single network step may take before the test fails instead of hanging.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test after [`WAIT`].
pub(crate) async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tests::within(what, WAIT, fut).await
}

/// The value of one series (`name{labels}`, exactly as rendered) on the activator's metrics page.
pub(crate) async fn metric(act: &Activator, series: &str) -> Option<f64> {
    act.metrics().await.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The `kn_revision_request_queued` series of [`REV`].
pub(crate) const QUEUED: &str =
    "kn_revision_request_queued{k8s_namespace_name=\"default\",kn_revision_name=\"hello-00001\"}";

/// app ← queue-proxy (with `qp_env`) ← activator, where [`REV`] has containerConcurrency `cc`
/// and, with `h2c`, `"protocol": "h2c"`.
fn stack(app: &App, cc: u32, h2c: bool, qp_env: &[(&str, &str)]) -> (QueueProxy, Activator) {
    let qp = start_queue_proxy(app.port(), qp_env);
    let mut rev = revision(REV, cc, &[qp.addr()]);
    if h2c {
        rev["protocol"] = "h2c".into();
    }
    let act = Activator::start(serde_json::json!([rev]), &[], &[]);
    (qp, act)
}

/// A request builder for `url` naming [`REV`].
fn to_rev(method: http::Method, url: String) -> http::request::Builder {
    REV_HEADERS
        .iter()
        .fold(Request::builder().method(method).uri(url), |b, (k, v)| {
            b.header(*k, *v)
        })
}

// === bodies and gRPC shapes ===

/// Feeds `chunks` into a request body one by one, 20 ms apart, then ends it.
fn feed(chunks: Vec<Bytes>) -> (Body, tokio::task::JoinHandle<()>) {
    let (tx, body) = channel_body();
    let feeder = tokio::spawn(async move {
        for chunk in chunks {
            if tx.send(Frame::data(chunk)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (body, feeder)
}

// === websockets ===

/// What the websocket app says first, before any message from the client.
pub(crate) const GREETING: &str = "hello from the app";

/// An app that accepts `Upgrade: websocket` (answering the key as a real server does), greets,
/// then echoes every text and binary message until the client closes. Other requests get 200
/// `plain`. It also answers the activator's readiness probe itself (`K-Network-Probe: queue`),
/// so it can stand in for a pod without a queue-proxy.
pub(crate) async fn websocket_app() -> App {
    App::start(|mut req: Request<Incoming>| async move {
        let h = req.headers();
        if h.get("k-network-probe").is_some_and(|v| v == "queue") {
            return Response::new(full("queue"));
        }
        let wants_ws = h
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let key = h.get(header::SEC_WEBSOCKET_KEY).cloned();
        let (true, Some(key)) = (wants_ws, key) else {
            return Response::new(full("plain"));
        };
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            if ws.send(Message::text(GREETING)).await.is_err() {
                return;
            }
            // After the client's Close, the next read sends the reply and ends the stream.
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    return;
                }
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "websocket")
            .header(
                header::SEC_WEBSOCKET_ACCEPT,
                derive_accept_key(key.as_bytes()),
            )
            .body(full(""))
            .unwrap()
    })
    .await
}

/// A websocket client connection.
pub(crate) type Ws = WebSocketStream<TcpStream>;

/// Opens a websocket to [`REV`] through the activator's HTTP/1.1 port (tungstenite checks the
/// `101` and its `Sec-WebSocket-Accept`) and reads the app's greeting.
pub(crate) async fn open_websocket(act: &Activator) -> Ws {
    let port = act.process.port("ACTIVATOR_HTTP1_PORT");
    let tcp = within("connect", TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("connect to the activator");
    let mut req = format!("ws://127.0.0.1:{port}/ws")
        .into_client_request()
        .unwrap();
    for (k, v) in REV_HEADERS {
        req.headers_mut().insert(k, v.parse().unwrap());
    }
    let (mut ws, res) = within("websocket handshake", client_async(req, tcp))
        .await
        .unwrap_or_else(|e| panic!("websocket handshake: {e}; logs:\n{}", act.process.logs()));
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    let greeting = within("the app's greeting", ws.next())
        .await
        .expect("greeting")
        .expect("greeting");
    assert_eq!(greeting, Message::text(GREETING));
    ws
}

/// Sends `msg` and expects it back.
pub(crate) async fn echo(ws: &mut Ws, msg: Message) {
    within("send", ws.send(msg.clone()))
        .await
        .expect("send on the websocket");
    let back = within("echo", ws.next())
        .await
        .expect("websocket still open")
        .expect("websocket frame");
    assert_eq!(back, msg);
}

/// Closes the websocket from the client's side and waits for the close handshake to finish.
pub(crate) async fn close(mut ws: Ws) {
    within("send close", ws.close(None))
        .await
        .expect("send close");
    within("close handshake", async {
        while let Some(Ok(msg)) = ws.next().await {
            assert!(msg.is_close(), "message after our close: {msg:?}");
        }
    })
    .await;
}

// === tests ===

#[tokio::test]
async fn http1_get_reaches_the_app_with_its_host_restored() {
    let app = echo_app().await;
    let (_qp, act) = stack(&app, 0, false, &[]);
    let mut headers = REV_HEADERS.to_vec();
    headers.push(("host", "hello.example.com"));
    let res = get(&act.url("/h1?x=1"), &headers).await;
    assert_eq!(res.status, 200, "{}", act.process.logs());
    assert_eq!(res.text(), "hello");
    assert_eq!(res.header("x-echo-version"), Some("HTTP/1.1"));
    assert_eq!(res.header("x-echo-path"), Some("/h1?x=1"));
    // The activator moved it to K-Original-Host, the queue-proxy put it back.
    assert_eq!(res.header("x-echo-host"), Some("hello.example.com"));
    assert_eq!(res.header("x-echo-knative-serving-revision"), None);
}

#[tokio::test]
async fn http1_streamed_post_body_is_echoed() {
    let app = grpc_echo_app().await;
    let (_qp, act) = stack(&app, 0, false, &[]);
    let chunks: Vec<Bytes> = (0..5)
        .map(|i| Bytes::from(format!("chunk {i};").repeat(1000)))
        .collect();
    let expected: Vec<u8> = chunks.concat();
    let (body, feeder) = feed(chunks);
    // A body of unknown length goes out chunked, frame by frame.
    let req = to_rev(http::Method::POST, act.url("/upload"))
        .body(body)
        .unwrap();
    let res = send(&http1(), req).await;
    within("feeder", feeder).await.unwrap();
    assert_eq!(res.status, 200, "{}", act.process.logs());
    assert_eq!(res.body.len(), expected.len());
    assert!(res.body == expected, "the echoed body differs");
}

#[tokio::test]
async fn h2c_request_reaches_an_h2c_revision_over_http2() {
    let app = echo_app().await;
    let (_qp, act) = stack(&app, 0, true, &[]);
    let req = to_rev(http::Method::GET, act.h2c_url("/h2"))
        .body(full(""))
        .unwrap();
    let res = within("h2c response", h2c().request(req))
        .await
        .expect("h2c response");
    assert_eq!(res.status(), 200, "{}", act.process.logs());
    assert_eq!(res.version(), Version::HTTP_2);
    let h = res.headers();
    assert_eq!(
        h["x-echo-version"], "HTTP/2.0",
        "the app is reached over h2c"
    );
    assert_eq!(h["x-echo-path"], "/h2");
    // The client's authority travels as K-Original-Host and comes back as the app's authority.
    let authority = format!("127.0.0.1:{}", act.process.port("ACTIVATOR_H2C_PORT"));
    assert_eq!(h["x-echo-host"], authority.as_str());
}

#[tokio::test]
async fn grpc_client_stream_over_h2c_gets_its_data_and_trailers() {
    // Reads the whole request, then answers its bytes back followed by `grpc-status: 0`.
    let app = App::start(|req: Request<Incoming>| async move {
        let grpc = req.version() == Version::HTTP_2
            && req
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v == "application/grpc");
        if !grpc {
            return Response::builder()
                .status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
                .body(full(format!("not gRPC over h2: {:?}", req.version())))
                .unwrap();
        }
        let data = req.into_body().collect().await.unwrap().to_bytes();
        Response::builder()
            .header(header::CONTENT_TYPE, "application/grpc")
            .body(with_trailers(vec![data], grpc_ok_trailers()))
            .unwrap()
    })
    .await;
    let (_qp, act) = stack(&app, 0, true, &[]);

    let messages: Vec<Bytes> = (0..4)
        .map(|i| grpc_message(format!("message {i}").as_bytes()))
        .collect();
    let expected = messages.concat();
    let (body, feeder) = feed(messages);
    let req = to_rev(http::Method::POST, act.h2c_url("/echo.Echo/ClientStream"))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(body)
        .unwrap();
    let res = within("gRPC response", h2c().request(req))
        .await
        .expect("gRPC response");
    within("feeder", feeder).await.unwrap();
    assert_eq!(res.status(), 200, "{}", act.process.logs());
    let collected = within("gRPC body", res.into_body().collect())
        .await
        .expect("gRPC body");
    assert_grpc_ok(collected.trailers().expect("trailers reached the client"));
    assert_eq!(collected.to_bytes(), expected);
}

#[tokio::test]
async fn grpc_bidi_stream_over_h2c_is_full_duplex() {
    let app = grpc_echo_app().await;
    let (_qp, act) = stack(&app, 0, true, &[]);
    let (tx, body) = channel_body();
    let req = to_rev(http::Method::POST, act.h2c_url("/echo.Echo/BidiStream"))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(body)
        .unwrap();
    // No byte of the request body has been sent yet: the headers must still come back.
    let res = within(
        "response headers before the request body",
        h2c().request(req),
    )
    .await
    .expect("response");
    assert_eq!(res.status(), 200, "{}", act.process.logs());
    let mut body = res.into_body();
    // Each message must come back before the next one is sent.
    for i in 0..4 {
        let msg = grpc_message(format!("message {i}").as_bytes());
        within("send a message", tx.send(Frame::data(msg.clone())))
            .await
            .expect("request body still open");
        assert_eq!(read_data(&mut body, msg.len()).await, msg, "message {i}");
    }
    drop(tx);
    let rest = within("the end of the stream", body.collect())
        .await
        .expect("the end of the stream");
    assert_grpc_ok(rest.trailers().expect("trailers reached the client"));
    assert!(rest.to_bytes().is_empty(), "data after the echoes");
}

#[tokio::test]
async fn websocket_messages_flow_both_ways() {
    let app = websocket_app().await;
    let (_qp, act) = stack(&app, 0, false, &[]);
    // The greeting travelled app to client; the echoes go client to app and back.
    let mut ws = open_websocket(&act).await;
    echo(&mut ws, Message::text("ping 1")).await;
    let big: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
    echo(&mut ws, Message::binary(big)).await;
    echo(&mut ws, Message::text("ping 2")).await;
    close(ws).await;
}

#[tokio::test]
async fn websocket_holds_the_pods_only_slot_until_it_closes() {
    let app = websocket_app().await;
    // The queue-proxy is unlimited: any waiting is the activator's, for cc = 1.
    let (_qp, act) = stack(&app, 1, false, &[("CONTAINER_CONCURRENCY", "0")]);
    let mut ws = open_websocket(&act).await;
    echo(&mut ws, Message::text("open")).await;

    let url = act.url("/plain");
    let queued = tokio::spawn(async move { get(&url, &REV_HEADERS).await });
    let act_ref = &act;
    eventually(
        Duration::from_secs(5),
        "the plain request waits in the activator",
        || async move { metric(act_ref, QUEUED).await == Some(1.0) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !queued.is_finished(),
        "a request ran while the websocket held the only slot: {:?}",
        queued.await
    );
    // The tunnel is still usable while the request waits.
    echo(&mut ws, Message::text("still open")).await;

    close(ws).await;
    let res = within("the waiting request after the websocket closed", queued)
        .await
        .unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "plain");
    assert_eq!(metric(&act, QUEUED).await, Some(0.0));
}
