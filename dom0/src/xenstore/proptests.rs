//! Property tests: the decoder against hostile byte streams, encode/decode round trips, and
//! the store's invariants under random operations from several domains.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use hypercall_abi::DomId;
use proptest::prelude::*;

use super::path::{self, ROOT};
use super::tests::{decode_all, Xs};
use super::toolstack::{DeviceConfig, DomainConfig};
use super::wire::PAYLOAD_MAX;
use super::*;
use hypercall_abi::io::xs_wire::XSD_SOCKMSG_SIZE as HEADER_LEN;
use zerocopy::IntoBytes;

/// Splits `data` at the given (sorted, deduplicated) cut points.
fn chunks<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    points.sort_unstable();
    points.dedup();
    let mut out = Vec::new();
    let mut prev = 0;
    for p in points {
        out.push(&data[prev..p]);
        prev = p;
    }
    out.push(&data[prev..]);
    out
}

/// Runs a decoder over chunks, checking its contract; returns the messages and any error.
fn run_decoder(pieces: &[&[u8]]) -> (Vec<Message>, Option<StreamError>) {
    let mut d = Decoder::new();
    let mut msgs = Vec::new();
    for piece in pieces {
        let mut at = 0;
        loop {
            let (n, r) = d.decode(&piece[at..]);
            assert!(n <= piece.len() - at);
            at += n;
            match r {
                Ok(Some(m)) => {
                    assert!(m.payload.len() <= PAYLOAD_MAX);
                    assert_eq!(m.header.len as usize, m.payload.len());
                    msgs.push(m);
                }
                Ok(None) => {
                    assert_eq!(at, piece.len(), "the decoder wants more only when input is used up");
                    break;
                }
                Err(e) => return (msgs, Some(e)),
            }
            if at == piece.len() {
                break;
            }
        }
    }
    (msgs, None)
}

/// Bytes that look like xenstore traffic often enough to get past the header check: headers
/// with small lengths and any type, payloads of any length, and plain garbage.
fn plausible_stream() -> impl Strategy<Value = Vec<u8>> {
    let header = (0u32..30, any::<u32>(), 0u32..4, prop_oneof![0u32..64, 4090u32..4100, any::<u32>()])
        .prop_map(|(ty, req, tx, len)| {
            XsdSockmsg { type_: ty, req_id: req, tx_id: tx, len }.as_bytes().to_vec()
        });
    let part = prop_oneof![
        3 => header,
        2 => proptest::collection::vec(any::<u8>(), 0..80),
        1 => proptest::collection::vec(prop_oneof![Just(0u8), Just(b'/'), Just(b'a')], 0..40),
    ];
    proptest::collection::vec(part, 0..20).prop_map(|v| v.concat())
}

