//! Revisions and endpoints from the Kubernetes API (the default source).
//!
//! Three cluster-wide watches, as upstream's informers: the private Endpoints of every revision
//! (its pods), the public ones (which activators front it, for subsetting) and the Revisions
//! themselves (concurrency, timeouts, protocol); in mesh mode `enabled` a fourth on the private
//! Services, whose ClusterIP then carries the traffic. `kube`'s watcher does the list, the watch, the
//! relist after `410 Gone` and the reconnects; this module only maps objects into the registry.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    time::Duration,
};

use futures_util::{
    StreamExt,
    stream::{self, BoxStream},
};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints as K8sEndpoints, Service};
use kube::{
    Api, Client, Resource,
    core::{ApiResource, DynamicObject, GroupVersionKind},
    runtime::{
        WatchStreamExt,
        watcher::{self, Event, watcher},
    },
};
use proxy_core::{client::Protocol, timeout::Timeouts};
use serde::Deserialize;

use super::Source;
use crate::revisions::{Endpoints, MeshMode, Registry, RevId, RevisionSpec};

/// How long start-up waits for the API server, as upstream's version poll.
const CONNECT_DEADLINE: Duration = Duration::from_secs(60);
const CONNECT_RETRY: Duration = Duration::from_secs(1);
/// One start-up attempt; a black-holed server must not eat the whole deadline in one call.
const CONNECT_ATTEMPT: Duration = Duration::from_secs(10);
/// Pause before a watch that the server refused with HTTP 410 starts over with a fresh list.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

const REVISION_LABEL: &str = "serving.knative.dev/revision";
const PRIVATE_SELECTOR: &str =
    "serving.knative.dev/revisionUID,networking.internal.knative.dev/serviceType=Private";
const PUBLIC_SELECTOR: &str = "networking.internal.knative.dev/serviceType=Public";
const CONFIG_NETWORK: &str = "config-network";
/// Knative's default `timeoutSeconds` (`revision-timeout-seconds` in `config-defaults`).
const DEFAULT_TIMEOUT_SECONDS: u64 = 300;

/// The Kubernetes source.
pub(crate) struct KubeSource {
    /// `config-network`'s mesh settings, read once at start as upstream does.
    pub(crate) mesh: MeshMode,
    /// `enable-mesh-pod-addressability`: probes and requests carry the private service's host.
    pub(crate) passthrough: bool,
    client: Client,
}

impl KubeSource {
    /// Connects with the in-cluster configuration or `KUBECONFIG`, waiting up to 60 s for the
    /// API server, and reads `config-network` in `system_namespace`.
    pub(crate) async fn connect(system_namespace: &str) -> Result<Self, String> {
        let config = kube::Config::infer()
            .await
            .map_err(|e| format!("no Kubernetes configuration (in-cluster or KUBECONFIG): {e}"))?;
        let url = config.cluster_url.to_string();
        let client = Client::try_from(config)
            .map_err(|e| format!("cannot build a Kubernetes client for {url}: {e}"))?;
        let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), system_namespace);
        let deadline = tokio::time::Instant::now() + CONNECT_DEADLINE;
        let network = loop {
            let error =
                match tokio::time::timeout(CONNECT_ATTEMPT, first_contact(&client, &configmaps))
                    .await
                {
                    Ok(Ok(cm)) => break cm,
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {}s", CONNECT_ATTEMPT.as_secs()),
                };
            if tokio::time::Instant::now() + CONNECT_RETRY >= deadline {
                return Err(format!(
                    "the Kubernetes API server at {url} did not answer within {}s: {error}",
                    CONNECT_DEADLINE.as_secs()
                ));
            }
            tracing::warn!(server = %url, %error, "Kubernetes API server not reachable yet; retrying");
            tokio::time::sleep(CONNECT_RETRY).await;
        };
        let data = network.as_ref().and_then(|cm| cm.data.as_ref());
        if network.is_none() {
            tracing::info!(
                namespace = system_namespace,
                "no {CONFIG_NETWORK} ConfigMap; using the defaults"
            );
        }
        let net = parse_network(data);
        for w in &net.warnings {
            tracing::warn!(namespace = system_namespace, "{CONFIG_NETWORK}: {w}");
        }
        tracing::info!(server = %url, mesh = ?net.mesh, passthrough = net.passthrough, "connected to Kubernetes");
        Ok(Self {
            mesh: net.mesh,
            passthrough: net.passthrough,
            client,
        })
    }
}

