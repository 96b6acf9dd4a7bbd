//! The kernel half of [`super`]: the xenstore ring of this domain as a [`Transport`], woken
//! by its event channel.

use super::client::{Transport, Xenbus};
use super::ring::{ByteRing, MappedPage, SharedPage};
use crate::{events, mm, time};
use core::sync::atomic::{AtomicBool, Ordering};
use hypercall_abi::io::xs_wire::{self, connection, server_feature};
use hypercall_abi::xen::StartInfo;
use hypercall_abi::{Errno, Mfn, Port};

/// How long a request waits for xenstored before giving up.
pub const DEFAULT_TIMEOUT_NS: u64 = 5_000_000_000;

/// Set by the store port's handler, cleared by the waiter.
static STORE_KICK: AtomicBool = AtomicBool::new(false);

fn on_store_event(_port: Port) {
    STORE_KICK.store(true, Ordering::SeqCst);
}

/// The direct-map address of one of our own frames (the ring pages the builder placed).
pub fn own_frame_va(mfn: Mfn) -> Result<u64, Errno> {
    let pfn = mm::mfn_to_pfn(mfn).ok_or(Errno::EFAULT)?;
    // The M2P entry of a frame is whatever its owner last said: check it maps back.
    if mm::pfn_to_mfn(pfn) != Some(mfn) {
        return Err(Errno::EFAULT);
    }
    mm::pfn_to_virt(pfn).ok_or(Errno::EFAULT)
}

/// Blocks until `flag` is raised (and clears it) or `timeout_ns` pass.
pub fn wait_flag(flag: &AtomicBool, timeout_ns: u64) -> Result<(), Errno> {
    let deadline = time::now_ns().saturating_add(timeout_ns);
    match events::block_until(|| flag.swap(false, Ordering::SeqCst), Some(deadline)) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Errno::ETIMEDOUT),
        Err(e) => Err(e),
    }
}

/// This domain's xenstore ring.
pub struct RingTransport {
    page: MappedPage,
    port: Port,
    /// How long [`Transport::wait`] waits for an event.
    pub timeout_ns: u64,
}

impl RingTransport {
    /// The ring in start_info, with the store port's handler installed.
    pub fn from_start_info(si: &StartInfo) -> Result<RingTransport, Errno> {
        if si.store_mfn == 0 || si.store_evtchn.0 == 0 {
            return Err(Errno::ENODEV);
        }
        let va = own_frame_va(Mfn(si.store_mfn))?;
        // SAFETY: the ring is one of our own pages in the direct map, which is never unmapped;
        // nothing else in this kernel refers to it.
        let page = unsafe { MappedPage::new(va) };
        events::attach(si.store_evtchn, on_store_event)?;
        Ok(RingTransport { page, port: si.store_evtchn, timeout_ns: DEFAULT_TIMEOUT_NS })
    }

    /// The event channel.
    pub fn port(&self) -> Port {
        self.port
    }

    /// The server's `error` field (`XENSTORE_ERROR_*`; 0 while the connection is fine).
    pub fn ring_error(&self) -> u32 {
        self.page.load_u32(xs_wire::ERROR_OFFSET)
    }

    /// The `server_features` bits.
    pub fn server_features(&self) -> u32 {
        self.page.load_u32(xs_wire::SERVER_FEATURES_OFFSET)
    }

    /// The `connection` field.
    pub fn connection(&self) -> u32 {
        self.page.load_u32(xs_wire::CONNECTION_OFFSET)
    }

    fn notify(&self) -> Result<(), Errno> {
        events::send(self.port)
    }

    /// Waits until the server has published an error code; returns it.
    pub fn wait_ring_error(&mut self) -> Result<u32, Errno> {
        loop {
            let e = self.ring_error();
            if e != 0 {
                return Ok(e);
            }
            wait_flag(&STORE_KICK, self.timeout_ns)?;
        }
    }

    /// Waits while the connection is being reset by someone else (`connection` = 1 at
    /// start-up, as in dom0less), as xenstore-ring.txt asks before using the ring.
    pub fn wait_connected(&mut self) -> Result<(), Errno> {
        while self.connection() != connection::XENSTORE_CONNECTED {
            wait_flag(&STORE_KICK, self.timeout_ns)?;
        }
        Ok(())
    }

    /// The ring reconnection of xenstore-ring.txt: ask, then wait for the server to empty
    /// both queues, drop our watches and transactions and say CONNECTED again.
    pub fn reconnect(&mut self) -> Result<(), Errno> {
        if self.server_features() & server_feature::RECONNECTION == 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        self.page.store_u32(xs_wire::CONNECTION_OFFSET, connection::XENSTORE_RECONNECT);
        self.notify()?;
        self.wait_connected()
    }
}

impl Transport for RingTransport {
    fn send(&mut self, bytes: &[u8]) -> Result<usize, Errno> {
        let n = ByteRing::XS_REQ.produce(&self.page, bytes);
        if n > 0 {
            self.notify()?;
        }
        Ok(n)
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, Errno> {
        let n = ByteRing::XS_RSP.consume(&self.page, buf);
        if n > 0 {
            self.notify()?;
        }
        Ok(n)
    }

    fn wait(&mut self) -> Result<(), Errno> {
        wait_flag(&STORE_KICK, self.timeout_ns)
    }
}

/// Connects to xenstored through the ring in start_info (a domU; dom0 serves itself).
pub fn connect(si: &StartInfo) -> Result<Xenbus<RingTransport>, Errno> {
    let mut t = RingTransport::from_start_info(si)?;
    t.wait_connected()?;
    Ok(Xenbus::new(t))
}
