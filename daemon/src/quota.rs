//! Resource quotas charged per uid (as dbus-broker does), not per
//! connection: a user cannot escape them by opening more connections.

use std::collections::HashMap;

/// What one uid may hold at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Open connections.
    pub connections: usize,
    /// Registered services.
    pub services: usize,
    /// Live streams it called.
    pub streams: usize,
    /// Ring (and socket window) bytes of the live streams it called.
    pub ring_bytes: u64,
    /// Descriptors queued by the broker toward its connections, not yet delivered.
    pub fds_in_flight: usize,
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            connections: 256,
            services: 256,
            streams: 1024,
            ring_bytes: 4 << 30,
            fds_in_flight: 4096,
        }
    }
}

/// Quotas for every uid, with overrides for some.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quotas {
    /// For uids without an override.
    pub default: Quota,
    /// Per-uid overrides.
    pub per_uid: HashMap<u32, Quota>,
}

impl Quotas {
    /// The quota of `uid`.
    pub fn of(&self, uid: u32) -> Quota {
        self.per_uid.get(&uid).copied().unwrap_or(self.default)
    }
}

/// What a uid holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Open connections.
    pub connections: usize,
    /// Registered services.
    pub services: usize,
    /// Live streams.
    pub streams: usize,
    /// Ring bytes of live streams.
    pub ring_bytes: u64,
    /// Descriptors not yet delivered.
    pub fds_in_flight: usize,
}

/// A resource a uid may run out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// Connections.
    Connections,
    /// Services.
    Services,
    /// Streams and their ring bytes.
    Streams,
    /// Descriptors in flight.
    Fds,
}

/// Charges and releases usage per uid against the quotas.
#[derive(Debug, Default)]
pub struct Ledger {
    usage: HashMap<u32, Usage>,
}

impl Ledger {
    /// Current usage of `uid`.
    pub fn usage(&self, uid: u32) -> Usage {
        self.usage.get(&uid).copied().unwrap_or_default()
    }

    /// Takes `amount` of `what` for `uid` if the quota allows.
    pub fn charge(
        &mut self,
        quotas: &Quotas,
        uid: u32,
        what: Resource,
        amount: u64,
    ) -> Result<(), String> {
        let q = quotas.of(uid);
        let u = self.usage.entry(uid).or_default();
        let (used, limit, name) = match what {
            Resource::Connections => (u.connections as u64, q.connections as u64, "connections"),
            Resource::Services => (u.services as u64, q.services as u64, "services"),
            Resource::Streams => (u.streams as u64, q.streams as u64, "streams"),
            Resource::Fds => (
                u.fds_in_flight as u64,
                q.fds_in_flight as u64,
                "descriptors in flight",
            ),
        };
        let step = if what == Resource::Streams { 1 } else { amount };
        let refusal = if used + step > limit {
            Some(format!("uid {uid} is at its quota of {limit} {name}"))
        } else if what == Resource::Streams && u.ring_bytes + amount > q.ring_bytes {
            Some(format!(
                "uid {uid} is at its quota of {} ring bytes ({} in use, {amount} asked)",
                q.ring_bytes, u.ring_bytes
            ))
        } else {
            None
        };
        if let Some(msg) = refusal {
            // A uid refused before it held anything leaves no entry behind.
            if *u == Usage::default() {
                self.usage.remove(&uid);
            }
            return Err(msg);
        }
        match what {
            Resource::Connections => u.connections += 1,
            Resource::Services => u.services += 1,
            Resource::Streams => {
                u.streams += 1;
                u.ring_bytes += amount;
            }
            Resource::Fds => u.fds_in_flight += amount as usize,
        }
        Ok(())
    }

    /// Gives back what [`charge`](Self::charge) took.
    pub fn release(&mut self, uid: u32, what: Resource, amount: u64) {
        let Some(u) = self.usage.get_mut(&uid) else {
            return;
        };
        match what {
            Resource::Connections => u.connections = u.connections.saturating_sub(1),
            Resource::Services => u.services = u.services.saturating_sub(1),
            Resource::Streams => {
                u.streams = u.streams.saturating_sub(1);
                u.ring_bytes = u.ring_bytes.saturating_sub(amount);
            }
            Resource::Fds => u.fds_in_flight = u.fds_in_flight.saturating_sub(amount as usize),
        }
        if *u == Usage::default() {
            self.usage.remove(&uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_stop_at_the_quota_and_release_gives_back() {
        let mut quotas = Quotas::default();
        quotas.per_uid.insert(
            7,
            Quota {
                streams: 2,
                ring_bytes: 100,
                ..Quota::default()
            },
        );
        let mut l = Ledger::default();
        l.charge(&quotas, 7, Resource::Streams, 40).unwrap();
        l.charge(&quotas, 7, Resource::Streams, 40).unwrap();
        assert!(
            l.charge(&quotas, 7, Resource::Streams, 1).is_err(),
            "stream count"
        );
        l.release(7, Resource::Streams, 40);
        assert!(
            l.charge(&quotas, 7, Resource::Streams, 61).is_err(),
            "ring bytes"
        );
        l.charge(&quotas, 7, Resource::Streams, 60).unwrap();
        // Another uid is unaffected.
        l.charge(&quotas, 8, Resource::Streams, 1 << 20).unwrap();
        l.release(7, Resource::Streams, 40);
        l.release(7, Resource::Streams, 60);
        assert_eq!(l.usage(7), Usage::default());
    }

    #[test]
    fn a_uid_refused_while_holding_nothing_is_not_remembered() {
        let mut quotas = Quotas::default();
        quotas.per_uid.insert(
            9,
            Quota {
                connections: 0,
                ..Quota::default()
            },
        );
        let mut l = Ledger::default();
        for _ in 0..3 {
            assert!(l.charge(&quotas, 9, Resource::Connections, 1).is_err());
        }
        assert!(l.usage.is_empty());
        // One that holds something keeps its entry.
        l.charge(&quotas, 8, Resource::Connections, 1).unwrap();
        assert!(l.charge(&quotas, 8, Resource::Streams, 8 << 30).is_err());
        assert_eq!(l.usage(8).connections, 1);
    }
}
