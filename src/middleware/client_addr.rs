//! The client's address: the connection's peer, or, behind proxies the application trusts,
//! the address they forwarded.

use std::net::{IpAddr, SocketAddr};

use http::Request;
use ipnet::IpNet;

use crate::record::canonical_ip as canonical;

/// The peer address of a request's connection, for servers other than axum: insert it into
/// each request's extensions (axum's `ConnectInfo<SocketAddr>` is read directly).
///
/// ```
/// use apitoken::middleware::PeerAddr;
///
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(PeerAddr("192.0.2.7:41000".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The client address the auth layer settled on, in the request's extensions for handlers,
/// rate limiters and audit logs. Absent when it could not be determined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// Proxies whose forwarding header is believed.
///
/// With none (the default) the client is the connection's peer, and `Forwarded` /
/// `X-Forwarded-For` are ignored: anyone can send them. With some, when the peer is one of
/// them, the one header those proxies write is read right to left, skipping trusted proxies;
/// the first address that is not one is the client. A hop that cannot be parsed (`unknown`, an
/// obfuscated identifier, garbage), a trusted peer that forwarded nothing, or a chain of
/// nothing but trusted proxies leaves the client unknown, so an allowlist refuses the request
/// rather than guess.
///
/// Only one header is read: `X-Forwarded-For` by default, RFC 7239 `Forwarded` after
/// [`forwarded`](Self::forwarded). Most proxies append to one and pass the other through as
/// the client sent it, so reading the other would let a client choose its own address.
///
/// List the proxies' own addresses, not whole private ranges: every host in a trusted network
/// can write any client address it likes.
///
/// ```
/// use apitoken::middleware::{PeerAddr, TrustedProxies};
///
/// let proxies = TrustedProxies::new(["10.0.0.0/8".parse().unwrap()]);
/// let mut request = http::Request::builder()
///     .header("x-forwarded-for", "203.0.113.9, 198.51.100.1, 10.0.0.5")
///     .body(())
///     .unwrap();
/// request.extensions_mut().insert(PeerAddr("10.0.0.2:5000".parse().unwrap()));
/// // 10.0.0.5 is trusted, 198.51.100.1 is not: that is the client. 203.0.113.9 could be forged.
/// assert_eq!(proxies.client_ip(&request), Some("198.51.100.1".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    rfc7239: bool,
}

impl TrustedProxies {
    /// Trust no proxy: the client is the peer.
    pub fn none() -> Self {
        Self::default()
    }

    /// Trust proxies in these networks.
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            nets: nets.into_iter().collect(),
            rfc7239: false,
        }
    }

    /// Reads RFC 7239 `Forwarded` instead of `X-Forwarded-For`, for proxies that write it.
    #[must_use]
    pub fn forwarded(mut self) -> Self {
        self.rfc7239 = true;
        self
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The client's address for `request`, or `None` when it cannot be determined.
    ///
    /// The forwarding header is read lazily from its right end and at most [`MAX_FORWARDED_HOPS`] hops
    /// deep: what a client put further left costs nothing, however long it is.
    pub fn client_ip<B>(&self, request: &Request<B>) -> Option<IpAddr> {
        let peer = canonical(peer_addr(request)?.ip());
        if !self.trusts(peer) {
            return Some(peer);
        }
        let name = if self.rfc7239 {
            http::header::FORWARDED
        } else {
            http::header::HeaderName::from_static("x-forwarded-for")
        };
        let mut hops = 0;
        for value in request.headers().get_all(name).iter().rev() {
            for hop in value.as_bytes().rsplit(|b| *b == b',') {
                hops += 1;
                if hops > MAX_FORWARDED_HOPS {
                    // Past the deepest chain of proxies worth believing: unknown.
                    return None;
                }
                let ip = canonical(self.parse_hop(hop)?);
                if !self.trusts(ip) {
                    return Some(ip);
                }
            }
        }
        // Nothing forwarded, or nothing but trusted proxies: the leftmost hop may have been
        // written by the client.
        None
    }

    /// One hop of the header this set reads; `None` when it cannot be parsed (`unknown`, an
    /// obfuscated identifier, garbage), which leaves the client unknown.
    fn parse_hop(&self, hop: &[u8]) -> Option<IpAddr> {
        let text = std::str::from_utf8(hop).ok()?.trim();
        if self.rfc7239 {
            let node = text.split(';').find_map(|pair| {
                let (key, value) = pair.trim().split_once('=')?;
                key.trim()
                    .eq_ignore_ascii_case("for")
                    .then_some(value.trim())
            })?;
            parse_forwarded_node(node)
        } else {
            parse_bare(text)
        }
    }
}

/// The most forwarding hops [`TrustedProxies`] reads from the right before the client counts
/// as unknown.
pub const MAX_FORWARDED_HOPS: usize = 32;

fn peer_addr<B>(request: &Request<B>) -> Option<SocketAddr> {
    #[cfg(feature = "axum")]
    if let Some(info) = request
        .extensions()
        .get::<::axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(info.0);
    }
    request.extensions().get::<PeerAddr>().map(|p| p.0)
}

/// RFC 7239 node: `192.0.2.60`, `"192.0.2.60:47011"`, `"[2001:db8::1]:4711"`, `"[2001:db8::1]"`.
fn parse_forwarded_node(value: &str) -> Option<IpAddr> {
    let value = value.trim_matches('"');
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    parse_bare(value)
}

