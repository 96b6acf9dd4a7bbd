//! dom0's control plane: xenstored serving every domU's ring, the toolstack that writes each
//! domU's nodes and introduces it, and the console backend (xenconsoled) that prints each
//! domU's console ring as `[name] line` on the machine console.
//!
//! dom0 plays the toolstack for the domains the hypervisor built at boot, as Xen's
//! `init-dom0less` does: it enumerates them (`XEN_DOMCTL_getdomaininfo`), learns their
//! xenstore and console rings and ports (`HVMOP_get_param`; the builder allocates the two
//! ports unbound for dom0 before anything else, so they are the domU's ports 1 (xenstore)
//! and 2 (console), but dom0 reads them rather than assuming), writes their nodes, and
//! INTRODUCEs them.
//! Rings are mapped through the grants the builder reserved for dom0 (refs 0 and 1), or by
//! foreign mapping where there is no grant ([`crate::foreign`]). Work is dispatched by event:
//! every ring port (xenstore, console, and the split-driver backends of [`crate::hw`]) has
//! the split-driver framework's handler, which only marks the port in
//! [`PENDING`]; [`ControlPlane::poll`] drains that set on the main path and serves the rings
//! whose ports fired, plus the xenstore rings and dom0 clients that have output waiting —
//! never a rescan of every ring. Between events dom0 blocks in `SCHEDOP_block`
//! ([`ControlPlane::run`]).
//!
//! When a domU shuts down, dom0 drains its console, RELEASEs it from xenstore (firing
//! `@releaseDomain`), removes its nodes, closes its ports, unmaps its rings and destroys it.
//!
//! Two small services make the split drivers observable from a domU: dom0's console backend
//! walks the XenBus handshake with the domU's console frontend (backend InitWait → frontend
//! Connected → backend Connected), and an echo service copies any value a domU writes to its
//! `data/ping` node into `data/pong` (so a domU can watch a node dom0 writes).
//!
//! Options: `conin=<domid>:<text>` pushes `<text>` (underscores as spaces) and a newline into
//! that domain's console input; `ringmap=foreign` maps the rings by foreign mapping even
//! where a grant exists.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::sync::atomic::{AtomicBool, Ordering};

use dom0::boot_domains;
use dom0::console_backend::{self, ConsoleLog};
use dom0::local_xs::{self, LocalTransport};
use dom0::store_ring::StoreRing;
use dom0::xenstore::toolstack::{backend_path, Console, DomainConfig, StoreRing as StoreNodes};
use dom0::xenstore::{Action, Quotas, Xenstore};
use hypercall_abi::domctl::{cmd, dominf, XenDomctl, XenDomctlGetdomaininfo};
use hypercall_abi::grant_table::{GNTTAB_RESERVED_CONSOLE, GNTTAB_RESERVED_XENSTORE};
use hypercall_abi::hvm::{op as hvmop, param, XenHvmParam};
use hypercall_abi::hypercall::nr;
use hypercall_abi::io::xenbus::XenbusState;
use hypercall_abi::sched::shutdown;
use hypercall_abi::{DomId, Errno, Mfn, Port};
use pv_guest_kernel::split;
use pv_guest_kernel::split::kernel::{self as split_kernel, PENDING};
use pv_guest_kernel::xenbus::{TxId, Xenbus};
use pv_guest_kernel::xenbus_state::{Role, XenbusDevice};
use pv_guest_kernel::{cmdline, events, hypercall, println, time};

use crate::foreign::{self, ForeignPage, How};

/// First domain id that is not a real domain (`DOMID_FIRST_RESERVED`).
const DOMID_FIRST_RESERVED: u16 = 0x7ff0;
/// How long [`ControlPlane::run`] sleeps at most before re-checking the domains anyway.
const RECHECK_NS: u64 = 200_000_000;
/// Heap kept free beyond one domain's xenstored quota (what one request may need at most).
const HEAP_HEADROOM: usize = 256 * 1024;
/// Passes of one poll while rings keep moving (a write on one ring can fire watches whose
/// events go out on another).
const MAX_PASSES: usize = 8;

