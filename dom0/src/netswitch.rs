//! dom0's software switch: the Ethernet bridge that joins the NIC (the uplink), dom0's own
//! stack and every domU's vif, the part of Linux's bridge + netback that decides where a
//! frame goes. Pure bookkeeping — which packet buffer sits in which port's queue — so it is
//! host-tested; the bytes live in dom0's packet buffers ([`BufId`]) and move by grant copy
//! (netback) or DMA (virtio-net).
//!
//! * **Learning.** A frame's unicast source teaches the table which port that MAC sits
//!   behind (bounded table, least recently seen entry evicted, entries age out after
//!   [`AGE_NS`]). A vif's MAC is the toolstack's (`mac` in both xenstore directories) and is a
//!   fixed entry: a vif may only send from it, and no port may claim it (Xen's `vif-bridge`
//!   antispoof), so a domU can neither impersonate another nor poison the table.
//! * **Forwarding.** Unicast to a known MAC goes to its port only; broadcast, multicast and
//!   unknown unicast are flooded to every port but the one the frame came in on.
//! * **Queues.** Each port has a bounded queue of packets waiting for it (a vif's frontend
//!   posts receive buffers at its own pace, the NIC has a transmit queue of its own). A
//!   flooded frame sits in several queues at once: buffers are reference-counted, never
//!   copied. No source may hold more than [`SOURCE_SHARE`] of a queue, so one domU flooding
//!   leaves room for everyone else's traffic to the same port. A full queue drops.
//!
//! Nothing here grows with what a frontend sends: the table, each queue and the buffer pool
//! are bounded.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

/// An Ethernet address.
pub type Mac = [u8; 6];

/// Where a frame enters or leaves the switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortId(pub u16);

impl PortId {
    /// The NIC.
    pub const UPLINK: PortId = PortId(0);
    /// dom0's own network stack.
    pub const LOCAL: PortId = PortId(1);
    /// The vif of domain `domid` (domids are below 0x7ff0, so this never collides).
    pub const fn vif(domid: u16) -> PortId {
        PortId(domid.wrapping_add(0x8000))
    }
}

/// A packet buffer of dom0's pool (its bytes are the owner's business).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BufId(pub u16);

/// Bytes per packet buffer: half a page, so a buffer never crosses a page and one grant copy
/// moves a whole frame.
pub const BUF_SIZE: usize = 2048;
/// Room before the frame in every buffer: virtio-net's header (12 bytes with
/// `VIRTIO_F_VERSION_1`), so a buffer goes to the NIC as it is.
pub const HEADROOM: usize = 12;
/// Largest frame switched: 1500 bytes of payload, the Ethernet header and a VLAN tag.
pub const MAX_FRAME: usize = 1518;
/// Smallest frame: an Ethernet header.
pub const ETH_HLEN: usize = 14;
const _: () = assert!(HEADROOM + MAX_FRAME <= BUF_SIZE);

/// MAC table entries at most.
pub const TABLE_SIZE: usize = 256;
/// A learned entry not seen for this long is forgotten (Linux's bridge default, 300 s).
pub const AGE_NS: u64 = 300_000_000_000;
/// Packets a port's queue holds at most.
pub const QUEUE_CAP: usize = 256;
/// Packets one source may have waiting in one port's queue.
pub const SOURCE_SHARE: usize = QUEUE_CAP / 2;

/// The broadcast address.
pub const BROADCAST: Mac = [0xff; 6];

/// True for group (broadcast and multicast) addresses.
pub const fn is_group(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

/// A packet waiting in a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pkt {
    pub buf: BufId,
    /// Frame length (from [`HEADROOM`] in the buffer).
    pub len: u16,
    /// Where it came from.
    pub src: PortId,
    /// Its checksums are known good (dom0 completed them when a vif sent it with checksum
    /// offload): the receiving frontend may skip checking (`NETRXF_data_validated`).
    pub validated: bool,
}

/// Why a frame was not switched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Shorter than an Ethernet header or longer than [`MAX_FRAME`].
    BadLength,
    /// A vif sending from a MAC not its own, or a port claiming a vif's MAC.
    Spoofed,
    /// The source address is a group address.
    GroupSource,
    /// Unicast to the port it came from.
    Hairpin,
    /// Every queue it was for was full (or the source's share of it).
    QueueFull,
    /// It came from a port the switch does not know.
    UnknownPort,
}

