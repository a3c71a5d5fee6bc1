//! The revision, response-start and idle timeouts (contract section 6), and the 502 of an app that refuses connections.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tests::{App, Body, channel_body, full, http1, start_queue_proxy as queue_proxy, within};
use tokio::sync::Notify;

/// A chunked body that writes each `(delay, chunk)` after sleeping `delay`, then ends.
fn dribble(chunks: Vec<(Duration, &'static str)>) -> Body {
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        for (delay, chunk) in chunks {
            tokio::time::sleep(delay).await;
            if tx
                .send(Frame::data(Bytes::from_static(chunk.as_bytes())))
                .await
                .is_err()
            {
                return; // The proxy went away.
            }
        }
    });
    body
}

/// An app that sleeps `delay` before answering 200 `late`.
async fn sleepy_app(delay: Duration) -> App {
    App::start(move |_req: Request<Incoming>| async move {
        tokio::time::sleep(delay).await;
        Response::new(full("late"))
    })
    .await
}

/// An app that answers headers at once and then the body `chunks`.
async fn dribbling_app(chunks: Vec<(Duration, &'static str)>) -> App {
    App::start(move |_req: Request<Incoming>| {
        let body = dribble(chunks.clone());
        async move { Response::new(body) }
    })
    .await
}

/// How a response body ended.
struct Read {
    status: StatusCode,
    body: String,
    /// `Err` when the body failed (the stream was aborted).
    end: Result<(), String>,
    /// From sending the request to the end of the body.
    took: Duration,
}

/// GETs `url` over HTTP/1.1 and reads the body frame by frame until it ends or fails.
async fn read(url: &str) -> Read {
    let start = Instant::now();
    let req = Request::get(url).body(full("")).unwrap();
    let res = within(
        "response head",
        Duration::from_secs(15),
        http1().request(req),
    )
    .await
    .expect("response head");
    let status = res.status();
    let mut body = res.into_body();
    let mut data = BytesMut::new();
    let end = within("end of the body", Duration::from_secs(15), async {
        loop {
            match body.frame().await {
                None => return Ok(()),
                Some(Err(e)) => return Err(e.to_string()),
                Some(Ok(frame)) => {
                    if let Some(d) = frame.data_ref() {
                        data.extend_from_slice(d);
                    }
                }
            }
        }
    })
    .await;
    Read {
        status,
        body: String::from_utf8_lossy(&data).into_owned(),
        end,
        took: start.elapsed(),
    }
}

/// Five chunks, one every 500 ms, starting at once: 2 s of body in all.
fn slow_chunks() -> Vec<(Duration, &'static str)> {
    let gap = Duration::from_millis(500);
    vec![
        (Duration::ZERO, "c0."),
        (gap, "c1."),
        (gap, "c2."),
        (gap, "c3."),
        (gap, "c4."),
    ]
}

#[tokio::test]
async fn revision_timeout_before_the_response_starts_is_504() {
    let app = sleepy_app(Duration::from_secs(3)).await;
    let qp = queue_proxy(app.port(), &[("REVISION_TIMEOUT_SECONDS", "1")]);
    let res = read(&qp.url("/")).await;
    assert_eq!(res.status, StatusCode::GATEWAY_TIMEOUT, "{}", res.body);
    assert_eq!(res.body, "request timeout");
    assert_eq!(res.end, Ok(()));
}

#[tokio::test]
async fn response_start_timeout_is_504_when_headers_are_late() {
    let app = sleepy_app(Duration::from_secs(3)).await;
    let qp = queue_proxy(
        app.port(),
        &[
            ("REVISION_TIMEOUT_SECONDS", "10"),
            ("REVISION_RESPONSE_START_TIMEOUT_SECONDS", "1"),
        ],
    );
    let res = read(&qp.url("/")).await;
    assert_eq!(res.status, StatusCode::GATEWAY_TIMEOUT, "{}", res.body);
    assert_eq!(res.body, "request timeout");
}

#[tokio::test]
async fn response_start_timeout_spares_a_slow_body_once_headers_are_out() {
    // Headers at once, then 2.5 s of body: longer than the 1 s response-start timeout.
    let gap = Duration::from_millis(500);
    let mut chunks = slow_chunks();
    chunks.push((gap, "end"));
    let app = dribbling_app(chunks).await;
    let qp = queue_proxy(
        app.port(),
        &[
            ("REVISION_TIMEOUT_SECONDS", "10"),
            ("REVISION_RESPONSE_START_TIMEOUT_SECONDS", "1"),
        ],
    );
    let res = read(&qp.url("/")).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.end, Ok(()), "body so far: {:?}", res.body);
    assert_eq!(res.body, "c0.c1.c2.c3.c4.end");
}

