//! The random-number device in dom0: QEMU's virtio-rng (`-device virtio-rng-pci`) through
//! virtio-drivers' `VirtIORng`, served to the domUs as `vrng` split devices
//! ([`dom0::rngback`] is the driver, [`super::backends`] the host).
//!
//! Every domU gets a device unless dom0's `vrng=` option lists the ones that do (names or
//! ids, comma-separated; `vrng=none` serves nobody). The bytes are fetched into one page of
//! dom0 (page-aligned, so virtio-drivers hands its machine address to the device without a
//! bounce) and grant-copied from there into the frontend's page.

use super::backends::{BackendKind, Backends, Service};
use super::hal::XenHal;
use super::virtio_blk::{pci_transport, VIRTIO_VENDOR};
use alloc::boxed::Box;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use dom0::pci::{self, Bdf};
use dom0::rngback::{RngDriver, RngHost};
use dom0::xenstore::Xenstore;
use hypercall_abi::grant_table::{gntcopy, gntst, op as gntop, GnttabCopy, GnttabCopyPtr};
use hypercall_abi::hypercall::nr;
use hypercall_abi::{DomId, Errno, GrantRef, PAGE_SIZE};
use pv_guest_kernel::mm::{self, Page};
use pv_guest_kernel::{cmdline, hypercall, println};
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

    /// Has the device write `len` bytes at `at` in the staging page; how many it wrote.
    fn fetch(&mut self, at: usize, len: usize) -> Result<usize, Errno> {
        if at.checked_add(len).is_none_or(|end| end > PAGE_SIZE) {
            return Err(Errno::EINVAL);
        }
        // SAFETY: inside a page of ours in the direct map, which nothing else uses (it is
        // only reached through `&mut self`).
        let buf = unsafe { core::slice::from_raw_parts_mut((self.page.va + at as u64) as *mut u8, len) };
        self.dev.request_entropy(buf).map_err(|_| Errno::EIO)
    }
}

/// One frontend's handle on the shared device.
pub struct RngHandle(Rc<RefCell<RngDevice>>);

impl RngHost for RngHandle {
    fn fill(&mut self, len: usize) -> Result<(), Errno> {
        let mut d = self.0.borrow_mut();
        let mut done = 0;
        // The device may hand back fewer bytes than asked; a bounded number of tries.
        for _ in 0..64 {
            if done >= len {
                break;
            }
            done += d.fetch(done, len - done)?.min(len - done);
        }
        if done < len {
            return Err(Errno::EIO);
        }
        d.bytes += len as u64;
        Ok(())
    }

    fn copy_out(&mut self, frontend: DomId, gref: GrantRef, offset: u16, len: u16) -> Result<(), i16> {
        let mfn = self.0.borrow().page.mfn;
        let mut op = GnttabCopy {
            source: GnttabCopyPtr::gmfn(mfn.0, DomId::SELF, 0),
            dest: GnttabCopyPtr::gref(gref, frontend, offset),
            len,
            flags: gntcopy::DEST_GREF,
            ..Default::default()
        };
        let r = hypercall::check(hypercall::hypercall5(
            nr::GRANT_TABLE_OP,
            u64::from(gntop::COPY),
            hypercall::ptr_mut(&mut op),
            1,
            0,
            0,
        ));
        match r {
            Ok(_) if op.status == gntst::OKAY => Ok(()),
            Ok(_) => Err(op.status),
            Err(_) => Err(gntst::GENERAL_ERROR),
        }
    }
}

/// The `vrng` kind: who gets a device.
pub struct Vrngs {
    dev: Rc<RefCell<RngDevice>>,
    /// `vrng=`: the domains served (`None`: all).
    wanted: Option<Vec<String>>,
}

impl BackendKind for Vrngs {
    type Driver = RngDriver<RngHandle>;
    const KIND: &'static str = hypercall_abi::io::rngif::KIND;

    fn devid(&self) -> u32 {
        0
    }

    fn driver_for(&mut self, domid: DomId, name: &str) -> Option<Self::Driver> {
        let id = format!("{}", domid.0);
        if let Some(w) = &self.wanted {
            if !w.iter().any(|w| *w == name || *w == id) {
                return None;
            }
        }
        Some(RngDriver::new(RngHandle(self.dev.clone())))
    }

    fn describe(&self, _d: &Self::Driver) -> String {
        format!("random numbers from virtio-rng {}", self.dev.borrow().bdf)
    }

    fn disconnected(&self, d: &mut Self::Driver, label: &str, unmapped: bool) -> String {
        let s = d.last.take().unwrap_or_default();
        format!(
            "dom0: {label}: disconnected ({} requests, {} bytes from virtio-rng {}, {} errors; ring unmapped: {})",
            s.requests,
            s.bytes,
            self.dev.borrow().bdf,
            s.errors,
            if unmapped { "yes" } else { "NO" }
        )
    }
}

/// The random-number backends, if there is a virtio-rng device and `vrng=` does not say
/// `none`.
pub fn service(cmd: &str, xs: &Rc<RefCell<Xenstore>>) -> Option<Box<dyn Service>> {
    let wanted = match cmdline::get(cmd, "vrng") {
        Some("none") => return None,
        Some(list) => {
            Some(list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
        }
        None => None,
    };
    let dev = match RngDevice::find()? {
        Ok(d) => d,
        Err(e) => {
            println!("dom0: virtio-rng: not usable: {e}");
            return None;
        }
    };
    println!("dom0: virtio-rng {}: serving random numbers to the domUs", dev.bdf);
    Some(Backends::new(Vrngs { dev: Rc::new(RefCell::new(dev)), wanted }, xs))
}
