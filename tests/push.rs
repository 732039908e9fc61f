//! Push wakes end to end: a real node, the real SDK, and `ferry-pushmock` standing in for APNs,
//! FCM (with its OAuth2 endpoint) and a Web Push service over HTTP/2 + TLS. The mock verifies
//! every JWT with the test keys and checks that no wake carries content, a sender or a
//! destination.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::push::{Mocks, PushKeys};
use common::{Node, mailbox, temp_dir};
use ferry_proto::conn::ClientEvent;
use ferry_proto::frame::{Op, PushProvider, PushStatus, SendStatus};
use ferry_sdk::{Client, Mailbox, SdkError};

const WAIT: Duration = Duration::from_secs(10);
const APNS_OK: &str = "aaaaaaaa00000000000000000000000000000000000000000000000000000001";
const APNS_GONE: &str = "bbbbbbbb00000000000000000000000000000000000000000000000000000002";
const APNS_BUSY: &str = "cccccccc00000000000000000000000000000000000000000000000000000003";
const APNS_STALE_JWT: &str = "dddddddd00000000000000000000000000000000000000000000000000000004";
const FCM_OK: &str = "fcm-token-ok:APA91b_xyz";
const PAYLOAD: &[u8] = b"secret message body 7f3e";

use ferry_proto::hex::encode as hex;

fn send(tx: &mut Client, dest: ferry_sdk::Dest, msg_id: u64) -> SendStatus {
    tx.send(dest, msg_id, ferry_proto::frame::FLAG_ACK, PAYLOAD);
    tx.flush().unwrap();
    loop {
        match tx.recv(WAIT).unwrap() {
            ClientEvent::SendResult {
                msg_id: m, status, ..
            } if m == msg_id => return status,
            _ => {}
        }
    }
}

/// Proves `Op::PushRegister` for the mailbox's current dest and registers `token` for it.
fn register(
    c: &mut Client,
    mb: &Mailbox,
    provider: PushProvider,
    token: &str,
    ttl_s: u32,
) -> Result<(ferry_sdk::Dest, u16), SdkError> {
    let epoch = c.epoch();
    let signer = mb.signer(epoch).unwrap();
    c.prove(&[&signer], Op::PushRegister).unwrap();
    let dest = mb.dest(epoch).unwrap();
    c.push_register(provider, token.as_bytes(), &[dest], ttl_s)
        .map(|n| (dest, n))
}

/// A registration reaches the dest's owner core a moment after its `PushResult` (the service
/// core answers the client and arms the owner separately; docs/PUSH.md says so): wait until
/// `n` dests are armed before sending, or the first blob may find its dest not armed yet.
fn armed(node: &Node, n: u64) {
    wait_until(node, "ferry_push_armed_dests", |v| v >= n);
}

