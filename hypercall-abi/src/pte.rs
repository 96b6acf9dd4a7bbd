//! The x86_64 4-level page-table entry, as a PV guest writes it and the hypervisor validates
//! it: `mmu_update` and `update_va_mapping` take entries in exactly this format, holding
//! machine frame numbers. Both sides of the interface use these definitions.

use crate::Mfn;

pub const PRESENT: u64 = 1 << 0;
pub const RW: u64 = 1 << 1;
pub const USER: u64 = 1 << 2;
pub const PWT: u64 = 1 << 3;
pub const PCD: u64 = 1 << 4;
pub const ACCESSED: u64 = 1 << 5;
pub const DIRTY: u64 = 1 << 6;
/// Page size at L2/L3 (a superpage; PV guests may not create them); PAT at L1.
pub const PSE: u64 = 1 << 7;
/// PAT bit of an L1 entry.
pub const PAT: u64 = 1 << 7;
pub const GLOBAL: u64 = 1 << 8;
/// Software-available bits 9-11.
pub const AVAIL_LOW: u64 = 0x7 << 9;
/// Software-available bits 52-62.
pub const AVAIL_HIGH: u64 = 0x7ff << 52;
pub const NX: u64 = 1 << 63;
/// Bits 12-51: the frame address.
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Entries per table.
pub const ENTRIES: usize = 512;

/// The frame an entry points at.
pub const fn mfn(pte: u64) -> Mfn {
    Mfn((pte & ADDR_MASK) >> 12)
}

/// Flag bits of an entry (everything but the address).
pub const fn flags(pte: u64) -> u64 {
    pte & !ADDR_MASK
}

/// An entry pointing at `mfn` with `flags`.
pub const fn make(mfn: Mfn, flags: u64) -> u64 {
    ((mfn.0 << 12) & ADDR_MASK) | (flags & !ADDR_MASK)
}

/// True if the entry is present.
pub const fn is_present(pte: u64) -> bool {
    pte & PRESENT != 0
}

/// Index of `va` in its table at `level` (1 = L1 .. 4 = L4).
pub const fn table_index(va: u64, level: u32) -> usize {
    ((va >> (12 + 9 * (level - 1))) & 511) as usize
}

/// Bytes mapped by one entry at `level`.
pub const fn level_span(level: u32) -> u64 {
    1 << (12 + 9 * (level - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn indices_of_known_addresses() {
        // The kernel base: L4 511, L3 510, L2 0, L1 0.
        let kb = 0xffff_ffff_8000_0000u64;
        let idx = |va| [table_index(va, 4), table_index(va, 3), table_index(va, 2), table_index(va, 1)];
        assert_eq!(idx(kb), [511, 510, 0, 0]);
        assert_eq!(idx(kb + 0x20_3000), [511, 510, 1, 3]);
        // The M2P and the hypervisor text sit in the reserved L4 slots 256..=271.
        assert_eq!(table_index(0xffff_8000_0000_0000, 4), 256);
        assert_eq!(table_index(0xffff_82d0_8000_0000, 4), 261);
        assert_eq!(level_span(1), 4096);
        assert_eq!(level_span(2), 2 << 20);
        assert_eq!(level_span(4), 512 << 30);
        let e = make(Mfn(0x1234), PRESENT | RW | NX);
        assert_eq!(mfn(e), Mfn(0x1234));
        assert_eq!(flags(e), PRESENT | RW | NX);
        assert!(is_present(e) && !is_present(0));
    }

    proptest! {
        #[test]
        fn indices_rebuild_the_address(va in any::<u64>().prop_map(|v| v & 0x0000_ffff_ffff_f000)) {
            let rebuilt = (1..=4u32).fold(0u64, |a, l| a | (table_index(va, l) as u64) << (12 + 9 * (l - 1)));
            prop_assert_eq!(rebuilt, va);
            prop_assert!((1..=4).all(|l| table_index(va, l) < ENTRIES));
        }

        #[test]
        fn make_keeps_frame_and_flags_apart(m in 0u64..(1 << 40), f in any::<u64>()) {
            let e = make(Mfn(m), f);
            prop_assert_eq!(mfn(e), Mfn(m));
            prop_assert_eq!(flags(e), f & !ADDR_MASK);
        }
    }
}
