//! Concurrency statistics to the autoscaler, as protobuf `WireStatMessages` over its websocket.
//!
//! Every second each revision with activity in the window gets one message; the first request
//! of an idle revision sends an immediate "poke" so a scale from zero starts at once. Requests
//! never wait on any of this: they only touch their revision's counters, batches go through a
//! small queue and are dropped while the autoscaler is unreachable, as upstream drops them.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use proxy_core::stat::{Stat, WireStatMessage, WireStatMessages};
use tokio::{sync::mpsc, time::Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    handler::Health,
    revisions::{Registry, RevId, Revision},
};

/// How often statistics are sent.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Upstream's durable connection: 3 s to connect, pings every 10/3 s, 10 s without a word ends it.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
const PING_INTERVAL: Duration = Duration::from_millis(3333);
const READ_DEADLINE: Duration = Duration::from_secs(10);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The connection's state, for readiness and metrics.
#[derive(Debug, Default)]
pub(crate) struct ConnStats {
    pub(crate) errors: AtomicU64,
}

/// Starts the reporter and the connection. `pokes` carries first requests of idle revisions.
pub(crate) fn spawn(
    url: String,
    pod_name: String,
    registry: Registry,
    health: Arc<Health>,
    conn: Arc<ConnStats>,
    pokes: mpsc::Receiver<Arc<Revision>>,
) {
    let (batches_tx, batches) = mpsc::channel(16);
    tokio::spawn(report(pod_name, registry, pokes, batches_tx));
    tokio::spawn(connect_loop(url, health, conn, batches));
}

fn message(pod_name: &str, id: &RevId, concurrency: f64, count: f64) -> WireStatMessage {
    WireStatMessage {
        namespace: id.namespace.clone(),
        name: id.name.clone(),
        stat: Some(Stat {
            pod_name: pod_name.to_owned(),
            average_concurrent_requests: concurrency,
            request_count: count,
            ..Default::default()
        }),
    }
}

async fn report(
    pod_name: String,
    registry: Registry,
    mut pokes: mpsc::Receiver<Arc<Revision>>,
    batches: mpsc::Sender<Bytes>,
) {
    let mut tick = tokio::time::interval(REPORT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Revisions whose poke counted one request the next report must not count again.
    let mut poked: HashSet<RevId> = HashSet::new();
    let send = |messages: Vec<WireStatMessage>| {
        if messages.is_empty() {
            return;
        }
        let bytes = Bytes::from(WireStatMessages { messages }.encode_to_vec());
        if batches.try_send(bytes).is_err() {
            tracing::debug!("statistics batch dropped: the autoscaler connection is behind");
        }
    };
    loop {
        tokio::select! {
            Some(rev) = pokes.recv() => {
                poked.insert(rev.id.clone());
                send(vec![message(&pod_name, &rev.id, 1.0, 1.0)]);
            }
            _ = tick.tick() => {
                let now = Instant::now();
                let mut messages = Vec::new();
                let revisions = registry.all();
                // A revision removed since its poke must not discount a namesake created later.
                poked.retain(|id| revisions.iter().any(|r| r.id == *id));
                for rev in revisions {
                    if !rev.reporting.load(Ordering::Acquire) {
                        continue;
                    }
                    let r = rev.stats.report(now);
                    let (mut concurrency, mut count) = (r.average_concurrency, r.request_count);
                    if poked.remove(&rev.id) {
                        concurrency = (concurrency - 1.0).max(0.0);
                        count = (count - 1.0).max(0.0);
                    }
                    messages.push(message(&pod_name, &rev.id, concurrency, count));
                    // Idle for a whole window: this zero was its last message until the next
                    // request, which pokes again.
                    if r.average_concurrency == 0.0 && rev.stats.concurrency() == 0 {
                        rev.reporting.store(false, Ordering::SeqCst);
                        // A request that arrived meanwhile saw the flag still on and sent no
                        // poke: keep reporting for it.
                        if rev.stats.concurrency() > 0 {
                            rev.reporting.store(true, Ordering::SeqCst);
                        }
                    }
                }
                send(messages);
            }
        }
    }
}

async fn connect_loop(
    url: String,
    health: Arc<Health>,
    conn: Arc<ConnStats>,
    mut batches: mpsc::Receiver<Bytes>,
) {
    let mut backoff = BACKOFF_FIRST;
    loop {
        let attempt = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await;
        let mut ws = match attempt {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => {
                tracing::warn!(%url, error = %e, "cannot reach the autoscaler");
                conn.errors.fetch_add(1, Ordering::Relaxed);
                backoff = wait_while_down(&mut batches, backoff).await;
                continue;
            }
            Err(_) => {
                tracing::warn!(%url, "autoscaler handshake timed out");
                conn.errors.fetch_add(1, Ordering::Relaxed);
                backoff = wait_while_down(&mut batches, backoff).await;
                continue;
            }
        };
        tracing::info!(%url, "connected to the autoscaler");
        health.set_autoscaler(true);
        backoff = BACKOFF_FIRST;
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.reset();
        let mut last_heard = Instant::now();
        let why = loop {
            tokio::select! {
                batch = batches.recv() => {
                    let Some(batch) = batch else { return };
                    if let Err(e) = ws.send(Message::Binary(batch)).await {
                        break e.to_string();
                    }
                }
                msg = ws.next() => match msg {
                    // Pongs to the autoscaler's pings go out with the next write or flush.
                    Some(Ok(Message::Close(frame))) => {
                        break format!("closed by the autoscaler: {frame:?}");
                    }
                    Some(Ok(_)) => {
                        last_heard = Instant::now();
                        if let Err(e) = ws.flush().await {
                            break e.to_string();
                        }
                    }
                    Some(Err(e)) => break e.to_string(),
                    None => break "connection closed".to_owned(),
                },
                _ = ping.tick() => {
                    if last_heard.elapsed() > READ_DEADLINE {
                        break "no answer from the autoscaler".to_owned();
                    }
                    if let Err(e) = ws.send(Message::Ping(Bytes::new())).await {
                        break e.to_string();
                    }
                }
            }
        };
        tracing::warn!(%url, reason = %why, "autoscaler connection lost");
        health.set_autoscaler(false);
        conn.errors.fetch_add(1, Ordering::Relaxed);
        backoff = wait_while_down(&mut batches, backoff).await;
    }
}

/// Sleeps `backoff` (with jitter), dropping batches meanwhile; returns the next backoff.
async fn wait_while_down(batches: &mut mpsc::Receiver<Bytes>, backoff: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let jitter = 1.0 + 0.5 * f64::from(nanos % 1000) / 1000.0;
    let sleep = tokio::time::sleep(backoff.mul_f64(jitter));
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = &mut sleep => break,
            b = batches.recv() => if b.is_none() { break },
        }
    }
    (backoff.mul_f64(1.3)).min(BACKOFF_MAX)
}