/// Raised by VIRQ_DOM_EXC (ring ports mark [`PENDING`] instead): there is work for
/// [`ControlPlane::poll`].
static KICK: AtomicBool = AtomicBool::new(false);
/// Polls made and the time spent in them (reported when dom0 stops serving).
static POLLS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static POLL_NS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
/// Raised by VIRQ_DOM_EXC: some domain changed state.
static EXC: AtomicBool = AtomicBool::new(false);

/// To be called from the VIRQ_DOM_EXC handler.
pub fn on_dom_exc() {
    EXC.store(true, Ordering::SeqCst);
    KICK.store(true, Ordering::SeqCst);
}

/// The xenstore side of a domU.
struct StoreSide {
    ring: StoreRing,
    page: ForeignPage,
    port: Port,
}

/// The console backend of a domU.
struct ConsoleSide {
    page: ForeignPage,
    port: Port,
    log: ConsoleLog,
    dev: XenbusDevice,
}

struct DomU {
    name: String,
    store: Option<StoreSide>,
    console: Option<ConsoleSide>,
}

/// Every domain but dom0, as `getdomaininfo` reports them (it returns the first domain whose
/// id is at least the one asked for, so asking for last + 1 enumerates).
pub fn list_domus() -> Result<Vec<XenDomctlGetdomaininfo>, Errno> {
    let mut out = Vec::new();
    let mut next = 1u16;
    while next < DOMID_FIRST_RESERVED {
        let mut op = XenDomctl::new(cmd::GETDOMAININFO, DomId(next));
        match hypercall::check(hypercall::domctl(&mut op)) {
            Ok(_) => {}
            Err(Errno::ESRCH) => break,
            Err(e) => return Err(e),
        }
        let info: XenDomctlGetdomaininfo = op.payload();
        // Guard against a hypervisor answering with an id below the one asked for.
        if info.domain.0 < next || info.domain.0 >= DOMID_FIRST_RESERVED {
            break;
        }
        next = info.domain.0 + 1;
        out.push(info);
    }
    Ok(out)
}

/// How a domain ended, for the log.
pub fn describe(flags: u32) -> String {
    if flags & dominf::SHUTDOWN != 0 {
        let code = dominf::shutdown_code(flags);
        format!("shut down ({}, code {code})", shutdown::name(code))
    } else if flags & dominf::DYING != 0 {
        String::from("dying")
    } else if flags & dominf::PAUSED != 0 {
        String::from("paused")
    } else {
        String::from("still running")
    }
}

fn gone(flags: u32) -> bool {
    flags & (dominf::SHUTDOWN | dominf::DYING) != 0
}

/// `HVMOP_get_param` of another domain.
fn hvm_param(domid: DomId, index: u32) -> Result<u64, Errno> {
    let mut p = XenHvmParam { domid, _pad: 0, index, value: 0 };
    hypercall::check(hypercall::hypercall5(
        nr::HVM_OP,
        u64::from(hvmop::GET_PARAM),
        hypercall::ptr_mut(&mut p),
        0,
        0,
        0,
    ))?;
    Ok(p.value)
}

fn destroy(domid: DomId) -> Result<(), Errno> {
    let mut op = XenDomctl::new(cmd::DESTROYDOMAIN, domid);
    hypercall::check(hypercall::domctl(&mut op)).map(drop)
}

/// Binds a local port to `domid`'s `remote` port with the framework's handler, unmasked,
/// and marks it once (the ring may already hold something).
fn bind(domid: DomId, remote: Port) -> Result<Port, Errno> {
    let port = events::bind_interdomain(domid, remote)?;
    if let Err(e) = events::attach(port, split_kernel::on_event) {
        let _ = events::close(port);
        return Err(e);
    }
    PENDING.raise(port);
    Ok(port)
}

/// Which of a domU's rings a port of the control plane serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RingKind {
    Store,
    Console,
}

fn console_token(id: DomId) -> String {
    format!("console:{}", id.0)
}

fn ping_token(id: DomId) -> String {
    format!("ping:{}", id.0)
}

fn ping_path(id: DomId) -> String {
    format!("/local/domain/{}/data/ping", id.0)
}

