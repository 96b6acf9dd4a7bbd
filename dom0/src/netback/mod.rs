//! netback's engine: Xen's netif protocol (`hypercall_abi::io::netif`) between one frontend
//! and dom0's switch ([`crate::netswitch`]), on the split-driver framework (two rings,
//! `tx-ring-ref` and `rx-ring-ref`, one event channel).
//!
//! **Transmit** (frontend → switch): slots are copied out of the tx ring one at a time; a
//! packet is its first slot (whose `size` is the whole packet's), the extra-info slots its
//! `NETTXF_extra_info` announces, and the slots its `NETTXF_more_data` chain adds. The whole
//! packet is checked on those private copies (length within [`ETH_HLEN`]..=[`MAX_FRAME`],
//! at most [`MAX_TX_SLOTS`] data slots, fragment sizes adding up, each fragment inside its
//! page, no extra-info type we did not offer), then grant-copied (`GNTTABOP_copy`, one
//! hypercall for a round's packets) from the frontend's pages into one of dom0's packet
//! buffers, its checksum completed if it was sent blank ([`csum`]), and switched. Every slot
//! gets its response, in order: `OKAY`, `ERROR` (bad packet or a grant the hypervisor
//! refused), `DROPPED` (no buffer), or `NULL` for extra-info slots.
//!
//! **Receive** (switch → frontend): packets queued for this vif's port are grant-copied into
//! the pages the frontend posted on the rx ring (`feature-rx-copy`, as modern netback does),
//! one slot per packet (a frame fits a page), answered with its length or `ERROR`.
//!
//! **Hostile frontends.** Nothing is read twice from the shared pages. A ring whose producer
//! index runs ahead is closed ([`Vif::broken`]); everything else gets an error response and
//! the ring goes on: a packet chain longer than [`MAX_TX_SLOTS`] is answered `ERROR` slot by
//! slot until it ends, whatever its length. Work per round is bounded (a budget of packets
//! each way), the slots kept between rounds are bounded ([`MAX_TX_SLOTS`] + extra-info), and
//! the switch's queues bound what waits for a frontend that posts no buffers.

pub mod csum;
pub mod keys;
#[cfg(test)]
mod tests;

pub use keys::FrontFeatures;

use crate::netswitch::{BufId, Mac, PortId, Switch, BUF_SIZE, ETH_HLEN, HEADROOM, MAX_FRAME};
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use hypercall_abi::grant_table::{gntcopy, gntst, GnttabCopy, GnttabCopyPtr};
use hypercall_abi::io::netif;
use hypercall_abi::io::netif::{
    extra_flag, netif_rsp, netrxf, nettxf, NetifRxBackRing, NetifRxRequest, NetifRxResponse, NetifTxBackRing,
    NetifTxRequest, NetifTxResponse,
};
use hypercall_abi::io::ring::{RingError, RingMemory};
use hypercall_abi::{DomId, PAGE_SIZE};
use pv_guest_kernel::split::{BackendDriver, Keys, Served, Store};

/// Data slots a packet may use (`XEN_NETIF_NR_SLOTS_MIN`, what Linux's netback accepts).
pub const MAX_TX_SLOTS: usize = hypercall_abi::io::netif::XEN_NETIF_NR_SLOTS_MIN;
/// Extra-info slots a packet may carry (one per type there is).
pub const MAX_EXTRAS: usize = 4;
/// Packets taken from the tx ring per round.
pub const TX_BUDGET: usize = 64;
/// Packets delivered to the rx ring per round.
pub const RX_BUDGET: usize = 64;

/// What netback needs from the machine: grant copies and dom0's packet buffers.
pub trait NetIo {
    /// Performs `ops` (one `GNTTABOP_copy` batch), setting each op's `status`.
    fn grant_copy(&mut self, ops: &mut [GnttabCopy]);
    /// The machine frame holding buffer `b`, and the buffer's offset in it.
    fn buf_frame(&self, b: BufId) -> (u64, u16);
    /// Buffer `b`'s [`BUF_SIZE`] bytes.
    fn buf(&mut self, b: BufId) -> &mut [u8];
    /// The system time, for the switch's table.
    fn now_ns(&self) -> u64;
}

/// The switch and the machine, shared by every vif and the NIC.
pub struct Fabric<I> {
    pub sw: Switch,
    pub io: I,
}

