//! Attacks on the prekey directory: draining a slot's one-time keys (prekey-drain).

use std::collections::BTreeMap;
use std::time::Instant;

use ferry_proto::frame::{Op, ProofStatus};
use ferry_sdk::SdkError;
use serde_json::json;

use super::{
    HONEST_RX, HONEST_TX, Honest, Opts, Report, Res, attacker_addr, client_from, mailbox, ns,
};

/// The owner publishes 100 + 100 one-time keys; the attacker fetches from `prekey_addrs`
/// addresses for `duration`; then a legitimate first contact fetches. One-time keys are rationed
/// per source and per slot (`prekeys.one_time_per_*`), and the last-resort bundle (signed prekey
/// and last-resort PQ key, enough for a PQXDH session) is served whatever was drained: the
/// first contact succeeds when it gets a bundle that verifies for the owner's identity, with a
/// one-time key or without.
pub fn prekey_drain(o: &Opts) -> Res<Report> {
    use ferry_sdk::prekeys::{IdentityKey, PrekeyPlan, generate};
    const GOAL: &str = "a legitimate first contact still gets a verified bundle of the owner's (a one-time key, or the last-resort keys once the attacker took its ration), never a refusal";
    let mut owner = client_from(HONEST_RX, o.node)?;
    let slot_mb = mailbox(70_000);
    // Today's slot; the attacker knows the owner's address, so it opens the slot as a contact.
    let now = owner.node_unix_s();
    let day = ferry_proto::addr::day_of(now);
    let signer = slot_mb.slot_signer(day)?;
    let st = owner.prove(&[&signer], Op::PrekeyUpdate)?;
    if st.first() != Some(&ProofStatus::Ok) {
        return Err(format!("prekey proof refused: {st:?}").into());
    }
    let dest = signer.dest();
    let slot =
        ferry_sdk::Contact::new(&slot_mb.public().to_bytes(), ns(), None)?.prekey_slot(day)?;
    let identity = IdentityKey::generate()?;
    let plan = PrekeyPlan {
        head: ferry_sdk::prekeys::HeadPlan::New,
        one_time_ec: 100,
        one_time_pq: 100,
        ids: ferry_sdk::prekeys::PrekeyIds::Random,
        replace_one_time: true,
        expires: now + 2 * ferry_proto::addr::DAY_SECONDS,
        ttl_s: 0,
    };
    let sealer = ferry_proto::prekey::SlotSealer::new(slot_mb.slot_key(day), &signer);
    let (uploads, _secrets) = generate(&identity, &sealer, plan)?;
    owner.upload_prekeys(&uploads)?;
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let mut taken = 0u64;
    let t = Instant::now();
    'addrs: for a in 0..o.prekey_addrs {
        if t.elapsed() > o.duration {
            break;
        }
        let Ok(mut c) = client_from(attacker_addr(a), o.node) else {
            *statuses.entry("connect failed".into()).or_default() += 1;
            continue;
        };
        // Each address fetches until refused (at most 5 times).
        for _ in 0..5 {
            match c.fetch_prekeys(&slot) {
                Ok(b) => {
                    taken += u64::from(b.ec.is_some());
                    let k = if b.ec.is_some() {
                        "one_time"
                    } else {
                        "last_resort"
                    };
                    *statuses.entry(k.into()).or_default() += 1;
                }
                Err(SdkError::Prekey { status, .. }) => {
                    *statuses.entry(format!("{status:?}")).or_default() += 1;
                    continue 'addrs;
                }
                Err(e) => {
                    *statuses.entry(e.to_string()).or_default() += 1;
                    continue 'addrs;
                }
            }
        }
    }
    let left = owner.prekey_count(dest)?;
    let mut honest = Honest::default();
    let mut c = client_from(HONEST_TX, o.node)?;
    honest.sent += 1;
    let t = Instant::now();
    let mut contact_got = "nothing";
    match c.fetch_prekeys(&slot) {
        // `fetch_prekeys` has opened the bundle and checked its signatures.
        Ok(b) if b.identity == identity.public() => {
            contact_got = if b.ec.is_some() && !b.pq_last_resort {
                "a one-time key"
            } else {
                "the last-resort bundle"
            };
            honest.ok += 1;
            honest
                .latencies_us
                .push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
        }
        Ok(_) => honest.refuse("another identity's bundle"),
        Err(SdkError::Prekey { status, .. }) => honest.refuse(status),
        Err(e) => honest.refuse(e.to_string()),
    }
    let met = honest.delivery_rate() >= 1.0;
    Ok(Report {
        attack: "prekey-drain",
        attacker: json!({"addresses": o.prekey_addrs, "one_time_keys_taken": taken,
                         "keys_left_ec_pq": [left.0, left.1], "results": statuses}),
        verdict: format!(
            "attacker took {taken} one-time keys ({} EC left); first contact got {contact_got}",
            left.0,
        ),
        honest,
        goal: GOAL,
        met,
    })
}
