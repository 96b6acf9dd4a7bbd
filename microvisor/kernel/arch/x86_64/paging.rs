//! The hypervisor's address space: the L4 slots 256..=271 that every address space shares
//! (Xen's reserved hole), built once at boot.
//!
//! | slot | range | contents |
//! |---|---|---|
//! | 256 | `0xffff800000000000` | read-only M2P table, readable by guests |
//! | 261 | `0xffff82d080000000` | the hypervisor image (phys + offset), fixmaps |
//! | 262 | `0xffff830000000000` | direct map of all RAM (2 MiB pages, supervisor only) |
//!
//! Guest page tables get copies of these 16 L4 entries, so the intermediate tables below them
//! are shared by every address space and never change after boot.

use super::boot::HV_VIRT_BASE;
use super::bootmem::BootAllocator;
use super::cpu;
use hypercall_abi::xen::{FIRST_HYPERVISOR_L4_SLOT, LAST_HYPERVISOR_L4_SLOT, MACH2PHYS_VIRT_START};
use hypercall_abi::{Mfn, PAGE_SIZE};
use microvisor::mm::{pte, MachineMemory};

/// Start of the direct map of RAM.
pub const DIRECTMAP_BASE: u64 = 0xffff_8300_0000_0000;
/// Where the local APIC's registers are mapped (uncached).
pub const FIXMAP_LAPIC: u64 = 0xffff_82d0_c000_0000;
/// Where the IOAPIC's registers are mapped (uncached).
pub const FIXMAP_IOAPIC: u64 = FIXMAP_LAPIC + 0x1000;

/// Number of hypervisor L4 slots.
pub const NR_HV_SLOTS: usize = LAST_HYPERVISOR_L4_SLOT - FIRST_HYPERVISOR_L4_SLOT + 1;

/// What paging set up.
pub struct AddressSpace {
    /// The 16 entries every guest L4 gets in slots 256..=271.
    pub hv_slots: [u64; NR_HV_SLOTS],
    /// First frame of the (physically contiguous) M2P table.
    pub m2p_base: Mfn,
    /// Frames of the M2P table.
    pub m2p_frames: u64,
    /// One past the highest RAM frame.
    pub max_mfn: Mfn,
}

extern "C" {
    static __image_start: u8;
    static __text_end: u8;
    static __rodata_end: u8;
    static __bss_end: u8;
}

/// Page-table frames come from the boot allocator, below 1 GiB so the early mapping reaches
/// them while the new tables are built.
struct Builder<'a> {
    alloc: &'a mut BootAllocator,
    l4: u64,
}

fn early_ptr(pa: u64) -> *mut u64 {
    debug_assert!(pa < 1 << 30);
    (HV_VIRT_BASE + pa) as *mut u64
}

impl Builder<'_> {
    fn new_table(&mut self) -> u64 {
        let pa = self.alloc.alloc_contiguous(1, 1 << 30);
        // SAFETY: `pa` is a frame just handed out by the boot allocator (RAM below 1 GiB, not
        // used by anything else) and mapped by the early tables; 512 u64s fill it exactly.
        unsafe { core::ptr::write_bytes(early_ptr(pa), 0, 512) };
        pa
    }

    fn entry(&mut self, table: u64, index: usize) -> *mut u64 {
        // SAFETY (for callers): `table` is a page-table frame from `new_table`; index < 512.
        early_ptr(table).wrapping_add(index)
    }

    /// The table under entry `index` of `table`, created with `flags` if missing.
    fn next(&mut self, table: u64, index: usize, flags: u64) -> u64 {
        let e = self.entry(table, index);
        // SAFETY: `e` points into a page-table frame we own (see `entry`).
        let cur = unsafe { e.read() };
        if cur & pte::PRESENT != 0 {
            // SAFETY: as above.
            unsafe { e.write(cur | (flags & (pte::USER | pte::RW))) };
            return cur & pte::ADDR_MASK;
        }
        let t = self.new_table();
        // SAFETY: as above.
        unsafe { e.write(t | flags) };
        t
    }

    /// Maps `va` → `pa` with a leaf at `level` (1 = 4 KiB, 2 = 2 MiB).
    fn map(&mut self, va: u64, pa: u64, level: u32, flags: u64, upper_flags: u64) {
        let mut table = self.l4;
        for l in (level + 1..=4).rev() {
            table = self.next(table, pte::table_index(va, l), upper_flags);
        }
        let leaf = if level == 2 { pte::PSE } else { 0 };
        let e = self.entry(table, pte::table_index(va, level));
        // SAFETY: `e` points into a page-table frame we own.
        unsafe { e.write(pa | flags | leaf) };
    }
}

