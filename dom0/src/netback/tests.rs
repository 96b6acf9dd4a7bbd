//! netback's engine on the host: frontends played over rings in `AtomicPage`s, a grant table
//! and dom0's packet buffers modelled in [`FakeIo`] (which checks every copy as the
//! hypervisor would), the real switch between them. Good traffic, each kind of hostile
//! request next to it, and property tests that throw arbitrary slots at the tx ring.

use super::*;
use crate::netswitch::{vif_mac, BUF_SIZE};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec;
use hypercall_abi::io::netif::{NetifRxFrontRing, NetifTxFrontRing};
use hypercall_abi::io::ring::{AtomicPage, REQ_PROD_OFFSET};
use hypercall_abi::GrantRef;
use proptest::prelude::*;

const BUFS: u16 = 256;
/// The fake machine frames of the packet buffers start here.
const BUF_MFN: u64 = 0x1000;

struct Grant {
    owner: DomId,
    page: Vec<u8>,
    readonly: bool,
}

/// Grants of the frontends (to dom0) and dom0's packet buffers.
struct FakeIo {
    grants: BTreeMap<(u16, u32), Grant>,
    bufs: Vec<[u8; BUF_SIZE]>,
    copies: u64,
    batches: u64,
    now: u64,
}

impl FakeIo {
    fn new() -> Self {
        FakeIo {
            grants: BTreeMap::new(),
            bufs: vec![[0; BUF_SIZE]; usize::from(BUFS)],
            copies: 0,
            batches: 0,
            now: 0,
        }
    }

    fn one(&mut self, op: &GnttabCopy) -> i16 {
        if !op.within_pages() {
            return gntst::BAD_COPY_ARG;
        }
        let (off, len) = (usize::from(op.source.offset), usize::from(op.len));
        // Read the source.
        let data: Vec<u8> = if op.flags & gntcopy::SOURCE_GREF != 0 {
            match self.grants.get(&(op.source.domid.0, op.source.as_gref().0)) {
                Some(g) if g.owner == op.source.domid => g.page[off..off + len].to_vec(),
                _ => return gntst::BAD_GNTREF,
            }
        } else {
            match self.buf_at(op.source.as_gmfn(), off, len) {
                Some((b, at)) => self.bufs[b][at..at + len].to_vec(),
                None => return gntst::BAD_COPY_ARG,
            }
        };
        let doff = usize::from(op.dest.offset);
        if op.flags & gntcopy::DEST_GREF != 0 {
            match self.grants.get_mut(&(op.dest.domid.0, op.dest.as_gref().0)) {
                Some(g) if !g.readonly => g.page[doff..doff + len].copy_from_slice(&data),
                Some(_) => return gntst::PERMISSION_DENIED,
                None => return gntst::BAD_GNTREF,
            }
        } else {
            match self.buf_at(op.dest.as_gmfn(), doff, len) {
                Some((b, at)) => self.bufs[b][at..at + len].copy_from_slice(&data),
                None => return gntst::BAD_COPY_ARG,
            }
        }
        gntst::OKAY
    }

    /// The buffer a (frame, offset, len) of dom0 falls in, and the offset in it; none if it
    /// is not a buffer or crosses one's end.
    fn buf_at(&self, mfn: u64, off: usize, len: usize) -> Option<(usize, usize)> {
        let page = mfn.checked_sub(BUF_MFN)? as usize;
        let b = page * 2 + off / BUF_SIZE;
        let at = off % BUF_SIZE;
        (b < self.bufs.len() && at + len <= BUF_SIZE).then_some((b, at))
    }
}

impl NetIo for FakeIo {
    fn grant_copy(&mut self, ops: &mut [GnttabCopy]) {
        self.batches += 1;
        for op in ops.iter_mut() {
            self.copies += 1;
            op.status = self.one(op);
        }
    }
    fn buf_frame(&self, b: BufId) -> (u64, u16) {
        (BUF_MFN + u64::from(b.0) / 2, (b.0 % 2) * BUF_SIZE as u16)
    }
    fn buf(&mut self, b: BufId) -> &mut [u8] {
        &mut self.bufs[usize::from(b.0)]
    }
    fn now_ns(&self) -> u64 {
        self.now
    }
}

