//! Host tests of blkback's engine: a frontend on a real ring page, grants and a disk modelled
//! over one fake machine memory, so data written by the "domU" is checked on the "disk" and
//! back; then every hostile request class, and a property test feeding arbitrary request
//! bytes. Indirect requests and multi-page rings get the same treatment.

use super::*;
use hypercall_abi::grant_table::gntst;
use hypercall_abi::io::blkif::{BlkifFrontRing, BlkifRequestSegment};
use hypercall_abi::io::ring::{AtomicPage, SharedRing, REQ_PROD_OFFSET, RSP_PROD_OFFSET};
use proptest::prelude::*;
use std::collections::BTreeMap;
use zerocopy::{FromBytes, IntoBytes};

const FE: DomId = DomId(3);
const PAGE: usize = 4096;

/// Machine memory: frames by number.
#[derive(Default)]
struct Machine {
    frames: BTreeMap<u64, Vec<u8>>,
}

impl Machine {
    fn frame(&mut self, mfn: u64) -> &mut Vec<u8> {
        self.frames.entry(mfn).or_insert_with(|| vec![0; PAGE])
    }
    fn write(&mut self, ma: u64, data: &[u8]) {
        let (mfn, off) = (ma / PAGE as u64, (ma % PAGE as u64) as usize);
        assert!(off + data.len() <= PAGE, "a DMA piece never crosses into another frame here");
        self.frame(mfn)[off..off + data.len()].copy_from_slice(data);
    }
    fn read(&mut self, ma: u64, len: usize) -> Vec<u8> {
        let (mfn, off) = (ma / PAGE as u64, (ma % PAGE as u64) as usize);
        self.frame(mfn)[off..off + len].to_vec()
    }
}

/// The frontend's grant table and dom0's device mappings of it.
#[derive(Default)]
struct Grants {
    /// gref → (mfn, readonly) granted to dom0.
    table: BTreeMap<u32, (u64, bool)>,
    /// Live device mappings: (slot, gref) → how many (a request may name a grant twice, and
    /// Xen maps it twice).
    mapped: BTreeMap<(u16, u32), u32>,
    /// Releases deferred to `flush`.
    deferred: Vec<(u16, u32)>,
    map_calls: u32,
    flushes: u32,
    /// Pages copied by `read_granted` (indirect descriptor pages).
    copies: u32,
    /// Machine memory `read_granted` copies from (the frames of the rig's `Machine`, shared
    /// by handing the rig's frames over before each service).
    frames: BTreeMap<u64, Vec<u8>>,
}

impl Grants {
    fn unmap(&mut self, m: (u16, u32)) {
        let n = self.mapped.get_mut(&m).unwrap_or_else(|| panic!("released something not mapped: {m:?}"));
        *n -= 1;
        if *n == 0 {
            self.mapped.remove(&m);
        }
    }
}

