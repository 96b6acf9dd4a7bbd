//! `mm-hostile`: a domU attacks the page-table rules. Each attempt must get exactly Xen's
//! error code and change nothing; none may crash the domain or the hypervisor. Every case
//! prints one `HOSTILE <tag> -> <got> (<name>) want <want> (<name>) ok|MISMATCH` line for the
//! host test, preceded by positive controls showing the entry used for the attack accepts a
//! legitimate update (so an error really comes from the rule being tested).
//!
//! Finding frames that are not ours: the hypervisor image is loaded at machine 2 MiB (mfn
//! 0x200); the M2P mapping's L3 table is named by slot 256 of our own L4, which we can read;
//! the M2P data is microvisor's first boot allocation, at 1 MiB (mfn 0x100) — a layout fact,
//! not something a guest can discover, so the sweep below backs it up: every machine frame
//! below `maximum_ram_page` that is not in our P2M is tried, read-only and writable, and none
//! may be mappable. A foreign domain's frame is found through the M2P: a frame not ours whose
//! M2P entry names a plausible pfn belongs to another domain (dom0). The frames Xen lends the
//! domain (shared_info, grant-table frames) are the domain's to map, and excluded.

use super::cases::Cases;
use super::report;
use alloc::string::String;
use alloc::vec::Vec;
use hypercall_abi::grant_table::{op as gntop, GnttabQuerySize, GnttabSetupTable};
use hypercall_abi::hypercall::nr;
use hypercall_abi::memory::op as memop;
use hypercall_abi::xen::{mmu, mmuext, MmuUpdate, MmuextOp};
use hypercall_abi::{DomId, Errno, Mfn, Pfn};
use pv_guest_kernel::hypercall::{self, hypercall5};
use pv_guest_kernel::mm::{self, pt};
use pv_guest_kernel::println;
use pv_guest_kernel::start_info::StartInfo;

/// Scratch virtual addresses for the attacks (nothing else lives in this L4 slot).
const SCRATCH: u64 = pv_guest_kernel::va::TEST_ATTACKS;
/// A second page, in the same L1, followed by an unmapped page.
const SCRATCH_END_PAGE: u64 = SCRATCH + 0x10_0000;
/// A guest L4 slot used for the linear (recursive) entry attacks.
const LINEAR_SLOT: usize = 300;
/// Where the hypervisor image is loaded (machine address 0x200000).
const HV_IMAGE_MFN: Mfn = Mfn(0x200);
/// microvisor's first boot allocation, the M2P table (see the module comment).
const M2P_FIRST_MFN: Mfn = Mfn(0x100);
/// L4 slot of the M2P mapping.
const M2P_L4_SLOT: usize = 256;

const PAGE_TABLE_RW: u64 = pt::PAGE_TABLE;

/// One `mmu_update` request on our own tables.
fn update(maddr: u64, val: u64) -> i64 {
    let mut done = 0u32;
    hypercall::mmu_update(&[MmuUpdate { ptr: maddr | mmu::NORMAL_PT_UPDATE, val }], &mut done, DomId::SELF)
}

/// One `mmuext_op`.
fn ext(cmd: u32, arg1: u64) -> i64 {
    let mut done = 0u32;
    hypercall::mmuext_op(&[MmuextOp { cmd, _pad: 0, arg1, arg2: 0 }], &mut done, DomId::SELF)
}

impl Cases {
    /// A case trying to map `mfn` at the scratch L1 entry; undone (and reported) if it worked.
    fn map_case(&mut self, tag: &str, l1e: u64, mfn: Mfn, flags: u64, want: i64) {
        let r = update(l1e, pt::make(mfn, flags));
        if r == 0 {
            self.fail(alloc::format!("mapping mfn {:#x} with flags {flags:#x} was accepted", mfn.0));
            let _ = update(l1e, 0);
        }
        self.case(tag, r, want);
    }
}

/// Frames the hypervisor owns but lends us to map (Xen shares them with the domain): the
/// shared_info page and the grant-table frames.
fn lent_frames(si: &StartInfo) -> Vec<u64> {
    let mut lent = alloc::vec![si.shared_info >> 12];
    let mut q = GnttabQuerySize { dom: DomId::SELF, ..Default::default() };
    let r = hypercall5(nr::GRANT_TABLE_OP, u64::from(gntop::QUERY_SIZE), &mut q as *mut _ as u64, 1, 0, 0);
    if r != 0 || q.status != 0 || q.nr_frames == 0 {
        println!("mm-hostile: grant table query_size: {r}, status {}, {} frames", q.status, q.nr_frames);
        return lent;
    }
    let mut frames = alloc::vec![0u64; q.nr_frames as usize];
    let mut st = GnttabSetupTable {
        dom: DomId::SELF,
        nr_frames: q.nr_frames,
        frame_list: frames.as_mut_ptr() as u64,
        ..Default::default()
    };
    let r = hypercall5(nr::GRANT_TABLE_OP, u64::from(gntop::SETUP_TABLE), &mut st as *mut _ as u64, 1, 0, 0);
    if r == 0 && st.status == 0 {
        lent.extend(frames);
    } else {
        println!("mm-hostile: grant table setup_table: {r}, status {}", st.status);
    }
    lent
}

