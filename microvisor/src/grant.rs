//! Grant tables v1: how one domain lets another map or copy one of its frames, and the
//! bookkeeping that keeps that safe when both sides are hostile.
//!
//! Each domain has a table of `grant_entry_v1` in hypervisor frames it maps read-write
//! ([`GrantTable`]). The granting guest writes entries; the hypervisor reads them with single
//! atomic loads and sets `GTF_reading`/`GTF_writing` with `cmpxchg` while a grantee uses the
//! frame, which is what stops the granter from revoking (its own `cmpxchg` to 0 then fails).
//! Nothing read from an entry is trusted twice: one load gives flags, domid and frame together,
//! the checks run on that copy, and the flags `cmpxchg` expects exactly the flags checked
//! (`MachineMemory` offers a 16-bit `cmpxchg` only, where Xen swaps flags and domid as one
//! 32-bit word, so domid and frame are loaded again afterwards and a change undoes the pin).
//!
//! The hypervisor keeps a private "active" record per entry (who pinned it, which frame, how
//! many read-only and writable uses), and each mapping domain a maptrack table of its
//! mappings (the handles returned to the guest). A mapping holds, per use (host mapping,
//! device mapping), a general reference on the frame (so it stays allocated even if the
//! granter gives it up) and, when writable, a `Writable` type reference (so it can never become
//! a page table). Host mappings are L1 entries marked with `_PAGE_GNTTAB`, which the page-table
//! code neither counts nor lets the guest replace; this module owns their references.
//!
//! Everything here is single-threaded like the frame table (one CPU, interrupts off), so the
//! active records and maptrack need no locks; only the guest-shared entries need atomics.

use crate::domain::{DomainState, Domains, MemQuota};
use crate::mm::frame_table::{ExternalRef, FrameTable, Owner, PageType};
use crate::mm::pagetable::{adjust_guest_l1e, put_page_from_l1e};
use crate::mm::tlb::Flush;
use crate::mm::{pte, MachineMemory};
use alloc::boxed::Box;
use alloc::vec::Vec;
use hypercall_abi::grant_table::{
    gntcopy, gntmap, gntst, gtf, GnttabCopy, GnttabCopyPtr, GnttabMapGrantRef, GnttabUnmapAndReplace,
    GnttabUnmapGrantRef, GrantEntryV1, GRANT_ENTRIES_PER_FRAME_V1,
};
use hypercall_abi::xen::{in_hypervisor_hole, is_canonical};
use hypercall_abi::{DomId, Errno, GrantRef, Mfn, PAGE_SIZE};

/// Largest table a domain may grow to, in frames (Xen's `max_grant_frames` default for
/// domains built without a toolstack setting).
pub const MAX_GRANT_FRAMES: u32 = 32;
/// Frames a table has from domain creation (Xen's `INITIAL_NR_GRANT_FRAMES` on x86).
pub const INITIAL_GRANT_FRAMES: u32 = 1;
/// Maptrack entries added at a time when a domain runs out of handles.
pub const MAPTRACK_CHUNK: u32 = 256;
/// Most mappings one domain may hold at once (its handle space).
pub const MAX_MAPTRACK: u32 = 16384;
/// `cmpxchg` attempts on a guest-shared entry before giving up (a guest rewriting its entry
/// faster than we can update it must not livelock the hypervisor).
const SET_STATUS_ATTEMPTS: u32 = 5;

/// A `GNTST_*` status.
pub type Status = i16;

/// Where a host mapping's L1 entry lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PteLoc {
    pub l1: Mfn,
    pub idx: u16,
}

/// The hypervisor's record of one grant entry in use (Xen's `active_grant_entry`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Active {
    /// Read-only uses (mappings and copies in progress).
    reads: u32,
    /// Writable uses.
    writes: u32,
    /// The domain using it; a pinned entry serves only this domain.
    domid: DomId,
    /// The frame read from the entry when it was first pinned.
    mfn: Mfn,
}

impl Active {
    fn pinned(&self) -> bool {
        self.reads != 0 || self.writes != 0
    }
}

/// One v1 entry as loaded from the shared table, decoded from a single 8-byte load.
fn decode(raw: u64) -> GrantEntryV1 {
    GrantEntryV1 { flags: raw as u16, domid: DomId((raw >> 16) as u16), frame: (raw >> 32) as u32 }
}

/// A domain's grant table: the shared frames holding its entries, the active records, and
/// its maptrack (the mappings it holds of other domains' grants).
pub struct GrantTable {
    shared: Vec<Mfn>,
    active: Vec<Active>,
    max_frames: u32,
    /// Mappings this domain holds as a grantee.
    pub maptrack: Maptrack,
}

impl GrantTable {
    /// An empty table (no frames yet) that may grow to `max_frames`.
    pub fn new(max_frames: u32) -> GrantTable {
        GrantTable { shared: Vec::new(), active: Vec::new(), max_frames, maptrack: Maptrack::new() }
    }

    /// Frames the table has.
    pub fn nr_frames(&self) -> u32 {
        self.shared.len() as u32
    }

    /// Frames the table may grow to.
    pub fn max_frames(&self) -> u32 {
        self.max_frames
    }

    /// Number of entries (valid references are below it).
    pub fn nr_entries(&self) -> u32 {
        self.nr_frames() * GRANT_ENTRIES_PER_FRAME_V1
    }

    /// The table's frames, in order.
    pub fn frames(&self) -> &[Mfn] {
        &self.shared
    }

