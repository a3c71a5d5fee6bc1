//! The shortest path: one revision, one fake pod, one request.

use tests::{Activator, App, get, revision};

/// A fake queue-proxy: answers the activator's probe with `queue`, echoes the rest.
async fn fake_pod(ip: [u8; 4]) -> App {
    App::start_on(std::net::SocketAddr::from((ip, 0)), |req| async move {
        if req
            .headers()
            .get("k-network-probe")
            .is_some_and(|v| v == "queue")
        {
            return http::Response::new(tests::full("queue"));
        }
        let host = req
            .headers()
            .get("k-original-host")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        http::Response::new(tests::full(format!("pod saw {host}")))
    })
    .await
}

#[tokio::test]
async fn a_request_reaches_the_pod_with_its_host_moved() {
    let pod = fake_pod([127, 0, 0, 2]).await;
    let act = Activator::start(
        serde_json::json!([revision("hello-00001", 0, &[pod.addr])]),
        &[],
        &[],
    );
    let res = get(
        &act.url("/"),
        &[("host", "hello-00001.default.svc.cluster.local")],
    )
    .await;
    assert_eq!(res.status, 200, "{}", act.process.logs());
    assert_eq!(res.text(), "pod saw hello-00001.default.svc.cluster.local");
}
