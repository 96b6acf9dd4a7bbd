//! Host tests of grant tables through the real `grant_table_op` dispatcher, between dom0 and a
//! domU built by the real builder in fake memory: mapping, unmapping, copying, revocation,
//! hostile requests, domain destruction on either side, and a property test that random
//! sequences keep the frame table's from-scratch audit clean.

use crate::domain::DomainState;
use crate::grant::{self, grant_pte, GrantCtx, MAX_GRANT_FRAMES, MAX_MAPTRACK};
use crate::guest_mem::{Access, GuestSpace};
use crate::hypercall::{dispatch, Hc};
use crate::loader::elf::testelf::BASE;
use crate::mm::frame_table::{Owner, PageType};
use crate::mm::{pte, MachineMemory};
use crate::testkit::{run_as, two_domains, TestHv, SCRATCH_VA};
use hypercall_abi::grant_table::{
    gntcopy, gntmap, gntst, gtf, op, GnttabCopy, GnttabCopyPtr, GnttabGetStatusFrames, GnttabGetVersion,
    GnttabMapGrantRef, GnttabQuerySize, GnttabSetVersion, GnttabSetupTable, GnttabUnmapAndReplace,
    GnttabUnmapGrantRef, GNTTAB_RESERVED_CONSOLE, GNTTAB_RESERVED_XENSTORE,
};
use hypercall_abi::hypercall::nr;
use hypercall_abi::xen::{mmuext, MmuextOp};
use hypercall_abi::{DomId, Errno, GrantRef, Mfn};
use zerocopy::{FromBytes, Immutable, IntoBytes};

const D0: DomId = DomId(0);
const DU: DomId = DomId(1);
/// Frames a test domain grants: padding pages at the end of its bootstrap region.
const GRANT_VA: u64 = BASE + 0x30_0000;
/// Where a test domain maps grants (also padding pages, replaced by the mapping).
const HOST_VA: u64 = BASE + 0x38_0000;

fn grant_va(i: u64) -> u64 {
    GRANT_VA + i * 0x1000
}

fn host_va(i: u64) -> u64 {
    HOST_VA + i * 0x1000
}

/// Runs `grant_table_op(cmd, ops, ops.len())` as `me` with the ops in scratch memory.
fn gnttab<T: IntoBytes + FromBytes + Immutable + Clone>(
    hv: &mut TestHv,
    me: DomId,
    cmd: u32,
    ops: &[T],
) -> (i64, Vec<T>) {
    run_as(hv, me);
    for (i, o) in ops.iter().enumerate() {
        hv.guest().write_elem(SCRATCH_VA, i as u64, o).unwrap();
    }
    let r = match dispatch(hv, nr::GRANT_TABLE_OP, [u64::from(cmd), SCRATCH_VA, ops.len() as u64, 0, 0], None)
    {
        Hc::Ret(r) => r,
        other => panic!("unexpected {other:?}"),
    };
    let back = (0..ops.len()).map(|i| hv.guest().read_elem(SCRATCH_VA, i as u64).unwrap()).collect();
    (r, back)
}

fn map_req(dom: DomId, gref: u32, host_addr: u64, flags: u32) -> GnttabMapGrantRef {
    GnttabMapGrantRef { host_addr, flags, ref_: GrantRef(gref), dom, handle: 0xdead, ..Default::default() }
}

fn map(hv: &mut TestHv, me: DomId, dom: DomId, gref: u32, host_addr: u64, flags: u32) -> GnttabMapGrantRef {
    let (r, out) = gnttab(hv, me, op::MAP_GRANT_REF, &[map_req(dom, gref, host_addr, flags)]);
    assert_eq!(r, 0, "the hypercall itself succeeds");
    out[0]
}

fn unmap(hv: &mut TestHv, me: DomId, handle: u32, host_addr: u64, dev_bus_addr: u64) -> i16 {
    let u = GnttabUnmapGrantRef { host_addr, dev_bus_addr, handle, ..Default::default() };
    let (r, out) = gnttab(hv, me, op::UNMAP_GRANT_REF, &[u]);
    assert_eq!(r, 0);
    out[0].status
}

fn copy(hv: &mut TestHv, me: DomId, c: GnttabCopy) -> i16 {
    let (r, out) = gnttab(hv, me, op::COPY, &[c]);
    assert_eq!(r, 0);
    out[0].status
}

/// The frame domain `d` maps at `va` (in its kernel page tables).
fn mfn_at(hv: &TestHv, d: DomId, va: u64) -> Mfn {
    let l4 = hv.domains[&d].vcpus[0].kernel_l4;
    Mfn::containing(GuestSpace::new(hv.platform(), l4).translate(va, Access::Read).unwrap())
}

/// The L1 entry `d` uses for `va` (0 if a level above is missing).
fn l1e(hv: &TestHv, d: DomId, va: u64) -> u64 {
    let mut t = hv.domains[&d].vcpus[0].kernel_l4;
    for level in (2..=4).rev() {
        let e = hv.mem().read_pte(t, pte::table_index(va, level));
        if !pte::is_present(e) {
            return 0;
        }
        t = pte::mfn(e);
    }
    hv.mem().read_pte(t, pte::table_index(va, 1))
}

/// Granter `d` writes entry `gref` as a guest would (one store).
fn set_entry(hv: &TestHv, d: DomId, gref: u32, domid: DomId, frame: Mfn, flags: u16) {
    let ma = hv.domains[&d].grant.entry_ma(GrantRef(gref)).expect("entry exists");
    hv.mem().write_u64(ma, u64::from(flags) | u64::from(domid.0) << 16 | (frame.0 & 0xffff_ffff) << 32);
}

fn flags(hv: &TestHv, d: DomId, gref: u32) -> u16 {
    hv.domains[&d].grant.read_entry(hv.mem(), GrantRef(gref)).unwrap().flags
}

/// A guest's `gnttab_end_foreign_access_ref`: cmpxchg the flags to 0 unless in use.
fn revoke(hv: &TestHv, d: DomId, gref: u32) -> bool {
    let ma = hv.domains[&d].grant.entry_ma(GrantRef(gref)).unwrap();
    let mut cur = hv.mem().read_u64(ma) as u16;
    loop {
        if cur & (gtf::READING | gtf::WRITING) != 0 {
            return false;
        }
        let seen = hv.mem().cmpxchg_u16(ma, cur, 0);
        if seen == cur {
            return true;
        }
        cur = seen;
    }
}

fn audit(hv: &TestHv) {
    if let Err(e) = hv.audit_frames() {
        panic!("audit: {e}");
    }
    // Grant mappings are not in the audit's page-table walk: check writability here.
    for d in hv.domains.values() {
        for (_, m) in d.grant.maptrack.iter() {
            if !m.readonly() {
                assert_eq!(hv.frames.info(m.mfn).unwrap().ty, PageType::Writable, "{m:?}");
            }
        }
    }
}

const RW_HOST: u32 = gntmap::HOST_MAP;
const RO_HOST: u32 = gntmap::HOST_MAP | gntmap::READONLY;

#[test]
fn table_setup_size_and_version() {
    let mut hv = two_domains();
    let q = GnttabQuerySize { dom: DomId::SELF, ..Default::default() };
    let (r, out) = gnttab(&mut hv, DU, op::QUERY_SIZE, &[q]);
    assert_eq!(r, 0);
    assert_eq!((out[0].status, out[0].nr_frames, out[0].max_nr_frames), (gntst::OKAY, 1, MAX_GRANT_FRAMES));
    // A domU may not look at dom0's table; dom0 may look at the domU's; nobody at a ghost.
    let (_, out) = gnttab(&mut hv, DU, op::QUERY_SIZE, &[GnttabQuerySize { dom: D0, ..q }]);
    assert_eq!(out[0].status, gntst::PERMISSION_DENIED);
    let (_, out) = gnttab(&mut hv, D0, op::QUERY_SIZE, &[GnttabQuerySize { dom: DU, ..q }]);
    assert_eq!((out[0].status, out[0].nr_frames), (gntst::OKAY, 1));
    let (_, out) = gnttab(&mut hv, D0, op::QUERY_SIZE, &[GnttabQuerySize { dom: DomId(77), ..q }]);
    assert_eq!(out[0].status, gntst::BAD_DOMAIN);
    assert_eq!(gnttab(&mut hv, DU, op::QUERY_SIZE, &[q, q]).0, Errno::EINVAL.to_ret(), "count must be 1");

    // setup_table grows the table with frames lent to the domain and lists them.
    let list_va = SCRATCH_VA + 0x800;
    let free = hv.frames.nr_free();
    let s = GnttabSetupTable { dom: DomId::SELF, nr_frames: 4, frame_list: list_va, ..Default::default() };
    let (r, out) = gnttab(&mut hv, DU, op::SETUP_TABLE, &[s]);
    assert_eq!((r, out[0].status), (0, gntst::OKAY));
    assert_eq!(hv.frames.nr_free(), free - 3);
    let frames = hv.domains[&DU].grant.frames().to_vec();
    assert_eq!(frames.len(), 4);
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(hv.guest().read_elem::<u64>(list_va, i as u64).unwrap(), f.0);
        let info = hv.frames.info(*f).unwrap();
        assert_eq!((info.owner, info.xen_shared, info.ty), (Owner::Domain(DU), true, PageType::Writable));
    }
    // Asking for fewer lists fewer and shrinks nothing; beyond the maximum fails.
    let (_, out) = gnttab(&mut hv, DU, op::SETUP_TABLE, &[GnttabSetupTable { nr_frames: 2, ..s }]);
    assert_eq!((out[0].status, hv.domains[&DU].grant.nr_frames()), (gntst::OKAY, 4));
    let (_, out) =
        gnttab(&mut hv, DU, op::SETUP_TABLE, &[GnttabSetupTable { nr_frames: MAX_GRANT_FRAMES + 1, ..s }]);
    assert_eq!(out[0].status, gntst::GENERAL_ERROR);
    let (_, out) = gnttab(&mut hv, DU, op::SETUP_TABLE, &[GnttabSetupTable { dom: D0, ..s }]);
    assert_eq!(out[0].status, gntst::PERMISSION_DENIED);
    let (_, out) = gnttab(&mut hv, DU, op::SETUP_TABLE, &[GnttabSetupTable { frame_list: 0x1000, ..s }]);
    assert_eq!(out[0].status, gntst::BAD_VIRT_ADDR, "unwritable frame list");
    let (r, _) = gnttab(&mut hv, DU, op::SETUP_TABLE, &[GnttabSetupTable { frame_list: u64::MAX - 8, ..s }]);
    assert_eq!(r, Errno::EFAULT.to_ret(), "frame list wraps around");
    // dom0 grows the domU's table (the toolstack's right); its list lands in dom0's memory.
    let (_, out) = gnttab(&mut hv, D0, op::SETUP_TABLE, &[GnttabSetupTable { dom: DU, nr_frames: 5, ..s }]);
    assert_eq!((out[0].status, hv.domains[&DU].grant.nr_frames()), (gntst::OKAY, 5));
    audit(&hv);

    // Versions: v1 only; asking for v2 fails as on Xen with gnttab=max-ver:1.
    let v = |version| GnttabSetVersion { version };
    let (r, out) = gnttab(&mut hv, DU, op::SET_VERSION, &[v(1)]);
    assert_eq!((r, out[0].version), (0, 1));
    let (r, out) = gnttab(&mut hv, DU, op::SET_VERSION, &[v(2)]);
    assert_eq!((r, out[0].version), (Errno::ENOSYS.to_ret(), 1));
    let (r, out) = gnttab(&mut hv, DU, op::SET_VERSION, &[v(7)]);
    assert_eq!((r, out[0].version), (Errno::EINVAL.to_ret(), 1));
    let g = GnttabGetVersion { dom: DomId::SELF, pad: 0, version: 99 };
    let (r, out) = gnttab(&mut hv, DU, op::GET_VERSION, &[g]);
    assert_eq!((r, out[0].version), (0, 1));
    assert_eq!(
        gnttab(&mut hv, DU, op::GET_VERSION, &[GnttabGetVersion { dom: D0, ..g }]).0,
        Errno::EPERM.to_ret()
    );
    assert_eq!(
        gnttab(&mut hv, D0, op::GET_VERSION, &[GnttabGetVersion { dom: DomId(9), ..g }]).0,
        Errno::ESRCH.to_ret()
    );

    // Unknown commands, continuation bits on a command that takes none, negative counts.
    for cmd in [op::DUMP_TABLE, op::TRANSFER, op::SWAP_GRANT_REF, op::CACHE_FLUSH, 99] {
        assert_eq!(gnttab(&mut hv, DU, cmd, &[0u64]).0, Errno::ENOSYS.to_ret(), "cmd {cmd}");
    }
    run_as(&mut hv, DU);
    let call = |hv: &mut TestHv, a: [u64; 5]| match dispatch(hv, nr::GRANT_TABLE_OP, a, None) {
        Hc::Ret(r) => r,
        o => panic!("{o:?}"),
    };
    assert_eq!(
        call(&mut hv, [u64::from(op::QUERY_SIZE | 1 << 12), SCRATCH_VA, 1, 0, 0]),
        Errno::EINVAL.to_ret()
    );
    assert_eq!(call(&mut hv, [u64::from(op::COPY), SCRATCH_VA, 0x8000_0000, 0, 0]), Errno::EINVAL.to_ret());
    assert_eq!(call(&mut hv, [u64::from(op::MAP_GRANT_REF), 0x1000, 1, 0, 0]), Errno::EFAULT.to_ret());
    assert_eq!(call(&mut hv, [u64::from(op::QUERY_SIZE), 0, 1, 0, 0]), Errno::EFAULT.to_ret());
    assert_eq!(call(&mut hv, [u64::from(op::MAP_GRANT_REF), SCRATCH_VA, 0, 0, 0]), 0, "empty batch");
}

