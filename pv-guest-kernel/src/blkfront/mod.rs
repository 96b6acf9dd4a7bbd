//! blkfront: a Xen virtual block device as a small block-device API (read, write, flush
//! sectors) over a blkif ring shared with the backend in dom0.
//!
//! Data is never copied: every page of the caller's buffer is granted to the backend and the
//! backend has the disk DMA straight into it. With `feature-persistent` (offered by dom0's
//! blkback) a frame keeps its grant from its first use until the device disconnects
//! ([`GrantCache`], at most a ring's worth of segments), so a backend that keeps the mapping
//! needs no grant operation when the frame is used again; frames beyond that, or without the
//! feature, are granted for one request (read-only for writes) and revoked after it. A frame
//! used for I/O therefore stays granted to dom0 while the device is connected (do not give it
//! back to the hypervisor in the meantime). A transfer is cut into requests of at most 11
//! segments (one per page touched), and as many requests as the ring holds (32) are in
//! flight at once.
//!
//! This module is the pure part (host-tested): cutting a buffer into segments and requests,
//! and the shadow table that checks each response against the request it answers — the
//! backend is another domain, so a response with an unknown id, or for an id not in flight,
//! or with another operation, is dropped and counted rather than trusted. The kernel part
//! (handshake, grants, ring, event channel) is in `kernel`.

use alloc::vec::Vec;
use hypercall_abi::io::blkif::{BlkifResponse, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLK_RING_SIZE};
use hypercall_abi::{GrantRef, Mfn, PAGE_SIZE};

#[cfg(not(test))]
mod kernel;
#[cfg(not(test))]
pub use kernel::*;

/// Bytes per blkif sector.
pub const SECTOR: usize = 512;
/// Requests in flight at most (one ring).
pub const MAX_IN_FLIGHT: usize = BLK_RING_SIZE as usize;

/// Why a block operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkError {
    /// No vbd for this domain, or the backend never connected in time.
    NoDevice,
    /// The buffer is not a multiple of 512 bytes, or empty, or not mapped.
    BadBuffer,
    /// The sector range leaves the disk.
    OutOfRange,
    /// The disk is read-only.
    ReadOnly,
    /// The backend answered `BLKIF_RSP_ERROR`.
    Io,
    /// The backend answered `BLKIF_RSP_EOPNOTSUPP` (or never offered the feature).
    Unsupported,
    /// No room on the ring or in the grant table right now.
    Busy,
    /// The backend broke the protocol (bad indexes, bad responses) or went away.
    Protocol,
    /// xenstore, grant or event-channel set-up failed.
    Setup(hypercall_abi::Errno),
    /// Nothing came back in time.
    Timeout,
}

impl core::fmt::Display for BlkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BlkError::Setup(e) => write!(f, "set-up failed: {e}"),
            other => write!(f, "{other:?}"),
        }
    }
}

/// One page (or part of one) of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub mfn: Mfn,
    /// First and last 512-byte sector of the page, inclusive.
    pub first_sect: u8,
    pub last_sect: u8,
}

impl Segment {
    /// Sectors covered.
    pub fn sectors(&self) -> u64 {
        u64::from(self.last_sect - self.first_sect) + 1
    }
}

/// The segments of the buffer `[va, va + len)`: one per page touched. `mfn_of` gives the
/// frame of the page at a page-aligned address. The buffer must start on a 512-byte boundary
/// and be a non-zero multiple of 512 bytes long.
pub fn segments_of(
    va: u64,
    len: usize,
    mut mfn_of: impl FnMut(u64) -> Option<Mfn>,
) -> Result<Vec<Segment>, BlkError> {
    if len == 0 || !len.is_multiple_of(SECTOR) || !va.is_multiple_of(SECTOR as u64) {
        return Err(BlkError::BadBuffer);
    }
    let end = va.checked_add(len as u64).ok_or(BlkError::BadBuffer)?;
    let page = PAGE_SIZE as u64;
    let mut out = Vec::with_capacity(len / PAGE_SIZE + 2);
    let mut at = va;
    while at < end {
        let page_va = at & !(page - 1);
        let stop = end.min(page_va + page);
        let mfn = mfn_of(page_va).ok_or(BlkError::BadBuffer)?;
        out.push(Segment {
            mfn,
            first_sect: ((at - page_va) / SECTOR as u64) as u8,
            last_sect: ((stop - page_va) / SECTOR as u64 - 1) as u8,
        });
        at = stop;
    }
    Ok(out)
}

