//! Regression tests for the guest-reachable memory-management holes of issue 9 (see
//! docs/SECURITY.md), run through the real dispatcher on domains built by the real builder
//! in fake memory. Each reproduces the hostile sequence as a guest would issue it.

use crate::hypercall::{dispatch, Hc};
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

/// The frame table's audit with every reference held outside page tables (the run-time
/// audit's list: vCPU roots, descriptor-table frames, grant mappings).
pub(crate) fn audit(hv: &TestHv) {
    if let Err(e) = hv.audit_frames() {
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

/// The L1TF rule (XSA-273) through the dispatcher: a domU writing a non-present entry that
/// names cacheable memory is crashed, as Xen does where it cannot shadow the domain; the
/// entry is not stored and the machine and dom0 go on.
#[test]
fn an_l1tf_unsafe_entry_crashes_the_domu_alone() {
    use crate::domain::{DomainState, ShutdownReason};
    let mut hv = two_domains();
    run_as(&mut hv, DOMU);
    let l4 = hv.cur_vcpu().kernel_l4;
    assert_eq!(mmu_update(&mut hv, l4, 7, 0x1000_0000_0000 >> 20 << 12), Errno::EINVAL.to_ret());
    assert_eq!(hv.mem().read_pte(l4, 7), 0);
    assert_eq!(hv.domains[&DOMU].state, DomainState::Shutdown(ShutdownReason::Crash));
    assert!(crate::testkit::console(&hv).contains("L1TF-vulnerable L4e"));
    assert_eq!(hv.domains[&DomId::DOM0].state, DomainState::Running);
}

/// Finding 4 (XSA-45 class): pinning and unpinning an L4 over many L1s is done in bounded
/// steps. Each call examines at most the budget (plus one entry per level, so that a resumed
/// call always progresses), keeps its progress in the frames, and the continuation finishes
/// the job; the frame table is consistent after every step.
#[test]
fn pin_and_unpin_of_a_large_tree_are_preemptible() {
    use crate::mm::mmu::testkit::{Machine, RO, RWF, SELF};
    use crate::mm::pte::make;
    const L1S: usize = 24;
    const BUDGET: u32 = 300;
    let mut m = Machine::new(128);
    let mut g = m.guest(1, false, 100);
    let s = m.build_space(&mut g);
    // A second tree: L4 -> L3 -> L2 -> 24 full L1s, each mapping the four data frames
    // read-only 128 times over.
    let (l4, l3, l2) = (m.alloc(&g), m.alloc(&g), m.alloc(&g));
    m.mem.write_pte(l4, 0, make(l3, RWF));
    m.mem.write_pte(l3, 0, make(l2, RWF));
    let l1s: Vec<Mfn> = (0..L1S).map(|_| m.alloc(&g)).collect();
    for (k, &l1) in l1s.iter().enumerate() {
        m.mem.write_pte(l2, k, make(l1, RWF));
        for e in 0..512 {
            m.mem.write_pte(l1, e, make(s.data[e % 4], RO));
        }
    }
    let data_count = m.info(s.data[0]).count;
    m.budget = Some(BUDGET);
    let mut calls = 0;
    loop {
        calls += 1;
        let r = m.ext(&mut g, mmuext::PIN_L4_TABLE, l4.0, 0);
        assert_eq!(r.result, Ok(()));
        m.audit(&[&g]);
        if r.done == 1 {
            break;
        }
        assert!(m.ft.is_partial(l4), "progress is kept in the frame");
        assert!(calls < 1000);
    }
    // Budget units: one per non-empty entry (the L1s' and the tables' links), one per 16
    // slots scanned for the empty ones (of the L2, L3 and L4).
    let entries = L1S * 512 + L1S + 2 + 3 * 512 / 16;
    assert!(calls as usize >= entries / BUDGET as usize, "{calls} calls for {entries} entries");
    assert!(calls as usize <= entries / (BUDGET as usize - 4) + 1, "{calls} calls");
    assert!(m.info(l4).pinned && m.info(l4).validated);
    assert_eq!(m.info(s.data[0]).count, data_count + (L1S * 128) as u32);
    // UNPIN returns at once; the teardown goes on in the next calls (any memory hypercall
    // finishes it first).
    assert_eq!(m.ext(&mut g, mmuext::UNPIN_TABLE, l4.0, 0).done, 1);
    m.audit(&[&g]);
    assert!(m.ft.deferred_len() > 0);
    let mut calls = 0;
    while m.ft.deferred_len() > 0 {
        calls += 1;
        let r = m.ext(&mut g, mmuext::TLB_FLUSH_LOCAL, 0, 0);
        assert_eq!(r.result, Ok(()));
        m.audit(&[&g]);
        assert!(calls < 1000);
    }
    assert!(calls as usize >= entries / BUDGET as usize - 1, "{calls} teardown calls");
    for t in [l4, l3, l2].iter().chain(&l1s) {
        let i = m.info(*t);
        assert!(i.type_count == 0 && !i.validated, "{t:?}: {i:?}");
    }
    assert_eq!(m.info(s.data[0]).count, data_count);
    // A failure deep in the tree tears down what was validated, preemptibly too.
    m.mem.write_pte(l1s[L1S - 1], 511, make(Mfn(2), RO));
    let mut calls = 0;
    let r = loop {
        calls += 1;
        let r = m.ext(&mut g, mmuext::PIN_L4_TABLE, l4.0, 0);
        m.audit(&[&g]);
        if r.done == 1 || r.result.is_err() {
            break r;
        }
        assert!(calls < 1000);
    };
    assert_eq!(r.result, Err(Errno::EBUSY));
    while m.ft.deferred_len() > 0 {
        assert_eq!(m.update(&mut g, s.data[3], 0, 0, SELF), Ok(()));
        m.audit(&[&g]);
    }
    assert_eq!(m.info(l4).type_count, 0);
    assert_eq!(m.info(s.data[0]).count, data_count);
    // The domain's death finishes whatever is partial, with no budget.
    m.budget = Some(BUDGET);
    let r = m.ext(&mut g, mmuext::PIN_L4_TABLE, l4.0, 0);
    assert_eq!((r.done, r.result), (0, Ok(())));
    let bases: Vec<Mfn> = [g.kernel_l4, g.user_l4].into_iter().flatten().collect();
    m.ft.relinquish(&m.mem, g.domid, &bases);
    assert_eq!(m.ft.tot_pages(g.domid), 0);
    m.ft.audit(&m.mem, &[]).unwrap();
}

/// Finding 4 through the dispatcher: a multicall of `mmuext_op`s, each pinning and unpinning
/// an L4 over a large tree several times, continues itself in bounded steps (the multicall
/// shares one budget) and completes with every entry's result; the audit holds at each step.
#[test]
fn a_pin_storm_multicall_continues_in_bounded_steps() {
    use crate::mm::frame_table::PREEMPT_BUDGET;
    use crate::mm::pte::make;
    use hypercall_abi::xen::MulticallEntry;
    const L1S: usize = 16;
    const PAIRS: usize = 4;
    const CALLS: usize = 6;
    let mut hv = two_domains();
    run_as(&mut hv, DOMU);
    let tot = hv.frames.tot_pages(DOMU);
    hv.frames.set_max_pages(DOMU, tot + 64).unwrap();
    let mem = hv.plat.mem.clone();
    let mut alloc = || hv.frames.alloc_domain_frame(&*mem, DOMU).unwrap();
    let (l4, l3, l2) = (alloc(), alloc(), alloc());
    let data = alloc();
    let l1s: Vec<Mfn> = (0..L1S).map(|_| alloc()).collect();
    mem.write_pte(l4, 0, make(l3, 0x67));
    mem.write_pte(l3, 0, make(l2, 0x67));
    for (k, &l1) in l1s.iter().enumerate() {
        mem.write_pte(l2, k, make(l1, 0x67));
        for e in 0..512 {
            mem.write_pte(l1, e, make(data, 0x25));
        }
    }
    let ops: Vec<MmuextOp> = (0..PAIRS)
        .flat_map(|_| {
            [
                MmuextOp { cmd: mmuext::PIN_L4_TABLE, _pad: 0, arg1: l4.0, arg2: 0 },
                MmuextOp { cmd: mmuext::UNPIN_TABLE, _pad: 0, arg1: l4.0, arg2: 0 },
            ]
        })
        .collect();
    let ops_va = SCRATCH_VA + 0x400;
    for (i, o) in ops.iter().enumerate() {
        hv.guest().write_elem(ops_va, i as u64, o).unwrap();
    }
    for i in 0..CALLS as u64 {
        let e = MulticallEntry {
            op: nr::MMUEXT_OP,
            result: 1,
            args: [ops_va, ops.len() as u64, 0, u64::from(DomId::SELF.0), 0, 0],
        };
        hv.guest().write_elem(SCRATCH_VA, i, &e).unwrap();
    }
    let mut args = [SCRATCH_VA, CALLS as u64, 0, 0, 0];
    let mut continuations = 0;
    loop {
        match dispatch(&mut hv, nr::MULTICALL, args, None) {
            Hc::Ret(r) => {
                assert_eq!(r, 0);
                break;
            }
            Hc::Continue(a) => {
                continuations += 1;
                args = a;
                audit(&hv);
                assert!(continuations < 10_000);
            }
            other => panic!("{other:?}"),
        }
    }
    for i in 0..CALLS as u64 {
        let e: MulticallEntry = hv.guest().read_elem(SCRATCH_VA, i).unwrap();
        assert_eq!(e.result, 0, "entry {i}");
    }
    // Each pin and each teardown examines the whole tree once.
    let per_pass = L1S * 512 + L1S + 2 + 3 * 512 / 16;
    let work = 2 * per_pass * PAIRS * CALLS;
    // (Less the L4's hypervisor slots, and the last teardown, still deferred.)
    let bound = work / PREEMPT_BUDGET as usize;
    assert!((bound * 9 / 10..=bound + 1).contains(&continuations), "{continuations} continuations, {bound}");
    // Whatever teardown is still deferred finishes with the domain's next memory call.
    let flush = MmuextOp { cmd: mmuext::TLB_FLUSH_LOCAL, _pad: 0, arg1: 0, arg2: 0 };
    hv.guest().write_obj(SCRATCH_VA, &flush).unwrap();
    while hv.frames.deferred_len() > 0 {
        let r = dispatch(&mut hv, nr::MMUEXT_OP, [SCRATCH_VA, 1, 0, u64::from(DomId::SELF.0), 0], None);
        assert!(matches!(r, Hc::Ret(0) | Hc::Continue(_)), "{r:?}");
    }
    let i = hv.frames.info(l4).unwrap();
    assert!(!i.pinned && i.type_count == 0, "{i:?}");
    audit(&hv);
}

/// An LDT whose base is the last page of the address space (Xen checks only the base's
/// alignment and range), mapped, with more than one page of entries: computing the second page's
/// address overflowed, which stopped the machine (`overflow-checks`). It ends where the address
/// space does: one page of descriptors is loaded.
#[test]
fn an_ldt_at_the_top_of_the_address_space_ends_there() {
    use crate::guest_mem::Access;
    use crate::loader::elf::testelf::BASE;
    use crate::mm::pte::{make, PRESENT, RW, USER};
    const TOP: u64 = 0xffff_ffff_ffff_f000;
    let mut hv = two_domains();
    run_as(&mut hv, DOMU);
    // Three of the domain's frames: an L2 and an L1 mapping the third, read-only, at TOP,
    // hooked into the kernel's L3 (which maps the kernel, at BASE, in L4 slot 511 too).
    let vas: Vec<u64> = (0..3).map(|i| BASE + 0x31_0000 + i * 0x1000).collect();
    let frames: Vec<Mfn> =
        vas.iter().map(|&va| Mfn::containing(hv.guest().translate(va, Access::Write).unwrap())).collect();
    for &va in &vas {
        hv.guest().write(va, &[0u8; 4096]).unwrap();
    }
    hv.guest().write_obj(vas[0] + 511 * 8, &make(frames[1], PRESENT | RW | USER)).unwrap();
    hv.guest().write_obj(vas[1] + 511 * 8, &make(frames[2], PRESENT | USER)).unwrap();
    for (&va, &f) in vas.iter().zip(&frames) {
        assert_eq!(call(&mut hv, nr::UPDATE_VA_MAPPING, [va, make(f, PRESENT | USER), 2, 0, 0]), 0);
    }
    let l4 = hv.cur_vcpu().kernel_l4;
    let l3 = crate::mm::pte::mfn(hv.mem().read_pte(l4, 511));
    assert_eq!(hv.mem().read_pte(l3, 511), 0, "the test kernel leaves the last 1 GiB empty");
    assert_eq!(mmu_update(&mut hv, l3, 511, make(frames[0], PRESENT | RW | USER)), 0);
    assert_eq!(Mfn::containing(hv.guest().translate(TOP, Access::Read).unwrap()), frames[2]);
    let op = MmuextOp { cmd: mmuext::SET_LDT, _pad: 0, arg1: TOP, arg2: 8192 };
    hv.guest().write_obj(SCRATCH_VA, &op).unwrap();
    assert_eq!(call(&mut hv, nr::MMUEXT_OP, [SCRATCH_VA, 1, 0, u64::from(DomId::SELF.0), 0]), 0);
    assert_eq!(hv.cur_vcpu().ldt.len(), 512);
    assert_eq!(hv.cur_vcpu().ldt_frames[..], [frames[2]]);
    audit(&hv);
}

/// `MMUEXT_SET_LDT` loads a real LDT (it used to return success and do nothing): the pages
/// become descriptor pages whose descriptors are checked as Xen's `check_descriptor` (DPL
/// raised to 3, gates refused), `update_descriptor` refreshes the loaded copy, an LDT page
/// that cannot be a descriptor page ends the LDT, and `SET_LDT(0, 0)` removes it.
#[test]
fn set_ldt_loads_checked_descriptors() {
    use crate::guest_mem::Access;
    use crate::loader::elf::testelf::BASE;
    let mut hv = two_domains();
    run_as(&mut hv, DOMU);
    let va = BASE + 0x30_0000;
    let ma = hv.guest().translate(va, Access::Write).unwrap();
    let frame = Mfn::containing(ma);
    let code = 0x00af_fa00_0000_ffff_u64; // 64-bit code, DPL 3
    let kernel_dpl = code & !(3 << 45); // DPL 0: raised to 3
    hv.mem().write_u64(ma, code);
    hv.mem().write_u64(ma + 8, kernel_dpl);
    let set_ldt = |hv: &mut TestHv, base: u64, ents: u64| {
        let op = MmuextOp { cmd: mmuext::SET_LDT, _pad: 0, arg1: base, arg2: ents };
        hv.guest().write_obj(SCRATCH_VA, &op).unwrap();
        call(hv, nr::MMUEXT_OP, [SCRATCH_VA, 1, 0, u64::from(DomId::SELF.0), 0])
    };
    // Still mapped writable: Xen accepts the call (its mapping is lazy); nothing is loaded.
    assert_eq!(set_ldt(&mut hv, va, 2), 0);
    assert!(hv.cur_vcpu().ldt.is_empty());
    // Read-only, as Linux makes its LDT pages.
    let ro = crate::mm::pte::make(frame, crate::mm::pte::PRESENT | crate::mm::pte::USER);
    assert_eq!(call(&mut hv, nr::UPDATE_VA_MAPPING, [va, ro, 2, 0, 0]), 0);
    let gen = hv.cur_vcpu().gdt_generation;
    let quota_before = hv.cur_dom().hv_mem.used();
    assert_eq!(set_ldt(&mut hv, va, 2), 0);
    assert_eq!(hv.cur_vcpu().ldt, [code, code]);
    // The validated copy is charged to the domain's heap quota.
    let charged = hv.cur_vcpu().ldt.capacity() * 8;
    assert_eq!(hv.cur_dom().hv_mem.used(), quota_before + charged);
    assert!(hv.cur_vcpu().gdt_generation != gen, "the arch layer reloads it");
    assert_eq!(hv.frames.info(frame).unwrap().ty, crate::mm::frame_table::PageType::SegDesc);
    audit(&hv);
    // A call gate may not be written; a data descriptor may, and the loaded copy follows.
    assert_eq!(
        call(&mut hv, nr::UPDATE_DESCRIPTOR, [ma + 8, 0x0000_ec00_0008_0000, 0, 0, 0]),
        Errno::EINVAL.to_ret()
    );
    let data = 0x00cf_f200_0000_ffff_u64;
    assert_eq!(call(&mut hv, nr::UPDATE_DESCRIPTOR, [ma + 8, data, 0, 0, 0]), 0);
    assert_eq!(hv.cur_vcpu().ldt, [code, data]);
    // Removing it drops the frame's references.
    assert_eq!(set_ldt(&mut hv, 0, 0), 0);
    assert!(hv.cur_vcpu().ldt.is_empty() && hv.cur_vcpu().ldt_frames.is_empty());
    assert_eq!(hv.frames.info(frame).unwrap().type_count, 0);
    assert_eq!(hv.cur_dom().hv_mem.used(), quota_before, "the charge is given back");
    audit(&hv);
    // A copy the quota cannot hold ends the LDT (its selectors fault), holding nothing.
    let quota =
        core::mem::replace(&mut hv.cur_dom_mut().hv_mem, crate::domain::MemQuota::new(quota_before + 64));
    assert_eq!(hv.cur_dom_mut().hv_mem.charge(quota_before), Ok(()));
    assert_eq!(set_ldt(&mut hv, va, 512), 0);
    assert!(hv.cur_vcpu().ldt.is_empty() && hv.cur_vcpu().ldt_frames.is_empty());
    assert_eq!(hv.frames.info(frame).unwrap().type_count, 0);
    assert_eq!(hv.cur_dom().hv_mem.used(), quota_before);
    hv.cur_dom_mut().hv_mem = quota;
    audit(&hv);
    // Xen's argument checks.
    assert_eq!(set_ldt(&mut hv, va + 8, 2), Errno::EINVAL.to_ret());
    assert_eq!(set_ldt(&mut hv, va, 8193), Errno::EINVAL.to_ret());
    // A domain dying with an LDT loaded gives its frame back.
    assert_eq!(set_ldt(&mut hv, va, 512), 0);
    assert_eq!(hv.cur_vcpu().ldt.len(), 512);
    run_as(&mut hv, DomId::DOM0);
    let dc = hypercall_abi::domctl::XenDomctl::new(hypercall_abi::domctl::cmd::DESTROYDOMAIN, DOMU);
    hv.guest().write_obj(SCRATCH_VA, &dc).unwrap();
    assert_eq!(call(&mut hv, nr::DOMCTL, [SCRATCH_VA, 0, 0, 0, 0]), 0);
    assert_eq!(hv.frames.owner(frame), Some(crate::mm::frame_table::Owner::Free));
    audit(&hv);
}

/// `MMUEXT_FLUSH_CACHE` really flushes (it used to return success and do nothing), for a
/// domain with I/O memory only, as Xen.
#[test]
fn flush_cache_runs_wbinvd_for_dom0_only() {
    let mut hv = two_domains();
    run_as(&mut hv, DOMU);
    assert_eq!(ext(&mut hv, mmuext::FLUSH_CACHE, 0), Errno::EACCES.to_ret());
    assert_eq!(ext(&mut hv, mmuext::FLUSH_CACHE_GLOBAL, 0), Errno::EINVAL.to_ret());
    assert_eq!(hv.plat.wbinvds, 0);
    run_as(&mut hv, DomId::DOM0);
    assert_eq!(ext(&mut hv, mmuext::FLUSH_CACHE, 0), 0);
    assert_eq!(hv.plat.wbinvds, 1);
}

/// Writable page tables through the hypervisor (issue 11 item 4, what the page-fault path
/// calls once it has decoded the faulting store): a domU's kernel writing an entry of one of
/// its own L1s through its read-only mapping gets the entry validated and written as by
/// `mmu_update`; a store that `mmu_update` would refuse is the guest's page fault, and one
/// that breaks the L1TF rule crashes the domU alone.
#[test]
fn a_write_to_an_own_l1_through_its_read_only_mapping_is_applied_as_mmu_update() {
    use crate::mm::pte::{make, PRESENT, RW, USER};
    use crate::mm::ptwr::{pfec, PtwrOutcome};
    let mut hv = two_domains();
    run_as(&mut hv, DOMU);
    // The L1 mapping the scratch page, and where the domain's own mapping of it is: page
    // tables are mapped read-only with the rest of the domain, at virt_base + pfn pages.
    let l4 = hv.cur_vcpu().kernel_l4;
    let mut table = l4;
    for level in (2..=4).rev() {
        table = crate::mm::pte::mfn(hv.mem().read_pte(table, crate::mm::pte::table_index(SCRATCH_VA, level)));
    }
    let l1 = table;
    let pfn = hv.mem().read_u64(hv.m2p_base.addr() + l1.0 * 8);
    let l1_va = crate::loader::elf::testelf::BASE + (pfn << 12);
    assert_eq!(hv.guest().translate(l1_va, crate::guest_mem::Access::Read).map(Mfn::containing), Ok(l1));
    let fault = pfec::PRESENT | pfec::WRITE;
    let slot = 300;
    let at = hv.ptwr_target(l1_va + slot * 8, fault).expect("a write to an own L1");
    // A data page of the domain's, mapped read-only by the store.
    let data_va = SCRATCH_VA + 0x1000;
    let data = Mfn::containing(hv.guest().translate(data_va, crate::guest_mem::Access::Read).unwrap());
    let before = hv.frames.info(data).unwrap().count;
    let e = make(data, PRESENT | USER);
    assert_eq!(hv.ptwr_store(at, e, 8, None), Ok(PtwrOutcome::Written));
    assert_eq!(hv.frames.info(data).unwrap().count, before + 1);
    audit(&hv);
    // A writable mapping of a page table: the guest's page fault, nothing written.
    let bad = make(l1, PRESENT | RW | USER);
    let at2 = hv.ptwr_target(l1_va + (slot + 1) * 8, fault).unwrap();
    let untouched = hv.mem().read_pte(l1, slot as usize + 1);
    assert_eq!(hv.ptwr_store(at2, bad, 8, None), Err(Errno::EBUSY));
    assert_eq!(hv.mem().read_pte(l1, slot as usize + 1), untouched);
    // Clearing the entry drops its reference.
    assert_eq!(hv.ptwr_store(at, 0, 8, None), Ok(PtwrOutcome::Written));
    assert_eq!(hv.frames.info(data).unwrap().count, before);
    audit(&hv);
    // Reads, and writes through writable mappings, are not ptwr's.
    assert_eq!(hv.ptwr_target(l1_va, pfec::PRESENT), None);
    assert_eq!(hv.ptwr_target(data_va, fault), None);
    // An L1TF-unsafe non-present entry crashes the domU alone.
    assert!(hv.ptwr_store(at, 0x5000, 8, None).is_err());
    assert_eq!(
        hv.domains[&DOMU].state,
        crate::domain::DomainState::Shutdown(crate::domain::ShutdownReason::Crash)
    );
    assert_eq!(hv.domains[&DomId::DOM0].state, crate::domain::DomainState::Running);
}
