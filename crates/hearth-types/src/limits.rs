//! `ConnLimit`: how many connections a listener holds at once, in all and per client address,
//! as a counter with slots that give themselves back when dropped. No I/O: each server asks
//! it once per accepted connection and closes the connection when it says no.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The connections of one listener: at most `total`, and at most `per_client` from one
/// address, so one client holding idle connections cannot shut the others out.
#[derive(Debug)]
pub struct ConnLimit {
    total: usize,
    per_client: usize,
    /// Addresses exempt from `per_client` (trusted proxies, whose clients are many).
    exempt: Vec<IpAddr>,
    held: Mutex<(usize, HashMap<IpAddr, usize>)>,
    refused: AtomicU64,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
#[must_use = "the connection holds its place only while the slot lives"]
pub struct ConnSlot {
    limit: Arc<ConnLimit>,
    client: IpAddr,
}

impl ConnLimit {
    pub fn new(total: usize, per_client: usize) -> Arc<ConnLimit> {
        ConnLimit::with_exempt(total, per_client, Vec::new())
    }

    pub fn with_exempt(total: usize, per_client: usize, exempt: Vec<IpAddr>) -> Arc<ConnLimit> {
        Arc::new(ConnLimit {
            total,
            per_client,
            exempt,
            held: Mutex::new((0, HashMap::new())),
            refused: AtomicU64::new(0),
        })
    }

    /// A slot for a connection from `client`, or `None` (counted) when either limit is
    /// reached.
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Option<ConnSlot> {
        let client = canonical(client);
        let Ok(mut held) = self.held.lock() else {
            return None;
        };
        let (total, by_client) = &mut *held;
        let mine = by_client.get(&client).copied().unwrap_or(0);
        let over_client = mine >= self.per_client && !self.exempt.contains(&client);
        if *total >= self.total || over_client {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *total += 1;
        by_client.insert(client, mine + 1);
        Some(ConnSlot {
            limit: self.clone(),
            client,
        })
    }

    /// Connections refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections held now.
    pub fn held(&self) -> usize {
        self.held.lock().map_or(0, |held| held.0)
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let Ok(mut held) = self.limit.held.lock() {
            let (total, by_client) = &mut *held;
            *total = total.saturating_sub(1);
            if let Some(n) = by_client.get_mut(&self.client) {
                *n -= 1;
                if *n == 0 {
                    by_client.remove(&self.client);
                }
            }
        }
    }
}

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`) is the IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_cannot_take_every_place_and_places_come_back() {
        let limit = ConnLimit::new(5, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "::ffff:192.0.2.2".parse().unwrap();
        let a1 = limit.admit(a).unwrap();
        let _a2 = limit.admit(a).unwrap();
        assert!(limit.admit(a).is_none(), "a's third");
        let held: Vec<_> = (0..3).filter_map(|_| limit.admit(b)).collect();
        assert_eq!(held.len(), 2);
        assert_eq!(limit.held(), 4);
        drop(a1);
        assert!(limit.admit(a).is_some(), "a place came back");
        assert_eq!(limit.refused(), 2);
        // The total holds for everyone, and an exempt proxy only meets the total.
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let limit = ConnLimit::with_exempt(3, 1, vec![proxy]);
        let held: Vec<_> = (0..5).filter_map(|_| limit.admit(proxy)).collect();
        assert_eq!(held.len(), 3);
    }
}