/// Cuts `segs` (a transfer starting at `sector`) into requests of at most 11 segments:
/// `(first sector, segments)` each.
pub fn requests(sector: u64, segs: &[Segment]) -> impl Iterator<Item = (u64, &[Segment])> {
    let mut at = sector;
    segs.chunks(BLKIF_MAX_SEGMENTS_PER_REQUEST).map(move |c| {
        let start = at;
        at += c.iter().map(Segment::sectors).sum::<u64>();
        (start, c)
    })
}

/// A request in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InFlight {
    pub operation: u8,
    /// The caller's cookie.
    pub tag: u64,
    pub grefs: [GrantRef; BLKIF_MAX_SEGMENTS_PER_REQUEST],
    pub nr_grefs: u8,
    /// Bit `i` set: `grefs[i]` was granted for this request only (revoke it when done);
    /// clear: a persistent grant, kept for the connection's lifetime.
    pub temporary: u16,
}

impl InFlight {
    pub fn grefs(&self) -> &[GrantRef] {
        &self.grefs[..self.nr_grefs as usize]
    }

    /// The grants to revoke once the request is answered.
    pub fn temporary_grefs(&self) -> impl Iterator<Item = GrantRef> + '_ {
        self.grefs().iter().enumerate().filter(|(i, _)| self.temporary & (1 << i) != 0).map(|(_, &g)| g)
    }
}

/// Persistent grants a frontend keeps at most: a ring's worth of segments (blkif.h's bound,
/// and the most a backend keeps mapped).
pub const MAX_PERSISTENT: usize = MAX_IN_FLIGHT * BLKIF_MAX_SEGMENTS_PER_REQUEST;

/// The frontend's persistent grants (`feature-persistent`): one grant per frame, made the
/// first time the frame is used for I/O and kept until the connection ends, so a backend
/// that keeps them mapped needs no grant operation for frames used again. Bounded by
/// [`MAX_PERSISTENT`]; beyond that, frames get per-request grants.
#[derive(Debug, Default)]
pub struct GrantCache {
    by_frame: alloc::collections::BTreeMap<u64, GrantRef>,
}

impl GrantCache {
    /// The persistent grant of `mfn`, if it has one.
    pub fn get(&self, mfn: Mfn) -> Option<GrantRef> {
        self.by_frame.get(&mfn.0).copied()
    }
    /// True if another frame can be made persistent.
    pub fn has_room(&self) -> bool {
        self.by_frame.len() < MAX_PERSISTENT
    }
    /// Records `gref` as `mfn`'s persistent grant; false (nothing recorded) if full or the
    /// frame already has one.
    pub fn insert(&mut self, mfn: Mfn, gref: GrantRef) -> bool {
        if !self.has_room() || self.by_frame.contains_key(&mfn.0) {
            return false;
        }
        self.by_frame.insert(mfn.0, gref);
        true
    }
    pub fn len(&self) -> usize {
        self.by_frame.len()
    }
    pub fn is_empty(&self) -> bool {
        self.by_frame.is_empty()
    }
    /// Every persistent grant, forgetting them (at disconnect).
    pub fn drain(&mut self) -> Vec<GrantRef> {
        core::mem::take(&mut self.by_frame).into_values().collect()
    }
}

/// Why a response was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BogusResponse {
    /// Its id is not a shadow index, or that entry is not in flight.
    UnknownId,
    /// Its operation is not the request's.
    WrongOperation,
}

