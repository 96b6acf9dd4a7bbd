//! The framework on the real hypervisor: [`KernelOps`] implements its traits with event
//! channels, the guest grant table, the page allocator and grant mappings, and the blocking
//! loops that wait for the other end live here ([`open_frontend`], [`close_frontend`],
//! [`wait_responses`]).
//!
//! Every port the framework binds gets [`on_event`] as its handler, which only raises the
//! port in [`PENDING`]; whoever serves the device takes the bit ([`PortSet::take`]) or drains
//! the whole set (dom0's control loop), so a wake-up costs only the devices that fired.

use super::{BackendOps, EventOps, FrontendOps};
use super::{FrontDevice, FrontStatus, FrontendDriver, PortSet, SplitError};
use crate::xenbus::{Transport, TxId, Xenbus};
use crate::{events, gnttab, hypercall, mm, time};
use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicU32, Ordering};
use hypercall_abi::grant_table::{gntmap, gntst, GnttabMapGrantRef, GnttabUnmapGrantRef};
use hypercall_abi::io::ring::{RingEntry, RingMemory};
use hypercall_abi::{DomId, Errno, GrantRef, Mfn, Pfn, Port, PAGE_SIZE};
use spin::Mutex;

/// Ports of split devices that fired and were not taken yet.
pub static PENDING: PortSet = PortSet::new();

/// The handler of every port the framework binds.
pub fn on_event(port: Port) {
    PENDING.raise(port);
}

/// A ring page reached at a virtual address: one of our own pages (a frontend's ring) or a
/// grant mapping of the peer's (a backend's view). Every access is one volatile or atomic
/// access of the shared memory, so each byte the peer may change is read exactly once;
/// aligned runs are copied a word at a time.
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

/// A frontend's ring page: one of ours from the allocator.
pub struct OwnPage {
    pub ring: PageRing,
    pub pfn: Pfn,
}

/// A backend's view of a frontend's ring: a grant mapping in the ring window.
pub struct GrantMapping {
    pub ring: PageRing,
    pub handle: u32,
    slot: usize,
}

macro_rules! delegate_ring_memory {
    ($ty:ty) => {
        impl RingMemory for $ty {
            fn load_u32_acquire(&self, off: usize) -> u32 {
                self.ring.load_u32_acquire(off)
            }
            fn store_u32_release(&self, off: usize, v: u32) {
                self.ring.store_u32_release(off, v)
            }
            fn fence(&self) {
                self.ring.fence()
            }
            fn read_bytes(&self, off: usize, buf: &mut [u8]) {
                self.ring.read_bytes(off, buf)
            }
            fn write_bytes(&self, off: usize, data: &[u8]) {
                self.ring.write_bytes(off, data)
            }
        }
    };
}
delegate_ring_memory!(OwnPage);
delegate_ring_memory!(GrantMapping);

/// Where backends map frontends' ring pages, one page per slot.
pub const RING_WINDOW: u64 = crate::va::SPLIT_RINGS;
/// Rings mapped at once at most (one L1 table's worth of the window).
pub const RING_SLOTS: usize = 512;

static SLOTS: Mutex<[bool; RING_SLOTS]> = Mutex::new([false; RING_SLOTS]);

/// The framework's operations on the real hypervisor (see the traits for what each does).
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelOps;

impl EventOps for KernelOps {
    fn alloc_unbound(&mut self, remote: DomId) -> Result<Port, Errno> {
        let port = events::alloc_unbound(remote)?;
        if let Err(e) = events::attach(port, on_event) {
            let _ = events::close(port);
            return Err(e);
        }
        Ok(port)
    }
    fn bind_interdomain(&mut self, remote: DomId, remote_port: Port) -> Result<Port, Errno> {
        let port = events::bind_interdomain(remote, remote_port)?;
        if let Err(e) = events::attach(port, on_event) {
            let _ = events::close(port);
            return Err(e);
        }
        // The peer may have queued requests before we bound: look at the ring once.
        PENDING.raise(port);
        Ok(port)
    }
    fn notify(&mut self, port: Port) {
        let _ = events::send(port);
    }
    fn close(&mut self, port: Port) {
        let _ = events::close(port);
        PENDING.take(port);
    }
}

