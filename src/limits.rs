//! What a client may take: connections, per source address and in all, and
//! bytes spooled before its request is authenticated, from one budget for
//! the whole process with a share per source.
//!
//! A source is an IPv4 address, an IPv6 /64 (what one host or one customer
//! of a provider usually has), or every Unix-socket peer together.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

/// Most connections open at once from one source, unless `--max-connections-per-source` says otherwise.
pub const DEFAULT_CONNECTIONS_PER_SOURCE: usize = 32;
/// Most connections open at once in all, unless `--max-connections` says otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Bytes that requests not yet authenticated may spool in all, unless
/// `--preauth-budget` says otherwise. A source may hold half of it.
pub const DEFAULT_PREAUTH_BUDGET: u64 = 64 * 1024 * 1024;

/// Where a connection comes from, as far as limits are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// An IPv4 address.
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6([u8; 8]),
    /// A peer on a Unix socket (a reverse proxy, or a local client).
    Local,
}

impl Source {
    /// The source of a peer; `None` is a Unix-socket peer.
    pub fn of(peer: Option<SocketAddr>) -> Source {
        match peer.map(|a| a.ip().to_canonical()) {
            Some(IpAddr::V4(ip)) => Source::V4(ip.octets()),
            Some(IpAddr::V6(ip)) => {
                let mut prefix = [0; 8];
                prefix.copy_from_slice(&ip.octets()[..8]);
                Source::V6(prefix)
            }
            None => Source::Local,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::V4(ip) => Ipv4Addr::from(*ip).fmt(f),
            Source::V6(prefix) => {
                let mut ip = [0; 16];
                ip[..8].copy_from_slice(prefix);
                write!(f, "{}/64", Ipv6Addr::from(ip))
            }
            Source::Local => f.write_str("unix"),
        }
    }
}

/// The limits, as configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most connections from one source.
    pub connections_per_source: usize,
    /// Most connections in all.
    pub max_connections: usize,
    /// Most relay subscribers at once (each is a connection too).
    pub max_subscribers: usize,
    /// Bytes spooled before authentication, in all.
    pub preauth_budget: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            connections_per_source: DEFAULT_CONNECTIONS_PER_SOURCE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_subscribers: crate::relay::DEFAULT_MAX_SUBSCRIBERS,
            preauth_budget: DEFAULT_PREAUTH_BUDGET,
        }
    }
}

impl Limits {
    /// The part of the budget one source may hold.
    pub fn preauth_share(&self) -> u64 {
        self.preauth_budget / 2
    }
}

/// Open connections per source; kept by the event loop alone.
#[derive(Debug, Default)]
pub struct Connections {
    open: HashMap<Source, usize>,
    total: usize,
}

impl Connections {
    /// Counts a new connection from `source`, unless that source is at `limit`.
    pub fn admit(&mut self, source: Source, limit: usize) -> bool {
        let open = self.open.entry(source).or_default();
        if *open >= limit {
            return false;
        }
        *open += 1;
        self.total += 1;
        true
    }

    /// Forgets a connection from `source`.
    pub fn release(&mut self, source: Source) {
        if let Some(open) = self.open.get_mut(&source) {
            *open -= 1;
            self.total -= 1;
            if *open == 0 {
                self.open.remove(&source);
            }
        }
    }

    /// Connections open now, in all.
    pub fn total(&self) -> usize {
        self.total
    }

    /// The source with the most connections open, if any.
    pub fn busiest(&self) -> Option<(Source, usize)> {
        self.open
            .iter()
            .max_by_key(|(_, open)| **open)
            .map(|(source, open)| (*source, *open))
    }
}

/// The budget of bytes spooled before authentication; shared by the event
/// loop, which reserves, and the workers, whose reservations end.
#[derive(Debug)]
pub struct Budget {
    total: u64,
    share: u64,
    state: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    total: u64,
    by_source: HashMap<Source, u64>,
}

