//! The GDT and TSS.
//!
//! Guests see Xen's selector layout: their own descriptors below entry 7168, and in the
//! reserved area the flat selectors of `arch-x86/xen-x86_64.h` (`0xe023`, `0xe02b`,
//! `0xe033`) next to the hypervisor's own ring-0 code and data. The TSS points ring-3 entries
//! at the live guest frame (see `entry.rs`) and gives NMI, #DF and #MC their own stacks.

use super::cpu;
use core::arch::asm;
use core::cell::UnsafeCell;
use hypercall_abi::xen::{FIRST_RESERVED_GDT_BYTE, FIRST_RESERVED_GDT_ENTRY};

/// Hypervisor code selector.
pub const HV_CS: u16 = 0xe008;
/// Hypervisor data/stack selector.
pub const HV_DS: u16 = 0xe010;
/// TSS selector: no I/O bitmap, every port access from ring 3 faults (domUs).
pub const TSS_SEL: u16 = 0xe040;
/// TSS with an I/O bitmap that lets ring 3 reach the ports the hypervisor does not use
/// (loaded while dom0 runs: its drivers reach PCI configuration space and device ports).
pub const TSS_IO_SEL: u16 = 0xe050;

/// Ports only the hypervisor may touch: the PICs, the PIT and its gate, COM1 (the
/// hypervisor console), COM2 (the trace port) and QEMU's exit device. (0xCF9, the reset
/// register, stays open: a 32-bit access to the PCI address port 0xCF8 covers it.)
const HYPERVISOR_PORTS: &[(u16, u16)] =
    &[(0x20, 0x21), (0x40, 0x43), (0x61, 0x61), (0xa0, 0xa1), (0xf4, 0xf7), (0x2f8, 0x2ff), (0x3f8, 0x3ff)];

/// STAR: `syscall` loads CS = 0xe008 / SS = 0xe010; `sysretq` loads CS = 0xe023 + 16 =
/// 0xe033 and SS = 0xe023 + 8 = 0xe02b, exactly Xen's flat ring-3 selectors.
pub const STAR: u64 = (0xe023u64 << 48) | ((HV_CS as u64) << 32);

/// The guest LDT's system descriptor (16 bytes, entries r+12 and r+13).
pub const LDT_SEL: u16 = 0xe060;
const LDT_ENTRY: usize = FIRST_RESERVED_GDT_ENTRY + 12;
const GDT_ENTRIES: usize = FIRST_RESERVED_GDT_ENTRY + 14;
/// Largest LDT (`MMUEXT_SET_LDT` allows 8192 entries).
const MAX_LDT_ENTRIES: usize = 8192;

/// The 64-bit TSS.
#[repr(C, packed(4))]
pub struct Tss {
    _r0: u32,
    pub rsp: [u64; 3],
    _r1: u64,
    pub ist: [u64; 7],
    _r2: u64,
    _r3: u16,
    pub iomap_base: u16,
}

/// IST stack numbers (1-based as in IDT entries).
pub const IST_NMI: u8 = 1;
pub const IST_DF: u8 = 2;
pub const IST_MC: u8 = 3;
/// #DB has a stack of its own: a `mov %ss`/`pop %ss` with a guest data breakpoint defers the
/// #DB past a following `syscall`, into ring 0 on the guest's `%rsp` (XSA-260); with an IST
/// the CPU never writes the frame there.
pub const IST_DB: u8 = 4;
const IST_STACKS: usize = 4;
const IST_STACK_SIZE: usize = 16 * 1024;

/// A TSS followed by its I/O permission bitmap (a set bit denies the port) and the
/// terminating byte the CPU requires.
#[repr(C, packed(4))]
struct TssWithIo {
    tss: Tss,
    bitmap: [u8; 8192],
    end: u8,
}

