//! Unit tests of `driver` (moved out of driver.rs).

use super::*;
use crate::store::Recovery;

/// The remains of interrupted segment creations are reported too (once only quarantined
/// records, torn tails and bad segments were).
#[test]
fn interrupted_segment_creations_are_reported_with_the_damage() {
    let clean = Recovery {
        segments: 3,
        blobs: 10,
        tombstones: 2,
        ..Recovery::default()
    };
    assert!(!recovered_with_damage(&clean));
    let damaged: [fn(&mut Recovery); 5] = [
        |r| r.quarantined = 1,
        |r| r.torn_tails = 1,
        |r| r.bad_segments = 1,
        |r| r.temporaries = 1,
        |r| r.empty_segments = 1,
    ];
    for damage in damaged {
        let mut r = clean.clone();
        damage(&mut r);
        assert!(recovered_with_damage(&r), "{r:?}");
    }
}

/// What the acceptor sets on every connection is what the socket then reports.
#[test]
fn tcp_keepalive_settings_reach_the_socket() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    let ka = TcpKeepalive {
        idle_ms: 7_000,
        interval_ms: 3_000,
        probes: 5,
        user_timeout_ms: 11_000,
    };
    let sock = socket2::SockRef::from(&s);
    assert!(!sock.keepalive().unwrap());
    ka.apply(&sock).unwrap();
    assert!(sock.keepalive().unwrap());
    assert_eq!(sock.keepalive_time().unwrap(), Duration::from_secs(7));
    assert_eq!(sock.keepalive_interval().unwrap(), Duration::from_secs(3));
    assert_eq!(sock.keepalive_retries().unwrap(), 5);
    assert_eq!(
        sock.tcp_user_timeout().unwrap(),
        Some(Duration::from_secs(11))
    );
    // Off: nothing is set.
    let (s2, _) = {
        let _c2 = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        l.accept().unwrap()
    };
    let off = TcpKeepalive {
        idle_ms: 0,
        user_timeout_ms: 0,
        ..ka
    };
    let sock2 = socket2::SockRef::from(&s2);
    off.apply(&sock2).unwrap();
    assert!(!sock2.keepalive().unwrap());
    assert_eq!(sock2.tcp_user_timeout().unwrap(), None);
}
