//! Local mode (`--local FILE`): the activator runs each service's instances itself, each a real
//! app process behind a real queue-proxy, and scales them on every change of load.
//!
//! Instances are registered as the endpoints of a revision `default/<service>`, so requests go
//! through the same throttler, waiting and probing as with any other source: an instance gets
//! traffic once its queue-proxy answers the activator's probe.

pub(crate) mod config;
mod process;

use std::{
    collections::HashMap, future::Future, net::SocketAddr, path::PathBuf, pin::Pin, time::Duration,
};

use proxy_core::{client::Protocol, timeout::Timeouts};
use tokio::{sync::mpsc, time::Instant};

use self::{
    config::Service,
    process::{Exited, Instance, Spawner},
};
use crate::{
    revisions::{Endpoints, Registry, RevId, RevisionSpec, sleep_until_opt},
    source::Source,
};

/// The namespace local services live in, as Knative's default one.
pub(crate) const NAMESPACE: &str = "default";

/// The local source.
pub(crate) struct LocalSource {
    services: Vec<Service>,
    queue_proxy: PathBuf,
}

impl LocalSource {
    /// Reads the file and finds the queue-proxy: beside this executable unless `queue_proxy`.
    pub(crate) fn load(
        path: &std::path::Path,
        queue_proxy: Option<PathBuf>,
    ) -> Result<Self, String> {
        let services = config::load(path).map_err(|e| format!("--local {e}"))?;
        let queue_proxy = match queue_proxy {
            Some(p) => p,
            None => std::env::current_exe()
                .map_err(|e| format!("cannot find this executable: {e}"))?
                .with_file_name("queue-proxy"),
        };
        if !queue_proxy.is_file() {
            return Err(format!(
                "--queue-proxy: {} does not exist (build it with `cargo build -p queue-proxy`)",
                queue_proxy.display()
            ));
        }
        Ok(Self {
            services,
            queue_proxy,
        })
    }
}

impl Source for LocalSource {
    fn run(
        self: Box<Self>,
        registry: Registry,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> {
        Box::pin(async move {
            let spawner = Spawner::start(self.queue_proxy.clone())?;
            let mut scalers = tokio::task::JoinSet::new();
            for svc in self.services {
                let id = RevId {
                    namespace: NAMESPACE.to_owned(),
                    name: svc.name.clone(),
                };
                registry.upsert(
                    &id,
                    RevisionSpec {
                        container_concurrency: svc.container_concurrency as usize,
                        timeouts: Timeouts {
                            request: svc.timeout,
                            ..Timeouts::default()
                        },
                        protocol: Protocol::Http1,
                        probe_optimisation: true,
                    },
                );
                scalers.spawn(scale(svc, id, registry.clone(), spawner.clone()));
            }
            registry.mark_synced();
            while let Some(done) = scalers.join_next().await {
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(e) => return Err(format!("a local scaler failed: {e}")),
                }
            }
            // Every scaler returns only once the activator stops.
            Ok(())
        })
    }
}

/// Keeps one service's instances at what its load asks for, deciding on every arrival and
/// departure, every instance that starts or exits, and when the idle period ends.
async fn scale(
    svc: Service,
    id: RevId,
    registry: Registry,
    spawner: Spawner,
) -> Result<(), String> {
    let Some(rev) = registry.get(&id.namespace, &id.name) else {
        return Err(format!("service {} vanished from the registry", id.name));
    };
    let (exits_tx, mut exits) = mpsc::unbounded_channel::<Exited>();
    let mut instances: HashMap<u32, Instance> = HashMap::new();
    let mut next_id = 1u32;
    let mut last_busy = Instant::now();
    loop {
        let load = rev.throttler.active() + rev.throttler.waiting();
        if load > 0 {
            last_busy = Instant::now();
        }
        let idle_for = last_busy.elapsed();
        let mut want = svc.desired(load) as usize;
        // Never below what is running while the service is busy: scale-in waits for idleness.
        if idle_for < svc.idle {
            want = want.max(instances.len());
        }
        let mut changed = false;
        while instances.len() < want {
            let n = next_id;
            next_id += 1;
            match spawner.spawn(&svc, n, exits_tx.clone()).await {
                Ok(instance) => {
                    tracing::info!(service = %svc.name, instance = n, addr = %instance.addr, "instance started");
                    instances.insert(n, instance);
                    changed = true;
                }
                Err(e) => {
                    tracing::error!(service = %svc.name, error = %e, "cannot start an instance");
                    break;
                }
            }
        }
        if instances.len() > want {
            // The newest go first; each is taken out of rotation before it is told to stop.
            let mut ids: Vec<u32> = instances.keys().copied().collect();
            ids.sort_unstable();
            for n in ids.into_iter().rev().take(instances.len() - want) {
                if let Some(instance) = instances.remove(&n) {
                    tracing::info!(service = %svc.name, instance = n, "scaling in");
                    instance.stop();
                    changed = true;
                }
            }
        }
        if changed {
            publish(&registry, &id, &instances);
        }
        let idle_deadline = (!instances.is_empty() && instances.len() > svc.min_scale as usize)
            .then(|| last_busy + svc.idle);
        tokio::select! {
            () = rev.throttler.activity() => {}
            Some(exit) = exits.recv() => {
                if let Some(instance) = instances.remove(&exit.instance) {
                    tracing::warn!(service = %svc.name, instance = exit.instance, what = exit.what, status = %exit.status, "instance exited");
                    instance.stop();
                    publish(&registry, &id, &instances);
                }
            }
            () = sleep_until_opt(idle_deadline) => {}
            () = registry.stopping() => {
                // Drain every instance and wait (briefly) for its two processes to end.
                let mut pending = instances.len() * 2;
                for (_, instance) in instances.drain() {
                    instance.stop();
                }
                publish(&registry, &id, &instances);
                let deadline = Instant::now() + STOP_WAIT;
                while pending > 0 {
                    match tokio::time::timeout_at(deadline, exits.recv()).await {
                        Ok(Some(_)) => pending -= 1,
                        _ => break,
                    }
                }
                return Ok(());
            }
        }
    }
}

/// How long stopping waits for instances to end; their queue-proxies drain for 1 s.
const STOP_WAIT: Duration = Duration::from_millis(2500);

/// The revision's endpoints: every instance's queue-proxy, each probed before it gets traffic.
fn publish(registry: &Registry, id: &RevId, instances: &HashMap<u32, Instance>) {
    let mut ready: Vec<SocketAddr> = instances.values().map(|i| i.addr).collect();
    ready.sort_unstable();
    registry.set_endpoints(
        id,
        Endpoints {
            ready,
            not_ready: Vec::new(),
        },
    );
}

/// How long an instance's queue-proxy waits for quiet when it is stopped.
pub(crate) const DRAIN_QUIET: Duration = Duration::from_secs(1);
