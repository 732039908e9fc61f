//! Two identities, Bob's published prekeys and their secrets, from a seeded RNG.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;

use ferry_crypto::keys::{KeyPair, encode_ec};
use ferry_crypto::pqxdh::{self, Bundle};
use ferry_crypto::session::PrekeyStore;
use ferry_crypto::xeddsa;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use zeroize::Zeroizing;

pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// A KEM prekey: (public, secret, last resort).
pub type Kem = (Vec<u8>, Zeroizing<Vec<u8>>, bool);

/// Bob's prekey secrets, and what he published.
pub struct Prekeys {
    pub spk: (u32, KeyPair),
    pub spk_sig: [u8; 64],
    pub opks: BTreeMap<u32, KeyPair>,
    pub kems: BTreeMap<u32, Kem>,
    pub kem_sigs: BTreeMap<u32, [u8; 64]>,
    pub consumed: Vec<(Option<u32>, u32)>,
}

impl Prekeys {
    pub fn generate(rng: &mut ChaCha20Rng, identity: &KeyPair, one_time: u32) -> Prekeys {
        let sign = |rng: &mut ChaCha20Rng, m: &[u8]| {
            let mut z = [0u8; 64];
            rng.fill_bytes(&mut z);
            xeddsa::sign(identity.secret(), m, &z)
        };
        let spk = KeyPair::generate(rng);
        let spk_sig = sign(rng, &encode_ec(spk.public()));
        let mut opks = BTreeMap::new();
        let mut kems = BTreeMap::new();
        let mut kem_sigs = BTreeMap::new();
        for id in 0..=one_time {
            // id 0 is the last-resort KEM key; 1.. are one-time.
            let (p, s) = pqxdh::kem_keypair(rng);
            kem_sigs.insert(id, sign(rng, &p));
            kems.insert(id, (p, s, id == 0));
            if id > 0 {
                opks.insert(id, KeyPair::generate(rng));
            }
        }
        Prekeys {
            spk: (1, spk),
            spk_sig,
            opks,
            kems,
            kem_sigs,
            consumed: Vec::new(),
        }
    }

    /// A bundle as the directory would hand it out: the lowest one-time keys left, or the
    /// last-resort KEM key and no one-time EC key.
    pub fn bundle<'a>(&'a self, identity: &KeyPair) -> Bundle<'a> {
        let opk = self.opks.iter().next();
        let pq_id = self
            .kems
            .iter()
            .find(|(_, (_, _, last))| !last)
            .map_or(0, |(id, _)| *id);
        Bundle {
            identity: encode_ec(identity.public()),
            spk_id: self.spk.0,
            spk: encode_ec(self.spk.1.public()),
            spk_sig: self.spk_sig,
            pq_id,
            pq: &self.kems[&pq_id].0,
            pq_sig: self.kem_sigs[&pq_id],
            opk: opk.map(|(id, k)| (*id, encode_ec(k.public()))),
        }
    }
}

impl PrekeyStore for Prekeys {
    fn signed_prekey(&self, id: u32) -> Option<KeyPair> {
        (id == self.spk.0).then(|| self.spk.1.clone())
    }
    fn one_time_prekey(&self, id: u32) -> Option<KeyPair> {
        self.opks.get(&id).cloned()
    }
    fn kem_prekey(&self, id: u32) -> Option<Zeroizing<Vec<u8>>> {
        self.kems.get(&id).map(|(_, s, _)| s.clone())
    }
    fn consume(&mut self, one_time_prekey: Option<u32>, kem_prekey: u32) {
        if let Some(id) = one_time_prekey {
            self.opks.remove(&id);
        }
        if self.kems.get(&kem_prekey).is_some_and(|(_, _, last)| !last) {
            self.kems.remove(&kem_prekey);
        }
        self.consumed.push((one_time_prekey, kem_prekey));
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
