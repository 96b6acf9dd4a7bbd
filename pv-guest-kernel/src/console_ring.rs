//! The PV console frontend: this domain's console ring (`xencons_interface`, start_info's
//! `console.domU`), served by dom0's console backend.
//!
//! Output goes through `console_io` (tagged by the hypervisor) until the ring is known to be
//! served: the domain finds its backend under `console/backend` in xenstore, watches the
//! backend's `state`, and once the backend is ready (XenbusState InitWait or Connected)
//! switches output to the ring and publishes `console/state` = Connected ([`connect`]). A
//! full ring is waited out by yielding a bounded number of times; whatever still does not fit
//! goes to `console_io`, so no output is ever lost. Input arrives in the `in` ring
//! ([`read_input`]). The state walk is the split-driver framework's ([`crate::split::follow`]);
//! the ring itself is the builder's, so there is nothing to grant or bind.

#[cfg(not(test))]
mod kernel {
    use crate::xenbus::ring::{ByteRing, MappedPage};
    use crate::xenbus::state::{Role, Step, XenbusDevice};
    use crate::xenbus::{own_frame_va, wait_flag, Transport, TxId, Xenbus};
    use crate::{events, hypercall};
    use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
    use hypercall_abi::io::xenbus::XenbusState;
    use hypercall_abi::xen::StartInfo;
    use hypercall_abi::{Errno, Mfn, Port};

    /// Yields a writer facing a full ring makes before giving up on the ring for a write.
    const MAX_YIELDS: u32 = 1000;
    /// Watch token of the backend's state.
    const TOKEN: &str = "console-backend-state";

    static PAGE_VA: AtomicU64 = AtomicU64::new(0);
    static PORT: AtomicU32 = AtomicU32::new(0);
    static ENABLED: AtomicBool = AtomicBool::new(false);
    static BUSY: AtomicBool = AtomicBool::new(false);
    static KICK: AtomicBool = AtomicBool::new(false);

    fn on_event(_port: Port) {
        KICK.store(true, Ordering::SeqCst);
    }

    fn page() -> Option<MappedPage> {
        let va = PAGE_VA.load(Ordering::SeqCst);
        // SAFETY: PAGE_VA is only set by `attach` to the direct-map address of our own console
        // ring page, which stays mapped for the kernel's lifetime.
        (va != 0).then(|| unsafe { MappedPage::new(va) })
    }

    /// Finds the ring page and installs the event handler; output still goes to `console_io`.
    pub fn attach(si: &StartInfo) -> Result<(), Errno> {
        // For dom0 the field is the `console.dom0` member of Xen's union (where the boot VGA
        // info sits), not a ring: dom0 writes through `console_io`.
        if crate::start_info::is_dom0(si) || si.console.mfn == 0 || si.console.evtchn.0 == 0 {
            return Err(Errno::ENODEV);
        }
        let va = own_frame_va(Mfn(si.console.mfn))?;
        PORT.store(si.console.evtchn.0, Ordering::SeqCst);
        events::attach(si.console.evtchn, on_event)?;
        PAGE_VA.store(va, Ordering::SeqCst);
        Ok(())
    }

    /// Sends output to the ring (`true`) or back to `console_io`.
    pub fn enable(on: bool) {
        ENABLED.store(on && page().is_some(), Ordering::SeqCst);
    }

    /// True while output goes to the ring.
    pub fn is_enabled() -> bool {
        ENABLED.load(Ordering::SeqCst)
    }

    /// Writes `bytes` to the ring if output goes there; `false` if the caller must use
    /// `console_io` itself (not connected, or the ring is in use by the code this call
    /// interrupted).
    pub fn write(bytes: &[u8]) -> bool {
        if !is_enabled() {
            return false;
        }
        let Some(page) = page() else { return false };
        if BUSY.swap(true, Ordering::Acquire) {
            return false;
        }
        let port = Port(PORT.load(Ordering::SeqCst));
        let mut done = 0;
        let mut yields = 0;
        while done < bytes.len() {
            let n = ByteRing::CONS_OUT.produce(&page, &bytes[done..]);
            done += n;
            if n > 0 {
                let _ = events::send(port);
            } else if yields < MAX_YIELDS {
                yields += 1;
                hypercall::yield_cpu();
            } else {
                hypercall::console_write(&bytes[done..]);
                break;
            }
        }
        BUSY.store(false, Ordering::Release);
        true
    }

    /// Takes up to `buf.len()` bytes of console input.
    pub fn read_input(buf: &mut [u8]) -> usize {
        let Some(page) = page() else { return 0 };
        let n = ByteRing::CONS_IN.consume(&page, buf);
        if n > 0 {
            let _ = events::send(Port(PORT.load(Ordering::SeqCst)));
        }
        n
    }

    /// Waits up to `timeout_ns` for a console event (input, or room in `out`).
    pub fn wait_event(timeout_ns: u64) -> Result<(), Errno> {
        wait_flag(&KICK, timeout_ns)
    }

    /// The frontend handshake: attach the ring, find the backend in xenstore, wait (through a
    /// watch on its `state`) until it serves the ring, switch output to the ring and publish
    /// `console/state` = Connected. Returns the backend's directory. Watch events for other
    /// tokens that arrive meanwhile are discarded.
    pub fn connect<T: Transport>(xb: &mut Xenbus<T>, si: &StartInfo) -> Result<alloc::string::String, Errno> {
        attach(si)?;
        let backend = xb.read_string(TxId::NONE, "console/backend")?;
        let mut dev = XenbusDevice::new(Role::Frontend, "console", &backend);
        dev.load(xb);
        dev.switch(xb, XenbusState::Initialising)?;
        xb.watch(&dev.other_state_path(), TOKEN)?;
        let r = loop {
            match xb.wait_watch_event() {
                Ok(ev) if ev.token == TOKEN => {}
                Ok(_) => continue,
                Err(e) => break Err(e),
            }
            // The ring and port are the builder's: the framework's part is the state walk.
            let mut closed = false;
            let walked = crate::split::follow(&mut dev, xb, |step| match step {
                Step::Connect => {
                    enable(true);
                    true
                }
                Step::Close | Step::Closed => {
                    closed = true;
                    false
                }
                _ => true,
            });
            match walked {
                _ if closed => break Err(Errno::ENODEV),
                Ok(entered) if entered.contains(&XenbusState::Connected) => break Ok(()),
                Ok(_) => {}
                Err((_, e)) => break Err(e),
            }
        };
        let _ = xb.unwatch(&dev.other_state_path(), TOKEN);
        r.map(|()| backend)
    }
}

#[cfg(not(test))]
pub use kernel::*;

/// Host builds have no ring: output always goes to `console_io`.
#[cfg(test)]
pub fn write(_bytes: &[u8]) -> bool {
    false
}
