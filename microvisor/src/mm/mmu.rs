//! The semantics of the PV memory-management hypercalls — `mmu_update`, `mmuext_op`,
//! `update_va_mapping` and the reservation part of `memory_op` — as functions over the frame
//! table and machine memory.
//!
//! The hypercall dispatcher copies the guest's request array in, calls these with a context
//! describing the calling vCPU, and copies results out. Nothing here touches the CPU: TLB
//! flushes the operations require come back as a [`Flush`], new base pointers as updated
//! context fields, and M2P writes go through the context's writer. Batches stop after a
//! caller-given budget so the dispatcher can create a continuation, and on an error report the
//! index of the failing request, as Xen does. A single update allocates nothing.

use super::frame_table::{FrameTable, PageType};
use super::pagetable::{self, EntryRef, L1Owners};
use super::tlb::Flush;
use super::{pte, MachineMemory};
use hypercall_abi::xen::{in_hypervisor_hole, is_canonical, mmu, mmuext, uvmf, MmuUpdate, MmuextOp};
use hypercall_abi::{DomId, Errno, Mfn, PAGE_SIZE};

/// The calling vCPU, as the dispatcher describes it.
pub struct MmuCtx<'a> {
    /// The calling domain.
    pub domid: DomId,
    /// The caller may act on other domains' memory (dom0).
    pub privileged: bool,
    /// The vCPU's kernel base table (`guest_table`), holding a general and an L4 type
    /// reference; `NEW_BASEPTR` replaces it.
    pub kernel_l4: Option<Mfn>,
    /// The vCPU's user base table (`guest_table_user`), likewise; `NEW_USER_BASEPTR`.
    pub user_l4: Option<Mfn>,
    /// Writes M2P entry `mfn` := `pfn`.
    pub set_m2p: &'a mut dyn FnMut(Mfn, u64),
}

/// Result of a batch (`mmu_update`, `mmuext_op`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Requests completed. On error this is the index of the failing request; without error
    /// and below the request count, the request or work budget ran out (Xen's preemption) and
    /// the rest needs a continuation.
    pub done: usize,
    pub result: Result<(), Errno>,
    /// Flush owed before the guest runs (also after an error).
    pub flush: Flush,
    /// `MMUEXT_FLUSH_CACHE[_GLOBAL]` was requested (and allowed): `wbinvd`.
    pub cache_flush: bool,
    /// `MMUEXT_SET_LDT` was requested with these validated `(base, entries)`.
    pub ldt: Option<(u64, u32)>,
}

impl BatchOutcome {
    fn new() -> BatchOutcome {
        BatchOutcome { done: 0, result: Ok(()), flush: Flush::None, cache_flush: false, ldt: None }
    }

    /// Records the result of request `i`; false if the batch must stop here: at an error, or
    /// preempted (`ERESTART` from the request, which is then redone by the continuation, or the
    /// budget spent by a request that completed).
    fn step(&mut self, ft: &FrameTable, i: usize, r: Result<(), Errno>) -> bool {
        match r {
            Ok(()) => {
                self.done = i + 1;
                !ft.preempt_pending()
            }
            Err(Errno::ERESTART) => {
                self.done = i;
                false
            }
            Err(e) => {
                self.done = i;
                self.result = Err(e);
                false
            }
        }
    }

    fn finish(mut self, ft: &mut FrameTable) -> BatchOutcome {
        if ft.take_flush_pending() {
            self.flush = self.flush.merge(Flush::All);
        }
        self
    }
}

/// Xen's `__addr_ok` for 64-bit PV: canonical and outside the hypervisor's hole.
fn addr_ok(va: u64) -> bool {
    is_canonical(va) && !in_hypervisor_hole(va)
}

/// Xen's `get_pg_owner` plus the XSM default policy: the domain whose pages a request may
/// map. Unprivileged callers may name only themselves (`DOMID_SELF`) or `DOMID_IO`.
fn get_pg_owner(ft: &FrameTable, ctx: &MmuCtx<'_>, domid: DomId) -> Result<DomId, Errno> {
    if domid == DomId::SELF {
        return Ok(ctx.domid);
    }
    if domid == ctx.domid {
        // Xen refuses a domain naming itself explicitly.
        return Err(Errno::ESRCH);
    }
    let d = match domid {
        DomId::IO => return Ok(DomId::IO),
        DomId::XEN => DomId::XEN,
        d if d.is_real() && ft.domain(d).is_some() => d,
        _ => return Err(Errno::ESRCH),
    };
    if !ctx.privileged {
        return Err(Errno::EPERM);
    }
    Ok(d)
}

/// `HYPERVISOR_mmu_update(reqs, count, done, foreigndom)`: up to `budget` (at least one) of
/// `reqs`. `foreigndom` bits 0..15 name the owner of the mapped pages, bits 16..31 (plus one)
/// the owner of the page tables.
pub fn mmu_update<M: MachineMemory>(
    ft: &mut FrameTable,
    mem: &M,
    ctx: &mut MmuCtx<'_>,
    reqs: &[MmuUpdate],
    foreigndom: u32,
    budget: usize,
) -> BatchOutcome {
    let mut out = BatchOutcome::new();
    let owners = match resolve_mmu_update_owners(ft, ctx, foreigndom) {
        Ok(o) => o,
        // Xen checks the caller's right to use the owner's pages with each request
        // (xsm_mmu_update): an empty batch naming an existing domain is no error.
        Err(Errno::EPERM) if reqs.is_empty() => return out.finish(ft),
        Err(e) => {
            out.result = Err(e);
            return out.finish(ft);
        }
    };
    if ft.drain_deferred(mem, ctx.domid).is_err() {
        return out.finish(ft);
    }
    for (i, req) in reqs.iter().take(budget.max(1)).enumerate() {
        let r = mmu_update_one(ft, mem, ctx, req, owners);
        if !out.step(ft, i, r) {
            break;
        }
    }
    out.finish(ft)
}

fn resolve_mmu_update_owners(ft: &FrameTable, ctx: &MmuCtx<'_>, foreigndom: u32) -> Result<L1Owners, Errno> {
    let pt_dom = foreigndom >> 16;
    let pt_owner = if pt_dom == 0 {
        ctx.domid
    } else {
        let d = DomId((pt_dom - 1) as u16);
        if !d.is_real() || ft.domain(d).is_none() {
            return Err(Errno::ESRCH);
        }
        if d != ctx.domid && !ctx.privileged {
            return Err(Errno::EPERM);
        }
        d
    };
    let pg_owner = get_pg_owner(ft, ctx, DomId(foreigndom as u16))?;
    Ok(L1Owners { l1e_owner: pt_owner, pg_owner, caller: ctx.domid })
}

/// One `mmu_update` request.
pub fn mmu_update_one<M: MachineMemory>(
    ft: &mut FrameTable,
    mem: &M,
    ctx: &mut MmuCtx<'_>,
    req: &MmuUpdate,
    owners: L1Owners,
) -> Result<(), Errno> {
    if is_pt_update(req) {
        return pt_update(ft, mem, req, owners);
    }
    match req.ptr & 7 {
        mmu::MACHPHYS_UPDATE => {
            if owners.l1e_owner != ctx.domid {
                return Err(Errno::EPERM);
            }
            // Only frames the named owner really owns (XSA-251).
            let mfn = Mfn::containing(req.ptr);
            ft.get_page(mfn, owners.pg_owner)?;
            (ctx.set_m2p)(mfn, req.val);
            ft.put_page(mfn);
            Ok(())
        }
        _ => Err(Errno::ENOSYS),
    }
}

/// True if `req` is one of `mmu_update`'s page-table commands (`NORMAL_PT_UPDATE`,
/// `PT_UPDATE_PRESERVE_AD`, `PT_UPDATE_NO_TRANSLATE`), which need nothing of the calling
/// vCPU's context but the owners ([`pt_update`]).
pub fn is_pt_update(req: &MmuUpdate) -> bool {
    matches!(req.ptr & 7, mmu::NORMAL_PT_UPDATE | mmu::PT_UPDATE_PRESERVE_AD | mmu::PT_UPDATE_NO_TRANSLATE)
}

/// One page-table command of `mmu_update` ([`is_pt_update`]): the entry `req.ptr` names, in a
/// frame of the page-table owner, becomes `req.val`. (Inlined into the batch's loop.)
#[inline(always)]
pub fn pt_update<M: MachineMemory>(
    ft: &mut FrameTable,
    mem: &M,
    req: &MmuUpdate,
    owners: L1Owners,
) -> Result<(), Errno> {
    debug_assert!(is_pt_update(req));
    let cmd = req.ptr & 7;
    let ptr = req.ptr - cmd;
    let table = Mfn::containing(ptr);
    let idx = ((ptr & (PAGE_SIZE as u64 - 1)) / 8) as usize;
    ft.get_page(table, owners.l1e_owner)?;
    let r = update_entry_at(ft, mem, table, idx, req.val, cmd == mmu::PT_UPDATE_PRESERVE_AD, owners);
    ft.put_page(table);
    r
}

