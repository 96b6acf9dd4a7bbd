//! Port I/O and the legacy PCI configuration mechanism (0xCF8/0xCFC) for dom0's drivers.
//!
//! dom0 runs with an I/O bitmap that allows every port but the hypervisor's own, so `in`/`out`
//! work directly from its kernel (ring 3); a domU faults on the same instructions. The
//! address/data pair is two accesses, so upcalls are masked around it: no event handler may
//! slip a configuration access in between (none does today, the guard keeps it so).

use core::arch::asm;
use dom0::pci::{Bdf, ConfigSpace, CONFIG_ADDRESS_PORT, CONFIG_DATA_PORT};
use pv_guest_kernel::events;
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction};

/// `outl`.
pub fn outl(port: u16, v: u32) {
    // SAFETY: port output touches no memory; dom0's I/O bitmap decides whether it reaches the
    // device, and the ports used here (PCI configuration) are dom0's to drive.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags)) }
}

/// `inl`.
pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as for `outl`; the result lands in a register.
    unsafe { asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack, preserves_flags)) };
    v
}

/// PCI configuration space through the legacy ports.
#[derive(Clone, Copy, Debug, Default)]
pub struct PortCam;

impl ConfigSpace for PortCam {
    fn read32(&self, bdf: Bdf, offset: u8) -> u32 {
        let _g = events::mask_upcalls();
        outl(CONFIG_ADDRESS_PORT, bdf.config_address(offset));
        inl(CONFIG_DATA_PORT)
    }

    fn write32(&mut self, bdf: Bdf, offset: u8, value: u32) {
        let _g = events::mask_upcalls();
        outl(CONFIG_ADDRESS_PORT, bdf.config_address(offset));
        outl(CONFIG_DATA_PORT, value);
    }
}

fn bdf(df: DeviceFunction) -> Bdf {
    // virtio-drivers only passes addresses it got from us or from its own enumeration, which
    // keeps device < 32 and function < 8; masking keeps a bad one harmless anyway.
    Bdf { bus: df.bus, dev: df.device & 0x1f, func: df.function & 7 }
}

impl ConfigurationAccess for PortCam {
    fn read_word(&self, df: DeviceFunction, register_offset: u8) -> u32 {
        self.read32(bdf(df), register_offset)
    }

    fn write_word(&mut self, df: DeviceFunction, register_offset: u8, data: u32) {
        self.write32(bdf(df), register_offset, data)
    }

    unsafe fn unsafe_clone(&self) -> Self {
        PortCam
    }
}
