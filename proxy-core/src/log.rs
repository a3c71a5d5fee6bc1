//! Structured logs shaped like upstream's zap JSON lines, shared by the binaries.

use std::{fmt, time::SystemTime};

use serde_json::{Map, Value};
use tracing::{Event, Level, Subscriber, field::Field};
use tracing_subscriber::{
    EnvFilter,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// Formats each event as one JSON object with Knative's keys.
struct KnativeJson {
    logger: &'static str,
    key: String,
    pod: String,
}

impl<S, N> FormatEvent<S, N> for KnativeJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields(Map::new());
        event.record(&mut fields);
        let mut out = Map::new();
        let severity = match *event.metadata().level() {
            Level::ERROR => "ERROR",
            Level::WARN => "WARNING",
            Level::INFO => "INFO",
            _ => "DEBUG",
        };
        out.insert("severity".into(), severity.into());
        out.insert("timestamp".into(), rfc3339_now().into());
        out.insert("logger".into(), self.logger.into());
        out.insert(
            "caller".into(),
            event.metadata().module_path().unwrap_or("").into(),
        );
        out.insert(
            "message".into(),
            fields
                .0
                .remove("message")
                .unwrap_or(Value::String(String::new())),
        );
        out.insert("knative.dev/key".into(), self.key.clone().into());
        out.insert("knative.dev/pod".into(), self.pod.clone().into());
        out.extend(fields.0);
        writeln!(writer, "{}", Value::Object(out))
    }
}

struct Fields(Map<String, Value>);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), format!("{value:?}").into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
}

/// The level from `SERVING_LOGGING_LEVEL`, else the `level` of `SERVING_LOGGING_CONFIG`'s zap
/// JSON, else info. Zap's names map onto tracing's (`dpanic`, `panic` and `fatal` are errors).
pub fn level(level: &str, config: &str) -> &'static str {
    let from_config = serde_json::from_str::<Value>(config)
        .ok()
        .and_then(|v| v.get("level").and_then(Value::as_str).map(str::to_owned));
    let name = if level.is_empty() {
        from_config.unwrap_or_default()
    } else {
        level.to_owned()
    };
    match name.to_ascii_lowercase().as_str() {
        "debug" => "debug",
        "warn" | "warning" => "warn",
        "error" | "dpanic" | "panic" | "fatal" => "error",
        _ => "info",
    }
}

/// Installs the JSON logger on stdout for the binary's crate `target` (`queue_proxy`,
/// `activator`), the `key` logged with each line (upstream's `knative.dev/key`) and `pod`.
///
/// `logger` is upstream's logger name (`queueproxy`, `activator`).
pub fn init(target: &str, logger: &'static str, level: &str, key: String, pod: String) {
    let filter = EnvFilter::new(format!("warn,{target}={level},proxy_core={level}"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .event_format(KnativeJson { logger, key, pod })
        .with_writer(std::io::stdout)
        .init();
}

/// Now as RFC 3339 in UTC with milliseconds, as zap's ISO8601 encoder writes it.
fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_levels() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_754), (2026, 10, 28));
        assert_eq!(level("", r#"{"level":"debug"}"#), "debug");
        assert_eq!(level("error", r#"{"level":"debug"}"#), "error");
        assert_eq!(level("", "not json"), "info");
    }
}
