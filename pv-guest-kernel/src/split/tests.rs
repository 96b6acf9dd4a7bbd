//! Host tests of the framework: both ends of a test device driven against the models, as
//! their watches would drive them — handshake order, hostile and missing keys, either end
//! leaving at any point, a broken ring, a dying peer — and after each, the model checks that
//! everything was released and no call was one the hypervisor would refuse.

use super::back::BackChannel;
use super::model::{Held, ModelPage, ModelStore, Side};
use super::*;
use hypercall_abi::io::ring::{RingError, REQ_PROD_OFFSET};
use hypercall_abi::io::xenbus::XenbusState::{self, *};
use proptest::prelude::*;

const FE_DIR: &str = "/local/domain/1/device/vtest/0";
const BE_DIR: &str = "/local/domain/0/backend/vtest/1/0";

type Entry = [u32; 4];

#[derive(Default)]
struct TestFront {
    /// What the backend's `feature-echo` read as when the frontend published its keys.
    saw_feature: Option<bool>,
    magic: Option<u64>,
    refuse: bool,
}

impl FrontendDriver for TestFront {
    type Req = Entry;
    type Rsp = Entry;
    fn publish<S: Store + ?Sized>(&mut self, backend: &mut Keys<'_, S>) -> Vec<(&'static str, String)> {
        self.saw_feature = Some(backend.flag("feature-echo"));
        vec![("feature-x", String::from("1"))]
    }
    fn connected<S: Store + ?Sized>(&mut self, backend: &mut Keys<'_, S>) -> Result<(), &'static str> {
        self.magic = backend.number("magic");
        if self.refuse || self.magic.is_none() {
            return Err("no magic");
        }
        Ok(())
    }
}

struct EchoConn {
    chan: BackChannel<ModelPage, Entry, Entry>,
    /// A multi-page ring's other pages (the echo uses the first).
    more_pages: Vec<ModelPage>,
    /// Work "with a device": the connection is not quiescent while it is non-zero.
    busy: u32,
}

#[derive(Default)]
struct TestBack {
    refuse: Option<&'static str>,
    connects: u32,
    disconnects: u32,
    /// `max_ring_page_order` offered, and the ring pages the last connection got.
    max_order: u32,
    last_pages: usize,
}

impl BackendDriver<ModelPage> for TestBack {
    type Conn = EchoConn;
    fn features(&mut self) -> Vec<(&'static str, String)> {
        vec![("feature-echo", String::from("1"))]
    }
    fn connect<S: Store + ?Sized>(
        &mut self,
        _frontend: DomId,
        rings: Vec<ModelPage>,
        keys: &mut Keys<'_, S>,
    ) -> Result<(EchoConn, Vec<(&'static str, String)>), (Vec<ModelPage>, &'static str)> {
        if let Some(why) = self.refuse {
            return Err((rings, why));
        }
        if !keys.flag("feature-x") {
            return Err((rings, "frontend lacks feature-x"));
        }
        self.last_pages = rings.len();
        let (ring, more_pages) = if self.max_order > 0 {
            let mut rings = rings;
            let first = rings.remove(0);
            (first, rings)
        } else {
            (back::one_ring(rings).map_err(|r| (r, "one ring"))?, Vec::new())
        };
        self.connects += 1;
        Ok((
            EchoConn { chan: BackChannel::new(ring), more_pages, busy: 0 },
            vec![("magic", String::from("42"))],
        ))
    }
    fn max_ring_page_order(&self) -> u32 {
        self.max_order
    }
    fn service(&mut self, c: &mut EchoConn) -> Served {
        c.chan.serve(4, |r| [r[0].wrapping_add(1), r[1], r[2], r[3]])
    }
    fn close(&mut self, c: &mut EchoConn) {
        c.chan.close();
    }
    fn quiescent(&self, c: &EchoConn) -> bool {
        c.busy == 0
    }
    fn broken(&self, c: &EchoConn) -> Option<RingError> {
        c.chan.broken()
    }
    fn disconnect(&mut self, c: EchoConn) -> Vec<ModelPage> {
        self.disconnects += 1;
        let mut pages = vec![c.chan.into_mem()];
        pages.extend(c.more_pages);
        pages
    }
}

struct Rig {
    s: ModelStore,
    fo: Side,
    bo: Side,
    fe: FrontDevice<ModelPage, TestFront>,
    be: BackDevice<ModelPage, TestBack>,
}

/// The toolstack's nodes, then both ends started.
fn rig_with(front: TestFront, back: TestBack) -> Rig {
    let mut s = ModelStore::default();
    for (k, v) in [("backend", BE_DIR), ("backend-id", "0"), ("state", "1")] {
        s.set(&format!("{FE_DIR}/{k}"), v);
    }
    for (k, v) in [("frontend", FE_DIR), ("frontend-id", "1"), ("state", "1")] {
        s.set(&format!("{BE_DIR}/{k}"), v);
    }
    let (fo, mut bo) = Side::pair();
    let mut be = BackDevice::new(DomId(1), BE_DIR, FE_DIR, "be:test", back);
    be.start(&mut s, &mut bo);
    let fe = FrontDevice::open(&mut s, FE_DIR, front).unwrap();
    Rig { s, fo, bo, fe, be }
}

fn rig() -> Rig {
    rig_with(TestFront::default(), TestBack::default())
}

impl Rig {
    /// Lets both ends react to each other until nothing changes (as their watches would).
    fn settle(&mut self) -> Vec<Result<FrontStatus, SplitError>> {
        let mut out = Vec::new();
        for _ in 0..20 {
            let before = (self.fe.dev.state(), self.be.dev.state(), self.fe.status(), self.be.port());
            out.push(self.fe.step(&mut self.s, &mut self.fo));
            self.be.on_watch(&mut self.s, &mut self.bo);
            self.be.service(&mut self.s, &mut self.bo);
            if before == (self.fe.dev.state(), self.be.dev.state(), self.fe.status(), self.be.port()) {
                return out;
            }
        }
        panic!("the handshake does not settle");
    }
    fn states(&self) -> (XenbusState, XenbusState) {
        (self.fe.dev.state(), self.be.dev.state())
    }
    fn nothing_held(&self) {
        assert_eq!(self.fo.held(), Held::default(), "frontend still holds");
        assert_eq!(self.bo.held(), Held::default(), "backend still holds");
        assert!(self.fo.world.borrow().violations.is_empty(), "{:?}", self.fo.world.borrow().violations);
    }
    fn notices(&mut self) -> Vec<Notice> {
        self.be.take_notices()
    }
    /// Pushes `n` requests and returns what the echo backend answered.
    fn round_trip(&mut self, n: u32) -> Vec<Entry> {
        let c = self.fe.channel().unwrap();
        for i in 0..n {
            c.push(&[i, 7, 7, 7]).unwrap();
        }
        c.kick(&mut self.fo);
        let mut out = Vec::new();
        for _ in 0..n {
            self.be.service(&mut self.s, &mut self.bo);
            while let Some(r) = self.fe.channel().unwrap().take().unwrap() {
                out.push(r);
            }
        }
        out
    }
}

#[test]
fn the_handshake_connects_in_xenbus_order() {
    let mut r = rig();
    assert_eq!(r.states(), (Initialising, InitWait), "the backend announces at once");
    r.settle();
    assert_eq!(r.states(), (Connected, Connected));
    assert_eq!(r.fe.status(), FrontStatus::Connected);
    assert_eq!(r.fe.driver.saw_feature, Some(true), "features are published before InitWait");
    assert_eq!(r.fe.driver.magic, Some(42));
    let at = |p: &str, v: Option<&str>| r.s.written_at(p, v).unwrap_or_else(|| panic!("{p} not written"));
    let f = |k: &str| format!("{FE_DIR}/{k}");
    let b = |k: &str| format!("{BE_DIR}/{k}");
    assert!(at(&b("feature-echo"), None) < at(&b("state"), Some("2")));
    for k in ["ring-ref", "event-channel", "protocol", "feature-x"] {
        assert!(at(&f(k), None) < at(&f("state"), Some("4")), "{k} after Connected");
    }
    assert!(at(&f("state"), Some("4")) < at(&b("magic"), None));
    assert!(at(&b("magic"), None) < at(&b("state"), Some("4")));
    assert_eq!(r.s.get(&f("protocol")), Some("x86_64-abi"));
    // The ring: granted by the frontend, mapped once by the backend; the port bound.
    assert_eq!(r.fo.held(), Held { pages: 1, grants: 1, maps: 0, ports: 1 });
    assert_eq!(r.bo.held(), Held { pages: 0, grants: 0, maps: 1, ports: 1 });
    let port = r.be.port().unwrap();
    assert!(r.bo.world.borrow().bound(DomId(0), port));
    assert_eq!(r.notices(), [Notice::Connected { port }]);
    assert!(r.s.watches.contains(&(format!("{FE_DIR}/state"), String::from("be:test"))));
    assert!(r.s.watches.contains(&(format!("{BE_DIR}/state"), r.fe.token())));
}

#[test]
fn requests_are_answered_with_notification_hold_off() {
    let mut r = rig();
    r.settle();
    let got = r.round_trip(10);
    assert_eq!(got.len(), 10);
    assert!(got.iter().enumerate().all(|(i, e)| e[0] == i as u32 + 1));
    let w = r.fo.world.borrow();
    // The backend was notified once (it then drained everything), the frontend as responses
    // crossed its rsp_event.
    let be_port = r.be.port().unwrap();
    assert_eq!(w.notified.iter().filter(|n| **n == (DomId(0), be_port)).count(), 1);
    assert!(w.notified.iter().any(|n| n.0 == DomId(1)));
}

#[test]
fn a_frontend_close_releases_everything_on_both_sides() {
    let mut r = rig();
    r.settle();
    r.round_trip(3);
    r.fe.close(&mut r.s);
    r.settle();
    assert_eq!(r.states(), (Closed, Closed));
    assert_eq!(r.fe.status(), FrontStatus::Closed);
    assert_eq!(r.fe.leaked, None);
    assert!(matches!(r.notices()[..], [Notice::Connected { .. }, Notice::Disconnected { unmapped: true }]));
    // The backend unmapped before it published Closing: the frontend's revoke succeeded.
    r.nothing_held();
    // The frontend stopped watching; the backend watches until the device is removed.
    assert_eq!(r.s.watches.len(), 1, "watches left: {:?}", r.s.watches);
    r.be.peer_gone(&mut r.s, &mut r.bo);
    assert!(r.s.watches.is_empty() && r.be.is_dead());
}

#[test]
fn the_backend_waits_for_work_in_flight_before_unmapping() {
    let mut r = rig();
    r.settle();
    set_busy(&mut r.be, 2);
    r.fe.close(&mut r.s);
    r.settle();
    assert_eq!(r.states(), (Closing, Connected), "no Closing before the work is done");
    assert_eq!(r.bo.held().maps, 1, "the ring stays mapped meanwhile");
    set_busy(&mut r.be, 0);
    r.be.service(&mut r.s, &mut r.bo);
    r.settle();
    assert_eq!(r.states(), (Closed, Closed));
    r.nothing_held();
}

/// Sets the echo connection's count of work "with the device".
fn set_busy(be: &mut BackDevice<ModelPage, TestBack>, n: u32) {
    be.conn_mut().unwrap().busy = n;
}

#[test]
fn the_backend_leaving_mid_handshake_ends_both_cleanly() {
    // Backend gone Closing before the frontend set anything up.
    let mut r = rig();
    r.be.dev.switch(&mut r.s, Closing).unwrap();
    let res = r.settle();
    assert_eq!(r.states(), (Closed, Closed));
    assert!(res.iter().all(|x| x.is_ok()));
    r.nothing_held();
    // Backend closing after the frontend published its ring but before connecting it.
    let mut r = rig();
    r.fe.step(&mut r.s, &mut r.fo).unwrap();
    assert_eq!(r.fo.held().grants, 1);
    r.be.dev.switch(&mut r.s, Closing).unwrap();
    r.settle();
    assert_eq!(r.states(), (Closed, Closed));
    r.nothing_held();
}

#[test]
fn a_backend_close_after_connecting_is_followed() {
    let mut r = rig();
    r.settle();
    r.be.shut(&mut r.s, &mut r.bo);
    assert!(r.be.is_dead());
    r.settle();
    assert_eq!(r.fe.status(), FrontStatus::Closed);
    r.nothing_held();
}

#[test]
fn hostile_or_missing_ring_keys_are_refused_and_nothing_is_mapped() {
    let cases: [(&str, Option<&str>, KeyError); 7] = [
        ("ring-ref", None, KeyError::BadRingRef),
        ("ring-ref", Some("-1"), KeyError::BadRingRef),
        ("ring-ref", Some("99999999999"), KeyError::BadRingRef),
        ("event-channel", Some("0"), KeyError::BadEventChannel),
        ("event-channel", Some("4096"), KeyError::BadEventChannel),
        ("protocol", Some("x86_32-abi"), KeyError::UnsupportedProtocol),
        ("ring-page-order", Some("2"), KeyError::MultiPageRing),
    ];
    for (key, value, want) in cases {
        let mut r = rig();
        // The frontend sets up honestly, then a hostile hand rewrites one key before the
        // backend reads them.
        r.fe.step(&mut r.s, &mut r.fo).unwrap();
        let path = format!("{FE_DIR}/{key}");
        match value {
            Some(v) => r.s.set(&path, v),
            None => {
                r.s.nodes.remove(&path);
            }
        }
        r.be.on_watch(&mut r.s, &mut r.bo);
        assert_eq!(r.notices(), [Notice::ConnectFailed(SplitError::Keys(want))], "{key}={value:?}");
        assert_eq!(r.be.dev.state(), Closing);
        assert_eq!(r.s.get(&format!("{BE_DIR}/error")), Some(want.as_str()));
        assert_eq!(r.bo.held(), Held::default(), "{key}: the backend kept something");
        r.settle();
        assert_eq!(r.fe.status(), FrontStatus::Closed);
        r.nothing_held();
    }
}

#[test]
fn a_ring_ref_naming_someone_elses_grant_or_a_read_only_one_is_refused() {
    for readonly in [false, true] {
        let mut r = rig();
        r.fe.step(&mut r.s, &mut r.fo).unwrap();
        let (page, mfn) = r.fo.alloc_page().unwrap();
        // A grant to another domain, or a read-only one to the backend.
        let to = if readonly { DomId(0) } else { DomId(5) };
        let g = r.fo.grant(to, mfn, readonly).unwrap();
        r.s.set(&format!("{FE_DIR}/ring-ref"), &format!("{}", g.0));
        r.be.on_watch(&mut r.s, &mut r.bo);
        assert_eq!(r.notices(), [Notice::ConnectFailed(SplitError::Os(Errno::EACCES))]);
        assert_eq!(r.bo.held(), Held::default());
        r.fo.end_grant(g).unwrap();
        r.fo.free_page(page);
        r.settle();
        r.nothing_held();
    }
}

#[test]
fn a_multi_page_ring_is_mapped_page_by_page_up_to_the_offered_order() {
    for (order, offered) in [(1u32, 2u32), (2, 2), (3, 2), (1, 0)] {
        let mut r = rig_with(TestFront::default(), TestBack { max_order: offered, ..Default::default() });
        r.fe.step(&mut r.s, &mut r.fo).unwrap();
        // The frontend's ring page is ring-ref0; the others are fresh pages granted to dom0.
        let g0 = r.s.get(&format!("{FE_DIR}/ring-ref")).unwrap().to_string();
        r.s.nodes.remove(&format!("{FE_DIR}/ring-ref"));
        r.s.set(&format!("{FE_DIR}/ring-page-order"), &format!("{order}"));
        r.s.set(&format!("{FE_DIR}/ring-ref0"), &g0);
        let mut extra = Vec::new();
        for i in 1..1u32 << order {
            let (page, mfn) = r.fo.alloc_page().unwrap();
            let g = r.fo.grant(DomId(0), mfn, false).unwrap();
            r.s.set(&format!("{FE_DIR}/ring-ref{i}"), &format!("{}", g.0));
            extra.push((page, g));
        }
        r.be.on_watch(&mut r.s, &mut r.bo);
        if order <= offered {
            assert!(matches!(r.notices()[..], [Notice::Connected { .. }]), "order {order}");
            assert_eq!(r.be.driver.last_pages, 1 << order);
            assert_eq!(r.bo.held().maps, 1 << order, "every page mapped");
            // The echo still works over the first page.
            assert_eq!(r.round_trip(3).len(), 3);
        } else {
            assert_eq!(r.notices(), [Notice::ConnectFailed(SplitError::Keys(KeyError::MultiPageRing))]);
            assert_eq!(r.bo.held(), Held::default(), "nothing mapped for a refused order");
        }
        r.fe.close(&mut r.s);
        r.settle();
        assert_eq!(r.bo.held(), Held::default(), "order {order}: every page unmapped");
        for (page, g) in extra {
            r.fo.end_grant(g).unwrap();
            r.fo.free_page(page);
        }
        r.nothing_held();
    }
    // A missing page of the set is a bad ring-ref.
    let mut r = rig_with(TestFront::default(), TestBack { max_order: 2, ..Default::default() });
    r.fe.step(&mut r.s, &mut r.fo).unwrap();
    let g0 = r.s.get(&format!("{FE_DIR}/ring-ref")).unwrap().to_string();
    r.s.set(&format!("{FE_DIR}/ring-page-order"), "1");
    r.s.set(&format!("{FE_DIR}/ring-ref0"), &g0);
    r.be.on_watch(&mut r.s, &mut r.bo);
    assert_eq!(r.notices(), [Notice::ConnectFailed(SplitError::Keys(KeyError::BadRingRef))]);
    assert_eq!(r.bo.held(), Held::default());
    for bad in [&b"x"[..], b"-1", b"99999999999999999999999"] {
        assert_eq!(parse_ring_page_order(Some(bad), 4), Err(KeyError::MultiPageRing));
    }
    assert_eq!(parse_ring_page_order(None, 0), Ok(0));
    assert_eq!(parse_ring_page_order(Some(b"4"), 4), Ok(4));
}

#[test]
fn a_refusing_driver_gets_the_ring_unmapped_and_the_port_closed() {
    let mut r = rig_with(TestFront::default(), TestBack { refuse: Some("no thanks"), ..Default::default() });
    r.settle();
    assert_eq!(r.notices(), [Notice::ConnectFailed(SplitError::Driver("no thanks"))]);
    assert_eq!(r.states(), (Closed, Closed));
    r.nothing_held();
    // A frontend driver refusing the backend's keys closes too.
    let mut r = rig_with(TestFront { refuse: true, ..Default::default() }, TestBack::default());
    let res = r.settle();
    assert!(res.contains(&Err(SplitError::Driver("no magic"))));
    assert_eq!(r.states(), (Closed, Closed));
    r.nothing_held();
}

#[test]
fn failures_while_setting_up_leave_nothing_behind() {
    for op in ["alloc_page", "grant", "alloc_unbound", "map_ring", "bind_interdomain"] {
        let mut r = rig();
        r.fo.world.borrow_mut().fail = Some(op);
        r.settle();
        assert_eq!(r.states(), (Closed, Closed), "{op}");
        r.nothing_held();
    }
    // Writing the keys fails (the frontend's directory is not writable).
    let mut r = rig();
    r.s.deny_prefix = Some(format!("{FE_DIR}/ring-ref"));
    assert_eq!(r.fe.step(&mut r.s, &mut r.fo), Err(SplitError::Os(Errno::EACCES)));
    r.s.deny_prefix = None;
    r.settle();
    r.nothing_held();
}

#[test]
fn a_frontend_breaking_the_ring_is_disconnected() {
    let mut r = rig();
    r.settle();
    let page = r.fe.channel().unwrap().mem.clone();
    page.store_u32_release(REQ_PROD_OFFSET, 1000);
    let port = r.be.port().unwrap();
    r.be.service(&mut r.s, &mut r.bo);
    assert_eq!(
        r.notices(),
        [
            Notice::Connected { port },
            Notice::Broken(RingError::Overflow),
            Notice::Disconnected { unmapped: true }
        ]
    );
    assert_eq!(r.be.dev.state(), Closing);
    r.settle();
    assert_eq!(r.states(), (Closed, Closed));
    r.nothing_held();
}

#[test]
fn a_dead_frontend_domain_is_released() {
    let mut r = rig();
    r.settle();
    set_busy(&mut r.be, 1);
    r.be.peer_gone(&mut r.s, &mut r.bo);
    assert!(!r.be.is_dead(), "work in flight keeps the ring mapped");
    assert_eq!(r.bo.held().maps, 1);
    set_busy(&mut r.be, 0);
    r.be.service(&mut r.s, &mut r.bo);
    assert!(r.be.is_dead());
    assert_eq!(r.bo.held(), Held::default());
    // What the hypervisor does for a destroyed domain: its grants and pages go away.
    r.fe.abandon(&mut r.s, &mut r.fo);
    r.nothing_held();
}

#[test]
fn a_frontend_abandoning_a_mapped_ring_reports_the_leak_and_keeps_the_page() {
    let mut r = rig();
    r.settle();
    let gref = r.fe.channel().unwrap().gref();
    r.fe.abandon(&mut r.s, &mut r.fo);
    assert_eq!(r.fe.leaked, Some(gref));
    assert_eq!(r.fo.held().pages, 1, "a page the backend maps is never freed");
    assert!(r.fo.world.borrow().violations.is_empty());
}

#[test]
fn an_unknown_backend_is_no_device() {
    let mut s = ModelStore::default();
    let (_, _) = Side::pair();
    assert_eq!(
        FrontDevice::<ModelPage, _>::open(&mut s, FE_DIR, TestFront::default()).err(),
        Some(SplitError::NoDevice)
    );
    for (backend, id) in [("", "0"), ("relative", "0"), (BE_DIR, "x"), (BE_DIR, "70000"), (BE_DIR, "32752")] {
        s.set(&format!("{FE_DIR}/backend"), backend);
        s.set(&format!("{FE_DIR}/backend-id"), id);
        let e = FrontDevice::<ModelPage, _>::open(&mut s, FE_DIR, TestFront::default()).err();
        assert_eq!(e, Some(SplitError::NoDevice), "{backend} {id}");
    }
}

#[test]
fn ring_keys_are_parsed_strictly() {
    let ok = parse_ring_keys(Some(b"8"), Some(b"5"), Some(b"x86_64-abi"), None);
    assert_eq!(ok, Ok(RingKeys { ring_ref: GrantRef(8), port: Port(5) }));
    assert!(parse_ring_keys(Some(b"8\0"), Some(b"5"), None, Some(b"0")).is_ok());
    for bad in [&b""[..], b"-1", b" 8", b"8 ", b"0x8", b"4294967296", b"99999999999999999999999"] {
        assert_eq!(parse_ring_keys(Some(bad), Some(b"5"), None, None), Err(KeyError::BadRingRef), "{bad:?}");
    }
    for bad in [&b"0"[..], b"4096", b"", b"1e3"] {
        assert_eq!(parse_ring_keys(Some(b"8"), Some(bad), None, None), Err(KeyError::BadEventChannel));
    }
}

#[test]
fn follow_walks_a_ringless_device_both_ways() {
    use crate::xenbus::state::{Role, Step, XenbusDevice};
    let mut s = ModelStore::default();
    s.set(&format!("{FE_DIR}/state"), "1");
    s.set(&format!("{BE_DIR}/state"), "1");
    let mut be = XenbusDevice::new(Role::Backend, BE_DIR, FE_DIR);
    let mut fe = XenbusDevice::new(Role::Frontend, FE_DIR, BE_DIR);
    be.load(&mut s);
    fe.load(&mut s);
    assert_eq!(follow(&mut be, &mut s, |_| true), Ok(vec![InitWait]));
    // A frontend that is not ready yet leaves its state alone.
    assert_eq!(follow(&mut fe, &mut s, |st| st != Step::Connect), Ok(vec![]));
    let mut did = Vec::new();
    assert_eq!(
        follow(&mut fe, &mut s, |st| {
            did.push(st);
            true
        }),
        Ok(vec![Connected])
    );
    assert_eq!(did, [Step::Connect]);
    assert_eq!(follow(&mut be, &mut s, |_| true), Ok(vec![Connected]));
    fe.switch(&mut s, Closing).unwrap();
    // The backend follows to Closing and waits there for the frontend to be Closed.
    assert_eq!(follow(&mut be, &mut s, |_| true), Ok(vec![Closing]));
    assert_eq!(follow(&mut fe, &mut s, |_| true), Ok(vec![Closed]));
    assert_eq!(follow(&mut be, &mut s, |_| true), Ok(vec![Closed]));
    assert_eq!(follow(&mut be, &mut s, |_| true), Ok(vec![]));
    // A state that cannot be written is reported with its step.
    let mut be = XenbusDevice::new(Role::Backend, BE_DIR, FE_DIR);
    s.set(&format!("{BE_DIR}/state"), "1");
    s.set(&format!("{FE_DIR}/state"), "1");
    be.load(&mut s);
    s.deny_prefix = Some(String::from(BE_DIR));
    assert_eq!(follow(&mut be, &mut s, |_| true), Err((Step::Announce, Errno::EACCES)));
}

fn any_state() -> impl Strategy<Value = XenbusState> {
    (0u32..9).prop_map(|v| XenbusState::from_u32(v).unwrap())
}

proptest! {
    /// A frontend rewriting its ring page at will between services (indexes, requests,
    /// responses, anything) never makes `BackChannel` panic, take more than its budget, answer
    /// what it did not take, or write anything but its own header words and the response
    /// slots it produced; once it has found the ring broken it reads and writes nothing more.
    #[test]
    fn back_channel_survives_a_scribbling_frontend(raw in proptest::collection::vec(any::<super::fuzz::RawStep>(), 1..120)) {
        use hypercall_abi::io::ring::{slot_size, AtomicPage, SharedRing};
        const BUDGET: u32 = 8;
        let page = AtomicPage::new();
        SharedRing::init(&page);
        let mut chan: BackChannel<&AtomicPage, Entry, Entry> = BackChannel::new(&page);
        let slot = slot_size::<Entry, Entry>();
        for s in &raw.iter().map(super::fuzz::Scribble::from_raw).collect::<Vec<_>>() {
            if !matches!(s, super::fuzz::Scribble::Service) {
                super::fuzz::apply(&page, s, slot);
                continue;
            }
            let was_broken = chan.broken().is_some();
            let before = page.snapshot();
            let pvt0 = chan.ring.rsp_prod_pvt();
            let served = chan.serve(BUDGET, |r| [r[0].wrapping_add(1), r[1], r[2], r[3]]);
            let after = page.snapshot();
            prop_assert!(served.taken <= BUDGET);
            prop_assert!(served.answered <= served.taken);
            if was_broken {
                prop_assert_eq!(served.taken, 0);
                prop_assert_eq!(&before[..], &after[..], "a broken ring is left alone");
            }
            let size = chan.ring.size();
            let r = super::fuzz::check_backend_writes(&before, &after, slot, size, (pvt0, chan.ring.rsp_prod_pvt()));
            prop_assert!(r.is_ok(), "{:?}", r);
        }
    }

    #[test]
    fn decimal_parsing_round_trips_and_rejects_junk(v: u64, junk in proptest::collection::vec(any::<u8>(), 0..24)) {
        prop_assert_eq!(parse_decimal(format!("{v}").as_bytes()), Some(v));
        if let Some(n) = parse_decimal(&junk) {
            let s = core::str::from_utf8(junk.strip_suffix(b"\0").unwrap_or(&junk)).unwrap();
            prop_assert_eq!(s.parse::<u64>().ok(), Some(n));
            prop_assert!(s.bytes().all(|b| b.is_ascii_digit()));
        }
    }

    /// A frontend writing any sequence of states (and garbage) into its node never makes the
    /// backend map twice, misuse a call, or keep anything once the domain is gone.
    #[test]
    fn a_backend_survives_any_frontend_state_walk(walk in proptest::collection::vec((any_state(), any::<bool>()), 1..25)) {
        let mut r = rig();
        for (st, honest_step) in walk {
            if honest_step {
                let _ = r.fe.step(&mut r.s, &mut r.fo);
            } else {
                r.s.set(&format!("{FE_DIR}/state"), st.as_str());
            }
            r.be.on_watch(&mut r.s, &mut r.bo);
            r.be.service(&mut r.s, &mut r.bo);
            prop_assert!(r.bo.held().maps <= 1 && r.bo.held().ports <= 1);
            prop_assert!(r.be.driver.connects <= 1, "connected twice");
        }
        r.be.peer_gone(&mut r.s, &mut r.bo);
        prop_assert!(r.be.is_dead());
        prop_assert_eq!(r.bo.held(), Held::default());
        r.fe.abandon(&mut r.s, &mut r.fo);
        prop_assert_eq!(r.fo.held().grants, 0);
        prop_assert!(r.fo.world.borrow().violations.is_empty());
    }

    /// Likewise for a backend jumping between states under a frontend.
    #[test]
    fn a_frontend_survives_any_backend_state_walk(walk in proptest::collection::vec(any_state(), 1..25)) {
        let mut r = rig();
        for st in walk {
            r.s.set(&format!("{BE_DIR}/state"), st.as_str());
            let _ = r.fe.step(&mut r.s, &mut r.fo);
            prop_assert!(r.fo.held().pages <= 1 && r.fo.held().grants <= 1 && r.fo.held().ports <= 1);
        }
        r.fe.abandon(&mut r.s, &mut r.fo);
        prop_assert_eq!(r.fo.held(), Held::default());
        prop_assert!(r.fo.world.borrow().violations.is_empty());
    }
}

/// A device with two rings (as netif's tx and rx) on one event channel.
mod two_rings {
    use super::*;

