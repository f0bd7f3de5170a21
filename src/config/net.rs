//! IP ranges as written in the config: a CIDR or a single address, with
//! IPv4-mapped IPv6 forms folded to plain IPv4 so that one address has one spelling.

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A network range from the config, canonicalised (IPv4-mapped IPv6 becomes IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpRange(IpNet);

impl IpRange {
    pub fn net(&self) -> IpNet {
        self.0
    }

    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }

    /// Whether `ip` (already canonical) lies in this range. An IPv6 range that
    /// covers the IPv4-mapped block (::/0, ::/64 …) also covers every IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.0, ip) {
            (IpNet::V6(net), IpAddr::V4(v4)) => net.contains(&v4.to_ipv6_mapped()),
            (net, ip) => net.contains(&ip),
        }
    }

    /// The IPv4 part of this range, when it has one (for the open-relay guard).
    pub fn ipv4_part(&self) -> Option<Ipv4Net> {
        match self.0 {
            IpNet::V4(n) => Some(n),
            IpNet::V6(n) => {
                let mapped_block: ipnet::Ipv6Net = "::ffff:0:0/96".parse().ok()?;
                if n.contains(&mapped_block) {
                    Ipv4Net::new(std::net::Ipv4Addr::UNSPECIFIED, 0).ok()
                } else {
                    None
                }
            }
        }
    }
}

impl FromStr for IpRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let net: IpNet = if s.contains('/') {
            s.parse()
                .map_err(|_| format!("{s:?} is not a CIDR range (e.g. \"192.168.1.0/24\")"))?
        } else {
            let ip: IpAddr = s
                .parse()
                .map_err(|_| format!("{s:?} is not an IP address or CIDR range"))?;
            IpNet::from(ip)
        };
        if net.network() != net.addr() {
            return Err(format!(
                "{s:?} has host bits set; did you mean \"{}\"?",
                net.trunc()
            ));
        }
        Ok(IpRange(fold_mapped(net)))
    }
}

/// `::ffff:a.b.c.d/p` (p >= 96) is the IPv4 range a.b.c.d/(p-96).
fn fold_mapped(net: IpNet) -> IpNet {
    if let IpNet::V6(n) = net
        && n.prefix_len() >= 96
        && let Some(v4) = n.addr().to_ipv4_mapped()
        && let Ok(v4net) = Ipv4Net::new(v4, n.prefix_len() - 96)
    {
        return IpNet::V4(v4net);
    }
    net
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpNet::V4(n) if n.prefix_len() == 32 => write!(f, "{}", n.addr()),
            IpNet::V6(n) if n.prefix_len() == 128 => write!(f, "{}", n.addr()),
            n => write!(f, "{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for IpRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for IpRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> IpRange {
        s.parse().unwrap()
    }

    #[test]
    fn single_addresses_and_cidrs() {
        assert!(r("192.168.1.0/24").contains("192.168.1.77".parse().unwrap()));
        assert!(!r("192.168.1.0/24").contains("192.168.2.1".parse().unwrap()));
        assert!(r("10.0.0.1").contains("10.0.0.1".parse().unwrap()));
        assert!("10.0.0.1/8".parse::<IpRange>().is_err());
        assert!("banana".parse::<IpRange>().is_err());
    }

    #[test]
    fn mapped_forms_fold_to_ipv4() {
        assert_eq!(r("::ffff:192.168.1.0/120"), r("192.168.1.0/24"));
        assert_eq!(r("::ffff:0:0/96"), r("0.0.0.0/0"));
        assert!(r("::/0").contains("8.8.8.8".parse().unwrap()));
        assert!(r("::/0").ipv4_part().is_some());
        assert!(r("2001:db8::/32").ipv4_part().is_none());
    }
}
