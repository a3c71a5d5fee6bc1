//! The activator's settings: upstream's environment contract plus our own flags.
//!
//! Started as upstream's Deployment starts it (no arguments), the environment decides everything
//! and the Kubernetes source is used. Each of our flags also reads an environment variable, so a
//! manifest can set it without changing the container's arguments. A bad value exits 1 naming
//! the flag or variable.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::Parser;

/// Default of `--max-pending-requests`: waiting requests per revision.
pub(crate) const DEFAULT_MAX_PENDING: usize = 10_000;
/// Default of `--max-pending-total`: waiting requests across revisions.
pub(crate) const DEFAULT_MAX_PENDING_TOTAL: usize = 50_000;

/// Buffers requests while a revision scales from zero and forwards them straight to its pods.
#[derive(Debug, Parser)]
#[command(name = "activator", version, about)]
pub(crate) struct Args {
    /// Read revisions and their endpoints from this JSON file instead of Kubernetes.
    #[arg(
        long,
        value_name = "FILE",
        env = "ACTIVATOR_REVISIONS_FILE",
        conflicts_with = "local"
    )]
    pub(crate) revisions: Option<PathBuf>,

    /// Local mode: run the services of this TOML file on this machine, scaling their instances
    /// (each an app behind a queue-proxy) from zero on demand.
    #[arg(long, value_name = "FILE", env = "ACTIVATOR_LOCAL_FILE")]
    pub(crate) local: Option<PathBuf>,

    /// The queue-proxy binary for local mode (default: beside this executable).
    #[arg(long, value_name = "PATH", env = "ACTIVATOR_QUEUE_PROXY")]
    pub(crate) queue_proxy: Option<PathBuf>,

    /// The autoscaler's websocket; default
    /// `ws://autoscaler.<SYSTEM_NAMESPACE>.svc.<cluster domain>:8080`.
    #[arg(long, value_name = "URL", env = "ACTIVATOR_AUTOSCALER_URL")]
    pub(crate) autoscaler_url: Option<String>,

    /// Report ready even while the autoscaler is unreachable (upstream is unready then).
    #[arg(long, env = "ACTIVATOR_READY_WITHOUT_AUTOSCALER")]
    pub(crate) ready_without_autoscaler: bool,

    /// Requests that may wait per revision; more get 503 at once.
    #[arg(long, value_name = "N", env = "MAX_PENDING_REQUESTS", default_value_t = DEFAULT_MAX_PENDING)]
    pub(crate) max_pending_requests: usize,

    /// Requests that may wait across all revisions.
    #[arg(long, value_name = "N", env = "MAX_PENDING_TOTAL", default_value_t = DEFAULT_MAX_PENDING_TOTAL)]
    pub(crate) max_pending_total: usize,

    /// After SIGTERM, how long traffic is still accepted before the listeners close, in seconds
    /// (upstream's fixed 45 s).
    #[arg(
        long,
        value_name = "SECONDS",
        env = "ACTIVATOR_DRAIN_SECONDS",
        default_value_t = 45
    )]
    pub(crate) drain_seconds: u64,

    /// HTTP/1.1 and h2c port.
    #[arg(
        long,
        value_name = "PORT",
        env = "ACTIVATOR_HTTP1_PORT",
        default_value_t = 8012
    )]
    pub(crate) http1_port: u16,

    /// The second HTTP/1.1 and h2c port (h2c revisions' public services point here).
    #[arg(
        long,
        value_name = "PORT",
        env = "ACTIVATOR_H2C_PORT",
        default_value_t = 8013
    )]
    pub(crate) h2c_port: u16,

    /// Prometheus metrics port.
    #[arg(
        long,
        value_name = "PORT",
        env = "ACTIVATOR_METRICS_PORT",
        default_value_t = 9090
    )]
    pub(crate) metrics_port: u16,

    /// How often a pod that is not yet healthy is probed while requests wait for its revision,
    /// in milliseconds (`PROBE_FREQUENCY` is the pace when nobody waits).
    #[arg(
        long,
        value_name = "MS",
        env = "ACTIVATOR_EAGER_PROBE_MS",
        default_value_t = 2
    )]
    pub(crate) eager_probe_ms: u64,

    /// Longest a TCP connect to a pod may take, in milliseconds; a pod that does not answer in
    /// time is taken out and the request goes to another one.
    #[arg(
        long,
        value_name = "MS",
        env = "ACTIVATOR_CONNECT_TIMEOUT_MS",
        default_value_t = 2000
    )]
    pub(crate) connect_timeout_ms: u64,

    /// Worker threads (default: from the cgroup CPU limit).
    #[arg(long, value_name = "N", env = "ACTIVATOR_WORKER_THREADS")]
    pub(crate) worker_threads: Option<usize>,

    /// The cluster domain (default: from /etc/resolv.conf's search path, else cluster.local).
    #[arg(long, value_name = "DOMAIN", env = "ACTIVATOR_CLUSTER_DOMAIN")]
    pub(crate) cluster_domain: Option<String>,
}

/// Everything the activator needs, from the arguments and upstream's variables.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) args: Args,
    pub(crate) pod_name: String,
    pub(crate) pod_ip: Option<IpAddr>,
    pub(crate) system_namespace: String,
    pub(crate) cluster_domain: String,
    pub(crate) probe_frequency: Duration,
    pub(crate) probe_timeout: Duration,
    pub(crate) max_idle_per_host: usize,
    pub(crate) log_level: &'static str,
}

