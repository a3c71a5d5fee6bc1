//! The queue-proxy binary, started as upstream's controller starts it, against real sockets.

mod probes;