#[test]
fn reserved_refs_grant_the_rings_to_dom0() {
    let mut hv = two_domains();
    let d = &hv.domains[&DU];
    let (console, _) = d.console_ring.unwrap();
    let (store, _) = d.store_ring.unwrap();
    for (gref, ring) in [(GNTTAB_RESERVED_CONSOLE, console), (GNTTAB_RESERVED_XENSTORE, store)] {
        let e = d.grant.read_entry(hv.mem(), gref).unwrap();
        assert_eq!((e.flags, e.domid, u64::from(e.frame)), (gtf::PERMIT_ACCESS, D0, ring.0));
    }
    // dom0 has no rings of its own to hand over.
    let e = hv.domains[&D0].grant.read_entry(hv.mem(), GNTTAB_RESERVED_CONSOLE).unwrap();
    assert_eq!(e.flags, 0);
    // dom0 (xenstored) maps the xenstore ring through the seeded reference.
    let m = map(&mut hv, D0, DU, GNTTAB_RESERVED_XENSTORE.0, host_va(0), RW_HOST);
    assert_eq!((m.status, m.dev_bus_addr), (gntst::OKAY, store.addr()));
    assert_eq!(mfn_at(&hv, D0, host_va(0)), store);
    assert_eq!(flags(&hv, DU, 1), gtf::PERMIT_ACCESS | gtf::READING | gtf::WRITING);
    audit(&hv);
    // A domU cannot map its own rings through them: they name dom0.
    let m = map(&mut hv, DU, DU, GNTTAB_RESERVED_CONSOLE.0, host_va(0), RW_HOST);
    assert_eq!(m.status, gntst::GENERAL_ERROR);
}

#[test]
fn map_and_unmap_read_only_and_writable() {
    let mut hv = two_domains();
    let f = mfn_at(&hv, DU, grant_va(0));
    set_entry(&hv, DU, 10, D0, f, gtf::PERMIT_ACCESS);
    set_entry(&hv, DU, 11, D0, f, gtf::PERMIT_ACCESS | gtf::READONLY);
    let before = hv.frames.info(f).unwrap();
    let old = l1e(&hv, D0, host_va(0));
    let old_mfn = pte::mfn(old);
    let old_count = hv.frames.info(old_mfn).unwrap().count;

    // Writable kernel mapping.
    let m = map(&mut hv, D0, DU, 10, host_va(0), RW_HOST);
    assert_eq!(m.status, gntst::OKAY);
    assert_eq!(m.dev_bus_addr, f.addr());
    assert_ne!(m.handle, 0xdead);
    let e = l1e(&hv, D0, host_va(0));
    assert_eq!(e, grant_pte(f, RW_HOST));
    assert_eq!(
        pte::flags(e),
        pte::PRESENT
            | pte::RW
            | pte::USER
            | pte::ACCESSED
            | pte::DIRTY
            | pte::GNTTAB
            | pte::NX
            | crate::mm::pagetable::GUEST_KERNEL
    );
    // The replaced entry's reference went; the granted frame gained a general and a type ref.
    assert_eq!(hv.frames.info(old_mfn).unwrap().count, old_count - 1);
    let now = hv.frames.info(f).unwrap();
    assert_eq!((now.count, now.type_count), (before.count + 1, before.type_count + 1));
    assert_eq!(flags(&hv, DU, 10), gtf::PERMIT_ACCESS | gtf::READING | gtf::WRITING);
    // dom0 writes through it; the bytes land in the domU's frame.
    run_as(&mut hv, D0);
    hv.guest().write(host_va(0) + 8, b"granted").unwrap();
    assert_eq!(&hv.plat.mem.frame(f)[8..15], b"granted");
    audit(&hv);

    // Read-only application mapping of the read-only grant.
    let app_ro = RO_HOST | gntmap::APPLICATION_MAP;
    let r = map(&mut hv, D0, DU, 11, host_va(1), app_ro);
    assert_eq!(r.status, gntst::OKAY);
    let e = l1e(&hv, D0, host_va(1));
    assert_eq!(
        pte::flags(e),
        pte::PRESENT | pte::USER | pte::GLOBAL | pte::ACCESSED | pte::DIRTY | pte::GNTTAB | pte::NX
    );
    assert_eq!(flags(&hv, DU, 11), gtf::PERMIT_ACCESS | gtf::READONLY | gtf::READING);
    run_as(&mut hv, D0);
    assert_eq!(hv.guest().translate(host_va(1), Access::Write), Err(Errno::EFAULT));
    let mut buf = [0u8; 7];
    hv.guest().read(host_va(1) + 8, &mut buf).unwrap();
    assert_eq!(&buf, b"granted");
    assert_ne!(r.handle, m.handle);
    audit(&hv);

    // A second, read-only use of the writable grant shares its pin.
    let m2 = map(&mut hv, D0, DU, 10, host_va(2), RO_HOST);
    assert_eq!(m2.status, gntst::OKAY);
    assert_eq!(hv.domains[&DU].grant.pins(GrantRef(10)), Some((1, 1)));
    assert_eq!(unmap(&mut hv, D0, m.handle, host_va(0), 0), gntst::OKAY);
    assert_eq!(flags(&hv, DU, 10), gtf::PERMIT_ACCESS | gtf::READING, "writing goes with the last RW use");
    assert_eq!(l1e(&hv, D0, host_va(0)), 0);
    assert_eq!(unmap(&mut hv, D0, m2.handle, host_va(2), 0), gntst::OKAY);
    assert_eq!(flags(&hv, DU, 10), gtf::PERMIT_ACCESS);
    assert_eq!(unmap(&mut hv, D0, r.handle, host_va(1), 0), gntst::OKAY);
    assert_eq!(flags(&hv, DU, 11), gtf::PERMIT_ACCESS | gtf::READONLY);
    let after = hv.frames.info(f).unwrap();
    assert_eq!((after.count, after.type_count), (before.count, before.type_count));
    assert_eq!(hv.domains[&D0].grant.maptrack.live(), 0);
    audit(&hv);

    // Device mappings (dom0 DMA): no PTE, references held until unmapped by bus address.
    let dm = map(&mut hv, D0, DU, 10, 0, gntmap::DEVICE_MAP);
    assert_eq!((dm.status, dm.dev_bus_addr), (gntst::OKAY, f.addr()));
    let both = map(&mut hv, D0, DU, 10, host_va(3), gntmap::DEVICE_MAP | RW_HOST);
    assert_eq!(both.status, gntst::OKAY);
    assert_eq!(hv.domains[&DU].grant.pins(GrantRef(10)), Some((0, 3)));
    audit(&hv);
    assert_eq!(unmap(&mut hv, D0, both.handle, host_va(3), 0), gntst::OKAY, "host part only");
    assert_eq!(hv.domains[&DU].grant.pins(GrantRef(10)), Some((0, 2)));
    assert_eq!(unmap(&mut hv, D0, both.handle, 0, f.addr()), gntst::OKAY, "then the device part");
    assert_eq!(unmap(&mut hv, D0, both.handle, 0, f.addr()), gntst::BAD_HANDLE);
    assert_eq!(unmap(&mut hv, D0, dm.handle, 0, f.addr()), gntst::OKAY);
    assert_eq!(flags(&hv, DU, 10), gtf::PERMIT_ACCESS);
    audit(&hv);
}

