//! Helpers shared by the integration tests: the real binaries, fake apps, and clients.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, Once},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;

/// A response body any handler can return.
pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A complete body.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|e| match e {}).boxed()
}

/// The workspace's `target/<profile>` folder.
fn target_dir() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| manifest.parent().unwrap().join("target"), PathBuf::from);
    target.join(if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    })
}

/// Path of a workspace binary, built (once per test process) with the test's own profile.
pub fn binary(name: &str) -> PathBuf {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "queue-proxy",
            "-p",
            "activator",
            "--bins",
            "--example",
            "hello",
        ]);
        // What `cargo test` sets for this test crate would reach build scripts that watch it
        // (ring's): each test run and each plain build would then rebuild half the tree.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|p| key.starts_with(p))
                || key == "CARGO_PRIMARY_PACKAGE"
                || key == "CARGO_TARGET_TMPDIR"
            {
                cmd.env_remove(&*key);
            }
        }
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building the binaries failed");
    });
    target_dir().join(name)
}

// === queue-proxy ===

/// The environment upstream's controller gives a queue-proxy, pointed at `user_port`, with every
/// port the test does not care about left to the kernel.
pub fn queue_proxy_env(user_port: u16) -> HashMap<String, String> {
    [
        ("CONTAINER_CONCURRENCY", "0".to_owned()),
        ("QUEUE_SERVING_PORT", "0".to_owned()),
        ("QUEUE_SERVING_TLS_PORT", "0".to_owned()),
        ("USER_PORT", user_port.to_string()),
        ("REVISION_TIMEOUT_SECONDS", "300".to_owned()),
        ("SERVING_LOGGING_CONFIG", String::new()),
        ("SERVING_LOGGING_LEVEL", "debug".to_owned()),
        ("SERVING_NAMESPACE", "default".to_owned()),
        ("SERVING_CONFIGURATION", "hello".to_owned()),
        ("SERVING_REVISION", "hello-00001".to_owned()),
        ("SERVING_POD", "hello-00001-deployment-abc".to_owned()),
        ("SERVING_POD_IP", "127.0.0.1".to_owned()),
        ("QUEUE_METRICS_PORT", "0".to_owned()),
        ("QUEUE_ADMIN_PORT", "0".to_owned()),
        ("QUEUE_DRAIN_QUIET_SECONDS", "0".to_owned()),
        ("QUEUE_CERTS_DIR", "/nonexistent".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// A running queue-proxy process. Killed when dropped.
pub type QueueProxy = Process;

/// A running binary of the workspace. Killed when dropped.
pub struct Process {
    child: Child,
    ports: HashMap<String, u16>,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Starts the queue-proxy with exactly `env` (nothing inherited but `PATH`) and waits until
    /// every listener has logged its port.
    pub fn start(env: &HashMap<String, String>) -> Self {
        Self::start_binary(
            "queue-proxy",
            &[],
            env,
            &[
                "QUEUE_SERVING_PORT",
                "QUEUE_METRICS_PORT",
                "QUEUE_ADMIN_PORT",
            ],
        )
    }

    /// Starts the workspace binary `name` with `args` and exactly `env` (nothing inherited but
    /// `PATH`), and waits until each listener in `expected` has logged its port
    /// (`listening (KEY)`).
    pub fn start_binary(
        name: &str,
        args: &[&str],
        env: &HashMap<String, String>,
        expected: &[&str],
    ) -> Self {
        let mut cmd = Command::new(binary(name));
        cmd.args(args)
            .env_clear()
            .envs(env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<(String, u16)>();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                        let msg = v["message"].as_str().unwrap_or("");
                        if let (Some(key), Some(port)) = (
                            msg.strip_prefix("listening (")
                                .and_then(|m| m.strip_suffix(')')),
                            v["port"].as_u64(),
                        ) {
                            let _ = tx.send((key.to_owned(), port as u16));
                        }
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let mut ports = HashMap::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !expected.iter().all(|k| ports.contains_key(*k)) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok((k, p)) => {
                    ports.insert(k, p);
                }
                Err(_) => panic!(
                    "{name} did not start; logs:\n{}",
                    logs.lock().unwrap().join("\n")
                ),
            }
        }
        // Optional listeners (TLS, Prometheus) log right after the others.
        while let Ok((k, p)) = rx.recv_timeout(Duration::from_millis(200)) {
            ports.insert(k, p);
        }
        Self { child, ports, logs }
    }

    /// The port a listener bound, by its env key (`QUEUE_SERVING_PORT`, ...).
    pub fn port(&self, key: &str) -> u16 {
        *self
            .ports
            .get(key)
            .unwrap_or_else(|| panic!("no {key} listener; logs:\n{}", self.logs()))
    }

    /// Whether a listener for `key` was started.
    pub fn has_port(&self, key: &str) -> bool {
        self.ports.contains_key(key)
    }

    /// `http://127.0.0.1:<serving port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port("QUEUE_SERVING_PORT"))
    }

    /// The serving address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port("QUEUE_SERVING_PORT")))
    }

    /// Everything it printed so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits up to `timeout` for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary with `env` until it exits (within 20 s) and returns its exit code and
/// everything it printed (stderr, then stdout), for start-up failures.
pub fn run_to_exit(env: &HashMap<String, String>) -> (Option<i32>, String) {
    let mut cmd = Command::new(binary("queue-proxy"));
    cmd.env_clear()
        .envs(env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("run queue-proxy");
    let id = child.id();
    // A binary that does not exit fails the test instead of hanging it.
    let (done, exited) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if exited.recv_timeout(Duration::from_secs(20)).is_err() {
            let _ = Command::new("kill")
                .args(["-KILL", &id.to_string()])
                .status();
        }
    });
    let out = child.wait_with_output().expect("run queue-proxy");
    let _ = done.send(());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    (out.status.code(), text)
}

