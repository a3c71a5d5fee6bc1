//! The TLS listener: started only with both certificate files, HTTP/1.1 and h2 (ALPN) to the
//! app, and Go-only TLS settings that warn instead of failing.

use std::{
    collections::HashMap,
    future::Future,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

use tests::{QueueProxy, echo_app, get, queue_proxy_env};

/// The longest any single network step may take before the test fails instead of hanging.
const WAIT: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test after [`WAIT`].
async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tests::within(what, WAIT, fut).await
}

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "queue-proxy-tls-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for `localhost` and 127.0.0.1, written as `tls.crt` and `tls.key`.
struct Certs {
    dir: TempDir,
    der: CertificateDer<'static>,
}

impl Certs {
    fn new() -> Self {
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .unwrap();
        let dir = TempDir::new();
        std::fs::write(dir.path().join("tls.crt"), ck.cert.pem()).unwrap();
        std::fs::write(dir.path().join("tls.key"), ck.key_pair.serialize_pem()).unwrap();
        Self {
            dir,
            der: ck.cert.der().clone(),
        }
    }

    /// The queue-proxy environment for `app_port` with this certificate directory.
    fn env(&self, app_port: u16) -> HashMap<String, String> {
        let mut env = queue_proxy_env(app_port);
        env.insert(
            "QUEUE_CERTS_DIR".into(),
            self.dir.path().to_str().unwrap().into(),
        );
        env
    }

    /// Opens a TLS connection to `qp`'s TLS port trusting only this certificate, offering `alpn`.
    async fn connect(&self, qp: &QueueProxy, alpn: &[u8]) -> TlsStream<TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let port = qp.port("QUEUE_SERVING_TLS_PORT");
        let tcp = within("connect", TcpStream::connect(("127.0.0.1", port)))
            .await
            .expect("connect to the TLS port");
        let tls = within(
            "TLS handshake",
            TlsConnector::from(Arc::new(config))
                .connect(ServerName::try_from("localhost").unwrap(), tcp),
        )
        .await
        .expect("TLS handshake");
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(alpn),
            "negotiated ALPN"
        );
        tls
    }
}

/// GETs `path` over HTTP/1.1 on a TLS connection.
async fn https_http1(tls: TlsStream<TcpStream>, path: &str) -> Response<Bytes> {
    let (mut sender, conn) = within(
        "HTTP/1.1 handshake",
        hyper::client::conn::http1::handshake(TokioIo::new(tls)),
    )
    .await
    .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "hello.default.example.com")
        .body(Empty::<Bytes>::new())
        .unwrap();
    collect(
        within("response", sender.send_request(req))
            .await
            .expect("response"),
    )
    .await
}

/// GETs `path` over h2 on a TLS connection.
async fn https_h2(tls: TlsStream<TcpStream>, path: &str) -> Response<Bytes> {
    let (mut sender, conn) = within(
        "h2 handshake",
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::get(format!("https://hello.default.example.com{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    collect(
        within("response", sender.send_request(req))
            .await
            .expect("response"),
    )
    .await
}

async fn collect(res: Response<hyper::body::Incoming>) -> Response<Bytes> {
    let (parts, body) = res.into_parts();
    let body = within("body", body.collect())
        .await
        .expect("body")
        .to_bytes();
    Response::from_parts(parts, body)
}

fn header<'a>(res: &'a Response<Bytes>, name: &str) -> Option<&'a str> {
    res.headers().get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn https_over_http1_reaches_the_app() {
    let app = echo_app().await;
    let certs = Certs::new();
    let qp = QueueProxy::start(&certs.env(app.port()));
    assert!(
        qp.has_port("QUEUE_SERVING_TLS_PORT"),
        "no TLS listener; logs:\n{}",
        qp.logs()
    );
    let res = https_http1(certs.connect(&qp, b"http/1.1").await, "/secure?x=1").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), Version::HTTP_11);
    assert_eq!(res.body(), "hello");
    assert_eq!(header(&res, "x-echo-path"), Some("/secure?x=1"));
    assert_eq!(header(&res, "x-echo-version"), Some("HTTP/1.1"));
    assert_eq!(
        header(&res, "x-echo-host"),
        Some("hello.default.example.com")
    );

    // The plaintext port keeps serving next to it.
    let plain = get(&qp.url("/plain"), &[]).await;
    assert_eq!(plain.status, 200);
}