/// The API server's version (proof it answers, as upstream polls it), then `config-network`.
async fn first_contact(
    client: &Client,
    configmaps: &Api<ConfigMap>,
) -> Result<Option<ConfigMap>, kube::Error> {
    client.apiserver_version().await?;
    configmaps.get_opt(CONFIG_NETWORK).await
}

/// What `config-network` says, with a line for each setting it could not honour.
#[derive(Debug, PartialEq, Eq)]
struct Network {
    mesh: MeshMode,
    passthrough: bool,
    warnings: Vec<String>,
}

/// Parses `config-network`'s data (`None` when the ConfigMap does not exist).
fn parse_network(data: Option<&BTreeMap<String, String>>) -> Network {
    let mut warnings = Vec::new();
    let get = |key: &str| data.and_then(|d| d.get(key)).map(|v| v.trim());
    let mesh = match get("mesh-compatibility-mode") {
        None | Some("") => MeshMode::Auto,
        Some(v) if v.eq_ignore_ascii_case("auto") => MeshMode::Auto,
        Some(v) if v.eq_ignore_ascii_case("disabled") => MeshMode::Disabled,
        Some(v) if v.eq_ignore_ascii_case("enabled") => MeshMode::Enabled,
        Some(v) => {
            warnings.push(format!(
                "mesh-compatibility-mode {v:?} is not one of auto, enabled, disabled; using \"auto\""
            ));
            MeshMode::Auto
        }
    };
    // Go's strconv.ParseBool, which upstream uses; anything else is false.
    let passthrough = match get("enable-mesh-pod-addressability") {
        None | Some("") => false,
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => true,
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => false,
        Some(v) => {
            warnings.push(format!(
                "enable-mesh-pod-addressability {v:?} is not a boolean; using false"
            ));
            false
        }
    };
    Network {
        mesh,
        passthrough,
        warnings,
    }
}

// === Endpoints ===

/// The port a revision's pods serve on: `http` (HTTP/1) or `http2` (h2c) by name, as upstream's
/// `endpointsToDests`. A private service has only one of them.
fn is_serving_port(name: Option<&str>) -> bool {
    matches!(name, Some("http" | "http2"))
}

/// The revision an Endpoints object belongs to, from its labels.
fn endpoints_revision(ep: &K8sEndpoints) -> Option<RevId> {
    let name = ep.metadata.labels.as_ref()?.get(REVISION_LABEL)?;
    let namespace = ep.metadata.namespace.as_ref()?;
    (!name.is_empty()).then(|| RevId {
        namespace: namespace.clone(),
        name: name.clone(),
    })
}

/// A private service's endpoints: `ip:port` on the serving port, ready and not ready.
fn endpoints_dests(ep: &K8sEndpoints) -> Endpoints {
    let mut out = Endpoints::default();
    for subset in ep.subsets.iter().flatten() {
        for port in subset.ports.iter().flatten() {
            if !is_serving_port(port.name.as_deref()) {
                continue;
            }
            let Ok(port) = u16::try_from(port.port) else {
                continue;
            };
            for (addrs, into) in [
                (&subset.addresses, &mut out.ready),
                (&subset.not_ready_addresses, &mut out.not_ready),
            ] {
                into.extend(
                    addrs
                        .iter()
                        .flatten()
                        .filter_map(|a| parse_ip(&a.ip))
                        .map(|ip| SocketAddr::new(ip, port)),
                );
            }
        }
    }
    // Stable order, so that a re-sent but unchanged object is not seen as a change.
    for v in [&mut out.ready, &mut out.not_ready] {
        v.sort_unstable();
        v.dedup();
    }
    out
}

/// A private Service's `ClusterIP:port` on its serving port (`None` for a headless one).
fn service_dest(svc: &Service) -> Option<SocketAddr> {
    let spec = svc.spec.as_ref()?;
    let ip = parse_ip(spec.cluster_ip.as_deref()?)?;
    let port = spec
        .ports
        .iter()
        .flatten()
        .find(|p| is_serving_port(p.name.as_deref()))?;
    Some(SocketAddr::new(ip, u16::try_from(port.port).ok()?))
}

