//! A lean HTTP/1.1 client exchange, driven inside the request's own task.
//!
//! hyper's client runs every connection as a task of its own and passes each request and
//! response through channels; on a loopback proxy that bookkeeping costs more user-space time
//! than the rest of the request path together (see BENCHMARKS.md). An exchange here writes the
//! request head with one `write`, parses the response head with httparse, and hands the client a
//! body that reads straight from the socket. A request body is pumped by a task of its own, so the
//! exchange stays full duplex: an app may answer before it has read the whole request.

use std::{
    future::Future,
    io,
    mem::MaybeUninit,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    task::JoinHandle,
};

use crate::{
    BoxError,
    client::{Client, OpenSlot, Pooled},
    error::Upstream,
};

/// Most header fields a response head may have.
const MAX_HEADERS: usize = 128;
/// `Keep-Alive`, a hop-by-hop field.
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// Longest chunk-size line accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// An upgraded upstream connection, with the bytes the upstream sent after its `101`.
#[derive(Debug)]
pub struct RawUpgrade {
    /// The socket.
    pub io: TcpStream,
    /// Bytes already read past the response head; they belong to the new protocol.
    pub read_ahead: Bytes,
}

/// What an exchange produced.
#[derive(Debug)]
pub(crate) struct Exchanged {
    pub(crate) response: Response<H1Body>,
    pub(crate) upgraded: Option<RawUpgrade>,
}

fn io_err(e: io::Error) -> Upstream {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        Upstream::other("EOF")
    } else {
        Upstream::other(e.to_string())
    }
}

/// Sends `req` on `conn` and reads the response head. On a reused connection that turns out to
/// be closed before any byte of the response, a replayable request (Go's rule: a safe method
/// without a body, or an idempotency key) is sent again on a fresh one.
///
/// The request comes back with the error when nothing of it reached the upstream (a closed
/// pooled connection was seen before writing and no fresh one could be opened), or when it is
/// replayable and no fresh connection could be opened to send it again.
pub(crate) async fn exchange(
    mut conn: Pooled,
    reused: bool,
    req: Request<Incoming>,
    client: &Client,
) -> Result<Exchanged, (Upstream, Option<Request<Incoming>>)> {
    let (parts, body) = req.into_parts();
    // A redial that fails has sent nothing: give the request back for another upstream.
    macro_rules! redial {
        () => {
            match client.dial_http1().await {
                Ok(c) => c,
                Err(e) => return Err((e, Some(Request::from_parts(parts, body)))),
            }
        };
    }
    let has_body = !http_body::Body::is_end_stream(&body);
    let (head, chunked) = encode_head(&parts, has_body, client.authority());
    let is_head = parts.method == Method::HEAD;
    let max_head = client.max_header_bytes();

    if !has_body {
        let replayable = is_replayable(&parts);
        if reused && !replayable && !still_open(&conn.io) {
            conn = redial!();
        }
        let (res_head, framing) =
            match write_and_read_head(&mut conn, &head, is_head, max_head).await {
                Ok(r) => r,
                Err(Failure {
                    before_response: true,
                    ..
                }) if reused && replayable => {
                    // Safe to send twice by Go's rule, so a redial that fails hands it back
                    // for another upstream just as a fresh one would resend it here: a pod that
                    // died between requests then costs none.
                    conn = redial!();
                    write_and_read_head(&mut conn, &head, is_head, max_head)
                        .await
                        .map_err(|f| (f.error, None))?
                }
                Err(f) => return Err((f.error, None)),
            };
        let Pooled { io, buf, slot, .. } = conn;
        return Ok(finish_head(
            res_head,
            framing,
            Reader::Whole(io),
            buf,
            slot,
            client,
        ));
    }

    // A pooled connection the upstream closed while idle would swallow the body: look first.
    if reused && !still_open(&conn.io) {
        conn = redial!();
    }
    let Pooled {
        io, mut buf, slot, ..
    } = conn;
    let (mut read, mut write) = io.into_split();
    write
        .write_all(&head)
        .await
        .map_err(|e| (io_err(e), None))?;
    // Aborted when dropped: an exchange that fails or is given up stops writing at once.
    let pump = Pump(Some(tokio::spawn(pump_body(write, body, chunked))));
    let (res_head, framing) = read_head(&mut read, &mut buf, is_head, max_head)
        .await
        .map_err(|f| (f.error, None))?;
    if res_head.status() == StatusCode::SWITCHING_PROTOCOLS {
        return Err((
            Upstream::other("upgrade with a request body is not supported"),
            None,
        ));
    }
    Ok(finish_head(
        res_head,
        framing,
        Reader::Split(read, pump),
        buf,
        slot,
        client,
    ))
}