/// A frontend played by the test: its rings and pages.
struct Front {
    dom: DomId,
    tx_page: &'static AtomicPage,
    rx_page: &'static AtomicPage,
    tx: NetifTxFrontRing,
    rx: NetifRxFrontRing,
    next_gref: u32,
}

type Fab = Fabric<FakeIo>;

fn page() -> &'static AtomicPage {
    Box::leak(Box::new(AtomicPage::new()))
}

impl Front {
    fn new(f: &mut Fab, dom: u16) -> (Front, Vif<&'static AtomicPage>) {
        let (tx_page, rx_page) = (page(), page());
        let front = Front {
            dom: DomId(dom),
            tx_page,
            rx_page,
            tx: NetifTxFrontRing::init(tx_page),
            rx: NetifRxFrontRing::init(rx_page),
            next_gref: 100,
        };
        let port = PortId::vif(dom);
        let mac = vif_mac(dom, 0);
        f.sw.add_port(port, Some(mac));
        let feats = FrontFeatures { sg: true, rx_notify: true, no_csum_offload: false };
        (front, Vif::new(DomId(dom), port, mac, feats, tx_page, rx_page))
    }

    fn mac(&self) -> Mac {
        vif_mac(self.dom.0, 0)
    }

    /// Grants a page holding `data` at `offset`.
    fn grant(&mut self, f: &mut Fab, offset: usize, data: &[u8], readonly: bool) -> GrantRef {
        let mut page = vec![0u8; PAGE_SIZE];
        page[offset..offset + data.len()].copy_from_slice(data);
        self.next_gref += 1;
        f.io.grants.insert((self.dom.0, self.next_gref), Grant { owner: self.dom, page, readonly });
        GrantRef(self.next_gref)
    }

    /// Queues `frame` as one slot (or split at `cuts`), returns the slots' ids.
    fn send(&mut self, f: &mut Fab, frame: &[u8], cuts: &[usize], flags: u16) -> Vec<u16> {
        let mut pieces = Vec::new();
        let mut at = 0;
        for &c in cuts.iter().chain(core::iter::once(&frame.len())) {
            pieces.push(&frame[at..c]);
            at = c;
        }
        let mut ids = Vec::new();
        let n = pieces.len();
        for (i, p) in pieces.into_iter().enumerate() {
            let g = self.grant(f, 100, p, true);
            let id = self.tx.req_prod_pvt() as u16;
            let mut fl = if i + 1 < n { nettxf::MORE_DATA } else { 0 };
            if i == 0 {
                fl |= flags;
            }
            let size = if i == 0 { frame.len() as u16 } else { p.len() as u16 };
            self.tx
                .push_request(self.tx_page, &NetifTxRequest { gref: g, offset: 100, flags: fl, id, size })
                .unwrap();
            ids.push(id);
        }
        self.tx.push_requests(self.tx_page);
        ids
    }

    fn push_raw(&mut self, r: NetifTxRequest) {
        self.tx.push_request(self.tx_page, &r).unwrap();
        self.tx.push_requests(self.tx_page);
    }

    fn tx_responses(&mut self) -> Vec<NetifTxResponse> {
        let mut out = Vec::new();
        while let Some(r) = self.tx.take_response(self.tx_page).unwrap() {
            out.push(r);
        }
        out
    }

    /// Posts `n` receive buffers (writable grants), or a bad gref.
    fn post_rx(&mut self, f: &mut Fab, n: usize, bad: bool) -> Vec<GrantRef> {
        let mut grefs = Vec::new();
        for _ in 0..n {
            let g = if bad { GrantRef(9999) } else { self.grant(f, 0, &[], false) };
            let id = self.rx.req_prod_pvt() as u16;
            self.rx.push_request(self.rx_page, &NetifRxRequest { id, _pad: 0, gref: g }).unwrap();
            grefs.push(g);
        }
        self.rx.push_requests(self.rx_page);
        grefs
    }

