//! The boot information the domain builder hands over (`start_info`), copied once into the
//! kernel's own memory at entry.

use hypercall_abi::xen::sif;
pub use hypercall_abi::xen::StartInfo;

/// Copies start_info from where the builder put it.
///
/// # Safety
/// `si` must be the pointer the domain builder passed in `%rsi` (mapped and readable).
pub unsafe fn take(si: *const StartInfo) -> StartInfo {
    // SAFETY: the caller guarantees `si` is the builder's mapped start_info page; it is read
    // once, unaligned-safe.
    unsafe { si.read_unaligned() }
}

/// True for dom0 (the initial, privileged domain).
pub fn is_dom0(si: &StartInfo) -> bool {
    si.flags & sif::INITDOMAIN != 0
}