    /// Grows the table to `nr` frames (never shrinks), lending new zeroed hypervisor frames
    /// to `owner` read-write; the heap for the new active entries is charged to `quota`. On
    /// failure nothing changes.
    pub fn grow<M: MachineMemory>(
        &mut self,
        ft: &mut FrameTable,
        mem: &M,
        owner: DomId,
        nr: u32,
        quota: &mut MemQuota,
    ) -> Result<(), Errno> {
        if nr > self.max_frames {
            return Err(Errno::EINVAL);
        }
        let have = self.shared.len();
        let want = nr as usize;
        if want <= have {
            return Ok(());
        }
        if owner == DomId::XEN || ft.domain(owner).is_none() {
            return Err(Errno::ESRCH);
        }
        let entries = want * GRANT_ENTRIES_PER_FRAME_V1 as usize;
        let bytes = (want - have) * core::mem::size_of::<Mfn>()
            + (entries - self.active.len()) * core::mem::size_of::<Active>();
        quota.charge(bytes)?;
        let reserved = self
            .shared
            .try_reserve_exact(want - have)
            .and_then(|()| self.active.try_reserve_exact(entries - self.active.len()));
        if reserved.is_err() {
            quota.uncharge(bytes);
            return Err(Errno::ENOMEM);
        }
        // Allocate everything first: a fresh hypervisor frame can be freed again, a shared
        // one only through its domain's relinquish.
        let first_new = self.shared.len();
        for _ in have..want {
            match ft.alloc_xen_frame(mem) {
                Some(mfn) => self.shared.push(mfn),
                None => {
                    for mfn in self.shared.drain(first_new..) {
                        let _ = ft.free_frame(mem, mfn);
                    }
                    quota.uncharge(bytes);
                    return Err(Errno::ENOMEM);
                }
            }
        }
        for &mfn in &self.shared[first_new..] {
            // Cannot fail: the frame is fresh and the domain was checked above.
            let shared = ft.share_xen_frame(mfn, owner, true);
            debug_assert!(shared.is_ok());
        }
        self.active.resize(entries, Active::default());
        Ok(())
    }

    /// Heap the table's bookkeeping takes now (active entries, frame list, maptrack), what
    /// its domain's quota was charged for it.
    pub fn heap_bytes(&self) -> usize {
        self.shared.capacity() * core::mem::size_of::<Mfn>()
            + self.active.capacity() * core::mem::size_of::<Active>()
            + self.maptrack.heap_bytes()
    }

    /// Gives up the table (its domain is being destroyed): returns its frames, which the
    /// domain's relinquish hands back to the hypervisor. Pins other domains hold on its
    /// entries are forgotten; their mappings keep their frame references and are released
    /// without touching the table.
    pub fn teardown(&mut self) -> Vec<Mfn> {
        self.active = Vec::new();
        core::mem::take(&mut self.shared)
    }

    /// Machine address of entry `gref`, if it exists.
    pub fn entry_ma(&self, gref: GrantRef) -> Option<u64> {
        if gref.0 >= self.nr_entries() {
            return None;
        }
        let per = GRANT_ENTRIES_PER_FRAME_V1;
        let frame = self.shared[(gref.0 / per) as usize];
        Some(frame.addr() + u64::from(gref.0 % per) * core::mem::size_of::<GrantEntryV1>() as u64)
    }

    /// Entry `gref` as the guest last wrote it (one atomic load).
    pub fn read_entry<M: MachineMemory>(&self, mem: &M, gref: GrantRef) -> Option<GrantEntryV1> {
        self.entry_ma(gref).map(|ma| decode(mem.read_u64(ma)))
    }

    /// Writes a `GTF_permit_access` entry for `domid` to `frame` with one store, as the
    /// toolstack seeds the reserved console and xenstore references.
    pub fn seed<M: MachineMemory>(
        &self,
        mem: &M,
        gref: GrantRef,
        domid: DomId,
        frame: Mfn,
    ) -> Result<(), Errno> {
        let ma = self.entry_ma(gref).ok_or(Errno::EINVAL)?;
        let frame = u32::try_from(frame.0).map_err(|_| Errno::ERANGE)?;
        let raw = u64::from(gtf::PERMIT_ACCESS) | u64::from(domid.0) << 16 | u64::from(frame) << 32;
        mem.write_u64(ma, raw);
        Ok(())
    }

    /// Read-only and writable uses of entry `gref` (for tests and diagnostics).
    pub fn pins(&self, gref: GrantRef) -> Option<(u32, u32)> {
        self.active.get(gref.0 as usize).filter(|_| gref.0 < self.nr_entries()).map(|a| (a.reads, a.writes))
    }

    /// Pins entry `gref` for `pin.uses` uses by `pin.grantee` (Xen's `_set_status` plus
    /// `get_paged_frame`): the first pin checks the entry grants `granter`'s frame to the
    /// grantee and sets `GTF_reading` (and `GTF_writing` for a writable use of a grant that is
    /// not read-only). Returns the frame with one general reference taken on it.
    ///
    /// A writable use of an entry pinned only for reading so far checks the entry again
    /// (still a full-page grant of the pinned frame to the grantee, not read-only): the
    /// granter may have rewritten it meanwhile, and a grantee must not gain write access the
    /// entry no longer gives. Xen 4.17 re-checks only `GTF_readonly` there; this is stricter.
    pub fn acquire<M: MachineMemory>(
        &mut self,
        ft: &mut FrameTable,
        mem: &M,
        granter: DomId,
        gref: GrantRef,
        pin: Pin,
    ) -> Result<Mfn, Status> {
        let ma = self.entry_ma(gref).ok_or(gntst::BAD_GNTREF)?;
        let i = gref.0 as usize;
        let act = self.active[i];
        let pinned = act.pinned();
        if pinned && act.domid != pin.grantee {
            return Err(gntst::GENERAL_ERROR);
        }
        // Xen refuses a pin that risks overflowing its 8-bit counters. Ours cannot overflow:
        // one grantee holds an entry, with at most MAX_MAPTRACK mappings of two uses each
        // plus one copy in progress.
        debug_assert!(act.reads.max(act.writes) < 2 * MAX_MAPTRACK + 2);
        let writable = pin.access == Access::Writable;
        let mut mfn = act.mfn;
        if !pinned || (writable && act.writes == 0) {
            // Any frame field matches on the first pin; later, only the pinned frame.
            let expect = if pinned { act.mfn.0 } else { ANY_FRAME };
            let frame = set_status(mem, ma, pin.grantee, pin.access, pin.purpose, expect)?;
            if !pinned {
                mfn = Mfn(u64::from(frame));
            }
            // Xen's get_paged_frame: the granted frame must be the granter's.
            if ft.get_page(mfn, granter).is_err() {
                let mut clear = 0;
                if writable {
                    clear |= gtf::WRITING;
                }
                if !pinned {
                    clear |= gtf::READING;
                }
                clear_flags(mem, ma, clear);
                return Err(if pinned { gntst::GENERAL_ERROR } else { gntst::BAD_PAGE });
            }
        } else if ft.get_page(mfn, granter).is_err() {
            return Err(gntst::GENERAL_ERROR);
        }
        let a = &mut self.active[i];
        a.domid = pin.grantee;
        a.mfn = mfn;
        match pin.access {
            Access::ReadOnly => a.reads += pin.uses,
            Access::Writable => a.writes += pin.uses,
        }
        Ok(mfn)
    }

