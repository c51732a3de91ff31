//! Who the client is. Behind a load balancer or Fly's proxy every connection comes from
//! the proxy, so scoring the TCP peer would put all fans of a PoP in one rate bucket. The
//! address a proxy reports (`Fly-Client-IP`, or `X-Forwarded-For`) is believed only when
//! the peer itself is one of the configured trusted proxies; otherwise anyone could pick
//! their own address by sending the header.

use std::net::IpAddr;

/// A trusted proxy: one address, or a network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    fn parse(s: &str) -> Option<Net> {
        let s = s.trim();
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p.parse::<u8>().ok()?)),
            None => (s, None),
        };
        let addr: IpAddr = ip.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Net { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Parses `trusted_proxies` (comma-separated addresses or CIDR networks); entries that do
/// not parse are reported, so a typo is not silently "trust nobody".
pub fn parse_trusted(spec: &str) -> Result<Vec<IpAddr>, String> {
    parse_nets(spec).map(|nets| nets.iter().map(|n| n.addr).collect())
}

fn parse_nets(spec: &str) -> Result<Vec<Net>, String> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            Net::parse(s)
                .ok_or_else(|| format!("trusted_proxies: `{s}` is not an address or CIDR network"))
        })
        .collect()
}

fn ip_of(addr: &str) -> Option<IpAddr> {
    let addr = addr.trim();
    if let Ok(sa) = addr.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    addr.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy, in which case
/// `Fly-Client-IP`, or else the right-most address in `X-Forwarded-For` that is not itself
/// a trusted proxy. Malformed reports fall back to the peer.
pub fn address(
    peer: &str,
    trusted_spec: &str,
    fly_client_ip: Option<&str>,
    forwarded_for: Option<&str>,
) -> String {
    let Ok(trusted) = parse_nets(trusted_spec) else { return peer.to_owned() };
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    let Some(peer_ip) = ip_of(peer) else { return peer.to_owned() };
    if !is_trusted(peer_ip) {
        return peer.to_owned();
    }
    if let Some(ip) = fly_client_ip.and_then(ip_of) {
        return ip.to_string();
    }
    if let Some(xff) = forwarded_for {
        let hops: Vec<Option<IpAddr>> = xff.split(',').map(ip_of).collect();
        for hop in hops.iter().rev() {
            match hop {
                Some(ip) if is_trusted(*ip) => continue,
                Some(ip) => return ip.to_string(),
                None => break,
            }
        }
    }
    peer.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_is_the_client_unless_it_is_a_trusted_proxy() {
        // Nobody trusted: a forged header changes nothing.
        assert_eq!(
            address("203.0.113.9:5000", "", Some("1.2.3.4"), Some("1.2.3.4")),
            "203.0.113.9:5000"
        );
        // An untrusted peer cannot pick its address either.
        assert_eq!(
            address("203.0.113.9:5000", "10.0.0.0/8", Some("1.2.3.4"), None),
            "203.0.113.9:5000"
        );
        // Fly's proxy: Fly-Client-IP wins.
        assert_eq!(
            address("10.1.2.3:5000", "10.0.0.0/8", Some("198.51.100.7"), Some("6.6.6.6")),
            "198.51.100.7"
        );
        // A load balancer chain: the right-most untrusted hop.
        assert_eq!(
            address(
                "10.1.2.3:5000",
                "10.0.0.0/8, 192.0.2.1",
                None,
                Some("6.6.6.6, 198.51.100.7, 192.0.2.1")
            ),
            "198.51.100.7"
        );
        // Garbage in the header falls back to the peer.
        assert_eq!(address("10.1.2.3:5000", "10.0.0.0/8", None, Some("nonsense")), "10.1.2.3:5000");
        // IPv6 networks.
        assert_eq!(address("[fd00::1]:443", "fd00::/8", Some("2001:db8::5"), None), "2001:db8::5");
    }

    #[test]
    fn rejects_malformed_trusted_proxy_lists() {
        assert!(parse_trusted("10.0.0.0/8,192.168.1.1").is_ok());
        assert!(parse_trusted("10.0.0.0/33").is_err());
        assert!(parse_trusted("not-an-ip").is_err());
        // A bad list trusts nobody rather than everybody.
        assert_eq!(address("10.1.2.3:1", "10.0.0.0/8,oops", Some("1.1.1.1"), None), "10.1.2.3:1");
    }
}
