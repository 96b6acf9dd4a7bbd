//! The shared_info page: per-vCPU event state and PV clock, the event-channel bitmaps and the
//! wall clock, written by the hypervisor while the guest runs.
//!
//! The page is only ever reached through [`SharedInfoPage`], whose fields are atomics laid
//! out exactly like Xen's `struct shared_info` (checked at compile time against
//! `hypercall_abi`), so every access is a single load, store or locked read-modify-write and
//! the compiler can never cache or tear a value the hypervisor may change.
//!
//! The domain builder does not map the page: the guest maps `start_info.shared_info` (a
//! machine address) itself with `update_va_mapping`, over a page-aligned .bss page it gives up
//! for good, as mini-os does. Until that succeeds [`get`] returns `None` and everything built
//! on the page (events, the PV clock) reports itself unavailable.

use core::sync::atomic::{AtomicI8, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, Ordering};
use hypercall_abi::xen::{SharedInfo, XEN_LEGACY_MAX_VCPUS};

/// `struct vcpu_time_info`, atomically accessed.
#[repr(C)]
pub struct SharedTimeInfo {
    /// Seqlock: odd while the hypervisor updates the fields.
    pub version: AtomicU32,
    _pad0: AtomicU32,
    pub tsc_timestamp: AtomicU64,
    pub system_time: AtomicU64,
    pub tsc_to_system_mul: AtomicU32,
    pub tsc_shift: AtomicI8,
    pub flags: AtomicU8,
    _pad1: [AtomicU8; 2],
}

/// `struct vcpu_info`, atomically accessed.
#[repr(C)]
pub struct SharedVcpuInfo {
    pub evtchn_upcall_pending: AtomicU8,
    pub evtchn_upcall_mask: AtomicU8,
    _pad: [AtomicU8; 6],
    pub evtchn_pending_sel: AtomicU64,
    /// `arch.cr2`: the faulting address of the last #PF bounced to this vCPU.
    pub cr2: AtomicU64,
    _arch_pad: AtomicU64,
    pub time: SharedTimeInfo,
}

/// Words of the 2-level event bitmaps (64 ports each).
pub const EVTCHN_WORDS: usize = 64;

/// `struct shared_info`, atomically accessed.
#[repr(C)]
pub struct SharedInfoPage {
    pub vcpu_info: [SharedVcpuInfo; XEN_LEGACY_MAX_VCPUS],
    pub evtchn_pending: [AtomicU64; EVTCHN_WORDS],
    pub evtchn_mask: [AtomicU64; EVTCHN_WORDS],
    pub wc_version: AtomicU32,
    pub wc_sec: AtomicU32,
    pub wc_nsec: AtomicU32,
    pub wc_sec_hi: AtomicU32,
    pub max_pfn: AtomicU64,
    pub pfn_to_mfn_frame_list_list: AtomicU64,
    pub nmi_reason: AtomicU64,
    pub p2m_cr3: AtomicU64,
    pub p2m_vaddr: AtomicU64,
    pub p2m_generation: AtomicU64,
}

// The layout must be Xen's, byte for byte.
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<SharedTimeInfo>() == 32);
    assert!(offset_of!(SharedTimeInfo, tsc_timestamp) == 8);
    assert!(offset_of!(SharedTimeInfo, system_time) == 16);
    assert!(offset_of!(SharedTimeInfo, tsc_to_system_mul) == 24);
    assert!(offset_of!(SharedTimeInfo, tsc_shift) == 28);
    assert!(offset_of!(SharedTimeInfo, flags) == 29);
    assert!(size_of::<SharedVcpuInfo>() == 64);
    assert!(offset_of!(SharedVcpuInfo, evtchn_upcall_mask) == 1);
    assert!(offset_of!(SharedVcpuInfo, evtchn_pending_sel) == 8);
    assert!(offset_of!(SharedVcpuInfo, cr2) == 16);
    assert!(offset_of!(SharedVcpuInfo, time) == 32);
    assert!(size_of::<SharedInfoPage>() == size_of::<SharedInfo>());
    assert!(size_of::<SharedInfoPage>() == 3136);
    assert!(offset_of!(SharedInfoPage, vcpu_info) + 64 == SharedInfo::vcpu_info_offset(1));
    assert!(offset_of!(SharedInfoPage, evtchn_pending) == SharedInfo::pending_word_offset(0));
    assert!(offset_of!(SharedInfoPage, evtchn_mask) == SharedInfo::mask_word_offset(0));
    assert!(offset_of!(SharedInfoPage, wc_version) == 3072);
    assert!(offset_of!(SharedInfoPage, max_pfn) == 3088);
    assert!(offset_of!(SharedInfoPage, p2m_generation) == 3128);
};

#[allow(clippy::declare_interior_mutable_const)]
const ZERO_TIME: SharedTimeInfo = SharedTimeInfo {
    version: AtomicU32::new(0),
    _pad0: AtomicU32::new(0),
    tsc_timestamp: AtomicU64::new(0),
    system_time: AtomicU64::new(0),
    tsc_to_system_mul: AtomicU32::new(0),
    tsc_shift: AtomicI8::new(0),
    flags: AtomicU8::new(0),
    _pad1: [AtomicU8::new(0), AtomicU8::new(0)],
};

