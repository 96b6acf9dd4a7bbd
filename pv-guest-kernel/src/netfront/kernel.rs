//! netfront on the real hypervisor: the connection (framework handshake, buffers granted,
//! receive buffers posted) and the [`smoltcp`] device over its two rings.

use super::{check_rx, check_tx, Protocol, Rx, Slots, MTU_FRAME, RX_BUFS, TX_BUFS};
use crate::mm::{self, Page};
use crate::split::kernel::{self as sk, KernelOps, OwnPage, PENDING};
use crate::split::{FrontChannel, FrontDevice, FrontendDriver, Keys, SplitError, Store};
use crate::xenbus::{Transport, TxId, Xenbus};
use crate::{events, gnttab, time};
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use hypercall_abi::io::netif::{
    self, keys, parse_mac, NetifRxFrontRing, NetifRxRequest, NetifTxRequest, NetifTxResponse, KIND,
};
use hypercall_abi::{Errno, GrantRef, PAGE_SIZE};
use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// The framework's channel of a netfront: the tx ring (the rx ring's page is its extra one).
pub type TxChannel = FrontChannel<OwnPage, NetifTxRequest, NetifTxResponse>;

/// Why the device could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetError {
    /// No `vif` device, or its backend never connected.
    NoDevice,
    /// The toolstack's `mac` is missing or malformed.
    NoMac,
    /// Setting up failed (xenstore, grants, events).
    Setup(Errno),
    /// The backend broke the protocol.
    Protocol(&'static str),
    /// No answer in time.
    Timeout,
}

impl core::fmt::Display for NetError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NetError::Setup(e) => write!(f, "set-up failed: {e}"),
            NetError::Protocol(why) => write!(f, "backend broke the protocol: {why}"),
            other => write!(f, "{other:?}"),
        }
    }
}

fn split_error(e: SplitError) -> NetError {
    match e {
        SplitError::Os(Errno::ETIMEDOUT) => NetError::Timeout,
        SplitError::Os(e) => NetError::Setup(e),
        _ => NetError::NoDevice,
    }
}

/// The frontend driver: asks for what this netfront does (copying receive, one slot per
/// frame both ways, no checksum offload) and requires `feature-rx-copy`.
#[derive(Debug, Default)]
pub struct NetFrontDriver;

