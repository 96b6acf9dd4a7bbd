//! The virtio-rng device (QEMU's `-device virtio-rng-pci`) through virtio-drivers'
//! `VirtIORng`: the bytes are fetched into one page of dom0 (page-aligned, so virtio-drivers
//! hands its machine address to the device without a bounce), from which the `vrng`
//! backends ([`crate::backends::vrng`]) grant-copy them to the frontends.

use super::hal::XenHal;
use super::virtio_blk::{pci_transport, VIRTIO_VENDOR};
use dom0::pci::{self, Bdf};
use hypercall_abi::{Errno, Mfn, PAGE_SIZE};
use pv_guest_kernel::mm::{self, Page};
use virtio_drivers::device::rng::VirtIORng;
use virtio_drivers::transport::pci::PciTransport;

/// Modern (virtio 1.0) entropy device id, and the transitional one.
pub const DEVICE_ID_RNG: [u16; 2] = [0x1044, 0x1005];

/// The device and dom0's staging page, shared by every frontend's driver.
pub struct RngDevice {
    pub bdf: Bdf,
    dev: VirtIORng<XenHal, PciTransport>,
    page: Page,
    /// Bytes handed out in all.
    pub bytes: u64,
}

impl RngDevice {
    /// The first virtio-rng function on the PCI bus, set up.
    pub fn find() -> Option<Result<RngDevice, &'static str>> {
        let f = pci::enumerate(&super::portio::PortCam)
            .into_iter()
            .find(|f| f.vendor == VIRTIO_VENDOR && DEVICE_ID_RNG.contains(&f.device))?;
        Some((|| {
            let t = pci_transport(&f)?;
            let dev = VirtIORng::<XenHal, _>::new(t).map_err(|_| "device refused to start")?;
            let page = mm::alloc_page().map_err(|_| "no staging page")?;
            Ok(RngDevice { bdf: f.bdf, dev, page, bytes: 0 })
        })())
    }

    /// The staging page's frame.
    pub fn staging_mfn(&self) -> Mfn {
        self.page.mfn
    }

    /// Has the device write `len` bytes at `at` in the staging page; how many it wrote.
    pub fn fetch(&mut self, at: usize, len: usize) -> Result<usize, Errno> {
        if at.checked_add(len).is_none_or(|end| end > PAGE_SIZE) {
            return Err(Errno::EINVAL);
        }
        // SAFETY: inside a page of ours in the direct map, which nothing else uses (it is
        // only reached through `&mut self`).
        let buf = unsafe { core::slice::from_raw_parts_mut((self.page.va + at as u64) as *mut u8, len) };
        self.dev.request_entropy(buf).map_err(|_| Errno::EIO)
    }
}
