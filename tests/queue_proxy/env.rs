//! Start-up configuration: a bad environment exits 1 and names the key.

use tests::{QueueProxy, echo_app, queue_proxy_env, run_to_exit};

#[test]
fn each_missing_required_variable_is_named() {
    for key in [
        "CONTAINER_CONCURRENCY",
        "QUEUE_SERVING_PORT",
        "QUEUE_SERVING_TLS_PORT",
        "USER_PORT",
        "REVISION_TIMEOUT_SECONDS",
        "SERVING_LOGGING_CONFIG",
        "SERVING_LOGGING_LEVEL",
        "SERVING_NAMESPACE",
        "SERVING_CONFIGURATION",
        "SERVING_REVISION",
        "SERVING_POD",
        "SERVING_POD_IP",
    ] {
        let mut env = queue_proxy_env(8080);
        env.remove(key);
        let (code, stderr) = run_to_exit(&env);
        assert_eq!(code, Some(1), "{key}: {stderr}");
        assert!(stderr.contains(key), "{key} not named in: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn malformed_values_are_named() {
    for (key, value) in [
        ("CONTAINER_CONCURRENCY", "ten"),
        ("REVISION_TIMEOUT_SECONDS", "5s"),
        ("REVISION_IDLE_TIMEOUT_SECONDS", "-3"),
        ("USER_PORT", "http"),
        ("QUEUE_SERVING_PORT", "99999"),
        ("ENABLE_HTTP2_AUTO_DETECTION", "yes"),
        ("OBSERVABILITY_CONFIG", "{not json"),
        ("QUEUE_DRAIN_QUIET_SECONDS", "x"),
        ("QUEUE_AGGRESSIVE_PROBE_INTERVAL_MS", "fast"),
        ("SERVING_READINESS_PROBE", "{\"tcpSocket\":"),
    ] {
        let mut env = queue_proxy_env(8080);
        env.insert(key.into(), value.into());
        let (code, stderr) = run_to_exit(&env);
        assert_eq!(code, Some(1), "{key}={value}: {stderr}");
        assert!(stderr.contains(key), "{key} not named in: {stderr}");
    }
}

#[test]
fn go_integer_syntax_is_accepted() {
    let mut env = queue_proxy_env(8080);
    env.insert("CONTAINER_CONCURRENCY".into(), "0x0".into());
    env.insert("REVISION_TIMEOUT_SECONDS".into(), "+300".into());
    drop(QueueProxy::start(&env));
}

#[tokio::test]
async fn a_port_in_use_exits_1_naming_it() {
    let app = echo_app().await;
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let mut env = queue_proxy_env(app.port());
    env.insert(
        "QUEUE_ADMIN_PORT".into(),
        taken.local_addr().unwrap().port().to_string(),
    );
    let (code, stderr) = run_to_exit(&env);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("QUEUE_ADMIN_PORT"), "{stderr}");
}