#[test]
fn contains_pte_mappings() {
    let mut hv = two_domains();
    let f = mfn_at(&hv, DU, grant_va(0));
    set_entry(&hv, DU, 12, D0, f, gtf::PERMIT_ACCESS);
    // The machine address of dom0's L1 entry for host_va(4).
    let mut t = hv.domains[&D0].vcpus[0].kernel_l4;
    for level in (2..=4).rev() {
        t = pte::mfn(hv.mem().read_pte(t, pte::table_index(host_va(4), level)));
    }
    let pte_ma = t.addr() + pte::table_index(host_va(4), 1) as u64 * 8;
    let flags_cp = RW_HOST | gntmap::CONTAINS_PTE | gntmap::APPLICATION_MAP;
    assert_eq!(map(&mut hv, D0, DU, 12, pte_ma + 4, flags_cp).status, gntst::GENERAL_ERROR, "misaligned");
    let not_l1 = mfn_at(&hv, D0, grant_va(0)).addr();
    assert_eq!(map(&mut hv, D0, DU, 12, not_l1, flags_cp).status, gntst::GENERAL_ERROR, "not an L1");
    let du_l1 = hv.domains[&DU].vcpus[0].kernel_l4.addr();
    assert_eq!(
        map(&mut hv, D0, DU, 12, du_l1, flags_cp).status,
        gntst::GENERAL_ERROR,
        "someone else's table"
    );
    assert_eq!(flags(&hv, DU, 12), gtf::PERMIT_ACCESS, "failed maps leave no pin");
    let m = map(&mut hv, D0, DU, 12, pte_ma, flags_cp);
    assert_eq!(m.status, gntst::OKAY);
    assert_eq!(mfn_at(&hv, D0, host_va(4)), f);
    audit(&hv);
    assert_eq!(unmap(&mut hv, D0, m.handle, pte_ma, 0), gntst::OKAY);
    assert_eq!(l1e(&hv, D0, host_va(4)), 0);
    audit(&hv);
}

#[test]
fn hostile_map_requests() {
    let mut hv = two_domains();
    let f = mfn_at(&hv, DU, grant_va(0));
    let f0 = mfn_at(&hv, D0, grant_va(0));
    set_entry(&hv, DU, 10, D0, f, gtf::PERMIT_ACCESS);
    set_entry(&hv, DU, 11, D0, f, gtf::PERMIT_ACCESS | gtf::READONLY);
    set_entry(&hv, DU, 12, DomId(5), f, gtf::PERMIT_ACCESS);
    set_entry(&hv, DU, 13, D0, f0, gtf::PERMIT_ACCESS);
    set_entry(&hv, DU, 14, D0, f, gtf::ACCEPT_TRANSFER);
    set_entry(&hv, DU, 15, D0, f, gtf::PERMIT_ACCESS | gtf::SUB_PAGE);
    set_entry(&hv, DU, 16, D0, Mfn(1 << 31), gtf::PERMIT_ACCESS);
    let l1 = pte::mfn(hv.mem().read_pte(
        pte::mfn(
            hv.mem().read_pte(pte::mfn(hv.mem().read_pte(hv.domains[&DU].vcpus[0].kernel_l4, 511)), 510),
        ),
        0,
    ));
    assert_eq!(hv.frames.info(l1).unwrap().ty, PageType::L1);
    set_entry(&hv, DU, 17, D0, l1, gtf::PERMIT_ACCESS);
    let snapshot = hv.frames.info(f).unwrap();
    let h = host_va(0);
    let old = l1e(&hv, D0, h);

    let cases: &[(&str, GnttabMapGrantRef, i16)] = &[
        ("grant names another domain", map_req(DU, 12, h, RW_HOST), gntst::GENERAL_ERROR),
        ("writable map of a read-only grant", map_req(DU, 11, h, RW_HOST), gntst::GENERAL_ERROR),
        ("first ref past the table", map_req(DU, 512, h, RW_HOST), gntst::BAD_GNTREF),
        ("huge ref", map_req(DU, u32::MAX, h, RW_HOST), gntst::BAD_GNTREF),
        ("never-granted entry", map_req(DU, 100, h, RW_HOST), gntst::GENERAL_ERROR),
        ("transfer entry", map_req(DU, 14, h, RW_HOST), gntst::GENERAL_ERROR),
        ("sub-page entry", map_req(DU, 15, h, RO_HOST), gntst::GENERAL_ERROR),
        ("neither host nor device", map_req(DU, 10, h, gntmap::READONLY), gntst::BAD_GNTREF),
        ("no such domain", map_req(DomId(77), 10, h, RW_HOST), gntst::BAD_DOMAIN),
        ("DOMID_SELF", map_req(DomId::SELF, 10, h, RW_HOST), gntst::BAD_DOMAIN),
        ("frame the granter does not own", map_req(DU, 13, h, RW_HOST), gntst::BAD_PAGE),
        ("frame beyond RAM", map_req(DU, 16, h, RW_HOST), gntst::BAD_PAGE),
        ("writable map of a page table", map_req(DU, 17, h, RW_HOST), gntst::GENERAL_ERROR),
        ("non-canonical host address", map_req(DU, 10, 0x8000_0000_0000, RW_HOST), gntst::GENERAL_ERROR),
        (
            "host address in the hypervisor",
            map_req(DU, 10, 0xffff_8300_0000_0000, RW_HOST),
            gntst::GENERAL_ERROR,
        ),
        ("unmapped host address", map_req(DU, 10, 0x1000, RW_HOST), gntst::GENERAL_ERROR),
    ];
    for (what, req, want) in cases {
        let (r, out) = gnttab(&mut hv, D0, op::MAP_GRANT_REF, &[*req]);
        assert_eq!((r, out[0].status), (0, *want), "{what}");
        assert_eq!(out[0].handle, 0xdead, "{what}: no handle");
        for gref in 10..18 {
            let fl = flags(&hv, DU, gref);
            assert_eq!(fl & (gtf::READING | gtf::WRITING), 0, "{what}: ref {gref} left pinned");
        }
        assert_eq!(l1e(&hv, D0, h), old, "{what}: host entry untouched");
        assert_eq!(hv.frames.info(f).unwrap(), snapshot, "{what}: no references left behind");
        audit(&hv);
    }
    assert_eq!(hv.domains[&D0].grant.maptrack.live(), 0);
    // Read-only maps of a page table are fine.
    let m = map(&mut hv, D0, DU, 17, h, RO_HOST);
    assert_eq!(m.status, gntst::OKAY);
    // Mapping over a grant mapping would orphan it.
    assert_eq!(map(&mut hv, D0, DU, 10, h, RW_HOST).status, gntst::GENERAL_ERROR);
    assert_eq!(flags(&hv, DU, 10), gtf::PERMIT_ACCESS);
    // mmu_update cannot remove it either.
    run_as(&mut hv, D0);
    assert!(matches!(dispatch(&mut hv, nr::UPDATE_VA_MAPPING, [h, 0, 0, 0, 0], None), Hc::Ret(r) if r < 0));
    // A pinned entry serves only the domain that pinned it.
    assert_eq!(map(&mut hv, DU, DU, 17, host_va(1), RO_HOST).status, gntst::GENERAL_ERROR);
    audit(&hv);
}

#[test]
fn hostile_unmap_requests() {
    let mut hv = two_domains();
    let f = mfn_at(&hv, DU, grant_va(0));
    set_entry(&hv, DU, 10, D0, f, gtf::PERMIT_ACCESS);
    let h = host_va(0);
    let m = map(&mut hv, D0, DU, 10, h, RW_HOST);
    assert_eq!(m.status, gntst::OKAY);
    for bad in [m.handle + 1, 255, 256, 100_000, u32::MAX] {
        assert_eq!(unmap(&mut hv, D0, bad, h, 0), gntst::BAD_HANDLE, "handle {bad}");
    }
    // Another domain's handle space is its own.
    assert_eq!(unmap(&mut hv, DU, m.handle, h, 0), gntst::BAD_HANDLE);
    // Wrong address or bus address: refused, the mapping stays.
    assert_eq!(unmap(&mut hv, D0, m.handle, h + 0x1000, 0), gntst::GENERAL_ERROR);
    assert_eq!(unmap(&mut hv, D0, m.handle, h, f.addr() + 0x1000), gntst::GENERAL_ERROR);
    // No address at all: nothing to do, as in Xen.
    assert_eq!(unmap(&mut hv, D0, m.handle, 0, 0), gntst::OKAY);
    assert_eq!(mfn_at(&hv, D0, h), f);
    assert_eq!(flags(&hv, DU, 10), gtf::PERMIT_ACCESS | gtf::READING | gtf::WRITING);
    audit(&hv);
    assert_eq!(unmap(&mut hv, D0, m.handle, h, 0), gntst::OKAY);
    assert_eq!(unmap(&mut hv, D0, m.handle, h, 0), gntst::BAD_HANDLE, "double unmap");
    // The freed handle is reused and the stale copy cannot touch the new mapping.
    let m2 = map(&mut hv, D0, DU, 10, host_va(1), RO_HOST);
    assert_eq!(m2.handle, m.handle);
    assert_eq!(unmap(&mut hv, D0, m.handle, h, 0), gntst::GENERAL_ERROR);
    assert_eq!(unmap(&mut hv, D0, m2.handle, host_va(1), 0), gntst::OKAY);
    audit(&hv);
}