    /// Drops `uses` uses of entry `gref` that [`GrantTable::acquire`] recorded for `grantee`
    /// on `mfn` (the caller drops the frame references). The last writable use clears
    /// `GTF_writing`, the last use `GTF_reading`. A record that no longer matches (the table
    /// was torn down) is left alone.
    pub fn release<M: MachineMemory>(
        &mut self,
        mem: &M,
        gref: GrantRef,
        grantee: DomId,
        mfn: Mfn,
        access: Access,
        uses: u32,
    ) {
        let Some(ma) = self.entry_ma(gref) else { return };
        let a = &mut self.active[gref.0 as usize];
        if !a.pinned() || a.domid != grantee || a.mfn != mfn {
            return;
        }
        let count = match access {
            Access::ReadOnly => &mut a.reads,
            Access::Writable => &mut a.writes,
        };
        debug_assert!(*count >= uses, "grant use count underflow");
        *count = count.saturating_sub(uses);
        let mut clear = 0;
        if access == Access::Writable && a.writes == 0 {
            clear |= gtf::WRITING;
        }
        if !a.pinned() {
            clear |= gtf::READING;
        }
        clear_flags(mem, ma, clear);
    }
}

/// Whether a use of a granted frame may write to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    Writable,
}

impl Access {
    /// `GNTMAP_readonly` in a map request's flags.
    pub fn of_map_flags(flags: u32) -> Access {
        if flags & gntmap::READONLY != 0 {
            Access::ReadOnly
        } else {
            Access::Writable
        }
    }
}

/// What an entry is pinned for: a mapping must be of a whole page (no `GTF_sub_page`), a
/// copy may use part of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Map,
    Copy,
}

/// A request to pin a grant entry ([`GrantTable::acquire`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pin {
    /// The domain that will use the frame.
    pub grantee: DomId,
    pub access: Access,
    /// Uses taken at once (a mapping's host and device parts).
    pub uses: u32,
    pub purpose: Purpose,
}

/// [`set_status`]'s `expect` on a first pin: the entry may name any frame.
const ANY_FRAME: u64 = u64::MAX;

/// Sets `GTF_reading` (and `GTF_writing` for a writable pin) in the entry at `ma`, checking
/// first that it is a `GTF_permit_access` grant to the grantee — on the first pin, and on a
/// writable pin of an entry already pinned for reading (`expect` = the pinned frame, which the
/// entry must still name; [`ANY_FRAME`] on a first pin). A writable use of a `GTF_readonly` grant is refused. Returns the
/// frame field loaded together with the flags that passed. The guest may race with us; after
/// a few failed attempts the entry counts as unstable.
fn set_status<M: MachineMemory>(
    mem: &M,
    ma: u64,
    grantee: DomId,
    access: Access,
    purpose: Purpose,
    expect: u64,
) -> Result<u32, Status> {
    let mask = gtf::TYPE_MASK | if purpose == Purpose::Map { gtf::SUB_PAGE } else { 0 };
    let writable = access == Access::Writable;
    for _ in 0..SET_STATUS_ATTEMPTS {
        let e = decode(mem.read_u64(ma));
        if e.flags & mask != gtf::PERMIT_ACCESS
            || e.domid != grantee
            || (expect != ANY_FRAME && u64::from(e.frame) != expect)
        {
            return Err(gntst::GENERAL_ERROR);
        }
        let mut new = e.flags | gtf::READING;
        if writable {
            if e.flags & gtf::READONLY != 0 {
                return Err(gntst::GENERAL_ERROR);
            }
            new |= gtf::WRITING;
        }
        if mem.cmpxchg_u16(ma, e.flags, new) != e.flags {
            continue;
        }
        // The flags cmpxchg does not cover domid and frame: if the guest changed them
        // meanwhile, the entry we checked is not the one we pinned.
        let now = decode(mem.read_u64(ma));
        if now.domid != e.domid || now.frame != e.frame {
            clear_flags(mem, ma, new & !e.flags);
            return Err(gntst::GENERAL_ERROR);
        }
        return Ok(e.frame);
    }
    Err(gntst::GENERAL_ERROR)
}

/// Atomically clears flag bits of the entry at `ma` (domid and frame are untouched).
fn clear_flags<M: MachineMemory>(mem: &M, ma: u64, bits: u16) {
    if bits != 0 {
        mem.fetch_and_u64(ma, !u64::from(bits));
    }
}

// ---------------------------------------------------------------------------------------------
// Maptrack

const NIL: u32 = u32::MAX;

/// One mapping a domain holds of another domain's grant (Xen's `grant_mapping`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mapping {
    /// `GNTMAP_*` bits of the map request; `host_map`/`device_map` are cleared as each part
    /// is unmapped. 0 = free slot.
    pub flags: u32,
    /// The granting domain.
    pub domid: DomId,
    pub gref: GrantRef,
    pub mfn: Mfn,
    /// `host_addr` of the map request (a VA, or with `contains_pte` the L1e's address).
    pub host_addr: u64,
    /// Where the host mapping's L1 entry was written.
    pub pte: Option<PteLoc>,
    next_free: u32,
}

