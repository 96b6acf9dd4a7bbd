//! `memory_op` (`public/memory.h`): growing and shrinking a domain's memory, mapping special
//! frames into its physmap, and reading the memory maps, plus the e820 entry those maps use.

use crate::types::DomId;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `XENMEM_*` commands of `memory_op`.
pub mod op {
    pub const INCREASE_RESERVATION: u32 = 0;
    pub const DECREASE_RESERVATION: u32 = 1;
    /// Returns the highest machine frame number.
    pub const MAXIMUM_RAM_PAGE: u32 = 2;
    /// Returns the domain's current page count (arg: `domid_t *`).
    pub const CURRENT_RESERVATION: u32 = 3;
    /// Returns the domain's page limit (arg: `domid_t *`).
    pub const MAXIMUM_RESERVATION: u32 = 4;
    pub const MACHPHYS_MFN_LIST: u32 = 5;
    pub const POPULATE_PHYSMAP: u32 = 6;
    pub const ADD_TO_PHYSMAP: u32 = 7;
    pub const MEMORY_MAP: u32 = 9;
    pub const MACHINE_MEMORY_MAP: u32 = 10;
    pub const EXCHANGE: u32 = 11;
    pub const MACHPHYS_MAPPING: u32 = 12;
    pub const SET_MEMORY_MAP: u32 = 13;
    /// Returns the highest gpfn of the domain (arg: `domid_t *`).
    pub const MAXIMUM_GPFN: u32 = 14;
    pub const REMOVE_FROM_PHYSMAP: u32 = 15;
    pub const ADD_TO_PHYSMAP_BATCH: u32 = 23;
    pub const CLAIM_PAGES: u32 = 24;
    pub const ACQUIRE_RESOURCE: u32 = 28;
}

/// `XENMEMF_*`: [`XenMemoryReservation::mem_flags`].
pub mod xenmemf {
    /// Low 8 bits: the frames must be addressable with this many bits (0 = no limit).
    pub const ADDRESS_BITS_MASK: u32 = 0xff;
    /// `XENMEMF_address_bits(bits)`.
    pub const fn address_bits(bits: u32) -> u32 {
        bits & ADDRESS_BITS_MASK
    }
    /// `XENMEMF_get_address_bits(flags)`.
    pub const fn get_address_bits(flags: u32) -> u32 {
        flags & ADDRESS_BITS_MASK
    }
    /// `XENMEMF_node(node)`: prefer NUMA node `node` (stored as node + 1 from bit 8).
    pub const fn node(node: u32) -> u32 {
        node.wrapping_add(1) << 8
    }
    /// `XENMEMF_get_node(flags)`; `0xff` (as Xen's macro yields) when no node was given.
    pub const fn get_node(flags: u32) -> u32 {
        ((flags >> 8).wrapping_sub(1)) & 0xff
    }
    /// Populate on demand (HVM only).
    pub const POPULATE_ON_DEMAND: u32 = 1 << 16;
    /// Fail rather than fall back to another node.
    pub const EXACT_NODE_REQUEST: u32 = 1 << 17;
    /// `XENMEMF_exact_node(node)`.
    pub const fn exact_node(n: u32) -> u32 {
        node(n) | EXACT_NODE_REQUEST
    }
    /// The node in the flags is a virtual NUMA node.
    pub const VNODE: u32 = 1 << 18;
}

/// `XENMAPSPACE_*`: [`XenAddToPhysmap::space`].
pub mod xenmapspace {
    pub const SHARED_INFO: u32 = 0;
    pub const GRANT_TABLE: u32 = 1;
    pub const GMFN: u32 = 2;
    pub const GMFN_RANGE: u32 = 3;
    pub const GMFN_FOREIGN: u32 = 4;
    pub const DEV_MMIO: u32 = 5;
    /// With `GRANT_TABLE`: `idx` names a status frame (v2) rather than a shared frame.
    pub const XENMAPIDX_GRANT_TABLE_STATUS: u64 = 1 << 31;
}

/// `struct xen_memory_reservation`: argument of increase/decrease_reservation and
/// populate_physmap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenMemoryReservation {
    /// Guest handle of a `xen_pfn_t[nr_extents]` array (gpfns in, mfns out, depending on op).
    pub extent_start: u64,
    pub nr_extents: u64,
    /// Each extent is `2^extent_order` contiguous frames.
    pub extent_order: u32,
    /// [`xenmemf`] bits.
    pub mem_flags: u32,
    pub domid: DomId,
    pub _pad: [u8; 6],
}
assert_layout!(
    XenMemoryReservation,
    size = 32,
    extent_start = 0,
    nr_extents = 8,
    extent_order = 16,
    mem_flags = 20,
    domid = 24
);

