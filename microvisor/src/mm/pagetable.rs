//! The rules a 64-bit PV guest's page-table entries must follow, and the reference counting
//! that goes with them (Xen's `get_page_from_l1e` .. `l4e`, `promote_lN_table`,
//! `demote_lN_table`, `mod_lN_entry`).
//!
//! A PV guest's page tables are loaded into CR3 as they are, so every entry of a frame in use
//! as a page table is checked before the hardware may walk it, and keeps a reference on what
//! it points at for as long as it exists:
//!
//! * an L1 entry maps a frame the domain owns (or, for a privileged domain naming a foreign
//!   domain, that domain's frame; or an I/O frame with permission). Mapped writable, it takes
//!   a `Writable` type reference, which cannot coexist with a page-table type: a guest never
//!   gets write access to a page table, its own or anyone's;
//! * an L2/L3/L4 entry takes an L1/L2/L3 type reference on the table below, validating it
//!   first if it is new;
//! * a "linear" entry pointing at a table of the same level is allowed only read-only and only
//!   one step deep (XSA-182, XSA-240, XSA-286);
//! * cacheability bits, superpages (XSA-148), the global bit above L1 and Xen's grant marker
//!   are refused; frames outside the frame table are refused (XSA-173);
//! * a non-present entry of a domU must not name cacheable memory nor set PSE above L1 (the
//!   L1TF rule, XSA-273): such a domain is crashed, as Xen does where it cannot shadow it;
//! * the hypervisor's L4 slots 256..=271 are never taken from the guest: validation overwrites
//!   them and updates to them fail.
//!
//! Validation recurses (an L4 promotes its L3s, which promote L2s, ...) at most four levels
//! deep with a few words of stack per level. Validation and teardown are preemptible (XSA-45):
//! each entry examined is charged to the hypercall's budget, and when it runs out the frames
//! on the way keep their progress as partial frames (see `frame_table`'s `PGT_PARTIAL`) and the
//! hypercall continues itself.

use super::frame_table::{FrameTable, Owner, PageType};
use super::pte::{self, ACCESSED, DIRTY, GLOBAL, GNTTAB, NX, PAT, PCD, PRESENT, PWT, RW, USER};
use super::{MachineMemory, ENTRIES_PER_TABLE};
use hypercall_abi::xen::{FIRST_HYPERVISOR_L4_SLOT, LAST_HYPERVISOR_L4_SLOT};
use hypercall_abi::{DomId, Errno, Mfn};

/// Xen's `_PAGE_GUEST_KERNEL` (bit 52, one of the high software bits): marks an L1 entry that
/// the guest created as a kernel (non-user) mapping before Xen forced `_PAGE_USER` on it.
pub const GUEST_KERNEL: u64 = 1 << 52;

/// The cacheability bits of an L1 entry.
pub const CACHE_ATTRS: u64 = PWT | PCD | PAT;

/// Every flag bit of an entry (everything outside the frame address).
const FLAG_BITS: u64 = !pte::ADDR_MASK;

/// Flags any guest entry may carry (Xen's basic guest-accessible set).
const BASE_ALLOWED: u64 = PRESENT | RW | USER | ACCESSED | DIRTY | pte::AVAIL_LOW | pte::AVAIL_HIGH | NX;

/// Xen's `base_disallow_mask`: PWT, PCD, PSE (no superpages) and G. It is the whole mask for
/// L2, L3 and L4 entries.
pub const BASE_DISALLOW: u64 = FLAG_BITS & !BASE_ALLOWED;

/// Flags refused in an L1 entry: the base set plus Xen's grant marker, minus G (allowed for
/// user mappings); cacheability bits are allowed for domains with I/O access.
pub const fn l1_disallow_mask(cache_attrs_ok: bool) -> u64 {
    let m = (BASE_DISALLOW | GNTTAB) & !GLOBAL;
    if cache_attrs_ok {
        m & !CACHE_ATTRS
    } else {
        m
    }
}

/// Flags a guest may change in a present entry without revalidation (same frame, same
/// writability, same cacheability): Xen's `FASTPATH_FLAG_WHITELIST`.
const FASTPATH_WHITELIST: u64 = NX | pte::AVAIL_HIGH | pte::AVAIL_LOW | GLOBAL | DIRTY | ACCESSED | USER;

/// True if `old` and `new` differ in the frame address or in a flag outside `FASTPATH_WHITELIST`.
const fn needs_revalidation(old: u64, new: u64) -> bool {
    (old ^ new) & (pte::ADDR_MASK | (FLAG_BITS & !FASTPATH_WHITELIST)) != 0
}

/// True for L4 slots the guest owns: 0..=255 and 272..=511.
pub const fn is_guest_l4_slot(slot: usize) -> bool {
    slot < FIRST_HYPERVISOR_L4_SLOT || slot > LAST_HYPERVISOR_L4_SLOT
}

/// Xen's `adjust_guest_l1e` for 64-bit PV: a PV kernel runs in ring 3, so its own mappings
/// get `_PAGE_USER` too (remembered with `GUEST_KERNEL`); user mappings get G, since they are
/// the same in the kernel and user page tables.
pub const fn adjust_guest_l1e(e: u64) -> u64 {
    if e & PRESENT == 0 {
        return e;
    }
    let mut e = e;
    if e & USER == 0 {
        e |= GUEST_KERNEL | USER;
    }
    if e & GUEST_KERNEL == 0 {
        e |= GLOBAL | USER;
    }
    e
}

/// Xen's `adjust_guest_l2e`/`l3e`/`l4e` for 64-bit PV: `_PAGE_USER` on every present entry
/// (the guest kernel runs in ring 3), and `_PAGE_ACCESSED` on L4 entries.
pub const fn adjust_guest_entry(e: u64, level: u32) -> u64 {
    if e & PRESENT == 0 {
        return e;
    }
    if level == 4 {
        e | USER | ACCESSED
    } else {
        e | USER
    }
}

/// The domains an L1 entry is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L1Owners {
    /// Owner of the L1 table (Xen's `l1e_owner`, the `pt_owner` of `mmu_update`).
    pub l1e_owner: DomId,
    /// Domain whose frames may be mapped (Xen's `pg_owner`: the `foreigndom` of
    /// `mmu_update`, `DOMID_IO` for device memory, or `l1e_owner`).
    pub pg_owner: DomId,
    /// The domain making the request (it stands in for `DOMID_IO` in permission checks).
    pub caller: DomId,
}

impl L1Owners {
    /// A domain updating its own tables with its own frames.
    pub const fn local(d: DomId) -> L1Owners {
        L1Owners { l1e_owner: d, pg_owner: d, caller: d }
    }
}

