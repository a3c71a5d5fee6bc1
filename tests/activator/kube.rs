//! The Kubernetes source against a fake API server: the initial list, watch events, a relist
//! after `410 Gone`, a dropped watch, and `config-network` read at start.
//!
//! The fake keeps one resource version counter and a per-resource event history like the real
//! API server, so a watch resumed from a version replays what it missed, and a version older
//! than the "compacted" history is answered with 410.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tests::{
    ACTIVATOR_EPHEMERAL_PORTS, ACTIVATOR_PORT_KEYS, App, Body, Process, TempDir, eventually, full,
    get,
};
use tokio::sync::mpsc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Private,
    Public,
    Revisions,
    /// Private Services, watched for the mesh fallback to their ClusterIP.
    Services,
}

impl Kind {
    fn bookmark(self, rv: u64) -> Value {
        let (api_version, kind) = match self {
            Kind::Revisions => ("serving.knative.dev/v1", "Revision"),
            Kind::Services => ("v1", "Service"),
            _ => ("v1", "Endpoints"),
        };
        json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": rv.to_string()}})
    }

    fn list_kind(self) -> (&'static str, &'static str) {
        match self {
            Kind::Revisions => ("serving.knative.dev/v1", "RevisionList"),
            Kind::Services => ("v1", "ServiceList"),
            _ => ("v1", "EndpointsList"),
        }
    }
}

#[derive(Default)]
struct Resource {
    /// (namespace, name) → object.
    objects: BTreeMap<(String, String), Value>,
    /// (resource version, event line) for replays.
    history: Vec<(u64, Bytes)>,
    /// Watches from a version below this get 410: their history is gone.
    compacted: u64,
    watches: Vec<mpsc::UnboundedSender<Bytes>>,
}

#[derive(Default)]
struct ApiState {
    rv: u64,
    resources: HashMap<Kind, Resource>,
    config_network: Option<Value>,
    /// Answer a watch from a compacted version with HTTP 410 instead of an ERROR event.
    gone_as_http: bool,
    /// How many `/version` requests still fail, as with an API server still starting. (kube
    /// retries 503 by itself, so these get 500.)
    version_failures: usize,
    /// Every request's path and query, for assertions and failure messages.
    requests: Vec<String>,
}

/// A fake Kubernetes API server.
struct FakeApi {
    state: Arc<Mutex<ApiState>>,
    app: App,
}

fn line(event_type: &str, object: &Value) -> Bytes {
    let mut text = serde_json::to_vec(&json!({"type": event_type, "object": object})).unwrap();
    text.push(b'\n');
    Bytes::from(text)
}

fn gone_status() -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version", "reason": "Expired", "code": 410,
    })
}

fn key(obj: &Value) -> (String, String) {
    (
        obj["metadata"]["namespace"].as_str().unwrap().to_owned(),
        obj["metadata"]["name"].as_str().unwrap().to_owned(),
    )
}

impl FakeApi {
    async fn start() -> Self {
        // A real server's versions are never small; a watch from "0" would mean "any".
        let state = Arc::new(Mutex::new(ApiState {
            rv: 1000,
            ..ApiState::default()
        }));
        let shared = state.clone();
        let app = App::start(move |req| {
            let state = shared.clone();
            async move { serve(&state, req.uri()) }
        })
        .await;
        Self { state, app }
    }