/// xenstored, the toolstack and the console backend.
pub struct ControlPlane {
    xs: Rc<RefCell<Xenstore>>,
    /// dom0's own connection, through the same client the domUs use.
    local: Xenbus<LocalTransport>,
    doms: BTreeMap<DomId, DomU>,
    /// `conin=`: console input for one domain.
    input: Option<(DomId, Vec<u8>)>,
    /// The split-driver backends (blkback for `vbd=`, the random-number device), served
    /// from the same loop.
    services: Vec<alloc::boxed::Box<dyn crate::hw::backends::Service>>,
    /// The ports of the domUs' xenstore and console rings.
    ports: BTreeMap<Port, (DomId, RingKind)>,
    /// Ports that fired, drained from [`PENDING`] each pass (kept to reuse its allocation).
    fired: Vec<Port>,
    /// `local` was used since its watch events were last taken (they may sit in its queue).
    local_dirty: bool,
    /// Event-channel echo ports ([`crate::evtchn_echo`]) and `mem-set=` ([`dom0::mem_set`]).
    echo: crate::evtchn_echo::EvtchnEcho,
    mem_set: Option<dom0::mem_set::MemSet>,
    /// The heap was below its reserve at the last look.
    heap_low: bool,
}

impl ControlPlane {
    /// Starts xenstored, then adopts every domU the hypervisor built.
    pub fn start(cmd: &str) -> ControlPlane {
        let domus = list_domus().unwrap_or_else(|e| {
            println!("dom0: cannot list domains: {e}");
            Vec::new()
        });
        // Half of dom0's heap for xenstored: every domU at its memory quota fits in it.
        let heap = pv_guest_kernel::heap::stats().size;
        let quotas = Quotas::fitting(heap / 2, domus.len());
        println!(
            "dom0: xenstored: {} KiB of memory per domain ({} domU(s), {} KiB heap)",
            quotas.memory_per_domain / 1024,
            domus.len(),
            heap / 1024
        );
        let xs = Rc::new(RefCell::new(Xenstore::new(quotas)));
        let local = local_xs::client(&xs, DomId::DOM0);
        let input = cmdline::get(cmd, "conin").and_then(boot_domains::parse_console_input);
        foreign::use_grants(cmdline::get(cmd, "ringmap") != Some("foreign"));
        let mem_set = dom0::mem_set::MemSet::from_option(cmdline::get(cmd, "mem-set")).unwrap_or_else(|e| {
            println!("dom0: ignoring mem-set= ({e:?})");
            None
        });
        let echo = crate::evtchn_echo::EvtchnEcho::new();
        let mut cp = ControlPlane {
            xs,
            local,
            doms: BTreeMap::new(),
            input,
            services: Vec::new(),
            ports: BTreeMap::new(),
            fired: Vec::new(),
            local_dirty: true,
            echo,
            mem_set,
            heap_low: false,
        };
        for (k, v) in [("name", "Domain-0"), ("domid", "0")] {
            let _ = cp.local.write(TxId::NONE, &format!("/local/domain/0/{k}"), v.as_bytes());
        }
        for info in domus {
            cp.adopt(&info);
        }
        println!("dom0: xenstored up, {} domU(s) introduced", cp.doms.len());
        if let Some(rng) = crate::hw::rng::service(cmd, &cp.xs) {
            cp.services.push(rng);
        }
        cp
    }

    /// Starts blkback over `disks` for the domains `vbd=` names.
    pub fn attach_blk(&mut self, cmd: &str, disks: Vec<crate::hw::virtio_blk::VirtioBlk>) {
        if let Some(blk) = crate::hw::blkif::service(cmd, disks, &self.xs) {
            self.services.push(blk);
        }
    }

    /// Domains still served.
    pub fn domus_left(&self) -> usize {
        self.doms.len()
    }

