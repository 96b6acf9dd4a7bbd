//! dom0: microvisor's privileged control and device domain.
//!
//! It finds its devices ([`hw`]), starts its services ([`services`]: xenstored, the console
//! backend, `xl mem-set`; [`backends`]: the split-driver backends; with the `test-aids`
//! feature, [`aids`]) and the toolstack that adopts the domUs the hypervisor built
//! ([`toolstack`]). Then it shows the hypervisor scheduling two busy domains: it runs a
//! CPU-bound loop that prints a line per step (interleaving on the console with the domU's),
//! serving between steps and stopping early once every domU is gone, then serves the domUs
//! from its event loop until the last one has shut down and been destroyed, and powers the
//! machine off.
//!
//! This folder is the binary (hypercalls, hardware, the service loop); the logic it uses is
//! dom0's library (`src/*.rs`), host-tested.
//!
//! Options (after ` -- ` on its module line): `steps=<n>` loop iterations (default 30, 0 to
//! skip the loop), `work=<n>` computation steps per iteration, `ringmap=foreign` to map the
//! domUs' rings by foreign mapping even where a grant exists, `heap-reserve=<KiB>` the free
//! heap below which services refuse clients' requests that would allocate (default: one
//! domain's xenstored quota and 256 KiB); each service documents its own.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use hypercall_abi::xen::virq;
use hypercall_abi::Port;
use kernel_rt as _;
use pv_guest_kernel::start_info::StartInfo;
use pv_guest_kernel::{cmdline, events, println, time};

#[cfg(feature = "test-aids")]
mod aids;
mod backends;
mod domctl;
mod foreign;
mod hw;
mod services;
mod toolstack;

pv_guest_kernel::pv_kernel!(main, "microvisor-dom0");

fn main(si: &StartInfo) {
    let cmd = si.cmdline();
    println!("dom0: up, {} pages, flags {:#x}, command line \"{cmd}\"", si.nr_pages, si.flags);
    grow_heap(si.nr_pages);
    let steps = cmdline::get_u64_or(cmd, "dom0", "steps", 30, 0, 10_000);
    let work = cmdline::get_u64_or(cmd, "dom0", "work", 6_000_000, 1, 1 << 32);
    let exc_port = watch_domain_exceptions();
    #[allow(unused_mut)]
    let mut disks = hw::disks(cmd);
    #[cfg(feature = "test-aids")]
    aids::disks(cmd, &mut disks);
    foreign::use_grants(cmdline::get(cmd, "ringmap") != Some("foreign"));
    let domus = domctl::domus().unwrap_or_else(|e| {
        println!("dom0: cannot list domains: {e}");
        Vec::new()
    });

    // News of a domain reaches the services in this order.
    let xenstored = services::xenstored::Xenstored::new(domus.len());
    if cmdline::get(cmd, "heap-reserve").is_some() {
        let kib = cmdline::get_u64_or(cmd, "dom0", "heap-reserve", 0, 1, 1 << 30);
        services::set_heap_reserve(kib as usize * 1024);
    }
    let xs = xenstored.store().clone();
    let mut all = services::Services::default();
    all.add(Box::new(xenstored));
    all.add(Box::new(services::console::ConsoleBackend::new(cmd, &xs)));
    if let Some(m) = services::mem_set::MemSetService::new(cmd, &xs) {
        all.add(Box::new(m));
    }
    for b in [
        backends::vrng::service(cmd, &xs),
        backends::vbd::service(cmd, disks, &xs),
        backends::vif::service(cmd, &xs),
    ]
    .into_iter()
    .flatten()
    {
        all.add(b);
    }
    #[cfg(feature = "test-aids")]
    for a in aids::services(cmd, &xs) {
        all.add(a);
    }
    let mut ts = toolstack::Toolstack::start(xs, all, domus, cmd);

    let mut acc = 0u64;
    for step in 1..=steps {
        acc = acc.wrapping_add(time::busy_work(work, step));
        println!("dom0: step {step}/{steps}");
        ts.poll();
        if step < steps && ts.domus_left() == 0 {
            println!("dom0: every domU has shut down, loop stopped after step {step}");
            break;
        }
    }
    core::hint::black_box(acc);

    if ts.domus_left() > 0 {
        println!("dom0: waiting for the domUs to shut down");
    }
    ts.run();
    println!("dom0: no domUs left");
    if exc_port.is_some() {
        println!("dom0: {} VIRQ_DOM_EXC received", DOM_EXC.load(Ordering::SeqCst));
    }
    println!("dom0: powering off");
}

/// dom0's heap takes this share of its memory: what its services hold for their clients
/// (xenstored's per-domain quotas first) is sized from the heap.
const HEAP_SHARE: u64 = 4;

/// Adds a quarter of dom0's memory to the runtime's bootstrap heap.
fn grow_heap(nr_pages: u64) {
    match pv_guest_kernel::heap::grow(nr_pages / HEAP_SHARE) {
        Ok(()) => println!("dom0: heap {} KiB", pv_guest_kernel::heap::stats().size / 1024),
        Err(e) => println!("dom0: heap not grown ({e}), {} KiB", pv_guest_kernel::heap::stats().size / 1024),
    }
}

static DOM_EXC: AtomicU64 = AtomicU64::new(0);

fn on_dom_exc(_port: Port) {
    DOM_EXC.fetch_add(1, Ordering::SeqCst);
    toolstack::on_dom_exc();
}

/// Binds VIRQ_DOM_EXC, which the hypervisor raises when a domU shuts down.
fn watch_domain_exceptions() -> Option<Port> {
    if !events::available() {
        return None;
    }
    match events::bind_virq_handler(virq::DOM_EXC, on_dom_exc) {
        Ok(p) => Some(p),
        Err(e) => {
            println!("dom0: cannot bind VIRQ_DOM_EXC: {e}");
            None
        }
    }
}
