//! The revisions the activator knows, their throttlers, and the probing that admits their pods.
//!
//! Sources (Kubernetes, a file) write into the [`Registry`]; requests read from it. Each revision
//! has a prober task: it probes every endpoint that is not yet known healthy, and the moment one
//! passes, the pod goes to the revision's throttler, which releases waiting requests at once.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::{Arc, RwLock, atomic::AtomicBool},
    time::Duration,
};

use http::{HeaderName, HeaderValue};
use proxy_core::{
    client::{Client, ClientConfig, Protocol},
    headers,
    probe::{self, QueueProbe},
    stats::RequestStats,
    throttler::{Pod, QueueLimit, Throttler},
    timeout::Timeouts,
};
use tokio::{
    sync::{mpsc, watch},
    task::AbortHandle,
    time::Instant,
};

/// A revision's namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct RevId {
    pub(crate) namespace: String,
    pub(crate) name: String,
}

impl std::fmt::Display for RevId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What the activator needs to know about a revision.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct RevisionSpec {
    /// containerConcurrency; 0 is unlimited.
    pub(crate) container_concurrency: usize,
    pub(crate) timeouts: Timeouts,
    /// The protocol its pods speak (their port is named `http` or `http2`).
    pub(crate) protocol: Protocol,
    /// Whether a pod may take traffic once its queue-proxy answers, before Kubernetes calls it
    /// ready (off when the revision has an exec readiness probe or a startup probe).
    pub(crate) probe_optimisation: bool,
}

impl Default for RevisionSpec {
    fn default() -> Self {
        Self {
            container_concurrency: 0,
            timeouts: Timeouts::default(),
            protocol: Protocol::Http1,
            probe_optimisation: true,
        }
    }
}

/// A revision's endpoints as its private service lists them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Endpoints {
    pub(crate) ready: Vec<SocketAddr>,
    pub(crate) not_ready: Vec<SocketAddr>,
}

/// How pods are reached, from `config-network`'s `mesh-compatibility-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) enum MeshMode {
    /// Probe every pod before use; when none passes and every answer looked like a mesh's
    /// (502, 503 or no HTTP answer), fall back to the private service's ClusterIP if it answers
    /// the probe, as upstream's `auto` does, but only until a pod passes again (upstream's
    /// fallback is sticky for the watcher's lifetime, #15477).
    #[default]
    Auto,
    /// Trust pods Kubernetes calls ready without probing them; probe only the others.
    Disabled,
    /// Never address pods: send everything to the private service's ClusterIP, sized by the
    /// pods Kubernetes calls ready.
    Enabled,
}

/// Settings shared by every revision.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) probe_frequency: Duration,
    pub(crate) eager_probe: Duration,
    pub(crate) probe_timeout: Duration,
    pub(crate) max_pending: usize,
    pub(crate) client: ClientConfig,
    pub(crate) mesh: MeshMode,
    /// Send `Host: <rev>-private.<ns>` and `K-Passthrough-Lb: true` (mesh pod addressability).
    pub(crate) passthrough: bool,
    /// This activator's IP, to find its place among a revision's activators.
    pub(crate) own_ip: Option<IpAddr>,
}

/// One revision. Requests hold it while they run; the registry drops it when the source does.
pub(crate) struct Revision {
    pub(crate) id: RevId,
    spec: watch::Sender<Option<RevisionSpec>>,
    pub(crate) throttler: Arc<Throttler>,
    pub(crate) stats: Arc<RequestStats>,
    /// Whether the autoscaler has heard of activity since the revision was last idle.
    pub(crate) reporting: AtomicBool,
    /// `<rev>-private.<ns>`, the `Host` sent with passthrough load balancing.
    pub(crate) private_host: HeaderValue,
    endpoints: watch::Sender<Endpoints>,
    private_service: watch::Sender<Option<SocketAddr>>,
    recheck: mpsc::UnboundedSender<SocketAddr>,
    prober: AbortHandle,
}

impl std::fmt::Debug for Revision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revision")
            .field("id", &self.id)
            .field("throttler", &self.throttler)
            .finish_non_exhaustive()
    }
}

impl Drop for Revision {
    fn drop(&mut self) {
        self.prober.abort();
    }
}

