//! The kernel half of blkfront: the XenBus handshake, the ring page and its grant, the
//! event channel, per-request grants of the caller's pages, and the block API.

use super::{requests, segments_of, BlkError, GrantCache, InFlight, Segment, Shadow, MAX_IN_FLIGHT, SECTOR};
use crate::xenbus::{Transport, TxId, Xenbus};
use crate::xenbus_state::{Role, Step, XenbusDevice};
use crate::{events, gnttab, mm, time};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use hypercall_abi::io::blkif::{
    op, rsp, vdisk, BlkifFrontRing, BlkifRequest, BlkifRequestSegment, BlkifResponse,
    BLKIF_MAX_SEGMENTS_PER_REQUEST, XEN_IO_PROTO_ABI_X86_64,
};
use hypercall_abi::io::ring::{RingError, RingMemory, SharedRing};
use hypercall_abi::io::xenbus::XenbusState;
use hypercall_abi::{DomId, Errno, GrantRef, Mfn, Pfn, Port, PAGE_SIZE};

/// How long [`Blkfront::connect`] gives the backend to connect once the device exists.
pub const HANDSHAKE_NS: u64 = 10_000_000_000;

/// Set by the ring's event handler.
static RSP_KICK: AtomicBool = AtomicBool::new(false);
static EVENTS: AtomicU64 = AtomicU64::new(0);

fn on_event(_port: Port) {
    EVENTS.fetch_add(1, Ordering::Relaxed);
    RSP_KICK.store(true, Ordering::SeqCst);
}

/// A ring page shared with the other end, reached at a virtual address: one of our own
/// pages (the frontend's ring) or a grant mapping of the peer's (a backend's view). Every
/// access is one volatile or atomic access of the shared memory, so each byte the peer may
/// change is read exactly once; aligned runs are copied a word at a time.
pub struct PageRing {
    va: u64,
}

impl PageRing {
    /// The ring page mapped at `va`.
    ///
    /// # Safety
    /// `va` must be page-aligned and stay mapped (readable and writable) for as long as the
    /// returned value is used.
    pub unsafe fn new(va: u64) -> PageRing {
        PageRing { va }
    }
    fn at(&self, off: usize, len: usize) -> u64 {
        assert!(off.checked_add(len).is_some_and(|end| end <= PAGE_SIZE), "ring access outside the page");
        self.va + off as u64
    }
    /// Its address (for tests that poke at it).
    pub fn va(&self) -> u64 {
        self.va
    }
}

impl RingMemory for PageRing {
    fn load_u32_acquire(&self, off: usize) -> u32 {
        // SAFETY: the page is mapped for the value's lifetime (`new`'s contract); offsets are
        // in the page and 4-byte aligned (ring.rs passes header offsets only).
        unsafe { (*(self.at(off, 4) as *const AtomicU32)).load(Ordering::Acquire) }
    }
    fn store_u32_release(&self, off: usize, v: u32) {
        // SAFETY: as above.
        unsafe { (*(self.at(off, 4) as *const AtomicU32)).store(v, Ordering::Release) }
    }
    fn fence(&self) {
        core::sync::atomic::fence(Ordering::SeqCst);
    }
    fn read_bytes(&self, off: usize, buf: &mut [u8]) {
        let base = self.at(off, buf.len());
        if base.is_multiple_of(8) && buf.len().is_multiple_of(8) {
            for (i, w) in buf.chunks_exact_mut(8).enumerate() {
                // SAFETY: inside the mapped page (checked above) and 8-byte aligned.
                let v = unsafe { ((base + 8 * i as u64) as *const u64).read_volatile() };
                w.copy_from_slice(&v.to_ne_bytes());
            }
            return;
        }
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: inside the mapped page.
            *b = unsafe { ((base + i as u64) as *const u8).read_volatile() };
        }
    }
    fn write_bytes(&self, off: usize, data: &[u8]) {
        let base = self.at(off, data.len());
        if base.is_multiple_of(8) && data.len().is_multiple_of(8) {
            for (i, w) in data.chunks_exact(8).enumerate() {
                let v = u64::from_ne_bytes(w.try_into().unwrap_or([0; 8]));
                // SAFETY: inside the mapped page and 8-byte aligned.
                unsafe { ((base + 8 * i as u64) as *mut u64).write_volatile(v) };
            }
            return;
        }
        for (i, &b) in data.iter().enumerate() {
            // SAFETY: inside the mapped page.
            unsafe { ((base + i as u64) as *mut u8).write_volatile(b) };
        }
    }
}

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

