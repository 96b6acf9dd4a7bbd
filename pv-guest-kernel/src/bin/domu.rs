//! The demo PV domU: prints, runs a CPU-bound loop long enough to be preempted, and powers off.
#![no_std]
#![no_main]

use kernel_rt as _;
use pv_guest_kernel::println;
use pv_guest_kernel::start_info::StartInfo;

pv_guest_kernel::pv_kernel!(main, "microvisor-domU");

fn main(si: &StartInfo) {
    println!("domU up: {} pages, command line \"{}\"", si.nr_pages, si.cmdline());
}