/// The frontend's record of requests in flight, indexed by request id.
#[derive(Debug)]
pub struct Shadow {
    entries: [Option<InFlight>; MAX_IN_FLIGHT],
    free: Vec<u16>,
}

impl Default for Shadow {
    fn default() -> Self {
        Shadow { entries: [None; MAX_IN_FLIGHT], free: (0..MAX_IN_FLIGHT as u16).rev().collect() }
    }
}

impl Shadow {
    /// Records a request; returns its id.
    pub fn insert(&mut self, r: InFlight) -> Option<u64> {
        let id = self.free.pop()?;
        self.entries[id as usize] = Some(r);
        Some(u64::from(id))
    }

    /// Undoes `insert` for a request that was never sent.
    pub fn remove(&mut self, id: u64) -> Option<InFlight> {
        let i = usize::try_from(id).ok().filter(|&i| i < MAX_IN_FLIGHT)?;
        let r = self.entries[i].take()?;
        self.free.push(i as u16);
        Some(r)
    }

    /// Matches a response with its request and retires it.
    pub fn complete(&mut self, rsp: &BlkifResponse) -> Result<InFlight, BogusResponse> {
        let i =
            usize::try_from(rsp.id).ok().filter(|&i| i < MAX_IN_FLIGHT).ok_or(BogusResponse::UnknownId)?;
        match self.entries[i] {
            None => Err(BogusResponse::UnknownId),
            Some(r) if r.operation != rsp.operation => Err(BogusResponse::WrongOperation),
            Some(r) => {
                self.entries[i] = None;
                self.free.push(i as u16);
                Ok(r)
            }
        }
    }

    pub fn in_flight(&self) -> usize {
        MAX_IN_FLIGHT - self.free.len()
    }