/// Polls `metric` until `ok` holds (at most `WAIT`).
fn wait_until(node: &Node, metric: &str, ok: impl Fn(u64) -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !ok(node.metric(metric)) {
        assert!(
            std::time::Instant::now() < deadline,
            "{metric} never reached the value awaited: {}",
            node.metric(metric)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

struct Setup {
    dir: std::path::PathBuf,
    mock: Mocks,
    node: Node,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn setup(script: &[(&str, &str)], window_s: u32, forbid: &[String]) -> Setup {
    setup_with(script, window_s, forbid, |_| Vec::new())
}

/// `setup`, with variables that `extra` derives from the mocks set last (so they win).
fn setup_with(
    script: &[(&str, &str)],
    window_s: u32,
    forbid: &[String],
    extra: impl FnOnce(&Mocks) -> Vec<(String, String)>,
) -> Setup {
    let dir = temp_dir("push");
    let keys = PushKeys::write(&dir);
    let mock = Mocks::start(&dir, &keys, script, forbid);
    let mut env = mock.node_env(&keys);
    env.push(("FERRY_PUSH_COALESCE_WINDOW_S".into(), window_s.to_string()));
    env.push(("FERRY_PUSH_RETRY_BASE_MS".into(), "50".into()));
    env.push(("RUST_LOG".into(), "debug".into()));
    env.extend(extra(&mock));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let node = Node::start(&["--shards", "2"], &env);
    Setup { dir, mock, node }
}

fn no_violations(records: &[serde_json::Value]) {
    for r in records {
        assert_eq!(
            r["violations"],
            serde_json::json!([]),
            "the mock found violations: {r}"
        );
    }
}

#[test]
fn an_offline_recipient_gets_exactly_one_content_free_wake_per_window() {
    // The dest and the payload must never reach a provider.
    let dests: Vec<String> = (0..4u32)
        .map(|i| hex(&mailbox(900 + i).dest(0).unwrap().0))
        .collect();
    let mut forbid = vec![String::from_utf8_lossy(PAYLOAD).to_string()];
    forbid.extend(dests);
    let s = setup(&[], 3, &forbid);
    let mb = mailbox(900);
    let mut owner = s.node.client();
    let (dest, n) = register(&mut owner, &mb, PushProvider::Apns, APNS_OK, 3_600).unwrap();
    assert_eq!(n, 1);
    drop(owner); // offline: nobody subscribed
    armed(&s.node, 1);

    let mut tx = s.node.client();
    let t0 = std::time::Instant::now();
    assert_eq!(send(&mut tx, dest, 1), SendStatus::Accepted);
    let got = s.mock.wait_for(1, WAIT, |r| r["provider"] == "apns");
    assert_eq!(got.len(), 1, "one wake");
    assert_eq!(got[0]["token"], APNS_OK);
    assert_eq!(got[0]["status"], 200);
    // A second message inside the window (3 s; after the shard's 1 s offer interval, so the
    // service core itself coalesces it): no second wake. (When the window ends the next wake
    // goes out: checked in virtual time, `ferry_shards::push` `one_wake_per_device_per_window`
    // and the simulator's providers, rather than by waiting it out here.)
    std::thread::sleep(Duration::from_millis(1_100));
    assert_eq!(send(&mut tx, dest, 2), SendStatus::Accepted);
    wait_until(&s.node, "ferry_push_wakes_coalesced_total", |v| v == 1);
    assert_eq!(
        s.mock
            .wait_for(2, Duration::ZERO, |r| r["provider"] == "apns")
            .len(),
        1
    );
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "still inside the window"
    );

    // A live subscriber gets the packet (after the stored ones), and nothing asks for a wake.
    let mut live = s.node.client();
    let epoch = live.epoch();
    live.listen(&mb, [epoch]).unwrap();
    let requested = s.node.metric("ferry_push_wakes_requested_total");
    tx.send(dest, 4, ferry_proto::frame::FLAG_ACK, PAYLOAD);
    tx.flush().unwrap();
    common::send_result(&mut tx, 4, WAIT);
    // The service core takes requests in order: once a later registration is answered, a
    // wake asked for the packet would have been counted.
    let mut other = s.node.client();
    register(&mut other, &mailbox(903), PushProvider::Apns, APNS_OK, 60).unwrap();
    assert_eq!(s.node.metric("ferry_push_wakes_requested_total"), requested);
    no_violations(&s.mock.records());

    // Each wake the provider accepted is in the wake latency histogram.
    assert_eq!(s.node.metric_total("ferry_push_wake_seconds_count"), 1.0);
    assert!(s.node.metric_total("ferry_push_wake_seconds_sum") > 0.0);
    // Tokens never reach the logs or the metrics.
    let (_, metrics) = s.node.http_get("/metrics");
    assert!(!metrics.contains(APNS_OK));
    assert!(!s.node.stderr.lock().unwrap().contains(APNS_OK));
}

#[test]
fn provider_statuses_delete_retry_and_refresh() {
    let s = setup(
        &[
            (APNS_GONE, "410"),
            (APNS_BUSY, "429,503,200"),
            (APNS_STALE_JWT, "403,200"),
        ],
        1,
        &[],
    );
    let mut tx = s.node.client();
    let mut owner = s.node.client();
    let mut dests = Vec::new();
    for (i, token) in (910u32..).zip([APNS_GONE, APNS_BUSY, APNS_STALE_JWT]) {
        let mb = mailbox(i);
        dests.push(
            register(&mut owner, &mb, PushProvider::Apns, token, 600)
                .unwrap()
                .0,
        );
    }
    drop(owner);
    assert_eq!(s.node.metric("ferry_push_registrations"), 3);
    armed(&s.node, 3);
    for (i, d) in dests.iter().enumerate() {
        assert_eq!(send(&mut tx, *d, 10 + i as u64), SendStatus::Accepted);
    }
    // 410: one request, then the token is gone.
    let gone = s.mock.wait_for(1, WAIT, |r| r["token"] == APNS_GONE);
    assert_eq!(gone[0]["status"], 410);
    // 429 and 503 are retried with backoff until the 200.
    let busy = s.mock.wait_for(3, WAIT, |r| r["token"] == APNS_BUSY);
    let statuses: Vec<_> = busy.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, vec![429, 503, 200]);
    // 403 ExpiredProviderToken: a fresh JWT and one more try.
    let stale = s.mock.wait_for(2, WAIT, |r| r["token"] == APNS_STALE_JWT);
    let statuses: Vec<_> = stale
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![403, 200]);
    let deadline = std::time::Instant::now() + WAIT;
    while s.node.metric("ferry_push_tokens_deleted_total") < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "410 did not delete the token"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(s.node.metric("ferry_push_registrations"), 2);
    assert!(s.node.metric("ferry_push_wakes_retried_total") >= 2);
    // The deleted token is never woken again: its dest's owner shard was told (no wake is asked
    // for it; that no wake goes to a gone token is checked in virtual time by the simulator).
    wait_until(&s.node, "ferry_push_armed_dests", |v| v == 2);
    assert_eq!(
        s.mock
            .wait_for(2, Duration::ZERO, |r| r["token"] == APNS_GONE)
            .len(),
        1
    );
    no_violations(&s.mock.records());
}

#[test]
fn fcm_and_web_push_wakes_and_registration_errors() {
    let s = setup(&[("wp/gone", "410")], 1, &[]);
    let endpoint = format!("{}/wp/sub-1", s.mock.webpush_origin());
    let gone_endpoint = format!("{}/wp/gone-2", s.mock.webpush_origin());
    let mut owner = s.node.client();
    let d_fcm = register(&mut owner, &mailbox(920), PushProvider::Fcm, FCM_OK, 600)
        .unwrap()
        .0;
    let d_wp = register(
        &mut owner,
        &mailbox(921),
        PushProvider::WebPush,
        &endpoint,
        600,
    )
    .unwrap()
    .0;
    let d_gone = register(
        &mut owner,
        &mailbox(922),
        PushProvider::WebPush,
        &gone_endpoint,
        600,
    )
    .unwrap()
    .0;
    // Refusals: an endpoint outside the allowed origins, a malformed APNs token, no proof.
    let evil = register(
        &mut owner,
        &mailbox(923),
        PushProvider::WebPush,
        "https://evil.example/wp/x",
        600,
    );
    assert!(
        matches!(evil, Err(SdkError::Push(PushStatus::BadToken))),
        "{evil:?}"
    );
    let bad = register(
        &mut owner,
        &mailbox(924),
        PushProvider::Apns,
        "not-hex!",
        600,
    );
    assert!(
        matches!(bad, Err(SdkError::Push(PushStatus::BadToken))),
        "{bad:?}"
    );
    let unproven = owner.push_register(
        PushProvider::Fcm,
        FCM_OK.as_bytes(),
        &[mailbox(925).dest(owner.epoch()).unwrap()],
        600,
    );
    assert!(matches!(
        unproven,
        Err(SdkError::Push(PushStatus::NotProven))
    ));
    // Removal (ttl 0): no wakes for that dest afterwards.
    let d_removed = register(
        &mut owner,
        &mailbox(926),
        PushProvider::Fcm,
        "fcm-removed",
        600,
    )
    .unwrap()
    .0;
    let (_, n) = register(
        &mut owner,
        &mailbox(926),
        PushProvider::Fcm,
        "fcm-removed",
        0,
    )
    .unwrap();
    assert_eq!(n, 0);
    drop(owner);
    armed(&s.node, 3);

    let mut tx = s.node.client();
    for (i, d) in [d_fcm, d_wp, d_gone, d_removed].iter().enumerate() {
        assert_eq!(send(&mut tx, *d, 30 + i as u64), SendStatus::Accepted);
    }
    let fcm = s.mock.wait_for(1, WAIT, |r| r["provider"] == "fcm");
    assert_eq!((fcm.len(), fcm[0]["token"].as_str()), (1, Some(FCM_OK)));
    assert_eq!(fcm[0]["status"], 200);
    assert_eq!(
        s.mock.wait_for(1, WAIT, |r| r["provider"] == "oauth").len(),
        1,
        "one OAuth2 exchange, then the cached access token"
    );
    let wp = s
        .mock
        .wait_for(1, WAIT, |r| r["token"] == endpoint.as_str());
    assert_eq!(wp[0]["status"], 201);
    let gone = s
        .mock
        .wait_for(1, WAIT, |r| r["token"] == gone_endpoint.as_str());
    assert_eq!(gone[0]["status"], 410);
    // The removed registration's dest is not armed (two dests are, once the gone endpoint's
    // is deleted), so no shard asked for its wake.
    wait_until(&s.node, "ferry_push_armed_dests", |v| v == 2);
    assert!(
        s.mock.records().iter().all(|r| r["token"] != "fcm-removed"),
        "a removed registration is not woken"
    );
    // A second FCM wake reuses the cached OAuth2 token.
    std::thread::sleep(Duration::from_millis(1_100));
    assert_eq!(send(&mut tx, d_fcm, 40), SendStatus::Accepted);
    assert_eq!(
        s.mock.wait_for(2, WAIT, |r| r["provider"] == "fcm").len(),
        2
    );
    assert_eq!(
        s.mock
            .wait_for(2, Duration::ZERO, |r| r["provider"] == "oauth")
            .len(),
        1
    );
    no_violations(&s.mock.records());
}

/// Issue 13.2, end to end. With only `https://*.notify.windows.com` allowed, the old origin
/// check took everything up to the first `/` for the host, so `https://<mock>?.notify.windows.com/…`
/// passed as a Windows endpoint and its wakes went to the mock's address (any host or local
/// port). Every such shape is now refused at registration; the mock, allowed exactly by its
/// IP literal and port in the other tests, hears nothing.
#[test]
fn web_push_endpoints_that_smuggle_another_host_are_refused() {
    let s = setup_with(&[], 1, &[], |_| {
        vec![(
            "FERRY_PUSH_WEBPUSH_ORIGINS_ALLOWED".into(),
            "https://*.notify.windows.com".into(),
        )]
    });
    let mock = s.mock.webpush.addr;
    let mut owner = s.node.client();
    let mut dests = Vec::new();
    for (i, endpoint) in (940u32..).zip([
        format!("https://{mock}?.notify.windows.com/wp/ssrf"),
        format!("https://{mock}#.notify.windows.com/wp/ssrf"),
        format!("https://{mock}\\.notify.windows.com/wp/ssrf"),
        format!("https://a.notify.windows.com@{mock}/wp/ssrf"),
        format!("https://{mock}/wp/ssrf.notify.windows.com"),
    ]) {
        let got = register(
            &mut owner,
            &mailbox(i),
            PushProvider::WebPush,
            &endpoint,
            600,
        );
        assert!(
            matches!(got, Err(SdkError::Push(PushStatus::BadToken))),
            "{endpoint}: {got:?}"
        );
        dests.push(mailbox(i).dest(owner.epoch()).unwrap());
    }
    drop(owner);
    assert_eq!(s.node.metric("ferry_push_registrations"), 0);
    assert_eq!(s.node.metric("ferry_push_armed_dests"), 0);
    let mut tx = s.node.client();
    for (i, d) in dests.iter().enumerate() {
        assert_eq!(send(&mut tx, *d, 50 + i as u64), SendStatus::Accepted);
    }
    let heard = s.mock.wait_for(1, Duration::from_millis(500), |_| true);
    assert!(heard.is_empty(), "{heard:?}");
}

/// A registration survives kill -9, sealed: see the assertions on the journal.
#[test]
fn registrations_survive_a_restart() {
    let dir = temp_dir("push-restart");
    let keys = PushKeys::write(&dir);
    let mock = Mocks::start(&dir, &keys, &[], &[]);
    let env = mock.node_env(&keys);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let node = Node::start(&["--shards", "2"], &env);
    let mut owner = node.client();
    let (dest, _) = register(&mut owner, &mailbox(930), PushProvider::Apns, APNS_OK, 600).unwrap();
    drop(owner);
    let node = node.restart(true); // kill -9
    // At rest the journal names neither the token nor the dest (ferry_shards::push::registry): the restarted
    // node holds the registration sealed under its dest, armed on every shard by the dest's tag.
    let journal = std::fs::read(node.dir.join("service").join("push.journal")).unwrap();
    let holds = |needle: &[u8]| journal.windows(needle.len()).any(|w| w == needle);
    assert!(!holds(APNS_OK.as_bytes()) && !holds(&dest.0));
    assert_eq!(node.metric("ferry_push_registrations"), 0);
    assert_eq!(node.metric("ferry_push_registrations_locked"), 1);
    // Both shards look the tag up (a tag names no owner).
    let deadline = std::time::Instant::now() + WAIT;
    while node.metric("ferry_push_armed_tags") < 2 {
        assert!(std::time::Instant::now() < deadline, "tags never armed");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut tx = node.client();
    assert_eq!(send(&mut tx, dest, 1), SendStatus::Accepted);
    assert_eq!(mock.wait_for(1, WAIT, |r| r["token"] == APNS_OK).len(), 1);
    // The wake named the dest, which opened the registration (the gauges follow within a turn).
    let deadline = std::time::Instant::now() + WAIT;
    while node.metric("ferry_push_registrations") != 1 {
        assert!(std::time::Instant::now() < deadline, "never opened");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(node.metric("ferry_push_registrations_locked"), 0);
    // Opened: the owner holds the dest, and no shard needs the tag any more.
    while node.metric("ferry_push_armed_tags") != 0 {
        assert!(std::time::Instant::now() < deadline, "tags never unarmed");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(node.metric("ferry_push_armed_dests"), 1);
    no_violations(&mock.records());
    drop((tx, node, mock));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The session layer end to end: Bob's messenger registers its token for the next day of his
/// contact mailbox (the default: no intro dest), then of both mailboxes (first contacts);
/// Alice's first-contact message to offline Bob is stored and wakes his device once, with no
/// content; Bob then syncs and reads it.
#[test]
fn a_messenger_registers_push_and_a_first_contact_wakes_the_device() {
    use ferry_sdk::chat;
    use ferry_sdk::messenger::{Body, MemoryStorage, Messenger};
    let s = setup(&[], 60, &["first contact".to_string()]);
    let ns = common::ns();
    let mut bob = Messenger::open(MemoryStorage::default(), ns).unwrap();
    let mut alice = Messenger::open(MemoryStorage::default(), ns).unwrap();
    let mut cb = s.node.client();
    chat::Sender::new(&format!("ferry://{}", s.node.addr()), Default::default())
        .publish_prekeys(&mut bob, 3)
        .unwrap();
    // Bob knows Alice (addresses exchanged): he keeps a pairwise mailbox for her.
    bob.add_contact("alice", &alice.address()).unwrap();
    let day = |unix: u64| unix / 86_400;
    let now = cb.node_unix_s();
    // The days this hour and the next 24 fall in (25 hours always span two).
    let days = day(now + 24 * 3600) - day(now) + 1;
    let mut register = |first_contacts| {
        chat::register_push(
            &mut cb,
            &bob,
            PushProvider::Apns,
            APNS_OK.as_bytes(),
            24,
            first_contacts,
        )
        .unwrap()
    };
    let pairwise = u16::try_from(days).unwrap();
    assert_eq!(
        register(false),
        pairwise,
        "the days of this hour and the next 24 of Alice's pairwise mailbox"
    );
    armed(&s.node, u64::from(pairwise));
    assert_eq!(
        register(true),
        pairwise + 25,
        "and this hour and the next 24 of the intro mailbox"
    );
    drop(cb);
    armed(&s.node, u64::from(pairwise) + 25);

    let clock = std::time::Instant::now();
    alice.add_contact("bob", &bob.address()).unwrap();
    let to = bob.address().identity;
    let mut sa = chat::Sender::new(&format!("ferry://{}", s.node.addr()), Default::default());
    sa.send(
        &mut alice,
        &to,
        &Body::Data(b"first contact".to_vec()),
        clock,
    )
    .unwrap();
    let got = s.mock.wait_for(1, WAIT, |r| r["provider"] == "apns");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["token"], APNS_OK);
    no_violations(&s.mock.records());

    let mut cb = s.node.client();
    let synced = chat::sync(&mut cb, &mut sa, &mut bob, clock).unwrap();
    assert_eq!(synced.messages.len(), 1);
    assert_eq!(
        synced.messages[0].body,
        Body::Data(b"first contact".to_vec())
    );
}
