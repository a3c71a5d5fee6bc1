//! Health checks, network probes and the user readiness probe.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tests::{App, QueueProxy, echo_app, full, get, queue_proxy_env, with_trailers};

const KUBE: (&str, &str) = ("user-agent", "kube-probe/1.30");
const QUEUE: (&str, &str) = ("k-network-probe", "queue");

#[tokio::test]
async fn proxies_a_request_to_the_app() {
    let app = echo_app().await;
    let qp = QueueProxy::start(&queue_proxy_env(app.port()));
    let res = get(&qp.url("/hello?x=1"), &[]).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "hello");
    assert_eq!(res.header("x-echo-path"), Some("/hello?x=1"));
}

#[tokio::test]
async fn health_checks_are_answered_on_any_path_by_user_agent() {
    let app = echo_app().await;
    let qp = QueueProxy::start(&queue_proxy_env(app.port()));
    for ua in [
        "kube-probe/1.30",
        "Knative-Activator-Probe",
        "Knative-Autoscaling-Probe",
    ] {
        for path in ["/", "/healthz", "/anything/else"] {
            let res = get(&qp.url(path), &[("user-agent", ua), QUEUE]).await;
            assert_eq!(
                (res.status, res.text().as_str()),
                (StatusCode::OK, "queue"),
                "{ua} {path}"
            );
            assert!(
                res.header("x-echo-path").is_none(),
                "answered by the queue-proxy, not the app"
            );
        }
    }
}

#[tokio::test]
async fn health_check_with_a_wrong_probe_header_is_a_400() {
    let app = echo_app().await;
    let qp = QueueProxy::start(&queue_proxy_env(app.port()));
    let res = get(&qp.url("/"), &[KUBE]).await;
    assert_eq!(
        (res.status, res.text().as_str()),
        (StatusCode::BAD_REQUEST, "unexpected probe header value: \n")
    );
    let res = get(&qp.url("/"), &[KUBE, ("k-network-probe", "activator")]).await;
    assert_eq!(res.status, 400);
    assert_eq!(res.text(), "unexpected probe header value: activator\n");
}

#[tokio::test]
async fn probe_header_without_a_probe_user_agent_is_proxied() {
    let app = echo_app().await;
    let qp = QueueProxy::start(&queue_proxy_env(app.port()));
    let res = get(&qp.url("/x"), &[("user-agent", "curl/8"), QUEUE]).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "hello");
    assert_eq!(res.header("x-echo-k-network-probe"), Some("queue"));
}

#[tokio::test]
async fn network_probe_echoes_its_hash() {
    let app = echo_app().await;
    let qp = QueueProxy::start(&queue_proxy_env(app.port()));
    let res = get(
        &qp.url("/"),
        &[("k-network-probe", "probe"), ("k-network-hash", "abc123")],
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("k-network-hash"), Some("abc123"));
    assert!(res.header("x-echo-path").is_none());
    let res = get(&qp.url("/"), &[("k-network-probe", "probe")]).await;
    assert_eq!(res.status, 400);
    assert_eq!(
        res.text(),
        "a probe request must contain a non-empty \"K-Network-Hash\" header\n"
    );
}

/// A port nothing listens on (yet).
async fn free_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn failing_readiness_probe_answers_503_with_an_empty_body() {
    let app = echo_app().await;
    let closed = free_addr().await;
    let mut env = queue_proxy_env(app.port());
    env.insert(
        "SERVING_READINESS_PROBE".into(),
        format!(r#"{{"tcpSocket":{{"port":{},"host":"127.0.0.1"}},"periodSeconds":1,"timeoutSeconds":1}}"#, closed.port()),
    );
    let qp = QueueProxy::start(&env);
    let res = get(&qp.url("/"), &[KUBE, QUEUE]).await;
    assert_eq!(res.status, 503);
    assert!(res.body.is_empty());
}

#[tokio::test]
async fn aggressive_probing_answers_once_the_app_listens() {
    let addr = free_addr().await;
    let mut env = queue_proxy_env(addr.port());
    env.insert(
        "SERVING_READINESS_PROBE".into(),
        format!(
            r#"{{"tcpSocket":{{"port":{},"host":"127.0.0.1"}}}}"#,
            addr.port()
        ),
    );
    let qp = QueueProxy::start(&env);
    let probing = tokio::spawn({
        let url = qp.url("/");
        async move { get(&url, &[KUBE, QUEUE]).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !probing.is_finished(),
        "the probe waits for the app instead of failing at once"
    );
    let _app = App::start_on(addr, |_req| async { Response::new(full("late")) }).await;
    let res = tokio::time::timeout(Duration::from_secs(5), probing)
        .await
        .expect("probe answered")
        .unwrap();
    assert_eq!((res.status, res.text().as_str()), (StatusCode::OK, "queue"));
}

#[tokio::test]
async fn http_readiness_probe_follows_the_app_status() {
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let app = App::start({
        let healthy = healthy.clone();
        move |req: Request<Incoming>| {
            let healthy = healthy.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                let ok = req.uri().path() == "/ready"
                    && healthy
                    && req
                        .headers()
                        .get("user-agent")
                        .is_some_and(|ua| ua == "kube-probe//")
                    && req.headers().get("x-custom").is_some_and(|v| v == "yes");
                let mut res = Response::new(full(""));
                *res.status_mut() = if ok {
                    StatusCode::OK
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                };
                res
            }
        }
    })
    .await;
    let mut env = queue_proxy_env(app.port());
    env.insert(
        "SERVING_READINESS_PROBE".into(),
        format!(
            r#"{{"httpGet":{{"path":"/ready","port":{},"host":"127.0.0.1","scheme":"HTTP","httpHeaders":[{{"name":"X-Custom","value":"yes"}}]}},"periodSeconds":1,"timeoutSeconds":1}}"#,
            app.port()
        ),
    );
    let qp = QueueProxy::start(&env);
    assert_eq!(get(&qp.url("/"), &[KUBE, QUEUE]).await.status, 503);
    healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    let res = get(&qp.url("/"), &[KUBE, QUEUE]).await;
    assert_eq!((res.status, res.text().as_str()), (StatusCode::OK, "queue"));
}

/// An h2c app answering `grpc.health.v1.Health/Check` with `status`, in a normal or a
/// trailers-only response.
async fn grpc_health_app(status: u8, trailers_only_code: Option<&'static str>) -> App {
    App::start(move |req: Request<Incoming>| async move {
        assert_eq!(req.uri().path(), "/grpc.health.v1.Health/Check");
        assert_eq!(req.version(), http::Version::HTTP_2);
        if let Some(code) = trailers_only_code {
            return Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", code)
                .body(full(""))
                .unwrap();
        }
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        Response::builder()
            .header("content-type", "application/grpc")
            .body(with_trailers(
                vec![Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status])],
                trailers,
            ))
            .unwrap()
    })
    .await
}

