//! Unit tests of `registry` (moved out of registry.rs).

use super::*;

fn limits() -> PushLimits {
    PushLimits {
        registrations_max: 3,
        dests_per_token_max: 4,
        registration_ttl_max_s: 1000,
        coalesce_window_ms: 60_000,
        webpush_origins_allowed: AllowList::parse(&["https://push.example:8443"]).unwrap(),
        enabled: [true, true, true],
    }
}
const APNS: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

#[test]
fn one_wake_per_device_per_window() {
    let mut r = Registry::new(limits(), [9; 32]);
    let d = Dest([1; 16]);
    let (n, arms) = r
        .register(100, PushProvider::Apns, APNS.as_bytes(), 50, &[d])
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(arms, vec![(d, 150)]);
    assert_eq!(r.wake(100, 0, &d).len(), 1);
    assert!(r.wake(100, 59_999, &d).is_empty(), "inside the window");
    assert_eq!(r.stats.wakes_coalesced, 1);
    // Still pending (say, retrying after a 429): no second wake after the window either.
    assert!(r.wake(100, 60_000, &d).is_empty());
    let w = Wake {
        provider: PushProvider::Apns,
        token: APNS.into(),
    };
    r.wake_finished(&w, false);
    assert!(!format!("{w:?}").contains(APNS), "Debug hides the token");
    assert_eq!(r.wake(100, 60_000, &d).len(), 1);
    r.wake_finished(&w, true);
    assert_eq!(
        r.wake(100, 60_001, &d).len(),
        1,
        "a dropped wake restarts the window"
    );
    r.wake_finished(&w, false);
    assert!(r.wake(151, 200_000, &d).is_empty(), "registration expired");
    assert!(r.wake(100, 0, &Dest([2; 16])).is_empty());
}

#[test]
fn tokens_are_checked_per_provider() {
    let mut r = Registry::new(limits(), [9; 32]);
    let d = [Dest([1; 16])];
    let bad = |r: &mut Registry, p, t: &str| r.register(0, p, t.as_bytes(), 10, &d);
    assert_eq!(
        bad(&mut r, PushProvider::Apns, "zz"),
        Err(PushStatus::BadToken)
    );
    assert_eq!(
        bad(&mut r, PushProvider::Fcm, "a b"),
        Err(PushStatus::BadToken)
    );
    assert_eq!(
        bad(&mut r, PushProvider::WebPush, "https://evil.example/x"),
        Err(PushStatus::BadToken)
    );
    assert_eq!(
        bad(&mut r, PushProvider::WebPush, "http://push.example:8443/x"),
        Err(PushStatus::BadToken)
    );
    assert!(
        bad(
            &mut r,
            PushProvider::WebPush,
            "https://push.example:8443/sub/1"
        )
        .is_ok()
    );
    let mut off = limits();
    off.enabled = [false, true, true];
    let mut r = Registry::new(off, [9; 32]);
    assert_eq!(
        bad(&mut r, PushProvider::Apns, APNS),
        Err(PushStatus::ProviderDisabled)
    );
}

#[test]
fn web_push_endpoints_are_parsed_and_stored_normalised() {
    let mut l = limits();
    l.webpush_origins_allowed =
        AllowList::parse(&["https://*.notify.windows.com", "https://push.example:8443"]).unwrap();
    let mut r = Registry::new(l, [9; 32]);
    let d = [Dest([1; 16])];
    let wp = |r: &mut Registry, t: &str| r.register(0, PushProvider::WebPush, t.as_bytes(), 10, &d);
    // Hosts that end where the first `/` is not: the wake would go to attacker.example or
    // to a local port. (endpoint.rs tests every other shape.)
    for bypass in [
        "https://attacker.example?.notify.windows.com/x",
        "https://127.0.0.1:8080?.notify.windows.com/x",
        "https://attacker.example#.notify.windows.com/x",
        "https://attacker.example\\.notify.windows.com/x",
        "https://a.notify.windows.com@attacker.example/x",
        "https://notify.windows.com.evil/x",
    ] {
        assert_eq!(wp(&mut r, bypass), Err(PushStatus::BadToken), "{bypass}");
    }
    assert_eq!(r.devices(), 0);
    // Two spellings of one endpoint are one device, kept (and woken) in the normalised form.
    wp(&mut r, "HTTPS://Push.Example:8443/sub/1").unwrap();
    wp(&mut r, "https://push.example:8443/sub/x/../1").unwrap();
    assert_eq!(r.devices(), 1);
    assert!(r.has_token(PushProvider::WebPush, "https://push.example:8443/sub/1"));
    let wakes = r.wake(0, 0, &d[0]);
    assert_eq!(wakes[0].token, "https://push.example:8443/sub/1");
}