/// Checks a present L1 entry and takes its references: a general one on the frame, plus a
/// `Writable` type reference if it is mapped writable. I/O frames take none. Returns flag
/// bits the caller must toggle in the entry (Xen forces device memory uncacheable).
pub fn get_page_from_l1e<M: MachineMemory>(
    ft: &mut FrameTable,
    mem: &M,
    l1e: u64,
    owners: L1Owners,
) -> Result<u64, Errno> {
    get_page_from_l1e_inline(ft, mem, l1e, owners)
}

/// [`get_page_from_l1e`], inlined into the validation loop of an L1.
#[inline(always)]
fn get_page_from_l1e_inline<M: MachineMemory>(
    ft: &mut FrameTable,
    mem: &M,
    l1e: u64,
    owners: L1Owners,
) -> Result<u64, Errno> {
    debug_assert!(pte::is_present(l1e));
    if l1e & l1_disallow_mask(ft.cache_attrs_ok(owners.l1e_owner)) != 0 {
        return Err(Errno::EINVAL);
    }
    let mfn = pte::mfn(l1e);
    match ft.owner(mfn) {
        None | Some(Owner::Io) => {
            let who = if owners.pg_owner == DomId::IO { owners.caller } else { owners.pg_owner };
            if !ft.iomem_permitted(who, mfn)
                || (who != owners.l1e_owner && !ft.iomem_permitted(owners.l1e_owner, mfn))
            {
                return Err(Errno::EPERM);
            }
            // Device memory must not be cached unless the guest asked for a cache type.
            let flip = match l1e & CACHE_ATTRS {
                0 => PWT | PCD,
                a if a == PWT || a == PWT | PAT => PCD | (l1e & PAT),
                _ => 0,
            };
            Ok(flip)
        }
        Some(_) => {
            if ft.get_page(mfn, owners.pg_owner).is_err() {
                return Err(Errno::EBUSY);
            }
            if l1e & RW != 0 && ft.get_page_type(mem, mfn, PageType::Writable).is_err() {
                ft.put_page(mfn);
                return Err(Errno::EBUSY);
            }
            Ok(0)
        }
    }
}

/// Drops the references a present L1 entry holds. Entries carrying Xen's grant marker hold
/// none: the grant-table code that created them owns their references.
pub fn put_page_from_l1e<M: MachineMemory>(ft: &mut FrameTable, mem: &M, l1e: u64) {
    put_page_from_l1e_inline(ft, mem, l1e)
}

/// [`put_page_from_l1e`], inlined into the teardown loop of an L1.
#[inline(always)]
fn put_page_from_l1e_inline<M: MachineMemory>(ft: &mut FrameTable, mem: &M, l1e: u64) {
    if !pte::is_present(l1e) || l1e & GNTTAB != 0 {
        return;
    }
    let mfn = pte::mfn(l1e);
    match ft.owner(mfn) {
        None | Some(Owner::Io) => {}
        Some(_) => {
            if l1e & RW != 0 {
                ft.put_page_and_type(mem, mfn);
            } else {
                ft.put_page_inline(mfn);
            }
        }
    }
}

/// Checks a present L2/L3/L4 entry (of `table`, at `level`) of domain `d` and takes a
/// reference of the next level's type on what it points at, validating it if needed. A
/// read-only entry pointing at a table of its own level is a linear entry.
pub fn get_page_from_entry<M: MachineMemory>(
    ft: &mut FrameTable,
    mem: &M,
    e: u64,
    table: Mfn,
    level: u32,
    d: DomId,
) -> Result<(), Errno> {
    debug_assert!((2..=4).contains(&level) && pte::is_present(e));
    if e & BASE_DISALLOW != 0 {
        return Err(Errno::EINVAL);
    }
    let child = PageType::table(level - 1).ok_or(Errno::EINVAL)?;
    match ft.get_page_and_type(mem, pte::mfn(e), d, child) {
        Err(Errno::EINVAL) if get_linear_pagetable(ft, e, table, level, d) => Ok(()),
        r => r,
    }
}

/// Xen's `define_get_linear_pagetable`: a read-only entry of `table` pointing at `table`
/// itself (no references needed) or at another validated table of the same level and owner,
/// provided neither side of the link is already on the other side of another link.
fn get_linear_pagetable(ft: &mut FrameTable, e: u64, table: Mfn, level: u32, d: DomId) -> bool {
    if e & RW != 0 {
        return false;
    }
    let target = pte::mfn(e);
    if target == table {
        return true;
    }
    let Some(ty) = PageType::table(level) else { return false };
    if ft.owner(table) != Some(Owner::Domain(d)) || ft.get_page(target, d).is_err() {
        return false;
    }
    if !ft.inc_linear_entries(table) {
        ft.put_page(target);
        return false;
    }
    if !ft.inc_linear_uses(target) {
        ft.dec_linear_entries(table);
        ft.put_page(target);
        return false;
    }
    if !ft.get_validated_type(target, ty) {
        ft.dec_linear_uses(target);
        ft.dec_linear_entries(table);
        ft.put_page(target);
        return false;
    }
    true
}

/// Drops the references a present L2/L3/L4 entry of `table` holds.
pub fn put_page_from_entry<M: MachineMemory>(ft: &mut FrameTable, mem: &M, e: u64, table: Mfn) {
    if !pte::is_present(e) {
        return;
    }
    let target = pte::mfn(e);
    if target == table {
        return;
    }
    if ft.type_of(target) == ft.type_of(table) {
        ft.dec_linear_uses(target);
        ft.dec_linear_entries(table);
    }
    ft.put_page_and_type(mem, target);
}