/// Writes `val` into word `idx` of `table` (a frame of the page-table owner, referenced by
/// the caller): validated as an entry if `table` is a page table in use, stored as plain data
/// if it can be (or already is) writable, refused otherwise. (Inlined into the batch's loop
/// with [`pt_update`].)
#[inline(always)]
fn update_entry_at<M: MachineMemory>(
    ft: &mut FrameTable,
    mem: &M,
    table: Mfn,
    idx: usize,
    val: u64,
    preserve_ad: bool,
    owners: L1Owners,
) -> Result<(), Errno> {
    for level in 1..=4 {
        let ty = PageType::table(level).unwrap_or(PageType::None);
        if ft.is_live_type(table, ty) {
            if level > 1 && owners.pg_owner != owners.l1e_owner {
                return Err(Errno::EINVAL);
            }
            return pagetable::mod_entry(ft, mem, EntryRef { table, level, idx }, val, preserve_ad, owners);
        }
    }
    if ft.is_live_type(table, PageType::Writable) {
        mem.write_pte(table, idx, val);
        return Ok(());
    }
    if ft.info(table).is_some_and(|i| i.type_count != 0) {
        return Err(Errno::EINVAL);
    }
    ft.get_page_type(mem, table, PageType::Writable).map_err(|_| Errno::EINVAL)?;
    mem.write_pte(table, idx, val);
    ft.put_page_type(mem, table);
    Ok(())
}

/// `HYPERVISOR_mmuext_op(ops, count, done, foreigndom)`: up to `budget` (at least one) of
/// `ops`.
pub fn mmuext_op<M: MachineMemory>(
    ft: &mut FrameTable,
    mem: &M,
    ctx: &mut MmuCtx<'_>,
    ops: &[MmuextOp],
    foreigndom: DomId,
    budget: usize,
) -> BatchOutcome {
    let mut out = BatchOutcome::new();
    let pg_owner = match get_pg_owner(ft, ctx, foreigndom) {
        // DOMID_IO and DOMID_XEN are not PV domains with page tables.
        Ok(d) if !d.is_real() => Err(Errno::EINVAL),
        r => r,
    };
    let pg_owner = match pg_owner {
        Ok(d) => d,
        Err(e) => {
            out.result = Err(e);
            return out.finish(ft);
        }
    };
    if ft.drain_deferred(mem, ctx.domid).is_err() {
        return out.finish(ft);
    }
    for (i, op) in ops.iter().take(budget.max(1)).enumerate() {
        let r = mmuext_one(ft, mem, ctx, op, pg_owner, &mut out);
        if !out.step(ft, i, r) {
            break;
        }
    }
    out.finish(ft)
}

/// The flush a TLB command of `mmuext_op` asks for (`local`: on the caller's own behalf), or
/// `None` for every other command. One CPU runs every vCPU: the local, multi and all forms
/// are the same flush. The hypercall layer also answers a lone TLB command with it directly.
pub fn tlb_op_flush(op: &MmuextOp, local: bool) -> Option<Result<Flush, Errno>> {
    let flush = match op.cmd {
        mmuext::TLB_FLUSH_LOCAL | mmuext::TLB_FLUSH_MULTI | mmuext::TLB_FLUSH_ALL => Flush::All,
        mmuext::INVLPG_LOCAL | mmuext::INVLPG_MULTI | mmuext::INVLPG_ALL => {
            if local && !is_canonical(op.arg1) {
                return Some(Err(Errno::EINVAL));
            }
            Flush::Page(op.arg1)
        }
        _ => return None,
    };
    Some(if local { Ok(flush) } else { Err(Errno::EPERM) })
}

fn mmuext_one<M: MachineMemory>(
    ft: &mut FrameTable,
    mem: &M,
    ctx: &mut MmuCtx<'_>,
    op: &MmuextOp,
    pg_owner: DomId,
    out: &mut BatchOutcome,
) -> Result<(), Errno> {
    let local = pg_owner == ctx.domid;
    let mfn = Mfn(op.arg1);
    if let Some(flush) = tlb_op_flush(op, local) {
        out.flush = out.flush.merge(flush?);
        return Ok(());
    }
    match op.cmd {
        mmuext::PIN_L1_TABLE | mmuext::PIN_L2_TABLE | mmuext::PIN_L3_TABLE | mmuext::PIN_L4_TABLE => {
            ft.pin(mem, mfn, pg_owner, op.cmd - mmuext::PIN_L1_TABLE + 1)
        }
        mmuext::UNPIN_TABLE => ft.unpin(mem, mfn, pg_owner),
        mmuext::NEW_BASEPTR => {
            if !local {
                return Err(Errno::EPERM);
            }
            new_baseptr(ft, mem, ctx, mfn)
        }
        mmuext::NEW_USER_BASEPTR => {
            if !local {
                return Err(Errno::EPERM);
            }
            new_user_baseptr(ft, mem, ctx, mfn)
        }
        mmuext::FLUSH_CACHE | mmuext::FLUSH_CACHE_GLOBAL => {
            if !local {
                return Err(Errno::EPERM);
            }
            if !ft.cache_attrs_ok(ctx.domid) {
                return Err(if op.cmd == mmuext::FLUSH_CACHE { Errno::EACCES } else { Errno::EINVAL });
            }
            out.cache_flush = true;
            Ok(())
        }
        mmuext::SET_LDT => {
            if !local {
                return Err(Errno::EPERM);
            }
            let ents = op.arg2 as u32;
            let base = if ents != 0 { op.arg1 } else { 0 };
            if base & (PAGE_SIZE as u64 - 1) != 0 || !addr_ok(base) || ents > 8192 {
                return Err(Errno::EINVAL);
            }
            out.ldt = Some((base, ents));
            Ok(())
        }
        mmuext::CLEAR_PAGE => {
            ft.get_page_and_type(mem, mfn, pg_owner, PageType::Writable).map_err(|_| Errno::EINVAL)?;
            mem.zero_frame(mfn);
            ft.put_page_and_type(mem, mfn);
            Ok(())
        }
        mmuext::COPY_PAGE => {
            let src = Mfn(op.arg2);
            ft.get_page(src, pg_owner)?;
            if ft.get_page_and_type(mem, mfn, pg_owner, PageType::Writable).is_err() {
                ft.put_page(src);
                return Err(Errno::EINVAL);
            }
            mem.copy_frame(mfn, src);
            ft.put_page_and_type(mem, mfn);
            ft.put_page(src);
            Ok(())
        }
        mmuext::MARK_SUPER | mmuext::UNMARK_SUPER => Err(Errno::EOPNOTSUPP),
        _ => Err(Errno::ENOSYS),
    }
}

/// Xen's `new_guest_cr3`: `mfn` becomes the vCPU's kernel base table. It must be an L4 of the
/// caller; the old base's references are dropped after the new one's are taken. The
/// dispatcher reloads CR3 when `ctx.kernel_l4` changed (which flushes the TLB).
pub fn new_baseptr<M: MachineMemory>(
    ft: &mut FrameTable,
    mem: &M,
    ctx: &mut MmuCtx<'_>,
    mfn: Mfn,
) -> Result<(), Errno> {
    if ctx.kernel_l4 == Some(mfn) {
        return Ok(());
    }
    ft.get_page_and_type(mem, mfn, ctx.domid, PageType::L4)?;
    if let Some(old) = ctx.kernel_l4.replace(mfn) {
        ft.put_page_and_type(mem, old);
    }
    Ok(())
}

/// `MMUEXT_NEW_USER_BASEPTR`: `mfn` (0 = none) becomes the vCPU's user base table.
pub fn new_user_baseptr<M: MachineMemory>(
    ft: &mut FrameTable,
    mem: &M,
    ctx: &mut MmuCtx<'_>,
    mfn: Mfn,
) -> Result<(), Errno> {
    let new = (mfn.0 != 0).then_some(mfn);
    if ctx.user_l4 == new {
        return Ok(());
    }
    if let Some(m) = new {
        ft.get_page_and_type(mem, m, ctx.domid, PageType::L4)?;
    }
    if let Some(old) = core::mem::replace(&mut ctx.user_l4, new) {
        ft.put_page_and_type(mem, old);
    }
    Ok(())
}