impl FrontendDriver for NetFrontDriver {
    type Req = NetifTxRequest;
    type Rsp = NetifTxResponse;
    const RINGS: &'static [&'static str] = &netif::RINGS;

    fn publish<S: Store + ?Sized>(&mut self, _backend: &mut Keys<'_, S>) -> Vec<(&'static str, String)> {
        [
            (keys::REQUEST_RX_COPY, "1"),
            (keys::FEATURE_RX_NOTIFY, "1"),
            (keys::FEATURE_SG, "0"),
            // smoltcp checks every checksum itself and cannot take a blank one.
            (keys::FEATURE_NO_CSUM_OFFLOAD, "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k, String::from(v)))
        .collect()
    }

    fn connected<S: Store + ?Sized>(&mut self, backend: &mut Keys<'_, S>) -> Result<(), &'static str> {
        if !backend.flag(keys::FEATURE_RX_COPY) {
            return Err("backend does not offer feature-rx-copy");
        }
        Ok(())
    }
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetFrontStats {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames the backend answered with an error or dropped, or that had no buffer.
    pub tx_errors: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Buffers that came back empty.
    pub rx_errors: u64,
}

/// The transmit half: buffers and which are with the backend.
struct TxPart {
    pages: Vec<(Page, GrantRef)>,
    slots: Slots<TX_BUFS>,
    /// Where a frame goes that has no buffer (it is dropped, as a NIC would).
    spill: Vec<u8>,
    stats: NetFrontStats,
    dirty: bool,
}

/// The receive half: buffers, frames received and not consumed yet, buffers to re-post.
struct RxPart {
    pages: Vec<(Page, GrantRef)>,
    slots: Slots<RX_BUFS>,
    ready: VecDeque<(u16, u16, u16)>,
    repost: Vec<u16>,
    /// The receive counters (the transmit ones are the [`TxPart`]'s).
    stats: NetFrontStats,
}

/// A connected network device.
pub struct NetFront {
    dev: FrontDevice<OwnPage, NetFrontDriver>,
    /// The rx ring's indexes (its page is the framework's second ring).
    rx_ring: NetifRxFrontRing,
    tx: TxPart,
    rx: RxPart,
    /// This vif's address (the toolstack's `mac`).
    pub mac: [u8; 6],
    broken: Option<&'static str>,
}

/// How long the handshake waits for the backend.
const HANDSHAKE_NS: u64 = 10_000_000_000;

fn grant_pages(
    backend: hypercall_abi::DomId,
    n: usize,
    readonly: bool,
) -> Result<Vec<(Page, GrantRef)>, Errno> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let r = mm::alloc_page().and_then(|p| match gnttab::grant_access(backend, p.mfn, readonly) {
            Ok(g) => Ok((p, g)),
            Err(e) => {
                let _ = mm::free_page(p.pfn);
                Err(e)
            }
        });
        match r {
            Ok(pg) => out.push(pg),
            Err(e) => {
                release(&out);
                return Err(e);
            }
        }
    }
    Ok(out)
}

/// Revokes the buffers' grants (the backend only copies, so it holds none) and frees them; a
/// grant that cannot be revoked keeps its page.
fn release(pages: &[(Page, GrantRef)]) {
    for (p, g) in pages {
        if gnttab::end_access(*g).is_ok() {
            let _ = mm::free_page(p.pfn);
        }
    }
}

impl NetFront {
    /// Finds this domain's first `vif` (waiting up to `timeout_ns` for the toolstack to
    /// create it), connects it, grants its buffers and posts the receive ones.
    pub fn connect<T: Transport>(xb: &mut Xenbus<T>, timeout_ns: u64) -> Result<NetFront, NetError> {
        let dir = sk::find_device(xb, KIND, timeout_ns).map_err(split_error)?;
        let mac = xb
            .read_string(TxId::NONE, &alloc::format!("{dir}/mac"))
            .ok()
            .and_then(|m| parse_mac(&m))
            .ok_or(NetError::NoMac)?;
        let deadline = time::now_ns().saturating_add(HANDSHAKE_NS);
        let mut dev = sk::connect_frontend(xb, &dir, NetFrontDriver, deadline).map_err(split_error)?;
        let backend = dev.backend_id;
        let bufs =
            grant_pages(backend, TX_BUFS, true).and_then(|tx| match grant_pages(backend, RX_BUFS, false) {
                Ok(rx) => Ok((tx, rx)),
                Err(e) => {
                    release(&tx);
                    Err(e)
                }
            });
        let (tx_pages, rx_pages) = match bufs {
            Ok(b) => b,
            Err(e) => {
                let _ = sk::close_frontend(xb, &mut dev, HANDSHAKE_NS);
                return Err(NetError::Setup(e));
            }
        };
        let mut nf = NetFront {
            dev,
            rx_ring: NetifRxFrontRing::new(),
            tx: TxPart {
                pages: tx_pages,
                slots: Slots::default(),
                spill: alloc::vec![0; MTU_FRAME],
                stats: NetFrontStats::default(),
                dirty: false,
            },
            rx: RxPart {
                pages: rx_pages,
                slots: Slots::default(),
                ready: VecDeque::new(),
                repost: Vec::new(),
                stats: NetFrontStats::default(),
            },
            mac,
            broken: None,
        };
        // Every receive buffer goes to the backend (`flush` posts them).
        nf.rx.repost.extend(0..RX_BUFS as u16);
        nf.flush();
        Ok(nf)
    }

    /// The framework's channel (tx ring, rx ring page, port).
    fn chan(&mut self) -> Option<&mut TxChannel> {
        self.dev.channel()
    }

    /// Why the device stopped, if the backend broke the protocol.
    pub fn broken(&self) -> Option<&'static str> {
        self.broken
    }

    /// The counters.
    pub fn stats(&self) -> NetFrontStats {
        let (t, r) = (self.tx.stats, self.rx.stats);
        NetFrontStats { rx_packets: r.rx_packets, rx_bytes: r.rx_bytes, rx_errors: r.rx_errors, ..t }
    }

    fn fail(&mut self, p: Protocol) {
        self.broken.get_or_insert(p.0);
    }

    /// Takes every response off both rings: tx buffers come back, received frames queue up
    /// for the stack, empty rx buffers are re-posted.
    pub fn poll_rings(&mut self) {
        if self.broken.is_some() {
            return;
        }
        loop {
            let Some(c) = self.chan() else { return };
            let r = match c.take() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(_) => return self.fail(Protocol("tx response index out of range")),
            };
            match check_tx(&r, &mut self.tx.slots) {
                Ok(Some(false)) => self.tx.stats.tx_errors += 1,
                Ok(_) => {}
                Err(p) => return self.fail(p),
            }
        }
        loop {
            let Some(c) = self.dev.channel() else { return };
            let Some(mem) = c.extra.first() else { return };
            let r = match self.rx_ring.take_response(mem) {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(_) => return self.fail(Protocol("rx response index out of range")),
            };
            match check_rx(&r, &mut self.rx.slots) {
                Ok(Rx::Frame { id, offset, len, .. }) => self.rx.ready.push_back((id, offset, len)),
                Ok(Rx::Empty { id }) => {
                    self.rx.stats.rx_errors += 1;
                    self.rx.repost.push(id);
                }
                Err(p) => return self.fail(p),
            }
        }
    }

    /// Publishes what was queued (frames to send, buffers to re-post) and notifies the
    /// backend where it asked to be.
    pub fn flush(&mut self) {
        if self.broken.is_some() {
            return;
        }
        let mut notify = false;
        let dirty_tx = core::mem::take(&mut self.tx.dirty);
        let Some(c) = self.dev.channel() else { return };
        if dirty_tx {
            notify |= c.ring.push_requests_and_check_notify(&c.mem);
        }
        if !self.rx.repost.is_empty() {
            let Some(mem) = c.extra.first() else { return };
            for id in self.rx.repost.drain(..) {
                let req = NetifRxRequest { id, _pad: 0, gref: self.rx.pages[usize::from(id)].1 };
                if self.rx_ring.push_request(mem, &req).is_ok() {
                    let _ = self.rx.slots.repost(id);
                }
            }
            notify |= self.rx_ring.push_requests_and_check_notify(mem);
        }
        if notify {
            c.notify(&mut KernelOps);
        }
    }

    /// Blocks until the backend has something for us (or `deadline`, system time): arms
    /// both rings' response events first, so no notification is lost.
    pub fn wait(&mut self, deadline: Option<u64>) {
        if self.broken.is_some() || !self.rx.ready.is_empty() {
            return;
        }
        let Some(c) = self.dev.channel() else { return };
        let port = c.port();
        let Some(mem) = c.extra.first() else { return };
        let tx_ready = c.ring.final_check_for_responses(&c.mem).unwrap_or(true);
        let rx_ready = self.rx_ring.final_check_for_responses(mem).unwrap_or(true);
        if tx_ready || rx_ready {
            return;
        }
        let (rx_ring, ring) = (&self.rx_ring, &c.ring);
        let _ = events::block_until(
            || {
                PENDING.take(port)
                    || rx_ring.unconsumed_responses(mem).map_or(true, |n| n > 0)
                    || ring.unconsumed_responses(&c.mem).map_or(true, |n| n > 0)
            },
            deadline,
        );
    }

    /// Closes the device and frees its buffers.
    pub fn disconnect<T: Transport>(mut self, xb: &mut Xenbus<T>) -> Result<(), NetError> {
        let r = sk::close_frontend(xb, &mut self.dev, HANDSHAKE_NS);
        release(&self.tx.pages);
        release(&self.rx.pages);
        r.map_err(split_error)
    }

    /// The tx ring and its buffers' grants, for tests that play a misbehaving frontend.
    pub fn raw(&mut self) -> Option<(&mut TxChannel, Vec<GrantRef>)> {
        let grefs = self.tx.pages.iter().map(|p| p.1).collect();
        self.dev.channel().map(|c| (c, grefs))
    }

    /// The backend's domain.
    pub fn backend(&self) -> hypercall_abi::DomId {
        self.dev.backend_id
    }
}

