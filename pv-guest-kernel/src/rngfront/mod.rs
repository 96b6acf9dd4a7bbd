//! The random-number frontend (`hypercall_abi::io::rngif`): `read(&mut buf)` fills a buffer
//! with bytes from dom0's virtio-rng, over the split-driver framework.
//!
//! The device keeps [`PAGES`] pages granted (writable) to the backend for as long as it is
//! connected; a read asks for up to a page per request, one request per page in flight,
//! and copies each answer out of its page. The backend is another domain: a response
//! is accepted only for an id in flight, with status 0 and exactly the length asked for
//! ([`InFlight::complete`]); anything else fails the read.

use hypercall_abi::io::rngif::RngResponse;
use hypercall_abi::{Errno, PAGE_SIZE};

#[cfg(not(test))]
pub use kernel::*;

/// Pages granted to the backend, i.e. requests in flight at most.
pub const PAGES: usize = 4;

/// Why a read failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RngError {
    /// No `vrng` device, or its backend never connected.
    NoDevice,
    /// Setting up failed (xenstore, grants, events).
    Setup(Errno),
    /// The backend answered `-errno`.
    Backend(Errno),
    /// The backend broke the protocol (ring indexes, unknown ids, wrong lengths).
    Protocol,
    /// No answer in time.
    Timeout,
}

impl core::fmt::Display for RngError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RngError::Setup(e) => write!(f, "set-up failed: {e}"),
            RngError::Backend(e) => write!(f, "backend error {e}"),
            other => write!(f, "{other:?}"),
        }
    }
}

/// Where the answer of an abandoned request goes: nowhere.
pub const DISCARD: usize = usize::MAX;

/// The requests in flight: per page, the id and length asked for and where in the caller's
/// buffer the bytes go.
#[derive(Debug, Default)]
pub struct InFlight {
    slots: [Option<(u64, usize, usize)>; PAGES],
    next_id: u64,
}

impl InFlight {
    /// A free page, if any.
    pub fn free_slot(&self) -> Option<usize> {
        self.slots.iter().position(Option::is_none)
    }
    /// Records a request for `len` bytes into the caller's buffer at `at` on page `slot`;
    /// returns its id.
    pub fn start(&mut self, slot: usize, at: usize, len: usize) -> u64 {
        self.next_id = self.next_id.wrapping_add(1);
        self.slots[slot] = Some((self.next_id, at, len));
        self.next_id
    }
    /// Forgets where the answers of the requests in flight were to go (a read failed and
    /// returned): they are still taken off the ring when they come, and dropped.
    pub fn abandon(&mut self) {
        for (_, at, _) in self.slots.iter_mut().flatten() {
            *at = DISCARD;
        }
    }
    /// Requests in flight.
    pub fn count(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }
    /// Matches a response with its request and retires it: `(slot, at, len)` to copy.
    pub fn complete(&mut self, r: &RngResponse) -> Result<(usize, usize, usize), RngError> {
        let slot =
            self.slots.iter().position(|s| s.is_some_and(|s| s.0 == r.id)).ok_or(RngError::Protocol)?;
        let (_, at, len) = self.slots[slot].take().ok_or(RngError::Protocol)?;
        if r.status < 0 {
            return Err(RngError::Backend(Errno(r.status.saturating_neg())));
        }
        if r.status != 0 || r.len as usize != len || len > PAGE_SIZE {
            return Err(RngError::Protocol);
        }
        Ok((slot, at, len))
    }
}

#[cfg(not(test))]
mod kernel {
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
        pub fn disconnect<T: Transport>(
            mut self,
            xb: &mut Xenbus<T>,
            timeout_ns: u64,
        ) -> Result<(), RngError> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn responses_must_answer_a_request_in_flight_exactly() {
        let mut f = InFlight::default();
        let a = f.start(0, 0, 4096);
        let b = f.start(1, 4096, 10);
        assert_eq!(f.free_slot(), Some(2));
        assert_eq!(f.complete(&RngResponse::ok(999, 10)), Err(RngError::Protocol), "unknown id");
        assert_eq!(f.complete(&RngResponse::ok(b, 11)), Err(RngError::Protocol), "wrong length");
        assert_eq!(f.count(), 1, "a bad answer still retires its request");
        assert_eq!(f.complete(&RngResponse::ok(a, 4096)), Ok((0, 0, 4096)));
        assert_eq!(f.complete(&RngResponse::ok(a, 4096)), Err(RngError::Protocol), "answered twice");
        let c = f.start(0, 0, 5);
        assert_eq!(f.complete(&RngResponse::error(c, Errno::EFAULT)), Err(RngError::Backend(Errno::EFAULT)));
        let d = f.start(3, 0, 1);
        assert_eq!(f.complete(&RngResponse { id: d, status: 7, len: 1 }), Err(RngError::Protocol));
        assert_eq!(f.count(), 0);
        // An abandoned request is still matched (and retired), with nowhere to go.
        let e = f.start(1, 100, 8);
        f.abandon();
        assert_eq!(f.complete(&RngResponse::ok(e, 8)), Ok((1, DISCARD, 8)));
        assert_eq!(f.count(), 0);
    }

    proptest! {
        #[test]
        fn arbitrary_responses_never_complete_more_than_was_asked(
            rsps in proptest::collection::vec((0u64..8, -30i32..3, 0u32..5000), 0..40)
        ) {
            let mut f = InFlight::default();
            let mut asked = std::collections::BTreeMap::new();
            for slot in 0..PAGES {
                let len = 1000 + slot;
                asked.insert(f.start(slot, slot * 4096, len), len);
            }
            for (id, status, len) in rsps {
                if let Ok((_, _, n)) = f.complete(&RngResponse { id, status, len }) {
                    prop_assert_eq!(asked.remove(&id), Some(n));
                    prop_assert!(status == 0 && n as u32 == len);
                }
            }
        }
    }
}
