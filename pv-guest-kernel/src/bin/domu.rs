//! The demo PV domU: connects to xenstore, moves its console output onto the PV console ring
//! served by dom0 (its lines then appear as dom0's `[domU] ...`), prints, runs a CPU-bound
//! loop long enough to be preempted (its lines interleave with dom0's on the console), echoes
//! any console input it receives, then uses its split devices — the virtual disk dom0 serves
//! from virtio-blk (write, flush, read back), 32 bytes from dom0's virtio-rng, and its vif
//! (dom0's greeting fetched over HTTP; with `serve=<s>` an HTTP server the host reaches through
//! QEMU's port forward) — and powers off.
//!
//! Between steps it follows the toolstack's `memory/target` with its balloon driver
//! ([`pv_guest_kernel::balloon`]), so dom0's `mem-set=` moves its memory.
//!
//! Options: `steps=<n>` iterations (default 30), `work=<n>` computation steps per iteration,
//! `serve=<s>` to serve HTTP that long, `xstest` to run the xenstore self-test ([`xstest`])
//! first.
#![no_std]
#![no_main]

extern crate alloc;

use kernel_rt as _;
use pv_guest_kernel::start_info::StartInfo;
use pv_guest_kernel::{balloon, cmdline, console_ring, println, time, xenbus};

pv_guest_kernel::pv_kernel!(main, "microvisor-domU");

fn main(si: &StartInfo) {
    let cmd = si.cmdline();
    println!("domU: up, {} pages, command line \"{cmd}\"", si.nr_pages);
    let steps = cmdline::get_u64_or(cmd, "domU", "steps", 30, 1, 10_000);
    let work = cmdline::get_u64_or(cmd, "domU", "work", 6_000_000, 1, 1 << 32);
    let mut xb = match xenbus::connect(si) {
        Ok(mut xb) => {
            match console_ring::connect(&mut xb, si) {
                // From here on, output goes through dom0's console backend.
                Ok(backend) => println!("domU: console ring connected (backend {backend})"),
                Err(e) => println!("domU: console ring not connected ({e}), staying on console_io"),
            }
            if cmdline::flag(cmd, "xstest") {
                xstest::run(&mut xb);
            }
            if let Err(e) = balloon::watch_target(&mut xb) {
                println!("domU: cannot watch memory/target ({e}); no ballooning");
            }
            Some(xb)
        }
        Err(e) => {
            println!("domU: no xenstore ({e}), staying on console_io");
            None
        }
    };
    let t0 = time::now_ns();
    let mut acc = 0u64;
    for step in 1..=steps {
        acc = acc.wrapping_add(time::busy_work(work, step));
        println!("domU: step {step}/{steps}");
        echo_input();
        // Watch events other than the balloon's have no taker here.
        while let Some(ev) = xb.as_mut().and_then(|xb| xb.next_watch_event().ok().flatten()) {
            let _ = xb.as_mut().and_then(|xb| balloon::handle_event(xb, &ev));
        }
    }
    let ms = time::now_ns().saturating_sub(t0) / 1_000_000;
    // The devices last: their handshakes wait on dom0, which serves rings only between its own
    // steps, and would keep the two loops from interleaving.
    if let Some(xb) = xb.as_mut() {
        disk::run(xb);
        rng::run(xb);
        net::run(xb, cmd)
    }
    println!("domU: done after {ms} ms (checksum {:#x}), powering off", acc & 0xffff);
}

/// Prints what arrived on the console input, line by line.
fn echo_input() {
    let mut buf = [0u8; 128];
    let n = console_ring::read_input(&mut buf);
    for line in buf[..n].split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        println!("domU: console input: {}", core::str::from_utf8(line).unwrap_or("(not UTF-8)"));
    }
}

// The demo's parts live in `domu/` so that cargo does not take them for binaries of their own.
#[path = "domu/disk.rs"]
mod disk;
#[path = "domu/net.rs"]
mod net;
#[path = "domu/rng.rs"]
mod rng;
#[path = "domu/xstest.rs"]
mod xstest;
