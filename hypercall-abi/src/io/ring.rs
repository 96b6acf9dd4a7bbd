//! Xen's request/response rings (`public/io/ring.h`) as safe Rust that never trusts the peer.
//!
//! A ring is a page shared by a frontend and a backend: a 64-byte header of free-running
//! `u32` indexes followed by a power-of-two array of slots, each the size of
//! `union { request; response; }`. The frontend produces requests and consumes responses; the
//! backend does the opposite, answering each request in the slot it came from.
//!
//! The peer can change the page at any moment, so nothing here takes a reference into it (a
//! `&T` into memory that changes under it is undefined behaviour, and reading a field twice can
//! see two values: the XSA-155 double fetch). All access goes through [`RingMemory`], which
//! copies bytes in and out, and every entry is copied exactly once into private memory before
//! the caller sees it. Indexes the peer writes are checked on every read: a producer that runs
//! more than a ring ahead, or moves backwards, yields [`RingError::Overflow`] rather than
//! garbage entries.
//!
//! Notifications follow `ring.h`'s hold-off protocol: a consumer about to sleep writes
//! `*_event = cons + 1` and re-checks after a full barrier; a producer publishes its index, does
//! a full barrier and then notifies only if the new entries cross the event index. The
//! `loom_ring` integration test model-checks that no notification is lost.

use core::marker::PhantomData;
use core::sync::atomic::{fence, AtomicU32, Ordering};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// Access to a shared ring area (one page, or several contiguous ones), at byte offsets from
/// its start.
///
/// Implementations must use atomic or volatile accesses: the peer writes the same memory
/// concurrently. The ring code relies on these orderings:
/// * [`load_u32_acquire`](Self::load_u32_acquire): later reads (of slots) are not performed
///   before it (`rmb()` after reading a producer index);
/// * [`store_u32_release`](Self::store_u32_release): earlier writes (of slots) are visible
///   before it (`wmb()` before publishing a producer index);
/// * [`fence`](Self::fence): a full barrier (`mb()`) ordering earlier stores before later loads;
/// * [`read_bytes`](Self::read_bytes)/[`write_bytes`](Self::write_bytes): plain copies with no
///   ordering of their own (each byte read once).
///
/// The ring code only passes offsets inside the area it was told about, 4-byte aligned for the
/// `u32` accessors. Guests implement this over their mapping of the page; [`AtomicPage`] is an
/// implementation over ordinary memory for hosts, tests and rings in private memory.
pub trait RingMemory {
    /// Reads the `u32` at `off` with acquire ordering.
    fn load_u32_acquire(&self, off: usize) -> u32;
    /// Writes the `u32` at `off` with release ordering.
    fn store_u32_release(&self, off: usize, v: u32);
    /// Full memory barrier.
    fn fence(&self);
    /// Copies `buf.len()` bytes at `off` into `buf`.
    fn read_bytes(&self, off: usize, buf: &mut [u8]);
    /// Copies `data` to `off`.
    fn write_bytes(&self, off: usize, data: &[u8]);
}

impl<M: RingMemory + ?Sized> RingMemory for &M {
    fn load_u32_acquire(&self, off: usize) -> u32 {
        (**self).load_u32_acquire(off)
    }
    fn store_u32_release(&self, off: usize, v: u32) {
        (**self).store_u32_release(off, v)
    }
    fn fence(&self) {
        (**self).fence()
    }
    fn read_bytes(&self, off: usize, buf: &mut [u8]) {
        (**self).read_bytes(off, buf)
    }
    fn write_bytes(&self, off: usize, data: &[u8]) {
        (**self).write_bytes(off, data)
    }
}

// ---------------------------------------------------------------------------------------------
// Layout

/// The header at the start of every shared ring (`struct *_sring` without its `ring[]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SringHeader {
    /// Written by the frontend: requests published so far.
    pub req_prod: u32,
    /// Written by the backend: notify it when `req_prod` passes this.
    pub req_event: u32,
    /// Written by the backend: responses published so far.
    pub rsp_prod: u32,
    /// Written by the frontend: notify it when `rsp_prod` passes this.
    pub rsp_event: u32,
    /// Protocol-private bytes (netif uses them for flags).
    pub pvt: [u8; 4],
    pub __pad: [u8; 44],
}
assert_layout!(
    SringHeader,
    size = 64,
    req_prod = 0,
    req_event = 4,
    rsp_prod = 8,
    rsp_event = 12,
    pvt = 16,
    __pad = 20
);

