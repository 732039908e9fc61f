//! Where a node is and whom to trust there: a node URL, `ferry://host[:port]` (plain TCP) or
//! `ferry+tls://host[:port]` (TLS 1.3), parsed with `url`; the host is resolved when connecting
//! and every address it names is tried in turn; a TLS node's certificate must chain to Mozilla's
//! root program (built in, `webpki-roots`) or to the CAs the application names ([`Trust`]).
//!
//! [`crate::Client::connect_url`] is the way in; nothing here touches a socket except
//! [`NodeUrl::socket_addrs`] (a DNS lookup).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;

use crate::SdkError;

/// The scheme of a plain-TCP node URL (loopback, or behind a TLS-terminating proxy).
pub const SCHEME_PLAIN: &str = "ferry";
/// The scheme of a TLS 1.3 node URL: what a node on the internet serves.
pub const SCHEME_TLS: &str = "ferry+tls";
/// The port of a `ferry://` URL that names none: the node's default plain listener.
pub const PORT_PLAIN_DEFAULT: u16 = 7700;
/// The port of a `ferry+tls://` URL that names none: the TLS listener of the deployment files
/// (Dockerfile, `docs/CONFIGURATION.md`).
pub const PORT_TLS_DEFAULT: u16 = 7443;

/// A node's address: `ferry://host[:port]` or `ferry+tls://host[:port]`, where `host` is a DNS
/// name, an IPv4 address or a bracketed IPv6 address and the port defaults to
/// [`PORT_PLAIN_DEFAULT`] or [`PORT_TLS_DEFAULT`]. A bare `IP:PORT` (`127.0.0.1:7700`) is taken
/// as `ferry://` for convenience. Nothing else (user, path, query, fragment) may appear.
///
/// ```
/// let node: ferry_sdk::NodeUrl = "ferry+tls://relay.example".parse().unwrap();
/// assert_eq!((node.tls, node.host.as_str(), node.port), (true, "relay.example", 7443));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeUrl {
    /// TLS 1.3 (`ferry+tls`) or plain TCP (`ferry`).
    pub tls: bool,
    /// A DNS name (lower case) or an IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

/// Why a node URL was refused. Each message quotes the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UrlError {
    /// No `scheme://` and not a bare `IP:PORT`.
    NoScheme { url: String },
    /// Not a URL (the `url` crate's reason: an empty host, a bad port, a forbidden character).
    Parse {
        url: String,
        source: url::ParseError,
    },
    /// A scheme other than `ferry` and `ferry+tls`.
    Scheme { url: String, scheme: String },
    /// No host.
    NoHost { url: String },
    /// A host that is neither a DNS name nor an IP address.
    Host { url: String, host: String },
    /// A user, path, query or fragment (named by `part`): a node URL has none.
    Extra { url: String, part: &'static str },
}

impl std::fmt::Display for UrlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const FORM: &str = "ferry://HOST[:PORT] or ferry+tls://HOST[:PORT]";
        match self {
            UrlError::NoScheme { url } => {
                write!(f, "node URL {url:?} has no scheme: write {FORM}")
            }
            UrlError::Parse { url, source } => {
                write!(
                    f,
                    "node URL {url:?} does not parse ({source}): write {FORM}"
                )
            }
            UrlError::Scheme { url, scheme } => write!(
                f,
                "node URL {url:?}: unknown scheme {scheme:?} (ferry:// is plain TCP, ferry+tls:// \
                 is TLS)"
            ),
            UrlError::NoHost { url } => write!(f, "node URL {url:?} names no host: write {FORM}"),
            UrlError::Host { url, host } => write!(
                f,
                "node URL {url:?}: {host:?} is not a host name or an IP address"
            ),
            UrlError::Extra { url, part } => {
                write!(
                    f,
                    "node URL {url:?} has a {part}: a node URL is {FORM} only"
                )
            }
        }
    }
}

