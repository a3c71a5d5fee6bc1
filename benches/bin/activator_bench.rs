//! Activator benchmarks: throughput against nginx as a proxy, how fast a cold start releases
//! waiting requests, and memory with many requests waiting.
//!
//! Everything runs on loopback; pods bind their own addresses (127.0.0.2, 127.0.0.3, ...).
//! Throughput is reported as a ratio to nginx proxying to the same pod in the same run, since
//! absolute figures on a shared machine are noise. Usage:
//!
//! ```text
//! cargo build --release -p activator -p benches --bins
//! target/release/activator-bench [--duration S] [--rounds N] [--burst N] [--cold-rounds N]
//!                                [--waiters N] [--skip-throughput]
//! ```

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use benches::{free_port, percentile};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

struct Opts {
    activator: PathBuf,
    duration: u64,
    rounds: usize,
    burst: usize,
    cold_rounds: usize,
    waiters: usize,
    skip_throughput: bool,
}

fn opts() -> Opts {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut o = Opts {
        activator: root.join("target/release/activator"),
        duration: 10,
        rounds: 3,
        burst: 1000,
        cold_rounds: 5,
        waiters: 10_000,
        skip_throughput: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |what: &str| -> usize {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{what} needs a number"))
        };
        match a.as_str() {
            "--activator" => o.activator = PathBuf::from(args.next().expect("--activator PATH")),
            "--duration" => o.duration = num("--duration") as u64,
            "--rounds" => o.rounds = num("--rounds"),
            "--burst" => o.burst = num("--burst"),
            "--cold-rounds" => o.cold_rounds = num("--cold-rounds"),
            "--waiters" => o.waiters = num("--waiters"),
            "--skip-throughput" => o.skip_throughput = true,
            other => panic!("unknown argument {other}"),
        }
    }
    o
}

fn main() {
    let o = opts();
    // The burst and the memory run hold thousands of sockets in this process.
    let _ = proxy_core::runtime::raise_nofile_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut report = String::new();
    report.push_str(&format!(
        "activator benchmark, {} (burst {}, waiters {})\n\n",
        git_rev(),
        o.burst,
        o.waiters
    ));
    if !o.skip_throughput {
        report.push_str(&throughput(&o));
    }
    report.push_str(&rt.block_on(cold_start(&o)));
    report.push_str(&rt.block_on(memory(&o)));
    println!("{report}");
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-activator.md");
    let _ = std::fs::write(&out, &report);
    eprintln!("written to {}", out.display());
}

fn git_rev() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

// === processes ===

/// A child stopped when dropped: with SIGKILL, or first with SIGTERM when `graceful` (nginx's
/// master only stops its workers when asked; killed, it leaves them running).
struct Proc(Child, bool);

