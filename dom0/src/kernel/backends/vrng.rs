//! The `vrng` backend kind: QEMU's virtio-rng ([`crate::hw::virtio_rng`]) served to the
//! domUs as `vrng` split devices ([`dom0::rngback`] is the driver, [`super`] the host).
//!
//! Every domU gets a device unless dom0's `vrng=` option lists the ones that do (names or
//! ids, comma-separated; `vrng=none` serves nobody). The bytes are fetched into dom0's
//! staging page and grant-copied from there into the frontend's page.

use super::{BackendKind, Backends};
use crate::hw::virtio_rng::RngDevice;
use crate::services::Service;
use alloc::boxed::Box;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use dom0::rngback::keys::parse_vrng_option;
use dom0::rngback::{RngDriver, RngHost};
use dom0::xenstore::Xenstore;
use hypercall_abi::grant_table::{gntcopy, gntst, GnttabCopy, GnttabCopyPtr};
use hypercall_abi::{DomId, Errno, GrantRef};
use pv_guest_kernel::{cmdline, hypercall, println};

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
        let mfn = self.0.borrow().staging_mfn();
        let mut op = GnttabCopy {
            source: GnttabCopyPtr::gmfn(mfn.0, DomId::SELF, 0),
            dest: GnttabCopyPtr::gref(gref, frontend, offset),
            len,
            flags: gntcopy::DEST_GREF,
            ..Default::default()
        };
        match hypercall::grant_table_op(core::slice::from_mut(&mut op)) {
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
        if let Some(w) = &self.wanted {
            if !w.iter().any(|w| dom0::domains::names(w, name, domid)) {
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
        // The figures as `key=value` fields, which the host tests read (tests::field).
        format!(
            "dom0: {label}: disconnected (virtio-rng {}) requests={} bytes={} errors={} ring_unmapped={}",
            self.dev.borrow().bdf,
            s.requests,
            s.bytes,
            s.errors,
            u8::from(unmapped)
        )
    }
}

/// The random-number backends, if there is a virtio-rng device and `vrng=` does not say
/// `none`.
pub fn service(cmd: &str, xs: &Rc<RefCell<Xenstore>>) -> Option<Box<dyn Service>> {
    let wanted = parse_vrng_option(cmdline::get(cmd, "vrng"));
    if wanted.as_ref().is_some_and(Vec::is_empty) {
        return None;
    }
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