/// A connected virtual block device.
pub struct Blkfront {
    pub info: DiskInfo,
    /// `device/vbd/<id>` of this domain.
    pub devid: String,
    dev: XenbusDevice,
    backend_id: DomId,
    ring: PageRing,
    ring_pfn: Pfn,
    ring_gref: GrantRef,
    port: Port,
    front: BlkifFrontRing,
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

fn read_u64<T: Transport>(xb: &mut Xenbus<T>, path: &str) -> Option<u64> {
    xb.read_string(TxId::NONE, path).ok()?.trim().parse().ok()
}

/// Waits for a watch event (or `deadline`); false on timeout.
fn wait_event<T: Transport>(xb: &mut Xenbus<T>, deadline: u64) -> Result<bool, BlkError> {
    loop {
        if let Some(_e) = xb.next_watch_event().map_err(setup)? {
            return Ok(true);
        }
        if time::now_ns() >= deadline {
            return Ok(false);
        }
        match xb.transport_mut().wait() {
            Ok(()) | Err(Errno::ETIMEDOUT) => {}
            Err(e) => return Err(setup(e)),
        }
    }
}

impl Blkfront {
    /// Finds this domain's first vbd (waiting up to `timeout_ns` for the toolstack to create
    /// one; 0 looks once), connects to its backend (giving it at least [`HANDSHAKE_NS`]) and
    /// returns the device.
    pub fn connect<T: Transport>(xb: &mut Xenbus<T>, timeout_ns: u64) -> Result<Blkfront, BlkError> {
        let deadline = time::now_ns().saturating_add(timeout_ns);
        let me = read_u64(xb, "domid").ok_or(BlkError::NoDevice)?;
        let home = format!("/local/domain/{me}");
        xb.watch(&format!("{home}/device/vbd"), "blkfront-dev").map_err(setup)?;
        let devid = loop {
            if let Some(d) = xb
                .directory(TxId::NONE, &format!("{home}/device/vbd"))
                .ok()
                .and_then(|l| l.into_iter().next())
            {
                break d;
            }
            if !wait_event(xb, deadline)? {
                let _ = xb.unwatch(&format!("{home}/device/vbd"), "blkfront-dev");
                return Err(BlkError::NoDevice);
            }
        };
        let _ = xb.unwatch(&format!("{home}/device/vbd"), "blkfront-dev");
        let front = format!("{home}/device/vbd/{devid}");
        let backend = xb.read_string(TxId::NONE, &format!("{front}/backend")).map_err(setup)?;
        let backend_id = read_u64(xb, &format!("{front}/backend-id"))
            .and_then(|v| u16::try_from(v).ok())
            .ok_or(BlkError::NoDevice)?;
        let mut dev = XenbusDevice::new(Role::Frontend, &front, &backend);
        dev.load(xb);
        let token = "blkfront-state";
        xb.watch(&dev.other_state_path(), token).map_err(setup)?;
        // However long the device took to appear, the backend gets a fair time to connect.
        let deadline = deadline.max(time::now_ns().saturating_add(HANDSHAKE_NS));
        let r = Self::handshake(xb, dev, devid, DomId(backend_id), deadline);
        let _ = xb.unwatch(&format!("{backend}/state"), token);
        r
    }