    const RINGS: &[&str] = &["tx-ring-ref", "rx-ring-ref"];

    struct Front;
    impl FrontendDriver for Front {
        type Req = Entry;
        type Rsp = Entry;
        const RINGS: &'static [&'static str] = RINGS;
    }

    #[derive(Default)]
    struct Back {
        /// Frames of the rings the last connection got, in order.
        mapped: Vec<Mfn>,
        refuse: bool,
    }

    struct Conn {
        rings: Vec<ModelPage>,
    }

    impl BackendDriver<ModelPage> for Back {
        type Conn = Conn;
        const RINGS: &'static [&'static str] = RINGS;
        fn connect<S: Store + ?Sized>(
            &mut self,
            _frontend: DomId,
            rings: Vec<ModelPage>,
            _keys: &mut Keys<'_, S>,
        ) -> Result<(Conn, Vec<(&'static str, String)>), (Vec<ModelPage>, &'static str)> {
            self.mapped = rings.iter().map(|r| r.mfn).collect();
            if self.refuse {
                return Err((rings, "refused"));
            }
            Ok((Conn { rings }, Vec::new()))
        }
        fn service(&mut self, _c: &mut Conn) -> Served {
            Served::default()
        }
        fn broken(&self, _c: &Conn) -> Option<RingError> {
            None
        }
        fn disconnect(&mut self, c: Conn) -> Vec<ModelPage> {
            c.rings
        }
    }

