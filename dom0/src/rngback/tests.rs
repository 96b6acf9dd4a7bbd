//! Host tests of the random-number backend: every request shape against a fake device and
//! grant table, and the whole device on the split framework's models.

use super::*;
use hypercall_abi::io::ring::{AtomicPage, REQ_PROD_OFFSET};
use hypercall_abi::io::rngif::RngFrontRing;
use proptest::prelude::*;

/// A device of counting bytes and a grant table of two writable grants and a read-only one.
#[derive(Default)]
struct FakeHost {
    staged: Vec<u8>,
    next: u8,
    /// (gref, offset, bytes) of every copy made.
    copies: Vec<(u32, u16, Vec<u8>)>,
    broken_device: bool,
}

impl RngHost for FakeHost {
    fn fill(&mut self, len: usize) -> Result<(), Errno> {
        if self.broken_device {
            return Err(Errno::EIO);
        }
        self.staged = (0..len)
            .map(|_| {
                self.next = self.next.wrapping_add(1);
                self.next
            })
            .collect();
        Ok(())
    }
    fn copy_out(&mut self, frontend: DomId, gref: GrantRef, offset: u16, len: u16) -> Result<(), i16> {
        // Grants 8 and 9 are writable grants of d1; 10 is read-only; others unknown.
        if frontend != DomId(1) || !(8..=9).contains(&gref.0) {
            return Err(-1);
        }
        self.copies.push((gref.0, offset, self.staged[..len as usize].to_vec()));
        Ok(())
    }
}

fn req(id: u64, gref: u32, offset: u16, len: u16) -> RngRequest {
    RngRequest { id, gref: GrantRef(gref), offset, len }
}

fn connected() -> (&'static AtomicPage, RngFrontRing, RngDriver<FakeHost>, RngConn<&'static AtomicPage>) {
    let page: &'static AtomicPage = Box::leak(Box::new(AtomicPage::new()));
    let front = RngFrontRing::init(page);
    let mut d = RngDriver::new(FakeHost::default());
    let mut store = NoStore;
    let (conn, keys) = d.connect(DomId(1), alloc::vec![page], &mut Keys::new(&mut store, "/x")).ok().unwrap();
    assert_eq!(keys, [("max-request", String::from("4096"))]);
    (page, front, d, conn)
}

struct NoStore;
impl Store for NoStore {
    fn read_node(&mut self, _: &str) -> Result<Vec<u8>, Errno> {
        Err(Errno::ENOENT)
    }
    fn write_node(&mut self, _: &str, _: &[u8]) -> Result<(), Errno> {
        Err(Errno::EACCES)
    }
}

fn exchange(
    page: &'static AtomicPage,
    front: &mut RngFrontRing,
    d: &mut RngDriver<FakeHost>,
    c: &mut RngConn<&'static AtomicPage>,
    reqs: &[RngRequest],
) -> Vec<RngResponse> {
    for r in reqs {
        front.push_request(page, r).unwrap();
    }
    front.push_requests(page);
    d.service(c);
    let mut out = Vec::new();
    while let Some(r) = front.take_response(page).unwrap() {
        out.push(r);
    }
    out
}

#[test]
fn good_requests_get_device_bytes_in_their_grant() {
    let (page, mut front, mut d, mut c) = connected();
    let rsps = exchange(page, &mut front, &mut d, &mut c, &[req(1, 8, 0, 4096), req(2, 9, 100, 16)]);
    assert_eq!(rsps, [RngResponse::ok(1, 4096), RngResponse::ok(2, 16)]);
    assert_eq!(d.host.copies.len(), 2);
    assert_eq!((d.host.copies[1].0, d.host.copies[1].1, d.host.copies[1].2.len()), (9, 100, 16));
    assert_eq!(c.stats, RngStats { requests: 2, bytes: 4112, errors: 0 });
}

#[test]
fn bad_requests_get_errors_and_good_ones_around_them_still_work() {
    let (page, mut front, mut d, mut c) = connected();
    let cases = [
        (req(10, 8, 0, 0), Errno::EINVAL),
        (req(11, 8, 0, 4097), Errno::EINVAL),
        (req(12, 8, 4000, 200), Errno::EINVAL),
        (req(13, 8, u16::MAX, 1), Errno::EINVAL),
        (req(14, 10, 0, 64), Errno::EFAULT),
        (req(15, 4000, 0, 64), Errno::EFAULT),
    ];
    for (bad, e) in cases {
        let rsps = exchange(page, &mut front, &mut d, &mut c, &[bad, req(99, 8, 0, 8)]);
        assert_eq!(rsps, [RngResponse::error(bad.id, e), RngResponse::ok(99, 8)], "{bad:?}");
    }
    // Nothing was copied for a refused request.
    assert!(d.host.copies.iter().all(|(g, _, b)| *g == 8 && b.len() == 8));
    d.host.broken_device = true;
    assert_eq!(
        exchange(page, &mut front, &mut d, &mut c, &[req(7, 8, 0, 1)]),
        [RngResponse::error(7, Errno::EIO)]
    );
    assert_eq!(c.stats.errors, 7);
}

#[test]
fn a_producer_running_ahead_breaks_the_ring() {
    let (page, _front, mut d, mut c) = connected();
    page.store_u32_release(REQ_PROD_OFFSET, RNG_RING_SIZE + 5);
    let s = d.service(&mut c);
    assert_eq!((s.taken, s.answered), (0, 0));
    assert_eq!(d.broken(&c), Some(RingError::Overflow));
    assert!(d.host.copies.is_empty());
    let _mem = d.disconnect(c);
    assert_eq!(d.last, Some(RngStats::default()));
}

