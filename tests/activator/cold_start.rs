//! Cold starts: requests wait while a revision has no healthy pod and are released once one
//! passes its probe; containerConcurrency per pod and the load balancing policies; the bounded
//! pending queue; the revision and response-start timeouts.
//!
//! Also home of [`FakePod`], the fake queue-proxy the other activator tests share.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use serde_json::json;
use tests::{Activator, Body, Collected, eventually, full, get, revision, within};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

// === the fake pod ===

/// What a fake pod saw.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// Requests that reached it, probes excluded.
    pub(crate) requests: AtomicUsize,
    /// Requests it is serving now.
    current: AtomicUsize,
    /// The most requests it ever served at once.
    pub(crate) max_concurrent: AtomicUsize,
    /// Probes it answered `queue` (ready).
    pub(crate) ready_probes: AtomicUsize,
    /// Probes it answered in any way.
    pub(crate) probes: AtomicUsize,
    /// Headers of the first probes (any request with `K-Network-Probe`).
    pub(crate) probe_headers: Mutex<Vec<HeaderMap>>,
    /// Connections open that have not carried a request yet.
    unused_connections: AtomicUsize,
    /// Requests (probes excluded) that came on a connection accepted while it was not ready.
    on_early_connections: AtomicUsize,
}

impl Seen {
    pub(crate) fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub(crate) fn max_concurrent(&self) -> usize {
        self.max_concurrent.load(Ordering::SeqCst)
    }

    pub(crate) fn ready_probes(&self) -> usize {
        self.ready_probes.load(Ordering::SeqCst)
    }

    pub(crate) fn probes(&self) -> usize {
        self.probes.load(Ordering::SeqCst)
    }

    pub(crate) fn unused_connections(&self) -> usize {
        self.unused_connections.load(Ordering::SeqCst)
    }

    pub(crate) fn on_early_connections(&self) -> usize {
        self.on_early_connections.load(Ordering::SeqCst)
    }
}

/// A fake pod: a queue-proxy on its own loopback address. It answers the activator's probe
/// (`K-Network-Probe: queue`) with `queue` while `ready` is set and 503 otherwise; any other
/// request is answered, after `delay`, with 200, `x-pod: <ip>`, every request header echoed as
/// `x-echo-<name>` (repeated values joined with `, `) and the request body as its body.
///
/// Dropping it kills it: the listener and every open connection close, as when a pod dies.
pub(crate) struct FakePod {
    pub(crate) addr: SocketAddr,
    pub(crate) ready: Arc<AtomicBool>,
    pub(crate) seen: Arc<Seen>,
    _alive: watch::Sender<()>,
    _accept: JoinHandle<()>,
}

impl FakePod {
    /// A ready pod on `ip`, port chosen by the kernel.
    pub(crate) async fn start(ip: [u8; 4]) -> Self {
        Self::start_on(SocketAddr::from((ip, 0)), true, Duration::ZERO).await
    }

    /// A pod on `ip` that fails its probe until `ready` is set.
    pub(crate) async fn unready(ip: [u8; 4]) -> Self {
        Self::start_on(SocketAddr::from((ip, 0)), false, Duration::ZERO).await
    }

    /// A ready pod on `ip` that takes `delay` before answering each request.
    pub(crate) async fn slow(ip: [u8; 4], delay: Duration) -> Self {
        Self::start_on(SocketAddr::from((ip, 0)), true, delay).await
    }