impl Mapping {
    /// True while the mapping still holds a host or device part.
    pub fn is_live(&self) -> bool {
        self.flags & (gntmap::HOST_MAP | gntmap::DEVICE_MAP) != 0
    }

    /// True for a read-only mapping.
    pub fn readonly(&self) -> bool {
        self.flags & gntmap::READONLY != 0
    }

    /// What the mapping may do with the frame.
    pub fn access(&self) -> Access {
        Access::of_map_flags(self.flags)
    }

    /// Number of uses (host and device parts) still held.
    pub fn uses(&self) -> u32 {
        uses_of(self.flags)
    }
}

fn uses_of(flags: u32) -> u32 {
    u32::from(flags & gntmap::HOST_MAP != 0) + u32::from(flags & gntmap::DEVICE_MAP != 0)
}

/// A domain's mappings, indexed by handle. Grows a chunk at a time up to [`MAX_MAPTRACK`];
/// freed handles are reused first, so steady map/unmap traffic allocates nothing.
pub struct Maptrack {
    chunks: Vec<Box<[Mapping]>>,
    free: u32,
    live: u32,
}

impl Default for Maptrack {
    fn default() -> Self {
        Maptrack::new()
    }
}

impl Maptrack {
    pub fn new() -> Maptrack {
        Maptrack { chunks: Vec::new(), free: NIL, live: 0 }
    }

    /// Handles that exist (live or free).
    pub fn limit(&self) -> u32 {
        self.chunks.len() as u32 * MAPTRACK_CHUNK
    }

    /// Live mappings.
    pub fn live(&self) -> u32 {
        self.live
    }

    fn slot(&self, h: u32) -> Option<&Mapping> {
        self.chunks.get((h / MAPTRACK_CHUNK) as usize).map(|c| &c[(h % MAPTRACK_CHUNK) as usize])
    }

    fn slot_mut(&mut self, h: u32) -> Option<&mut Mapping> {
        self.chunks.get_mut((h / MAPTRACK_CHUNK) as usize).map(|c| &mut c[(h % MAPTRACK_CHUNK) as usize])
    }

    /// Heap the maptrack takes.
    pub fn heap_bytes(&self) -> usize {
        self.chunks.capacity() * core::mem::size_of::<Box<[Mapping]>>()
            + self.chunks.len() * MAPTRACK_CHUNK as usize * core::mem::size_of::<Mapping>()
    }

    /// A free handle (its slot stays free until [`Maptrack::set`]), or `None` when the
    /// domain holds [`MAX_MAPTRACK`] mappings or its `quota` or the heap ran out.
    fn alloc(&mut self, quota: &mut MemQuota) -> Option<u32> {
        if self.free == NIL {
            self.grow(quota)?;
        }
        let h = self.free;
        self.free = self.slot(h).map_or(NIL, |m| m.next_free);
        Some(h)
    }

    /// Adds a chunk of free handles (out of line: its allocation code would otherwise cost
    /// every `alloc` register saves).
    #[cold]
    #[inline(never)]
    fn grow(&mut self, quota: &mut MemQuota) -> Option<()> {
        let base = self.limit();
        if base >= MAX_MAPTRACK {
            return None;
        }
        if self.chunks.capacity() == 0 {
            // The chunk list, for the most chunks there can be, once.
            let n = (MAX_MAPTRACK / MAPTRACK_CHUNK) as usize;
            quota.charge(n * core::mem::size_of::<Box<[Mapping]>>()).ok()?;
            if self.chunks.try_reserve_exact(n).is_err() {
                quota.uncharge(n * core::mem::size_of::<Box<[Mapping]>>());
                return None;
            }
        }
        let bytes = MAPTRACK_CHUNK as usize * core::mem::size_of::<Mapping>();
        quota.charge(bytes).ok()?;
        let mut chunk = Vec::new();
        if chunk.try_reserve_exact(MAPTRACK_CHUNK as usize).is_err() {
            quota.uncharge(bytes);
            return None;
        }
        chunk.extend((0..MAPTRACK_CHUNK).map(|i| Mapping {
            next_free: if i + 1 < MAPTRACK_CHUNK { base + i + 1 } else { NIL },
            ..Mapping::default()
        }));
        self.chunks.push(chunk.into_boxed_slice());
        self.free = base;
        Some(())
    }

    /// Records `m` under `h` (from [`Maptrack::alloc`]).
    fn set(&mut self, h: u32, m: Mapping) {
        if let Some(s) = self.slot_mut(h) {
            debug_assert!(!s.is_live());
            *s = Mapping { next_free: NIL, ..m };
            self.live += 1;
        }
    }

    /// Returns a handle from [`Maptrack::alloc`] that was never [`Maptrack::set`].
    fn unalloc(&mut self, h: u32) {
        let next = self.free;
        if let Some(s) = self.slot_mut(h) {
            *s = Mapping { next_free: next, ..Mapping::default() };
            self.free = h;
        }
    }

    /// Clears the `parts` (`host_map`/`device_map` bits) of mapping `h`, freeing the
    /// handle when none is left.
    fn clear_parts(&mut self, h: u32, parts: u32) {
        let Some(slot) = self.slot_mut(h) else { return };
        if !slot.is_live() {
            return;
        }
        slot.flags &= !parts;
        if !slot.is_live() {
            self.live -= 1;
            self.unalloc(h);
        }
    }

    /// The live mapping `h`.
    pub fn get(&self, h: u32) -> Option<&Mapping> {
        self.slot(h).filter(|m| m.is_live())
    }

