//! Attacks on media: reserving disk and upload slots with `BlobBegin`s that send no data
//! (media-reserve).

use std::collections::BTreeMap;
use std::time::Instant;

use ferry_proto::frame::{BlobStatus, Frame};
use ferry_sdk::SdkError;
use serde_json::json;

use super::{ANSWER_WAIT, ATTACKER, HONEST_TX, Hello, Honest, Opts, Raw, Report, Res, client_from};

/// Sends `BlobBegin`s for fresh ids declaring `size` on `conns`, `window` at a time, until one
/// answer is `until` or `max` were sent; counts the answers.
fn begins(
    conns: &mut [Raw],
    tag: u64,
    size: u64,
    until: BlobStatus,
    max: u64,
    statuses: &mut BTreeMap<String, u64>,
) -> Res<u64> {
    let mut n = 0u64;
    let mut seen = false;
    while !seen && n < max {
        for c in conns.iter_mut() {
            let k = 8u64.min(max - n);
            for i in 0..k {
                let id =
                    *blake3::hash(&[tag.to_le_bytes(), (n + i).to_le_bytes()].concat()).as_bytes();
                c.write(&Frame::BlobBegin { id, size })?;
            }
            n += k;
            let mut answers = 0;
            let frames = c.read_until(ANSWER_WAIT, |f| {
                if matches!(f, Frame::BlobStatus { .. } | Frame::Error { .. }) {
                    answers += 1;
                }
                answers == k || matches!(f, Frame::Error { .. })
            });
            for f in frames {
                match f {
                    Frame::BlobStatus { status, .. } => {
                        seen |= status == until;
                        *statuses.entry(format!("{status:?}")).or_default() += 1;
                    }
                    Frame::Error { code, .. } => {
                        *statuses.entry(format!("{code:?}")).or_default() += 1;
                        return Ok(n);
                    }
                    _ => {}
                }
            }
            if n >= max || seen {
                break;
            }
        }
    }
    Ok(n)
}

/// Begins declaring 100 MiB with no data until DiskFull, then one-byte begins until Busy; then
/// honest uploads from another address.
pub fn media_reserve(o: &Opts) -> Res<Report> {
    const GOAL: &str = "honest uploads from another address succeed";
    let mut conns = Vec::new();
    for _ in 0..4 {
        match Raw::hello(ATTACKER, o.node)? {
            Hello::Open(r) => conns.push(r),
            other => return Err(format!("attacker refused: {other:?}").into()),
        }
    }
    let mut big = BTreeMap::new();
    let big_n = begins(
        &mut conns,
        1,
        o.media_declared_bytes,
        BlobStatus::DiskFull,
        o.media_begins_max,
        &mut big,
    )?;
    let mut small = BTreeMap::new();
    let small_n = begins(
        &mut conns,
        2,
        1,
        BlobStatus::Busy,
        o.media_begins_max,
        &mut small,
    )?;
    let mut honest = Honest::default();
    let mut c = client_from(HONEST_TX, o.node)?;
    for i in 0..5u8 {
        let data: Vec<u8> = (0..64 * 1024).map(|j| (j % 251) as u8 ^ i).collect();
        let id = *blake3::hash(&data).as_bytes();
        honest.sent += 1;
        let t = Instant::now();
        match c.upload_blob(id, data.len() as u64, &mut std::io::Cursor::new(&data)) {
            Ok(()) => {
                honest.ok += 1;
                honest
                    .latencies_us
                    .push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
            }
            Err(SdkError::Blob(st)) => honest.refuse(st),
            Err(e) => {
                honest.refuse(e.to_string());
                c = client_from(HONEST_TX, o.node)?;
            }
        }
    }
    drop(conns);
    let met = honest.delivery_rate() >= 1.0;
    Ok(Report {
        attack: "media-reserve",
        attacker: json!({"declared_begins": big_n, "declared_bytes_each": o.media_declared_bytes,
                         "declared_results": big, "tiny_begins": small_n, "tiny_results": small}),
        verdict: format!("{} of {} honest uploads succeeded", honest.ok, honest.sent),
        honest,
        goal: GOAL,
        met,
    })
}
