//! Prekey slots: which day's slot to publish, the uploads that fill it, and the bookkeeping when
//! the node confirms or loses one (`Prekeys` holds the keys themselves).

use super::*;

/// Version 3: keys by slot day. A version 2 record (one permanent slot) loads with its keys
/// marked `LEGACY_DAY`; the first prune gives them today's day, so they stay until no first
/// contact made from the old slot can still be waiting in a node's store.
pub(super) const PREKEYS_VERSION: u8 = 3;
pub(super) const PREKEYS_VERSION_PERMANENT_SLOT: u8 = 2;
/// The day of keys loaded from a version 2 record, until the first prune dates them.
pub(super) const LEGACY_DAY: u64 = u64::MAX;
/// Batches of random prekey ids drawn before giving up on ids that repeat held ones.
pub(super) const PREKEY_ID_DRAWS_MAX: usize = 4;

/// When the secrets of keys last published in the slot of `day` may go: the slot and its head
/// expire `SLOT_GRACE_DAYS` after the day, and a first contact made from it may wait in the
/// node's store `STORE_WINDOW_EPOCHS` hours more. After it they are erased (forward secrecy).
pub(super) fn slot_secrets_until(day: u64) -> u64 {
    slot_expires(day) + STORE_WINDOW_EPOCHS * ferry_proto::limits::EPOCH_SECONDS
}

/// When the slot of `day` (and its head's signed expiry) ends.
pub(super) fn slot_expires(day: u64) -> u64 {
    (day + 1 + SLOT_GRACE_DAYS) * ferry_proto::addr::DAY_SECONDS
}

/// A signed prekey and its last-resort KEM key (in `Prekeys::kem`), sealed into the heads of
/// the slots of one period.
#[derive(Clone)]
pub(super) struct SignedKeys {
    pub(super) spk_id: u32,
    pub(super) spk: [u8; 32],
    pub(super) lr_id: u32,
    /// `day / SPK_ROTATE_DAYS` of the slots it is for.
    pub(super) period: u64,
    /// The last slot day it was sealed into.
    pub(super) last_day: u64,
}

/// This device's prekey secrets, by id, each with the last slot day it was published in.
#[derive(Default, Clone)]
pub(super) struct Prekeys {
    /// Newest first, at most `SIGNED_PREKEYS_KEPT`.
    pub(super) spks: Vec<SignedKeys>,
    /// id → (secret, slot day)
    pub(super) one_time: BTreeMap<u32, ([u8; 32], u64)>,
    /// id → (decapsulation key, last resort, slot day)
    pub(super) kem: BTreeMap<u32, (Zeroizing<Vec<u8>>, bool, u64)>,
    /// Slot days whose head the node accepted.
    pub(super) published: BTreeSet<u64>,
}

impl Drop for Prekeys {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        for k in &mut self.spks {
            k.spk.zeroize();
        }
        for (s, _) in self.one_time.values_mut() {
            s.zeroize();
        }
    }
}