    /// Every live mapping with its handle.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Mapping)> + '_ {
        self.chunks
            .iter()
            .enumerate()
            .flat_map(|(c, chunk)| {
                chunk.iter().enumerate().map(move |(i, m)| (c as u32 * MAPTRACK_CHUNK + i as u32, m))
            })
            .filter(|(_, m)| m.is_live())
    }
}

// ---------------------------------------------------------------------------------------------
// Host mappings (L1 entries)

/// The L1 entry of a host mapping: present, accessed, dirty, no-execute, marked as a grant
/// mapping, writable unless read-only, user for an application mapping (and, as for every PV
/// entry, adjusted so the ring-3 guest kernel can use it), with the guest's available bits.
pub fn grant_pte(mfn: Mfn, flags: u32) -> u64 {
    let mut f = pte::PRESENT | pte::ACCESSED | pte::DIRTY | pte::GNTTAB | pte::NX;
    if flags & gntmap::APPLICATION_MAP != 0 {
        f |= pte::USER;
    }
    if flags & gntmap::READONLY == 0 {
        f |= pte::RW;
    }
    f |= (u64::from(flags >> gntmap::GUEST_AVAIL0_SHIFT) << 9) & pte::AVAIL_LOW;
    adjust_guest_l1e(pte::make(mfn, f))
}

/// The L1 entry `va` uses in the page tables rooted at `l4` (Xen's `map_guest_l1e`): every
/// level above must be present and not a superpage.
fn walk_to_l1e<M: MachineMemory>(ft: &FrameTable, mem: &M, l4: Mfn, va: u64) -> Option<PteLoc> {
    if !is_canonical(va) || in_hypervisor_hole(va) {
        return None;
    }
    let mut table = l4;
    for level in (2..=4).rev() {
        if table >= ft.max_mfn() {
            return None;
        }
        let e = mem.read_pte(table, pte::table_index(va, level));
        if e & (pte::PRESENT | pte::PSE) != pte::PRESENT {
            return None;
        }
        table = pte::mfn(e);
    }
    Some(PteLoc { l1: table, idx: pte::table_index(va, 1) as u16 })
}

/// Where a host mapping for `caller` goes: `host_addr` is a VA in the page tables rooted at
/// `l4`, or with `contains_pte` the machine address of the L1 entry. Either way the entry
/// must be in a validated L1 table in use that `caller` owns.
fn locate_pte<M: MachineMemory>(
    ft: &FrameTable,
    mem: &M,
    caller: DomId,
    l4: Option<Mfn>,
    host_addr: u64,
    contains_pte: bool,
) -> Option<PteLoc> {
    let loc = if contains_pte {
        if !host_addr.is_multiple_of(8) {
            return None;
        }
        PteLoc { l1: Mfn(host_addr >> 12), idx: ((host_addr & (PAGE_SIZE as u64 - 1)) / 8) as u16 }
    } else {
        walk_to_l1e(ft, mem, l4?, host_addr)?
    };
    live_l1_of(ft, loc.l1, caller).then_some(loc)
}

fn live_l1_of(ft: &FrameTable, l1: Mfn, d: DomId) -> bool {
    ft.owner(l1) == Some(Owner::Domain(d)) && ft.is_live_type(l1, PageType::L1)
}

/// True if `e` is the host-mapping entry `m` installed (same frame and writability).
fn is_entry_of(e: u64, m: &Mapping) -> bool {
    pte::is_present(e) && e & pte::GNTTAB != 0 && pte::mfn(e) == m.mfn && (e & pte::RW == 0) == m.readonly()
}

/// The flush a change of the host mapping at `host_addr` needs.
fn host_flush(flags: u32, host_addr: u64) -> Flush {
    if flags & gntmap::CONTAINS_PTE != 0 {
        Flush::All
    } else {
        Flush::Page(host_addr)
    }
}

/// Removes the L1 entry of host mapping `m` of `caller` if it is still there: its table may
/// have stopped being a page table since (then nothing can reach the entry any more, and a
/// frame holding a grant entry is never validated as a table again), or the guest may have
/// reused the slot after such a demotion.
fn remove_host_pte<M: MachineMemory>(ft: &FrameTable, mem: &M, caller: DomId, m: &Mapping) -> Flush {
    if let Some(loc) = m.pte {
        if live_l1_of(ft, loc.l1, caller) && is_entry_of(mem.read_pte(loc.l1, usize::from(loc.idx)), m) {
            mem.write_pte(loc.l1, usize::from(loc.idx), 0);
        }
    }
    host_flush(m.flags, m.host_addr)
}

/// Moves the caller's L1 entry for `new_addr` into the slot of host mapping `m` (whose
/// references its caller then drops) and clears it at `new_addr`: the entry's references
/// move with it, so no count changes. Refused (nothing changed) when `m` was mapped through
/// `GNTMAP_contains_pte`, when its entry is no longer in place, when `new_addr` has no L1
/// entry in a live L1 table of the caller's, or (stricter than Xen) when that entry is itself
/// a grant mapping, whose references belong to a handle.
fn replace_host_pte<M: MachineMemory>(
    ft: &FrameTable,
    mem: &M,
    caller: DomId,
    l4: Option<Mfn>,
    m: &Mapping,
    new_addr: u64,
) -> Result<Flush, Status> {
    if m.flags & gntmap::CONTAINS_PTE != 0 {
        return Err(gntst::GENERAL_ERROR);
    }
    let dst = m.pte.ok_or(gntst::GENERAL_ERROR)?;
    if !live_l1_of(ft, dst.l1, caller) || !is_entry_of(mem.read_pte(dst.l1, usize::from(dst.idx)), m) {
        return Err(gntst::GENERAL_ERROR);
    }
    let src = locate_pte(ft, mem, caller, l4, new_addr, false).ok_or(gntst::GENERAL_ERROR)?;
    if src == dst {
        return Err(gntst::GENERAL_ERROR);
    }
    let e = mem.read_pte(src.l1, usize::from(src.idx));
    if pte::is_present(e) && e & pte::GNTTAB != 0 {
        return Err(gntst::GENERAL_ERROR);
    }
    mem.write_pte(src.l1, usize::from(src.idx), 0);
    mem.write_pte(dst.l1, usize::from(dst.idx), e);
    // Two addresses changed.
    Ok(Flush::All)
}

