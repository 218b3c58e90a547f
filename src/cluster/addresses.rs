//! IPv4 address pools of networks: parsing, membership, the next free address, counters.

use super::model::Network;
use std::net::Ipv4Addr;

/// Parses `a.b.c.d/len` into (network address, prefix length).
pub fn parse_cidr(s: &str) -> Option<(u32, u32)> {
    let (addr, len) = s.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let len: u32 = len.parse().ok()?;
    if len > 30 {
        return None;
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Some((u32::from(addr) & mask, len))
}

pub fn contains(net: &Network, ip: &str) -> bool {
    let (Some((base, len)), Ok(addr)) = (parse_cidr(&net.network), ip.parse::<Ipv4Addr>()) else {
        return false;
    };
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(addr) & mask == base
}

/// Whether the address is the gateway, used by an instance or reserved by the admin.
pub fn is_taken(net: &Network, ip: &str) -> bool {
    Some(ip) == net.gateway.as_deref()
        || net.used.contains_key(ip)
        || net.external_reservations.contains(ip)
}

/// The lowest address that is neither the network/broadcast address nor taken, nor `also_taken`
/// (other jobs' claims).
pub fn free_address(net: &Network, also_taken: impl Fn(&str) -> bool) -> Option<String> {
    let (base, len) = parse_cidr(&net.network)?;
    let size = 1u64 << (32 - len);
    (1..size - 1)
        .map(|i| Ipv4Addr::from(base + i as u32).to_string())
        .find(|ip| !is_taken(net, ip) && !also_taken(ip))
}

/// (free, reserved) addresses of the network.
pub fn pool_counts(net: &Network) -> (u64, u64) {
    let size = parse_cidr(&net.network).map_or(0, |(_, len)| 1u64 << (32 - len));
    let reserved =
        net.used.len() + net.external_reservations.len() + 2 + usize::from(net.gateway.is_some());
    (size.saturating_sub(reserved as u64), reserved as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_skip_gateway_and_reservations() {
        let mut net = Network {
            name: "n".into(),
            meta: super::super::model::Meta::new("u".into(), 0.0),
            network: "10.0.0.0/29".into(),
            gateway: Some("10.0.0.1".into()),
            network6: None,
            gateway6: None,
            mac_prefix: None,
            used: Default::default(),
            external_reservations: ["10.0.0.2".to_string()].into_iter().collect(),
        };
        assert_eq!(free_address(&net, |_| false).as_deref(), Some("10.0.0.3"));
        net.used.insert("10.0.0.3".into(), "x".into());
        assert_eq!(free_address(&net, |_| false).as_deref(), Some("10.0.0.4"));
        assert!(parse_cidr("10.0.0.0/33").is_none());
    }
}