impl Drop for Proc {
    fn drop(&mut self) {
        if self.1 {
            let _ = Command::new("kill")
                .args(["-TERM", &self.0.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU time (user + system) a process has used, in milliseconds.
fn cpu_ms(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // utime and stime are fields 14 and 15, i.e. 12 and 13 after the name; clock ticks of 10 ms.
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) * 10.0
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Starts the activator on fixed ports with `revisions` (JSON array).
fn start_activator(o: &Opts, dir: &Path, revisions: serde_json::Value) -> (Proc, u16, u16, u16) {
    // One thread by default, as upstream's 1-CPU limit gives; ACTIVATOR_BENCH_THREADS overrides.
    let threads = std::env::var("ACTIVATOR_BENCH_THREADS").unwrap_or_else(|_| "1".to_owned());
    let file = dir.join("revisions.json");
    std::fs::write(
        &file,
        serde_json::to_vec(&serde_json::json!({ "revisions": revisions })).unwrap(),
    )
    .unwrap();
    let (p1, p2, pm) = (
        free_port([127, 0, 0, 1]),
        free_port([127, 0, 0, 1]),
        free_port([127, 0, 0, 1]),
    );
    let child = Command::new(&o.activator)
        .args([
            "--revisions",
            file.to_str().unwrap(),
            "--http1-port",
            &p1.to_string(),
            "--h2c-port",
            &p2.to_string(),
            "--metrics-port",
            &pm.to_string(),
            "--autoscaler-url",
            "ws://127.0.0.1:1/",
            "--ready-without-autoscaler",
            "--worker-threads",
            &threads,
        ])
        .env("POD_NAME", "bench")
        .env("ACTIVATOR_LOG_LEVEL", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", o.activator.display()));
    wait_port(p1);
    (Proc(child, false), p1, p2, pm)
}

fn wait_port(port: u16) {
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("nothing listens on {port}");
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("activator-bench-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

// === throughput ===

fn nginx_conf(dir: &Path, server: &str) -> PathBuf {
    let conf = dir.join("nginx.conf");
    let user = if std::env::var("USER").as_deref() == Ok("root") || is_root() {
        "user root;"
    } else {
        ""
    };
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "{user}\nworker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/cb;\n proxy_temp_path {d}/px;\n\
             default_type text/plain;\n keepalive_requests 1000000;\n keepalive_timeout 300s;\n{server}\n}}\n"
        ),
    )
    .unwrap();
    conf
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"))
}

fn nginx(conf: &Path) -> Proc {
    let bin = ["/usr/sbin/nginx", "nginx"]
        .into_iter()
        .find(|b| Command::new(b).arg("-v").output().is_ok())
        .expect("nginx is needed: apt-get install -y nginx-light");
    Proc(
        Command::new(bin)
            .args(["-p", conf.parent().unwrap().to_str().unwrap(), "-c"])
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx"),
        true,
    )
}

fn wrk(url: &str, secs: u64) -> f64 {
    let out = Command::new("wrk")
        .args([
            "-t1",
            "-c32",
            &format!("-d{secs}s"),
            "-H",
            "Knative-Serving-Namespace: default",
            "-H",
            "Knative-Serving-Revision: bench",
            url,
        ])
        .output()
        .expect("wrk is needed: apt-get install -y wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        eprintln!("wrk reported errors for {url}:\n{text}");
    }
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn throughput(o: &Opts) -> String {
    let pod_port = free_port([127, 0, 0, 2]);
    let pod_dir = temp_dir("pod");
    let _pod = nginx(&nginx_conf(
        &pod_dir,
        &format!(
            "server {{ listen 127.0.0.2:{pod_port}; location / {{ \
             if ($http_k_network_probe = \"queue\") {{ return 200 \"queue\"; }} return 200 \"ok\\n\"; }} }}"
        ),
    ));
    let proxy_port = free_port([127, 0, 0, 1]);
    let proxy_dir = temp_dir("proxy");
    let _proxy = nginx(&nginx_conf(
        &proxy_dir,
        &format!(
            "upstream pod {{ server 127.0.0.2:{pod_port}; keepalive 64; }}\n\
             server {{ listen 127.0.0.1:{proxy_port}; location / {{ proxy_pass http://pod; \
             proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}"
        ),
    ));
    let act_dir = temp_dir("act");
    let (act, act_port, _, _) = start_activator(
        o,
        &act_dir,
        serde_json::json!([{
            "namespace": "default", "name": "bench", "containerConcurrency": 0,
            "timeoutSeconds": 300, "endpoints": [format!("127.0.0.2:{pod_port}")]
        }]),
    );
    wait_port(proxy_port);
    // The pod must have passed its probe before the first round.
    let url_act = format!("http://127.0.0.1:{act_port}/");
    for _ in 0..200 {
        if wrk_once(&url_act) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let targets = [
        ("direct", format!("http://127.0.0.2:{pod_port}/")),
        ("nginx", format!("http://127.0.0.1:{proxy_port}/")),
        ("activator", url_act),
    ];
    for (_, url) in &targets {
        wrk(url, 1);
    }
    let idle_rss = rss_kib(act.0.id());
    let mut results: HashMap<&str, Vec<f64>> = HashMap::new();
    for round in 0..o.rounds {
        for (name, url) in &targets {
            let rps = wrk(url, o.duration);
            eprintln!("round {round}: {name} {rps:.0} req/s");
            results.entry(name).or_default().push(rps);
        }
    }
    let ratios: Vec<f64> = (0..o.rounds)
        .map(|i| results["activator"][i] / results["nginx"][i])
        .collect();
    let mut out =
        String::from("## Throughput (wrk -t1 -c32, 1 activator thread, 1 nginx worker)\n\n");
    out.push_str("| target | median req/s | rounds |\n|---|---|---|\n");
    for (name, _) in &targets {
        let rounds: Vec<String> = results[name].iter().map(|x| format!("{x:.0}")).collect();
        out.push_str(&format!(
            "| {name} | {:.0} | {} |\n",
            percentile(&results[name], 0.5),
            rounds.join(", ")
        ));
    }
    out.push_str(&format!(
        "\nactivator / nginx proxy: median {:.2} (rounds {})\n\nactivator RSS after warm-up: {:.1} MiB\n\n",
        percentile(&ratios, 0.5),
        ratios
            .iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", "),
        idle_rss as f64 / 1024.0
    ));
    drop(act);
    for d in [pod_dir, proxy_dir, act_dir] {
        let _ = std::fs::remove_dir_all(d);
    }
    out
}

fn wrk_once(url: &str) -> bool {
    Command::new("curl")
        .args([
            "-sf",
            "-o",
            "/dev/null",
            "-H",
            "Knative-Serving-Namespace: default",
            "-H",
            "Knative-Serving-Revision: bench",
            url,
        ])
        .status()
        .is_ok_and(|s| s.success())
}

// === fake pods for cold starts ===

/// A pod whose queue-proxy answers 503 to probes until `ready`, then `queue`; it remembers when
/// it first answered `queue`.
struct ColdPod {
    addr: SocketAddr,
    ready: Arc<AtomicBool>,
    first_ready: Arc<Mutex<Option<Instant>>>,
    /// When each proxied request arrived.
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

async fn cold_pod(ip: [u8; 4]) -> ColdPod {
    // The backlog a queue-proxy listens with (somaxconn), so a burst of connects is not dropped.
    let listener = proxy_core::server::bind(SocketAddr::from((ip, 0))).unwrap();
    let addr = listener.local_addr().unwrap();
    let ready = Arc::new(AtomicBool::new(false));
    let first_ready = Arc::new(Mutex::new(None));
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let (r, f, arr) = (ready.clone(), first_ready.clone(), arrivals.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (r, f, arr) = (r.clone(), f.clone(), arr.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (r, f, arr) = (r.clone(), f.clone(), arr.clone());
                    async move {
                        let probe = req
                            .headers()
                            .get("k-network-probe")
                            .is_some_and(|v| v == "queue");
                        let res = if probe {
                            if r.load(Ordering::SeqCst) {
                                f.lock().unwrap().get_or_insert_with(Instant::now);
                                Response::new(Full::new(Bytes::from_static(b"queue")))
                            } else {
                                let mut res = Response::new(Full::new(Bytes::new()));
                                *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                                res
                            }
                        } else {
                            arr.lock().unwrap().push(Instant::now());
                            Response::new(Full::new(Bytes::from_static(b"ok\n")))
                        };
                        Ok::<_, std::convert::Infallible>(res)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    ColdPod {
        addr,
        ready,
        first_ready,
        arrivals,
    }
}

async fn metric(port: u16, name: &str, revision: &str) -> u64 {
    let Ok(stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return 0;
    };
    let Ok((mut tx, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return 0;
    };
    tokio::spawn(conn);
    let req = Request::get("/metrics")
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let Ok(res) = tx.send_request(req).await else {
        return 0;
    };
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    let prefix =
        format!("{name}{{k8s_namespace_name=\"default\",kn_revision_name=\"{revision}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn wait_queued(metrics_port: u16, revision: &str, n: u64) {
    let start = Instant::now();
    while metric(metrics_port, "kn_revision_request_queued", revision).await < n {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "requests did not queue"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client that keeps its connection, as an ingress does: the connection is closed only when
/// the returned sender is dropped, after the measurement.
type Kept = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn h1_get(port: u16, revision: String) -> Result<(Instant, Kept), String> {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", format!("{revision}.default.svc.cluster.local"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = tx.send_request(req).await.map_err(|e| e.to_string())?;
    let status = res.status();
    res.into_body().collect().await.map_err(|e| e.to_string())?;
    let done = Instant::now();
    if status != StatusCode::OK {
        return Err(format!("status {status}"));
    }
    Ok((done, tx))
}

async fn cold_start(o: &Opts) -> String {
    let mut pods = Vec::new();
    let mut revisions = Vec::new();
    // One more round than measured: the first cold start after the process starts also pays
    // for its first allocations, and is reported apart.
    for i in 0..=o.cold_rounds {
        let pod = cold_pod([127, 0, 0, 10 + i as u8]).await;
        revisions.push(serde_json::json!({
            "namespace": "default", "name": format!("cold-{i}"), "containerConcurrency": 0,
            "timeoutSeconds": 300, "endpoints": [pod.addr.to_string()]
        }));
        pods.push(pod);
    }
    let dir = temp_dir("cold");
    let (act, port, _, metrics_port) = start_activator(o, &dir, serde_json::Value::from(revisions));
    let act_pid = act.0.id().to_string();
    let (mut cpu_act, mut cpu_bench, mut wall) = (0.0, 0.0, 0.0);
    let mut all = Vec::new();
    let mut released = Vec::new();
    let mut medians = Vec::new();
    let mut errors = 0usize;
    let mut first_round = (0.0, 0.0);
    for (i, pod) in pods.iter().enumerate() {
        let name = format!("cold-{i}");
        let tasks: Vec<_> = (0..o.burst)
            .map(|_| tokio::spawn(h1_get(port, name.clone())))
            .collect();
        wait_queued(metrics_port, &name, o.burst as u64).await;
        let (a0, b0, t0) = (cpu_ms(&act_pid), cpu_ms("self"), Instant::now());
        pod.ready.store(true, Ordering::SeqCst);
        let mut lat = Vec::with_capacity(o.burst);
        let mut done_times = Vec::new();
        let mut kept = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok((at, conn)) => {
                    done_times.push(at);
                    kept.push(conn);
                }
                Err(e) => {
                    errors += 1;
                    eprintln!("cold start request failed: {e}");
                }
            }
        }
        cpu_act += cpu_ms(&act_pid) - a0;
        cpu_bench += cpu_ms("self") - b0;
        wall += t0.elapsed().as_secs_f64() * 1e3;
        drop(kept);
        let first = pod
            .first_ready
            .lock()
            .unwrap()
            .expect("the pod answered queue");
        for at in done_times {
            lat.push(at.saturating_duration_since(first).as_secs_f64() * 1e3);
        }
        let rel: Vec<f64> = pod
            .arrivals
            .lock()
            .unwrap()
            .iter()
            .map(|at| at.saturating_duration_since(first).as_secs_f64() * 1e3)
            .collect();
        eprintln!(
            "cold start {i}: released (arrived at the pod) median {:.2} ms, p95 {:.2} ms",
            percentile(&rel, 0.5),
            percentile(&rel, 0.95)
        );
        released.extend(&rel);
        let m = percentile(&lat, 0.5);
        eprintln!(
            "cold start {i}: median {m:.2} ms, p95 {:.2} ms, max {:.2} ms after the first `queue`",
            percentile(&lat, 0.95),
            percentile(&lat, 1.0)
        );
        medians.push(m);
        all.extend(lat);
        if i == 0 {
            first_round = (percentile(&released, 0.5), m);
            all.clear();
            released.clear();
            medians.clear();
            (cpu_act, cpu_bench, wall) = (0.0, 0.0, 0.0);
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    format!(
        "## Cold start: {} waiting HTTP/1.1 requests released ({} rounds, cc=0)\n\n\
         Time from the pod's first `queue` answer to each request's arrival at the pod \
         (released), and to each response's end at the client (completed):\n\n\
         | | median | p95 | p99 | max |\n|---|---|---|---|---|\n\
         | released | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |\n\
         | completed | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |\n\n\
         Per-round completion medians: {}. Errors: {errors}. \
         Per round, from the pod turning ready to the last response: {:.0} ms wall, the activator \
         used {:.0} ms of CPU and this process (the pod and the clients) {:.0} ms, on {} cores. \
         The first cold start after the activator started, not counted above: released median \
         {:.2} ms, completed median {:.2} ms.\n\n",
        o.burst,
        o.cold_rounds,
        percentile(&released, 0.5),
        percentile(&released, 0.95),
        percentile(&released, 0.99),
        percentile(&released, 1.0),
        percentile(&all, 0.5),
        percentile(&all, 0.95),
        percentile(&all, 0.99),
        percentile(&all, 1.0),
        medians
            .iter()
            .map(|m| format!("{m:.2}"))
            .collect::<Vec<_>>()
            .join(", "),
        wall / o.cold_rounds as f64,
        cpu_act / o.cold_rounds as f64,
        cpu_bench / o.cold_rounds as f64,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        first_round.0,
        first_round.1,
    )
}

// === memory ===

async fn memory(o: &Opts) -> String {
    let h2_pod = cold_pod([127, 0, 0, 40]).await;
    let h1_pod = cold_pod([127, 0, 0, 41]).await;
    let dir = temp_dir("mem");
    let (act, port, h2c_port, metrics_port) = start_activator(
        o,
        &dir,
        serde_json::json!([
            {"namespace": "default", "name": "mem-h2", "containerConcurrency": 0, "protocol": "h2c",
             "timeoutSeconds": 600, "endpoints": [h2_pod.addr.to_string()]},
            {"namespace": "default", "name": "mem-h1", "containerConcurrency": 0,
             "timeoutSeconds": 600, "endpoints": [h1_pod.addr.to_string()]},
        ]),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = act.0.id();
    let idle = rss_kib(pid);

    // h2c: connections of 250 streams each, as many as the waiters need.
    let per_conn = 250;
    let conns = o.waiters.div_ceil(per_conn);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let stream = TcpStream::connect(("127.0.0.1", h2c_port)).await.unwrap();
        let (tx, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let n = per_conn.min(o.waiters - c * per_conn);
        for _ in 0..n {
            let mut tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                let req = Request::get("http://mem-h2.default.svc.cluster.local/")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let _ = tx.ready().await;
                tx.send_request(req).await.map(|r| r.status())
            }));
        }
    }
    wait_queued(metrics_port, "mem-h2", o.waiters as u64).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let h2_rss = rss_kib(pid);

    // HTTP/1.1: one connection per waiting request.
    let h1_n = 1000;
    let h1_tasks: Vec<_> = (0..h1_n)
        .map(|_| tokio::spawn(h1_get(port, "mem-h1".to_owned())))
        .collect();
    wait_queued(metrics_port, "mem-h1", h1_n).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let with_h1 = rss_kib(pid);

    // Release everything and check nothing was lost.
    h2_pod.ready.store(true, Ordering::SeqCst);
    h1_pod.ready.store(true, Ordering::SeqCst);
    let mut failed = 0;
    for t in tasks {
        if !matches!(t.await, Ok(Ok(StatusCode::OK))) {
            failed += 1;
        }
    }
    for t in h1_tasks {
        if !matches!(t.await, Ok(Ok(_))) {
            failed += 1;
        }
    }
    let peak = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_owned()))
        .unwrap_or_default();
    let _ = std::fs::remove_dir_all(dir);
    format!(
        "## Memory\n\n| state | activator RSS |\n|---|---|\n\
         | idle, two revisions | {:.1} MiB |\n\
         | {} requests waiting over h2c ({conns} connections × {per_conn} streams) | {:.1} MiB |\n\
         | plus {h1_n} waiting HTTP/1.1 connections | {:.1} MiB |\n\n\
         Per waiting HTTP/1.1 connection: {:.1} KiB. Per waiting h2c stream: {:.2} KiB. \
         Peak (VmHWM) after release: {peak}. Requests lost on release: {failed}.\n",
        idle as f64 / 1024.0,
        o.waiters,
        h2_rss as f64 / 1024.0,
        with_h1 as f64 / 1024.0,
        (with_h1.saturating_sub(h2_rss)) as f64 / h1_n as f64,
        (h2_rss.saturating_sub(idle)) as f64 / o.waiters as f64,
    )
}
