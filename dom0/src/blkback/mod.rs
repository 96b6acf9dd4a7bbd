//! blkback's request engine: takes blkif requests off a frontend's ring, checks them, has
//! their granted pages made reachable by the disk, submits them, and answers each one.
//!
//! The frontend is hostile. Every request is copied out of the shared ring once
//! ([`BackRing::take_request`]) and only the copy is looked at; a producer index more than a
//! ring ahead (or moving backwards) breaks the connection, everything else gets a response:
//! * READ/WRITE with 0 or more than 11 segments, a segment with `first_sect > last_sect` or
//!   past the page, a sector range past the disk's end or overflowing: `BLKIF_RSP_ERROR`;
//! * INDIRECT (when offered: [`DiskInfo::max_indirect_segments`]) whose `indirect_op` is not
//!   READ/WRITE, with 0 or more segments than offered, whose indirect pages cannot be copied
//!   (bad grant), or whose segments (copied into private memory before anything looks at
//!   them) fail the checks above: `ERROR`, answered with the `indirect_op` as Linux expects;
//! * WRITE to a read-only disk: `ERROR`;
//! * a grant that cannot be mapped: `ERROR` (the segments mapped before it are released);
//! * an `id` equal to one still in flight: `ERROR` (the first request is not disturbed);
//! * an operation not advertised (barrier, discard, indirect when not offered) or unknown:
//!   `EOPNOTSUPP`.
//!
//! Responses are built whole from zeroed values, so no padding byte carries old memory
//! (XSA-216). Requests in flight are bounded by the ring size (`2^ring-page-order` pages'
//! worth) and segments per request by what was offered, so nothing here grows with what the
//! frontend sends beyond those bounds.
//!
//! How a granted page reaches the disk is the [`DataPath`]'s business: dom0 maps grants for
//! device access only (`GNTMAP_device_map`, which yields the frame's machine address and
//! touches no page table) and lets the disk DMA straight into the domU's frame; the
//! alternative, copying through dom0 buffers with `GNTTABOP_copy`, plugs in the same way.
//! The disk is a [`Disk`]: virtio-blk in dom0, a model in the host tests.

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use hypercall_abi::io::blkif::{
    check_segments, op, rsp, BlkifBackRing, BlkifRequest, BlkifRequestSegment, BlkifResponse,
    BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_SECTOR_SIZE, SEGS_PER_INDIRECT_FRAME,
};
use hypercall_abi::io::ring::{RingError, RingMemory};
use hypercall_abi::{DomId, GrantRef, PAGE_SIZE};
use zerocopy::IntoBytes;

pub mod keys;
#[cfg(test)]
mod tests;

/// One segment of a checked request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegReq {
    pub gref: GrantRef,
    pub first_sect: u8,
    pub last_sect: u8,
}

impl SegReq {
    /// Bytes transferred (never 0 for a checked segment).
    pub fn bytes(&self) -> u32 {
        (u32::from(self.last_sect) - u32::from(self.first_sect) + 1) * BLKIF_SECTOR_SIZE as u32
    }
    /// Offset of the transfer in the page.
    pub fn offset(&self) -> u64 {
        u64::from(self.first_sect) * BLKIF_SECTOR_SIZE
    }
}

/// Makes granted pages reachable by the disk and releases them afterwards.
pub trait DataPath {
    /// Gets the disk addresses of `segs` (granted by `dom`) for request slot `slot`: fills
    /// `out[i]` with the machine address where segment `i`'s data starts. `disk_reads` says
    /// the disk reads the pages (a WRITE request). On failure nothing stays mapped and the
    /// `GNTST_*` status is returned.
    fn prepare(
        &mut self,
        dom: DomId,
        slot: u16,
        disk_reads: bool,
        segs: &[SegReq],
        out: &mut [u64],
    ) -> Result<(), i16>;
    /// The disk is done with slot `slot` (`ok`: the transfer succeeded, so data read from disk
    /// must reach the frontend's pages). Release may be deferred to [`flush`](Self::flush);
    /// an error means the data could not be delivered.
    fn finish(
        &mut self,
        dom: DomId,
        slot: u16,
        disk_reads: bool,
        segs: &[SegReq],
        ok: bool,
    ) -> Result<(), i16>;
    /// Carries out deferred releases (one batch per service round).
    fn flush(&mut self) {}
    /// Copies the first `out.len()` bytes of the page `dom` granted as `gref` (an indirect
    /// request's segment descriptors) into `out`, dom0's private memory. On failure the
    /// `GNTST_*` status is returned.
    fn read_granted(&mut self, dom: DomId, gref: GrantRef, out: &mut [u8]) -> Result<(), i16>;
}

