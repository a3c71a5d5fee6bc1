//! The queue-proxy's environment contract, parsed into typed settings.
//!
//! Variable names, requiredness and number syntax follow upstream's `envconfig` struct: a
//! required variable must be present (it may be empty when it is a string); integers take Go's
//! `ParseInt(v, 0, …)` syntax, booleans Go's `ParseBool`. Every bad key is reported, then start-up
//! fails once.

use std::{collections::HashMap, fmt, path::PathBuf, time::Duration};

use proxy_core::timeout::Timeouts;

/// Where variables come from: the process environment, or a map in tests.
pub(crate) trait Strings {
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
pub(crate) struct Env;

impl Strings for Env {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var_os(key).map(|v| v.to_string_lossy().into_owned())
    }
}

impl Strings for HashMap<&str, &str> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).map(|v| (*v).to_owned())
    }
}

/// Largest `CONTAINER_CONCURRENCY` (the breaker keeps 11 × cc places); Knative's own ceiling,
/// `container-concurrency-max-limit`, defaults to 1000.
pub(crate) const MAX_CONTAINER_CONCURRENCY: i64 = 1 << 40;
/// Default of `QUEUE_METRICS_PORT`: the autoscaler scrapes 9090.
pub(crate) const DEFAULT_METRICS_PORT: u16 = 9090;
/// Default of `QUEUE_ADMIN_PORT`: the pre-stop hook calls 8022.
pub(crate) const DEFAULT_ADMIN_PORT: u16 = 8022;
/// Default of `QUEUE_DRAIN_QUIET_SECONDS`: upstream's fixed 30 s.
pub(crate) const DEFAULT_DRAIN_QUIET: Duration = Duration::from_secs(30);
/// Default of `QUEUE_CERTS_DIR`.
pub(crate) const DEFAULT_CERTS_DIR: &str = "/var/lib/knative/certs";
/// Default of `QUEUE_AGGRESSIVE_PROBE_INTERVAL_MS`: 5 ms (upstream polls every 50 ms).
pub(crate) const DEFAULT_AGGRESSIVE_PROBE_INTERVAL: Duration = Duration::from_millis(5);
/// The user-metrics Prometheus port when `OBSERVABILITY_CONFIG` asks for Prometheus.
pub(crate) const DEFAULT_USER_METRICS_PORT: u16 = 9091;

/// Everything the queue-proxy needs to start.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) container_concurrency: usize,
    pub(crate) serving_port: u16,
    /// Parsed only when TLS is served, as upstream, which never listens on it otherwise.
    pub(crate) tls_port: String,
    pub(crate) user_port: u16,
    pub(crate) timeouts: Timeouts,
    pub(crate) readiness_probe: Option<String>,
    pub(crate) http2_auto_detection: bool,
    pub(crate) multi_container_probes: bool,
    pub(crate) logging_config: String,
    pub(crate) logging_level: String,
    pub(crate) namespace: String,
    pub(crate) revision: String,
    pub(crate) pod: String,
    pub(crate) metrics_port: u16,
    pub(crate) admin_port: u16,
    pub(crate) drain_quiet: Duration,
    pub(crate) certs_dir: PathBuf,
    pub(crate) aggressive_probe_interval: Duration,
    pub(crate) worker_threads: Option<usize>,
    pub(crate) user_metrics: Option<(String, u16)>,
    /// `OBSERVABILITY_CONFIG` asks for a request log, which is not written (a warning says so).
    pub(crate) request_log_asked: bool,
    pub(crate) tls: TlsEnv,
}

/// `QUEUE_PROXY_TLS_*`, read only when TLS is served.
#[derive(Clone, Debug, Default)]
pub(crate) struct TlsEnv {
    pub(crate) min_version: String,
    pub(crate) max_version: String,
    pub(crate) cipher_suites: String,
    pub(crate) curve_preferences: String,
}

/// Every problem found, one per key.
#[derive(Debug)]
pub(crate) struct ConfigError(pub(crate) Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

struct Reader<'a, S> {
    src: &'a S,
    errors: Vec<String>,
}

