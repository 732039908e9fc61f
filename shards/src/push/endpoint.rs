//! Web Push endpoints. The client names the URL the node will POST its wake to, so an endpoint
//! is parsed (WHATWG URL rules, the `url` crate: percent-decoding and IDNA of the host, `\` as
//! `/`, dot segments), its host compared label by label with `push.webpush_origins_allowed`, and
//! from then on only the normalised URL is stored, signed for and sent to, never the client's
//! string. The same entries are parsed once at config load, so a bad one stops the node by name.
//!
//! What passes: `https`, no userinfo, no fragment, a host of letters, digits and inner hyphens
//! (at most 63 bytes a label, 253 in all, no empty label, so no trailing dot), on the entry's
//! port (443 unless the entry names one). An IP literal passes only when an exact entry names
//! that address and port (tests, private deployments); a wildcard never covers one.

use std::net::IpAddr;

use ferry_proto::limits::PUSH_TOKEN_BYTES_MAX;
use url::{Host, Url};

/// Longest host name DNS can carry (RFC 1035: 255 octets on the wire, 253 as text).
pub const HOST_BYTES_MAX: usize = 253;
/// Longest DNS label (RFC 1035).
pub const HOST_LABEL_BYTES_MAX: usize = 63;
/// The port of an entry that names none.
pub const HTTPS_PORT: u16 = 443;
/// Labels a wildcard entry needs after `*.`: `https://*.com` would allow a whole TLD.
pub const WILDCARD_SUFFIX_LABELS_MIN: usize = 2;

const _: () = assert!(HOST_LABEL_BYTES_MAX < HOST_BYTES_MAX);
const _: () = assert!(HOST_BYTES_MAX < PUSH_TOKEN_BYTES_MAX);

/// Why an endpoint (or an allow-list entry) is refused. Never holds the endpoint itself: its path
/// is the subscription's secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// Spaces and control characters would be dropped by the parser, not refused: refuse them.
    #[error("not printable ASCII")]
    NotPrintableAscii,
    #[error("{bytes} bytes, more than {PUSH_TOKEN_BYTES_MAX}")]
    TooLong { bytes: usize },
    #[error("not a URL")]
    NotAUrl(#[source] url::ParseError),
    #[error("scheme `{scheme}` is not https")]
    NotHttps { scheme: String },
    #[error("has a user name or password")]
    UserInfo,
    #[error("has a fragment")]
    Fragment,
    #[error("has no host")]
    HostMissing,
    #[error("host of {bytes} bytes, more than {HOST_BYTES_MAX}")]
    HostTooLong { bytes: usize },
    #[error("host has an empty label (a trailing dot or `..`)")]
    HostLabelEmpty,
    #[error("host label of {bytes} bytes, more than {HOST_LABEL_BYTES_MAX}")]
    HostLabelTooLong { bytes: usize },
    #[error("host label is not letters, digits and inner hyphens")]
    HostLabelNotLdh,
    #[error("host and port are not in push.webpush_origins_allowed")]
    NotAllowed,
    /// The HTTP client's own parser reads the normalised URL as another host or port.
    #[error("the HTTP client reads another host or port in it")]
    ParsersDisagree,
    #[error("an allowed origin has no path, query or fragment")]
    EntryNotOrigin,
    #[error("a wildcard needs at least {WILDCARD_SUFFIX_LABELS_MIN} labels after `*.`")]
    WildcardTooBroad,
    #[error("a wildcard cannot cover IP addresses")]
    WildcardIp,
}

/// A `push.webpush_origins_allowed` entry that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("push.webpush_origins_allowed entry `{entry}`")]
pub struct AllowListError {
    pub entry: String,
    #[source]
    pub reason: EndpointError,
}

/// A parsed host: a domain as its labels (lowercase ASCII, IDNA done), or an address.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ParsedHost {
    Domain(Vec<String>),
    Ip(IpAddr),
}

