//! blkback in dom0: serves each configured domU a virtio-blk disk as a Xen vbd.
//!
//! The toolstack part writes the vbd's frontend and backend directories when the domU is
//! introduced (dom0's `vbd=<name|id>[,...]` option names the domains; the n-th gets the n-th
//! disk). The backend then follows the XenBus handshake through its own connection to
//! dom0's xenstored: features at InitWait; when the frontend has published `ring-ref` and
//! `event-channel`, the ring page is grant-mapped into dom0 (host mapping), the event channel
//! bound, the disk's size published, and the backend goes Connected.
//!
//! Data never passes through dom0's memory: each segment's grant is mapped for device access
//! only (`GNTMAP_device_map`: the hypervisor returns the frame's machine address and writes
//! no page table) and the virtio request points at the domU's frame. The maps of one request
//! are one `grant_table_op`; the unmaps of a service round are one more.
//!
//! A frontend that closes, breaks the ring protocol, or whose domain goes away
//! (`@releaseDomain`) is disconnected: no new requests are taken, those with the disk complete
//! (their grants stay mapped until then, so the disk never writes into a frame that was
//! handed to someone else), then the ring is unmapped and the port closed.

use super::virtio_blk::{status, Op, SubmitError, VirtioBlk};
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use dom0::blkback::handshake::{self, FrontendRing, XVDA};
use dom0::blkback::{Blkback, DataPath, Disk, DiskError, DiskInfo, DiskOp, SegReq};
use dom0::local_xs::{self, LocalTransport};
use dom0::xenstore::toolstack::{backend_path, frontend_path, DeviceConfig};
use dom0::xenstore::Xenstore;
use hypercall_abi::domctl::{cmd as domctl_cmd, dominf, XenDomctl, XenDomctlGetdomaininfo};
use hypercall_abi::grant_table::{gntmap, gntst, op as gntop, GnttabMapGrantRef, GnttabUnmapGrantRef};
use hypercall_abi::hypercall::nr;
use hypercall_abi::io::blkif::BLKIF_MAX_SEGMENTS_PER_REQUEST;
use hypercall_abi::io::ring::RingMemory;
use hypercall_abi::io::xenbus::XenbusState;
use hypercall_abi::{DomId, Errno, Port};
use pv_guest_kernel::mm;
use pv_guest_kernel::xenbus::{TxId, Xenbus};
use pv_guest_kernel::xenbus_state::{Role, Step, XenbusDevice};
use pv_guest_kernel::{cmdline, events, hypercall, println};

/// Where frontends' ring pages are mapped in dom0, one page per vbd.
pub const RING_WINDOW: u64 = 0xffff_ca00_0000_0000;
/// Vbds served at most.
pub const MAX_VBDS: usize = 64;
/// Disk cookies are `vbd << COOKIE_SHIFT | slot`.
const COOKIE_SHIFT: u32 = 8;

/// Raised by frontend ports: there is ring work.
static WAKE: AtomicBool = AtomicBool::new(false);
/// Grant operations made, for the report.
static GNT_OPS: AtomicU64 = AtomicU64::new(0);
static GNT_CALLS: AtomicU32 = AtomicU32::new(0);

fn on_frontend_event(_port: Port) {
    WAKE.store(true, Ordering::SeqCst);
}

fn grant_table_op<T>(cmd: u32, ops: &mut [T]) -> Result<(), Errno> {
    if ops.is_empty() {
        return Ok(());
    }
    GNT_CALLS.fetch_add(1, Ordering::Relaxed);
    GNT_OPS.fetch_add(ops.len() as u64, Ordering::Relaxed);
    hypercall::check(hypercall::hypercall5(
        nr::GRANT_TABLE_OP,
        u64::from(cmd),
        ops.as_mut_ptr() as u64,
        ops.len() as u64,
        0,
        0,
    ))
    .map(drop)
}

/// A frontend's ring page as dom0 maps it; every access is a single volatile/atomic one.
pub struct MappedRing {
    va: u64,
}

impl MappedRing {
    fn at(&self, off: usize, len: usize) -> u64 {
        // The ring code only uses offsets inside its one page.
        assert!(off + len <= 4096, "ring access outside the page");
        self.va + off as u64
    }
}

