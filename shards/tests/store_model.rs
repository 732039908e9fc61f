//! The store-and-forward log against an in-memory model, through a backend that fails the Nth
//! write or sync, tears writes, and crashes (proptest).

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod store_common;

use std::collections::BTreeMap;

use ferry_shards::store::backend::MemBackend;
use ferry_shards::store::{FsyncPolicy, Log, StoreError};
use proptest::prelude::*;
use store_common::*;

// ---- model-based property test ----

#[derive(Clone, Debug)]
enum Op {
    Append {
        dest: u8,
        msg_id: u8,
        len: u16,
    },
    Ack {
        dest: u8,
        nth: u8,
    },
    FailNextWrite,
    FailNextSync,
    Advance {
        s: u16,
    },
    Crash {
        seed: u64,
    },
    /// A group-commit point (the interval policy's tick).
    Sync,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..4, any::<u8>(), 0u16..900).prop_map(|(dest, msg_id, len)| Op::Append { dest, msg_id, len }),
        3 => (0u8..4, any::<u8>()).prop_map(|(dest, nth)| Op::Ack { dest, nth }),
        1 => Just(Op::FailNextWrite),
        1 => Just(Op::FailNextSync),
        1 => (0u16..2000).prop_map(|s| Op::Advance { s }),
        1 => any::<u64>().prop_map(|seed| Op::Crash { seed }),
        2 => Just(Op::Sync),
    ]
}

/// What the model knows about a blob.
#[derive(Clone, Debug, PartialEq)]
struct Blob {
    msg_id: u64,
    payload: Vec<u8>,
    /// The last second it is live.
    last_live: u64,
    /// Durable for sure (acknowledged as stored) or maybe (not yet synced, or a sync failed).
    sure: bool,
    /// Append sequence number (durable once the log's durable_seq reaches it).
    seq: u64,
    /// Acked, but the tombstone is not yet durable: may come back after a crash.
    ghost: bool,
}

fn payload_of(dest: u8, msg_id: u8, len: u16) -> Vec<u8> {
    (0..len).map(|i| dest ^ msg_id ^ (i as u8)).collect()
}

fn check(log: &Log<MemBackend>, model: &BTreeMap<u8, Vec<Blob>>, now: u64) {
    for dest in 0u8..4 {
        let got: Vec<(u64, Vec<u8>)> = log
            .drain(&d(dest), now)
            .into_iter()
            .map(|(e, p)| (e.msg_id, p.to_vec()))
            .collect();
        let want: Vec<&Blob> = model
            .get(&dest)
            .map(|v| v.iter().filter(|b| b.last_live >= now).collect())
            .unwrap_or_default();
        // Every sure blob is there, in order; maybe-blobs may be there; nothing else is.
        let mut w = want.iter().peekable();
        for (msg_id, payload) in &got {
            loop {
                let Some(b) = w.next() else {
                    panic!("dest {dest}: unexpected blob {msg_id}")
                };
                // A ghost (acked, tombstone not yet durable) may be absent even when a newer copy
                // with the same message id is present.
                if b.msg_id == *msg_id && b.payload == *payload {
                    assert_eq!(&b.payload, payload, "dest {dest} blob {msg_id} corrupted");
                    break;
                }
                assert!(!b.sure, "dest {dest}: durable blob {} lost", b.msg_id);
            }
        }
        for b in w {
            assert!(
                !b.sure,
                "dest {dest}: durable blob {} lost at the end",
                b.msg_id
            );
        }
    }
}