/// Operations a [`Disk`] performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskOp {
    Read,
    Write,
    Flush,
}

/// Why a disk did not take a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskError {
    /// Try again after completions.
    Busy,
    /// It never will.
    Invalid,
}

/// The device behind a backend.
pub trait Disk {
    /// Queues a request; `data` are (machine address, bytes) pieces. The completion comes
    /// back through [`Blkback::complete`] with `cookie`.
    fn submit(&mut self, op: DiskOp, sector: u64, data: &[(u64, u32)], cookie: u64) -> Result<(), DiskError>;
    /// Makes queued requests visible to the device.
    fn kick(&mut self);
}

/// What the backend exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskInfo {
    /// 512-byte sectors.
    pub capacity: u64,
    pub readonly: bool,
    /// The disk has a write cache to flush (`feature-flush-cache`).
    pub flush: bool,
    /// Segments an indirect request may carry (`feature-max-indirect-segments`); 0: indirect
    /// requests are not offered.
    pub max_indirect_segments: u16,
}

impl DiskInfo {
    /// Segments a request of this backend carries at most.
    pub fn max_segments(&self) -> usize {
        BLKIF_MAX_SEGMENTS_PER_REQUEST.max(self.max_indirect_segments as usize)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Free,
    /// Checked (and its pages prepared), waiting for the disk to take its current stage.
    Ready,
    /// With the disk.
    Submitted,
    /// Finished; the response is waiting to be published.
    Done,
}

/// What the disk does for the slot next: its data transfer, or (FLUSH_DISKCACHE) the flush,
/// which for a flush carrying data comes after the data was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Data,
    Flush,
}

#[derive(Clone, Debug)]
struct Slot {
    phase: Phase,
    stage: Stage,
    id: u64,
    /// The operation as answered: READ/WRITE/FLUSH_DISKCACHE, an indirect request's
    /// `indirect_op`.
    operation: u8,
    sector: u64,
    /// The checked segments (kept allocated across requests: at most the offered maximum).
    segs: Vec<SegReq>,
    /// Machine address of each segment's data.
    mas: Vec<u64>,
    status: i16,
}

const EMPTY_SLOT: Slot = Slot {
    phase: Phase::Free,
    stage: Stage::Data,
    id: 0,
    operation: 0,
    sector: 0,
    segs: Vec::new(),
    mas: Vec::new(),
    status: rsp::OKAY,
};

impl Slot {
    /// The disk reads the pages (data goes to disk).
    fn disk_reads(&self) -> bool {
        self.operation != op::READ
    }
    /// Back to free, keeping the segment storage.
    fn reset(&mut self) {
        self.phase = Phase::Free;
        self.stage = Stage::Data;
        self.id = 0;
        self.operation = 0;
        self.sector = 0;
        self.segs.clear();
        self.mas.clear();
        self.status = rsp::OKAY;
    }
}

/// Counters of one backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub requests: u64,
    /// Indirect requests accepted.
    pub indirect: u64,
    pub errors: u64,
    pub unsupported: u64,
    pub sectors_read: u64,
    pub sectors_written: u64,
    pub flushes: u64,
}

/// What a service round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Requests taken off the ring.
    pub taken: u32,
    /// Responses published.
    pub answered: u32,
    /// The frontend asked to be notified of the responses: send an event.
    pub notify: bool,
}

/// Requests handed to the disk per kick while a ring is being drained.
pub const SUBMIT_BATCH: u32 = 8;