    fn rig(
        back: Back,
    ) -> (ModelStore, Side, Side, FrontDevice<ModelPage, Front>, BackDevice<ModelPage, Back>) {
        let mut s = ModelStore::default();
        for (k, v) in [("backend", BE_DIR), ("backend-id", "0"), ("state", "1")] {
            s.set(&format!("{FE_DIR}/{k}"), v);
        }
        for (k, v) in [("frontend", FE_DIR), ("frontend-id", "1"), ("state", "1")] {
            s.set(&format!("{BE_DIR}/{k}"), v);
        }
        let (mut fo, mut bo) = Side::pair();
        let mut be = BackDevice::new(DomId(1), BE_DIR, FE_DIR, "be:two", back);
        be.start(&mut s, &mut bo);
        let mut fe = FrontDevice::open(&mut s, FE_DIR, Front).unwrap();
        let _ = fe.step(&mut s, &mut fo);
        (s, fo, bo, fe, be)
    }

    fn settle(
        s: &mut ModelStore,
        fo: &mut Side,
        bo: &mut Side,
        fe: &mut FrontDevice<ModelPage, Front>,
        be: &mut BackDevice<ModelPage, Back>,
    ) {
        for _ in 0..8 {
            let _ = fe.step(s, fo);
            be.on_watch(s, bo);
        }
    }

