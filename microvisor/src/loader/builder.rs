//! The PV domain builder: turns a parsed kernel image into a domain's memory as Xen leaves it
//! at boot (kernel and initrd loaded, P2M list, start_info, xenstore and console pages,
//! bootstrap page tables, stack), plus the register state the first vCPU starts with.
//!
//! Everything that can be refused is checked before the first frame is allocated. Frames come
//! from the allocator in whatever order it likes (real machines hand out scattered frames), and
//! the P2M records that order. The page tables are written here but not typed: the caller owns
//! the frame table, so it receives the list of table frames with their levels to type and pin
//! them, and the P2M to fill the M2P table.

use crate::loader::elf::PvImage;
use crate::loader::layout::{compute_layout, BootLayout, LayoutError, LayoutRequest, PAGE_SIZE};
use crate::mm::{pte, FrameAllocator, MachineMemory};
use alloc::vec::Vec;
use core::fmt;
use hypercall_abi::elfnote::feature;
use hypercall_abi::hypercall::fill_hypercall_page;
use hypercall_abi::xen::{
    sif, vgcf, StartInfo, VcpuGuestContext, FIRST_HYPERVISOR_L4_SLOT, FLAT_KERNEL_CS, FLAT_KERNEL_DS,
    FLAT_KERNEL_SS, LAST_HYPERVISOR_L4_SLOT, MAX_GUEST_CMDLINE,
};
use hypercall_abi::{DomId, Mfn, Pfn, Port};
use zerocopy::FromZeros;

/// Number of L4 slots reserved for the hypervisor (256..=271).
pub const HYPERVISOR_L4_SLOTS: usize = LAST_HYPERVISOR_L4_SLOT - FIRST_HYPERVISOR_L4_SLOT + 1;
/// Flags of L4, L3 and L2 entries of the bootstrap tables.
pub const TABLE_FLAGS: u64 = pte::PRESENT | pte::RW | pte::ACCESSED | pte::DIRTY | pte::USER;
/// Flags of L1 entries; RW is cleared for the page-table frames themselves.
pub const PAGE_FLAGS: u64 = pte::PRESENT | pte::RW | pte::ACCESSED | pte::DIRTY | pte::USER;
/// Initial `%rflags`: interrupts (event delivery) enabled.
pub const INITIAL_RFLAGS: u64 = 1 << 9;
/// Initial `%dr6` and `%dr7`: the architectural reset values.
pub const INITIAL_DR6: u64 = 0xffff_0ff0;
pub const INITIAL_DR7: u64 = 0x400;

/// Largest frame number a page-table entry can hold.
const MAX_PTE_MFN: u64 = pte::ADDR_MASK >> 12;

/// What the caller decides about the domain.
#[derive(Clone, Copy, Debug)]
pub struct BuildConfig<'a> {
    pub domid: DomId,
    /// Pages the domain gets; the bootstrap region must fit in them.
    pub nr_pages: u64,
    /// dom0: `SIF_PRIVILEGED | SIF_INITDOMAIN`, and no xenstore/console ring pages.
    pub is_dom0: bool,
    /// Machine address of the domain's shared_info page (allocated by the caller).
    pub shared_info_maddr: u64,
    /// domU: the guest-local ports already bound to xenstored and the console backend.
    pub store_evtchn: Port,
    pub console_evtchn: Port,
    /// Guest command line; cut at its first NUL and at 1023 bytes.
    pub cmdline: &'a [u8],
    /// Initial ramdisk (empty: none). It is copied into the domain's own frames.
    pub initrd: &'a [u8],
    /// The hypervisor's L4 entries for slots 256..=271, copied into the guest L4.
    pub hypervisor_l4: [u64; HYPERVISOR_L4_SLOTS],
}

/// A bootstrap page-table frame, for the caller to type (and pin, for the L4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageTableFrame {
    pub pfn: Pfn,
    pub mfn: Mfn,
    /// 4 = L4 .. 1 = L1.
    pub level: u32,
}

/// The result of a successful build.
#[derive(Clone, Debug)]
pub struct BuiltDomain {
    pub layout: BootLayout,
    /// `p2m[pfn]` is the frame backing pfn; every frame the domain owns, in pfn order.
    pub p2m: Vec<Mfn>,
    /// The top-level table (CR3 = `l4.addr()`).
    pub l4: Mfn,
    /// Every bootstrap table, L4 first, then L3s, L2s, L1s.
    pub page_tables: Vec<PageTableFrame>,
    /// Initial `%rip`, `%rsp` (top of the stack page) and `%rsi` (start_info's VA).
    pub entry: u64,
    pub stack_top: u64,
    pub start_info_va: u64,
    pub start_info_mfn: Mfn,
    /// domU: the rings' frames, for xenstored and the console backend.
    pub store_mfn: Option<Mfn>,
    pub console_mfn: Option<Mfn>,
}

impl BuiltDomain {
    /// The first vCPU's initial context.
    pub fn initial_context(&self) -> VcpuGuestContext {
        initial_vcpu_context(self.entry, self.stack_top, self.start_info_va, self.l4)
    }
}

/// The register state Xen starts a 64-bit PV vCPU 0 with (`vcpu_x86_64` in libxc's
/// xg_dom_x86.c; `dom0_construct_pv`): flat ring-3 kernel selectors, events enabled,
/// `%rsi` = start_info, CR3 = the bootstrap L4, everything else zero.
pub fn initial_vcpu_context(entry: u64, stack_top: u64, start_info_va: u64, l4: Mfn) -> VcpuGuestContext {
    let mut ctx = VcpuGuestContext::new_zeroed();
    ctx.flags = vgcf::IN_KERNEL | vgcf::ONLINE;
    let r = &mut ctx.user_regs;
    r.rip = entry;
    r.rsp = stack_top;
    r.rsi = start_info_va;
    r.rflags = INITIAL_RFLAGS;
    r.cs = FLAT_KERNEL_CS;
    r.ss = FLAT_KERNEL_SS;
    r.ds = FLAT_KERNEL_DS;
    r.es = FLAT_KERNEL_DS;
    r.fs = FLAT_KERNEL_DS;
    r.gs = FLAT_KERNEL_DS;
    ctx.kernel_ss = FLAT_KERNEL_SS as u64;
    ctx.kernel_sp = stack_top;
    ctx.ctrlreg[3] = l4.addr();
    ctx.debugreg[6] = INITIAL_DR6;
    ctx.debugreg[7] = INITIAL_DR7;
    ctx
}