/// `struct xen_memory_exchange`: trade `in` extents for `out` extents atomically.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenMemoryExchange {
    pub in_: XenMemoryReservation,
    pub out: XenMemoryReservation,
    /// OUT: input extents exchanged so far (progress for continuations).
    pub nr_exchanged: u64,
}
assert_layout!(XenMemoryExchange, size = 72, in_ = 0, out = 32, nr_exchanged = 64);

/// `struct xen_add_to_physmap`: map a special frame (shared_info, grant table, ...) at `gpfn`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenAddToPhysmap {
    pub domid: DomId,
    /// Number of frames for [`xenmapspace::GMFN_RANGE`].
    pub size: u16,
    /// [`xenmapspace`].
    pub space: u32,
    /// Index in the space.
    pub idx: u64,
    /// Where to map it.
    pub gpfn: u64,
}
assert_layout!(XenAddToPhysmap, size = 24, domid = 0, size = 2, space = 4, idx = 8, gpfn = 16);

/// `struct xen_remove_from_physmap`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenRemoveFromPhysmap {
    pub domid: DomId,
    pub _pad: [u8; 6],
    pub gpfn: u64,
}
assert_layout!(XenRemoveFromPhysmap, size = 16, domid = 0, gpfn = 8);

/// `struct xen_machphys_mapping`: where the read-only M2P table is mapped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenMachphysMapping {
    pub v_start: u64,
    pub v_end: u64,
    /// Highest mfn the table covers.
    pub max_mfn: u64,
}
assert_layout!(XenMachphysMapping, size = 24, v_start = 0, v_end = 8, max_mfn = 16);

/// `struct xen_machphys_mfn_list`: the frames that hold the M2P table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenMachphysMfnList {
    pub max_extents: u32,
    pub _pad0: u32,
    /// Guest handle of a `xen_pfn_t[max_extents]` array.
    pub extent_start: u64,
    /// OUT.
    pub nr_extents: u32,
    pub _pad1: u32,
}
assert_layout!(XenMachphysMfnList, size = 24, max_extents = 0, extent_start = 8, nr_extents = 16);

/// `struct xen_memory_map`: a buffer of [`E820Entry`]s (`XENMEM_memory_map` and
/// `XENMEM_machine_memory_map`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenMemoryMap {
    /// IN: entries the buffer holds; OUT: entries written.
    pub nr_entries: u32,
    pub _pad: u32,
    /// Guest handle of the `e820entry` array.
    pub buffer: u64,
}
assert_layout!(XenMemoryMap, size = 16, nr_entries = 0, buffer = 8);

/// `struct e820entry` (`__attribute__((packed))`, so 20 bytes with no alignment).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    /// [`e820`] type (Xen's field is `type`).
    pub type_: u32,
}
assert_layout!(E820Entry, size = 20, addr = 0, size = 8, type_ = 16);

impl E820Entry {
    /// Exclusive end address, or `None` if `addr + size` overflows (a bogus entry).
    pub fn end(&self) -> Option<u64> {
        let (addr, size) = (self.addr, self.size);
        addr.checked_add(size)
    }
}

/// e820 memory types.
pub mod e820 {
    pub const RAM: u32 = 1;
    pub const RESERVED: u32 = 2;
    pub const ACPI: u32 = 3;
    pub const NVS: u32 = 4;
    pub const UNUSABLE: u32 = 5;
    /// Entries `XENMEM_memory_map` returns at most (Xen's `E820MAX`).
    pub const E820MAX: usize = 1024;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memflags_encode_as_xen_macros() {
        assert_eq!(xenmemf::address_bits(32), 32);
        assert_eq!(xenmemf::node(0), 0x100);
        assert_eq!(xenmemf::get_node(xenmemf::node(5) | 32), 5);
        assert_eq!(xenmemf::get_node(0), 0xff);
        assert_eq!(xenmemf::exact_node(1), 0x200 | (1 << 17));
    }

    #[test]
    fn e820_is_packed() {
        let bytes: [u8; 20] = [1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
        let e = E820Entry::read_from_bytes(&bytes[..]).unwrap();
        assert_eq!({ e.addr }, 1);
        assert_eq!({ e.size }, 2);
        assert_eq!({ e.type_ }, e820::RAM);
        assert_eq!(e.end(), Some(3));
        let bad = E820Entry { addr: u64::MAX, size: 2, type_: 1 };
        assert_eq!(bad.end(), None);
    }
}
