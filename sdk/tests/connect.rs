//! Node URLs as applications write them, and the node's clock as the client reads it from a
//! hello (a scripted node on loopback: the real node's tests are in the workspace's `tests/`).

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpListener;

use ferry_sdk::proto::frame::Frame;
use ferry_sdk::{
    CLOCK_SKEW_S_MAX, Client, ConnectOptions, NODE_UNIX_S_MAX, NodeUrl, PORT_PLAIN_DEFAULT,
    PORT_TLS_DEFAULT, SdkError, UrlError,
};

fn url(tls: bool, host: &str, port: u16) -> NodeUrl {
    NodeUrl {
        tls,
        host: host.into(),
        port,
    }
}

#[test]
fn node_urls_parse_with_default_ports_and_print_back() {
    for (text, want, printed) in [
        (
            "ferry+tls://relay.example:7443",
            url(true, "relay.example", 7443),
            "ferry+tls://relay.example:7443",
        ),
        (
            "ferry+tls://Relay.Example",
            url(true, "relay.example", PORT_TLS_DEFAULT),
            "ferry+tls://relay.example:7443",
        ),
        (
            "ferry://localhost",
            url(false, "localhost", PORT_PLAIN_DEFAULT),
            "ferry://localhost:7700",
        ),
        (
            "FERRY://10.0.0.1:9000/",
            url(false, "10.0.0.1", 9000),
            "ferry://10.0.0.1:9000",
        ),
        (
            "ferry+tls://[::1]:7443",
            url(true, "::1", 7443),
            "ferry+tls://[::1]:7443",
        ),
        // A bare IP:PORT is plain TCP.
        (
            " 127.0.0.1:7700 ",
            url(false, "127.0.0.1", 7700),
            "ferry://127.0.0.1:7700",
        ),
        ("[::1]:7700", url(false, "::1", 7700), "ferry://[::1]:7700"),
    ] {
        let got: NodeUrl = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(got, want, "{text}");
        assert_eq!(got.to_string(), printed, "{text}");
        assert_eq!(printed.parse::<NodeUrl>().unwrap(), want, "{printed}");
    }
}

#[test]
fn wrong_node_urls_say_what_is_wrong() {
    // (URL, the error it must be, what its message must say)
    type Case = (&'static str, fn(&UrlError) -> bool, &'static str);
    let cases: [Case; 10] = [
        (
            "https://relay.example",
            |e| matches!(e, UrlError::Scheme { scheme, .. } if scheme == "https"),
            "unknown scheme",
        ),
        (
            "relay.example:7443",
            |e| matches!(e, UrlError::NoScheme { .. }),
            "no scheme",
        ),
        ("", |e| matches!(e, UrlError::NoScheme { .. }), "no scheme"),
        (
            "ferry:relay.example",
            |e| matches!(e, UrlError::NoScheme { .. }),
            "no scheme",
        ),
        (
            "ferry+tls://",
            |e| matches!(e, UrlError::NoHost { .. }),
            "no host",
        ),
        (
            "ferry://relay.example:70000",
            |e| matches!(e, UrlError::Parse { .. }),
            "invalid port",
        ),
        (
            "ferry://relay example",
            |e| matches!(e, UrlError::Parse { .. }),
            "does not parse",
        ),
        (
            "ferry://relay..example",
            |e| matches!(e, UrlError::Host { .. }),
            "not a host name",
        ),
        (
            "ferry://user@relay.example",
            |e| {
                matches!(
                    e,
                    UrlError::Extra {
                        part: "user name",
                        ..
                    }
                )
            },
            "has a user name",
        ),
        (
            "ferry://relay.example/mailbox?x#y",
            |e| matches!(e, UrlError::Extra { part: "path", .. }),
            "has a path",
        ),
    ];
    for (text, is, says) in cases {
        let e = text.parse::<NodeUrl>().unwrap_err();
        assert!(is(&e), "{text}: {e:?}");
        let msg = e.to_string();
        assert!(msg.contains(says), "{text}: {msg}");
        assert!(
            msg.contains(&format!("{text:?}")),
            "the message quotes the URL: {msg}"
        );
    }
    assert!(matches!(
        "ferry://relay.example?x".parse::<NodeUrl>(),
        Err(UrlError::Extra { part: "query", .. })
    ));
    assert!(matches!(
        "ferry://relay.example#x".parse::<NodeUrl>(),
        Err(UrlError::Extra {
            part: "fragment",
            ..
        })
    ));
    // The same errors through the client, before any connection.
    assert!(matches!(
        Client::connect_url("http://127.0.0.1:1", &ConnectOptions::default()),
        Err(SdkError::Url(UrlError::Scheme { .. }))
    ));
}

/// A node on loopback that answers any client with one `ServerHello` saying `unix_time_s`.
fn scripted_node(unix_time_s: u64) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut hello = [0u8; 64];
        let _ = s.read(&mut hello).unwrap();
        let mut out = bytes::BytesMut::new();
        Frame::ServerHello {
            version: 1,
            shard: 0,
            node_id: [1; 32],
            challenge: [2; 32],
            unix_time_s,
            frame_bytes_max: 65_536,
        }
        .encode(&mut out);
        s.write_all(&out).unwrap();
        // Hold the connection until the client is done with it.
        let _ = s.read(&mut hello);
    });
    addr
}

#[test]
fn the_node_clock_is_taken_within_the_skew_bound_and_refused_beyond_it() {
    let local = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let c = Client::connect(scripted_node(local + 200)).unwrap();
    let t = c.node_unix_s();
    assert!((local + 200..local + 210).contains(&t), "{t}");
    assert_eq!(c.epoch(), t / 3600);

    // Beyond CLOCK_SKEW_S_MAX either way: refused, whatever the node says.
    for off in [
        CLOCK_SKEW_S_MAX as i64 + 5,
        -(CLOCK_SKEW_S_MAX as i64) - 5,
        3600,
        -3600,
    ] {
        let said = local.saturating_add_signed(off);
        match Client::connect(scripted_node(said)) {
            Err(e @ SdkError::ClockSkew { node_unix_s, .. }) => {
                assert_eq!(node_unix_s, said);
                assert!(e.to_string().contains("device's time"), "{e}");
            }
            other => panic!("{off}: {other:?}"),
        }
    }
    // A test that moved the node's clock may widen the bound.
    let wide = ConnectOptions {
        clock_skew_s_max: 2 * 3600,
        ..Default::default()
    };
    let c = Client::connect_with(scripted_node(local + 3600), &wide).unwrap();
    assert_eq!(c.epoch(), (local + 3600) / 3600);

    // Once, a time past i64::MAX made the offset silently 0: the client then used its own clock.
    for absurd in [NODE_UNIX_S_MAX + 1, u64::MAX] {
        match Client::connect(scripted_node(absurd)) {
            Err(e @ SdkError::NodeClock { .. }) => {
                assert!(e.to_string().contains(&absurd.to_string()), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }
}
