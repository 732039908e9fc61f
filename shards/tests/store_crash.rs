//! kill -9 durability of the log (FsyncPolicy::Always): a child process appends and acks,
//! printing each operation only after the log returned it as durable; the parent SIGKILLs the
//! child at a random moment, reopens the log and checks that every acknowledged blob is there
//! exactly once and every acknowledged ack stuck. Several rounds reuse one directory, so recovery
//! also runs over segments left by earlier crashes.
//!
//! A plain `main` (harness = false): the same binary is the child when FERRY_STORE_CRASH_DIR is set.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_proto::Dest;
use ferry_shards::store::backend::MmapBackend;
use ferry_shards::store::{FsyncPolicy, Log, StoreLimits};

const NOW: u64 = 1_800_000_000;
const DESTS: u64 = 7;

fn limits() -> StoreLimits {
    StoreLimits {
        segment_bytes: 256 * 1024,
        ..StoreLimits::default()
    }
}

fn dest(i: u64) -> Dest {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&(i % DESTS).to_le_bytes());
    Dest(d)
}

fn payload(msg_id: u64) -> Vec<u8> {
    (0..(msg_id % 500 + 1))
        .map(|i| (msg_id as u8) ^ (i as u8))
        .collect()
}

/// Child: append blobs from `start`, ack every third one right after, forever.
fn child(dir: &str, start: u64) {
    let (mut log, _) = Log::open(
        MmapBackend::new(std::path::Path::new(dir)).unwrap(),
        0,
        limits(),
        FsyncPolicy::Always,
        NOW,
    )
    .unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY").unwrap();
    out.flush().unwrap();
    for msg_id in start.. {
        let a = log
            .append(NOW, dest(msg_id), msg_id, 3_600, &payload(msg_id))
            .unwrap();
        writeln!(out, "ACK {msg_id} {}", a.pos.to_u64()).unwrap();
        out.flush().unwrap();
        if msg_id % 3 == 0 {
            assert!(log.ack(NOW, &dest(msg_id), a.pos).unwrap());
            writeln!(out, "DEL {msg_id}").unwrap();
            out.flush().unwrap();
        }
    }
}

fn main() {
    if let Ok(dir) = std::env::var("FERRY_STORE_CRASH_DIR") {
        let start = std::env::var("FERRY_STORE_CRASH_START")
            .unwrap()
            .parse()
            .unwrap();
        child(&dir, start);
        return;
    }
    let dir = std::env::temp_dir().join(format!("ferry-store-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let me = std::env::current_exe().unwrap();
    let mut stored: BTreeMap<u64, u64> = BTreeMap::new(); // msg_id → position
    let mut deleted: BTreeSet<u64> = BTreeSet::new();
    let mut next = 0u64;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    let rounds = 6;
    for round in 0..rounds {
        let mut child = Command::new(&me)
            .env("FERRY_STORE_CRASH_DIR", &dir)
            .env("FERRY_STORE_CRASH_START", next.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)).unwrap(), "READY");
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let run_for = Duration::from_millis(50 + seed % 250);
        let t = Instant::now();
        while t.elapsed() < run_for {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(5)) {
                apply(&line, &mut stored, &mut deleted, &mut next);
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Lines already written before the kill are acknowledgements too.
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            apply(&line, &mut stored, &mut deleted, &mut next);
        }
        let (log, rec) = Log::open(
            MmapBackend::new(&dir).unwrap(),
            0,
            limits(),
            FsyncPolicy::Always,
            NOW,
        )
        .unwrap();
        let mut present: BTreeMap<u64, u64> = BTreeMap::new();
        for d in 0..DESTS {
            for (e, p) in log.drain(&dest(d), NOW) {
                assert_eq!(p, &payload(e.msg_id)[..], "blob {} corrupted", e.msg_id);
                assert!(
                    present.insert(e.msg_id, e.pos.to_u64()).is_none(),
                    "blob {} twice",
                    e.msg_id
                );
            }
        }
        // The one ack that may have been in flight at the kill: the newest acknowledged blob, if
        // the child acks it (every third) and had not yet said so. Either outcome is correct.
        if let Some(&last) = stored.keys().next_back() {
            if last % 3 == 0 && !deleted.contains(&last) && !present.contains_key(&last) {
                deleted.insert(last);
            }
        }
        for (id, pos) in &stored {
            if deleted.contains(id) {
                assert!(
                    !present.contains_key(id),
                    "round {round}: acked blob {id} came back"
                );
            } else {
                assert_eq!(
                    present.get(id),
                    Some(pos),
                    "round {round}: durable blob {id} lost; recovery {rec:?}; segments {:?}",
                    std::fs::read_dir(&dir)
                        .unwrap()
                        .map(|e| e.unwrap().file_name())
                        .collect::<Vec<_>>()
                );
            }
        }
        for id in present.keys() {
            // Only the one append in flight at the kill may be there unannounced.
            assert!(
                stored.contains_key(id) || *id == next,
                "round {round}: unknown blob {id}"
            );
        }
        println!(
            "round {round}: {} acknowledged, {} acked away, {} present after kill -9; recovery {rec:?}",
            stored.len(),
            deleted.len(),
            present.len()
        );
        // The append in flight at the kill, if it landed, is now a stored blob like any other.
        for (id, pos) in &present {
            stored.entry(*id).or_insert(*pos);
        }
        // Continue after whatever the child had in flight.
        next = present
            .keys()
            .next_back()
            .map_or(next, |m| (*m + 1).max(next))
            + 1;
    }
    assert!(
        stored.len() > 10,
        "the child made too little progress to test anything"
    );
    let _ = std::fs::remove_dir_all(&dir);
    println!("1 passed, 0 failed");
}

fn apply(line: &str, stored: &mut BTreeMap<u64, u64>, deleted: &mut BTreeSet<u64>, next: &mut u64) {
    let mut it = line.split(' ');
    match (it.next(), it.next(), it.next()) {
        (Some("ACK"), Some(id), Some(pos)) => {
            let id: u64 = id.parse().unwrap();
            stored.insert(id, pos.parse().unwrap());
            *next = (*next).max(id + 1);
        }
        (Some("DEL"), Some(id), None) => {
            deleted.insert(id.parse().unwrap());
        }
        _ => panic!("child said {line:?}"),
    }
}
