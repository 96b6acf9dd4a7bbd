//! xenstored's memory quota against what it really allocates: a domain's requests, measured
//! with the counting allocator (as dom0's kernel heap counts blocks), never make xenstored
//! hold more than it charges the domain (plus a fixed slack for the maps every domain
//! shares), and a domain that keeps asking is refused before its quota is passed — so
//! `Quotas::fitting` really bounds the heap.

use alloc::string::String;
use alloc::vec::Vec;

use hypercall_abi::{DomId, Errno, Port};
use proptest::prelude::*;

use super::toolstack::{DomainConfig, StoreRing};
use super::*;
use crate::counting_alloc;

const DOM: DomId = DomId(1);
/// What xenstored may allocate for a domain beyond its charge: entries in the maps keyed by
/// domain and connection, and the rounding of the tree's own nodes.
const SLACK: isize = 4096;

/// xenstored with domain 1 introduced; the heap growth of every request is measured.
struct Rig {
    xs: Xenstore,
    conn: ConnId,
    out: Vec<u8>,
    /// Heap growth inside xenstored since the start, as dom0's heap would count it.
    grown: isize,
    base_charge: usize,
    req: u32,
}

impl Rig {
    fn new(q: Quotas) -> Rig {
        let mut xs = Xenstore::new(q);
        let cfg = DomainConfig {
            domid: DOM,
            name: "guest1".into(),
            memory_kb: 65536,
            vcpus: 1,
            store: Some(StoreRing { gfn: 0x100, port: Port(1) }),
            console: None,
        };
        xs.create_domain_nodes(&cfg).unwrap();
        let conn = xs.introduce_domain(DOM, 0x100, Port(1)).unwrap();
        xs.take_actions();
        let base_charge = xs.memory_used(DOM);
        Rig { xs, conn, out: alloc::vec![0; 1 << 20], grown: 0, base_charge, req: 0 }
    }

    /// Sends one request as the domain and takes all output; the reply's payload or errno.
    fn call(&mut self, ty: XsdSockmsgType, tx: u32, payload: &[u8]) -> Result<Vec<u8>, String> {
        self.req += 1;
        let bytes = Message::new(ty as u32, self.req, tx, payload.to_vec()).unwrap().encode();
        let before = counting_alloc::live();
        assert_eq!(self.xs.feed(self.conn, &bytes), Ok(bytes.len()));
        let mut n = 0;
        while self.xs.pending_output(self.conn) > 0 {
            n += self.xs.read_output(self.conn, &mut self.out[n..]);
        }
        self.grown += counting_alloc::live() - before;
        let reply = super::tests::decode_all(&self.out[..n])
            .into_iter()
            .find(|m| m.header.type_ != XsdSockmsgType::WatchEvent as u32)
            .expect("a reply");
        if reply.header.type_ == XsdSockmsgType::Error as u32 {
            Err(String::from_utf8_lossy(&reply.payload).trim_end_matches('\0').into())
        } else {
            Ok(reply.payload)
        }
    }

    fn charged(&self) -> isize {
        self.xs.memory_used(DOM) as isize - self.base_charge as isize
    }

    /// The invariant: xenstored holds no more for the domain than it charges it.
    fn check(&self) -> Result<(), TestCaseError> {
        prop_assert!(
            self.grown <= self.charged() + SLACK,
            "xenstored grew by {} bytes but charges the domain {}",
            self.grown,
            self.charged()
        );
        Ok(())
    }
}

fn strs(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p);
        v.push(0);
    }
    v
}

/// A path under the domain's `data/`, `depth` components named from `seed`, each
/// `len` characters.
fn data_path(seed: u32, depth: u32, len: usize) -> String {
    let mut p = String::from("/local/domain/1/data");
    for i in 0..depth {
        let c = alloc::format!("{:x}", seed.wrapping_mul(2_654_435_761).rotate_left(i * 7) % 7);
        p.push('/');
        p.push_str(&c.repeat(len.max(1)));
    }
    p
}

#[derive(Clone, Debug)]
enum Op {
    Write { seed: u32, depth: u32, len: usize, value: usize },
    Mkdir { seed: u32, depth: u32, len: usize },
    Rm { seed: u32, depth: u32, len: usize },
    SetPerms { seed: u32, depth: u32, len: usize, entries: u16 },
    Watch { len: usize, token: usize },
    Unwatch,
    TxStart,
    TxWrite { seed: u32, value: usize },
    TxEnd { commit: bool },
}