/// The host of a parsed URL, refused unless it is a DNS name of letters, digits and hyphens
/// within the DNS limits, or an IP literal.
fn parsed_host(url: &Url) -> Result<ParsedHost, EndpointError> {
    match url.host() {
        None => Err(EndpointError::HostMissing),
        Some(Host::Ipv4(a)) => Ok(ParsedHost::Ip(a.into())),
        Some(Host::Ipv6(a)) => Ok(ParsedHost::Ip(a.into())),
        Some(Host::Domain(d)) => {
            if d.len() > HOST_BYTES_MAX {
                return Err(EndpointError::HostTooLong { bytes: d.len() });
            }
            let labels: Vec<String> = d.split('.').map(str::to_string).collect();
            for label in &labels {
                if label.is_empty() {
                    return Err(EndpointError::HostLabelEmpty);
                }
                if label.len() > HOST_LABEL_BYTES_MAX {
                    return Err(EndpointError::HostLabelTooLong { bytes: label.len() });
                }
                let ldh = label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                if !ldh || label.starts_with('-') || label.ends_with('-') {
                    return Err(EndpointError::HostLabelNotLdh);
                }
            }
            Ok(ParsedHost::Domain(labels))
        }
    }
}

fn https_url(text: &str) -> Result<Url, EndpointError> {
    let url = Url::parse(text).map_err(EndpointError::NotAUrl)?;
    if url.scheme() != "https" {
        return Err(EndpointError::NotHttps {
            scheme: url.scheme().to_string(),
        });
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(EndpointError::UserInfo);
    }
    if url.fragment().is_some() {
        return Err(EndpointError::Fragment);
    }
    Ok(url)
}

/// The hosts one entry allows.
#[derive(Clone, Debug, PartialEq, Eq)]
enum HostRule {
    /// Exactly this host (an exact entry).
    Exact(ParsedHost),
    /// Any domain with at least one more label before these (`https://*.suffix`).
    Under(Vec<String>),
}

/// One parsed entry of `push.webpush_origins_allowed`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct OriginRule {
    host: HostRule,
    port: u16,
}

impl OriginRule {
    fn parse(entry: &str) -> Result<OriginRule, EndpointError> {
        let entry = entry.trim();
        const WILDCARD: &str = "https://*.";
        let wildcard = entry
            .get(..WILDCARD.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(WILDCARD));
        let url = match wildcard {
            true => https_url(&format!("https://{}", &entry[WILDCARD.len()..]))?,
            false => https_url(entry)?,
        };
        if url.path() != "/" || url.query().is_some() {
            return Err(EndpointError::EntryNotOrigin);
        }
        let port = url.port_or_known_default().unwrap_or(HTTPS_PORT);
        let host = match (wildcard, parsed_host(&url)?) {
            (false, host) => HostRule::Exact(host),
            (true, ParsedHost::Ip(_)) => return Err(EndpointError::WildcardIp),
            (true, ParsedHost::Domain(labels)) if labels.len() < WILDCARD_SUFFIX_LABELS_MIN => {
                return Err(EndpointError::WildcardTooBroad);
            }
            (true, ParsedHost::Domain(labels)) => HostRule::Under(labels),
        };
        Ok(OriginRule { host, port })
    }

    fn allows(&self, host: &ParsedHost, port: u16) -> bool {
        port == self.port
            && match (&self.host, host) {
                (HostRule::Exact(h), host) => h == host,
                (HostRule::Under(suffix), ParsedHost::Domain(labels)) => {
                    labels.len() > suffix.len() && labels.ends_with(suffix)
                }
                (HostRule::Under(_), ParsedHost::Ip(_)) => false,
            }
    }
}

/// `push.webpush_origins_allowed`, parsed: exact `https://host[:port]` entries (a domain or an
/// IP literal) and `https://*.suffix[:port]` wildcards.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    rules: Vec<OriginRule>,
}

