//! The kernel half of rngfront: the rngif driver on the split-driver framework (which owns the
//! handshake, the ring page, its grant and the event channel), the pages granted to the
//! backend, and the read loop.

use super::{InFlight, RngError, PAGES};
use crate::mm::{self, Page};
use crate::split::kernel::{self as sk, KernelOps, OwnPage};
use crate::split::{FrontChannel, FrontDevice, FrontendDriver, SplitError};
use crate::xenbus::{Transport, Xenbus};
use crate::{gnttab, time};
use hypercall_abi::io::rngif::{RngRequest, RngResponse, KIND};
use hypercall_abi::{Errno, GrantRef, PAGE_SIZE};

/// How long a read waits for an answer.
const WAIT_NS: u64 = 10_000_000_000;

/// The frontend driver: no keys of its own.
#[derive(Debug, Default)]
pub struct RngFront;

impl FrontendDriver for RngFront {
    type Req = RngRequest;
    type Rsp = RngResponse;
}

type Chan = FrontChannel<OwnPage, RngRequest, RngResponse>;

/// A connected random-number device.
pub struct Rng {
    dev: FrontDevice<OwnPage, RngFront>,
    pages: [(Page, GrantRef); PAGES],
    flight: InFlight,
}

fn split_error(e: SplitError) -> RngError {
    match e {
        SplitError::Os(Errno::ETIMEDOUT) => RngError::Timeout,
        SplitError::Os(e) => RngError::Setup(e),
        _ => RngError::NoDevice,
    }
}

impl Rng {
    /// Finds this domain's `vrng` device (waiting up to `timeout_ns` for it to appear)
    /// and connects it.
    pub fn connect<T: Transport>(xb: &mut Xenbus<T>, timeout_ns: u64) -> Result<Rng, RngError> {
        let mut dev = sk::open_frontend(xb, KIND, RngFront, timeout_ns, WAIT_NS).map_err(split_error)?;
        let mut pages = alloc::vec::Vec::with_capacity(PAGES);
        let mut failed = None;
        for _ in 0..PAGES {
            match mm::alloc_page() {
                Ok(p) => match gnttab::grant_access(dev.backend_id, p.mfn, false) {
                    Ok(g) => pages.push((p, g)),
                    Err(e) => {
                        let _ = mm::free_page(p.pfn);
                        failed = Some(e);
                        break;
                    }
                },
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        match <[(Page, GrantRef); PAGES]>::try_from(pages) {
            Ok(pages) => Ok(Rng { dev, pages, flight: InFlight::default() }),
            Err(pages) => {
                release(&pages);
                let _ = sk::close_frontend(xb, &mut dev, WAIT_NS);
                Err(RngError::Setup(failed.unwrap_or(Errno::ENOMEM)))
            }
        }
    }

    fn chan(&mut self) -> Result<&mut Chan, RngError> {
        self.dev.channel().ok_or(RngError::NoDevice)
    }

    /// Fills `buf` with random bytes from the backend.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<(), RngError> {
        let r = self.read_into(buf);
        if r.is_err() {
            // Answers still to come must not land in a later caller's buffer.
            self.flight.abandon();
        }
        r
    }

    fn read_into(&mut self, buf: &mut [u8]) -> Result<(), RngError> {
        let mut next = 0;
        let deadline = time::now_ns().saturating_add(WAIT_NS);
        while next < buf.len() || self.flight.count() > 0 {
            // As many requests as there are free pages.
            while next < buf.len() {
                let Some(slot) = self.flight.free_slot() else { break };
                let len = (buf.len() - next).min(PAGE_SIZE);
                let id = self.flight.start(slot, next, len);
                let req = RngRequest { id, gref: self.pages[slot].1, offset: 0, len: len as u16 };
                self.chan()?.push(&req).map_err(|_| RngError::Protocol)?;
                next += len;
            }
            self.chan()?.kick(&mut KernelOps);
            let mut got = 0;
            loop {
                let r = match self.chan()?.take() {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(_) => return Err(RngError::Protocol),
                };
                let (slot, at, len) = self.flight.complete(&r)?;
                got += 1;
                if at == super::DISCARD {
                    continue;
                }
                let dst = buf.get_mut(at..at + len).ok_or(RngError::Protocol)?;
                // SAFETY: the page is ours and mapped in the direct map; the backend
                // wrote it with a grant copy that completed before it answered.
                let src = unsafe { core::slice::from_raw_parts(self.pages[slot].0.va as *const u8, len) };
                dst.copy_from_slice(src);
            }
            if got == 0 {
                match sk::wait_responses(self.chan()?, Some(deadline)) {
                    Ok(true) => {}
                    Ok(false) => return Err(RngError::Timeout),
                    Err(_) => return Err(RngError::Protocol),
                }
            }
        }
        Ok(())
    }

    /// Closes the device and gives the pages back.
    pub fn disconnect<T: Transport>(mut self, xb: &mut Xenbus<T>, timeout_ns: u64) -> Result<(), RngError> {
        let r = sk::close_frontend(xb, &mut self.dev, timeout_ns);
        release(&self.pages);
        r.map_err(split_error)
    }

    /// The ring and the granted pages, for tests that play a misbehaving frontend.
    pub fn raw(&mut self) -> Option<(&mut Chan, [GrantRef; PAGES])> {
        let grefs = self.pages.map(|p| p.1);
        self.dev.channel().map(|c| (c, grefs))
    }

    /// The backend's domain.
    pub fn backend(&self) -> hypercall_abi::DomId {
        self.dev.backend_id
    }
}

/// Revokes the pages' grants (the backend only copies into them, so it never holds one)
/// and frees them; a grant that cannot be revoked keeps its page.
fn release(pages: &[(Page, GrantRef)]) {
    for (p, g) in pages {
        if gnttab::end_access(*g).is_ok() {
            let _ = mm::free_page(p.pfn);
        }
    }
}