impl RingMemory for MappedRing {
    fn load_u32_acquire(&self, off: usize) -> u32 {
        // SAFETY: `va` maps the granted ring page for as long as this value lives (it is
        // unmapped only after the backend using it is dropped); the offset is in the page and
        // 4-byte aligned (ring.rs only passes header offsets).
        unsafe { (*(self.at(off, 4) as *const AtomicU32)).load(Ordering::Acquire) }
    }
    fn store_u32_release(&self, off: usize, v: u32) {
        // SAFETY: as above; the page is mapped writable.
        unsafe { (*(self.at(off, 4) as *const AtomicU32)).store(v, Ordering::Release) }
    }
    fn fence(&self) {
        core::sync::atomic::fence(Ordering::SeqCst);
    }
    fn read_bytes(&self, off: usize, buf: &mut [u8]) {
        let base = self.at(off, buf.len());
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: inside the mapped page (checked above); a volatile read per byte means
            // each byte of the peer's memory is read exactly once.
            *b = unsafe { ((base + i as u64) as *const u8).read_volatile() };
        }
    }
    fn write_bytes(&self, off: usize, data: &[u8]) {
        let base = self.at(off, data.len());
        for (i, &b) in data.iter().enumerate() {
            // SAFETY: as above.
            unsafe { ((base + i as u64) as *mut u8).write_volatile(b) };
        }
    }
}

/// Grants mapped for device access only: the disk gets the frames' machine addresses.
struct DeviceMaps {
    /// Per slot: (handle, machine address of the frame) of each mapped segment.
    maps: [[(u32, u64); BLKIF_MAX_SEGMENTS_PER_REQUEST]; 32],
    /// Unmaps deferred to the end of the round.
    deferred: Vec<GnttabUnmapGrantRef>,
    /// Unmaps the hypervisor refused (should stay 0).
    unmap_failures: u64,
}

impl DeviceMaps {
    fn new() -> DeviceMaps {
        DeviceMaps {
            maps: [[(0, 0); BLKIF_MAX_SEGMENTS_PER_REQUEST]; 32],
            deferred: Vec::with_capacity(352),
            unmap_failures: 0,
        }
    }
}

impl DataPath for DeviceMaps {
    fn prepare(
        &mut self,
        dom: DomId,
        slot: u16,
        disk_reads: bool,
        segs: &[SegReq],
        out: &mut [u64],
    ) -> Result<(), i16> {
        let slot_maps = self.maps.get_mut(slot as usize).ok_or(gntst::GENERAL_ERROR)?;
        let flags = gntmap::DEVICE_MAP | if disk_reads { gntmap::READONLY } else { 0 };
        let mut ops = [GnttabMapGrantRef::default(); BLKIF_MAX_SEGMENTS_PER_REQUEST];
        let n = segs.len().min(BLKIF_MAX_SEGMENTS_PER_REQUEST);
        for (o, s) in ops.iter_mut().zip(segs) {
            *o = GnttabMapGrantRef { host_addr: 0, flags, ref_: s.gref, dom, ..Default::default() };
        }
        if grant_table_op(gntop::MAP_GRANT_REF, &mut ops[..n]).is_err() {
            return Err(gntst::GENERAL_ERROR);
        }
        let mut bad = None;
        for (i, o) in ops[..n].iter().enumerate() {
            if o.status != gntst::OKAY {
                bad.get_or_insert(o.status);
            } else {
                slot_maps[i] = (o.handle, o.dev_bus_addr);
                out[i] = o.dev_bus_addr + segs[i].offset();
            }
        }
        if let Some(st) = bad {
            let mut undo: heapless::Vec<GnttabUnmapGrantRef, BLKIF_MAX_SEGMENTS_PER_REQUEST> =
                heapless::Vec::new();
            for o in ops[..n].iter().filter(|o| o.status == gntst::OKAY) {
                let _ = undo.push(GnttabUnmapGrantRef {
                    host_addr: 0,
                    dev_bus_addr: o.dev_bus_addr,
                    handle: o.handle,
                    ..Default::default()
                });
            }
            let _ = grant_table_op(gntop::UNMAP_GRANT_REF, &mut undo);
            return Err(st);
        }
        Ok(())
    }

