//! The bootstrap address space a Xen PV guest expects at boot (`public/xen.h`, "start of day"
//! layout), as pure arithmetic: where the kernel, initrd, P2M list, start_info, xenstore and
//! console rings, bootstrap page tables and stack go, virtually and pseudo-physically.
//!
//! Everything is mapped contiguously from `virt_base` onto pfns 0.., so an element's pfn is
//! `(va - virt_base) / 4096`. The page tables map the whole region including themselves, and
//! the region ends with at least 512 KiB of padding rounded up to 4 MiB, so their number
//! depends on itself: it is found by iterating until stable, as libxc's `alloc_pgtables_pv` and
//! Xen's `dom0_construct_pv` do.

use crate::loader::elf::PvImage;
use core::fmt;
use hypercall_abi::xen::{is_canonical, HYPERVISOR_VIRT_END, HYPERVISOR_VIRT_START};
use hypercall_abi::Pfn;

/// Bytes per page.
pub const PAGE_SIZE: u64 = hypercall_abi::PAGE_SIZE as u64;
/// Least padding mapped after the stack page (the guest uses it as early scratch memory).
pub const MIN_PADDING: u64 = 512 << 10;
/// The end of the bootstrap region is rounded up to this.
pub const END_ALIGN: u64 = 4 << 20;
/// Bytes of the P2M list per page of the domain (`u64 mfn[nr_pages]`).
pub const P2M_ENTRY_SIZE: u64 = 8;

/// What the layout depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayoutRequest {
    /// Start of the bootstrap mapping; page aligned.
    pub virt_base: u64,
    /// Loaded kernel range (`virt_base <= virt_kstart <= virt_kend`).
    pub virt_kstart: u64,
    pub virt_kend: u64,
    /// Pages the domain owns in total.
    pub nr_pages: u64,
    /// dom0 gets no xenstore or console ring pages (it hosts those services itself).
    pub is_dom0: bool,
    /// Initial ramdisk length in bytes (0: none).
    pub initrd_len: u64,
    /// The kernel's MOD_START_PFN note: the initrd goes in pages after the mapped region,
    /// unmapped, and `start_info.mod_start` is its first pfn (`SIF_MOD_START_PFN`), as libxc
    /// does for such kernels (Linux among them).
    pub unmapped_initrd: bool,
    /// The kernel's INIT_P2M note: the virtual address where it wants its P2M list, mapped
    /// by page tables of its own instead of inside the bootstrap region (libxc's
    /// `p2m_base`; Linux asks for 512 GiB).
    pub p2m_base: Option<u64>,
}

impl LayoutRequest {
    /// The request for `image`.
    pub fn for_image(image: &PvImage, nr_pages: u64, is_dom0: bool, initrd_len: u64) -> LayoutRequest {
        LayoutRequest {
            virt_base: image.virt_base,
            virt_kstart: image.virt_kstart,
            virt_kend: image.virt_kend,
            nr_pages,
            is_dom0,
            initrd_len,
            unmapped_initrd: image.notes.mod_start_pfn.is_some_and(|v| v != 0),
            p2m_base: image.notes.init_p2m,
        }
    }
}

/// A run of whole pages of the bootstrap region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First pfn.
    pub pfn: Pfn,
    /// Virtual address of the first page.
    pub va: u64,
    /// Number of pages (may be 0, e.g. an absent initrd).
    pub pages: u64,
}

impl Region {
    /// One past the last byte. Cannot overflow: a layout's regions lie below its `v_end`.
    pub fn end_va(&self) -> u64 {
        self.va + self.pages * PAGE_SIZE
    }
    /// One past the last pfn.
    pub fn end_pfn(&self) -> Pfn {
        Pfn(self.pfn.0 + self.pages)
    }
    /// True if `pfn` is one of the region's pages.
    pub fn contains_pfn(&self, pfn: Pfn) -> bool {
        pfn >= self.pfn && pfn < self.end_pfn()
    }
}

/// Page-table frames needed at each level.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PtCounts {
    pub l4: u64,
    pub l3: u64,
    pub l2: u64,
    pub l1: u64,
}

impl PtCounts {
    /// All levels together.
    pub fn total(&self) -> u64 {
        self.l4 + self.l3 + self.l2 + self.l1
    }
}

/// Tables needed to map `[start, end)` with 4-level paging (`end > start`): one L4, and one
/// table per 512 GiB, 1 GiB and 2 MiB slot the range touches.
pub fn count_page_tables(start: u64, end: u64) -> PtCounts {
    let last = end.saturating_sub(1).max(start);
    let tables = |shift: u32| (last >> shift) - (start >> shift) + 1;
    PtCounts { l4: 1, l3: tables(39), l2: tables(30), l1: tables(21) }
}

