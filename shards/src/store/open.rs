//! Opening a log: replaying every segment in order, quarantining corrupt records, cutting torn
//! tails, adopting or deleting what interrupted segment creations left, and rebuilding the index.

use super::*;

/// Replays one segment's records. Returns (end of valid data, torn tail?, quarantined count).
pub(super) fn replay_segment(
    bytes: &[u8],
    seq: u64,
    on_record: &mut OnRecord<'_>,
) -> (usize, bool, usize) {
    let mut at = SEGMENT_HEADER_BYTES;
    let mut quarantined = 0;
    loop {
        match format::scan(bytes, at) {
            Scan::Record(h, payload) => {
                let pos = Pos {
                    segment: seq,
                    offset: u32::try_from(at)
                        .expect("replayed segments are at most SEGMENT_BYTES_MAX long"),
                };
                on_record(&h, pos, payload);
                at += h.len as usize;
            }
            Scan::End => return (at, false, quarantined),
            Scan::Invalid { .. } => {
                // Is there a valid record later in this segment? Then this one is corrupt, not
                // torn: quarantine it and go on from the next valid record.
                match resync(bytes, at + format::RECORD_ALIGN) {
                    Some(next) => {
                        quarantined += 1;
                        at = next;
                    }
                    None => return (at, true, quarantined),
                }
            }
        }
    }
}

/// The next aligned offset at or after `from` holding a valid record.
pub(super) fn resync(bytes: &[u8], from: usize) -> Option<usize> {
    let mut at = from.div_ceil(format::RECORD_ALIGN) * format::RECORD_ALIGN;
    while at + RECORD_HEADER_BYTES <= bytes.len() {
        if let Scan::Record(..) = format::scan(bytes, at) {
            return Some(at);
        }
        at += format::RECORD_ALIGN;
    }
    None
}

