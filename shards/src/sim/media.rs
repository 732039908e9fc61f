//! Media in the simulator: each core's media worker is the node's own store and request handler
//! (`crate::media::MediaStore`, `crate::media::answer`) behind a bounded queue (full: the shard
//! answers `Busy` itself), its files in a directory of the run's own that a crash leaves as it
//! is (kill -9: the page cache keeps every write; the store promises only what it synced, and
//! reopens from that). Clients upload blobs of a small pool, chunk by chunk, resume after a cut
//! or a crash from where the node says, finish them, and read ranges of them back.
//!
//! Checked: every media request on a connection still open is answered (one frame, or a run of
//! `BlobData` ending with `more: false`); a `Begin` never resumes past what was sent for the blob;
//! a chunk's answer counts exactly the bytes written so far; a finished upload always hashes to
//! its id (the store never lost or mixed up bytes across cuts, crashes and concurrent uploaders);
//! a blob answered `Complete` stays readable across crashes; a range read back verifies against
//! the id (blake3's tree) and equals the bytes uploaded.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_proto::frame::{BlobOpKind, BlobStatus};

use crate::media::{MediaLimits, MediaStore, verify_range};
use crate::service::{ServiceReply, ServiceWork};
use crate::shard::media_owner;

use super::service::Queue;
use super::*;

/// Requests one core's media worker holds at once (small, so that `Busy` comes).
const MEDIA_QUEUE_MAX: usize = 4;
/// Blobs the clients upload (so that several clients upload, resume and finish the same one).
const POOL_BLOBS: usize = 5;
/// The largest chunk a client sends, and the largest range it reads back.
const CHUNK_BYTES_MAX: u64 = 12 << 10;
const GET_BYTES_MAX: u64 = 40 << 10;
/// The media workers expire idle uploads this often.
const EXPIRE_EVERY_MS: u64 = 1_000;

/// Small limits, so that a run meets them: a few uploads at once, idle uploads dropped within a
/// run, a disk budget below the pool's total.
fn limits() -> MediaLimits {
    MediaLimits {
        blob_bytes_max: 48 << 10,
        ttl_s: 30 * 86_400,
        disk_bytes_max: 96 << 10,
        uploads_max: 3,
        uploads_per_source_max: 2,
        upload_idle_s: 2,
    }
}

/// Numbers the runs of this process (each its own directory).
static RUNS: AtomicU64 = AtomicU64::new(0);

/// The media workers of every core, their files, and what the checks remember.
#[derive(Debug)]
pub(super) struct Media {
    pub(super) queues: Vec<Arc<Queue>>,
    stores: Vec<MediaStore>,
    dir: PathBuf,
    /// The blobs clients upload: bytes and id.
    pool: Vec<(Bytes, [u8; 32])>,
    /// Per blob: the furthest end of a chunk sent, whether a `Finish` was sent, and whether it
    /// was answered `Complete` (then it must stay readable).
    sent_end: Vec<u64>,
    finish_sent: Vec<bool>,
    complete: Vec<bool>,
    next_expire_ms: u64,
    pub(super) answers: u64,
    pub(super) completed: u64,
    pub(super) ranges_verified: u64,
}

/// A client's upload in progress: the pool blob and the bytes the node said it holds.
#[derive(Debug, Clone, Copy)]
pub(super) struct Upload {
    blob: usize,
    at: u64,
}

/// A client's media request waiting for its answer.
#[derive(Debug, Clone)]
pub(super) enum Asked {
    /// `known_complete`: the blob was seen `Complete` before this was sent (then the node
    /// finished it before this arrives, and must say so).
    Begin {
        blob: usize,
        known_complete: bool,
    },
    Chunk {
        blob: usize,
        end: u64,
    },
    Finish(usize),
    Get {
        blob: usize,
        known_complete: bool,
        offset: u64,
        len: u64,
        got: Vec<u8>,
    },
}

impl Media {
    pub(super) fn new(cfg: &SimConfig) -> Result<Media, String> {
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "ferry-sim-{}-{}-{run}",
            std::process::id(),
            cfg.seed
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let mut r = Rng::new(cfg.seed ^ 0x3c6e_f372_fe94_f82b);
        let pool = (0..POOL_BLOBS)
            .map(|_| {
                let size = 1 + r.below(limits().blob_bytes_max);
                let bytes: Vec<u8> = (0..size).map(|_| r.next_u64().to_le_bytes()[0]).collect();
                let id = *blake3::hash(&bytes).as_bytes();
                (Bytes::from(bytes), id)
            })
            .collect();
        let mut m = Media {
            queues: (0..cfg.shards)
                .map(|_| Arc::new(Queue::new(MEDIA_QUEUE_MAX)))
                .collect(),
            stores: Vec::new(),
            dir,
            pool,
            sent_end: vec![0; POOL_BLOBS],
            finish_sent: vec![false; POOL_BLOBS],
            complete: vec![false; POOL_BLOBS],
            next_expire_ms: 0,
            answers: 0,
            completed: 0,
            ranges_verified: 0,
        };
        m.open(cfg.shards, START_UNIX_S)?;
        Ok(m)
    }