impl Prekeys {
    pub(super) fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut b = Zeroizing::new(Vec::new());
        b.push(PREKEYS_VERSION);
        assert!(self.spks.len() <= SIGNED_PREKEYS_KEPT);
        b.push(u8::try_from(self.spks.len()).expect("SIGNED_PREKEYS_KEPT fits a u8"));
        for k in &self.spks {
            b.extend_from_slice(&k.spk_id.to_be_bytes());
            b.extend_from_slice(&k.spk);
            b.extend_from_slice(&k.lr_id.to_be_bytes());
            b.extend_from_slice(&k.period.to_be_bytes());
            b.extend_from_slice(&k.last_day.to_be_bytes());
        }
        b.extend_from_slice(&prefix_u32(self.one_time.len()));
        for (id, (s, day)) in &self.one_time {
            b.extend_from_slice(&id.to_be_bytes());
            b.extend_from_slice(s);
            b.extend_from_slice(&day.to_be_bytes());
        }
        b.extend_from_slice(&prefix_u32(self.kem.len()));
        for (id, (dk, last, day)) in &self.kem {
            b.extend_from_slice(&id.to_be_bytes());
            b.push(u8::from(*last));
            b.extend_from_slice(&day.to_be_bytes());
            b.extend_from_slice(&prefix_u32(dk.len()));
            b.extend_from_slice(dk);
        }
        b.extend_from_slice(&prefix_u32(self.published.len()));
        for day in &self.published {
            b.extend_from_slice(&day.to_be_bytes());
        }
        b
    }

    pub(super) fn decode(b: &[u8]) -> Option<Prekeys> {
        let mut at = 0usize;
        let mut take = |n: usize| -> Option<&[u8]> {
            let s = b.get(at..at.checked_add(n)?)?;
            at += n;
            Some(s)
        };
        let u32_of = |s: &[u8]| -> Option<u32> { Some(u32::from_be_bytes(s.try_into().ok()?)) };
        let u64_of = |s: &[u8]| -> Option<u64> { Some(u64::from_be_bytes(s.try_into().ok()?)) };
        // A version 2 record (`next_id` u32 first) has no days, no pairing of signed prekeys
        // with their last-resort keys and no published days: its keys get `LEGACY_DAY`.
        let v3 = match take(1)?[0] {
            PREKEYS_VERSION => true,
            PREKEYS_VERSION_PERMANENT_SLOT => {
                take(4)?;
                false
            }
            _ => return None,
        };
        let mut p = Prekeys::default();
        let n = take(1)?[0];
        if usize::from(n) > SIGNED_PREKEYS_KEPT {
            return None;
        }
        for _ in 0..n {
            let spk_id = u32_of(take(4)?)?;
            let spk = take(32)?.try_into().ok()?;
            let (lr_id, period, last_day) = if v3 {
                (u32_of(take(4)?)?, u64_of(take(8)?)?, u64_of(take(8)?)?)
            } else {
                // Unpaired: its last-resort key is kept by its own day.
                (0, u64::MAX, LEGACY_DAY)
            };
            p.spks.push(SignedKeys {
                spk_id,
                spk,
                lr_id,
                period,
                last_day,
            });
        }
        for _ in 0..u32_of(take(4)?)? {
            let id = u32_of(take(4)?)?;
            let s = take(32)?.try_into().ok()?;
            let day = if v3 { u64_of(take(8)?)? } else { LEGACY_DAY };
            p.one_time.insert(id, (s, day));
        }
        for _ in 0..u32_of(take(4)?)? {
            let id = u32_of(take(4)?)?;
            let last = take(1)?[0] == 1;
            let day = if v3 { u64_of(take(8)?)? } else { LEGACY_DAY };
            let n = u32_of(take(4)?)? as usize;
            p.kem
                .insert(id, (Zeroizing::new(take(n)?.to_vec()), last, day));
        }
        if v3 {
            for _ in 0..u32_of(take(4)?)? {
                p.published.insert(u64_of(take(8)?)?);
            }
        }
        Some(p)
    }

    /// Whether `id` is any key's id here.
    pub(super) fn holds(&self, id: u32) -> bool {
        self.kem.contains_key(&id)
            || self.one_time.contains_key(&id)
            || self.spks.iter().any(|k| k.spk_id == id)
    }

    /// Erases the secrets no live slot or stored first contact can need any more (at
    /// `now_unix_s`), and forgets published days past their slot. Returns how many keys went.
    pub(super) fn prune(&mut self, now_unix_s: u64) -> usize {
        // Keys of the old permanent slot: dated today, kept through today's window.
        let today = day_of(now_unix_s);
        let date = |d: &mut u64| {
            if *d == LEGACY_DAY {
                *d = today;
            }
        };
        self.spks.iter_mut().for_each(|k| date(&mut k.last_day));
        self.one_time.values_mut().for_each(|(_, d)| date(d));
        self.kem.values_mut().for_each(|(_, _, d)| date(d));
        let before = self.one_time.len() + self.kem.len() + self.spks.len();
        let live = |day: u64| slot_secrets_until(day) > now_unix_s;
        self.one_time.retain(|_, (s, day)| {
            let keep = live(*day);
            if !keep {
                zeroize::Zeroize::zeroize(s);
            }
            keep
        });
        self.spks.retain_mut(|k| {
            let keep = live(k.last_day);
            if !keep {
                zeroize::Zeroize::zeroize(&mut k.spk);
            }
            keep
        });
        let lr: BTreeSet<u32> = self
            .spks
            .iter()
            .filter(|k| k.period != u64::MAX)
            .map(|k| k.lr_id)
            .collect();
        // A last-resort key goes with its signed prekey (or, unpaired, by its own day).
        self.kem
            .retain(|id, (_, last, day)| (*last && lr.contains(id)) || live(*day));
        self.published.retain(|day| slot_expires(*day) > now_unix_s);
        before - (self.one_time.len() + self.kem.len() + self.spks.len())
    }
}

