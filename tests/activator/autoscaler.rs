//! The autoscaler connection, against a websocket server in the test: readiness follows it,
//! statistics arrive as protobuf `WireStatMessages` (an immediate poke for the first request of
//! an idle revision, then one report a second), and the connection comes back after the
//! autoscaler closes it for a restart.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use http::{Request, Response};
use hyper::body::Incoming;
use prost::Message as _;
use proxy_core::stat::{WireStatMessage, WireStatMessages};
use tests::{Activator, App, eventually, full, get, revision};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Notify,
    time::Instant,
};
use tokio_tungstenite::{
    WebSocketStream, accept_async,
    tungstenite::{
        Message,
        protocol::{CloseFrame, frame::coding::CloseCode},
    },
};

use crate::protocols::{QUEUED, REV, REV_HEADERS, metric, within};

const REACHABLE: &str = "kn_activator_stats_conn_reachable{peer=\"autoscaler\"}";
const CONN_ERRORS: &str = "kn_activator_stats_conn_errors_total{peer=\"autoscaler\"}";
const NOT_CONNECTED: &str = "connection has not yet been established\n";

/// The poke must beat the next periodic report. Reports come every 1 s, so 900 ms is the
/// loosest bound that still tells a poke from a report: generous for a request on loopback.
const POKE_WITHIN: Duration = Duration::from_millis(900);

/// A fake autoscaler: a listener the test accepts websockets on when it chooses. Until then the
/// activator's connection attempt waits in the kernel's backlog, its handshake unanswered.
struct Autoscaler {
    listener: TcpListener,
}

impl Autoscaler {
    async fn bind() -> Self {
        Self {
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/", self.listener.local_addr().unwrap())
    }

    /// Accepts the activator's next websocket; a connection it already gave up on is skipped.
    async fn accept(&self) -> Conn {
        within("the activator connects to the autoscaler", async {
            loop {
                let (tcp, _) = self.listener.accept().await.unwrap();
                if let Ok(ws) = accept_async(tcp).await {
                    return Conn(ws);
                }
            }
        })
        .await
    }
}

/// One accepted autoscaler connection.
struct Conn(WebSocketStream<TcpStream>);

impl Conn {
    /// The next statistics batch, or `None` if none came by `deadline`. Pings are answered and
    /// skipped; anything else is a failure.
    async fn next_batch(&mut self, deadline: Instant) -> Option<WireStatMessages> {
        loop {
            let msg = tokio::time::timeout_at(deadline, self.0.next())
                .await
                .ok()?;
            match msg
                .expect("the activator keeps the connection open")
                .expect("a websocket frame")
            {
                Message::Binary(b) => {
                    return Some(WireStatMessages::decode(b).expect("a WireStatMessages"));
                }
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected frame from the activator: {other:?}"),
            }
        }
    }

