//! The three push providers, exactly as `docs/PUSH.md` describes them: credentials (JWTs signed
//! here, cached and refreshed), the content-free request each wake becomes, and what each status
//! code means. HTTP/2 over TLS through hyper; base URLs and trusted roots are configuration, so
//! tests point every provider at a local server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use ferry_proto::frame::PushProvider;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

use ferry_shards::push::endpoint::AllowList;
use ferry_shards::push::{CREDENTIAL_REFRESH_MIN_AGE_S, Credential, Outcome, Reuse, Wake, usable};

pub use ferry_shards::service::push_wire::{
    APNS_BODY, APNS_PATH_PREFIX, APNS_PRIORITY, APNS_PUSH_TYPE, FCM_SCOPE,
};
/// How long one provider request may take.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Longest an FCM access token is cached, whatever `expires_in` says (Google's last an hour).
pub const FCM_ACCESS_TOKEN_LIFETIME_MAX_S: u64 = 3_600;
/// How long the FCM assertion (the service-account JWT) is valid (Google's maximum).
pub const FCM_ASSERTION_LIFETIME_S: u64 = 3_600;
/// A VAPID JWT is made valid this long (the limit is 24 h) and renewed when less than
/// `VAPID_RENEW_MARGIN_S` is left; an FCM access token when less than `FCM_RENEW_MARGIN_S` is.
/// (A refusal makes a credential anew only once it is older than
/// `CREDENTIAL_REFRESH_MIN_AGE_S`: a burst of 403s, every request in flight with the same stale
/// token, makes one new token, not one each; APNs answers too many token updates with 429
/// TooManyProviderTokenUpdates.)
pub const VAPID_VALID_S: u64 = 12 * 3_600;
pub const VAPID_RENEW_MARGIN_S: u64 = 3_600;
pub const FCM_RENEW_MARGIN_S: u64 = 300;
/// VAPID JWTs cached at once (one per push service origin); past it the cache starts over.
pub const VAPID_CACHED_MAX: usize = 1_024;

/// APNs credentials and settings.
#[derive(Debug)]
pub struct ApnsConfig {
    pub key: p256::ecdsa::SigningKey,
    pub key_id: String,
    pub team_id: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    pub url: String,
    /// A provider token is reused for this long (Apple: between 20 and 60 minutes).
    pub token_refresh_s: u64,
}

/// FCM HTTP v1 credentials (from a service-account JSON file) and settings.
#[derive(Debug)]
pub struct FcmConfig {
    /// The service account's RSA key (PKCS#8), signing RS256 through ring.
    pub key: ring::signature::RsaKeyPair,
    pub client_email: String,
    pub project_id: String,
    pub token_url: String,
    pub url: String,
    /// `high` or `normal` (see docs/PUSH.md on when `high` is right).
    pub priority: String,
    pub ttl_s: u64,
}

/// Web Push VAPID credentials and settings.
#[derive(Debug)]
pub struct WebPushConfig {
    pub key: p256::ecdsa::SigningKey,
    /// `mailto:` or `https:` contact of the operator (the JWT `sub`).
    pub subject: String,
    pub ttl_s: u64,
    /// `push.webpush_origins_allowed`: checked again right before each POST.
    pub origins_allowed: AllowList,
}

/// What the service core can push through.
#[derive(Debug, Default)]
pub struct Providers {
    pub apns: Option<ApnsConfig>,
    pub fcm: Option<FcmConfig>,
    pub webpush: Option<WebPushConfig>,
}

impl Providers {
    pub fn enabled(&self) -> [bool; 3] {
        [
            self.apns.is_some(),
            self.fcm.is_some(),
            self.webpush.is_some(),
        ]
    }
}

