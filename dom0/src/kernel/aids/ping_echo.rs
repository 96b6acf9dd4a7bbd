//! dom0's xenstore echo: any value a domU writes to its `data/ping` node is copied into its
//! `data/pong`, so a domU can check that a watch fires when dom0 writes (the demo domU's
//! `xstest`). The node is the domU's: dom0 only copies what it may read into a node the
//! domain owns, through the same client any domain uses.

use crate::services::{DomainInfo, Service};
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use core::cell::RefCell;
use dom0::local_xs::{self, LocalTransport};
use dom0::xenstore::Xenstore;
use hypercall_abi::{DomId, Port};
use pv_guest_kernel::println;
use pv_guest_kernel::xenbus::{TxId, Xenbus};

/// The watch token's kind (`ping:<domid>`).
const TOKEN_KIND: &str = "ping";

fn ping_path(id: DomId) -> String {
    format!("/local/domain/{}/data/ping", id.0)
}

fn token(id: DomId) -> String {
    format!("{TOKEN_KIND}:{}", id.0)
}

pub struct PingEcho {
    xb: Xenbus<LocalTransport>,
    dirty: bool,
}

impl PingEcho {
    pub fn new(xs: &Rc<RefCell<Xenstore>>) -> PingEcho {
        PingEcho { xb: local_xs::client(xs, DomId::DOM0), dirty: true }
    }
}

impl Service for PingEcho {
    fn name(&self) -> &'static str {
        "ping-echo"
    }

    fn domain_added(&mut self, d: &DomainInfo) -> Option<String> {
        if let Err(e) = self.xb.watch(&ping_path(d.id), &token(d.id)) {
            println!("dom0: d{}: cannot watch data/ping: {e}", d.id.0);
        }
        self.dirty = true;
        None
    }

    fn domain_gone(&mut self, id: DomId) {
        let _ = self.xb.unwatch(&ping_path(id), &token(id));
        self.dirty = true;
    }

    fn poll(&mut self, _fired: &[Port]) -> bool {
        let mut moved = false;
        for ev in local_xs::take_events(&mut self.xb, &mut self.dirty) {
            moved = true;
            let id = ev.token.strip_prefix(TOKEN_KIND).and_then(|t| t.strip_prefix(':'));
            let Some(id) = id.and_then(|n| n.parse::<u16>().ok()).map(DomId) else { continue };
            if let Ok(v) = self.xb.read(TxId::NONE, &ping_path(id)) {
                let pong = format!("/local/domain/{}/data/pong", id.0);
                if let Err(e) = self.xb.write(TxId::NONE, &pong, &v) {
                    println!("dom0: d{}: echo failed: {e}", id.0);
                }
            }
        }
        moved
    }
}