impl DataPath for Grants {
    fn prepare(
        &mut self,
        dom: DomId,
        slot: u16,
        disk_reads: bool,
        segs: &[SegReq],
        out: &mut [u64],
    ) -> Result<(), i16> {
        assert_eq!(dom, FE);
        self.map_calls += 1;
        for (i, s) in segs.iter().enumerate() {
            let ok = match self.table.get(&s.gref.0) {
                None => Err(gntst::BAD_GNTREF),
                Some(&(_, true)) if !disk_reads => Err(gntst::PERMISSION_DENIED),
                Some(&(mfn, _)) => Ok(mfn),
            };
            match ok {
                Ok(mfn) => {
                    *self.mapped.entry((slot, s.gref.0)).or_default() += 1;
                    out[i] = mfn * PAGE as u64 + s.offset();
                }
                Err(st) => {
                    for p in &segs[..i] {
                        self.unmap((slot, p.gref.0));
                    }
                    return Err(st);
                }
            }
        }
        Ok(())
    }
    fn finish(
        &mut self,
        _dom: DomId,
        slot: u16,
        _disk_reads: bool,
        segs: &[SegReq],
        _ok: bool,
    ) -> Result<(), i16> {
        for s in segs {
            self.deferred.push((slot, s.gref.0));
        }
        Ok(())
    }
    fn flush(&mut self) {
        self.flushes += 1;
        for m in core::mem::take(&mut self.deferred) {
            self.unmap(m);
        }
    }
    fn read_granted(&mut self, dom: DomId, gref: GrantRef, out: &mut [u8]) -> Result<(), i16> {
        assert_eq!(dom, FE);
        assert!(out.len() <= PAGE);
        let &(mfn, _) = self.table.get(&gref.0).ok_or(gntst::BAD_GNTREF)?;
        self.copies += 1;
        let frame = self.frames.get(&mfn).cloned().unwrap_or_else(|| vec![0; PAGE]);
        out.copy_from_slice(&frame[..out.len()]);
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Submitted {
    op: DiskOp,
    sector: u64,
    pieces: Vec<(u64, u32)>,
    cookie: u64,
}

/// A disk of `data.len() / 512` sectors that takes at most `limit` requests at once.
struct FakeDisk {
    data: Vec<u8>,
    queue: Vec<Submitted>,
    limit: usize,
    flushes: u32,
    kicks: u32,
    /// Complete with failure.
    fail: bool,
}

impl FakeDisk {
    fn new(sectors: u64) -> FakeDisk {
        FakeDisk {
            data: vec![0; sectors as usize * 512],
            queue: Vec::new(),
            limit: 64,
            flushes: 0,
            kicks: 0,
            fail: false,
        }
    }
    /// Performs every queued request against `m`; returns (cookie, ok).
    fn run(&mut self, m: &mut Machine) -> Vec<(u64, bool)> {
        let mut out = Vec::new();
        for s in self.queue.drain(..) {
            let mut at = s.sector as usize * 512;
            for &(ma, len) in &s.pieces {
                let len = len as usize;
                match s.op {
                    DiskOp::Read => {
                        let mut ma = ma;
                        let mut left = len;
                        while left > 0 {
                            let n = left.min(PAGE - (ma as usize % PAGE));
                            m.write(ma, &self.data[at..at + n]);
                            ma += n as u64;
                            at += n;
                            left -= n;
                        }
                    }
                    DiskOp::Write => {
                        let mut ma = ma;
                        let mut left = len;
                        while left > 0 {
                            let n = left.min(PAGE - (ma as usize % PAGE));
                            let b = m.read(ma, n);
                            self.data[at..at + n].copy_from_slice(&b);
                            ma += n as u64;
                            at += n;
                            left -= n;
                        }
                    }
                    DiskOp::Flush => {}
                }
            }
            if s.op == DiskOp::Flush {
                self.flushes += 1;
            }
            out.push((s.cookie, !self.fail));
        }
        out
    }
}

impl Disk for FakeDisk {
    fn submit(&mut self, op: DiskOp, sector: u64, data: &[(u64, u32)], cookie: u64) -> Result<(), DiskError> {
        if self.queue.len() >= self.limit {
            return Err(DiskError::Busy);
        }
        let bytes: u64 = data.iter().map(|p| u64::from(p.1)).sum();
        assert!(
            sector * 512 + bytes <= self.data.len() as u64,
            "blkback let an out-of-range request through"
        );
        assert_eq!(op == DiskOp::Flush, data.is_empty());
        self.queue.push(Submitted { op, sector, pieces: data.to_vec(), cookie });
        Ok(())
    }
    fn kick(&mut self) {
        self.kicks += 1;
    }
}

struct Rig {
    front: BlkifFrontRing,
    back: Blkback<RingPages<&'static AtomicPage>>,
    grants: Grants,
    disk: FakeDisk,
    m: Machine,
    next_gref: u32,
    next_mfn: u64,
}

impl Rig {
    fn new(info: DiskInfo) -> Rig {
        let page: &'static AtomicPage = Box::leak(Box::new(AtomicPage::new()));
        let front = BlkifFrontRing::init(page);
        let back = Blkback::new(RingPages::new(vec![page]).unwrap(), FE, info, 1000);
        Rig::around(front, back)
    }
    /// A rig whose ring has `2^order` pages.
    fn multi_page(info: DiskInfo, order: u32) -> Rig {
        let pages: Vec<&'static AtomicPage> =
            (0..1 << order).map(|_| &*Box::leak(Box::new(AtomicPage::new()))).collect();
        let mem = RingPages::new(pages).unwrap();
        SharedRing::init(&mem);
        let front = BlkifFrontRing::attach(PAGE << order, 0).unwrap();
        let back = Blkback::multi_page(mem, order, FE, info, 1000).map_err(|_| ()).unwrap();
        Rig::around(front, back)
    }
    fn around(front: BlkifFrontRing, back: Blkback<RingPages<&'static AtomicPage>>) -> Rig {
        let info = back.info();
        Rig {
            front,
            back,
            grants: Grants::default(),
            disk: FakeDisk::new(info.capacity),
            m: Machine::default(),
            next_gref: 8,
            next_mfn: 0x100,
        }
    }
    fn standard() -> Rig {
        Rig::new(DiskInfo { capacity: 2048, readonly: false, flush: true, max_indirect_segments: 0 })
    }
    fn ring(&self) -> &RingPages<&'static AtomicPage> {
        // The backend holds the same leaked pages.
        self.back.memory()
    }
    /// The ring's first page (the whole ring of a one-page rig).
    fn page(&self) -> &'static AtomicPage {
        self.back.memory().pages()[0]
    }
    /// A fresh page granted to dom0, filled with `fill`.
    fn grant(&mut self, readonly: bool, fill: u8) -> (GrantRef, u64) {
        let (g, mfn) = (self.next_gref, self.next_mfn);
        self.next_gref += 1;
        self.next_mfn += 1;
        self.grants.table.insert(g, (mfn, readonly));
        self.m.frame(mfn).fill(fill);
        (GrantRef(g), mfn)
    }
    fn push(&mut self, r: &BlkifRequest) {
        let ring = self.back.memory();
        self.front.push_request(ring, r).unwrap();
        self.front.push_requests(ring);
    }
    /// One service round with the machine's current frames visible to `read_granted`.
    fn service(&mut self) -> Round {
        self.grants.frames = self.m.frames.clone();
        self.back.service(&mut self.grants, &mut self.disk)
    }
    /// Services, runs the disk, feeds completions back, until nothing moves.
    fn pump(&mut self) -> Vec<BlkifResponse> {
        for _ in 0..50 {
            let r = self.service();
            let done = self.disk.run(&mut self.m);
            for &(c, ok) in &done {
                assert!(self.back.owns(c));
                self.back.complete(&mut self.grants, c, ok);
            }
            if r.taken == 0 && r.answered == 0 && done.is_empty() {
                break;
            }
        }
        let ring = self.back.memory();
        let mut out = Vec::new();
        while let Some(rsp) = self.front.take_response(ring).unwrap() {
            out.push(rsp);
        }
        out
    }
}

