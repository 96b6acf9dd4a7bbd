//! x86_64: boot, descriptor tables, entry paths, paging, APIC timer, serial console and CPU
//! state. Everything that touches hardware or runs assembly lives under this directory; the
//! core logic in the library crate reaches the hardware only through the interfaces exported
//! here.

pub mod boot;
pub mod cpu;
pub mod serial;
