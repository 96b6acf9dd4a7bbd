//! Regression tests for the guest-reachable memory-management holes of issue 9 (see
//! docs/SECURITY.md), run through the real dispatcher on domains built by the real builder
//! in fake memory. Each reproduces the hostile sequence as a guest would issue it.

use crate::hypercall::{dispatch, Hc};
use crate::mm::frame_table::ExternalRef;
use crate::mm::MachineMemory;
use crate::testkit::{run_as, two_domains, TestHv, SCRATCH_VA};
use crate::vcpu::GuestFrame;
use hypercall_abi::hypercall::nr;
use hypercall_abi::xen::{mmu, mmuext, IretContext, MmuUpdate, MmuextOp, FLAT_RING3_CS64, FLAT_RING3_SS64};
use hypercall_abi::{DomId, Errno, Mfn};

const DOMU: DomId = DomId(1);

fn call(hv: &mut TestHv, n: u64, a: [u64; 5]) -> i64 {
    match dispatch(hv, n, a, None) {
        Hc::Ret(r) => r,
        other => panic!("unexpected {other:?}"),
    }
}

fn ext(hv: &mut TestHv, cmd: u32, arg1: u64) -> i64 {
    let op = MmuextOp { cmd, _pad: 0, arg1, arg2: 0 };
    hv.guest().write_obj(SCRATCH_VA, &op).unwrap();
    call(hv, nr::MMUEXT_OP, [SCRATCH_VA, 1, 0, u64::from(DomId::SELF.0), 0])
}

fn mmu_update(hv: &mut TestHv, table: Mfn, slot: usize, val: u64) -> i64 {
    let req = MmuUpdate { ptr: (table.addr() + slot as u64 * 8) | mmu::NORMAL_PT_UPDATE, val };
    hv.guest().write_obj(SCRATCH_VA, &req).unwrap();
    call(hv, nr::MMU_UPDATE, [SCRATCH_VA, 1, 0, u64::from(DomId::SELF.0), 0])
}

/// Every reference held outside page tables, with the vCPUs' bases as roots.
pub(crate) fn audit(hv: &TestHv) {
    let mut ext = crate::grant::external_refs(&hv.domains);
    for d in hv.domains.values() {
        for v in &d.vcpus {
            ext.extend(v.held_bases().map(|m| ExternalRef::root(m, d.id)));
        }
    }
    if let Err(e) = hv.frames.audit(hv.mem(), &ext) {
        panic!("audit: {e}");
    }
}

/// `iret` from guest kernel mode to user mode at `rip`.
fn iret_to_user(hv: &mut TestHv) -> Result<(), &'static str> {
    let sp = hv.cur_vcpu().kernel_sp - 0x200;
    let ctx = IretContext {
        rip: 0x40_0000,
        cs: u64::from(FLAT_RING3_CS64),
        rflags: 0x202,
        rsp: 0x50_0000,
        ss: u64::from(FLAT_RING3_SS64),
        ..Default::default()
    };
    hv.guest().write_obj(sp, &ctx).unwrap();
    let mut frame = GuestFrame { rsp: sp, ..Default::default() };
    crate::traps::do_iret(hv, &mut frame)
}

/// Finding 1: `iret` to user mode with no user base used to alias the kernel L4 as the user
/// base without taking a reference; `NEW_USER_BASEPTR(0)` then dropped one never taken and
/// `UNPIN_TABLE` left the live L4 untyped, so `mmu_update` wrote raw entries into it.
#[test]
fn user_mode_without_a_user_base_is_refused_as_xen_does() {
    let mut hv = two_domains();
    run_as(&mut hv, DOMU);
    let l4 = hv.cur_vcpu().kernel_l4;
    // The sequence: iret to user mode (cs 0xe033), back to kernel mode,
    // NEW_USER_BASEPTR(0), UNPIN_TABLE(kernel L4), then L4[5] = 0x12345087.
    let iret = iret_to_user(&mut hv);
    if iret.is_ok() {
        crate::traps::toggle_guest_mode(&mut hv);
        assert!(hv.cur_vcpu().kernel_mode);
        ext(&mut hv, mmuext::NEW_USER_BASEPTR, 0);
        ext(&mut hv, mmuext::UNPIN_TABLE, l4.0);
        let r = mmu_update(&mut hv, l4, 5, 0x1234_5087);
        assert_ne!(r, 0, "unvalidated entry written into the live L4");
    }
    assert_eq!(iret, Err("guest switching to user mode with no user page tables"));
    assert!(hv.cur_vcpu().kernel_mode);
    audit(&hv);
}