    /// Every request still in flight (for teardown).
    pub fn drain(&mut self) -> Vec<InFlight> {
        let mut out = Vec::new();
        for i in 0..MAX_IN_FLIGHT {
            if let Some(r) = self.entries[i].take() {
                self.free.push(i as u16);
                out.push(r);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypercall_abi::io::blkif::op;
    use proptest::prelude::*;

    fn ident(va: u64) -> Option<Mfn> {
        Some(Mfn(va >> 12))
    }

    #[test]
    fn a_buffer_becomes_page_segments() {
        // 512 bytes before a page boundary, a whole page, then 1 KiB.
        let segs = segments_of(0x10e00, 512 + 4096 + 1024, ident).unwrap();
        assert_eq!(
            segs,
            vec![
                Segment { mfn: Mfn(0x10), first_sect: 7, last_sect: 7 },
                Segment { mfn: Mfn(0x11), first_sect: 0, last_sect: 7 },
                Segment { mfn: Mfn(0x12), first_sect: 0, last_sect: 1 },
            ]
        );
        assert_eq!(segments_of(0x1000, 100, ident), Err(BlkError::BadBuffer));
        assert_eq!(segments_of(0x1100, 512, ident), Err(BlkError::BadBuffer));
        assert_eq!(segments_of(0x1000, 0, ident), Err(BlkError::BadBuffer));
        assert_eq!(
            segments_of(0x1000, 8192, |va| (va == 0x1000).then_some(Mfn(1))),
            Err(BlkError::BadBuffer)
        );
        assert_eq!(segments_of(u64::MAX - 511, 1024, ident), Err(BlkError::BadBuffer));
    }

    #[test]
    fn requests_carry_eleven_segments_and_the_right_sectors() {
        let segs = segments_of(0x100000, 25 * 4096, ident).unwrap();
        let r: Vec<(u64, usize)> = requests(1000, &segs).map(|(s, c)| (s, c.len())).collect();
        assert_eq!(r, vec![(1000, 11), (1088, 11), (1176, 3)]);
    }

    #[test]
    fn responses_must_match_a_request_in_flight() {
        let mut s = Shadow::default();
        let r = InFlight { operation: op::READ, tag: 5, grefs: [GrantRef(0); 11], nr_grefs: 0, temporary: 0 };
        let id = s.insert(r).unwrap();
        let rsp = |id, operation| BlkifResponse { id, operation, ..Default::default() };
        assert_eq!(s.complete(&rsp(id, op::WRITE)), Err(BogusResponse::WrongOperation));
        assert_eq!(s.complete(&rsp(99, op::READ)), Err(BogusResponse::UnknownId));
        assert_eq!(s.complete(&rsp(u64::MAX, op::READ)), Err(BogusResponse::UnknownId));
        assert_eq!(s.complete(&rsp(id, op::READ)), Ok(r));
        assert_eq!(s.complete(&rsp(id, op::READ)), Err(BogusResponse::UnknownId), "answered twice");
        for _ in 0..MAX_IN_FLIGHT {
            assert!(s.insert(r).is_some());
        }
        assert!(s.insert(r).is_none());
        assert_eq!(s.drain().len(), MAX_IN_FLIGHT);
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn the_grant_cache_is_bounded_and_one_per_frame() {
        let mut c = GrantCache::default();
        assert!(c.insert(Mfn(1), GrantRef(8)));
        assert!(!c.insert(Mfn(1), GrantRef(9)), "one grant per frame");
        assert_eq!(c.get(Mfn(1)), Some(GrantRef(8)));
        for i in 2..=MAX_PERSISTENT as u64 {
            assert!(c.insert(Mfn(i), GrantRef(i as u32 + 8)));
        }
        assert!(!c.has_room());
        assert!(!c.insert(Mfn(99_999), GrantRef(1)));
        assert_eq!(c.drain().len(), MAX_PERSISTENT);
        assert!(c.is_empty() && c.get(Mfn(1)).is_none());
        let f = InFlight { operation: 0, tag: 0, grefs: [GrantRef(3); 11], nr_grefs: 3, temporary: 0b101 };
        assert_eq!(f.temporary_grefs().count(), 2);
    }

    proptest! {
        #[test]
        fn segments_cover_the_buffer_exactly(start_sect in 0u64..100_000, nsect in 1usize..600) {
            let va = start_sect * 512;
            let segs = segments_of(va, nsect * 512, ident).unwrap();
            prop_assert_eq!(segs.iter().map(Segment::sectors).sum::<u64>(), nsect as u64);
            let mut at = va;
            for s in &segs {
                prop_assert!(s.first_sect <= s.last_sect && s.last_sect < 8);
                prop_assert_eq!(s.mfn.0 * 4096 + u64::from(s.first_sect) * 512, at);
                at += s.sectors() * 512;
            }
            let mut next = 7u64;
            for (sector, chunk) in requests(7, &segs) {
                prop_assert!(!chunk.is_empty() && chunk.len() <= 11);
                prop_assert_eq!(sector, next);
                next += chunk.iter().map(Segment::sectors).sum::<u64>();
            }
        }

        #[test]
        fn arbitrary_responses_never_retire_anything_twice(rsps in proptest::collection::vec((0u64..40, 0u8..4), 0..100)) {
            let mut s = Shadow::default();
            let mut live = std::collections::BTreeMap::new();
            for k in 0..20u64 {
                let r = InFlight { operation: (k % 2) as u8, tag: k, grefs: [GrantRef(0); 11], nr_grefs: 0, temporary: 0 };
                live.insert(s.insert(r).unwrap(), r);
            }
            for (id, operation) in rsps {
                let got = s.complete(&BlkifResponse { id, operation, ..Default::default() });
                match live.get(&id) {
                    Some(r) if r.operation == operation => {
                        prop_assert_eq!(got, Ok(*r));
                        live.remove(&id);
                    }
                    _ => prop_assert!(got.is_err()),
                }
                prop_assert_eq!(s.in_flight(), live.len());
            }
        }
    }
}