impl Default for SringHeader {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

/// Offset of `req_prod`.
pub const REQ_PROD_OFFSET: usize = core::mem::offset_of!(SringHeader, req_prod);
/// Offset of `req_event`.
pub const REQ_EVENT_OFFSET: usize = core::mem::offset_of!(SringHeader, req_event);
/// Offset of `rsp_prod`.
pub const RSP_PROD_OFFSET: usize = core::mem::offset_of!(SringHeader, rsp_prod);
/// Offset of `rsp_event`.
pub const RSP_EVENT_OFFSET: usize = core::mem::offset_of!(SringHeader, rsp_event);
/// Offset of `pvt`.
pub const PVT_OFFSET: usize = core::mem::offset_of!(SringHeader, pvt);
/// Offset of `__pad`.
pub const PAD_OFFSET: usize = core::mem::offset_of!(SringHeader, __pad);
/// Offset of `ring[0]`, the first slot.
pub const RING_OFFSET: usize = core::mem::size_of::<SringHeader>();

/// `__RING_SIZE` for a ring area of `area_bytes`: the largest power of two number of
/// `entry_size`-byte slots that fit after the header, or 0 if none does.
pub const fn ring_size_for(entry_size: usize, area_bytes: usize) -> u32 {
    if entry_size == 0 || area_bytes <= RING_OFFSET {
        return 0;
    }
    let n = (area_bytes - RING_OFFSET) / entry_size;
    if n == 0 {
        return 0;
    }
    let pow = 1usize << (usize::BITS - 1 - n.leading_zeros());
    // Free-running u32 indexes need the size to divide 2^32 and be at most 2^31.
    if pow > 1 << 31 {
        1 << 31
    } else {
        pow as u32
    }
}

/// `__RING_SIZE` for a one-page ring: blkif (112-byte slots) gives 32, netif 256.
pub const fn ring_size(entry_size: usize) -> u32 {
    ring_size_for(entry_size, crate::PAGE_SIZE)
}

/// Size of one slot: `sizeof(union { Req; Rsp; })`, the larger size rounded up to the larger
/// alignment.
pub const fn slot_size<Req, Rsp>() -> usize {
    let (s1, s2) = (core::mem::size_of::<Req>(), core::mem::size_of::<Rsp>());
    let (a1, a2) = (core::mem::align_of::<Req>(), core::mem::align_of::<Rsp>());
    let size = if s1 > s2 { s1 } else { s2 };
    let align = if a1 > a2 { a1 } else { a2 };
    size.div_ceil(align) * align
}

/// What a ring entry must be: plain bytes in both directions (zerocopy checks that every bit
/// pattern is valid and that there is no implicit padding).
pub trait RingEntry: FromBytes + IntoBytes + Immutable + KnownLayout {}
impl<T: FromBytes + IntoBytes + Immutable + KnownLayout> RingEntry for T {}

/// Why a ring operation refused to proceed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// The peer's producer index is more than a ring ahead of what it may produce, or moved
    /// backwards. The peer is broken or hostile; the caller should stop using the ring (and,
    /// for a backend, disconnect the frontend).
    Overflow,
    /// No free slot: every slot holds a request that has not been answered yet.
    Full,
    /// A backend tried to push a response without an outstanding consumed request.
    NoRequest,
    /// The ring area is too small for one slot.
    AreaTooSmall,
}

impl core::fmt::Display for RingError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            RingError::Overflow => "peer producer index out of range",
            RingError::Full => "ring full",
            RingError::NoRequest => "no request to answer",
            RingError::AreaTooSmall => "ring area too small",
        })
    }
}

impl core::error::Error for RingError {}

/// Operations on the shared header that belong to neither end.
#[derive(Debug)]
pub struct SharedRing;

impl SharedRing {
    /// `SHARED_RING_INIT`: both producers 0, both events 1, private and padding bytes zeroed.
    /// Done by the frontend before it grants the page.
    pub fn init<M: RingMemory + ?Sized>(mem: &M) {
        Self::init_at(mem, 0)
    }

    /// Like [`init`](Self::init) but with both producers at `start` (events at `start + 1`),
    /// for resuming a ring or exercising index wrap-around.
    pub fn init_at<M: RingMemory + ?Sized>(mem: &M, start: u32) {
        mem.write_bytes(PVT_OFFSET, &[0; RING_OFFSET - PVT_OFFSET]);
        mem.store_u32_release(REQ_EVENT_OFFSET, start.wrapping_add(1));
        mem.store_u32_release(RSP_EVENT_OFFSET, start.wrapping_add(1));
        mem.store_u32_release(REQ_PROD_OFFSET, start);
        mem.store_u32_release(RSP_PROD_OFFSET, start);
    }
}

/// Slot count and slot size of a ring area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geometry {
    nr_ents: u32,
    slot: usize,
}

impl Geometry {
    fn new(slot: usize, area_bytes: usize) -> Result<Geometry, RingError> {
        match ring_size_for(slot, area_bytes) {
            0 => Err(RingError::AreaTooSmall),
            nr_ents => Ok(Geometry { nr_ents, slot }),
        }
    }

    fn slot_offset(&self, idx: u32) -> usize {
        RING_OFFSET + (idx & (self.nr_ents - 1)) as usize * self.slot
    }
}

/// `new - event < new - old`, in wrapping arithmetic: did publishing `(old, new]` pass the
/// consumer's event index?
const fn crosses_event(old: u32, new: u32, event: u32) -> bool {
    new.wrapping_sub(event) < new.wrapping_sub(old)
}

// ---------------------------------------------------------------------------------------------
// Frontend

/// The frontend's private view of a ring (`struct *_front_ring`): it produces `Req`s and
/// consumes `Rsp`s.
pub struct FrontRing<Req, Rsp> {
    /// Requests written into slots, published or not.
    req_prod_pvt: u32,
    /// Responses consumed.
    rsp_cons: u32,
    /// Our own last published `req_prod`; kept privately so the peer cannot fake it.
    req_prod_published: u32,
    geo: Geometry,
    _entries: PhantomData<fn(Req) -> Rsp>,
}

impl<Req, Rsp> core::fmt::Debug for FrontRing<Req, Rsp> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FrontRing")
            .field("req_prod_pvt", &self.req_prod_pvt)
            .field("rsp_cons", &self.rsp_cons)
            .field("req_prod_published", &self.req_prod_published)
            .field("nr_ents", &self.geo.nr_ents)
            .finish()
    }
}

