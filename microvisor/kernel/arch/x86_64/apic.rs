//! The local APIC timer (one-shot, the scheduler's clock) and the calibration of the TSC and
//! the APIC timer against the PIT at boot.

use super::cpu::{self, inb, outb};
use super::paging::FIXMAP_LAPIC;

/// Interrupt vector of the APIC timer.
pub const TIMER_VECTOR: u8 = 0x20;
/// Spurious-interrupt vector.
pub const SPURIOUS_VECTOR: u8 = 0xff;

const REG_ID: u32 = 0x20;
const REG_EOI: u32 = 0xb0;
const REG_SVR: u32 = 0xf0;
const REG_LVT_TIMER: u32 = 0x320;
const REG_TIMER_INIT: u32 = 0x380;
const REG_TIMER_CUR: u32 = 0x390;
const REG_TIMER_DIV: u32 = 0x3e0;
const REG_LVT_LINT0: u32 = 0x350;
const REG_LVT_LINT1: u32 = 0x360;
const LVT_MASKED: u32 = 1 << 16;

fn read(reg: u32) -> u32 {
    // SAFETY: FIXMAP_LAPIC maps the local APIC's 4 KiB register page uncached; `reg` is one of
    // the architectural register offsets, 16-byte aligned.
    unsafe { core::ptr::read_volatile((FIXMAP_LAPIC + u64::from(reg)) as *const u32) }
}

fn write(reg: u32, v: u32) {
    // SAFETY: as for `read`.
    unsafe { core::ptr::write_volatile((FIXMAP_LAPIC + u64::from(reg)) as *mut u32, v) }
}

/// Clock rates measured at boot.
#[derive(Clone, Copy, Debug)]
pub struct Rates {
    pub tsc_hz: u64,
    /// APIC timer counts per second (divide-by-1).
    pub apic_hz: u64,
}

static mut RATES: Rates = Rates { tsc_hz: 0, apic_hz: 0 };

/// Enables the local APIC with the timer masked, masks the legacy PIC, and calibrates.
pub fn init() -> Rates {
    // Mask both 8259 PICs: all interrupts come through the local APIC.
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    let base = cpu::rdmsr(cpu::msr::APIC_BASE);
    cpu::wrmsr(cpu::msr::APIC_BASE, base | (1 << 11));
    write(REG_SVR, 0x100 | u32::from(SPURIOUS_VECTOR));
    write(REG_LVT_LINT0, LVT_MASKED);
    write(REG_LVT_LINT1, LVT_MASKED);
    write(REG_TIMER_DIV, 0xb); // divide by 1
    write(REG_LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR));
    let _ = read(REG_ID);

    // Count TSC ticks and APIC timer counts over 10 ms of PIT time (1.193182 MHz).
    const PIT_HZ: u64 = 1_193_182;
    const COUNT: u16 = 11_932;
    // Channel 2 in mode 0 counts down while its gate is high and raises OUT at zero.
    let gate = inb(0x61) & !0x03; // gate low, speaker off
    outb(0x61, gate);
    outb(0x43, 0xb0); // channel 2, lo/hi byte, mode 0
    outb(0x42, COUNT as u8);
    outb(0x42, (COUNT >> 8) as u8);
    write(REG_TIMER_INIT, u32::MAX);
    let t0 = cpu::rdtsc();
    outb(0x61, gate | 1);
    while inb(0x61) & 0x20 == 0 {}
    let t1 = cpu::rdtsc();
    let apic_elapsed = u32::MAX - read(REG_TIMER_CUR);
    write(REG_TIMER_INIT, 0);
    let secs_num = u64::from(COUNT);
    let rates =
        Rates { tsc_hz: (t1 - t0) * PIT_HZ / secs_num, apic_hz: u64::from(apic_elapsed) * PIT_HZ / secs_num };
    // SAFETY: written once at boot before any reader runs; single CPU.
    unsafe { RATES = rates };
    rates
}

/// Arms the timer to fire once after `ticks` TSC ticks (clamped to the counter's range).
/// Physical address of the local APIC's registers.
pub fn base_address() -> u64 {
    cpu::rdmsr(cpu::msr::APIC_BASE) & !0xfff
}

pub fn arm_after_tsc_ticks(ticks: u64) {
    // SAFETY: RATES is written once during `init`, before the scheduler runs.
    let r = unsafe { RATES };
    let count = (u128::from(ticks) * u128::from(r.apic_hz) / u128::from(r.tsc_hz.max(1)))
        .clamp(1, u128::from(u32::MAX));
    write(REG_LVT_TIMER, u32::from(TIMER_VECTOR));
    write(REG_TIMER_INIT, count as u32);
}

/// Stops the timer.
pub fn disarm() {
    write(REG_TIMER_INIT, 0);
}

/// Acknowledges the interrupt being handled.
pub fn eoi() {
    write(REG_EOI, 0);
}
