//! Assembles the activator from proxy-core's parts and the chosen source, serves, and drains.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use proxy_core::{
    client::ClientConfig,
    drain::Drain,
    edge::{self, EdgeLayer, Texts},
    server::{self, ConnInfo, Server, ServerConfig},
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tower::Layer;

use crate::{
    autoscaler::{self, ConnStats},
    config::Config,
    handler::{Activator, Health, Shared},
    local::LocalSource,
    metrics,
    revisions::{MeshMode, Registry, Settings},
    source::{Source, file::FileSource, kube::KubeSource},
};

pub(crate) async fn run(config: Config) -> Result<(), String> {
    // First, so that a SIGTERM during start-up drains instead of killing the process.
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;

    let local = config.args.local.is_some();
    let (source, mesh, passthrough): (Box<dyn Source>, _, _) =
        match (&config.args.revisions, &config.args.local) {
            (_, Some(path)) => (
                Box::new(LocalSource::load(path, config.args.queue_proxy.clone())?),
                MeshMode::Auto,
                false,
            ),
            (Some(path), None) => (Box::new(FileSource::load(path)?), MeshMode::Auto, false),
            (None, None) => {
                let kube = KubeSource::connect(&config.system_namespace).await?;
                let (mesh, passthrough) = (kube.mesh, kube.passthrough);
                (Box::new(kube), mesh, passthrough)
            }
        };
    let registry = Registry::new(
        Settings {
            probe_frequency: config.probe_frequency,
            eager_probe: Duration::from_millis(config.args.eager_probe_ms),
            probe_timeout: config.probe_timeout,
            max_pending: config.args.max_pending_requests,
            client: ClientConfig {
                max_idle: config.max_idle_per_host,
                connect_timeout: Some(Duration::from_millis(config.args.connect_timeout_ms)),
                ..ClientConfig::default()
            },
            mesh,
            passthrough,
            own_ip: config.pod_ip,
        },
        config.args.max_pending_total,
    );
    // Local mode has no autoscaler: instances are scaled here.
    let health = Health::new(!config.args.ready_without_autoscaler && !local);
    let draining = health.clone();
    let conn = Arc::new(ConnStats::default());
    let (pokes_tx, pokes) = mpsc::channel(1024);
    if local {
        // Nobody reads the pokes: drain them so that the request path never finds them full.
        let mut pokes = pokes;
        tokio::spawn(async move { while pokes.recv().await.is_some() {} });
    } else {
        autoscaler::spawn(
            config.autoscaler_url(),
            config.pod_name.clone(),
            registry.clone(),
            health.clone(),
            conn.clone(),
            pokes,
        );
    }
    let mut source_task = tokio::spawn(source.run(registry.clone()));
    // As upstream waits for its informers: serving before the first full list would answer 404
    // for revisions that exist.
    tokio::select! {
        () = registry.synced() => {}
        done = &mut source_task => {
            return Err(match done {
                Ok(Err(e)) => e,
                other => format!("the revision source stopped: {other:?}"),
            });
        }
        _ = sigterm.recv() => return Ok(()),
        _ = sigint.recv() => return Ok(()),
    }
    tracing::info!("revisions synced");

    let drain = Drain::new();
    let shared = Arc::new(Shared {
        registry: registry.clone(),
        health: health.clone(),
        cluster_domain: config.cluster_domain.clone(),
        local,
        pokes: pokes_tx,
    });
    let edge = EdgeLayer::new(
        drain.clone(),
        Texts {
            timeout: "activator request timeout",
        },
    );
    let make = move |info: ConnInfo| edge.layer(Activator::new(shared.clone(), Some(info.remote)));

    let server_config = ServerConfig::default();
    let mut tasks = tokio::task::JoinSet::new();
    for (port, key) in [
        (config.args.http1_port, "ACTIVATOR_HTTP1_PORT"),
        (config.args.h2c_port, "ACTIVATOR_H2C_PORT"),
    ] {
        let listener = server::listen(port, key)?;
        tasks.spawn(Server::new(&server_config).serve(listener, make.clone(), drain.clone()));
    }
    let metrics_listener = server::listen(config.args.metrics_port, "ACTIVATOR_METRICS_PORT")?;
    tasks.spawn(Server::new(&server_config).serve(
        metrics_listener,
        {
            let registry = registry.clone();
            move |_| {
                let (registry, health, conn) = (registry.clone(), health.clone(), conn.clone());
                edge::metrics_page("text/plain; version=0.0.4; charset=utf-8", move || {
                    Bytes::from(metrics::render(&registry, &health, &conn))
                })
            }
        },
        drain.clone(),
    ));
    tracing::info!("activator started");

    tokio::select! {
        _ = sigterm.recv() => {}
        _ = sigint.recv() => {}
        done = &mut source_task => {
            return Err(match done {
                Ok(Err(e)) => e,
                other => format!("the revision source stopped: {other:?}"),
            });
        }
        Some(done) = tasks.join_next() => {
            return Err(format!("a listener stopped unexpectedly: {done:?}"));
        }
    }
    // As upstream: fail readiness at once, keep serving while the endpoints change propagates,
    // then stop accepting and let what is in flight finish, websockets included.
    tracing::info!(
        seconds = config.args.drain_seconds,
        "received TERM signal, draining"
    );
    draining.start_draining();
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
        // A second signal means now.
        std::process::exit(1);
    });
    // Locally nobody needs time to take this activator out of rotation.
    if !local {
        tokio::time::sleep(Duration::from_secs(config.args.drain_seconds)).await;
    }
    drain.start();
    drain.idle().await;
    // A source that runs processes (local mode) stops them now, and is given a moment to.
    registry.stop();
    if local {
        let _ = tokio::time::timeout(Duration::from_secs(3), &mut source_task).await;
    }
    tracing::info!("shutdown complete");
    Ok(())
}