    /// A pod on `addr`.
    pub(crate) async fn start_on(addr: SocketAddr, ready: bool, delay: Duration) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ready = Arc::new(AtomicBool::new(ready));
        let seen = Arc::new(Seen::default());
        let (alive, dead) = watch::channel(());
        let pod_ip = HeaderValue::try_from(addr.ip().to_string()).unwrap();
        let accept = tokio::spawn({
            let (ready, seen) = (ready.clone(), seen.clone());
            let mut dead = dead;
            async move {
                loop {
                    let stream = tokio::select! {
                        _ = dead.changed() => return,
                        accepted = listener.accept() => match accepted {
                            Ok((stream, _)) => stream,
                            Err(_) => continue,
                        },
                    };
                    let (ready, seen, pod_ip) = (ready.clone(), seen.clone(), pod_ip.clone());
                    let mut dead = dead.clone();
                    let early = !ready.load(Ordering::SeqCst);
                    seen.unused_connections.fetch_add(1, Ordering::SeqCst);
                    let used = Arc::new(AtomicBool::new(false));
                    let (seen_at_close, used_at_close) = (seen.clone(), used.clone());
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let (ready, seen, pod_ip) =
                                (ready.clone(), seen.clone(), pod_ip.clone());
                            if !used.swap(true, Ordering::SeqCst) {
                                seen.unused_connections.fetch_sub(1, Ordering::SeqCst);
                            }
                            if early && !req.headers().contains_key("k-network-probe") {
                                seen.on_early_connections.fetch_add(1, Ordering::SeqCst);
                            }
                            async move {
                                Ok::<_, std::convert::Infallible>(
                                    handle(req, &ready, &seen, pod_ip, delay).await,
                                )
                            }
                        });
                        let builder = auto::Builder::new(TokioExecutor::new());
                        let conn = builder.serve_connection(TokioIo::new(stream), svc);
                        // A killed pod's connections close with it.
                        tokio::select! {
                            _ = conn => {}
                            _ = dead.changed() => {}
                        }
                        if !used_at_close.swap(true, Ordering::SeqCst) {
                            seen_at_close
                                .unused_connections
                                .fetch_sub(1, Ordering::SeqCst);
                        }
                    });
                }
            }
        });
        Self {
            addr,
            ready,
            seen,
            _alive: alive,
            _accept: accept,
        }
    }

    /// Lets it pass its probe from now on.
    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Kills it and waits until its port refuses connections.
    pub(crate) async fn kill(self) {
        let addr = self.addr;
        drop(self);
        eventually(Duration::from_secs(5), "the killed pod refuses", || async {
            tokio::net::TcpStream::connect(addr).await.is_err()
        })
        .await;
    }
}