/// The step a build failed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildStep {
    /// Validation before any allocation.
    Check,
    Allocate,
    LoadKernel,
    LoadInitrd,
    WriteP2m,
    WriteStartInfo,
    BuildPageTables,
    HypercallPage,
}

/// Why a build failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildFailure {
    Layout(LayoutError),
    /// dom0's image has a SUPPORTED_FEATURES note without XENFEAT_dom0 (Xen refuses it too).
    NotDom0Capable,
    /// The image description does not match `bytes` or its own layout (a caller bug, or an
    /// image not produced by `parse_pv_image` over these bytes).
    InconsistentImage {
        what: &'static str,
    },
    /// The allocator has fewer free frames than the domain needs.
    OutOfMemory {
        needed: u64,
        free: u64,
    },
    /// The allocator ran dry after promising enough frames.
    AllocatorExhausted {
        allocated: u64,
        needed: u64,
    },
    /// The allocator returned a frame outside RAM or beyond what a PTE can address. It is
    /// the last entry of [`BuildError::frames`]; the caller decides what to do with it.
    BadFrame {
        mfn: Mfn,
    },
}

impl fmt::Display for BuildFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildFailure::Layout(e) => write!(f, "{e}"),
            BuildFailure::NotDom0Capable => write!(f, "kernel does not support dom0 operation"),
            BuildFailure::InconsistentImage { what } => {
                write!(f, "image description is inconsistent: {what}")
            }
            BuildFailure::OutOfMemory { needed, free } => {
                write!(f, "domain needs {needed} frames but only {free} are free")
            }
            BuildFailure::AllocatorExhausted { allocated, needed } => {
                write!(f, "frame allocator ran out after {allocated} of {needed} frames")
            }
            BuildFailure::BadFrame { mfn } => write!(f, "allocator returned unusable frame {:#x}", mfn.0),
        }
    }
}

/// A failed build. The domain's frames allocated so far are listed in `frames` (still owned
/// by the domain in the caller's accounting); the caller frees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildError {
    pub step: BuildStep,
    pub failure: BuildFailure,
    pub frames: Vec<Mfn>,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "domain build failed at {:?}: {} ({} frames to free)",
            self.step,
            self.failure,
            self.frames.len()
        )
    }
}

fn check_failed(failure: BuildFailure) -> BuildError {
    BuildError { step: BuildStep::Check, failure, frames: Vec::new() }
}

/// Writes into the domain's memory through its P2M, by guest virtual address.
struct DomainMemory<'a, M: MachineMemory> {
    mem: &'a M,
    layout: &'a BootLayout,
    p2m: &'a [Mfn],
}

impl<M: MachineMemory> DomainMemory<'_, M> {
    fn mfn(&self, pfn: Pfn) -> Result<Mfn, BuildFailure> {
        let i = usize::try_from(pfn.0).ok();
        i.and_then(|i| self.p2m.get(i))
            .copied()
            .ok_or(BuildFailure::InconsistentImage { what: "pfn beyond the P2M" })
    }

    /// Machine address of `va`, which must be in the bootstrap region.
    fn maddr(&self, va: u64) -> Result<u64, BuildFailure> {
        let pfn = self
            .layout
            .va_to_pfn(va)
            .ok_or(BuildFailure::InconsistentImage { what: "address outside the region" })?;
        Ok(self.mfn(pfn)?.addr() + (va % PAGE_SIZE))
    }

    /// Calls `f(maddr, offset, len)` for each piece of `[va, va + len)` within one page.
    fn for_each_piece(
        &self,
        va: u64,
        len: u64,
        mut f: impl FnMut(u64, usize, usize),
    ) -> Result<(), BuildFailure> {
        let end = va.checked_add(len).ok_or(BuildFailure::InconsistentImage { what: "range wraps" })?;
        let mut at = va;
        while at < end {
            let piece = (PAGE_SIZE - at % PAGE_SIZE).min(end - at);
            f(self.maddr(at)?, (at - va) as usize, piece as usize);
            at += piece;
        }
        Ok(())
    }

    fn write(&self, va: u64, data: &[u8]) -> Result<(), BuildFailure> {
        self.for_each_piece(va, data.len() as u64, |ma, off, n| self.mem.write(ma, &data[off..off + n]))
    }

    /// Writes `data` into the pages from `first` on, which need not be mapped.
    fn write_pfns(&self, first: Pfn, data: &[u8]) -> Result<(), BuildFailure> {
        for (i, chunk) in data.chunks(PAGE_SIZE as usize).enumerate() {
            self.mem.write(self.mfn(Pfn(first.0 + i as u64))?.addr(), chunk);
        }
        Ok(())
    }

    fn zero(&self, va: u64, len: u64) -> Result<(), BuildFailure> {
        const ZEROS: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];
        self.for_each_piece(va, len, |ma, _, n| self.mem.write(ma, &ZEROS[..n]))
    }
}

/// Checks that `image` describes `bytes` and fits `layout`, so that loading cannot fail.
fn check_image(image: &PvImage, bytes: &[u8], layout: &BootLayout) -> Result<(), BuildFailure> {
    let kernel = layout.kernel;
    let inside =
        |va: u64, len: u64| va >= kernel.va && va.checked_add(len).is_some_and(|e| e <= kernel.end_va());
    for seg in &image.segments {
        if seg.file_bytes(bytes).is_none() || seg.filesz > seg.memsz {
            return Err(BuildFailure::InconsistentImage { what: "segment bytes are not in the image" });
        }
        if !inside(seg.va, seg.memsz) {
            return Err(BuildFailure::InconsistentImage { what: "segment outside the kernel range" });
        }
    }
    if let Some(va) = image.hypercall_page {
        if !va.is_multiple_of(PAGE_SIZE) || !inside(va, PAGE_SIZE) {
            return Err(BuildFailure::InconsistentImage { what: "hypercall page outside the kernel" });
        }
    }
    if image.entry < layout.virt_base || image.entry >= layout.v_end {
        return Err(BuildFailure::InconsistentImage { what: "entry point outside the region" });
    }
    Ok(())
}

