//! `ferry-pushmock`: a local stand-in for APNs, FCM HTTP v1 (and its OAuth2 token endpoint) and
//! a Web Push service, over HTTP/2 + TLS with a given (self-signed) certificate. It verifies what
//! a real provider would (the ES256/RS256 JWTs with the test keys, the headers each provider
//! requires) and what ferry promises (no content: the exact APNs body, an empty FCM `data`, no
//! Web Push body, and none of the `--forbid` strings anywhere in the request), answers scripted
//! statuses per token, and writes one JSON line per request to `--log`.
//!
//! ```text
//! ferry-pushmock --gen DIR   # writes a certificate and test keys for every provider, then exits
//! ferry-pushmock --cert C --key K [--listen 127.0.0.1:0] [--log FILE]
//!   [--apns-key P8 --apns-key-id KID --apns-team TEAM --apns-topic TOPIC]
//!   [--fcm-account SERVICE_ACCOUNT.json] [--vapid-key PEM]
//!   [--script TOKEN_PART=STATUS[,STATUS…]]… [--forbid TEXT]… [--delay-ms N] [--no-verify]
//! ```
//! Paths: `/3/device/<token>` (APNs), `/token` (OAuth2), `/v1/projects/<id>/messages:send`
//! (FCM), anything under `/wp/` (Web Push endpoints).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;

use ferry_shards::service::push_wire::{
    APNS_BODY, APNS_PATH_PREFIX, APNS_PRIORITY, APNS_PUSH_TYPE, FCM_SCOPE,
};

#[derive(Default)]
struct Args {
    listen: String,
    cert: String,
    key: String,
    log: Option<String>,
    apns_key: Option<String>,
    apns_key_id: String,
    apns_team: String,
    apns_topic: String,
    fcm_account: Option<String>,
    vapid_key: Option<String>,
    script: Vec<(String, Vec<u16>)>,
    forbid: Vec<String>,
    delay_ms: u64,
    /// Skip the signature checks (benchmarks: an ES256 verify per request would make the mock,
    /// not the node, the bottleneck on a small machine). Headers and bodies are still checked.
    no_verify: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        listen: "127.0.0.1:0".into(),
        ..Args::default()
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => a.listen = val()?,
            "--cert" => a.cert = val()?,
            "--key" => a.key = val()?,
            "--log" => a.log = Some(val()?),
            "--apns-key" => a.apns_key = Some(val()?),
            "--apns-key-id" => a.apns_key_id = val()?,
            "--apns-team" => a.apns_team = val()?,
            "--apns-topic" => a.apns_topic = val()?,
            "--fcm-account" => a.fcm_account = Some(val()?),
            "--vapid-key" => a.vapid_key = Some(val()?),
            "--forbid" => a.forbid.push(val()?),
            "--delay-ms" => a.delay_ms = val()?.parse().map_err(|_| "bad --delay-ms")?,
            "--no-verify" => a.no_verify = true,
            "--script" => {
                let v = val()?;
                let (tok, statuses) = v.split_once('=').ok_or("--script TOKEN=STATUS,…")?;
                let statuses = statuses
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse::<u16>()
                            .map_err(|_| format!("bad status {s}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                a.script.push((tok.to_string(), statuses));
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.cert.is_empty() || a.key.is_empty() {
        return Err("--cert and --key are required".into());
    }
    Ok(a)
}

fn p256_key(path: &str) -> Result<p256::ecdsa::VerifyingKey, String> {
    use p256::pkcs8::DecodePrivateKey;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let sk = p256::ecdsa::SigningKey::from_pkcs8_pem(&text)
        .or_else(|_| p256::SecretKey::from_sec1_pem(&text).map(Into::into))
        .map_err(|_| format!("{path}: not a P-256 key"))?;
    Ok(*sk.verifying_key())
}

struct Fcm {
    /// The service account's public key (PKCS#1 `RSAPublicKey` DER), for ring's verifier.
    key: Vec<u8>,
    client_email: String,
    project: String,
}

struct State {
    args: Args,
    apns: Option<p256::ecdsa::VerifyingKey>,
    fcm: Option<Fcm>,
    vapid: Option<p256::ecdsa::VerifyingKey>,
    /// Script entries: token part → statuses still to answer (the last one sticks).
    script: Mutex<Vec<(String, Vec<u16>)>>,
    access_tokens: Mutex<Vec<String>>,
    log: Mutex<Option<std::fs::File>>,
    origin: String,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Splits and checks a JWT; returns (header, claims) JSON.
fn jwt_parts(jwt: &str) -> Result<(serde_json::Value, serde_json::Value, String, Vec<u8>), String> {
    let mut parts = jwt.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("JWT does not have three parts".into());
    };
    let dec = |p: &str| {
        URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|_| "JWT part not base64url".to_string())
    };
    let header: serde_json::Value =
        serde_json::from_slice(&dec(h)?).map_err(|_| "JWT header not JSON")?;
    let claims: serde_json::Value =
        serde_json::from_slice(&dec(c)?).map_err(|_| "JWT claims not JSON")?;
    Ok((header, claims, format!("{h}.{c}"), dec(s)?))
}

fn verify_es256(
    key: &p256::ecdsa::VerifyingKey,
    jwt: &str,
) -> Result<(serde_json::Value, serde_json::Value), String> {
    use p256::ecdsa::signature::Verifier;
    let (h, c, input, sig) = jwt_parts(jwt)?;
    if h["alg"] != "ES256" {
        return Err(format!("alg {} is not ES256", h["alg"]));
    }
    let sig =
        p256::ecdsa::Signature::from_slice(&sig).map_err(|_| "bad ES256 signature encoding")?;
    key.verify(input.as_bytes(), &sig)
        .map_err(|_| "ES256 signature does not verify with the test key".to_string())?;
    Ok((h, c))
}

fn verify_rs256(key: &[u8], jwt: &str) -> Result<serde_json::Value, String> {
    use ring::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
    let (h, c, input, sig) = jwt_parts(jwt)?;
    if h["alg"] != "RS256" {
        return Err(format!("alg {} is not RS256", h["alg"]));
    }
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key)
        .verify(input.as_bytes(), &sig)
        .map_err(|_| "RS256 signature does not verify with the test key".to_string())?;
    Ok(c)
}

/// The FCM test key: ring cannot generate RSA keys, so `--gen` writes this fixed one (made by
/// `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`; tests/common/push.rs uses it
/// too). A test key only: never give it to a real service account.
const FCM_TEST_KEY: &str = include_str!("fcm-test-key.pem");

/// The public half of a PKCS#8 PEM RSA key, as ring's verifier takes it.
fn rsa_public(pem: &str) -> Result<Vec<u8>, String> {
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("not a PKCS#8 PEM key: {e}"))?;
    let pair = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
        .map_err(|e| format!("not an RSA key: {e}"))?;
    Ok(pair.public().as_ref().to_vec())
}