/// Validates the entries of `mfn` as a table of `level` from slot `start` on (the frame
/// already carries the type with count 1, not yet validated; entries below `start` hold their
/// references from an earlier, preempted call), writing back the adjusted entries, and for an
/// L4 the hypervisor's slots. Stops with `(ERESTART, slot)` when the operation's budget runs
/// out (or a table below was preempted), and with `(error, slot)` at a bad entry: either way
/// the entries below `slot` hold references, the rest none, for the caller to record.
///
/// The work is charged to the budget as [`EMPTY_PER_UNIT`] describes; the first slot examined
/// is free, so a resumed validation always progresses.
pub(crate) fn promote<M: MachineMemory>(
    ft: &mut FrameTable,
    mem: &M,
    mfn: Mfn,
    level: u32,
    start: usize,
) -> Result<(), (Errno, usize)> {
    let Some(Owner::Domain(d)) = ft.owner(mfn) else {
        return Err((Errno::EINVAL, start));
    };
    let l1tf = ft.l1tf_checked(d);
    let mut chunk = start - start % EMPTY_PER_UNIT;
    while chunk < ENTRIES_PER_TABLE {
        let end = chunk + EMPTY_PER_UNIT;
        if level == 4 && chunk == FIRST_HYPERVISOR_L4_SLOT {
            // The hypervisor's slots are exactly one chunk: they are rewritten below.
            const _: () = assert!(FIRST_HYPERVISOR_L4_SLOT.is_multiple_of(EMPTY_PER_UNIT));
            const _: () = assert!(LAST_HYPERVISOR_L4_SLOT + 1 == FIRST_HYPERVISOR_L4_SLOT + EMPTY_PER_UNIT);
            chunk = end;
            continue;
        }
        let from = chunk.max(start);
        if from == chunk && chunk_is_empty(mem, mfn, chunk) {
            if chunk > start && ft.must_preempt() {
                return Err((Errno::ERESTART, chunk));
            }
            chunk = end;
            continue;
        }
        let r = if level == 1 {
            promote_l1_entries(ft, mem, mfn, d, l1tf, from..end, start)
        } else {
            promote_entries(ft, mem, mfn, level, d, l1tf, from..end, start)
        };
        r?;
        chunk = end;
    }
    if level == 4 {
        install_xen_l4_slots(ft, mem, mfn);
    }
    Ok(())
}

/// True if the entries `chunk..chunk + EMPTY_PER_UNIT` of `mfn` are all zero.
#[inline(always)]
fn chunk_is_empty<M: MachineMemory>(mem: &M, mfn: Mfn, chunk: usize) -> bool {
    (chunk..chunk + EMPTY_PER_UNIT).all(|slot| mem.read_pte(mfn, slot) == 0)
}

/// [`chunk_is_empty`] for teardown, of a table of `level`: the hypervisor's L4 slots hold
/// nothing of the guest's and count as empty.
#[inline]
pub(crate) fn run_is_empty<M: MachineMemory>(mem: &M, mfn: Mfn, level: u32, chunk: usize) -> bool {
    (level == 4 && chunk == FIRST_HYPERVISOR_L4_SLOT) || chunk_is_empty(mem, mfn, chunk)
}

/// A non-present entry at `level` of a domain whose entries are checked for L1TF (`l1tf`): an
/// error if it is unsafe (reported for the dispatcher to crash the domain).
#[inline(always)]
fn check_not_present(ft: &mut FrameTable, d: DomId, l1tf: bool, level: u32, e: u64) -> Result<(), Errno> {
    if l1tf && ft.l1tf_unsafe(level, e) {
        ft.report_l1tf(d, level, e);
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// [`promote`] of the L1 entries `slots` (one chunk): every present entry is checked and
/// takes its references. Kept apart from the upper levels so that the loop over up to 512
/// mappings stays tight (issue 10: the instruction counts of `pin_l4`). Taking an L1 entry's
/// references never validates or tears down a table, so with budget for the whole chunk it is
/// charged once, after the loop (one unit per non-empty entry, as entry by entry).
#[allow(clippy::too_many_arguments)]
fn promote_l1_entries<M: MachineMemory>(
    ft: &mut FrameTable,
    mem: &M,
    mfn: Mfn,
    d: DomId,
    l1tf: bool,
    slots: core::ops::Range<usize>,
    start: usize,
) -> Result<(), (Errno, usize)> {
    if ft.budget_covers(slots.len()) {
        let mut used = 0;
        let r = promote_l1_run::<false, M>(ft, mem, mfn, d, l1tf, slots, start, &mut used);
        ft.charge(used);
        r
    } else {
        promote_l1_run::<true, M>(ft, mem, mfn, d, l1tf, slots, start, &mut 0)
    }
}

/// The loop of [`promote_l1_entries`]: with `CHECKED` each non-empty entry but the first is
/// charged as it comes (and may stop the run), otherwise it is counted in `used`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn promote_l1_run<const CHECKED: bool, M: MachineMemory>(
    ft: &mut FrameTable,
    mem: &M,
    mfn: Mfn,
    d: DomId,
    l1tf: bool,
    slots: core::ops::Range<usize>,
    start: usize,
    used: &mut u32,
) -> Result<(), (Errno, usize)> {
    let owners = L1Owners::local(d);
    for slot in slots {
        let e = mem.read_pte(mfn, slot);
        if e == 0 {
            continue;
        }
        if !CHECKED {
            // (At most a chunk's length.)
            *used = used.wrapping_add(1);
        } else if slot > start && ft.must_preempt() {
            return Err((Errno::ERESTART, slot));
        }
        if !pte::is_present(e) {
            check_not_present(ft, d, l1tf, 1, e).map_err(|err| (err, slot))?;
            continue;
        }
        let flip = get_page_from_l1e_inline(ft, mem, e, owners).map_err(|err| (err, slot))?;
        let adjusted = adjust_guest_l1e(e ^ flip);
        if adjusted != e {
            mem.write_pte(mfn, slot, adjusted);
        }
    }
    Ok(())
}

/// [`promote`] of the L2, L3 or L4 entries `slots` (one chunk).
#[allow(clippy::too_many_arguments)]
fn promote_entries<M: MachineMemory>(
    ft: &mut FrameTable,
    mem: &M,
    mfn: Mfn,
    level: u32,
    d: DomId,
    l1tf: bool,
    slots: core::ops::Range<usize>,
    start: usize,
) -> Result<(), (Errno, usize)> {
    for slot in slots {
        let e = mem.read_pte(mfn, slot);
        if e == 0 {
            continue;
        }
        if slot > start && ft.must_preempt() {
            return Err((Errno::ERESTART, slot));
        }
        if !pte::is_present(e) {
            check_not_present(ft, d, l1tf, level, e).map_err(|err| (err, slot))?;
            continue;
        }
        get_page_from_entry(ft, mem, e, mfn, level, d).map_err(|err| (err, slot))?;
        let adjusted = adjust_guest_entry(e, level);
        if adjusted != e {
            mem.write_pte(mfn, slot, adjusted);
        }
    }
    Ok(())
}

/// How the work of validating or tearing down a table is charged to the preemption budget:
/// one unit per non-empty entry (which may take and drop references, or recurse), and one per
/// aligned run of `EMPTY_PER_UNIT` empty slots, which cost a read each (a run with entries in
/// it costs only its entries).
pub(crate) const EMPTY_PER_UNIT: usize = 16;

/// Teardown of the entries `run` of `mfn` (a table of `level`, one aligned run of
/// [`EMPTY_PER_UNIT`] slots or the top of one), from the top down: each non-empty entry is
/// charged one unit and drops its references (the hypervisor's L4 slots hold nothing of the
/// guest's and count as empty). `Err(slot)` if the budget ran out first: the entries below
/// `slot` still hold theirs.
pub(crate) fn release_run<M: MachineMemory>(
    ft: &mut FrameTable,
    mem: &M,
    mfn: Mfn,
    level: u32,
    run: core::ops::Range<usize>,
) -> Result<(), usize> {
    if level == 1 {
        // Kept apart from the upper levels so that the loop over up to 512 mappings stays
        // tight, as in validation; dropping an L1 entry's references never tears down a
        // table, so with budget for the whole run it is charged once, after the loop.
        if ft.budget_covers(run.len()) {
            let mut used: u32 = 0;
            for slot in run.rev() {
                let e = mem.read_pte(mfn, slot);
                if e != 0 {
                    // (At most a run's length.)
                    used = used.wrapping_add(1);
                    put_page_from_l1e_inline(ft, mem, e);
                }
            }
            ft.charge(used);
            return Ok(());
        }
        for slot in run.rev() {
            let e = mem.read_pte(mfn, slot);
            if e == 0 {
                continue;
            }
            if ft.must_preempt() {
                return Err(slot + 1);
            }
            put_page_from_l1e_inline(ft, mem, e);
        }
    } else {
        for slot in run.rev() {
            let e = if level == 4 && !is_guest_l4_slot(slot) { 0 } else { mem.read_pte(mfn, slot) };
            if e == 0 {
                continue;
            }
            if ft.must_preempt() {
                return Err(slot + 1);
            }
            put_page_from_entry(ft, mem, e, mfn);
        }
    }
    Ok(())
}

/// Releases what every entry of the table `mfn` of `level` holds at once (its domain is
/// dying). The contents are left as they are.
pub(crate) fn demote<M: MachineMemory>(ft: &mut FrameTable, mem: &M, mfn: Mfn, level: u32) {
    // Outside any preemptible operation: the budget does not run out.
    let done = release_run(ft, mem, mfn, level, 0..ENTRIES_PER_TABLE);
    debug_assert!(done.is_ok());
}

/// Writes the hypervisor's entries into slots 256..=271 of the L4 `mfn`.
fn install_xen_l4_slots<M: MachineMemory>(ft: &FrameTable, mem: &M, mfn: Mfn) {
    let slots = ft.xen_l4;
    for (k, &e) in slots.entries.iter().enumerate() {
        mem.write_pte(mfn, FIRST_HYPERVISOR_L4_SLOT + k, e);
    }
    if let Some((slot, flags)) = slots.self_slot {
        if (FIRST_HYPERVISOR_L4_SLOT..=LAST_HYPERVISOR_L4_SLOT).contains(&slot) {
            mem.write_pte(mfn, slot, pte::make(mfn, flags));
        }
    }
}

/// Where an entry lives: slot `idx` of the table `table`, which is a validated table of
/// `level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRef {
    pub table: Mfn,
    pub level: u32,
    pub idx: usize,
}

