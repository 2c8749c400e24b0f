//! Credit accounting: the backpressure loop of "Credit" in `PROTOCOL.md`
//! (at the repository root), without I/O.
//!
//! Credit is kept as absolute totals, so a lost or repeated announcement can
//! never inflate it: the receiver announces a *limit* (`consumed + hwm`), the
//! sender may send while `charged + size(item) <= limit`. The receiver
//! re-announces only when the credit it still expects to see used
//! (`limit - consumed`) falls below half the high-water mark.
//!
//! Both transports use these two types: the shared-memory port stores the
//! limit in the ring header, the socket port sends it in credit frames.

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

/// How an item is charged against credit.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeStrategy {
    /// Every item costs 1.
    Items,
    /// An item costs its length in bytes.
    Bytes,
    /// The sender applies its own function; the receiver returns what the
    /// sender charged.
    Custom,
}

impl SizeStrategy {
    /// The charge for an item of `len` bytes, where the strategy fixes it.
    #[inline]
    pub fn fixed_charge(self, len: usize) -> Option<u64> {
        match self {
            SizeStrategy::Items => Some(1),
            SizeStrategy::Bytes => Some(len as u64),
            SizeStrategy::Custom => None,
        }
    }
}

/// Credit parameters of a stream, chosen by the caller.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditSpec {
    /// Most credit the receiver grants at once.
    pub high_water_mark: u64,
    /// How items are charged.
    pub strategy: SizeStrategy,
}

impl CreditSpec {
    /// One credit per item, up to `hwm` items in flight.
    pub fn items(hwm: u64) -> Self {
        CreditSpec {
            high_water_mark: hwm,
            strategy: SizeStrategy::Items,
        }
    }

    /// One credit per byte, up to `hwm` bytes in flight.
    pub fn bytes(hwm: u64) -> Self {
        CreditSpec {
            high_water_mark: hwm,
            strategy: SizeStrategy::Bytes,
        }
    }

    /// A sender-defined charge per item, up to `hwm` in flight.
    pub fn custom(hwm: u64) -> Self {
        CreditSpec {
            high_water_mark: hwm,
            strategy: SizeStrategy::Custom,
        }
    }

    /// Checks the parameters a peer proposed.
    pub fn validate(&self) -> Result<(), CreditError> {
        if self.high_water_mark == 0 || self.high_water_mark > (1 << 48) {
            return Err(CreditError::BadHighWaterMark(self.high_water_mark));
        }
        Ok(())
    }
}

impl Default for CreditSpec {
    fn default() -> Self {
        CreditSpec::bytes(1 << 20)
    }
}

/// A violation of the credit protocol by the other peer, or an impossible request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CreditError {
    /// The high-water mark is zero or absurd.
    #[error("high-water mark {0} is out of range")]
    BadHighWaterMark(u64),
    /// An item costs more than half the high-water mark: it could never be
    /// sent safely (see [`max_charge`]).
    #[error("item charge {charge} exceeds half the high-water mark {hwm}")]
    ItemExceedsHighWaterMark {
        /// The item's charge.
        charge: u64,
        /// The stream's high-water mark.
        hwm: u64,
    },
    /// The receiver announced a limit that went backwards or beyond what it could grant.
    #[error("credit limit {limit} is invalid (previous {previous}, charged {charged}, hwm {hwm})")]
    BadLimit {
        /// Announced limit.
        limit: u64,
        /// Limit seen before.
        previous: u64,
        /// Sender's charged total.
        charged: u64,
        /// High-water mark.
        hwm: u64,
    },
    /// The sender sent more than it was granted.
    #[error("sender overran its credit: {received} received, limit {limit}")]
    Overrun {
        /// Charged total including the offending item.
        received: u64,
        /// Limit granted.
        limit: u64,
    },
    /// The charge does not match the stream's size strategy.
    #[error("item of {len} bytes charged {charge}, not what the size strategy gives")]
    WrongCharge {
        /// Item length.
        len: usize,
        /// Charge it carried.
        charge: u64,
    },
    /// The receiver released more than it received.
    #[error("released more credit than was received")]
    ReleaseUnderflow,
}

/// What a blob of `len` bytes costs where the strategy fixes it: one item
/// under [`SizeStrategy::Items`], its size under [`SizeStrategy::Bytes`];
/// under [`SizeStrategy::Custom`] the sender chooses (`None`).
#[inline]
pub fn blob_charge(strategy: SizeStrategy, len: u64) -> Option<u64> {
    match strategy {
        SizeStrategy::Items => Some(1),
        SizeStrategy::Bytes => Some(len),
        SizeStrategy::Custom => None,
    }
}