fn op() -> impl Strategy<Value = Op> {
    let place = (0u32..40, 1u32..5, 1usize..200);
    prop_oneof![
        4 => (place.clone(), 0usize..2100).prop_map(|((seed, depth, len), value)| Op::Write { seed, depth, len, value }),
        1 => place.clone().prop_map(|(seed, depth, len)| Op::Mkdir { seed, depth, len }),
        2 => place.clone().prop_map(|(seed, depth, len)| Op::Rm { seed, depth, len }),
        1 => (place, 1u16..6).prop_map(|((seed, depth, len), entries)| Op::SetPerms { seed, depth, len, entries }),
        1 => (1usize..2000, 1usize..200).prop_map(|(len, token)| Op::Watch { len, token }),
        1 => Just(Op::Unwatch),
        1 => Just(Op::TxStart),
        2 => (0u32..40, 0usize..2100).prop_map(|(seed, value)| Op::TxWrite { seed, value }),
        1 => any::<bool>().prop_map(|commit| Op::TxEnd { commit }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever a domain asks, xenstored's heap grows by no more than it charges the domain,
    /// and the charge never passes the domain's memory quota.
    #[test]
    fn memory_charges_cover_allocations(ops in proptest::collection::vec(op(), 1..120)) {
        let mut r = Rig::new(Quotas { memory_per_domain: 256 * 1024, ..Quotas::default() });
        let mut watches: Vec<(String, String)> = Vec::new();
        let mut txs: Vec<u32> = Vec::new();
        for op in ops {
            match op {
                Op::Write { seed, depth, len, value } => {
                    let p = data_path(seed, depth, len);
                    let _ = r.call(XsdSockmsgType::Write, 0, &[p.as_bytes(), b"\0", &alloc::vec![b'v'; value]].concat());
                }
                Op::Mkdir { seed, depth, len } => {
                    let _ = r.call(XsdSockmsgType::Mkdir, 0, &strs(&[data_path(seed, depth, len).as_bytes()]));
                }
                Op::Rm { seed, depth, len } => {
                    let _ = r.call(XsdSockmsgType::Rm, 0, &strs(&[data_path(seed, depth, len).as_bytes()]));
                }
                Op::SetPerms { seed, depth, len, entries } => {
                    let p = data_path(seed, depth, len);
                    let mut parts: Vec<Vec<u8>> = alloc::vec![p.into_bytes(), b"n1".to_vec()];
                    parts.extend((0..entries).map(|i| alloc::format!("r{}", 2 + i).into_bytes()));
                    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
                    let _ = r.call(XsdSockmsgType::SetPerms, 0, &strs(&refs));
                }
                Op::Watch { len, token } => {
                    let p = alloc::format!("/local/domain/1/data/{}", "w".repeat(len.min(2000)));
                    let t = "t".repeat(token) + &alloc::format!("{}", watches.len());
                    if r.call(XsdSockmsgType::Watch, 0, &strs(&[p.as_bytes(), t.as_bytes()])).is_ok() {
                        watches.push((p, t));
                    }
                }
                Op::Unwatch => {
                    if let Some((p, t)) = watches.pop() {
                        let _ = r.call(XsdSockmsgType::Unwatch, 0, &strs(&[p.as_bytes(), t.as_bytes()]));
                    }
                }
                Op::TxStart => {
                    if let Ok(id) = r.call(XsdSockmsgType::TransactionStart, 0, b"\0") {
                        let id = core::str::from_utf8(&id).unwrap().trim_end_matches('\0').parse().unwrap();
                        txs.push(id);
                    }
                }
                Op::TxWrite { seed, value } => {
                    if let Some(&tx) = txs.last() {
                        let p = data_path(seed, 2, 30);
                        let _ = r.call(XsdSockmsgType::Write, tx, &[p.as_bytes(), b"\0", &alloc::vec![b'x'; value]].concat());
                    }
                }
                Op::TxEnd { commit } => {
                    if let Some(tx) = txs.pop() {
                        let _ = r.call(XsdSockmsgType::TransactionEnd, tx, if commit { b"T\0" } else { b"F\0" });
                    }
                }
            }
            r.check()?;
            prop_assert!(r.xs.memory_used(DOM) <= r.xs.quotas().memory_per_domain);
        }
        r.xs.store().check_invariants().map_err(TestCaseError::fail)?;
    }
}

/// A domain that fills the store with everything it may ask for is refused with `ENOMEM`
/// once it reaches its quota, and what xenstored then holds for it stays within the quota
/// (the reproduction: 959 writes grew xenstored by 3.75 MB).
#[test]
fn a_domain_filling_the_store_is_refused_at_its_quota() {
    let quota = 512 * 1024;
    let mut r = Rig::new(Quotas { memory_per_domain: quota, ..Quotas::default() });
    let value = alloc::vec![b'v'; 1900];
    let mut refused = None;
    for i in 0..5000u32 {
        // A long path each time: the path keys are charged too.
        let p = alloc::format!("/local/domain/1/data/{i:04}/{}", "k".repeat(1000));
        match r.call(XsdSockmsgType::Write, 0, &[p.as_bytes(), b"\0", &value].concat()) {
            Ok(_) => {}
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    let (at, why) = refused.expect("the domain was never refused");
    assert!(why == "ENOMEM" || why == "ENOSPC", "refused with {why}");
    assert!(at > 50, "refused after only {at} writes");
    for i in 0..200u32 {
        let p = alloc::format!("/local/domain/1/data/w{i}");
        if r.call(XsdSockmsgType::Watch, 0, &strs(&[p.as_bytes(), "t".repeat(150).as_bytes()])).is_err() {
            break;
        }
    }
    for _ in 0..10 {
        if r.call(XsdSockmsgType::TransactionStart, 0, b"\0").is_err() {
            break;
        }
    }
    std::println!("refused at {at} ({why}); grown {} charged {}", r.grown, r.charged());
    assert!(r.xs.memory_used(DOM) <= quota);
    assert!(r.grown <= quota as isize + SLACK, "xenstored grew by {} for a {quota}-byte quota", r.grown);
    // dom0 itself is not limited, and the domain can still read.
    assert!(r.call(XsdSockmsgType::Read, 0, b"/local/domain/1/name\0").is_ok());
    let mut d0 = Caller::DOM0;
    d0.target = None;
    assert!(r
        .xs
        .execute(d0, Request::Write { path: "/local/domain/0/x".into(), value: value.clone() })
        .is_ok());
    let _ = Errno::ENOMEM;
}

#[test]
fn quotas_fit_the_budget() {
    let q = Quotas::fitting(8 << 20, 4);
    assert_eq!(q.memory_per_domain, 2 << 20);
    assert_eq!(Quotas::fitting(64 << 20, 2).memory_per_domain, Quotas::default().memory_per_domain);
    assert_eq!(Quotas::fitting(1 << 20, 0).memory_per_domain, 1 << 20);
}
