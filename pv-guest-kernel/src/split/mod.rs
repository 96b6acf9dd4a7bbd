//! The split-driver framework: everything a Xen-style frontend/backend pair has in common, so
//! a driver writes only its protocol types (`hypercall_abi::io::<proto>`) and its handling.
//!
//! What the framework owns, for both ends (`docs/writing-a-split-driver.md` is the guide):
//! * the XenBus handshake ([`crate::xenbus::state`]'s policy, written once for both roles):
//!   the frontend grants a fresh page per ring, allocates an unbound port and publishes
//!   `ring-ref` (or the driver's ring keys, [`FrontendDriver::RINGS`]: netif has
//!   `tx-ring-ref` and `rx-ring-ref`), `event-channel` and `protocol`; the backend announces
//!   its features, reads and strictly parses those keys ([`parse_ring_keys`]), maps the
//!   rings, binds the port and publishes what its driver adds; each end follows the other's
//!   `state` through a watch;
//! * the ring ([`hypercall_abi::io::ring`]): every request is copied out of the shared page
//!   once before the driver sees it, notifications follow the `req_event`/`rsp_event`
//!   hold-off, and a peer that breaks the ring indexes is disconnected;
//! * teardown, on Closing/Closed from either side, a broken ring, or the peer's domain going
//!   away: the backend waits for its driver's work in flight, then unbinds and unmaps; the
//!   frontend closes its port, revokes the ring grant and frees the page (a grant the peer
//!   still maps is reported, never freed under it);
//! * dispatch: every port the framework binds raises a bit in a [`PortSet`], so a loop
//!   serving many devices looks only at the ones whose ports fired.
//!
//! A device whose ring is not the frontend's to grant (the console, whose page and port the
//! domain builder sets up) uses only the state walk, [`follow`].
//!
//! Everything here is pure logic over small traits — a xenstore ([`XsOps`]), event channels
//! ([`EventOps`]), ring pages and grants ([`FrontendOps`], [`BackendOps`]) — so the whole
//! handshake is tested on the host against models ([`model`], which drivers' own host tests
//! use too). The kernel implementation of the traits, and the blocking loops that wait for
//! the peer, are in `kernel`.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hypercall_abi::io::blkif::XEN_IO_PROTO_ABI_X86_64;
use hypercall_abi::io::ring::RingMemory;
use hypercall_abi::{DomId, Errno, GrantRef, Mfn, Port};

pub use crate::xenbus::state::Store;
use crate::xenbus::state::{Step, XenbusDevice};
use hypercall_abi::io::xenbus::XenbusState;

pub mod back;
pub mod front;
pub mod ports;

pub use back::{BackChannel, BackDevice, BackendDriver, Notice, Served};
pub use front::{FrontChannel, FrontDevice, FrontStatus, FrontendDriver};
pub use ports::PortSet;

#[cfg(any(test, feature = "test-doubles"))]
pub mod fuzz;
#[cfg(not(test))]
pub mod kernel;
#[cfg(any(test, feature = "test-doubles"))]
pub mod model;
#[cfg(test)]
mod tests;

/// Xenstore access the handshake needs: nodes plus watches on the other end's `state`.
pub trait XsOps: Store {
    fn watch(&mut self, path: &str, token: &str) -> Result<(), Errno>;
    fn unwatch(&mut self, path: &str, token: &str) -> Result<(), Errno>;
}

impl<T: crate::xenbus::Transport> XsOps for crate::xenbus::Xenbus<T> {
    fn watch(&mut self, path: &str, token: &str) -> Result<(), Errno> {
        crate::xenbus::Xenbus::watch(self, path, token)
    }
    fn unwatch(&mut self, path: &str, token: &str) -> Result<(), Errno> {
        crate::xenbus::Xenbus::unwatch(self, path, token)
    }
}

/// Event-channel operations of either end.
pub trait EventOps {
    /// A port of ours that `remote` may bind (`EVTCHNOP_alloc_unbound`), its events
    /// delivered to the framework's [`PortSet`].
    fn alloc_unbound(&mut self, remote: DomId) -> Result<Port, Errno>;
    /// A port of ours connected to `remote`'s `remote_port`, delivered like the above.
    fn bind_interdomain(&mut self, remote: DomId, remote_port: Port) -> Result<Port, Errno>;
    /// Notifies the other end of `port`.
    fn notify(&mut self, port: Port);
    /// Closes `port`.
    fn close(&mut self, port: Port);
}