impl<Req: RingEntry, Rsp: RingEntry> FrontRing<Req, Rsp> {
    /// Bytes per slot.
    pub const SLOT_SIZE: usize = slot_size::<Req, Rsp>();
    /// Slots of a one-page ring.
    pub const PAGE_RING_SIZE: u32 = ring_size(Self::SLOT_SIZE);

    /// `FRONT_RING_INIT` for a one-page ring at index 0 (the shared header must have been set up
    /// with [`SharedRing::init`]; [`init`](Self::init) does both).
    pub fn new() -> Self {
        const { assert!(Self::PAGE_RING_SIZE > 0, "ring entry larger than a page") };
        Self::from_geometry(Geometry { nr_ents: Self::PAGE_RING_SIZE, slot: Self::SLOT_SIZE }, 0)
    }

    /// `SHARED_RING_INIT` + `FRONT_RING_INIT` on a one-page ring.
    pub fn init<M: RingMemory + ?Sized>(mem: &M) -> Self {
        SharedRing::init(mem);
        Self::new()
    }

    /// `FRONT_RING_ATTACH`: a ring of `area_bytes` (a multiple of the page size for multi-page
    /// rings) whose indexes currently stand at `start`.
    pub fn attach(area_bytes: usize, start: u32) -> Result<Self, RingError> {
        Ok(Self::from_geometry(Geometry::new(Self::SLOT_SIZE, area_bytes)?, start))
    }

    fn from_geometry(geo: Geometry, start: u32) -> Self {
        FrontRing {
            req_prod_pvt: start,
            rsp_cons: start,
            req_prod_published: start,
            geo,
            _entries: PhantomData,
        }
    }

    /// Number of slots (`RING_SIZE`).
    pub fn size(&self) -> u32 {
        self.geo.nr_ents
    }
    /// Private request producer (`req_prod_pvt`).
    pub fn req_prod_pvt(&self) -> u32 {
        self.req_prod_pvt
    }
    /// Private response consumer (`rsp_cons`).
    pub fn rsp_cons(&self) -> u32 {
        self.rsp_cons
    }
    /// Requests written but not yet answered (and consumed).
    pub fn in_flight(&self) -> u32 {
        self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }
    /// `RING_FREE_REQUESTS`.
    pub fn free_requests(&self) -> u32 {
        self.geo.nr_ents - self.in_flight()
    }
    /// `RING_FULL`.
    pub fn is_full(&self) -> bool {
        self.free_requests() == 0
    }
    /// Requests written into slots but not published yet.
    pub fn unpublished(&self) -> u32 {
        self.req_prod_pvt.wrapping_sub(self.req_prod_published)
    }