/// Maps a provider's status (and APNs' reason) to what to do.
pub fn classify(provider: PushProvider, status: u16, body: &[u8]) -> Outcome {
    let reason = String::from_utf8_lossy(body);
    match (provider, status) {
        (_, 200..=299) => Outcome::Sent,
        (PushProvider::Apns, 410) => Outcome::Gone,
        (PushProvider::Apns, 400) if reason.contains("BadDeviceToken") => Outcome::Gone,
        (PushProvider::Apns, 403) => Outcome::Refresh,
        (PushProvider::Fcm, 404) => Outcome::Gone,
        (PushProvider::Fcm, 400) if reason.contains("UNREGISTERED") => Outcome::Gone,
        (PushProvider::Fcm, 401 | 403) => Outcome::Refresh,
        (PushProvider::WebPush, 404 | 410) => Outcome::Gone,
        (PushProvider::WebPush, 401 | 403) => Outcome::Refresh,
        (_, 429 | 500..=599) => Outcome::Retry { after_s: None },
        _ => Outcome::Failed,
    }
}

fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// A JWT's signing input: header and claims serialised by serde_json (config strings and
/// tokens become JSON strings, never text spliced into JSON), base64url, joined by a dot.
fn signing_input(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// An ES256 JWT.
pub fn es256_jwt(
    key: &p256::ecdsa::SigningKey,
    header: &serde_json::Value,
    claims: &serde_json::Value,
) -> String {
    use p256::ecdsa::signature::Signer;
    let input = signing_input(header, claims);
    let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
    format!("{input}.{}", b64(&sig.to_bytes()))
}

/// RSASSA-PKCS1-v1_5 with SHA-256 (RS256), through ring. Fails only if the system RNG (which
/// blinds the private-key operation) does.
pub fn rs256_sign(
    key: &ring::signature::RsaKeyPair,
    message: &[u8],
) -> Result<Vec<u8>, ring::error::Unspecified> {
    let mut sig = vec![0; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        message,
        &mut sig,
    )?;
    Ok(sig)
}

/// An RS256 JWT.
pub fn rs256_jwt(
    key: &ring::signature::RsaKeyPair,
    header: &serde_json::Value,
    claims: &serde_json::Value,
) -> Result<String, ring::error::Unspecified> {
    let input = signing_input(header, claims);
    let sig = rs256_sign(key, input.as_bytes())?;
    Ok(format!("{input}.{}", b64(&sig)))
}

/// An RSA private key from PKCS#8 PEM (a service account's `private_key`).
pub fn rsa_key_from_pem(pem: &str) -> anyhow::Result<ring::signature::RsaKeyPair> {
    use anyhow::Context;
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
        .context("not a PKCS#8 PEM private key")?;
    ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
        .map_err(|e| anyhow::anyhow!("not an RSA key of 2048 to 8192 bits ({e})"))
}

/// The APNs provider token: ES256, `kid` the key id, `iss` the team id.
pub fn apns_provider_token(cfg: &ApnsConfig, now_unix_s: u64) -> String {
    es256_jwt(
        &cfg.key,
        &json!({"alg": "ES256", "kid": cfg.key_id}),
        &json!({"iss": cfg.team_id, "iat": now_unix_s}),
    )
}

/// The FCM OAuth2 assertion: RS256, signed with the service account's key, valid
/// [`FCM_ASSERTION_LIFETIME_S`].
pub fn fcm_assertion(cfg: &FcmConfig, now_unix_s: u64) -> Result<String, ring::error::Unspecified> {
    rs256_jwt(
        &cfg.key,
        &json!({"alg": "RS256", "typ": "JWT"}),
        &json!({
            "iss": cfg.client_email,
            "scope": FCM_SCOPE,
            "aud": cfg.token_url,
            "iat": now_unix_s,
            "exp": now_unix_s + FCM_ASSERTION_LIFETIME_S,
        }),
    )
}

/// The VAPID JWT (RFC 8292) for one push service: `aud` its origin, `sub` the operator's contact.
pub fn vapid_token(cfg: &WebPushConfig, origin: &str, exp_unix_s: u64) -> String {
    es256_jwt(
        &cfg.key,
        &json!({"typ": "JWT", "alg": "ES256"}),
        &json!({"aud": origin, "exp": exp_unix_s, "sub": cfg.subject}),
    )
}

/// The uncompressed P-256 public key of a VAPID key, base64url (the `k=` of the header).
pub fn vapid_public(key: &p256::ecdsa::SigningKey) -> String {
    b64(key.verifying_key().to_encoded_point(false).as_bytes())
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

fn reuse(margin_s: u64) -> Reuse {
    Reuse {
        margin_s,
        min_age_s: CREDENTIAL_REFRESH_MIN_AGE_S,
    }
}

/// Cached credentials (`ferry_shards::push::Credential` says when one is used again).
#[derive(Debug, Default)]
struct Tokens {
    apns: Option<Credential<String>>,
    fcm: Option<Credential<String>>,
    /// By push service origin.
    vapid: ahash::AHashMap<String, Credential<String>>,
}

/// Sends wakes. Cloned into each request task.
#[derive(Clone, Debug)]
pub struct Sender {
    client: HttpClient,
    providers: Arc<Providers>,
    tokens: Arc<Mutex<Tokens>>,
    clock: ferry_shards::clock::Clock,
}

/// Builds the HTTPS client: HTTP/2 (and HTTP/1.1 for token endpoints that want it) over TLS 1.2+
/// with the Mozilla roots, or with only the roots of `ca_file` when it is set.
pub fn https_client(ca_file: Option<&std::path::Path>) -> anyhow::Result<HttpClient> {
    use anyhow::Context;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading push.ca_file {}", path.display()))?;
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.with_context(|| format!("parsing {}", path.display()))?;
                roots
                    .add(cert)
                    .with_context(|| format!("adding a root from {}", path.display()))?;
            }
            if roots.is_empty() {
                anyhow::bail!("push.ca_file {} holds no certificate", path.display());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_all_versions()
        .build();
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(https))
}

impl Sender {
    pub fn new(
        client: HttpClient,
        providers: Arc<Providers>,
        clock: ferry_shards::clock::Clock,
    ) -> Self {
        Sender {
            client,
            providers,
            tokens: Arc::new(Mutex::new(Tokens::default())),
            clock,
        }
    }

    fn unix_s(&self) -> u64 {
        self.clock.now().unix_s
    }

    fn apns_jwt(&self, cfg: &ApnsConfig, refresh: bool) -> String {
        let now = self.unix_s();
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(jwt) = usable(t.apns.as_ref(), now, refresh, reuse(0)) {
            return jwt.clone();
        }
        let jwt = apns_provider_token(cfg, now);
        t.apns = Some(Credential {
            value: jwt.clone(),
            issued_s: now,
            expires_s: now + cfg.token_refresh_s,
        });
        jwt
    }

    fn vapid_jwt(&self, cfg: &WebPushConfig, origin: &str, refresh: bool) -> String {
        let now = self.unix_s();
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(jwt) = usable(
            t.vapid.get(origin),
            now,
            refresh,
            reuse(VAPID_RENEW_MARGIN_S),
        ) {
            return jwt.clone();
        }
        let exp = now + VAPID_VALID_S;
        let jwt = vapid_token(cfg, origin, exp);
        if t.vapid.len() >= VAPID_CACHED_MAX {
            t.vapid.clear();
        }
        t.vapid.insert(
            origin.to_string(),
            Credential {
                value: jwt.clone(),
                issued_s: now,
                expires_s: exp,
            },
        );
        jwt
    }

    /// The FCM OAuth2 access token: from the cache, or exchanged for a service-account JWT.
    async fn fcm_token(&self, cfg: &FcmConfig, refresh: bool) -> Result<String, Outcome> {
        let now = self.unix_s();
        {
            let t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(tok) = usable(t.fcm.as_ref(), now, refresh, reuse(FCM_RENEW_MARGIN_S)) {
                return Ok(tok.clone());
            }
        }
        let assertion = fcm_assertion(cfg, now).map_err(|_| {
            tracing::warn!("FCM assertion not signed: the system RNG failed");
            Outcome::Retry { after_s: None }
        })?;
        let body = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
        );
        let req = http::Request::post(&cfg.token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| Outcome::Failed)?;
        let (status, body) = self.exchange(req).await?;
        if status != 200 {
            tracing::warn!(status, "FCM OAuth2 token request refused");
            return Err(if status == 429 || status >= 500 {
                Outcome::Retry { after_s: None }
            } else {
                Outcome::Failed
            });
        }
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|_| Outcome::Failed)?;
        let tok = v["access_token"]
            .as_str()
            .ok_or(Outcome::Failed)?
            .to_string();
        let expires_in = v["expires_in"]
            .as_u64()
            .unwrap_or(FCM_ACCESS_TOKEN_LIFETIME_MAX_S)
            .min(FCM_ACCESS_TOKEN_LIFETIME_MAX_S);
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        t.fcm = Some(Credential {
            value: tok.clone(),
            issued_s: now,
            expires_s: now + expires_in,
        });
        Ok(tok)
    }

    async fn exchange(&self, req: http::Request<Full<Bytes>>) -> Result<(u16, Bytes), Outcome> {
        let fut = async {
            let resp = self.client.request(req).await.map_err(|e| {
                tracing::debug!(error = %e, "push request failed");
                Outcome::Retry { after_s: None }
            })?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|_| Outcome::Retry { after_s: None })?
                .to_bytes();
            if let (Some(s), 429 | 500..=599) = (retry_after, status) {
                return Err(Outcome::Retry { after_s: Some(s) });
            }
            Ok((status, body))
        };
        tokio::time::timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), fut)
            .await
            .unwrap_or(Err(Outcome::Retry { after_s: None }))
    }

    /// Sends one content-free wake. `refresh` forces new credentials (after a `Refresh`).
    pub async fn send(&self, wake: &Wake, refresh: bool) -> Outcome {
        let req = match self.request(wake, refresh).await {
            Ok(r) => r,
            Err(o) => return o,
        };
        match self.exchange(req).await {
            Ok((status, body)) => classify(wake.provider, status, &body),
            Err(o) => o,
        }
    }

    async fn request(
        &self,
        wake: &Wake,
        refresh: bool,
    ) -> Result<http::Request<Full<Bytes>>, Outcome> {
        let p = &self.providers;
        let req = match wake.provider {
            PushProvider::Apns => {
                let cfg = p.apns.as_ref().ok_or(Outcome::Failed)?;
                let jwt = self.apns_jwt(cfg, refresh);
                http::Request::post(format!(
                    "{}{APNS_PATH_PREFIX}{}",
                    cfg.url.trim_end_matches('/'),
                    wake.token
                ))
                .header("authorization", format!("bearer {jwt}"))
                .header("apns-topic", &cfg.topic)
                .header("apns-push-type", APNS_PUSH_TYPE)
                .header("apns-priority", APNS_PRIORITY)
                .header("apns-collapse-id", "w")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(APNS_BODY.as_bytes())))
            }
            PushProvider::Fcm => {
                let cfg = p.fcm.as_ref().ok_or(Outcome::Failed)?;
                let tok = self.fcm_token(cfg, refresh).await?;
                let body = serde_json::json!({
                    "message": {
                        "token": wake.token,
                        "data": {},
                        "android": {
                            "priority": cfg.priority,
                            "ttl": format!("{}s", cfg.ttl_s),
                            "collapse_key": "w",
                        }
                    }
                });
                http::Request::post(format!(
                    "{}/v1/projects/{}/messages:send",
                    cfg.url.trim_end_matches('/'),
                    cfg.project_id
                ))
                .header("authorization", format!("Bearer {tok}"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
            }
            PushProvider::WebPush => {
                let cfg = p.webpush.as_ref().ok_or(Outcome::Failed)?;
                // The registry only holds endpoints the list allows, normalised; checked again
                // here, where the request is made, and only the parsed form is sent to.
                let endpoint = cfg
                    .origins_allowed
                    .endpoint(&wake.token)
                    .map_err(|_| Outcome::Gone)?;
                let jwt = self.vapid_jwt(cfg, &endpoint.origin(), refresh);
                http::Request::post(endpoint.uri().clone())
                    .header(
                        "authorization",
                        format!("vapid t={jwt}, k={}", vapid_public(&cfg.key)),
                    )
                    .header("ttl", cfg.ttl_s.to_string())
                    .header("urgency", "normal")
                    .header("topic", "w")
                    .header("content-length", "0")
                    .body(Full::new(Bytes::new()))
            }
        };
        req.map_err(|_| Outcome::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_mean_what_the_providers_document() {
        use PushProvider::*;
        assert_eq!(classify(Apns, 200, b""), Outcome::Sent);
        assert_eq!(classify(WebPush, 201, b""), Outcome::Sent);
        assert_eq!(
            classify(Apns, 410, b"{\"reason\":\"Unregistered\"}"),
            Outcome::Gone
        );
        assert_eq!(
            classify(Apns, 400, b"{\"reason\":\"BadDeviceToken\"}"),
            Outcome::Gone
        );
        assert_eq!(
            classify(Apns, 400, b"{\"reason\":\"BadTopic\"}"),
            Outcome::Failed
        );
        assert_eq!(
            classify(Apns, 403, b"{\"reason\":\"ExpiredProviderToken\"}"),
            Outcome::Refresh
        );
        assert_eq!(classify(Fcm, 404, b""), Outcome::Gone);
        assert_eq!(classify(Fcm, 401, b""), Outcome::Refresh);
        assert_eq!(classify(WebPush, 410, b""), Outcome::Gone);
        for p in [Apns, Fcm, WebPush] {
            assert_eq!(classify(p, 429, b""), Outcome::Retry { after_s: None });
            assert_eq!(classify(p, 503, b""), Outcome::Retry { after_s: None });
        }
    }

    /// The test service account's key (bench/src/fcm-test-key.pem, made by `openssl genpkey`).
    const FCM_TEST_KEY: &str = include_str!("../../bench/src/fcm-test-key.pem");
    /// Its public key as OpenSSL derives it (`openssl rsa -RSAPublicKey_out -outform DER`),
    /// base64url.
    const FCM_TEST_PUBLIC: &str = "MIIBCgKCAQEAsM4vxnWwA2QdW0hZt4T01whtK3n6FYhH7jBLjB2gQiNbhUqKwzLrmd069mcTrdm15DJfSfIBdJEA_ektC6EzJkzLmQwVELBUSXPE1QLpbNHPO6CgO9DhCz4NxBIAij4Pkq5WmBBT48fQuUIql-AYX9CwaphueDLOyXDtmH9LnPLOtEapVeP4RR9t9dgB13rXlbLQP5tXokseqBfzlZyWp08Qio-kyWRkprhGeafmZjrsPzgpTd2pXx_4lvH96wprCJn_imq23BiDlJeQOttoh2Gdb0Fio-mfloDl1plhLUfIBrZjhjFt0WE2Y_VHKBfmH5iY5wEUYC2Q2bFxkc20_QIDAQAB";
    /// `openssl dgst -sha256 -sign fcm-test-key.pem` of `ferry rs256 known answer`, base64url
    /// (PKCS#1 v1.5 signatures are deterministic).
    const FCM_TEST_SIGNATURE: &str = "hjoW2WM3ePA3d51KuQJSFIi7N-CqHoHYcvHlrSzxr5hBifi-hDqlkhdnPVfflckMgmgqUrmaT2LvzQLnp0dUW21h3FfsjqOCA0Ckn0pjSfnw-Q_3HiLxm8Im0yOXNHIPX__aGhxWj_j_kQ8_X427mb6u5dPffo8eu2KZC1TMAxUjUV7kkSaUzy2DPHN_ghDNRVv7F31zkKEoItcpURE0JFGMnvp2KLU1GHg8SjuudyEGfolSIgEy24TQfoT8XcE3rcgMK127I1Se1YYm6v1C6ZrygG12X1pGN4KD4wVwZDS7kn9ET0wUbpF_GbyD3OIxr-RyZ0uBIn2J0nK9Ww7oag";
    /// A config string JSON splicing would break: quotes, backslashes, newlines, and what
    /// would add a claim of its own.
    const HOSTILE: &str = "a\"b\\c\nd\r\t\u{0}\",\"aud\":\"https://evil.example";

    fn fcm_config(client_email: &str, token_url: &str) -> FcmConfig {
        FcmConfig {
            key: rsa_key_from_pem(FCM_TEST_KEY).unwrap(),
            client_email: client_email.into(),
            project_id: "p".into(),
            token_url: token_url.into(),
            url: "https://fcm.example".into(),
            priority: "normal".into(),
            ttl_s: 60,
        }
    }

    /// (header, claims, signing input, signature) of a compact JWT.
    fn decode(jwt: &str) -> (serde_json::Value, serde_json::Value, String, Vec<u8>) {
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3, "{jwt}");
        let json = |p: &str| serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap();
        (
            json(parts[0]),
            json(parts[1]),
            format!("{}.{}", parts[0], parts[1]),
            URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
        )
    }

    #[test]
    fn jwts_carry_config_strings_as_exact_json_values() {
        let key = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let apns = ApnsConfig {
            key: key.clone(),
            key_id: HOSTILE.into(),
            team_id: format!("team{HOSTILE}"),
            topic: "t".into(),
            url: "https://apns.example".into(),
            token_refresh_s: 1_200,
        };
        let (h, c, _, _) = decode(&apns_provider_token(&apns, 1_700_000_000));
        assert_eq!(h, json!({"alg": "ES256", "kid": HOSTILE}));
        assert_eq!(
            c,
            json!({"iss": format!("team{HOSTILE}"), "iat": 1_700_000_000u64})
        );

        let webpush = WebPushConfig {
            key,
            subject: format!("mailto:{HOSTILE}"),
            ttl_s: 60,
            origins_allowed: AllowList::default(),
        };
        let (h, c, _, _) = decode(&vapid_token(&webpush, "https://push.example", 99));
        assert_eq!(h, json!({"typ": "JWT", "alg": "ES256"}));
        assert_eq!(
            c,
            json!({"aud": "https://push.example", "exp": 99, "sub": format!("mailto:{HOSTILE}")})
        );

        let fcm = fcm_config(HOSTILE, &format!("https://oauth.example/{HOSTILE}"));
        let (h, c, _, _) = decode(&fcm_assertion(&fcm, 1_000).unwrap());
        assert_eq!(h, json!({"alg": "RS256", "typ": "JWT"}));
        assert_eq!(
            c,
            json!({
                "iss": HOSTILE,
                "scope": FCM_SCOPE,
                "aud": format!("https://oauth.example/{HOSTILE}"),
                "iat": 1_000,
                "exp": 1_000 + FCM_ASSERTION_LIFETIME_S,
            })
        );
    }

    #[test]
    fn rs256_matches_openssl_and_verifies_with_its_public_key() {
        use ring::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
        let key = rsa_key_from_pem(FCM_TEST_KEY).unwrap();
        let openssl_public = URL_SAFE_NO_PAD.decode(FCM_TEST_PUBLIC).unwrap();
        assert_eq!(key.public().as_ref(), openssl_public.as_slice());
        // PKCS#1 v1.5 is deterministic: the very bytes OpenSSL signs.
        assert_eq!(
            b64(&rs256_sign(&key, b"ferry rs256 known answer").unwrap()),
            FCM_TEST_SIGNATURE
        );
        let fcm = fcm_config("ferry@p.iam.gserviceaccount.com", "https://oauth.example/t");
        let (_, _, input, sig) = decode(&fcm_assertion(&fcm, 1_000).unwrap());
        let public = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &openssl_public);
        public.verify(input.as_bytes(), &sig).unwrap();
        let mut forged = input.into_bytes();
        forged[0] ^= 1;
        assert!(public.verify(&forged, &sig).is_err());
        assert!(
            rsa_key_from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .is_err()
        );
    }

    #[test]
    fn es256_jwts_verify_with_the_public_key() {
        use p256::ecdsa::signature::Verifier;
        let key = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let jwt = es256_jwt(&key, &json!({"alg": "ES256"}), &json!({"iss": "T"}));
        let (_, _, input, sig) = decode(&jwt);
        let sig = p256::ecdsa::Signature::from_slice(&sig).unwrap();
        key.verifying_key().verify(input.as_bytes(), &sig).unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.decode(vapid_public(&key)).unwrap().len(),
            65
        );
    }
}