/// Drops the references a vCPU's base tables hold (vCPU teardown; or pass them to
/// [`FrameTable::relinquish`]).
pub fn destroy_baseptrs<M: MachineMemory>(ft: &mut FrameTable, mem: &M, ctx: &mut MmuCtx<'_>) {
    if let Some(m) = ctx.kernel_l4.take() {
        ft.put_page_and_type(mem, m);
    }
    if let Some(m) = ctx.user_l4.take() {
        ft.put_page_and_type(mem, m);
    }
}

/// `HYPERVISOR_update_va_mapping(va, val, flags)`: sets the L1 entry that maps `va` in the
/// vCPU's kernel page tables, with the checks of `MMU_NORMAL_PT_UPDATE`. `flags` is
/// `UVMF_NONE | UVMF_TLB_FLUSH | UVMF_INVLPG` combined with `UVMF_LOCAL`, `UVMF_ALL` or a
/// vCPU-mask pointer (treated as all vCPUs).
pub fn update_va_mapping<M: MachineMemory>(
    ft: &mut FrameTable,
    mem: &M,
    ctx: &mut MmuCtx<'_>,
    va: u64,
    val: u64,
    flags: u64,
) -> Result<Flush, Errno> {
    update_va_mapping_otherdomain(ft, mem, ctx, va, val, flags, DomId::SELF)
}

/// `HYPERVISOR_update_va_mapping_otherdomain`: as [`update_va_mapping`] with the mapped
/// frame owned by `domid` (privileged callers, or `DOMID_IO`).
pub fn update_va_mapping_otherdomain<M: MachineMemory>(
    ft: &mut FrameTable,
    mem: &M,
    ctx: &mut MmuCtx<'_>,
    va: u64,
    val: u64,
    flags: u64,
    domid: DomId,
) -> Result<Flush, Errno> {
    let pg_owner = get_pg_owner(ft, ctx, domid)?;
    let owners = L1Owners { l1e_owner: ctx.domid, pg_owner, caller: ctx.domid };
    update_va_entry(ft, mem, ctx.kernel_l4, owners, va, val, flags)
}

/// `update_va_mapping` once the owners are known: the entry mapping `va` in the caller's
/// kernel page tables (`kernel_l4`) becomes `val`, and the flush `flags` ask for. Needs
/// nothing else of the calling vCPU (the hypercall's own-domain path calls it directly).
#[inline(always)]
pub fn update_va_entry<M: MachineMemory>(
    ft: &mut FrameTable,
    mem: &M,
    kernel_l4: Option<Mfn>,
    owners: L1Owners,
    va: u64,
    val: u64,
    flags: u64,
) -> Result<Flush, Errno> {
    let l1 = find_l1(ft, mem, kernel_l4, va)?;
    ft.get_page(l1, owners.l1e_owner)?;
    let r = if ft.is_live_type(l1, PageType::L1) {
        let at = EntryRef { table: l1, level: 1, idx: pte::table_index(va, 1) };
        pagetable::mod_entry(ft, mem, at, val, false, owners)
    } else {
        Err(Errno::EINVAL)
    };
    ft.put_page(l1);
    r?;
    // The target (local, all, or a vCPU mask) does not matter: one CPU runs every vCPU.
    let flush = match flags & uvmf::FLUSHTYPE_MASK {
        uvmf::TLB_FLUSH => Flush::All,
        uvmf::INVLPG => Flush::Page(va),
        _ => Flush::None,
    };
    Ok(if ft.take_flush_pending() { flush.merge(Flush::All) } else { flush })
}

/// The L1 table that maps `va` in the vCPU's kernel page tables (Xen's `map_guest_l1e`).
fn find_l1<M: MachineMemory>(
    ft: &FrameTable,
    mem: &M,
    kernel_l4: Option<Mfn>,
    va: u64,
) -> Result<Mfn, Errno> {
    if !addr_ok(va) {
        return Err(Errno::EINVAL);
    }
    let mut table = kernel_l4.ok_or(Errno::EINVAL)?;
    for level in (2..=4).rev() {
        if table >= ft.max_mfn() {
            return Err(Errno::EINVAL);
        }
        let e = mem.read_pte(table, pte::table_index(va, level));
        if e & (pte::PRESENT | pte::PSE) != pte::PRESENT {
            return Err(Errno::EINVAL);
        }
        table = pte::mfn(e);
    }
    if table >= ft.max_mfn() {
        return Err(Errno::EINVAL);
    }
    Ok(table)
}

// ---------------------------------------------------------------------------------------------
// memory_op reservations (XENMEM_increase_reservation, _decrease_reservation,
// _populate_physmap) for a PV domain, whose P2M is its own business.

/// Largest `extent_order` accepted by `decrease_reservation` (Xen's default `memop-max-order`
/// for domUs).
pub const MAX_EXTENT_ORDER: u32 = 9;

/// `XENMEM_increase_reservation`: allocates one extent per element of `out_mfns` for `d` and
/// stores their first frames there; their M2P entries are cleared. Returns the number done and
/// the error that stopped it (allocation beyond `max_pages` or out of memory). An extent of
/// `extent_order > 0` is `2^order` machine-contiguous frames.
pub fn increase_reservation<M: MachineMemory>(
    ft: &mut FrameTable,
    mem: &M,
    d: DomId,
    extent_order: u32,
    out_mfns: &mut [u64],
    set_m2p: &mut dyn FnMut(Mfn, u64),
) -> (usize, Result<(), Errno>) {
    for (i, slot) in out_mfns.iter_mut().enumerate() {
        match ft.alloc_domain_contiguous(mem, d, extent_order) {
            Ok(mfn) => {
                for j in 0..1u64 << extent_order {
                    set_m2p(Mfn(mfn.0 + j), hypercall_abi::xen::INVALID_P2M_ENTRY);
                }
                *slot = mfn.0;
            }
            Err(e) => return (i, Err(e)),
        }
    }
    (out_mfns.len(), Ok(()))
}

/// `XENMEM_populate_physmap` for a PV domain: allocates a frame for each pseudo-physical
/// frame in `gpfns`, records `M2P[mfn] = gpfn` and stores the frame numbers in `out_mfns`
/// (same length). Extents of `2^order` frames are machine-contiguous and fill
/// `gpfn .. gpfn + 2^order`.
pub fn populate_physmap<M: MachineMemory>(
    ft: &mut FrameTable,
    mem: &M,
    d: DomId,
    extent_order: u32,
    gpfns: &[u64],
    out_mfns: &mut [u64],
    set_m2p: &mut dyn FnMut(Mfn, u64),
) -> (usize, Result<(), Errno>) {
    for (i, (&gpfn, slot)) in gpfns.iter().zip(out_mfns.iter_mut()).enumerate() {
        match ft.alloc_domain_contiguous(mem, d, extent_order) {
            Ok(mfn) => {
                for j in 0..1u64 << extent_order {
                    set_m2p(Mfn(mfn.0 + j), gpfn.wrapping_add(j));
                }
                *slot = mfn.0;
            }
            Err(e) => return (i, Err(e)),
        }
    }
    (gpfns.len().min(out_mfns.len()), Ok(()))
}

/// `XENMEM_decrease_reservation` for a PV domain: `d` gives up each extent of `2^order`
/// frames starting at the machine frames in `gmfns` (pins and the allocation reference are
/// dropped; a frame still mapped somewhere is freed when unmapped). Stops at the first frame
/// `d` does not own.
pub fn decrease_reservation<M: MachineMemory>(
    ft: &mut FrameTable,
    mem: &M,
    d: DomId,
    extent_order: u32,
    gmfns: &[u64],
) -> (usize, Result<(), Errno>) {
    if extent_order > MAX_EXTENT_ORDER {
        return (0, Err(Errno::EINVAL));
    }
    for (i, &first) in gmfns.iter().enumerate() {
        for j in 0..1u64 << extent_order {
            let Some(m) = first.checked_add(j) else { return (i, Err(Errno::EINVAL)) };
            if let Err(e) = ft.remove_page(mem, d, Mfn(m)) {
                return (i, Err(e));
            }
        }
    }
    (gmfns.len(), Ok(()))
}

/// A small fake machine for the host tests of `mm`: frames 0..4 belong to the hypervisor,
/// 4..6 are M2P frames shared read-only, 6..8 are I/O, the rest is free RAM.
#[cfg(test)]
pub(crate) mod testkit {
    use super::*;
    use crate::mm::fake::FakeMemory;
    use crate::mm::frame_table::{ExternalRef, XenL4Slots};
    use crate::mm::pte::{make, ACCESSED, PRESENT, RW, USER};
    use std::collections::BTreeMap;
    use std::vec::Vec;

