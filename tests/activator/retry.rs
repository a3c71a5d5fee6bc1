//! A request whose connection to a pod failed before anything was sent is tried on another
//! healthy pod: a pod that died after passing its probe costs no request.

use bytes::Bytes;
use http::StatusCode;
use http_body::Frame;
use serde_json::json;
use tests::{Activator, Collected, channel_body, eventually, full, revision};

use crate::cold_start::{FakePod, all_probed_ready, get_rev, post_rev, served_by};

fn served_ok(res: &Collected, act: &Activator, live: &FakePod) {
    act.assert_ok(res);
    assert_eq!(served_by(res), live.addr.ip().to_string());
}

/// 20 GETs and 5 POSTs in turn, every one answered by `live`, bodies intact.
async fn all_reach(act: &Activator, name: &str, live: &FakePod) {
    for _ in 0..20 {
        served_ok(&get_rev(act, name).await, act, live);
    }
    for i in 0..5 {
        let body = format!("payload {i}");
        let res = post_rev(act, name, full(body.clone())).await;
        served_ok(&res, act, live);
        assert_eq!(res.text(), body);
    }
}

#[tokio::test]
async fn a_pod_that_died_after_its_probe_costs_no_request() {
    let dead = FakePod::start([127, 0, 4, 2]).await;
    let live = FakePod::start([127, 0, 4, 3]).await;
    let act = Activator::start(
        json!([revision("pair", 0, &[dead.addr, live.addr])]),
        &[],
        &[],
    );
    all_probed_ready(&[&dead, &live]).await;
    dead.kill().await;

    all_reach(&act, "pair", &live).await;
}

#[tokio::test]
async fn a_streamed_post_refused_by_the_first_pod_reaches_the_next_whole() {
    // cc 1 takes the first pod by address with room: the dead one, deterministically.
    let dead = FakePod::start([127, 0, 4, 10]).await;
    let live = FakePod::start([127, 0, 4, 11]).await;
    let act = Activator::start(
        json!([revision("ordered", 1, &[dead.addr, live.addr])]),
        &[],
        &[],
    );
    all_probed_ready(&[&dead, &live]).await;
    dead.kill().await;

    let (tx, body) = channel_body();
    for chunk in ["first ", "second ", "third"] {
        tx.send(Frame::data(Bytes::from_static(chunk.as_bytes())))
            .await
            .unwrap();
    }
    drop(tx);
    let res = post_rev(&act, "ordered", body).await;
    served_ok(&res, &act, &live);
    assert_eq!(res.text(), "first second third");

    all_reach(&act, "ordered", &live).await;
}

#[tokio::test]
async fn a_pod_that_died_after_serving_traffic_costs_no_request() {
    let dead = FakePod::start([127, 0, 4, 20]).await;
    let live = FakePod::start([127, 0, 4, 21]).await;
    let act = Activator::start(
        json!([revision("warm", 0, &[dead.addr, live.addr])]),
        &[],
        &[],
    );
    // Both pods served requests, so the activator holds idle connections to each.
    eventually(
        std::time::Duration::from_secs(5),
        "both pods served",
        || async {
            let res = get_rev(&act, "warm").await;
            assert_eq!(res.status, StatusCode::OK, "{}", res.text());
            dead.seen.requests() > 0 && live.seen.requests() > 0
        },
    )
    .await;
    dead.kill().await;

    all_reach(&act, "warm", &live).await;
}
