//! Where a webhook may point: the checks against server-side request forgery.
//!
//! A webhook URL must be `https` to a public host. With development URLs
//! allowed (a builder setting, off by default), `localhost` and `127.0.0.x`
//! are also accepted, over `http` or `https`: the one exception the
//! protocol makes (it names `http`; `https` to the same hosts is no wider,
//! and lets a test receiver check the TLS path). Every
//! other loopback, private, link-local, shared, multicast or otherwise
//! special address is refused, as a literal in the URL and again after the
//! name is resolved ([`check_resolved`]), so that a name pointing inside the
//! network is caught when it is used, not only when it is registered.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::uri::{Scheme, Uri};

/// Why a webhook URL was refused; the message is for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejected(pub(crate) String);

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Rejected {}

fn rejected(why: impl Into<String>) -> Rejected {
    Rejected(why.into())
}

/// A checked webhook URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    uri: Uri,
    /// Allowed only through the development exception: resolution must stay
    /// on loopback rather than be public.
    development: bool,
}

impl Target {
    /// The URL.
    pub(crate) fn uri(&self) -> &Uri {
        &self.uri
    }

    /// Whether the URL was accepted through the development exception.
    #[cfg(test)]
    pub(crate) fn is_development(&self) -> bool {
        self.development
    }
}

/// The longest webhook URL accepted, in bytes.
const MAX_URL_BYTES: usize = 2048;

/// Checks a webhook URL as registered.
pub(crate) fn check_url(text: &str, allow_development: bool) -> Result<Target, Rejected> {
    if text.len() > MAX_URL_BYTES {
        return Err(rejected("the webhook URL is longer than 2048 bytes"));
    }
    let uri: Uri = text
        .parse()
        .map_err(|_| rejected("the webhook URL is not a valid absolute URL"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| rejected("the webhook URL must be absolute"))?;
    if authority.as_str().contains('@') {
        return Err(rejected("the webhook URL must not carry credentials"));
    }
    let host = authority.host();
    let https = uri.scheme() == Some(&Scheme::HTTPS);
    let http = uri.scheme() == Some(&Scheme::HTTP);
    if !https && !http {
        return Err(rejected("the webhook URL must be https"));
    }
    let development_host = is_development_host(host);
    if development_host {
        return if allow_development {
            Ok(Target {
                uri,
                development: true,
            })
        } else if http {
            Err(rejected(
                "http webhooks to localhost are allowed only where the server allows development URLs",
            ))
        } else {
            Err(rejected("the webhook URL must point to a public host"))
        };
    }
    if http {
        return Err(rejected("the webhook URL must be https"));
    }
    if host.starts_with('[') && literal_ip(host).is_none() {
        // Brackets hold an IPv6 literal and nothing else (a zone id, say).
        return Err(rejected("the webhook URL's host is not a valid address"));
    }
    if let Some(ip) = literal_ip(host) {
        if !is_public(ip) {
            return Err(rejected(format!(
                "the webhook URL points to {ip}, which is not a public address"
            )));
        }
    } else if !looks_like_public_name(host) {
        return Err(rejected("the webhook URL must point to a public host"));
    }
    Ok(Target {
        uri,
        development: false,
    })
}

/// Checks the addresses a webhook's host resolved to, before connecting:
/// every one must be public (or, for a development URL, loopback), so that
/// a name cannot lead the server into its own network.
pub(crate) fn check_resolved(target: &Target, addresses: &[IpAddr]) -> Result<(), Rejected> {
    if addresses.is_empty() {
        return Err(rejected("the webhook host did not resolve"));
    }
    for &ip in addresses {
        let fine = if target.development {
            canonical(ip).is_loopback()
        } else {
            is_public(ip)
        };
        if !fine {
            return Err(rejected(format!(
                "the webhook host resolved to {ip}, which is not a public address"
            )));
        }
    }
    Ok(())
}

/// `localhost` and `127.0.0.x`: the protocol's development exception.
fn is_development_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    matches!(literal_ip(host), Some(IpAddr::V4(v4)) if v4.octets()[..3] == [127, 0, 0])
}

/// The address a host is, if it is a literal (`[::1]` in brackets for IPv6).
fn literal_ip(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

/// Names that cannot be public: single labels, and the special-use domains
/// (`.localhost`, `.local`, `.internal`, ...). A name that passes is still
/// checked after it resolves.
fn looks_like_public_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if !host.contains('.') {
        return false;
    }
    // Numeric forms that resolvers read as IPv4 (`127.1`, `0x7f.1`).
    let numeric = |label: &str| match label.strip_prefix("0x") {
        Some(hex) => hex.chars().all(|c| c.is_ascii_hexdigit()),
        None => !label.is_empty() && label.chars().all(|c| c.is_ascii_digit()),
    };
    if host.split('.').all(numeric) {
        return false;
    }
    const SPECIAL: [&str; 15] = [
        ".localhost",
        ".local",
        ".internal",
        ".localdomain",
        ".home.arpa",
        ".in-addr.arpa",
        ".ip6.arpa",
        ".test",
        ".invalid",
        ".example",
        ".onion",
        ".lan",
        ".corp",
        ".home",
        ".intranet",
    ];
    !SPECIAL.iter().any(|suffix| host.ends_with(suffix))
}

