//! `ferry-serviceload`: background load for the service core, beside a throughput run.
//!
//! Set-up (through the SDK): `--devices` mailboxes each register an APNs token for their current
//! dest, and `--slots` (100) prekey slots get a full bundle (100 EC + 100 ML-KEM one-time keys). Then,
//! for `--duration` seconds, paced open loop on two connections: stored messages round-robin to
//! the devices (`--wakes-per-s`: with the node's coalescing window below `devices / rate` each
//! one becomes a wake) and prekey fetches round-robin over the slots (`--fetches-per-s`). Prints
//! `serviceload ready` once set up, and a JSON summary at the end.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_proto::addr::NamespaceId;
use ferry_proto::conn::ClientEvent;
use ferry_proto::frame::{Frame, Op, PrekeyStatus, PushProvider, SendStatus};
use ferry_sdk::prekeys::{IdentityKey, PrekeyPlan, generate};
use ferry_sdk::{Client, Dest, Mailbox};

struct Args {
    target: SocketAddr,
    devices: usize,
    slots: usize,
    wakes_per_s: u64,
    fetches_per_s: u64,
    duration_s: f64,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        target: "127.0.0.1:7700".parse().map_err(|_| "addr")?,
        devices: 2_000,
        slots: 100,
        wakes_per_s: 1_000,
        fetches_per_s: 1_000,
        duration_s: 5.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(f) = it.next() {
        let v = it.next().ok_or(format!("{f} needs a value"))?;
        let bad = |_| format!("bad value for {f}: {v}");
        match f.as_str() {
            "--target" => a.target = v.parse().map_err(|_| format!("bad address {v}"))?,
            "--devices" => a.devices = v.parse().map_err(bad)?,
            "--slots" => a.slots = v.parse().map_err(bad)?,
            "--wakes-per-s" => a.wakes_per_s = v.parse().map_err(bad)?,
            "--fetches-per-s" => a.fetches_per_s = v.parse().map_err(bad)?,
            "--duration" => {
                a.duration_s = v.parse().map_err(|_| format!("bad value for {f}: {v}"))?
            }
            _ => return Err(format!("unknown flag {f}")),
        }
    }
    if a.devices == 0 || a.slots == 0 {
        return Err("--devices and --slots must be at least 1".into());
    }
    Ok(a)
}

fn mailbox(i: usize) -> Mailbox {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
    seed[31] = 0x5e;
    Mailbox::from_seed(&seed, NamespaceId([0x33; 32]), None)
}

fn setup(a: &Args) -> Result<(Vec<Dest>, Vec<Dest>), String> {
    let e = |e: ferry_sdk::SdkError| e.to_string();
    let boxes: Vec<Mailbox> = (0..a.devices).map(mailbox).collect();
    let mut dests = Vec::with_capacity(a.devices);
    // A connection holds at most PROVEN_PER_CONN_MAX proofs: one connection per 512 devices.
    for (chunk_no, chunk) in boxes.chunks(512).enumerate() {
        let mut c = Client::connect(a.target).map_err(e)?;
        let epoch = c.epoch();
        let signers: Vec<_> = chunk
            .iter()
            .map(|m| m.signer(epoch))
            .collect::<Result<_, _>>()
            .map_err(e)?;
        let refs: Vec<_> = signers.iter().collect();
        c.prove(&refs, Op::PushRegister).map_err(e)?;
        for (i, m) in chunk.iter().enumerate() {
            let dest = m.dest(epoch).map_err(e)?;
            let token = format!("{:064x}", chunk_no * 512 + i + 1);
            c.push_register(PushProvider::Apns, token.as_bytes(), &[dest], 3_600)
                .map_err(e)?;
            dests.push(dest);
        }
    }
    let mut c = Client::connect(a.target).map_err(e)?;
    let id = IdentityKey::generate().map_err(e)?;
    let mut slots = Vec::with_capacity(a.slots);
    for s in 0..a.slots {
        let m = mailbox(1_000_000 + s);
        // Today's slot, sealed as the SDK seals it (the node's work does not depend on it).
        let now = c.node_unix_s();
        let day = ferry_proto::addr::day_of(now);
        let signer = m.slot_signer(day).map_err(e)?;
        c.prove(&[&signer], Op::PrekeyUpdate).map_err(e)?;
        let dest = signer.dest();
        let plan = PrekeyPlan {
            head: ferry_sdk::prekeys::HeadPlan::New,
            one_time_ec: 100,
            one_time_pq: 100,
            ids: ferry_sdk::prekeys::PrekeyIds::Sequential(1),
            replace_one_time: true,
            expires: now + 2 * ferry_proto::addr::DAY_SECONDS,
            ttl_s: 0,
        };
        let sealer = ferry_proto::prekey::SlotSealer::new(m.slot_key(day), &signer);
        let (ups, _) = generate(&id, &sealer, plan).map_err(e)?;
        c.upload_prekeys(&ups).map_err(e)?;
        slots.push(dest);
    }
    Ok((dests, slots))
}

/// The `per_mille`/1000 quantile of sorted values.
fn percentile(sorted: &[u64], per_mille: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) * per_mille / 1000).min(sorted.len() - 1)]
}

/// How many of `rate` per second are due after `elapsed` (pacing).
fn due(elapsed: Duration, rate: u64) -> u64 {
    let due = elapsed.as_millis().saturating_mul(u128::from(rate)) / 1000;
    // Saturating: more than u64::MAX due means every message is due; the sender is behind anyway.
    u64::try_from(due).unwrap_or(u64::MAX)
}