impl<I: NetIo> Fabric<I> {
    /// Switches a frame that is in `buf` (`len` bytes from [`HEADROOM`]); consumes the
    /// caller's reference.
    pub fn ingress(&mut self, from: PortId, buf: BufId, len: usize, validated: bool) -> bool {
        let mut head = [0u8; 12];
        head.copy_from_slice(&self.io.buf(buf)[HEADROOM..HEADROOM + 12]);
        let now = self.io.now_ns();
        self.sw.ingress(from, buf, len, validated, &head, now).is_ok()
    }
}

/// Counters of one connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VifStats {
    /// Packets the frontend sent that were switched, and their bytes.
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Packets refused (malformed, bad grant, checksum not completable).
    pub tx_errors: u64,
    /// Packets dropped for want of a buffer or a place in a queue.
    pub tx_dropped: u64,
    /// Packets delivered to the frontend, and their bytes.
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Deliveries that failed (a bad receive grant).
    pub rx_errors: u64,
}

/// What one round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// The frontend asked to be notified of the responses published.
    pub notify: bool,
    /// A budget ran out: more work is waiting.
    pub more: bool,
    /// Packets waiting for this vif but no receive buffer posted (the frontend will notify
    /// when it posts one).
    pub rx_stalled: bool,
    pub tx_packets: u32,
    pub rx_packets: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotKind {
    Data,
    Extra,
}

/// How the packet being read goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// A first slot.
    First,
    /// An extra-info slot, then data if `more`.
    Extra { more: bool },
    /// A further data slot.
    Data,
}

/// Why a packet is refused (a response `ERROR` for each of its slots).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxFault {
    BadLength,
    TooManySlots,
    FragmentsOverflow,
    CrossesPage,
    UnsupportedExtra,
    Grant,
    Checksum,
}

/// One packet's plan in a tx round.
struct TxPlan {
    /// Its slots in `Vif::slots`.
    first_slot: usize,
    slots: usize,
    /// Its copy ops in `Vif::ops`.
    first_op: usize,
    ops: usize,
    buf: Option<BufId>,
    len: usize,
    fault: Option<TxFault>,
    csum_blank: bool,
    validated: bool,
}

/// A frontend's connection: its two rings, the packet being read, the counters.
pub struct Vif<M> {
    pub domid: DomId,
    pub port: PortId,
    pub mac: Mac,
    pub features: FrontFeatures,
    tx_mem: M,
    rx_mem: M,
    tx: NetifTxBackRing,
    rx: NetifRxBackRing,
    /// Slots of a packet whose chain has not ended yet (private copies), and how it goes on.
    partial: Vec<(NetifTxRequest, SlotKind)>,
    expect: Expect,
    /// The packet being read is over-long: its slots are answered `ERROR` as they come.
    discarding: bool,
    broken: Option<RingError>,
    closing: bool,
    pub stats: VifStats,
    /// Per-round scratch (kept to reuse the allocations).
    slots: Vec<(NetifTxRequest, SlotKind)>,
    plans: Vec<TxPlan>,
    ops: Vec<GnttabCopy>,
    rx_ids: Vec<(u16, BufId, u16, bool)>,
}

impl<M: RingMemory> Vif<M> {
    /// A connection over the frontend's two rings, just mapped.
    pub fn new(domid: DomId, port: PortId, mac: Mac, features: FrontFeatures, tx_mem: M, rx_mem: M) -> Self {
        Vif {
            domid,
            port,
            mac,
            features,
            tx_mem,
            rx_mem,
            tx: NetifTxBackRing::new(),
            rx: NetifRxBackRing::new(),
            partial: Vec::with_capacity(MAX_TX_SLOTS + MAX_EXTRAS),
            expect: Expect::First,
            discarding: false,
            broken: None,
            closing: false,
            stats: VifStats::default(),
            slots: Vec::new(),
            plans: Vec::new(),
            ops: Vec::new(),
            rx_ids: Vec::new(),
        }
    }

    /// Why the rings were given up, if they were.
    pub fn broken(&self) -> Option<RingError> {
        self.broken
    }

    /// Stops taking requests.
    pub fn close(&mut self) {
        self.closing = true;
    }

    /// The ring memory (tx, rx), for unmapping.
    pub fn into_rings(self) -> (M, M) {
        (self.tx_mem, self.rx_mem)
    }

    /// One round each way: packets the frontend sent, then packets waiting for it.
    pub fn service<I: NetIo>(&mut self, f: &mut Fabric<I>) -> Round {
        let mut r = Round::default();
        if self.broken.is_some() || self.closing {
            return r;
        }
        let tx_notify = self.tx_round(f, &mut r);
        let rx_notify = if self.broken.is_none() { self.rx_round(f, &mut r) } else { false };
        r.notify = tx_notify || rx_notify;
        r
    }

