//! The node's HTTP: the admin endpoint and the media download listener, both on hyper (HTTP/1.1
//! with keep-alive) as tasks of the service core's runtime (one low-priority thread; no thread
//! per connection, no accept polling), and the `ferry healthcheck` client.
//!
//! Every listener bounds its connections: in all (`Caps::total`) and per client address
//! (`Caps::per_addr`; an IPv6 client by its /64, as the shards count it); a connection past
//! either is answered `503` with `retry-after: 1` and closed without reading its request. A
//! request head must arrive within `HEAD_TIMEOUT` (which also closes a keep-alive connection
//! left idle that long: slowloris costs one task and one descriptor for that long, within the
//! caps). A connection whose writes make no progress for `limits.write_stall_timeout_ms` (a
//! client that stops reading a download, or pipelines requests and never reads the answers) is
//! closed, as the shards close a slow reader.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_shards::ratelimit::IpKey;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What every response carries.
pub type Body = BoxBody<Bytes, io::Error>;

/// The whole request head within this long; an idle keep-alive connection closes after it too.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How often each connection's write-stall watchdog looks, at most (a quarter of the timeout
/// when that is shorter).
const WRITE_STALL_CHECK_MAX: Duration = Duration::from_secs(5);
/// Request heads larger than this are refused (`431`).
pub const HEAD_BYTES_MAX: usize = 16 * 1024;
// hyper refuses a read buffer under 8 KiB.
const _: () = assert!(HEAD_BYTES_MAX >= 8192);
/// How long a listener out of descriptors waits before it tries again when its reserve could not
/// take a connection either.
const ACCEPT_RETRY: Duration = Duration::from_millis(20);

/// Connection bounds of one listener.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    pub total: usize,
    pub per_addr: usize,
}

/// The admin endpoint's bounds: an orchestrator and a scraper, a few connections each.
pub const ADMIN_CAPS: Caps = Caps {
    total: 64,
    per_addr: 16,
};
/// The media listener's bounds: a CDN or cache in front makes many connections from few
/// addresses; one client cannot take them all.
pub const MEDIA_CAPS: Caps = Caps {
    total: 256,
    per_addr: 32,
};

/// Live connections per address, released when a connection's task ends.
#[derive(Debug, Default)]
struct Census {
    total: usize,
    by_addr: HashMap<IpKey, usize>,
}

struct Ticket {
    census: Arc<Mutex<Census>>,
    addr: IpKey,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut c = self
            .census
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        c.total -= 1;
        if let Some(n) = c.by_addr.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                c.by_addr.remove(&self.addr);
            }
        }
    }
}

fn admit(census: &Arc<Mutex<Census>>, caps: Caps, addr: IpAddr) -> Option<Ticket> {
    let addr = IpKey::from(addr);
    let mut c = census
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let here = c.by_addr.get(&addr).copied().unwrap_or(0);
    if c.total >= caps.total || here >= caps.per_addr {
        return None;
    }
    c.total += 1;
    c.by_addr.insert(addr, here + 1);
    Some(Ticket {
        census: census.clone(),
        addr,
    })
}

/// Serves `listener` on the current runtime until the runtime stops: each admitted connection
/// is a task running `handle` for each of its requests.
pub async fn serve<H, F>(
    listener: std::net::TcpListener,
    caps: Caps,
    write_stall: Duration,
    name: &'static str,
    handle: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "{name}: cannot serve its listener");
            return;
        }
    };
    let census = Arc::new(Mutex::new(Census::default()));
    let check = (write_stall / 4).clamp(Duration::from_millis(10), WRITE_STALL_CHECK_MAX);
    // A descriptor held back for this listener: when the process is out of them (the shards stop
    // short of that, `limits.fds_reserved`, but media files and store segments do not), it is
    // given up to take one waiting connection and taken back, so `/metrics` still answers.
    let mut reserve = None;
    loop {
        // Taken back at the first chance after it was spent (opening it fails while the process
        // is still out of descriptors).
        if reserve.is_none() {
            reserve = std::fs::File::open("/dev/null").ok();
        }
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                let got = match reserve.take() {
                    Some(spare) => {
                        drop(spare);
                        listener.accept().await.ok()
                    }
                    None => None,
                };
                match got {
                    Some(c) => c,
                    None => {
                        tokio::time::sleep(ACCEPT_RETRY).await;
                        continue;
                    }
                }
            }
            Err(_) => {
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let Some(ticket) = admit(&census, caps, peer.ip()) else {
            // Over the cap: a clear answer, without waiting for the request, then close. What
            // already came is read first, so that the close is a FIN, not a reset that could
            // destroy the answer before the client reads it.
            let mut sink = [0u8; 4096];
            while matches!(stream.try_read(&mut sink), Ok(n) if n > 0) {}
            let _ = stream.try_write(
                b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let _ticket = ticket;
            let service = hyper::service::service_fn(move |req| {
                let f = handle(req, peer);
                async move { Ok::<_, Infallible>(f.await) }
            });
            let (watched, stalled_since) = Watched::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(HEAD_BYTES_MAX)
                .keep_alive(true)
                .serve_connection(TokioIo::new(watched), service);
            tokio::pin!(conn);
            loop {
                tokio::select! {
                    _ = &mut conn => break,
                    () = tokio::time::sleep(check) => {
                        if stalled_since.stalled_for() >= write_stall {
                            break; // dropping the connection closes the socket
                        }
                    }
                }
            }
        });
    }
}

