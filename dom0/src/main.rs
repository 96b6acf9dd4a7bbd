//! dom0: microvisor's privileged control and device domain.
//!
//! For now it shows the hypervisor scheduling two busy domains: it runs a CPU-bound loop that
//! prints a line per step (interleaving on the console with the domU's), stops early once
//! every domU has shut down, then waits for the domUs (VIRQ_DOM_EXC when events work, else
//! polling `XEN_DOMCTL_getdomaininfo` with `SCHEDOP_yield`), reports how each ended and powers
//! the machine off.
//!
//! Options (after ` -- ` on its module line): `steps=<n>` loop iterations (default 30, 0 to
//! skip the loop), `work=<n>` computation steps per iteration.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use hypercall_abi::domctl::{cmd, dominf, XenDomctl, XenDomctlGetdomaininfo};
use hypercall_abi::sched::shutdown;
use hypercall_abi::xen::virq;
use hypercall_abi::{DomId, Errno, Port};
use kernel_rt as _;
use pv_guest_kernel::start_info::StartInfo;
use pv_guest_kernel::{cmdline, events, hypercall, println, time};

pv_guest_kernel::pv_kernel!(main, "microvisor-dom0");

/// First domain id that is not a real domain (`DOMID_FIRST_RESERVED`).
const DOMID_FIRST_RESERVED: u16 = 0x7ff0;

fn main(si: &StartInfo) {
    let cmd = si.cmdline();
    println!("dom0: up, {} pages, flags {:#x}, command line \"{cmd}\"", si.nr_pages, si.flags);
    let steps = option(cmd, "steps", 30, 0, 10_000);
    let work = option(cmd, "work", 6_000_000, 1, 1 << 32);
    let exc_port = watch_domain_exceptions();

    let mut acc = 0u64;
    for step in 1..=steps {
        acc = acc.wrapping_add(busy_work(work, step));
        println!("dom0: step {step}/{steps}");
        if step < steps && domus_done() == Some(true) {
            println!("dom0: every domU has shut down, loop stopped after step {step}");
            break;
        }
    }
    core::hint::black_box(acc);

    wait_for_domus(exc_port);
    match list_domus() {
        Ok(list) => {
            for d in &list {
                println!("dom0: d{}: {}", d.domain.0, describe(d.flags));
            }
            if list.is_empty() {
                println!("dom0: no domUs");
            }
        }
        Err(e) => println!("dom0: cannot list domains: {e}"),
    }
    if exc_port.is_some() {
        println!("dom0: {} VIRQ_DOM_EXC received", DOM_EXC.load(Ordering::SeqCst));
    }
    println!("dom0: powering off");
}

/// A numeric option, its default if absent or malformed (with a message).
fn option(cmd: &str, key: &str, default: u64, min: u64, max: u64) -> u64 {
    cmdline::get_u64(cmd, key, default, min, max).unwrap_or_else(|e| {
        println!("dom0: ignoring {key}= ({e:?}), using {default}");
        default
    })
}

/// A CPU-bound computation of `n` xorshift steps.
fn busy_work(n: u64, seed: u64) -> u64 {
    let mut x = seed | 1;
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = core::hint::black_box(x);
    }
    x
}

/// Every domain but us, as `getdomaininfo` reports them (it returns the first domain whose id
/// is at least the one asked for, so asking for last + 1 enumerates).
fn list_domus() -> Result<Vec<XenDomctlGetdomaininfo>, Errno> {
    let mut out = Vec::new();
    let mut next = 1u16;
    while next < DOMID_FIRST_RESERVED {
        let mut op = XenDomctl::new(cmd::GETDOMAININFO, DomId(next));
        match hypercall::check(hypercall::domctl(&mut op)) {
            Ok(_) => {}
            Err(Errno::ESRCH) => break,
            Err(e) => return Err(e),
        }
        let info: XenDomctlGetdomaininfo = op.payload();
        // Guard against a hypervisor answering with an id below the one asked for.
        if info.domain.0 < next || info.domain.0 >= DOMID_FIRST_RESERVED {
            break;
        }
        next = info.domain.0 + 1;
        out.push(info);
    }
    Ok(out)
}

/// True once every domU has shut down (or is dying); `None` if the hypervisor cannot say.
fn domus_done() -> Option<bool> {
    let list = list_domus().ok()?;
    Some(list.iter().all(|d| d.flags & (dominf::SHUTDOWN | dominf::DYING) != 0))
}

fn describe(flags: u32) -> alloc::string::String {
    if flags & dominf::SHUTDOWN != 0 {
        let code = dominf::shutdown_code(flags);
        alloc::format!("shut down ({}, code {code})", shutdown::name(code))
    } else if flags & dominf::DYING != 0 {
        alloc::string::String::from("dying")
    } else if flags & dominf::PAUSED != 0 {
        alloc::string::String::from("paused")
    } else {
        alloc::string::String::from("still running")
    }
}

static DOM_EXC: AtomicU64 = AtomicU64::new(0);

fn on_dom_exc(_port: Port) {
    DOM_EXC.fetch_add(1, Ordering::SeqCst);
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

/// Waits until every domU has shut down.
fn wait_for_domus(exc_port: Option<Port>) {
    let mut reported = false;
    loop {
        match (domus_done(), exc_port) {
            (Some(true), _) => return,
            // No domctl: one domain exception is all we can wait for.
            (None, Some(_)) if DOM_EXC.load(Ordering::SeqCst) > 0 => return,
            (None, None) => {
                println!("dom0: neither domctl nor events work: not waiting for the domUs");
                return;
            }
            _ => {}
        }
        if !reported {
            println!("dom0: waiting for the domUs to shut down");
            reported = true;
        }
        match exc_port {
            // Wake on VIRQ_DOM_EXC, re-checking now and then in case one was missed.
            Some(_) => {
                let seen = DOM_EXC.load(Ordering::SeqCst);
                let deadline = time::now_ns() + 100_000_000;
                if events::block_until(|| DOM_EXC.load(Ordering::SeqCst) != seen, Some(deadline)).is_err() {
                    hypercall::yield_cpu();
                }
            }
            None => hypercall::yield_cpu(),
        }
    }
}