/// Where a frame went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Queues it was placed in.
    pub queued: u16,
    /// Queues that were full.
    pub full: u16,
}

/// Counters of one port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames that came in from the port and were switched.
    pub rx: u64,
    pub rx_bytes: u64,
    /// Frames from the port dropped, by reason.
    pub spoofed: u64,
    pub malformed: u64,
    /// Frames for the port dropped because its queue (or the source's share) was full.
    pub full: u64,
    /// Frames taken out of the port's queue (delivered or dropped by its owner).
    pub tx: u64,
    pub tx_bytes: u64,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    mac: Mac,
    port: PortId,
    /// A vif's own address: neither learned nor aged, and only its port may use it.
    fixed: bool,
    seen: u64,
}

/// The MAC table.
#[derive(Debug, Default)]
pub struct MacTable {
    entries: Vec<Entry>,
}

/// What the table says of a source address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Ok,
    Spoofed,
}

impl MacTable {
    /// The port `mac` sits behind, if known and fresh at `now`.
    pub fn lookup(&self, mac: &Mac, now: u64) -> Option<PortId> {
        self.entries
            .iter()
            .find(|e| e.mac == *mac && (e.fixed || now.saturating_sub(e.seen) < AGE_NS))
            .map(|e| e.port)
    }

    /// Entries (learned and fixed).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn fix(&mut self, mac: Mac, port: PortId) {
        self.entries.retain(|e| e.mac != mac);
        self.entries.push(Entry { mac, port, fixed: true, seen: 0 });
    }

    fn forget_port(&mut self, port: PortId) {
        self.entries.retain(|e| e.port != port);
    }

    /// Learns `mac` behind `port` (or checks it against a fixed entry).
    fn learn(&mut self, mac: Mac, port: PortId, now: u64) -> Source {
        if let Some(e) = self.entries.iter_mut().find(|e| e.mac == mac) {
            if e.fixed {
                return if e.port == port { Source::Ok } else { Source::Spoofed };
            }
            e.port = port;
            e.seen = now;
            return Source::Ok;
        }
        if self.entries.len() >= TABLE_SIZE {
            // Evict the least recently seen learned entry (fixed ones stay); if all are fixed
            // there is nothing to learn into, and the frame is still switched (flooded).
            let oldest =
                self.entries.iter().enumerate().filter(|(_, e)| !e.fixed).min_by_key(|(_, e)| e.seen);
            match oldest.map(|(i, _)| i) {
                Some(i) => {
                    self.entries.swap_remove(i);
                }
                None => return Source::Ok,
            }
        }
        self.entries.push(Entry { mac, port, fixed: false, seen: now });
        Source::Ok
    }
}

/// Reference counts of the packet buffers, and the free list.
#[derive(Debug)]
pub struct Pool {
    refs: Vec<u16>,
    free: Vec<BufId>,
}

impl Pool {
    /// A pool of `n` buffers, all free.
    pub fn new(n: u16) -> Pool {
        Pool { refs: alloc::vec![0; usize::from(n)], free: (0..n).rev().map(BufId).collect() }
    }
    /// A free buffer, with one reference (the caller's).
    pub fn alloc(&mut self) -> Option<BufId> {
        let b = self.free.pop()?;
        self.refs[usize::from(b.0)] = 1;
        Some(b)
    }
    /// Drops one reference; the buffer is free again with the last.
    pub fn release(&mut self, b: BufId) {
        let Some(r) = self.refs.get_mut(usize::from(b.0)) else { return };
        match *r {
            0 => {}
            1 => {
                *r = 0;
                self.free.push(b);
            }
            _ => *r -= 1,
        }
    }
    fn retain(&mut self, b: BufId) {
        if let Some(r) = self.refs.get_mut(usize::from(b.0)) {
            *r += 1;
        }
    }
    /// Buffers free.
    pub fn free(&self) -> usize {
        self.free.len()
    }
    /// Buffers in all.
    pub fn size(&self) -> usize {
        self.refs.len()
    }
    /// References held on `b`.
    pub fn refs(&self, b: BufId) -> u16 {
        self.refs.get(usize::from(b.0)).copied().unwrap_or(0)
    }
}