/// A received frame handed to the stack.
pub struct NfRx<'a> {
    rx: &'a mut RxPart,
    id: u16,
    offset: u16,
    len: u16,
}

impl phy::RxToken for NfRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let (page, _) = &self.rx.pages[usize::from(self.id)];
        let (o, n) = (usize::from(self.offset), usize::from(self.len));
        // SAFETY: a page of ours in the direct map; the backend wrote it by grant copy before
        // it answered, and it is not posted again until after this read (`repost` below
        // takes effect at the next `flush`). `check_rx` bounded `o + n` by the page size.
        let data =
            unsafe { core::slice::from_raw_parts((page.va + o as u64) as *const u8, n.min(PAGE_SIZE - o)) };
        self.rx.stats.rx_packets += 1;
        self.rx.stats.rx_bytes += n as u64;
        let r = f(data);
        self.rx.repost.push(self.id);
        r
    }
}

/// A transmit buffer handed to the stack.
pub struct NfTx<'a> {
    tx: &'a mut TxPart,
    chan: Option<&'a mut TxChannel>,
}

impl phy::TxToken for NfTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let tx = self.tx;
        let id = match (len <= MTU_FRAME, self.chan.is_some()) {
            (true, true) => tx.slots.take(),
            _ => None,
        };
        let (Some(id), Some(chan)) = (id, self.chan) else {
            tx.stats.tx_errors += 1;
            let n = len.min(tx.spill.len());
            return f(&mut tx.spill[..n]);
        };
        let (page, gref) = &tx.pages[usize::from(id)];
        // SAFETY: a page of ours in the direct map, with no request in flight (its slot was
        // free), so the backend does not read it until the request below is published.
        let buf = unsafe { core::slice::from_raw_parts_mut(page.va as *mut u8, len) };
        let r = f(buf);
        let req = NetifTxRequest { gref: *gref, offset: 0, flags: 0, id, size: len as u16 };
        if chan.push(&req).is_ok() {
            tx.dirty = true;
            tx.stats.tx_packets += 1;
            tx.stats.tx_bytes += len as u64;
        } else {
            let _ = tx.slots.complete(id);
            tx.stats.tx_errors += 1;
        }
        r
    }
}