/// The revision a private Service belongs to, from its labels.
fn service_revision(svc: &Service) -> Option<RevId> {
    let name = svc.metadata.labels.as_ref()?.get(REVISION_LABEL)?;
    let namespace = svc.metadata.namespace.as_ref()?;
    (!name.is_empty()).then(|| RevId {
        namespace: namespace.clone(),
        name: name.clone(),
    })
}

/// A public service's ready IPs on the serving port: the activators fronting the revision.
fn endpoints_activators(ep: &K8sEndpoints) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = ep
        .subsets
        .iter()
        .flatten()
        .filter(|s| {
            s.ports
                .iter()
                .flatten()
                .any(|p| is_serving_port(p.name.as_deref()))
        })
        .flat_map(|s| s.addresses.iter().flatten())
        .filter_map(|a| parse_ip(&a.ip))
        .collect();
    ips.sort_unstable();
    ips.dedup();
    ips
}

fn parse_ip(text: &str) -> Option<IpAddr> {
    let ip = text.parse().ok();
    if ip.is_none() {
        tracing::warn!(ip = text, "ignoring an endpoint address that is not an IP");
    }
    ip
}

// === Revisions ===

/// The parts of a Revision's spec the activator reads. Unknown fields are ignored: this is
/// someone else's API and it grows.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct RevSpec {
    container_concurrency: Option<u64>,
    timeout_seconds: Option<u64>,
    response_start_timeout_seconds: Option<u64>,
    idle_timeout_seconds: Option<u64>,
    containers: Vec<Container>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Container {
    ports: Vec<Port>,
    readiness_probe: Option<Probe>,
    startup_probe: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Port {
    name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Probe {
    exec: Option<serde_json::Value>,
}

/// A Revision's spec (the object's `spec`, `Null` if absent) as the activator uses it.
fn revision_spec(spec: &serde_json::Value) -> Result<RevisionSpec, String> {
    let spec = if spec.is_null() {
        RevSpec::default()
    } else {
        RevSpec::deserialize(spec).map_err(|e| format!("invalid spec: {e}"))?
    };
    let container_concurrency = usize::try_from(spec.container_concurrency.unwrap_or(0))
        .map_err(|_| "invalid spec: containerConcurrency is too large".to_owned())?;
    // The defaulting webhook turns an unset or zero timeout into the default.
    let request = match spec.timeout_seconds {
        None | Some(0) => DEFAULT_TIMEOUT_SECONDS,
        Some(s) => s,
    };
    let off_if_zero = |s: Option<u64>| s.filter(|s| *s > 0).map(Duration::from_secs);
    // Upstream's GetContainer: the serving container is the one with ports, else the first.
    let serving = spec
        .containers
        .iter()
        .find(|c| !c.ports.is_empty())
        .or_else(|| spec.containers.first());
    let protocol = match serving.and_then(|c| c.ports.first()?.name.as_deref()) {
        Some("h2c") => Protocol::H2c,
        _ => Protocol::Http1,
    };
    // Kubelet runs exec and startup probes; a pod that answers the activator's probe may still
    // be failing them, so only Kubernetes' own readiness counts then.
    let exec_readiness = serving
        .and_then(|c| c.readiness_probe.as_ref())
        .is_some_and(|p| p.exec.as_ref().is_some_and(|e| !e.is_null()));
    let startup = spec.containers.iter().any(|c| c.startup_probe.is_some());
    Ok(RevisionSpec {
        container_concurrency,
        timeouts: Timeouts {
            request: Duration::from_secs(request),
            response_start: off_if_zero(spec.response_start_timeout_seconds),
            idle: off_if_zero(spec.idle_timeout_seconds),
        },
        protocol,
        probe_optimisation: !exec_readiness && !startup,
    })
}

fn revision_id(obj: &DynamicObject) -> Option<RevId> {
    Some(RevId {
        namespace: obj.metadata.namespace.clone()?,
        name: obj.metadata.name.clone()?,
    })
}

fn revision_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("serving.knative.dev", "v1", "Revision"),
        "revisions",
    )
}

// === Watching ===