#[derive(Debug, Default)]
struct Port {
    /// A vif's own address.
    mac: Option<Mac>,
    queue: VecDeque<Pkt>,
    stats: PortStats,
}

impl Port {
    fn queued_from(&self, src: PortId) -> usize {
        self.queue.iter().filter(|p| p.src == src).count()
    }
}

/// The switch: ports with their queues, the MAC table and the buffer pool.
#[derive(Debug)]
pub struct Switch {
    pub table: MacTable,
    pub pool: Pool,
    ports: BTreeMap<PortId, Port>,
    /// Destinations of the frame being switched (kept to reuse its allocation).
    scratch: Vec<PortId>,
}

impl Switch {
    /// A switch over a pool of `buffers` packet buffers, with no ports.
    pub fn new(buffers: u16) -> Switch {
        Switch {
            table: MacTable::default(),
            pool: Pool::new(buffers),
            ports: BTreeMap::new(),
            scratch: Vec::new(),
        }
    }

    /// Adds a port; a vif gives its MAC, which becomes a fixed table entry.
    pub fn add_port(&mut self, id: PortId, mac: Option<Mac>) {
        self.remove_port(id);
        if let Some(m) = mac {
            self.table.fix(m, id);
        }
        self.ports.insert(id, Port { mac, ..Port::default() });
    }

    /// Removes a port: its queue's buffers are released and its table entries forgotten.
    pub fn remove_port(&mut self, id: PortId) -> Option<PortStats> {
        let port = self.ports.remove(&id)?;
        for p in port.queue {
            self.pool.release(p.buf);
        }
        self.table.forget_port(id);
        Some(port.stats)
    }

    /// True if the port exists.
    pub fn has_port(&self, id: PortId) -> bool {
        self.ports.contains_key(&id)
    }

    /// The port's counters.
    pub fn stats(&self, id: PortId) -> Option<PortStats> {
        self.ports.get(&id).map(|p| p.stats)
    }

    /// Packets waiting for the port.
    pub fn queued(&self, id: PortId) -> usize {
        self.ports.get(&id).map_or(0, |p| p.queue.len())
    }

    /// The next packet waiting for `id`, taken out of its queue. The caller now holds its
    /// buffer reference and must [`release`](Pool::release) it when done.
    pub fn pop(&mut self, id: PortId) -> Option<Pkt> {
        let port = self.ports.get_mut(&id)?;
        let p = port.queue.pop_front()?;
        port.stats.tx += 1;
        port.stats.tx_bytes += u64::from(p.len);
        Some(p)
    }

    /// Puts a packet taken with [`pop`](Self::pop) back at the head of its queue (its owner
    /// could not deliver it yet).
    pub fn unpop(&mut self, id: PortId, p: Pkt) {
        match self.ports.get_mut(&id) {
            Some(port) => {
                port.stats.tx -= 1;
                port.stats.tx_bytes -= u64::from(p.len);
                port.queue.push_front(p);
            }
            None => self.pool.release(p.buf),
        }
    }

    /// Switches a frame that came in on `from`: `buf` holds it (`len` bytes from
    /// [`HEADROOM`]), the caller's reference is consumed, `head` is at least its first 12
    /// bytes (destination and source). The frame is queued for every port it goes to.
    pub fn ingress(
        &mut self,
        from: PortId,
        buf: BufId,
        len: usize,
        validated: bool,
        head: &[u8],
        now: u64,
    ) -> Result<Delivery, Dropped> {
        let r = self.route(from, buf, len, validated, head, now);
        // The caller's reference: each queue took its own.
        self.pool.release(buf);
        if let Some(port) = self.ports.get_mut(&from) {
            match r {
                Ok(_) | Err(Dropped::QueueFull) | Err(Dropped::Hairpin) => {
                    port.stats.rx += 1;
                    port.stats.rx_bytes += len as u64;
                }
                Err(Dropped::Spoofed) => port.stats.spoofed += 1,
                Err(_) => port.stats.malformed += 1,
            }
        }
        r
    }