    /// Writes `req` into the next free slot, unpublished until one of the `push_requests*`.
    pub fn push_request<M: RingMemory + ?Sized>(&mut self, mem: &M, req: &Req) -> Result<(), RingError> {
        if self.is_full() {
            return Err(RingError::Full);
        }
        mem.write_bytes(self.geo.slot_offset(self.req_prod_pvt), req.as_bytes());
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// `RING_PUSH_REQUESTS`: publishes the written requests without deciding on a notification.
    pub fn push_requests<M: RingMemory + ?Sized>(&mut self, mem: &M) {
        mem.store_u32_release(REQ_PROD_OFFSET, self.req_prod_pvt);
        self.req_prod_published = self.req_prod_pvt;
    }

    /// `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`: publishes the written requests and returns true if
    /// the backend asked to be notified of them (then send an event on the channel).
    pub fn push_requests_and_check_notify<M: RingMemory + ?Sized>(&mut self, mem: &M) -> bool {
        let old = self.req_prod_published;
        let new = self.req_prod_pvt;
        self.push_requests(mem);
        mem.fence();
        crosses_event(old, new, mem.load_u32_acquire(REQ_EVENT_OFFSET))
    }

    /// Reads and checks the backend's `rsp_prod`: it may answer only published requests.
    fn rsp_prod<M: RingMemory + ?Sized>(&self, mem: &M) -> Result<u32, RingError> {
        let prod = mem.load_u32_acquire(RSP_PROD_OFFSET);
        if prod.wrapping_sub(self.rsp_cons) > self.req_prod_published.wrapping_sub(self.rsp_cons) {
            return Err(RingError::Overflow);
        }
        Ok(prod)
    }

    /// `RING_HAS_UNCONSUMED_RESPONSES`, with the producer index checked.
    pub fn unconsumed_responses<M: RingMemory + ?Sized>(&self, mem: &M) -> Result<u32, RingError> {
        Ok(self.rsp_prod(mem)?.wrapping_sub(self.rsp_cons))
    }

    /// Copies out the next response, if one has been published, and frees its slot.
    pub fn take_response<M: RingMemory + ?Sized>(&mut self, mem: &M) -> Result<Option<Rsp>, RingError> {
        if self.rsp_prod(mem)? == self.rsp_cons {
            return Ok(None);
        }
        let mut rsp = Rsp::new_zeroed();
        mem.read_bytes(self.geo.slot_offset(self.rsp_cons), rsp.as_mut_bytes());
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(rsp))
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES`: call when no response is left, before waiting for an
    /// event. Returns true if responses arrived meanwhile (keep consuming); false means the
    /// backend will notify on the next response.
    pub fn final_check_for_responses<M: RingMemory + ?Sized>(&mut self, mem: &M) -> Result<bool, RingError> {
        if self.unconsumed_responses(mem)? > 0 {
            return Ok(true);
        }
        mem.store_u32_release(RSP_EVENT_OFFSET, self.rsp_cons.wrapping_add(1));
        mem.fence();
        Ok(self.unconsumed_responses(mem)? > 0)
    }
}

impl<Req: RingEntry, Rsp: RingEntry> Default for FrontRing<Req, Rsp> {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------------------------------------
// Backend

/// The backend's private view of a ring (`struct *_back_ring`): it consumes `Req`s and
/// produces `Rsp`s, each response in the slot of a consumed request.
pub struct BackRing<Req, Rsp> {
    /// Responses written into slots, published or not.
    rsp_prod_pvt: u32,
    /// Requests consumed (copied out).
    req_cons: u32,
    /// Our own last published `rsp_prod`.
    rsp_prod_published: u32,
    geo: Geometry,
    _entries: PhantomData<fn(Req) -> Rsp>,
}

impl<Req, Rsp> core::fmt::Debug for BackRing<Req, Rsp> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BackRing")
            .field("rsp_prod_pvt", &self.rsp_prod_pvt)
            .field("req_cons", &self.req_cons)
            .field("rsp_prod_published", &self.rsp_prod_published)
            .field("nr_ents", &self.geo.nr_ents)
            .finish()
    }
}

impl<Req: RingEntry, Rsp: RingEntry> BackRing<Req, Rsp> {
    /// Bytes per slot.
    pub const SLOT_SIZE: usize = slot_size::<Req, Rsp>();
    /// Slots of a one-page ring.
    pub const PAGE_RING_SIZE: u32 = ring_size(Self::SLOT_SIZE);

    /// `BACK_RING_INIT` for a one-page ring at index 0. Touches no shared memory: the frontend
    /// initialised the header, and whatever it wrote there is checked on use.
    pub fn new() -> Self {
        const { assert!(Self::PAGE_RING_SIZE > 0, "ring entry larger than a page") };
        Self::from_geometry(Geometry { nr_ents: Self::PAGE_RING_SIZE, slot: Self::SLOT_SIZE }, 0)
    }

    /// `BACK_RING_ATTACH`: a ring of `area_bytes` whose indexes currently stand at `start`.
    pub fn attach(area_bytes: usize, start: u32) -> Result<Self, RingError> {
        Ok(Self::from_geometry(Geometry::new(Self::SLOT_SIZE, area_bytes)?, start))
    }

    fn from_geometry(geo: Geometry, start: u32) -> Self {
        BackRing {
            rsp_prod_pvt: start,
            req_cons: start,
            rsp_prod_published: start,
            geo,
            _entries: PhantomData,
        }
    }

    /// Number of slots (`RING_SIZE`).
    pub fn size(&self) -> u32 {
        self.geo.nr_ents
    }
    /// Private request consumer (`req_cons`).
    pub fn req_cons(&self) -> u32 {
        self.req_cons
    }
    /// Private response producer (`rsp_prod_pvt`).
    pub fn rsp_prod_pvt(&self) -> u32 {
        self.rsp_prod_pvt
    }
    /// Requests consumed but not answered yet.
    pub fn outstanding(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }
    /// Responses written but not published yet.
    pub fn unpublished(&self) -> u32 {
        self.rsp_prod_pvt.wrapping_sub(self.rsp_prod_published)
    }

    /// Reads and checks the frontend's `req_prod`. An honest frontend never has more than a
    /// ring's worth of requests beyond our responses (it only reuses slots whose responses it
    /// consumed), and never moves backwards past what we consumed.
    fn req_prod<M: RingMemory + ?Sized>(&self, mem: &M) -> Result<u32, RingError> {
        let prod = mem.load_u32_acquire(REQ_PROD_OFFSET);
        let ahead = prod.wrapping_sub(self.rsp_prod_pvt);
        if ahead > self.geo.nr_ents || ahead < self.outstanding() {
            return Err(RingError::Overflow);
        }
        Ok(prod)
    }

    /// `RING_HAS_UNCONSUMED_REQUESTS`, with the producer index checked.
    pub fn unconsumed_requests<M: RingMemory + ?Sized>(&self, mem: &M) -> Result<u32, RingError> {
        Ok(self.req_prod(mem)?.wrapping_sub(self.req_cons))
    }

    /// Copies out the next request, if one has been published. The copy is the only read of
    /// that slot: validate the returned value, never the shared page.
    pub fn take_request<M: RingMemory + ?Sized>(&mut self, mem: &M) -> Result<Option<Req>, RingError> {
        if self.req_prod(mem)? == self.req_cons {
            return Ok(None);
        }
        let mut req = Req::new_zeroed();
        mem.read_bytes(self.geo.slot_offset(self.req_cons), req.as_mut_bytes());
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(Some(req))
    }

    /// Writes `rsp` into the slot of the oldest unanswered request, unpublished until one of
    /// the `push_responses*`. Every byte of `rsp` reaches the frontend, so padding fields must be
    /// zero (XSA-216); `Default` values are.
    pub fn push_response<M: RingMemory + ?Sized>(&mut self, mem: &M, rsp: &Rsp) -> Result<(), RingError> {
        if self.outstanding() == 0 {
            return Err(RingError::NoRequest);
        }
        mem.write_bytes(self.geo.slot_offset(self.rsp_prod_pvt), rsp.as_bytes());
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// `RING_PUSH_RESPONSES`.
    pub fn push_responses<M: RingMemory + ?Sized>(&mut self, mem: &M) {
        mem.store_u32_release(RSP_PROD_OFFSET, self.rsp_prod_pvt);
        self.rsp_prod_published = self.rsp_prod_pvt;
    }

    /// `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`: publishes the written responses and returns true
    /// if the frontend asked to be notified of them.
    pub fn push_responses_and_check_notify<M: RingMemory + ?Sized>(&mut self, mem: &M) -> bool {
        let old = self.rsp_prod_published;
        let new = self.rsp_prod_pvt;
        self.push_responses(mem);
        mem.fence();
        crosses_event(old, new, mem.load_u32_acquire(RSP_EVENT_OFFSET))
    }

    /// The next request, copied out ([`take_request`](Self::take_request)); when none is left,
    /// re-arms `req_event` and looks once more ([`final_check_for_requests`]). `Ok(None)`
    /// then means the frontend will notify on its next request: the loop every backend
    /// drains its ring with.
    ///
    /// [`final_check_for_requests`]: Self::final_check_for_requests
    pub fn next_request<M: RingMemory + ?Sized>(&mut self, mem: &M) -> Result<Option<Req>, RingError> {
        if let Some(r) = self.take_request(mem)? {
            return Ok(Some(r));
        }
        if self.final_check_for_requests(mem)? {
            return self.take_request(mem);
        }
        Ok(None)
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`: call when no request is left, before waiting for an
    /// event. Returns true if requests arrived meanwhile; false means the frontend will notify
    /// on the next request.
    pub fn final_check_for_requests<M: RingMemory + ?Sized>(&mut self, mem: &M) -> Result<bool, RingError> {
        if self.unconsumed_requests(mem)? > 0 {
            return Ok(true);
        }
        mem.store_u32_release(REQ_EVENT_OFFSET, self.req_cons.wrapping_add(1));
        mem.fence();
        Ok(self.unconsumed_requests(mem)? > 0)
    }
}

impl<Req: RingEntry, Rsp: RingEntry> Default for BackRing<Req, Rsp> {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------------------------------------
// Memory in this address space

/// A page of atomics implementing [`RingMemory`]: for rings whose both ends live in one
/// address space (host tests, a backend's unit tests), or a guest that can view its mapping of
/// the shared page as a `&AtomicPage` (same size and alignment as a page).
///
/// Offsets must lie inside the page (out-of-range offsets panic).
#[repr(C, align(4096))]
pub struct AtomicPage {
    words: [AtomicU32; crate::PAGE_SIZE / 4],
}

impl core::fmt::Debug for AtomicPage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AtomicPage").finish_non_exhaustive()
    }
}

