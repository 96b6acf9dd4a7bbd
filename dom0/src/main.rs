//! dom0: microvisor's privileged control and device domain.
#![no_std]
#![no_main]

use kernel_rt as _;
use pv_guest_kernel::println;
use pv_guest_kernel::start_info::StartInfo;

pv_guest_kernel::pv_kernel!(main, "microvisor-dom0");

fn main(si: &StartInfo) {
    println!("dom0 up: {} pages, flags {:#x}", si.nr_pages, si.flags);
}