impl PrekeyStore for Prekeys {
    fn signed_prekey(&self, id: u32) -> Option<KeyPair> {
        self.spks
            .iter()
            .find(|k| k.spk_id == id)
            .map(|k| KeyPair::from_secret(k.spk))
    }
    fn one_time_prekey(&self, id: u32) -> Option<KeyPair> {
        self.one_time
            .get(&id)
            .map(|(s, _)| KeyPair::from_secret(*s))
    }
    fn kem_prekey(&self, id: u32) -> Option<Zeroizing<Vec<u8>>> {
        self.kem.get(&id).map(|(dk, _, _)| dk.clone())
    }
    fn consume(&mut self, one_time_prekey: Option<u32>, kem_prekey: u32) {
        if let Some(id) = one_time_prekey {
            if let Some((mut s, _)) = self.one_time.remove(&id) {
                zeroize::Zeroize::zeroize(&mut s);
            }
        }
        if self.kem.get(&kem_prekey).is_some_and(|(_, last, _)| !last) {
            self.kem.remove(&kem_prekey);
        }
    }
}

impl<S: Storage> Messenger<S> {
    /// The signer of this user's prekey slot of `day` (`ferry_proto::addr::day_of`): it
    /// proves `Op::PrekeyUpdate` for the slot's dest.
    pub fn prekey_slot(&self, day: u64) -> Result<BlindedSigner, MessengerError> {
        Ok(self.intro.slot_signer(day)?)
    }

    /// Where a contact's prekeys of `day` are and how to open them (fetch with
    /// `Client::fetch_prekeys`).
    pub fn contact_prekey_slot(
        &self,
        identity: &[u8; EC_KEY_BYTES],
        day: u64,
    ) -> Result<SlotOpener, MessengerError> {
        let p = self
            .peers
            .get(identity)
            .ok_or(MessengerError::UnknownContact)?;
        Ok(Contact::new(&p.mailbox, self.ns, None)?.prekey_slot(day)?)
    }

    /// The slots to fetch a contact's bundle from at `now_unix_s`, in order: today's, then
    /// yesterday's (the owner's day may not have turned yet, or its device was offline past
    /// `SLOT_DAYS_AHEAD` days and only the grace keeps yesterday's).
    pub fn contact_prekey_slots(
        &self,
        identity: &[u8; EC_KEY_BYTES],
        now_unix_s: u64,
    ) -> Result<Vec<SlotOpener>, MessengerError> {
        let today = day_of(now_unix_s);
        let mut slots = vec![self.contact_prekey_slot(identity, today)?];
        if today > 0 {
            slots.push(self.contact_prekey_slot(identity, today - 1)?);
        }
        Ok(slots)
    }

    /// What to publish at `now_unix_s`: every slot from today to `SLOT_DAYS_AHEAD` days ahead
    /// whose head the node has not accepted yet, each with its head (the signed prekey of its
    /// day's `SPK_ROTATE_DAYS` period, new when the period has none yet) and `one_time` (at
    /// most 100) one-time keys of each kind. Erases the secrets no slot needs any more first.
    /// The secrets are stored before the uploads are returned; after the node accepts a slot's
    /// uploads, call [`Messenger::slot_published`].
    pub fn prekey_publication(
        &mut self,
        now_unix_s: u64,
        one_time: usize,
    ) -> Result<Vec<SlotUploads>, MessengerError> {
        if one_time > ferry_proto::prekey::ONE_TIME_KEYS_MAX {
            return Err(MessengerError::InvalidArgument(
                "at most 100 one-time prekeys per slot",
            ));
        }
        if self.prekeys.prune(now_unix_s) > 0 {
            self.save_prekeys()?;
        }
        let today = day_of(now_unix_s);
        let mut out = Vec::new();
        for day in today..=today + SLOT_DAYS_AHEAD {
            if self.prekeys.published.contains(&day) {
                continue;
            }
            let uploads = self.slot_uploads(day, true, one_time, now_unix_s)?;
            out.push(SlotUploads {
                day,
                signer: self.prekey_slot(day)?,
                uploads,
            });
        }
        Ok(out)
    }

    /// The node accepted the uploads of the slot of `day`.
    pub fn slot_published(&mut self, day: u64) -> Result<(), MessengerError> {
        if self.prekeys.published.insert(day) {
            self.save_prekeys()?;
        }
        Ok(())
    }

    /// The node does not hold the slot of `day` although it accepted it (it lost its journal, or
    /// this is another node, or it expired early): publish it again at the next
    /// [`Messenger::prekey_publication`].
    pub fn slot_lost(&mut self, day: u64) -> Result<(), MessengerError> {
        if self.prekeys.published.remove(&day) {
            self.save_prekeys()?;
        }
        Ok(())
    }