    /// Received frames, read from the granted pages.
    fn received(&mut self, f: &Fab, grefs: &[GrantRef]) -> Vec<Result<(Vec<u8>, u16), i16>> {
        let mut out = Vec::new();
        while let Some(r) = self.rx.take_response(self.rx_page).unwrap() {
            if r.status < 0 {
                out.push(Err(r.status));
                continue;
            }
            let g = grefs[usize::from(r.id) % grefs.len()];
            let page = &f.io.grants[&(self.dom.0, g.0)].page;
            let (o, n) = (usize::from(r.offset), r.status as usize);
            out.push(Ok((page[o..o + n].to_vec(), r.flags)));
        }
        out
    }
}

fn fabric() -> Fab {
    let mut f = Fabric { sw: Switch::new(BUFS), io: FakeIo::new() };
    f.sw.add_port(PortId::UPLINK, None);
    f
}

/// An Ethernet frame from `src` to `dst` with `n` bytes of numbered payload (ethertype IPv4
/// but not parsed, unless checksum completion is asked for).
fn frame(dst: Mac, src: Mac, n: usize, seed: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity(14 + n);
    v.extend_from_slice(&dst);
    v.extend_from_slice(&src);
    v.extend_from_slice(&[0x88, 0xb5]);
    v.extend((0..n).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    v
}

/// Drains the uplink's queue (the NIC's job), returning the frames.
fn uplink(f: &mut Fab) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(p) = f.sw.pop(PortId::UPLINK) {
        out.push(f.io.buf(p.buf)[HEADROOM..HEADROOM + usize::from(p.len)].to_vec());
        f.sw.pool.release(p.buf);
    }
    out
}

fn okay(ids: &[u16]) -> Vec<NetifTxResponse> {
    ids.iter().map(|&id| NetifTxResponse { id, status: netif_rsp::OKAY }).collect()
}

#[test]
fn a_frame_goes_from_one_vif_to_another_intact() {
    let mut f = fabric();
    let (mut a, mut va) = Front::new(&mut f, 1);
    let (mut b, mut vb) = Front::new(&mut f, 2);
    let grefs = b.post_rx(&mut f, 8, false);
    assert!(!vb.service(&mut f).notify);
    let fr = frame(b.mac(), a.mac(), 1000, 3);
    let ids = a.send(&mut f, &fr, &[], 0);
    let r = va.service(&mut f);
    assert!(r.notify, "the frontend's rsp_event asks for the first response");
    assert_eq!(a.tx_responses(), okay(&ids));
    assert_eq!(f.sw.queued(b_port(&b)), 1, "unicast to B only");
    assert!(uplink(&mut f).is_empty());
    let r = vb.service(&mut f);
    assert_eq!(r.rx_packets, 1);
    assert_eq!(b.received(&f, &grefs), [Ok((fr.clone(), 0))]);
    assert_eq!(va.stats.tx_packets, 1);
    assert_eq!((vb.stats.rx_packets, vb.stats.rx_bytes), (1, fr.len() as u64));
    assert_eq!(f.sw.pool.free(), usize::from(BUFS), "the buffer came back");
}

fn b_port(b: &Front) -> PortId {
    PortId::vif(b.dom.0)
}