    /// Reads the next slot into the packet being assembled; true once a packet is complete
    /// in `partial`. Slots of an over-long chain are answered at once. `None`: the ring is
    /// empty and `req_event` re-armed.
    fn read_slot(&mut self) -> Result<Option<bool>, RingError> {
        let Some(req) = self.tx.next_request(&self.tx_mem)? else { return Ok(None) };
        let kind = match self.expect {
            Expect::First | Expect::Data => SlotKind::Data,
            Expect::Extra { .. } => SlotKind::Extra,
        };
        self.expect = match (self.expect, kind) {
            (Expect::First, _) if req.flags & nettxf::EXTRA_INFO != 0 => {
                Expect::Extra { more: req.flags & nettxf::MORE_DATA != 0 }
            }
            (Expect::Extra { more }, _) if req.as_extra_info().flags & extra_flag::MORE != 0 => {
                Expect::Extra { more }
            }
            (Expect::Extra { more: true }, _) => Expect::Data,
            (Expect::Extra { more: false }, _) => Expect::First,
            (_, _) if req.flags & nettxf::MORE_DATA != 0 => Expect::Data,
            _ => Expect::First,
        };
        let done = self.expect == Expect::First;
        if self.discarding {
            self.answer_tx(&req, kind, netif_rsp::ERROR);
            if done {
                self.discarding = false;
            }
            return Ok(Some(false));
        }
        self.partial.push((req, kind));
        if self.partial.len() > MAX_TX_SLOTS + MAX_EXTRAS && !done {
            // Longer than any packet may be: answer what was read and the rest as it comes.
            self.stats.tx_errors += 1;
            for (req, kind) in core::mem::take(&mut self.partial) {
                self.answer_tx(&req, kind, netif_rsp::ERROR);
            }
            self.discarding = true;
            return Ok(Some(false));
        }
        Ok(Some(done))
    }

    fn answer_tx(&mut self, req: &NetifTxRequest, kind: SlotKind, status: i16) {
        let rsp = match kind {
            SlotKind::Data => NetifTxResponse { id: req.id, status },
            SlotKind::Extra => NetifTxResponse { id: 0, status: netif_rsp::NULL },
        };
        // A slot was just taken for each answer, so the push cannot fail.
        let _ = self.tx.push_response(&self.tx_mem, &rsp);
    }

    /// Checks a complete packet's slots; the fragments to copy as (gref, offset, len).
    fn check(
        slots: &[(NetifTxRequest, SlotKind)],
        frags: &mut Vec<(NetifTxRequest, usize)>,
    ) -> Result<usize, TxFault> {
        frags.clear();
        let Some((first, _)) = slots.first() else { return Err(TxFault::BadLength) };
        let total = usize::from(first.size);
        if !(ETH_HLEN..=MAX_FRAME).contains(&total) {
            return Err(TxFault::BadLength);
        }
        // No extra-info type was offered (no GSO, no multicast control).
        if slots.iter().any(|s| s.1 == SlotKind::Extra) {
            return Err(TxFault::UnsupportedExtra);
        }
        let data: usize = slots.iter().filter(|s| s.1 == SlotKind::Data).count();
        if data > MAX_TX_SLOTS {
            return Err(TxFault::TooManySlots);
        }
        let rest: usize =
            slots.iter().skip(1).filter(|s| s.1 == SlotKind::Data).map(|s| usize::from(s.0.size)).sum();
        let first_len = total.checked_sub(rest).ok_or(TxFault::FragmentsOverflow)?;
        for (i, (s, _)) in slots.iter().filter(|s| s.1 == SlotKind::Data).enumerate() {
            let len = if i == 0 { first_len } else { usize::from(s.size) };
            if usize::from(s.offset) + len > PAGE_SIZE {
                return Err(TxFault::CrossesPage);
            }
            frags.push((*s, len));
        }
        Ok(total)
    }

