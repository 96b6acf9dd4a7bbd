//! Xen's public x86_64 paravirtual interface, the single source of truth for every crate in
//! microvisor.
//!
//! Everything here mirrors `xen/include/public/` (interface version 0x00041300): hypercall
//! numbers, `#[repr(C)]` structure layouts with their sizes and offsets asserted at compile
//! time, and the shared-memory I/O protocols. The hypervisor, dom0 and the PV guest kernel all
//! take their definitions from this crate so that they can never disagree with each other or
//! with guests built for Xen.
//!
//! Conventions:
//! * Rust names are CamelCase versions of Xen's (`start_info` → [`StartInfo`]); field names are
//!   Xen's own.
//! * Every structure derives zerocopy's `FromBytes`/`IntoBytes`, so hypervisor and backends copy
//!   guest data in and out as bytes and never reference guest memory in place. Implicit padding
//!   is spelled out as `_pad*` fields.
//! * Frame numbers, domain ids, ports and grant references are newtypes ([`Mfn`], [`Pfn`],
//!   [`DomId`], [`Port`], [`GrantRef`]) so the compiler keeps them apart.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

#[macro_use]
mod layout;

pub mod callback;
pub mod domctl;
pub mod elfnote;
pub mod errno;
pub mod event_channel;
pub mod grant_table;
pub mod hvm;
pub mod hypercall;
pub mod io;
pub mod memory;
pub mod microvisor;
pub mod multiboot;
pub mod physdev;
pub mod pte;
pub mod sched;
pub mod types;
pub mod vcpu;
pub mod version;
pub mod xen;

pub use errno::Errno;
pub use types::{DomId, GrantRef, Mfn, Pfn, Port};
pub use xen::{SharedInfo, StartInfo, VcpuInfo, VcpuTimeInfo};

/// Size of a page (and of a frame) on x86.
pub const PAGE_SIZE: usize = 4096;
/// `log2(PAGE_SIZE)`.
pub const PAGE_SHIFT: u32 = 12;
