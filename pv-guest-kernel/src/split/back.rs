//! The backend half of a split device: announces the driver's features, follows the
//! frontend through the XenBus handshake, and when the frontend has published its rings
//! parses their grant references (`ring-ref`, or the driver's [`BackendDriver::RINGS`]),
//! `event-channel` and `protocol` strictly, maps the rings, binds the port and lets the
//! driver build its connection around the mapped rings. Serving is the driver's
//! ([`BackendDriver::service`]); [`BackChannel`] is the serve loop most drivers need.
//!
//! Teardown is the framework's: when the frontend closes, breaks the ring or its domain
//! goes away, the driver stops taking requests, work it has in flight finishes (the ring
//! and the frontend's pages stay mapped until then), then the port is closed and the ring
//! unmapped — and only after that does the backend publish Closing, so a frontend that sees
//! it may revoke the ring grant at once.

use super::{
    parse_ring_keys, parse_ring_page_order, parse_ring_ref, BackendOps, Keys, SplitError, Store, XsOps,
    ONE_RING,
};
use crate::xenbus::state::{Role, Step, XenbusDevice};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hypercall_abi::io::ring::{BackRing, RingEntry, RingError, RingMemory};
use hypercall_abi::io::xenbus::XenbusState;
use hypercall_abi::{DomId, Port};

/// What one service round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// The frontend asked to be notified of the responses published: the framework sends
    /// the event.
    pub notify: bool,
    /// Work is left (a budget ran out, or the device may take more): service again soon.
    pub more: bool,
    /// Requests taken and responses published.
    pub taken: u32,
    pub answered: u32,
    /// Let the frontend run now (after the notification): it can refill the ring while the
    /// device still works on the rest. Only meaningful with `more`.
    pub yield_now: bool,
}

/// What a backend driver provides: its features, what it makes of a new connection, and
/// how it serves one. `M` is a mapped ring ([`BackendOps::Mapping`]).
pub trait BackendDriver<M: RingMemory> {
    /// Per-connection state, built around the mapped rings (which it owns until
    /// [`disconnect`](Self::disconnect) gives them back).
    type Conn;
    /// The xenstore keys under which the frontend publishes its rings' grant references, in
    /// the order [`connect`](Self::connect) receives the rings mapped: one `ring-ref` for
    /// most devices, `tx-ring-ref` and `rx-ring-ref` for netif. All share one event channel.
    const RINGS: &'static [&'static str] = ONE_RING;
    /// Keys published at InitWait, before the frontend sets its side up.
    fn features(&mut self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// The largest `ring-page-order` accepted (the driver advertises it, as blkif's
    /// `max-ring-page-order`, in its [`features`](Self::features)). With a frontend's
    /// `ring-page-order` n > 0, a single-ring driver's [`connect`](Self::connect) receives the
    /// `2^n` pages `ring-ref0`, `ring-ref1`, ... mapped, in that order.
    fn max_ring_page_order(&self) -> u32 {
        0
    }
    /// The frontend published its rings, now mapped as `rings` (one per [`RINGS`](Self::RINGS)
    /// key, in that order): check its other keys and build the connection, with the keys to
    /// publish at Connected. On refusal, hand the rings back.
    #[allow(clippy::type_complexity)]
    fn connect<S: Store + ?Sized>(
        &mut self,
        frontend: DomId,
        rings: Vec<M>,
        keys: &mut Keys<'_, S>,
    ) -> Result<(Self::Conn, Vec<(&'static str, String)>), (Vec<M>, &'static str)>;
    /// Takes requests (copied out of the ring) and answers them.
    fn service(&mut self, conn: &mut Self::Conn) -> Served;
    /// Stops taking requests: the frontend is leaving or broke the ring.
    fn close(&mut self, _conn: &mut Self::Conn) {}
    /// Nothing is in flight any more: the ring and the frontend's pages may be released.
    fn quiescent(&self, _conn: &Self::Conn) -> bool {
        true
    }
    /// Why the ring was given up, if it was.
    fn broken(&self, conn: &Self::Conn) -> Option<RingError>;
    /// The connection is over: hand the rings back to be unmapped.
    fn disconnect(&mut self, conn: Self::Conn) -> Vec<M>;
}

/// Things worth a log line, in the order they happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    Connected {
        port: Port,
    },
    ConnectFailed(SplitError),
    /// The frontend broke the ring; the connection is being closed.
    Broken(RingError),
    /// The rings were released (`unmapped`: every unmap succeeded).
    Disconnected {
        unmapped: bool,
    },
}

