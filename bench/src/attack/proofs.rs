//! Attacks on proof checking: replaying one valid proof frame without end (proof-replay).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use ferry_proto::addr::epoch_of;
use ferry_proto::frame::{Frame, Op};
use serde_json::json;

use super::{
    ANSWER_WAIT, ATTACKER, Hello, LivePair, Opts, P99_FLOOR_MS, Raw, Report, Res, mailbox, metric,
    round3,
};

/// One valid 128-proof frame re-sent without end (a fresh one every 256), while a live pair is
/// timed; the same pair timed before as the baseline.
pub fn proof_replay(o: &Opts) -> Res<Report> {
    const GOAL: &str =
        "honest p99 at most doubles (against at least 5 ms) while proofs are replayed";
    let base = LivePair::start(o.node, 30_000, Duration::from_millis(5))?;
    std::thread::sleep(o.duration / 2);
    let base = base.finish()?;
    let Hello::Open(mut a) = Raw::hello(ATTACKER, o.node)? else {
        return Err("attacker refused".into());
    };
    let signers: Vec<_> = (0..128)
        .map(|i| mailbox(31_000 + i).signer(epoch_of(a.unix_s)))
        .collect::<Result<_, _>>()?;
    let sign = |node_id: &[u8; 32], ch: &[u8; 32]| {
        Frame::Prove {
            items: signers
                .iter()
                .map(|s| s.prove(node_id, ch, Op::Subscribe))
                .collect(),
        }
        .to_bytes()
    };
    let verified0 = metric(o.admin, "ferry_proofs_verified_total");
    let pair = LivePair::start(o.node, 30_001, Duration::from_millis(5))?;
    let mut frame = sign(&a.node_id, &a.challenge);
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let (mut frames_sent, mut answered) = (0u64, 0u64);
    let t = Instant::now();
    while t.elapsed() < o.duration {
        if frames_sent % 256 == 255 {
            a.write(&Frame::ChallengeRequest)?;
            let ch = a.read_until(ANSWER_WAIT, |f| matches!(f, Frame::Challenge { .. }));
            if let Some(Frame::Challenge { challenge, .. }) = ch.last() {
                frame = sign(&a.node_id, challenge);
            }
        }
        for _ in 0..16 {
            a.s.write_all(&frame)?;
        }
        frames_sent += 16;
        let mut results = 0;
        for f in a.read_until(ANSWER_WAIT, |f| {
            if matches!(f, Frame::ProveResult { .. }) {
                results += 1;
            }
            results == 16 || matches!(f, Frame::Error { .. })
        }) {
            match f {
                Frame::ProveResult { items } => {
                    answered += 1;
                    for (_, _, s) in items {
                        *statuses.entry(format!("{s:?}")).or_default() += 1;
                    }
                }
                Frame::Error { code, .. } => {
                    *statuses.entry(format!("{code:?}")).or_default() += 1;
                    break;
                }
                _ => {}
            }
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let honest = pair.finish()?;
    let verified = metric(o.admin, "ferry_proofs_verified_total")
        .zip(verified0)
        .map(|(b, a)| b.saturating_sub(a));
    let limit = 2.0 * base.p99_ms().max(P99_FLOOR_MS);
    let met = honest.p99_ms() <= limit && honest.delivery_rate() >= 0.99;
    Ok(Report {
        attack: "proof-replay",
        attacker: json!({"frames_sent": frames_sent, "frames_answered": answered,
                         "proofs_answered_per_s": round3(answered as f64 * 128.0 / secs),
                         "node_verified": verified, "statuses": statuses,
                         "honest_p99_ms_before": round3(base.p99_ms())}),
        verdict: format!(
            "honest p99 {:.2} ms under attack, {:.2} ms before (limit {limit:.1} ms)",
            honest.p99_ms(),
            base.p99_ms()
        ),
        honest,
        goal: GOAL,
        met,
    })
}
