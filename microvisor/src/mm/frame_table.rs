//! The frame table: one compact record per machine frame, holding Xen's ownership, reference
//! count and page-type state, and the frame allocator built on it.
//!
//! These records are what make PV memory management safe. A guest writes its own page tables,
//! so the hypervisor must know at every moment what each frame is being used as:
//!
//! * the general count (`count_info` in Xen) keeps a frame owned and out of the free pool while
//!   anything — an allocation, a PTE, a pin, a vCPU's CR3 — still refers to it;
//! * the type (`type_info`) says which one of several mutually exclusive uses the frame is in:
//!   an L1..L4 page table, a descriptor table, or mapped writable. A frame changes type only
//!   when its type count is zero, so a frame can never be a page table and writable at once.
//!   Promoting a frame to an Ln table validates every entry (see [`super::pagetable`]); the
//!   last type reference of a table demotes it, releasing what its entries held.
//!
//! The hypervisor runs on one CPU with interrupts off and is never preempted inside these
//! operations, so plain fields suffice where Xen needs `cmpxchg` loops. Guest-triggered errors
//! come back as `Errno`; a count that would underflow is a hypervisor bug (debug assertion) and
//! saturates in release builds rather than wrapping.

use super::pagetable;
use super::{FrameAllocator, MachineMemory};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use hypercall_abi::{DomId, Errno, Mfn};

/// Xen's exclusive page types (`PGT_*_page`, same numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PageType {
    /// No use that needs exclusivity (plain data, possibly mapped read-only).
    None = 0,
    L1 = 1,
    L2 = 2,
    L3 = 3,
    L4 = 4,
    /// A GDT/LDT frame.
    SegDesc = 5,
    /// Mapped writable somewhere.
    Writable = 7,
}

impl PageType {
    /// The page-table type of `level` (1..=4).
    pub const fn table(level: u32) -> Option<PageType> {
        match level {
            1 => Some(PageType::L1),
            2 => Some(PageType::L2),
            3 => Some(PageType::L3),
            4 => Some(PageType::L4),
            _ => None,
        }
    }

    /// The level of a page-table type.
    pub const fn level(self) -> Option<u32> {
        match self {
            PageType::L1 => Some(1),
            PageType::L2 => Some(2),
            PageType::L3 => Some(3),
            PageType::L4 => Some(4),
            _ => None,
        }
    }

    const fn from_bits(bits: u32) -> PageType {
        match bits {
            1 => PageType::L1,
            2 => PageType::L2,
            3 => PageType::L3,
            4 => PageType::L4,
            5 => PageType::SegDesc,
            7 => PageType::Writable,
            _ => PageType::None,
        }
    }

    /// Types whose contents must be checked before the first reference is granted.
    const fn needs_validation(self) -> bool {
        matches!(self, PageType::L1 | PageType::L2 | PageType::L3 | PageType::L4 | PageType::SegDesc)
    }
}

/// Who owns a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// On the free list.
    Free,
    /// The hypervisor (its heap, the M2P, the frame table itself, boot structures).
    Xen,
    /// Not RAM (MMIO, ROM, holes): `DOMID_IO`, mappable only with I/O permission.
    Io,
    Domain(DomId),
}

/// One frame's record. 16 bytes, so the table for 1 GiB of RAM is 4 MiB.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PageInfo {
    /// General reference count and `PGC_*` flags.
    count: u32,
    /// Type count, type and `PGT_*` flags.
    type_info: u32,
    /// `OWNER_FREE`, `DomId::XEN`, `DomId::IO` or a real domain id.
    owner: u16,
    /// Xen's `linear_pt_count`: > 0 = number of same-level (linear) entries this table holds;
    /// < 0 = number of such entries elsewhere that point at it. Never both (XSA-240).
    linear: i16,
    /// Free frames: index of the next free frame. In use: the TLB epoch in which the frame
    /// last lost its type (Xen's `tlbflush_timestamp`).
    aux: u32,
}

const _: () = assert!(core::mem::size_of::<PageInfo>() <= 16);

const OWNER_FREE: u16 = u16::MAX;
/// Largest contiguous extent a domain may ask for (2 MiB).
pub const MAX_CONTIGUOUS_ORDER: u32 = 9;
const NIL: u32 = u32::MAX;

/// General count bits of `PageInfo::count`.
const PGC_COUNT_MASK: u32 = (1 << 28) - 1;
/// The reference that ownership itself holds (Xen's `PGC_allocated`).
const PGC_ALLOCATED: u32 = 1 << 31;
/// A hypervisor frame shared with `owner` (shared_info, grant frames, the RO M2P): it holds a
/// permanent type reference and goes back to the hypervisor, not the free pool, when released.
const PGC_XEN_SHARED: u32 = 1 << 30;

const PGT_COUNT_MASK: u32 = (1 << 24) - 1;
const PGT_TYPE_SHIFT: u32 = 24;
const PGT_TYPE_MASK: u32 = 7 << PGT_TYPE_SHIFT;
const PGT_PINNED: u32 = 1 << 27;
const PGT_VALIDATED: u32 = 1 << 28;
/// Xen's `PGT_partial`: a page table part-way through validation or teardown, preempted.
/// Entries below `aux` (Xen's `nr_validated_ptes`) hold their references, the rest hold none.
/// The partial state owns one type and one general reference of the frame; whoever next takes
/// the same type resumes the validation and takes them over, and a teardown (the owner's
/// deferred list, or its death) releases them. Only one type reference exists meanwhile.
const PGT_PARTIAL: u32 = 1 << 29;

const fn type_bits(ty: PageType) -> u32 {
    (ty as u32) << PGT_TYPE_SHIFT
}

const fn type_of(type_info: u32) -> PageType {
    PageType::from_bits((type_info & PGT_TYPE_MASK) >> PGT_TYPE_SHIFT)
}

/// A read-only snapshot of one frame's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    pub owner: Owner,
    /// General references, including the allocation's own.
    pub count: u32,
    pub allocated: bool,
    pub xen_shared: bool,
    pub ty: PageType,
    pub type_count: u32,
    pub pinned: bool,
    pub validated: bool,
    pub linear: i16,
}

/// Memory accounting of one domain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DomainMem {
    /// Frames the domain owns (Xen's `tot_pages`), not counting shared hypervisor frames.
    pub tot_pages: u64,
    /// Ceiling for `tot_pages`.
    pub max_pages: u64,
    /// May map I/O frames and use cache attributes in L1 entries (Xen: has `iomem_caps`).
    pub iomem: bool,
    /// Being destroyed: no more allocations.
    pub dying: bool,
}

/// The hypervisor's own L4 entries, written into slots 256..=271 of every guest L4 when it is
/// validated (Xen's `init_xen_l4_slots`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenL4Slots {
    /// Entries for slots 256..=271.
    pub entries: [u64; 16],
    /// A slot (256..=271) that maps the L4 itself with these flags (the linear page-table
    /// slot), if the hypervisor wants one.
    pub self_slot: Option<(usize, u64)>,
}

pub use crate::iomem::IomemPolicy;

/// A reference held outside the page tables (a vCPU's CR3, a grant mapping), for [`audit`].
///
/// [`audit`]: FrameTable::audit
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExternalRef {
    pub mfn: Mfn,
    /// Also holds a type reference (a writable mapping's, or a base pointer's L4 reference).
    pub typed: bool,
    /// A page-table root a vCPU of this domain can run on (`guest_table`,
    /// `guest_table_user`): besides the references, the audit checks that the frame is a
    /// validated L4 of that domain, since the hardware walks it as one.
    pub root_of: Option<DomId>,
}

impl ExternalRef {
    /// A mapping's reference (a grant): general, plus a `Writable` type reference if `writable`.
    pub const fn mapping(mfn: Mfn, writable: bool) -> ExternalRef {
        ExternalRef { mfn, typed: writable, root_of: None }
    }

    /// A vCPU base pointer of domain `d`: a general and an L4 type reference on `mfn`.
    pub const fn root(mfn: Mfn, d: DomId) -> ExternalRef {
        ExternalRef { mfn, typed: true, root_of: Some(d) }
    }
}

/// Which domains' non-present page-table entries are checked for L1TF (XSA-273), as Xen's
/// `pv-l1tf=` decides: by default domUs' on a CPU vulnerable to L1TF and never the hardware
/// domain's. (Xen shadows or crashes an offending domU; microvisor, without shadow paging,
/// crashes it.) Elsewhere the check protects nothing, and Xen does not make it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L1tfPolicy {
    pub dom0: bool,
    pub domu: bool,
}

/// Whether the CPU is treated as vulnerable to L1TF: an Intel CPU (CPUID 0's vendor in EBX,
/// EDX, ECX) that does not say RDCL_NO in `arch_caps`. Xen also exempts a list of Intel models
/// (Atoms, Xeon Phi); microvisor errs on the checking side for them. Other vendors' CPUs are
/// not vulnerable; QEMU's TCG CPU says AuthenticAMD.
pub fn cpu_has_bug_l1tf(vendor: [u32; 3], arch_caps: Option<u64>) -> bool {
    const GENUINE_INTEL: [u32; 3] = [0x756e_6547, 0x4965_6e69, 0x6c65_746e];
    vendor == GENUINE_INTEL && arch_caps.is_none_or(|c| c & crate::x86::arch_caps::RDCL_NO == 0)
}

impl L1tfPolicy {
    /// domUs checked, the hardware domain not: Xen's default on a vulnerable CPU.
    pub const CHECK_DOMUS: L1tfPolicy = L1tfPolicy { dom0: false, domu: true };

    /// Xen's default for a CPU that `cpu_has_bug_l1tf` or not, then the hypervisor command
    /// line's last `pv-l1tf=` applied: a boolean for both, or a comma list of `dom0=<bool>`
    /// and `domu=<bool>` (`1`/`0`, `yes`/`no`, `on`/`off`, `true`/`false`).
    pub fn from_cmdline(cmdline: &str, cpu_has_bug_l1tf: bool) -> L1tfPolicy {
        let mut p = L1tfPolicy { dom0: false, domu: cpu_has_bug_l1tf };
        let parse_bool = |v: &str| match v {
            "1" | "yes" | "on" | "true" | "enable" => Some(true),
            "0" | "no" | "off" | "false" | "disable" => Some(false),
            _ => None,
        };
        for value in cmdline.split_whitespace().filter_map(|o| o.strip_prefix("pv-l1tf=")) {
            for item in value.split(',') {
                match (parse_bool(item), item.split_once('=')) {
                    (Some(b), _) => (p.dom0, p.domu) = (b, b),
                    (None, Some(("dom0", v))) => p.dom0 = parse_bool(v).unwrap_or(p.dom0),
                    (None, Some(("domu", v))) => p.domu = parse_bool(v).unwrap_or(p.domu),
                    _ => {}
                }
            }
        }
        p
    }
}