    fn finish(
        &mut self,
        _dom: DomId,
        slot: u16,
        _disk_reads: bool,
        segs: &[SegReq],
        _ok: bool,
    ) -> Result<(), i16> {
        let Some(slot_maps) = self.maps.get(slot as usize) else { return Err(gntst::GENERAL_ERROR) };
        for &(handle, ma) in slot_maps.iter().take(segs.len()) {
            self.deferred.push(GnttabUnmapGrantRef {
                host_addr: 0,
                dev_bus_addr: ma,
                handle,
                ..Default::default()
            });
        }
        Ok(())
    }

    fn flush(&mut self) {
        if self.deferred.is_empty() {
            return;
        }
        let _ = grant_table_op(gntop::UNMAP_GRANT_REF, &mut self.deferred);
        self.unmap_failures += self.deferred.iter().filter(|u| u.status != gntst::OKAY).count() as u64;
        self.deferred.clear();
    }
}

/// The virtio-blk device as blkback's [`Disk`].
struct DiskRef<'a>(&'a mut VirtioBlk);

impl Disk for DiskRef<'_> {
    fn submit(&mut self, op: DiskOp, sector: u64, data: &[(u64, u32)], cookie: u64) -> Result<(), DiskError> {
        let op = match op {
            DiskOp::Read => Op::Read,
            DiskOp::Write => Op::Write,
            DiskOp::Flush => Op::Flush,
        };
        self.0.submit(op, sector, data, cookie).map_err(|e| match e {
            SubmitError::Busy => DiskError::Busy,
            SubmitError::Invalid => DiskError::Invalid,
        })
    }
    fn kick(&mut self) {
        self.0.kick();
    }
}

/// A connected ring.
struct Conn {
    back: Blkback<MappedRing>,
    data: DeviceMaps,
    ring_handle: u32,
    port: Port,
}

struct Vbd {
    frontend: DomId,
    name: String,
    disk: usize,
    dev: XenbusDevice,
    conn: Option<Conn>,
    /// Leaving: the frontend closed or broke the ring, or its domain went away.
    leaving: bool,
    /// The domain is gone: drop the vbd once the ring is torn down.
    gone: bool,
}

impl Vbd {
    fn label(&self) -> String {
        format!("d{}/vbd{}", self.frontend.0, XVDA)
    }
}

/// Every vbd dom0 serves.
pub struct BlkService {
    disks: Vec<VirtioBlk>,
    vbds: Vec<Option<Vbd>>,
    xs: Rc<RefCell<Xenstore>>,
    xb: Xenbus<LocalTransport>,
    /// `vbd=` entries, the n-th for disk n.
    wanted: Vec<String>,
}

fn domain_info(d: DomId) -> Option<XenDomctlGetdomaininfo> {
    let mut op = XenDomctl::new(domctl_cmd::GETDOMAININFO, d);
    hypercall::check(hypercall::domctl(&mut op)).ok()?;
    let info: XenDomctlGetdomaininfo = op.payload();
    (info.domain == d).then_some(info)
}

fn alive(d: DomId) -> bool {
    domain_info(d).is_some_and(|i| i.flags & (dominf::SHUTDOWN | dominf::DYING) == 0)
}

/// True if dom0's loop should call [`BlkService::poll`]: a frontend notified or a disk
/// interrupted.
pub fn pending() -> bool {
    WAKE.load(Ordering::SeqCst) || super::irq::any_pending()
}