/// The whole device on the framework's models: toolstack nodes, handshake, a read, a
/// frontend close, and nothing left held on either side.
#[test]
fn end_to_end_on_the_framework_models() {
    use pv_guest_kernel::split::model::{Held, ModelPage, ModelStore, Side};
    use pv_guest_kernel::split::{BackDevice, FrontDevice, FrontStatus, FrontendDriver, Notice};
    struct Front;
    impl FrontendDriver for Front {
        type Req = RngRequest;
        type Rsp = RngResponse;
    }
    let (fe_dir, be_dir) = ("/local/domain/1/device/vrng/0", "/local/domain/0/backend/vrng/1/0");
    let mut s = ModelStore::default();
    for (k, v) in [("backend", be_dir), ("backend-id", "0"), ("state", "1")] {
        s.set(&format!("{fe_dir}/{k}"), v);
    }
    for (k, v) in [("frontend", fe_dir), ("frontend-id", "1"), ("state", "1")] {
        s.set(&format!("{be_dir}/{k}"), v);
    }
    let (mut fo, mut bo) = Side::pair();
    let mut be: BackDevice<ModelPage, _> =
        BackDevice::new(DomId(1), be_dir, fe_dir, "vrng:1", RngDriver::new(FakeHost::default()));
    be.start(&mut s, &mut bo);
    let mut fe: FrontDevice<ModelPage, Front> = FrontDevice::open(&mut s, fe_dir, Front).unwrap();
    for _ in 0..4 {
        let _ = fe.step(&mut s, &mut fo);
        be.on_watch(&mut s, &mut bo);
    }
    assert_eq!(fe.status(), FrontStatus::Connected);
    assert_eq!(s.get(&format!("{be_dir}/max-request")), Some("4096"));
    let c = fe.channel().unwrap();
    c.push(&req(1, 8, 0, 100)).unwrap();
    c.push(&req(2, 8, 0, 0)).unwrap();
    c.kick(&mut fo);
    be.service(&mut s, &mut bo);
    let c = fe.channel().unwrap();
    assert_eq!(c.take().unwrap(), Some(RngResponse::ok(1, 100)));
    assert_eq!(c.take().unwrap(), Some(RngResponse::error(2, Errno::EINVAL)));
    fe.close(&mut s);
    for _ in 0..4 {
        be.on_watch(&mut s, &mut bo);
        let _ = fe.step(&mut s, &mut fo);
    }
    assert_eq!(fe.status(), FrontStatus::Closed);
    assert!(be.take_notices().contains(&Notice::Disconnected { unmapped: true }));
    assert_eq!(be.driver.last, Some(RngStats { requests: 2, bytes: 100, errors: 1 }));
    assert_eq!((fo.held(), bo.held()), (Held::default(), Held::default()));
}

proptest! {
    /// A frontend rewriting its ring page at will between services: the backend never
    /// panics, copies only pieces it checked (inside the page, 1..=4096 bytes), and writes
    /// nothing in the page but its header words and the responses it produced.
    #[test]
    fn survives_a_scribbling_frontend(raw in proptest::collection::vec(any::<pv_guest_kernel::split::fuzz::RawStep>(), 1..120)) {
        use hypercall_abi::io::ring::slot_size;
        use pv_guest_kernel::split::fuzz::{apply, check_backend_writes, Scribble};
        let (page, _front, mut d, mut c) = connected();
        let slot = slot_size::<RngRequest, RngResponse>();
        for s in &raw.iter().map(Scribble::from_raw).collect::<Vec<_>>() {
            if !matches!(s, Scribble::Service) {
                apply(page, s, slot);
                continue;
            }
            let before = page.snapshot();
            let pvt0 = c.chan.ring.rsp_prod_pvt();
            let served = d.service(&mut c);
            prop_assert!(served.taken <= RNG_RING_SIZE);
            let r = check_backend_writes(&before, &page.snapshot(), slot, c.chan.ring.size(), (pvt0, c.chan.ring.rsp_prod_pvt()));
            prop_assert!(r.is_ok(), "{:?}", r);
        }
        for (_, off, bytes) in &d.host.copies {
            prop_assert!(!bytes.is_empty() && usize::from(*off) + bytes.len() <= 4096);
        }
    }

    /// Whatever the request, the response answers its id, and bytes are copied exactly
    /// when it lies in a page and the grant is good, never outside the piece asked for.
    #[test]
    fn any_request_is_answered_and_checked(id: u64, gref in 6u32..12, offset: u16, len: u16) {
        let mut d = RngDriver::new(FakeHost::default());
        let mut st = RngStats::default();
        let r = d.handle(DomId(1), &req(id, gref, offset, len), &mut st);
        prop_assert_eq!(r.id, id);
        let good = len > 0 && offset as usize + len as usize <= 4096 && (8..=9).contains(&gref);
        prop_assert_eq!(r.status == 0, good);
        prop_assert_eq!(r.len, if good { u32::from(len) } else { 0 });
        prop_assert_eq!(d.host.copies.len(), usize::from(good));
        for (_, off, bytes) in &d.host.copies {
            prop_assert_eq!((*off, bytes.len()), (offset, len as usize));
        }
    }
}