/// A request the upstream may safely be sent again when a reused connection turned out closed
/// before any byte of a response: Go's rule (safe methods without a body, or an idempotency key).
/// RFC 9112 §9.3.1.1 forbids replaying anything else.
fn is_replayable(parts: &http::request::Parts) -> bool {
    matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) || parts.headers.contains_key("idempotency-key")
        || parts.headers.contains_key("x-idempotency-key")
}

/// The task that writes a request body; aborted when dropped unfinished.
struct Pump(Option<JoinHandle<io::Result<OwnedWriteHalf>>>);

impl Drop for Pump {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// Whether an idle socket still looks open: no EOF and no unexpected bytes waiting.
pub(crate) fn still_open(io: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

struct Failure {
    error: Upstream,
    /// No byte of a response arrived: the request may not have been seen at all.
    before_response: bool,
}

async fn write_and_read_head(
    conn: &mut Pooled,
    head: &[u8],
    is_head: bool,
    max_head: usize,
) -> Result<(Response<()>, Framing), Failure> {
    if let Err(e) = conn.io.write_all(head).await {
        return Err(Failure {
            error: io_err(e),
            before_response: true,
        });
    }
    read_head(&mut conn.io, &mut conn.buf, is_head, max_head).await
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    Eof,
}

async fn read_head<R: tokio::io::AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    is_head: bool,
    max_head: usize,
) -> Result<(Response<()>, Framing), Failure> {
    let mut received = false;
    loop {
        // Nothing to parse before the first read, the common case for a fresh response.
        let parsed = if buf.is_empty() {
            Ok(None)
        } else {
            parse_head(buf, is_head)
        };
        match parsed {
            Ok(Some((res, framing)))
                if res.status().is_informational()
                    && res.status() != StatusCode::SWITCHING_PROTOCOLS =>
            {
                // 100 Continue and friends: the client already got its own from our server.
                let _ = framing;
                continue;
            }
            Ok(Some(parsed)) => return Ok(parsed),
            Ok(None) => {}
            Err(error) => {
                return Err(Failure {
                    error,
                    before_response: false,
                });
            }
        }
        if buf.len() >= max_head {
            return Err(Failure {
                error: Upstream::other("response head too large"),
                before_response: false,
            });
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(8192);
        }
        match io.read_buf(buf).await {
            Ok(0) => {
                return Err(Failure {
                    error: Upstream::other("EOF"),
                    before_response: !received,
                });
            }
            Ok(_) => received = true,
            Err(e) => {
                return Err(Failure {
                    error: io_err(e),
                    before_response: !received,
                });
            }
        }
    }
}

/// Parses a complete response head off the front of `buf`, sharing its bytes with the values.
fn parse_head(
    buf: &mut BytesMut,
    is_head: bool,
) -> Result<Option<(Response<()>, Framing)>, Upstream> {
    // Uninitialised header slots: zeroing 128 of them per response cost more than parsing.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Upstream::other(format!("malformed HTTP response: {e}"))),
    };
    let code = parsed.code.unwrap_or(0);
    let version = parsed.version.unwrap_or(1);
    // Where each name and value sits, so that the values can share the frozen head's bytes
    // instead of being copied one allocation each.
    let base = buf.as_ptr() as usize;
    RANGES.with_borrow_mut(|ranges| {
        ranges.clear();
        for h in parsed.headers.iter() {
            let n = h.name.as_ptr() as usize - base;
            let v = h.value.as_ptr() as usize - base;
            ranges.push([n, n + h.name.len(), v, v + h.value.len()]);
        }
    });
    let head = buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code)
        .map_err(|_| Upstream::other(format!("malformed HTTP response: status {code}")))?;
    let map = RANGES.with_borrow(|ranges| {
        let mut map = HeaderMap::with_capacity(ranges.len());
        for &[ns, ne, vs, ve] in ranges {
            let name = HeaderName::from_bytes(&head[ns..ne])
                .map_err(|_| Upstream::other("malformed HTTP response: header name"))?;
            // Hop-by-hop fields that say nothing beyond HTTP/1.1's defaults are dropped here,
            // which spares the common response the slow path of `strip_hop_by_hop`.
            if (name == header::CONNECTION
                && version == 1
                && head[vs..ve].eq_ignore_ascii_case(b"keep-alive"))
                || name == KEEP_ALIVE
            {
                continue;
            }
            let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
                .map_err(|_| Upstream::other("malformed HTTP response: header value"))?;
            map.append(name, value);
        }
        Ok::<_, Upstream>(map)
    })?;
    finish_parse(status, version, map, is_head).map(Some)
}