#[repr(C, align(4096))]
struct Tables {
    gdt: [u64; GDT_ENTRIES],
    tss: Tss,
    tss_io: TssWithIo,
    ist_stacks: [[u8; IST_STACK_SIZE]; IST_STACKS],
    /// The running vCPU's validated LDT descriptors (the CPU reads them through `LDT_SEL`).
    ldt: [u64; MAX_LDT_ENTRIES],
}

struct TablesCell(UnsafeCell<Tables>);
// SAFETY: the tables are written only during boot (single CPU, before any guest runs) and by
// `set_rsp0` from the hypervisor, which runs with interrupts disabled on one CPU; the CPU
// itself reads them.
unsafe impl Sync for TablesCell {}

static TABLES: TablesCell = TablesCell(UnsafeCell::new(Tables {
    gdt: [0; GDT_ENTRIES],
    tss: Tss { _r0: 0, rsp: [0; 3], _r1: 0, ist: [0; 7], _r2: 0, _r3: 0, iomap_base: 0 },
    tss_io: TssWithIo {
        tss: Tss { _r0: 0, rsp: [0; 3], _r1: 0, ist: [0; 7], _r2: 0, _r3: 0, iomap_base: 0 },
        bitmap: [0; 8192],
        end: 0xff,
    },
    ist_stacks: [[0; IST_STACK_SIZE]; IST_STACKS],
    ldt: [0; MAX_LDT_ENTRIES],
}));

const fn seg(access: u64, flags: u64) -> u64 {
    0xffff | (access << 40) | (0xf << 48) | (flags << 52)
}

/// Fills and loads the GDT and TSS; `rsp0` is where ring-3 interrupts push their frame.
pub fn init(rsp0: u64) {
    // SAFETY: boot time, single CPU, nothing else references the tables yet.
    let t = unsafe { &mut *TABLES.0.get() };
    let r = FIRST_RESERVED_GDT_ENTRY;
    t.gdt[r + 1] = seg(0x9a, 0xa); // 0xe008: ring-0 64-bit code (L, G)
    t.gdt[r + 2] = seg(0x92, 0xc); // 0xe010: ring-0 data
    t.gdt[r + 4] = seg(0xfa, 0xc); // 0xe023: ring-3 32-bit code
    t.gdt[r + 5] = seg(0xf2, 0xc); // 0xe02b: ring-3 data / 64-bit stack
    t.gdt[r + 6] = seg(0xfa, 0xa); // 0xe033: ring-3 64-bit code
    let tss_desc = |addr: u64, size: usize| -> (u64, u64) {
        let limit = (size - 1) as u64;
        let lo = (limit & 0xffff)
            | ((addr & 0xff_ffff) << 16)
            | (0x89 << 40)
            | (((limit >> 16) & 0xf) << 48)
            | (((addr >> 24) & 0xff) << 56);
        (lo, addr >> 32)
    };
    (t.gdt[r + 8], t.gdt[r + 9]) = tss_desc(&t.tss as *const Tss as u64, core::mem::size_of::<Tss>());
    (t.gdt[r + 10], t.gdt[r + 11]) =
        tss_desc(&t.tss_io as *const TssWithIo as u64, core::mem::size_of::<TssWithIo>());
    let ist: [u64; IST_STACKS] =
        core::array::from_fn(|i| t.ist_stacks[i].as_ptr() as u64 + IST_STACK_SIZE as u64);
    for tss in [&mut t.tss, &mut t.tss_io.tss] {
        tss.rsp[0] = rsp0;
        let mut ists = tss.ist;
        ists[..IST_STACKS].copy_from_slice(&ist);
        tss.ist = ists;
        // The bitmap starts right after the TSS; for the plain TSS that is beyond its limit,
        // so every port faults.
        tss.iomap_base = core::mem::size_of::<Tss>() as u16;
    }
    for &(first, last) in HYPERVISOR_PORTS {
        for port in first..=last {
            t.tss_io.bitmap[usize::from(port / 8)] |= 1 << (port % 8);
        }
    }

    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let ptr = Pointer { limit: (GDT_ENTRIES * 8 - 1) as u16, base: t.gdt.as_ptr() as u64 };
    const _: () = assert!(FIRST_RESERVED_GDT_BYTE + 0x40 == TSS_SEL as usize);
    const _: () = assert!(FIRST_RESERVED_GDT_BYTE + 0x50 == TSS_IO_SEL as usize);
    // SAFETY: the GDT is valid and static; reloading CS/SS/DS with its ring-0 selectors keeps
    // executing the same code; the TSS descriptor is valid and not busy.
    unsafe {
        asm!(
            "lgdt [{p}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ss, {ds:x}",
            "mov ds, {ds:x}",
            "mov es, {ds:x}",
            "ltr {tss:x}",
            p = in(reg) &ptr,
            cs = in(reg) u64::from(HV_CS),
            ds = in(reg) u64::from(HV_DS),
            tss = in(reg) u64::from(TSS_SEL),
            tmp = out(reg) _,
        );
    }
    cpu::wrmsr(cpu::msr::STAR, STAR);
}