#[test]
fn replay_deletes_endpoints_the_allow_list_does_not_pass_as_stored() {
    let ds = [Dest([1; 16])];
    // Journals written before endpoints were parsed may hold these.
    let stored = [
        "https://attacker.example?.notify.windows.com/x",
        "https://push.example:8443/s/x/../1",
        "https://push.example:8443/s/2",
    ];
    let records: Vec<Vec<u8>> = stored
        .iter()
        .map(|t| {
            record(
                &(PushProvider::WebPush as u8, t.to_string()),
                &[(ds[0], 10)],
            )
        })
        .collect();
    let mut l = limits();
    l.webpush_origins_allowed =
        AllowList::parse(&["https://*.notify.windows.com", "https://push.example:8443"]).unwrap();
    let mut r = Registry::new(l, [9; 32]);
    assert_eq!(r.replay(&records), 0);
    assert_eq!(r.devices(), 1);
    assert!(r.has_token(PushProvider::WebPush, stored[2]));
    assert_eq!(r.take_records(0).len(), 2, "both deletions journaled");
    assert!(
        r.compaction_due(0, 60, true, false),
        "old-form records are rewritten at once"
    );
}

#[test]
fn record_lengths_are_refused_or_asserted_never_clamped() {
    let mut r = Registry::new(limits(), [9; 32]);
    let d = Dest([1; 16]);
    // A token longer than a record's u16 length (and than PUSH_TOKEN_BYTES_MAX).
    let long = format!("https://push.example:8443/{}", "a".repeat(70_000));
    assert_eq!(
        r.register(0, PushProvider::WebPush, long.as_bytes(), 10, &[d]),
        Err(PushStatus::BadToken)
    );
    let long_fcm = "a".repeat(PUSH_TOKEN_BYTES_MAX + 1);
    assert_eq!(
        r.register(0, PushProvider::Fcm, long_fcm.as_bytes(), 10, &[d]),
        Err(PushStatus::BadToken)
    );
    // One dest named more times than a record's u16 count holds.
    let many = vec![d; usize::from(u16::MAX) + 1];
    assert_eq!(
        r.register(0, PushProvider::Fcm, b"tok", 10, &many),
        Err(PushStatus::TooMany)
    );
    assert_eq!(
        r.register(0, PushProvider::Fcm, b"tok", 0, &many),
        Err(PushStatus::TooMany)
    );
    // Whatever was accepted replays, record for record.
    r.register(0, PushProvider::Fcm, b"tok", 10, &[d; 4])
        .unwrap();
    let records = r.take_records(0);
    assert_eq!(Registry::new(limits(), [9; 32]).replay(&records), 0);
    // A journal record claiming a longer token than any registration can have is damage.
    let mut forged = vec![b'R', PushProvider::Fcm as u8];
    let token_len = PUSH_TOKEN_BYTES_MAX + 1;
    forged.put_u16_le(u16::try_from(token_len).unwrap());
    forged.extend(std::iter::repeat_n(b'a', token_len));
    forged.put_u16_le(0);
    assert_eq!(Registry::new(limits(), [9; 32]).replay(&[forged]), 1);
    // So is a device with more dests than any registration can give it.
    let key = (PushProvider::Fcm as u8, "tok".to_string());
    let items: Vec<(Dest, u64)> = (0..=DESTS_PER_TOKEN_MAX)
        .map(|i| {
            let mut dest = [0; 16];
            dest[..8].copy_from_slice(&u64::try_from(i).unwrap().to_le_bytes());
            (Dest(dest), 10)
        })
        .collect();
    let halves = [
        record(&key, &items[..DESTS_PER_TOKEN_MAX / 2]),
        record(&key, &items[DESTS_PER_TOKEN_MAX / 2..]),
    ];
    let mut again = Registry::new(limits(), [9; 32]);
    assert_eq!(again.replay(&halves), 1);
    assert_eq!(
        again.snapshot().len(),
        DESTS_PER_TOKEN_MAX / 2,
        "compaction writes what replay kept, a record per dest"
    );
}

