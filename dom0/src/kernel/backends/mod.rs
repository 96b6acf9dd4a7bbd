//! dom0's host for split-driver backends: the toolstack's part and the serving loop that
//! every backend kind shares, so a new kind is registered by implementing [`BackendKind`]
//! (which domains get a device, what its driver is, what the toolstack writes) and adding a
//! [`Backends`] of it to dom0's services (it is a [`Service`]).
//!
//! Every kind has the same file set: its driver in dom0's library (`<x>back/mod.rs`, the
//! xenstore keys in `<x>back/keys.rs`, host tests in `<x>back/tests.rs`), its kind here
//! (`backends/<kind>.rs`: which domains, which device, what to log) and its device in
//! [`crate::hw`].
//!
//! For each kind: a xenstore connection of its own (dom0's in-process client); a watch on
//! `@introduceDomain` (fires once at registration, then per new domain) that creates the
//! devices of the domains the kind wants — both directories through the toolstack, then the
//! framework's [`BackDevice`], which announces itself and follows the frontend; a watch on
//! `@releaseDomain` that tells the devices of dead domains (their work in flight finishes
//! before the rings are released). Serving is event-driven: [`Backends::poll`] gets the
//! ports that fired since the last pass and services only their devices (and those whose
//! kind says a device of theirs has work, e.g. a disk completion).

pub mod vbd;
pub mod vif;
pub mod vrng;

use crate::domctl::alive;
use crate::services::Service;
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::ops::Bound;
use dom0::local_xs::{self, LocalTransport};
use dom0::xenstore::toolstack::{backend_path, frontend_path, DeviceConfig};
use dom0::xenstore::Xenstore;
use hypercall_abi::hypercall::debug;
use hypercall_abi::{DomId, Errno, Port};
use pv_guest_kernel::split::kernel::{GrantMapping, KernelOps, PENDING};
use pv_guest_kernel::split::{BackDevice, BackendDriver, Notice};
use pv_guest_kernel::xenbus::{TxId, Xenbus};
use pv_guest_kernel::{hypercall, println};

/// A kind of backend dom0 serves.
pub trait BackendKind {
    type Driver: BackendDriver<GrantMapping>;
    /// The device class (`vbd`, `vrng`): the `<kind>` of both xenstore paths.
    const KIND: &'static str;
    /// The device number of a domain's device.
    fn devid(&self) -> u32;
    /// The driver for a new device of domain `domid` called `name`, or `None` if the kind
    /// does not serve it (not configured for it, or nothing left to give).
    fn driver_for(&mut self, domid: DomId, name: &str) -> Option<Self::Driver>;
    /// What the toolstack writes besides the standard keys: frontend entries, read-only
    /// frontend entries, backend entries.
    fn entries(&self, _driver: &Self::Driver) -> DeviceConfig {
        DeviceConfig::default()
    }
    /// A one-line description of a new device, for the log.
    fn describe(&self, _driver: &Self::Driver) -> String {
        String::new()
    }
    /// True if the device has work besides its port firing (a device completion).
    fn needs_service(&self, _driver: &Self::Driver) -> bool {
        false
    }
    /// The device has work ([`needs_service`](Self::needs_service)) but no connection:
    /// settle it without one (e.g. acknowledge a device interrupt nobody waits for).
    fn idle(&mut self, _driver: &mut Self::Driver) {}
    /// A log line when the frontend's domain went away while connected (e.g. what is still
    /// in flight).
    fn peer_gone(
        &self,
        _driver: &Self::Driver,
        _conn: &<Self::Driver as BackendDriver<GrantMapping>>::Conn,
    ) -> Option<String> {
        None
    }
    /// The log line of a released connection (`unmapped`: the ring unmap succeeded).
    fn disconnected(&self, driver: &mut Self::Driver, label: &str, unmapped: bool) -> String {
        let _ = driver;
        format!("dom0: {label}: disconnected ring_unmapped={}", u8::from(unmapped))
    }
    /// The device is gone for good: take back what its driver held.
    fn retire(&mut self, _driver: Self::Driver) {}
}

type Dev<K> = BackDevice<GrantMapping, <K as BackendKind>::Driver>;

/// The devices of one kind.
pub struct Backends<K: BackendKind> {
    pub kind: K,
    xs: Rc<RefCell<Xenstore>>,
    xb: Xenbus<LocalTransport>,
    /// Boxed: a device with its driver and connection can be several KiB, and dom0's stack
    /// is small.
    devs: BTreeMap<DomId, Box<Dev<K>>>,
    /// Ports of connected devices.
    ports: BTreeMap<Port, DomId>,
    /// The client was used since its events were last taken (events may sit in its queue).
    dirty: bool,
    /// Domains that died with a device of ours connected: once it is released, whether the
    /// hypervisor could let the domain go is worth a line.
    died_connected: BTreeSet<DomId>,
    /// Work that would allocate, put off while dom0's heap is short: devices to create,
    /// frontends whose next step would connect.
    add_later: bool,
    step_later: BTreeSet<DomId>,
}