fn run_model(ops: &[Op], policy: FsyncPolicy) {
    let b = MemBackend::default();
    let mut now = T0;
    let mut log = open(&b, policy, now);
    let mut model: BTreeMap<u8, Vec<Blob>> = BTreeMap::new();
    for op in ops {
        match *op {
            Op::Append { dest, msg_id, len } => {
                let payload = payload_of(dest, msg_id, len);
                let known = model.get(&dest).is_some_and(|v| {
                    v.iter().any(|x| {
                        x.msg_id == u64::from(msg_id)
                            && x.payload == payload
                            && x.last_live >= now
                            && !x.ghost
                    })
                });
                match log.append(now, d(dest), u64::from(msg_id), 600, &payload) {
                    Ok(a) => {
                        assert_eq!(a.duplicate, known, "duplicate detection");
                        if !a.duplicate {
                            model.entry(dest).or_default().push(Blob {
                                msg_id: u64::from(msg_id),
                                payload,
                                last_live: now + 600,
                                sure: a.seq <= log.durable_seq(),
                                seq: a.seq,
                                ghost: false,
                            });
                        }
                    }
                    Err(StoreError::SyncFailed(_)) => {
                        // Durability unknown: the node would stop here. Crash and reopen.
                        model.entry(dest).or_default().push(Blob {
                            msg_id: u64::from(msg_id),
                            payload,
                            last_live: now + 600,
                            sure: false,
                            seq: u64::MAX,
                            ghost: false,
                        });
                        crash_and_reopen(&b, &mut log, &mut model, policy, now);
                    }
                    Err(StoreError::Io(_)) => {} // not stored, and must never appear
                    Err(StoreError::DestQuota | StoreError::StoreFull) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            Op::Ack { dest, nth } => {
                let live = log.drain(&d(dest), now);
                if live.is_empty() {
                    continue;
                }
                let (e, p) = live[nth as usize % live.len()];
                let p = p.to_vec();
                match log.ack(now, &d(dest), e.pos) {
                    Ok(true) => {
                        let v = model.get_mut(&dest).unwrap();
                        if log.policy() == FsyncPolicy::Always {
                            v.retain(|x| x.msg_id != e.msg_id || x.payload != p || x.ghost);
                        } else if let Some(x) = v
                            .iter_mut()
                            .find(|x| x.msg_id == e.msg_id && x.payload == p && !x.ghost)
                        {
                            // The tombstone is durable only at the next sync.
                            x.ghost = true;
                            x.sure = false;
                        }
                    }
                    Ok(false) => panic!("live blob not ackable"),
                    Err(StoreError::SyncFailed(_)) => {
                        // The tombstone may or may not be durable: the blob is now a maybe.
                        if let Some(x) = model
                            .get_mut(&dest)
                            .unwrap()
                            .iter_mut()
                            .find(|x| x.msg_id == e.msg_id && x.payload == p)
                        {
                            x.sure = false;
                        }
                        crash_and_reopen(&b, &mut log, &mut model, policy, now);
                    }
                    Err(StoreError::Io(_) | StoreError::StoreFull) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            Op::FailNextWrite => {
                let n = b.disk.borrow().faults.writes + 1;
                b.disk.borrow_mut().faults.fail_write = Some(n);
            }
            Op::FailNextSync => {
                let n = b.disk.borrow().faults.syncs + 1;
                b.disk.borrow_mut().faults.fail_sync = Some(n);
            }
            Op::Advance { s } => {
                now += u64::from(s);
                for v in model.values_mut() {
                    v.retain(|x| x.last_live >= now);
                }
                match log.expire(now) {
                    Ok(_) => {}
                    Err(StoreError::SyncFailed(_)) => {
                        crash_and_reopen(&b, &mut log, &mut model, policy, now);
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            Op::Sync => match log.sync_now() {
                Ok(()) => {
                    let durable = log.durable_seq();
                    for v in model.values_mut() {
                        v.retain(|x| !x.ghost);
                        for x in v.iter_mut() {
                            if x.seq <= durable {
                                x.sure = true;
                            }
                        }
                    }
                }
                Err(StoreError::SyncFailed(_)) => {
                    crash_and_reopen(&b, &mut log, &mut model, policy, now);
                }
                Err(e) => panic!("{e}"),
            },
            Op::Crash { seed } => {
                drop(log);
                let mut x = seed | 1;
                b.disk.borrow_mut().crash(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % 3) as u8
                });
                reset_faults(&b);
                log = open(&b, policy, now);
                resync_model(&log, &mut model, now);
            }
        }
        check(&log, &model, now);
    }
}

/// Power loss (every third unsynced write kept, torn or lost), reopen, and settle the model.
fn reset_faults(b: &MemBackend) {
    let mut disk = b.disk.borrow_mut();
    disk.faults.fail_write = None;
    disk.faults.fail_sync = None;
}

fn crash_and_reopen(
    b: &MemBackend,
    log: &mut Log<MemBackend>,
    model: &mut BTreeMap<u8, Vec<Blob>>,
    policy: FsyncPolicy,
    now: u64,
) {
    b.disk.borrow_mut().crash(|k| (k % 3) as u8);
    // A crash is a reboot: injected faults of the previous boot are gone.
    reset_faults(b);
    *log = open(b, policy, now);
    resync_model(log, model, now);
}

/// After a reopen, settle each maybe-blob to what the log holds (both outcomes were allowed).
fn resync_model(log: &Log<MemBackend>, model: &mut BTreeMap<u8, Vec<Blob>>, now: u64) {
    check(log, model, now);
    for (dest, v) in model.iter_mut() {
        let present: Vec<(u64, Vec<u8>)> = log
            .drain(&d(*dest), now)
            .iter()
            .map(|(e, p)| (e.msg_id, p.to_vec()))
            .collect();
        // Matched in order, one model blob per blob present (as `check` matches them): a ghost
        // and a later copy with the same id and bytes are two blobs, and finding one of them
        // present keeps one (seed 84f1dac… of the regressions file: an acked blob sent again,
        // then a power loss, left one copy, and the model kept both).
        let mut rest = std::mem::take(v).into_iter();
        for (msg_id, payload) in &present {
            for x in rest.by_ref() {
                if x.last_live < now {
                    if x.sure {
                        v.push(x);
                    }
                    continue;
                }
                if x.msg_id == *msg_id && x.payload == *payload {
                    v.push(x);
                    break;
                }
                // Not present: `check` found it was not sure; it is gone.
            }
        }
        v.extend(rest.filter(|x| x.sure));
        for x in v.iter_mut() {
            // Whatever survived was durable: it is sure now, and a ghost that came back is live.
            x.sure = true;
            x.ghost = false;
            x.seq = 0;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_log_matches_its_model_through_faults_and_crashes(ops in prop::collection::vec(op(), 1..80)) {
        run_model(&ops, FsyncPolicy::Always);
    }

    /// Group commit: a crash may lose appends and acks made since the last sync (the window),
    /// and nothing older.
    #[test]
    fn with_group_commit_a_crash_loses_at_most_the_window(ops in prop::collection::vec(op(), 1..80)) {
        run_model(&ops, FsyncPolicy::Interval { ms: 1_000_000 });
    }
}