#[test]
#[should_panic(expected = "push.dests_per_token_max 10001 is over 10000")]
fn a_dests_limit_no_record_can_hold_is_a_programming_error() {
    let mut l = limits();
    l.dests_per_token_max = DESTS_PER_TOKEN_MAX + 1;
    Registry::new(l, [9; 32]);
}

#[test]
fn limits_removal_deletion_and_replay() {
    let mut r = Registry::new(limits(), [9; 32]);
    let ds: Vec<Dest> = (0..5u8).map(|i| Dest([i; 16])).collect();
    assert_eq!(
        r.register(0, PushProvider::Fcm, b"tok-1", 10, &ds),
        Err(PushStatus::TooMany)
    );
    r.register(0, PushProvider::Fcm, b"tok-1", 5000, &ds[..2])
        .unwrap();
    // TTL capped at registration_ttl_max_s.
    assert_eq!(r.armed_until(&ds[0]), 1000);
    r.register(0, PushProvider::Fcm, b"tok-2", 10, &ds[..1])
        .unwrap();
    r.register(0, PushProvider::Fcm, b"tok-3", 10, &ds[..1])
        .unwrap();
    assert_eq!(
        r.register(0, PushProvider::Fcm, b"tok-4", 10, &ds[..1]),
        Err(PushStatus::TooMany)
    );
    // Removal of one dest.
    let (n, arms) = r
        .register(0, PushProvider::Fcm, b"tok-1", 0, &ds[1..2])
        .unwrap();
    assert_eq!((n, arms), (1, vec![(ds[1], 0)]));
    let arms = r.delete_token(PushProvider::Fcm, "tok-1");
    assert_eq!(arms, vec![(ds[0], 10)], "tok-2 and tok-3 still cover it");
    assert!(!r.has_token(PushProvider::Fcm, "tok-1"));
    let records = r.take_records(0);
    // A restart: the journal's registrations are locked until a wake names their dest.
    let mut again = Registry::new(limits(), [9; 32]);
    assert_eq!(again.replay(&records), 0);
    assert_eq!((again.devices(), again.locked()), (0, 2));
    assert!(!again.compaction_due(0, 60, true, false));
    let tags = again.all_armed_tags();
    assert_eq!(
        tags,
        vec![(push_dest_tag(&ds[0]), DAY_S)],
        "the end of the day"
    );
    assert!(again.wake(0, 0, &ds[1]).is_empty());
    assert!(again.take_unarmed_tags().is_empty());
    assert_eq!(again.wake(0, 0, &ds[0]).len(), 2, "opened: tok-2 and tok-3");
    assert_eq!((again.devices(), again.locked()), (2, 0));
    assert_eq!(
        again.take_unarmed_tags(),
        vec![push_dest_tag(&ds[0])],
        "the shards drop the tag"
    );
    assert_eq!(again.armed_until(&ds[0]), 10);
    let arms = again.expire(10);
    assert_eq!(arms, vec![(ds[0], 0)]);
    assert!(again.take_unarmed_tags().is_empty());
    assert_eq!(again.devices(), 0);
    // Compaction keeps locked registrations as they are, until their day has passed.
    let mut third = Registry::new(limits(), [9; 32]);
    third.replay(&r.snapshot());
    let mut fourth = Registry::new(limits(), [9; 32]);
    fourth.replay(&third.snapshot());
    assert_eq!(fourth.locked(), 2);
    assert_eq!(fourth.wake(5, 0, &ds[0]).len(), 2);
    third.expire(DAY_S - 1);
    assert_eq!(third.locked(), 2, "kept to the end of the expiry's day");
    third.expire(DAY_S);
    assert_eq!(
        (third.take_unarmed_tags(), third.locked()),
        (vec![push_dest_tag(&ds[0])], 0)
    );
    assert!(
        third.compaction_due(DAY_S + 60, 60, true, false),
        "the expired records leave the journal"
    );
    // A Web Push origin taken off the allowed list: its tokens go when they are opened.
    let mut wp = Registry::new(limits(), [9; 32]);
    wp.register(
        0,
        PushProvider::WebPush,
        b"https://push.example:8443/s/1",
        10,
        &ds[..1],
    )
    .unwrap();
    let records = wp.take_records(0);
    let mut narrower = limits();
    narrower.webpush_origins_allowed = AllowList::default();
    let mut again = Registry::new(narrower, [9; 32]);
    again.replay(&records);
    assert!(again.wake(0, 0, &ds[0]).is_empty());
    assert_eq!((again.devices(), again.locked()), (0, 0));
    assert_eq!(again.take_records(0).len(), 1, "the deletion is journaled");
}

