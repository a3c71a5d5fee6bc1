//! The sample app for local mode: answers every request with `Hello World!` on `$PORT`.
//!
//! Small and quick to start on purpose: a cold start measured with it is mostly the data plane's.
//! `?sleep=MS` holds the answer for that long, as Knative's autoscaling sample does, to make load.

use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let port: u16 = match std::env::var("PORT").map(|p| p.parse()) {
        Ok(Ok(p)) => p,
        Ok(Err(_)) => {
            eprintln!("hello: PORT is not a port number");
            std::process::exit(1);
        }
        Err(_) => 8080,
    };
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    eprintln!("hello: listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                let sleep = req
                    .uri()
                    .query()
                    .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("sleep=")))
                    .and_then(|ms| ms.parse::<u64>().ok());
                if let Some(ms) = sleep {
                    tokio::time::sleep(std::time::Duration::from_millis(ms.min(60_000))).await;
                }
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                    b"Hello World!\n",
                ))))
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
