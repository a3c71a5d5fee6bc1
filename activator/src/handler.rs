//! The activator's request path: probes, revision lookup, statistics, timeouts, then a wait
//! for a pod and the forward to it.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures_util::future::Either;
use http::{HeaderValue, Request, Response, StatusCode, Version, header, uri};
use hyper::body::Incoming;
use proxy_core::{
    BoxError,
    body::{Body, FromBytes, Guarded},
    client::Protocol,
    edge,
    headers::{self, find},
    proxy::{self, Prepared},
    stats::{self, InFlight},
    throttler::Lease,
    timeout::{TimeoutBody, TimeoutLayer},
};
use tokio::{sync::mpsc, time::Instant};
use tower::{Layer, Service};

use crate::revisions::{Registry, Revision};

/// The body of every response the activator sends.
pub(crate) type ResBody = Guarded<TimeoutBody<Guarded<Body, Lease>>, InFlight>;

/// Readiness as the kubelet sees it.
#[derive(Debug)]
pub(crate) struct Health {
    draining: AtomicBool,
    autoscaler: AtomicBool,
    require_autoscaler: bool,
}

impl Health {
    pub(crate) fn new(require_autoscaler: bool) -> Arc<Self> {
        Arc::new(Self {
            draining: AtomicBool::new(false),
            autoscaler: AtomicBool::new(false),
            require_autoscaler,
        })
    }

    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub(crate) fn set_autoscaler(&self, connected: bool) {
        self.autoscaler.store(connected, Ordering::Relaxed);
    }

    pub(crate) fn autoscaler_connected(&self) -> bool {
        self.autoscaler.load(Ordering::Relaxed)
    }

    /// Why the activator is not ready, as upstream words it.
    fn problem(&self) -> Option<&'static str> {
        if self.draining.load(Ordering::Relaxed) {
            Some("received SIGTERM from kubelet")
        } else if self.require_autoscaler && !self.autoscaler_connected() {
            Some("connection has not yet been established")
        } else {
            None
        }
    }
}

/// Everything the request path shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) registry: Registry,
    pub(crate) health: Arc<Health>,
    pub(crate) cluster_domain: String,
    /// Local mode: a Host `NAME.localhost` names service NAME.
    pub(crate) local: bool,
    /// First requests of idle revisions, for the autoscaler's immediate poke.
    pub(crate) pokes: mpsc::Sender<Arc<Revision>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

/// The activator as a service, for one client connection.
#[derive(Clone, Debug)]
pub(crate) struct Activator {
    shared: Arc<Shared>,
    peer: Option<HeaderValue>,
    passthrough: bool,
}

