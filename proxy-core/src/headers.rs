//! Knative's header vocabulary: probe classification, host rewriting and the `Forwarded` shim.

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// Marks a probe and names who should answer it (`queue`, `activator`, `probe`).
pub const K_NETWORK_PROBE: HeaderName = HeaderName::from_static("k-network-probe");
/// Hash a `K-Network-Probe: probe` must carry and gets echoed back.
pub const K_NETWORK_HASH: HeaderName = HeaderName::from_static("k-network-hash");
/// Deprecated kubelet marker: bypasses statistics and the breaker.
pub const K_KUBELET_PROBE: HeaderName = HeaderName::from_static("k-kubelet-probe");
/// Set by the activator on requests it forwards (`activator`).
pub const K_PROXY_REQUEST: HeaderName = HeaderName::from_static("k-proxy-request");
/// The original `Host`, restored before the request reaches the app.
pub const K_ORIGINAL_HOST: HeaderName = HeaderName::from_static("k-original-host");
/// Names the revision; removed before the app.
pub const KNATIVE_SERVING_REVISION: HeaderName =
    HeaderName::from_static("knative-serving-revision");
/// Names the revision's namespace; removed before the app.
pub const KNATIVE_SERVING_NAMESPACE: HeaderName =
    HeaderName::from_static("knative-serving-namespace");
/// Passthrough load-balancing request from the ingress (mesh mode).
pub const K_PASSTHROUGH_LB: HeaderName = HeaderName::from_static("k-passthrough-lb");

/// `K-Network-Probe` value of a network probe that must echo its hash.
pub const PROBE_VALUE_PROBE: &str = "probe";
/// `K-Network-Probe` value a queue-proxy health check carries.
pub const PROBE_VALUE_QUEUE: &str = "queue";
/// `K-Proxy-Request` value the activator sets.
pub const PROXY_VALUE_ACTIVATOR: &str = "activator";

/// User-Agent prefix of the kubelet.
pub const KUBE_PROBE_UA_PREFIX: &str = "kube-probe/";
/// User-Agent of the activator's probes.
pub const ACTIVATOR_UA: &str = "Knative-Activator-Probe";
/// User-Agent of the autoscaler's probes.
pub const AUTOSCALING_UA: &str = "Knative-Autoscaling-Probe";

/// Looks `name` up. A request carries a handful of headers, and comparing names is cheaper than
/// hashing them, so small maps are scanned; `HeaderMap` hashing serves the large ones.
pub fn find<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    if headers.keys_len() <= 16 {
        headers.iter().find_map(|(k, v)| (k == name).then_some(v))
    } else {
        headers.get(name)
    }
}

/// Whether `name` is present; see [`find`].
pub fn has(headers: &HeaderMap, name: &HeaderName) -> bool {
    find(headers, name).is_some()
}

/// A health check by User-Agent alone: the kubelet, the activator or the autoscaler, on any path.
pub fn is_health_check(headers: &HeaderMap) -> bool {
    find(headers, &header::USER_AGENT).is_some_and(|ua| {
        let ua = ua.as_bytes();
        ua.starts_with(KUBE_PROBE_UA_PREFIX.as_bytes())
            || ua.starts_with(ACTIVATOR_UA.as_bytes())
            || ua.starts_with(AUTOSCALING_UA.as_bytes())
    })
}

/// A kubelet probe: User-Agent `kube-probe/…` or any `K-Kubelet-Probe` header.
pub fn is_kubelet_probe(headers: &HeaderMap) -> bool {
    has(headers, &K_KUBELET_PROBE)
        || find(headers, &header::USER_AGENT)
            .is_some_and(|ua| ua.as_bytes().starts_with(KUBE_PROBE_UA_PREFIX.as_bytes()))
}

/// A request that carries `K-Network-Probe` with any value; kept out of request metrics.
pub fn is_probe(headers: &HeaderMap) -> bool {
    has(headers, &K_NETWORK_PROBE)
}

/// `K-Network-Probe: probe` exactly.
pub fn is_network_probe(headers: &HeaderMap) -> bool {
    find(headers, &K_NETWORK_PROBE).is_some_and(|v| v == PROBE_VALUE_PROBE)
}

/// Forwarded by the activator (`K-Proxy-Request: activator`).
pub fn is_proxied(headers: &HeaderMap) -> bool {
    find(headers, &K_PROXY_REQUEST).is_some_and(|v| v == PROXY_VALUE_ACTIVATOR)
}

