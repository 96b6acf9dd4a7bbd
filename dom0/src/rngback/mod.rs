//! The random-number backend's driver (`hypercall_abi::io::rngif`), on the split-driver
//! framework: the framework maps the ring and binds the port; this answers each request.
//!
//! Every request is the frontend's word: its private copy is checked
//! ([`RngRequest::check`]: `len` in 1..=4096, `offset + len <= 4096`) before anything is done
//! for it, and then the bytes come from the device into dom0's own staging page and are
//! grant-copied into the frontend's page. Copying rather than mapping: a request is at most a
//! page, for which one `GNTTABOP_copy` (≈5.2k cycles in `cargo xtask bench`'s
//! `grant.copy_4k`) is cheaper than a map plus an unmap (≈8.1k, `grant.map_unmap`) and needs
//! no window in dom0's address space; and the hypervisor itself refuses a copy into a grant
//! that is read-only, unknown or not the frontend's, which the backend answers with
//! `-EFAULT`. A device failure is `-EIO`. Nothing is kept between requests, so the backend
//! holds no frontend page when it disconnects.

use alloc::string::String;
use alloc::vec::Vec;
use hypercall_abi::io::ring::{RingError, RingMemory};
use hypercall_abi::io::rngif::{RngRequest, RngResponse, RNG_RING_SIZE};
use hypercall_abi::{DomId, Errno, GrantRef};
use pv_guest_kernel::split::back::{one_ring, BackChannel};
use pv_guest_kernel::split::{BackendDriver, Keys, Served, Store};

pub mod keys;

/// Where the bytes come from and how they reach the frontend.
pub trait RngHost {
    /// Fills the first `len` (≤ 4096) bytes of the staging page with bytes from the device.
    fn fill(&mut self, len: usize) -> Result<(), Errno>;
    /// Copies the first `len` staged bytes to `offset` in `frontend`'s grant `gref`; the
    /// hypervisor's `GNTST_*` status on failure.
    fn copy_out(&mut self, frontend: DomId, gref: GrantRef, offset: u16, len: u16) -> Result<(), i16>;
}

/// Counters of one connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RngStats {
    pub requests: u64,
    pub bytes: u64,
    pub errors: u64,
}

/// One connected frontend.
pub struct RngConn<M> {
    chan: BackChannel<M, RngRequest, RngResponse>,
    frontend: DomId,
    pub stats: RngStats,
}

/// The driver of one frontend's device.
pub struct RngDriver<H> {
    pub host: H,
    /// The last connection's counters, for its log line.
    pub last: Option<RngStats>,
}

impl<H: RngHost> RngDriver<H> {
    pub fn new(host: H) -> Self {
        RngDriver { host, last: None }
    }

    /// Answers one request copy.
    pub fn handle(&mut self, frontend: DomId, req: &RngRequest, stats: &mut RngStats) -> RngResponse {
        stats.requests += 1;
        let r = req.check().and_then(|()| self.host.fill(usize::from(req.len))).and_then(|()| {
            self.host.copy_out(frontend, req.gref, req.offset, req.len).map_err(|_| Errno::EFAULT)
        });
        match r {
            Ok(()) => {
                stats.bytes += u64::from(req.len);
                RngResponse::ok(req.id, u32::from(req.len))
            }
            Err(e) => {
                stats.errors += 1;
                RngResponse::error(req.id, e)
            }
        }
    }
}

impl<M: RingMemory, H: RngHost> BackendDriver<M> for RngDriver<H> {
    type Conn = RngConn<M>;

    fn connect<S: Store + ?Sized>(
        &mut self,
        frontend: DomId,
        rings: Vec<M>,
        _keys: &mut Keys<'_, S>,
    ) -> Result<(RngConn<M>, Vec<(&'static str, String)>), (Vec<M>, &'static str)> {
        let ring = one_ring(rings).map_err(|r| (r, "one ring expected"))?;
        let conn = RngConn { chan: BackChannel::new(ring), frontend, stats: RngStats::default() };
        Ok((conn, keys::connect_keys()))
    }

    /// A ring's worth of requests per round, so one frontend cannot keep dom0 to itself.
    fn service(&mut self, c: &mut RngConn<M>) -> Served {
        let (frontend, stats) = (c.frontend, &mut c.stats);
        c.chan.serve(RNG_RING_SIZE, |req| self.handle(frontend, req, stats))
    }

    fn close(&mut self, c: &mut RngConn<M>) {
        c.chan.close();
    }

    fn broken(&self, c: &RngConn<M>) -> Option<RingError> {
        c.chan.broken()
    }

    fn disconnect(&mut self, c: RngConn<M>) -> Vec<M> {
        self.last = Some(c.stats);
        alloc::vec![c.chan.into_mem()]
    }
}

#[cfg(test)]
mod tests;