    fn kubeconfig(&self, dir: &TempDir) -> String {
        let path = dir.0.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
                 contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
                 current-context: fake\nusers:\n- name: fake\n  user:\n    token: t\n",
                self.app.addr
            ),
        )
        .unwrap();
        path.to_string_lossy().into_owned()
    }

    /// Adds or replaces an object and tells the watches.
    fn apply(&self, kind: Kind, mut obj: Value) {
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let r = s.resources.entry(kind).or_default();
        let event = if r.objects.insert(key(&obj), obj.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let l = line(event, &obj);
        r.history.push((rv, l.clone()));
        r.watches.retain(|w| w.send(l.clone()).is_ok());
    }

    fn delete(&self, kind: Kind, namespace: &str, name: &str) {
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        let r = s.resources.entry(kind).or_default();
        let mut obj = r
            .objects
            .remove(&(namespace.to_owned(), name.to_owned()))
            .unwrap();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let l = line("DELETED", &obj);
        r.history.push((rv, l.clone()));
        r.watches.retain(|w| w.send(l.clone()).is_ok());
    }

    /// Changes state as if while nobody watched, and the history of it were compacted away:
    /// only a relist can see it.
    fn apply_unseen(&self, kind: Kind, mut obj: Value) {
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let r = s.resources.entry(kind).or_default();
        r.objects.insert(key(&obj), obj);
        r.compacted = rv;
    }

    fn delete_unseen(&self, kind: Kind, namespace: &str, name: &str) {
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        let r = s.resources.entry(kind).or_default();
        r.objects.remove(&(namespace.to_owned(), name.to_owned()));
        r.compacted = rv;
    }

    /// Ends every open watch with an ERROR 410 event, as the API server does when a watch falls
    /// behind its history.
    fn expire_watches(&self) {
        let mut s = self.state.lock().unwrap();
        let l = line("ERROR", &gone_status());
        for r in s.resources.values_mut() {
            for w in r.watches.drain(..) {
                let _ = w.send(l.clone());
            }
        }
    }

    /// Closes every open watch response (a load balancer or the server dropping it).
    fn drop_watches(&self) {
        let mut s = self.state.lock().unwrap();
        for r in s.resources.values_mut() {
            r.watches.clear();
        }
    }

    fn bookmark(&self) {
        let mut s = self.state.lock().unwrap();
        let rv = s.rv;
        for (kind, r) in &mut s.resources {
            let l = line("BOOKMARK", &kind.bookmark(rv));
            r.watches.retain(|w| w.send(l.clone()).is_ok());
        }
    }

    fn open_watches(&self, kind: Kind) -> usize {
        let mut s = self.state.lock().unwrap();
        let r = s.resources.entry(kind).or_default();
        r.watches.retain(|w| !w.is_closed());
        r.watches.len()
    }

    fn count(&self, prefix: &str, watch: bool) -> usize {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.starts_with(prefix) && r.contains("watch=true") == watch)
            .count()
    }

    fn requests(&self) -> String {
        self.state.lock().unwrap().requests.join("\n")
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut res = Response::new(full(serde_json::to_vec(body).unwrap()));
    *res.status_mut() = status;
    res.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    res
}

fn serve(state: &Mutex<ApiState>, uri: &http::Uri) -> Response<Body> {
    let mut s = state.lock().unwrap();
    s.requests.push(uri.to_string());
    let query: HashMap<&str, &str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let kind = match uri.path() {
        "/version" if s.version_failures > 0 => {
            s.version_failures -= 1;
            return json_response(StatusCode::INTERNAL_SERVER_ERROR, &json!({}));
        }
        "/version" => {
            return json_response(
                StatusCode::OK,
                &json!({
                    "major": "1", "minor": "33", "gitVersion": "v1.33.0", "gitCommit": "x",
                    "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z",
                    "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64",
                }),
            );
        }
        "/api/v1/namespaces/knative-serving/configmaps/config-network" => {
            return match &s.config_network {
                Some(cm) => json_response(StatusCode::OK, cm),
                None => json_response(
                    StatusCode::NOT_FOUND,
                    &json!({
                        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": "configmaps \"config-network\" not found",
                        "reason": "NotFound", "code": 404,
                    }),
                ),
            };
        }
        "/api/v1/endpoints" => {
            let selector = query.get("labelSelector").copied().unwrap_or("");
            if selector.contains("Private") {
                Kind::Private
            } else if selector.contains("Public") {
                Kind::Public
            } else {
                return json_response(StatusCode::BAD_REQUEST, &json!({"unexpected": selector}));
            }
        }
        "/apis/serving.knative.dev/v1/revisions" => Kind::Revisions,
        "/api/v1/services" => Kind::Services,
        _ => return json_response(StatusCode::NOT_FOUND, &json!({})),
    };
    let rv = s.rv;
    let gone_as_http = s.gone_as_http;
    let r = s.resources.entry(kind).or_default();
    if query.get("watch") != Some(&"true") {
        let (api_version, list_kind) = kind.list_kind();
        return json_response(
            StatusCode::OK,
            &json!({
                "kind": list_kind, "apiVersion": api_version,
                "metadata": {"resourceVersion": rv.to_string()},
                "items": r.objects.values().collect::<Vec<_>>(),
            }),
        );
    }
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if from < r.compacted {
        if gone_as_http {
            return json_response(StatusCode::GONE, &gone_status());
        }
        return Response::new(full(line("ERROR", &gone_status())));
    }
    let (tx, rx) = mpsc::unbounded_channel();
    for (at, l) in &r.history {
        if *at > from {
            let _ = tx.send(l.clone());
        }
    }
    r.watches.push(tx);
    Response::new(Lines(rx).boxed())
}

/// A chunked response body fed line by line; it ends when the sender goes.
struct Lines(mpsc::UnboundedReceiver<Bytes>);

impl http_body::Body for Lines {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(http_body::Frame::data(b))))
    }
}

