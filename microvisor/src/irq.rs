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

/// Interrupt-controller changes the exit path hands to the arch layer, coalesced per GSI so
/// that queueing one never allocates: every routed pin, then the last of mask/unmask asked for
/// each pin (routing leaves a pin masked, so routes go first).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqOps {
    route: u32,
    mask: u32,
    unmask: u32,
}

const _: () = assert!(NR_GSIS <= u32::BITS);

impl IrqOps {
    /// Adds `op` (a GSI the hypervisor does not have is ignored).
    pub fn push(&mut self, op: IrqOp) {
        match op {
            IrqOp::Route(g) if g < NR_GSIS => self.route |= 1 << g,
            IrqOp::Mask(g) if g < NR_GSIS => {
                self.mask |= 1 << g;
                self.unmask &= !(1 << g);
            }
            IrqOp::Unmask(g) if g < NR_GSIS => {
                self.unmask |= 1 << g;
                self.mask &= !(1 << g);
            }
            _ => {}
        }
    }

    /// True if there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.route | self.mask | self.unmask == 0
    }

    /// The operations, in the order to apply them (nothing to step through when empty: the
    /// exit path calls this on every return to a guest).
    #[inline]
    pub fn iter(self) -> impl Iterator<Item = IrqOp> {
        fn bits(mut m: u32) -> impl Iterator<Item = u32> {
            core::iter::from_fn(move || {
                let g = m.trailing_zeros();
                (m != 0).then(|| {
                    m &= m - 1;
                    g
                })
            })
        }
        bits(self.route)
            .map(IrqOp::Route)
            .chain(bits(self.mask).map(IrqOp::Mask))
            .chain(bits(self.unmask).map(IrqOp::Unmask))
    }
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

/// The GSIs mapped as pirqs (pirq number = GSI), a fixed table so that mapping one never
/// allocates.
#[derive(Default)]
pub struct Pirqs([Option<Pirq>; NR_GSIS as usize]);

impl Pirqs {
    pub fn get(&self, gsi: &u32) -> Option<&Pirq> {
        self.0.get(*gsi as usize)?.as_ref()
    }

    pub fn get_mut(&mut self, gsi: &u32) -> Option<&mut Pirq> {
        self.0.get_mut(*gsi as usize)?.as_mut()
    }

    /// Maps `gsi` (which [`gsi_available`] accepted).
    pub fn insert(&mut self, gsi: u32, p: Pirq) {
        if let Some(slot) = self.0.get_mut(gsi as usize) {
            *slot = Some(p);
        }
    }

    pub fn remove(&mut self, gsi: &u32) -> Option<Pirq> {
        self.0.get_mut(*gsi as usize)?.take()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_coalesce_to_the_last_mask_state_after_routing() {
        let mut ops = IrqOps::default();
        assert!(ops.is_empty());
        ops.push(IrqOp::Mask(5));
        ops.push(IrqOp::Route(5));
        ops.push(IrqOp::Unmask(5));
        ops.push(IrqOp::Route(9));
        ops.push(IrqOp::Unmask(9));
        ops.push(IrqOp::Mask(9));
        ops.push(IrqOp::Unmask(99));
        let v: Vec<IrqOp> = ops.iter().collect();
        assert_eq!(v, [IrqOp::Route(5), IrqOp::Route(9), IrqOp::Mask(9), IrqOp::Unmask(5)]);
    }
}