    #[test]
    fn both_rings_are_published_mapped_in_order_and_released() {
        let (mut s, mut fo, mut bo, mut fe, mut be) = rig(Back::default());
        settle(&mut s, &mut fo, &mut bo, &mut fe, &mut be);
        assert_eq!(fe.status(), FrontStatus::Connected);
        assert_eq!(s.get(&format!("{FE_DIR}/ring-ref")), None, "no ring-ref for a two-ring device");
        let c = fe.channel().unwrap();
        let (tx, rx) = (c.gref(), c.extra_grefs()[0]);
        assert_eq!(s.get(&format!("{FE_DIR}/tx-ring-ref")), Some(format!("{}", tx.0).as_str()));
        assert_eq!(s.get(&format!("{FE_DIR}/rx-ring-ref")), Some(format!("{}", rx.0).as_str()));
        let c = fe.channel().unwrap();
        assert_eq!(be.driver.mapped, [c.mem.mfn, c.extra[0].mfn], "mapped in RINGS order");
        assert_eq!(fo.held(), Held { pages: 2, grants: 2, maps: 0, ports: 1 });
        assert_eq!(bo.held(), Held { pages: 0, grants: 0, maps: 2, ports: 1 });
        fe.close(&mut s);
        settle(&mut s, &mut fo, &mut bo, &mut fe, &mut be);
        assert_eq!(fe.status(), FrontStatus::Closed);
        assert_eq!(fe.leaked, None);
        assert!(be.take_notices().contains(&Notice::Disconnected { unmapped: true }));
        assert_eq!((fo.held(), bo.held()), (Held::default(), Held::default()));
        assert!(fo.world.borrow().violations.is_empty());
    }

