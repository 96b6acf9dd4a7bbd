//! dom0's own connection to its in-process xenstored, as a xenbus [`Transport`], so dom0's
//! code (the console backend's handshake, the demo's echo service) uses exactly the client
//! API the domUs use. Requests are answered synchronously while being sent, so there is never
//! anything to wait for: [`Transport::wait`] fails with `ETIMEDOUT` (a reply that is not there
//! after the send will never come).
//!
//! The store is shared with the ring service loop through `Rc<RefCell<_>>`; dom0 runs
//! xenstored and its clients on one vCPU and never from event handlers, so a borrow never
//! overlaps another.

use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use hypercall_abi::{DomId, Errno};
use pv_guest_kernel::xenbus::{Transport, WatchEvent, Xenbus};

use crate::xenstore::{ConnId, FeedError, Xenstore};

/// A local connection of the shared store.
pub struct LocalTransport {
    xs: Rc<RefCell<Xenstore>>,
    conn: ConnId,
}

impl LocalTransport {
    /// Opens a connection acting as `domid` (privileged for dom0).
    pub fn connect(xs: &Rc<RefCell<Xenstore>>, domid: DomId) -> LocalTransport {
        let conn = xs.borrow_mut().connect_local(domid);
        LocalTransport { xs: xs.clone(), conn }
    }

    /// The store's id of the connection.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    /// Bytes the store has queued for this client (replies it gave up on, watch events).
    pub fn pending(&self) -> usize {
        self.xs.try_borrow().map_or(0, |xs| xs.pending_output(self.conn))
    }
}

impl Drop for LocalTransport {
    fn drop(&mut self) {
        if let Ok(mut xs) = self.xs.try_borrow_mut() {
            xs.disconnect(self.conn);
        }
    }
}

