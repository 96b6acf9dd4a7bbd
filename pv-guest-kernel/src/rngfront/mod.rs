//! The random-number frontend (`hypercall_abi::io::rngif`): `read(&mut buf)` fills a buffer
//! with bytes from dom0's virtio-rng, over the split-driver framework.
//!
//! The device keeps [`PAGES`] pages granted (writable) to the backend for as long as it is
//! connected; a read asks for up to a page per request, one request per page in flight,
//! and copies each answer out of its page. The backend is another domain: a response
//! is accepted only for an id in flight, with status 0 and exactly the length asked for
//! ([`InFlight::complete`]); anything else fails the read.
//!
//! This module is the pure part (host-tested): the table of requests in flight that checks
//! each response against the request it answers. The kernel part (handshake, grants, ring,
//! event channel, the read loop) is in `kernel`.

use hypercall_abi::io::rngif::RngResponse;
use hypercall_abi::{Errno, PAGE_SIZE};

#[cfg(not(test))]
mod kernel;
#[cfg(not(test))]
pub use kernel::*;

/// Pages granted to the backend, i.e. requests in flight at most.
pub const PAGES: usize = 4;

/// Why a read failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RngError {
    /// No `vrng` device, or its backend never connected.
    NoDevice,
    /// Setting up failed (xenstore, grants, events).
    Setup(Errno),
    /// The backend answered `-errno`.
    Backend(Errno),
    /// The backend broke the protocol (ring indexes, unknown ids, wrong lengths).
    Protocol,
    /// No answer in time.
    Timeout,
}

impl core::fmt::Display for RngError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RngError::Setup(e) => write!(f, "set-up failed: {e}"),
            RngError::Backend(e) => write!(f, "backend error {e}"),
            other => write!(f, "{other:?}"),
        }
    }
}

/// Where the answer of an abandoned request goes: nowhere.
pub const DISCARD: usize = usize::MAX;

/// The requests in flight: per page, the id and length asked for and where in the caller's
/// buffer the bytes go.
#[derive(Debug, Default)]
pub struct InFlight {
    slots: [Option<(u64, usize, usize)>; PAGES],
    next_id: u64,
}

impl InFlight {
    /// A free page, if any.
    pub fn free_slot(&self) -> Option<usize> {
        self.slots.iter().position(Option::is_none)
    }
    /// Records a request for `len` bytes into the caller's buffer at `at` on page `slot`;
    /// returns its id.
    pub fn start(&mut self, slot: usize, at: usize, len: usize) -> u64 {
        self.next_id = self.next_id.wrapping_add(1);
        self.slots[slot] = Some((self.next_id, at, len));
        self.next_id
    }
    /// Forgets where the answers of the requests in flight were to go (a read failed and
    /// returned): they are still taken off the ring when they come, and dropped.
    pub fn abandon(&mut self) {
        for (_, at, _) in self.slots.iter_mut().flatten() {
            *at = DISCARD;
        }
    }
    /// Requests in flight.
    pub fn count(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }
    /// Matches a response with its request and retires it: `(slot, at, len)` to copy.
    pub fn complete(&mut self, r: &RngResponse) -> Result<(usize, usize, usize), RngError> {
        let slot =
            self.slots.iter().position(|s| s.is_some_and(|s| s.0 == r.id)).ok_or(RngError::Protocol)?;
        let (_, at, len) = self.slots[slot].take().ok_or(RngError::Protocol)?;
        if r.status < 0 {
            return Err(RngError::Backend(Errno(r.status.saturating_neg())));
        }
        if r.status != 0 || r.len as usize != len || len > PAGE_SIZE {
            return Err(RngError::Protocol);
        }
        Ok((slot, at, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn responses_must_answer_a_request_in_flight_exactly() {
        let mut f = InFlight::default();
        let a = f.start(0, 0, 4096);
        let b = f.start(1, 4096, 10);
        assert_eq!(f.free_slot(), Some(2));
        assert_eq!(f.complete(&RngResponse::ok(999, 10)), Err(RngError::Protocol), "unknown id");
        assert_eq!(f.complete(&RngResponse::ok(b, 11)), Err(RngError::Protocol), "wrong length");
        assert_eq!(f.count(), 1, "a bad answer still retires its request");
        assert_eq!(f.complete(&RngResponse::ok(a, 4096)), Ok((0, 0, 4096)));
        assert_eq!(f.complete(&RngResponse::ok(a, 4096)), Err(RngError::Protocol), "answered twice");
        let c = f.start(0, 0, 5);
        assert_eq!(f.complete(&RngResponse::error(c, Errno::EFAULT)), Err(RngError::Backend(Errno::EFAULT)));
        let d = f.start(3, 0, 1);
        assert_eq!(f.complete(&RngResponse { id: d, status: 7, len: 1 }), Err(RngError::Protocol));
        assert_eq!(f.count(), 0);
        // An abandoned request is still matched (and retired), with nowhere to go.
        let e = f.start(1, 100, 8);
        f.abandon();
        assert_eq!(f.complete(&RngResponse::ok(e, 8)), Ok((1, DISCARD, 8)));
        assert_eq!(f.count(), 0);
    }

    proptest! {
        #[test]
        fn arbitrary_responses_never_complete_more_than_was_asked(
            rsps in proptest::collection::vec((0u64..8, -30i32..3, 0u32..5000), 0..40)
        ) {
            let mut f = InFlight::default();
            let mut asked = std::collections::BTreeMap::new();
            for slot in 0..PAGES {
                let len = 1000 + slot;
                asked.insert(f.start(slot, slot * 4096, len), len);
            }
            for (id, status, len) in rsps {
                if let Ok((_, _, n)) = f.complete(&RngResponse { id, status, len }) {
                    prop_assert_eq!(asked.remove(&id), Some(n));
                    prop_assert!(status == 0 && n as u32 == len);
                }
            }
        }
    }
}