fn rw(operation: u8, id: u64, sector: u64, segs: &[(GrantRef, u8, u8)]) -> BlkifRequest {
    let mut r = BlkifRequest {
        operation,
        nr_segments: segs.len() as u8,
        id,
        sector_number: sector,
        ..Default::default()
    };
    for (d, &(gref, first_sect, last_sect)) in r.seg.iter_mut().zip(segs) {
        *d = BlkifRequestSegment { gref, first_sect, last_sect, _pad: 0 };
    }
    r
}

fn status_of(rsps: &[BlkifResponse], id: u64) -> Vec<i16> {
    rsps.iter().filter(|r| r.id == id).map(|r| r.status).collect()
}

#[test]
fn data_written_by_the_frontend_reaches_the_disk_and_comes_back() {
    let mut rig = Rig::standard();
    let (g1, _) = rig.grant(true, 0x11);
    let (g2, _) = rig.grant(true, 0x22);
    let (g3, _) = rig.grant(true, 0x33);
    // Whole page, sectors 2..=5 of another, last sector of a third: 8 + 4 + 1 sectors.
    rig.push(&rw(op::WRITE, 7, 100, &[(g1, 0, 7), (g2, 2, 5), (g3, 7, 7)]));
    let rsps = rig.pump();
    assert_eq!(
        rsps,
        vec![BlkifResponse { id: 7, operation: op::WRITE, status: rsp::OKAY, ..Default::default() }]
    );
    let d = &rig.disk.data;
    assert!(d[100 * 512..108 * 512].iter().all(|&b| b == 0x11));
    assert!(d[108 * 512..112 * 512].iter().all(|&b| b == 0x22));
    assert!(d[112 * 512..113 * 512].iter().all(|&b| b == 0x33));
    assert!(d[113 * 512..114 * 512].iter().all(|&b| b == 0));
    // Read it back into writable pages at other offsets.
    let (r1, m1) = rig.grant(false, 0);
    let (r2, m2) = rig.grant(false, 0);
    rig.push(&rw(op::READ, 8, 104, &[(r1, 1, 7), (r2, 0, 1)]));
    let rsps = rig.pump();
    assert_eq!(status_of(&rsps, 8), [rsp::OKAY]);
    let got1 = rig.m.read(m1 * 4096 + 512, 7 * 512);
    assert!(got1[..4 * 512].iter().all(|&b| b == 0x11) && got1[4 * 512..].iter().all(|&b| b == 0x22));
    let got2 = rig.m.read(m2 * 4096, 2 * 512);
    assert!(got2[..512].iter().all(|&b| b == 0x22) && got2[512..].iter().all(|&b| b == 0x33));
    assert!(rig.grants.mapped.is_empty(), "every grant released");
    assert_eq!(rig.back.stats.sectors_written, 13);
    assert_eq!(rig.back.stats.sectors_read, 9);
}

#[test]
fn contiguous_segments_become_one_disk_piece() {
    let mut rig = Rig::standard();
    let (g1, m1) = rig.grant(true, 1);
    let (g2, _) = rig.grant(true, 2);
    assert_eq!(rig.grants.table[&g2.0].0, m1 + 1);
    rig.push(&rw(op::WRITE, 1, 0, &[(g1, 0, 7), (g2, 0, 3)]));
    rig.back.service(&mut rig.grants, &mut rig.disk);
    assert_eq!(rig.disk.queue[0].pieces, vec![(m1 * 4096, 12 * 512)]);
    // A gap in the page breaks the run.
    let mut rig = Rig::standard();
    let (g1, m1) = rig.grant(true, 1);
    let (g2, _) = rig.grant(true, 2);
    rig.push(&rw(op::WRITE, 1, 0, &[(g1, 0, 6), (g2, 0, 3)]));
    rig.back.service(&mut rig.grants, &mut rig.disk);
    assert_eq!(rig.disk.queue[0].pieces, vec![(m1 * 4096, 7 * 512), ((m1 + 1) * 4096, 4 * 512)]);
}

#[test]
fn every_hostile_request_gets_an_error_and_the_backend_keeps_serving() {
    let mut rig =
        Rig::new(DiskInfo { capacity: 1000, readonly: false, flush: true, max_indirect_segments: 0 });
    let (g, _) = rig.grant(false, 0);
    let good = |id| rw(op::READ, id, 0, &[(g, 0, 7)]);
    let mut bad = vec![
        (1, rw(op::READ, 1, 993, &[(g, 0, 7)]), rsp::ERROR), // past the end (993+8 > 1000)
        (2, rw(op::READ, 2, u64::MAX - 3, &[(g, 0, 7)]), rsp::ERROR), // overflowing
        (3, rw(op::READ, 3, 0, &[(g, 5, 4)]), rsp::ERROR),   // first > last
        (4, rw(op::READ, 4, 0, &[(g, 0, 8)]), rsp::ERROR),   // last past the page
        (5, rw(op::READ, 5, 0, &[]), rsp::ERROR),            // no segment
        (7, rw(op::READ, 7, 0, &[(GrantRef(4000), 0, 0)]), rsp::ERROR), // unknown grant
        (8, rw(op::WRITE_BARRIER, 8, 0, &[(g, 0, 0)]), rsp::EOPNOTSUPP), // not advertised
        (9, rw(op::DISCARD, 9, 0, &[]), rsp::EOPNOTSUPP),
        (10, rw(op::INDIRECT, 10, 0, &[]), rsp::EOPNOTSUPP),
        (11, rw(0x77, 11, 0, &[]), rsp::EOPNOTSUPP), // unknown operation
    ];
    let mut twelve = rw(op::READ, 6, 0, &[(g, 0, 0)]);
    twelve.nr_segments = 12; // more than 11
    bad.push((6, twelve, rsp::ERROR));
    let mut huge = rw(op::READ, 12, 0, &[(g, 0, 0)]);
    huge.nr_segments = 255;
    bad.push((12, huge, rsp::ERROR));
    for (id, req, want) in &bad {
        rig.push(req);
        rig.push(&good(100 + id));
        let rsps = rig.pump();
        assert_eq!(status_of(&rsps, *id), [*want], "request {id}");
        assert_eq!(status_of(&rsps, 100 + id), [rsp::OKAY], "good request after {id}");
        for r in &rsps {
            let b = r.as_bytes();
            assert_eq!((b[9], &b[12..16]), (0, &[0u8; 4][..]), "response padding is zero");
        }
    }
    assert!(rig.grants.mapped.is_empty());
    assert!(rig.back.broken().is_none());
    assert_eq!(rig.back.stats.unsupported, 4);
}