#[test]
fn a_fragmented_frame_is_reassembled_and_a_blank_checksum_completed() {
    let mut f = fabric();
    let (mut a, mut va) = Front::new(&mut f, 1);
    let fr = frame([0x52, 0x55, 10, 0, 2, 2], a.mac(), 900, 9);
    let ids = a.send(&mut f, &fr, &[14, 300, 301, 800], 0);
    assert_eq!(ids.len(), 5);
    va.service(&mut f);
    assert_eq!(a.tx_responses(), okay(&ids));
    assert_eq!(uplink(&mut f), [fr]);
    // A UDP datagram sent with NETTXF_csum_blank: the checksum is filled in at ingress.
    let mut udp = Vec::new();
    udp.extend_from_slice(&[0x52, 0x55, 10, 0, 2, 2]);
    udp.extend_from_slice(&a.mac());
    udp.extend_from_slice(&[
        0x08, 0x00, 0x45, 0, 0, 32, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 2, 15, 10, 0, 2, 2,
    ]);
    udp.extend_from_slice(&[0x30, 0x39, 0x00, 0x35, 0, 12, 0, 0, b'p', b'i', b'n', b'g']);
    let ids = a.send(&mut f, &udp, &[20], nettxf::CSUM_BLANK | nettxf::DATA_VALIDATED);
    va.service(&mut f);
    assert_eq!(a.tx_responses(), okay(&ids));
    let out = uplink(&mut f);
    assert_eq!(out.len(), 1);
    let l4 = &out[0][34..];
    let mut pseudo = vec![10, 0, 2, 15, 10, 0, 2, 2, 0, 17, 0, 12];
    pseudo.extend_from_slice(l4);
    assert_eq!(csum::fold(csum::sum(0, &pseudo)), 0xffff, "checksum valid");
    assert_ne!(&l4[6..8], &[0, 0]);
}

#[test]
fn the_receiving_side_gets_data_validated_for_completed_checksums() {
    let mut f = fabric();
    let (mut a, mut va) = Front::new(&mut f, 1);
    let (mut b, mut vb) = Front::new(&mut f, 2);
    let grefs = b.post_rx(&mut f, 2, false);
    let fr = frame(b.mac(), a.mac(), 40, 1);
    a.send(&mut f, &fr, &[], nettxf::DATA_VALIDATED);
    va.service(&mut f);
    vb.service(&mut f);
    assert_eq!(b.received(&f, &grefs), [Ok((fr, netrxf::DATA_VALIDATED))]);
}

#[test]
fn every_malformed_packet_gets_errors_and_the_next_good_one_goes_through() {
    let mut f = fabric();
    let (mut a, mut va) = Front::new(&mut f, 1);
    let gw = [0x52, 0x55, 10, 0, 2, 2];
    let good = frame(gw, a.mac(), 100, 0);
    let mut expect_errors = 0;
    let cases: Vec<(&str, Vec<NetifTxRequest>)> = {
        let g = a.grant(&mut f, 0, &good, true);
        let r = |size, offset, flags, id| NetifTxRequest { gref: g, offset, flags, id, size };
        vec![
            ("shorter than a header", vec![r(13, 0, 0, 1)]),
            ("longer than a frame", vec![r(1519, 0, 0, 2)]),
            ("fragments larger than the packet", vec![r(100, 0, nettxf::MORE_DATA, 3), r(101, 0, 0, 4)]),
            ("a fragment crossing its page", vec![r(114, 4000, 0, 5)]),
            ("a later fragment crossing its page", vec![r(114, 0, nettxf::MORE_DATA, 6), r(100, 4000, 0, 7)]),
            (
                "an unknown grant",
                vec![NetifTxRequest { gref: GrantRef(7777), offset: 0, flags: 0, id: 8, size: 114 }],
            ),
            (
                "extra info (nothing offered)",
                vec![
                    r(114, 0, nettxf::EXTRA_INFO, 9),
                    NetifTxRequest::from_extra_info(&hypercall_abi::io::netif::NetifExtraInfo::new_gso(
                        1448, 1, 0, 0,
                    )),
                ],
            ),
            (
                "19 data slots",
                (0..19)
                    .map(|i| {
                        r(if i == 0 { 114 } else { 1 }, 0, if i < 18 { nettxf::MORE_DATA } else { 0 }, 20 + i)
                    })
                    .collect(),
            ),
        ]
    };
    for (what, slots) in cases {
        for s in &slots {
            a.push_raw(*s);
        }
        let ids = a.send(&mut f, &good, &[], 0);
        va.service(&mut f);
        let rsps = a.tx_responses();
        assert_eq!(rsps.len(), slots.len() + 1, "{what}: one response per slot");
        for (s, r) in slots.iter().zip(&rsps) {
            if s.id == 0 && s.size == 0 {
                assert_eq!(r.status, netif_rsp::NULL, "{what}: extra-info slots get NULL");
            } else {
                assert_eq!(*r, NetifTxResponse { id: s.id, status: netif_rsp::ERROR }, "{what}");
            }
        }
        assert_eq!(rsps.last(), okay(&ids).last(), "{what}: the good packet after it");
        assert_eq!(uplink(&mut f), core::slice::from_ref(&good), "{what}");
        expect_errors += 1;
    }
    assert_eq!(va.stats.tx_errors, expect_errors);
    assert!(va.broken().is_none(), "errors, not a closed ring");
    assert_eq!(f.sw.pool.free(), usize::from(BUFS));
}