impl Revision {
    /// Its current spec; `None` until the source has seen the revision itself.
    pub(crate) fn spec(&self) -> Option<RevisionSpec> {
        *self.spec.borrow()
    }

    /// Asks for the pod at `addr` to be probed again, e.g. after a connection to it failed.
    pub(crate) fn recheck(&self, addr: SocketAddr) {
        let _ = self.recheck.send(addr);
    }
}

/// Every known revision. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Registry {
    inner: Arc<Inner>,
}

/// FNV-1a. Revision names are short and only the source inserts them, so a fast hash is worth
/// more on the request path than SipHash's resistance to chosen keys.
#[derive(Clone, Copy, Default)]
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

type Names<V> = HashMap<String, V, std::hash::BuildHasherDefault<Fnv>>;

struct Inner {
    // namespace → name → revision: looked up per request with borrowed header values.
    revisions: RwLock<Names<Names<Arc<Revision>>>>,
    settings: Settings,
    total: Arc<QueueLimit>,
    /// Set once the source has listed everything at least once.
    synced: watch::Sender<bool>,
    /// Set when the activator is stopping, for sources that own processes.
    stopping: watch::Sender<bool>,
}

impl Registry {
    pub(crate) fn new(settings: Settings, max_pending_total: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                revisions: RwLock::new(Names::default()),
                settings,
                total: QueueLimit::new(max_pending_total),
                synced: watch::channel(false).0,
                stopping: watch::channel(false).0,
            }),
        }
    }

    /// The source has listed everything once: a revision it knows will now be found.
    pub(crate) fn mark_synced(&self) {
        self.inner
            .synced
            .send_if_modified(|s| !std::mem::replace(s, true));
    }

    /// Resolves once the source has listed everything.
    pub(crate) async fn synced(&self) {
        let mut rx = self.inner.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Tells the source that the activator is stopping.
    pub(crate) fn stop(&self) {
        self.inner.stopping.send_replace(true);
    }

    /// Resolves once the activator is stopping.
    pub(crate) async fn stopping(&self) {
        let mut rx = self.inner.stopping.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Requests waiting across all revisions.
    pub(crate) fn waiting_total(&self) -> usize {
        self.inner.total.waiting()
    }

    /// The revision, if the source has seen it.
    pub(crate) fn get(&self, namespace: &str, name: &str) -> Option<Arc<Revision>> {
        let map = self
            .inner
            .revisions
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let rev = map.get(namespace)?.get(name)?;
        rev.spec.borrow().is_some().then(|| rev.clone())
    }

    /// Every revision, known or only seen through its endpoints so far.
    pub(crate) fn all(&self) -> Vec<Arc<Revision>> {
        let map = self
            .inner
            .revisions
            .read()
            .unwrap_or_else(|e| e.into_inner());
        map.values().flat_map(|m| m.values().cloned()).collect()
    }

    fn entry(&self, id: &RevId) -> Arc<Revision> {
        if let Some(rev) = self
            .inner
            .revisions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id.namespace)
            .and_then(|m| m.get(&id.name))
        {
            return rev.clone();
        }
        let mut map = self
            .inner
            .revisions
            .write()
            .unwrap_or_else(|e| e.into_inner());
        map.entry(id.namespace.clone())
            .or_default()
            .entry(id.name.clone())
            .or_insert_with(|| self.create(id.clone()))
            .clone()
    }

    fn create(&self, id: RevId) -> Arc<Revision> {
        let s = &self.inner.settings;
        let throttler = Throttler::new(0, s.max_pending, self.inner.total.clone());
        let (endpoints, endpoints_rx) = watch::channel(Endpoints::default());
        let (recheck, recheck_rx) = mpsc::unbounded_channel();
        let (spec, spec_rx) = watch::channel(None);
        let (private_service, private_rx) = watch::channel(None);
        let private_host = HeaderValue::try_from(format!("{}-private.{}", id.name, id.namespace))
            .unwrap_or_else(|_| HeaderValue::from_static("invalid"));
        let prober = tokio::spawn(
            Prober {
                throttler: throttler.clone(),
                settings: s.clone(),
                extra: if s.passthrough {
                    vec![
                        (http::header::HOST, private_host.clone()),
                        (headers::K_PASSTHROUGH_LB, HeaderValue::from_static("true")),
                    ]
                } else {
                    Vec::new()
                },
                dests: HashMap::new(),
                spec: spec_rx,
                cluster: None,
                fallback: Fallback::default(),
            }
            .run(endpoints_rx, private_rx, recheck_rx),
        )
        .abort_handle();
        Arc::new(Revision {
            id,
            spec,
            throttler,
            stats: RequestStats::new(Instant::now()),
            reporting: AtomicBool::new(false),
            private_host,
            endpoints,
            private_service,
            recheck,
            prober,
        })
    }

    /// Adds or updates a revision.
    pub(crate) fn upsert(&self, id: &RevId, spec: RevisionSpec) {
        let rev = self.entry(id);
        rev.throttler.set_cc(spec.container_concurrency);
        rev.spec.send_replace(Some(spec));
    }

    /// Forgets a revision; its requests get 404 from now on.
    pub(crate) fn remove(&self, id: &RevId) {
        let mut map = self
            .inner
            .revisions
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(m) = map.get_mut(&id.namespace) {
            m.remove(&id.name);
            if m.is_empty() {
                map.remove(&id.namespace);
            }
        }
    }

    /// Replaces a revision's endpoints.
    pub(crate) fn set_endpoints(&self, id: &RevId, endpoints: Endpoints) {
        self.entry(id).endpoints.send_if_modified(|old| {
            let changed = *old != endpoints;
            *old = endpoints;
            changed
        });
    }

    /// The `ClusterIP:port` of a revision's private service (used in mesh mode `enabled`).
    pub(crate) fn set_private_service(&self, id: &RevId, addr: Option<SocketAddr>) {
        self.entry(id).private_service.send_if_modified(|old| {
            let changed = *old != addr;
            *old = addr;
            changed
        });
    }

    /// Forgets a revision's private service, if the revision is still known.
    pub(crate) fn clear_private_service(&self, id: &RevId) {
        let map = self
            .inner
            .revisions
            .read()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(rev) = map.get(&id.namespace).and_then(|m| m.get(&id.name)) {
            rev.private_service
                .send_if_modified(|old| old.take().is_some());
        }
    }

    /// The activators in front of a revision (the ready IPs of its public endpoints). When this
    /// activator is among them, it uses only its share of the pods.
    pub(crate) fn set_activators(&self, id: &RevId, mut ips: Vec<IpAddr>) {
        let Some(own) = self.inner.settings.own_ip else {
            return;
        };
        // As upstream: sorted as strings; an update without us leaves the last known place.
        let mut texts: Vec<String> = ips.drain(..).map(|ip| ip.to_string()).collect();
        texts.sort();
        texts.dedup();
        if let Some(index) = texts.iter().position(|t| *t == own.to_string()) {
            self.entry(id)
                .throttler
                .set_subset(Some((index, texts.len())));
        }
    }
}