    fn handshake<T: Transport>(
        xb: &mut Xenbus<T>,
        mut dev: XenbusDevice,
        devid: String,
        backend_id: DomId,
        deadline: u64,
    ) -> Result<Blkfront, BlkError> {
        gnttab::init(gnttab::DEFAULT_FRAMES).map_err(setup)?;
        let mut ring: Option<(Page, GrantRef, Port)> = None;
        let fail = |ring: Option<(Page, GrantRef, Port)>| {
            if let Some((p, g, port)) = ring {
                let _ = events::close(port);
                let _ = gnttab::end_access(g);
                let _ = mm::free_page(p.pfn);
            }
        };
        loop {
            dev.refresh_other(xb);
            match dev.next_step() {
                Some(Step::Connect) if ring.is_none() => {
                    let r = match Self::publish_ring(xb, &dev, backend_id) {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = dev.switch(xb, XenbusState::Closing);
                            return Err(e);
                        }
                    };
                    ring = Some(r);
                    if let Err(e) = dev.complete(xb, Step::Connect) {
                        fail(ring);
                        return Err(setup(e));
                    }
                    continue;
                }
                Some(Step::Close) | Some(Step::Closed) => {
                    let _ = dev.switch(xb, XenbusState::Closing);
                    fail(ring);
                    return Err(BlkError::NoDevice);
                }
                _ => {}
            }
            if dev.state() == XenbusState::Connected && dev.other_state() == XenbusState::Connected {
                break;
            }
            if !wait_event(xb, deadline)? && time::now_ns() >= deadline {
                fail(ring);
                return Err(BlkError::Timeout);
            }
        }
        let Some((page, gref, port)) = ring else { return Err(BlkError::Protocol) };
        let b = &dev.other_dir;
        let sectors = read_u64(xb, &format!("{b}/sectors"));
        let sector_size = read_u64(xb, &format!("{b}/sector-size")).unwrap_or(512);
        let info_bits = read_u64(xb, &format!("{b}/info")).unwrap_or(0);
        let flush = read_u64(xb, &format!("{b}/feature-flush-cache")) == Some(1);
        let persistent = read_u64(xb, &format!("{b}/feature-persistent")) == Some(1)
            && read_u64(xb, &format!("{}/feature-persistent", dev.dir)) == Some(1);
        let Some(sectors) = sectors.filter(|_| sector_size == 512) else {
            fail(Some((page, gref, port)));
            return Err(BlkError::Protocol);
        };
        Ok(Blkfront {
            info: DiskInfo {
                sectors,
                sector_size: sector_size as u32,
                readonly: info_bits & u64::from(vdisk::READONLY) != 0,
                flush,
                persistent,
            },
            devid,
            dev,
            backend_id,
            ring: PageRing { va: page.va },
            ring_pfn: page.pfn,
            ring_gref: gref,
            port,
            front: BlkifFrontRing::new(),
            shadow: Shadow::default(),
            stale: Vec::new(),
            cache: GrantCache::default(),
            broken: false,
            stats: Stats::default(),
        })
    }

    /// Allocates and grants the ring, allocates the event channel, and publishes both.
    fn publish_ring<T: Transport>(
        xb: &mut Xenbus<T>,
        dev: &XenbusDevice,
        backend: DomId,
    ) -> Result<(Page, GrantRef, Port), BlkError> {
        let p = mm::alloc_page().map_err(setup)?;
        let page = Page { pfn: p.pfn, va: p.va };
        SharedRing::init(&PageRing { va: page.va });
        let gref = match gnttab::grant_access(backend, p.mfn, false) {
            Ok(g) => g,
            Err(e) => {
                let _ = mm::free_page(p.pfn);
                return Err(setup(e));
            }
        };
        let port = match events::alloc_unbound(backend)
            .and_then(|port| events::attach(port, on_event).map(|_| port))
        {
            Ok(port) => port,
            Err(e) => {
                let _ = gnttab::end_access(gref);
                let _ = mm::free_page(p.pfn);
                return Err(setup(e));
            }
        };
        let dir = dev.dir.clone();
        // Persistent grants if the backend keeps them mapped (it says so before InitWait).
        let persistent = read_u64(xb, &format!("{}/feature-persistent", dev.other_dir)) == Some(1);
        let r = xb.transaction(|xb, tx| {
            xb.write(tx, &format!("{dir}/feature-persistent"), if persistent { b"1" } else { b"0" })?;
            xb.write(tx, &format!("{dir}/ring-ref"), format!("{}", gref.0).as_bytes())?;
            xb.write(tx, &format!("{dir}/event-channel"), format!("{}", port.0).as_bytes())?;
            xb.write(tx, &format!("{dir}/protocol"), XEN_IO_PROTO_ABI_X86_64.as_bytes())
        });
        if let Err(e) = r {
            let _ = events::close(port);
            let _ = gnttab::end_access(gref);
            let _ = mm::free_page(p.pfn);
            return Err(setup(e));
        }
        Ok((page, gref, port))
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
        !self.broken && !self.front.is_full() && self.shadow.in_flight() < MAX_IN_FLIGHT
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
        if self.front.push_request(&self.ring, &req).is_err() {
            self.shadow.remove(id);
            self.release(&f);
            return Err(BlkError::Busy);
        }
        self.stats.requests += 1;
        Ok(())
    }

