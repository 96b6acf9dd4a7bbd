//! virtio-drivers' `Hal` for a PV dom0: what "physical address" means to a device is a
//! *machine* address here, so every translation goes through the P2M (or, for DMA regions,
//! the extent's machine address), never through a pseudo-physical pfn.
//!
//! * `dma_alloc`/`dma_dealloc`: machine-contiguous regions from [`super::dma`].
//! * `mmio_phys_to_virt`: BAR ranges mapped uncached through `DOMID_IO`.
//! * `share`/`unshare`: a buffer that is machine-contiguous is handed over as is (its machine
//!   address); one that is not (it crosses into a page whose frame is elsewhere) is bounced
//!   through a DMA region, copied in before and out after as the direction requires.
//!
//! dom0's own block driver builds its descriptors from machine addresses directly and needs
//! only the first two; `share` is here so that any virtio-drivers device works as well.

use super::dma::{self, DmaRegion};
use alloc::vec::Vec;
use core::ptr::NonNull;
use hypercall_abi::PAGE_SIZE;
use pv_guest_kernel::mm::{self, pt};
use spin::Mutex;
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

const PAGE: u64 = PAGE_SIZE as u64;

/// Regions handed out by `dma_alloc`.
static REGIONS: Mutex<Vec<DmaRegion>> = Mutex::new(Vec::new());
/// Bounce regions of shared buffers, by the machine address handed to the device.
static BOUNCES: Mutex<Vec<DmaRegion>> = Mutex::new(Vec::new());

/// The `Hal` of dom0's virtio drivers.
#[derive(Debug)]
pub struct XenHal;

/// The machine address behind dom0 virtual address `va`: a DMA region, the direct map, or
/// (for anything else mapped, such as grant mappings) the L1 entry.
pub fn virt_to_machine(va: u64) -> Option<u64> {
    if let Some(r) = REGIONS.lock().iter().find(|r| r.contains(va, 1)) {
        return Some(r.ma_of(va));
    }
    if let Some(pfn) = mm::virt_to_pfn(va) {
        return mm::pfn_to_mfn(pfn).map(|m| m.addr() + (va & (PAGE - 1)));
    }
    match mm::lookup(va & !(PAGE - 1)) {
        Ok(Some(l1e)) if pt::is_present(l1e) => Some(pt::mfn(l1e).addr() + (va & (PAGE - 1))),
        _ => None,
    }
}

/// The machine address of `[va, va + len)` if it is machine-contiguous.
pub fn contiguous_machine(va: u64, len: usize) -> Option<u64> {
    let start = virt_to_machine(va)?;
    let mut page = va & !(PAGE - 1);
    let end = va.checked_add(len.max(1) as u64)?;
    while page + PAGE < end {
        page += PAGE;
        if virt_to_machine(page)? != start + (page - va) {
            return None;
        }
    }
    Some(start)
}

// SAFETY: dma_alloc returns page-aligned, zeroed (the hypervisor zeroes new extents), mapped
// regions that nothing else uses until dma_dealloc; mmio_phys_to_virt returns mappings of the
// device ranges asked for; share returns machine addresses of memory that stays valid (the
// caller's buffer, or a bounce region kept until unshare).
unsafe impl Hal for XenHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        match dma::alloc(pages) {
            Ok(r) => {
                let out = (r.ma, NonNull::new(r.va as *mut u8).expect("DMA window is not null"));
                REGIONS.lock().push(r);
                out
            }
            // virtio-drivers treats a zero address as failure.
            Err(_) => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        let r = {
            let mut regions = REGIONS.lock();
            match regions.iter().position(|r| r.ma == paddr) {
                Some(i) => regions.swap_remove(i),
                None => return -1,
            }
        };
        match dma::free(r) {
            Ok(()) => 0,
            Err(e) => e.to_ret() as i32,
        }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        let va = dma::mmio_va(paddr, size as u64).or_else(|| dma::map_mmio(paddr, size as u64).ok());
        match va.and_then(|va| NonNull::new(va as *mut u8)) {
            Some(p) => p,
            // The trait has no way to fail; the transport only asks for ranges of BARs the
            // driver mapped beforehand, so this is a driver bug.
            None => panic!("dom0: device memory {paddr:#x}+{size:#x} cannot be mapped"),
        }
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        let va = buffer.as_ptr() as *mut u8 as u64;
        let len = buffer.len();
        if let Some(ma) = contiguous_machine(va, len) {
            return ma;
        }
        let pages = len.div_ceil(PAGE_SIZE);
        let bounce = match dma::alloc(pages) {
            Ok(b) => b,
            Err(e) => panic!("dom0: no bounce buffer for {len} bytes: {e}"),
        };
        if direction != BufferDirection::DeviceToDriver {
            // SAFETY: the caller guarantees `buffer` is valid for reads for the call; the
            // bounce region is ours, mapped and at least `len` bytes.
            unsafe { core::ptr::copy_nonoverlapping(va as *const u8, bounce.va as *mut u8, len) };
        }
        let ma = bounce.ma;
        BOUNCES.lock().push(bounce);
        ma
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        let bounce = {
            let mut b = BOUNCES.lock();
            match b.iter().position(|r| r.ma == paddr) {
                Some(i) => b.swap_remove(i),
                // Shared in place: nothing to copy back.
                None => return,
            }
        };
        if direction != BufferDirection::DriverToDevice {
            let len = buffer.len().min(bounce.len());
            // SAFETY: the caller guarantees `buffer` is valid for writes; the bounce region
            // holds what the device wrote.
            unsafe {
                core::ptr::copy_nonoverlapping(bounce.va as *const u8, buffer.as_ptr() as *mut u8, len)
            };
        }
        let _ = dma::free(bounce);
    }
}
