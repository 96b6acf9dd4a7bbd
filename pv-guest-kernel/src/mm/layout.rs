//! What of the bootstrap region (Xen's "start of day" layout) is really in use, computed from
//! start_info alone, so the page allocator can hand out the rest.
//!
//! The builder maps pfns `0..` contiguously from `virt_base`: kernel, initrd, P2M list,
//! start_info, xenstore and console rings, bootstrap page tables, one stack page, then padding
//! (at least 512 KiB, up to a 4 MiB boundary) that is mapped but unused. The first free pfn
//! is the highest end of every region start_info names; the padding and everything beyond the
//! mapped region are free.

use hypercall_abi::xen::{sif, StartInfo};
use hypercall_abi::{Pfn, PAGE_SIZE};

const PAGE: u64 = PAGE_SIZE as u64;

/// The parts of start_info the layout depends on, plus what only the kernel knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootInfo {
    /// Start of the bootstrap mapping (`XEN_ELFNOTE_VIRT_BASE`).
    pub virt_base: u64,
    /// One past the kernel image's last byte (its .bss included).
    pub kernel_end: u64,
    /// Where the builder put start_info.
    pub start_info_va: u64,
    pub nr_pages: u64,
    pub pt_base: u64,
    pub nr_pt_frames: u64,
    pub mfn_list: u64,
    pub mod_start: u64,
    pub mod_len: u64,
    pub flags: u32,
}

impl BootInfo {
    /// Collects the fields of `si`.
    pub fn new(si: &StartInfo, virt_base: u64, kernel_end: u64, start_info_va: u64) -> BootInfo {
        BootInfo {
            virt_base,
            kernel_end,
            start_info_va,
            nr_pages: si.nr_pages,
            pt_base: si.pt_base,
            nr_pt_frames: si.nr_pt_frames,
            mfn_list: si.mfn_list,
            mod_start: si.mod_start,
            mod_len: si.mod_len,
            flags: si.flags,
        }
    }
}

/// A start_info that does not describe a sane bootstrap region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// A region lies below `virt_base` or its end overflows.
    OutsideRegion(&'static str),
    /// The in-use region needs more pages than the domain has.
    TooBig { first_free: u64, nr_pages: u64 },
}

/// The first pfn after everything the builder placed: the start of free memory.
pub fn first_free_pfn(b: &BootInfo) -> Result<Pfn, LayoutError> {
    // End (exclusive, in bytes from virt_base) of [va, va + len), rounded up to a page.
    let end = |what: &'static str, va: u64, len: u64| -> Result<u64, LayoutError> {
        let off = va.checked_sub(b.virt_base).ok_or(LayoutError::OutsideRegion(what))?;
        off.checked_add(len)
            .and_then(|e| e.checked_next_multiple_of(PAGE))
            .ok_or(LayoutError::OutsideRegion(what))
    };
    let pt_len = b.nr_pt_frames.checked_mul(PAGE).ok_or(LayoutError::OutsideRegion("page tables"))?;
    let p2m_len = b.nr_pages.checked_mul(8).ok_or(LayoutError::OutsideRegion("P2M list"))?;
    let mut ends = [
        end("kernel", b.virt_base, b.kernel_end.saturating_sub(b.virt_base))?,
        end("start_info", b.start_info_va, PAGE)?,
        end("P2M list", b.mfn_list, p2m_len)?,
        // The boot stack page follows the page tables.
        end("page tables", b.pt_base, pt_len.checked_add(PAGE).ok_or(LayoutError::OutsideRegion("stack"))?)?,
        0,
    ];
    if b.mod_len != 0 {
        let mod_va = if b.flags & sif::MOD_START_PFN != 0 {
            b.mod_start.checked_mul(PAGE).and_then(|o| o.checked_add(b.virt_base))
        } else {
            Some(b.mod_start)
        };
        ends[4] = end("initrd", mod_va.ok_or(LayoutError::OutsideRegion("initrd"))?, b.mod_len)?;
    }
    let first_free = ends.iter().max().copied().unwrap_or(0) / PAGE;
    if first_free > b.nr_pages {
        return Err(LayoutError::TooBig { first_free, nr_pages: b.nr_pages });
    }
    Ok(Pfn(first_free))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VB: u64 = 0xffff_ffff_8000_0000;

    /// A domU as microvisor lays it out: kernel 0x40000 bytes, P2M, start_info, xenstore,
    /// console, 5 page-table frames, stack.
    fn domu() -> BootInfo {
        BootInfo {
            virt_base: VB,
            kernel_end: VB + 0x3_f123,
            start_info_va: VB + 0x4_8000,
            nr_pages: 8192,
            pt_base: VB + 0x4_b000,
            nr_pt_frames: 5,
            mfn_list: VB + 0x4_0000,
            mod_start: 0,
            mod_len: 0,
            flags: 0,
        }
    }

    #[test]
    fn ends_after_the_stack_page() {
        // Page tables at pfns 0x4b..0x50, stack at 0x50: the first free pfn is 0x51.
        assert_eq!(first_free_pfn(&domu()), Ok(Pfn(0x51)));
    }

    #[test]
    fn takes_the_highest_region() {
        let mut b = domu();
        b.mod_start = VB + 0x100_0000;
        b.mod_len = 1;
        assert_eq!(first_free_pfn(&b), Ok(Pfn(0x1001)));
        b.flags = sif::MOD_START_PFN;
        b.mod_start = 0x1000;
        b.mod_len = 0x1001;
        assert_eq!(first_free_pfn(&b), Ok(Pfn(0x1002)));
        let mut b = domu();
        b.kernel_end = VB + 0x80_0000;
        assert_eq!(first_free_pfn(&b), Ok(Pfn(0x800)));
    }

    #[test]
    fn rejects_nonsense() {
        let mut b = domu();
        b.pt_base = 0x1000;
        assert_eq!(first_free_pfn(&b), Err(LayoutError::OutsideRegion("page tables")));
        let mut b = domu();
        b.nr_pt_frames = u64::MAX;
        assert!(first_free_pfn(&b).is_err());
        let mut b = domu();
        b.nr_pages = 0x40;
        assert_eq!(first_free_pfn(&b), Err(LayoutError::TooBig { first_free: 0x51, nr_pages: 0x40 }));
        let mut b = domu();
        b.mod_len = u64::MAX;
        b.mod_start = VB;
        assert_eq!(first_free_pfn(&b), Err(LayoutError::OutsideRegion("initrd")));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(pt in proptest::prelude::any::<u64>(), n in proptest::prelude::any::<u64>(),
                        ml in proptest::prelude::any::<u64>(), ms in proptest::prelude::any::<u64>()) {
            let mut b = domu();
            b.pt_base = pt;
            b.nr_pt_frames = n;
            b.mod_len = ml;
            b.mod_start = ms;
            if let Ok(p) = first_free_pfn(&b) {
                proptest::prop_assert!(p.0 <= b.nr_pages);
            }
        }
    }
}