// === fake apps ===

type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync,
>;

/// A fake application on `127.0.0.1:<port>` speaking HTTP/1.1 and h2c, with upgrades.
pub struct App {
    /// Its address.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl App {
    /// Serves `handler` on a fresh port.
    pub async fn start<F, Fut>(handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        Self::start_on("127.0.0.1:0".parse().unwrap(), handler).await
    }

    /// Serves `handler` on `addr`.
    pub async fn start_on<F, Fut>(addr: SocketAddr, handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handler(req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, task }
    }

    /// The app's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An app that answers 200 `hello` and echoes request headers back as `x-echo-<name>`, the
/// request's `Host`/authority as `x-echo-host`, and its protocol version as `x-echo-version`.
pub async fn echo_app() -> App {
    App::start(|req: Request<Incoming>| async move {
        let mut res = Response::new(full("hello"));
        for (k, v) in req.headers() {
            if let Ok(name) = http::HeaderName::try_from(format!("x-echo-{k}")) {
                res.headers_mut().append(name, v.clone());
            }
        }
        let host = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .or_else(|| {
                req.headers()
                    .get("host")
                    .map(|h| h.to_str().unwrap().to_owned())
            })
            .unwrap_or_default();
        res.headers_mut()
            .insert("x-echo-host", host.parse().unwrap());
        res.headers_mut().insert(
            "x-echo-version",
            format!("{:?}", req.version()).parse().unwrap(),
        );
        res.headers_mut().insert(
            "x-echo-path",
            req.uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default()
                .parse()
                .unwrap(),
        );
        res
    })
    .await
}

// === clients ===

/// An HTTP/1.1 client.
pub fn http1() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An h2c (prior knowledge) client.
pub fn h2c() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A collected response.
#[derive(Debug)]
pub struct Collected {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Collected {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// Sends `req` and reads the whole response.
pub async fn send(client: &Client<HttpConnector, Body>, req: Request<Body>) -> Collected {
    let res = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("response in time")
        .expect("response");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Collected {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// GET `url` with `headers` over HTTP/1.1.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Collected {
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(&http1(), req.body(full("")).unwrap()).await
}

/// Polls `check` every 10 ms until it holds, or panics after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A body of `data` frames followed by `trailers`, as a gRPC server sends it.
pub fn with_trailers(data: Vec<Bytes>, trailers: http::HeaderMap) -> Body {
    struct Frames(std::collections::VecDeque<http_body::Frame<Bytes>>);
    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = Box<dyn std::error::Error + Send + Sync>;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(self.0.pop_front().map(Ok))
        }
    }
    let mut frames: std::collections::VecDeque<_> =
        data.into_iter().map(http_body::Frame::data).collect();
    frames.push_back(http_body::Frame::trailers(trailers));
    Frames(frames).boxed()
}

/// A body fed frame by frame (data, then optionally trailers) through the returned sender; it
/// ends when the sender is dropped.
pub fn channel_body() -> (tokio::sync::mpsc::Sender<http_body::Frame<Bytes>>, Body) {
    struct Frames(tokio::sync::mpsc::Receiver<http_body::Frame<Bytes>>);
    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = Box<dyn std::error::Error + Send + Sync>;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|f| f.map(Ok))
        }
    }
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    (tx, Frames(rx).boxed())
}

