//! Cold starts end to end in local mode: how much the data plane adds to an app's own start.
//!
//! For the sample app and for Python's `http.server`, in one run:
//! 1. the floor: the app's own time from spawn to its first response, polling its port every 1 ms;
//! 2. the first request through `activator --local` with the service at zero instances;
//! 3. (sample app) a burst of 100 concurrent requests arriving at a service at zero.
//!
//! Each is repeated (`--runs`, default 20), with the service scaled back to zero in between.
//! Prints a table, writes it to `target/coldstart.md` and an SVG of the distributions to
//! `target/coldstart.svg`. Usage:
//!
//! ```text
//! cargo build --release -p activator -p queue-proxy -p benches --bins --example hello
//! target/release/coldstart-bench [--runs N]
//! ```

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use benches::{free_port, percentile};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One GET; the time it completed, or `None` if the port did not answer.
async fn get_once(addr: SocketAddr, host: &str) -> Option<()> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .ok()?;
    let res = tx.send_request(req).await.ok()?;
    let ok = res.status().is_success();
    res.into_body().collect().await.ok()?;
    ok.then_some(())
}

struct App {
    name: &'static str,
    /// argv; `PORT` in the environment names the port.
    command: Vec<String>,
}

fn apps() -> Vec<App> {
    let hello = root().join("target/release/examples/hello");
    vec![
        App {
            name: "sample app",
            command: vec![hello.to_string_lossy().into_owned()],
        },
        App {
            name: "python http.server",
            command: vec![
                "sh".into(),
                "-c".into(),
                "exec python3 -m http.server \"$PORT\" --bind 127.0.0.1".into(),
            ],
        },
    ]
}

/// The app's own cold start: spawn, then poll its port every 1 ms until it answers.
async fn floor(app: &App) -> f64 {
    let port = free_port([127, 0, 0, 1]);
    let start = Instant::now();
    let mut child: Child = Command::new(&app.command[0])
        .args(&app.command[1..])
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the app");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let took = loop {
        if get_once(addr, "localhost").await.is_some() {
            break start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the app never answered"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    took.as_secs_f64() * 1e3
}

/// Processes of the benchmark's instances, found by a marker in their environment.
fn instances(marker: &str) -> usize {
    let needle = format!("COLDSTART_BENCH={marker}");
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let pid = e.file_name();
                    std::fs::read(Path::new("/proc").join(&pid).join("environ"))
                        .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
                        && std::fs::read_to_string(Path::new("/proc").join(&pid).join("stat"))
                            .is_ok_and(|s| {
                                !s.rsplit_once(')')
                                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
                            })
                })
                .count()
        })
        .unwrap_or(0)
}

