//! Source addresses as limits count them.
//!
//! One IPv4 address is one client; one IPv6 client usually holds a whole
//! /64 (a home or a server gets one, and picking any address inside it is
//! free), so every per-address limit — connection caps, the login
//! throttle, the pager's and registration's rate limits, shares of shared
//! tables — counts an IPv6 address by its /64. An IPv4 address written in
//! IPv6 form (`::ffff:a.b.c.d`) counts as the IPv4 address it is.

use std::net::{IpAddr, Ipv6Addr};

/// The key under which per-address limits count `ip`: the address itself
/// for IPv4, its /64 prefix for IPv6.
pub fn address_group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_group(a), address_group(b));
        assert_ne!(address_group(a), address_group(other));
        assert_eq!(address_group(a).to_string(), "2001:db8:1:2::");
    }

    #[test]
    fn ipv4_counts_by_address_also_when_mapped() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_group(v4), v4);
        assert_eq!(address_group(mapped), v4);
        assert_ne!(address_group("192.0.2.8".parse().unwrap()), v4);
    }
}