    /// The toolstack's part for one boot-built domain: nodes, INTRODUCE, console backend.
    fn adopt(&mut self, info: &XenDomctlGetdomaininfo) {
        let id = info.domain;
        let name = boot_domains::domain_name(&info.handle, info.domain);
        if gone(info.flags) {
            println!("dom0: d{} ({name}) already {}, destroying it", id.0, describe(info.flags));
            if let Err(e) = destroy(id) {
                println!("dom0: destroying d{} failed: {e}", id.0);
            }
            return;
        }
        let params = (|| {
            Ok::<_, Errno>((
                hvm_param(id, param::STORE_PFN)?,
                hvm_param(id, param::STORE_EVTCHN)?,
                hvm_param(id, param::CONSOLE_PFN)?,
                hvm_param(id, param::CONSOLE_EVTCHN)?,
            ))
        })();
        let (store_mfn, store_port, cons_mfn, cons_port) = match params {
            Ok(p) => p,
            Err(e) => {
                println!("dom0: d{} ({name}): no ring parameters ({e}); not served", id.0);
                return;
            }
        };
        let port32 = |v: u64| Port(u32::try_from(v).unwrap_or(0));
        let cfg = DomainConfig {
            domid: id,
            name: name.clone(),
            memory_kb: info.tot_pages.saturating_mul(4),
            store: (store_mfn != 0).then(|| StoreNodes { gfn: store_mfn, port: port32(store_port) }),
            console: (cons_mfn != 0).then(|| Console {
                gfn: cons_mfn,
                port: port32(cons_port),
                backend: DomId::DOM0,
                kind: String::from("xenconsoled"),
                limit: None,
            }),
        };
        if let Err(e) = self.xs.borrow_mut().create_domain_nodes(&cfg) {
            println!("dom0: d{} ({name}): writing its nodes failed: {e}", id.0);
        }
        self.doms.insert(id, DomU { name: name.clone(), store: None, console: None });
        if store_mfn != 0 {
            let r = self.xs.borrow_mut().introduce_domain(id, store_mfn, port32(store_port));
            match r {
                Ok(_) => self.handle_actions(),
                Err(e) => println!("dom0: d{} ({name}): INTRODUCE failed: {e}", id.0),
            }
        }
        self.local_dirty = true;
        if cons_mfn != 0 {
            match self.attach_console(id, &name, Mfn(cons_mfn), port32(cons_port)) {
                Ok(c) => {
                    self.ports.insert(c.port, (id, RingKind::Console));
                    if let Some(d) = self.doms.get_mut(&id) {
                        d.console = Some(c);
                    }
                }
                Err(e) => println!("dom0: d{} ({name}): console backend failed: {e}", id.0),
            }
        }
        self.echo.watch(&mut self.local, id);
        if let Err(e) = self.local.watch(&ping_path(id), &ping_token(id)) {
            println!("dom0: d{}: cannot watch data/ping: {e}", id.0);
        }
        let (store, console) = self.doms.get(&id).map_or((None, None), |d| {
            (d.store.as_ref().map(|s| s.page.how), d.console.as_ref().map(|c| c.page.how))
        });
        println!(
            "dom0: d{} ({name}) introduced: xenstore {}, console {}",
            id.0,
            served(store),
            served(console)
        );
    }

    /// Maps the console ring, binds its port and starts the backend's handshake (InitWait).
    fn attach_console(
        &mut self,
        id: DomId,
        name: &str,
        mfn: Mfn,
        remote: Port,
    ) -> Result<ConsoleSide, Errno> {
        let page = foreign::map(id, GNTTAB_RESERVED_CONSOLE, mfn)?;
        let port = match bind(id, remote) {
            Ok(p) => p,
            Err(e) => {
                let _ = foreign::unmap(page);
                return Err(e);
            }
        };
        console_backend::mark_connected(&page.page());
        let front = format!("/local/domain/{}/console", id.0);
        let back = backend_path(DomId::DOM0, "console", id, 0);
        let mut dev = XenbusDevice::new(Role::Backend, &back, &front);
        dev.load(&mut self.local);
        // The ring and port are the builder's: the framework's part is the state walk.
        let _ = split::follow(&mut dev, &mut self.local, |_| true);
        let _ = self.local.watch(&dev.other_state_path(), &console_token(id));
        let c = ConsoleSide { page, port, log: ConsoleLog::new(name), dev };
        if let Some((target, text)) = &self.input {
            if *target == id {
                let n = console_backend::push_input(&c.page.page(), text);
                let _ = events::send(c.port);
                println!("dom0: {n} bytes of console input queued for d{}", id.0);
            }
        }
        Ok(c)
    }