impl FrontendOps for KernelOps {
    type Page = OwnPage;
    fn alloc_page(&mut self) -> Result<(OwnPage, Mfn), Errno> {
        let p = mm::alloc_page()?;
        // SAFETY: a page of ours in the direct map, which is never unmapped; it is only used
        // as this ring until `free_page`.
        let ring = unsafe { PageRing::new(p.va) };
        Ok((OwnPage { ring, pfn: p.pfn }, p.mfn))
    }
    fn free_page(&mut self, page: OwnPage) {
        let _ = mm::free_page(page.pfn);
    }
    fn grant(&mut self, to: DomId, mfn: Mfn, readonly: bool) -> Result<GrantRef, Errno> {
        gnttab::init(gnttab::DEFAULT_FRAMES)?;
        gnttab::grant_access(to, mfn, readonly)
    }
    fn end_grant(&mut self, gref: GrantRef) -> Result<(), Errno> {
        gnttab::end_access(gref)
    }
}

impl BackendOps for KernelOps {
    type Mapping = GrantMapping;
    fn map_ring(&mut self, frontend: DomId, gref: GrantRef) -> Result<GrantMapping, Errno> {
        let slot = {
            let mut s = SLOTS.lock();
            let i = s.iter().position(|u| !u).ok_or(Errno::ENOSPC)?;
            s[i] = true;
            i
        };
        let va = RING_WINDOW + slot as u64 * PAGE_SIZE as u64;
        let release = |e| {
            SLOTS.lock()[slot] = false;
            Err(e)
        };
        if let Err(e) = mm::entry_maddr(va, 1) {
            return release(e);
        }
        let mut op = GnttabMapGrantRef {
            host_addr: va,
            flags: gntmap::HOST_MAP,
            ref_: gref,
            dom: frontend,
            ..Default::default()
        };
        if let Err(e) = hypercall::grant_table_op(core::slice::from_mut(&mut op)) {
            return release(e);
        }
        if op.status != gntst::OKAY {
            return release(Errno::EACCES);
        }
        // SAFETY: `va` maps the granted page until `unmap_ring` consumes this value.
        Ok(GrantMapping { ring: unsafe { PageRing::new(va) }, handle: op.handle, slot })
    }
    fn unmap_ring(&mut self, m: GrantMapping) -> Result<(), Errno> {
        let mut op = GnttabUnmapGrantRef {
            host_addr: m.ring.va(),
            dev_bus_addr: 0,
            handle: m.handle,
            ..Default::default()
        };
        let r = hypercall::grant_table_op(core::slice::from_mut(&mut op));
        let r = match r {
            Ok(()) if op.status != gntst::OKAY => Err(Errno::EINVAL),
            r => r,
        };
        // A failed unmap leaves the slot in use: nothing else may be mapped over it.
        if r.is_ok() {
            SLOTS.lock()[m.slot] = false;
        }
        r
    }
}

