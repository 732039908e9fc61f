//! The prekey directory in the simulator: the node's own [`Directory`] on the simulated service
//! core, its journal kept as the records the core synced before it answered (so a crash keeps
//! exactly those), and clients that upload sealed one-time keys for their own mailbox and fetch
//! bundles of anyone's. Checked: a one-time key is handed out at most once, across crashes and
//! compactions; whatever a bundle holds was uploaded for that dest; every request is answered.

use std::collections::{HashMap, HashSet};

use ferry_proto::frame::PrekeyStatus;
use ferry_proto::prekey::{
    EC_SEALED_BYTES, HEAD_BYTES, PQ_SEALED_BYTES, SealedEc, SealedPq, Upload,
};

use crate::prekeys::{Directory, DirectoryLimits, HourlyRate};
use crate::service::ServiceWork;

use super::*;

/// A one-time key: its kind (0 EC, 1 PQ), dest and id.
type KeyRef = (u8, Dest, u32);

/// The simulated core's directory, with what it made durable.
#[derive(Debug)]
pub(super) struct Prekeys {
    directory: Directory,
    /// The journal: every record the core synced (a compaction replaces it by a snapshot).
    journal: Vec<Vec<u8>>,
    /// Requests handled since the last compaction.
    since_compaction: u32,
    /// A compaction after this many requests.
    compact_every: u32,
}

/// Generous one-time budgets (so that keys are handed out and a second hand-out would show),
/// short slot lifetimes (so that slots expire within a run), no rate limits and no puzzles.
fn limits() -> DirectoryLimits {
    let open = Rate { per_s: 0, burst: 0 };
    DirectoryLimits {
        slots_max: 64,
        bytes_max: 4 << 20,
        slot_ttl_s: 600,
        fetch_per_addr: open,
        one_time_per_slot: HourlyRate {
            per_hour: 36_000,
            burst: 50,
        },
        one_time_per_source: HourlyRate {
            per_hour: 7_200,
            burst: 5,
        },
        upload_per_addr: open,
        rate_entries_max: 64,
        puzzle: PuzzleConfig {
            levels: 0,
            ..PuzzleConfig::default()
        },
    }
}

impl Prekeys {
    /// An empty directory that compacts its journal (replaces it by a snapshot) every
    /// `compact_every` requests.
    pub(super) fn new(compact_every: u32) -> Prekeys {
        Prekeys {
            directory: Directory::new(limits()),
            journal: Vec::new(),
            since_compaction: 0,
            compact_every: compact_every.max(1),
        }
    }

    /// Handles one prekey request as the real core does: expiry first (its once-a-second
    /// maintenance), then the request, then the journal sync, then the answer.
    pub(super) fn handle(&mut self, now: Now, work: ServiceWork) -> Option<Frame> {
        let d = &mut self.directory;
        d.expire(now.unix_s);
        let frame = match work {
            ServiceWork::PrekeyUpload { upload, requester } => {
                let dest = upload.dest;
                match d.upload(now.unix_s, now.mono_ms, &upload, requester) {
                    Ok((ec_left, pq_left)) => Frame::PrekeyResult {
                        dest,
                        status: PrekeyStatus::Ok,
                        kind: ferry_proto::prekey::KeyKind::None,
                        index: 0,
                        ec_left,
                        pq_left,
                    },
                    Err(r) => Frame::PrekeyResult {
                        dest,
                        status: r.status,
                        kind: r.kind,
                        index: r.index,
                        ec_left: 0,
                        pq_left: 0,
                    },
                }
            }
            ServiceWork::PrekeyFetch {
                dest,
                requester,
                puzzle,
            } => {
                let (status, bundle, puzzle) =
                    match d.fetch_with(now.unix_s, now.mono_ms, dest, requester, puzzle.as_ref()) {
                        Ok((b, ask)) => (PrekeyStatus::Ok, Some(Box::new(b)), ask),
                        Err(s) => (s, None, None),
                    };
                Frame::PrekeyBundle {
                    dest,
                    status,
                    bundle,
                    puzzle,
                }
            }
            _ => return None,
        };
        self.journal.extend(self.directory.take_records());
        self.since_compaction += 1;
        if self.since_compaction >= self.compact_every {
            self.since_compaction = 0;
            self.journal = self.directory.snapshot();
        }
        Some(frame)
    }

    /// A restart: the directory as its journal rebuilds it.
    pub(super) fn restart(&mut self) -> Result<(), String> {
        self.directory = Directory::new(limits());
        let bad = self.directory.replay(&self.journal);
        if bad > 0 {
            return Err(format!("{bad} prekey journal records did not replay"));
        }
        Ok(())
    }
}

/// What the clients uploaded and were handed.
#[derive(Debug, Default)]
pub(super) struct PrekeyOracle {
    /// Every one-time key some upload carried, with its sealed bytes.
    uploaded: HashMap<KeyRef, Bytes>,
    /// Every head some upload carried, per dest.
    heads: HashSet<(Dest, Bytes)>,
    /// One-time keys handed out.
    handed: HashSet<KeyRef>,
    next_id: u32,
    next_head: u32,
}

