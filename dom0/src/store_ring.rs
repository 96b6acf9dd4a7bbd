//! xenstored's side of a domain's xenstore ring page: requests are taken from `req` and fed
//! to the store ([`Xenstore::feed`]), replies and watch events are copied into `rsp` as room
//! allows, and the ring's control fields follow `xenstore-ring.txt`: the server advertises
//! ring reconnection and the error indicator, answers a guest's reconnect request by emptying
//! both queues (the store forgets the connection's watches and transactions), and reports a
//! protocol violation or corrupt indexes in `error` before ignoring the ring.
//!
//! Nothing is trusted: a request only leaves the ring once the store took it (the rest stays
//! as back-pressure), output only goes where the guest has room, and indexes the guest made
//! inconsistent stop the connection instead of being used.

use hypercall_abi::io::xs_wire::{self, connection, ring_error, server_feature};
use hypercall_abi::{DomId, Port};
use pv_guest_kernel::xenbus::ring::{ByteRing, SharedPage};

use crate::xenstore::{ConnId, FeedError, Xenstore};

/// Requests one [`StoreRing::service`] pass handles at most.
pub const MESSAGES_PER_PASS: usize = 16;

/// What a pass over the ring did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Serviced {
    /// Indexes or control fields changed: the guest must be notified.
    pub notify: bool,
    /// The ring was reset at the guest's request.
    pub reconnected: bool,
    /// The pass stopped at its budget with requests left: serve the ring again after the
    /// others had their turn.
    pub more: bool,
}

/// One introduced domain's ring, as xenstored tracks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreRing {
    pub domid: DomId,
    /// The store's connection for the ring.
    pub conn: ConnId,
    /// The frame and the domain's port, as INTRODUCE named them (a reconnect re-introduces).
    pub gfn: u64,
    pub remote_port: Port,
    /// Set once the ring is ignored (`error` written); cleared by a reconnect.
    pub broken: Option<u32>,
    /// The store's next `Introduce { reset }` action is the echo of a reset done here.
    pub reset_pending_ack: bool,
}

impl StoreRing {
    /// A freshly introduced ring.
    pub fn new(domid: DomId, conn: ConnId, gfn: u64, remote_port: Port) -> StoreRing {
        StoreRing { domid, conn, gfn, remote_port, broken: None, reset_pending_ack: false }
    }

    /// Publishes the server features, before anything is produced or consumed (the spec's
    /// order). The indexes are left as the guest has them.
    pub fn advertise(&self, page: &impl SharedPage) {
        page.store_u32(xs_wire::SERVER_FEATURES_OFFSET, server_feature::RECONNECTION | server_feature::ERROR);
    }

    /// Empties both queues and marks the ring connected with no error: the server's half of
    /// a reconnect (or of a re-INTRODUCE).
    pub fn reset(&mut self, page: &impl SharedPage) {
        ByteRing::XS_REQ.reset(page);
        ByteRing::XS_RSP.reset(page);
        page.store_u32(xs_wire::ERROR_OFFSET, ring_error::XENSTORE_ERROR_NONE);
        page.fence();
        page.store_u32(xs_wire::CONNECTION_OFFSET, connection::XENSTORE_CONNECTED);
        self.broken = None;
    }

    /// Stops serving the ring with `code` in its `error` field.
    pub fn break_with(&mut self, page: &impl SharedPage, code: u32) {
        page.store_u32(xs_wire::ERROR_OFFSET, code);
        self.broken = Some(code);
    }

    /// Serves the ring once: a pending reconnect request, then requests and output until
    /// neither moves or [`MESSAGES_PER_PASS`] requests were handled.
    pub fn service(&mut self, xs: &mut Xenstore, page: &impl SharedPage) -> Serviced {
        let mut done = Serviced::default();
        if page.load_u32(xs_wire::CONNECTION_OFFSET) == connection::XENSTORE_RECONNECT {
            // Re-introducing resets the store's side of the connection (watches,
            // transactions, partial input, queued output).
            if xs.introduce_domain(self.domid, self.gfn, self.remote_port).is_ok() {
                self.reset_pending_ack = true;
            }
            self.reset(page);
            done.notify = true;
            done.reconnected = true;
            return done;
        }
        if self.broken.is_some() {
            return done;
        }
        let mut buf = [0u8; xs_wire::XENSTORE_RING_SIZE as usize];
        let mut budget = MESSAGES_PER_PASS;
        loop {
            if ByteRing::XS_REQ.corrupt(page) || ByteRing::XS_RSP.corrupt(page) {
                self.break_with(page, ring_error::XENSTORE_ERROR_RINGIDX);
                done.notify = true;
                return done;
            }
            let mut moved = self.flush(xs, page, &mut buf);
            if budget == 0 {
                done.more = ByteRing::XS_REQ.readable(page) > 0;
                done.notify |= moved;
                return done;
            }
            let n = ByteRing::XS_REQ.peek(page, &mut buf);
            if n > 0 {
                match xs.feed_some(self.conn, &buf[..n], budget) {
                    Ok(fed) => {
                        budget -= fed.messages.min(budget);
                        moved |= ByteRing::XS_REQ.advance(page, fed.taken) > 0;
                    }
                    Err(FeedError::Protocol(e)) => {
                        self.break_with(page, e.ring_error());
                        done.notify = true;
                        return done;
                    }
                    Err(FeedError::NoConnection) => return done,
                }
            }
            moved |= self.flush(xs, page, &mut buf);
            if !moved {
                return done;
            }
            done.notify = true;
        }
    }

