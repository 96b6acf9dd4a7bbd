//! dom0's services and the one shape they share.
//!
//! Everything dom0 serves is a [`Service`]: xenstored ([`xenstored`]), the console backend
//! ([`console`]), `xl mem-set` ([`mem_set`]), every kind of split-driver backend
//! ([`crate::backends`]) and, with the `test-aids` feature, the test and benchmark aids
//! ([`crate::aids`]). A service owns its state for every domain it serves and hears about
//! the rest of the world in three ways only:
//! * [`Service::domain_added`] / [`Service::domain_gone`]: the toolstack
//!   ([`crate::toolstack`]) adopted a domain, or is about to destroy one (everything held for
//!   it must be released first);
//! * [`Service::poll`]: the ports that fired since the last pass (every port a service
//!   binds has the split framework's handler, which only marks it in `PENDING`), plus the
//!   service's own xenstore watches;
//! * [`Service::has_work`]: work without an event (a device completion), asked before dom0
//!   blocks.
//!
//! [`Services`] is the loop's side: it drains `PENDING` and passes the fired ports to every
//! service until nothing moves (bounded), and fans the toolstack's news out in order.

pub mod console;
pub mod mem_set;
pub mod xenstored;

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};
use hypercall_abi::{DomId, Mfn, Port};
use pv_guest_kernel::heap;
use pv_guest_kernel::split::kernel::PENDING;

/// Free heap dom0 keeps for what any one request may need: one domain's xenstored quota and
/// some ([`xenstored::Xenstored::new`] sets it).
static HEAP_RESERVE: AtomicUsize = AtomicUsize::new(0);

/// Sets the heap reserve.
pub fn set_heap_reserve(bytes: usize) {
    HEAP_RESERVE.store(bytes, Ordering::Relaxed);
}

/// True while dom0's heap is below its reserve: every service refuses (or defers) the
/// clients' requests that would make it allocate, so none can reach a failing allocation.
pub fn heap_short() -> bool {
    heap::stats().free < HEAP_RESERVE.load(Ordering::Relaxed)
}

/// Passes of one [`Services::poll`] while services keep moving (a request on one ring can
/// queue output and watch events for others).
const MAX_PASSES: usize = 8;

/// A ring the domain builder set up for a domain: its frame and the domain's port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuiltRing {
    pub mfn: Mfn,
    pub port: Port,
}

/// A domain the toolstack adopted: its nodes are written and it is introduced to xenstored
/// (which learns its xenstore ring from the INTRODUCE).
#[derive(Clone, Debug)]
pub struct DomainInfo {
    pub id: DomId,
    pub name: String,
    /// Its console ring, if it has one.
    pub console: Option<BuiltRing>,
}

/// What the service loop needs of every service.
pub trait Service {
    /// What the service is, for the log.
    fn name(&self) -> &'static str;
    /// A domain was adopted. A service that serves every domain sets it up and returns a
    /// few words for the adoption's log line (`xenstore served (granted ring)`).
    fn domain_added(&mut self, _d: &DomainInfo) -> Option<String> {
        None
    }
    /// The domain shut down and is about to be destroyed: release everything held for it
    /// (work in flight may finish later; the service keeps what it still needs until then).
    fn domain_gone(&mut self, _id: DomId) {}
    /// One round: the service's ports among `fired`, its xenstore watches, its own work.
    /// True if it moved anything (it may have queued xenstore output for others).
    fn poll(&mut self, fired: &[Port]) -> bool;
    /// True if there is work without an event having been raised.
    fn has_work(&self) -> bool {
        false
    }
    /// A line of figures when dom0 stops serving.
    fn report(&self) -> Option<String> {
        None
    }
    /// How often the service must be polled though no event came (work the hypervisor
    /// raises no event for), if at all.
    fn poll_every_ns(&self) -> Option<u64> {
        None
    }
}

/// Every service, in the order they were added (news reaches them in that order).
#[derive(Default)]
pub struct Services {
    list: Vec<Box<dyn Service>>,
    /// Ports that fired, drained from `PENDING` each pass (kept to reuse its allocation).
    fired: Vec<Port>,
}

impl Services {
    pub fn add(&mut self, s: Box<dyn Service>) {
        self.list.push(s);
    }

    /// Tells every service about a new domain; their words for the log line.
    pub fn domain_added(&mut self, d: &DomainInfo) -> Vec<String> {
        self.list.iter_mut().filter_map(|s| s.domain_added(d)).collect()
    }

    /// Tells every service a domain is going.
    pub fn domain_gone(&mut self, id: DomId) {
        for s in &mut self.list {
            s.domain_gone(id);
        }
    }

    /// Passes over every service until nothing moves (at most [`MAX_PASSES`]).
    pub fn poll(&mut self) {
        let mut fired = core::mem::take(&mut self.fired);
        for _ in 0..MAX_PASSES {
            fired.clear();
            PENDING.drain(|p| fired.push(p));
            let mut moved = false;
            for s in &mut self.list {
                moved |= s.poll(&fired);
            }
            if !moved && !PENDING.any() {
                break;
            }
        }
        self.fired = fired;
    }

    /// True if something waits without an event.
    pub fn has_work(&self) -> bool {
        PENDING.any() || self.list.iter().any(|s| s.has_work())
    }

    /// The shortest interval a service must be polled at, if any needs it.
    pub fn poll_every_ns(&self) -> Option<u64> {
        self.list.iter().filter_map(|s| s.poll_every_ns()).min()
    }

    /// The services' closing figures.
    pub fn reports(&self) -> Vec<(&'static str, String)> {
        self.list.iter().filter_map(|s| Some((s.name(), s.report()?))).collect()
    }
}