async fn handle(
    req: Request<Incoming>,
    ready: &AtomicBool,
    seen: &Seen,
    pod_ip: HeaderValue,
    delay: Duration,
) -> Response<Body> {
    if let Some(probe) = req.headers().get("k-network-probe") {
        seen.probes.fetch_add(1, Ordering::SeqCst);
        {
            let mut headers = seen.probe_headers.lock().unwrap();
            if headers.len() < 16 {
                headers.push(req.headers().clone());
            }
        }
        if probe == "queue" && ready.load(Ordering::SeqCst) {
            seen.ready_probes.fetch_add(1, Ordering::SeqCst);
            return Response::new(full("queue"));
        }
        let mut res = Response::new(full("not ready\n"));
        *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return res;
    }
    seen.requests.fetch_add(1, Ordering::SeqCst);
    let now = seen.current.fetch_add(1, Ordering::SeqCst) + 1;
    seen.max_concurrent.fetch_max(now, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    tokio::time::sleep(delay).await;
    seen.current.fetch_sub(1, Ordering::SeqCst);
    let mut res = Response::new(full(body));
    res.headers_mut().insert("x-pod", pod_ip);
    for name in parts.headers.keys() {
        let joined = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        res.headers_mut().insert(
            HeaderName::try_from(format!("x-echo-{name}")).unwrap(),
            HeaderValue::try_from(joined).unwrap(),
        );
    }
    res
}

// === shared helpers ===

/// GET `/` for revision `default/<name>`, identified by the revision headers.
pub(crate) async fn get_rev(act: &Activator, name: &str) -> Collected {
    get_url(act.url("/"), name.to_owned()).await
}

/// [`get_rev`] with owned arguments, for spawned tasks.
pub(crate) async fn get_url(url: String, name: String) -> Collected {
    get(
        &url,
        &[
            ("knative-serving-namespace", "default"),
            ("knative-serving-revision", &name),
        ],
    )
    .await
}

/// POST `body` to `/` for revision `default/<name>`.
pub(crate) async fn post_rev(act: &Activator, name: &str, body: Body) -> Collected {
    let req = Request::post(act.url("/"))
        .header("knative-serving-namespace", "default")
        .header("knative-serving-revision", name)
        .body(body)
        .unwrap();
    tests::send(&tests::http1(), req).await
}

/// Which pod served a response (its IP), or `-` for a response that did not come from one.
pub(crate) fn served_by(res: &Collected) -> String {
    res.header("x-pod").unwrap_or("-").to_owned()
}

/// A gauge of the metrics page for revision `default/<name>`.
pub(crate) async fn revision_gauge(act: &Activator, gauge: &str, name: &str) -> Option<usize> {
    let prefix = format!("{gauge}{{k8s_namespace_name=\"default\",kn_revision_name=\"{name}\"}} ");
    act.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}

/// Requests of revision `default/<name>` waiting for a pod.
pub(crate) async fn queued(act: &Activator, name: &str) -> usize {
    revision_gauge(act, "kn_revision_request_queued", name)
        .await
        .unwrap_or(0)
}

/// Waits until each pod answered a probe `queue`, plus a moment for the activator to act on
/// the answers.
pub(crate) async fn all_probed_ready(pods: &[&FakePod]) {
    eventually(Duration::from_secs(5), "every pod probed ready", || async {
        pods.iter().all(|p| p.seen.ready_probes() > 0)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
}

const SECOND: Duration = Duration::from_secs(1);

fn spawn_gets(act: &Activator, name: &str, n: usize) -> Vec<JoinHandle<Collected>> {
    (0..n)
        .map(|_| tokio::spawn(get_url(act.url("/"), name.to_owned())))
        .collect()
}

async fn all_ok(act: &Activator, tasks: Vec<JoinHandle<Collected>>) -> Vec<Collected> {
    let mut out = Vec::new();
    for t in tasks {
        let res = within("a released request", 5 * SECOND, t).await.unwrap();
        act.assert_ok(&res);
        out.push(res);
    }
    out
}

// === waiting for a pod ===

#[tokio::test]
async fn requests_wait_for_a_pod_that_fails_its_probe_and_go_once_it_passes() {
    let pod = FakePod::unready([127, 0, 2, 2]).await;
    let act = Activator::start(json!([revision("cold", 0, &[pod.addr])]), &[], &[]);
    let waiting = spawn_gets(&act, "cold", 5);
    eventually(5 * SECOND, "5 requests waiting", || async {
        queued(&act, "cold").await == 5
    })
    .await;
    eventually(5 * SECOND, "the pod was probed", || async {
        pod.seen.probes() >= 2
    })
    .await;
    assert!(
        waiting.iter().all(|t| !t.is_finished()),
        "a request did not wait"
    );
    assert_eq!(pod.seen.requests(), 0);

    pod.set_ready();
    let done = all_ok(&act, waiting).await;
    assert!(done.iter().all(|r| served_by(r) == "127.0.2.2"));
    assert_eq!(pod.seen.requests(), 5);
    assert_eq!(queued(&act, "cold").await, 0);

    let probes = pod.seen.probe_headers.lock().unwrap().clone();
    assert!(!probes.is_empty());
    for h in &probes {
        assert_eq!(h["user-agent"], "Knative-Activator-Probe", "{h:?}");
        assert_eq!(h["k-network-probe"], "queue", "{h:?}");
    }
}

/// The connections the released requests need are opened while the pod is still starting, one
/// per waiting request and never more than cc, so none is dialled in the burst after its first
/// `queue`; with nothing waiting, a starting pod gets only its probes.
///
/// Probes come on connections of their own, one at a time per pod, so a probe in flight counts
/// as one unused connection until its request is read.
#[tokio::test]
async fn connections_for_waiting_requests_are_opened_while_the_pod_starts() {
    let idle_pod = FakePod::unready([127, 0, 2, 20]).await;
    let pod = FakePod::unready([127, 0, 2, 21]).await;
    let cc_pod = FakePod::unready([127, 0, 2, 22]).await;
    let act = Activator::start(
        json!([
            revision("nobody-waits", 0, &[idle_pod.addr]),
            revision("prewarm", 0, &[pod.addr]),
            revision("prewarm-cc", 2, &[cc_pod.addr])
        ]),
        &[],
        &[],
    );
    let waiting = spawn_gets(&act, "prewarm", 5);
    let waiting_cc = spawn_gets(&act, "prewarm-cc", 5);
    eventually(5 * SECOND, "connections opened and unused", || async {
        pod.seen.unused_connections() >= 5 && cc_pod.seen.unused_connections() >= 2
    })
    .await;
    // A few more probe rounds: opening them started at the first answer and is long done.
    let probes = (pod.seen.probes(), cc_pod.seen.probes());
    eventually(5 * SECOND, "more probes", || async {
        pod.seen.probes() >= probes.0 + 3 && cc_pod.seen.probes() >= probes.1 + 3
    })
    .await;
    assert!(
        waiting.iter().chain(&waiting_cc).all(|t| !t.is_finished()),
        "a request did not wait"
    );
    assert!(idle_pod.seen.unused_connections() <= 1, "only its probe");

    pod.set_ready();
    cc_pod.set_ready();
    all_ok(&act, waiting).await;
    all_ok(&act, waiting_cc).await;
    // Every request went on a connection opened before its pod was ready...
    assert_eq!(pod.seen.on_early_connections(), 5);
    assert_eq!(cc_pod.seen.on_early_connections(), 5);
    // ...and none was opened for nothing: cc 2 took two, however many waited.
    eventually(5 * SECOND, "every connection used", || async {
        pod.seen.unused_connections() == 0 && cc_pod.seen.unused_connections() == 0
    })
    .await;
}

#[tokio::test]
async fn requests_wait_for_a_pod_whose_port_is_not_listening_yet() {
    let addr = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 2, 10], 0)))
        .unwrap()
        .local_addr()
        .unwrap();
    let act = Activator::start(json!([revision("late", 0, &[addr])]), &[], &[]);
    let waiting = spawn_gets(&act, "late", 3);
    eventually(5 * SECOND, "3 requests waiting", || async {
        queued(&act, "late").await == 3
    })
    .await;
    // Refused probes go on meanwhile; none of them may fail a waiting request.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        waiting.iter().all(|t| !t.is_finished()),
        "a request did not wait"
    );

    let pod = FakePod::start_on(addr, true, Duration::ZERO).await;
    all_ok(&act, waiting).await;
    assert_eq!(pod.seen.requests(), 3);
}