/// What a frontend needs besides events: a private page for the ring, and grants.
pub trait FrontendOps: EventOps {
    /// A zeroed page of this domain, as ring memory, and its machine frame.
    type Page: RingMemory;
    fn alloc_page(&mut self) -> Result<(Self::Page, Mfn), Errno>;
    fn free_page(&mut self, page: Self::Page);
    /// Lets `to` map or copy `mfn`.
    fn grant(&mut self, to: DomId, mfn: Mfn, readonly: bool) -> Result<GrantRef, Errno>;
    /// Revokes a grant: `EBUSY` while the grantee still has it mapped (the frame must then
    /// not be reused).
    fn end_grant(&mut self, gref: GrantRef) -> Result<(), Errno>;
}

/// What a backend needs besides events: mapping the frontend's ring grant.
pub trait BackendOps: EventOps {
    /// The frontend's ring mapped read-write in this domain.
    type Mapping: RingMemory;
    fn map_ring(&mut self, frontend: DomId, gref: GrantRef) -> Result<Self::Mapping, Errno>;
    fn unmap_ring(&mut self, ring: Self::Mapping) -> Result<(), Errno>;
}

/// Reads the other end's keys (`<dir>/<key>`) for a driver, parsing as strictly as the
/// framework does: values are the peer's word.
pub struct Keys<'a, S: Store + ?Sized> {
    store: &'a mut S,
    dir: &'a str,
}

impl<'a, S: Store + ?Sized> Keys<'a, S> {
    pub fn new(store: &'a mut S, dir: &'a str) -> Self {
        Keys { store, dir }
    }
    /// The directory read.
    pub fn dir(&self) -> &str {
        self.dir
    }
    /// The raw value of `key`, if present.
    pub fn raw(&mut self, key: &str) -> Option<Vec<u8>> {
        self.store.read_node(&format!("{}/{key}", self.dir)).ok()
    }
    /// `key` as a plain decimal number ([`parse_decimal`]); `None` if absent or malformed.
    pub fn number(&mut self, key: &str) -> Option<u64> {
        self.raw(key).as_deref().and_then(parse_decimal)
    }
    /// A feature flag: true only for the value `1`.
    pub fn flag(&mut self, key: &str) -> bool {
        self.number(key) == Some(1)
    }
}

/// A decimal number without sign, spaces or anything else (xenstore values are not trusted
/// to be tidy), optionally NUL-terminated.
pub fn parse_decimal(v: &[u8]) -> Option<u64> {
    let v = v.strip_suffix(b"\0").unwrap_or(v);
    if v.is_empty() || v.len() > 20 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    core::str::from_utf8(v).ok()?.parse().ok()
}

/// The ring a frontend published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingKeys {
    pub ring_ref: GrantRef,
    pub port: Port,
}

/// Why a frontend's ring description was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// `ring-ref` missing or not a decimal number that fits.
    BadRingRef,
    /// `event-channel` missing or not a valid port number.
    BadEventChannel,
    /// A `protocol` other than the native x86_64 one.
    UnsupportedProtocol,
    /// `ring-page-order` not a number, or larger than the backend offered
    /// ([`BackendDriver::max_ring_page_order`]).
    MultiPageRing,
}

impl KeyError {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyError::BadRingRef => "bad ring-ref",
            KeyError::BadEventChannel => "bad event-channel",
            KeyError::UnsupportedProtocol => "unsupported protocol",
            KeyError::MultiPageRing => "ring-page-order larger than offered",
        }
    }
}

/// A ring grant reference node: a decimal that fits a `grant_ref_t`.
pub fn parse_ring_ref(v: Option<&[u8]>) -> Result<GrantRef, KeyError> {
    v.and_then(parse_decimal).and_then(|v| u32::try_from(v).ok()).map(GrantRef).ok_or(KeyError::BadRingRef)
}