impl AllowList {
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<AllowList, AllowListError> {
        let rules = entries
            .iter()
            .map(|e| {
                OriginRule::parse(e.as_ref()).map_err(|reason| AllowListError {
                    entry: e.as_ref().to_string(),
                    reason,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(AllowList { rules })
    }

    /// The endpoint, parsed and normalised, if an entry allows it.
    pub fn endpoint(&self, raw: &str) -> Result<Endpoint, EndpointError> {
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(EndpointError::NotPrintableAscii);
        }
        if raw.len() > PUSH_TOKEN_BYTES_MAX {
            return Err(EndpointError::TooLong { bytes: raw.len() });
        }
        let url = https_url(raw)?;
        let host = parsed_host(&url)?;
        let port = url.port_or_known_default().unwrap_or(HTTPS_PORT);
        if !self.rules.iter().any(|r| r.allows(&host, port)) {
            return Err(EndpointError::NotAllowed);
        }
        // Normalising percent-encodes what the path and query may not hold raw.
        if url.as_str().len() > PUSH_TOKEN_BYTES_MAX {
            return Err(EndpointError::TooLong {
                bytes: url.as_str().len(),
            });
        }
        // The request goes where hyper's parser says: it must read the host and port checked.
        let uri: http::Uri = url
            .as_str()
            .parse()
            .map_err(|_| EndpointError::ParsersDisagree)?;
        if uri.scheme_str() != Some("https")
            || uri.host() != url.host_str()
            || uri.port_u16().unwrap_or(HTTPS_PORT) != port
        {
            return Err(EndpointError::ParsersDisagree);
        }
        Ok(Endpoint { url, uri })
    }
}

/// An endpoint an entry allows, normalised. `Debug` prints the origin only: the path is the
/// subscription's secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    url: Url,
    uri: http::Uri,
}

impl Endpoint {
    /// The normalised URL: what is stored as the token and what the wake is POSTed to.
    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }

    /// The same URL as the HTTP client's type.
    pub fn uri(&self) -> &http::Uri {
        &self.uri
    }

    /// `https://host[:port]` (no port when 443): the VAPID JWT's `aud` (RFC 8292).
    pub fn origin(&self) -> String {
        self.url.origin().ascii_serialization()
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Endpoint({}/…)", self.origin())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> AllowList {
        AllowList::parse(entries).unwrap()
    }

    /// Stands for any `url::ParseError`: which one the parser names is its business.
    const BAD_URL: EndpointError = EndpointError::NotAUrl(url::ParseError::EmptyHost);

    fn same(got: &Result<impl std::fmt::Debug, EndpointError>, want: &EndpointError) -> bool {
        match (got, want) {
            (Err(EndpointError::NotAUrl(_)), EndpointError::NotAUrl(_)) => true,
            (Err(got), want) => got == want,
            (Ok(_), _) => false,
        }
    }

    fn windows_and_exact() -> AllowList {
        list(&["https://*.notify.windows.com", "https://push.example:8443"])
    }

    #[test]
    fn every_bypass_shape_is_refused() {
        use EndpointError::*;
        let a = windows_and_exact();
        let label64 = "a".repeat(64);
        let host254 = format!("{}.notify.windows.com", ["abcdefghi"; 24].join("."));
        assert!(host254.len() > HOST_BYTES_MAX);
        let cases: Vec<(String, EndpointError)> = [
            // The first `/` is not the end of the host.
            ("https://attacker.example?.notify.windows.com/x", NotAllowed),
            ("https://attacker.example#.notify.windows.com/x", Fragment),
            (
                "https://attacker.example\\.notify.windows.com/x",
                NotAllowed,
            ),
            ("https://127.0.0.1:9?.notify.windows.com/x", NotAllowed),
            ("https://127.0.0.1:9#.notify.windows.com/x", Fragment),
            // Userinfo, before or around an allowed name.
            ("https://a.notify.windows.com@attacker.example/x", UserInfo),
            ("https://u:p@a.notify.windows.com/x", UserInfo),
            ("https://push.example:8443@attacker.example/x", UserInfo),
            // Encodings: the host is percent-decoded before anything compares it.
            ("https://attacker.example%2f.notify.windows.com/x", BAD_URL),
            ("https://attacker.example%3f.notify.windows.com/x", BAD_URL),
            ("https://attacker%2eexample/x", NotAllowed),
            ("https://notify%2ewindows.com/x", NotAllowed),
            // Labels, not string suffixes.
            ("https://notify.windows.com/x", NotAllowed),
            ("https://evilnotify.windows.com/x", NotAllowed),
            ("https://a.notify.windows.com.evil/x", NotAllowed),
            ("https://a.notify.windows.com./x", HostLabelEmpty),
            ("https://a..notify.windows.com/x", HostLabelEmpty),
            ("https://push.example.:8443/x", HostLabelEmpty),
            ("https://a_b.notify.windows.com/x", HostLabelNotLdh),
            ("https://-a.notify.windows.com/x", HostLabelNotLdh),
            // IP literals, however spelled.
            ("https://127.0.0.1/x", NotAllowed),
            ("https://127.0.0.1:8443/x", NotAllowed),
            ("https://2130706433/x", NotAllowed),
            ("https://0x7f.0.0.1/x", NotAllowed),
            ("https://[::1]/x", NotAllowed),
            ("https://[::ffff:127.0.0.1]:8443/x", NotAllowed),
            // Ports: the entry's, or 443.
            ("https://a.notify.windows.com:8443/x", NotAllowed),
            ("https://push.example/x", NotAllowed),
            ("https://push.example:443/x", NotAllowed),
            ("https://push.example:8444/x", NotAllowed),
            // Schemes and shapes.
            (
                "http://push.example:8443/x",
                NotHttps {
                    scheme: "http".into(),
                },
            ),
            (
                "wss://push.example:8443/x",
                NotHttps {
                    scheme: "wss".into(),
                },
            ),
            ("//push.example:8443/x", BAD_URL),
            ("https://push.example:8443/x y", NotPrintableAscii),
            ("https://push.example:8443/x\t", NotPrintableAscii),
            ("https://push.exa\nmple:8443/x", NotPrintableAscii),
            ("https://bücher.notify.windows.com/x", NotPrintableAscii),
        ]
        .into_iter()
        .map(|(u, e)| (u.to_string(), e))
        .chain([
            (
                format!("https://{label64}.notify.windows.com/x"),
                HostLabelTooLong { bytes: 64 },
            ),
            (
                format!("https://{host254}/x"),
                HostTooLong {
                    bytes: host254.len(),
                },
            ),
            (
                format!(
                    "https://push.example:8443/{}",
                    "a".repeat(PUSH_TOKEN_BYTES_MAX)
                ),
                TooLong {
                    bytes: PUSH_TOKEN_BYTES_MAX + 26,
                },
            ),
            // Within the limit raw, beyond it once `"` is percent-encoded.
            (
                format!("https://push.example:8443/{}", "\"".repeat(1_000)),
                TooLong { bytes: 3_026 },
            ),
        ])
        .collect();
        let wrong: Vec<String> = cases
            .iter()
            .map(|(raw, want)| (raw, want, a.endpoint(raw)))
            .filter(|(_, want, got)| !same(got, want))
            .map(|(raw, want, got)| format!("{raw}: {got:?}, not {want:?}"))
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn allowed_endpoints_are_normalised_before_use() {
        let a = windows_and_exact();
        for (raw, want, origin) in [
            (
                "https://wns2-a.notify.windows.com/w/?token=1",
                "https://wns2-a.notify.windows.com/w/?token=1",
                "https://wns2-a.notify.windows.com",
            ),
            (
                "HTTPS://WNS2-A.Notify.Windows.COM/w/?token=1",
                "https://wns2-a.notify.windows.com/w/?token=1",
                "https://wns2-a.notify.windows.com",
            ),
            (
                "https://wns2-a%2Enotify.windows.com/x",
                "https://wns2-a.notify.windows.com/x",
                "https://wns2-a.notify.windows.com",
            ),
            (
                "https://a.notify.windows.com:443/x/../y",
                "https://a.notify.windows.com/y",
                "https://a.notify.windows.com",
            ),
            (
                "https://push.example:8443/sub/1",
                "https://push.example:8443/sub/1",
                "https://push.example:8443",
            ),
            (
                "https://push.example:8443\\sub\\1",
                "https://push.example:8443/sub/1",
                "https://push.example:8443",
            ),
        ] {
            let e = a.endpoint(raw).unwrap();
            assert_eq!((e.as_str(), e.origin().as_str()), (want, origin), "{raw}");
            assert_eq!(e.uri().to_string(), want);
            assert_eq!(
                a.endpoint(want).unwrap(),
                e,
                "normalising twice changes nothing"
            );
            assert!(!format!("{e:?}").contains("/sub"), "Debug hides the path");
        }
    }

    #[test]
    fn ip_literals_pass_only_when_an_exact_entry_names_them() {
        let a = list(&["https://127.0.0.1:9443", "https://[::1]:9443"]);
        let ok = a.endpoint("https://127.0.0.1:9443/wp/1").unwrap();
        assert_eq!(ok.origin(), "https://127.0.0.1:9443");
        // Other spellings of the same address are the same address.
        assert_eq!(a.endpoint("https://2130706433:9443/wp/1").unwrap(), ok);
        assert_eq!(
            a.endpoint("https://[0:0::1]:9443/wp/1").unwrap().as_str(),
            "https://[::1]:9443/wp/1"
        );
        for refused in [
            "https://127.0.0.1:9444/wp/1",
            "https://127.0.0.1/wp/1",
            "https://127.0.0.2:9443/wp/1",
            "https://[::ffff:127.0.0.1]:9443/wp/1",
            "https://localhost:9443/wp/1",
        ] {
            assert_eq!(
                a.endpoint(refused),
                Err(EndpointError::NotAllowed),
                "{refused}"
            );
        }
    }

    #[test]
    fn entries_are_parsed_with_idna_and_checked_at_load() {
        // Unicode in an entry and punycode or percent-encoding in an endpoint meet as one name.
        let a = list(&["https://*.Bücher.example", " https://Push.Example:8443/ "]);
        for raw in [
            "https://push.xn--bcher-kva.example/x",
            "https://push.b%C3%BCcher.example/x",
        ] {
            assert_eq!(
                a.endpoint(raw).unwrap().as_str(),
                "https://push.xn--bcher-kva.example/x"
            );
        }
        assert!(a.endpoint("https://push.example:8443/x").is_ok());
        assert!(a.endpoint("https://xn--bcher-kva.example/x").is_err());
        let a = list(&["https://*.push.example:8443"]);
        assert!(a.endpoint("https://a.push.example:8443/x").is_ok());
        assert!(a.endpoint("https://a.push.example/x").is_err());

        use EndpointError::*;
        for (entry, want) in [
            (
                "http://push.example",
                NotHttps {
                    scheme: "http".into(),
                },
            ),
            ("push.example", BAD_URL),
            ("https://", BAD_URL),
            ("https://push.example/path", EntryNotOrigin),
            ("https://push.example?q", EntryNotOrigin),
            ("https://push.example#f", Fragment),
            ("https://u@push.example", UserInfo),
            ("https://push.example.", HostLabelEmpty),
            ("https://a.*.example", HostLabelNotLdh),
            ("https://*", HostLabelNotLdh),
            ("https://*.com", WildcardTooBroad),
            ("https://*.127.0.0.1", WildcardIp),
            ("https://*.[::1]", WildcardIp),
        ] {
            let got = AllowList::parse(&[entry]);
            assert!(
                same(&got.clone().map_err(|e| e.reason), &want),
                "{entry}: {got:?}"
            );
            assert_eq!(got.unwrap_err().entry, entry);
        }
        assert_eq!(AllowList::parse::<&str>(&[]), Ok(AllowList::default()));
    }
}
