//! The IOAPIC: routes the device GSIs dom0 maps as pirqs to their vectors, level triggered,
//! and masks/unmasks pins as the core decides.

use super::paging::FIXMAP_IOAPIC;
use microvisor::irq::{GSI_VECTOR_BASE, NR_GSIS};

/// Physical address of the (first) IOAPIC on PC platforms.
pub const IOAPIC_PHYS: u64 = 0xfec0_0000;

const REGSEL: u64 = 0x00;
const WIN: u64 = 0x10;
const MASKED: u32 = 1 << 16;
const LEVEL: u32 = 1 << 15;

fn write(reg: u32, v: u32) {
    // SAFETY: FIXMAP_IOAPIC maps the IOAPIC's register page uncached; register select then
    // window is the architectural access sequence, and the hypervisor never nests.
    unsafe {
        core::ptr::write_volatile((FIXMAP_IOAPIC + REGSEL) as *mut u32, reg);
        core::ptr::write_volatile((FIXMAP_IOAPIC + WIN) as *mut u32, v);
    }
}

fn read(reg: u32) -> u32 {
    // SAFETY: as for `write`.
    unsafe {
        core::ptr::write_volatile((FIXMAP_IOAPIC + REGSEL) as *mut u32, reg);
        core::ptr::read_volatile((FIXMAP_IOAPIC + WIN) as *const u32)
    }
}

fn redir_low(gsi: u32) -> u32 {
    0x10 + 2 * gsi
}

/// Number of pins, and every pin masked.
pub fn init() -> u32 {
    let pins = ((read(1) >> 16) & 0xff) + 1;
    for gsi in 0..pins.min(NR_GSIS) {
        write(redir_low(gsi), MASKED);
        write(redir_low(gsi) + 1, 0);
    }
    pins
}

/// Routes `gsi` to its vector on the boot CPU (APIC id 0), level triggered, still masked.
pub fn route(gsi: u32) {
    if gsi >= NR_GSIS {
        return;
    }
    write(redir_low(gsi) + 1, 0);
    write(redir_low(gsi), MASKED | LEVEL | (u32::from(GSI_VECTOR_BASE) + gsi));
}

/// Masks or unmasks `gsi`.
pub fn set_masked(gsi: u32, masked: bool) {
    if gsi >= NR_GSIS {
        return;
    }
    let v = read(redir_low(gsi));
    write(redir_low(gsi), if masked { v | MASKED } else { v & !MASKED });
}