impl Transport for LocalTransport {
    fn send(&mut self, bytes: &[u8]) -> Result<usize, Errno> {
        let mut xs = self.xs.try_borrow_mut().map_err(|_| Errno::EBUSY)?;
        match xs.feed(self.conn, bytes) {
            Ok(n) => Ok(n),
            Err(FeedError::NoConnection) => Err(Errno::ENOTCONN),
            Err(FeedError::Protocol(_)) => Err(Errno::EIO),
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, Errno> {
        let mut xs = self.xs.try_borrow_mut().map_err(|_| Errno::EBUSY)?;
        Ok(xs.read_output(self.conn, buf))
    }

    fn wait(&mut self) -> Result<(), Errno> {
        Err(Errno::ETIMEDOUT)
    }
}

/// The watch events a local client has, taken without a look when it cannot have any:
/// nothing queued for it in the store and not used since the last look (`dirty`). Handling
/// events uses the client, so after any the next call looks again.
pub fn take_events(xb: &mut Xenbus<LocalTransport>, dirty: &mut bool) -> Vec<WatchEvent> {
    if xb.transport_mut().pending() == 0 && !core::mem::take(dirty) {
        return Vec::new();
    }
    let mut out = Vec::new();
    while let Ok(Some(ev)) = xb.next_watch_event() {
        out.push(ev);
    }
    *dirty = !out.is_empty();
    out
}

/// A local client of dom0's watching one node per domain, each with the token
/// `<kind>:<domid>` (a service's watches on the domains it serves).
pub struct DomainWatches {
    pub xb: Xenbus<LocalTransport>,
    kind: &'static str,
    dirty: bool,
}

impl DomainWatches {
    /// dom0's client for watches of `kind`.
    pub fn new(xs: &Rc<RefCell<Xenstore>>, kind: &'static str) -> DomainWatches {
        DomainWatches { xb: client(xs, DomId::DOM0), kind, dirty: true }
    }

    fn token(&self, id: DomId) -> String {
        format!("{}:{}", self.kind, id.0)
    }

    /// Watches `path` for domain `id` (the watch fires once at once).
    pub fn watch(&mut self, id: DomId, path: &str) -> Result<(), Errno> {
        self.dirty = true;
        let token = self.token(id);
        self.xb.watch(path, &token)
    }

    /// Stops watching `path` for domain `id`.
    pub fn unwatch(&mut self, id: DomId, path: &str) {
        self.dirty = true;
        let token = self.token(id);
        let _ = self.xb.unwatch(path, &token);
    }

    /// The client was used for something else: events may be waiting.
    pub fn used(&mut self) {
        self.dirty = true;
    }

    /// The domains whose watch fired since the last call, in order.
    pub fn fired(&mut self) -> Vec<DomId> {
        let kind = self.kind;
        take_events(&mut self.xb, &mut self.dirty)
            .iter()
            .filter_map(|ev| ev.token.strip_prefix(kind)?.strip_prefix(':')?.parse::<u16>().ok().map(DomId))
            .collect()
    }
}

/// A xenbus client of the shared store acting as `domid`.
pub fn client(xs: &Rc<RefCell<Xenstore>>, domid: DomId) -> Xenbus<LocalTransport> {
    Xenbus::new(LocalTransport::connect(xs, domid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pv_guest_kernel::xenbus::TxId;

    #[test]
    fn dom0_and_a_local_domu_client() {
        let xs = Rc::new(RefCell::new(Xenstore::default()));
        let mut d0 = client(&xs, DomId::DOM0);
        d0.write(TxId::NONE, "/local/domain/0/name", b"Domain-0").unwrap();
        assert_eq!(d0.read_string(TxId::NONE, "name").unwrap(), "Domain-0");
        d0.watch("/local/domain/0/x", "t").unwrap();
        assert_eq!(d0.next_watch_event().unwrap().unwrap().token, "t");
        assert_eq!(d0.next_watch_event().unwrap(), None);
        let mut other = client(&xs, DomId(3));
        assert_eq!(other.write(TxId::NONE, "/local/domain/0/x", b"1"), Err(Errno::EACCES));
        d0.write(TxId::NONE, "/local/domain/0/x", b"1").unwrap();
        assert_eq!(d0.next_watch_event().unwrap().unwrap().path, "/local/domain/0/x");
        // Nothing to wait for: a blocking call fails instead of hanging.
        assert_eq!(d0.wait_watch_event(), Err(Errno::ETIMEDOUT));
        let before = xs.borrow().watch_count(d0.transport_mut().conn());
        assert_eq!(before, 1);
        drop(d0);
        assert_eq!(xs.borrow().watch_count(ConnId(1)), 0, "dropping the client disconnects");
    }

    #[test]
    fn events_are_taken_only_when_there_can_be_some() {
        let xs = Rc::new(RefCell::new(Xenstore::default()));
        let mut a = client(&xs, DomId::DOM0);
        let mut dirty = true;
        a.watch("/local/domain/0/a", "t").unwrap();
        assert_eq!(take_events(&mut a, &mut dirty).len(), 1, "the registration's event");
        assert!(dirty, "handling may have caused more");
        assert!(take_events(&mut a, &mut dirty).is_empty());
        assert!(!dirty);
        // Another client's write queues an event for this one: found without `dirty`.
        let mut b = client(&xs, DomId::DOM0);
        b.write(TxId::NONE, "/local/domain/0/a", b"1").unwrap();
        assert_eq!(take_events(&mut a, &mut dirty).len(), 1);
    }

    #[test]
    fn domain_watches_report_the_domains_whose_node_fired() {
        let xs = Rc::new(RefCell::new(Xenstore::default()));
        let mut w = DomainWatches::new(&xs, "ping");
        w.watch(DomId(3), "/local/domain/3/data/ping").unwrap();
        w.watch(DomId(4), "/local/domain/4/data/ping").unwrap();
        assert_eq!(w.fired(), [DomId(3), DomId(4)], "each registration fires");
        assert!(w.fired().is_empty());
        let mut d0 = client(&xs, DomId::DOM0);
        d0.write(TxId::NONE, "/local/domain/4/data/ping", b"x").unwrap();
        d0.write(TxId::NONE, "/local/domain/5/data/ping", b"x").unwrap();
        assert_eq!(w.fired(), [DomId(4)]);
        w.unwatch(DomId(4), "/local/domain/4/data/ping");
        d0.write(TxId::NONE, "/local/domain/4/data/ping", b"y").unwrap();
        assert!(w.fired().is_empty());
    }
}