struct Live<C> {
    conn: C,
    port: Port,
}

/// One backend device.
pub struct BackDevice<M: RingMemory, D: BackendDriver<M>> {
    pub dev: XenbusDevice,
    pub frontend: DomId,
    pub driver: D,
    token: String,
    live: Option<Live<D::Conn>>,
    /// Closing: no new connection, teardown once quiescent.
    leaving: bool,
    /// The frontend's domain is gone: nothing more is written or watched.
    gone: bool,
    notices: Vec<Notice>,
    _ring: core::marker::PhantomData<fn() -> M>,
}

impl<M: RingMemory, D: BackendDriver<M>> core::fmt::Debug for BackDevice<M, D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BackDevice").field("dev", &self.dev).field("leaving", &self.leaving).finish()
    }
}

impl<M: RingMemory, D: BackendDriver<M>> BackDevice<M, D> {
    /// The backend of `frontend` in `dir`, whose frontend is `frontend_dir` (both written by
    /// the toolstack). `token` names the watch on the frontend's state.
    pub fn new(frontend: DomId, dir: &str, frontend_dir: &str, token: &str, driver: D) -> Self {
        BackDevice {
            dev: XenbusDevice::new(Role::Backend, dir, frontend_dir),
            frontend,
            driver,
            token: String::from(token),
            live: None,
            leaving: false,
            gone: false,
            notices: Vec::new(),
            _ring: core::marker::PhantomData,
        }
    }

    /// Announces the device (features, InitWait), watches the frontend's state and reacts to
    /// what it already shows.
    pub fn start<S, O>(&mut self, s: &mut S, ops: &mut O)
    where
        S: XsOps,
        O: BackendOps<Mapping = M> + ?Sized,
    {
        self.dev.load(s);
        let dir = self.dev.dir.clone();
        for (k, v) in self.driver.features() {
            let _ = s.write_node(&format!("{dir}/{k}"), v.as_bytes());
        }
        let _ = s.watch(&self.dev.other_state_path(), &self.token);
        self.on_watch(s, ops);
    }

    /// The watch token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The connection's port, while connected.
    pub fn port(&self) -> Option<Port> {
        self.live.as_ref().map(|l| l.port)
    }

    /// The driver's connection, while connected.
    pub fn conn(&self) -> Option<&D::Conn> {
        self.live.as_ref().map(|l| &l.conn)
    }

    /// The driver's connection, mutably (for glue that feeds it completions).
    pub fn conn_mut(&mut self) -> Option<&mut D::Conn> {
        self.live.as_mut().map(|l| &mut l.conn)
    }

    /// True once the frontend's domain is gone and everything is released: drop the device.
    pub fn is_dead(&self) -> bool {
        self.gone && self.live.is_none()
    }