pub fn run(si: &StartInfo) {
    let mut c = Cases::new("mm-hostile");
    let Some(info) = mm::info() else {
        println!("TEST mm-hostile FAIL no memory manager");
        return;
    };
    let ebusy = Errno::EBUSY.to_ret();
    let einval = Errno::EINVAL.to_ret();
    let eperm = Errno::EPERM.to_ret();
    let efault = Errno::EFAULT.to_ret();

    let (Ok(page), Ok(page2)) = (mm::alloc_page(), mm::alloc_page()) else {
        println!("TEST mm-hostile FAIL cannot allocate scratch pages");
        return;
    };
    let Ok(l1e) = mm::entry_maddr(SCRATCH, 1) else {
        println!("TEST mm-hostile FAIL cannot build the scratch page table");
        return;
    };
    let scratch_l1 = Mfn(l1e >> 12);
    let max_ram_page = hypercall::memory_op_raw(memop::MAXIMUM_RAM_PAGE, 0);
    println!(
        "mm-hostile: L4 mfn {:#x}, scratch L1 mfn {:#x}, maximum_ram_page {max_ram_page:#x}",
        info.l4.0, scratch_l1.0
    );
    if max_ram_page <= 0 {
        println!("TEST mm-hostile FAIL maximum_ram_page returned {max_ram_page}");
        return;
    }
    let max_ram_page = max_ram_page as u64;
    let ours = hypercall::debug_op(hypercall_abi::hypercall::debug::DOMAIN_FRAMES, u64::from(DomId::SELF.0));
    println!("mm-hostile: {} pages in the P2M, the hypervisor counts {ours} frames of ours", info.nr_pages);

    // Positive controls: the scratch entry takes our own data page, read-only and writable.
    c.case("control-own-page-rw", update(l1e, pt::make(page.mfn, pt::PAGE_KERNEL)), 0);
    c.case("control-unmap", update(l1e, 0), 0);
    c.case("control-own-l4-ro", update(l1e, pt::make(info.l4, pt::PAGE_KERNEL_RO)), 0);
    c.case("control-unmap-l4", update(l1e, 0), 0);

    // A writable mapping of a page table of ours: Xen's get_page_from_l1e fails the
    // writable type reference -> EBUSY.
    c.map_case("pt-own-l4-rw", l1e, info.l4, pt::PAGE_KERNEL, ebusy);
    c.map_case("pt-own-l1-rw", l1e, scratch_l1, pt::PAGE_KERNEL, ebusy);
    // Read-only first, then the RW bit alone (not a fast-path flag change).
    if update(l1e, pt::make(scratch_l1, pt::PAGE_KERNEL_RO)) == 0 {
        c.map_case("pt-own-l1-ro-to-rw", l1e, scratch_l1, pt::PAGE_KERNEL, ebusy);
        let _ = update(l1e, 0);
    } else {
        c.fail(String::from("mapping our own L1 read-only was refused"));
    }

    // XSA-182: a recursive L4 entry must stay read-only, also as a flag-only change.
    let l4_slot = info.l4.addr() + LINEAR_SLOT as u64 * 8;
    c.case("xsa182-l4-linear-rw", update(l4_slot, pt::make(info.l4, PAGE_TABLE_RW)), einval);
    let ro_linear = pt::make(info.l4, pt::PRESENT | pt::USER | pt::ACCESSED);
    c.case("control-l4-linear-ro", update(l4_slot, ro_linear), 0);
    c.case("xsa182-l4-linear-ro-to-rw", update(l4_slot, ro_linear | pt::RW), einval);
    match mm::read_table(info.l4, LINEAR_SLOT) {
        Ok(e) if e & pt::RW == 0 => {}
        other => c.fail(alloc::format!("the linear L4 entry reads {other:x?} after the refused update")),
    }
    c.case("control-l4-linear-clear", update(l4_slot, 0), 0);

    // XSA-148: superpages at L2 and L3 (the data frame would be a valid table without PSE).
    match (mm::entry_maddr(SCRATCH + (2 << 20), 2), mm::entry_maddr(SCRATCH + (1 << 30), 3)) {
        (Ok(l2e), Ok(l3e)) => {
            c.case("pse-l2", update(l2e, pt::make(page2.mfn, PAGE_TABLE_RW | pt::PSE)), einval);
            c.case("pse-l2-ro", update(l2e, pt::make(page2.mfn, pt::PAGE_KERNEL_RO | pt::PSE)), einval);
            c.case("pse-l3", update(l3e, pt::make(page2.mfn, PAGE_TABLE_RW | pt::PSE)), einval);
        }
        other => c.fail(alloc::format!("cannot reach the scratch L2/L3 entries: {other:?}")),
    }

    // Hypervisor frames: its image, the M2P's own page table and the M2P data.
    c.map_case("hv-image-ro", l1e, HV_IMAGE_MFN, pt::PAGE_KERNEL_RO, ebusy);
    c.map_case("hv-image-rw", l1e, HV_IMAGE_MFN, pt::PAGE_KERNEL, ebusy);
    match mm::read_table(info.l4, M2P_L4_SLOT) {
        Ok(e) if pt::is_present(e) => {
            let l3 = pt::mfn(e);
            println!("mm-hostile: L4[256] (M2P) -> hypervisor L3 mfn {:#x}", l3.0);
            c.map_case("m2p-l3-rw", l1e, l3, pt::PAGE_KERNEL, ebusy);
            c.map_case("m2p-l3-ro", l1e, l3, pt::PAGE_KERNEL_RO, ebusy);
        }
        other => c.fail(alloc::format!("L4[256] reads {other:x?}: no M2P mapping?")),
    }
    c.map_case("m2p-data-rw", l1e, M2P_FIRST_MFN, pt::PAGE_KERNEL, ebusy);

    // Our own frames, from the P2M; then another domain's frame, through the M2P.
    let mut own = alloc::vec![0u64; max_ram_page.div_ceil(64) as usize + 1];
    for pfn in 0..info.nr_pages {
        if let Some(m) = mm::pfn_to_mfn(Pfn(pfn)).filter(|m| m.0 < max_ram_page) {
            own[(m.0 / 64) as usize] |= 1 << (m.0 % 64);
        }
    }
    // Frames lent to us are ours to map too (Xen: share_xen_page_with_guest), read-only and
    // writable.
    let lent = lent_frames(si);
    let names: Vec<String> = lent.iter().map(|m| alloc::format!("{m:#x}")).collect();
    println!("mm-hostile: lent frames (shared_info, grant table): {}", names.join(", "));
    for &m in &lent {
        c.case("control-lent-frame-rw", update(l1e, pt::make(Mfn(m), pt::PAGE_KERNEL)), 0);
        let _ = update(l1e, 0);
    }
    let is_own =
        |m: u64| (m < max_ram_page && own[(m / 64) as usize] & (1 << (m % 64)) != 0) || lent.contains(&m);
    let foreign = (0x1000..max_ram_page)
        .find(|&m| !is_own(m) && mm::mfn_to_pfn(Mfn(m)).is_some_and(|p| p.0 < (1 << 20) && p.0 != 0));
    match foreign {
        Some(m) => {
            let pfn = mm::mfn_to_pfn(Mfn(m)).map_or(0, |p| p.0);
            println!("mm-hostile: foreign frame mfn {m:#x} (M2P: pfn {pfn:#x} of another domain)");
            c.map_case("foreign-ro", l1e, Mfn(m), pt::PAGE_KERNEL_RO, ebusy);
            c.map_case("foreign-rw", l1e, Mfn(m), pt::PAGE_KERNEL, ebusy);
            let mach = [MmuUpdate { ptr: (m << 12) | mmu::MACHPHYS_UPDATE, val: 5 }];
            let mut done = 0u32;
            let r = hypercall::mmu_update(&mach, &mut done, DomId::SELF);
            c.case("machphys-foreign", r, einval);
            let after = mm::mfn_to_pfn(Mfn(m)).map_or(0, |p| p.0);
            if after != pfn {
                c.fail(alloc::format!("M2P of mfn {m:#x} changed from {pfn:#x} to {after:#x}"));
            }
        }
        None => c.fail(String::from("no foreign frame found through the M2P")),
    }
    let mach = [MmuUpdate { ptr: HV_IMAGE_MFN.addr() | mmu::MACHPHYS_UPDATE, val: 5 }];
    let mut done = 0u32;
    c.case("machphys-hv-image", hypercall::mmu_update(&mach, &mut done, DomId::SELF), einval);

    // Beyond RAM: not a frame at all, so treated as device memory a domU may not map.
    c.map_case("beyond-ram", l1e, Mfn(max_ram_page + 1), pt::PAGE_KERNEL_RO, eperm);
    c.map_case("beyond-ram-rw", l1e, Mfn(max_ram_page + 1), pt::PAGE_KERNEL, eperm);

    // Pinning a frame mapped writable (the direct map maps every data page so).
    c.case("pin-writable", ext(mmuext::PIN_L1_TABLE, page2.mfn.0), einval);
    // Pin, unpin, unpin again.
    let ro = hypercall::update_va_mapping(
        page2.va,
        pt::make(page2.mfn, pt::PAGE_KERNEL_RO),
        hypercall_abi::xen::uvmf::INVLPG,
    );
    if ro == 0 {
        c.case("control-pin-l1", ext(mmuext::PIN_L1_TABLE, page2.mfn.0), 0);
        c.case("control-unpin", ext(mmuext::UNPIN_TABLE, page2.mfn.0), 0);
        c.case("unpin-twice", ext(mmuext::UNPIN_TABLE, page2.mfn.0), einval);
        let rw = hypercall::update_va_mapping(
            page2.va,
            pt::make(page2.mfn, pt::PAGE_KERNEL),
            hypercall_abi::xen::uvmf::INVLPG,
        );
        if rw != 0 {
            c.fail(alloc::format!("cannot make the unpinned frame writable again: {rw}"));
        }
    } else {
        c.fail(alloc::format!("cannot map a data page read-only: {ro}"));
    }

    // INVLPG of a non-canonical address: microvisor refuses it with -EINVAL, a deliberate
    // difference (Xen ignores it and returns 0; no guest relies on either).
    c.case("invlpg-noncanonical-local", ext(mmuext::INVLPG_LOCAL, 0x8000_0000_0000_0000), -22);
    c.case("invlpg-noncanonical-all", ext(mmuext::INVLPG_ALL, 0x0000_8000_0000_1000), -22);

    // count = 2^32 - 1 with a buffer of three requests that ends at an unmapped page: the
    // three are done, the fourth read faults. (Bit 31 of the count is MMU_UPDATE_PREEMPTED,
    // so both Xen and microvisor read *pdone first: it must start at 0.)
    count_max(&mut c, l1e, &page, &page2, efault);

    sweep(&mut c, l1e, max_ram_page, &is_own);

    let _ = update(l1e, 0);
    for p in [page.pfn, page2.pfn] {
        let _ = mm::free_page(p);
    }
    c.report();
}