impl Activator {
    pub(crate) fn new(shared: Arc<Shared>, peer: Option<SocketAddr>) -> Self {
        let passthrough = shared.registry.settings().passthrough;
        Self {
            shared,
            peer: peer.map(|p| proxy::peer_value(p.ip())),
            passthrough,
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// The future of [`Activator`]: an answer of its own, or the forwarded request.
type ActivatorFuture = Either<
    std::future::Ready<Result<Response<ResBody>, BoxError>>,
    stats::ResponseFuture<
        proxy_core::timeout::ResponseFuture<BoxFuture<Response<Guarded<Body, Lease>>>>,
    >,
>;

fn answer(status: StatusCode, body: impl Into<Bytes>) -> ActivatorFuture {
    Either::Left(std::future::ready(Ok(edge::text(status, body))))
}

impl Service<Request<Incoming>> for Activator {
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ActivatorFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        let h = req.headers();
        if headers::is_kubelet_probe(h) {
            return match self.shared.health.problem() {
                // Go writes only the status: no body, no Content-Type.
                None => Either::Left(std::future::ready(Ok(Response::new(ResBody::from_bytes(
                    Bytes::new(),
                ))))),
                Some(why) => answer(StatusCode::INTERNAL_SERVER_ERROR, format!("{why}\n")),
            };
        }
        if let Some(probe) = find(h, &headers::K_NETWORK_PROBE) {
            if probe == headers::PROBE_VALUE_PROBE {
                let Some(hash) = find(h, &headers::K_NETWORK_HASH)
                    .filter(|v| !v.is_empty())
                    .cloned()
                else {
                    return answer(
                        StatusCode::BAD_REQUEST,
                        "a probe request must contain a non-empty \"K-Network-Hash\" header\n",
                    );
                };
                let mut res = edge::text::<ResBody>(StatusCode::OK, Bytes::new());
                res.headers_mut().remove(header::CONTENT_TYPE);
                res.headers_mut().remove(header::X_CONTENT_TYPE_OPTIONS);
                res.headers_mut().insert(headers::K_NETWORK_HASH, hash);
                return Either::Left(std::future::ready(Ok(res)));
            }
            if !probe.is_empty() {
                if probe == headers::PROXY_VALUE_ACTIVATOR {
                    // Go writes the bare body and sniffs its type; no `nosniff` here.
                    let mut res = Response::new(ResBody::from_bytes(Bytes::from_static(
                        headers::PROXY_VALUE_ACTIVATOR.as_bytes(),
                    )));
                    res.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; charset=utf-8"),
                    );
                    return Either::Left(std::future::ready(Ok(res)));
                }
                return answer(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "unexpected probe header value: {:?}\n",
                        String::from_utf8_lossy(probe.as_bytes())
                    ),
                );
            }
        }
        if headers::has(req.headers(), &headers::K_NETWORK_HASH) {
            req.headers_mut().remove(headers::K_NETWORK_HASH);
        }

        let rev = match identify(&req, &self.shared.cluster_domain, self.shared.local) {
            Some((namespace, name)) => self.shared.registry.get(namespace, name).ok_or(name),
            None => Err(""),
        };
        let rev = match rev {
            Ok(rev) => rev,
            Err(name) => {
                return answer(
                    StatusCode::NOT_FOUND,
                    format!(
                        "Error getting active endpoint: revision.serving.knative.dev {name:?} not found\n"
                    ),
                );
            }
        };
        let spec = rev.spec().unwrap_or_default();

        // Waiting counts as concurrency for the autoscaler, as upstream counts from here.
        // Counted before the flag is read, so that a reporter which turns the flag off sees this
        // request in flight and turns it back on (see `autoscaler::report`).
        let now = Instant::now();
        let in_flight = rev.stats.arrive(false, now);
        if !rev.reporting.swap(true, Ordering::SeqCst) {
            // Idle until now: the window starts with the requests in flight, as upstream's
            // fresh entry does.
            rev.stats.restart(now);
            // A full channel only means pokes are already on their way.
            let _ = self.shared.pokes.try_send(rev.clone());
        }
        // The revision's timeouts around its own forwarder: built per request, which costs a
        // copy, where request extensions would cost allocations.
        let activate = Activate {
            rev,
            peer: self.peer.clone(),
            passthrough: self.passthrough,
        };
        let inner = TimeoutLayer::new(spec.timeouts).layer(activate).call(req);
        Either::Right(stats::ResponseFuture::new(inner, Some(in_flight)))
    }
}

/// The revision a request is for: the revision headers, else a Host of the form
/// `name.namespace.svc.<cluster domain>`.
fn identify<'a, B>(
    req: &'a Request<B>,
    cluster_domain: &str,
    local: bool,
) -> Option<(&'a str, &'a str)> {
    let h = req.headers();
    let ns = find(h, &headers::KNATIVE_SERVING_NAMESPACE).and_then(|v| v.to_str().ok());
    let name = find(h, &headers::KNATIVE_SERVING_REVISION).and_then(|v| v.to_str().ok());
    if let (Some(ns), Some(name)) = (ns, name)
        && !ns.is_empty()
        && !name.is_empty()
    {
        return Some((ns, name));
    }
    let host = find(h, &header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(uri::Authority::as_str))?;
    if local {
        let bare = host.rsplit_once(':').map_or(host, |(h, _)| h);
        if let Some(name) = bare.strip_suffix(".localhost")
            && !name.is_empty()
            && !name.contains('.')
        {
            return Some((crate::local::NAMESPACE, name));
        }
    }
    let mut parts = host.splitn(4, '.');
    let (name, ns, svc, domain) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let domain = match domain.rsplit_once(':') {
        Some((d, port)) if port.bytes().all(|b| b.is_ascii_digit()) => d,
        _ => domain,
    };
    (svc == "svc" && domain == cluster_domain).then_some((ns, name))
}

