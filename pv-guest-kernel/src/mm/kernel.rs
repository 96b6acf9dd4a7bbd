//! The kernel side of [`super`]: the global memory-manager state and the hypercalls.

use super::alloc::PfnAllocator;
use super::layout::{self, BootInfo};
use super::pt;
use crate::hypercall;
use hypercall_abi::xen::{
    in_hypervisor_hole, mmu, mmuext, uvmf, MmuUpdate, MmuextOp, StartInfo, INVALID_P2M_ENTRY,
    MACH2PHYS_VIRT_END, MACH2PHYS_VIRT_START,
};
use hypercall_abi::{DomId, Errno, Mfn, Pfn, PAGE_SIZE};
use spin::Mutex;

const PAGE: u64 = PAGE_SIZE as u64;

/// Why [`init`] could not set memory management up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmError {
    /// start_info describes an impossible layout.
    Layout(layout::LayoutError),
    /// The allocator's bitmap did not fit the heap.
    NoMemory,
    /// `init` already ran.
    AlreadyInitialised,
}

/// A snapshot of the memory manager's figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmInfo {
    pub virt_base: u64,
    pub nr_pages: u64,
    /// First pfn after the builder's bootstrap data.
    pub first_free: Pfn,
    /// pfns below this are mapped in the direct map.
    pub mapped_end: Pfn,
    /// Pages the builder mapped (the bootstrap region, padding included).
    pub boot_mapped_end: Pfn,
    pub free_pages: u64,
    /// Page-table frames this kernel created.
    pub pt_frames: u64,
    /// The L4 in use.
    pub l4: Mfn,
}

struct Mm {
    virt_base: u64,
    p2m: &'static mut [u64],
    l4: Mfn,
    first_free: Pfn,
    boot_mapped_end: u64,
    /// pfns `0..mapped_end` are in the direct map.
    mapped_end: u64,
    alloc: PfnAllocator,
    pt_frames: u64,
}

static MM: Mutex<Option<Mm>> = Mutex::new(None);

/// Number of M2P entries the hypervisor's window can hold.
const M2P_ENTRIES: u64 = (MACH2PHYS_VIRT_END - MACH2PHYS_VIRT_START) / 8;

/// The M2P entry of `mfn` (the pfn it belongs to in its owner's space), read from the
/// hypervisor's read-only table. `None` for frame numbers outside the window.
pub fn mfn_to_pfn(mfn: Mfn) -> Option<Pfn> {
    if mfn.0 >= M2P_ENTRIES {
        return None;
    }
    let p = (MACH2PHYS_VIRT_START + mfn.0 * 8) as *const u64;
    // SAFETY: every PV guest has the M2P mapped read-only at MACH2PHYS_VIRT_START, one u64 per
    // machine frame; `mfn` is bounded to the window above and callers only pass frames of
    // real RAM (their own), whose entries are mapped.
    Some(Pfn(unsafe { p.read_volatile() }))
}

impl Mm {
    fn va(&self, pfn: u64) -> u64 {
        self.virt_base + pfn * PAGE
    }

    fn pfn_to_mfn(&self, pfn: u64) -> Option<Mfn> {
        self.p2m.get(pfn as usize).map(|&m| Mfn(m))
    }

    /// The direct-map address of one of our page-table frames, checked both ways (M2P and
    /// P2M agree, and the frame is mapped).
    fn table_va(&self, table: Mfn) -> Result<u64, Errno> {
        let pfn = mfn_to_pfn(table).ok_or(Errno::EFAULT)?.0;
        if pfn >= self.mapped_end || self.pfn_to_mfn(pfn) != Some(table) {
            return Err(Errno::EFAULT);
        }
        Ok(self.va(pfn))
    }

    fn read_pte(&self, table: Mfn, idx: usize) -> Result<u64, Errno> {
        let va = self.table_va(table)? + idx as u64 * 8;
        // SAFETY: `table_va` checked that the frame is ours and mapped at `va`'s page; page
        // tables are readable (read-only) and the hypervisor only changes them when we ask.
        Ok(unsafe { (va as *const u64).read_volatile() })
    }

    /// The entry mapping `va` at `level` (1 = the L1 entry), if the walk gets there.
    fn walk(&self, va: u64, level: u32) -> Result<Option<(Mfn, u64)>, Errno> {
        let mut table = self.l4;
        for l in (level..=4).rev() {
            let e = self.read_pte(table, pt::table_index(va, l))?;
            if l == level {
                return Ok(Some((table, e)));
            }
            if !pt::is_present(e) {
                return Ok(None);
            }
            if e & pt::PSE != 0 {
                return Err(Errno::EINVAL);
            }
            table = pt::mfn(e);
        }
        Ok(None)
    }