/// An IPv4 address carried in IPv6 (mapped, or NAT64's well-known prefix)
/// as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                return IpAddr::V4(Ipv4Addr::new(a, b, c, d));
            }
            IpAddr::V6(v6)
        }
        v4 => v4,
    }
}

/// Whether `ip` is an ordinary address on the internet: not loopback,
/// private, link-local (cloud metadata lives there), shared (carrier NAT),
/// unspecified, broadcast, multicast, documentation or reserved.
fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        // 100.64.0.0/10, shared address space (carrier-grade NAT).
        || (a == 100 && (64..128).contains(&b))
        // 192.0.0.0/24, protocol assignments.
        || (a == 192 && b == 0 && c == 0)
        // 198.18.0.0/15, benchmarking.
        || (a == 198 && (b == 18 || b == 19))
        // 240.0.0.0/4, reserved.
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.is_unique_local()
        || ip.is_unicast_link_local()
        // fec0::/10, the deprecated site-local range.
        || (first & 0xffc0) == 0xfec0
        // 2001:db8::/32, documentation.
        || (first == 0x2001 && ip.segments()[1] == 0x0db8)
        // ::/96, IPv4-compatible (deprecated), and other addresses in ::/8.
        || first == 0
        // 100::/64, discard.
        || (first == 0x0100 && ip.segments()[1..4] == [0, 0, 0])
        // 2002::/16 (6to4) and 2001::/32 (Teredo) carry an IPv4 address of
        // any kind; 64:ff9b:1::/48 is NAT64 for local use.
        || first == 0x2002
        || (first == 0x2001 && ip.segments()[1] == 0)
        || (first == 0x0064 && ip.segments()[1] == 0xff9b && ip.segments()[2] == 1)
        // 3fff::/20, documentation.
        || (first == 0x3fff && ip.segments()[1] & 0xf000 == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str) -> bool {
        check_url(url, false).is_err() && check_url(url, true).is_err()
    }

    #[test]
    fn public_https_is_accepted() {
        for url in [
            "https://hooks.example.com/x",
            "https://hooks.example.com:8443/x?y=1",
            "https://cafe.be/hook",
            "https://93.184.216.34/hook",
            "https://[2606:2800:220:1:248:1893:25c8:1946]/hook",
        ] {
            let target = check_url(url, false).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert!(!target.is_development());
        }
    }

    #[test]
    fn plain_http_needs_the_development_exception_and_loopback() {
        assert!(check_url("http://hooks.example.com/x", true).is_err());
        assert!(check_url("http://localhost:9000/x", false).is_err());
        assert!(check_url("http://127.0.0.1:9000/x", false).is_err());
        for url in [
            "http://localhost:9000/x",
            "http://127.0.0.1:9000/x",
            "http://127.0.0.7/",
        ] {
            let target = check_url(url, true).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert!(target.is_development());
        }
        // The exception is 127.0.0.x, not all of 127/8; it covers https to
        // those hosts too, and nothing without the setting.
        assert!(refused("http://127.1.2.3/x"));
        assert!(check_url("https://localhost/x", false).is_err());
        assert!(check_url("https://localhost:9443/x", true).is_ok_and(|t| t.is_development()));
        assert!(check_url("https://127.1.2.3/x", true).is_err());
    }

    #[test]
    fn private_and_special_addresses_are_refused() {
        for url in [
            "http://10.0.0.1/webhook",
            "https://10.0.0.1/webhook",
            "https://172.16.5.4/",
            "https://192.168.1.1/",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/",
            "https://0.0.0.0/",
            "https://255.255.255.255/",
            "https://224.0.0.1/",
            "https://[::1]/",
            "https://[fd00::1]/",
            "https://[fe80::1]/",
            "https://[::ffff:10.0.0.1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://[64:ff9b::a9fe:a9fe]/",
            "https://[::ffff:127.0.0.1%25x]/",
            "https://[fe80::1%25a.b]/",
            "https://[2002:a00:1::1]/",
            "https://[2001:0:4136:e378::1]/",
            "https://[64:ff9b:1::a00:1]/",
            "https://[3fff::1]/",
            "https://hooks.test/",
            "https://x.corp/",
            "https://printer/",
            "https://db.internal/",
            "https://a.localhost/",
            "https://2130706433/",
            "https://0x7f.1/",
            "https://127.1/",
            "ftp://hooks.example.com/",
            "https://user:pw@hooks.example.com/",
            "/relative/path",
        ] {
            assert!(refused(url), "{url} was accepted");
        }
    }

    #[test]
    fn resolved_addresses_are_checked_again() {
        let public = check_url("https://hooks.example.com/x", false).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(check_resolved(&public, &[ip("93.184.216.34")]).is_ok());
        assert!(check_resolved(&public, &[ip("93.184.216.34"), ip("10.1.2.3")]).is_err());
        assert!(check_resolved(&public, &[ip("::ffff:169.254.169.254")]).is_err());
        assert!(check_resolved(&public, &[]).is_err());
        let development = check_url("http://localhost:9/x", true).unwrap();
        assert!(check_resolved(&development, &[ip("127.0.0.1"), ip("::1")]).is_ok());
        assert!(check_resolved(&development, &[ip("93.184.216.34")]).is_err());
    }
}
