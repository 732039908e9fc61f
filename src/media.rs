//! Media workers: one thread per shard core, pinned to that core, owning the core's media store
//! (`data_dir/media/shard-<id>`, `ferry_shards::media::MediaStore`). A blob belongs to the core
//! `media_owner(id)`; whichever core a client is connected to hands its requests to that core's
//! worker over a bounded queue (full: `Busy`, never waiting), and the worker answers through the
//! client's shard's reply channel and doorbell, as the service core does. File writes, syncs and
//! the hashing of a finished upload run here, never on a shard's event loop.
//!
//! The optional HTTP listener (`media.http_listen`) serves `GET /blob/<id>` (with `Range`,
//! `ETag`/`If-None-Match`, keep-alive) and `GET /blob/<id>.obao` (the outboard, to verify
//! ranges) straight from the files of complete blobs, for a CDN or cache in front: a task of the
//! service core's runtime, its file reads on the runtime's blocking threads.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ferry_shards::clock::Clock;
use ferry_shards::media::{MediaLimits, MediaStats, MediaStore, hex, unhex};
use ferry_shards::service::{ServiceReply, ServiceRequest, ServiceSink, ServiceWork};

use http::{Method, Request, Response, StatusCode, header};

use crate::service::ReplyPort;

#[derive(Debug)]
struct Sink(crossbeam_channel::Sender<ServiceRequest>);

impl ServiceSink for Sink {
    fn offer(&self, req: ServiceRequest) -> Result<(), ServiceRequest> {
        self.0.try_send(req).map_err(|e| e.into_inner())
    }
}

ferry_shards::counters! {
    /// Counters of all media workers together (rendered by the admin endpoint).
    pub struct MediaMetrics {
        reservations_expired: "counter", "ferry_media_reservations_expired_total", "Unfinished media uploads dropped after media.upload_idle_s without a chunk.";
        uploads_refused_source: "counter", "ferry_media_uploads_refused_source_total", "BlobBegins answered Busy: their address held media.uploads_per_source_max unfinished uploads on that core.";
    }
}

impl MediaMetrics {
    /// Adds what a store counted since `before`.
    fn add(&self, before: MediaStats, after: MediaStats) {
        let add = |a: &AtomicU64, d: u64| {
            if d > 0 {
                a.fetch_add(d, Ordering::Relaxed);
            }
        };
        add(
            &self.reservations_expired,
            after.reservations_expired - before.reservations_expired,
        );
        add(
            &self.uploads_refused_source,
            after.uploads_refused_source - before.uploads_refused_source,
        );
    }
}

/// The running media workers.
#[derive(Debug)]
pub struct MediaHandle {
    /// One sink per owner core, handed to every shard.
    pub sinks: Vec<Arc<dyn ServiceSink>>,
    stop: Arc<AtomicBool>,
    joins: Vec<std::thread::JoinHandle<()>>,
}

impl MediaHandle {
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        drop(self.sinks);
        for j in self.joins {
            let _ = j.join();
        }
    }
}

/// Directory of core `shard`'s media.
pub fn shard_dir(dir: &Path, shard: usize) -> PathBuf {
    dir.join(format!("shard-{shard}"))
}

/// Opens every core's store (start-up fails with the directory named) and starts the workers:
/// on the service core's CPU when there is one (`cpu`), at lowered priority, never on a shard's
/// CPU (hashing a finished upload would take that core's time from its event loop).
pub fn start(
    dir: &Path,
    limits: MediaLimits,
    queue_max: usize,
    cpu: Option<usize>,
    clock: Clock,
    ports: &[ReplyPort],
    metrics: Arc<MediaMetrics>,
) -> anyhow::Result<MediaHandle> {
    let shards = ports.len();
    let stop = Arc::new(AtomicBool::new(false));
    let mut sinks: Vec<Arc<dyn ServiceSink>> = Vec::with_capacity(shards);
    let mut joins = Vec::with_capacity(shards);
    let per_shard = MediaLimits {
        disk_bytes_max: (limits.disk_bytes_max / shards.max(1) as u64).max(1),
        ..limits
    };
    for shard in 0..shards {
        let d = shard_dir(dir, shard);
        let store = MediaStore::open(&d, per_shard.clone(), clock.now().unix_s)
            .map_err(|e| anyhow::anyhow!("media store {}: {e}", d.display()))?;
        let (tx, rx) = crossbeam_channel::bounded(queue_max.max(1));
        sinks.push(Arc::new(Sink(tx)));
        let ports: Vec<ReplyPort> = ports
            .iter()
            .map(ReplyPort::try_clone)
            .collect::<std::io::Result<_>>()?;
        let stop = stop.clone();
        let metrics = metrics.clone();
        joins.push(
            std::thread::Builder::new()
                .name(format!("ferry-media-{shard}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        crate::sys::pin_current_thread(cpu);
                    }
                    crate::sys::lower_thread_priority(10);
                    worker(store, rx, ports, clock, stop, &metrics);
                })?,
        );
    }
    Ok(MediaHandle { sinks, stop, joins })
}

