//! dom0's virtio-blk driver: virtio-drivers' `PciTransport` for discovery, feature
//! negotiation and notification, and dom0's own split queue ([`dom0::virtq`]) whose
//! descriptors are machine addresses — so a request can gather dom0 DMA buffers and frames a
//! domU granted alike, with no copy and no mapping of the latter.
//!
//! Requests are asynchronous: [`VirtioBlk::submit`] queues one (with a caller cookie),
//! [`VirtioBlk::kick`] tells the device, [`VirtioBlk::poll`] hands back completions and
//! [`VirtioBlk::wait`] blocks on the device's interrupt (a pirq event channel) until there is
//! something to poll. Without an interrupt the driver falls back to polling with yields.
//!
//! Each request carries a 16-byte header and a 1-byte status in a slot of a DMA page; the
//! status is preset to a value the device never writes, so a device that completes a chain
//! without writing its status is reported as an I/O error rather than success.

use super::dma::{self, DmaRegion};
use super::hal::XenHal;
use super::irq::Irq;
use super::portio::PortCam;
use alloc::vec::Vec;
use core::sync::atomic::{fence, Ordering};
use dom0::pci::{self, Bar, Function};
use dom0::virtq::{area_bytes, Area, QueueError, QueueMemory, Seg, Virtq};
use pv_guest_kernel::println;
use virtio_drivers::transport::pci::bus::{DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::{DeviceStatus, Transport};

/// virtio's PCI vendor.
pub const VIRTIO_VENDOR: u16 = 0x1af4;
/// Modern (virtio 1.0) block device id, and the transitional one.
pub const DEVICE_ID_BLK: [u16; 2] = [0x1042, 0x1001];

/// Feature bits we may accept.
pub mod feature {
    pub const SIZE_MAX: u64 = 1 << 1;
    pub const SEG_MAX: u64 = 1 << 2;
    pub const RO: u64 = 1 << 5;
    pub const BLK_SIZE: u64 = 1 << 6;
    pub const FLUSH: u64 = 1 << 9;
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    pub const VERSION_1: u64 = 1 << 32;
}

/// `VIRTIO_BLK_T_*`.
pub mod req_type {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
}

/// `VIRTIO_BLK_S_*`; [`STATUS_UNSET`] is ours.
pub mod status {
    pub const OK: u8 = 0;
    #[allow(dead_code)] // the spec's value, named (the synchronous requests of the aids report it)
    pub const IOERR: u8 = 1;
    #[allow(dead_code)] // as above
    pub const UNSUPP: u8 = 2;
    /// Preset in every slot; a completion still carrying it was not answered by the device.
    pub const STATUS_UNSET: u8 = 0xff;
}

/// Queue size we ask for (the device may offer less).
const QUEUE_SIZE: u16 = 256;
/// Requests in flight at most (slots of header+status).
pub const MAX_REQUESTS: usize = 64;
const SLOT_BYTES: usize = 32;

/// A block request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
}

/// Why a request was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// No slot or descriptors free now: poll completions and retry.
    Busy,
    /// Bad request (e.g. too many segments for the device, or a write to a read-only disk).
    Invalid,
}

/// The queue's DMA pages as [`QueueMemory`].
struct QueuePages {
    desc: u64,
    avail: u64,
    used: u64,
    bytes: [usize; 3],
}

impl QueuePages {
    fn at(&self, area: Area, off: usize, width: usize) -> u64 {
        let (base, len) = match area {
            Area::Desc => (self.desc, self.bytes[0]),
            Area::Avail => (self.avail, self.bytes[1]),
            Area::Used => (self.used, self.bytes[2]),
        };
        // The queue logic only uses offsets inside its areas; an out-of-range one is a bug
        // that must not turn into a stray write.
        assert!(off + width <= len && off.is_multiple_of(width), "virtqueue access out of bounds");
        base + off as u64
    }
}