/// A guest wrote a non-present entry that L1TF (XSA-273) could use to read the L1 data cache
/// at a machine address of its choosing; Xen crashes such a domain where it cannot shadow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L1tfViolation {
    pub domid: DomId,
    pub level: u32,
    pub pte: u64,
}

/// Physical address width assumed until the platform says (`set_phys_addr_bits`).
const DEFAULT_PHYS_ADDR_BITS: u32 = 46;

/// What [`FrameTable::relinquish`] achieved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelinquishStats {
    /// Frames returned to the free pool (or, for shared hypervisor frames, to the hypervisor).
    pub released: u64,
    /// Frames still owned because something outside the domain (another domain's mapping, a
    /// grant) holds a reference; each is freed when its last reference goes.
    pub still_referenced: u64,
}

/// Per-frame records for every machine frame below `max_mfn`, the free list and per-domain
/// accounting.
pub struct FrameTable {
    frames: Vec<PageInfo>,
    free_head: u32,
    nr_free: u64,
    domains: Vec<Option<DomainMem>>,
    pub(crate) xen_l4: XenL4Slots,
    iomem_policy: IomemPolicy,
    /// Advanced by [`FrameTable::tlb_flushed`].
    epoch: u32,
    /// A frame went to the free pool in this epoch: stale TLB entries may still reach it.
    free_dirty: bool,
    /// A flush is owed before any guest runs again.
    flush_pending: bool,
    /// Xen's `l1tf_safe_maddr`: a non-present entry whose address is 0 or at least this
    /// cannot hit cached data.
    l1tf_safe_maddr: u64,
    /// A domain to crash for an L1TF-unsafe entry, for the dispatcher to act on.
    l1tf_violation: Option<L1tfViolation>,
    /// Whose non-present entries are checked for L1TF.
    l1tf_policy: L1tfPolicy,
    /// Page-table entries a preemptible operation may still examine before it must stop;
    /// `NOT_PREEMPTIBLE` outside one (boot, domain destruction).
    budget: u32,
    /// Partial frames whose teardown was preempted (failed validations, last type references
    /// dropped), finished by their owner's next memory hypercall.
    deferred: Vec<Mfn>,
    /// TSC at the start of the running preemptible operation, and the longest one seen (the
    /// hypervisor runs with interrupts off, so this bounds what a guest's page-table work
    /// can delay everything else by). Timed only once someone asked for the figure
    /// ([`FrameTable::take_longest_op`]): the TSC reads are instrumentation, and every
    /// `mmu_update` would pay for them.
    op_started: u64,
    longest_op: u64,
    timing: bool,
}

/// Page-table entries one hypercall examines before it is preempted (Xen checks
/// `hypercall_preempt_check()` between entries): about a fifth of a millisecond under TCG.
pub const PREEMPT_BUDGET: u32 = 2048;

/// The budget outside a preemptible operation: more entries than any operation can examine
/// (that many entries are 32 TiB of page tables). Work done outside one (boot, teardowns
/// from other subsystems) still counts it down; any budget from `OUTSIDE` up means no
/// operation is running.
const NOT_PREEMPTIBLE: u32 = u32::MAX;
const OUTSIDE: u32 = 1 << 31;

impl FrameTable {
    /// A table for frames `0..max_mfn`, all initially owned by the hypervisor. Boot code then
    /// hands usable RAM to [`FrameTable::release_to_free`] and non-RAM to
    /// [`FrameTable::mark_io`].
    pub fn new(max_mfn: Mfn) -> FrameTable {
        let n = max_mfn.0.min(u64::from(u32::MAX)) as usize;
        FrameTable {
            frames: vec![PageInfo { owner: DomId::XEN.0, aux: NIL, ..PageInfo::default() }; n],
            free_head: NIL,
            nr_free: 0,
            domains: Vec::new(),
            xen_l4: XenL4Slots::default(),
            iomem_policy: IomemPolicy::IO_FRAMES_ONLY,
            epoch: 0,
            free_dirty: false,
            flush_pending: false,
            l1tf_safe_maddr: l1tf_safe_maddr(DEFAULT_PHYS_ADDR_BITS, max_mfn),
            l1tf_violation: None,
            l1tf_policy: L1tfPolicy::CHECK_DOMUS,
            budget: NOT_PREEMPTIBLE,
            deferred: Vec::new(),
            op_started: 0,
            longest_op: 0,
            timing: false,
        }
    }

    // -----------------------------------------------------------------------------------------
    // Preemption of page-table validation and teardown (XSA-45)

    /// Starts a preemptible operation with a fresh budget; false (and nothing changes) if one
    /// is already running (a multicall's entries share the multicall's budget).
    pub fn begin_preemptible(&mut self) -> bool {
        self.begin_preemptible_with(PREEMPT_BUDGET)
    }

    /// As [`FrameTable::begin_preemptible`] with a budget of `entries` (tests use tiny ones).
    #[inline]
    pub fn begin_preemptible_with(&mut self, entries: u32) -> bool {
        debug_assert!(entries < OUTSIDE);
        if self.budget < OUTSIDE {
            return false;
        }
        self.budget = entries;
        true
    }

    /// Ends the preemptible operation.
    #[inline]
    pub fn end_preemptible(&mut self) {
        self.budget = NOT_PREEMPTIBLE;
    }

    /// [`FrameTable::begin_preemptible`], noting the TSC (`tsc`, read only while operations
    /// are timed) for [`FrameTable::take_longest_op`].
    #[inline]
    pub fn begin_preemptible_at(&mut self, tsc: impl FnOnce() -> u64) -> bool {
        let started = self.begin_preemptible();
        if started && self.timing {
            self.op_started = tsc();
        }
        started
    }

    /// [`FrameTable::end_preemptible`], recording how long the operation ran while
    /// operations are timed.
    #[inline]
    pub fn end_preemptible_at(&mut self, tsc: impl FnOnce() -> u64) {
        if self.timing {
            self.longest_op = self.longest_op.max(tsc().saturating_sub(self.op_started));
        }
        self.end_preemptible();
    }

    /// The longest preemptible operation (TSC ticks) since the last call, which resets it;
    /// operations are timed from the first call on.
    pub fn take_longest_op(&mut self) -> u64 {
        self.timing = true;
        core::mem::take(&mut self.longest_op)
    }

    /// True when the running preemptible operation has used its budget: it must stop at the
    /// next point where it can continue later.
    pub fn preempt_pending(&self) -> bool {
        // (Outside a preemptible operation the budget is `NOT_PREEMPTIBLE`.)
        self.budget == 0
    }

    /// Accounts for one page-table entry examined; true if the operation must stop first.
    #[inline]
    pub(crate) fn must_preempt(&mut self) -> bool {
        if self.budget == 0 {
            return true;
        }
        self.budget -= 1;
        false
    }

    /// True if the running operation (or work outside one) may examine `n` more entries
    /// without stopping; the caller then charges them with [`FrameTable::charge`].
    #[inline]
    pub(crate) fn budget_covers(&self, n: usize) -> bool {
        self.budget as usize >= n
    }

    /// Charges `n` entries examined, which [`FrameTable::budget_covers`] allowed.
    #[inline]
    pub(crate) fn charge(&mut self, n: u32) {
        debug_assert!(self.budget >= n);
        self.budget -= n;
    }

    /// True if `mfn` is a partial page table (validation or teardown preempted).
    pub fn is_partial(&self, mfn: Mfn) -> bool {
        self.page(mfn).is_some_and(|p| p.type_info & PGT_PARTIAL != 0)
    }

    /// Finishes the teardowns `d` left unfinished. `Err(ERESTART)` if the budget ran out
    /// first: the caller continues the hypercall without doing anything else.
    #[inline]
    pub fn drain_deferred<M: MachineMemory>(&mut self, mem: &M, d: DomId) -> Result<(), Errno> {
        if self.deferred.is_empty() {
            return Ok(());
        }
        self.drain_deferred_slow(mem, d)
    }

    #[cold]
    fn drain_deferred_slow<M: MachineMemory>(&mut self, mem: &M, d: DomId) -> Result<(), Errno> {
        while let Some(k) = self.deferred.iter().position(|&m| self.owner(m) == Some(Owner::Domain(d))) {
            if self.preempt_pending() {
                return Err(Errno::ERESTART);
            }
            let mfn = self.deferred.swap_remove(k);
            // Someone may have resumed it since (it is theirs now).
            if self.is_partial(mfn) {
                self.teardown_partial(mem, mfn);
            }
        }
        Ok(())
    }

    /// How many of `mfn`'s entries (from the first) hold references: all of a validated
    /// table's, those below the progress mark of a partial one, none otherwise.
    pub fn held_entries(&self, mfn: Mfn) -> usize {
        match self.page(mfn) {
            Some(p) if p.type_info & PGT_VALIDATED != 0 => super::ENTRIES_PER_TABLE,
            Some(p) if p.type_info & PGT_PARTIAL != 0 => p.aux as usize,
            _ => 0,
        }
    }

    /// Number of frames waiting for a deferred teardown.
    pub fn deferred_len(&self) -> usize {
        self.deferred.len()
    }

    /// Releases the entries of the partial frame `mfn` from the top down, then the partial
    /// state's references; if the budget runs out first, the frame stays partial and goes on
    /// the deferred list.
    fn teardown_partial<M: MachineMemory>(&mut self, mem: &M, mfn: Mfn) {
        let i = mfn.0 as usize;
        let ti = self.frames[i].type_info;
        debug_assert!(ti & PGT_PARTIAL != 0 && ti & PGT_COUNT_MASK == 1);
        let Some(level) = type_of(ti).level() else { return };
        let mut nr = self.frames[i].aux as usize;
        let run = pagetable::EMPTY_PER_UNIT;
        while nr > 0 {
            // Run by aligned run, from the top; a whole run of empty slots costs one unit (as
            // in validation), one with entries in it one per entry.
            let run_start = (nr - 1) / run * run;
            if nr - run_start == run && pagetable::run_is_empty(mem, mfn, level, run_start) {
                if self.must_preempt() {
                    self.defer_teardown(i, nr);
                    return;
                }
            } else if let Err(at) = pagetable::release_run(self, mem, mfn, level, run_start..nr) {
                // (`aux` is written only where the teardown stops: nothing reads a partial
                // frame's progress while it is being torn down.)
                self.defer_teardown(i, at);
                return;
            }
            nr = run_start;
        }
        self.frames[i].type_info = 0;
        self.frames[i].aux = self.epoch;
        self.put_page(mfn);
    }