/// Two byte strings share a run of 8 bytes.
fn share_8(a: &[u8], b: &[u8]) -> bool {
    a.windows(8).any(|w| b.windows(8).any(|v| v == w))
}

#[test]
fn the_journal_names_no_dest_and_no_token_and_links_no_registration() {
    let mut r = Registry::new(limits(), [9; 32]);
    let ds: Vec<Dest> = (1..=4u8).map(|i| Dest([i; 16])).collect();
    r.register(100, PushProvider::Apns, APNS.as_bytes(), 500, &ds)
        .unwrap();
    let fcm = "fcm-token-of-another-device";
    r.register(100, PushProvider::Fcm, fcm.as_bytes(), 500, &ds[..1])
        .unwrap();
    let records = r.take_records(100);
    assert_eq!(records.len(), 5, "one record per device and dest");
    for rec in records.iter().chain(r.snapshot().iter()) {
        assert!(!share_8(rec, APNS.as_bytes()) && !share_8(rec, fcm.as_bytes()));
        for d in &ds {
            assert!(!share_8(rec, &d.0), "a dest in the clear");
        }
    }
    // The APNs token's four records: equal lengths, and apart from the record type and the
    // expiry's day (shared with every registration ending that day) no common bytes.
    let apns = &records[..4];
    for (i, a) in apns.iter().enumerate() {
        assert_eq!(a.len(), apns[0].len());
        for b in &apns[i + 1..] {
            let (a1, b1) = (
                [&a[1..33], &a[37..]].concat(),
                [&b[1..33], &b[37..]].concat(),
            );
            assert!(
                !share_8(&a1, &b1),
                "two records of one registration share bytes"
            );
        }
    }
    // The FCM token's record is as long as the APNs token's (padding).
    assert_eq!(records[4].len(), records[0].len());
    // Compaction sorts by tag: the order tells nothing either.
    let snap = r.snapshot();
    assert!(snap.windows(2).all(|w| w[0][1..33] <= w[1][1..33]));
    assert!(r.compaction_due(160, 60, true, false) && !r.compaction_due(159, 60, true, false));
    r.compacted();
    assert!(!r.compaction_due(1000, 60, true, false));
    // After a restart, the dest opens its records; nothing else does.
    let mut again = Registry::new(limits(), [9; 32]);
    assert_eq!(again.replay(&snap), 0);
    assert_eq!(again.locked(), 5);
    let wakes = again.wake(200, 0, &ds[0]);
    let mut tokens: Vec<&str> = wakes.iter().map(|w| w.token.as_str()).collect();
    tokens.sort_unstable();
    assert_eq!(tokens, vec![APNS, fcm]);
    assert_eq!(again.locked(), 3, "the other dests' records stay sealed");
    assert_eq!(again.armed_until(&ds[0]), 600);
    // A record altered on disk does not open, and is deleted.
    let mut bad = snap.clone();
    let i = bad
        .iter()
        .position(|rec| rec[1..17] == push_dest_tag(&ds[1]))
        .unwrap();
    let last = bad[i].len() - 1;
    bad[i][last] ^= 1;
    let mut broken = Registry::new(limits(), [9; 32]);
    assert_eq!(broken.replay(&bad), 0);
    assert!(broken.wake(200, 0, &ds[1]).is_empty());
    assert_eq!(broken.take_records(200).len(), 1, "its deletion");
}

