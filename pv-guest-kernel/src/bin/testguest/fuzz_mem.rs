//! The fuzzer's memory: a pool of pages it may do anything with (page tables it builds and
//! tears down, grant and copy targets, GDT frames, balloon fodder), the scratch pages every
//! pointer the hypervisor may write through points into, the windows it maps things at, the
//! palettes of pointers, frames and entries the generators draw from, and the page-table
//! operations themselves.
//!
//! Our own kernel's frames (image, stack, heap, page tables, rings) are never given to a
//! destructive call: [`Fuzzer::frame`] replaces any frame of ours outside the pool by a pool
//! frame, and the only entries of our live tables the fuzzer writes are the unused user-half
//! slots of our L4 and a playground L1 of its own.

use super::fuzz::{restore, Fuzzer};
use alloc::format;
use alloc::vec::Vec;
use hypercall_abi::hypercall::nr;
use hypercall_abi::memory::{op as memop, XenMemoryReservation};
use hypercall_abi::xen::{
    mmu, mmuext, uvmf, MmuUpdate, MmuextOp, HYPERVISOR_VIRT_START, MACH2PHYS_VIRT_START,
};
use hypercall_abi::{DomId, Errno, Mfn, Pfn};
use pv_guest_kernel::hypercall;
use pv_guest_kernel::mm::{self, pt};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Pages in the pool.
const POOL: usize = 160;
/// Xen's continuation bit in `mmu_update`/`mmuext_op` counts.
const MMU_UPDATE_PREEMPTED: u64 = 1 << 31;
/// Scratch pages for hypercall arguments, followed by an unmapped guard page.
/// The `va::TEST_ALIAS` window: the fuzzer runs alone in its domain, never beside `mm`.
pub(super) const ARG_VA: u64 = pv_guest_kernel::va::TEST_ALIAS;
pub(super) const ARG_PAGES: u64 = 4;
pub(super) const ARG_END: u64 = ARG_VA + ARG_PAGES * 4096;
/// A scratch page mapped read-only.
pub(super) const RO_VA: u64 = ARG_VA + 0x1_0000;
/// Pages laid out like the scratch pages (same size, unmapped guard page after them) for the
/// areas the hypervisor writes at any moment (runstate, vCPU time): kept apart from the
/// scratch pages, whose contents the oracles read as the hypervisor's answers.
pub(super) const AREA_VA: u64 = ARG_VA + 0x2_0000;
/// 2 MiB of addresses with an L1 of our own whose entries the fuzzer changes at will.
pub(super) const PLAY_VA: u64 = ARG_VA + 0x20_0000;
/// An address whose L2 entry is absent (no L1 to update).
pub(super) const NO_L1_VA: u64 = ARG_VA + 0x4000_0000;
/// The code page for kernel, compat-mode and user snippets (below 4 GiB, user-accessible)
/// and its data/stack page.
pub(super) const EXEC_VA: u64 = 0x1000_0000;
pub(super) const EXEC_DATA_VA: u64 = EXEC_VA + 0x1000;
/// The last page of the lower canonical half, for instructions that end at its edge.
pub(super) const TOP_VA: u64 = 0x7fff_ffff_f000;
/// How the exec and top pages are mapped: read-only, executable, user-accessible.
pub(super) const CODE_PAGE: u64 = pt::PRESENT | pt::USER | pt::ACCESSED;
/// Hypervisor addresses: the image, the direct map.
const HV_TEXT: u64 = 0xffff_82d0_8020_0000;
const HV_DIRECTMAP: u64 = 0xffff_8300_0000_0000;

/// A page of the pool.
#[derive(Clone, Copy, Debug)]
pub(super) struct PoolPage {
    pub pfn: Pfn,
    pub mfn: Mfn,
    pub va: u64,
    /// Given back to the hypervisor (ballooned out): no frame behind `pfn` now.
    pub out: bool,
    /// Lost to the fuzzer (could not be brought back after a balloon round).
    pub lost: bool,
}

pub(super) struct Mem {
    pub pool: Vec<PoolPage>,
    /// Our kernel's L4.
    pub real_l4: Mfn,
    pub max_mfn: u64,
    pub shared_info: Mfn,
    pub grant_frames: Vec<Mfn>,
    /// Machine address of the playground L1's first entry.
    pub play_l1: u64,
    /// The exec, exec-data and top pages (ours, outside the pool).
    pub exec: mm::Page,
    pub exec_data: mm::Page,
    pub top: mm::Page,
    /// Bump allocator over the scratch pages, reset per operation.
    scratch_at: u64,
    /// While a multicall's entries are generated ([`Mem::reserve`]) the scratch pages do not
    /// wrap: once they are full, the room handed out is past their end (unmapped).
    no_wrap: bool,
}

/// Kinds of frame a generator asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Use {
    /// Will be written by the hypervisor or become a table: never one of ours outside the pool.
    Destructive,
    /// Only read or mapped read-only: any frame, ours included.
    ReadOnly,
}