    /// Leaves the partial frame `i` with the entries below `nr` still holding references, on
    /// the deferred list (its teardown ran out of budget).
    fn defer_teardown(&mut self, i: usize, nr: usize) {
        self.frames[i].aux = nr as u32;
        let mfn = Mfn(i as u64);
        if !self.deferred.contains(&mfn) {
            self.deferred.push(mfn);
        }
    }

    /// Makes the frame `i`, whose single type reference is going away (validated or being
    /// validated up to `nr`), a partial frame and tears it down.
    fn begin_teardown<M: MachineMemory>(&mut self, mem: &M, i: usize, nr: usize) {
        let ti = self.frames[i].type_info;
        self.frames[i].type_info = (ti & !(PGT_VALIDATED | PGT_PINNED)) | PGT_PARTIAL;
        self.frames[i].aux = nr as u32;
        // The partial state's general reference (the caller may drop its own meanwhile).
        self.frames[i].count += 1;
        self.teardown_partial(mem, Mfn(i as u64));
    }

    /// Records the CPU's physical address width (CPUID 0x80000008), from which the L1TF-safe
    /// address of non-present entries follows.
    pub fn set_phys_addr_bits(&mut self, bits: u32) {
        self.l1tf_safe_maddr = l1tf_safe_maddr(bits, self.max_mfn());
    }

    /// Whose non-present entries are checked for L1TF (the boot code sets
    /// [`L1tfPolicy::from_cmdline`]; until then, and in tests, domUs' are).
    pub fn set_l1tf_policy(&mut self, policy: L1tfPolicy) {
        self.l1tf_policy = policy;
    }

    /// True if `d`'s non-present entries are checked for L1TF (the hardware domain, the one
    /// with I/O memory, as `pv-l1tf=dom0` says; the others as `pv-l1tf=domu` says).
    #[inline]
    pub(crate) fn l1tf_checked(&self, d: DomId) -> bool {
        self.domain(d).is_some_and(|m| if m.iomem { self.l1tf_policy.dom0 } else { self.l1tf_policy.domu })
    }

    /// Xen's `pv_l1tf_check_pte` condition for a non-present entry `e` at `level`: it could
    /// steer a speculative L1TF load at cached data — an address that is neither 0 nor above
    /// everything cacheable, or PSE at any level above 1 (a speculative superpage; an L4 entry
    /// too, through linear tables).
    #[inline]
    pub(crate) fn l1tf_unsafe(&self, level: u32, e: u64) -> bool {
        let maddr = e & super::pte::ADDR_MASK;
        (maddr != 0 && maddr < self.l1tf_safe_maddr) || (level > 1 && e & super::pte::PSE != 0)
    }

    /// Records that `d` wrote the L1TF-unsafe entry `e`, for the dispatcher to crash it.
    pub(crate) fn report_l1tf(&mut self, d: DomId, level: u32, e: u64) {
        self.l1tf_violation.get_or_insert(L1tfViolation { domid: d, level, pte: e });
    }

    /// Both checks for one non-present entry, reporting a violation; true if `e` is unsafe.
    pub(crate) fn l1tf_check(&mut self, d: DomId, level: u32, e: u64) -> bool {
        debug_assert!(!super::pte::is_present(e));
        if self.l1tf_checked(d) && self.l1tf_unsafe(level, e) {
            self.report_l1tf(d, level, e);
            return true;
        }
        false
    }

    /// True if an update just found a domain breaking the L1TF rule.
    #[inline]
    pub fn l1tf_violation_pending(&self) -> bool {
        self.l1tf_violation.is_some()
    }

    /// The domain an update just found breaking the L1TF rule, if any (cleared).
    pub fn take_l1tf_violation(&mut self) -> Option<L1tfViolation> {
        self.l1tf_violation.take()
    }

    /// One past the highest frame with a record.
    pub fn max_mfn(&self) -> Mfn {
        Mfn(self.frames.len() as u64)
    }

    /// Number of frames on the free list.
    pub fn nr_free(&self) -> u64 {
        self.nr_free
    }

    /// Sets the hypervisor entries installed in every validated guest L4.
    pub fn set_xen_l4_slots(&mut self, slots: XenL4Slots) {
        self.xen_l4 = slots;
    }

    /// The hypervisor entries installed in every validated guest L4.
    pub fn xen_l4_slots(&self) -> &XenL4Slots {
        &self.xen_l4
    }

    /// Replaces the policy for mapping non-RAM frames.
    pub fn set_iomem_policy(&mut self, policy: IomemPolicy) {
        self.iomem_policy = policy;
    }

    pub(crate) fn iomem_permitted(&self, d: DomId, mfn: Mfn) -> bool {
        self.iomem_policy.permits(self.domain(d).is_some_and(|m| m.iomem), self.owner(mfn), mfn)
    }

    #[inline]
    fn index(&self, mfn: Mfn) -> Option<usize> {
        (mfn.0 < self.frames.len() as u64).then_some(mfn.0 as usize)
    }

    #[inline]
    pub(crate) fn page(&self, mfn: Mfn) -> Option<&PageInfo> {
        self.frames.get(usize::try_from(mfn.0).ok()?)
    }

    /// Owner of `mfn`, or `None` beyond the table.
    pub fn owner(&self, mfn: Mfn) -> Option<Owner> {
        self.page(mfn).map(|p| owner_of(p.owner))
    }

    /// A snapshot of `mfn`'s record.
    pub fn info(&self, mfn: Mfn) -> Option<FrameInfo> {
        let p = self.page(mfn)?;
        Some(FrameInfo {
            owner: owner_of(p.owner),
            count: p.count & PGC_COUNT_MASK,
            allocated: p.count & PGC_ALLOCATED != 0,
            xen_shared: p.count & PGC_XEN_SHARED != 0,
            ty: type_of(p.type_info),
            type_count: p.type_info & PGT_COUNT_MASK,
            pinned: p.type_info & PGT_PINNED != 0,
            validated: p.type_info & PGT_VALIDATED != 0,
            linear: p.linear,
        })
    }

    /// Type of `mfn` (whatever its count).
    pub(crate) fn type_of(&self, mfn: Mfn) -> PageType {
        self.page(mfn).map_or(PageType::None, |p| type_of(p.type_info))
    }

    /// True if `mfn` currently holds a validated table of `ty` with a non-zero type count
    /// (Xen's `page_lock` precondition: its contents are trusted and stay so).
    pub(crate) fn is_live_type(&self, mfn: Mfn, ty: PageType) -> bool {
        self.page(mfn).is_some_and(|p| {
            type_of(p.type_info) == ty
                && p.type_info & PGT_VALIDATED != 0
                && p.type_info & PGT_COUNT_MASK != 0
        })
    }

    // -----------------------------------------------------------------------------------------
    // Boot-time setup

    /// Returns hypervisor-owned, unreferenced frames in `[start, end)` to the free pool.
    pub fn release_to_free(&mut self, start: Mfn, end: Mfn) {
        let end = end.0.min(self.frames.len() as u64);
        for m in (start.0..end).rev() {
            let i = m as usize;
            let p = &self.frames[i];
            if p.owner == DomId::XEN.0 && p.count == 0 && p.type_info == 0 {
                self.frames[i] = PageInfo { owner: OWNER_FREE, ..PageInfo::default() };
                self.push_free(i);
            }
        }
    }

