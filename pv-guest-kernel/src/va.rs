//! The registry of our guest kernels' virtual-address windows: every fixed range a kernel
//! (dom0, the domUs, the test guest) maps pages into after boot, each one L4 slot (512 GiB)
//! of its own, so no two users can collide and a reader finds them all here. The kernel
//! image and the direct map live at [`crate::entry::VIRT_BASE`]; the hypervisor's own layout
//! (its slots 256–271) is the hypervisor's.

/// One window: where it starts, who maps into it and what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub base: u64,
    pub who: &'static str,
    pub what: &'static str,
}

/// Bytes of a window: one L4 slot.
pub const WINDOW_SIZE: u64 = 1 << 39;

/// dom0: DMA buffers (machine-contiguous extents).
pub const DMA: u64 = 0xffff_c800_0000_0000;
/// dom0: its own disk check's scratch buffer (`blktest=1`).
pub const DOM0_SCRATCH: u64 = 0xffff_c880_0000_0000;
/// dom0: device memory (PCI BARs, uncached).
pub const DEVICE_MEMORY: u64 = 0xffff_c900_0000_0000;
/// Test guest: `mm-hostile`'s page-table attacks (nothing else in the slot).
pub const TEST_ATTACKS: u64 = 0xffff_c980_0000_0000;
/// Any backend: the split framework's mappings of frontends' rings.
pub const SPLIT_RINGS: u64 = 0xffff_ca00_0000_0000;
/// Any domain granting: its grant table's frames.
pub const GRANT_TABLE: u64 = 0xffff_cb00_0000_0000;
/// Test guest: grant-map and device-memory probes.
pub const TEST_PROBES: u64 = 0xffff_cc00_0000_0000;
/// Test guest: hostile grant maps (`ipc-hostile`).
pub const TEST_HOSTILE_MAPS: u64 = 0xffff_cd00_0000_0000;
/// Test guest: page-table benchmarks (`bench-mm`).
pub const TEST_PAGE_TABLES: u64 = 0xffff_ce00_0000_0000;
/// Test guest: the `mm` scenario's alias of a page of its own.
pub const TEST_ALIAS: u64 = 0xffff_cf00_0000_0000;
/// dom0: other domains' xenstore and console rings (granted or foreign-mapped).
pub const FOREIGN_RINGS: u64 = 0xffff_d000_0000_0000;

/// Every window, in address order.
pub const ALL: &[Window] = &[
    Window { base: DMA, who: "dom0", what: "DMA buffers (machine-contiguous extents)" },
    Window { base: DOM0_SCRATCH, who: "dom0", what: "disk self-test scratch (`blktest=1`)" },
    Window { base: DEVICE_MEMORY, who: "dom0", what: "device memory (BARs, uncached)" },
    Window { base: TEST_ATTACKS, who: "test guest", what: "`mm-hostile`'s page-table attacks" },
    Window { base: SPLIT_RINGS, who: "any backend", what: "the split framework's ring mappings" },
    Window { base: GRANT_TABLE, who: "any domain", what: "its grant table" },
    Window { base: TEST_PROBES, who: "test guest", what: "grant-map and device-memory probes" },
    Window { base: TEST_HOSTILE_MAPS, who: "test guest", what: "hostile grant maps (`ipc-hostile`)" },
    Window { base: TEST_PAGE_TABLES, who: "test guest", what: "page-table benchmarks (`bench-mm`)" },
    Window {
        base: TEST_ALIAS,
        who: "test guest",
        what: "`mm`'s alias of its own page; the fuzzer's argument pages",
    },
    Window { base: FOREIGN_RINGS, who: "dom0", what: "other domains' xenstore and console rings" },
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::pt;
    use hypercall_abi::xen::in_hypervisor_hole;

    #[test]
    fn windows_are_disjoint_slots_clear_of_everything_else() {
        for w in ALL {
            assert_eq!(w.base % WINDOW_SIZE, 0, "{w:?} starts an L4 slot");
            let last = w.base + (WINDOW_SIZE - 1);
            assert!(pt::is_canonical(w.base) && pt::is_canonical(last), "{w:?}");
            assert!(!in_hypervisor_hole(w.base) && !in_hypervisor_hole(last), "{w:?}");
            assert!(last < crate::entry::VIRT_BASE, "{w:?} below the kernel and its direct map");
        }
        for pair in ALL.windows(2) {
            assert!(pair[0].base + WINDOW_SIZE <= pair[1].base, "{:?} and {:?} overlap", pair[0], pair[1]);
        }
    }
}