/// Builds a PV domain from `image` (parsed from `bytes`) into frames taken from `frames` on
/// behalf of `cfg.domid`. On failure, every frame already taken is listed in the error.
pub fn build_pv_domain<M: MachineMemory, A: FrameAllocator>(
    mem: &M,
    frames: &mut A,
    image: &PvImage,
    bytes: &[u8],
    cfg: &BuildConfig<'_>,
) -> Result<BuiltDomain, BuildError> {
    // Check: nothing allocated yet.
    let notes = &image.notes;
    if cfg.is_dom0 && notes.supported_features_note && !notes.features.supports(feature::DOM0) {
        return Err(check_failed(BuildFailure::NotDom0Capable));
    }
    let req = LayoutRequest::for_image(image, cfg.nr_pages, cfg.is_dom0, cfg.initrd.len() as u64);
    let layout = compute_layout(&req).map_err(|e| check_failed(BuildFailure::Layout(e)))?;
    check_image(image, bytes, &layout).map_err(check_failed)?;
    let free = frames.free_frames();
    if free < cfg.nr_pages {
        return Err(check_failed(BuildFailure::OutOfMemory { needed: cfg.nr_pages, free }));
    }

    // Allocate. nr_pages is bounded by the allocator's free count just checked.
    let mut p2m: Vec<Mfn> = Vec::with_capacity(cfg.nr_pages as usize);
    let max_mfn = mem.max_mfn().0.min(MAX_PTE_MFN + 1);
    while (p2m.len() as u64) < cfg.nr_pages {
        let Some(mfn) = frames.alloc_frame(cfg.domid) else {
            let failure =
                BuildFailure::AllocatorExhausted { allocated: p2m.len() as u64, needed: cfg.nr_pages };
            return Err(BuildError { step: BuildStep::Allocate, failure, frames: p2m });
        };
        p2m.push(mfn);
        if mfn.0 >= max_mfn {
            return Err(BuildError {
                step: BuildStep::Allocate,
                failure: BuildFailure::BadFrame { mfn },
                frames: p2m,
            });
        }
    }

    match populate(mem, image, bytes, cfg, &layout, &p2m) {
        Ok(w) => Ok(BuiltDomain {
            layout,
            p2m,
            l4: w.l4,
            page_tables: w.page_tables,
            entry: image.entry,
            stack_top: layout.stack_top(),
            start_info_va: layout.start_info.va,
            start_info_mfn: w.start_info_mfn,
            store_mfn: w.store_mfn,
            console_mfn: w.console_mfn,
        }),
        Err((step, failure)) => Err(BuildError { step, failure, frames: p2m }),
    }
}

/// The frames `populate` filled in.
struct Written {
    l4: Mfn,
    page_tables: Vec<PageTableFrame>,
    start_info_mfn: Mfn,
    store_mfn: Option<Mfn>,
    console_mfn: Option<Mfn>,
}

/// Writes everything into the allocated frames. Only inconsistencies that `check_image` and
/// the layout rule out can fail here.
fn populate<M: MachineMemory>(
    mem: &M,
    image: &PvImage,
    bytes: &[u8],
    cfg: &BuildConfig<'_>,
    layout: &BootLayout,
    p2m: &[Mfn],
) -> Result<Written, (BuildStep, BuildFailure)> {
    let dm = DomainMemory { mem, layout, p2m };
    let at = |step: BuildStep| move |f: BuildFailure| (step, f);

    // Kernel: file bytes, then zeroes to memsz (the allocator's zeroing is not relied on for
    // bss, which the guest assumes clear).
    for seg in &image.segments {
        let step = at(BuildStep::LoadKernel);
        let data = seg.file_bytes(bytes).ok_or(BuildFailure::InconsistentImage { what: "segment bytes" });
        dm.write(seg.va, data.map_err(step)?).map_err(step)?;
        dm.zero(seg.va + seg.filesz, seg.memsz - seg.filesz).map_err(step)?;
    }

    if !cfg.initrd.is_empty() {
        let step = at(BuildStep::LoadInitrd);
        if layout.initrd_mapped {
            dm.write(layout.initrd.va, cfg.initrd).map_err(step)?;
        } else {
            dm.write_pfns(layout.initrd.pfn, cfg.initrd).map_err(step)?;
        }
    }

    // P2M list, and the rest of its last page cleared.
    let step = at(BuildStep::WriteP2m);
    for (pfn, mfn) in p2m.iter().enumerate() {
        let ma = dm.maddr(layout.p2m.va + pfn as u64 * 8).map_err(step)?;
        mem.write_u64(ma, mfn.0);
    }
    let used = p2m.len() as u64 * 8;
    dm.zero(layout.p2m.va + used, layout.p2m.pages * PAGE_SIZE - used).map_err(step)?;

    // start_info and the ring pages.
    let step = at(BuildStep::WriteStartInfo);
    let start_info_mfn = dm.mfn(layout.start_info.pfn).map_err(step)?;
    let store_mfn = layout.xenstore.map(|r| dm.mfn(r.pfn)).transpose().map_err(step)?;
    let console_mfn = layout.console.map(|r| dm.mfn(r.pfn)).transpose().map_err(step)?;
    for mfn in [Some(start_info_mfn), store_mfn, console_mfn].into_iter().flatten() {
        mem.zero_frame(mfn);
    }
    let mut si = StartInfo::new();
    si.nr_pages = cfg.nr_pages;
    si.shared_info = cfg.shared_info_maddr;
    si.flags = if cfg.is_dom0 { sif::PRIVILEGED | sif::INITDOMAIN } else { 0 };
    if let (Some(store), Some(console)) = (store_mfn, console_mfn) {
        si.store_mfn = store.0;
        si.store_evtchn = cfg.store_evtchn;
        si.console.mfn = console.0;
        si.console.evtchn = cfg.console_evtchn;
    }
    si.pt_base = layout.pt_base();
    si.nr_pt_frames = layout.nr_pt_frames();
    si.mfn_list = layout.p2m.va;
    if layout.p2m_separate {
        // INIT_P2M: the list's frames, which the bootstrap tables do not map.
        si.first_p2m_pfn = layout.p2m.pfn.0;
        si.nr_p2m_frames = layout.p2m.pages;
    }
    if layout.initrd_len != 0 && layout.initrd_mapped {
        si.mod_start = layout.initrd.va;
        si.mod_len = layout.initrd_len;
    } else if layout.initrd_len != 0 {
        si.mod_start = layout.initrd.pfn.0;
        si.mod_len = layout.initrd_len;
        si.flags |= sif::MOD_START_PFN;
    }
    let cmdline = cfg.cmdline.split(|&b| b == 0).next().unwrap_or(&[]);
    let n = cmdline.len().min(MAX_GUEST_CMDLINE - 1);
    si.cmd_line[..n].copy_from_slice(&cmdline[..n]);
    mem.write_obj(start_info_mfn.addr(), &si);

    let step = at(BuildStep::BuildPageTables);
    let page_tables = build_page_tables(&dm, cfg).map_err(step)?;
    let l4 = page_tables
        .first()
        .map(|t| t.mfn)
        .ok_or((BuildStep::BuildPageTables, BuildFailure::InconsistentImage { what: "no L4" }))?;

    if let Some(va) = image.hypercall_page {
        let mut page = [0u8; PAGE_SIZE as usize];
        fill_hypercall_page(&mut page);
        dm.write(va, &page).map_err(at(BuildStep::HypercallPage))?;
    }

    Ok(Written { l4, page_tables, start_info_mfn, store_mfn, console_mfn })
}