// Volatile accesses to the DMA pages the device shares with us; `at` bounds every offset.
impl QueueMemory for QueuePages {
    fn load16(&self, a: Area, off: usize) -> u16 {
        // SAFETY: `at` checked the offset is inside the area, mapped for the queue's lifetime.
        unsafe { (self.at(a, off, 2) as *const u16).read_volatile() }
    }
    fn load32(&self, a: Area, off: usize) -> u32 {
        // SAFETY: as above.
        unsafe { (self.at(a, off, 4) as *const u32).read_volatile() }
    }
    fn store16(&self, a: Area, off: usize, v: u16) {
        // SAFETY: as above; the queue memory is ours to write.
        unsafe { (self.at(a, off, 2) as *mut u16).write_volatile(v) }
    }
    fn store32(&self, a: Area, off: usize, v: u32) {
        // SAFETY: as above.
        unsafe { (self.at(a, off, 4) as *mut u32).write_volatile(v) }
    }
    fn store64(&self, a: Area, off: usize, v: u64) {
        // SAFETY: as above.
        unsafe { (self.at(a, off, 8) as *mut u64).write_volatile(v) }
    }
    fn fence(&self) {
        fence(Ordering::SeqCst);
    }
}

/// Figures of a device since it was set up.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub requests: u64,
    pub notifies: u64,
    pub interrupts: u64,
    /// Synchronous waits (dom0's own disk check and benchmark).
    #[cfg(feature = "test-aids")]
    pub waits: u64,
}

/// One virtio-blk device.
pub struct VirtioBlk {
    pub bdf: pci::Bdf,
    transport: PciTransport,
    q: Virtq,
    qmem: QueuePages,
    _qregion: DmaRegion,
    slots: DmaRegion,
    free_slots: Vec<u16>,
    slot_cookie: [u64; MAX_REQUESTS],
    head_slot: Vec<u16>,
    /// Disk size in 512-byte sectors.
    pub capacity: u64,
    pub readonly: bool,
    /// The device has a volatile cache to flush (`VIRTIO_BLK_F_FLUSH`).
    pub flush: bool,
    /// Most data segments per request.
    pub seg_max: u32,
    /// Largest data segment, bytes (0 = no limit).
    pub size_max: u32,
    irq: Option<Irq>,
    broken: bool,
    /// The chain being built (kept to avoid an allocation per request).
    scratch: Vec<Seg>,
    pub counters: Counters,
}

impl core::fmt::Debug for VirtioBlk {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VirtioBlk").field("bdf", &self.bdf).field("capacity", &self.capacity).finish()
    }
}

/// The virtio-blk functions on the PCI bus.
pub fn find() -> Vec<Function> {
    pci::enumerate(&PortCam)
        .into_iter()
        .filter(|f| f.vendor == VIRTIO_VENDOR && DEVICE_ID_BLK.contains(&f.device))
        .collect()
}

/// The virtio PCI transport of function `f`: its memory BARs mapped into dom0 (uncached,
/// through `DOMID_IO`), memory decoding and bus mastering on, INTx enabled.
pub fn pci_transport(f: &Function) -> Result<PciTransport, &'static str> {
    let mut cam = PortCam;
    for (_, bar) in pci::bars(&mut cam, f.bdf) {
        if let Bar::Memory { addr, size, .. } = bar {
            if addr == 0 || size > 1 << 28 {
                continue;
            }
            dma::map_mmio(addr, size).map_err(|_| "cannot map a BAR")?;
        }
    }
    let cmd = pci::reg::COMMAND_STATUS;
    let v = pci::ConfigSpace::read32(&cam, f.bdf, cmd) & 0xffff;
    let v = (v | u32::from(pci::command::MEMORY_SPACE | pci::command::BUS_MASTER))
        & !u32::from(pci::command::INTX_DISABLE);
    pci::ConfigSpace::write32(&mut cam, f.bdf, cmd, v);
    let df = DeviceFunction { bus: f.bdf.bus, device: f.bdf.dev, function: f.bdf.func };
    let mut root = PciRoot::new(PortCam);
    PciTransport::new::<XenHal, PortCam>(&mut root, df).map_err(|_| "not a modern virtio device")
}