    fn route(
        &mut self,
        from: PortId,
        buf: BufId,
        len: usize,
        validated: bool,
        head: &[u8],
        now: u64,
    ) -> Result<Delivery, Dropped> {
        let Some(port) = self.ports.get(&from) else { return Err(Dropped::UnknownPort) };
        if !(ETH_HLEN..=MAX_FRAME).contains(&len) || head.len() < 12 {
            return Err(Dropped::BadLength);
        }
        let mut dst: Mac = [0; 6];
        let mut src: Mac = [0; 6];
        dst.copy_from_slice(&head[0..6]);
        src.copy_from_slice(&head[6..12]);
        if is_group(&src) {
            return Err(Dropped::GroupSource);
        }
        if port.mac.is_some_and(|m| m != src) || self.table.learn(src, from, now) == Source::Spoofed {
            return Err(Dropped::Spoofed);
        }
        self.scratch.clear();
        match (is_group(&dst), self.table.lookup(&dst, now)) {
            (false, Some(to)) if to == from => return Err(Dropped::Hairpin),
            (false, Some(to)) => self.scratch.push(to),
            _ => self.scratch.extend(self.ports.keys().copied().filter(|p| *p != from)),
        }
        let pkt = Pkt { buf, len: len as u16, src: from, validated };
        let mut d = Delivery::default();
        for i in 0..self.scratch.len() {
            let to = self.scratch[i];
            let Some(port) = self.ports.get_mut(&to) else { continue };
            if port.queue.len() >= QUEUE_CAP || port.queued_from(from) >= SOURCE_SHARE {
                port.stats.full += 1;
                d.full += 1;
                continue;
            }
            port.queue.push_back(pkt);
            self.pool.retain(buf);
            d.queued += 1;
        }
        if d.queued == 0 && d.full > 0 {
            return Err(Dropped::QueueFull);
        }
        Ok(d)
    }
}

