//! dom0's host-testable logic: the parts of the control and device domain that are pure
//! computation (xenstored's store and protocol, backend request validation) live here so they
//! run under `cargo test` on the host; `main.rs` wires them to the hypervisor.
#![cfg_attr(not(test), no_std)]
#![cfg_attr(not(test), forbid(unsafe_code))]
// Host tests install a counting allocator, the one unsafe module (`counting_alloc`).
#![cfg_attr(test, deny(unsafe_code))]

extern crate alloc;

pub mod blkback;
pub mod console_backend;
pub mod domains;
pub mod local_xs;
pub mod mem_set;
pub mod netback;
pub mod netswitch;
pub mod pci;
pub mod rngback;
pub mod store_ring;
pub mod virtq;
pub mod xenstore;

/// Host tests measure what code under test allocates (per thread), as dom0's kernel heap
/// would count it.
#[cfg(test)]
pub mod counting_alloc;