impl<B: Backend> Log<B> {
    /// Opens the log, replaying every segment.
    pub fn open(
        backend: B,
        shard: u16,
        limits: StoreLimits,
        policy: FsyncPolicy,
        now_unix_s: u64,
    ) -> Result<(Self, Recovery), StoreError> {
        assert!(limits.segment_bytes > SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES);
        assert!(
            limits.segment_bytes <= SEGMENT_BYTES_MAX,
            "segment_bytes above SEGMENT_BYTES_MAX"
        );
        assert!(limits.high_water_percent <= 100);
        assert!(limits.sources.share_percent <= 100 && limits.sources.dest_share_percent <= 100);
        let mut log = Log {
            sources: Sources::new(limits.sources.sources_max),
            shard,
            limits,
            policy,
            segments: BTreeMap::new(),
            bad_segments: BTreeSet::new(),
            disk_bytes: 0,
            active: None,
            index: AHashMap::new(),
            next_seq: 1,
            durable_seq: 0,
            syncs: 0,
            dirty: BTreeSet::new(),
            last_sync_ms: 0,
            in_flight: None,
            scratch: Vec::new(),
            next_segment: 1,
            failed: false,
            spare: None,
            spare_pending: None,
            doomed: BTreeMap::new(),
            removing: None,
            removal_failed: false,
            segments_removed: 0,
            spare_retry_unix_s: 0,
            segments_ahead: 0,
            segments_on_core: 0,
            backend,
        };
        let mut rec = Recovery::default();
        let temps = log.backend.remove_temporaries().map_err(StoreError::Io)?;
        rec.temporaries = temps.len();
        // The highest segment number seen on disk, removed files included: never issued again.
        let mut seq_seen = temps.iter().copied().max().unwrap_or(0);
        let seqs = log.backend.list().map_err(StoreError::Io)?;
        let newest = seqs.last().copied();
        // Every blob record in replay order (segment, then offset = append order), and every
        // tombstone. Tombstones and expiry are applied before de-duplication: a blob re-sent after
        // its first copy was acked or expired is a new, live blob.
        let mut blobs: Vec<(Dest, Entry)> = Vec::new();
        let mut tombstones: Vec<(u64, Pos)> = Vec::new();
        for seq in seqs {
            seq_seen = seq_seen.max(seq);
            let mut seg = log.backend.open(seq).map_err(StoreError::Io)?;
            let len = seg.bytes().len();
            let header = format::decode_segment_header(seg.bytes());
            let created = match header {
                // Positions address at most SEGMENT_BYTES_MAX bytes: a longer file is not ours.
                Some((_, _, created)) if len <= SEGMENT_BYTES_MAX => created,
                None if seg.bytes().iter().all(|b| *b == 0) => {
                    // Never held a record: its creation was interrupted before the header.
                    rec.empty_segments += 1;
                    if Some(seq) != newest {
                        log.backend.remove(seq).map_err(StoreError::Io)?;
                        continue;
                    }
                    // The newest keeps its number on disk (so it is not issued again after this
                    // run), as an empty sealed segment that reclaim deletes once a newer exists.
                    let mut header = [0u8; SEGMENT_HEADER_BYTES];
                    format::encode_segment_header(&mut header, log.shard, seq, now_unix_s);
                    seg.write(0, &header).map_err(StoreError::Io)?;
                    now_unix_s
                }
                _ => {
                    rec.bad_segments += 1;
                    log.bad_segments.insert(seq);
                    log.disk_bytes += len as u64;
                    continue;
                }
            };
            rec.segments += 1;
            log.disk_bytes += len as u64;
            let (write_at, torn, quarantined) =
                replay_segment(seg.bytes(), seq, &mut |h, pos, payload| match h.kind {
                    Kind::Blob => {
                        rec.blobs += 1;
                        let entry = Entry {
                            pos,
                            msg_id: h.msg_id,
                            last_live_unix_s: h.last_live_unix_s,
                            payload_len: u32::try_from(payload.len()).expect(
                                "a payload is shorter than its segment (SEGMENT_BYTES_MAX)",
                            ),
                            seq: 0,
                            digest: digest_of(payload),
                            source: None,
                        };
                        blobs.push((h.dest, entry));
                    }
                    Kind::Tombstone => {
                        rec.tombstones += 1;
                        if !crate::mutants::active(crate::mutants::Mutant::ForgetAcksOnRestart) {
                            tombstones.push((seq, Pos::from_u64(h.target)));
                        }
                    }
                });
            rec.torn_tails += usize::from(torn);
            rec.quarantined += quarantined;
            // Recovered segments are never appended to again: appends go to a fresh segment.
            log.segments.insert(
                seq,
                SegState {
                    seg,
                    write_at,
                    created_unix_s: created,
                    live_blobs: 0,
                    tomb_targets: BTreeSet::new(),
                    sealed: true,
                },
            );
        }
        let dead: AHashSet<Pos> = tombstones.iter().map(|(_, p)| *p).collect();
        for (seg, target) in &tombstones {
            if target.segment != *seg && log.segments.contains_key(&target.segment) {
                if let Some(s) = log.segments.get_mut(seg) {
                    s.tomb_targets.insert(target.segment);
                }
            }
        }
        for (dest, e) in blobs {
            if dead.contains(&e.pos) || !is_live(e.last_live_unix_s, now_unix_s) {
                continue;
            }
            let q = log.index.entry(dest).or_default();
            if q.keys.insert((e.msg_id, e.digest)) {
                q.bytes += u64::from(e.payload_len);
                q.entries.push_back(e);
                if let Some(s) = log.segments.get_mut(&e.pos.segment) {
                    s.live_blobs += 1;
                }
            }
        }
        log.next_segment = seq_seen + 1;
        // Replayed records count as durable (seq 0): make them so, whatever the page cache held
        // when the previous process died.
        for s in log.segments.values_mut() {
            s.seg.sync_all().map_err(StoreError::SyncFailed)?;
        }
        log.next_seq = 1;
        log.durable_seq = 0;
        log.reclaim()?;
        Ok((log, rec))
    }
}
