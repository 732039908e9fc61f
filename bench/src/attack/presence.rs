//! Attacks on presence: a stranger learning whether a dest holds mail or is online, from `Query`
//! and `FLAG_ACK` answers (presence-oracle).

use std::time::{Duration, Instant};

use ferry_proto::conn::ClientEvent;
use ferry_proto::frame::{Dest, FLAG_ACK};
use ferry_sdk::{Client, SdkError};
use serde_json::json;

use super::{
    ATTACKER, HONEST_RX, HONEST_TX, Honest, Opts, Report, Res, client_from, drain_marked, mailbox,
    send_offline,
};

/// The `SendResult` a stranger gets for a `FLAG_ACK` packet to `dest`, if any within 2 s.
fn ack_answer(c: &mut Client, dest: Dest, msg_id: u64) -> Res<String> {
    c.send(dest, msg_id, FLAG_ACK, b"are you there?");
    c.flush()?;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match c.recv(deadline.saturating_duration_since(Instant::now())) {
            Ok(ClientEvent::SendResult {
                msg_id: m, status, ..
            }) if m == msg_id => {
                return Ok(format!("{status:?}"));
            }
            Ok(_) => {}
            Err(SdkError::Timeout) => return Ok("none".into()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// A stranger asks `Query` about a known dest while it is empty, holds mail and is drained, and
/// sends `FLAG_ACK` packets while its owner is online and offline.
pub fn presence_oracle(o: &Opts) -> Res<Report> {
    const GOAL: &str = "a stranger learns nothing: Query answers \"not holding\" empty, with mail waiting and drained; an ACK send answers Accepted online and offline";
    let owner_mb = mailbox(60_000);
    let mut stranger = client_from(ATTACKER, o.node)?;
    let epoch = stranger.epoch();
    let dest = owner_mb.dest(epoch)?;
    let q = |c: &mut Client| -> Res<bool> { Ok(c.query(&[dest])?.contains(&dest)) };
    let q_empty = q(&mut stranger)?;
    let mut honest = Honest::default();
    let mut tx = client_from(HONEST_TX, o.node)?;
    send_offline(&mut tx, &mut honest, dest, 1, b"for the owner")?;
    let q_waiting = q(&mut stranger)?;
    let mut owner = client_from(HONEST_RX, o.node)?;
    let found = drain_marked(&mut owner, &owner_mb, epoch, b"for the owner")?;
    if honest.ok == 1 && found.is_empty() {
        honest.ok = 0;
        honest.refuse("stored but not drained");
    }
    let q_drained = q(&mut stranger)?;
    // ACKs: owner online, then offline.
    owner.listen(&owner_mb, [epoch])?;
    let ack_online = ack_answer(&mut stranger, dest, 2)?;
    drop(owner);
    std::thread::sleep(Duration::from_millis(300));
    let ack_offline = ack_answer(&mut stranger, dest, 3)?;
    // Any difference leaks; so does an answer other than "not holding" and `Accepted`, which
    // could differ by the owner's state on another run.
    let query_leak = q_empty || q_waiting || q_drained;
    let ack_leak = ack_online != ack_offline || ack_online != "Accepted";
    let met = !query_leak && !ack_leak && honest.delivery_rate() >= 1.0;
    Ok(Report {
        attack: "presence-oracle",
        attacker: json!({"query_empty": q_empty, "query_waiting": q_waiting, "query_drained": q_drained,
                         "ack_online": ack_online, "ack_offline": ack_offline,
                         "learned": {"mail_waiting": query_leak, "online": ack_leak}}),
        verdict: format!(
            "stranger learns: mail waiting {}, online {}",
            if query_leak { "YES" } else { "no" },
            if ack_leak { "YES" } else { "no" }
        ),
        honest,
        goal: GOAL,
        met,
    })
}
