//! x86_64 4-level page-table entries and virtual-address index arithmetic, as a PV guest sees
//! them: entries hold machine frame numbers, and every level needs `USER` because the guest
//! kernel itself runs in ring 3.

use hypercall_abi::Mfn;

pub const PRESENT: u64 = 1 << 0;
pub const RW: u64 = 1 << 1;
pub const USER: u64 = 1 << 2;
pub const PWT: u64 = 1 << 3;
pub const PCD: u64 = 1 << 4;
pub const ACCESSED: u64 = 1 << 5;
pub const DIRTY: u64 = 1 << 6;
/// Superpage at L2/L3 (PV guests may not create them).
pub const PSE: u64 = 1 << 7;
pub const GLOBAL: u64 = 1 << 8;
pub const NX: u64 = 1 << 63;
/// Bits 12-51: the frame.
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// A normal kernel data page.
pub const PAGE_KERNEL: u64 = PRESENT | RW | USER | ACCESSED | DIRTY;
/// A page mapped read-only (what page-table frames must be in every mapping of them).
pub const PAGE_KERNEL_RO: u64 = PRESENT | USER | ACCESSED | DIRTY;
/// An entry of an L4/L3/L2 pointing at the next table.
pub const PAGE_TABLE: u64 = PRESENT | RW | USER | ACCESSED;

/// Entries per table.
pub const ENTRIES: usize = 512;

/// Index of `va` in its table at `level` (1 = L1 .. 4 = L4).
pub const fn index(va: u64, level: u32) -> usize {
    ((va >> (12 + 9 * (level - 1))) & 511) as usize
}

/// Bytes one entry at `level` maps.
pub const fn span(level: u32) -> u64 {
    1 << (12 + 9 * (level - 1))
}

/// The frame an entry points at.
pub const fn mfn(pte: u64) -> Mfn {
    Mfn((pte & ADDR_MASK) >> 12)
}

/// The flag bits of an entry.
pub const fn flags(pte: u64) -> u64 {
    pte & !ADDR_MASK
}

/// An entry for `mfn` with `flags`.
pub const fn make(mfn: Mfn, flags: u64) -> u64 {
    ((mfn.0 << 12) & ADDR_MASK) | (flags & !ADDR_MASK)
}

/// True if the entry is present.
pub const fn is_present(pte: u64) -> bool {
    pte & PRESENT != 0
}

/// True if `va` is canonical (48-bit).
pub const fn is_canonical(va: u64) -> bool {
    let top = va >> 47;
    top == 0 || top == 0x1_ffff
}

/// `va` rounded down to its page.
pub const fn page_base(va: u64) -> u64 {
    va & !0xfff
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn indices_of_known_addresses() {
        // The kernel base: L4 511, L3 510, L2 0, L1 0.
        let kb = 0xffff_ffff_8000_0000u64;
        assert_eq!([index(kb, 4), index(kb, 3), index(kb, 2), index(kb, 1)], [511, 510, 0, 0]);
        let va = kb + 0x20_3000;
        assert_eq!([index(va, 4), index(va, 3), index(va, 2), index(va, 1)], [511, 510, 1, 3]);
        // The M2P and the hypervisor text sit in the reserved L4 slots 256..=271.
        assert_eq!(index(0xffff_8000_0000_0000, 4), 256);
        assert_eq!(index(0xffff_82d0_8020_0000, 4), 261);
        assert_eq!(span(1), 4096);
        assert_eq!(span(2), 2 << 20);
        assert_eq!(span(4), 512 << 30);
        let e = make(Mfn(0xabcde), PAGE_KERNEL | NX);
        assert_eq!(mfn(e), Mfn(0xabcde));
        assert_eq!(flags(e), PAGE_KERNEL | NX);
        assert!(is_present(e) && !is_present(0));
        assert!(is_canonical(kb) && is_canonical(0x7fff_ffff_f000) && !is_canonical(1 << 47));
    }

    proptest! {
        #[test]
        fn indices_rebuild_the_address(va in any::<u64>().prop_map(|v| v & 0x0000_ffff_ffff_f000)) {
            let rebuilt = (1..=4u32).fold(0u64, |a, l| a | (index(va, l) as u64) << (12 + 9 * (l - 1)));
            prop_assert_eq!(rebuilt, va);
            prop_assert!((1..=4).all(|l| index(va, l) < ENTRIES));
        }

        #[test]
        fn make_keeps_frame_and_flags_apart(m in 0u64..(1 << 40), f in any::<u64>()) {
            let e = make(Mfn(m), f);
            prop_assert_eq!(mfn(e), Mfn(m));
            prop_assert_eq!(flags(e), f & !ADDR_MASK);
        }
    }
}