/// One endpoint as the prober tracks it.
struct Dest {
    pod: Arc<Pod>,
    k8s_ready: bool,
    healthy: bool,
    probing: bool,
    last_probe: Option<Instant>,
    /// The last answer was a real HTTP answer no mesh gives (not 502 or 503): the pod is
    /// reachable, just not ready, so the ClusterIP fallback does not apply.
    not_mesh: bool,
    /// Probed at least once since it appeared.
    probed: bool,
}

/// How one probe ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ready,
    /// An HTTP answer other than `queue`; `maybe_mesh` for 502 and 503.
    NotReady {
        maybe_mesh: bool,
    },
    /// No HTTP answer at all.
    Failed,
}

/// The private service's ClusterIP as a fallback destination in mesh mode `auto`.
#[derive(Default)]
struct Fallback {
    healthy: bool,
    probing: bool,
    last_probe: Option<Instant>,
}

struct Prober {
    throttler: Arc<Throttler>,
    settings: Settings,
    extra: Vec<(HeaderName, HeaderValue)>,
    dests: HashMap<SocketAddr, Dest>,
    spec: watch::Receiver<Option<RevisionSpec>>,
    /// The private service's destination: always used in mesh mode `enabled`, a fallback in
    /// `auto`.
    cluster: Option<Arc<Pod>>,
    fallback: Fallback,
}