/// The most one item may be charged: half the high-water mark (at least 1).
///
/// The receiver re-grants only once outstanding credit drops below half the
/// mark; capping items at that half guarantees the re-grant always frees
/// enough for any blocked item, so sender and receiver can never both wait.
#[inline]
pub fn max_charge(hwm: u64) -> u64 {
    (hwm / 2).max(1)
}

/// The sender's side: what it has charged and the limit it was granted.
#[derive(Debug, Clone)]
pub struct SendCredit {
    hwm: u64,
    charged: u64,
    limit: u64,
}

impl SendCredit {
    /// A sender starts with a full grant of `hwm`.
    pub fn new(spec: CreditSpec) -> Self {
        SendCredit {
            hwm: spec.high_water_mark,
            charged: 0,
            limit: spec.high_water_mark,
        }
    }

    /// Credit still available.
    #[inline]
    pub fn available(&self) -> u64 {
        self.limit - self.charged
    }

    /// Total charged so far.
    #[inline]
    pub fn charged(&self) -> u64 {
        self.charged
    }

    /// The limit currently granted.
    #[inline]
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Whether an item of this charge may be sent now; an error if it never can.
    #[inline]
    pub fn check(&self, charge: u64) -> Result<bool, CreditError> {
        if charge > max_charge(self.hwm) {
            return Err(CreditError::ItemExceedsHighWaterMark {
                charge,
                hwm: self.hwm,
            });
        }
        Ok(self.charged + charge <= self.limit)
    }

    /// Records a sent item. Call only after [`check`](Self::check) said yes.
    #[inline]
    pub fn charge(&mut self, charge: u64) {
        debug_assert!(self.charged + charge <= self.limit);
        self.charged += charge;
    }

    /// Applies a limit announced by the receiver. A limit may only grow, and
    /// never past `charged + hwm` (the receiver cannot have consumed more than
    /// was sent).
    pub fn update_limit(&mut self, limit: u64) -> Result<(), CreditError> {
        if limit < self.limit || limit > self.charged.saturating_add(self.hwm) {
            return Err(CreditError::BadLimit {
                limit,
                previous: self.limit,
                charged: self.charged,
                hwm: self.hwm,
            });
        }
        self.limit = limit;
        Ok(())
    }
}

/// The receiver's side: what it has received and consumed, and the limit it announced.
#[derive(Debug, Clone)]
pub struct RecvCredit {
    spec: CreditSpec,
    received: u64,
    consumed: u64,
    announced: u64,
}

impl RecvCredit {
    /// A receiver starts having granted `hwm`.
    pub fn new(spec: CreditSpec) -> Self {
        RecvCredit {
            spec,
            received: 0,
            consumed: 0,
            announced: spec.high_water_mark,
        }
    }

    /// Validates an arriving item's charge against the strategy and the limit.
    #[inline]
    pub fn on_receive(&mut self, len: usize, charge: u64) -> Result<(), CreditError> {
        if let Some(fixed) = self.spec.strategy.fixed_charge(len) {
            if fixed != charge {
                return Err(CreditError::WrongCharge { len, charge });
            }
        }
        self.admit(charge)
    }

    /// Validates an arriving blob's charge (see [`blob_charge`]) against
    /// the strategy and the limit.
    #[inline]
    pub fn on_receive_blob(&mut self, len: u64, charge: u64) -> Result<(), CreditError> {
        if let Some(fixed) = blob_charge(self.spec.strategy, len) {
            if fixed != charge {
                return Err(CreditError::WrongCharge {
                    len: len as usize,
                    charge,
                });
            }
        }
        self.admit(charge)
    }

    /// Counts a charge as received, unless it overruns the announced limit.
    #[inline]
    fn admit(&mut self, charge: u64) -> Result<(), CreditError> {
        let received = self.received.saturating_add(charge);
        if received > self.announced {
            return Err(CreditError::Overrun {
                received,
                limit: self.announced,
            });
        }
        self.received = received;
        Ok(())
    }