#[test]
fn an_endless_chain_is_answered_slot_by_slot_across_rounds() {
    let mut f = fabric();
    let (mut a, mut va) = Front::new(&mut f, 1);
    let g = a.grant(&mut f, 0, &[0; 64], true);
    let mut answered = 0;
    // 1000 slots all saying "more", a ring's worth at a time.
    for round in 0..8 {
        while a.tx.free_requests() > 0 && a.tx.req_prod_pvt() < 1000 {
            let id = a.tx.req_prod_pvt() as u16;
            a.tx.push_request(
                a.tx_page,
                &NetifTxRequest { gref: g, offset: 0, flags: nettxf::MORE_DATA, id, size: 60 },
            )
            .unwrap();
        }
        a.tx.push_requests(a.tx_page);
        va.service(&mut f);
        let rsps = a.tx_responses();
        assert!(rsps.iter().all(|r| r.status == netif_rsp::ERROR), "round {round}");
        answered += rsps.len();
        // At most the bounded partial packet waits unanswered.
        assert!(a.tx.req_prod_pvt() as usize - answered <= MAX_TX_SLOTS + MAX_EXTRAS + 1);
    }
    // The chain ends; the ring is in step and a good packet goes through.
    a.push_raw(NetifTxRequest { gref: g, offset: 0, flags: 0, id: 5, size: 60 });
    let good = frame([2; 6], a.mac(), 60, 0);
    let ids = a.send(&mut f, &good, &[], 0);
    va.service(&mut f);
    let rsps = a.tx_responses();
    assert_eq!(rsps[rsps.len() - 2].status, netif_rsp::ERROR);
    assert_eq!(rsps.last(), okay(&ids).last());
    assert_eq!(answered + rsps.len(), a.tx.req_prod_pvt() as usize, "every slot answered once");
    assert!(va.broken().is_none());
}

#[test]
fn a_producer_index_running_ahead_closes_the_vif_alone() {
    let mut f = fabric();
    let (a, mut va) = Front::new(&mut f, 1);
    let (mut b, mut vb) = Front::new(&mut f, 2);
    a.tx_page.store_u32_release(REQ_PROD_OFFSET, 5000);
    va.service(&mut f);
    assert_eq!(va.broken(), Some(RingError::Overflow));
    assert_eq!(va.service(&mut f), Round::default(), "nothing more is read");
    // The rx ring likewise.
    let (_c, mut vc) = Front::new(&mut f, 3);
    vc.rx_mem.store_u32_release(REQ_PROD_OFFSET, 900);
    let ids = b.send(&mut f, &frame(vif_mac(3, 0), b.mac(), 50, 0), &[], 0);
    vb.service(&mut f);
    assert_eq!(b.tx_responses(), okay(&ids), "the neighbour's traffic is not disturbed");
    vc.service(&mut f);
    assert_eq!(vc.broken(), Some(RingError::Overflow));
}

