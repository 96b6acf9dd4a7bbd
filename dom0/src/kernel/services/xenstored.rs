//! xenstored as a service: the store ([`dom0::xenstore`], shared with dom0's own clients) and
//! each introduced domain's ring ([`dom0::store_ring`]), mapped through the grant the domain
//! builder reserved for dom0 or by foreign mapping ([`crate::foreign`]).
//!
//! The store says what to do with rings through its actions: map and bind on INTRODUCE,
//! reset on a re-INTRODUCE, unmap and close on RELEASE, write the error code of a connection
//! that broke the protocol. A ring is served when its port fired, at most
//! [`dom0::store_ring::MESSAGES_PER_PASS`] requests at a time (its port is raised again if
//! it has more, so every other ring is served first), and whenever the store has output
//! queued for it (replies, and watch events other clients' writes caused).
//!
//! Memory: xenstored gets half of dom0's heap, shared out as per-domain quotas
//! ([`Quotas::fitting`]); below one domain's quota plus [`HEAP_HEADROOM`] of free heap, the
//! store refuses domUs' requests that would make it hold more, so no client's request can
//! reach a failing allocation.

use super::{DomainInfo, Service};
use crate::foreign::{self, ForeignPage, How};
use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::string::String;
use core::cell::RefCell;
use dom0::store_ring::StoreRing;
use dom0::xenstore::{Action, ConnId, Quotas, Xenstore};
use hypercall_abi::grant_table::GNTTAB_RESERVED_XENSTORE;
use hypercall_abi::{DomId, Errno, Mfn, Port};
use pv_guest_kernel::split::kernel::{KernelOps, PENDING};
use pv_guest_kernel::split::EventOps;
use pv_guest_kernel::{events, heap, println};

/// Heap kept free beyond one domain's quota: what one request may need at most.
pub const HEAP_HEADROOM: usize = 256 * 1024;

/// One introduced domain's ring.
struct Ring {
    ring: StoreRing,
    page: ForeignPage,
    port: Port,
}

/// The xenstored service.
pub struct Xenstored {
    xs: Rc<RefCell<Xenstore>>,
    rings: BTreeMap<DomId, Ring>,
    ports: BTreeMap<Port, DomId>,
    /// The heap was below its reserve at the last look.
    heap_low: bool,
}

impl Xenstored {
    /// A store whose per-domain quotas fit half of dom0's heap among `domains` domUs.
    pub fn new(domains: usize) -> Xenstored {
        let heap = heap::stats().size;
        let quotas = Quotas::fitting(heap / 2, domains);
        println!(
            "dom0: xenstored: {} KiB of memory per domain ({domains} domU(s), {} KiB heap)",
            quotas.memory_per_domain / 1024,
            heap / 1024
        );
        super::set_heap_reserve(quotas.memory_per_domain + HEAP_HEADROOM);
        Xenstored {
            xs: Rc::new(RefCell::new(Xenstore::new(quotas))),
            rings: BTreeMap::new(),
            ports: BTreeMap::new(),
            heap_low: false,
        }
    }

    /// The store, for dom0's own clients.
    pub fn store(&self) -> &Rc<RefCell<Xenstore>> {
        &self.xs
    }

    /// Keeps the store told whether the heap is below its reserve.
    fn check_heap(&mut self) {
        let low = super::heap_short();
        if low != self.heap_low {
            let what =
                if low { "short: domUs' requests that would allocate are refused" } else { "ok again" };
            println!("dom0: heap {what} ({} KiB free)", heap::stats().free / 1024);
            self.heap_low = low;
        }
        self.xs.borrow_mut().set_low_memory(low);
    }