/// Waits for a pod of `rev` and forwards to it.
#[derive(Clone, Debug)]
pub(crate) struct Activate {
    rev: Arc<Revision>,
    peer: Option<HeaderValue>,
    passthrough: bool,
}

impl Service<Request<Incoming>> for Activate {
    type Response = Response<Guarded<Body, Lease>>;
    type Error = BoxError;
    type Future = BoxFuture<Response<Guarded<Body, Lease>>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        let rev = self.rev.clone();
        rewrite_for_pod(&mut req, self.passthrough.then_some(&rev.private_host));
        let peer = self.peer.clone();
        let passthrough = self.passthrough;
        Box::pin(async move {
            let mut req = Some(req);
            let mut prepared: Option<Prepared> = None;
            let mut retry_pause = Duration::from_millis(10);
            loop {
                let lease = rev.throttler.acquire().await?;
                let pod = lease.pod().clone();
                let authority = pod.authority();
                let mut p = match prepared.take() {
                    Some(p) => p,
                    None => proxy::prepare(
                        req.take().expect("the request is prepared once"),
                        peer.as_ref(),
                        authority.to_str().unwrap_or_default(),
                    ),
                };
                aim(&mut p, authority, passthrough.then_some(&rev.private_host));
                let unsent = match pod.client().checkout(p.protocol).await {
                    // Boxed: the exchange's state is large, and a waiting request (all of them,
                    // in a cold start) should not carry it.
                    Ok(conn) => {
                        match Box::pin(proxy::try_forward_on(conn, pod.client(), p)).await {
                            Ok(res) => return Ok(res.map(|b| Guarded::new(b, lease))),
                            Err((e, Some(p))) => (e, p),
                            Err((e, None)) => return Err(e.into()),
                        }
                    }
                    Err(e) if e.before_send => (e, p),
                    Err(e) => return Err(e.into()),
                };
                // Nothing of it reached the pod, or it is safe to send again: another pod can
                // take it, and this one is checked again before it gets more.
                let (e, p) = unsent;
                tracing::warn!(pod = %pod.addr(), error = %e, revision = %rev.id, "pod unreachable, trying another");
                rev.recheck(pod.addr());
                if !rev.throttler.eject(pod.addr()) {
                    // Not a pod that can be set aside (the private service's ClusterIP): the
                    // same destination comes back at once, so wait before trying it again.
                    drop(lease);
                    tokio::time::sleep(retry_pause).await;
                    retry_pause = (retry_pause * 2).min(Duration::from_millis(500));
                }
                prepared = Some(p);
            }
        })
    }
}