#[test]
fn bad_receive_grants_get_errors_and_release_the_buffers() {
    let mut f = fabric();
    let (mut a, mut va) = Front::new(&mut f, 1);
    let (mut b, mut vb) = Front::new(&mut f, 2);
    b.post_rx(&mut f, 2, true);
    // A read-only grant is refused for writing too.
    let ro = b.grant(&mut f, 0, &[], true);
    let id = b.rx.req_prod_pvt() as u16;
    b.rx.push_request(b.rx_page, &NetifRxRequest { id, _pad: 0, gref: ro }).unwrap();
    b.rx.push_requests(b.rx_page);
    for i in 0..3 {
        a.send(&mut f, &frame(b.mac(), a.mac(), 64, i), &[], 0);
    }
    va.service(&mut f);
    vb.service(&mut f);
    assert_eq!(b.received(&f, &[GrantRef(0)]), vec![Err(netif_rsp::ERROR); 3]);
    assert_eq!(vb.stats.rx_errors, 3);
    assert_eq!(f.sw.pool.free(), usize::from(BUFS));
}

#[test]
fn without_receive_buffers_packets_wait_then_flow() {
    let mut f = fabric();
    let (mut a, mut va) = Front::new(&mut f, 1);
    let (mut b, mut vb) = Front::new(&mut f, 2);
    for i in 0..5 {
        a.send(&mut f, &frame(b.mac(), a.mac(), 64, i), &[], 0);
    }
    va.service(&mut f);
    let r = vb.service(&mut f);
    assert!(r.rx_stalled);
    assert_eq!(f.sw.queued(b_port(&b)), 5);
    // Posting buffers crosses the req_event the backend armed: the frontend notifies.
    b.rx.push_request(b.rx_page, &NetifRxRequest { id: 0, _pad: 0, gref: GrantRef(0) }).unwrap();
    assert!(b.rx.push_requests_and_check_notify(b.rx_page));
    // (That request names no grant: an error; then real buffers.)
    let grefs = b.post_rx(&mut f, 8, false);
    let r = vb.service(&mut f);
    assert!(!r.rx_stalled && r.rx_packets == 5);
    let got = b.received(&f, &grefs);
    assert_eq!(got[0], Err(netif_rsp::ERROR));
    assert_eq!(got.len(), 5);
    assert!(got[1..].iter().all(|g| g.is_ok()));
}

#[test]
fn rounds_are_bounded_by_their_budgets() {
    let mut f = fabric();
    let (mut a, mut va) = Front::new(&mut f, 1);
    for i in 0..(TX_BUDGET + 10) {
        a.send(&mut f, &frame([2; 6], a.mac(), 20, i as u8), &[], 0);
    }
    let r = va.service(&mut f);
    assert!(r.more);
    assert_eq!(r.tx_packets as usize, TX_BUDGET);
    assert_eq!(f.io.batches, 1, "one grant-copy hypercall for the round");
    let r = va.service(&mut f);
    assert!(!r.more);
    assert_eq!(r.tx_packets, 10);
}