    /// The grant for frame `mfn`: its persistent one (made now if there is room), or one for
    /// this request only (`true`), read-only when the backend only reads the frame.
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
        gnttab::grant_access(self.backend_id, mfn, backend_reads).map(|g| (g, true))
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
        if self.front.push_requests_and_check_notify(&self.ring) {
            self.stats.notifies += 1;
            let _ = events::send(self.port);
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
            match self.front.take_response(&self.ring) {
                Ok(Some(r)) => match self.shadow.complete(&r) {
                    Ok(f) => {
                        self.release(&f);
                        n += 1;
                        done(f.tag, r.status);
                    }
                    Err(_) => self.stats.bogus += 1,
                },
                Ok(None) => break,
                Err(RingError::Overflow) | Err(_) => {
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
        match self.front.final_check_for_responses(&self.ring) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(_) => {
                self.broken = true;
                return Err(BlkError::Protocol);
            }
        }
        let ring = &self.ring;
        let front = &self.front;
        let more = || {
            RSP_KICK.swap(false, Ordering::SeqCst) || front.unconsumed_responses(ring).map_or(true, |n| n > 0)
        };
        let t0 = time::now_ns();
        let r = events::block_until(more, deadline);
        self.stats.wait_ns += time::now_ns().saturating_sub(t0);
        match r {
            Ok(true) => Ok(()),
            Ok(false) => Err(BlkError::Timeout),
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
        let token = "blkfront-close";
        let _ = xb.watch(&self.dev.other_state_path(), token);
        let _ = self.dev.switch(xb, XenbusState::Closing);
        let mut ok = true;
        loop {
            self.dev.refresh_other(xb);
            if matches!(
                self.dev.other_state(),
                XenbusState::Closing | XenbusState::Closed | XenbusState::Unknown
            ) {
                break;
            }
            if !wait_event(xb, deadline)? && time::now_ns() >= deadline {
                ok = false;
                break;
            }
        }
        let _ = self.dev.switch(xb, XenbusState::Closed);
        let _ = xb.unwatch(&self.dev.other_state_path(), token);
        let _ = events::close(self.port);
        for f in self.shadow.drain() {
            self.release(&f);
        }
        // The backend unmaps persistent grants when it closes.
        for g in self.cache.drain() {
            if gnttab::end_access(g).is_err() {
                ok = false;
            }
        }
        // The backend has unmapped the ring once it is Closing; only then is the page ours.
        if gnttab::end_access(self.ring_gref).is_ok() {
            let _ = mm::free_page(self.ring_pfn);
        } else {
            ok = false;
        }
        if ok {
            Ok(())
        } else {
            Err(BlkError::Timeout)
        }
    }

    /// Event-channel notifications received so far.
    pub fn events() -> u64 {
        EVENTS.load(Ordering::Relaxed)
    }

    /// Raw access for tests that play a misbehaving frontend: the ring page, the front-ring
    /// indexes and the port. Requests pushed this way bypass every check.
    pub fn raw(&mut self) -> Raw<'_> {
        Raw { ring: &self.ring, front: &mut self.front, port: self.port, backend: self.backend_id }
    }
}

/// See [`Blkfront::raw`].
pub struct Raw<'a> {
    pub ring: &'a PageRing,
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
            RSP_KICK.swap(false, Ordering::SeqCst)
                || ring.load_u32_acquire(hypercall_abi::io::ring::RSP_PROD_OFFSET) != cons
        };
        matches!(events::block_until(more, Some(deadline)), Ok(true))
    }
}

/// A page from the allocator, as the ring uses it.
#[derive(Clone, Copy)]
struct Page {
    pfn: Pfn,
    va: u64,
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