    /// Records that items worth `charge` were processed. Returns the new limit
    /// to announce when outstanding credit fell below half the high-water mark.
    #[inline]
    pub fn on_consume(&mut self, charge: u64) -> Result<Option<u64>, CreditError> {
        let consumed = self.consumed + charge;
        if consumed > self.received {
            return Err(CreditError::ReleaseUnderflow);
        }
        self.consumed = consumed;
        if self.outstanding() < self.spec.high_water_mark.div_ceil(2) {
            self.announced = self.consumed + self.spec.high_water_mark;
            return Ok(Some(self.announced));
        }
        Ok(None)
    }

    /// Credit granted and not yet consumed: the most the sender can still have in flight.
    #[inline]
    pub fn outstanding(&self) -> u64 {
        self.announced - self.consumed
    }

    /// Received but not yet consumed.
    #[inline]
    pub fn in_flight(&self) -> u64 {
        self.received - self.consumed
    }

    /// The limit last announced.
    pub fn announced(&self) -> u64 {
        self.announced
    }

    /// The stream's credit parameters.
    pub fn spec(&self) -> CreditSpec {
        self.spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_is_granted_again_below_half_the_high_water_mark() {
        let spec = CreditSpec::items(16);
        let mut tx = SendCredit::new(spec);
        let mut rx = RecvCredit::new(spec);
        let mut announcements = Vec::new();
        for _ in 0..16 {
            assert!(tx.check(1).unwrap());
            tx.charge(1);
        }
        assert!(!tx.check(1).unwrap(), "no credit left after hwm items");
        for i in 0..16 {
            rx.on_receive(10, 1).unwrap();
            if let Some(limit) = rx.on_consume(1).unwrap() {
                announcements.push((i, limit));
                tx.update_limit(limit).unwrap();
            }
        }
        // Outstanding drops below 8 after the 9th item (index 8): announce 9 + 16.
        assert_eq!(announcements[0], (8, 25));
        assert!(tx.available() > 0);
    }

    #[test]
    fn in_flight_never_exceeds_the_high_water_mark() {
        let spec = CreditSpec::bytes(1000);
        let mut tx = SendCredit::new(spec);
        let mut rx = RecvCredit::new(spec);
        let mut in_flight = std::collections::VecDeque::new();
        for step in 0..10_000u64 {
            let len = (step * 7919 % 300) as usize;
            if tx.check(len as u64).unwrap() {
                tx.charge(len as u64);
                rx.on_receive(len, len as u64).unwrap();
                in_flight.push_back(len as u64);
            } else if let Some(c) = in_flight.pop_front() {
                if let Some(limit) = rx.on_consume(c).unwrap() {
                    tx.update_limit(limit).unwrap();
                }
            }
            assert!(rx.in_flight() <= 1000);
            assert!(tx.charged() - (rx.received - rx.in_flight()) <= 1000);
        }
    }

    #[test]
    fn a_blocked_item_is_always_freed_once_everything_is_consumed() {
        // Any item the sender may send fits once the receiver consumed all.
        for hwm in [1u64, 2, 3, 10, 1000, 1001] {
            for first in 0..=max_charge(hwm) {
                let spec = CreditSpec::custom(hwm);
                let (mut tx, mut rx) = (SendCredit::new(spec), RecvCredit::new(spec));
                if first > 0 {
                    tx.charge(first);
                    rx.on_receive(0, first).unwrap();
                    if let Some(l) = rx.on_consume(first).unwrap() {
                        tx.update_limit(l).unwrap();
                    }
                }
                assert!(
                    tx.check(max_charge(hwm)).unwrap(),
                    "hwm {hwm}, first {first}"
                );
            }
        }
    }

    #[test]
    fn hostile_values_are_rejected() {
        let spec = CreditSpec::items(4);
        let mut tx = SendCredit::new(spec);
        assert!(tx.update_limit(3).is_err(), "limit went backwards");
        assert!(tx.update_limit(5).is_err(), "limit beyond charged + hwm");
        let mut rx = RecvCredit::new(spec);
        assert!(matches!(
            rx.on_receive(8, 2),
            Err(CreditError::WrongCharge { .. })
        ));
        for _ in 0..4 {
            rx.on_receive(8, 1).unwrap();
        }
        assert!(matches!(
            rx.on_receive(8, 1),
            Err(CreditError::Overrun { .. })
        ));
        assert!(matches!(
            tx.check(3),
            Err(CreditError::ItemExceedsHighWaterMark { .. })
        ));
        let mut bytes = RecvCredit::new(CreditSpec::bytes(10));
        assert!(bytes.on_receive(3, 3).is_ok());
        assert!(bytes.on_consume(4).is_err());
    }
}
