//! `xl mem-set` as a service: dom0's `mem-set=<name|id>:<KiB>[:<KiB>...]` option moves a
//! domain's `memory/target` through its targets ([`dom0::mem_set`] is the plan, host-tested);
//! the service advances it on every pass until it is done.

use super::Service;
use alloc::rc::Rc;
use core::cell::RefCell;
use dom0::local_xs::{self, LocalTransport};
use dom0::mem_set::MemSet;
use dom0::xenstore::Xenstore;
use hypercall_abi::{DomId, Port};
use pv_guest_kernel::xenbus::Xenbus;
use pv_guest_kernel::{cmdline, println, time};

pub struct MemSetService {
    plan: MemSet,
    xb: Xenbus<LocalTransport>,
}

impl MemSetService {
    /// The service, if `mem-set=` asks for one.
    pub fn new(cmd: &str, xs: &Rc<RefCell<Xenstore>>) -> Option<MemSetService> {
        let plan = MemSet::from_option(cmdline::get(cmd, "mem-set")).unwrap_or_else(|e| {
            println!("dom0: ignoring mem-set= ({e:?})");
            None
        })?;
        Some(MemSetService { plan, xb: local_xs::client(xs, DomId::DOM0) })
    }
}

impl Service for MemSetService {
    fn name(&self) -> &'static str {
        "mem-set"
    }

    fn poll(&mut self, _fired: &[Port]) -> bool {
        if self.plan.is_done() {
            return false;
        }
        let notes = self.plan.poll(time::now_ns(), crate::domctl::domus, &mut self.xb);
        for n in &notes {
            println!("dom0: mem-set: {n}");
        }
        // Writing a target queues watch events for the domain.
        !notes.is_empty()
    }
}