/// Where everything goes. Regions are listed in address order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootLayout {
    pub virt_base: u64,
    /// End (exclusive) of the mapped region; a multiple of 4 MiB.
    pub v_end: u64,
    /// Pages of the domain (the P2M list has this many entries).
    pub nr_pages: u64,
    /// The pages holding `[virt_kstart, virt_kend)`.
    pub kernel: Region,
    /// Pages holding the initrd (none if it is empty). With `initrd_mapped` false they
    /// follow the mapped region (and the separate P2M) and `initrd.va` is 0.
    pub initrd: Region,
    pub initrd_len: u64,
    pub initrd_mapped: bool,
    /// The P2M list, `start_info.mfn_list`. With `p2m_separate` its pages follow the
    /// bootstrap region and are mapped at `p2m.va` (INIT_P2M) by the last page tables.
    pub p2m: Region,
    pub p2m_separate: bool,
    /// Page tables of the separate P2M mapping (its L4 is the bootstrap one).
    pub p2m_pt_counts: PtCounts,
    pub start_info: Region,
    /// domU only.
    pub xenstore: Option<Region>,
    /// domU only.
    pub console: Option<Region>,
    /// L4 first, then the L3s, L2s and L1s, each level in address order.
    pub page_tables: Region,
    pub pt_counts: PtCounts,
    /// One page; `%rsp` starts at its top.
    pub stack: Region,
}

impl BootLayout {
    /// Pages mapped by the bootstrap page tables (pfns `0..mapped_pages()`).
    pub fn mapped_pages(&self) -> u64 {
        (self.v_end - self.virt_base) / PAGE_SIZE
    }

    /// `start_info.nr_pt_frames`.
    pub fn nr_pt_frames(&self) -> u64 {
        self.page_tables.pages
    }

    /// Initial `%rsp`.
    pub fn stack_top(&self) -> u64 {
        self.stack.end_va()
    }

    /// Virtual address of the L4 (`start_info.pt_base`).
    pub fn pt_base(&self) -> u64 {
        self.page_tables.va
    }

    /// The pfn mapped at `va`, if `va` is in the bootstrap region or the separate P2M
    /// mapping.
    pub fn va_to_pfn(&self, va: u64) -> Option<Pfn> {
        if va >= self.virt_base && va < self.v_end {
            return Some(Pfn((va - self.virt_base) / PAGE_SIZE));
        }
        (self.p2m_separate && va >= self.p2m.va && va < self.p2m.end_va())
            .then(|| Pfn(self.p2m.pfn.0 + (va - self.p2m.va) / PAGE_SIZE))
    }

    /// The virtual address of `pfn`, if it is mapped.
    pub fn pfn_to_va(&self, pfn: Pfn) -> Option<u64> {
        (pfn.0 < self.mapped_pages()).then(|| self.virt_base + pfn.0 * PAGE_SIZE)
    }

    /// True if `pfn` is a bootstrap page-table frame (mapped read-only).
    pub fn is_page_table(&self, pfn: Pfn) -> bool {
        self.page_tables.contains_pfn(pfn)
    }

    /// The pfn of the level-`level` table (4 = L4 .. 1 = L1) on the walk to `va`, which must
    /// be in the bootstrap region.
    pub fn table_pfn(&self, level: u32, va: u64) -> Option<Pfn> {
        self.va_to_pfn(va)?;
        if self.p2m_separate && va >= self.p2m.va && va < self.p2m.end_va() && level < 4 {
            // After the bootstrap region's tables; the L4 is shared.
            let (b, c) = (self.pt_counts.total(), &self.p2m_pt_counts);
            let nth = |shift: u32| (va >> shift) - (self.p2m.va >> shift);
            let index = match level {
                3 => b + nth(39),
                2 => b + c.l3 + nth(30),
                _ => b + c.l3 + c.l2 + nth(21),
            };
            return Some(Pfn(self.page_tables.pfn.0 + index));
        }
        let c = &self.pt_counts;
        // One level-`level` table covers 2^(12 + 9 * level) bytes.
        let nth = |shift: u32| (va >> shift) - (self.virt_base >> shift);
        let index = match level {
            4 => 0,
            3 => c.l4 + nth(39),
            2 => c.l4 + c.l3 + nth(30),
            1 => c.l4 + c.l3 + c.l2 + nth(21),
            _ => return None,
        };
        Some(Pfn(self.page_tables.pfn.0 + index))
    }