    pub const XEN_FRAMES: core::ops::Range<u64> = 0..4;
    pub const M2P_FRAMES: core::ops::Range<u64> = 4..6;
    pub const IO_FRAMES: core::ops::Range<u64> = 6..8;
    pub const FIRST_RAM: u64 = 8;
    /// The entry the hypervisor puts in L4 slot 256 of every guest L4 in these tests.
    pub const XEN_SLOT_256: u64 = 0x0000_0000_0000_1063;

    /// A read-only entry with the flags builders use.
    pub const RO: u64 = PRESENT | USER | ACCESSED;
    /// A writable entry.
    pub const RWF: u64 = PRESENT | RW | USER | ACCESSED;

    pub struct Machine {
        pub mem: FakeMemory,
        pub ft: FrameTable,
        pub m2p: BTreeMap<u64, u64>,
        /// Page-table work budget of each call made through [`Machine::run`] (`None`: not
        /// preemptible).
        pub budget: Option<u32>,
    }

    /// A vCPU of a domain, as the dispatcher would hold it.
    #[derive(Clone, Debug)]
    pub struct Guest {
        pub domid: DomId,
        pub privileged: bool,
        pub kernel_l4: Option<Mfn>,
        pub user_l4: Option<Mfn>,
    }

    /// A 4-level address space: `l4[0] -> l3[0] -> l2[0] -> l1`, `l1[i]` mapping `data[i]`
    /// writable for i in 0..4, and `l1[4..8]` mapping the four tables read-only.
    #[derive(Clone, Debug)]
    pub struct Space {
        pub l4: Mfn,
        pub l3: Mfn,
        pub l2: Mfn,
        pub l1: Mfn,
        pub data: Vec<Mfn>,
    }

    impl Machine {
        pub fn new(frames: u64) -> Machine {
            let mem = FakeMemory::new(frames, frames);
            let mut ft = FrameTable::new(Mfn(frames));
            ft.mark_io(Mfn(IO_FRAMES.start), Mfn(IO_FRAMES.end));
            for m in M2P_FRAMES {
                ft.share_xen_frame(Mfn(m), DomId::XEN, false).unwrap();
            }
            ft.release_to_free(Mfn(FIRST_RAM), Mfn(frames));
            let mut slots = XenL4Slots::default();
            slots.entries[0] = XEN_SLOT_256;
            slots.self_slot = Some((258, PRESENT | RW | ACCESSED));
            ft.set_xen_l4_slots(slots);
            Machine { mem, ft, m2p: BTreeMap::new(), budget: None }
        }

        pub fn guest(&mut self, d: u16, privileged: bool, max_pages: u64) -> Guest {
            self.ft.add_domain(DomId(d), max_pages, privileged).unwrap();
            Guest { domid: DomId(d), privileged, kernel_l4: None, user_l4: None }
        }

        pub fn alloc(&mut self, g: &Guest) -> Mfn {
            self.ft.alloc_domain_frame(&self.mem, g.domid).unwrap()
        }

        /// Runs `f` with an `MmuCtx` for `g`, then stores the vCPU's new base pointers.
        pub fn run<R>(
            &mut self,
            g: &mut Guest,
            f: impl FnOnce(&mut FrameTable, &FakeMemory, &mut MmuCtx<'_>) -> R,
        ) -> R {
            let Machine { mem, ft, m2p, budget } = self;
            let mut set = |mfn: Mfn, pfn: u64| {
                m2p.insert(mfn.0, pfn);
            };
            let mut ctx = MmuCtx {
                domid: g.domid,
                privileged: g.privileged,
                kernel_l4: g.kernel_l4,
                user_l4: g.user_l4,
                set_m2p: &mut set,
            };
            let started = budget.is_some_and(|b| ft.begin_preemptible_with(b));
            let r = f(ft, mem, &mut ctx);
            if started {
                ft.end_preemptible();
            }
            g.kernel_l4 = ctx.kernel_l4;
            g.user_l4 = ctx.user_l4;
            r
        }

        /// One `mmu_update` of `table[slot] = val`, returning its result.
        pub fn update(
            &mut self,
            g: &mut Guest,
            table: Mfn,
            slot: usize,
            val: u64,
            foreigndom: u32,
        ) -> Result<(), Errno> {
            let req = MmuUpdate { ptr: table.addr() + slot as u64 * 8, val };
            self.run(g, |ft, mem, ctx| mmu_update(ft, mem, ctx, &[req], foreigndom, 16)).result
        }

        pub fn ext(&mut self, g: &mut Guest, cmd: u32, arg1: u64, arg2: u64) -> BatchOutcome {
            let op = MmuextOp { cmd, _pad: 0, arg1, arg2 };
            self.run(g, |ft, mem, ctx| mmuext_op(ft, mem, ctx, &[op], DomId::SELF, 16))
        }

        /// Builds a [`Space`] by writing the frames directly, then pins the L4 and makes it
        /// the vCPU's base (validating the whole tree).
        pub fn build_space(&mut self, g: &mut Guest) -> Space {
            let l4 = self.alloc(g);
            let l3 = self.alloc(g);
            let l2 = self.alloc(g);
            let l1 = self.alloc(g);
            let data: Vec<Mfn> = (0..4).map(|_| self.alloc(g)).collect();
            self.mem.write_pte(l4, 0, make(l3, RWF));
            self.mem.write_pte(l3, 0, make(l2, RWF));
            self.mem.write_pte(l2, 0, make(l1, RWF));
            for (i, &m) in data.iter().enumerate() {
                self.mem.write_pte(l1, i, make(m, RWF));
            }
            for (i, &m) in [l4, l3, l2, l1].iter().enumerate() {
                self.mem.write_pte(l1, 4 + i, make(m, RO));
            }
            assert_eq!(self.ext(g, mmuext::PIN_L4_TABLE, l4.0, 0).result, Ok(()));
            assert_eq!(self.ext(g, mmuext::NEW_BASEPTR, l4.0, 0).result, Ok(()));
            Space { l4, l3, l2, l1, data }
        }

        /// The frame table's consistency check, with the vCPUs' base tables as external
        /// references.
        pub fn audit(&self, guests: &[&Guest]) {
            let mut ext = Vec::new();
            for g in guests {
                for m in [g.kernel_l4, g.user_l4].into_iter().flatten() {
                    ext.push(ExternalRef::root(m, g.domid));
                }
            }
            if let Err(e) = self.ft.audit(&self.mem, &ext) {
                panic!("audit failed: {e}");
            }
        }

        pub fn info(&self, m: Mfn) -> crate::mm::frame_table::FrameInfo {
            self.ft.info(m).unwrap()
        }
    }

    /// `DOMID_SELF` as the `foreigndom` argument of the update calls.
    pub const SELF: u32 = DomId::SELF.0 as u32;

