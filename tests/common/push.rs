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
/// ring cannot generate RSA keys: the FCM service account uses the push mock's fixed test key.
pub const FCM_TEST_KEY: &str = include_str!("../../bench/src/fcm-test-key.pem");

/// Key files for every provider, a self-signed certificate per provider's mock, and `ca`: the
/// three certificates in one PEM file, which the node trusts.
pub struct PushKeys {
    pub apns_key: PathBuf,
    pub fcm_account: PathBuf,
    pub vapid_key: PathBuf,
    /// (certificate, key) of the APNs, FCM and Web Push mocks.
    pub certs: [(PathBuf, PathBuf); 3],
    pub ca: PathBuf,
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
        let account = serde_json::json!({
            "type": "service_account",
            "project_id": FCM_PROJECT,
            "private_key": FCM_TEST_KEY,
            "client_email": "ferry@ferry-test.iam.gserviceaccount.com",
            // Replaced by push.fcm_token_url in the tests (the mock's port is not known yet).
            "token_uri": "https://oauth2.googleapis.com/token",
        });
        let fcm_account = dir.join("fcm.json");
        std::fs::write(&fcm_account, account.to_string()).unwrap();
        let mut ca = String::new();
        let certs = ["apns", "fcm", "webpush"].map(|name| {
            let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
            let (c, k) = (
                dir.join(format!("{name}-cert.pem")),
                dir.join(format!("{name}-key.pem")),
            );
            std::fs::write(&c, cert.cert.pem()).unwrap();
            std::fs::write(&k, cert.key_pair.serialize_pem()).unwrap();
            ca.push_str(&cert.cert.pem());
            (c, k)
        });
        let ca_path = dir.join("providers-ca.pem");
        std::fs::write(&ca_path, ca).unwrap();
        PushKeys {
            apns_key,
            fcm_account,
            vapid_key,
            certs,
            ca: ca_path,
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
    /// Starts the mock of one provider (0 APNs, 1 FCM, 2 Web Push: its own certificate);
    /// `script` maps token parts to status sequences, `forbid` lists strings that must never
    /// appear in a request.
    pub fn start(
        dir: &Path,
        keys: &PushKeys,
        provider: usize,
        script: &[(&str, &str)],
        forbid: &[String],
    ) -> Self {
        let log = dir.join(format!("pushmock-{provider}.jsonl"));
        let _ = std::fs::remove_file(&log);
        let mut cmd = Command::new(pushmock_bin());
        cmd.arg("--cert")
            .arg(&keys.certs[provider].0)
            .arg("--key")
            .arg(&keys.certs[provider].1)
            .arg("--log")
            .arg(&log)
            .arg("--apns-key")
            .arg(&keys.apns_key)
            .args(["--apns-key-id", APNS_KEY_ID, "--apns-team", APNS_TEAM])
            .args(["--apns-topic", APNS_TOPIC])
            .arg("--fcm-account")
            .arg(&keys.fcm_account)
            .arg("--vapid-key")
            .arg(&keys.vapid_key);
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

    /// Every request recorded so far.
    pub fn records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// One mock per provider, each on its own port with its own certificate.
pub struct Mocks {
    pub apns: PushMock,
    pub fcm: PushMock,
    pub webpush: PushMock,
}

impl Mocks {
    pub fn start(dir: &Path, keys: &PushKeys, script: &[(&str, &str)], forbid: &[String]) -> Self {
        Mocks {
            apns: PushMock::start(dir, keys, 0, script, forbid),
            fcm: PushMock::start(dir, keys, 1, script, forbid),
            webpush: PushMock::start(dir, keys, 2, script, forbid),
        }
    }

    pub fn webpush_origin(&self) -> String {
        self.webpush.origin()
    }

    /// `FERRY_*` variables that point each provider of a node at its mock.
    pub fn node_env(&self, keys: &PushKeys) -> Vec<(String, String)> {
        let p = |p: &Path| p.display().to_string();
        [
            ("FERRY_PUSH_CA_FILE", p(&keys.ca)),
            ("FERRY_PUSH_APNS_KEY_FILE", p(&keys.apns_key)),
            ("FERRY_PUSH_APNS_KEY_ID", APNS_KEY_ID.into()),
            ("FERRY_PUSH_APNS_TEAM_ID", APNS_TEAM.into()),
            ("FERRY_PUSH_APNS_TOPIC", APNS_TOPIC.into()),
            ("FERRY_PUSH_APNS_URL", self.apns.origin()),
            ("FERRY_PUSH_FCM_SERVICE_ACCOUNT_FILE", p(&keys.fcm_account)),
            ("FERRY_PUSH_FCM_URL", self.fcm.origin()),
            (
                "FERRY_PUSH_FCM_TOKEN_URL",
                format!("{}/token", self.fcm.origin()),
            ),
            ("FERRY_PUSH_WEBPUSH_VAPID_KEY_FILE", p(&keys.vapid_key)),
            (
                "FERRY_PUSH_WEBPUSH_SUBJECT",
                "mailto:ops@example.com".into(),
            ),
            ("FERRY_PUSH_WEBPUSH_ORIGINS_ALLOWED", self.webpush.origin()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Every request recorded by the three mocks.
    pub fn records(&self) -> Vec<serde_json::Value> {
        let mut all = self.apns.records();
        all.extend(self.fcm.records());
        all.extend(self.webpush.records());
        all
    }

    /// Waits until `n` recorded requests (over all three mocks) match `pred`; returns them.
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
