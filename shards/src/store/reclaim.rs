//! How blobs leave the store: acknowledged (a tombstone), or expired; and how the segments they
//! leave empty are reclaimed (whole, once their tombstones' targets are gone and what they hold is
//! synced) and handed to the removal job.

use super::*;

impl<B: Backend> Log<B> {
    /// Acknowledges the blob at `pos` of `dest`: writes a tombstone and forgets the blob.
    /// Returns `false` when there is no such live blob (already acked, expired, unknown).
    pub fn ack(&mut self, now_unix_s: u64, dest: &Dest, pos: Pos) -> Result<bool, StoreError> {
        self.check_failed()?;
        let Some(q) = self.index.get(dest) else {
            return Ok(false);
        };
        let Some(i) = q.entries.iter().position(|e| e.pos == pos) else {
            return Ok(false);
        };
        let entry = q.entries[i];
        let h = RecordHeader {
            len: 0,
            kind: Kind::Tombstone,
            last_live_unix_s: entry.last_live_unix_s,
            dest: *dest,
            msg_id: entry.msg_id,
            target: pos.to_u64(),
        };
        let tomb = self.write_record(now_unix_s, &h, &[], true)?;
        if tomb.segment != pos.segment {
            if let Some(s) = self.segments.get_mut(&tomb.segment) {
                s.tomb_targets.insert(pos.segment);
            }
        }
        self.forget(dest, i);
        if self.policy == FsyncPolicy::Always {
            self.sync_now()?;
        }
        self.reclaim()?;
        Ok(true)
    }

    pub(super) fn forget(&mut self, dest: &Dest, i: usize) {
        let Some(q) = self.index.get_mut(dest) else {
            return;
        };
        let Some(e) = q.entries.remove(i) else { return };
        q.keys.remove(&(e.msg_id, e.digest));
        q.bytes -= u64::from(e.payload_len);
        if let Some(s) = e.source {
            let held = q
                .sources
                .get_mut(&s)
                .expect("a dest's sources cover every blob charged in it");
            if held.sub(u64::from(e.payload_len)) {
                q.sources.remove(&s);
            }
            self.sources
                .release(s, format::record_bytes(e.payload_len as usize) as u64);
        }
        if q.entries.is_empty() {
            self.index.remove(dest);
        }
        if let Some(s) = self.segments.get_mut(&e.pos.segment) {
            s.live_blobs = s
                .live_blobs
                .checked_sub(1)
                .expect("a segment's live count covers every blob indexed in it");
        }
    }

    /// Drops expired blobs from the index and deletes segments that hold nothing live.
    pub fn expire(&mut self, now_unix_s: u64) -> Result<usize, StoreError> {
        let mut expired = Vec::new();
        for (dest, q) in &self.index {
            for (i, e) in q.entries.iter().enumerate().rev() {
                if !is_live(e.last_live_unix_s, now_unix_s) {
                    expired.push((*dest, i));
                }
            }
        }
        let n = expired.len();
        for (dest, i) in expired {
            self.forget(&dest, i);
        }
        // A time-rolled active segment should not block reclaim forever.
        if let Some(a) = self.active {
            if now_unix_s
                >= self.segments[&a]
                    .created_unix_s
                    .saturating_add(self.limits.segment_roll_s)
            {
                if let Some(s) = self.segments.get_mut(&a) {
                    s.sealed = true;
                }
                self.active = None;
            }
        }
        self.reclaim()?;
        Ok(n)
    }

    /// Deletes sealed segments with no live blob whose tombstones' targets are all gone.
    pub(super) fn reclaim(&mut self) -> Result<(), StoreError> {
        loop {
            // Segments whose deletion is not durable yet count as present.
            let present: BTreeSet<u64> = self
                .segments
                .keys()
                .chain(self.doomed.keys())
                .chain(self.removing.iter().flat_map(BTreeMap::keys))
                .copied()
                .collect();
            // The newest segment stays, so segment numbers (and blob positions) never repeat,
            // also across a restart.
            let newest = present.last().copied();
            // A segment goes only once what it holds is durable: its own tombstones (of blobs in
            // it) must not be lost to a power failure while its file waits to be deleted (the
            // deletion is off the core now, and no longer immediate); without fsync there is no
            // such promise to keep.
            let unsynced = |seq: &u64| {
                self.policy != FsyncPolicy::None
                    && (self.dirty.contains(seq)
                        || self
                            .in_flight
                            .as_ref()
                            .is_some_and(|(_, segs)| segs.contains(seq)))
            };
            let victim = self.segments.iter().find(|(seq, s)| {
                s.sealed
                    && Some(**seq) != self.active
                    && Some(**seq) != newest
                    && !unsynced(seq)
                    && s.live_blobs == 0
                    && s.tomb_targets
                        .iter()
                        .all(|t| !present.contains(t) || t == *seq)
            });
            let Some((&seq, _)) = victim else {
                return Ok(());
            };
            // Its file goes off the core (`take_removal_job`); its bytes count until then.
            if let Some(s) = self.segments.remove(&seq) {
                self.doomed.insert(seq, s.seg.bytes().len() as u64);
            }
            self.dirty.remove(&seq);
        }
    }
}