fn count_max(c: &mut Cases, l1e: u64, page: &mm::Page, buf_page: &mm::Page, efault: i64) {
    let Ok(buf_l1e) = mm::entry_maddr(SCRATCH_END_PAGE, 1) else {
        c.fail(String::from("cannot reach the buffer page's L1 entry"));
        return;
    };
    // The page after the buffer must be unmapped.
    if !matches!(mm::lookup(SCRATCH_END_PAGE + 4096), Ok(None) | Ok(Some(0))) {
        c.fail(String::from("the page after the buffer is mapped"));
        return;
    }
    if update(buf_l1e, pt::make(buf_page.mfn, pt::PAGE_KERNEL)) != 0 {
        c.fail(String::from("cannot map the buffer page"));
        return;
    }
    let reqs = [
        MmuUpdate { ptr: l1e, val: pt::make(page.mfn, pt::PAGE_KERNEL_RO) },
        MmuUpdate { ptr: l1e, val: 0 },
        MmuUpdate { ptr: l1e, val: pt::make(page.mfn, pt::PAGE_KERNEL_RO) },
    ];
    let at = SCRATCH_END_PAGE + 4096 - core::mem::size_of_val(&reqs) as u64;
    // SAFETY: `at` lies in the buffer page just mapped writable at SCRATCH_END_PAGE, and the
    // three requests end exactly at its end.
    unsafe { core::ptr::copy_nonoverlapping(reqs.as_ptr(), at as *mut MmuUpdate, reqs.len()) };
    let mut done = 0u32;
    let r = hypercall5(
        nr::MMU_UPDATE,
        at,
        u64::from(u32::MAX),
        &mut done as *mut u32 as u64,
        u64::from(DomId::SELF.0),
        0,
    );
    c.case("count-max-short-buffer", r, efault);
    c.case("count-max-short-buffer-done", i64::from(done), 3);
    match mm::lookup(SCRATCH) {
        Ok(Some(e)) if pt::mfn(e) == page.mfn && e & pt::RW == 0 => {}
        other => c.fail(alloc::format!("the short buffer's last request did not take effect: {other:x?}")),
    }
    let _ = update(l1e, 0);
    let _ = update(buf_l1e, 0);
}

