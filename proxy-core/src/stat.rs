//! The autoscaler's protobuf messages (`pkg/autoscaler/metrics/stat.proto` upstream).

/// One pod's statistics for one window, as scraped from the queue-proxy or pushed by the activator.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Stat {
    /// The reporting pod.
    #[prost(string, tag = "1")]
    pub pod_name: String,
    /// Time-weighted average of requests in flight, proxied ones included.
    #[prost(double, tag = "2")]
    pub average_concurrent_requests: f64,
    /// The same for requests forwarded by the activator.
    #[prost(double, tag = "3")]
    pub average_proxied_concurrent_requests: f64,
    /// Arrivals per second.
    #[prost(double, tag = "4")]
    pub request_count: f64,
    /// Arrivals forwarded by the activator, per second.
    #[prost(double, tag = "5")]
    pub proxied_request_count: f64,
    /// Seconds since the reporter started.
    #[prost(double, tag = "6")]
    pub process_uptime: f64,
    /// Unix time in seconds; the queue-proxy leaves it unset.
    #[prost(int64, tag = "7")]
    pub timestamp: i64,
}

/// A [`Stat`] for a revision, as the activator sends it over its websocket.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireStatMessage {
    /// The revision's namespace.
    #[prost(string, tag = "1")]
    pub namespace: String,
    /// The revision's name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Its statistics.
    #[prost(message, optional, tag = "3")]
    pub stat: Option<Stat>,
}

/// A batch of [`WireStatMessage`]s: one binary websocket frame.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireStatMessages {
    /// The batch.
    #[prost(message, repeated, tag = "1")]
    pub messages: Vec<WireStatMessage>,
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn encodes_as_the_autoscaler_expects() {
        let stat = Stat {
            pod_name: "p".into(),
            request_count: 1.0,
            ..Default::default()
        };
        // field 1 (string "p"), field 4 (double 1.0); unset fields are omitted.
        assert_eq!(
            stat.encode_to_vec(),
            [0x0a, 0x01, b'p', 0x21, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f]
        );
        assert_eq!(Stat::decode(&stat.encode_to_vec()[..]).unwrap(), stat);
    }
}