/// A watch that never ends: errors are logged and the watch goes on (the watcher relists and
/// reconnects by itself, with backoff). A watch the server refuses outright with HTTP 410 is
/// the one case the watcher would retry as is forever, so it starts over with a fresh list.
fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
) -> BoxStream<'static, Event<K>>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let start = move || {
        watcher(api.clone(), config.clone())
            .default_backoff()
            .boxed()
    };
    let first = start();
    stream::unfold((first, start), move |(mut inner, start)| async move {
        loop {
            match inner.next().await {
                Some(Ok(event)) => return Some((event, (inner, start))),
                Some(Err(watcher::Error::WatchError(status))) if status.code == 410 => {
                    // Routine: the server's history moved past us; the watcher relists.
                    tracing::info!(watch = what, "watch expired (410 Gone); relisting");
                }
                Some(Err(watcher::Error::WatchStartFailed(kube::Error::Api(status))))
                    if status.code == 410 =>
                {
                    tracing::info!(watch = what, "watch refused (410 Gone); relisting");
                    tokio::time::sleep(RESTART_PAUSE).await;
                    inner = start();
                }
                Some(Err(e)) => {
                    tracing::warn!(watch = what, error = %e, "watch failed; retrying");
                }
                // The backoff never gives up, so this does not happen; start over if it does.
                None => {
                    tokio::time::sleep(RESTART_PAUSE).await;
                    inner = start();
                }
            }
        }
    })
    .boxed()
}

/// One event from any of the watches.
enum Change {
    Private(Event<K8sEndpoints>),
    Public(Event<K8sEndpoints>),
    Revision(Event<DynamicObject>),
    // Boxed: a Service is large, and every event of the other watches would pay for it.
    Service(Box<Event<Service>>),
}

/// What the source has told the registry, to undo it when a relist shows an object is gone and
/// to give a revision that comes back what is already known about its pods.
#[derive(Default)]
struct State {
    revisions: HashSet<RevId>,
    revisions_listed: Option<HashSet<RevId>>,
    private: HashMap<RevId, Endpoints>,
    private_listed: Option<HashSet<RevId>>,
    public: HashMap<RevId, Vec<IpAddr>>,
    public_listed: Option<HashSet<RevId>>,
    /// Watches that have delivered their first complete list.
    listed: HashSet<&'static str>,
}

impl State {
    fn apply(&mut self, registry: &Registry, change: Change) {
        let (kind, done) = match &change {
            Change::Private(e) => ("private", matches!(e, Event::InitDone)),
            Change::Public(e) => ("public", matches!(e, Event::InitDone)),
            Change::Revision(e) => ("revision", matches!(e, Event::InitDone)),
            Change::Service(e) => ("service", matches!(**e, Event::InitDone)),
        };
        match change {
            Change::Private(event) => self.private_event(registry, event),
            Change::Public(event) => self.public_event(registry, event),
            Change::Revision(event) => self.revision_event(registry, event),
            Change::Service(event) => service_event(registry, *event),
        }
        if done {
            self.listed.insert(kind);
        }
    }

    /// Whether every watch has listed once: until then a known revision could still get 404.
    fn synced(&self, watches: usize) -> bool {
        self.listed.len() >= watches
    }

    fn private_event(&mut self, registry: &Registry, event: Event<K8sEndpoints>) {
        match event {
            Event::Init => self.private_listed = Some(HashSet::new()),
            Event::InitApply(ep) | Event::Apply(ep) => {
                let Some(id) = endpoints_revision(&ep) else {
                    return;
                };
                let dests = endpoints_dests(&ep);
                tracing::debug!(revision = %id, ready = ?dests.ready, not_ready = ?dests.not_ready, "private endpoints");
                registry.set_endpoints(&id, dests.clone());
                if let Some(listed) = &mut self.private_listed {
                    listed.insert(id.clone());
                }
                self.private.insert(id, dests);
            }
            // As upstream: the throttler keeps the last state; only the memory of it goes.
            Event::Delete(ep) => {
                if let Some(id) = endpoints_revision(&ep) {
                    self.private.remove(&id);
                    self.forget_orphan(registry, &id);
                }
            }
            Event::InitDone => {
                if let Some(listed) = self.private_listed.take() {
                    let gone: Vec<RevId> = self
                        .private
                        .keys()
                        .filter(|id| !listed.contains(*id))
                        .cloned()
                        .collect();
                    for id in gone {
                        self.private.remove(&id);
                        self.forget_orphan(registry, &id);
                    }
                }
            }
        }
    }