impl AtomicPage {
    /// A zeroed page.
    pub const fn new() -> Self {
        AtomicPage { words: [const { AtomicU32::new(0) }; crate::PAGE_SIZE / 4] }
    }

    fn word(&self, off: usize) -> &AtomicU32 {
        assert!(off & 3 == 0, "unaligned ring index offset");
        &self.words[off / 4]
    }

    /// Copies the whole page out (for tests and debugging).
    pub fn snapshot(&self) -> [u8; crate::PAGE_SIZE] {
        let mut out = [0u8; crate::PAGE_SIZE];
        self.read_bytes(0, &mut out);
        out
    }
}

impl Default for AtomicPage {
    fn default() -> Self {
        Self::new()
    }
}

impl RingMemory for AtomicPage {
    fn load_u32_acquire(&self, off: usize) -> u32 {
        self.word(off).load(Ordering::Acquire)
    }

    fn store_u32_release(&self, off: usize, v: u32) {
        self.word(off).store(v, Ordering::Release)
    }

    fn fence(&self) {
        fence(Ordering::SeqCst)
    }

    fn read_bytes(&self, off: usize, buf: &mut [u8]) {
        let mut pos = 0;
        while pos < buf.len() {
            let abs = off + pos;
            let (w, skip) = (abs / 4, abs % 4);
            let bytes = self.words[w].load(Ordering::Relaxed).to_le_bytes();
            let n = (4 - skip).min(buf.len() - pos);
            buf[pos..pos + n].copy_from_slice(&bytes[skip..skip + n]);
            pos += n;
        }
    }

