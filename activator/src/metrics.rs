//! Prometheus text for the activator, rendered from live state at each scrape.
//!
//! The names are upstream's OTel instruments as its Prometheus exporter spells them. Nothing is
//! recorded per request: the gauges are read from the throttlers and statistics when scraped.

use std::fmt::Write as _;

use crate::{autoscaler::ConnStats, handler::Health, revisions::Registry};

/// The metrics page.
pub(crate) fn render(registry: &Registry, health: &Health, conn: &ConnStats) -> String {
    let mut revs = registry.all();
    revs.sort_by(|a, b| a.id.cmp(&b.id));
    let mut out = String::with_capacity(512 + revs.len() * 400);
    let gauges: [(&str, &str, &str); 3] = [
        (
            "kn_revision_request_concurrency",
            "gauge",
            "Requests in flight through the activator, waiting or proxied",
        ),
        (
            "kn_revision_request_queued",
            "gauge",
            "Requests waiting for a pod",
        ),
        (
            "kn_revision_request_active",
            "gauge",
            "Requests proxied to a pod",
        ),
    ];
    for (i, (name, kind, help)) in gauges.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for rev in &revs {
            let value = match i {
                0 => rev.stats.concurrency() as usize,
                1 => rev.throttler.waiting(),
                _ => rev.throttler.active(),
            };
            let _ = writeln!(
                out,
                "{name}{{k8s_namespace_name=\"{}\",kn_revision_name=\"{}\"}} {value}",
                rev.id.namespace, rev.id.name
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP kn_activator_stats_conn_reachable Whether the autoscaler is connected\n\
         # TYPE kn_activator_stats_conn_reachable gauge\n\
         kn_activator_stats_conn_reachable{{peer=\"autoscaler\"}} {}",
        u8::from(health.autoscaler_connected())
    );
    let _ = writeln!(
        out,
        "# HELP kn_activator_stats_conn_errors_total Failed or lost autoscaler connections\n\
         # TYPE kn_activator_stats_conn_errors_total counter\n\
         kn_activator_stats_conn_errors_total{{peer=\"autoscaler\"}} {}",
        conn.errors.load(std::sync::atomic::Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP activator_pending_requests_total Requests waiting across all revisions\n\
         # TYPE activator_pending_requests_total gauge\n\
         activator_pending_requests_total {}",
        registry.waiting_total()
    );
    out
}