#[test]
fn demoted_table_does_not_strand_a_mapping() {
    // The grantee stops using the L1 that holds its grant entry as a page table (unhooks it
    // from the L2 and unpins it): the entry cannot be reached any more, so unmapping just
    // drops the references, and the frame holding the stale entry never validates again.
    let mut hv = two_domains();
    let f = mfn_at(&hv, D0, grant_va(0));
    set_entry(&hv, D0, 10, DU, f, gtf::PERMIT_ACCESS);
    let m = map(&mut hv, DU, D0, 10, host_va(0), RW_HOST);
    assert_eq!(m.status, gntst::OKAY);
    let loc = hv.domains[&DU].grant.maptrack.get(m.handle).unwrap().pte.unwrap();
    // Demote by hand: what an L2 update plus unpin would do to the table's type.
    let mem = hv.plat.mem.clone();
    let l4 = hv.domains[&DU].vcpus[0].kernel_l4;
    let l3 = pte::mfn(mem.read_pte(l4, pte::table_index(host_va(0), 4)));
    let l2 = pte::mfn(mem.read_pte(l3, pte::table_index(host_va(0), 3)));
    let slot = pte::table_index(host_va(0), 2);
    assert_eq!(pte::mfn(mem.read_pte(l2, slot)), loc.l1);
    let at = crate::mm::pagetable::EntryRef { table: l2, level: 2, idx: slot };
    let owners = crate::mm::pagetable::L1Owners::local(DU);
    crate::mm::pagetable::mod_entry(&mut hv.frames, &*mem, at, 0, false, owners).unwrap();
    // The bootstrap L1s are not pinned individually (only the L4 is): unhooking demotes it.
    assert!(!hv.frames.info(loc.l1).unwrap().validated);
    assert_eq!(unmap(&mut hv, DU, m.handle, host_va(0), 0), gntst::OKAY);
    assert_eq!(flags(&hv, D0, 10), gtf::PERMIT_ACCESS);
    assert_ne!(mem.read_pte(loc.l1, usize::from(loc.idx)) & pte::GNTTAB, 0, "stale entry left in place");
    assert_eq!(hv.frames.pin(&*mem, loc.l1, DU, 1), Err(Errno::EINVAL), "never a table again as is");
    hv.audit_frames().unwrap();
}

#[test]
fn copy_between_grants_and_frames() {
    let mut hv = two_domains();
    let fu = mfn_at(&hv, DU, grant_va(0));
    let f0 = mfn_at(&hv, D0, grant_va(0));
    let f0b = mfn_at(&hv, D0, grant_va(1));
    set_entry(&hv, DU, 20, D0, fu, gtf::PERMIT_ACCESS);
    set_entry(&hv, DU, 21, D0, fu, gtf::PERMIT_ACCESS | gtf::READONLY);
    hv.mem().write(fu.addr() + 100, b"from the domU");
    let snapshot = hv.frames.info(fu).unwrap();
    let gref = |g: u32, off: u16| GnttabCopyPtr::gref(GrantRef(g), DU, off);
    let mine = |m: Mfn, off: u16| GnttabCopyPtr::gmfn(m.0, DomId::SELF, off);
    let c = |source, dest, len, flags| GnttabCopy { source, dest, len, flags, status: 99, _pad: 0 };

    // gref -> gmfn.
    let st = copy(&mut hv, D0, c(gref(21, 100), mine(f0, 3000), 13, gntcopy::SOURCE_GREF));
    assert_eq!(st, gntst::OKAY);
    assert_eq!(&hv.plat.mem.frame(f0)[3000..3013], b"from the domU");
    // gmfn -> gref (writable grant), at the end of both pages.
    hv.mem().write(f0.addr() + 4000, &[0xab; 96]);
    let st = copy(&mut hv, D0, c(mine(f0, 4000), gref(20, 4000), 96, gntcopy::DEST_GREF));
    assert_eq!(st, gntst::OKAY);
    assert_eq!(&hv.plat.mem.frame(fu)[4000..4096], &[0xab; 96]);
    // Whole pages, and gmfn -> gmfn.
    let st = copy(&mut hv, D0, c(gref(21, 0), mine(f0b, 0), 4096, gntcopy::SOURCE_GREF));
    assert_eq!(st, gntst::OKAY);
    assert_eq!(hv.plat.mem.frame(f0b), hv.plat.mem.frame(fu));
    assert_eq!(copy(&mut hv, D0, c(mine(f0, 0), mine(f0b, 0), 16, 0)), gntst::OKAY);
    assert_eq!(hv.plat.mem.frame(f0b)[..16], hv.plat.mem.frame(f0)[..16]);
    // Copies leave no pin and no reference behind.
    assert_eq!(flags(&hv, DU, 20), gtf::PERMIT_ACCESS);
    assert_eq!(hv.frames.info(fu).unwrap(), snapshot);
    audit(&hv);

    let both = gntcopy::SOURCE_GREF | gntcopy::DEST_GREF;
    let cases: &[(&str, GnttabCopy, i16)] = &[
        (
            "source crosses the page",
            c(gref(21, 4000), mine(f0, 0), 97, gntcopy::SOURCE_GREF),
            gntst::BAD_COPY_ARG,
        ),
        (
            "dest crosses the page",
            c(gref(21, 0), mine(f0, 4095), 2, gntcopy::SOURCE_GREF),
            gntst::BAD_COPY_ARG,
        ),
        (
            "huge offsets",
            c(gref(21, u16::MAX), mine(f0, u16::MAX), u16::MAX, gntcopy::SOURCE_GREF),
            gntst::BAD_COPY_ARG,
        ),
        (
            "write through a read-only grant",
            c(mine(f0, 0), gref(21, 0), 8, gntcopy::DEST_GREF),
            gntst::GENERAL_ERROR,
        ),
        (
            "bad ref wins over bad bounds",
            c(gref(600, 4000), mine(f0, 0), 200, gntcopy::SOURCE_GREF),
            gntst::BAD_GNTREF,
        ),
        ("frame of another domain", c(mine(fu, 0), mine(f0, 0), 8, 0), gntst::BAD_PAGE),
        (
            "frame named with an explicit domid",
            c(GnttabCopyPtr::gmfn(f0.0, D0, 0), mine(f0b, 0), 8, 0),
            gntst::PERMISSION_DENIED,
        ),
        (
            "foreign frame by number",
            c(GnttabCopyPtr::gmfn(fu.0, DU, 0), mine(f0, 0), 8, 0),
            gntst::PERMISSION_DENIED,
        ),
        (
            "grant of an unknown domain",
            c(GnttabCopyPtr::gref(GrantRef(20), DomId(44), 0), mine(f0, 0), 8, gntcopy::SOURCE_GREF),
            gntst::BAD_DOMAIN,
        ),
        ("same grant on both sides", c(gref(20, 0), gref(20, 8), 8, both), gntst::OKAY),
    ];
    for (what, req, want) in cases {
        assert_eq!(copy(&mut hv, D0, *req), *want, "{what}");
        assert_eq!(flags(&hv, DU, 20) & (gtf::READING | gtf::WRITING), 0, "{what}");
        assert_eq!(flags(&hv, DU, 21) & (gtf::READING | gtf::WRITING), 0, "{what}");
        audit(&hv);
    }
    // The domU itself is not the grantee of its own grants.
    assert_eq!(copy(&mut hv, DU, c(gref(20, 0), mine(fu, 8), 8, gntcopy::SOURCE_GREF)), gntst::GENERAL_ERROR);
    // Copying into a page-table frame of one's own is refused.
    let l4 = hv.domains[&D0].vcpus[0].kernel_l4;
    assert_eq!(copy(&mut hv, D0, c(mine(f0, 0), mine(l4, 0), 8, 0)), gntst::GENERAL_ERROR);
    audit(&hv);
}

#[test]
fn revocation_is_blocked_while_mapped() {
    let mut hv = two_domains();
    let f = mfn_at(&hv, DU, grant_va(0));
    set_entry(&hv, DU, 10, D0, f, gtf::PERMIT_ACCESS);
    let m = map(&mut hv, D0, DU, 10, host_va(0), RW_HOST);
    assert_eq!(m.status, gntst::OKAY);
    assert!(!revoke(&hv, DU, 10), "in use: reading and writing are set");
    assert_eq!(flags(&hv, DU, 10), gtf::PERMIT_ACCESS | gtf::READING | gtf::WRITING);
    // A hostile granter rewrites the entry anyway (XSA-230): the mapping keeps the frame it
    // pinned, and clearing the hypervisor's bits does not release anything.
    let other = mfn_at(&hv, DU, grant_va(1));
    set_entry(&hv, DU, 10, D0, other, gtf::PERMIT_ACCESS);
    let again = map(&mut hv, D0, DU, 10, host_va(1), RO_HOST);
    assert_eq!((again.status, again.dev_bus_addr), (gntst::OKAY, f.addr()), "pinned frame, not the new one");
    assert_eq!(mfn_at(&hv, D0, host_va(1)), f);
    audit(&hv);
    assert_eq!(unmap(&mut hv, D0, again.handle, host_va(1), 0), gntst::OKAY);
    assert_eq!(unmap(&mut hv, D0, m.handle, host_va(0), 0), gntst::OKAY);
    assert_eq!(hv.domains[&DU].grant.pins(GrantRef(10)), Some((0, 0)));
    audit(&hv);
    // Properly granted again: revocable once unmapped.
    set_entry(&hv, DU, 10, D0, f, gtf::PERMIT_ACCESS);
    let m = map(&mut hv, D0, DU, 10, host_va(0), RO_HOST);
    assert!(!revoke(&hv, DU, 10));
    assert_eq!(unmap(&mut hv, D0, m.handle, host_va(0), 0), gntst::OKAY);
    assert!(revoke(&hv, DU, 10));
    assert_eq!(flags(&hv, DU, 10), 0);
    assert_eq!(map(&mut hv, D0, DU, 10, host_va(0), RO_HOST).status, gntst::GENERAL_ERROR, "revoked");
}