    /// Reads batches until one has a message for [`REV`] that satisfies `check`; panics at
    /// `deadline`, showing what did arrive.
    async fn wait_for(
        &mut self,
        deadline: Instant,
        what: &str,
        check: impl Fn(&WireStatMessage) -> bool,
    ) -> WireStatMessage {
        let mut seen = Vec::new();
        loop {
            let Some(batch) = self.next_batch(deadline).await else {
                panic!("no batch with {what} in time; got {seen:#?}");
            };
            if let Some(m) = batch.messages.iter().find(|m| is_rev(m) && check(m)) {
                return m.clone();
            }
            seen.push(batch);
        }
    }
}

fn is_rev(m: &WireStatMessage) -> bool {
    m.namespace == "default" && m.name == REV
}

fn concurrency(m: &WireStatMessage) -> f64 {
    m.stat
        .as_ref()
        .map_or(0.0, |s| s.average_concurrent_requests)
}

/// Starts the activator against `autoscaler`, readiness following the connection.
fn activator(autoscaler: &Autoscaler, revisions: serde_json::Value) -> Activator {
    let url = autoscaler.url();
    Activator::start(
        revisions,
        &["--autoscaler-url", &url, "--require-autoscaler"],
        &[],
    )
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

/// Waits until the kubelet probe answers `status`.
async fn ready_becomes(act: &Activator, status: u16) {
    eventually(
        Duration::from_secs(3),
        &format!("kubelet probe answers {status}"),
        || async move { kubelet_probe(act).await.0 == status },
    )
    .await;
}

/// A fake pod: answers the activator's probe with `queue`; `/slow` waits for `release` before
/// answering `slow`; anything else gets `fast`.
async fn pod(release: Arc<Notify>) -> App {
    App::start(move |req: Request<Incoming>| {
        let release = release.clone();
        async move {
            if req
                .headers()
                .get("k-network-probe")
                .is_some_and(|v| v == "queue")
            {
                return Response::new(full("queue"));
            }
            if req.uri().path() == "/slow" {
                release.notified().await;
                return Response::new(full("slow"));
            }
            Response::new(full("fast"))
        }
    })
    .await
}

/// The poke: one request, concurrency one, from this activator's pod. (Reports that follow it
/// subtract its request, so they do not look like it.)
fn is_poke(m: &WireStatMessage) -> bool {
    m.stat.as_ref().is_some_and(|s| {
        s.pod_name == "activator-abc"
            && s.average_concurrent_requests == 1.0
            && s.request_count == 1.0
    })
}

const POKE: &str = "the poke (pod activator-abc, concurrency 1, count 1)";

#[tokio::test]
async fn readiness_and_reachability_follow_the_connection() {
    let autoscaler = Autoscaler::bind().await;
    let act = activator(&autoscaler, serde_json::json!([]));
    // Not accepted yet: the handshake hangs.
    assert_eq!(kubelet_probe(&act).await, (500, NOT_CONNECTED.to_owned()));
    assert_eq!(metric(&act, REACHABLE).await, Some(0.0));

    let _conn = autoscaler.accept().await;
    ready_becomes(&act, 200).await;
    assert_eq!(kubelet_probe(&act).await, (200, String::new()));
    assert_eq!(metric(&act, REACHABLE).await, Some(1.0));
}

#[tokio::test]
async fn first_request_pokes_at_once_then_reports_show_it_in_flight() {
    let release = Arc::new(Notify::new());
    let pod = pod(release.clone()).await;
    let autoscaler = Autoscaler::bind().await;
    let act = activator(
        &autoscaler,
        serde_json::json!([revision(REV, 0, &[pod.addr])]),
    );
    let mut conn = autoscaler.accept().await;
    // Connected: nothing is dropped any more.
    ready_becomes(&act, 200).await;

    let sent = Instant::now();
    let url = act.url("/slow");
    let slow = tokio::spawn(async move { get(&url, &REV_HEADERS).await });
    // Sooner than any periodic report could carry it.
    conn.wait_for(sent + POKE_WITHIN, POKE, is_poke).await;

    // The report right after subtracts the poke's request (it may say 0); the one after that
    // covers a whole second of the request in flight.
    let report = conn
        .wait_for(
            Instant::now() + Duration::from_millis(3500),
            "concurrency above 0",
            |m| concurrency(m) > 0.0,
        )
        .await;
    assert_eq!(
        report.stat.as_ref().unwrap().pod_name,
        "activator-abc",
        "{report:?}"
    );
    assert!(!slow.is_finished(), "the pod has not answered yet");

    release.notify_one();
    let res = within("the slow request", slow).await.unwrap();
    assert_eq!((res.status.as_u16(), res.text().as_str()), (200, "slow"));
}

#[tokio::test]
async fn requests_waiting_for_a_pod_are_reported_and_queued() {
    let release = Arc::new(Notify::new());
    let pod = pod(release).await;
    let autoscaler = Autoscaler::bind().await;
    // No endpoints yet: a revision scaled to zero.
    let act = activator(&autoscaler, serde_json::json!([revision(REV, 0, &[])]));
    let mut conn = autoscaler.accept().await;
    ready_becomes(&act, 200).await;

    let sent = Instant::now();
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let url = act.url("/fast");
            tokio::spawn(async move { get(&url, &REV_HEADERS).await })
        })
        .collect();
    conn.wait_for(sent + POKE_WITHIN, POKE, is_poke).await;

    let act_ref = &act;
    eventually(
        Duration::from_secs(3),
        "both requests queued",
        || async move { metric(act_ref, QUEUED).await == Some(2.0) },
    )
    .await;
    assert_eq!(
        metric(&act, "activator_pending_requests_total").await,
        Some(2.0)
    );
    conn.wait_for(
        Instant::now() + Duration::from_millis(3500),
        "concurrency above 0",
        |m| concurrency(m) > 0.0,
    )
    .await;
    assert!(waiting.iter().all(|t| !t.is_finished()), "no pod to run on");

