//! Memory devices can reach: machine-contiguous DMA regions and uncached mappings of device
//! memory (BARs), each in its own virtual window of dom0's address space.
//!
//! A PV domain's pages are pseudo-physical: consecutive pfns are scattered machine frames,
//! and a device sees machine addresses only. A DMA region larger than a page must therefore be
//! built from a *machine*-contiguous extent: dom0 runs at its page limit, so it first gives
//! back as many pages as it wants (`XENMEM_decrease_reservation`, after taking them out of its
//! direct map), then asks for one naturally aligned extent of `2^order` frames
//! (`XENMEM_increase_reservation` with `extent_order`), and maps the extent at a fresh range of
//! the DMA window. Freeing runs the same steps backwards (`populate_physmap` refills the pfns
//! given up). Regions are at most 2^9 pages (2 MiB), the hypervisor's largest extent.
//!
//! Device memory is mapped with `mmu_update(foreigndom = DOMID_IO)`: the hypervisor accepts
//! non-RAM frames for dom0 and forces the mapping uncached.

use alloc::vec::Vec;
use hypercall_abi::memory::{op as memop, XenMemoryReservation};
use hypercall_abi::xen::{mmu, mmuext, MmuUpdate, MmuextOp};
use hypercall_abi::{DomId, Errno, Mfn, Pfn, PAGE_SIZE};
use pv_guest_kernel::hypercall;
use pv_guest_kernel::mm::{self, pt};
use spin::Mutex;

const PAGE: u64 = PAGE_SIZE as u64;
/// Largest extent order the hypervisor hands out.
pub const MAX_ORDER: u32 = 9;
/// Virtual window of DMA regions (1 GiB; regions of one order reuse each other's ranges).
pub const DMA_WINDOW: u64 = pv_guest_kernel::va::DMA;
const DMA_WINDOW_SIZE: u64 = 1 << 30;
/// Virtual window of device-memory mappings.
pub const MMIO_WINDOW: u64 = pv_guest_kernel::va::DEVICE_MEMORY;
const MMIO_WINDOW_SIZE: u64 = 1 << 30;

/// A machine-contiguous, mapped, zeroed region.
#[derive(Debug)]
pub struct DmaRegion {
    /// Where dom0 reaches it.
    pub va: u64,
    /// Where a device reaches it.
    pub ma: u64,
    /// Pages asked for (the extent may be larger: `1 << order`).
    pub pages: usize,
    order: u32,
    /// The pfns given up for the extent, refilled when it is freed.
    pfns: Vec<Pfn>,
}

impl DmaRegion {
    /// Bytes usable.
    pub fn len(&self) -> usize {
        self.pages * PAGE_SIZE
    }
    /// True if `[va, va + len)` lies inside the region.
    pub fn contains(&self, va: u64, len: usize) -> bool {
        va >= self.va && va.checked_add(len as u64).is_some_and(|end| end <= self.va + self.len() as u64)
    }
    /// The machine address of `va` inside the region.
    pub fn ma_of(&self, va: u64) -> u64 {
        self.ma + (va - self.va)
    }
}

struct Windows {
    dma_next: u64,
    /// Freed DMA ranges, by order, for reuse.
    dma_free: [Vec<u64>; MAX_ORDER as usize + 1],
    mmio_next: u64,
    /// Mapped device ranges: (machine address, virtual address, bytes).
    mmio: Vec<(u64, u64, u64)>,
}

static WINDOWS: Mutex<Windows> = Mutex::new(Windows {
    dma_next: DMA_WINDOW,
    dma_free: [const { Vec::new() }; MAX_ORDER as usize + 1],
    mmio_next: MMIO_WINDOW,
    mmio: Vec::new(),
});

/// `ceil(log2(pages))`.
pub fn order_for(pages: usize) -> u32 {
    pages.max(1).next_power_of_two().trailing_zeros()
}

