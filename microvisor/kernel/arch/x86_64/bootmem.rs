//! Boot-time memory: what the Multiboot loader tells us (RAM map, modules, command line) and
//! a simple allocator that hands out frames before the frame table exists.
//!
//! Everything is copied out of the loader's structures into fixed-size tables here, so the
//! memory they occupy can be reused once boot is over.

use super::boot::HV_VIRT_BASE;
use hypercall_abi::multiboot::{self, info_flags, MultibootInfo};
use hypercall_abi::PAGE_SIZE;
use zerocopy::FromBytes;

/// A physical address range `[start, end)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Range {
    pub start: u64,
    pub end: u64,
}

impl Range {
    pub fn overlaps(&self, o: &Range) -> bool {
        self.start < o.end && o.start < self.end
    }
}

/// A boot module (a guest kernel image) and its command line.
#[derive(Clone, Debug, Default)]
pub struct BootModule {
    /// Page-rounded extent (reserved during boot).
    pub range: Range,
    /// Exact size in bytes.
    pub len: u64,
    pub cmdline: heapless::String<256>,
}

/// What the loader handed over.
pub struct BootInfo {
    pub ram: heapless::Vec<Range, 64>,
    pub modules: heapless::Vec<BootModule, 16>,
    pub cmdline: heapless::String<512>,
    /// Ranges that must not be allocated during boot (image, modules, loader data).
    pub reserved: heapless::Vec<Range, 24>,
}

/// Physical memory below 1 GiB as the early page tables map it.
fn early_slice(pa: u64, len: usize) -> &'static [u8] {
    assert!(pa + len as u64 <= 1 << 30, "early boot can only read the first GiB");
    // SAFETY: boot.rs maps physical 0..1 GiB at HV_VIRT_BASE until paging::init replaces the
    // tables, and this is only called before that. The loader's structures are not modified
    // while we read them.
    unsafe { core::slice::from_raw_parts((HV_VIRT_BASE + pa) as *const u8, len) }
}

fn c_string<const N: usize>(pa: u32) -> heapless::String<N> {
    let mut s = heapless::String::new();
    if pa == 0 {
        return s;
    }
    let bytes = multiboot::c_str(early_slice(u64::from(pa), N.min(4096)));
    for &b in bytes.iter().take(N - 1) {
        let _ = s.push(if b.is_ascii() { b as char } else { '?' });
    }
    s
}

extern "C" {
    static __image_start: u8;
    static __bss_end: u8;
}

/// Reads the Multiboot information at physical `mbi`.
pub fn parse(mbi: u64) -> BootInfo {
    let info = MultibootInfo::read_from_prefix(early_slice(mbi, core::mem::size_of::<MultibootInfo>()))
        .map(|(i, _)| i)
        .expect("Multiboot info is readable");
    let mut bi = BootInfo {
        ram: heapless::Vec::new(),
        modules: heapless::Vec::new(),
        cmdline: heapless::String::new(),
        reserved: heapless::Vec::new(),
    };
    if info.has(info_flags::CMDLINE) {
        bi.cmdline = c_string(info.cmdline);
    }
    assert!(info.has(info_flags::MEM_MAP), "the boot loader gave no memory map");
    for e in multiboot::mmap_entries(early_slice(u64::from(info.mmap_addr), info.mmap_length as usize)) {
        if e.is_available() {
            let start = e.base_addr.next_multiple_of(PAGE_SIZE as u64);
            let end = e.end() & !(PAGE_SIZE as u64 - 1);
            if end > start {
                let _ = bi.ram.push(Range { start, end });
            }
        }
    }
    // SAFETY: the linker script defines both symbols; only their addresses are taken.
    let (img_start, img_end) =
        unsafe { (&__image_start as *const u8 as u64, &__bss_end as *const u8 as u64) };
    let _ = bi.reserved.push(Range { start: 0, end: 0x10_0000 });
    let _ = bi.reserved.push(Range { start: img_start - HV_VIRT_BASE, end: img_end - HV_VIRT_BASE });
    if info.has(info_flags::MODS) {
        let table = early_slice(u64::from(info.mods_addr), info.mods_count as usize * 16);
        for m in multiboot::modules(table) {
            let range = Range {
                start: u64::from(m.mod_start),
                end: u64::from(m.mod_end).next_multiple_of(PAGE_SIZE as u64),
            };
            let _ = bi.reserved.push(range);
            let len = u64::from(m.mod_end.saturating_sub(m.mod_start));
            let _ = bi.modules.push(BootModule { range, len, cmdline: c_string(m.string) });
        }
    }
    bi
}

/// Hands out frames during boot, lowest first, skipping reserved ranges.
pub struct BootAllocator {
    ram: heapless::Vec<Range, 64>,
    reserved: heapless::Vec<Range, 24>,
    /// Next candidate address.
    next: u64,
}

impl BootAllocator {
    pub fn new(bi: &BootInfo) -> BootAllocator {
        BootAllocator { ram: bi.ram.clone(), reserved: bi.reserved.clone(), next: 0 }
    }

    /// `n` physically contiguous frames, zeroed is NOT guaranteed.
    pub fn alloc_contiguous(&mut self, n: u64, below: u64) -> u64 {
        let len = n * PAGE_SIZE as u64;
        let mut cand = self.next;
        'search: loop {
            let Some(r) = self.ram.iter().filter(|r| r.end > cand).min_by_key(|r| r.start) else {
                panic!("out of memory during boot ({n} frames)");
            };
            cand = cand.max(r.start);
            if cand + len > r.end {
                cand = r.end;
                continue;
            }
            let want = Range { start: cand, end: cand + len };
            for res in &self.reserved {
                if res.overlaps(&want) {
                    cand = res.end.next_multiple_of(PAGE_SIZE as u64);
                    continue 'search;
                }
            }
            assert!(want.end <= below, "boot allocation above {below:#x}");
            self.next = want.end;
            return want.start;
        }
    }

    /// Everything not yet handed out: the RAM above `next` minus reserved ranges (modules
    /// stay reserved until their domains are built).
    pub fn remaining(&self) -> impl Iterator<Item = Range> + '_ {
        self.ram.iter().filter_map(move |r| {
            let start = r.start.max(self.next);
            (start < r.end).then_some(Range { start, end: r.end })
        })
    }

    /// True if `pa` is in a reserved range.
    pub fn is_reserved(&self, pa: u64) -> bool {
        self.reserved.iter().any(|r| r.start <= pa && pa < r.end)
    }

    /// Highest RAM address.
    pub fn ram_end(&self) -> u64 {
        self.ram.iter().map(|r| r.end).max().unwrap_or(0)
    }
}

/// Runs `f` on the bytes of boot module `m`.
///
/// The bytes are valid for the call: the boot allocator reserved every module's range, and
/// the only code that returns those frames to the frame table (`boot_modules::build_all`,
/// after building every domain) does so outside the calls. Paging is initialised (the direct
/// map is used) before any domain is built.
pub fn with_module_bytes<R>(m: &BootModule, f: impl FnOnce(&[u8]) -> R) -> R {
    let va = super::paging::DirectMap::virt(m.range.start);
    // SAFETY: see above; the direct map covers all RAM read-write and the loader placed the
    // module in RAM. The slice cannot outlive the call.
    f(unsafe { core::slice::from_raw_parts(va as *const u8, m.len as usize) })
}
