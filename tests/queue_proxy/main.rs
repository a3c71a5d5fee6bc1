//! The queue-proxy binary, started as upstream's controller starts it, against real sockets.

mod breaker;
mod drain;
mod env;
mod headers;
mod probes;
mod protocols;
mod stats;
mod timeouts;
mod tls;
