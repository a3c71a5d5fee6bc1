//! Tower layers and hyper plumbing for Knative-compatible serverless data planes.
//!
//! The pieces compose into a sidecar (see `examples/sidecar.rs`) or an activator:
//!
//! * [`server`] binds listeners (backlog from `somaxconn`) and serves HTTP/1.1 and h2c on one port,
//!   with a graceful drain that also waits for upgraded connections and HTTP/2 streams.
//! * [`client`] is a pooled upstream client that mirrors the inbound protocol; [`h1`] is its
//!   HTTP/1.1 exchange, driven in the request's own task.
//! * [`proxy`] forwards a request through the client: hop-by-hop headers, `X-Forwarded-For`,
//!   upgrades (websockets) and trailers.
//! * [`breaker`], [`stats`] and [`timeout`] are the per-request layers: the containerConcurrency
//!   breaker, the autoscaler's concurrency statistics, and Knative's three timeouts.
//! * [`edge`] turns every error into a response in one place and runs upgraded tunnels.
//! * [`headers`] holds Knative's header vocabulary: probe classification and the `Forwarded` shim.
//! * [`probe`] checks a backend's readiness over TCP, HTTP or gRPC health.
//! * [`log`] writes Knative's JSON log lines.
//! * [`runtime`] sizes the Tokio runtime from the cgroup CPU limit and raises the open-files limit.
//! * [`stat`] is the autoscaler's protobuf wire format.
//! * [`throttler`] admits requests to a revision's pods: per-pod concurrency, a bounded wait queue
//!   released the moment capacity appears, and Knative's load-balancing policies.

pub mod body;
pub mod breaker;
pub mod client;
pub mod drain;
pub mod edge;
pub mod error;
pub mod h1;
pub mod headers;
pub mod log;
pub mod probe;
pub mod proxy;
pub mod runtime;
pub mod server;
pub mod stat;
pub mod stats;
pub mod throttler;
pub mod timeout;

pub use error::BoxError;
