//! The activator binary with its file source (and a fake Kubernetes API server), against real
//! sockets: fake pods on their own loopback addresses, real queue-proxies where the whole path
//! matters.

mod smoke;