fn revision(name: &str) -> Value {
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Revision",
        "metadata": {"namespace": "default", "name": name, "uid": format!("uid-{name}")},
        "spec": {
            "containerConcurrency": 0,
            "timeoutSeconds": 300,
            "containers": [{"image": "app", "ports": [{"containerPort": 8080}]}],
        },
    })
}

fn private_endpoints(revision: &str, ready: &[SocketAddr]) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {
            "namespace": "default",
            "name": format!("{revision}-private"),
            "labels": {
                "serving.knative.dev/revision": revision,
                "serving.knative.dev/revisionUID": format!("uid-{revision}"),
                "networking.internal.knative.dev/serviceType": "Private",
            },
        },
        "subsets": ready.iter().map(|a| json!({
            "addresses": [{"ip": a.ip().to_string()}],
            "ports": [{"name": "http", "port": a.port()}, {"name": "http-usermetric", "port": 9091}],
        })).collect::<Vec<_>>(),
    })
}

/// A fake queue-proxy that answers the activator's probe and names itself otherwise.
async fn fake_pod(ip: [u8; 4], me: &'static str) -> App {
    App::start_on(SocketAddr::from((ip, 0)), move |req| async move {
        if req
            .headers()
            .get("k-network-probe")
            .is_some_and(|v| v == "queue")
        {
            return Response::new(full("queue"));
        }
        Response::new(full(me))
    })
    .await
}