impl BlkService {
    /// The service for `vbd=` on dom0's command line, or `None` if no vbd is asked for or
    /// there is no disk.
    pub fn new(cmd: &str, disks: Vec<VirtioBlk>, xs: &Rc<RefCell<Xenstore>>) -> Option<BlkService> {
        let wanted = handshake::parse_vbd_option(cmdline::get(cmd, "vbd").unwrap_or(""));
        if wanted.is_empty() {
            return None;
        }
        if disks.is_empty() {
            println!("dom0: vbd= given but there is no disk");
            return None;
        }
        let mut xb = local_xs::client(xs, DomId::DOM0);
        // Fires once now (covering domains introduced before us) and on each introduction.
        if let Err(e) = xb.watch("@introduceDomain", "blk-intro") {
            println!("dom0: blkback cannot watch @introduceDomain: {e}");
        }
        if let Err(e) = xb.watch("@releaseDomain", "blk-release") {
            println!("dom0: blkback cannot watch @releaseDomain: {e}");
        }
        let mut vbds = Vec::new();
        vbds.resize_with(wanted.len().min(MAX_VBDS), || None);
        let mut s = BlkService { disks, vbds, xs: xs.clone(), xb, wanted };
        s.poll();
        Some(s)
    }

    /// One round of work; true if anything moved.
    pub fn poll(&mut self) -> bool {
        WAKE.store(false, Ordering::SeqCst);
        let mut moved = self.watch_events();
        for _ in 0..16 {
            let mut again = self.completions();
            for n in 0..self.vbds.len() {
                again |= self.service(n);
            }
            moved |= again;
            if !again {
                break;
            }
        }
        // Interrupt on the next completion; if one slipped in meanwhile, come back.
        for d in &mut self.disks {
            if d.in_flight() > 0 && !d.arm() {
                WAKE.store(true, Ordering::SeqCst);
            }
        }
        moved
    }

    fn watch_events(&mut self) -> bool {
        let mut moved = false;
        while let Ok(Some(ev)) = self.xb.next_watch_event() {
            moved = true;
            match ev.token.as_str() {
                "blk-intro" => self.add_domains(),
                "blk-release" => self.check_domains(),
                t => {
                    if let Some(n) = t.strip_prefix("blkfe:").and_then(|n| n.parse::<usize>().ok()) {
                        self.handshake(n);
                    }
                }
            }
        }
        moved
    }

    /// Creates the vbds of `vbd=` domains that exist and have none yet.
    fn add_domains(&mut self) {
        let ids: Vec<String> = self.xb.directory(TxId::NONE, "/local/domain").unwrap_or_default();
        for n in 0..self.vbds.len() {
            if self.vbds[n].is_some() || n >= self.disks.len() {
                continue;
            }
            let want = self.wanted[n].clone();
            for id in &ids {
                let Ok(domid) = id.parse::<u16>() else { continue };
                if domid == 0 {
                    continue;
                }
                let name = self
                    .xb
                    .read_string(TxId::NONE, &format!("/local/domain/{domid}/name"))
                    .unwrap_or_default();
                if (name == want || *id == want) && alive(DomId(domid)) {
                    self.create(n, DomId(domid), name);
                    break;
                }
            }
        }
    }

    /// The toolstack's part (both directories, state Initialising) and the backend's
    /// announcement (features, InitWait).
    fn create(&mut self, n: usize, fe: DomId, name: String) {
        let disk = &self.disks[n];
        let info = DiskInfo { capacity: disk.capacity, readonly: disk.readonly, flush: disk.flush };
        let cfg = DeviceConfig {
            kind: String::from("vbd"),
            devid: XVDA,
            frontend: fe,
            backend: DomId::DOM0,
            frontend_entries: alloc::vec![
                (String::from("virtual-device"), format!("{XVDA}")),
                (String::from("device-type"), String::from("disk")),
            ],
            frontend_ro_entries: Vec::new(),
            backend_entries: alloc::vec![
                (String::from("params"), format!("virtio-blk {}", disk.bdf)),
                (String::from("type"), String::from("phy")),
                (String::from("dev"), String::from("xvda")),
                (String::from("removable"), String::from("0")),
            ],
        };
        if let Err(e) = self.xs.borrow_mut().add_device(&cfg) {
            println!("dom0: d{}: cannot create its vbd: {e}", fe.0);
            return;
        }
        let back = backend_path(DomId::DOM0, "vbd", fe, XVDA);
        let front = frontend_path(fe, "vbd", XVDA);
        let mut dev = XenbusDevice::new(Role::Backend, &back, &front);
        dev.load(&mut self.xb);
        for (k, v) in handshake::announce_keys(&info) {
            let _ = self.xb.write(TxId::NONE, &format!("{back}/{k}"), v.as_bytes());
        }
        let _ = self.xb.watch(&dev.other_state_path(), &format!("blkfe:{n}"));
        self.vbds[n] =
            Some(Vbd { frontend: fe, name, disk: n, dev, conn: None, leaving: false, gone: false });
        if let Some(v) = &self.vbds[n] {
            println!(
                "dom0: {} ({}): vbd on disk {} ({} sectors)",
                v.label(),
                v.name,
                disk.bdf,
                info.capacity
            );
        }
        self.handshake(n);
    }