    /// A zeroed page-table frame, read-only in the direct map, ready to hook in.
    fn new_pt_frame(&mut self) -> Result<Mfn, Errno> {
        let pfn = self.alloc.alloc().ok_or(Errno::ENOMEM)?;
        let release = |mm: &mut Mm, e| {
            let _ = mm.alloc.free(pfn);
            Err(e)
        };
        if pfn.0 >= self.mapped_end {
            return release(self, Errno::ENOMEM);
        }
        let Some(mfn) = self.pfn_to_mfn(pfn.0) else { return release(self, Errno::EFAULT) };
        let va = self.va(pfn.0);
        // SAFETY: the pfn was just allocated, so no Rust object lives in it, and it is mapped
        // writable at `va` in the direct map.
        unsafe { core::ptr::write_bytes(va as *mut u8, 0, PAGE_SIZE) };
        if let Err(e) = hypercall::check(hypercall::update_va_mapping(
            va,
            pt::make(mfn, pt::PAGE_KERNEL_RO),
            uvmf::INVLPG,
        )) {
            return release(self, e);
        }
        self.pt_frames += 1;
        Ok(mfn)
    }

    /// The L1 table covering `va`, creating the missing levels.
    fn ensure_l1(&mut self, va: u64) -> Result<Mfn, Errno> {
        self.ensure_table(va, 1)
    }

    /// The table at `level` (1 = L1 .. 4 = the L4) covering `va`, creating the missing
    /// levels above it.
    fn ensure_table(&mut self, va: u64, level: u32) -> Result<Mfn, Errno> {
        if !(1..=4).contains(&level) {
            return Err(Errno::EINVAL);
        }
        let mut table = self.l4;
        for level in (level + 1..=4).rev() {
            let idx = pt::table_index(va, level);
            let e = self.read_pte(table, idx)?;
            table = if pt::is_present(e) {
                if e & pt::PSE != 0 {
                    return Err(Errno::EINVAL);
                }
                pt::mfn(e)
            } else {
                let new = self.new_pt_frame()?;
                let req = MmuUpdate {
                    ptr: ((table.0 << 12) + idx as u64 * 8) | mmu::NORMAL_PT_UPDATE,
                    val: pt::make(new, pt::PAGE_TABLE),
                };
                mmu_update(&[req])?;
                new
            };
        }
        Ok(table)
    }

    fn map_page(&mut self, va: u64, mfn: Mfn, flags: u64) -> Result<(), Errno> {
        if !pt::is_canonical(va) || in_hypervisor_hole(va) {
            return Err(Errno::EINVAL);
        }
        self.ensure_l1(va)?;
        hypercall::check(hypercall::update_va_mapping(pt::page_base(va), pt::make(mfn, flags), uvmf::INVLPG))
            .map(|_| ())
    }

    /// Extends the direct map over pfns `mapped_end..nr_pages`, one L1 (2 MiB) per batch.
    fn extend_direct_map(&mut self) -> Result<(), Errno> {
        let nr = self.p2m.len() as u64;
        while self.mapped_end < nr {
            let start = self.mapped_end;
            let va = self.va(start);
            let l1 = self.ensure_l1(va)?;
            // The rest of this L1: up to the next 2 MiB boundary or the last page.
            let in_table = (pt::ENTRIES - pt::table_index(va, 1)) as u64;
            let end = (start + in_table).min(nr);
            let mut batch = [MmuUpdate::default(); pt::ENTRIES];
            for (req, pfn) in batch.iter_mut().zip(start..end) {
                let mfn = self.pfn_to_mfn(pfn).ok_or(Errno::EFAULT)?;
                let slot = pt::table_index(self.va(pfn), 1) as u64;
                *req = MmuUpdate {
                    ptr: ((l1.0 << 12) + slot * 8) | mmu::NORMAL_PT_UPDATE,
                    val: pt::make(mfn, pt::PAGE_KERNEL),
                };
            }
            mmu_update(&batch[..(end - start) as usize])?;
            self.mapped_end = end;
            if !self.alloc.grow(end) {
                return Err(Errno::ENOMEM);
            }
        }
        Ok(())
    }
}

/// `mmu_update` of `reqs` on our own tables, all or error.
fn mmu_update(reqs: &[MmuUpdate]) -> Result<(), Errno> {
    let mut done = 0u32;
    hypercall::check(hypercall::mmu_update(reqs, &mut done, DomId::SELF))?;
    if done as usize != reqs.len() {
        return Err(Errno::EIO);
    }
    Ok(())
}