/// The same sequence with the user base aliasing the kernel base explicitly: each base holds
/// its own references, so unpinning leaves the L4 validated and its entries checked.
#[test]
fn an_explicit_user_base_alias_keeps_the_l4_typed() {
    let mut hv = two_domains();
    run_as(&mut hv, DOMU);
    let l4 = hv.cur_vcpu().kernel_l4;
    assert_eq!(ext(&mut hv, mmuext::NEW_USER_BASEPTR, l4.0), 0);
    audit(&hv);
    iret_to_user(&mut hv).unwrap();
    assert_eq!(hv.cur_vcpu().current_l4(), l4);
    crate::traps::toggle_guest_mode(&mut hv);
    assert_eq!(ext(&mut hv, mmuext::NEW_USER_BASEPTR, 0), 0);
    assert_eq!(ext(&mut hv, mmuext::UNPIN_TABLE, l4.0), 0);
    let info = hv.frames.info(l4).unwrap();
    assert!(info.validated && info.type_count == 1, "{info:?}");
    assert_eq!(mmu_update(&mut hv, l4, 5, 0x1234_5087), Errno::EINVAL.to_ret());
    audit(&hv);
    // The variant: a new kernel base while the old one is the user base.
    let before = hv.frames.info(l4).unwrap();
    assert_eq!(ext(&mut hv, mmuext::NEW_USER_BASEPTR, l4.0), 0);
    assert_eq!(hv.frames.info(l4).unwrap().type_count, before.type_count + 1);
    audit(&hv);
}

/// Destroying a domain whose user base is its kernel base returns every frame.
#[test]
fn destroying_a_domain_with_an_aliased_user_base_frees_the_l4() {
    let mut hv = two_domains();
    run_as(&mut hv, DOMU);
    let l4 = hv.cur_vcpu().kernel_l4;
    assert_eq!(ext(&mut hv, mmuext::NEW_USER_BASEPTR, l4.0), 0);
    run_as(&mut hv, DomId::DOM0);
    let dc = hypercall_abi::domctl::XenDomctl::new(hypercall_abi::domctl::cmd::DESTROYDOMAIN, DOMU);
    hv.guest().write_obj(SCRATCH_VA, &dc).unwrap();
    assert_eq!(call(&mut hv, nr::DOMCTL, [SCRATCH_VA, 0, 0, 0, 0]), 0);
    assert_eq!(hv.frames.owner(l4), Some(crate::mm::frame_table::Owner::Free));
    audit(&hv);
}

