//! Test keys for the three push providers and a running `ferry-pushmock` that checks every
//! request against them (the JWT signatures, the required headers, no content).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use p256::pkcs8::{EncodePrivateKey, LineEnding};

pub const APNS_KEY_ID: &str = "KEYID12345";
pub const APNS_TEAM: &str = "TEAM123456";
pub const APNS_TOPIC: &str = "org.example.chat";
pub const FCM_PROJECT: &str = "ferry-test";

/// Key files for every provider, and the mock's certificate (which the node trusts).
pub struct PushKeys {
    pub apns_key: PathBuf,
    pub fcm_account: PathBuf,
    pub vapid_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl PushKeys {
    pub fn write(dir: &Path) -> PushKeys {
        let p256_pem = |name: &str| {
            let sk = p256::SecretKey::random(&mut rand_core::OsRng);
            let path = dir.join(name);
            std::fs::write(&path, sk.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
            path
        };
        let apns_key = p256_pem("apns.p8");
        let vapid_key = p256_pem("vapid.pem");
        let rsa = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).unwrap();
        let rsa_pem =
            rsa::pkcs8::EncodePrivateKey::to_pkcs8_pem(&rsa, rsa::pkcs8::LineEnding::LF).unwrap();
        let account = serde_json::json!({
            "type": "service_account",
            "project_id": FCM_PROJECT,
            "private_key": rsa_pem.as_str(),
            "client_email": "ferry@ferry-test.iam.gserviceaccount.com",
            // Replaced by push.fcm_token_url in the tests (the mock's port is not known yet).
            "token_uri": "https://oauth2.googleapis.com/token",
        });
        let fcm_account = dir.join("fcm.json");
        std::fs::write(&fcm_account, account.to_string()).unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let (cert_path, key_path) = (dir.join("mock-cert.pem"), dir.join("mock-key.pem"));
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
        PushKeys {
            apns_key,
            fcm_account,
            vapid_key,
            cert: cert_path,
            key: key_path,
        }
    }
}

pub fn pushmock_bin() -> PathBuf {
    let p = PathBuf::from(super::ferry_bin()).with_file_name("ferry-pushmock");
    assert!(
        p.exists(),
        "{} missing: build it with `cargo build --workspace --bins`",
        p.display()
    );
    p
}

pub struct PushMock {
    child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl PushMock {
    /// Starts the mock; `script` maps token parts to status sequences, `forbid` lists strings
    /// that must never appear in a request.
    pub fn start(dir: &Path, keys: &PushKeys, script: &[(&str, &str)], forbid: &[String]) -> Self {
        Self::start_with(dir, keys, script, forbid, 0)
    }

    pub fn start_with(
        dir: &Path,
        keys: &PushKeys,
        script: &[(&str, &str)],
        forbid: &[String],
        delay_ms: u64,
    ) -> Self {
        let log = dir.join(format!("pushmock-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&log);
        let mut cmd = Command::new(pushmock_bin());
        cmd.arg("--cert")
            .arg(&keys.cert)
            .arg("--key")
            .arg(&keys.key)
            .arg("--log")
            .arg(&log)
            .arg("--apns-key")
            .arg(&keys.apns_key)
            .args(["--apns-key-id", APNS_KEY_ID, "--apns-team", APNS_TEAM])
            .args(["--apns-topic", APNS_TOPIC])
            .arg("--fcm-account")
            .arg(&keys.fcm_account)
            .arg("--vapid-key")
            .arg(&keys.vapid_key)
            .args(["--delay-ms", &delay_ms.to_string()]);
        for (tok, statuses) in script {
            cmd.arg("--script").arg(format!("{tok}={statuses}"));
        }
        for f in forbid {
            cmd.arg("--forbid").arg(f);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("pushmock listening ")
            .unwrap_or_else(|| panic!("pushmock said {line:?}"))
            .parse()
            .unwrap();
        PushMock { child, addr, log }
    }

    pub fn origin(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// `FERRY_*` variables that point every provider of a node at this mock.
    pub fn node_env(&self, keys: &PushKeys) -> Vec<(String, String)> {
        let o = self.origin();
        let p = |p: &Path| p.display().to_string();
        [
            ("FERRY_PUSH_CA_FILE", p(&keys.cert)),
            ("FERRY_PUSH_APNS_KEY_FILE", p(&keys.apns_key)),
            ("FERRY_PUSH_APNS_KEY_ID", APNS_KEY_ID.into()),
            ("FERRY_PUSH_APNS_TEAM_ID", APNS_TEAM.into()),
            ("FERRY_PUSH_APNS_TOPIC", APNS_TOPIC.into()),
            ("FERRY_PUSH_APNS_URL", o.clone()),
            ("FERRY_PUSH_FCM_SERVICE_ACCOUNT_FILE", p(&keys.fcm_account)),
            ("FERRY_PUSH_FCM_URL", o.clone()),
            ("FERRY_PUSH_FCM_TOKEN_URL", format!("{o}/token")),
            ("FERRY_PUSH_WEBPUSH_VAPID_KEY_FILE", p(&keys.vapid_key)),
            (
                "FERRY_PUSH_WEBPUSH_SUBJECT",
                "mailto:ops@example.com".into(),
            ),
            ("FERRY_PUSH_WEBPUSH_ORIGINS_ALLOWED", o),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Every request recorded so far.
    pub fn records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until `n` recorded requests match `pred`; returns them.
    pub fn wait_for(
        &self,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let got: Vec<_> = self.records().into_iter().filter(|r| pred(r)).collect();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PushMock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
