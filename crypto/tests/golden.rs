//! A golden transcript: identities, prekeys, first contact and a conversation from a seeded RNG,
//! every envelope committed in `tests/golden/transcript.json`. Any change to a wire format, a KDF
//! label or the order randomness is drawn in shows up here. After a deliberate change, rewrite
//! the file with `GOLDEN_BLESS=1 cargo test -p ferry-crypto --test golden` and say why in the
//! commit.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Prekeys, hex, rng, unhex};
use ferry_crypto::envelope;
use ferry_crypto::keys::KeyPair;
use ferry_crypto::session::{Session, identity_public};

/// "ferry" in ASCII.
const SEED: u64 = 0x0066_6572_7279;

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/transcript.json");

/// (from Alice?, message id, plaintext)
const SCRIPT: &[(bool, u8, &str)] = &[
    (true, 1, "hello bob"),
    (true, 2, "are you there?"),
    (false, 3, "hi alice"),
    (true, 4, "good: now the ratchet turns"),
    (false, 5, ""),
    (false, 6, "two in a row"),
    (true, 7, "bye"),
];

fn transcript() -> serde_json::Value {
    let mut rng = rng(SEED);
    let alice = KeyPair::generate(&mut rng);
    let bob = KeyPair::generate(&mut rng);
    let mut prekeys = Prekeys::generate(&mut rng, &bob, 1);
    let mut a = Session::initiate(&mut rng, &alice, &prekeys.bundle(&bob)).unwrap();
    let mut b: Option<Session> = None;
    let mut messages = Vec::new();
    for (from_alice, id, text) in SCRIPT {
        let msg_id = [*id; 16];
        let env = if *from_alice {
            a.seal(&mut rng, &identity_public(&alice), msg_id, text.as_bytes())
                .unwrap()
        } else {
            b.as_mut()
                .unwrap()
                .seal(&mut rng, &identity_public(&bob), msg_id, text.as_bytes())
                .unwrap()
        };
        // Delivered at once, in order.
        let got = if *from_alice {
            let inner = envelope::open_with(&bob, &env).unwrap();
            match b.as_mut() {
                Some(s) if !s.is_new_contact(&inner) => s.receive(&mut rng, &inner).unwrap(),
                _ => {
                    let (s, r) = Session::accept(&mut rng, &bob, &mut prekeys, &inner).unwrap();
                    b = Some(s);
                    r
                }
            }
        } else {
            let inner = envelope::open_with(&alice, &env).unwrap();
            a.receive(&mut rng, &inner).unwrap()
        };
        assert_eq!(got.plaintext, text.as_bytes());
        messages.push(serde_json::json!({
            "from": if *from_alice { "alice" } else { "bob" },
            "plaintext": text,
            "envelope": hex(&env),
        }));
    }
    serde_json::json!({
        "alice_identity": hex(&identity_public(&alice)),
        "bob_identity": hex(&identity_public(&bob)),
        "alice_session_after": hex(&a.to_bytes()),
        "messages": messages,
    })
}

#[test]
fn the_transcript_is_byte_for_byte_the_committed_one() {
    let now = transcript();
    if std::env::var_os("GOLDEN_BLESS").is_some() {
        std::fs::create_dir_all(std::path::Path::new(PATH).parent().unwrap()).unwrap();
        std::fs::write(PATH, serde_json::to_string_pretty(&now).unwrap() + "\n").unwrap();
        return;
    }
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    assert_eq!(
        now, committed,
        "the transcript changed (formats, labels or RNG order)"
    );
}

/// The committed envelopes open with keys regenerated from the seed, independently of the code
/// that sealed them this run: the formats are frozen, not just reproducible.
#[test]
fn committed_envelopes_open_with_regenerated_keys() {
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    let mut rng = rng(SEED);
    let alice = KeyPair::generate(&mut rng);
    let bob = KeyPair::generate(&mut rng);
    for m in committed["messages"].as_array().unwrap() {
        let env = unhex(m["envelope"].as_str().unwrap());
        let to = if m["from"] == "alice" { &bob } else { &alice };
        assert!(envelope::BUCKETS.contains(&env.len()));
        let inner = envelope::open_with(to, &env).unwrap();
        let from = if m["from"] == "alice" { &alice } else { &bob };
        assert_eq!(inner.sender, identity_public(from));
    }
}