    fn public_event(&mut self, registry: &Registry, event: Event<K8sEndpoints>) {
        match event {
            Event::Init => self.public_listed = Some(HashSet::new()),
            Event::InitApply(ep) | Event::Apply(ep) => {
                let Some(id) = endpoints_revision(&ep) else {
                    return;
                };
                let ips = endpoints_activators(&ep);
                tracing::debug!(revision = %id, activators = ?ips, "public endpoints");
                registry.set_activators(&id, ips.clone());
                if let Some(listed) = &mut self.public_listed {
                    listed.insert(id.clone());
                }
                self.public.insert(id, ips);
            }
            Event::Delete(ep) => {
                if let Some(id) = endpoints_revision(&ep) {
                    self.public.remove(&id);
                    self.forget_orphan(registry, &id);
                }
            }
            Event::InitDone => {
                if let Some(listed) = self.public_listed.take() {
                    let gone: Vec<RevId> = self
                        .public
                        .keys()
                        .filter(|id| !listed.contains(*id))
                        .cloned()
                        .collect();
                    for id in gone {
                        self.public.remove(&id);
                        self.forget_orphan(registry, &id);
                    }
                }
            }
        }
    }

    fn revision_event(&mut self, registry: &Registry, event: Event<DynamicObject>) {
        match event {
            Event::Init => self.revisions_listed = Some(HashSet::new()),
            Event::InitApply(obj) | Event::Apply(obj) => {
                let Some(id) = revision_id(&obj) else {
                    return;
                };
                if let Some(listed) = &mut self.revisions_listed {
                    listed.insert(id.clone());
                }
                let spec = match revision_spec(
                    obj.data.get("spec").unwrap_or(&serde_json::Value::Null),
                ) {
                    Ok(spec) => spec,
                    Err(e) => {
                        // Keep whatever was known; the next valid update replaces it.
                        tracing::warn!(revision = %id, error = %e, "ignoring a revision update");
                        return;
                    }
                };
                self.upsert(registry, id, spec);
            }
            Event::Delete(obj) => {
                if let Some(id) = revision_id(&obj) {
                    self.remove(registry, &id);
                }
            }
            Event::InitDone => {
                if let Some(listed) = self.revisions_listed.take() {
                    let gone: Vec<RevId> = self.revisions.difference(&listed).cloned().collect();
                    for id in gone {
                        self.remove(registry, &id);
                    }
                }
            }
        }
    }

    fn upsert(&mut self, registry: &Registry, id: RevId, spec: RevisionSpec) {
        registry.upsert(&id, spec);
        if self.revisions.insert(id.clone()) {
            tracing::debug!(revision = %id, ?spec, "revision added");
            // A revision deleted and created again gets a fresh entry in the registry: give it
            // the pods and activators its endpoints already named, which may not change again.
            if let Some(dests) = self.private.get(&id) {
                registry.set_endpoints(&id, dests.clone());
            }
            if let Some(ips) = self.public.get(&id) {
                registry.set_activators(&id, ips.clone());
            }
        } else {
            tracing::debug!(revision = %id, ?spec, "revision updated");
        }
    }

    /// Endpoints of a revision that no longer exists create a registry entry without a spec
    /// (and a prober); once nothing names the revision any more, that entry goes too.
    fn forget_orphan(&self, registry: &Registry, id: &RevId) {
        if !self.revisions.contains(id)
            && !self.private.contains_key(id)
            && !self.public.contains_key(id)
        {
            registry.remove(id);
        }
    }

    fn remove(&mut self, registry: &Registry, id: &RevId) {
        if self.revisions.remove(id) {
            tracing::debug!(revision = %id, "revision removed");
        }
        registry.remove(id);
    }
}

/// A private Service changed: its ClusterIP is where mesh mode `enabled` sends traffic.
fn service_event(registry: &Registry, event: Event<Service>) {
    match event {
        Event::InitApply(svc) | Event::Apply(svc) => {
            if let Some(id) = service_revision(&svc) {
                registry.set_private_service(&id, service_dest(&svc));
            }
        }
        Event::Delete(svc) => {
            if let Some(id) = service_revision(&svc) {
                registry.clear_private_service(&id);
            }
        }
        Event::Init | Event::InitDone => {}
    }
}