thread_local! {
    /// Scratch space for [`parse_head`]; kept per thread so that parsing allocates nothing.
    static RANGES: std::cell::RefCell<Vec<[usize; 4]>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn finish_parse(
    status: StatusCode,
    version: u8,
    mut map: HeaderMap,
    is_head: bool,
) -> Result<(Response<()>, Framing), Upstream> {
    let framing = framing(status, &map, is_head)?;
    if framing == Framing::Chunked && map.contains_key(header::CONTENT_LENGTH) {
        // RFC 9112 §6.3: chunked wins and the length must not travel on; a message framed both
        // ways also ends its connection (`Connection: close` is read by `keeps_alive`, then
        // stripped before the client).
        map.remove(header::CONTENT_LENGTH);
        map.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let mut res = Response::new(());
    *res.status_mut() = status;
    *res.version_mut() = if version == 0 {
        http::Version::HTTP_10
    } else {
        http::Version::HTTP_11
    };
    *res.headers_mut() = map;
    Ok((res, framing))
}

/// RFC 9112 §6.3: how long the body is.
fn framing(status: StatusCode, headers: &HeaderMap, is_head: bool) -> Result<Framing, Upstream> {
    if is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    // One pass over the fields: a response has a handful, and comparing names beats hashing.
    let mut te_last = None;
    let mut length = None;
    let mut bad_length = false;
    for (k, v) in headers {
        if k == header::TRANSFER_ENCODING {
            te_last = Some(v);
        } else if k == header::CONTENT_LENGTH {
            let digits = v.as_bytes().trim_ascii();
            let parsed = (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(digits).ok()?.parse::<u64>().ok())
                .flatten();
            match parsed {
                Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                _ => bad_length = true,
            }
        }
    }
    if let Some(te) = te_last {
        // Only plain `chunked` can be passed on: another coding would reach the client without
        // the header that names it (Go answers 502 too).
        let coding = te.as_bytes().trim_ascii();
        if coding.eq_ignore_ascii_case(b"identity") {
            // The obsolete no-op coding: the body runs to the end of the connection.
            return Ok(Framing::Eof);
        }
        if !coding.eq_ignore_ascii_case(b"chunked") {
            return Err(Upstream::other(format!(
                "unsupported transfer encoding: {:?}",
                String::from_utf8_lossy(te.as_bytes())
            )));
        }
        return Ok(Framing::Chunked);
    }
    if bad_length {
        return Err(Upstream::other("malformed HTTP response: content-length"));
    }
    Ok(match length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::Eof,
    })
}

fn keeps_alive(res: &Response<()>, framing: Framing) -> bool {
    if framing == Framing::Eof {
        return false;
    }
    let says = |t: &str| {
        res.headers().iter().any(|(k, v)| {
            k == header::CONNECTION
                && v.to_str()
                    .is_ok_and(|s| s.split(',').any(|x| x.trim().eq_ignore_ascii_case(t)))
        })
    };
    match res.version() {
        http::Version::HTTP_10 => says("keep-alive"),
        _ => !says("close"),
    }
}

fn finish_head(
    res: Response<()>,
    framing: Framing,
    reader: Reader,
    buf: BytesMut,
    slot: OpenSlot,
    client: &Client,
) -> Exchanged {
    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Reader::Whole(io) = reader else {
            unreachable!("upgrades only on whole connections")
        };
        // The connection now belongs to the tunnel; it no longer counts against the pool.
        drop(slot);
        let response = res.map(|()| H1Body::done());
        return Exchanged {
            response,
            upgraded: Some(RawUpgrade {
                io,
                read_ahead: buf.freeze(),
            }),
        };
    }
    let keep_alive = keeps_alive(&res, framing);
    // The version belongs to the hop: the client hears whatever its own connection speaks, as
    // from Go's proxy, even from an HTTP/1.0 app.
    let mut res = res;
    *res.version_mut() = http::Version::HTTP_11;
    let decoder = match framing {
        Framing::Empty => Decoder::Done,
        Framing::Length(n) => Decoder::Length(n),
        Framing::Chunked => Decoder::Chunked(Chunk::Size),
        Framing::Eof => Decoder::Eof,
    };
    let mut body = H1Body {
        reader: Some(reader),
        buf,
        decoder,
        keep_alive,
        slot: Some(slot),
        client: Some(client.clone()),
        eof: false,
    };
    if body.decoder.is_done() {
        body.release();
    }
    Exchanged {
        response: res.map(|()| body),
        upgraded: None,
    }
}