    /// The level (4 = L4 .. 1 = L1) of page-table frame `pfn`.
    pub fn table_level(&self, pfn: Pfn) -> Option<u32> {
        if !self.is_page_table(pfn) {
            return None;
        }
        let mut i = pfn.0 - self.page_tables.pfn.0;
        let mut c = self.pt_counts;
        if i >= c.total() {
            // The separate P2M mapping's tables.
            i -= c.total();
            c = self.p2m_pt_counts;
        }
        Some(if i < c.l4 {
            4
        } else if i < c.l4 + c.l3 {
            3
        } else if i < c.l4 + c.l3 + c.l2 {
            2
        } else {
            1
        })
    }

    /// The mapped elements in address order, with their names (for logs and checks).
    pub fn regions(&self) -> impl Iterator<Item = (&'static str, Region)> {
        [
            Some(("kernel", self.kernel)),
            self.initrd_mapped.then_some(("initrd", self.initrd)),
            Some(("p2m", self.p2m)),
            Some(("start_info", self.start_info)),
            self.xenstore.map(|r| ("xenstore", r)),
            self.console.map(|r| ("console", r)),
            Some(("page tables", self.page_tables)),
            Some(("stack", self.stack)),
        ]
        .into_iter()
        .flatten()
    }
}

/// Why no layout fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    VirtBaseMisaligned {
        virt_base: u64,
    },
    /// The kernel range is not inside `[virt_base, ..)` or is reversed.
    BadKernelRange {
        virt_base: u64,
        start: u64,
        end: u64,
    },
    /// A size or address computation overflows 64 bits.
    AddressOverflow,
    /// The region leaves the canonical half it starts in.
    NonCanonical {
        start: u64,
        end: u64,
    },
    /// The region intersects the hypervisor's reserved L4 slots.
    HypervisorHole {
        start: u64,
        end: u64,
    },
    /// The domain has fewer pages than the region maps.
    NotEnoughMemory {
        needed: u64,
        nr_pages: u64,
    },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::VirtBaseMisaligned { virt_base } => {
                write!(f, "virt_base {virt_base:#x} is not page aligned")
            }
            LayoutError::BadKernelRange { virt_base, start, end } => {
                write!(
                    f,
                    "kernel range {start:#x}..{end:#x} does not start at or above virt_base {virt_base:#x}"
                )
            }
            LayoutError::AddressOverflow => write!(f, "bootstrap layout overflows the address space"),
            LayoutError::NonCanonical { start, end } => {
                write!(f, "bootstrap region {start:#x}..{end:#x} is not canonical")
            }
            LayoutError::HypervisorHole { start, end } => {
                write!(f, "bootstrap region {start:#x}..{end:#x} overlaps the hypervisor's reserved area")
            }
            LayoutError::NotEnoughMemory { needed, nr_pages } => {
                write!(f, "bootstrap region needs {needed} pages but the domain has {nr_pages}")
            }
        }
    }
}

fn round_up(v: u64, align: u64) -> Option<u64> {
    Some(v.checked_add(align - 1)? & !(align - 1))
}

/// Hands out consecutive pages from the end of the kernel.
struct Cursor {
    virt_base: u64,
    next: u64,
}

impl Cursor {
    fn take(&mut self, pages: u64) -> Result<Region, LayoutError> {
        let bytes = pages.checked_mul(PAGE_SIZE).ok_or(LayoutError::AddressOverflow)?;
        let va = self.next;
        self.next = va.checked_add(bytes).ok_or(LayoutError::AddressOverflow)?;
        Ok(Region { pfn: Pfn((va - self.virt_base) / PAGE_SIZE), va, pages })
    }
}