/// One frontend's backend.
pub struct Blkback<M: RingMemory> {
    ring: BlkifBackRing,
    mem: M,
    frontend: DomId,
    info: DiskInfo,
    slots: Vec<Slot>,
    free: Vec<u16>,
    /// Slots whose responses are ready, in completion order.
    done: Vec<u16>,
    /// Slots whose next stage waits for the disk, oldest first.
    ready: VecDeque<u16>,
    /// Requests answered at once (never reached a slot): (id, operation, status).
    immediate: Vec<(u64, u8, i16)>,
    broken: Option<RingError>,
    closing: bool,
    /// Added to slot numbers to make the disk cookies of this backend.
    cookie_base: u64,
    /// The private copy of an indirect request's segment descriptors (reused; at most the
    /// offered maximum).
    indirect_segs: Vec<BlkifRequestSegment>,
    /// Disk pieces of the request being submitted (reused).
    pieces: Vec<(u64, u32)>,
    pub stats: Stats,
}

impl<M: RingMemory> core::fmt::Debug for Blkback<M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Blkback")
            .field("frontend", &self.frontend)
            .field("in_flight", &self.in_flight())
            .field("broken", &self.broken)
            .finish()
    }
}

impl<M: RingMemory> Blkback<M> {
    /// A backend for `frontend` on the one-page ring in `mem` (already mapped), serving
    /// `info`. Disk cookies are `cookie_base + slot`.
    pub fn new(mem: M, frontend: DomId, info: DiskInfo, cookie_base: u64) -> Blkback<M> {
        Self::with_ring(mem, BlkifBackRing::new(), frontend, info, cookie_base)
    }

    /// A backend on a ring of `2^order` pages mapped as `mem` (in ring order: the ring's
    /// byte `i` at `mem` offset `i`). `Err` hands `mem` back if the order is too large for a
    /// ring.
    pub fn multi_page(
        mem: M,
        order: u32,
        frontend: DomId,
        info: DiskInfo,
        cookie_base: u64,
    ) -> Result<Blkback<M>, M> {
        let ring = match PAGE_SIZE.checked_shl(order).filter(|&b| b != 0).map(|b| BlkifBackRing::attach(b, 0))
        {
            Some(Ok(r)) => r,
            _ => return Err(mem),
        };
        Ok(Self::with_ring(mem, ring, frontend, info, cookie_base))
    }

    fn with_ring(
        mem: M,
        ring: BlkifBackRing,
        frontend: DomId,
        info: DiskInfo,
        cookie_base: u64,
    ) -> Blkback<M> {
        let n = ring.size() as usize;
        Blkback {
            ring,
            mem,
            frontend,
            info,
            slots: vec![EMPTY_SLOT; n],
            free: (0..n as u16).rev().collect(),
            done: Vec::with_capacity(n),
            ready: VecDeque::with_capacity(n),
            immediate: Vec::with_capacity(n),
            broken: None,
            closing: false,
            cookie_base,
            indirect_segs: Vec::with_capacity(info.max_indirect_segments as usize),
            pieces: Vec::with_capacity(info.max_segments()),
            stats: Stats::default(),
        }
    }

    /// Slots of the ring (`RING_SIZE`): the most requests in flight.
    pub fn ring_size(&self) -> u32 {
        self.ring.size()
    }

    pub fn frontend(&self) -> DomId {
        self.frontend
    }
    pub fn info(&self) -> DiskInfo {
        self.info
    }
    /// The ring memory (for the glue that unmaps it).
    pub fn memory(&self) -> &M {
        &self.mem
    }
    /// Gives the ring memory back (the connection is over), for unmapping.
    pub fn into_memory(self) -> M {
        self.mem
    }
    /// Requests taken and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }
    /// Requests with the disk (their pages must stay mapped until they complete).
    pub fn with_disk(&self) -> usize {
        self.slots.iter().filter(|s| s.phase == Phase::Submitted).count()
    }
    /// Why the ring was given up, if it was.
    pub fn broken(&self) -> Option<RingError> {
        self.broken
    }
    /// True if `cookie` belongs to this backend.
    pub fn owns(&self, cookie: u64) -> bool {
        cookie.checked_sub(self.cookie_base).is_some_and(|s| s < self.slots.len() as u64)
    }

    /// Stops taking requests (the frontend is going away or misbehaved); those in flight
    /// still complete.
    pub fn close(&mut self) {
        self.closing = true;
    }

    /// True once closing and nothing is in flight: the ring may be unmapped.
    pub fn quiescent(&self) -> bool {
        (self.closing || self.broken.is_some()) && self.in_flight() == 0
    }