impl VirtioBlk {
    /// Sets the device up: maps its BARs, negotiates features, creates the queue, binds its
    /// interrupt (falling back to polling if that fails) and marks the driver ready.
    pub fn init(f: &Function) -> Result<VirtioBlk, &'static str> {
        let mut t = pci_transport(f)?;

        // Feature negotiation (virtio 1.x §3.1.1).
        t.set_status(DeviceStatus::empty());
        t.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        let offered = t.read_device_features();
        let want = feature::VERSION_1
            | feature::FLUSH
            | feature::RO
            | feature::SEG_MAX
            | feature::SIZE_MAX
            | feature::BLK_SIZE
            | feature::RING_EVENT_IDX;
        let neg = offered & want;
        if neg & feature::VERSION_1 == 0 {
            t.set_status(DeviceStatus::FAILED);
            return Err("device does not offer VIRTIO_F_VERSION_1");
        }
        t.write_driver_features(neg);
        t.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK);
        if !t.get_status().contains(DeviceStatus::FEATURES_OK) {
            t.set_status(DeviceStatus::FAILED);
            return Err("device refused our features");
        }
        let capacity = t
            .read_consistent(|| {
                let lo: u32 = t.read_config_space(0)?;
                let hi: u32 = t.read_config_space(4)?;
                Ok(u64::from(lo) | u64::from(hi) << 32)
            })
            .map_err(|_| "cannot read the capacity")?;
        let size_max =
            if neg & feature::SIZE_MAX != 0 { t.read_config_space::<u32>(8).unwrap_or(0) } else { 0 };
        let seg_max =
            if neg & feature::SEG_MAX != 0 { t.read_config_space::<u32>(12).unwrap_or(1) } else { 1 };

        // The queue: three areas in one region (descriptors page-aligned first).
        let max = t.max_queue_size(0);
        let size = (QUEUE_SIZE as u32).min(max);
        if size < 4 || !size.is_power_of_two() {
            t.set_status(DeviceStatus::FAILED);
            return Err("unusable queue size");
        }
        let size = size as u16;
        let bytes =
            [area_bytes(Area::Desc, size), area_bytes(Area::Avail, size), area_bytes(Area::Used, size)];
        let avail_off = bytes[0].next_multiple_of(4096);
        let used_off = (avail_off + bytes[1]).next_multiple_of(4096);
        let qregion =
            dma::alloc((used_off + bytes[2]).div_ceil(4096)).map_err(|_| "no DMA memory for the queue")?;
        let qmem = QueuePages {
            desc: qregion.va,
            avail: qregion.va + avail_off as u64,
            used: qregion.va + used_off as u64,
            bytes,
        };
        let event_idx = neg & feature::RING_EVENT_IDX != 0;
        let q = Virtq::new(&qmem, size, event_idx).ok_or("bad queue size")?;
        t.queue_set(
            0,
            u32::from(size),
            qregion.ma,
            qregion.ma + avail_off as u64,
            qregion.ma + used_off as u64,
        );
        let slots = dma::alloc((MAX_REQUESTS * SLOT_BYTES).div_ceil(4096)).map_err(|_| "no DMA memory")?;
        t.finish_init();

        let irq = match f.gsi() {
            Some(gsi) => match Irq::bind(gsi) {
                Ok(i) => Some(i),
                Err(e) => {
                    println!("dom0: blk {}: cannot bind GSI {gsi} ({e}), polling instead", f.bdf);
                    None
                }
            },
            None => None,
        };
        Ok(VirtioBlk {
            bdf: f.bdf,
            transport: t,
            q,
            qmem,
            _qregion: qregion,
            slots,
            free_slots: (0..MAX_REQUESTS as u16).rev().collect(),
            slot_cookie: [0; MAX_REQUESTS],
            head_slot: alloc::vec![u16::MAX; size as usize],
            capacity,
            readonly: neg & feature::RO != 0,
            flush: neg & feature::FLUSH != 0,
            seg_max: seg_max.max(1),
            size_max,
            irq,
            broken: false,
            scratch: Vec::with_capacity(seg_max.clamp(1, 254) as usize + 2),
            counters: Counters::default(),
        })
    }

    /// The interrupt, if bound.
    pub fn irq(&self) -> Option<&Irq> {
        self.irq.as_ref()
    }

    /// Data pieces one request can carry: the device's `seg_max`, and what fits the queue
    /// next to the header and status descriptors.
    pub fn max_pieces(&self) -> usize {
        (self.seg_max as usize).min(usize::from(self.q.size()).saturating_sub(2))
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        MAX_REQUESTS - self.free_slots.len()
    }

    /// True if the device misbehaved; it gets no more requests.
    #[cfg(feature = "test-aids")]
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Queues a request for `sector` (512-byte units) over the data pieces `data` (machine
    /// address, length), returning `cookie` with its completion. Not visible to the device
    /// until [`kick`](Self::kick).
    pub fn submit(
        &mut self,
        op: Op,
        sector: u64,
        data: &[(u64, u32)],
        cookie: u64,
    ) -> Result<(), SubmitError> {
        if self.broken {
            return Err(SubmitError::Invalid);
        }
        if (op == Op::Flush) != data.is_empty()
            || data.len() > self.seg_max as usize
            || (op == Op::Write && self.readonly)
            || (op == Op::Flush && !self.flush)
            || data.iter().any(|&(_, len)| len == 0 || (self.size_max != 0 && len > self.size_max))
        {
            return Err(SubmitError::Invalid);
        }
        let nsegs = data.len() + 2;
        if self.free_slots.is_empty() || usize::from(self.q.num_free()) < nsegs {
            return Err(SubmitError::Busy);
        }
        let slot = self.free_slots.pop().ok_or(SubmitError::Busy)?;
        let hdr_va = self.slots.va + (slot as usize * SLOT_BYTES) as u64;
        let hdr_ma = self.slots.ma + (slot as usize * SLOT_BYTES) as u64;
        let t = match op {
            Op::Read => req_type::IN,
            Op::Write => req_type::OUT,
            Op::Flush => req_type::FLUSH,
        };
        // SAFETY: slot `slot` of the header page is ours (taken from the free list) and the
        // device does not look at it until the chain is published.
        unsafe {
            (hdr_va as *mut u32).write_volatile(t);
            ((hdr_va + 4) as *mut u32).write_volatile(0);
            ((hdr_va + 8) as *mut u64).write_volatile(if op == Op::Flush { 0 } else { sector });
            ((hdr_va + 16) as *mut u8).write_volatile(status::STATUS_UNSET);
        }
        let segs = &mut self.scratch;
        segs.clear();
        segs.push(Seg { addr: hdr_ma, len: 16, device_writes: false });
        segs.extend(data.iter().map(|&(addr, len)| Seg { addr, len, device_writes: op == Op::Read }));
        segs.push(Seg { addr: hdr_ma + 16, len: 1, device_writes: true });
        match self.q.add(&self.qmem, segs) {
            Ok(head) => {
                self.head_slot[head as usize] = slot;
                self.slot_cookie[slot as usize] = cookie;
                self.counters.requests += 1;
                Ok(())
            }
            Err(e) => {
                self.free_slots.push(slot);
                Err(if e == QueueError::Full { SubmitError::Busy } else { SubmitError::Invalid })
            }
        }
    }

    /// Publishes queued requests and notifies the device if it wants to be.
    pub fn kick(&mut self) {
        if self.q.publish(&self.qmem) {
            self.counters.notifies += 1;
            self.transport.notify(0);
        }
    }

    /// Hands each finished request to `done(cookie, status)`; returns how many.
    pub fn poll(&mut self, done: impl FnMut(u64, u8)) -> usize {
        self.poll_some(usize::MAX, done)
    }

    /// Like [`poll`](Self::poll), handing back at most `max` completions.
    pub fn poll_some(&mut self, max: usize, mut done: impl FnMut(u64, u8)) -> usize {
        self.ack();
        let mut n = 0;
        while n < max {
            match self.q.pop_used(&self.qmem) {
                Ok(Some((head, _len))) => {
                    let slot = core::mem::replace(&mut self.head_slot[head as usize], u16::MAX);
                    if slot as usize >= MAX_REQUESTS {
                        self.fail("a completion without a request");
                        break;
                    }
                    let st_va = self.slots.va + (slot as usize * SLOT_BYTES + 16) as u64;
                    // SAFETY: the status byte of a slot we own; the device is done with it.
                    let st = unsafe { (st_va as *const u8).read_volatile() };
                    self.free_slots.push(slot);
                    n += 1;
                    done(self.slot_cookie[slot as usize], st);
                }
                Ok(None) => break,
                Err(_) => {
                    self.fail("used ring corrupt");
                    break;
                }
            }
        }
        n
    }

    fn fail(&mut self, why: &str) {
        if !self.broken {
            println!("dom0: blk {}: device misbehaved ({why}); no more requests", self.bdf);
            self.broken = true;
            self.transport.set_status(DeviceStatus::FAILED);
        }
    }

    /// Acknowledges a pending interrupt: reads the ISR (which lowers the line) and lets the
    /// hypervisor unmask it.
    fn ack(&mut self) {
        if let Some(irq) = &self.irq {
            if irq.take() {
                self.counters.interrupts += 1;
                let _ = self.transport.ack_interrupt();
                irq.eoi();
            }
        }
    }

    /// True if completions are waiting to be polled (or the interrupt fired).
    pub fn ready(&self) -> bool {
        self.q.has_used(&self.qmem) || self.irq.as_ref().is_some_and(|i| i.pending())
    }

    /// Arms the interrupt for the next completion; false if one already arrived (poll
    /// instead of waiting).
    pub fn arm(&mut self) -> bool {
        !self.q.enable_interrupts(&self.qmem)
    }
}