fn pick(list: &[Dest], n: u64) -> Dest {
    list[usize::try_from(n % list.len() as u64).expect("below the list's length, a usize")]
}

/// Paced stored sends; returns (sent, stored).
fn wakes(a: &Args, dests: &[Dest]) -> Result<(u64, u64), String> {
    let mut c = Client::connect(a.target).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.duration_s);
    let (mut sent, mut stored) = (0u64, 0u64);
    let payload = [0xABu8; 64];
    // Message ids unique across runs: a repeated (msg_id, payload) is a duplicate the node
    // stores once, and a duplicate wakes nobody.
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_nanos()).ok())
        .ok_or(
            "the system clock is not between 1970 and 2554: message ids would repeat across runs",
        )?;
    while Instant::now() < end {
        let due = due(start.elapsed(), a.wakes_per_s);
        while sent < due {
            // Not proven here: answered `Accepted` once stored, and only with FLAG_ACK.
            let flags = ferry_proto::frame::FLAG_ACK;
            c.send(pick(dests, sent), base.wrapping_add(sent), flags, &payload);
            sent += 1;
        }
        c.flush().map_err(|e| e.to_string())?;
        while let Ok(ev) = c.recv(Duration::from_millis(1)) {
            if let ClientEvent::SendResult { status, .. } = ev {
                if status == SendStatus::Accepted {
                    stored += 1;
                }
            }
        }
    }
    let drain_end = Instant::now() + Duration::from_secs(2);
    while stored < sent && Instant::now() < drain_end {
        if let Ok(ClientEvent::SendResult { status, .. }) = c.recv(Duration::from_millis(50)) {
            if status == SendStatus::Accepted {
                stored += 1;
            }
        }
    }
    Ok((sent, stored))
}

/// Paced pipelined fetches; returns (sent, ok, last_resort, other, latencies in µs).
fn fetches(a: &Args, slots: &[Dest]) -> Result<(u64, u64, u64, u64, Vec<u64>), String> {
    let mut c = Client::connect(a.target).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.duration_s);
    let (mut sent, mut ok, mut last_resort, mut other) = (0u64, 0u64, 0u64, 0u64);
    let mut in_flight: VecDeque<Instant> = VecDeque::new();
    let mut lat = Vec::new();
    let mut on_event = |ev: ClientEvent, in_flight: &mut VecDeque<Instant>| {
        if let ClientEvent::PrekeyBundle { status, bundle, .. } = ev {
            if let Some(t) = in_flight.pop_front() {
                // Saturating: a latency past u64::MAX µs (584 000 years) is the histogram's top.
                lat.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
            }
            match (status, bundle) {
                (PrekeyStatus::Ok, Some(b)) if b.pq_last_resort() => last_resort += 1,
                (PrekeyStatus::Ok, _) => ok += 1,
                _ => other += 1,
            }
        }
    };
    while Instant::now() < end {
        let due = due(start.elapsed(), a.fetches_per_s);
        let mut out = Vec::new();
        while sent < due {
            let dest = pick(slots, sent);
            out.extend_from_slice(&Frame::PrekeyFetch { dest, puzzle: None }.to_bytes());
            in_flight.push_back(Instant::now());
            sent += 1;
        }
        if !out.is_empty() {
            c.write_raw(&out).map_err(|e| e.to_string())?;
        }
        while let Ok(ev) = c.recv(Duration::from_millis(1)) {
            on_event(ev, &mut in_flight);
        }
    }
    let drain_end = Instant::now() + Duration::from_secs(2);
    while !in_flight.is_empty() && Instant::now() < drain_end {
        if let Ok(ev) = c.recv(Duration::from_millis(50)) {
            on_event(ev, &mut in_flight);
        }
    }
    lat.sort_unstable();
    Ok((sent, ok, last_resort, other, lat))
}

fn main() {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ferry-serviceload: {e}");
            std::process::exit(2);
        }
    };
    let (dests, slots) = match setup(&a) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("ferry-serviceload: set-up failed: {e}");
            std::process::exit(1);
        }
    };
    println!("serviceload ready");
    let t0 = Instant::now();
    let (w, f) = std::thread::scope(|s| {
        let w = s.spawn(|| wakes(&a, &dests));
        let f = s.spawn(|| fetches(&a, &slots));
        (w.join(), f.join())
    });
    let elapsed = t0.elapsed().as_secs_f64();
    match (w, f) {
        (Ok(Ok((sent, stored))), Ok(Ok((fsent, ok, lr, other, lat)))) => {
            let out = serde_json::json!({
                "duration_s": elapsed,
                "wake_sends": sent,
                "wake_sends_stored": stored,
                "fetches_sent": fsent,
                "fetches_ok": ok,
                "fetches_last_resort": lr,
                "fetches_refused": other,
                "fetches_per_s": (ok + lr) as f64 / a.duration_s,
                "fetch_latency_us": {
                    "p50": percentile(&lat, 500),
                    "p99": percentile(&lat, 990),
                    "max": lat.last().copied().unwrap_or(0),
                },
            });
            println!("{out}");
        }
        (w, f) => {
            eprintln!("ferry-serviceload: load failed: wakes {w:?}, fetches {f:?}");
            std::process::exit(1);
        }
    }
}