/// Sets memory management up from start_info: the P2M, the bootstrap layout, the allocator,
/// then the full direct map. `si_va` is where the builder put start_info and `kernel_end` the
/// end of the image. An error from the direct-map extension (e.g. -ENOSYS from a hypervisor
/// without MMU hypercalls) is returned in the `Ok` value: the manager still works over the
/// bootstrap region.
pub fn init(si: &StartInfo, virt_base: u64, kernel_end: u64, si_va: u64) -> Result<Option<Errno>, MmError> {
    let mut g = MM.lock();
    if g.is_some() {
        return Err(MmError::AlreadyInitialised);
    }
    let bi = BootInfo::new(si, virt_base, kernel_end, si_va);
    let first_free = layout::first_free_pfn(&bi).map_err(MmError::Layout)?;
    if !si.mfn_list.is_multiple_of(8) || !si.pt_base.is_multiple_of(PAGE) || si.pt_base < virt_base {
        return Err(MmError::Layout(layout::LayoutError::OutsideRegion("P2M list or page tables")));
    }
    let nr = usize::try_from(si.nr_pages).map_err(|_| MmError::NoMemory)?;
    // SAFETY: the builder maps the P2M list writable at `mfn_list`, `nr_pages` u64s long,
    // inside the bootstrap region whose extent `first_free_pfn` just validated; this is the
    // only reference the kernel ever makes to it.
    let p2m = unsafe { core::slice::from_raw_parts_mut(si.mfn_list as *mut u64, nr) };
    let l4_pfn = (si.pt_base - virt_base) / PAGE;
    let l4 =
        Mfn(*p2m.get(l4_pfn as usize).ok_or(MmError::Layout(layout::LayoutError::OutsideRegion("L4")))?);
    let alloc = PfnAllocator::new(first_free.0, first_free).map_err(|_| MmError::NoMemory)?;
    let mut mm = Mm {
        virt_base,
        p2m,
        l4,
        first_free,
        boot_mapped_end: first_free.0,
        mapped_end: first_free.0,
        alloc,
        pt_frames: 0,
    };
    // The builder mapped a padding area after its data; find where its mapping ends.
    while mm.mapped_end < si.nr_pages {
        let va = mm.va(mm.mapped_end);
        let ok = matches!(mm.walk(va, 1), Ok(Some((_, e))) if pt::is_present(e)
            && Some(pt::mfn(e)) == mm.pfn_to_mfn(mm.mapped_end));
        if !ok {
            break;
        }
        mm.mapped_end += 1;
    }
    mm.boot_mapped_end = mm.mapped_end;
    if !mm.alloc.grow(mm.mapped_end) {
        return Err(MmError::NoMemory);
    }
    let extended = mm.extend_direct_map().err();
    *g = Some(mm);
    Ok(extended)
}

fn with<R>(f: impl FnOnce(&mut Mm) -> Result<R, Errno>) -> Result<R, Errno> {
    match MM.lock().as_mut() {
        Some(mm) => f(mm),
        None => Err(Errno::ENODEV),
    }
}

/// The memory manager's figures, once initialised.
pub fn info() -> Option<MmInfo> {
    MM.lock().as_ref().map(|mm| MmInfo {
        virt_base: mm.virt_base,
        nr_pages: mm.p2m.len() as u64,
        first_free: mm.first_free,
        mapped_end: Pfn(mm.mapped_end),
        boot_mapped_end: Pfn(mm.boot_mapped_end),
        free_pages: mm.alloc.free_pages(),
        pt_frames: mm.pt_frames,
        l4: mm.l4,
    })
}

/// The P2M entry of `pfn`.
pub fn pfn_to_mfn(pfn: Pfn) -> Option<Mfn> {
    MM.lock().as_ref().and_then(|mm| mm.pfn_to_mfn(pfn.0))
}

/// The direct-map address of `pfn`, if it is mapped.
pub fn pfn_to_virt(pfn: Pfn) -> Option<u64> {
    MM.lock().as_ref().filter(|mm| pfn.0 < mm.mapped_end).map(|mm| mm.va(pfn.0))
}

/// The pfn a direct-map address belongs to.
pub fn virt_to_pfn(va: u64) -> Option<Pfn> {
    MM.lock()
        .as_ref()
        .and_then(|mm| va.checked_sub(mm.virt_base).map(|o| o / PAGE).filter(|&p| p < mm.mapped_end))
        .map(Pfn)
}

