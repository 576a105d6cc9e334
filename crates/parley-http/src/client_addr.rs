//! Who the client is. Directly connected, it is the TCP peer. Behind a
//! proxy listed in `trusted_proxies`, it is the address the proxy names in
//! `Forwarded: for=` (RFC 7239) or `X-Forwarded-For`: the rightmost entry
//! that is not itself a trusted proxy, since every hop appends to the right
//! and only what our own proxies appended can be believed. A peer that is
//! not a trusted proxy cannot claim another address: its headers are
//! ignored.
//!
//! Every per-address rule of the HTTP front door (the login throttle, the
//! pager's limiter, the WebSocket's native caps, the access log) takes its
//! address from [`ClientAddr`], computed once per request by the admission
//! middleware.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};

use crate::HttpContext;
use crate::listener::Peer;
use crate::problem::Problem;

/// Most forwarding hops read from the headers; a longer chain is cut
/// (from the left, where a client may write anything).
const MAX_HOPS: usize = 32;

/// The address ranges whose `Forwarded` / `X-Forwarded-For` are believed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    /// Network address (masked) and prefix length; IPv4 as IPv4.
    ranges: Vec<(IpAddr, u8)>,
}

impl TrustedProxies {
    /// Parses a comma-separated list of CIDR ranges (`10.0.0.0/8`,
    /// `2001:db8::/32`) or single addresses. Every bad entry is reported.
    pub fn parse(list: &str) -> Result<TrustedProxies, Vec<String>> {
        let mut ranges = Vec::new();
        let mut errors = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match parse_range(entry) {
                Some(range) => ranges.push(range),
                None => errors.push(format!("{entry:?} is not an address or a CIDR range like 10.0.0.0/8")),
            }
        }
        if errors.is_empty() {
            Ok(TrustedProxies { ranges })
        } else {
            Err(errors)
        }
    }

    /// Whether no proxy is trusted (the default).
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether `ip` is inside one of the ranges.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.ranges
            .iter()
            .any(|&(network, prefix)| mask(ip, prefix).is_some_and(|masked| masked == network))
    }
}

impl fmt::Debug for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.ranges.iter().map(|(ip, prefix)| format!("{ip}/{prefix}")))
            .finish()
    }
}