    /// Carries out what xenstored asked for (INTRODUCE, RELEASE, broken connections).
    fn handle_actions(&mut self) {
        let actions = self.xs.borrow_mut().take_actions();
        for a in actions {
            match a {
                Action::Introduce { domid, conn, gfn, port, reset } => {
                    let Some(d) = self.doms.get_mut(&domid) else { continue };
                    match (&mut d.store, reset) {
                        (Some(s), true) => {
                            if s.ring.reset_pending_ack {
                                // The echo of a reconnect the ring service already did.
                                s.ring.reset_pending_ack = false;
                            } else {
                                s.ring.reset(&s.page.page());
                                let _ = events::send(s.port);
                            }
                        }
                        (Some(_), false) => {}
                        (None, _) => match attach_store(domid, conn, gfn, port) {
                            Ok(s) => {
                                self.ports.insert(s.port, (domid, RingKind::Store));
                                d.store = Some(s);
                            }
                            Err(e) => println!("dom0: d{}: cannot serve its xenstore ring: {e}", domid.0),
                        },
                    }
                }
                Action::Release { domid, .. } => {
                    if let Some(s) = self.doms.get_mut(&domid).and_then(|d| d.store.take()) {
                        self.ports.remove(&s.port);
                        let _ = events::close(s.port);
                        if let Err(e) = foreign::unmap(s.page) {
                            println!("dom0: d{}: unmapping its xenstore ring failed: {e}", domid.0);
                        }
                    }
                }
                Action::ConnectionBroken { domid, ring_error, .. } => {
                    if let Some(s) = self.doms.get_mut(&domid).and_then(|d| d.store.as_mut()) {
                        if s.ring.broken.is_none() {
                            s.ring.break_with(&s.page.page(), ring_error);
                            let _ = events::send(s.port);
                        }
                    }
                    println!("dom0: d{}: xenstore protocol error {ring_error}, ring ignored", domid.0);
                }
            }
        }
    }

    /// One round of work: domain state changes, then — until nothing moves — the rings whose
    /// ports fired, the xenstore rings and dom0 clients with output waiting, and the backends.
    pub fn poll(&mut self) {
        let t0 = time::now_ns();
        self.poll_inner();
        POLL_NS.fetch_add(time::now_ns().saturating_sub(t0), Ordering::Relaxed);
        POLLS.fetch_add(1, Ordering::Relaxed);
    }

    fn poll_inner(&mut self) {
        KICK.store(false, Ordering::SeqCst);
        self.check_heap();
        if EXC.swap(false, Ordering::SeqCst) {
            self.check_domains();
            self.local_dirty = true;
        }
        if let Some(m) = self.mem_set.as_mut().filter(|m| !m.is_done()) {
            for n in m.poll(time::now_ns(), list_domus, &mut self.local) {
                println!("dom0: mem-set: {n}");
            }
            self.local_dirty = true;
        }
        let mut fired = core::mem::take(&mut self.fired);
        for _ in 0..MAX_PASSES {
            fired.clear();
            PENDING.drain(|p| fired.push(p));
            let mut moved = false;
            for &p in &fired {
                match self.ports.get(&p) {
                    Some(&(id, RingKind::Store)) => moved |= self.service_store(id),
                    Some(&(id, RingKind::Console)) => moved |= self.drain_console(id),
                    None => {}
                }
            }
            // Requests on one ring can queue replies and watch events for others.
            moved |= self.flush_stores();
            self.handle_actions();
            moved |= self.local_events();
            for s in self.services.iter_mut() {
                moved |= s.poll(&fired);
            }
            if !moved && !PENDING.any() {
                break;
            }
        }
        self.fired = fired;
    }