/// The L1 entry mapping `va` (present or not), or `None` if an upper level is missing.
pub fn lookup(va: u64) -> Result<Option<u64>, Errno> {
    if !pt::is_canonical(va) || in_hypervisor_hole(va) {
        return Err(Errno::EINVAL);
    }
    with(|mm| Ok(mm.walk(va, 1)?.map(|(_, e)| e)))
}

/// Maps the page at `va` to machine frame `mfn` with `flags` ([`pt::PAGE_KERNEL`] etc.),
/// creating intermediate tables as needed.
pub fn map_page(va: u64, mfn: Mfn, flags: u64) -> Result<(), Errno> {
    with(|mm| mm.map_page(va, mfn, flags))
}

/// Removes the mapping of the page at `va`.
pub fn unmap_page(va: u64) -> Result<(), Errno> {
    with(|mm| match mm.walk(va, 1)? {
        Some((_, e)) if pt::is_present(e) => {
            hypercall::check(hypercall::update_va_mapping(pt::page_base(va), 0, uvmf::INVLPG)).map(|_| ())
        }
        _ => Err(Errno::ENOENT),
    })
}

/// A page from the allocator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    pub pfn: Pfn,
    pub mfn: Mfn,
    /// Its direct-map address.
    pub va: u64,
}

/// Allocates a zeroed page.
pub fn alloc_page() -> Result<Page, Errno> {
    with(|mm| {
        let pfn = mm.alloc.alloc().ok_or(Errno::ENOMEM)?;
        let mfn = mm.pfn_to_mfn(pfn.0).ok_or(Errno::EFAULT)?;
        let va = mm.va(pfn.0);
        // SAFETY: the allocator only hands out pfns below `mapped_end`, mapped writable in
        // the direct map, and no Rust object lives in a free page.
        unsafe { core::ptr::write_bytes(va as *mut u8, 0, PAGE_SIZE) };
        Ok(Page { pfn, mfn, va })
    })
}

/// Allocates `pages` consecutive pages (not zeroed) and returns their direct-map address: a
/// run of pfns, so one virtually contiguous region (machine frames need not be).
pub fn alloc_run(pages: u64) -> Result<u64, Errno> {
    with(|mm| {
        let first = mm.alloc.alloc_run(pages).ok_or(Errno::ENOMEM)?;
        Ok(mm.va(first.0))
    })
}

/// Returns a page to the allocator.
pub fn free_page(pfn: Pfn) -> Result<(), Errno> {
    with(|mm| mm.alloc.free(pfn).map_err(|_| Errno::EINVAL))
}

/// Records that `pfn` is now backed by `mfn`: the P2M entry and, through
/// `MMU_MACHPHYS_UPDATE`, the hypervisor's M2P entry. (Used when frames are exchanged with
/// the hypervisor, e.g. ballooning.)
pub fn set_p2m(pfn: Pfn, mfn: Mfn) -> Result<(), Errno> {
    with(|mm| {
        let slot = mm.p2m.get_mut(pfn.0 as usize).ok_or(Errno::EINVAL)?;
        mmu_update(&[MmuUpdate { ptr: (mfn.0 << 12) | mmu::MACHPHYS_UPDATE, val: pfn.0 }])?;
        *slot = mfn.0;
        Ok(())
    })
}

/// The machine address of the entry at `level` (1 = the L1 entry .. 4 = the L4 entry) that
/// maps `va`, creating the tables above it. For `mmu_update` requests on entries the memory
/// manager does not track itself (tests, benchmarks, user page tables).
pub fn entry_maddr(va: u64, level: u32) -> Result<u64, Errno> {
    if !pt::is_canonical(va) || in_hypervisor_hole(va) {
        return Err(Errno::EINVAL);
    }
    with(|mm| Ok(mm.ensure_table(va, level)?.addr() + pt::table_index(va, level) as u64 * 8))
}

/// The entry at `level` that maps `va` (present or not), or `None` if a table above it is
/// missing.
pub fn lookup_level(va: u64, level: u32) -> Result<Option<u64>, Errno> {
    if !pt::is_canonical(va) || in_hypervisor_hole(va) || !(1..=4).contains(&level) {
        return Err(Errno::EINVAL);
    }
    with(|mm| Ok(mm.walk(va, level)?.map(|(_, e)| e)))
}

/// Entry `idx` of `table`, one of this domain's page tables (read through the direct map,
/// where tables are mapped read-only). The hypervisor's own slots of the L4 are readable too.
pub fn read_table(table: Mfn, idx: usize) -> Result<u64, Errno> {
    if idx >= pt::ENTRIES {
        return Err(Errno::EINVAL);
    }
    with(|mm| mm.read_pte(table, idx))
}