    /// What happened since the last call.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        core::mem::take(&mut self.notices)
    }

    /// Follows the frontend's state (call on every watch event of [`token`](Self::token)).
    pub fn on_watch<S, O>(&mut self, s: &mut S, ops: &mut O)
    where
        S: XsOps,
        O: BackendOps<Mapping = M> + ?Sized,
    {
        if self.gone {
            return;
        }
        self.dev.refresh_other(s);
        while let Some(step) = self.dev.next_step() {
            match step {
                Step::Announce => {}
                Step::Connect if self.live.is_none() && !self.leaving => match self.connect(s, ops) {
                    Ok(port) => self.notices.push(Notice::Connected { port }),
                    Err(e) => {
                        self.notices.push(Notice::ConnectFailed(e));
                        let why = format!("{e}");
                        let _ = s.write_node(&format!("{}/error", self.dev.dir), why.as_bytes());
                        self.leaving = true;
                        let _ = self.dev.switch(s, XenbusState::Closing);
                        break;
                    }
                },
                Step::Connect => {}
                Step::Close | Step::Closed => {
                    self.leaving = true;
                    if let Some(l) = self.live.as_mut() {
                        self.driver.close(&mut l.conn);
                        if !self.driver.quiescent(&l.conn) {
                            // The rest happens in `service` once the work is done.
                            break;
                        }
                    }
                    self.teardown(ops);
                }
            }
            if self.dev.complete(s, step).is_err() {
                break;
            }
        }
    }

    /// Maps the rings, binds the port and lets the driver connect.
    fn connect<S, O>(&mut self, s: &mut S, ops: &mut O) -> Result<Port, SplitError>
    where
        S: XsOps,
        O: BackendOps<Mapping = M> + ?Sized,
    {
        let fdir = self.dev.other_dir.clone();
        let mut keys = Keys::new(s, &fdir);
        let first = D::RINGS.first().copied().unwrap_or(ONE_RING[0]);
        let order = keys.raw("ring-page-order");
        let max_order = if D::RINGS.len() == 1 { self.driver.max_ring_page_order() } else { 0 };
        let order = parse_ring_page_order(order.as_deref(), max_order).map_err(SplitError::Keys)?;
        // A multi-page ring's pages are `ring-ref0`, `ring-ref1`, ... (blkif.h).
        let first = if order > 0 { String::from("ring-ref0") } else { String::from(first) };
        let (rr, ec, proto) = (keys.raw(&first), keys.raw("event-channel"), keys.raw("protocol"));
        let rk = parse_ring_keys(rr.as_deref(), ec.as_deref(), proto.as_deref(), None)
            .map_err(SplitError::Keys)?;
        let mut grefs = alloc::vec![rk.ring_ref];
        for i in 1..1u32 << order {
            grefs.push(
                parse_ring_ref(keys.raw(&format!("ring-ref{i}")).as_deref()).map_err(SplitError::Keys)?,
            );
        }
        for k in D::RINGS.iter().skip(1) {
            grefs.push(parse_ring_ref(keys.raw(k).as_deref()).map_err(SplitError::Keys)?);
        }
        let mut rings = Vec::with_capacity(grefs.len());
        for g in grefs {
            match ops.map_ring(self.frontend, g) {
                Ok(m) => rings.push(m),
                Err(e) => {
                    unmap_all(ops, rings);
                    return Err(e.into());
                }
            }
        }
        let port = match ops.bind_interdomain(self.frontend, rk.port) {
            Ok(p) => p,
            Err(e) => {
                unmap_all(ops, rings);
                return Err(e.into());
            }
        };
        let (conn, publish) = match self.driver.connect(self.frontend, rings, &mut keys) {
            Ok(c) => c,
            Err((rings, why)) => {
                ops.close(port);
                unmap_all(ops, rings);
                return Err(SplitError::Driver(why));
            }
        };
        self.live = Some(Live { conn, port });
        let dir = self.dev.dir.clone();
        for (k, v) in publish {
            if let Err(e) = s.write_node(&format!("{dir}/{k}"), v.as_bytes()) {
                self.teardown(ops);
                return Err(e.into());
            }
        }
        Ok(port)
    }

    /// Serves the ring (call when its port fired, or when the driver said there is more);
    /// notifies the frontend if it asked, closes a broken connection, and finishes a close
    /// that waited for work in flight.
    pub fn service<S, O>(&mut self, s: &mut S, ops: &mut O) -> Served
    where
        S: XsOps,
        O: BackendOps<Mapping = M> + ?Sized,
    {
        let Some(l) = self.live.as_mut() else { return Served::default() };
        let served = self.driver.service(&mut l.conn);
        if served.notify {
            ops.notify(l.port);
        }
        if let Some(e) = self.driver.broken(&l.conn) {
            if !self.leaving {
                self.notices.push(Notice::Broken(e));
                self.leaving = true;
                self.driver.close(&mut l.conn);
                if !self.gone {
                    let _ = self.dev.switch(s, XenbusState::Closing);
                }
            }
        }
        if self.leaving && self.driver.quiescent(&l.conn) {
            self.teardown(ops);
            if !self.gone {
                // Finish a close that waited for the work in flight.
                self.on_watch(s, ops);
            }
        }
        served
    }

    /// The frontend's domain went away: stop taking requests and release everything once
    /// the work in flight is done (its pages stay mapped until then).
    pub fn peer_gone<S, O>(&mut self, s: &mut S, ops: &mut O)
    where
        S: XsOps,
        O: BackendOps<Mapping = M> + ?Sized,
    {
        if self.gone {
            return;
        }
        self.gone = true;
        self.leaving = true;
        let _ = s.unwatch(&self.dev.other_state_path(), &self.token);
        if let Some(l) = self.live.as_mut() {
            self.driver.close(&mut l.conn);
            if self.driver.quiescent(&l.conn) {
                self.teardown(ops);
            }
        }
    }

    /// Stops serving for good (dom0 is shutting the device down): as [`peer_gone`], and
    /// the backend publishes Closed.
    ///
    /// [`peer_gone`]: Self::peer_gone
    pub fn shut<S, O>(&mut self, s: &mut S, ops: &mut O)
    where
        S: XsOps,
        O: BackendOps<Mapping = M> + ?Sized,
    {
        if !self.gone {
            let _ = self.dev.switch(s, XenbusState::Closing);
        }
        self.peer_gone(s, ops);
    }

    fn teardown<O: BackendOps<Mapping = M> + ?Sized>(&mut self, ops: &mut O) {
        let Some(l) = self.live.take() else { return };
        let rings = self.driver.disconnect(l.conn);
        ops.close(l.port);
        let unmapped = unmap_all(ops, rings);
        self.notices.push(Notice::Disconnected { unmapped });
    }
}