/// Upstream's rewrite before the proxy: `Host` moves to `K-Original-Host` (unless that is set),
/// `K-Proxy-Request: activator` is added, the revision headers go.
fn rewrite_for_pod<B>(req: &mut Request<B>, private_host: Option<&HeaderValue>) {
    let host = find(req.headers(), &header::HOST).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let h = req.headers_mut();
    // Go's `Header.Get(...) == ""`: an empty one is replaced too.
    if find(h, &headers::K_ORIGINAL_HOST).is_none_or(HeaderValue::is_empty)
        && let Some(host) = host.filter(|v| !v.is_empty())
    {
        h.insert(headers::K_ORIGINAL_HOST, host);
    }
    // `Host` itself is overwritten with the pod's address (or the private service's name) once
    // a pod is chosen; removing it here would only cost a second rehash.
    h.insert(
        headers::K_PROXY_REQUEST,
        HeaderValue::from_static(headers::PROXY_VALUE_ACTIVATOR),
    );
    // A scan is cheaper than hashing for names that are usually absent.
    if headers::has(h, &headers::KNATIVE_SERVING_REVISION) {
        h.remove(headers::KNATIVE_SERVING_REVISION);
    }
    if headers::has(h, &headers::KNATIVE_SERVING_NAMESPACE) {
        h.remove(headers::KNATIVE_SERVING_NAMESPACE);
    }
    if private_host.is_some() {
        h.insert(headers::K_PASSTHROUGH_LB, HeaderValue::from_static("true"));
    }
    // The authority now names the pod; the client's went into K-Original-Host.
    if req.version() == Version::HTTP_2 || req.uri().authority().is_some() {
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| uri::PathAndQuery::from_static("/"));
        *req.uri_mut() = uri::Uri::from(pq);
    }
}

/// Points a prepared request at the pod `addr`: Go's proxy sends the destination as `Host`
/// when the request's own was cleared; with passthrough load balancing the private service's
/// name goes there instead, for the mesh to route on.
fn aim(p: &mut Prepared, addr: &HeaderValue, private_host: Option<&HeaderValue>) {
    let authority = private_host.unwrap_or(addr).clone();
    match p.protocol {
        Protocol::Http1 => {
            p.request.headers_mut().insert(header::HOST, authority);
        }
        Protocol::H2c => {
            let mut parts = std::mem::take(p.request.uri_mut()).into_parts();
            parts.scheme = Some(uri::Scheme::HTTP);
            parts.authority = uri::Authority::try_from(authority.as_bytes()).ok();
            if parts.path_and_query.is_none() {
                parts.path_and_query = Some(uri::PathAndQuery::from_static("/"));
            }
            *p.request.uri_mut() = uri::Uri::from_parts(parts).unwrap_or_default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: &str, ns: Option<&str>, rev: Option<&str>) -> Request<()> {
        let mut b = Request::get("/").header(header::HOST, host);
        if let Some(ns) = ns {
            b = b.header("knative-serving-namespace", ns);
        }
        if let Some(rev) = rev {
            b = b.header("knative-serving-revision", rev);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn revisions_are_identified_by_headers_then_host() {
        let d = "cluster.local";
        assert_eq!(
            identify(&req("x", Some("ns"), Some("r")), d, false),
            Some(("ns", "r"))
        );
        assert_eq!(
            identify(
                &req("r-1.ns.svc.cluster.local:80", Some(""), Some("r")),
                d,
                false
            ),
            Some(("ns", "r-1"))
        );
        assert_eq!(
            identify(&req("r-1.ns.svc.other.org", None, None), d, false),
            None
        );
        assert_eq!(
            identify(&req("r-1.ns.example.com", None, None), d, false),
            None
        );
        assert_eq!(identify(&req("r-1.ns", None, None), d, false), None);
        assert_eq!(
            identify(&req("hello.localhost:8012", None, None), d, true),
            Some(("default", "hello"))
        );
        assert_eq!(
            identify(&req("hello.localhost", None, None), d, false),
            None
        );
    }

    #[test]
    fn host_moves_to_original_host_and_revision_headers_go() {
        let mut r = req("hello.example.com", Some("ns"), Some("r"));
        rewrite_for_pod(&mut r, None);
        let h = r.headers();
        assert_eq!(h["k-original-host"], "hello.example.com");
        assert_eq!(h["k-proxy-request"], "activator");
        assert!(h.get("knative-serving-revision").is_none());
        assert!(h.get("k-passthrough-lb").is_none());

        let mut r = req("new", None, None);
        r.headers_mut()
            .insert("k-original-host", HeaderValue::from_static("kept"));
        rewrite_for_pod(&mut r, Some(&HeaderValue::from_static("r-private.ns")));
        assert_eq!(r.headers()["k-original-host"], "kept");
        assert_eq!(r.headers()["k-passthrough-lb"], "true");
    }
}
