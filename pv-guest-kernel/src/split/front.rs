//! The frontend half of a split device: finds the backend from its own device directory,
//! follows the XenBus handshake, sets the rings up when the backend is ready (a fresh page
//! per ring, `SHARED_RING_INIT`, granted to the backend; an unbound port; the keys), hands
//! the driver the backend's keys once both ends are Connected, and releases everything at
//! the end.
//!
//! The backend is another domain and is not trusted: its `state` is re-read on every watch
//! event and garbage reads as Unknown, its keys reach the driver only through [`Keys`], and
//! its responses only through [`FrontChannel::take`], which checks the ring indexes.

use super::{ring_keys, FrontendOps, Keys, SplitError, Store, XsOps, ONE_RING};
use crate::xenbus::state::{Role, Step, XenbusDevice};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hypercall_abi::io::ring::{FrontRing, RingEntry, RingError, RingMemory, SharedRing};
use hypercall_abi::io::xenbus::XenbusState;
use hypercall_abi::{DomId, Errno, GrantRef, Port};

/// What a frontend driver provides: its ring entries and what it reads and writes in
/// xenstore. The handshake itself is the framework's.
pub trait FrontendDriver {
    /// The entries of the first ring (the one [`FrontChannel`] drives).
    type Req: RingEntry;
    type Rsp: RingEntry;
    /// The xenstore keys of the rings' grant references, one page each: one `ring-ref` for
    /// most devices. Rings after the first are the driver's to drive
    /// ([`FrontChannel::extra`]); all share the one event channel.
    const RINGS: &'static [&'static str] = ONE_RING;
    /// Keys to publish with the ring (e.g. features asked for), given the backend's
    /// directory as it stands at InitWait.
    fn publish<S: Store + ?Sized>(&mut self, _backend: &mut Keys<'_, S>) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// Both ends are Connected: read what the backend published. An error closes the device.
    fn connected<S: Store + ?Sized>(&mut self, _backend: &mut Keys<'_, S>) -> Result<(), &'static str> {
        Ok(())
    }
}

/// Where a frontend's handshake stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontStatus {
    /// Waiting for the backend.
    Waiting,
    /// Both ends Connected and the driver accepted the backend's keys: the ring is usable.
    Connected,
    /// Going away: Closing published, waiting for the backend to follow.
    Closing,
    /// Closed, everything released.
    Closed,
}

/// The frontend's end of a connected ring: the page, its grant, the port; and the pages of
/// the driver's further rings.
pub struct FrontChannel<M, Req, Rsp> {
    /// The ring page (ours).
    pub mem: M,
    pub ring: FrontRing<Req, Rsp>,
    /// The pages of the rings after the first ([`FrontendDriver::RINGS`]), initialised
    /// (`SHARED_RING_INIT`) and granted; the driver keeps their `FrontRing`s.
    pub extra: Vec<M>,
    port: Port,
    gref: GrantRef,
    extra_grefs: Vec<GrantRef>,
    broken: bool,
}

impl<M, Req, Rsp> core::fmt::Debug for FrontChannel<M, Req, Rsp> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FrontChannel").field("port", &self.port).field("gref", &self.gref).finish()
    }
}

impl<M: RingMemory, Req: RingEntry, Rsp: RingEntry> FrontChannel<M, Req, Rsp> {
    /// The event channel.
    pub fn port(&self) -> Port {
        self.port
    }
    /// The ring page's grant.
    pub fn gref(&self) -> GrantRef {
        self.gref
    }
    /// The grants of the further rings' pages.
    pub fn extra_grefs(&self) -> &[GrantRef] {
        &self.extra_grefs
    }
    /// Notifies the backend (for drivers that publish on their further rings).
    pub fn notify<O: super::EventOps + ?Sized>(&self, ops: &mut O) {
        ops.notify(self.port);
    }
    /// True once the backend broke the ring indexes; nothing more is sent or taken.
    pub fn is_broken(&self) -> bool {
        self.broken
    }
    /// Writes a request into the next slot (published by [`kick`](Self::kick)).
    pub fn push(&mut self, req: &Req) -> Result<(), RingError> {
        if self.broken {
            return Err(RingError::Overflow);
        }
        self.ring.push_request(&self.mem, req)
    }
    /// Publishes pushed requests and notifies the backend if it asked to be; true if it was.
    pub fn kick<O: super::EventOps + ?Sized>(&mut self, ops: &mut O) -> bool {
        let notify = self.ring.push_requests_and_check_notify(&self.mem);
        if notify {
            ops.notify(self.port);
        }
        notify
    }
    /// The next response, copied out of the ring.
    pub fn take(&mut self) -> Result<Option<Rsp>, RingError> {
        if self.broken {
            return Err(RingError::Overflow);
        }
        let r = self.ring.take_response(&self.mem);
        self.broken = r.is_err();
        r
    }
    /// `RING_FINAL_CHECK_FOR_RESPONSES`: true if responses arrived (take them before
    /// sleeping); false means the backend will notify on the next one.
    pub fn final_check(&mut self) -> Result<bool, RingError> {
        if self.broken {
            return Err(RingError::Overflow);
        }
        let r = self.ring.final_check_for_responses(&self.mem);
        self.broken = r.is_err();
        r
    }
}