    /// (Re)opens every core's store from its files; what was queued died with the process.
    pub(super) fn open(&mut self, shards: usize, now_unix_s: u64) -> Result<(), String> {
        self.stores.clear();
        for q in &self.queues {
            while q.pop().is_some() {}
        }
        for s in 0..shards {
            let dir = self.dir.join(format!("shard-{s}"));
            let store = MediaStore::open(&dir, limits(), now_unix_s)
                .map_err(|e| format!("media store {s} did not reopen: {e}"))?;
            self.stores.push(store);
        }
        Ok(())
    }

    pub(super) fn sinks(&self) -> Vec<Arc<dyn crate::service::ServiceSink>> {
        self.queues
            .iter()
            .map(|q| {
                let sink: Arc<dyn crate::service::ServiceSink> = q.clone();
                sink
            })
            .collect()
    }

    /// A core whose worker has a request waiting.
    pub(super) fn busy_core(&self, from: usize) -> Option<usize> {
        let n = self.queues.len();
        (0..n)
            .map(|k| (from + k) % n)
            .find(|&s| !self.queues[s].is_empty())
    }
}

impl Drop for Media {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Sim {
    /// Core `s`'s media worker answers its oldest request.
    pub(super) fn media_serve(&mut self, s: usize) -> Result<(), String> {
        let Some((_, req)) = self.media.queues[s].pop() else {
            return Ok(());
        };
        let ServiceWork::Blob { op, source } = req.work else {
            return Err("a media worker got a request that is not media".into());
        };
        if media_owner(op.id(), self.cfg.shards) != s {
            return Err(format!(
                "a media request for {:?} reached core {s}, not its owner",
                &op.id()[..4]
            ));
        }
        let frames = crate::media::answer(&mut self.media.stores[s], self.now.unix_s, op, source);
        let to = usize::from(req.from.shard);
        for frame in frames {
            self.node.shards[to].on_service(
                self.now,
                ServiceReply::Frame {
                    to: req.from.conn,
                    frame,
                },
            );
        }
        self.pump(to);
        Ok(())
    }

    /// The workers' once-a-second expiry of idle uploads.
    pub(super) fn media_tick(&mut self) {
        if self.now.mono_ms < self.media.next_expire_ms {
            return;
        }
        self.media.next_expire_ms = self.now.mono_ms + EXPIRE_EVERY_MS;
        for store in &mut self.media.stores {
            store.expire(self.now.unix_s);
        }
    }

    /// Client `c`'s next media move: the next chunk of its upload, its finish, a new upload of a
    /// pool blob, or a range read of one. One request at a time.
    pub(super) fn media_action(&mut self, c: usize) {
        if self.clients[c].media_asked.is_some() {
            return;
        }
        // The upload goes on only when its answer says so.
        let frame = match self.clients[c].upload.take() {
            Some(Upload { blob, at }) => {
                let (bytes, id) = self.media.pool[blob].clone();
                let size = bytes.len() as u64;
                if at < size {
                    let n = (1 + self.rng.below(CHUNK_BYTES_MAX)).min(size - at);
                    let end = at + n;
                    self.media.sent_end[blob] = self.media.sent_end[blob].max(end);
                    self.clients[c].media_asked = Some(Asked::Chunk { blob, end });
                    Frame::BlobChunk {
                        id,
                        offset: at,
                        data: bytes.slice(
                            usize::try_from(at).unwrap_or(usize::MAX)
                                ..usize::try_from(end).unwrap_or(usize::MAX),
                        ),
                    }
                } else {
                    self.media.finish_sent[blob] = true;
                    self.clients[c].media_asked = Some(Asked::Finish(blob));
                    Frame::BlobFinish { id }
                }
            }
            None => {
                let blob = self.rng.index(POOL_BLOBS);
                let (bytes, id) = &self.media.pool[blob];
                let size = bytes.len() as u64;
                let known_complete = self.media.complete[blob];
                if self.rng.chance(700) {
                    self.clients[c].media_asked = Some(Asked::Begin {
                        blob,
                        known_complete,
                    });
                    Frame::BlobBegin { id: *id, size }
                } else {
                    let offset = self.rng.below(size);
                    let len = (1 + self.rng.below(GET_BYTES_MAX)).min(size - offset);
                    self.clients[c].media_asked = Some(Asked::Get {
                        blob,
                        known_complete,
                        offset,
                        len,
                        got: Vec::new(),
                    });
                    Frame::BlobGet {
                        id: *id,
                        offset,
                        len: u32::try_from(len).expect("a range of at most GET_BYTES_MAX"),
                    }
                }
            }
        };
        self.trace(|| {
            let f: String = format!("{frame:?}").chars().take(60).collect();
            format!("client {c} media: {f}")
        });
        self.clients[c].cc.push(&frame);
    }

