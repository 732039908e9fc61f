//! Arbitrary bytes into every parser and decryption path of the crypto core: a sealed envelope,
//! a session's receive (as a `Prekey` and as a `Message`), a ratchet header and ciphertext, the
//! PQXDH `Init`, and serialised sessions and ratchets. Nothing may panic, and a failed
//! decryption must leave the session exactly as it was.
#![no_main]

use std::sync::OnceLock;

use ferry_crypto::envelope::{self, Inner, Kind};
use ferry_crypto::keys::KeyPair;
use ferry_crypto::pqxdh::{self, Bundle, Init};
use ferry_crypto::ratchet::Ratchet;
use ferry_crypto::session::{Session, identity_public};
use libfuzzer_sys::fuzz_target;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

struct Fixture {
    bob: KeyPair,
    session: Session,
    ratchet: Ratchet,
}

/// One established session (Bob's side), built once from a fixed seed.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let alice = KeyPair::generate(&mut rng);
        let bob = KeyPair::generate(&mut rng);
        let spk = KeyPair::generate(&mut rng);
        let (pq, _pq_secret) = pqxdh::kem_keypair(&mut rng);
        let mut z = [0u8; 64];
        rng.fill_bytes(&mut z);
        let spk_sig = ferry_crypto::xeddsa::sign(
            bob.secret(),
            &ferry_crypto::keys::encode_ec(spk.public()),
            &z,
        );
        let pq_sig = ferry_crypto::xeddsa::sign(bob.secret(), &pq, &z);
        let bundle = Bundle {
            identity: identity_public(&bob),
            spk_id: 1,
            spk: ferry_crypto::keys::encode_ec(spk.public()),
            spk_sig,
            pq_id: 1,
            pq: &pq,
            pq_sig,
            opk: None,
        };
        let session = Session::initiate(&mut rng, &alice, &bundle).unwrap();
        let ratchet = Ratchet::responder(&[7; 32], spk);
        Fixture {
            bob,
            session,
            ratchet,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let _ = envelope::open_with(&f.bob, data);
    let _ = Init::decode(data);
    let _ = Session::from_bytes(data);
    let _ = Ratchet::from_bytes(data);

    let mut s = f.session.clone();
    let before = s.to_bytes();
    for kind in [Kind::Message, Kind::Prekey] {
        let inner = Inner {
            kind,
            sender: *s.their_identity(),
            msg_id: [0; 16],
            body: data.to_vec(),
        };
        assert!(s.receive(&mut rng, &inner).is_err());
        assert_eq!(*s.to_bytes(), *before, "a failed decryption changed the session");
    }
    if data.len() >= 41 {
        let mut r = f.ratchet.clone();
        let before = r.to_bytes();
        if r.decrypt(&mut rng, &data[..41], &data[41..], b"ad").is_err() {
            assert_eq!(*r.to_bytes(), *before, "a failed decryption changed the ratchet");
        }
    }
});
