//! Unit tests of prekeys: the KEM and EC key checks, a day's sealed slot (opens only for its day,
//! hides the identity, refuses a tampered or moved item), and the one-time key limits.

use super::*;

#[test]
fn kem_modulus_check() {
    let mut key = vec![0u8; KEM_KEY_BYTES];
    key[0] = KEM_KEY_TYPE;
    assert!(kem_key_valid(&key));
    // Coefficient 3328 = 0xD00 in the low slot of the first triple: valid.
    key[1] = 0x00;
    key[2] = 0x0D;
    assert!(kem_key_valid(&key));
    // 3329 = 0xD01: invalid.
    key[1] = 0x01;
    assert!(!kem_key_valid(&key));
    key[1] = 0;
    key[2] = 0;
    // High slot of the last triple of t̂ = 0xFFF.
    let last = KEM_EK_BYTES - 32;
    key[last] = 0xFF;
    key[last - 1] = 0xF0;
    assert!(!kem_key_valid(&key));
    key[last] = 0;
    key[last - 1] = 0;
    // rho bytes are not checked.
    key[KEM_KEY_BYTES - 1] = 0xFF;
    assert!(kem_key_valid(&key));
    key[0] = EC_KEY_TYPE;
    assert!(!kem_key_valid(&key));
    assert!(!kem_key_valid(&key[..100]));
}

#[test]
fn ec_key_encoding() {
    let mut k = [0u8; 33];
    k[0] = EC_KEY_TYPE;
    k[1] = 9;
    assert!(ec_key_u(&k).is_some());
    k[0] = 0x06;
    assert!(ec_key_u(&k).is_none());
    let mut p = [0xFFu8; 33];
    p[0] = EC_KEY_TYPE;
    p[1] = 0xED;
    p[32] = 0x7F;
    assert!(ec_key_u(&p).is_none());
    p[1] = 0xEC;
    assert!(ec_key_u(&p).is_some());
}

fn mailbox() -> (crate::addr::MailboxSecret, NamespaceId) {
    (
        crate::addr::MailboxSecret::from_seed(&[3; 32]),
        NamespaceId([9; 32]),
    )
}

fn signed_part(ik: &[u8; 32], expires: u64) -> SignedPart {
    let identity = {
        let mut k = [0u8; EC_KEY_BYTES];
        k[0] = EC_KEY_TYPE;
        k[1..].copy_from_slice(&xeddsa::public_key(ik));
        k
    };
    let mut spk_key = [0u8; EC_KEY_BYTES];
    spk_key[0] = EC_KEY_TYPE;
    spk_key[1] = 9;
    let spk = SignedEcPrekey {
        id: 7,
        key: spk_key,
        sig: xeddsa::sign(ik, &spk_key, &[1; 64]),
    };
    let mut lr = vec![0u8; KEM_KEY_BYTES];
    lr[0] = KEM_KEY_TYPE;
    let last_resort = KemPrekey {
        id: 8,
        sig: xeddsa::sign(ik, &lr, &[2; 64]),
        key: Bytes::from(lr),
    };
    let expiry_sig = xeddsa::sign(ik, &expiry_message(&spk, &last_resort, expires), &[3; 64]);
    SignedPart {
        identity,
        spk,
        last_resort,
        expires,
        expiry_sig,
    }
}

