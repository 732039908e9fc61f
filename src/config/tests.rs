//! Unit tests of loading, layering, environment overrides, validation and reload.

use super::env::collect_keys;
use super::*;

#[test]
fn layers_apply_in_order() {
    let dir = std::env::temp_dir().join(format!("ferry-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ferry.toml");
    std::fs::write(
        &file,
        "shards = 3\n[limits]\nidle_timeout_ms = 5000\nping_interval_ms = 1000\n",
    )
    .unwrap();
    let env = vec![
        ("FERRY_SHARDS".to_string(), "5".to_string()),
        ("FERRY_LIMITS_TICK_MS".to_string(), "7".to_string()),
        (
            "FERRY_LISTEN".to_string(),
            "127.0.0.1:1, 127.0.0.2:2".to_string(),
        ),
        ("PATH".to_string(), "/bin".to_string()),
    ];
    let c = Config::load(Some(&file), env.into_iter()).unwrap();
    assert_eq!(c.shards, 5); // env over file
    assert_eq!(c.limits.idle_timeout_ms, 5000); // file over default
    assert_eq!(c.limits.tick_ms, 7);
    assert_eq!(c.listen.len(), 2);
    assert_eq!(
        c.limits.hop_queue_msgs_max,
        Limits::default().hop_queue_msgs_max
    );
    c.validate().unwrap();
}

#[test]
fn unknown_keys_are_errors() {
    let env = vec![("FERRY_NOPE".to_string(), "1".to_string())];
    assert!(Config::load(None, env.into_iter()).is_err());
    let env = vec![("FERRY_SHARDS".to_string(), "many".to_string())];
    assert!(Config::load(None, env.into_iter()).is_err());
}

#[test]
fn plaintext_off_loopback_needs_explicit_consent() {
    let mut c = Config {
        listen: vec!["0.0.0.0:7700".parse().unwrap()],
        ..Config::default()
    };
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("--insecure-plaintext")
    );
    c.insecure_plaintext = true;
    c.validate().unwrap();
}

/// Keepalive values the kernel would refuse, or a user timeout that would cut the probes
/// short, stop start-up with the key named; 0 turns each off.
#[test]
fn keepalive_settings_are_checked_against_the_kernel_and_each_other() {
    let err = |f: &dyn Fn(&mut Limits)| {
        let mut c = Config::default();
        f(&mut c.limits);
        c.validate().err().map(|e| e.to_string())
    };
    assert_eq!(err(&|_| {}), None);
    assert!(
        err(&|l| l.tcp_keepalive_idle_ms = 500)
            .unwrap()
            .contains("limits.tcp_keepalive_idle_ms")
    );
    assert!(
        err(&|l| l.tcp_keepalive_idle_ms = 40_000_000)
            .unwrap()
            .contains("limits.tcp_keepalive_idle_ms")
    );
    // 120 s + 4 × 30 s = 240 s: the default user timeout is exactly enough.
    assert!(
        err(&|l| l.tcp_user_timeout_ms = 239_999)
            .unwrap()
            .contains("limits.tcp_user_timeout_ms")
    );
    assert_eq!(err(&|l| l.tcp_user_timeout_ms = 0), None);
    assert_eq!(
        err(&|l| {
            l.tcp_keepalive_idle_ms = 0;
            l.tcp_user_timeout_ms = 1_000;
        }),
        None
    );
    assert_eq!(
        err(&|l| {
            l.ping_interval_ms = 30_000;
            l.idle_timeout_ms = 0;
        }),
        None
    );
    assert!(
        err(&|l| {
            l.ping_interval_ms = 30_000;
            l.idle_timeout_ms = 30_000;
        })
        .unwrap()
        .contains("ping_interval_ms")
    );
}

#[test]
fn defaults_are_valid() {
    Config::default().validate().unwrap();
}

#[test]
fn webpush_origins_allowed_entries_are_parsed_at_load() {
    let with = |entries: &[&str]| {
        let mut c = Config::default();
        c.push.webpush_origins_allowed = entries.iter().map(|e| e.to_string()).collect();
        c.validate()
    };
    with(&["https://push.example:8443", "https://127.0.0.1:9443"]).unwrap();
    for bad in [
        "https://push.example/path",
        "https://*.com",
        "https://push.example?x",
        "https://u@push.example",
        "http://push.example",
    ] {
        let e = with(&["https://*.notify.windows.com", bad]).unwrap_err();
        let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
        assert!(
            chain[0].contains("push.webpush_origins_allowed") && chain[0].contains(bad),
            "{chain:?}"
        );
        assert!(chain.len() > 1, "the reason follows: {chain:?}");
    }
}

/// A new numeric key without a bound fails here.
#[test]
fn every_numeric_key_has_a_bound() {
    let defaults = toml::Value::try_from(Config::default()).unwrap();
    let mut keys = Vec::new();
    collect_keys(&defaults, &mut Vec::new(), &mut keys);
    let ints: std::collections::BTreeSet<String> = keys
        .iter()
        .filter(|(_, kind)| kind == "int")
        .map(|(path, _)| path.join("."))
        .collect();
    let bounded: std::collections::BTreeSet<String> = Config::default()
        .bounds()
        .iter()
        .map(|b| b.key.to_string())
        .collect();
    assert_eq!(ints, bounded);
}

