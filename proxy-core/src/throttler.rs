//! Per-revision admission to pods: who may send a request to which pod, and who must wait.
//!
//! A [`Throttler`] holds a revision's healthy pods and hands out [`Lease`]s: a lease is one
//! request's slot on one pod, released when the lease is dropped (for a streamed response or an
//! upgraded connection, when that ends). With `containerConcurrency` (cc) above zero no pod carries
//! more than cc leases; with cc = 0 pods are unlimited.
//!
//! When no pod has room the request waits in a FIFO queue. Waiters are not woken to race for a
//! slot: whoever frees capacity (a lease dropped, a pod added by its first passing probe, a new
//! cc) hands leases to waiters directly, under the same lock that counts them, so a released slot
//! goes to exactly one waiter at once and no ticker runs in between. The queue is bounded per
//! revision and across revisions ([`QueueLimit`]); a request that finds it full fails at once with
//! [`QueueFull`].
//!
//! Load balancing follows Knative's activator: power of two choices by in-flight count for
//! cc = 0, the first pod with room (in address order) for cc 1–3, and round robin for larger cc.
//! With several activators in front of a revision and cc > 0, each one uses only its own subset of
//! the pods ([`Throttler::set_subset`]), so that together they respect cc.
//!
//! Behind a service mesh that hides pods, the revision is reached through its private service's
//! ClusterIP instead ([`Throttler::set_cluster_ip`]): one destination whose limit is cc × ready
//! pods, shared out among the activators.

use std::{
    collections::VecDeque,
    fmt,
    hash::{BuildHasher, RandomState},
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::sync::{Notify, oneshot};

use crate::{client::Client, error::QueueFull};

/// One pod (an `ip:port` of a revision) and the requests this process has in flight on it.
pub struct Pod {
    addr: SocketAddr,
    /// `addr` as a header value, for `Host` or `:authority`: made once, not per request.
    authority: http::HeaderValue,
    client: Client,
    in_flight: AtomicUsize,
}

impl Pod {
    /// A pod at `addr`, reached through `client`.
    pub fn new(addr: SocketAddr, client: Client) -> Arc<Self> {
        Arc::new(Self {
            addr,
            authority: http::HeaderValue::try_from(addr.to_string())
                .expect("a socket address is a valid header value"),
            client,
            in_flight: AtomicUsize::new(0),
        })
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its address as a header value (`ip:port`).
    pub fn authority(&self) -> &http::HeaderValue {
        &self.authority
    }

    /// The client that reaches it.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Requests this process has in flight on it.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Pod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pod")
            .field("addr", &self.addr)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

/// A bound on waiting requests shared by several throttlers (the process-wide total).
#[derive(Debug)]
pub struct QueueLimit {
    max: usize,
    waiting: AtomicUsize,
}

impl QueueLimit {
    /// At most `max` requests wait at once across every throttler sharing this limit.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            waiting: AtomicUsize::new(0),
        })
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    fn try_add(&self) -> bool {
        self.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |w| {
                (w < self.max).then_some(w + 1)
            })
            .is_ok()
    }
}

/// Admission to one revision's pods. See the [module docs](self).
pub struct Throttler {
    state: Mutex<State>,
    /// Mirrors `State::cc` so that an unlimited lease is released without the lock.
    cc: AtomicUsize,
    max_waiting: usize,
    total: Arc<QueueLimit>,
    waiting: AtomicUsize,
    active: AtomicUsize,
    demand: Notify,
    /// Arrivals and departures, for a scaler that decides on each; only signalled once someone
    /// listens, so the request path pays one relaxed load otherwise.
    activity: Notify,
    watched: std::sync::atomic::AtomicBool,
}

struct State {
    cc: usize,
    /// Healthy pods, sorted by `ip:port` text.
    healthy: Vec<Arc<Pod>>,
    /// The pods this process may use: all healthy ones, or its subset of them.
    assigned: Vec<Arc<Pod>>,
    /// This activator's index among `count` activators, once known.
    subset: Option<(usize, usize)>,
    /// The private service's ClusterIP and how many ready pods stand behind it; when set it is
    /// the only destination.
    cluster: Option<(Arc<Pod>, usize)>,
    /// Leases one assigned pod may hold: cc, or the ClusterIP's share; 0 is unlimited.
    limit: usize,
    next: usize,
    rng: u64,
    waiters: VecDeque<oneshot::Sender<Lease>>,
}

impl fmt::Debug for Throttler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("Throttler")
            .field("cc", &st.cc)
            .field("pods", &st.assigned)
            .field("waiting", &self.waiting())
            .finish_non_exhaustive()
    }
}

