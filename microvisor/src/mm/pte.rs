//! The page-table entry format the hypervisor validates: the ABI's
//! ([`hypercall_abi::pte`]), plus the bit Xen keeps for itself.

pub use hypercall_abi::pte::*;

/// Xen-internal marker of a grant mapping (bit 62), never allowed from a guest.
pub const GNTTAB: u64 = 1 << 62;
