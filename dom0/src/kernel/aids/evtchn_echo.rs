//! dom0's event-channel echo: the far end of the `evtchn.pingpong` benchmark, and a way for
//! any domU to check that an interdomain channel to dom0 works.
//!
//! A domU allocates a port unbound for dom0 and writes its number to its own
//! `data/evtchn-echo` node; dom0 watches that node in every domU, binds the port and attaches
//! [`echo`], which sends straight back from the upcall. The round trip therefore never passes
//! through dom0's control loop: it is hypervisor delivery, dom0's upcall and one send, which
//! is what the benchmark means to measure. Writing another port moves the echo there;
//! removing the node (or writing anything that is not a port) unbinds it, and the domain's
//! retirement tears it down.
//!
//! The node is the domU's to write, so its value is hostile: it must be a decimal port of the
//! 2-level ABI, and each domU gets at most one echo port. The hypervisor checks the rest
//! (the port must be unbound and allocated for dom0). Each echo costs dom0 one upcall and
//! one send, paid for by a send of the domU's, so a domU cannot make dom0 do more work than
//! it does itself.

use crate::services::{DomainInfo, Service};
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use core::cell::RefCell;

use dom0::local_xs::DomainWatches;
use dom0::xenstore::Xenstore;
use hypercall_abi::{DomId, Port};
use pv_guest_kernel::xenbus::TxId;
use pv_guest_kernel::{events, println};

/// Sends the event straight back on the port it came in on: the other end is the domU's.
fn echo(port: Port) {
    let _ = events::send(port);
}

fn node(id: DomId) -> String {
    format!("/local/domain/{}/data/evtchn-echo", id.0)
}

/// A port number as a domU may write it: decimal, non-zero, inside the 2-level ABI.
fn parse_port(value: &[u8]) -> Option<Port> {
    let s = core::str::from_utf8(value).ok()?.trim();
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = s.parse().ok()?;
    (1..events::NR_PORTS as u64).contains(&n).then_some(Port(n as u32))
}

/// A bound echo: the domU's port and ours.
#[derive(Clone, Copy)]
struct Bound {
    remote: Port,
    local: Port,
}

/// The echo ports of every domU.
pub struct EvtchnEcho {
    w: DomainWatches,
    bound: BTreeMap<DomId, Bound>,
}

impl EvtchnEcho {
    pub fn new(xs: &Rc<RefCell<Xenstore>>) -> EvtchnEcho {
        EvtchnEcho { w: DomainWatches::new(xs, "evtchn-echo"), bound: BTreeMap::new() }
    }

    /// `id`'s node changed: binds the port it names, moves the echo, or unbinds it.
    fn changed(&mut self, id: DomId) {
        let want = match self.w.xb.read(TxId::NONE, &node(id)) {
            Ok(v) => {
                let p = parse_port(&v);
                if p.is_none() {
                    println!("dom0: d{}: data/evtchn-echo is not a port; echo off", id.0);
                }
                p
            }
            Err(_) => None,
        };
        let have = self.bound.get(&id).copied();
        if have.map(|b| b.remote) == want {
            return;
        }
        self.unbind(id);
        let Some(remote) = want else { return };
        match events::bind_interdomain(id, remote) {
            Ok(local) => {
                // A bind leaves our end pending (Xen does so): the first echo goes out as
                // the handler is attached, which the domU may take as "connected".
                if let Err(e) = events::attach(local, echo) {
                    println!("dom0: d{}: echo port {} not attached: {e}", id.0, local.0);
                    let _ = events::close(local);
                    return;
                }
                self.bound.insert(id, Bound { remote, local });
                println!("dom0: d{}: event-channel echo on its port {} (ours {})", id.0, remote.0, local.0);
            }
            Err(e) => println!("dom0: d{}: cannot bind its port {} for the echo: {e}", id.0, remote.0),
        }
    }

    fn unbind(&mut self, id: DomId) {
        if let Some(b) = self.bound.remove(&id) {
            let _ = events::close(b.local);
            println!("dom0: d{}: event-channel echo off (its port {})", id.0, b.remote.0);
        }
    }
}

impl Service for EvtchnEcho {
    fn name(&self) -> &'static str {
        "evtchn-echo"
    }

    /// Starts watching the domain's `data/evtchn-echo` (the watch fires once at once).
    fn domain_added(&mut self, d: &DomainInfo) -> Option<String> {
        if let Err(e) = self.w.watch(d.id, &node(d.id)) {
            println!("dom0: d{}: cannot watch data/evtchn-echo: {e}", d.id.0);
        }
        None
    }

    /// Stops watching and closes the domain's echo port.
    fn domain_gone(&mut self, id: DomId) {
        self.w.unwatch(id, &node(id));
        if let Some(b) = self.bound.remove(&id) {
            let _ = events::close(b.local);
        }
    }

    fn poll(&mut self, _fired: &[Port]) -> bool {
        let fired = self.w.fired();
        for &id in &fired {
            self.changed(id);
        }
        !fired.is_empty()
    }
}