impl<S: Strings> Reader<'_, S> {
    fn required(&mut self, key: &str) -> String {
        self.src.get(key).unwrap_or_else(|| {
            self.errors
                .push(format!("required key {key} missing value"));
            String::new()
        })
    }

    fn int(&mut self, key: &str, required: bool) -> Option<i64> {
        let raw = match self.src.get(key) {
            Some(v) => v,
            None if required => {
                self.errors
                    .push(format!("required key {key} missing value"));
                return None;
            }
            None => return None,
        };
        match parse_go_int(&raw) {
            Some(v) => Some(v),
            None => {
                self.errors.push(format!("{key}: invalid integer {raw:?}"));
                None
            }
        }
    }

    fn non_negative(&mut self, key: &str, required: bool) -> Option<u64> {
        let v = self.int(key, required)?;
        u64::try_from(v)
            .map_err(|_| {
                self.errors
                    .push(format!("{key}: must not be negative, got {v}"))
            })
            .ok()
    }

    fn port(&mut self, key: &str, default: Option<u16>) -> u16 {
        let raw = match (self.src.get(key), default) {
            (Some(v), _) => v,
            (None, Some(d)) => return d,
            (None, None) => {
                self.errors
                    .push(format!("required key {key} missing value"));
                return 0;
            }
        };
        match raw.trim().parse::<u16>() {
            Ok(p) => p,
            Err(_) => {
                self.errors.push(format!("{key}: invalid port {raw:?}"));
                0
            }
        }
    }

    fn boolean(&mut self, key: &str) -> bool {
        let Some(raw) = self.src.get(key) else {
            return false;
        };
        match raw.as_str() {
            "1" | "t" | "T" | "TRUE" | "true" | "True" => true,
            "0" | "f" | "F" | "FALSE" | "false" | "False" => false,
            _ => {
                self.errors.push(format!("{key}: invalid boolean {raw:?}"));
                false
            }
        }
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)`: optional sign, then `0x`, `0o`, `0b` or a leading `0`
/// (octal) prefix, underscores only with a prefix.
pub(crate) fn parse_go_int(s: &str) -> Option<i64> {
    let (neg, digits) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = digits.to_ascii_lowercase();
    let (radix, body, prefixed) = if let Some(r) = lower.strip_prefix("0x") {
        (16, r.to_owned(), true)
    } else if let Some(r) = lower.strip_prefix("0o") {
        (8, r.to_owned(), true)
    } else if let Some(r) = lower.strip_prefix("0b") {
        (2, r.to_owned(), true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower[1..].to_owned(), true)
    } else {
        (10, lower, false)
    };
    if body.is_empty()
        || (!prefixed && body.contains('_'))
        || body.starts_with('+')
        || body.starts_with('-')
    {
        return None;
    }
    let v = i64::from_str_radix(&body.replace('_', ""), radix).ok()?;
    Some(if neg { -v } else { v })
}

impl Config {
    pub(crate) fn from_env(src: &impl Strings) -> Result<Self, ConfigError> {
        let mut r = Reader {
            src,
            errors: Vec::new(),
        };
        let cc = r.int("CONTAINER_CONCURRENCY", true).unwrap_or(0);
        if cc > MAX_CONTAINER_CONCURRENCY {
            r.errors.push(format!(
                "CONTAINER_CONCURRENCY: {cc} is above the largest supported value, {MAX_CONTAINER_CONCURRENCY}"
            ));
        }
        let serving_port = r.port("QUEUE_SERVING_PORT", None);
        let tls_port = r.required("QUEUE_SERVING_TLS_PORT");
        let user_port = r.port("USER_PORT", None);
        let request = r
            .non_negative("REVISION_TIMEOUT_SECONDS", true)
            .unwrap_or(300);
        let response_start = r
            .non_negative("REVISION_RESPONSE_START_TIMEOUT_SECONDS", false)
            .unwrap_or(0);
        let idle = r
            .non_negative("REVISION_IDLE_TIMEOUT_SECONDS", false)
            .unwrap_or(0);
        let readiness_probe = src.get("SERVING_READINESS_PROBE").filter(|s| !s.is_empty());
        let http2_auto_detection = r.boolean("ENABLE_HTTP2_AUTO_DETECTION");
        let multi_container_probes = r.boolean("ENABLE_MULTI_CONTAINER_PROBES");
        // Accepted for compatibility: hyper already reads request bodies while responding.
        let _full_duplex = r.boolean("ENABLE_HTTP_FULL_DUPLEX");
        let logging_config = r.required("SERVING_LOGGING_CONFIG");
        let logging_level = r.required("SERVING_LOGGING_LEVEL");
        let namespace = r.required("SERVING_NAMESPACE");
        let _configuration = r.required("SERVING_CONFIGURATION");
        let revision = r.required("SERVING_REVISION");
        let pod = r.required("SERVING_POD");
        let _pod_ip = r.required("SERVING_POD_IP");
        let metrics_port = r.port("QUEUE_METRICS_PORT", Some(DEFAULT_METRICS_PORT));
        let admin_port = r.port("QUEUE_ADMIN_PORT", Some(DEFAULT_ADMIN_PORT));
        let drain_quiet = r
            .non_negative("QUEUE_DRAIN_QUIET_SECONDS", false)
            .map_or(DEFAULT_DRAIN_QUIET, Duration::from_secs);
        let certs_dir = src
            .get("QUEUE_CERTS_DIR")
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_CERTS_DIR.to_owned())
            .into();
        let aggressive_probe_interval = r
            .non_negative("QUEUE_AGGRESSIVE_PROBE_INTERVAL_MS", false)
            .map_or(DEFAULT_AGGRESSIVE_PROBE_INTERVAL, |ms| {
                Duration::from_millis(ms.max(1))
            });
        let worker_threads = r
            .non_negative("QUEUE_WORKER_THREADS", false)
            .map(|n| usize::try_from(n.max(1)).unwrap_or(1));
        let observability = src
            .get("OBSERVABILITY_CONFIG")
            .filter(|s| !s.trim().is_empty());
        let request_log_asked = observability.as_deref().is_some_and(|raw| {
            serde_json::from_str::<serde_json::Value>(raw)
                .ok()
                .and_then(|v| {
                    v.get("enableRequestLog")
                        .and_then(serde_json::Value::as_bool)
                })
                == Some(true)
        });
        let user_metrics = match observability {
            None => None,
            Some(raw) => match observability_prometheus(&raw) {
                Ok(false) => None,
                Ok(true) => {
                    let host = src.get("METRICS_PROMETHEUS_HOST").unwrap_or_default();
                    let port = r.port("METRICS_PROMETHEUS_PORT", Some(DEFAULT_USER_METRICS_PORT));
                    Some((host, port))
                }
                Err(e) => {
                    r.errors.push(format!("OBSERVABILITY_CONFIG: {e}"));
                    None
                }
            },
        };
        let tls = TlsEnv {
            min_version: src.get("QUEUE_PROXY_TLS_MIN_VERSION").unwrap_or_default(),
            max_version: src.get("QUEUE_PROXY_TLS_MAX_VERSION").unwrap_or_default(),
            cipher_suites: src.get("QUEUE_PROXY_TLS_CIPHER_SUITES").unwrap_or_default(),
            curve_preferences: src
                .get("QUEUE_PROXY_TLS_CURVE_PREFERENCES")
                .unwrap_or_default(),
        };
        if request == 0 && r.errors.is_empty() {
            r.errors
                .push("REVISION_TIMEOUT_SECONDS: must be greater than 0".to_owned());
        }
        if !r.errors.is_empty() {
            return Err(ConfigError(r.errors));
        }
        let secs = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        Ok(Self {
            container_concurrency: usize::try_from(cc.max(0)).unwrap_or(usize::MAX),
            serving_port,
            tls_port,
            user_port,
            timeouts: Timeouts {
                request: Duration::from_secs(request),
                response_start: secs(response_start),
                idle: secs(idle),
            },
            readiness_probe,
            http2_auto_detection,
            multi_container_probes,
            logging_config,
            logging_level,
            namespace,
            revision,
            pod,
            metrics_port,
            admin_port,
            drain_quiet,
            certs_dir,
            aggressive_probe_interval,
            worker_threads,
            user_metrics,
            request_log_asked,
            tls,
        })
    }
}

/// Whether `OBSERVABILITY_CONFIG` asks for Prometheus request metrics. Invalid JSON is an error,
/// as upstream (it is fatal there too).
fn observability_prometheus(raw: &str) -> Result<bool, String> {
    let v: serde_json::Value =
        serde_json::from_str(raw).map_err(|e| format!("invalid JSON: {e}"))?;
    Ok(v.pointer("/requestMetrics/protocol")
        .and_then(|p| p.as_str())
        == Some("prometheus"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> HashMap<&'static str, &'static str> {
        HashMap::from([
            ("CONTAINER_CONCURRENCY", "0"),
            ("QUEUE_SERVING_PORT", "8012"),
            ("QUEUE_SERVING_TLS_PORT", "8112"),
            ("USER_PORT", "8080"),
            ("REVISION_TIMEOUT_SECONDS", "300"),
            ("SERVING_LOGGING_CONFIG", ""),
            ("SERVING_LOGGING_LEVEL", ""),
            ("SERVING_NAMESPACE", "default"),
            ("SERVING_CONFIGURATION", ""),
            ("SERVING_REVISION", "hello-00001"),
            ("SERVING_POD", "hello-00001-deployment-abc"),
            ("SERVING_POD_IP", "10.0.0.1"),
        ])
    }

    #[test]
    fn parses_upstream_env_with_defaults() {
        let c = Config::from_env(&base()).unwrap();
        assert_eq!(
            (c.serving_port, c.user_port, c.metrics_port, c.admin_port),
            (8012, 8080, 9090, 8022)
        );
        assert_eq!(c.timeouts.request, Duration::from_secs(300));
        assert_eq!(c.timeouts.response_start, None);
        assert_eq!(c.drain_quiet, Duration::from_secs(30));
        assert_eq!(c.aggressive_probe_interval, Duration::from_millis(5));
        assert!(c.user_metrics.is_none());
    }

    #[test]
    fn every_bad_key_is_named() {
        let mut env = base();
        env.remove("SERVING_POD");
        env.insert("CONTAINER_CONCURRENCY", "ten");
        env.insert("ENABLE_HTTP2_AUTO_DETECTION", "yes");
        env.insert("OBSERVABILITY_CONFIG", "{");
        let err = Config::from_env(&env).unwrap_err().to_string();
        for key in [
            "SERVING_POD",
            "CONTAINER_CONCURRENCY",
            "ENABLE_HTTP2_AUTO_DETECTION",
            "OBSERVABILITY_CONFIG",
        ] {
            assert!(err.contains(key), "{key} missing from {err}");
        }
    }

    #[test]
    fn go_integer_syntax() {
        assert_eq!(parse_go_int("10"), Some(10));
        assert_eq!(parse_go_int("0x1f"), Some(31));
        assert_eq!(parse_go_int("010"), Some(8));
        assert_eq!(parse_go_int("-5"), Some(-5));
        assert_eq!(parse_go_int("1_000"), None);
        assert_eq!(parse_go_int("0x1_0"), Some(16));
        assert_eq!(parse_go_int(""), None);
        assert_eq!(parse_go_int("--1"), None);
    }

    #[test]
    fn prometheus_request_metrics_open_9091() {
        let mut env = base();
        env.insert(
            "OBSERVABILITY_CONFIG",
            r#"{"requestMetrics":{"protocol":"prometheus"}}"#,
        );
        assert_eq!(
            Config::from_env(&env).unwrap().user_metrics,
            Some((String::new(), 9091))
        );
    }
}
