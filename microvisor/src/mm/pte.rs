//! The x86_64 page-table entry format (4-level paging) and the index arithmetic of virtual
//! addresses.

use hypercall_abi::Mfn;

pub const PRESENT: u64 = 1 << 0;
pub const RW: u64 = 1 << 1;
pub const USER: u64 = 1 << 2;
pub const PWT: u64 = 1 << 3;
pub const PCD: u64 = 1 << 4;
pub const ACCESSED: u64 = 1 << 5;
pub const DIRTY: u64 = 1 << 6;
/// Page size at L2/L3 (superpage); PAT at L1.
pub const PSE: u64 = 1 << 7;
/// PAT bit of an L1 entry.
pub const PAT: u64 = 1 << 7;
pub const GLOBAL: u64 = 1 << 8;
/// Software-available bits 9-11.
pub const AVAIL_LOW: u64 = 0x7 << 9;
/// Software-available bits 52-62.
pub const AVAIL_HIGH: u64 = 0x7ff << 52;
/// Xen-internal marker of a grant mapping (bit 62), never allowed from a guest.
pub const GNTTAB: u64 = 1 << 62;
pub const NX: u64 = 1 << 63;
/// Bits 12-51: the frame address.
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

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

    #[test]
    fn index_arithmetic() {
        let va = 0xffff_ffff_8020_3000u64;
        assert_eq!(table_index(va, 4), 511);
        assert_eq!(table_index(va, 3), 510);
        assert_eq!(table_index(va, 2), 1);
        assert_eq!(table_index(va, 1), 3);
        assert_eq!(table_index(0xffff_82d0_8000_0000, 4), 261);
        let e = make(Mfn(0x1234), PRESENT | RW | NX);
        assert_eq!(mfn(e), Mfn(0x1234));
        assert_eq!(flags(e), PRESENT | RW | NX);
    }
}
