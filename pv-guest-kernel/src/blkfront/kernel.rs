//! The kernel half of blkfront: the blkif driver on the split-driver framework (which owns
//! the handshake, the ring page, its grant and the event channel), per-request grants of the
//! caller's pages, and the block API.

use super::{requests, segments_of, BlkError, GrantCache, InFlight, Segment, Shadow, MAX_IN_FLIGHT, SECTOR};
use crate::split::kernel::{self as split_kernel, KernelOps, OwnPage, PENDING};
use crate::split::{FrontChannel, FrontDevice, FrontendDriver, Keys, SplitError, Store};
use crate::xenbus::{Transport, Xenbus};
use crate::{events, gnttab, mm, time};
use alloc::string::String;
use alloc::vec::Vec;
use hypercall_abi::io::blkif::{
    keys, op, rsp, vdisk, BlkifFrontRing, BlkifRequest, BlkifRequestSegment, BlkifResponse,
    BLKIF_MAX_SEGMENTS_PER_REQUEST,
};
use hypercall_abi::io::ring::RingMemory;
use hypercall_abi::{DomId, Errno, GrantRef, Mfn, Port, PAGE_SIZE};

pub use crate::split::kernel::PageRing;

/// How long [`Blkfront::connect`] gives the backend to connect once the device exists.
pub const HANDSHAKE_NS: u64 = 10_000_000_000;

/// What the backend said about the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskInfo {
    /// In 512-byte sectors.
    pub sectors: u64,
    pub sector_size: u32,
    pub readonly: bool,
    /// `feature-flush-cache`.
    pub flush: bool,
    /// Both ends use persistent grants (`feature-persistent`).
    pub persistent: bool,
}

/// Counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub requests: u64,
    pub notifies: u64,
    pub waits: u64,
    /// Time spent blocked waiting for responses.
    pub wait_ns: u64,
    /// Responses dropped (unknown id or operation).
    pub bogus: u64,
    /// Grants the backend still held when their request was answered.
    pub busy_grants: u64,
}

/// Block operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
}

/// The blkif driver's part of the handshake: asks for persistent grants if the backend
/// offers them, and reads the disk's description once the backend is Connected.
#[derive(Debug, Default)]
pub struct BlkDriver {
    asked_persistent: bool,
    pub info: Option<DiskInfo>,
}