fn var(key: &str) -> Option<String> {
    std::env::var_os(key).map(|v| v.to_string_lossy().into_owned())
}

impl Config {
    /// Reads the environment. Problems are reported all at once, each naming its key.
    pub(crate) fn load(args: Args) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let kubernetes = args.revisions.is_none() && args.local.is_none();
        let mut required = |key: &str| match var(key).filter(|v| !v.is_empty()) {
            Some(v) => v,
            None => {
                if kubernetes {
                    problems.push(format!("{key}: required but not set"));
                }
                String::new()
            }
        };
        let pod_name = required("POD_NAME");
        let pod_ip_text = required("POD_IP");
        let mut pod_ip = None;
        if !pod_ip_text.is_empty() {
            match pod_ip_text.parse() {
                Ok(ip) => pod_ip = Some(ip),
                Err(_) => problems.push(format!("POD_IP: {pod_ip_text:?} is not an IP address")),
            }
        }
        let pod_name = if pod_name.is_empty() {
            "activator".to_owned()
        } else {
            pod_name
        };
        let mut duration = |key: &str, default: Duration| match var(key) {
            None => default,
            Some(v) => match go_duration(&v) {
                Some(d) if !d.is_zero() => d,
                _ => {
                    problems.push(format!(
                        "{key}: {v:?} is not a positive duration (e.g. 200ms, 1.5s)"
                    ));
                    default
                }
            },
        };
        let probe_frequency = duration("PROBE_FREQUENCY", Duration::from_millis(200));
        let probe_timeout = duration("PROBE_TIMEOUT", Duration::from_millis(300));
        let max_idle_per_host = match var("MAX_IDLE_PROXY_CONNS_PER_HOST") {
            None => 100,
            Some(v) => v.trim().parse().unwrap_or_else(|_| {
                problems.push(format!(
                    "MAX_IDLE_PROXY_CONNS_PER_HOST: {v:?} is not a number"
                ));
                100
            }),
        };
        if let Some(v) = var("MAX_IDLE_PROXY_CONNS")
            && v.trim().parse::<usize>().is_err()
        {
            problems.push(format!("MAX_IDLE_PROXY_CONNS: {v:?} is not a number"));
        }
        if args.max_pending_requests == 0 || args.max_pending_total == 0 {
            problems.push("MAX_PENDING_REQUESTS / MAX_PENDING_TOTAL: must be at least 1".into());
        }
        if args.connect_timeout_ms == 0 {
            problems.push("ACTIVATOR_CONNECT_TIMEOUT_MS: must be at least 1".into());
        }
        if args.eager_probe_ms == 0 {
            problems.push("ACTIVATOR_EAGER_PROBE_MS: must be at least 1".into());
        }
        let system_namespace = var("SYSTEM_NAMESPACE")
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "knative-serving".to_owned());
        let cluster_domain = args.cluster_domain.clone().unwrap_or_else(|| {
            cluster_domain_from(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
        });
        let log_level = proxy_core::log::level(&var("ACTIVATOR_LOG_LEVEL").unwrap_or_default(), "");
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            args,
            pod_name,
            pod_ip,
            system_namespace,
            cluster_domain,
            probe_frequency,
            probe_timeout,
            max_idle_per_host,
            log_level,
        })
    }

    /// The autoscaler's websocket address.
    pub(crate) fn autoscaler_url(&self) -> String {
        self.args.autoscaler_url.clone().unwrap_or_else(|| {
            format!(
                "ws://autoscaler.{}.svc.{}:8080",
                self.system_namespace, self.cluster_domain
            )
        })
    }
}

/// The cluster domain from a resolv.conf: the search entry that follows `svc.`, as Knative's
/// `network.GetClusterDomainName` finds it.
pub(crate) fn cluster_domain_from(resolv: &str) -> String {
    for line in resolv.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("search") {
            continue;
        }
        for w in words {
            if let Some(domain) = w.strip_prefix("svc.")
                && !domain.is_empty()
            {
                return domain.trim_end_matches('.').to_owned();
            }
        }
    }
    "cluster.local".to_owned()
}

/// Parses Go's `time.ParseDuration` syntax: a sequence of decimal numbers with units (`ns`,
/// `us`/`µs`, `ms`, `s`, `m`, `h`), e.g. `300ms` or `1m30s`. Negative durations are refused.
pub(crate) fn go_duration(s: &str) -> Option<Duration> {
    let s = s.trim().strip_prefix('+').unwrap_or(s.trim());
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        if num.is_empty() || num == "." {
            return None;
        }
        let value: f64 = num.parse().ok()?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let nanos = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += value * nanos;
        rest = next;
    }
    Some(Duration::from_nanos(total as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(go_duration("0"), Some(Duration::ZERO));
        assert_eq!(go_duration("10"), None);
        assert_eq!(go_duration("-1s"), None);
        assert_eq!(go_duration("fast"), None);
    }

    #[test]
    fn cluster_domain_comes_from_the_search_path() {
        let resolv =
            "nameserver 10.0.0.10\nsearch ns.svc.example.org svc.example.org example.org\n";
        assert_eq!(cluster_domain_from(resolv), "example.org");
        assert_eq!(cluster_domain_from("nameserver 1.1.1.1\n"), "cluster.local");
    }
}