    fn tx_round<I: NetIo>(&mut self, f: &mut Fabric<I>, r: &mut Round) -> bool {
        self.slots.clear();
        self.plans.clear();
        self.ops.clear();
        let mut frags = Vec::new();
        while self.plans.len() < TX_BUDGET {
            match self.read_slot() {
                Ok(Some(true)) => {}
                Ok(Some(false)) => continue,
                Ok(None) => break,
                Err(e) => {
                    self.broken = Some(e);
                    break;
                }
            }
            // A whole packet: plan its copy.
            let first_slot = self.slots.len();
            self.slots.append(&mut self.partial);
            let slots = self.slots.len() - first_slot;
            let first = self.slots[first_slot].0;
            let mut plan = TxPlan {
                first_slot,
                slots,
                first_op: self.ops.len(),
                ops: 0,
                buf: None,
                len: 0,
                fault: None,
                csum_blank: first.flags & nettxf::CSUM_BLANK != 0,
                validated: first.flags & (nettxf::CSUM_BLANK | nettxf::DATA_VALIDATED) != 0,
            };
            match Self::check(&self.slots[first_slot..], &mut frags) {
                Err(fault) => plan.fault = Some(fault),
                Ok(total) => {
                    plan.len = total;
                    plan.buf = f.sw.pool.alloc();
                    if let Some(b) = plan.buf {
                        let (mfn, off) = f.io.buf_frame(b);
                        let mut at = usize::from(off) + HEADROOM;
                        for &(s, len) in frags.iter().filter(|(_, len)| *len > 0) {
                            self.ops.push(GnttabCopy {
                                source: GnttabCopyPtr::gref(s.gref, self.domid, s.offset),
                                dest: GnttabCopyPtr::gmfn(mfn, DomId::SELF, at as u16),
                                len: len as u16,
                                flags: gntcopy::SOURCE_GREF,
                                ..Default::default()
                            });
                            at += len;
                        }
                        plan.ops = self.ops.len() - plan.first_op;
                    }
                }
            }
            self.plans.push(plan);
        }
        r.more = self.plans.len() >= TX_BUDGET;
        if !self.ops.is_empty() {
            f.io.grant_copy(&mut self.ops);
        }
        for i in 0..self.plans.len() {
            let p = &self.plans[i];
            let (first_slot, slots, buf, len, blank, validated) =
                (p.first_slot, p.slots, p.buf, p.len, p.csum_blank, p.validated);
            let mut fault = p.fault;
            if fault.is_none()
                && self.ops[p.first_op..p.first_op + p.ops].iter().any(|o| o.status != gntst::OKAY)
            {
                fault = Some(TxFault::Grant);
            }
            let status = match (fault, buf) {
                (Some(_), b) => {
                    if let Some(b) = b {
                        f.sw.pool.release(b);
                    }
                    self.stats.tx_errors += 1;
                    netif_rsp::ERROR
                }
                (None, None) => {
                    self.stats.tx_dropped += 1;
                    netif_rsp::DROPPED
                }
                (None, Some(b)) => self.switch(f, b, len, blank, validated),
            };
            for j in first_slot..first_slot + slots {
                let (req, kind) = self.slots[j];
                self.answer_tx(&req, kind, status);
            }
            r.tx_packets += 1;
        }
        self.tx.push_responses_and_check_notify(&self.tx_mem)
    }

    /// Completes the checksum if asked and hands the packet to the switch (consuming the
    /// buffer reference); the response status.
    fn switch<I: NetIo>(
        &mut self,
        f: &mut Fabric<I>,
        b: BufId,
        len: usize,
        blank: bool,
        validated: bool,
    ) -> i16 {
        if blank && csum::complete(&mut f.io.buf(b)[HEADROOM..HEADROOM + len]).is_err() {
            f.sw.pool.release(b);
            self.stats.tx_errors += 1;
            return netif_rsp::ERROR;
        }
        if f.ingress(self.port, b, len, validated) {
            self.stats.tx_packets += 1;
            self.stats.tx_bytes += len as u64;
        } else {
            // Switched nowhere (a spoofed source, every queue full): as on a wire, the
            // sender is told it went out; the drop is counted.
            self.stats.tx_dropped += 1;
        }
        netif_rsp::OKAY
    }