    #[test]
    fn a_bad_second_ring_ref_maps_nothing() {
        for bad in ["", "x", "99999999999"] {
            let (mut s, mut fo, mut bo, mut fe, mut be) = rig(Back::default());
            s.set(&format!("{FE_DIR}/rx-ring-ref"), bad);
            be.on_watch(&mut s, &mut bo);
            assert_eq!(be.take_notices(), [Notice::ConnectFailed(SplitError::Keys(KeyError::BadRingRef))]);
            assert_eq!(bo.held(), Held::default());
            settle(&mut s, &mut fo, &mut bo, &mut fe, &mut be);
            assert_eq!((fo.held(), bo.held()), (Held::default(), Held::default()));
        }
        // A second grant that is not the backend's to map: the first ring is unmapped again.
        let (mut s, mut fo, mut bo, mut fe, mut be) = rig(Back::default());
        let (page, mfn) = fo.alloc_page().unwrap();
        let g = fo.grant(DomId(5), mfn, false).unwrap();
        s.set(&format!("{FE_DIR}/rx-ring-ref"), &format!("{}", g.0));
        be.on_watch(&mut s, &mut bo);
        assert_eq!(be.take_notices(), [Notice::ConnectFailed(SplitError::Os(Errno::EACCES))]);
        assert_eq!(bo.held(), Held::default());
        fo.end_grant(g).unwrap();
        fo.free_page(page);
        settle(&mut s, &mut fo, &mut bo, &mut fe, &mut be);
        assert_eq!((fo.held(), bo.held()), (Held::default(), Held::default()));
        assert!(fo.world.borrow().violations.is_empty());
    }