    /// A machine with one domain (id 1, 40 pages) running on a freshly built, pinned space.
    pub fn one_guest() -> (Machine, Guest, Space) {
        let mut m = Machine::new(64);
        let mut g = m.guest(1, false, 40);
        let s = m.build_space(&mut g);
        m.audit(&[&g]);
        (m, g, s)
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;
    use crate::mm::frame_table::Owner;
    use crate::mm::pte::make;

    #[test]
    fn machphys_update_only_for_owned_frames() {
        let (mut m, mut g, s) = one_guest();
        let mut other = m.guest(2, false, 8);
        let foreign = m.alloc(&other);
        let req = |mfn: Mfn, pfn| MmuUpdate { ptr: mfn.addr() | mmu::MACHPHYS_UPDATE, val: pfn };
        let r = m.run(&mut g, |ft, mem, ctx| mmu_update(ft, mem, ctx, &[req(s.data[0], 7)], SELF, 4));
        assert_eq!((r.done, r.result), (1, Ok(())));
        assert_eq!(m.m2p.get(&s.data[0].0), Some(&7));
        // XSA-251: another domain's frame, a hypervisor frame, a frame beyond RAM.
        for bad in [foreign, Mfn(0), Mfn(M2P_FRAMES.start), Mfn(IO_FRAMES.start), Mfn(1 << 30)] {
            let r = m.run(&mut g, |ft, mem, ctx| mmu_update(ft, mem, ctx, &[req(bad, 9)], SELF, 4));
            assert_eq!((r.done, r.result), (0, Err(Errno::EINVAL)), "{bad:?}");
            assert_eq!(m.m2p.get(&bad.0), None);
        }
        // A privileged domain may update the M2P of a domain it names ...
        let mut d0 = m.guest(0, true, 4);
        let r = m.run(&mut d0, |ft, mem, ctx| mmu_update(ft, mem, ctx, &[req(foreign, 3)], 2, 4));
        assert_eq!(r.result, Ok(()));
        assert_eq!(m.m2p.get(&foreign.0), Some(&3));
        // ... but not while naming another domain as the page-table owner.
        let r = m.run(&mut d0, |ft, mem, ctx| mmu_update(ft, mem, ctx, &[req(foreign, 3)], (3 << 16) | 2, 4));
        assert_eq!(r.result, Err(Errno::EPERM));
        // An unprivileged domain may not name a foreign domain at all.
        let r = m.run(&mut other, |ft, mem, ctx| mmu_update(ft, mem, ctx, &[req(foreign, 3)], 1, 4));
        assert_eq!((r.done, r.result), (0, Err(Errno::EPERM)));
        m.audit(&[&g]);
    }

    #[test]
    fn foreigndom_resolution() {
        let (mut m, mut g, s) = one_guest();
        let val = make(s.data[0], RO);
        // Naming oneself explicitly is refused by Xen; unknown domains are ESRCH.
        assert_eq!(m.update(&mut g, s.l1, 9, val, 1), Err(Errno::ESRCH));
        assert_eq!(m.update(&mut g, s.l1, 9, val, 77), Err(Errno::ESRCH));
        assert_eq!(m.update(&mut g, s.l1, 9, val, (78 << 16) | SELF), Err(Errno::ESRCH));
        // DOMID_XEN needs privilege.
        assert_eq!(m.update(&mut g, s.l1, 9, val, u32::from(DomId::XEN.0)), Err(Errno::EPERM));
        // DOMID_IO is allowed, but RAM frames are not its.
        assert_eq!(m.update(&mut g, s.l1, 9, val, u32::from(DomId::IO.0)), Err(Errno::EBUSY));
        m.audit(&[&g]);
    }

    #[test]
    fn invlpg_of_a_non_canonical_address_is_einval() {
        let (mut m, mut g, _s) = one_guest();
        for cmd in [mmuext::INVLPG_LOCAL, mmuext::INVLPG_ALL, mmuext::INVLPG_MULTI] {
            let r = m.ext(&mut g, cmd, 0x0000_8000_0000_0000, 0);
            assert_eq!((r.done, r.result), (0, Err(Errno::EINVAL)));
            assert_eq!(r.flush, Flush::None);
        }
        assert_eq!(m.ext(&mut g, mmuext::INVLPG_LOCAL, 0x4000, 0).flush, Flush::Page(0x4000));
        assert_eq!(m.ext(&mut g, mmuext::INVLPG_ALL, 0x4000, 0).flush, Flush::Page(0x4000));
        assert_eq!(m.ext(&mut g, mmuext::TLB_FLUSH_LOCAL, 0, 0).flush, Flush::All);
        assert_eq!(m.ext(&mut g, mmuext::TLB_FLUSH_ALL, 0, 0).flush, Flush::All);
        let ops = [
            MmuextOp { cmd: mmuext::INVLPG_LOCAL, _pad: 0, arg1: 0x1000, arg2: 0 },
            MmuextOp { cmd: mmuext::INVLPG_LOCAL, _pad: 0, arg1: 0x2000, arg2: 0 },
        ];
        let r = m.run(&mut g, |ft, mem, ctx| mmuext_op(ft, mem, ctx, &ops, DomId::SELF, 8));
        assert_eq!((r.done, r.flush), (2, Flush::All));
    }

    #[test]
    fn new_baseptr_needs_an_l4_of_the_caller() {
        let (mut m, mut g, s) = one_guest();
        // An L1 in use, an L3 in use, a writable data frame: none can be an L4.
        for bad in [s.l1, s.l3, s.data[0]] {
            let r = m.ext(&mut g, mmuext::NEW_BASEPTR, bad.0, 0);
            assert_eq!(r.result, Err(Errno::EINVAL), "{bad:?}");
            assert_eq!(g.kernel_l4, Some(s.l4));
        }
        let mut other = m.guest(2, false, 8);
        let foreign = m.alloc(&other);
        assert_eq!(m.ext(&mut g, mmuext::NEW_BASEPTR, foreign.0, 0).result, Err(Errno::EINVAL));
        assert_eq!(m.ext(&mut g, mmuext::NEW_BASEPTR, 1 << 40, 0).result, Err(Errno::EINVAL));
        m.audit(&[&g]);

        // A fresh zeroed frame is a valid (empty) L4; the old base keeps only its pin.
        let fresh = m.alloc(&g);
        let before = m.info(s.l4);
        assert_eq!(m.ext(&mut g, mmuext::NEW_BASEPTR, fresh.0, 0).result, Ok(()));
        assert_eq!(g.kernel_l4, Some(fresh));
        let after = m.info(s.l4);
        assert_eq!((after.count, after.type_count), (before.count - 1, before.type_count - 1));
        assert_eq!(m.info(fresh).ty, PageType::L4);
        // The hypervisor's slots were installed.
        assert_eq!(m.mem.read_pte(fresh, 256), XEN_SLOT_256);
        assert_eq!(m.mem.read_pte(fresh, 258), make(fresh, pte::PRESENT | pte::RW | pte::ACCESSED));
        m.audit(&[&g]);

        // Someone else's vCPU context cannot be changed with a foreign domain.
        let op = MmuextOp { cmd: mmuext::NEW_BASEPTR, _pad: 0, arg1: s.l4.0, arg2: 0 };
        let mut dom0 = m.guest(0, true, 4);
        let r = m.run(&mut dom0, |ft, mem, ctx| mmuext_op(ft, mem, ctx, &[op], DomId(1), 8));
        assert_eq!(r.result, Err(Errno::EPERM));
        let r = m.run(&mut other, |ft, mem, ctx| mmuext_op(ft, mem, ctx, &[op], DomId(1), 8));
        assert_eq!(r.result, Err(Errno::EPERM));

        // Back to the original, then a user base, then none.
        assert_eq!(m.ext(&mut g, mmuext::NEW_BASEPTR, s.l4.0, 0).result, Ok(()));
        assert_eq!(m.info(fresh).type_count, 0);
        assert_eq!(m.ext(&mut g, mmuext::NEW_USER_BASEPTR, fresh.0, 0).result, Ok(()));
        assert_eq!(g.user_l4, Some(fresh));
        assert_eq!(m.ext(&mut g, mmuext::NEW_USER_BASEPTR, s.l2.0, 0).result, Err(Errno::EINVAL));
        m.audit(&[&g]);
        assert_eq!(m.ext(&mut g, mmuext::NEW_USER_BASEPTR, 0, 0).result, Ok(()));
        assert_eq!(g.user_l4, None);
        assert_eq!(m.info(fresh).type_count, 0);
        m.audit(&[&g]);
    }

    #[test]
    fn batches_stop_at_the_budget_and_report_the_failing_index() {
        let (mut m, mut g, s) = one_guest();
        let reqs: Vec<MmuUpdate> =
            (0..5).map(|i| MmuUpdate { ptr: s.l1.addr() + (16 + i) * 8, val: make(s.data[0], RO) }).collect();
        let r = m.run(&mut g, |ft, mem, ctx| mmu_update(ft, mem, ctx, &reqs, SELF, 2));
        assert_eq!((r.done, r.result), (2, Ok(())));
        let r = m.run(&mut g, |ft, mem, ctx| mmu_update(ft, mem, ctx, &reqs[2..], SELF, 0));
        assert_eq!((r.done, r.result), (1, Ok(())), "a zero budget still makes progress");
        let mut bad = reqs.clone();
        bad[3].val = make(s.l2, RWF);
        let r = m.run(&mut g, |ft, mem, ctx| mmu_update(ft, mem, ctx, &bad, SELF, 100));
        assert_eq!((r.done, r.result), (3, Err(Errno::EBUSY)));
        let unknown = [MmuUpdate { ptr: s.l1.addr() | 5, val: 0 }];
        let r = m.run(&mut g, |ft, mem, ctx| mmu_update(ft, mem, ctx, &unknown, SELF, 1));
        assert_eq!(r.result, Err(Errno::ENOSYS));
        let ops = [
            MmuextOp { cmd: mmuext::TLB_FLUSH_LOCAL, _pad: 0, arg1: 0, arg2: 0 },
            MmuextOp { cmd: 99, _pad: 0, arg1: 0, arg2: 0 },
        ];
        let r = m.run(&mut g, |ft, mem, ctx| mmuext_op(ft, mem, ctx, &ops, DomId::SELF, 8));
        assert_eq!((r.done, r.result, r.flush), (1, Err(Errno::ENOSYS), Flush::All));
        assert_eq!(m.ext(&mut g, mmuext::MARK_SUPER, 0, 0).result, Err(Errno::EOPNOTSUPP));
        m.audit(&[&g]);
    }

    #[test]
    fn writes_to_data_frames_and_refusals() {
        let (mut m, mut g, s) = one_guest();
        // A data frame that is mapped writable takes plain stores.
        assert_eq!(m.update(&mut g, s.data[1], 3, 0xdead_beef, SELF), Ok(()));
        assert_eq!(m.mem.read_pte(s.data[1], 3), 0xdead_beef);
        // An unreferenced frame becomes writable for the store and stays untyped after.
        let f = m.alloc(&g);
        assert_eq!(m.update(&mut g, f, 0, 0x1234, SELF), Ok(()));
        assert_eq!(m.mem.read_pte(f, 0), 0x1234);
        assert_eq!(m.info(f).type_count, 0);
        // Another domain's table, a hypervisor frame: EINVAL.
        let mut other = m.guest(2, false, 8);
        let os = m.alloc(&other);
        assert_eq!(m.update(&mut g, os, 0, 1, SELF), Err(Errno::EINVAL));
        assert_eq!(m.update(&mut g, Mfn(M2P_FRAMES.start), 0, 1, SELF), Err(Errno::EINVAL));
        assert_eq!(m.update(&mut other, s.l1, 0, 0, SELF), Err(Errno::EINVAL));
        m.audit(&[&g]);
    }

    #[test]
    fn clear_and_copy_page_need_writable_frames_of_the_caller() {
        let (mut m, mut g, s) = one_guest();
        m.mem.write_pte(s.data[2], 7, 77);
        assert_eq!(m.ext(&mut g, mmuext::COPY_PAGE, s.data[3].0, s.data[2].0).result, Ok(()));
        assert_eq!(m.mem.read_pte(s.data[3], 7), 77);
        assert_eq!(m.ext(&mut g, mmuext::CLEAR_PAGE, s.data[3].0, 0).result, Ok(()));
        assert_eq!(m.mem.read_pte(s.data[3], 7), 0);
        // Page tables can be read (copied from) but not written.
        assert_eq!(m.ext(&mut g, mmuext::CLEAR_PAGE, s.l1.0, 0).result, Err(Errno::EINVAL));
        assert_eq!(m.ext(&mut g, mmuext::COPY_PAGE, s.l2.0, s.data[0].0).result, Err(Errno::EINVAL));
        assert_eq!(m.ext(&mut g, mmuext::COPY_PAGE, s.data[0].0, s.l1.0).result, Ok(()));
        let other = m.guest(2, false, 8);
        let os = m.alloc(&other);
        assert_eq!(m.ext(&mut g, mmuext::CLEAR_PAGE, os.0, 0).result, Err(Errno::EINVAL));
        assert_eq!(m.ext(&mut g, mmuext::COPY_PAGE, s.data[0].0, os.0).result, Err(Errno::EINVAL));
        assert_eq!(m.ext(&mut g, mmuext::CLEAR_PAGE, 0, 0).result, Err(Errno::EINVAL));
        m.audit(&[&g]);
    }

    #[test]
    fn cache_flush_and_ldt() {
        let (mut m, mut g, _s) = one_guest();
        assert_eq!(m.ext(&mut g, mmuext::FLUSH_CACHE, 0, 0).result, Err(Errno::EACCES));
        let mut d0 = m.guest(0, true, 4);
        let r = m.ext(&mut d0, mmuext::FLUSH_CACHE, 0, 0);
        assert!(r.result.is_ok() && r.cache_flush);
        let r = m.ext(&mut g, mmuext::SET_LDT, 0x10_0000, 16);
        assert_eq!((r.result, r.ldt), (Ok(()), Some((0x10_0000, 16))));
        assert_eq!(m.ext(&mut g, mmuext::SET_LDT, 0x10_0010, 16).result, Err(Errno::EINVAL));
        assert_eq!(m.ext(&mut g, mmuext::SET_LDT, 0xffff_8000_0000_0000, 1).result, Err(Errno::EINVAL));
        assert_eq!(m.ext(&mut g, mmuext::SET_LDT, 0x10_0000, 8193).result, Err(Errno::EINVAL));
        assert_eq!(m.ext(&mut g, mmuext::SET_LDT, 0x123, 0).ldt, Some((0, 0)));
    }

    #[test]
    fn update_va_mapping_walks_the_kernel_tables() {
        let (mut m, mut g, s) = one_guest();
        let f = m.alloc(&g);
        let va = 10 * 4096;
        let r = m.run(&mut g, |ft, mem, ctx| update_va_mapping(ft, mem, ctx, va, make(f, RWF), uvmf::INVLPG));
        assert_eq!(r, Ok(Flush::Page(va)));
        assert_eq!(pte::mfn(m.mem.read_pte(s.l1, 10)), f);
        assert_eq!(m.info(f).ty, PageType::Writable);
        let r =
            m.run(&mut g, |ft, mem, ctx| update_va_mapping(ft, mem, ctx, va, 0, uvmf::TLB_FLUSH | uvmf::ALL));
        assert_eq!(r, Ok(Flush::All));
        assert_eq!(m.info(f).type_count, 0);
        let r = m.run(&mut g, |ft, mem, ctx| update_va_mapping(ft, mem, ctx, va, 0, uvmf::TLB_FLUSH));
        assert_eq!(r, Ok(Flush::All));
        // Unmapped (no L3 at L4 slot 1), non-canonical, in the hypervisor hole.
        for bad in [1u64 << 39, 0x0000_8000_0000_0000, 0xffff_8000_0000_1000] {
            let r = m.run(&mut g, |ft, mem, ctx| update_va_mapping(ft, mem, ctx, bad, 0, uvmf::INVLPG));
            assert_eq!(r, Err(Errno::EINVAL), "{bad:#x}");
        }
        // The rules of mmu_update apply: the L2 cannot be mapped writable.
        let r = m.run(&mut g, |ft, mem, ctx| update_va_mapping(ft, mem, ctx, va, make(s.l2, RWF), 0));
        assert_eq!(r, Err(Errno::EBUSY));
        // A linear L2 entry makes the walk end at an L2: not an L1.
        assert_eq!(m.update(&mut g, s.l2, 1, make(s.l2, RO), SELF), Ok(()));
        let r = m.run(&mut g, |ft, mem, ctx| update_va_mapping(ft, mem, ctx, (1 << 21) | 0x3000, 0, 0));
        assert_eq!(r, Err(Errno::EINVAL));
        // No kernel base at all.
        let mut other = m.guest(2, false, 8);
        let r = m.run(&mut other, |ft, mem, ctx| update_va_mapping(ft, mem, ctx, va, 0, 0));
        assert_eq!(r, Err(Errno::EINVAL));
        m.audit(&[&g]);
    }

    #[test]
    fn reservations_follow_max_pages() {
        let mut m = Machine::new(64);
        let g = m.guest(1, false, 3);
        let mut out = [0u64; 5];
        let mut sets = Vec::new();
        let (done, r) = {
            let Machine { ft, mem, .. } = &mut m;
            populate_physmap(ft, mem, g.domid, 0, &[10, 11, 12, 13, 14], &mut out, &mut |mf, pf| {
                sets.push((mf, pf))
            })
        };
        assert_eq!((done, r), (3, Err(Errno::ENOMEM)));
        assert_eq!(sets.len(), 3);
        assert_eq!(sets[1], (Mfn(out[1]), 11));
        assert_eq!(m.ft.tot_pages(g.domid), 3);
        assert!(out[..3].iter().all(|&f| m.ft.owner(Mfn(f)) == Some(Owner::Domain(g.domid))));

        // Give two back (one as an order-0 extent each), then one bad frame stops the batch.
        let (done, r) = decrease_reservation(&mut m.ft, &m.mem, g.domid, 0, &[out[0], out[1], 0]);
        assert_eq!((done, r), (2, Err(Errno::EINVAL)));
        assert_eq!(m.ft.tot_pages(g.domid), 1);
        let mut more = [0u64; 2];
        let (done, r) = increase_reservation(&mut m.ft, &m.mem, g.domid, 0, &mut more, &mut |_, p| {
            assert_eq!(p, hypercall_abi::xen::INVALID_P2M_ENTRY)
        });
        assert_eq!((done, r), (2, Ok(())));
        assert_eq!(m.ft.tot_pages(g.domid), 3);
        let (done, r) = increase_reservation(&mut m.ft, &m.mem, g.domid, 1, &mut more, &mut |_, _| {});
        assert_eq!((done, r), (0, Err(Errno::ENOMEM)));
        let (done, r) = decrease_reservation(&mut m.ft, &m.mem, g.domid, 10, &[out[2]]);
        assert_eq!((done, r), (0, Err(Errno::EINVAL)));
        m.ft.audit(&m.mem, &[]).unwrap();
    }

    #[test]
    fn decrease_reservation_of_a_mapped_frame_frees_it_on_unmap() {
        let (mut m, mut g, s) = one_guest();
        let before = m.ft.nr_free();
        let (done, r) = decrease_reservation(&mut m.ft, &m.mem, g.domid, 0, &[s.data[0].0]);
        assert_eq!((done, r), (1, Ok(())));
        // Still mapped by the L1: still owned, still counted.
        assert_eq!(m.ft.owner(s.data[0]), Some(Owner::Domain(g.domid)));
        assert!(!m.info(s.data[0]).allocated);
        m.audit(&[&g]);
        assert_eq!(m.update(&mut g, s.l1, 0, 0, SELF), Ok(()));
        assert_eq!(m.ft.owner(s.data[0]), Some(Owner::Free));
        assert_eq!(m.ft.nr_free(), before + 1);
        m.audit(&[&g]);
    }
}

/// Random sequences of page-table operations from a privileged and an unprivileged domain on
/// a small machine, checked after every step by the frame table's from-scratch audit: counts
/// equal what the validated tables, pins and base pointers account for, no page table is
/// mapped writable anywhere, validated tables hold only allowed entries, free frames have no
/// references; and at the end, destroying every domain gives back every frame.
#[cfg(test)]
mod proptests {
    use super::testkit::*;
    use super::*;
    use crate::mm::frame_table::Owner;
    use crate::mm::pte::{make, GLOBAL, NX, PCD, PRESENT, PSE};
    use proptest::prelude::*;
    use std::vec::Vec;