impl FrontendDriver for BlkDriver {
    type Req = BlkifRequest;
    type Rsp = BlkifResponse;
    fn publish<S: Store + ?Sized>(&mut self, backend: &mut Keys<'_, S>) -> Vec<(&'static str, String)> {
        // Persistent grants if the backend keeps them mapped (it says so before InitWait).
        self.asked_persistent = backend.flag(keys::FEATURE_PERSISTENT);
        alloc::vec![(keys::FEATURE_PERSISTENT, String::from(if self.asked_persistent { "1" } else { "0" }))]
    }
    fn connected<S: Store + ?Sized>(&mut self, backend: &mut Keys<'_, S>) -> Result<(), &'static str> {
        let sectors = backend.number(keys::SECTORS).ok_or("no sectors")?;
        if backend.number(keys::SECTOR_SIZE).unwrap_or(512) != 512 {
            return Err("sector-size is not 512");
        }
        let info_bits = backend.number(keys::INFO).unwrap_or(0);
        self.info = Some(DiskInfo {
            sectors,
            sector_size: 512,
            readonly: info_bits & u64::from(vdisk::READONLY) != 0,
            flush: backend.flag(keys::FEATURE_FLUSH_CACHE),
            persistent: self.asked_persistent && backend.flag(keys::FEATURE_PERSISTENT),
        });
        Ok(())
    }
}

type Dev = FrontDevice<OwnPage, BlkDriver>;
type Chan = FrontChannel<OwnPage, BlkifRequest, BlkifResponse>;

/// A connected virtual block device.
pub struct Blkfront {
    pub info: DiskInfo,
    /// `device/vbd/<id>` of this domain.
    pub devid: String,
    dev: Dev,
    backend_id: DomId,
    shadow: Shadow,
    /// Grants the backend had not released yet when their request was answered.
    stale: Vec<GrantRef>,
    /// Persistent grants, when negotiated.
    cache: GrantCache,
    broken: bool,
    pub stats: Stats,
}

fn setup(e: Errno) -> BlkError {
    BlkError::Setup(e)
}

fn split_error(e: SplitError) -> BlkError {
    match e {
        SplitError::NoDevice | SplitError::PeerClosed => BlkError::NoDevice,
        SplitError::Os(Errno::ETIMEDOUT) => BlkError::Timeout,
        SplitError::Os(e) => BlkError::Setup(e),
        SplitError::Keys(_) | SplitError::Driver(_) => BlkError::Protocol,
    }
}

impl Blkfront {
    /// Finds this domain's first vbd (waiting up to `timeout_ns` for the toolstack to create
    /// one; 0 looks once), connects to its backend (giving it at least [`HANDSHAKE_NS`]) and
    /// returns the device.
    pub fn connect<T: Transport>(xb: &mut Xenbus<T>, timeout_ns: u64) -> Result<Blkfront, BlkError> {
        let dev = split_kernel::open_frontend(xb, keys::KIND, BlkDriver::default(), timeout_ns, HANDSHAKE_NS)
            .map_err(split_error)?;
        let Some(info) = dev.driver.info else { return Err(BlkError::Protocol) };
        let devid = String::from(dev.dev.dir.rsplit('/').next().unwrap_or(""));
        Ok(Blkfront {
            info,
            devid,
            backend_id: dev.backend_id,
            dev,
            shadow: Shadow::default(),
            stale: Vec::new(),
            cache: GrantCache::default(),
            broken: false,
            stats: Stats::default(),
        })
    }

    /// The ring (present from connect until disconnect).
    fn chan(&mut self) -> Option<&mut Chan> {
        self.dev.channel()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.shadow.in_flight()
    }

    /// True once the backend broke the protocol; nothing more is sent.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Room for another request.
    pub fn can_submit(&self) -> bool {
        !self.broken
            && self.dev.channel_ref().is_some_and(|c| !c.ring.is_full())
            && self.shadow.in_flight() < MAX_IN_FLIGHT
    }

    /// Queues one request over `segs` (at most 11), granting each segment's page to the
    /// backend; `tag` comes back with its completion. Not sent until [`kick`](Self::kick).
    pub fn submit(&mut self, op_: Op, sector: u64, segs: &[Segment], tag: u64) -> Result<(), BlkError> {
        if self.broken {
            return Err(BlkError::Protocol);
        }
        if !self.can_submit() {
            return Err(BlkError::Busy);
        }
        let operation = match op_ {
            Op::Read => op::READ,
            Op::Write => op::WRITE,
            Op::Flush => op::FLUSH_DISKCACHE,
        };
        if (op_ == Op::Flush) != segs.is_empty() || segs.len() > BLKIF_MAX_SEGMENTS_PER_REQUEST {
            return Err(BlkError::BadBuffer);
        }
        if op_ == Op::Flush && !self.info.flush {
            return Err(BlkError::Unsupported);
        }
        if op_ == Op::Write && self.info.readonly {
            return Err(BlkError::ReadOnly);
        }
        let total: u64 = segs.iter().map(Segment::sectors).sum();
        if op_ != Op::Flush && sector.checked_add(total).is_none_or(|e| e > self.info.sectors) {
            return Err(BlkError::OutOfRange);
        }
        let mut f = InFlight {
            operation,
            tag,
            grefs: [GrantRef(0); BLKIF_MAX_SEGMENTS_PER_REQUEST],
            nr_grefs: 0,
            temporary: 0,
        };
        let mut req = BlkifRequest {
            operation,
            nr_segments: segs.len() as u8,
            sector_number: sector,
            ..Default::default()
        };
        for (i, s) in segs.iter().enumerate() {
            let granted = if s.first_sect > s.last_sect || s.last_sect >= 8 {
                Err(BlkError::BadBuffer)
            } else {
                self.grant_for(s.mfn, op_ == Op::Write).map_err(|_| BlkError::Busy)
            };
            match granted {
                Ok((g, temporary)) => {
                    f.grefs[i] = g;
                    f.nr_grefs = i as u8 + 1;
                    if temporary {
                        f.temporary |= 1 << i;
                    }
                    req.seg[i] = BlkifRequestSegment {
                        gref: g,
                        first_sect: s.first_sect,
                        last_sect: s.last_sect,
                        _pad: 0,
                    };
                }
                Err(e) => {
                    self.release(&f);
                    return Err(e);
                }
            }
        }
        let Some(id) = self.shadow.insert(f) else {
            self.release(&f);
            return Err(BlkError::Busy);
        };
        req.id = id;
        if self.chan().is_none_or(|c| c.push(&req).is_err()) {
            self.shadow.remove(id);
            self.release(&f);
            return Err(BlkError::Busy);
        }
        self.stats.requests += 1;
        Ok(())
    }