/// Writes the request line and headers, adding the framing the body needs.
fn encode_head(
    parts: &http::request::Parts,
    has_body: bool,
    default_host: &str,
) -> (Vec<u8>, bool) {
    let h = &parts.headers;
    let mut out = Vec::with_capacity(128 + h.len() * 48);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !h.contains_key(header::HOST) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(default_host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (k, v) in h {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let has_length = h.contains_key(header::CONTENT_LENGTH);
    let chunked = has_body && !has_length;
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    } else if !has_body
        && !has_length
        && matches!(parts.method, Method::POST | Method::PUT | Method::PATCH)
    {
        // As Go does: a body-carrying method with an empty body says so.
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (out, chunked)
}

/// Streams the request body to the upstream, chunk-encoding it when its length is unknown.
async fn pump_body(
    mut w: OwnedWriteHalf,
    mut body: Incoming,
    chunked: bool,
) -> io::Result<OwnedWriteHalf> {
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(io::Error::other)?;
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) if chunked => {
                w.write_all(format!("{:x}\r\n", data.len()).as_bytes())
                    .await?;
                w.write_all(&data).await?;
                w.write_all(b"\r\n").await?;
            }
            Ok(data) => w.write_all(&data).await?,
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    if chunked {
        let mut end = Vec::from(&b"0\r\n"[..]);
        for (k, v) in trailers.iter().flatten() {
            end.extend_from_slice(k.as_str().as_bytes());
            end.extend_from_slice(b": ");
            end.extend_from_slice(v.as_bytes());
            end.extend_from_slice(b"\r\n");
        }
        end.extend_from_slice(b"\r\n");
        w.write_all(&end).await?;
    }
    Ok(w)
}

// === H1Body ===

enum Reader {
    Whole(TcpStream),
    Split(OwnedReadHalf, Pump),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoder {
    Length(u64),
    Chunked(Chunk),
    Eof,
    Done,
}

impl Decoder {
    fn is_done(&self) -> bool {
        matches!(self, Self::Done | Self::Length(0))
    }
}

enum Step {
    Frame(Frame<Bytes>),
    NeedMore,
    End,
}

fn malformed(what: &str) -> BoxError {
    format!("malformed chunked body: {what}").into()
}

impl Decoder {
    /// The next frame that `buf` holds, consuming it.
    fn step(&mut self, buf: &mut BytesMut, eof: bool) -> Result<Step, BoxError> {
        loop {
            match *self {
                Self::Done | Self::Length(0) => {
                    *self = Self::Done;
                    return Ok(Step::End);
                }
                Self::Length(rem) => {
                    if buf.is_empty() {
                        return need_more(eof);
                    }
                    let n = usize::try_from(rem).unwrap_or(usize::MAX).min(buf.len());
                    *self = Self::Length(rem - n as u64);
                    return Ok(Step::Frame(Frame::data(buf.split_to(n).freeze())));
                }
                Self::Eof => {
                    if !buf.is_empty() {
                        return Ok(Step::Frame(Frame::data(buf.split().freeze())));
                    }
                    if eof {
                        *self = Self::Done;
                        return Ok(Step::End);
                    }
                    return Ok(Step::NeedMore);
                }
                Self::Chunked(Chunk::Size) => {
                    let Some(end) = find_crlf(buf) else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(malformed("chunk size line too long"));
                        }
                        return need_more(eof);
                    };
                    let line = buf.split_to(end + 2);
                    let digits = line[..end].split(|&b| b == b';').next().unwrap_or_default();
                    let text = std::str::from_utf8(digits)
                        .map_err(|_| malformed("chunk size"))?
                        .trim();
                    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(malformed("chunk size"));
                    }
                    let size =
                        u64::from_str_radix(text, 16).map_err(|_| malformed("chunk size"))?;
                    *self = Self::Chunked(if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    });
                }
                Self::Chunked(Chunk::Data(rem)) => {
                    if buf.is_empty() {
                        return need_more(eof);
                    }
                    let n = usize::try_from(rem).unwrap_or(usize::MAX).min(buf.len());
                    let left = rem - n as u64;
                    *self = Self::Chunked(if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    });
                    return Ok(Step::Frame(Frame::data(buf.split_to(n).freeze())));
                }
                Self::Chunked(Chunk::DataEnd) => {
                    if buf.len() < 2 {
                        return need_more(eof);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(malformed("missing CRLF after chunk"));
                    }
                    let _ = buf.split_to(2);
                    *self = Self::Chunked(Chunk::Size);
                }
                Self::Chunked(Chunk::Trailers) => {
                    if buf.starts_with(b"\r\n") {
                        let _ = buf.split_to(2);
                        *self = Self::Done;
                        return Ok(Step::End);
                    }
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        if buf.len() > 1 << 20 {
                            return Err(malformed("trailers too large"));
                        }
                        return need_more(eof);
                    };
                    let block = buf.split_to(end + 4);
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let parsed = httparse::parse_headers(&block, &mut headers)
                        .map_err(|_| malformed("trailers"))?;
                    let mut map = HeaderMap::new();
                    if let httparse::Status::Complete((_, fields)) = parsed {
                        for f in fields {
                            if let (Ok(k), Ok(v)) = (
                                HeaderName::from_bytes(f.name.as_bytes()),
                                HeaderValue::from_bytes(f.value),
                            ) {
                                map.append(k, v);
                            }
                        }
                    }
                    *self = Self::Done;
                    return Ok(Step::Frame(Frame::trailers(map)));
                }
            }
        }
    }
}

