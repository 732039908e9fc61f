//! The node's HTTP: the admin endpoint and the media download listener, both on hyper (HTTP/1.1
//! with keep-alive) as tasks of the service core's runtime (one low-priority thread; no thread
//! per connection, no accept polling), and the `ferry healthcheck` client.
//!
//! Every listener bounds its connections: in all (`Caps::total`) and per client address
//! (`Caps::per_addr`); a connection past either is answered `503` with `retry-after: 1` and
//! closed without reading its request. A request head must arrive within `HEAD_TIMEOUT` (which
//! also closes a keep-alive connection left idle that long: slowloris costs one task and one
//! descriptor for that long, within the caps). A response body the client stops reading is
//! given up after `BODY_STALL_TIMEOUT`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};

/// What every response carries.
pub type Body = BoxBody<Bytes, io::Error>;

/// The whole request head within this long; an idle keep-alive connection closes after it too.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// A response body the client has not taken any of for this long is abandoned (the connection
/// closes).
pub const BODY_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Request heads larger than this are refused (`431`).
pub const HEAD_BYTES_MAX: usize = 16 * 1024;
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
    by_addr: HashMap<IpAddr, usize>,
}

struct Ticket {
    census: Arc<Mutex<Census>>,
    addr: IpAddr,
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
pub async fn serve<H, F>(listener: std::net::TcpListener, caps: Caps, name: &'static str, handle: H)
where
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
    // A descriptor held back for this listener: when the process is out of them (the shards stop
    // short of that, `limits.fds_reserved`, but media files and store segments do not), it is
    // given up to take one waiting connection and taken back, so `/metrics` still answers.
    let mut reserve = std::fs::File::open("/dev/null").ok();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                let taken = reserve.take().is_some();
                let got = if taken {
                    listener.accept().await.ok()
                } else {
                    None
                };
                reserve = std::fs::File::open("/dev/null").ok();
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
            // Over the cap: a clear answer, without reading the request, then close.
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
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(HEAD_BYTES_MAX.max(8192))
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
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
/// queue of two chunks that the response body takes from; a client that takes nothing for
/// `BODY_STALL_TIMEOUT` ends the body with an error (hyper closes the connection).
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
            match tokio::time::timeout(BODY_STALL_TIMEOUT, tx.send(item)).await {
                Ok(Ok(())) if !failed => {}
                Ok(_) => return, // the body is gone (the connection closed) or the read failed
                Err(_) => {
                    // Stalled: the receiver is dropped with the sender below; the body ends in
                    // an error as soon as hyper polls it again.
                    return;
                }
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