    /// The grant for frame `mfn`: its persistent one (made now if there is room), or one for
    /// this request only (`true`), read-only when the backend only reads the frame — unless
    /// persistent grants were negotiated: a backend then maps every grant writable (blkif.h
    /// note 8; Linux's blkback and ours do), so a read-only one would fail its request once
    /// the persistent set is full (as it did for 32 × 11-page writes after two cached pages).
    fn grant_for(&mut self, mfn: Mfn, backend_reads: bool) -> Result<(GrantRef, bool), Errno> {
        if self.info.persistent {
            if let Some(g) = self.cache.get(mfn) {
                return Ok((g, false));
            }
            if self.cache.has_room() {
                // Persistent grants are writable: the backend maps them once for every use.
                let g = gnttab::grant_access(self.backend_id, mfn, false)?;
                self.cache.insert(mfn, g);
                return Ok((g, false));
            }
        }
        let readonly = backend_reads && !self.info.persistent;
        gnttab::grant_access(self.backend_id, mfn, readonly).map(|g| (g, true))
    }

    /// Revokes the request's per-request grants (persistent ones stay).
    fn release(&mut self, f: &InFlight) {
        for g in f.temporary_grefs() {
            if gnttab::end_access(g).is_err() {
                self.stats.busy_grants += 1;
                self.stale.push(g);
            }
        }
    }

    /// Publishes queued requests and notifies the backend if it asked to be.
    pub fn kick(&mut self) {
        if let Some(c) = self.dev.channel() {
            if c.kick(&mut KernelOps) {
                self.stats.notifies += 1;
            }
        }
    }

    /// Hands each answered request to `done(tag, status)` (`BLKIF_RSP_*`); returns how many.
    pub fn poll(&mut self, mut done: impl FnMut(u64, i16)) -> usize {
        if !self.stale.is_empty() {
            let stale = core::mem::take(&mut self.stale);
            for g in stale {
                if gnttab::end_access(g).is_err() {
                    self.stale.push(g);
                }
            }
        }
        let mut n = 0;
        loop {
            let taken = match self.dev.channel() {
                Some(c) => c.take(),
                None => Err(hypercall_abi::io::ring::RingError::Overflow),
            };
            match taken {
                Ok(Some(r)) => match self.shadow.complete(&r) {
                    Ok(f) => {
                        self.release(&f);
                        n += 1;
                        done(f.tag, r.status);
                    }
                    Err(_) => self.stats.bogus += 1,
                },
                Ok(None) => break,
                Err(_) => {
                    self.broken = true;
                    break;
                }
            }
        }
        n
    }

    /// Blocks until a response can be polled (or `deadline`, system time in ns).
    pub fn wait(&mut self, deadline: Option<u64>) -> Result<(), BlkError> {
        self.stats.waits += 1;
        let Some(c) = self.dev.channel() else { return Err(BlkError::Protocol) };
        let t0 = time::now_ns();
        let r = split_kernel::wait_responses(c, deadline);
        self.stats.wait_ns += time::now_ns().saturating_sub(t0);
        match r {
            Ok(true) => Ok(()),
            Ok(false) => Err(BlkError::Timeout),
            Err(Errno::EIO) => {
                self.broken = true;
                Err(BlkError::Protocol)
            }
            Err(e) => Err(setup(e)),
        }
    }

