//! Mesh mode `auto`: when pods cannot be probed directly, the private service's ClusterIP.

use std::time::Duration;

use tests::{Activator, eventually};

use crate::cold_start::{FakePod, get_rev, served_by};

fn revision_with_service(name: &str, pod: &FakePod, service: &FakePod) -> serde_json::Value {
    serde_json::json!({
        "namespace": "default",
        "name": name,
        "containerConcurrency": 0,
        "timeoutSeconds": 30,
        "endpoints": [pod.addr.to_string()],
        "privateService": service.addr.to_string(),
    })
}

#[tokio::test]
async fn pods_answering_like_a_mesh_fall_back_to_the_private_service_until_one_answers() {
    // The pod answers its probe 503, as a mesh sidecar in front of it would.
    let pod = FakePod::unready([127, 0, 0, 71]).await;
    let service = FakePod::start([127, 0, 0, 72]).await;
    let act = Activator::start(
        serde_json::json!([revision_with_service("mesh-00001", &pod, &service)]),
        &[],
        &[],
    );
    let res = get_rev(&act, "mesh-00001").await;
    assert_eq!(res.status, 200, "{}", act.process.logs());
    assert_eq!(served_by(&res), "127.0.0.72", "through the ClusterIP");
    assert_eq!(pod.seen.requests(), 0);

    // A pod that answers for real ends the fallback.
    pod.set_ready();
    eventually(
        Duration::from_secs(5),
        "traffic back on the pod",
        || async { served_by(&get_rev(&act, "mesh-00001").await) == "127.0.0.71" },
    )
    .await;
}

#[tokio::test]
async fn without_a_private_service_requests_wait_for_a_pod() {
    let pod = FakePod::unready([127, 0, 0, 73]).await;
    let act = Activator::start(
        serde_json::json!([{
            "namespace": "default", "name": "mesh-00002", "containerConcurrency": 0,
            "timeoutSeconds": 1, "endpoints": [pod.addr.to_string()],
        }]),
        &[],
        &[],
    );
    let res = get_rev(&act, "mesh-00002").await;
    assert_eq!(res.status, 504, "no fallback without a service");
}