/// `192.0.2.60`, `192.0.2.60:47011`, or a bare IPv6 address.
fn parse_bare(value: &str) -> Option<IpAddr> {
    if let Ok(ip) = value.parse() {
        return Some(ip);
    }
    value.parse::<SocketAddr>().ok().map(|s| s.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(peer: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder();
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let mut request = builder.body(()).unwrap();
        request
            .extensions_mut()
            .insert(PeerAddr(peer.parse().unwrap()));
        request
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn untrusted_peers_are_the_client_whatever_they_forward() {
        let none = TrustedProxies::none();
        let r = request("203.0.113.9:1000", &[("x-forwarded-for", "10.1.1.1")]);
        assert_eq!(none.client_ip(&r), ip("203.0.113.9"));
        let some = TrustedProxies::new(["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(some.client_ip(&r), ip("203.0.113.9"));
    }

    #[test]
    fn trusted_chains_are_read_right_to_left() {
        let p = TrustedProxies::new([
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8:f::/48".parse().unwrap(),
        ]);
        let r = request(
            "10.0.0.2:1",
            &[("x-forwarded-for", "1.1.1.1, 2.2.2.2, 10.9.9.9")],
        );
        assert_eq!(p.client_ip(&r), ip("2.2.2.2"));
        let r = request(
            "10.0.0.2:1",
            &[
                ("x-forwarded-for", "1.1.1.1"),
                ("x-forwarded-for", "10.3.3.3"),
            ],
        );
        assert_eq!(p.client_ip(&r), ip("1.1.1.1"));
        let rfc = p.clone().forwarded();
        let r = request(
            "[2001:db8:f::1]:443",
            &[(
                "forwarded",
                r#"for="[2001:db8:cafe::17]:4711";proto=https, for=10.0.0.9"#,
            )],
        );
        assert_eq!(rfc.client_ip(&r), ip("2001:db8:cafe::17"));
        // Only the configured header counts: a client's own `Forwarded`, passed through by a
        // proxy that appends to X-Forwarded-For, is ignored, and the other way round.
        let r = request(
            "10.0.0.2:1",
            &[
                ("forwarded", "for=192.0.2.60"),
                ("x-forwarded-for", "6.6.6.6"),
            ],
        );
        assert_eq!(p.client_ip(&r), ip("6.6.6.6"));
        assert_eq!(rfc.client_ip(&r), ip("192.0.2.60"));
        // All hops trusted: the leftmost may be client-written, so the client is unknown.
        let r = request("10.0.0.2:1", &[("x-forwarded-for", "10.7.7.7, 10.8.8.8")]);
        assert_eq!(p.client_ip(&r), None);
    }

    #[test]
    fn unknowable_clients_are_none() {
        let p = TrustedProxies::new(["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(p.client_ip(&request("10.0.0.2:1", &[])), None);
        let r = request("10.0.0.2:1", &[("forwarded", "for=unknown")]);
        assert_eq!(p.clone().forwarded().client_ip(&r), None);
        let r = request("10.0.0.2:1", &[("x-forwarded-for", "1.1.1.1, garbage")]);
        assert_eq!(p.client_ip(&r), None);
        let no_peer = Request::new(());
        assert_eq!(p.client_ip(&no_peer), None);
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4() {
        let p = TrustedProxies::new(["10.0.0.0/8".parse().unwrap()]);
        let r = request(
            "[::ffff:10.0.0.2]:1",
            &[("x-forwarded-for", "::ffff:192.0.2.1")],
        );
        assert_eq!(p.client_ip(&r), ip("192.0.2.1"));
    }

    #[test]
    fn long_chains_are_bounded() {
        let p = TrustedProxies::new(["10.0.0.0/8".parse().unwrap()]);
        let mut chain = vec!["10.0.0.1"; 1000];
        chain[0] = "192.0.2.1"; // beyond the 32 hops read: never reached
        let chain = chain.join(", ");
        let r = request("10.0.0.2:1", &[("x-forwarded-for", &chain)]);
        assert_eq!(p.client_ip(&r), None);
    }

    #[test]
    fn only_the_rightmost_hops_are_read_however_long_the_header() {
        let p = TrustedProxies::new(["10.0.0.0/8".parse().unwrap()]);
        // 64 KB a client wrote, then what the trusted proxies appended.
        let junk = format!("{}{}", "\u{e9}".repeat(100), ",".repeat(65_536));
        let chain = format!("{junk}198.51.100.7, 10.0.0.5");
        let r = request("10.0.0.2:1", &[("x-forwarded-for", &chain)]);
        assert_eq!(p.client_ip(&r), ip("198.51.100.7"));
        // Exactly the deepest chain read: the 32nd hop from the right is still seen.
        let mut hops = vec!["10.0.0.1"; MAX_FORWARDED_HOPS - 1];
        hops.insert(0, "192.0.2.1");
        let r = request("10.0.0.2:1", &[("x-forwarded-for", &hops.join(","))]);
        assert_eq!(p.client_ip(&r), ip("192.0.2.1"));
        hops.insert(1, "10.0.0.9");
        let r = request("10.0.0.2:1", &[("x-forwarded-for", &hops.join(","))]);
        assert_eq!(p.client_ip(&r), None, "one hop past the limit");
        // Several header lines: the last line's hops come first.
        let r = request(
            "10.0.0.2:1",
            &[
                ("x-forwarded-for", "203.0.113.1"),
                ("x-forwarded-for", "198.51.100.8, 10.0.0.3"),
            ],
        );
        assert_eq!(p.client_ip(&r), ip("198.51.100.8"));
        // RFC 7239 the same way.
        let f = TrustedProxies::new(["10.0.0.0/8".parse().unwrap()]).forwarded();
        let value = format!(
            "{}for=198.51.100.9;proto=https, for=10.0.0.4",
            ",".repeat(10_000)
        );
        let r = request("10.0.0.2:1", &[("forwarded", &value)]);
        assert_eq!(f.client_ip(&r), ip("198.51.100.9"));
    }
}