impl Mem {
    pub fn new(shared_info_ma: u64) -> Result<Mem, Errno> {
        let real_l4 = mm::info().ok_or(Errno::ENODEV)?.l4;
        let mut pool = Vec::new();
        for _ in 0..POOL {
            let p = mm::alloc_page()?;
            pool.push(PoolPage { pfn: p.pfn, mfn: p.mfn, va: p.va, out: false, lost: false });
        }
        for i in 0..ARG_PAGES {
            let p = mm::alloc_page()?;
            mm::map_page(ARG_VA + i * 4096, p.mfn, pt::PAGE_KERNEL | pt::NX)?;
        }
        for i in 0..ARG_PAGES {
            let p = mm::alloc_page()?;
            mm::map_page(AREA_VA + i * 4096, p.mfn, pt::PAGE_KERNEL | pt::NX)?;
        }
        let ro = mm::alloc_page()?;
        mm::map_page(RO_VA, ro.mfn, pt::PAGE_KERNEL_RO | pt::NX)?;
        let play_l1 = mm::entry_maddr(PLAY_VA, 1)?;
        let exec = mm::alloc_page()?;
        let exec_data = mm::alloc_page()?;
        let top = mm::alloc_page()?;
        mm::map_page(EXEC_VA, exec.mfn, CODE_PAGE)?;
        mm::map_page(EXEC_DATA_VA, exec_data.mfn, pt::PAGE_KERNEL | pt::NX)?;
        mm::map_page(TOP_VA, top.mfn, CODE_PAGE)?;
        let max_mfn = hypercall::check(hypercall::memory_op_raw(memop::MAXIMUM_RAM_PAGE, 0))?;
        pv_guest_kernel::gnttab::init(pv_guest_kernel::gnttab::DEFAULT_FRAMES)?;
        let mut m = Mem {
            pool,
            real_l4,
            max_mfn,
            shared_info: Mfn::containing(shared_info_ma),
            grant_frames: Vec::new(),
            play_l1,
            exec,
            exec_data,
            top,
            scratch_at: 0,
            no_wrap: false,
        };
        m.grant_frames = m.query_frames_again();
        Ok(m)
    }