    const FRAMES: u64 = 48;
    const SLOTS: [usize; 8] = [0, 1, 2, 3, 255, 256, 272, 511];
    const FLAGS: [u64; 8] = [0, RO, RWF, RWF | PSE, RO | PCD, RO | GLOBAL, PRESENT, RWF | NX];

    #[derive(Clone, Debug)]
    enum Op {
        Update {
            dom: usize,
            table: u8,
            slot: u8,
            target: u8,
            flags: u8,
            foreign: bool,
        },
        /// An entry in one of the domain's live L2..L4 tables pointing at one of its live tables
        /// of the same level (linear) or the level below, or at any frame.
        Link {
            dom: usize,
            table: u8,
            slot: u8,
            target: u8,
            how: u8,
        },
        /// An entry in one of the domain's live L1s mapping its own or the other domain's frame.
        Map {
            dom: usize,
            l1: u8,
            slot: u8,
            target: u8,
            rw: bool,
            foreign: bool,
        },
        UpdateVa {
            dom: usize,
            page: u8,
            target: u8,
            flags: u8,
            uvmf: u8,
        },
        Pin {
            dom: usize,
            mfn: u8,
            level: u8,
        },
        Unpin {
            dom: usize,
            mfn: u8,
        },
        NewBase {
            dom: usize,
            mfn: u8,
        },
        NewUserBase {
            dom: usize,
            mfn: u8,
        },
        Alloc {
            dom: usize,
        },
        Free {
            dom: usize,
            mfn: u8,
        },
        Machphys {
            dom: usize,
            mfn: u8,
        },
        Clear {
            dom: usize,
            mfn: u8,
        },
        Relinquish {
            dom: usize,
        },
        Flush,
    }