fn reservation(cmd: u32, list: &mut [u64], order: u32) -> Result<usize, Errno> {
    let mut r = XenMemoryReservation {
        extent_start: list.as_mut_ptr() as u64,
        nr_extents: list.len() as u64,
        extent_order: order,
        mem_flags: 0,
        domid: DomId::SELF,
        ..Default::default()
    };
    hypercall::check(hypercall::memory_op(cmd, &mut r)).map(|n| n as usize)
}

/// Writes L1 entries for `count` pages from `va`: entry `i` is `pte(i)`; a batch per call.
fn write_l1es(va: u64, count: usize, owner: DomId, pte: impl Fn(usize) -> u64) -> Result<(), Errno> {
    let mut batch: Vec<MmuUpdate> = Vec::new();
    batch.try_reserve_exact(count.min(pt::ENTRIES)).map_err(|_| Errno::ENOMEM)?;
    let mut i = 0;
    while i < count {
        batch.clear();
        while i < count && batch.len() < pt::ENTRIES {
            let at = mm::entry_maddr(va + i as u64 * PAGE, 1)?;
            batch.push(MmuUpdate { ptr: at | mmu::NORMAL_PT_UPDATE, val: pte(i) });
            i += 1;
        }
        let mut done = 0u32;
        hypercall::check(hypercall::mmu_update(&batch, &mut done, owner))?;
        if done as usize != batch.len() {
            return Err(Errno::EIO);
        }
    }
    Ok(())
}

fn flush_tlb() -> Result<(), Errno> {
    let op = [MmuextOp { cmd: mmuext::TLB_FLUSH_LOCAL, ..Default::default() }];
    let mut done = 0u32;
    hypercall::check(hypercall::mmuext_op(&op, &mut done, DomId::SELF)).map(|_| ())
}

/// Takes fresh frames for `pfns` (after their own frames were given away) and puts them back
/// in the direct map, then returns the pages to the allocator.
fn refill(pfns: &[Pfn]) -> Result<(), Errno> {
    let mut list: Vec<u64> = pfns.iter().map(|p| p.0).collect();
    let got = reservation(memop::POPULATE_PHYSMAP, &mut list, 0)?;
    let mfns: Vec<Mfn> = list[..got].iter().map(|&m| Mfn(m)).collect();
    let restored = mm::restore_frames(&pfns[..got], &mfns)?;
    for p in &pfns[..restored] {
        let _ = mm::free_page(*p);
    }
    if got < pfns.len() {
        return Err(Errno::ENOMEM);
    }
    Ok(())
}