#[test]
fn old_form_records_replay_and_a_later_sealed_removal_wins() {
    let key = (PushProvider::Apns as u8, APNS.to_string());
    let d = Dest([7; 16]);
    let old = record(&key, &[(d, 1000)]);
    let removal = sealed_record(&d, &key, 0, [0; 12]);
    let mut r = Registry::new(limits(), [9; 32]);
    assert_eq!(r.replay(std::slice::from_ref(&old)), 0);
    assert!(r.has_token(PushProvider::Apns, APNS));
    assert!(r.compaction_due(0, 60, true, false));
    assert!(r.snapshot().iter().all(|rec| rec[0] == b'S'));
    let mut r = Registry::new(limits(), [9; 32]);
    assert_eq!(r.replay(&[old, removal]), 0);
    assert_eq!((r.devices(), r.locked()), (0, 0));
}

#[test]
fn opening_sealed_registrations_keeps_the_registrys_limits() {
    // A device registered one dest before a restart, and after it (unaware) registers its
    // full share anew: the sealed one, opened later, would take it past its limit.
    let d0 = Dest([0; 16]);
    let mut r = Registry::new(limits(), [9; 32]);
    r.register(0, PushProvider::Fcm, b"tok-1", 100, &[d0])
        .unwrap();
    let sealed = r.take_records(0);
    let mut again = Registry::new(limits(), [9; 32]);
    again.replay(&sealed);
    let fresh: Vec<Dest> = (1..=4u8).map(|i| Dest([i; 16])).collect();
    again
        .register(0, PushProvider::Fcm, b"tok-1", 100, &fresh)
        .unwrap();
    let _ = again.take_records(0);
    assert!(
        again.wake(0, 0, &d0).is_empty(),
        "over dests_per_token_max: deleted"
    );
    assert_eq!(again.locked(), 0);
    assert_eq!(again.take_records(0).len(), 1, "its deletion is journaled");
    // Likewise a sealed device beyond registrations_max (3) opened registrations.
    let mut r = Registry::new(limits(), [9; 32]);
    r.register(0, PushProvider::Fcm, b"tok-9", 100, &[d0])
        .unwrap();
    let sealed = r.take_records(0);
    let mut again = Registry::new(limits(), [9; 32]);
    again.replay(&sealed);
    for t in ["tok-1", "tok-2", "tok-3"] {
        again
            .register(0, PushProvider::Fcm, t.as_bytes(), 100, &fresh[..1])
            .unwrap();
    }
    assert!(again.wake(0, 0, &d0).is_empty());
    assert_eq!(again.devices(), 3);
    // A compaction that fails is not retried every second.
    assert!(again.compaction_due(0, 60, true, true));
    again.compaction_failed(0, 60);
    assert!(!again.compaction_due(59, 60, true, true));
    assert!(again.compaction_due(60, 60, true, true));
}

#[test]
fn a_journal_with_unsealed_records_is_rewritten_even_those_that_do_not_parse() {
    let mut r = Registry::new(limits(), [9; 32]);
    assert_eq!(r.replay(&[b"R garbage".to_vec()]), 1);
    assert!(r.compaction_due(0, 60, false, false));
    assert!(r.snapshot().is_empty());
}

#[test]
fn token_kinds_pad_to_one_length_each() {
    let d = Dest([1; 16]);
    let len =
        |p: PushProvider, t: &str| sealed_record(&d, &(p as u8, t.to_string()), 10, [0; 12]).len();
    let web = |n: usize| format!("https://push.example:8443/{}", "a".repeat(n));
    assert_eq!(
        len(PushProvider::Apns, APNS),
        len(PushProvider::Apns, &APNS[..32])
    );
    assert_eq!(
        len(PushProvider::Fcm, &"f".repeat(140)),
        len(PushProvider::Fcm, &"f".repeat(200))
    );
    assert_eq!(
        len(PushProvider::WebPush, &web(300)),
        len(PushProvider::WebPush, &web(700))
    );
    assert!(len(PushProvider::Apns, APNS) < len(PushProvider::Fcm, &"f".repeat(140)));
}