/// Waits for a watch event (or `deadline`); false on timeout.
fn wait_watch<T: Transport>(xb: &mut Xenbus<T>, deadline: u64) -> Result<bool, SplitError> {
    loop {
        if xb.next_watch_event()?.is_some() {
            return Ok(true);
        }
        if time::now_ns() >= deadline {
            return Ok(false);
        }
        match xb.transport_mut().wait() {
            Ok(()) | Err(Errno::ETIMEDOUT) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// This domain's first device of class `kind` (`device/<kind>/<id>`), waiting up to
/// `timeout_ns` for the toolstack to create one (0 looks once). Returns its directory.
pub fn find_device<T: Transport>(
    xb: &mut Xenbus<T>,
    kind: &str,
    timeout_ns: u64,
) -> Result<String, SplitError> {
    let deadline = time::now_ns().saturating_add(timeout_ns);
    let me = xb.read_string(TxId::NONE, "domid").map_err(|_| SplitError::NoDevice)?;
    let me: u16 = me.trim().parse().map_err(|_| SplitError::NoDevice)?;
    let class = format!("/local/domain/{me}/device/{kind}");
    let first = |xb: &mut Xenbus<T>| xb.directory(TxId::NONE, &class).ok().and_then(|l| l.into_iter().next());
    // Usually the toolstack has written it already: no watch needed.
    if let Some(d) = first(xb) {
        return Ok(format!("{class}/{d}"));
    }
    let token = format!("find:{kind}");
    xb.watch(&class, &token)?;
    let found = loop {
        if let Some(d) = first(xb) {
            break Ok(format!("{class}/{d}"));
        }
        match wait_watch(xb, deadline) {
            Ok(true) => {}
            Ok(false) => break Err(SplitError::NoDevice),
            Err(e) => break Err(e),
        }
    };
    let _ = xb.unwatch(&class, &token);
    found
}

/// Opens the frontend in `dir` and walks the handshake until both ends are Connected
/// (giving the backend until `deadline`, system time). On failure everything is released.
pub fn connect_frontend<T: Transport, D: FrontendDriver>(
    xb: &mut Xenbus<T>,
    dir: &str,
    driver: D,
    deadline: u64,
) -> Result<FrontDevice<OwnPage, D>, SplitError> {
    let mut ops = KernelOps;
    let mut dev = FrontDevice::open(xb, dir, driver)?;
    loop {
        match dev.step(xb, &mut ops) {
            Ok(FrontStatus::Connected) => return Ok(dev),
            Ok(FrontStatus::Closed) => return Err(SplitError::PeerClosed),
            Ok(_) => {}
            Err(e) => {
                // Let the backend follow our Closing for a moment, then give everything up.
                let _ = close_frontend(xb, &mut dev, 1_000_000_000);
                return Err(e);
            }
        }
        if !wait_watch(xb, deadline)? && time::now_ns() >= deadline {
            dev.abandon(xb, &mut ops);
            return Err(SplitError::Os(Errno::ETIMEDOUT));
        }
    }
}

/// [`find_device`] then [`connect_frontend`], the backend getting at least `handshake_ns`
/// once the device exists.
pub fn open_frontend<T: Transport, D: FrontendDriver>(
    xb: &mut Xenbus<T>,
    kind: &str,
    driver: D,
    find_ns: u64,
    handshake_ns: u64,
) -> Result<FrontDevice<OwnPage, D>, SplitError> {
    let dir = find_device(xb, kind, find_ns)?;
    connect_frontend(xb, &dir, driver, time::now_ns().saturating_add(handshake_ns))
}

/// Closes the device and waits (up to `timeout_ns`) for the backend to follow, then
/// releases everything. `EBUSY` if the backend still mapped the ring (its page is kept).
pub fn close_frontend<T: Transport, D: FrontendDriver>(
    xb: &mut Xenbus<T>,
    dev: &mut FrontDevice<OwnPage, D>,
    timeout_ns: u64,
) -> Result<(), SplitError> {
    let mut ops = KernelOps;
    let deadline = time::now_ns().saturating_add(timeout_ns);
    dev.close(xb);
    loop {
        if let Ok(FrontStatus::Closed) = dev.step(xb, &mut ops) {
            break;
        }
        // A backend that is gone (its state node removed) never follows.
        if dev.dev.other_state() == hypercall_abi::io::xenbus::XenbusState::Unknown {
            dev.abandon(xb, &mut ops);
            break;
        }
        if !wait_watch(xb, deadline)? && time::now_ns() >= deadline {
            dev.abandon(xb, &mut ops);
            break;
        }
    }
    match dev.leaked {
        Some(_) => Err(SplitError::Os(Errno::EBUSY)),
        None => Ok(()),
    }
}

/// Blocks until responses can be taken from `chan` or `deadline` (system time) passes:
/// arms the backend's notification (`RING_FINAL_CHECK_FOR_RESPONSES`) first, so none is
/// missed. Returns whether there may be responses; `EIO` if the backend broke the ring.
pub fn wait_responses<M: RingMemory, Req: RingEntry, Rsp: RingEntry>(
    chan: &mut super::FrontChannel<M, Req, Rsp>,
    deadline: Option<u64>,
) -> Result<bool, Errno> {
    match chan.final_check() {
        Ok(true) => return Ok(true),
        Ok(false) => {}
        Err(_) => return Err(Errno::EIO),
    }
    let port = chan.port();
    let ring = &chan.ring;
    let mem = &chan.mem;
    events::block_until(
        || PENDING.take(port) || ring.unconsumed_responses(mem).map_or(true, |n| n > 0),
        deadline,
    )
}