    /// A disk completion for one of our cookies (others are ignored).
    pub fn complete<P: DataPath>(&mut self, data: &mut P, cookie: u64, ok: bool) {
        let Some(slot) = cookie.checked_sub(self.cookie_base).and_then(|s| u16::try_from(s).ok()) else {
            return;
        };
        if self.slots.get(slot as usize).is_none_or(|s| s.phase != Phase::Submitted) {
            // Not with the disk: a confused device; nothing to do.
            return;
        }
        self.finish_stage(data, slot, ok);
    }

    /// Ends the slot's current stage: releases its pages after a data transfer, then either
    /// queues the flush stage or marks the slot done.
    fn finish_stage<P: DataPath>(&mut self, data: &mut P, slot: u16, ok: bool) {
        let frontend = self.frontend;
        let s = &mut self.slots[slot as usize];
        if s.stage == Stage::Data
            && !s.segs.is_empty()
            && data.finish(frontend, slot, s.disk_reads(), &s.segs, ok).is_err()
        {
            s.status = rsp::ERROR;
        }
        if !ok {
            s.status = rsp::ERROR;
        }
        if s.stage == Stage::Data && s.operation == op::FLUSH_DISKCACHE && s.status == rsp::OKAY {
            s.stage = Stage::Flush;
            s.phase = Phase::Ready;
            self.ready.push_back(slot);
        } else {
            s.phase = Phase::Done;
            self.done.push(slot);
        }
    }

    /// One round: take new requests, prepare and submit them, answer finished ones. Call when
    /// the frontend notified, after completions, and whenever the disk may have room again.
    pub fn service<P: DataPath, D: Disk>(&mut self, data: &mut P, disk: &mut D) -> Round {
        let mut round = Round::default();
        // Requests go to the disk a few at a time, so it starts on the first ones while the
        // rest are still being checked.
        loop {
            let before = round.taken;
            self.take_requests(data, &mut round, SUBMIT_BATCH);
            self.submit_ready(data, disk);
            if round.taken == before {
                break;
            }
        }
        data.flush();
        self.respond(&mut round);
        round
    }

    /// Takes at most `limit` requests off the ring.
    fn take_requests<P: DataPath>(&mut self, data: &mut P, round: &mut Round, limit: u32) {
        if self.broken.is_some() || self.closing {
            return;
        }
        let start = round.taken;
        while round.taken - start < limit {
            // Each request needs a slot (even one answered at once, so that a response slot
            // on the ring is guaranteed to exist when we answer it).
            if self.free.len() <= self.immediate.len() {
                return;
            }
            let req = match self.ring.take_request(&self.mem) {
                Ok(Some(r)) => r,
                Ok(None) => match self.ring.final_check_for_requests(&self.mem) {
                    Ok(true) => continue,
                    Ok(false) => return,
                    Err(e) => return self.break_ring(e),
                },
                Err(e) => return self.break_ring(e),
            };
            round.taken += 1;
            self.stats.requests += 1;
            match self.accept(data, &req) {
                Ok(()) => {}
                Err(status) => {
                    if status == rsp::EOPNOTSUPP {
                        self.stats.unsupported += 1;
                    } else {
                        self.stats.errors += 1;
                    }
                    self.immediate.push((req.id, answered_op(&req, self.info), status));
                }
            }
        }
    }

    fn break_ring(&mut self, e: RingError) {
        self.broken = Some(e);
    }