/// Every machine frame below `maximum_ram_page` that is not ours (and a few beyond), mapped
/// read-only and writable: nothing may succeed, and the errors are EBUSY (RAM someone else
/// owns, or free) or EPERM (holes and beyond RAM: device memory a domU has no access to).
fn sweep(c: &mut Cases, l1e: u64, max_ram_page: u64, is_own: &dyn Fn(u64) -> bool) {
    let (mut tried, mut accepted, mut ebusy, mut eperm, mut other) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut first_other = None;
    for m in (0..max_ram_page + 16).filter(|&m| !is_own(m)) {
        for flags in [pt::PAGE_KERNEL_RO, pt::PAGE_KERNEL] {
            tried += 1;
            let r = update(l1e, pt::make(Mfn(m), flags));
            match r {
                0 => {
                    accepted += 1;
                    let _ = update(l1e, 0);
                    if accepted <= 4 {
                        let m2p = mm::mfn_to_pfn(Mfn(m)).map_or(0, |p| p.0);
                        c.fail(alloc::format!(
                            "sweep: mfn {m:#x} (M2P {m2p:#x}) flags {flags:#x} was mapped"
                        ));
                    }
                }
                r if r == Errno::EBUSY.to_ret() => ebusy += 1,
                r if r == Errno::EPERM.to_ret() => eperm += 1,
                r => {
                    other += 1;
                    first_other.get_or_insert((m, r));
                }
            }
        }
    }
    println!(
        "mm-hostile: sweep of {tried} mappings of frames not ours: {accepted} accepted, {ebusy} EBUSY, {eperm} EPERM, {other} other{}",
        first_other.map(|(m, r)| alloc::format!(" (first: mfn {m:#x} -> {r})")).unwrap_or_default()
    );
    c.case("sweep-accepted", accepted as i64, 0);
    c.case("sweep-other-errors", other as i64, 0);
}