#[tokio::test]
async fn https_over_h2_via_alpn_reaches_the_app_over_h2c() {
    let app = echo_app().await;
    let certs = Certs::new();
    let qp = QueueProxy::start(&certs.env(app.port()));
    let res = https_h2(certs.connect(&qp, b"h2").await, "/secure-h2").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), Version::HTTP_2);
    assert_eq!(res.body(), "hello");
    assert_eq!(header(&res, "x-echo-path"), Some("/secure-h2"));
    // Protocol mirroring: h2 in, h2c out.
    assert_eq!(header(&res, "x-echo-version"), Some("HTTP/2.0"));
}

#[tokio::test]
async fn go_only_cipher_suites_and_curves_are_warned_about_not_fatal() {
    const SUITE: &str = "TLS_RSA_WITH_RC4_128_SHA";
    const CURVE: &str = "X25519MLKEM768";
    let app = echo_app().await;
    let certs = Certs::new();
    let mut env = certs.env(app.port());
    env.insert("QUEUE_PROXY_TLS_CIPHER_SUITES".into(), SUITE.into());
    env.insert(
        "QUEUE_PROXY_TLS_CURVE_PREFERENCES".into(),
        format!("{CURVE},CurveP256"),
    );
    let qp = QueueProxy::start(&env);
    assert!(
        qp.has_port("QUEUE_SERVING_TLS_PORT"),
        "no TLS listener; logs:\n{}",
        qp.logs()
    );
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let tls = certs.connect(&qp, alpn).await;
        let res = if alpn == b"h2" {
            https_h2(tls, "/after-warnings").await
        } else {
            https_http1(tls, "/after-warnings").await
        };
        assert_eq!(res.status(), 200);
        assert_eq!(res.body(), "hello");
    }

    // One warning line names each value it could not honour.
    let warned = |value: &str| {
        qp.logs().lines().any(|line| {
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| {
                v["severity"] == "WARNING"
                    && v["message"].as_str().is_some_and(|m| m.contains(value))
            })
        })
    };
    assert!(
        warned(SUITE),
        "no warning names {SUITE}; logs:\n{}",
        qp.logs()
    );
    assert!(
        warned(CURVE),
        "no warning names {CURVE}; logs:\n{}",
        qp.logs()
    );
}

/// Checks no TLS listener started, giving a late one time to show up in the logs.
async fn assert_no_tls_listener(qp: &QueueProxy) {
    // A request served end to end means start-up is over.
    assert_eq!(get(&qp.url("/"), &[]).await.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!qp.has_port("QUEUE_SERVING_TLS_PORT"), "{}", qp.logs());
    assert!(
        !qp.logs().contains("listening (QUEUE_SERVING_TLS_PORT)"),
        "{}",
        qp.logs()
    );
}

#[tokio::test]
async fn no_tls_listener_without_both_cert_files() {
    let app = echo_app().await;

    // The harness default: a directory that does not exist.
    let qp = QueueProxy::start(&queue_proxy_env(app.port()));
    assert_no_tls_listener(&qp).await;
    drop(qp);

    // A certificate without its key.
    let certs = Certs::new();
    std::fs::remove_file(certs.dir.path().join("tls.key")).unwrap();
    let qp = QueueProxy::start(&certs.env(app.port()));
    assert_no_tls_listener(&qp).await;
}

/// An HTTPS readiness probe reaches an app with a self-signed certificate, which it does not
/// verify (as the kubelet's HTTPS probes do not).
#[tokio::test]
async fn https_readiness_probe_accepts_the_apps_own_certificate() {
    let ck = rcgen::generate_simple_self_signed(vec!["app.internal".to_owned()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let probed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = tokio::spawn({
        let probed = probed.clone();
        async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (acceptor, probed) = (acceptor.clone(), probed.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let ok = req.uri().path() == "/ready";
                            if ok {
                                probed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                            async move {
                                let mut res = Response::new(Empty::<Bytes>::new());
                                *res.status_mut() = if ok {
                                    http::StatusCode::OK
                                } else {
                                    http::StatusCode::NOT_FOUND
                                };
                                Ok::<_, std::convert::Infallible>(res)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        }
    });
    let mut env = queue_proxy_env(port);
    env.insert(
        "SERVING_READINESS_PROBE".into(),
        format!(
            r#"{{"httpGet":{{"path":"/ready","port":{port},"host":"127.0.0.1","scheme":"HTTPS"}},"periodSeconds":1,"timeoutSeconds":1}}"#
        ),
    );
    let qp = QueueProxy::start(&env);
    let res = tests::get(
        &qp.url("/"),
        &[
            ("user-agent", "kube-probe/1.30"),
            ("k-network-probe", "queue"),
        ],
    )
    .await;
    assert_eq!(
        (res.status.as_u16(), res.text().as_str()),
        (200, "queue"),
        "{}",
        qp.logs()
    );
    assert!(
        probed.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the app saw the probe"
    );
    app.abort();
}