// === containerConcurrency and load balancing ===

#[tokio::test]
async fn cc_one_never_sends_a_pod_two_requests_at_once() {
    let mut pods = Vec::new();
    for i in 2..5 {
        pods.push(FakePod::slow([127, 0, 2, 20 + i], Duration::from_millis(200)).await);
    }
    let addrs: Vec<_> = pods.iter().map(|p| p.addr).collect();
    let act = Activator::start(json!([revision("one", 1, &addrs)]), &[], &[]);
    all_probed_ready(&pods.iter().collect::<Vec<_>>()).await;

    let tasks = spawn_gets(&act, "one", 12);
    all_ok(&act, tasks).await;
    for p in &pods {
        assert_eq!(
            p.seen.max_concurrent(),
            1,
            "pod {} saw {} at once",
            p.addr,
            p.seen.max_concurrent()
        );
    }
    assert_eq!(pods.iter().map(|p| p.seen.requests()).sum::<usize>(), 12);
}

#[tokio::test]
async fn cc_zero_spreads_requests_over_every_pod() {
    let mut pods = Vec::new();
    for i in 2..5 {
        pods.push(FakePod::slow([127, 0, 2, 30 + i], Duration::from_millis(10)).await);
    }
    let addrs: Vec<_> = pods.iter().map(|p| p.addr).collect();
    let act = Activator::start(json!([revision("zero", 0, &addrs)]), &[], &[]);
    all_probed_ready(&pods.iter().collect::<Vec<_>>()).await;

    let tasks = spawn_gets(&act, "zero", 60);
    all_ok(&act, tasks).await;
    let counts: Vec<_> = pods.iter().map(|p| p.seen.requests()).collect();
    assert_eq!(counts.iter().sum::<usize>(), 60);
    assert!(counts.iter().all(|&c| c >= 3), "uneven spread: {counts:?}");
}

#[tokio::test]
async fn cc_three_packs_onto_the_first_pod() {
    let mut pods = Vec::new();
    for i in 2..5 {
        pods.push(FakePod::start([127, 0, 2, 40 + i]).await);
    }
    let addrs: Vec<_> = pods.iter().map(|p| p.addr).collect();
    let act = Activator::start(json!([revision("pack", 3, &addrs)]), &[], &[]);
    all_probed_ready(&pods.iter().collect::<Vec<_>>()).await;

    for _ in 0..10 {
        let res = get_rev(&act, "pack").await;
        assert_eq!(res.status, StatusCode::OK, "{}", act.process.logs());
        assert_eq!(served_by(&res), "127.0.2.42");
    }
}

#[tokio::test]
async fn cc_four_goes_round_robin() {
    let mut pods = Vec::new();
    for i in 2..5 {
        pods.push(FakePod::start([127, 0, 2, 50 + i]).await);
    }
    let addrs: Vec<_> = pods.iter().map(|p| p.addr).collect();
    let act = Activator::start(json!([revision("rr", 4, &addrs)]), &[], &[]);
    eventually(5 * SECOND, "every pod in use", || async {
        let res = get_rev(&act, "rr").await;
        assert_eq!(res.status, StatusCode::OK, "{}", act.process.logs());
        pods.iter().all(|p| p.seen.requests() > 0)
    })
    .await;
    let before: Vec<_> = pods.iter().map(|p| p.seen.requests()).collect();

    for _ in 0..30 {
        let res = get_rev(&act, "rr").await;
        assert_eq!(res.status, StatusCode::OK, "{}", act.process.logs());
    }
    let counts: Vec<_> = pods
        .iter()
        .zip(before)
        .map(|(p, b)| p.seen.requests() - b)
        .collect();
    assert_eq!(counts, vec![10, 10, 10]);
}

