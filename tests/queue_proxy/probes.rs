//! Health checks, network probes and the user readiness probe.

use tests::{QueueProxy, echo_app, get, queue_proxy_env};

#[tokio::test]
async fn proxies_a_request_to_the_app() {
    let app = echo_app().await;
    let qp = QueueProxy::start(&queue_proxy_env(app.port()));
    let res = get(&qp.url("/hello?x=1"), &[]).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "hello");
    assert_eq!(res.header("x-echo-path"), Some("/hello?x=1"));
}
