//! Page-table entries as a PV guest makes them: the ABI's entry format and index arithmetic
//! ([`hypercall_abi::pte`]; entries hold machine frame numbers), plus the flag sets the
//! runtime uses — every level needs `USER` because the guest kernel itself runs in ring 3.

pub use hypercall_abi::pte::*;
pub use hypercall_abi::xen::is_canonical;

/// A normal kernel data page.
pub const PAGE_KERNEL: u64 = PRESENT | RW | USER | ACCESSED | DIRTY;
/// A page mapped read-only (what page-table frames must be in every mapping of them).
pub const PAGE_KERNEL_RO: u64 = PRESENT | USER | ACCESSED | DIRTY;
/// An entry of an L4/L3/L2 pointing at the next table.
pub const PAGE_TABLE: u64 = PRESENT | RW | USER | ACCESSED;

/// `va` rounded down to its page.
pub const fn page_base(va: u64) -> u64 {
    va & !0xfff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_entries_are_user_and_page_base_rounds_down() {
        // The guest kernel runs in ring 3: every entry it makes must be user-accessible.
        assert!([PAGE_KERNEL, PAGE_KERNEL_RO, PAGE_TABLE]
            .iter()
            .all(|f| f & (PRESENT | USER) == PRESENT | USER));
        assert_eq!(PAGE_KERNEL_RO & RW, 0);
        assert_eq!(page_base(0xffff_ffff_8020_3abc), 0xffff_ffff_8020_3000);
        let kb = 0xffff_ffff_8000_0000u64;
        assert!(is_canonical(kb) && is_canonical(0x7fff_ffff_f000) && !is_canonical(1 << 47));
    }
}