    fn op() -> impl Strategy<Value = Op> {
        let dom = 0..2usize;
        prop_oneof![
            8 => (dom.clone(), any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>(), prop::bool::weighted(0.2))
                .prop_map(|(dom, table, slot, target, flags, foreign)| Op::Update { dom, table, slot, target, flags, foreign }),
            6 => (dom.clone(), any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>())
                .prop_map(|(dom, table, slot, target, how)| Op::Link { dom, table, slot, target, how }),
            4 => (dom.clone(), any::<u8>(), any::<u8>(), any::<u8>(), any::<bool>(), prop::bool::weighted(0.3))
                .prop_map(|(dom, l1, slot, target, rw, foreign)| Op::Map { dom, l1, slot, target, rw, foreign }),
            2 => (dom.clone(), any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>())
                .prop_map(|(dom, page, target, flags, uvmf)| Op::UpdateVa { dom, page, target, flags, uvmf }),
            3 => (dom.clone(), any::<u8>(), 1..5u8).prop_map(|(dom, mfn, level)| Op::Pin { dom, mfn, level }),
            2 => (dom.clone(), any::<u8>()).prop_map(|(dom, mfn)| Op::Unpin { dom, mfn }),
            1 => (dom.clone(), any::<u8>()).prop_map(|(dom, mfn)| Op::NewBase { dom, mfn }),
            1 => (dom.clone(), any::<u8>()).prop_map(|(dom, mfn)| Op::NewUserBase { dom, mfn }),
            2 => dom.clone().prop_map(|dom| Op::Alloc { dom }),
            1 => (dom.clone(), any::<u8>()).prop_map(|(dom, mfn)| Op::Free { dom, mfn }),
            1 => (dom.clone(), any::<u8>()).prop_map(|(dom, mfn)| Op::Machphys { dom, mfn }),
            1 => (dom.clone(), any::<u8>()).prop_map(|(dom, mfn)| Op::Clear { dom, mfn }),
            1 => Just(Op::Flush),
            1 => dom.prop_map(|dom| Op::Relinquish { dom }),
        ]
    }

    struct World {
        m: Machine,
        guests: [Guest; 2],
        owned: [Vec<Mfn>; 2],
        dead: [bool; 2],
    }

    impl World {
        fn new() -> World {
            World::with_budget(None)
        }

        fn with_budget(budget: Option<u32>) -> World {
            let mut m = Machine::new(FRAMES);
            let mut d0 = m.guest(0, true, 24);
            let mut d1 = m.guest(1, false, 16);
            let s0 = m.build_space(&mut d0);
            let s1 = m.build_space(&mut d1);
            let own = |s: &Space| {
                let mut v = std::vec![s.l4, s.l3, s.l2, s.l1];
                v.extend(&s.data);
                v
            };
            m.budget = budget;
            World { owned: [own(&s0), own(&s1)], guests: [d0, d1], m, dead: [false; 2] }
        }

        /// Mostly one of the domain's own frames, sometimes any frame (hostile).
        fn pick(&self, dom: usize, sel: u8) -> Mfn {
            let own = &self.owned[dom];
            if sel < 200 && !own.is_empty() {
                own[sel as usize % own.len()]
            } else {
                Mfn(u64::from(sel) % (FRAMES + 2))
            }
        }

        /// Half the time the domain's newest frame (likely unused, so it can become anything).
        fn pick_fresh(&self, dom: usize, sel: u8) -> Mfn {
            match self.owned[dom].last() {
                Some(&f) if sel & 1 == 0 => f,
                _ => self.pick(dom, sel >> 1),
            }
        }