proptest! {
    /// A hostile frontend writes arbitrary slots (flags, sizes, offsets, grants) next to an
    /// honest neighbour: netback never panics or closes a ring for it, answers every slot
    /// once (at most a bounded packet's worth waits), the neighbour's frames arrive intact,
    /// and every buffer returns to the pool.
    #[test]
    fn arbitrary_slots_never_hurt_the_neighbour(
        slots in proptest::collection::vec((any::<u16>(), 0u16..16, any::<u16>(), 0u32..4), 1..300),
        good_every in 1usize..20,
    ) {
        let mut f = fabric();
        let (mut h, mut vh) = Front::new(&mut f, 1);
        let (mut n, mut vn) = Front::new(&mut f, 2);
        let (mut r, mut vr) = Front::new(&mut f, 3);
        let data = vec![0xabu8; PAGE_SIZE];
        let hostile_grants: Vec<GrantRef> = vec![
            h.grant(&mut f, 0, &data, true),
            h.grant(&mut f, 0, &data, false),
            GrantRef(4242),
            n.grant(&mut f, 0, &data, true),
        ];
        let mut pushed = 0u32;
        let mut answered = 0usize;
        let mut sent = Vec::new();
        let mut got = Vec::new();
        let grefs = r.post_rx(&mut f, 256, false);
        for (i, (offset, flags, size, g)) in slots.into_iter().enumerate() {
            if h.tx.free_requests() > 0 {
                let id = pushed as u16;
                h.push_raw(NetifTxRequest { gref: hostile_grants[g as usize], offset, flags, id, size });
                pushed += 1;
            }
            if i % good_every == 0 {
                let fr = frame(r.mac(), n.mac(), 50 + i % 1000, i as u8);
                n.send(&mut f, &fr, if i % 3 == 0 { &[20] } else { &[] }, 0);
                sent.push(fr);
            }
            vh.service(&mut f);
            vn.service(&mut f);
            vr.service(&mut f);
            answered += h.tx_responses().len();
            prop_assert!(n.tx_responses().iter().all(|x| x.status == netif_rsp::OKAY));
            for x in r.received(&f, &grefs) {
                let (bytes, _) = x.unwrap();
                got.push(bytes);
                // Keep the receiver's ring stocked (the same pages, re-posted).
                let id = r.rx.req_prod_pvt() as u16;
                let g = grefs[usize::from(id) % grefs.len()];
                r.rx.push_request(r.rx_page, &NetifRxRequest { id, _pad: 0, gref: g }).unwrap();
                r.rx.push_requests(r.rx_page);
            }
            uplink(&mut f);
            prop_assert!(vh.broken().is_none());
            prop_assert!(pushed as usize - answered <= MAX_TX_SLOTS + MAX_EXTRAS + 1);
        }
        // The hostile frontend's frames only ever come from its own MAC; the honest ones
        // reach the receiver in order, byte for byte.
        let honest: Vec<Vec<u8>> = got.into_iter().filter(|g| g[6..12] == n.mac()).collect();
        prop_assert_eq!(honest, sent);
        for p in [PortId::UPLINK, PortId::vif(1), PortId::vif(2), PortId::vif(3)] {
            while let Some(pkt) = f.sw.pop(p) {
                f.sw.pool.release(pkt.buf);
            }
        }
        prop_assert_eq!(f.sw.pool.free(), usize::from(BUFS));
    }
}

#[test]
fn the_driver_refuses_a_frontend_without_rx_copy_and_connects_one_with_it() {
    use pv_guest_kernel::split::model::ModelStore;
    let fab = Rc::new(RefCell::new(fabric()));
    let mut d = NetDriver::new(fab.clone(), PortId::vif(1), vif_mac(1, 0));
    let mut s = ModelStore::default();
    let rings = || vec![page(), page()];
    let r = BackendDriver::<&'static AtomicPage>::connect(
        &mut d,
        DomId(1),
        rings(),
        &mut Keys::new(&mut s, "/fe"),
    );
    assert_eq!(r.err().map(|e| (e.0.len(), e.1)), Some((2, keys::NEED_RX_COPY)), "both rings handed back");
    assert!(!fab.borrow().sw.has_port(PortId::vif(1)));
    s.set("/fe/request-rx-copy", "1");
    let r = BackendDriver::<&'static AtomicPage>::connect(
        &mut d,
        DomId(1),
        rings(),
        &mut Keys::new(&mut s, "/fe"),
    );
    assert!(r.is_ok());
    assert!(fab.borrow().sw.has_port(PortId::vif(1)), "the vif joins the switch at connect");
    let (conn, _) = r.ok().unwrap();
    assert_eq!(BackendDriver::<&'static AtomicPage>::disconnect(&mut d, conn).len(), 2);
    assert!(!fab.borrow().sw.has_port(PortId::vif(1)), "and leaves it at disconnect");
}
