//! TLS 1.3 server configuration from PEM files (rustls with the ring provider, TLS 1.3 only),
//! and `ferry dev-cert`: a local CA and a certificate it signs, for test and development nodes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing certificate {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate in {}", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading private key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 unavailable")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    Ok(Arc::new(cfg))
}

/// What `ferry dev-cert` wrote.
#[derive(Debug)]
pub struct DevCert {
    /// The CA certificate clients trust. Its private key is never written: the CA can sign
    /// nothing but the certificate made with it.
    pub ca: PathBuf,
    /// The node's certificate (signed by the CA) and its private key (mode 0600).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Last day (UTC) both certificates are valid, `YYYY-MM-DD`.
    pub not_after: String,
}

/// Days before `now` a dev certificate starts being valid (clocks differ a little).
const DEV_CERT_BACKDATE_DAYS: i64 = 1;
/// How long a dev certificate is valid: 825 days, the longest Apple's platforms accept for a
/// server certificate.
const DEV_CERT_VALIDITY_DAYS: i64 = 825;

/// Writes a throw-away CA (`ca.pem`) and a server certificate for `names` signed by it
/// (`cert.pem`, `key.pem`) into `out`, for TLS on a test or development node. A self-signed
/// certificate made with `openssl req -x509` is a CA certificate, and rustls refuses a CA
/// certificate as a server's own (`CaUsedAsEndEntity`); this chain is what clients expect.
/// Refuses to overwrite any of the three files.
pub fn dev_cert(out: &Path, names: &[String], now_unix_s: u64) -> anyhow::Result<DevCert> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    use std::os::unix::fs::DirBuilderExt;
    if names.is_empty() {
        anyhow::bail!("dev-cert needs at least one --name");
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(out)
        .with_context(|| format!("creating {}", out.display()))?;
    let out = out
        .canonicalize()
        .with_context(|| format!("resolving {}", out.display()))?;
    let (ca_path, cert_path, key_path) = (
        out.join("ca.pem"),
        out.join("cert.pem"),
        out.join("key.pem"),
    );
    for p in [&ca_path, &cert_path, &key_path] {
        if p.exists() {
            anyhow::bail!(
                "{} already exists: remove ca.pem, cert.pem and key.pem there first, or choose another --out",
                p.display()
            );
        }
    }
    let today = i64::try_from(now_unix_s / 86_400).context("clock out of range")?;
    let (not_before, not_after) = (
        civil_date(today - DEV_CERT_BACKDATE_DAYS)?,
        civil_date(today + DEV_CERT_VALIDITY_DAYS)?,
    );
    let validity = |p: &mut CertificateParams| {
        p.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        p.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    };

    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "ferry dev CA (local tests only)");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca);
    let ca = ca.self_signed(&ca_key).context("signing the CA")?;

    let leaf_key = KeyPair::generate().context("generating the node key")?;
    let mut leaf = CertificateParams::new(names.to_vec())
        .with_context(|| format!("names {}", names.join(", ")))?;
    leaf.distinguished_name = rcgen::DistinguishedName::new();
    leaf.distinguished_name
        .push(DnType::CommonName, names[0].as_str());
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut leaf);
    let leaf = leaf
        .signed_by(&leaf_key, &ca, &ca_key)
        .context("signing the node certificate")?;

    write_new(&key_path, leaf_key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert_path, leaf.pem().as_bytes(), 0o644)?;
    write_new(&ca_path, ca.pem().as_bytes(), 0o644)?;
    Ok(DevCert {
        ca: ca_path,
        cert: cert_path,
        key: key_path,
        not_after: format!("{:04}-{:02}-{:02}", not_after.0, not_after.1, not_after.2),
    })
}

/// Creates `path` (never overwriting) with `mode` (less the umask) and `bytes`, synced, and its
/// directory entry synced too (a crash right after must not lose the file it reported made).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| ferry_proto::fsutil::sync_parent(path))
        .with_context(|| format!("writing {}", path.display()))
}

/// The proleptic Gregorian (year, month, day) of `days` since 1970-01-01 (H. Hinnant's
/// `civil_from_days`).
fn civil_date(days: i64) -> anyhow::Result<(i32, u8, u8)> {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146_096
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // 0..=365
    let mp = (5 * doy + 2) / 153; // 0..=11, from March
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    Ok((
        i32::try_from(year).context("year out of range")?,
        u8::try_from(month).context("month out of range")?,
        u8::try_from(day).context("day out of range")?,
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_date(0).unwrap(), (1970, 1, 1));
        assert_eq!(super::civil_date(-1).unwrap(), (1969, 12, 31));
        assert_eq!(super::civil_date(11_016).unwrap(), (2000, 2, 29));
        assert_eq!(super::civil_date(19_723).unwrap(), (2024, 1, 1));
        assert_eq!(super::civil_date(20_513).unwrap(), (2026, 3, 1));
    }
}