fn label<K: BackendKind>(kind: &K, d: DomId) -> String {
    format!("d{}/{}{}", d.0, K::KIND, kind.devid())
}

impl<K: BackendKind + 'static> Backends<K> {
    /// Starts serving `kind`: watches domain introductions and releases (devices are
    /// created for the domains that exist as the first event arrives).
    pub fn new(kind: K, xs: &Rc<RefCell<Xenstore>>) -> Box<Backends<K>> {
        let mut xb = local_xs::client(xs, DomId::DOM0);
        for (path, tok) in [("@introduceDomain", "intro"), ("@releaseDomain", "release")] {
            if let Err(e) = xb.watch(path, tok) {
                println!("dom0: {} backends cannot watch {path}: {e}", K::KIND);
            }
        }
        let mut b = Box::new(Backends {
            kind,
            xs: xs.clone(),
            xb,
            devs: BTreeMap::new(),
            ports: BTreeMap::new(),
            dirty: true,
            died_connected: BTreeSet::new(),
            add_later: false,
            step_later: BTreeSet::new(),
        });
        b.poll(&[]);
        b
    }

    fn watch_events(&mut self) -> bool {
        let mut moved = false;
        for ev in local_xs::take_events(&mut self.xb, &mut self.dirty) {
            moved = true;
            match ev.token.as_str() {
                "intro" => self.add_domains(),
                "release" => self.check_domains(),
                t => {
                    let id = t.strip_prefix(K::KIND).and_then(|r| r.strip_prefix(':'));
                    if let Some(d) = id.and_then(|n| n.parse::<u16>().ok()).map(DomId) {
                        self.step(d);
                    }
                }
            }
        }
        moved
    }

    /// Follows a frontend's state: connecting allocates, so a frontend that is not connected
    /// waits while dom0's heap is short.
    fn step(&mut self, d: DomId) {
        let Some(dev) = self.devs.get_mut(&d) else { return };
        if dev.conn().is_none() && crate::services::heap_short() {
            if self.step_later.insert(d) {
                println!("dom0: {}: dom0's heap is short; the connection waits", label(&self.kind, d));
            }
            return;
        }
        dev.on_watch(&mut self.xb, &mut KernelOps);
        self.after(d);
    }

    /// Creates the devices of the domains the kind wants that have none yet (later while
    /// dom0's heap is short).
    fn add_domains(&mut self) {
        if crate::services::heap_short() {
            if !self.add_later {
                println!("dom0: {} backends: dom0's heap is short; new devices wait", K::KIND);
            }
            self.add_later = true;
            return;
        }
        self.add_later = false;
        let ids: Vec<String> = self.xb.directory(TxId::NONE, "/local/domain").unwrap_or_default();
        for id in ids {
            let Ok(domid) = id.parse::<u16>().map(DomId) else { continue };
            if domid == DomId::DOM0 || self.devs.contains_key(&domid) || !alive(domid) {
                continue;
            }
            let name = self
                .xb
                .read_string(TxId::NONE, &format!("/local/domain/{}/name", domid.0))
                .unwrap_or_default();
            let Some(driver) = self.kind.driver_for(domid, &name) else { continue };
            self.create(domid, &name, driver);
        }
    }

    /// The toolstack's part (both directories) and the backend's start (features, InitWait).
    fn create(&mut self, fe: DomId, name: &str, driver: K::Driver) {
        let devid = self.kind.devid();
        let mut cfg = self.kind.entries(&driver);
        cfg.kind = String::from(K::KIND);
        cfg.devid = devid;
        cfg.frontend = fe;
        cfg.backend = DomId::DOM0;
        if let Err(e) = self.xs.borrow_mut().add_device(&cfg) {
            println!("dom0: d{}: cannot create its {}: {e}", fe.0, K::KIND);
            self.kind.retire(driver);
            return;
        }
        let back = backend_path(DomId::DOM0, K::KIND, fe, devid);
        let front = frontend_path(fe, K::KIND, devid);
        let token = format!("{}:{}", K::KIND, fe.0);
        let what = self.kind.describe(&driver);
        let mut dev = Box::new(BackDevice::new(fe, &back, &front, &token, driver));
        println!("dom0: {} ({name}): {what}", label(&self.kind, fe));
        dev.start(&mut self.xb, &mut KernelOps);
        self.dirty = true;
        self.devs.insert(fe, dev);
        self.after(fe);
    }

    /// Tells the devices of domains that went away.
    fn check_domains(&mut self) {
        let ids: Vec<DomId> = self.devs.keys().copied().collect();
        for d in ids {
            if alive(d) {
                continue;
            }
            if let Some(dev) = self.devs.get_mut(&d) {
                if dev.is_dead() {
                    continue;
                }
                if let Some(c) = dev.conn() {
                    self.died_connected.insert(d);
                    if let Some(line) = self.kind.peer_gone(&dev.driver, c) {
                        println!("dom0: {}: {line}", label(&self.kind, d));
                    }
                }
                dev.peer_gone(&mut self.xb, &mut KernelOps);
            }
            self.after(d);
        }
    }

    /// Logs what the device did, keeps the port map current, drops a dead device.
    fn after(&mut self, d: DomId) {
        let Some(dev) = self.devs.get_mut(&d) else { return };
        // This runs after every service: nothing is formatted or allocated unless
        // something happened.
        let notices = dev.take_notices();
        let port = dev.port();
        let registered = match port {
            Some(p) => self.ports.get(&p) == Some(&d),
            None => !self.ports.values().any(|owner| *owner == d),
        };
        if notices.is_empty() && registered && !dev.is_dead() {
            return;
        }
        let lbl = label(&self.kind, d);
        for n in notices {
            match n {
                Notice::Connected { port } => {
                    println!("dom0: {lbl}: connected (event channel port {})", port.0)
                }
                Notice::ConnectFailed(e) => println!("dom0: {lbl}: cannot connect: {e}"),
                Notice::Broken(e) => {
                    println!("dom0: {lbl}: frontend broke the ring ({e}); closing the connection")
                }
                Notice::Disconnected { unmapped } => {
                    println!("{}", self.kind.disconnected(&mut dev.driver, &lbl, unmapped))
                }
            }
        }
        if !registered {
            self.ports.retain(|_, owner| *owner != d);
            if let Some(p) = port {
                self.ports.insert(p, d);
            }
        }
        if dev.is_dead() {
            // Our mappings were the last references to its frames: the hypervisor has let
            // the domain go, or says what still holds it (a test aid: it asks through the
            // debug hypercall, which a production hypervisor does not have).
            if self.died_connected.remove(&d) && cfg!(feature = "test-aids") {
                match hypercall::check(hypercall::debug_op(debug::DOMAIN_FRAMES, u64::from(d.0))) {
                    Err(Errno::ESRCH) => println!("dom0: {lbl}: domain fully released"),
                    Ok(n) => println!("dom0: {lbl}: domain still holds {n} frames"),
                    Err(e) => println!("dom0: {lbl}: cannot ask about the domain: {e}"),
                }
            }
            if let Some(dev) = self.devs.remove(&d) {
                self.kind.retire(dev.driver);
            }
        }
    }

    /// Services one device; re-raises its port when it has more to do.
    fn service(&mut self, d: DomId) {
        let Some(dev) = self.devs.get_mut(&d) else { return };
        if dev.port().is_none() {
            self.kind.idle(&mut dev.driver);
            return;
        }
        let state = dev.dev.state();
        let served = dev.service(&mut self.xb, &mut KernelOps);
        if served.more {
            if let Some(p) = dev.port() {
                PENDING.raise(p);
            }
            if served.yield_now {
                hypercall::yield_cpu();
            }
        }
        if dev.dev.state() != state || dev.is_dead() || dev.port().is_none() {
            self.dirty = true;
        }
        self.after(d);
    }
}