/// Loads a guest's validated descriptors (from `set_gdt`) below the reserved entries, clearing
/// any left from a longer table of the previous vCPU.
pub fn load_guest_descriptors(entries: &[u64], previous_len: usize) {
    // SAFETY: single CPU with interrupts off; the CPU reads GDT entries only when a selector is
    // loaded, which happens after this returns. Reserved entries are never touched.
    let t = unsafe { &mut *TABLES.0.get() };
    let n = entries.len().min(FIRST_RESERVED_GDT_ENTRY);
    t.gdt[..n].copy_from_slice(&entries[..n]);
    if previous_len > n {
        t.gdt[n..previous_len.min(FIRST_RESERVED_GDT_ENTRY)].fill(0);
    }
}

/// Loads a guest's validated LDT descriptors (from `MMUEXT_SET_LDT`, each checked as Xen's
/// `check_descriptor`: no gates, DPL 3), or no LDT at all.
pub fn load_guest_ldt(entries: &[u64]) {
    const _: () = assert!(FIRST_RESERVED_GDT_BYTE + 0x60 == LDT_SEL as usize);
    let n = entries.len().min(MAX_LDT_ENTRIES);
    // SAFETY: single CPU with interrupts off; the CPU reads the LDT only when a guest loads an
    // LDT selector, after this returns. `lldt` takes a present LDT descriptor in the GDT (or
    // the null selector, which leaves no LDT).
    unsafe {
        let t = &mut *TABLES.0.get();
        if n == 0 {
            asm!("lldt {0:x}", in(reg) 0u64, options(nostack, preserves_flags));
            return;
        }
        t.ldt[..n].copy_from_slice(&entries[..n]);
        let (addr, limit) = (t.ldt.as_ptr() as u64, (n * 8 - 1) as u64);
        t.gdt[LDT_ENTRY] = (limit & 0xffff)
            | ((addr & 0xff_ffff) << 16)
            | (0x82 << 40)
            | (((limit >> 16) & 0xf) << 48)
            | (((addr >> 24) & 0xff) << 56);
        t.gdt[LDT_ENTRY + 1] = addr >> 32;
        asm!("lldt {0:x}", in(reg) u64::from(LDT_SEL), options(nostack, preserves_flags));
    }
}

/// Switches between the TSS without I/O access and the one with dom0's I/O bitmap.
pub fn set_io_access(allowed: bool) {
    let (sel, r) = if allowed { (TSS_IO_SEL, 10) } else { (TSS_SEL, 8) };
    // SAFETY: single CPU, interrupts off. `ltr` requires an available (not busy) TSS
    // descriptor, so its busy bit (type 0xb → 0x9) is cleared first; both TSSes carry the same
    // RSP0 and IST stacks, so entries behave the same whichever is loaded.
    unsafe {
        let t = &mut *TABLES.0.get();
        t.gdt[FIRST_RESERVED_GDT_ENTRY + r] &= !(1 << 41);
        asm!("ltr {0:x}", in(reg) u64::from(sel), options(nostack, preserves_flags));
    }
}