struct Verdict {
    provider: &'static str,
    token: String,
    violations: Vec<String>,
    /// A response decided by the request itself (the OAuth2 endpoint).
    direct: Option<(u16, String)>,
}

impl State {
    fn scripted(&self, token: &str, default: u16) -> u16 {
        let mut script = self.script.lock().unwrap_or_else(|p| p.into_inner());
        for (part, statuses) in script.iter_mut() {
            if token.contains(part.as_str()) {
                return if statuses.len() > 1 {
                    statuses.remove(0)
                } else {
                    statuses.first().copied().unwrap_or(default)
                };
            }
        }
        default
    }

    fn check(&self, path: &str, headers: &http::HeaderMap, body: &[u8]) -> Verdict {
        let mut v = Verdict {
            provider: "unknown",
            token: String::new(),
            violations: Vec::new(),
            direct: None,
        };
        let h = |name: &str| {
            headers
                .get(name)
                .and_then(|x| x.to_str().ok())
                .unwrap_or("")
        };
        let now = unix_now();
        if let Some(token) = path.strip_prefix(APNS_PATH_PREFIX) {
            v.provider = "apns";
            v.token = token.to_string();
            match (&self.apns, h("authorization").strip_prefix("bearer ")) {
                (Some(_), Some(_)) if self.args.no_verify => {}
                (Some(key), Some(jwt)) => match verify_es256(key, jwt) {
                    Ok((hd, c)) => {
                        if hd["kid"] != self.args.apns_key_id.as_str() {
                            v.violations.push("JWT kid is not the key id".into());
                        }
                        if c["iss"] != self.args.apns_team.as_str() {
                            v.violations.push("JWT iss is not the team id".into());
                        }
                        let iat = c["iat"].as_u64().unwrap_or(0);
                        if iat + 3_600 < now || iat > now + 60 {
                            v.violations.push("JWT iat outside the hour".into());
                        }
                    }
                    Err(e) => v.violations.push(e),
                },
                _ => v
                    .violations
                    .push("no bearer JWT (or APNs not configured)".into()),
            }
            for (name, want) in [
                ("apns-push-type", APNS_PUSH_TYPE),
                ("apns-priority", APNS_PRIORITY),
                ("apns-topic", self.args.apns_topic.as_str()),
            ] {
                if h(name) != want {
                    v.violations
                        .push(format!("{name} is `{}`, not `{want}`", h(name)));
                }
            }
            if body != APNS_BODY.as_bytes() {
                v.violations
                    .push("body is not exactly the content-available wake".into());
            }
        } else if path == "/token" {
            v.provider = "oauth";
            let form = String::from_utf8_lossy(body);
            let assertion = form
                .split('&')
                .find_map(|kv| kv.strip_prefix("assertion="))
                .unwrap_or("");
            if !form.contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer") {
                v.violations.push("grant_type is not jwt-bearer".into());
            }
            match &self.fcm {
                Some(fcm) => match verify_rs256(&fcm.key, assertion) {
                    Ok(c) => {
                        if c["iss"] != fcm.client_email.as_str() || c["scope"] != FCM_SCOPE {
                            v.violations.push("assertion iss or scope wrong".into());
                        }
                        let (iat, exp) = (
                            c["iat"].as_u64().unwrap_or(0),
                            c["exp"].as_u64().unwrap_or(0),
                        );
                        if exp <= iat || exp - iat > 3_600 {
                            v.violations
                                .push("assertion valid longer than an hour".into());
                        }
                    }
                    Err(e) => v.violations.push(e),
                },
                None => v.violations.push("FCM not configured".into()),
            }
            let mut toks = self.access_tokens.lock().unwrap_or_else(|p| p.into_inner());
            let tok = format!("mock-access-{}", toks.len() + 1);
            toks.push(tok.clone());
            v.direct = Some((
                200,
                format!(r#"{{"access_token":"{tok}","expires_in":3600,"token_type":"Bearer"}}"#),
            ));
        } else if let Some(rest) = path.strip_prefix("/v1/projects/") {
            v.provider = "fcm";
            let project = rest.strip_suffix("/messages:send").unwrap_or("");
            if self.fcm.as_ref().is_none_or(|f| f.project != project) {
                v.violations
                    .push(format!("project `{project}` is not the service account's"));
            }
            let bearer = h("authorization").strip_prefix("Bearer ").unwrap_or("");
            if !self
                .access_tokens
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|t| t == bearer)
            {
                v.violations
                    .push("access token was not issued by the token endpoint".into());
            }
            match serde_json::from_slice::<serde_json::Value>(body) {
                Ok(j) => {
                    let m = &j["message"];
                    v.token = m["token"].as_str().unwrap_or("").to_string();
                    if m["data"] != serde_json::json!({}) {
                        v.violations.push("data is not empty".into());
                    }
                    if !m["notification"].is_null() {
                        v.violations
                            .push("a notification block carries content".into());
                    }
                    if m["android"]["priority"].is_null() || m["android"]["ttl"].is_null() {
                        v.violations.push("android priority or ttl missing".into());
                    }
                }
                Err(_) => v.violations.push("body is not JSON".into()),
            }
        } else if path.starts_with("/wp/") {
            v.provider = "webpush";
            v.token = format!("{}{path}", self.origin);
            let auth = h("authorization");
            let jwt = auth
                .strip_prefix("vapid t=")
                .and_then(|r| r.split(',').next())
                .unwrap_or("");
            let k = auth.split("k=").nth(1).unwrap_or("");
            match &self.vapid {
                Some(key) => {
                    if URL_SAFE_NO_PAD.encode(key.to_encoded_point(false).as_bytes()) != k {
                        v.violations.push("k= is not the test VAPID key".into());
                    }
                    match verify_es256(key, jwt) {
                        Ok((_, c)) => {
                            if c["aud"] != self.origin.as_str() {
                                v.violations
                                    .push(format!("aud {} is not {}", c["aud"], self.origin));
                            }
                            let exp = c["exp"].as_u64().unwrap_or(0);
                            if exp <= now || exp > now + 86_400 {
                                v.violations.push("exp not within 24 h".into());
                            }
                            let sub = c["sub"].as_str().unwrap_or("");
                            if !(sub.starts_with("mailto:") || sub.starts_with("https:")) {
                                v.violations.push("sub is not a contact".into());
                            }
                        }
                        Err(e) => v.violations.push(e),
                    }
                }
                None => v.violations.push("Web Push not configured".into()),
            }
            if h("ttl").parse::<u64>().is_err() {
                v.violations.push("TTL header missing".into());
            }
            if !body.is_empty() {
                v.violations.push("a Web Push wake has a body".into());
            }
        } else {
            v.violations.push(format!("unknown path {path}"));
        }
        // Nothing of the message may travel: look for the forbidden strings everywhere.
        let mut all = path.to_string();
        for (name, value) in headers {
            all.push_str(name.as_str());
            all.push_str(value.to_str().unwrap_or(""));
        }
        all.push_str(&String::from_utf8_lossy(body));
        for f in &self.args.forbid {
            if all.to_lowercase().contains(&f.to_lowercase()) {
                v.violations
                    .push(format!("request contains forbidden `{f}`"));
            }
        }
        v
    }

    fn answer(&self, v: &Verdict) -> (u16, String) {
        if let Some(d) = &v.direct {
            return d.clone();
        }
        let default = if v.provider == "webpush" { 201 } else { 200 };
        let status = self.scripted(&v.token, default);
        let body = match (v.provider, status) {
            (_, 200..=299) if v.provider == "fcm" => r#"{"name":"projects/mock/messages/1"}"#.into(),
            (_, 200..=299) => String::new(),
            ("apns", 410) => r#"{"reason":"Unregistered","timestamp":0}"#.into(),
            ("apns", 429) => r#"{"reason":"TooManyRequests"}"#.into(),
            ("apns", 403) => r#"{"reason":"ExpiredProviderToken"}"#.into(),
            ("fcm", 404) => r#"{"error":{"code":404,"status":"NOT_FOUND","details":[{"errorCode":"UNREGISTERED"}]}}"#.into(),
            ("fcm", 429) => r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"errorCode":"QUOTA_EXCEEDED"}]}}"#.into(),
            _ => String::new(),
        };
        (status, body)
    }

    fn record(&self, path: &str, v: &Verdict, status: u16) {
        let line = serde_json::json!({
            "provider": v.provider,
            "path": path,
            "token": v.token,
            "status": status,
            "violations": v.violations,
        });
        if let Some(f) = self.log.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            let _ = writeln!(f, "{line}");
            let _ = f.flush();
        }
    }
}