impl PrekeyOracle {
    fn check_bundle(
        &mut self,
        dest: Dest,
        b: &ferry_proto::prekey::SealedBundle,
    ) -> Result<(), String> {
        if !self.heads.contains(&(dest, b.head.clone())) {
            return Err(format!(
                "a bundle for {dest:?} with a head nobody uploaded for it"
            ));
        }
        let keys = [
            b.ec.as_ref()
                .map(|k| ((0, dest, k.id), Bytes::copy_from_slice(&k.sealed))),
            b.pq.as_ref().map(|k| ((1, dest, k.id), k.sealed.clone())),
        ];
        for (key, sealed) in keys.into_iter().flatten() {
            if self.uploaded.get(&key) != Some(&sealed) {
                return Err(format!(
                    "one-time key {key:?} handed out but never uploaded as such"
                ));
            }
            if !self.handed.insert(key) {
                return Err(format!("one-time key {key:?} handed out twice"));
            }
        }
        Ok(())
    }
}

/// A sealed item's bytes: its kind, dest and id, then filler (the node cannot open it anyway).
fn sealed(kind: u8, dest: Dest, id: u32, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    v.push(kind);
    v.extend_from_slice(&dest.0);
    v.extend_from_slice(&id.to_le_bytes());
    v.resize(len, 0x5a);
    v
}

impl Sim {
    /// Uploads a head and a few fresh one-time keys for the client's mailbox (sometimes
    /// replacing the slot's), with a TTL that may expire within the run.
    pub(super) fn prekey_upload(&mut self, c: usize) {
        let dest = self.dest_of(self.clients[c].mailbox);
        let o = &mut self.prekey_oracle;
        o.next_head += 1;
        let head = Bytes::from(sealed(2, dest, o.next_head, HEAD_BYTES));
        o.heads.insert((dest, head.clone()));
        let ec_n = self.rng.index(4);
        let pq_n = self.rng.index(3);
        let o = &mut self.prekey_oracle;
        let ec = (0..ec_n)
            .map(|_| {
                o.next_id += 1;
                let s = sealed(0, dest, o.next_id, EC_SEALED_BYTES);
                o.uploaded
                    .insert((0, dest, o.next_id), Bytes::copy_from_slice(&s));
                SealedEc {
                    id: o.next_id,
                    sealed: s.try_into().expect("EC_SEALED_BYTES long"),
                }
            })
            .collect();
        let pq = (0..pq_n)
            .map(|_| {
                o.next_id += 1;
                let s = Bytes::from(sealed(1, dest, o.next_id, PQ_SEALED_BYTES));
                o.uploaded.insert((1, dest, o.next_id), s.clone());
                SealedPq {
                    id: o.next_id,
                    sealed: s,
                }
            })
            .collect();
        let replace_one_time = self.rng.chance(150);
        let ttl_s = if self.rng.chance(300) {
            u32::try_from(2 + self.rng.below(30)).expect("below 32")
        } else {
            0
        };
        let cl = &mut self.clients[c];
        cl.cc.push(&Frame::PrekeyUpload {
            upload: Box::new(Upload {
                dest,
                replace_one_time,
                ttl_s,
                head: Some(head),
                ec,
                pq,
            }),
        });
        cl.prekey_pending += 1;
        self.report.prekey_uploads += 1;
        self.trace(|| {
            format!("client {c} uploads {ec_n} EC and {pq_n} PQ one-time keys (ttl {ttl_s} s)")
        });
    }

    /// Fetches a bundle of any mailbox (no proof needed).
    pub(super) fn prekey_fetch(&mut self, c: usize) {
        let mailbox = self.rng.index(self.cfg.mailboxes);
        let dest = self.dest_of(mailbox);
        let cl = &mut self.clients[c];
        cl.cc.push(&Frame::PrekeyFetch { dest, puzzle: None });
        cl.prekey_pending += 1;
        self.report.prekey_fetches += 1;
        self.trace(|| format!("client {c} fetches a bundle"));
    }

    /// A prekey answer reached client `c`.
    pub(super) fn prekey_answer(&mut self, c: usize, ev: &ClientEvent) -> Result<(), String> {
        let cl = &mut self.clients[c];
        if cl.prekey_pending == 0 {
            return Err(format!(
                "client {c} got a prekey answer it did not ask for: {ev:?}"
            ));
        }
        cl.prekey_pending -= 1;
        match ev {
            ClientEvent::PrekeyResult { status, .. } => match status {
                // A slot full of unfetched keys refuses more (`TooMany`).
                PrekeyStatus::Ok
                | PrekeyStatus::Busy
                | PrekeyStatus::DirectoryFull
                | PrekeyStatus::TooMany => Ok(()),
                s => Err(format!("a proven upload of fresh keys was answered {s:?}")),
            },
            ClientEvent::PrekeyBundle {
                dest,
                status,
                bundle,
                ..
            } => match (status, bundle) {
                (PrekeyStatus::Ok, Some(b)) => {
                    if b.ec.is_some() || b.pq.is_some() {
                        self.report.prekey_one_time_handed += 1;
                    }
                    self.prekey_oracle.check_bundle(*dest, b)
                }
                (PrekeyStatus::NotFound | PrekeyStatus::Busy, None) => Ok(()),
                (s, b) => Err(format!(
                    "a fetch was answered {s:?} with {} bundle",
                    if b.is_some() { "a" } else { "no" }
                )),
            },
            _ => unreachable!("only prekey answers come here"),
        }
    }
}
