//! `guest-copy`: the hypervisor copies hypercall arguments in and results out through the MMU,
//! with this guest's page tables loaded, and relies on its fixup table when an address faults.
//! Every bad address must give `-EFAULT` — never a hypervisor crash, never a write through a
//! mapping that is read-only to us — and good ones must keep working around them:
//!
//! * copies in and out of an unmapped page, and straddling into one;
//! * copies out to read-only pages: one of ours, our own L4 page table, a page granted to us
//!   read-only, and one straddling from a writable page into a read-only one;
//! * addresses the range check refuses before any copy: the hypervisor hole (including the
//!   M2P, which we may read ourselves), a range straddling the hole's end, non-canonical ones.
//!
//! The scenario prints how many of its cases must have faulted inside the copy
//! (`mmu-faults=N`); the host test compares it with the hypervisor's count of recovered faults.

use super::badargs::ro_scratch_page;
use super::cases::Cases;
use hypercall_abi::event_channel::{op as evtop, EvtchnStatus};
use hypercall_abi::grant_table::{gntmap, gntst, GnttabMapGrantRef, GnttabUnmapGrantRef};
use hypercall_abi::hypercall::nr;
use hypercall_abi::xen::{consoleio, uvmf, StartInfo, HYPERVISOR_VIRT_END, MACH2PHYS_VIRT_START};
use hypercall_abi::{version, DomId, Errno};
use pv_guest_kernel::mm::{self, pt};
use pv_guest_kernel::{events, gnttab, hypercall, println};

/// Where the read-only grant is mapped.
const MAP_VA: u64 = pv_guest_kernel::va::TEST_HOSTILE_MAPS;
const NON_CANONICAL: u64 = 0x8000_0000_0000_0000;
/// The first non-canonical address above the lower half.
const LOWER_HALF_END: u64 = 1 << 47;
const HV_TEXT: u64 = 0xffff_82d0_8020_0000;

/// `console_io(write)` of `n` bytes at `p`: the hypervisor copies them in.
fn copy_in_console(p: u64, n: u64) -> i64 {
    hypercall::hypercall5(nr::CONSOLE_IO, consoleio::WRITE, n, p, 0, 0)
}

/// `event_channel_op(send)` with its argument at `p`: a 4-byte copy in (port 0 is never
/// bound, so a successful copy gives `-EINVAL`).
fn copy_in_send(p: u64) -> i64 {
    hypercall::hypercall5(nr::EVENT_CHANNEL_OP, u64::from(evtop::SEND), p, 0, 0, 0)
}

/// `xen_version(extraversion)` into `p`: a 16-byte copy out.
fn copy_out_extraversion(p: u64) -> i64 {
    hypercall::hypercall5(nr::XEN_VERSION, u64::from(version::op::EXTRAVERSION), p, 0, 0, 0)
}

/// Reads `n` words at `va` (ours, mapped readable).
fn words(va: u64, n: u64) -> alloc::vec::Vec<u64> {
    // SAFETY: the callers pass pages of ours that stay mapped for reading.
    (0..n).map(|i| unsafe { ((va + 8 * i) as *const u64).read_volatile() }).collect()
}