/// Drops the frame references `uses` uses of a mapping hold (a lent hypervisor frame whose
/// last reference this was is freed by the frame table).
fn put_refs<M: MachineMemory>(ft: &mut FrameTable, mem: &M, mfn: Mfn, readonly: bool, uses: u32) {
    if !readonly {
        for _ in 0..uses {
            ft.put_page_type(mem, mfn);
        }
    }
    for _ in 0..uses {
        ft.put_page(mfn);
    }
}

/// Takes the references beyond the one `acquire` took: `uses - 1` general ones and, for a
/// writable mapping, a `Writable` type reference per use. All or nothing.
fn get_extra_refs<M: MachineMemory>(
    ft: &mut FrameTable,
    mem: &M,
    mfn: Mfn,
    owner: DomId,
    readonly: bool,
    uses: u32,
) -> Result<(), Status> {
    let mut general = 0;
    let mut typed = 0;
    let mut ok = true;
    for _ in 1..uses {
        if ft.get_page(mfn, owner).is_err() {
            ok = false;
            break;
        }
        general += 1;
    }
    if ok && !readonly {
        for _ in 0..uses {
            if ft.get_page_type(mem, mfn, PageType::Writable).is_err() {
                ok = false;
                break;
            }
            typed += 1;
        }
    }
    if ok {
        return Ok(());
    }
    for _ in 0..typed {
        ft.put_page_type(mem, mfn);
    }
    for _ in 0..general {
        ft.put_page(mfn);
    }
    Err(gntst::GENERAL_ERROR)
}

// ---------------------------------------------------------------------------------------------
// Operations between domains

/// What the grant operations work on: every domain, the frame table and machine memory.
pub struct GrantCtx<'a, M: MachineMemory> {
    pub domains: &'a mut Domains,
    pub ft: &'a mut FrameTable,
    pub mem: &'a M,
}

/// True if domain `d` can take part in grant operations (exists, not being destroyed).
pub fn usable(domains: &Domains, d: DomId) -> bool {
    domains.get(&d).is_some_and(|d| d.state != DomainState::Dying)
}

/// What an unmap (or a teardown) touched, so the caller can flush and reap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unmapped {
    pub flush: Flush,
    /// The granting domain whose frame references were dropped.
    pub granter: Option<DomId>,
}

