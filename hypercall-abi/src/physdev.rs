//! `physdev_op` (`public/physdev.h`): what a driver domain (dom0) needs to own real devices:
//! I/O privilege, interrupt routing (pirqs) and PCI device registration.

use crate::types::DomId;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `PHYSDEVOP_*` commands of `physdev_op`.
pub mod op {
    pub const IRQ_UNMASK_NOTIFY: u32 = 4;
    pub const IRQ_STATUS_QUERY: u32 = 5;
    pub const SET_IOPL: u32 = 6;
    pub const SET_IOBITMAP: u32 = 7;
    pub const APIC_READ: u32 = 8;
    pub const APIC_WRITE: u32 = 9;
    pub const ALLOC_IRQ_VECTOR: u32 = 10;
    pub const FREE_IRQ_VECTOR: u32 = 11;
    pub const EOI: u32 = 12;
    pub const MAP_PIRQ: u32 = 13;
    pub const UNMAP_PIRQ: u32 = 14;
    pub const MANAGE_PCI_ADD: u32 = 15;
    pub const MANAGE_PCI_REMOVE: u32 = 16;
    pub const PIRQ_EOI_GMFN_V1: u32 = 17;
    pub const RESTORE_MSI: u32 = 19;
    pub const MANAGE_PCI_ADD_EXT: u32 = 20;
    pub const SETUP_GSI: u32 = 21;
    pub const GET_FREE_PIRQ: u32 = 23;
    pub const PCI_MMCFG_RESERVED: u32 = 24;
    pub const PCI_DEVICE_ADD: u32 = 25;
    pub const PCI_DEVICE_REMOVE: u32 = 26;
    pub const RESTORE_MSI_EXT: u32 = 27;
    pub const PIRQ_EOI_GMFN_V2: u32 = 28;
    pub const DBGP_OP: u32 = 29;
    pub const PREPARE_MSIX: u32 = 30;
    pub const RELEASE_MSIX: u32 = 31;
    pub const PCI_DEVICE_RESET: u32 = 32;
}

/// `XENIRQSTAT_*`: [`PhysdevIrqStatusQuery::flags`].
pub mod xenirqstat {
    /// The guest must issue `PHYSDEVOP_eoi` after servicing the IRQ.
    pub const NEEDS_EOI: u32 = 1 << 0;
    /// The IRQ is shared with other domains.
    pub const SHARED: u32 = 1 << 1;
}

/// `MAP_PIRQ_TYPE_*`: [`PhysdevMapPirq::type_`].
pub mod map_pirq_type {
    pub const MSI: i32 = 0;
    pub const GSI: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const MSI_SEG: i32 = 3;
    pub const MULTI_MSI: i32 = 4;
}

/// `XEN_PCI_DEV_*`: [`PhysdevPciDeviceAdd::flags`].
pub mod xen_pci_dev {
    pub const EXTFN: u32 = 0x1;
    pub const VIRTFN: u32 = 0x2;
    /// `optarr[0]` holds the proximity domain.
    pub const PXM: u32 = 0x4;
}

/// `struct physdev_eoi`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PhysdevEoi {
    pub irq: u32,
}
assert_layout!(PhysdevEoi, size = 4, irq = 0);

/// `struct physdev_irq_status_query`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PhysdevIrqStatusQuery {
    pub irq: u32,
    /// OUT: [`xenirqstat`].
    pub flags: u32,
}
assert_layout!(PhysdevIrqStatusQuery, size = 8, irq = 0, flags = 4);

/// `struct physdev_set_iopl`: the vCPU's virtual IOPL (0-3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PhysdevSetIopl {
    pub iopl: u32,
}
assert_layout!(PhysdevSetIopl, size = 4, iopl = 0);

/// `struct physdev_set_iobitmap`: a TSS-style I/O permission bitmap in guest memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PhysdevSetIobitmap {
    /// Guest handle of the bitmap (a set bit denies the port, as in a TSS).
    pub bitmap: u64,
    pub nr_ports: u32,
    pub _pad: u32,
}
assert_layout!(PhysdevSetIobitmap, size = 16, bitmap = 0, nr_ports = 8);

/// `struct physdev_irq` (alloc/free_irq_vector).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PhysdevIrq {
    pub irq: u32,
    pub vector: u32,
}
assert_layout!(PhysdevIrq, size = 8, irq = 0, vector = 4);

/// `struct physdev_map_pirq`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PhysdevMapPirq {
    pub domid: DomId,
    pub _pad0: u16,
    /// [`map_pirq_type`] (Xen's field is `type`).
    pub type_: i32,
    /// GSI or MSI index.
    pub index: i32,
    /// IN or OUT.
    pub pirq: i32,
    /// High 16 bits hold the segment for `MSI_SEG` and `MULTI_MSI`.
    pub bus: i32,
    pub devfn: i32,
    pub entry_nr: i32,
    pub _pad1: u32,
    pub table_base: u64,
}
assert_layout!(
    PhysdevMapPirq,
    size = 40,
    domid = 0,
    type_ = 4,
    index = 8,
    pirq = 12,
    bus = 16,
    devfn = 20,
    entry_nr = 24,
    table_base = 32
);

/// `struct physdev_unmap_pirq`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PhysdevUnmapPirq {
    pub domid: DomId,
    pub _pad: u16,
    pub pirq: i32,
}
assert_layout!(PhysdevUnmapPirq, size = 8, domid = 0, pirq = 4);

/// `struct physdev_pci_device_add` without its flexible `optarr` tail (read `optarr[0]` after
/// it when [`xen_pci_dev::PXM`] is set).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PhysdevPciDeviceAdd {
    pub seg: u16,
    pub bus: u8,
    pub devfn: u8,
    /// [`xen_pci_dev`] bits.
    pub flags: u32,
    pub physfn_bus: u8,
    pub physfn_devfn: u8,
    pub _pad: u16,
}
assert_layout!(
    PhysdevPciDeviceAdd,
    size = 12,
    seg = 0,
    bus = 2,
    devfn = 3,
    flags = 4,
    physfn_bus = 8,
    physfn_devfn = 9
);

/// `struct physdev_pci_device` (pci_device_remove, restore_msi_ext, prepare/release_msix).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PhysdevPciDevice {
    pub seg: u16,
    pub bus: u8,
    pub devfn: u8,
}
assert_layout!(PhysdevPciDevice, size = 4, seg = 0, bus = 2, devfn = 3);