    /// A media answer reached client `c`.
    pub(super) fn media_answer(&mut self, c: usize, ev: ClientEvent) -> Result<(), String> {
        let Some(asked) = self.clients[c].media_asked.take() else {
            return Err(format!(
                "client {c} got a media answer it did not ask for: {ev:?}"
            ));
        };
        let m = &mut self.media;
        let size_of = |b: usize| m.pool[b].0.len() as u64;
        match (asked, ev) {
            (
                Asked::Get {
                    blob,
                    known_complete,
                    offset,
                    len,
                    mut got,
                },
                ClientEvent::BlobData { data, more, .. },
            ) => {
                got.extend_from_slice(&data);
                if more {
                    self.clients[c].media_asked = Some(Asked::Get {
                        blob,
                        known_complete,
                        offset,
                        len,
                        got,
                    });
                    return Ok(());
                }
                m.answers += 1;
                let (bytes, id) = &m.pool[blob];
                let plain = verify_range(id, bytes.len() as u64, offset, len, &got)
                    .map_err(|e| format!("a range of blob {blob} did not verify: {e:?}"))?;
                let at = |x: u64| usize::try_from(x).unwrap_or(usize::MAX);
                if bytes.get(at(offset)..at(offset + len)) != Some(&plain[..]) {
                    return Err(format!(
                        "a range of blob {blob} verified but differs from its bytes"
                    ));
                }
                m.ranges_verified += 1;
            }
            (
                asked,
                ClientEvent::BlobStatus {
                    op,
                    status,
                    offset,
                    size,
                    ..
                },
            ) => {
                m.answers += 1;
                let busy = matches!(
                    status,
                    BlobStatus::Busy | BlobStatus::DiskFull | BlobStatus::RateLimited
                );
                match (asked, op) {
                    (
                        Asked::Begin {
                            blob,
                            known_complete,
                        },
                        BlobOpKind::Begin,
                    ) => match status {
                        BlobStatus::Ok if known_complete => {
                            return Err(format!(
                                "blob {blob} was complete, and a Begin resumes it at {offset}"
                            ));
                        }
                        BlobStatus::Ok => {
                            if offset > m.sent_end[blob] || offset > size_of(blob) {
                                return Err(format!(
                                    "blob {blob}'s upload resumes at {offset}, past the {} bytes sent",
                                    m.sent_end[blob]
                                ));
                            }
                            self.clients[c].upload = Some(Upload { blob, at: offset });
                        }
                        BlobStatus::Complete => {
                            if !m.finish_sent[blob] {
                                return Err(format!(
                                    "blob {blob} complete, but nobody finished it"
                                ));
                            }
                            m.complete[blob] = true;
                        }
                        _ if busy => {}
                        other => return Err(format!("a Begin of blob {blob} answered {other:?}")),
                    },
                    (Asked::Chunk { blob, end }, BlobOpKind::Chunk) => match status {
                        BlobStatus::Ok if offset == end => {
                            self.clients[c].upload = Some(Upload { blob, at: end });
                        }
                        BlobStatus::Ok => {
                            return Err(format!(
                                "a chunk of blob {blob} ending at {end} answered {offset} bytes held"
                            ));
                        }
                        // Another uploader moved the upload on, or it was dropped idle:
                        // resume where the node says, or begin again.
                        BlobStatus::BadOffset => {
                            self.clients[c].upload = Some(Upload { blob, at: offset });
                        }
                        BlobStatus::NotFound => {}
                        _ if busy => {}
                        other => return Err(format!("a chunk of blob {blob} answered {other:?}")),
                    },
                    (Asked::Finish(blob), BlobOpKind::Finish) => match status {
                        BlobStatus::Complete if size == size_of(blob) => {
                            m.complete[blob] = true;
                            m.completed += 1;
                        }
                        BlobStatus::Mismatch => {
                            return Err(format!(
                                "blob {blob}'s upload did not hash to its id: the store lost or mixed up bytes"
                            ));
                        }
                        // Not all bytes in (another uploader's chunk was lost): resume there.
                        BlobStatus::BadOffset => {
                            self.clients[c].upload = Some(Upload { blob, at: offset });
                        }
                        // Dropped idle before the finish: begin again.
                        BlobStatus::NotFound => {}
                        _ if busy => {}
                        other => {
                            return Err(format!(
                                "a finish of blob {blob} answered {other:?} (size {size})"
                            ));
                        }
                    },
                    (
                        Asked::Get {
                            blob,
                            known_complete,
                            ..
                        },
                        BlobOpKind::Get,
                    ) => match status {
                        BlobStatus::NotFound if known_complete => {
                            return Err(format!("blob {blob} was complete and is not found"));
                        }
                        BlobStatus::NotFound => {}
                        _ if busy => {}
                        other => return Err(format!("a read of blob {blob} answered {other:?}")),
                    },
                    (asked, op) => {
                        return Err(format!(
                            "client {c} asked {asked:?} and got an answer to {op:?}"
                        ));
                    }
                }
            }
            (asked, ev) => {
                return Err(format!("client {c} asked {asked:?} and got {ev:?}"));
            }
        }
        Ok(())
    }
}