/// One frontend device.
pub struct FrontDevice<M, D: FrontendDriver> {
    pub dev: XenbusDevice,
    pub backend_id: DomId,
    pub driver: D,
    chan: Option<FrontChannel<M, D::Req, D::Rsp>>,
    ready: bool,
    released: bool,
    /// A ring grant the backend still had mapped at release (the first, if several): its
    /// page was not freed.
    pub leaked: Option<GrantRef>,
}

impl<M, D: FrontendDriver> core::fmt::Debug for FrontDevice<M, D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FrontDevice").field("dev", &self.dev).field("ready", &self.ready).finish()
    }
}

impl<M: RingMemory, D: FrontendDriver> FrontDevice<M, D> {
    /// The device whose frontend directory is `dir` (`/local/domain/<me>/device/<kind>/<id>`):
    /// reads `backend` and `backend-id` and starts watching the backend's `state`.
    pub fn open<S: XsOps>(s: &mut S, dir: &str, driver: D) -> Result<Self, SplitError> {
        let backend = s.read_node(&format!("{dir}/backend")).map_err(|_| SplitError::NoDevice)?;
        let backend = core::str::from_utf8(&backend)
            .ok()
            .map(|b| b.trim_end_matches('\0'))
            .filter(|b| b.starts_with('/') && b.len() > 1)
            .ok_or(SplitError::NoDevice)?;
        let backend_id = s
            .read_node(&format!("{dir}/backend-id"))
            .ok()
            .as_deref()
            .and_then(super::parse_decimal)
            .and_then(|v| u16::try_from(v).ok())
            .filter(|&v| v < DomId::FIRST_RESERVED.0)
            .ok_or(SplitError::NoDevice)?;
        let mut dev = XenbusDevice::new(Role::Frontend, dir, backend);
        dev.load(s);
        let d = FrontDevice {
            dev,
            backend_id: DomId(backend_id),
            driver,
            chan: None,
            ready: false,
            released: false,
            leaked: None,
        };
        s.watch(&d.dev.other_state_path(), &d.token())?;
        Ok(d)
    }

    /// The watch token of this device (`fe:<dir>`).
    pub fn token(&self) -> String {
        format!("fe:{}", self.dev.dir)
    }

    /// The ring, once set up.
    pub fn channel(&mut self) -> Option<&mut FrontChannel<M, D::Req, D::Rsp>> {
        self.chan.as_mut()
    }

    /// The ring, once set up, for reading.
    pub fn channel_ref(&self) -> Option<&FrontChannel<M, D::Req, D::Rsp>> {
        self.chan.as_ref()
    }

    /// The ring's port, once set up.
    pub fn port(&self) -> Option<Port> {
        self.chan.as_ref().map(|c| c.port)
    }

    /// Where the handshake stands, without looking at xenstore.
    pub fn status(&self) -> FrontStatus {
        if self.released {
            FrontStatus::Closed
        } else if self.ready {
            FrontStatus::Connected
        } else if self.dev.state() == XenbusState::Closing {
            FrontStatus::Closing
        } else {
            FrontStatus::Waiting
        }
    }

    /// Reacts to the backend's state (call at start and on every watch event): sets the
    /// ring up when the backend is ready, hands over its keys once it is Connected, follows
    /// it when it closes. An error has already started closing the device.
    pub fn step<S, O>(&mut self, s: &mut S, ops: &mut O) -> Result<FrontStatus, SplitError>
    where
        S: XsOps,
        O: FrontendOps<Page = M> + ?Sized,
    {
        if self.released {
            return Ok(FrontStatus::Closed);
        }
        self.dev.refresh_other(s);
        while let Some(step) = self.dev.next_step() {
            match step {
                Step::Connect if self.chan.is_none() => {
                    if let Err(e) = self.setup(s, ops) {
                        let _ = self.dev.switch(s, XenbusState::Closing);
                        return Err(e);
                    }
                }
                Step::Closed => {
                    self.release(s, ops);
                    let _ = self.dev.complete(s, step);
                    return Ok(FrontStatus::Closed);
                }
                _ => {}
            }
            if let Err(e) = self.dev.complete(s, step) {
                return Err(SplitError::Os(e));
            }
        }
        let both =
            self.dev.state() == XenbusState::Connected && self.dev.other_state() == XenbusState::Connected;
        if both && !self.ready {
            let other = self.dev.other_dir.clone();
            match self.driver.connected(&mut Keys::new(s, &other)) {
                Ok(()) => self.ready = true,
                Err(why) => {
                    let _ = self.dev.switch(s, XenbusState::Closing);
                    return Err(SplitError::Driver(why));
                }
            }
        }
        Ok(self.status())
    }