    // A pod appears: both go through.
    act.set_revisions(serde_json::json!([revision(REV, 0, &[pod.addr])]));
    for t in waiting {
        let res = within("a waiting request once a pod is up", t)
            .await
            .unwrap();
        assert_eq!((res.status.as_u16(), res.text().as_str()), (200, "fast"));
    }
    assert_eq!(metric(&act, QUEUED).await, Some(0.0));
}

#[tokio::test]
async fn reconnects_after_the_autoscaler_closes_for_a_restart() {
    let release = Arc::new(Notify::new());
    let pod = pod(release).await;
    let autoscaler = Autoscaler::bind().await;
    let act = activator(
        &autoscaler,
        serde_json::json!([revision(REV, 0, &[pod.addr])]),
    );
    let mut first = autoscaler.accept().await;
    ready_becomes(&act, 200).await;

    within(
        "close with 1012",
        first.0.close(Some(CloseFrame {
            code: CloseCode::Restart,
            reason: "autoscaler restarting".into(),
        })),
    )
    .await
    .expect("send close");
    // Whatever the activator answers, the connection ends.
    within("the first connection ends", async {
        while let Some(Ok(_)) = first.0.next().await {}
    })
    .await;

    // Not accepting yet: the activator's new attempt waits, and so does readiness.
    ready_becomes(&act, 500).await;
    assert_eq!(kubelet_probe(&act).await, (500, NOT_CONNECTED.to_owned()));
    assert_eq!(metric(&act, REACHABLE).await, Some(0.0));
    assert!(
        metric(&act, CONN_ERRORS).await.unwrap_or(0.0) >= 1.0,
        "a lost connection is counted"
    );

    let mut second = autoscaler.accept().await;
    ready_becomes(&act, 200).await;
    assert_eq!(metric(&act, REACHABLE).await, Some(1.0));

    // Statistics flow on the new connection.
    let sent = Instant::now();
    let res = get(&act.url("/fast"), &REV_HEADERS).await;
    assert_eq!(res.status, 200);
    second.wait_for(sent + POKE_WITHIN, POKE, is_poke).await;
}

#[tokio::test]
async fn a_burst_on_an_idle_revision_is_reported_in_full_by_the_next_report() {
    const BURST: usize = 4;
    const WARM: &str = "warm-00001";
    let release = Arc::new(Notify::new());
    let pod = pod(release).await;
    let autoscaler = Autoscaler::bind().await;
    // REV has no pod (a burst waits there); WARM has one, to find when reports go out.
    let act = activator(
        &autoscaler,
        serde_json::json!([revision(REV, 0, &[]), revision(WARM, 0, &[pod.addr])]),
    );
    let mut conn = autoscaler.accept().await;
    ready_becomes(&act, 200).await;
    // REV stays idle a while, as a revision scaled to zero does.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // WARM's request is poked, then reported at the next tick: right after that report, a whole
    // second is left before the next one, so the burst cannot straddle two reports.
    let mut warm_headers = REV_HEADERS;
    warm_headers[1].1 = WARM;
    assert_eq!(get(&act.url("/fast"), &warm_headers).await.status, 200);
    let mut warm_batches = 0;
    while warm_batches < 2 {
        let batch = conn
            .next_batch(Instant::now() + Duration::from_secs(3))
            .await
            .expect("WARM's poke and report");
        warm_batches += batch.messages.iter().filter(|m| m.name == WARM).count();
    }

    let waiting: Vec<_> = (0..BURST)
        .map(|_| {
            let url = act.url("/fast");
            tokio::spawn(async move { get(&url, &REV_HEADERS).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_millis(1500);
    conn.wait_for(deadline, POKE, is_poke).await;
    // The next report for REV: the burst was in flight (waiting) for nearly all of its window
    // since the first arrival, so it averages close to BURST, less the poke's one.
    let report = conn
        .wait_for(deadline, "the report after the poke", |_| true)
        .await;
    let stat = report.stat.as_ref().unwrap();
    assert_eq!(stat.request_count, (BURST - 1) as f64, "{report:?}");
    assert!(
        stat.average_concurrent_requests >= BURST as f64 - 1.5,
        "the burst of {BURST} is under-reported: {report:?}"
    );
    drop(waiting);
}
