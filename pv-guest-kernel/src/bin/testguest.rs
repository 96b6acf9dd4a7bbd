//! The test guest: conformance and hostile scenarios chosen by its command line.
#![no_std]
#![no_main]

use kernel_rt as _;
use pv_guest_kernel::println;
use pv_guest_kernel::start_info::StartInfo;

pv_guest_kernel::pv_kernel!(main, "microvisor-testguest");

fn main(si: &StartInfo) {
    println!("testguest: {}", si.cmdline());
}