/// `mmu_update` requests clearing or setting the direct-map L1 entries of `pfns`, issued in
/// batches; returns how many took effect before the first error.
fn set_direct_map_entries(mm: &Mm, pfns: &[Pfn], val: impl Fn(usize) -> u64) -> (usize, Result<(), Errno>) {
    let mut batch: alloc::vec::Vec<MmuUpdate> = alloc::vec::Vec::new();
    if batch.try_reserve_exact(pfns.len().min(pt::ENTRIES)).is_err() {
        return (0, Err(Errno::ENOMEM));
    }
    let mut done = 0;
    for (chunk_no, chunk) in pfns.chunks(pt::ENTRIES).enumerate() {
        batch.clear();
        for (i, pfn) in chunk.iter().enumerate() {
            let at = chunk_no * pt::ENTRIES + i;
            match mm.walk(mm.va(pfn.0), 1) {
                Ok(Some((l1, _))) => batch.push(MmuUpdate {
                    ptr: (l1.addr() + pt::table_index(mm.va(pfn.0), 1) as u64 * 8) | mmu::NORMAL_PT_UPDATE,
                    val: val(at),
                }),
                Ok(None) => return (done, Err(Errno::EFAULT)),
                Err(e) => return (done, Err(e)),
            }
        }
        let mut ok = 0u32;
        let r = hypercall::check(hypercall::mmu_update(&batch, &mut ok, DomId::SELF));
        done += (ok as usize).min(batch.len());
        if let Err(e) = r {
            return (done, Err(e));
        }
        if ok as usize != batch.len() {
            return (done, Err(Errno::EIO));
        }
    }
    (done, Ok(()))
}

/// Takes the frames of `pfns` (pages the caller holds from [`alloc_page`]) away from the
/// direct map, ready to be handed back to the hypervisor (ballooning): each page is unmapped,
/// the TLB flushed, and its P2M entry set to `INVALID_P2M_ENTRY`. The machine frames are
/// appended to `mfns`, in order, for those that were unmapped; on an error the rest are
/// untouched and still mapped.
pub fn release_frames(pfns: &[Pfn], mfns: &mut alloc::vec::Vec<Mfn>) -> Result<(), Errno> {
    with(|mm| {
        for p in pfns {
            if p.0 >= mm.mapped_end || !mm.alloc.is_used(*p) || mm.pfn_to_mfn(p.0).is_none() {
                return Err(Errno::EINVAL);
            }
            if mm.p2m[p.0 as usize] == INVALID_P2M_ENTRY {
                return Err(Errno::EINVAL);
            }
        }
        mfns.try_reserve(pfns.len()).map_err(|_| Errno::ENOMEM)?;
        let (done, r) = set_direct_map_entries(mm, pfns, |_| 0);
        for p in &pfns[..done] {
            mfns.push(Mfn(mm.p2m[p.0 as usize]));
            mm.p2m[p.0 as usize] = INVALID_P2M_ENTRY;
        }
        if done > 0 {
            // The pages may still be in this CPU's TLB; they must not be reachable once the
            // hypervisor hands the frames to someone else.
            let flush = [MmuextOp { cmd: mmuext::TLB_FLUSH_LOCAL, ..Default::default() }];
            let mut ok = 0u32;
            hypercall::check(hypercall::mmuext_op(&flush, &mut ok, DomId::SELF))?;
        }
        r
    })
}

/// The reverse of [`release_frames`]: `pfns[i]` is backed by `mfns[i]` again (a frame the
/// hypervisor gave us, e.g. from `populate_physmap`, which also set its M2P entry). Records
/// the P2M entry and maps the page writable in the direct map. The caller still holds the
/// pages (free them to the allocator afterwards). Returns how many were restored.
pub fn restore_frames(pfns: &[Pfn], mfns: &[Mfn]) -> Result<usize, Errno> {
    if pfns.len() != mfns.len() {
        return Err(Errno::EINVAL);
    }
    with(|mm| {
        for p in pfns {
            if p.0 >= mm.mapped_end || !mm.alloc.is_used(*p) {
                return Err(Errno::EINVAL);
            }
        }
        let (done, r) = set_direct_map_entries(mm, pfns, |i| pt::make(mfns[i], pt::PAGE_KERNEL));
        for (p, m) in pfns.iter().zip(mfns).take(done) {
            mm.p2m[p.0 as usize] = m.0;
        }
        r.map(|()| done)
    })
}