impl Prober {
    async fn run(
        mut self,
        mut endpoints: watch::Receiver<Endpoints>,
        mut private: watch::Receiver<Option<SocketAddr>>,
        mut recheck: mpsc::UnboundedReceiver<SocketAddr>,
    ) {
        let (done_tx, mut done) = mpsc::unbounded_channel::<(Arc<Pod>, Outcome)>();
        loop {
            let next = self.start_probes(&done_tx);
            tokio::select! {
                changed = endpoints.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let eps = endpoints.borrow_and_update().clone();
                    self.apply(eps);
                }
                Some(addr) = recheck.recv() => {
                    if self.fallback.healthy && self.cluster.as_ref().is_some_and(|c| c.addr() == addr) {
                        // The ClusterIP refused: off it until it answers the probe again.
                        self.fallback.healthy = false;
                        self.fallback.last_probe = None;
                        self.publish();
                    }
                    if let Some(d) = self.dests.get_mut(&addr)
                        && d.healthy
                    {
                        d.healthy = false;
                        d.last_probe = None;
                        self.publish();
                    }
                }
                Some((pod, outcome)) = done.recv() => self.probed(&pod, outcome),
                Ok(()) = self.spec.changed() => {}
                Ok(()) = private.changed() => {
                    let addr = *private.borrow_and_update();
                    self.cluster = addr.map(|a| match &self.cluster {
                        Some(p) if p.addr() == a => p.clone(),
                        _ => Pod::new(a, Client::new(a, self.settings.client.clone())),
                    });
                    self.publish();
                }
                // Someone started waiting: probe at the eager pace from now on.
                () = self.throttler.demand() => {}
                () = sleep_until_opt(next) => {}
            }
        }
    }

    /// Takes in one probe's outcome.
    fn probed(&mut self, pod: &Arc<Pod>, outcome: Outcome) {
        if self.cluster.as_ref().is_some_and(|c| Arc::ptr_eq(c, pod)) {
            self.fallback.probing = false;
            let healthy = outcome == Outcome::Ready;
            if healthy != self.fallback.healthy {
                self.fallback.healthy = healthy;
                if healthy {
                    tracing::info!(service = %pod.addr(), "pods unreachable directly; using the private service's ClusterIP");
                }
                self.publish();
            }
            return;
        }
        let optimise = self.spec.borrow().is_none_or(|s| s.probe_optimisation);
        // Only for the endpoint it was sent to: an address that left and came back has a new
        // entry, which an old probe's answer must not mark.
        let Some(d) = self.dests.get_mut(&pod.addr()) else {
            return;
        };
        if !Arc::ptr_eq(&d.pod, pod) {
            return;
        }
        d.probing = false;
        d.probed = true;
        d.not_mesh = matches!(outcome, Outcome::NotReady { maybe_mesh: false });
        let became_healthy = outcome == Outcome::Ready && (d.k8s_ready || optimise) && !d.healthy;
        if became_healthy {
            d.healthy = true;
        }
        // While on the fallback, any answer may end it (a pod that answers for real).
        if became_healthy || self.fallback.healthy {
            self.publish();
        }
        if matches!(outcome, Outcome::NotReady { .. }) {
            self.prewarm(pod);
        }
    }

    /// A pod that answers, so accepts connections, but cannot serve yet while requests wait
    /// for the revision: their connections are opened now rather than in the burst that
    /// follows its first `queue`.
    fn prewarm(&self, pod: &Pod) {
        if self.throttler.capacity() != Some(0) {
            return;
        }
        let spec = (*self.spec.borrow()).unwrap_or_default();
        // An h2c revision's requests arrive over HTTP/2 and share one connection.
        if spec.protocol != Protocol::Http1 {
            return;
        }
        // Each starting pod will get its share of the waiting requests, and never more than cc.
        let starting = self.dests.values().filter(|d| !d.healthy).count().max(1);
        let mut share = self.throttler.waiting().div_ceil(starting);
        if spec.container_concurrency > 0 {
            share = share.min(spec.container_concurrency);
        }
        if pod.client().open_connections() < share {
            let client = pod.client().clone();
            tokio::spawn(async move { client.prewarm_http1(share).await });
        }
    }

    /// Whether the ClusterIP fallback applies: `auto` mode, no passthrough, a private service,
    /// no pod healthy, and every pod probed with only mesh-like answers.
    fn fallback_wanted(&self) -> bool {
        self.settings.mesh == MeshMode::Auto
            && !self.settings.passthrough
            && self.cluster.is_some()
            && !self.dests.is_empty()
            && self
                .dests
                .values()
                .all(|d| !d.healthy && d.probed && !d.not_mesh)
    }

    /// Probes every endpoint that is due; returns when the next one falls due.
    fn start_probes(
        &mut self,
        done: &mpsc::UnboundedSender<(Arc<Pod>, Outcome)>,
    ) -> Option<Instant> {
        if self.settings.mesh == MeshMode::Enabled {
            return None;
        }
        let now = Instant::now();
        // Eager only while requests wait because no pod can take them (a cold start); under
        // overload with pods present, starting pods are probed at the normal pace.
        let interval = if self.throttler.waiting() > 0 && self.throttler.capacity() == Some(0) {
            self.settings.eager_probe
        } else {
            self.settings.probe_frequency
        };
        let mut next: Option<Instant> = None;
        for (addr, d) in &mut self.dests {
            if d.healthy || d.probing {
                continue;
            }
            let due = d.last_probe.map_or(now, |t| t + interval);
            if due > now {
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
            d.probing = true;
            d.last_probe = Some(now);
            let (addr, pod, timeout, extra, done) = (
                *addr,
                d.pod.clone(),
                self.settings.probe_timeout,
                self.extra.clone(),
                done.clone(),
            );
            tokio::spawn(probe_one(addr, pod, timeout, extra, done.clone()));
        }
        if self.fallback_wanted() && !self.fallback.probing && !self.fallback.healthy {
            let due = self.fallback.last_probe.map_or(now, |t| t + interval);
            if due > now {
                next = Some(next.map_or(due, |n| n.min(due)));
            } else if let Some(cluster) = self.cluster.clone() {
                self.fallback.probing = true;
                self.fallback.last_probe = Some(now);
                tokio::spawn(probe_one(
                    cluster.addr(),
                    cluster,
                    self.settings.probe_timeout,
                    self.extra.clone(),
                    done.clone(),
                ));
            }
        }
        // A probe in flight reports back through `done`; nothing else to wait for.
        next
    }

    fn apply(&mut self, eps: Endpoints) {
        let trust_ready = self.settings.mesh == MeshMode::Disabled;
        let mut seen = HashSet::new();
        let mut changed = false;
        for (addrs, ready) in [(&eps.ready, true), (&eps.not_ready, false)] {
            for &addr in addrs {
                if !seen.insert(addr) {
                    continue;
                }
                let d = self.dests.entry(addr).or_insert_with(|| Dest {
                    pod: Pod::new(addr, Client::new(addr, self.settings.client.clone())),
                    k8s_ready: ready,
                    healthy: false,
                    probing: false,
                    last_probe: None,
                    not_mesh: false,
                    probed: false,
                });
                if d.k8s_ready && !ready && d.healthy {
                    // Kubernetes took it out of rotation (e.g. terminating): check it again.
                    d.healthy = false;
                    d.last_probe = None;
                    changed = true;
                }
                d.k8s_ready = ready;
                if trust_ready && ready && !d.healthy {
                    d.healthy = true;
                    changed = true;
                }
            }
        }
        let before = self.dests.len();
        self.dests.retain(|addr, _| seen.contains(addr));
        if changed || before != self.dests.len() || self.settings.mesh == MeshMode::Enabled {
            self.publish();
        }
    }

    fn publish(&mut self) {
        let pods: Vec<Arc<Pod>> = self
            .dests
            .values()
            .filter(|d| d.healthy)
            .map(|d| d.pod.clone())
            .collect();
        // A pod that answers directly ends the fallback.
        if !pods.is_empty() || self.dests.is_empty() {
            self.fallback.healthy = false;
        }
        let through_cluster = self.settings.mesh == MeshMode::Enabled
            || (self.fallback.healthy && self.fallback_wanted());
        if through_cluster {
            let ready = self.dests.values().filter(|d| d.k8s_ready).count();
            self.throttler
                .set_cluster_ip(self.cluster.clone().map(|p| (p, ready)));
            return;
        }
        self.throttler.set_cluster_ip(None);
        self.throttler.set_pods(pods);
    }
}