    /// Copies queued output into `rsp` while there is room; true if anything moved.
    fn flush(&mut self, xs: &mut Xenstore, page: &impl SharedPage, buf: &mut [u8]) -> bool {
        let mut moved = false;
        loop {
            let room = (ByteRing::XS_RSP.writable(page) as usize).min(buf.len());
            if room == 0 || xs.pending_output(self.conn) == 0 {
                return moved;
            }
            let k = xs.read_output(self.conn, &mut buf[..room]);
            if k == 0 {
                return moved;
            }
            if ByteRing::XS_RSP.produce(page, &buf[..k]) != k {
                // The guest moved its index backwards meanwhile: the stream is lost.
                self.break_with(page, ring_error::XENSTORE_ERROR_RINGIDX);
                return true;
            }
            moved = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xenstore::{Action, Caller, Request};
    use alloc::string::String;
    use hypercall_abi::io::xs_wire::XsdSockmsgType;
    use hypercall_abi::Errno;
    use pv_guest_kernel::xenbus::ring::fake::FakePage;
    use pv_guest_kernel::xenbus::{Transport, TxId, Xenbus};
    use std::cell::RefCell;
    use std::rc::Rc;

    const DOM: DomId = DomId(5);

    /// xenstored with one introduced domain whose ring is a fake page.
    struct Server {
        xs: Xenstore,
        ring: StoreRing,
        services: u32,
    }

    /// The guest's view: its end of the ring, and "waiting" runs the server (the event
    /// would wake dom0).
    struct Guest {
        page: Rc<FakePage>,
        server: Rc<RefCell<Server>>,
        idle_waits: u32,
    }

    impl Transport for Guest {
        fn send(&mut self, bytes: &[u8]) -> Result<usize, Errno> {
            Ok(ByteRing::XS_REQ.produce(&*self.page, bytes))
        }
        fn recv(&mut self, buf: &mut [u8]) -> Result<usize, Errno> {
            Ok(ByteRing::XS_RSP.consume(&*self.page, buf))
        }
        fn wait(&mut self) -> Result<(), Errno> {
            let mut s = self.server.borrow_mut();
            let s = &mut *s;
            s.services += 1;
            let r = s.ring.service(&mut s.xs, &*self.page);
            if r.notify {
                self.idle_waits = 0;
                Ok(())
            } else {
                self.idle_waits += 1;
                if self.idle_waits > 3 {
                    Err(Errno::ETIMEDOUT)
                } else {
                    Ok(())
                }
            }
        }
    }

    fn setup() -> (Rc<RefCell<Server>>, Xenbus<Guest>, Rc<FakePage>) {
        let mut xs = Xenstore::default();
        let conn = xs.introduce_domain(DOM, 1234, Port(1)).unwrap();
        let acts = xs.take_actions();
        assert!(matches!(acts[..], [Action::Introduce { reset: false, .. }]));
        xs.execute(Caller::DOM0, Request::Mkdir { path: "/local/domain/5/data".into() }).unwrap();
        xs.execute(
            Caller::DOM0,
            Request::SetPerms {
                path: "/local/domain/5/data".into(),
                perms: crate::xenstore::Perms::owned_by(DOM, crate::xenstore::Access::NONE),
            },
        )
        .unwrap();
        let page = Rc::new(FakePage::default());
        // Guests must not assume indexes start at 0.
        for r in [ByteRing::XS_REQ, ByteRing::XS_RSP] {
            page.store_u32(r.cons, u32::MAX - 300);
            page.store_u32(r.prod, u32::MAX - 300);
        }
        let ring = StoreRing::new(DOM, conn, 1234, Port(1));
        ring.advertise(&*page);
        let server = Rc::new(RefCell::new(Server { xs, ring, services: 0 }));
        let guest = Guest { page: page.clone(), server: server.clone(), idle_waits: 0 };
        (server, Xenbus::new(guest), page)
    }

    #[test]
    fn guest_requests_through_the_ring() {
        let (_s, mut xb, _) = setup();
        xb.write(TxId::NONE, "data/x", b"hello").unwrap();
        assert_eq!(xb.read(TxId::NONE, "data/x").unwrap(), b"hello");
        assert_eq!(xb.read(TxId::NONE, "/local/domain/5/data/x").unwrap(), b"hello");
        assert_eq!(xb.write(TxId::NONE, "/local/domain/0/x", b"no"), Err(Errno::EACCES));
        assert_eq!(xb.get_domain_path(DOM).unwrap(), "/local/domain/5");
        assert_eq!(xb.get_perms(TxId::NONE, "data").unwrap(), ["n5"]);
        xb.mkdir(TxId::NONE, "data/d").unwrap();
        xb.rm(TxId::NONE, "data/d").unwrap();
        assert_eq!(xb.read(TxId::NONE, "data/d"), Err(Errno::ENOENT));
    }

    #[test]
    fn replies_larger_than_the_ring_arrive_whole() {
        let (_s, mut xb, _) = setup();
        let value = vec![b'v'; 2000];
        xb.write(TxId::NONE, "data/big", &value).unwrap();
        assert_eq!(xb.read(TxId::NONE, "data/big").unwrap(), value);
        for i in 0..40 {
            xb.write(TxId::NONE, &format!("data/child-with-a-long-name-{i:03}"), b"1").unwrap();
        }
        let names = xb.directory(TxId::NONE, "data").unwrap();
        assert_eq!(names.len(), 41);
    }

    #[test]
    fn watches_and_transaction_conflicts() {
        let (s, mut xb, _) = setup();
        xb.watch("data/w", "tok").unwrap();
        assert_eq!(xb.wait_watch_event().unwrap().path, "data/w");
        // dom0 writes: the guest's watch fires (relative path, as registered).
        s.borrow_mut()
            .xs
            .execute(
                Caller::DOM0,
                Request::Write { path: "/local/domain/5/data/w".into(), value: b"1".to_vec() },
            )
            .unwrap();
        let ev = xb.wait_watch_event().unwrap();
        assert_eq!((ev.path.as_str(), ev.token.as_str()), ("data/w", "tok"));

        xb.write(TxId::NONE, "data/counter", b"0").unwrap();
        let tx = xb.transaction_start().unwrap();
        assert_eq!(xb.read(tx, "data/counter").unwrap(), b"0");
        xb.write(TxId::NONE, "data/counter", b"5").unwrap();
        xb.write(tx, "data/counter", b"1").unwrap();
        assert_eq!(xb.transaction_end(tx, true), Err(Errno::EAGAIN));
        assert_eq!(xb.read(TxId::NONE, "data/counter").unwrap(), b"5");
        let r = xb.transaction(|xb, tx| {
            let v: u32 = String::from_utf8(xb.read(tx, "data/counter")?).unwrap().parse().unwrap();
            xb.write(tx, "data/counter", format!("{}", v + 1).as_bytes())
        });
        assert_eq!(r, Ok(()));
        assert_eq!(xb.read(TxId::NONE, "data/counter").unwrap(), b"6");
    }

    #[test]
    fn oversized_header_breaks_then_reconnect_heals() {
        let (s, mut xb, page) = setup();
        xb.write(TxId::NONE, "data/a", b"1").unwrap();
        xb.watch("data/a", "t").unwrap();
        let hdr = xs_wire::XsdSockmsg { type_: XsdSockmsgType::Read as u32, req_id: 1, tx_id: 0, len: 5000 };
        xb.send_raw(zerocopy::IntoBytes::as_bytes(&hdr)).unwrap();
        let _ = xb.transport_mut().wait();
        assert_eq!(page.load_u32(xs_wire::ERROR_OFFSET), ring_error::XENSTORE_ERROR_PROTO);
        assert!(s.borrow().ring.broken.is_some());
        // Ignored from now on.
        xb.reset();
        assert_eq!(xb.read(TxId::NONE, "data/a"), Err(Errno::ETIMEDOUT));
        // The guest asks for a reconnect.
        page.store_u32(xs_wire::CONNECTION_OFFSET, connection::XENSTORE_RECONNECT);
        let _ = xb.transport_mut().wait();
        assert_eq!(page.load_u32(xs_wire::CONNECTION_OFFSET), connection::XENSTORE_CONNECTED);
        assert_eq!(page.load_u32(xs_wire::ERROR_OFFSET), 0);
        assert_eq!(ByteRing::XS_REQ.indexes(&*page), (0, 0));
        {
            let mut s = s.borrow_mut();
            let acts = s.xs.take_actions();
            assert!(acts.iter().any(|a| matches!(a, Action::Introduce { reset: true, .. })));
            assert!(s.ring.reset_pending_ack);
            assert_eq!(s.xs.watch_count(s.ring.conn), 0, "watches dropped by the reset");
        }
        xb.reset();
        assert_eq!(xb.read(TxId::NONE, "data/a").unwrap(), b"1");
    }

    #[test]
    fn corrupt_indexes_stop_the_ring() {
        let (s, mut xb, page) = setup();
        xb.write(TxId::NONE, "data/a", b"1").unwrap();
        page.store_u32(ByteRing::XS_REQ.prod, page.load_u32(ByteRing::XS_REQ.cons).wrapping_add(5000));
        let _ = xb.transport_mut().wait();
        assert_eq!(page.load_u32(xs_wire::ERROR_OFFSET), ring_error::XENSTORE_ERROR_RINGIDX);
        assert_eq!(s.borrow().ring.broken, Some(ring_error::XENSTORE_ERROR_RINGIDX));
    }

    #[test]
    fn unknown_types_get_an_error_reply_and_the_ring_lives() {
        let (_s, mut xb, _) = setup();
        assert_eq!(xb.request(XsdSockmsgType::GetQuota, TxId::NONE, &[b"\0"]), Err(Errno::ENOSYS));
        assert_eq!(
            xb.request(XsdSockmsgType::Introduce, TxId::NONE, &[b"7\x001\x002\0"]),
            Err(Errno::EACCES)
        );
        // Raw type 999.
        let hdr = xs_wire::XsdSockmsg { type_: 999, req_id: 77, tx_id: 0, len: 0 };
        xb.send_raw(zerocopy::IntoBytes::as_bytes(&hdr)).unwrap();
        xb.write(TxId::NONE, "data/ok", b"1").unwrap();
    }

    /// A guest that refills its request ring the moment the server consumes from it and
    /// empties its response ring the moment the server produces, as a domU spinning on
    /// another CPU would: `left` requests to go.
    struct Relentless {
        page: FakePage,
        request: Vec<u8>,
        left: core::cell::Cell<u32>,
        /// Request bytes the server consumed.
        taken: core::cell::Cell<u32>,
    }

    impl SharedPage for Relentless {
        fn load_u32(&self, off: usize) -> u32 {
            self.page.load_u32(off)
        }
        fn store_u32(&self, off: usize, v: u32) {
            if off == ByteRing::XS_REQ.cons {
                let old = self.page.load_u32(off);
                self.taken.set(self.taken.get() + v.wrapping_sub(old));
            }
            self.page.store_u32(off, v);
            if off == ByteRing::XS_REQ.cons {
                while self.left.get() > 0
                    && ByteRing::XS_REQ.writable(&self.page) as usize >= self.request.len()
                {
                    ByteRing::XS_REQ.produce(&self.page, &self.request);
                    self.left.set(self.left.get() - 1);
                }
            }
            if off == ByteRing::XS_RSP.prod {
                self.page.store_u32(ByteRing::XS_RSP.cons, v);
            }
        }
        fn read(&self, off: usize, out: &mut [u8]) {
            self.page.read(off, out)
        }
        fn write(&self, off: usize, data: &[u8]) {
            self.page.write(off, data)
        }
        fn fence(&self) {}
    }

    #[test]
    fn one_pass_is_bounded_however_fast_the_guest_refills() {
        let (s, _xb, _) = setup();
        let mut s = s.borrow_mut();
        let s = &mut *s;
        let msg =
            crate::xenstore::Message::new(XsdSockmsgType::Read as u32, 1, 0, b"data\0".to_vec()).unwrap();
        let page = Relentless {
            page: FakePage::default(),
            request: msg.encode(),
            left: core::cell::Cell::new(10_000),
            taken: core::cell::Cell::new(0),
        };
        ByteRing::XS_REQ.produce(&page.page, &page.request);
        let r = s.ring.service(&mut s.xs, &page);
        let handled = page.taken.get() as usize / page.request.len();
        assert!(r.more, "requests are left over: the caller must come back");
        assert!(r.notify);
        assert!(
            handled <= MESSAGES_PER_PASS,
            "one pass handled {handled} requests, more than its budget of {MESSAGES_PER_PASS}"
        );
        // Passes keep serving it, a budget at a time.
        let r = s.ring.service(&mut s.xs, &page);
        assert!(r.more);
        assert_eq!(page.taken.get() as usize / page.request.len(), 2 * MESSAGES_PER_PASS);
    }

    fn snapshot(page: &FakePage) -> Vec<u8> {
        let mut v = alloc::vec![0u8; 4096];
        page.read(0, &mut v);
        v
    }

    proptest::proptest! {
        /// A guest rewriting its xenstore page at will between passes (requests, indexes,
        /// control fields): the server never panics, keeps its store consistent, and writes
        /// only where a server may — replies into `rsp`, the `rsp_prod` and `req_cons`
        /// indexes and the `error` field, plus, when it grants a reconnect, every index and
        /// the `connection` field.
        #[test]
        fn survives_a_scribbling_guest(steps in proptest::collection::vec(
            (0u16..4096, proptest::collection::vec(proptest::prelude::any::<u8>(), 1..48), proptest::prelude::any::<u32>(), 0u8..6),
            1..60,
        )) {
            let (s, _xb, page) = setup();
            let mut s = s.borrow_mut();
            let s = &mut *s;
            let word = |off: usize| off..off + 4;
            for (off, bytes, v, what) in steps {
                match what {
                    0 => page.write(usize::from(off), &bytes[..bytes.len().min(4096 - usize::from(off))]),
                    1 => page.store_u32(ByteRing::XS_REQ.prod, v),
                    2 => page.store_u32(ByteRing::XS_RSP.cons, v),
                    3 => page.store_u32(xs_wire::CONNECTION_OFFSET, v % 3),
                    // Plausible traffic: a well-formed request, whatever it asks.
                    _ => {
                        let m = crate::xenstore::Message::new(u32::from(bytes[0]) % 30, v, 0, bytes[1..].to_vec());
                        if let Some(m) = m {
                            ByteRing::XS_REQ.produce(&*page, &m.encode());
                        }
                    }
                }
                let before = snapshot(&page);
                let r = s.ring.service(&mut s.xs, &*page);
                let after = snapshot(&page);
                let rsp = ByteRing::XS_RSP.buf..ByteRing::XS_RSP.buf + ByteRing::XS_RSP.size as usize;
                let mut allowed = alloc::vec![rsp, word(ByteRing::XS_RSP.prod), word(ByteRing::XS_REQ.cons), word(xs_wire::ERROR_OFFSET)];
                if r.reconnected {
                    allowed.extend([word(ByteRing::XS_REQ.prod), word(ByteRing::XS_RSP.cons), word(xs_wire::CONNECTION_OFFSET)]);
                }
                for (i, (b, a)) in before.iter().zip(&after).enumerate() {
                    proptest::prop_assert!(b == a || allowed.iter().any(|w| w.contains(&i)), "the server wrote byte {:#x}", i);
                }
                s.xs.store().check_invariants().map_err(proptest::test_runner::TestCaseError::fail)?;
            }
        }

        /// A guest writing arbitrary bytes and indexes never makes the server panic, and
        /// whatever it does the server never writes outside `rsp` room it was given.
        #[test]
        fn hostile_guest(
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000),
            req_prod: u32, rsp_cons: u32, conn_field in 0u32..3,
        ) {
            let (s, _xb, page) = setup();
            ByteRing::XS_REQ.produce(&*page, &junk);
            let mut s = s.borrow_mut();
            let s = &mut *s;
            s.ring.service(&mut s.xs, &*page);
            page.store_u32(ByteRing::XS_REQ.prod, req_prod);
            page.store_u32(ByteRing::XS_RSP.cons, rsp_cons);
            page.store_u32(xs_wire::CONNECTION_OFFSET, conn_field);
            let (c0, p0) = ByteRing::XS_RSP.indexes(&*page);
            let valid_before = hypercall_abi::io::byte_ring::indexes_valid(c0, p0, 1024);
            let r = s.ring.service(&mut s.xs, &*page);
            let (c, p) = ByteRing::XS_RSP.indexes(&*page);
            if r.reconnected {
                proptest::prop_assert_eq!((c, p), (0, 0));
            } else if valid_before {
                proptest::prop_assert!(p.wrapping_sub(c) <= 1024, "never more than the ring holds");
            } else {
                proptest::prop_assert_eq!(p, p0, "nothing produced into a corrupt ring");
                proptest::prop_assert!(s.ring.broken.is_some());
            }
        }
    }
}