impl<M: MachineMemory> GrantCtx<'_, M> {
    /// `GNTTABOP_map_grant_ref` for `caller`, whose current page tables are rooted at `l4`:
    /// fills `op.status` and, on success, `op.handle` and `op.dev_bus_addr`. Returns the TLB
    /// flush owed (a host mapping replaced a present entry).
    pub fn map_grant_ref(&mut self, caller: DomId, l4: Option<Mfn>, op: &mut GnttabMapGrantRef) -> Flush {
        match self.map_one(caller, l4, op) {
            Ok((handle, mfn, flush)) => {
                op.handle = handle;
                op.dev_bus_addr = mfn.addr();
                op.status = gntst::OKAY;
                flush
            }
            Err(st) => {
                op.status = st;
                Flush::None
            }
        }
    }

    fn map_one(
        &mut self,
        caller: DomId,
        l4: Option<Mfn>,
        op: &GnttabMapGrantRef,
    ) -> Result<(u32, Mfn, Flush), Status> {
        let flags = op.flags;
        if flags & (gntmap::DEVICE_MAP | gntmap::HOST_MAP) == 0 {
            // Xen's answer to a request that maps nothing.
            return Err(gntst::BAD_GNTREF);
        }
        let rd = op.dom;
        if !rd.is_real() || !usable(self.domains, rd) {
            return Err(gntst::BAD_DOMAIN);
        }
        let ld = self.domains.get_mut(&caller).ok_or(gntst::GENERAL_ERROR)?;
        let handle = ld.grant.maptrack.alloc(&mut ld.hv_mem).ok_or(gntst::NO_DEVICE_SPACE)?;
        match self.map_with_handle(caller, l4, op, handle) {
            Ok((mfn, flush)) => Ok((handle, mfn, flush)),
            Err(st) => {
                if let Some(d) = self.domains.get_mut(&caller) {
                    d.grant.maptrack.unalloc(handle);
                }
                Err(st)
            }
        }
    }

    fn map_with_handle(
        &mut self,
        caller: DomId,
        l4: Option<Mfn>,
        op: &GnttabMapGrantRef,
        handle: u32,
    ) -> Result<(Mfn, Flush), Status> {
        let (flags, rd, gref) = (op.flags, op.dom, op.ref_);
        let pin = Pin {
            grantee: caller,
            access: Access::of_map_flags(flags),
            uses: uses_of(flags),
            purpose: Purpose::Map,
        };
        let readonly = pin.access == Access::ReadOnly;
        let rgt = &mut self.domains.get_mut(&rd).ok_or(gntst::BAD_DOMAIN)?.grant;
        let mfn = rgt.acquire(self.ft, self.mem, rd, gref, pin)?;

        if let Err(st) = get_extra_refs(self.ft, self.mem, mfn, rd, readonly, pin.uses) {
            self.abort_map(rd, gref, mfn, pin, Taken::AcquireOnly);
            return Err(st);
        }

        let mut flush = Flush::None;
        let mut pte_loc = None;
        if flags & gntmap::HOST_MAP != 0 {
            let contains_pte = flags & gntmap::CONTAINS_PTE != 0;
            let loc = locate_pte(self.ft, self.mem, caller, l4, op.host_addr, contains_pte).filter(|loc| {
                let old = self.mem.read_pte(loc.l1, usize::from(loc.idx));
                // Never replace another grant mapping: its references belong to a handle.
                !(pte::is_present(old) && old & pte::GNTTAB != 0)
            });
            let Some(loc) = loc else {
                self.abort_map(rd, gref, mfn, pin, Taken::All);
                return Err(gntst::GENERAL_ERROR);
            };
            let idx = usize::from(loc.idx);
            let old = self.mem.read_pte(loc.l1, idx);
            self.mem.write_pte(loc.l1, idx, grant_pte(mfn, flags));
            put_page_from_l1e(self.ft, self.mem, old);
            if pte::is_present(old) {
                flush = host_flush(flags, op.host_addr);
            }
            pte_loc = Some(loc);
        }
        if let Some(d) = self.domains.get_mut(&caller) {
            let m = Mapping {
                flags,
                domid: rd,
                gref,
                mfn,
                host_addr: op.host_addr,
                pte: pte_loc,
                next_free: NIL,
            };
            d.grant.maptrack.set(handle, m);
        }
        Ok((mfn, flush))
    }

    /// Undoes a map that failed after `acquire`: drops the references `taken` and the uses
    /// `pin` recorded in the granter's active entry.
    fn abort_map(&mut self, rd: DomId, gref: GrantRef, mfn: Mfn, pin: Pin, taken: Taken) {
        match taken {
            Taken::All => put_refs(self.ft, self.mem, mfn, pin.access == Access::ReadOnly, pin.uses),
            Taken::AcquireOnly => put_refs(self.ft, self.mem, mfn, true, 1),
        }
        if let Some(d) = self.domains.get_mut(&rd) {
            d.grant.release(self.mem, gref, pin.grantee, mfn, pin.access, pin.uses);
        }
    }

    /// `GNTTABOP_unmap_grant_ref` for `caller`: fills `op.status`. The host part goes when
    /// `op.host_addr` is the address it was mapped at, the device part when
    /// `op.dev_bus_addr` is its frame's address; the handle is freed when nothing is left.
    pub fn unmap_grant_ref(&mut self, caller: DomId, op: &mut GnttabUnmapGrantRef) -> Unmapped {
        match self.unmap_one(caller, op, None) {
            Ok(u) => {
                op.status = gntst::OKAY;
                u
            }
            Err(st) => {
                op.status = st;
                Unmapped::default()
            }
        }
    }

    /// `GNTTABOP_unmap_and_replace` for `caller`, whose current page tables are rooted at
    /// `l4`: fills `op.status`. The host mapping of `op.handle` at `op.host_addr` goes; the
    /// caller's own L1 entry for `op.new_addr` (with its references) moves into its slot and
    /// `new_addr` is left unmapped (Xen's `steal_linear_addr`). With `new_addr` 0 it is a
    /// plain unmap of the host part.
    pub fn unmap_and_replace(
        &mut self,
        caller: DomId,
        l4: Option<Mfn>,
        op: &mut GnttabUnmapAndReplace,
    ) -> Unmapped {
        let u = GnttabUnmapGrantRef {
            host_addr: op.host_addr,
            dev_bus_addr: 0,
            handle: op.handle,
            ..Default::default()
        };
        let replace = (op.new_addr != 0).then_some((l4, op.new_addr));
        match self.unmap_one(caller, &u, replace) {
            Ok(u) => {
                op.status = gntst::OKAY;
                u
            }
            Err(st) => {
                op.status = st;
                Unmapped::default()
            }
        }
    }

    fn unmap_one(
        &mut self,
        caller: DomId,
        op: &GnttabUnmapGrantRef,
        replace: Option<(Option<Mfn>, u64)>,
    ) -> Result<Unmapped, Status> {
        let lt = &self.domains.get(&caller).ok_or(gntst::GENERAL_ERROR)?.grant;
        let m = *lt.maptrack.get(op.handle).ok_or(gntst::BAD_HANDLE)?;
        if op.dev_bus_addr != 0 && op.dev_bus_addr != m.mfn.addr() {
            return Err(gntst::GENERAL_ERROR);
        }
        let mut done = 0;
        let mut out = Unmapped::default();
        if op.host_addr != 0 && m.flags & gntmap::HOST_MAP != 0 {
            // Stricter than Xen, which accepts any address currently mapping the frame: the
            // handle's own entry is the one that goes, so handles and entries never cross.
            if op.host_addr != m.host_addr {
                return Err(gntst::GENERAL_ERROR);
            }
            out.flush = match replace {
                None => remove_host_pte(self.ft, self.mem, caller, &m),
                Some((l4, new_addr)) => replace_host_pte(self.ft, self.mem, caller, l4, &m, new_addr)?,
            };
            done |= gntmap::HOST_MAP;
        }
        if op.dev_bus_addr != 0 && m.flags & gntmap::DEVICE_MAP != 0 {
            done |= gntmap::DEVICE_MAP;
        }
        if done != 0 {
            self.drop_uses(caller, op.handle, &m, done);
            out.granter = Some(m.domid);
        }
        Ok(out)
    }

    /// Drops the `parts` (`GNTMAP_host_map`/`device_map`) of mapping `h` of `caller`: their
    /// frame references, their uses of the granter's entry, and the handle once empty.
    fn drop_uses(&mut self, caller: DomId, h: u32, m: &Mapping, parts: u32) {
        let uses = uses_of(parts);
        put_refs(self.ft, self.mem, m.mfn, m.readonly(), uses);
        if let Some(d) = self.domains.get_mut(&m.domid) {
            d.grant.release(self.mem, m.gref, caller, m.mfn, m.access(), uses);
        }
        if let Some(d) = self.domains.get_mut(&caller) {
            d.grant.maptrack.clear_parts(h, parts);
        }
    }

    /// Tears down every mapping `d` holds (it is being destroyed): host entries still in its
    /// page tables are cleared, references dropped, the granters' flags fixed up. Allocates
    /// nothing.
    pub fn release_mappings(&mut self, d: DomId) {
        let Some(limit) = self.domains.get(&d).map(|dom| dom.grant.maptrack.limit()) else { return };
        for h in 0..limit {
            let Some(m) = self.domains.get(&d).and_then(|dom| dom.grant.maptrack.get(h)).copied() else {
                continue;
            };
            if m.flags & gntmap::HOST_MAP != 0 {
                remove_host_pte(self.ft, self.mem, d, &m);
            }
            self.drop_uses(d, h, &m, m.flags & (gntmap::HOST_MAP | gntmap::DEVICE_MAP));
        }
    }

    /// `GNTTABOP_copy` for `caller`: fills `op.status`.
    pub fn copy(&mut self, caller: DomId, op: &mut GnttabCopy) {
        op.status = match self.copy_one(caller, op) {
            Ok(()) => gntst::OKAY,
            Err(st) => st,
        };
    }

    fn copy_one(&mut self, caller: DomId, op: &GnttabCopy) -> Result<(), Status> {
        let src_gref = op.flags & gntcopy::SOURCE_GREF != 0;
        let dst_gref = op.flags & gntcopy::DEST_GREF != 0;
        let sd = self.copy_domain(caller, op.source.domid, src_gref)?;
        let dd = self.copy_domain(caller, op.dest.domid, dst_gref)?;
        let src = self.claim(caller, sd, &op.source, src_gref, true)?;
        let dst = match self.claim(caller, dd, &op.dest, dst_gref, false) {
            Ok(c) => c,
            Err(st) => {
                self.unclaim(caller, &src);
                return Err(st);
            }
        };
        // Xen checks the bounds only once both sides are claimed.
        let r = if op.within_pages() {
            let from = src.mfn.addr() + u64::from(op.source.offset);
            let to = dst.mfn.addr() + u64::from(op.dest.offset);
            copy_bytes(self.mem, from, to, usize::from(op.len));
            Ok(())
        } else {
            Err(gntst::BAD_COPY_ARG)
        };
        self.unclaim(caller, &dst);
        self.unclaim(caller, &src);
        r
    }

    /// The domain one side of a copy names. A frame number may only name the caller's own
    /// frames, and only as `DOMID_SELF`, as in Xen.
    fn copy_domain(&self, caller: DomId, domid: DomId, is_gref: bool) -> Result<DomId, Status> {
        if !is_gref && domid != DomId::SELF {
            return Err(gntst::PERMISSION_DENIED);
        }
        let d = hypercall_abi::xen::resolve_domid(domid, caller);
        if !d.is_real() || !usable(self.domains, d) {
            return Err(gntst::BAD_DOMAIN);
        }
        Ok(d)
    }

    /// Takes one side of a copy: pins the grant (or checks the caller owns the frame) and
    /// holds a general reference, plus a `Writable` type reference for the destination.
    fn claim(
        &mut self,
        caller: DomId,
        d: DomId,
        ptr: &GnttabCopyPtr,
        is_gref: bool,
        readonly: bool,
    ) -> Result<Claim, Status> {
        let (mfn, gref) = if is_gref {
            let gref = ptr.as_gref();
            let t = &mut self.domains.get_mut(&d).ok_or(gntst::BAD_DOMAIN)?.grant;
            let access = if readonly { Access::ReadOnly } else { Access::Writable };
            let pin = Pin { grantee: caller, access, uses: 1, purpose: Purpose::Copy };
            (t.acquire(self.ft, self.mem, d, gref, pin)?, Some(gref))
        } else {
            let mfn = Mfn(ptr.as_gmfn());
            self.ft.get_page(mfn, d).map_err(|_| gntst::BAD_PAGE)?;
            (mfn, None)
        };
        let c = Claim { domid: d, gref, mfn, readonly };
        if !readonly && self.ft.get_page_type(self.mem, mfn, PageType::Writable).is_err() {
            put_refs(self.ft, self.mem, mfn, true, 1);
            if let (Some(gref), Some(dom)) = (gref, self.domains.get_mut(&d)) {
                dom.grant.release(self.mem, gref, caller, mfn, Access::Writable, 1);
            }
            return Err(gntst::GENERAL_ERROR);
        }
        Ok(c)
    }

    fn unclaim(&mut self, caller: DomId, c: &Claim) {
        put_refs(self.ft, self.mem, c.mfn, c.readonly, 1);
        if let Some(gref) = c.gref {
            if let Some(d) = self.domains.get_mut(&c.domid) {
                let access = if c.readonly { Access::ReadOnly } else { Access::Writable };
                d.grant.release(self.mem, gref, caller, c.mfn, access, 1);
            }
        }
    }
}