/// Maps `[virt_base, v_end)` onto pfns 0.. and installs the hypervisor's L4 slots.
fn build_page_tables<M: MachineMemory>(
    dm: &DomainMemory<'_, M>,
    cfg: &BuildConfig<'_>,
) -> Result<Vec<PageTableFrame>, BuildFailure> {
    let layout = dm.layout;
    let mut tables = Vec::with_capacity(layout.nr_pt_frames() as usize);
    for i in 0..layout.page_tables.pages {
        let pfn = Pfn(layout.page_tables.pfn.0 + i);
        let mfn = dm.mfn(pfn)?;
        dm.mem.zero_frame(mfn);
        let level = layout.table_level(pfn).ok_or(BuildFailure::InconsistentImage { what: "table level" })?;
        tables.push(PageTableFrame { pfn, mfn, level });
    }
    let table = |level: u32, va: u64| -> Result<Mfn, BuildFailure> {
        let pfn = layout.table_pfn(level, va).ok_or(BuildFailure::InconsistentImage { what: "table pfn" })?;
        dm.mfn(pfn)
    };

    for pfn in 0..layout.mapped_pages() {
        let va = layout.virt_base + pfn * PAGE_SIZE;
        // Entries of the upper levels are rewritten with the same value for every page under
        // them: simpler than tracking the first page of each table, and cheap.
        for level in (2..=4).rev() {
            let child = table(level - 1, va)?;
            dm.mem.write_pte(table(level, va)?, pte::table_index(va, level), pte::make(child, TABLE_FLAGS));
        }
        let pfn = Pfn(pfn);
        let flags = if layout.is_page_table(pfn) { PAGE_FLAGS & !pte::RW } else { PAGE_FLAGS };
        dm.mem.write_pte(table(1, va)?, pte::table_index(va, 1), pte::make(dm.mfn(pfn)?, flags));
    }

    // INIT_P2M: the P2M list at the address the kernel asked for, writable.
    if layout.p2m_separate {
        for i in 0..layout.p2m.pages {
            let va = layout.p2m.va + i * PAGE_SIZE;
            for level in (2..=4).rev() {
                let child = table(level - 1, va)?;
                dm.mem.write_pte(
                    table(level, va)?,
                    pte::table_index(va, level),
                    pte::make(child, TABLE_FLAGS),
                );
            }
            let mfn = dm.mfn(Pfn(layout.p2m.pfn.0 + i))?;
            dm.mem.write_pte(table(1, va)?, pte::table_index(va, 1), pte::make(mfn, PAGE_FLAGS));
        }
    }

    let l4 = table(4, layout.virt_base)?;
    for (i, &e) in cfg.hypervisor_l4.iter().enumerate() {
        dm.mem.write_pte(l4, FIRST_HYPERVISOR_L4_SLOT + i, e);
    }
    Ok(tables)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::elf::testelf::*;
    use crate::loader::elf::{parse_pv_image, PvImage};
    use crate::mm::fake::FakeMemory;
    use hypercall_abi::elfnote::note;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const LIMIT: u64 = 8 << 20;
    const FIRST_FREE: u64 = 16;

    /// Hands out a range of a FakeMemory's frames in a scrambled order. `dirty` fills them
    /// with garbage instead of zeroes, to show the builder clears everything the guest
    /// relies on being clear.
    struct TestFrames<'m> {
        mem: &'m FakeMemory,
        free: Vec<Mfn>,
        dirty: bool,
        handed: Vec<Mfn>,
        fail_after: Option<usize>,
        claimed_free: Option<u64>,
    }

    impl<'m> TestFrames<'m> {
        fn new(mem: &'m FakeMemory, count: u64, seed: u64, dirty: bool) -> TestFrames<'m> {
            let mut free: Vec<Mfn> = (FIRST_FREE..FIRST_FREE + count).map(Mfn).collect();
            let mut x = seed | 1;
            for i in (1..free.len()).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                free.swap(i, (x % (i as u64 + 1)) as usize);
            }
            TestFrames { mem, free, dirty, handed: Vec::new(), fail_after: None, claimed_free: None }
        }
    }

    impl FrameAllocator for TestFrames<'_> {
        fn alloc_frame(&mut self, _owner: DomId) -> Option<Mfn> {
            if self.fail_after == Some(self.handed.len()) {
                return None;
            }
            let mfn = self.free.pop()?;
            let fill = if self.dirty { 0xa5 } else { 0 };
            // (A planted frame beyond RAM is handed out as is.)
            if mfn < self.mem.max_mfn() {
                self.mem.write(mfn.addr(), &[fill; PAGE_SIZE as usize]);
            }
            self.handed.push(mfn);
            Some(mfn)
        }
        fn free_frames(&self) -> u64 {
            self.claimed_free.unwrap_or(self.free.len() as u64)
        }
    }

    fn hv_l4() -> [u64; HYPERVISOR_L4_SLOTS] {
        core::array::from_fn(|i| pte::make(Mfn(0x100 + i as u64), pte::PRESENT | pte::RW))
    }

    fn cfg<'a>(nr_pages: u64) -> BuildConfig<'a> {
        BuildConfig {
            domid: DomId(3),
            nr_pages,
            is_dom0: false,
            shared_info_maddr: 0x1234_5000,
            store_evtchn: Port(1),
            console_evtchn: Port(2),
            cmdline: b"console=hvc0 root=/dev/xvda",
            initrd: &[],
            hypervisor_l4: hv_l4(),
        }
    }

    fn image() -> (PvImage, Vec<u8>) {
        let bytes = TestElf::kernel().build();
        (parse_pv_image(&bytes, LIMIT).unwrap(), bytes)
    }

    /// Software page walk: the frame and L1 flags `va` maps to, with the L4..L2 flags.
    fn walk(mem: &FakeMemory, l4: Mfn, va: u64) -> Option<(Mfn, u64, [u64; 3])> {
        let mut table = l4;
        let mut upper = [0; 3];
        for (i, level) in [4, 3, 2].into_iter().enumerate() {
            let e = mem.read_pte(table, pte::table_index(va, level));
            if !pte::is_present(e) {
                return None;
            }
            upper[i] = pte::flags(e);
            table = pte::mfn(e);
        }
        let e = mem.read_pte(table, pte::table_index(va, 1));
        pte::is_present(e).then(|| (pte::mfn(e), pte::flags(e), upper))
    }

    /// Reads guest memory through the built page tables.
    fn read_va(mem: &FakeMemory, l4: Mfn, va: u64, len: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at = va;
        while at < va + len {
            let n = (PAGE_SIZE - at % PAGE_SIZE).min(va + len - at);
            let (mfn, _, _) = walk(mem, l4, at).expect("mapped");
            let mut buf = vec![0; n as usize];
            mem.read(mfn.addr() + at % PAGE_SIZE, &mut buf);
            out.extend_from_slice(&buf);
            at += n;
        }
        out
    }

    fn present_entries(mem: &FakeMemory, mfn: Mfn) -> Vec<(usize, u64)> {
        (0..512).map(|i| (i, mem.read_pte(mfn, i))).filter(|&(_, e)| pte::is_present(e)).collect()
    }

    /// Checks everything a guest relies on in a built domain.
    fn verify(mem: &FakeMemory, d: &BuiltDomain, img: &PvImage, bytes: &[u8], cfg: &BuildConfig<'_>) {
        let l = &d.layout;
        assert_eq!(d.p2m.len() as u64, cfg.nr_pages);
        assert_eq!(d.p2m.iter().collect::<BTreeSet<_>>().len(), d.p2m.len(), "frames are distinct");

        // Table list: L4 first, levels in order, counts as laid out, backed by the P2M.
        assert_eq!(d.page_tables.len() as u64, l.nr_pt_frames());
        assert_eq!(d.page_tables[0].level, 4);
        assert_eq!(d.page_tables[0].mfn, d.l4);
        // (The separate INIT_P2M mapping's tables follow, in the same order.)
        let boot = l.pt_counts.total() as usize;
        for part in [&d.page_tables[..boot], &d.page_tables[boot..]] {
            assert!(part.windows(2).all(|w| w[0].level >= w[1].level && w[1].pfn.0 == w[0].pfn.0 + 1));
        }
        for lvl in 1..=4 {
            let n = d.page_tables.iter().filter(|t| t.level == lvl).count() as u64;
            let (c, p) = (l.pt_counts, l.p2m_pt_counts);
            assert_eq!(n, [c.l1 + p.l1, c.l2 + p.l2, c.l3 + p.l3, c.l4][lvl as usize - 1]);
        }
        for t in &d.page_tables {
            assert_eq!(t.mfn, d.p2m[t.pfn.0 as usize]);
        }

        // Every page of the region maps to its pfn's frame, read-only for page tables.
        for pfn in 0..l.mapped_pages() {
            let va = l.virt_base + pfn * PAGE_SIZE;
            let (mfn, flags, upper) = walk(mem, d.l4, va).unwrap_or_else(|| panic!("{va:#x} unmapped"));
            assert_eq!(mfn, d.p2m[pfn as usize], "{va:#x}");
            assert_eq!(upper, [TABLE_FLAGS; 3], "{va:#x}");
            let want = if l.is_page_table(Pfn(pfn)) { PAGE_FLAGS & !pte::RW } else { PAGE_FLAGS };
            assert_eq!(flags, want, "{va:#x}");
        }
        // Nothing else is mapped: count present entries at each level.
        let mut present = [0usize; 5];
        for t in &d.page_tables {
            let entries = present_entries(mem, t.mfn);
            present[t.level as usize] += entries.len();
            if t.level == 4 {
                for slot in FIRST_HYPERVISOR_L4_SLOT..=LAST_HYPERVISOR_L4_SLOT {
                    assert_eq!(mem.read_pte(t.mfn, slot), cfg.hypervisor_l4[slot - FIRST_HYPERVISOR_L4_SLOT]);
                }
            }
        }
        // Present entries per level: the bootstrap region's, plus the separate P2M mapping's.
        let p = l.p2m_pt_counts;
        let p2m_pages = if l.p2m_separate { l.p2m.pages } else { 0 };
        assert_eq!(present[1] as u64, l.mapped_pages() + p2m_pages);
        assert_eq!(present[2] as u64, l.pt_counts.l1 + p.l1);
        assert_eq!(present[3] as u64, l.pt_counts.l2 + p.l2);
        assert_eq!(present[4] as u64, l.pt_counts.l3 + p.l3 + HYPERVISOR_L4_SLOTS as u64);

        // Kernel bytes, zeroed bss, hypercall page.
        for seg in &img.segments {
            let got = read_va(mem, d.l4, seg.va, seg.memsz);
            let (file, bss) = got.split_at(seg.filesz as usize);
            let hc = img.hypercall_page.unwrap_or(u64::MAX);
            if !(hc >= seg.va && hc < seg.va + seg.memsz) {
                assert_eq!(file, seg.file_bytes(bytes).unwrap(), "segment {}", seg.index);
                assert!(bss.iter().all(|&b| b == 0), "bss of segment {}", seg.index);
            }
        }
        if let Some(hc) = img.hypercall_page {
            let mut want = [0u8; PAGE_SIZE as usize];
            fill_hypercall_page(&mut want);
            assert_eq!(read_va(mem, d.l4, hc, PAGE_SIZE), want);
        }

        // The P2M list as the guest sees it, and the rest of its last page.
        let list = read_va(mem, d.l4, l.p2m.va, l.p2m.pages * PAGE_SIZE);
        for (pfn, mfn) in d.p2m.iter().enumerate() {
            assert_eq!(u64::from_le_bytes(list[pfn * 8..pfn * 8 + 8].try_into().unwrap()), mfn.0);
        }
        assert!(list[d.p2m.len() * 8..].iter().all(|&b| b == 0));

        // start_info.
        let si_bytes = read_va(mem, d.l4, d.start_info_va, PAGE_SIZE);
        assert_eq!(walk(mem, d.l4, d.start_info_va).unwrap().0, d.start_info_mfn);
        let si: StartInfo = mem.read_obj(d.start_info_mfn.addr());
        assert!(si.magic_ok());
        assert_eq!(&si.magic[..15], b"xen-3.0-x86_64\0");
        assert_eq!(si.nr_pages, cfg.nr_pages);
        assert_eq!(si.shared_info, cfg.shared_info_maddr);
        assert_eq!(si.pt_base, l.page_tables.va);
        assert_eq!(walk(mem, d.l4, si.pt_base).unwrap().0, d.l4);
        assert_eq!(si.nr_pt_frames, d.page_tables.len() as u64);
        assert_eq!(si.mfn_list, l.p2m.va);
        if l.p2m_separate {
            assert_eq!((si.first_p2m_pfn, si.nr_p2m_frames), (l.p2m.pfn.0, l.p2m.pages));
            assert!(si.first_p2m_pfn >= l.mapped_pages());
        } else {
            assert_eq!((si.first_p2m_pfn, si.nr_p2m_frames), (0, 0));
        }
        assert!(si_bytes[core::mem::size_of::<StartInfo>()..].iter().all(|&b| b == 0));
        if cfg.is_dom0 {
            assert_eq!(si.flags & !sif::MOD_START_PFN, sif::PRIVILEGED | sif::INITDOMAIN);
            assert_eq!((si.store_mfn, si.console.mfn), (0, 0));
            assert_eq!((d.store_mfn, d.console_mfn), (None, None));
        } else {
            assert_eq!(si.flags & !sif::MOD_START_PFN, 0);
            let (store, console) = (d.store_mfn.unwrap(), d.console_mfn.unwrap());
            assert_eq!((si.store_mfn, si.store_evtchn), (store.0, cfg.store_evtchn));
            assert_eq!((si.console.mfn, si.console.evtchn), (console.0, cfg.console_evtchn));
            assert_eq!(store, d.p2m[l.xenstore.unwrap().pfn.0 as usize]);
            assert_eq!(console, d.p2m[l.console.unwrap().pfn.0 as usize]);
            assert!(mem.frame(store).iter().all(|&b| b == 0));
            assert!(mem.frame(console).iter().all(|&b| b == 0));
        }
        if cfg.initrd.is_empty() {
            assert_eq!((si.mod_start, si.mod_len), (0, 0));
        } else if l.initrd_mapped {
            assert_eq!((si.mod_start, si.mod_len), (l.initrd.va, cfg.initrd.len() as u64));
            assert_eq!(read_va(mem, d.l4, si.mod_start, si.mod_len), cfg.initrd);
            assert_eq!(si.flags & sif::MOD_START_PFN, 0);
        } else {
            // MOD_START_PFN: named by pfn, in pages after the mapped region, not mapped.
            assert_eq!((si.mod_start, si.mod_len), (l.initrd.pfn.0, cfg.initrd.len() as u64));
            assert_ne!(si.flags & sif::MOD_START_PFN, 0);
            assert!(si.mod_start >= l.mapped_pages());
            let mut got = Vec::new();
            for (i, chunk) in cfg.initrd.chunks(PAGE_SIZE as usize).enumerate() {
                let f = mem.frame(d.p2m[si.mod_start as usize + i]);
                got.extend_from_slice(&f[..chunk.len()]);
            }
            assert_eq!(got, cfg.initrd);
        }
        let cmd = cfg.cmdline.split(|&b| b == 0).next().unwrap();
        let cmd = &cmd[..cmd.len().min(MAX_GUEST_CMDLINE - 1)];
        assert_eq!(&si.cmd_line[..cmd.len()], cmd);
        assert!(si.cmd_line[cmd.len()..].iter().all(|&b| b == 0));

        // Registers.
        assert_eq!(d.entry, img.entry);
        assert_eq!(d.stack_top, l.stack.va + PAGE_SIZE);
        assert!(walk(mem, d.l4, d.stack_top - 8).unwrap().1 & pte::RW != 0, "stack is writable");
        let ctx = d.initial_context();
        assert_eq!(
            (ctx.user_regs.rip, ctx.user_regs.rsp, ctx.user_regs.rsi),
            (d.entry, d.stack_top, d.start_info_va)
        );
        assert_eq!(ctx.ctrlreg[3], d.l4.addr());
    }

    fn memory(frames: u64) -> FakeMemory {
        FakeMemory::new(FIRST_FREE + frames, FIRST_FREE + frames)
    }

    #[test]
    fn builds_a_domu_from_scattered_dirty_frames() {
        let (img, bytes) = image();
        let mem = memory(2048);
        let mut frames = TestFrames::new(&mem, 2048, 7, true);
        let c = cfg(2048);
        let d = build_pv_domain(&mem, &mut frames, &img, &bytes, &c).unwrap();
        assert_eq!(d.p2m, frames.handed, "the P2M records the allocation order");
        assert!(d.p2m.windows(2).any(|w| w[1].0 != w[0].0 + 1), "frames really are scattered");
        verify(&mem, &d, &img, &bytes, &c);
        // The concrete layout of this image (see layout tests): 5 kernel pages, 4 P2M pages.
        assert_eq!(d.layout.p2m.pfn, Pfn(5));
        assert_eq!(d.start_info_va, BASE + 9 * PAGE_SIZE);
        assert_eq!(d.layout.page_tables.pfn, Pfn(12));
        assert_eq!(d.stack_top, BASE + 18 * PAGE_SIZE);
    }

    #[test]
    fn builds_dom0_with_an_initrd() {
        let (img, bytes) = image();
        let mem = memory(4096);
        let mut frames = TestFrames::new(&mem, 4096, 99, true);
        let initrd: Vec<u8> = (0..0x2345u32).map(|i| (i * 13 + 5) as u8).collect();
        let c = BuildConfig { is_dom0: true, initrd: &initrd, ..cfg(3000) };
        let d = build_pv_domain(&mem, &mut frames, &img, &bytes, &c).unwrap();
        verify(&mem, &d, &img, &bytes, &c);
        assert_eq!(d.layout.initrd.pages, 3);
        assert_eq!(frames.free_frames(), 4096 - 3000);
    }

    #[test]
    fn a_mod_start_pfn_kernel_gets_its_initrd_unmapped_by_pfn() {
        let mut elf = TestElf::kernel();
        elf.set_note(note::MOD_START_PFN, u64_desc(1));
        let bytes = elf.build();
        let img = parse_pv_image(&bytes, LIMIT).unwrap();
        let mem = memory(4096);
        let mut frames = TestFrames::new(&mem, 4096, 99, true);
        let initrd: Vec<u8> = (0..0x2345u32).map(|i| (i * 7 + 1) as u8).collect();
        let c = BuildConfig { initrd: &initrd, ..cfg(3000) };
        let d = build_pv_domain(&mem, &mut frames, &img, &bytes, &c).unwrap();
        assert!(!d.layout.initrd_mapped);
        verify(&mem, &d, &img, &bytes, &c);
        // Nothing in the bootstrap mapping reaches the initrd's pages.
        let first = d.p2m[d.layout.initrd.pfn.0 as usize];
        for va in (d.layout.virt_base..d.layout.v_end).step_by(PAGE_SIZE as usize) {
            assert_ne!(walk(&mem, d.l4, va).map(|w| w.0), Some(first), "{va:#x}");
        }
    }

    #[test]
    fn an_init_p2m_kernel_gets_its_p2m_where_it_asks() {
        const P2M: u64 = 0x80_0000_0000;
        let mut elf = TestElf::kernel();
        elf.set_note(note::INIT_P2M, u64_desc(P2M));
        let bytes = elf.build();
        let img = parse_pv_image(&bytes, LIMIT).unwrap();
        let mem = memory(4096);
        let mut frames = TestFrames::new(&mem, 4096, 99, true);
        let c = cfg(3000);
        let d = build_pv_domain(&mem, &mut frames, &img, &bytes, &c).unwrap();
        assert!(d.layout.p2m_separate);
        assert_eq!(d.layout.p2m.va, P2M);
        // verify reads the list through the built tables at P2M and checks start_info.
        verify(&mem, &d, &img, &bytes, &c);
        // Mapped writable (the guest maintains it), and nowhere in the bootstrap region.
        let (mfn, flags, _) = walk(&mem, d.l4, P2M).unwrap();
        assert_eq!((mfn, flags & pte::RW), (d.p2m[d.layout.p2m.pfn.0 as usize], pte::RW));
        for va in (d.layout.virt_base..d.layout.v_end).step_by(PAGE_SIZE as usize) {
            assert_ne!(walk(&mem, d.l4, va).map(|w| w.0), Some(mfn), "{va:#x}");
        }
    }

    #[test]
    fn command_line_is_cut() {
        let (img, bytes) = image();
        let mem = memory(1024);
        let long = vec![b'a'; 5000];
        for cmdline in [&b"quiet\0ignored"[..], &long[..], &[][..]] {
            let mut frames = TestFrames::new(&mem, 1024, 1, false);
            let c = BuildConfig { cmdline, ..cfg(1024) };
            let d = build_pv_domain(&mem, &mut frames, &img, &bytes, &c).unwrap();
            verify(&mem, &d, &img, &bytes, &c);
        }
    }

    #[test]
    fn without_hypercall_note_the_page_keeps_kernel_bytes() {
        let mut t = TestElf::kernel();
        t.remove_note(note::HYPERCALL_PAGE);
        let bytes = t.build();
        let img = parse_pv_image(&bytes, LIMIT).unwrap();
        let mem = memory(1024);
        let mut frames = TestFrames::new(&mem, 1024, 3, true);
        let c = cfg(1024);
        let d = build_pv_domain(&mem, &mut frames, &img, &bytes, &c).unwrap();
        verify(&mem, &d, &img, &bytes, &c);
        assert_eq!(read_va(&mem, d.l4, BASE, 0x2000), t.segs[0].data);
    }

    #[test]
    fn too_little_memory_fails_before_allocating() {
        let (img, bytes) = image();
        let mem = memory(2048);
        let mut frames = TestFrames::new(&mem, 2048, 1, false);
        let e = build_pv_domain(&mem, &mut frames, &img, &bytes, &cfg(1023)).unwrap_err();
        assert_eq!(e.step, BuildStep::Check);
        assert_eq!(
            e.failure,
            BuildFailure::Layout(LayoutError::NotEnoughMemory { needed: 1024, nr_pages: 1023 })
        );
        assert!(e.frames.is_empty() && frames.handed.is_empty());
        assert!(!e.to_string().contains('\n'));

        let mut frames = TestFrames::new(&mem, 1500, 1, false);
        let e = build_pv_domain(&mem, &mut frames, &img, &bytes, &cfg(2048)).unwrap_err();
        assert_eq!(e.failure, BuildFailure::OutOfMemory { needed: 2048, free: 1500 });
        assert!(e.frames.is_empty() && frames.handed.is_empty());
    }

    #[test]
    fn allocation_failures_return_the_frames() {
        let (img, bytes) = image();
        let mem = memory(2048);
        let mut frames = TestFrames::new(&mem, 2048, 5, false);
        frames.fail_after = Some(100);
        let e = build_pv_domain(&mem, &mut frames, &img, &bytes, &cfg(2048)).unwrap_err();
        assert_eq!(e.step, BuildStep::Allocate);
        assert_eq!(e.failure, BuildFailure::AllocatorExhausted { allocated: 100, needed: 2048 });
        assert_eq!(e.frames, frames.handed);

        // A frame beyond RAM.
        let mem = memory(1024);
        let mut frames = TestFrames::new(&mem, 1024, 5, false);
        frames.free.insert(frames.free.len() - 10, Mfn(1 << 30));
        let e = build_pv_domain(&mem, &mut frames, &img, &bytes, &cfg(1024)).unwrap_err();
        assert_eq!(e.failure, BuildFailure::BadFrame { mfn: Mfn(1 << 30) });
        assert_eq!(e.frames.len(), 11);
        assert_eq!(e.frames.last(), Some(&Mfn(1 << 30)));
    }

    #[test]
    fn dom0_needs_a_dom0_capable_kernel() {
        let mut t = TestElf::kernel();
        t.set_note(note::SUPPORTED_FEATURES, 1u32.to_le_bytes().to_vec());
        let bytes = t.build();
        let img = parse_pv_image(&bytes, LIMIT).unwrap();
        let mem = memory(1024);
        let dom0 = BuildConfig { is_dom0: true, ..cfg(1024) };
        let mut frames = TestFrames::new(&mem, 1024, 5, false);
        let e = build_pv_domain(&mem, &mut frames, &img, &bytes, &dom0).unwrap_err();
        assert_eq!((e.step, e.failure), (BuildStep::Check, BuildFailure::NotDom0Capable));
        // A domU may lack it; dom0 may have it.
        assert!(build_pv_domain(&mem, &mut frames, &img, &bytes, &cfg(1024)).is_ok());
        t.set_note(note::SUPPORTED_FEATURES, (1u32 << feature::DOM0).to_le_bytes().to_vec());
        let bytes = t.build();
        let img = parse_pv_image(&bytes, LIMIT).unwrap();
        let mut frames = TestFrames::new(&mem, 1024, 5, false);
        assert!(build_pv_domain(&mem, &mut frames, &img, &bytes, &dom0).is_ok());
    }

    #[test]
    fn inconsistent_images_are_refused() {
        let (img, bytes) = image();
        let mem = memory(1024);
        let mut frames = TestFrames::new(&mem, 1024, 5, false);
        let c = cfg(1024);
        let short = &bytes[..bytes.len() - 100];
        let e = build_pv_domain(&mem, &mut frames, &img, short, &c).unwrap_err();
        assert!(matches!(e.failure, BuildFailure::InconsistentImage { .. }));

        let mut bad = img.clone();
        bad.hypercall_page = Some(BASE + 0x5000);
        let e = build_pv_domain(&mem, &mut frames, &bad, &bytes, &c).unwrap_err();
        assert!(matches!(e.failure, BuildFailure::InconsistentImage { .. }));
        let mut bad = img.clone();
        bad.segments[1].memsz = 1 << 20;
        let e = build_pv_domain(&mem, &mut frames, &bad, &bytes, &c).unwrap_err();
        assert!(matches!(e.failure, BuildFailure::InconsistentImage { .. }));
        let mut bad = img.clone();
        bad.entry = 0;
        let e = build_pv_domain(&mem, &mut frames, &bad, &bytes, &c).unwrap_err();
        assert!(matches!(e.failure, BuildFailure::InconsistentImage { .. }));
        assert!(frames.handed.is_empty());
    }

    #[test]
    fn initial_context_matches_xen() {
        let ctx = initial_vcpu_context(
            0xffff_ffff_8000_1000,
            0xffff_ffff_8001_6000,
            0xffff_ffff_8000_9000,
            Mfn(0x42),
        );
        let r = &ctx.user_regs;
        assert_eq!((r.cs, r.ss), (0xe033, 0xe02b));
        assert_eq!((r.ds, r.es, r.fs, r.gs), (0, 0, 0, 0));
        assert_eq!(r.rflags, 0x200);
        assert_eq!(
            (r.rip, r.rsp, r.rsi),
            (0xffff_ffff_8000_1000, 0xffff_ffff_8001_6000, 0xffff_ffff_8000_9000)
        );
        assert_eq!((r.rax, r.rbx, r.rcx, r.rdx, r.rdi, r.rbp), (0, 0, 0, 0, 0, 0));
        assert_eq!((ctx.kernel_ss, ctx.kernel_sp), (0xe02b, 0xffff_ffff_8001_6000));
        assert_eq!(ctx.flags, vgcf::IN_KERNEL | vgcf::ONLINE);
        assert_eq!(ctx.ctrlreg, [0, 0, 0, 0x42000, 0, 0, 0, 0]);
        assert_eq!((ctx.debugreg[6], ctx.debugreg[7]), (0xffff0ff0, 0x400));
        assert_eq!(ctx.event_callback_eip, 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn random_kernels_build_and_verify(
            text in 0x20usize..0x6000,
            data in 0usize..0x3000,
            bss in 0u64..0x40000,
            gap_pages in 0u64..4,
            nr_pages in 900u64..2200,
            is_dom0 in any::<bool>(),
            initrd_len in prop_oneof![Just(0usize), 1usize..0x9000],
            seed in any::<u64>(),
            dirty in any::<bool>(),
        ) {
            let mut t = TestElf::kernel();
            t.segs[0].data = pattern(3, text);
            t.segs[0].memsz = text as u64;
            let data_pa = (text as u64).next_multiple_of(PAGE_SIZE) + gap_pages * PAGE_SIZE;
            t.segs[1].paddr = data_pa;
            t.segs[1].vaddr = BASE + data_pa;
            t.segs[1].data = pattern(4, data);
            t.segs[1].memsz = data as u64 + bss;
            t.set_note(note::HYPERCALL_PAGE, u64_desc(BASE));
            let bytes = t.build();
            let img = parse_pv_image(&bytes, LIMIT).unwrap();
            let initrd = pattern(5, initrd_len);
            let mem = memory(2200);
            let mut frames = TestFrames::new(&mem, 2200, seed, dirty);
            let c = BuildConfig { is_dom0, initrd: &initrd, ..cfg(nr_pages) };
            match build_pv_domain(&mem, &mut frames, &img, &bytes, &c) {
                Ok(d) => verify(&mem, &d, &img, &bytes, &c),
                Err(e) => {
                    prop_assert!(matches!(e.failure, BuildFailure::Layout(LayoutError::NotEnoughMemory { .. })), "{}", e);
                    prop_assert!(e.frames.is_empty());
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn mutated_images_never_panic_the_builder(
            at in any::<prop::sample::Index>(),
            width in prop_oneof![Just(1usize), Just(2), Just(4), Just(8)],
            val in any::<u64>(),
            small in 0u64..0x4000,
            use_small in any::<bool>(),
            headers_only in any::<bool>(),
        ) {
            let t = TestElf::kernel();
            let mut bytes = t.build();
            // Half the time aim at the headers and notes, where parsing decisions are made.
            let span = if headers_only { phdr_offset(3) + t.note_blob().len() } else { bytes.len() - width };
            let at = at.index(span) & !(width - 1);
            let val = if use_small { small } else { val };
            bytes[at..at + width].copy_from_slice(&val.to_le_bytes()[..width]);
            if let Ok(img) = parse_pv_image(&bytes, LIMIT) {
                let mem = memory(3072);
                let mut frames = TestFrames::new(&mem, 3072, val, false);
                let c = cfg(3072);
                if let Ok(d) = build_pv_domain(&mem, &mut frames, &img, &bytes, &c) {
                    verify(&mem, &d, &img, &bytes, &c);
                }
            }
        }
    }
}