    /// Checks a request copy and, if it is good, gives it a slot with its pages prepared.
    fn accept<P: DataPath>(&mut self, data: &mut P, req: &BlkifRequest) -> Result<(), i16> {
        let (operation, with_data) = match req.operation {
            op::READ | op::WRITE => (req.operation, true),
            op::FLUSH_DISKCACHE if !self.info.flush => return Err(rsp::EOPNOTSUPP),
            op::FLUSH_DISKCACHE => (req.operation, req.nr_segments > 0),
            op::INDIRECT if self.info.max_indirect_segments > 0 => (req.as_indirect().indirect_op, true),
            // Not advertised (no feature-barrier, feature-discard, max-indirect-segments), or
            // unknown: blkback answers EOPNOTSUPP.
            _ => return Err(rsp::EOPNOTSUPP),
        };
        // The segments, checked, into `self.indirect_segs` (indirect) or straight from the
        // request copy.
        if req.operation == op::INDIRECT {
            self.copy_indirect(data, req)?;
        } else if with_data {
            req.check_rw(self.info.capacity).map_err(|_| rsp::ERROR)?;
        }
        if with_data && operation != op::READ && self.info.readonly {
            return Err(rsp::ERROR);
        }
        if self.slots.iter().any(|s| s.phase != Phase::Free && s.id == req.id) {
            return Err(rsp::ERROR);
        }
        let slot = self.free.pop().ok_or(rsp::ERROR)?;
        let s = &mut self.slots[slot as usize];
        s.reset();
        let segs: &[BlkifRequestSegment] = match (with_data, req.operation) {
            (false, _) => &[],
            (true, op::INDIRECT) => &self.indirect_segs,
            (true, _) => req.segments().unwrap_or(&[]),
        };
        s.segs.extend(segs.iter().map(|g| SegReq {
            gref: g.gref,
            first_sect: g.first_sect,
            last_sect: g.last_sect,
        }));
        s.mas.resize(s.segs.len(), 0);
        s.operation = operation;
        if !s.segs.is_empty()
            && data.prepare(self.frontend, slot, s.disk_reads(), &s.segs, &mut s.mas).is_err()
        {
            s.reset();
            self.free.push(slot);
            return Err(rsp::ERROR);
        }
        if req.operation == op::INDIRECT {
            self.stats.indirect += 1;
        }
        s.phase = Phase::Ready;
        s.stage = if with_data { Stage::Data } else { Stage::Flush };
        s.id = req.id;
        s.sector = req.sector_number;
        self.ready.push_back(slot);
        Ok(())
    }

    /// Copies an indirect request's descriptor pages into private memory, then checks the
    /// copy: the header against what was offered, every segment, the sector range. The good
    /// segments are left in `self.indirect_segs`.
    fn copy_indirect<P: DataPath>(&mut self, data: &mut P, req: &BlkifRequest) -> Result<(), i16> {
        let ind = req.as_indirect();
        let pages = ind.check(self.info.max_indirect_segments).map_err(|_| rsp::ERROR)?;
        self.indirect_segs.clear();
        self.indirect_segs.resize(pages.nr_segments, BlkifRequestSegment::default());
        for (i, chunk) in self.indirect_segs.chunks_mut(SEGS_PER_INDIRECT_FRAME).enumerate() {
            let gref = *pages.grefs.get(i).ok_or(rsp::ERROR)?;
            data.read_granted(self.frontend, gref, chunk.as_mut_bytes()).map_err(|_| rsp::ERROR)?;
        }
        check_segments(&self.indirect_segs, ind.sector_number, self.info.capacity).map_err(|_| rsp::ERROR)?;
        Ok(())
    }

    /// Hands every prepared stage to the disk, in slot order, until it is busy.
    fn submit_ready<P: DataPath, D: Disk>(&mut self, data: &mut P, disk: &mut D) {
        let mut any = false;
        while let Some(&i) = self.ready.front() {
            let s = &self.slots[i as usize];
            let dop = match (s.stage, s.operation) {
                (Stage::Flush, _) => DiskOp::Flush,
                (Stage::Data, op::READ) => DiskOp::Read,
                (Stage::Data, _) => DiskOp::Write,
            };
            let pieces = &mut self.pieces;
            pieces.clear();
            if s.stage == Stage::Data {
                for (seg, &ma) in s.segs.iter().zip(&s.mas) {
                    let len = seg.bytes();
                    // Pieces that continue each other in machine memory go as one.
                    match pieces.last_mut() {
                        Some(last) if last.0.checked_add(u64::from(last.1)) == Some(ma) => last.1 += len,
                        _ => pieces.push((ma, len)),
                    }
                }
            }
            let sector = if dop == DiskOp::Flush { 0 } else { s.sector };
            match disk.submit(dop, sector, pieces, self.cookie_base + u64::from(i)) {
                Ok(()) => {
                    any = true;
                    self.ready.pop_front();
                    let sectors = u64::from(pieces.iter().map(|p| p.1).sum::<u32>()) / BLKIF_SECTOR_SIZE;
                    match dop {
                        DiskOp::Read => self.stats.sectors_read += sectors,
                        DiskOp::Write => self.stats.sectors_written += sectors,
                        DiskOp::Flush => self.stats.flushes += 1,
                    }
                    self.slots[i as usize].phase = Phase::Submitted;
                }
                Err(DiskError::Busy) => break,
                // Refused outright: the request fails, its pages are released.
                Err(DiskError::Invalid) => {
                    self.ready.pop_front();
                    self.finish_stage(data, i, false);
                }
            }
        }
        if any {
            disk.kick();
        }
    }