struct Activator {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Activator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_activator(apps: &[App]) -> Activator {
    let dir = std::env::temp_dir().join(format!("coldstart-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut toml = String::new();
    for (i, app) in apps.iter().enumerate() {
        let mut argv = vec!["/usr/bin/env".to_owned(), format!("COLDSTART_BENCH=app{i}")];
        argv.extend(app.command.iter().cloned());
        toml.push_str(&format!(
            "[[service]]\nname = \"app{i}\"\ncommand = {argv:?}\nmax_scale = 4\n\
             scale_to_zero_after_seconds = 1\n\n"
        ));
    }
    let file = dir.join("local.toml");
    std::fs::write(&file, toml).unwrap();
    let (port, metrics) = (free_port([127, 0, 0, 1]), free_port([127, 0, 0, 1]));
    let child = Command::new(root().join("target/release/activator"))
        .args(["--local", file.to_str().unwrap()])
        .args(["--http1-port", &port.to_string(), "--h2c-port", "0"])
        .args(["--metrics-port", &metrics.to_string()])
        .env("ACTIVATOR_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start target/release/activator (build it first)");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..500 {
        if std::net::TcpStream::connect(addr).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Activator { child, addr, dir }
}

async fn wait_for_zero(marker: &str) {
    let start = Instant::now();
    while instances(marker) > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the service did not scale to zero"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One request through the activator to a service at zero.
async fn through(act: &Activator, i: usize) -> f64 {
    wait_for_zero(&format!("app{i}")).await;
    let start = Instant::now();
    get_once(act.addr, &format!("app{i}.localhost"))
        .await
        .expect("the cold request succeeds");
    start.elapsed().as_secs_f64() * 1e3
}

/// `n` concurrent requests to a service at zero; the time until the last one completed.
async fn burst(act: &Activator, i: usize, n: usize) -> (f64, usize) {
    wait_for_zero(&format!("app{i}")).await;
    let start = Instant::now();
    let host = format!("app{i}.localhost");
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (addr, host) = (act.addr, host.clone());
            tokio::spawn(async move { get_once(addr, &host).await })
        })
        .collect();
    let mut failed = 0;
    for t in tasks {
        if !matches!(t.await, Ok(Some(()))) {
            failed += 1;
        }
    }
    (start.elapsed().as_secs_f64() * 1e3, failed)
}

/// A strip plot of each distribution, one row per series, on a shared logarithmic millisecond
/// axis (the apps' own starts differ by a factor of forty), with each median marked.
fn svg(series: &[(String, Vec<f64>)]) -> String {
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(10.0_f64, f64::max)
        * 1.2;
    let (lo, hi) = (0.0_f64, max.log10());
    let (left, width, row) = (230.0, 560.0, 40.0);
    let height = row * series.len() as f64 + 60.0;
    let x = |v: f64| left + (v.max(1.0).log10() - lo) / (hi - lo) * width;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        left + width + 30.0
    );
    for (i, (name, v)) in series.iter().enumerate() {
        let y = 30.0 + row * i as f64;
        out.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{name}</text>\n",
            left - 10.0,
            y + 4.0
        ));
        for &p in v {
            out.push_str(&format!(
                "<circle cx=\"{:.1}\" cy=\"{y}\" r=\"3\" fill=\"steelblue\" fill-opacity=\"0.5\"/>\n",
                x(p)
            ));
        }
        let m = percentile(v, 0.5);
        out.push_str(&format!(
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{1}\" y2=\"{2}\" stroke=\"black\" stroke-width=\"2\"/>\n",
            x(m),
            y - 10.0,
            y + 10.0
        ));
    }
    let axis_y = 30.0 + row * series.len() as f64;
    out.push_str(&format!(
        "<line x1=\"{left}\" x2=\"{}\" y1=\"{axis_y}\" y2=\"{axis_y}\" stroke=\"black\"/>\n",
        left + width
    ));
    for v in [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0] {
        if v > max {
            break;
        }
        out.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{v:.0} ms</text>\n",
            x(v),
            axis_y + 16.0
        ));
    }
    out.push_str("</svg>\n");
    out
}

#[tokio::main]
async fn main() {
    let mut runs = 20;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            other => panic!("unknown argument {other}"),
        }
    }
    let _ = proxy_core::runtime::raise_nofile_limit();
    let apps = apps();
    let act = start_activator(&apps);
    let mut table = String::from(
        "| app | floor: own start, median / p95 | through the activator from zero, median / p95 | overhead, median / p95 |\n|---|---|---|---|\n",
    );
    let mut series = Vec::new();
    for (i, app) in apps.iter().enumerate() {
        let mut own = Vec::new();
        let mut via = Vec::new();
        for r in 0..runs {
            own.push(floor(app).await);
            via.push(through(&act, i).await);
            eprintln!(
                "{}: run {r}: own {:.1} ms, through the activator {:.1} ms",
                app.name, own[r], via[r]
            );
        }
        table.push_str(&format!(
            "| {} | {:.1} / {:.1} ms | {:.1} / {:.1} ms | **{:.1}** / {:.1} ms |\n",
            app.name,
            percentile(&own, 0.5),
            percentile(&own, 0.95),
            percentile(&via, 0.5),
            percentile(&via, 0.95),
            percentile(&via, 0.5) - percentile(&own, 0.5),
            percentile(&via, 0.95) - percentile(&own, 0.95),
        ));
        series.push((format!("{}: own start", app.name), own));
        series.push((format!("{}: via activator", app.name), via));
    }
    let mut bursts = Vec::new();
    let mut failed = 0;
    for r in 0..runs {
        let (took, f) = burst(&act, 0, 100).await;
        failed += f;
        eprintln!("burst {r}: 100 requests done in {took:.1} ms");
        bursts.push(took);
    }
    table.push_str(&format!(
        "\nA burst of 100 concurrent requests at the sample app from zero: all done after \
         {:.1} ms median, {:.1} ms p95 ({runs} runs, {failed} failed).\n",
        percentile(&bursts, 0.5),
        percentile(&bursts, 0.95),
    ));
    series.push(("sample app: burst of 100".to_owned(), bursts));
    let report = format!(
        "Cold starts, {runs} runs each, local mode (activator, queue-proxy and app on loopback)\n\n{table}"
    );
    println!("{report}");
    let target = root().join("target");
    let _ = std::fs::write(target.join("coldstart.md"), &report);
    let _ = std::fs::write(target.join("coldstart.svg"), svg(&series));
    eprintln!("written to target/coldstart.md and target/coldstart.svg");
}