impl phy::Device for NetFront {
    type RxToken<'a> = NfRx<'a>;
    type TxToken<'a> = NfTx<'a>;

    fn receive(&mut self, _t: Instant) -> Option<(NfRx<'_>, NfTx<'_>)> {
        if self.rx.ready.is_empty() {
            self.poll_rings();
        }
        let (id, offset, len) = self.rx.ready.pop_front()?;
        let NetFront { dev, tx, rx, .. } = self;
        Some((NfRx { rx, id, offset, len }, NfTx { tx, chan: dev.channel() }))
    }

    fn transmit(&mut self, _t: Instant) -> Option<NfTx<'_>> {
        if self.broken.is_some() {
            return None;
        }
        if self.tx.slots.in_flight() >= TX_BUFS {
            self.poll_rings();
            if self.tx.slots.in_flight() >= TX_BUFS {
                return None;
            }
        }
        let NetFront { dev, tx, .. } = self;
        Some(NfTx { tx, chan: dev.channel() })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = MTU_FRAME;
        c.max_burst_size = Some(TX_BUFS);
        c.checksum = ChecksumCapabilities::default();
        c
    }
}

/// Runs a stack on netfront until `step` says it is done (true) or `deadline` (system time)
/// passes (false): polls the stack, lets `step` move its sockets, publishes what they queued,
/// and sleeps until the backend notifies or the stack's next timer.
pub fn drive(
    stack: &mut crate::net::Stack<NetFront>,
    deadline: u64,
    mut step: impl FnMut(&mut crate::net::Stack<NetFront>, u64) -> bool,
) -> bool {
    loop {
        let now = time::now_ns();
        stack.poll(now);
        if step(stack, now) {
            stack.poll(now);
            stack.dev.flush();
            return true;
        }
        stack.poll(now);
        stack.dev.flush();
        if now >= deadline || stack.dev.broken().is_some() {
            return false;
        }
        let wake = stack.delay_ns(now).map_or(deadline, |d| now.saturating_add(d).min(deadline));
        if wake > now {
            stack.dev.wait(Some(wake));
        }
    }
}