#[test]
fn a_grant_failing_midway_releases_the_ones_before_it() {
    let mut rig = Rig::standard();
    let (g1, _) = rig.grant(false, 0);
    let (g2, _) = rig.grant(false, 0);
    rig.push(&rw(op::READ, 1, 0, &[(g1, 0, 7), (g2, 0, 7), (GrantRef(9999), 0, 7)]));
    assert_eq!(status_of(&rig.pump(), 1), [rsp::ERROR]);
    assert!(rig.grants.mapped.is_empty());
    assert!(rig.disk.queue.is_empty());
    // A read into a page granted read-only is refused the same way.
    let (ro, _) = rig.grant(true, 0);
    rig.push(&rw(op::READ, 2, 0, &[(ro, 0, 7)]));
    assert_eq!(status_of(&rig.pump(), 2), [rsp::ERROR]);
}

#[test]
fn the_same_id_twice_in_flight_fails_only_the_second() {
    let mut rig = Rig::standard();
    let (g1, _) = rig.grant(false, 0);
    let (g2, _) = rig.grant(false, 0);
    rig.push(&rw(op::READ, 42, 0, &[(g1, 0, 7)]));
    rig.back.service(&mut rig.grants, &mut rig.disk);
    assert_eq!(rig.disk.queue.len(), 1, "first one is with the disk");
    rig.push(&rw(op::READ, 42, 8, &[(g2, 0, 7)]));
    let rsps = rig.pump();
    assert_eq!(
        status_of(&rsps, 42),
        [rsp::ERROR, rsp::OKAY],
        "the duplicate fails at once, the first completes"
    );
}

#[test]
fn writes_to_a_read_only_disk_fail() {
    let mut rig = Rig::new(DiskInfo { capacity: 64, readonly: true, flush: false, max_indirect_segments: 0 });
    let (g, _) = rig.grant(true, 9);
    rig.push(&rw(op::WRITE, 1, 0, &[(g, 0, 7)]));
    rig.push(&rw(op::FLUSH_DISKCACHE, 2, 0, &[]));
    let (r, _) = rig.grant(false, 0);
    rig.push(&rw(op::READ, 3, 0, &[(r, 0, 7)]));
    let rsps = rig.pump();
    assert_eq!(status_of(&rsps, 1), [rsp::ERROR]);
    assert_eq!(status_of(&rsps, 2), [rsp::EOPNOTSUPP], "no feature-flush-cache");
    assert_eq!(status_of(&rsps, 3), [rsp::OKAY]);
    assert!(rig.disk.data.iter().all(|&b| b == 0));
}

#[test]
fn flushes_with_and_without_data() {
    let mut rig = Rig::standard();
    rig.push(&rw(op::FLUSH_DISKCACHE, 1, 0, &[]));
    assert_eq!(status_of(&rig.pump(), 1), [rsp::OKAY]);
    assert_eq!(rig.disk.flushes, 1);
    let (g, _) = rig.grant(true, 0x5a);
    rig.push(&rw(op::FLUSH_DISKCACHE, 2, 16, &[(g, 0, 7)]));
    assert_eq!(status_of(&rig.pump(), 2), [rsp::OKAY]);
    assert_eq!(rig.disk.flushes, 2, "the write is followed by a flush");
    assert!(rig.disk.data[16 * 512..24 * 512].iter().all(|&b| b == 0x5a));
    assert!(rig.grants.mapped.is_empty());
}

#[test]
fn disk_errors_and_a_busy_disk() {
    let mut rig = Rig::standard();
    rig.disk.limit = 2;
    let mut ids = Vec::new();
    for id in 0..20u64 {
        let (g, _) = rig.grant(false, 0);
        rig.push(&rw(op::READ, id, id * 8, &[(g, 0, 7)]));
        ids.push(id);
    }
    let rsps = rig.pump();
    let mut got: Vec<u64> = rsps.iter().map(|r| r.id).collect();
    got.sort();
    assert_eq!(got, ids, "all served, two at a time");
    rig.disk.fail = true;
    let (g, _) = rig.grant(false, 0);
    rig.push(&rw(op::READ, 99, 0, &[(g, 0, 7)]));
    assert_eq!(status_of(&rig.pump(), 99), [rsp::ERROR]);
    assert!(rig.grants.mapped.is_empty());
}

