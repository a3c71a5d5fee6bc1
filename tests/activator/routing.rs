//! Which revision a request is for (revision headers, else `Host`), what the pod receives, and
//! the probes the activator answers itself.

use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tests::{Activator, Collected, full, get, revision, within};

use crate::cold_start::{FakePod, all_probed_ready, served_by};

/// Two revisions, `one` and `two`, each with its own pod, behind one activator.
struct Two {
    one: FakePod,
    two: FakePod,
    act: Activator,
}

async fn two_revisions(third: u8, args: &[&str]) -> Two {
    let one = FakePod::start([127, 0, 1, third]).await;
    let two = FakePod::start([127, 0, 1, third + 1]).await;
    let act = Activator::start(
        json!([
            revision("one", 0, &[one.addr]),
            revision("two", 0, &[two.addr])
        ]),
        args,
        &[],
    );
    all_probed_ready(&[&one, &two]).await;
    Two { one, two, act }
}

fn ip(t: &FakePod) -> String {
    t.addr.ip().to_string()
}

// === identification ===

#[tokio::test]
async fn the_revision_headers_identify_the_revision() {
    let t = two_revisions(2, &[]).await;
    for (name, pod) in [("one", &t.one), ("two", &t.two)] {
        let res = get(
            &t.act.url("/"),
            &[
                ("host", "hello.example.com"),
                ("knative-serving-namespace", "default"),
                ("knative-serving-revision", name),
            ],
        )
        .await;
        t.act.assert_ok(&res);
        assert_eq!(served_by(&res), ip(pod), "request for {name}");
    }
}

#[tokio::test]
async fn the_host_identifies_the_revision_with_or_without_a_port() {
    let t = two_revisions(4, &["--cluster-domain", "cluster.local"]).await;
    for (host, pod) in [
        ("one.default.svc.cluster.local", &t.one),
        ("two.default.svc.cluster.local", &t.two),
        ("one.default.svc.cluster.local:80", &t.one),
        ("two.default.svc.cluster.local:8012", &t.two),
    ] {
        let res = get(&t.act.url("/"), &[("host", host)]).await;
        t.act.assert_ok(&res);
        assert_eq!(served_by(&res), ip(pod), "request for {host}");
    }
}

#[tokio::test]
async fn the_revision_headers_win_over_the_host() {
    let t = two_revisions(6, &["--cluster-domain", "cluster.local"]).await;
    let res = get(
        &t.act.url("/"),
        &[
            ("host", "two.default.svc.cluster.local"),
            ("knative-serving-namespace", "default"),
            ("knative-serving-revision", "one"),
        ],
    )
    .await;
    t.act.assert_ok(&res);
    assert_eq!(served_by(&res), ip(&t.one));
}

#[tokio::test]
async fn the_host_must_be_in_the_cluster_domain() {
    let t = two_revisions(8, &["--cluster-domain", "example.org"]).await;
    let res = get(&t.act.url("/"), &[("host", "one.default.svc.example.org")]).await;
    t.act.assert_ok(&res);
    assert_eq!(served_by(&res), ip(&t.one));

    let res = get(
        &t.act.url("/"),
        &[("host", "one.default.svc.cluster.local")],
    )
    .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND, "{}", res.text());
    assert_eq!(t.one.seen.requests(), 1);
}

#[tokio::test]
async fn an_h2c_authority_identifies_the_revision() {
    let t = two_revisions(10, &["--cluster-domain", "cluster.local"]).await;
    let port = t.act.process.port("ACTIVATOR_H2C_PORT");
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://two.default.svc.cluster.local:8013/path")
        .body(full(""))
        .unwrap();
    let res = within(
        "the h2c response",
        Duration::from_secs(5),
        tx.send_request(req),
    )
    .await
    .unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let res = Collected {
        status: parts.status,
        headers: parts.headers,
        body,
    };
    t.act.assert_ok(&res);
    assert_eq!(served_by(&res), ip(&t.two));
    assert_eq!(
        res.header("x-echo-k-original-host"),
        Some("two.default.svc.cluster.local:8013")
    );
}

#[tokio::test]
async fn an_unknown_revision_is_404() {
    let t = two_revisions(12, &["--cluster-domain", "cluster.local"]).await;
    let by_headers = get(
        &t.act.url("/"),
        &[
            ("knative-serving-namespace", "default"),
            ("knative-serving-revision", "nope"),
        ],
    )
    .await;
    let by_host = get(
        &t.act.url("/"),
        &[("host", "nope.default.svc.cluster.local")],
    )
    .await;
    // A known name in another namespace is another revision.
    let other_ns = get(
        &t.act.url("/"),
        &[
            ("knative-serving-namespace", "elsewhere"),
            ("knative-serving-revision", "one"),
        ],
    )
    .await;
    for (res, name) in [
        (&by_headers, "nope"),
        (&by_host, "nope"),
        (&other_ns, "one"),
    ] {
        assert_eq!(res.status, StatusCode::NOT_FOUND, "{}", res.text());
        assert_eq!(
            res.text(),
            format!(
                "Error getting active endpoint: revision.serving.knative.dev \"{name}\" not found\n"
            )
        );
    }
    assert_eq!(t.one.seen.requests() + t.two.seen.requests(), 0);
}