    /// Keeps one domain's worth of xenstored memory (and some) free in dom0's heap: below
    /// that, xenstored refuses domUs' requests that would make it hold more (`ENOMEM`), so
    /// no client's request can reach a failing allocation.
    fn check_heap(&mut self) {
        let mut xs = self.xs.borrow_mut();
        let reserve = xs.quotas().memory_per_domain + HEAP_HEADROOM;
        let low = pv_guest_kernel::heap::stats().free < reserve;
        if low != self.heap_low {
            println!(
                "dom0: heap {} (reserve {} KiB)",
                if low { "low: domUs' xenstore growth refused" } else { "ok again" },
                reserve / 1024
            );
            self.heap_low = low;
        }
        xs.set_low_memory(low);
    }

    /// True if something is waiting without an event having been raised.
    fn has_work(&self) -> bool {
        KICK.load(Ordering::SeqCst) || PENDING.any() || self.services.iter().any(|s| s.has_work())
    }

    fn service_store(&mut self, id: DomId) -> bool {
        let Some(s) = self.doms.get_mut(&id).and_then(|d| d.store.as_mut()) else { return false };
        let r = s.ring.service(&mut self.xs.borrow_mut(), &s.page.page());
        if r.notify {
            let _ = events::send(s.port);
        }
        if r.more {
            // Its budget ran out: the others first, then it again.
            PENDING.raise(s.port);
        }
        r.notify
    }

    /// Serves the rings that have replies or watch events queued in xenstored.
    fn flush_stores(&mut self) -> bool {
        let mut moved = false;
        let mut xs = self.xs.borrow_mut();
        for d in self.doms.values_mut() {
            let Some(s) = d.store.as_mut() else { continue };
            if xs.pending_output(s.ring.conn) == 0 {
                continue;
            }
            let r = s.ring.service(&mut xs, &s.page.page());
            if r.notify {
                moved = true;
                let _ = events::send(s.port);
            }
            if r.more {
                PENDING.raise(s.port);
            }
        }
        moved
    }

    fn drain_console(&mut self, id: DomId) -> bool {
        let Some(d) = self.doms.get_mut(&id) else { return false };
        let Some(c) = d.console.as_mut() else { return false };
        let (taken, more) = console_backend::drain(&c.page.page(), &mut c.log, print_line(&d.name));
        if taken > 0 {
            let _ = events::send(c.port);
        }
        if more {
            // Come back after the others had their turn.
            PENDING.raise(c.port);
        }
        taken > 0
    }

    /// Reacts to dom0's watches: console frontends' states, and the echo service. Looks only
    /// if xenstored queued something for dom0 or dom0 used its client since the last look.
    fn local_events(&mut self) -> bool {
        let queued = self.xs.borrow().pending_output(self.local.transport_mut().conn()) > 0;
        if !queued && !core::mem::take(&mut self.local_dirty) {
            return false;
        }
        let mut moved = false;
        while let Ok(Some(ev)) = self.local.next_watch_event() {
            self.local_dirty = true;
            moved = true;
            let Some((kind, id)) = ev.token.split_once(':') else { continue };
            let Some(id) = id.parse::<u16>().ok().map(DomId) else { continue };
            match kind {
                "console" => self.console_handshake(id),
                crate::evtchn_echo::TOKEN_KIND => self.echo.changed(&mut self.local, id),
                "ping" => {
                    if let Ok(v) = self.local.read(TxId::NONE, &ping_path(id)) {
                        let pong = format!("/local/domain/{}/data/pong", id.0);
                        if let Err(e) = self.local.write(TxId::NONE, &pong, &v) {
                            println!("dom0: d{}: echo failed: {e}", id.0);
                        }
                    }
                }
                _ => {}
            }
        }
        moved
    }

    fn console_handshake(&mut self, id: DomId) {
        let Some(d) = self.doms.get_mut(&id) else { return };
        let Some(c) = d.console.as_mut() else { return };
        match split::follow(&mut c.dev, &mut self.local, |_| true) {
            Ok(entered) if entered.contains(&XenbusState::Connected) => {
                println!("dom0: d{} ({}) console frontend connected", id.0, d.name);
            }
            Ok(_) => {}
            Err((step, e)) => println!("dom0: d{}: console state {step:?} failed: {e}", id.0),
        }
    }