/// A writable use of an entry pinned only for reading re-checks the entry: a granter that
/// re-granted it to someone else, revoked it, or pointed it at another frame after the
/// read-only pin gives the old grantee no write access (issue 9; stricter than Xen 4.17,
/// which re-checks only `GTF_readonly` once pinned).
#[test]
fn a_writable_pin_of_a_read_pinned_entry_rechecks_the_grant() {
    let mut hv = two_domains();
    let f = mfn_at(&hv, DU, grant_va(0));
    let other = mfn_at(&hv, DU, grant_va(1));
    let pinned_flags = gtf::PERMIT_ACCESS | gtf::READING;
    for (what, domid, frame, fl) in [
        ("re-granted to another domain", DomId(7), f, pinned_flags),
        ("type cleared (revoked by a plain store)", D0, f, gtf::READING),
        ("pointed at another frame", D0, other, pinned_flags),
        ("made sub-page", D0, f, pinned_flags | gtf::SUB_PAGE),
    ] {
        set_entry(&hv, DU, 10, D0, f, gtf::PERMIT_ACCESS);
        let ro = map(&mut hv, D0, DU, 10, host_va(0), RO_HOST);
        assert_eq!(ro.status, gntst::OKAY, "{what}");
        set_entry(&hv, DU, 10, domid, frame, fl);
        let rw = map(&mut hv, D0, DU, 10, host_va(1), RW_HOST);
        assert_eq!(rw.status, gntst::GENERAL_ERROR, "{what}: no writable mapping");
        assert_eq!(l1e(&hv, D0, host_va(1)) & pte::GNTTAB, 0, "{what}");
        assert_eq!(flags(&hv, DU, 10) & gtf::WRITING, 0, "{what}: GTF_writing not left set");
        assert_eq!(hv.domains[&DU].grant.pins(GrantRef(10)), Some((1, 0)), "{what}");
        // Read-only uses still share the pin: the frame they hold was granted.
        let ro2 = map(&mut hv, D0, DU, 10, host_va(2), RO_HOST);
        assert_eq!((ro2.status, ro2.dev_bus_addr), (gntst::OKAY, f.addr()), "{what}");
        assert_eq!(unmap(&mut hv, D0, ro2.handle, host_va(2), 0), gntst::OKAY);
        assert_eq!(unmap(&mut hv, D0, ro.handle, host_va(0), 0), gntst::OKAY);
        audit(&hv);
    }
    // An entry still granted as it was pinned can be upgraded.
    set_entry(&hv, DU, 10, D0, f, gtf::PERMIT_ACCESS);
    let ro = map(&mut hv, D0, DU, 10, host_va(0), RO_HOST);
    let rw = map(&mut hv, D0, DU, 10, host_va(1), RW_HOST);
    assert_eq!((ro.status, rw.status), (gntst::OKAY, gntst::OKAY));
    assert_eq!(flags(&hv, DU, 10), gtf::PERMIT_ACCESS | gtf::READING | gtf::WRITING);
    assert_eq!(unmap(&mut hv, D0, rw.handle, host_va(1), 0), gntst::OKAY);
    assert_eq!(unmap(&mut hv, D0, ro.handle, host_va(0), 0), gntst::OKAY);
    audit(&hv);
}

/// `d` removes its own mapping of `va` (update_va_mapping to 0).
fn unmap_own(hv: &mut TestHv, d: DomId, va: u64) {
    run_as(hv, d);
    assert_eq!(dispatch(hv, nr::UPDATE_VA_MAPPING, [va, 0, 0, 0, 0], None), Hc::Ret(0));
}