    fn write_bytes(&self, off: usize, data: &[u8]) {
        let mut pos = 0;
        while pos < data.len() {
            let abs = off + pos;
            let (w, skip) = (abs / 4, abs % 4);
            let n = (4 - skip).min(data.len() - pos);
            if n == 4 {
                let v = u32::from_le_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]);
                self.words[w].store(v, Ordering::Relaxed);
            } else {
                // A partial word: merge atomically so the neighbouring bytes (possibly the
                // peer's) are left as they are.
                let mut new = [0u8; 4];
                new[skip..skip + n].copy_from_slice(&data[pos..pos + n]);
                let mut mask = [0u8; 4];
                mask[skip..skip + n].fill(0xff);
                let (new, mask) = (u32::from_le_bytes(new), u32::from_le_bytes(mask));
                // The closure always returns Some, so this cannot fail.
                let _ = self.words[w]
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| Some((old & !mask) | new));
            }
            pos += n;
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::cell::Cell;
    use proptest::prelude::*;
    use std::collections::VecDeque;
    use std::vec::Vec;

    /// A 12-byte, 4-aligned request and an 8-byte, 8-aligned response: slots of 16 bytes.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    struct Req([u32; 3]);
    type Rsp = u64;
    type Front = FrontRing<Req, Rsp>;
    type Back = BackRing<Req, Rsp>;

    fn req(v: u32) -> Req {
        Req([v, !v, v.rotate_left(7)])
    }

    #[test]
    fn sizes_match_ring_h() {
        assert_eq!(ring_size(112), 32);
        assert_eq!(ring_size(12), 256);
        assert_eq!(ring_size(8), 256);
        assert_eq!(ring_size(4032), 1);
        assert_eq!(ring_size(4033), 0);
        assert_eq!(ring_size(0), 0);
        assert_eq!(ring_size_for(16, 64 + 3 * 16), 2);
        assert_eq!(ring_size_for(16, 64), 0);
        assert_eq!(ring_size_for(1, usize::MAX), 1 << 31);
        assert_eq!(slot_size::<Req, Rsp>(), 16);
        assert_eq!(slot_size::<u64, u8>(), 8);
        assert_eq!(Front::PAGE_RING_SIZE, 128, "(4096 - 64) / 16 = 252 slots, rounded down");
        assert!(matches!(Front::attach(64 + 15, 0), Err(RingError::AreaTooSmall)));
    }

    #[test]
    fn init_sets_header() {
        let page = AtomicPage::new();
        page.write_bytes(0, &[0xaa; 64]);
        let f = Front::init(&page);
        let h = SringHeader::read_from_bytes(&page.snapshot()[..64]).unwrap();
        assert_eq!((h.req_prod, h.req_event, h.rsp_prod, h.rsp_event), (0, 1, 0, 1));
        assert_eq!(h.pvt, [0; 4]);
        assert!(h.__pad.iter().all(|&b| b == 0));
        assert_eq!((f.size(), f.free_requests(), f.in_flight()), (128, 128, 0));
    }

    #[test]
    fn request_response_round_trip() {
        let page = AtomicPage::new();
        let mut f = Front::init(&page);
        let mut b = Back::new();
        for v in 1..=3 {
            f.push_request(&page, &req(v)).unwrap();
        }
        assert_eq!(b.unconsumed_requests(&page), Ok(0), "unpublished requests are invisible");
        assert!(f.push_requests_and_check_notify(&page), "req_event starts at 1");
        assert_eq!(b.unconsumed_requests(&page), Ok(3));
        for v in 1..=3 {
            assert_eq!(b.take_request(&page), Ok(Some(req(v))));
        }
        assert_eq!(b.take_request(&page), Ok(None));
        assert_eq!(b.outstanding(), 3);
        for v in 1..=3u64 {
            b.push_response(&page, &(v * 100)).unwrap();
        }
        assert_eq!(b.push_response(&page, &0), Err(RingError::NoRequest));
        assert!(b.push_responses_and_check_notify(&page));
        assert_eq!(f.unconsumed_responses(&page), Ok(3));
        for v in 1..=3u64 {
            assert_eq!(f.take_response(&page), Ok(Some(v * 100)));
        }
        assert_eq!(f.take_response(&page), Ok(None));
        assert_eq!(f.free_requests(), f.size());
    }

    #[test]
    fn full_ring_refuses_requests() {
        let page = AtomicPage::new();
        let mut f = FrontRing::<u64, u64>::init(&page);
        for v in 0..f.size() {
            f.push_request(&page, &(v as u64)).unwrap();
        }
        assert!(f.is_full());
        assert_eq!(f.push_request(&page, &0), Err(RingError::Full));
        // Nothing past the ring area was written.
        assert!(page.snapshot()[RING_OFFSET + 8 * f.size() as usize..].iter().all(|&b| b == 0));
    }

    #[test]
    fn notification_hold_off() {
        let page = AtomicPage::new();
        let mut f = Front::init(&page);
        let mut b = Back::new();
        f.push_request(&page, &req(1)).unwrap();
        assert!(f.push_requests_and_check_notify(&page));
        // The backend has been notified and has not re-armed: no second notification.
        f.push_request(&page, &req(2)).unwrap();
        assert!(!f.push_requests_and_check_notify(&page));
        assert!(!f.push_requests_and_check_notify(&page), "publishing nothing never notifies");
        assert_eq!(b.final_check_for_requests(&page), Ok(true));
        b.take_request(&page).unwrap();
        b.take_request(&page).unwrap();
        assert_eq!(b.final_check_for_requests(&page), Ok(false));
        assert_eq!(page.load_u32_acquire(REQ_EVENT_OFFSET), 3);
        f.push_request(&page, &req(3)).unwrap();
        assert!(f.push_requests_and_check_notify(&page), "an idle backend must be woken");
    }

    #[test]
    fn backend_rejects_hostile_req_prod() {
        let page = AtomicPage::new();
        let mut f = Front::init(&page);
        let mut b = Back::new();
        let n = b.size();
        // More than a ring ahead.
        page.store_u32_release(REQ_PROD_OFFSET, n + 1);
        assert_eq!(b.take_request(&page), Err(RingError::Overflow));
        assert_eq!(b.final_check_for_requests(&page), Err(RingError::Overflow));
        // Exactly a ring is fine.
        page.store_u32_release(REQ_PROD_OFFSET, n);
        assert_eq!(b.unconsumed_requests(&page), Ok(n));
        for _ in 0..4 {
            b.take_request(&page).unwrap().unwrap();
        }
        // Requests beyond a ring past our unanswered ones would overwrite them.
        page.store_u32_release(REQ_PROD_OFFSET, n + 1);
        assert_eq!(b.unconsumed_requests(&page), Err(RingError::Overflow));
        // Moving backwards past what we consumed.
        page.store_u32_release(REQ_PROD_OFFSET, 2);
        assert_eq!(b.take_request(&page), Err(RingError::Overflow));
        page.store_u32_release(REQ_PROD_OFFSET, u32::MAX);
        assert_eq!(b.take_request(&page), Err(RingError::Overflow));
        // The frontend's own view is unaffected.
        assert_eq!(f.free_requests(), n);
        f.push_request(&page, &req(0)).unwrap();
    }

    #[test]
    fn frontend_rejects_hostile_rsp_prod() {
        let page = AtomicPage::new();
        let mut f = Front::init(&page);
        f.push_request(&page, &req(1)).unwrap();
        f.push_request(&page, &req(2)).unwrap();
        // Responses to requests not yet published.
        page.store_u32_release(RSP_PROD_OFFSET, 1);
        assert_eq!(f.take_response(&page), Err(RingError::Overflow));
        f.push_requests(&page);
        assert_eq!(f.unconsumed_responses(&page), Ok(1));
        page.store_u32_release(RSP_PROD_OFFSET, 3);
        assert_eq!(f.unconsumed_responses(&page), Err(RingError::Overflow));
        page.store_u32_release(RSP_PROD_OFFSET, u32::MAX);
        assert_eq!(f.final_check_for_responses(&page), Err(RingError::Overflow));
    }

    /// Counts `read_bytes` calls per slot, to prove each entry is fetched once.
    struct CountingMem<'a> {
        page: &'a AtomicPage,
        reads: Cell<[u32; 8]>,
    }

    impl RingMemory for CountingMem<'_> {
        fn load_u32_acquire(&self, off: usize) -> u32 {
            self.page.load_u32_acquire(off)
        }
        fn store_u32_release(&self, off: usize, v: u32) {
            self.page.store_u32_release(off, v)
        }
        fn fence(&self) {
            self.page.fence()
        }
        fn read_bytes(&self, off: usize, buf: &mut [u8]) {
            let mut r = self.reads.get();
            r[(off - RING_OFFSET) / 16] += 1;
            self.reads.set(r);
            self.page.read_bytes(off, buf)
        }
        fn write_bytes(&self, off: usize, data: &[u8]) {
            self.page.write_bytes(off, data)
        }
    }

    #[test]
    fn each_entry_is_fetched_once() {
        let page = AtomicPage::new();
        let mem = CountingMem { page: &page, reads: Cell::new([0; 8]) };
        let area = RING_OFFSET + 8 * 16;
        SharedRing::init(&mem);
        let mut f = Front::attach(area, 0).unwrap();
        let mut b = Back::attach(area, 0).unwrap();
        for v in 0..8 {
            f.push_request(&mem, &req(v)).unwrap();
        }
        f.push_requests(&mem);
        while let Some(r) = b.take_request(&mem).unwrap() {
            b.push_response(&mem, &(r.0[0] as u64)).unwrap();
        }
        assert_eq!(mem.reads.get(), [1; 8]);
        b.push_responses(&mem);
        while f.take_response(&mem).unwrap().is_some() {}
        assert_eq!(mem.reads.get(), [2; 8]);
    }

    #[test]
    fn atomic_page_partial_writes_keep_neighbours() {
        let page = AtomicPage::new();
        page.write_bytes(100, &[0x11; 12]);
        page.write_bytes(101, &[1, 2, 3, 4, 5, 6, 7]);
        let mut out = [0u8; 12];
        page.read_bytes(100, &mut out);
        assert_eq!(out, [0x11, 1, 2, 3, 4, 5, 6, 7, 0x11, 0x11, 0x11, 0x11]);
        let mut one = [0u8; 1];
        page.read_bytes(4095, &mut one);
        assert_eq!(one, [0]);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Push(u32),
        Publish,
        Take,
        BackFinal,
        Respond(u64),
        PublishRsp,
        TakeRsp,
        FrontFinal,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => any::<u32>().prop_map(Op::Push),
            2 => Just(Op::Publish),
            3 => Just(Op::Take),
            1 => Just(Op::BackFinal),
            3 => any::<u64>().prop_map(Op::Respond),
            2 => Just(Op::PublishRsp),
            3 => Just(Op::TakeRsp),
            1 => Just(Op::FrontFinal),
        ]
    }

    fn start_index() -> impl Strategy<Value = u32> {
        prop_oneof![Just(0u32), (u32::MAX - 40..=u32::MAX), any::<u32>()]
    }

    /// The ring, driven from both ends in one thread, against a queue model.
    fn run_model(order: u32, start: u32, ops: &[Op]) -> Result<(), TestCaseError> {
        let page = AtomicPage::new();
        let area = RING_OFFSET + (1usize << order) * 16;
        SharedRing::init_at(&page, start);
        let mut f = Front::attach(area, start).unwrap();
        let mut b = Back::attach(area, start).unwrap();
        let n = 1u32 << order;
        prop_assert_eq!(f.size(), n);

        let (mut unpub, mut published, mut outstanding) = (VecDeque::new(), VecDeque::new(), VecDeque::new());
        let (mut rsp_unpub, mut rsp_published) = (VecDeque::new(), VecDeque::new());
        let (mut back_idle, mut front_idle) = (false, false);

        for op in ops {
            let in_flight =
                unpub.len() + published.len() + outstanding.len() + rsp_unpub.len() + rsp_published.len();
            prop_assert_eq!(f.in_flight() as usize, in_flight);
            match *op {
                Op::Push(v) => {
                    let r = f.push_request(&page, &req(v));
                    if in_flight < n as usize {
                        prop_assert_eq!(r, Ok(()));
                        unpub.push_back(req(v));
                    } else {
                        prop_assert_eq!(r, Err(RingError::Full));
                    }
                }
                Op::Publish => {
                    let notify = f.push_requests_and_check_notify(&page);
                    if unpub.is_empty() {
                        prop_assert!(!notify);
                    }
                    if back_idle && !unpub.is_empty() {
                        prop_assert!(notify, "lost request notification");
                    }
                    if notify {
                        back_idle = false;
                    }
                    published.extend(unpub.drain(..));
                }
                Op::Take => {
                    prop_assert_eq!(b.unconsumed_requests(&page), Ok(published.len() as u32));
                    let got = b.take_request(&page);
                    prop_assert_eq!(got, Ok(published.front().copied()));
                    if let Some(r) = published.pop_front() {
                        outstanding.push_back(r);
                        back_idle = false;
                    }
                }
                Op::BackFinal => {
                    let more = b.final_check_for_requests(&page);
                    prop_assert_eq!(more, Ok(!published.is_empty()));
                    back_idle = published.is_empty();
                }
                Op::Respond(v) => {
                    let r = b.push_response(&page, &v);
                    if outstanding.pop_front().is_some() {
                        prop_assert_eq!(r, Ok(()));
                        rsp_unpub.push_back(v);
                    } else {
                        prop_assert_eq!(r, Err(RingError::NoRequest));
                    }
                }
                Op::PublishRsp => {
                    let notify = b.push_responses_and_check_notify(&page);
                    if rsp_unpub.is_empty() {
                        prop_assert!(!notify);
                    }
                    if front_idle && !rsp_unpub.is_empty() {
                        prop_assert!(notify, "lost response notification");
                    }
                    if notify {
                        front_idle = false;
                    }
                    rsp_published.extend(rsp_unpub.drain(..));
                }
                Op::TakeRsp => {
                    prop_assert_eq!(f.unconsumed_responses(&page), Ok(rsp_published.len() as u32));
                    prop_assert_eq!(f.take_response(&page), Ok(rsp_published.pop_front()));
                    front_idle = false;
                }
                Op::FrontFinal => {
                    let more = f.final_check_for_responses(&page);
                    prop_assert_eq!(more, Ok(!rsp_published.is_empty()));
                    front_idle = rsp_published.is_empty();
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn ring_matches_queue_model(order in 0u32..4, start in start_index(), ops in proptest::collection::vec(op(), 0..200)) {
            run_model(order, start, &ops)?;
        }

        /// Whatever the frontend writes as `req_prod`, the backend either reports Overflow or
        /// yields at most the slots it has not yet answered, and never more entries than that.
        #[test]
        fn backend_survives_any_req_prod(start in start_index(), consumed in 0u32..=8, prods in proptest::collection::vec(any::<u32>(), 1..20)) {
            let page = AtomicPage::new();
            let area = RING_OFFSET + 8 * 16;
            SharedRing::init_at(&page, start);
            let mut b = Back::attach(area, start).unwrap();
            page.store_u32_release(REQ_PROD_OFFSET, start.wrapping_add(consumed));
            for _ in 0..consumed {
                prop_assert!(b.take_request(&page).unwrap().is_some());
            }
            for p in prods {
                page.store_u32_release(REQ_PROD_OFFSET, p);
                let room = b.size() - b.outstanding();
                match b.unconsumed_requests(&page) {
                    Ok(k) => {
                        prop_assert!(k <= room);
                        let mut taken = 0;
                        while b.take_request(&page).unwrap().is_some() {
                            taken += 1;
                            prop_assert!(taken <= room);
                        }
                        prop_assert_eq!(taken, k);
                    }
                    Err(e) => prop_assert_eq!(e, RingError::Overflow),
                }
                prop_assert!(b.outstanding() <= b.size());
            }
        }

        #[test]
        fn frontend_survives_any_rsp_prod(start in start_index(), pushed in 0u32..=8, prods in proptest::collection::vec(any::<u32>(), 1..20)) {
            let page = AtomicPage::new();
            let area = RING_OFFSET + 8 * 16;
            SharedRing::init_at(&page, start);
            let mut f = Front::attach(area, start).unwrap();
            for v in 0..pushed {
                f.push_request(&page, &req(v)).unwrap();
            }
            f.push_requests(&page);
            let mut got = Vec::new();
            for p in prods {
                page.store_u32_release(RSP_PROD_OFFSET, p);
                match f.unconsumed_responses(&page) {
                    Ok(k) => {
                        prop_assert!(k <= f.in_flight());
                        for _ in 0..k {
                            got.push(f.take_response(&page).unwrap().unwrap());
                        }
                    }
                    Err(e) => prop_assert_eq!(e, RingError::Overflow),
                }
                prop_assert!(got.len() as u32 <= pushed);
                prop_assert!(f.in_flight() <= f.size());
            }
        }
    }
}