/// Builds the hypervisor's page tables, switches to them and returns what was built.
pub fn init(alloc: &mut BootAllocator) -> AddressSpace {
    let ram_end = alloc.ram_end();
    let max_mfn = Mfn(ram_end / PAGE_SIZE as u64);
    // M2P: one u64 per frame, physically contiguous so the core can address entries directly.
    let m2p_frames = (max_mfn.0 * 8).div_ceil(PAGE_SIZE as u64);
    let m2p_pa = alloc.alloc_contiguous(m2p_frames, u64::MAX);

    let mut b = Builder { alloc, l4: 0 };
    b.l4 = b.new_table();
    let sup = pte::PRESENT | pte::RW; // intermediate hypervisor tables: supervisor only
    let g = pte::GLOBAL;

    // SAFETY: the linker script defines these symbols; only their addresses are used.
    let (img, text_end, ro_end, bss_end) = unsafe {
        (
            &__image_start as *const u8 as u64,
            &__text_end as *const u8 as u64,
            &__rodata_end as *const u8 as u64,
            &__bss_end as *const u8 as u64,
        )
    };
    let mut va = img;
    while va < bss_end {
        let flags = if va < text_end {
            pte::PRESENT | g
        } else if va < ro_end {
            pte::PRESENT | pte::NX | g
        } else {
            pte::PRESENT | pte::RW | pte::NX | g
        };
        b.map(va, va - HV_VIRT_BASE, 1, flags, sup);
        va += PAGE_SIZE as u64;
    }

    // Direct map of all RAM (and whatever holes lie between), 2 MiB pages.
    let mut pa = 0;
    while pa < ram_end {
        b.map(DIRECTMAP_BASE + pa, pa, 2, pte::PRESENT | pte::RW | pte::NX | g, sup);
        pa += 1 << 21;
    }

    // The read-only M2P, user-readable so PV guests can translate mfn → pfn themselves.
    for i in 0..m2p_frames {
        b.map(
            MACH2PHYS_VIRT_START + i * PAGE_SIZE as u64,
            m2p_pa + i * PAGE_SIZE as u64,
            1,
            pte::PRESENT | pte::USER | pte::NX | g,
            pte::PRESENT | pte::USER,
        );
    }

    // Local APIC registers, uncached.
    let apic_pa = cpu::rdmsr(cpu::msr::APIC_BASE) & 0xf_ffff_f000;
    b.map(FIXMAP_LAPIC, apic_pa, 1, pte::PRESENT | pte::RW | pte::PCD | pte::PWT | pte::NX | g, sup);
    b.map(
        FIXMAP_IOAPIC,
        super::ioapic::IOAPIC_PHYS,
        1,
        pte::PRESENT | pte::RW | pte::PCD | pte::PWT | pte::NX | g,
        sup,
    );

    let l4 = b.l4;
    let mut hv_slots = [0u64; NR_HV_SLOTS];
    for (i, s) in hv_slots.iter_mut().enumerate() {
        // SAFETY: `l4` is the table just built.
        *s = unsafe { early_ptr(l4).add(FIRST_HYPERVISOR_L4_SLOT + i).read() };
    }
    // SAFETY: the new tables map the hypervisor image at the same addresses as the early ones
    // (and the stack, which lives in .bss), so execution continues seamlessly. CR4.PGE makes
    // the hypervisor's global mappings survive guest CR3 switches.
    unsafe {
        cpu::write_cr4(cpu::read_cr4() | (1 << 7));
        cpu::write_cr3(l4);
    }
    let mem = DirectMap { max_mfn };
    for i in 0..m2p_frames {
        mem.fill_frame(Mfn(m2p_pa / PAGE_SIZE as u64 + i), 0xff);
    }
    AddressSpace { hv_slots, m2p_base: Mfn(m2p_pa / PAGE_SIZE as u64), m2p_frames, max_mfn }
}

/// A machine access outside RAM or misaligned: a hypervisor bug (callers validate frame
/// numbers first). Out of line so the checks cost two instructions on hot paths.
#[cold]
#[inline(never)]
fn bad_access(ma: u64, len: usize) -> ! {
    panic!("hypervisor bug: machine access {ma:#x}+{len} outside one RAM frame or misaligned")
}

/// Machine memory through the direct map. Valid once `init` has switched page tables.
#[derive(Clone, Copy)]
pub struct DirectMap {
    pub max_mfn: Mfn,
}

impl DirectMap {
    /// Pointer to machine address `ma`, checked to lie in RAM, for `len` bytes in one frame.
    #[inline(always)]
    fn ptr(&self, ma: u64, len: usize) -> *mut u8 {
        if ma / PAGE_SIZE as u64 != (ma + len.max(1) as u64 - 1) / PAGE_SIZE as u64
            || ma >> 12 >= self.max_mfn.0
        {
            bad_access(ma, len);
        }
        (DIRECTMAP_BASE + ma) as *mut u8
    }

    fn fill_frame(&self, mfn: Mfn, byte: u8) {
        // SAFETY: `ptr` checked the frame is RAM, which the direct map covers read-write.
        unsafe { core::ptr::write_bytes(self.ptr(mfn.addr(), PAGE_SIZE), byte, PAGE_SIZE) }
    }