/// Probes one destination and reports how it went.
async fn probe_one(
    addr: SocketAddr,
    pod: Arc<Pod>,
    timeout: Duration,
    extra: Vec<(HeaderName, HeaderValue)>,
    done: mpsc::UnboundedSender<(Arc<Pod>, Outcome)>,
) {
    let outcome = match probe::queue(addr, &extra, timeout).await {
        Ok(QueueProbe::Ready) => Outcome::Ready,
        Ok(QueueProbe::NotReady { status, maybe_mesh }) => {
            tracing::debug!(%addr, %status, "pod not ready yet");
            Outcome::NotReady { maybe_mesh }
        }
        Err(e) => {
            tracing::debug!(%addr, error = %e, "pod probe failed");
            Outcome::Failed
        }
    };
    let _ = done.send((pod, outcome));
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
pub(crate) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A registry with upstream's defaults, in mesh mode `auto`.
    pub(crate) fn registry(own_ip: Option<IpAddr>) -> Registry {
        registry_with(own_ip, MeshMode::Auto)
    }

    fn registry_with(own_ip: Option<IpAddr>, mesh: MeshMode) -> Registry {
        Registry::new(
            Settings {
                probe_frequency: Duration::from_millis(200),
                eager_probe: Duration::from_millis(2),
                probe_timeout: Duration::from_millis(300),
                max_pending: 10,
                client: ClientConfig::default(),
                mesh,
                passthrough: false,
                own_ip,
            },
            100,
        )
    }

    fn rev_id() -> RevId {
        RevId {
            namespace: "ns".into(),
            name: "rev".into(),
        }
    }

    fn upsert_cc(r: &Registry, id: &RevId, cc: usize) {
        r.upsert(
            id,
            RevisionSpec {
                container_concurrency: cc,
                ..RevisionSpec::default()
            },
        );
    }

    fn pod(i: u8) -> Arc<Pod> {
        let addr = SocketAddr::from(([10, 1, 0, i], 8012));
        Pod::new(addr, Client::new(addr, ClientConfig::default()))
    }

    #[tokio::test]
    async fn a_revision_is_found_only_once_its_spec_is_known() {
        let r = registry(None);
        let id = rev_id();
        r.set_endpoints(&id, Endpoints::default());
        assert!(r.get("ns", "rev").is_none());
        r.upsert(&id, RevisionSpec::default());
        assert!(r.get("ns", "rev").is_some());
        r.remove(&id);
        assert!(r.get("ns", "rev").is_none());
        assert!(r.all().is_empty());
    }

    #[tokio::test]
    async fn this_activators_place_selects_its_share_of_pods() {
        let r = registry(Some("10.0.0.2".parse().unwrap()));
        let id = rev_id();
        upsert_cc(&r, &id, 1);
        let rev = r.get("ns", "rev").unwrap();
        rev.throttler.set_pods(vec![pod(1), pod(2), pod(3)]);
        // Not among them: every pod stays in use.
        r.set_activators(&id, vec!["10.0.0.9".parse().unwrap()]);
        assert_eq!(rev.throttler.pods().len(), 3);
        r.set_activators(
            &id,
            ["10.0.0.3", "10.0.0.2", "10.0.0.1"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
        );
        let pods = rev.throttler.pods();
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].addr(), SocketAddr::from(([10, 1, 0, 2], 8012)));
    }

    #[tokio::test]
    async fn mesh_mode_enabled_routes_through_the_cluster_ip_sized_by_ready_pods() {
        let r = registry_with(None, MeshMode::Enabled);
        let id = rev_id();
        upsert_cc(&r, &id, 2);
        let ep = |i: u8| SocketAddr::from(([10, 1, 0, i], 8012));
        r.set_endpoints(
            &id,
            Endpoints {
                ready: vec![ep(1), ep(2)],
                not_ready: vec![ep(3)],
            },
        );
        let vip = SocketAddr::from(([10, 96, 0, 7], 80));
        r.set_private_service(&id, Some(vip));
        let rev = r.get("ns", "rev").unwrap();
        for _ in 0..100 {
            if rev.throttler.capacity() == Some(4) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(rev.throttler.capacity(), Some(4), "cc 2 × 2 ready pods");
        let pods = rev.throttler.pods();
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].addr(), vip);
    }
}