async fn handle(
    st: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    let headers = req.headers().clone();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    if st.args.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(st.args.delay_ms)).await;
    }
    let verdict = st.check(&path, &headers, &body);
    let (status, text) = st.answer(&verdict);
    st.record(&path, &verdict, status);
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    Ok(resp)
}

/// `--gen DIR`: writes a self-signed certificate for 127.0.0.1 and test keys for every provider
/// (`cert.pem`, `key.pem`, `apns.p8`, `vapid.pem`, `fcm.json` with [`FCM_TEST_KEY`]), for
/// benchmarks and manual runs.
fn generate_keys(dir: &std::path::Path) -> Result<(), String> {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let w = |name: &str, data: &[u8]| {
        std::fs::write(dir.join(name), data).map_err(|e| format!("{name}: {e}"))
    };
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])
        .map_err(|e| e.to_string())?;
    w("cert.pem", cert.cert.pem().as_bytes())?;
    w("key.pem", cert.key_pair.serialize_pem().as_bytes())?;
    for name in ["apns.p8", "vapid.pem"] {
        let sk = p256::SecretKey::random(&mut rand_core::OsRng);
        w(
            name,
            sk.to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| e.to_string())?
                .as_bytes(),
        )?;
    }
    let account = serde_json::json!({
        "type": "service_account",
        "project_id": "ferry-bench",
        "private_key": FCM_TEST_KEY,
        "client_email": "ferry@ferry-bench.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    });
    w("fcm.json", account.to_string().as_bytes())
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--gen") {
        let Some(dir) = argv.get(2) else {
            eprintln!("ferry-pushmock: --gen DIR");
            std::process::exit(2);
        };
        if let Err(e) = generate_keys(std::path::Path::new(dir)) {
            eprintln!("ferry-pushmock: {e}");
            std::process::exit(1);
        }
        return;
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ferry-pushmock: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args) {
        eprintln!("ferry-pushmock: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(&args.cert)
        .map_err(|e| format!("{}: {e}", args.cert))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", args.cert))?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&args.key)
        .map_err(|e| format!("{}: {e}", args.key))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| e.to_string())?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    let apns = args.apns_key.as_deref().map(p256_key).transpose()?;
    let vapid = args.vapid_key.as_deref().map(p256_key).transpose()?;
    let fcm = match &args.fcm_account {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
            let j: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            let key = rsa_public(j["private_key"].as_str().unwrap_or(""))
                .map_err(|e| format!("{path}: private_key: {e}"))?;
            Some(Fcm {
                key,
                client_email: j["client_email"].as_str().unwrap_or("").into(),
                project: j["project_id"].as_str().unwrap_or("").into(),
            })
        }
    };
    let log = match &args.log {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("{p}: {e}"))?,
        ),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|e| format!("{}: {e}", args.listen))?;
        let addr: SocketAddr = listener.local_addr().map_err(|e| e.to_string())?;
        let st = Arc::new(State {
            script: Mutex::new(args.script.clone()),
            origin: format!("https://{addr}"),
            args,
            apns,
            fcm,
            vapid,
            access_tokens: Mutex::new(Vec::new()),
            log: Mutex::new(log),
        });
        println!("pushmock listening {addr}");
        let _ = std::io::stdout().flush();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, st) = (acceptor.clone(), st.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req| handle(st.clone(), req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    })
}