/// Awaits `f`, failing the test after `limit`: a hang fails instead of blocking CI.
pub async fn within<T>(what: &str, limit: Duration, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?}: {what}"))
}

/// A queue-proxy in front of `app_port`, with `extra` added to the controller's environment.
pub fn start_queue_proxy(app_port: u16, extra: &[(&str, &str)]) -> QueueProxy {
    let mut env = queue_proxy_env(app_port);
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    QueueProxy::start(&env)
}

// === activator ===

/// A running activator with the file source. Its revisions file is kept in a temporary
/// directory that lives as long as it does.
pub struct Activator {
    /// The process.
    pub process: Process,
    /// The revisions file, for reload tests.
    pub revisions: PathBuf,
    _dir: TempDir,
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new, empty directory under the system's temporary directory.
    pub fn new() -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "activator-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a revisions file atomically (write then rename), as a config-management tool would.
pub fn write_revisions(path: &std::path::Path, json: &serde_json::Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(json).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// One revision entry for a revisions file.
pub fn revision(name: &str, cc: u32, endpoints: &[SocketAddr]) -> serde_json::Value {
    serde_json::json!({
        "namespace": "default",
        "name": name,
        "containerConcurrency": cc,
        "timeoutSeconds": 300,
        "endpoints": endpoints.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

/// Arguments that put the activator's three listeners on ports the kernel picks.
pub const ACTIVATOR_EPHEMERAL_PORTS: [&str; 6] = [
    "--http1-port",
    "0",
    "--h2c-port",
    "0",
    "--metrics-port",
    "0",
];

/// The keys the activator logs its listeners' ports under.
pub const ACTIVATOR_PORT_KEYS: [&str; 3] = [
    "ACTIVATOR_HTTP1_PORT",
    "ACTIVATOR_H2C_PORT",
    "ACTIVATOR_METRICS_PORT",
];

impl Activator {
    /// Asserts that `res` is 200, showing its body and this activator's log otherwise.
    pub fn assert_ok(&self, res: &Collected) {
        assert_eq!(
            res.status,
            StatusCode::OK,
            "{}\nlogs:\n{}",
            res.text(),
            self.process.logs()
        );
    }

    /// Starts the activator on ephemeral ports with `--revisions` holding `revisions` (a JSON
    /// array of entries, see [`revision`]), extra `args` and `env` on top of a minimal
    /// environment. The autoscaler URL defaults to a closed port and readiness does not wait for
    /// it, unless `args` say otherwise.
    pub fn start(revisions: serde_json::Value, args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = TempDir::new();
        let path = dir.0.join("revisions.json");
        write_revisions(&path, &serde_json::json!({ "revisions": revisions }));
        let path_text = path.to_string_lossy().into_owned();
        let mut all: Vec<&str> = vec!["--revisions", &path_text];
        all.extend(ACTIVATOR_EPHEMERAL_PORTS);
        if !args.iter().any(|a| a.starts_with("--autoscaler-url")) {
            all.extend(["--autoscaler-url", "ws://127.0.0.1:1/"]);
        }
        if !args.contains(&"--require-autoscaler") {
            all.push("--ready-without-autoscaler");
        }
        all.extend(
            args.iter()
                .copied()
                .filter(|a| *a != "--require-autoscaler"),
        );
        let mut environment: HashMap<String, String> = [
            ("POD_NAME", "activator-abc"),
            ("POD_IP", "127.0.0.1"),
            ("SYSTEM_NAMESPACE", "knative-serving"),
            ("ACTIVATOR_LOG_LEVEL", "debug"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        for (k, v) in env {
            environment.insert((*k).to_owned(), (*v).to_owned());
        }
        let process = Process::start_binary("activator", &all, &environment, &ACTIVATOR_PORT_KEYS);
        Self {
            process,
            revisions: path,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:<8012 equivalent><path>`.
    pub fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}{path}",
            self.process.port("ACTIVATOR_HTTP1_PORT")
        )
    }

    /// `http://127.0.0.1:<8013 equivalent><path>`.
    pub fn h2c_url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}{path}",
            self.process.port("ACTIVATOR_H2C_PORT")
        )
    }

    /// The metrics page.
    pub async fn metrics(&self) -> String {
        get(
            &format!(
                "http://127.0.0.1:{}/metrics",
                self.process.port("ACTIVATOR_METRICS_PORT")
            ),
            &[],
        )
        .await
        .text()
    }

    /// Replaces the revisions file (atomically).
    pub fn set_revisions(&self, revisions: serde_json::Value) {
        write_revisions(
            &self.revisions,
            &serde_json::json!({ "revisions": revisions }),
        );
    }
}

// === bodies and gRPC framing ===

/// The next frame of `body`, `None` at its end; fails the test after 10 s.
pub async fn next_frame(body: &mut Incoming) -> Option<http_body::Frame<Bytes>> {
    within("next body frame", Duration::from_secs(10), body.frame())
        .await
        .map(|f| f.expect("body frame"))
}

/// Reads DATA frames until exactly `n` bytes have arrived.
pub async fn read_data(body: &mut Incoming, n: usize) -> Vec<u8> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let frame = next_frame(body)
            .await
            .unwrap_or_else(|| panic!("body ended after {} of {n} bytes", got.len()));
        match frame.into_data() {
            Ok(data) => got.extend_from_slice(&data),
            Err(f) => panic!("expected data, got {f:?} after {} of {n} bytes", got.len()),
        }
    }
    assert_eq!(got.len(), n, "more data than expected: {got:?}");
    got
}

/// One gRPC length-prefixed message (uncompressed).
pub fn grpc_message(payload: &[u8]) -> Bytes {
    let mut m = Vec::with_capacity(5 + payload.len());
    m.push(0);
    m.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    m.extend_from_slice(payload);
    m.into()
}

/// `grpc-status: 0` and a `grpc-message`.
pub fn grpc_ok_trailers() -> http::HeaderMap {
    let mut t = http::HeaderMap::new();
    t.insert("grpc-status", "0".parse().unwrap());
    t.insert("grpc-message", "all good".parse().unwrap());
    t
}

/// Asserts that `trailers` are [`grpc_ok_trailers`].
pub fn assert_grpc_ok(trailers: &http::HeaderMap) {
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.to_str().unwrap()),
        Some("0"),
        "trailers: {trailers:?}"
    );
    assert_eq!(
        trailers.get("grpc-message").map(|v| v.to_str().unwrap()),
        Some("all good"),
        "trailers: {trailers:?}"
    );
}

/// A gRPC response (`application/grpc`) with `body`.
pub fn grpc_response(body: Body) -> Response<Body> {
    Response::builder()
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(body)
        .unwrap()
}

/// An app that answers every request as it arrives: each DATA frame of the request is sent back
/// at once, and [`grpc_ok_trailers`] follow the end of the request body. The response starts
/// before the request body is read.
pub async fn grpc_echo_app() -> App {
    App::start(|req: Request<Incoming>| async move {
        let (tx, body) = channel_body();
        let mut incoming = req.into_body();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = incoming.frame().await {
                if let Ok(data) = frame.into_data()
                    && tx.send(http_body::Frame::data(data)).await.is_err()
                {
                    return;
                }
            }
            let _ = tx
                .send(http_body::Frame::trailers(grpc_ok_trailers()))
                .await;
        });
        grpc_response(body)
    })
    .await
}