/// Xen's `mod_lN_entry`: replaces an entry of a validated, in-use page table with `new`,
/// taking the new entry's references before dropping the old one's, and writing the entry
/// with one atomic store. A change that keeps the frame, writability and cacheability
/// (accessed/dirty, NX, software bits, ...) needs no new references. `preserve_ad` keeps the
/// accessed and dirty bits the hardware set in the old entry. For L2..L4 entries the page
/// owner must be the table owner (the caller checks).
pub fn mod_entry<M: MachineMemory>(
    ft: &mut FrameTable,
    mem: &M,
    at: EntryRef,
    new: u64,
    preserve_ad: bool,
    owners: L1Owners,
) -> Result<(), Errno> {
    let EntryRef { table, level, idx } = at;
    if idx >= ENTRIES_PER_TABLE || level == 4 && !is_guest_l4_slot(idx) {
        return Err(Errno::EINVAL);
    }
    let old = mem.read_pte(table, idx);
    if level == 1 && pte::is_present(old) && old & GNTTAB != 0 {
        // Grant mappings are removed through the grant-table interface only.
        return Err(Errno::EINVAL);
    }
    let mut new = new;
    // (A zero entry, how entries are cleared, is always L1TF-safe.)
    if new != 0 && !pte::is_present(new) && ft.l1tf_check(owners.l1e_owner, level, new) {
        return Err(Errno::EINVAL);
    }
    if pte::is_present(new) {
        let mask =
            if level == 1 { l1_disallow_mask(ft.cache_attrs_ok(owners.l1e_owner)) } else { BASE_DISALLOW };
        if new & mask != 0 {
            return Err(Errno::EINVAL);
        }
        if !needs_revalidation(old, new) {
            let new = adjust(new, level);
            write_entry(mem, table, idx, old, new, preserve_ad);
            return Ok(());
        }
        if level == 1 {
            let flip = get_page_from_l1e(ft, mem, new, owners)?;
            new ^= flip;
        } else {
            get_page_from_entry(ft, mem, new, table, level, owners.l1e_owner)?;
        }
        new = adjust(new, level);
    }
    write_entry(mem, table, idx, old, new, preserve_ad);
    if level == 1 {
        put_page_from_l1e(ft, mem, old);
    } else {
        put_page_from_entry(ft, mem, old, table);
    }
    Ok(())
}

fn adjust(e: u64, level: u32) -> u64 {
    if level == 1 {
        adjust_guest_l1e(e)
    } else {
        adjust_guest_entry(e, level)
    }
}