    /// One-time keys to upload to the slot of `day` given how many the directory says are left
    /// (`PrekeyCount`): `PREKEYS_PER_REFILL` of each kind when either runs below `PREKEYS_LOW`.
    pub fn refill(
        &mut self,
        day: u64,
        ec_left: u16,
        pq_left: u16,
        now_unix_s: u64,
    ) -> Result<Vec<Upload>, MessengerError> {
        if ec_left.min(pq_left) >= PREKEYS_LOW {
            return Ok(Vec::new());
        }
        self.slot_uploads(day, false, PREKEYS_PER_REFILL, now_unix_s)
    }

    /// Generates and seals keys for the slot of `day`, stores their secrets, returns the
    /// uploads.
    pub(super) fn slot_uploads(
        &mut self,
        day: u64,
        head: bool,
        one_time: usize,
        now_unix_s: u64,
    ) -> Result<Vec<Upload>, MessengerError> {
        use crate::prekeys::{HeadPlan, PrekeyIds, PrekeyPlan};
        let expires = slot_expires(day);
        if expires <= now_unix_s {
            return Err(MessengerError::InvalidArgument("that slot's day is over"));
        }
        let period = day / SPK_ROTATE_DAYS;
        let reuse = self.prekeys.spks.iter().position(|k| k.period == period);
        let head_plan = match (head, reuse) {
            (false, _) => HeadPlan::None,
            (true, None) => HeadPlan::New,
            (true, Some(i)) => {
                let k = &self.prekeys.spks[i];
                let dk = self
                    .prekeys
                    .kem
                    .get(&k.lr_id)
                    .ok_or(MessengerError::Malformed("prekeys record"))?;
                HeadPlan::Reuse {
                    spk: (k.spk_id, Zeroizing::new(k.spk)),
                    last_resort: (k.lr_id, dk.0.clone()),
                }
            }
        };
        let plan = PrekeyPlan {
            head: head_plan,
            one_time_ec: one_time,
            one_time_pq: one_time,
            ids: PrekeyIds::Random,
            replace_one_time: false,
            expires,
            ttl_s: u32::try_from(expires - now_unix_s).unwrap_or(u32::MAX),
        };
        let identity = crate::prekeys::IdentityKey::from_secret(*self.identity.secret());
        let signer = self.intro.slot_signer(day)?;
        let sealer = ferry_proto::prekey::SlotSealer::new(self.intro.slot_key(day), &signer);
        // Random ids: one that repeats an id this messenger still holds (a chance of about
        // 200 × 400 in 2^32 per upload) is drawn again with the whole batch.
        let mut attempt = 0;
        let (uploads, secrets) = loop {
            let (uploads, secrets) = crate::prekeys::generate(&identity, &sealer, plan.clone())?;
            if !secrets.ids().any(|id| self.prekeys.holds(id)) {
                break (uploads, secrets);
            }
            attempt += 1;
            if attempt >= PREKEY_ID_DRAWS_MAX {
                return Err(MessengerError::InvalidArgument(
                    "prekey ids kept colliding with held ones",
                ));
            }
        };
        let mut next = self.prekeys.clone();
        match (secrets.signed_prekey, secrets.last_resort) {
            (Some((spk_id, spk)), Some((lr_id, dk))) => {
                next.kem.insert(lr_id, (Zeroizing::new(dk), true, day));
                next.spks.insert(
                    0,
                    SignedKeys {
                        spk_id,
                        spk,
                        lr_id,
                        period,
                        last_day: day,
                    },
                );
                // Past the bound, the one whose slots ended first goes (by day, not by order: a
                // clock set back must not cut a key still in use).
                while next.spks.len() > SIGNED_PREKEYS_KEPT {
                    let oldest = next
                        .spks
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, k)| k.last_day)
                        .map_or(0, |(i, _)| i);
                    next.spks.remove(oldest);
                }
                let lr: BTreeSet<u32> = next.spks.iter().map(|k| k.lr_id).collect();
                next.kem
                    .retain(|id, (_, last, _)| !*last || lr.contains(id));
            }
            _ => {
                if let Some(k) = reuse.and_then(|i| next.spks.get_mut(i)).filter(|_| head) {
                    k.last_day = k.last_day.max(day);
                }
            }
        }
        for (id, s) in secrets.one_time_ec {
            next.one_time.insert(id, (s, day));
        }
        for (id, dk) in secrets.one_time_pq {
            next.kem.insert(id, (Zeroizing::new(dk), false, day));
        }
        self.prekeys = next;
        self.save_prekeys()?;
        Ok(uploads)
    }

    // ---- sessions -------------------------------------------------------------------------------
}
