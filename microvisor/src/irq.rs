//! Physical interrupts of dom0's devices, delivered as event channels (Xen's pirqs).
//!
//! dom0 maps a GSI with `PHYSDEVOP_map_pirq` (the pirq number equals the GSI) and binds it to
//! a port with `EVTCHNOP_bind_pirq`; the hypervisor then routes the IOAPIC pin. Lines are
//! level triggered: when one fires the arch layer masks the pin, and the pin stays masked
//! until dom0 has served the device and says so with `PHYSDEVOP_eoi`. The core decides; the
//! arch layer applies the [`IrqOp`]s it queues.

use hypercall_abi::{DomId, Port};

/// GSIs of the IOAPIC.
pub const NR_GSIS: u32 = 24;
/// GSIs the hypervisor keeps: the PIT (0, and 2 through the usual override), the cascade,
/// COM1 (4, the hypervisor console) and the RTC (8).
pub const RESERVED_GSIS: [u32; 5] = [0, 1, 2, 4, 8];
/// First interrupt vector used for GSIs (GSI n arrives on vector `GSI_VECTOR_BASE + n`).
pub const GSI_VECTOR_BASE: u8 = 0x30;

/// What the arch layer must do to the interrupt controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqOp {
    /// Route the pin to its vector (level triggered, masked).
    Route(u32),
    Mask(u32),
    Unmask(u32),
}

/// A GSI mapped by a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pirq {
    pub owner: DomId,
    /// Port the pirq is bound to.
    pub port: Option<Port>,
    /// Fired and not yet EOI'd by the owner (the pin is masked meanwhile).
    pub in_service: bool,
}

/// True if a domain may map `gsi`.
pub fn gsi_available(gsi: u32) -> bool {
    gsi < NR_GSIS && !RESERVED_GSIS.contains(&gsi)
}

/// The GSI of interrupt vector `v`, if it is one.
pub fn vector_to_gsi(v: u8) -> Option<u32> {
    let g = u32::from(v.checked_sub(GSI_VECTOR_BASE)?);
    (g < NR_GSIS).then_some(g)
}
