//! Attacks on the store and mailboxes: filling the store from one address (store-fill), and
//! flooding one dest, offline and live (mailbox-flood).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_proto::conn::ClientEvent;
use ferry_proto::frame::{FLAG_ACK, SendStatus};
use serde_json::json;

use super::{
    ANSWER_WAIT, ATTACKER, HONEST_RX, HONEST_TX, Honest, Opts, Report, Res, add, client_from,
    drain_marked, flood_sends, mailbox, random_dest, send_offline,
};

/// One address, 4 connections, 64 KB packets to random offline dests; honest offline senders
/// from another address meanwhile.
pub fn store_fill(o: &Opts) -> Res<Report> {
    const GOAL: &str = "honest senders from other sources store >= 95 % of their offline mail; the attacker holds <= its share";
    let stop = Arc::new(AtomicBool::new(false));
    let full = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut attackers = Vec::new();
    for t in 0..4u64 {
        let mut c = client_from(ATTACKER, o.node)?;
        let (stop, full) = (stop.clone(), full.clone());
        attackers.push(std::thread::spawn(move || {
            let payload = vec![0xa5u8; 64_000];
            let mut all = BTreeMap::new();
            let (mut sent, mut stored) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                let (st, s, b) = flood_sends(
                    &mut c,
                    &stop,
                    16,
                    &payload,
                    |i| random_dest(t, sent + i),
                    16,
                    false,
                );
                if st.contains_key("StoreFull") {
                    full.store(true, Ordering::Relaxed);
                }
                let broken = st.keys().any(|k| !k.chars().all(char::is_alphanumeric));
                add(&mut all, st);
                sent += s;
                stored += b;
                if broken {
                    break;
                }
            }
            (all, sent, stored)
        }));
    }
    // The honest senders start once the store is full (or a third of the time has passed).
    while !full.load(Ordering::Relaxed) && started.elapsed() < o.duration / 3 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut honest = Honest::default();
    let mut c = client_from(HONEST_TX, o.node)?;
    let epoch = c.epoch();
    let until = Instant::now() + o.duration;
    let mut i = 0u32;
    while Instant::now() < until {
        let dest = mailbox(10_000 + i % 500).dest(epoch)?;
        send_offline(&mut c, &mut honest, dest, u64::from(i) + 1, &[0x11; 1024])?;
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let (mut statuses, mut sent, mut stored) = (BTreeMap::new(), 0, 0);
    for a in attackers {
        let (st, s, b) = a.join().map_err(|_| "attacker thread panicked")?;
        add(&mut statuses, st);
        sent += s;
        stored += b;
    }
    let share = o.store_bytes_max / 100 * o.store_source_share_pct;
    let met = honest.delivery_rate() >= 0.95 && stored <= share;
    Ok(Report {
        attack: "store-fill",
        attacker: json!({"sends": sent, "bytes_stored": stored, "share_bytes_allowed": share, "results": statuses}),
        verdict: format!(
            "honest stored {:.1} %, attacker holds {} MiB (share {} MiB)",
            honest.delivery_rate() * 100.0,
            stored >> 20,
            share >> 20
        ),
        honest,
        goal: GOAL,
        met,
    })
}

/// 10,000 one-byte sends to a known offline dest, then another source's message to it; and a
/// flood at a live subscriber while another source sends to it.
pub fn mailbox_flood(o: &Opts) -> Res<Report> {
    const GOAL: &str = "another source's message to the flooded dest is stored and delivered; live delivery to a subscriber is never refused";
    let mut attacker = client_from(ATTACKER, o.node)?;
    let epoch = attacker.epoch();
    let victim = mailbox(20_000);
    let dest = victim.dest(epoch)?;
    let never = AtomicBool::new(false);
    let (offline, sent_offline, _) = flood_sends(
        &mut attacker,
        &never,
        256,
        b"x",
        |_| dest,
        o.flood_sends,
        false,
    );
    // Another source writes to the victim.
    let mut honest = Honest::default();
    let mut tx = client_from(HONEST_TX, o.node)?;
    send_offline(&mut tx, &mut honest, dest, 1, b"honest mail")?;
    let mut owner = client_from(HONEST_RX, o.node)?;
    let found = drain_marked(&mut owner, &victim, epoch, b"honest mail")?;
    let stored_and_drained = !found.is_empty();
    if honest.ok == 1 && !stored_and_drained {
        honest.ok = 0;
        honest.refuse("stored but not drained");
    }
    drop(owner);
    // Live: the victim listens; the attacker floods it while the honest sender asks for ACKs.
    let live = mailbox(20_001);
    let mut sub = client_from(HONEST_RX, o.node)?;
    let live_dest = sub.listen(&live, [epoch])?[0];
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let flooder = std::thread::spawn(move || {
        flood_sends(
            &mut attacker,
            &flag,
            256,
            b"x",
            |_| live_dest,
            u64::MAX,
            true,
        )
    });
    let mut live_refused = 0;
    for n in 0..50u64 {
        honest.sent += 1;
        let t = Instant::now();
        tx.send(live_dest, 1_000 + n, FLAG_ACK, b"honest live");
        tx.flush()?;
        let deadline = t + ANSWER_WAIT;
        let mut result = None;
        let mut delivered = false;
        while (result.is_none() || !delivered) && Instant::now() < deadline {
            while let Ok(ev) = sub.recv(Duration::from_millis(1)) {
                if let ClientEvent::Deliver { payload, .. } = ev
                    && payload.as_ref() == b"honest live"
                {
                    delivered = true;
                }
            }
            if result.is_none()
                && let Ok(ClientEvent::SendResult { status, msg_id, .. }) =
                    tx.recv(Duration::from_millis(5))
                && msg_id == 1_000 + n
            {
                result = Some(status);
            }
        }
        match result {
            Some(SendStatus::Delivered | SendStatus::Accepted) if delivered => {
                honest.ok += 1;
                honest
                    .latencies_us
                    .push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
            }
            Some(SendStatus::Delivered | SendStatus::Accepted) => {
                honest.refuse("acked but not received");
            }
            Some(s) => {
                live_refused += 1;
                honest.refuse(s);
            }
            None => honest.refuse("lost"),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let (live_statuses, live_sent, _) = flooder.join().map_err(|_| "flooder panicked")?;
    let met = stored_and_drained && live_refused == 0 && honest.delivery_rate() >= 1.0;
    Ok(Report {
        attack: "mailbox-flood",
        attacker: json!({"offline_sends": sent_offline, "offline_results": offline,
                         "live_sends": live_sent, "live_results": live_statuses}),
        verdict: format!(
            "honest offline message {}; live: {} of 50 delivered, {live_refused} refused",
            if stored_and_drained {
                "stored and drained"
            } else {
                "not stored"
            },
            honest.ok.saturating_sub(u64::from(stored_and_drained)),
        ),
        honest,
        goal: GOAL,
        met,
    })
}
