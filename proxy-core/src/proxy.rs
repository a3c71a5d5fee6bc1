//! Forwards a request to the upstream through the [`Client`], mirroring its protocol.
//!
//! Hop-by-hop headers are removed both ways, the peer is appended to `X-Forwarded-For`, bodies
//! stream in both directions at once, trailers pass through, and an HTTP/1.1 upgrade
//! (websocket) is forwarded: the upstream's `101` goes back with a [`Tunnel`] that the
//! [edge](crate::edge) splices once both sides have switched. `Upgrade: h2c` is declined: the
//! request is served as HTTP/1.1 (clients that want h2c use prior knowledge, as upstream's do).

use std::{
    future::Future,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use http::{HeaderValue, Request, Response, StatusCode, Version, header, uri};
use hyper::{body::Incoming, upgrade::OnUpgrade};
use tower::Service;

use crate::{
    BoxError,
    body::Body,
    client::{Client, Connection, Protocol},
    error::Upstream,
    h1::RawUpgrade,
    headers,
};

/// Both halves of an upgraded connection, handed to the edge in the `101` response's extensions.
#[derive(Clone, Debug)]
pub struct Tunnel {
    /// The client's side, ready once our `101` has been written.
    pub downstream: OnUpgrade,
    // Response extensions must be `Clone`; the socket is taken out exactly once, by the edge.
    upstream: Arc<Mutex<Option<RawUpgrade>>>,
}

impl Tunnel {
    /// The upstream's side; `None` once taken.
    pub fn take_upstream(&self) -> Option<RawUpgrade> {
        self.upstream
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// A request rewritten for the upstream.
#[derive(Debug)]
pub struct Prepared {
    /// The request as it will be sent.
    pub request: Request<Incoming>,
    /// The protocol to send it with.
    pub protocol: Protocol,
    /// The client's side of a requested upgrade.
    pub upgrade: Option<OnUpgrade>,
    /// The protocol the client asked to switch to.
    pub upgrade_to: Option<HeaderValue>,
}

/// Rewrites an inbound request for the upstream at `upstream_authority`: protocol, URI form,
/// hop-by-hop headers, `X-Forwarded-For` (when the peer, formatted by [`peer_value`], is known)
/// and upgrades.
pub fn prepare(
    mut req: Request<Incoming>,
    peer: Option<&HeaderValue>,
    upstream_authority: &str,
) -> Prepared {
    let protocol = if req.version() == Version::HTTP_2 {
        Protocol::H2c
    } else {
        Protocol::Http1
    };
    let upgrade = match protocol {
        Protocol::Http1 => headers::upgrade_protocol(req.headers())
            .filter(|p| !p.as_bytes().eq_ignore_ascii_case(b"h2c"))
            .cloned(),
        Protocol::H2c => None,
    };
    let h = req.headers_mut();
    headers::strip_hop_by_hop(h);
    const HTTP2_SETTINGS: http::HeaderName = http::HeaderName::from_static("http2-settings");
    if headers::has(h, &HTTP2_SETTINGS) {
        h.remove(HTTP2_SETTINGS);
    }
    if let Some(peer) = peer {
        headers::append_forwarded_for(h, peer);
    }
    let upgrade_to = upgrade.clone();
    let upgrade = upgrade.map(|proto| {
        let h = req.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, proto);
        hyper::upgrade::on(&mut req)
    });
    match protocol {
        Protocol::Http1 => {
            *req.version_mut() = Version::HTTP_11;
            if req.uri().authority().is_some() || req.uri().scheme().is_some() {
                if !req.headers().contains_key(header::HOST)
                    && let Some(a) = req
                        .uri()
                        .authority()
                        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                {
                    req.headers_mut().insert(header::HOST, a);
                }
                let pq = req
                    .uri()
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| uri::PathAndQuery::from_static("/"));
                *req.uri_mut() = uri::Uri::from(pq);
            }
        }
        Protocol::H2c => {
            let authority = req
                .uri()
                .authority()
                .cloned()
                .or_else(|| {
                    req.headers()
                        .get(header::HOST)
                        .and_then(|h| uri::Authority::try_from(h.as_bytes()).ok())
                })
                .or_else(|| uri::Authority::try_from(upstream_authority).ok());
            req.headers_mut().remove(header::HOST);
            let mut parts = std::mem::take(req.uri_mut()).into_parts();
            parts.scheme = Some(uri::Scheme::HTTP);
            parts.authority = authority;
            if parts.path_and_query.is_none() {
                parts.path_and_query = Some(uri::PathAndQuery::from_static("/"));
            }
            if let Ok(u) = uri::Uri::from_parts(parts) {
                *req.uri_mut() = u;
            }
        }
    }
    Prepared {
        request: req,
        protocol,
        upgrade,
        upgrade_to,
    }
}

/// The peer as it goes into `X-Forwarded-For`: an IPv4 address that reached a dual-stack socket
/// is written as IPv4, as Go writes it.
pub fn peer_value(peer: IpAddr) -> HeaderValue {
    HeaderValue::try_from(peer.to_canonical().to_string())
        .expect("an IP address is a valid header value")
}

/// Sends a prepared request and shapes the upstream's response for the client.
pub async fn forward(client: &Client, prepared: Prepared) -> Result<Response<Body>, Upstream> {
    let conn = client.checkout(prepared.protocol).await?;
    forward_on(conn, client, prepared).await
}

/// [`forward`] on a connection already checked out of `client` for `prepared.protocol`. Checking
/// out first lets a caller try another upstream when no connection could be made, before any
/// byte of the request was sent.
pub async fn forward_on(
    conn: Connection,
    client: &Client,
    prepared: Prepared,
) -> Result<Response<Body>, Upstream> {
    try_forward_on(conn, client, prepared)
        .await
        .map_err(|(e, _)| e)
}

/// [`forward_on`], giving the prepared request back when another upstream may take it: a dead
/// pooled connection whose replacement could not be opened, before anything was written or,
/// for a replayable request, before any byte of a response.
pub async fn try_forward_on(
    conn: Connection,
    client: &Client,
    prepared: Prepared,
) -> Result<Response<Body>, (Upstream, Option<Prepared>)> {
    let Prepared {
        request,
        protocol,
        upgrade,
        upgrade_to,
    } = prepared;
    let mut exchange = match conn.try_send(request, client).await {
        Ok(e) => e,
        Err((e, request)) => {
            return Err((
                e,
                request.map(|request| Prepared {
                    request,
                    protocol,
                    upgrade,
                    upgrade_to,
                }),
            ));
        }
    };
    shape(&mut exchange, upgrade, upgrade_to).map_err(|e| (e, None))?;
    Ok(exchange.response)
}

/// Shapes an upstream response for the client: hop-by-hop headers, and a [`Tunnel`] for a
/// protocol switch the client asked for.
fn shape(
    exchange: &mut crate::client::Exchange,
    upgrade: Option<OnUpgrade>,
    upgrade_to: Option<HeaderValue>,
) -> Result<(), Upstream> {
    let res = &mut exchange.response;
    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(downstream) = upgrade else {
            return Err(Upstream::other(
                "upstream switched protocols without being asked",
            ));
        };
        let proto = res.headers().get(header::UPGRADE).cloned();
        // As Go's proxy: the upstream may only switch to the protocol the client asked for.
        let same = match (&proto, &upgrade_to) {
            (Some(got), Some(asked)) => got.as_bytes().eq_ignore_ascii_case(asked.as_bytes()),
            _ => false,
        };
        if !same {
            return Err(Upstream::other(format!(
                "backend tried to switch protocol {:?} when {:?} was requested",
                proto
                    .as_ref()
                    .map(|p| String::from_utf8_lossy(p.as_bytes()).into_owned()),
                upgrade_to
                    .as_ref()
                    .map(|p| String::from_utf8_lossy(p.as_bytes()).into_owned()),
            )));
        }
        headers::strip_hop_by_hop(res.headers_mut());
        if let Some(proto) = proto {
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            res.headers_mut().insert(header::UPGRADE, proto);
        }
        let upstream = exchange
            .upgraded
            .take()
            .ok_or_else(|| Upstream::other("upstream switched protocols over h2c"))?;
        res.extensions_mut().insert(Tunnel {
            downstream,
            upstream: Arc::new(Mutex::new(Some(upstream))),
        });
    } else {
        headers::strip_hop_by_hop(res.headers_mut());
    }
    Ok(())
}

// === Proxy ===

/// A [`Service`] that forwards every request to one upstream. Always ready.
#[derive(Clone, Debug)]
pub struct Proxy {
    client: Client,
    authority: std::sync::Arc<str>,
    peer: Option<HeaderValue>,
}

impl Proxy {
    /// Forwards through `client`.
    pub fn new(client: Client) -> Self {
        let authority = client.addr().to_string().into();
        Self {
            client,
            authority,
            peer: None,
        }
    }

    /// The same proxy for a connection from `peer`, which it appends to `X-Forwarded-For`.
    pub fn with_peer(&self, peer: IpAddr) -> Self {
        Self {
            client: self.client.clone(),
            authority: self.authority.clone(),
            peer: Some(peer_value(peer)),
        }
    }

    /// The client it forwards through.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

impl Service<Request<Incoming>> for Proxy {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let prepared = prepare(req, self.peer.as_ref(), &self.authority);
        let client = self.client.clone();
        Box::pin(async move { forward(&client, prepared).await.map_err(Into::into) })
    }
}
