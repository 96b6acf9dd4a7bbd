//! Turning boot modules into domains: Xen PV ELF images (parsed by their notes), the bootstrap
//! layout Xen guests expect, and the builder that writes it into machine memory.
//!
//! The usual sequence is [`parse_pv_image`] on the module's bytes, then [`build_pv_domain`],
//! whose result carries the P2M (for the M2P table), the page-table frames to type and pin,
//! and the first vCPU's context ([`BuiltDomain::initial_context`]).

pub mod builder;
pub mod elf;
pub mod layout;

pub use builder::{build_pv_domain, BuildConfig, BuildError, BuiltDomain, PageTableFrame};
pub use elf::{parse_pv_image, ElfError, PvImage};
pub use layout::{compute_layout, BootLayout, LayoutError};