impl Throttler {
    /// A throttler for a revision with containerConcurrency `cc` (0 is unlimited) and no pods yet.
    /// At most `max_waiting` of its requests wait at once, and no more than `total` allows.
    pub fn new(cc: usize, max_waiting: usize, total: Arc<QueueLimit>) -> Arc<Self> {
        let seed = RandomState::new().hash_one(0u64) | 1;
        Arc::new(Self {
            state: Mutex::new(State {
                cc,
                healthy: Vec::new(),
                assigned: Vec::new(),
                subset: None,
                cluster: None,
                limit: cc,
                next: 0,
                rng: seed,
                waiters: VecDeque::new(),
            }),
            cc: AtomicUsize::new(cc),
            max_waiting,
            total,
            waiting: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            demand: Notify::new(),
            activity: Notify::new(),
            watched: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Requests waiting for a pod.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Requests holding a lease.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// The pods this process may use now.
    pub fn pods(&self) -> Vec<Arc<Pod>> {
        self.lock().assigned.clone()
    }

    /// How many requests may run at once: cc × usable pods, or `None` when unlimited (cc = 0
    /// with at least one pod).
    pub fn capacity(&self) -> Option<usize> {
        let st = self.lock();
        match st.limit {
            _ if st.assigned.is_empty() => Some(0),
            0 => None,
            limit => Some(limit * st.assigned.len()),
        }
    }

    /// Resolves when requests may be waiting: the first waiter after a call notifies. Probers use
    /// it to speed up while someone waits.
    pub async fn demand(&self) {
        self.demand.notified().await;
    }

    /// Resolves at the next arrival or departure (or at once if one happened since the last
    /// call): for a scaler that sizes the revision on every change of load.
    pub async fn activity(&self) {
        self.watched.store(true, Ordering::Relaxed);
        self.activity.notified().await;
    }

    fn signal_activity(&self) {
        if self.watched.load(Ordering::Relaxed) {
            self.activity.notify_one();
        }
    }

    /// Takes a slot on a pod, waiting for one if none is free.
    ///
    /// Fails at once with [`QueueFull`] when the request would have to wait and the queue is full.
    /// Dropping the future gives up the place in the queue.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease, QueueFull> {
        let rx = {
            let mut st = self.lock();
            if let Some(pod) = pick(&mut st) {
                let lease = self.lease(pod);
                drop(st);
                self.signal_activity();
                return Ok(lease);
            }
            if self.waiting.load(Ordering::Relaxed) >= self.max_waiting || !self.total.try_add() {
                return Err(QueueFull::default());
            }
            let waiting = self.waiting.fetch_add(1, Ordering::Relaxed) + 1;
            // Abandoned places stay in the queue until a hand-off passes them; prune them before
            // they outnumber the live ones, so churn cannot grow the queue without bound.
            if st.waiters.len() >= 2 * waiting + 16 {
                st.waiters.retain(|w| !w.is_closed());
            }
            let (tx, rx) = oneshot::channel();
            st.waiters.push_back(tx);
            rx
        };
        self.demand.notify_one();
        self.signal_activity();
        let _place = Place(self);
        // The sender lives in the queue until it hands over a lease; it is dropped unused only
        // once this receiver is gone.
        rx.await.map_err(|_| QueueFull::default())
    }

    fn lease(self: &Arc<Self>, pod: Arc<Pod>) -> Lease {
        self.active.fetch_add(1, Ordering::Relaxed);
        Lease {
            pod: Some(pod),
            throttler: self.clone(),
        }
    }

    /// Replaces the healthy pods. Pods that stay keep their in-flight counts, so pass the same
    /// [`Pod`] for the same address.
    pub fn set_pods(self: &Arc<Self>, mut pods: Vec<Arc<Pod>>) {
        // As upstream: ordered as `ip:port` text, so that activators of either kind compute the
        // same subsets and the same "first" pods.
        pods.sort_by(|a, b| a.authority.as_bytes().cmp(b.authority.as_bytes()));
        pods.dedup_by_key(|p| p.addr);
        let mut st = self.lock();
        st.healthy = pods;
        assign(&mut st);
        self.dispatch(&mut st);
    }

    /// Stops using the pod at `addr` until the next [`set_pods`](Self::set_pods), e.g. after a
    /// connection to it was refused. Returns whether it was in use.
    pub fn eject(self: &Arc<Self>, addr: SocketAddr) -> bool {
        let mut st = self.lock();
        let before = st.healthy.len();
        st.healthy.retain(|p| p.addr != addr);
        let ejected = st.healthy.len() != before;
        if ejected {
            assign(&mut st);
        }
        ejected
    }

    /// Tells the throttler it is activator `index` of `count` in front of this revision, or that
    /// it does not know (`None`: it uses every pod).
    pub fn set_subset(self: &Arc<Self>, subset: Option<(usize, usize)>) {
        let mut st = self.lock();
        st.subset = subset;
        assign(&mut st);
        self.dispatch(&mut st);
    }

    /// Routes every request through the private service's ClusterIP (`Some(pod, ready pods)`),
    /// or back to the pods (`None`).
    pub fn set_cluster_ip(self: &Arc<Self>, cluster: Option<(Arc<Pod>, usize)>) {
        let mut st = self.lock();
        st.cluster = cluster;
        assign(&mut st);
        self.dispatch(&mut st);
    }

    /// Changes containerConcurrency.
    pub fn set_cc(self: &Arc<Self>, cc: usize) {
        let mut st = self.lock();
        st.cc = cc;
        self.cc.store(cc, Ordering::Relaxed);
        assign(&mut st);
        self.dispatch(&mut st);
    }

    /// Hands free capacity to waiters, oldest first.
    fn dispatch(self: &Arc<Self>, st: &mut State) {
        while let Some(front) = st.waiters.front() {
            if front.is_closed() {
                st.waiters.pop_front();
                continue;
            }
            let Some(pod) = pick(st) else { break };
            let Some(tx) = st.waiters.pop_front() else {
                break;
            };
            if let Err(mut lease) = tx.send(self.lease(pod)) {
                // The waiter left between the check and the send: take the slot back here, as
                // dropping the lease would lock again.
                if let Some(pod) = lease.pod.take() {
                    pod.in_flight.fetch_sub(1, Ordering::Relaxed);
                    self.active.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn release(self: &Arc<Self>, pod: &Pod) {
        // Unlimited pods never make anyone wait for a slot, only for a pod.
        if self.cc.load(Ordering::Relaxed) == 0 {
            pod.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.active.fetch_sub(1, Ordering::Relaxed);
        } else {
            // Freed under the lock, so that the slot goes to the oldest waiter and not to a
            // request arriving on another thread in between.
            let mut st = self.lock();
            pod.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.active.fetch_sub(1, Ordering::Relaxed);
            self.dispatch(&mut st);
        }
        self.signal_activity();
    }
}

/// A waiting request's place in the count, given back however the wait ends.
struct Place<'a>(&'a Throttler);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
        self.0.total.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One request's slot on one pod; released when dropped.
pub struct Lease {
    pod: Option<Arc<Pod>>,
    throttler: Arc<Throttler>,
}

impl Lease {
    /// The pod to send to.
    pub fn pod(&self) -> &Arc<Pod> {
        self.pod
            .as_ref()
            .expect("a lease holds its pod until dropped")
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("pod", &self.pod.as_ref().map(|p| p.addr))
            .finish()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(pod) = self.pod.take() {
            self.throttler.release(&pod);
        }
    }
}

/// Recomputes the pods this process may use and what each may carry.
fn assign(st: &mut State) {
    if let Some((ip, ready)) = &st.cluster {
        // As upstream: no pod-level accounting is possible behind a ClusterIP, so the revision's
        // total is divided among the activators.
        let activators = st.subset.map_or(1, |(_, count)| count.max(1));
        st.assigned = if *ready > 0 {
            vec![ip.clone()]
        } else {
            Vec::new()
        };
        st.limit = if st.cc == 0 {
            0
        } else {
            (st.cc * ready / activators).max(1)
        };
        return;
    }
    st.limit = st.cc;
    st.assigned = match st.subset {
        Some((index, count)) if st.cc > 0 => subset(&st.healthy, index, count).to_vec(),
        _ => st.healthy.clone(),
    };
}

/// This activator's share of `pods` (sorted), as Knative's activator picks it: a contiguous
/// slice, plus one of the remainder; with more activators than pods, one pod each, shared.
pub fn subset<T: Clone>(pods: &[T], index: usize, count: usize) -> Vec<T> {
    let n = pods.len();
    if n <= 1 || count <= 1 || index >= count {
        return pods.to_vec();
    }
    if count > n {
        return vec![pods[index % n].clone()];
    }
    let size = n / count;
    let rem = n % count;
    let mut out = pods[index * size..(index + 1) * size].to_vec();
    if index < rem {
        out.push(pods[n - rem + index].clone());
    }
    out
}

/// Chooses a pod with room and counts the request on it.
fn pick(st: &mut State) -> Option<Arc<Pod>> {
    let n = st.assigned.len();
    if n == 0 {
        return None;
    }
    let cc = st.limit;
    let chosen = if cc == 0 {
        // Power of two choices by in-flight count, ties broken at random.
        let (a, b) = if n == 1 {
            (0, 0)
        } else {
            let a = (next_random(&mut st.rng) % n as u64) as usize;
            let mut b = (next_random(&mut st.rng) % (n as u64 - 1)) as usize;
            if b >= a {
                b += 1;
            }
            (a, b)
        };
        let (fa, fb) = (st.assigned[a].in_flight(), st.assigned[b].in_flight());
        if fa < fb || (fa == fb && next_random(&mut st.rng) & 1 == 0) {
            a
        } else {
            b
        }
    } else if cc <= 3 {
        // Pack onto the first pods: small cc means each slot is precious, and packing keeps
        // the other pods free for the next burst.
        st.assigned.iter().position(|p| p.in_flight() < cc)?
    } else {
        let start = if st.next >= n { 0 } else { st.next };
        let i = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| st.assigned[i].in_flight() < cc)?;
        st.next = i + 1;
        i
    };
    let pod = st.assigned[chosen].clone();
    pod.in_flight.fetch_add(1, Ordering::Relaxed);
    Some(pod)
}

fn next_random(state: &mut u64) -> u64 {
    // xorshift64: quality is irrelevant here, only that picks do not correlate.
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

#[cfg(test)]
mod tests {
    use std::{future::Future, pin::pin, task::Poll, time::Duration};

    use super::*;
    use crate::client::ClientConfig;

    fn pod(i: u8) -> Arc<Pod> {
        let addr = SocketAddr::from(([127, 0, 0, i], 8012));
        Pod::new(addr, Client::new(addr, ClientConfig::default()))
    }

    fn throttler(cc: usize, max: usize) -> Arc<Throttler> {
        Throttler::new(cc, max, QueueLimit::new(usize::MAX))
    }

    fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        let waker = std::task::Waker::noop();
        f.poll(&mut std::task::Context::from_waker(waker))
    }

    #[tokio::test]
    async fn waiters_are_released_when_a_pod_arrives() {
        let t = throttler(0, 10);
        let mut a = pin!(t.acquire());
        assert!(poll_once(a.as_mut()).is_pending());
        assert_eq!(t.waiting(), 1);
        t.set_pods(vec![pod(1)]);
        let Poll::Ready(Ok(lease)) = poll_once(a.as_mut()) else {
            panic!("not released");
        };
        assert_eq!(lease.pod().addr().port(), 8012);
        assert_eq!(t.waiting(), 0);
        assert_eq!(t.active(), 1);
        drop(lease);
        assert_eq!(t.active(), 0);
    }

    #[tokio::test]
    async fn cc_bounds_each_pod_and_a_release_hands_over_in_order() {
        let t = throttler(1, 10);
        t.set_pods(vec![pod(1), pod(2)]);
        let l1 = t.acquire().await.unwrap();
        let l2 = t.acquire().await.unwrap();
        assert_ne!(l1.pod().addr(), l2.pod().addr());
        let mut w1 = pin!(t.acquire());
        let mut w2 = pin!(t.acquire());
        assert!(poll_once(w1.as_mut()).is_pending());
        assert!(poll_once(w2.as_mut()).is_pending());
        let freed = l2.pod().addr();
        drop(l2);
        let Poll::Ready(Ok(l3)) = poll_once(w1.as_mut()) else {
            panic!("oldest waiter not served first");
        };
        assert_eq!(l3.pod().addr(), freed);
        assert!(poll_once(w2.as_mut()).is_pending());
        assert_eq!(l3.pod().in_flight(), 1);
        drop(l1);
        assert!(poll_once(w2.as_mut()).is_ready());
    }

    #[tokio::test]
    async fn a_full_queue_fails_at_once_and_abandoned_places_are_freed() {
        let total = QueueLimit::new(3);
        let t = Throttler::new(1, 2, total.clone());
        let mut a = pin!(t.acquire());
        let mut b = pin!(t.acquire());
        assert!(poll_once(a.as_mut()).is_pending());
        assert!(poll_once(b.as_mut()).is_pending());
        assert!(t.acquire().await.is_err(), "per-revision bound");
        let other = Throttler::new(1, 10, total.clone());
        let mut c = pin!(other.acquire());
        assert!(poll_once(c.as_mut()).is_pending());
        assert!(other.acquire().await.is_err(), "total bound");
        assert_eq!(total.waiting(), 3);
        // Giving up frees the place, and a later pod goes to the live waiter only.
        {
            let mut d = Box::pin(t.acquire());
            assert!(poll_once(d.as_mut()).is_ready(), "still full");
        }
        t.set_pods(vec![pod(1)]);
        assert!(poll_once(b.as_mut()).is_pending(), "b queued behind a");
    }

    #[tokio::test]
    async fn dropped_waiters_do_not_take_slots() {
        let t = throttler(1, 10);
        {
            let mut gone = Box::pin(t.acquire());
            assert!(poll_once(gone.as_mut()).is_pending());
        }
        assert_eq!(t.waiting(), 0);
        let mut live = pin!(t.acquire());
        assert!(poll_once(live.as_mut()).is_pending());
        t.set_pods(vec![pod(1)]);
        let Poll::Ready(Ok(lease)) = poll_once(live.as_mut()) else {
            panic!("live waiter not served");
        };
        assert_eq!(t.active(), 1);
        drop(lease);
    }

    #[tokio::test]
    async fn first_available_packs_and_round_robin_spreads() {
        let t = throttler(2, 10);
        t.set_pods(vec![pod(2), pod(1), pod(3)]);
        let a = t.acquire().await.unwrap();
        let b = t.acquire().await.unwrap();
        assert_eq!(a.pod().addr(), b.pod().addr());
        assert_eq!(a.pod().addr().ip().to_string(), "127.0.0.1");

        // Text order, as upstream: 127.0.0.10 comes before 127.0.0.9.
        let t = throttler(1, 10);
        t.set_pods(vec![pod(9), pod(10)]);
        let first = t.acquire().await.unwrap();
        assert_eq!(first.pod().addr().ip().to_string(), "127.0.0.10");

        let t = throttler(10, 10);
        t.set_pods(vec![pod(1), pod(2), pod(3)]);
        let leases: Vec<_> = futures(&t, 6).await;
        let mut per: std::collections::BTreeMap<_, usize> = Default::default();
        for l in &leases {
            *per.entry(l.pod().addr()).or_default() += 1;
        }
        assert_eq!(per.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
    }

    async fn futures(t: &Arc<Throttler>, n: usize) -> Vec<Lease> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(t.acquire().await.unwrap());
        }
        v
    }

    #[tokio::test]
    async fn two_choices_prefers_the_less_loaded_pod() {
        let t = throttler(0, 10);
        t.set_pods(vec![pod(1), pod(2)]);
        let hold: Vec<_> = futures(&t, 1).await;
        let busy = hold[0].pod().addr();
        for _ in 0..20 {
            let l = t.acquire().await.unwrap();
            assert_ne!(l.pod().addr(), busy);
        }
    }

    #[tokio::test]
    async fn ejected_pods_are_skipped_and_subsets_split_pods() {
        let t = throttler(1, 10);
        t.set_pods(vec![pod(1), pod(2)]);
        assert!(t.eject(SocketAddr::from(([127, 0, 0, 1], 8012))));
        let l = t.acquire().await.unwrap();
        assert_eq!(l.pod().addr().ip().to_string(), "127.0.0.2");
        assert_eq!(t.capacity(), Some(1));

        let pods: Vec<u32> = (0..20).collect();
        let sizes: Vec<usize> = (0..3).map(|i| subset(&pods, i, 3).len()).collect();
        assert_eq!(sizes, vec![7, 7, 6]);
        assert_eq!(subset(&pods[..2], 2, 3), vec![0]);
        assert_eq!(subset(&pods, 0, 1).len(), 20);
    }

    #[tokio::test]
    async fn a_cluster_ip_carries_the_revisions_share() {
        let t = throttler(2, 10);
        t.set_subset(Some((0, 2)));
        t.set_pods(vec![pod(1), pod(2)]);
        t.set_cluster_ip(Some((pod(9), 3)));
        // cc 2 × 3 ready pods, shared by 2 activators.
        assert_eq!(t.capacity(), Some(3));
        let leases = futures(&t, 3).await;
        assert!(
            leases
                .iter()
                .all(|l| l.pod().addr().ip().to_string() == "127.0.0.9")
        );
        let mut more = pin!(t.acquire());
        assert!(poll_once(more.as_mut()).is_pending());
        t.set_cluster_ip(None);
        assert!(poll_once(more.as_mut()).is_ready(), "back to the pods");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_wait_returns_its_place() {
        let t = throttler(1, 1);
        let r = tokio::time::timeout(Duration::from_millis(10), t.acquire()).await;
        assert!(r.is_err());
        assert_eq!(t.waiting(), 0);
        let mut again = pin!(t.acquire());
        assert!(
            poll_once(again.as_mut()).is_pending(),
            "place was given back"
        );
    }
}