fn mmuext(hv: &mut TestHv, d: DomId, cmd: u32, mfn: Mfn) -> i64 {
    run_as(hv, d);
    let o = MmuextOp { cmd, _pad: 0, arg1: mfn.0, arg2: 0 };
    hv.guest().write_obj(SCRATCH_VA, &o).unwrap();
    match dispatch(hv, nr::MMUEXT_OP, [SCRATCH_VA, 1, 0, u64::from(DomId::SELF.0), 0], None) {
        Hc::Ret(r) => r,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_freed_frame_stays_allocated_until_unmapped() {
    let mut hv = two_domains();
    let f = mfn_at(&hv, DU, grant_va(0));
    set_entry(&hv, DU, 10, D0, f, gtf::PERMIT_ACCESS);
    let m = map(&mut hv, D0, DU, 10, host_va(0), RW_HOST);
    assert_eq!(m.status, gntst::OKAY);
    // The domU drops its own mapping and gives the frame back (decrease_reservation).
    unmap_own(&mut hv, DU, grant_va(0));
    let tot = hv.frames.tot_pages(DU);
    let free = hv.frames.nr_free();
    let mem = hv.plat.mem.clone();
    hv.frames.remove_page(&*mem, DU, f).unwrap();
    let info = hv.frames.info(f).unwrap();
    assert_eq!((info.owner, info.allocated, info.count), (Owner::Domain(DU), false, 1));
    assert_eq!(hv.frames.tot_pages(DU), tot, "still charged to the granter");
    assert_eq!(hv.frames.nr_free(), free);
    audit(&hv);
    // dom0 keeps using it; unmapping frees it.
    run_as(&mut hv, D0);
    hv.guest().write(host_va(0), b"still mine").unwrap();
    assert_eq!(unmap(&mut hv, D0, m.handle, host_va(0), 0), gntst::OKAY);
    assert_eq!(hv.frames.owner(f), Some(Owner::Free));
    assert_eq!((hv.frames.tot_pages(DU), hv.frames.nr_free()), (tot - 1, free + 1));
    // A grant of a frame the granter no longer owns maps nothing.
    assert_eq!(map(&mut hv, D0, DU, 10, host_va(0), RW_HOST).status, gntst::BAD_PAGE);
    audit(&hv);
}

#[test]
fn a_writably_mapped_frame_cannot_become_a_page_table() {
    let mut hv = two_domains();
    let f = mfn_at(&hv, DU, grant_va(0));
    unmap_own(&mut hv, DU, grant_va(0));
    set_entry(&hv, DU, 10, D0, f, gtf::PERMIT_ACCESS);
    let m = map(&mut hv, D0, DU, 10, host_va(0), RW_HOST);
    assert_eq!(m.status, gntst::OKAY);
    assert_eq!(mmuext(&mut hv, DU, mmuext::PIN_L1_TABLE, f), Errno::EINVAL.to_ret());
    assert_eq!(hv.frames.info(f).unwrap().ty, PageType::Writable);
    assert_eq!(unmap(&mut hv, D0, m.handle, host_va(0), 0), gntst::OKAY);
    assert_eq!(mmuext(&mut hv, DU, mmuext::PIN_L1_TABLE, f), 0);
    // Now a table: only read-only grants of it can be mapped.
    assert_eq!(map(&mut hv, D0, DU, 10, host_va(0), RW_HOST).status, gntst::GENERAL_ERROR);
    let ro = map(&mut hv, D0, DU, 10, host_va(0), RO_HOST);
    assert_eq!(ro.status, gntst::OKAY);
    audit(&hv);
    assert_eq!(unmap(&mut hv, D0, ro.handle, host_va(0), 0), gntst::OKAY);
    assert_eq!(mmuext(&mut hv, DU, mmuext::UNPIN_TABLE, f), 0);
    audit(&hv);
}

/// Frames the destruction of `d` must give back: its own, its shared_info page and its
/// grant-table frames.
fn frames_of(hv: &TestHv, d: DomId) -> u64 {
    hv.frames.tot_pages(d) + 1 + u64::from(hv.domains[&d].grant.nr_frames())
}

#[test]
fn destroying_the_grantee_releases_its_mappings() {
    let mut hv = two_domains();
    let f = mfn_at(&hv, D0, grant_va(0));
    let g = mfn_at(&hv, D0, grant_va(1));
    set_entry(&hv, D0, 10, DU, f, gtf::PERMIT_ACCESS);
    set_entry(&hv, D0, 11, DU, g, gtf::PERMIT_ACCESS | gtf::READONLY);
    let (fi, gi) = (hv.frames.info(f).unwrap(), hv.frames.info(g).unwrap());
    assert_eq!(map(&mut hv, DU, D0, 10, host_va(0), RW_HOST).status, gntst::OKAY);
    assert_eq!(map(&mut hv, DU, D0, 10, 0, gntmap::DEVICE_MAP).status, gntst::OKAY);
    assert_eq!(map(&mut hv, DU, D0, 11, host_va(1), RO_HOST).status, gntst::OKAY);
    // The domU also maps one of its own grants.
    let own = mfn_at(&hv, DU, grant_va(0));
    set_entry(&hv, DU, 10, DU, own, gtf::PERMIT_ACCESS);
    assert_eq!(map(&mut hv, DU, DU, 10, host_va(2), RW_HOST).status, gntst::OKAY);
    audit(&hv);
    let expect_free = hv.frames.nr_free() + frames_of(&hv, DU);
    run_as(&mut hv, D0);
    crate::domain_lifecycle::destroy_domain(&mut hv, DU);
    assert!(!hv.domains.contains_key(&DU));
    assert_eq!(hv.frames.nr_free(), expect_free);
    assert_eq!(flags(&hv, D0, 10), gtf::PERMIT_ACCESS);
    assert_eq!(flags(&hv, D0, 11), gtf::PERMIT_ACCESS | gtf::READONLY);
    assert_eq!(hv.domains[&D0].grant.pins(GrantRef(10)), Some((0, 0)));
    assert_eq!((hv.frames.info(f).unwrap(), hv.frames.info(g).unwrap()), (fi, gi));
    assert!(revoke(&hv, D0, 10) && revoke(&hv, D0, 11));
    audit(&hv);
}

#[test]
fn destroying_the_granter_keeps_mapped_frames_until_unmapped() {
    let mut hv = two_domains();
    let f = mfn_at(&hv, DU, grant_va(0));
    let table0 = hv.domains[&DU].grant.frames()[0];
    set_entry(&hv, DU, 10, D0, f, gtf::PERMIT_ACCESS);
    // It also grants its own grant-table frame (a hypervisor frame lent to it).
    set_entry(&hv, DU, 11, D0, table0, gtf::PERMIT_ACCESS | gtf::READONLY);
    let m = map(&mut hv, D0, DU, 10, host_va(0), RW_HOST);
    let t = map(&mut hv, D0, DU, 11, host_va(1), RO_HOST);
    assert_eq!((m.status, t.status), (gntst::OKAY, gntst::OKAY));
    let expect_free = hv.frames.nr_free() + frames_of(&hv, DU);
    run_as(&mut hv, D0);
    crate::domain_lifecycle::destroy_domain(&mut hv, DU);
    // Only what dom0 still maps survives; the domain lingers, dying, until it goes.
    assert_eq!(hv.domains[&DU].state, DomainState::Dying);
    assert_eq!(hv.frames.tot_pages(DU), 1);
    assert_eq!(hv.frames.nr_free(), expect_free - 2);
    assert_eq!(hv.frames.owner(f), Some(Owner::Domain(DU)));
    assert_eq!(hv.frames.owner(table0), Some(Owner::Domain(DU)));
    audit(&hv);
    // Nothing new can be mapped or copied from a dying domain.
    assert_eq!(map(&mut hv, D0, DU, 10, host_va(2), RO_HOST).status, gntst::BAD_DOMAIN);
    // dom0 still uses the frame, then lets go: everything is returned and the domain is gone.
    run_as(&mut hv, D0);
    hv.guest().write(host_va(0), b"late").unwrap();
    assert_eq!(unmap(&mut hv, D0, t.handle, host_va(1), 0), gntst::OKAY);
    assert_eq!(hv.frames.owner(table0), Some(Owner::Free));
    assert!(hv.domains.contains_key(&DU));
    audit(&hv);
    assert_eq!(unmap(&mut hv, D0, m.handle, host_va(0), 0), gntst::OKAY);
    assert!(!hv.domains.contains_key(&DU), "reaped with its last frame");
    assert_eq!(hv.frames.nr_free(), expect_free);
    audit(&hv);
}

#[test]
fn destroying_both_sides_returns_all_memory() {
    let mut hv = two_domains();
    let f = mfn_at(&hv, DU, grant_va(0));
    let g = mfn_at(&hv, D0, grant_va(0));
    set_entry(&hv, DU, 10, D0, f, gtf::PERMIT_ACCESS);
    set_entry(&hv, D0, 10, DU, g, gtf::PERMIT_ACCESS);
    assert_eq!(map(&mut hv, D0, DU, 10, host_va(0), RW_HOST).status, gntst::OKAY);
    assert_eq!(map(&mut hv, DU, D0, 10, host_va(0), RW_HOST).status, gntst::OKAY);
    let expect_free = hv.frames.nr_free() + frames_of(&hv, DU) + frames_of(&hv, D0);
    crate::domain_lifecycle::destroy_domain(&mut hv, DU);
    crate::domain_lifecycle::destroy_domain(&mut hv, D0);
    assert!(hv.domains.is_empty());
    assert_eq!(hv.frames.nr_free(), expect_free);
    hv.frames.audit(hv.mem(), &[]).unwrap();
}

#[test]
fn growing_without_memory_changes_nothing() {
    let mut hv = two_domains();
    let mem = hv.plat.mem.clone();
    let mut hoard = vec![];
    while hv.frames.nr_free() > 2 {
        hoard.push(hv.frames.alloc_xen_frame(&*mem).unwrap());
    }
    let s = GnttabSetupTable {
        dom: DomId::SELF,
        nr_frames: 8,
        frame_list: SCRATCH_VA + 0x800,
        ..Default::default()
    };
    let (_, out) = gnttab(&mut hv, DU, op::SETUP_TABLE, &[s]);
    assert_eq!(out[0].status, gntst::GENERAL_ERROR);
    assert_eq!((hv.domains[&DU].grant.nr_frames(), hv.frames.nr_free()), (1, 2), "all or nothing");
    let (_, out) = gnttab(&mut hv, DU, op::SETUP_TABLE, &[GnttabSetupTable { nr_frames: 3, ..s }]);
    assert_eq!((out[0].status, hv.frames.nr_free()), (gntst::OKAY, 0));
    for f in hoard {
        hv.frames.free_frame(&*mem, f).unwrap();
    }
    audit(&hv);
}

#[test]
fn table_and_maptrack_exhaustion() {
    let mut hv = two_domains();
    let list_va = SCRATCH_VA + 0x800;
    let s = GnttabSetupTable {
        dom: DomId::SELF,
        nr_frames: MAX_GRANT_FRAMES,
        frame_list: list_va,
        ..Default::default()
    };
    let (_, out) = gnttab(&mut hv, DU, op::SETUP_TABLE, &[s]);
    assert_eq!(out[0].status, gntst::OKAY);
    let last = MAX_GRANT_FRAMES * 512 - 1;
    let f = mfn_at(&hv, DU, grant_va(0));
    set_entry(&hv, DU, last, D0, f, gtf::PERMIT_ACCESS | gtf::READONLY);
    assert_eq!(map(&mut hv, D0, DU, last, 0, gntmap::DEVICE_MAP | gntmap::READONLY).status, gntst::OKAY);
    assert_eq!(map(&mut hv, D0, DU, last + 1, 0, gntmap::DEVICE_MAP).status, gntst::BAD_GNTREF);
    let (_, out) =
        gnttab(&mut hv, DU, op::SETUP_TABLE, &[GnttabSetupTable { nr_frames: MAX_GRANT_FRAMES + 1, ..s }]);
    assert_eq!(out[0].status, gntst::GENERAL_ERROR);

    // Fill dom0's handle space with device mappings of one grant, then one more.
    let mem = hv.plat.mem.clone();
    let mut req = map_req(DU, last, 0, gntmap::DEVICE_MAP | gntmap::READONLY);
    let mut handles = vec![];
    for _ in 1..MAX_MAPTRACK {
        let mut r = req;
        GrantCtx { domains: &mut hv.domains, ft: &mut hv.frames, mem: &*mem }.map_grant_ref(D0, None, &mut r);
        assert_eq!(r.status, gntst::OKAY);
        handles.push(r.handle);
    }
    GrantCtx { domains: &mut hv.domains, ft: &mut hv.frames, mem: &*mem }.map_grant_ref(D0, None, &mut req);
    assert_eq!(req.status, gntst::NO_DEVICE_SPACE);
    assert_eq!(hv.domains[&DU].grant.pins(GrantRef(last)), Some((MAX_MAPTRACK, 0)));
    audit(&hv);
    for h in handles {
        let mut u = GnttabUnmapGrantRef { dev_bus_addr: f.addr(), handle: h, ..Default::default() };
        GrantCtx { domains: &mut hv.domains, ft: &mut hv.frames, mem: &*mem }.unmap_grant_ref(D0, &mut u);
        assert_eq!(u.status, gntst::OKAY);
    }
    assert_eq!(hv.domains[&DU].grant.pins(GrantRef(last)), Some((1, 0)));
    audit(&hv);
}

/// A domU's grant table and maptrack grow only within its hypervisor-heap quota (issue 9):
/// a hostile domU that grows its table to the maximum and maps its own grant over and over
/// gets `GNTST_no_device_space` once its quota is spent, while the hypervisor's heap use
/// for it stays within the quota and dom0 keeps mapping.
#[test]
fn a_domus_grant_state_is_bounded_by_its_heap_quota() {
    let mut hv = two_domains();
    let s = GnttabSetupTable {
        dom: DomId::SELF,
        nr_frames: MAX_GRANT_FRAMES,
        frame_list: SCRATCH_VA + 0x800,
        ..Default::default()
    };
    let (_, out) = gnttab(&mut hv, DU, op::SETUP_TABLE, &[s]);
    assert_eq!(out[0].status, gntst::OKAY);
    let quota = hv.domains[&DU].hv_mem;
    assert_eq!(quota.limit(), crate::domain::DOMU_HV_MEM);
    assert_eq!(quota.used(), hv.domains[&DU].grant.heap_bytes(), "the table is charged as it grows");
    // The domU grants a frame to itself and maps it (device mappings) until refused.
    let f = mfn_at(&hv, DU, grant_va(0));
    set_entry(&hv, DU, 10, DU, f, gtf::PERMIT_ACCESS | gtf::READONLY);
    let mem = hv.plat.mem.clone();
    let mut mapped = 0u32;
    loop {
        let mut r = map_req(DU, 10, 0, gntmap::DEVICE_MAP | gntmap::READONLY);
        GrantCtx { domains: &mut hv.domains, ft: &mut hv.frames, mem: &*mem }.map_grant_ref(DU, None, &mut r);
        if r.status != gntst::OKAY {
            assert_eq!(r.status, gntst::NO_DEVICE_SPACE);
            break;
        }
        mapped += 1;
        assert!(mapped < MAX_MAPTRACK, "the quota stops it before the handle space does");
    }
    let d = &hv.domains[&DU];
    assert!(mapped > 0 && mapped < MAX_MAPTRACK, "{mapped} mappings");
    assert_eq!(d.hv_mem.used(), d.grant.heap_bytes());
    assert!(d.hv_mem.used() <= d.hv_mem.limit());
    audit(&hv);
    // Others are untouched: dom0 maps the domU's grants as before.
    set_entry(&hv, DU, 11, D0, f, gtf::PERMIT_ACCESS | gtf::READONLY);
    let m = map(&mut hv, D0, DU, 11, 0, gntmap::DEVICE_MAP | gntmap::READONLY);
    assert_eq!(m.status, gntst::OKAY);
    // The domU's commitment goes back to the pool once it is gone for good.
    let (before, commitment) = (hv.hv_mem_pool.used(), hv.domains[&DU].hv_commitment);
    crate::domain_lifecycle::destroy_domain(&mut hv, DU);
    assert!(hv.domains.contains_key(&DU), "dom0 still maps one of its frames");
    assert_eq!(hv.hv_mem_pool.used(), before);
    assert_eq!(unmap(&mut hv, D0, m.handle, 0, f.addr()), gntst::OKAY);
    assert!(!hv.domains.contains_key(&DU));
    assert_eq!(hv.hv_mem_pool.used(), before - commitment);
}

/// `GNTTABOP_get_status_frames`, `get_version` and `set_version` as Xen 4.17 answers them for
/// a v1 table with v2 disabled (issue 11 item 8): one operation each, status frames only for
/// v2.
#[test]
fn version_and_status_frames_follow_xen() {
    let mut hv = two_domains();
    let sf =
        |dom, nr_frames| GnttabGetStatusFrames { nr_frames, dom, status: 99, frame_list: SCRATCH_VA + 0x800 };
    let (r, out) = gnttab(&mut hv, DU, op::GET_STATUS_FRAMES, &[sf(DomId::SELF, 0)]);
    assert_eq!((r, out[0].status), (0, gntst::OKAY));
    let (r, out) = gnttab(&mut hv, DU, op::GET_STATUS_FRAMES, &[sf(DomId::SELF, 1)]);
    assert_eq!((r, out[0].status), (0, gntst::GENERAL_ERROR), "a v1 table has no status frames");
    let (_, out) = gnttab(&mut hv, DU, op::GET_STATUS_FRAMES, &[sf(D0, 0)]);
    assert_eq!(out[0].status, gntst::PERMISSION_DENIED);
    let (_, out) = gnttab(&mut hv, DU, op::GET_STATUS_FRAMES, &[sf(DomId(77), 0)]);
    assert_eq!(out[0].status, gntst::BAD_DOMAIN);
    let (_, out) = gnttab(&mut hv, D0, op::GET_STATUS_FRAMES, &[sf(DU, 0)]);
    assert_eq!(out[0].status, gntst::OKAY);
    // get_status_frames takes exactly one operation, or -EINVAL; set_version and get_version
    // ignore the count and do the first (Xen 4.17's do_grant_table_op).
    assert_eq!(gnttab(&mut hv, DU, op::GET_STATUS_FRAMES, &[0u64, 0]).0, Errno::EINVAL.to_ret());
    let gv = GnttabGetVersion { dom: DomId::SELF, ..Default::default() };
    let (r, out) = gnttab(&mut hv, DU, op::GET_VERSION, &[gv, gv]);
    assert_eq!((r, out[0].version, out[1].version), (0, 1, 0), "one done, the second untouched");
    let v1 = GnttabSetVersion { version: 1 };
    assert_eq!(gnttab(&mut hv, DU, op::SET_VERSION, &[v1, GnttabSetVersion { version: 9 }]).0, 0);
    // An operation the guest cannot read is -EFAULT.
    run_as(&mut hv, DU);
    let r = dispatch(&mut hv, nr::GRANT_TABLE_OP, [u64::from(op::GET_STATUS_FRAMES), 0, 1, 0, 0], None);
    assert_eq!(r, Hc::Ret(Errno::EFAULT.to_ret()));
}

/// `GNTTABOP_unmap_and_replace` (issue 11 item 8): the grant mapping goes, the caller's own
/// entry for `new_addr` moves into its slot with its references, `new_addr` is left unmapped;
/// bad requests change nothing.
#[test]
fn unmap_and_replace_moves_the_callers_entry_into_the_mapping() {
    let mut hv = two_domains();
    let f = mfn_at(&hv, DU, grant_va(0));
    set_entry(&hv, DU, 10, D0, f, gtf::PERMIT_ACCESS);
    // dom0 maps the grant at host_va(0), then replaces it with its own page at host_va(1).
    let m = map(&mut hv, D0, DU, 10, host_va(0), RW_HOST);
    assert_eq!(m.status, gntst::OKAY);
    let own = mfn_at(&hv, D0, host_va(1));
    let own_e = l1e(&hv, D0, host_va(1));
    let before = hv.frames.info(own).unwrap();
    audit(&hv);
    let replace = |hv: &mut TestHv, host_addr, new_addr, handle| {
        let u = GnttabUnmapAndReplace { host_addr, new_addr, handle, ..Default::default() };
        let (r, out) = gnttab(hv, D0, op::UNMAP_AND_REPLACE, &[u]);
        assert_eq!(r, 0);
        out[0].status
    };
    // Bad: wrong handle, wrong address, new_addr on the mapping itself or unmapped.
    assert_eq!(replace(&mut hv, host_va(0), host_va(1), m.handle + 1), gntst::BAD_HANDLE);
    assert_eq!(replace(&mut hv, host_va(2), host_va(1), m.handle), gntst::GENERAL_ERROR);
    assert_eq!(replace(&mut hv, host_va(0), host_va(0), m.handle), gntst::GENERAL_ERROR);
    assert_eq!(replace(&mut hv, host_va(0), 0x7000_0000_0000, m.handle), gntst::GENERAL_ERROR);
    assert_eq!(l1e(&hv, D0, host_va(1)), own_e, "nothing moved");
    assert_eq!(hv.domains[&DU].grant.pins(GrantRef(10)), Some((0, 1)));
    audit(&hv);
    assert_eq!(replace(&mut hv, host_va(0), host_va(1), m.handle), gntst::OKAY);
    assert_eq!(l1e(&hv, D0, host_va(0)), own_e, "the entry moved into the mapping's slot");
    assert_eq!(l1e(&hv, D0, host_va(1)), 0);
    assert_eq!(mfn_at(&hv, D0, host_va(0)), own);
    assert_eq!(hv.frames.info(own).unwrap(), before, "its references moved with it");
    assert_eq!(hv.domains[&DU].grant.pins(GrantRef(10)), Some((0, 0)));
    assert_eq!(flags(&hv, DU, 10), gtf::PERMIT_ACCESS);
    assert_eq!(hv.domains[&D0].grant.maptrack.live(), 0);
    audit(&hv);
    // With new_addr 0 it is a plain unmap.
    let m = map(&mut hv, D0, DU, 10, host_va(2), RW_HOST);
    assert_eq!(replace(&mut hv, host_va(2), 0, m.handle), gntst::OKAY);
    assert_eq!(l1e(&hv, D0, host_va(2)), 0);
    audit(&hv);
}

#[test]
fn long_batches_continue() {
    use crate::hypercall::grant::MAP_BATCH;
    let mut hv = two_domains();
    run_as(&mut hv, D0);
    let n = MAP_BATCH + 3;
    let u = GnttabUnmapGrantRef { handle: 77, status: 55, ..Default::default() };
    for i in 0..u64::from(n) {
        hv.guest().write_elem(SCRATCH_VA, i, &u).unwrap();
    }
    let r = dispatch(
        &mut hv,
        nr::GRANT_TABLE_OP,
        [u64::from(op::UNMAP_GRANT_REF), SCRATCH_VA, u64::from(n), 0, 0],
        None,
    );
    let next = SCRATCH_VA + u64::from(MAP_BATCH) * 24;
    assert_eq!(r, Hc::Continue([u64::from(op::UNMAP_GRANT_REF), next, 3, 0, 0]));
    for i in 0..u64::from(n) {
        let got: GnttabUnmapGrantRef = hv.guest().read_elem(SCRATCH_VA, i).unwrap();
        let want = if i < u64::from(MAP_BATCH) { gntst::BAD_HANDLE } else { 55 };
        assert_eq!((got.status, got.handle), (want, 77), "op {i}");
    }
    assert_eq!(
        dispatch(&mut hv, nr::GRANT_TABLE_OP, [u64::from(op::UNMAP_GRANT_REF), next, 3, 0, 0], None),
        Hc::Ret(0)
    );
    // An unreadable element (past the end of the bootstrap mappings) stops the batch with
    // -EFAULT; the readable one before it was done.
    let at = BASE + 0x40_0000 - 24;
    hv.guest().write_obj(at, &u).unwrap();
    let r = dispatch(&mut hv, nr::GRANT_TABLE_OP, [u64::from(op::UNMAP_GRANT_REF), at, 2, 0, 0], None);
    assert_eq!(r, Hc::Ret(Errno::EFAULT.to_ret()));
    assert_eq!(hv.guest().read_obj::<GnttabUnmapGrantRef>(at).unwrap().status, gntst::BAD_HANDLE);
}

/// Random grant traffic between dom0 and the domU — polite and hostile grants, maps of every
/// kind, unmaps with right and wrong arguments, copies, revocations, the granter giving frames
/// back or turning them into page tables, destruction of either side — checked after every
/// step by the frame table's from-scratch audit (grant references included), by the rule that
/// no writable grant mapping ever points at a frame that is not `Writable`, and by the entry
/// flags matching the pins. At the end both domains go and every frame must be free.
mod proptests {
    use super::*;
    use proptest::prelude::*;

    const GREFS: core::ops::Range<u32> = 8..12;
    const POOL: u64 = 4;

    #[derive(Clone, Debug)]
    enum Op {
        /// `d` grants one of its frames (only if the entry is not in use, as a guest would).
        Grant {
            d: bool,
            gref: u8,
            frame: u8,
            ro: bool,
            to: u8,
        },
        /// `d` overwrites an entry with anything, in use or not.
        Clobber {
            d: bool,
            gref: u8,
            flags: u16,
            to: u8,
            frame: u8,
        },
        Map {
            d: bool,
            own: bool,
            gref: u8,
            host: u8,
            ro: bool,
            app: bool,
            kind: u8,
        },
        /// The usual pattern: `d` grants a frame to the other domain, which maps it.
        Share {
            d: bool,
            gref: u8,
            frame: u8,
            ro: bool,
            host: u8,
            kind: u8,
        },
        Unmap {
            pick: u8,
            how: u8,
        },
        Copy {
            d: bool,
            gref: u8,
            frame: u8,
            src_off: u16,
            dst_off: u16,
            len: u16,
            into_grant: bool,
        },
        Revoke {
            d: bool,
            gref: u8,
        },
        /// `d` unmaps one of its frames from itself and gives it back.
        Free {
            d: bool,
            frame: u8,
        },
        /// `d` maps one of its frames read-only and pins it as an L1 table.
        Pin {
            d: bool,
            frame: u8,
        },
        /// `d` unpins it and maps it writable again.
        Unpin {
            d: bool,
            frame: u8,
        },
        Destroy {
            d: bool,
        },
    }

    /// Copy offsets: mostly in the page, sometimes anywhere.
    fn offset() -> impl Strategy<Value = u16> {
        prop_oneof![4 => 0..3500u16, 1 => any::<u16>()]
    }

    fn op() -> impl Strategy<Value = Op> {
        let d = any::<bool>();
        prop_oneof![
            12 => (d, any::<u8>(), any::<u8>(), any::<bool>(), any::<u8>())
                .prop_map(|(d, gref, frame, ro, to)| Op::Grant { d, gref, frame, ro, to }),
            1 => (d, any::<u8>(), any::<u16>(), any::<u8>(), any::<u8>())
                .prop_map(|(d, gref, flags, to, frame)| Op::Clobber { d, gref, flags, to, frame }),
            8 => (d, prop::bool::weighted(0.15), any::<u8>(), any::<u8>(), any::<bool>(), any::<bool>(), any::<u8>())
                .prop_map(|(d, own, gref, host, ro, app, kind)| Op::Map { d, own, gref, host, ro, app, kind }),
            10 => (d, any::<u8>(), any::<u8>(), any::<bool>(), any::<u8>(), any::<u8>())
                .prop_map(|(d, gref, frame, ro, host, kind)| Op::Share { d, gref, frame, ro, host, kind }),
            10 => (any::<u8>(), any::<u8>()).prop_map(|(pick, how)| Op::Unmap { pick, how }),
            4 => (d, any::<u8>(), any::<u8>(), offset(), offset(), prop_oneof![3 => 0..600u16, 1 => 0..4200u16], any::<bool>())
                .prop_map(|(d, gref, frame, src_off, dst_off, len, into_grant)| Op::Copy { d, gref, frame, src_off, dst_off, len, into_grant }),
            3 => (d, any::<u8>()).prop_map(|(d, gref)| Op::Revoke { d, gref }),
            1 => (d, any::<u8>()).prop_map(|(d, frame)| Op::Free { d, frame }),
            2 => (d, any::<u8>()).prop_map(|(d, frame)| Op::Pin { d, frame }),
            1 => (d, any::<u8>()).prop_map(|(d, frame)| Op::Unpin { d, frame }),
            1 => d.prop_map(|d| Op::Destroy { d }),
        ]
    }

    struct World {
        hv: TestHv,
        /// Each domain's grantable frames (at `grant_va(i)`).
        pool: [[Mfn; POOL as usize]; 2],
        /// Entries a hostile write touched: their flags no longer say anything.
        clobbered: Vec<(DomId, u32)>,
    }

    fn dom(d: bool) -> DomId {
        if d {
            DU
        } else {
            D0
        }
    }

    fn gref_of(g: u8) -> u32 {
        GREFS.start + u32::from(g) % (GREFS.end - GREFS.start)
    }

    impl World {
        fn new() -> World {
            let hv = two_domains();
            let pool = [D0, DU].map(|d| core::array::from_fn(|i| mfn_at(&hv, d, grant_va(i as u64))));
            World { hv, pool, clobbered: Vec::new() }
        }

        fn alive(&self, d: DomId) -> bool {
            self.hv.domains.get(&d).is_some_and(|x| x.state != DomainState::Dying)
        }

        fn frame(&self, d: DomId, i: u8) -> (u64, Mfn) {
            let i = u64::from(i) % POOL;
            (grant_va(i), self.pool[usize::from(d == DU)][i as usize])
        }

        fn target(&self, d: DomId, to: u8) -> DomId {
            match to % 10 {
                0 => d,
                1 => DomId(5),
                _ => {
                    if d == D0 {
                        DU
                    } else {
                        D0
                    }
                }
            }
        }

        fn step(&mut self, op: &Op) {
            match *op {
                Op::Grant { d, gref, frame, ro, to } => {
                    let d = dom(d);
                    let g = gref_of(gref);
                    if !self.alive(d) || flags(&self.hv, d, g) & (gtf::READING | gtf::WRITING) != 0 {
                        return;
                    }
                    let (_, mfn) = self.frame(d, frame);
                    let fl = gtf::PERMIT_ACCESS | if ro { gtf::READONLY } else { 0 };
                    set_entry(&self.hv, d, g, self.target(d, to), mfn, fl);
                }
                Op::Clobber { d, gref, flags, to, frame } => {
                    let d = dom(d);
                    if !self.alive(d) {
                        return;
                    }
                    let g = gref_of(gref);
                    let other = if d == D0 { DU } else { D0 };
                    let (_, mfn) = self.frame(if frame & 1 == 0 { d } else { other }, frame >> 1);
                    set_entry(&self.hv, d, g, self.target(d, to), mfn, flags);
                    self.clobbered.push((d, g));
                }
                Op::Map { d, own, gref, host, ro, app, kind } => {
                    let me = dom(d);
                    if !self.alive(me) {
                        return;
                    }
                    let granter = if own {
                        me
                    } else if me == D0 {
                        DU
                    } else {
                        D0
                    };
                    let mut flags = match kind % 4 {
                        0 | 1 => gntmap::HOST_MAP,
                        2 => gntmap::DEVICE_MAP,
                        _ => gntmap::HOST_MAP | gntmap::DEVICE_MAP,
                    };
                    if ro {
                        flags |= gntmap::READONLY;
                    }
                    if app {
                        flags |= gntmap::APPLICATION_MAP;
                    }
                    let addr = if flags & gntmap::HOST_MAP != 0 { host_va(u64::from(host) % 4) } else { 0 };
                    let m = map(&mut self.hv, me, granter, gref_of(gref), addr, flags);
                    if m.status == gntst::OKAY && !ro {
                        assert_eq!(
                            self.hv.frames.info(Mfn::containing(m.dev_bus_addr)).unwrap().ty,
                            PageType::Writable
                        );
                    }
                }
                Op::Share { d, gref, frame, ro, host, kind } => {
                    // `to: 2` names the other domain.
                    self.step(&Op::Grant { d, gref, frame, ro, to: 2 });
                    let ro_map = ro || kind & 4 != 0;
                    self.step(&Op::Map {
                        d: !d,
                        own: false,
                        gref,
                        host,
                        ro: ro_map,
                        app: kind & 8 != 0,
                        kind,
                    });
                }
                Op::Unmap { pick, how } => {
                    let live: Vec<(DomId, u32, grant::Mapping)> = [D0, DU]
                        .into_iter()
                        .filter(|&d| self.alive(d))
                        .flat_map(|d| {
                            self.hv.domains[&d]
                                .grant
                                .maptrack
                                .iter()
                                .map(move |(h, m)| (d, h, *m))
                                .collect::<Vec<_>>()
                        })
                        .collect();
                    let Some(&(me, h, m)) = live.get(usize::from(pick) % live.len().max(1)) else {
                        if self.alive(D0) {
                            assert_eq!(
                                unmap(&mut self.hv, D0, u32::from(pick), host_va(0), 0),
                                gntst::BAD_HANDLE
                            );
                        }
                        return;
                    };
                    let (addr, bus) = match how % 6 {
                        0 => (m.host_addr + 0x1000, 0),
                        1 => (0, m.mfn.addr()),
                        2 => (m.host_addr, m.mfn.addr() + 0x1000),
                        _ => (m.host_addr, m.mfn.addr()),
                    };
                    let st = unmap(&mut self.hv, me, h, addr, bus);
                    let host_ok = addr == 0 || addr == m.host_addr || m.flags & gntmap::HOST_MAP == 0;
                    let bus_ok = bus == 0 || bus == m.mfn.addr();
                    let want = if host_ok && bus_ok { gntst::OKAY } else { gntst::GENERAL_ERROR };
                    assert_eq!(st, want, "{m:?} {addr:#x} {bus:#x}");
                }
                Op::Copy { d, gref, frame, src_off, dst_off, len, into_grant } => {
                    let me = dom(d);
                    if !self.alive(me) {
                        return;
                    }
                    let other = if me == D0 { DU } else { D0 };
                    let (_, mine) = self.frame(me, frame);
                    let g = GnttabCopyPtr::gref(GrantRef(gref_of(gref)), other, 0);
                    let f = GnttabCopyPtr::gmfn(mine.0, DomId::SELF, 0);
                    let (mut source, mut dest, flags) =
                        if into_grant { (f, g, gntcopy::DEST_GREF) } else { (g, f, gntcopy::SOURCE_GREF) };
                    source.offset = src_off;
                    dest.offset = dst_off;
                    let c = GnttabCopy { source, dest, len, flags, status: 0, _pad: 0 };
                    let st = copy(&mut self.hv, me, c);
                    if st == gntst::OKAY {
                        assert!(c.within_pages());
                    }
                }
                Op::Revoke { d, gref } => {
                    let d = dom(d);
                    if self.alive(d) {
                        revoke(&self.hv, d, gref_of(gref));
                    }
                }
                Op::Free { d, frame } => {
                    let d = dom(d);
                    if !self.alive(d) {
                        return;
                    }
                    let (va, mfn) = self.frame(d, frame);
                    run_as(&mut self.hv, d);
                    let _ = dispatch(&mut self.hv, nr::UPDATE_VA_MAPPING, [va, 0, 0, 0, 0], None);
                    let mem = self.hv.plat.mem.clone();
                    let _ = self.hv.frames.remove_page(&*mem, d, mfn);
                }
                Op::Pin { d, frame } => {
                    let d = dom(d);
                    if !self.alive(d) {
                        return;
                    }
                    let (va, mfn) = self.frame(d, frame);
                    run_as(&mut self.hv, d);
                    let ro = pte::make(mfn, pte::PRESENT | pte::USER | pte::ACCESSED);
                    let _ = dispatch(&mut self.hv, nr::UPDATE_VA_MAPPING, [va, ro, 0, 0, 0], None);
                    if mmuext(&mut self.hv, d, mmuext::PIN_L1_TABLE, mfn) == 0 {
                        // A table now: nobody may hold it writable through a grant.
                        for dd in self.hv.domains.values() {
                            for (_, m) in dd.grant.maptrack.iter() {
                                assert!(m.mfn != mfn || m.readonly(), "{m:?}");
                            }
                        }
                    }
                }
                Op::Unpin { d, frame } => {
                    let d = dom(d);
                    if !self.alive(d) {
                        return;
                    }
                    let (va, mfn) = self.frame(d, frame);
                    let _ = mmuext(&mut self.hv, d, mmuext::UNPIN_TABLE, mfn);
                    let rw = pte::make(mfn, pte::PRESENT | pte::RW | pte::USER | pte::ACCESSED);
                    let _ = dispatch(&mut self.hv, nr::UPDATE_VA_MAPPING, [va, rw, 0, 0, 0], None);
                }
                Op::Destroy { d } => {
                    let d = dom(d);
                    if self.alive(d) {
                        crate::domain_lifecycle::destroy_domain(&mut self.hv, d);
                    }
                }
            }
        }

        fn check(&self) {
            audit(&self.hv);
            let hv = &self.hv;
            for d in [D0, DU].into_iter().filter(|&d| self.alive(d)) {
                let t = &hv.domains[&d].grant;
                // Every grant entry in the host slots belongs to a live mapping of that domain.
                for i in 0..4 {
                    let e = l1e(hv, d, host_va(i));
                    if pte::is_present(e) && e & pte::GNTTAB != 0 {
                        let owner = t.maptrack.iter().find(|(_, m)| m.host_addr == host_va(i));
                        let (_, m) = owner.unwrap_or_else(|| panic!("orphan grant entry {e:#x} in d{}", d.0));
                        assert_eq!((pte::mfn(e), e & pte::RW == 0), (m.mfn, m.readonly()));
                        if e & pte::RW != 0 {
                            assert_eq!(hv.frames.info(m.mfn).unwrap().ty, PageType::Writable);
                        }
                    }
                }
                // Flags say what the pins are, unless the guest scribbled over them.
                for g in GREFS {
                    if self.clobbered.contains(&(d, g)) {
                        continue;
                    }
                    let (r, w) = t.pins(GrantRef(g)).unwrap();
                    let fl = flags(hv, d, g);
                    assert_eq!(fl & gtf::READING != 0, r + w > 0, "d{} ref {g}: {fl:#x} pins {r}/{w}", d.0);
                    assert_eq!(fl & gtf::WRITING != 0, w > 0, "d{} ref {g}: {fl:#x} pins {r}/{w}", d.0);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn random_grant_traffic_keeps_the_invariants(ops in prop::collection::vec(op(), 1..60), first_down in any::<bool>()) {
            let mut w = World::new();
            let free_at_boot = crate::testkit::FAKE_FRAMES - 16;
            w.check();
            for op in &ops {
                w.step(op);
                w.check();
            }
            let order = if first_down { [DU, D0] } else { [D0, DU] };
            for d in order {
                if w.alive(d) {
                    crate::domain_lifecycle::destroy_domain(&mut w.hv, d);
                }
                w.check();
            }
            prop_assert!(w.hv.domains.is_empty(), "left: {:?}", w.hv.domains.keys().collect::<Vec<_>>());
            prop_assert_eq!(w.hv.frames.nr_free(), free_at_boot);
            w.hv.frames.audit(w.hv.mem(), &[]).unwrap();
        }
    }
}