/// One atomic store of the entry. The hypervisor is not preempted and no other CPU walks
/// these tables meanwhile, so the old value read before is still current.
fn write_entry<M: MachineMemory>(mem: &M, table: Mfn, idx: usize, old: u64, new: u64, preserve_ad: bool) {
    let new = if preserve_ad { new | (old & (ACCESSED | DIRTY)) } else { new };
    mem.write_pte(table, idx, new);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::frame_table::PageType;
    use crate::mm::mmu::testkit::*;
    use crate::mm::pte::{make, PSE};
    use hypercall_abi::xen::mmuext;

    /// XSA-273: a domU's non-present entries may not name cacheable memory, nor set PSE above
    /// L1; the offender is reported for crashing and the entry is not stored.
    #[test]
    fn l1tf_unsafe_non_present_entries_are_refused_for_domus() {
        let (mut m, mut g, s) = one_guest();
        let before = m.mem.read_pte(s.l1, 9);
        assert_eq!(m.update(&mut g, s.l1, 9, make(s.data[0], RW), SELF), Err(Errno::EINVAL));
        assert_eq!(m.mem.read_pte(s.l1, 9), before);
        let v = m.ft.take_l1tf_violation().expect("reported");
        assert_eq!((v.domid, v.level, v.pte), (g.domid, 1, make(s.data[0], RW)));
        // Above RAM but below the safe address is still unsafe (it may be cacheable MMIO).
        assert_eq!(m.update(&mut g, s.l1, 9, 0x10_0000_0000, SELF), Err(Errno::EINVAL));
        assert!(m.ft.take_l1tf_violation().is_some());
        // A non-present PSE entry above L1 (a speculative superpage from frame 0).
        assert_eq!(m.update(&mut g, s.l2, 9, PSE, SELF), Err(Errno::EINVAL));
        assert_eq!(m.ft.take_l1tf_violation().map(|v| v.level), Some(2));
        assert_eq!(m.update(&mut g, s.l4, 9, PSE, SELF), Err(Errno::EINVAL));
        assert!(m.ft.take_l1tf_violation().is_some());
        // Safe: zero, software bits only, or an address above everything cacheable.
        for safe in [0, 0x0ffe, 0x000f_ffff_ffff_f000, 1 << 45] {
            assert_eq!(m.update(&mut g, s.l1, 9, safe, SELF), Ok(()), "{safe:#x}");
        }
        assert_eq!(m.ft.take_l1tf_violation(), None);
        // Validation applies the same rule to the entries of a table being promoted.
        let t = m.alloc(&g);
        m.mem.write_pte(t, 0, make(s.data[0], PRESENT));
        m.mem.write_pte(t, 1, 0x6000);
        assert_eq!(m.ext(&mut g, mmuext::PIN_L1_TABLE, t.0, 0).result, Err(Errno::EINVAL));
        assert!(m.ft.take_l1tf_violation().is_some());
        m.audit(&[&g]);
        // The hardware domain is exempt, as in Xen's default (`pv-l1tf=domu`).
        let mut d0 = m.guest(0, true, 16);
        let s0 = m.build_space(&mut d0);
        assert_eq!(m.update(&mut d0, s0.l1, 9, 0x6000, SELF), Ok(()));
        assert_eq!(m.ft.take_l1tf_violation(), None);
    }

    #[test]
    fn flag_masks_match_xen() {
        assert_eq!(BASE_DISALLOW, PWT | PCD | PSE | GLOBAL);
        assert_eq!(l1_disallow_mask(false), PWT | PCD | PAT | GNTTAB);
        assert_eq!(l1_disallow_mask(true), GNTTAB);
        assert!(
            is_guest_l4_slot(0) && is_guest_l4_slot(255) && is_guest_l4_slot(272) && is_guest_l4_slot(511)
        );
        assert!(!is_guest_l4_slot(256) && !is_guest_l4_slot(271));
    }

    #[test]
    fn writable_mapping_of_own_page_table_is_ebusy() {
        let (mut m, mut g, s) = one_guest();
        for t in [s.l4, s.l3, s.l2, s.l1] {
            assert_eq!(m.update(&mut g, s.l1, 9, make(t, RWF), SELF), Err(Errno::EBUSY));
            assert_eq!(m.update(&mut g, s.l1, 9, make(t, RO), SELF), Ok(()));
            // Read-only to writable on the same frame is not a fast-path change.
            assert_eq!(m.update(&mut g, s.l1, 9, make(t, RWF), SELF), Err(Errno::EBUSY));
            assert_eq!(m.mem.read_pte(s.l1, 9) & RW, 0);
        }
        m.audit(&[&g]);
        // Nor can a frame mapped writable be promoted into a table.
        let f = m.alloc(&g);
        assert_eq!(m.update(&mut g, s.l1, 10, make(f, RWF), SELF), Ok(()));
        assert_eq!(m.update(&mut g, s.l2, 1, make(f, RWF), SELF), Err(Errno::EINVAL));
        m.audit(&[&g]);
    }

    #[test]
    fn recursive_l4_entry_must_stay_read_only() {
        // XSA-182: the fast path for flag-only changes must not let RW through.
        let (mut m, mut g, s) = one_guest();
        assert_eq!(m.update(&mut g, s.l4, 5, make(s.l4, RO), SELF), Ok(()));
        assert_eq!(m.update(&mut g, s.l4, 5, make(s.l4, RWF), SELF), Err(Errno::EINVAL));
        assert_eq!(m.mem.read_pte(s.l4, 5) & RW, 0);
        assert_eq!(m.update(&mut g, s.l4, 6, make(s.l4, RWF), SELF), Err(Errno::EINVAL));
        // Same for a recursive L2/L3 entry.
        assert_eq!(m.update(&mut g, s.l3, 7, make(s.l3, RWF), SELF), Err(Errno::EINVAL));
        assert_eq!(m.update(&mut g, s.l2, 7, make(s.l2, RWF), SELF), Err(Errno::EINVAL));
        // A self-map takes no references; the frame keeps its counts.
        let before = m.info(s.l4);
        assert_eq!(m.update(&mut g, s.l4, 7, make(s.l4, RO), SELF), Ok(()));
        assert_eq!(m.info(s.l4), before);
        // And one in a fresh table validates too.
        let t = m.alloc(&g);
        m.mem.write_pte(t, 3, make(t, RO));
        assert_eq!(m.ext(&mut g, mmuext::PIN_L4_TABLE, t.0, 0).result, Ok(()));
        let u = m.alloc(&g);
        m.mem.write_pte(u, 3, make(u, RWF));
        assert_eq!(m.ext(&mut g, mmuext::PIN_L4_TABLE, u.0, 0).result, Err(Errno::EINVAL));
        assert_eq!(m.info(u).ty, PageType::None);
        m.audit(&[&g]);
    }

    #[test]
    fn linear_entries_only_at_the_same_level() {
        let (mut m, mut g, s) = one_guest();
        let cases = [
            (s.l4, s.l2), // L4 entry -> L2
            (s.l4, s.l1),
            (s.l3, s.l4), // L3 entry -> L4
            (s.l3, s.l1),
            (s.l2, s.l4), // L2 entry -> L4
            (s.l2, s.l3),
        ];
        for (table, target) in cases {
            assert_eq!(m.update(&mut g, table, 9, make(target, RO), SELF), Err(Errno::EINVAL));
        }
        m.audit(&[&g]);
    }

    #[test]
    fn linear_chains_are_one_step() {
        // XSA-240: a table holding linear entries may not be the target of one.
        let (mut m, mut g, s) = one_guest();
        let b = m.alloc(&g);
        let c = m.alloc(&g);
        for t in [b, c] {
            assert_eq!(m.ext(&mut g, mmuext::PIN_L2_TABLE, t.0, 0).result, Ok(()));
        }
        let a = s.l2;
        assert_eq!(m.update(&mut g, a, 1, make(b, RO), SELF), Ok(()));
        assert_eq!((m.info(a).linear, m.info(b).linear), (1, -1));
        assert_eq!(m.update(&mut g, b, 1, make(c, RO), SELF), Err(Errno::EINVAL));
        assert_eq!(m.update(&mut g, c, 1, make(a, RO), SELF), Err(Errno::EINVAL));
        assert_eq!(m.update(&mut g, a, 2, make(c, RO), SELF), Ok(()));
        assert_eq!(m.update(&mut g, a, 3, make(c, RWF), SELF), Err(Errno::EINVAL));
        m.audit(&[&g]);
        // Linear entries only reach validated tables: an unpinned, unused frame is refused.
        let d = m.alloc(&g);
        assert_eq!(m.update(&mut g, a, 4, make(d, RO), SELF), Ok(()), "an empty frame becomes an L1");
        assert_eq!(m.info(d).ty, PageType::L1);
        assert_eq!(m.update(&mut g, a, 1, 0, SELF), Ok(()));
        assert_eq!(m.update(&mut g, a, 2, 0, SELF), Ok(()));
        assert_eq!((m.info(a).linear, m.info(b).linear, m.info(c).linear), (0, 0, 0));
        assert_eq!(m.update(&mut g, b, 1, make(c, RO), SELF), Ok(()));
        m.audit(&[&g]);
    }

    #[test]
    fn superpages_are_refused() {
        // XSA-148.
        let (mut m, mut g, s) = one_guest();
        // Fresh frames that would become valid L1/L2 tables without the PSE bit.
        let f = m.alloc(&g);
        assert_eq!(m.update(&mut g, s.l2, 1, make(f, RWF | PSE), SELF), Err(Errno::EINVAL));
        assert_eq!(m.update(&mut g, s.l3, 1, make(f, RWF | PSE), SELF), Err(Errno::EINVAL));
        assert_eq!(m.update(&mut g, s.l2, 1, make(f, RO | PSE), SELF), Err(Errno::EINVAL));
        assert_eq!(m.info(f).ty, PageType::None);
        assert_eq!(m.update(&mut g, s.l2, 1, make(f, RWF), SELF), Ok(()));
        assert_eq!(m.info(f).ty, PageType::L1);
        assert_eq!(m.update(&mut g, s.l2, 1, make(f, RWF | PSE), SELF), Err(Errno::EINVAL));
        assert_eq!(m.update(&mut g, s.l2, 2, make(s.data[0], RWF | PSE), SELF), Err(Errno::EINVAL));
        assert_eq!(m.update(&mut g, s.l3, 1, make(s.data[0], RWF | PSE), SELF), Err(Errno::EINVAL));
        assert_eq!(m.update(&mut g, s.l2, 1, make(Mfn(0), RO | PSE), SELF), Err(Errno::EINVAL));
        // In a table being promoted, too.
        let t = m.alloc(&g);
        let u = m.alloc(&g);
        m.mem.write_pte(t, 0, make(u, RO | PSE));
        assert_eq!(m.ext(&mut g, mmuext::PIN_L2_TABLE, t.0, 0).result, Err(Errno::EINVAL));
        assert_eq!(m.ext(&mut g, mmuext::PIN_L3_TABLE, t.0, 0).result, Err(Errno::EINVAL));
        assert_eq!((m.info(t).ty, m.info(u).ty), (PageType::None, PageType::None));
        m.audit(&[&g]);
    }

    #[test]
    fn cache_attributes_need_io_access() {
        let (mut m, mut g, s) = one_guest();
        for bits in [PWT, PCD, PAT] {
            assert_eq!(m.update(&mut g, s.l1, 9, make(s.data[0], RO | bits), SELF), Err(Errno::EINVAL));
        }
        // Not even in a fast-path change of an existing entry.
        assert_eq!(m.update(&mut g, s.l1, 0, make(s.data[0], RWF | PCD), SELF), Err(Errno::EINVAL));
        let mut d0 = m.guest(0, true, 16);
        let s0 = m.build_space(&mut d0);
        assert_eq!(m.update(&mut d0, s0.l1, 9, make(s0.data[0], RO | PCD | PWT), SELF), Ok(()));
        assert_eq!(m.update(&mut d0, s0.l2, 9, make(s0.l1, RO | PCD), SELF), Err(Errno::EINVAL));
        m.audit(&[&g, &d0]);
    }

    #[test]
    fn global_and_grant_bits() {
        let (mut m, mut g, s) = one_guest();
        assert_eq!(
            m.update(&mut g, s.l1, 9, make(s.data[0], RO | GLOBAL | NX | pte::AVAIL_LOW), SELF),
            Ok(())
        );
        assert_eq!(m.update(&mut g, s.l2, 9, make(s.l1, RO | GLOBAL), SELF), Err(Errno::EINVAL));
        assert_eq!(m.update(&mut g, s.l3, 9, make(s.l2, RO | GLOBAL), SELF), Err(Errno::EINVAL));
        assert_eq!(m.update(&mut g, s.l1, 10, make(s.data[0], RO | GNTTAB), SELF), Err(Errno::EINVAL));
        // An entry the grant code made is not the guest's to replace.
        m.mem.write_pte(s.l1, 11, make(s.data[1], RO | GNTTAB));
        assert_eq!(m.update(&mut g, s.l1, 11, 0, SELF), Err(Errno::EINVAL));
        m.mem.write_pte(s.l1, 11, 0);
        m.audit(&[&g]);
    }

    #[test]
    fn hypervisor_and_foreign_frames_are_ebusy() {
        let (mut m, mut g, s) = one_guest();
        let other = m.guest(2, false, 8);
        let foreign = m.alloc(&other);
        for (t, flags) in [
            (Mfn(0), RO),
            (Mfn(3), RWF),
            (Mfn(M2P_FRAMES.start), RO),
            (Mfn(M2P_FRAMES.start), RWF),
            (foreign, RO),
            (foreign, RWF),
        ] {
            assert_eq!(m.update(&mut g, s.l1, 9, make(t, flags), SELF), Err(Errno::EBUSY), "{t:?}");
        }
        // Free frames are nobody's.
        let free = Mfn(63);
        assert_eq!(m.ft.owner(free), Some(crate::mm::frame_table::Owner::Free));
        assert_eq!(m.update(&mut g, s.l1, 9, make(free, RO), SELF), Err(Errno::EBUSY));
        // Foreign and hypervisor frames as tables: EINVAL.
        assert_eq!(m.update(&mut g, s.l2, 9, make(foreign, RO), SELF), Err(Errno::EINVAL));
        assert_eq!(m.update(&mut g, s.l2, 9, make(Mfn(1), RO), SELF), Err(Errno::EINVAL));
        m.audit(&[&g]);
    }

    #[test]
    fn m2p_frames_are_read_only_for_privileged_domains() {
        let mut m = Machine::new(64);
        let mut d0 = m.guest(0, true, 16);
        let s0 = m.build_space(&mut d0);
        let mut g = m.guest(1, false, 16);
        let s = m.build_space(&mut g);
        let xen = u32::from(DomId::XEN.0);
        let m2p = Mfn(M2P_FRAMES.start);
        assert_eq!(m.update(&mut d0, s0.l1, 9, make(m2p, RO), xen), Ok(()));
        assert_eq!(m.update(&mut d0, s0.l1, 10, make(m2p, RWF), xen), Err(Errno::EBUSY));
        assert_eq!(m.update(&mut d0, s0.l1, 10, make(Mfn(0), RO), xen), Err(Errno::EBUSY));
        assert_eq!(m.update(&mut g, s.l1, 9, make(m2p, RO), xen), Err(Errno::EPERM));
        m.audit(&[&g, &d0]);
        assert_eq!(m.update(&mut d0, s0.l1, 9, 0, SELF), Ok(()));
        assert_eq!(m.info(m2p).count, 1);
        m.audit(&[&g, &d0]);
    }

    #[test]
    fn privileged_foreign_mappings() {
        let mut m = Machine::new(64);
        let mut d0 = m.guest(0, true, 16);
        let s0 = m.build_space(&mut d0);
        let mut g = m.guest(1, false, 16);
        let s = m.build_space(&mut g);
        assert_eq!(m.update(&mut d0, s0.l1, 9, make(s.data[0], RWF), 1), Ok(()));
        assert_eq!(m.update(&mut d0, s0.l1, 10, make(s.l1, RO), 1), Ok(()));
        assert_eq!(m.update(&mut d0, s0.l1, 11, make(s.l1, RWF), 1), Err(Errno::EBUSY));
        // Without naming the owner, or with a wrong one: refused.
        assert_eq!(m.update(&mut d0, s0.l1, 11, make(s.data[1], RO), SELF), Err(Errno::EBUSY));
        // Upper-level entries cannot mix owners.
        assert_eq!(m.update(&mut d0, s0.l2, 11, make(s0.l1, RO), 1), Err(Errno::EINVAL));
        // dom0 may edit the domU's tables when naming it as page-table owner (domain
        // building); the L1 entries then map the domU's frames.
        assert_eq!(m.update(&mut d0, s.l1, 12, make(s.data[1], RWF), (2 << 16) | 1), Ok(()));
        assert_eq!(m.update(&mut d0, s.l1, 13, make(s0.data[1], RWF), (2 << 16) | 1), Err(Errno::EBUSY));
        m.audit(&[&g, &d0]);
    }

    #[test]
    fn frames_beyond_the_table_are_refused() {
        // XSA-173.
        let (mut m, mut g, s) = one_guest();
        for far in [Mfn(64), Mfn(65), Mfn(1 << 39)] {
            assert_eq!(m.update(&mut g, s.l1, 9, make(far, RO), SELF), Err(Errno::EPERM));
            assert_eq!(m.update(&mut g, s.l2, 9, make(far, RO), SELF), Err(Errno::EINVAL));
            assert_eq!(m.update(&mut g, s.l4, 9, make(far, RO), SELF), Err(Errno::EINVAL));
        }
        let t = m.alloc(&g);
        m.mem.write_pte(t, 0, make(Mfn(64), RO));
        assert_eq!(m.ext(&mut g, mmuext::PIN_L1_TABLE, t.0, 0).result, Err(Errno::EPERM));
        m.audit(&[&g]);
    }

    #[test]
    fn io_frames_need_permission_and_are_mapped_uncached() {
        let mut m = Machine::new(64);
        let mut d0 = m.guest(0, true, 16);
        let s0 = m.build_space(&mut d0);
        let mut g = m.guest(1, false, 16);
        let s = m.build_space(&mut g);
        let io = Mfn(IO_FRAMES.start);
        assert_eq!(m.update(&mut g, s.l1, 9, make(io, RWF), SELF), Err(Errno::EPERM));
        assert_eq!(m.update(&mut g, s.l1, 9, make(io, RWF), u32::from(DomId::IO.0)), Err(Errno::EPERM));
        assert_eq!(m.update(&mut d0, s0.l1, 9, make(io, RWF), SELF), Ok(()));
        assert_eq!(m.mem.read_pte(s0.l1, 9) & CACHE_ATTRS, PWT | PCD);
        assert_eq!(m.update(&mut d0, s0.l1, 10, make(io, RWF | PWT), u32::from(DomId::IO.0)), Ok(()));
        assert_eq!(m.mem.read_pte(s0.l1, 10) & CACHE_ATTRS, PWT | PCD);
        assert_eq!(m.update(&mut d0, s0.l1, 11, make(io, RWF | PCD), SELF), Ok(()));
        assert_eq!(m.mem.read_pte(s0.l1, 11) & CACHE_ATTRS, PCD);
        // No reference counting for device memory.
        assert_eq!((m.info(io).count, m.info(io).type_count), (0, 0));
        assert_eq!(m.update(&mut d0, s0.l1, 9, 0, SELF), Ok(()));
        // I/O frames are not tables.
        assert_eq!(m.update(&mut d0, s0.l2, 9, make(io, RO), SELF), Err(Errno::EINVAL));
        m.audit(&[&g, &d0]);
    }

    #[test]
    fn hypervisor_l4_slots_belong_to_the_hypervisor() {
        let (mut m, mut g, s) = one_guest();
        for slot in [256, 258, 271] {
            assert_eq!(m.update(&mut g, s.l4, slot, 0, SELF), Err(Errno::EINVAL));
        }
        assert_eq!(m.mem.read_pte(s.l4, 256), XEN_SLOT_256);
        let l3 = m.alloc(&g);
        assert_eq!(m.update(&mut g, s.l4, 272, make(l3, RWF), SELF), Ok(()));
        assert_eq!(m.update(&mut g, s.l4, 511, make(l3, RWF), SELF), Ok(()));
        assert_eq!(m.info(l3).type_count, 2);
        // Whatever a guest leaves in those slots of a new L4 is never looked at, and replaced.
        let t = m.alloc(&g);
        m.mem.write_pte(t, 257, make(s.l1, RWF | PSE));
        m.mem.write_pte(t, 260, make(Mfn(0), RWF));
        assert_eq!(m.ext(&mut g, mmuext::PIN_L4_TABLE, t.0, 0).result, Ok(()));
        assert_eq!(m.mem.read_pte(t, 257), 0);
        assert_eq!(m.mem.read_pte(t, 260), 0);
        assert_eq!(m.mem.read_pte(t, 256), XEN_SLOT_256);
        m.audit(&[&g]);
    }

    #[test]
    fn guest_flags_are_adjusted() {
        let (mut m, mut g, s) = one_guest();
        // build_space wrote US on all its entries: user mappings get G, L4 entries A.
        assert_eq!(m.mem.read_pte(s.l1, 0) & (GLOBAL | GUEST_KERNEL | USER), GLOBAL | USER);
        assert_eq!(m.mem.read_pte(s.l4, 0) & (ACCESSED | USER), ACCESSED | USER);
        // A kernel-only mapping becomes US + GUEST_KERNEL, without G.
        assert_eq!(m.update(&mut g, s.l1, 9, make(s.data[0], PRESENT), SELF), Ok(()));
        assert_eq!(m.mem.read_pte(s.l1, 9) & (GLOBAL | GUEST_KERNEL | USER), GUEST_KERNEL | USER);
        // Upper levels get US; L4 also A.
        let l1 = m.alloc(&g);
        assert_eq!(m.update(&mut g, s.l2, 9, make(l1, PRESENT | RW), SELF), Ok(()));
        assert_eq!(m.mem.read_pte(s.l2, 9), make(l1, PRESENT | RW | USER));
        let l3 = m.alloc(&g);
        assert_eq!(m.update(&mut g, s.l4, 9, make(l3, PRESENT | RW), SELF), Ok(()));
        assert_eq!(m.mem.read_pte(s.l4, 9), make(l3, PRESENT | RW | USER | ACCESSED));
        // Not-present entries are stored as given (this one L1TF-safe: Linux's inverted
        // swap-entry form, its address above anything cacheable).
        let swap = 0x000f_ffff_fffa_5000 | 0x40;
        assert_eq!(m.update(&mut g, s.l1, 9, swap, SELF), Ok(()));
        assert_eq!(m.mem.read_pte(s.l1, 9), swap);
        // In a promoted table, too.
        let t = m.alloc(&g);
        m.mem.write_pte(t, 0, make(s.data[0], PRESENT | NX));
        assert_eq!(m.ext(&mut g, mmuext::PIN_L1_TABLE, t.0, 0).result, Ok(()));
        assert_eq!(m.mem.read_pte(t, 0), make(s.data[0], PRESENT | NX | USER | GUEST_KERNEL));
        m.audit(&[&g]);
    }

    #[test]
    fn flag_changes_keep_or_move_references() {
        let (mut m, mut g, s) = one_guest();
        let d = s.data[0];
        let base = m.info(d);
        assert_eq!((base.count, base.type_count, base.ty), (2, 1, PageType::Writable));
        // Accessed/dirty/NX/software bits: no reference change.
        assert_eq!(m.update(&mut g, s.l1, 0, make(d, RWF | DIRTY | NX | (1 << 55)), SELF), Ok(()));
        assert_eq!(m.info(d), base);
        // RW -> RO drops the type reference, RO -> RW takes it again.
        assert_eq!(m.update(&mut g, s.l1, 0, make(d, RO), SELF), Ok(()));
        assert_eq!((m.info(d).count, m.info(d).type_count), (2, 0));
        assert_eq!(m.update(&mut g, s.l1, 0, make(d, RWF), SELF), Ok(()));
        assert_eq!(m.info(d), base);
        // Pointing elsewhere moves the references.
        assert_eq!(m.update(&mut g, s.l1, 0, make(s.data[1], RWF), SELF), Ok(()));
        assert_eq!((m.info(d).count, m.info(d).type_count), (1, 0));
        assert_eq!((m.info(s.data[1]).count, m.info(s.data[1]).type_count), (3, 2));
        m.audit(&[&g]);
    }

    #[test]
    fn preserve_ad_keeps_hardware_bits() {
        let (mut m, mut g, s) = one_guest();
        let e = m.mem.read_pte(s.l1, 1);
        m.mem.write_pte(s.l1, 1, e | DIRTY);
        let req = hypercall_abi::xen::MmuUpdate {
            ptr: (s.l1.addr() + 8) | hypercall_abi::xen::mmu::PT_UPDATE_PRESERVE_AD,
            val: make(s.data[1], PRESENT | RW | USER),
        };
        let r = m.run(&mut g, |ft, mem, ctx| crate::mm::mmu::mmu_update(ft, mem, ctx, &[req], SELF, 1));
        assert_eq!(r.result, Ok(()));
        assert_eq!(m.mem.read_pte(s.l1, 1) & (ACCESSED | DIRTY), ACCESSED | DIRTY);
        m.audit(&[&g]);
    }

    #[test]
    fn failed_promotion_takes_nothing() {
        let (mut m, mut g, s) = one_guest();
        let free_before = m.ft.nr_free();
        // An L1 whose fifth entry maps a page table writable.
        let l1 = m.alloc(&g);
        for i in 0..4 {
            m.mem.write_pte(l1, i, make(s.data[i], RWF));
        }
        m.mem.write_pte(l1, 4, make(s.l3, RWF));
        let snapshot: Vec<_> = s.data.iter().map(|&d| m.info(d)).collect();
        assert_eq!(m.ext(&mut g, mmuext::PIN_L1_TABLE, l1.0, 0).result, Err(Errno::EBUSY));
        assert_eq!(m.info(l1).ty, PageType::None);
        assert_eq!(s.data.iter().map(|&d| m.info(d)).collect::<Vec<_>>(), snapshot);
        m.audit(&[&g]);
        // The same failure three levels down, while promoting an L4 through new tables.
        let (l4, l3, l2) = (m.alloc(&g), m.alloc(&g), m.alloc(&g));
        m.mem.write_pte(l4, 0, make(l3, RWF));
        m.mem.write_pte(l3, 0, make(l2, RWF));
        m.mem.write_pte(l2, 0, make(s.l1, RWF)); // shares the live L1: fine
        m.mem.write_pte(l2, 1, make(l1, RWF)); // the bad L1
        let l1_before = m.info(s.l1);
        assert_eq!(m.ext(&mut g, mmuext::NEW_BASEPTR, l4.0, 0).result, Err(Errno::EBUSY));
        assert_eq!(g.kernel_l4, Some(s.l4));
        for t in [l4, l3, l2, l1] {
            assert_eq!((m.info(t).ty, m.info(t).type_count, m.info(t).count), (PageType::None, 0, 1));
        }
        assert_eq!(m.info(s.l1), l1_before);
        m.audit(&[&g]);
        // Fixing the bad entry makes the whole tree valid.
        m.mem.write_pte(l1, 4, make(s.l3, RO));
        assert_eq!(m.ext(&mut g, mmuext::NEW_BASEPTR, l4.0, 0).result, Ok(()));
        assert_eq!(m.info(s.l1).type_count, l1_before.type_count + 1);
        m.audit(&[&g]);
        assert_eq!(m.ft.nr_free(), free_before - 4);
    }
}
