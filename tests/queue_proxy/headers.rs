//! Header rules on the way to the app and back.

use http::Request;
use tests::{QueueProxy, echo_app, full, get, h2c, queue_proxy_env, send};

#[tokio::test]
async fn original_host_is_restored_and_revision_headers_removed() {
    let app = echo_app().await;
    let qp = QueueProxy::start(&queue_proxy_env(app.port()));
    let res = get(
        &qp.url("/"),
        &[
            ("k-original-host", "hello.default.example.com"),
            ("knative-serving-revision", "hello-00001"),
            ("knative-serving-namespace", "default"),
            ("k-proxy-request", "activator"),
        ],
    )
    .await;
    assert_eq!(res.header("x-echo-host"), Some("hello.default.example.com"));
    assert!(res.header("x-echo-k-original-host").is_none());
    assert!(res.header("x-echo-knative-serving-revision").is_none());
    assert!(res.header("x-echo-knative-serving-namespace").is_none());
    assert_eq!(
        res.header("x-echo-k-proxy-request"),
        Some("activator"),
        "kept for the app, as upstream"
    );
}

#[tokio::test]
async fn original_host_becomes_the_authority_over_h2c() {
    let app = echo_app().await;
    let qp = QueueProxy::start(&queue_proxy_env(app.port()));
    let req = Request::get(qp.url("/"))
        .header("k-original-host", "h2.example.com")
        .body(full(""))
        .unwrap();
    let res = send(&h2c(), req).await;
    assert_eq!(res.header("x-echo-version"), Some("HTTP/2.0"));
    assert_eq!(res.header("x-echo-host"), Some("h2.example.com"));
}

#[tokio::test]
async fn host_is_preserved() {
    let app = echo_app().await;
    let qp = QueueProxy::start(&queue_proxy_env(app.port()));
    let res = get(&qp.url("/"), &[("host", "app.example.com")]).await;
    assert_eq!(res.header("x-echo-host"), Some("app.example.com"));
}

#[tokio::test]
async fn forwarded_is_synthesised_and_the_peer_appended() {
    let app = echo_app().await;
    let qp = QueueProxy::start(&queue_proxy_env(app.port()));
    let res = get(
        &qp.url("/"),
        &[
            ("x-forwarded-for", "10.1.2.3, ::1"),
            ("x-forwarded-host", "example.com"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    assert_eq!(
        res.header("x-echo-forwarded"),
        Some(r#"for=10.1.2.3;host=example.com;proto=https, for="[::1]""#)
    );
    assert_eq!(
        res.header("x-echo-x-forwarded-for"),
        Some("10.1.2.3, ::1, 127.0.0.1")
    );
    let res = get(&qp.url("/"), &[]).await;
    assert_eq!(
        res.header("x-echo-x-forwarded-for"),
        Some("127.0.0.1"),
        "the peer, written as IPv4"
    );
    assert!(res.header("x-echo-forwarded").is_none());
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_trace_context_kept() {
    let app = echo_app().await;
    let qp = QueueProxy::start(&queue_proxy_env(app.port()));
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let res = get(
        &qp.url("/"),
        &[
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic eA=="),
            ("te", "trailers"),
            ("traceparent", traceparent),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("baggage", "userId=alice"),
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ],
    )
    .await;
    for gone in [
        "x-echo-x-hop",
        "x-echo-keep-alive",
        "x-echo-proxy-authorization",
    ] {
        assert!(res.header(gone).is_none(), "{gone} reached the app");
    }
    assert_eq!(res.header("x-echo-te"), Some("trailers"));
    assert_eq!(res.header("x-echo-traceparent"), Some(traceparent));
    assert_eq!(res.header("x-echo-tracestate"), Some("congo=t61rcWkgMzE"));
    assert_eq!(res.header("x-echo-baggage"), Some("userId=alice"));
    assert_eq!(
        res.header("x-echo-x-b3-traceid"),
        Some("80f198ee56343ba864fe8b2a57d3eff7")
    );
}

#[tokio::test]
async fn app_errors_pass_through_untouched() {
    let app = tests::App::start(|_req| async {
        http::Response::builder()
            .status(418)
            .header("x-app", "1")
            .body(full("teapot"))
            .unwrap()
    })
    .await;
    let qp = QueueProxy::start(&queue_proxy_env(app.port()));
    let res = get(&qp.url("/"), &[]).await;
    assert_eq!(
        (
            res.status.as_u16(),
            res.text().as_str(),
            res.header("x-app")
        ),
        (418, "teapot", Some("1"))
    );
}

#[tokio::test]
async fn a_malformed_request_gets_a_4xx_and_the_proxy_lives_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = echo_app().await;
    let qp = QueueProxy::start(&queue_proxy_env(app.port()));
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
    ] {
        let mut s = tokio::net::TcpStream::connect(qp.addr()).await.unwrap();
        s.write_all(garbage).await.unwrap();
        let mut buf = Vec::new();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        let head = String::from_utf8_lossy(&buf);
        assert!(head.is_empty() || head.starts_with("HTTP/1.1 4"), "{head}");
    }
    assert_eq!(get(&qp.url("/"), &[]).await.status, 200);
}

#[tokio::test]
async fn an_http10_app_is_answered_over_the_clients_http11() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An HTTP/1.0 app that closes each connection after answering, as python's http.server does.
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = app.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = app.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let _ = s
                    .write_all(b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nold but fine")
                    .await;
            });
        }
    });
    let qp = QueueProxy::start(&queue_proxy_env(port));
    let mut s = tokio::net::TcpStream::connect(qp.addr()).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        // The app's body has no length, so it reaches the client chunked.
        while !String::from_utf8_lossy(&got).ends_with("old but fine\r\n0\r\n\r\n") {
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut chunk))
                .await
                .expect("response in time")
                .unwrap();
            assert!(n > 0, "the proxy closed the client's connection: {got:?}");
            got.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    }
}