/// A frontend's `ring-page-order` (`None`: absent, a one-page ring): a decimal no larger than
/// `max`.
pub fn parse_ring_page_order(v: Option<&[u8]>, max: u32) -> Result<u32, KeyError> {
    match v {
        None => Ok(0),
        Some(v) => match parse_decimal(v) {
            Some(n) if n <= u64::from(max) => Ok(n as u32),
            _ => Err(KeyError::MultiPageRing),
        },
    }
}

/// Checks a frontend's ring nodes (`None` = node absent). Only single-page rings and the
/// native protocol are accepted here; multi-page rings are [`parse_ring_page_order`]'s.
pub fn parse_ring_keys(
    ring_ref: Option<&[u8]>,
    event_channel: Option<&[u8]>,
    protocol: Option<&[u8]>,
    ring_page_order: Option<&[u8]>,
) -> Result<RingKeys, KeyError> {
    if let Some(order) = ring_page_order {
        if parse_decimal(order) != Some(0) {
            return Err(KeyError::MultiPageRing);
        }
    }
    let ring_ref = parse_ring_ref(ring_ref)?;
    let port = event_channel
        .and_then(parse_decimal)
        .and_then(|v| u32::try_from(v).ok())
        .filter(|&p| p != 0 && p < hypercall_abi::event_channel::EVTCHN_2L_NR_CHANNELS)
        .ok_or(KeyError::BadEventChannel)?;
    if let Some(p) = protocol {
        let p = p.strip_suffix(b"\0").unwrap_or(p);
        if p != XEN_IO_PROTO_ABI_X86_64.as_bytes() {
            return Err(KeyError::UnsupportedProtocol);
        }
    }
    Ok(RingKeys { ring_ref, port: Port(port) })
}

/// The ring keys of a device with one ring, the default of [`FrontendDriver::RINGS`] and
/// [`BackendDriver::RINGS`].
pub const ONE_RING: &[&str] = &["ring-ref"];

/// The keys a frontend publishes for its rings: each ring's grant under its key (`names[i]`
/// for `grefs[i]`), the port and the protocol.
pub fn ring_keys(names: &[&'static str], grefs: &[GrantRef], port: Port) -> Vec<(&'static str, String)> {
    let mut keys: Vec<(&'static str, String)> =
        names.iter().zip(grefs).map(|(k, g)| (*k, format!("{}", g.0))).collect();
    keys.push(("event-channel", format!("{}", port.0)));
    keys.push(("protocol", String::from(XEN_IO_PROTO_ABI_X86_64)));
    keys
}

/// Follows the other end for a device whose ring and port come from elsewhere (the console's
/// are set up by the domain builder), so the framework has nothing to map or bind: re-reads
/// the other end's state and takes every step the policy asks for, after `work(step)` agreed
/// (it does the step's work, or returns false to leave the state as it is). Returns the states
/// entered, or the step whose state could not be written.
pub fn follow<S: Store>(
    dev: &mut XenbusDevice,
    s: &mut S,
    mut work: impl FnMut(Step) -> bool,
) -> Result<Vec<XenbusState>, (Step, Errno)> {
    dev.refresh_other(s);
    let mut entered = Vec::new();
    while let Some(step) = dev.next_step() {
        if !work(step) {
            break;
        }
        entered.push(dev.complete(s, step).map_err(|e| (step, e))?);
        if step == Step::Closed {
            break;
        }
    }
    Ok(entered)
}

/// Why a handshake step failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitError {
    /// Our own directory is missing `backend`/`backend-id`, or they are malformed.
    NoDevice,
    /// The peer's keys were refused.
    Keys(KeyError),
    /// The driver refused the connection.
    Driver(&'static str),
    /// A hypercall or xenstore operation failed.
    Os(Errno),
    /// The peer went away (Closing/Closed) before the device connected.
    PeerClosed,
}

impl core::fmt::Display for SplitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SplitError::NoDevice => f.write_str("no such device"),
            SplitError::Keys(k) => f.write_str(k.as_str()),
            SplitError::Driver(why) => f.write_str(why),
            SplitError::Os(e) => write!(f, "{e}"),
            SplitError::PeerClosed => f.write_str("the other end closed"),
        }
    }
}

impl From<Errno> for SplitError {
    fn from(e: Errno) -> Self {
        SplitError::Os(e)
    }
}
