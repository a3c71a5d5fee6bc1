//! The activator binary with its file source (and a fake Kubernetes API server), against real
//! sockets: fake pods on their own loopback addresses, real queue-proxies where the whole path
//! matters.

mod autoscaler;
mod cold_start;
mod drain;
mod kube;
mod local;
mod mesh;
mod protocols;
mod reload;
mod retry;
mod routing;
mod smoke;
