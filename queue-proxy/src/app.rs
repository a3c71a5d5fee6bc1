//! Assembles the queue-proxy from proxy-core's parts, serves its ports and runs the drain.

use std::{
    convert::Infallible,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, RwLock},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use prost::Message;
use proxy_core::{
    breaker::{Breaker, BreakerLayer},
    client::{Client, ClientConfig},
    drain::Drain,
    edge::{self, EdgeLayer, Texts},
    headers,
    proxy::Proxy,
    server::{self, ConnInfo, Server, ServerConfig},
    stat::Stat,
    stats::{RequestStats, StatsLayer},
    timeout::TimeoutLayer,
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
    time::Instant,
};
use tower::{ServiceBuilder, service_fn, util::MapRequestLayer};

use crate::{
    config::Config,
    health::{Drainer, HealthLayer},
    metrics::{self, Point, RequestMetricsLayer},
    readiness::Readiness,
    tls,
};

/// How often the autoscaler statistics window closes.
const REPORTING_PERIOD: Duration = Duration::from_secs(1);
/// How long `/wait-for-drain` waits for SIGTERM before it treats the call as a container restart.
const PRESTOP_SIGTERM_WINDOW: Duration = Duration::from_secs(1);

pub(crate) async fn run(config: Config) -> Result<(), String> {
    // First, so that a SIGTERM during start-up drains instead of killing the process.
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let readiness = Readiness::parse(
        config.readiness_probe.as_deref(),
        config.multi_container_probes,
        config.user_port,
        config.http2_auto_detection,
        config.aggressive_probe_interval,
    )
    .map_err(|e| format!("SERVING_READINESS_PROBE: {e}"))?;

    if config.request_log_asked {
        tracing::warn!(
            "OBSERVABILITY_CONFIG enables the request log, which this queue-proxy does not write"
        );
    }
    let drain = Drain::new();
    let drainer = Drainer::new(config.drain_quiet);
    let started = Instant::now();
    let stats = RequestStats::new(started);
    let breaker = Breaker::new(config.container_concurrency);
    let prometheus = match &config.user_metrics {
        Some(_) => Some(metrics::install().map_err(|e| format!("OBSERVABILITY_CONFIG: {e}"))?),
        None => None,
    };
    let measured = prometheus.is_some();
    let max_idle = if config.container_concurrency == 0 {
        1000
    } else {
        config.container_concurrency
    };
    let client = Client::new(
        SocketAddr::from((Ipv4Addr::LOCALHOST, config.user_port)),
        ClientConfig {
            max_idle,
            ..ClientConfig::default()
        },
    );
    let proxy = Proxy::new(client);

    // Outermost first. The edge turns errors into responses; health checks never reach the
    // timeouts; the timeouts start before the breaker so queued time counts, as upstream.
    let layers = ServiceBuilder::new()
        .layer(EdgeLayer::new(drain.clone(), Texts::default()))
        .layer(HealthLayer::new(drainer.clone(), readiness))
        .layer(RequestMetricsLayer::new(measured, Point::Server, None))
        .layer(TimeoutLayer::new(config.timeouts))
        .layer(StatsLayer::new(stats.clone()))
        .layer(BreakerLayer::new(breaker.clone()))
        .layer(RequestMetricsLayer::new(
            measured,
            Point::Invocation,
            (breaker.capacity() > 0).then_some(breaker),
        ))
        .layer(MapRequestLayer::new(headers::rewrite_for_app::<Incoming>));
    let make = move |info: ConnInfo| layers.service(proxy.with_peer(info.remote.ip()));

    let server_config = ServerConfig::default();
    let serving = server::listen(config.serving_port, "QUEUE_SERVING_PORT")?;
    let metrics = server::listen(config.metrics_port, "QUEUE_METRICS_PORT")?;
    let admin = server::listen(config.admin_port, "QUEUE_ADMIN_PORT")?;
    let mut tasks = tokio::task::JoinSet::new();

    tasks.spawn(Server::new(&server_config).serve(serving, make.clone(), drain.clone()));
    if let Some((crt, key)) = tls::cert_files(&config.certs_dir) {
        let tls_config = tls::server_config(&config.tls, crt, key)?;
        let port = config.tls_port.trim().parse().map_err(|_| {
            format!(
                "QUEUE_SERVING_TLS_PORT: invalid port {:?} (certificates are in {})",
                config.tls_port,
                config.certs_dir.display()
            )
        })?;
        let listener = server::listen(port, "QUEUE_SERVING_TLS_PORT")?;
        let server =
            Server::new(&server_config).with_tls(tokio_rustls::TlsAcceptor::from(tls_config));
        tasks.spawn(server.serve(listener, make, drain.clone()));
    }

    let stat = Arc::new(RwLock::new(Bytes::from(
        Stat {
            pod_name: config.pod.clone(),
            ..Default::default()
        }
        .encode_to_vec(),
    )));
    tokio::spawn(report_stats(
        stats,
        stat.clone(),
        config.pod.clone(),
        started,
    ));
    tasks.spawn(Server::new(&server_config).serve(
        metrics,
        move |_| {
            let stat = stat.clone();
            // The autoscaler insists on exactly this type, whatever it sent as Accept.
            edge::metrics_page("application/protobuf", move || {
                stat.read().unwrap_or_else(|e| e.into_inner()).clone()
            })
        },
        drain.clone(),
    ));

    if let (Some(handle), Some((host, port))) = (prometheus, &config.user_metrics) {
        let listener = if host.is_empty() {
            server::listen(*port, "METRICS_PROMETHEUS_PORT")?
        } else {
            let addr: SocketAddr = format!("{host}:{port}")
                .parse()
                .map_err(|e| format!("METRICS_PROMETHEUS_HOST: {e}"))?;
            server::bind(addr).map_err(|e| format!("METRICS_PROMETHEUS_PORT: {e}"))?
        };
        tasks.spawn(Server::new(&server_config).serve(
            listener,
            move |_| {
                let handle = handle.clone();
                edge::metrics_page("text/plain; version=0.0.4; charset=utf-8", move || {
                    Bytes::from(handle.render())
                })
            },
            drain.clone(),
        ));
    }

    let (terminating_tx, terminating) = watch::channel(false);
    tasks.spawn(Server::new(&server_config).serve(
        admin,
        {
            let drainer = drainer.clone();
            move |_| admin_service(drainer.clone(), terminating.clone())
        },
        drain.clone(),
    ));

    tokio::select! {
        _ = sigterm.recv() => {}
        _ = sigint.recv() => {}
        Some(done) = tasks.join_next() => {
            return Err(format!("a listener stopped unexpectedly: {done:?}"));
        }
    }
    tracing::info!("received TERM signal, attempting to gracefully shutdown servers");
    terminating_tx.send_replace(true);
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
        // A second signal means now.
        std::process::exit(1);
    });

    drainer.drain().await;
    drain.start();
    // In-flight requests, h2 streams and websockets may run up to the revision timeout.
    if tokio::time::timeout(config.timeouts.request, drain.idle())
        .await
        .is_err()
    {
        tracing::warn!(
            active = drain.active(),
            "drain deadline passed with work still in flight"
        );
    }
    tracing::info!("shutdown complete");
    Ok(())
}

