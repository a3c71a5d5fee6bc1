//! Error types of the data path; each failure has its own type so the edge can pick a status.

use std::{error::Error as StdError, fmt, time::Duration};

/// The error type every layer returns.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Returns `true` if `err` or one of its sources is an `E`.
pub fn is_caused_by<E: StdError + 'static>(err: &(dyn StdError + 'static)) -> bool {
    cause_ref::<E>(err).is_some()
}

/// Walks the source chain of `err` and returns the first `E`.
pub fn cause_ref<'a, E: StdError + 'static>(
    mut err: &'a (dyn StdError + 'static),
) -> Option<&'a E> {
    loop {
        if let Some(e) = err.downcast_ref::<E>() {
            return Some(e);
        }
        err = err.source()?;
    }
}

/// The breaker's queue is full; answered with 503 `pending request queue full`.
#[derive(Debug, Default)]
pub struct QueueFull(pub(crate) ());

impl fmt::Display for QueueFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad("pending request queue full")
    }
}

impl StdError for QueueFull {}

/// Which of Knative's timeouts expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutKind {
    /// The revision timeout: the longest a request may take, in total.
    Request,
    /// No response headers arrived in time.
    ResponseStart,
    /// Nothing was written to the response for too long.
    Idle,
}

/// A timeout expired before the response started; answered with 504.
#[derive(Debug)]
pub struct Timeout {
    /// Which timeout fired.
    pub kind: TimeoutKind,
    /// Its configured length.
    pub after: Duration,
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            TimeoutKind::Request => "request timeout",
            TimeoutKind::ResponseStart => "response start timeout",
            TimeoutKind::Idle => "idle timeout",
        };
        write!(f, "{what} after {:?}", self.after)
    }
}

impl StdError for Timeout {}

/// The upstream could not be reached or failed mid-exchange; answered with 502.
///
/// The message follows Go's dialer (`dial tcp 127.0.0.1:8080: connect: connection refused`), which
/// is what Knative operators grep for.
#[derive(Debug)]
pub struct Upstream {
    message: String,
    /// Nothing of the request was sent: safe to retry elsewhere.
    pub before_send: bool,
    source: Option<BoxError>,
}

impl Upstream {
    /// A connect failure: nothing of the request left this process.
    pub fn connect(addr: &str, err: std::io::Error) -> Self {
        let reason = match err.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
            std::io::ErrorKind::ConnectionReset => "connection reset by peer".to_owned(),
            std::io::ErrorKind::TimedOut => "i/o timeout".to_owned(),
            _ => err.to_string(),
        };
        Self {
            message: format!("dial tcp {addr}: connect: {reason}"),
            before_send: true,
            source: Some(err.into()),
        }
    }

    /// A failure after the request was handed to the connection.
    pub fn exchange(err: hyper::Error) -> Self {
        let message = if err.is_incomplete_message() || err.is_canceled() {
            "EOF".to_owned()
        } else {
            err.to_string()
        };
        Self {
            message,
            before_send: false,
            source: Some(err.into()),
        }
    }

    /// Any other failure, described by `message`.
    pub fn other(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            before_send: false,
            source: None,
        }
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.message)
    }
}

impl StdError for Upstream {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// The client went away before the response started; nothing is written and nothing is logged
/// above debug (upstream #14818).
#[derive(Debug, Default)]
pub struct Canceled(pub(crate) ());

impl fmt::Display for Canceled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad("context canceled")
    }
}

impl StdError for Canceled {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_error_reads_like_go() {
        let err = Upstream::connect(
            "127.0.0.1:8080",
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        );
        assert_eq!(
            err.to_string(),
            "dial tcp 127.0.0.1:8080: connect: connection refused"
        );
        assert!(err.before_send);
    }

    #[test]
    fn causes_are_found_through_sources() {
        let inner: BoxError = Box::<QueueFull>::default();
        let outer = Upstream {
            message: "x".into(),
            before_send: false,
            source: Some(inner),
        };
        assert!(is_caused_by::<QueueFull>(&outer));
        assert!(!is_caused_by::<Timeout>(&outer));
    }
}
