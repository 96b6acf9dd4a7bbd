//! The PV kernel runtime: what every microvisor guest kernel (dom0 and the domUs) needs to
//! boot from `start_info` and talk to the hypervisor through Xen's x86_64 PV ABI — the entry
//! point and ELF notes ([`pv_kernel!`]), hypercalls through the hypercall page, the console,
//! traps and event upcalls, the PV clock, page-table updates and a page allocator.
//!
//! Pure logic (parsers, bookkeeping) is host-tested; the parts that execute hypercalls only
//! build for the kernel (`target_os = "linux"` is the same, so they are gated on `not(test)`).
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod console;
pub mod entry;
pub mod hypercall;
pub mod start_info;

/// Runtime set-up every kernel gets before its main function runs.
pub fn runtime_init(_si: &start_info::StartInfo) {}