/// Each key one past either end of its range is refused with one line naming the key, the
/// value and the range.
#[test]
fn out_of_range_values_name_the_key_the_value_and_the_range() {
    for b in Config::default().bounds() {
        let mut outside = vec![b.max + 1];
        if b.min > 0 || b.key == "clock_offset_s" {
            outside.push(b.min - 1);
        }
        for v in outside {
            let mut value = toml::Value::try_from(Config::default()).unwrap();
            let mut at = &mut value;
            let path: Vec<&str> = b.key.split('.').collect();
            for seg in &path[..path.len() - 1] {
                at = at.get_mut(*seg).unwrap();
            }
            let raw = i64::try_from(v).unwrap();
            at.as_table_mut()
                .unwrap()
                .insert(path[path.len() - 1].into(), toml::Value::Integer(raw));
            let Ok(c) = value.try_into::<Config>() else {
                continue; // outside the field's type: refused when loading
            };
            let e = c.validate().unwrap_err().to_string();
            let want = format!(
                "{} = {v} is out of range: allowed {} to {}",
                b.key, b.min, b.max
            );
            assert!(e.starts_with(&want), "{e}");
            assert_eq!(e.lines().count(), 1);
        }
    }
    let c = Config {
        shards: 99_999_999_999,
        ..Config::default()
    };
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        "shards = 99999999999 is out of range: allowed 0 to 1024 (0 = one per CPU)"
    );
}

#[test]
fn unknown_keys_get_the_nearest_known_one() {
    let dir = std::env::temp_dir().join(format!("ferry-cfg-near-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ferry.toml");
    for (text, key, hint) in [
        (
            "[limits]\nidle_timeut_ms = 5\n",
            "limits.idle_timeut_ms",
            Some("idle_timeout_ms"),
        ),
        (
            "idle_timeout_ms = 5\n",
            "idle_timeout_ms",
            Some("limits.idle_timeout_ms"),
        ),
        ("shardz = 2\n", "shardz", Some("shards")),
        ("tls_crt = \"x\"\n", "tls_crt", Some("tls_cert")),
        ("[media]\nttl = 5\n", "media.ttl", Some("ttl_s")),
        ("colour = true\n", "colour", None),
    ] {
        std::fs::write(&file, text).unwrap();
        let e = Config::load(Some(&file), std::iter::empty())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(&format!("unknown key `{key}` in ")), "{e}");
        match hint {
            Some(h) => assert!(e.ends_with(&format!("; did you mean `{h}`?")), "{e}"),
            None => assert!(!e.contains("did you mean"), "{e}"),
        }
    }
    let env = vec![("FERRY_LIMITS_IDLE_TIMEUT_MS".to_string(), "1".to_string())];
    let e = Config::load(None, env.into_iter()).unwrap_err().to_string();
    assert!(
        e.ends_with("did you mean FERRY_LIMITS_IDLE_TIMEOUT_MS?"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn restart_keys_are_the_changed_keys_sighup_does_not_apply() {
    let running = Config::default();
    let mut next = running.clone();
    assert!(running.restart_keys(&next).unwrap().is_empty());
    next.listen = vec!["127.0.0.1:7800".parse().unwrap()];
    next.log_format = "json".into();
    next.admin_token_file = Some("/etc/ferry/token".into());
    next.limits.tick_ms = 50;
    next.limits.idle_timeout_ms = 60_000; // reloadable
    next.tls_cert = Some("/etc/ferry/cert.pem".into()); // reloadable
    assert_eq!(
        running.restart_keys(&next).unwrap(),
        ["admin_token_file", "limits.tick_ms", "listen", "log_format"]
    );
}

#[test]
fn listeners_must_not_overlap() {
    let c = Config {
        listen_tls: vec!["0.0.0.0:7700".parse().unwrap()],
        tls_cert: Some("c".into()),
        tls_key: Some("k".into()),
        ..Config::default()
    };
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("overlap"), "{e}");
    let c = Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    c.validate().unwrap();
    let c = Config {
        listen: vec![
            "[::1]:7700".parse().unwrap(),
            "127.0.0.1:7700".parse().unwrap(),
        ],
        ..Config::default()
    };
    c.validate().unwrap();
}

#[test]
fn io_engine_is_auto_uring_or_glommio() {
    use ferry_shards::driver::Engine;
    // `auto`: uring where the kernel runs it (the test machines' kernels do: 6.1 or later).
    assert_eq!(Config::default().io_engine, "auto");
    let auto = Config::default().engine().unwrap();
    match ferry_shards::driver::uring::probe() {
        Ok(()) => assert_eq!(auto, Engine::Uring),
        Err(_) => assert_eq!(auto, Engine::Glommio),
    }
    let glommio = Config {
        io_engine: "glommio".into(),
        ..Config::default()
    };
    assert_eq!(glommio.engine().unwrap(), Engine::Glommio);
    let mut c = Config {
        io_engine: "uring".into(),
        ..Config::default()
    };
    c.validate().unwrap();
    if ferry_shards::driver::uring::probe().is_ok() {
        assert_eq!(c.engine().unwrap(), Engine::Uring);
    }
    c.io_engine = "epoll".into();
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.contains("io_engine must be `auto`, `uring` or `glommio`, not `epoll`"),
        "{e}"
    );
    // A restart applies it, not SIGHUP.
    assert_eq!(
        Config::default().restart_keys(&glommio).unwrap(),
        ["io_engine"]
    );
}