/// Allocates a zeroed machine-contiguous region of at least `pages` pages.
pub fn alloc(pages: usize) -> Result<DmaRegion, Errno> {
    let order = order_for(pages);
    if pages == 0 || order > MAX_ORDER {
        return Err(Errno::EINVAL);
    }
    let n = 1usize << order;
    let va = {
        let mut w = WINDOWS.lock();
        match w.dma_free[order as usize].pop() {
            Some(va) => va,
            None => {
                let size = n as u64 * PAGE;
                // Keep the range naturally aligned so large regions map as few L1s as possible.
                let va = w.dma_next.next_multiple_of(size);
                if va + size > DMA_WINDOW + DMA_WINDOW_SIZE {
                    return Err(Errno::ENOMEM);
                }
                w.dma_next = va + size;
                va
            }
        }
    };
    let give_back = |va| WINDOWS.lock().dma_free[order as usize].push(va);
    // 1. Pages to trade, out of the direct map.
    let mut pfns = Vec::new();
    pfns.try_reserve_exact(n).map_err(|_| Errno::ENOMEM)?;
    for _ in 0..n {
        match mm::alloc_page() {
            Ok(p) => pfns.push(p.pfn),
            Err(e) => {
                for p in &pfns {
                    let _ = mm::free_page(*p);
                }
                give_back(va);
                return Err(e);
            }
        }
    }
    let mut mfns = Vec::new();
    if let Err(e) = mm::release_frames(&pfns, &mut mfns) {
        // The pages it took out of the direct map are listed in `mfns`: put them back.
        let taken = mfns.len();
        let _ = mm::restore_frames(&pfns[..taken], &mfns);
        for p in &pfns {
            let _ = mm::free_page(*p);
        }
        give_back(va);
        return Err(e);
    }
    // 2. Give them back, 3. take one extent.
    let mut list: Vec<u64> = mfns.iter().map(|m| m.0).collect();
    let returned = reservation(memop::DECREASE_RESERVATION, &mut list, 0).unwrap_or(0);
    let mut ext = [0u64; 1];
    let got = if returned == n {
        reservation(memop::INCREASE_RESERVATION, &mut ext, order).unwrap_or(0)
    } else {
        0
    };
    if got != 1 {
        // Undo: frames not returned are still ours but unmapped; refill everything from scratch
        // for the returned ones and re-map the others.
        let _ = mm::restore_frames(&pfns[returned..], &mfns[returned..]);
        for p in &pfns[returned..] {
            let _ = mm::free_page(*p);
        }
        let _ = refill(&pfns[..returned]);
        give_back(va);
        return Err(Errno::ENOMEM);
    }
    let base = ext[0];
    // 4. Map the extent (the hypervisor zeroed it).
    if let Err(e) =
        write_l1es(va, n, DomId::SELF, |i| pt::make(Mfn(base + i as u64), pt::PAGE_KERNEL | pt::NX))
    {
        let _ = unmap_range(va, n);
        let mut ext = [base];
        let _ = reservation(memop::DECREASE_RESERVATION, &mut ext, order);
        let _ = refill(&pfns);
        give_back(va);
        return Err(e);
    }
    Ok(DmaRegion { va, ma: base << 12, pages, order, pfns })
}

fn unmap_range(va: u64, n: usize) -> Result<(), Errno> {
    write_l1es(va, n, DomId::SELF, |_| 0)?;
    flush_tlb()
}

/// Frees a region: unmaps it, returns the extent and refills the pfns traded for it.
pub fn free(r: DmaRegion) -> Result<(), Errno> {
    let n = 1usize << r.order;
    unmap_range(r.va, n)?;
    let mut ext = [r.ma >> 12];
    let returned = reservation(memop::DECREASE_RESERVATION, &mut ext, r.order)?;
    if returned != 1 {
        return Err(Errno::EBUSY);
    }
    WINDOWS.lock().dma_free[r.order as usize].push(r.va);
    refill(&r.pfns)
}

/// Maps `size` bytes of device memory at machine address `pa` (uncached) and returns the
/// virtual address of `pa`. A range already mapped is reused.
pub fn map_mmio(pa: u64, size: u64) -> Result<u64, Errno> {
    let end = pa.checked_add(size.max(1)).ok_or(Errno::EINVAL)?;
    let mut w = WINDOWS.lock();
    if let Some(&(ma, va, _)) = w.mmio.iter().find(|&&(ma, _, len)| pa >= ma && end <= ma + len) {
        return Ok(va + (pa - ma));
    }
    let first = pa & !(PAGE - 1);
    let pages = (end - first).div_ceil(PAGE);
    let va = w.mmio_next;
    if va + pages * PAGE > MMIO_WINDOW + MMIO_WINDOW_SIZE {
        return Err(Errno::ENOMEM);
    }
    write_l1es(va, pages as usize, DomId::IO, |i| {
        pt::make(Mfn((first >> 12) + i as u64), pt::PAGE_KERNEL | pt::PCD | pt::PWT | pt::NX)
    })?;
    w.mmio_next = va + pages * PAGE;
    w.mmio.push((first, va, pages * PAGE));
    Ok(va + (pa - first))
}

/// The virtual address of device memory at `pa` if `[pa, pa + size)` is mapped.
pub fn mmio_va(pa: u64, size: u64) -> Option<u64> {
    let end = pa.checked_add(size)?;
    let w = WINDOWS.lock();
    w.mmio.iter().find(|&&(ma, _, len)| pa >= ma && end <= ma + len).map(|&(ma, va, _)| va + (pa - ma))
}