    /// Follows the frontend's state.
    fn handshake(&mut self, n: usize) {
        let Some(v) = self.vbds.get_mut(n).and_then(Option::as_mut) else { return };
        v.dev.refresh_other(&mut self.xb);
        while let Some(step) = v.dev.next_step() {
            match step {
                Step::Announce => {}
                Step::Connect => {
                    let disk = &self.disks[v.disk];
                    let info =
                        DiskInfo { capacity: disk.capacity, readonly: disk.readonly, flush: disk.flush };
                    match connect(&mut self.xb, v, n, info) {
                        Ok(c) => {
                            for (k, val) in handshake::connect_keys(&info) {
                                let _ =
                                    self.xb.write(TxId::NONE, &format!("{}/{k}", v.dev.dir), val.as_bytes());
                            }
                            println!("dom0: {}: connected (ring-ref port {})", v.label(), c.port.0);
                            v.conn = Some(c);
                        }
                        Err(why) => {
                            println!("dom0: {}: cannot connect: {why}", v.label());
                            let _ =
                                self.xb.write(TxId::NONE, &format!("{}/error", v.dev.dir), why.as_bytes());
                            let _ = v.dev.switch(&mut self.xb, XenbusState::Closing);
                            break;
                        }
                    }
                }
                Step::Close | Step::Closed => {
                    // Not before every request with the disk is back.
                    v.leaving = true;
                    if let Some(c) = &mut v.conn {
                        c.back.close();
                        if !c.back.quiescent() {
                            break;
                        }
                    }
                    teardown(v);
                }
            }
            if v.dev.complete(&mut self.xb, step).is_err() {
                break;
            }
        }
    }

    /// Disconnects the vbds of domains that went away.
    fn check_domains(&mut self) {
        for n in 0..self.vbds.len() {
            let Some(v) = self.vbds[n].as_mut() else { continue };
            if !v.gone && !alive(v.frontend) {
                println!("dom0: {}: domain gone, disconnecting", v.label());
                v.gone = true;
                v.leaving = true;
                if let Some(c) = &mut v.conn {
                    c.back.close();
                }
                let _ = self.xb.unwatch(&v.dev.other_state_path(), &format!("blkfe:{n}"));
            }
        }
    }

    /// Hands disk completions to their backends.
    fn completions(&mut self) -> bool {
        let mut any = false;
        let vbds = &mut self.vbds;
        for d in &mut self.disks {
            let n = d.poll(|cookie, st| {
                let idx = (cookie >> COOKIE_SHIFT) as usize;
                if let Some(Some(v)) = vbds.get_mut(idx) {
                    if let Some(c) = &mut v.conn {
                        c.back.complete(&mut c.data, cookie, st == status::OK);
                    }
                }
            });
            any |= n > 0;
        }
        any
    }

    /// Serves vbd `n`'s ring; tears it down once it is leaving and idle.
    fn service(&mut self, n: usize) -> bool {
        let Some(v) = self.vbds[n].as_mut() else { return false };
        let Some(c) = v.conn.as_mut() else {
            if v.gone {
                self.vbds[n] = None;
            }
            return false;
        };
        let round = c.back.service(&mut c.data, &mut DiskRef(&mut self.disks[v.disk]));
        if round.notify {
            let _ = events::send(c.port);
        }
        let (broken, quiescent) = (c.back.broken(), c.back.quiescent());
        if let Some(e) = broken {
            if !v.leaving {
                println!("dom0: {}: frontend broke the ring ({e}); closing the connection", v.label());
                v.leaving = true;
                let _ = v.dev.switch(&mut self.xb, XenbusState::Closing);
            }
        }
        if v.leaving && quiescent {
            teardown(v);
            if v.gone {
                self.vbds[n] = None;
            } else if v.dev.state() == XenbusState::Closing {
                // Finish a close that waited for the disk.
                self.handshake(n);
            }
            return true;
        }
        round.taken > 0 || round.answered > 0
    }

