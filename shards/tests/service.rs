//! The shard's side of the service core, sans-IO: requests go to the sink, a full sink answers
//! `Busy` at once (never waits) and counts, a missing service answers `Unavailable`, and the
//! service's replies reach the right connection.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use ferry_proto::conn::{ClientConn, ClientEvent, ConnLimits, Now};
use ferry_proto::frame::{Dest, Frame, PrekeyStatus};
use ferry_shards::ConnId;
use ferry_shards::metrics::ShardMetrics;
use ferry_shards::ratelimit::IpLimits;
use ferry_shards::service::{ServiceReply, ServiceRequest, ServiceSink, ServiceWork};
use ferry_shards::{Accept, Shard, ShardConfig};

/// A sink with room for `room` requests.
#[derive(Debug)]
struct TestSink {
    room: Mutex<usize>,
    got: Mutex<Vec<ServiceRequest>>,
}

impl ServiceSink for TestSink {
    fn offer(&self, req: ServiceRequest) -> Result<(), ServiceRequest> {
        let mut room = self.room.lock().unwrap();
        if *room == 0 {
            return Err(req);
        }
        *room -= 1;
        self.got.lock().unwrap().push(req);
        Ok(())
    }
}

const NOW: Now = Now {
    mono_ms: 1_000,
    unix_s: 1_800_000_000,
};

fn shard() -> Shard {
    Shard::new(
        ShardConfig {
            conn_limits: ConnLimits::default(),
            ip_limits: IpLimits {
                entries_max: 16,
                ..common::ip_limits_off()
            },
            connections_max: 100,
            ..common::config(0, 1)
        },
        Arc::new(ShardMetrics::default()),
    )
}

/// Opens a connection, sends a ClientHello and `frames`, returns the connection id and the
/// events it got back.
fn exchange(s: &mut Shard, frames: &[Frame]) -> (ConnId, Vec<ClientEvent>) {
    let Accept::Ok(conn) = s.accept(NOW, IpAddr::V4(Ipv4Addr::LOCALHOST)) else {
        panic!("refused")
    };
    let mut cc = ClientConn::new();
    for f in frames {
        cc.push(f);
    }
    s.on_bytes(NOW, conn, &cc.take_output().unwrap());
    (conn, events(s, conn))
}

fn events(s: &mut Shard, conn: ConnId) -> Vec<ClientEvent> {
    let mut cc = ClientConn::default();
    if let Some(b) = s.take_output(conn).bytes {
        cc.on_bytes(&b);
    }
    let mut evs = Vec::new();
    while let Some(ev) = cc.poll_event().unwrap() {
        evs.push(ev);
    }
    evs
}

fn fetch_status(evs: &[ClientEvent], dest: Dest) -> Option<PrekeyStatus> {
    evs.iter().find_map(|e| match e {
        ClientEvent::PrekeyBundle {
            dest: d, status, ..
        } if *d == dest => Some(*status),
        _ => None,
    })
}

#[test]
fn a_full_service_queue_answers_busy_without_waiting() {
    let sink = Arc::new(TestSink {
        room: Mutex::new(1),
        got: Mutex::new(Vec::new()),
    });
    let mut s = shard().with_service(sink.clone());
    let (a, b) = (Dest([1; 16]), Dest([2; 16]));
    let (conn, evs) = exchange(
        &mut s,
        &[
            Frame::PrekeyFetch {
                dest: a,
                puzzle: None,
            },
            Frame::PrekeyFetch {
                dest: b,
                puzzle: None,
            },
        ],
    );
    // The first went to the service (no answer yet); the second found the queue full.
    assert_eq!(fetch_status(&evs, a), None);
    assert_eq!(fetch_status(&evs, b), Some(PrekeyStatus::Busy));
    assert_eq!(s.metrics().service_queue_full.load(Ordering::Relaxed), 1);
    assert_eq!(s.metrics().service_requests.load(Ordering::Relaxed), 1);
    let req = sink.got.lock().unwrap().pop().unwrap();
    assert!(matches!(req.work, ServiceWork::PrekeyFetch { dest, .. } if dest == a));
    assert_eq!(req.from.conn, conn);
    // The service's reply reaches the connection.
    s.on_service(
        NOW,
        ServiceReply::Frame {
            to: conn,
            frame: Frame::PrekeyBundle {
                dest: a,
                status: PrekeyStatus::NotFound,
                bundle: None,
                puzzle: None,
            },
        },
    );
    assert_eq!(
        fetch_status(&events(&mut s, conn), a),
        Some(PrekeyStatus::NotFound)
    );
}

#[test]
fn without_a_service_core_requests_are_unavailable() {
    let mut s = shard();
    let a = Dest([3; 16]);
    let (_, evs) = exchange(
        &mut s,
        &[Frame::PrekeyFetch {
            dest: a,
            puzzle: None,
        }],
    );
    assert_eq!(fetch_status(&evs, a), Some(PrekeyStatus::Unavailable));
}
