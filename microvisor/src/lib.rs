//! microvisor's core logic: everything the hypervisor decides, as safe Rust that runs and is
//! tested on the host. The kernel binary (`kernel/`, its architecture layer in `kernel/arch`) feeds it
//! traps and hypercalls and applies the machine state it asks for.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod audit;
pub mod bootcfg;
pub mod console;
pub mod cpu_state;
pub mod cpuid;
pub mod crash_report;
pub mod domain;
pub mod domain_lifecycle;
pub mod emulate;
pub mod event;
pub mod grant;
pub mod guest_mem;
pub mod hv;
pub mod hypercall;
pub mod iomem;
pub mod irq;
pub mod loader;
pub mod mm;
pub mod platform;
pub mod sched;
pub mod time;
pub mod trace;
pub mod traps;
pub mod vcpu;
pub mod version;
pub mod x86;

#[cfg(test)]
mod emulate_tests;
#[cfg(test)]
mod grant_tests;
#[cfg(test)]
mod hv_tests;
#[cfg(test)]
pub mod testkit;
#[cfg(test)]
mod traps_tests;
#[cfg(test)]
mod vcpu_tests;
