//! Models for host tests of the framework and of drivers built on it: a xenstore with
//! watches and a write log, and a hypervisor world of pages, grants, grant mappings and event
//! channels that both ends of a device use, checking each call as the real hypervisor would
//! and counting what is still held so a test can assert that teardown released everything.
//! Built only for tests: this crate's, and other crates' through the `test-doubles` feature.

use super::{BackendOps, EventOps, FrontendOps, Store, XsOps};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use hypercall_abi::io::ring::{AtomicPage, RingMemory};
use hypercall_abi::{DomId, Errno, GrantRef, Mfn, Port};

/// Nodes, watches and every write in order.
#[derive(Default, Debug)]
pub struct ModelStore {
    pub nodes: BTreeMap<String, Vec<u8>>,
    pub watches: BTreeSet<(String, String)>,
    /// `path=value` of every write, in order.
    pub log: Vec<String>,
    /// Writes under this prefix fail with `EACCES`.
    pub deny_prefix: Option<String>,
}

impl ModelStore {
    pub fn get(&self, path: &str) -> Option<&str> {
        self.nodes.get(path).map(|v| core::str::from_utf8(v).unwrap())
    }
    pub fn set(&mut self, path: &str, v: &str) {
        self.nodes.insert(path.into(), v.as_bytes().to_vec());
    }
    /// Index in the log of the first write of `path` (with `value` if given).
    pub fn written_at(&self, path: &str, value: Option<&str>) -> Option<usize> {
        self.log.iter().position(|l| match value {
            Some(v) => *l == alloc::format!("{path}={v}"),
            None => l.starts_with(&alloc::format!("{path}=")),
        })
    }
}

impl Store for ModelStore {
    fn read_node(&mut self, path: &str) -> Result<Vec<u8>, Errno> {
        self.nodes.get(path).cloned().ok_or(Errno::ENOENT)
    }
    fn write_node(&mut self, path: &str, value: &[u8]) -> Result<(), Errno> {
        if self.deny_prefix.as_deref().is_some_and(|p| path.starts_with(p)) {
            return Err(Errno::EACCES);
        }
        self.log.push(alloc::format!("{path}={}", String::from_utf8_lossy(value)));
        self.nodes.insert(path.into(), value.to_vec());
        Ok(())
    }
}

impl XsOps for ModelStore {
    fn watch(&mut self, path: &str, token: &str) -> Result<(), Errno> {
        self.watches.insert((path.into(), token.into()));
        Ok(())
    }
    fn unwatch(&mut self, path: &str, token: &str) -> Result<(), Errno> {
        if self.watches.remove(&(path.into(), token.into())) {
            Ok(())
        } else {
            Err(Errno::ENOENT)
        }
    }
}

/// A page of the model, shared by its owner and whoever maps it.
#[derive(Clone, Debug)]
pub struct ModelPage {
    pub mfn: Mfn,
    pub page: Rc<AtomicPage>,
}

impl RingMemory for ModelPage {
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
        self.page.read_bytes(off, buf)
    }
    fn write_bytes(&self, off: usize, data: &[u8]) {
        self.page.write_bytes(off, data)
    }
}

#[derive(Debug)]
struct Grant {
    owner: DomId,
    to: DomId,
    mfn: Mfn,
    readonly: bool,
    maps: u32,
}

#[derive(Debug)]
struct Chan {
    owner: DomId,
    remote: DomId,
    /// The other end once bound.
    peer: Option<(DomId, Port)>,
}

/// The hypervisor's side: what exists, who holds it.
#[derive(Debug, Default)]
pub struct World {
    next_mfn: u64,
    pages: BTreeMap<u64, (DomId, Rc<AtomicPage>)>,
    next_gref: u32,
    grants: BTreeMap<u32, Grant>,
    chans: BTreeMap<(u16, u32), Chan>,
    next_port: BTreeMap<u16, u32>,
    /// Ports notified (the receiving end), in order.
    pub notified: Vec<(DomId, Port)>,
    /// The next call of this name fails with `ENOMEM`.
    pub fail: Option<&'static str>,
    /// Calls the real hypervisor would refuse (freeing a granted page...): must stay empty.
    pub violations: Vec<String>,
}

/// What a domain still holds in the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub pages: usize,
    pub grants: usize,
    pub maps: u32,
    pub ports: usize,
}

impl World {
    pub fn held(&self, d: DomId) -> Held {
        Held {
            pages: self.pages.values().filter(|p| p.0 == d).count(),
            grants: self.grants.values().filter(|g| g.owner == d).count(),
            maps: self.grants.values().filter(|g| g.to == d).map(|g| g.maps).sum(),
            ports: self.chans.keys().filter(|k| k.0 == d.0).count(),
        }
    }
    fn failing(&mut self, name: &'static str) -> Result<(), Errno> {
        if self.fail == Some(name) {
            self.fail = None;
            return Err(Errno::ENOMEM);
        }
        Ok(())
    }
    /// True if `(d, port)` is open and bound to a peer.
    pub fn bound(&self, d: DomId, port: Port) -> bool {
        self.chans.get(&(d.0, port.0)).is_some_and(|c| c.peer.is_some())
    }
}

/// One domain's view of the world: implements the framework's traits as that domain.
#[derive(Clone, Debug)]
pub struct Side {
    pub world: Rc<RefCell<World>>,
    pub me: DomId,
}