pub fn run(si: &StartInfo) {
    let mut c = Cases::new("guest-copy");
    let efault = Errno::EFAULT.to_ret();
    let einval = Errno::EINVAL.to_ret();
    let mut mmu_faults = 0;

    // Unmapped: the first page after the direct map (the page before it is mapped).
    match mm::info() {
        Some(i) => {
            let end = i.virt_base + i.mapped_end.0 * 4096;
            c.case("in-unmapped", copy_in_send(end), efault);
            c.case("in-straddling-into-unmapped", copy_in_console(end - 16, 64), efault);
            c.case("out-unmapped", copy_out_extraversion(end), efault);
            c.case("out-straddling-into-unmapped", copy_out_extraversion(end - 8), efault);
            mmu_faults += 4;
        }
        None => c.fail(alloc::string::String::from("no memory manager")),
    }

    // A page of ours made read-only: read works, write faults, content intact.
    if let Some(ro) = ro_scratch_page() {
        c.case("in-read-only-page", copy_in_send(ro), einval);
        c.case("out-read-only-page", copy_out_extraversion(ro), efault);
        mmu_faults += 1;
        check_intact(&mut c, "read-only-page-intact", ro, &[0; 2]);
    } else {
        c.fail(alloc::string::String::from("no read-only scratch page"));
    }

    // Writable then read-only: the copy faults at the boundary. As on Xen the bytes before it
    // may be written; nothing lands in the read-only page.
    match straddle_pages() {
        Ok(second) => {
            c.case("out-straddling-into-read-only", copy_out_extraversion(second - 8), efault);
            mmu_faults += 1;
            check_intact(&mut c, "straddled-read-only-page-intact", second, &[0; 2]);
        }
        Err(e) => c.fail(alloc::format!("cannot set up the straddling pages: {e}")),
    }

    // Our own L4, which the hypervisor validated and keeps read-only to us.
    let l4 = si.pt_base;
    let before = words(l4, 2);
    c.case("out-own-l4-page-table", copy_out_extraversion(l4), efault);
    mmu_faults += 1;
    check_intact(&mut c, "own-l4-intact", l4, &before);

    // A page granted to ourselves read-only and mapped read-only.
    match map_readonly_grant() {
        Ok((handle, gref)) => {
            c.case("in-read-only-grant", copy_in_send(MAP_VA), einval);
            c.case("out-read-only-grant", copy_out_extraversion(MAP_VA), efault);
            mmu_faults += 1;
            check_intact(&mut c, "read-only-grant-intact", MAP_VA, &[0; 2]);
            let mut u = GnttabUnmapGrantRef { host_addr: MAP_VA, handle, ..Default::default() };
            let _ = hypercall::grant_table_op(core::slice::from_mut(&mut u));
            if u.status != gntst::OKAY || gnttab::end_access(gref).is_err() {
                c.fail(alloc::format!("unmapping the read-only grant: status {}", u.status));
            }
        }
        Err(e) => c.fail(alloc::format!("cannot map a read-only grant: {e}")),
    }

    // Refused by the range check before any copy.
    c.case("in-m2p-guest-readable", copy_in_send(MACH2PHYS_VIRT_START), efault);
    c.case("in-hypervisor-text", copy_in_console(HV_TEXT, 8), efault);
    c.case("out-hypervisor-text", copy_out_extraversion(HV_TEXT), efault);
    c.case("out-straddling-hole-end", copy_out_extraversion(HYPERVISOR_VIRT_END - 8), efault);
    c.case("in-non-canonical", copy_in_send(NON_CANONICAL), efault);
    c.case("out-non-canonical", copy_out_extraversion(NON_CANONICAL), efault);
    c.case("out-straddling-lower-half-end", copy_out_extraversion(LOWER_HALF_END - 8), efault);
    c.case("in-wrapping", copy_in_console(u64::MAX - 3, 8), efault);

    // Good copies still work, in and out, and the hypervisor is alive to make them.
    let mut st = EvtchnStatus { dom: DomId::SELF, ..Default::default() };
    match events::alloc_unbound(DomId::SELF) {
        Ok(p) => {
            st.port = p;
            c.case("status-after", hypercall::event_channel_op(evtop::STATUS, &mut st), 0);
            let _ = events::close(p);
        }
        Err(e) => c.fail(alloc::format!("alloc_unbound afterwards: {e}")),
    }
    let mut extra = [0u8; 16];
    c.case("extraversion-after", copy_out_extraversion(extra.as_mut_ptr() as u64), 0);
    if extra[0] == 0 {
        c.fail(alloc::string::String::from("extraversion came back empty"));
    }
    println!("guest-copy: mmu-faults={mmu_faults}");
    c.report();
}

fn check_intact(c: &mut Cases, what: &str, va: u64, want: &[u64]) {
    let got = words(va, want.len() as u64);
    super::results::yes(what, got == want);
    if got != want {
        c.fail(alloc::format!("{what}: {got:x?}, want {want:x?}"));
    }
}

/// Two consecutive pages of ours, zeroed, the second remapped read-only; its address.
fn straddle_pages() -> Result<u64, Errno> {
    let first = mm::alloc_run(2)?;
    let second = first + 4096;
    // SAFETY: both pages are ours and mapped writable until the remap below.
    unsafe { core::ptr::write_bytes(first as *mut u8, 0, 8192) };
    let pfn = mm::virt_to_pfn(second).ok_or(Errno::EINVAL)?;
    let mfn = mm::pfn_to_mfn(pfn).ok_or(Errno::EINVAL)?;
    hypercall::check(hypercall::update_va_mapping(second, pt::make(mfn, pt::PAGE_KERNEL_RO), uvmf::INVLPG))?;
    Ok(second)
}

/// A zeroed page granted to ourselves read-only and mapped read-only at `MAP_VA`: (handle,
/// gref).
fn map_readonly_grant() -> Result<(u32, hypercall_abi::GrantRef), Errno> {
    gnttab::init(gnttab::DEFAULT_FRAMES)?;
    let page = mm::alloc_page()?;
    // SAFETY: a fresh page of ours, mapped writable in the direct map.
    unsafe { core::ptr::write_bytes(page.va as *mut u8, 0, 4096) };
    // Our domain id, from a loopback port's status.
    let p = events::alloc_unbound(DomId::SELF)?;
    let mut st = EvtchnStatus { dom: DomId::SELF, port: p, ..Default::default() };
    let _ = hypercall::event_channel_op(evtop::STATUS, &mut st);
    let _ = events::close(p);
    let me = st.unbound_dom();
    // The map needs an L1 under MAP_VA: map the page there once and unmap it.
    mm::map_page(MAP_VA, page.mfn, pt::PAGE_KERNEL | pt::NX)?;
    mm::unmap_page(MAP_VA)?;
    let gref = gnttab::grant_access(me, page.mfn, true)?;
    let mut m = GnttabMapGrantRef {
        host_addr: MAP_VA,
        flags: gntmap::HOST_MAP | gntmap::READONLY,
        ref_: gref,
        dom: me,
        ..Default::default()
    };
    let _ = hypercall::grant_table_op(core::slice::from_mut(&mut m));
    if m.status != gntst::OKAY {
        let _ = gnttab::end_access(gref);
        return Err(Errno::EINVAL);
    }
    Ok((m.handle, gref))
}
