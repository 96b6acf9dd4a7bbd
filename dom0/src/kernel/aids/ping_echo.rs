//! dom0's xenstore echo: any value a domU writes to its `data/ping` node is copied into its
//! `data/pong`, so a domU can check that a watch fires when dom0 writes (the demo domU's
//! `xstest`). The node is the domU's: dom0 only copies what it may read into a node the
//! domain owns, through the same client any domain uses.

use crate::services::{DomainInfo, Service};
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use core::cell::RefCell;
use dom0::local_xs::DomainWatches;
use dom0::xenstore::Xenstore;
use hypercall_abi::{DomId, Port};
use pv_guest_kernel::println;
use pv_guest_kernel::xenbus::TxId;

fn ping_path(id: DomId) -> String {
    format!("/local/domain/{}/data/ping", id.0)
}

pub struct PingEcho {
    w: DomainWatches,
}

impl PingEcho {
    pub fn new(xs: &Rc<RefCell<Xenstore>>) -> PingEcho {
        PingEcho { w: DomainWatches::new(xs, "ping") }
    }
}

impl Service for PingEcho {
    fn name(&self) -> &'static str {
        "ping-echo"
    }

    fn domain_added(&mut self, d: &DomainInfo) -> Option<String> {
        if let Err(e) = self.w.watch(d.id, &ping_path(d.id)) {
            println!("dom0: d{}: cannot watch data/ping: {e}", d.id.0);
        }
        None
    }

    fn domain_gone(&mut self, id: DomId) {
        self.w.unwatch(id, &ping_path(id));
    }

    fn poll(&mut self, _fired: &[Port]) -> bool {
        let fired = self.w.fired();
        for &id in &fired {
            if let Ok(v) = self.w.xb.read(TxId::NONE, &ping_path(id)) {
                let pong = format!("/local/domain/{}/data/pong", id.0);
                if let Err(e) = self.w.xb.write(TxId::NONE, &pong, &v) {
                    println!("dom0: d{}: echo failed: {e}", id.0);
                }
            }
        }
        !fired.is_empty()
    }
}