impl Side {
    pub fn pair() -> (Side, Side) {
        let world = Rc::new(RefCell::new(World { next_mfn: 0x100, next_gref: 8, ..Default::default() }));
        (Side { world: world.clone(), me: DomId(1) }, Side { world, me: DomId(0) })
    }
    pub fn held(&self) -> Held {
        self.world.borrow().held(self.me)
    }
}

impl EventOps for Side {
    fn alloc_unbound(&mut self, remote: DomId) -> Result<Port, Errno> {
        let mut w = self.world.borrow_mut();
        w.failing("alloc_unbound")?;
        let next = w.next_port.entry(self.me.0).or_insert(1);
        let p = *next;
        *next += 1;
        w.chans.insert((self.me.0, p), Chan { owner: self.me, remote, peer: None });
        Ok(Port(p))
    }
    fn bind_interdomain(&mut self, remote: DomId, remote_port: Port) -> Result<Port, Errno> {
        let mut w = self.world.borrow_mut();
        w.failing("bind_interdomain")?;
        match w.chans.get(&(remote.0, remote_port.0)) {
            Some(c) if c.owner == remote && c.remote == self.me && c.peer.is_none() => {}
            _ => return Err(Errno::EINVAL),
        }
        let next = w.next_port.entry(self.me.0).or_insert(1);
        let p = *next;
        *next += 1;
        w.chans.insert((self.me.0, p), Chan { owner: self.me, remote, peer: Some((remote, remote_port)) });
        if let Some(c) = w.chans.get_mut(&(remote.0, remote_port.0)) {
            c.peer = Some((self.me, Port(p)));
        }
        Ok(Port(p))
    }
    fn notify(&mut self, port: Port) {
        let mut w = self.world.borrow_mut();
        match w.chans.get(&(self.me.0, port.0)).and_then(|c| c.peer) {
            Some(peer) => w.notified.push(peer),
            None => w.violations.push(alloc::format!("d{} notifies unbound port {}", self.me.0, port.0)),
        }
    }
    fn close(&mut self, port: Port) {
        let mut w = self.world.borrow_mut();
        match w.chans.remove(&(self.me.0, port.0)) {
            Some(c) => {
                if let Some((d, p)) = c.peer {
                    if let Some(pc) = w.chans.get_mut(&(d.0, p.0)) {
                        pc.peer = None;
                    }
                }
            }
            None => w.violations.push(alloc::format!("d{} closes unknown port {}", self.me.0, port.0)),
        }
    }
}

impl FrontendOps for Side {
    type Page = ModelPage;
    fn alloc_page(&mut self) -> Result<(ModelPage, Mfn), Errno> {
        let mut w = self.world.borrow_mut();
        w.failing("alloc_page")?;
        let mfn = Mfn(w.next_mfn);
        w.next_mfn += 1;
        let page = Rc::new(AtomicPage::new());
        w.pages.insert(mfn.0, (self.me, page.clone()));
        Ok((ModelPage { mfn, page }, mfn))
    }
    fn free_page(&mut self, page: ModelPage) {
        let mut w = self.world.borrow_mut();
        if w.grants.values().any(|g| g.mfn == page.mfn) {
            w.violations.push(alloc::format!("page {:#x} freed while granted", page.mfn.0));
        }
        if w.pages.remove(&page.mfn.0).is_none() {
            w.violations.push(alloc::format!("page {:#x} freed twice", page.mfn.0));
        }
    }
    fn grant(&mut self, to: DomId, mfn: Mfn, readonly: bool) -> Result<GrantRef, Errno> {
        let mut w = self.world.borrow_mut();
        w.failing("grant")?;
        let r = w.next_gref;
        w.next_gref += 1;
        w.grants.insert(r, Grant { owner: self.me, to, mfn, readonly, maps: 0 });
        Ok(GrantRef(r))
    }
    fn end_grant(&mut self, gref: GrantRef) -> Result<(), Errno> {
        let mut w = self.world.borrow_mut();
        match w.grants.get(&gref.0) {
            Some(g) if g.owner != self.me => Err(Errno::EINVAL),
            Some(g) if g.maps > 0 => Err(Errno::EBUSY),
            Some(_) => {
                w.grants.remove(&gref.0);
                Ok(())
            }
            None => Err(Errno::EINVAL),
        }
    }
}

impl BackendOps for Side {
    type Mapping = ModelPage;
    fn map_ring(&mut self, frontend: DomId, gref: GrantRef) -> Result<ModelPage, Errno> {
        let mut w = self.world.borrow_mut();
        w.failing("map_ring")?;
        let g = w.grants.get_mut(&gref.0).ok_or(Errno::ENOENT)?;
        if g.owner != frontend || g.to != self.me || g.readonly {
            return Err(Errno::EACCES);
        }
        g.maps += 1;
        let mfn = g.mfn;
        let page = w.pages.get(&mfn.0).map(|p| p.1.clone()).ok_or(Errno::EFAULT)?;
        Ok(ModelPage { mfn, page })
    }
    fn unmap_ring(&mut self, ring: ModelPage) -> Result<(), Errno> {
        let mut w = self.world.borrow_mut();
        let me = self.me;
        match w.grants.values_mut().find(|g| g.mfn == ring.mfn && g.to == me && g.maps > 0) {
            Some(g) => {
                g.maps -= 1;
                Ok(())
            }
            None => {
                w.violations.push(alloc::format!("unmap of {:#x} not mapped", ring.mfn.0));
                Err(Errno::EINVAL)
            }
        }
    }
}