// === what the pod receives ===

#[tokio::test]
async fn the_pod_sees_the_original_host_the_proxy_marker_and_the_client_ip() {
    let t = two_revisions(14, &["--cluster-domain", "cluster.local"]).await;

    // Identified by headers, with a forwarding chain already.
    let res = get(
        &t.act.url("/"),
        &[
            ("host", "hello.example.com"),
            ("knative-serving-namespace", "default"),
            ("knative-serving-revision", "one"),
            ("x-forwarded-for", "10.1.2.3"),
        ],
    )
    .await;
    t.act.assert_ok(&res);
    assert_eq!(
        res.header("x-echo-k-original-host"),
        Some("hello.example.com")
    );
    assert_eq!(res.header("x-echo-k-proxy-request"), Some("activator"));
    assert_eq!(res.header("x-echo-knative-serving-namespace"), None);
    assert_eq!(res.header("x-echo-knative-serving-revision"), None);
    assert_eq!(
        res.header("x-echo-x-forwarded-for"),
        Some("10.1.2.3, 127.0.0.1")
    );
    // As Go's proxy with the request's Host cleared: the pod's address.
    assert_eq!(
        res.header("x-echo-host"),
        Some(t.one.addr.to_string().as_str())
    );

    // Identified by Host, port included.
    let res = get(
        &t.act.url("/"),
        &[("host", "two.default.svc.cluster.local:8012")],
    )
    .await;
    t.act.assert_ok(&res);
    assert_eq!(served_by(&res), ip(&t.two));
    assert_eq!(
        res.header("x-echo-k-original-host"),
        Some("two.default.svc.cluster.local:8012")
    );
    assert_eq!(res.header("x-echo-k-proxy-request"), Some("activator"));
    assert_eq!(res.header("x-echo-x-forwarded-for"), Some("127.0.0.1"));

    // A K-Original-Host set by an earlier hop is kept.
    let res = get(
        &t.act.url("/"),
        &[
            ("host", "two.default.svc.cluster.local"),
            ("k-original-host", "first.example.com"),
        ],
    )
    .await;
    t.act.assert_ok(&res);
    assert_eq!(
        res.header("x-echo-k-original-host"),
        Some("first.example.com")
    );
}

// === probes ===

#[tokio::test]
async fn kubelet_probes_are_answered_200_by_the_activator_itself() {
    let t = two_revisions(16, &[]).await;
    for probe in [("user-agent", "kube-probe/1.30"), ("k-kubelet-probe", "1")] {
        let res = get(
            &t.act.url("/"),
            &[
                probe,
                ("knative-serving-namespace", "default"),
                ("knative-serving-revision", "one"),
            ],
        )
        .await;
        assert_eq!(res.status, StatusCode::OK, "{probe:?}: {}", res.text());
        assert_eq!(res.text(), "", "{probe:?}");
    }
    assert_eq!(t.one.seen.requests(), 0);
}

#[tokio::test]
async fn kubelet_probes_fail_while_the_required_autoscaler_is_unreachable() {
    let t = two_revisions(18, &["--require-autoscaler"]).await;
    for probe in [("user-agent", "kube-probe/1.30"), ("k-kubelet-probe", "1")] {
        let res = get(&t.act.url("/"), &[probe]).await;
        assert_eq!(
            res.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{probe:?}: {}",
            res.text()
        );
        assert_eq!(
            res.text(),
            "connection has not yet been established\n",
            "{probe:?}"
        );
    }
    // Traffic flows regardless.
    let res = get(
        &t.act.url("/"),
        &[
            ("knative-serving-namespace", "default"),
            ("knative-serving-revision", "one"),
        ],
    )
    .await;
    t.act.assert_ok(&res);
}

#[tokio::test]
async fn network_probes_are_answered_by_the_activator_itself() {
    let t = two_revisions(20, &[]).await;
    let probe = |extra: Vec<(&'static str, &'static str)>| {
        let url = t.act.url("/");
        async move {
            let mut headers = vec![
                ("knative-serving-namespace", "default"),
                ("knative-serving-revision", "one"),
            ];
            headers.extend(extra);
            get(&url, &headers).await
        }
    };

    let res = probe(vec![("k-network-probe", "probe")]).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "{}", res.text());
    let res = probe(vec![("k-network-probe", "probe"), ("k-network-hash", "")]).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "{}", res.text());

    let res = probe(vec![
        ("k-network-probe", "probe"),
        ("k-network-hash", "abc123"),
    ])
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.header("k-network-hash"), Some("abc123"));
    assert_eq!(res.text(), "");

    let res = probe(vec![("k-network-probe", "activator")]).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    assert_eq!(res.text(), "activator");

    for other in ["queue", "bogus"] {
        let res = probe(vec![("k-network-probe", other)]).await;
        assert_eq!(
            res.status,
            StatusCode::BAD_REQUEST,
            "{other}: {}",
            res.text()
        );
    }
    assert_eq!(t.one.seen.requests(), 0);
}