async fn report_stats(
    stats: Arc<RequestStats>,
    out: Arc<RwLock<Bytes>>,
    pod: String,
    started: Instant,
) {
    let mut tick = tokio::time::interval_at(started + REPORTING_PERIOD, REPORTING_PERIOD);
    loop {
        let now = tick.tick().await;
        let r = stats.report(now);
        let secs = REPORTING_PERIOD.as_secs_f64();
        let stat = Stat {
            pod_name: pod.clone(),
            average_concurrent_requests: r.average_concurrency,
            average_proxied_concurrent_requests: r.average_proxied_concurrency,
            request_count: r.request_count / secs,
            proxied_request_count: r.proxied_request_count / secs,
            process_uptime: now.duration_since(started).as_secs_f64(),
            timestamp: 0,
        };
        *out.write().unwrap_or_else(|e| e.into_inner()) = Bytes::from(stat.encode_to_vec());
    }
}

type Plain = Response<Full<Bytes>>;

fn plain(status: StatusCode, body: &'static str) -> Plain {
    if body.is_empty() {
        let mut res = Response::new(Full::new(Bytes::new()));
        *res.status_mut() = status;
        return res;
    }
    // Shaped like Go's `http.Error`, as the data path's errors are.
    proxy_core::edge::text(status, Bytes::from_static(body.as_bytes()))
}

fn admin_service(
    drainer: Arc<Drainer>,
    terminating: watch::Receiver<bool>,
) -> impl tower::Service<
    Request<Incoming>,
    Response = Plain,
    Error = Infallible,
    Future = std::pin::Pin<Box<dyn Future<Output = Result<Plain, Infallible>> + Send>>,
> + Clone {
    service_fn(move |req: Request<Incoming>| {
        let drainer = drainer.clone();
        let mut terminating = terminating.clone();
        Box::pin(async move {
            if req.uri().path() != "/wait-for-drain" {
                return Ok(plain(StatusCode::NOT_FOUND, "404 page not found\n"));
            }
            // The pre-stop hook comes just before SIGTERM when the pod is deleted. Without a
            // SIGTERM soon after, the app container is only restarting: abort the drain so the
            // pod does not stay unready (upstream PR #13229).
            let watcher = {
                let drainer = drainer.clone();
                tokio::spawn(async move {
                    let sigterm =
                        tokio::time::timeout(PRESTOP_SIGTERM_WINDOW, terminating.wait_for(|t| *t))
                            .await;
                    if !matches!(sigterm, Ok(Ok(_))) {
                        drainer.reset();
                    }
                })
            };
            drainer.drain().await;
            drop(watcher);
            Ok::<_, Infallible>(plain(StatusCode::OK, ""))
        }) as std::pin::Pin<Box<dyn Future<Output = Result<Plain, Infallible>> + Send>>
    })
}
