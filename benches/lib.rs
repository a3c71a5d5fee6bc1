//! Helpers shared by the benchmark binaries (`bin/`); the criterion benchmarks live under
//! `benches/`.

use std::net::SocketAddr;

/// A port free on `ip` right now (bound, read and released).
pub fn free_port(ip: [u8; 4]) -> u16 {
    std::net::TcpListener::bind(SocketAddr::from((ip, 0)))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The `p` quantile of `v` (nearest rank), 0 for no values; `p = 0.5` is the median.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}