/// The MAC the toolstack gives domain `domid`'s vif `devid`: Xen's OUI (`00:16:3e`, what
/// libxl picks from) with the domain and device in the low bytes, so it is stable across
/// boots and unique per vif.
pub const fn vif_mac(domid: u16, devid: u8) -> Mac {
    let [hi, lo] = domid.to_be_bytes();
    [0x00, 0x16, 0x3e, hi & 0x7f, lo, devid]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: Mac = [0, 0x16, 0x3e, 0, 1, 0];
    const B: Mac = [0, 0x16, 0x3e, 0, 2, 0];
    const GW: Mac = [0x52, 0x55, 0x0a, 0, 2, 2];

    fn head(dst: Mac, src: Mac) -> [u8; 14] {
        let mut h = [0u8; 14];
        h[..6].copy_from_slice(&dst);
        h[6..12].copy_from_slice(&src);
        h[12..].copy_from_slice(&[0x08, 0x00]);
        h
    }

    fn sw() -> Switch {
        let mut s = Switch::new(64);
        s.add_port(PortId::UPLINK, None);
        s.add_port(PortId::vif(1), Some(A));
        s.add_port(PortId::vif(2), Some(B));
        s
    }

    fn send(s: &mut Switch, from: PortId, dst: Mac, src: Mac) -> Result<Delivery, Dropped> {
        let b = s.pool.alloc().unwrap();
        s.ingress(from, b, 60, false, &head(dst, src), 0)
    }

    fn drain(s: &mut Switch, p: PortId) -> usize {
        let mut n = 0;
        while let Some(pkt) = s.pop(p) {
            s.pool.release(pkt.buf);
            n += 1;
        }
        n
    }

    #[test]
    fn unknown_and_broadcast_flood_known_goes_to_one_port() {
        let mut s = sw();
        // The gateway is not known yet: flooded to both vifs.
        assert_eq!(send(&mut s, PortId::vif(1), GW, A), Ok(Delivery { queued: 2, full: 0 }));
        assert_eq!((s.queued(PortId::UPLINK), s.queued(PortId::vif(2))), (1, 1));
        // The gateway answers: learned behind the uplink, delivered to A only (A is fixed).
        assert_eq!(send(&mut s, PortId::UPLINK, A, GW), Ok(Delivery { queued: 1, full: 0 }));
        assert_eq!(s.queued(PortId::vif(1)), 1);
        assert_eq!(s.table.lookup(&GW, 0), Some(PortId::UPLINK));
        assert_eq!(send(&mut s, PortId::vif(2), GW, B), Ok(Delivery { queued: 1, full: 0 }));
        assert_eq!(s.queued(PortId::UPLINK), 2);
        assert_eq!(send(&mut s, PortId::vif(2), BROADCAST, B), Ok(Delivery { queued: 2, full: 0 }));
        // One buffer, referenced by both queues it sits in.
        let p = s.pop(PortId::vif(1)).unwrap();
        assert_eq!(p.src, PortId::UPLINK);
        s.pool.release(p.buf);
        let last = s.pop(PortId::vif(1)).unwrap();
        assert_eq!(s.pool.refs(last.buf), 2);
        s.pool.release(last.buf);
        for port in [PortId::UPLINK, PortId::vif(1), PortId::vif(2)] {
            drain(&mut s, port);
        }
        assert_eq!(s.pool.free(), 64, "every buffer came back");
    }

    #[test]
    fn vifs_cannot_spoof_or_claim_another_vifs_mac() {
        let mut s = sw();
        assert_eq!(send(&mut s, PortId::vif(1), BROADCAST, B), Err(Dropped::Spoofed), "B's MAC from A");
        assert_eq!(send(&mut s, PortId::vif(1), BROADCAST, GW), Err(Dropped::Spoofed), "any other MAC");
        assert_eq!(
            send(&mut s, PortId::UPLINK, BROADCAST, A),
            Err(Dropped::Spoofed),
            "a vif's MAC from outside"
        );
        assert_eq!(send(&mut s, PortId::UPLINK, BROADCAST, BROADCAST), Err(Dropped::GroupSource));
        assert_eq!(s.table.lookup(&A, 0), Some(PortId::vif(1)));
        assert_eq!(s.table.lookup(&GW, 0), None, "nothing learned from dropped frames");
        assert_eq!(s.stats(PortId::vif(1)).unwrap().spoofed, 2);
        assert_eq!(s.pool.free(), 64);
        // Unicast back to its own port is not reflected.
        send(&mut s, PortId::UPLINK, BROADCAST, GW).unwrap();
        assert_eq!(send(&mut s, PortId::UPLINK, GW, [2, 0, 0, 0, 0, 9]), Err(Dropped::Hairpin));
    }

    #[test]
    fn bad_lengths_and_unknown_ports_are_dropped() {
        let mut s = sw();
        for len in [0, 13, MAX_FRAME + 1, 65535] {
            let b = s.pool.alloc().unwrap();
            assert_eq!(s.ingress(PortId::vif(1), b, len, false, &head(GW, A), 0), Err(Dropped::BadLength));
        }
        let b = s.pool.alloc().unwrap();
        assert_eq!(s.ingress(PortId(77), b, 60, false, &head(GW, A), 0), Err(Dropped::UnknownPort));
        let b = s.pool.alloc().unwrap();
        assert_eq!(s.ingress(PortId::vif(1), b, 60, false, &[0; 11], 0), Err(Dropped::BadLength));
        assert_eq!(s.pool.free(), 64);
    }

    #[test]
    fn a_flooding_source_gets_half_a_queue_and_the_neighbour_still_gets_through() {
        let mut s = Switch::new(1024);
        s.add_port(PortId::UPLINK, None);
        s.add_port(PortId::vif(1), Some(A));
        s.add_port(PortId::vif(2), Some(B));
        // The gateway is known behind the uplink.
        send(&mut s, PortId::UPLINK, BROADCAST, GW).unwrap();
        drain(&mut s, PortId::vif(1));
        drain(&mut s, PortId::vif(2));
        for _ in 0..QUEUE_CAP {
            let _ = send(&mut s, PortId::vif(1), GW, A);
        }
        assert_eq!(s.queued(PortId::UPLINK), SOURCE_SHARE);
        assert_eq!(send(&mut s, PortId::vif(1), GW, A), Err(Dropped::QueueFull));
        assert_eq!(send(&mut s, PortId::vif(2), GW, B), Ok(Delivery { queued: 1, full: 0 }));
        assert_eq!(s.stats(PortId::UPLINK).unwrap().full, (QUEUE_CAP - SOURCE_SHARE + 1) as u64);
    }

    #[test]
    fn removing_a_port_releases_its_queue_and_entries() {
        let mut s = sw();
        send(&mut s, PortId::UPLINK, BROADCAST, GW).unwrap();
        assert_eq!(s.pool.free(), 63);
        let st = s.remove_port(PortId::vif(1)).unwrap();
        assert_eq!(st.tx, 0);
        assert_eq!(s.table.lookup(&A, 0), None);
        drain(&mut s, PortId::vif(2));
        assert_eq!(s.pool.free(), 64);
        // A frame for the removed vif's MAC is now unknown unicast: flooded to who is left.
        assert_eq!(send(&mut s, PortId::UPLINK, A, GW), Ok(Delivery { queued: 1, full: 0 }));
    }

    #[test]
    fn learned_entries_age_and_the_table_is_bounded() {
        let mut s = sw();
        let b = s.pool.alloc().unwrap();
        s.ingress(PortId::UPLINK, b, 60, false, &head(BROADCAST, GW), 5).unwrap();
        assert_eq!(s.table.lookup(&GW, 5 + AGE_NS - 1), Some(PortId::UPLINK));
        assert_eq!(s.table.lookup(&GW, 5 + AGE_NS), None);
        assert_eq!(s.table.lookup(&A, u64::MAX), Some(PortId::vif(1)), "fixed entries do not age");
        for port in [PortId::UPLINK, PortId::vif(1), PortId::vif(2)] {
            drain(&mut s, port);
        }
        for i in 0..(TABLE_SIZE as u32 + 50) {
            let [a, b, c, d] = i.to_be_bytes();
            let src = [2, 0, a, b, c, d];
            let buf = s.pool.alloc().unwrap();
            let _ = s.ingress(PortId::UPLINK, buf, 60, false, &head(A, src), u64::from(i) + 10);
            drain(&mut s, PortId::vif(1));
        }
        assert_eq!(s.table.len(), TABLE_SIZE);
        assert_eq!(s.table.lookup(&A, 0), Some(PortId::vif(1)), "fixed entries are never evicted");
        assert_eq!(s.table.lookup(&B, 0), Some(PortId::vif(2)));
    }

    #[test]
    fn vif_macs_are_unicast_and_distinct() {
        assert_eq!(vif_mac(3, 0), [0, 0x16, 0x3e, 0, 3, 0]);
        assert_ne!(vif_mac(0x1234, 7), vif_mac(0x1235, 7));
        assert!(!is_group(&vif_mac(0x7fff, 255)));
    }

    proptest! {
        /// Whatever frames arrive from whichever port, buffers are never lost or double-freed,
        /// no queue exceeds its bound, and a vif's queue only ever holds frames it may see.
        #[test]
        fn any_traffic_keeps_the_books_straight(
            frames in proptest::collection::vec((0u8..4, 0u8..5, 0u8..5, 0usize..1600, any::<bool>()), 0..600),
        ) {
            let macs = [A, B, GW, BROADCAST, [0x33, 0x33, 0, 0, 0, 1]];
            let ports = [PortId::UPLINK, PortId::vif(1), PortId::vif(2), PortId::LOCAL];
            let mut s = Switch::new(96);
            s.add_port(PortId::UPLINK, None);
            s.add_port(PortId::vif(1), Some(A));
            s.add_port(PortId::vif(2), Some(B));
            for (i, (from, d, sm, len, take)) in frames.into_iter().enumerate() {
                let from = ports[usize::from(from)];
                if take {
                    for p in ports {
                        if let Some(pkt) = s.pop(p) {
                            s.pool.release(pkt.buf);
                        }
                    }
                }
                let Some(b) = s.pool.alloc() else { continue };
                let r = s.ingress(from, b, len, false, &head(macs[usize::from(d)], macs[usize::from(sm)]), i as u64);
                if from == PortId::vif(1) && macs[usize::from(sm)] != A {
                    prop_assert!(r.is_err());
                }
                let in_queues: usize = ports.iter().map(|p| s.queued(*p)).sum();
                let held: usize = (0..96).map(|i| usize::from(s.pool.refs(BufId(i)))).sum();
                prop_assert_eq!(held, in_queues, "every reference is a queue entry");
                prop_assert_eq!(s.pool.free() + (0..96).filter(|i| s.pool.refs(BufId(*i)) > 0).count(), 96);
                for p in ports {
                    prop_assert!(s.queued(p) <= QUEUE_CAP);
                }
            }
            for p in ports {
                while let Some(pkt) = s.pop(p) {
                    s.pool.release(pkt.buf);
                }
            }
            prop_assert_eq!(s.pool.free(), 96);
        }
    }
}