/// More bytes are needed; past the end of the stream that is a truncated body.
fn need_more(eof: bool) -> Result<Step, BoxError> {
    if eof {
        Err("upstream closed the body early".into())
    } else {
        Ok(Step::NeedMore)
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// A response body read straight from an upstream HTTP/1.1 connection; the connection goes back
/// to the pool when the body ends cleanly (and the request body was fully sent).
pub struct H1Body {
    reader: Option<Reader>,
    buf: BytesMut,
    decoder: Decoder,
    keep_alive: bool,
    slot: Option<OpenSlot>,
    client: Option<Client>,
    eof: bool,
}

impl std::fmt::Debug for H1Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Body")
            .field("decoder", &self.decoder)
            .field("keep_alive", &self.keep_alive)
            .finish_non_exhaustive()
    }
}

impl H1Body {
    fn done() -> Self {
        Self {
            reader: None,
            buf: BytesMut::new(),
            decoder: Decoder::Done,
            keep_alive: false,
            slot: None,
            client: None,
            eof: true,
        }
    }

    /// The body ended: the connection goes back if nothing else is left on it.
    fn release(&mut self) {
        let (Some(reader), Some(slot), Some(client)) =
            (self.reader.take(), self.slot.take(), self.client.take())
        else {
            return;
        };
        if !self.keep_alive || !self.buf.is_empty() {
            return;
        }
        let io = match reader {
            Reader::Whole(io) => io,
            Reader::Split(read, mut pump) => {
                // Only a request body that was fully sent leaves the connection reusable. When
                // the app answered before it had all of it, the exchange is over as it is in
                // Go's proxy (the handler returns and the outgoing request is cancelled): the
                // pump is aborted and the connection closes.
                let Some(task) = pump.0.as_mut() else { return };
                let waker = std::task::Waker::noop();
                match Pin::new(task).poll(&mut Context::from_waker(waker)) {
                    Poll::Ready(Ok(Ok(write))) => match read.reunite(write) {
                        Ok(io) => io,
                        Err(_) => return,
                    },
                    _ => return,
                }
            }
        };
        let buf = std::mem::take(&mut self.buf);
        client.put_http1(Pooled::new(io, buf, slot));
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(8192);
        }
        match self.reader.as_mut() {
            Some(Reader::Whole(io)) => {
                tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut self.buf)
            }
            Some(Reader::Split(read, _)) => {
                tokio_util::io::poll_read_buf(Pin::new(read), cx, &mut self.buf)
            }
            _ => Poll::Ready(Ok(0)),
        }
    }
}