        fn apply(&mut self, op: &Op) {
            let dom = match *op {
                Op::Update { dom, .. }
                | Op::Link { dom, .. }
                | Op::Map { dom, .. }
                | Op::UpdateVa { dom, .. }
                | Op::Pin { dom, .. }
                | Op::Unpin { dom, .. }
                | Op::NewBase { dom, .. }
                | Op::NewUserBase { dom, .. }
                | Op::Alloc { dom }
                | Op::Free { dom, .. }
                | Op::Machphys { dom, .. }
                | Op::Clear { dom, .. }
                | Op::Relinquish { dom } => dom,
                Op::Flush => {
                    self.m.ft.tlb_flushed();
                    return;
                }
            };
            if self.dead[dom] {
                return;
            }
            let mut g = self.guests[dom].clone();
            match *op {
                Op::Update { table, slot, target, flags, foreign, .. } => {
                    let table = self.pick(dom, table);
                    let slot = SLOTS[slot as usize % SLOTS.len()];
                    let other = 1 - dom;
                    let target = self.pick(if foreign { other } else { dom }, target);
                    let val = make(target, FLAGS[flags as usize % FLAGS.len()]);
                    let fd = if foreign { other as u32 } else { SELF };
                    let _ = self.m.update(&mut g, table, slot, val, fd);
                }
                Op::Link { table, slot, target, how, .. } => {
                    let Some(t) = self.live_table(g.domid, table, 2..=4) else { return };
                    let level = self.m.ft.info(t).and_then(|i| i.ty.level()).unwrap_or(2);
                    let slot = SLOTS[slot as usize % SLOTS.len()];
                    let (target, flags) = match how % 8 {
                        0..=2 => (self.live_table(g.domid, target, level..=level), RO),
                        3 => (self.live_table(g.domid, target, level..=level), RWF),
                        4 => (self.live_table(g.domid, target, level - 1..=level - 1), RWF),
                        _ => (Some(self.pick_fresh(dom, target)), RWF),
                    };
                    let Some(target) = target else { return };
                    let _ = self.m.update(&mut g, t, slot, make(target, flags), SELF);
                }
                Op::Map { l1, slot, target, rw, foreign, .. } => {
                    let Some(t) = self.live_table(g.domid, l1, 1..=1) else { return };
                    let other = 1 - dom;
                    let target = self.pick(if foreign { other } else { dom }, target);
                    let fd = if foreign { other as u32 } else { SELF };
                    let val = make(target, if rw { RWF } else { RO });
                    let _ = self.m.update(&mut g, t, 8 + slot as usize % 8, val, fd);
                }
                Op::UpdateVa { page, target, flags, uvmf, .. } => {
                    let va = u64::from(page % 16) << 12;
                    let val = make(self.pick(dom, target), FLAGS[flags as usize % FLAGS.len()]);
                    let fl = [0, 1, 2, 5][uvmf as usize % 4];
                    let _ = self.m.run(&mut g, |ft, mem, ctx| update_va_mapping(ft, mem, ctx, va, val, fl));
                }
                Op::Pin { mfn, level, .. } => {
                    let mfn = self.pick_fresh(dom, mfn);
                    let _ = self.m.ext(&mut g, mmuext::PIN_L1_TABLE + u32::from(level) - 1, mfn.0, 0);
                }
                Op::Unpin { mfn, .. } => {
                    let mfn = self.pick(dom, mfn);
                    let _ = self.m.ext(&mut g, mmuext::UNPIN_TABLE, mfn.0, 0);
                }
                Op::NewBase { mfn, .. } => {
                    let mfn = self.pick(dom, mfn);
                    let _ = self.m.ext(&mut g, mmuext::NEW_BASEPTR, mfn.0, 0);
                }
                Op::NewUserBase { mfn, .. } => {
                    let mfn = if mfn == 255 { Mfn(0) } else { self.pick(dom, mfn) };
                    let _ = self.m.ext(&mut g, mmuext::NEW_USER_BASEPTR, mfn.0, 0);
                }
                Op::Alloc { .. } => {
                    if let Ok(f) = self.m.ft.alloc_domain_frame(&self.m.mem, g.domid) {
                        self.owned[dom].push(f);
                    }
                }
                Op::Free { mfn, .. } => {
                    let mfn = self.pick(dom, mfn);
                    let (done, _) = decrease_reservation(&mut self.m.ft, &self.m.mem, g.domid, 0, &[mfn.0]);
                    if done == 1 {
                        self.owned[dom].retain(|&f| f != mfn);
                    }
                }
                Op::Machphys { mfn, .. } => {
                    let mfn = self.pick(dom, mfn);
                    let req = MmuUpdate { ptr: mfn.addr() | mmu::MACHPHYS_UPDATE, val: 5 };
                    let r = self.m.run(&mut g, |ft, mem, ctx| mmu_update(ft, mem, ctx, &[req], SELF, 1));
                    let owns = self.m.ft.owner(mfn) == Some(Owner::Domain(g.domid))
                        && self.m.ft.info(mfn).is_some_and(|i| i.count > 0);
                    // Unless preempted while finishing a deferred teardown first.
                    if r.done == 1 || r.result.is_err() {
                        assert_eq!(r.result.is_ok(), owns, "MACHPHYS_UPDATE of {mfn:?}");
                    }
                }
                Op::Clear { mfn, .. } => {
                    let mfn = self.pick(dom, mfn);
                    let _ = self.m.ext(&mut g, mmuext::CLEAR_PAGE, mfn.0, 0);
                }
                Op::Relinquish { .. } => {
                    let bases: Vec<Mfn> = [g.kernel_l4, g.user_l4].into_iter().flatten().collect();
                    self.m.ft.relinquish(&self.m.mem, g.domid, &bases);
                    g.kernel_l4 = None;
                    g.user_l4 = None;
                    self.dead[dom] = true;
                    self.owned[dom].clear();
                    // What the dead domain still owns, only the other domain's mappings hold.
                    let other = self.guests[1 - dom].domid;
                    for f in 0..FRAMES {
                        if self.m.ft.owner(Mfn(f)) == Some(Owner::Domain(g.domid)) {
                            assert!(self.referenced_by(other, Mfn(f)), "{:?} kept without a user", Mfn(f));
                        }
                    }
                }
                Op::Flush => unreachable!(),
            }
            self.guests[dom] = g;
        }

        /// One of `d`'s validated tables with a level in `levels`.
        fn live_table(&self, d: DomId, sel: u8, levels: core::ops::RangeInclusive<u32>) -> Option<Mfn> {
            let tables: Vec<Mfn> = (0..FRAMES)
                .map(Mfn)
                .filter(|&f| {
                    self.m.ft.info(f).is_some_and(|i| {
                        i.owner == Owner::Domain(d)
                            && i.validated
                            && i.ty.level().is_some_and(|l| levels.contains(&l))
                    })
                })
                .collect();
            (!tables.is_empty()).then(|| tables[sel as usize % tables.len()])
        }

        /// True if a validated L1 of `d` maps `f`.
        fn referenced_by(&self, d: DomId, f: Mfn) -> bool {
            // Validated L1s, and the part of partial ones (preempted validations or deferred
            // teardowns) whose entries still hold references.
            (0..FRAMES).map(Mfn).any(|t| {
                let Some(i) = self.m.ft.info(t) else { return false };
                i.owner == Owner::Domain(d)
                    && i.ty == PageType::L1
                    && (0..self.m.ft.held_entries(t)).any(|s| {
                        let e = self.m.mem.read_pte(t, s);
                        pte::is_present(e) && pte::mfn(e) == f
                    })
            })
        }

        fn audit(&self) {
            let live: Vec<&Guest> = self.guests.iter().collect();
            self.m.audit(&live);
        }

        /// Destroys every domain: all frames must come back.
        fn teardown(mut self) {
            for dom in 0..2 {
                if !self.dead[dom] {
                    self.apply(&Op::Relinquish { dom });
                }
            }
            self.audit();
            for g in &self.guests {
                assert_eq!(self.m.ft.tot_pages(g.domid), 0);
                self.m.ft.remove_domain(g.domid).unwrap();
            }
            assert_eq!(self.m.ft.nr_free(), FRAMES - FIRST_RAM);
            self.m.ft.audit(&self.m.mem, &[]).unwrap();
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

        #[test]
        fn random_operations_keep_the_invariants(ops in prop::collection::vec(op(), 1..80)) {
            let mut w = World::new();
            w.audit();
            for op in &ops {
                w.apply(op);
                w.audit();
            }
            w.teardown();
        }

        /// The same with every call preempted after a few entries (XSA-45): partial frames,
        /// resumed or abandoned validations and deferred teardowns mix with everything else.
        #[test]
        fn random_operations_with_preemption_keep_the_invariants(
            ops in prop::collection::vec(op(), 1..80),
            budget in 1u32..24,
        ) {
            let mut w = World::with_budget(Some(budget));
            w.audit();
            for op in &ops {
                w.apply(op);
                w.audit();
            }
            w.teardown();
        }
    }

    /// The random sequences do reach the interesting states (so the property is not vacuous):
    /// counts the runs in which each state occurs at some step.
    #[test]
    fn the_generator_reaches_deep_states() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let mut seen = [0usize; 5];
        const NAMES: [&str; 5] =
            ["4-level tree", "pinned L2", "linear entry", "foreign keep", "foreign RW map"];
        for _ in 0..200 {
            let ops = prop::collection::vec(op(), 40..80).new_tree(&mut runner).unwrap().current();
            let mut w = World::new();
            let mut run = [false; 5];
            for op in &ops {
                w.apply(op);
                for f in 0..FRAMES {
                    let i = w.m.ft.info(Mfn(f)).unwrap();
                    let new_l4 = i.ty == PageType::L4 && i.validated && f >= FIRST_RAM + 16;
                    run[0] |= new_l4;
                    run[1] |= i.pinned && i.ty == PageType::L2;
                    run[2] |= i.linear != 0;
                    run[3] |= (0..2).any(|d| w.dead[d] && i.owner == Owner::Domain(DomId(d as u16)));
                    run[4] |= i.owner == Owner::Domain(DomId(1))
                        && i.ty == PageType::Writable
                        && i.type_count > 0
                        && w.referenced_by(DomId(0), Mfn(f));
                }
            }
            for (s, r) in seen.iter_mut().zip(run) {
                *s += usize::from(r);
            }
        }
        for (n, name) in seen.iter().zip(NAMES) {
            std::eprintln!("{name}: {n} of 200 runs");
            assert!(*n >= 5, "{name} reached in only {n} runs");
        }
    }
}