#[tokio::test]
async fn idle_timeout_aborts_a_body_that_goes_quiet() {
    let app = dribbling_app(vec![
        (Duration::ZERO, "first."),
        (Duration::from_secs(3), "second"),
    ])
    .await;
    let qp = queue_proxy(app.port(), &[("REVISION_IDLE_TIMEOUT_SECONDS", "1")]);
    let res = read(&qp.url("/")).await;
    assert_eq!(
        res.status,
        StatusCode::OK,
        "headers went out before the gap"
    );
    assert!(
        res.body.starts_with("first."),
        "the first chunk arrives: {:?}",
        res.body
    );
    assert!(
        !res.body.contains("second"),
        "the body was not cut after 1 s of silence: {:?} (ended {:?} after {:?})",
        res.body,
        res.end,
        res.took
    );
}

#[tokio::test]
async fn idle_timeout_spares_a_body_that_keeps_writing() {
    // A chunk every 300 ms for about 2 s: never 1 s of silence.
    let gap = Duration::from_millis(300);
    let chunks: Vec<(Duration, &'static str)> = ["a", "b", "c", "d", "e", "f", "g"]
        .into_iter()
        .enumerate()
        .map(|(i, c)| (if i == 0 { Duration::ZERO } else { gap }, c))
        .collect();
    let app = dribbling_app(chunks).await;
    let qp = queue_proxy(app.port(), &[("REVISION_IDLE_TIMEOUT_SECONDS", "1")]);
    let res = read(&qp.url("/")).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.end, Ok(()), "body so far: {:?}", res.body);
    assert_eq!(res.body, "abcdefg");
}

#[tokio::test]
async fn revision_timeout_cuts_a_response_that_already_started() {
    // Headers at once, then a chunk every 500 ms for 3 s; the revision timeout is 1 s.
    let gap = Duration::from_millis(500);
    let mut chunks = slow_chunks();
    chunks.extend([(gap, "c5."), (gap, "end")]);
    let app = dribbling_app(chunks).await;
    let qp = queue_proxy(app.port(), &[("REVISION_TIMEOUT_SECONDS", "1")]);
    let res = read(&qp.url("/")).await;
    assert_eq!(res.status, StatusCode::OK, "headers went out before 1 s");
    assert!(
        res.body.starts_with("c0."),
        "the stream had started: {:?}",
        res.body
    );
    // Upstream appends `request timeout` to the partial body and ends it; this proxy aborts the
    // stream. Either way the client must not get the app's whole body.
    assert!(
        !res.body.contains("end"),
        "the body ran past the revision timeout: {:?} (ended {:?} after {:?})",
        res.body,
        res.end,
        res.took
    );
    assert!(
        res.took < Duration::from_millis(2800),
        "cut late: {:?}",
        res.took
    );
}

#[tokio::test]
async fn time_queued_in_the_breaker_counts_against_the_revision_timeout() {
    // `/hold` keeps the only slot for 4 s (the proxy cuts it at 2 s); everything else is instant.
    let arrived = Arc::new(Notify::new());
    let app = App::start({
        let arrived = arrived.clone();
        move |req: Request<Incoming>| {
            let arrived = arrived.clone();
            async move {
                if req.uri().path() == "/hold" {
                    arrived.notify_one();
                    tokio::time::sleep(Duration::from_secs(4)).await;
                }
                Response::new(full("ok"))
            }
        }
    })
    .await;
    let qp = queue_proxy(
        app.port(),
        &[
            ("CONTAINER_CONCURRENCY", "1"),
            ("REVISION_TIMEOUT_SECONDS", "2"),
        ],
    );
    let hold = tokio::spawn(read_owned(qp.url("/hold")));
    within(
        "the first request reaches the app",
        Duration::from_secs(5),
        arrived.notified(),
    )
    .await;

    // The second request queues behind the first. Its 2 s run from now, not from when it gets
    // the slot: the slot frees when the first is cut (~2 s after it started), and a clock that
    // only started then would give it ~3.8 s before its 504.
    let queued = read(&qp.url("/hold")).await;
    assert_eq!(
        queued.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        queued.body
    );
    assert_eq!(queued.body, "request timeout");
    assert!(
        queued.took < Duration::from_millis(3300),
        "the queued request got its 504 after {:?}: its queued time did not count",
        queued.took
    );

    let first = within("the first request", Duration::from_secs(10), hold)
        .await
        .unwrap();
    assert_eq!(first.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(first.body, "request timeout");
}

/// [`read`] for a spawned task.
async fn read_owned(url: String) -> Read {
    read(&url).await
}

#[tokio::test]
async fn an_app_that_refuses_connections_is_502() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }; // Closed again: connecting is refused.
    let qp = queue_proxy(port, &[]);
    let res = read(&qp.url("/")).await;
    assert_eq!(res.status, StatusCode::BAD_GATEWAY, "{}", res.body);
    assert_eq!(
        res.body,
        format!("dial tcp 127.0.0.1:{port}: connect: connection refused\n")
    );
}
