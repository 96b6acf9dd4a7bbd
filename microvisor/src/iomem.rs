//! Which machine frames a domain with I/O-memory access (dom0, for its device drivers) may
//! map (XSA-173 class). Frames inside the frame table may be mapped only if they are I/O
//! (holes in the RAM map); frames beyond it only below the CPU's physical address width,
//! since an address beyond the width would alias RAM; the interrupt controllers' register
//! pages never, as the hypervisor owns them. The arch layer fills the policy in at boot from
//! CPUID and the APIC base; the decision is pure data, tested here.

use crate::mm::frame_table::Owner;
use hypercall_abi::Mfn;

/// The I/O-memory policy (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IomemPolicy {
    /// CPUID 0x80000008 EAX[7:0]; `None`: frames beyond the frame table are refused.
    pub phys_addr_bits: Option<u32>,
    /// Register pages the hypervisor keeps (local APIC, IOAPIC).
    pub reserved: [Option<Mfn>; 2],
}

impl IomemPolicy {
    /// Only the I/O frames the frame table knows (the policy before the arch layer sets one).
    pub const IO_FRAMES_ONLY: IomemPolicy = IomemPolicy { phys_addr_bits: None, reserved: [None; 2] };

    /// The policy of a CPU with `phys_addr_bits` of physical address (clamped to the
    /// architectural 32..=52) whose local APIC and IOAPIC registers sit at those addresses.
    pub fn new(phys_addr_bits: u32, lapic_base: u64, ioapic_base: u64) -> IomemPolicy {
        IomemPolicy {
            phys_addr_bits: Some(phys_addr_bits.clamp(32, 52)),
            reserved: [Some(Mfn(lapic_base >> 12)), Some(Mfn(ioapic_base >> 12))],
        }
    }

    /// May a domain (`iomem`: one given I/O-memory access) map `mfn`, whose owner in the frame
    /// table is `owner` (`None`: beyond the table)?
    pub fn permits(&self, iomem: bool, owner: Option<Owner>, mfn: Mfn) -> bool {
        if !iomem || self.reserved.contains(&Some(mfn)) {
            return false;
        }
        match owner {
            Some(Owner::Io) => true,
            Some(_) => false,
            None => self.phys_addr_bits.is_some_and(|bits| mfn.0 < 1u64 << (bits - 12)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypercall_abi::DomId;
    use proptest::prelude::*;

    const LAPIC: u64 = 0xfee0_0000;
    const IOAPIC: u64 = 0xfec0_0000;

    fn policy() -> IomemPolicy {
        IomemPolicy::new(36, LAPIC, IOAPIC)
    }

    #[test]
    fn io_holes_are_mappable_by_a_domain_with_iomem_only() {
        let p = policy();
        assert!(p.permits(true, Some(Owner::Io), Mfn(0xa0)));
        assert!(!p.permits(false, Some(Owner::Io), Mfn(0xa0)), "no iomem, no device memory");
    }

    #[test]
    fn ram_and_hypervisor_frames_never_are() {
        let p = policy();
        assert!(!p.permits(true, Some(Owner::Free), Mfn(0x100)));
        assert!(!p.permits(true, Some(Owner::Domain(DomId(1))), Mfn(0x100)));
        assert!(!p.permits(true, Some(Owner::Xen), Mfn(0x100)));
    }

    #[test]
    fn the_interrupt_controllers_stay_the_hypervisors() {
        let p = policy();
        assert!(!p.permits(true, None, Mfn(LAPIC >> 12)));
        assert!(!p.permits(true, None, Mfn(IOAPIC >> 12)));
        assert!(!p.permits(true, Some(Owner::Io), Mfn(IOAPIC >> 12)));
        assert!(p.permits(true, None, Mfn((IOAPIC >> 12) + 1)), "the next page is a device's");
    }

    #[test]
    fn beyond_ram_only_below_the_physical_address_width() {
        let p = policy();
        let top = 1u64 << (36 - 12);
        assert!(p.permits(true, None, Mfn(top - 1)));
        assert!(!p.permits(true, None, Mfn(top)), "XSA-173: beyond the width aliases RAM");
        assert!(!IomemPolicy::IO_FRAMES_ONLY.permits(true, None, Mfn(0x100)));
    }

    #[test]
    fn the_width_is_clamped_to_what_x86_allows() {
        assert_eq!(IomemPolicy::new(0, LAPIC, IOAPIC).phys_addr_bits, Some(32));
        assert_eq!(IomemPolicy::new(64, LAPIC, IOAPIC).phys_addr_bits, Some(52));
    }

    proptest! {
        #[test]
        fn never_permits_what_the_width_excludes(bits in 0u32..80, mfn in any::<u64>()) {
            let p = IomemPolicy::new(bits, LAPIC, IOAPIC);
            let width = p.phys_addr_bits.unwrap();
            if p.permits(true, None, Mfn(mfn)) {
                prop_assert!(mfn < 1u64 << (width - 12));
            }
        }
    }
}