async fn start_activator(api: &FakeApi, dir: &TempDir) -> Process {
    let env: HashMap<String, String> = [
        ("POD_NAME", "activator-abc".to_owned()),
        ("POD_IP", "127.0.0.1".to_owned()),
        ("SYSTEM_NAMESPACE", "knative-serving".to_owned()),
        ("ACTIVATOR_LOG_LEVEL", "debug".to_owned()),
        ("KUBECONFIG", api.kubeconfig(dir)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    // Blocking: it waits for the listeners, which open only after the fake API has answered.
    tokio::task::spawn_blocking(move || {
        Process::start_binary(
            "activator",
            &[
                &ACTIVATOR_EPHEMERAL_PORTS[..],
                &[
                    "--autoscaler-url",
                    "ws://127.0.0.1:1/",
                    "--ready-without-autoscaler",
                ],
            ]
            .concat(),
            &env,
            &ACTIVATOR_PORT_KEYS,
        )
    })
    .await
    .unwrap()
}

/// GET through the activator for `revision`: (status, body).
async fn call(act: &Process, revision: &str) -> (u16, String) {
    let res = get(
        &format!("http://127.0.0.1:{}/", act.port("ACTIVATOR_HTTP1_PORT")),
        &[
            ("knative-serving-namespace", "default"),
            ("knative-serving-revision", revision),
        ],
    )
    .await;
    (res.status.as_u16(), res.text())
}

const WAIT: Duration = Duration::from_secs(5);

/// Polls until `revision` answers `want` (status, and body unless empty).
async fn answers(act: &Process, api: &FakeApi, revision: &str, want: (u16, &str)) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        if let Ok(got) = tokio::time::timeout_at(deadline, call(act, revision)).await {
            if got.0 == want.0 && (want.1.is_empty() || got.1 == want.1) {
                return;
            }
            last = Some(got);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "timed out waiting for {revision} to answer {want:?}; last {last:?}\nrequests:\n{}\nlogs:\n{}",
        api.requests(),
        act.logs()
    );
}

/// Pods `pod a` and `pod b`, and a fake API server that lists revision `hello-00001` with its
/// endpoint on `pod a`.
async fn one_revision_on_pod_a() -> (App, App, FakeApi) {
    let pod_a = fake_pod([127, 0, 0, 2], "pod a").await;
    let pod_b = fake_pod([127, 0, 0, 3], "pod b").await;
    let api = FakeApi::start().await;
    api.apply(Kind::Revisions, revision("hello-00001"));
    api.apply(
        Kind::Private,
        private_endpoints("hello-00001", &[pod_a.addr]),
    );
    (pod_a, pod_b, api)
}

#[tokio::test]
async fn initial_list_then_watch_events_route_requests() {
    let (pod_a, pod_b, api) = one_revision_on_pod_a().await;
    let dir = TempDir::new();
    let act = start_activator(&api, &dir).await;

    // (a) From the initial list.
    answers(&act, &api, "hello-00001", (200, "pod a")).await;
    assert!(
        api.count(
            "/api/v1/namespaces/knative-serving/configmaps/config-network",
            false
        ) >= 1
    );

    // (b) Added through the watch, then its endpoints move to another pod.
    answers(&act, &api, "hello-00002", (404, "")).await;
    api.apply(Kind::Revisions, revision("hello-00002"));
    api.apply(
        Kind::Private,
        private_endpoints("hello-00002", &[pod_a.addr]),
    );
    answers(&act, &api, "hello-00002", (200, "pod a")).await;
    api.apply(
        Kind::Private,
        private_endpoints("hello-00002", &[pod_b.addr]),
    );
    answers(&act, &api, "hello-00002", (200, "pod b")).await;

    // (c) Deleted: 404, while the other revision carries on.
    api.delete(Kind::Revisions, "default", "hello-00002");
    answers(&act, &api, "hello-00002", (404, "")).await;
    answers(&act, &api, "hello-00001", (200, "pod a")).await;

    // Created again with the same name while its endpoints never changed: it still has its pod.
    api.apply(Kind::Revisions, revision("hello-00002"));
    answers(&act, &api, "hello-00002", (200, "pod b")).await;
}

async fn relist_after_gone(gone_as_http: bool) {
    let (_pod_a, pod_b, api) = one_revision_on_pod_a().await;
    api.state.lock().unwrap().gone_as_http = gone_as_http;
    let dir = TempDir::new();
    let act = start_activator(&api, &dir).await;
    answers(&act, &api, "hello-00001", (200, "pod a")).await;
    let lists = api.count("/apis/serving.knative.dev/v1/revisions", false);

    // Changes the watches never see: one revision replaced by another, with its pod.
    api.delete_unseen(Kind::Revisions, "default", "hello-00001");
    api.apply_unseen(Kind::Revisions, revision("hello-00002"));
    api.apply_unseen(
        Kind::Private,
        private_endpoints("hello-00002", &[pod_b.addr]),
    );
    if gone_as_http {
        // The next watch request is refused outright.
        api.drop_watches();
    } else {
        api.expire_watches();
    }
    answers(&act, &api, "hello-00002", (200, "pod b")).await;
    answers(&act, &api, "hello-00001", (404, "")).await;
    assert!(
        api.count("/apis/serving.knative.dev/v1/revisions", false) > lists,
        "no relist:\n{}",
        api.requests()
    );
}

#[tokio::test]
async fn a_410_event_makes_the_watcher_relist() {
    relist_after_gone(false).await;
}

#[tokio::test]
async fn an_http_410_on_a_watch_makes_the_watcher_relist() {
    relist_after_gone(true).await;
}

#[tokio::test]
async fn a_dropped_watch_resumes_and_bookmarks_are_tolerated() {
    let pod_a = fake_pod([127, 0, 0, 2], "pod a").await;
    let api = FakeApi::start().await;
    api.state.lock().unwrap().config_network = Some(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"namespace": "knative-serving", "name": "config-network"},
        "data": {"mesh-compatibility-mode": "disabled"},
    }));
    let dir = TempDir::new();
    let act = start_activator(&api, &dir).await;
    answers(&act, &api, "hello-00001", (404, "")).await;
    eventually(WAIT, "all three watches open", || async {
        api.open_watches(Kind::Revisions) == 1
            && api.open_watches(Kind::Private) == 1
            && api.open_watches(Kind::Public) == 1
    })
    .await;
    let watches = api.count("/apis/serving.knative.dev/v1/revisions", true);
    let lists = api.count("/apis/serving.knative.dev/v1/revisions", false);

    api.bookmark();
    api.apply(Kind::Revisions, revision("hello-00001"));
    api.bookmark();
    api.drop_watches();
    // Missed while the watches reconnect: the resumed watch replays it from the history.
    api.apply(
        Kind::Private,
        private_endpoints("hello-00001", &[pod_a.addr]),
    );
    answers(&act, &api, "hello-00001", (200, "pod a")).await;
    assert!(api.count("/apis/serving.knative.dev/v1/revisions", true) > watches);
    // Resumed, not relisted: the bookmarks and the dropped stream were no errors.
    assert_eq!(
        api.count("/apis/serving.knative.dev/v1/revisions", false),
        lists,
        "{}",
        api.requests()
    );
    assert!(act.logs().contains("Disabled"), "{}", act.logs());
}

#[tokio::test]
async fn start_up_waits_for_the_api_server() {
    let api = FakeApi::start().await;
    api.state.lock().unwrap().version_failures = 2;
    let dir = TempDir::new();
    let act = start_activator(&api, &dir).await;
    assert_eq!(api.count("/version", false), 3, "{}", api.requests());
    assert!(act.logs().contains("not reachable yet"), "{}", act.logs());
    answers(&act, &api, "hello-00001", (404, "")).await;
}
