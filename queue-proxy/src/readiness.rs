//! The user container's readiness, from `SERVING_READINESS_PROBE`, checked on every health check.
//!
//! With `periodSeconds` 0 (Knative's aggressive probing) a check polls until the container is
//! ready or 10 s pass; upstream polls every 50 ms, which alone adds ~25 ms to a cold start on
//! average, so ours polls every `QUEUE_AGGRESSIVE_PROBE_INTERVAL_MS` (5 ms). Concurrent health
//! checks share one run, and results are not cached, as upstream.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use http::{HeaderName, HeaderValue};
use proxy_core::probe::Check;
use serde::Deserialize;
use tokio::{sync::watch, time::Instant};

/// How long aggressive probing keeps trying before it answers "not ready".
const AGGRESSIVE_WINDOW: Duration = Duration::from_secs(10);
/// Timeout of one aggressive attempt.
const AGGRESSIVE_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(100);

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ProbeSpec {
    tcp_socket: Option<TcpSpec>,
    http_get: Option<HttpSpec>,
    grpc: Option<GrpcSpec>,
    exec: Option<serde_json::Value>,
    #[serde(default)]
    period_seconds: i64,
    #[serde(default)]
    timeout_seconds: i64,
    #[serde(default)]
    success_threshold: i64,
}

#[derive(Debug, Deserialize)]
struct TcpSpec {
    port: Port,
    #[serde(default)]
    host: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HttpSpec {
    port: Port,
    #[serde(default)]
    host: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    scheme: String,
    #[serde(default)]
    http_headers: Vec<HeaderSpec>,
}

#[derive(Debug, Deserialize)]
struct HeaderSpec {
    name: String,
    value: String,
}

#[derive(Debug, Deserialize)]
struct GrpcSpec {
    port: Port,
    service: Option<String>,
}

/// Kubernetes' IntOrString; a named port must already have been resolved to a number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Port {
    Int(u16),
    Str(String),
}

/// One container's probe.
#[derive(Debug)]
struct Probe {
    check: Check,
    aggressive: bool,
    timeout: Duration,
    success_threshold: u32,
    successes: AtomicU32,
}

/// Every probe of the pod; ready when all pass.
#[derive(Debug)]
pub(crate) struct Readiness {
    probes: Vec<Probe>,
    interval: Duration,
    in_flight: Mutex<Option<watch::Receiver<Option<bool>>>>,
}

impl Readiness {
    /// Parses `SERVING_READINESS_PROBE` (an array when multi-container probing is on). No probe
    /// means always ready.
    pub(crate) fn parse(
        raw: Option<&str>,
        multi: bool,
        user_port: u16,
        h2c_first: bool,
        interval: Duration,
    ) -> Result<Arc<Self>, String> {
        let specs: Vec<ProbeSpec> = match raw {
            None => Vec::new(),
            // Accept either form whatever the flag says: the controller only emits an array with it on.
            Some(raw) if multi || raw.trim_start().starts_with('[') => {
                serde_json::from_str(raw).map_err(|e| e.to_string())?
            }
            Some(raw) => vec![serde_json::from_str(raw).map_err(|e| e.to_string())?],
        };
        let mut probes = Vec::new();
        for spec in specs {
            if spec.exec.is_some()
                && spec.tcp_socket.is_none()
                && spec.http_get.is_none()
                && spec.grpc.is_none()
            {
                // Upstream's controller never sends these; an exec probe stays with the kubelet.
                continue;
            }
            let check = to_check(&spec, user_port, h2c_first)?;
            let aggressive = spec.period_seconds == 0;
            probes.push(Probe {
                check,
                aggressive,
                timeout: Duration::from_secs(
                    u64::try_from(spec.timeout_seconds.max(1)).unwrap_or(1),
                ),
                success_threshold: u32::try_from(spec.success_threshold.max(1)).unwrap_or(1),
                successes: AtomicU32::new(0),
            });
        }
        Ok(Arc::new(Self {
            probes,
            interval,
            in_flight: Mutex::new(None),
        }))
    }

