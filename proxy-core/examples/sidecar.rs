//! A small sidecar assembled from proxy-core's layers: a breaker, statistics, timeouts and the
//! edge, in front of one upstream.
//!
//! ```text
//! cargo run -p proxy-core --example sidecar -- 127.0.0.1:8012 127.0.0.1:8080 10
//! ```
//! listens on the first address, forwards to the second, and lets 10 requests run at once (110
//! in flight). Every second it prints the window's statistics; Ctrl-C drains and exits.

use std::{net::SocketAddr, time::Duration};

use proxy_core::{
    breaker::{Breaker, BreakerLayer},
    client::{Client, ClientConfig},
    drain::Drain,
    edge::{EdgeLayer, Texts},
    proxy::Proxy,
    server::{self, ConnInfo, Server, ServerConfig},
    stats::{RequestStats, StatsLayer},
    timeout::{TimeoutLayer, Timeouts},
};
use tokio::time::Instant;
use tower::ServiceBuilder;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:8012".into())
        .parse()?;
    let upstream: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:8080".into())
        .parse()?;
    let concurrency: usize = args.next().map_or(Ok(0), |s| s.parse())?;

    proxy_core::runtime::raise_nofile_limit()?;
    let rt = proxy_core::runtime::build(proxy_core::runtime::worker_threads())?;
    rt.block_on(async move {
        let drain = Drain::new();
        let stats = RequestStats::new(Instant::now());
        let proxy = Proxy::new(Client::new(upstream, ClientConfig::default()));
        let layers = ServiceBuilder::new()
            .layer(EdgeLayer::new(drain.clone(), Texts::default()))
            .layer(TimeoutLayer::new(Timeouts {
                request: Duration::from_secs(60),
                ..Timeouts::default()
            }))
            .layer(StatsLayer::new(stats.clone()))
            .layer(BreakerLayer::new(Breaker::new(concurrency)));
        let make = move |conn: ConnInfo| layers.service(proxy.with_peer(conn.remote.ip()));

        let listener = server::bind(listen)?;
        println!("listening on {listen}, forwarding to {upstream}");
        let serving = tokio::spawn(Server::new(&ServerConfig::default()).serve(
            listener,
            make,
            drain.clone(),
        ));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                let now = tick.tick().await;
                let r = stats.report(now);
                if r.request_count > 0.0 {
                    println!(
                        "concurrency {:.2}, requests {}",
                        r.average_concurrency, r.request_count
                    );
                }
            }
        });

        tokio::signal::ctrl_c().await?;
        drain.start();
        let _ = tokio::time::timeout(Duration::from_secs(30), drain.idle()).await;
        serving.abort();
        Ok(())
    })
}