impl std::error::Error for UrlError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UrlError::Parse { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl std::str::FromStr for NodeUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, UrlError> {
        let s = s.trim();
        let url = || s.to_string();
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(NodeUrl {
                tls: false,
                host: addr.ip().to_string(),
                port: addr.port(),
            });
        }
        if !s.contains("://") {
            return Err(UrlError::NoScheme { url: url() });
        }
        let u = url::Url::parse(s).map_err(|source| UrlError::Parse { url: url(), source })?;
        let (tls, port_default) = match u.scheme() {
            SCHEME_PLAIN => (false, PORT_PLAIN_DEFAULT),
            SCHEME_TLS => (true, PORT_TLS_DEFAULT),
            other => {
                return Err(UrlError::Scheme {
                    url: url(),
                    scheme: other.to_string(),
                });
            }
        };
        let host = match u.host() {
            None => return Err(UrlError::NoHost { url: url() }),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            // `ferry` is not a special scheme to `url`, so an IPv4 address arrives as an opaque
            // host like any name.
            Some(url::Host::Domain(d)) => match d.parse::<IpAddr>() {
                Ok(ip) => ip.to_string(),
                Err(_) if d.is_empty() => return Err(UrlError::NoHost { url: url() }),
                Err(_) => {
                    let name = d.to_ascii_lowercase();
                    if rustls_pki_types::DnsName::try_from(name.as_str()).is_err() {
                        return Err(UrlError::Host {
                            url: url(),
                            host: d.to_string(),
                        });
                    }
                    name
                }
            },
        };
        let extra = if !u.username().is_empty() || u.password().is_some() {
            Some("user name")
        } else if !matches!(u.path(), "" | "/") {
            Some("path")
        } else if u.query().is_some() {
            Some("query")
        } else if u.fragment().is_some() {
            Some("fragment")
        } else {
            None
        };
        if let Some(part) = extra {
            return Err(UrlError::Extra { url: url(), part });
        }
        Ok(NodeUrl {
            tls,
            host,
            port: u.port().unwrap_or(port_default),
        })
    }
}

impl std::fmt::Display for NodeUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { SCHEME_TLS } else { SCHEME_PLAIN };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl NodeUrl {
    /// The addresses the host names, in the resolver's order (a DNS lookup for a name: this
    /// blocks).
    pub fn socket_addrs(&self) -> Result<Vec<SocketAddr>, SdkError> {
        let resolve = |source| SdkError::Resolve {
            host: self.host.clone(),
            source,
        };
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(resolve)?
            .collect();
        if addrs.is_empty() {
            return Err(resolve(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the name has no address",
            )));
        }
        Ok(addrs)
    }
}

/// The certificate authorities a `ferry+tls` node's certificate must chain to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Trust {
    /// Mozilla's root program (built in, `webpki-roots`): a node whose certificate comes from a
    /// public CA such as Let's Encrypt.
    #[default]
    PublicRoots,
    /// The PEM certificates in this file: a private CA, or the node's self-signed certificate.
    CaFile(PathBuf),
    /// PEM certificates in memory (a CA the application ships).
    CaPem(Vec<u8>),
}

impl Trust {
    /// The root store, or why there is none: an unreadable file, no certificate in it, or one
    /// that does not parse.
    fn roots(&self) -> Result<rustls::RootCertStore, SdkError> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let (origin, pem) = match self {
            Trust::PublicRoots => {
                return Ok(rustls::RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                });
            }
            Trust::CaFile(path) => (
                path.display().to_string(),
                std::fs::read(path).map_err(|e| SdkError::Ca {
                    origin: path.display().to_string(),
                    reason: e.to_string(),
                })?,
            ),
            Trust::CaPem(pem) => ("the CA certificates given".to_string(), pem.clone()),
        };
        let bad = |reason: String| SdkError::Ca {
            origin: origin.clone(),
            reason,
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| bad(format!("not PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| bad(format!("not a CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(bad("no PEM certificate in it".to_string()));
        }
        Ok(roots)
    }
}

/// A TLS 1.3 session to start over a new TCP connection, checked against `trust` for `name`.
pub(crate) fn tls_session(trust: &Trust, name: &str) -> Result<rustls::ClientConnection, SdkError> {
    let server_name = rustls_pki_types::ServerName::try_from(name.to_string()).map_err(|_| {
        SdkError::ServerName {
            name: name.to_string(),
        }
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(SdkError::Tls)?
        .with_root_certificates(trust.roots()?)
        .with_no_client_auth();
    rustls::ClientConnection::new(Arc::new(cfg), server_name).map_err(SdkError::Tls)
}