    /// Whether the container is ready, sharing a run already in progress.
    pub(crate) async fn check(self: &Arc<Self>) -> bool {
        if self.probes.is_empty() {
            return true;
        }
        let mut rx = {
            let mut slot = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            match slot.as_ref() {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    *slot = Some(rx);
                    let this = self.clone();
                    // A detached task: a caller that goes away does not abort the others' run.
                    tokio::spawn(async move {
                        let ready = this.run().await;
                        *this.in_flight.lock().unwrap_or_else(|e| e.into_inner()) = None;
                        let _ = tx.send(Some(ready));
                    });
                    let mut slot_rx = slot.as_ref().expect("just set").clone();
                    slot_rx.mark_unchanged();
                    slot_rx
                }
            }
        };
        match rx.wait_for(Option::is_some).await {
            Ok(v) => v.unwrap_or(false),
            Err(_) => false,
        }
    }

    async fn run(self: &Arc<Self>) -> bool {
        if let [only] = &self.probes[..] {
            return self.run_one(only).await;
        }
        // Probes of different containers run side by side, as upstream's errgroup.
        let mut set = tokio::task::JoinSet::new();
        for i in 0..self.probes.len() {
            let this = self.clone();
            set.spawn(async move { this.run_one(&this.probes[i]).await });
        }
        let mut all = true;
        while let Some(r) = set.join_next().await {
            all &= r.unwrap_or(false);
        }
        all
    }

    async fn run_one(&self, probe: &Probe) -> bool {
        if !probe.aggressive {
            // As upstream, `successThreshold` only counts in aggressive mode: with a period, the
            // kubelet itself applies it to the answers.
            return match probe.check.run(probe.timeout).await {
                Ok(()) => true,
                Err(e) => {
                    probe.successes.store(0, Ordering::Relaxed);
                    tracing::debug!(error = %e, "readiness probe failed");
                    false
                }
            };
        }
        let give_up = Instant::now() + AGGRESSIVE_WINDOW;
        let mut failures = 0u32;
        let mut last_error = String::new();
        loop {
            let attempt = Instant::now();
            match probe.check.run(AGGRESSIVE_ATTEMPT_TIMEOUT).await {
                Ok(()) => {
                    if self.succeed(probe) {
                        return true;
                    }
                }
                Err(e) => {
                    probe.successes.store(0, Ordering::Relaxed);
                    failures += 1;
                    last_error = e.to_string();
                }
            }
            let next = attempt + self.interval;
            if next >= give_up {
                // One line per give-up, not one per attempt (upstream #10236).
                tracing::warn!("aggressive probe error (failed {failures} times): {last_error}");
                return false;
            }
            tokio::time::sleep_until(next).await;
        }
    }

    fn succeed(&self, probe: &Probe) -> bool {
        probe.successes.fetch_add(1, Ordering::Relaxed) + 1 >= probe.success_threshold
    }
}

