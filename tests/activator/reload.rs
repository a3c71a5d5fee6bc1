//! The file source: revisions and endpoints follow the file, and an invalid file keeps the last
//! good state.

use std::time::Duration;

use http::StatusCode;
use serde_json::json;
use tests::{Activator, eventually, revision};

use crate::cold_start::{FakePod, get_rev, served_by};

const WAIT: Duration = Duration::from_secs(5);

fn not_found(name: &str) -> String {
    format!("Error getting active endpoint: revision.serving.knative.dev \"{name}\" not found\n")
}

/// Replaces the revisions file with `text`, atomically, as it is.
fn write_raw(act: &Activator, text: &str) {
    let tmp = act.revisions.with_extension("raw");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &act.revisions).unwrap();
}

/// Waits until a log line mentions both `a` and `b`.
async fn logged(act: &Activator, a: &str, b: &str) {
    eventually(
        WAIT,
        &format!("a log line with {a:?} and {b:?}"),
        || async {
            act.process
                .logs()
                .lines()
                .any(|l| l.contains(a) && l.contains(b))
        },
    )
    .await;
}

async fn assert_served(act: &Activator, name: &str, pod: &FakePod) {
    let res = get_rev(act, name).await;
    act.assert_ok(&res);
    assert_eq!(served_by(&res), pod.addr.ip().to_string());
}

#[tokio::test]
async fn a_revision_added_to_the_file_becomes_routable_and_a_removed_one_404s() {
    let pod = FakePod::start([127, 0, 3, 2]).await;
    let act = Activator::start(json!([revision("first", 0, &[pod.addr])]), &[], &[]);
    assert_served(&act, "first", &pod).await;
    let res = get_rev(&act, "second").await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);

    act.set_revisions(json!([
        revision("first", 0, &[pod.addr]),
        revision("second", 0, &[pod.addr]),
    ]));
    eventually(WAIT, "second routable", || async {
        get_rev(&act, "second").await.status == StatusCode::OK
    })
    .await;
    assert_served(&act, "second", &pod).await;

    act.set_revisions(json!([revision("second", 0, &[pod.addr])]));
    eventually(WAIT, "first gone", || async {
        get_rev(&act, "first").await.status == StatusCode::NOT_FOUND
    })
    .await;
    assert_eq!(get_rev(&act, "first").await.text(), not_found("first"));
    assert_served(&act, "second", &pod).await;
}

#[tokio::test]
async fn an_invalid_file_keeps_the_last_good_state_and_is_logged() {
    let pod = FakePod::start([127, 0, 3, 10]).await;
    let act = Activator::start(json!([revision("kept", 0, &[pod.addr])]), &[], &[]);
    assert_served(&act, "kept", &pod).await;
    let file = act.revisions.to_string_lossy().into_owned();

    // Not JSON at all.
    write_raw(&act, "{ this is not json");
    logged(&act, &file, "invalid").await;
    for _ in 0..5 {
        assert_served(&act, "kept", &pod).await;
    }

    // Valid JSON that drops `kept` but names an unknown field: nothing of it applies.
    write_raw(
        &act,
        r#"{"revisions":[{"namespace":"default","name":"other","cc":1}]}"#,
    );
    logged(&act, "unknown field", "`cc`").await;
    assert_served(&act, "kept", &pod).await;
    assert_eq!(get_rev(&act, "other").await.status, StatusCode::NOT_FOUND);

    // A bad endpoint: the reason names it.
    write_raw(
        &act,
        r#"{"revisions":[{"namespace":"default","name":"kept","endpoints":["not-an-address"]}]}"#,
    );
    logged(&act, &file, "not-an-address").await;
    assert_served(&act, "kept", &pod).await;

    // An empty file, as a writer that truncates before it writes leaves it for a moment.
    std::fs::write(&act.revisions, "").unwrap();
    logged(&act, &file, "EOF while parsing").await;
    assert_served(&act, "kept", &pod).await;

    // A good file afterwards applies.
    act.set_revisions(json!([
        revision("kept", 0, &[pod.addr]),
        revision("added", 0, &[pod.addr]),
    ]));
    eventually(WAIT, "added routable", || async {
        get_rev(&act, "added").await.status == StatusCode::OK
    })
    .await;
    assert_served(&act, "kept", &pod).await;
}

#[tokio::test]
async fn an_endpoint_added_to_a_revision_gets_traffic_and_a_removed_one_none() {
    let a = FakePod::start([127, 0, 3, 20]).await;
    let b = FakePod::start([127, 0, 3, 21]).await;
    let act = Activator::start(json!([revision("web", 0, &[a.addr])]), &[], &[]);
    for _ in 0..5 {
        assert_served(&act, "web", &a).await;
    }
    assert_eq!(b.seen.requests(), 0);

    act.set_revisions(json!([revision("web", 0, &[a.addr, b.addr])]));
    eventually(WAIT, "the new endpoint gets traffic", || async {
        let res = get_rev(&act, "web").await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.text());
        b.seen.requests() > 0
    })
    .await;

    act.set_revisions(json!([revision("web", 0, &[b.addr])]));
    eventually(WAIT, "the removed endpoint gets none", || async {
        let before = a.seen.requests();
        for _ in 0..10 {
            let res = get_rev(&act, "web").await;
            assert_eq!(res.status, StatusCode::OK, "{}", res.text());
        }
        a.seen.requests() == before
    })
    .await;
    for _ in 0..10 {
        assert_served(&act, "web", &b).await;
    }
}