    /// Marks hypervisor-owned, unreferenced frames in `[start, end)` as I/O (not RAM).
    pub fn mark_io(&mut self, start: Mfn, end: Mfn) {
        let end = end.0.min(self.frames.len() as u64);
        for m in start.0..end {
            let p = &mut self.frames[m as usize];
            if p.owner == DomId::XEN.0 && p.count == 0 && p.type_info == 0 {
                p.owner = DomId::IO.0;
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Domains

    /// Starts accounting for domain `d`.
    pub fn add_domain(&mut self, d: DomId, max_pages: u64, iomem: bool) -> Result<(), Errno> {
        if !d.is_real() {
            return Err(Errno::EINVAL);
        }
        let i = d.0 as usize;
        if self.domains.len() <= i {
            self.domains.resize(i + 1, None);
        }
        if self.domains[i].is_some() {
            return Err(Errno::EEXIST);
        }
        self.domains[i] = Some(DomainMem { tot_pages: 0, max_pages, iomem, dying: false });
        Ok(())
    }

    /// Stops accounting for `d`; it must own no frames any more.
    pub fn remove_domain(&mut self, d: DomId) -> Result<(), Errno> {
        let m = self.domain(d).ok_or(Errno::ESRCH)?;
        if m.tot_pages != 0 {
            return Err(Errno::EBUSY);
        }
        self.domains[d.0 as usize] = None;
        Ok(())
    }

    /// Accounting of domain `d`, if it exists.
    pub fn domain(&self, d: DomId) -> Option<&DomainMem> {
        self.domains.get(d.0 as usize)?.as_ref()
    }

    fn domain_mut(&mut self, d: DomId) -> Option<&mut DomainMem> {
        self.domains.get_mut(d.0 as usize)?.as_mut()
    }

    /// Frames owned by `d` (0 for unknown domains).
    pub fn tot_pages(&self, d: DomId) -> u64 {
        self.domain(d).map_or(0, |m| m.tot_pages)
    }

    /// Sets `d`'s allocation ceiling (it may be below the current `tot_pages`, which then
    /// only blocks further allocations).
    pub fn set_max_pages(&mut self, d: DomId, max_pages: u64) -> Result<(), Errno> {
        self.domain_mut(d).ok_or(Errno::ESRCH)?.max_pages = max_pages;
        Ok(())
    }

    /// True if `d` may use cache attributes (PWT/PCD/PAT) in its L1 entries.
    pub(crate) fn cache_attrs_ok(&self, d: DomId) -> bool {
        self.domain(d).is_some_and(|m| m.iomem)
    }

    // -----------------------------------------------------------------------------------------
    // TLB-flush bookkeeping

    /// Tells the table that every TLB (including global entries and paging-structure caches)
    /// has been flushed since the last call.
    pub fn tlb_flushed(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
        self.free_dirty = false;
        self.flush_pending = false;
    }

    /// True if a full TLB flush is owed before a guest may run again: a frame that may still
    /// have stale translations changed type or was handed to a new owner. Clears the flag.
    pub fn take_flush_pending(&mut self) -> bool {
        core::mem::take(&mut self.flush_pending)
    }

    /// True if a flush is owed (without clearing it).
    pub fn flush_pending(&self) -> bool {
        self.flush_pending
    }

    /// The epoch value that marks a frame as "no stale translations possible".
    fn clean_stamp(&self) -> u32 {
        self.epoch.wrapping_sub(1)
    }

    // -----------------------------------------------------------------------------------------
    // Allocation

    fn push_free(&mut self, i: usize) {
        self.frames[i].aux = self.free_head;
        self.free_head = i as u32;
        self.nr_free += 1;
    }

    fn pop_free(&mut self) -> Option<usize> {
        if self.free_head == NIL {
            return None;
        }
        let i = self.free_head as usize;
        self.free_head = self.frames[i].aux;
        self.nr_free -= 1;
        if self.free_dirty {
            // Whoever had this frame before may still reach it through its TLB.
            self.flush_pending = true;
        }
        Some(i)
    }

    /// A zeroed frame for domain `d`, counted in its `tot_pages`.
    pub fn alloc_domain_frame<M: MachineMemory>(&mut self, mem: &M, d: DomId) -> Result<Mfn, Errno> {
        let m = self.domain(d).ok_or(Errno::ESRCH)?;
        if m.dying || m.tot_pages >= m.max_pages {
            return Err(Errno::ENOMEM);
        }
        let i = self.pop_free().ok_or(Errno::ENOMEM)?;
        let mfn = Mfn(i as u64);
        mem.zero_frame(mfn);
        let stamp = self.clean_stamp();
        self.frames[i] =
            PageInfo { count: PGC_ALLOCATED | 1, type_info: 0, owner: d.0, linear: 0, aux: stamp };
        if let Some(m) = self.domain_mut(d) {
            m.tot_pages += 1;
        }
        Ok(mfn)
    }

    /// `2^order` machine-contiguous, naturally aligned, zeroed frames for domain `d` (the
    /// extents of `increase_reservation`/`populate_physmap` with `extent_order > 0`, which a
    /// driver domain needs for DMA buffers larger than a page). Scans for a free run, so it
    /// is linear in memory size: a boot- or driver-setup-time operation.
    pub fn alloc_domain_contiguous<M: MachineMemory>(
        &mut self,
        mem: &M,
        d: DomId,
        order: u32,
    ) -> Result<Mfn, Errno> {
        if order > MAX_CONTIGUOUS_ORDER {
            return Err(Errno::EINVAL);
        }
        if order == 0 {
            return self.alloc_domain_frame(mem, d);
        }
        let n = 1usize << order;
        let m = self.domain(d).ok_or(Errno::ESRCH)?;
        if m.dying || m.tot_pages + n as u64 > m.max_pages {
            return Err(Errno::ENOMEM);
        }
        let start = (0..self.frames.len().saturating_sub(n - 1))
            .step_by(n)
            .find(|&s| self.frames[s..s + n].iter().all(|p| p.owner == OWNER_FREE))
            .ok_or(Errno::ENOMEM)?;
        // Unlink the run from the free list.
        let mut prev = NIL;
        let mut cur = self.free_head;
        while cur != NIL {
            let next = self.frames[cur as usize].aux;
            if (start..start + n).contains(&(cur as usize)) {
                if prev == NIL {
                    self.free_head = next;
                } else {
                    self.frames[prev as usize].aux = next;
                }
                self.nr_free -= 1;
            } else {
                prev = cur;
            }
            cur = next;
        }
        if self.free_dirty {
            self.flush_pending = true;
        }
        let stamp = self.clean_stamp();
        for i in start..start + n {
            mem.zero_frame(Mfn(i as u64));
            self.frames[i] =
                PageInfo { count: PGC_ALLOCATED | 1, type_info: 0, owner: d.0, linear: 0, aux: stamp };
        }
        if let Some(m) = self.domain_mut(d) {
            m.tot_pages += n as u64;
        }
        Ok(Mfn(start as u64))
    }

    /// A zeroed frame for the hypervisor's own use.
    pub fn alloc_xen_frame<M: MachineMemory>(&mut self, mem: &M) -> Option<Mfn> {
        let i = self.pop_free()?;
        let mfn = Mfn(i as u64);
        mem.zero_frame(mfn);
        let stamp = self.clean_stamp();
        self.frames[i] = PageInfo { count: 0, type_info: 0, owner: DomId::XEN.0, linear: 0, aux: stamp };
        Some(mfn)
    }

    /// An allocator view (for code written against [`FrameAllocator`]).
    pub fn allocator<'a, M: MachineMemory>(&'a mut self, mem: &'a M) -> FrameTableAllocator<'a, M> {
        FrameTableAllocator { ft: self, mem }
    }

    /// Gives up a frame. A hypervisor frame must be unreferenced and goes straight back to
    /// the free pool. A domain frame loses its pin and its allocation reference (Xen's
    /// `guest_remove_page`) and is freed when its last other reference goes.
    pub fn free_frame<M: MachineMemory>(&mut self, mem: &M, mfn: Mfn) -> Result<(), Errno> {
        let i = self.index(mfn).ok_or(Errno::EINVAL)?;
        match owner_of(self.frames[i].owner) {
            Owner::Xen => {
                let p = self.frames[i];
                if p.count != 0 || p.type_info & PGT_COUNT_MASK != 0 {
                    return Err(Errno::EBUSY);
                }
                self.frames[i] = PageInfo { owner: OWNER_FREE, ..PageInfo::default() };
                self.push_free(i);
                self.free_dirty = true;
                Ok(())
            }
            Owner::Domain(d) => self.remove_page(mem, d, mfn),
            Owner::Free | Owner::Io => Err(Errno::EINVAL),
        }
    }

    /// Xen's `guest_remove_page` for a PV domain: `d` gives up `mfn` (decrease_reservation).
    pub fn remove_page<M: MachineMemory>(&mut self, mem: &M, d: DomId, mfn: Mfn) -> Result<(), Errno> {
        self.get_page(mfn, d)?;
        let i = mfn.0 as usize;
        if self.frames[i].count & PGC_XEN_SHARED != 0 {
            // Shared hypervisor frames are not the domain's to give back.
            self.put_page(mfn);
            return Err(Errno::EINVAL);
        }
        if self.frames[i].type_info & PGT_PINNED != 0 {
            self.frames[i].type_info &= !PGT_PINNED;
            self.put_page_and_type(mem, mfn);
        }
        if self.frames[i].count & PGC_ALLOCATED != 0 {
            self.frames[i].count &= !PGC_ALLOCATED;
            self.put_page(mfn);
        }
        self.put_page(mfn);
        Ok(())
    }

    /// Lends hypervisor frame `mfn` to `d` (shared_info, grant-table frames; or, with
    /// `d == DOMID_XEN`, makes a hypervisor frame such as the M2P mappable by privileged
    /// domains). It keeps a permanent `Writable` (or, read-only, `None`) type reference, so a
    /// read-only share can never be mapped writable and no share can become a page table.
    pub fn share_xen_frame(&mut self, mfn: Mfn, d: DomId, writable: bool) -> Result<(), Errno> {
        let i = self.index(mfn).ok_or(Errno::EINVAL)?;
        let p = self.frames[i];
        if p.owner != DomId::XEN.0 || p.count != 0 || p.type_info & PGT_COUNT_MASK != 0 {
            return Err(Errno::EBUSY);
        }
        if d == DomId::XEN {
            if writable {
                return Err(Errno::EPERM);
            }
        } else if self.domain(d).is_none() {
            return Err(Errno::ESRCH);
        }
        let ty = if writable { PageType::Writable } else { PageType::None };
        self.frames[i].owner = d.0;
        self.frames[i].count = PGC_ALLOCATED | PGC_XEN_SHARED | 1;
        self.frames[i].type_info = type_bits(ty) | PGT_VALIDATED | 1;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // General references

    /// Takes a general reference on `mfn`, which must be allocated and owned by `owner`
    /// (a domain, or `DOMID_XEN` for shared hypervisor frames).
    pub fn get_page(&mut self, mfn: Mfn, owner: DomId) -> Result<(), Errno> {
        let i = self.index(mfn).ok_or(Errno::EINVAL)?;
        let p = &mut self.frames[i];
        let c = p.count & PGC_COUNT_MASK;
        if c == 0 || c == PGC_COUNT_MASK || p.owner != owner.0 {
            return Err(Errno::EINVAL);
        }
        p.count += 1;
        Ok(())
    }

    /// [`FrameTable::put_page`] for loops over many entries (teardown of an L1): a reference
    /// that is not the frame's last is dropped inline.
    #[inline(always)]
    pub(crate) fn put_page_inline(&mut self, mfn: Mfn) {
        match self.frames.get_mut(mfn.0 as usize) {
            Some(f) if f.count & PGC_COUNT_MASK > 1 => f.count -= 1,
            _ => self.put_page(mfn),
        }
    }

    /// Drops a general reference; the last one frees the frame.
    pub fn put_page(&mut self, mfn: Mfn) {
        let Some(i) = self.index(mfn) else {
            debug_assert!(false, "put_page beyond the frame table: {mfn:?}");
            return;
        };
        let c = self.frames[i].count & PGC_COUNT_MASK;
        if c == 0 {
            debug_assert!(false, "general count underflow on {mfn:?}");
            return;
        }
        self.frames[i].count -= 1;
        if c == 1 {
            self.release(i);
        }
    }

    /// The last reference of frame `i` went away.
    fn release(&mut self, i: usize) {
        let p = self.frames[i];
        debug_assert_eq!(p.type_info & PGT_COUNT_MASK, 0, "frame {i:#x} freed with type references");
        debug_assert_eq!(p.count & PGC_ALLOCATED, 0, "frame {i:#x} freed while allocated");
        self.free_dirty = true;
        // A hypervisor frame lent to a domain (shared_info, grant-table frames) has no use
        // once its last reference goes: the loan ended with the domain. It is free memory,
        // whether the domain's teardown or a late unmap by another domain dropped it last.
        // (Frames shared with DOMID_XEN, like the M2P, keep their allocation reference and
        // never get here.)
        if p.count & PGC_XEN_SHARED != 0 && !matches!(owner_of(p.owner), Owner::Domain(_)) {
            self.frames[i] = PageInfo { owner: DomId::XEN.0, aux: self.epoch, ..PageInfo::default() };
            return;
        }
        if p.count & PGC_XEN_SHARED != 0 {
            self.frames[i] = PageInfo { owner: OWNER_FREE, ..PageInfo::default() };
            self.push_free(i);
            return;
        }
        if let Owner::Domain(d) = owner_of(p.owner) {
            if let Some(m) = self.domain_mut(d) {
                debug_assert!(m.tot_pages > 0);
                m.tot_pages = m.tot_pages.saturating_sub(1);
            }
        }
        self.frames[i] = PageInfo { owner: OWNER_FREE, ..PageInfo::default() };
        self.push_free(i);
    }

    // -----------------------------------------------------------------------------------------
    // Type references

    /// Takes a type reference of `ty` on `mfn` (the caller holds a general reference). The
    /// first reference of a page-table type validates the frame's entries.
    pub fn get_page_type<M: MachineMemory>(&mut self, mem: &M, mfn: Mfn, ty: PageType) -> Result<(), Errno> {
        self.get_page_type_with(mem, mfn, ty, &mut |_| false)
    }

    /// As [`FrameTable::get_page_type`]; `check_seg_desc` validates a frame that becomes a
    /// descriptor table (the architecture layer knows the descriptor rules).
    pub fn get_page_type_with<M: MachineMemory>(
        &mut self,
        mem: &M,
        mfn: Mfn,
        ty: PageType,
        check_seg_desc: &mut dyn FnMut(Mfn) -> bool,
    ) -> Result<(), Errno> {
        let i = self.index(mfn).ok_or(Errno::EINVAL)?;
        let ti = self.frames[i].type_info;
        let count = ti & PGT_COUNT_MASK;
        if count == PGT_COUNT_MASK {
            return Err(Errno::EINVAL);
        }
        let mut start = 0;
        if count != 0 && ti & PGT_PARTIAL != 0 && type_of(ti) == ty {
            // Resume a preempted validation (or a teardown: the entries below `aux` hold
            // their references either way). The caller holds a general reference of its own,
            // so dropping the partial state's cannot free the frame.
            debug_assert_eq!(count, 1);
            self.frames[i].type_info = ti & !PGT_PARTIAL;
            self.frames[i].count -= 1;
            start = self.frames[i].aux as usize;
        } else if count != 0 {
            // In use: only the same, fully validated type may be shared. An unvalidated frame
            // with references is partial or being validated further up this very call chain.
            if type_of(ti) != ty || ti & PGT_VALIDATED == 0 {
                return Err(Errno::EINVAL);
            }
            self.frames[i].type_info = ti + 1;
            return Ok(());
        }
        let validate = if count != 0 {
            true
        } else if type_of(ti) != ty {
            if self.frames[i].aux == self.epoch {
                // Translations from the frame's previous use may survive in a TLB; they must
                // be gone before the guest can use the new type.
                self.flush_pending = true;
            }
            self.frames[i].type_info = type_bits(ty) | 1;
            ty.needs_validation()
        } else {
            self.frames[i].type_info = (ti & !PGT_PINNED) + 1;
            ty.needs_validation() && ti & PGT_VALIDATED == 0
        };
        if !validate {
            self.frames[i].type_info |= PGT_VALIDATED;
            return Ok(());
        }
        self.frames[i].type_info &= !PGT_VALIDATED;
        let r = match ty.level() {
            Some(level) => pagetable::promote(self, mem, mfn, level, start),
            None if check_seg_desc(mfn) => Ok(()),
            None => Err((Errno::EINVAL, 0)),
        };
        // Nobody else can hold a type reference to a frame under validation.
        debug_assert_eq!(self.frames[i].type_info & PGT_COUNT_MASK, 1);
        match r {
            Ok(()) => {
                self.frames[i].type_info |= PGT_VALIDATED;
                Ok(())
            }
            Err((Errno::ERESTART, nr)) => {
                // Preempted: the frame keeps its progress and the partial state takes the
                // type reference and a general reference of its own (the caller drops its).
                self.frames[i].type_info |= PGT_PARTIAL;
                self.frames[i].aux = nr as u32;
                self.frames[i].count += 1;
                Err(Errno::ERESTART)
            }
            Err((e, 0)) => {
                self.frames[i].type_info = 0;
                self.frames[i].aux = self.epoch;
                Err(e)
            }
            Err((e, nr)) => {
                // The entries below the bad one hold references: release them, preemptibly.
                self.begin_teardown(mem, i, nr);
                Err(e)
            }
        }
    }

    /// Drops a type reference; the last one of a validated page table demotes it, dropping
    /// the references its entries held.
    pub fn put_page_type<M: MachineMemory>(&mut self, mem: &M, mfn: Mfn) {
        let Some(i) = self.index(mfn) else {
            debug_assert!(false, "put_page_type beyond the frame table: {mfn:?}");
            return;
        };
        let ti = self.frames[i].type_info;
        let count = ti & PGT_COUNT_MASK;
        if count == 0 {
            debug_assert!(false, "type count underflow on {mfn:?}");
            return;
        }
        if count == 1 {
            self.frames[i].aux = self.epoch;
            if type_of(ti).level().is_some() && ti & PGT_VALIDATED != 0 {
                // Unvalidated (partial) while its entries are released, so nothing can take
                // a new reference to a half-torn-down table; preemptible like validation.
                self.begin_teardown(mem, i, super::ENTRIES_PER_TABLE);
                return;
            }
        }
        self.frames[i].type_info = ti - 1;
    }

    /// `get_page` then `get_page_type`, undoing the first if the second fails.
    pub fn get_page_and_type<M: MachineMemory>(
        &mut self,
        mem: &M,
        mfn: Mfn,
        owner: DomId,
        ty: PageType,
    ) -> Result<(), Errno> {
        self.get_page(mfn, owner)?;
        if let Err(e) = self.get_page_type(mem, mfn, ty) {
            self.put_page(mfn);
            return Err(e);
        }
        Ok(())
    }

    /// `put_page_type` then `put_page`.
    pub fn put_page_and_type<M: MachineMemory>(&mut self, mem: &M, mfn: Mfn) {
        self.put_page_type(mem, mfn);
        self.put_page(mfn);
    }

    /// Pins `mfn` (owned by `owner`) as a table of `level`: a type reference that lasts until
    /// unpinned, so the table stays validated without being in use. Pinning is not nested.
    pub fn pin<M: MachineMemory>(
        &mut self,
        mem: &M,
        mfn: Mfn,
        owner: DomId,
        level: u32,
    ) -> Result<(), Errno> {
        let ty = PageType::table(level).ok_or(Errno::EINVAL)?;
        self.get_page_and_type(mem, mfn, owner, ty)?;
        let i = mfn.0 as usize;
        if self.frames[i].type_info & PGT_PINNED != 0 {
            self.put_page_and_type(mem, mfn);
            return Err(Errno::EINVAL);
        }
        self.frames[i].type_info |= PGT_PINNED;
        Ok(())
    }

    /// Undoes [`FrameTable::pin`].
    pub fn unpin<M: MachineMemory>(&mut self, mem: &M, mfn: Mfn, owner: DomId) -> Result<(), Errno> {
        self.get_page(mfn, owner)?;
        let i = mfn.0 as usize;
        if self.frames[i].type_info & PGT_PINNED == 0 {
            self.put_page(mfn);
            return Err(Errno::EINVAL);
        }
        self.frames[i].type_info &= !PGT_PINNED;
        self.put_page_and_type(mem, mfn);
        self.put_page(mfn);
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Linear page-table bookkeeping (XSA-240: a table that holds linear entries may not itself
    // be the target of one, so linear chains are one step long).

    /// Counts one more linear entry held by `table`; false if `table` is itself a target.
    pub(crate) fn inc_linear_entries(&mut self, table: Mfn) -> bool {
        let p = &mut self.frames[table.0 as usize];
        match p.linear.checked_add(1) {
            Some(n) if p.linear >= 0 => {
                p.linear = n;
                true
            }
            _ => false,
        }
    }

    pub(crate) fn dec_linear_entries(&mut self, table: Mfn) {
        let p = &mut self.frames[table.0 as usize];
        debug_assert!(p.linear > 0);
        if p.linear > 0 {
            p.linear -= 1;
        }
    }

    /// Counts one more linear entry pointing at `target`; false if `target` holds linear
    /// entries itself.
    pub(crate) fn inc_linear_uses(&mut self, target: Mfn) -> bool {
        let p = &mut self.frames[target.0 as usize];
        match p.linear.checked_sub(1) {
            Some(n) if p.linear <= 0 => {
                p.linear = n;
                true
            }
            _ => false,
        }
    }

    pub(crate) fn dec_linear_uses(&mut self, target: Mfn) {
        let p = &mut self.frames[target.0 as usize];
        debug_assert!(p.linear < 0);
        if p.linear < 0 {
            p.linear += 1;
        }
    }

    /// Takes one more type reference on an already validated table of `ty` (a linear entry's
    /// reference); false if it is not one or the count is saturated.
    pub(crate) fn get_validated_type(&mut self, mfn: Mfn, ty: PageType) -> bool {
        let p = &mut self.frames[mfn.0 as usize];
        let ti = p.type_info;
        if type_of(ti) != ty || ti & PGT_VALIDATED == 0 || ti & PGT_COUNT_MASK == PGT_COUNT_MASK {
            return false;
        }
        p.type_info = ti + 1;
        true
    }

    // -----------------------------------------------------------------------------------------
    // Domain destruction

    /// Drops every reference a dying domain holds on its own frames and returns its frames
    /// to the free pool: the references of `held_bases` (its vCPUs' kernel and user L4s, each
    /// holding a general and an L4 type reference), its pins, the entries of its page tables
    /// (tables kept alive only by linear references among themselves are torn down by force,
    /// as Xen does), and the allocation references. The domain can allocate no more.
    ///
    /// Frames that others still reference (another domain's mapping, a grant) stay owned and
    /// are freed with their last reference; when `tot_pages` reaches 0 the domain can be
    /// removed.
    pub fn relinquish<M: MachineMemory>(&mut self, mem: &M, d: DomId, held_bases: &[Mfn]) -> RelinquishStats {
        let Some(m) = self.domain_mut(d) else {
            return RelinquishStats::default();
        };
        m.dying = true;
        let before = self.count_owned(d);
        // Destruction is not preempted (a multicall's budget does not apply).
        let saved = self.budget;
        self.end_preemptible();

        for &b in held_bases {
            // A base holds a general and an L4 type reference of its own (the allocation
            // reference may already be gone: the guest can give back a frame in use).
            let ok = self.page(b).is_some_and(|p| {
                p.owner == d.0
                    && p.count & PGC_COUNT_MASK > 0
                    && type_of(p.type_info) == PageType::L4
                    && p.type_info & PGT_COUNT_MASK > 0
            });
            if ok {
                self.put_page_and_type(mem, b);
            }
        }

        let n = self.frames.len();
        for i in 0..n {
            if self.frames[i].owner == d.0 && self.frames[i].type_info & PGT_PINNED != 0 {
                self.frames[i].type_info &= !PGT_PINNED;
                self.put_page_and_type(mem, Mfn(i as u64));
            }
        }

        // Preempted validations and teardowns are finished now.
        for i in 0..n {
            if self.frames[i].owner == d.0 && self.frames[i].type_info & PGT_PARTIAL != 0 {
                self.teardown_partial(mem, Mfn(i as u64));
            }
        }
        let frames = &self.frames;
        self.deferred.retain(|m| frames[m.0 as usize].type_info & PGT_PARTIAL != 0);

        // Whatever tables are still validated are only referenced from inside the dead domain
        // (linear entries) or from outside it; nothing can use them any more.
        for level in (1..=4).rev() {
            let ty = PageType::table(level).unwrap_or(PageType::None);
            for i in 0..n {
                let ti = self.frames[i].type_info;
                if self.frames[i].owner == d.0 && type_of(ti) == ty && ti & PGT_VALIDATED != 0 {
                    self.frames[i].type_info = ti & !PGT_VALIDATED;
                    self.frames[i].aux = self.epoch;
                    pagetable::demote(self, mem, Mfn(i as u64), level);
                }
            }
        }

        for i in 0..n {
            if self.frames[i].owner != d.0 {
                continue;
            }
            let mfn = Mfn(i as u64);
            if self.frames[i].count & PGC_ALLOCATED != 0 {
                if self.frames[i].count & PGC_XEN_SHARED != 0 {
                    // The share's permanent type reference goes with its allocation reference.
                    self.put_page_type(mem, mfn);
                }
                self.frames[i].count &= !PGC_ALLOCATED;
                self.put_page(mfn);
            }
        }

        self.budget = saved;
        let after = self.count_owned(d);
        RelinquishStats { released: before - after, still_referenced: after }
    }

    fn count_owned(&self, d: DomId) -> u64 {
        self.frames.iter().filter(|p| p.owner == d.0).count() as u64
    }

    // -----------------------------------------------------------------------------------------
    // Consistency check

    /// Recomputes every reference and type count from scratch — allocations, pins, shared
    /// frames, the entries of every validated page table and the `external` references — and
    /// compares with the records. Also checks that no page-table frame is mapped writable,
    /// that validated tables contain only entries the rules allow, the linear counts, the
    /// free list and `tot_pages`. For tests and debug builds; `O(frames)`.
    pub fn audit<M: MachineMemory>(&self, mem: &M, external: &[ExternalRef]) -> Result<(), String> {
        let n = self.frames.len();
        let mut count = vec![0u64; n];
        let mut tcount = vec![0u64; n];
        let mut linear = vec![0i64; n];

        for (i, p) in self.frames.iter().enumerate() {
            if p.count & PGC_ALLOCATED != 0 {
                count[i] += 1;
            }
            if p.count & PGC_XEN_SHARED != 0 && p.count & PGC_ALLOCATED != 0 {
                tcount[i] += 1;
            }
            let ty = type_of(p.type_info);
            if p.type_info & PGT_PARTIAL != 0 {
                if ty.level().is_none()
                    || p.type_info & (PGT_VALIDATED | PGT_PINNED) != 0
                    || p.type_info & PGT_COUNT_MASK != 1
                    || p.aux as usize > super::ENTRIES_PER_TABLE
                {
                    return Err(format!("frame {i:#x}: inconsistent partial state {:#x}", p.type_info));
                }
                // The partial state's own type and general references.
                count[i] += 1;
                tcount[i] += 1;
            }
            if p.type_info & PGT_PINNED != 0 {
                if ty.level().is_none() || p.type_info & PGT_VALIDATED == 0 {
                    return Err(format!("frame {i:#x}: pinned but not a validated table"));
                }
                count[i] += 1;
                tcount[i] += 1;
            }
        }
        for r in external {
            let i = self.index(r.mfn).ok_or_else(|| format!("external ref beyond table: {:?}", r.mfn))?;
            count[i] += 1;
            if r.typed {
                tcount[i] += 1;
            }
            // Every root a vCPU can run on is a live, validated L4 of its domain: anything else
            // would let the hardware walk a frame the guest can write. (A dying domain's tables
            // are torn down by force while its vCPUs, which never run again, still hold them.)
            if let Some(d) = r.root_of.filter(|&d| !self.domain(d).is_some_and(|m| m.dying)) {
                let p = &self.frames[i];
                if owner_of(p.owner) != Owner::Domain(d)
                    || type_of(p.type_info) != PageType::L4
                    || p.type_info & PGT_VALIDATED == 0
                {
                    return Err(format!(
                        "root {:?} of {d}: not a validated L4 of it ({:?})",
                        r.mfn,
                        self.info(r.mfn)
                    ));
                }
            }
        }

        for (i, p) in self.frames.iter().enumerate() {
            let ty = type_of(p.type_info);
            let Some(level) = ty.level() else { continue };
            let tc = p.type_info & PGT_COUNT_MASK;
            let validated = p.type_info & PGT_VALIDATED != 0;
            if validated && tc == 0 {
                return Err(format!("frame {i:#x}: validated {ty:?} with no type references"));
            }
            // Entries holding references: all of a validated table's, those below the
            // progress mark of a partial one.
            let held = if validated {
                super::ENTRIES_PER_TABLE
            } else if p.type_info & PGT_PARTIAL != 0 {
                p.aux as usize
            } else {
                continue;
            };
            let Owner::Domain(d) = owner_of(p.owner) else {
                return Err(format!("frame {i:#x}: validated {ty:?} not owned by a domain"));
            };
            let table = Mfn(i as u64);
            for slot in 0..held {
                if level == 4 && !pagetable::is_guest_l4_slot(slot) {
                    continue;
                }
                let e = mem.read_pte(table, slot);
                if !super::pte::is_present(e) {
                    continue;
                }
                let t = super::pte::mfn(e);
                let ctx = || format!("L{level} {i:#x}[{slot}] = {e:#x}");
                if level == 1 {
                    if e & super::pte::GNTTAB != 0 {
                        continue;
                    }
                    let io = t.0 >= n as u64 || self.frames[t.0 as usize].owner == DomId::IO.0;
                    let mask = pagetable::l1_disallow_mask(self.cache_attrs_ok(d));
                    if e & mask != 0 {
                        return Err(format!("{}: disallowed flags", ctx()));
                    }
                    if io {
                        if !self.iomem_permitted(d, t) {
                            return Err(format!("{}: I/O frame without permission", ctx()));
                        }
                        continue;
                    }
                    count[t.0 as usize] += 1;
                    if e & super::pte::RW != 0 {
                        tcount[t.0 as usize] += 1;
                        let tt = type_of(self.frames[t.0 as usize].type_info);
                        if tt != PageType::Writable {
                            return Err(format!("{}: writable mapping of a {tt:?} frame", ctx()));
                        }
                    }
                    if e & super::pte::USER == 0 {
                        return Err(format!("{}: present L1e without _PAGE_USER", ctx()));
                    }
                    continue;
                }
                if e & pagetable::BASE_DISALLOW != 0 {
                    return Err(format!("{}: disallowed flags", ctx()));
                }
                if t == table {
                    if e & super::pte::RW != 0 {
                        return Err(format!("{}: writable self-map", ctx()));
                    }
                    continue;
                }
                let ti = *self.frames.get(t.0 as usize).ok_or_else(|| format!("{}: beyond RAM", ctx()))?;
                if ti.owner != p.owner {
                    return Err(format!("{}: target owned by another", ctx()));
                }
                count[t.0 as usize] += 1;
                tcount[t.0 as usize] += 1;
                let tt = type_of(ti.type_info);
                if tt == ty {
                    if e & super::pte::RW != 0 {
                        return Err(format!("{}: writable linear entry", ctx()));
                    }
                    linear[i] += 1;
                    linear[t.0 as usize] -= 1;
                } else if Some(tt) != PageType::table(level - 1) {
                    return Err(format!("{}: points at a {tt:?} frame", ctx()));
                }
                if ti.type_info & PGT_VALIDATED == 0 {
                    return Err(format!("{}: points at an unvalidated table", ctx()));
                }
            }
        }

        let mut tot = vec![0u64; self.domains.len()];
        for (i, p) in self.frames.iter().enumerate() {
            let c = u64::from(p.count & PGC_COUNT_MASK);
            let tc = u64::from(p.type_info & PGT_COUNT_MASK);
            if c != count[i] {
                return Err(format!(
                    "frame {i:#x} ({:?}): count {c}, expected {}",
                    self.info(Mfn(i as u64)),
                    count[i]
                ));
            }
            if tc != tcount[i] {
                return Err(format!(
                    "frame {i:#x} ({:?}): type count {tc}, expected {}",
                    self.info(Mfn(i as u64)),
                    tcount[i]
                ));
            }
            if i64::from(p.linear) != linear[i] {
                return Err(format!("frame {i:#x}: linear count {}, expected {}", p.linear, linear[i]));
            }
            if tc > 0 && c == 0 {
                return Err(format!("frame {i:#x}: type references without general references"));
            }
            match owner_of(p.owner) {
                Owner::Free => {
                    if p.count != 0 || p.type_info != 0 || p.linear != 0 {
                        return Err(format!("free frame {i:#x} has references or a type"));
                    }
                }
                Owner::Domain(d) => {
                    if p.count & PGC_XEN_SHARED == 0 {
                        match tot.get_mut(d.0 as usize) {
                            Some(t) => *t += 1,
                            None => return Err(format!("frame {i:#x} owned by unknown {d}")),
                        }
                    }
                    if c == 0 {
                        return Err(format!("frame {i:#x} owned by {d} without references"));
                    }
                }
                Owner::Xen | Owner::Io => {}
            }
        }
        for (d, m) in self.domains.iter().enumerate() {
            if let Some(m) = m {
                if m.tot_pages != tot[d] {
                    return Err(format!("d{d}: tot_pages {}, owns {}", m.tot_pages, tot[d]));
                }
            } else if tot.get(d).is_some_and(|&t| t != 0) {
                return Err(format!("frames owned by removed d{d}"));
            }
        }

        let mut seen = vec![false; n];
        let mut cur = self.free_head;
        let mut len = 0u64;
        while cur != NIL {
            let i = cur as usize;
            if i >= n || seen[i] {
                return Err(format!("free list corrupt at {i:#x}"));
            }
            seen[i] = true;
            if self.frames[i].owner != OWNER_FREE {
                return Err(format!("frame {i:#x} on the free list is owned"));
            }
            len += 1;
            cur = self.frames[i].aux;
        }
        if len != self.nr_free {
            return Err(format!("free list holds {len}, nr_free {}", self.nr_free));
        }
        if let Some(i) = (0..n).find(|&i| self.frames[i].owner == OWNER_FREE && !seen[i]) {
            return Err(format!("free frame {i:#x} missing from the free list"));
        }
        Ok(())
    }
}

/// Xen's `l1tf_calculations` where the L1D width is not known to exceed CPUID's: the top half
/// of the physical address space is assumed to hold nothing cacheable, extended above the
/// highest RAM frame if RAM reaches that far.
fn l1tf_safe_maddr(phys_addr_bits: u32, max_mfn: Mfn) -> u64 {
    let bits = phys_addr_bits.clamp(32, 52);
    let half = 1u64 << (bits - 1);
    let top = max_mfn.addr();
    if top <= half {
        half
    } else {
        top.next_power_of_two()
    }
}

fn owner_of(raw: u16) -> Owner {
    match raw {
        OWNER_FREE => Owner::Free,
        r if r == DomId::XEN.0 => Owner::Xen,
        r if r == DomId::IO.0 => Owner::Io,
        r => Owner::Domain(DomId(r)),
    }
}

/// [`FrameAllocator`] over a frame table: domain frames count against `max_pages`.
pub struct FrameTableAllocator<'a, M: MachineMemory> {
    pub ft: &'a mut FrameTable,
    pub mem: &'a M,
}

impl<M: MachineMemory> FrameAllocator for FrameTableAllocator<'_, M> {
    fn alloc_frame(&mut self, owner: DomId) -> Option<Mfn> {
        if owner == DomId::XEN {
            self.ft.alloc_xen_frame(self.mem)
        } else {
            self.ft.alloc_domain_frame(self.mem, owner).ok()
        }
    }

    fn free_frames(&self) -> u64 {
        self.ft.nr_free()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Xen's `pv-l1tf=` (XSA-273): domUs checked by default where the CPU is vulnerable, the
    /// hardware domain never; the option overrides either.
    #[test]
    fn l1tf_policy_follows_xens_pv_l1tf_option() {
        let p = |c, bug| L1tfPolicy::from_cmdline(c, bug);
        let (no, domu, both) = (
            L1tfPolicy { dom0: false, domu: false },
            L1tfPolicy::CHECK_DOMUS,
            L1tfPolicy { dom0: true, domu: true },
        );
        assert_eq!((p("", true), p("", false)), (domu, no));
        assert_eq!((p("pv-l1tf=1", false), p("pv-l1tf=off", true)), (both, no));
        assert_eq!(p("x=1 pv-l1tf=domu=1 y", false), domu);
        assert_eq!(p("pv-l1tf=dom0=yes,domu=no", true), L1tfPolicy { dom0: true, domu: false });
        assert_eq!(p("pv-l1tf=domu=maybe,junk", true), domu, "unknown values change nothing");
        assert_eq!(p("pv-l1tf=0 pv-l1tf=domu=on", false), domu, "the last option wins");
        let intel = [0x756e_6547, 0x4965_6e69, 0x6c65_746e]; // "GenuineIntel"
        let amd = [0x6874_7541, 0x6974_6e65, 0x444d_4163]; // "AuthenticAMD"
        assert!(cpu_has_bug_l1tf(intel, None) && cpu_has_bug_l1tf(intel, Some(0)));
        assert!(!cpu_has_bug_l1tf(intel, Some(crate::x86::arch_caps::RDCL_NO)));
        assert!(!cpu_has_bug_l1tf(amd, None));
    }
    use crate::mm::mmu;
    use crate::mm::mmu::testkit::*;
    use crate::mm::pte::make;
    use crate::mm::tlb::Flush;
    use hypercall_abi::xen::mmuext;

    #[test]
    fn page_info_is_16_bytes() {
        assert_eq!(core::mem::size_of::<PageInfo>(), 16);
    }

    #[test]
    fn boot_time_ownership() {
        let m = Machine::new(64);
        assert_eq!(m.ft.owner(Mfn(XEN_FRAMES.start)), Some(Owner::Xen));
        assert_eq!(m.ft.owner(Mfn(M2P_FRAMES.start)), Some(Owner::Xen));
        assert_eq!(m.ft.owner(Mfn(IO_FRAMES.start)), Some(Owner::Io));
        assert_eq!(m.ft.owner(Mfn(FIRST_RAM)), Some(Owner::Free));
        assert_eq!(m.ft.owner(Mfn(64)), None);
        assert_eq!(m.ft.nr_free(), 64 - FIRST_RAM);
        m.ft.audit(&m.mem, &[]).unwrap();
    }

    #[test]
    fn pinning_a_frame_mapped_writable_is_einval() {
        let (mut m, mut g, s) = one_guest();
        for cmd in [mmuext::PIN_L1_TABLE, mmuext::PIN_L2_TABLE, mmuext::PIN_L3_TABLE, mmuext::PIN_L4_TABLE] {
            assert_eq!(m.ext(&mut g, cmd, s.data[0].0, 0).result, Err(Errno::EINVAL));
        }
        // Pinning a live table at a different level, or someone else's frame: also EINVAL.
        assert_eq!(m.ext(&mut g, mmuext::PIN_L2_TABLE, s.l1.0, 0).result, Err(Errno::EINVAL));
        assert_eq!(m.ext(&mut g, mmuext::PIN_L1_TABLE, 0, 0).result, Err(Errno::EINVAL));
        assert_eq!(m.ext(&mut g, mmuext::PIN_L1_TABLE, 1 << 40, 0).result, Err(Errno::EINVAL));
        m.audit(&[&g]);
    }

    #[test]
    fn pin_and_unpin_are_not_nested() {
        let (mut m, mut g, s) = one_guest();
        let t = m.alloc(&g);
        assert_eq!(m.ext(&mut g, mmuext::PIN_L1_TABLE, t.0, 0).result, Ok(()));
        assert_eq!(m.ext(&mut g, mmuext::PIN_L1_TABLE, t.0, 0).result, Err(Errno::EINVAL));
        let i = m.info(t);
        assert_eq!((i.ty, i.type_count, i.count, i.pinned), (PageType::L1, 1, 2, true));
        assert_eq!(m.ext(&mut g, mmuext::UNPIN_TABLE, t.0, 0).result, Ok(()));
        assert_eq!(m.ext(&mut g, mmuext::UNPIN_TABLE, t.0, 0).result, Err(Errno::EINVAL));
        let i = m.info(t);
        assert_eq!((i.type_count, i.count, i.pinned, i.validated), (0, 1, false, false));
        // A table in use but never pinned, and another domain's pinned table.
        assert_eq!(m.ext(&mut g, mmuext::UNPIN_TABLE, s.l2.0, 0).result, Err(Errno::EINVAL));
        let mut other = m.guest(2, false, 16);
        let so = m.build_space(&mut other);
        assert_eq!(m.ext(&mut g, mmuext::UNPIN_TABLE, so.l4.0, 0).result, Err(Errno::EINVAL));
        m.audit(&[&g, &other]);
        // Unpinning the base L4 keeps it alive through the vCPU's reference.
        assert_eq!(m.ext(&mut g, mmuext::UNPIN_TABLE, s.l4.0, 0).result, Ok(()));
        assert_eq!(m.info(s.l4).type_count, 1);
        assert!(m.info(s.l3).validated);
        m.audit(&[&g, &other]);
        // Dropping the last use demotes the whole tree.
        assert_eq!(m.ext(&mut g, mmuext::NEW_BASEPTR, s.l1.0, 0).result, Err(Errno::EINVAL), "a live L1");
        let e = m.alloc(&g);
        assert_eq!(m.ext(&mut g, mmuext::NEW_BASEPTR, e.0, 0).result, Ok(()));
        for f in [s.l4, s.l3, s.l2, s.l1] {
            assert_eq!((m.info(f).type_count, m.info(f).validated), (0, false));
        }
        assert_eq!(m.info(s.data[0]).type_count, 0);
        m.audit(&[&g, &other]);
    }

    #[test]
    fn allocation_honours_max_pages_and_zeroes() {
        let mut m = Machine::new(32);
        m.ft.add_domain(DomId(3), 2, false).unwrap();
        assert_eq!(m.ft.add_domain(DomId(3), 2, false), Err(Errno::EEXIST));
        assert_eq!(m.ft.add_domain(DomId::XEN, 2, false), Err(Errno::EINVAL));
        // Leave garbage in every free frame.
        for f in FIRST_RAM..32 {
            m.mem.write_pte(Mfn(f), 5, 0x55);
        }
        let a = {
            let mut alloc = m.ft.allocator(&m.mem);
            let free = alloc.free_frames();
            let a = alloc.alloc_frame(DomId(3)).unwrap();
            let b = alloc.alloc_frame(DomId(3)).unwrap();
            assert_eq!(alloc.alloc_frame(DomId(3)), None, "max_pages");
            assert_eq!(alloc.alloc_frame(DomId(9)), None, "unknown domain");
            let x = alloc.alloc_frame(DomId::XEN).unwrap();
            assert_eq!(alloc.free_frames(), free - 3);
            for f in [a, b, x] {
                assert_eq!(m.mem.read_pte(f, 5), 0);
            }
            assert_eq!(m.ft.owner(x), Some(Owner::Xen));
            assert_eq!(m.ft.free_frame(&m.mem, x), Ok(()));
            a
        };
        assert_eq!(m.ft.tot_pages(DomId(3)), 2);
        assert_eq!(m.ft.alloc_domain_frame(&m.mem, DomId(3)), Err(Errno::ENOMEM));
        m.ft.set_max_pages(DomId(3), 3).unwrap();
        assert!(m.ft.alloc_domain_frame(&m.mem, DomId(3)).is_ok());
        assert_eq!(m.ft.remove_domain(DomId(3)), Err(Errno::EBUSY));
        assert_eq!(m.ft.free_frame(&m.mem, a), Ok(()));
        assert_eq!(m.ft.tot_pages(DomId(3)), 2);
        assert_eq!(m.ft.free_frame(&m.mem, a), Err(Errno::EINVAL), "already free");
        assert_eq!(m.ft.free_frame(&m.mem, Mfn(IO_FRAMES.start)), Err(Errno::EINVAL));
        assert_eq!(m.ft.free_frame(&m.mem, Mfn(M2P_FRAMES.start)), Err(Errno::EBUSY));
        m.ft.audit(&m.mem, &[]).unwrap();
        // Exhaustion.
        m.ft.set_max_pages(DomId(3), 1000).unwrap();
        while m.ft.alloc_domain_frame(&m.mem, DomId(3)).is_ok() {}
        assert_eq!(m.ft.nr_free(), 0);
        assert_eq!(m.ft.alloc_domain_frame(&m.mem, DomId(3)), Err(Errno::ENOMEM));
        assert_eq!(m.ft.alloc_xen_frame(&m.mem), None);
        m.ft.audit(&m.mem, &[]).unwrap();
    }

    #[test]
    fn a_type_change_after_use_needs_a_flush() {
        let (mut m, mut g, s) = one_guest();
        m.ft.tlb_flushed();
        let f = m.alloc(&g);
        // Mapped writable, unmapped: translations may linger in the TLB.
        assert_eq!(m.update(&mut g, s.l1, 9, make(f, RWF), SELF), Ok(()));
        assert_eq!(m.update(&mut g, s.l1, 9, 0, SELF), Ok(()));
        assert!(!m.ft.flush_pending());
        // Becoming a page table now requires a flush first.
        let r = m.ext(&mut g, mmuext::PIN_L1_TABLE, f.0, 0);
        assert_eq!((r.result, r.flush), (Ok(()), Flush::All));
        assert!(!m.ft.flush_pending(), "handed to the caller");
        // Unpinned and flushed: going back to writable needs none.
        assert_eq!(m.ext(&mut g, mmuext::UNPIN_TABLE, f.0, 0).result, Ok(()));
        m.ft.tlb_flushed();
        let r = m.run(&mut g, |ft, mem, ctx| mmu::update_va_mapping(ft, mem, ctx, 9 << 12, make(f, RWF), 0));
        assert_eq!(r, Ok(Flush::None));
        // Same with a demoted table becoming writable in the same epoch.
        let t = m.alloc(&g);
        assert_eq!(m.ext(&mut g, mmuext::PIN_L1_TABLE, t.0, 0).flush, Flush::None, "fresh frame");
        assert_eq!(m.ext(&mut g, mmuext::UNPIN_TABLE, t.0, 0).result, Ok(()));
        let r = m.run(&mut g, |ft, mem, ctx| mmu::update_va_mapping(ft, mem, ctx, 10 << 12, make(t, RWF), 0));
        assert_eq!(r, Ok(Flush::All));
        m.audit(&[&g]);
    }

    #[test]
    fn a_freed_frame_is_reused_only_after_a_flush() {
        let mut m = Machine::new(32);
        let g = m.guest(1, false, 8);
        let other = m.guest(2, false, 8);
        m.ft.tlb_flushed();
        let f = m.alloc(&g);
        assert!(!m.ft.take_flush_pending());
        m.ft.free_frame(&m.mem, f).unwrap();
        let h = m.alloc(&other);
        assert_eq!(h, f, "LIFO free list");
        assert!(m.ft.take_flush_pending());
        m.ft.tlb_flushed();
        m.ft.free_frame(&m.mem, h).unwrap();
        m.ft.tlb_flushed();
        m.alloc(&g);
        assert!(!m.ft.take_flush_pending());
    }

    #[test]
    fn relinquish_returns_every_frame() {
        let mut m = Machine::new(64);
        let free0 = m.ft.nr_free();
        let mut g = m.guest(1, false, 40);
        let s = m.build_space(&mut g);
        // Extra state: a user base, a pinned L1 mapped from the L2, linear and self entries,
        // a page-table frame mapped read-only, a shared hypervisor frame mapped writable.
        let u = m.alloc(&g);
        assert_eq!(m.ext(&mut g, mmuext::NEW_USER_BASEPTR, u.0, 0).result, Ok(()));
        let l1b = m.alloc(&g);
        assert_eq!(m.ext(&mut g, mmuext::PIN_L1_TABLE, l1b.0, 0).result, Ok(()));
        assert_eq!(m.update(&mut g, s.l2, 1, make(l1b, RWF), SELF), Ok(()));
        let l2b = m.alloc(&g);
        assert_eq!(m.ext(&mut g, mmuext::PIN_L2_TABLE, l2b.0, 0).result, Ok(()));
        assert_eq!(m.update(&mut g, s.l2, 2, make(l2b, RO), SELF), Ok(()));
        assert_eq!(m.update(&mut g, s.l4, 3, make(s.l4, RO), SELF), Ok(()));
        assert_eq!(m.update(&mut g, l1b, 0, make(s.l3, RO), SELF), Ok(()));
        let shared = m.ft.alloc_xen_frame(&m.mem).unwrap();
        m.ft.share_xen_frame(shared, g.domid, true).unwrap();
        assert_eq!(m.update(&mut g, l1b, 1, make(shared, RWF), SELF), Ok(()));
        assert_eq!(m.ext(&mut g, mmuext::PIN_L1_TABLE, shared.0, 0).result, Err(Errno::EINVAL));
        m.audit(&[&g]);
        let owned = m.ft.tot_pages(g.domid);

        let bases: Vec<Mfn> = [g.kernel_l4, g.user_l4].into_iter().flatten().collect();
        let st = m.ft.relinquish(&m.mem, g.domid, &bases);
        g.kernel_l4 = None;
        g.user_l4 = None;
        assert_eq!(st, RelinquishStats { released: owned + 1, still_referenced: 0 });
        assert_eq!(m.ft.tot_pages(g.domid), 0);
        // The lent frame's loan ended with the domain: it is free memory again.
        assert_eq!(m.ft.owner(shared), Some(Owner::Free));
        assert_eq!(m.ft.nr_free(), free0);
        assert_eq!(m.ft.alloc_domain_frame(&m.mem, g.domid), Err(Errno::ENOMEM), "dying");
        m.audit(&[]);
        assert_eq!(m.ft.remove_domain(g.domid), Ok(()));
        assert_eq!(m.ft.free_frame(&m.mem, shared), Err(Errno::EINVAL), "already free");
        assert_eq!(m.ft.nr_free(), free0);
        m.audit(&[]);
    }

    #[test]
    fn relinquish_keeps_frames_others_reference() {
        let mut m = Machine::new(64);
        let free0 = m.ft.nr_free();
        let mut d0 = m.guest(0, true, 16);
        let s0 = m.build_space(&mut d0);
        let mut g = m.guest(1, false, 16);
        let s = m.build_space(&mut g);
        assert_eq!(m.update(&mut d0, s0.l1, 9, make(s.data[2], RWF), 1), Ok(()));
        assert_eq!(m.update(&mut d0, s0.l1, 10, make(s.l1, RO), 1), Ok(()));
        // The vCPU's base is not handed over: it stays referenced too.
        let st = m.ft.relinquish(&m.mem, g.domid, &[]);
        assert_eq!(st.still_referenced, 3);
        assert_eq!(m.ft.tot_pages(g.domid), 3);
        assert_eq!(m.ft.remove_domain(g.domid), Err(Errno::EBUSY));
        m.audit(&[&d0, &g]);
        assert_eq!(m.update(&mut d0, s0.l1, 9, 0, SELF), Ok(()));
        assert_eq!(m.update(&mut d0, s0.l1, 10, 0, SELF), Ok(()));
        let mut ctx_guest = g.clone();
        m.run(&mut ctx_guest, mmu::destroy_baseptrs);
        assert_eq!(m.ft.tot_pages(g.domid), 0);
        assert_eq!(m.ft.remove_domain(g.domid), Ok(()));
        m.audit(&[&d0]);
        let bases: Vec<Mfn> = d0.kernel_l4.into_iter().collect();
        m.ft.relinquish(&m.mem, d0.domid, &bases);
        assert_eq!(m.ft.nr_free(), free0);
        m.audit(&[]);
    }

    #[test]
    fn shared_hypervisor_frames() {
        let mut m = Machine::new(32);
        let mut g = m.guest(1, false, 16);
        let s = m.build_space(&mut g);
        let x = m.ft.alloc_xen_frame(&m.mem).unwrap();
        assert_eq!(m.ft.share_xen_frame(x, DomId(9), true), Err(Errno::ESRCH));
        assert_eq!(m.ft.share_xen_frame(x, DomId::XEN, true), Err(Errno::EPERM));
        assert_eq!(m.ft.share_xen_frame(s.data[0], g.domid, true), Err(Errno::EBUSY));
        m.ft.share_xen_frame(x, g.domid, false).unwrap();
        assert_eq!(m.ft.share_xen_frame(x, g.domid, false), Err(Errno::EBUSY));
        // Read-only share: mappable read-only only, never a table, not given back.
        assert_eq!(m.update(&mut g, s.l1, 9, make(x, RWF), SELF), Err(Errno::EBUSY));
        assert_eq!(m.update(&mut g, s.l1, 9, make(x, RO), SELF), Ok(()));
        assert_eq!(m.ext(&mut g, mmuext::PIN_L1_TABLE, x.0, 0).result, Err(Errno::EINVAL));
        assert_eq!(decrease(&mut m, g.domid, x), Err(Errno::EINVAL));
        assert_eq!(m.ft.tot_pages(g.domid), 8, "shared frames are not counted");
        m.audit(&[&g]);

        // A writable share mapped by a privileged domain outlives the dying domain, and
        // relinquishing twice does not take the mapping's reference away.
        let mut d0 = m.guest(0, true, 16);
        let s0 = m.build_space(&mut d0);
        let w = m.ft.alloc_xen_frame(&m.mem).unwrap();
        m.ft.share_xen_frame(w, g.domid, true).unwrap();
        assert_eq!(m.update(&mut d0, s0.l1, 9, make(w, RWF), 1), Ok(()));
        let bases: Vec<Mfn> = g.kernel_l4.into_iter().collect();
        g.kernel_l4 = None;
        assert_eq!(m.ft.relinquish(&m.mem, g.domid, &bases).still_referenced, 1);
        assert_eq!(m.ft.relinquish(&m.mem, g.domid, &[]).still_referenced, 1);
        assert_eq!((m.info(w).count, m.info(w).type_count), (1, 1));
        m.audit(&[&d0]);
        // The late unmap drops the last reference: the frame is freed, not leaked.
        assert_eq!(m.update(&mut d0, s0.l1, 9, 0, SELF), Ok(()));
        assert_eq!(m.ft.owner(w), Some(Owner::Free));
        assert_eq!(m.ft.owner(x), Some(Owner::Free));
        assert_eq!(m.ft.remove_domain(g.domid), Ok(()));
        m.audit(&[&d0]);
    }

    fn decrease(m: &mut Machine, d: DomId, f: Mfn) -> Result<(), Errno> {
        mmu::decrease_reservation(&mut m.ft, &m.mem, d, 0, &[f.0]).1
    }

    #[test]
    fn remove_page_unpins_first() {
        let (mut m, mut g, _s) = one_guest();
        let t = m.alloc(&g);
        assert_eq!(m.ext(&mut g, mmuext::PIN_L2_TABLE, t.0, 0).result, Ok(()));
        let before = m.ft.tot_pages(g.domid);
        assert_eq!(decrease(&mut m, g.domid, t), Ok(()));
        assert_eq!(m.ft.owner(t), Some(Owner::Free));
        assert_eq!(m.ft.tot_pages(g.domid), before - 1);
        assert_eq!(decrease(&mut m, g.domid, t), Err(Errno::EINVAL));
        m.audit(&[&g]);
    }
}
