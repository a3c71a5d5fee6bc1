//! Readiness checks of a backend: a TCP connect, an HTTP GET, or a gRPC health check.
//!
//! Each check opens its own connection and closes it afterwards (no keep-alive), as the kubelet
//! does, so a probe never holds a slot of the application's connection pool.

use std::{fmt, net::SocketAddr, sync::Arc, time::Duration};

use bytes::{Buf, Bytes};
use http::{HeaderName, HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// User-Agent of upstream's prober: `kube-probe/` and a version it never fills in.
pub const PROBE_USER_AGENT: &str = "kube-probe//";

/// One readiness check.
#[derive(Clone, Debug, PartialEq)]
pub enum Check {
    /// Ready when a TCP connection opens.
    Tcp {
        /// Where to connect.
        addr: SocketAddr,
    },
    /// Ready on an HTTP status from 200 to 399.
    Http {
        /// Where to connect.
        addr: SocketAddr,
        /// `Host` to send.
        host: String,
        /// Path and query.
        path: String,
        /// Extra request headers.
        headers: Vec<(HeaderName, HeaderValue)>,
        /// Try h2c first and fall back to HTTP/1.1 (`ENABLE_HTTP2_AUTO_DETECTION`).
        h2c_first: bool,
        /// Speak HTTPS, without verifying the certificate, as the kubelet and upstream do.
        tls: bool,
    },
    /// Ready when `grpc.health.v1.Health/Check` answers `SERVING`.
    Grpc {
        /// Where to connect.
        addr: SocketAddr,
        /// The service name to ask about (empty: the whole server).
        service: String,
    },
}

/// Why a check failed.
#[derive(Debug)]
pub struct ProbeError(String);

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl std::error::Error for ProbeError {}

fn fail(msg: impl Into<String>) -> ProbeError {
    ProbeError(msg.into())
}

impl Check {
    /// Runs the check once, giving up after `timeout`.
    pub async fn run(&self, timeout: Duration) -> Result<(), ProbeError> {
        match tokio::time::timeout(timeout, self.run_unbounded()).await {
            Ok(r) => r,
            Err(_) => Err(fail(format!("probe timed out after {timeout:?}"))),
        }
    }

    async fn run_unbounded(&self) -> Result<(), ProbeError> {
        match self {
            Self::Tcp { addr } => connect(*addr).await.map(drop),
            Self::Http {
                addr,
                host,
                path,
                headers,
                h2c_first,
                tls,
            } => {
                if *tls {
                    let tcp = connect(*addr).await?;
                    let stream = tls_connect(tcp, host).await?;
                    return http_get(TokioIo::new(stream), host, path, headers, false).await;
                }
                if *h2c_first {
                    let io = TokioIo::new(connect(*addr).await?);
                    if http_get(io, host, path, headers, true).await.is_ok() {
                        return Ok(());
                    }
                }
                let io = TokioIo::new(connect(*addr).await?);
                http_get(io, host, path, headers, false).await
            }
            Self::Grpc { addr, service } => grpc_health(*addr, service).await,
        }
    }
}

/// What a pod's queue-proxy answered to the activator's probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueProbe {
    /// `200` with body `queue`: the pod takes traffic.
    Ready,
    /// Any other HTTP answer. `maybe_mesh` is set for a 502 or 503, which a service mesh's
    /// sidecar gives when it intercepts a probe to a pod IP.
    NotReady {
        /// The status received.
        status: StatusCode,
        /// Whether the status could have come from a mesh.
        maybe_mesh: bool,
    },
}

/// Probes the queue-proxy at `addr` as the activator does: `GET /healthz` with
/// `K-Network-Probe: queue` and `User-Agent: Knative-Activator-Probe`, plus `extra` headers
/// (the mesh's `Host` and `K-Passthrough-Lb`). A transport failure or `timeout` is an error.
pub async fn queue(
    addr: SocketAddr,
    extra: &[(HeaderName, HeaderValue)],
    timeout: Duration,
) -> Result<QueueProbe, ProbeError> {
    let run = async {
        let io = TokioIo::new(connect(addr).await?);
        let (mut tx, conn) = http1::handshake(io)
            .await
            .map_err(|e| fail(e.to_string()))?;
        tokio::spawn(conn);
        let mut req = Request::get("/healthz")
            .header(header::HOST, addr.to_string())
            .header(header::USER_AGENT, crate::headers::ACTIVATOR_UA)
            .header(crate::headers::K_NETWORK_PROBE, "queue")
            .header(header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| fail(format!("bad probe request: {e}")))?;
        for (k, v) in extra {
            req.headers_mut().insert(k.clone(), v.clone());
        }
        let res = tx
            .send_request(req)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = res.status();
        // Small bound: a queue-proxy answers five bytes; anything long is not one.
        let body = http_body_util::Limited::new(res.into_body(), 64)
            .collect()
            .await
            .map_err(|e| fail(e.to_string()))?
            .to_bytes();
        Ok(if status == StatusCode::OK && body.as_ref() == b"queue" {
            QueueProbe::Ready
        } else {
            QueueProbe::NotReady {
                status,
                maybe_mesh: matches!(status.as_u16(), 502 | 503),
            }
        })
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(fail(format!("probe timed out after {timeout:?}"))),
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, ProbeError> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|e| fail(format!("dial tcp {addr}: {e}")))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

async fn http_get<I>(
    io: I,
    host: &str,
    path: &str,
    headers: &[(HeaderName, HeaderValue)],
    h2c: bool,
) -> Result<(), ProbeError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut req = Request::get(if h2c {
        format!("http://{host}{path}")
    } else {
        path.to_owned()
    })
    .header(header::USER_AGENT, PROBE_USER_AGENT)
    .body(Empty::<Bytes>::new())
    .map_err(|e| fail(format!("bad probe request: {e}")))?;
    if !h2c {
        req.headers_mut().insert(
            header::HOST,
            HeaderValue::from_str(host).map_err(|e| fail(e.to_string()))?,
        );
        req.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    // As Go builds the request: the host comes from the URL and the first User-Agent wins, so a
    // probe's own `Host` or `User-Agent` entries are not sent a second time.
    req.headers_mut()
        .insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
    for (k, v) in headers {
        if k != header::HOST && k != header::USER_AGENT {
            req.headers_mut().append(k.clone(), v.clone());
        }
    }
    let status = if h2c {
        let (mut tx, conn) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| fail(e.to_string()))?;
        tokio::spawn(conn);
        let res = tx
            .send_request(req)
            .await
            .map_err(|e| fail(e.to_string()))?;
        res.status()
    } else {
        let (mut tx, conn) = http1::handshake(io)
            .await
            .map_err(|e| fail(e.to_string()))?;
        tokio::spawn(conn);
        let res = tx
            .send_request(req)
            .await
            .map_err(|e| fail(e.to_string()))?;
        res.status()
    };
    if (200..400).contains(&status.as_u16()) {
        Ok(())
    } else {
        Err(fail(format!(
            "HTTP probe did not respond Ready, got status code: {}",
            status.as_u16()
        )))
    }
}

