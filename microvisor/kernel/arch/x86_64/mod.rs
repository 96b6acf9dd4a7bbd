//! x86_64: boot, descriptor tables, entry paths, paging, APIC timer, serial console and CPU
//! state. Everything that touches hardware or runs assembly lives under this directory; the
//! core logic in the library crate reaches the hardware only through the interfaces exported
//! here.

pub mod apic;
pub mod boot;
pub mod bootmem;
pub mod cpu;
pub mod cpu_local;
pub mod entry;
#[cfg(feature = "test-aids")]
pub mod floor;
pub mod gdt;
pub mod guest_copy;
pub mod idt;
pub mod ioapic;
pub mod paging;
pub mod probe;
pub mod serial;
pub mod sync;
