//! Behind a reverse proxy: which peers may say who the client is
//! (`--trusted-proxy`), and the client's address they give in `Forwarded`
//! (RFC 7239) or `X-Forwarded-For`. From any other peer those fields are
//! ignored: the peer itself is the client.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use crate::read::Head;

/// An address block: `ADDR/BITS`, or one address. Also what a hook's
/// `allow_from` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// The block's address.
    addr: IpAddr,
    /// How many leading bits must match.
    bits: u8,
}

impl FromStr for Block {
    type Err = String;

    fn from_str(text: &str) -> Result<Block, String> {
        let (addr, bits) = match text.split_once('/') {
            Some((addr, bits)) => (addr, Some(bits)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            format!("{text:?} is not an address or ADDR/BITS (e.g. 127.0.0.1, 10.0.0.0/8, ::1)")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(bits) => bits
                .parse()
                .ok()
                .filter(|&b| b <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Block { addr, bits })
    }
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.bits)
    }
}

impl Block {
    /// Whether `ip` is in the block; an IPv4-mapped IPv6 address counts as
    /// the IPv4 address it maps.
    pub fn holds(&self, ip: IpAddr) -> bool {
        let bits = self.bits;
        let matches = |a: &[u8], b: &[u8]| {
            let (whole, rest) = (usize::from(bits / 8), bits % 8);
            a[..whole] == b[..whole] && (rest == 0 || (a[whole] ^ b[whole]) >> (8 - rest) == 0)
        };
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(a), IpAddr::V4(b)) => matches(&a.octets(), &b.octets()),
            (IpAddr::V6(a), IpAddr::V6(b)) => matches(&a.octets(), &b.octets()),
            // A block of IPv4-mapped addresses holds the IPv4 addresses they map.
            (IpAddr::V6(a), IpAddr::V4(b)) => matches(&a.octets(), &b.to_ipv6_mapped().octets()),
            _ => false,
        }
    }
}

/// A peer trusted to forward: an address block, or every Unix-socket peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trusted {
    /// Peers in this block.
    Net(Block),
    /// Peers on a Unix socket (`unix`): whoever may open it, e.g. nginx.
    Unix,
}

impl FromStr for Trusted {
    type Err = String;

    fn from_str(text: &str) -> Result<Trusted, String> {
        if text == "unix" {
            return Ok(Trusted::Unix);
        }
        text.parse()
            .map(Trusted::Net)
            .map_err(|e: String| e.replace(" or ADDR/BITS", ", ADDR/BITS or unix"))
    }
}

impl fmt::Display for Trusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trusted::Net(block) => block.fmt(f),
            Trusted::Unix => f.write_str("unix"),
        }
    }
}

impl Trusted {
    fn holds(&self, ip: IpAddr) -> bool {
        matches!(self, Trusted::Net(block) if block.holds(ip))
    }
}

/// Whether `peer` (`None`: a Unix-socket peer) may say who the client is.
pub fn is_trusted(trusted: &[Trusted], peer: Option<SocketAddr>) -> bool {
    match peer {
        None => trusted.contains(&Trusted::Unix),
        Some(peer) => trusted.iter().any(|t| t.holds(peer.ip())),
    }
}

/// Most forwarded addresses looked at, from the nearest hop back.
const MAX_HOPS: usize = 16;

/// The client's address: the nearest address in the forwarding fields that
/// is not a trusted proxy, when `peer` is trusted; else the peer's own.
/// `None` for a Unix-socket peer that gives none.
pub fn client(trusted: &[Trusted], peer: Option<SocketAddr>, head: &Head) -> Option<IpAddr> {
    let own = peer.map(|p| p.ip().to_canonical());
    if !is_trusted(trusted, peer) {
        return own;
    }
    let hops = forwarded(head);
    let mut nearest = own;
    for hop in hops.iter().rev().take(MAX_HOPS) {
        let Some(ip) = hop else {
            // Unparseable: nothing behind it can be believed either.
            return nearest;
        };
        nearest = Some(*ip);
        if !trusted.iter().any(|t| t.holds(*ip)) {
            return nearest;
        }
    }
    nearest
}