async fn grpc_probe_status(app: &App) -> StatusCode {
    let mut env = queue_proxy_env(app.port());
    env.insert(
        "SERVING_READINESS_PROBE".into(),
        format!(
            r#"{{"grpc":{{"port":{},"service":null}},"periodSeconds":1,"timeoutSeconds":1}}"#,
            app.port()
        ),
    );
    let qp = QueueProxy::start(&env);
    get(&qp.url("/"), &[KUBE, QUEUE]).await.status
}

#[tokio::test]
async fn grpc_readiness_probe_needs_serving() {
    assert_eq!(
        grpc_probe_status(&grpc_health_app(1, None).await).await,
        200,
        "SERVING"
    );
    assert_eq!(
        grpc_probe_status(&grpc_health_app(2, None).await).await,
        503,
        "NOT_SERVING"
    );
    assert_eq!(
        grpc_probe_status(&grpc_health_app(0, Some("12")).await).await,
        503,
        "trailers-only UNIMPLEMENTED"
    );
}

#[tokio::test]
async fn multi_container_probes_must_all_pass() {
    let app = echo_app().await;
    let closed = free_addr().await;
    let mut env = queue_proxy_env(app.port());
    env.insert("ENABLE_MULTI_CONTAINER_PROBES".into(), "true".into());
    let probes = |second: u16| {
        format!(
            r#"[{{"tcpSocket":{{"port":{}}},"periodSeconds":1,"timeoutSeconds":1}},{{"tcpSocket":{{"port":{second}}},"periodSeconds":1,"timeoutSeconds":1}}]"#,
            app.port()
        )
    };
    env.insert("SERVING_READINESS_PROBE".into(), probes(closed.port()));
    let qp = QueueProxy::start(&env);
    assert_eq!(
        get(&qp.url("/"), &[KUBE, QUEUE]).await.status,
        503,
        "one of two containers is down"
    );
    drop(qp);
    env.insert("SERVING_READINESS_PROBE".into(), probes(app.port()));
    let qp = QueueProxy::start(&env);
    assert_eq!(get(&qp.url("/"), &[KUBE, QUEUE]).await.status, 200);
}

#[tokio::test]
async fn probes_are_not_logged_one_line_each() {
    let app = echo_app().await;
    let mut env = queue_proxy_env(app.port());
    env.insert("SERVING_LOGGING_LEVEL".into(), "info".into());
    env.insert(
        "SERVING_READINESS_PROBE".into(),
        format!(r#"{{"tcpSocket":{{"port":{}}}}}"#, app.port()),
    );
    let qp = QueueProxy::start(&env);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = qp.logs().lines().count();
    for _ in 0..20 {
        assert_eq!(get(&qp.url("/"), &[KUBE, QUEUE]).await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(qp.logs().lines().count(), before, "{}", qp.logs());
}

#[tokio::test]
async fn logs_are_knative_json_lines() {
    let app = echo_app().await;
    let qp = QueueProxy::start(&queue_proxy_env(app.port()));
    let logs = qp.logs();
    let first = logs.lines().next().expect("a start-up line");
    let line: serde_json::Value = serde_json::from_str(first).expect("JSON");
    for key in ["severity", "timestamp", "logger", "message"] {
        assert!(line.get(key).is_some(), "{key} missing: {first}");
    }
    assert_eq!(line["knative.dev/key"], "default/hello-00001");
    assert_eq!(line["knative.dev/pod"], "hello-00001-deployment-abc");
    assert_eq!(line["severity"], "INFO");
}