    /// Runs `segs` (a transfer at `sector`) as requests of up to 11 segments, as many in
    /// flight as the ring holds, and waits for all of them.
    fn transfer(&mut self, op_: Op, sector: u64, segs: &[Segment]) -> Result<(), BlkError> {
        let reqs: Vec<(u64, &[Segment])> = requests(sector, segs).collect();
        let (mut next, mut done) = (0usize, 0usize);
        let mut err = None;
        while done < reqs.len() {
            while next < reqs.len() && self.can_submit() {
                let (s, chunk) = reqs[next];
                match self.submit(op_, s, chunk, next as u64) {
                    Ok(()) => next += 1,
                    Err(BlkError::Busy) => break,
                    Err(e) => {
                        // Nothing of this transfer may stay in flight when we return.
                        err = Some(e);
                        next = reqs.len();
                        break;
                    }
                }
            }
            self.kick();
            if self.in_flight() == 0 && next == reqs.len() && done < reqs.len() {
                break;
            }
            let got = self.poll(|_, status| {
                done += 1;
                if status != rsp::OKAY && err.is_none() {
                    err = Some(if status == rsp::EOPNOTSUPP { BlkError::Unsupported } else { BlkError::Io });
                }
            });
            if got == 0 {
                if self.broken {
                    return Err(BlkError::Protocol);
                }
                self.wait(Some(time::now_ns() + 30_000_000_000))?;
            }
        }
        err.map_or(Ok(()), Err)
    }

    /// Reads `buf.len()` bytes (a multiple of 512, 512-byte aligned) from `sector`.
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlkError> {
        let segs = segments_of(buf.as_mut_ptr() as u64, buf.len(), frame_of)?;
        self.transfer(Op::Read, sector, &segs)
    }

    /// Writes `buf` (a multiple of 512 bytes, 512-byte aligned) at `sector`.
    pub fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), BlkError> {
        let segs = segments_of(buf.as_ptr() as u64, buf.len(), frame_of)?;
        self.transfer(Op::Write, sector, &segs)
    }

    /// Makes every completed write durable (`BLKIF_OP_FLUSH_DISKCACHE`); `Unsupported` if the
    /// backend has no write cache to flush.
    pub fn flush(&mut self) -> Result<(), BlkError> {
        if !self.info.flush {
            return Err(BlkError::Unsupported);
        }
        while !self.can_submit() {
            if self.broken {
                return Err(BlkError::Protocol);
            }
            self.poll(|_, _| {});
            self.wait(Some(time::now_ns() + 30_000_000_000))?;
        }
        self.submit(Op::Flush, 0, &[], u64::MAX)?;
        self.kick();
        let mut result = None;
        while result.is_none() {
            self.poll(|tag, status| {
                if tag == u64::MAX {
                    result = Some(status);
                }
            });
            if result.is_none() {
                if self.broken {
                    return Err(BlkError::Protocol);
                }
                self.wait(Some(time::now_ns() + 30_000_000_000))?;
            }
        }
        match result {
            Some(rsp::OKAY) => Ok(()),
            Some(rsp::EOPNOTSUPP) => Err(BlkError::Unsupported),
            _ => Err(BlkError::Io),
        }
    }