/// Which references a failed map had taken when it was undone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Taken {
    /// Only the general reference [`GrantTable::acquire`] takes.
    AcquireOnly,
    /// Every reference of every use.
    All,
}

/// One claimed side of a copy.
#[derive(Clone, Copy, Debug)]
struct Claim {
    domid: DomId,
    gref: Option<GrantRef>,
    mfn: Mfn,
    readonly: bool,
}

/// Copies `len` bytes (within one frame on each side) between machine addresses through a
/// small stack buffer, or as a whole frame when it is one.
fn copy_bytes<M: MachineMemory>(mem: &M, from: u64, to: u64, len: usize) {
    if len == PAGE_SIZE {
        mem.copy_frame(Mfn::containing(to), Mfn::containing(from));
        return;
    }
    let mut buf = [0u8; 512];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(buf.len());
        mem.read(from + off as u64, &mut buf[..n]);
        mem.write(to + off as u64, &buf[..n]);
        off += n;
    }
}

/// The references every live mapping holds, for [`FrameTable::audit`]: per use, a general
/// reference and, when writable, a type reference.
pub fn external_refs(domains: &Domains) -> Vec<ExternalRef> {
    let mut out = Vec::new();
    for d in domains.values() {
        for (_, m) in d.grant.maptrack.iter() {
            for _ in 0..m.uses() {
                out.push(ExternalRef::mapping(m.mfn, !m.readonly()));
            }
        }
    }
    out
}