/// Lays out the bootstrap region for `req`.
pub fn compute_layout(req: &LayoutRequest) -> Result<BootLayout, LayoutError> {
    let vb = req.virt_base;
    if !vb.is_multiple_of(PAGE_SIZE) {
        return Err(LayoutError::VirtBaseMisaligned { virt_base: vb });
    }
    if req.virt_kstart < vb || req.virt_kend < req.virt_kstart {
        return Err(LayoutError::BadKernelRange {
            virt_base: vb,
            start: req.virt_kstart,
            end: req.virt_kend,
        });
    }
    let overflow = LayoutError::AddressOverflow;
    let kstart = req.virt_kstart & !(PAGE_SIZE - 1);
    let kend = round_up(req.virt_kend, PAGE_SIZE).ok_or(overflow)?;
    let kernel =
        Region { pfn: Pfn((kstart - vb) / PAGE_SIZE), va: kstart, pages: (kend - kstart) / PAGE_SIZE };

    let mut cur = Cursor { virt_base: vb, next: kend };
    let initrd_pages = req.initrd_len.div_ceil(PAGE_SIZE);
    let mut initrd = cur.take(if req.unmapped_initrd { 0 } else { initrd_pages })?;
    let p2m_bytes = req.nr_pages.checked_mul(P2M_ENTRY_SIZE).ok_or(overflow)?;
    let p2m_pages = p2m_bytes.div_ceil(PAGE_SIZE);
    // INIT_P2M: a mapping of its own where the kernel asks, if that is a usable place: page
    // aligned, canonical, clear of the hypervisor, in L4 slots the bootstrap region does not
    // use. Elsewhere the P2M stays in the bootstrap region, as for kernels without the note.
    let p2m_at = req.p2m_base.filter(|&b| {
        let Some(end) = b.checked_add(p2m_pages * PAGE_SIZE) else { return false };
        let last = end - 1;
        let boot_slots = (vb >> 39)..=(req.virt_kend.max(vb) >> 39).saturating_add(1);
        b.is_multiple_of(PAGE_SIZE)
            && p2m_pages > 0
            && is_canonical(b)
            && is_canonical(last)
            && (b >> 63) == (last >> 63)
            && !(b < HYPERVISOR_VIRT_END && end > HYPERVISOR_VIRT_START)
            && !boot_slots.contains(&(b >> 39))
            && !boot_slots.contains(&(last >> 39))
    });
    let mut p2m = cur.take(if p2m_at.is_some() { 0 } else { p2m_pages })?;
    let p2m_pt_counts = match p2m_at {
        Some(b) => {
            let c = count_page_tables(b, b + p2m_pages * PAGE_SIZE);
            PtCounts { l4: 0, ..c }
        }
        None => PtCounts::default(),
    };
    let start_info = cur.take(1)?;
    let (xenstore, console) =
        if req.is_dom0 { (None, None) } else { (Some(cur.take(1)?), Some(cur.take(1)?)) };

    // Solve "tables map a region that contains the tables": the count only grows with the
    // region, and the region grows by one page per table, so this settles within a few rounds.
    let pt_start = cur.next;
    let mut nr_pt = 0;
    let (page_tables, stack, v_end, pt_counts) = loop {
        let mut c = Cursor { virt_base: vb, next: pt_start };
        let page_tables = c.take(nr_pt + p2m_pt_counts.total())?;
        let stack = c.take(1)?;
        let padded = c.next.checked_add(MIN_PADDING).ok_or(overflow)?;
        let v_end = round_up(padded, END_ALIGN).ok_or(overflow)?;
        let counts = count_page_tables(vb, v_end);
        if counts.total() <= nr_pt {
            break (page_tables, stack, v_end, counts);
        }
        nr_pt = counts.total();
    };

    let last = v_end - 1;
    if !is_canonical(vb) || !is_canonical(last) || (vb >> 63) != (last >> 63) {
        return Err(LayoutError::NonCanonical { start: vb, end: v_end });
    }
    if vb < HYPERVISOR_VIRT_END && v_end > HYPERVISOR_VIRT_START {
        return Err(LayoutError::HypervisorHole { start: vb, end: v_end });
    }
    let mut needed = (v_end - vb) / PAGE_SIZE;
    // What is not mapped by the bootstrap tables follows them in pfns: the separate P2M, then
    // an unmapped initrd.
    if let Some(b) = p2m_at {
        p2m = Region { pfn: Pfn(needed), va: b, pages: p2m_pages };
        needed = needed.checked_add(p2m_pages).ok_or(overflow)?;
    }
    if req.unmapped_initrd {
        // Not mapped: no virtual address.
        initrd = Region { pfn: Pfn(needed), va: 0, pages: initrd_pages };
        needed = needed.checked_add(initrd_pages).ok_or(overflow)?;
    }
    if needed > req.nr_pages {
        return Err(LayoutError::NotEnoughMemory { needed, nr_pages: req.nr_pages });
    }

    Ok(BootLayout {
        virt_base: vb,
        v_end,
        nr_pages: req.nr_pages,
        kernel,
        initrd,
        initrd_len: req.initrd_len,
        initrd_mapped: !req.unmapped_initrd,
        p2m,
        p2m_separate: p2m_at.is_some(),
        p2m_pt_counts,
        start_info,
        xenstore,
        console,
        page_tables,
        pt_counts,
        stack,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const BASE: u64 = 0xffff_ffff_8000_0000;

    #[test]
    fn an_unmapped_initrd_follows_the_mapped_region() {
        let r = LayoutRequest { initrd_len: 0x3001, unmapped_initrd: true, ..req(4096) };
        let l = compute_layout(&r).unwrap();
        let mapped = compute_layout(&LayoutRequest { initrd_len: 0, ..r }).unwrap();
        assert_eq!(l.v_end, mapped.v_end, "the initrd takes no room in the mapped region");
        assert_eq!((l.initrd.pfn, l.initrd.pages, l.initrd_mapped), (Pfn(l.mapped_pages()), 4, false));
        assert!(l.regions().all(|(n, _)| n != "initrd"));
        let short = LayoutRequest { nr_pages: l.mapped_pages() + 3, ..r };
        assert_eq!(
            compute_layout(&short),
            Err(LayoutError::NotEnoughMemory {
                needed: l.mapped_pages() + 4,
                nr_pages: l.mapped_pages() + 3
            })
        );
    }

    #[test]
    fn init_p2m_gets_a_mapping_of_its_own() {
        const P2M: u64 = 0x80_0000_0000; // Linux's INIT_P2M
        let r =
            LayoutRequest { p2m_base: Some(P2M), initrd_len: 0x2000, unmapped_initrd: true, ..req(40_000) };
        let l = compute_layout(&r).unwrap();
        let inside = compute_layout(&LayoutRequest { p2m_base: None, ..r }).unwrap();
        assert!(l.p2m_separate);
        assert_eq!((l.p2m.va, l.p2m.pfn, l.p2m.pages), (P2M, Pfn(l.mapped_pages()), 79));
        assert_eq!(l.initrd.pfn, Pfn(l.mapped_pages() + 79), "the unmapped initrd follows");
        assert!(l.mapped_pages() <= inside.mapped_pages(), "no room in the bootstrap region");
        // One L3, one L2, one L1 of its own (79 pages), after the bootstrap tables.
        assert_eq!(l.p2m_pt_counts, PtCounts { l4: 0, l3: 1, l2: 1, l1: 1 });
        assert_eq!(l.page_tables.pages, l.pt_counts.total() + 3);
        let first = l.page_tables.pfn.0 + l.pt_counts.total();
        assert_eq!(l.table_pfn(4, P2M), Some(l.page_tables.pfn));
        assert_eq!((l.table_pfn(3, P2M), l.table_level(Pfn(first))), (Some(Pfn(first)), Some(3)));
        assert_eq!(
            (l.table_pfn(1, P2M + 78 * PAGE_SIZE), l.table_level(Pfn(first + 2))),
            (Some(Pfn(first + 2)), Some(1))
        );
        assert_eq!(l.va_to_pfn(P2M + 5 * PAGE_SIZE), Some(Pfn(l.p2m.pfn.0 + 5)));
        assert_eq!(l.va_to_pfn(P2M + 79 * PAGE_SIZE), None);
        // Unusable places keep the P2M in the bootstrap region: unaligned, in the bootstrap
        // region's L4 slot, non-canonical, in the hypervisor's range.
        for bad in [P2M + 8, BASE, 0x0000_7fff_ffff_f000, 0xffff_8000_0000_0000] {
            let l = compute_layout(&LayoutRequest { p2m_base: Some(bad), ..r }).unwrap();
            assert!(!l.p2m_separate, "{bad:#x}");
            assert_eq!(l.p2m_pt_counts, PtCounts::default());
        }
    }

    fn req(nr_pages: u64) -> LayoutRequest {
        LayoutRequest {
            virt_base: BASE,
            virt_kstart: BASE,
            virt_kend: BASE + 0x4800,
            nr_pages,
            is_dom0: false,
            initrd_len: 0,
            unmapped_initrd: false,
            p2m_base: None,
        }
    }

    fn region(pfn: u64, pages: u64) -> Region {
        Region { pfn: Pfn(pfn), va: BASE + pfn * PAGE_SIZE, pages }
    }

    #[test]
    fn small_domu() {
        let l = compute_layout(&req(4096)).unwrap();
        assert_eq!(l.kernel, region(0, 5));
        assert_eq!(l.initrd, region(5, 0));
        assert_eq!(l.p2m, region(5, 8), "4096 entries of 8 bytes");
        assert_eq!(l.start_info, region(13, 1));
        assert_eq!(l.xenstore, Some(region(14, 1)));
        assert_eq!(l.console, Some(region(15, 1)));
        // [BASE, BASE + 4 MiB): one L4, one L3 (slot 511), one L2 (slot 510), two L1s.
        assert_eq!(l.pt_counts, PtCounts { l4: 1, l3: 1, l2: 1, l1: 2 });
        assert_eq!(l.page_tables, region(16, 5));
        assert_eq!(l.stack, region(21, 1));
        assert_eq!(l.v_end, BASE + (4 << 20));
        assert_eq!(l.mapped_pages(), 1024);
        assert_eq!(l.stack_top(), BASE + 22 * PAGE_SIZE);
        assert_eq!(l.pt_base(), BASE + 16 * PAGE_SIZE);
        assert_eq!(l.table_pfn(4, BASE), Some(Pfn(16)));
        assert_eq!(l.table_pfn(3, BASE + 0x12345), Some(Pfn(17)));
        assert_eq!(l.table_pfn(2, l.v_end - 1), Some(Pfn(18)));
        assert_eq!(l.table_pfn(1, BASE + (2 << 20) - 1), Some(Pfn(19)));
        assert_eq!(l.table_pfn(1, BASE + (2 << 20)), Some(Pfn(20)));
        assert_eq!(l.table_pfn(1, l.v_end), None);
        assert_eq!(l.table_pfn(5, BASE), None);
        assert_eq!([16, 17, 18, 19, 20].map(|p| l.table_level(Pfn(p))), [4, 3, 2, 1, 1].map(Some));
        assert_eq!(l.table_level(Pfn(21)), None);
        let names: Vec<_> = l.regions().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            ["kernel", "initrd", "p2m", "start_info", "xenstore", "console", "page tables", "stack"]
        );
    }

    #[test]
    fn dom0_with_initrd() {
        let mut r = req(1 << 18);
        r.is_dom0 = true;
        r.initrd_len = 0x1801;
        let l = compute_layout(&r).unwrap();
        assert_eq!(l.initrd, region(5, 2));
        assert_eq!(l.p2m, region(7, 512), "1 GiB of pages: 2 MiB of P2M");
        assert_eq!(l.start_info, region(519, 1));
        assert_eq!((l.xenstore, l.console), (None, None));
        assert_eq!(l.page_tables.pfn, Pfn(520));
        // Stack ends at pfn 520 + 5 + 1 = 526 (~2.1 MiB); + 512 KiB → 4 MiB.
        assert_eq!(l.pt_counts, PtCounts { l4: 1, l3: 1, l2: 1, l1: 2 });
        assert_eq!(l.stack, region(525, 1));
        assert_eq!(l.v_end, BASE + (4 << 20));
    }

    #[test]
    fn padding_is_at_least_512k() {
        // Make the stack end exactly on a 4 MiB boundary: the padding then adds 4 MiB.
        let mut r = req(1 << 20);
        r.is_dom0 = true;
        // kernel k pages + p2m 2048 + start_info 1 + page tables (1 + 1 + 1 + 8 L1s for
        // 16 MiB) + stack 1 = 2061 + k pages; aim for the stack end at 12 MiB (3072 pages).
        r.virt_kend = BASE + (3072 - 2048 - 1 - 11 - 1) * PAGE_SIZE;
        let l = compute_layout(&r).unwrap();
        assert_eq!(l.pt_counts, PtCounts { l4: 1, l3: 1, l2: 1, l1: 8 });
        assert_eq!(l.stack.end_va(), BASE + (12 << 20));
        assert_eq!(l.v_end, BASE + (16 << 20));
    }

    #[test]
    fn tables_across_a_1g_and_512g_boundary() {
        // Starting 256 KiB below a 1 GiB boundary, the padding pushes the end 4 MiB past it:
        // two L2s, one L1 below the boundary and two above.
        let vb = BASE + (1 << 30) - (256 << 10);
        let r = LayoutRequest { virt_base: vb, virt_kstart: vb, virt_kend: vb + 0x1000, ..req(4096) };
        let l = compute_layout(&r).unwrap();
        assert_eq!(l.v_end, BASE + (1 << 30) + (4 << 20));
        assert_eq!(l.pt_counts, PtCounts { l4: 1, l3: 1, l2: 2, l1: 3 });
        // The same across a 512 GiB boundary (lower half): two L3s too.
        let vb = (512 << 30) - (256 << 10);
        let r = LayoutRequest { virt_base: vb, virt_kstart: vb, virt_kend: vb + 0x1000, ..req(4096) };
        let l = compute_layout(&r).unwrap();
        assert_eq!(l.pt_counts, PtCounts { l4: 1, l3: 2, l2: 2, l1: 3 });
        assert_eq!(l.table_pfn(3, vb), Some(Pfn(l.page_tables.pfn.0 + 1)));
        assert_eq!(l.table_pfn(3, 512 << 30), Some(Pfn(l.page_tables.pfn.0 + 2)));
        assert_eq!(l.table_pfn(2, 512 << 30), Some(Pfn(l.page_tables.pfn.0 + 4)));
    }

    #[test]
    fn low_kernel_keeps_the_gap_below_it() {
        let r = LayoutRequest { virt_base: 0, virt_kstart: 0x10_0000, virt_kend: 0x10_3000, ..req(4096) };
        let l = compute_layout(&r).unwrap();
        assert_eq!(l.kernel, Region { pfn: Pfn(256), va: 0x10_0000, pages: 3 });
        assert_eq!(l.p2m.pfn, Pfn(259));
        assert_eq!(l.v_end, 4 << 20);
    }

    #[test]
    fn unaligned_kernel_edges_round_outwards() {
        let r = LayoutRequest { virt_kstart: BASE + 0x1010, virt_kend: BASE + 0x2001, ..req(4096) };
        let l = compute_layout(&r).unwrap();
        assert_eq!(l.kernel, region(1, 2));
        assert_eq!(l.initrd.pfn, Pfn(3));
    }

    #[test]
    fn refusals() {
        let l = compute_layout(&req(1024)).unwrap();
        assert_eq!(l.mapped_pages(), 1024, "exactly enough memory");
        assert_eq!(
            compute_layout(&req(1023)),
            Err(LayoutError::NotEnoughMemory { needed: 1024, nr_pages: 1023 })
        );
        assert_eq!(compute_layout(&req(0)), Err(LayoutError::NotEnoughMemory { needed: 1024, nr_pages: 0 }));

        let r = LayoutRequest { virt_base: BASE + 8, ..req(4096) };
        assert_eq!(compute_layout(&r), Err(LayoutError::VirtBaseMisaligned { virt_base: BASE + 8 }));
        let r = LayoutRequest { virt_kstart: BASE - 1, ..req(4096) };
        assert!(matches!(compute_layout(&r), Err(LayoutError::BadKernelRange { .. })));
        let r = LayoutRequest { virt_kend: BASE - 1, ..req(4096) };
        assert!(matches!(compute_layout(&r), Err(LayoutError::BadKernelRange { .. })));

        // Running off the top of the address space.
        let vb = 0xffff_ffff_ffe0_0000;
        let r = LayoutRequest { virt_base: vb, virt_kstart: vb, virt_kend: vb + 0x1000, ..req(4096) };
        assert_eq!(compute_layout(&r), Err(LayoutError::AddressOverflow));
        let r = LayoutRequest { nr_pages: u64::MAX / 4, ..req(4096) };
        assert_eq!(compute_layout(&r), Err(LayoutError::AddressOverflow));
        let r = LayoutRequest { virt_kend: u64::MAX, ..req(4096) };
        assert_eq!(compute_layout(&r), Err(LayoutError::AddressOverflow));

        // The top of the lower half: fits exactly, then crosses into the non-canonical gap.
        let vb = 0x7fff_ffc0_0000;
        let r = LayoutRequest { virt_base: vb, virt_kstart: vb, virt_kend: vb + 0x1000, ..req(4096) };
        assert_eq!(compute_layout(&r).unwrap().v_end, 1 << 47);
        let vb = 0x7fff_fffc_0000;
        let r = LayoutRequest { virt_base: vb, virt_kstart: vb, virt_kend: vb + 0x1000, ..req(4096) };
        assert!(matches!(compute_layout(&r), Err(LayoutError::NonCanonical { .. })));
        let vb = 0x8000_0000_0000;
        let r = LayoutRequest { virt_base: vb, virt_kstart: vb, virt_kend: vb + 0x1000, ..req(4096) };
        assert!(matches!(compute_layout(&r), Err(LayoutError::NonCanonical { .. })));

        // The hypervisor hole, at either end.
        for vb in [HYPERVISOR_VIRT_START, HYPERVISOR_VIRT_END - (2 << 20), HYPERVISOR_VIRT_START + (1 << 30)]
        {
            let r = LayoutRequest { virt_base: vb, virt_kstart: vb, virt_kend: vb + 0x1000, ..req(4096) };
            assert!(matches!(compute_layout(&r), Err(LayoutError::HypervisorHole { .. })), "{vb:#x}");
        }
        let vb = HYPERVISOR_VIRT_END;
        let r = LayoutRequest { virt_base: vb, virt_kstart: vb, virt_kend: vb + 0x1000, ..req(4096) };
        assert!(compute_layout(&r).is_ok());
        assert_eq!(
            LayoutError::NotEnoughMemory { needed: 1024, nr_pages: 1023 }.to_string(),
            "bootstrap region needs 1024 pages but the domain has 1023"
        );
    }

    fn virt_bases() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            Just(BASE),
            Just(HYPERVISOR_VIRT_END),
            (0u64..1 << 35).prop_map(|p| p << 12),
            (0u64..1 << 36).prop_map(|p| 0xffff_8000_0000_0000 | (p << 12)),
            (0u64..0x8_0000).prop_map(|p| 0xffff_ffff_8000_0000 | (p << 12)),
        ]
    }

    proptest! {
        #[test]
        fn layouts_are_ordered_and_mapped(
            vb in virt_bases(),
            gap in 0u64..0x10_0000,
            ksize in 0u64..0x400_0000,
            nr_pages in 0u64..1 << 21,
            is_dom0 in any::<bool>(),
            initrd_len in prop_oneof![Just(0u64), 0u64..0x400_0000],
        ) {
            let kstart = vb.wrapping_add(gap);
            let r = LayoutRequest {
                virt_base: vb,
                virt_kstart: kstart,
                virt_kend: kstart.wrapping_add(ksize),
                nr_pages,
                is_dom0,
                initrd_len,
                unmapped_initrd: false,
                p2m_base: None,
            };
            let l = match compute_layout(&r) {
                Ok(l) => l,
                Err(LayoutError::NotEnoughMemory { needed, nr_pages: n }) => {
                    prop_assert!(needed > n);
                    // More memory never shrinks the requirement below what is asked.
                    let more = compute_layout(&LayoutRequest { nr_pages: needed * 2, ..r });
                    if let Ok(l) = more { prop_assert!(l.mapped_pages() >= needed); }
                    return Ok(());
                }
                Err(_) => return Ok(()),
            };
            // Order, alignment, disjointness, placement.
            let mut prev_end = l.kernel.va;
            prop_assert!(l.kernel.va <= r.virt_kstart && l.kernel.end_va() >= r.virt_kend);
            for (name, reg) in l.regions() {
                prop_assert_eq!(reg.va % PAGE_SIZE, 0, "{}", name);
                prop_assert!(reg.va >= prev_end, "{} overlaps its predecessor", name);
                prop_assert!(reg.va >= l.virt_base && reg.end_va() <= l.v_end, "{}", name);
                prop_assert_eq!(reg.pfn.0, (reg.va - l.virt_base) / PAGE_SIZE, "{}", name);
                prev_end = reg.end_va();
            }
            prop_assert!(l.p2m.pages * PAGE_SIZE >= nr_pages * 8);
            prop_assert!(l.initrd.pages * PAGE_SIZE >= initrd_len);
            prop_assert_eq!(l.stack.pages, 1);
            prop_assert_eq!(l.xenstore.is_some(), !is_dom0);
            prop_assert_eq!(l.v_end % END_ALIGN, 0);
            prop_assert!(l.v_end - l.stack.end_va() >= MIN_PADDING);
            prop_assert!(l.v_end - l.stack.end_va() < MIN_PADDING + END_ALIGN);
            prop_assert!(l.mapped_pages() <= nr_pages);
            prop_assert!(l.v_end <= HYPERVISOR_VIRT_START || l.virt_base >= HYPERVISOR_VIRT_END);

            // The tables really suffice: every page's walk finds a table of the right level
            // inside the table region, and each distinct table slot gets a distinct frame.
            prop_assert_eq!(l.pt_counts.total(), l.page_tables.pages);
            let mut frames: BTreeMap<Pfn, (u32, u64)> = BTreeMap::new();
            // The first page of every 2 MiB slot, and the region's ends, visit every table.
            let step: u64 = 1 << 21;
            let mut samples = vec![l.virt_base, l.v_end - PAGE_SIZE];
            let mut va = (l.virt_base | (step - 1)) + 1;
            while va < l.v_end {
                samples.push(va);
                va += step;
            }
            for va in samples {
                for (level, shift) in [(4u32, 48u32), (3, 39), (2, 30), (1, 21)] {
                    let pfn = l.table_pfn(level, va).unwrap();
                    prop_assert!(l.is_page_table(pfn));
                    prop_assert_eq!(l.table_level(pfn), Some(level));
                    let key = (level, if shift == 48 { 0 } else { va >> shift });
                    let old = frames.insert(pfn, key);
                    prop_assert!(old.is_none() || old == Some(key), "frame {:?} shared", pfn);
                }
            }
            prop_assert_eq!(frames.len() as u64, l.page_tables.pages, "every table frame is used");
        }
    }
}