/// A response with a small body.
pub fn text(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

/// A response without a body (`content-length: 0`, or none for `304`).
pub fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(no_body());
    *r.status_mut() = status;
    r
}

/// An empty body.
pub fn no_body() -> Body {
    Empty::new().map_err(|n: Infallible| match n {}).boxed()
}

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|n: Infallible| match n {}).boxed()
}

/// Bytes read off the service thread (`spawn_blocking`, `chunk` at a time) into a bounded
/// queue of two chunks that the response body takes from. A client that stops reading stalls
/// the connection's writes, and the connection's watchdog closes it after
/// `limits.write_stall_timeout_ms`; the reader then finds the body gone and stops.
pub fn blocking_body(
    chunk: usize,
    mut read: impl FnMut(&mut Vec<u8>) -> io::Result<usize> + Send + 'static,
) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(2);
    tokio::spawn(async move {
        loop {
            let r = tokio::task::spawn_blocking(move || {
                let mut buf = Vec::with_capacity(chunk);
                let n = read(&mut buf);
                (read, buf, n)
            })
            .await;
            let (back, buf, n) = match r {
                Ok(v) => v,
                Err(e) => {
                    let _ = tx.send(Err(io::Error::other(e))).await;
                    return;
                }
            };
            read = back;
            let item = match n {
                Ok(0) => return,
                Ok(_) => Ok(Bytes::from(buf)),
                Err(e) => Err(e),
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return; // the body is gone (the connection closed), or the read failed
            }
        }
    });
    ChannelBody { rx, done: false }.boxed()
}

/// The receiving end of [`blocking_body`]: ends cleanly when the producer finished, with an
/// error when it gave up.
struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    done: bool,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A connection's socket, watched for writes that make no progress.
struct Watched {
    inner: tokio::net::TcpStream,
    stall: Arc<Stall>,
}

/// Since when a connection's writes have been blocked (ms after `base`; 0: not blocked).
#[derive(Debug)]
struct Stall {
    base: Instant,
    since_ms: AtomicU64,
}

impl Stall {
    fn stalled_for(&self) -> Duration {
        match self.since_ms.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            ms => self
                .base
                .elapsed()
                .saturating_sub(Duration::from_millis(ms)),
        }
    }

    fn note(&self, blocked: bool) {
        if !blocked {
            self.since_ms.store(0, Ordering::Relaxed);
        } else if self.since_ms.load(Ordering::Relaxed) == 0 {
            let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.since_ms.store(now.max(1), Ordering::Relaxed);
        }
    }
}

impl Watched {
    fn new(inner: tokio::net::TcpStream) -> (Watched, Arc<Stall>) {
        let stall = Arc::new(Stall {
            base: Instant::now(),
            since_ms: AtomicU64::new(0),
        });
        (
            Watched {
                inner,
                stall: stall.clone(),
            },
            stall,
        )
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.stall.note(r.is_pending());
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.stall.note(r.is_pending());
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// `ferry healthcheck`: `GET /readyz` on the admin endpoint; true on `200`.
pub fn healthcheck(addr: SocketAddr, timeout: Duration) -> anyhow::Result<bool> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let ask = async {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let req = Request::get("/readyz")
                .header(header::HOST, "ferry")
                .body(Empty::<Bytes>::new())?;
            let resp = send.send_request(req).await?;
            anyhow::Ok(resp.status() == StatusCode::OK)
        };
        tokio::time::timeout(timeout, ask)
            .await
            .map_err(|_| anyhow::anyhow!("no answer from {addr} within {timeout:?}"))?
    })
}