    /// The frames of our grant table, as `setup_table` with the current size reports them.
    pub fn query_frames_again(&self) -> Vec<Mfn> {
        use hypercall_abi::grant_table::{gntst, GnttabQuerySize};
        let mut q = GnttabQuerySize { dom: DomId::SELF, ..Default::default() };
        if hypercall::grant_table_op(core::slice::from_mut(&mut q)).is_err() || q.status != gntst::OKAY {
            return Vec::new();
        }
        let mut list = [0u64; 64];
        let n = (q.nr_frames as usize).min(list.len());
        match pv_guest_kernel::gnttab::setup_table(&mut list[..n]) {
            Ok(()) => list[..n].iter().map(|&m| Mfn(m)).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// True if `mfn` is one of our frames (the M2P and our P2M agree on it).
    pub fn is_ours(&self, mfn: Mfn) -> bool {
        if mfn.0 >= self.max_mfn {
            return false;
        }
        mm::mfn_to_pfn(mfn).and_then(mm::pfn_to_mfn) == Some(mfn)
    }

    /// The pool page holding `mfn`.
    pub fn pool_index(&self, mfn: Mfn) -> Option<usize> {
        self.pool.iter().position(|p| p.mfn == mfn && !p.out && !p.lost)
    }

    /// True if a frame is one we must not hand to a destructive call.
    pub fn is_precious(&self, mfn: Mfn) -> bool {
        self.is_ours(mfn) && self.pool_index(mfn).is_none()
    }

    /// True if `mfn` is shared with us by the hypervisor (shared_info, grant-table frames).
    pub fn is_shared_with_us(&self, mfn: Mfn) -> bool {
        mfn == self.shared_info || self.grant_frames.contains(&mfn)
    }

    /// True if the pool page's direct-map entry is present and writable (so the page is no
    /// page table or descriptor table now, and we may write it).
    pub fn is_rw(&self, i: usize) -> bool {
        let p = &self.pool[i];
        !p.out
            && !p.lost
            && matches!(mm::lookup(p.va), Ok(Some(e)) if pt::is_present(e) && e & pt::RW != 0 && pt::mfn(e) == p.mfn)
    }

    /// Writes entry `idx` of pool page `i` if it is writable now.
    pub fn write_entry(&self, i: usize, idx: usize, val: u64) -> bool {
        if !self.is_rw(i) {
            return false;
        }
        // SAFETY: the page is a pool page, present and writable in our direct map (checked
        // just now): no page table, and no Rust object lives in it.
        unsafe { ((self.pool[i].va + (idx as u64 % 512) * 8) as *mut u64).write_volatile(val) };
        true
    }

    /// Starts a new operation's scratch allocations.
    pub fn scratch_reset(&mut self) {
        self.scratch_at = 0;
        self.no_wrap = false;
    }

    /// Room for `size` bytes in the scratch pages (wrapping when they are full, unless a
    /// multicall is being generated).
    pub fn scratch(&mut self, size: u64) -> u64 {
        let size = size.min(ARG_PAGES * 4096);
        if self.scratch_at + size > ARG_PAGES * 4096 {
            if self.no_wrap {
                return ARG_END;
            }
            self.scratch_at = 0;
        }
        let at = ARG_VA + self.scratch_at;
        self.scratch_at = (self.scratch_at + size + 15) & !15;
        at
    }

    /// Room for a multicall's entry array of `size` bytes, taken before its entries are
    /// generated; until [`Mem::release`] the scratch pages do not wrap. The entries run one
    /// after the other, so no entry may point the hypervisor (which writes back through the
    /// pointers) at the array or at another entry's argument: with wrapping, seed 20240601
    /// had an entry's `pdone` rewrite the next entry's address into our scratch page's, whose
    /// `update_va_mapping` then remapped the page holding the entries, and trap tables
    /// rewritten before their `set_trap_table` ran. Returns the array's place and the mode
    /// to give back to `release`.
    pub fn reserve(&mut self, size: u64) -> (u64, bool) {
        let at = self.scratch(size);
        (at, core::mem::replace(&mut self.no_wrap, true))
    }

    /// Ends a [`Mem::reserve`].
    pub fn release(&mut self, no_wrap: bool) {
        self.no_wrap = no_wrap;
    }

    /// Copies `v` into the scratch pages; returns its address.
    pub fn put<T: IntoBytes + Immutable>(&mut self, v: &T) -> u64 {
        let bytes = v.as_bytes();
        let at = self.scratch(bytes.len() as u64);
        put_bytes(at, bytes);
        at
    }

    /// Up to `max` bytes from `at`: as many as lie inside the scratch pages (a struct that
    /// runs past their end is seen cut short, not as zeros).
    pub fn get_bytes(&self, at: u64, max: usize) -> Vec<u8> {
        if !(ARG_VA..ARG_END).contains(&at) {
            return Vec::new();
        }
        let n = (ARG_END - at).min(max as u64);
        (0..n)
            .map(|k| {
                // SAFETY: `at + k` is inside the scratch pages, which are mapped writable.
                unsafe { ((at + k) as *const u8).read_volatile() }
            })
            .collect()
    }

    /// Reads a `T` back from the scratch pages.
    pub fn get<T: FromBytes + IntoBytes>(&self, at: u64) -> T {
        let mut v = T::new_zeroed();
        let n = core::mem::size_of::<T>();
        if at >= ARG_VA && at.checked_add(n as u64).is_some_and(|end| end <= ARG_END) {
            let bytes = v.as_mut_bytes();
            for (k, b) in bytes.iter_mut().enumerate() {
                // SAFETY: inside the scratch pages, mapped writable (checked bounds above).
                *b = unsafe { ((at + k as u64) as *const u8).read_volatile() };
            }
        }
        v
    }
}

/// Writes `bytes` at `at` in the scratch pages (bounds-checked; anything outside is dropped).
pub(super) fn put_bytes(at: u64, bytes: &[u8]) {
    for (k, &b) in bytes.iter().enumerate() {
        let a = at + k as u64;
        if (ARG_VA..ARG_END).contains(&a) {
            // SAFETY: inside the scratch pages, which are ours and mapped writable.
            unsafe { (a as *mut u8).write_volatile(b) };
        }
    }
}

impl Fuzzer {
    /// A pool page index, or `None` if the pool is empty.
    pub fn pool_page(&mut self) -> usize {
        for _ in 0..256 {
            let i = self.rng.below(self.mem.pool.len() as u64) as usize;
            let p = self.mem.pool[i];
            if !p.out && !p.lost {
                return i;
            }
        }
        self.mem.pool.iter().position(|p| !p.out && !p.lost).unwrap_or(0)
    }

    /// A pool page that is writable now, if one turns up in a few tries.
    pub fn rw_pool_page(&mut self) -> Option<usize> {
        for _ in 0..8 {
            let i = self.pool_page();
            if self.mem.is_rw(i) {
                return Some(i);
            }
        }
        None
    }

    /// A frame number for a generator: mostly pool frames, then anything in RAM (ours outside
    /// the pool replaced, for destructive uses), frames beyond RAM, frames shared with us.
    pub fn frame(&mut self, u: Use) -> Mfn {
        let max = self.mem.max_mfn.max(1);
        let m = match self.rng.below(100) {
            0..=54 => {
                let i = self.pool_page();
                self.mem.pool[i].mfn
            }
            55..=69 => Mfn(self.rng.below(max)),
            70..=74 => Mfn(max + self.rng.below(16)),
            75..=77 => Mfn(self.rng.pick(&[1 << 28, (1 << 40) - 1, (1 << 52) - 1, u64::MAX >> 12])),
            78..=81 => self.mem.shared_info,
            82..=85 => match self.mem.grant_frames.is_empty() {
                true => Mfn(0),
                false => self.mem.grant_frames[self.rng.below(self.mem.grant_frames.len() as u64) as usize],
            },
            86..=89 => Mfn(self.rng.below(16)),
            90..=93 => self.mem.real_l4,
            _ => self.mem.exec.mfn,
        };
        if u == Use::Destructive && (self.mem.is_precious(m) || self.mem.is_shared_with_us(m)) {
            let i = self.pool_page();
            return self.mem.pool[i].mfn;
        }
        m
    }

    /// Flags for an entry: mostly what guests use, sometimes with odd bits.
    pub fn pte_flags(&mut self) -> u64 {
        let mut f = pt::PRESENT | pt::USER | pt::ACCESSED;
        if self.rng.chance(1, 2) {
            f |= pt::RW;
        }
        if self.rng.chance(1, 3) {
            f |= pt::DIRTY;
        }
        if self.rng.chance(1, 10) {
            f |= self.rng.pick(&[
                pt::PWT,
                pt::PCD,
                pt::PSE,
                pt::GLOBAL,
                pt::NX,
                pt::AVAIL_LOW,
                pt::AVAIL_HIGH,
            ]);
        }
        if self.rng.chance(1, 20) {
            f &= !self.rng.pick(&[pt::USER, pt::PRESENT, pt::ACCESSED]);
        }
        f
    }

    /// An entry for a table: a frame with flags, empty, a non-present entry with junk (the
    /// L1TF class), or anything at all. Writable entries never name a frame of ours outside
    /// the pool.
    pub fn pte(&mut self) -> u64 {
        match self.rng.below(100) {
            0..=9 => 0,
            10..=14 => self.rng.next() & !pt::PRESENT,
            15..=19 => self.rng.next(),
            _ => {
                let f = self.pte_flags();
                let u = if f & pt::RW != 0 { Use::Destructive } else { Use::ReadOnly };
                pt::make(self.frame(u), f)
            }
        }
    }

    /// A pointer the hypervisor may write `size` bytes through: into the scratch pages (often
    /// at their very end, straddling the guard page), or somewhere it must refuse.
    pub fn ptr_out(&mut self, size: u64) -> u64 {
        let span = ARG_PAGES * 4096;
        match self.rng.below(100) {
            0..=59 => {
                let at = self.mem.scratch(size);
                if self.rng.chance(1, 8) {
                    at + self.rng.below(8)
                } else {
                    at
                }
            }
            60..=67 => ARG_VA + span - self.rng.range(1, size.clamp(1, span)),
            68..=72 => RO_VA + self.rng.below(4096),
            73..=76 => self.rng.pick(&[0, 8, 0x1000, NO_L1_VA]),
            77..=80 => self.rng.pick(&[1 << 63, 1 << 47, 0xffff_7fff_ffff_f000, 0x8000_0000_0000 - 4]),
            81..=86 => {
                self.rng.pick(&[HV_TEXT, HV_DIRECTMAP, HYPERVISOR_VIRT_START + 0x1_0000_0000])
                    + self.rng.below(1 << 20)
            }
            87..=89 => MACH2PHYS_VIRT_START + self.rng.below(1 << 16),
            90..=92 => u64::MAX - self.rng.below(64),
            _ => self.rng.next(),
        }
    }

    /// A pointer the hypervisor only reads: anything [`Fuzzer::ptr_out`] gives, and our own
    /// memory besides (our stack, text, the playground, shared pages).
    pub fn ptr_in(&mut self, size: u64) -> u64 {
        match self.rng.below(10) {
            0 => {
                let local = 0u64;
                core::ptr::addr_of!(local) as u64 - self.rng.below(256)
            }
            1 => ptr_in_text as *const () as u64 + self.rng.below(64),
            2 => PLAY_VA + self.rng.below(2 << 20),
            3 => pv_guest_kernel::gnttab::GNTTAB_VA + self.rng.below(4096),
            _ => self.ptr_out(size),
        }
    }

    /// A domain id: ourselves (both ways), dom0, the neighbour, special ids, anything.
    pub fn domid(&mut self) -> DomId {
        match self.rng.below(12) {
            0..=3 => DomId::SELF,
            4 => self.me,
            5 => DomId::DOM0,
            6 => self.peer.unwrap_or(DomId(2)),
            7 => self.rng.pick(&[DomId::IO, DomId::XEN, DomId::COW, DomId::INVALID, DomId::ANY, DomId::IDLE]),
            8 => DomId(self.rng.range(3, 16) as u16),
            _ => DomId(self.rng.next() as u16),
        }
    }

    /// A virtual address for `update_va_mapping` / `INVLPG`: the playground mostly, the
    /// direct-map address of a pool page, places that must be refused.
    pub fn va(&mut self) -> u64 {
        match self.rng.below(20) {
            0..=11 => {
                PLAY_VA
                    + self.rng.below(512) * 4096
                    + if self.rng.chance(1, 10) { self.rng.below(4096) } else { 0 }
            }
            12 => NO_L1_VA + self.rng.below(1 << 20),
            13 => self.rng.pick(&[
                HV_TEXT,
                HV_DIRECTMAP,
                MACH2PHYS_VIRT_START,
                HYPERVISOR_VIRT_START + 0x7f_ffff_f000,
            ]),
            14 => self.rng.pick(&[1 << 47, 1 << 63, !0xfff, 0x8000_0000_0000 - 0x1000]),
            15 => {
                // Anywhere in the lower half but our exec pages.
                let v = self.rng.below(1 << 47) & !0xfff;
                if (EXEC_VA..EXEC_VA + 0x2000).contains(&v) || v == TOP_VA {
                    PLAY_VA
                } else {
                    v
                }
            }
            _ => ARG_VA + 0x100_0000 + self.rng.below(1 << 20) * 4096,
        }
    }

    /// Oracle for a mapping the hypervisor accepted: entry `e` at `level` (1 = leaf) must
    /// name a frame we own, or (a leaf) one the hypervisor shares with us.
    pub fn check_mapped(&mut self, what: &str, level: u32, e: u64) {
        if !pt::is_present(e) {
            return;
        }
        let m = pt::mfn(e);
        let ok = self.mem.is_ours(m) || (level == 1 && self.mem.is_shared_with_us(m));
        if !ok {
            self.fail(format!("{what}: the hypervisor let a domU map frame {:#x} (entry {e:#x}, L{level}), which is not its own", m.0));
        }
    }

    // ----------------------------------------------------------------------------------------
    // Page-table operations

    pub fn pt_op(&mut self) {
        self.mem.scratch_reset();
        match self.rng.below(100) {
            0..=14 => self.fill_page(),
            15..=24 => self.remap_pool_page(),
            25..=34 => self.pin_op(),
            35..=54 => self.mmu_update_op(),
            55..=69 => self.uvm_op(),
            70..=79 => self.build_tree(),
            80..=84 => self.teardown_some(),
            _ => self.mmuext_op(),
        }
    }

    /// Writes a few entries into a writable pool page (no hypercall).
    fn fill_page(&mut self) {
        let Some(i) = self.rw_pool_page() else { return };
        for _ in 0..self.rng.range(1, 8) {
            let idx = self.rng.below(512) as usize;
            let e = self.pte();
            self.mem.write_entry(i, idx, e);
        }
    }

    /// Remaps a pool page in our direct map: read-only, writable again, with odd flags, or
    /// not at all. Never to another frame (our direct map must keep meaning what it says).
    fn remap_pool_page(&mut self) {
        let i = self.pool_page();
        let p = self.mem.pool[i];
        let flags = match self.rng.below(10) {
            0..=4 => pt::PAGE_KERNEL_RO,
            5..=7 => pt::PAGE_KERNEL,
            8 => self.pte_flags(),
            _ => 0,
        };
        let val = if flags == 0 { 0 } else { pt::make(p.mfn, flags) };
        let fl = self.rng.pick(&[uvmf::INVLPG, uvmf::TLB_FLUSH, uvmf::NONE, uvmf::INVLPG | uvmf::ALL]);
        self.call("remap pool page", nr::UPDATE_VA_MAPPING, [p.va, val, fl, 0, 0]);
    }

    /// The page-table level a pin command asks for.
    fn pin_cmd(&mut self) -> u32 {
        self.rng.pick(&[
            mmuext::PIN_L1_TABLE,
            mmuext::PIN_L2_TABLE,
            mmuext::PIN_L3_TABLE,
            mmuext::PIN_L4_TABLE,
        ])
    }

    fn pin_op(&mut self) {
        let m = self.frame(Use::Destructive);
        let cmd = if self.rng.chance(1, 2) { self.pin_cmd() } else { mmuext::UNPIN_TABLE };
        let r = self.ext1("pin/unpin", cmd, m.0, 0);
        if r == 0 && cmd != mmuext::UNPIN_TABLE {
            self.stats.pins += 1;
        }
    }

    /// One `mmuext_op` request; returns the hypercall's result.
    pub fn ext1(&mut self, what: &'static str, cmd: u32, arg1: u64, arg2: u64) -> i64 {
        let op = MmuextOp { cmd, _pad: 0, arg1, arg2 };
        let at = self.mem.put(&op);
        let done = self.mem.scratch(4);
        self.call(what, nr::MMUEXT_OP, [at, 1, done, u64::from(DomId::SELF.0), 0])
    }

    /// The machine address of an entry the fuzzer may change: in a pool page (any slot), the
    /// playground L1, or an unused user-half slot of our live L4.
    fn entry_ptr(&mut self) -> u64 {
        match self.rng.below(10) {
            0..=5 => {
                let i = self.pool_page();
                self.mem.pool[i].mfn.addr() + self.rng.below(512) * 8
            }
            6..=7 => self.mem.play_l1 + self.rng.below(512) * 8,
            8 => self.mem.real_l4.addr() + self.rng.range(1, 254) * 8,
            _ => {
                let m = self.frame(Use::Destructive);
                m.addr().wrapping_add(self.rng.below(512) * 8)
            }
        }
    }

    fn mmu_update_op(&mut self) {
        let n = match self.rng.below(20) {
            0 => 0,
            1 => self.rng.range(513, 700),
            _ => self.rng.range(1, 8),
        };
        let mut reqs: Vec<MmuUpdate> = Vec::new();
        let mut m2p_touched: Vec<Mfn> = Vec::new();
        for _ in 0..n {
            let kind = self.rng.below(100);
            let req = match kind {
                0..=79 => {
                    let ptr = self.entry_ptr();
                    // (An M2P update of these frames would be one of our own tables'.)
                    let ty = match self.rng.below(20) {
                        0 => mmu::PT_UPDATE_PRESERVE_AD,
                        1 => mmu::PT_UPDATE_NO_TRANSLATE,
                        _ => mmu::NORMAL_PT_UPDATE,
                    };
                    MmuUpdate { ptr: ptr | ty, val: self.pte() }
                }
                80..=89 => {
                    // MMU_MACHPHYS_UPDATE: a pool frame's M2P entry (put back afterwards) or
                    // a frame that is not ours (must be refused).
                    let m = self.frame(Use::Destructive);
                    if self.mem.pool_index(m).is_some() {
                        m2p_touched.push(m);
                    }
                    let pfn = match self.rng.below(4) {
                        0 => self.rng.next(),
                        _ => self.rng.below(1 << 14),
                    };
                    MmuUpdate { ptr: m.addr() | mmu::MACHPHYS_UPDATE, val: pfn }
                }
                _ => {
                    // Anything, but never an entry or M2P slot of a frame of ours outside the
                    // pool.
                    let ptr = self.rng.next();
                    let ptr = if self.mem.is_precious(Mfn(ptr >> 12))
                        || self.mem.is_shared_with_us(Mfn(ptr >> 12))
                    {
                        let i = self.pool_page();
                        self.mem.pool[i].mfn.addr() | (ptr & 0xfff)
                    } else {
                        ptr
                    };
                    if ptr & 3 == mmu::MACHPHYS_UPDATE && self.mem.pool_index(Mfn(ptr >> 12)).is_some() {
                        m2p_touched.push(Mfn(ptr >> 12));
                    }
                    MmuUpdate { ptr, val: self.rng.next() }
                }
            };
            reqs.push(req);
        }
        // The M2P updates that must be refused: frames that are not ours.
        let foreign_m2p: Vec<Mfn> = reqs
            .iter()
            .filter(|q| q.ptr & 3 == mmu::MACHPHYS_UPDATE)
            .map(|q| Mfn(q.ptr >> 12))
            .filter(|&m| !self.mem.is_ours(m))
            .collect();
        let count = reqs.len() as u64;
        let at = if reqs.is_empty() { self.ptr_out(16) } else { self.put_slice(&reqs) };
        let count = match self.rng.below(30) {
            0 => count | MMU_UPDATE_PREEMPTED,
            1 => self.rng.edgy(),
            _ => count,
        };
        let pdone = if self.rng.chance(1, 8) { 0 } else { self.ptr_out(4) };
        let fd = if self.rng.chance(4, 5) { u64::from(DomId::SELF.0) } else { u64::from(self.domid().0) };
        let r = self.call("mmu_update", nr::MMU_UPDATE, [at, count, pdone, fd, 0]);
        let mine = [DomId::SELF, self.me, DomId::IO].map(|d| u64::from(d.0));
        // Requests the call was asked to do (count as the hypervisor reads it: 32 bits, the
        // continuation flag aside): with none, naming an existing domain is no error (Xen
        // checks the right to its pages with each request).
        let asked = (count as u32 & !(MMU_UPDATE_PREEMPTED as u32)) != 0;
        if r == 0 && !mine.contains(&fd) && !reqs.is_empty() && asked {
            // Only dom0 may update with another domain's frames. Naming DOMID_IO is allowed
            // (Xen's get_pg_owner; the XSM default exempts it): it only lets I/O frames be
            // mapped, which a domU without I/O permission has none of.
            let d = fd;
            self.fail(format!("mmu_update with foreigndom {d:#x} succeeded for a domU"));
        }
        if r == 0 && count == reqs.len() as u64 {
            for m in &foreign_m2p {
                self.fail(format!("MMU_MACHPHYS_UPDATE of frame {:#x}, not ours, succeeded", m.0));
            }
        }
        for m in m2p_touched {
            if let Some(i) = self.mem.pool_index(m) {
                let pfn = self.mem.pool[i].pfn;
                let fix = [MmuUpdate { ptr: m.addr() | mmu::MACHPHYS_UPDATE, val: pfn.0 }];
                let mut done = 0u32;
                let r = hypercall::mmu_update(&fix, &mut done, DomId::SELF);
                if r != 0 {
                    self.fail(format!("cannot put back the M2P entry of pool frame {:#x}: {r}", m.0));
                }
            }
        }
    }

    /// Copies `v` into the scratch pages.
    pub fn put_slice<T: IntoBytes + Immutable>(&mut self, v: &[T]) -> u64 {
        let bytes = v.as_bytes();
        let at = self.mem.scratch(bytes.len() as u64);
        put_bytes(at, bytes);
        at
    }

    fn uvm_flags(&mut self) -> u64 {
        match self.rng.below(10) {
            0..=2 => uvmf::INVLPG,
            3..=4 => uvmf::TLB_FLUSH,
            5 => uvmf::NONE,
            6 => uvmf::INVLPG | uvmf::ALL,
            7 => {
                // MULTI: the flags word holds a pointer to a vCPU mask.
                let mask = self.ptr_in(8) & !7;
                mask | self.rng.pick(&[uvmf::INVLPG, uvmf::TLB_FLUSH])
            }
            _ => self.rng.edgy(),
        }
    }

    fn uvm_op(&mut self) {
        let va = self.va();
        let val = self.pte();
        let fl = self.uvm_flags();
        let other = self.rng.chance(1, 8);
        let r = if other {
            let d = u64::from(self.domid().0);
            self.call("uvm otherdomain", nr::UPDATE_VA_MAPPING_OTHERDOMAIN, [va, val, fl, d, 0])
        } else {
            self.call("update_va_mapping", nr::UPDATE_VA_MAPPING, [va, val, fl, 0, 0])
        };
        if r == 0 {
            self.check_mapped("update_va_mapping", 1, val);
            if (HYPERVISOR_VIRT_START..0xffff_8800_0000_0000).contains(&va) {
                self.fail(format!("update_va_mapping of hypervisor address {va:#x} succeeded"));
            }
        }
    }

    /// Builds a tree of pool tables the validator should accept (with the occasional odd
    /// entry), makes its pages read-only, and pins its root or hooks it into our L4.
    fn build_tree(&mut self) {
        let top_level = self.rng.range(1, 4) as u32;
        let mut below: Option<Mfn> = None;
        let mut built = Vec::new();
        for level in 1..=top_level {
            let Some(i) = self.rw_pool_page() else { return };
            built.push(i);
            for _ in 0..self.rng.range(1, 6) {
                let idx = if level == 4 { self.rng.range(0, 255) } else { self.rng.below(512) } as usize;
                let e = match (level, below) {
                    (1, _) => {
                        // Leaves: pool data pages, read-only frames of ours, the odd entry.
                        if self.rng.chance(1, 6) {
                            self.pte()
                        } else {
                            let f = self.pte_flags() & !pt::PSE;
                            let u = if f & pt::RW != 0 { Use::Destructive } else { Use::ReadOnly };
                            pt::make(self.frame(u), f | pt::PRESENT)
                        }
                    }
                    (_, Some(b)) if self.rng.chance(5, 6) => pt::make(b, pt::PAGE_TABLE),
                    _ => self.pte(),
                };
                self.mem.write_entry(i, idx, e);
            }
            let p = self.mem.pool[i];
            let ro = pt::make(p.mfn, pt::PAGE_KERNEL_RO);
            if self.rng.chance(9, 10) {
                self.call("tree: read-only", nr::UPDATE_VA_MAPPING, [p.va, ro, uvmf::INVLPG, 0, 0]);
            }
            below = Some(p.mfn);
        }
        let Some(root) = below else { return };
        if top_level == 3 && self.rng.chance(1, 3) {
            // Hook into an unused user-half slot of our own L4.
            let slot = self.rng.range(1, 254);
            let req =
                [MmuUpdate { ptr: self.mem.real_l4.addr() + slot * 8, val: pt::make(root, pt::PAGE_TABLE) }];
            let at = self.put_slice(&req);
            self.call("tree: hook into our L4", nr::MMU_UPDATE, [at, 1, 0, u64::from(DomId::SELF.0), 0]);
        } else {
            let cmd =
                [mmuext::PIN_L1_TABLE, mmuext::PIN_L2_TABLE, mmuext::PIN_L3_TABLE, mmuext::PIN_L4_TABLE]
                    [top_level as usize - 1];
            let cmd = if self.rng.chance(1, 10) { self.pin_cmd() } else { cmd };
            if self.ext1("tree: pin", cmd, root.0, 0) == 0 {
                self.stats.pins += 1;
            }
        }
    }

    /// Unpins a few pool pages and makes them writable again.
    fn teardown_some(&mut self) {
        for _ in 0..self.rng.range(1, 8) {
            let i = self.pool_page();
            let p = self.mem.pool[i];
            self.ext1("teardown: unpin", mmuext::UNPIN_TABLE, p.mfn.0, 0);
            let rw = pt::make(p.mfn, pt::PAGE_KERNEL);
            self.call("teardown: writable", nr::UPDATE_VA_MAPPING, [p.va, rw, uvmf::INVLPG, 0, 0]);
        }
    }

    /// An `mmuext_op` request of any kind with fitting (or not) arguments.
    pub fn mmuext_req(&mut self) -> MmuextOp {
        let cmd = match self.rng.below(40) {
            0..=3 => self.pin_cmd(),
            4..=5 => mmuext::UNPIN_TABLE,
            6 => mmuext::NEW_BASEPTR,
            7..=8 => mmuext::TLB_FLUSH_LOCAL,
            9..=10 => mmuext::INVLPG_LOCAL,
            11 => mmuext::TLB_FLUSH_MULTI,
            12 => mmuext::INVLPG_MULTI,
            13 => mmuext::TLB_FLUSH_ALL,
            14 => mmuext::INVLPG_ALL,
            15 => mmuext::FLUSH_CACHE,
            16 => mmuext::FLUSH_CACHE_GLOBAL,
            17..=18 => mmuext::SET_LDT,
            19..=21 => mmuext::NEW_USER_BASEPTR,
            22..=23 => mmuext::CLEAR_PAGE,
            24..=25 => mmuext::COPY_PAGE,
            26 => mmuext::MARK_SUPER,
            27 => mmuext::UNMARK_SUPER,
            28..=29 => self.rng.below(32) as u32,
            _ => self.rng.next() as u32,
        };
        let (arg1, arg2) = match cmd {
            mmuext::NEW_BASEPTR => {
                // Only our own L4 or something that is not ours: any other frame of ours
                // would take our kernel's address space away.
                let m = self.frame(Use::ReadOnly);
                let m = if self.mem.is_ours(m) { self.mem.real_l4 } else { m };
                (m.0, self.rng.edgy())
            }
            mmuext::INVLPG_LOCAL | mmuext::INVLPG_ALL => (self.va(), self.rng.edgy()),
            mmuext::INVLPG_MULTI => (self.va(), self.ptr_in(8)),
            mmuext::TLB_FLUSH_MULTI => (self.rng.edgy(), self.ptr_in(8)),
            mmuext::SET_LDT => (self.ptr_in(64) & !0xfff, self.rng.pick(&[0, 1, 16, 8192, 8193, u64::MAX])),
            mmuext::NEW_USER_BASEPTR => {
                let m = match self.rng.below(4) {
                    0 => Mfn(0),
                    1 => self.mem.real_l4,
                    _ => self.frame(Use::Destructive),
                };
                (m.0, self.rng.edgy())
            }
            mmuext::COPY_PAGE => (self.frame(Use::Destructive).0, self.frame(Use::ReadOnly).0),
            _ => (self.frame(Use::Destructive).0, self.rng.edgy()),
        };
        MmuextOp { cmd, _pad: 0, arg1, arg2 }
    }

    fn mmuext_op(&mut self) {
        let n = match self.rng.below(20) {
            0 => 0,
            1 => self.rng.range(513, 600),
            _ => self.rng.range(1, 4),
        };
        let ops: Vec<MmuextOp> = (0..n).map(|_| self.mmuext_req()).collect();
        if ops.iter().any(|o| o.cmd == mmuext::NEW_BASEPTR) {
            self.restore |= restore::BASEPTR;
        }
        let at = if ops.is_empty() { self.ptr_out(24) } else { self.put_slice(&ops) };
        let count = if self.rng.chance(1, 20) { self.rng.edgy() } else { ops.len() as u64 };
        let pdone = if self.rng.chance(1, 8) { 0 } else { self.ptr_out(4) };
        let fd = if self.rng.chance(9, 10) { u64::from(DomId::SELF.0) } else { u64::from(self.domid().0) };
        self.call("mmuext_op", nr::MMUEXT_OP, [at, count, pdone, fd, 0]);
    }

    /// Our page-table base is our own L4 again.
    pub fn restore_baseptr(&mut self) {
        let op = [MmuextOp { cmd: mmuext::NEW_BASEPTR, _pad: 0, arg1: self.mem.real_l4.0, arg2: 0 }];
        let mut done = 0;
        let r = hypercall::mmuext_op(&op, &mut done, DomId::SELF);
        if r != 0 {
            self.fail(format!("NEW_BASEPTR back to our own L4 failed: {r}"));
        }
    }

    /// `NEW_BASEPTR` onto a clone of our L4 (kernel half copied, user half from the pool),
    /// a few calls made from it, and back.
    pub fn baseptr_excursion(&mut self) {
        self.mem.scratch_reset();
        let Some(i) = self.rw_pool_page() else { return };
        let real = self.mem.real_l4;
        for slot in 0..512usize {
            let e = if slot == 0 || slot == 255 || slot >= 272 {
                mm::read_table(real, slot).unwrap_or(0)
            } else if (1..255).contains(&slot) && self.rng.chance(1, 1024) {
                self.pte()
            } else {
                0
            };
            self.mem.write_entry(i, slot, e);
        }
        let p = self.mem.pool[i];
        self.call(
            "clone: read-only",
            nr::UPDATE_VA_MAPPING,
            [p.va, pt::make(p.mfn, pt::PAGE_KERNEL_RO), uvmf::INVLPG, 0, 0],
        );
        self.restore |= restore::BASEPTR;
        if self.ext1("NEW_BASEPTR to a clone of our L4", mmuext::NEW_BASEPTR, p.mfn.0, 0) != 0 {
            return;
        }
        self.stats.baseptr += 1;
        for _ in 0..self.rng.below(3) {
            self.random_hypercall();
        }
        self.restore_baseptr();
        let cr3 = read_cr3();
        if cr3 >> 12 != real.0 {
            self.fail(format!("after NEW_BASEPTR back to our L4 {:#x}, %cr3 reads {cr3:#x}", real.0));
        }
    }

    /// Gives pool pages back to the hypervisor or takes them back, with odd requests mixed in.
    pub fn balloon_op(&mut self) {
        self.mem.scratch_reset();
        let outs: Vec<usize> = (0..self.mem.pool.len()).filter(|&i| self.mem.pool[i].out).collect();
        if !outs.is_empty() && self.rng.chance(1, 2) {
            // Populate the pfns again and put them back in the direct map.
            let take: Vec<usize> = outs.iter().copied().take(self.rng.range(1, 8) as usize).collect();
            let pfns: Vec<u64> = take.iter().map(|&i| self.mem.pool[i].pfn.0).collect();
            let list = self.put_slice(&pfns);
            let order = if self.rng.chance(1, 10) { self.rng.range(1, 12) as u32 } else { 0 };
            let r = XenMemoryReservation {
                extent_start: list,
                nr_extents: pfns.len() as u64,
                extent_order: order,
                domid: if self.rng.chance(1, 10) { self.domid() } else { DomId::SELF },
                ..Default::default()
            };
            let at = self.mem.put(&r);
            let got = self.call(
                "populate_physmap",
                nr::MEMORY_OP,
                [u64::from(memop::POPULATE_PHYSMAP), at, 0, 0, 0],
            );
            let n = if got > 0 { (got as usize).min(take.len()) } else { 0 };
            let mfns: Vec<Mfn> = (0..n).map(|k| Mfn(self.mem.get::<u64>(list + k as u64 * 8))).collect();
            let pf: Vec<Pfn> = take[..n].iter().map(|&i| self.mem.pool[i].pfn).collect();
            if order > 0 {
                // Each extent brought 2^order frames, the first for our pfn and the rest with
                // M2P entries naming the pfns after it (other pages of ours): give the whole
                // extents back and leave the pages out (see Fuzzer::give_back).
                self.give_back(list, n as u64, order);
                return;
            }
            let restored = mm::restore_frames(&pf, &mfns).unwrap_or(0);
            for (k, &i) in take[..n].iter().enumerate() {
                if k < restored {
                    let p = &mut self.mem.pool[i];
                    p.mfn = mfns[k];
                    p.out = false;
                } else {
                    self.mem.pool[i].lost = true;
                }
            }
            return;
        }
        // Give some back: out of the direct map first, as a guest balloon does.
        let mut take = Vec::new();
        for _ in 0..self.rng.range(1, 4) {
            let i = self.pool_page();
            if self.mem.is_rw(i) && !take.contains(&i) {
                take.push(i);
            }
        }
        if take.is_empty() {
            return;
        }
        let pfns: Vec<Pfn> = take.iter().map(|&i| self.mem.pool[i].pfn).collect();
        let mut mfns = Vec::new();
        if mm::release_frames(&pfns, &mut mfns).is_err() || mfns.len() != pfns.len() {
            let _ = mm::restore_frames(&pfns[..mfns.len()], &mfns);
            return;
        }
        let mut list: Vec<u64> = mfns.iter().map(|m| m.0).collect();
        if self.rng.chance(1, 6) {
            // Not ours, or given twice.
            let extra = match self.rng.below(2) {
                0 => self.frame(Use::Destructive).0,
                _ => list[0],
            };
            list.push(extra);
        }
        let at_list = self.put_slice(&list);
        let r = XenMemoryReservation {
            extent_start: at_list,
            nr_extents: list.len() as u64,
            // Order 0: an extent of 2^k frames from one of ours would give away the pages
            // after it too, pool pages the fuzzer still counts as its own (seeds 101, 106,
            // 116, 119, 120, 126: 'cannot put back the M2P entry of pool frame'). Larger
            // extents are exercised on frames that are not ours (memory_op_args).
            extent_order: 0,
            domid: DomId::SELF,
            ..Default::default()
        };
        let at = self.mem.put(&r);
        let gone = self.call(
            "decrease_reservation",
            nr::MEMORY_OP,
            [u64::from(memop::DECREASE_RESERVATION), at, 0, 0, 0],
        );
        let gone = if gone > 0 { (gone as usize).min(take.len()) } else { 0 };
        for &i in &take[..gone] {
            self.mem.pool[i].out = true;
        }
        if gone < take.len() {
            let back = mm::restore_frames(&pfns[gone..], &mfns[gone..]).unwrap_or(0);
            for (k, &i) in take[gone..].iter().enumerate() {
                if k >= back {
                    self.mem.pool[i].lost = true;
                }
            }
        }
    }

    /// Puts the pool back in order: no user base, no GDT, nothing pinned, nothing hooked
    /// into our L4 or the playground, grants unmapped, ports closed, pages writable.
    pub fn reset_pool(&mut self) {
        self.mem.scratch_reset();
        self.restore_state(restore::ALL);
        self.ext1("reset: no user base", mmuext::NEW_USER_BASEPTR, 0, 0);
        self.grant_reset();
        self.ports_reset();
        // Unhook from our L4's user half and clear the playground.
        let mut reqs = Vec::new();
        for slot in 1..255usize {
            if mm::read_table(self.mem.real_l4, slot).unwrap_or(0) != 0 {
                reqs.push(MmuUpdate { ptr: self.mem.real_l4.addr() + slot as u64 * 8, val: 0 });
            }
        }
        for k in 0..512u64 {
            reqs.push(MmuUpdate { ptr: self.mem.play_l1 + k * 8, val: 0 });
        }
        for chunk in reqs.chunks(128) {
            let at = self.put_slice(chunk);
            self.call(
                "reset: unhook",
                nr::MMU_UPDATE,
                [at, chunk.len() as u64, 0, u64::from(DomId::SELF.0), 0],
            );
            self.mem.scratch_reset();
        }
        // Unpin everything, then make everything writable, twice (a table is released once
        // whatever pointed at it is).
        for round in 0..2 {
            for i in 0..self.mem.pool.len() {
                let p = self.mem.pool[i];
                if p.out || p.lost || self.mem.is_rw(i) {
                    continue;
                }
                self.mem.scratch_reset();
                if round == 0 {
                    self.ext1("reset: unpin", mmuext::UNPIN_TABLE, p.mfn.0, 0);
                }
                let rw = pt::make(p.mfn, pt::PAGE_KERNEL);
                self.call("reset: writable", nr::UPDATE_VA_MAPPING, [p.va, rw, uvmf::INVLPG, 0, 0]);
            }
        }
        // Fresh content for the writable ones.
        for i in 0..self.mem.pool.len() {
            if self.mem.is_rw(i) {
                // SAFETY: a pool page, writable in the direct map (checked).
                unsafe { core::ptr::write_bytes(self.mem.pool[i].va as *mut u8, 0, 4096) };
            }
        }
    }
}

/// `%cr3` as the hypervisor emulates it for a PV kernel (its current L4).
pub(super) fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: `mov %cr3` faults in ring 3 and the hypervisor emulates it; no other effect.
    unsafe { core::arch::asm!("mov %cr3, {}", out(reg) v, options(att_syntax, nomem, nostack)) };
    v
}

/// An address inside our text, for pointers the hypervisor only reads.
#[inline(never)]
fn ptr_in_text() {}
