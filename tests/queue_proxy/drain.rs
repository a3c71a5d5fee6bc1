//! SIGTERM and the drain (contract section 5.4): the quiet period, `/wait-for-drain`, and work that must finish first.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tests::{
    App, Collected, QueueProxy, echo_app, eventually, full, get, h2c, http1, send,
    start_queue_proxy as queue_proxy, within,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Notify,
};

/// Waits up to `limit` for the process to exit, without blocking the runtime the fake app and
/// clients run on. `None` if it is still running (or was killed by a signal).
async fn exit_code(qp: &mut QueueProxy, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(code) = qp.wait_exit(Duration::ZERO) {
            return Some(code);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the process is still running.
fn running(qp: &mut QueueProxy) -> bool {
    qp.wait_exit(Duration::ZERO).is_none()
}

/// GET with a bound on the whole exchange.
async fn get_within(url: &str, headers: &[(&str, &str)]) -> Collected {
    within(url, Duration::from_secs(15), get(url, headers)).await
}

/// A kubelet health check of the queue-proxy on `url`.
async fn health(url: &str) -> Collected {
    get_within(
        url,
        &[
            ("User-Agent", "kube-probe/1.30"),
            ("K-Network-Probe", "queue"),
        ],
    )
    .await
}

/// An app that signals `arrived` for each request, then answers 200 `done` after `delay`.
async fn slow_app(delay: Duration, arrived: Arc<Notify>) -> App {
    App::start(move |_req: Request<Incoming>| {
        let arrived = arrived.clone();
        async move {
            arrived.notify_one();
            tokio::time::sleep(delay).await;
            Response::new(full("done"))
        }
    })
    .await
}

/// `http://127.0.0.1:<admin port><path>`.
fn admin_url(qp: &QueueProxy, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", qp.port("QUEUE_ADMIN_PORT"))
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish() {
    let arrived = Arc::new(Notify::new());
    let app = slow_app(Duration::from_secs(2), arrived.clone()).await;
    let mut qp = queue_proxy(app.port(), &[]);
    let req = Request::get(qp.url("/slow")).body(full("")).unwrap();
    let call = tokio::spawn(async move { send(&http1(), req).await });
    within(
        "the request reaches the app",
        Duration::from_secs(5),
        arrived.notified(),
    )
    .await;

    qp.signal("TERM");
    let res = within("the in-flight response", Duration::from_secs(10), call)
        .await
        .expect("the in-flight request completes");
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.text(), "done");
    let code = exit_code(&mut qp, Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "logs:\n{}", qp.logs());
}

#[tokio::test]
async fn quiet_period_fails_probes_but_still_proxies() {
    let app = echo_app().await;
    let mut qp = queue_proxy(app.port(), &[("QUEUE_DRAIN_QUIET_SECONDS", "2")]);
    let url = qp.url("/");
    let before = health(&url).await;
    assert_eq!(before.status, StatusCode::OK);
    assert_eq!(before.text(), "queue");

    qp.signal("TERM");
    eventually(
        Duration::from_secs(5),
        "health checks fail once draining",
        || async { health(&url).await.status == StatusCode::SERVICE_UNAVAILABLE },
    )
    .await;
    let probe = health(&url).await;
    assert_eq!(probe.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(probe.text(), "shutting down\n");

    let kprobe = get_within(
        &url,
        &[("K-Network-Probe", "probe"), ("K-Network-Hash", "abc123")],
    )
    .await;
    assert_eq!(kprobe.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(kprobe.text(), "shutting down\n");

    // Traffic is still proxied, and restarts the quiet period.
    let normal = get_within(&qp.url("/during-drain"), &[]).await;
    let last_request = Instant::now();
    assert_eq!(normal.status, StatusCode::OK);
    assert_eq!(normal.text(), "hello");
    assert!(running(&mut qp), "exited during the quiet period");

    let code = exit_code(&mut qp, Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "logs:\n{}", qp.logs());
    assert!(
        last_request.elapsed() >= Duration::from_millis(1500),
        "exited {:?} after the last request, within the 2 s quiet period",
        last_request.elapsed()
    );
}

#[tokio::test]
async fn a_second_signal_exits_at_once_with_1() {
    let app = echo_app().await;
    let mut qp = queue_proxy(app.port(), &[("QUEUE_DRAIN_QUIET_SECONDS", "30")]);
    let url = qp.url("/");
    qp.signal("TERM");
    // Draining: the first signal has been handled and the second-signal watcher is armed.
    eventually(Duration::from_secs(5), "the drain starts", || async {
        health(&url).await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert!(running(&mut qp), "exited before the quiet period ended");

    qp.signal("TERM");
    let code = exit_code(&mut qp, Duration::from_secs(5)).await;
    assert_eq!(code, Some(1), "logs:\n{}", qp.logs());
}

#[tokio::test]
async fn wait_for_drain_without_sigterm_resets_the_drain() {
    let app = echo_app().await;
    let mut qp = queue_proxy(app.port(), &[("QUEUE_DRAIN_QUIET_SECONDS", "5")]);
    let url = qp.url("/");
    let admin = admin_url(&qp, "/wait-for-drain");
    let start = Instant::now();
    let hook = tokio::spawn(async move { get_within(&admin, &[]).await });

    // While the hook waits, the pod drains: health checks fail.
    let mut saw_draining = false;
    while !hook.is_finished() && start.elapsed() < Duration::from_secs(10) {
        if health(&url).await.status == StatusCode::SERVICE_UNAVAILABLE {
            saw_draining = true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let res = within("/wait-for-drain", Duration::from_secs(10), hook)
        .await
        .unwrap();
    let took = start.elapsed();
    assert_eq!(res.status, StatusCode::OK);
    assert!(saw_draining, "health checks never failed during the hook");
    // No SIGTERM within 1 s: a container restart. The hook returns then, not after the 5 s quiet
    // period.
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(4000),
        "/wait-for-drain took {took:?}"
    );

    // The drain was reset: the pod is ready again and keeps serving.
    let probe = health(&url).await;
    assert_eq!(probe.status, StatusCode::OK, "{}", probe.text());
    assert_eq!(probe.text(), "queue");
    assert_eq!(get_within(&url, &[]).await.status, StatusCode::OK);
    assert!(running(&mut qp), "exited without a signal");
}

#[tokio::test]
async fn wait_for_drain_followed_by_sigterm_returns_after_the_quiet_period() {
    let app = echo_app().await;
    let mut qp = queue_proxy(app.port(), &[("QUEUE_DRAIN_QUIET_SECONDS", "3")]);
    let url = qp.url("/");
    let admin = admin_url(&qp, "/wait-for-drain");
    let start = Instant::now();
    let hook = tokio::spawn(async move { get_within(&admin, &[]).await });
    eventually(
        Duration::from_secs(5),
        "the hook starts the drain",
        || async { health(&url).await.status == StatusCode::SERVICE_UNAVAILABLE },
    )
    .await;

    // Pod deletion: SIGTERM follows the pre-stop hook within 1 s.
    qp.signal("TERM");
    let res = within("/wait-for-drain", Duration::from_secs(10), hook)
        .await
        .unwrap();
    let took = start.elapsed();
    assert_eq!(res.status, StatusCode::OK);
    assert!(
        took >= Duration::from_millis(2500),
        "/wait-for-drain returned after {took:?}, before the 3 s quiet period ended"
    );
    let code = exit_code(&mut qp, Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "logs:\n{}", qp.logs());
}

#[tokio::test]
async fn admin_port_serves_only_wait_for_drain() {
    let app = echo_app().await;
    let mut qp = queue_proxy(app.port(), &[("QUEUE_DRAIN_QUIET_SECONDS", "5")]);
    for path in ["/", "/health", "/wait-for-drain/x", "/metrics"] {
        let res = get_within(&admin_url(&qp, path), &[]).await;
        assert_eq!(res.status, StatusCode::NOT_FOUND, "{path}");
    }
    // None of them started a drain.
    let probe = health(&qp.url("/")).await;
    assert_eq!(probe.status, StatusCode::OK);
    assert!(running(&mut qp));
}

/// An app that accepts any upgrade with `101` and echoes the tunnel's bytes back.
async fn echo_upgrade_app() -> App {
    App::start(|mut req: Request<Incoming>| async move {
        if !req.headers().contains_key(header::UPGRADE) {
            return Response::new(full("not an upgrade"));
        }
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = on.await else { return };
            let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .body(full(""))
            .unwrap()
    })
    .await
}

/// Writes `msg` into the tunnel and expects it back.
async fn echo(stream: &mut TcpStream, msg: &[u8]) {
    within("the echo", Duration::from_secs(5), async {
        stream.write_all(msg).await.expect("write to the tunnel");
        let mut back = vec![0; msg.len()];
        stream.read_exact(&mut back).await.expect("read the echo");
        assert_eq!(back, msg);
    })
    .await;
}

#[tokio::test]
async fn drain_waits_for_an_upgraded_connection() {
    let app = echo_upgrade_app().await;
    let mut qp = queue_proxy(app.port(), &[("QUEUE_DRAIN_QUIET_SECONDS", "0")]);
    let mut stream = within(
        "connect",
        Duration::from_secs(5),
        TcpStream::connect(qp.addr()),
    )
    .await
    .unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: hello.default\r\nConnection: Upgrade\r\n\
              Upgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
    let head = within("the 101", Duration::from_secs(5), async {
        let mut head = Vec::new();
        let mut byte = [0; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut byte).await.expect("read the head");
            assert_eq!(
                n,
                1,
                "closed mid-head: {:?}",
                String::from_utf8_lossy(&head)
            );
            head.push(byte[0]);
        }
        String::from_utf8_lossy(&head).into_owned()
    })
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    echo(&mut stream, b"before").await;

    qp.signal("TERM");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(running(&mut qp), "exited with a websocket open");
    echo(&mut stream, b"after the signal").await;
    assert!(running(&mut qp), "exited with a websocket open");

    drop(stream);
    let code = exit_code(&mut qp, Duration::from_secs(5)).await;
    assert_eq!(code, Some(0), "logs:\n{}", qp.logs());
}

#[tokio::test]
async fn drain_waits_for_an_h2c_stream() {
    let arrived = Arc::new(Notify::new());
    let app = slow_app(Duration::from_secs(2), arrived.clone()).await;
    let mut qp = queue_proxy(app.port(), &[]);
    let req = Request::get(qp.url("/slow")).body(full("")).unwrap();
    let call = tokio::spawn(async move { send(&h2c(), req).await });
    within(
        "the stream reaches the app",
        Duration::from_secs(5),
        arrived.notified(),
    )
    .await;

    qp.signal("TERM");
    let res = within("the in-flight stream", Duration::from_secs(10), call)
        .await
        .expect("the in-flight stream completes");
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.text(), "done");
    let code = exit_code(&mut qp, Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "logs:\n{}", qp.logs());
}
