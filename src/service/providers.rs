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

use super::push::{Wake, https_origin};

/// The body of every APNs wake: a background push with no content.
pub const APNS_BODY: &str = r#"{"aps":{"content-available":1}}"#;
/// OAuth2 scope of FCM HTTP v1.
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// How long one provider request may take.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// A credential younger than this is not replaced on a refusal: a burst of 403s (every request
/// in flight with the same stale token) makes one new token, not one each (APNs answers too
/// many token updates with 429 TooManyProviderTokenUpdates).
pub const CREDENTIAL_REFRESH_MIN_AGE_S: u64 = 60;

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
    pub key: rsa::RsaPrivateKey,
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

/// How a provider answered one wake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    /// The token is no longer valid: delete it.
    Gone,
    /// Back off and retry (429, 5xx, network errors); `Retry-After` when given.
    Retry {
        after_s: Option<u64>,
    },
    /// Our credential was refused or is stale: refresh it and retry once.
    Refresh,
    /// Refused for another reason (counted, not retried).
    Failed,
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

/// An ES256 JWT (header and claims as JSON text).
pub fn es256_jwt(key: &p256::ecdsa::SigningKey, header: &str, claims: &str) -> String {
    use p256::ecdsa::signature::Signer;
    let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
    format!("{input}.{}", b64(&sig.to_bytes()))
}

/// An RS256 JWT (header and claims as JSON text).
pub fn rs256_jwt(key: &rsa::RsaPrivateKey, header: &str, claims: &str) -> String {
    use rsa::signature::{SignatureEncoding, Signer};
    let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let signer = rsa::pkcs1v15::SigningKey::<rsa::sha2::Sha256>::new(key.clone());
    let sig = signer.sign(input.as_bytes());
    format!("{input}.{}", b64(&sig.to_bytes()))
}

/// The uncompressed P-256 public key of a VAPID key, base64url (the `k=` of the header).
pub fn vapid_public(key: &p256::ecdsa::SigningKey) -> String {
    b64(key.verifying_key().to_encoded_point(false).as_bytes())
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Cached credentials: (token, issued or expiry Unix s).
#[derive(Debug, Default)]
struct Tokens {
    apns: Option<(String, u64)>,
    fcm: Option<(String, u64)>,
    /// origin → (JWT, expiry).
    vapid: ahash::AHashMap<String, (String, u64)>,
    /// When the FCM access token was obtained.
    fcm_obtained: u64,
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
        let fresh = |iat: u64| now < iat + CREDENTIAL_REFRESH_MIN_AGE_S;
        match &t.apns {
            Some((jwt, iat)) if (!refresh || fresh(*iat)) && now < iat + cfg.token_refresh_s => {
                jwt.clone()
            }
            _ => {
                let header = format!(r#"{{"alg":"ES256","kid":"{}"}}"#, cfg.key_id);
                let claims = format!(r#"{{"iss":"{}","iat":{now}}}"#, cfg.team_id);
                let jwt = es256_jwt(&cfg.key, &header, &claims);
                t.apns = Some((jwt.clone(), now));
                jwt
            }
        }
    }

    fn vapid_jwt(&self, cfg: &WebPushConfig, origin: &str, refresh: bool) -> String {
        let now = self.unix_s();
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        // Valid 12 h (the limit is 24 h); renewed when less than an hour is left.
        const VALID_S: u64 = 12 * 3_600;
        if let Some((jwt, exp)) = t.vapid.get(origin) {
            let issued = exp.saturating_sub(VALID_S);
            let fresh = now < issued + CREDENTIAL_REFRESH_MIN_AGE_S;
            if (!refresh || fresh) && now + 3_600 < *exp {
                return jwt.clone();
            }
        }
        let exp = now + VALID_S;
        let claims = format!(
            r#"{{"aud":"{origin}","exp":{exp},"sub":"{}"}}"#,
            cfg.subject
        );
        let jwt = es256_jwt(&cfg.key, r#"{"typ":"JWT","alg":"ES256"}"#, &claims);
        if t.vapid.len() > 1_024 {
            t.vapid.clear();
        }
        t.vapid.insert(origin.to_string(), (jwt.clone(), exp));
        jwt
    }

    /// The FCM OAuth2 access token: from the cache, or exchanged for a service-account JWT.
    async fn fcm_token(&self, cfg: &FcmConfig, refresh: bool) -> Result<String, Outcome> {
        let now = self.unix_s();
        {
            let t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((tok, exp)) = &t.fcm {
                let fresh = now < t.fcm_obtained + CREDENTIAL_REFRESH_MIN_AGE_S;
                if (!refresh || fresh) && now + 300 < *exp {
                    return Ok(tok.clone());
                }
            }
        }
        let claims = format!(
            r#"{{"iss":"{}","scope":"{FCM_SCOPE}","aud":"{}","iat":{now},"exp":{}}}"#,
            cfg.client_email,
            cfg.token_url,
            now + 3_600
        );
        let assertion = rs256_jwt(&cfg.key, r#"{"alg":"RS256","typ":"JWT"}"#, &claims);
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
        let expires_in = v["expires_in"].as_u64().unwrap_or(3_600);
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        t.fcm = Some((tok.clone(), now + expires_in));
        t.fcm_obtained = now;
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
                    "{}/3/device/{}",
                    cfg.url.trim_end_matches('/'),
                    wake.token
                ))
                .header("authorization", format!("bearer {jwt}"))
                .header("apns-topic", &cfg.topic)
                .header("apns-push-type", "background")
                .header("apns-priority", "5")
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
                let origin = https_origin(&wake.token).ok_or(Outcome::Gone)?;
                let jwt = self.vapid_jwt(cfg, origin, refresh);
                http::Request::post(wake.token.as_str())
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

    #[test]
    fn jwts_verify_with_the_public_key() {
        use p256::ecdsa::signature::Verifier;
        let key = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let jwt = es256_jwt(&key, r#"{"alg":"ES256"}"#, r#"{"iss":"T"}"#);
        let (input, sig) = jwt.rsplit_once('.').unwrap();
        let sig =
            p256::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(sig).unwrap()).unwrap();
        key.verifying_key().verify(input.as_bytes(), &sig).unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.decode(vapid_public(&key)).unwrap().len(),
            65
        );
    }
}