    fn rx_round<I: NetIo>(&mut self, f: &mut Fabric<I>, r: &mut Round) -> bool {
        self.ops.clear();
        self.rx_ids.clear();
        while self.rx_ids.len() < RX_BUDGET && f.sw.queued(self.port) > 0 {
            let req: NetifRxRequest = match self.rx.next_request(&self.rx_mem) {
                Ok(Some(req)) => req,
                Ok(None) => {
                    // The frontend notifies when it posts again (req_event re-armed).
                    r.rx_stalled = true;
                    break;
                }
                Err(e) => {
                    self.broken = Some(e);
                    break;
                }
            };
            let Some(p) = f.sw.pop(self.port) else { break };
            let (mfn, off) = f.io.buf_frame(p.buf);
            self.ops.push(GnttabCopy {
                source: GnttabCopyPtr::gmfn(mfn, DomId::SELF, off + HEADROOM as u16),
                dest: GnttabCopyPtr::gref(req.gref, self.domid, 0),
                len: p.len,
                flags: gntcopy::DEST_GREF,
                ..Default::default()
            });
            self.rx_ids.push((req.id, p.buf, p.len, p.validated));
        }
        r.more |= self.rx_ids.len() >= RX_BUDGET && f.sw.queued(self.port) > 0;
        if self.rx_ids.is_empty() {
            return false;
        }
        f.io.grant_copy(&mut self.ops);
        for i in 0..self.rx_ids.len() {
            let (id, buf, len, validated) = self.rx_ids[i];
            let ok = self.ops[i].status == gntst::OKAY;
            let rsp = if ok {
                self.stats.rx_packets += 1;
                self.stats.rx_bytes += u64::from(len);
                NetifRxResponse {
                    id,
                    offset: 0,
                    flags: if validated { netrxf::DATA_VALIDATED } else { 0 },
                    status: len as i16,
                }
            } else {
                self.stats.rx_errors += 1;
                NetifRxResponse { id, offset: 0, flags: 0, status: netif_rsp::ERROR }
            };
            // Each response answers the request just taken for it.
            let _ = self.rx.push_response(&self.rx_mem, &rsp);
            f.sw.pool.release(buf);
            r.rx_packets += 1;
        }
        self.rx.push_responses_and_check_notify(&self.rx_mem)
    }
}

/// `BUF_SIZE` is what a copy may reach in a buffer: a frame after the headroom.
const _: () = assert!(HEADROOM + MAX_FRAME <= BUF_SIZE && BUF_SIZE <= PAGE_SIZE);

/// The `vif` driver of one frontend on the split-driver framework: connects its two rings
/// to a port of the shared switch.
pub struct NetDriver<I> {
    pub fabric: Rc<RefCell<Fabric<I>>>,
    pub port: PortId,
    pub mac: Mac,
    /// Packets wait for the frontend but it has posted no buffer: no point serving it until
    /// its port fires.
    pub rx_stalled: bool,
    /// The last connection's counters, for its log line.
    pub last: Option<VifStats>,
}

impl<I: NetIo> NetDriver<I> {
    pub fn new(fabric: Rc<RefCell<Fabric<I>>>, port: PortId, mac: Mac) -> Self {
        NetDriver { fabric, port, mac, rx_stalled: false, last: None }
    }

    /// True if packets wait for a frontend that may take them.
    pub fn has_rx_work(&self) -> bool {
        !self.rx_stalled && self.fabric.borrow().sw.queued(self.port) > 0
    }
}

impl<M: RingMemory, I: NetIo> BackendDriver<M> for NetDriver<I> {
    type Conn = Vif<M>;
    const RINGS: &'static [&'static str] = &netif::RINGS;

    fn features(&mut self) -> Vec<(&'static str, String)> {
        keys::announce_keys()
    }

    fn connect<S: Store + ?Sized>(
        &mut self,
        frontend: DomId,
        rings: Vec<M>,
        keys: &mut Keys<'_, S>,
    ) -> Result<(Vif<M>, Vec<(&'static str, String)>), (Vec<M>, &'static str)> {
        let features = match keys::front_features(keys) {
            Ok(f) => f,
            Err(why) => return Err((rings, why)),
        };
        let mut it = rings.into_iter();
        let (Some(tx), Some(rx), None) = (it.next(), it.next(), it.next()) else {
            return Err((Vec::new(), "two rings expected"));
        };
        self.fabric.borrow_mut().sw.add_port(self.port, Some(self.mac));
        self.rx_stalled = false;
        Ok((Vif::new(frontend, self.port, self.mac, features, tx, rx), Vec::new()))
    }

    fn service(&mut self, c: &mut Vif<M>) -> Served {
        let r = c.service(&mut self.fabric.borrow_mut());
        self.rx_stalled = r.rx_stalled;
        Served {
            notify: r.notify,
            more: r.more,
            taken: r.tx_packets,
            answered: r.tx_packets + r.rx_packets,
            yield_now: false,
        }
    }

    fn close(&mut self, c: &mut Vif<M>) {
        c.close();
    }

    fn broken(&self, c: &Vif<M>) -> Option<RingError> {
        c.broken()
    }

    fn disconnect(&mut self, c: Vif<M>) -> Vec<M> {
        self.fabric.borrow_mut().sw.remove_port(self.port);
        self.last = Some(c.stats);
        let (tx, rx) = c.into_rings();
        alloc::vec![tx, rx]
    }
}