fn any_message() -> impl Strategy<Value = Message> {
    (any::<u32>(), any::<u32>(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..=PAYLOAD_MAX))
        .prop_map(|(ty, req, tx, payload)| Message::new(ty, req, tx, payload).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// (a) Random bytes in random chunks never panic the decoder, and nothing it yields is
    /// longer than the protocol allows.
    #[test]
    fn decoder_survives_random_bytes(
        data in prop_oneof![proptest::collection::vec(any::<u8>(), 0..9000), plausible_stream()],
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        let pieces = chunks(&data, &cuts);
        let (msgs, err) = run_decoder(&pieces);
        let used: usize = msgs.iter().map(Message::wire_len).sum();
        prop_assert!(used <= data.len());
        if let Some(StreamError::PayloadTooLong(len)) = err {
            prop_assert!(len as usize > PAYLOAD_MAX);
        }
    }

    /// (b) Valid messages, encoded back to back and cut anywhere, decode to themselves.
    #[test]
    fn encode_split_decode_round_trips(
        msgs in proptest::collection::vec(any_message(), 0..6),
        cuts in proptest::collection::vec(any::<usize>(), 0..60),
    ) {
        let stream: Vec<u8> = msgs.iter().flat_map(Message::encode).collect();
        prop_assert_eq!(stream.len(), msgs.iter().map(|m| HEADER_LEN + m.payload.len()).sum::<usize>());
        let (got, err) = run_decoder(&chunks(&stream, &cuts));
        prop_assert_eq!(err, None);
        prop_assert_eq!(got, msgs);
    }

    /// Requests survive their own encoding.
    #[test]
    fn request_payloads_round_trip(op in op_strategy()) {
        if let Op::Req { req, .. } = op {
            let payload = req.to_payload();
            prop_assert_eq!(Request::parse(req.msg_type(), &payload), Ok(req));
        }
    }

    /// Garbage from an unprivileged client yields well-formed output (or a broken connection)
    /// and never hurts the store.
    #[test]
    fn server_survives_garbage(
        data in prop_oneof![proptest::collection::vec(any::<u8>(), 0..3000), plausible_stream()],
        cuts in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        let mut t = Xs::new();
        t.xs.create_domain_nodes(&cfg(1)).unwrap();
        let c = t.xs.connect_local(DomId(1));
        let mut out = Vec::new();
        for piece in chunks(&data, &cuts) {
            let mut rest = piece;
            loop {
                match t.xs.feed(c, rest) {
                    Ok(n) => {
                        rest = &rest[n..];
                        let mut buf = alloc::vec![0u8; t.xs.pending_output(c)];
                        t.xs.read_output(c, &mut buf);
                        out.extend(buf);
                        if rest.is_empty() {
                            break;
                        }
                    }
                    Err(FeedError::Protocol(_)) => break,
                    Err(FeedError::NoConnection) => unreachable!(),
                }
            }
        }
        for m in decode_all(&out) {
            prop_assert!(m.payload.len() <= PAYLOAD_MAX);
        }
        t.xs.store().check_invariants().map_err(TestCaseError::fail)?;
    }
}

// ------------------------------------------------------------ random operation sequences

const DOMAINS: [u16; 3] = [1, 2, 3];

fn cfg(domid: u16) -> DomainConfig {
    DomainConfig {
        domid: DomId(domid),
        name: alloc::format!("g{domid}"),
        memory_kb: 1,
        vcpus: 1,
        store: None,
        console: None,
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// A request from `who` (0 = dom0) in its open transaction if `in_tx`.
    Req {
        who: u16,
        in_tx: bool,
        req: Request,
    },
    TxStart {
        who: u16,
    },
    TxEnd {
        who: u16,
        commit: bool,
    },
    Release {
        who: u16,
    },
}

fn path_strategy() -> impl Strategy<Value = String> {
    let base = prop_oneof![
        Just("/local/domain/1".to_string()),
        Just("/local/domain/2".to_string()),
        Just("/local/domain/3".to_string()),
        Just("/local/domain/0/backend/vbd".to_string()),
        Just("/shared".to_string()),
        Just(String::new()),
    ];
    let comp = prop_oneof![Just("a"), Just("b"), Just("data"), Just("device"), Just("name")];
    (base, proptest::collection::vec(comp, 0..4)).prop_map(|(base, comps)| {
        let tail = comps.join("/");
        match (base.is_empty(), tail.is_empty()) {
            (true, true) => "data".to_string(),
            (true, false) => tail,
            (false, true) => base,
            (false, false) => alloc::format!("{base}/{tail}"),
        }
    })
}

fn perms_strategy() -> impl Strategy<Value = Perms> {
    let access = prop_oneof![Just(Access::NONE), Just(Access::READ), Just(Access::WRITE), Just(Access::BOTH)];
    let entry = (0u16..4, access).prop_map(|(d, a)| PermEntry::new(DomId(d), a));
    proptest::collection::vec(entry, 1..4).prop_map(|v| Perms::from_entries(v).unwrap())
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let who = 0u16..4;
    let value = proptest::collection::vec(any::<u8>(), 0..8);
    let req = prop_oneof![
        4 => (path_strategy(), value).prop_map(|(path, value)| Request::Write { path, value }),
        2 => path_strategy().prop_map(|path| Request::Mkdir { path }),
        2 => path_strategy().prop_map(|path| Request::Rm { path }),
        2 => (path_strategy(), perms_strategy()).prop_map(|(path, perms)| Request::SetPerms { path, perms }),
        1 => path_strategy().prop_map(|path| Request::Read { path }),
        1 => path_strategy().prop_map(|path| Request::Directory { path }),
        1 => path_strategy().prop_map(|path| Request::GetPerms { path }),
        1 => path_strategy().prop_map(|path| Request::Watch { path, token: b"t".to_vec() }),
        1 => path_strategy().prop_map(|path| Request::Unwatch { path, token: b"t".to_vec() }),
    ];
    prop_oneof![
        12 => (who.clone(), any::<bool>(), req).prop_map(|(who, in_tx, req)| Op::Req { who, in_tx, req }),
        2 => who.clone().prop_map(|who| Op::TxStart { who }),
        2 => (who, any::<bool>()).prop_map(|(who, commit)| Op::TxEnd { who, commit }),
        1 => (1u16..4).prop_map(|who| Op::Release { who }),
    ]
}

/// The rights `caller` had on `p` in `s`, or on its nearest existing ancestor if `p` was
/// missing (what creating it needs).
fn rights_for(s: &Store, caller: &Caller, p: &str) -> Access {
    let mut q = p;
    loop {
        if let Some(n) = s.get(q) {
            return caller.access(&n.perms);
        }
        if q == ROOT {
            return Access::NONE;
        }
        q = path::parent(q);
    }
}

/// Checks that every difference between `before` and `after` is something `caller` was
/// allowed to do: modify nodes it could write, create below nodes it could write, and remove
/// subtrees whose top it could write.
fn changes_allowed(before: &Store, after: &Store, caller: &Caller) -> Result<(), String> {
    let w = |p: &str| rights_for(before, caller, p).contains(Access::WRITE);
    for (p, n) in after.iter() {
        match before.get(p) {
            None if !w(p) => return Err(alloc::format!("{caller:?} created {p} without write access")),
            Some(o) if (o.value != n.value || o.perms != n.perms) && !w(p) => {
                return Err(alloc::format!("{caller:?} modified {p} without write access"))
            }
            _ => {}
        }
    }
    for (p, _) in before.iter() {
        if after.get(p).is_none() {
            let mut top = p.as_str();
            while top != ROOT && after.get(path::parent(top)).is_none() {
                top = path::parent(top);
            }
            if !w(top) {
                return Err(alloc::format!("{caller:?} removed {p} (under {top}) without write access"));
            }
        }
    }
    Ok(())
}

struct World {
    t: Xs,
    conns: [ConnId; 4],
    txs: [Option<u32>; 4],
}

impl World {
    fn new() -> World {
        let mut t = Xs::new();
        let mut conns = [t.dom0; 4];
        for d in DOMAINS {
            t.xs.create_domain_nodes(&cfg(d)).unwrap();
            conns[d as usize] = t.introduce(d);
        }
        t.xs.add_device(&DeviceConfig {
            kind: "vbd".into(),
            devid: 1,
            frontend: DomId(1),
            backend: DomId::DOM0,
            frontend_entries: Vec::new(),
            frontend_ro_entries: Vec::new(),
            backend_entries: alloc::vec![("params".into(), "disk".into())],
        })
        .unwrap();
        World { t, conns, txs: [None; 4] }
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let before = self.t.xs.store().clone();
        let who = match op {
            Op::Req { who, .. } | Op::TxStart { who } | Op::TxEnd { who, .. } | Op::Release { who } => *who,
        };
        let conn = self.conns[who as usize];
        let caller = self.t.xs.caller(conn).unwrap();
        // RELEASE names a guest but dom0 performs it.
        let actor = if matches!(op, Op::Release { .. }) { 0 } else { who };
        let mut ok = false;
        match op {
            Op::Req { in_tx, req, .. } => {
                let tx = if *in_tx { self.txs[who as usize].unwrap_or(0) } else { 0 };
                let r = self.t.call(conn, tx, req);
                ok = r.is_ok();
                if let (Ok(_), Request::SetPerms { path, .. }, 0) = (&r, req, tx) {
                    let p = path::canonicalize(path, caller.domid).unwrap();
                    let had = caller.access(&before.get(&p).unwrap().perms);
                    prop_assert!(
                        had.contains(Access::WRITE.union(Access::OWNER)),
                        "SET_PERMS on {} by {:?}",
                        p,
                        caller
                    );
                }
            }
            Op::TxStart { .. } => {
                if self.txs[who as usize].is_none() {
                    self.txs[who as usize] = Some(self.t.tx_start(conn));
                }
            }
            Op::TxEnd { commit, .. } => {
                if let Some(tx) = self.txs[who as usize].take() {
                    let r = self.t.tx_end(conn, tx, *commit);
                    ok = r.is_ok();
                    if !commit {
                        prop_assert!(ok);
                    }
                }
            }
            Op::Release { .. } => {
                let d0 = self.t.dom0;
                let r = self.t.call(d0, 0, &Request::Release { domid: DomId(who) });
                prop_assert!(r.is_ok());
                self.t.xs.take_actions();
                self.t.xs.create_domain_nodes(&cfg(who)).unwrap();
                self.conns[who as usize] = self.t.introduce(who);
                self.txs[who as usize] = None;
                // The twelve writable directories plus the two platform-feature nodes under control/.
                prop_assert_eq!(
                    self.t.xs.store().owned_by(DomId(who)),
                    14,
                    "fresh domain owns only the toolstack nodes"
                );
            }
        }
        self.t.xs.store().check_invariants().map_err(TestCaseError::fail)?;
        if actor != 0 {
            if !ok {
                // Failed requests and failed commits change nothing.
                prop_assert_eq!(before.generation(), self.t.xs.store().generation(), "{:?}", op);
            }
            changes_allowed(&before, self.t.xs.store(), &caller).map_err(TestCaseError::fail)?;
            // Quota: no domain exceeds its node allowance by its own hand.
            if ok && before.owned_by(caller.domid) < self.t.xs.store().owned_by(caller.domid) {
                prop_assert!(self.t.xs.store().owned_by(caller.domid) <= self.t.xs.quotas().nodes_per_domain);
            }
        }
        for c in self.conns {
            // Events are well-formed; reading them keeps queues from filling.
            self.t.events(c);
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// (c) Random operation sequences from dom0 and three guests keep the store consistent
    /// (parents exist and list their children, per-owner counts match the tree) and no guest
    /// ever changes a node it had no write permission on.
    #[test]
    fn random_operations_keep_invariants(ops in proptest::collection::vec(op_strategy(), 1..80)) {
        let mut w = World::new();
        for op in &ops {
            w.apply(op)?;
        }
        // Closing everything leaves a consistent store too.
        for d in DOMAINS {
            let d0 = w.t.dom0;
            let r = w.t.call(d0, 0, &Request::Release { domid: DomId(d) });
            prop_assert!(r.is_ok());
            prop_assert_eq!(w.t.xs.store().owned_by(DomId(d)), 0);
            let mentioned = w.t.xs.store().iter().any(|(_, n)| n.perms.entries()[1..].iter().any(|e| e.domid == DomId(d)));
            prop_assert!(!mentioned, "released domain still in a permission list");
        }
        w.t.xs.store().check_invariants().map_err(TestCaseError::fail)?;
    }
}