/// `ADDR` or `ADDR/PREFIX`, the address masked to its prefix.
fn parse_range(entry: &str) -> Option<(IpAddr, u8)> {
    let (addr, prefix) = match entry.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (entry, None),
    };
    let written = addr.trim().parse::<IpAddr>().ok()?;
    let bits = if written.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => bits,
        Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= bits)?,
    };
    // A range written in IPv4-mapped form (`::ffff:a.b.c.d/N`, N >= 96) is
    // the IPv4 range it maps, matched like the addresses it contains.
    let ip = canonical(written);
    let prefix = if ip.is_ipv4() && written.is_ipv6() {
        prefix.checked_sub(96)?
    } else {
        prefix
    };
    Some((mask(ip, prefix)?, prefix))
}

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`) is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// `ip` with all but its first `prefix` bits cleared; None when the prefix
/// is longer than the address.
fn mask(ip: IpAddr, prefix: u8) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(v4) if prefix <= 32 => {
            let keep = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            Some(IpAddr::V4((u32::from(v4) & keep).into()))
        }
        IpAddr::V6(v6) if prefix <= 128 => {
            let keep = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            Some(IpAddr::V6((u128::from(v6) & keep).into()))
        }
        _ => None,
    }
}

/// The client's address as every per-address rule counts it. The port is
/// the TCP peer's when directly connected, the one a proxy names if it
/// names one, and 0 otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

impl ClientAddr {
    /// The client behind `peer`, believing `headers` only if `peer` is a
    /// trusted proxy.
    pub fn resolve(peer: SocketAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> ClientAddr {
        if trusted.is_empty() || !trusted.contains(peer.ip()) {
            return ClientAddr(peer);
        }
        ClientAddr::behind_proxy(peer, headers, trusted)
    }

    /// The client behind `peer`, a proxy trusted whatever its address (the
    /// unix socket's peer): the nearest hop of its forwarding headers that
    /// is not itself a trusted proxy, or `peer` when they name none.
    pub fn behind_proxy(peer: SocketAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> ClientAddr {
        let hops = forwarded_hops(headers);
        // From the right: skip our own proxies; the first other address is
        // the client. An entry that is not an address (`unknown`, an
        // obfuscated name) ends the walk: what lies left of it cannot be
        // tied to a hop we trust, so the last trusted hop stands for it.
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(addr) = hop else { break };
            client = *addr;
            if !trusted.contains(addr.ip()) {
                break;
            }
        }
        ClientAddr(client)
    }
}

/// The forwarding chain, left (the original client) to right (the hop
/// nearest us): from `Forwarded` if present, else `X-Forwarded-For`. None
/// marks an entry that is not an address.
fn forwarded_hops(headers: &HeaderMap) -> Vec<Option<SocketAddr>> {
    let mut hops: Vec<Option<SocketAddr>> = Vec::new();
    let forwarded: Vec<&str> = headers
        .get_all(header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !forwarded.is_empty() {
        for element in forwarded.iter().flat_map(|v| v.split(',')) {
            // An element without `for=` names no client; it still is a hop
            // we cannot place, so it ends the walk like `unknown`.
            let node = element.split(';').find_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                name.trim().eq_ignore_ascii_case("for").then_some(value)
            });
            hops.push(node.and_then(parse_node));
        }
    } else {
        for value in headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            hops.extend(value.split(',').map(parse_node));
        }
    }
    let cut = hops.len().saturating_sub(MAX_HOPS);
    hops.split_off(cut)
}

/// One node: `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]:4711`,
/// `2001:db8::1`, optionally in double quotes.
fn parse_node(node: &str) -> Option<SocketAddr> {
    let node = node.trim().trim_matches('"').trim();
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(SocketAddr::new(canonical(addr.ip()), addr.port()));
    }
    let bare = node.strip_prefix('[').and_then(|n| n.strip_suffix(']')).unwrap_or(node);
    bare.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(canonical(ip), 0))
}

impl FromRequestParts<Arc<HttpContext>> for ClientAddr {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, ctx: &Arc<HttpContext>) -> Result<Self, Problem> {
        if let Some(client) = parts.extensions.get::<ClientAddr>() {
            return Ok(*client);
        }
        match parts.extensions.get::<ConnectInfo<Peer>>() {
            Some(ConnectInfo(peer)) => Ok(peer.client(&parts.headers, &ctx.settings.trusted_proxies)),
            None => Err(Problem::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "the connection's address is unknown",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn client(peer: &str, trusted: &str, pairs: &[(&str, &str)]) -> String {
        let trusted = TrustedProxies::parse(trusted).unwrap();
        ClientAddr::resolve(peer.parse().unwrap(), &headers(pairs), &trusted)
            .0
            .to_string()
    }

    #[test]
    fn ranges_parse_and_match() {
        let t = TrustedProxies::parse("10.0.0.0/8, 192.0.2.1 ,2001:db8::/32,::ffff:198.51.100.0/120").unwrap();
        assert!(t.contains("10.200.1.1".parse().unwrap()));
        assert!(t.contains("192.0.2.1".parse().unwrap()));
        assert!(!t.contains("192.0.2.2".parse().unwrap()));
        assert!(t.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(t.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(t.contains("198.51.100.77".parse().unwrap()));
        assert!(!t.contains("2001:db9::1".parse().unwrap()));
        assert!(TrustedProxies::parse("").unwrap().is_empty());
        assert!(
            TrustedProxies::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        let errors = TrustedProxies::parse("10.0.0.0/33,nowhere,1.2.3.4/x,::/129,::ffff:1.2.3.4/64").unwrap_err();
        assert_eq!(errors.len(), 5, "{errors:?}");
    }

    #[test]
    fn headers_count_only_from_trusted_peers() {
        let xff = [("x-forwarded-for", "198.51.100.1")];
        assert_eq!(client("127.0.0.1:5000", "", &xff), "127.0.0.1:5000");
        assert_eq!(client("127.0.0.1:5000", "10.0.0.0/8", &xff), "127.0.0.1:5000");
        assert_eq!(client("10.1.1.1:5000", "10.0.0.0/8", &xff), "198.51.100.1:0");
        // No header: the proxy itself.
        assert_eq!(client("10.1.1.1:5000", "10.0.0.0/8", &[]), "10.1.1.1:5000");
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let t = "10.0.0.0/8";
        let peer = "10.0.0.1:80";
        let chain = [("x-forwarded-for", "1.1.1.1, 203.0.113.5, 10.0.0.9")];
        assert_eq!(client(peer, t, &chain), "203.0.113.5:0");
        let split = [("x-forwarded-for", "1.1.1.1"), ("x-forwarded-for", "203.0.113.6")];
        assert_eq!(client(peer, t, &split), "203.0.113.6:0");
        // Only trusted hops: the leftmost of them.
        let ours = [("x-forwarded-for", "10.0.0.7, 10.0.0.8")];
        assert_eq!(client(peer, t, &ours), "10.0.0.7:0");
        // Garbage ends the walk at the last trusted hop.
        let junk = [("x-forwarded-for", "203.0.113.1, unknown, 10.0.0.8")];
        assert_eq!(client(peer, t, &junk), "10.0.0.8:0");
        let junk = [("x-forwarded-for", "203.0.113.1, nonsense")];
        assert_eq!(client(peer, t, &junk), "10.0.0.1:80");
    }

    #[test]
    fn forwarded_wins_and_its_forms_parse() {
        let t = "10.0.0.0/8";
        let peer = "10.0.0.1:80";
        let both = [
            ("forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43"),
            ("x-forwarded-for", "198.51.100.1"),
        ];
        assert_eq!(client(peer, t, &both), "192.0.2.60:0");
        let v6 = [("forwarded", "for=\"[2001:db8:cafe::17]:4711\"")];
        assert_eq!(client(peer, t, &v6), "[2001:db8:cafe::17]:4711");
        let list = [("forwarded", "for=198.51.100.17, For=\"10.0.0.3\"")];
        assert_eq!(client(peer, t, &list), "198.51.100.17:0");
        let hidden = [("forwarded", "for=_hidden, for=10.0.0.4")];
        assert_eq!(client(peer, t, &hidden), "10.0.0.4:0");
        let mapped = [("x-forwarded-for", "::ffff:198.51.100.9")];
        assert_eq!(client(peer, t, &mapped), "198.51.100.9:0");
    }
}