/// A TLS session to a readiness endpoint. Like the kubelet's HTTPS probes, the certificate is not
/// checked: the app's own, often self-signed, is what is being probed. (Upstream's prober
/// verifies against the system roots, which such a certificate fails; this is deliberate.)
/// Handshake signatures are still verified.
async fn tls_connect(
    tcp: TcpStream,
    host: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ProbeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let name = rustls::pki_types::ServerName::try_from(name.trim_matches(['[', ']']).to_owned())
        .map_err(|e| fail(format!("bad probe host {host:?}: {e}")))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| fail(format!("TLS handshake: {e}")))
}

/// Accepts any certificate, checking only that the peer holds its key.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `grpc.health.v1.HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;

async fn grpc_health(addr: SocketAddr, service: &str) -> Result<(), ProbeError> {
    let io = TokioIo::new(connect(addr).await?);
    let (mut tx, conn) = http2::handshake(TokioExecutor::new(), io)
        .await
        .map_err(|e| fail(e.to_string()))?;
    tokio::spawn(conn);
    // HealthCheckRequest { service = 1 } in a length-prefixed, uncompressed gRPC frame.
    let mut msg = Vec::with_capacity(service.len() + 8);
    if !service.is_empty() {
        msg.push(0x0a);
        put_varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut frame = Vec::with_capacity(msg.len() + 5);
    frame.push(0);
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    let req = Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .header(header::USER_AGENT, PROBE_USER_AGENT)
        .body(Full::new(Bytes::from(frame)))
        .map_err(|e| fail(e.to_string()))?;
    let res = tx
        .send_request(req)
        .await
        .map_err(|e| fail(e.to_string()))?;
    if res.status() != StatusCode::OK {
        return Err(fail(format!(
            "gRPC health check answered HTTP {}",
            res.status().as_u16()
        )));
    }
    // A trailers-only answer carries grpc-status in the headers.
    let head_status = res.headers().get("grpc-status").cloned();
    let collected = res
        .into_body()
        .collect()
        .await
        .map_err(|e| fail(e.to_string()))?;
    let grpc_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status").cloned())
        .or(head_status);
    match grpc_status.as_ref().map(HeaderValue::as_bytes) {
        Some(b"0") => {}
        Some(code) => {
            return Err(fail(format!(
                "gRPC health check failed: grpc-status {}",
                String::from_utf8_lossy(code)
            )));
        }
        None => return Err(fail("gRPC health check: no grpc-status")),
    }
    let mut body = collected.to_bytes();
    if body.len() < 5 {
        return Err(fail("gRPC health check: empty response"));
    }
    body.advance(5);
    if health_status(&body) == Some(SERVING) {
        Ok(())
    } else {
        Err(fail(format!(
            "gRPC health check: service {service:?} is not SERVING"
        )))
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads field 1 (`status`) of a `HealthCheckResponse`.
fn health_status(mut msg: &[u8]) -> Option<u64> {
    let mut status = None;
    while !msg.is_empty() {
        let key = get_varint(&mut msg)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = Some(get_varint(&mut msg)?),
            (_, 0) => {
                get_varint(&mut msg)?;
            }
            (_, 2) => {
                let len = usize::try_from(get_varint(&mut msg)?).ok()?;
                msg = msg.get(len..)?;
            }
            (_, 1) => msg = msg.get(8..)?,
            (_, 5) => msg = msg.get(4..)?,
            _ => return None,
        }
    }
    // proto3 omits a zero (UNKNOWN) status.
    Some(status.unwrap_or(0))
}

fn get_varint(msg: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = msg.split_first()?;
        *msg = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_status_is_read_from_field_one() {
        assert_eq!(health_status(&[0x08, 0x01]), Some(SERVING));
        assert_eq!(health_status(&[0x08, 0x02]), Some(2));
        assert_eq!(health_status(&[]), Some(0));
        assert_eq!(
            health_status(&[0x12, 0x01, b'x', 0x08, 0x01]),
            Some(SERVING),
            "unknown fields are skipped"
        );
        assert_eq!(health_status(&[0x08]), None, "truncated");
    }

    #[tokio::test]
    async fn tcp_check_sees_a_listener_and_its_absence() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        Check::Tcp { addr }
            .run(Duration::from_secs(1))
            .await
            .unwrap();
        drop(l);
        assert!(
            Check::Tcp { addr }
                .run(Duration::from_secs(1))
                .await
                .is_err()
        );
    }
}