    #[inline(always)]
    fn atomic_u64(&self, ma: u64) -> &core::sync::atomic::AtomicU64 {
        if !ma.is_multiple_of(8) {
            bad_access(ma, 8);
        }
        // SAFETY: `ptr` checked the address is RAM mapped by the direct map; it is 8-byte
        // aligned; guests may write the same memory concurrently, which is why it is only ever
        // accessed atomically through this reference.
        unsafe { &*(self.ptr(ma, 8) as *const core::sync::atomic::AtomicU64) }
    }

    /// Virtual address of machine address `ma` in the direct map.
    pub fn virt(ma: u64) -> u64 {
        DIRECTMAP_BASE + ma
    }
}

impl MachineMemory for DirectMap {
    fn max_mfn(&self) -> Mfn {
        self.max_mfn
    }
    #[inline]
    fn read(&self, ma: u64, buf: &mut [u8]) {
        let p = self.ptr(ma, buf.len());
        // SAFETY: `ptr` checked the range lies in one RAM frame mapped by the direct map; the
        // destination is our own buffer. Volatile-free copying is fine: the bytes are copied
        // once and only the copy is used.
        unsafe { core::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len()) }
    }
    #[inline]
    fn write(&self, ma: u64, data: &[u8]) {
        let p = self.ptr(ma, data.len());
        // SAFETY: as for `read`; the hypervisor may write any RAM frame.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) }
    }
    fn read_u64(&self, ma: u64) -> u64 {
        self.atomic_u64(ma).load(core::sync::atomic::Ordering::Acquire)
    }
    /// The software page walk's hot read: an entry is 8-byte aligned inside its frame by
    /// construction, so only the frame needs checking.
    #[inline(always)]
    fn read_pte(&self, mfn: Mfn, index: usize) -> u64 {
        if mfn.0 >= self.max_mfn.0 || index >= 512 {
            bad_access(mfn.addr(), 8);
        }
        let ma = mfn.addr() + (index * 8) as u64;
        // SAFETY: the frame is RAM (checked), mapped by the direct map; the entry is 8-byte
        // aligned and inside it; guests may change it concurrently, hence the atomic access.
        let e = unsafe { &*((DIRECTMAP_BASE + ma) as *const core::sync::atomic::AtomicU64) };
        e.load(core::sync::atomic::Ordering::Acquire)
    }
    fn write_u64(&self, ma: u64, val: u64) {
        self.atomic_u64(ma).store(val, core::sync::atomic::Ordering::Release)
    }
    fn fetch_or_u64(&self, ma: u64, bits: u64) -> u64 {
        self.atomic_u64(ma).fetch_or(bits, core::sync::atomic::Ordering::AcqRel)
    }
    fn fetch_and_u64(&self, ma: u64, bits: u64) -> u64 {
        self.atomic_u64(ma).fetch_and(bits, core::sync::atomic::Ordering::AcqRel)
    }
    #[inline]
    fn cmpxchg_u16(&self, ma: u64, old: u16, new: u16) -> u16 {
        assert_eq!(ma % 2, 0, "hypervisor bug: unaligned cmpxchg {ma:#x}");
        // SAFETY: checked RAM, 2-byte aligned, only accessed atomically (see `atomic_u64`).
        let a = unsafe { &*(self.ptr(ma, 2) as *const core::sync::atomic::AtomicU16) };
        match a.compare_exchange(
            old,
            new,
            core::sync::atomic::Ordering::AcqRel,
            core::sync::atomic::Ordering::Acquire,
        ) {
            Ok(v) | Err(v) => v,
        }
    }
    fn zero_frame(&self, mfn: Mfn) {
        self.fill_frame(mfn, 0);
    }
    fn copy_frame(&self, dst: Mfn, src: Mfn) {
        let (d, s) = (self.ptr(dst.addr(), PAGE_SIZE), self.ptr(src.addr(), PAGE_SIZE));
        // SAFETY: both are whole RAM frames in the direct map; `copy` tolerates dst == src.
        unsafe { core::ptr::copy(s, d, PAGE_SIZE) }
    }
}

#[global_allocator]
static HEAP: linked_list_allocator::LockedHeap = linked_list_allocator::LockedHeap::empty();

/// Gives the kernel heap (the core's tables) `bytes` of RAM from the boot allocator.
pub fn init_heap(balloc: &mut super::bootmem::BootAllocator, bytes: u64) {
    let pa = balloc.alloc_contiguous(bytes.div_ceil(PAGE_SIZE as u64), u64::MAX);
    // SAFETY: the range was just handed out by the boot allocator (RAM nobody else uses) and
    // is mapped read-write by the direct map; the heap owns it from now on.
    unsafe { HEAP.lock().init(DirectMap::virt(pa) as *mut u8, bytes as usize) };
}