/// `mm-leak`: a domain that shuts down holding everything a PV kernel can hold in the
/// hypervisor's frame table — a pinned L4 tree, a separate user base table, a read-only
/// linear L4 entry, frames mapped twice, and part of its memory ballooned out — so that
/// dom0's destroy check sees the hypervisor reclaim all of it.
pub fn leave_mess() {
    let mut fails: Vec<String> = Vec::new();
    let Some(info) = mm::info() else {
        println!("TEST mm-leak FAIL no memory manager");
        return;
    };
    let data = mm::alloc_page();
    let (pinned, user) = match data {
        Ok(d) => (super::bench_mm::prepare_tree(d.mfn), super::bench_mm::prepare_tree(d.mfn)),
        Err(e) => {
            println!("TEST mm-leak FAIL no page: {e}");
            return;
        }
    };
    match (&pinned, &user) {
        (Ok(p), Ok(u)) => {
            check!(fails, ext(mmuext::PIN_L4_TABLE, p[0].mfn.0) == 0, "pin of the L4 tree refused");
            check!(fails, ext(mmuext::NEW_USER_BASEPTR, u[0].mfn.0) == 0, "user base refused");
        }
        (p, u) => fails.push(alloc::format!(
            "cannot prepare the trees: {:?} {:?}",
            p.as_ref().err(),
            u.as_ref().err()
        )),
    }
    let l4_slot = info.l4.addr() + LINEAR_SLOT as u64 * 8;
    let linear = pt::make(info.l4, pt::PRESENT | pt::USER | pt::ACCESSED);
    check!(fails, update(l4_slot, linear) == 0, "linear L4 entry refused");
    if let Ok(d) = data {
        match mm::entry_maddr(SCRATCH, 1) {
            Ok(l1e) => check!(fails, update(l1e, pt::make(d.mfn, pt::PAGE_KERNEL)) == 0, "alias refused"),
            Err(e) => fails.push(alloc::format!("scratch table: {e}")),
        }
    }
    let target = info.nr_pages.saturating_sub(100);
    let b = pv_guest_kernel::balloon::set_target(target);
    check!(fails, b.is_ok(), "balloon to {target}: {b:?}");
    report("mm-leak", &fails, format_args!("shutting down with a pinned tree, a user base, a linear entry, an alias and 100 pages ballooned out"));
}