// === the pending queue ===

#[tokio::test]
async fn a_full_revision_queue_answers_503_at_once_and_the_waiting_ones_still_succeed() {
    let pod = FakePod::unready([127, 0, 2, 60]).await;
    let act = Activator::start(
        json!([revision("busy", 0, &[pod.addr])]),
        &["--max-pending-requests", "5"],
        &[],
    );
    let waiting = spawn_gets(&act, "busy", 5);
    eventually(5 * SECOND, "5 requests waiting", || async {
        queued(&act, "busy").await == 5
    })
    .await;

    let start = Instant::now();
    let res = get_rev(&act, "busy").await;
    let took = start.elapsed();
    assert_eq!(
        res.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        res.text()
    );
    assert_eq!(res.text(), "pending request queue full\n");
    assert!(took < SECOND, "the 503 took {took:?}");
    assert!(waiting.iter().all(|t| !t.is_finished()));

    pod.set_ready();
    all_ok(&act, waiting).await;
    assert_eq!(pod.seen.requests(), 5);
}

#[tokio::test]
async fn the_total_queue_bound_spans_revisions() {
    let a = FakePod::unready([127, 0, 2, 70]).await;
    let b = FakePod::unready([127, 0, 2, 71]).await;
    let act = Activator::start(
        json!([revision("a", 0, &[a.addr]), revision("b", 0, &[b.addr])]),
        &["--max-pending-total", "3"],
        &[],
    );
    let mut waiting = spawn_gets(&act, "a", 2);
    waiting.extend(spawn_gets(&act, "b", 1));
    eventually(5 * SECOND, "3 requests waiting", || async {
        queued(&act, "a").await == 2 && queued(&act, "b").await == 1
    })
    .await;

    for name in ["a", "b"] {
        let start = Instant::now();
        let res = get_rev(&act, name).await;
        let took = start.elapsed();
        assert_eq!(
            res.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            res.text()
        );
        assert_eq!(res.text(), "pending request queue full\n");
        assert!(took < SECOND, "the 503 took {took:?}");
    }

    a.set_ready();
    b.set_ready();
    all_ok(&act, waiting).await;
}

// === timeouts ===

#[tokio::test]
async fn a_request_waiting_past_the_revision_timeout_gets_504() {
    let pod = FakePod::unready([127, 0, 2, 80]).await;
    let mut rev = revision("slowstart", 0, &[pod.addr]);
    rev["timeoutSeconds"] = json!(1);
    let act = Activator::start(json!([rev]), &["--max-pending-requests", "1"], &[]);

    let start = Instant::now();
    let res = within("the timeout", 5 * SECOND, get_rev(&act, "slowstart")).await;
    let took = start.elapsed();
    assert_eq!(res.status, StatusCode::GATEWAY_TIMEOUT, "{}", res.text());
    assert_eq!(res.text(), "activator request timeout");
    assert!(
        took >= Duration::from_millis(900),
        "timed out early: {took:?}"
    );
    // The request gave its place in the queue back.
    eventually(5 * SECOND, "the queue empties", || async {
        queued(&act, "slowstart").await == 0
    })
    .await;
    let again = spawn_gets(&act, "slowstart", 1);
    eventually(5 * SECOND, "the next one waits", || async {
        queued(&act, "slowstart").await == 1
    })
    .await;
    pod.set_ready();
    all_ok(&act, again).await;
}

#[tokio::test]
async fn a_pod_that_delays_its_headers_past_the_response_start_timeout_gets_504() {
    let pod = FakePod::slow([127, 0, 2, 90], Duration::from_secs(6)).await;
    let mut rev = revision("mute", 0, &[pod.addr]);
    rev["responseStartTimeoutSeconds"] = json!(1);
    let act = Activator::start(json!([rev]), &[], &[]);
    all_probed_ready(&[&pod]).await;

    let start = Instant::now();
    let res = within("the timeout", 5 * SECOND, get_rev(&act, "mute")).await;
    let took = start.elapsed();
    assert_eq!(res.status, StatusCode::GATEWAY_TIMEOUT, "{}", res.text());
    assert_eq!(res.text(), "activator request timeout");
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert_eq!(pod.seen.requests(), 1, "the pod never got the request");
}