    /// Publishes responses: those answered at once, then finished slots.
    fn respond(&mut self, round: &mut Round) {
        if self.broken.is_some() {
            // The ring is not trusted any more: free the slots without touching it.
            for slot in self.done.drain(..) {
                self.slots[slot as usize].reset();
                self.free.push(slot);
            }
            self.immediate.clear();
            return;
        }
        let mut pushed = 0;
        for (id, operation, status) in self.immediate.drain(..) {
            let r = BlkifResponse { id, operation, status, ..Default::default() };
            if self.ring.push_response(&self.mem, &r).is_ok() {
                pushed += 1;
            }
        }
        for slot in self.done.drain(..) {
            let s = &mut self.slots[slot as usize];
            let r =
                BlkifResponse { id: s.id, operation: s.operation, status: s.status, ..Default::default() };
            s.reset();
            self.free.push(slot);
            if self.ring.push_response(&self.mem, &r).is_ok() {
                pushed += 1;
            }
        }
        if pushed > 0 {
            round.answered += pushed;
            round.notify |= self.ring.push_responses_and_check_notify(&self.mem);
        }
    }
}

/// The `operation` a response to `req` carries: the request's, or for an indirect request
/// (when offered) its `indirect_op` — Linux's blkfront checks this and gives up the device on
/// a mismatch.
fn answered_op(req: &BlkifRequest, info: DiskInfo) -> u8 {
    if req.operation == op::INDIRECT && info.max_indirect_segments > 0 {
        req.as_indirect().indirect_op
    } else {
        req.operation
    }
}

/// A multi-page ring's memory: its pages, each mapped on its own (not necessarily adjacent),
/// seen as one area — ring byte `i` is byte `i % PAGE_SIZE` of page `i / PAGE_SIZE`. A slot may
/// straddle two pages; the header is in the first.
#[derive(Debug)]
pub struct RingPages<M> {
    pages: Vec<M>,
}

impl<M: RingMemory> RingPages<M> {
    /// The ring over `pages`, in ring order (`ring-ref0` first). `Err` hands them back if
    /// there are none.
    pub fn new(pages: Vec<M>) -> Result<RingPages<M>, Vec<M>> {
        if pages.is_empty() {
            return Err(pages);
        }
        Ok(RingPages { pages })
    }
    pub fn pages(&self) -> &[M] {
        &self.pages
    }
    /// The pages back (for unmapping).
    pub fn into_pages(self) -> Vec<M> {
        self.pages
    }
    /// Calls `f(page, offset in it, range of the buffer)` for each page piece of `len` bytes
    /// at ring offset `off`. Offsets past the last page are a bug of the ring code (which only
    /// uses offsets inside the area it was given) and panic like an out-of-range index.
    fn pieces(&self, off: usize, len: usize, mut f: impl FnMut(&M, usize, core::ops::Range<usize>)) {
        let mut done = 0;
        while done < len {
            let at = off + done;
            let (page, in_page) = (at / PAGE_SIZE, at % PAGE_SIZE);
            let n = (PAGE_SIZE - in_page).min(len - done);
            f(&self.pages[page], in_page, done..done + n);
            done += n;
        }
    }
}

impl<M: RingMemory> RingMemory for RingPages<M> {
    fn load_u32_acquire(&self, off: usize) -> u32 {
        self.pages[off / PAGE_SIZE].load_u32_acquire(off % PAGE_SIZE)
    }
    fn store_u32_release(&self, off: usize, v: u32) {
        self.pages[off / PAGE_SIZE].store_u32_release(off % PAGE_SIZE, v)
    }
    fn fence(&self) {
        self.pages[0].fence()
    }
    fn read_bytes(&self, off: usize, buf: &mut [u8]) {
        self.pieces(off, buf.len(), |p, at, r| p.read_bytes(at, &mut buf[r]));
    }
    fn write_bytes(&self, off: usize, data: &[u8]) {
        self.pieces(off, data.len(), |p, at, r| p.write_bytes(at, &data[r]));
    }
}