impl http_body::Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match this.decoder.step(&mut this.buf, this.eof) {
                Ok(Step::Frame(frame)) => {
                    // hyper stops polling once the body reports its end, so the last frame is
                    // where the connection goes back.
                    if this.decoder.is_done() {
                        this.release();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(Step::End) => {
                    this.release();
                    return Poll::Ready(None);
                }
                Ok(Step::NeedMore) => {
                    if ready!(this.poll_fill(cx)).map_err(BoxError::from)? == 0 {
                        this.eof = true;
                    }
                }
                Err(e) => {
                    this.reader = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Length(n) => SizeHint::with_exact(n),
            Decoder::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(
        mut d: Decoder,
        input: &[&[u8]],
    ) -> Result<(Vec<u8>, Option<HeaderMap>), BoxError> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut trailers = None;
        let mut parts = input.iter();
        loop {
            match d.step(&mut buf, false)? {
                Step::Frame(f) => match f.into_data() {
                    Ok(data) => out.extend_from_slice(&data),
                    Err(f) => trailers = f.into_trailers().ok(),
                },
                Step::End => return Ok((out, trailers)),
                Step::NeedMore => match parts.next() {
                    Some(p) => buf.extend_from_slice(p),
                    None => return Err("ran out of input".into()),
                },
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let wire: &[u8] =
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\nx-a: b\r\n\r\n";
        for cut in 1..wire.len() {
            let (body, trailers) =
                decode_all(Decoder::Chunked(Chunk::Size), &[&wire[..cut], &wire[cut..]]).unwrap();
            assert_eq!(body, b"hello world", "cut at {cut}");
            let trailers = trailers.expect("trailers");
            assert_eq!(trailers["grpc-status"], "0");
            assert_eq!(trailers["x-a"], "b");
        }
        let (body, trailers) =
            decode_all(Decoder::Chunked(Chunk::Size), &[b"3\r\nabc\r\n0\r\n\r\n"]).unwrap();
        assert_eq!((body.as_slice(), trailers), (&b"abc"[..], None));
    }

    #[test]
    fn malformed_chunks_are_errors() {
        assert!(decode_all(Decoder::Chunked(Chunk::Size), &[b"zz\r\n"]).is_err());
        assert!(decode_all(Decoder::Chunked(Chunk::Size), &[b"3\r\nabcXY"]).is_err());
        let long = vec![b'1'; MAX_CHUNK_LINE + 10];
        assert!(decode_all(Decoder::Chunked(Chunk::Size), &[&long]).is_err());
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        let mut d = Decoder::Length(5);
        let mut buf = BytesMut::from(&b"hello"[..]);
        let Ok(Step::Frame(f)) = d.step(&mut buf, false) else {
            panic!()
        };
        assert_eq!(f.into_data().unwrap(), "hello");
        assert!(d.is_done());
        let mut d = Decoder::Length(5);
        let mut empty = BytesMut::new();
        assert!(
            d.step(&mut empty, true).is_err(),
            "EOF before the length is an error"
        );
    }

    #[test]
    fn framing_follows_the_rfc() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(*k, HeaderValue::from_static(v));
            }
            m
        };
        let ok = StatusCode::OK;
        assert_eq!(
            framing(ok, &h(&[("content-length", "3")]), false).unwrap(),
            Framing::Length(3)
        );
        assert_eq!(
            framing(ok, &h(&[("content-length", "3")]), true).unwrap(),
            Framing::Empty,
            "HEAD"
        );
        assert_eq!(
            framing(StatusCode::NO_CONTENT, &h(&[]), false).unwrap(),
            Framing::Empty
        );
        assert_eq!(
            framing(
                StatusCode::NOT_MODIFIED,
                &h(&[("content-length", "9")]),
                false
            )
            .unwrap(),
            Framing::Empty
        );
        assert_eq!(
            framing(
                ok,
                &h(&[("transfer-encoding", "chunked"), ("content-length", "3")]),
                false
            )
            .unwrap(),
            Framing::Chunked,
            "chunked wins over a length"
        );
        assert!(
            framing(ok, &h(&[("transfer-encoding", "gzip, chunked")]), false).is_err(),
            "a coding the client would not be told about"
        );
        assert!(framing(ok, &h(&[("content-length", "+3")]), false).is_err());
        assert_eq!(framing(ok, &h(&[]), false).unwrap(), Framing::Eof);
        assert!(
            framing(
                ok,
                &h(&[("content-length", "3"), ("content-length", "4")]),
                false
            )
            .is_err()
        );
        assert!(framing(ok, &h(&[("content-length", "x")]), false).is_err());
    }

    #[test]
    fn heads_carry_host_and_framing() {
        let req = Request::post("/p?q=1").header("x-a", "b").body(()).unwrap();
        let (parts, ()) = req.into_parts();
        let (head, chunked) = encode_head(&parts, true, "127.0.0.1:8080");
        assert!(chunked);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nhost: 127.0.0.1:8080\r\nx-a: b\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let req = Request::put("/").header("host", "h").body(()).unwrap();
        let (parts, ()) = req.into_parts();
        let (head, chunked) = encode_head(&parts, false, "x");
        assert!(!chunked);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "PUT / HTTP/1.1\r\nhost: h\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[test]
    fn response_heads_parse_with_shared_values() {
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-A: b\r\n\r\nhi"[..]);
        let (res, framing) = parse_head(&mut buf, false).unwrap().unwrap();
        assert_eq!(res.status(), 201);
        assert_eq!(res.headers()["x-a"], "b");
        assert_eq!(framing, Framing::Length(2));
        assert_eq!(&buf[..], b"hi", "the body stays in the buffer");
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nX-A"[..]);
        assert!(parse_head(&mut partial, false).unwrap().is_none());
        assert!(parse_head(&mut BytesMut::from(&b"NOT HTTP\r\n\r\n"[..]), false).is_err());
    }
}