/// Finding 6: application grant mappings are global TLB entries, which a CR3 load keeps. A
/// grantee unmapping one in the same multicall as a `MMUEXT_NEW_BASEPTR` must still lose the
/// translation, or it keeps reaching the granter's page after the granter saw it released.
#[test]
fn a_grant_unmap_with_a_new_baseptr_in_one_multicall_flushes_the_global_entry() {
    use crate::guest_mem::Access;
    use crate::loader::elf::testelf::BASE;
    use crate::mm::pte;
    use crate::mm::tlb::{model::ModelTlb, switch_and_flush, Flush};
    use hypercall_abi::grant_table::{gntmap, gtf, op, GnttabMapGrantRef, GnttabUnmapGrantRef};
    use hypercall_abi::xen::MulticallEntry;
    use hypercall_abi::GrantRef;

    let mut hv = two_domains();
    // dom0 grants one of its padding frames to the domU (entry 10, writable).
    run_as(&mut hv, DomId::DOM0);
    let granted = Mfn::containing(hv.guest().translate(BASE + 0x30_0000, Access::Read).unwrap());
    let ma = hv.domains[&DomId::DOM0].grant.entry_ma(GrantRef(10)).unwrap();
    hv.mem().write_u64(ma, u64::from(gtf::PERMIT_ACCESS) | u64::from(DOMU.0) << 16 | granted.0 << 32);
    // The domU maps it as an application mapping over one of its padding pages.
    run_as(&mut hv, DOMU);
    let host_va = BASE + 0x38_0000;
    let map = GnttabMapGrantRef {
        host_addr: host_va,
        flags: gntmap::HOST_MAP | gntmap::APPLICATION_MAP,
        ref_: GrantRef(10),
        dom: DomId::DOM0,
        ..Default::default()
    };
    hv.guest().write_obj(SCRATCH_VA, &map).unwrap();
    assert_eq!(call(&mut hv, nr::GRANT_TABLE_OP, [u64::from(op::MAP_GRANT_REF), SCRATCH_VA, 1, 0, 0]), 0);
    let map: GnttabMapGrantRef = hv.guest().read_obj(SCRATCH_VA).unwrap();
    assert_eq!(map.status, 0);
    let ma = hv.guest().translate(host_va, Access::Write).unwrap();
    assert_eq!(Mfn::containing(ma), granted);
    // The hardware caches the mapping; it is global.
    let mut tlb = ModelTlb::default();
    let l4 = hv.cur_vcpu().kernel_l4;
    let mut t = l4;
    for level in (2..=4).rev() {
        t = pte::mfn(hv.mem().read_pte(t, pte::table_index(host_va, level)));
    }
    let e = hv.mem().read_pte(t, pte::table_index(host_va, 1));
    assert_ne!(e & pte::GLOBAL, 0, "application mappings are global");
    tlb.cache(host_va, true);
    switch_and_flush(&mut tlb, Some(l4.addr()), crate::testkit::exit_work(&mut hv).flush);
    // A second kernel base: a padding frame of the domU, unmapped, with the same entries.
    let spare_va = BASE + 0x3a_0000;
    let spare = Mfn::containing(hv.guest().translate(spare_va, Access::Read).unwrap());
    assert_eq!(call(&mut hv, nr::UPDATE_VA_MAPPING, [spare_va, 0, 0, 0, 0]), 0);
    for slot in (0..512).filter(|&s| crate::mm::pagetable::is_guest_l4_slot(s)) {
        hv.mem().write_pte(spare, slot, hv.mem().read_pte(l4, slot));
    }
    // One multicall: [GNTTABOP_unmap_grant_ref, MMUEXT_NEW_BASEPTR].
    let unmap = GnttabUnmapGrantRef { host_addr: host_va, handle: map.handle, ..Default::default() };
    let newbase = MmuextOp { cmd: mmuext::NEW_BASEPTR, _pad: 0, arg1: spare.0, arg2: 0 };
    let (unmap_va, ext_va) = (SCRATCH_VA + 0x200, SCRATCH_VA + 0x300);
    hv.guest().write_obj(unmap_va, &unmap).unwrap();
    hv.guest().write_obj(ext_va, &newbase).unwrap();
    let calls = [
        MulticallEntry {
            op: nr::GRANT_TABLE_OP,
            result: 1,
            args: [u64::from(op::UNMAP_GRANT_REF), unmap_va, 1, 0, 0, 0],
        },
        MulticallEntry { op: nr::MMUEXT_OP, result: 1, args: [ext_va, 1, 0, u64::from(DomId::SELF.0), 0, 0] },
    ];
    for (i, c) in calls.iter().enumerate() {
        hv.guest().write_elem(SCRATCH_VA, i as u64, c).unwrap();
    }
    assert_eq!(call(&mut hv, nr::MULTICALL, [SCRATCH_VA, 2, 0, 0, 0]), 0);
    for i in 0..2 {
        let c: MulticallEntry = hv.guest().read_elem(SCRATCH_VA, i).unwrap();
        assert_eq!(c.result, 0, "entry {i}");
    }
    let unmap: GnttabUnmapGrantRef = hv.guest().read_obj(unmap_va).unwrap();
    assert_eq!(unmap.status, 0);
    assert_eq!(hv.cur_vcpu().kernel_l4, spare);
    // The granter sees its page released.
    let flags = hv.domains[&DomId::DOM0].grant.read_entry(hv.mem(), GrantRef(10)).unwrap().flags;
    assert_eq!(flags & (gtf::READING | gtf::WRITING), 0);
    // The exit path switches page tables and carries out the pending flush.
    let exit = crate::testkit::exit_work(&mut hv);
    assert_ne!(exit.flush, Flush::None);
    switch_and_flush(&mut tlb, Some(exit.hw.cr3), exit.flush);
    assert_eq!(tlb.cr3, spare.addr());
    assert!(!tlb.reaches(host_va), "the grantee still reaches the granter's page");
    audit(&hv);
}