/// Synchronous requests, for dom0's own disk check and benchmark.
#[cfg(feature = "test-aids")]
mod sync {
    use super::{status, Op, VirtioBlk};
    use hypercall_abi::Errno;
    use pv_guest_kernel::{events, hypercall, time};

    impl VirtioBlk {
        /// Waits until a completion can be polled, `extra()` holds, or `deadline` (system time,
        /// ns) passes. Blocks on the interrupt when there is one, else yields.
        pub fn wait(&mut self, deadline: Option<u64>, mut extra: impl FnMut() -> bool) -> Result<(), Errno> {
            self.counters.waits += 1;
            if self.in_flight() == 0 && !extra() {
                return Ok(());
            }
            if !self.arm() {
                return Ok(());
            }
            match &self.irq {
                Some(irq) if events::available() => {
                    let q = &self.q;
                    let qmem = &self.qmem;
                    events::block_until(|| irq.pending() || q.has_used(qmem) || extra(), deadline).map(|_| ())
                }
                _ => {
                    while !self.ready() && !extra() {
                        if deadline.is_some_and(|d| time::now_ns() >= d) {
                            break;
                        }
                        hypercall::yield_cpu();
                    }
                    Ok(())
                }
            }
        }

        /// Runs one request to completion (for set-up and tests, not the fast path).
        pub fn request_sync(&mut self, op: Op, sector: u64, data: &[(u64, u32)]) -> Result<(), u8> {
            const COOKIE: u64 = u64::MAX - 1;
            while self.submit(op, sector, data, COOKIE).is_err() {
                if self.broken || self.in_flight() == 0 {
                    return Err(status::IOERR);
                }
                let _ = self.wait(None, || false);
                self.poll(|_, _| {});
            }
            self.kick();
            let mut result = None;
            while result.is_none() {
                self.poll(|c, st| {
                    if c == COOKIE {
                        result = Some(st);
                    }
                });
                if result.is_none() {
                    if self.broken {
                        return Err(status::IOERR);
                    }
                    let _ = self.wait(Some(time::now_ns() + 5_000_000_000), || false);
                }
            }
            match result {
                Some(status::OK) => Ok(()),
                Some(s) => Err(s),
                None => Err(status::IOERR),
            }
        }
    }
}