/// Unmaps every ring; true if every unmap succeeded.
fn unmap_all<O: BackendOps + ?Sized>(ops: &mut O, rings: Vec<O::Mapping>) -> bool {
    // Every ring, even after a failure.
    let mut all = true;
    for r in rings {
        all &= ops.unmap_ring(r).is_ok();
    }
    all
}

/// The one ring of a single-ring driver's [`BackendDriver::connect`] (the framework maps
/// exactly as many rings as [`BackendDriver::RINGS`] names); the rings back if not one.
pub fn one_ring<M>(mut rings: Vec<M>) -> Result<M, Vec<M>> {
    match (rings.pop(), rings.is_empty()) {
        (Some(r), true) => Ok(r),
        (r, _) => {
            rings.extend(r);
            Err(rings)
        }
    }
}

/// The backend's end of a ring for drivers that answer each request as they take it:
/// copy-in, the driver's handler, the response, and the notification hold-off.
pub struct BackChannel<M, Req, Rsp> {
    pub mem: M,
    pub ring: BackRing<Req, Rsp>,
    broken: Option<RingError>,
    closing: bool,
}

impl<M, Req, Rsp> core::fmt::Debug for BackChannel<M, Req, Rsp> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BackChannel").field("broken", &self.broken).finish()
    }
}

impl<M: RingMemory, Req: RingEntry, Rsp: RingEntry> BackChannel<M, Req, Rsp> {
    /// A one-page ring just mapped (its indexes as the frontend initialised them).
    pub fn new(mem: M) -> Self {
        BackChannel { mem, ring: BackRing::new(), broken: None, closing: false }
    }

    /// Takes up to `budget` requests, answering each with `handle(copy)` in its slot, then
    /// publishes the responses. When the ring is empty the backend re-arms `req_event` and
    /// checks again (`RING_FINAL_CHECK_FOR_REQUESTS`), so the frontend's next request
    /// notifies. A frontend whose producer index runs more than a ring ahead breaks the
    /// channel ([`broken`](Self::broken)) and nothing more is read from it.
    pub fn serve(&mut self, budget: u32, mut handle: impl FnMut(&Req) -> Rsp) -> Served {
        let mut out = Served::default();
        if self.broken.is_some() || self.closing {
            return out;
        }
        while out.taken < budget {
            match self.ring.next_request(&self.mem) {
                Ok(Some(req)) => {
                    out.taken += 1;
                    let rsp = handle(&req);
                    // A request was just taken, so its slot is free for the answer.
                    if self.ring.push_response(&self.mem, &rsp).is_ok() {
                        out.answered += 1;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    self.broken = Some(e);
                    break;
                }
            }
        }
        out.more = out.taken == budget && self.broken.is_none();
        if out.answered > 0 {
            out.notify = self.ring.push_responses_and_check_notify(&self.mem);
        }
        out
    }

    /// Stops taking requests.
    pub fn close(&mut self) {
        self.closing = true;
    }

    pub fn broken(&self) -> Option<RingError> {
        self.broken
    }

    /// The ring memory, for unmapping.
    pub fn into_mem(self) -> M {
        self.mem
    }
}