impl Source for KubeSource {
    fn run(
        self: Box<Self>,
        registry: Registry,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> {
        Box::pin(async move {
            let client = self.client;
            let services: Api<Service> = Api::all(client.clone());
            let endpoints: Api<K8sEndpoints> = Api::all(client.clone());
            let revisions: Api<DynamicObject> = Api::all_with(client, &revision_resource());
            let private = watch(
                endpoints.clone(),
                watcher::Config::default().labels(PRIVATE_SELECTOR),
                "private endpoints",
            )
            .map(Change::Private);
            let public = watch(
                endpoints,
                watcher::Config::default().labels(PUBLIC_SELECTOR),
                "public endpoints",
            )
            .map(Change::Public);
            let revisions =
                watch(revisions, watcher::Config::default(), "revisions").map(Change::Revision);
            let mut watches = vec![private.boxed(), public.boxed(), revisions.boxed()];
            if self.mesh == MeshMode::Enabled || (self.mesh == MeshMode::Auto && !self.passthrough)
            {
                // Only these modes route through the ClusterIP; the watch costs memory in a
                // large cluster, so `disabled` and passthrough go without it.
                watches.push(
                    watch(
                        services,
                        watcher::Config::default().labels(PRIVATE_SELECTOR),
                        "private services",
                    )
                    .map(|e| Change::Service(Box::new(e)))
                    .boxed(),
                );
            }
            let count = watches.len();
            let mut changes = stream::select_all(watches);
            let mut state = State::default();
            while let Some(change) = changes.next().await {
                state.apply(&registry, change);
                if state.synced(count) {
                    registry.mark_synced();
                }
            }
            Err("the Kubernetes watches ended".to_owned())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(json: serde_json::Value) -> K8sEndpoints {
        serde_json::from_value(json).unwrap()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_endpoints_use_the_port_named_http_or_http2() {
        let ep = endpoints(serde_json::json!({
            "metadata": {
                "name": "hello-00001-private",
                "namespace": "default",
                "labels": {
                    "serving.knative.dev/revision": "hello-00001",
                    "serving.knative.dev/revisionUID": "u",
                    "networking.internal.knative.dev/serviceType": "Private",
                },
            },
            "subsets": [
                {
                    "addresses": [{"ip": "10.0.0.2"}, {"ip": "10.0.0.1"}],
                    "notReadyAddresses": [{"ip": "10.0.0.3"}],
                    "ports": [
                        {"name": "http-usermetric", "port": 9091},
                        {"name": "http", "port": 8012},
                        {"name": "https", "port": 8112},
                    ],
                },
                {
                    "addresses": [{"ip": "fd00::1"}, {"ip": "not-an-ip"}],
                    "ports": [{"name": "http2", "port": 8013}],
                },
                {
                    "addresses": [{"ip": "10.0.0.9"}],
                    "ports": [{"name": "queue-adm", "port": 8022}],
                },
            ],
        }));
        assert_eq!(
            endpoints_revision(&ep),
            Some(RevId {
                namespace: "default".into(),
                name: "hello-00001".into()
            })
        );
        assert_eq!(
            endpoints_dests(&ep),
            Endpoints {
                ready: vec![
                    addr("10.0.0.1:8012"),
                    addr("10.0.0.2:8012"),
                    addr("[fd00::1]:8013")
                ],
                not_ready: vec![addr("10.0.0.3:8012")],
            }
        );
        assert_eq!(
            endpoints_dests(&endpoints(serde_json::json!({"metadata": {}}))),
            Endpoints::default()
        );
    }

    #[test]
    fn endpoints_without_a_revision_label_are_ignored() {
        let ep = endpoints(serde_json::json!({
            "metadata": {"name": "x", "namespace": "default", "labels": {"app": "x"}},
        }));
        assert_eq!(endpoints_revision(&ep), None);
    }

    #[test]
    fn public_endpoints_give_the_ready_activator_ips() {
        let ep = endpoints(serde_json::json!({
            "metadata": {"name": "hello-00001", "namespace": "default"},
            "subsets": [
                {
                    "addresses": [{"ip": "10.1.0.7"}, {"ip": "10.1.0.5"}],
                    "notReadyAddresses": [{"ip": "10.1.0.9"}],
                    "ports": [{"name": "http", "port": 8012}, {"name": "https", "port": 8112}],
                },
                {
                    "addresses": [{"ip": "10.1.0.8"}],
                    "ports": [{"name": "https", "port": 8112}],
                },
            ],
        }));
        assert_eq!(
            endpoints_activators(&ep),
            vec![
                "10.1.0.5".parse::<IpAddr>().unwrap(),
                "10.1.0.7".parse().unwrap()
            ]
        );
    }

    #[test]
    fn a_revision_spec_maps_with_knatives_defaults() {
        let spec = revision_spec(&serde_json::json!({
            "containers": [{"image": "x", "ports": [{"containerPort": 8080}]}],
        }))
        .unwrap();
        assert_eq!(spec, RevisionSpec::default());
        assert_eq!(
            revision_spec(&serde_json::Value::Null).unwrap(),
            RevisionSpec::default()
        );

        let spec = revision_spec(&serde_json::json!({
            "containerConcurrency": 10,
            "timeoutSeconds": 60,
            "responseStartTimeoutSeconds": 5,
            "idleTimeoutSeconds": 0,
            "enableServiceLinks": false,
            "containers": [
                {"name": "sidecar", "image": "s"},
                {"name": "user", "image": "u", "ports": [{"name": "h2c", "containerPort": 8080}]},
            ],
        }))
        .unwrap();
        assert_eq!(spec.container_concurrency, 10);
        assert_eq!(
            spec.timeouts,
            Timeouts {
                request: Duration::from_secs(60),
                response_start: Some(Duration::from_secs(5)),
                idle: None,
            }
        );
        assert_eq!(spec.protocol, Protocol::H2c);
        assert!(spec.probe_optimisation);

        let zero = revision_spec(&serde_json::json!({"timeoutSeconds": 0})).unwrap();
        assert_eq!(zero.timeouts.request, Duration::from_secs(300));
    }

    #[test]
    fn exec_readiness_or_any_startup_probe_turns_probe_optimisation_off() {
        let with = |containers: serde_json::Value| {
            revision_spec(&serde_json::json!({ "containers": containers }))
                .unwrap()
                .probe_optimisation
        };
        assert!(with(serde_json::json!([
            {"ports": [{"containerPort": 8080}], "readinessProbe": {"httpGet": {"port": 8080}}},
        ])));
        assert!(!with(serde_json::json!([
            {"ports": [{"containerPort": 8080}], "readinessProbe": {"exec": {"command": ["true"]}}},
        ])));
        assert!(!with(serde_json::json!([
            {"ports": [{"containerPort": 8080}], "startupProbe": {"tcpSocket": {"port": 8080}}},
        ])));
        assert!(!with(serde_json::json!([
            {"ports": [{"containerPort": 8080}]},
            {"name": "sidecar", "startupProbe": {"exec": {"command": ["true"]}}},
        ])));
        // A sidecar's exec readiness probe is kubelet's business only.
        assert!(with(serde_json::json!([
            {"ports": [{"containerPort": 8080}]},
            {"name": "sidecar", "readinessProbe": {"exec": {"command": ["true"]}}},
        ])));
    }

    #[test]
    fn a_malformed_revision_spec_is_an_error() {
        let e = revision_spec(&serde_json::json!({"containerConcurrency": -1})).unwrap_err();
        assert!(e.contains("invalid spec"), "{e}");
        let e = revision_spec(&serde_json::json!({"containers": "x"})).unwrap_err();
        assert!(e.contains("invalid spec"), "{e}");
    }

    #[test]
    fn a_private_service_gives_its_cluster_ip_on_the_serving_port() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "r-private", "namespace": "ns",
                         "labels": {"serving.knative.dev/revision": "r"}},
            "spec": {"clusterIP": "10.96.0.7", "ports": [
                {"name": "http-autometric", "port": 9090},
                {"name": "http", "port": 80, "targetPort": 8012}]}
        }))
        .unwrap();
        assert_eq!(service_dest(&svc), Some(addr("10.96.0.7:80")));
        assert_eq!(
            service_revision(&svc),
            Some(RevId {
                namespace: "ns".into(),
                name: "r".into()
            })
        );
        let headless: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "x", "namespace": "ns"},
            "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}
        }))
        .unwrap();
        assert_eq!(service_dest(&headless), None);
    }

    #[test]
    fn config_network_parsing() {
        let data = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(
            parse_network(None),
            Network {
                mesh: MeshMode::Auto,
                passthrough: false,
                warnings: vec![]
            }
        );
        let n = parse_network(Some(&data(&[
            ("mesh-compatibility-mode", "disabled"),
            ("enable-mesh-pod-addressability", "true"),
        ])));
        assert_eq!((n.mesh, n.passthrough), (MeshMode::Disabled, true));
        assert!(n.warnings.is_empty());

        let n = parse_network(Some(&data(&[("mesh-compatibility-mode", "auto")])));
        assert_eq!((n.mesh, n.passthrough), (MeshMode::Auto, false));

        let n = parse_network(Some(&data(&[("mesh-compatibility-mode", "enabled")])));
        assert_eq!(n.mesh, MeshMode::Enabled);
        assert!(n.warnings.is_empty());

        let n = parse_network(Some(&data(&[
            ("mesh-compatibility-mode", "sometimes"),
            ("enable-mesh-pod-addressability", "yes"),
        ])));
        assert_eq!((n.mesh, n.passthrough), (MeshMode::Auto, false));
        assert_eq!(n.warnings.len(), 2);
    }

    fn revision(ns: &str, name: &str) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Revision",
            "metadata": {"namespace": ns, "name": name},
            "spec": {"containerConcurrency": 1},
        }))
        .unwrap()
    }

    fn private(name: &str, ip: &str) -> K8sEndpoints {
        endpoints(serde_json::json!({
            "metadata": {
                "namespace": "a",
                "name": format!("{name}-private"),
                "labels": {"serving.knative.dev/revision": name},
            },
            "subsets": [{"addresses": [{"ip": ip}], "ports": [{"name": "http", "port": 8012}]}],
        }))
    }

    #[tokio::test]
    async fn endpoints_outliving_their_revision_leave_no_entry_behind() {
        let r = crate::revisions::tests::registry(None);
        let mut s = State::default();
        s.apply(&r, Change::Revision(Event::Apply(revision("a", "one"))));
        s.apply(
            &r,
            Change::Private(Event::Apply(private("one", "10.0.0.1"))),
        );
        // The throttler keeps its last pods when only the endpoints go, as upstream.
        s.apply(
            &r,
            Change::Private(Event::Delete(private("one", "10.0.0.1"))),
        );
        assert!(r.get("a", "one").is_some());

        s.apply(
            &r,
            Change::Private(Event::Apply(private("one", "10.0.0.1"))),
        );
        s.apply(&r, Change::Revision(Event::Delete(revision("a", "one"))));
        s.apply(
            &r,
            Change::Private(Event::Apply(private("one", "10.0.0.2"))),
        );
        assert!(r.get("a", "one").is_none());
        assert_eq!(r.all().len(), 1, "entry kept while its endpoints exist");
        s.apply(
            &r,
            Change::Private(Event::Delete(private("one", "10.0.0.2"))),
        );
        assert!(r.all().is_empty());

        // A relist that no longer shows the endpoints counts as their deletion.
        s.apply(
            &r,
            Change::Private(Event::Apply(private("two", "10.0.0.3"))),
        );
        assert_eq!(r.all().len(), 1);
        for e in [Event::Init, Event::InitDone] {
            s.apply(&r, Change::Private(e));
        }
        assert!(r.all().is_empty());
    }

    #[tokio::test]
    async fn a_relist_removes_revisions_that_are_gone() {
        let r = crate::revisions::tests::registry(None);
        let mut s = State::default();
        for e in [
            Event::Init,
            Event::InitApply(revision("a", "one")),
            Event::InitApply(revision("a", "two")),
            Event::InitDone,
        ] {
            s.apply(&r, Change::Revision(e));
        }
        assert!(r.get("a", "one").is_some() && r.get("a", "two").is_some());
        for e in [
            Event::Init,
            Event::InitApply(revision("a", "two")),
            Event::InitDone,
        ] {
            s.apply(&r, Change::Revision(e));
        }
        assert!(r.get("a", "one").is_none());
        assert!(r.get("a", "two").is_some());
        s.apply(&r, Change::Revision(Event::Delete(revision("a", "two"))));
        assert!(r.get("a", "two").is_none());
        assert!(s.revisions.is_empty());
    }
}