    /// Finds the domUs that shut down (or vanished) and retires them.
    fn check_domains(&mut self) {
        let list = match list_domus() {
            Ok(l) => l,
            Err(e) => {
                println!("dom0: cannot list domains: {e}");
                return;
            }
        };
        let ids: Vec<DomId> = self.doms.keys().copied().collect();
        for id in ids {
            match list.iter().find(|i| i.domain == id) {
                Some(info) if gone(info.flags) => self.retire(id, &describe(info.flags)),
                Some(_) => {}
                None => self.retire(id, "gone"),
            }
        }
    }

    /// Drains, releases, tears down and destroys a domU that has shut down.
    fn retire(&mut self, id: DomId, how: &str) {
        let Some(mut d) = self.doms.remove(&id) else { return };
        // Its last words first: they were written before it shut down.
        if let Some(c) = d.console.as_mut() {
            let emit = print_line(&d.name);
            // The ring holds at most 2 KiB, so one drain empties it; the bound is for safety.
            for _ in 0..4 {
                if !console_backend::drain(&c.page.page(), &mut c.log, &emit).1 {
                    break;
                }
            }
            c.log.flush(&emit);
        }
        println!("dom0: d{} ({}) {how}", id.0, d.name);
        if let Some(c) = d.console.take() {
            self.ports.remove(&c.port);
            let _ = events::close(c.port);
            if let Err(e) = foreign::unmap(c.page) {
                println!("dom0: d{}: unmapping its console ring failed: {e}", id.0);
            }
            let _ = self.local.unwatch(&c.dev.other_state_path(), &console_token(id));
        }
        let _ = self.local.unwatch(&ping_path(id), &ping_token(id));
        self.echo.retire(&mut self.local, id);
        // Put the store side back so the Release action finds it.
        let had_store = d.store.is_some();
        self.doms.insert(id, d);
        {
            let mut xs = self.xs.borrow_mut();
            if had_store {
                if let Err(e) = xs.release_domain(id) {
                    println!("dom0: d{}: RELEASE failed: {e}", id.0);
                }
            }
            if let Err(e) = xs.remove_domain_nodes(id) {
                println!("dom0: d{}: removing its nodes failed: {e}", id.0);
            }
        }
        self.handle_actions();
        self.doms.remove(&id);
        match destroy(id) {
            Ok(()) => println!("dom0: d{} released and destroyed", id.0),
            Err(e) => println!("dom0: destroying d{} failed: {e}", id.0),
        }
    }

    /// Serves everything until every domU is gone.
    pub fn run(&mut self) {
        let mut last_check = time::now_ns();
        loop {
            self.poll();
            if self.doms.is_empty() {
                println!(
                    "dom0: control plane: {} polls, {} us in them",
                    POLLS.load(Ordering::Relaxed),
                    POLL_NS.load(Ordering::Relaxed) / 1000
                );
                return;
            }
            let deadline = time::now_ns().saturating_add(RECHECK_NS);
            let woke = events::block_until(|| self.has_work(), Some(deadline));
            if woke.is_err() {
                hypercall::yield_cpu();
            }
            // A missed VIRQ must not leave a dead domain served forever.
            if time::now_ns().saturating_sub(last_check) >= RECHECK_NS {
                last_check = time::now_ns();
                EXC.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// Maps an introduced domain's xenstore ring and binds its port.
fn attach_store(
    domid: DomId,
    conn: dom0::xenstore::ConnId,
    gfn: u64,
    remote: Port,
) -> Result<StoreSide, Errno> {
    let page = foreign::map(domid, GNTTAB_RESERVED_XENSTORE, Mfn(gfn))?;
    let port = match bind(domid, remote) {
        Ok(p) => p,
        Err(e) => {
            let _ = foreign::unmap(page);
            return Err(e);
        }
    };
    let ring = StoreRing::new(domid, conn, gfn, remote);
    ring.advertise(&page.page());
    Ok(StoreSide { ring, page, port })
}

fn print_line(name: &str) -> impl Fn(&str) + '_ {
    move |line: &str| println!("[{name}] {line}")
}

fn served(how: Option<How>) -> &'static str {
    match how {
        Some(How::Grant(_)) => "served (granted ring)",
        Some(How::Foreign) => "served (foreign-mapped ring)",
        None => "not served",
    }
}