fn worker(
    mut store: MediaStore,
    rx: crossbeam_channel::Receiver<ServiceRequest>,
    ports: Vec<ReplyPort>,
    clock: Clock,
    stop: Arc<AtomicBool>,
    metrics: &MediaMetrics,
) {
    let mut last_expire = 0;
    loop {
        let mut before = store.stats;
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(req) => {
                let ServiceWork::Blob { op, source } = req.work else {
                    continue;
                };
                let now = clock.now().unix_s;
                let port = ports.get(usize::from(req.from.shard));
                let frames = ferry_shards::media::answer(&mut store, now, op, source);
                // Metrics first: whatever a client is answered is already counted (a test read
                // a refusal counter right after its last answer and found it one short).
                metrics.add(before, store.stats);
                before = store.stats;
                for frame in frames {
                    if let Some(p) = port {
                        p.send(ServiceReply::Frame {
                            to: req.from.conn,
                            frame,
                        });
                    }
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }
        let now = clock.now().unix_s;
        if now != last_expire {
            last_expire = now;
            store.expire(now);
        }
        metrics.add(before, store.stats);
        if stop.load(Ordering::Acquire) && rx.is_empty() {
            break;
        }
    }
    // The drain: what was acknowledged chunk by chunk becomes durable, so an upload resumes
    // after the restart where its acknowledgements ended.
    match store.sync_all() {
        Ok(n) if n > 0 => tracing::info!(uploads = n, "media uploads synced for the restart"),
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "media upload sync failed at stop"),
    }
}

/// Serves complete blobs on `listener` (a task of the service core's runtime, `crate::http`):
/// `GET`/`HEAD /blob/<id>` and `/blob/<id>.obao`, with one `Range`, an `ETag` (the id) that
/// `If-None-Match` revalidates (`304`), and keep-alive.
pub async fn serve_http(
    listener: std::net::TcpListener,
    write_stall: Duration,
    dir: PathBuf,
    shards: usize,
    clock: Clock,
) {
    let dir = Arc::new(dir);
    crate::http::serve(
        listener,
        crate::http::MEDIA_CAPS,
        write_stall,
        "media http",
        move |req, _| {
            let dir = dir.clone();
            async move {
                let ask = Ask {
                    head: req.method() == Method::HEAD,
                    get: req.method() == Method::GET,
                    path: req.uri().path().to_string(),
                    range: header_str(&req, header::RANGE),
                    if_none_match: header_str(&req, header::IF_NONE_MATCH),
                };
                // File lookups block: off the service thread.
                let now = clock.now().unix_s;
                let looked =
                    tokio::task::spawn_blocking(move || lookup(&ask, &dir, shards, now)).await;
                match looked {
                    Ok((resp, Some(found))) => {
                        let (parts, ()) = resp.into_parts();
                        Response::from_parts(parts, file_body(found))
                    }
                    Ok((resp, None)) => resp.map(|()| crate::http::no_body()),
                    Err(_) => crate::http::empty(StatusCode::INTERNAL_SERVER_ERROR),
                }
            }
        },
    )
    .await;
}

/// Bytes of a blob file read per step of a download.
const HTTP_CHUNK_BYTES: usize = 256 * 1024;

/// What the media listener needs of a request.
struct Ask {
    head: bool,
    get: bool,
    path: String,
    range: Option<String>,
    if_none_match: Option<String>,
}

/// A file range to send.
struct Found {
    file: std::fs::File,
    start: u64,
    len: u64,
}