    /// Allocates, initialises and grants the ring pages, allocates the port and publishes
    /// them with the driver's keys; undoes whatever was done if a step fails.
    fn setup<S, O>(&mut self, s: &mut S, ops: &mut O) -> Result<(), SplitError>
    where
        S: XsOps,
        O: FrontendOps<Page = M> + ?Sized,
    {
        let mut rings: Vec<(M, GrantRef)> = Vec::with_capacity(D::RINGS.len().max(1));
        for _ in 0..D::RINGS.len().max(1) {
            let (page, mfn) = match ops.alloc_page() {
                Ok(p) => p,
                Err(e) => {
                    release_rings(ops, rings);
                    return Err(e.into());
                }
            };
            SharedRing::init(&page);
            match ops.grant(self.backend_id, mfn, false) {
                Ok(g) => rings.push((page, g)),
                Err(e) => {
                    ops.free_page(page);
                    release_rings(ops, rings);
                    return Err(e.into());
                }
            }
        }
        let port = match ops.alloc_unbound(self.backend_id) {
            Ok(p) => p,
            Err(e) => {
                release_rings(ops, rings);
                return Err(e.into());
            }
        };
        let other = self.dev.other_dir.clone();
        let grefs: Vec<GrantRef> = rings.iter().map(|r| r.1).collect();
        let names = if D::RINGS.is_empty() { ONE_RING } else { D::RINGS };
        let mut keys = ring_keys(names, &grefs, port);
        keys.extend(self.driver.publish(&mut Keys::new(s, &other)));
        let dir = self.dev.dir.clone();
        for (k, v) in &keys {
            if let Err(e) = s.write_node(&format!("{dir}/{k}"), v.as_bytes()) {
                ops.close(port);
                release_rings(ops, rings);
                return Err(e.into());
            }
        }
        let mut rings = rings.into_iter();
        let Some((mem, gref)) = rings.next() else { return Err(SplitError::Os(Errno::EINVAL)) };
        let (extra, extra_grefs) = rings.unzip();
        self.chan =
            Some(FrontChannel { mem, ring: FrontRing::new(), extra, port, gref, extra_grefs, broken: false });
        Ok(())
    }

    /// Starts closing: publishes Closing. [`step`](Self::step) finishes once the backend
    /// follows (it unmaps the ring before it publishes Closing).
    pub fn close<S: XsOps>(&mut self, s: &mut S) {
        if !self.released {
            let _ = self.dev.switch(s, XenbusState::Closing);
        }
    }

    /// Ends the device whatever the backend does (it is gone, or did not follow in time):
    /// publishes Closed and releases everything. A ring grant the backend still maps is
    /// kept (see [`leaked`](Self::leaked)).
    pub fn abandon<S, O>(&mut self, s: &mut S, ops: &mut O)
    where
        S: XsOps,
        O: FrontendOps<Page = M> + ?Sized,
    {
        if !self.released {
            let _ = self.dev.switch(s, XenbusState::Closed);
            self.release(s, ops);
        }
    }

    /// Closes the port, revokes the ring grants and frees the pages, and stops watching.
    fn release<S, O>(&mut self, s: &mut S, ops: &mut O)
    where
        S: XsOps,
        O: FrontendOps<Page = M> + ?Sized,
    {
        self.released = true;
        self.ready = false;
        let _ = s.unwatch(&self.dev.other_state_path(), &self.token());
        let Some(c) = self.chan.take() else { return };
        ops.close(c.port);
        let rings = core::iter::once((c.mem, c.gref)).chain(c.extra.into_iter().zip(c.extra_grefs));
        for (mem, gref) in rings {
            match ops.end_grant(gref) {
                Ok(()) => ops.free_page(mem),
                // Still mapped by the backend: the page cannot be reused, ever (it is not freed).
                Err(Errno::EBUSY) | Err(_) => {
                    self.leaked.get_or_insert(gref);
                    core::mem::forget(mem);
                }
            }
        }
    }
}

/// Revokes and frees ring pages that were never published (so never mapped).
fn release_rings<M, O: FrontendOps<Page = M> + ?Sized>(ops: &mut O, rings: Vec<(M, GrantRef)>) {
    for (page, gref) in rings {
        // Never published, so never mapped: the revocation cannot fail.
        let _ = ops.end_grant(gref);
        ops.free_page(page);
    }
}
