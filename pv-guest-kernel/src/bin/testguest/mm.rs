//! `mm`: the runtime's memory manager on the real hypervisor: the direct map covers the
//! domain, M2P and P2M agree, pages are allocated, aliased, unmapped and freed.

use super::traps::{expect_pf, pf_handler, PFEC_USER, PFEC_WRITE};
use super::{report, results};
use alloc::vec::Vec;
use pv_guest_kernel::mm::{self, pt};
use pv_guest_kernel::start_info::StartInfo;
use pv_guest_kernel::va::TEST_ALIAS;
use pv_guest_kernel::{println, traps};

pub fn run(si: &StartInfo) {
    let mut fails = Vec::new();
    let Some(i) = mm::info() else {
        println!("TEST mm FAIL no memory manager");
        return;
    };
    println!(
        "mm: {} pages, first free pfn {:#x}, builder mapped {:#x}, direct map {:#x}, {} free, {} new tables, L4 mfn {:#x}",
        i.nr_pages, i.first_free.0, i.boot_mapped_end.0, i.mapped_end.0, i.free_pages, i.pt_frames, i.l4.0
    );
    check!(fails, i.nr_pages == si.nr_pages, "nr_pages {} vs start_info {}", i.nr_pages, si.nr_pages);
    check!(fails, i.mapped_end.0 == i.nr_pages, "direct map ends at pfn {:#x}", i.mapped_end.0);
    // The builder's padding is at least 512 KiB.
    check!(fails, i.boot_mapped_end.0 >= i.first_free.0 + 128, "less than 512 KiB of padding");
    // M2P and P2M agree on our frames.
    for pfn in [0, i.first_free.0, i.nr_pages - 1] {
        let mfn = mm::pfn_to_mfn(hypercall_abi::Pfn(pfn));
        let back = mfn.and_then(mm::mfn_to_pfn);
        results::yes("m2p-p2m-agree", back == Some(hypercall_abi::Pfn(pfn)));
        check!(fails, back == Some(hypercall_abi::Pfn(pfn)), "pfn {pfn:#x} -> {mfn:?} -> {back:?}");
    }
    // Allocate, write, alias at a VA outside the direct map, unmap.
    let pages: Vec<mm::Page> = (0..3).filter_map(|_| mm::alloc_page().ok()).collect();
    check!(fails, pages.len() == 3, "allocated {} of 3 pages", pages.len());
    check!(fails, mm::info().is_some_and(|j| j.free_pages == i.free_pages - 3), "free count not updated");
    if let Some(p) = pages.last() {
        // SAFETY: the page was just allocated to us and is mapped writable at `p.va`.
        unsafe { (p.va as *mut u64).write_volatile(0x1234_5678_9abc_def0) };
        match mm::map_page(TEST_ALIAS, p.mfn, pt::PAGE_KERNEL) {
            Ok(()) => {
                // SAFETY: TEST_ALIAS now maps the same frame.
                let v = unsafe { (TEST_ALIAS as *const u64).read_volatile() };
                check!(fails, v == 0x1234_5678_9abc_def0, "alias reads {v:#x}");
                let e = mm::lookup(TEST_ALIAS);
                check!(fails, matches!(e, Ok(Some(e)) if pt::mfn(e) == p.mfn), "lookup of the alias: {e:x?}");
                let u = mm::unmap_page(TEST_ALIAS);
                check!(fails, u.is_ok(), "unmap: {u:?}");
                traps::set_handler(14, Some(pf_handler));
                let mut pf = Vec::new();
                // The error code's user bit is trap-pf's business.
                expect_pf(&mut pf, "write to the unmapped alias", TEST_ALIAS, PFEC_WRITE, PFEC_USER);
                traps::set_handler(14, None);
                fails.extend(pf);
            }
            Err(e) => fails.push(alloc::format!("map_page: {e}")),
        }
    }
    // P2M upkeep: re-recording a page's own frame goes through MMU_MACHPHYS_UPDATE.
    if let Some(p) = pages.first() {
        let r = mm::set_p2m(p.pfn, p.mfn);
        results::ret("machphys-update-own-frame", r.map_or_else(|e| e.to_ret(), |_| 0));
        check!(fails, r.is_ok(), "set_p2m (MMU_MACHPHYS_UPDATE) of our own frame: {r:?}");
        let back = mm::mfn_to_pfn(p.mfn);
        check!(fails, back == Some(p.pfn), "M2P after set_p2m: {back:?}");
    }
    for p in &pages {
        check!(fails, mm::free_page(p.pfn).is_ok(), "free of {:?}", p.pfn);
    }
    if let Some(p) = pages.first() {
        check!(fails, mm::free_page(p.pfn).is_err(), "double free accepted");
    }
    let j = mm::info().unwrap_or(i);
    report("mm", &fails, format_args!("{} pages mapped, {} new page tables", j.mapped_end.0, j.pt_frames));
}