    #[test]
    fn a_refusing_driver_gets_both_rings_unmapped() {
        let (mut s, mut fo, mut bo, mut fe, mut be) = rig(Back { refuse: true, ..Default::default() });
        settle(&mut s, &mut fo, &mut bo, &mut fe, &mut be);
        assert_eq!(be.driver.mapped.len(), 2);
        assert_eq!(fe.status(), FrontStatus::Closed);
        assert_eq!((fo.held(), bo.held()), (Held::default(), Held::default()));
    }

    #[test]
    fn a_failure_setting_up_the_second_ring_releases_the_first() {
        let (mut s, mut fo, mut bo, _, _) = rig(Back::default());
        // A fresh frontend whose second grant fails.
        let dir = "/local/domain/1/device/vtest/1";
        for (k, v) in [("backend", BE_DIR), ("backend-id", "0"), ("state", "1")] {
            s.set(&format!("{dir}/{k}"), v);
        }
        let mut fe = FrontDevice::open(&mut s, dir, Front).unwrap();
        let before = fo.held();
        fo.world.borrow_mut().fail = Some("alloc_unbound");
        assert!(fe.step(&mut s, &mut fo).is_err());
        assert_eq!(fo.held(), before, "both pages and grants released");
        let _ = &mut bo;
        assert!(fo.world.borrow().violations.is_empty());
    }

    #[test]
    fn one_ring_takes_exactly_one() {
        assert_eq!(back::one_ring(vec![7]), Ok(7));
        assert_eq!(back::one_ring(Vec::<u8>::new()), Err(vec![]));
        assert_eq!(back::one_ring(vec![1, 2]), Err(vec![1, 2]));
    }
}
