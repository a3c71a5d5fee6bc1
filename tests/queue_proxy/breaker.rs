//! The containerConcurrency breaker.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tests::{App, QueueProxy, channel_body, eventually, full, get, queue_proxy_env};
use tokio::sync::Semaphore;

/// An app whose requests block until the test releases them; it counts running requests and
/// records the most it ever saw at once.
struct GatedApp {
    app: App,
    gate: Arc<Semaphore>,
    running: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
}

async fn gated_app() -> GatedApp {
    let gate = Arc::new(Semaphore::new(0));
    let running = Arc::new(AtomicUsize::new(0));
    let max = Arc::new(AtomicUsize::new(0));
    let app = App::start({
        let (gate, running, max) = (gate.clone(), running.clone(), max.clone());
        move |_req: Request<Incoming>| {
            let (gate, running, max) = (gate.clone(), running.clone(), max.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(now, Ordering::SeqCst);
                gate.acquire().await.unwrap().forget();
                running.fetch_sub(1, Ordering::SeqCst);
                Response::new(full("done"))
            }
        }
    })
    .await;
    GatedApp {
        app,
        gate,
        running,
        max,
    }
}

#[tokio::test]
async fn cc_one_runs_one_queues_ten_and_rejects_the_rest() {
    let g = gated_app().await;
    let mut env = queue_proxy_env(g.app.port());
    env.insert("CONTAINER_CONCURRENCY".into(), "1".into());
    let qp = QueueProxy::start(&env);
    let url = qp.url("/");
    let mut admitted = Vec::new();
    for _ in 0..11 {
        let url = url.clone();
        admitted.push(tokio::spawn(async move { get(&url, &[]).await }));
    }
    let running = g.running.clone();
    eventually(
        Duration::from_secs(5),
        "one request reaches the app",
        || {
            let running = running.clone();
            async move { running.load(Ordering::SeqCst) == 1 }
        },
    )
    .await;
    // Give the other ten time to reach the queue.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rejected = get(&url, &[]).await;
    assert_eq!(rejected.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(rejected.text(), "pending request queue full\n");
    assert_eq!(
        rejected.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(rejected.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        g.running.load(Ordering::SeqCst),
        1,
        "still only one at the app"
    );

    g.gate.add_permits(11);
    for r in admitted {
        let res = tokio::time::timeout(Duration::from_secs(10), r)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((res.status, res.text().as_str()), (StatusCode::OK, "done"));
    }
    assert_eq!(
        g.max.load(Ordering::SeqCst),
        1,
        "never more than cc at the app"
    );
}

#[tokio::test]
async fn cc_zero_is_unlimited() {
    let g = gated_app().await;
    let qp = QueueProxy::start(&queue_proxy_env(g.app.port()));
    let url = qp.url("/");
    let reqs: Vec<_> = (0..60)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url, &[]).await })
        })
        .collect();
    let running = g.running.clone();
    eventually(
        Duration::from_secs(10),
        "all 60 requests at the app at once",
        || {
            let running = running.clone();
            async move { running.load(Ordering::SeqCst) == 60 }
        },
    )
    .await;
    g.gate.add_permits(60);
    for r in reqs {
        assert_eq!(r.await.unwrap().status, 200);
    }
}

#[tokio::test]
async fn the_slot_is_held_until_the_response_body_ends() {
    // The app answers headers at once and streams its body until the test says so.
    let feeder = Arc::new(tokio::sync::Mutex::new(None));
    let app = App::start({
        let feeder = feeder.clone();
        move |req: Request<Incoming>| {
            let feeder = feeder.clone();
            async move {
                if req.uri().path() != "/stream" {
                    return Response::new(full("quick"));
                }
                let (tx, body) = channel_body();
                tx.send(http_body::Frame::data(bytes::Bytes::from_static(b"first ")))
                    .await
                    .unwrap();
                *feeder.lock().await = Some(tx);
                Response::new(body)
            }
        }
    })
    .await;
    let mut env = queue_proxy_env(app.port());
    env.insert("CONTAINER_CONCURRENCY".into(), "1".into());
    let qp = QueueProxy::start(&env);

    let streaming = tests::http1()
        .request(Request::get(qp.url("/stream")).body(full("")).unwrap())
        .await
        .unwrap();
    assert_eq!(streaming.status(), 200, "headers arrived");
    let quick = tokio::spawn({
        let url = qp.url("/quick");
        async move { get(&url, &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !quick.is_finished(),
        "the streaming response still holds the only slot"
    );
    let tx = feeder.lock().await.take().unwrap();
    tx.send(http_body::Frame::data(bytes::Bytes::from_static(b"last")))
        .await
        .unwrap();
    drop(tx);
    let body = http_body_util::BodyExt::collect(streaming.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"first last");
    let quick = tokio::time::timeout(Duration::from_secs(5), quick)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(quick.text(), "quick");
}

#[tokio::test]
async fn kubelet_probe_header_bypasses_the_breaker() {
    let g = gated_app().await;
    let mut env = queue_proxy_env(g.app.port());
    env.insert("CONTAINER_CONCURRENCY".into(), "1".into());
    let qp = QueueProxy::start(&env);
    let held = tokio::spawn({
        let url = qp.url("/");
        async move { get(&url, &[]).await }
    });
    let running = g.running.clone();
    eventually(Duration::from_secs(5), "slot taken", || {
        let running = running.clone();
        async move { running.load(Ordering::SeqCst) == 1 }
    })
    .await;
    let bypass = tokio::spawn({
        let url = qp.url("/");
        async move { get(&url, &[("k-kubelet-probe", "queue")]).await }
    });
    eventually(
        Duration::from_secs(5),
        "the K-Kubelet-Probe request reaches the app past the breaker",
        || {
            let running = running.clone();
            async move { running.load(Ordering::SeqCst) == 2 }
        },
    )
    .await;
    g.gate.add_permits(2);
    assert_eq!(held.await.unwrap().status, 200);
    assert_eq!(bypass.await.unwrap().status, 200);
}