    /// Carries out what the store asked for.
    fn actions(&mut self) {
        let actions = self.xs.borrow_mut().take_actions();
        for a in actions {
            match a {
                Action::Introduce { domid, conn, gfn, port, reset } => match self.rings.get_mut(&domid) {
                    Some(r) if reset => {
                        if r.ring.reset_pending_ack {
                            // The echo of a reconnect the ring service already did.
                            r.ring.reset_pending_ack = false;
                        } else {
                            r.ring.reset(&r.page.page());
                            let _ = events::send(r.port);
                        }
                    }
                    Some(_) => {}
                    None => match attach(domid, conn, gfn, port) {
                        Ok(r) => {
                            self.ports.insert(r.port, domid);
                            self.rings.insert(domid, r);
                        }
                        Err(e) => println!("dom0: d{}: cannot serve its xenstore ring: {e}", domid.0),
                    },
                },
                Action::Release { domid, .. } => {
                    if let Some(r) = self.rings.remove(&domid) {
                        self.ports.remove(&r.port);
                        let _ = events::close(r.port);
                        PENDING.take(r.port);
                        if let Err(e) = foreign::unmap(r.page) {
                            println!("dom0: d{}: unmapping its xenstore ring failed: {e}", domid.0);
                        }
                    }
                }
                Action::ConnectionBroken { domid, ring_error, .. } => {
                    if let Some(r) = self.rings.get_mut(&domid) {
                        if r.ring.broken.is_none() {
                            r.ring.break_with(&r.page.page(), ring_error);
                            let _ = events::send(r.port);
                        }
                    }
                    println!("dom0: d{}: xenstore protocol error {ring_error}, ring ignored", domid.0);
                }
            }
        }
    }
}

/// Serves one ring; true if it moved.
fn serve(xs: &mut Xenstore, r: &mut Ring) -> bool {
    let done = r.ring.service(xs, &r.page.page());
    if done.notify {
        let _ = events::send(r.port);
    }
    if done.more {
        // Its budget ran out: the others first, then it again.
        PENDING.raise(r.port);
    }
    done.notify
}

impl Service for Xenstored {
    fn name(&self) -> &'static str {
        "xenstored"
    }

    fn domain_added(&mut self, d: &DomainInfo) -> Option<String> {
        self.actions();
        let how = self.rings.get(&d.id).map(|r| r.page.how);
        Some(alloc::format!("xenstore {}", served(how)))
    }

    /// RELEASE (firing `@releaseDomain`, unmapping the ring) and the domain's nodes removed.
    fn domain_gone(&mut self, id: DomId) {
        {
            let mut xs = self.xs.borrow_mut();
            if xs.is_introduced(id) {
                if let Err(e) = xs.release_domain(id) {
                    println!("dom0: d{}: RELEASE failed: {e}", id.0);
                }
            }
            if let Err(e) = xs.remove_domain_nodes(id) {
                println!("dom0: d{}: removing its nodes failed: {e}", id.0);
            }
        }
        self.actions();
    }

    fn poll(&mut self, fired: &[Port]) -> bool {
        self.check_heap();
        let mut moved = false;
        {
            let mut xs = self.xs.borrow_mut();
            for p in fired {
                if let Some(r) = self.ports.get(p).and_then(|id| self.rings.get_mut(id)) {
                    moved |= serve(&mut xs, r);
                }
            }
            // Rings the store has output for: replies, and watch events others' writes caused.
            for r in self.rings.values_mut() {
                if xs.pending_output(r.ring.conn) > 0 {
                    moved |= serve(&mut xs, r);
                }
            }
        }
        self.actions();
        moved
    }
}

/// Maps an introduced domain's xenstore ring and binds its port.
fn attach(domid: DomId, conn: ConnId, gfn: u64, remote: Port) -> Result<Ring, Errno> {
    let page = foreign::map(domid, GNTTAB_RESERVED_XENSTORE, Mfn(gfn))?;
    let port = match KernelOps.bind_interdomain(domid, remote) {
        Ok(p) => p,
        Err(e) => {
            let _ = foreign::unmap(page);
            return Err(e);
        }
    };
    let ring = StoreRing::new(domid, conn, gfn, remote);
    ring.advertise(&page.page());
    Ok(Ring { ring, page, port })
}

/// How a ring is served, for the adoption's log line.
pub fn served(how: Option<How>) -> &'static str {
    match how {
        Some(How::Grant(_)) => "served (granted ring)",
        Some(How::Foreign) => "served (foreign-mapped ring)",
        None => "not served",
    }
}