impl<K: BackendKind + 'static> Service for Backends<K> {
    fn name(&self) -> &'static str {
        K::KIND
    }

    /// The devices learn it from `@releaseDomain` (RELEASE fires it): work in flight
    /// finishes first, and the frames it holds keep the hypervisor's accounting of the
    /// destroyed domain until then.
    fn domain_gone(&mut self, _id: DomId) {
        self.dirty = true;
    }

    fn poll(&mut self, fired: &[Port]) -> bool {
        let mut moved = self.watch_events();
        if (self.add_later || !self.step_later.is_empty()) && !crate::services::heap_short() {
            if self.add_later {
                self.add_domains();
            }
            for d in core::mem::take(&mut self.step_later) {
                self.step(d);
            }
            moved = true;
        }
        for p in fired {
            if let Some(&d) = self.ports.get(p) {
                self.service(d);
            }
        }
        // Devices with work of their own (no allocation: this runs on every wake-up).
        let mut from = Bound::Unbounded;
        while let Some(d) = self
            .devs
            .range((from, Bound::Unbounded))
            .find(|(_, dev)| self.kind.needs_service(&dev.driver))
            .map(|(d, _)| *d)
        {
            self.service(d);
            from = Bound::Excluded(d);
        }
        moved
    }

    fn has_work(&self) -> bool {
        self.devs.values().any(|dev| self.kind.needs_service(&dev.driver))
    }
}