#[allow(clippy::declare_interior_mutable_const)]
const ZERO_VCPU: SharedVcpuInfo = SharedVcpuInfo {
    evtchn_upcall_pending: AtomicU8::new(0),
    evtchn_upcall_mask: AtomicU8::new(0),
    _pad: [const { AtomicU8::new(0) }; 6],
    evtchn_pending_sel: AtomicU64::new(0),
    cr2: AtomicU64::new(0),
    _arch_pad: AtomicU64::new(0),
    time: ZERO_TIME,
};

impl SharedInfoPage {
    /// An all-zero page (what the builder hands over), for host tests and fakes.
    pub const fn zeroed() -> SharedInfoPage {
        SharedInfoPage {
            vcpu_info: [ZERO_VCPU; XEN_LEGACY_MAX_VCPUS],
            evtchn_pending: [const { AtomicU64::new(0) }; EVTCHN_WORDS],
            evtchn_mask: [const { AtomicU64::new(0) }; EVTCHN_WORDS],
            wc_version: AtomicU32::new(0),
            wc_sec: AtomicU32::new(0),
            wc_nsec: AtomicU32::new(0),
            wc_sec_hi: AtomicU32::new(0),
            max_pfn: AtomicU64::new(0),
            pfn_to_mfn_frame_list_list: AtomicU64::new(0),
            nmi_reason: AtomicU64::new(0),
            p2m_cr3: AtomicU64::new(0),
            p2m_vaddr: AtomicU64::new(0),
            p2m_generation: AtomicU64::new(0),
        }
    }

    /// Word index and bit of `port` in the bitmaps.
    pub const fn port_bit(port: u32) -> (usize, u64) {
        ((port / 64) as usize % EVTCHN_WORDS, 1 << (port % 64))
    }

    /// True if `port` is pending.
    pub fn is_pending(&self, port: u32) -> bool {
        let (w, b) = Self::port_bit(port);
        self.evtchn_pending[w].load(Ordering::SeqCst) & b != 0
    }

    /// True if `port` is masked.
    pub fn is_masked(&self, port: u32) -> bool {
        let (w, b) = Self::port_bit(port);
        self.evtchn_mask[w].load(Ordering::SeqCst) & b != 0
    }
}

/// Where the page is mapped, once it is.
static SHARED: AtomicPtr<SharedInfoPage> = AtomicPtr::new(core::ptr::null_mut());

/// The shared_info page, if it has been mapped.
pub fn get() -> Option<&'static SharedInfoPage> {
    let p = SHARED.load(Ordering::Acquire);
    // SAFETY: `SHARED` is only ever set (by `map`) to the address of a page that was just
    // successfully mapped onto shared_info and is never unmapped or reused afterwards; the
    // type is all atomics, so shared references to it are sound while the hypervisor writes.
    unsafe { p.as_ref() }
}

/// vCPU 0's `vcpu_info` (our kernels run one vCPU).
pub fn vcpu0() -> Option<&'static SharedVcpuInfo> {
    get().map(|s| &s.vcpu_info[0])
}

#[cfg(not(test))]
mod kernel {
    use super::*;
    use crate::hypercall;
    use crate::mm::pt;
    use hypercall_abi::xen::uvmf;
    use hypercall_abi::Errno;

    core::arch::global_asm!(
        // The page given up to shared_info: alone in its page, never touched as memory.
        ".pushsection .bss.pv_shared_info_page, \"aw\", @nobits",
        ".balign 4096",
        ".globl __pv_shared_info_page",
        "__pv_shared_info_page:",
        ".skip 4096",
        ".popsection",
    );

    extern "C" {
        static __pv_shared_info_page: [u8; 4096];
    }

    /// Maps the shared_info frame (machine address `maddr`, from start_info) over our reserved
    /// .bss page and publishes it. Returns the hypervisor's error when the mapping fails.
    pub fn map(maddr: u64) -> Result<&'static SharedInfoPage, Errno> {
        if let Some(s) = get() {
            return Ok(s);
        }
        if maddr & 0xfff != 0 {
            return Err(Errno::EINVAL);
        }
        // Only the address is taken: the page is never read or written as a Rust object (it is
        // about to stop being ours).
        let va = core::ptr::addr_of!(__pv_shared_info_page) as u64;
        // P|RW|U like mini-os (`pa | 7`); A|D spare the hypervisor setting them.
        let pte = maddr | pt::PRESENT | pt::RW | pt::USER | pt::ACCESSED | pt::DIRTY;
        hypercall::check(hypercall::update_va_mapping(va, pte, uvmf::INVLPG))?;
        SHARED.store(va as *mut SharedInfoPage, Ordering::Release);
        // SAFETY: see `get`: the page was just mapped and is never unmapped.
        Ok(unsafe { &*(va as *const SharedInfoPage) })
    }
}

#[cfg(not(test))]
pub use kernel::map;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_bits() {
        assert_eq!(SharedInfoPage::port_bit(0), (0, 1));
        assert_eq!(SharedInfoPage::port_bit(63), (0, 1 << 63));
        assert_eq!(SharedInfoPage::port_bit(64), (1, 1));
        assert_eq!(SharedInfoPage::port_bit(4095), (63, 1 << 63));
        let s = SharedInfoPage::zeroed();
        s.evtchn_pending[1].store(1 << 3, Ordering::SeqCst);
        assert!(s.is_pending(67) && !s.is_pending(66) && !s.is_masked(67));
    }
}