/// The queue-proxy's inbound rewrite before the app: restores `Host` from `K-Original-Host`,
/// removes the revision headers, and synthesises `Forwarded` from `X-Forwarded-*`.
pub fn rewrite_for_app<B>(mut req: http::Request<B>) -> http::Request<B> {
    const ANY: [HeaderName; 6] = [
        K_ORIGINAL_HOST,
        KNATIVE_SERVING_REVISION,
        KNATIVE_SERVING_NAMESPACE,
        X_FORWARDED_FOR,
        HeaderName::from_static("x-forwarded-host"),
        HeaderName::from_static("x-forwarded-proto"),
    ];
    // Most requests carry none of these; one scan of the names settles it.
    if !req.headers().keys().any(|k| ANY.contains(k)) {
        return req;
    }
    // As upstream: only a non-empty value moves, and a kubelet probe keeps its headers (its
    // handler returns before the host rewrite).
    let original = req
        .headers()
        .get(K_ORIGINAL_HOST)
        .filter(|h| !h.is_empty() && !is_kubelet_probe(req.headers()))
        .cloned();
    let headers = req.headers_mut();
    if let Some(host) = original {
        headers.remove(K_ORIGINAL_HOST);
        headers.insert(header::HOST, host.clone());
        // An HTTP/2 request carries its host in the URI's authority, not in `Host`.
        if req.version() == http::Version::HTTP_2
            && let Ok(authority) = http::uri::Authority::try_from(host.as_bytes())
        {
            let mut parts = req.uri().clone().into_parts();
            parts.authority = Some(authority);
            parts.scheme.get_or_insert(http::uri::Scheme::HTTP);
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
    let headers = req.headers_mut();
    headers.remove(KNATIVE_SERVING_REVISION);
    headers.remove(KNATIVE_SERVING_NAMESPACE);
    forwarded_shim(headers);
    req
}

/// Synthesises `Forwarded` from `X-Forwarded-For`, `-Host` and `-Proto` when it is absent.
///
/// The first node carries host and proto; later nodes only `for`. A node with a `:` (IPv6) is
/// quoted and bracketed, as RFC 7239 asks.
pub fn forwarded_shim(headers: &mut HeaderMap) {
    const XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
    const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
    if headers
        .get(header::FORWARDED)
        .is_some_and(|f| !f.is_empty())
    {
        return;
    }
    // Upstream reads the first line of each header (Go's `Header.Get`) and keeps empty nodes.
    let first = |name: &HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let (xff_line, xfh, xfp) = (first(&X_FORWARDED_FOR), first(&XFH), first(&XFP));
    if xff_line.is_empty() && xfh.is_empty() && xfp.is_empty() {
        return;
    }
    let xff: Vec<&str> = if xff_line.is_empty() {
        Vec::new()
    } else {
        xff_line.split(',').map(str::trim).collect()
    };
    let mut out = String::new();
    let node = |out: &mut String, n: &str| {
        out.push_str("for=");
        if n.contains(':') {
            out.push_str("\"[");
            out.push_str(n);
            out.push_str("]\"");
        } else {
            out.push_str(n);
        }
    };
    let mut nodes = xff.iter();
    if let Some(first) = nodes.next() {
        node(&mut out, first);
    }
    for (key, value) in [("host", xfh), ("proto", xfp)] {
        if !value.is_empty() {
            if !out.is_empty() {
                out.push(';');
            }
            out.push_str(key);
            out.push('=');
            out.push_str(value);
        }
    }
    for n in nodes {
        out.push_str(", ");
        node(&mut out, n);
    }
    if let Ok(v) = HeaderValue::try_from(out) {
        headers.insert(header::FORWARDED, v);
    }
}

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Appends `peer` to `X-Forwarded-For`, joining earlier values into one header as Go does.
pub fn append_forwarded_for(headers: &mut HeaderMap, peer: &HeaderValue) {
    let mut prior = headers.get_all(X_FORWARDED_FOR).iter().peekable();
    if prior.peek().is_none() {
        headers.insert(X_FORWARDED_FOR, peer.clone());
        return;
    }
    let mut joined = Vec::with_capacity(64);
    for p in prior {
        joined.extend_from_slice(p.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(peer.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(X_FORWARDED_FOR, v);
    }
}

// `Trailer` is not here: it announces the trailer fields, and hyper writes HTTP/1.1 trailers only
// for fields the message announced (Go's ReverseProxy re-announces them too).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// `Proxy-Connection`, sent by some old clients.
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers, including those named in `Connection`. `TE: trailers` survives so
/// gRPC works end to end; the caller restores `Upgrade` itself for an upgrade it forwards.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names (no hashing) tells which of the fixed set are present; the common
    // request has none, the common response only `Connection: keep-alive`.
    let mut present = 0u16;
    for k in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present |= 1 << i;
        } else if k == PROXY_CONNECTION {
            present |= 1 << HOP_BY_HOP.len();
        }
    }
    if present == 0 {
        return;
    }
    let te_trailers = present & (1 << TE_INDEX) != 0
        && headers.get_all(header::TE).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        });
    if present & 1 != 0 {
        // Names listed in `Connection`; the usual tokens name nothing to remove beyond the fixed set.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| {
                !["keep-alive", "close", "upgrade"]
                    .iter()
                    .any(|c| t.eq_ignore_ascii_case(c))
            })
            .filter_map(|n| HeaderName::try_from(n).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, h) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(h);
        }
    }
    if present & (1 << HOP_BY_HOP.len()) != 0 {
        headers.remove(PROXY_CONNECTION);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Position of `TE` in [`HOP_BY_HOP`].
const TE_INDEX: usize = 4;

/// The protocol a request asks to switch to, if it is an HTTP/1.1 upgrade (`Connection: upgrade`).
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<&HeaderValue> {
    if !has(headers, &header::UPGRADE) {
        return None;
    }
    let asks = headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    if asks {
        headers.get(header::UPGRADE)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn forwarded_is_synthesised_like_upstream() {
        let mut h = map(&[
            ("x-forwarded-for", "127.0.0.1, ::1"),
            ("x-forwarded-host", "h"),
            ("x-forwarded-proto", "p"),
        ]);
        forwarded_shim(&mut h);
        assert_eq!(
            h[header::FORWARDED],
            r#"for=127.0.0.1;host=h;proto=p, for="[::1]""#
        );
    }

    #[test]
    fn forwarded_is_left_alone_when_present_or_without_inputs() {
        let mut h = map(&[("forwarded", "for=a"), ("x-forwarded-for", "b")]);
        forwarded_shim(&mut h);
        assert_eq!(h[header::FORWARDED], "for=a");
        let mut h = HeaderMap::new();
        forwarded_shim(&mut h);
        assert!(h.is_empty());
        let mut h = map(&[("x-forwarded-proto", "https")]);
        forwarded_shim(&mut h);
        assert_eq!(h[header::FORWARDED], "proto=https");
    }

    #[test]
    fn forwarded_reads_the_first_line_like_go() {
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
        ]);
        forwarded_shim(&mut h);
        assert_eq!(h[header::FORWARDED], "for=1.1.1.1;proto=https");
        let mut h = map(&[("forwarded", ""), ("x-forwarded-for", "a, , b")]);
        forwarded_shim(&mut h);
        assert_eq!(
            h[header::FORWARDED],
            "for=a, for=, for=b",
            "an empty Forwarded is replaced"
        );
    }

    #[test]
    fn original_host_moves_only_when_set_and_not_for_kubelet_probes() {
        let req = http::Request::builder()
            .header("k-original-host", "")
            .header("host", "h")
            .body(())
            .unwrap();
        let req = rewrite_for_app(req);
        assert_eq!(req.headers()[header::HOST], "h");
        assert!(req.headers().contains_key(K_ORIGINAL_HOST));
        let req = http::Request::builder()
            .header("k-original-host", "app.example.com")
            .header("k-kubelet-probe", "1")
            .header("host", "h")
            .body(())
            .unwrap();
        let req = rewrite_for_app(req);
        assert_eq!(req.headers()[header::HOST], "h");
        assert_eq!(req.headers()[K_ORIGINAL_HOST], "app.example.com");
    }

    #[test]
    fn probe_classification() {
        assert!(is_health_check(&map(&[("user-agent", "kube-probe/1.30")])));
        assert!(is_health_check(&map(&[(
            "user-agent",
            "Knative-Activator-Probe"
        )])));
        assert!(is_health_check(&map(&[(
            "user-agent",
            "Knative-Autoscaling-Probe/x"
        )])));
        assert!(!is_health_check(&map(&[
            ("user-agent", "curl/8"),
            ("k-network-probe", "queue")
        ])));
        assert!(is_kubelet_probe(&map(&[("k-kubelet-probe", "x")])));
        assert!(!is_kubelet_probe(&map(&[(
            "user-agent",
            "Knative-Activator-Probe"
        )])));
        assert!(is_network_probe(&map(&[("k-network-probe", "probe")])));
        assert!(!is_network_probe(&map(&[("k-network-probe", "queue")])));
        assert!(is_proxied(&map(&[("k-proxy-request", "activator")])));
    }

    #[test]
    fn hop_by_hop_headers_go_and_te_trailers_stays() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers, deflate"),
            ("trailer", "grpc-status"),
            ("upgrade", "h2c"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 3, "{h:?}");
        assert_eq!(
            h[header::TRAILER],
            "grpc-status",
            "announced trailers stay announced"
        );
        assert_eq!(h[header::TE], "trailers");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn xff_gets_the_peer_appended() {
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
        ]);
        append_forwarded_for(&mut h, &HeaderValue::from_static("127.0.0.1"));
        assert_eq!(h[X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 127.0.0.1");
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, &HeaderValue::from_static("::1"));
        assert_eq!(h[X_FORWARDED_FOR], "::1");
    }

    #[test]
    fn rewrite_restores_host_and_drops_revision_headers() {
        let req = http::Request::builder()
            .header("k-original-host", "app.example.com")
            .header("host", "10.0.0.1:8012")
            .header("knative-serving-revision", "r")
            .header("knative-serving-namespace", "n")
            .body(())
            .unwrap();
        let req = rewrite_for_app(req);
        assert_eq!(req.headers()[header::HOST], "app.example.com");
        assert_eq!(req.headers().len(), 1);
    }
}
