//! microvisor's core logic: everything the hypervisor decides, as safe Rust that runs and is
//! tested on the host. The architecture layer (`src/arch`, part of the kernel binary) feeds it
//! traps and hypercalls and applies the machine state it asks for.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod loader;
pub mod mm;