#[test]
fn a_producer_running_ahead_breaks_the_connection() {
    let mut rig = Rig::standard();
    let (g, _) = rig.grant(false, 0);
    rig.push(&rw(op::READ, 1, 0, &[(g, 0, 7)]));
    rig.back.service(&mut rig.grants, &mut rig.disk);
    // The frontend claims 33 more requests than responses: more than the ring holds.
    let ring = rig.page();
    let rsp_prod = ring.load_u32_acquire(RSP_PROD_OFFSET);
    ring.store_u32_release(REQ_PROD_OFFSET, rsp_prod.wrapping_add(33));
    let r = rig.back.service(&mut rig.grants, &mut rig.disk);
    assert_eq!(r.taken, 0);
    assert_eq!(rig.back.broken(), Some(RingError::Overflow));
    // The request already with the disk still completes and releases its page, but nothing
    // more is written to a ring we no longer trust.
    assert!(!rig.back.quiescent());
    let before = ring.snapshot();
    for (c, ok) in rig.disk.run(&mut rig.m) {
        rig.back.complete(&mut rig.grants, c, ok);
    }
    rig.back.service(&mut rig.grants, &mut rig.disk);
    assert_eq!(ring.snapshot()[..], before[..]);
    assert!(rig.back.quiescent());
    assert!(rig.grants.mapped.is_empty());
    // A producer index moving backwards is caught the same way.
    let mut rig = Rig::standard();
    let ring = rig.page();
    ring.store_u32_release(REQ_PROD_OFFSET, u32::MAX);
    rig.back.service(&mut rig.grants, &mut rig.disk);
    assert_eq!(rig.back.broken(), Some(RingError::Overflow));
}

#[test]
fn closing_with_requests_in_flight_releases_everything() {
    let mut rig = Rig::standard();
    for id in 0..5 {
        let (g, _) = rig.grant(false, 0);
        rig.push(&rw(op::READ, id, 0, &[(g, 0, 7)]));
    }
    rig.back.service(&mut rig.grants, &mut rig.disk);
    assert_eq!(rig.back.with_disk(), 5);
    rig.back.close();
    let (g, _) = rig.grant(false, 0);
    rig.push(&rw(op::READ, 9, 0, &[(g, 0, 7)]));
    assert!(!rig.back.quiescent());
    let rsps = rig.pump();
    assert_eq!(rsps.len(), 5, "in-flight requests still answered; the new one is not taken");
    assert!(rig.back.quiescent());
    assert!(rig.grants.mapped.is_empty());
}

