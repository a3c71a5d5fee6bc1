//! The autoscaler's protobuf stat on the metrics port.

use std::{sync::Arc, time::Duration};

use http::{Request, Response};
use hyper::body::Incoming;
use prost::Message;
use proxy_core::stat::Stat;
use tests::{App, QueueProxy, full, get, queue_proxy_env};
use tokio::sync::Semaphore;

async fn scrape(qp: &QueueProxy) -> Stat {
    let res = get(
        &format!("http://127.0.0.1:{}/metrics", qp.port("QUEUE_METRICS_PORT")),
        &[("accept", "text/plain")],
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(
        res.header("content-type"),
        Some("application/protobuf"),
        "exactly, whatever Accept says"
    );
    Stat::decode(&res.body[..]).expect("a protobuf Stat")
}

#[tokio::test]
async fn stat_reports_time_weighted_concurrency_with_the_proxied_split() {
    let gate = Arc::new(Semaphore::new(0));
    let app = App::start({
        let gate = gate.clone();
        move |_req: Request<Incoming>| {
            let gate = gate.clone();
            async move {
                gate.acquire().await.unwrap().forget();
                Response::new(full("ok"))
            }
        }
    })
    .await;
    let qp = QueueProxy::start(&queue_proxy_env(app.port()));
    let first = scrape(&qp).await;
    assert_eq!(first.pod_name, "hello-00001-deployment-abc");

    let url = qp.url("/");
    let mut held = Vec::new();
    for proxied in [false, false, true] {
        let url = url.clone();
        held.push(tokio::spawn(async move {
            let headers: &[(&str, &str)] = if proxied {
                &[("k-proxy-request", "activator")]
            } else {
                &[]
            };
            get(&url, headers).await
        }));
    }
    // Two full windows with the three requests open.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let stat = scrape(&qp).await;
    assert!(
        (stat.average_concurrent_requests - 3.0).abs() < 0.01,
        "{stat:?}"
    );
    assert!(
        (stat.average_proxied_concurrent_requests - 1.0).abs() < 0.01,
        "{stat:?}"
    );
    assert_eq!(
        stat.request_count, 0.0,
        "arrivals were two windows ago: {stat:?}"
    );
    assert!(stat.process_uptime > 1.0, "{stat:?}");
    assert_eq!(stat.timestamp, 0);

    gate.add_permits(3);
    for h in held {
        assert_eq!(h.await.unwrap().status, 200);
    }
    // A fresh burst is counted as arrivals in the window that sees it.
    gate.add_permits(5);
    for _ in 0..4 {
        get(&url, &[]).await;
    }
    get(&url, &[("k-proxy-request", "activator")]).await;
    let mut counted = None;
    for _ in 0..30 {
        let s = scrape(&qp).await;
        if s.request_count > 0.0 {
            counted = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = counted.expect("the burst shows up within a few windows");
    assert_eq!(
        (s.request_count, s.proxied_request_count),
        (5.0, 1.0),
        "{s:?}"
    );
}

#[tokio::test]
async fn probes_do_not_count_and_other_paths_are_404() {
    let app = tests::echo_app().await;
    let qp = QueueProxy::start(&queue_proxy_env(app.port()));
    for _ in 0..5 {
        get(
            &qp.url("/"),
            &[
                ("user-agent", "kube-probe/1.30"),
                ("k-network-probe", "queue"),
            ],
        )
        .await;
        get(
            &qp.url("/"),
            &[("user-agent", "kube-probe/1.30"), ("k-kubelet-probe", "1")],
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let s = scrape(&qp).await;
    assert_eq!(s.request_count, 0.0, "{s:?}");
    let res = get(
        &format!("http://127.0.0.1:{}/other", qp.port("QUEUE_METRICS_PORT")),
        &[],
    )
    .await;
    assert_eq!(res.status, 404);
}

#[tokio::test]
async fn prometheus_request_metrics_use_upstream_names() {
    let app = tests::echo_app().await;
    let mut env = queue_proxy_env(app.port());
    env.insert(
        "OBSERVABILITY_CONFIG".into(),
        r#"{"requestMetrics":{"protocol":"prometheus"}}"#.into(),
    );
    env.insert("METRICS_PROMETHEUS_PORT".into(), "0".into());
    env.insert("CONTAINER_CONCURRENCY".into(), "5".into());
    let qp = QueueProxy::start(&env);
    for _ in 0..3 {
        assert_eq!(get(&qp.url("/"), &[]).await.status, 200);
    }
    // A probe is not a request to count.
    get(
        &qp.url("/"),
        &[
            ("user-agent", "kube-probe/1.30"),
            ("k-network-probe", "queue"),
        ],
    )
    .await;
    let url = format!(
        "http://127.0.0.1:{}/metrics",
        qp.port("METRICS_PROMETHEUS_PORT")
    );
    let res = get(&url, &[]).await;
    assert_eq!(res.status, 200);
    let text = res.text();
    assert!(
        text.contains(
            r#"kn_serving_invocation_duration_seconds_count{http_response_status_code="200"} 3"#
        ),
        "{text}"
    );
    assert!(
        text.contains("kn_serving_invocation_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("kn_serving_queue_depth"), "{text}");
    assert!(
        text.contains("http_server_request_duration_seconds_count{"),
        "{text}"
    );
}

#[tokio::test]
async fn no_prometheus_port_by_default() {
    let app = tests::echo_app().await;
    let qp = QueueProxy::start(&queue_proxy_env(app.port()));
    assert!(!qp.has_port("METRICS_PROMETHEUS_PORT"), "{}", qp.logs());
}
