//! SIGTERM: readiness fails at once, traffic is still served for `--drain-seconds`, what is in
//! flight (websockets included) finishes, then the process exits 0.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use http::{Request, Response};
use hyper::body::Incoming;
use tests::{Activator, App, Process, eventually, full, get, revision};
use tokio::{net::TcpStream, sync::Notify};
use tokio_tungstenite::tungstenite::Message;

use crate::protocols::{REV, REV_HEADERS, close, echo, open_websocket, websocket_app, within};

/// Waits up to `limit` for the process to exit, without blocking the runtime the fake pod and
/// clients run on. `None` if it is still running (or was killed by a signal).
async fn exit_code(p: &mut Process, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(code) = p.wait_exit(Duration::ZERO) {
            return Some(code);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A kubelet readiness probe of the activator: status and body.
async fn kubelet_probe(act: &Activator) -> (u16, String) {
    let res = within(
        "kubelet probe",
        get(&act.url("/"), &[("User-Agent", "kube-probe/1.30")]),
    )
    .await;
    (res.status.as_u16(), res.text())
}

/// A fake pod: answers the activator's probe with `queue`; `/slow` signals `arrived` and answers
/// 200 `slow` after 2 s; anything else gets 200 `fast` at once.
async fn slow_pod(arrived: Arc<Notify>) -> App {
    App::start(move |req: Request<Incoming>| {
        let arrived = arrived.clone();
        async move {
            if req
                .headers()
                .get("k-network-probe")
                .is_some_and(|v| v == "queue")
            {
                return Response::new(full("queue"));
            }
            if req.uri().path() == "/slow" {
                arrived.notify_one();
                tokio::time::sleep(Duration::from_secs(2)).await;
                return Response::new(full("slow"));
            }
            Response::new(full("fast"))
        }
    })
    .await
}

#[tokio::test]
async fn sigterm_fails_readiness_keeps_serving_and_finishes_in_flight_requests() {
    let arrived = Arc::new(Notify::new());
    let pod = slow_pod(arrived.clone()).await;
    let mut act = Activator::start(
        serde_json::json!([revision(REV, 0, &[pod.addr])]),
        &["--drain-seconds", "1"],
        &[],
    );
    assert_eq!(kubelet_probe(&act).await, (200, String::new()));

    let url = act.url("/slow");
    let slow = tokio::spawn(async move { get(&url, &REV_HEADERS).await });
    within("the slow request reaches the pod", arrived.notified()).await;

    act.process.signal("TERM");
    let signalled = Instant::now();
    // The signal is handled asynchronously: allow it a moment, far less than the drain period.
    let act_ref = &act;
    eventually(
        Duration::from_millis(500),
        "readiness fails after SIGTERM",
        || async move {
            kubelet_probe(act_ref).await == (500, "received SIGTERM from kubelet\n".to_owned())
        },
    )
    .await;

    // Still inside the 1 s drain period: new connections and requests are served.
    let at = signalled.elapsed();
    assert!(
        at < Duration::from_millis(800),
        "the check came too late to be inside the drain period: {at:?}"
    );
    let res = get(&act.url("/new"), &REV_HEADERS).await;
    assert_eq!((res.status.as_u16(), res.text().as_str()), (200, "fast"));

    let res = within("the in-flight request", slow).await.unwrap();
    assert_eq!(
        (res.status.as_u16(), res.text().as_str()),
        (200, "slow"),
        "{}",
        act.process.logs()
    );
    assert_eq!(
        exit_code(&mut act.process, Duration::from_secs(5)).await,
        Some(0),
        "{}",
        act.process.logs()
    );
}

#[tokio::test]
async fn sigterm_leaves_an_open_websocket_working_until_the_client_closes_it() {
    let app = websocket_app().await;
    let mut act = Activator::start(
        serde_json::json!([revision(REV, 0, &[app.addr])]),
        &["--drain-seconds", "0"],
        &[],
    );
    let mut ws = open_websocket(&act).await;
    echo(&mut ws, Message::text("before SIGTERM")).await;

    act.process.signal("TERM");
    // With no drain period the listeners close at once: the drain has really started.
    let port = act.process.port("ACTIVATOR_HTTP1_PORT");
    eventually(
        Duration::from_secs(3),
        "the activator stops accepting connections",
        || async move { TcpStream::connect(("127.0.0.1", port)).await.is_err() },
    )
    .await;

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        exit_code(&mut act.process, Duration::ZERO).await,
        None,
        "exited with a websocket open: {}",
        act.process.logs()
    );
    echo(&mut ws, Message::text("after SIGTERM")).await;
    echo(&mut ws, Message::binary(vec![7u8; 64 * 1024])).await;

    close(ws).await;
    assert_eq!(
        exit_code(&mut act.process, Duration::from_secs(5)).await,
        Some(0),
        "{}",
        act.process.logs()
    );
}