/// A sealed bundle opens only with its day's slot: the node sees no key, no identity; a
/// changed byte anywhere, another day's opener, an item moved to another slot or id, or an
/// expiry the identity did not sign are all refused.
#[test]
fn sealed_slots_open_only_for_their_day_and_hide_the_identity() {
    let (mb, ns) = mailbox();
    let ik = [5u8; 32];
    let day = 20_000;
    let signer = mb.blinded_signer(&ns, None, slot_epoch(day)).unwrap();
    let sealer = SlotSealer::new(slot_key(&mb.public().to_bytes(), &ns, day), &signer);
    let signed = signed_part(&ik, 1_234_567);
    let mut ec_key = [0u8; EC_KEY_BYTES];
    ec_key[0] = EC_KEY_TYPE;
    ec_key[1] = 42;
    let ec = EcPrekey {
        id: 0xdead_beef,
        key: ec_key,
    };
    let mut pq_plain = vec![0u8; KEM_KEY_BYTES];
    pq_plain[0] = KEM_KEY_TYPE;
    pq_plain[100] = 1;
    let pq = KemPrekey {
        id: 77,
        sig: xeddsa::sign(&ik, &pq_plain, &[4; 64]),
        key: Bytes::from(pq_plain),
    };
    let sealed = SealedBundle {
        head: sealer.seal_head(&signed, &[1; SALT_BYTES]),
        pq: Some(sealer.seal_pq(&pq, &[2; SALT_BYTES])),
        ec: Some(sealer.seal_ec(&ec, &[3; SALT_BYTES])),
    };
    // What the node holds names neither the identity nor any key.
    let mut wire = Vec::new();
    sealed.encode(&mut wire);
    for needle in [
        &signed.identity[1..],
        &ec_key[1..],
        &signed.spk.key[1..],
        &pq.key[90..130],
    ] {
        assert!(!wire.windows(needle.len()).any(|w| w == needle));
    }
    let opener = SlotOpener::new(mb.public(), &ns, day).unwrap();
    assert_eq!(opener.dest(), signer.dest());
    let b = opener.open(&sealed).unwrap();
    assert_eq!(b.identity, signed.identity);
    assert_eq!(b.ec, Some(ec.clone()));
    assert_eq!(b.pq, pq);
    assert!(!b.pq_last_resort);
    assert_eq!(b.expires, 1_234_567);
    // Without one-time keys the last-resort key stands in.
    let bare = SealedBundle {
        head: sealed.head.clone(),
        pq: None,
        ec: None,
    };
    let b = opener.open(&bare).unwrap();
    assert!(b.pq_last_resort && b.ec.is_none());
    assert_eq!(b.pq, signed.last_resort);
    // Another day's slot is another dest and does not open this one.
    let other = SlotOpener::new(mb.public(), &ns, day + 1).unwrap();
    assert_ne!(other.dest(), opener.dest());
    assert!(other.open(&sealed).is_err());
    // The slot's dest is none of the mailbox's hourly dests around it.
    for e in (day * 24 - 48)..(day * 24 + 72) {
        assert_ne!(mb.public().dest(&ns, None, e).unwrap(), opener.dest());
    }
    // Any flipped byte of the head (ciphertext or blinded signature) is refused.
    for at in [0, 20, HEAD_BYTES / 2, HEAD_BYTES - 70, HEAD_BYTES - 1] {
        let mut h = sealed.head.to_vec();
        h[at] ^= 1;
        let bad = SealedBundle {
            head: Bytes::from(h),
            ..sealed.clone()
        };
        assert_eq!(opener.open(&bad).unwrap_err().kind, KeyKind::SignedPrekey);
    }
    // An item under another id (or flipped) does not open.
    let mut moved = sealed.clone();
    moved.ec.as_mut().unwrap().id ^= 1;
    assert_eq!(opener.open(&moved).unwrap_err().kind, KeyKind::OneTimeEc);
    let mut moved = sealed.clone();
    moved.pq.as_mut().unwrap().id ^= 1;
    assert_eq!(opener.open(&moved).unwrap_err().kind, KeyKind::OneTimePq);
    // A head whose expiry the identity did not sign is refused.
    let mut forged = signed.clone();
    forged.expires += 86_400;
    let bad = SealedBundle {
        head: sealer.seal_head(&forged, &[5; SALT_BYTES]),
        ..sealed.clone()
    };
    let f = opener.open(&bad).unwrap_err();
    assert!(f.bad_signature && f.kind == KeyKind::SignedPrekey);
    // A head sealed right but signed by another blinded key (not the slot's) is refused.
    let stranger = crate::addr::MailboxSecret::from_seed(&[4; 32])
        .blinded_signer(&ns, None, slot_epoch(day))
        .unwrap();
    let wrong = SlotSealer::new(slot_key(&mb.public().to_bytes(), &ns, day), &stranger);
    let bad = SealedBundle {
        head: wrong.seal_head(&signed, &[6; SALT_BYTES]),
        ..sealed.clone()
    };
    assert!(opener.open(&bad).is_err());
    // Round trip through the wire.
    let mut r = Reader::new(Bytes::from(wire), crate::frame::frame_type::PREKEY_BUNDLE);
    assert_eq!(SealedBundle::decode(&mut r).unwrap(), sealed);
}

/// A list longer than one upload may carry is refused at its first key past
/// `ONE_TIME_KEYS_MAX`.
#[test]
fn one_time_lists_past_the_limit_are_refused() {
    let upload = |n: usize| Upload {
        dest: Dest::default(),
        replace_one_time: false,
        ttl_s: 0,
        head: None,
        ec: (0..n)
            .map(|i| SealedEc {
                id: u32::try_from(i).unwrap(),
                sealed: [0; EC_SEALED_BYTES],
            })
            .collect(),
        pq: Vec::new(),
    };
    assert_eq!(check_upload(&upload(ONE_TIME_KEYS_MAX)), Ok(()));
    assert_eq!(
        check_upload(&upload(ONE_TIME_KEYS_MAX + 1)),
        Err(Fault {
            bad_signature: false,
            kind: KeyKind::OneTimeEc,
            index: u16::try_from(ONE_TIME_KEYS_MAX).unwrap(),
        })
    );
}

/// An upload that breaks its limit is a programming error at `encode`, never a count that
/// disagrees with the keys after it.
#[test]
#[should_panic(expected = "over its limit")]
fn encoding_more_one_time_keys_than_the_count_may_say_panics() {
    let upload = Upload {
        dest: Dest::default(),
        replace_one_time: false,
        ttl_s: 0,
        head: None,
        ec: vec![
            SealedEc {
                id: 1,
                sealed: [0; EC_SEALED_BYTES]
            };
            usize::from(u16::MAX) + 1
        ],
        pq: Vec::new(),
    };
    upload.encode(&mut Vec::new());
}