fn to_check(spec: &ProbeSpec, user_port: u16, h2c_first: bool) -> Result<Check, String> {
    let port = |p: &Port| -> Result<u16, String> {
        match p {
            Port::Int(0) => Ok(user_port),
            Port::Int(n) => Ok(*n),
            Port::Str(s) if s.is_empty() => Ok(user_port),
            Port::Str(s) => s
                .parse()
                .map_err(|_| format!("readiness probe port {s:?} is not a number")),
        }
    };
    let addr = |host: &str, p: u16| -> Result<SocketAddr, String> {
        let ip = if host.is_empty() || host == "localhost" {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            host.parse()
                .map_err(|_| format!("readiness probe host {host:?} is not an IP address"))?
        };
        Ok(SocketAddr::new(ip, p))
    };
    if let Some(t) = &spec.tcp_socket {
        return Ok(Check::Tcp {
            addr: addr(&t.host, port(&t.port)?)?,
        });
    }
    if let Some(h) = &spec.http_get {
        let p = port(&h.port)?;
        let host = if h.host.is_empty() {
            "127.0.0.1".to_owned()
        } else {
            h.host.clone()
        };
        let mut path = if h.path.is_empty() {
            "/".to_owned()
        } else {
            h.path.clone()
        };
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        let headers = h
            .http_headers
            .iter()
            .map(|kv| {
                Ok((
                    HeaderName::try_from(kv.name.as_str())
                        .map_err(|e| format!("readiness probe header {:?}: {e}", kv.name))?,
                    HeaderValue::try_from(kv.value.as_str())
                        .map_err(|e| format!("readiness probe header {:?}: {e}", kv.name))?,
                ))
            })
            .collect::<Result<_, String>>()?;
        return Ok(Check::Http {
            addr: addr(&h.host, p)?,
            host: format!("{host}:{p}"),
            path,
            headers,
            h2c_first,
            tls: h.scheme.eq_ignore_ascii_case("https"),
        });
    }
    if let Some(g) = &spec.grpc {
        return Ok(Check::Grpc {
            addr: addr("", port(&g.port)?)?,
            service: g.service.clone().unwrap_or_default(),
        });
    }
    Err("readiness probe has no tcpSocket, httpGet or grpc handler".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upstream_shapes() {
        let r = Readiness::parse(
            Some(r#"{"tcpSocket":{"port":8080,"host":"127.0.0.1"}}"#),
            false,
            8080,
            false,
            Duration::from_millis(5),
        )
        .unwrap();
        assert_eq!(
            r.probes[0].check,
            Check::Tcp {
                addr: "127.0.0.1:8080".parse().unwrap()
            }
        );
        assert!(r.probes[0].aggressive);
        let r = Readiness::parse(
            Some(r#"[{"httpGet":{"path":"healthz","port":"9000","httpHeaders":[{"name":"x-a","value":"b"}]},"periodSeconds":5,"timeoutSeconds":2},{"grpc":{"port":8080,"service":null}}]"#),
            true,
            8080,
            false,
            Duration::from_millis(5),
        )
        .unwrap();
        assert_eq!(r.probes.len(), 2);
        match &r.probes[0].check {
            Check::Http {
                path,
                addr,
                headers,
                ..
            } => {
                assert_eq!(path, "/healthz");
                assert_eq!(addr.port(), 9000);
                assert_eq!(headers.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        assert!(!r.probes[0].aggressive);
        assert_eq!(r.probes[0].timeout, Duration::from_secs(2));
        assert!(matches!(r.probes[1].check, Check::Grpc { .. }));
        assert!(Readiness::parse(Some("{"), false, 8080, false, Duration::from_millis(5)).is_err());
    }

    #[tokio::test]
    async fn success_threshold_only_counts_in_aggressive_mode() {
        let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = app.local_addr().unwrap().port();
        let spec = format!(
            r#"{{"tcpSocket":{{"port":{port}}},"periodSeconds":1,"timeoutSeconds":1,"successThreshold":3}}"#
        );
        let r =
            Readiness::parse(Some(&spec), false, port, false, Duration::from_millis(5)).unwrap();
        assert!(
            r.check().await,
            "one success is ready when the kubelet keeps the count"
        );
    }

    #[tokio::test]
    async fn aggressive_probing_waits_for_the_port_to_open() {
        let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let r = Readiness::parse(
            Some(&format!(r#"{{"tcpSocket":{{"port":{port}}}}}"#)),
            false,
            port,
            false,
            Duration::from_millis(5),
        )
        .unwrap();
        let checking = tokio::spawn({
            let r = r.clone();
            async move { r.check().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _app = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        assert!(checking.await.unwrap(), "ready once the port opens");
        assert!(r.check().await);
    }
}