    /// The handshake's teardown: waits for requests in flight (up to `timeout_ns`), goes
    /// Closing, waits for the backend to close, goes Closed and releases the ring.
    pub fn disconnect<T: Transport>(mut self, xb: &mut Xenbus<T>, timeout_ns: u64) -> Result<(), BlkError> {
        let deadline = time::now_ns().saturating_add(timeout_ns);
        while self.in_flight() > 0 && !self.broken && time::now_ns() < deadline {
            if self.poll(|_, _| {}) == 0 {
                let _ = self.wait(Some(deadline));
            }
        }
        let r = split_kernel::close_frontend(xb, &mut self.dev, deadline.saturating_sub(time::now_ns()));
        let mut ok = r.is_ok();
        for f in self.shadow.drain() {
            self.release(&f);
        }
        // The backend unmaps persistent grants before it publishes Closing.
        for g in self.cache.drain() {
            if gnttab::end_access(g).is_err() {
                ok = false;
            }
        }
        if ok {
            Ok(())
        } else {
            Err(BlkError::Timeout)
        }
    }

    /// Event-channel notifications received so far (every port of this domain).
    pub fn events() -> u64 {
        events::counters().1
    }

    /// Raw access for tests that play a misbehaving frontend: the ring page, the front-ring
    /// indexes and the port. Requests pushed this way bypass every check.
    pub fn raw(&mut self) -> Raw<'_> {
        let backend = self.backend_id;
        // The framework keeps the ring from connect until `disconnect` consumes the device.
        let c = self.dev.channel().expect("a connected blkfront has its ring");
        let port = c.port();
        Raw { ring: &c.mem, front: &mut c.ring, port, backend }
    }
}

/// See [`Blkfront::raw`].
pub struct Raw<'a> {
    pub ring: &'a OwnPage,
    pub front: &'a mut BlkifFrontRing,
    pub port: Port,
    pub backend: DomId,
}

impl Raw<'_> {
    /// Pushes `req` as is and publishes it.
    pub fn push(&mut self, req: &BlkifRequest) -> Result<(), BlkError> {
        self.front.push_request(self.ring, req).map_err(|_| BlkError::Busy)?;
        self.front.push_requests(self.ring);
        Ok(())
    }
    /// Notifies the backend.
    pub fn notify(&self) {
        let _ = events::send(self.port);
    }
    /// The next response, unchecked.
    pub fn take(&mut self) -> Result<Option<BlkifResponse>, BlkError> {
        self.front.take_response(self.ring).map_err(|_| BlkError::Protocol)
    }
    /// Waits for a response or the deadline (asking the backend for a notification first,
    /// as `RING_FINAL_CHECK_FOR_RESPONSES` does).
    pub fn wait(&mut self, deadline: u64) -> bool {
        match self.front.final_check_for_responses(self.ring) {
            Ok(true) => return true,
            Ok(false) => {}
            Err(_) => return false,
        }
        let ring = self.ring;
        let cons = self.front.rsp_cons();
        let more = || {
            PENDING.take(self.port) || ring.load_u32_acquire(hypercall_abi::io::ring::RSP_PROD_OFFSET) != cons
        };
        matches!(events::block_until(more, Some(deadline)), Ok(true))
    }
}

/// The machine frame of one of our pages (direct map).
pub fn frame_of(va: u64) -> Option<Mfn> {
    mm::virt_to_pfn(va).and_then(mm::pfn_to_mfn)
}

/// A 512-byte-aligned buffer on the heap, for callers without one.
pub struct SectorBuf {
    ptr: *mut u8,
    len: usize,
}

impl SectorBuf {
    /// `len` zeroed bytes (rounded up to a sector), page-aligned.
    pub fn new(len: usize) -> Option<SectorBuf> {
        let len = len.div_ceil(SECTOR).max(1) * SECTOR;
        let layout = core::alloc::Layout::from_size_align(len, PAGE_SIZE).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc::alloc_zeroed(layout) };
        (!ptr.is_null()).then_some(SectorBuf { ptr, len })
    }
}

impl core::ops::Deref for SectorBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is a live allocation of `len` initialised bytes owned by `self`.
        unsafe { core::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl core::ops::DerefMut for SectorBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the access unique.
        unsafe { core::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for SectorBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this exact layout (which was valid then).
        unsafe {
            alloc::alloc::dealloc(
                self.ptr,
                core::alloc::Layout::from_size_align_unchecked(self.len, PAGE_SIZE),
            )
        }
    }
}
