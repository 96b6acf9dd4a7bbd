//! Test and benchmark aids: what dom0 does only so that tests and benchmarks can observe or
//! measure it. They are behind the `test-aids` feature (on by default: every configuration
//! `cargo xtask` boots is a test, a benchmark or the demo, which uses the echo); a production
//! dom0 is built with `--no-default-features` and has none of them.
//!
//! * disk options, run on the first disk before it is served: `blktest=1` ([`blktest`]),
//!   `blkbench=<MiB>` with `blkruns=<n>` (default 16), `blkdepth=<n>` (default 32) and
//!   `blkbench-wait=<name|id>` (first wait until that domain has shut down) ([`blkbench`]);
//! * services: the event-channel echo ([`evtchn_echo`], the far end of `evtchn.pingpong`),
//!   the xenstore echo ([`ping_echo`], for the demo domU's `xstest`) and, with
//!   `destroy-check=1`, the accounting check of domain destruction ([`destroy_check`]).

pub mod blkbench;
pub mod blktest;
pub mod destroy_check;
pub mod evtchn_echo;
pub mod ping_echo;

use crate::hw::virtio_blk::VirtioBlk;
use crate::services::Service;
use alloc::boxed::Box;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;
use dom0::xenstore::Xenstore;
use pv_guest_kernel::{cmdline, println};

/// Runs what the disk options ask for on the first disk.
pub fn disks(cmd: &str, disks: &mut [VirtioBlk]) {
    let Some(d) = disks.first_mut() else { return };
    if cmdline::get(cmd, "blktest") == Some("1") {
        blktest::run(d);
    }
    let mib = cmdline::get_u64(cmd, "blkbench", 0, 0, 1 << 20).unwrap_or(0);
    if mib == 0 {
        return;
    }
    if let Some(who) = cmdline::get(cmd, "blkbench-wait") {
        blkbench::wait_for_shutdown(who);
    }
    let runs = cmdline::get_u64(cmd, "blkruns", 16, 1, 1000).unwrap_or(16) as usize;
    let span = (mib * 2048).min(d.capacity);
    let depth = cmdline::get_u64(cmd, "blkdepth", 32, 1, 32).unwrap_or(32) as usize;
    let plan = blkbench::Plan {
        depth,
        run_bytes: (span * 512 / runs as u64).max(1 << 20),
        runs,
        rand_runs: runs,
        start: 0,
        span,
    };
    blkbench::run(d, plan);
    println!(
        "dom0: blkbench done: {} requests, {} notifies, {} interrupts ({} events)",
        d.counters.requests,
        d.counters.notifies,
        d.counters.interrupts,
        d.irq().map_or(0, |i| i.count())
    );
}

/// The aids that are services.
pub fn services(cmd: &str, xs: &Rc<RefCell<Xenstore>>) -> Vec<Box<dyn Service>> {
    let mut out: Vec<Box<dyn Service>> =
        alloc::vec![Box::new(evtchn_echo::EvtchnEcho::new(xs)), Box::new(ping_echo::PingEcho::new(xs))];
    if let Some(check) = destroy_check::DestroyCheck::new(cmd) {
        out.push(Box::new(check));
    }
    out
}
