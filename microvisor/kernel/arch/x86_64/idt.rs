//! The IDT: 256 gates pointing at the entry stubs of `entry.rs`, interrupt gates with DPL 0
//! except `int3`, `into` and `int $0x80`, which PV guests may raise from ring 3 (Xen makes the
//! same three DPL 3); NMI, #DF and #MC run on their own IST stacks.

use super::gdt::{HV_CS, IST_DB, IST_DF, IST_MC, IST_NMI};
use core::arch::asm;
use core::cell::UnsafeCell;
use microvisor::x86::vector;

#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    lo: u64,
    hi: u64,
}

struct IdtCell(UnsafeCell<[Gate; 256]>);
// SAFETY: written once during boot on the only CPU; afterwards only the CPU reads it.
unsafe impl Sync for IdtCell {}

static IDT: IdtCell = IdtCell(UnsafeCell::new([Gate { lo: 0, hi: 0 }; 256]));

/// Gates ring 3 may use directly, as in Xen: `int3`, `into` and `int $0x80`. Every other
/// `int $n` from a guest raises #GP, which the core turns into the guest's soft interrupt or
/// #GP by its virtual IDT's DPL.
const DPL3_VECTORS: [u8; 3] = [vector::BP, vector::OF, vector::LEGACY_SYSCALL];

/// Fills the IDT with the stubs at `stubs + 16 * vector` and loads it.
pub fn init(stubs: u64) {
    // SAFETY: boot time, single CPU, nothing reads the IDT before `lidt`.
    let idt = unsafe { &mut *IDT.0.get() };
    for (v, g) in idt.iter_mut().enumerate() {
        let addr = stubs + 16 * v as u64;
        let dpl: u64 = if DPL3_VECTORS.contains(&(v as u8)) { 3 } else { 0 };
        let ist: u64 = match v {
            2 => u64::from(IST_NMI),
            8 => u64::from(IST_DF),
            18 => u64::from(IST_MC),
            1 => u64::from(IST_DB),
            _ => 0,
        };
        // Present, interrupt gate (0xe): IF is cleared on entry, so the hypervisor always
        // runs with interrupts disabled.
        g.lo = (addr & 0xffff)
            | (u64::from(HV_CS) << 16)
            | (ist << 32)
            | ((0x8e | (dpl << 5)) << 40)
            | ((addr >> 16) & 0xffff) << 48;
        g.hi = addr >> 32;
    }
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let p = Pointer { limit: (256 * 16 - 1) as u16, base: idt.as_ptr() as u64 };
    // SAFETY: the IDT is static and every gate points at a valid stub.
    unsafe { asm!("lidt [{}]", in(reg) &p, options(nostack, preserves_flags)) };
}