/// Bytes of the budget held for one request until dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    source: Source,
    bytes: u64,
}

impl Budget {
    /// A budget of `total` bytes, of which one source may hold `share`.
    pub fn new(total: u64, share: u64) -> Arc<Budget> {
        Arc::new(Budget {
            total,
            share,
            state: Mutex::default(),
        })
    }

    /// Holds `bytes` for a request from `source`, if both the whole budget
    /// and the source's share have room.
    pub fn reserve(self: &Arc<Budget>, source: Source, bytes: u64) -> Option<Reservation> {
        let mut reservation = Reservation {
            budget: Arc::clone(self),
            source,
            bytes: 0,
        };
        reservation.grow(bytes).then_some(reservation)
    }

    /// Bytes held now, in all.
    #[cfg(test)]
    fn held(&self) -> u64 {
        self.lock().total
    }

    fn lock(&self) -> MutexGuard<'_, Held> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Reservation {
    /// Holds `more` bytes on top, if there is room; false (and nothing more
    /// held) if not.
    pub fn grow(&mut self, more: u64) -> bool {
        let budget = &self.budget;
        let mut held = budget.lock();
        let source = held.by_source.get(&self.source).copied().unwrap_or(0);
        let fits = held
            .total
            .checked_add(more)
            .is_some_and(|t| t <= budget.total)
            && source.checked_add(more).is_some_and(|s| s <= budget.share);
        if fits && more > 0 {
            held.total += more;
            *held.by_source.entry(self.source).or_default() += more;
            self.bytes += more;
        }
        fits
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let mut held = self.budget.lock();
        held.total -= self.bytes;
        if let Some(source) = held.by_source.get_mut(&self.source) {
            *source -= self.bytes;
            if *source == 0 {
                held.by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(last: u8) -> Source {
        Source::of(Some(SocketAddr::from(([127, 0, 0, last], 1))))
    }

    #[test]
    fn ipv6_sources_are_64_bit_prefixes_and_mapped_ipv4_is_ipv4() {
        let a: SocketAddr = "[2001:db8:1:2::1]:1".parse().unwrap();
        let b: SocketAddr = "[2001:db8:1:2:ffff::9]:2".parse().unwrap();
        let c: SocketAddr = "[2001:db8:1:3::1]:1".parse().unwrap();
        assert_eq!(Source::of(Some(a)), Source::of(Some(b)));
        assert_ne!(Source::of(Some(a)), Source::of(Some(c)));
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:1".parse().unwrap();
        assert_eq!(Source::of(Some(mapped)), v4(1));
        assert_eq!(Source::of(None), Source::Local);
    }

    #[test]
    fn connections_are_capped_per_source() {
        let mut c = Connections::default();
        assert!(c.admit(v4(2), 2) && c.admit(v4(2), 2));
        assert!(!c.admit(v4(2), 2));
        assert!(c.admit(v4(3), 2));
        assert_eq!(c.total(), 3);
        assert_eq!(c.busiest(), Some((v4(2), 2)));
        c.release(v4(2));
        assert!(c.admit(v4(2), 2));
        c.release(v4(3));
        assert_eq!(c.total(), 2);
    }

    #[test]
    fn the_budget_has_a_total_and_a_share_per_source() {
        let budget = Budget::new(100, 50);
        let a = budget.reserve(v4(2), 50).expect("a share fits");
        assert!(budget.reserve(v4(2), 1).is_none(), "over the share");
        let mut b = budget.reserve(v4(3), 40).expect("another source");
        assert!(!b.grow(11), "over the total");
        assert!(b.grow(10));
        assert_eq!(budget.held(), 100);
        drop(a);
        assert_eq!(budget.held(), 50);
        assert!(budget.reserve(v4(2), 50).is_some());
        drop(b);
        assert_eq!(budget.held(), 0);
        assert!(budget.reserve(v4(2), u64::MAX).is_none());
    }
}