    /// Counters for the report: (grant_table_op calls, grant operations).
    pub fn grant_counters() -> (u32, u64) {
        (GNT_CALLS.load(Ordering::Relaxed), GNT_OPS.load(Ordering::Relaxed))
    }

    /// Vbds with a ring still mapped.
    pub fn connected(&self) -> usize {
        self.vbds.iter().flatten().filter(|v| v.conn.is_some()).count()
    }
}

/// Maps the frontend's ring and binds its event channel.
fn connect(xb: &mut Xenbus<LocalTransport>, v: &Vbd, n: usize, info: DiskInfo) -> Result<Conn, &'static str> {
    let fdir = v.dev.other_dir.clone();
    let mut node = |k: &str| xb.read(TxId::NONE, &format!("{fdir}/{k}")).ok();
    let (rr, ec, proto, order) =
        (node("ring-ref"), node("event-channel"), node("protocol"), node("ring-page-order"));
    let FrontendRing { ring_ref, port } =
        handshake::parse_frontend(rr.as_deref(), ec.as_deref(), proto.as_deref(), order.as_deref())
            .map_err(|e| e.as_str())?;
    let va = RING_WINDOW + n as u64 * 4096;
    mm::entry_maddr(va, 1).map_err(|_| "no page table for the ring")?;
    let mut op = [GnttabMapGrantRef {
        host_addr: va,
        flags: gntmap::HOST_MAP,
        ref_: ring_ref,
        dom: v.frontend,
        ..Default::default()
    }];
    grant_table_op(gntop::MAP_GRANT_REF, &mut op).map_err(|_| "grant_table_op failed")?;
    if op[0].status != gntst::OKAY {
        return Err("cannot map the ring grant");
    }
    let unmap_ring = |handle| {
        let mut u = [GnttabUnmapGrantRef { host_addr: va, dev_bus_addr: 0, handle, ..Default::default() }];
        let _ = grant_table_op(gntop::UNMAP_GRANT_REF, &mut u);
    };
    let local = match events::bind_interdomain(v.frontend, port) {
        Ok(p) => p,
        Err(_) => {
            unmap_ring(op[0].handle);
            return Err("cannot bind the event channel");
        }
    };
    if events::attach(local, on_frontend_event).is_err() {
        let _ = events::close(local);
        unmap_ring(op[0].handle);
        return Err("cannot attach the event channel");
    }
    let back = Blkback::new(MappedRing { va }, v.frontend, info, (n as u64) << COOKIE_SHIFT);
    // Requests may already be waiting.
    WAKE.store(true, Ordering::SeqCst);
    Ok(Conn { back, data: DeviceMaps::new(), ring_handle: op[0].handle, port: local })
}

/// Unmaps the ring and closes the port of a quiescent connection.
fn teardown(v: &mut Vbd) {
    let Some(c) = v.conn.take() else { return };
    let va = c.back.memory().va;
    let _ = events::close(c.port);
    let mut u =
        [GnttabUnmapGrantRef { host_addr: va, dev_bus_addr: 0, handle: c.ring_handle, ..Default::default() }];
    let ok = grant_table_op(gntop::UNMAP_GRANT_REF, &mut u).is_ok() && u[0].status == gntst::OKAY;
    let s = c.back.stats;
    println!(
        "dom0: {}: disconnected ({} requests, {} errors, {} unsupported, {} sectors read, {} written, {} flushes; ring unmapped: {}, grant unmap failures: {})",
        v.label(),
        s.requests,
        s.errors,
        s.unsupported,
        s.sectors_read,
        s.sectors_written,
        s.flushes,
        if ok { "yes" } else { "NO" },
        c.data.unmap_failures
    );
}
