//! Turning boot modules into domains: Xen PV ELF images (parsed by their notes), the bootstrap
//! layout Xen guests expect, and the builder that writes it into machine memory.

pub mod builder;
pub mod elf;
pub mod layout;