/// The forwarded-for addresses, farthest first: from `Forwarded` if it is
/// there (RFC 7239 §5.2), else from `X-Forwarded-For`; `None` for an entry
/// that is not an address (`unknown`, an obfuscated name, garbage).
fn forwarded(head: &Head) -> Vec<Option<IpAddr>> {
    let values = |name: &str| -> Vec<String> {
        head.headers
            .iter()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .map(|e| e.trim().to_owned())
            .collect()
    };
    let standard = values("forwarded");
    if !standard.is_empty() {
        return standard
            .iter()
            .map(|element| {
                element
                    .split(';')
                    .find_map(|pair| {
                        let (key, value) = pair.trim().split_once('=')?;
                        key.eq_ignore_ascii_case("for").then_some(value)
                    })
                    .and_then(parse_node)
            })
            .collect();
    }
    values("x-forwarded-for")
        .iter()
        .map(|e| parse_node(e))
        .collect()
}

/// An address as forwarding fields write it: `1.2.3.4`, `1.2.3.4:80`,
/// `2001:db8::1`, `"[2001:db8::1]:4711"`.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr.ip().to_canonical());
    }
    let bracketed = node.strip_prefix('[')?.split(']').next()?;
    bracketed.parse::<IpAddr>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::Framing;

    fn head(fields: &[(&str, &str)]) -> Head {
        Head {
            method: "POST".into(),
            path: "/hooks/a".into(),
            query: None,
            minor_version: 1,
            headers: fields
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
            framing: Framing::Empty,
            expect_continue: false,
        }
    }

    fn trusted(list: &[&str]) -> Vec<Trusted> {
        list.iter().map(|t| t.parse().unwrap()).collect()
    }

    fn peer(ip: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(ip.parse().unwrap(), 4000))
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn blocks_are_parsed_and_matched() {
        let t: Trusted = "10.1.0.0/16".parse().unwrap();
        assert!(t.holds("10.1.200.3".parse().unwrap()));
        assert!(!t.holds("10.2.0.1".parse().unwrap()));
        let t: Trusted = "192.168.1.128/25".parse().unwrap();
        assert!(t.holds("192.168.1.200".parse().unwrap()));
        assert!(!t.holds("192.168.1.100".parse().unwrap()));
        let t: Trusted = "2001:db8::/32".parse().unwrap();
        assert!(t.holds("2001:db8:ffff::1".parse().unwrap()));
        assert!(!t.holds("127.0.0.1".parse().unwrap()));
        let one: Trusted = "::ffff:127.0.0.1".parse().unwrap();
        assert!(one.holds("127.0.0.1".parse().unwrap()));
        for bad in ["", "10.0.0.0/33", "::/129", "host", "10.0.0.0/x", "UNIX"] {
            assert!(bad.parse::<Trusted>().is_err(), "{bad}");
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let h = head(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("forwarded", "for=1.2.3.4"),
        ]);
        assert_eq!(
            client(&trusted(&["127.0.0.1"]), peer("198.51.100.7"), &h),
            ip("198.51.100.7")
        );
        assert_eq!(client(&[], peer("127.0.0.1"), &h), ip("127.0.0.1"));
        assert_eq!(client(&[], None, &h), None);
    }

    #[test]
    fn the_nearest_untrusted_hop_is_the_client() {
        let t = trusted(&["127.0.0.1", "10.0.0.0/8", "unix"]);
        let h = head(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.0.0.2")]);
        assert_eq!(client(&t, peer("127.0.0.1"), &h), ip("203.0.113.9"));
        assert_eq!(client(&t, None, &h), ip("203.0.113.9"));
        let two = head(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(client(&t, peer("10.9.9.9"), &two), ip("203.0.113.9"));
        // Forwarded wins over X-Forwarded-For, which a proxy may pass on unchecked.
        let both = head(&[
            ("x-forwarded-for", "6.6.6.6"),
            (
                "forwarded",
                "for=\"[2001:db8::1]:4711\";proto=https, for=10.0.0.3",
            ),
        ]);
        assert_eq!(client(&t, peer("127.0.0.1"), &both), ip("2001:db8::1"));
        // Nothing forwarded: the proxy itself.
        assert_eq!(client(&t, peer("127.0.0.1"), &head(&[])), ip("127.0.0.1"));
        // Garbage nearest: nothing behind it is believed.
        let junk = head(&[("x-forwarded-for", "6.6.6.6, unknown")]);
        assert_eq!(client(&t, peer("127.0.0.1"), &junk), ip("127.0.0.1"));
    }
}
