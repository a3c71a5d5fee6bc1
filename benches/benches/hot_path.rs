//! Micro-benchmarks of the per-request pieces: the breaker, the statistics recorder and the
//! header rewrites. Each should cost a small fraction of the ~10 µs a proxied request costs in
//! the kernel alone.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Request};
use proxy_core::{breaker::Breaker, headers, stats::RequestStats};
use tokio::time::Instant;

fn breaker(c: &mut Criterion) {
    let mut g = c.benchmark_group("breaker");
    let limited = Breaker::new(100);
    g.bench_function("reserve_run_release_cc100", |b| {
        b.iter(|| {
            let permit = limited
                .try_reserve()
                .expect("room")
                .try_run()
                .expect("free slot");
            black_box(permit);
        })
    });
    let full = Breaker::new(1);
    let _held: Vec<_> = (0..11).map(|_| full.try_reserve().unwrap()).collect();
    g.bench_function("reject_when_full", |b| {
        b.iter(|| black_box(full.try_reserve().is_err()))
    });
    g.finish();
}

fn stats(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let stats = RequestStats::new(Instant::now());
    let mut g = c.benchmark_group("stats");
    g.bench_function("arrive_depart", |b| {
        b.iter(|| {
            let in_flight = stats.arrive(false, Instant::now());
            black_box(&in_flight);
        })
    });
    g.bench_function("report", |b| {
        b.iter(|| black_box(stats.report(Instant::now())))
    });
    g.finish();
}

fn typical_request() -> Request<()> {
    Request::get("/api/items?page=2")
        .header("host", "hello.default.example.com")
        .header("user-agent", "Mozilla/5.0")
        .header("accept", "*/*")
        .header("accept-encoding", "gzip")
        .body(())
        .unwrap()
}

fn header_shim(c: &mut Criterion) {
    let mut g = c.benchmark_group("headers");
    g.bench_function("rewrite_for_app_plain", |b| {
        b.iter_batched(
            typical_request,
            |r| black_box(headers::rewrite_for_app(r)),
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("rewrite_for_app_forwarded", |b| {
        b.iter_batched(
            || {
                let mut r = typical_request();
                let h = r.headers_mut();
                h.insert(
                    "x-forwarded-for",
                    HeaderValue::from_static("10.0.0.1, 10.0.0.2"),
                );
                h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
                h.insert(
                    "k-original-host",
                    HeaderValue::from_static("app.example.com"),
                );
                r
            },
            |r| black_box(headers::rewrite_for_app(r)),
            criterion::BatchSize::SmallInput,
        )
    });
    let response_headers = || {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        h.insert("content-length", HeaderValue::from_static("3"));
        h.insert("connection", HeaderValue::from_static("keep-alive"));
        h.insert(
            "date",
            HeaderValue::from_static("Fri, 27 Nov 2026 09:00:00 GMT"),
        );
        h
    };
    g.bench_function("strip_hop_by_hop_response", |b| {
        b.iter_batched(
            response_headers,
            |mut h| {
                headers::strip_hop_by_hop(&mut h);
                black_box(h)
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("classify_request", |b| {
        let r = typical_request();
        b.iter(|| {
            let h = black_box(r.headers());
            black_box((
                headers::is_health_check(h),
                headers::is_network_probe(h),
                headers::is_kubelet_probe(h),
                headers::is_proxied(h),
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, breaker, stats, header_shim);
criterion_main!(benches);