#[test]
fn stray_and_foreign_cookies_are_ignored() {
    let mut rig = Rig::standard();
    rig.back.complete(&mut rig.grants, 1000, true);
    rig.back.complete(&mut rig.grants, 5, true);
    rig.back.complete(&mut rig.grants, u64::MAX, false);
    assert!(!rig.back.owns(999) && rig.back.owns(1000) && rig.back.owns(1031) && !rig.back.owns(1032));
    assert!(rig.pump().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Indirect requests

/// Offering 64 indirect segments.
fn indirect_info(capacity: u64) -> DiskInfo {
    DiskInfo { capacity, readonly: false, flush: true, max_indirect_segments: 64 }
}

impl Rig {
    /// A page granted to dom0 holding `segs` as indirect descriptors (the rest zero).
    fn indirect_page(&mut self, segs: &[(GrantRef, u8, u8)]) -> (GrantRef, u64) {
        let (g, mfn) = self.grant(true, 0);
        let frame = self.m.frame(mfn);
        for (i, &(gref, first_sect, last_sect)) in segs.iter().enumerate() {
            let d = BlkifRequestSegment { gref, first_sect, last_sect, _pad: 0 };
            frame[i * 8..i * 8 + 8].copy_from_slice(d.as_bytes());
        }
        (g, mfn)
    }
}

fn response(id: u64, operation: u8, status: i16) -> BlkifResponse {
    BlkifResponse { id, operation, status, ..Default::default() }
}

#[test]
fn indirect_requests_carry_many_segments_to_the_disk_and_back() {
    let mut rig = Rig::new(indirect_info(4096));
    // 40 pages, page i full of byte i+1, except the last: only sectors 2..=4.
    let mut segs = Vec::new();
    for i in 0..40u8 {
        let (g, _) = rig.grant(true, i + 1);
        segs.push(if i == 39 { (g, 2, 4) } else { (g, 0, 7) });
    }
    let (ind, _) = rig.indirect_page(&segs);
    rig.push(&BlkifRequest::indirect(op::WRITE, 5, 16, 40, &[ind]));
    assert_eq!(rig.pump(), [response(5, op::WRITE, rsp::OKAY)], "answered with the indirect_op");
    let d = &rig.disk.data;
    for i in 0..39usize {
        let at = (16 + i * 8) * 512;
        assert!(d[at..at + 4096].iter().all(|&b| b == i as u8 + 1), "page {i}");
    }
    let end = (16 + 39 * 8) * 512;
    assert!(d[end..end + 3 * 512].iter().all(|&b| b == 40) && d[end + 3 * 512..].iter().all(|&b| b == 0));
    assert_eq!(rig.back.stats.sectors_written, 39 * 8 + 3);
    assert_eq!(rig.grants.copies, 1, "one descriptor page copied");
    // Read the same range back into fresh pages, 12 to a request of 2 indirect segments...
    let mut got = Vec::new();
    let mut rsegs = Vec::new();
    for _ in 0..40 {
        let (g, mfn) = rig.grant(false, 0);
        rsegs.push((g, 0, 7));
        got.push(mfn);
    }
    rsegs[39].2 = 2; // 3 sectors
    let (ind, _) = rig.indirect_page(&rsegs);
    rig.push(&BlkifRequest::indirect(op::READ, 6, 16, 40, &[ind]));
    assert_eq!(rig.pump(), [response(6, op::READ, rsp::OKAY)]);
    for (i, &mfn) in got.iter().enumerate().take(39) {
        assert!(rig.m.read(mfn * 4096, 4096).iter().all(|&b| b == i as u8 + 1), "page {i} read back");
    }
    assert!(rig.m.read(got[39] * 4096, 3 * 512).iter().all(|&b| b == 40));
    assert!(rig.grants.mapped.is_empty(), "every grant released");
}

#[test]
fn indirect_descriptors_are_copied_once_before_they_are_checked() {
    let mut rig = Rig::new(indirect_info(4096));
    let (g, _) = rig.grant(true, 0x77);
    let (ind, ind_mfn) = rig.indirect_page(&[(g, 0, 7), (g, 0, 7)]);
    rig.disk.limit = 0; // the disk holds on to the request
    rig.push(&BlkifRequest::indirect(op::WRITE, 1, 8, 2, &[ind]));
    rig.service();
    // The frontend rewrites its descriptors after the backend took the request: a bad
    // gref and a range past the page. Nothing reads the page again.
    rig.m.frame(ind_mfn).fill(0xff);
    rig.disk.limit = 64;
    assert_eq!(rig.pump(), [response(1, op::WRITE, rsp::OKAY)]);
    assert!(rig.disk.data[8 * 512..24 * 512].iter().all(|&b| b == 0x77));
    assert_eq!(rig.grants.copies, 1);
}

#[test]
fn every_hostile_indirect_request_gets_an_error_with_its_operation() {
    let mut rig = Rig::new(indirect_info(1000));
    let (g, _) = rig.grant(false, 0);
    let (ro, _) = rig.grant(true, 0);
    let good = |id| rw(op::READ, id, 0, &[(g, 0, 7)]);
    let (ok_page, _) = rig.indirect_page(&[(g, 0, 7)]);
    let (first_gt_last, _) = rig.indirect_page(&[(g, 0, 7), (g, 5, 4)]);
    let (past_page, _) = rig.indirect_page(&[(g, 0, 8)]);
    let (unknown_seg, _) = rig.indirect_page(&[(g, 0, 7), (GrantRef(4000), 0, 7)]);
    let (ro_seg, _) = rig.indirect_page(&[(ro, 0, 7)]);
    let cases = [
        (1, BlkifRequest::indirect(op::READ, 1, 0, 0, &[ok_page]), op::READ), // no segment
        (2, BlkifRequest::indirect(op::READ, 2, 0, 65, &[ok_page]), op::READ), // more than offered
        (3, BlkifRequest::indirect(op::READ, 3, 0, u16::MAX, &[ok_page]), op::READ), // far more
        (4, BlkifRequest::indirect(op::FLUSH_DISKCACHE, 4, 0, 1, &[ok_page]), op::FLUSH_DISKCACHE), // bad op
        (5, BlkifRequest::indirect(op::INDIRECT, 5, 0, 1, &[ok_page]), op::INDIRECT), // nested
        (6, BlkifRequest::indirect(0x77, 6, 0, 1, &[ok_page]), 0x77),         // unknown op
        (7, BlkifRequest::indirect(op::READ, 7, 0, 1, &[GrantRef(4000)]), op::READ), // page not granted
        (8, BlkifRequest::indirect(op::READ, 8, 0, 2, &[first_gt_last]), op::READ),
        (9, BlkifRequest::indirect(op::READ, 9, 0, 1, &[past_page]), op::READ),
        (10, BlkifRequest::indirect(op::READ, 10, 0, 2, &[unknown_seg]), op::READ), // segment not granted
        (11, BlkifRequest::indirect(op::READ, 11, 0, 1, &[ro_seg]), op::READ),      // read into a r/o page
        (12, BlkifRequest::indirect(op::READ, 12, 993, 1, &[ok_page]), op::READ),   // past the end
        (13, BlkifRequest::indirect(op::WRITE, 13, u64::MAX - 3, 1, &[ok_page]), op::WRITE), // overflowing
        // Two segments claimed, the page holds one good descriptor and a zeroed one
        // (first_sect 0, last_sect 0 of gref 0, which is not granted).
        (14, BlkifRequest::indirect(op::READ, 14, 0, 2, &[ok_page]), op::READ),
    ];
    for (id, req, answered) in &cases {
        rig.push(req);
        rig.push(&good(100 + id));
        let rsps = rig.pump();
        assert_eq!(
            rsps.iter().find(|r| r.id == *id),
            Some(&response(*id, *answered, rsp::ERROR)),
            "request {id}"
        );
        assert_eq!(status_of(&rsps, 100 + id), [rsp::OKAY], "good request after {id}");
    }
    assert!(rig.grants.mapped.is_empty());
    assert!(rig.back.broken().is_none());
    assert_eq!(rig.back.stats.errors, cases.len() as u64);
    // A good indirect request still works afterwards.
    rig.push(&BlkifRequest::indirect(op::READ, 50, 0, 1, &[ok_page]));
    assert_eq!(rig.pump(), [response(50, op::READ, rsp::OKAY)]);
    // On a read-only disk an indirect write fails.
    let mut rig = Rig::new(DiskInfo { readonly: true, ..indirect_info(64) });
    let (g, _) = rig.grant(true, 1);
    let (p, _) = rig.indirect_page(&[(g, 0, 7)]);
    rig.push(&BlkifRequest::indirect(op::WRITE, 1, 0, 1, &[p]));
    assert_eq!(rig.pump(), [response(1, op::WRITE, rsp::ERROR)]);
    assert!(rig.disk.data.iter().all(|&b| b == 0));
}

#[test]
fn indirect_requests_are_refused_when_not_offered() {
    let mut rig = Rig::standard();
    let (g, _) = rig.grant(false, 0);
    let (p, _) = rig.indirect_page(&[(g, 0, 7)]);
    rig.push(&BlkifRequest::indirect(op::READ, 1, 0, 1, &[p]));
    assert_eq!(rig.pump(), [response(1, op::INDIRECT, rsp::EOPNOTSUPP)]);
    assert_eq!(rig.grants.copies, 0, "nothing read from the frontend");
}

// ---------------------------------------------------------------------------------------------
// Multi-page rings

#[test]
fn a_four_page_ring_holds_128_requests_in_flight() {
    let mut rig = Rig::multi_page(indirect_info(4096), 2);
    assert_eq!(rig.back.ring_size(), 128);
    rig.disk.limit = 1000;
    let mut mfns = Vec::new();
    for id in 0..128u64 {
        let (g, mfn) = rig.grant(true, id as u8);
        mfns.push(mfn);
        let mut r = rw(op::WRITE, id, id * 8, &[(g, 0, 7)]);
        if id % 2 == 1 {
            // Every other one indirect, so indirect requests sit in slots straddling pages.
            let (p, _) = rig.indirect_page(&[(g, 0, 7)]);
            r = BlkifRequest::indirect(op::WRITE, id, id * 8, 1, &[p]);
        }
        rig.push(&r);
    }
    let r = rig.service();
    assert_eq!(r.taken, 128, "a whole four-page ring taken in one round");
    assert_eq!(rig.back.in_flight(), 128);
    let rsps = rig.pump();
    let mut ids: Vec<u64> = rsps.iter().filter(|r| r.status == rsp::OKAY).map(|r| r.id).collect();
    ids.sort();
    assert_eq!(ids, (0..128).collect::<Vec<_>>());
    for id in 0..128usize {
        assert!(rig.disk.data[id * 4096..(id + 1) * 4096].iter().all(|&b| b == id as u8), "request {id}");
    }
    // The frontend cannot claim more than the 128 slots.
    let ring = rig.ring();
    let rsp_prod = ring.load_u32_acquire(RSP_PROD_OFFSET);
    ring.store_u32_release(REQ_PROD_OFFSET, rsp_prod.wrapping_add(129));
    rig.service();
    assert_eq!(rig.back.broken(), Some(RingError::Overflow));
}

#[test]
fn ring_pages_join_pages_into_one_area() {
    let pages: Vec<&'static AtomicPage> = (0..2).map(|_| &*Box::leak(Box::new(AtomicPage::new()))).collect();
    let mem = RingPages::new(pages.clone()).unwrap();
    let data: Vec<u8> = (0..200u8).collect();
    mem.write_bytes(4096 - 100, &data);
    assert_eq!(&pages[0].snapshot()[4096 - 100..], &data[..100]);
    assert_eq!(&pages[1].snapshot()[..100], &data[100..]);
    let mut back = vec![0u8; 200];
    mem.read_bytes(4096 - 100, &mut back);
    assert_eq!(back, data);
    mem.store_u32_release(4096 + 8, 0xdead_beef);
    assert_eq!(pages[1].load_u32_acquire(8), 0xdead_beef);
    assert!(RingPages::<&AtomicPage>::new(Vec::new()).is_err());
    // An order that cannot be a ring is refused.
    let mem = RingPages::new(vec![pages[0]]).unwrap();
    assert!(Blkback::multi_page(mem, 64, FE, indirect_info(8), 0).is_err());
}

proptest! {
    /// A frontend rewriting its ring page at will between services (indexes, requests with any
    /// grant references, sectors and operations, responses): blkback never panics, never
    /// sends the disk an out-of-range request (the fake disk asserts it), keeps at most a
    /// ring's worth in flight, writes nothing in the page but its header words and the
    /// responses it produced, leaves a broken ring alone, and once closed finishes what the
    /// disk has and releases every grant.
    #[test]
    fn survives_a_scribbling_frontend(raw in proptest::collection::vec(any::<pv_guest_kernel::split::fuzz::RawStep>(), 1..150)) {
        use hypercall_abi::io::blkif::BLK_RING_SIZE;
        use hypercall_abi::io::ring::slot_size;
        use pv_guest_kernel::split::fuzz::{apply, check_backend_writes, Scribble};
        let mut rig = Rig::new(DiskInfo { capacity: 256, readonly: false, flush: true, max_indirect_segments: 0 });
        for i in 0..16 {
            rig.grant(i % 3 == 0, i as u8);
        }
        let ring = rig.page();
        let slot = slot_size::<BlkifRequest, BlkifResponse>();
        for s in &raw.iter().map(Scribble::from_raw).collect::<Vec<_>>() {
            if !matches!(s, Scribble::Service) {
                apply(ring, s, slot);
                continue;
            }
            let was_broken = rig.back.broken().is_some();
            let before = ring.snapshot();
            let pvt0 = rig.back.ring.rsp_prod_pvt();
            rig.back.service(&mut rig.grants, &mut rig.disk);
            for (c, ok) in rig.disk.run(&mut rig.m) {
                rig.back.complete(&mut rig.grants, c, ok);
            }
            rig.back.service(&mut rig.grants, &mut rig.disk);
            let after = ring.snapshot();
            prop_assert!(rig.back.in_flight() <= BLK_RING_SIZE as usize);
            prop_assert!(rig.back.with_disk() <= rig.back.in_flight());
            if was_broken {
                prop_assert_eq!(&before[..], &after[..], "a broken ring is left alone");
            }
            let r = check_backend_writes(&before, &after, slot, BLK_RING_SIZE, (pvt0, rig.back.ring.rsp_prod_pvt()));
            prop_assert!(r.is_ok(), "{:?}", r);
        }
        rig.back.close();
        for _ in 0..4 {
            for (c, ok) in rig.disk.run(&mut rig.m) {
                rig.back.complete(&mut rig.grants, c, ok);
            }
            rig.back.service(&mut rig.grants, &mut rig.disk);
        }
        prop_assert!(rig.back.quiescent());
        prop_assert!(rig.grants.mapped.is_empty(), "{:?}", rig.grants.mapped);
    }

    /// Arbitrary request bytes (and a few good ones) never break the backend: each request
    /// taken gets exactly one response with its id, nothing stays mapped, nothing goes past
    /// the disk (the fake disk asserts that), and padding is zero.
    #[test]
    fn arbitrary_requests(reqs in proptest::collection::vec(
        (proptest::collection::vec(any::<u8>(), 112), any::<bool>(), 0u64..300), 1..80)) {
        let mut rig = Rig::new(DiskInfo { capacity: 256, readonly: false, flush: true, max_indirect_segments: 0 });
        let mut grefs = Vec::new();
        for i in 0..16 {
            grefs.push(rig.grant(i % 3 == 0, i as u8).0);
        }
        let mut sent = 0u64;
        let mut answered = 0u64;
        for (n, (bytes, sane, sector)) in reqs.iter().enumerate() {
            let mut r = BlkifRequest::read_from_bytes(&bytes[..]).unwrap();
            r.id = n as u64; // unique ids, so every response can be matched
            if *sane {
                // Mostly-valid requests: real grants, plausible sectors.
                r.operation %= 4;
                r.nr_segments = r.nr_segments % 11 + 1;
                r.sector_number = *sector;
                for (i, s) in r.seg.iter_mut().enumerate() {
                    s.gref = grefs[(i + n) % grefs.len()];
                    s.first_sect %= 8;
                    s.last_sect = s.first_sect.max(s.last_sect % 8);
                }
            }
            if rig.front.is_full() {
                let rsps = rig.pump();
                answered += rsps.len() as u64;
            }
            rig.push(&r);
            sent += 1;
            if n % 7 == 0 {
                for rsp in rig.pump() {
                    answered += 1;
                    let b = rsp.as_bytes();
                    prop_assert_eq!((b[9], &b[12..16]), (0, &[0u8; 4][..]));
                    prop_assert!(rsp.id < sent);
                }
            }
        }
        answered += rig.pump().len() as u64;
        prop_assert_eq!(answered, sent);
        prop_assert!(rig.grants.mapped.is_empty());
        prop_assert_eq!(rig.back.in_flight(), 0);
        prop_assert!(rig.back.broken().is_none());
    }

    /// Indirect requests with arbitrary headers and arbitrary descriptor pages: each gets one
    /// response (with the operation Linux expects), nothing past the disk, nothing left
    /// mapped, the ring never broken.
    #[test]
    fn arbitrary_indirect_requests(reqs in proptest::collection::vec(
        (any::<u8>(), 0u16..80, 0u64..300, proptest::collection::vec((0u32..24, any::<u8>(), any::<u8>()), 0..80), any::<bool>()), 1..40)) {
        let mut rig = Rig::new(indirect_info(256));
        let mut grefs = Vec::new();
        for i in 0..16 {
            grefs.push(rig.grant(i % 3 == 0, i as u8).0);
        }
        let mut sent = 0u64;
        let mut answered = Vec::new();
        for (n, (op_, nr, sector, descs, sane)) in reqs.iter().enumerate() {
            // Descriptors naming our grants (index < 16) or not; sane ones within the page.
            let segs: Vec<(GrantRef, u8, u8)> = descs
                .iter()
                .map(|&(g, f, l)| {
                    let gref = grefs.get(g as usize).copied().unwrap_or(GrantRef(9000 + g));
                    if *sane { (gref, f % 8, (f % 8).max(l % 8)) } else { (gref, f, l) }
                })
                .collect();
            let (page, _) = rig.indirect_page(&segs);
            let indirect_op = if *sane { op_ % 2 } else { *op_ };
            let r = BlkifRequest::indirect(indirect_op, n as u64, *sector, *nr, &[page, GrantRef(u32::from(*op_))]);
            if rig.front.is_full() {
                answered.extend(rig.pump());
            }
            rig.push(&r);
            sent += 1;
            if n % 5 == 0 {
                answered.extend(rig.pump());
            }
        }
        answered.extend(rig.pump());
        prop_assert_eq!(answered.len() as u64, sent);
        for r in &answered {
            let (op_, _, _, _, sane) = &reqs[r.id as usize];
            let want = if *sane { op_ % 2 } else { *op_ };
            prop_assert_eq!(r.operation, want);
            let b = r.as_bytes();
            prop_assert_eq!((b[9], &b[12..16]), (0, &[0u8; 4][..]));
        }
        prop_assert!(rig.grants.mapped.is_empty());
        prop_assert_eq!(rig.back.in_flight(), 0);
        prop_assert!(rig.back.broken().is_none());
    }
}