fn header_str<B>(req: &Request<B>, name: header::HeaderName) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn file_body(found: Found) -> crate::http::Body {
    let Found {
        mut file,
        start,
        mut len,
    } = found;
    let mut seeked = false;
    crate::http::blocking_body(HTTP_CHUNK_BYTES, move |buf| {
        if !seeked {
            file.seek(SeekFrom::Start(start))?;
            seeked = true;
        }
        if len == 0 {
            return Ok(0);
        }
        let want = usize::try_from(len.min(HTTP_CHUNK_BYTES as u64)).unwrap_or(HTTP_CHUNK_BYTES);
        buf.resize(want, 0);
        let n = file.read(buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.truncate(n);
        len -= n as u64;
        Ok(n)
    })
}

/// Whether an `If-None-Match` value names `etag` (or is `*`); weak tags compare equal too.
fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match
        .split(',')
        .map(|t| t.trim())
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

/// Finds what a request asks for: the response head, and the file range to send with it.
fn lookup(ask: &Ask, dir: &Path, shards: usize, now: u64) -> (Response<()>, Option<Found>) {
    let bare = |code: StatusCode| {
        let mut r = Response::new(());
        *r.status_mut() = code;
        (r, None)
    };
    if !ask.get && !ask.head {
        return bare(StatusCode::METHOD_NOT_ALLOWED);
    }
    let Some(name) = ask.path.strip_prefix("/blob/") else {
        return bare(StatusCode::NOT_FOUND);
    };
    let (hexid, ext) = match name.strip_suffix(".obao") {
        Some(h) => (h, "obao"),
        None => (name, "blob"),
    };
    let Some(id) = unhex(hexid) else {
        return bare(StatusCode::NOT_FOUND);
    };
    let d = shard_dir(dir, ferry_shards::shard::media_owner(&id, shards));
    // Complete and not expired: the meta file says so.
    let meta = std::fs::read(d.join(format!("{}.meta", hex(&id)))).unwrap_or_default();
    let expires = meta
        .get(8..16)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0);
    if expires <= now {
        return bare(StatusCode::NOT_FOUND);
    }
    // A cache may keep it until the node deletes it, not longer.
    let max_age = expires - now;
    // Normalised: the file name comes from the parsed id, never from the request's text.
    let hexid = hex(&id);
    // Only a missing file is a 404 (which a cache may keep); anything else (out of
    // descriptors, a disk error) is the node's trouble: 503, try again.
    let failed = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::NotFound {
            bare(StatusCode::NOT_FOUND)
        } else {
            bare(StatusCode::SERVICE_UNAVAILABLE)
        }
    };
    let file = match std::fs::File::open(d.join(format!("{hexid}.{ext}"))) {
        Ok(f) => f,
        Err(e) => return failed(e),
    };
    let size = match file.metadata() {
        Ok(m) => m.len(),
        Err(e) => return failed(e),
    };
    // The id names the bytes: one ETag per file (the outboard's differs from the blob's).
    let etag = if ext == "obao" {
        format!("\"{hexid}.obao\"")
    } else {
        format!("\"{hexid}\"")
    };
    let mut r = Response::builder()
        .header(header::ETAG, &etag)
        .header(
            header::CACHE_CONTROL,
            format!("public, max-age={max_age}, immutable"),
        )
        .header(header::ACCEPT_RANGES, "bytes");
    if ask
        .if_none_match
        .as_deref()
        .is_some_and(|v| etag_matches(v, &etag))
    {
        let resp = r
            .status(StatusCode::NOT_MODIFIED)
            .body(())
            .unwrap_or_default();
        return (resp, None);
    }
    let (start, end, code) = match ask.range.as_deref() {
        None => (0, size, StatusCode::OK),
        Some(v) => match parse_range(v, size) {
            Some((a, b)) => {
                r = r.header(header::CONTENT_RANGE, format!("bytes {a}-{}/{size}", b - 1));
                (a, b, StatusCode::PARTIAL_CONTENT)
            }
            None => {
                let resp = r
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                    .body(())
                    .unwrap_or_default();
                return (resp, None);
            }
        },
    };
    let resp = r
        .status(code)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, end - start)
        .body(())
        .unwrap_or_default();
    let send = (ask.get && end > start).then_some(Found {
        file,
        start,
        len: end - start,
    });
    (resp, send)
}

/// Parses `bytes=a-b`, `bytes=a-`, `bytes=-n` against `size`: (start, end exclusive).
fn parse_range(v: &str, size: u64) -> Option<(u64, u64)> {
    let spec = v.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None; // one range per request
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (size.saturating_sub(n), size)
        }
        (a, "") => (a.parse().ok()?, size),
        (a, b) => (
            a.parse().ok()?,
            b.parse::<u64>().ok()?.saturating_add(1).min(size),
        ),
    };
    (start < end && start < size).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_like_rfc_9110() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 10)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 100)));
        assert_eq!(parse_range("bytes=-5", 100), Some((95, 100)));
        assert_eq!(parse_range("bytes=50-1000", 100), Some((50, 100)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-1", 100), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}
